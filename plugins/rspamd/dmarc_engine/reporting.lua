--[[
dmarc_engine/reporting.lua: Redis for the plugin, and the aggregate report rows.

Every Redis request goes through rspamd's asynchronous lua_redis (callbacks only), never
raises, and after a failure Redis is left alone for redis_backoff seconds, so a dead Redis
costs no time per message. Report rows are the report module's own commands (the rows
`dmarc report generate` reads, docs/report-keys.md), its row script sent with EVAL.

A report row is never dropped silently: rows of messages scanned while Redis is down or
backing off, and rows whose write failed, wait in a bounded per-worker queue
(reporting.max_pending) and are written first, oldest first, once Redis answers again: by the
worker's timer (every 0.1 s, at most ROWS_IN_FLIGHT at a time), and once more when the
worker exits (reload).
Every row carries an id (report.id_source), so the row script counts a retried write once
even when the first attempt did reach Redis. Beyond the bound a row is dropped with a log line.

Loaded by dmarc_engine.lua with the plugin's state P (config.lua).
]]

local P = ...

local rspamd_logger = require 'rspamd_logger'
local lua_util = require 'lua_util'
local lua_redis = require 'lua_redis'

local N = P.N
local settings = P.settings
local rspamd_config = P.rspamd_config

local M = {}

local redis_down_until = 0

function M.redis_healthy()
  return os.time() >= redis_down_until
end

function M.redis_failed(task, what, err)
  redis_down_until = os.time() + settings.redis_backoff
  rspamd_logger.warnx(task, '%s: redis %s failed (%s); redis is skipped for %s s',
    N, what, err, settings.redis_backoff)
end

--- One asynchronous Redis request that never raises and calls @cb exactly once:
-- cb(err, data). Redis down or backing off -> cb('unavailable') at once.
function M.redis_request(task, params, key, is_write, cmd, args, cb)
  if not M.redis_healthy() then return cb('unavailable (backing off)') end
  local called = false
  local function done(err, data)
    if called then return end
    called = true
    if err then M.redis_failed(task, cmd, err) end
    cb(err, data)
  end
  local ok, ret = pcall(lua_redis.redis_make_request, task, params, key, is_write,
    function(err, data) done(err, data) end, cmd, args)
  if not ok or not ret then done(ok and 'cannot connect' or tostring(ret)) end
end

--- The keys and arguments of an `EVAL script numkeys key... arg...` command.
function M.script_parts(cmd)
  local nkeys = tonumber(cmd[3]) or 0
  local keys, args = {}, {}
  for i = 4, 3 + nkeys do keys[#keys + 1] = cmd[i] end
  for i = 4 + nkeys, #cmd do args[#args + 1] = cmd[i] end
  return keys, args
end

--- One Redis command (@cmd: its name, then its arguments), within a task (@task) or from a
-- worker's timer (@ev_base); @key picks the server. cb(err, data) exactly once, never raises.
-- Scripts go as EVAL with their text (~700 bytes), never through
-- lua_redis.exec_redis_script: after Redis restarted under load, rspamd 3.4 answered its
-- EVALSHA's NOSCRIPT by parking each request in a wait queue for a reload of the script
-- that never completed, and never called back (`make soak`: report rows neither written nor
-- queued again, and the workers' Lua heap growing by 30 MB per 10,000 messages). EVAL needs
-- no state here and puts the script back in Redis's cache itself.
function M.send_command(task, ev_base, params, key, cmd, cb)
  local args = {}
  for i = 2, #cmd do args[#args + 1] = cmd[i] end
  local called = false
  local function once(err, data)
    if called then return end
    called = true
    cb(err, data)
  end
  local ok, sent
  if task then
    ok, sent = pcall(lua_redis.redis_make_request, task, params, key, true, once, cmd[1], args)
  else
    ok, sent = pcall(lua_redis.redis_make_request_taskless, ev_base, rspamd_config, params, key,
      true, once, cmd[1], args)
  end
  if not ok or not sent then once(ok and 'cannot make redis request' or tostring(sent)) end
end

--- The time the message arrived (rspamd's connection time), whole seconds.
function M.arrival_time(task)
  return math.floor(task:get_date({ format = 'connect', gmt = true }) or os.time())
end

local pending_rows, pending_first, pending_last = {}, 1, 0
local next_row_id -- report.id_source(), made in the worker on first use
-- Queued rows the timer has in flight at most once Redis is back. Each write in flight holds
-- a connection of rspamd's Redis pool with its buffers (a new one when none is idle), and
-- what a burst of them took stays in the worker's RSS: `make soak` saw some 10 MB per worker
-- with 256 a tick.
local ROWS_IN_FLIGHT = 32
-- Seconds between two ticks of the timer that drains the backlog (also when no mail comes):
-- up to ROWS_IN_FLIGHT rows a tick, some 300 a second per worker.
local PENDING_FLUSH_INTERVAL = 0.1
local timer_in_flight = 0 -- the timer's row writes not answered yet

local function pending_count() return pending_last - pending_first + 1 end

-- A row waits in its stored form (report.prepare_row: the hash field and the encoded policy
-- and rua as strings, LuaJIT interns the repeated ones), not as built: about 330 bytes a row
-- instead of 1.8 KB, so a full queue (max_pending) holds some 7 MB per worker. The Lua heap
-- rspamd's LuaJIT reaches while the queue is full stays in the worker's RSS after it drains
-- (`make soak` saw +11 MB per Redis outage with the rows as built).
-- @param log a task, or rspamd_config outside a task
local function queue_row(log, row)
  if pending_count() >= settings.reporting.max_pending then
    rspamd_logger.warnx(log, '%s: report row for %s dropped: %s rows already wait for Redis',
      N, row.policy_domain, pending_count())
    return
  end
  pending_last = pending_last + 1
  pending_rows[pending_last] = P.report.prepare_row(row, row.id)
end

local function row_opts()
  return {
    prefix = settings.reporting.prefix,
    ttl = settings.reporting.ttl,
    max_rows = settings.reporting.max_rows,
  }
end

-- One row: within a task (@task), or from the worker's timer (@ev_base: the row script only).
-- A failed write puts the row back in the queue.
local row_failures = 0 -- failed row writes so far (a forced flush stops at the first)

local function write_row(task, ev_base, row, opts, force)
  local log = task or rspamd_config
  local cmds, cerr = P.report.commands(row, opts)
  if not cmds then
    rspamd_logger.infox(log, '%s: report row for %s not stored: %s', N, row.policy_domain, cerr)
    return
  end
  for _, cmd in ipairs(cmds) do
    -- After a failure (this row's or another's) no further request is made with this task or
    -- timer tick: a task whose session is being destroyed refuses the first one and crashed
    -- rspamd 3.4 on the next (`make soak`). The row waits for the next try.
    if not (force or M.redis_healthy()) then return queue_row(log, row) end
    local function done(err)
      if not task then timer_in_flight = timer_in_flight - 1 end
      if err then
        row_failures = row_failures + 1
        M.redis_failed(log, 'report row', err)
        queue_row(log, row)
      end
    end
    -- The rows hash (the EVAL's first key, or the command's) picks the server.
    local key = cmd[1] == 'EVAL' and cmd[4] or cmd[2]
    if not task then timer_in_flight = timer_in_flight + 1 end
    M.send_command(task, ev_base, P.reporting_redis, key, cmd, done)
  end
end

-- Up to @max queued rows, oldest first, while Redis is healthy (or @force: the worker exits,
-- and a last try costs nothing).
-- A queued row whose write raised is tried again this many times, then dropped with a line.
-- (`make soak` saw the row commands raise once in a reloaded worker's timer; rspamd then
-- stopped the timer for good, and that worker's queue waited until it exited.)
local MAX_ROW_RAISES = 3

local function flush_pending(task, ev_base, max, force)
  if pending_count() == 0 or not (force or M.redis_healthy()) then return end
  local opts = row_opts()
  local failures = row_failures
  for _ = 1, math.min(pending_count(), max) do
    if row_failures > failures or not (force or M.redis_healthy()) then return end
    local row = pending_rows[pending_first]
    pending_rows[pending_first] = nil
    pending_first = pending_first + 1
    local ok, err = pcall(write_row, task, ev_base, row, opts, force)
    if not ok then
      row.raised = (row.raised or 0) + 1
      local log = task or rspamd_config
      if row.raised >= MAX_ROW_RAISES then
        rspamd_logger.errx(log, '%s: report row for %s dropped: its write failed %s times: %s',
          N, row.policy_domain, row.raised, err)
      else
        rspamd_logger.errx(log, '%s: report row for %s: its write failed: %s; tried again later',
          N, row.policy_domain, err)
        queue_row(log, row)
      end
      return
    end
  end
end

--- The report rows of an evaluation, through rspamd's redis client: the same commands the
-- report module gives the CLI, each row under its own id; queued while Redis is away.
function M.store_rows(task, verdict, input, ctx, decision)
  if not P.reporting_redis then return end
  if settings.reporting.skip_rspamc and lua_util.is_rspamc_or_controller(task) then return end
  local report = P.report
  local rows, err = report.build_rows(verdict, input, ctx, decision, {
    time = M.arrival_time(task),
    reporter_address = settings.reporting.reporter_address,
  })
  if not rows then
    rspamd_logger.infox(task, '%s: no report row: %s', N, err)
    return
  end
  next_row_id = next_row_id or report.id_source()
  for _, row in ipairs(rows) do row.id = next_row_id() end
  if not M.redis_healthy() then
    for _, row in ipairs(rows) do queue_row(task, row) end
    return
  end
  -- The backlog is left to the timer: requests made here may run inside another Redis
  -- reply's callback (the override lookup), and rspamd 3.4 crashed in its connection pool
  -- when hundreds were opened from there after an outage (`make soak`).
  local opts = row_opts()
  for _, row in ipairs(rows) do write_row(task, nil, row, opts) end
end

-- Rows queued while Redis was away are written by a timer when no mail comes, and by the
-- worker's finish script when it exits (reload, shutdown).
if P.reporting_redis and rspamd_config then
  if rspamd_config.add_on_load and rspamd_config.add_periodic then
    rspamd_config:add_on_load(function(_, ev_base, worker)
      if worker and worker.is_scanner and not worker:is_scanner() then return end
      rspamd_config:add_periodic(ev_base, PENDING_FLUSH_INTERVAL, function(_, base)
        -- (A timer whose callback raises is not run again.)
        local ok, err = pcall(flush_pending, nil, base, ROWS_IN_FLIGHT - timer_in_flight)
        if not ok then rspamd_logger.errx(rspamd_config, '%s: report row timer: %s', N, err) end
        return true
      end, true)
    end)
  end
  if rspamd_config.register_finish_script then
    rspamd_config:register_finish_script(function(task)
      if pending_count() > 0 then
        rspamd_logger.infox(task, '%s: worker exits: writing %s queued report rows', N,
          pending_count())
      end
      flush_pending(task, nil, settings.reporting.max_pending, true)
    end)
  end
end

return M
