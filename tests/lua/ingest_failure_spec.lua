-- Failure reports received (RFC 9991, AFRF: RFC 5965 / RFC 6591): the
-- reports `dmarc report send` builds (dmarc.failure) read back by the ingest,
-- from a message, an mbox and a report forwarded as message/rfc822; kept
-- redacted (no body, no local part, no Subject), deduplicated, with a TTL;
-- bounded; summed per source IP and day; other feedback types refused.
local ingest = require 'dmarc.owner.ingest'
local failure = require 'dmarc.report.failure'
local failures = require 'dmarc.owner.failures'
local summary = require 'dmarc.owner.summary'
local fake_redis = require 'ingest_fake_redis'

local REPORTER = { org_name = 'Example Receiver', email = 'dmarc@receiver.example',
                   submitter = 'receiver.example' }
local NOW = 1763683200 + 3600 -- 2025-11-21 01:00 UTC

local function verdict()
  return { result = 'fail', author_domain = 'example.com', policy_domain = 'example.com',
           org_domain = 'example.com', policy = 'reject', applied = 'reject',
           spf_aligned = false, dkim_aligned = false,
           record = { p = 'reject', fo = { '1' }, fo_text = '1', psd = 'u',
                      ruf = { { uri = 'mailto:ruf@example.com' } }, rua = {} } }
end

local HEADERS = 'From: Alice <alice.smith@example.com>\r\nTo: bob@rcpt.example\r\n'
  .. 'Subject: a private subject\r\nMessage-ID: <m1@example.com>\r\n\r\nBODY SECRET\r\n'

-- One failure report as dmarc.failure sends it, for a message from `ip`.
local function sent_report(ip, spf_record)
  local r = failure.new({ enabled = true, reporter = REPORTER, clock = function() return NOW end })
  local input = { spf = { result = 'fail', domain = 'example.com', scope = 'mfrom',
                          record = spf_record },
                  dkim = { { result = 'fail', domain = 'example.com', selector = 'sel1' } } }
  local list = r:prepare(verdict(), input, { ip = ip, mail_from = 'alice.smith@example.com',
                                             rcpt = { 'bob@rcpt.example' }, arrival = NOW },
                         { action = 'reject' }, HEADERS)
  assert.equal(1, #list)
  return list[1].message
end

local function ingest_text(conn, text, opts)
  local stats = ingest.new_stats()
  for _, r in ipairs(ingest.ingest_data(conn, text, opts or {})) do ingest.account(stats, 'x', r) end
  return stats
end

local function stored(conn)
  local key = failures.key('dmarc:', 'example.com', '20251121')
  return conn.data[key] or {}, key
end

describe('failure reports: the ones we send', function()
  it('carry the evaluated SPF record in SPF-DNS, never a made-up one', function()
    local m = sent_report('192.0.2.66', 'v=spf1 -all')
    assert.truthy(m:find('\r\nSPF-DNS: txt : example.com : v=spf1 -all\r\n', 1, true))
    m = sent_report('192.0.2.66')
    assert.truthy(m:find('\r\nSPF-DNS: txt : example.com\r\n', 1, true))
    assert.is_nil(m:find('v=spf1', 1, true))
  end)

  it('fold an SPF record too long for one line (RFC 5322 §2.1.1), and read it back whole', function()
    local terms = {}
    for i = 1, 150 do terms[i] = 'ip4:198.51.' .. (i % 256) .. '.0/24' end
    local record = 'v=spf1 ' .. table.concat(terms, ' ') .. ' -all'
    assert.is_true(#record > 2 * 998)
    local m = sent_report('192.0.2.66', record)
    for line in m:gmatch('[^\r\n]*') do assert.is_true(#line <= 998, #line) end
    local block = m:match('\r\n(Feedback%-Type:.-)\r\n\r\n')
    local first = require('dmarc.receive.message').header_map(block)
    assert.equal('txt : example.com : ' .. record, first['spf-dns'])
  end)

  it('round-trip through the ingest: stored redacted, once', function()
    local conn = fake_redis()
    local stats = ingest_text(conn, sent_report('192.0.2.66', 'v=spf1 -all'))
    assert.equal(0, stats.errors)
    assert.equal(1, stats.failure_reports.stored)
    assert.equal(0, stats.reports)
    local hash, key = stored(conn)
    local n, json = 0, nil
    for _, v in pairs(hash) do
      n = n + 1
      json = v
    end
    assert.equal(1, n)
    assert.equal(30 * 86400, conn.ttl[key])
    local rec = require('cjson').decode(json)
    assert.equal('192.0.2.66', rec.source_ip)
    assert.equal('example.com', rec.domain)
    assert.equal('example.com', rec.header_from)
    assert.equal('example.com', rec.mail_from)
    assert.equal('v=spf1 -all', rec.spf_dns)
    assert.equal('example.com', rec.dkim_domain)
    assert.equal('sel1', rec.dkim_selector)
    assert.equal('reject', rec.delivery_result)
    assert.equal('receiver.example', rec.reporter)
    assert.equal(NOW, rec.arrival)
    assert.same({ 'dmarc' }, rec.auth_failure)
    -- nothing private is kept
    for _, secret in ipairs({ 'alice', 'bob', 'private subject', 'BODY SECRET', 'm1@' }) do
      assert.is_nil(json:find(secret, 1, true), secret)
    end
    -- the same report again: a duplicate
    stats = ingest_text(conn, sent_report('192.0.2.66', 'v=spf1 -all'))
    assert.equal(1, stats.failure_reports.duplicates)
    assert.equal(0, stats.failure_reports.stored)
  end)

  it('are read from an mbox and when forwarded as message/rfc822', function()
    local conn = fake_redis()
    local a = sent_report('192.0.2.66'):gsub('\r\n', '\n')
    local b = sent_report('198.51.100.9'):gsub('\r\n', '\n')
    local mbox = 'From x Sat Nov 22 00:00:00 2025\n' .. a .. '\nFrom y Sat Nov 22 00:00:00 2025\n'
      .. b .. '\n'
    local dir = os.tmpname()
    local f = assert(io.open(dir, 'wb'))
    f:write(mbox)
    f:close()
    local stats = ingest.ingest_files(conn, { dir })
    os.remove(dir)
    assert.equal(0, stats.errors)
    assert.equal(2, stats.failure_reports.stored)
    local fwd = 'From: me@example.com\r\nSubject: Fwd\r\nMIME-Version: 1.0\r\n'
      .. 'Content-Type: multipart/mixed; boundary="f"\r\n\r\n--f\r\nContent-Type: text/plain\r\n\r\n'
      .. 'see below\r\n--f\r\nContent-Type: message/rfc822\r\n\r\n'
      .. sent_report('203.0.113.7') .. '\r\n--f--\r\n'
    stats = ingest_text(conn, fwd)
    assert.equal(0, stats.errors)
    assert.equal(1, stats.failure_reports.stored)
  end)

  it('refuse other feedback types and reports without a source, with a reason', function()
    local conn = fake_redis()
    local abuse = sent_report('192.0.2.66'):gsub('Feedback%-Type: auth%-failure', 'Feedback-Type: abuse')
    local stats = ingest_text(conn, abuse)
    assert.equal(1, stats.errors)
    assert.equal('not_failure_report', stats.failures[1].code)
    local noip = sent_report('192.0.2.66'):gsub('Source%-IP: [^\r]*\r\n', '')
    stats = ingest_text(conn, noip)
    assert.equal('invalid', stats.failures[1].code)
  end)

  it('past max_per_day are counted, not stored, and say so', function()
    local conn = fake_redis()
    local saved = failures.limits.max_per_day
    failures.limits.max_per_day = 1
    local ok, err = pcall(function()
      ingest_text(conn, sent_report('192.0.2.66'))
      local stats = ingest_text(conn, sent_report('192.0.2.67'))
      assert.equal(1, stats.failure_reports.stored)
      assert.equal(1, stats.warning_counts.failure_cap)
    end)
    failures.limits.max_per_day = saved
    assert.is_true(ok, err)
    local hash = stored(conn)
    assert.equal('1', hash['#over'])
  end)
end)

describe('failure reports: per source and day', function()
  it('sums what failed per source IP and day, linked from the summary', function()
    local conn = fake_redis()
    ingest_text(conn, sent_report('192.0.2.66'))
    ingest_text(conn, (sent_report('192.0.2.66'):gsub('Incidents: 1', 'Incidents: 4')
      :gsub('m1@example.com', 'm2@example.com')))
    ingest_text(conn, sent_report('198.51.100.9'))
    local data = assert(summary.load(conn, { domain = 'example.com', days = 7,
                                             ['until'] = 1763769600 }))
    local s = summary.compute(data, { source = '192.0.2.66' })
    local fr = s.failure_reports
    assert.equal(3, fr.reports)
    assert.equal(6, fr.incidents)
    assert.equal('192.0.2.66', fr.sources[1].ip)
    assert.equal(5, fr.sources[1].incidents)
    assert.equal('SPF fail, DKIM fail; identity alignment: dkim+spf', fr.sources[1].failed[1].value)
    assert.equal('20251121', fr.sources[1].days[1].day)
    assert.equal(2, #fr.rows)
    assert.truthy(summary.text(s):find('failure reports: 3 (6 messages)', 1, true))
  end)
end)

describe('failure reports: on the dashboard', function()
  it('are shown per source and linked from the aggregate sources table', function()
    local dashboard = require 'dmarc.owner.dashboard'
    local conn = fake_redis()
    ingest_text(conn, sent_report('192.0.2.66'))
    -- an aggregate report with the same source
    local rep = { format = 'rfc7489', org_name = 'R', email = '', report_id = 'agg-1',
                  begin = 1763683200, ['end'] = 1763683200 + 86399, domain = 'example.com',
                  errors = {}, policy = { p = 'none' }, bad_records = 0, warnings = {},
                  records = { { source_ip = '192.0.2.66', count = 3, disposition = 'reject',
                                header_from = 'example.com', envelope_from = '', dkim = 'fail',
                                spf = 'fail', reasons = {}, dkim_results = {},
                                spf_results = {} } } }
    assert.equal('stored', (ingest.store(conn, rep)))
    local function get(target)
      return dashboard.handle({ method = 'GET', target = target }, { source = {
        domains = function() return {}, false end,
        load = function(dom, days, until_time)
          return summary.load(conn, { domain = dom, days = days, ['until'] = until_time })
        end,
      } })
    end
    local res = get('/domain?d=example.com&until=2025-11-22&days=7')
    assert.equal(200, res.status)
    assert.truthy(res.body:find('id="failure-reports">1<', 1, true))
    assert.truthy(res.body:find('<table id="failure-sources">', 1, true))
    local sources = res.body:match('<table id="sources">(.-)</table>')
    assert.truthy(sources:find('ip=192.0.2.66&amp;days=7&amp;until=2025-11-22#failures">1 '
                               .. 'failure report</a>', 1, true))
    res = get('/source?d=example.com&ip=192.0.2.66&until=2025-11-22&days=7')
    assert.equal(200, res.status)
    local rows = res.body:match('<table id="failure%-rows">(.-)</table>')
    assert.truthy(rows:find('SPF fail, DKIM fail', 1, true))
    assert.truthy(rows:find('2025-11-21 01:00', 1, true))
    assert.is_nil(res.body:find('alice', 1, true))
  end)
end)
