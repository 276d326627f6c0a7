--- The one place where Redis options become a connection: a dmarc.redis client, or a
-- dmarc.redis.cluster router (which has the same :command/:pipeline contract). The override
-- store, `dmarc check`, `dmarc override` and the report commands all connect through open().
--
--   local connect = require 'dmarc.redis.connect'
--   local where = connect.parse_address('unix:/run/redis.sock')   --> { path = ... }
--   local conn, err, code = connect.open { host = '127.0.0.1', port = 6379, timeout = 0.5 }
--   local s = assert(connect.settings(opts, conf))               -- every command's options
--   local conn, err, code = connect.from_options(opts, conf)      -- the report commands
-- @module dmarc.redis.connect

local M = {}

--- Parses HOST:PORT, [IPv6]:PORT, HOST, unix:PATH or /PATH into connect options.
-- @param s {string}
-- @return {table} { host, port } or { path }; or nil, message
function M.parse_address(s)
  if type(s) ~= 'string' or s == '' then return nil, 'empty Redis address' end
  if s:sub(1, 5) == 'unix:' then return { path = s:sub(6) } end
  if s:sub(1, 1) == '/' then return { path = s } end
  local host, port = s:match('^%[([%x:.]+)%]:(%d+)$')
  if not host then host, port = s:match('^([%w.-]+):(%d+)$') end
  if not host then
    host = s:match('^([%w.-]+)$') or s:match('^%[([%x:.]+)%]$')
    port = '6379'
  end
  port = tonumber(port)
  if not host or not port or port < 1 or port > 65535 then
    return nil, 'bad Redis address "' .. s .. '" (HOST:PORT or unix:PATH)'
  end
  return { host = host, port = port }
end

--- A connection.
-- @param conf {table} the connection options, all optional:
--   cluster   a list of seed nodes ("HOST:PORT"): a Redis Cluster router instead of one server
--   host, port, path   one server (TCP, or a unix socket path)
--   password, db, timeout (seconds)
-- @return connection, or nil, message, code ('unavailable': dmarc.redis is not built; else
--   the codes of dmarc.redis.connect and dmarc.redis.cluster.new)
function M.open(conf)
  if conf.cluster then
    local cluster = require 'dmarc.redis.cluster'
    return cluster.new { nodes = conf.cluster, timeout = conf.timeout, password = conf.password }
  end
  local ok, redis = pcall(require, 'dmarc.redis')
  if not ok then return nil, 'the dmarc.redis module is not built', 'unavailable' end
  return redis.connect { host = conf.host, port = conf.port, path = conf.path, timeout = conf.timeout,
                         password = conf.password, db = conf.db }
end

-- {==================================================================
-- The Redis options, the same in every command
-- ===================================================================

--- --redis, --redis-cluster, --redis-prefix, --redis-db, --redis-timeout and
-- --redis-password-file; in a config file the same names with '_' (redis_prefix...).
M.OPTIONS = {
  redis = true, ['redis-cluster'] = true, ['redis-prefix'] = true, ['redis-db'] = true,
  ['redis-timeout'] = true, ['redis-password-file'] = true,
}
M.DEFAULT_TIMEOUT = 2
M.DEFAULT_PREFIX = 'dmarc:'
M.DEFAULT_ADDRESS = '127.0.0.1:6379'

-- The first line of a password file (a trailing CR dropped).
local function read_password(path)
  local f, err = io.open(path, 'r')
  if not f then return nil, 'cannot read the Redis password file ' .. tostring(err) end
  local line = f:read('*l')
  f:close()
  line = line and line:gsub('\r$', '')
  if not line or line == '' then return nil, 'the Redis password file ' .. path .. ' is empty' end
  return line
end

--- The Redis settings the options ask for: the command line first, then the config file,
-- then $DMARC_REDIS and $DMARC_REDIS_PASSWORD, then @default.
-- @param opts {table} parsed options
-- @param conf {table|nil} the config file's table
-- @param getenv {function|nil} os.getenv or a stand-in (tests)
-- @param default {string|nil} the server when none is given (nil: none, e.g. `dmarc check`)
-- @return settings for open(): cluster (seed nodes) or host, port or path (all nil: no
--   server), and prefix, db, timeout, password; or nil, message (a usage error)
function M.settings(opts, conf, getenv, default)
  conf, getenv = conf or {}, getenv or os.getenv
  local function get(name)
    local v = opts[name]
    if v == nil then v = conf[(name:gsub('%-', '_'))] end
    if v == '' then return nil end
    return v
  end
  local s = { prefix = get('redis-prefix') or M.DEFAULT_PREFIX, timeout = M.DEFAULT_TIMEOUT }
  if type(s.prefix) ~= 'string' or #s.prefix > 64 or not s.prefix:find('^[%w:_.%-]*$') then
    return nil, '--redis-prefix must be at most 64 letters, digits and ":_.-"'
  end
  local t = get('redis-timeout')
  if t ~= nil then
    s.timeout = tonumber(t)
    if not s.timeout or s.timeout < 0.001 or s.timeout > 3600 then
      return nil, '--redis-timeout must be 0.001 to 3600 seconds'
    end
  end
  local db = get('redis-db')
  if db ~= nil then
    s.db = tonumber(db)
    if not s.db or s.db % 1 ~= 0 or s.db < 0 or s.db > 2147483647 then
      return nil, '--redis-db must be a database number'
    end
  end
  local pfile = get('redis-password-file')
  if pfile ~= nil then
    local pw, err = read_password(tostring(pfile))
    if not pw then return nil, err end
    s.password = pw
  else
    local pw = getenv('DMARC_REDIS_PASSWORD')
    if pw and pw ~= '' then s.password = pw end
  end
  -- The command line wins over the config file, the config file over $DMARC_REDIS.
  local cluster, addr = opts['redis-cluster'], opts.redis
  if cluster == nil and addr == nil then cluster, addr = conf.redis_cluster, conf.redis end
  if cluster == '' then cluster = nil end
  if addr == '' then addr = nil end
  if cluster and addr then return nil, '--redis and --redis-cluster exclude each other' end
  if cluster then
    if s.db then return nil, '--redis-db: a Redis Cluster has only database 0' end
    local nodes, err = require('dmarc.redis.cluster').parse_nodes(cluster)
    if not nodes then return nil, '--redis-cluster: ' .. tostring(err) end
    s.cluster = nodes
    return s
  end
  addr = addr or getenv('DMARC_REDIS') or default
  if addr ~= nil and addr ~= '' then
    local where, err = M.parse_address(tostring(addr))
    if not where then return nil, err end
    s.host, s.port, s.path = where.host, where.port, where.path
  end
  return s
end

--- Where settings point, for messages: "127.0.0.1:6379", "unix:/run/redis.sock",
-- "the Redis Cluster at h:p,h:p".
function M.describe(s)
  if s.cluster then return 'the Redis Cluster at ' .. table.concat(s.cluster, ',') end
  if s.path then return 'Redis at unix:' .. s.path end
  if s.host then
    return 'Redis at ' .. (s.host:find(':', 1, true) and ('[' .. s.host .. ']') or s.host)
      .. ':' .. tostring(s.port)
  end
  return 'no Redis server'
end

--- The Redis connection of the report commands: settings() with 127.0.0.1:6379 as the
-- default server, then open(); a failure is a sentence naming the server.
-- @param opts {table} parsed options
-- @param conf {table} the config file's table
-- @return connection, or nil, message, code ('usage' for bad options)
function M.from_options(opts, conf)
  local s, err = M.settings(opts, conf, nil, M.DEFAULT_ADDRESS)
  if not s then return nil, err, 'usage' end
  local conn, cerr, code = M.open(s)
  if not conn then return nil, 'cannot connect to ' .. M.describe(s) .. ': ' .. tostring(cerr), code end
  return conn
end

-- }==================================================================

-- Error replies that say "not now" rather than "never": the same command may succeed later
-- (a server replaying its AOF or RDB, a script running, a replica without its master, a
-- cluster resharding or without a quorum, a replica after a failover).
local TEMPORARY = {
  LOADING = true, BUSY = true, MASTERDOWN = true, TRYAGAIN = true, CLUSTERDOWN = true,
  READONLY = true,
}

--- Whether a Redis error is temporary: one of the error replies above, or a connection
-- failure ('io: ...', what the Cluster router puts in the replies of a node it could not
-- reach). Rows refused temporarily are kept and written again; others are lost (counted).
-- @param err {string|table|nil} an error message or an error reply ({err = message})
-- @return {boolean}
function M.temporary_error(err)
  if type(err) == 'table' then err = err.err or err.error end
  if type(err) ~= 'string' then return false end
  if err:find('^io: ') then return true end
  return TEMPORARY[err:match('^(%u+)')] == true
end

--- A Redis hash as a table: a flat HGETALL reply (field, value, field, value...), or a
-- reply that is a map already (copied). A reply that is not a table is an empty hash.
-- @param reply {any}
-- @return {table} field -> value
function M.hash_reply(reply)
  local m = {}
  if type(reply) ~= 'table' then return m end
  if reply[1] ~= nil then
    -- An odd last element (no value) is left out.
    for i = 1, #reply - 1, 2 do m[reply[i]] = reply[i + 1] end
  else
    for k, v in pairs(reply) do m[k] = v end
  end
  return m
end

return M
