-- `dmarc report ingest` and `dmarc report summary --redis-cluster` against a real
-- 3-master Redis Cluster on loopback (started and stopped by PID here, on
-- ports of its own): reports of many domains land on every master, the
-- staging hash of a report too large for one command stays in its domain's
-- slot, re-ingesting is a duplicate everywhere (the dedup hash shares the
-- rows' {domain} slot), and the summary reads the same numbers as from one
-- server (tests/integration/ingest_redis_spec.lua).
local h = dofile('tests/integration/report_helpers.lua')
local ch = dofile('tests/integration/cluster_helpers.lua')
local cluster = require 'dmarc.redis.cluster'
local ingest = require 'dmarc.owner.ingest'
local cjson = require 'cjson'

local PORTS = { 17011, 17012, 17013 }
local FIX = h.ROOT .. '/tests/fixtures/reports/'
local DOMAINS = 30

local function q(s) return require('dmarc.util.text').shell_quote(s) end

describe('ingest into a Redis Cluster', function()
  local dir, started, router, seeds

  -- `dmarc ARGS --redis-cluster <seeds>`: status, stdout, stderr.
  local function dmarc(args)
    local errfile = os.tmpname()
    local status, out = h.run(h.BIN .. ' ' .. args .. ' --redis-cluster ' .. seeds .. ' 2>' .. errfile)
    local f = io.open(errfile, 'rb')
    local err = f and f:read('*a') or ''
    if f then f:close() end
    os.remove(errfile)
    return status, out, err
  end

  local function total_messages(prefix, domain, day)
    local k = ingest.keys(prefix, domain, day)
    local all = router:command('HGETALL', k.rows) or {}
    local sum = 0
    for i = 2, #all, 2 do sum = sum + tonumber(all[i]) end
    return sum, #all / 2
  end

  setup(function()
    dir = h.tmpdir()
    started = ch.start(PORTS, dir)
    -- One seed is enough for the CLI; two show the list form.
    seeds = started.addrs[2] .. ',' .. started.addrs[3]
    router = assert(cluster.new { nodes = { started.addrs[1] } })
  end)

  teardown(function()
    if router then router:close() end
    ch.stop(started)
    os.execute('rm -rf ' .. q(dir))
  end)

  it('ingest_cluster__reports_of_many_domains_spread_and_dedup', function()
    local prefix = 'itcl:ing1:'
    -- One report per domain: the rfc9990 fixture with its domain and report id changed.
    local src = assert(io.open(FIX .. 'rfc9990.xml')):read('*a')
    local reports = dir .. '/reports'
    os.execute('mkdir -p ' .. q(reports))
    for n = 1, DOMAINS do
      local f = assert(io.open(reports .. '/r' .. n .. '.xml', 'wb'))
      f:write((src:gsub('example%.com', 'd' .. n .. '.example'):gsub('a%-20251121%-0001', 'cl-' .. n)))
      f:close()
    end
    local status, out, err = dmarc('report ingest --quiet --json --redis-prefix ' .. prefix .. ' '
                                   .. q(reports))
    assert.equal(0, status, err)
    local stats = cjson.decode(out)
    assert.equal(DOMAINS, stats.stored)
    assert.equal(0, stats.duplicates)
    assert.equal(DOMAINS * 180, stats.messages)
    for n = 1, DOMAINS do
      assert.equal(180, (total_messages(prefix, 'd' .. n .. '.example', '20251121')))
      local k = ingest.keys(prefix, 'd' .. n .. '.example', '20251121')
      assert.equal(1, router:command('HLEN', k.reports))
    end
    -- the domains are on every master, not on one
    for _, size in ipairs(ch.dbsizes(PORTS)) do assert.is_true(size > 0) end

    -- again: every report is a duplicate, no count moves
    status, out, err = dmarc('report ingest --quiet --json --redis-prefix ' .. prefix .. ' ' .. q(reports))
    assert.equal(0, status, err)
    stats = cjson.decode(out)
    assert.equal(0, stats.stored)
    assert.equal(DOMAINS, stats.duplicates)
    for n = 1, DOMAINS do
      assert.equal(180, (total_messages(prefix, 'd' .. n .. '.example', '20251121')))
    end
  end)

  it('ingest_cluster__every_format_like_one_server [MAIL-1] [MAIL-6]', function()
    local prefix = 'itcl:ing2:'
    local status, out = dmarc('report ingest --json --redis-prefix ' .. prefix .. ' ' .. q(FIX))
    assert.equal(1, status) -- the broken fixtures fail, the rest are stored
    local stats = cjson.decode(out)
    assert.equal(17, stats.errors)
    assert.equal(5, stats.stored)
    assert.equal(6, stats.duplicates)
    assert.equal(180 + 55 + 7 + 3 + 180, stats.messages)
    assert.equal(180 + 7 + 3, (total_messages(prefix, 'example.com', '20251121')))
    assert.equal(55, (total_messages(prefix, 'example.com', '20251122')))
  end)

  it('ingest_cluster__large_report_staged_in_its_domain_slot', function()
    local prefix = 'itcl:ing3:'
    local rec = [[<record><row><source_ip>10.%d.%d.1</source_ip><count>3</count>
<policy_evaluated><disposition>none</disposition><dkim>pass</dkim><spf>pass</spf>
</policy_evaluated></row><identifiers><header_from>example.com</header_from></identifiers>
<auth_results><dkim><domain>example.com</domain><selector>s</selector><result>pass</result></dkim>
</auth_results></record>
]]
    local parts = { (assert(io.open(FIX .. 'rfc9990.xml')):read('*a'):match('^(.-)<extension>')) }
    for i = 1, 5000 do parts[#parts + 1] = string.format(rec, math.floor(i / 256), i % 256) end
    parts[#parts + 1] = '</feedback>\n'
    local path = dir .. '/big.xml'
    local f = assert(io.open(path, 'wb'))
    f:write(table.concat(parts))
    f:close()
    local status, out, err = dmarc('report ingest --quiet --json --redis-prefix ' .. prefix .. ' ' .. q(path))
    assert.equal(0, status, err)
    assert.equal(15000, cjson.decode(out).messages)
    local sum, rows = total_messages(prefix, 'example.com', '20251121')
    assert.equal(15000, sum)
    assert.equal(5000, rows)
    assert.equal(0, #assert(cluster.scan(router, prefix .. 'ing:{example.com}:stage:*')))
    status, out, err = dmarc('report ingest --quiet --json --redis-prefix ' .. prefix .. ' ' .. q(path))
    assert.equal(0, status, err)
    assert.equal(1, cjson.decode(out).duplicates)
    assert.equal(15000, (total_messages(prefix, 'example.com', '20251121')))
  end)

  it('summary_cluster__numbers_of_the_ingested_reports', function()
    local prefix = 'itcl:ing4:'
    local status, _, err = dmarc('report ingest --quiet --redis-prefix ' .. prefix .. ' '
                                 .. q(FIX .. 'rfc9990.xml.gz') .. ' ' .. q(FIX .. 'report-qp.eml'))
    assert.equal(0, status, err)
    local out
    status, out, err = dmarc('report summary --json --redis-prefix ' .. prefix
                             .. ' --domain example.com --until 2025-11-22 --days 7')
    assert.equal(0, status, err)
    local s = cjson.decode(out)
    assert.equal(235, s.messages)
    assert.equal(190, s.dmarc_pass)
    assert.equal(2, s.reports)
    assert.equal(30, s.classes.unaligned)
    assert.equal(10, s.classes.spoof)
    assert.equal('203.0.113.5', s.readiness.fix_first[1].ip)
    assert.equal('192.0.2.1', s.sources[1].ip)
    -- the text form too
    status, out, err = dmarc('report summary --redis-prefix ' .. prefix .. ' --domain example.com '
                             .. '--until 2025-11-22 --days 7')
    assert.equal(0, status, err)
    assert.truthy(out:find('readiness: p=none -> quarantine', 1, true))
  end)
end)
