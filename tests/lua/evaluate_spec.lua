-- require 'dmarc': the synchronous and callback drivers, engines, the dns
-- map semantics (dmarc.receive.json_dns) and input checking.
require 'test_env'
local dmarc = require 'dmarc'
local json_dns = require 'dmarc.receive.json_dns'
local fake = require 'fake_resolver'

local ZONE = { ['_dmarc.example.com'] = { 'v=DMARC1; p=reject' } }

local function input(extra)
  local t = {
    id = 'm1',
    from = 'Someone <someone@example.com>',
    dkim = { { result = 'pass', domain = 'example.com', selector = 's1' } },
    roll = 0,
    dns = ZONE,
  }
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end

local OUTPUT_FIELDS = {
  'id', 'result', 'author_domain', 'policy_domain', 'org_domain', 'policy', 'applied', 'reason',
  'spf_aligned', 'dkim_aligned', 'flags', 'queries',
}

describe('dmarc.receive.json_dns map semantics', function()
  local lookup = assert(json_dns.resolver({
    ['_dmarc.example.com'] = { 'v=DMARC1; p=none', { 'v=DMARC1; p=rej', 'ect' } },
    ['empty.example'] = {},
    ['Down.Example.'] = 'SERVFAIL',
    ['slow.example'] = 'timeout',
    ['gone.example'] = 'NXDOMAIN',
    ['bare.example'] = 'NODATA',
    ['a.b.deep.example'] = { 'x' },
  }))

  it('answers TXT with the records of a mapped name, strings joined [REC-1]', function()
    local rc, txts = lookup('_dmarc.example.com', 'TXT')
    assert.equal('noerror', rc)
    assert.same({ 'v=DMARC1; p=none', 'v=DMARC1; p=reject' }, txts)
  end)

  it('answers NODATA for other types of a mapped name and for []', function()
    assert.equal('nodata', (lookup('_dmarc.example.com', 'A')))
    assert.equal('nodata', (lookup('_dmarc.example.com', 'MX')))
    assert.equal('nodata', (lookup('empty.example', 'TXT')))
    assert.equal('nodata', (lookup('bare.example', 'TXT')))
  end)

  it('answers rcodes given as words, for every type, names case-insensitive', function()
    assert.equal('servfail', (lookup('down.example', 'TXT')))
    assert.equal('servfail', (lookup('DOWN.example.', 'AAAA')))
    assert.equal('timeout', (lookup('slow.example', 'TXT')))
    assert.equal('nxdomain', (lookup('gone.example', 'A')))
  end)

  it('answers NXDOMAIN for an absent name, NODATA above a mapped one [DISC-12]', function()
    assert.equal('nxdomain', (lookup('nothing.example', 'TXT')))
    assert.equal('nxdomain', (lookup('x.example.com', 'A')))
    assert.equal('nodata', (lookup('b.deep.example', 'A')))
    assert.equal('nodata', (lookup('deep.example', 'TXT')))
    assert.equal('nodata', (lookup('example', 'TXT')))
    assert.equal('nodata', (lookup('example.com', 'A')))
    assert.equal('nxdomain', (lookup('c.a.b.deep.example', 'A')))
  end)

  it('rejects malformed maps', function()
    assert.is_nil((json_dns.resolver('x')))
    assert.is_nil((json_dns.resolver({ a = 42 })))
    assert.is_nil((json_dns.resolver({ a = 'REFUSED' })))
    assert.is_nil((json_dns.resolver({ a = { 42 } })))
    assert.is_nil((json_dns.resolver({ a = { { 1 } } })))
    assert.is_nil((json_dns.resolver({ a = { x = 'y' } })))
    assert.is_nil((json_dns.resolver({ [1] = { 'x' } })))
    assert.is_not_nil((json_dns.resolver(nil)))
  end)
end)

describe('dmarc.evaluate (synchronous)', function()
  it('returns exactly the output object', function()
    local out = assert(dmarc.evaluate(input()))
    local allowed = {}
    for _, k in ipairs(OUTPUT_FIELDS) do allowed[k] = true end
    for k in pairs(out) do assert.is_true(allowed[k], k) end
    assert.equal('m1', out.id)
    assert.equal('pass', out.result)
    assert.equal('example.com', out.author_domain)
    assert.equal('example.com', out.policy_domain)
    assert.equal('reject', out.policy)
    assert.equal('none', out.applied) -- a pass has nothing applied
    assert.is_nil(out.reason)
    assert.is_true(out.dkim_aligned)
    assert.is_false(out.spf_aligned)
    assert.same({}, out.flags)
    assert.equal('_dmarc.example.com/TXT', out.queries[1])
  end)

  it('takes a resolve function in place of dns', function()
    local r = fake.sync(ZONE)
    local out = assert(dmarc.evaluate(input({ dns = false, resolve = r })))
    assert.equal('pass', out.result)
    assert.same(out.queries, r.log)
  end)

  it('fails an unaligned message, applying the policy when sampled [EVAL-1]', function()
    local out = assert(dmarc.evaluate(input({ dkim = {} })))
    assert.equal('fail', out.result)
    assert.equal('reject', out.policy)
    assert.equal('reject', out.applied)
  end)

  it('lowers the policy for t=y, reason policy_test_mode [POL-4]', function()
    local out = assert(dmarc.evaluate(input({
      dkim = {}, dns = { ['_dmarc.example.com'] = { 'v=DMARC1; p=reject; t=y' } },
    })))
    assert.equal('fail', out.result)
    assert.equal('reject', out.policy)
    assert.equal('quarantine', out.applied)
    assert.equal('policy_test_mode', out.reason)
  end)

  it('samples out with pct in rfc7489 mode by the roll [POL-6]', function()
    local dns = { ['_dmarc.example.com'] = { 'v=DMARC1; p=reject; pct=50' } }
    local sampled = assert(dmarc.evaluate(input({ mode = 'rfc7489', dkim = {}, dns = dns, roll = 49 })))
    assert.equal('reject', sampled.applied)
    assert.is_nil(sampled.reason)
    local out = assert(dmarc.evaluate(input({ mode = 'rfc7489', dkim = {}, dns = dns, roll = 50 })))
    assert.equal('quarantine', out.applied)
    assert.equal('sampled_out', out.reason)
  end)

  it('gives temperror and no policy on SERVFAIL [DISC-10]', function()
    local out = assert(dmarc.evaluate(input({ dns = { ['_dmarc.example.com'] = 'SERVFAIL' } })))
    assert.equal('temperror', out.result)
    assert.is_nil(out.policy)
    assert.is_nil(out.applied)
  end)

  it('gives none with nil policy fields when no record exists [DISC-9]', function()
    local out = assert(dmarc.evaluate(input({ dns = {} })))
    assert.equal('none', out.result)
    assert.is_nil(out.policy)
    assert.is_nil(out.applied)
    assert.is_nil(out.policy_domain)
    assert.equal('example.com', out.author_domain)
  end)

  it('reads [] as a message without From [FROM-4]', function()
    local out = assert(dmarc.evaluate(input({ from = {} })))
    assert.equal('none', out.result)
    assert.is_nil(out.author_domain)
    assert.same({ 'no_from' }, out.flags)
    assert.same({}, out.queries)
  end)

  it('never passes two From fields [FROM-5] [OPEN-5]', function()
    local out = assert(dmarc.evaluate(input({ from = { 'a@example.com', 'b@example.com' } })))
    assert.is_not.equal('pass', out.result)
    local flagged = false
    for _, f in ipairs(out.flags) do flagged = flagged or f == 'multiple_from' end
    assert.is_true(flagged)
  end)

  it('uses SPF in mfrom scope by default, helo on request [ALN-1]', function()
    local spf = assert(dmarc.evaluate(input({
      dkim = {}, spf = { result = 'pass', domain = 'example.com' } })))
    assert.equal('pass', spf.result)
    assert.is_true(spf.spf_aligned)
    local helo = assert(dmarc.evaluate(input({
      dkim = {}, spf = { result = 'pass', domain = 'example.com', scope = 'helo' } })))
    assert.equal('pass', helo.result) -- HELO used when no MAIL FROM result was given
    local soft = assert(dmarc.evaluate(input({
      dkim = {}, spf = { result = 'softfail', domain = 'example.com' } })))
    assert.equal('fail', soft.result) -- [ALN-2]
  end)

  it('echoes any id as is, and none when absent', function()
    assert.same({ 1, 2 }, assert(dmarc.evaluate(input({ id = { 1, 2 } }))).id)
    assert.equal(7, assert(dmarc.evaluate(input({ id = 7 }))).id)
    local t = input()
    t.id = nil
    assert.is_nil(assert(dmarc.evaluate(t)).id)
  end)

  it('draws a random roll when none is given', function()
    local seen = {}
    for _ = 1, 400 do
      local r = dmarc.random_roll()
      assert.is_true(r >= 0 and r <= 99 and r == math.floor(r))
      seen[r] = true
    end
    local distinct = 0
    for _ in pairs(seen) do distinct = distinct + 1 end
    assert.is_true(distinct > 50)
    local t = input({ dkim = {} })
    t.roll = nil
    assert.equal('fail', assert(dmarc.evaluate(t)).result)
  end)

  it('returns nil, msg, input for malformed input objects', function()
    local bad = {
      'not a table',
      { dns = ZONE }, -- from is required
      input({ from = 42 }),
      input({ from = { 'a@example.com', 42 } }),
      input({ from = { x = 'a@example.com' } }),
      input({ mode = 'rfc1234' }),
      input({ spf = 'pass' }),
      input({ spf = { domain = 'example.com' } }),
      input({ spf = { result = 'maybe', domain = 'example.com' } }),
      input({ spf = { result = 'pass', domain = 'example.com', scope = 'rcpt' } }),
      input({ dkim = { { domain = 'example.com' } } }),
      input({ dkim = { { result = 'pass', domain = 'example.com', selector = 5 } } }),
      input({ dkim = 'pass' }),
      input({ roll = 100 }),
      input({ roll = -1 }),
      input({ roll = 1.5 }),
      input({ roll = '5' }),
      input({ dns = { x = 42 } }),
      input({ dns = 'none' }),
      input({ now = -1 }),
      input({ dns = false, resolve = 'yes' }),
    }
    for i, case in ipairs(bad) do
      local out, msg, code = dmarc.evaluate(case)
      assert.is_nil(out, 'case ' .. i)
      assert.equal('string', type(msg), 'case ' .. i)
      assert.equal('invalid', code, 'case ' .. i)
    end
  end)

  it('accepts result words and modes in any case', function()
    local out = assert(dmarc.evaluate(input({
      mode = 'RFC9989', dkim = { { result = 'PASS', domain = 'example.com' } } })))
    assert.equal('pass', out.result)
  end)

  it('adds details on request: verdict, domains, alignment [AGG-6]', function()
    local out, details = dmarc.evaluate(input(), { details = true })
    assert.equal('pass', out.result)
    assert.equal('pass', details.verdict.result)
    assert.equal('reject', details.verdict.record.p)
    assert.equal(1, #details.domains)
    assert.same({ 'strict' }, details.dkim_alignment)
    assert.equal('none', details.spf_alignment)
    assert.is_nil(select(2, dmarc.evaluate(input())))
  end)

  it('raises what a failing resolver raises', function()
    assert.has_error(function()
      dmarc.evaluate(input({ dns = false, resolve = function() error('resolver down') end }))
    end)
    assert.has_error(function()
      dmarc.evaluate(input({ dns = false, resolve = function() return 'refused' end }))
    end)
  end)

  it('counts a resolver that gives no rcode as SERVFAIL', function()
    local out = assert(dmarc.evaluate(input({ dns = false, resolve = function() end })))
    assert.equal('temperror', out.result)
  end)
end)

describe('dmarc.evaluate_async (callback driver)', function()
  -- on_done that records every call with its arguments
  local function collect()
    local calls = {}
    return calls, function(...)
      calls[#calls + 1] = { n = select('#', ...), ... }
    end
  end

  it('asks one question per callback and finishes once', function()
    local r = fake.async(ZONE)
    local calls, on_done = collect()
    dmarc.evaluate_async(input(), r.fn, on_done)
    assert.equal(0, #calls) -- waiting for the first answer
    assert.equal(1, #r.queue)
    r.pump()
    assert.equal(1, #calls)
    assert.equal('pass', calls[1][1].result)
    assert.same(calls[1][1].queries, r.log)
  end)

  it('gives the same output as the synchronous driver', function()
    for _, case in ipairs({
      input(), input({ dkim = {} }), input({ dns = {} }),
      input({ dns = { ['_dmarc.example.com'] = 'TIMEOUT' } }),
      input({ dkim = {}, dns = { ['_dmarc.example.com'] = { 'v=DMARC1; p=reject; t=y' } } }),
    }) do
      local want = assert(dmarc.evaluate(case))
      local r = fake.async(case.dns)
      local got
      dmarc.evaluate_async(case, r.fn, function(out) got = out end)
      r.pump()
      assert.same(want, got)
    end
  end)

  it('works with a resolver that calls back before returning (re-entrancy)', function()
    local r = fake.async(ZONE, 'now')
    local calls, on_done = collect()
    dmarc.evaluate_async(input(), r.fn, on_done)
    assert.equal(1, #calls)
    assert.equal('pass', calls[1][1].result)
  end)

  it('ignores a second callback for one question', function()
    local r = fake.async(ZONE, 'twice')
    local calls, on_done = collect()
    dmarc.evaluate_async(input(), r.fn, on_done)
    assert.equal(1, #calls)
    assert.equal('pass', calls[1][1].result)
  end)

  it('ignores a late callback after the evaluation ended', function()
    local saved = {}
    local calls, on_done = collect()
    dmarc.evaluate_async(input(), function(_, _, cb)
      saved[#saved + 1] = cb
      error('resolver down', 0)
    end, on_done)
    assert.equal(1, #calls)
    assert.is_nil(calls[1][1])
    assert.equal('error', calls[1][3])
    saved[1]('noerror', { 'v=DMARC1; p=none' }, 60)
    assert.equal(1, #calls)
  end)

  it('reports a malformed answer once, through on_done', function()
    local calls, on_done = collect()
    dmarc.evaluate_async(input(), function(_, _, cb) cb('refused') end, on_done)
    assert.equal(1, #calls)
    assert.is_nil(calls[1][1])
    assert.equal('string', type(calls[1][2]))
  end)

  it('reports a bad input through on_done with code input', function()
    local calls, on_done = collect()
    dmarc.evaluate_async({ dns = ZONE }, fake.async(ZONE).fn, on_done)
    assert.equal(1, #calls)
    assert.is_nil(calls[1][1])
    assert.equal('invalid', calls[1][3])
  end)

  it('raises on contract misuse', function()
    assert.has_error(function() dmarc.evaluate_async(input(), nil, function() end) end)
    assert.has_error(function() dmarc.evaluate_async(input(), function() end, nil) end)
  end)

  it('runs many evaluations interleaved', function()
    local r = fake.async(ZONE)
    local results = {}
    for i = 1, 20 do
      dmarc.evaluate_async(input({ id = i, dkim = (i % 2 == 0) and {} or nil }), r.fn,
        function(out) results[out.id] = out.result end)
    end
    r.pump()
    for i = 1, 20 do
      assert.equal(i % 2 == 0 and 'fail' or 'pass', results[i])
    end
  end)

  it('adds details on request', function()
    local r = fake.async(ZONE, 'now')
    local details
    dmarc.evaluate_async(input(), r.fn, function(_, d) details = d end, { details = true })
    assert.same({ 'strict' }, details.dkim_alignment)
  end)
end)

describe('dmarc.new engines', function()
  it('raises on bad options, naming the option', function()
    assert.has_error(function() dmarc.new({ mode = 'rfc1234' }) end)
    assert.has_error(function() dmarc.new({ cache_size = -1 }) end)
    assert.has_error(function() dmarc.new({ cache_size = 'big' }) end)
    assert.has_error(function() dmarc.new({ max_author_domains = 99 }) end)
    assert.has_error(function() dmarc.new({ colour = 'blue' }) end)
    assert.has_error(function() dmarc.new('rfc9989') end)
  end)

  it('uses its mode for inputs without one', function()
    local engine = dmarc.new({ mode = 'rfc7489' })
    local dns = { ['_dmarc.example.com'] = { 'v=DMARC1; p=reject; pct=0' } }
    local out = assert(engine:evaluate(input({ dkim = {}, dns = dns, roll = 0 })))
    assert.equal('sampled_out', out.reason) -- pct honoured: rfc7489 [POL-6]
    local out9 = assert(engine:evaluate(input({ mode = 'rfc9989', dkim = {}, dns = dns, roll = 0 })))
    assert.is_nil(out9.reason) -- pct historic in rfc9989 [POL-5]
    engine:close()
  end)

  it('shares its cache across evaluations [DISC-11]', function()
    local now = 5000
    local engine = dmarc.new({ cache_size = 100, clock = function() return now end })
    local r1 = fake.sync(ZONE)
    local out1 = assert(engine:evaluate(input({ dns = false, resolve = r1 })))
    assert.equal('pass', out1.result)
    assert.is_true(#r1.log > 0)
    local r2 = fake.sync(ZONE)
    local out2 = assert(engine:evaluate(input({ dns = false, resolve = r2 })))
    assert.equal('pass', out2.result)
    assert.same({}, r2.log)
    assert.same({}, out2.queries)
    local hits = engine:get_cache():stats()
    assert.is_true(hits > 0)
    -- input.now overrides the clock: far in the future, the entries expired
    local r3 = fake.sync(ZONE)
    assert(engine:evaluate(input({ dns = false, resolve = r3, now = now + 10 ^ 7 })))
    assert.is_true(#r3.log > 0)
    engine:close()
  end)

  it('shares its cache with asynchronous evaluations', function()
    local engine = dmarc.new({ cache_size = 100 })
    local r1 = fake.async(ZONE)
    local first
    engine:evaluate_async(input(), r1.fn, function(out) first = out end)
    r1.pump()
    assert.equal('pass', first.result)
    local r2 = fake.async(ZONE)
    local second
    engine:evaluate_async(input(), r2.fn, function(out) second = out end)
    r2.pump()
    assert.equal('pass', second.result)
    assert.same({}, r2.log)
  end)

  it('module-level evaluation uses no cache: each input brings its own DNS', function()
    assert.equal('pass', assert(dmarc.evaluate(input())).result)
    local out = assert(dmarc.evaluate(input({ dns = { ['_dmarc.example.com'] = 'SERVFAIL' } })))
    assert.equal('temperror', out.result)
  end)
end)

describe('dmarc re-exports', function()
  it('parses records, From fields and domains', function()
    assert.equal('reject', assert(dmarc.parse_record('v=DMARC1; p=reject')).p)
    assert.equal('not_dmarc', select(3, dmarc.parse_record('v=spf1 -all')))
    assert.is_true(dmarc.is_record('v=DMARC1'))
    assert.equal('example.com', assert(dmarc.parse_from('a@Example.com'))[1].domain)
    assert.equal('example.com', dmarc.normalize_domain('EXAMPLE.com.'))
    assert.equal(dmarc.core._VERSION, dmarc._VERSION)
  end)

  it('computes PSL alignment as RFC 7489 defines it [ALN-3] [ALN-4] [ALN-8]', function()
    if not dmarc.core.has_psl then return end
    assert.equal('example.com', (dmarc.org_domain('news.example.com')))
    assert.equal('relaxed', dmarc.aligned_psl('example.com', 'news.example.com'))
    assert.is_nil(dmarc.aligned_psl('example.com', 'news.example.com', 's'))
    assert.equal('strict', dmarc.aligned_psl('Example.COM', 'example.com', 's'))
    assert.equal('relaxed', dmarc.aligned_psl('cbg.bounces.example.com', 'example.com'))
    assert.is_nil(dmarc.aligned_psl('foo.example.net', 'news.example.com'))
    assert.is_nil(dmarc.aligned_psl('com', 'example.com')) -- [ALN-6]
    assert.equal('syntax', select(3, dmarc.aligned_psl('bad..name', 'example.com')))
  end)
end)
