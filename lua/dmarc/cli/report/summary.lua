--- `dmarc report summary --domain D`: what the ingested aggregate reports say
-- about one policy domain (volume, pass rate, sources, forwarding, spoofing,
-- reporters) and whether it is ready for the next policy step. Loaded by the
-- `dmarc report` dispatcher as report_<subcommand>.
local common = require 'dmarc.cli.common'
local connect = require 'dmarc.redis.connect'
local text = require 'dmarc.util.text'
local time = require 'dmarc.util.time'

local M = {}

local USAGE = [[
usage: dmarc report summary --domain D [--days N] [--until YYYY-MM-DD] [--top N]
                            [--source IP] [--json]

Summarises the aggregate reports ingested for policy domain D over the last N
days (default 30) ending with --until (default today, UTC): volume, DMARC pass
rate, aligned and unaligned passes, top sources with their results,
forwarding, likely spoofing, per reporter, and a readiness verdict for moving
p=none -> quarantine -> reject with the sources to fix first.

  --source IP            also list the records of one source (drill-down)
  --json                 one JSON object on stdout (docs/ingest.md, "Summary")
common options:
  --config FILE          Lua file returning a table of options
]] .. common.REDIS_HELP .. [[

exit status: 0 done, 1 Redis error, 2 usage.
]]

local function die(msg, status)
  return common.fail('dmarc report summary', msg, status)
end

-- No operands: everything is an option.
local SPEC = {
  max_operands = 0,
  flags = { json = true },
  values = { domain = true, days = true, ['until'] = true, top = true, source = true },
}

local function drill_text(s)
  local summary = require 'dmarc.owner.summary'
  local d = s.drill
  local out = { '', 'records of source ' .. text.shown(d.ip) .. ':' }
  for _, r in ipairs(d.rows) do
    local dk, sp = {}, {}
    for _, x in ipairs(r.dkim_results) do dk[#dk + 1] = text.shown(x.domain) .. '=' .. x.result end
    for _, x in ipairs(r.spf_results) do sp[#sp + 1] = text.shown(x.domain) .. '=' .. x.result end
    out[#out + 1] = string.format('  %s %6d %-16s from=%s env=%s disp=%s dkim=%s spf=%s [%s] [%s] %s',
                                  summary.day_text(r.day), r.count, r.class,
                                  text.shown(r.header_from), text.shown(r.envelope_from),
                                  text.shown(r.disposition), text.shown(r.dkim),
                                  text.shown(r.spf), table.concat(dk, ' '),
                                  table.concat(sp, ' '), text.shown(r.org_name))
  end
  return table.concat(out, '\n') .. '\n'
end

--- Entry point: run(args) → exit status.
function M.run(args)
  local summary = require 'dmarc.owner.summary'
  local report = require 'dmarc.report.rows'
  local o, rest, conf = common.report_start('summary', args, SPEC, USAGE)
  if not o then return rest end -- --help or a usage error: rest is the exit status
  local dom = o.domain and o.domain:lower():gsub('%.$', '')
  if not dom or not report.valid_domain(dom) then
    return die('--domain D (a valid domain name) is required', 2)
  end
  local days = tonumber(o.days or 30)
  if not days or days < 1 or days > summary.limits.max_days or days % 1 ~= 0 then
    return die('--days must be 1..' .. summary.limits.max_days, 2)
  end
  local until_time = os.time()
  if o['until'] then
    until_time = time.parse_day(o['until'])
    if not until_time then return die('--until needs YYYY-MM-DD', 2) end
  end
  local ntop = tonumber(o.top or summary.limits.top)
  if not ntop or ntop < 1 or ntop > 1000 or ntop % 1 ~= 0 then
    return die('--top must be 1..1000', 2)
  end
  if o.source and not report.valid_ip(o.source:lower()) then
    return die('--source needs an IP address', 2)
  end
  local prefix = common.report_prefix(o, conf)
  if not prefix then return die('invalid --redis-prefix', 2) end
  local conn, err = connect.from_options(o, conf)
  if not conn then return die(tostring(err), 1) end
  local data, lerr, code = summary.load(conn, { domain = dom, days = days, ['until'] = until_time,
                                                prefix = prefix })
  if conn.close then pcall(conn.close, conn) end
  if not data then return die(tostring(lerr), code == 'usage' and 2 or 1) end
  local s = summary.compute(data, { top = ntop, source = o.source and o.source:lower() })
  if o.json then
    io.stdout:write(summary.json(s), '\n')
  else
    io.stdout:write(summary.text(s))
    if s.drill then io.stdout:write(drill_text(s)) end
  end
  return 0
end

return M
