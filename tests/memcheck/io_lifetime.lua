-- Lifetimes across the dmarc.io objects: answers that outlive their resolver, a resolver
-- closed while answers are pending collection, checkers closed twice. Run under valgrind
-- by tests/memcheck/run: any invalid read or leak fails the suite.
local io_mod = require 'dmarc.io'
local zone = table.concat({
  '$ORIGIN example.com.',
  '$TTL 300',
  '@ IN TXT "v=spf1 ip4:192.0.2.0/24 -all"',
  '_dmarc IN TXT "v=DMARC1; p=reject"',
  'www IN A 192.0.2.1',
}, '\n')
for _ = 1, 20 do
  local r = assert(io_mod.resolver{ zone_text = zone, origin = 'example.com' })
  local answers = {}
  for _, q in ipairs({ { '_dmarc.example.com', 'TXT' }, { 'www.example.com', 'A' },
                       { 'nope.example.com', 'TXT' } }) do
    answers[#answers + 1] = { r:query(q[1], q[2]) }
  end
  r:close()
  r:close()
  answers = nil -- luacheck: ignore
  collectgarbage()
  collectgarbage()
end
local chk = io_mod.spf_checker{}
chk:close()
chk:close()
collectgarbage()
print('io lifetimes ok')
