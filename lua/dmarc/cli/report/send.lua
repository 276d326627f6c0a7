--- `dmarc report send --out DIR [--smtp HOST:PORT | --sendmail CMD] ...`: verify the
-- destinations of the generated reports, deliver them, retry, delete delivered data; also
-- delivers the failure reports `dmarc check --failure-reports` queued. With --date or
-- --from/--to it generates that period first. Run by bin/dmarc as `dmarc report send`.
-- @module dmarc.cli.report.send

local common = require 'dmarc.cli.common'
local files = require 'dmarc.util.files'
local options = require 'dmarc.util.options'

local M = {}

local get = options.setting

local function make_resolver(o, conf)
  local json_file = get(o, conf, 'dns-json')
  if json_file then
    local cjson = require 'cjson'
    local text, err = files.read(json_file)
    if not text then return nil, err end
    local ok, map = pcall(cjson.decode, text)
    if not ok or type(map) ~= 'table' then return nil, json_file .. ': not a JSON object' end
    local json_dns = require 'dmarc.receive.json_dns'
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

-- The relay of --smtp HOST:PORT (or [ADDRESS]:PORT, or a host alone on port 25).
local function smtp_relay(o, conf)
  local smtp = get(o, conf, 'smtp', '127.0.0.1:25')
  if type(smtp) == 'table' then return smtp.host, smtp.port end
  local host, port = tostring(smtp):match('^%[?([^%]]+)%]?:(%d+)$')
  if not host then host, port = smtp, 25 end
  return host, port
end

-- The SMTP transport of --smtp and its options. A relay whose certificate is refused is our
-- configuration (or someone in the way), not the destination's answer: the reports stay
-- queued and the run fails, saying why (@relay.untrusted). Once refused, the relay is not
-- asked again in this run: the answer would be the same.
-- @return the transport, or nil, message, exit status
local function smtp_transport(o, conf, rep, relay)
  local host, port = smtp_relay(o, conf)
  local password = os.getenv('DMARC_SMTP_PASSWORD')
  local pfile = get(o, conf, 'smtp-password-file')
  if pfile then
    password = (files.read(pfile) or ''):gsub('[\r\n]+$', '')
  end
  local user = get(o, conf, 'smtp-user')
  if user and not password then return nil, 'AUTH needs a password', 2 end
  local starttls = get(o, conf, 'starttls', 'try')
  if starttls ~= 'never' and starttls ~= 'try' and starttls ~= 'require' then
    return nil, '--starttls must be never, try or require', 2
  end
  local smtp_send = require('dmarc.report.send').smtp_transport {
    host = host, port = tonumber(port), helo = get(o, conf, 'helo', rep.submitter),
    starttls = starttls, user = user, password = password,
    timeout = tonumber(get(o, conf, 'smtp-timeout', 30)),
    tls_ca = get(o, conf, 'tls-ca'), tls_no_verify = get(o, conf, 'tls-no-verify') == true,
  }
  return function(...)
    if relay.untrusted then return 'temp', nil, relay.untrusted, 'untrusted' end
    local status, code, text, kind = smtp_send(...)
    if kind == 'untrusted' then relay.untrusted = text end
    return status, code, text, kind
  end
end

-- The run's counts on stderr (unless --quiet).
local function print_summary(o, summary)
  if o.quiet then return end
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

local function do_send(o, conf, conn)
  local report_send = require 'dmarc.report.send'
  if o.date or o.from or o.to then
    local s, err, st = common.report_generate(o, conf, conn)
    if not s then return nil, err, st end
  end
  local rep = common.report_reporter(o, conf)
  local from = get(o, conf, 'envelope-from', rep.email)
  if type(from) ~= 'string' or not from:match('^[^%s<>@]+@[%w%.%-_]+$') then
    return nil, 'an envelope sender is needed (--envelope-from or the reporter --email)', 2
  end
  local relay = { untrusted = nil }
  local transport, terr, tst
  local sendmail = get(o, conf, 'sendmail')
  if sendmail then
    transport = report_send.sendmail_transport { command = sendmail }
  else
    transport, terr, tst = smtp_transport(o, conf, rep, relay)
    if not transport then return nil, terr, tst end
  end
  local resolve, rerr = make_resolver(o, conf)
  if not resolve then return nil, rerr, 2 end
  local now = tonumber(o.now)
  local clock = now and function() return now end or os.time
  local format = get(o, conf, 'format', 'rfc9990')
  local size_limits = o['size-limits'] or conf.size_limits or format == 'rfc7489'
  local summary, err, code = report_send.send {
    redis = conn, out = o.out, prefix = get(o, conf, 'redis-prefix'), transport = transport,
    envelope_from = from, size_limits = size_limits, clock = clock,
    verify = report_send.verifier { resolve = resolve, clock = clock },
    retry_base = tonumber(get(o, conf, 'retry-base')),
    max_attempts = tonumber(get(o, conf, 'max-attempts')),
    log = function(level, msg)
      if not o.quiet or level ~= 'info' then io.stderr:write('send: ', level, ': ', msg, '\n') end
    end,
  }
  if not summary then return nil, err, code == 'locked' and 75 or 1 end
  print_summary(o, summary)
  if relay.untrusted then
    return nil, relay.untrusted .. '; the reports stay queued (--tls-ca FILE names the trust'
      .. ' anchors, --tls-no-verify turns verification off)', 1
  end
  return summary
end

--- Entry point: run(args) -> exit status (args: those after `send`).
function M.run(args)
  return common.report_run('send', args, do_send)
end

return M
