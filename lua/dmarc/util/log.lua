--- A tiny injectable logger.
-- Everything in lua/dmarc/ that wants to say something takes a logger instead of writing to
-- stderr itself, so the CLI, the rspamd plugin (rspamd_logger) and the tests each decide where
-- messages go.
--
--   local log = require 'dmarc.util.log'
--   local logger = log.new{ sink = function(level, msg) ... end, level = 'info' }
--   logger:warn('redis %s unreachable', addr)
--
-- A sink is a function (level, message); levels are 'debug' < 'info' < 'warn' < 'error'.
-- @module dmarc.util.log
local M = {}

local LEVELS = { debug = 1, info = 2, warn = 3, error = 4 }
M.LEVELS = LEVELS

local Logger = {}
Logger.__index = Logger

-- Formats like string.format, but a message without arguments is taken literally, so a
-- message that contains '%' (an error text, a comment) is never misread as a format.
local function render(fmt, ...)
  if select('#', ...) == 0 then return tostring(fmt) end
  local ok, text = pcall(string.format, fmt, ...)
  if ok then return text end
  return tostring(fmt)
end

function Logger:log(level, fmt, ...)
  if (LEVELS[level] or LEVELS.error) < self.threshold then return end
  self.sink(level, render(fmt, ...))
end

function Logger:debug(fmt, ...) self:log('debug', fmt, ...) end
function Logger:info(fmt, ...) self:log('info', fmt, ...) end
function Logger:warn(fmt, ...) self:log('warn', fmt, ...) end
function Logger:error(fmt, ...) self:log('error', fmt, ...) end

local function stderr_sink(level, msg)
  io.stderr:write('dmarc: ', level, ': ', msg, '\n')
end

--- New logger.
-- @param opts {sink=function(level, msg), level='info'}; both optional (default: stderr, info).
-- @return logger
function M.new(opts)
  opts = opts or {}
  local threshold = LEVELS[opts.level or 'info']
  if not threshold then error('dmarc.util.log: unknown level ' .. tostring(opts.level), 2) end
  if opts.sink ~= nil and type(opts.sink) ~= 'function' then
    error('dmarc.util.log: sink must be a function', 2)
  end
  return setmetatable({ sink = opts.sink or stderr_sink, threshold = threshold }, Logger)
end

--- A logger that drops everything.
function M.null()
  return M.new{ sink = function() end, level = 'error' }
end

--- True when x looks like a logger (has the four level methods).
function M.is_logger(x)
  if type(x) ~= 'table' then return false end
  for name in pairs(LEVELS) do
    if type(x[name]) ~= 'function' then return false end
  end
  return true
end

return M
