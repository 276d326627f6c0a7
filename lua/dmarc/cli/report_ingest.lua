--- `dmarc report ingest PATH...`: store aggregate reports received from other
-- receivers (XML, .xml.gz, .zip, report e-mails) in Redis, per policy domain
-- and day, deduplicated by (org_name, report_id). Loaded by the `dmarc
-- report` dispatcher (lua/dmarc/cli/report.lua) as report_<subcommand>.
--
-- Also the shared command-line plumbing of `report summary` and `report
-- serve` (options, config file, Redis connection).
local util = require 'dmarc.util'

local M = {}

local USAGE = [[
usage: dmarc report ingest [options] PATH...

Stores DMARC aggregate reports (RFC 9990 and RFC 7489 XML, .xml.gz, .zip, or
whole report e-mails) in Redis, per policy domain and day. Reports already
stored (same org_name and report_id) are skipped, so ingesting again is
harmless. See docs/ingest.md.

PATH                     a file, a directory (walked, symbolic links not
                         followed) or - for standard input
options:
  --own D[,D...]         the domains this site owns (config: own_domains);
                         reports for other domains are counted as foreign
  --refuse-foreign       do not store reports for domains not owned
  --hash-envelope-to     store envelope_to as a keyed hash (HMAC-SHA256); the
                         salt from $DMARC_INGEST_SALT or --salt-file FILE
  --retention-days N     keep ingested data N days (default 180)
  --max-size BYTES       largest input file and decompressed report
                         (default 67108864)
  --json                 print the result as one JSON object on stdout
  --quiet                no progress or failure lines on stderr
common options:
  --config FILE          Lua file returning a table of options
  --redis HOST:PORT      Redis server (default $DMARC_REDIS or 127.0.0.1:6379)
  --cluster H:P[,H:P]    Redis Cluster seed nodes (instead of --redis)
  --prefix P             key prefix (default dmarc:)

exit status: 0 every input ingested (duplicates included), 1 some input
failed (the others are still stored), 2 usage.
]]

-- ---------------------------------------------------------------------------
-- Shared plumbing

M.COMMON_VALUES = { config = true, redis = true, cluster = true, prefix = true,
                    ['redis-timeout'] = true }

--- Command-line options: `--name value`, `--name=value`, flags; the rest are
-- operands. Unknown options are usage errors.
-- @param spec {table} flags (set), values (set); the common options are added
-- @return options, operands; or nil, message
function M.parse_args(args, spec)
  local values = {}
  for name in pairs(M.COMMON_VALUES) do values[name] = true end
  for name in pairs(spec.values) do values[name] = true end
  return util.parse_options(args, { style = 'report', flags = spec.flags, values = values })
end

--- Option value: command line, then config file (name with _), then default.
function M.get(o, conf, name, default)
  local v = o[name]
  if v ~= nil then return v end
  v = conf[(name:gsub('%-', '_'))]
  if v ~= nil then return v end
  return default
end

--- The config file (a Lua chunk returning a table), or {} without --config.
function M.config(o)
  if not o.config then return {} end
  local report_cli = require 'dmarc.cli.report'
  return report_cli.load_config(o.config)
end

--- A Redis connection (dmarc.redis) or Cluster router (dmarc.cluster).
function M.connect(o, conf)
  local timeout = tonumber(M.get(o, conf, 'redis-timeout', 5))
  local cluster_nodes = M.get(o, conf, 'cluster')
  if cluster_nodes then
    local cluster = require 'dmarc.cluster'
    local nodes = {}
    if type(cluster_nodes) == 'table' then
      nodes = cluster_nodes
    else
      for n in tostring(cluster_nodes):gmatch('[^,%s]+') do nodes[#nodes + 1] = n end
    end
    return cluster.new { nodes = nodes, timeout = timeout }
  end
  local addr = tostring(M.get(o, conf, 'redis', os.getenv('DMARC_REDIS') or '127.0.0.1:6379'))
  local host, port = addr:match('^%[?([^%]]+)%]?:(%d+)$')
  if not host then host, port = addr, 6379 end
  local ok, redis = pcall(require, 'dmarc.redis')
  if not ok then return nil, 'the dmarc.redis module is not built', 'config' end
  return redis.connect { host = host, port = tonumber(port), timeout = timeout }
end

--- The key prefix option, checked.
function M.prefix(o, conf)
  local report = require 'dmarc.report'
  local ingest = require 'dmarc.ingest'
  local p = M.get(o, conf, 'prefix', ingest.defaults.prefix)
  if not report.valid_prefix(p) then return nil end
  return p
end

--- A YYYY-MM-DD day as the epoch of its start, or nil.
function M.parse_day(s)
  local report = require 'dmarc.report'
  local y, m, d = tostring(s or ''):match('^(%d%d%d%d)%-(%d%d)%-(%d%d)$')
  if not y then return nil end
  return report.day_start(y .. m .. d)
end

--- Wall-clock seconds, sub-second when luasocket is installed.
function M.clock()
  local ok, socket = pcall(require, 'socket')
  if ok and type(socket) == 'table' and socket.gettime then return socket.gettime end
  return os.time
end

function M.die(cmd, msg, status)
  io.stderr:write('dmarc report ', cmd, ': ', msg, '\n')
  return status or 1
end

-- ---------------------------------------------------------------------------
-- ingest

local SPEC = {
  flags = { json = true, quiet = true, ['refuse-foreign'] = true, ['hash-envelope-to'] = true },
  values = { own = true, ['salt-file'] = true, ['retention-days'] = true, ['max-size'] = true },
}

local function domain_list(v)
  local report = require 'dmarc.report'
  local out = {}
  local items = type(v) == 'table' and v or {}
  if type(v) == 'string' then
    for d in v:gmatch('[^,%s]+') do items[#items + 1] = d end
  end
  for _, d in ipairs(items) do
    d = tostring(d):lower():gsub('%.$', '')
    if not report.valid_domain(d) then return nil, d end
    out[#out + 1] = d
  end
  return out
end

local function read_salt(o, conf)
  local file = M.get(o, conf, 'salt-file')
  if file then
    local f, err = io.open(file, 'rb')
    if not f then return nil, 'salt file: ' .. tostring(err) end
    local s = f:read(4096) or ''
    f:close()
    s = s:gsub('[\r\n]+$', '')
    if #s < 16 then return nil, 'the salt must be at least 16 bytes' end
    return s
  end
  local s = os.getenv('DMARC_INGEST_SALT')
  if not s or #s < 16 then
    return nil, '--hash-envelope-to needs a salt of at least 16 bytes ($DMARC_INGEST_SALT '
      .. 'or --salt-file)'
  end
  return s
end

--- Entry point: run(args) → exit status.
function M.run(args)
  local ingest = require 'dmarc.ingest'
  local summary = require 'dmarc.summary'
  local o, rest = M.parse_args(args, SPEC)
  if not o then return M.die('ingest', rest .. ' (see --help)', 2) end
  if o.help then
    io.stdout:write(USAGE)
    return 0
  end
  local conf, cerr = M.config(o)
  if not conf then return M.die('ingest', 'config: ' .. tostring(cerr), 2) end
  if #rest == 0 then return M.die('ingest', 'no PATH given (see --help)', 2) end
  local prefix = M.prefix(o, conf)
  if not prefix then return M.die('ingest', 'invalid --prefix', 2) end
  local own, bad = domain_list(M.get(o, conf, 'own', conf.own_domains))
  if not own then return M.die('ingest', 'invalid domain in --own: ' .. summary.shown(bad), 2) end
  local retention = tonumber(M.get(o, conf, 'retention-days', ingest.defaults.ttl / 86400))
  if not retention or retention < 1 or retention > 3660 or retention % 1 ~= 0 then
    return M.die('ingest', '--retention-days must be 1..3660', 2)
  end
  local max_size = tonumber(M.get(o, conf, 'max-size', ingest.limits.max_input))
  if not max_size or max_size < 1024 or max_size > 2 ^ 31 - 1 then
    return M.die('ingest', '--max-size must be 1024..2147483647', 2)
  end
  local salt
  if o['hash-envelope-to'] or conf.hash_envelope_to then
    local serr
    salt, serr = read_salt(o, conf)
    if not salt then return M.die('ingest', serr, 2) end
  end
  local files, missing = ingest.expand_paths(rest)
  local conn, err = M.connect(o, conf)
  if not conn then return M.die('ingest', 'Redis: ' .. tostring(err), 1) end

  local clock = M.clock()
  local started = clock()
  local last = started
  local quiet = o.quiet
  local function progress(stats, final)
    if quiet then return end
    local now = clock()
    if not final and now - last < 2 then return end
    last = now
    local secs = now - started
    io.stderr:write(string.format('ingest: %d/%d files, %d reports (%d new, %d duplicate, '
                                  .. '%d refused), %d records, %d failed, %.0f records/s\n',
                                  stats.files, #files, stats.reports, stats.stored,
                                  stats.duplicates, stats.refused, stats.records, stats.errors,
                                  secs > 0 and stats.records / secs or 0))
  end
  local stats = ingest.ingest_files(conn, files, {
    prefix = prefix, ttl = retention * 86400, own = #own > 0 and own or nil,
    refuse_foreign = o['refuse-foreign'] or conf.refuse_foreign, hash_salt = salt,
    max_input = max_size, max_xml = max_size,
    progress = progress,
    on_result = function(path, r)
      if r.status == 'error' and not quiet then
        io.stderr:write('ingest: ', summary.shown(path), ': ', summary.shown(r.code or 'error'),
                        ': ', summary.shown(r.message), '\n')
      end
    end,
  })
  if conn.close then pcall(conn.close, conn) end
  for _, m in ipairs(missing) do
    stats.errors = stats.errors + 1
    table.insert(stats.failures, { path = m.path, code = 'io', message = m.message })
    if not quiet then io.stderr:write('ingest: ', summary.shown(m.path), ': cannot open\n') end
  end
  stats.seconds = clock() - started
  progress(stats, true)
  if o.json then io.stdout:write(summary.json(stats), '\n') end
  return stats.errors > 0 and 1 or 0
end

return M
