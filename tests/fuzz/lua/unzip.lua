-- Fuzz target: the zip reader (dmarc.xml.unzip): central directory, local headers, stored and
-- deflated entries, the choice of the report entry, size and ratio bounds.
local x = require 'dmarc.xml'
local c = require 'common'

return function(data)
  local out, err, code = x.unzip(data, { max_output = 1024 * 1024, max_ratio = 200 })
  if not out then
    c.check_fail('unzip', out, err, code)
    return
  end
  c.check(type(out) == 'string' and #out <= 1024 * 1024, 'output bound')
end
