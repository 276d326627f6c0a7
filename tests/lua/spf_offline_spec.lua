-- SPF without a resolver (issue 6, the rspamd plugin's SPF fallback): dio.spf_checker answers
-- libspf2 from an answer table, records what it could not answer, and auth.spf_async fetches
-- those questions round by round over any callback resolver. Here the "network" is a zone
-- behind dio.resolver, so every result can be compared with the blocking check of the same
-- zone (resolver:spf).
local dio = require 'dmarc.io'
local auth = require 'dmarc.receive.auth'

local ZONE = [[
$ORIGIN example.com.
$TTL 300
@          TXT "v=spf1 ip4:192.0.2.0/24 include:_spf.example.net -all"
_spf.example.net. TXT "v=spf1 ip4:198.51.100.7 ~all"
mx1        A    203.0.113.5
mx1        AAAA 2001:db8::5
mx2        A    203.0.113.6
mx3        A    203.0.113.7
mxd        TXT "v=spf1 mx:mxhost.example.com -all"
mxhost     MX 10 mx1
mxhost     MX 20 mx2
mxhost     MX 30 mx3
mxself     TXT "v=spf1 mx -all"
mxself     MX 10 mx2
v6         TXT "v=spf1 ip6:2001:db8::/32 -all"
two        TXT "v=spf1 -all"
two        TXT "v=spf1 +all"
bare       TXT "v=spf1"
bad        TXT "v=spf1 foo:bar -all"
inc        TXT "v=spf1 include:nowhere.example.com -all"
soft       TXT "v=spf1 ~all"
incslow    TXT "v=spf1 include:slow.example.com -all"
voids      TXT "v=spf1 a:n1.example.com a:n2.example.com a:n3.example.com -all"
twovoids   TXT "v=spf1 a:n1.example.com a:n2.example.com ip4:192.0.2.1 -all"
helo       TXT "v=spf1 a -all"
helo       A   192.0.2.77
redir      TXT "v=spf1 redirect=_spf.example.net"
exists     TXT "v=spf1 exists:%{i}.allow.example.com -all"
192.0.2.99.allow A 127.0.0.2
ptrd       TXT "v=spf1 ptr:ptrd.example.com -all"
named.ptrd A 192.0.2.200
200.2.0.192.in-addr.arpa. PTR named.ptrd.example.com.
deep       TXT "v=spf1 include:d1.example.com -all"
d1         TXT "v=spf1 include:d2.example.com ~all"
d2         TXT "v=spf1 a:d3.example.com mx:mxhost.example.com ?all"
d3         A   10.1.1.1
]]

-- The 11th DNS-querying term: ten a: terms that miss, then one that would match.
local terms = {}
for i = 1, 11 do
  terms[#terms + 1] = 'a:h' .. i .. '.example.com'
  ZONE = ZONE .. string.format('h%d A 10.0.0.%d\n', i, i)
end
ZONE = ZONE .. 'many TXT "v=spf1 ' .. table.concat(terms, ' ', 1, 6) .. '" " '
  .. table.concat(terms, ' ', 7, 11) .. ' -all"\n'

local FAULTS = { ['slow.example.com'] = 'timeout', ['broken.example.com'] = 'servfail' }

local function network()
  return assert(dio.resolver{ zone_text = ZONE, faults = FAULTS, cache = 0 })
end

-- A callback resolver over the zone; `later` queues the answers (as an event loop would)
-- until flush(). Counts the questions asked.
local function async_resolver(later)
  local net = network()
  local queue, asked = {}, {}
  local function resolve(name, qtype, cb)
    asked[#asked + 1] = qtype .. ' ' .. name
    local q = net:query(name, qtype)
    local records = q.rcode == 'noerror' and q.records or nil
    if later then
      queue[#queue + 1] = function() cb(q.rcode, records) end
    else
      cb(q.rcode, records)
    end
  end
  local function flush()
    local n = 0
    while #queue > 0 and n < 1000 do
      local f = table.remove(queue, 1)
      f()
      n = n + 1
    end
  end
  return resolve, flush, asked
end

local function offline(args, later, max_rounds)
  local checker = dio.spf_checker{ receiver = 'mx.rcpt.example' }
  local resolve, flush, asked = async_resolver(later)
  local out, err, code
  local calls = 0
  auth.spf_async(checker, args, resolve, function(res, e, c)
    calls = calls + 1
    out, err, code = res, e, c
  end, max_rounds)
  flush()
  assert.equal(1, calls)
  return out, err, code, asked
end

local CASES = {
  { ip = '192.0.2.9', mail_from = 'a@example.com', helo = 'mx.example.com' },
  { ip = '198.51.100.7', mail_from = 'a@example.com' },         -- pass through the include
  { ip = '10.9.9.9', mail_from = 'a@example.com' },
  { ip = '10.9.9.9', mail_from = 'a@soft.example.com' },
  { ip = '10.9.9.9', mail_from = 'a@bare.example.com' },
  { ip = '203.0.113.5', mail_from = 'a@mxd.example.com' },
  { ip = '203.0.113.7', mail_from = 'a@mxd.example.com' },      -- the third mx name
  { ip = '203.0.113.6', mail_from = 'a@mxself.example.com' },
  { ip = '2001:db8::5', mail_from = 'a@mxd.example.com' },      -- AAAA of an mx name
  { ip = '2001:db8::1', mail_from = 'a@v6.example.com' },
  { ip = '::ffff:192.0.2.9', mail_from = 'a@example.com' },
  { ip = '192.0.2.77', mail_from = '', helo = 'helo.example.com' },
  { ip = '192.0.2.1', mail_from = 'a@example.com', helo = 'helo.example.com', identity = 'helo' },
  { ip = '10.9.9.9', mail_from = 'a@nonexistent.example.com' },
  { ip = '10.9.9.9', mail_from = 'a@slow.example.com' },
  { ip = '10.9.9.9', mail_from = 'a@incslow.example.com' },
  { ip = '10.9.9.9', mail_from = 'a@two.example.com' },
  { ip = '10.9.9.9', mail_from = 'a@bad.example.com' },
  { ip = '10.9.9.9', mail_from = 'a@inc.example.com' },
  { ip = '10.0.0.11', mail_from = 'a@many.example.com' },
  { ip = '10.0.0.10', mail_from = 'a@many.example.com' },
  { ip = '192.0.2.1', mail_from = 'a@twovoids.example.com' },
  { ip = '10.9.9.9', mail_from = 'a@voids.example.com' },
  { ip = '198.51.100.7', mail_from = 'a@redir.example.com' },
  { ip = '192.0.2.99', mail_from = 'a@exists.example.com' },
  { ip = '192.0.2.98', mail_from = 'a@exists.example.com' },
  { ip = '192.0.2.200', mail_from = 'a@ptrd.example.com' },
  { ip = '203.0.113.6', mail_from = 'a@deep.example.com' },
  { ip = '10.1.1.1', mail_from = 'a@deep.example.com' },
  { ip = '10.9.9.9', mail_from = 'a@deep.example.com' },
}

describe('SPF without a resolver: dio.spf_checker and auth.spf_async', function()
  it('gives what the blocking check of the same zone gives, answers now or later', function()
    local r = network()
    for _, args in ipairs(CASES) do
      local want = assert(r:spf(args))
      for _, later in ipairs({ false, true }) do
        local got = offline(args, later)
        assert.is_nil(got.questions)
        assert.same(want, got, (args.mail_from or '') .. ' from ' .. args.ip)
      end
    end
  end)

  -- The record quoted in failure reports' SPF-DNS (RFC 6591 §3.2): the identity domain's own,
  -- whole, its TXT strings joined without a separator (RFC 7208 §3.3); never an include's.
  it('gives the record evaluated, whole, and none when there is no single one', function()
    local r = network()
    local many = 'v=spf1 ' .. table.concat(terms, ' ') .. ' -all'
    local function record(args)
      local want = assert(r:spf(args))
      assert.equal(want.record, offline(args, true).record)
      return want.record
    end
    assert.equal(many, record({ ip = '10.0.0.11', mail_from = 'a@many.example.com' }))
    assert.equal('v=spf1 ~all', record({ ip = '10.9.9.9', mail_from = 'a@soft.example.com' }))
    assert.equal('v=spf1 include:d1.example.com -all',
                 record({ ip = '10.1.1.1', mail_from = 'a@deep.example.com' }))
    assert.equal('v=spf1 foo:bar -all', record({ ip = '10.9.9.9', mail_from = 'a@bad.example.com' }))
    assert.is_nil(record({ ip = '10.9.9.9', mail_from = 'a@two.example.com' }))
    assert.is_nil(record({ ip = '10.9.9.9', mail_from = 'a@nonexistent.example.com' }))
    assert.is_nil(record({ ip = '10.9.9.9', mail_from = 'a@slow.example.com' }))
    -- A check that found none after one that found one says none.
    assert.is_nil(assert(r:spf{ ip = '10.9.9.9', mail_from = 'a@two.example.com' }).record)
  end)

  it('asks only what the evaluation needs, and every address of an mx term in one round', function()
    local _, _, _, asked = offline({ ip = '203.0.113.7', mail_from = 'a@mxd.example.com' })
    table.sort(asked)
    assert.same({ 'A mx1.example.com', 'A mx2.example.com', 'A mx3.example.com',
                  'MX mxhost.example.com', 'TXT mxd.example.com' }, asked)
    -- A pass on the first term: the include is never asked.
    _, _, _, asked = offline({ ip = '192.0.2.9', mail_from = 'a@example.com' })
    assert.same({ 'TXT example.com' }, asked)
  end)

  it('takes one round per question an evaluation reaches, within spf_max_rounds', function()
    local checker = dio.spf_checker()
    local rounds = 0
    local resolve = async_resolver(false)
    auth.spf_async(checker, { ip = '10.9.9.9', mail_from = 'a@deep.example.com' },
      function(name, qtype, cb)
        rounds = rounds + 1
        resolve(name, qtype, cb)
      end, function(res) assert.equal('fail', res.result) end)
    -- deep, d1, d2, d3 (a), mxhost (mx), the three mx names' addresses (one round)
    assert.equal(8, rounds)
    assert.is_true(dio.limits.spf_max_rounds >= 1 + 2 * dio.limits.spf_max_dns_terms)
  end)

  it('gives temperror when a check needs more rounds than allowed', function()
    local res = offline({ ip = '10.9.9.9', mail_from = 'a@deep.example.com' }, false, 2)
    assert.equal('temperror', res.result)
    assert.is_nil(res.questions)
  end)

  -- [EVAL-3]: an SPF temperror is what makes DMARC temperror rather than fail.
  it('gives temperror for SERVFAIL, a timeout, or a resolver that fails or answers garbage', function()
    assert.equal('temperror', offline({ ip = '10.9.9.9', mail_from = 'a@broken.example.com' }).result)
    assert.equal('temperror', offline({ ip = '10.9.9.9', mail_from = 'a@slow.example.com' }).result)
    local checker = dio.spf_checker()
    local out
    auth.spf_async(checker, { ip = '10.9.9.9', mail_from = 'a@example.com' },
      function() error('resolver down') end, function(res) out = res end)
    assert.equal('temperror', out.result)
    auth.spf_async(checker, { ip = '203.0.113.5', mail_from = 'a@mxd.example.com' },
      function(name, qtype, cb)
        if qtype == 'A' then return cb('noerror', { 'not an address' }) end
        local q = network():query(name, qtype)
        cb(q.rcode, q.records)
      end, function(res) out = res end)
    assert.equal('temperror', out.result)
  end)

  it('refuses an unusable client address as data', function()
    local res, err, code = offline({ ip = 'junk', mail_from = 'a@example.com' })
    assert.is_nil(res)
    assert.equal('invalid', code)
    assert.truthy(err)
  end)

  it('checks, answers and clears by hand', function()
    local c = dio.spf_checker{ receiver = 'mx.example.net' }
    local res = assert(c:check{ ip = '192.0.2.9', mail_from = 'a@example.com' })
    assert.equal('temperror', res.result)
    assert.same({ { name = 'example.com', type = 'TXT' } }, res.questions)
    assert.is_true(c:answer('Example.COM.', 'TXT', 'noerror', { 'v=spf1 ip4:192.0.2.0/24 -all' }))
    res = assert(c:check{ ip = '192.0.2.9', mail_from = 'a@example.com' })
    assert.equal('pass', res.result)
    assert.is_nil(res.questions)
    -- A later answer replaces the earlier one.
    assert.is_true(c:answer('example.com', 'TXT', 'nxdomain'))
    assert.equal('none', c:check{ ip = '192.0.2.9', mail_from = 'a@example.com' }.result)
    c:clear()
    assert.is_table(c:check{ ip = '192.0.2.9', mail_from = 'a@example.com' }.questions)
    -- Records that cannot be of their type, names that cannot exist: data errors.
    assert.equal('syntax', select(3, c:answer('mx.example.com', 'A', 'noerror', { '300.1.1.1' })))
    assert.equal('syntax', select(3, c:answer('mx.example.com', 'MX', 'noerror', { '70000 a.example' })))
    assert.equal('syntax', select(3, c:answer('bad..name', 'TXT', 'nxdomain')))
    assert.is_true(c:answer('mx.example.com', 'MX', 'noerror', { '10 A.Example.', 'b.example' }))
    -- Contract misuse raises.
    assert.has_error(function() c:answer('x.example', 'SOA', 'noerror') end)
    assert.has_error(function() c:answer('x.example', 'TXT', 'maybe') end)
    assert.has_error(function() c:answer('x.example', 'TXT', 'noerror', { 1 }) end)
    assert.has_error(function() dio.spf_checker{ bogus = 1 } end)
    c:close()
    c:close() -- idempotent
    assert.has_error(function() c:check{ ip = '192.0.2.9' } end)
  end)

  it('holds at most spf_max_answers answers', function()
    local c = dio.spf_checker()
    for i = 1, dio.limits.spf_max_answers do
      assert.is_true(c:answer('h' .. i .. '.example', 'A', 'nxdomain'))
    end
    assert.is_true(c:answer('h1.example', 'A', 'nodata')) -- a replacement still fits
    local ok, _, code = c:answer('one-more.example', 'A', 'nxdomain')
    assert.is_nil(ok)
    assert.equal('limit', code)
    c:clear()
    assert.is_true(c:answer('one-more.example', 'A', 'nxdomain'))
  end)
end)
