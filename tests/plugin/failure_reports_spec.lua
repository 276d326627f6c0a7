-- The plugin's failure reports (RFC 9991) under busted with a fake rspamd
-- (tests/plugin/fake_rspamd.lua): off by default, the settings that refuse to start, the
-- queue command sent through lua_redis (EVAL of failure.QUEUE_SCRIPT, callback style)
-- with the report it carries, when a report is due [FAIL-2], the loop guard, the shared
-- rate limit [FAIL-7] and Redis failures. The real rspamd and `dmarc report send` run in
-- tests/integration/rspamd_spec.lua.
package.path = './tests/plugin/?.lua;./lua/?.lua;' .. package.path
local fake = require 'fake_rspamd'
local failure = require 'dmarc.report.failure'

local DNS = {
  ['_dmarc.ruf.test'] = { results = { 'v=DMARC1; p=quarantine; ruf=mailto:ruf@ruf.test; fo=1' } },
  ['_dmarc.ruf0.test'] = { results = { 'v=DMARC1; p=reject; ruf=mailto:ruf@ruf0.test' } },
  ['_dmarc.psd.test'] = { results = { 'v=DMARC1; p=reject; psd=y; ruf=mailto:ruf@psd.test; fo=1' } },
  ['_dmarc.quar.test'] = { results = { 'v=DMARC1; p=quarantine; fo=1' } },
}

local REPORTER = { enabled = true, email = 'dmarc-reports@rcpt.test', submitter = 'rcpt.test',
                   org_name = 'Receiver', prefix = 'it:' }

-- A fake Redis that runs the queue script as the server would: INCR the window's counter,
-- refuse over the limit (-1) or with a full queue (-2), else LPUSH the entries.
local function queue_redis()
  local r = { data = {}, counters = {}, queues = {} }
  r.eval = function(script, keys, args)
    assert.equal(failure.QUEUE_SCRIPT, script)
    local n = (r.counters[keys[1]] or 0) + 1
    r.counters[keys[1]] = n
    if n > tonumber(args[1]) then return -1 end
    local q = r.queues[keys[2]] or {}
    r.queues[keys[2]] = q
    local room = tonumber(args[3]) - #q
    if room < 1 then return -2 end
    local added = 0
    for i = 5, #args do
      if added >= room then break end
      table.insert(q, 1, args[i])
      added = added + 1
    end
    return added
  end
  return r
end

local function load(extra, redis)
  local c = { dmarc_engine = { authserv_id = 'mx.rcpt.test', servers = '127.0.0.1:6379' } }
  for k, v in pairs(extra or {}) do c.dmarc_engine[k] = v end
  local env = fake.new({ config = c, redis = redis or queue_redis() })
  return env, env.load()
end

local function failure_settings(over)
  local fs = {}
  for k, v in pairs(REPORTER) do fs[k] = v end
  for k, v in pairs(over or {}) do fs[k] = v end
  return { failure_reports = fs }
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
    from = { 'Alice Smith <alice.smith@' .. from_domain .. '>' },
    symbols = { 'R_SPF_FAIL' },
    mail_from = 'alice.smith@' .. from_domain,
    helo = 'mx.sender.test',
    ip = '203.0.113.66',
    rcpt = { 'bob@rcpt.test' },
    headers = { Subject = { 'hello' } },
  }
  for k, v in pairs(extra or {}) do spec[k] = v end
  return spec
end

-- The queue script's runs (the script registered for failure.QUEUE_SCRIPT), or {}.
local function queue_runs(env)
  for _, s in ipairs(env.redis.scripts) do
    if s.script == failure.QUEUE_SCRIPT then return s.runs end
  end
  return {}
end

describe('dmarc_engine failure reports: settings', function()
  it('failure_reports__off_by_default_no_script_no_request [FAIL-1]', function()
    local env, x = load()
    assert.is_nil(x.disabled)
    assert.equal(0, #env.redis.scripts)
    local t = scan(x, spoof('ruf.test'))
    assert.is_table(t:options('DMARC_POLICY_QUARANTINE'))
    assert.equal(0, #env.redis.requests)
    assert.matches('failure reports off', env.log_text('info'))
  end)

  it('failure_reports__one_line_enables_them_logged_at_startup', function()
    local env, x = load(failure_settings())
    assert.is_nil(x.disabled)
    -- The queue script goes with its first report (EVAL), nothing is loaded at startup.
    assert.equal(0, #env.redis.scripts)
    assert.matches('failure reports redis', env.log_text('info'))
  end)

  it('failure_reports__refused_without_identity_redis_or_with_bad_numbers', function()
    local function refused(extra, pattern, no_servers)
      local c = { dmarc_engine = { authserv_id = 'mx.rcpt.test' } }
      if not no_servers then c.dmarc_engine.servers = '127.0.0.1:6379' end
      for k, v in pairs(extra) do c.dmarc_engine[k] = v end
      local env = fake.new({ config = c })
      local x = env.load()
      assert.is_string(x.disabled, pattern)
      assert.is_nil(env.symbols.DMARC_CHECK)
      assert.matches('dmarc_engine: module disabled: ' .. pattern, env.log_text('error'))
    end
    refused(failure_settings({ email = false }), 'failure_reports%.email')
    refused(failure_settings({ email = 'not an address' }), 'failure_reports%.email')
    refused(failure_settings({ submitter = false }), 'failure_reports%.submitter')
    refused(failure_settings({ submitter = 'Bad Domain' }), 'failure_reports%.submitter')
    refused(failure_settings({ prefix = 'a b' }), 'failure_reports: invalid prefix')
    refused(failure_settings({ rate_limit = 0 }), 'failure_reports%.rate_limit')
    refused(failure_settings({ rate_window = 1.5 }), 'failure_reports%.rate_window')
    refused(failure_settings({ redact_key = '' }), 'failure_reports%.redact_key')
    refused(failure_settings(), 'failure_reports is enabled but no redis servers', true)
  end)
end)

describe('dmarc_engine failure reports: what is queued', function()
  it('failure_reports__failing_message_queues_one_afrf_report [FAIL-2] [FAIL-3..7]', function()
    local env, x = load(failure_settings())
    local before = os.time()
    local t = scan(x, spoof('ruf.test'))
    local after = os.time()
    -- The scan itself is what it is without failure reports.
    assert.same({ 'ruf.test : No valid SPF, No valid DKIM', 'quarantine' },
      t:options('DMARC_POLICY_QUARANTINE'))
    local runs = queue_runs(env)
    assert.equal(1, #runs)
    local run = runs[1]
    -- Both keys under the policy domain's hash tag; the rate key of this window.
    local w0 = math.floor(before / 3600)
    local w1 = math.floor(after / 3600)
    assert.is_true(run.keys[1] == failure.rate_key('it:', 'ruf.test', w0)
      or run.keys[1] == failure.rate_key('it:', 'ruf.test', w1), run.keys[1])
    assert.equal(failure.queue_key('it:', 'ruf.test'), run.keys[2])
    assert.equal(run.keys[2], run.key) -- the stable key picks the server
    assert.is_true(run.write)
    assert.same({ '10', '7200', '100', tostring(7 * 86400) }, { (table.unpack or unpack)(run.args, 1, 4) })
    assert.equal(5, #run.args) -- one ruf destination, one entry
    local e = assert(failure.decode_entry(run.args[5]))
    assert.equal('ruf.test', e.domain)
    assert.equal('ruf@ruf.test', e.to)
    assert.equal(0, e.attempts)
    assert.is_true(e.created >= before and e.created <= after)
    local m = e.message
    -- Arrival-Date: when rspamd received the message (the task's connection time).
    local arrival = require('dmarc.report.mail').rfc5322_date(1795305600)
    assert.truthy(m:find('\r\nArrival-Date: ' .. arrival .. '\r\n', 1, true))
    assert.truthy(m:find('Content-Type: multipart/report; report-type=feedback-report;', 1, true))
    assert.truthy(m:find('\r\nFeedback-Type: auth-failure\r\n', 1, true))
    assert.truthy(m:find('\r\nAuth-Failure: dmarc\r\n', 1, true))
    assert.truthy(m:find('\r\nIdentity-Alignment: dkim, spf\r\n', 1, true))
    assert.truthy(m:find('\r\nSource-IP: 203.0.113.66\r\n', 1, true))
    assert.truthy(m:find('\r\nDelivery-Result: spam\r\n', 1, true)) -- the site's folder
    assert.truthy(m:find('\r\nOriginal-Mail-From: <redacted@ruf.test>\r\n', 1, true))
    assert.truthy(m:find('\r\nOriginal-Rcpt-To: <redacted@rcpt.test>\r\n', 1, true))
    assert.truthy(m:find('\r\nReporting-MTA: dns; rcpt.test\r\n', 1, true))
    assert.truthy(m:find('From: "Receiver" <dmarc-reports@rcpt.test>', 1, true))
    -- Headers only, local parts redacted [FAIL-7].
    assert.truthy(m:find('Content-Type: text/rfc822-headers', 1, true))
    assert.truthy(m:find('From: Alice Smith <redacted@ruf.test>', 1, true))
    assert.is_nil(m:find('alice.smith', 1, true))
    assert.matches('1 failure report%(s%) about ruf.test queued', env.log_text('info'))
  end)

  it('failure_reports__keyed_redaction_with_redact_key [FAIL-7]', function()
    local env, x = load(failure_settings({ redact_key = 'site secret' }))
    scan(x, spoof('ruf.test'))
    local m = failure.decode_entry(queue_runs(env)[1].args[5]).message
    local hashed = failure.redact_address('alice.smith@ruf.test', 'site secret')
    assert.truthy(m:find('<' .. hashed .. '>', 1, true))
    assert.is_nil(m:find('alice.smith', 1, true))
  end)

  it('failure_reports__rate_limited_per_policy_domain [FAIL-7]', function()
    local redis = queue_redis()
    local env, x = load(failure_settings({ rate_limit = 1 }), redis)
    scan(x, spoof('ruf.test'))
    local t = scan(x, spoof('ruf.test'))
    assert.is_table(t:options('DMARC_POLICY_QUARANTINE'))
    assert.equal(2, #queue_runs(env)) -- both counted, the second refused by the script
    assert.equal(1, #redis.queues[failure.queue_key('it:', 'ruf.test')])
    assert.matches('no failure report about ruf.test: rate_limited', env.log_text('info'))
    -- The budget is known spent for this window: no report is built or sent any more,
    -- while another policy domain has its own budget.
    scan(x, spoof('ruf.test'))
    assert.equal(2, #queue_runs(env))
    scan(x, spoof('ruf0.test'))
    assert.equal(3, #queue_runs(env))
    assert.equal(1, #redis.queues[failure.queue_key('it:', 'ruf0.test')])
    -- A full queue is a warning.
    env, x = load(failure_settings({ queue_max = 1 }), queue_redis())
    scan(x, spoof('ruf.test'))
    scan(x, spoof('ruf.test'))
    assert.matches('failure%-report queue of ruf.test is full', env.log_text('warn'))
  end)

  it('failure_reports__only_when_ruf_and_fo_ask_for_one [FAIL-2] [RUA-7]', function()
    local env, x = load(failure_settings())
    -- No ruf: nothing, whatever fo says.
    scan(x, spoof('quar.test'))
    -- ruf on a psd=y record: never used.
    scan(x, spoof('psd.test'))
    -- An aligned SPF and DKIM pass: nothing failed.
    local pass = spoof('ruf.test', { symbols = { 'R_SPF_ALLOW' },
      dkim = { { result = 'allow', domain = 'ruf.test', selector = 's1' } } })
    local t = scan(x, pass)
    assert.same({ 'ruf.test', 'quarantine' }, t:options('DMARC_POLICY_ALLOW'))
    -- fo=0 (the default): one aligned pass is enough not to report.
    scan(x, spoof('ruf0.test', { dkim = { { result = 'allow', domain = 'ruf0.test', selector = 's1' } } }))
    assert.equal(0, #queue_runs(env))
    assert.equal(0, #env.redis.requests)
    -- fo=1: a DMARC pass whose DKIM gave no aligned pass is reported ("any mechanism").
    t = scan(x, spoof('ruf.test', { symbols = { 'R_SPF_ALLOW' } }))
    assert.is_table(t:options('DMARC_POLICY_ALLOW'))
    local runs = queue_runs(env)
    assert.equal(1, #runs)
    assert.truthy(failure.decode_entry(runs[1].args[5]).message:find('\r\nIdentity-Alignment: dkim\r\n',
      1, true))
    -- fo=0: every mechanism failed.
    scan(x, spoof('ruf0.test'))
    assert.equal(2, #queue_runs(env))
  end)

  it('failure_reports__never_about_a_report (loop guard)', function()
    local env, x = load(failure_settings())
    local report_type = 'multipart/report; report-type=feedback-report'
    scan(x, spoof('ruf.test', { headers = { ['Content-Type'] = { report_type } } }))
    scan(x, spoof('ruf.test', { headers = { ['Auto-Submitted'] = { 'auto-generated' } } }))
    scan(x, spoof('ruf.test', { raw_headers = 'From: a@ruf.test\r\nSubject: Report Domain: ruf.test ' ..
      'Submitter: x.test\r\n' }))
    -- Our own reports, sent from the reporter address.
    scan(x, spoof('ruf.test', { mail_from = 'dmarc-reports@rcpt.test' }))
    assert.equal(0, #queue_runs(env))
    -- ... or from the aggregate reports' sender.
    local fs = failure_settings()
    fs.reporting = { reporter_address = 'rua-sender@rcpt.test' }
    local env2, x2 = load(fs)
    scan(x2, spoof('ruf.test', { mail_from = 'RUA-sender@rcpt.test' }))
    assert.equal(0, #queue_runs(env2))
    -- The same message as an ordinary one is reported.
    scan(x, spoof('ruf.test', { headers = { ['Auto-Submitted'] = { 'no' } } }))
    assert.equal(1, #queue_runs(env))
  end)

  it('failure_reports__skip_rspamc_scans_unless_asked', function()
    local env, x = load(failure_settings())
    scan(x, spoof('ruf.test', { rspamc = true }))
    assert.equal(0, #queue_runs(env))
    env, x = load(failure_settings({ skip_rspamc = false }))
    scan(x, spoof('ruf.test', { rspamc = true }))
    assert.equal(1, #queue_runs(env))
  end)
end)

describe('dmarc_engine failure reports: Redis trouble', function()
  it('failure_reports__redis_down_the_scan_goes_on_then_backs_off', function()
    local redis = queue_redis()
    redis.down = true
    local env, x = load(failure_settings(), redis)
    local t = scan(x, spoof('ruf.test'))
    -- The scan is the same as without failure reports.
    assert.same({ 'ruf.test : No valid SPF, No valid DKIM', 'quarantine' },
      t:options('DMARC_POLICY_QUARANTINE'))
    assert.equal('Junk', t:added_headers()['X-DMARC-Folder'])
    assert.matches('redis failure report failed', env.log_text('warn'))
    -- Within redis_backoff: not even tried.
    redis.down = false
    t = scan(x, spoof('ruf.test'))
    assert.is_table(t:options('DMARC_POLICY_QUARANTINE'))
    assert.equal(0, #queue_runs(env))
    assert.matches('no failure report about ruf.test: redis unavailable', env.log_text('info'))
  end)

  it('failure_reports__an_error_reply_is_no_report_and_no_crash', function()
    local redis = queue_redis()
    redis.eval = function() return { err = 'ERR wrong number of arguments' } end
    local env, x = load(failure_settings(), redis)
    local t = scan(x, spoof('ruf.test'))
    assert.is_table(t:options('DMARC_POLICY_QUARANTINE'))
    assert.matches('no failure report about ruf.test: redis', env.log_text('info'))
  end)
end)

describe('dmarc_engine failure reports: pure helpers', function()
  local _, x = load()

  it('failure_reports__possible_only_when_something_did_not_pass [FAIL-2]', function()
    local aligned = { result = 'pass', spf_aligned = true, dkim_aligned = true, flags = {} }
    local spf_pass = { spf = { result = 'pass' }, dkim = { { result = 'pass' } } }
    assert.is_false(x.failure_report_possible(aligned, spf_pass))
    assert.is_true(x.failure_report_possible({ result = 'fail' }, spf_pass))
    assert.is_false(x.failure_report_possible({ result = 'none' }, spf_pass))
    assert.is_false(x.failure_report_possible({ result = 'temperror' }, spf_pass))
    -- fo=1: a mechanism without an aligned pass; fo=d / fo=s: a failed signature or SPF.
    assert.is_true(x.failure_report_possible({ result = 'pass', spf_aligned = true, flags = {} }, spf_pass))
    assert.is_true(x.failure_report_possible(aligned,
      { spf = { result = 'pass' }, dkim = { { result = 'pass' }, { result = 'fail' } } }))
    assert.is_true(x.failure_report_possible(aligned,
      { spf = { result = 'softfail' }, dkim = { { result = 'pass' } } }))
  end)

  it('failure_reports__script_parts_split_keys_and_arguments', function()
    local keys, args = x.script_parts({ 'EVAL', 'script', '2', 'k1', 'k2', 'a1', 'a2', 'a3' })
    assert.same({ 'k1', 'k2' }, keys)
    assert.same({ 'a1', 'a2', 'a3' }, args)
  end)
end)
