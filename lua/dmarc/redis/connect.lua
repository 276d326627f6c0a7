--- The one place where Redis options become a connection: a dmarc.redis client, or a
-- dmarc.redis.cluster router (which has the same :command/:pipeline contract). The override
-- store, `dmarc check`, `dmarc override` and the report commands all connect through open().
--
--   local connect = require 'dmarc.redis.connect'
--   local where = connect.parse_address('unix:/run/redis.sock')   --> { path = ... }
--   local conn, err, code = connect.open { host = '127.0.0.1', port = 6379, timeout = 0.5 }
--   local conn, err, code = connect.from_options(opts, conf)      -- the report commands
-- @module dmarc.redis.connect

local options = require 'dmarc.util.options'

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

--- The Redis connection of the report commands: a dmarc.redis.cluster router with --cluster
-- (H:P,H:P or a list in the config file), otherwise a dmarc.redis connection to --redis,
-- $DMARC_REDIS or 127.0.0.1:6379; --redis-timeout seconds (default 5).
-- @param opts {table} parsed options
-- @param conf {table} the config file's table
-- @return connection, or nil, message, code
function M.from_options(opts, conf)
  local timeout = tonumber(options.setting(opts, conf, 'redis-timeout', 5))
  local cluster_nodes = options.setting(opts, conf, 'cluster')
  if cluster_nodes then
    local nodes = {}
    if type(cluster_nodes) == 'table' then
      nodes = cluster_nodes
    else
      for n in tostring(cluster_nodes):gmatch('[^,%s]+') do nodes[#nodes + 1] = n end
    end
    return M.open { cluster = nodes, timeout = timeout }
  end
  local addr = tostring(options.setting(opts, conf, 'redis', os.getenv('DMARC_REDIS') or '127.0.0.1:6379'))
  local host, port = addr:match('^%[?([^%]]+)%]?:(%d+)$')
  if not host then host, port = addr, 6379 end
  return M.open { host = host, port = tonumber(port), timeout = timeout }
end

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
