-- `dmarc report ingest` and `dmarc report summary` against a real
-- redis-server (tests/integration/run starts it: $DMARC_TEST_REDIS): every
-- fixture format, per-file failures in one batch, re-ingesting changes
-- nothing, two processes ingesting the same reports at once count them
-- once, a report too large for one command is stored whole through its
-- staging hash, TTLs, foreign domains, and the summary's numbers.
local h = dofile('tests/integration/report_helpers.lua')
local redis = require 'dmarc.redis'
local cjson = require 'cjson'
local ingest = require 'dmarc.owner.ingest'

local REDIS = os.getenv('DMARC_TEST_REDIS') or '127.0.0.1:16379'
local HOST, PORT = REDIS:match('^(.+):(%d+)$')
local FIX = h.ROOT .. '/tests/fixtures/reports/'

local prefix_n = 0
local function fresh_prefix()
  prefix_n = prefix_n + 1
  return string.format('it:ingest%d:%d:', prefix_n, os.time() % 100000)
end

local function connect()
  return assert(redis.connect { host = HOST, port = tonumber(PORT), timeout = 5 })
end

local function dmarc(args)
  local errfile = os.tmpname()
  local status, out = h.run(h.BIN .. ' ' .. args .. ' --redis ' .. REDIS .. ' 2>' .. errfile)
  local f = io.open(errfile, 'rb')
  local err = f and f:read('*a') or ''
  if f then f:close() end
  os.remove(errfile)
  return status, out, err
end

local function summary_json(prefix, extra)
  local status, out = dmarc('report summary --json --redis-prefix ' .. prefix
                            .. ' --domain example.com --until 2025-11-22 --days 7 ' .. (extra or ''))
  assert.equal(0, status)
  return cjson.decode(out)
end

local function total_messages(conn, prefix, day)
  local k = ingest.keys(prefix, 'example.com', day)
  local all = conn:command('HGETALL', k.rows) or {}
  local sum = 0
  for i = 2, #all, 2 do sum = sum + tonumber(all[i]) end
  return sum, #all / 2
end

describe('ingest into Redis', function()
  it('ingest__every_format_and_per_file_failures [MAIL-1] [MAIL-6]', function()
    local prefix = fresh_prefix()
    local status, out, err = dmarc('report ingest --json --redis-prefix ' .. prefix .. ' ' .. FIX)
    assert.equal(1, status) -- the broken fixtures fail, the rest are stored
    local stats = cjson.decode(out)
    assert.equal(17, stats.errors)
    -- rfc9990 (xml, gz, 3 e-mails: 1 new + duplicates), rfc7489 (xml, zip x2, qp e-mail),
    -- rfc7489-ns, hostile, foreign
    assert.equal(5, stats.stored)
    assert.equal(6, stats.duplicates)
    -- hostile.xml's unreadable records: counted, and named on stderr (the run exits 1).
    assert.truthy(stats.records_dropped > 0)
    assert.truthy(err:find('records could not be read', 1, true))
    assert.equal(180 + 55 + 7 + 3 + 180, stats.messages)
    local codes = {}
    for _, f in ipairs(stats.failures) do codes[f.code] = (codes[f.code] or 0) + 1 end
    assert.equal(3, codes.dtd)
    assert.equal(2, codes.bomb)
    assert.truthy(err:find('billion%-laughs%.xml: dtd'))
    local conn = connect()
    assert.equal(180 + 7 + 3, (total_messages(conn, prefix, '20251121')))
    assert.equal(55, (total_messages(conn, prefix, '20251122')))
    -- TTL (default retention) on both keys
    local k = ingest.keys(prefix, 'example.com', '20251121')
    local ttl = conn:command('TTL', k.rows)
    assert.truthy(ttl > 179 * 86400 and ttl <= 180 * 86400)
    assert.truthy(conn:command('TTL', k.reports) > 179 * 86400)
    conn:close()
  end)

  it('ingest__again_changes_nothing', function()
    local prefix = fresh_prefix()
    local files = FIX .. 'rfc9990.xml ' .. FIX .. 'rfc7489.zip'
    assert.equal(0, (dmarc('report ingest --quiet --redis-prefix ' .. prefix .. ' ' .. files)))
    local conn = connect()
    local before, rows = total_messages(conn, prefix, '20251121')
    local status, out = dmarc('report ingest --quiet --json --redis-prefix ' .. prefix .. ' ' .. files)
    assert.equal(0, status)
    local stats = cjson.decode(out)
    assert.equal(2, stats.duplicates)
    assert.equal(0, stats.stored)
    local after, rows2 = total_messages(conn, prefix, '20251121')
    assert.equal(before, after)
    assert.equal(rows, rows2)
    conn:close()
  end)

  it('ingest__two_processes_at_once_count_each_report_once', function()
    local prefix = fresh_prefix()
    local dir = h.tmpdir()
    -- 40 distinct reports (report_id differs), each 180 messages.
    local src = io.open(FIX .. 'rfc9990.xml'):read('*a')
    for i = 1, 40 do
      local f = io.open(dir .. '/r' .. i .. '.xml', 'wb')
      f:write((src:gsub('a%-20251121%-0001', 'par-' .. i)))
      f:close()
    end
    local cmd = h.BIN .. ' report ingest --quiet --redis ' .. REDIS .. ' --redis-prefix ' .. prefix
      .. ' ' .. dir
    local status = h.run('(' .. cmd .. ' & ' .. cmd .. ' & wait)')
    assert.equal(0, status)
    local conn = connect()
    assert.equal(40 * 180, (total_messages(conn, prefix, '20251121')))
    local k = ingest.keys(prefix, 'example.com', '20251121')
    assert.equal(40, conn:command('HLEN', k.reports))
    conn:close()
  end)

  it('ingest__large_report_is_stored_whole_through_staging', function()
    local prefix = fresh_prefix()
    local dir = h.tmpdir()
    local rec = [[<record><row><source_ip>10.%d.%d.1</source_ip><count>3</count>
<policy_evaluated><disposition>none</disposition><dkim>pass</dkim><spf>pass</spf>
</policy_evaluated></row><identifiers><header_from>example.com</header_from></identifiers>
<auth_results><dkim><domain>example.com</domain><selector>s</selector><result>pass</result></dkim>
</auth_results></record>
]]
    local parts = { (io.open(FIX .. 'rfc9990.xml'):read('*a'):match('^(.-)<extension>')) }
    for i = 1, 5000 do parts[#parts + 1] = string.format(rec, math.floor(i / 256), i % 256) end
    parts[#parts + 1] = '</feedback>\n'
    local path = dir .. '/big.xml'
    local f = assert(io.open(path, 'wb'))
    f:write(table.concat(parts))
    f:close()
    os.execute('gzip -n ' .. path)
    local status, out = dmarc('report ingest --quiet --json --redis-prefix ' .. prefix .. ' '
      .. path .. '.gz')
    assert.equal(0, status)
    assert.equal(15000, cjson.decode(out).messages)
    local conn = connect()
    local sum, rows = total_messages(conn, prefix, '20251121')
    assert.equal(15000, sum)
    assert.equal(5000, rows)
    local stage = conn:command('KEYS', prefix .. 'ing:{example.com}:stage:*')
    assert.equal(0, #stage)
    -- and again: a duplicate, nothing added, no staging hash left behind
    status, out = dmarc('report ingest --quiet --json --redis-prefix ' .. prefix .. ' ' .. path .. '.gz')
    assert.equal(0, status)
    assert.equal(1, cjson.decode(out).duplicates)
    assert.equal(15000, (total_messages(conn, prefix, '20251121')))
    assert.equal(0, #conn:command('KEYS', prefix .. 'ing:{example.com}:stage:*'))
    conn:close()
  end)

  it('ingest__foreign_domains_counted_or_refused', function()
    local prefix = fresh_prefix()
    local status, out = dmarc('report ingest --quiet --json --own example.com --refuse-foreign '
                              .. '--redis-prefix ' .. prefix .. ' ' .. FIX .. 'foreign.xml ' .. FIX
                              .. 'rfc9990.xml')
    assert.equal(0, status)
    local stats = cjson.decode(out)
    assert.equal(1, stats.refused)
    assert.equal(1, stats.foreign)
    assert.equal(1, stats.stored)
    local conn = connect()
    assert.equal(0, #conn:command('KEYS', prefix .. 'ing:{example.org}:*'))
    conn:close()
  end)

  it('ingest__envelope_to_hashed_with_the_site_salt', function()
    local prefix = fresh_prefix()
    local status = h.run('DMARC_INGEST_SALT=0123456789abcdef-site ' .. h.BIN .. ' report ingest '
                         .. '--quiet --hash-envelope-to --redis ' .. REDIS .. ' --redis-prefix ' .. prefix
                         .. ' ' .. FIX .. 'rfc9990.xml')
    assert.equal(0, status)
    local conn = connect()
    local k = ingest.keys(prefix, 'example.com', '20251121')
    local all = conn:command('HGETALL', k.rows)
    local hashed = 0
    for i = 1, #all, 2 do
      assert.falsy(all[i]:find('receiver-a.example', 1, true))
      if all[i]:find('|h%3A', 1, true) then hashed = hashed + 1 end
    end
    assert.equal(1, hashed)
    conn:close()
  end)

  it('summary__numbers_of_the_ingested_reports', function()
    local prefix = fresh_prefix()
    dmarc('report ingest --quiet --redis-prefix ' .. prefix .. ' ' .. FIX .. 'rfc9990.xml.gz '
          .. FIX .. 'report-qp.eml')
    local s = summary_json(prefix)
    assert.equal(235, s.messages)
    assert.equal(190, s.dmarc_pass)
    assert.equal(2, s.reports)
    assert.equal(30, s.classes.unaligned)
    assert.equal(10, s.classes.spoof)
    assert.equal('203.0.113.5', s.readiness.fix_first[1].ip)
    assert.equal('192.0.2.1', s.sources[1].ip)
    local drill = summary_json(prefix, '--source 203.0.113.5')
    assert.equal(2, #drill.drill.rows)
    local status, text = dmarc('report summary --redis-prefix ' .. prefix .. ' --domain example.com '
                               .. '--until 2025-11-22 --days 7')
    assert.equal(0, status)
    assert.truthy(text:find('readiness: p=none -> quarantine', 1, true))
  end)
end)
