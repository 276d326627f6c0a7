-- Collection, generation and sending against a real 3-master Redis Cluster on
-- loopback: every key of a policy domain shares its {domain} hash tag, so the
-- per-message EVAL and the report's reads and deletes never cross slots; the
-- router follows MOVED and spreads the domains over the masters.
local h = dofile('tests/integration/report_helpers.lua')
local ch = dofile('tests/integration/cluster_helpers.lua')
local cluster = require 'dmarc.redis.cluster'
local report = require 'dmarc.report.rows'
local util_files = require 'dmarc.util.files'

local PORTS = { 17001, 17002, 17003 }
local DAY = 1763683200
local DOMAINS = 120

local function row(d, i)
  local v = { result = (i % 2 == 0) and 'pass' or 'fail', author_domain = d, policy_domain = d,
              policy = 'quarantine', applied = 'quarantine', dkim_aligned = i % 2 == 0,
              record = { p = 'quarantine', rua = { { uri = 'mailto:agg@' .. d } } } }
  return report.build_rows(v, { spf = { result = 'pass', domain = d, scope = 'mfrom' } },
                           { ip = '192.0.2.' .. (i % 5) }, nil, { time = DAY + i })
end

describe('report rows on a Redis Cluster', function()
  local dir
  local started
  local router

  setup(function()
    dir = h.tmpdir()
    started = ch.start(PORTS, dir)
    router = assert(cluster.new { nodes = { '127.0.0.1:' .. PORTS[2] } })
  end)

  teardown(function()
    if router then router:close() end
    ch.stop(started)
    os.execute('rm -rf ' .. dir)
  end)

  it('cluster__collection_is_slot_safe_and_spread', function()
    assert.equal(3, #router:nodes())
    -- The rows of many messages, 64 per pipeline: every command reaches its slot's master.
    local batch, written = {}, 0
    local function write()
      local res = report.write(router, batch)
      assert.is_nil(res.failed)
      assert.equal(0, res.refused)
      assert.equal(0, #res.unreached)
      written = written + res.written
      batch = {}
    end
    for n = 1, DOMAINS do
      local d = 'dom' .. n .. '.example'
      for i = 1, 5 do
        for _, r in ipairs(row(d, i)) do batch[#batch + 1] = r end
        if #batch >= 64 then write() end
      end
    end
    write()
    assert.equal(DOMAINS * 5, written)
    -- every domain's count is right, read back through the router
    for n = 1, DOMAINS do
      local all = router:command('HGETALL', report.keys('dmarc:', 'dom' .. n .. '.example', '20251121').rows)
      local sum = 0
      for i = 2, #all, 2 do sum = sum + tonumber(all[i]) end
      assert.equal(5, sum)
    end
    -- the data is spread over every master
    for _, size in ipairs(ch.dbsizes(PORTS)) do assert.is_true(size > 0) end
  end)

  it('cluster__router_follows_moved_from_a_stale_map', function()
    local key = report.keys('dmarc:', 'dom1.example', '20251121').rows
    local slot = cluster.key_slot(key)
    local right = router.slots[slot]
    for _, a in ipairs(router:nodes()) do
      if a ~= right then router.slots[slot] = a break end
    end
    local all = router:command('HGETALL', key)
    assert.is_table(all)
    assert.is_true(#all > 0)
    assert.equal(right, router.slots[slot])
  end)

  it('cluster__generate_and_send_through_the_cluster', function()
    local out = dir .. '/out'
    local status, text = h.run(h.BIN .. ' report generate --quiet --redis-cluster 127.0.0.1:' .. PORTS[1]
                               .. ' --date 2025-11-21 --org-name R --email dmarc@receiver.example'
                               .. ' --submitter receiver.example --out ' .. out .. ' 2>&1')
    assert.equal(0, status, text)
    local files = h.ls(out, '%.xml%.gz$')
    assert.equal(DOMAINS, #files)
    local total = 0
    for _, f in ipairs(files) do
      for n in h.gunzip(out .. '/' .. f):gmatch('<count>(%d+)</count>') do total = total + tonumber(n) end
    end
    assert.equal(DOMAINS * 5, total)
    local one = out .. '/check.xml'
    assert(util_files.write(one, h.gunzip(out .. '/' .. files[1])))
    assert.is_true(h.xmllint(h.SCHEMAS .. '/dmarc-2.0.xsd', one))

    -- Deliver through a sendmail-compatible command that keeps the messages.
    local box = dir .. '/box'
    os.execute('mkdir -p ' .. box)
    local fake = dir .. '/sendmail'
    assert(util_files.write(fake, '#!/bin/sh\ncat > "' .. box .. '/$$.eml"\n'))
    os.execute('chmod +x ' .. fake)
    local dns = dir .. '/dns.json'
    assert(util_files.write(dns, '{}'))
    status, text = h.run(h.BIN .. ' report send --quiet --redis-cluster 127.0.0.1:' .. PORTS[3]
                         .. ' --email dmarc@receiver.example --sendmail ' .. fake
                         .. ' --dns-json ' .. dns .. ' --out ' .. out .. ' 2>&1')
    assert.equal(0, status, text)
    assert.equal(DOMAINS, #h.ls(box, '%.eml$'))
    -- every report's data is gone from every master; the state stays
    local keys = assert(cluster.scan(router, 'dmarc:rpt:{*}:20251121'))
    assert.equal(0, #keys)
    keys = assert(cluster.scan(router, 'dmarc:rpt:{*}:sent:*'))
    assert.equal(DOMAINS, #keys)
  end)
end)
