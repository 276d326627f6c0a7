--- What the ingested aggregate reports say about one policy domain: volume,
-- DMARC pass rate, aligned and unaligned passes, top sources, forwarding,
-- likely spoofing, per reporter, and a readiness verdict for the next step
-- p=none → quarantine → reject.
--
-- `load` reads the days of one domain from Redis (docs/ingest.md); the rest
-- are pure functions over the decoded rows, so the numbers can be tested
-- without a server. Every string that came from a report is hostile: `shown`
-- escapes it for a terminal, the dashboard escapes it for HTML, and `json`
-- writes valid UTF-8 JSON.
local ingest = require 'dmarc.owner.ingest'
local keys = require 'dmarc.redis.keys'
local json = require 'dmarc.util.json'
local text = require 'dmarc.util.text'
local failures = require 'dmarc.owner.failures'

local M = {}

M.limits = {
  max_days = 400,         -- days one summary covers (the retention is 180 by default)
  top = 20,               -- sources listed (fix_first: 10)
  top_values = 5,         -- values listed per source attribute
  max_hints = 4,          -- hints per source
  max_sources = 200000,   -- distinct source IPs tracked (the rest counted as 'other')
}

--- Readiness thresholds: the share of legitimate-looking volume an
-- enforcing policy would hit, and how much data a verdict needs.
M.thresholds = {
  ready = 0.005,        -- at most 0.5 % would be hit: go to the next step
  nearly = 0.02,        -- at most 2 %: fix the listed sources first
  min_messages = 100,   -- fewer messages: not enough data for a verdict
  min_days = 7,         -- fewer days with reports (or the whole period, if shorter)
}

M.NEXT_POLICY = { none = 'quarantine', quarantine = 'reject' }

local FIX_FIRST = 10 -- sources listed to fix before the next policy step

-- The classes of a record, from the domain owner's point of view:
--   pass             DMARC pass (an aligned SPF or DKIM pass)
--   forwarded        DMARC pass through DKIM while SPF failed: the forwarding
--                    signature (the message went through a forwarder that
--                    kept the DKIM signature intact)
--   unaligned        DMARC fail, but SPF or DKIM passed for a domain that is
--                    not aligned: the classic own-sender misconfiguration
--                    (an ESP's envelope or signing domain)
--   forwarded_broken DMARC fail, nothing passed, but a DKIM signature of the
--                    domain was there and broke, or the receiver gave a
--                    forwarding reason: a mailing list or forwarder that
--                    modified the message
--   spoof            DMARC fail and nothing of ours: likely spoofing
M.CLASSES = { 'pass', 'forwarded', 'unaligned', 'forwarded_broken', 'spoof' }

--- A value from a report as a terminal may show it: printable ASCII as is,
-- every other byte as \xHH (no escape sequences, no bidi tricks).
M.shown = text.shown

--- Whether domain d is the policy domain, below it or above it (the same
-- organisation as far as a report on this policy domain can tell).
local related = ingest.related
M.related = related

--- The class of one decoded record (see M.CLASSES) and the raw passes that
-- were not aligned: {spf = {domain...}, dkim = {domain...}}. The ingest
-- classifies too (its per-report tally), so the rule lives there.
M.classify = ingest.classify

local function bump(t, k, n)
  if k == nil then return end
  t[k] = (t[k] or 0) + n
end

-- Every list of a summary is ordered the same way: the largest count first, ties
-- by name, so equal data always gives equal output. Only the first n are kept
-- (all without n).
local function rank(list, count_key, name_key, n)
  table.sort(list, function(a, b)
    if a[count_key] ~= b[count_key] then return a[count_key] > b[count_key] end
    return a[name_key] < b[name_key]
  end)
  for i = #list, (n or #list) + 1, -1 do list[i] = nil end
  return list
end

-- The largest entries of a value → count map, as {value=, messages=}.
local function top(map, n)
  local out = {}
  for k, v in pairs(map) do out[#out + 1] = { value = k, messages = v } end
  return rank(out, 'messages', 'value', n)
end

local function rate(part, whole)
  if whole == 0 then return 0 end
  return part / whole
end

--- A share as a percentage with one decimal, rounded down: 84,889 of 84,890
-- is 99.9 %, never 100.0 % (which only all of them is).
function M.percent(x)
  x = x or 0
  local tenths = math.floor(x * 1000 + 1e-9)
  if tenths >= 1000 and x < 1 then tenths = 999 end
  return string.format('%.1f%%', tenths / 10)
end

--- The UTC days a summary covers: n days ending with the day of `until`
-- (epoch seconds), oldest first, as YYYYMMDD.
function M.day_list(until_time, n)
  local last = until_time - until_time % 86400
  local days = {}
  for i = n - 1, 0, -1 do days[#days + 1] = keys.day_of(last - i * 86400) end
  return days
end

-- ---------------------------------------------------------------------------
-- Reading

local function as_pairs(reply)
  if type(reply) ~= 'table' then return {} end
  return reply
end

-- The pipeline of one domain's days: per day its rows and its reports, then the failure
-- reports' commands.
-- @return the commands, how many of them read aggregate data
local function load_commands(prefix, dom, days)
  local cmds = {}
  for _, day in ipairs(days) do
    local k = ingest.keys(prefix, dom, day)
    cmds[#cmds + 1] = { 'HGETALL', k.rows }
    cmds[#cmds + 1] = { 'HGETALL', k.reports }
  end
  local nagg = #cmds
  for _, c in ipairs(failures.load_commands(prefix, dom, days)) do cmds[#cmds + 1] = c end
  return cmds, nagg
end

-- One day's stored rows (field: the encoded record, value: its count); a row that cannot
-- be read is counted in data.bad_rows.
local function add_day_rows(data, rows, day)
  for j = 1, #rows - 1, 2 do
    local rec = ingest.decode_record(rows[j])
    local count = tonumber(rows[j + 1])
    if rec and count then
      rec.count = count
      rec.day = day
      data.rows[#data.rows + 1] = rec
    else
      data.bad_rows = data.bad_rows + 1
    end
  end
end

-- One day's stored reports (field: org and report id, value: its JSON metadata) and the
-- messages dropped at the day's row cap.
local function add_day_reports(data, reps, day)
  local cjson = require 'cjson'
  for j = 1, #reps - 1, 2 do
    local field, value = reps[j], reps[j + 1]
    if field == '#dropped_messages' then
      data.dropped_messages = data.dropped_messages + (tonumber(value) or 0)
      data.dropped_days[day] = true
    elseif field:sub(1, 1) ~= '#' then
      local org, rid = ingest.decode_report_field(field)
      local ok, info = pcall(cjson.decode, value)
      if org and ok and type(info) == 'table' then
        data.reports[#data.reports + 1] = { org_name = org, report_id = rid, day = day,
                                            info = info }
      end
    end
  end
end

--- Read one policy domain's days from Redis.
-- @param conn a dmarc.redis connection or dmarc.redis.cluster router
-- @param opts {table} domain, days (number, default 30), ['until'] (epoch,
--   default now), prefix
-- @return data {domain, days, rows = {rec + count, day}, reports = {org_name,
--   report_id, day, info}, dropped_messages, dropped_days (set of days whose
--   row cap was reached), bad_rows}, or nil, msg, code
function M.load(conn, opts)
  local dom = opts.domain
  if not keys.valid_domain(dom) then return nil, 'invalid domain', 'usage' end
  local n = tonumber(opts.days) or 30
  if n < 1 or n > M.limits.max_days or n % 1 ~= 0 then
    return nil, 'days must be 1..' .. M.limits.max_days, 'usage'
  end
  local prefix = opts.prefix or ingest.defaults.prefix
  if not keys.valid_prefix(prefix) then return nil, 'invalid key prefix', 'usage' end
  local days = M.day_list(opts['until'] or os.time(), n)
  local cmds, nagg = load_commands(prefix, dom, days)
  local replies, err, code = conn:pipeline(cmds)
  if not replies then return nil, err, code or 'io' end
  local data = { domain = dom, days = days, rows = {}, reports = {}, dropped_messages = 0,
                 dropped_days = {}, bad_rows = 0 }
  for i, day in ipairs(days) do
    local rows, reps = replies[2 * i - 1], replies[2 * i]
    for _, r in ipairs({ rows, reps }) do
      if type(r) == 'table' and r.err then return nil, tostring(r.err), 'redis' end
    end
    add_day_rows(data, as_pairs(rows), day)
    add_day_reports(data, as_pairs(reps), day)
  end
  local fail_replies = {}
  for i = nagg + 1, #cmds do fail_replies[#fail_replies + 1] = replies[i] end
  data.failure_reports = failures.decode(fail_replies, days)
  return data
end

-- ---------------------------------------------------------------------------
-- Computing

local function new_source(ip)
  return { ip = ip, messages = 0, pass = 0, classes = {}, header_from = {}, envelope_from = {},
           spf = {}, dkim = {}, reporters = {}, days = {}, dispositions = {}, hints = {},
           hint_seen = {}, at_risk = 0 }
end

local function add_hint(src, code, dom)
  local key = code .. ' ' .. (dom or '')
  if src.hint_seen[key] or #src.hints >= M.limits.max_hints then return end
  src.hint_seen[key] = true
  src.hints[#src.hints + 1] = { code = code, domain = dom }
end

local function finish_source(s, n)
  local classes = {}
  local best, best_n = nil, -1
  for _, c in ipairs(M.CLASSES) do
    local v = s.classes[c] or 0
    classes[c] = v
    if v > best_n then best, best_n = c, v end
  end
  return {
    ip = s.ip, messages = s.messages, pass = s.pass, pass_rate = rate(s.pass, s.messages),
    class = best, classes = classes, at_risk = s.at_risk,
    header_from = top(s.header_from, n), envelope_from = top(s.envelope_from, n),
    spf = top(s.spf, n), dkim = top(s.dkim, n), reporters = top(s.reporters, n),
    dispositions = top(s.dispositions, n), hints = s.hints,
  }
end

-- A DKIM or SPF result as a source lists it; a result without a domain
-- says so (a DKIM "none" without a domain: no signature at all).
local function result_label(x, kind)
  if x.domain ~= '' then return x.domain .. ' ' .. x.result end
  if kind == 'dkim' and x.result == 'none' then return '(no signature)' end
  return '(no domain) ' .. x.result
end
M.result_label = result_label

-- The hint for a raw pass that was not aligned, from what the report says:
-- a reporter that gave no evaluated (aligned) result cannot be second-guessed,
-- and a pass for the From domain itself is aligned in any mode, so a fail
-- there is the reporter's to explain, not strict alignment.
local function hint_code(kind, evaluated, passed_for, header_from, dom)
  if evaluated ~= 'pass' and evaluated ~= 'fail' then return kind .. '_not_evaluated' end
  if passed_for ~= '' and passed_for == header_from then return kind .. '_exact' end
  if related(passed_for, dom) then return kind .. '_strict' end
  return kind .. '_unaligned'
end

-- A fresh summary and the working state compute fills step by step.
local function new_state(data, opts)
  local s = {
    domain = data.domain, days = #data.days, first_day = data.days[1],
    last_day = data.days[#data.days], messages = 0, records = 0, dmarc_pass = 0,
    classes = {}, aligned = { spf = 0, dkim = 0, both = 0 }, unaligned_pass = { spf = 0, dkim = 0 },
    dispositions = {}, dropped_messages = data.dropped_messages or 0,
    not_itemised = { messages = 0 }, report_warnings = {},
  }
  for _, c in ipairs(M.CLASSES) do s.classes[c] = 0 end
  local daily, day_index = {}, {}
  for i, day in ipairs(data.days) do
    daily[i] = { day = day, messages = 0, dmarc_pass = 0, reports = 0 }
    for _, c in ipairs(M.CLASSES) do daily[i][c] = 0 end
    day_index[day] = daily[i]
  end
  return { s = s, dom = data.domain, opts = opts, daily = daily, day_index = day_index,
           sources = {}, nsources = 0, other = nil, reporters = {},
           dropped_days = data.dropped_days or {}, itemised = {},
           drill = opts.source and { rows = {} } or nil }
end

local function reporter(st, org)
  local rep = st.reporters[org]
  if not rep then
    rep = { org_name = org, reports = 0, messages = 0, pass = 0 }
    st.reporters[org] = rep
  end
  return rep
end

-- The totals a record counts in, itemised or not: volume, classes, DMARC
-- pass, aligned passes, dispositions, its day, its reporter.
local function count_totals(st, rec, cls, n)
  local s = st.s
  s.messages = s.messages + n
  s.classes[cls] = s.classes[cls] + n
  local passed = cls == 'pass' or cls == 'forwarded'
  if passed then s.dmarc_pass = s.dmarc_pass + n end
  if rec.spf == 'pass' then s.aligned.spf = s.aligned.spf + n end
  if rec.dkim == 'pass' then s.aligned.dkim = s.aligned.dkim + n end
  if rec.spf == 'pass' and rec.dkim == 'pass' then s.aligned.both = s.aligned.both + n end
  bump(s.dispositions, rec.disposition, n)
  local d = st.day_index[rec.day]
  if d then
    d.messages = d.messages + n
    d[cls] = d[cls] + n
    if passed then d.dmarc_pass = d.dmarc_pass + n end
  end
  local rep = reporter(st, rec.org_name)
  rep.messages = rep.messages + n
  if passed then rep.pass = rep.pass + n end
  return passed
end

local function source_of(st, ip)
  local src = st.sources[ip]
  if src then return src end
  if st.nsources < M.limits.max_sources then
    src = new_source(ip)
    st.sources[ip] = src
    st.nsources = st.nsources + 1
    return src
  end
  st.other = st.other or new_source('other')
  return st.other
end

-- The per-source view of an itemised record, with its hints when at risk.
local function count_source(st, rec, cls, unaligned, n, passed)
  local src = source_of(st, rec.source_ip)
  src.messages = src.messages + n
  if passed then src.pass = src.pass + n end
  bump(src.classes, cls, n)
  bump(src.header_from, rec.header_from, n)
  bump(src.envelope_from, rec.envelope_from ~= '' and rec.envelope_from or nil, n)
  for _, x in ipairs(rec.spf_results) do bump(src.spf, result_label(x, 'spf'), n) end
  for _, x in ipairs(rec.dkim_results) do bump(src.dkim, result_label(x, 'dkim'), n) end
  bump(src.reporters, rec.org_name, n)
  bump(src.days, rec.day, n)
  bump(src.dispositions, rec.disposition, n)
  if cls ~= 'unaligned' and cls ~= 'forwarded_broken' then return end
  src.at_risk = src.at_risk + n
  if not unaligned then
    add_hint(src, 'dkim_broken', rec.header_from)
    return
  end
  for _, x in ipairs(unaligned.spf) do
    add_hint(src, hint_code('spf', rec.spf, x, rec.header_from, st.dom), x)
  end
  for _, x in ipairs(unaligned.dkim) do
    add_hint(src, hint_code('dkim', rec.dkim, x, rec.header_from, st.dom), x)
  end
end

-- One stored row: totals, unaligned passes, its source, and (on a day past
-- its row cap) the itemised part add_not_itemised subtracts.
local function add_row(st, rec)
  local n = rec.count
  local cls, unaligned = M.classify(rec, st.dom)
  local s = st.s
  s.records = s.records + 1
  local passed = count_totals(st, rec, cls, n)
  if unaligned then
    if #unaligned.spf > 0 then s.unaligned_pass.spf = s.unaligned_pass.spf + n end
    if #unaligned.dkim > 0 then s.unaligned_pass.dkim = s.unaligned_pass.dkim + n end
  end
  count_source(st, rec, cls, unaligned, n, passed)
  if st.dropped_days[rec.day] then
    bump(st.itemised, rec.day .. '\n' .. rec.org_name .. '\n' .. ingest.tally_key(cls, rec), n)
  end
  if st.drill and rec.source_ip == st.opts.source then
    local r = {}
    for k, v in pairs(rec) do r[k] = v end
    r.class = cls
    st.drill.rows[#st.drill.rows + 1] = r
  end
end

-- What a day's row cap left out: the tallies of that day's reports (kept
-- by the ingest per report) minus its itemised rows, per reporter, class,
-- disposition and aligned results. Counted in every total, itemised in no
-- source: the cap limits the itemisation, never the count.
local function add_not_itemised(st, data)
  if next(st.dropped_days) == nil then return end
  local expected = {}
  for _, r in ipairs(data.reports) do
    if st.dropped_days[r.day] and type(r.info.tally) == 'table' then
      for key, n in pairs(r.info.tally) do
        if type(key) == 'string' then
          bump(expected, r.day .. '\n' .. r.org_name .. '\n' .. key,
               math.floor(tonumber(n) or 0))
        end
      end
    end
  end
  local order = {}
  for k in pairs(expected) do order[#order + 1] = k end
  table.sort(order)
  for _, k in ipairs(order) do
    local rest = expected[k] - (st.itemised[k] or 0)
    local day, org, cls, disp, dkim, spf =
      k:match('^(%d+)\n(.-)\n([^|\n]*)|([^|\n]*)|([^|\n]*)|([^|\n]*)$')
    if rest > 0 and day and st.s.classes[cls] then
      count_totals(st, { day = day, org_name = org, disposition = disp, dkim = dkim, spf = spf },
                   cls, rest)
      st.s.not_itemised.messages = st.s.not_itemised.messages + rest
    end
  end
end

-- Reports: per reporter and day, their warnings, and the policy in force
-- (that of the latest report).
local function add_reports(st, data)
  local s = st.s
  local latest
  s.reports = #data.reports
  for _, r in ipairs(data.reports) do
    local rep = reporter(st, r.org_name)
    rep.reports = rep.reports + 1
    local d = st.day_index[r.day]
    if d then d.reports = d.reports + 1 end
    local b = tonumber(r.info.begin) or 0
    if not latest or b > latest.b or (b == latest.b and r.org_name < latest.org) then
      latest = { b = b, org = r.org_name, info = r.info }
    end
    if type(r.info.warnings) == 'table' then
      for _, w in ipairs(r.info.warnings) do
        if type(w) == 'string' then bump(s.report_warnings, w, 1) end
      end
    end
  end
  local info = latest and latest.info or {}
  s.policy = { p = info.p, sp = info.sp, np = info.np, adkim = info.adkim, aspf = info.aspf,
               pct = info.pct, testing = info.testing, reported_by = latest and latest.org }
end

-- The sources of some classes (forwarding, spoofing), largest first.
local function by_class(slist, classes, limit)
  local out, total = {}, 0
  for _, src in ipairs(slist) do
    local v = 0
    for _, c in ipairs(classes) do v = v + (src.classes[c] or 0) end
    if v > 0 then
      total = total + v
      out[#out + 1] = { ip = src.ip, messages = v, header_from = top(src.header_from, 3),
                        reporters = top(src.reporters, 3) }
    end
  end
  return { messages = total, sources = rank(out, 'messages', 'ip', limit) }
end

-- The sources table: ranked, one page of it (offset, ntop) itemised.
local function list_sources(st, ntop, offset)
  local s = st.s
  local slist = {}
  for _, src in pairs(st.sources) do slist[#slist + 1] = src end
  if st.other then slist[#slist + 1] = st.other end
  rank(slist, 'messages', 'ip')
  s.source_count = #slist
  s.source_offset = offset
  s.sources = {}
  for i = offset + 1, math.min(offset + ntop, #slist) do
    s.sources[#s.sources + 1] = finish_source(slist[i], M.limits.top_values)
  end
  return slist
end

-- Readiness for the next policy step, and the sources to fix first.
local function readiness(st, slist, ndays)
  local s = st.s
  local t = M.thresholds
  local legit = s.classes.pass + s.classes.forwarded + s.classes.unaligned
    + s.classes.forwarded_broken
  local at_risk = s.classes.unaligned + s.classes.forwarded_broken
  local days_with_data = 0
  for _, d in ipairs(st.daily) do
    if d.messages > 0 then days_with_data = days_with_data + 1 end
  end
  local current = s.policy.p or 'none'
  local verdict
  local share = rate(at_risk, legit)
  if s.messages < t.min_messages or days_with_data < math.min(t.min_days, ndays) then
    verdict = 'insufficient_data'
  elseif current == 'reject' then
    verdict = 'enforced'
  elseif share <= t.ready then
    verdict = 'ready'
  elseif share <= t.nearly then
    verdict = 'nearly_ready'
  else
    verdict = 'not_ready'
  end
  local fix = {}
  for _, src in ipairs(slist) do
    if src.at_risk > 0 then
      fix[#fix + 1] = { ip = src.ip, at_risk = src.at_risk, share = rate(src.at_risk, at_risk),
                        class = (src.classes.unaligned or 0) >= (src.classes.forwarded_broken or 0)
                          and 'unaligned' or 'forwarded_broken',
                        hints = src.hints, header_from = top(src.header_from, 3),
                        reporters = top(src.reporters, 3) }
    end
  end
  rank(fix, 'at_risk', 'ip', FIX_FIRST)
  return {
    current = current, next = M.NEXT_POLICY[current], verdict = verdict,
    legitimate = legit, at_risk = at_risk, share = share, spoof_stopped = s.classes.spoof,
    days_with_data = days_with_data, fix_first = fix,
    testing = s.policy.testing == 'y' or (s.policy.pct ~= nil and s.policy.pct < 100),
  }
end

-- The records and days of the one source asked for.
local function drill_down(st, data)
  local drill = st.drill
  local ip = st.opts.source
  local src = st.sources[ip]
  drill.ip = ip
  drill.source = src and finish_source(src, 50) or nil
  local per_day = {}
  for i, day in ipairs(data.days) do
    per_day[i] = { day = day, messages = src and src.days[day] or 0 }
  end
  drill.daily = per_day
  table.sort(drill.rows, function(a, b)
    if a.count ~= b.count then return a.count > b.count end
    if a.day ~= b.day then return a.day < b.day end
    return a.org_name < b.org_name
  end)
  return drill
end

--- The summary of loaded data.
-- @param data {table} from load (or built by hand: domain, days, rows, reports)
-- @param opts {table|nil} top (sources listed), offset (sources skipped
--   before those listed: a page), source (only this IP: the drill-down
--   keeps its rows)
-- @return summary table (docs/ingest.md, "Summary")
function M.compute(data, opts)
  opts = opts or {}
  local st = new_state(data, opts)
  for _, rec in ipairs(data.rows) do add_row(st, rec) end
  add_not_itemised(st, data)
  add_reports(st, data)
  local s = st.s
  s.pass_rate = rate(s.dmarc_pass, s.messages)
  s.daily = st.daily
  s.dispositions = top(s.dispositions, 8)
  local rlist = {}
  for _, r in pairs(st.reporters) do
    r.pass_rate = rate(r.pass, r.messages)
    rlist[#rlist + 1] = r
  end
  s.reporters = rank(rlist, 'messages', 'org_name')
  local ntop = opts.top or M.limits.top
  local slist = list_sources(st, ntop, math.max(0, math.floor(tonumber(opts.offset) or 0)))
  s.forwarding = by_class(slist, { 'forwarded', 'forwarded_broken' }, ntop)
  s.spoofing = by_class(slist, { 'spoof' }, ntop)
  s.readiness = readiness(st, slist, #data.days)
  if st.drill then s.drill = drill_down(st, data) end
  s.failure_reports = failures.summarize(data.failure_reports or { records = {}, over = 0 },
                                         data.days, { top = ntop, source = opts.source })
  return s
end

-- ---------------------------------------------------------------------------
-- Output

local HINTS = {
  spf_unaligned = 'SPF passes for %s, which is not aligned with %s: use a return-path (MAIL FROM) '
    .. 'under %s, or DKIM-sign with d=%s',
  dkim_unaligned = 'DKIM passes for d=%s, which is not aligned with %s: sign with d=%s '
    .. '(or a subdomain)',
  spf_strict = 'SPF passes for %s, related to %s but not aligned: strict SPF alignment (aspf=s) '
    .. 'needs the exact domain',
  dkim_strict = 'DKIM passes for d=%s, related to %s but not aligned: strict DKIM alignment '
    .. '(adkim=s) needs the exact domain',
  dkim_broken = 'a DKIM signature of %s fails: the message was changed in transit (mailing '
    .. 'list, forwarder) or the signer or its key is broken',
  spf_exact = 'SPF passes for %s, the From domain itself, yet the reporter evaluated SPF '
    .. 'alignment as fail: the report does not say why',
  dkim_exact = 'DKIM passes for d=%s, the From domain itself, yet the reporter evaluated DKIM '
    .. 'alignment as fail: the report does not say why',
  spf_not_evaluated = 'SPF passes for %s, but the reporter left out its evaluated (aligned) SPF '
    .. 'result: whether %s is aligned cannot be told from these reports',
  dkim_not_evaluated = 'DKIM passes for d=%s, but the reporter left out its evaluated (aligned) '
    .. 'DKIM result: whether %s is aligned cannot be told from these reports',
}

--- A hint as a sentence (domain values escaped by the caller's escape).
function M.hint_text(h, dom, escape)
  escape = escape or text.shown
  local f = HINTS[h.code]
  if not f then return h.code end
  local d = escape(h.domain or '')
  if h.code == 'spf_unaligned' then return string.format(f, d, dom, dom, dom) end
  if h.code == 'dkim_unaligned' then return string.format(f, d, dom, dom) end
  if h.code == 'dkim_broken' or h.code == 'spf_exact' or h.code == 'dkim_exact' then
    return string.format(f, d)
  end
  if h.code == 'spf_not_evaluated' or h.code == 'dkim_not_evaluated' then
    return string.format(f, d, d)
  end
  return string.format(f, d, dom)
end

M.VERDICT_TEXT = {
  insufficient_data = 'not enough data yet for a verdict',
  enforced = 'already at p=reject',
  ready = 'ready',
  nearly_ready = 'nearly ready: fix the sources below first',
  not_ready = 'not ready: fix the sources below first',
}

local pct = M.percent

local function day_text(day)
  if not day then return '' end
  return day:sub(1, 4) .. '-' .. day:sub(5, 6) .. '-' .. day:sub(7, 8)
end
M.day_text = day_text

local function values(list, n)
  local out = {}
  for i, v in ipairs(list) do
    if i > n then break end
    out[#out + 1] = text.shown(v.value) .. ' (' .. v.messages .. ')'
  end
  return table.concat(out, ', ')
end

-- The parts of the text summary; each adds lines through line(...).

local function text_totals(s, line)
  line('DMARC summary for ', s.domain, ': ', day_text(s.first_day), ' to ', day_text(s.last_day),
       ' (', s.days, ' days)')
  line('')
  line(string.format('messages %d in %d reports from %d reporters; DMARC pass %d (%s)',
                     s.messages, s.reports, #s.reporters, s.dmarc_pass, pct(s.pass_rate)))
  line(string.format('aligned passes: SPF %d, DKIM %d, both %d', s.aligned.spf, s.aligned.dkim,
                     s.aligned.both))
  line(string.format('unaligned passes (SPF or DKIM passed, not aligned): SPF %d, DKIM %d',
                     s.unaligned_pass.spf, s.unaligned_pass.dkim))
  line(string.format('classes: pass %d, forwarded %d, unaligned %d, forwarded_broken %d, spoof %d',
                     s.classes.pass, s.classes.forwarded, s.classes.unaligned,
                     s.classes.forwarded_broken, s.classes.spoof))
  if s.dropped_messages > 0 then
    line(string.format('%d messages not itemised by source (row limit per day reached); '
                       .. '%d of them counted in the totals from their reports', s.dropped_messages,
                       s.not_itemised.messages))
  end
  local warned = top(s.report_warnings)
  if #warned > 0 then
    local w = {}
    for i, x in ipairs(warned) do w[i] = text.shown(x.value) .. ' ' .. x.messages end
    line('reports stored with a warning (docs/ingest.md): ', table.concat(w, ', '))
  end
end

local function text_readiness(s, line)
  local r = s.readiness
  line('')
  line('readiness: p=', text.shown(r.current), r.next and (' -> ' .. r.next) or '', ': ',
       M.VERDICT_TEXT[r.verdict] or r.verdict)
  line(string.format('  %d of %d legitimate-looking messages (%s) would be hit; %d likely '
                     .. 'spoofed would be stopped', r.at_risk, r.legitimate, pct(r.share),
                     r.spoof_stopped))
  if r.testing then line('  note: the published policy is in testing (t=y or pct<100)') end
  for i, f in ipairs(r.fix_first) do
    line(string.format('  %d. %s: %d messages (%s of those at risk), %s', i, text.shown(f.ip),
                       f.at_risk, pct(f.share), f.class))
    for _, h in ipairs(f.hints) do line('       ', M.hint_text(h, s.domain)) end
  end
end

local function text_sources(s, line)
  line('')
  line('top sources:')
  line(string.format('  %-40s %9s %7s  %-16s %s', 'source', 'messages', 'pass', 'class',
                     'header_from / SPF / DKIM'))
  for _, src in ipairs(s.sources) do
    line(string.format('  %-40s %9d %7s  %-16s %s', text.shown(src.ip), src.messages,
                       pct(src.pass_rate), src.class, values(src.header_from, 2)))
    if #src.spf > 0 then line(string.rep(' ', 77), 'SPF ', values(src.spf, 2)) end
    if #src.dkim > 0 then line(string.rep(' ', 77), 'DKIM ', values(src.dkim, 2)) end
  end
  local shown_to = s.source_offset + #s.sources
  if s.source_count > 0 and (shown_to < s.source_count or s.source_offset > 0) then
    line(string.format('  (sources %d to %d of %d; --top N lists more)', s.source_offset + 1,
                       shown_to, s.source_count))
  end
end

local function text_failing(s, line)
  line('')
  line(string.format('forwarding (SPF fails, DKIM passes or breaks): %d messages',
                     s.forwarding.messages))
  for i, f in ipairs(s.forwarding.sources) do
    if i > 5 then break end
    line('  ', text.shown(f.ip), ': ', f.messages)
  end
  line(string.format('likely spoofing: %d messages', s.spoofing.messages))
  for i, f in ipairs(s.spoofing.sources) do
    if i > 5 then break end
    line('  ', text.shown(f.ip), ': ', f.messages, ' (From ', values(f.header_from, 2), ')')
  end
  local fr = s.failure_reports
  line('')
  line(string.format('failure reports: %d (%d messages)%s', fr.reports, fr.incidents,
                     fr.not_itemised > 0 and string.format('; %d more counted, not stored '
                                                           .. '(limit per day)', fr.not_itemised)
                       or ''))
  for i, f in ipairs(fr.sources) do
    if i > 5 then break end
    line('  ', text.shown(f.ip), ': ', f.incidents, ' (', values(f.failed, 2), ')')
  end
end

local function text_reporters(s, line)
  line('')
  line('per reporter:')
  for _, rep in ipairs(s.reporters) do
    line(string.format('  %-40s %5d reports %9d messages %7s pass', text.shown(rep.org_name),
                       rep.reports, rep.messages, pct(rep.pass_rate)))
  end
end

--- The summary as text for a terminal.
function M.text(s)
  local out = {}
  local function line(...) out[#out + 1] = table.concat({ ... }) end
  text_totals(s, line)
  text_readiness(s, line)
  text_sources(s, line)
  text_failing(s, line)
  text_reporters(s, line)
  return table.concat(out, '\n') .. '\n'
end

-- ---------------------------------------------------------------------------
-- JSON: deterministic (sorted keys), empty arrays as [] (the tables under
-- these keys), six significant digits, and valid UTF-8 whatever a report
-- carried.

local ARRAY_KEYS = {
  sources = true, reporters = true, daily = true, fix_first = true, hints = true,
  header_from = true, envelope_from = true, spf = true, dkim = true, dispositions = true,
  rows = true, reasons = true, dkim_results = true, spf_results = true, failures = true,
  domains = true, results = true, warnings = true,
}

local JSON_OPTIONS = { array_keys = ARRAY_KEYS, number = '%.6g', utf8 = true, strict = true }

--- Encode a summary (or any table of the same shapes) as JSON text.
function M.json(v)
  return json.encode(v, JSON_OPTIONS)
end

return M
