-- Every shared evaluation vector through dmarc.evaluate, and a few binding lifetimes
-- (evaluations outliving their context and cache), under valgrind (tests/memcheck/run).
local cjson = require 'cjson'
local dmarc = require 'dmarc'
local core = require 'dmarc.core'
local n = 0
for line in io.lines('tests/vectors/eval.jsonl') do
  if line:sub(1, 1) == '{' then
    local v = cjson.decode(line)
    local input = v.input
    if input.roll == nil then input.roll = 0 end
    local out = dmarc.evaluate(input)
    assert(out and out.result, v.name)
    n = n + 1
  end
end
local ctx = core.new{ mode = 'rfc9989' }
local cache = core.new_cache(16)
local ev = ctx:eval(cache)
ctx:close()
cache:close()
ev:add_from('a@example.com')
assert(ev:run() == false)
ev:answer('nxdomain', {}, 60)
ev:run()
ev = nil -- luacheck: ignore
collectgarbage()
collectgarbage()
print(('evaluated %d vectors'):format(n))
