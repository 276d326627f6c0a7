--- `dmarc report serve`: the dashboard over the ingested aggregate reports
-- (lua/dmarc/owner/dashboard.lua), served on loopback by default. Loaded by the
-- `dmarc report` dispatcher as report_<subcommand>.
local common = require 'dmarc.cli.common'
local connect = require 'dmarc.redis.connect'
local options = require 'dmarc.util.options'
local time = require 'dmarc.util.time'

local M = {}

local USAGE = [[
usage: dmarc report serve [--listen HOST:PORT] [--days N] [--until YYYY-MM-DD]

Serves a dashboard of the ingested aggregate reports: volume and DMARC pass
rate over time, sources with a drill-down per source, reporters, forwarding,
likely spoofing and the readiness verdict. Pages are drawn on the server (SVG
charts, no script, nothing loaded from elsewhere).

  --listen HOST:PORT     address to listen on (default 127.0.0.1:8025; port 0
                         picks a free one). Only loopback is safe without a
                         proxy in front: the dashboard has no login.
  --days N               default period of the pages (30)
  --until YYYY-MM-DD     default last day of the pages (today, UTC)
  --max-requests N       stop after N requests (tests)
  --quiet                no request log on stderr
common options:
  --config FILE          Lua file returning a table of options
]] .. common.REDIS_HELP .. [[

The first line on stdout is "serving http://HOST:PORT/" once the server listens.
exit status: 0 stopped, 1 cannot listen or Redis unusable, 2 usage.
]]

local function die(msg, status)
  return common.fail('dmarc report serve', msg, status)
end

-- No operands: everything is an option.
local SPEC = {
  max_operands = 0,
  flags = { quiet = true },
  values = { listen = true, days = true, ['until'] = true, ['max-requests'] = true },
}

--- Entry point: run(args) → exit status.
function M.run(args)
  local dashboard = require 'dmarc.owner.dashboard'
  local summary = require 'dmarc.owner.summary'
  local o, rest, conf = common.report_start('serve', args, SPEC, USAGE)
  if not o then return rest end -- --help or a usage error: rest is the exit status
  local listen = options.setting(o, conf, 'listen', dashboard.defaults.listen)
  if not dashboard.parse_listen(listen) then return die('bad --listen address', 2) end
  local days = tonumber(o.days or dashboard.defaults.days)
  if not days or days < 1 or days > summary.limits.max_days or days % 1 ~= 0 then
    return die('--days must be 1..' .. summary.limits.max_days, 2)
  end
  if o['until'] and not time.parse_day(o['until']) then
    return die('--until needs YYYY-MM-DD', 2)
  end
  local max_requests = o['max-requests'] and tonumber(o['max-requests'])
  if o['max-requests'] and (not max_requests or max_requests < 1) then
    return die('--max-requests must be a positive number', 2)
  end
  local prefix = common.report_prefix(o, conf)
  if not prefix then return die('invalid --redis-prefix', 2) end
  local ok_socket = pcall(require, 'socket')
  if not ok_socket then return die('lua-socket is not installed', 1) end
  local source = dashboard.redis_source {
    prefix = prefix, connect = function() return connect.from_options(o, conf) end,
  }
  local log
  if not o.quiet then
    log = function(level, msg) io.stderr:write('serve: ', level, ': ', msg, '\n') end
  end
  local ok, err = dashboard.serve {
    listen = listen, source = source, days = days, until_day = o['until'],
    max_requests = max_requests, log = log,
    ready = function(host, port)
      local h = host:find(':', 1, true) and ('[' .. host .. ']') or host
      io.stdout:write(string.format('serving http://%s:%d/\n', h, port))
      io.stdout:flush()
    end,
  }
  source.close()
  if not ok then return die(err, 1) end
  return 0
end

return M
