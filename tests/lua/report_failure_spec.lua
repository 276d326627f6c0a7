-- dmarc.report.failure: RFC 9991 failure reports (AFRF, DMARC profile) [FAIL-1..7].
local failure = require 'dmarc.report.failure'
local fake_redis = dofile('tests/lua/report_fake_redis.lua')

local REPORTER = { org_name = 'Example Receiver', email = 'dmarc@receiver.example',
                   submitter = 'receiver.example' }

local function record(over)
  local r = { p = 'reject', fo = { '0' }, fo_text = '0', psd = 'u',
              ruf = { { uri = 'mailto:ruf@example.com' } }, rua = {} }
  for k, v in pairs(over or {}) do r[k] = v end
  return r
end

local function verdict(over)
  local v = { result = 'fail', author_domain = 'example.com', policy_domain = 'example.com',
              org_domain = 'example.com', policy = 'reject', applied = 'reject',
              spf_aligned = false, dkim_aligned = false, record = record() }
  for k, x in pairs(over or {}) do v[k] = x end
  return v
end

local INPUT = { spf = { result = 'fail', domain = 'example.com', scope = 'mfrom' },
                dkim = { { result = 'fail', domain = 'example.com', selector = 'sel1' } } }
local CTX = { ip = '192.0.2.66', mail_from = 'alice.smith@example.com', rcpt = { 'bob@rcpt.example' } }
local HEADERS = 'From: Alice <alice.smith@example.com>\r\nTo: bob@rcpt.example\r\n'
  .. 'Subject: hello\r\nReceived: from x\r\n\tby y\r\n\r\nBODY SECRET\r\n'

local function reporter(over)
  local o = { enabled = true, reporter = REPORTER, clock = function() return 1763683200 end }
  for k, v in pairs(over or {}) do o[k] = v end
  return failure.new(o)
end

describe('failure reports', function()
  it('failure__off_by_default [FAIL-1]', function()
    local list, why = failure.new():prepare(verdict(), INPUT, CTX, nil, HEADERS)
    assert.same({}, list)
    assert.equal('disabled', why)
  end)

  it('failure__fo_0_needs_every_mechanism_to_fail [FAIL-2]', function()
    assert.is_true((failure.should_report(record(), verdict(), INPUT)))
    local ok, why = failure.should_report(record(), verdict({ spf_aligned = true }), INPUT)
    assert.is_false(ok)
    assert.equal('fo', why)
  end)

  it('failure__fo_1_any_mechanism [FAIL-2]', function()
    local ok, ia = failure.should_report(record({ fo = { '1' } }), verdict({ spf_aligned = true }), INPUT)
    assert.is_true(ok)
    assert.same({ 'dkim' }, ia)
  end)

  it('failure__fo_d_and_s [FAIL-2]', function()
    local passing = verdict({ result = 'pass', spf_aligned = true, dkim_aligned = true })
    assert.is_true((failure.should_report(record({ fo = { 'd' } }), passing, INPUT)))
    assert.is_true((failure.should_report(record({ fo = { 's' } }), passing, INPUT)))
    assert.is_false((failure.should_report(record({ fo = { 'd' } }), passing,
                                           { dkim = { { result = 'pass', domain = 'example.com' } } })))
  end)

  it('failure__no_ruf_or_psd_record_no_report [FAIL-2] [RUA-7]', function()
    assert.equal('no_ruf', select(2, failure.should_report(record({ ruf = {} }), verdict(), INPUT)))
    assert.equal('psd', select(2, failure.should_report(record({ psd = 'y' }), verdict(), INPUT)))
  end)

  it('failure__never_about_reports (loop guard)', function()
    local r = reporter()
    local _, why = r:prepare(verdict(), INPUT, CTX, nil,
                             'Content-Type: multipart/report; report-type=feedback-report\r\n\r\n')
    assert.equal('loop', why)
    _, why = r:prepare(verdict(), INPUT, CTX, nil, 'Auto-Submitted: auto-generated\r\n\r\n')
    assert.equal('loop', why)
    _, why = r:prepare(verdict(), INPUT, CTX, nil, 'Subject: Report Domain: x Submitter: y\r\n\r\n')
    assert.equal('loop', why)
    _, why = r:prepare(verdict(), INPUT, { ip = '192.0.2.1', mail_from = '<dmarc@receiver.example>' },
                       nil, HEADERS)
    assert.equal('loop', why)
  end)

  it('failure__rate_limited_per_domain [FAIL-7]', function()
    local now = 1763683200
    local r = reporter({ rate_limit = 3, clock = function() return now end })
    for _ = 1, 3 do assert.equal(1, #r:prepare(verdict(), INPUT, CTX, nil, HEADERS)) end
    local list, why = r:prepare(verdict(), INPUT, CTX, nil, HEADERS)
    assert.equal(0, #list)
    assert.equal('rate_limited', why)
    -- another domain has its own budget
    assert.equal(1, #r:prepare(verdict({ policy_domain = 'other.example' }), INPUT, CTX, nil, HEADERS))
    now = now + 3600
    assert.equal(1, #r:prepare(verdict(), INPUT, CTX, nil, HEADERS))
  end)

  it('failure__rate_limit_in_redis_is_shared [FAIL-7]', function()
    local conn = fake_redis.new()
    local a = reporter({ rate_limit = 2, redis = conn })
    local b = reporter({ rate_limit = 2, redis = conn })
    assert.equal(1, #a:prepare(verdict(), INPUT, CTX, nil, HEADERS))
    assert.equal(1, #b:prepare(verdict(), INPUT, CTX, nil, HEADERS))
    assert.equal('rate_limited', select(2, a:prepare(verdict(), INPUT, CTX, nil, HEADERS)))
    conn.down = true
    -- the limit is a MUST: with Redis down, no reports
    assert.equal('rate_limited', select(2, reporter({ redis = conn }):prepare(verdict(), INPUT, CTX, nil,
                                                                             HEADERS)))
  end)

  it('failure__only_verified_destinations [RUA-5]', function()
    local r = reporter({ verify = function() return 'unauthorized' end })
    local list, why = r:prepare(verdict(), INPUT, CTX, nil, HEADERS)
    assert.equal(0, #list)
    assert.equal('unverified', why)
  end)

  it('failure__afrf_message_with_dmarc_profile [FAIL-3..6]', function()
    local list = reporter():prepare(verdict(), INPUT, CTX, { action = 'reject' }, HEADERS)
    assert.equal(1, #list)
    assert.equal('ruf@example.com', list[1].to)
    local m = list[1].message
    assert.truthy(m:find('Content-Type: multipart/report; report-type=feedback-report;', 1, true))
    local function count(s)
      return select(2, m:gsub('\r\n' .. s:gsub('%p', '%%%0'), ''))
    end
    assert.equal(1, count('Feedback-Type: auth-failure\r\n'))
    assert.equal(1, count('Version: 1\r\n'))
    assert.equal(1, count('User-Agent: '))
    assert.equal(1, count('Auth-Failure: dmarc\r\n'))
    assert.equal(1, count('Identity-Alignment: dkim, spf\r\n'))
    assert.equal(1, count('Delivery-Result: reject\r\n'))
    assert.equal(1, count('DKIM-Domain: example.com\r\n'))
    assert.equal(1, count('DKIM-Selector: sel1\r\n'))
    assert.equal(1, count('SPF-DNS: txt : example.com'))
    assert.equal(1, count('Source-IP: 192.0.2.66\r\n'))
    assert.truthy(m:find('Content-Type: text/rfc822-headers', 1, true))
    -- redacted local parts, headers only
    assert.is_nil(m:find('alice.smith', 1, true))
    assert.is_nil(m:find('BODY SECRET', 1, true))
    assert.truthy(m:find('From: Alice <redacted@example.com>', 1, true))
    assert.truthy(m:find('Received: from x\r\n\tby y', 1, true))
  end)

  it('failure__keyed_redaction_is_stable', function()
    local a = failure.redact_address('x <alice@example.com>', 'k1')
    assert.equal(a, failure.redact_address('x <alice@example.com>', 'k1'))
    assert.are_not.equal(a, failure.redact_address('x <alice@example.com>', 'k2'))
    assert.is_nil(a:find('alice', 1, true))
  end)

  it('failure__header_injection_is_neutralised', function()
    local ctx = { ip = '192.0.2.1\r\nBcc: evil@example.net', mail_from = 'a@example.com' }
    local list = reporter():prepare(verdict(), INPUT, ctx, nil, HEADERS)
    assert.is_nil(list[1].message:find('\r\nBcc:', 1, true))
  end)

  it('failure__enabling_without_identity_raises', function()
    assert.has_error(function() failure.new { enabled = true } end)
  end)
end)

-- The queue a scanner without its own mail transport fills (`dmarc check
-- --failure-reports`), read by `dmarc report send`.
describe('failure report queue', function()
  local QUEUE = 'dmarc:ruf:{example.com}:queue'

  local function two_ruf()
    return verdict({ record = record({ ruf = { { uri = 'mailto:ruf@example.com' },
                                               { uri = 'mailto:ruf@reports.example.net' } } }) })
  end

  it('failure__queue_is_one_round_trip_per_message [FAIL-1]', function()
    local conn = fake_redis.new()
    local r = reporter({ redis = conn })
    assert.equal(2, (r:queue(two_ruf(), INPUT, CTX, { action = 'folder' }, HEADERS)))
    assert.equal(1, conn.calls)
    local list = conn.data[QUEUE]
    assert.equal(2, #list)
    local e = assert(failure.decode_entry(list[2])) -- the older one sits at the tail
    assert.equal('example.com', e.domain)
    assert.equal('ruf@example.com', e.to)
    assert.equal(0, e.attempts)
    assert.equal(1763683200, e.created)
    assert.truthy(e.message:find('Feedback-Type: auth-failure\r\n', 1, true))
    assert.truthy(e.message:find('Delivery-Result: spam\r\n', 1, true))
    assert.is_nil(e.message:find('alice.smith', 1, true)) -- redacted [FAIL-7]
    assert.equal(failure.defaults.queue_ttl, conn.ttl[QUEUE])
  end)

  it('failure__queue_asks_nothing_of_redis_when_no_report_is_due [FAIL-2]', function()
    local conn = fake_redis.new()
    local r = reporter({ redis = conn })
    local n, why = r:queue(verdict({ spf_aligned = true }), INPUT, CTX, nil, HEADERS)
    assert.equal(0, n)
    assert.equal('fo', why)
    n, why = r:queue(verdict({ record = record({ ruf = {} }) }), INPUT, CTX, nil, HEADERS)
    assert.equal(0, n)
    assert.equal('no_ruf', why)
    n, why = r:queue(verdict(), INPUT, CTX, nil, 'Auto-Submitted: auto-replied\r\n\r\n')
    assert.equal(0, n)
    assert.equal('loop', why)
    assert.equal(0, conn.calls)
    assert.equal('disabled', select(2, failure.new():queue(verdict(), INPUT, CTX, nil, HEADERS)))
  end)

  it('failure__queue_rate_limit_is_shared_through_redis [FAIL-7]', function()
    local conn = fake_redis.new()
    local a = reporter({ redis = conn, rate_limit = 2 })
    local b = reporter({ redis = conn, rate_limit = 2 })
    assert.equal(1, (a:queue(verdict(), INPUT, CTX, nil, HEADERS)))
    assert.equal(1, (b:queue(verdict(), INPUT, CTX, nil, HEADERS)))
    local n, why = a:queue(verdict(), INPUT, CTX, nil, HEADERS)
    assert.equal(0, n)
    assert.equal('rate_limited', why)
    assert.equal(2, #conn.data[QUEUE])
    -- prepare() counts against the same budget
    assert.equal('rate_limited', select(2, b:prepare(verdict(), INPUT, CTX, nil, HEADERS)))
  end)

  it('failure__queue_is_bounded', function()
    local conn = fake_redis.new()
    local r = reporter({ redis = conn, queue_max = 1 })
    assert.equal(1, (r:queue(two_ruf(), INPUT, CTX, nil, HEADERS)))
    local n, why = r:queue(verdict(), INPUT, CTX, nil, HEADERS)
    assert.equal(0, n)
    assert.equal('queue_full', why)
    assert.equal(1, #conn.data[QUEUE])
  end)

  it('failure__queue_with_redis_down_queues_nothing', function()
    local conn = fake_redis.new()
    conn.down = true
    local n, why, err = reporter({ redis = conn }):queue(verdict(), INPUT, CTX, nil, HEADERS)
    assert.equal(0, n)
    assert.equal('redis', why)
    assert.is_string(err)
  end)

  it('failure__queue_entries_round_trip_and_refuse_garbage', function()
    local e = { domain = 'example.com', to = 'ruf@example.com', created = 5, attempts = 2,
                next_at = 99, message = 'From: x\r\n\r\nbody\n' }
    assert.same(e, failure.decode_entry(failure.encode_entry(e)))
    for _, bad in ipairs({ 'ruf1 example.com ruf@example.com 1 0 0', -- no message
                           'ruf2 example.com ruf@example.com 1 0 0\nm',
                           'ruf1 a}b ruf@example.com 1 0 0\nm',
                           'ruf1 example.com <x@example.com> 1 0 0\nm',
                           'ruf1 example.com ruf@example.com x 0 0\nm' }) do
      assert.is_nil(failure.decode_entry(bad), bad)
    end
    assert.equal('example.com', failure.domain_of_queue_key('dmarc:', QUEUE))
    assert.is_nil(failure.domain_of_queue_key('dmarc:', 'dmarc:ruf:{example.com}:498709'))
  end)
end)
