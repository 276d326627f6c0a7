--- `dmarc report <subcommand>`: aggregate reports from the rows in Redis.
--
--   dmarc report generate [--date D | --from T --to T] [--format rfc9990|rfc7489] --out DIR
--   dmarc report send --out DIR [--smtp HOST:PORT | --sendmail CMD] ...
--
-- Subcommands are looked up in a table; one that is not built in is loaded
-- from lua/dmarc/cli/report_<name>.lua (which exports run(args) → status),
-- so other subcommands can be added without touching this file. The ones
-- the project ships are listed in LOADED, with their line of --help.
local util = require 'dmarc.util'

local M = {}

--- Subcommands loaded from dmarc.cli.report_<name>, in the order --help lists them.
M.LOADED = {
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

local USAGE = [[

common options:
  --config FILE          Lua file returning a table of options (see
                         docs/report-keys.md, "Configuration")
  --redis HOST:PORT      Redis server (default $DMARC_REDIS or 127.0.0.1:6379)
  --cluster H:P[,H:P]    Redis Cluster seed nodes (instead of --redis)
  --prefix P             key prefix (default dmarc:)
  --out DIR              output directory (created if missing)
  --quiet                no progress lines on stderr

generate:
  --date YYYY-MM-DD      one UTC day (default: yesterday)
  --from T --to T        a period of whole UTC days: YYYY-MM-DD or epoch
                         seconds at 00:00 UTC; --to is exclusive
  --format F             rfc9990 (default) or rfc7489
  --org-name NAME --email ADDR --submitter DOMAIN [--extra-contact TEXT]
                         reporter identity (or org_name, email, submitter,
                         extra_contact_info in the config file)
  --max-rows N           rows read per policy domain (default 100000)
  --force                also periods that are not over yet, or already sent

send (also without --date: retries, and the queued failure reports):
  --date D | --from T --to T   generate this period first (as above)
  --smtp HOST:PORT       relay (default 127.0.0.1:25), or
  --sendmail CMD         a sendmail-compatible command
  --helo NAME            EHLO name (default: the submitter domain)
  --starttls MODE        never | try (default) | require
  --smtp-user USER       AUTH user; password from $DMARC_SMTP_PASSWORD or
  --smtp-password-file F
  --envelope-from ADDR   MAIL FROM (default: the reporter email)
  --dns-json FILE        answers for `_report._dmarc` checks from a JSON map
  --zone FILE | --dns-server HOST[:PORT]   resolver for those checks (dmarc.io;
                         default: the system's nameservers)
  --size-limits          honour RFC 7489 !size limits (default: with rfc7489)
  --retry-base SEC       first retry delay (default 300), doubling
  --max-attempts N       then the destination is given up (default 8)

exit status: 0 done (deliveries may be deferred), 1 error, 2 usage,
75 another sender holds the lock.
]]

-- The --help text: the built-in subcommands, then one line each for those
-- loaded from modules (marked when the module is not installed).
function M.usage()
  local lines = { USAGE_HEAD }
  for _, sub in ipairs(M.LOADED) do
    local found = package.searchpath('dmarc.cli.report_' .. sub.name, package.path)
    lines[#lines + 1] = string.format('  %-9s  %s%s\n', sub.name, sub.text,
                                      found and '' or ' (not installed)')
  end
  lines[#lines + 1] = '  (see "dmarc report <subcommand> --help"; others are loaded from\n'
    .. '  dmarc.cli.report_<name> when installed)\n'
  lines[#lines + 1] = USAGE
  return table.concat(lines)
end

local function die(msg, status)
  return util.fail('dmarc report', msg, status)
end

-- ---------------------------------------------------------------------------
-- Options

local FLAGS = { quiet = true, force = true, ['size-limits'] = true, help = true }

-- Lenient: every --name is taken (the subcommands read the ones they know), and a flag
-- given a value is just set.
local function parse_args(args)
  return util.parse_options(args, { style = 'report', lenient = true, flags = FLAGS })
end
M.parse_args = parse_args

-- Option value: command line first, then config file (key with _), then default.
local get = util.setting

--- A time on the command line: epoch seconds, or YYYY-MM-DD (its 00:00 UTC).
local function parse_time(s)
  if s == nil then return nil end
  if tostring(s):match('^%d+$') then return tonumber(s) end
  return util.parse_day(s)
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
  os.execute('mkdir -p ' .. util.shell_quote(dir))
  local probe = dir .. '/.probe'
  local f = io.open(probe, 'w')
  if not f then return false end
  f:close()
  os.remove(probe)
  return true
end

-- ---------------------------------------------------------------------------
-- Subcommands

-- Checks that need no Redis, so usage errors come before connecting.
local function check_generate(o, conf)
  local report_xml = require 'dmarc.report_xml'
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
  local report_xml = require 'dmarc.report_xml'
  local begin, finish, format = o._begin, o._finish, o._format
  local ok_core, core = pcall(require, 'dmarc.core')
  local summary, err, code = report_xml.generate {
    redis = conn, prefix = get(o, conf, 'prefix'), begin = begin, ['end'] = finish,
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

local function make_resolver(o, conf)
  local json_file = get(o, conf, 'dns-json')
  if json_file then
    local cjson = require 'cjson'
    local text, err = util.read_file(json_file)
    if not text then return nil, err end
    local ok, map = pcall(cjson.decode, text)
    if not ok or type(map) ~= 'table' then return nil, json_file .. ': not a JSON object' end
    local json_dns = require 'dmarc.json_dns'
    return json_dns.resolver(map)
  end
  -- The resolvers of dmarc.io (the DNS layer `dmarc check` uses): a zone
  -- file, a server, or the system's nameservers.
  local zone, server = get(o, conf, 'zone'), get(o, conf, 'dns-server')
  local ok, dio = pcall(require, 'dmarc.io')
  if not ok or type(dio) ~= 'table' or type(dio.resolver) ~= 'function' then
    return nil, 'no resolver for destination checks: give --dns-json (dmarc.io is not built)'
  end
  local r, err = dio.resolver { zone = zone, server = server,
                                timeout = tonumber(get(o, conf, 'dns-timeout')) }
  if not r then return nil, err end
  return function(name, qtype) return r:resolve(name, qtype) end
end

local function do_send(o, conf, conn)
  local report_send = require 'dmarc.report_send'
  if o.date or o.from or o.to then
    local s, err, st = do_generate(o, conf, conn)
    if not s then return nil, err, st end
  end
  local rep = reporter(o, conf)
  local from = get(o, conf, 'envelope-from', rep.email)
  if type(from) ~= 'string' or not from:match('^[^%s<>@]+@[%w%.%-_]+$') then
    return nil, 'an envelope sender is needed (--envelope-from or the reporter --email)', 2
  end
  local transport
  local sendmail = get(o, conf, 'sendmail')
  if sendmail then
    transport = report_send.sendmail_transport { command = sendmail }
  else
    local smtp = get(o, conf, 'smtp', '127.0.0.1:25')
    local host, port
    if type(smtp) == 'table' then
      host, port = smtp.host, smtp.port
    else
      host, port = tostring(smtp):match('^%[?([^%]]+)%]?:(%d+)$')
      if not host then host, port = smtp, 25 end
    end
    local password = os.getenv('DMARC_SMTP_PASSWORD')
    local pfile = get(o, conf, 'smtp-password-file')
    if pfile then
      password = (util.read_file(pfile) or ''):gsub('[\r\n]+$', '')
    end
    local user = get(o, conf, 'smtp-user')
    if user and not password then return nil, 'AUTH needs a password', 2 end
    local starttls = get(o, conf, 'starttls', 'try')
    if starttls ~= 'never' and starttls ~= 'try' and starttls ~= 'require' then
      return nil, '--starttls must be never, try or require', 2
    end
    transport = report_send.smtp_transport {
      host = host, port = tonumber(port), helo = get(o, conf, 'helo', rep.submitter),
      starttls = starttls, user = user, password = password,
      timeout = tonumber(get(o, conf, 'smtp-timeout', 30)),
    }
  end
  local resolve, rerr = make_resolver(o, conf)
  if not resolve then return nil, rerr, 2 end
  local now = tonumber(o.now)
  local clock = now and function() return now end or os.time
  local format = get(o, conf, 'format', 'rfc9990')
  local size_limits = o['size-limits'] or conf.size_limits or format == 'rfc7489'
  local summary, err, code = report_send.send {
    redis = conn, out = o.out, prefix = get(o, conf, 'prefix'), transport = transport,
    envelope_from = from, size_limits = size_limits, clock = clock,
    verify = report_send.verifier { resolve = resolve, clock = clock },
    retry_base = tonumber(get(o, conf, 'retry-base')),
    max_attempts = tonumber(get(o, conf, 'max-attempts')),
    log = function(level, msg)
      if not o.quiet or level ~= 'info' then io.stderr:write('send: ', level, ': ', msg, '\n') end
    end,
  }
  if not summary then return nil, err, code == 'locked' and 75 or 1 end
  if not o.quiet then
    io.stderr:write(string.format('send: %d accepted, %d deferred, %d failed, %d skipped, '
                                  .. '%d report sets complete\n', summary.accepted,
                                  summary.deferred, summary.failed, summary.skipped,
                                  summary.completed))
    local f = summary.failure_accepted + summary.failure_deferred + summary.failure_failed
      + summary.failure_skipped + summary.failure_pending
    if f > 0 then
      io.stderr:write(string.format('send: failure reports: %d accepted, %d deferred, %d failed, '
                                    .. '%d skipped, %d waiting\n', summary.failure_accepted,
                                    summary.failure_deferred, summary.failure_failed,
                                    summary.failure_skipped, summary.failure_pending))
    end
  end
  return summary
end

local BUILTIN = { generate = do_generate, send = do_send }

--- Entry point: run(args) → exit status.
function M.run(args)
  local sub = args[1]
  if sub == nil then
    io.stderr:write(M.usage())
    return 2
  end
  if sub == '-h' or sub == '--help' or sub == 'help' then
    io.stdout:write(M.usage())
    return 0
  end
  local rest = {}
  for i = 2, #args do rest[#rest + 1] = args[i] end
  local fn = BUILTIN[sub]
  if not fn then
    if not sub:match('^[a-z][a-z0-9_]*$') then return die('unknown subcommand ' .. sub, 2) end
    local ok, mod = pcall(require, 'dmarc.cli.report_' .. sub)
    if not ok or type(mod) ~= 'table' or type(mod.run) ~= 'function' then
      return die('unknown subcommand "' .. sub .. '" (see dmarc report --help)', 2)
    end
    return mod.run(rest)
  end
  local o, perr = parse_args(rest)
  if not o then return die(perr, 2) end
  if o.help then
    io.stdout:write(M.usage())
    return 0
  end
  local conf = {}
  if o.config then
    local c, cerr = util.load_config(o.config)
    if not c then return die('config: ' .. tostring(cerr), 2) end
    conf = c
  end
  o.out = o.out or conf.out
  if not o.out then return die('--out DIR is required', 2) end
  if sub == 'generate' or o.date or o.from or o.to then
    local ok, cerr = check_generate(o, conf)
    if not ok then return die(cerr, 2) end
  end
  if not ensure_dir(o.out) then return die('cannot write to ' .. o.out, 1) end
  local conn, cerr = util.connect_redis(o, conf)
  if not conn then return die('Redis: ' .. tostring(cerr), 1) end
  local ok, res, err, status = pcall(fn, o, conf, conn)
  if conn.close then pcall(conn.close, conn) end
  if not ok then error(res, 0) end
  if not res then return die(tostring(err), status or 1) end
  return 0
end

return M
