--- A small Redis Cluster router on top of `dmarc.redis` (or any client with
-- the same :command / :pipeline / :close contract).
--
-- Commands go to the master owning the CRC16 slot of their key (or of the
-- key's {hash tag}); MOVED updates the slot map and retries, ASK retries once
-- on the named node after ASKING. A pipeline is split per node and the
-- replies are put back in the caller's order, so the router has the same
-- shape as one connection and the report-row writer uses either unchanged.
--
-- Replies follow dmarc.redis: values, `false` for nil inside tables, and
-- {err = message} for an error reply inside a pipeline.
local M = {}

M.SLOTS = 16384
M.MAX_REDIRECTS = 5       -- MOVED/ASK hops followed per command
M.MAX_NODES = 64          -- masters accepted from CLUSTER SLOTS (bounded reply walk)
M.MAX_TRANSACTION = 64    -- commands looked through for the key of one MULTI ... EXEC

-- ---------------------------------------------------------------------------
-- CRC16/XMODEM (polynomial 0x1021), as the Redis Cluster specification
-- defines the key slot: slot = crc16(key or hash tag) mod 16384.

local bxor
do
  local ok, bit = pcall(require, 'bit')  -- LuaJIT
  if ok and type(bit) == 'table' and bit.bxor then
    bxor = bit.bxor
  else
    -- Lua 5.3+ operators, compiled only there (LuaJIT would not parse them).
    bxor = load('return function(a, b) return a ~ b end')()
  end
end

local CRC_TABLE = {}
for i = 0, 255 do
  local crc = i * 256
  for _ = 1, 8 do
    if crc >= 0x8000 then
      crc = bxor((crc * 2) % 0x10000, 0x1021)
    else
      crc = (crc * 2) % 0x10000
    end
  end
  CRC_TABLE[i] = crc
end

function M.crc16(s)
  local crc = 0
  for i = 1, #s do
    local idx = bxor(math.floor(crc / 256), s:byte(i)) % 256
    crc = bxor((crc * 256) % 0x10000, CRC_TABLE[idx])
  end
  return crc
end

--- The hash slot of a key: only the part between the first `{` and the
-- next `}` counts when that part is not empty.
function M.key_slot(key)
  local s = key:find('{', 1, true)
  if s then
    local e = key:find('}', s + 1, true)
    if e and e > s + 1 then key = key:sub(s + 1, e - 1) end
  end
  return M.crc16(key) % M.SLOTS
end

-- The key a command addresses (nil: any node will do).
local function command_key(cmd)
  local name = tostring(cmd[1]):upper()
  if name == 'EVAL' or name == 'EVALSHA' then
    if (tonumber(cmd[3]) or 0) > 0 then return cmd[4] end
    return nil
  end
  if name == 'PING' or name == 'INFO' or name == 'SCRIPT' or name == 'CLUSTER'
      or name == 'ASKING' or name == 'DBSIZE' or name == 'SCAN' or name == 'FLUSHALL' then
    return nil
  end
  return cmd[2]
end
M.command_key = command_key

-- ---------------------------------------------------------------------------

local Router = {}
Router.__index = Router

local function parse_addr(s)
  local host, port = tostring(s):match('^%[?([^%]]+)%]?:(%d+)$')
  if not host then return nil end
  return host, tonumber(port)
end
M.parse_addr = parse_addr

--- A router.
-- @param opts {table} nodes (array of "host:port" seeds), connect
--   (function(host, port) → conn or nil, msg, code; default dmarc.redis with
--   opts.timeout and opts.password), timeout, password (every node's; Cluster has
--   no SELECT, so there is no db)
-- @return router, or nil, msg, code when no seed answers CLUSTER SLOTS
function M.new(opts)
  if type(opts) ~= 'table' or type(opts.nodes) ~= 'table' or #opts.nodes == 0 then
    error('cluster.new: nodes (array of "host:port") expected', 2)
  end
  local connect = opts.connect
  if not connect then
    local redis = require 'dmarc.redis'
    connect = function(host, port)
      return redis.connect { host = host, port = port, timeout = opts.timeout or 1,
                             password = opts.password }
    end
  end
  local self = setmetatable({ seeds = opts.nodes, connect = connect, conns = {},
                              slots = {}, masters = {} }, Router)
  local ok, err, code = self:refresh()
  if not ok then return nil, err, code end
  return self
end

function Router:_conn(addr)
  local c = self.conns[addr]
  if c and not (c.is_broken and c:is_broken()) then return c end
  if c then pcall(c.close, c) end
  self.conns[addr] = nil
  local host, port = parse_addr(addr)
  if not host then return nil, 'bad node address ' .. tostring(addr), 'invalid' end
  local conn, err, code = self.connect(host, port)
  if not conn then return nil, err, code end
  self.conns[addr] = conn
  return conn
end

--- Reload the slot map (CLUSTER SLOTS) from any reachable node.
function Router:refresh()
  local tried = {}
  local candidates = {}
  for _, a in ipairs(self.masters) do candidates[#candidates + 1] = a end
  for _, a in ipairs(self.seeds) do candidates[#candidates + 1] = a end
  local last_err, last_code = 'no cluster node reachable', 'io'
  for _, addr in ipairs(candidates) do
    if not tried[addr] then
      tried[addr] = true
      local conn, err, code = self:_conn(addr)
      if conn then
        local reply
        reply, err, code = conn:command('CLUSTER', 'SLOTS')
        if type(reply) == 'table' then
          local slots, masters, seen = {}, {}, {}
          for i, range in ipairs(reply) do
            if i > M.SLOTS then break end
            local first, last, node = tonumber(range[1]), tonumber(range[2]), range[3]
            if first and last and type(node) == 'table' and first >= 0 and last < M.SLOTS then
              local host = node[1]
              if host == '' then host = parse_addr(addr) end
              local a = host .. ':' .. tostring(node[2])
              if not seen[a] and #masters < M.MAX_NODES then
                seen[a] = true
                masters[#masters + 1] = a
              end
              for s = first, last do slots[s] = a end
            end
          end
          if #masters > 0 then
            self.slots, self.masters = slots, masters
            table.sort(self.masters)
            return true
          end
          err, code = 'CLUSTER SLOTS gave no slot ranges', 'redis'
        end
      end
      last_err, last_code = err or last_err, code or last_code
    end
  end
  return nil, last_err, last_code
end

function Router:_node_for(cmd, route_key)
  local key = route_key or command_key(cmd)
  if key == nil then return self.masters[1] end
  return self.slots[M.key_slot(tostring(key))] or self.masters[1]
end

-- A redirection error: 'MOVED 3999 127.0.0.1:6381' / 'ASK ...'.
local function redirect(reply)
  if type(reply) ~= 'table' or type(reply.err) ~= 'string' then return nil end
  local kind, slot, addr = reply.err:match('^(%u+) (%d+) (%S+)')
  if kind == 'MOVED' or kind == 'ASK' then return kind, tonumber(slot), addr end
  return nil
end

local function command_name(cmd)
  return tostring(cmd[1]):upper()
end

-- MULTI, EXEC and DISCARD name no key, yet must reach the node of the commands between
-- them (a transaction runs on one node, and all its keys share a slot). Returns the key each
-- of them is routed by (the first key inside its transaction), and for every command of a
-- transaction the index of its MULTI.
local function transaction_keys(cmds)
  local route, tx = {}, {}
  local i = 1
  while i <= #cmds do
    if command_name(cmds[i]) == 'MULTI' then
      local key, last = nil, nil
      for j = i + 1, math.min(#cmds, i + M.MAX_TRANSACTION) do
        local name = command_name(cmds[j])
        if name == 'EXEC' or name == 'DISCARD' then
          last = j
          break
        end
        key = key or command_key(cmds[j])
      end
      if key ~= nil then
        route[i] = key
        if last then route[last] = key end
        for j = i, last or i do tx[j] = i end
      end
      i = (last or i) + 1
    else
      i = i + 1
    end
  end
  return route, tx
end
M.transaction_keys = transaction_keys

-- The pending commands grouped by the node that serves them, nodes in first-seen order.
function Router:_by_node(pending)
  local by_node, order = {}, {}
  for _, t in ipairs(pending) do
    local addr = t.ask or self:_node_for(t.cmd, t.key)
    if not by_node[addr] then
      by_node[addr] = {}
      order[#order + 1] = addr
    end
    local list = by_node[addr]
    list[#list + 1] = t
  end
  return by_node, order
end

-- The replies of one node's batch: each one into replies, or (a redirection) into again.
function Router:_take_replies(list, res, replies, again)
  -- A transaction sent to a node that no longer owns its slot was refused there
  -- (MOVED for its commands, EXECABORT for its EXEC): the whole of it is sent again,
  -- never its commands one by one outside the transaction.
  local got, moved_tx = {}, {}
  local j = 0
  for k, t in ipairs(list) do
    if t.ask then j = j + 1 end
    j = j + 1
    got[k] = res[j]
    local kind, slot, target = redirect(got[k])
    if kind == 'MOVED' then
      self.slots[slot] = target
      self.stale = true
      if t.tx then moved_tx[t.tx] = true end
    end
  end
  for k, t in ipairs(list) do
    local r = got[k]
    local kind, _, target = redirect(r)
    if t.tx and moved_tx[t.tx] then
      again[#again + 1] = { i = t.i, cmd = t.cmd, key = t.key, tx = t.tx }
    elseif kind == 'MOVED' then
      again[#again + 1] = { i = t.i, cmd = t.cmd, key = t.key }
    elseif kind == 'ASK' then
      again[#again + 1] = { i = t.i, cmd = t.cmd, key = t.key, ask = target }
    else
      replies[t.i] = r
    end
  end
end

-- One round: every pending command sent to its node, one pipeline per node.
-- @return the commands to send again (redirected)
function Router:_round(pending, replies)
  local by_node, order = self:_by_node(pending)
  local again = {}
  for _, addr in ipairs(order) do
    local list = by_node[addr]
    local conn, err = self:_conn(addr)
    local batch = {}
    for _, t in ipairs(list) do
      if t.ask then batch[#batch + 1] = { 'ASKING' } end
      batch[#batch + 1] = t.cmd
    end
    local res
    if conn then res, err = conn:pipeline(batch) end
    if not res then
      for _, t in ipairs(list) do replies[t.i] = { err = 'io: ' .. tostring(err) } end
      self.stale = true
    else
      self:_take_replies(list, res, replies, again)
    end
  end
  return again
end

--- Send commands; same contract as dmarc.redis conn:pipeline(), except that
-- a node that cannot be reached gives {err=...} replies for its commands
-- only, so the caller can retry exactly those. A MULTI ... EXEC goes to the
-- node of its keys, so the override store's transactions work unchanged.
function Router:pipeline(cmds)
  local replies = {}
  local pending = {}
  local route, tx = transaction_keys(cmds)
  for i = 1, #cmds do pending[i] = { i = i, cmd = cmds[i], key = route[i], tx = tx[i] } end
  for _ = 0, M.MAX_REDIRECTS do
    if #pending == 0 then break end
    pending = self:_round(pending, replies)
  end
  for _, t in ipairs(pending) do replies[t.i] = { err = 'too many redirections' } end
  if self.stale then
    self.stale = false
    self:refresh()
  end
  return replies
end

--- One command; same contract as dmarc.redis conn:command().
function Router:command(...)
  local cmd = { ... }
  local r = self:pipeline({ cmd })[1]
  if type(r) == 'table' and r.err and r[1] == nil then
    local code = r.err:match('^io: ') and 'io' or 'redis'
    return nil, r.err, code
  end
  if r == false then return nil end
  return r
end

--- Never broken as a whole: each node's connection is reopened when it is
-- next needed, and a node that stays down gives error replies for its own
-- commands. (Callers that hold one connection per run ask this.)
function Router.is_broken()
  return false
end

--- Every master's address, sorted.
function Router:nodes()
  local out = {}
  for i, a in ipairs(self.masters) do out[i] = a end
  return out
end

--- Run a command on one node (for SCAN, which is per node in a cluster).
function Router:command_on(addr, ...)
  local conn, err, code = self:_conn(addr)
  if not conn then return nil, err, code end
  return conn:command(...)
end

function Router:close()
  for addr, c in pairs(self.conns) do
    pcall(c.close, c)
    self.conns[addr] = nil
  end
end

-- ---------------------------------------------------------------------------
-- Scanning, for one connection or a router alike.

--- Iterate over the keys matching `pattern` on every master (a router) or
-- on the one server (a plain connection). Bounded by max_keys.
-- @return array of keys, or nil, msg, code
function M.scan(conn, pattern, opts)
  opts = opts or {}
  local max_keys = opts.max_keys or 10000000
  local count = tostring(opts.count or 1000)
  local nodes = { false }
  if getmetatable(conn) == Router then nodes = conn:nodes() end
  local keys, seen = {}, {}
  for _, addr in ipairs(nodes) do
    local cursor = '0'
    repeat
      local reply, err, code
      if addr then
        reply, err, code = conn:command_on(addr, 'SCAN', cursor, 'MATCH', pattern, 'COUNT', count)
      else
        reply, err, code = conn:command('SCAN', cursor, 'MATCH', pattern, 'COUNT', count)
      end
      if type(reply) ~= 'table' then return nil, err or 'SCAN failed', code or 'redis' end
      cursor = tostring(reply[1])
      for _, k in ipairs(type(reply[2]) == 'table' and reply[2] or {}) do
        -- SCAN may return a key more than once.
        if not seen[k] then
          seen[k] = true
          keys[#keys + 1] = k
          if #keys >= max_keys then return keys end
        end
      end
    until cursor == '0'
  end
  return keys
end

M.Router = Router

--- The most seed nodes a command takes (the router learns the rest).
M.MAX_SEEDS = 16

--- Seed nodes of a cluster: "H:P[,H:P]" (or a list, from a config file), each HOST:PORT or
-- [IPv6]:PORT.
-- @return array of "host:port", or nil, message
function M.parse_nodes(value)
  local list = {}
  if type(value) == 'table' then
    for i, v in ipairs(value) do
      if i > M.MAX_SEEDS then break end
      list[#list + 1] = tostring(v)
    end
  else
    for n in tostring(value):gmatch('[^,%s]+') do
      list[#list + 1] = n
      if #list > M.MAX_SEEDS then break end
    end
  end
  if #list == 0 then return nil, 'no node given (H:P[,H:P])' end
  if #list > M.MAX_SEEDS then
    return nil, 'at most ' .. M.MAX_SEEDS .. ' seed nodes'
  end
  local nodes = {}
  for _, n in ipairs(list) do
    local host, port = n:match('^%[([%x:.]+)%]:(%d+)$')
    if not host then host, port = n:match('^([%w.-]+):(%d+)$') end
    port = tonumber(port)
    if not host or not port or port < 1 or port > 65535 then
      return nil, 'bad node "' .. n .. '" (HOST:PORT)'
    end
    nodes[#nodes + 1] = n:find('^%[') and ('[' .. host .. ']:' .. port) or (host .. ':' .. port)
  end
  return nodes
end

return M
