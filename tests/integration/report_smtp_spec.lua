-- `dmarc report send` against a real SMTP server on loopback (aiosmtpd, see
-- report_smtpd.py): delivery, a temporary failure followed by success (data
-- kept, then deleted), a permanent failure, external-destination consent
-- [RUA-3], STARTTLS (the relay's certificate verified with AUTH or --starttls require,
-- opportunistic without), and the sender lock.
local h = dofile('tests/integration/report_helpers.lua')
local redis = require 'dmarc.redis'
local report = require 'dmarc.report.rows'
local files = require 'dmarc.util.files'
local send = require 'dmarc.report.send'

local REDIS_PORT = 16392
local SMTP_PORT = 16525
local TLS_PORT = 16526
local AUTH_PORT = 16527
local WRONG_PORT = 16528 -- a certificate for another name
local DAY = 1763683200
local ROWS = 'dmarc:rpt:{example.com}:20251121'

describe('report delivery over SMTP', function()
  local dir, redis_pid, smtp_pid, tls_pid, auth_pid, wrong_pid, conn

  local function maildir(name) return dir .. '/mail-' .. name end

  setup(function()
    dir = h.tmpdir()
    redis_pid = h.start_redis(REDIS_PORT, dir .. '/redis')
    smtp_pid = h.start_smtpd(SMTP_PORT, maildir('plain'))
    -- Self-signed: trusted only through --tls-ca. The relay is reached as 127.0.0.1.
    local function make_cert(name, san)
      local status = h.run('openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=' .. san
                           .. ' -addext subjectAltName=' .. san:gsub('^', 'DNS:')
                           .. (san == 'localhost' and ',IP:127.0.0.1' or '')
                           .. ' -keyout ' .. dir .. '/' .. name .. '-key.pem -out ' .. dir .. '/'
                           .. name .. '.pem 2>/dev/null')
      assert(status == 0, 'openssl could not make a test certificate')
    end
    make_cert('cert', 'localhost')
    make_cert('wrong', 'relay.other.example')
    os.rename(dir .. '/cert-key.pem', dir .. '/key.pem')
    tls_pid = h.start_smtpd(TLS_PORT, maildir('tls'), dir .. '/cert.pem', dir .. '/key.pem')
    wrong_pid = h.start_smtpd(WRONG_PORT, maildir('wrong'), dir .. '/wrong.pem',
                              dir .. '/wrong-key.pem')
    auth_pid = h.start_smtpd(AUTH_PORT, maildir('auth'), dir .. '/cert.pem', dir .. '/key.pem',
                             'reporter:s3cret')
    conn = assert(redis.connect { host = '127.0.0.1', port = REDIS_PORT })
  end)

  teardown(function()
    if conn then conn:close() end
    h.stop(smtp_pid)
    h.stop(tls_pid)
    h.stop(auth_pid)
    h.stop(wrong_pid)
    h.stop(redis_pid)
    os.execute('rm -rf ' .. dir)
  end)

  -- Rows for example.com with the given rua list, then `generate`.
  local function prepare(name, rua)
    conn:command('FLUSHALL')
    local list = {}
    for i, u in ipairs(rua) do list[i] = { uri = u } end
    for i = 1, 6 do
      local v = { result = 'fail', author_domain = 'example.com', policy_domain = 'example.com',
                  policy = 'reject', applied = 'reject', record = { p = 'reject', rua = list } }
      assert.equal(1, report.write(conn, report.build_rows(v, {}, { ip = '192.0.2.' .. (i % 2) }, nil,
                                                           { time = DAY + i })).written)
    end
    local out = dir .. '/out-' .. name
    local dns = dir .. '/dns-' .. name .. '.json'
    assert(files.write(dns, [[{
      "example.com._report._dmarc.reports.example.net": ["v=DMARC1"],
      "example.com._report._dmarc.noconsent.example": ["v=spf1 -all"],
      "example.com._report._dmarc.broken.example": "SERVFAIL"
    }]]))
    local status, text = h.run(h.BIN .. ' report generate --quiet --redis 127.0.0.1:' .. REDIS_PORT
                               .. ' --date 2025-11-21 --org-name "Example Receiver"'
                               .. ' --email dmarc@receiver.example --submitter receiver.example'
                               .. ' --out ' .. out .. ' 2>&1')
    assert.equal(0, status, text)
    return out, dns
  end

  local function send_cmd(out, dns, port, extra, env)
    return h.run((env or '') .. ' ' .. h.BIN .. ' report send --quiet --redis 127.0.0.1:' .. REDIS_PORT
                 .. ' --email dmarc@receiver.example --submitter receiver.example'
                 .. ' --smtp 127.0.0.1:' .. (port or SMTP_PORT) .. ' --dns-json ' .. dns
                 .. ' --out ' .. out .. ' ' .. (extra or '') .. ' 2>&1')
  end

  local function received(name)
    local out = {}
    for _, f in ipairs(h.ls(maildir(name), '%.env$')) do
      local env = files.read(maildir(name) .. '/' .. f)
      local mail_from, rcpt, tls = env:match('^(.-)\n(.-)\nTLS (%a+)')
      out[#out + 1] = { mail_from = mail_from, rcpt = rcpt, tls = tls,
                        message = files.read(maildir(name) .. '/' .. f:gsub('%.env$', '.eml')) }
    end
    return out
  end

  local function find(list, rcpt)
    for _, m in ipairs(list) do if m.rcpt == rcpt then return m end end
  end

  it('report_send__delivers_a_valid_report [MAIL-1..3]', function()
    local out, dns = prepare('ok', { 'mailto:dmarc-ok@example.com' })
    local status, text = send_cmd(out, dns)
    assert.equal(0, status, text)
    local m = find(received('plain'), 'dmarc-ok@example.com')
    assert.is_table(m)
    assert.equal('dmarc@receiver.example', m.mail_from)
    assert.truthy(m.message:find('Subject: Report Domain: example.com Submitter: receiver.example', 1, true))
    -- The attachment decodes and validates.
    local b64 = m.message:match('Content%-Transfer%-Encoding: base64\r?\n\r?\n(.-)\r?\n%-%-')
    assert.is_string(b64)
    local gz = dir .. '/got.xml.gz'
    assert(files.write(dir .. '/got.b64', (b64:gsub('\r', ''))))
    assert.equal(0, (h.run('base64 -d ' .. dir .. '/got.b64 > ' .. gz)))
    assert(files.write(dir .. '/got.xml', h.gunzip(gz)))
    assert.is_true(h.xmllint(h.SCHEMAS .. '/dmarc-2.0.xsd', dir .. '/got.xml'))
    assert.is_nil(conn:command('EXISTS', ROWS) == 1 or nil)
  end)

  it('report_send__temporary_failure_then_success_keeps_data_until_delivered [MAIL-5]', function()
    local out, dns = prepare('temp', { 'mailto:tempfail-once@example.com' })
    local status, text = send_cmd(out, dns, nil, '--retry-base 0')
    assert.equal(0, status, text)
    assert.is_nil(find(received('plain'), 'tempfail-once@example.com'))
    assert.equal(1, conn:command('EXISTS', ROWS)) -- kept
    status, text = send_cmd(out, dns, nil, '--retry-base 0')
    assert.equal(0, status, text)
    assert.is_table(find(received('plain'), 'tempfail-once@example.com'))
    assert.equal(0, conn:command('EXISTS', ROWS)) -- deleted once delivered
  end)

  it('report_send__permanent_failure_gives_up_and_deletes', function()
    local out, dns = prepare('perm', { 'mailto:perm@example.com' })
    local status, text = send_cmd(out, dns)
    assert.equal(0, status, text)
    assert.equal(0, conn:command('EXISTS', ROWS))
    local state = conn:command('HGETALL', report.state_key('dmarc:', 'example.com', DAY, DAY + 86399))
    local flat = table.concat(state, ' ')
    assert.truthy(flat:find('failed:550', 1, true), flat)
  end)

  it('report_send__external_destinations_need_consent [RUA-3] [RUA-5]', function()
    local out, dns = prepare('ext', { 'mailto:agg@reports.example.net', 'mailto:agg@noconsent.example',
                                      'mailto:agg@broken.example' })
    local status, text = send_cmd(out, dns, nil, '--retry-base 3600')
    assert.equal(0, status, text)
    local got = received('plain')
    assert.is_table(find(got, 'agg@reports.example.net'))
    assert.is_nil(find(got, 'agg@noconsent.example'))
    assert.is_nil(find(got, 'agg@broken.example'))
    -- the DNS temporary error keeps the report (and its data) for a retry
    assert.equal(1, conn:command('EXISTS', ROWS))
  end)

  it('report_send__consent_through_a_zone_file_resolver [RUA-3]', function()
    local out = prepare('zone', { 'mailto:zone@reports.example.net', 'mailto:zone@noconsent.example' })
    local zone = dir .. '/consent.zone'
    assert(files.write(zone, '$ORIGIN example.net.\n$TTL 300\n'
                          .. 'example.com._report._dmarc.reports IN TXT "v=DMARC1"\n'))
    local status, text = h.run(h.BIN .. ' report send --quiet --redis 127.0.0.1:' .. REDIS_PORT
                               .. ' --email dmarc@receiver.example --submitter receiver.example'
                               .. ' --smtp 127.0.0.1:' .. SMTP_PORT .. ' --zone ' .. zone
                               .. ' --out ' .. out .. ' 2>&1')
    assert.equal(0, status, text)
    local got = received('plain')
    assert.is_table(find(got, 'zone@reports.example.net'))
    assert.is_nil(find(got, 'zone@noconsent.example'))
  end)

  it('report_send__starttls_when_offered [MAIL-4]', function()
    local out, dns = prepare('tls', { 'mailto:dmarc-tls@example.com' })
    local status, text = send_cmd(out, dns, TLS_PORT, '--starttls require --tls-ca '
                                  .. dir .. '/cert.pem')
    assert.equal(0, status, text)
    local m = find(received('tls'), 'dmarc-tls@example.com')
    assert.is_table(m)
    assert.equal('yes', m.tls)
  end)

  it('report_send__smtp_auth_over_starttls', function()
    local out, dns = prepare('auth', { 'mailto:dmarc-auth@example.com' })
    -- a wrong password is a temporary failure: the data stays
    local ca = ' --tls-ca ' .. dir .. '/cert.pem'
    local status, text = send_cmd(out, dns, AUTH_PORT, '--smtp-user reporter --retry-base 0' .. ca,
                                  'DMARC_SMTP_PASSWORD=wrong')
    assert.equal(0, status, text)
    assert.is_nil(find(received('auth'), 'dmarc-auth@example.com'))
    assert.equal(1, conn:command('EXISTS', ROWS))
    status, text = send_cmd(out, dns, AUTH_PORT, '--smtp-user reporter --retry-base 0' .. ca,
                            'DMARC_SMTP_PASSWORD=s3cret')
    assert.equal(0, status, text)
    local m = find(received('auth'), 'dmarc-auth@example.com')
    assert.is_table(m)
    assert.equal('yes', m.tls)
    assert.equal(0, conn:command('EXISTS', ROWS))
  end)

  it('report_send__starttls_require_refuses_an_untrusted_certificate', function()
    local out, dns = prepare('untrusted', { 'mailto:dmarc-untrusted@example.com' })
    -- One attempt allowed: a refused relay certificate must not use it up.
    local status, text = send_cmd(out, dns, TLS_PORT, '--starttls require --retry-base 0'
                                  .. ' --max-attempts 1')
    assert.equal(1, status, text)
    assert.truthy(text:find('certificate of 127.0.0.1 is not trusted', 1, true), text)
    assert.truthy(text:find('the reports stay queued', 1, true), text)
    assert.is_nil(find(received('tls'), 'dmarc-untrusted@example.com'))
    assert.equal(1, conn:command('EXISTS', ROWS))
    -- The same relay with its certificate as the trust anchor: delivered, then deleted.
    status, text = send_cmd(out, dns, TLS_PORT, '--starttls require --max-attempts 1 --tls-ca '
                            .. dir .. '/cert.pem')
    assert.equal(0, status, text)
    assert.equal('yes', find(received('tls'), 'dmarc-untrusted@example.com').tls)
    assert.equal(0, conn:command('EXISTS', ROWS))
  end)

  it('report_send__auth_is_never_sent_to_an_untrusted_relay', function()
    local out, dns = prepare('authuntrusted', { 'mailto:dmarc-authuntrusted@example.com' })
    local status, text = send_cmd(out, dns, AUTH_PORT, '--smtp-user reporter --retry-base 0',
                                  'DMARC_SMTP_PASSWORD=s3cret')
    assert.equal(1, status, text)
    assert.truthy(text:find('not trusted', 1, true), text)
    assert.is_nil(find(received('auth'), 'dmarc-authuntrusted@example.com'))
    assert.equal(1, conn:command('EXISTS', ROWS))
  end)

  it('report_send__a_certificate_for_another_name_is_refused', function()
    local out, dns = prepare('wrongname', { 'mailto:dmarc-wrongname@example.com' })
    local status, text = send_cmd(out, dns, WRONG_PORT, '--starttls require --retry-base 0'
                                  .. ' --tls-ca ' .. dir .. '/wrong.pem')
    assert.equal(1, status, text)
    assert.truthy(text:find('is for another name (relay.other.example)', 1, true), text)
    assert.is_nil(find(received('wrong'), 'dmarc-wrongname@example.com'))
    assert.equal(1, conn:command('EXISTS', ROWS))
    -- The documented opt-out: delivered over TLS without verification.
    status, text = send_cmd(out, dns, WRONG_PORT, '--starttls require --tls-no-verify')
    assert.equal(0, status, text)
    assert.equal('yes', find(received('wrong'), 'dmarc-wrongname@example.com').tls)
  end)

  it('report_send__opportunistic_tls_without_auth_takes_any_certificate', function()
    local out, dns = prepare('try', { 'mailto:dmarc-try@example.com' })
    local status, text = send_cmd(out, dns, WRONG_PORT, '--starttls try')
    assert.equal(0, status, text)
    assert.equal('yes', find(received('wrong'), 'dmarc-try@example.com').tls)
    assert.equal(0, conn:command('EXISTS', ROWS))
  end)

  it('report_send__starttls_required_but_missing_defers', function()
    local out, dns = prepare('notls', { 'mailto:dmarc-notls@example.com' })
    local status = send_cmd(out, dns, SMTP_PORT, '--starttls require')
    assert.equal(0, status)
    assert.is_nil(find(received('plain'), 'dmarc-notls@example.com'))
    assert.equal(1, conn:command('EXISTS', ROWS))
  end)

  it('report_send__one_sender_at_a_time', function()
    local out, dns = prepare('lock', { 'mailto:dmarc-lock@example.com' })
    local t = assert(send.lock(conn, 'dmarc:', 60))
    local status = send_cmd(out, dns)
    assert.equal(75, status)
    assert.is_nil(find(received('plain'), 'dmarc-lock@example.com'))
    send.unlock(conn, 'dmarc:', t)
    status = send_cmd(out, dns)
    assert.equal(0, status)
    assert.is_table(find(received('plain'), 'dmarc-lock@example.com'))
  end)
end)
