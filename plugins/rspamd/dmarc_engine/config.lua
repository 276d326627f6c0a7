--[[
dmarc_engine/config.lua: the plugin's configuration. Its defaults, their checks, and the
modules and Redis settings they call for, in one place: the plugin (dmarc_engine.lua) starts
from what configure() gives, and `rspamadm configtest` runs the same checks (check.lua).

configure(opts) returns the plugin's state P, or nil and why the plugin cannot start. A
site script that does not load is not such a reason: every message must still be evaluated,
so P.site holds the documented defaults and P.site_error says what went wrong.
]]

local N = 'dmarc_engine'

local rspamd_logger = require 'rspamd_logger'
local lua_util = require 'lua_util'
local lua_redis = require 'lua_redis'
local rspamd_util = require 'rspamd_util'

local E = {}

local M = {}

--- Every setting with its default (plugins/rspamd/dmarc_engine.conf shows them all).
function M.defaults()
  return {
    -- Where the engine is, when not on rspamd's default paths (rspamd 3.4 ignores
    -- options { lua_path; lua_cpath; }). Prepended to package.path / package.cpath.
    lua_path = nil,
    lua_cpath = nil,
    mode = 'rfc9989',               -- or 'rfc7489' (PSL discovery, pct honoured)
    psl_file = nil,                 -- rfc7489 mode: a public suffix list file (default: libpsl's)
    pct_as_testing = false,         -- RFC 9989 mode: pct=0 read as t=y when t= is absent
    cache_size = 10000,             -- DNS answers kept per worker
    -- rspamd's resolver does not tell a record's TTL to Lua: answers are kept this long.
    dns_cache_ttl = 300,
    dns_negative_ttl = 60,
    site_script = nil,              -- the site policy script; nil: the documented defaults
    authserv_id = nil,              -- Authentication-Results authserv-id; nil: the host name
    -- true: add `Authentication-Results: <id>; dmarc=...`; false: add none;
    -- 'milter_headers': put the dmarc= entry into the one field milter_headers'
    -- authentication-results routine writes (RFC 8601 §5: one field per authserv-id).
    auth_results = true,
    auth_results_header = 'Authentication-Results',
    folder_header = 'X-DMARC-Folder', -- a `folder` decision: the delivery agent files by it
    score_symbol = 'DMARC_SITE_SCORE', -- a `score` decision: this symbol, weight score_weight
    score_weight = 1.0,
    -- Added to every message evaluated while the site script is broken (it did not load, or
    -- its decide hook failed for this message): the default treatments applied instead.
    site_error_symbol = 'DMARC_SITE_SCRIPT_ERROR',
    site_error_score = 0.0,
    check_local = false,
    check_authed = false,
    -- RFC 9989 §7.4: p=reject is enforced only with other evidence. Any of these symbols on
    -- the message is such evidence (they are checked before DMARC_CHECK).
    evidence_symbols = {},
    -- Actions for the site's `reject` and `defer` decisions.
    actions = {
      reject = 'reject',
      defer = 'soft reject',
    },
    -- rspamd's symbol names (rspamd's dmarc module and lua_auth_results use the same).
    symbols = {
      allow = 'DMARC_POLICY_ALLOW',
      reject = 'DMARC_POLICY_REJECT',
      quarantine = 'DMARC_POLICY_QUARANTINE',
      softfail = 'DMARC_POLICY_SOFTFAIL',
      dnsfail = 'DMARC_DNSFAIL',
      badpolicy = 'DMARC_BAD_POLICY',
      na = 'DMARC_NA',
      spf_allow = 'R_SPF_ALLOW',
      spf_fail = 'R_SPF_FAIL',
      spf_softfail = 'R_SPF_SOFTFAIL',
      spf_neutral = 'R_SPF_NEUTRAL',
      spf_tempfail = 'R_SPF_DNSFAIL',
      spf_permfail = 'R_SPF_PERMFAIL',
      spf_na = 'R_SPF_NA',
      dkim_allow = 'R_DKIM_ALLOW',
      arc_allow = 'ARC_ALLOW',
      arc_reject = 'ARC_REJECT',
      arc_invalid = 'ARC_INVALID',
      arc_dnsfail = 'ARC_DNSFAIL',
    },
    -- Overrides (recipient sets, domains, IPs ...) read from Redis with the CLI's key schema
    -- (docs/redis-keys.md). Servers: `servers` here, else this module's, else `redis {}`.
    -- Off unless enabled: without it, the site script's own overrides and members apply.
    overrides = {
      enabled = false,
      prefix = 'dmarc:',
      tag = 'ovr',
      timeout = 0.5,
      cache_ttl = 10,               -- seconds an entry (or its absence) is reused; 0: never
      cache_size = 10000,           -- keys kept per worker
    },
    -- Aggregate report rows in the reporting schema (docs/report-keys.md), so that
    -- `dmarc report generate` reports on what rspamd collected.
    reporting = {
      enabled = false,
      prefix = 'dmarc:',
      ttl = nil,                    -- the report module's default
      max_rows = nil,
      timeout = 1.0,
      skip_rspamc = true,           -- as rspamd's module: not for rspamc/controller scans
      reporter_address = nil,       -- our own report sender: its mail is never reported on
      max_pending = 20000,          -- rows kept per worker while Redis is down (then dropped,
                                    -- each with a log line)
    },
    -- RFC 9991 failure reports, off by default: queued in Redis (docs/report-keys.md,
    -- "Failure reports"), where `dmarc report send` checks the ruf destinations and
    -- delivers them: the same queue and per-domain rate limit as `dmarc check`.
    failure_reports = {
      enabled = false,
      email = nil,                  -- the reporter address (From of the reports); required
      submitter = nil,              -- the reporting domain (Reporting-MTA); required
      org_name = nil,               -- default: the submitter
      prefix = 'dmarc:',            -- the key prefix `dmarc report send --redis-prefix` reads
      rate_limit = 10,              -- reports per policy domain per window
      rate_window = 3600,           -- seconds
      queue_max = 100,              -- queued reports per policy domain
      queue_ttl = 7 * 86400,        -- seconds a queue outlives its last addition
      redact_key = nil,             -- local parts as a keyed hash instead of "redacted"
      timeout = 1.0,
      skip_rspamc = true,           -- as for rows: not for rspamc/controller scans
    },
    -- When rspamd's DKIM check did not run (its dkim filter is not loaded), verify DKIM with
    -- the engine's libopendkim (dmarc.io). Keys are fetched with rspamd's asynchronous
    -- resolver first, so the verification itself never waits for DNS.
    fallback_dkim = false,
    -- When rspamd's spf module gave no result for a message (it is not loaded), check SPF
    -- with the engine's libspf2 (dmarc.io), every DNS question asked through rspamd's
    -- asynchronous resolver, round by round. With rspamd's spf module loaded its result is
    -- always used. On by default; without dmarc.io it is then off, with a log line.
    fallback_spf = true,
    -- Seconds Redis is left alone after a failure, so a dead Redis costs no time per message.
    redis_backoff = 10,
  }
end

-- Each step below takes the state P and returns true, or nil and why the plugin cannot
-- start (a sentence for the log line `dmarc_engine: module disabled: <why>`).

local function fail(fmt, ...)
  return nil, string.format(fmt, ...)
end

local function prepend_path(field, value)
  if type(value) == 'string' and value ~= '' and not package[field]:find(value, 1, true) then
    package[field] = value .. ';' .. package[field]
  end
end

-- rspamd's own dmarc module registers the same symbols: both cannot run.
local function check_builtin(P)
  local builtin = P.rspamd_config:get_all_opt('dmarc')
  if builtin and builtin.enabled ~= false then
    return fail('the built-in dmarc module is enabled; set `enabled = false;` in local.d/dmarc.conf')
  end
  return true
end

local function load_engine_module(P)
  local s = P.settings
  prepend_path('path', s.lua_path)
  prepend_path('cpath', s.lua_cpath)
  local ok, dmarc = pcall(require, 'dmarc')
  if not ok then
    return fail('cannot load the engine (require "dmarc"): %s; check lua_path and lua_cpath ' ..
      '(a module built for LuaJIT is needed)', dmarc)
  end
  P.dmarc = dmarc
  return true
end

local function check_basics(P)
  local s = P.settings
  if s.mode ~= 'rfc9989' and s.mode ~= 'rfc7489' then
    return fail('mode must be "rfc9989" or "rfc7489", not "%s"', tostring(s.mode))
  end
  if type(s.evidence_symbols) == 'string' then s.evidence_symbols = { s.evidence_symbols } end
  if type(s.evidence_symbols) ~= 'table' then
    return fail('evidence_symbols must be a list of symbol names')
  end
  for _, sym in ipairs(s.evidence_symbols) do
    if type(sym) ~= 'string' then return fail('evidence_symbols must be a list of symbol names') end
  end
  for _, k in ipairs({ 'cache_size', 'dns_cache_ttl', 'dns_negative_ttl', 'redis_backoff' }) do
    if type(s[k]) ~= 'number' or s[k] < 0 then return fail('%s must be a number >= 0', k) end
  end
  for _, k in ipairs({ 'cache_ttl', 'cache_size', 'timeout' }) do
    if type(s.overrides[k]) ~= 'number' or s.overrides[k] < 0 then
      return fail('overrides.%s must be a number >= 0', k)
    end
  end
  if s.auth_results ~= true and s.auth_results ~= false and s.auth_results ~= 'milter_headers' then
    return fail('auth_results must be true, false or "milter_headers", not "%s"',
      tostring(s.auth_results))
  end
  if type(s.site_error_symbol) ~= 'string' or not s.site_error_symbol:find('^[%w_]+$') then
    return fail('site_error_symbol must be a symbol name')
  end
  if type(s.site_error_score) ~= 'number' then return fail('site_error_score must be a number') end
  return true
end

-- set_pre_result raises on an unknown action: refuse it here instead, on every message.
local function check_actions(P)
  local known = {
    reject = true, ['soft reject'] = true, ['rewrite subject'] = true, ['add header'] = true,
    greylist = true, ['no action'] = true, accept = true,
  }
  for name in pairs(P.rspamd_config:get_all_actions() or E) do known[name] = true end
  for _, k in ipairs({ 'reject', 'defer' }) do
    if not known[P.settings.actions[k]] then
      return fail('actions.%s: unknown action "%s"', k, tostring(P.settings.actions[k]))
    end
  end
  return true
end

local function start_engine(P)
  local s, dmarc = P.settings, P.dmarc
  local ok, engine = pcall(dmarc.new, {
    mode = s.mode,
    cache_size = math.floor(s.cache_size),
    pct_as_testing = s.pct_as_testing and true or false,
    psl_file = s.psl_file,
    -- The site's `org` overrides need the real Org Domain of a failing author domain, also
    -- where discovery stopped at its own record (RFC 9989 4.10).
    failure_org_walk = true,
  })
  if not ok then return fail('engine options: %s', engine) end
  P.engine = engine
  P.engine_ctx = engine:ctx(s.mode)
  P.engine_cache = engine:get_cache()
  P.limits = dmarc.limits
  P.resolve = dmarc.resolve
  -- RFC 7489 §6.6.4 pct sampling: each message gets a roll; pct is historic in RFC 9989
  -- mode (RFC 9989 §4.7), where the core never reads it.
  P.sample_pct = s.mode == 'rfc7489'
  return true
end

local LOG_FUNCS = { debug = 'debugm', info = 'infox', warn = 'warnx', error = 'errx' }

--- Where a load error points: 'file:line' from policy.load's message, else the file.
local function error_location(script, msg)
  local where = tostring(msg):match('^(.-:%d+):')
  if where and #where <= 512 then return where end
  return script
end
M.error_location = error_location

-- The site policy: the script, or the documented defaults. Its messages go to rspamd's
-- log, with the task being decided when there is one (P.current_task, set around each
-- decision). Warnings raised while deciding come back in decision.warnings, which the
-- plugin logs once with the task; the sink leaves those out.
local function load_site(P)
  local ok_log, dlog = pcall(require, 'dmarc.util.log')
  local ok_pol, policy = pcall(require, 'dmarc.site.policy')
  if not ok_pol or not ok_log then
    return fail('cannot load dmarc.site.policy: %s', ok_pol and dlog or policy)
  end
  local rspamd_config = P.rspamd_config
  local site_log = dlog.new{
    level = 'info',
    sink = function(level, msg)
      local task = P.current_task
      if task and level == 'warn' then return end
      if level == 'debug' then
        lua_util.debugm(N, task or rspamd_config, '%s', msg)
      else
        rspamd_logger[LOG_FUNCS[level] or 'errx'](task or rspamd_config, '%s: %s', N, msg)
      end
    end,
  }
  local script = P.settings.site_script
  if script then
    local site, err = policy.load(script, { log = site_log })
    if site then
      P.site = site
      return true
    end
    -- Never a reason to evaluate nothing (the built-in module is off): the defaults apply
    -- and every message says so (the site_error_symbol, a log line).
    P.site_error = { script = script, message = tostring(err), where = error_location(script, err) }
  end
  local site, err = policy.new({}, { log = site_log })
  if not site then return fail('site policy defaults: %s', err) end
  P.site = site
  return true
end

local function check_authserv_id(P)
  local s = P.settings
  if not s.authserv_id then s.authserv_id = rspamd_util.get_hostname() or 'localhost' end
  if type(s.authserv_id) ~= 'string' or not s.authserv_id:find('^[%w%.%-_]+$') then
    return fail('authserv_id "%s" is not a token (RFC 8601 §2.2)', tostring(s.authserv_id))
  end
  return true
end

local function setup_overrides(P)
  local o = P.settings.overrides
  if not o.enabled then return true end
  local ok, store = pcall(require, 'dmarc.site.store')
  if not ok then return fail('cannot load dmarc.site.store: %s', store) end
  P.store = store
  local ok_key, kerr = pcall(store.redis_key, 'domain:x', o.prefix, o.tag)
  if not ok_key then return fail('overrides: %s', kerr) end
  P.overrides_redis = lua_redis.parse_redis_server(N, o)
  if not P.overrides_redis then
    rspamd_logger.infox(P.rspamd_config, '%s: no redis servers: overrides come from the site ' ..
      'script only', N)
  else
    P.overrides_redis.timeout = o.timeout
  end
  return true
end

local function setup_reporting(P)
  local r = P.settings.reporting
  if not r.enabled then return true end
  local ok, report = pcall(require, 'dmarc.report.rows')
  if not ok then return fail('reporting: cannot load dmarc.report.rows: %s', report) end
  P.report = report
  if not report.valid_prefix(r.prefix) then
    return fail('reporting: invalid prefix "%s"', tostring(r.prefix))
  end
  P.reporting_redis = lua_redis.parse_redis_server(N, r)
  if not P.reporting_redis then
    return fail('reporting is enabled but no redis servers are configured')
  end
  P.reporting_redis.timeout = r.timeout
  return true
end

local function check_failure_settings(fs, report)
  -- The reporter's identity goes into every report's From and Reporting-MTA (RFC 9991 §3).
  if type(fs.email) ~= 'string' or #fs.email > 254 or not fs.email:find('^[^%s<>@"]+@[%w%.%-_]+$') then
    return fail('failure_reports.email must be the reporter address (dmarc-reports@example.net)')
  end
  if type(fs.submitter) ~= 'string' or not report.valid_domain(fs.submitter) then
    return fail('failure_reports.submitter must be a lowercase domain name')
  end
  if fs.org_name ~= nil and type(fs.org_name) ~= 'string' then
    return fail('failure_reports.org_name must be a string')
  end
  if fs.redact_key ~= nil and (type(fs.redact_key) ~= 'string' or fs.redact_key == '') then
    return fail('failure_reports.redact_key must be a non-empty string')
  end
  if not report.valid_prefix(fs.prefix) then
    return fail('failure_reports: invalid prefix "%s"', tostring(fs.prefix))
  end
  for _, k in ipairs({ 'rate_limit', 'rate_window', 'queue_max', 'queue_ttl' }) do
    if type(fs[k]) ~= 'number' or fs[k] < 1 or fs[k] % 1 ~= 0 then
      return fail('failure_reports.%s must be a whole number >= 1', k)
    end
  end
  if type(fs.timeout) ~= 'number' or fs.timeout <= 0 then
    return fail('failure_reports.timeout must be a number > 0')
  end
  return true
end

local function setup_failure_reports(P)
  local fs = P.settings.failure_reports
  if not fs.enabled then return true end
  local ok, failure = pcall(require, 'dmarc.report.failure')
  if not ok then return fail('failure_reports: cannot load dmarc.report.failure: %s', failure) end
  P.failure = failure
  P.report = P.report or require('dmarc.report.rows')
  local valid, why = check_failure_settings(fs, P.report)
  if not valid then return nil, why end
  P.failure_redis = lua_redis.parse_redis_server(N, fs)
  if not P.failure_redis then
    -- No queue, no report: the rate limit lives in Redis (RFC 9991 §5).
    return fail('failure_reports is enabled but no redis servers are configured')
  end
  P.failure_redis.timeout = fs.timeout
  local ok_new, reporter = pcall(failure.new, {
    enabled = true,
    reporter = { org_name = fs.org_name or fs.submitter, email = fs.email, submitter = fs.submitter },
    prefix = fs.prefix, rate_limit = fs.rate_limit, rate_window = fs.rate_window,
    queue_max = fs.queue_max, queue_ttl = fs.queue_ttl,
    redact = true, redact_key = fs.redact_key, version = P.dmarc._VERSION,
  })
  if not ok_new then return fail('failure_reports: %s', reporter) end
  P.failure_reporter = reporter
  return true
end

local function setup_fallbacks(P)
  local s, opts = P.settings, P.opts
  P.fallback_dkim, P.fallback_spf = false, false
  if not (s.fallback_dkim or s.fallback_spf) then return true end
  local ok_io, dio = pcall(require, 'dmarc.io')
  local ok_auth, auth = pcall(require, 'dmarc.receive.auth')
  if not ok_io or not ok_auth then
    local why = ok_io and auth or dio
    if s.fallback_dkim then
      return fail('fallback_dkim needs dmarc.io (libopendkim), which cannot be loaded: %s', why)
    end
    if opts.fallback_spf ~= nil then
      return fail('fallback_spf needs dmarc.io (libspf2), which cannot be loaded: %s', why)
    end
    -- On by default only: without dmarc.io, SPF comes from rspamd's spf module alone.
    rspamd_logger.infox(P.rspamd_config, '%s: no SPF fallback: dmarc.io cannot be loaded: %s', N, why)
    return true
  end
  P.dio, P.auth = dio, auth
  P.fallback_dkim = s.fallback_dkim and true or false
  P.fallback_spf = s.fallback_spf and true or false
  return true
end

local STEPS = {
  check_builtin, load_engine_module, check_basics, check_actions, start_engine, load_site,
  check_authserv_id, setup_overrides, setup_reporting, setup_failure_reports, setup_fallbacks,
}

--- The plugin's state from its configuration section @opts (rspamd_config:get_all_opt).
-- @return P, or nil and why the plugin cannot start
function M.configure(opts, rspamd_config)
  local P = {
    N = N,
    opts = opts,
    rspamd_config = rspamd_config,
    settings = lua_util.override_defaults(M.defaults(), opts),
  }
  for _, step in ipairs(STEPS) do
    local ok, why = step(P)
    if not ok then return nil, why end
  end
  local s = P.settings
  P.auth_local_conf = { s.check_local, s.check_authed }
  return P
end

return M
