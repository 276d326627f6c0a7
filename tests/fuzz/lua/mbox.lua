-- Fuzz target: the mbox splitter of `dmarc report ingest` (dmarc.owner.ingest.each_mbox_message),
-- fed in small chunks so that separators straddle them, under small bounds.
local ingest = require 'dmarc.owner.ingest'
local c = require 'common'

local OPTS = { max_input = 4096, max_messages = 64, max_mbox = 1024 * 1024 }

return function(data)
  local pos, calls, last = 1, 0, 0
  local function read()
    if pos > #data then return nil end
    local n = 1 + (#data + pos) % 97
    local chunk = data:sub(pos, pos + n - 1)
    pos = pos + n
    return chunk
  end
  ingest.each_mbox_message(read, OPTS, function(index, msg, err, code)
    calls = calls + 1
    c.check(index == last + 1, 'messages in order')
    last = index
    if msg then
      c.check(type(msg) == 'string' and #msg <= OPTS.max_input, 'message size bound')
    else
      c.check(type(err) == 'string' and code == 'limit', 'a bound, said')
    end
  end)
  c.check(calls <= OPTS.max_messages + 1, 'message count bound')
end
