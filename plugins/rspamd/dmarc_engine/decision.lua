--[[
dmarc_engine/decision.lua: one message from evaluation to what rspamd does with it.

  evaluate   the engine's query loop over rspamd's resolver (a reused evaluation)
  decide     the site policy's decision, with overrides from Redis when it needs them
  act        the symbols of rspamd's own dmarc module (same names, same option formats, so
             composites and rules keep working), an action, headers, the
             Authentication-Results entry, mempool variables
  report     aggregate report rows and failure reports (reporting.lua, failure_reports.lua)

Every failure is logged and contained: an engine failure adds nothing, a site policy that
fails gives the default treatments, never a reject because something broke.

Loaded by dmarc_engine.lua with the plugin's state P (config.lua) and its other parts.
]]

local P, input_part, reporting, failure_reports = ...

local rspamd_logger = require 'rspamd_logger'
local rspamd_util = require 'rspamd_util'

local N = P.N
local E = {}
local settings = P.settings
local mime_header_encode = rspamd_util.mime_header_encode

local M = {}

local MAX_OPTION_LEN = 256       -- bytes of one symbol option taken from a message

-- ---------------------------------------------------------------------------
-- Pure helpers (no rspamd objects), exported for the unit tests.

local function clip(s, n)
  s = tostring(s)
  if #s > n then return s:sub(1, n) end
  return s
end

--- rspamd's explanation of a DMARC failure, in its words ("No valid SPF, No valid DKIM",
-- "SPF not aligned (relaxed)"), so rules matching the built-in module's options still match.
local function failure_text(out, record, input)
  local parts = {}
  local spf = input.spf
  if spf and spf.result == 'pass' then
    if not out.spf_aligned then
      parts[#parts + 1] = string.format('SPF not aligned (%s)',
        (record and record.aspf == 'strict') and 'strict' or 'relaxed')
    end
  else
    parts[#parts + 1] = 'No valid SPF'
  end
  local dkim_pass = false
  for _, d in ipairs(input.dkim or E) do
    if d.result == 'pass' then dkim_pass = true end
  end
  if dkim_pass then
    if not out.dkim_aligned then
      parts[#parts + 1] = string.format('DKIM not aligned (%s)',
        (record and record.adkim == 'strict') and 'strict' or 'relaxed')
    end
  else
    parts[#parts + 1] = 'No valid DKIM'
  end
  return table.concat(parts, ', ')
end
M.failure_text = failure_text

--- The DMARC_NA options: why there is no author domain, or the author domain.
local function na_options(out)
  local no_from, no_author = false, false
  for _, f in ipairs(out.flags or E) do
    if f == 'no_from' then no_from = true elseif f == 'no_author_domain' then no_author = true end
  end
  if no_from then return { 'No From header' } end
  if no_author or not out.author_domain then return { 'No domain in From header' } end
  return { out.author_domain }
end

--- The symbol and options of a verdict, in the formats of rspamd's dmarc module:
--   DMARC_POLICY_ALLOW       [<policy domain>, <policy>]
--   DMARC_POLICY_REJECT/_QUARANTINE/_SOFTFAIL (by the policy applied after t=/pct)
--                            [<policy domain> : <why>, <policy>(, <reason>)...]
--   DMARC_NA                 [<author domain>] | [No From header] | [No domain in From header]
--   DMARC_DNSFAIL            [<domain> : <resolver error>, <policy>?]
--   DMARC_BAD_POLICY         [<domain> : <why>]
-- Extra options (after rspamd's) name the engine's reason (policy_test_mode, sampled_out)
-- and flags (multiple_from ...).
-- @param out the engine's output object, with out.record (the applied record, when a failure
--   needs its aspf/adkim words) and out.error (why a temperror or permerror)
-- @param input the evaluation input; @param dns_error the first resolver error, or nil
-- @return symbol key (allow, reject ...), options array
local function compat_result(out, input, dns_error)
  local domain = out.policy_domain or out.author_domain or 'unknown'
  local opts, key
  if out.result == 'pass' then
    key = 'allow'
    opts = { domain, out.policy or 'none' }
  elseif out.result == 'fail' then
    local applied = out.applied or out.policy or 'none'
    key = (applied == 'reject' and 'reject') or (applied == 'quarantine' and 'quarantine')
      or 'softfail'
    opts = { domain .. ' : ' .. failure_text(out, out.record, input), out.policy or 'none' }
    if out.reason then opts[#opts + 1] = out.reason end
  elseif out.result == 'temperror' then
    key = 'dnsfail'
    opts = { domain .. ' : ' .. (dns_error or 'SPF/DKIM temp error') }
    if out.policy then opts[#opts + 1] = out.policy end
  elseif out.result == 'permerror' then
    key = 'badpolicy'
    opts = { domain .. ' : ' .. (out.error or 'invalid DMARC record') }
  else
    key = 'na'
    opts = na_options(out)
  end
  local flags = out.flags or E
  for i = 1, #flags do opts[#opts + 1] = flags[i] end
  for i = 1, #opts do
    if #opts[i] > MAX_OPTION_LEN then opts[i] = opts[i]:sub(1, MAX_OPTION_LEN) end
  end
  return key, opts
end
M.compat_result = compat_result

-- RFC 8601 §2.2: a value that is not a token goes in quotes.
local function ar_value(s)
  s = tostring(s)
  if s:find('^[%w%.%-_]+$') then return s end
  return '"' .. s:gsub('[\\"]', '\\%0') .. '"'
end

--- The dmarc= entry of an Authentication-Results field (RFC 9989 §6, RFC 8601 §2.7): the
-- real From (author) domain as header.from, policy.dmarc = the policy actually applied after
-- t=, pct and site overrides, and an OpenDMARC-style comment with the published and applied
-- dispositions. A temperror or permerror says why in reason= (RFC 8601 §2.2).
local function ar_entry(out, decision, why)
  local parts = { 'dmarc=' .. out.result }
  local decided = out.result == 'pass' or out.result == 'fail'
  local applied
  if decided and out.policy then
    local dis = decision and decision.disposition or out.applied or 'none'
    if dis == 'pass' then dis = 'none' end
    applied = dis
    parts[#parts + 1] = string.format('(p=%s dis=%s)', out.policy, dis)
  elseif (out.result == 'temperror' or out.result == 'permerror') and why then
    parts[#parts + 1] = 'reason=' .. ar_value(clip(why, MAX_OPTION_LEN))
  end
  if out.author_domain then parts[#parts + 1] = 'header.from=' .. ar_value(out.author_domain) end
  if applied then parts[#parts + 1] = 'policy.dmarc=' .. applied end
  return table.concat(parts, ' ')
end
M.ar_entry = ar_entry

-- {==================================================================
-- One Authentication-Results field with milter_headers (auth_results = 'milter_headers')
-- ===================================================================

-- The mempool variable that carries a message's dmarc= entry to the routine.
local AR_VARIABLE = 'dmarc_engine_ar'

--- The field lua_auth_results wrote, with @entry as its dmarc= result: the routine's own
-- dmarc= entry is never made (no DMARC symbols are given to it), and a field that holds no
-- result ('host; none', RFC 8601 §2.2) gets ours instead of `none`.
local function with_dmarc_entry(field, entry)
  if not field then return nil end
  local head = field:match('^([^;]*); none$')
  if head then return head .. '; ' .. entry end
  return field .. '; ' .. entry
end
M.with_dmarc_entry = with_dmarc_entry

--- milter_headers' authentication-results routine (and any other caller) builds the field
-- with lua_auth_results.gen_auth_results; wrapped here so that a message this plugin
-- evaluated gets the plugin's dmarc= entry in that one field, in place of the entry
-- lua_auth_results derives from the symbols (the policy domain as header.from, no
-- policy.dmarc). Messages without an entry get the routine's own field, unchanged.
function M.contribute_to_auth_results()
  local ok, ar = pcall(require, 'lua_auth_results')
  if not ok or type(ar) ~= 'table' or type(ar.gen_auth_results) ~= 'function' then
    return nil, 'lua_auth_results cannot be loaded: ' .. tostring(ar)
  end
  -- A reload runs the plugin again in the same Lua state: wrap the original only.
  local original = ar.dmarc_engine_original or ar.gen_auth_results
  ar.dmarc_engine_original = original
  ar.gen_auth_results = function(task, s)
    local entry = task:get_mempool():get_variable(AR_VARIABLE)
    if not entry then return original(task, s) end
    local without = {}
    for k, v in pairs(s or ar.default_settings) do without[k] = v end
    without.dmarc_symbols = {}
    return with_dmarc_entry(original(task, without), entry)
  end
  return true
end

-- }==================================================================

-- ---------------------------------------------------------------------------
-- Acting on the outcome

--- The tag decision's header changes (a header of the site's, or a Subject prefix).
local function tag_changes(task, tag, add, remove)
  if tag.header and tag.value then
    add[tag.header] = { order = 0, value = tostring(tag.value) }
    remove = remove or {}
    remove[tag.header] = 0
  elseif tag.subject then
    -- The decoded Subject with the tag in front, encoded again (RFC 2047) when needed.
    local subject = tostring(tag.subject) .. ' ' .. (task:get_header('Subject') or '')
    if subject:find('[\128-\255]') and mime_header_encode then
      subject = mime_header_encode(subject)
    end
    add.Subject = { order = 0, value = subject }
    remove = remove or {}
    remove.Subject = 0
  end
  return remove
end

-- Header changes go to the MTA in the reply's milter block (rspamd_proxy in milter mode,
-- or the MTA's rspamd integration applies them); set_milter_reply merges them with other
-- modules' changes. Order 0: on top, where RFC 8601 §5 puts Authentication-Results.
local function header_changes(task, out, decision, why)
  local add, remove = {}, nil
  local ar = settings.auth_results
  if ar == true then
    add[settings.auth_results_header] = {
      order = 0, value = settings.authserv_id .. '; ' .. ar_entry(out, decision, why),
    }
  elseif ar == 'milter_headers' then
    task:get_mempool():set_variable(AR_VARIABLE, ar_entry(out, decision, why))
  end
  -- A header the delivery agent acts on must not come from outside (asked first: most
  -- messages have none, and an empty removal still costs the reply's conversion).
  if (task:get_header_count(settings.folder_header) or 0) > 0 then
    remove = { [settings.folder_header] = 0 }
  end
  if decision then
    if decision.action == 'folder' and decision.folder then
      add[settings.folder_header] = { order = 0, value = tostring(decision.folder) }
    elseif decision.action == 'tag' and type(decision.tag) == 'table' then
      remove = tag_changes(task, decision.tag, add, remove)
    end
  end
  if next(add) or remove then
    task:set_milter_reply({ add_headers = next(add) and add or nil, remove_headers = remove })
  end
end

local function apply_decision(task, out, decision, symbol_key, options)
  local s = settings.symbols
  -- The DMARC symbol says what DMARC found. When the site let a failing message through
  -- (an override: trusted forwarder, local policy ...), it stays, with no weight, and
  -- names the override, as rspamd's module does with "local_policy".
  local weight = 1.0
  if decision and out.result == 'fail' and decision.action == 'accept'
      and decision.source ~= 'default' then
    weight = 0.0
    for _, r in ipairs(decision.reasons or E) do
      if r.type and #options < 16 then options[#options + 1] = r.type end
    end
  end
  task:insert_result(s[symbol_key], weight, options)
  if not decision then return end

  local action = decision.action
  if action == 'reject' or action == 'defer' then
    -- The MTA integration puts its own codes in front (rspamd's milter: 554 5.7.1 and
    -- 451 4.7.1): the message is the text, which names DMARC (RFC 9989 §7.4).
    local message = tostring(decision.smtp_message or 'DMARC policy'):gsub('^%d%.%d+%.%d+%s+', '')
    task:set_pre_result(settings.actions[action], message, N, nil, nil, 'least')
    -- rspamd 3.4 can lose a `least` pre-result's message by the time it writes the reply
    -- (its score is raised to the action's threshold first): set the SMTP text explicitly.
    task:append_message(message, 'smtp_message')
  elseif action == 'score' then
    local score = tonumber(decision.score) or 0
    if score ~= 0 then
      task:insert_result(settings.score_symbol, score, out.author_domain or 'unknown')
    end
  end
end

--- Mark a message decided while the site script is broken: the symbol, with where and in
-- which phase it broke. A script that did not load is named in a log line per message (the
-- hook's failure is already logged once, with the task, among the decision's warnings).
local function mark_site_error(task, decision)
  local err = P.site_error
  if err then
    task:insert_result(settings.site_error_symbol, 1.0, { clip(err.where, MAX_OPTION_LEN), 'load' })
    rspamd_logger.errx(task, '%s: site script %s did not load (%s); the default treatments apply',
      N, err.script, err.where)
  elseif decision and type(decision.site_error) == 'table' then
    task:insert_result(settings.site_error_symbol, 1.0,
      { clip(decision.site_error.where or P.settings.site_script, MAX_OPTION_LEN), 'decide' })
  end
end

-- {==================================================================
-- Deciding: the site policy, with overrides from Redis
-- ===================================================================

-- The override cache: logical store key -> { entry or false (absent), expiry }. Override
-- changes (`dmarc override add|del`) take effect within overrides.cache_ttl seconds; in
-- exchange most messages need no Redis round trip at all. Bounded: emptied when full.
local override_cache, override_cache_n = {}, 0

local function override_cache_get(keys)
  local found, missing = {}, {}
  local now = os.time()
  for _, k in ipairs(keys) do
    local c = override_cache[k]
    if c and c[2] > now then
      if c[1] then found[k] = c[1] end
    else
      missing[#missing + 1] = k
    end
  end
  return found, missing
end

local function override_cache_put(keys, fetched)
  local ttl = settings.overrides.cache_ttl
  if ttl <= 0 then return end
  if override_cache_n + #keys > settings.overrides.cache_size then
    override_cache, override_cache_n = {}, 0
  end
  local expiry = os.time() + ttl
  for _, k in ipairs(keys) do
    if not override_cache[k] then override_cache_n = override_cache_n + 1 end
    override_cache[k] = { fetched[k] or false, expiry }
  end
end

--- Symbols, action, headers, mempool variables, then the reports.
local function finish(task, m, decision)
  local out, details, input = m.out, m.details, m.input
  local dns_error = m.dns_errors[1]
  local symbol_key, options = compat_result(out, input, dns_error and dns_error:match(': (.*)$'))
  apply_decision(task, out, decision, symbol_key, options)
  mark_site_error(task, decision)
  header_changes(task, out, decision, out.error)
  local pool = task:get_mempool()
  pool:set_variable('dmarc_result', out.result)
  if decision and decision.disposition then
    pool:set_variable('dmarc_disposition', decision.disposition)
  end
  if details then
    -- A fresh verdict table of the evaluation's own (the full one, with its record).
    local verdict = details.verdict
    verdict.domains = details.domains
    verdict.mode = input.mode
    reporting.store_rows(task, verdict, input, m.ctx, decision)
    if P.failure_reporter then failure_reports.queue(task, details, input, m.ctx, decision) end
  end
end

-- The site's decision with the store's answer (found; nil when the store failed: the site's
-- own rules and defaults apply and decision.warnings says so), then the symbols. The site
-- policy's log lines carry the task while it decides; its warnings are logged here, once.
local function conclude(task, m, found, store_error)
  P.current_task = task
  local ok, decision = pcall(m.msg.decide, m.msg, found, store_error and { store_error = store_error })
  P.current_task = nil
  if not ok or type(decision) ~= 'table' then
    rspamd_logger.errx(task, '%s: site policy failed: %s', N, decision)
    decision = nil
  end
  local warnings = decision and decision.warnings or E
  for i = 1, #warnings do
    rspamd_logger.warnx(task, '%s: site policy: %s', N, warnings[i])
  end
  finish(task, m, decision)
end

--- The override keys the decision may need, read from the cache or with one MGET.
local function fetch_overrides(task, m, keys)
  -- Entries (and their absence) seen within cache_ttl need no round trip.
  local found, missing = override_cache_get(keys)
  if #missing == 0 then return conclude(task, m, found) end
  if not reporting.redis_healthy() then
    return conclude(task, m, nil, 'redis unavailable, backing off')
  end
  local st = P.store.callback{
    prefix = settings.overrides.prefix,
    tag = settings.overrides.tag,
    mget = function(redis_keys, done)
      reporting.redis_request(task, P.overrides_redis, redis_keys[1], false, 'MGET', redis_keys,
        function(err, data) done(err, data) end)
    end,
  }
  st:get_many_async(missing, function(fetched, err)
    if not fetched then return conclude(task, m, nil, err) end
    override_cache_put(missing, fetched)
    for k, v in pairs(fetched) do found[k] = v end
    conclude(task, m, found)
  end)
end

--- The site's decision for message @m ({out, details, input, ctx, dns_errors}).
local function decide(task, m)
  local site = P.site
  local verdict = m.out
  if site.hook then
    -- The hook sees plain tables of its own: a ctx it can iterate, a verdict it cannot
    -- change the symbols through.
    input_part.ctx_materialize(m.ctx)
    verdict = {}
    for k, v in pairs(m.out) do verdict[k] = v end
  end
  -- One setup of the site policy per message, for the lookups and the decision.
  P.current_task = task
  m.msg = site:prepare(verdict, m.ctx)
  -- Without an override store there is nothing to look up: the site's own overrides and
  -- recipient set members are in the script.
  local keys = E
  if P.overrides_redis then
    local okk, lk = pcall(m.msg.lookups, m.msg)
    if okk then
      keys = lk
    else
      rspamd_logger.errx(task, '%s: site policy lookups failed: %s', N, lk)
    end
  end
  P.current_task = nil
  if type(keys) ~= 'table' or #keys == 0 then return conclude(task, m, E) end
  fetch_overrides(task, m, keys)
end

-- {==================================================================
-- Evaluating
-- ===================================================================

--- Did SPF or DKIM pass (rspamd's failure text then names the alignment that was missing)?
local function auth_passed(input)
  if input.spf and input.spf.result == 'pass' then return true end
  local dkim = input.dkim or E
  for i = 1, #dkim do
    if dkim[i].result == 'pass' then return true end
  end
  return false
end

-- The evaluation's outcome: the core's light verdict in the shape of a `dmarc eval` output
-- object, with only what this message needs on top: the applied record when a failure's
-- text names its alignment modes (or a site hook may read it), why a temperror or
-- permerror, and for report rows and failure reports the full verdicts (for failure reports
-- only when the outcome could call for one).
local function outcome_of(ev, input)
  local out = ev:outcome()
  local result = out.result
  if P.site.hook or (result == 'fail' and auth_passed(input)) then out.record = ev:record() end
  if result == 'temperror' or result == 'permerror' then out.error = ev:verdict(false).error end
  local details
  if P.reporting_redis or (P.failure_reporter and failure_reports.possible(out, input)) then
    details = { verdict = ev:verdict(), domains = ev:domains() }
  end
  return out, details
end

-- Evaluations are reused (ev:reset()) rather than made for each message: a new one
-- allocates the core's evaluation state and a userdata with a finaliser. At most
-- EVAL_POOL_MAX wait here; more messages in flight than that get fresh ones, closed after.
local EVAL_POOL_MAX = 64
local eval_pool, eval_pool_n = {}, 0

local function eval_acquire()
  local n = eval_pool_n
  if n == 0 then return P.engine_ctx:eval(P.engine_cache) end
  local ev = eval_pool[n]
  eval_pool[n] = nil
  eval_pool_n = n - 1
  return ev
end

local function eval_release(ev)
  if eval_pool_n < EVAL_POOL_MAX then
    ev:reset()
    eval_pool_n = eval_pool_n + 1
    eval_pool[eval_pool_n] = ev
  else
    ev:close()
  end
end
M.eval_pool_size = function() return eval_pool_n end

--- The message's identities into a fresh evaluation.
local function fill(ev, input)
  local limits = P.limits
  -- Bad values (a From field that does not parse, an SPF domain that is no domain) come
  -- back as nil, msg, code and are flagged by the core or left out: nothing to do here.
  local from = input.from
  for i = 1, math.min(#from, limits.from_max_fields + 1) do ev:add_from(from[i]) end
  local spf = input.spf
  if spf then ev:add_spf(spf.domain, spf.result, spf.scope == 'helo') end
  local dkim = input.dkim
  for i = 1, math.min(#dkim, limits.max_dkim) do
    local d = dkim[i]
    ev:add_dkim(d.domain, d.selector, d.result)
  end
  -- RFC 7489 §6.6.4 pct sampling; pct is historic in RFC 9989 mode (RFC 9989 §4.7), where
  -- the core never reads the roll.
  if P.sample_pct then ev:set_roll(P.dmarc.random_roll()) end
  ev:set_now(os.time())              -- expiry in the shared answer cache
end

--- Run one evaluation: the core's query loop with rspamd's resolver.
-- on_done(out, details) or on_done(nil, message), exactly once.
local function evaluate(input, resolver, on_done)
  local ev = eval_acquire()
  fill(ev, input)
  P.resolve.run_async(ev, resolver, function(ok, err)
    local out, details
    if ok then
      ok, out, details = pcall(outcome_of, ev, input)
      if not ok then err = out end
    end
    eval_release(ev)
    if not ok then return on_done(nil, err) end
    return on_done(out, details)
  end)
end

--- Evaluate, decide and act; every failure is logged and contained.
function M.run(task, input, ctx)
  local dns_errors = {}
  local started, serr = pcall(evaluate, input, input_part.make_resolver(task, dns_errors),
    function(out, details)
      if not out then
        -- An engine failure is never a reason to reject: log it, add nothing.
        rspamd_logger.errx(task, '%s: evaluation failed: %s', N, details)
        return
      end
      local m = { out = out, details = details, input = input, ctx = ctx, dns_errors = dns_errors }
      local ok, err = pcall(decide, task, m)
      P.current_task = nil
      if not ok then rspamd_logger.errx(task, '%s: %s', N, err) end
    end)
  if not started then rspamd_logger.errx(task, '%s: evaluation failed: %s', N, serr) end
end

return M
