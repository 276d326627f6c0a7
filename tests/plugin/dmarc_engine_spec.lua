-- The rspamd plugin under busted with a fake rspamd (tests/plugin/fake_rspamd.lua):
-- registration, misconfiguration, the resolver adapter, the symbols and their options, the
-- site's decisions, Redis failures. The real rspamd runs in tests/integration/rspamd_spec.lua.
package.path = './tests/plugin/?.lua;./lua/?.lua;' .. package.path
local fake = require 'fake_rspamd'
local ROW_SCRIPT = require('dmarc.report.rows').ROW_SCRIPT

local SITE_DIR = os.tmpname()
os.remove(SITE_DIR)
os.execute('mkdir -p ' .. SITE_DIR)

local function site_file(name, text)
  local path = SITE_DIR .. '/' .. name
  local f = assert(io.open(path, 'w'))
  f:write(text)
  f:close()
  return path
end

-- Records of the zone the tests answer with (rspamd's resolver gives TXT strings joined).
local DNS = {
  ['_dmarc.pass.test'] = { results = { 'v=DMARC1; p=reject; rua=mailto:r@pass.test' } },
  ['_dmarc.quar.test'] = { results = { 'v=DMARC1; p=quarantine' } },
  ['_dmarc.testing.test'] = { results = { 'v=DMARC1; p=reject; t=y' } },
  ['_dmarc.servfail.test'] = { err = 'server fail' },
  ['_dmarc.slow.test'] = { err = 'query timed out' },
  ['_dmarc.unsent.test'] = 'unsent',
  ['_dmarc.bad.test'] = { results = { 'v=DMARC1; p=bogus' } },
}

local function config(extra)
  local c = { dmarc_engine = { authserv_id = 'mx.rcpt.test' } }
  for k, v in pairs(extra or {}) do c.dmarc_engine[k] = v end
  return c
end

local function load(extra, opts)
  opts = opts or {}
  local c = config(extra)
  for k, v in pairs(opts.sections or {}) do c[k] = v end
  local env = fake.new({ config = c, redis = opts.redis })
  local exports = env.load()
  return env, exports
end

local function scan(exports, spec)
  spec.dns = spec.dns or DNS
  local task = fake.task(spec)
  exports.dmarc_check(task)
  task:flush_dns()
  return task
end

local function spoof(from_domain, extra)
  local spec = {
    from = { 'Someone <x@' .. from_domain .. '>' },
    symbols = { 'R_SPF_FAIL' },
    mail_from = 'x@' .. from_domain,
    helo = 'mx.sender.test',
    ip = '203.0.113.66',
    rcpt = { 'bob@rcpt.test' },
  }
  for k, v in pairs(extra or {}) do spec[k] = v end
  return spec
end

describe('dmarc_engine registration', function()
  it('registers DMARC_CHECK after SPF, DKIM and ARC, with rspamd\'s symbol names', function()
    local env, exports = load()
    assert.is_nil(exports.disabled)
    assert.equal('callback', env.symbols.DMARC_CHECK.type)
    for _, name in ipairs({ 'DMARC_POLICY_ALLOW', 'DMARC_POLICY_REJECT', 'DMARC_POLICY_QUARANTINE',
                            'DMARC_POLICY_SOFTFAIL', 'DMARC_DNSFAIL', 'DMARC_BAD_POLICY', 'DMARC_NA',
                            'DMARC_CALLBACK', 'DMARC_SITE_SCORE' }) do
      assert.equal('DMARC_CHECK', env.symbols[name].parent, name)
    end
    local deps = {}
    for _, d in ipairs(env.deps) do deps[d[2]] = d[1] end
    assert.equal('DMARC_CHECK', deps.R_SPF_ALLOW)
    assert.equal('DMARC_CHECK', deps.R_DKIM_ALLOW)
    assert.equal('DMARC_CHECK', deps.ARC_CHECK)
  end)

  it('does nothing without its configuration section', function()
    local env = fake.new({ config = {} })
    local exports = env.load()
    assert.is_nil(env.symbols.DMARC_CHECK)
    assert.is_nil(exports.disabled)
  end)
end)

describe('dmarc_engine misconfiguration disables it with one log line', function()
  local function refused(extra, opts, pattern)
    local env, exports = load(extra, opts)
    assert.is_string(exports.disabled)
    assert.is_nil(env.symbols.DMARC_CHECK)
    assert.same({ { name = 'dmarc_engine', how = 'config' } }, env.disabled)
    assert.matches('dmarc_engine: module disabled: ' .. pattern, env.log_text('error'))
  end

  it('while rspamd\'s built-in dmarc module is enabled', function()
    refused({}, { sections = { dmarc = { enabled = true } } }, '.*built%-in dmarc module')
    local env = load({}, { sections = { dmarc = { enabled = false } } })
    assert.is_table(env.symbols.DMARC_CHECK)
  end)

  it('with an unknown mode, action or a negative size', function()
    refused({ mode = 'rfc1234' }, nil, 'mode')
    refused({ actions = { reject = 'explode' } }, nil, 'actions%.reject')
    refused({ cache_size = -1 }, nil, 'cache_size')
    refused({ overrides = { cache_ttl = -5 } }, nil, 'overrides%.cache_ttl')
    refused({ evidence_symbols = { 1, 2 } }, nil, 'evidence_symbols')
  end)

  it('with reporting on and no Redis servers', function()
    refused({ reporting = { enabled = true } }, nil, 'reporting')
  end)

  it('with an authserv-id that is not a token (RFC 8601)', function()
    refused({ authserv_id = 'two words' }, nil, 'authserv_id')
  end)
end)

describe('dmarc_engine with a site script that does not load', function()
  -- Every message is still evaluated: the default treatments apply, each message gets
  -- DMARC_SITE_SCRIPT_ERROR and a log line naming the script and line.
  local function broken(path, where_pattern)
    local env, x = load({ site_script = path })
    assert.is_nil(x.disabled)
    assert.same({}, env.disabled)
    assert.is_table(env.symbols.DMARC_CHECK)
    assert.equal('DMARC_CHECK', env.symbols.DMARC_SITE_SCRIPT_ERROR.parent)
    assert.matches('dmarc_engine: site script ' .. path:gsub('%p', '%%%0') .. ' did not load: ' ..
      where_pattern, env.log_text('error'))
    -- A spoof of p=reject: DMARC_POLICY_REJECT, handled as quarantine by default (folder).
    env.log = {}
    local t = scan(x, spoof('pass.test'))
    assert.equal('pass.test : No valid SPF, No valid DKIM', t:options('DMARC_POLICY_REJECT')[1])
    assert.equal('Junk', t:added_headers()['X-DMARC-Folder'])
    local mark = t:options('DMARC_SITE_SCRIPT_ERROR')
    assert.equal('load', mark[2])
    assert.matches('did not load', env.log_text('error'))
    assert.matches(path:gsub('%p', '%%%0'), env.log_text('error'))
    return mark[1]
  end

  it('a syntax error: file:line in the start-up line and on each message', function()
    -- file:line, as policy.load gives it, also where the host replaced `load` (rspamd).
    local path = site_file('syntax.lua', 'return {\n  treat = }')
    local where = broken(path, path:gsub('%p', '%%%0') .. ':2: ')
    assert.equal(path .. ':2', where)
  end)

  it('a runtime error at load, a missing file, an unknown field', function()
    local path = site_file('runtime.lua', 'local t = {}\nlocal x = t.a.b\nreturn {}')
    assert.equal(path .. ':2', broken(path, path:gsub('%p', '%%%0') .. ':2: '))
    path = SITE_DIR .. '/missing.lua'
    assert.equal(path, broken(path, 'cannot open'))
    path = site_file('unknown.lua', 'return { nonsense = 1 }')
    assert.equal(path, broken(path, '.*nonsense'))
  end)

  it('a good site script marks nothing', function()
    local _, x = load({ site_script = site_file('good.lua', 'return {}') })
    local t = scan(x, spoof('pass.test'))
    assert.is_nil(t:options('DMARC_SITE_SCRIPT_ERROR'))
  end)
end)

describe('dmarc_engine pure helpers', function()
  local _, x = load()

  it('maps rspamd resolver errors to distinct rcodes [DISC-4] [DISC-12]', function()
    assert.equal('noerror', x.rcode_of(nil, { 'v=DMARC1' }))
    assert.equal('nodata', x.rcode_of(nil, {}))
    assert.equal('nxdomain', x.rcode_of('no records with this name'))
    assert.equal('nodata', x.rcode_of('requested record is not found'))
    assert.equal('timeout', x.rcode_of('query timed out'))
    assert.equal('servfail', x.rcode_of('server fail'))
    assert.equal('servfail', x.rcode_of('query refused'))
  end)

  it('reads ARC sealers newest first and the remote IP of instance 1 [ARC-3]', function()
    local sealers = x.arc_sealers({
      'i=1; cv=none; a=rsa-sha256; d=first.test; s=s1; b=xx',
      'i=2; cv=pass; a=rsa-sha256; d=Second.test; s=s2; b=yy',
      'garbage',
    })
    assert.same({ { i = 2, d = 'second.test', s = 's2' }, { i = 1, d = 'first.test', s = 's1' } }, sealers)
    assert.equal('192.0.2.1', x.arc_remote_ip({ 'i=1; mx.first.test; spf=pass smtp.remote-ip=192.0.2.1' }, 1))
  end)

  it('reads List-Id values (RFC 2919)', function()
    assert.equal('team.lists.test', x.list_id_of('Team <Team.Lists.test>'))
    assert.equal('bare.test', x.list_id_of('bare.test'))
    assert.is_nil(x.list_id_of('<has space.test>'))
  end)

  it('names DKIM keys to fetch, bounded, and writes them as master-file TXT records', function()
    local sigs = {}
    for i = 1, 12 do sigs[i] = string.format('v=1; a=rsa-sha256; d=D%d.test; s=sel; b=x', i) end
    sigs[#sigs + 1] = 'v=1; d=bad domain; s=x'
    local names = x.dkim_key_names(sigs)
    assert.equal(8, #names)
    assert.equal('sel._domainkey.d1.test', names[1])
    local rr = x.zone_txt_record('k._domainkey.a.test', 'v=DKIM1; p="q\\' .. string.rep('A', 300))
    assert.matches('^k%._domainkey%.a%.test%. 60 IN TXT "v=DKIM1; p=\\"q\\\\A+" "A+"$', rr)
  end)

  it('gives an Authentication-Results entry with the From domain and policy.dmarc [AR-2]', function()
    local out = { result = 'fail', author_domain = 'a.example.com', policy = 'reject',
                  applied = 'reject' }
    assert.equal('dmarc=fail (p=reject dis=quarantine) header.from=a.example.com policy.dmarc=quarantine',
      x.ar_entry(out, { disposition = 'quarantine' }))
    assert.equal('dmarc=temperror reason="dns error" header.from=x.test',
      x.ar_entry({ result = 'temperror', author_domain = 'x.test' }, nil, 'dns error'))
    assert.equal('dmarc=none', x.ar_entry({ result = 'none' }))
  end)
end)

describe('dmarc_engine evaluates with rspamd\'s resolver', function()
  it('aligned SPF pass: DMARC_POLICY_ALLOW [policy domain, policy], A-R, mempool', function()
    local _, x = load()
    local t = scan(x, spoof('pass.test', { symbols = { 'R_SPF_ALLOW' } }))
    assert.same({ 'pass.test', 'reject' }, t:options('DMARC_POLICY_ALLOW'))
    assert.equal('pass', t.pool.dmarc_result)
    assert.equal('pass', t.pool.dmarc_disposition)
    assert.equal('mx.rcpt.test; dmarc=pass (p=reject dis=none) header.from=pass.test policy.dmarc=none',
      t:added_headers()['Authentication-Results'])
  end)

  it('waits for asynchronous answers and then decides', function()
    local _, x = load()
    local t = fake.task(spoof('quar.test', { dns = DNS, async_dns = true }))
    x.dmarc_check(t)
    assert.same({}, t.results)
    t:flush_dns()
    assert.same({ 'quar.test : No valid SPF, No valid DKIM', 'quarantine' },
      t:options('DMARC_POLICY_QUARANTINE'))
    assert.equal('Junk', t:added_headers()['X-DMARC-Folder'])
  end)

  it('takes DKIM results from rspamd, RFC 8601 words', function()
    local _, x = load()
    local t = scan(x, spoof('pass.test', { dkim = {
      { result = 'allow', domain = 'PASS.test', selector = 's1' },
      { result = 'reject', domain = 'other.test', selector = 's2', fail_reason = 'body hash' },
    } }))
    assert.same({ 'pass.test', 'reject' }, t:options('DMARC_POLICY_ALLOW'))
  end)

  it('t=y: the quarantine symbol names policy_test_mode [POL-4]', function()
    local _, x = load()
    local t = scan(x, spoof('testing.test'))
    assert.same({ 'testing.test : No valid SPF, No valid DKIM', 'reject', 'policy_test_mode' },
      t:options('DMARC_POLICY_QUARANTINE'))
  end)

  it('SERVFAIL, a timeout or an unsent lookup: DMARC_DNSFAIL, never a reject [DISC-10]', function()
    local _, x = load({ site_script = site_file('strict.lua', 'return { unconditional_reject = true }') })
    local cases = {
      { 'servfail.test', 'servfail.test : server fail' },
      { 'slow.test', 'slow.test : query timed out' },
      { 'unsent.test', 'unsent.test : not sent' },
    }
    for _, c in ipairs(cases) do
      local t = scan(x, spoof(c[1]))
      assert.same({ c[2] }, t:options('DMARC_DNSFAIL'))
      assert.same({}, t.pre_results)
      assert.matches('dmarc=temperror', t:added_headers()['Authentication-Results'])
    end
  end)

  it('no From field, or no record: DMARC_NA as rspamd words it', function()
    local _, x = load()
    local t = scan(x, spoof('none.test', { from = {} }))
    assert.same({ 'No From header', 'no_from' }, t:options('DMARC_NA'))
    t = scan(x, spoof('none.test'))
    assert.same({ 'none.test' }, t:options('DMARC_NA'))
  end)

  it('an unusable record: DMARC_BAD_POLICY', function()
    local _, x = load()
    local t = scan(x, spoof('bad.test'))
    assert.matches('^bad%.test : ', t:options('DMARC_BAD_POLICY')[1])
  end)

  it('two From fields never pass [FROM-5]', function()
    local _, x = load()
    local t = scan(x, spoof('pass.test', {
      symbols = { 'R_SPF_ALLOW' },
      from = { 'a@pass.test', 'b@pass.test' },
    }))
    assert.is_nil(t:options('DMARC_POLICY_ALLOW'))
    local opts = t:options('DMARC_POLICY_REJECT')
    assert.equal('multiple_from', opts[3])
  end)
end)

describe('dmarc_engine per-message work', function()
  it('reuses evaluations across messages, also with several in flight', function()
    local _, x = load()
    for _ = 1, 3 do scan(x, spoof('quar.test')) end
    assert.equal(1, x.eval_pool_size())
    -- A fresh engine: nothing cached, so every evaluation waits for its answer.
    _, x = load()
    local tasks = {}
    for i = 1, 3 do
      tasks[i] = fake.task(spoof('quar.test', { dns = DNS, async_dns = true }))
      x.dmarc_check(tasks[i])
    end
    assert.equal(0, x.eval_pool_size())
    for i = 1, 3 do tasks[i]:flush_dns() end
    assert.equal(3, x.eval_pool_size())
    assert.same({ 'quar.test : No valid SPF, No valid DKIM', 'quarantine' },
      tasks[3]:options('DMARC_POLICY_QUARANTINE'))
  end)

  it('reads recipients, IP and List-Id only when the site can use them', function()
    local counting = function(spec)
      local t = fake.task(spec)
      t.calls = {}
      for _, m in ipairs({ 'get_recipients', 'get_from_ip', 'get_header' }) do
        local orig = t[m]
        t[m] = function(self, ...)
          self.calls[m] = (self.calls[m] or 0) + 1
          return orig(self, ...)
        end
      end
      return t
    end
    local _, x = load()
    local t = counting(spoof('pass.test', { symbols = { 'R_SPF_ALLOW' }, dns = DNS }))
    x.dmarc_check(t)
    assert.is_table(t:options('DMARC_POLICY_ALLOW'))
    assert.is_nil(t.calls.get_recipients)
    assert.is_nil(t.calls.get_header)
    -- A site with a recipient override needs the recipients of a failing message.
    _, x = load({ site_script = site_file('rcpt.lua',
      'return { overrides = { { rcpt = "bob@rcpt.test", at_most = "none" } } }') })
    t = counting(spoof('quar.test', { dns = DNS }))
    x.dmarc_check(t)
    assert.equal(1, t.calls.get_recipients)
    assert.is_nil(t.calls.get_header)
    assert.is_nil(t:added_headers()['X-DMARC-Folder'])
  end)

  it('gives a site hook a plain ctx it can iterate', function()
    local _, x = load({ site_script = site_file('hook.lua', [[
      return { decide = function(v, ctx)
        local n = 0
        for k in pairs(ctx) do
          if type(k) ~= 'string' then return score(1) end
          n = n + 1
        end
        if ctx.rcpt[1] == 'bob@rcpt.test' and ctx.ip == '203.0.113.66' and n >= 4 then
          return score(5)
        end
      end }]]) })
    local t = scan(x, spoof('quar.test'))
    assert.equal(5, t.results.DMARC_SITE_SCORE.weight)
  end)
end)

describe('dmarc_engine acts on the site\'s decisions', function()
  it('p=reject alone is quarantined to a folder [POL-3]; the switch rejects [OPEN-6]', function()
    local _, x = load()
    local t = scan(x, spoof('pass.test'))
    assert.same({ 'pass.test : No valid SPF, No valid DKIM', 'reject' }, t:options('DMARC_POLICY_REJECT'))
    assert.same({}, t.pre_results)
    assert.equal('Junk', t:added_headers()['X-DMARC-Folder'])
    assert.is_nil(t.milter.remove_headers)
    -- A folder header that came with the message is removed: the site's own is the only one.
    t = scan(x, spoof('pass.test', { headers = { ['X-DMARC-Folder'] = { 'Inbox' } } }))
    assert.equal(0, t.milter.remove_headers['X-DMARC-Folder'])
    assert.equal('Junk', t:added_headers()['X-DMARC-Folder'])
    assert.equal('quarantine', t.pool.dmarc_disposition)

    _, x = load({ site_script = site_file('switch.lua', 'return { unconditional_reject = true }') })
    t = scan(x, spoof('pass.test'))
    assert.equal('reject', t.pre_results[1].action)
    assert.equal('least', t.pre_results[1].flags)
    -- rspamd's milter puts 554 5.7.1 in front: the text is the rest, and names DMARC.
    assert.equal('Rejected by DMARC policy for pass.test', t.pre_results[1].message)
    assert.equal(t.pre_results[1].message, t.messages.smtp_message)
  end)

  it('score, tag and defer treatments', function()
    local _, x = load({ site_script = site_file('treat.lua', [[
      return { treat = { quarantine = score(6), temperror = defer, reject = tag('X-Spoof', 'yes') },
               unconditional_reject = true }]]) })
    local t = scan(x, spoof('quar.test'))
    assert.equal(6, t.results.DMARC_SITE_SCORE.weight)
    assert.is_nil(t:added_headers()['X-DMARC-Folder'])
    t = scan(x, spoof('servfail.test'))
    assert.equal('soft reject', t.pre_results[1].action)
    assert.matches('DMARC', t.pre_results[1].message)
    t = scan(x, spoof('pass.test'))
    assert.equal('yes', t:added_headers()['X-Spoof'])
  end)

  it('a site script that fails in decide() is contained: the default decision applies', function()
    local _, x = load({ site_script = site_file('raise.lua',
      'return { decide = function() error("boom") end }') })
    local t = scan(x, spoof('quar.test'))
    assert.equal('Junk', t:added_headers()['X-DMARC-Folder'])
  end)

  -- Lines that name @needle, with what they were logged for.
  local function lines_with(env, needle)
    local out = {}
    for _, e in ipairs(env.log) do
      if e.msg:find(needle, 1, true) then out[#out + 1] = e end
    end
    return out
  end

  it('a decide hook\'s error is logged once, with the task, and the message marked', function()
    local path = site_file('raise-line.lua',
      'return {\n  decide = function()\n    error("boom")\n  end,\n}\n')
    local env, x = load({ site_script = path })
    env.log = {}
    local t = scan(x, spoof('quar.test'))
    assert.equal('Junk', t:added_headers()['X-DMARC-Folder'])
    local lines = lines_with(env, 'boom')
    assert.equal(1, #lines)
    assert.equal(t, lines[1].target)
    assert.matches(path:gsub('%p', '%%%0') .. ':3: boom', lines[1].msg)
    assert.same({ path .. ':3', 'decide' }, t:options('DMARC_SITE_SCRIPT_ERROR'))
    -- The next message, once more (not twice), and a good decision marks nothing.
    env.log = {}
    scan(x, spoof('quar.test'))
    assert.equal(1, #lines_with(env, 'boom'))
  end)

  it('a hook\'s pattern bomb ends at once with a sandbox error; the default treatment applies', function()
    local path = site_file('bomb.lua', [[
return {
  decide = function(verdict)
    local s = ("a"):rep(30000)
    local found = s:find("a-a-a-a-a-a-a-b")
    if found then return 'accept' end
  end,
}
]])
    local env, x = load({ site_script = path })
    env.log = {}
    local t0 = os.clock()
    local t = scan(x, spoof('pass.test'))
    assert.is_true(os.clock() - t0 < 1)
    -- p=reject handled as quarantine: the default treatment, folder Junk.
    assert.equal('Junk', t:added_headers()['X-DMARC-Folder'])
    assert.is_table(t:options('DMARC_POLICY_REJECT'))
    assert.same({ path .. ':4', 'decide' }, t:options('DMARC_SITE_SCRIPT_ERROR'))
    local lines = lines_with(env, 'too costly')
    assert.equal(1, #lines)
    assert.matches('site script sandbox', lines[1].msg, 1, true)
  end)

  it('a script that allocates 2 GB at load is refused at once; the defaults apply', function()
    local path = site_file('rep.lua', 'local pad = string.rep("x", 2^31 - 64)\nreturn {}\n')
    local t0 = os.clock()
    local env, x = load({ site_script = path })
    assert.is_true(os.clock() - t0 < 1)
    assert.is_nil(x.disabled)
    assert.matches('did not load: ' .. path:gsub('%p', '%%%0') .. ':1: string.rep: a result of ' ..
      '2147483584 bytes is over the limit', env.log_text('error'))
    local t = scan(x, spoof('pass.test'))
    assert.same({ path .. ':1', 'load' }, t:options('DMARC_SITE_SCRIPT_ERROR'))
  end)
end)

describe('dmarc_engine with Redis', function()
  local store = require 'dmarc.site.store'

  local function redis_with(entries)
    local data = {}
    for logical, entry in pairs(entries) do
      data[store.redis_key(logical, 'dmarc:', 'ovr')] = require('cjson').encode(entry)
    end
    return { data = data, down = false }
  end

  it('an override read with one MGET lets a failure through, named in the symbol', function()
    local redis = redis_with({ ['domain:pass.test'] = { at_most = 'none', reason = 'local_policy' } })
    local env, x = load({ servers = '127.0.0.1:6379', overrides = { enabled = true } }, { redis = redis })
    local t = scan(x, spoof('pass.test'))
    assert.equal(1, #env.redis.requests)
    assert.equal('MGET', env.redis.requests[1].cmd)
    local r = t.results.DMARC_POLICY_REJECT
    assert.equal(0, r.weight)
    assert.equal('local_policy', r.options[3])
    assert.is_nil(t:added_headers()['X-DMARC-Folder'])
    -- The same keys again within cache_ttl: no second round trip.
    scan(x, spoof('pass.test'))
    assert.equal(1, #env.redis.requests)
  end)

  it('Redis down: the site\'s defaults, a warning, then no Redis for redis_backoff', function()
    local redis = { data = {}, down = true }
    local env, x = load({ servers = '127.0.0.1:6379', overrides = { enabled = true, cache_ttl = 0 } },
      { redis = redis })
    local t = scan(x, spoof('pass.test'))
    assert.equal('Junk', t:added_headers()['X-DMARC-Folder'])
    assert.matches('override store unavailable', env.log_text('warn'))
    local asked = #env.redis.requests
    scan(x, spoof('quar.test'))
    assert.equal(asked, #env.redis.requests)
  end)

  it('report rows: the row script of dmarc.report with its keys and arguments', function()
    local report = require 'dmarc.report.rows'
    local env, x = load({ servers = '127.0.0.1:6379', reporting = { enabled = true, prefix = 'it:' } },
      { redis = { data = {} } })
    scan(x, spoof('pass.test'))
    -- The row script, sent with EVAL (no state in rspamd's lua_redis to get stuck).
    assert.equal(report.ROW_SCRIPT, env.redis.scripts[1].script)
    local runs = env.redis.scripts[1].runs
    assert.equal(1, #runs)
    local keys = report.keys('it:', 'pass.test', report.day_of(1795305600))
    -- The third key marks the row's id: a retried write counts once.
    assert.same({ keys.rows, keys.meta }, { runs[1].keys[1], runs[1].keys[2] })
    assert.matches('^it:rpt:{pass%.test}:seen:%x+%.1$', runs[1].keys[3])
    local row = assert(report.decode_row(runs[1].args[1]))
    assert.equal('quarantine', row.disposition)
    assert.equal('203.0.113.66', row.source_ip)
    -- Scans made with rspamc are not counted unless asked for.
    local t = fake.task(spoof('pass.test', { dns = DNS, rspamc = true }))
    x.dmarc_check(t)
    assert.equal(1, #runs)
  end)
end)

describe('dmarc_engine report rows while Redis is down', function()
  -- (Only pass.test publishes rua in this spec's DNS: every scan below adds one row.)
  it('keeps the rows and writes them, oldest first and once each, when Redis is back', function()
    local redis = { data = {}, down = true }
    local env, x = load({ servers = '127.0.0.1:6379', redis_backoff = 0,
                          reporting = { enabled = true, prefix = 'it:' } }, { redis = redis })
    scan(x, spoof('pass.test'))
    scan(x, spoof('pass.test'))
    local runs = env.script_runs(ROW_SCRIPT)
    assert.equal(0, #runs)
    redis.down = false
    scan(x, spoof('pass.test'))
    -- The new message's row at once; the queue is the worker timer's, outside any task.
    assert.equal(1, #runs)
    env.start_worker()
    env.tick()
    assert.equal(3, #runs)
    assert.is_nil(runs[2].task)
    -- Each row under its own id; the queued ones oldest first.
    for i, n in ipairs({ 3, 1, 2 }) do
      assert.matches('^it:rpt:{pass%.test}:seen:%x+%.' .. n .. '$', runs[i].keys[3])
    end
    env.tick()
    assert.equal(3, #runs)
  end)

  it('a queued row waits in its stored form and is written as a direct write would be', function()
    local redis = { data = {}, down = true }
    local env, x = load({ servers = '127.0.0.1:6379', redis_backoff = 0,
                          reporting = { enabled = true, prefix = 'it:' } }, { redis = redis })
    scan(x, spoof('pass.test'))
    redis.down = false
    scan(x, spoof('pass.test'))
    env.start_worker()
    env.tick()
    local runs = env.script_runs(ROW_SCRIPT)
    assert.equal(2, #runs)
    -- The direct write (row 2) and the queued one (row 1): same keys, same arguments.
    assert.same({ runs[1].keys[1], runs[1].keys[2] }, { runs[2].keys[1], runs[2].keys[2] })
    assert.same(runs[1].args, runs[2].args)
    local row = assert(require('dmarc.report.rows').decode_row(runs[1].args[1]))
    assert.equal('quarantine', row.disposition)
  end)

  it('the timer has at most 32 queued rows in flight: the rest wait for their replies', function()
    local redis = { data = {}, down = true }
    local env, x = load({ servers = '127.0.0.1:6379', redis_backoff = 0,
                          reporting = { enabled = true, prefix = 'it:' } }, { redis = redis })
    for _ = 1, 40 do scan(x, spoof('pass.test')) end
    redis.down, redis.defer = false, true
    env.start_worker()
    env.tick()
    local runs = env.script_runs(ROW_SCRIPT)
    assert.equal(32, #runs)
    env.tick()
    assert.equal(32, #runs) -- none answered yet
    for _, reply in ipairs(redis.unanswered) do reply() end
    env.tick()
    assert.equal(40, #runs)
  end)

  it('a queued row whose write raises is tried again, then dropped with a line; the timer goes on', function()
    local report = require 'dmarc.report.rows'
    local redis = { data = {}, down = true }
    local env, x = load({ servers = '127.0.0.1:6379', redis_backoff = 0,
                          reporting = { enabled = true, prefix = 'it:' } }, { redis = redis })
    scan(x, spoof('pass.test'))
    redis.down = false
    local commands = report.commands
    report.commands = function() error('commands raised') end
    finally(function() report.commands = commands end)
    env.start_worker()
    env.tick()
    assert.matches('report row for pass.test: its write failed: .*commands raised; tried again',
      env.log_text('error'))
    env.tick()
    env.tick()
    assert.matches('report row for pass.test dropped: its write failed 3 times', env.log_text('error'))
    report.commands = commands
    scan(x, spoof('pass.test'))
    scan(x, spoof('pass.test'))
    assert.equal(2, #env.script_runs(ROW_SCRIPT))
  end)

  it('a worker that exits tries its queued rows once more, even while backing off', function()
    local redis = { data = {}, down = true }
    local env, x = load({ servers = '127.0.0.1:6379',
                          reporting = { enabled = true, prefix = 'it:' } }, { redis = redis })
    scan(x, spoof('pass.test'))
    redis.down = false
    env.start_worker()
    env.tick()
    local runs = env.script_runs(ROW_SCRIPT)
    assert.equal(0, #runs) -- backing off for redis_backoff
    env.finish_worker(fake.task(spoof('pass.test', { dns = DNS })))
    assert.equal(1, #runs)
  end)

  it('drops a row beyond reporting.max_pending with a log line, never silently', function()
    local redis = { data = {}, down = true }
    local env, x = load({ servers = '127.0.0.1:6379', redis_backoff = 0,
                          reporting = { enabled = true, prefix = 'it:', max_pending = 1 } },
                        { redis = redis })
    scan(x, spoof('pass.test'))
    scan(x, spoof('pass.test'))
    assert.matches('report row for pass.test dropped: 1 rows already wait', env.log_text('warn'))
    redis.down = false
    env.start_worker()
    env.tick()
    assert.equal(1, #env.script_runs(ROW_SCRIPT))
  end)
end)

describe('dmarc_engine SPF fallback', function()
  local ok_io = pcall(require, 'dmarc.io')

  -- rspamd without its spf module: no R_SPF_* symbol on the message.
  local function nospf(from_domain, extra)
    local spec = spoof(from_domain, extra)
    spec.symbols = {}
    return spec
  end

  local SPF_DNS = {}
  for k, v in pairs(DNS) do SPF_DNS[k] = v end
  SPF_DNS['pass.test'] = { results = { 'v=spf1 include:_spf.pass.test -all' } }
  SPF_DNS['_spf.pass.test'] = { results = { 'v=spf1 ip4:192.0.2.10 mx:mail.pass.test ~all' } }
  SPF_DNS['mail.pass.test'] = { results = { { name = 'mx1.pass.test', priority = 10 },
                                            { name = 'mx2.pass.test', priority = 20 } } }
  SPF_DNS['mx1.pass.test'] = { results = { '192.0.2.21' } }
  SPF_DNS['mx2.pass.test'] = { results = { '192.0.2.22' } }
  SPF_DNS['quar.test'] = { results = { 'v=spf1 ip4:192.0.2.30 -all' } }
  SPF_DNS['servfail.test'] = { err = 'server fail' }
  SPF_DNS['spftemp.test'] = { err = 'server fail' }
  SPF_DNS['_dmarc.spftemp.test'] = { results = { 'v=DMARC1; p=reject' } }

  local function asked(t, name)
    for _, n in ipairs(t.dns_asked) do
      if n == name then return true end
    end
    return false
  end

  it('checks SPF itself when rspamd gave no SPF result: aligned pass through include and mx', function()
    if not ok_io then return pending('dmarc.io is not built') end
    local _, x = load()
    -- The second mx name's address, three rounds deep, answered later as rspamd does.
    local t = fake.task(nospf('pass.test', { ip = '192.0.2.22', dns = SPF_DNS, async_dns = true }))
    x.dmarc_check(t)
    assert.same({}, t.results)
    t:flush_dns()
    assert.same({ 'pass.test', 'reject' }, t:options('DMARC_POLICY_ALLOW'))
    assert.is_true(asked(t, '_spf.pass.test'))
    assert.is_true(asked(t, 'mx1.pass.test'))
  end)

  it('gives SPF fail as rspamd words it, and uses rspamd\'s result when there is one', function()
    if not ok_io then return pending('dmarc.io is not built') end
    local _, x = load()
    local t = scan(x, nospf('quar.test', { dns = SPF_DNS }))
    assert.same({ 'quar.test : No valid SPF, No valid DKIM', 'quarantine' },
      t:options('DMARC_POLICY_QUARANTINE'))
    assert.is_true(asked(t, 'quar.test'))
    -- rspamd's spf module ran: its result, no SPF question.
    t = scan(x, spoof('quar.test', { symbols = { 'R_SPF_ALLOW' }, dns = SPF_DNS }))
    assert.same({ 'quar.test', 'quarantine' }, t:options('DMARC_POLICY_ALLOW'))
    assert.is_false(asked(t, 'quar.test'))
  end)

  -- [EVAL-3]: an aligned SPF temperror makes DMARC temperror, never a reject.
  it('SPF temperror (SERVFAIL): DMARC_DNSFAIL, never a reject', function()
    if not ok_io then return pending('dmarc.io is not built') end
    local _, x = load({ site_script = site_file('strict-spf.lua', 'return { unconditional_reject = true }') })
    local t = scan(x, nospf('spftemp.test', { dns = SPF_DNS }))
    assert.is_table(t:options('DMARC_DNSFAIL'))
    assert.same({}, t.pre_results)
    assert.matches('dmarc=temperror', t:added_headers()['Authentication-Results'])
  end)

  it('is off with fallback_spf = false, and off (logged) by default without dmarc.io', function()
    if not ok_io then return pending('dmarc.io is not built') end
    local _, x = load({ fallback_spf = false })
    local t = scan(x, nospf('quar.test', { dns = SPF_DNS }))
    assert.is_false(asked(t, 'quar.test'))
    local saved = package.loaded['dmarc.io']
    package.loaded['dmarc.io'] = nil
    package.preload['dmarc.io'] = function() error('not installed') end
    local env1, x1 = load()
    local env2, x2 = load({ fallback_spf = true })
    package.preload['dmarc.io'] = nil
    package.loaded['dmarc.io'] = saved
    assert.is_nil(x1.disabled)
    assert.matches('no SPF fallback', env1.log_text('info'))
    assert.is_string(x2.disabled)
    assert.matches('module disabled: fallback_spf needs dmarc.io', env2.log_text('error'))
  end)

  it('turns reverse-lookup names into the address rspamd resolves', function()
    local _, x = load()
    assert.equal('192.0.2.200', x.ptr_address('200.2.0.192.in-addr.arpa'))
    local v6 = '1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa'
    assert.equal('2001:0db8:0000:0000:0000:0000:0000:0001', x.ptr_address(v6))
    assert.is_nil(x.ptr_address('example.com'))
    assert.is_nil(x.ptr_address('0.8.b.d.0.1.0.0.2.ip6.arpa'))
  end)
end)

describe('dmarc_engine DKIM fallback', function()
  it('is used only when rspamd did not check DKIM, with keys fetched asynchronously', function()
    local ok_io = pcall(require, 'dmarc.io')
    if not ok_io then return pending('dmarc.io is not built') end
    local _, x = load({ fallback_dkim = true })
    -- rspamd's dkim filter ran (SPF and DKIM counted): its results are used, no key lookup.
    local t = scan(x, spoof('pass.test', { dmarc_checks = 2 }))
    for _, name in ipairs(t.dns_asked) do assert.is_nil(name:find('_domainkey', 1, true)) end
    -- It did not: the signature's key is asked for (here NXDOMAIN: the signature fails).
    t = scan(x, spoof('pass.test', {
      dmarc_checks = 1,
      headers = { ['DKIM-Signature'] = { 'v=1; a=rsa-sha256; d=pass.test; s=sel1; h=from; bh=x; b=y' } },
      content = 'DKIM-Signature: v=1; a=rsa-sha256; d=pass.test; s=sel1; h=from; bh=x; b=y\r\n' ..
        'From: x@pass.test\r\n\r\nbody\r\n',
    }))
    local asked = false
    for _, name in ipairs(t.dns_asked) do
      if name == 'sel1._domainkey.pass.test' then asked = true end
    end
    assert.is_true(asked)
    assert.is_table(t:options('DMARC_POLICY_REJECT'))
  end)
end)

describe('dmarc_engine Authentication-Results with milter_headers', function()
  -- A stand-in for rspamd's lua_auth_results: one field from the symbols it is given.
  local function fake_ar()
    local ar = { default_settings = { dmarc_symbols = { reject = 'DMARC_POLICY_REJECT' } } }
    function ar.gen_auth_results(_, s)
      local parts = { 'mx.host' }
      if next(s.dmarc_symbols) then parts[#parts + 1] = 'dmarc=fail header.from=policy.domain' end
      if #parts == 1 then parts[2] = 'none' end
      return table.concat(parts, '; ')
    end
    return ar
  end

  it('puts the plugin\'s dmarc= entry into the routine\'s one field', function()
    local ar = fake_ar()
    package.loaded.lua_auth_results = ar
    local _, x = load({ auth_results = 'milter_headers' })
    package.loaded.lua_auth_results = nil
    assert.is_nil(x.disabled)
    local t = scan(x, spoof('pass.test'))
    -- No field of the plugin's own ...
    assert.is_nil(t:added_headers()['Authentication-Results'])
    -- ... its entry in the routine's, instead of the one from the symbols.
    assert.equal('mx.host; dmarc=fail (p=reject dis=quarantine) header.from=pass.test ' ..
      'policy.dmarc=quarantine', ar.gen_auth_results(t, ar.default_settings))
    -- A message the plugin did not evaluate: the routine's own field.
    assert.equal('mx.host; dmarc=fail header.from=policy.domain',
      ar.gen_auth_results(fake.task({}), ar.default_settings))
  end)

  it('keeps the entry of a field that holds other results', function()
    local _, x = load()
    local x_with_entry = x.with_dmarc_entry
    assert.equal('h; spf=pass; dmarc=pass', x_with_entry('h; spf=pass', 'dmarc=pass'))
    assert.equal('h; dmarc=pass', x_with_entry('h; none', 'dmarc=pass'))
  end)

  it('refuses an unknown auth_results value', function()
    local env, x = load({ auth_results = 'both' })
    assert.is_string(x.disabled)
    assert.matches('auth_results', env.log_text('error'))
  end)
end)

describe('dmarc_engine and pct (switching from the built-in module)', function()
  local dns = { ['_dmarc.pct0.test'] = { results = { 'v=DMARC1; p=quarantine; pct=0' } } }

  it('default mode: pct is historic, p=quarantine; pct=0 gives DMARC_POLICY_QUARANTINE', function()
    local _, x = load()
    local t = scan(x, spoof('pct0.test', { dns = dns }))
    assert.same({ 'pct0.test : No valid SPF, No valid DKIM', 'quarantine' },
      t:options('DMARC_POLICY_QUARANTINE'))
  end)

  it('pct_as_testing: pct=0 read as t=y, DMARC_POLICY_SOFTFAIL as the built-in module', function()
    local _, x = load({ pct_as_testing = true })
    local t = scan(x, spoof('pct0.test', { dns = dns }))
    assert.is_nil(t:options('DMARC_POLICY_QUARANTINE'))
    -- (The last option, a flag of the engine's, says why t=y applied.)
    assert.same({ 'pct0.test : No valid SPF, No valid DKIM', 'quarantine', 'policy_test_mode',
                  'pct_as_testing' }, t:options('DMARC_POLICY_SOFTFAIL'))
  end)
end)
