--[[
tests/soak/heap.lua: a rules file (`lua = ...;`) the soak gives every rspamd instance it
runs. Each scanner worker writes its Lua heap (collectgarbage('count'), kB) to
<run dir>/heap.<pid> every second, so that tests/soak/run can set the Lua heap beside the
worker's RSS at each sample. The soak renders @RUN@ (the instance's run directory).
]]
local rspamd_config = rawget(_G, 'rspamd_config')
if rawget(_G, 'rspamadm') ~= nil or not rspamd_config then return end
local dir = '@RUN@'

local function own_pid()
  local f = io.open('/proc/self/stat')
  if not f then return nil end
  local pid = f:read('*n')
  f:close()
  return pid
end

rspamd_config:add_on_load(function(_, ev_base, worker)
  if worker and worker.is_scanner and not worker:is_scanner() then return end
  local pid = own_pid()
  if not pid then return end
  local path = string.format('%s/heap.%d', dir, pid)
  rspamd_config:add_periodic(ev_base, 1.0, function()
    local f = io.open(path, 'w')
    if f then
      f:write(string.format('%d\n', math.floor(collectgarbage('count'))))
      f:close()
    end
    return true
  end, false)
end)
