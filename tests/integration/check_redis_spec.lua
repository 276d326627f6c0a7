-- `dmarc check --redis` against the real redis-server tests/integration/run starts
-- (DMARC_TEST_REDIS): overrides from the store, report rows from repeated runs that
-- `dmarc report generate` turns into a report valid against the RFC 9990 schema [AGG-9],
-- a failure report queued and then delivered by `dmarc report send` to the test SMTP
-- server [FAIL-1] [RUA-5], idempotent row writes, and a Redis that is down (the check still
-- succeeds, with a warning; --spool keeps the rows for the next run). Each test uses a key
-- prefix of its own, so nothing here touches another suite's keys.
local h = dofile('tests/integration/report_helpers.lua')
local redis = require 'dmarc.redis'
local report = require 'dmarc.report.rows'
local failure = require 'dmarc.report.failure'
local files = require 'dmarc.util.files'
local util_text = require 'dmarc.util.text'
local cjson = require 'cjson'

local REDIS = os.getenv('DMARC_TEST_REDIS') or '127.0.0.1:16379'
local HOST, PORT = REDIS:match('^(.+):(%d+)$')
local DOWN = '127.0.0.1:16398' -- nothing listens there
local SMTP_PORT = 16531
local DAY = 1763683200 -- 2025-11-21 00:00 UTC
local DATE = '2025-11-21'
local IDENTITY = ' --org-name "Example Receiver" --email dmarc@receiver.example'
  .. ' --submitter receiver.example'

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

local SPOOF = '--ip 203.0.113.200 --mail-from ceo@example.com '

describe('dmarc check with a real Redis', function()
  local conn, dir

  setup(function()
    conn = assert(redis.connect { host = HOST, port = tonumber(PORT) })
    dir = h.tmpdir()
  end)

  teardown(function()
    if conn then conn:close() end
    os.execute('rm -rf ' .. q(dir))
  end)

  -- Every key of one prefix (the tests' own), removed.
  local function clear(prefix)
    local cursor = '0'
    repeat
      local reply = assert(conn:command('SCAN', cursor, 'MATCH', prefix .. '*', 'COUNT', '1000'))
      cursor = reply[1]
      for _, k in ipairs(reply[2]) do conn:command('DEL', k) end
    until cursor == '0'
  end

  local function row_counts(prefix, domain)
    local all = conn:command('HGETALL', report.keys(prefix, domain, '20251121').rows) or {}
    local out, total = {}, 0
    for i = 1, #all, 2 do
      local row = assert(report.decode_row(all[i]))
      out[row.source_ip] = (out[row.source_ip] or 0) + tonumber(all[i + 1])
      total = total + tonumber(all[i + 1])
    end
    return out, total
  end

  it('check_redis__overrides_come_from_the_store', function()
    local prefix = 'itck1:'
    clear(prefix)
    local status, out = check(SPOOF .. '--redis ' .. REDIS .. ' --redis-prefix ' .. prefix)
    assert.equal(0, status)
    assert.truthy(out:find('\nDecision: folder "Junk"', 1, true), out)
    status, out = h.run(h.BIN .. ' override add domain example.com --comment "known sender" --redis '
                        .. REDIS .. ' --redis-prefix ' .. prefix .. ' 2>&1')
    assert.equal(0, status, out)
    status, out = check(SPOOF .. '--redis ' .. REDIS .. ' --redis-prefix ' .. prefix)
    assert.equal(0, status)
    assert.truthy(out:find('\nDecision: accept', 1, true), out)
    assert.truthy(out:find('local_policy: known sender', 1, true), out)
    -- the override store of another prefix is not consulted
    status, out = check(SPOOF .. '--redis ' .. REDIS .. ' --redis-prefix itck1other:')
    assert.equal(0, status)
    assert.truthy(out:find('\nDecision: folder "Junk"', 1, true), out)
    clear(prefix)
  end)

  it('check_redis__rows_of_repeated_runs_aggregate_into_a_valid_report [AGG-2] [AGG-9]', function()
    local prefix = 'itck2:'
    clear(prefix)
    local function run(ip, t)
      local status, out, err = check('--ip ' .. ip .. ' --mail-from ceo@example.com --redis ' .. REDIS
                                     .. ' --redis-prefix ' .. prefix .. ' --time ' .. t .. ' --json')
      assert.equal(0, status, err)
      assert.equal(1, cjson.decode(out).reporting.rows_written)
      assert.equal('', err)
    end
    for i = 1, 3 do run('203.0.113.200', DAY + 100 + i) end
    run('203.0.113.201', DAY + 200)
    local counts, total = row_counts(prefix, 'example.com')
    assert.same({ ['203.0.113.200'] = 3, ['203.0.113.201'] = 1 }, counts)
    assert.equal(4, total)
    -- the site decision is what the row says was done [AGG-7]
    local all = conn:command('HGETALL', report.keys(prefix, 'example.com', '20251121').rows)
    assert.equal('quarantine', report.decode_row(all[1]).disposition)

    local out = dir .. '/rows'
    local status, text = h.run(h.BIN .. ' report generate --quiet --redis ' .. REDIS .. ' --redis-prefix '
                               .. prefix .. ' --date ' .. DATE .. IDENTITY .. ' --out ' .. q(out)
                               .. ' 2>&1')
    assert.equal(0, status, text)
    local gz = h.ls(out, '%.xml%.gz$')
    assert.equal(1, #gz)
    assert.truthy(gz[1]:find('^receiver%.example!example%.com!'))
    local xmlfile = out .. '/report.xml'
    assert(files.write(xmlfile, h.gunzip(out .. '/' .. gz[1])))
    assert.is_true(h.xmllint(h.SCHEMAS .. '/dmarc-2.0.xsd', xmlfile))
    local body = files.read(xmlfile)
    local sum = 0
    for n in body:gmatch('<count>(%d+)</count>') do sum = sum + tonumber(n) end
    assert.equal(4, sum)
    assert.truthy(body:find('<source_ip>203.0.113.200</source_ip>', 1, true))
    clear(prefix)
  end)

  it('check_redis__failure_report_queued_then_delivered [FAIL-1] [FAIL-2] [RUA-5]', function()
    local prefix = 'itck3:'
    clear(prefix)
    local zone = dir .. '/ruf.zone'
    assert(files.write(zone, (files.read('examples/example.zone'):gsub(
      'rua=mailto:dmarc%-reports@example%.com"',
      'rua=mailto:dmarc-reports@example.com; ruf=mailto:ruf@example.com,mailto:ruf@outside.example"'))))
    local maildir = dir .. '/mail'
    assert.is_true(h.wait_closed(SMTP_PORT, 10), 'port ' .. SMTP_PORT .. ' is taken')
    local smtp_pid = h.start_smtpd(SMTP_PORT, maildir)
    finally(function() h.stop(smtp_pid) end)
    local status, out, err = check(SPOOF .. '--redis ' .. REDIS .. ' --redis-prefix ' .. prefix
                                   .. ' --failure-reports' .. IDENTITY .. ' --time ' .. (DAY + 300)
                                   .. ' --json', zone)
    assert.equal(0, status, err)
    assert.equal(2, cjson.decode(out).reporting.failure_reports)
    local queue = failure.queue_key(prefix, 'example.com')
    assert.equal(2, conn:command('LLEN', queue))
    local window = math.floor((DAY + 300) / failure.defaults.rate_window)
    assert.equal('1', conn:command('GET', failure.rate_key(prefix, 'example.com', window)))

    -- outside.example gives no consent: only the same-organisation destination gets it
    local dns = dir .. '/dns.json'
    assert(files.write(dns, '{}'))
    local send_out = dir .. '/send'
    local text
    status, text = h.run(h.BIN .. ' report send --redis ' .. REDIS .. ' --redis-prefix ' .. prefix
                         .. IDENTITY .. ' --smtp 127.0.0.1:' .. SMTP_PORT .. ' --dns-json ' .. q(dns)
                         .. ' --out ' .. q(send_out) .. ' 2>&1')
    assert.equal(0, status, text)
    local envs = h.ls(maildir, '%.env$')
    assert.equal(1, #envs, text)
    local env = files.read(maildir .. '/' .. envs[1])
    assert.equal('dmarc@receiver.example\nruf@example.com\n', env:match('^[^\n]*\n[^\n]*\n'))
    local msg = files.read(maildir .. '/' .. envs[1]:gsub('%.env$', '.eml'))
    assert.truthy(msg:find('report-type=feedback-report', 1, true))
    assert.truthy(msg:find('Auth-Failure: dmarc', 1, true))
    assert.truthy(msg:find('Source-IP: 203.0.113.200', 1, true))
    assert.is_nil(msg:find('ceo@example.com', 1, true)) -- redacted [FAIL-7]
    assert.equal(0, conn:command('EXISTS', queue)) -- delivered or refused: nothing left
    clear(prefix)
  end)

  -- The failure reports `dmarc check` queues carry the SPF record evaluated, whole (RFC 6591
  -- §3.2): every TXT string of it joined without a separator (RFC 7208 §3.3), and read back
  -- so by `dmarc report ingest`.
  it('check_redis__failure_report_spf_dns_is_the_whole_record_and_round_trips', function()
    local failures = require 'dmarc.owner.failures'
    local records = {
      { txt = '"v=spf1 -all"', want = 'v=spf1 -all' },
      { txt = '"v=spf1 ip4:192.0.2.0/24" " ip4:198.51.100.0/24" " -all"',
        want = 'v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.0/24 -all' },
    }
    for i, case in ipairs(records) do
      local prefix = 'itck7' .. i .. ':'
      clear(prefix)
      local zone = dir .. '/spf' .. i .. '.zone'
      local text = files.read('examples/example.zone')
      text = text:gsub('\nexample%.com%.%s+TXT%s+"v=spf1 [^\n]*', function()
        return '\nexample.com. TXT ' .. case.txt
      end)
      text = text:gsub('rua=mailto:dmarc%-reports@example%.com"',
                       'rua=mailto:dmarc-reports@example.com; ruf=mailto:ruf@example.com"')
      assert(files.write(zone, text))
      local status, out, err = check(SPOOF .. '--redis ' .. REDIS .. ' --redis-prefix ' .. prefix
                                     .. ' --failure-reports' .. IDENTITY .. ' --time ' .. (DAY + 300)
                                     .. ' --json', zone)
      assert.equal(0, status, err)
      assert.equal(1, cjson.decode(out).reporting.failure_reports, out)
      local queued = assert(conn:command('LRANGE', failure.queue_key(prefix, 'example.com'), '0', '-1'))
      assert.equal(1, #queued)
      local msg = assert(failure.decode_entry(queued[1])).message
      assert.truthy(msg:find('\r\nSPF-DNS: txt : example.com : ' .. case.want .. '\r\n', 1, true), msg)
      -- What was sent, read by the domain owner's ingest.
      local eml = dir .. '/failure' .. i .. '.eml'
      assert(files.write(eml, msg))
      local text_out
      status, text_out = h.run(h.BIN .. ' report ingest --redis ' .. REDIS .. ' --redis-prefix ' .. prefix
                               .. 'owner: ' .. q(eml) .. ' 2>&1')
      assert.equal(0, status, text_out)
      local stored = assert(conn:command('HGETALL', failures.key(prefix .. 'owner:', 'example.com',
                                                                   '20251121')))
      assert.equal(2, #stored, text_out)
      assert.equal(case.want, cjson.decode(stored[2]).spf_dns)
      clear(prefix)
    end
  end)

  it('check_redis__a_retried_row_write_counts_once', function()
    local prefix = 'itck4:'
    clear(prefix)
    local v = { result = 'fail', author_domain = 'example.com', policy_domain = 'example.com',
                policy = 'reject', applied = 'reject',
                record = { p = 'reject', rua = { { uri = 'mailto:a@example.com' } } } }
    local row = report.prepare_row(report.build_rows(v, {}, { ip = '192.0.2.1' }, nil, { time = DAY })[1],
                                   'retry.1')
    local cmds = assert(report.commands(row, { prefix = prefix }))
    assert.equal(1, conn:pipeline(cmds)[1])
    assert.equal(0, conn:pipeline(cmds)[1]) -- the reply of the first was "lost": sent again
    local _, total = row_counts(prefix, 'example.com')
    assert.equal(1, total)
    local ttl = conn:command('TTL', report.seen_key(prefix, 'example.com', 'retry.1'))
    assert.is_true(ttl > 0 and ttl <= report.defaults.seen_ttl)
    clear(prefix)
  end)

  it('check_redis__redis_down_the_check_still_succeeds_with_a_warning', function()
    local status0, out0 = check(SPOOF)
    local status, out, err = check(SPOOF .. '--redis ' .. DOWN)
    assert.equal(0, status0)
    assert.equal(0, status)
    assert.equal(out0:match('\nDecision: [^\n]*'), out:match('\nDecision: [^\n]*'))
    assert.truthy(err:find('dmarc check: warn: ', 1, true))
    assert.truthy(err:find('lost', 1, true))
    assert.is_nil(err:find('traceback', 1, true))
  end)

  it('check_redis__spooled_rows_reach_redis_with_the_next_run', function()
    local prefix = 'itck5:'
    clear(prefix)
    local spool = dir .. '/spool'
    local status, out, err = check('--ip 203.0.113.210 --mail-from ceo@example.com --redis ' .. DOWN
                                   .. ' --redis-prefix ' .. prefix .. ' --spool ' .. q(spool)
                                   .. ' --time ' .. (DAY + 400) .. ' --json')
    assert.equal(0, status, err)
    assert.equal(1, cjson.decode(out).reporting.rows_spooled)
    assert.equal(1, #h.ls(spool, '%.rows$'))
    status, out, err = check('--ip 203.0.113.211 --mail-from ceo@example.com --redis ' .. REDIS
                             .. ' --redis-prefix ' .. prefix .. ' --spool ' .. q(spool)
                             .. ' --time ' .. (DAY + 500) .. ' --json')
    assert.equal(0, status, err)
    local rep = cjson.decode(out).reporting
    assert.equal(1, rep.rows_from_spool)
    assert.equal(2, rep.rows_written)
    assert.equal(0, #h.ls(spool))
    local counts = row_counts(prefix, 'example.com')
    assert.same({ ['203.0.113.210'] = 1, ['203.0.113.211'] = 1 }, counts)
    clear(prefix)
  end)
  -- A Redis restarted with a large AOF answers -LOADING until it has read it all. The fill
  -- is 100000 keys; key-load-delay (a redis-server setting for tests) keeps the replay going
  -- for seconds however fast the machine, and a small loading-process-events-interval-bytes
  -- makes it answer -LOADING at once rather than after a timeout.
  it('check_redis__rows_survive_a_redis_that_is_loading', function()
    local port, ldir = 16395, dir .. '/loading'
    local pid = h.start_redis(port, ldir)
    finally(function() h.stop(pid) end)
    local fill = assert(redis.connect { host = '127.0.0.1', port = port, timeout = 30 })
    for chunk = 0, 99 do
      local cmd = { 'MSET' }
      for i = 1, 1000 do
        cmd[#cmd + 1] = 'fill:' .. (chunk * 1000 + i)
        cmd[#cmd + 1] = string.rep('x', 32)
      end
      assert(fill:command(table.unpack(cmd)))
    end
    assert(fill:command('BGREWRITEAOF'))
    for _ = 1, 300 do
      local info = fill:command('INFO', 'persistence') or ''
      if info:find('aof_rewrite_in_progress:0', 1, true)
          and info:find('aof_rewrite_scheduled:0', 1, true) then break end
      h.run('sleep 0.1')
    end
    fill:close()
    h.stop(pid)
    pid = h.start_redis(port, ldir, '--key-load-delay 20 --loading-process-events-interval-bytes 1024')
    local function ping()
      local _, out = h.run('redis-cli -p ' .. port .. ' PING 2>&1')
      return out
    end
    assert.truthy(ping():find('LOADING', 1, true), 'redis-server was not loading')

    local prefix, spool = 'itck6:', dir .. '/spool-loading'
    local where = ' --redis 127.0.0.1:' .. port .. ' --redis-prefix ' .. prefix .. ' --spool '
      .. q(spool) .. ' --time ' .. (DAY + 600) .. ' --json'
    for i = 1, 5 do
      local status, out, err = check('--ip 203.0.113.22' .. i .. ' --mail-from ceo@example.com'
                                     .. where)
      assert.equal(0, status, err)
      local rep = cjson.decode(out).reporting
      assert.truthy(err:find('LOADING', 1, true), err) -- still loading: the test means something
      assert.equal(0, rep.rows_lost, err)
      assert.equal(0, rep.rows_written, err)
      assert.equal(1, rep.rows_spooled, err)
      assert.equal(i - 1, rep.rows_from_spool, err)
      assert.equal(i, #h.ls(spool, '%.rows$'), err)
    end
    for _ = 1, 1200 do
      if ping():find('PONG', 1, true) then break end
      h.run('sleep 0.1')
    end
    assert.truthy(ping():find('PONG', 1, true), 'redis-server never finished loading')
    local status, out, err = check('--ip 203.0.113.226 --mail-from ceo@example.com' .. where)
    assert.equal(0, status, err)
    local rep = cjson.decode(out).reporting
    assert.equal(0, rep.rows_lost, err)
    assert.equal(5, rep.rows_from_spool, err)
    assert.equal(6, rep.rows_written, err)
    assert.equal(0, #h.ls(spool, '%.rows$'))
    local c6 = assert(redis.connect { host = '127.0.0.1', port = port })
    local all = c6:command('HGETALL', report.keys(prefix, 'example.com', '20251121').rows) or {}
    local total = 0
    for i = 2, #all, 2 do total = total + tonumber(all[i]) end
    c6:close()
    assert.equal(6, total)
  end)

  it('check_redis__a_row_redis_refuses_for_good_is_counted_lost', function()
    local prefix = 'itck7:'
    clear(prefix)
    -- The rows key holds a string: the row's HINCRBY fails with WRONGTYPE, every time.
    assert(conn:command('SET', report.keys(prefix, 'example.com', '20251121').rows, 'x'))
    local status, out, err = check('--ip 203.0.113.230 --mail-from ceo@example.com --redis '
                                   .. REDIS .. ' --redis-prefix ' .. prefix .. ' --time '
                                   .. (DAY + 700) .. ' --json')
    assert.equal(0, status, err)
    local rep = cjson.decode(out).reporting
    assert.equal(1, rep.rows_lost, err)
    assert.equal(0, rep.rows_written, err)
    assert.truthy(err:find('lost', 1, true), err)
    clear(prefix)
  end)
end)
