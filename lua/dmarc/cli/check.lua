--- `dmarc check`: authenticate one message (SPF, DKIM, the ARC verdict of a trusted host),
-- evaluate DMARC, apply the site policy, and print an Authentication-Results field (RFC 8601)
-- and the decision; or, with --json, everything as one object.
-- Exit status: 0 checked (whatever the verdict), 2 usage or input error (bad option,
-- unreadable file, malformed message, zone or site script that does not load).
--
-- With Redis (--redis, --redis-cluster or $DMARC_REDIS) it is the scanner for every MTA hook that is not
-- rspamd: overrides and recipient sets come from the store (docs/redis-keys.md), a report
-- row is written for every evaluation whose applied record has rua [RUA-1], and, when asked
-- for, failure reports are queued [FAIL-1] (docs/report-keys.md). Redis trouble is never a
-- failure of the check: the exit status and decision stay what they are without Redis, and
-- a warning goes to stderr.
-- @module dmarc.cli.check

local auth = require 'dmarc.receive.auth'
-- Loaded at start: without the dmarc.io module this command is not available.
require 'dmarc.io'
local policy = require 'dmarc.site.policy'
local report = require 'dmarc.report.rows'
local common = require 'dmarc.cli.common'
local connect = require 'dmarc.redis.connect'
local json = require 'dmarc.util.json'
local options = require 'dmarc.util.options'

local M = {}

M.USAGE = [[
usage: dmarc check [options] [FILE]

Checks the message in FILE (default: standard input): SPF, every DKIM signature, the ARC
verdict of a trusted host, DMARC, then the site policy. Prints an Authentication-Results
field and the decision.

SMTP facts (SPF is checked only when --ip is given):
  --ip ADDR                  the connecting client's address
  --helo NAME                the HELO/EHLO name
  --mail-from ADDR           the MAIL FROM address ("" or "<>": the null reverse-path,
                             checked as postmaster@HELO)
  --rcpt ADDR                a recipient (repeatable; per-recipient site rules)
  --evidence TEXT            other grounds against the message (reputation, content):
                             lets a site reject on p=reject (RFC 9989 7.4)
Policy:
  --policy FILE              site script (alias --site; default: the built-in defaults)
  --mode rfc9989|rfc7489     discovery rules (default rfc9989)
  --roll N                   pct sampling roll 0-99 (default random)
DNS (default: the nameservers of /etc/resolv.conf):
  --zone FILE                answer from a zone file (offline)
  --dns-server HOST[:PORT]   ask this recursive server
  --dns-timeout SECONDS      per try (default 2)
Authentication-Results:
  --authserv-id ID           our authserv-id (default "localhost"); incoming fields that
                             claim it are ignored
  --trusted-authserv-id ID   a host whose Authentication-Results (its arc= verdict) is
                             trusted (repeatable)
Output:
  --json                     everything as one JSON object
Redis (off unless --redis, --redis-cluster, the report config's redis or redis_cluster,
or $DMARC_REDIS gives a server):
  --redis ADDR               HOST:PORT, [IPv6]:PORT or unix:PATH (no default: without
                             --redis, --redis-cluster, the report config or $DMARC_REDIS,
                             Redis is not used)
  --redis-cluster H:P[,H:P]  a Redis Cluster instead: seed nodes (any masters; the rest
                             are found with CLUSTER SLOTS). Commands go to the master of
                             their key's slot; the overrides all live in the {TAG} slot,
                             a report row's keys in its domain's. No --redis-db.
  --redis-prefix P           key prefix of overrides and reports (default dmarc:)
  --redis-tag TAG            hash tag of the override store (default ovr)
  --redis-db N               database number (not with a cluster)
  --redis-timeout SECONDS    connect and reply timeout (default 2)
  --redis-password-file F    the password: the first line of F (default:
                             $DMARC_REDIS_PASSWORD)
  With Redis, overrides and recipient sets come from the override store, and a report
  row is written for every evaluation whose applied record has rua (read by `dmarc
  report generate`). Redis down: the site defaults apply, the exit status and decision
  are the same, and a warning goes to stderr. Rows of a message checked while Redis is
  down are lost (counted in the warning) unless --spool keeps them.
  --spool DIR                keep the rows of messages checked while Redis is down or
                             not ready (LOADING, BUSY, READONLY...; on a cluster: while
                             the master of their slot is) in DIR (one file per message,
                             at most 10000 files); the next run that reaches Redis
                             writes them first
  --no-report-rows           write no report rows (another scanner collects them)
  --failure-reports          queue RFC 9991 failure reports as the record's fo asks;
                             `dmarc report send` verifies the ruf destinations and
                             delivers them (needs the reporter identity below)
  --time EPOCH               when the message arrived (default now): the day of its
                             report row, Arrival-Date of its failure reports
Reporter identity (for --failure-reports; also skips rows about our own reports):
  --report-config FILE       the `dmarc report` config file (org_name, email,
                             submitter, the redis_* settings, failure_rate_limit,
                             failure_rate_window, failure_queue_max)
  --org-name NAME --email ADDR --submitter DOMAIN   (win over the config file)
]]

local VALUE_OPTIONS = {
  ip = true, helo = true, ['mail-from'] = true, rcpt = true, evidence = true, policy = true,
  site = true, mode = true, roll = true, zone = true, ['dns-server'] = true,
  ['dns-timeout'] = true, ['authserv-id'] = true, ['trusted-authserv-id'] = true,
  redis = true, ['redis-cluster'] = true, ['redis-prefix'] = true, ['redis-tag'] = true, ['redis-db'] = true,
  ['redis-timeout'] = true, ['redis-password-file'] = true, spool = true, time = true,
  ['report-config'] = true,
  ['org-name'] = true, email = true, submitter = true,
}
local MULTI_OPTIONS = { rcpt = true, ['trusted-authserv-id'] = true }
local FLAG_OPTIONS = {
  json = true, help = true, ['failure-reports'] = true, ['no-report-rows'] = true,
}
--- Repeated options are bounded like everything from outside.
M.MAX_REPEATS = 100

-- {==================================================================
-- Options
-- ===================================================================

--- Seed nodes of a cluster (dmarc.redis.cluster.parse_nodes, shared with the other commands).
M.MAX_CLUSTER_SEEDS = require('dmarc.redis.cluster').MAX_SEEDS
M.parse_cluster_nodes = require('dmarc.redis.cluster').parse_nodes

-- The options of the evaluation: site script, DNS, mode, roll, authserv-ids.
local function check_eval_options(opts)
  if opts.site then
    if opts.policy then return nil, '--policy and --site are the same option' end
    opts.policy = opts.site
  end
  if opts.zone and opts['dns-server'] then return nil, '--zone and --dns-server exclude each other' end
  if opts.mode and opts.mode ~= 'rfc9989' and opts.mode ~= 'rfc7489' then
    return nil, '--mode must be rfc9989 or rfc7489'
  end
  if opts.roll then
    local n = tonumber(opts.roll)
    if not n or n % 1 ~= 0 or n < 0 or n > 99 then return nil, '--roll must be an integer 0-99' end
    opts.roll = n
  end
  if opts['dns-timeout'] then
    local n = tonumber(opts['dns-timeout'])
    if not n or n <= 0 or n > 60 then return nil, '--dns-timeout must be 0-60 seconds' end
    opts['dns-timeout'] = n
  end
  if opts['authserv-id'] and not opts['authserv-id']:find('^[%w%.%-_]+$') then
    return nil, '--authserv-id must be a host name'
  end
  for _, id in ipairs(opts['trusted-authserv-id']) do
    if not id:find('^[%w%.%-_]+$') then return nil, '--trusted-authserv-id must be a host name' end
  end
  return true
end

-- The Redis options: a cluster or one server, prefix, tag, db, timeout.
local function check_redis_options(opts)
  if opts['redis-cluster'] then
    if opts.redis then return nil, '--redis and --redis-cluster exclude each other' end
    if opts['redis-db'] then return nil, '--redis-db: a Redis Cluster has only database 0' end
    local nodes, nerr = M.parse_cluster_nodes(opts['redis-cluster'])
    if not nodes then return nil, '--redis-cluster: ' .. nerr end
    opts['redis-cluster'] = nodes
  end
  if opts['redis-prefix'] and not report.valid_prefix(opts['redis-prefix']) then
    return nil, '--redis-prefix: at most 64 letters, digits and ":_.-"'
  end
  if opts['redis-tag'] and not opts['redis-tag']:find('^[%w_.:-]+$') then
    return nil, '--redis-tag: letters, digits and "_.:-"'
  end
  if opts['redis-db'] then
    local n = tonumber(opts['redis-db'])
    if not n or n % 1 ~= 0 or n < 0 or n > 2147483647 then return nil, '--redis-db must be a number' end
    opts['redis-db'] = n
  end
  if opts['redis-timeout'] then
    local n = tonumber(opts['redis-timeout'])
    if not n or n < 0.001 or n > 3600 then return nil, '--redis-timeout must be 0.001 to 3600 seconds' end
    opts['redis-timeout'] = n
  end
  return true
end

-- --time and --spool.
local function check_run_options(opts)
  if opts.time then
    local n = tonumber(opts.time)
    if not opts.time:find('^%d+$') or not n or n > 253402300799 then
      return nil, '--time must be seconds since the epoch'
    end
    opts.time = n
  end
  if opts.spool == '' then return nil, '--spool needs a directory' end
  return true
end

--- Parse the command line: options (--name VALUE, --name=VALUE) and at most one FILE.
-- @return opts, or nil, message
function M.parse_args(args)
  local opts, operands = options.parse(args, {
    values = VALUE_OPTIONS, flags = FLAG_OPTIONS, repeated = MULTI_OPTIONS,
    max_repeats = M.MAX_REPEATS, once = true,
    max_operands = 1, too_many_operands = 'more than one message file given',
  })
  if not opts then return nil, operands end
  opts.file = operands[1]
  for _, step in ipairs({ check_eval_options, check_redis_options, check_run_options }) do
    local ok, err = step(opts)
    if not ok then return nil, err end
  end
  return opts
end

local function read_message(file)
  local f, err
  if file == nil or file == '-' then
    f = io.stdin
  else
    f, err = io.open(file, 'rb')
    if not f then return nil, 'cannot read message: ' .. tostring(err) end
  end
  local text = f:read(require('dmarc.receive.message').MAX_MESSAGE_BYTES + 1)
  if f ~= io.stdin then f:close() end
  if text == nil then return nil, 'empty message' end
  return text
end

-- }==================================================================

-- {==================================================================
-- Output
-- ===================================================================

--- One line saying what the decision does.
function M.describe_decision(d)
  local parts = { d.action }
  if d.action == 'folder' then
    parts[#parts + 1] = '"' .. d.folder .. '"'
  elseif d.action == 'score' then
    parts[#parts + 1] = tostring(d.score)
  elseif d.action == 'tag' and d.tag then
    parts[#parts + 1] = d.tag.subject and ('subject "' .. d.tag.subject .. '"')
      or (d.tag.header .. ': ' .. d.tag.value)
  elseif (d.action == 'reject' or d.action == 'defer') and d.smtp_code then
    parts[#parts + 1] = tostring(d.smtp_code) .. ' ' .. tostring(d.smtp_message or '')
  end
  local notes = {}
  if d.disposition then notes[#notes + 1] = 'disposition ' .. d.disposition end
  for _, r in ipairs(d.reasons or {}) do
    notes[#notes + 1] = r.type .. (r.comment and (': ' .. r.comment) or '')
  end
  local line = table.concat(parts, ' ')
  if #notes > 0 then line = line .. ' (' .. table.concat(notes, '; ') .. ')' end
  return line
end

local function as_arrays(res, decision)
  local dkim = res.dkim or { total = 0, signatures = {} }
  local sigs = json.array()
  for i, s in ipairs(dkim.signatures) do sigs[i] = s end
  local dm = {}
  for k, v in pairs(res.dmarc or {}) do dm[k] = v end
  dm.flags = json.array(dm.flags or {})
  dm.queries = json.array(dm.queries or {})
  local arc
  if res.arc then
    arc = {}
    for k, v in pairs(res.arc) do arc[k] = v end
    arc.sealers = json.array(arc.sealers)
    arc.aar = json.array(arc.aar)
  end
  local d
  if decision then
    d = {}
    for k, v in pairs(decision) do d[k] = v end
    d.reasons = json.array(d.reasons or {})
    d.warnings = json.array(d.warnings or {})
  end
  return {
    spf = res.spf, helo = res.helo,
    dkim = { total = dkim.total, signatures = sigs },
    arc = arc,
    ignored_authentication_results = json.array(res.ignored_ar or {}),
    dmarc = dm,
    decision = d,
  }
end

-- }==================================================================

-- {==================================================================
-- Redis: the override store, report rows, failure reports
-- ===================================================================

--- Messages for stderr: the site script's log() and every Redis warning.
M.logger = require('dmarc.util.log').new {
  sink = function(level, msg) io.stderr:write('dmarc check: ', level, ': ', msg, '\n') end,
}

local function valid_email(s)
  return type(s) == 'string' and #s <= 254 and s:find('^[^%s<>@"]+@[%w%.%-_]+$') ~= nil
end

-- The reporter of failure reports, checked.
local function check_reporter(settings)
  local rep = settings.reporter
  if rep.email ~= nil and not valid_email(rep.email) then return nil, '--email must be an address' end
  if rep.submitter ~= nil and not report.valid_domain(rep.submitter) then
    return nil, '--submitter must be a lowercase domain name'
  end
  if settings.failure_reports then
    if not rep.email or not rep.submitter then
      return nil, '--failure-reports needs the reporter --email and --submitter (or --report-config)'
    end
    rep.org_name = rep.org_name or rep.submitter
  end
  return true
end

--- Where Redis is and what to do with it: the options first, then the report config file,
-- then $DMARC_REDIS. settings.redis is nil when no server is configured.
-- @param opts parsed options
-- @param getenv os.getenv or a stand-in (tests)
-- @return settings, or nil, message (a usage error)
function M.redis_settings(opts, getenv)
  getenv = getenv or os.getenv
  local conf = {}
  if opts['report-config'] then
    local c, err = common.load_config(opts['report-config'])
    if not c then return nil, '--report-config: ' .. tostring(err) end
    conf = c
  end
  -- The Redis options every command shares (dmarc.redis.connect.settings); no default
  -- server: without one, Redis is not used.
  local rs, rerr = connect.settings(opts, conf, getenv)
  if not rs then return nil, rerr end
  local settings = {
    prefix = rs.prefix,
    tag = opts['redis-tag'],
    db = rs.db,
    timeout = rs.timeout,
    password = rs.password,
    spool = opts.spool,
    rows = not opts['no-report-rows'],
    failure_reports = opts['failure-reports'] or false,
    reporter = {
      org_name = opts['org-name'] or conf.org_name,
      email = opts.email or conf.email,
      submitter = opts.submitter or conf.submitter,
    },
    failure = {
      rate_limit = tonumber(conf.failure_rate_limit),
      rate_window = tonumber(conf.failure_rate_window),
      queue_max = tonumber(conf.failure_queue_max),
    },
  }
  if rs.cluster then
    settings.cluster = rs.cluster
    settings.redis = { cluster = rs.cluster }
  elseif rs.host or rs.path then
    settings.redis = { host = rs.host, port = rs.port, path = rs.path }
  end
  local ok, err = check_reporter(settings)
  if not ok then return nil, err end
  -- Without a server (e.g. $DMARC_REDIS missing from an MTA's environment) the check still
  -- runs: a warning, never an exit status that would hold up mail.
  if not settings.redis and (settings.failure_reports or settings.spool) then
    settings.warning = (settings.failure_reports and '--failure-reports' or '--spool')
      .. ' has no effect without Redis (--redis, --redis-cluster, the report config, or'
      .. ' $DMARC_REDIS)'
  end
  return settings
end

-- One connection for the whole run, shared by the store, the rows and the failure queue.
-- Neither a failed connect nor a connection that broke (the store closes one that failed
-- it) is tried again in the same run: a dead or hanging Redis costs one timeout.
local function redis_link(settings)
  local link = { conn = nil, failed = nil }
  function link.get()
    local c = link.conn
    if c then
      local ok, broken = pcall(c.is_broken, c)
      if ok and not broken then return c end
      link.conn = nil
      link.failed = link.failed or 'the connection to Redis broke'
    end
    if link.failed then return nil, link.failed, 'io' end
    -- A Cluster router has the connection's :command/:pipeline contract, so the store, the
    -- rows and the failure queue use it unchanged; it routes each command by slot.
    local where = settings.redis
    local conn, err, code = connect.open {
      cluster = settings.cluster, host = where.host, port = where.port, path = where.path,
      timeout = settings.timeout, password = settings.password, db = settings.db,
    }
    if not conn then
      link.failed = tostring(err)
      return nil, link.failed, code or 'io'
    end
    link.conn = conn
    return conn
  end
  function link.broken(err)
    if link.conn then pcall(link.conn.close, link.conn) end
    link.conn = nil
    link.failed = tostring(err)
  end
  function link.close()
    if link.conn then pcall(link.conn.close, link.conn) end
    link.conn = nil
  end
  -- A pipeline through the link (the failure reporter's `redis`).
  link.pipeline_proxy = {
    pipeline = function(_, cmds)
      local c, err, code = link.get()
      if not c then return nil, err, code end
      local r, perr, pcode = c:pipeline(cmds)
      if not r then link.broken(perr) end
      return r, perr, pcode
    end,
  }
  return link
end

local function where_text(settings)
  if settings.cluster then return 'cluster ' .. table.concat(settings.cluster, ',') end
  local w = settings.redis
  if w.path then return 'unix:' .. w.path end
  return tostring(w.host) .. ':' .. tostring(w.port)
end

-- The evaluation input (as auth.check built it) that report rows and failure reports
-- describe: the same SPF result and DKIM signatures, in the same order, so the
-- evaluation's per-signature alignment matches [AGG-6]. The SPF record evaluated (all its
-- TXT strings, RFC 7208 §3.3) goes along for the failure reports' SPF-DNS (RFC 6591 §3.2).
local function evaluation_input(res)
  local input = { dkim = {} }
  if res.spf and res.spf.domain ~= '' then
    input.spf = { result = res.spf.result, domain = res.spf.domain, scope = res.spf.scope,
                  record = res.spf.record }
  end
  local max = require('dmarc').limits.max_dkim
  for i, s in ipairs(res.dkim and res.dkim.signatures or {}) do
    if i > max then break end
    if s.domain ~= '' then
      input.dkim[#input.dkim + 1] = { result = s.result, domain = s.domain, selector = s.selector }
    end
  end
  return input
end

local function plural(n, word)
  return string.format('%d %s%s', n, word, n == 1 and '' or 's')
end

-- The spool named by --spool DIR, or nil (said once when it cannot be opened).
local function open_spool(settings)
  if not settings.spool then return nil end
  local spool, serr = report.spool(settings.spool)
  if not spool then M.logger:warn('%s', tostring(serr)) end
  return spool
end

-- Redis could not be reached: this message's rows go to the spool, or are lost and counted.
local function keep_rows_without_redis(settings, spool, rows, err, out)
  if #rows == 0 then return end
  if spool then
    local ok, werr = spool:write(rows)
    if ok then
      out.rows_spooled = #rows
      M.logger:warn('Redis %s unavailable (%s): %s kept in %s', where_text(settings),
                    tostring(err), plural(#rows, 'report row'), settings.spool)
      return
    end
    err = tostring(err) .. '; ' .. tostring(werr)
  end
  out.rows_lost = #rows
  M.logger:warn('Redis %s unavailable (%s): %s of this message lost%s', where_text(settings),
                tostring(err), plural(#rows, 'report row'),
                spool and '' or ' (--spool DIR keeps them until Redis is back)')
end

-- The spool's rows first (older rows before this message's), then this message's.
-- @return all rows, the claimed files, how many came from the spool, the set of spooled rows
local function rows_with_spool(spool, rows)
  local all, claims, bad = {}, {}, 0
  if spool then all, claims, bad = spool:claim() end
  if bad > 0 then M.logger:warn('spool: %s dropped', plural(bad, 'malformed row')) end
  local from_spool = #all
  local spooled = {} -- the rows that came from the spool
  for _, row in ipairs(all) do spooled[row] = true end
  for _, row in ipairs(rows) do all[#all + 1] = row end
  return all, claims, from_spool, spooled
end

-- The pipeline failed: the claimed files go back, this message's rows are spooled, or lost
-- and counted.
local function keep_rows_after_failure(link, settings, spool, claims, rows, perr, out)
  link.broken(perr)
  if spool then
    spool:finish(claims, false)
    local ok = #rows == 0 or spool:write(rows)
    if ok then
      out.rows_spooled = #rows
      M.logger:warn('Redis %s failed (%s): %s kept in %s', where_text(settings), tostring(perr),
                    #rows > 0 and plural(#rows, 'report row') or 'the spooled rows',
                    settings.spool)
      return
    end
  end
  out.rows_lost = #rows
  M.logger:warn('Redis %s failed (%s): %s of this message lost', where_text(settings),
                tostring(perr), plural(#rows, 'report row'))
end

-- Settles the claimed spool files once the rows were written. When rows that came from the
-- spool were not reached, the claimed files go back whole: their rows keep their ids, so the
-- ones written now count once when the files are written again (report rows: "Retries").
-- @return this message's unreached rows still to keep, how many spooled rows were unreached
local function settle_spool(spool, claims, unreached, spooled)
  local spool_unreached = 0
  for _, row in ipairs(unreached) do
    if spooled[row] then spool_unreached = spool_unreached + 1 end
  end
  if spool and spool_unreached > 0 then
    spool:finish(claims, false)
    local mine = {}
    for _, row in ipairs(unreached) do
      if not spooled[row] then mine[#mine + 1] = row end
    end
    unreached = mine
  elseif spool then
    spool:finish(claims, true)
  end
  return unreached, spool_unreached
end

-- Rows Redis was not ready for: spooled, or lost and counted.
local function keep_unreached_rows(settings, spool, unreached, why, out)
  if #unreached == 0 then return end
  if spool and spool:write(unreached) then
    out.rows_spooled = #unreached
    M.logger:warn('Redis %s not ready (%s): %s kept in %s', where_text(settings), tostring(why),
                  plural(#unreached, 'report row'), settings.spool)
  else
    out.rows_lost = (out.rows_lost or 0) + #unreached
    M.logger:warn('Redis %s not ready (%s): %s lost%s', where_text(settings), tostring(why),
                  plural(#unreached, 'report row'),
                  spool and '' or ' (--spool DIR keeps them until Redis is ready)')
  end
end

-- Rows of this message (and of the spool) in one pipelined round trip. Redis down: the
-- rows go to the spool, or are lost and counted.
local function write_rows(link, settings, rows, out)
  local log = M.logger
  local conn, err = link.get()
  local spool = open_spool(settings)
  if not conn then return keep_rows_without_redis(settings, spool, rows, err, out) end
  local all, claims, from_spool, spooled = rows_with_spool(spool, rows)
  if #all == 0 then
    if spool then spool:finish(claims, true) end -- claimed files with nothing usable in them
    return
  end
  local res = report.write(conn, all, { prefix = settings.prefix })
  for _, skipped in ipairs(res.invalid) do
    log:warn('report row for %s not stored: %s', tostring(skipped.row.policy_domain),
             tostring(skipped.message))
  end
  if res.commands == 0 then
    if spool then spool:finish(claims, true) end
    return
  end
  if res.failed then
    return keep_rows_after_failure(link, settings, spool, claims, rows, res.error, out)
  end
  -- A row refused for good (an error reply that writing again would get again) is lost,
  -- and counted. Rows Redis was not ready for (LOADING while it replays its AOF, BUSY,
  -- READONLY after a failover...; on a cluster, 'io: ...' replies for the rows of a master
  -- that cannot be reached) are kept like rows of a Redis that is down: spooled, or lost and
  -- counted.
  local unreached, spool_unreached = settle_spool(spool, claims, res.unreached, spooled)
  out.rows_written = res.written
  out.rows_from_spool = from_spool
  if res.refused > 0 then
    out.rows_lost = (out.rows_lost or 0) + res.refused
    log:warn('Redis refused %s (%s): lost', plural(res.refused, 'report row'),
             tostring(res.refused_why))
  end
  if spool_unreached > 0 then
    log:warn('Redis %s not ready (%s): %s kept in %s', where_text(settings),
             tostring(res.unreached_why), plural(spool_unreached, 'spooled report row'),
             settings.spool)
  end
  keep_unreached_rows(settings, spool, unreached, res.unreached_why, out)
end

-- Failure reports [FAIL-1..7] of every author domain's evaluation, queued in Redis.
local function queue_failure_reports(link, settings, res, input, ctx, decision, text, now, out)
  local failure = require 'dmarc.report.failure'
  local ok_core, core = pcall(require, 'dmarc.core')
  local fr = failure.new {
    enabled = true, reporter = settings.reporter, redis = link.pipeline_proxy,
    prefix = settings.prefix, clock = function() return now end,
    rate_limit = settings.failure.rate_limit, rate_window = settings.failure.rate_window,
    queue_max = settings.failure.queue_max,
    version = ok_core and core._VERSION or nil,
  }
  local list = res.details and res.details.domains or {}
  if #list == 0 then list = { res.details and res.details.verdict or res.dmarc } end
  for i, v in ipairs(list) do
    if i > report.limits.max_domains then break end
    if type(v) == 'table' and v.record then
      local n, why, err = fr:queue(v, input, ctx, decision, text)
      out.failure_reports = out.failure_reports + n
      if why and why ~= 'redis' then out.failure_reports_not_made = why end
      if why == 'redis' then
        M.logger:warn('Redis %s unavailable (%s): no failure report queued', where_text(settings),
                      tostring(err))
        return
      elseif why == 'queue_full' then
        M.logger:warn('failure-report queue of %s is full: report dropped', tostring(v.policy_domain))
      end
    end
  end
end

--- Everything Redis is used for after the decision: rows, then failure reports.
-- @return the reporting summary (for --json)
local function report_to_redis(link, settings, res, ctx, decision, text, now)
  local out = { rows_written = 0, rows_spooled = 0, rows_lost = 0, rows_from_spool = 0,
                failure_reports = 0 }
  local input = evaluation_input(res)
  if settings.rows then
    local rows, err, code = report.build_rows(res.dmarc, input, ctx, decision, {
      details = res.details, time = now, reporter_address = settings.reporter.email,
    })
    if not rows then
      -- Said only when a row was due: a message under no rua needs none [RUA-1].
      local list = res.details and res.details.domains or {}
      for i, v in ipairs(list) do
        if i > report.limits.max_domains then break end
        if type(v.record) == 'table' and type(v.record.rua) == 'table' and #v.record.rua > 0 then
          M.logger:warn('no report row: %s (%s)', tostring(err), tostring(code))
          break
        end
      end
      rows = {}
    end
    local ids = report.id_source()
    for i, row in ipairs(rows) do rows[i] = report.prepare_row(row, ids()) end
    write_rows(link, settings, rows, out)
  end
  if settings.failure_reports then
    queue_failure_reports(link, settings, res, input, ctx, decision, text, now, out)
  end
  return out
end

-- }==================================================================

local function usage_error(msg)
  return common.usage_fail('dmarc check', msg)
end

local function input_error(msg)
  return common.fail('dmarc check', msg, 2)
end

-- The site: the script of --policy, or the documented defaults.
-- @return site, or nil, exit status (the input error told)
local function load_site(opts)
  if not opts.policy then return assert(policy.new({}, { log = M.logger })) end
  local site, err = policy.load(opts.policy, { log = M.logger })
  -- The message names the script and the cause; the code is for programs, not people.
  if not site then
    err = tostring(err)
    return nil, input_error(err:find('site script', 1, true) and err or ('site script: ' .. err))
  end
  return site
end

-- Authenticate the message: auth.check with the options of the command line.
-- @return result, or nil, exit status (the input error told)
local function authenticate(opts, settings, resolver, text)
  local check_opts = {
    ip = opts.ip, helo = opts.helo, mail_from = opts['mail-from'],
    authserv_id = opts['authserv-id'] or 'localhost', trusted_authserv_ids = opts['trusted-authserv-id'],
    mode = opts.mode, roll = opts.roll,
    -- Report rows and failure reports are made only with Redis; without it the
    -- evaluation's details would be built for nothing.
    details = settings.redis ~= nil,
    -- An `org` override must match by the real Org Domain, also where discovery stopped at
    -- the author's own record: a failure at quarantine or reject walks on (RFC 9989 4.10).
    engine = require('dmarc').new { failure_org_walk = true },
  }
  local res, err, code = auth.check(resolver, text, check_opts)
  if res then return res end
  if code == 'syntax' or code == 'limit' then
    return nil, input_error('malformed message: ' .. tostring(err))
  end
  return nil, input_error(tostring(err))
end

-- The store of the run's Redis connection: its one MGET per decision goes through the link.
local function open_store(settings, link)
  return require('dmarc.site.store').redis {
    host = settings.redis.host, port = settings.redis.port, path = settings.redis.path,
    prefix = settings.prefix, tag = settings.tag, timeout = settings.timeout,
    where = settings.cluster and where_text(settings) or nil,
    connect = function() return link.get() end,
  }
end

-- The answer on standard output: the A-R field and the decision, or one JSON object.
local function print_result(opts, res, decision, header, reporting)
  if opts.json then
    local out = as_arrays(res, decision)
    out.authentication_results = header
    out.reporting = reporting
    io.stdout:write(json.encode(out), '\n')
    return
  end
  io.stdout:write((header:gsub('\r\n', '\n')), '\n')
  io.stdout:write('Decision: ', M.describe_decision(decision), '\n')
  for _, w in ipairs(decision.warnings or {}) do io.stdout:write('Warning: ', w, '\n') end
  for _, ig in ipairs(res.ignored_ar or {}) do
    io.stdout:write('Ignored: Authentication-Results', ig.authserv_id and (' from ' .. ig.authserv_id) or '',
      ' (', ig.why, ')\n')
  end
end

--- Entry point: run(args) -> exit status.
function M.run(args)
  local opts, err = M.parse_args(args or {})
  if not opts then return usage_error(err) end
  if opts.help then
    io.stdout:write(M.USAGE)
    return 0
  end
  local settings
  settings, err = M.redis_settings(opts)
  if not settings then return usage_error(err) end
  if settings.warning then M.logger:warn('%s', settings.warning) end
  local site, status = load_site(opts)
  if not site then return status end
  local text
  text, err = read_message(opts.file)
  if not text then return input_error(err) end
  local resolver
  resolver, err = common.resolver(opts)
  if not resolver then return input_error('DNS: ' .. tostring(err)) end
  local res
  res, status = authenticate(opts, settings, resolver, text)
  if not res then
    resolver:close()
    return status
  end
  local ctx = auth.policy_ctx(res, { ip = opts.ip, helo = opts.helo, mail_from = opts['mail-from'],
    rcpt = opts.rcpt })
  ctx.evidence = opts.evidence
  local link, st
  if settings.redis then
    link = redis_link(settings)
    st = open_store(settings, link)
  end
  local decision = site:evaluate(res.dmarc, ctx, st)
  local header = auth.format_ar(res, opts['authserv-id'] or 'localhost', decision)
  resolver:close()
  local reporting
  if link then
    local now = opts.time or os.time()
    ctx.arrival = now
    reporting = report_to_redis(link, settings, res, ctx, decision, text, now)
    link.close()
  end
  print_result(opts, res, decision, header, reporting)
  return 0
end

return M
