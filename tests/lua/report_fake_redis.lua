-- An in-memory stand-in for a dmarc.redis connection, for the report specs:
-- the commands the report modules send (hashes, strings, lists, SCAN/HSCAN,
-- SET NX, and the EVAL scripts of dmarc.report.rows, dmarc.report.send and
-- dmarc.report.failure, emulated).
-- Replies follow dmarc.redis: status {ok=}, false for nil inside tables,
-- {err=} for error replies in a pipeline. `down = true` makes every call an
-- I/O failure, `lose_replies = N` applies the next N pipelines and then
-- reports an I/O failure (a reply lost on the way back); `calls` counts
-- round trips.
local report = require 'dmarc.report.rows'

local Fake = {}
Fake.__index = Fake

local function new()
  return setmetatable({ data = {}, ttl = {}, down = false, calls = 0, commands = 0 }, Fake)
end

local function glob_to_pattern(g)
  return '^' .. g:gsub('[%^%$%(%)%%%.%[%]%+%-]', '%%%0'):gsub('%*', '.*'):gsub('%?', '.') .. '$'
end

local function hash(self, key)
  local h = self.data[key]
  if h == nil then
    h = {}
    self.data[key] = h
  end
  return h
end

-- Lists are tables marked as such; item 1 is the head.
local LIST = {}

local function list(self, key)
  local l = self.data[key]
  if l == nil then
    l = setmetatable({}, LIST)
    self.data[key] = l
  end
  return l
end

local function drop_empty(self, key)
  local l = self.data[key]
  if type(l) == 'table' and getmetatable(l) == LIST and #l == 0 then self.data[key] = nil end
end

-- Redis list indexes (negative from the tail) to a 1-based Lua range.
local function range(n, first, last)
  first, last = tonumber(first), tonumber(last)
  if first < 0 then first = n + first end
  if last < 0 then last = n + last end
  if first < 0 then first = 0 end
  if last >= n then last = n - 1 end
  return first + 1, last + 1
end

local function hlen(h)
  local n = 0
  for _ in pairs(h) do n = n + 1 end
  return n
end

function Fake:exec(cmd)
  self.commands = self.commands + 1
  local name = cmd[1]:upper()
  if name == 'HINCRBY' then
    local h = hash(self, cmd[2])
    h[cmd[3]] = tostring((tonumber(h[cmd[3]]) or 0) + tonumber(cmd[4]))
    return tonumber(h[cmd[3]])
  elseif name == 'HSET' then
    local h = hash(self, cmd[2])
    local added = h[cmd[3]] == nil and 1 or 0
    h[cmd[3]] = cmd[4]
    return added
  elseif name == 'HGET' then
    local h = self.data[cmd[2]]
    return h and h[cmd[3]] or false
  elseif name == 'HEXISTS' then
    local h = self.data[cmd[2]]
    return (h and h[cmd[3]]) and 1 or 0
  elseif name == 'HLEN' then
    return self.data[cmd[2]] and hlen(self.data[cmd[2]]) or 0
  elseif name == 'HGETALL' then
    local out = {}
    local h = self.data[cmd[2]] or {}
    local keys = {}
    for k in pairs(h) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do
      out[#out + 1] = k
      out[#out + 1] = h[k]
    end
    return out
  elseif name == 'HSCAN' then
    local all = self:exec({ 'HGETALL', cmd[2] })
    return { '0', all }
  elseif name == 'EXPIRE' or name == 'PEXPIRE' then
    if self.data[cmd[2]] == nil then return 0 end
    self.ttl[cmd[2]] = tonumber(cmd[3])
    return 1
  elseif name == 'DEL' then
    local n = 0
    for i = 2, #cmd do
      if self.data[cmd[i]] ~= nil then n = n + 1 end
      self.data[cmd[i]] = nil
    end
    return n
  elseif name == 'LPUSH' or name == 'RPUSH' then
    local l = list(self, cmd[2])
    for i = 3, #cmd do
      if name == 'LPUSH' then table.insert(l, 1, cmd[i]) else l[#l + 1] = cmd[i] end
    end
    return #l
  elseif name == 'LLEN' then
    local l = self.data[cmd[2]]
    return l and #l or 0
  elseif name == 'LRANGE' then
    local l = self.data[cmd[2]] or {}
    local out = {}
    local a, b = range(#l, cmd[3], cmd[4])
    for i = a, b do out[#out + 1] = l[i] end
    return out
  elseif name == 'LREM' then
    -- Only the forms the modules use: count -1 (one, from the tail).
    local l = self.data[cmd[2]] or {}
    for i = #l, 1, -1 do
      if l[i] == cmd[4] then
        table.remove(l, i)
        drop_empty(self, cmd[2])
        return 1
      end
    end
    return 0
  elseif name == 'INCR' then
    local v = (tonumber(self.data[cmd[2]]) or 0) + 1
    self.data[cmd[2]] = tostring(v)
    return v
  elseif name == 'GET' then
    local v = self.data[cmd[2]]
    if type(v) == 'string' then return v end
    return false
  elseif name == 'SET' then
    local nx = false
    for i = 4, #cmd do if cmd[i]:upper() == 'NX' then nx = true end end
    if nx and self.data[cmd[2]] ~= nil then return false end
    self.data[cmd[2]] = cmd[3]
    return { ok = 'OK' }
  elseif name == 'SCAN' then
    local pat = '.*'
    for i = 3, #cmd - 1 do if cmd[i]:upper() == 'MATCH' then pat = glob_to_pattern(cmd[i + 1]) end end
    local keys = {}
    for k in pairs(self.data) do if k:match(pat) then keys[#keys + 1] = k end end
    table.sort(keys)
    return { '0', keys }
  elseif name == 'EVAL' then
    local script = cmd[2]
    local nkeys = tonumber(cmd[3]) or 0
    local keys, argv = {}, {}
    for i = 4, 3 + nkeys do keys[#keys + 1] = cmd[i] end
    for i = 4 + nkeys, #cmd do argv[#argv + 1] = cmd[i] end
    if script == report.ROW_SCRIPT then
      local rows, meta = keys[1], keys[2]
      -- The row id's mark (SET NX EX): a retry of the same id changes nothing.
      if keys[3] then
        if self.data[keys[3]] ~= nil then return 0 end
        self.data[keys[3]] = '1'
        self.ttl[keys[3]] = tonumber(argv[8])
      end
      cmd = { 'EVAL', script, '2', rows, meta }
      for i = 1, 7 do cmd[5 + i] = argv[i] end
      local field, n, cap = cmd[6], tonumber(cmd[7]), tonumber(cmd[8])
      local h = hash(self, rows)
      if h[field] ~= nil or hlen(h) < cap then
        h[field] = tostring((tonumber(h[field]) or 0) + n)
      else
        local m = hash(self, meta)
        m.dropped_rows = tostring((tonumber(m.dropped_rows) or 0) + 1)
        m.dropped_messages = tostring((tonumber(m.dropped_messages) or 0) + n)
      end
      if hlen(h) == 0 then self.data[rows] = nil end
      local m = hash(self, meta)
      if cmd[10] ~= '' then m.rua = cmd[10] end
      if cmd[11] ~= '' then m.lost_messages = tostring((tonumber(m.lost_messages) or 0) + cmd[11]) end
      if cmd[12] ~= '' then m.policy = cmd[12] end
      return 1
    elseif script == require('dmarc.report.failure').QUEUE_SCRIPT then
      local n = self:exec({ 'INCR', keys[1] })
      self:exec({ 'EXPIRE', keys[1], argv[2] })
      if n > tonumber(argv[1]) then return -1 end
      local room = tonumber(argv[3]) - self:exec({ 'LLEN', keys[2] })
      if room < 1 then return -2 end
      local added = 0
      for i = 5, #argv do
        if added >= room then break end
        self:exec({ 'LPUSH', keys[2], argv[i] })
        added = added + 1
      end
      self:exec({ 'EXPIRE', keys[2], argv[4] })
      return added
    elseif script == require('dmarc.report.send').REQUEUE_SCRIPT then
      if self:exec({ 'LREM', keys[1], '-1', argv[1] }) == 0 then return 0 end
      if argv[2] ~= '' then self:exec({ 'RPUSH', keys[1], argv[2] }) end
      return 1
    elseif script:find('PEXPIRE', 1, true) then
      return self.data[cmd[4]] == cmd[5] and 1 or 0
    elseif script:find("redis.call('DEL'", 1, true) then
      if self.data[cmd[4]] == cmd[5] then
        self.data[cmd[4]] = nil
        return 1
      end
      return 0
    end
    return { err = 'ERR unknown script' }
  end
  return { err = 'ERR unknown command ' .. name }
end

function Fake:pipeline(cmds)
  self.calls = self.calls + 1
  if self.down then return nil, 'Connection refused', 'io' end
  local out = {}
  for i, c in ipairs(cmds) do out[i] = self:exec(c) end
  -- `lose_replies = N`: the next N pipelines are applied, then the
  -- connection breaks before the replies arrive.
  if (self.lose_replies or 0) > 0 then
    self.lose_replies = self.lose_replies - 1
    return nil, 'Connection reset by peer', 'io'
  end
  return out
end

function Fake:command(...)
  local r, err, code = self:pipeline({ { ... } })
  if not r then return nil, err, code end
  r = r[1]
  if type(r) == 'table' and r.err then return nil, r.err, 'redis' end
  if r == false then return nil end
  return r
end

function Fake.close() end

return { new = new }
