--[[
dmarc_engine/check.lua: make `rspamadm configtest` fail when the plugin would not start as
configured, or would start without its site script.

rspamd 3.4's configtest does not fail for an error in a Lua plugin (only with --strict, for
any error logged); it does fail when a rules file named by a top-level `lua = "FILE";`
raises while the configuration is read. This is such a file (plugins/rspamd/README.md,
"Install"). It runs the plugin's own configuration checks (config.lua) and raises with the
reason, naming the site script's file and line. In rspamd itself it does nothing: there a
site script that does not load gives the default treatments, marked on every message, so no
message goes unevaluated.
]]

-- rspamadm sets the global `rspamadm`; rspamd's main process and workers do not.
if rawget(_G, 'rspamadm') == nil or rawget(_G, 'rspamd_config') == nil then return end

local N = 'dmarc_engine'
local opts = rspamd_config:get_all_opt(N)
if not opts or opts.enabled == false then return end

-- rspamd loads a rules file from its own directory, with that chunk name.
local source = debug.getinfo(1, 'S').source or ''
local dir = source:match('^@(.*)/[^/]*$') or '.'
local chunk, err = loadfile(dir .. '/config.lua')
if not chunk then error(N .. ': ' .. tostring(err), 0) end
local config = chunk()

local P, why = config.configure(opts, rspamd_config)
if not P then error(N .. ': the plugin would not start: ' .. why, 0) end
if P.site_error then
  error(string.format('%s: site script %s does not load: %s', N, P.site_error.script,
    P.site_error.message), 0)
end
