-- Fuzz target: the gzip / zlib / raw deflate reader (dmarc.xml.inflate); the first byte picks
-- the format and a small output cap so the ratio and size bounds are both reached.
local x = require 'dmarc.xml'
local c = require 'common'

local FORMATS = { 'auto', 'gzip', 'zlib', 'raw' }
local TMP = os.tmpname()

-- A gzip / zlib file parsed as it is inflated (dmarc.xml.map with inflate) reads as its
-- whole inflate would: the same tree, or a failure when the inflate fails.
local function streamed(data, fmt, cap, out)
  local f = assert(io.open(TMP, 'wb'))
  f:write(data)
  f:close()
  local doc, err, code = x.map(TMP, { inflate = fmt, max_output = cap, max_ratio = 200 })
  if not doc then
    c.check_fail('map', doc, err, code)
    return
  end
  local t, i, pcode = x.parse(doc, { defer_records = true })
  if not out then
    c.check(t == nil and type(pcode) == 'string', 'streamed parse of a failed inflate fails')
    doc:close()
    return
  end
  local t2, i2, pcode2 = x.parse((out:gsub('^[ \t\n\v\f\r]+', '')), { defer_records = true })
  -- (A document with both broken XML and a bad bound may fail by either: the streamed
  -- parse meets them in text order.)
  c.check((t == nil) == (t2 == nil), 'streamed parse as the string', tostring(pcode),
          tostring(pcode2))
  c.check(t == nil or (i.elements == i2.elements and i.deferred == i2.deferred),
          'streamed parse counts as the string')
  doc:close()
end

return function(data)
  if #data < 1 then return end
  local sel = data:byte(1)
  local fmt = FORMATS[sel % 4 + 1]
  local cap = (sel >= 128) and 4096 or 1024 * 1024
  local out, err, code = x.inflate(data:sub(2), { format = fmt, max_output = cap, max_ratio = 200 })
  if fmt == 'gzip' or fmt == 'zlib' then streamed(data:sub(2), fmt, cap, out) end
  if not out then
    c.check_fail('inflate', out, err, code)
    return
  end
  c.check(type(out) == 'string' and #out <= cap, 'output bound', tostring(#out))
  -- The ratio is judged once the output passes 1 MiB (small outputs may be highly compressed).
  c.check(#out <= 1024 * 1024 or #out <= 200 * (#data - 1), 'ratio bound')
end
