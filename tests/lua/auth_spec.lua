-- dmarc.io (resolvers, SPF through libspf2, DKIM through libopendkim), dmarc.receive.message and
-- dmarc.receive.auth (Authentication-Results, the trusted ARC verdict, the whole check). Offline: the
-- zone resolver, the bundled example zone and messages (signed by tools/make-examples with an
-- independent signer), and injected faults for SERVFAIL and timeouts.
local env = require 'test_env'
local dio = require 'dmarc.io'
local message = require 'dmarc.receive.message'
local auth = require 'dmarc.receive.auth'
local dmarc = require 'dmarc'

local ROOT = env.root
local EXAMPLE_ZONE = ROOT .. '/examples/example.zone'

local function example(name)
  return env.read_file(ROOT .. '/examples/' .. name)
end

local function zone(text, opts)
  local o = { zone_text = text }
  for k, v in pairs(opts or {}) do o[k] = v end
  return assert(dio.resolver(o))
end

local SPF_ZONE = [[
$ORIGIN example.com.
$TTL 300
@          TXT "v=spf1 ip4:192.0.2.0/24 include:_spf.example.net -all"
_spf.example.net. TXT "v=spf1 ip4:198.51.100.7 ~all"
mx1        A    203.0.113.5
mx1        AAAA 2001:db8::5
mxd        TXT "v=spf1 mx:mxhost.example.com -all"
mxhost     MX 10 mx1
v6         TXT "v=spf1 ip6:2001:db8::/32 -all"
two        TXT "v=spf1 -all"
two        TXT "v=spf1 +all"
bare       TXT "v=spf1"
bad        TXT "v=spf1 foo:bar -all"
inc        TXT "v=spf1 include:nowhere.example.com -all"
softy      TXT "v=spf1 ?all"
soft       TXT "v=spf1 ~all"
incslow    TXT "v=spf1 include:slow.example.com -all"
voids      TXT "v=spf1 a:n1.example.com a:n2.example.com a:n3.example.com -all"
twovoids   TXT "v=spf1 a:n1.example.com a:n2.example.com ip4:192.0.2.1 -all"
helo       TXT "v=spf1 a -all"
helo       A   192.0.2.77
other      TXT "not spf" "at all"
]]

-- The 11th DNS-querying term: ten a: terms that miss, then one that would match.
local terms = {}
for i = 1, 11 do
  terms[#terms + 1] = 'a:h' .. i .. '.example.com'
  SPF_ZONE = SPF_ZONE .. string.format('h%d A 10.0.0.%d\n', i, i)
end
SPF_ZONE = SPF_ZONE .. 'many TXT "v=spf1 ' .. table.concat(terms, ' ', 1, 6) .. '" " '
  .. table.concat(terms, ' ', 7, 11) .. ' -all"\n'

describe('dmarc.io resolver', function()
  it('answers from a zone with the four negative outcomes kept apart', function()
    local r = zone([[
_dmarc.a.b.example.com. TXT "v=DMARC1; " "p=reject"
host.example.com. A 192.0.2.1
]], { faults = { ['slow.example.com'] = 'timeout', ['broken.example.com'] = 'servfail' } })
    local rcode, txts, ttl = r:resolve('_dmarc.a.b.example.com', 'TXT')
    assert.equal('noerror', rcode)
    assert.same({ 'v=DMARC1; p=reject' }, txts) -- [REC-1]: strings joined, no separator
    assert.equal(3600, ttl)
    assert.equal('nodata', (r:resolve('host.example.com', 'TXT')))
    -- [DISC-12]: an empty non-terminal exists (NODATA), a missing name does not.
    assert.equal('nodata', (r:resolve('a.b.example.com', 'A')))
    assert.equal('nxdomain', (r:resolve('nope.example.com', 'A')))
    assert.equal('timeout', (r:resolve('x.slow.example.com', 'TXT')))
    assert.equal('servfail', (r:resolve('broken.example.com', 'MX')))
    -- A non-TXT answer with data says "exists" with one placeholder per RR.
    local rc, recs = r:resolve('host.example.com', 'A')
    assert.equal('noerror', rc)
    assert.equal(1, #recs)
    local q = r:query('host.example.com', 'A')
    assert.same({ '192.0.2.1' }, q.records)
  end)

  it('follows CNAME-delegated DKIM keys and caches by TTL', function()
    local r = zone([[
s1._domainkey.brand.example. 100 CNAME s1.domainkey.saas.example.
s1.domainkey.saas.example.   900 TXT "v=DKIM1; p=KEY"
]])
    local q = r:query('s1._domainkey.brand.example', 'TXT')
    assert.equal('noerror', q.rcode)
    assert.same({ 'v=DKIM1; p=KEY' }, q.records)
    assert.equal(1, q.cname_hops)
    assert.equal(100, q.ttl) -- the shortest link [DISC-11]
    assert.is_false(q.from_cache)
    q = r:query('s1._domainkey.brand.example', 'TXT')
    assert.is_true(q.from_cache)
    local s = r:stats()
    assert.equal(1, s.hits)
    r:clear_cache()
    assert.equal(0, r:stats().entries)
  end)

  it('reports a zone that does not parse with its line, as data', function()
    local r, err, code = dio.resolver{ zone_text = 'ok A 192.0.2.1\nbad A 999.1.1.1\n' }
    assert.is_nil(r)
    assert.equal('syntax', code)
    assert.truthy(err:find(':2:', 1, true))
    r, err, code = dio.resolver{ zone = '/nonexistent/zone.file' }
    assert.is_nil(r)
    assert.equal('io', code)
    assert.truthy(err)
    r, err, code = dio.resolver{ server = 'not an address' }
    assert.is_nil(r)
    assert.equal('syntax', code)
    assert.truthy(err)
  end)

  it('raises on contract misuse', function()
    assert.has_error(function() dio.resolver{ zone_text = '', bogus = 1 } end)
    assert.has_error(function() dio.resolver{ zone_text = 1 } end)
    assert.has_error(function() dio.resolver{ zone_text = '', server = '127.0.0.1' } end)
    local r = zone('')
    assert.has_error(function() r:query('x', 'BOGUS') end)
    r:close()
    r:close() -- idempotent
    assert.has_error(function() r:query('x', 'TXT') end)
  end)
end)

describe('SPF through libspf2 (RFC 7208)', function()
  local r = zone(SPF_ZONE, { faults = { ['slow.example.com'] = 'timeout' } })
  local function spf(ip, mail_from, helo, identity)
    return assert(r:spf{ ip = ip, mail_from = mail_from, helo = helo, identity = identity })
  end

  it('gives the RFC 8601 words with the domain and scope', function()
    local res = spf('192.0.2.9', 'a@example.com', 'mx.example.com')
    assert.equal('pass', res.result)
    assert.equal('example.com', res.domain)
    assert.equal('mfrom', res.scope)
    assert.equal('pass', spf('198.51.100.7', 'a@example.com').result) -- through the include
    assert.equal('fail', spf('10.9.9.9', 'a@example.com').result)
    assert.equal('softfail', spf('10.9.9.9', 'a@soft.example.com').result)
    assert.equal('neutral', spf('10.9.9.9', 'a@softy.example.com').result)
    assert.equal('neutral', spf('10.9.9.9', 'a@bare.example.com').result) -- "v=spf1" alone
    assert.equal('pass', spf('203.0.113.5', 'a@mxd.example.com').result)
    assert.equal('pass', spf('2001:db8::1', 'a@v6.example.com').result)
    -- RFC 7208 §5: an IPv4-mapped address is checked as IPv4.
    assert.equal('pass', spf('::ffff:192.0.2.9', 'a@example.com').result)
  end)

  it('checks the HELO identity for the null reverse-path [ALN-1]', function()
    local res = spf('192.0.2.77', '', 'helo.example.com')
    assert.equal('pass', res.result)
    assert.equal('helo', res.scope)
    assert.equal('helo.example.com', res.domain)
    assert.equal('helo', spf('192.0.2.77', '<>', 'helo.example.com').scope)
    res = spf('192.0.2.1', 'a@example.com', 'helo.example.com', 'helo')
    assert.equal('helo', res.scope)
    assert.equal('fail', res.result)
  end)

  it('keeps none, temperror and permerror apart', function()
    assert.equal('none', spf('10.9.9.9', 'a@nonexistent.example.com').result)
    assert.equal('none', spf('10.9.9.9', 'a@other.example.com').result)
    assert.equal('none', spf('10.9.9.9', '', 'localhost').result) -- not a usable domain
    assert.equal('temperror', spf('10.9.9.9', 'a@slow.example.com').result)
    assert.equal('temperror', spf('10.9.9.9', 'a@incslow.example.com').result)
    assert.equal('permerror', spf('10.9.9.9', 'a@two.example.com').result) -- §4.5
    assert.equal('permerror', spf('10.9.9.9', 'a@bad.example.com').result)
    assert.equal('permerror', spf('10.9.9.9', 'a@inc.example.com').result) -- §5.2
  end)

  it('stops at the 11th DNS-querying term with permerror (§4.6.4)', function()
    local res = spf('10.0.0.11', 'a@many.example.com')
    assert.equal('permerror', res.result)
    assert.equal(dio.limits.spf_max_dns_terms + 1, res.dns_terms)
    -- the 10th term still counts
    assert.equal('pass', spf('10.0.0.10', 'a@many.example.com').result)
  end)

  it('allows two void lookups and not three (§4.6.4)', function()
    local res = spf('192.0.2.1', 'a@twovoids.example.com')
    assert.equal('pass', res.result)
    assert.equal(2, res.void_lookups)
    res = spf('10.9.9.9', 'a@voids.example.com')
    assert.equal('permerror', res.result)
    assert.equal(3, res.void_lookups)
  end)

  it('refuses an address that is not one', function()
    local res, err, code = r:spf{ ip = 'junk', mail_from = 'a@example.com' }
    assert.is_nil(res)
    assert.equal('invalid', code)
    assert.truthy(err)
  end)
end)

describe('DKIM through libopendkim', function()
  local r = assert(dio.resolver{ zone = EXAMPLE_ZONE, faults = { ['keys.broken.example'] = 'servfail' } })

  local function results(text)
    local res = assert(r:dkim(text))
    local out = {}
    for i, s in ipairs(res.signatures) do out[i] = s.result end
    return out, res
  end

  it('verifies every signature: RSA-2048 and Ed25519', function()
    local out, res = results(example('pass.eml'))
    assert.same({ 'pass', 'pass' }, out)
    assert.equal(2, res.total)
    local algs = {}
    for _, s in ipairs(res.signatures) do algs[s.selector] = s.algorithm end
    assert.same({ ed2026 = 'ed25519-sha256', sel2026 = 'rsa-sha256' }, algs)
    assert.equal('example.com', res.signatures[1].domain)
    assert.equal(8, #res.signatures[1].b)
  end)

  it('reads messages with bare LF line ends', function()
    assert.same({ 'pass', 'pass' }, (results((example('pass.eml'):gsub('\r\n', '\n')))))
  end)

  it('fails a changed body, per signature', function()
    local text = example('pass.eml'):gsub('November newsletter', 'December newsletter')
    local out, res = results(text)
    assert.same({ 'fail', 'fail' }, out)
    assert.truthy(res.signatures[1].reason:find('body hash', 1, true))
  end)

  it('notices a From field added after signing (RFC 6376 §8.15)', function()
    local out, res = results('From: Boss <boss@evil.example>\r\n' .. example('pass.eml'))
    assert.same({ 'pass', 'pass' }, out)
    assert.is_true(res.signatures[1].unsigned_from)
  end)

  it('reports each signature of a forwarded message on its own', function()
    local res = assert(r:dkim(example('forwarded.eml')))
    local by_domain = {}
    for _, s in ipairs(res.signatures) do by_domain[s.domain] = s.result end
    assert.equal('pass', by_domain['lists.example.net'])
    assert.equal('fail', by_domain['example.com'])
  end)

  it('keeps key lookup failures temporary, missing keys permanent', function()
    local signed = example('quarantined.eml')
    -- d= and i= of the signature moved to a domain whose key servers fail.
    local sig = signed:match('^(DKIM%-Signature:.-\r\n)[^ \t]')
    local moved = sig:gsub('bulk%-mailer%.example', 'keys.broken.example') .. signed:sub(#sig + 1)
    assert.same({ 'temperror' }, (results(moved)))
    moved = signed:gsub('s=esp;', 's=gone;', 1)
    assert.same({ 'permerror' }, (results(moved)))
  end)

  it('finds no signature in an unsigned message', function()
    local out, res = results(example('spoofed.eml'))
    assert.same({}, out)
    assert.equal(0, res.total)
  end)

  it('skips signatures over the cap before any key lookup', function()
    local text = example('quarantined.eml')
    local sig = text:match('^(DKIM%-Signature:.-\r\n)[^ \t]')
    assert.truthy(sig)
    local n = dio.limits.dkim_max_verify + 2
    local res = assert(r:dkim(sig:rep(n - 1) .. text))
    assert.equal(n, res.total)
    assert.equal(n, #res.signatures)
    local verified = 0
    for _, s in ipairs(res.signatures) do
      if s.verified then verified = verified + 1 else assert.equal('neutral', s.result) end
    end
    assert.equal(dio.limits.dkim_max_verify, verified)
  end)

  it('refuses what is not a message', function()
    local res, err, code = r:dkim('no header here\nat all\n')
    assert.is_nil(res)
    assert.equal('syntax', code)
    assert.truthy(err)
    assert.equal('syntax', select(3, r:dkim(' continuation first\n')))
  end)
end)

describe('dmarc.receive.message', function()
  it('splits header fields, keeps folding, skips an mbox line', function()
    local text = 'From sender Sun Nov 22 2026\nFrom: a@example.com\nSubject: one\n two\n\nbody\n'
    local msg = assert(message.parse(text))
    assert.same({ ' a@example.com' }, msg:get('from'))
    assert.equal(' one\r\n two', msg:first('SUBJECT'))
    assert.equal('one two', message.unfold(msg:first('subject')))
    assert.equal('body\n', msg:body())
  end)

  it('refuses malformed messages with a code', function()
    assert.equal('syntax', select(3, message.parse('')))
    assert.equal('syntax', select(3, message.parse('just text\n')))
    assert.equal('syntax', select(3, message.parse(' cont\nFrom: a@b\n')))
    assert.equal('syntax', select(3, message.parse('From: a\0b\n\n')))
    local many = ('X-A: 1\n'):rep(message.MAX_HEADERS + 1)
    assert.equal('limit', select(3, message.parse(many)))
  end)

  it('joins folded lines with CRLF whatever the line ends; the first empty line ends the section', function()
    -- RFC 5322 §2.2.3: folding is kept in the raw value; bare LF, CRLF and a stray CR before
    -- the CRLF all read the same way as before the section was walked by position.
    local crlf = assert(message.parse('A: one\r\n two\r\n\tthree\r\nB: x\r\n\r\nC: body\r\n'))
    local lf = assert(message.parse('A: one\n two\n\tthree\nB: x\n\nC: body\n'))
    local mixed = assert(message.parse('A: one\n two\r\n\tthree\nB: x\n\r\nC: body\n'))
    for _, msg in ipairs({ crlf, lf, mixed }) do
      assert.same({ ' one\r\n two\r\n\tthree' }, msg:get('a'))
      assert.same({ ' x' }, msg:get('b'))
      assert.same({}, msg:get('c'))
      assert.equal(2, #msg.headers)
    end
    assert.equal('C: body\r\n', crlf:body())
    assert.equal('C: body\n', lf:body())
    local cr = assert(message.parse('A: one\r\r\n two\r\n'))
    assert.equal(' one\r\r\n two', cr:first('a'))
    local unterminated = assert(message.parse('A: one\n two'))
    assert.equal(' one\r\n two', unterminated:first('a'))
    assert.equal('', unterminated:body())
    -- A NUL in the body is not the header section's business.
    assert.truthy(message.parse('A: b\n\nbody\0\n'))
  end)

  it('bounds one field by its joined length, with bare LFs counted as CRLF', function()
    local room = message.MAX_HEADER_BYTES - #' x' - #'\r\n y'
    assert.truthy(message.parse('A: x' .. ('z'):rep(room) .. '\n y\n'))
    assert.truthy(message.parse('A: x' .. ('z'):rep(room) .. '\r\n y\r\n'))
    assert.equal('limit', select(3, message.parse('A: x' .. ('z'):rep(room + 1) .. '\n y\n')))
    assert.equal('limit', select(3, message.parse('A: x' .. ('z'):rep(room + 1) .. '\r\n y\r\n')))
  end)

  it('walks the header section the same way in C (dmarc.io) and in Lua', function()
    assert.equal('c', message.walker)
    local cases = { '', 'From x\n', '\r\n', 'a: b', 'A:b\n c\n\td\n\nbody', 'A:b\r\r\n c\r\n\r\n',
      'A: b\n \n', ' x: y\n', 'x y: z\n', 'x : z\n c\r\nY: w\r\n\r\n', 'a: b\0\n\nc',
      'a: b\n\nc\0', 'a: b\r', 'a: b\n\r\n', ':a\n', 'a: b\nc\n', 'a: b\rc\n d\n',
      ('X: 1\n'):rep(message.MAX_HEADERS + 1), 'A: ' .. ('x'):rep(message.MAX_HEADER_BYTES) .. '\n',
      example('forwarded.eml') }
    local function walk(text, walker)
      message.walker = walker
      local msg, err, code = message.parse(text)
      message.walker = 'c'
      if not msg then return { err = err, code = code } end
      return { headers = msg.headers, body = msg:body() }
    end
    for _, text in ipairs(cases) do
      assert.same(walk(text, 'lua'), walk(text, 'c'))
    end
  end)

  -- Report mail from anyone: what can be read is read, one bad line costs nothing else.
  it('reads a malformed header block leniently, the same in C and in Lua', function()
    local text = ' folded first\r\nFrom: a@example.com\r\nno colon here\n  its continuation\n'
      .. 'Subject : obs\tsyntax\nX-8bit: caf\195\169\nBare: lf\n\tfolded\r\nNul: a\0b\r\n'
      .. 'Long: ' .. ('x'):rep(40) .. '\r\n\r\nBody: not a field\r\n'
    for _, walker in ipairs({ 'c', 'lua' }) do
      message.walker = walker
      local fields, skipped = message.read_fields(text, { max_field_bytes = 32 })
      message.walker = 'c'
      assert.same({ 'From', 'from', ' a@example.com', 'Subject', 'subject', ' obs\tsyntax',
                    'X-8bit', 'x-8bit', ' caf\195\169', 'Bare', 'bare', ' lf\r\n\tfolded',
                    'Nul', 'nul', ' a\0b' }, fields, walker)
      -- the folded first line, the line without a colon and its continuation; Long dropped
      assert.equal(4, skipped, walker)
    end
    -- Past max_fields: dropped and counted, never an error.
    local fields, skipped = message.read_fields(('X: 1\n'):rep(5), { max_fields = 3 })
    assert.equal(9, #fields)
    assert.equal(2, skipped)
    assert.same({}, (message.read_fields('')))
  end)

  it('maps header fields by name: first value and all, unfolded; past empty lines on request', function()
    local first, all = message.header_map('Content-Type: multipart/report;\r\n\treport-type=x\r\n'
      .. 'X: 1 \r\nx:\r\n   2\r\n\r\nY: after\r\n')
    assert.equal('multipart/report; report-type=x', first['content-type'])
    assert.equal('1', first.x)
    assert.same({ '1', '2' }, all.x)
    assert.is_nil(first.y)
    first = message.header_map('\nA: 1\n\n\nB: 2\n', { all_blocks = true })
    assert.same({ a = '1', b = '2' }, first)
    local _, many = message.header_map(('A: 1\n\n'):rep(10), { all_blocks = true, max_fields = 4 })
    assert.equal(4, #many.a)
  end)

  it('reads MIME parameters: quoted-pairs, RFC 2231 values and continuations, junk passed over', function()
    local main, p = message.mime_params('Multipart/Report ; report-type=feedback-report;'
      .. ' boundary="a \\"b\\" c"; junk; name*0*=utf-8\'\'r%C3%A9; name*1=".xml"; size = 12 ;'
      .. ' filename*=iso-8859-1\'en\'a%20b.gz; filename="second"; open="to the end')
    assert.equal('multipart/report', main)
    assert.same({ ['report-type'] = 'feedback-report', boundary = 'a "b" c', name = 'r\195\169.xml',
                  size = '12', filename = 'a b.gz', open = 'to the end' }, p)
    main, p = message.mime_params(nil)
    assert.equal('', main)
    assert.same({}, p)
    local many = {}
    for i = 1, 40 do many[#many + 1] = 'p' .. i .. '=' .. i end
    p = select(2, message.mime_params('a/b; ' .. table.concat(many, '; '), 5))
    assert.equal('5', p.p5)
    assert.is_nil(p.p6)
  end)

  it('parses tag-lists and strips comments', function()
    local tags = assert(message.parse_tags(' i=2; d=lists.example.net;\r\n s=arc ; b=abc\r\n def'))
    assert.same({ i = '2', d = 'lists.example.net', s = 'arc', b = 'abcdef' }, tags)
    assert.equal('syntax', select(3, message.parse_tags('i=1; i=2')))
    assert.equal('a   b "x(y)"', message.strip_comments('a (c (nested)) b "x(y)"'))
    assert.equal('syntax', select(3, message.strip_comments('a (open')))
  end)

  it('refuses an ARC instance outside 1-50 (RFC 8617 §4.2.1), found by the fuzzer', function()
    assert.equal('syntax', select(3, auth.parse_ar('i=' .. string.rep('9', 48) .. '; mx; arc=none', true)))
    assert.equal('syntax', select(3, auth.parse_ar('i=0; mx; arc=none', true)))
    assert.equal('syntax', select(3, auth.parse_ar('i=51; mx; arc=none', true)))
    assert.equal(50, assert(auth.parse_ar('i=50; mx; arc=none', true)).instance)
  end)

  it('refuses a result that is not a keyword (RFC 8601 §2.2), found by the fuzzer', function()
    local ar, _, code = auth.parse_ar('mx.example.net; arc=paemote-ip=192.0.2.1')
    assert.is_nil(ar)
    assert.equal('syntax', code)
    assert.equal('pass', assert(auth.parse_ar('mx.example.net; arc=pass')).results[1].result)
  end)

  it('trims a field with a long run of blanks inside in one pass (was quadratic)', function()
    local inner = 'a' .. string.rep(' \t', 30000) .. 'b'
    assert.equal(inner, message.unfold('  ' .. inner .. ' \t '))
    assert.equal('', message.unfold(string.rep(' ', 60000)))
    local tags = assert(message.parse_tags('x=1;' .. string.rep(' ', 60000) .. ' ; y=2'))
    assert.same({ x = '1', y = '2' }, tags)
  end)
end)

describe('dmarc.receive.auth', function()
  it('parses Authentication-Results (RFC 8601)', function()
    local ar = assert(auth.parse_ar(' Border.Example.org 1; arc=pass (chain ok) header.oldest-pass=0\r\n' ..
      '\tsmtp.remote-ip=192.0.2.1; dkim=fail reason="bad sig" header.d=example.com; spf=none'))
    assert.equal('border.example.org', ar.authserv_id)
    assert.equal(1, ar.version)
    assert.equal(3, #ar.results)
    assert.equal('arc', ar.results[1].method)
    assert.equal('0', ar.results[1].props['header.oldest-pass'])
    assert.equal('192.0.2.1', ar.results[1].props['smtp.remote-ip'])
    assert.equal('bad sig', ar.results[2].reason)
    local none = assert(auth.parse_ar('mx.example.org; none'))
    assert.same({}, none.results)
    assert.equal('syntax', select(3, auth.parse_ar('mx.example.org; =broken')))
    assert.equal('syntax', select(3, auth.parse_ar('')))
  end)

  it('takes the ARC verdict only from a trusted authserv-id [AR-5] [ARC-2]', function()
    local msg = assert(message.parse(example('forwarded.eml')))
    local arc, ignored = auth.arc_verdict(msg, { authserv_id = 'mx.example.org',
      trusted_authserv_ids = { 'border.example.org' } })
    assert.equal('pass', arc.result)
    assert.equal(0, arc.oldest_pass)
    assert.same({ { i = 1, d = 'lists.example.net', s = 'arc' } }, arc.sealers)
    assert.equal('192.0.2.10', arc.remote_ip) -- as instance 1 saw it [ARC-3]
    assert.equal(1, #arc.aar)
    assert.equal(1, #ignored) -- the list's own A-R, not trusted
    -- Nobody trusted: no verdict.
    assert.is_nil((auth.arc_verdict(msg, { authserv_id = 'mx.example.org' })))
    -- Our own id on an incoming field is never believed, even when listed as trusted.
    local forged = assert(message.parse('Authentication-Results: mx.example.org; arc=pass\r\n' ..
      example('spoofed.eml')))
    arc, ignored = auth.arc_verdict(forged, { authserv_id = 'mx.example.org',
      trusted_authserv_ids = { 'mx.example.org' } })
    assert.is_nil(arc)
    assert.equal('claims our authserv-id', ignored[1].why)
  end)

  it('checks a message end to end and writes the Authentication-Results field', function()
    local r = assert(dio.resolver{ zone = EXAMPLE_ZONE })
    local res = assert(auth.check(r, example('pass.eml'), {
      ip = '192.0.2.10', helo = 'mx.example.com', mail_from = 'news@example.com', roll = 0 }))
    assert.equal('pass', res.spf.result)
    assert.equal('pass', res.dmarc.result)
    assert.is_true(res.dmarc.dkim_aligned)
    local header = auth.format_ar(res, 'mx.example.org')
    assert.truthy(header:find('^Authentication%-Results: mx%.example%.org;'))
    assert.truthy(header:find('spf=pass smtp.mailfrom=example.com', 1, true))
    assert.truthy(header:find('dkim=pass header.d=example.com header.s=sel2026', 1, true))
    assert.truthy(header:find('dmarc=pass', 1, true))
    assert.truthy(header:find('header.from=example.com', 1, true))

    res = assert(auth.check(r, example('spoofed.eml'), {
      ip = '203.0.113.200', mail_from = 'ceo@example.com', roll = 0 }))
    assert.equal('fail', res.dmarc.result)
    assert.equal('reject', res.dmarc.applied)
    header = auth.format_ar(res, 'mx.example.org', { disposition = 'quarantine',
      reasons = { { type = 'local_policy', comment = 'no other evidence' } } })
    assert.truthy(header:find('policy.dmarc=quarantine', 1, true))
    assert.truthy(header:find('dis=reject', 1, true))
    assert.truthy(header:find('override=local_policy', 1, true))
  end)

  it('writes each resinfo the same way every time, quoting what is no token [AR-1] [AR-2]', function()
    local res = {
      spf = { result = 'softfail', reason = 'not (quite) listed', domain = 'example.com', scope = 'mfrom' },
      helo = { result = 'none', domain = 'mx.example.com' },
      dkim = { signatures = {
        { result = 'fail', reason = 'body hash', domain = 'example.com', selector = 's=1',
          algorithm = 'rsa-sha256', b = 'ab/+cd' },
        { result = 'odd', reason = '', domain = '', selector = '', algorithm = '', b = '' },
      } },
      dmarc = { result = 'fail', policy = 'reject', applied = 'reject', author_domain = 'example.com' },
    }
    local want = 'Authentication-Results: mx.example.org;\r\n'
      .. '\tspf=softfail (not \\(quite\\) listed) smtp.mailfrom=example.com;\r\n'
      .. '\tspf=none smtp.helo=mx.example.com;\r\n'
      .. '\tdkim=fail (body hash) header.d=example.com header.s="s=1" header.a=rsa-sha256'
      .. ' header.b="ab/+cd";\r\n'
      .. '\tdkim=permerror ();\r\n'
      .. '\tdmarc=fail (p=reject dis=reject) header.from=example.com policy.dmarc=reject'
    -- Twice: the second time the values come from the memo of formatted values.
    assert.equal(want, auth.format_ar(res, 'mx.example.org'))
    assert.equal(want, auth.format_ar(res, 'mx.example.org'))
    assert.equal('Authentication-Results: mx.example.org;\r\n\tspf=none (no client address given);'
      .. '\r\n\tdkim=none', auth.format_ar({}, 'mx.example.org'))
  end)

  it('evaluates with an engine kept across messages as dmarc.evaluate does', function()
    local r = assert(dio.resolver{ zone = EXAMPLE_ZONE })
    local engine = dmarc.new{ cache_size = 100 }
    for _, name in ipairs({ 'pass.eml', 'spoofed.eml', 'pass.eml' }) do
      local opts = { ip = '192.0.2.10', helo = 'mx.example.com', mail_from = 'news@example.com', roll = 0 }
      local plain = assert(auth.check(r, example(name), opts))
      opts.engine = engine
      local kept = assert(auth.check(r, example(name), opts))
      -- The same verdict; only the list of DNS questions differs (the engine's cache answers).
      plain.dmarc.queries, kept.dmarc.queries = nil, nil
      assert.same(plain.dmarc, kept.dmarc)
      assert.same(plain.details, kept.details)
      assert.equal(auth.format_ar(plain, 'mx.example.org'), auth.format_ar(kept, 'mx.example.org'))
    end
  end)

  it('leaves the evaluation details out on request, same verdict and header', function()
    local r = assert(dio.resolver{ zone = EXAMPLE_ZONE })
    local opts = { ip = '192.0.2.10', helo = 'mx.example.com', mail_from = 'news@example.com', roll = 0 }
    local full = assert(auth.check(r, example('pass.eml'), opts))
    opts.details = false
    local light = assert(auth.check(r, example('pass.eml'), opts))
    assert.is_table(full.details)
    assert.is_nil(light.details)
    assert.same(full.dmarc, light.dmarc)
    assert.equal(auth.format_ar(full, 'mx.example.org'), auth.format_ar(light, 'mx.example.org'))
  end)

  it('turns DNS failures into temperror, not fail [DISC-10] [EVAL-3]', function()
    local r = assert(dio.resolver{ zone = EXAMPLE_ZONE, faults = { ['_dmarc.example.com'] = 'servfail' } })
    local res = assert(auth.check(r, example('spoofed.eml'), {
      ip = '203.0.113.200', mail_from = 'ceo@example.com', roll = 0 }))
    assert.equal('temperror', res.dmarc.result)
  end)

  it('returns codes for bad input', function()
    local r = assert(dio.resolver{ zone = EXAMPLE_ZONE })
    assert.equal('syntax', select(3, auth.check(r, 'garbage\n', {})))
    assert.equal('invalid', select(3, auth.check(r, example('pass.eml'), { ip = 'nope' })))
    assert.equal('invalid', select(3, auth.check(r, example('pass.eml'), { mode = 'x' })))
  end)
end)
