-- dmarc.core: every binding function, the error convention (raises versus
-- nil, msg, code), closed objects and collection. Codes are compared, never
-- message text.
require 'test_env'
local core = require 'dmarc.core'
local fake = require 'fake_resolver'
local resolve = require 'dmarc.receive.resolve'

local function codes(list)
  local t = {}
  for i, w in ipairs(list) do t[i] = w.code end
  return t
end

local function contains(list, value)
  for _, v in ipairs(list) do
    if v == value then return true end
  end
  return false
end

describe('dmarc.core module', function()
  it('has a name, a version and the limits of dmarc.h', function()
    assert.equal('dmarc.core', core._NAME)
    assert.matches('^%d+%.%d+%.%d+$', core._VERSION)
    -- [WALK-2] at most 8 queries per walk; [OPEN-5] at most 8 author domains
    assert.equal(8, core.limits.walk_max_queries)
    assert.equal(8, core.limits.max_author_domains)
    assert.equal(64, core.limits.eval_max_queries)
    assert.equal(253, core.limits.domain_max_len)
  end)
end)

describe('core.record_parse', function()
  it('reads a minimal record with defaults filled in [AGG-8]', function()
    local r = assert(core.record_parse('v=DMARC1; p=reject'))
    assert.equal('rfc9989', r.mode)
    assert.is_true(r.usable)
    assert.equal('reject', r.p)
    assert.equal('reject', r.sp) -- sp inherits p
    assert.equal('reject', r.np) -- np inherits sp
    assert.is_true(r.has_p)
    assert.is_false(r.has_sp)
    assert.equal('relaxed', r.adkim)
    assert.equal('relaxed', r.aspf)
    assert.equal(100, r.pct)
    assert.equal('u', r.psd)
    assert.is_false(r.testing)
    assert.equal(86400, r.ri)
    assert.same({}, r.rua)
    assert.same({}, r.ruf)
    assert.same({}, r.warnings)
    assert.equal(0, r.warnings_dropped)
    assert.equal('table', type(r.fo))
    assert.equal('string', type(r.fo_text))
  end)

  it('reads every policy tag', function()
    local r = assert(core.record_parse(
      'v=DMARC1; p=quarantine; sp=none; np=reject; adkim=s; aspf=s; t=y; psd=n'))
    assert.equal('quarantine', r.p)
    assert.equal('none', r.sp)
    assert.equal('reject', r.np)
    assert.equal('strict', r.adkim)
    assert.equal('strict', r.aspf)
    assert.is_true(r.testing)
    assert.is_true(r.has_t)
    assert.equal('n', r.psd)
    assert.is_true(r.has_psd)
  end)

  it('keeps rua URIs as {uri, max_size, mailto} without the size suffix [REC-7]', function()
    local r = assert(core.record_parse(
      'v=DMARC1; p=none; rua=mailto:a@example.com!10m,mailto:b@example.com', 'rfc7489'))
    assert.equal('rfc7489', r.mode)
    assert.equal(2, #r.rua)
    assert.equal('mailto:a@example.com', r.rua[1].uri)
    assert.equal(10 * 1024 * 1024, r.rua[1].max_size)
    assert.is_true(r.rua[1].mailto)
    assert.equal('mailto:b@example.com', r.rua[2].uri)
    assert.equal(0, r.rua[2].max_size)
    assert.is_true(r.has_rua)
  end)

  it('lists warnings as {code, offset, tag} [REC-4]', function()
    local r = assert(core.record_parse('v=DMARC1; p=none; foo=bar'))
    assert.is_true(contains(codes(r.warnings), 'unknown_tag'))
    for _, w in ipairs(r.warnings) do
      assert.equal('number', type(w.offset))
      if w.code == 'unknown_tag' then assert.equal('foo', w.tag) end
    end
  end)

  it('flags tag-name case in rfc9989 mode only [REC-3]', function()
    local r9 = assert(core.record_parse('v=DMARC1; P=reject', 'rfc9989'))
    assert.is_true(contains(codes(r9.warnings), 'tag_case'))
    assert.is_false(r9.has_p)
    local r7 = assert(core.record_parse('v=DMARC1; P=reject', 'rfc7489'))
    assert.equal('reject', r7.p)
  end)

  it('says why a parsed record is not usable in diag [EVAL-7] [OPEN-1] [OPEN-4]', function()
    assert.equal('none', assert(core.record_parse('v=DMARC1; p=reject')).diag)
    local dup = assert(core.record_parse('v=DMARC1; p=none; p=reject'))
    assert.is_false(dup.usable)
    assert.equal('duplicate_tag', dup.diag)
    local bad = assert(core.record_parse('v=DMARC1; p=reject; sp=bogus'))
    assert.is_false(bad.usable)
    assert.equal('invalid_policy', bad.diag)
  end)

  it('returns nil, msg, code for text that is not a record [REC-2]', function()
    local r, msg, code = core.record_parse('p=reject; v=DMARC1')
    assert.is_nil(r)
    assert.equal('string', type(msg))
    assert.equal('not_dmarc', code)
    assert.equal('not_dmarc', select(3, core.record_parse('v=DMARC10; p=reject')))
    assert.equal('not_dmarc', select(3, core.record_parse('')))
  end)

  it('takes text with NUL bytes as data, not as a C string end', function()
    local r = core.record_parse('v=DMARC1; p=rej\0ect')
    assert.is_false(r ~= nil and r.has_p and r.p == 'reject')
    assert.equal('not_dmarc', select(3, core.record_parse('\0v=DMARC1; p=reject')))
  end)

  it('raises on contract misuse', function()
    assert.has_error(function() core.record_parse() end)
    assert.has_error(function() core.record_parse({}) end)
    assert.has_error(function() core.record_parse('v=DMARC1', 'rfc1234') end)
  end)
end)

describe('core.is_record', function()
  it('tells DMARC records from other TXT records [REC-2]', function()
    assert.is_true(core.is_record('v=DMARC1; p=none'))
    assert.is_true(core.is_record('v = DMARC1 ;p=none'))
    assert.is_false(core.is_record('v=spf1 -all'))
    assert.is_false(core.is_record('v=DMARC1 p=none'))
    -- The name v is a case-insensitive ABNF literal in both modes (RFC 9989 §4.8).
    assert.is_true(core.is_record('V=DMARC1; p=none', 'rfc9989'))
    assert.is_false(core.is_record('V=dmarc1; p=none', 'rfc9989'))
    assert.is_true(core.is_record('V=DMARC1; p=none', 'rfc7489'))
  end)

  it('raises on a bad mode', function()
    assert.has_error(function() core.is_record('v=DMARC1', 'bogus') end)
  end)
end)

describe('core.from_parse', function()
  it('reads a mailbox with a display name [FROM-1]', function()
    local list = assert(core.from_parse('"Joe Q. Public" <Joe@Example.COM>'))
    assert.equal(1, #list)
    assert.equal('example.com', list[1].domain)
    assert.equal('Joe', list[1].local_part)
    assert.equal('Joe Q. Public', list[1].display)
    assert.is_nil(list[1].problem)
  end)

  it('reads every mailbox of a list [FROM-6]', function()
    local list = assert(core.from_parse('a@one.example, b@two.example'))
    assert.equal(2, #list)
    assert.equal('one.example', list[1].domain)
    assert.equal('two.example', list[2].domain)
  end)

  it('gives no mailbox for group syntax only [FROM-4]', function()
    assert.same({}, assert(core.from_parse('undisclosed-recipients:;')))
  end)

  it('converts a U-label domain to its A-label [FROM-3]', function()
    local list = assert(core.from_parse('x@bücher.example'))
    assert.equal('xn--bcher-kva.example', list[1].domain)
  end)

  it('returns nil, msg, code when nothing usable can be read', function()
    local list, msg, code = core.from_parse('')
    assert.is_nil(list)
    assert.equal('string', type(msg))
    assert.equal('string', type(code))
  end)

  it('raises on a non-string', function()
    assert.has_error(function() core.from_parse(nil) end)
  end)
end)

describe('core.domain_normalize', function()
  it('lowercases and strips one trailing dot [FROM-2]', function()
    assert.equal('example.com', core.domain_normalize('ExAmple.COM.'))
  end)

  it('converts U-labels to A-labels [FROM-3]', function()
    assert.equal('xn--bcher-kva.example', core.domain_normalize('Bücher.example'))
  end)

  it('returns nil, msg, syntax for a name that is not a host name', function()
    for _, bad in ipairs({ 'bad..name', '', '.', 'a b.example', string.rep('a', 64) .. '.example',
      string.rep('abcdefgh.', 30) .. 'com' }) do
      local d, msg, code = core.domain_normalize(bad)
      assert.is_nil(d, bad)
      assert.equal('string', type(msg))
      assert.equal('syntax', code)
    end
  end)

  it('raises on a non-string', function()
    assert.has_error(function() core.domain_normalize({}) end)
  end)
end)

describe('core.psl_org_domain', function()
  if not core.has_psl then
    pending('built without libpsl')
    return
  end

  it('gives the registrable domain (PSL) [PSL-1]', function()
    local org, is_suffix = core.psl_org_domain('a.b.example.co.uk')
    assert.equal('example.co.uk', org)
    assert.is_false(is_suffix)
    assert.equal('example.com', (core.psl_org_domain('Mail.Example.COM.')))
  end)

  it('says when the name is itself a public suffix [ALN-6]', function()
    local org, is_suffix = core.psl_org_domain('co.uk')
    assert.equal('co.uk', org)
    assert.is_true(is_suffix)
  end)

  it('uses the private section too [OPEN-2]', function()
    assert.equal('someone.github.io', (core.psl_org_domain('www.someone.github.io')))
  end)

  it('returns nil, msg, syntax for a bad name', function()
    assert.equal('syntax', select(3, core.psl_org_domain('bad..name')))
  end)
end)

describe('core.new', function()
  it('makes a context with defaults', function()
    local ctx = core.new()
    assert.equal('rfc9989', ctx:mode())
    assert.matches('^dmarc%.ctx', tostring(ctx))
    ctx:close()
  end)

  it('makes an rfc7489 context with the PSL [MODE-1]', function()
    if not core.has_psl then return end
    local ctx = core.new({ mode = 'rfc7489', pct_as_testing = false, max_author_domains = 2 })
    assert.equal('rfc7489', ctx:mode())
  end)

  it('raises on a bad option', function()
    assert.has_error(function() core.new({ mode = 'rfc1234' }) end)
    assert.has_error(function() core.new({ mode = 7489 }) end)
    assert.has_error(function() core.new({ max_author_domains = 0 }) end)
    assert.has_error(function() core.new({ max_author_domains = 9 }) end)
    assert.has_error(function() core.new({ max_author_domains = 1.5 }) end)
    assert.has_error(function() core.new({ pct_as_testing = 'yes' }) end)
    assert.has_error(function() core.new('rfc9989') end)
    assert.has_error(function() core.new({ mod = 'rfc9989' }) end)
    assert.has_error(function() core.new({ 'rfc9989' }) end)
  end)

  it('falls back to another list when a PSL file cannot be loaded', function()
    if not core.has_psl then return end
    -- psl_latest takes the newest list that loads: a missing file falls
    -- back to the distribution's or the built-in list [PSL-3].
    local ctx = core.new({ mode = 'rfc7489', psl_file = '/nonexistent/psl.dat' })
    assert.equal('rfc7489', ctx:mode())
  end)
end)

describe('core.new_cache', function()
  it('has size, clear, stats', function()
    local cache = core.new_cache(16)
    assert.equal(0, cache:size())
    local hits, misses = cache:stats()
    assert.equal(0, hits)
    assert.equal(0, misses)
    cache:clear()
    assert.equal(0, cache:size())
    assert.matches('^dmarc%.cache', tostring(cache))
    cache:close()
  end)

  it('raises on a bad size', function()
    assert.has_error(function() core.new_cache(0) end)
    assert.has_error(function() core.new_cache() end)
    assert.has_error(function() core.new_cache('many') end)
  end)

  it('raises when used after close, and close is idempotent', function()
    local cache = core.new_cache(4)
    cache:close()
    cache:close()
    assert.has_error(function() cache:size() end)
    assert.has_error(function() cache:stats() end)
    assert.matches('closed', tostring(cache))
  end)
end)

-- A record for example.com and nothing else.
local ZONE = { ['_dmarc.example.com'] = { 'v=DMARC1; p=reject' } }

local function finish(ev, map)
  return resolve.run_sync(ev, fake.sync(map or ZONE))
end

describe('dmarc.eval', function()
  local ctx
  before_each(function() ctx = core.new() end)

  it('runs the query loop: run, query, answer, verdict', function()
    local ev = ctx:eval()
    assert.is_true(ev:add_from('someone@example.com'))
    assert.is_true(ev:add_dkim('example.com', 'sel', 'pass'))
    assert.is_true(ev:add_spf('example.com', 'fail', false))
    assert.is_true(ev:set_roll(0))
    assert.is_true(ev:set_now(1000))
    assert.is_false(ev:run())
    local name, qtype = ev:query()
    assert.equal('_dmarc.example.com', name) -- [DISC-5] the author domain first
    assert.equal('TXT', qtype)
    ev:answer('noerror', { 'v=DMARC1; p=reject' }, 300)
    finish(ev)
    local v = ev:verdict()
    assert.equal('pass', v.result)
    assert.equal('example.com', v.author_domain)
    assert.equal('example.com', v.policy_domain)
    assert.is_true(v.has_policy)
    assert.equal('reject', v.policy)
    assert.equal('p', v.policy_tag)
    assert.equal('none', v.reason)
    assert.is_true(v.dkim_aligned)
    assert.is_false(v.spf_aligned)
    assert.equal('reject', v.record.p)
    assert.equal('_dmarc.example.com/TXT', ev:queries()[1])
    assert.same({}, ev:flags())
    assert.equal('strict', ev:dkim_alignment(1))
    assert.equal('none', ev:spf_alignment())
    assert.equal(1, #ev:domains())
    assert.equal('example.com', ev:domains()[1].author_domain)
    assert.is_nil(ev:query())
    ev:close()
  end)

  it('fails an unaligned message and reports the requested policy [EVAL-1]', function()
    local ev = ctx:eval()
    ev:add_from('someone@example.com')
    ev:add_dkim('other.example', 's', 'pass')
    ev:set_roll(0)
    finish(ev)
    local v = ev:verdict()
    assert.equal('fail', v.result)
    assert.equal('reject', v.policy)
    assert.equal('reject', v.applied)
    assert.is_false(v.dkim_aligned)
    assert.equal('none', ev:dkim_alignment(1))
  end)

  it('gives the light outcome, the verdict without its record, and the record alone', function()
    local ev = ctx:eval()
    ev:add_from('someone@example.com')
    ev:add_dkim('other.example', 's', 'pass')
    ev:set_roll(0)
    finish(ev)
    -- The `dmarc eval` output shape: no record, no has_policy, flags as an array.
    local out = ev:outcome()
    assert.equal(ev:verdict().org_domain, out.org_domain)
    out.org_domain = nil
    assert.same({
      result = 'fail', author_domain = 'example.com', policy_domain = 'example.com',
      policy = 'reject', applied = 'reject', spf_aligned = false, dkim_aligned = false,
      flags = {},
    }, out)
    local light = ev:verdict(false)
    assert.is_nil(light.record)
    assert.equal('fail', light.result)
    local full = ev:verdict()
    full.record = nil
    assert.same(full, light)
    assert.same(ev:verdict().record, ev:record())
    assert.equal('reject', ev:record().p)
    assert.equal('relaxed', ev:record().adkim)
  end)

  it('outcome: no policy and no applied without a usable record; no record() either', function()
    local ev = ctx:eval()
    ev:add_from('someone@nowhere.example')
    finish(ev)
    local out = ev:outcome()
    assert.equal('none', out.result)
    assert.is_nil(out.policy)
    assert.is_nil(out.applied)
    assert.is_nil(out.reason)
    assert.is_nil(ev:record())
    ev = ctx:eval()
    assert.is_true(ev:run())
    assert.same({ 'no_from' }, ev:outcome().flags)
    ev = ctx:eval()
    assert.has_error(function() ev:outcome() end) -- not run yet
    assert.has_error(function() ev:record() end)
  end)

  it('outcome: the applied policy and reason of t=y [POL-4]', function()
    local ev = ctx:eval()
    ev:add_from('someone@example.com')
    ev:set_roll(0)
    finish(ev, { ['_dmarc.example.com'] = { 'v=DMARC1; p=reject; t=y' } })
    local out = ev:outcome()
    assert.equal('reject', out.policy)
    assert.equal('quarantine', out.applied)
    assert.equal('policy_test_mode', out.reason)
  end)

  it('gives temperror on SERVFAIL [DISC-10]', function()
    local ev = ctx:eval()
    ev:add_from('someone@example.com')
    finish(ev, { ['_dmarc.example.com'] = 'SERVFAIL' })
    assert.equal('temperror', ev:verdict().result)
  end)

  it('flags a message without From [FROM-4]', function()
    local ev = ctx:eval()
    assert.is_true(ev:run())
    local v = ev:verdict()
    assert.equal('none', v.result)
    assert.is_nil(v.author_domain)
    assert.same({ 'no_from' }, ev:flags())
    assert.same({}, ev:queries())
  end)

  it('flags two From fields [FROM-5]', function()
    local ev = ctx:eval()
    ev:add_from('a@example.com')
    ev:add_from('b@example.com')
    finish(ev)
    assert.is_true(contains(ev:flags(), 'multiple_from'))
    assert.is_not.equal('pass', ev:verdict().result)
  end)

  it('takes an author domain directly, or returns nil, msg, syntax', function()
    local ev = ctx:eval()
    assert.is_true(ev:add_author_domain('Example.COM'))
    assert.equal('syntax', select(3, ev:add_author_domain('bad..name')))
    finish(ev)
    assert.equal('example.com', ev:verdict().author_domain)
  end)

  it('returns nil, msg, limit past the From field limit', function()
    local ev = ctx:eval()
    local last
    for _ = 1, core.limits.from_max_fields + 1 do
      last = { ev:add_from('a@example.com') }
    end
    assert.is_nil(last[1])
    assert.equal('limit', last[3])
  end)

  it('resets to a fresh evaluation', function()
    local ev = ctx:eval()
    ev:add_from('a@example.com')
    finish(ev)
    ev:reset()
    assert.has_error(function() ev:verdict() end)
    assert.is_true(ev:run())
    assert.same({ 'no_from' }, ev:flags())
  end)

  it('raises on contract misuse', function()
    local ev = ctx:eval()
    assert.has_error(function() ev:add_spf('example.com', 'maybe') end)
    assert.has_error(function() ev:add_dkim('example.com', 's', 'PASSED') end)
    assert.has_error(function() ev:add_dkim('example.com', 's') end)
    assert.has_error(function() ev:set_roll(100) end)
    assert.has_error(function() ev:set_roll(-1) end)
    assert.has_error(function() ev:set_now(-5) end)
    assert.has_error(function() ev:verdict() end) -- not run yet
    assert.has_error(function() ev:domains() end)
    assert.has_error(function() ev:answer('noerror', {}) end) -- nothing pending
    assert.has_error(function() ev:dkim_alignment(0) end)
    ev:add_from('a@example.com')
    assert.is_false(ev:run())
    assert.has_error(function() ev:run() end) -- pending question not answered
    assert.has_error(function() ev:answer('refused', {}) end)
    assert.has_error(function() ev:answer('noerror', { 42 }) end)
    assert.has_error(function() ev:answer('noerror', 'v=DMARC1') end)
    assert.has_error(function() ev:answer('noerror', {}, -1) end)
    assert.has_error(function() ev:add_from('b@example.com') end) -- inputs after run
    ev:answer('nxdomain', nil, 0)
    finish(ev)
    assert.has_error(function() ctx.eval(ev) end) -- wrong self type
  end)

  it('reads at most answer_max_rrs TXT records of one answer', function()
    local ev = ctx:eval()
    ev:add_from('a@example.com')
    assert.is_false(ev:run())
    local txts = {}
    for i = 1, core.limits.answer_max_rrs + 10 do txts[i] = 'not a record ' .. i end
    ev:answer('noerror', txts, 60)
    finish(ev, {})
    assert.is_string(ev:verdict().result)
  end)

  it('raises when used after close; close is idempotent', function()
    local ev = ctx:eval()
    ev:close()
    ev:close()
    for _, m in ipairs({ 'run', 'query', 'verdict', 'flags', 'queries', 'reset', 'spf_alignment' }) do
      assert.has_error(function() ev[m](ev) end, nil, m)
    end
    assert.has_error(function() ev:add_from('a@example.com') end)
    assert.matches('closed', tostring(ev))
  end)

  it('keeps working when its ctx is closed first; the ctx is then unusable', function()
    local ev = ctx:eval()
    ev:add_from('a@example.com')
    ctx:close()
    assert.has_error(function() ctx:eval() end)
    assert.has_error(function() ctx:mode() end)
    finish(ev)
    assert.equal('fail', ev:verdict().result)
    ev:close()
  end)

  it('keeps its ctx and cache alive through collection', function()
    local ev = core.new():eval(core.new_cache(8))
    collectgarbage()
    collectgarbage()
    ev:add_from('a@example.com')
    finish(ev)
    assert.equal('fail', ev:verdict().result)
  end)

  it('is collected with its ctx and cache, in any order', function()
    for _ = 1, 200 do
      local c = core.new()
      local cache = core.new_cache(4)
      local e = c:eval(cache)
      e:add_from('a@example.com')
      if math.random(2) == 1 then c:close() end
      if math.random(2) == 1 then cache:close() end
    end
    collectgarbage()
    collectgarbage()
    assert.is_true(true)
  end)

  it('raises when given a closed cache', function()
    local cache = core.new_cache(4)
    cache:close()
    assert.has_error(function() ctx:eval(cache) end)
    assert.has_error(function() ctx:eval('cache') end)
  end)

  if _VERSION == 'Lua 5.4' then
    it('closes through a to-be-closed variable (Lua 5.4)', function()
      local chunk = assert(load([[
        local ctx = ...
        local ev <close> = ctx:eval()
        return ev
      ]]))
      local ev = chunk(ctx)
      assert.has_error(function() ev:run() end)
    end)
  end
end)

describe('dmarc.cache with evaluations [DISC-11]', function()
  it('answers a second evaluation from the cache', function()
    local ctx = core.new()
    local cache = core.new_cache(64)
    local function once(now)
      local ev = ctx:eval(cache)
      ev:add_from('a@example.com')
      ev:add_dkim('example.com', 's', 'pass')
      ev:set_now(now)
      local r = fake.sync(ZONE)
      resolve.run_sync(ev, r)
      local v = ev:verdict()
      return v.result, #ev:queries(), #r.log
    end
    local result1, asked1 = once(1000)
    assert.equal('pass', result1)
    assert.is_true(asked1 > 0)
    assert.is_true(cache:size() > 0)
    local result2, asked2, resolved2 = once(1001)
    assert.equal('pass', result2)
    assert.equal(0, asked2)
    assert.equal(0, resolved2)
    local hits = cache:stats()
    assert.is_true(hits > 0)
    -- past the TTL the names are asked again
    local _, asked3 = once(1000 + 100000)
    assert.is_true(asked3 > 0)
    cache:clear()
    assert.equal(0, cache:size())
  end)

  it('keeps a closed cache alive for the evaluations using it', function()
    local cache = core.new_cache(8)
    local ev = core.new():eval(cache)
    cache:close()
    assert.has_error(function() cache:size() end)
    ev:add_from('a@example.com')
    finish(ev)
    assert.equal('fail', ev:verdict().result)
  end)
end)
