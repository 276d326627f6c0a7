-- dmarc.xml: the libxml2 parse into a tree (local names, both namespaces,
-- extensions skipped [AGG-10]), the refusals that keep XML bombs out
-- ([MAIL-6]: no DTD, no entity expansion, depth and size limits), capped
-- inflate (gzip/zlib/raw, bombs by size and ratio), the zip reader and
-- HMAC-SHA256.
local x = require 'dmarc.xml'

local NS = 'urn:ietf:params:xml:ns:dmarc-2.0'
local ARRAYS = { 'feedback/record', 'auth_results/dkim', 'auth_results/spf' }

local function read(name)
  local f = assert(io.open('tests/fixtures/reports/' .. name, 'rb'))
  local d = f:read('*a')
  f:close()
  return d
end

local function gzip(data)
  local tmp = os.tmpname()
  local f = assert(io.open(tmp, 'wb'))
  f:write(data)
  f:close()
  local p = io.popen('gzip -n -c ' .. tmp)
  local out = p:read('*a')
  p:close()
  os.remove(tmp)
  return out
end

local function hex(s)
  return (s:gsub('.', function(c) return string.format('%02x', c:byte()) end))
end

describe('dmarc.xml.parse', function()
  it('builds a tree of local names; leaves are trimmed text', function()
    local tree, info = x.parse('<?xml version="1.0"?><feedback xmlns="' .. NS .. '">'
                               .. '<version> 1.0 </version><policy_published><domain>'
                               .. 'example.com</domain></policy_published></feedback>')
    assert.equal('feedback', info.root)
    assert.equal(NS, info.ns)
    assert.equal('1.0', tree.version)
    assert.equal('example.com', tree.policy_published.domain)
  end)

  it('collects the children of array pairs in document order', function()
    local tree = x.parse('<feedback><record><auth_results><dkim><domain>a</domain></dkim>'
                         .. '<dkim><domain>b</domain></dkim></auth_results></record>'
                         .. '<record/></feedback>', { arrays = ARRAYS })
    assert.equal(2, #tree.record)
    assert.equal('a', tree.record[1].auth_results.dkim[1].domain)
    assert.equal('b', tree.record[1].auth_results.dkim[2].domain)
    assert.equal('', tree.record[2])
  end)

  it('keeps the first of duplicate singletons and counts the rest', function()
    local tree, info = x.parse('<a><p>none</p><p>reject</p></a>')
    assert.equal('none', tree.p)
    assert.equal(1, info.duplicates)
  end)

  it('skips elements of other namespaces whole (extensions) [AGG-10]', function()
    local tree, info = x.parse('<feedback xmlns="' .. NS .. '"><record><n>1</n></record>'
                               .. '<e:ext xmlns:e="urn:example"><record><n>2</n></record></e:ext>'
                               .. '</feedback>', { arrays = ARRAYS })
    assert.equal(1, #tree.record)
    assert.equal(1, info.skipped)
    assert.is_nil(tree.ext)
  end)

  it('accepts a prefixed RFC 7489 root with unqualified children', function()
    local tree, info = x.parse(read('rfc7489-ns.xml'), { arrays = ARRAYS })
    assert.equal('feedback', info.root)
    assert.equal('http://dmarc.org/dmarc-xml/0.1', info.ns)
    assert.equal('Receiver C', tree.report_metadata.org_name)
    assert.equal(1, #tree.record)
  end)

  it('decodes the predefined entities, character references and CDATA', function()
    local tree = x.parse('<a><b>&lt;x&gt; &amp; &#65;</b><c><![CDATA[<y>]]></c></a>')
    assert.equal('<x> & A', tree.b)
    assert.equal('<y>', tree.c)
  end)

  it('refuses a DOCTYPE before any entity is declared (billion laughs) [MAIL-6]', function()
    assert.equal('dtd', select(3, x.parse(read('billion-laughs.xml'))))
  end)

  it('refuses external entities and external DTDs (nothing is fetched) [MAIL-6]', function()
    assert.equal('dtd', select(3, x.parse(read('xxe.xml'))))
    assert.equal('dtd', select(3, x.parse(read('external-dtd.xml'))))
  end)

  it('treats an undeclared entity as not well-formed', function()
    assert.equal('xml', select(3, x.parse(read('undeclared-entity.xml'))))
  end)

  it('limits the nesting depth', function()
    assert.equal('limit', select(3, x.parse(read('deep.xml'))))
    local nested = string.rep('<a>', 10) .. string.rep('</a>', 10)
    assert.equal('limit', select(3, x.parse(nested, { max_depth = 9 })))
    assert.is_table(x.parse(nested, { max_depth = 10 }))
  end)

  it('limits the element count and the input size', function()
    local doc = '<a>' .. string.rep('<b/>', 100) .. '</a>'
    assert.equal('limit', select(3, x.parse(doc, { max_elements = 50 })))
    assert.equal('limit', select(3, x.parse(doc, { max_input = 100 })))
    assert.is_table(x.parse(doc, { max_elements = 101 }))
  end)

  it('refuses an attribute bomb at the bound, before libxml2 reads it', function()
    -- 300,000 attributes on one element (3.5 MB): libxml2 compares each attribute with every
    -- earlier one, so reading them all is quadratic. The scan stops at the 65th.
    local attrs = {}
    for i = 1, 300000 do attrs[i] = string.format('a%d="xy"', i) end
    local bomb = '<feedback ' .. table.concat(attrs, ' ') .. '><version>1.0</version></feedback>'
    assert.is_true(#bomb > 3.5e6)
    local tree, msg, code = x.parse(bomb)
    assert.is_nil(tree)
    assert.equal('limit', code)
    assert.matches('more than 64 attributes on one element %(max_attributes%)', msg)
    -- Where it stopped: right after attribute 65, not at the end of the 3.5 MB.
    local at = tonumber(msg:match('stopped at byte (%d+)'))
    assert.equal(#('<feedback ' .. table.concat(attrs, ' ', 1, 64) .. ' a65='), at)
    -- The same bound in UTF-16 (counted in code units), and the option moves it.
    local few = '<r ' .. table.concat(attrs, ' ', 1, 10) .. '/>'
    assert.is_table(x.parse(few))
    assert.equal('limit', select(3, x.parse(few, { max_attributes = 9 })))
    local utf16 = '\255\254' .. few:gsub('.', '%0\0')
    assert.is_table(x.parse(utf16))
    assert.equal('limit', select(3, x.parse(utf16, { max_attributes = 9 })))
  end)

  it('counts attributes the way XML delimits tags: quotes, comments, CDATA, PIs', function()
    local ten = {}
    for i = 1, 10 do ten[i] = string.format('a%d="="', i) end
    local tag = '<r ' .. table.concat(ten, ' ') .. '>'
    -- '=' inside values, comments, CDATA and PIs is no attribute.
    local doc = '<?xml version="1.0"?><?pi a=b c=d?><!-- <x a=1 b=2 c=3 " -->' .. tag
                .. '<![CDATA[ <y a=1 b=2 "> ]]></r>'
    assert.is_table(x.parse(doc, { max_attributes = 10 }))
    assert.equal('limit', select(3, x.parse(doc, { max_attributes = 9 })))
  end)

  it('refuses encodings whose markup the attribute count cannot read', function()
    local doc = '<?xml version="1.0" encoding="UTF-7"?><a/>'
    local tree, msg, code = x.parse(doc)
    assert.is_nil(tree)
    assert.equal('xml', code)
    assert.matches('encoding UTF%-7 not read', msg)
    assert.is_table(x.parse('<?xml version="1.0" encoding="ISO-8859-1"?><a>\233</a>'))
  end)

  it('cuts long text and counts it', function()
    local tree, info = x.parse('<a><b>' .. string.rep('z', 100) .. '</b></a>', { max_text = 10 })
    assert.equal(string.rep('z', 10), tree.b)
    assert.equal(1, info.truncated)
  end)

  it('reports truncated and invalid documents as not well-formed', function()
    assert.equal('xml', select(3, x.parse(read('truncated.xml'))))
    assert.equal('xml', select(3, x.parse(read('invalid.xml'))))
    assert.equal('xml', select(3, x.parse('')))
    assert.equal('xml', select(3, x.parse('not xml at all')))
  end)

  it('raises on misuse: bad option values and types', function()
    assert.has_error(function() x.parse('<a/>', { max_depth = 1000 }) end)
    assert.has_error(function() x.parse('<a/>', { arrays = { 'noslash' } }) end)
    assert.has_error(function() x.parse({}) end)
  end)
end)

describe('dmarc.xml.records (streamed records)', function()
  local function doc(n)
    local parts = { '<feedback xmlns="' .. NS .. '"><report_metadata><org_name>o</org_name>'
                    .. '</report_metadata>' }
    for i = 1, n do
      parts[#parts + 1] = '<record><row><count>' .. i .. '</count></row><auth_results>'
                          .. '<dkim><domain>a</domain></dkim><dkim><domain>b</domain></dkim>'
                          .. '</auth_results></record>'
    end
    parts[#parts + 1] = '<policy_published><domain>example.com</domain></policy_published>'
                        .. '</feedback>'
    return table.concat(parts)
  end

  it('hands over at most one batch at a time, every record once, in order', function()
    local n, batch = 2500, 7
    local nxt = assert(x.records(doc(n), { arrays = ARRAYS, batch = batch }))
    local seen, calls = 0, 0
    for _ = 1, n + 2 do
      local b = nxt()
      if not b then break end
      calls = calls + 1
      assert.is_true(#b >= 1 and #b <= batch, 'batch of ' .. #b)
      for _, r in ipairs(b) do
        seen = seen + 1
        assert.equal(tostring(seen), r.row.count)
        assert.equal(2, #r.auth_results.dkim)
      end
    end
    assert.equal(n, seen)
    assert.equal(math.ceil(n / batch), calls)
    assert.is_nil(nxt())
  end)

  it('leaves the records out of the header parse and counts them', function()
    local tree, info = assert(x.parse(doc(5), { arrays = ARRAYS, defer_records = true }))
    assert.is_nil(tree.record)
    assert.equal('example.com', tree.policy_published.domain)
    assert.equal(5, info.deferred)
  end)

  it('reports a document that breaks after some records', function()
    local nxt = assert(x.records(doc(3):sub(1, -20), { arrays = ARRAYS, batch = 2 }))
    local b, msg, code
    for _ = 1, 4 do
      b, msg, code = nxt()
      if not b then break end
    end
    assert.is_nil(b)
    assert.equal('xml', code)
    assert.truthy(msg)
    assert.has_error(function() x.records(doc(1), { batch = 0 }) end)
  end)
end)

describe('dmarc.xml.map (a file in place of a string)', function()
  local function temp(data)
    local path = os.tmpname()
    local f = assert(io.open(path, 'wb'))
    f:write(data)
    f:close()
    return path
  end

  it('parses and streams a mapped file as the same string', function()
    local parts = { '<feedback xmlns="' .. NS .. '"><report_metadata><org_name>o</org_name>'
                    .. '</report_metadata>' }
    for i = 1, 30000 do
      parts[#parts + 1] = '<record><row><count>' .. i .. '</count></row></record>'
    end
    parts[#parts + 1] = '</feedback>'
    local data = table.concat(parts)
    local path = temp(' \r\n\t' .. data)
    local doc, size = assert(x.map(path))
    assert.equal(#data + 4, size)
    local t1, i1 = assert(x.parse(data, { arrays = ARRAYS, defer_records = true }))
    local t2, i2 = assert(x.parse(doc, { arrays = ARRAYS, defer_records = true }))
    assert.same(t1, t2)
    assert.same(i1, i2)
    local n1, n2 = assert(x.records(data, { arrays = ARRAYS, batch = 999 })),
      assert(x.records(doc, { arrays = ARRAYS, batch = 999 }))
    local seen = 0
    for _ = 1, 100 do
      local a, b = n1(), n2()
      assert.same(a, b)
      if not a then break end
      seen = seen + #a
    end
    assert.equal(30000, seen)
    os.remove(path)
  end)

  it('inflates a gzip file window by window as the same string', function()
    local parts = { '<feedback xmlns="' .. NS .. '"><report_metadata><org_name>o</org_name>'
                    .. '</report_metadata>' }
    for i = 1, 30000 do
      parts[#parts + 1] = '<record><row><count>' .. i .. '</count></row></record>'
    end
    parts[#parts + 1] = '</feedback>'
    local data = table.concat(parts)
    local path = temp(gzip(' \n' .. data))
    local doc, _, head = assert(x.map(path, { inflate = 'gzip' }))
    assert.equal((' \n' .. data):sub(1, 512), head)
    local t1, i1 = assert(x.parse(data, { arrays = ARRAYS, defer_records = true }))
    local t2, i2 = assert(x.parse(doc, { arrays = ARRAYS, defer_records = true }))
    assert.same(t1, t2)
    assert.same(i1, i2)
    local n1, n2 = assert(x.records(data, { arrays = ARRAYS, batch = 999 })),
      assert(x.records(doc, { arrays = ARRAYS, batch = 999 }))
    local seen = 0
    for _ = 1, 100 do
      local a, b = n1(), n2()
      assert.same(a, b)
      if not a then break end
      seen = seen + #a
    end
    assert.equal(30000, seen)
    -- The bounds: max_output, and the attribute pre-scan past the first window.
    doc = assert(x.map(path, { inflate = 'gzip', max_output = #data }))
    assert.same({ nil, 'decompressed size over the limit', 'bomb' }, { x.parse(doc) })
    local attrs = {}
    for i = 1, 100 do attrs[i] = 'a' .. i .. '="v"' end
    local bomb = data:sub(1, 300000) .. '<x ' .. table.concat(attrs, ' ') .. '/>'
      .. data:sub(300001)
    local m1 = { x.parse(bomb) }
    local write_file = assert(io.open(path, 'wb'))
    write_file:write(gzip(bomb))
    write_file:close()
    doc = assert(x.map(path, { inflate = 'gzip' }))
    assert.equal('limit', m1[3])
    assert.same(m1, { x.parse(doc) })
    os.remove(path)
  end)

  it('refuses a missing file, a directory and a file over max_input', function()
    local d, msg, code, _ = x.map('/nonexistent/report.xml')
    assert.is_nil(d)
    assert.equal('io', code)
    assert.truthy(msg)
    d, _, code = x.map('/')
    assert.is_nil(d)
    assert.equal('io', code)
    local path = temp('<a/>')
    d, _, code = x.map(path, { max_input = 3 })
    assert.is_nil(d)
    assert.equal('limit', code)
    local empty = temp('')
    d = assert(x.map(empty))
    local t, m, c = x.parse(d)
    assert.is_nil(t)
    assert.equal('xml', c)
    assert.equal(select(2, x.parse('')), m)
    assert.has_error(function() x.map(path, { bogus = 1 }) end)
    os.remove(path)
    os.remove(empty)
  end)
end)

describe('dmarc.xml.inflate', function()
  it('inflates gzip, zlib and raw deflate', function()
    local gz = gzip('hello report')
    assert.equal('hello report', x.inflate(gz))
    assert.equal('hello report', x.inflate(gz, { format = 'gzip' }))
  end)

  it('reads concatenated gzip members', function()
    assert.equal('onetwo', x.inflate(gzip('one') .. gzip('two')))
  end)

  it('stops a bomb by ratio before its full size is produced [MAIL-6]', function()
    local out, msg, code = x.inflate(read('gzip-bomb.gz'))
    assert.is_nil(out)
    assert.is_string(msg)
    assert.equal('bomb', code)
  end)

  it('stops output over max_output', function()
    local gz = gzip(string.rep('abcdefgh', 1000))
    assert.equal('bomb', select(3, x.inflate(gz, { max_output = 4000 })))
    assert.equal(8000, #x.inflate(gz, { max_output = 8000 }))
  end)

  it('reports a truncated stream and corrupt data', function()
    assert.equal('truncated', select(3, x.inflate(read('truncated.xml.gz'))))
    assert.equal('corrupt', select(3, x.inflate('\31\139\8\0\0\0\0\0\0\3garbage!!')))
  end)

  it('raises on an unknown format', function()
    assert.has_error(function() x.inflate('', { format = 'lzma' }) end)
  end)
end)

describe('dmarc.xml.unzip', function()
  it('reads a deflated and a stored entry, checking the CRC-32', function()
    local xml7489 = read('rfc7489.xml')
    local data, name = x.unzip(read('rfc7489.zip'))
    assert.equal(xml7489, data)
    assert.truthy(name:match('%.xml$'))
    assert.equal(xml7489, (x.unzip(read('rfc7489-stored.zip'))))
  end)

  it('refuses archives without a single report entry', function()
    assert.equal('zip_entries', select(3, x.unzip(read('two-reports.zip'))))
  end)

  it('refuses a bomb by its declared ratio before inflating [MAIL-6]', function()
    assert.equal('bomb', select(3, x.unzip(read('zip-bomb.zip'))))
  end)

  it('refuses an entry that inflates past its declared size', function()
    assert.equal('zip', select(3, x.unzip(read('zip-liar.zip'))))
  end)

  it('refuses a corrupted CRC and malformed archives', function()
    local z = read('rfc7489-stored.zip')
    local at = z:find('<feedback>', 1, true)
    local bad = z:sub(1, at - 1) .. '<Feedback>' .. z:sub(at + 10)
    assert.equal('corrupt', select(3, x.unzip(bad)))
    assert.equal('zip', select(3, x.unzip('PK\3\4 not really a zip')))
    assert.equal('zip', select(3, x.unzip(z:sub(1, #z - 10))))
  end)
end)

describe('dmarc.xml.hmac_sha256', function()
  it('matches the RFC 4231 test case 2', function()
    assert.equal('5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843',
                 hex(x.hmac_sha256('Jefe', 'what do ya want for nothing?')))
  end)

  it('hashes keys longer than the block (RFC 4231 test case 6)', function()
    assert.equal('60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54',
                 hex(x.hmac_sha256(string.rep('\170', 131),
                                   'Test Using Larger Than Block-Size Key - Hash Key First')))
  end)
end)
