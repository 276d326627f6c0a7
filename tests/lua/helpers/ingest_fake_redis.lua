-- An in-memory stand-in for a dmarc.redis connection, for the ingest specs: the
-- commands the ingest sends, with STORE_SCRIPT run by Lua itself against a
-- redis.call stand-in (tests/integration/ingest_redis_spec.lua runs it on a
-- real server).
local unpack = table.unpack or unpack -- luacheck: ignore 113 143

-- An in-memory server that understands the commands the ingest sends and
-- runs STORE_SCRIPT itself with a redis.call stand-in.
return function()
  local data, ttl = {}, {}
  local self = { data = data, ttl = ttl, evals = 0, pipelines = 0 }
  local function hash(k)
    data[k] = data[k] or {}
    return data[k]
  end
  local function hlen(h)
    local n = 0
    for _ in pairs(h) do n = n + 1 end
    return n
  end
  local call = function(name, k, a, b, ...)
    name = name:upper()
    if name == 'HEXISTS' then return (data[k] and data[k][a]) and 1 or 0
    elseif name == 'HLEN' then return data[k] and hlen(data[k]) or 0
    elseif name == 'HINCRBY' then
      local h = hash(k)
      h[a] = tostring((tonumber(h[a]) or 0) + tonumber(b))
      return tonumber(h[a])
    elseif name == 'HSET' then
      local h = hash(k)
      local args = { a, b, ... }
      for i = 1, #args, 2 do h[args[i]] = args[i + 1] end
      return #args / 2
    elseif name == 'HGETALL' then
      local out = {}
      for f, v in pairs(data[k] or {}) do
        out[#out + 1] = f
        out[#out + 1] = v
      end
      return out
    elseif name == 'EXPIRE' then
      ttl[k] = tonumber(a)
      return 1
    elseif name == 'DEL' then
      data[k] = nil
      return 1
    end
    error('fake redis: ' .. name)
  end
  local function eval(script, numkeys, ...)
    self.evals = self.evals + 1
    local args = { ... }
    local keys, argv = {}, {}
    for i = 1, tonumber(numkeys) do keys[i] = args[i] end
    for i = tonumber(numkeys) + 1, #args do argv[#argv + 1] = args[i] end
    local env = { redis = { call = call }, KEYS = keys, ARGV = argv, tonumber = tonumber }
    local chunk
    if setfenv then
      chunk = assert(loadstring(script)) -- luacheck: ignore 113
      setfenv(chunk, env)
    else
      chunk = assert(load(script, 'store', 't', env))
    end
    return chunk()
  end
  function self.command(_, name, ...)
    if name == 'EVAL' then return eval(...) end
    return call(name, ...)
  end
  function self.pipeline(_, cmds)
    self.pipelines = self.pipelines + 1
    local out = {}
    for i, c in ipairs(cmds) do out[i] = self:command(unpack(c)) end
    return out
  end
  return self
end
