--[[
dmarc_engine/failure_reports.lua: RFC 9991 failure reports queued in Redis for
`dmarc report send` (off by default).

A message whose applied record has ruf and whose fo asks for a report (RFC 9991 §3) gets its
reports built by the failure module exactly as `dmarc check --failure-reports` builds them,
and queued with one atomic Redis step that also counts the policy domain's rate limit
(RFC 9991 §5), shared with every scanner on that Redis. Never about a report (the failure
module's loop guard). With Redis down or backing off no report is made: nothing is sent
uncounted, and the scan goes on as if the feature were off.

Loaded by dmarc_engine.lua with the plugin's state P (config.lua) and the reporting part.
]]

local P, reporting = ...

local rspamd_logger = require 'rspamd_logger'
local lua_util = require 'lua_util'

local N = P.N
local E = {}
local settings = P.settings

local M = {}

--- Could this outcome call for a failure report under some fo (RFC 9991 §3)? A DMARC
-- failure can; a pass only when a mechanism gave no aligned pass (fo=1), a DKIM signature
-- failed (fo=d) or SPF did not pass (fo=s). Only then are the records read: most passes
-- cost nothing more.
function M.possible(out, input)
  local result = out.result
  if result == 'fail' then return true end
  if result ~= 'pass' then return false end
  if not (out.spf_aligned and out.dkim_aligned) or #(out.flags or E) > 0 then return true end
  local spf = input.spf
  if spf and spf.result ~= 'pass' and spf.result ~= 'none' then return true end
  local dkim = input.dkim or E
  for i = 1, #dkim do
    local r = dkim[i].result
    if r ~= 'pass' and r ~= 'none' then return true end
  end
  return false
end

--- The message's header block as received: the report's text/rfc822-headers part and the
-- loop guard read it (the failure module bounds what it takes of it). '' when rspamd has
-- none.
local function raw_headers(task)
  local ok, text = pcall(task.get_raw_headers, task)
  if not ok or text == nil then return '' end
  if type(text) ~= 'string' then text = tostring(text) end
  return text
end

-- Policy domains whose rate-limit budget is spent, with the window it is spent for: within
-- that window every further report would be refused by the queue script, so none is built
-- or sent (the shared counter only grows within a window). Per worker, bounded: emptied
-- when full.
local MAX_SPENT_DOMAINS = 10000
local spent_windows, spent_n = {}, 0

local function rate_window_now()
  return math.floor(os.time() / settings.failure_reports.rate_window)
end

local function budget_spent(domain)
  return spent_windows[domain] == rate_window_now()
end

local function mark_spent(domain)
  if not spent_windows[domain] then
    if spent_n >= MAX_SPENT_DOMAINS then spent_windows, spent_n = {}, 0 end
    spent_n = spent_n + 1
  end
  spent_windows[domain] = rate_window_now()
end

-- One queue command (EVAL of the queue script through lua_redis, callback style: see
-- reporting.send_command): the rate limit is counted and the reports added in one atomic
-- step on the server. The queue's key picks the server among several (lua_redis hashes it):
-- it stays the same while the counter's changes with every window, so a domain's queue and
-- counters always meet on one server.
local function send_queue_command(task, cmd, domain)
  local keys = reporting.script_parts(cmd)
  local function done(err, data)
    if err then return reporting.redis_failed(task, 'failure report', err) end
    local n, why = P.failure.queue_result(data)
    if why == 'rate_limited' then mark_spent(domain) end
    if n > 0 then
      rspamd_logger.infox(task, '%s: %s failure report(s) about %s queued', N, n, domain)
    elseif why == 'queue_full' then
      rspamd_logger.warnx(task, '%s: failure-report queue of %s is full: report dropped', N, domain)
    else
      rspamd_logger.infox(task, '%s: no failure report about %s: %s', N, domain, why)
    end
  end
  reporting.send_command(task, nil, P.failure_redis, keys[2], cmd, done)
end

--- What the failure module needs to know about the message besides its verdict.
local function failure_context(task, ctx)
  local mail_from = ctx.mail_from or nil
  -- Mail from the aggregate reports' sender is a report too (the failure module knows the
  -- failure reports' own address).
  local own = settings.reporting.reporter_address
  return {
    ip = ctx.ip or nil, mail_from = mail_from, rcpt = ctx.rcpt or nil,
    arrival = reporting.arrival_time(task),
    queue_id = task.get_queue_id and task:get_queue_id() or nil,
    is_report = (type(own) == 'string' and type(mail_from) == 'string'
      and mail_from:lower():gsub('[<>]', '') == own:lower()) or nil,
  }
end

--- Queue the failure reports the message calls for: per author domain's verdict, when its
-- record has ruf and its fo asks for one.
function M.queue(task, details, input, ctx, decision)
  if settings.failure_reports.skip_rspamc and lua_util.is_rspamc_or_controller(task) then return end
  local list = details.domains
  if type(list) ~= 'table' or #list == 0 then list = { details.verdict } end
  local headers, fctx
  for i = 1, math.min(#list, P.limits.max_author_domains) do
    local v = list[i]
    -- The cheap test first: no header block is read for a record without ruf.
    if type(v) == 'table' and v.record and P.failure.should_report(v.record, v, input) then
      local domain = type(v.policy_domain) == 'string' and v.policy_domain:lower() or ''
      if budget_spent(domain) then
        lua_util.debugm(N, task, 'no failure report about %s: rate_limited (known)', domain)
      elseif not reporting.redis_healthy() then
        rspamd_logger.infox(task, '%s: no failure report about %s: redis unavailable', N, domain)
        return
      else
        headers = headers or raw_headers(task)
        fctx = fctx or failure_context(task, ctx)
        local ok, cmd, why = pcall(P.failure_reporter.queue_command, P.failure_reporter, v, input,
          fctx, decision, headers)
        if not ok then
          rspamd_logger.errx(task, '%s: failure report about %s: %s', N, domain, cmd)
        elseif cmd then
          send_queue_command(task, cmd, domain)
        else
          lua_util.debugm(N, task, 'no failure report about %s: %s', domain, why)
        end
      end
    end
  end
end

return M
