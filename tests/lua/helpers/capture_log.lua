-- A dmarc.util.log logger that keeps what it is told, for the tests: returns the logger and
-- the list of { level =, msg = } entries it fills.
local log = require 'dmarc.util.log'

return function(level)
  local entries = {}
  local logger = log.new{
    level = level or 'debug',
    sink = function(lvl, msg) entries[#entries + 1] = { level = lvl, msg = msg } end,
  }
  return logger, entries
end
