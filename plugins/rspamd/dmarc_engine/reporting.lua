--[[
dmarc_engine/reporting.lua: Redis for the plugin, and the aggregate report rows.

Every Redis request goes through rspamd's asynchronous lua_redis (callbacks only), never
raises, and after a failure Redis is left alone for redis_backoff seconds, so a dead Redis
costs no time per message. Report rows are the report module's own commands (the rows
`dmarc report generate` reads, docs/report-keys.md), its row script run with EVALSHA.

Loaded by dmarc_engine.lua with the plugin's state P (config.lua).
]]

local P = ...

local rspamd_logger = require 'rspamd_logger'
local lua_util = require 'lua_util'
local lua_redis = require 'lua_redis'

local N = P.N
local settings = P.settings

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

--- The keys and arguments of an `EVAL script numkeys key... arg...` command, for
-- lua_redis.exec_redis_script (which sends EVALSHA of the same script).
function M.script_parts(cmd)
  local nkeys = tonumber(cmd[3]) or 0
  local keys, args = {}, {}
  for i = 4, 3 + nkeys do keys[#keys + 1] = cmd[i] end
  for i = 4 + nkeys, #cmd do args[#args + 1] = cmd[i] end
  return keys, args
end

--- The time the message arrived (rspamd's connection time), whole seconds.
function M.arrival_time(task)
  return math.floor(task:get_date({ format = 'connect', gmt = true }) or os.time())
end

-- One command of a report row: the row script with EVALSHA, anything else as it is.
local function send_row_command(task, cmd)
  local function done(err)
    if err then M.redis_failed(task, 'report row', err) end
  end
  if cmd[1] == 'EVAL' and cmd[2] == P.report.ROW_SCRIPT and P.row_script_id then
    local keys, args = M.script_parts(cmd)
    local ok, perr = pcall(lua_redis.exec_redis_script, P.row_script_id,
      { task = task, is_write = true, key = keys[1] }, done, keys, args)
    if not ok then done(tostring(perr)) end
  else
    local args = {}
    for i = 2, #cmd do args[#args + 1] = cmd[i] end
    M.redis_request(task, P.reporting_redis, cmd[2], true, cmd[1], args, done)
  end
end

--- The report rows of an evaluation, through rspamd's redis client: the same commands the
-- report module gives the CLI. A row that cannot be written is logged and dropped
-- (`dmarc check --spool` is the writer that keeps rows).
function M.store_rows(task, verdict, input, ctx, decision)
  if not P.reporting_redis or not M.redis_healthy() then return end
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
  local opts = {
    prefix = settings.reporting.prefix,
    ttl = settings.reporting.ttl,
    max_rows = settings.reporting.max_rows,
  }
  for _, row in ipairs(rows) do
    local cmds, cerr = report.commands(row, opts)
    if not cmds then
      rspamd_logger.infox(task, '%s: report row for %s not stored: %s', N, row.policy_domain, cerr)
    else
      for _, cmd in ipairs(cmds) do send_row_command(task, cmd) end
    end
  end
end

return M
