-- Report benchmark (run by tests/bench/report_bench.sh, which starts its own
-- redis-server): the cost of writing one message's report row
--   (a) one round trip per command (HINCRBY, EXPIRE, HSET, EXPIRE sent one
--       by one: the naive baseline),
--   (b) one pipelined round trip per message (report.write, as `dmarc check`),
--   (c) batched off the message path (64 messages per pipeline),
-- and generation of ROWS rows over DOMAINS policy domains (XML, gzip,
-- messages), with the process's peak memory.
--
-- usage: lua5.4 tests/bench/report_bench.lua PORT write [MESSAGES]
--        lua5.4 tests/bench/report_bench.lua PORT seed [ROWS] [DOMAINS]
--        lua5.4 tests/bench/report_bench.lua PORT generate
-- (each phase in its own process, so the peak memory printed by `generate`
-- is the generator's own)
package.path = './lua/?.lua;' .. package.path
package.cpath = './build/' .. (type(jit) == 'table' and 'luajit' or 'lua5.4') .. '/?.so;' .. package.cpath

local socket = require 'socket'
local redis = require 'dmarc.redis'
local report = require 'dmarc.report.rows'
local generate = require 'dmarc.report.generate'

local PORT = tonumber(arg[1]) or 16399
local PHASE = arg[2] or 'write'
local MESSAGES = tonumber(arg[3]) or 20000
local ROWS = tonumber(arg[3]) or 1000000
local DOMAINS = tonumber(arg[4]) or 10000
local DAY = 1763683200

local conn = assert(redis.connect { host = '127.0.0.1', port = PORT, timeout = 30 })

local function rss_peak_kb()
  local f = io.open('/proc/self/status')
  if not f then return 0 end
  local s = f:read('*a')
  f:close()
  return tonumber(s:match('VmHWM:%s*(%d+)')) or 0
end

local function row_for(d, i)
  local v = { result = (i % 3 == 0) and 'fail' or 'pass', author_domain = d, policy_domain = d,
              policy = 'reject', applied = 'reject', dkim_aligned = i % 3 ~= 0, spf_aligned = i % 2 == 0,
              record = { p = 'reject', sp = 'quarantine', adkim = 'relaxed', aspf = 'relaxed',
                         fo_text = '0', rua = { { uri = 'mailto:agg@' .. d } } } }
  local input = { spf = { result = 'pass', domain = d, scope = 'mfrom' },
                  dkim = { { result = 'pass', domain = d, selector = 'sel' .. (i % 2) } } }
  local ctx = { ip = string.format('10.%d.%d.%d', math.floor(i / 65536) % 256,
                                   math.floor(i / 256) % 256, i % 256),
                mail_from = 'b@' .. d, rcpt = { 'u@rcpt.example' } }
  return report.build_rows(v, input, ctx, nil, { time = DAY + 1 })[1]
end

local function timed(name, n, fn)
  conn:command('FLUSHALL')
  local t0 = socket.gettime()
  fn()
  local dt = socket.gettime() - t0
  io.write(string.format('report %-44s %8.1f us/message  (%d messages, %.2f s)\n', name,
                         dt * 1e6 / n, n, dt))
  return dt
end

local function phase_write()
  -- Rows prepared up front: the benchmark measures the writing.
  local rows = {}
  for i = 1, MESSAGES do rows[i] = row_for('bench' .. (i % 100) .. '.example', i % 50) end

  local t_rt = timed('write: one round trip per command (4 cmds)', MESSAGES, function()
    -- The naive baseline: the same data as HINCRBY, EXPIRE, HSET, EXPIRE sent one by one.
    local ttl = tostring(report.defaults.ttl)
    for i = 1, MESSAGES do
      local row = rows[i]
      local k = report.keys('dmarc:', row.policy_domain, report.day_of(row.time))
      conn:command('HINCRBY', k.rows, report.encode_row(row), '1')
      conn:command('EXPIRE', k.rows, ttl)
      conn:command('HSET', k.meta, 'rua', report.encode_rua(row.rua))
      conn:command('EXPIRE', k.meta, ttl)
    end
  end)
  local t_pipe = timed('write: one pipelined round trip per message', MESSAGES, function()
    for i = 1, MESSAGES do report.write(conn, { rows[i] }) end
  end)
  local t_batch = timed('write: batched, 64 messages per pipeline', MESSAGES, function()
    for i = 1, MESSAGES, 64 do
      local batch = {}
      for j = i, math.min(i + 63, MESSAGES) do batch[#batch + 1] = rows[j] end
      report.write(conn, batch)
    end
  end)
  io.write(string.format('report write ratio: per-command / pipelined = %.2f, pipelined / batched = %.2f\n',
                         t_rt / t_pipe, t_pipe / t_batch))
  conn:command('FLUSHALL')
end

local function phase_seed()
  -- Generation: ROWS distinct rows over DOMAINS domains, seeded directly.
  conn:command('FLUSHALL')
  local per = math.floor(ROWS / DOMAINS)
  local t0 = socket.gettime()
  local batch = {}
  for n = 1, DOMAINS do
    local d = 'd' .. n .. '.example'
    local k = report.keys('dmarc:', d, '20251121')
    local cmd = { 'HSET', k.rows }
    for i = 1, per do
      cmd[#cmd + 1] = report.encode_row(row_for(d, i))
      cmd[#cmd + 1] = tostring(1 + i % 7)
    end
    batch[#batch + 1] = cmd
    batch[#batch + 1] = { 'HSET', k.meta, 'rua', report.encode_rua({ { uri = 'mailto:agg@' .. d } }),
                          'policy', report.encode_policy(row_for(d, 1).policy) }
    if #batch >= 100 then
      assert(conn:pipeline(batch))
      batch = {}
    end
  end
  if #batch > 0 then assert(conn:pipeline(batch)) end
  io.write(string.format('report seed: %d rows over %d domains in %.1f s (%d keys)\n', per * DOMAINS,
                         DOMAINS, socket.gettime() - t0, conn:command('DBSIZE')))
end

local function phase_generate()
  -- The spool directory: under build/ (on this machine /tmp is much slower
  -- at creating files, which would measure the file system, not us).
  local out = os.getenv('REPORT_BENCH_OUT') or 'build/report-bench-out'
  os.execute('rm -rf ' .. out .. ' && mkdir -p ' .. out)
  local rss_before = rss_peak_kb()
  local t0 = socket.gettime()
  local s = assert(generate.run { redis = conn, begin = DAY, ['end'] = DAY + 86400, out = out,
                                  reporter = { org_name = 'Bench', email = 'dmarc@bench.example',
                                               submitter = 'bench.example' } })
  local dt = socket.gettime() - t0
  io.write(string.format('report generate: %d rows, %d domains, %d reports, %d messages in %.1f s'
                         .. ' (%.0f rows/s; target < 30 s)\n', s.records, s.domains, s.reports,
                         s.messages, dt, s.records / dt))
  io.write(string.format('report generate: peak RSS %.1f MB (%.1f MB before generation)\n',
                         rss_peak_kb() / 1024, rss_before / 1024))
  os.execute('rm -rf ' .. out)
  conn:command('FLUSHALL')
end

local phases = { write = phase_write, seed = phase_seed, generate = phase_generate }
assert(phases[PHASE], 'phase: write | seed | generate')()
io.stdout:flush()
conn:close()
