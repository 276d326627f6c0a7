-- Site policy: treatments, the [POL-3] default and its one-line switch, verdict reasons
-- passed through, every override kind from the script and from the store, ARC [ARC-2,3],
-- recipients, contained hooks, script loading, and examples/site.lua exactly as the README
-- shows it, over the in-memory store.
local policy = require 'dmarc.site.policy'
local store = require 'dmarc.site.store'
local dlog = require 'dmarc.util.log'
local capture_log = require 'capture_log'

-- Verdict tables in the shape of dmarc.evaluate / `dmarc eval`.
local function verdict(over)
  local v = {
    result = 'fail', author_domain = 'example.com', policy_domain = 'example.com',
    org_domain = 'example.com', policy = 'reject', applied = 'reject', reason = nil,
    spf_aligned = false, dkim_aligned = false, flags = {}, queries = {},
  }
  for k, x in pairs(over or {}) do v[k] = x end
  return v
end

local function site_of(config, opts)
  local site, msg = policy.new(config, opts or { log = dlog.null() })
  assert(site, msg)
  return site
end

local function script(src, opts)
  opts = opts or {}
  opts.log = opts.log or dlog.null()
  local site, msg = policy.load_string(src, '@test-site.lua', opts)
  assert(site, msg)
  return site
end

local function reason_types(d)
  local t = {}
  for i, r in ipairs(d.reasons) do t[i] = r.type end
  return t
end

-- Decide through a memory store holding the given entries.
local function decide_with(site, v, ctx, entries)
  local st = store.memory()
  for key, entry in pairs(entries or {}) do assert(st:add(key, entry)) end
  return site:evaluate(v, ctx, st)
end

describe('policy defaults', function()
  local site = site_of{}

  it('accepts a pass; pass under an enforcing policy is disposition pass', function()
    local d = site:decide(verdict{ result = 'pass', applied = 'reject' }, {}, {})
    assert.equal('accept', d.action)
    assert.equal('pass', d.disposition)
    assert.equal('default', d.source)
    d = site:decide(verdict{ result = 'pass', policy = 'none', applied = 'none' }, {}, {})
    assert.equal('none', d.disposition)
  end)

  it('changes nothing for p=none [POL-1]', function()
    local d = site:decide(verdict{ policy = 'none', applied = 'none' }, {}, {})
    assert.equal('accept', d.action)
    assert.equal('none', d.disposition)
    assert.same({}, d.reasons)
  end)

  it('files quarantine in Junk', function()
    local d = site:decide(verdict{ policy = 'quarantine', applied = 'quarantine' }, {}, {})
    assert.equal('folder', d.action)
    assert.equal('Junk', d.folder)
    assert.equal('quarantine', d.disposition)
  end)

  it('treats p=reject without other evidence as quarantine, with a local_policy reason [POL-3]', function()
    local d = site:decide(verdict(), {}, {})
    assert.equal('folder', d.action)
    assert.equal('quarantine', d.outcome)
    assert.equal('quarantine', d.disposition)
    assert.same({ 'local_policy' }, reason_types(d))
  end)

  it('rejects in-session when the scanner has other evidence [POL-3]', function()
    local d = site:decide(verdict(), { evidence = { 'rbl' } }, {})
    assert.equal('reject', d.action)
    assert.equal(550, d.smtp_code)
    assert.is_truthy(d.smtp_message:find('^5%.7%.1 '))
    assert.is_truthy(d.smtp_message:find('DMARC', 1, true))
    assert.equal('reject', d.disposition)
    assert.same({}, d.reasons)
    -- An empty evidence list is no evidence.
    assert.equal('folder', site:decide(verdict(), { evidence = {} }, {}).action)
  end)

  it('accepts temperror with a header tag (RFC 9989 7.2 choice)', function()
    local d = site:decide(verdict{ result = 'temperror', policy = nil, applied = nil }, {}, {})
    assert.equal('tag', d.action)
    assert.same({ header = 'X-DMARC-Status', value = 'temperror' }, d.tag)
    assert.equal('none', d.disposition)
  end)

  it('accepts permerror and no policy', function()
    assert.equal('accept', site:decide(verdict{ result = 'permerror', applied = nil }, {}, {}).action)
    local d = site:decide(verdict{ result = 'none', policy = nil, applied = nil }, {}, {})
    assert.equal('accept', d.action)
    assert.equal('no_policy', d.outcome)
  end)

  it('does not accept a From that cannot be read (RFC 9989 11.5); a script may', function()
    local unread = verdict{ result = 'none', author_domain = nil, policy_domain = nil,
      org_domain = nil, policy = nil, applied = nil,
      flags = { 'no_author_domain', 'from_syntax', 'from_unread' } }
    local d = site:decide(unread, {}, {})
    assert.equal('bad_from', d.outcome)
    assert.equal('folder', d.action)
    assert.equal('Junk', d.folder)
    assert.equal('quarantine', d.disposition)
    assert.same({ 'local_policy' }, reason_types(d))
    -- No From at all, or a mailbox without a domain, is not a spoof of anyone: no_policy.
    d = site:decide(verdict{ result = 'none', policy = nil, applied = nil,
      flags = { 'no_author_domain' } }, {}, {})
    assert.equal('no_policy', d.outcome)
    assert.equal('accept', d.action)
    local lax = site_of{ treat = { bad_from = 'accept' } }
    assert.equal('accept', lax:decide(unread, {}, {}).action)
  end)

  it('never treats a From read leniently better than one not read', function()
    local lenient = { 'from_syntax', 'from_lenient' }
    -- p=none would accept; the floor files it in Junk.
    local d = site:decide(verdict{ policy = 'none', applied = 'none', flags = lenient }, {}, {})
    assert.equal('folder', d.action)
    assert.equal('bad_from', d.outcome)
    assert.equal('quarantine', d.disposition)
    -- Stricter than the floor stays: p=reject with evidence rejects.
    d = site:decide(verdict{ flags = lenient }, { evidence = 'rbl' }, {})
    assert.equal('reject', d.action)
    -- An override cannot take it below the floor either.
    local partner = site_of{ overrides = { { domain = 'example.com', at_most = 'none' } } }
    d = partner:decide(verdict{ flags = lenient }, {}, {})
    assert.equal('folder', d.action)
    assert.equal('bad_from', d.outcome)
    assert.equal('accept', partner:decide(verdict{}, {}, {}).action)
    -- Another From field not read at all: the same floor under a readable one's p=none.
    d = site:decide(verdict{ policy = 'none', applied = 'none',
      flags = { 'multiple_from', 'from_syntax', 'from_unread' } }, {}, {})
    assert.equal('folder', d.action)
    assert.equal('bad_from', d.outcome)
  end)

  it('passes t=y and pct verdicts through with their reason [POL-4] [POL-6]', function()
    local d = site:decide(verdict{ applied = 'quarantine', reason = 'policy_test_mode' }, {}, {})
    assert.equal('folder', d.action)
    assert.equal('quarantine', d.disposition)
    assert.same({ 'policy_test_mode' }, reason_types(d))
    d = site:decide(verdict{ policy = 'quarantine', applied = 'none', reason = 'sampled_out' }, {}, {})
    assert.equal('accept', d.action)
    assert.equal('none', d.disposition)
    assert.same({ 'sampled_out' }, reason_types(d))
    -- pct sampled a reject down to quarantine; still no other evidence needed.
    d = site:decide(verdict{ applied = 'quarantine', reason = 'sampled_out' }, { evidence = 'x' }, {})
    assert.equal('quarantine', d.disposition)
  end)
end)

describe('policy treatments', function()
  it('offers the one-line switch to unconditional reject [OPEN-6]', function()
    local site = script('return { unconditional_reject = true }')
    local d = site:decide(verdict(), {}, {})
    assert.equal('reject', d.action)
    assert.equal(550, d.smtp_code)
    assert.equal('default', d.source)
  end)

  it('applies every action from the treat table', function()
    local site = script([[return { treat = {
      reject = reject('5.7.1 Rejected: DMARC policy of the sender'),
      quarantine = score(4.5),
      none = tag{ subject = '[DMARC]' },
      temperror = defer,
      permerror = tag('X-DMARC-Status', 'permerror'),
      pass = accept,
    }, unconditional_reject = true }]])
    local d = site:decide(verdict(), {}, {})
    assert.equal('reject', d.action)
    assert.equal('5.7.1 Rejected: DMARC policy of the sender', d.smtp_message)
    assert.equal('site', d.source)
    d = site:decide(verdict{ applied = 'quarantine' }, {}, {})
    assert.equal('score', d.action)
    assert.equal(4.5, d.score)
    assert.equal('quarantine', d.disposition)
    d = site:decide(verdict{ applied = 'none' }, {}, {})
    assert.same({ subject = '[DMARC]' }, d.tag)
    assert.equal('none', d.disposition)
    d = site:decide(verdict{ result = 'temperror', applied = nil }, {}, {})
    assert.equal('defer', d.action)
    assert.equal(451, d.smtp_code)
    assert.is_truthy(d.smtp_message:find('^4%.7%.1 '))
    d = site:decide(verdict{ result = 'permerror', applied = nil }, {}, {})
    assert.same({ header = 'X-DMARC-Status', value = 'permerror' }, d.tag)
    assert.equal('accept', site:decide(verdict{ result = 'pass' }, {}, {}).action)
  end)

  it('accepts string and table forms', function()
    local site = site_of{
      treat = { quarantine = 'folder:Spam', none = 'score:1', reject = { action = 'defer' } },
      unconditional_reject = true }
    assert.equal('Spam', site:decide(verdict{ applied = 'quarantine' }, {}, {}).folder)
    assert.equal(1, site:decide(verdict{ applied = 'none' }, {}, {}).score)
    assert.equal('defer', site:decide(verdict(), {}, {}).action)
  end)

  it('gives a reason when the site changes a failing disposition [OVR-2]', function()
    local site = site_of{ treat = { quarantine = 'accept' } }
    local d = site:decide(verdict{ applied = 'quarantine' }, {}, {})
    assert.equal('none', d.disposition)
    assert.same({ 'local_policy' }, reason_types(d))
  end)

  it('refuses treatments that do not validate', function()
    local bad = {
      { treat = { quarantine = 'explode' } },
      { treat = { quarantine = { action = 'folder' } } },
      { treat = { quarantine = { action = 'folder', folder = 'a\nb' } } },
      { treat = { quarantine = { action = 'score', score = 1e9 } } },
      { treat = { quarantine = { action = 'tag', header = 'Bad Header', value = 'x' } } },
      { treat = { reject = { action = 'reject', message = 'go away' } } },   -- must name DMARC
      { treat = { reject = { action = 'reject', code = 451 } } },
      { treat = { defer = 'defer' } },                                     -- not an outcome
      { treat = { quarantine = { action = 'folder', folder = 'Junk', extra = 1 } } },
      { treet = {} },
      { unconditional_reject = 'yes' },
    }
    for _, config in ipairs(bad) do
      local site, msg, code = policy.new(config)
      assert.is_nil(site)
      assert.equal('string', type(msg))
      assert.equal('invalid', code)
    end
  end)
end)

describe('policy overrides', function()
  -- Every kind, from the script, on a p=quarantine failure.
  local kinds = {
    { spec = { domain = 'example.com' }, ctx = {}, v = {} },
    { spec = { org = 'example.com' }, ctx = {}, v = { author_domain = 'news.example.com' } },
    { spec = { rcpt = 'postmaster@example.net' }, ctx = { rcpt = { 'Postmaster@example.net' } }, v = {} },
    { spec = { rcpt_domain = 'example.net' }, ctx = { rcpt = { 'bob@example.net' } }, v = {} },
    { spec = { ip = '192.0.2.0/24' }, ctx = { ip = '192.0.2.77' }, v = {} },
    { spec = { ip = '2001:db8:40::/44' }, ctx = { ip = '2001:db8:4f::1' }, v = {} },
    { spec = { list = 'dev.lists.example.net' }, ctx = { list_id = 'Dev list <dev.lists.example.net>' },
      v = {} },
  }
  for _, case in ipairs(kinds) do
    local kind = next(case.spec)
    it('by ' .. kind .. ' from the site script', function()
      local spec = { reason = 'trusted_forwarder', comment = 'known' }
      for k, x in pairs(case.spec) do spec[k] = x end
      local site = site_of{ overrides = { spec } }
      local d = site:decide(verdict(case.v), case.ctx, {})
      assert.equal('accept', d.action)
      assert.equal('none', d.disposition)
      assert.equal('override', d.source)
      assert.same({ { type = 'trusted_forwarder', comment = 'known' } }, d.reasons)
      -- Not matched: another message.
      local other = site:decide(verdict{ author_domain = 'other.example', org_domain = 'other.example' },
        { ip = '198.51.100.1', rcpt = { 'x@other.example' } }, {})
      assert.equal('folder', other.action)
    end)

    it('by ' .. kind .. ' from the store', function()
      local site = site_of{}
      local key = assert(store.key(kind, case.spec[kind]))
      local d = decide_with(site, verdict(case.v), case.ctx,
        { [key] = { at_most = 'none', reason = 'local_policy' } })
      assert.equal('accept', d.action)
      assert.equal('override', d.source)
      assert.same({ 'local_policy' }, reason_types(d))
    end)
  end

  it('uses the longest matching IP prefix', function()
    local site = site_of{}
    local d = decide_with(site, verdict(), { ip = '192.0.2.9' }, {
      ['ip:192.0.0.0/16'] = { at_most = 'none' },
      ['ip:192.0.2.0/24'] = { treat = { action = 'score', score = 2 } },
    })
    assert.equal('score', d.action)
  end)

  it('caps at quarantine with at_most, keeping the recipient treatment', function()
    local site = site_of{ overrides = { { domain = 'example.com', at_most = 'quarantine' } },
      unconditional_reject = true }
    local d = site:decide(verdict(), {}, {})
    assert.equal('folder', d.action)
    assert.equal('quarantine', d.disposition)
    assert.equal('override', d.source)
  end)

  it('may name its own treatment', function()
    local site = site_of{ overrides = { { domain = 'example.com', treat = 'score:2.5', reason = 'other',
      comment = 'ticket 42' } } }
    local d = site:decide(verdict(), {}, {})
    assert.equal('score', d.action)
    assert.equal(2.5, d.score)
    assert.same({ { type = 'other', comment = 'ticket 42' } }, d.reasons)
  end)

  it('prefers the store entry to the script entry for the same key', function()
    local site = site_of{ overrides = { { domain = 'example.com', at_most = 'none' } } }
    local d = decide_with(site, verdict(), {}, { ['domain:example.com'] = { at_most = 'quarantine' } })
    assert.equal('quarantine', d.disposition)
  end)

  it('prefers a recipient override to a domain override', function()
    local site = site_of{ overrides = {
      { domain = 'example.com', at_most = 'none' },
      { rcpt = 'ceo@example.net', at_most = 'quarantine' },
    } }
    assert.equal('quarantine', site:decide(verdict(), { rcpt = { 'ceo@example.net' } }, {}).disposition)
    assert.equal('none', site:decide(verdict(), { rcpt = { 'ann@example.net' } }, {}).disposition)
  end)

  it('defaults the reason to mailing_list for a list override', function()
    local site = site_of{ overrides = { { list = 'dev.lists.example.net' } } }
    local d = site:decide(verdict(), { list_id = '<dev.lists.example.net>' }, {})
    assert.same({ 'mailing_list' }, reason_types(d))
  end)

  it('does not touch passes or errors', function()
    local site = site_of{ overrides = { { domain = 'example.com', treat = 'score:3' } } }
    assert.equal('accept', site:decide(verdict{ result = 'pass' }, {}, {}).action)
    assert.equal('tag', site:decide(verdict{ result = 'temperror', applied = nil }, {}, {}).action)
  end)

  it('ignores garbage store entries with a warning', function()
    local site = site_of{}
    local d = site:decide(verdict(), {}, { ['domain:example.com'] = { at_most = 'reject' } })
    assert.equal('folder', d.action)
    assert.equal(1, #d.warnings)
  end)

  it('refuses malformed override entries in the script', function()
    local bad = {
      { overrides = { { at_most = 'none' } } },                          -- no matcher
      { overrides = { { domain = 'a.example', org = 'a.example' } } },   -- two matchers
      { overrides = { { domain = 'a b' } } },                            -- injection
      { overrides = { { domain = 'a.example', reason = 'because' } } },
      { overrides = { { domain = 'a.example', reason = 'other' } } },     -- other needs a comment
      { overrides = { { domain = 'a.example', at_most = 'reject' } } },
      { overrides = { { domain = 'a.example', at_most = 'none', treat = 'accept' } } },
      { overrides = { { domain = 'a.example' }, { domain = 'A.example' } } }, -- duplicate
      { overrides = { { ip = '10.0.0.0/4' } } },
      { trusted_arc_sealers = { 'bad sealer' } },
    }
    for _, config in ipairs(bad) do
      assert.equal('invalid', select(3, policy.new(config)))
    end
  end)
end)

describe('policy ARC [ARC-2] [ARC-3]', function()
  local site = site_of{ trusted_arc_sealers = { 'lists.example.net' } }
  local function arc(result, sealers, remote_ip)
    return { result = result, sealers = sealers, remote_ip = remote_ip }
  end
  local trusted_chain = {
    { i = 2, d = 'lists.example.net', s = 's2' },
    { i = 1, d = 'origin.example', s = 's1' },
  }

  it('overrides a failure when a trusted sealer sealed a passing chain', function()
    local d = site:decide(verdict(), { arc = arc('pass', trusted_chain, '192.0.2.1') }, {})
    assert.equal('accept', d.action)
    assert.equal('none', d.disposition)
    assert.same({ {
      type = 'local_policy',
      comment = 'arc=pass as[2].d=lists.example.net as[2].s=s2 as[1].d=origin.example as[1].s=s1 '
        .. 'remote-ip[1]=192.0.2.1',
    } }, d.reasons)
  end)

  it('does nothing for an untrusted sealer', function()
    local chain = { { i = 1, d = 'elsewhere.example', s = 'x' } }
    local d = site:decide(verdict(), { arc = arc('pass', chain) }, {})
    assert.equal('folder', d.action)
  end)

  it('does nothing for a failing chain, even from a trusted sealer', function()
    local d = site:decide(verdict(), { arc = arc('fail', trusted_chain) }, {})
    assert.equal('folder', d.action)
    d = site:decide(verdict(), { arc = arc('none', {}) }, {})
    assert.equal('folder', d.action)
  end)

  it('needs the trusted sealer to be the newest one', function()
    local chain = { { i = 2, d = 'relay.example', s = 'r' }, { i = 1, d = 'lists.example.net', s = 's' } }
    assert.equal('folder', site:decide(verdict(), { arc = arc('pass', chain) }, {}).action)
  end)

  it('trusts sealers added in the store', function()
    local chain = { { i = 1, d = 'fwd.example.org', s = 'k' } }
    local d = decide_with(site, verdict(), { arc = arc('pass', chain) },
      { ['arc:fwd.example.org'] = { at_most = 'none' } })
    assert.equal('accept', d.action)
    assert.equal('arc=pass as[1].d=fwd.example.org as[1].s=k', d.reasons[1].comment)
  end)

  it('ignores malformed sealer data', function()
    local chain = { { i = 2, d = 'lists.example.net', s = 'bad selector' } }
    assert.equal('folder', site:decide(verdict(), { arc = arc('pass', chain) }, {}).action)
  end)
end)

describe('policy recipients', function()
  local site = site_of{
    recipient_sets = { vip = { quarantine = 'score:6', members = { 'boss@example.net' } } },
    overrides = { { rcpt = 'abuse@example.net', treat = 'defer' } },
  }

  it('treats members of a set with the set treatment', function()
    local d = site:decide(verdict(), { rcpt = { 'boss@example.net' } }, {})
    assert.equal('score', d.action)
    assert.equal('site', d.source)
  end)

  it('reports differing folder/score decisions per recipient', function()
    local d = site:decide(verdict(), { rcpt = { 'boss@example.net', 'ann@example.net' } }, {})
    assert.equal('folder', d.action)   -- folder is stricter than score
    assert.equal('score', d.per_rcpt['boss@example.net'].action)
    assert.equal('folder', d.per_rcpt['ann@example.net'].action)
  end)

  it('lets the strictest recipient decision win for defer and reject', function()
    local d = site:decide(verdict(), { rcpt = { 'ann@example.net', 'abuse@example.net' } }, {})
    assert.equal('defer', d.action)
    assert.equal(451, d.smtp_code)
  end)

  it('omits per_rcpt when every recipient gets the same', function()
    local d = site:decide(verdict(), { rcpt = { 'ann@example.net', 'bob@example.net' } }, {})
    assert.is_nil(d.per_rcpt)
  end)

  it('takes set members from the store', function()
    local d = decide_with(site, verdict(), { rcpt = { 'carol@example.org' } },
      { ['set:vip:example.org'] = {} })
    assert.equal('score', d.action)
  end)

  it('skips recipients that could inject into keys', function()
    local keys = site:lookups(verdict(),
      { rcpt = { 'a b@example.net', 'x\r\n@example.net', 'ok@example.net' } })
    for _, k in ipairs(keys) do
      assert.is_nil(k:find('[%s{}]'))
    end
    local seen = false
    for _, k in ipairs(keys) do
      if k == 'rcpt:ok@example.net' then seen = true end
    end
    assert.is_true(seen)
  end)

  it('bounds the recipients looked at', function()
    local many = {}
    for i = 1, policy.MAX_RCPT + 5 do many[i] = 'u' .. i .. '@example.net' end
    local d = site:decide(verdict(), { rcpt = many }, {})
    assert.equal(1, #d.warnings)
  end)
end)

describe('policy lookups', function()
  local site = site_of{ recipient_sets = { vip = { quarantine = 'score:6' } } }

  it('asks for nothing when nothing can change the decision', function()
    local ctx = { rcpt = { 'a@example.net' }, ip = '192.0.2.1' }
    assert.same({}, site:lookups(verdict{ result = 'pass' }, ctx))
    assert.same({}, site:lookups(verdict{ applied = 'none' }, { ip = '192.0.2.1' }))
    assert.same({}, site:lookups(verdict{ result = 'temperror' }, { ip = '192.0.2.1' }))
  end)

  it('asks for every key a failure may need, once', function()
    local keys = site:lookups(verdict(), {
      rcpt = { 'a@example.net', 'A@example.net' }, ip = '192.0.2.1', list_id = '<l.example.org>',
      arc = { result = 'pass', sealers = { { i = 1, d = 'lists.example.net', s = 's' } } },
    })
    -- rcpt + rcpt_domain + domain + org + 25 IPv4 prefixes + list + arc + 2 set keys
    assert.equal(2 + 2 + 25 + 1 + 1 + 2, #keys)
    local seen = {}
    for _, k in ipairs(keys) do
      assert.is_nil(seen[k])
      seen[k] = true
    end
    assert.is_true(seen['arc:lists.example.net'])
    assert.is_true(seen['set:vip:a@example.net'])
  end)
end)

describe('policy prepared messages', function()
  -- A ctx that counts which fields the policy reads.
  local function counting_ctx(fields)
    local reads = {}
    local ctx = setmetatable({}, { __index = function(_, k)
      reads[k] = (reads[k] or 0) + 1
      return fields[k]
    end })
    return ctx, reads
  end
  local FIELDS = { rcpt = { 'a@example.net' }, ip = '192.0.2.1', list_id = 'l.example.org',
                   evidence = { 'SPAM' } }

  it('does the setup once for lookups and decide, with the same answers as one-shot calls', function()
    local site = site_of{ overrides = { { ip = '192.0.2.0/24', at_most = 'quarantine' } } }
    local ctx, reads = counting_ctx(FIELDS)
    local m = site:prepare(verdict(), ctx)
    local keys = m:lookups()
    assert.same(site:lookups(verdict(), FIELDS), keys)
    local before = reads.ip
    local d = m:decide({})
    assert.equal(before, reads.ip) -- the IP keys were built once, for the lookups
    assert.same(site:decide(verdict(), FIELDS, {}), d)
    assert.equal('folder', d.action)
    assert.equal('override', d.source)
  end)

  it('reads nothing of the ctx for a decision nothing can change', function()
    local site = site_of{}
    for _, v in ipairs({ verdict{ result = 'pass' }, verdict{ policy = 'none', applied = 'none' },
                         verdict{ result = 'temperror' }, verdict{ applied = 'quarantine' } }) do
      local ctx, reads = counting_ctx(FIELDS)
      site:prepare(v, ctx):decide({})
      assert.same({}, reads, v.result .. '/' .. tostring(v.applied))
    end
  end)

  -- [POL-3]: other evidence decides only whether p=reject may be enforced.
  it('asks for other evidence only when p=reject is the outcome', function()
    local site = site_of{}
    local ctx, reads = counting_ctx(FIELDS)
    assert.equal('reject', site:prepare(verdict(), ctx):decide({}).action)
    assert.equal(1, reads.evidence)
    assert.is_nil(reads.rcpt)
    assert.is_nil(reads.ip)
  end)

  it('matches only the override kinds the script has, until the store answers', function()
    local site = site_of{ overrides = { { list = 'l.example.org', reason = 'mailing_list' } } }
    local ctx, reads = counting_ctx(FIELDS)
    local d = site:prepare(verdict{ applied = 'quarantine' }, ctx):decide({})
    assert.equal('accept', d.action)
    assert.equal('mailing_list', d.reasons[1].type)
    assert.is_nil(reads.ip)   -- no IP override in the script: no prefix keys built
    assert.is_nil(reads.rcpt)
    -- A store entry for the IP: every kind is looked at, most specific first.
    d = decide_with(site, verdict{ applied = 'quarantine' }, FIELDS,
      { ['ip:192.0.2.0/24'] = { treat = 'score:3' } })
    assert.equal('score', d.action)
  end)

  it('gives the same keys message after message, past what its memos hold', function()
    local site = site_of{}
    local function keys_for(i)
      return site:prepare(verdict(), { rcpt = { 'User' .. i .. '@Example.NET' },
                                       ip = '192.0.2.' .. (i % 256) }):lookups()
    end
    local first = keys_for(1)
    for i = 2, 5000 do
      local keys = keys_for(i)
      assert.equal('rcpt:user' .. i .. '@example.net', keys[1])
      assert.equal('ip:192.0.2.' .. (i % 256) .. '/32', keys[5])
    end
    assert.same(first, keys_for(1))
  end)

  it('still bounds and warns about recipients when they matter', function()
    local site = site_of{ recipient_sets = { vip = { quarantine = 'score:6' } } }
    local many = {}
    for i = 1, policy.MAX_RCPT + 1 do many[i] = 'u' .. i .. '@example.net' end
    local d = site:prepare(verdict(), { rcpt = many }):decide({})
    assert.equal(1, #d.warnings)
  end)
end)

describe('policy hooks', function()
  local logger, entries
  before_each(function() logger, entries = capture_log() end)

  it('lets decide() change the decision', function()
    local site = script([[return { decide = function(v, ctx, proposed)
      if ctx.spam_score and ctx.spam_score > 10 then
        return { action = 'reject', reasons = { { type = 'local_policy', comment = 'spam' } } }
      end
      if proposed.action == 'folder' then return score(8) end
    end }]])
    local d = site:decide(verdict(), { spam_score = 20 }, {})
    assert.equal('reject', d.action)
    assert.equal('hook', d.source)
    assert.equal(550, d.smtp_code)
    assert.equal('reject', d.disposition)
    d = site:decide(verdict(), {}, {})
    assert.equal('score', d.action)
    assert.equal('hook', d.source)
    -- nil: the proposed decision stands.
    d = site:decide(verdict{ result = 'pass' }, {}, {})
    assert.equal('default', d.source)
  end)

  it('hands ctx to the hook untouched', function()
    local seen
    local site = site_of{ decide = function(_, ctx) seen = ctx end }
    local ctx = { custom = { 1, 2 } }
    site:decide(verdict(), ctx, {})
    assert.equal(ctx, seen)
  end)

  it('contains a hook that raises, and logs file:line', function()
    local site = script('return {\n decide = function()\n error("boom")\n end }', { log = logger })
    local d = site:decide(verdict(), {}, {})
    assert.equal('folder', d.action)
    assert.equal('default', d.source)
    assert.equal(1, #d.warnings)
    assert.is_truthy(d.warnings[1]:find('test%-site%.lua:3:'))
    assert.equal('warn', entries[1].level)
  end)

  it('contains a hook that returns garbage', function()
    for _, ret in ipairs{ '42', '{ action = "explode" }', '{ action = "folder" }', '"nonsense"',
      '{ action = "accept", reasons = { { type = "because" } } }', 'function() end' } do
      local site = script('return { decide = function() return ' .. ret .. ' end }', { log = logger })
      local d = site:decide(verdict(), {}, {})
      assert.equal('folder', d.action, ret)
      assert.equal(1, #d.warnings, ret)
      assert.is_truthy(d.warnings[1]:find('test%-site%.lua:1:'), ret)
    end
  end)

  it('stops a hook that loops forever (instruction budget)', function()
    local site = script('return { decide = function()\n  while true do end\nend }', { log = logger })
    local d = site:decide(verdict(), {}, {})
    assert.equal('folder', d.action)
    assert.is_truthy(d.warnings[1]:find('test%-site%.lua:2:'))
    assert.equal('warn', entries[1].level)
  end)

  it('stops a hook that catches its own budget error', function()
    local site = script([[return { decide = function()
      while true do pcall(function() while true do end end) end
    end }]], { log = logger })
    local d = site:decide(verdict(), {}, {})
    assert.equal('folder', d.action)
    assert.equal(1, #d.warnings)
  end)

  it('stops deep recursion in a hook', function()
    local site = script([[local function f(n) return f(n + 1) + 1 end
      return { decide = function() return f(1) end }]], { log = logger })
    local d = site:decide(verdict(), {}, {})
    assert.equal('folder', d.action)
    assert.equal(1, #d.warnings)
  end)

  it('gives the hook a copy of the proposed decision', function()
    local site = site_of{ decide = function(_, _, proposed) proposed.action = 'reject' end }
    assert.equal('folder', site:decide(verdict(), {}, {}).action)
  end)

  it('keeps working after a contained failure', function()
    local site = script([[local n = 0
      return { decide = function() n = n + 1; if n == 1 then error('first') end; return 'accept' end }]])
    assert.equal('folder', site:decide(verdict(), {}, {}).action)
    assert.equal('accept', site:decide(verdict(), {}, {}).action)
  end)
end)

describe('policy scripts', function()
  it('run without io, os, require, load or debug', function()
    local site = script([[
      assert(io == nil and os == nil and require == nil and load == nil and debug == nil)
      assert(dofile == nil and loadstring == nil and package == nil and setmetatable == nil)
      assert(getmetatable == nil and collectgarbage == nil and string.dump == nil)
      assert(string.format and table.concat and math.floor and pairs and ipairs and tostring)
      assert(tonumber and type and select and error and pcall)
      return {}
    ]])
    assert.is_table(site)
  end)

  it('cannot change the host string library', function()
    script('string.upper = nil; return {}')
    assert.is_function(string.upper)
  end)

  it('report syntax errors with file:line', function()
    local site, msg, code = policy.load_string('return {\n treat = \n', '@/etc/dmarc/site.lua')
    assert.is_nil(site)
    assert.equal('syntax', code)
    assert.is_truthy(msg:find('/etc/dmarc/site.lua:%d+:'))
  end)

  it('report runtime errors and garbage results', function()
    assert.equal('runtime', select(3, policy.load_string('error("x")', '@s.lua')))
    assert.equal('runtime', select(3, policy.load_string('return io.open("x")', '@s.lua')))
    assert.equal('invalid', select(3, policy.load_string('return 42', '@s.lua')))
    assert.equal('budget',
      select(3, policy.load_string('while true do end', '@s.lua', { load_budget = 100000 })))
  end)

  it('refuse precompiled chunks', function()
    local bytecode = string.dump(function() return {} end)
    assert.equal('syntax', select(3, policy.load_string(bytecode, '=bin')))
  end)

  it('load from a file, or say why not', function()
    local site = policy.load('examples/site.lua', { log = dlog.null() })
    assert.is_table(site)
    assert.equal('io', select(3, policy.load('/nonexistent/site.lua')))
  end)

  -- The CLI path: a broken file is named with its line, for a syntax error and for an error
  -- while the script runs.
  local function broken_file(text)
    local path = os.tmpname()
    local f = assert(io.open(path, 'w'))
    f:write(text)
    f:close()
    return path
  end

  it('name the file and line of a broken script file', function()
    local path = broken_file('return {\n  treat = { quarantine = \'folder:Junk\' },\n  x = = 1,\n}\n')
    local site, msg, code = policy.load(path)
    assert.is_nil(site)
    assert.equal('syntax', code)
    assert.equal(path .. ':3:', msg:sub(1, #path + 3))
    os.remove(path)
    path = broken_file('local t = {}\nreturn {\n  treat = { quarantine = t.x.y },\n}\n')
    site, msg, code = policy.load(path)
    assert.is_nil(site)
    assert.equal('runtime', code)
    assert.equal(path .. ':3:', msg:sub(1, #path + 3))
    os.remove(path)
  end)

  -- rspamd's lualib/lupa.lua replaces the global `load` of Lua 5.1 with one that drops the
  -- chunk name and the mode: scripts must still be named, and still be text only.
  it('keep file:line and refuse bytecode when the host replaced the global load', function()
    if _VERSION ~= 'Lua 5.1' then return pending('lupa replaces `load` only on Lua 5.1 (LuaJIT)') end
    local saved = load
    _G.load = function(ld, _, _, env)
      local f, err = (loadstring or saved)(ld)
      if f and env and setfenv then return setfenv(f, env) end
      return f, err
    end
    package.loaded['dmarc.site.policy'] = nil
    local ok, fresh = pcall(require, 'dmarc.site.policy')
    _G.load = saved
    package.loaded['dmarc.site.policy'] = policy
    assert.is_true(ok, fresh)
    local path = broken_file('return {\n  treat = { quarantine = nil + 1 },\n}\n')
    local site, msg = fresh.load(path)
    os.remove(path)
    assert.is_nil(site)
    assert.equal(path .. ':2:', msg:sub(1, #path + 3))
    local bytecode = string.dump(function() return {} end)
    assert.equal('syntax', select(3, fresh.load_string(bytecode, '@bin.lua')))
  end)
end)

describe('policy and the store', function()
  it('falls back to the site rules when the store fails, with a warning', function()
    local logger, entries = capture_log()
    local site = site_of({ overrides = { { domain = 'example.com', at_most = 'quarantine' } } },
      { log = logger })
    local failing = {
      get_many = function() return nil, 'redis 127.0.0.1:6379: Connection refused', 'io' end,
    }
    local d = site:evaluate(verdict(), { evidence = 'x' }, failing)
    assert.equal('folder', d.action)   -- the script's own override still applies
    assert.equal(1, #d.warnings)
    assert.equal('warn', entries[1].level)
  end)

  it('decides asynchronously, calling back once', function()
    local site = site_of{}
    local pending
    local st = store.callback{ mget = function(_, done) pending = done end }
    local n, got = 0, nil
    site:evaluate_async(verdict(), {}, st, function(d)
      n = n + 1
      got = d
    end)
    assert.equal(0, n)
    pending(nil, { '{"at_most":"none"}' })
    assert.equal(1, n)
    assert.equal('accept', got.action)
  end)

  it('skips the store entirely when no lookup is needed', function()
    local site = site_of{}
    local called = false
    local st = { get_many = function() called = true end, get_many_async = function() called = true end }
    site:evaluate(verdict{ result = 'pass' }, {}, st)
    local d
    site:evaluate_async(verdict{ result = 'pass' }, {}, st, function(x) d = x end)
    assert.is_false(called)
    assert.equal('accept', d.action)
  end)
end)

-- examples/site.lua, exactly as the README shows it: "quarantine -> folder Junk, except
-- score +6 for recipients in the Redis set score-only; never reject mail from
-- example-partner.org; trust ARC from lists.example.net".
describe('examples/site.lua', function()
  local site = assert(policy.load('examples/site.lua', { log = dlog.null() }))
  local st = store.memory()
  assert(st:add(store.key('rcpt', 'alice@example.com', 'score-only'), {}))

  local partner = verdict{ author_domain = 'mail.example-partner.org', org_domain = 'example-partner.org',
    policy_domain = 'example-partner.org' }

  it('files quarantine (and evidence-free reject) in Junk', function()
    local d = site:evaluate(verdict{ applied = 'quarantine' }, { rcpt = { 'bob@example.com' } }, st)
    assert.equal('folder', d.action)
    assert.equal('Junk', d.folder)
    d = site:evaluate(verdict(), { rcpt = { 'bob@example.com' } }, st)
    assert.equal('folder', d.action)
    assert.same({ 'local_policy' }, reason_types(d))
  end)

  it('only scores for recipients in the score-only set', function()
    local d = site:evaluate(verdict{ applied = 'quarantine' }, { rcpt = { 'alice@example.com' } }, st)
    assert.equal('score', d.action)
    assert.equal(6, d.score)
    d = site:evaluate(verdict{ applied = 'quarantine' },
      { rcpt = { 'alice@example.com', 'bob@example.com' } }, st)
    assert.equal('score', d.per_rcpt['alice@example.com'].action)
    assert.equal('folder', d.per_rcpt['bob@example.com'].action)
  end)

  it('rejects on evidence, but never mail from example-partner.org', function()
    local d = site:evaluate(verdict(), { rcpt = { 'bob@example.com' }, evidence = 'rbl' }, st)
    assert.equal('reject', d.action)
    d = site:evaluate(partner, { rcpt = { 'bob@example.com' }, evidence = 'rbl' }, st)
    assert.equal('folder', d.action)
    assert.equal('override', d.source)
    assert.equal('quarantine', d.disposition)
    assert.same({ 'local_policy' }, reason_types(d))
    d = site:evaluate(partner, { rcpt = { 'alice@example.com' }, evidence = 'rbl' }, st)
    assert.equal('score', d.action)
  end)

  it('trusts a passing ARC chain sealed by lists.example.net', function()
    local ctx = { rcpt = { 'bob@example.com' }, evidence = 'rbl', arc = { result = 'pass',
      sealers = { { i = 1, d = 'lists.example.net', s = 'arc1' } }, remote_ip = '198.51.100.4' } }
    local d = site:evaluate(verdict(), ctx, st)
    assert.equal('accept', d.action)
    assert.equal('none', d.disposition)
    assert.equal('arc=pass as[1].d=lists.example.net as[1].s=arc1 remote-ip[1]=198.51.100.4',
      d.reasons[1].comment)
    ctx.arc.result = 'fail'
    assert.equal('reject', site:evaluate(verdict(), ctx, st).action)
  end)

  it('is exactly the script docs/site-policy.md (and the README, once it shows one) shows', function()
    local f = assert(io.open('examples/site.lua', 'rb'))
    local text = f:read('*a')
    f:close()
    for _, doc in ipairs{ 'docs/site-policy.md', 'README.md' } do
      local d = io.open(doc, 'rb')
      local body = d and d:read('*a') or ''
      if d then d:close() end
      if doc == 'docs/site-policy.md' or body:find('trusted_arc_sealers', 1, true) then
        assert.is_truthy(body:find('```lua\n' .. text .. '```', 1, true), doc)
      end
    end
  end)

  it('leaves passing mail alone', function()
    local d = site:evaluate(verdict{ result = 'pass' }, { rcpt = { 'alice@example.com' } }, st)
    assert.equal('accept', d.action)
    assert.equal('pass', d.disposition)
  end)
end)
