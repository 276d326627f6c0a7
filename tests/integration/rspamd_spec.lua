-- The rspamd plugin inside a real rspamd 3.4, on loopback (issue 6).
--
-- tests/integration/setup-rspamd.sh starts unbound with tests/integration/rspamd/zone.conf.in,
-- signs the corpus (tests/integration/rspamd/corpus) and starts three rspamd instances:
-- rspamd's built-in dmarc module (the reference: the harness is proven with it first), and
-- our plugin with the default site script and with the strict one. Each case scans one
-- message with rspamc --json (with --ip, --from, --helo, --rcpt) and checks symbols,
-- actions, added headers and the Redis report rows.
package.path = './tests/integration/rspamd/?.lua;./lua/?.lua;' .. package.path
local h = require 'rspamd_it'

-- Senders: the documentation ranges of zone.conf.in.
local SPOOFER = '203.0.113.66'

describe('rspamd harness', function()
  it('started unbound, signed the corpus and started rspamd', function()
    assert.is_string(h.corpus)
    assert.is_string(h.instances.builtin, h.setup_error)
  end)

  it('started rspamd with the dmarc_engine plugin', function()
    assert.equal('', h.setup_error)
    assert.is_string(h.instances.engine)
    assert.is_string(h.instances.strict)
    assert.is_string(h.instances.legacy)
    assert.is_string(h.instances.broken)
    assert.is_string(h.instances.sandbox)
  end)
end)

-- The reference: rspamd's own dmarc module, same config otherwise. Only behaviour that the
-- built-in module gets right is pinned here; where it differs from the RFCs (no np, no t=y,
-- non-PSL names), our plugin's cases below say what is right.
describe('built-in dmarc module (reference)', function()
  local addr = h.instances.builtin

  it('aligned SPF pass gives DMARC_POLICY_ALLOW [domain, policy]', function()
    local r = h.scan(addr, { file = 'spf-pass.eml', ip = '192.0.2.10', from = 'alice@pass.test' })
    assert.is_table(h.options(r, 'R_SPF_ALLOW'))
    assert.same({ 'pass.test', 'reject' }, h.options(r, 'DMARC_POLICY_ALLOW'))
    assert.equal('no action', r.action)
  end)

  it('aligned DKIM pass gives DMARC_POLICY_ALLOW', function()
    local r = h.scan(addr, { file = 'dkim-pass.eml', ip = '198.51.100.7', from = 'b@esp.test' })
    assert.same({ 'pass.test:s=sel1' }, h.options(r, 'R_DKIM_ALLOW'))
    assert.same({ 'pass.test', 'reject' }, h.options(r, 'DMARC_POLICY_ALLOW'))
  end)

  it('spoofed p=reject gives DMARC_POLICY_REJECT and the configured reject action', function()
    local r = h.scan(addr, { file = 'reject-spoof.eml', ip = SPOOFER, from = 'ceo@reject.test' })
    assert.same({ 'reject.test : No valid SPF, No valid DKIM', 'reject' },
      h.options(r, 'DMARC_POLICY_REJECT'))
    assert.equal('reject', r.action)
  end)

  it('p=quarantine gives DMARC_POLICY_QUARANTINE', function()
    local r = h.scan(addr, { file = 'quarantine.eml', ip = SPOOFER, from = 'info@quar.test' })
    assert.same({ 'quar.test : No valid SPF, No valid DKIM', 'quarantine' },
      h.options(r, 'DMARC_POLICY_QUARANTINE'))
  end)

  it('SERVFAIL and REFUSED on the policy lookup give DMARC_DNSFAIL', function()
    local r = h.scan(addr, { file = 'servfail.eml', ip = SPOOFER, from = 'x@servfail.test' })
    assert.same({ 'servfail.test : server fail' }, h.options(r, 'DMARC_DNSFAIL'))
    r = h.scan(addr, { file = 'refused.eml', ip = SPOOFER, from = 'x@refused.test' })
    assert.same({ 'refused.test : query refused' }, h.options(r, 'DMARC_DNSFAIL'))
  end)

  it('no record gives DMARC_NA, an unusable one DMARC_BAD_POLICY', function()
    local r = h.scan(addr, { file = 'none.eml', ip = SPOOFER, from = 'x@none.test' })
    assert.same({ 'none.test' }, h.options(r, 'DMARC_NA'))
    r = h.scan(addr, { file = 'bad.eml', ip = SPOOFER, from = 'x@bad.test' })
    assert.is_table(h.options(r, 'DMARC_BAD_POLICY'))
  end)

  it('verifies the ARC chain of the forwarded message (ARC_ALLOW)', function()
    local r = h.scan(addr, { file = 'arc-forwarded.eml', ip = '198.51.100.50',
                             from = 'team-bounces@forwarder.test' })
    assert.same({ 'forwarder.test:s=arc1:i=1' }, h.options(r, 'ARC_ALLOW'))
    assert.same({ 'reject.test:s=sel1' }, h.options(r, 'R_DKIM_REJECT'))
  end)
end)

-- Our plugin. The `engine` instance runs the default site script (site-default.lua): the
-- RFC 9989 §7.4 treatment, quarantine to a folder, a Redis recipient set scored instead,
-- a trusted ARC forwarder. The `strict` instance adds the one-line reject switch and has a
-- Redis that is down.
local ROOT = h.run('pwd'):gsub('%s+$', '')
local DMARC = os.getenv('DMARC_IT_BIN') or (ROOT .. '/bin/dmarc') -- an installed one: tests/packages/run
local DAY = os.date('!%Y%m%d')

local function dmarc_cli(args)
  local out, ok = h.run(DMARC .. ' ' .. args .. ' 2>&1')
  assert(ok, out)
  return out
end

local function has(list, value)
  for _, v in ipairs(list or {}) do
    if v == value then return true end
  end
  return false
end

-- The report rows the instance wrote for @domain today, decoded (lua/dmarc/report/rows.lua).
local function report_rows(prefix, domain)
  local report = require 'dmarc.report.rows'
  local lines = h.redis_cli(0, 'HGETALL', report.keys(prefix, domain, DAY).rows)
  local rows = {}
  for i = 1, #lines - 1, 2 do
    local row = assert(report.decode_row(lines[i]))
    row.count = tonumber(lines[i + 1])
    rows[#rows + 1] = row
  end
  return rows
end

local function find_row(rows, pred)
  for _, r in ipairs(rows) do
    if pred(r) then return r end
  end
  return nil
end

describe('dmarc_engine plugin (default site script)', function()
  local addr = h.instances.engine

  setup(function()
    -- The CLI's override store, the same keys the plugin reads (docs/redis-keys.md).
    local redis = ' --redis ' .. h.q(h.redis) .. ' --redis-prefix it-engine:'
    dmarc_cli('override add rcpt carol@rcpt.test --set score-only' .. redis)
    dmarc_cli('override add domain override.test --reason local_policy --comment ' ..
      h.q('partner, never rejected') .. redis)
  end)

  it('aligned SPF pass (relaxed: bounce.pass.test) gives DMARC_POLICY_ALLOW [ALN-4]', function()
    local r = h.scan(addr, { file = 'spf-pass.eml', ip = '192.0.2.10',
                             from = 'bounce@bounce.pass.test' })
    assert.same({ 'pass.test', 'reject' }, h.options(r, 'DMARC_POLICY_ALLOW'))
    assert.equal('no action', r.action)
    local hdrs = h.added_headers(r)
    assert.equal('mx.rcpt.test; dmarc=pass (p=reject dis=none) header.from=pass.test ' ..
      'policy.dmarc=none', hdrs['Authentication-Results'])
    assert.is_nil(hdrs['X-DMARC-Folder'])
  end)

  it('aligned DKIM pass gives DMARC_POLICY_ALLOW', function()
    local r = h.scan(addr, { file = 'dkim-pass.eml', ip = '198.51.100.7', from = 'b@esp.test' })
    assert.same({ 'pass.test:s=sel1' }, h.options(r, 'R_DKIM_ALLOW'))
    assert.same({ 'pass.test', 'reject' }, h.options(r, 'DMARC_POLICY_ALLOW'))
  end)

  it('p=reject without other evidence is handled as quarantine: folder Junk [POL-3]', function()
    local r = h.scan(addr, { file = 'reject-spoof.eml', ip = SPOOFER, from = 'ceo@reject.test' })
    -- The same symbol and options as rspamd's module: DMARC asked for reject.
    assert.same({ 'reject.test : No valid SPF, No valid DKIM', 'reject' },
      h.options(r, 'DMARC_POLICY_REJECT'))
    assert.are_not.equal('reject', r.action)
    local hdrs = h.added_headers(r)
    assert.equal('Junk', hdrs['X-DMARC-Folder'])
    assert.equal('mx.rcpt.test; dmarc=fail (p=reject dis=quarantine) header.from=reject.test ' ..
      'policy.dmarc=quarantine', hdrs['Authentication-Results'])
    local row = find_row(report_rows('it-engine:', 'reject.test'), function(x)
      return x.source_ip == SPOOFER
    end)
    assert.is_table(row)
    assert.equal('quarantine', row.disposition)
    assert.equal('local_policy', row.reasons[1].type)
  end)

  it('p=quarantine: folder for one recipient, score for a recipient in a Redis set', function()
    local r = h.scan(addr, { file = 'quarantine.eml', ip = SPOOFER, from = 'info@quar.test',
                             rcpt = 'bob@rcpt.test' })
    assert.same({ 'quar.test : No valid SPF, No valid DKIM', 'quarantine' },
      h.options(r, 'DMARC_POLICY_QUARANTINE'))
    assert.equal('Junk', h.added_headers(r)['X-DMARC-Folder'])
    assert.is_nil(r.symbols.DMARC_SITE_SCORE)

    r = h.scan(addr, { file = 'quarantine.eml', ip = SPOOFER, from = 'info@quar.test',
                       rcpt = 'carol@rcpt.test' })
    assert.equal(6, r.symbols.DMARC_SITE_SCORE.score)
    assert.is_nil(h.added_headers(r)['X-DMARC-Folder'])
  end)

  it('np applies to a non-existent subdomain, sp to an existing one [DISC-12]', function()
    local r = h.scan(addr, { file = 'np-ghost.eml', ip = SPOOFER, from = 'x@ghost.np.test' })
    assert.same({ 'np.test : No valid SPF, No valid DKIM', 'reject' },
      h.options(r, 'DMARC_POLICY_REJECT'))
    assert.matches('header.from=ghost.np.test', h.added_headers(r)['Authentication-Results'], 1, true)
    r = h.scan(addr, { file = 'np-exists.eml', ip = SPOOFER, from = 'x@exists.np.test' })
    assert.same({ 'np.test : No valid SPF, No valid DKIM', 'quarantine' },
      h.options(r, 'DMARC_POLICY_QUARANTINE'))
  end)

  it('t=y applies the policy one level lower, reason policy_test_mode [POL-4]', function()
    local r = h.scan(addr, { file = 'testing.eml', ip = SPOOFER, from = 'x@testing.test' })
    local opts = h.options(r, 'DMARC_POLICY_QUARANTINE')
    assert.is_table(opts)
    assert.is_true(has(opts, 'reject'))
    assert.is_true(has(opts, 'policy_test_mode'))
    assert.is_nil(r.symbols.DMARC_POLICY_REJECT)
    assert.matches('policy.dmarc=quarantine$', h.added_headers(r)['Authentication-Results'])
  end)

  it('SERVFAIL and REFUSED give DMARC_DNSFAIL and temperror, never a reject [DISC-10]', function()
    local r = h.scan(addr, { file = 'servfail.eml', ip = SPOOFER, from = 'x@servfail.test' })
    assert.same({ 'servfail.test : server fail' }, h.options(r, 'DMARC_DNSFAIL'))
    assert.matches('^mx.rcpt.test; dmarc=temperror ', h.added_headers(r)['Authentication-Results'])
    assert.equal('no action', r.action)
    r = h.scan(addr, { file = 'refused.eml', ip = SPOOFER, from = 'x@refused.test' })
    assert.same({ 'refused.test : query refused' }, h.options(r, 'DMARC_DNSFAIL'))
  end)

  it('an override from Redis (dmarc override add) lets a p=reject failure through', function()
    local r = h.scan(addr, { file = 'override.eml', ip = SPOOFER, from = 'orders@override.test' })
    local opts = h.options(r, 'DMARC_POLICY_REJECT')
    assert.is_true(has(opts, 'local_policy'))
    -- DMARC still failed; the symbol stays, without weight, as rspamd's module does.
    assert.equal(0, r.symbols.DMARC_POLICY_REJECT.score)
    assert.is_nil(h.added_headers(r)['X-DMARC-Folder'])
    assert.matches('dis=none', h.added_headers(r)['Authentication-Results'], 1, true)
    local row = find_row(report_rows('it-engine:', 'override.test'), function() return true end)
    assert.equal('none', row.disposition)
    assert.same({ type = 'local_policy', comment = 'partner, never rejected' }, row.reasons[1])
  end)

  it('a passing ARC chain sealed by a trusted forwarder saves the forwarded message [ARC-2]', function()
    local r = h.scan(addr, { file = 'arc-forwarded.eml', ip = '198.51.100.50',
                             from = 'team-bounces@forwarder.test' })
    assert.same({ 'forwarder.test:s=arc1:i=1' }, h.options(r, 'ARC_ALLOW'))
    assert.is_true(has(h.options(r, 'DMARC_POLICY_REJECT'), 'local_policy'))
    assert.is_nil(h.added_headers(r)['X-DMARC-Folder'])
    local row = find_row(report_rows('it-engine:', 'reject.test'), function(x)
      return x.source_ip == '198.51.100.50' and x.disposition == 'none'
    end)
    assert.is_table(row)
    -- [ARC-3] comment format.
    assert.matches('^arc=pass as%[1%]%.d=forwarder%.test as%[1%]%.s=arc1', row.reasons[1].comment)

    -- The same message without its ARC set is not saved.
    r = h.scan(addr, { file = 'arc-broken.eml', ip = '198.51.100.50',
                       from = 'team-bounces@forwarder.test' })
    assert.equal('Junk', h.added_headers(r)['X-DMARC-Folder'])
  end)

  it('two From fields never pass [FROM-5] [OPEN-5]', function()
    local r = h.scan(addr, { file = 'multi-from.eml', ip = '192.0.2.10', from = 'alice@pass.test' })
    assert.is_nil(r.symbols.DMARC_POLICY_ALLOW)
    local opts = h.options(r, 'DMARC_POLICY_REJECT')
    assert.is_true(has(opts, 'multiple_from'))
  end)

  it('no record gives DMARC_NA, an unusable one DMARC_BAD_POLICY', function()
    local r = h.scan(addr, { file = 'none.eml', ip = SPOOFER, from = 'x@none.test' })
    assert.same({ 'none.test' }, h.options(r, 'DMARC_NA'))
    r = h.scan(addr, { file = 'bad.eml', ip = SPOOFER, from = 'x@bad.test' })
    assert.is_table(h.options(r, 'DMARC_BAD_POLICY'))
  end)

  it('stores report rows that `dmarc report generate` turns into RFC 9990 reports', function()
    h.scan(addr, { file = 'spf-pass.eml', ip = '192.0.2.10', from = 'bounce@bounce.pass.test' })
    -- (Rows come back in Redis' hash order: pick this message's own, not the two-From one.)
    local row = find_row(report_rows('it-engine:', 'pass.test'), function(x)
      return x.spf == 'pass' and x.envelope_from == 'bounce.pass.test'
    end)
    assert.equal('pass', row.disposition)
    assert.equal('bounce.pass.test', row.envelope_from)
    assert.equal('rcpt.test', row.envelope_to)
    assert.equal('treewalk', row.policy.discovery_method)

    local out = os.tmpname()
    os.remove(out)
    dmarc_cli('report generate --quiet --force --redis ' .. h.q(h.redis) .. ' --redis-prefix it-engine: ' ..
      '--date ' .. os.date('!%Y-%m-%d') .. ' --out ' .. h.q(out) .. ' --org-name Test ' ..
      '--email dmarc@rcpt.test --submitter rcpt.test')
    local files = h.run('ls ' .. h.q(out))
    local xml_gz = files:match('(rcpt%.test!reject%.test![^\n]*%.xml%.gz)')
    assert.is_string(xml_gz)
    local xml = h.run('gzip -dc ' .. h.q(out .. '/' .. xml_gz))
    assert.matches('<header_from>reject.test</header_from>', xml, 1, true)
    assert.matches('<disposition>quarantine</disposition>', xml, 1, true)
    local xsd = ROOT .. '/tests/fixtures/schemas/dmarc-2.0.xsd'
    local _, valid = h.run('gzip -dc ' .. h.q(out .. '/' .. xml_gz) .. ' | xmllint --noout --schema ' ..
      h.q(xsd) .. ' - 2>&1')
    assert.is_true(valid)
    h.run('rm -rf ' .. h.q(out))
  end)

  it('keeps every worker alive under concurrent scans (rspamc -n 8)', function()
    local dir = os.tmpname()
    os.remove(dir)
    h.run('mkdir -p ' .. h.q(dir))
    for i = 1, 20 do
      h.run(string.format('cp %s %s/%02d-ok.eml && cp %s %s/%02d-spoof.eml',
        h.q(h.corpus .. '/bench.eml'), h.q(dir), i, h.q(h.corpus .. '/bench-spoof.eml'), h.q(dir), i))
    end
    local out = h.run('rspamc -h ' .. h.q(addr) .. ' -n 8 -t 20 --ip 192.0.2.60 ' ..
      '--from news@bench.test symbols ' .. h.q(dir) .. ' 2>&1')
    h.run('rm -rf ' .. h.q(dir))
    local results = select(2, out:gsub('Results for file', ''))
    local allow = select(2, out:gsub('Symbol: DMARC_POLICY_ALLOW', ''))
    local quarantine = select(2, out:gsub('Symbol: DMARC_POLICY_QUARANTINE', ''))
    assert.equal(40, results)
    assert.equal(20, allow)
    assert.equal(20, quarantine)
    local log = h.run('cat ' .. h.q(os.getenv('RSPAMD_IT_DIR') .. '/engine/log/rspamd.log'))
    assert.is_nil(log:find('caught fatal signal', 1, true))
  end)
end)

-- RFC 9991 failure reports from the `engine` instance (failure_reports in engine.conf.in:
-- rate_limit = 1 per policy domain and hour), queued in the Redis the CLI reads, and
-- delivered by `dmarc report send` to the test SMTP server (tests/integration/report_smtpd.py).
describe('dmarc_engine plugin: failure reports queued for dmarc report send', function()
  local addr = h.instances.engine
  local failure = require 'dmarc.report.failure'
  local rh = dofile('tests/integration/report_helpers.lua')
  local PREFIX = 'it-engine:'
  local QUEUE = failure.queue_key(PREFIX, 'ruf.test')
  local SMTP_PORT = 16545
  local REPORTER = ' --org-name "Receiver Test" --email dmarc-reports@rcpt.test --submitter rcpt.test'
  local conn

  setup(function()
    local host, port = h.redis:match('^(.*):(%d+)$')
    conn = assert(require('dmarc.redis').connect { host = host, port = tonumber(port) })
  end)

  teardown(function()
    if conn then conn:close() end
  end)

  -- The queue and the rate-limit counters of the instance's prefix, removed.
  local function clear()
    for _, k in ipairs(assert(conn:command('KEYS', PREFIX .. 'ruf:*'))) do conn:command('DEL', k) end
  end

  local function entries()
    local list = assert(conn:command('LRANGE', QUEUE, '0', '-1'))
    local out = {}
    for i = #list, 1, -1 do out[#out + 1] = assert(failure.decode_entry(list[i])) end
    return out
  end

  local function window() return math.floor(os.time() / failure.defaults.rate_window) end

  local function scan_spoof(instance)
    return h.scan(instance or addr, { file = 'ruf-spoof.eml', ip = SPOOFER,
                                      from = 'alice.smith@ruf.test', rcpt = 'bob@rcpt.test' })
  end

  -- First, while no budget is spent: a pass must not ask anything of Redis by itself.
  it('a passing message queues nothing, and asks nothing of Redis [FAIL-2]', function()
    clear()
    local r = h.scan(addr, { file = 'ruf-pass.eml', ip = '192.0.2.45', from = 'alice.smith@ruf.test' })
    assert.same({ 'ruf.test:s=sel1' }, h.options(r, 'R_DKIM_ALLOW'))
    assert.is_table(h.options(r, 'R_SPF_ALLOW'))
    assert.same({ 'ruf.test', 'quarantine' }, h.options(r, 'DMARC_POLICY_ALLOW'))
    assert.same({}, assert(conn:command('KEYS', PREFIX .. 'ruf:*')))
  end)

  it('a failing message under ruf and fo=1 queues one report; the next is rate-limited [FAIL-7]', function()
    local r1, r2, first, w0
    -- Both scans in one rate-limit window (an hour turning between them: once more).
    for _ = 1, 2 do
      clear()
      w0 = window()
      r1 = scan_spoof()
      first = entries()
      r2 = scan_spoof()
      if window() == w0 then break end
    end
    -- The scans are what they are without failure reports.
    for _, r in ipairs({ r1, r2 }) do
      assert.same({ 'ruf.test : No valid SPF, No valid DKIM', 'quarantine' },
        h.options(r, 'DMARC_POLICY_QUARANTINE'))
      assert.equal('Junk', h.added_headers(r)['X-DMARC-Folder'])
    end
    -- Exactly one report after the first message [FAIL-2] ...
    assert.equal(1, #first)
    local e = first[1]
    assert.equal('ruf.test', e.domain)
    assert.equal('dmarc-ruf@ruf.test', e.to)
    assert.equal(0, e.attempts)
    -- ... and after the second still that one: the window's budget is spent, while the
    -- message was counted (the counter every scanner shares) [FAIL-7].
    local now = entries()
    assert.equal(1, #now)
    assert.equal(e.message, now[1].message)
    assert.equal('2', conn:command('GET', failure.rate_key(PREFIX, 'ruf.test', w0)))
    local log = h.run('cat ' .. h.q(os.getenv('RSPAMD_IT_DIR') .. '/engine/log/rspamd.log'))
    assert.truthy(log:find('no failure report about ruf.test: rate_limited', 1, true))

    -- The AFRF report with the DMARC profile [FAIL-3..6], headers only, redacted [FAIL-7].
    local m = e.message
    local function field(line) return m:find('\r\n' .. line .. '\r\n', 1, true) ~= nil end
    assert.truthy(m:find('Content-Type: multipart/report; report-type=feedback-report;', 1, true))
    assert.is_true(field('Feedback-Type: auth-failure'))
    assert.is_true(field('Version: 1'))
    assert.is_true(field('Auth-Failure: dmarc'))
    assert.is_true(field('Identity-Alignment: dkim, spf'))
    assert.is_true(field('Source-IP: ' .. SPOOFER))
    assert.is_true(field('Reported-Domain: ruf.test'))
    assert.is_true(field('Delivery-Result: spam'))
    assert.is_true(field('Reporting-MTA: dns; rcpt.test'))
    assert.is_true(field('Original-Mail-From: <redacted@ruf.test>'))
    assert.is_true(field('Original-Rcpt-To: <redacted@rcpt.test>'))
    assert.truthy(m:find('Content-Type: text/rfc822-headers', 1, true))
    assert.is_true(field('From: Alice Smith <redacted@ruf.test>'))
    assert.is_true(field('Cc: Carol Jones <redacted@rcpt.test>'))
    assert.is_true(field('Subject: Invoice 4711'))
    assert.is_nil(m:find('alice.smith', 1, true))
    assert.is_nil(m:find('carol.jones', 1, true))
    assert.is_nil(m:find('never leaves the receiver', 1, true))
    assert.truthy(m:find('From: "Receiver Test" <dmarc-reports@rcpt.test>', 1, true))
  end)

  -- (The next case keeps what this one left in Redis: the instance's worker remembers that
  -- ruf.test's budget is spent for this window, so a new report would not be made.)
  it('`dmarc report send` delivers the report rspamd queued [RUA-5]', function()
    -- The report the case above queued (queued here when this case runs alone).
    if #entries() == 0 then scan_spoof() end
    assert.equal(1, #entries())
    local dir = rh.tmpdir()
    local maildir = dir .. '/mail'
    assert.is_true(rh.wait_closed(SMTP_PORT, 10), 'port ' .. SMTP_PORT .. ' is taken')
    local smtp_pid = rh.start_smtpd(SMTP_PORT, maildir)
    finally(function()
      rh.stop(smtp_pid)
      h.run('rm -rf ' .. h.q(dir))
    end)
    -- The destination shares the policy domain's Organizational Domain: no DNS asked.
    local dns = dir .. '/dns.json'
    local f = assert(io.open(dns, 'w'))
    f:write('{}')
    f:close()
    local out, ok = h.run(DMARC .. ' report send --redis ' .. h.q(h.redis) .. ' --redis-prefix ' .. PREFIX ..
      REPORTER .. ' --smtp 127.0.0.1:' .. SMTP_PORT .. ' --dns-json ' .. h.q(dns) .. ' --out ' ..
      h.q(dir .. '/out') .. ' 2>&1')
    assert.is_true(ok, out)
    local envs = rh.ls(maildir, '%.env$')
    assert.equal(1, #envs, out)
    local env = assert(io.open(maildir .. '/' .. envs[1])):read('*a')
    assert.equal('dmarc-reports@rcpt.test\ndmarc-ruf@ruf.test\n', env:match('^[^\n]*\n[^\n]*\n'))
    local msg = assert(io.open(maildir .. '/' .. envs[1]:gsub('%.env$', '.eml'))):read('*a')
    assert.truthy(msg:find('report-type=feedback-report', 1, true))
    assert.truthy(msg:find('Auth-Failure: dmarc', 1, true))
    assert.truthy(msg:find('Source-IP: ' .. SPOOFER, 1, true))
    assert.is_nil(msg:find('alice.smith', 1, true))
    -- Delivered: nothing left in the queue.
    assert.equal(0, conn:command('EXISTS', QUEUE))
  end)

  it('with Redis down a failing message under ruf is scanned as usual, without a report', function()
    local t0 = os.time()
    for _ = 1, 2 do
      local r = scan_spoof(h.instances.strict)
      assert.same({ 'ruf.test : No valid SPF, No valid DKIM', 'quarantine' },
        h.options(r, 'DMARC_POLICY_QUARANTINE'))
      assert.equal('Junk', h.added_headers(r)['X-DMARC-Folder'])
    end
    assert.is_true(os.time() - t0 <= 2)
    local log = h.run('cat ' .. h.q(os.getenv('RSPAMD_IT_DIR') .. '/strict/log/rspamd.log'))
    assert.truthy(log:find('no failure report about ruf.test: redis unavailable', 1, true)
      or log:find('redis failure report failed', 1, true))
  end)
end)

describe('dmarc_engine plugin at startup', function()
  -- The engine instance's configuration with another site script, checked by rspamadm
  -- configtest (which loads the plugins as rspamd does at startup, LuaJIT and lualib
  -- included: lupa.lua's `load`, which drops chunk names, is in place there). The
  -- configuration has the `lua = ".../dmarc_engine/check.lua";` line of the README.
  local function configtest(script_text, extra_args, without_check)
    local dir = os.getenv('RSPAMD_IT_DIR') .. '/engine'
    local script = dir .. '/broken-site.lua'
    local f = assert(io.open(script, 'w'))
    f:write(script_text)
    f:close()
    local conf = assert(io.open(dir .. '/rspamd.conf')):read('*a')
    local n
    conf, n = conf:gsub('site_script = "[^"]*";', 'site_script = "' .. script .. '";')
    assert.equal(1, n)
    assert.truthy(conf:find('dmarc_engine/check.lua', 1, true))
    if without_check then
      conf, n = conf:gsub('\nlua = "[^"]*/dmarc_engine/check%.lua";', '\n')
      assert.equal(1, n)
    end
    local path = dir .. '/broken.conf'
    f = assert(io.open(path, 'w'))
    f:write(conf)
    f:close()
    h.run('chmod 644 ' .. h.q(script) .. ' ' .. h.q(path))
    -- With the packaged plugin (RSPAMD_IT_PLUGIN), the source tree's Lua paths stay out.
    local env = os.getenv('RSPAMD_IT_PLUGIN') and 'env -u LUA_PATH -u LUA_CPATH ' or ''
    local out, ok = h.run(env .. 'rspamadm configtest ' .. (extra_args or '') .. ' -c ' .. h.q(path)
      .. ' 2>&1')
    return out, ok, script
  end

  it('a good site script: configtest says syntax OK', function()
    local out, ok = configtest('return { treat = { quarantine = "folder:Junk" } }\n')
    assert.is_true(ok, out)
    assert.matches('syntax OK', out, 1, true)
  end)

  it('a broken site script makes configtest fail, naming file:line', function()
    local out, ok, script = configtest('return {\n  treat = { quarantine = "folder:Junk" },\n  x = = 1,\n}\n')
    assert.is_false(ok)
    assert.matches('syntax BAD', out, 1, true)
    assert.matches('dmarc_engine: site script ' .. script .. ' does not load: ' .. script ..
      ':3: ', out, 1, true)
    out, ok, script = configtest('local t = {}\nreturn {\n  treat = { quarantine = t.x.y },\n}\n')
    assert.is_false(ok)
    assert.matches('dmarc_engine: site script ' .. script .. ' does not load: ' .. script ..
      ':3: ', out, 1, true)
    assert.is_nil(out:find('[string', 1, true))
  end)

  it('a script that would allocate 2 GB at load is refused at once', function()
    local t0 = os.time()
    local out, ok, script = configtest('local pad = string.rep("x", 2^31 - 64)\nreturn {}\n')
    assert.is_true(os.time() - t0 <= 10)
    assert.is_false(ok)
    assert.matches('dmarc_engine: site script ' .. script .. ' does not load: ' .. script ..
      ':1: string.rep: a result of 2147483584 bytes is over the limit', out, 1, true)
  end)

  it('without the check line: configtest --strict fails, plain configtest cannot', function()
    local broken = 'return {\n  x = = 1,\n}\n'
    -- rspamd 3.4 ignores an error inside a Lua plugin ...
    local out, ok = configtest(broken, '', true)
    assert.is_true(ok, out)
    assert.matches('syntax OK', out, 1, true)
    -- ... unless --strict, which fails on any error logged.
    local script
    out, ok, script = configtest(broken, '--strict', true)
    assert.is_false(ok)
    assert.matches('dmarc_engine: site script ' .. script .. ' did not load: ' .. script .. ':2:', out,
      1, true)
  end)

  it('any setting the plugin would refuse makes configtest fail too', function()
    local dir = os.getenv('RSPAMD_IT_DIR') .. '/engine'
    local conf = assert(io.open(dir .. '/rspamd.conf')):read('*a')
    conf = conf:gsub('authserv_id = "[^"]*";', 'authserv_id = "two words";')
    local path = dir .. '/badopt.conf'
    local f = assert(io.open(path, 'w'))
    f:write(conf)
    f:close()
    h.run('chmod 644 ' .. h.q(path))
    local out, ok = h.run('rspamadm configtest -c ' .. h.q(path) .. ' 2>&1')
    assert.is_false(ok)
    assert.matches('dmarc_engine: the plugin would not start: authserv_id', out, 1, true)
  end)
end)

-- A site script that does not load never leaves a message unevaluated: the `broken`
-- instance's script has a syntax error on line 5 (site-broken.lua).
describe('dmarc_engine plugin (site script that does not load)', function()
  local addr = h.instances.broken
  local script = (os.getenv('RSPAMD_IT_DIR') or '') .. '/broken/site.lua'

  it('a spoof of p=reject gets DMARC_POLICY_REJECT, the default treatment and the mark', function()
    local r = h.scan(addr, { file = 'reject-spoof.eml', ip = SPOOFER, from = 'ceo@reject.test' })
    assert.same({ 'reject.test : No valid SPF, No valid DKIM', 'reject' },
      h.options(r, 'DMARC_POLICY_REJECT'))
    assert.same({ script .. ':5', 'load' }, h.options(r, 'DMARC_SITE_SCRIPT_ERROR'))
    -- The documented default: p=reject without other evidence handled as quarantine.
    assert.equal('Junk', h.added_headers(r)['X-DMARC-Folder'])
    assert.matches('policy.dmarc=quarantine$', h.added_headers(r)['Authentication-Results'])
    local log = h.run('cat ' .. h.q(os.getenv('RSPAMD_IT_DIR') .. '/broken/log/rspamd.log'))
    assert.truthy(log:find('dmarc_engine: site script ' .. script .. ' did not load (' .. script ..
      ':5); the default treatments apply', 1, true))
    assert.truthy(log:find('dmarc_engine: site script ' .. script .. ' did not load: ' .. script ..
      ':5:', 1, true))
  end)

  it('a pass stays a pass, marked too', function()
    local r = h.scan(addr, { file = 'spf-pass.eml', ip = '192.0.2.10', from = 'alice@pass.test' })
    assert.same({ 'pass.test', 'reject' }, h.options(r, 'DMARC_POLICY_ALLOW'))
    assert.is_table(h.options(r, 'DMARC_SITE_SCRIPT_ERROR'))
  end)
end)

-- The Authentication-Results field of milter_headers' routine, with the plugin's dmarc= entry
-- (auth_results = "milter_headers"): one field, one dmarc= result (RFC 8601 §5).
describe('dmarc_engine plugin with milter_headers (one Authentication-Results field)', function()
  local addr = h.instances.sandbox

  local function ar_fields(r)
    local v = ((r.milter or {}).add_headers or {})['Authentication-Results']
    if type(v) ~= 'table' then return v and { v } or {} end
    if v.value then return { v.value } end
    local out = {}
    for i, x in ipairs(v) do out[i] = type(x) == 'table' and x.value or x end
    return out
  end

  it('a spoof: one field with SPF and one dmarc= entry, the plugin\'s', function()
    local r = h.scan(addr, { file = 'quarantine.eml', ip = SPOOFER, from = 'info@quar.test' })
    assert.is_table(h.options(r, 'DMARC_POLICY_QUARANTINE'))
    local fields = ar_fields(r)
    assert.equal(1, #fields)
    local f = fields[1]
    -- (policy.dmarc= is a property of that one result.)
    assert.equal(1, select(2, f:gsub('[%s;]dmarc=', '')))
    assert.truthy(f:find('dmarc=fail (p=quarantine dis=quarantine) header.from=quar.test ' ..
      'policy.dmarc=quarantine', 1, true), f)
    assert.truthy(f:find('spf=fail', 1, true), f)
  end)

  it('a pass: one field, one dmarc=pass', function()
    local r = h.scan(addr, { file = 'spf-pass.eml', ip = '192.0.2.10', from = 'alice@pass.test' })
    local fields = ar_fields(r)
    assert.equal(1, #fields)
    assert.equal(1, select(2, fields[1]:gsub('[%s;]dmarc=', '')))
    assert.truthy(fields[1]:find('dmarc=pass (p=reject dis=none) header.from=pass.test', 1, true))
  end)
end)

-- The sandbox instance's decide hook runs a pattern bomb for mail from reject.test
-- (site-sandbox.lua, line 12): the sandbox refuses it at once, the scan goes on with the
-- default treatment, and the message is marked.
describe('dmarc_engine plugin: a site hook the sandbox stops', function()
  local addr = h.instances.sandbox
  local script = (os.getenv('RSPAMD_IT_DIR') or '') .. '/sandbox/site.lua'

  it('finishes at once with a sandbox error and the default treatment', function()
    local t0 = os.time()
    local r = h.scan(addr, { file = 'reject-spoof.eml', ip = SPOOFER, from = 'ceo@reject.test' })
    assert.is_true(os.time() - t0 <= 2)
    assert.same({ 'reject.test : No valid SPF, No valid DKIM', 'reject' },
      h.options(r, 'DMARC_POLICY_REJECT'))
    assert.equal('Junk', h.added_headers(r)['X-DMARC-Folder'])
    assert.same({ script .. ':12', 'decide' }, h.options(r, 'DMARC_SITE_SCRIPT_ERROR'))
    local log = h.run('cat ' .. h.q(os.getenv('RSPAMD_IT_DIR') .. '/sandbox/log/rspamd.log'))
    local _, n = log:gsub('string%.find: pattern "a%-a%-a%-a%-a%-a%-a%-b" is too costly', '')
    assert.equal(1, n)
  end)

  it('other mail is not marked', function()
    local r = h.scan(addr, { file = 'quarantine.eml', ip = SPOOFER, from = 'info@quar.test' })
    assert.is_nil(r.symbols.DMARC_SITE_SCRIPT_ERROR)
  end)
end)

-- pct in the default mode: historic (RFC 9989), so p=quarantine; pct=0 is applied, where
-- rspamd's module (and rfc7489 mode) sample the message out to SOFTFAIL
-- (plugins/rspamd/README.md, "Switching from the built-in dmarc module").
describe('p=quarantine; pct=0 when switching from the built-in module', function()
  local case = { file = 'pct0.eml', ip = SPOOFER, from = 'info@pct0.test' }

  it('the built-in module: DMARC_POLICY_SOFTFAIL', function()
    local r = h.scan(h.instances.builtin, case)
    assert.is_table(h.options(r, 'DMARC_POLICY_SOFTFAIL'))
    assert.is_nil(r.symbols.DMARC_POLICY_QUARANTINE)
  end)

  it('the plugin in its default mode: DMARC_POLICY_QUARANTINE', function()
    local r = h.scan(h.instances.engine, case)
    assert.same({ 'pct0.test : No valid SPF, No valid DKIM', 'quarantine' },
      h.options(r, 'DMARC_POLICY_QUARANTINE'))
    assert.equal('Junk', h.added_headers(r)['X-DMARC-Folder'])
  end)

  it('the plugin in rfc7489 mode: DMARC_POLICY_SOFTFAIL, sampled_out', function()
    local r = h.scan(h.instances.legacy, case)
    local opts = h.options(r, 'DMARC_POLICY_SOFTFAIL')
    assert.is_table(opts)
    assert.is_true(has(opts, 'sampled_out'))
  end)
end)

describe('dmarc_engine plugin (strict site script, Redis down)', function()
  local addr = h.instances.strict

  it('rejects p=reject failures with the one-line switch, SMTP text naming DMARC [OPEN-6]', function()
    local r = h.scan(addr, { file = 'reject-spoof.eml', ip = SPOOFER, from = 'ceo@reject.test' })
    assert.equal('reject', r.action)
    assert.matches('DMARC', r.messages.smtp_message, 1, true)
    assert.matches('policy.dmarc=reject$', h.added_headers(r)['Authentication-Results'])
  end)

  it('a DNS timeout gives DMARC_DNSFAIL, never a reject', function()
    local r = h.scan(addr, { file = 'timeout.eml', ip = SPOOFER, from = 'x@timeout.test' })
    assert.same({ 'timeout.test : query timed out' }, h.options(r, 'DMARC_DNSFAIL'))
    assert.are_not.equal('reject', r.action)
    r = h.scan(addr, { file = 'servfail.eml', ip = SPOOFER, from = 'x@servfail.test' })
    assert.is_table(h.options(r, 'DMARC_DNSFAIL'))
    assert.are_not.equal('reject', r.action)
  end)

  it('with Redis down a scan neither blocks nor fails: the site rules apply', function()
    local t0 = os.time()
    for _ = 1, 3 do
      local r = h.scan(addr, { file = 'quarantine.eml', ip = SPOOFER, from = 'info@quar.test',
                               rcpt = 'carol@rcpt.test' })
      assert.equal('Junk', h.added_headers(r)['X-DMARC-Folder'])
      assert.is_table(h.options(r, 'DMARC_POLICY_QUARANTINE'))
    end
    assert.is_true(os.time() - t0 <= 2)
    local log = h.run('cat ' .. h.q(os.getenv('RSPAMD_IT_DIR') .. '/strict/log/rspamd.log'))
    assert.is_truthy(log:find('override store unavailable', 1, true))
  end)
end)

describe('dmarc_engine plugin (rfc7489 mode, SPF and DKIM checked by the engine)', function()
  local addr = h.instances.legacy

  it('verifies DKIM with libopendkim when rspamd checked none (fallback_dkim)', function()
    local r = h.scan(addr, { file = 'dkim-pass.eml', ip = '198.51.100.7', from = 'b@esp.test' })
    assert.is_nil(r.symbols.R_DKIM_ALLOW)
    assert.same({ 'pass.test', 'reject' }, h.options(r, 'DMARC_POLICY_ALLOW'))
    -- A body changed after signing fails.
    r = h.scan(addr, { file = 'arc-broken.eml', ip = '198.51.100.50',
                       from = 'team-bounces@forwarder.test' })
    assert.is_table(h.options(r, 'DMARC_POLICY_REJECT'))
  end)

  -- rspamd's spf module is not loaded here: the engine checks SPF (fallback_spf), libspf2
  -- asking its questions through rspamd's resolver, round by round.
  it('checks SPF itself without rspamd\'s spf module: aligned passes', function()
    local r = h.scan(addr, { file = 'spf-pass.eml', ip = '192.0.2.10', from = 'alice@pass.test' })
    assert.is_nil(r.symbols.R_SPF_ALLOW)
    assert.same({ 'pass.test', 'reject' }, h.options(r, 'DMARC_POLICY_ALLOW'))
    -- The record, its include, the mx term and its names' addresses: four rounds.
    r = h.scan(addr, { file = 'spf-rounds.eml', ip = '192.0.2.72', from = 'orders@rounds.test' })
    assert.same({ 'rounds.test', 'reject' }, h.options(r, 'DMARC_POLICY_ALLOW'))
  end)

  it('SPF fail from the engine\'s check: DMARC_POLICY_REJECT; the sender\'s own IP passes', function()
    local r = h.scan(addr, { file = 'reject-spoof.eml', ip = SPOOFER, from = 'ceo@reject.test' })
    assert.same({ 'reject.test : No valid SPF, No valid DKIM', 'reject' },
      h.options(r, 'DMARC_POLICY_REJECT'))
    r = h.scan(addr, { file = 'reject-spoof.eml', ip = '192.0.2.20', from = 'ceo@reject.test' })
    assert.same({ 'reject.test', 'reject' }, h.options(r, 'DMARC_POLICY_ALLOW'))
    r = h.scan(addr, { file = 'spf-rounds.eml', ip = SPOOFER, from = 'orders@rounds.test' })
    assert.same({ 'rounds.test : No valid SPF, No valid DKIM', 'reject' },
      h.options(r, 'DMARC_POLICY_REJECT'))
  end)

  -- [EVAL-3]: an aligned SPF check that failed temporarily makes DMARC temperror.
  it('SPF temperror (SERVFAIL): DMARC_DNSFAIL and temperror, never a reject', function()
    local r = h.scan(addr, { file = 'spf-temperror.eml', ip = SPOOFER, from = 'billing@spftemp.test' })
    -- The policy lookup itself worked: the temperror is SPF's.
    assert.equal('spftemp.test : SPF/DKIM temp error', h.options(r, 'DMARC_DNSFAIL')[1])
    assert.is_nil(r.symbols.DMARC_POLICY_REJECT)
    assert.matches('^mx.rcpt.test; dmarc=temperror ', h.added_headers(r)['Authentication-Results'])
    assert.are_not.equal('reject', r.action)
  end)

  -- RFC 6591 §3.2: SPF-DNS carries the record the engine's SPF check evaluated, whole: its
  -- TXT strings joined without a separator (RFC 7208 §3.3), read so by the domain owner.
  it('a failure report quotes the SPF record it evaluated, whole, and ingests so', function()
    local failure = require 'dmarc.report.failure'
    local failures = require 'dmarc.owner.failures'
    local prefix = 'it-legacy:'
    local host, port = h.redis:match('^(.*):(%d+)$')
    local conn = assert(require('dmarc.redis').connect { host = host, port = tonumber(port) })
    finally(function() conn:close() end)
    local function clear()
      for _, k in ipairs(assert(conn:command('KEYS', prefix .. '*'))) do conn:command('DEL', k) end
    end
    clear()
    local r = h.scan(addr, { file = 'ruf-spoof.eml', ip = SPOOFER, from = 'bounce@split.ruf.test',
                             rcpt = 'bob@rcpt.test' })
    assert.is_nil(r.symbols.R_SPF_FAIL)
    assert.same({ 'ruf.test : No valid SPF, No valid DKIM', 'quarantine' },
      h.options(r, 'DMARC_POLICY_QUARANTINE'))
    local list = assert(conn:command('LRANGE', failure.queue_key(prefix, 'ruf.test'), '0', '-1'))
    assert.equal(1, #list)
    local m = assert(failure.decode_entry(list[1])).message
    local want = 'v=spf1 ip4:192.0.2.45 ip4:192.0.2.46 -all'
    assert.truthy(m:find('\r\nSPF-DNS: txt : split.ruf.test : ' .. want .. '\r\n', 1, true), m)
    local dir = h.run('mktemp -d'):gsub('%s+$', '')
    finally(function() h.run('rm -rf ' .. h.q(dir)) end)
    local f = assert(io.open(dir .. '/ruf.eml', 'wb'))
    f:write(m)
    f:close()
    local out, ok = h.run(DMARC .. ' report ingest --redis ' .. h.q(h.redis) .. ' --redis-prefix '
      .. prefix .. 'owner: ' .. h.q(dir .. '/ruf.eml') .. ' 2>&1')
    assert.is_true(ok, out)
    local keys = assert(conn:command('KEYS', failures.key(prefix .. 'owner:', 'ruf.test', '*')))
    assert.equal(1, #keys, out)
    local stored = assert(conn:command('HGETALL', keys[1]))
    assert.equal(2, #stored)
    assert.equal(want, require('cjson').decode(stored[2]).spf_dns)
    clear()
  end)

  it('a name without A, AAAA or MX does not exist for RFC 9091: np applies', function()
    local r = h.scan(addr, { file = 'np-txtonly.eml', ip = SPOOFER, from = 'x@txtonly.np.test' })
    assert.same({ 'np.test : No valid SPF, No valid DKIM', 'reject' },
      h.options(r, 'DMARC_POLICY_REJECT'))
    -- RFC 9989 (the default mode): NODATA means the name exists, so sp applies [DISC-12].
    r = h.scan(h.instances.engine, { file = 'np-txtonly.eml', ip = SPOOFER, from = 'x@txtonly.np.test' })
    assert.same({ 'np.test : No valid SPF, No valid DKIM', 'quarantine' },
      h.options(r, 'DMARC_POLICY_QUARANTINE'))
  end)
end)
