-- `dmarc report ingest` against a real redis-server over the synthetic
-- fixtures of tests/fixtures/ingest: every quirk stored with its warning, every
-- case that cannot be stored named on stderr with a non-zero exit, an mbox
-- read message by message, and the summary counting all of it.
local h = dofile('tests/integration/report_helpers.lua')
local cjson = require 'cjson'

local REDIS = os.getenv('DMARC_TEST_REDIS') or '127.0.0.1:16379'
local FIX = h.ROOT .. '/tests/fixtures/ingest/'

local function dmarc(args)
  local errfile = os.tmpname()
  local status, out = h.run(h.BIN .. ' ' .. args .. ' --redis ' .. REDIS .. ' 2>' .. errfile)
  local f = io.open(errfile, 'rb')
  local err = f and f:read('*a') or ''
  if f then f:close() end
  os.remove(errfile)
  return status, out, err
end

local function prefix(name)
  return string.format('it:quirks:%s:%d:', name, os.time() % 100000)
end

describe('ingest: quirks and failures against Redis', function()
  it('ingest_quirks__every_fixture_stored_or_refused_with_a_reason', function()
    local p = prefix('all')
    local status, out, err = dmarc('report ingest --json --redis-prefix ' .. p .. ' ' .. FIX)
    assert.equal(1, status) -- some fixtures must fail
    local stats = cjson.decode(out)
    -- 9 single reports (quirks, no-evaluated, dkim without domain), 10 attachments, the
    -- good one beside the broken one, the one forwarded twice, 2 reports of the mbox
    assert.equal(9 + 10 + 1 + 1 + 2, stats.stored)
    local codes = {}
    for _, f in ipairs(stats.failures) do codes[f.code] = (codes[f.code] or 0) + 1 end
    -- broken attachment, mbox message without a report, corrupt.zip, not-zip.zip,
    -- make-fixtures (not a report)
    assert.equal(5, stats.errors)
    assert.equal(1, codes.truncated)
    assert.equal(1, codes.no_report)
    assert.equal(1, codes.zip)
    assert.equal(1, codes.corrupt)
    assert.equal(1, codes.format)
    for _, code in ipairs({ 'decimal_timestamp', 'empty_org_name', 'long_range',
                            'nested_compression', 'zlib', 'utf16' }) do
      assert.is_true((stats.warning_counts[code] or 0) >= 1, code)
      assert.truthy(err:find('stored with warning [%w_,]*' .. code), code)
    end
    assert.truthy(err:find('broken%-beside%-good%.eml attachment 2 %(broken%.xml%.gz%): truncated'))
    assert.truthy(err:find('dmarc%.mbox:3: no_report'))
    -- again: every report a duplicate, nothing counted twice
    local status2, out2 = dmarc('report ingest --json --quiet --redis-prefix ' .. p .. ' ' .. FIX)
    assert.equal(1, status2)
    local again = cjson.decode(out2)
    assert.equal(0, again.stored)
    assert.equal(stats.stored, again.duplicates)
    -- the summary counts every stored message and names the warnings
    local s_status, s_out = dmarc('report summary --json --redis-prefix ' .. p
                                  .. ' --domain example.org --until 2025-11-22 --days 7')
    assert.equal(0, s_status)
    local s = cjson.decode(s_out)
    assert.equal(stats.messages, s.messages)
    assert.equal(1, s.report_warnings.zlib)
  end)

  it('ingest_quirks__mbox_path', function()
    local p = prefix('mbox')
    local status, out = dmarc('report ingest --json --quiet --redis-prefix ' .. p .. ' ' .. FIX
                              .. 'dmarc.mbox')
    assert.equal(1, status)
    local stats = cjson.decode(out)
    assert.equal(2, stats.stored)
    assert.equal(24, stats.messages)
    assert.equal(FIX .. 'dmarc.mbox:3', stats.failures[1].path)
    -- the same mbox on standard input: read a message at a time too, all duplicates now
    status, out = dmarc('report ingest --json --quiet --redis-prefix ' .. p .. ' - < ' .. FIX
                        .. 'dmarc.mbox')
    assert.equal(1, status)
    stats = cjson.decode(out)
    assert.equal(2, stats.duplicates)
    assert.equal('-:3', stats.failures[1].path)
  end)

  it('ingest_quirks__missing_file_says_why', function()
    local status, _, err = dmarc('report ingest --redis-prefix ' .. prefix('missing') .. ' '
                                 .. FIX .. 'no-such.xml')
    assert.equal(1, status)
    assert.truthy(err:find('no%-such%.xml: io: cannot open: No such file or directory'))
  end)
end)

describe('ingest: failure reports against Redis', function()
  it('ingest_failure__stored_redacted_once_with_ttl_and_summarised', function()
    local failure = require 'dmarc.report.failure'
    local redis = require 'dmarc.redis'
    local now = 1763683200 + 7200
    local r = failure.new({ enabled = true, clock = function() return now end,
                            reporter = { org_name = 'R', email = 'dmarc@receiver.example',
                                         submitter = 'receiver.example' } })
    local list = r:prepare({ result = 'fail', author_domain = 'example.org',
                             policy_domain = 'example.org', org_domain = 'example.org',
                             policy = 'reject', applied = 'reject', spf_aligned = false,
                             dkim_aligned = false,
                             record = { p = 'reject', fo = { '1' }, fo_text = '1', psd = 'u',
                                        ruf = { { uri = 'mailto:ruf@example.org' } }, rua = {} } },
                           { spf = { result = 'fail', domain = 'example.org', record = 'v=spf1 -all' },
                             dkim = {} },
                           { ip = '192.0.2.99', mail_from = 'someone@example.org', arrival = now },
                           nil, 'From: Someone <someone@example.org>\r\nSubject: secret\r\n\r\n')
    assert.equal(1, #list)
    local dir = h.tmpdir()
    local f = assert(io.open(dir .. '/failure.eml', 'wb'))
    f:write(list[1].message)
    f:close()
    local p = prefix('failure')
    local status, out = dmarc('report ingest --json --quiet --redis-prefix ' .. p .. ' ' .. dir)
    assert.equal(0, status)
    local stats = cjson.decode(out)
    assert.equal(1, stats.failure_reports.stored)
    status, out = dmarc('report ingest --json --quiet --redis-prefix ' .. p .. ' ' .. dir)
    assert.equal(0, status)
    assert.equal(1, cjson.decode(out).failure_reports.duplicates)
    local host, port = REDIS:match('^(.+):(%d+)$')
    local conn = assert(redis.connect { host = host, port = tonumber(port), timeout = 5 })
    local key = p .. 'fail:{example.org}:20251121'
    local ttl = conn:command('TTL', key)
    assert.truthy(ttl > 29 * 86400 and ttl <= 30 * 86400)
    local all = conn:command('HGETALL', key)
    conn:close()
    assert.equal(2, #all)
    assert.is_nil(all[2]:find('someone', 1, true))
    assert.is_nil(all[2]:find('secret', 1, true))
    local s_status, s_out = dmarc('report summary --json --redis-prefix ' .. p
                                  .. ' --domain example.org --until 2025-11-22 --days 7')
    assert.equal(0, s_status)
    local s = cjson.decode(s_out)
    assert.equal(1, s.failure_reports.reports)
    assert.equal('192.0.2.99', s.failure_reports.sources[1].ip)
    -- the dashboard's index lists a domain that has only failure reports
    local dashboard = require 'dmarc.owner.dashboard'
    local src = dashboard.redis_source({ prefix = p, connect = function()
      return redis.connect { host = host, port = tonumber(port), timeout = 5 }
    end })
    local index = assert(src.domains())
    src.close()
    assert.equal(1, #index)
    assert.equal('example.org', index[1].domain)
    assert.equal('20251121', index[1].last_day)
  end)
end)
