-- A real 3-master Redis Cluster on loopback for the *cluster*_spec suites:
-- started in a directory of its own, waited for until every node knows
-- every slot, stopped by PID. Each suite passes ports of its own so the
-- suites never share a cluster.
local h = dofile('tests/integration/report_helpers.lua')
local socket = require 'socket'

local M = {}

M.READY_TRIES = 200 -- 0.1 s each

--- Start the cluster; returns { pids = {...}, addrs = {"127.0.0.1:P", ...} }.
function M.start(ports, dir)
  local c = { pids = {}, addrs = {} }
  for _, p in ipairs(ports) do
    c.pids[#c.pids + 1] = h.start_redis(p, dir .. '/' .. p, '--cluster-enabled yes'
                                        .. ' --cluster-config-file nodes-' .. p .. '.conf'
                                        .. ' --appendonly no')
    c.addrs[#c.addrs + 1] = '127.0.0.1:' .. p
  end
  local status, out = h.run('redis-cli --cluster create ' .. table.concat(c.addrs, ' ')
                            .. ' --cluster-yes 2>&1')
  assert(status == 0, out)
  -- Ready when every node says so (the others learn of the slots a little
  -- after the node that was asked).
  local ok = false
  for _ = 1, M.READY_TRIES do
    ok = true
    for _, p in ipairs(ports) do
      local _, info = h.run('redis-cli -p ' .. p .. ' cluster info')
      if not info:find('cluster_state:ok', 1, true) then ok = false end
      local _, slots = h.run('redis-cli -p ' .. p .. ' cluster slots')
      if select(2, slots:gsub('127%.0%.0%.1', '')) < #ports then ok = false end
    end
    if ok then break end
    socket.sleep(0.1)
  end
  assert(ok, 'cluster did not become ready')
  return c
end

function M.stop(c)
  for _, pid in ipairs(c and c.pids or {}) do h.stop(pid) end
end

--- The number of keys each master holds (redis-cli DBSIZE per port).
function M.dbsizes(ports)
  local out = {}
  for i, p in ipairs(ports) do
    local _, size = h.run('redis-cli -p ' .. p .. ' dbsize')
    out[i] = tonumber(size:match('%d+'))
  end
  return out
end

return M
