-- dmarc.report.send: destination verification [RUA-3..5], transports,
-- retry/backoff, the sender lock and data deletion, against fake Redis and
-- fake transports (the real SMTP server is in tests/integration).
local report = require 'dmarc.report.rows'
local files = require 'dmarc.util.files'
local generate = require 'dmarc.report.generate'
local send = require 'dmarc.report.send'
local cjson = require 'cjson'
local fake_redis = dofile('tests/lua/report_fake_redis.lua')

local DAY = 1763683200
local REPORTER = { org_name = 'Example Receiver', email = 'dmarc@receiver.example',
                   submitter = 'receiver.example' }

local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  os.execute('mkdir -p ' .. p)
  return p
end

-- A resolver from a table name -> {rcode, txts}.
local function resolver(map, log)
  return function(name, qtype)
    if log then log[#log + 1] = name .. '/' .. qtype end
    local a = map[name]
    if not a then return 'nxdomain', {}, 300 end
    return a[1], a[2] or {}, 300
  end
end

describe('report_send verification', function()
  local org = function(d) return d:match('([^.]+%.[^.]+)$') or d end

  it('report_send__same_org_needs_no_check [RUA-3]', function()
    local log = {}
    local v = send.verifier { resolve = resolver({}, log), org_domain = org }
    assert.equal('ok', v('example.com', 'agg@reports.example.com'))
    assert.equal(0, #log)
  end)

  it('report_send__external_destination_needs_consent [RUA-3] [RUA-4]', function()
    local log = {}
    local v = send.verifier {
      resolve = resolver({
        ['example.com._report._dmarc.reports.example.net'] = { 'noerror', { 'v=DMARC1' } },
        ['other.example._report._dmarc.reports.example.net'] = { 'noerror', { 'v=spf1 -all' } },
      }, log),
      org_domain = org,
    }
    assert.equal('ok', v('example.com', 'agg@reports.example.net'))
    assert.equal('example.com._report._dmarc.reports.example.net/TXT', log[1])
    assert.equal('unauthorized', v('other.example', 'agg@reports.example.net'))
    assert.equal('unauthorized', v('third.example', 'agg@reports.example.net'))
  end)

  it('report_send__consent_is_cached', function()
    local log = {}
    local v = send.verifier {
      resolve = resolver({ ['example.com._report._dmarc.r.example.net'] = { 'noerror', { 'v=DMARC1;' } } },
                         log),
      org_domain = org, clock = function() return 1000 end,
    }
    v('example.com', 'a@r.example.net')
    v('example.com', 'b@r.example.net')
    assert.equal(1, #log)
  end)

  it('report_send__dns_failure_defers [RUA-3] step 3', function()
    local v = send.verifier {
      resolve = resolver({ ['example.com._report._dmarc.r.example.net'] = { 'servfail' } }),
      org_domain = org,
    }
    assert.equal('temperror', v('example.com', 'a@r.example.net'))
  end)

  it('report_send__consent_rua_replaces_only_on_the_same_host [RUA-3] step 6', function()
    local v = send.verifier {
      resolve = resolver({
        ['a.example._report._dmarc.r.example.net'] =
          { 'noerror', { 'v=DMARC1; rua=mailto:other@r.example.net' } },
        ['b.example._report._dmarc.r.example.net'] =
          { 'noerror', { 'v=DMARC1; rua=mailto:x@elsewhere.example' } },
      }),
      org_domain = org,
    }
    local st, addr = v('a.example', 'agg@r.example.net')
    assert.equal('ok', st)
    assert.equal('other@r.example.net', addr)
    assert.equal('unauthorized', v('b.example', 'agg@r.example.net'))
  end)

  it('report_send__overlong_query_name_is_unverified [RUA-3] step 2', function()
    local long = ('a'):rep(60) .. '.' .. ('b'):rep(60) .. '.' .. ('c'):rep(60) .. '.example'
    local v = send.verifier { resolve = resolver({}), org_domain = org }
    assert.equal('unauthorized', v(long, 'x@' .. ('d'):rep(60) .. '.net'))
  end)
end)

describe('report_send transports', function()
  it('report_send__dot_stuffing', function()
    assert.equal('a\r\n..b\r\n.\r\n', send.dot_stuff('a\n.b'))
    assert.equal('..x\r\n.\r\n', send.dot_stuff('.x\r\n'))
  end)

  it('report_send__sendmail_exit_codes', function()
    local dir = tmpdir()
    local script = dir .. '/fake-sendmail'
    local f = assert(io.open(script, 'w'))
    f:write('#!/bin/sh\ncat > "' .. dir .. '/got.$$"\necho "$@" > "' .. dir .. '/args"\nexit $FAKE_EXIT\n')
    f:close()
    os.execute('chmod +x ' .. script)
    local function run(code)
      local t = send.sendmail_transport { command = 'FAKE_EXIT=' .. code .. ' ' .. script }
      return (t('dmarc@receiver.example', 'agg@example.com', 'Subject: x\r\n\r\nbody\r\n'))
    end
    assert.equal('accepted', run(0))
    local args = files.read(dir .. '/args'):gsub('\n$', '')
    assert.equal('-oi -f dmarc@receiver.example -- agg@example.com', args)
    assert.equal('temp', run(75))
    assert.equal('perm', run(67))
    assert.equal('temp', run(1))
  end)

  it('report_send__exit_status_both_runtimes', function()
    assert.equal(0, send.exit_status(true, 'exit', 0))
    assert.equal(3, send.exit_status(nil, 'exit', 3))
    assert.equal(3, send.exit_status(768))
    assert.equal(0, send.exit_status(0))
  end)
end)

describe('report_send relay certificate names (RFC 6125)', function()
  -- A stand-in for a LuaSec x509 object: its subjectAltName and subject CN.
  local function cert(dns, ips, cn)
    local san = { dNSName = dns, iPAddress = ips }
    return {
      extensions = function() return { ['2.5.29.17'] = san } end,
      subject = function() return { { name = 'commonName', value = cn } } end,
    }
  end

  it('matches a dNSName, ignoring case and a trailing dot', function()
    assert.is_true(send.cert_matches_host(cert({ 'Relay.Example.NET' }), 'relay.example.net.'))
    assert.is_false(send.cert_matches_host(cert({ 'relay.example.net' }), 'other.example.net'))
  end)

  it('takes a wildcard for exactly one leftmost label', function()
    local c = cert({ '*.example.net' })
    assert.is_true(send.cert_matches_host(c, 'smtp.example.net'))
    assert.is_false(send.cert_matches_host(c, 'a.smtp.example.net'))
    assert.is_false(send.cert_matches_host(c, 'example.net'))
    assert.is_false(send.cert_matches_host(cert({ 'smtp*.example.net' }), 'smtp1.example.net'))
    assert.is_false(send.cert_matches_host(cert({ '*.net' }), 'example.net'))
  end)

  it('matches an address literal only against iPAddress', function()
    assert.is_true(send.cert_matches_host(cert({ 'localhost' }, { '127.0.0.1' }), '127.0.0.1'))
    assert.is_false(send.cert_matches_host(cert({ '127.0.0.1' }), '127.0.0.1'))
  end)

  it('reads the CN only when there is no dNSName', function()
    assert.is_true(send.cert_matches_host(cert({}, {}, 'relay.example.net'), 'relay.example.net'))
    local ok, names = send.cert_matches_host(cert({ 'a.example.net' }, {}, 'relay.example.net'),
                                             'relay.example.net')
    assert.is_false(ok)
    assert.equal('a.example.net', names)
  end)
end)

describe('report_send delivery', function()
  local function setup(n_rua)
    local conn = fake_redis.new()
    local rua = {}
    for i = 1, n_rua or 1 do rua[i] = { uri = 'mailto:agg' .. i .. '@example.com' } end
    local v = { result = 'pass', author_domain = 'example.com', policy_domain = 'example.com',
                policy = 'none', record = { p = 'none', rua = rua } }
    for i = 1, 5 do
      report.write(conn, report.build_rows(v, {}, { ip = '203.0.113.' .. i }, nil, { time = DAY }))
    end
    local dir = tmpdir()
    assert(generate.run { redis = conn, begin = DAY, ['end'] = DAY + 86400, out = dir, reporter = REPORTER })
    return conn, dir
  end

  local function transport(results, sent)
    local i = 0
    return function(from, rcpt, message)
      i = i + 1
      sent[#sent + 1] = { from = from, rcpt = rcpt, message = message }
      local r = results[i] or 'accepted'
      return r, r == 'perm' and 550 or (r == 'temp' and 451 or 250), r
    end
  end

  local ROWS = 'dmarc:rpt:{example.com}:20251121'

  it('report_send__accepted_deletes_data', function()
    local conn, dir = setup()
    local sent = {}
    local s = assert(send.send { redis = conn, out = dir, envelope_from = 'dmarc@receiver.example',
                                 transport = transport({}, sent), clock = function() return DAY * 2 end })
    assert.equal(1, s.accepted)
    assert.equal(1, s.completed)
    assert.is_nil(conn.data[ROWS])
    assert.equal('agg1@example.com', sent[1].rcpt)
    assert.truthy(sent[1].message:find('Report Domain: example.com', 1, true))
    -- a second run sends nothing again
    s = assert(send.send { redis = conn, out = dir, envelope_from = 'dmarc@receiver.example',
                           transport = transport({}, sent), clock = function() return DAY * 2 end })
    assert.equal(0, s.accepted)
    assert.equal(1, #sent)
  end)

  it('report_send__late_rows_of_a_sent_period_are_not_reported_again', function()
    local conn, dir = setup()
    assert(send.send { redis = conn, out = dir, envelope_from = 'dmarc@receiver.example',
                       transport = transport({}, {}) })
    local v = { result = 'pass', author_domain = 'example.com', policy_domain = 'example.com',
                policy = 'none', record = { p = 'none', rua = { { uri = 'mailto:a@example.com' } } } }
    report.write(conn, report.build_rows(v, {}, { ip = '203.0.113.99' }, nil, { time = DAY + 5 }))
    local s = assert(generate.run { redis = conn, begin = DAY, ['end'] = DAY + 86400, out = tmpdir(),
                                    reporter = REPORTER })
    assert.equal(0, s.reports)
    assert.equal(1, s.already_sent)
    s = assert(generate.run { redis = conn, begin = DAY, ['end'] = DAY + 86400, out = tmpdir(),
                              reporter = REPORTER, force = true })
    assert.equal(1, s.reports)
  end)

  it('report_send__temporary_failure_keeps_data_then_retries [MAIL-5]', function()
    local conn, dir = setup()
    local sent = {}
    local now = DAY * 2
    local opts = { redis = conn, out = dir, envelope_from = 'dmarc@receiver.example',
                   transport = transport({ 'temp', 'accepted' }, sent), retry_base = 60,
                   clock = function() return now end }
    local s = assert(send.send(opts))
    assert.equal(1, s.deferred)
    assert.is_table(conn.data[ROWS])
    -- before the backoff: nothing is tried
    s = assert(send.send(opts))
    assert.equal(1, s.pending)
    assert.equal(1, #sent)
    now = now + 61
    s = assert(send.send(opts))
    assert.equal(1, s.accepted)
    assert.is_nil(conn.data[ROWS])
  end)

  it('report_send__permanent_failure_gives_up_and_deletes', function()
    local conn, dir = setup(2)
    local sent = {}
    local s = assert(send.send { redis = conn, out = dir, envelope_from = 'dmarc@receiver.example',
                                 transport = transport({ 'perm', 'temp' }, sent), retry_base = 1,
                                 clock = function() return DAY * 2 end })
    assert.equal(1, s.failed)
    assert.equal(1, s.deferred)
    -- one destination still pending: data stays
    assert.is_table(conn.data[ROWS])
  end)

  it('report_send__gives_up_after_max_attempts', function()
    local conn, dir = setup()
    local now = DAY * 2
    local sent = {}
    local opts = { redis = conn, out = dir, envelope_from = 'dmarc@receiver.example', retry_base = 1,
                   max_attempts = 3, transport = transport({ 'temp', 'temp', 'temp' }, sent),
                   clock = function() return now end }
    for _ = 1, 3 do
      assert(send.send(opts))
      now = now + 100
    end
    assert.equal(3, #sent)
    assert.is_nil(conn.data[ROWS])
  end)

  it('report_send__unverified_destination_is_skipped [RUA-3]', function()
    local conn, dir = setup()
    local sent = {}
    local s = assert(send.send { redis = conn, out = dir, envelope_from = 'dmarc@receiver.example',
                                 transport = transport({}, sent),
                                 verify = function() return 'unauthorized' end })
    assert.equal(1, s.skipped)
    assert.equal(0, #sent)
  end)

  it('report_send__size_limit_in_7489_mode [RUA-6]', function()
    local conn, dir = setup()
    local name
    for n in io.popen('ls ' .. dir):lines() do if n:match('%.json$') then name = n end end
    local man = cjson.decode(files.read(dir .. '/' .. name))
    man.reports[1].destinations[1].max_size = 100
    files.write(dir .. '/' .. name, cjson.encode(man))
    local sent = {}
    local s = assert(send.send { redis = conn, out = dir, envelope_from = 'dmarc@receiver.example',
                                 transport = transport({}, sent), size_limits = true })
    assert.equal(1, s.skipped)
    assert.equal(0, #sent)
  end)

  it('report_send__no_state_no_delivery', function()
    local conn, dir = setup()
    local exec = conn.exec
    conn.exec = function(self, cmd)
      if cmd[1] == 'HGETALL' then return { err = 'LOADING Redis is loading the dataset' } end
      return exec(self, cmd)
    end
    local sent = {}
    local ok, _, code = send.send { redis = conn, out = dir, envelope_from = 'a@b.example',
                                    transport = transport({}, sent) }
    assert.is_nil(ok)
    assert.equal('redis', code)
    assert.equal(0, #sent)
    assert.is_table(conn.data[ROWS])
    assert.is_nil(conn.data[send.lock_key('dmarc:')]) -- released
  end)

  it('report_send__second_sender_is_locked_out', function()
    local conn, dir = setup()
    assert(send.lock(conn, 'dmarc:', 60))
    local _, _, code = send.send { redis = conn, out = dir, envelope_from = 'a@b.example',
                                   transport = transport({}, {}) }
    assert.equal('locked', code)
  end)

  it('report_send__lock_is_released_after_a_run', function()
    local conn, dir = setup()
    assert(send.send { redis = conn, out = dir, envelope_from = 'a@b.example',
                       transport = transport({}, {}) })
    assert.is_nil(conn.data[send.lock_key('dmarc:')])
  end)
end)

-- Failure reports queued by `dmarc check --failure-reports` (dmarc.report.failure,
-- Reporter:queue): delivered under the same lock, destination check and
-- retry rules as aggregate reports.
describe('report_send queued failure reports', function()
  local failure = require 'dmarc.report.failure'
  local QUEUE = 'dmarc:ruf:{example.com}:queue'
  local NOW = DAY * 2

  local function queued(conn, ruf)
    local list = {}
    for i, u in ipairs(ruf) do list[i] = { uri = u } end
    local r = failure.new { enabled = true, reporter = REPORTER, redis = conn,
                            clock = function() return NOW end }
    local v = { result = 'fail', author_domain = 'example.com', policy_domain = 'example.com',
                org_domain = 'example.com', policy = 'reject', applied = 'reject',
                spf_aligned = false, dkim_aligned = false,
                record = { p = 'reject', fo = { '0' }, psd = 'u', ruf = list } }
    return r:queue(v, { spf = { result = 'fail', domain = 'example.com' } },
                   { ip = '192.0.2.1', mail_from = 'x@example.com' }, nil,
                   'From: x@example.com\r\nSubject: hi\r\n\r\n')
  end

  local function transport(results, sent)
    return function(from, rcpt, message)
      sent[#sent + 1] = { from = from, rcpt = rcpt, message = message }
      local r = results[rcpt] or 'accepted'
      return r, r == 'perm' and 550 or (r == 'temp' and 451 or 250), r
    end
  end

  local function run(conn, results, sent, over)
    local o = { redis = conn, out = tmpdir(), envelope_from = 'dmarc@receiver.example',
                transport = transport(results, sent), retry_base = 60,
                clock = function() return NOW end,
                verify = send.verifier {
                  resolve = resolver({
                    ['example.com._report._dmarc.ok.example'] = { 'noerror', { 'v=DMARC1' } },
                    ['example.com._report._dmarc.dns.example'] = { 'servfail' },
                  }),
                  clock = function() return NOW end,
                } }
    for k, v in pairs(over or {}) do o[k] = v end
    return assert(send.send(o))
  end

  it('report_send__queued_failure_reports_go_to_verified_destinations [RUA-5] [FAIL-1]', function()
    local conn = fake_redis.new()
    assert.equal(3, (queued(conn, { 'mailto:ruf@example.com', 'mailto:ruf@ok.example',
                                    'mailto:ruf@noconsent.example' })))
    local sent = {}
    local s = run(conn, {}, sent)
    assert.equal(2, s.failure_accepted)
    assert.equal(1, s.failure_skipped)
    assert.equal(2, #sent)
    assert.equal('ruf@example.com', sent[1].rcpt) -- oldest first
    assert.equal('ruf@ok.example', sent[2].rcpt)
    assert.equal('dmarc@receiver.example', sent[1].from)
    assert.truthy(sent[1].message:find('report-type=feedback-report', 1, true))
    assert.is_nil(conn.data[QUEUE]) -- every entry final: the queue is gone
    assert.is_nil(conn.data[send.lock_key('dmarc:')])
  end)

  it('report_send__queued_failure_report_retried_then_given_up [MAIL-5]', function()
    local conn = fake_redis.new()
    queued(conn, { 'mailto:tempfail@example.com', 'mailto:perm@example.com' })
    local sent = {}
    local s = run(conn, { ['tempfail@example.com'] = 'temp', ['perm@example.com'] = 'perm' }, sent)
    assert.equal(1, s.failure_deferred)
    assert.equal(1, s.failure_failed)
    assert.equal(1, #conn.data[QUEUE])
    local e = assert(failure.decode_entry(conn.data[QUEUE][1]))
    assert.equal(1, e.attempts)
    assert.equal(NOW + 60, e.next_at)
    -- not due yet: left alone
    s = run(conn, {}, sent)
    assert.equal(1, s.failure_pending)
    assert.equal(2, #sent)
    -- due, and the last attempt allowed: given up
    NOW = NOW + 120
    s = run(conn, { ['tempfail@example.com'] = 'temp' }, sent, { max_attempts = 2 })
    assert.equal(1, s.failure_failed)
    assert.is_nil(conn.data[QUEUE])
    NOW = DAY * 2
  end)

  it('report_send__dns_trouble_defers_a_queued_failure_report [RUA-3]', function()
    local conn = fake_redis.new()
    queued(conn, { 'mailto:ruf@dns.example' })
    local sent = {}
    local s = run(conn, {}, sent)
    assert.equal(1, s.failure_deferred)
    assert.equal(0, #sent)
    assert.equal(1, #conn.data[QUEUE])
  end)

  it('report_send__malformed_queue_entries_are_dropped', function()
    local conn = fake_redis.new()
    conn:exec({ 'LPUSH', QUEUE, 'garbage' })
    conn:exec({ 'LPUSH', QUEUE, failure.encode_entry { domain = 'other.example', to = 'a@example.com',
                                                       created = 1, attempts = 0, next_at = 0,
                                                       message = 'x' } })
    local sent = {}
    local s = run(conn, {}, sent)
    assert.equal(2, s.failure_failed)
    assert.equal(0, #sent)
    assert.is_nil(conn.data[QUEUE])
  end)

  it('report_send__failure_queue_can_be_left_alone', function()
    local conn = fake_redis.new()
    queued(conn, { 'mailto:ruf@example.com' })
    local sent = {}
    local s = run(conn, {}, sent, { failure_queue = false })
    assert.equal(0, s.failure_accepted)
    assert.equal(1, #conn.data[QUEUE])
  end)
end)
