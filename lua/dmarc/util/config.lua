--- Config files: a Lua chunk run with no globals, returning a table of options.
--
--   local config = require 'dmarc.util.config'
--   local conf, err = config.load(path)
-- @module dmarc.util.config

local files = require 'dmarc.util.files'

local M = {}

--- A config file: a Lua chunk run with no globals at all (no os, no io, no require),
-- returning a table of options.
-- @param path {string}
-- @return {table} the options, or nil, message
function M.load(path)
  local text, err = files.read(path)
  if not text then return nil, err end
  local env = {}
  local chunk, perr
  if setfenv then
    chunk, perr = loadstring(text, '@' .. path) -- luacheck: ignore (LuaJIT)
    if chunk then setfenv(chunk, env) end
  else
    chunk, perr = load(text, '@' .. path, 't', env)
  end
  if not chunk then return nil, perr end
  local ok, conf = pcall(chunk)
  if not ok then return nil, tostring(conf) end
  if type(conf) ~= 'table' then return nil, path .. ': must return a table' end
  return conf
end

return M
