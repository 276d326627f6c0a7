-- Fuzz target: one layer of a compressed file unpacked into a file (dmarc.xml.unpack: the
-- zip directory and entries read with pread, gzip/zlib inflated a window at a time). The
-- first byte picks zip, gzip or zlib; the verdict and the bytes must be those of xml.unzip
-- and xml.inflate on the same data held whole.
local x = require 'dmarc.xml'
local c = require 'common'

local FORMATS = { 'zip', 'gzip', 'zlib' }
local SRC, DST = os.tmpname(), os.tmpname()
local CAP = 1024 * 1024

local function read(path)
  local f = assert(io.open(path, 'rb'))
  local d = f:read('a')
  f:close()
  return d
end

return function(data)
  if #data < 1 then return end
  local fmt = FORMATS[data:byte(1) % 3 + 1]
  local body = data:sub(2)
  local f = assert(io.open(SRC, 'wb'))
  f:write(body)
  f:close()
  local want
  if fmt == 'zip' then
    want = { x.unzip(body, { max_output = CAP, max_ratio = 200 }) }
  else
    want = { x.inflate(body, { format = fmt, max_output = CAP, max_ratio = 200 }) }
  end
  local got = { x.unpack(SRC, DST, { format = fmt, max_output = CAP, max_ratio = 200 }) }
  if not got[1] then
    c.check_fail('unpack', got[1], got[2], got[3])
    -- (A bomb may be judged a step apart: the file is read in windows, the string whole.)
    c.check(want[1] == nil, 'unpack failed where the whole read did not', fmt, got[3])
    c.check(want[3] == got[3] or want[3] == 'bomb' or got[3] == 'bomb', 'same code', fmt,
            tostring(want[3]), tostring(got[3]))
    return
  end
  c.check(want[1] ~= nil, 'unpack read what the whole read refused', fmt, tostring(want[3]))
  local out = read(DST)
  c.check(out == want[1] and got[2] == #out, 'same bytes', fmt)
  c.check(fmt ~= 'zip' or got[3] == want[2], 'same entry name')
end
