--- What the commands share (lua/dmarc/cli/*): error lines, the resolver options of `check`
-- and `inspect`, and the plumbing of the `dmarc report` subcommands (their --help, options,
-- config file, key prefix, period and reporter, and the generate step `send` also runs).
-- Commands require this module, never each other.
--
--   local common = require 'dmarc.cli.common'
--   return common.usage_fail('dmarc inspect', 'a DOMAIN is required')
-- @module dmarc.cli.common

local config = require 'dmarc.util.config'
local connect = require 'dmarc.redis.connect'
local options = require 'dmarc.util.options'
local text = require 'dmarc.util.text'
local time = require 'dmarc.util.time'

local M = {}

-- {==================================================================
-- Error lines
-- ===================================================================

--- Tell a failure on standard error as "WHO: MESSAGE"; for `return M.fail(...)`.
-- @param who {string} the command, e.g. 'dmarc check'
-- @param message {string}
-- @param status {number|nil} the exit status to return (default 1)
-- @param stream {file|nil} where to write (default io.stderr)
-- @return status
function M.fail(who, message, status, stream)
  local out = stream or io.stderr
  out:write(who, ': ', message, '\n')
  return status or 1
end

--- Tell a usage error: the message, then where the usage is written; exit status 2.
-- @param who {string} the command, e.g. 'dmarc check'
-- @param message {string}
-- @param stream {file|nil} where to write (default io.stderr)
-- @return 2
function M.usage_fail(who, message, stream)
  local out = stream or io.stderr
  out:write(who, ': ', message, '\n', 'run "', who, ' --help" for usage\n')
  return 2
end

-- }==================================================================

-- {==================================================================
-- Redis options and config files (every command)
-- ===================================================================

--- The --help lines of the Redis options, the same in every command that talks to Redis
-- (the options themselves: dmarc.redis.connect.OPTIONS and settings()).
M.REDIS_HELP = '\n' .. [[
Redis:
  --redis ADDR               HOST:PORT, [IPv6]:PORT or unix:PATH (default
                             $DMARC_REDIS, else 127.0.0.1:6379)
  --redis-cluster H:P[,H:P]  seed nodes of a Redis Cluster, instead of --redis
  --redis-prefix P           key prefix (default dmarc:)
  --redis-db N               database number (not with a cluster)
  --redis-timeout SECONDS    connect and reply timeout (default 2)
  --redis-password-file F    the password: the first line of F (default:
                             $DMARC_REDIS_PASSWORD)
]]

--- The keys a config file (--config, `dmarc check --report-config`) may hold: the options
-- of the report commands with '_' for '-', and the failure report settings of `check`.
M.CONFIG_KEYS = {}
for _, k in ipairs({
  'org_name', 'email', 'submitter', 'extra_contact_info', 'extra_contact',
  'redis', 'redis_cluster', 'redis_prefix', 'redis_db', 'redis_timeout', 'redis_password_file',
  'out', 'date', 'format', 'max_rows', 'smtp', 'starttls', 'smtp_user', 'smtp_password_file',
  'smtp_timeout', 'sendmail', 'helo', 'envelope_from', 'dns_json', 'zone', 'dns_server',
  'dns_timeout', 'size_limits', 'retry_base', 'max_attempts', 'own', 'own_domains', 'salt_file',
  'retention_days', 'max_size', 'hash_envelope_to', 'refuse_foreign', 'listen',
  'failure_rate_limit', 'failure_rate_window', 'failure_queue_max', 'tls_ca', 'tls_no_verify',
  'failure_retention_days',
}) do M.CONFIG_KEYS[k] = true end

--- A config file, its keys checked: an unknown key is an error, as an unknown option is.
-- @param path {string}
-- @return {table} the options, or nil, message
function M.load_config(path)
  local conf, err = config.load(path)
  if not conf then return nil, err end
  local bad = {}
  for k in pairs(conf) do
    if not M.CONFIG_KEYS[k] then bad[#bad + 1] = text.shown(tostring(k)) end
  end
  if #bad > 0 then
    table.sort(bad)
    return nil, path .. ': unknown key' .. (#bad > 1 and 's ' or ' ') .. table.concat(bad, ', ')
  end
  return conf
end

-- }==================================================================

-- {==================================================================
-- DNS (check, inspect)
-- ===================================================================

--- The resolver the options ask for: a zone file, a server, or resolv.conf.
-- @return resolver, or nil, message
function M.resolver(opts)
  local dio = require 'dmarc.io'
  local r, err
  if opts.zone then
    r, err = dio.resolver{ zone = opts.zone }
  elseif opts['dns-server'] then
    r, err = dio.resolver{ server = opts['dns-server'], timeout = opts['dns-timeout'] }
  else
    r, err = dio.resolver{ timeout = opts['dns-timeout'] }
  end
  if not r then return nil, err end
  return r
end

-- }==================================================================

-- {==================================================================
-- dmarc report: usage and dispatch
-- ===================================================================

--- Subcommands loaded from dmarc.cli.report.<name>, in the order --help lists them.
M.REPORT_LOADED = {
  { name = 'ingest', text = 'store aggregate reports received from other receivers (XML,\n'
    .. '             .xml.gz, .zip, report e-mails) in Redis, deduplicated' },
  { name = 'summary', text = 'what the ingested reports say about one policy domain, and\n'
    .. '             whether it is ready for the next policy step' },
  { name = 'serve', text = 'a dashboard of the ingested reports, served on loopback' },
}

local USAGE_HEAD = [[
usage: dmarc report <subcommand> [options]

subcommands:
  generate   write one report per policy domain and period (XML, gzip, one
             RFC 5322 message per rua destination, a manifest for `send`)
  send       verify destinations, deliver, retry, delete delivered data;
             also delivers the failure reports `dmarc check --failure-reports`
             queued
]]

local USAGE_COMMON = [[
  --config FILE          Lua file returning a table of options (see
                         docs/report-keys.md, "Configuration"); unknown keys
                         are an error
  --out DIR              output directory (created if missing)
  --quiet                no progress lines on stderr
Redis:
  --redis ADDR               HOST:PORT, [IPv6]:PORT or unix:PATH (default
                             $DMARC_REDIS, else 127.0.0.1:6379)
  --redis-cluster H:P[,H:P]  seed nodes of a Redis Cluster, instead of --redis
  --redis-prefix P           key prefix (default dmarc:)
  --redis-db N               database number (not with a cluster)
  --redis-timeout SECONDS    connect and reply timeout (default 2)
  --redis-password-file F    the password: the first line of F (default:
                             $DMARC_REDIS_PASSWORD)
]]

local USAGE_GENERATE = [[
  --date YYYY-MM-DD      one UTC day (default: yesterday)
  --from T --to T        a period of whole UTC days: YYYY-MM-DD or epoch
                         seconds at 00:00 UTC; --to is exclusive
  --format F             rfc9990 (default) or rfc7489
  --org-name NAME --email ADDR --submitter DOMAIN [--extra-contact TEXT]
                         reporter identity (or org_name, email, submitter,
                         extra_contact_info in the config file)
  --max-rows N           rows read per policy domain (default 100000)
  --force                also periods that are not over yet, or already sent
]]

local USAGE_SEND = [[
  --date D | --from T --to T   generate this period first (as above)
  --smtp HOST:PORT       relay (default 127.0.0.1:25), or
  --sendmail CMD         a sendmail-compatible command
  --helo NAME            EHLO name (default: the submitter domain)
  --starttls MODE        never | try (default) | require
  --tls-ca FILE          trust anchors (PEM) for the relay's certificate instead
                         of the system CA store. The certificate and the relay's
                         name (as given to --smtp) are verified whenever AUTH is
                         used or --starttls is require; with try and no AUTH, TLS
                         is opportunistic and any certificate is taken (RFC 7435)
  --tls-no-verify        never verify the relay's certificate (not even with AUTH
                         or require): only for a relay you reach over a path you
                         trust
  --smtp-user USER       AUTH user; password from $DMARC_SMTP_PASSWORD or
  --smtp-password-file F
  --envelope-from ADDR   MAIL FROM (default: the reporter email)
  --dns-json FILE        answers for `_report._dmarc` checks from a JSON map
  --zone FILE | --dns-server HOST[:PORT]   resolver for those checks (dmarc.io;
                         default: the system's nameservers)
  --size-limits          honour RFC 7489 !size limits (default: with rfc7489)
  --retry-base SEC       first retry delay (default 300), doubling
  --max-attempts N       then the destination is given up (default 8)
]]

local USAGE_EXIT = [[
exit status: 0 done (deliveries may be deferred), 1 error (also: the relay's
certificate was refused; its reports stay queued), 2 usage, 75 another sender
holds the lock.
]]

local USAGE = '\ncommon options:\n' .. USAGE_COMMON .. '\ngenerate:\n' .. USAGE_GENERATE
  .. '\nsend (also without --date: retries, and the queued failure reports):\n' .. USAGE_SEND
  .. '\n' .. USAGE_EXIT

--- The --help of `dmarc report generate` and of `dmarc report send`.
local SUB_USAGE = {
  generate = 'usage: dmarc report generate [--date D | --from T --to T] --out DIR [options]\n\n'
    .. 'Writes one aggregate report per policy domain and period from the rows in Redis\n'
    .. '(XML, gzip, one RFC 5322 message per rua destination, a manifest for `send`).\n\n'
    .. 'options:\n' .. USAGE_GENERATE .. '\ncommon options:\n' .. USAGE_COMMON .. '\n'
    .. 'exit status: 0 done, 1 error, 2 usage.\n',
  send = 'usage: dmarc report send --out DIR [--date D | --from T --to T] [options]\n\n'
    .. 'Verifies the destinations, delivers the reports in DIR (generating the period\n'
    .. 'first when one is given), retries, and deletes delivered data; also delivers the\n'
    .. 'failure reports `dmarc check --failure-reports` queued.\n\n'
    .. 'options:\n' .. USAGE_SEND .. '  --force                with a period: as for generate\n'
    .. '\ncommon options:\n' .. USAGE_COMMON .. '\n' .. USAGE_EXIT,
}


-- The --help text: the built-in subcommands, then one line each for those
-- loaded from modules (marked when the module is not installed).
function M.report_usage()
  local lines = { USAGE_HEAD }
  for _, sub in ipairs(M.REPORT_LOADED) do
    local found = package.searchpath('dmarc.cli.report.' .. sub.name, package.path)
    lines[#lines + 1] = string.format('  %-9s  %s%s\n', sub.name, sub.text,
                                      found and '' or ' (not installed)')
  end
  lines[#lines + 1] = '  (see "dmarc report <subcommand> --help"; others are loaded from\n'
    .. '  dmarc.cli.report.<name> when installed)\n'
  lines[#lines + 1] = USAGE
  return table.concat(lines)
end

-- }==================================================================

-- {==================================================================
-- dmarc report generate, send: options, period, reporter, the generate step
-- ===================================================================

local function die(msg, status)
  return M.fail('dmarc report', msg, status)
end

-- The options of generate and send: unknown ones are usage errors, as everywhere.
local GENERATE_VALUES = {
  date = true, from = true, to = true, format = true, ['org-name'] = true, email = true,
  submitter = true, ['extra-contact'] = true, ['max-rows'] = true, out = true, config = true,
  now = true, -- the current time, epoch seconds (tests)
}
local SEND_VALUES = {
  smtp = true, sendmail = true, helo = true, starttls = true, ['smtp-user'] = true,
  ['smtp-password-file'] = true, ['smtp-timeout'] = true, ['envelope-from'] = true,
  ['dns-json'] = true, zone = true, ['dns-server'] = true, ['dns-timeout'] = true,
  ['retry-base'] = true, ['max-attempts'] = true, ['tls-ca'] = true,
}
local SUB_FLAGS = {
  generate = { quiet = true, force = true },
  send = { quiet = true, force = true, ['size-limits'] = true, ['tls-no-verify'] = true },
}

local function parse_args(sub, args)
  local values = {}
  for _, set in ipairs({ GENERATE_VALUES, connect.OPTIONS, sub == 'send' and SEND_VALUES or {} }) do
    for name in pairs(set) do values[name] = true end
  end
  return options.parse(args, { style = 'report', values = values, flags = SUB_FLAGS[sub] or {},
                               max_operands = 0, too_many_operands = 'unexpected argument' })
end

-- Option value: command line first, then config file (key with _), then default.
local get = options.setting

--- A time on the command line: epoch seconds, or YYYY-MM-DD (its 00:00 UTC).
local function parse_time(s)
  if s == nil then return nil end
  if tostring(s):match('^%d+$') then return tonumber(s) end
  return time.parse_day(s)
end
M.parse_time = parse_time

local function period(o, conf, now)
  if o.date and (o.from or o.to) then return nil, '--date and --from/--to exclude each other' end
  local begin, finish
  if o.from or o.to then
    begin, finish = parse_time(o.from), parse_time(o.to)
    if not begin or not finish then return nil, '--from and --to need YYYY-MM-DD or epoch' end
  else
    local date = o.date or conf.date
    if date then
      begin = parse_time(date)
      if not begin then return nil, '--date needs YYYY-MM-DD' end
    else
      begin = now - now % 86400 - 86400 -- yesterday, UTC
    end
    finish = begin + 86400
  end
  if begin % 86400 ~= 0 or finish % 86400 ~= 0 or finish <= begin then
    return nil, 'the period must be whole UTC days (00:00 to 00:00)'
  end
  if finish > now and not o.force then
    return nil, 'the period is not over yet (use --force to report on it anyway)'
  end
  return begin, finish
end

local function reporter(o, conf)
  return {
    org_name = get(o, conf, 'org-name'),
    email = get(o, conf, 'email'),
    submitter = get(o, conf, 'submitter'),
    extra_contact_info = get(o, conf, 'extra-contact', conf.extra_contact_info),
  }
end

M.report_reporter = reporter

local function progress_printer(o, what)
  if o.quiet then return nil end
  local last = 0
  return function(done, total)
    local now = os.time()
    if done == total or now - last >= 2 or done % 1000 == 0 then
      last = now
      io.stderr:write(string.format('%s: %d/%d policy domains\n', what, done, total))
    end
  end
end

local function ensure_dir(dir)
  os.execute('mkdir -p ' .. text.shell_quote(dir))
  local probe = dir .. '/.probe'
  local f = io.open(probe, 'w')
  if not f then return false end
  f:close()
  os.remove(probe)
  return true
end

-- Checks that need no Redis, so usage errors come before connecting.
local function check_generate(o, conf)
  local report_xml = require 'dmarc.report.xml'
  local begin, finish = period(o, conf, tonumber(o.now) or os.time())
  if not begin then return nil, finish end
  local format = get(o, conf, 'format', 'rfc9990')
  if not report_xml.FORMATS[format] then return nil, 'unknown --format ' .. tostring(format) end
  local rep = reporter(o, conf)
  for _, f in ipairs({ 'org_name', 'email', 'submitter' }) do
    if type(rep[f]) ~= 'string' or rep[f] == '' then
      return nil, 'the reporter ' .. f .. ' is required (--' .. f:gsub('_', '-')
        .. ' or the config file)'
    end
  end
  o._begin, o._finish, o._format = begin, finish, format
  return true
end

local function do_generate(o, conf, conn)
  local generate = require 'dmarc.report.generate'
  local begin, finish, format = o._begin, o._finish, o._format
  local ok_core, core = pcall(require, 'dmarc.core')
  local summary, err, code = generate.run {
    redis = conn, prefix = get(o, conf, 'redis-prefix'), begin = begin, ['end'] = finish,
    format = format, out = o.out, reporter = reporter(o, conf),
    max_rows = tonumber(get(o, conf, 'max-rows')), force = o.force,
    version = ok_core and core._VERSION or nil,
    progress = progress_printer(o, 'generate'),
  }
  if not summary then return nil, err, code == 'usage' and 2 or 1 end
  if not o.quiet then
    io.stderr:write(string.format('generate: %d reports for %d policy domains, %d records, '
                                  .. '%d messages in %s\n', summary.reports, summary.domains,
                                  summary.records, summary.messages, o.out))
  end
  return summary
end
M.report_generate = do_generate

--- The run of `dmarc report generate` and `send`: their options, --help, config file and
-- --out, the checks of a period to generate (before connecting), then @fn over a Redis
-- connection.
-- @param sub {string} 'generate' or 'send'
-- @param rest {table} the arguments after the subcommand
-- @param fn {function} (opts, conf, conn) -> summary, or nil, message, exit status
-- @return exit status
function M.report_run(sub, rest, fn)
  local who = 'dmarc report ' .. sub
  local o, perr = parse_args(sub, rest)
  if not o then return M.usage_fail(who, perr) end
  if o.help then
    io.stdout:write(SUB_USAGE[sub] or M.report_usage())
    return 0
  end
  local conf = {}
  if o.config then
    local c, cerr = M.load_config(o.config)
    if not c then return M.fail(who, 'config: ' .. tostring(cerr), 2) end
    conf = c
  end
  local rs, rerr = connect.settings(o, conf, nil, connect.DEFAULT_ADDRESS)
  if not rs then return M.usage_fail(who, rerr) end
  o.out = o.out or conf.out
  if not o.out then return die('--out DIR is required', 2) end
  if sub == 'generate' or o.date or o.from or o.to then
    local ok, cerr = check_generate(o, conf)
    if not ok then return die(cerr, 2) end
  end
  if not ensure_dir(o.out) then return die('cannot write to ' .. o.out, 1) end
  local conn, cerr = connect.open(rs)
  if not conn then
    return M.fail(who, 'cannot connect to ' .. connect.describe(rs) .. ': ' .. tostring(cerr), 1)
  end
  local ok, res, err, status = pcall(fn, o, conf, conn)
  if conn.close then pcall(conn.close, conn) end
  if not ok then error(res, 0) end
  if not res then return die(tostring(err), status or 1) end
  return 0
end

-- }==================================================================

-- {==================================================================
-- dmarc report ingest, summary, serve: options, config file, key prefix
-- ===================================================================

M.REPORT_COMMON_VALUES = { config = true }
for name in pairs(connect.OPTIONS) do M.REPORT_COMMON_VALUES[name] = true end

--- Command-line options: `--name value`, `--name=value`, flags; the rest are
-- operands. Unknown options are usage errors.
-- @param spec {table} flags (set), values (set); the common options are added
-- @return options, operands; or nil, message
function M.report_parse_args(args, spec)
  local values = {}
  for name in pairs(M.REPORT_COMMON_VALUES) do values[name] = true end
  for name in pairs(spec.values) do values[name] = true end
  return options.parse(args, { style = 'report', flags = spec.flags, values = values })
end

--- The config file (a Lua chunk returning a table, its keys checked), or {} without --config.
function M.report_config(o)
  if not o.config then return {} end
  return M.load_config(o.config)
end

--- The start every report subcommand shares: its options and the common ones, --help, and
-- the config file.
-- @param name {string} the subcommand, e.g. 'ingest'
-- @param args {table} its arguments
-- @param spec {table} flags, values (sets) as parse_args; max_operands (nil: any number)
-- @param usage {string} the --help text
-- @return opts, operands, conf; or nil, exit status (--help written, or a usage error told)
function M.report_start(name, args, spec, usage)
  local who = 'dmarc report ' .. name
  local o, rest = M.report_parse_args(args, spec)
  if not o then return nil, M.fail(who, rest .. ' (see --help)', 2) end
  if o.help then
    io.stdout:write(usage)
    return nil, 0
  end
  if spec.max_operands and #rest > spec.max_operands then
    return nil, M.fail(who, 'unexpected argument ' .. text.shown(rest[spec.max_operands + 1]), 2)
  end
  local conf, cerr = M.report_config(o)
  if not conf then return nil, M.fail(who, 'config: ' .. tostring(cerr), 2) end
  local rs, rerr = connect.settings(o, conf, nil, connect.DEFAULT_ADDRESS)
  if not rs then return nil, M.usage_fail(who, rerr) end
  o._redis = rs
  return o, rest, conf
end

--- The key prefix option, checked.
function M.report_prefix(o, conf)
  local report = require 'dmarc.report.rows'
  local ingest = require 'dmarc.owner.ingest'
  local p = options.setting(o, conf, 'redis-prefix', ingest.defaults.prefix)
  if not report.valid_prefix(p) then return nil end
  return p
end

--- Wall-clock seconds, sub-second when luasocket is installed.
function M.clock()
  local ok, socket = pcall(require, 'socket')
  if ok and type(socket) == 'table' and socket.gettime then return socket.gettime end
  return os.time
end

-- }==================================================================

return M
