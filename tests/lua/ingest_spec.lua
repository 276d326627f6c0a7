-- dmarc.owner.ingest: unwrapping (gzip, zip, MIME with base64 / quoted-printable,
-- forwarded messages), normalisation of both report formats [AGG-9], the
-- storage encoding, the store script (run here against an in-memory
-- stand-in for redis.call; tests/integration/ingest_redis_spec.lua runs it on
-- a real server), dedup by (org_name, report_id), foreign domains, the
-- envelope_to hash, and per-file failures in a batch.
local ingest = require 'dmarc.owner.ingest'

local DIR = 'tests/fixtures/reports/'

local function read(name)
  local f = assert(io.open(DIR .. name, 'rb'))
  local d = f:read('*a')
  f:close()
  return d
end

local function report_of(name)
  local docs = assert(ingest.extract(read(name)))
  local tree, info = assert(ingest.parse(docs[1]))
  return assert(ingest.normalize(tree, info))
end

local fake_redis = require 'ingest_fake_redis'

describe('ingest: unwrapping', function()
  it('sniffs gzip, zip, XML and e-mail', function()
    assert.equal('gzip', ingest.sniff(read('rfc9990.xml.gz')))
    assert.equal('zip', ingest.sniff(read('rfc7489.zip')))
    assert.equal('xml', ingest.sniff(read('rfc9990.xml')))
    assert.equal('xml', ingest.sniff('\239\187\191  <feedback/>'))
    assert.equal('mime', ingest.sniff(read('report-base64.eml')))
    assert.is_nil(ingest.sniff('\0\1\2\3 binary'))
  end)

  it('decodes base64 and quoted-printable', function()
    assert.equal('any carnal pleasure.', ingest.base64_decode('YW55IGNhcm5hbCBwbGVhc3VyZS4='))
    assert.equal('any carnal pleasure', ingest.base64_decode('YW55IGNh\r\ncm5hbCBwbGVhc3VyZQ=='))
    assert.equal('any carnal pleasur', ingest.base64_decode('YW55IGNhcm5hbCBwbGVhc3Vy'))
    assert.equal('a=b\tc', ingest.qp_decode('a=3Db=09c'))
    assert.equal('long line', ingest.qp_decode('long =\r\nline'))
  end)

  it('finds the gzip attachment of a report e-mail (base64) [MAIL-1]', function()
    local parts = assert(ingest.mime_attachments(read('report-base64.eml')))
    assert.equal(1, #parts)
    assert.equal('application/gzip', parts[1].content_type)
    assert.truthy(parts[1].filename:match('%.xml%.gz$'))
    assert.equal('gzip', ingest.sniff(parts[1].data))
  end)

  it('reads MIME header values with a long run of blanks in one pass (was quadratic)', function()
    local msg = 'Content-Type: multipart/mixed;' .. string.rep(' ', 100000) .. 'boundary=b  \r\n'
                .. 'Subject: x' .. string.rep(' ', 100000) .. 'y\r\n\r\n'
                .. '--b\r\nContent-Type: text/xml\r\n\r\n<feedback/>\r\n--b--\r\n'
    local parts = assert(ingest.mime_attachments(msg))
    assert.equal(1, #parts)
    assert.equal('text/xml', parts[1].content_type)
  end)

  it('finds an XML attachment in quoted-printable and a forwarded report', function()
    local docs = assert(ingest.extract(read('report-qp.eml')))
    -- The text part travels with CRLF line ends (RFC 2045 canonical form).
    assert.equal(read('rfc7489.xml'), (docs[1]:gsub('\r\n', '\n')))
    docs = assert(ingest.extract(read('report-forwarded.eml')))
    assert.equal(read('rfc9990.xml'), docs[1])
  end)

  it('says why a message without a report is refused', function()
    assert.equal('no_report', select(3, ingest.extract(read('no-attachment.eml'))))
  end)

  it('passes bomb and archive failures on with their codes [MAIL-6]', function()
    assert.equal('bomb', select(3, ingest.extract(read('gzip-bomb.gz'))))
    assert.equal('bomb', select(3, ingest.extract(read('zip-bomb.zip'))))
    assert.equal('truncated', select(3, ingest.extract(read('truncated.xml.gz'))))
    assert.equal('zip_entries', select(3, ingest.extract(read('two-reports.zip'))))
    assert.equal('format', select(3, ingest.extract('plain text, not a report')))
  end)

  it('applies max_xml to plain XML as well', function()
    assert.equal('limit', select(3, ingest.extract(read('rfc9990.xml'), { max_xml = 100 })))
  end)
end)

describe('ingest: normalisation', function()
  it('reads an RFC 9990 report (namespace, extension skipped)', function()
    local rep = report_of('rfc9990.xml')
    assert.equal('rfc9990', rep.format)
    assert.equal('Receiver A', rep.org_name)
    assert.equal('a-20251121-0001', rep.report_id)
    assert.equal(1763683200, rep.begin)
    assert.equal(1763769599, rep['end'])
    assert.equal('example.com', rep.domain)
    assert.equal('none', rep.policy.p)
    assert.equal('treewalk', rep.policy.discovery_method)
    assert.equal(5, #rep.records) -- not the extension's record
    local r2 = rep.records[2]
    assert.equal('198.51.100.7', r2.source_ip)
    assert.equal(40, r2.count)
    assert.equal('pass', r2.dkim)
    assert.equal('fail', r2.spf)
    assert.equal('trusted_forwarder', r2.reasons[1].type)
    assert.equal('forwarder.example', r2.spf_results[1].domain)
    assert.equal('2001:db8::25', rep.records[5].source_ip)
  end)

  it('reads RFC 7489 reports with and without namespace [AGG-9]', function()
    local rep = report_of('rfc7489.xml')
    assert.equal('rfc7489', rep.format)
    assert.equal(100, rep.policy.pct)
    assert.equal(2, #rep.records[2].spf_results)
    assert.equal('helo', rep.records[2].spf_results[2].scope)
    assert.equal('mfrom', rep.records[2].spf_results[1].scope) -- absent scope
    rep = report_of('rfc7489-ns.xml')
    assert.equal('example.com', rep.domain) -- Example.COM. normalised
    assert.equal('s', rep.policy.adkim)
    assert.equal('quarantine', rep.policy.p)
  end)

  it('keeps hostile strings as data and drops records it cannot trust', function()
    local rep = report_of('hostile.xml')
    assert.truthy(rep.org_name:find('<script>', 1, true))
    assert.equal(1, #rep.records)
    assert.equal(2, rep.bad_records) -- an invalid IP, a negative count
    assert.equal('unknown', rep.records[1].disposition) -- '<b>reject' is not a word
    assert.falsy(rep.report_id:find('\n', 1, true)) -- control bytes replaced
  end)

  it('refuses reports without identity, domain or valid period', function()
    local tree, info = ingest.parse(read('no-report-id.xml'))
    assert.equal('invalid', select(3, ingest.normalize(tree, info)))
    tree, info = ingest.parse(read('bad-domain.xml'))
    assert.equal('bad_domain', select(3, ingest.normalize(tree, info)))
    tree, info = ingest.parse(read('not-a-report.xml'))
    assert.equal('not_report', select(3, ingest.normalize(tree, info)))
    local doc = read('rfc9990.xml'):gsub('<end>1763769599</end>', '<end>1763000000</end>')
    tree, info = ingest.parse(doc)
    assert.equal('invalid', select(3, ingest.normalize(tree, info)))
  end)

  it('bounds the records of one report', function()
    local saved = ingest.limits.max_records
    ingest.limits.max_records = 3
    local tree, info = ingest.parse(read('rfc9990.xml'))
    local ok, _, code = ingest.normalize(tree, info)
    ingest.limits.max_records = saved
    assert.is_nil(ok)
    assert.equal('limit', code)
  end)
end)

describe('ingest: encoding', function()
  it('round-trips a record, separators and all', function()
    local rec = { source_ip = '2001:db8::1', header_from = 'a|b;c:d%', envelope_from = '',
                  disposition = 'none', dkim = 'pass', spf = 'fail',
                  reasons = { { type = 'other', comment = 'x:y;z|w' } },
                  dkim_results = { { domain = 'd.example', selector = 's:1', result = 'pass' } },
                  spf_results = { { domain = 'e.example', scope = 'helo', result = 'none' } } }
    local field = ingest.encode_record('Org|Name', rec)
    assert.equal(12, select(2, field:gsub('|', '|')) + 1)
    local back = assert(ingest.decode_record(field))
    assert.equal('Org|Name', back.org_name)
    assert.equal('2001:db8::1', back.source_ip)
    assert.equal('a|b;c:d%', back.header_from)
    assert.is_nil(back.envelope_to)
    assert.equal('x:y;z|w', back.reasons[1].comment)
    assert.equal('s:1', back.dkim_results[1].selector)
    assert.equal('helo', back.spf_results[1].scope)
    assert.equal('bad_row', select(3, ingest.decode_record('2|x')))
  end)

  it('keys a policy domain and day under one hash tag', function()
    local k = ingest.keys('dmarc:', 'example.com', '20251121')
    assert.equal('dmarc:ing:{example.com}:20251121', k.rows)
    assert.equal('dmarc:ing:{example.com}:20251121:rep', k.reports)
    assert.equal('example.com', (ingest.parse_key('dmarc:', k.rows)))
    assert.is_nil(ingest.parse_key('dmarc:', k.reports))
  end)

  it('puts every key of a report in one Cluster slot (the store script is legal there)', function()
    local cluster = require 'dmarc.redis.cluster'
    local k = ingest.keys('dmarc:', 'example.com', '20251121')
    local slot = cluster.key_slot(k.rows)
    assert.equal(slot, cluster.key_slot(k.reports))
    assert.equal(slot, cluster.key_slot(ingest.stage_key('dmarc:', 'example.com', '1.2.3')))
    assert.equal(slot, cluster.key_slot(ingest.keys('dmarc:', 'example.com', '20251122').rows))
    assert.equal(k.rows, cluster.command_key({ 'EVAL', ingest.STORE_SCRIPT, '2', k.rows, k.reports }))
  end)

  it('files a report under the day its date_range mostly covers', function()
    assert.equal('20251121', ingest.report_day({ begin = 1763683200, ['end'] = 1763769599 }))
    -- 22:00 to 21:59 the next day (a receiver in UTC+2): the second day.
    assert.equal('20251122', ingest.report_day({ begin = 1763762400, ['end'] = 1763848799 }))
  end)

  it('decides ownership by domain or parent domain', function()
    assert.is_true(ingest.owned('example.com', { 'example.com' }))
    assert.is_true(ingest.owned('mail.example.com', { 'example.com' }))
    assert.is_false(ingest.owned('example.org', { 'example.com' }))
    assert.is_false(ingest.owned('badexample.com', { 'example.com' }))
    assert.is_true(ingest.owned('anything.example', nil))
  end)

  it('hashes envelope_to with the salt (keyed, stable, case-insensitive)', function()
    local a = ingest.hash_envelope_to('site-salt-0123456789', 'Receiver-A.example')
    assert.equal(a, ingest.hash_envelope_to('site-salt-0123456789', 'receiver-a.example'))
    assert.not_equal(a, ingest.hash_envelope_to('other-salt-0123456789', 'receiver-a.example'))
    assert.truthy(a:match('^h:%x+$'))
    assert.equal(18, #a)
  end)
end)

describe('ingest: store', function()
  it('stores a report once: the second time is a duplicate', function()
    local conn = fake_redis()
    local rep = report_of('rfc9990.xml')
    local status, res = ingest.store(conn, rep, { now = 1763800000 })
    assert.equal('stored', status)
    assert.equal(180, res.messages)
    assert.equal(5, res.records)
    assert.equal('20251121', res.day)
    local k = ingest.keys('dmarc:', 'example.com', '20251121')
    local total = 0
    for _, v in pairs(conn.data[k.rows]) do total = total + tonumber(v) end
    assert.equal(180, total)
    assert.equal(180 * 86400, conn.ttl[k.rows])
    assert.equal(180 * 86400, conn.ttl[k.reports])
    assert.equal('duplicate', (ingest.store(conn, rep, { now = 1763800001 })))
    total = 0
    for _, v in pairs(conn.data[k.rows]) do total = total + tonumber(v) end
    assert.equal(180, total)
  end)

  it('adds up identical rows of different reports', function()
    local conn = fake_redis()
    local rep = report_of('rfc9990.xml')
    ingest.store(conn, rep)
    rep.report_id = 'another-id'
    assert.equal('stored', (ingest.store(conn, rep)))
    local k = ingest.keys('dmarc:', 'example.com', '20251121')
    local f = ingest.encode_record('Receiver A', rep.records[1])
    assert.equal('200', conn.data[k.rows][f])
  end)

  it('stages a report too large for one command, still atomic and deduplicated', function()
    local conn = fake_redis()
    local rep = report_of('rfc9990.xml')
    local base = rep.records[1]
    rep.records = {}
    for i = 1, 2500 do
      local r = {}
      for kk, v in pairs(base) do r[kk] = v end
      r.source_ip = '10.' .. math.floor(i / 256) .. '.' .. (i % 256) .. '.1'
      r.count = 2
      rep.records[i] = r
    end
    local status, res = ingest.store(conn, rep)
    assert.equal('stored', status)
    assert.equal(5000, res.messages)
    assert.truthy(conn.pipelines >= 1)
    local k = ingest.keys('dmarc:', 'example.com', '20251121')
    local n = 0
    for _ in pairs(conn.data[k.rows]) do n = n + 1 end
    assert.equal(2500, n)
    for key in pairs(conn.data) do assert.falsy(key:find(':stage:', 1, true)) end
    assert.equal('duplicate', (ingest.store(conn, rep)))
    for key in pairs(conn.data) do assert.falsy(key:find(':stage:', 1, true)) end
  end)

  it('streams records in batches: the same rows, counts and info as one batch', function()
    local parts = { '<feedback><report_metadata><org_name>Receiver S</org_name>'
                    .. '<email>r@example.net</email><report_id>s-1</report_id><date_range>'
                    .. '<begin>1763683200</begin><end>1763769599</end></date_range>'
                    .. '</report_metadata><policy_published><domain>example.com</domain>'
                    .. '<p>reject</p></policy_published>' }
    for i = 1, 50 do
      -- 7 distinct rows repeated across batches, and one bad record.
      parts[#parts + 1] = '<record><row><source_ip>192.0.2.' .. (i % 7) .. '</source_ip><count>'
                          .. i .. '</count><policy_evaluated><disposition>none</disposition>'
                          .. '<dkim>pass</dkim><spf>fail</spf></policy_evaluated></row>'
                          .. '<identifiers><header_from>example.com</header_from></identifiers>'
                          .. '<auth_results><dkim><domain>example.com</domain><result>pass'
                          .. '</result></dkim></auth_results></record>'
    end
    parts[#parts + 1] = '<record><row><source_ip>bad</source_ip></row></record></feedback>'
    local xml = table.concat(parts)
    local whole, streamed = fake_redis(), fake_redis()
    local r1 = ingest.ingest_data(whole, xml, { now = 1763800000 })
    local r2 = ingest.ingest_data(streamed, xml, { now = 1763800000, batch = 3, max_args = 10 })
    assert.equal('stored', r1[1].status)
    assert.equal('stored', r2[1].status)
    assert.equal(0, whole.pipelines)
    assert.truthy(streamed.pipelines >= 2)
    for _, key in ipairs({ 'records', 'bad_records', 'messages', 'rows' }) do
      assert.equal(r1[1][key], r2[1][key])
    end
    assert.equal(50, r2[1].records)
    assert.equal(7, r2[1].rows)
    assert.same({ 'bad_records' }, r2[1].warnings)
    for key in pairs(streamed.data) do assert.falsy(key:find(':stage:', 1, true)) end
    assert.same(whole.data, streamed.data)
    assert.equal('duplicate', ingest.ingest_data(streamed, xml, { batch = 3, max_args = 10 })[1]
                 .status)
    for key in pairs(streamed.data) do assert.falsy(key:find(':stage:', 1, true)) end
  end)

  it('stores a plain XML file read from a mapping exactly as from a string', function()
    -- Over 2 MiB, so pages are given back during the pre-scan and the parse; leading
    -- white space, trimmed on both paths.
    local parts = { '\n  <?xml version="1.0"?><feedback><report_metadata><org_name>Receiver M'
                    .. '</org_name><email>r@example.net</email><report_id>m-1</report_id>'
                    .. '<date_range><begin>1763683200</begin><end>1763769599</end></date_range>'
                    .. '</report_metadata><policy_published><domain>example.com</domain>'
                    .. '<p>reject</p></policy_published>' }
    for i = 1, 12000 do
      parts[#parts + 1] = '<record><row><source_ip>198.51.100.' .. (i % 97) .. '</source_ip>'
                          .. '<count>' .. i .. '</count><policy_evaluated><disposition>none'
                          .. '</disposition><dkim>pass</dkim><spf>fail</spf></policy_evaluated>'
                          .. '</row><identifiers><header_from>example.com</header_from>'
                          .. '</identifiers><auth_results><dkim><domain>example.com</domain>'
                          .. '<result>pass</result></dkim><spf><domain>mail.example.net</domain>'
                          .. '<result>fail</result></spf></auth_results></record>'
    end
    parts[#parts + 1] = '<record><row><source_ip>bad</source_ip></row></record></feedback>\n'
    local xml = table.concat(parts)
    assert.truthy(#xml > 2 * 1024 * 1024)
    local path = os.tmpname()
    local f = assert(io.open(path, 'wb'))
    f:write(xml)
    f:close()
    local whole, mapped = fake_redis(), fake_redis()
    local r1 = ingest.ingest_data(whole, xml, { now = 1763800000 })
    local seen = {}
    -- The file is mapped, never read into a string.
    local xmod = require 'dmarc.xml'
    local real_map, maps = xmod.map, 0
    xmod.map = function(...)
      maps = maps + 1
      return real_map(...)
    end
    local ok, stats = pcall(ingest.ingest_files, mapped, { path }, {
      now = 1763800000, on_result = function(_, r) seen[#seen + 1] = r end })
    xmod.map = real_map
    assert.is_true(ok, tostring(stats))
    assert.equal(1, maps)
    assert.equal('stored', r1[1].status)
    assert.equal(1, #seen)
    for _, key in ipairs({ 'status', 'records', 'bad_records', 'messages', 'rows', 'domain',
                           'report_id', 'org_name' }) do
      assert.equal(r1[1][key], seen[1][key])
    end
    assert.same(r1[1].warnings, seen[1].warnings)
    assert.equal(12000, stats.records)
    assert.same(whole.data, mapped.data)
    assert.equal(1, ingest.ingest_files(mapped, { path }, {}).duplicates)
    -- The size bounds hold on the mapped path, with the string path's messages.
    local small = ingest.ingest_files(fake_redis(), { path }, { max_xml = #xml - 1 })
    assert.equal(1, small.errors)
    assert.equal('limit', small.failures[1].code)
    assert.equal('XML over the size limit', small.failures[1].message)
    small = ingest.ingest_files(fake_redis(), { path }, { max_input = #xml - 1 })
    assert.equal('limit', small.failures[1].code)
    assert.equal('file over the size limit (' .. (#xml - 1) .. ' bytes)', small.failures[1].message)
    -- A broken document: the same failure either way.
    f = assert(io.open(path, 'wb'))
    f:write(xml:sub(1, -200))
    f:close()
    local e1 = ingest.ingest_data(fake_redis(), xml:sub(1, -200), {})[1]
    local e2 = ingest.ingest_files(fake_redis(), { path }, {}).failures[1]
    assert.equal('error', e1.status)
    assert.equal(e1.code, e2.code)
    assert.equal(e1.message, e2.message)
    os.remove(path)
  end)

  it('stores a gzip file inflated as it is parsed exactly as from a string', function()
    local parts = { '\n <?xml version="1.0"?><feedback><report_metadata><org_name>Receiver Z'
                    .. '</org_name><email>r@example.net</email><report_id>z-1</report_id>'
                    .. '<date_range><begin>1763683200</begin><end>1763769599</end></date_range>'
                    .. '</report_metadata><policy_published><domain>example.com</domain>'
                    .. '<p>reject</p></policy_published>' }
    for i = 1, 12000 do
      parts[#parts + 1] = '<record><row><source_ip>198.51.100.' .. (i % 97) .. '</source_ip>'
                          .. '<count>' .. i .. '</count><policy_evaluated><disposition>none'
                          .. '</disposition><dkim>pass</dkim><spf>fail</spf></policy_evaluated>'
                          .. '</row><identifiers><header_from>example.com</header_from>'
                          .. '</identifiers></record>'
    end
    parts[#parts + 1] = '<record><row><source_ip>bad</source_ip></row></record></feedback>\n'
    local xml = table.concat(parts)
    assert.truthy(#xml > 1024 * 1024) -- several inflate windows
    local function write(path, data)
      local f = assert(io.open(path, 'wb'))
      f:write(data)
      f:close()
    end
    local path = os.tmpname()
    write(path, xml)
    local p = io.popen('gzip -n -c ' .. path)
    local gz = p:read('a')
    p:close()
    write(path, gz)
    local whole, streamed = fake_redis(), fake_redis()
    local r1 = ingest.ingest_data(whole, gz, { now = 1763800000 })
    local xmod = require 'dmarc.xml'
    local real_map, maps = xmod.map, 0
    xmod.map = function(file, o)
      if o and o.inflate == 'gzip' then maps = maps + 1 end
      return real_map(file, o)
    end
    local seen = {}
    local ok, stats = pcall(ingest.ingest_files, streamed, { path }, {
      now = 1763800000, on_result = function(_, r) seen[#seen + 1] = r end })
    xmod.map = real_map
    assert.is_true(ok, tostring(stats))
    assert.equal(1, maps)
    assert.equal('stored', r1[1].status)
    for _, key in ipairs({ 'status', 'records', 'bad_records', 'messages', 'rows', 'domain',
                           'report_id', 'org_name' }) do
      assert.equal(r1[1][key], seen[1][key])
    end
    assert.same(r1[1].warnings, seen[1].warnings)
    assert.equal(12000, stats.records)
    assert.same(whole.data, streamed.data)
    -- The caps hold with the string path's codes and messages: max_xml, a ratio bomb, a
    -- truncated stream.
    local function same_failure(data, opts)
      write(path, data)
      local e1 = ingest.ingest_data(fake_redis(), data, opts)[1]
      local st = ingest.ingest_files(fake_redis(), { path }, opts)
      assert.equal('error', e1.status)
      assert.equal(1, st.errors)
      assert.equal(e1.code, st.failures[1].code)
      assert.equal(e1.message, st.failures[1].message)
      return e1
    end
    assert.equal('gzip: decompressed size over the limit',
                 same_failure(gz, { max_xml = #xml - 1 }).message)
    local f = assert(io.open('tests/fixtures/reports/gzip-bomb.gz', 'rb'))
    local bomb = f:read('a')
    f:close()
    assert.equal('bomb', same_failure(bomb, {}).code)
    assert.equal('truncated', same_failure(gz:sub(1, -2000), {}).code)
    os.remove(path)
  end)

  it('counts rows over max_rows per day as dropped, never silently', function()
    local conn = fake_redis()
    local rep = report_of('rfc9990.xml')
    ingest.store(conn, rep, { max_rows = 3 })
    local k = ingest.keys('dmarc:', 'example.com', '20251121')
    local n = 0
    for _ in pairs(conn.data[k.rows]) do n = n + 1 end
    assert.equal(3, n)
    assert.equal('15', conn.data[k.reports]['#dropped_messages']) -- 10 + 5
    assert.equal('2', conn.data[k.reports]['#dropped_rows'])
  end)

  it('stores envelope_to hashed when a salt is given', function()
    local conn = fake_redis()
    local rep = report_of('rfc9990.xml')
    ingest.store(conn, rep, { hash_salt = 'site-salt-0123456789' })
    local k = ingest.keys('dmarc:', 'example.com', '20251121')
    for field in pairs(conn.data[k.rows]) do
      assert.falsy(field:find('receiver-a.example', 1, true))
    end
  end)

  it('ingests a batch: failures are per file, foreign domains counted or refused', function()
    local conn = fake_redis()
    local files = { DIR .. 'rfc9990.xml', DIR .. 'truncated.xml', DIR .. 'foreign.xml',
                    DIR .. 'rfc9990.xml.gz', DIR .. 'billion-laughs.xml', DIR .. 'rfc7489.zip',
                    DIR .. 'no-such-file.xml' }
    local stats = ingest.ingest_files(conn, files, { own = { 'example.com' } })
    assert.equal(7, stats.files)
    assert.equal(3, stats.errors)
    assert.equal(3, stats.stored)        -- 9990, foreign (counted, kept), 7489
    assert.equal(1, stats.duplicates)    -- the .gz of the same report
    assert.equal(1, stats.foreign)
    assert.equal(180 + 180 + 55, stats.messages)
    local codes = {}
    for _, f in ipairs(stats.failures) do codes[f.code] = true end
    assert.is_true(codes.xml)
    assert.is_true(codes.dtd)
    assert.is_true(codes.io)

    local conn2 = fake_redis()
    stats = ingest.ingest_files(conn2, { DIR .. 'foreign.xml' }, { own = { 'example.com' },
                                                                    refuse_foreign = true })
    assert.equal(1, stats.refused)
    assert.equal(0, stats.stored)
    assert.is_nil(next(conn2.data))
  end)

  it('walks directories, sorted, and reports paths that do not exist', function()
    local files, missing = ingest.expand_paths({ 'tests/fixtures/reports', 'no/such/path' })
    assert.truthy(#files >= 20)
    for i = 2, #files do assert.truthy(files[i - 1] < files[i]) end
    assert.equal(1, #missing)
  end)
end)
