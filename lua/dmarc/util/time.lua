--- UTC days as epoch seconds, independent of the process time zone.
--
--   local time = require 'dmarc.util.time'
--   time.parse_day('2025-11-21')  --> 1763683200
-- @module dmarc.util.time

local M = {}

--- Start of the UTC day "YYYYMMDD" in epoch seconds; nil if malformed.
function M.day_start(day)
  local y, m, d = tostring(day):match('^(%d%d%d%d)(%d%d)(%d%d)$')
  if not y then return nil end
  y, m, d = tonumber(y), tonumber(m), tonumber(d)
  if m < 1 or m > 12 or d < 1 or d > 31 then return nil end
  -- Days from the civil date (proleptic Gregorian), independent of the
  -- process time zone (os.time would apply it).
  local yy = m <= 2 and y - 1 or y
  local era = math.floor(yy / 400)
  local yoe = yy - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return (era * 146097 + doe - 719468) * 86400
end

--- A YYYY-MM-DD day as the epoch second of its start (00:00 UTC).
-- @param s {any} goes through tostring (nil is no day)
-- @return {number} or nil for anything else
function M.parse_day(s)
  local y, m, d = tostring(s or ''):match('^(%d%d%d%d)%-(%d%d)%-(%d%d)$')
  if not y then return nil end
  return M.day_start(y .. m .. d)
end

return M
