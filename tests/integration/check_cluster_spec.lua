-- `dmarc check --redis-cluster` against a real 3-master Redis Cluster on
-- loopback (started and stopped by PID here, on ports of its own): an
-- override written through the cluster router (its MULTI ... EXEC and every
-- key in the {ovr} slot) is honoured, report rows land in their domain's slot
-- and `dmarc report generate --redis-cluster` turns them into a report valid
-- against the RFC 9990 schema [AGG-9], a failure report is queued in the
-- cluster [FAIL-1], and a cluster that is down costs a warning, never the
-- check.
local h = dofile('tests/integration/report_helpers.lua')
local ch = dofile('tests/integration/cluster_helpers.lua')
local cluster = require 'dmarc.redis.cluster'
local store = require 'dmarc.site.store'
local policy = require 'dmarc.site.policy'
local report = require 'dmarc.report.rows'
local failure = require 'dmarc.report.failure'
local files = require 'dmarc.util.files'
local util_text = require 'dmarc.util.text'
local cjson = require 'cjson'

local PORTS = { 17021, 17022, 17023 }
local DOWN = '127.0.0.1:17029' -- nothing listens there
local DAY = 1763683200 -- 2025-11-21 00:00 UTC
local IDENTITY = ' --org-name "Example Receiver" --email dmarc@receiver.example'
  .. ' --submitter receiver.example'
local SPOOF = '--ip 203.0.113.200 --mail-from ceo@example.com '

local function q(s) return util_text.shell_quote(s) end

-- `dmarc check` on the spoofed example message; status, stdout, stderr.
local function check(args, zone)
  local err = os.tmpname()
  local status, out = h.run(h.BIN .. ' check --zone ' .. q(zone or 'examples/example.zone')
                            .. ' --roll 0 ' .. args .. ' examples/spoofed.eml 2>' .. q(err))
  local text = files.read(err) or ''
  os.remove(err)
  return status, out, text
end

describe('dmarc check with a Redis Cluster', function()
  local dir, started, router, seeds

  setup(function()
    dir = h.tmpdir()
    started = ch.start(PORTS, dir)
    seeds = started.addrs[1] .. ',' .. started.addrs[3]
    router = assert(cluster.new { nodes = { started.addrs[2] } })
  end)

  teardown(function()
    if router then router:close() end
    ch.stop(started)
    os.execute('rm -rf ' .. q(dir))
  end)

  local function row_counts(prefix, domain)
    local all = router:command('HGETALL', report.keys(prefix, domain, '20251121').rows) or {}
    local out, total = {}, 0
    for i = 1, #all, 2 do
      local row = assert(report.decode_row(all[i]))
      out[row.source_ip] = (out[row.source_ip] or 0) + tonumber(all[i + 1])
      total = total + tonumber(all[i + 1])
    end
    return out, total
  end

  -- The default tag's slot (2928) is on the first master; "site" (9421) is on another, so
  -- there a MULTI ... EXEC routed by its missing key would reach the wrong node.
  for _, case in ipairs { { tag = nil, prefix = 'itcc1:' }, { tag = 'site', prefix = 'itcc1s:' } } do
    it('check_cluster__override_in_the_store_slot_is_honoured (tag ' .. tostring(case.tag) .. ')', function()
      local prefix = case.prefix
      local base = SPOOF .. '--redis-cluster ' .. seeds .. ' --no-report-rows'
        .. (case.tag and (' --redis-tag ' .. case.tag) or '')
      local status, out, err = check(base .. ' --redis-prefix ' .. prefix)
      assert.equal(0, status, err)
      assert.truthy(out:find('\nDecision: folder "Junk"', 1, true), out)
      -- Written through the router: MULTI, SET, ZADD, EXEC all reach the store slot's master.
      local st = store.redis { prefix = prefix, tag = case.tag, connect = function() return router end }
      local entry = assert(policy.entry_from_action('domain', nil, nil, 'known sender'))
      assert.is_true(st:add('domain:example.com', entry))
      assert.equal(1, #assert(st:list()))
      local key = store.redis_key('domain:example.com', prefix, case.tag)
      local slot = cluster.key_slot(key)
      assert.equal(slot, cluster.key_slot(prefix .. '{' .. (case.tag or 'ovr') .. '}:index'))
      if case.tag then assert.not_equal(router:nodes()[1], router.slots[slot]) end
      assert.is_string(router:command('GET', key))
      -- The transaction really ran on that node: the command inside was queued there.
      local probe = prefix .. '{' .. (case.tag or 'ovr') .. '}:probe'
      local r = router:pipeline { { 'MULTI' }, { 'INCR', probe }, { 'EXEC' } }
      assert.equal('QUEUED', type(r[2]) == 'table' and r[2].ok or r[2])
      assert.same({ 1 }, r[3])
      -- From a stale slot map (another master named for the slot), the transaction is
      -- refused there and sent again whole to the right one: it runs once, as a transaction.
      local right = router.slots[slot]
      for _, a in ipairs(router:nodes()) do
        if a ~= right then router.slots[slot] = a break end
      end
      r = router:pipeline { { 'MULTI' }, { 'INCR', probe }, { 'INCR', probe }, { 'EXEC' } }
      assert.equal('QUEUED', type(r[2]) == 'table' and r[2].ok or r[2])
      assert.same({ 2, 3 }, r[4])
      assert.equal(right, router.slots[slot])
      router.slots[slot] = router:nodes()[router:nodes()[1] == right and 2 or 1]
      assert.is_true(st:add('domain:example.org', entry))
      assert.is_string(router:command('GET', store.redis_key('domain:example.org', prefix, case.tag)))
      assert.is_true(st:del('domain:example.org'))

      status, out, err = check(base .. ' --redis-prefix ' .. prefix)
      assert.equal(0, status, err)
      assert.equal('', err)
      assert.truthy(out:find('\nDecision: accept', 1, true), out)
      assert.truthy(out:find('local_policy: known sender', 1, true), out)
      -- another prefix's store is not consulted
      status, out = check(base .. ' --redis-prefix itcc1other:')
      assert.equal(0, status)
      assert.truthy(out:find('\nDecision: folder "Junk"', 1, true), out)
      assert.is_true(st:del('domain:example.com'))
    end)
  end

  it('check_cluster__override_cli_writes_to_the_cluster_and_check_honours_it', function()
    local prefix = 'itcc3:'
    local base = SPOOF .. '--redis-cluster ' .. seeds .. ' --no-report-rows --redis-prefix ' .. prefix
    local status, out = h.run(h.BIN .. ' override add domain example.com --action accept'
      .. ' --comment "cli cluster" --redis-cluster ' .. seeds .. ' --redis-prefix ' .. prefix)
    assert.equal(0, status, out)
    local err
    status, out, err = check(base)
    assert.equal(0, status, err)
    assert.truthy(out:find('local_policy: cli cluster', 1, true), out)
    status, out = h.run(h.BIN .. ' override list --json --redis-cluster ' .. seeds .. ' --redis-prefix '
      .. prefix)
    assert.equal(0, status, out)
    assert.truthy(out:find('example.com', 1, true), out)
    status = h.run(h.BIN .. ' override del domain example.com --redis-cluster ' .. seeds
      .. ' --redis-prefix ' .. prefix)
    assert.equal(0, status)
    status, out = check(base)
    assert.equal(0, status)
    assert.truthy(out:find('\nDecision: folder "Junk"', 1, true), out)
    -- a cluster has no databases, and one server or a cluster, not both
    assert.equal(2, (h.run(h.BIN .. ' override list --redis-cluster ' .. seeds .. ' --db 1')))
    assert.equal(2, (h.run(h.BIN .. ' override list --redis-cluster ' .. seeds .. ' --redis 127.0.0.1:1')))
  end)

  it('check_cluster__rows_written_and_a_report_generated_from_the_cluster [AGG-2] [AGG-9]', function()
    local prefix = 'itcc2:'
    local function run(ip, t)
      local status, out, err = check('--ip ' .. ip .. ' --mail-from ceo@example.com --redis-cluster '
                                     .. seeds .. ' --redis-prefix ' .. prefix .. ' --time ' .. t
                                     .. ' --json')
      assert.equal(0, status, err)
      assert.equal('', err)
      assert.equal(1, cjson.decode(out).reporting.rows_written)
    end
    for i = 1, 3 do run('203.0.113.200', DAY + 100 + i) end
    run('203.0.113.201', DAY + 200)
    local counts, total = row_counts(prefix, 'example.com')
    assert.same({ ['203.0.113.200'] = 3, ['203.0.113.201'] = 1 }, counts)
    assert.equal(4, total)

    local out = dir .. '/rows'
    local status, text = h.run(h.BIN .. ' report generate --quiet --redis-cluster ' .. started.addrs[2]
                               .. ' --redis-prefix ' .. prefix .. ' --date 2025-11-21' .. IDENTITY
                               .. ' --out ' .. q(out) .. ' 2>&1')
    assert.equal(0, status, text)
    local gz = h.ls(out, '%.xml%.gz$')
    assert.equal(1, #gz)
    assert.truthy(gz[1]:find('^receiver%.example!example%.com!'))
    local xmlfile = out .. '/report.xml'
    assert(files.write(xmlfile, h.gunzip(out .. '/' .. gz[1])))
    assert.is_true(h.xmllint(h.SCHEMAS .. '/dmarc-2.0.xsd', xmlfile))
    local sum = 0
    for n in files.read(xmlfile):gmatch('<count>(%d+)</count>') do sum = sum + tonumber(n) end
    assert.equal(4, sum)
  end)

  it('check_cluster__failure_report_queued_in_the_cluster [FAIL-1]', function()
    local prefix = 'itcc3:'
    local zone = dir .. '/ruf.zone'
    assert(files.write(zone, (files.read('examples/example.zone'):gsub(
      'rua=mailto:dmarc%-reports@example%.com"',
      'rua=mailto:dmarc-reports@example.com; ruf=mailto:ruf@example.com"'))))
    local status, out, err = check(SPOOF .. '--redis-cluster ' .. seeds .. ' --redis-prefix ' .. prefix
                                   .. ' --failure-reports' .. IDENTITY .. ' --time ' .. (DAY + 300)
                                   .. ' --json', zone)
    assert.equal(0, status, err)
    local rep = cjson.decode(out).reporting
    assert.equal(1, rep.failure_reports)
    assert.equal(1, rep.rows_written)
    assert.equal(1, router:command('LLEN', failure.queue_key(prefix, 'example.com')))
    local window = math.floor((DAY + 300) / failure.defaults.rate_window)
    assert.equal('1', router:command('GET', failure.rate_key(prefix, 'example.com', window)))
  end)

  it('check_cluster__cluster_down_the_check_still_succeeds_with_a_warning', function()
    local status0, out0 = check(SPOOF)
    local status, out, err = check(SPOOF .. '--redis-cluster ' .. DOWN)
    assert.equal(0, status0)
    assert.equal(0, status)
    assert.equal(out0:match('\nDecision: [^\n]*'), out:match('\nDecision: [^\n]*'))
    assert.truthy(err:find('dmarc check: warn: ', 1, true))
    assert.truthy(err:find('lost', 1, true))
    assert.is_nil(err:find('traceback', 1, true))
  end)

  it('check_cluster__the_report_config_names_the_cluster', function()
    local prefix = 'itcc5:'
    for n, nodes in ipairs {
      "{ '" .. started.addrs[1] .. "', '" .. started.addrs[2] .. "' }",
      "'" .. seeds .. "'",
    } do
      local conf = dir .. '/report' .. n .. '.conf'
      assert(files.write(conf, 'return { redis_cluster = ' .. nodes .. ", redis_prefix = '" .. prefix
                                  .. "', email = 'dmarc@receiver.example' }\n"))
      local status, out, err = check('--ip 203.0.113.230 --mail-from ceo@example.com'
                                     .. ' --report-config ' .. q(conf) .. ' --time ' .. (DAY + 800 + n)
                                     .. ' --json')
      assert.equal(0, status, err)
      assert.equal('', err)
      assert.equal(1, cjson.decode(out).reporting.rows_written)
      -- --redis on the command line wins over the file's cluster
      status, out, err = check('--ip 203.0.113.230 --mail-from ceo@example.com --redis ' .. DOWN
                               .. ' --report-config ' .. q(conf) .. ' --json')
      assert.equal(0, status, err)
      assert.equal(1, cjson.decode(out).reporting.rows_lost)
    end
    assert.same({ ['203.0.113.230'] = 2 }, (row_counts(prefix, 'example.com')))
  end)

  it('check_cluster__usage_errors', function()
    for _, args in ipairs {
      '--redis-cluster ' .. seeds .. ' --redis ' .. started.addrs[1],
      '--redis-cluster ' .. seeds .. ' --redis-db 1',
      '--redis-cluster nohostport',
      '--redis-cluster ,',
    } do
      local status = check(SPOOF .. args)
      assert.equal(2, status, args)
    end
  end)

  -- Last: it stops a master for good (the cluster has no replicas to fail over to).
  it('check_cluster__rows_for_an_unreachable_master_are_spooled', function()
    local prefix = 'itcc4:'
    local slot = cluster.key_slot(report.keys(prefix, 'example.com', '20251121').rows)
    local owner = router.slots[slot]
    local victim
    for i, a in ipairs(started.addrs) do
      if a == owner then victim = i end
    end
    assert.is_number(victim)
    h.stop(started.pids[victim])
    assert.is_true(h.wait_closed(PORTS[victim], 50))
    -- seeds that are still up, so the router starts
    local alive = {}
    for i, a in ipairs(started.addrs) do
      if i ~= victim then alive[#alive + 1] = a end
    end
    local spool = dir .. '/spool'
    local status, out, err = check('--ip 203.0.113.220 --mail-from ceo@example.com --redis-cluster '
                                   .. table.concat(alive, ',') .. ' --redis-prefix ' .. prefix
                                   .. ' --spool ' .. q(spool) .. ' --time ' .. (DAY + 600)
                                   .. ' --json')
    assert.equal(0, status, err)
    local rep = cjson.decode(out).reporting
    assert.equal(0, rep.rows_written)
    assert.equal(1, rep.rows_spooled)
    assert.equal(1, #h.ls(spool, '%.rows$'))
    assert.truthy(err:find('dmarc check: warn: ', 1, true))
    -- without a spool the row is lost, and counted
    status, out, err = check('--ip 203.0.113.221 --mail-from ceo@example.com --redis-cluster '
                             .. table.concat(alive, ',') .. ' --redis-prefix ' .. prefix
                             .. ' --time ' .. (DAY + 700) .. ' --json')
    assert.equal(0, status, err)
    assert.equal(1, cjson.decode(out).reporting.rows_lost)
  end)
end)
