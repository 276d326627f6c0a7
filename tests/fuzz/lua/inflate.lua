-- Fuzz target: the gzip / zlib / raw deflate reader (dmarc.xml.inflate); the first byte picks
-- the format and a small output cap so the ratio and size bounds are both reached.
local x = require 'dmarc.xml'
local c = require 'common'

local FORMATS = { 'auto', 'gzip', 'zlib', 'raw' }

return function(data)
  if #data < 1 then return end
  local sel = data:byte(1)
  local fmt = FORMATS[sel % 4 + 1]
  local cap = (sel >= 128) and 4096 or 1024 * 1024
  local out, err, code = x.inflate(data:sub(2), { format = fmt, max_output = cap, max_ratio = 200 })
  if not out then
    c.check_fail('inflate', out, err, code)
    return
  end
  c.check(type(out) == 'string' and #out <= cap, 'output bound', tostring(#out))
  -- The ratio is judged once the output passes 1 MiB (small outputs may be highly compressed).
  c.check(#out <= 1024 * 1024 or #out <= 200 * (#data - 1), 'ratio bound')
end
