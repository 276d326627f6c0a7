--[[
dmarc_engine: the lua-dmarc engine as rspamd's DMARC module (rspamd 3.4, LuaJIT).

A thin adapter: it gathers the From fields, SPF, DKIM and ARC results and the envelope from
the task, drives the engine's query loop with rspamd's asynchronous resolver, asks the site
policy script what to do, and maps the outcome to rspamd: the symbols of rspamd's own dmarc
module, an action, headers, an Authentication-Results entry, Redis report rows and queued
failure reports. All DMARC logic lives in the engine (lua/dmarc*, core/).

This file registers the plugin; its parts live beside it in dmarc_engine/ and are installed
with it (plugins/rspamd/README.md):

  config.lua           the settings, their checks, the modules and Redis settings they need
  input.lua            what is read from the task; the resolver adapter; SPF/DKIM fallbacks
  decision.lua         evaluate, decide, act (symbols, action, headers)
  reporting.lua        Redis with back-off; aggregate report rows
  failure_reports.lua  RFC 9991 failure reports queued for `dmarc report send`
  check.lua            the same checks for `rspamadm configtest` (a `lua =` rules file)

rspamd's built-in `dmarc` module must be disabled (`local.d/dmarc.conf: enabled = false;`):
both register DMARC_CHECK.
]]

if confighelp then
  return
end

local N = 'dmarc_engine'

local rspamd_logger = require 'rspamd_logger'
local lua_util = require 'lua_util'

local exports = {}

-- This file's directory: rspamd loads a plugin as a chunk named '@<path>'.
local DIR = (debug.getinfo(1, 'S').source or ''):match('^@(.*)/[^/]*$') or '.'

--- Run part @name of the plugin (DIR/dmarc_engine/<name>.lua) with @... as its arguments.
local function part(name, ...)
  local chunk, err = loadfile(DIR .. '/' .. N .. '/' .. name .. '.lua')
  if not chunk then error(N .. ': ' .. tostring(err), 0) end
  return chunk(...)
end

local function disable(why)
  rspamd_logger.errx(rspamd_config, '%s: module disabled: %s', N, why)
  lua_util.disable_module(N, 'config')
  exports.disabled = why
  return exports
end

local opts = rspamd_config:get_all_opt(N)
if not opts then
  -- No section: not configured (rspamd logs that the module is not enabled).
  return exports
end

local config = part('config')
local P, why = config.configure(opts, rspamd_config)
if not P then return disable(why) end
local settings = P.settings

local input = part('input', P)
local reporting = part('reporting', P)
local failure_reports = part('failure_reports', P, reporting)
local decision = part('decision', P, input, reporting, failure_reports)

if settings.auth_results == 'milter_headers' then
  local ok, err = decision.contribute_to_auth_results()
  if not ok then return disable('auth_results = "milter_headers": ' .. err) end
end

if P.site_error then
  -- Messages are still evaluated (the built-in module is off): with the default
  -- treatments, each one marked. `rspamadm configtest` fails on this (check.lua).
  rspamd_logger.errx(rspamd_config, '%s: site script %s did not load: %s; every message is ' ..
    'evaluated with the default treatments and gets %s', N, P.site_error.script,
    P.site_error.message, settings.site_error_symbol)
end

--- The DMARC_CHECK callback: read the task, complete SPF and DKIM when rspamd did not
-- check them, then evaluate, decide and act (decision.lua).
local function dmarc_check(task)
  if lua_util.is_skip_local_or_authed(task, P.auth_local_conf) then
    rspamd_logger.infox(task, '%s: skip DMARC checks for local networks and authorized users', N)
    return
  end
  local inp, env, rspamd_spf = input.read(task)
  local ctx = input.ctx_of(task)
  local function with_dkim()
    if inp.dkim then return decision.run(task, inp, ctx) end
    input.dkim_fallback(task, function(results)
      inp.dkim = results
      decision.run(task, inp, ctx)
    end)
  end
  if rspamd_spf or not P.fallback_spf then return with_dkim() end
  input.spf_fallback(task, env, function(spf)
    inp.spf = spf
    with_dkim()
  end)
end

-- Register like rspamd's dmarc module: DMARC_CHECK (other modules depend on that name),
-- virtual children for the results, after SPF, DKIM and ARC.
local function register()
  local id = rspamd_config:register_symbol({
    name = 'DMARC_CHECK',
    type = 'callback',
    callback = dmarc_check,
  })
  rspamd_config:register_symbol({ name = 'DMARC_CALLBACK', type = 'virtual,skip', parent = id })
  for _, key in ipairs({ 'allow', 'reject', 'quarantine', 'softfail', 'dnsfail', 'badpolicy', 'na' }) do
    rspamd_config:register_symbol({
      name = settings.symbols[key],
      parent = id,
      type = 'virtual',
      group = 'policies',
      groups = { 'dmarc' },
    })
  end
  rspamd_config:register_symbol({
    name = settings.score_symbol,
    parent = id,
    type = 'virtual',
    score = settings.score_weight,
    group = 'policies',
    groups = { 'dmarc' },
    description = 'DMARC site policy: score treatment',
  })
  rspamd_config:register_symbol({
    name = settings.site_error_symbol,
    parent = id,
    type = 'virtual',
    score = settings.site_error_score,
    group = 'policies',
    groups = { 'dmarc' },
    description = 'DMARC site script broken: the default treatments applied',
  })
  rspamd_config:register_dependency('DMARC_CHECK', settings.symbols.spf_allow)
  rspamd_config:register_dependency('DMARC_CHECK', settings.symbols.dkim_allow)
  rspamd_config:register_dependency('DMARC_CHECK', 'ARC_CHECK')
  for _, sym in ipairs(settings.evidence_symbols) do
    rspamd_config:register_dependency('DMARC_CHECK', sym)
  end
end
register()

rspamd_logger.infox(rspamd_config, '%s: enabled, mode %s, site %s, overrides %s, reporting %s, ' ..
  'failure reports %s, fallbacks: spf %s, dkim %s', N, settings.mode,
  P.site_error and 'defaults (script broken)' or settings.site_script or 'defaults',
  P.overrides_redis and 'redis' or 'none', P.reporting_redis and 'redis' or 'off',
  P.failure_reporter and 'redis' or 'off', P.fallback_spf and 'on' or 'off',
  P.fallback_dkim and 'on' or 'off')

-- For the unit tests (tests/plugin): the pure helpers and the callback.
for _, m in ipairs({ input, reporting, decision }) do
  for k, v in pairs(m) do
    if type(v) == 'function' or type(v) == 'table' then exports[k] = v end
  end
end
exports.failure_report_possible = failure_reports.possible
exports.dmarc_check = dmarc_check
exports.settings = settings
exports.site_error = P.site_error
return exports
