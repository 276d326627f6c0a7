--- Failure reports received: the domain owner's side of RFC 9991 (DMARC
-- failure reporting) in the AFRF format (RFC 5965, RFC 6591):
-- `multipart/report; report-type=feedback-report` with `Feedback-Type:
-- auth-failure`. dmarc.ingest finds them in messages, mbox files and
-- directories beside aggregate reports; this module reads one, keeps a
-- redacted record of it, stores it deduplicated with a TTL, and sums the
-- stored records per source IP and day for the summary and the dashboard.
--
-- Privacy (RFC 9991 §7, RFC 6591 §8): no message body is ever kept, and of
-- the headers only what docs/ingest.md lists: domains, never local parts;
-- no Subject, no recipients; the Message-ID only inside the hashed id.
local keys = require 'dmarc.redis.keys'
local header_fields = require 'dmarc.receive.message'

local M = {}

--- Named bounds on untrusted input (the MIME walk around a report is
-- bounded by dmarc.ingest).
M.limits = {
  max_fields = 200,        -- header fields read from the feedback part or the original headers
  max_block = 64 * 1024,   -- bytes of the feedback part and of the original header block
  max_text = 256,          -- bytes kept of any value
  max_per_day = 100000,    -- failure records stored per policy domain and day (more: counted)
  max_incidents = 1e9,     -- largest Incidents value believed
}

M.defaults = {
  ttl = 30 * 86400,        -- failure records are kept 30 days (per-message data: kept short)
}

local AUTH_FAILURES = { dmarc = true, dkim = true, spf = true, adsp = true, bodyhash = true,
                        revoked = true, signature = true }
local RESULTS = { pass = true, fail = true, softfail = true, neutral = true, none = true,
                  temperror = true, permerror = true, policy = true }
local DELIVERY = { delivered = true, spam = true, policy = true, reject = true, other = true }

local function clip(s, n)
  if type(s) ~= 'string' then return nil end
  n = n or M.limits.max_text
  if #s > n then s = s:sub(1, n) end
  return (s:gsub('[%z\1-\31\127]', '?'))
end

-- Header fields of a block: lowercased name → array of unfolded values, in order; at most
-- max_fields. Read by the one lenient header walker (dmarc.receive.message), past empty
-- lines too: a feedback part may hold several blocks of fields. The block is cut to
-- max_block, so no field is dropped for its length (bare LFs made CRLF: at most twice).
local function fields_of(block)
  local _, all = header_fields.header_map(block:sub(1, M.limits.max_block),
                                          { max_fields = M.limits.max_fields, all_blocks = true,
                                            max_field_bytes = 2 * M.limits.max_block })
  return all
end

local function first(f, name)
  return f[name] and f[name][1] or nil
end

-- The domain of an address or a domain; nil when it is not a host name.
local function domain_of(v)
  if type(v) ~= 'string' then return nil end
  local d = v:match('@([%w%.%-]+)>?%s*$') or v:match('^<?([%w%.%-]+)>?$')
  if not d then return nil end
  d = d:lower():gsub('%.$', '')
  if keys.valid_domain(d) then return d end
  return nil
end

local MONTHS = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6, jul = 7, aug = 8,
                 sep = 9, oct = 10, nov = 11, dec = 12 }

-- Days from the civil date to 1970-01-01 (proleptic Gregorian).
local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * (m + (m > 2 and -3 or 9)) + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

--- An RFC 5322 date-time (`Sat, 22 Nov 2025 10:00:00 +0100`) as epoch
-- seconds; nil when it is not one.
function M.parse_date(s)
  if type(s) ~= 'string' then return nil end
  local d, mon, y, hh, mm, ss, zone =
    s:match('(%d%d?)%s+(%a%a%a)%s+(%d%d%d%d)%s+(%d%d):(%d%d):?(%d*)%s*([%+%-]?%d*)')
  if not d then return nil end
  local m = MONTHS[mon:lower()]
  if not m then return nil end
  local t = days_from_civil(tonumber(y), m, tonumber(d)) * 86400 + tonumber(hh) * 3600
    + tonumber(mm) * 60 + (tonumber(ss) or 0)
  local sign, zh, zm = zone:match('^([%+%-])(%d%d)(%d%d)$')
  if sign then
    local off = tonumber(zh) * 3600 + tonumber(zm) * 60
    t = sign == '+' and t - off or t + off
  end
  return t
end

-- The results named in an Authentication-Results value: method → result.
local function auth_results(v)
  local out = {}
  if type(v) ~= 'string' then return out end
  for method, result in v:gmatch('(%a+)=(%a+)') do
    method, result = method:lower(), result:lower()
    if (method == 'dmarc' or method == 'spf' or method == 'dkim') and RESULTS[result]
        and not out[method] then
      out[method] = result
    end
  end
  return out
end

local function words(v, set, max)
  local out = {}
  for w in (v or ''):gmatch('[%w%-]+') do
    w = w:lower()
    if set[w] and #out < max then out[#out + 1] = w end
  end
  return out
end

--- Whether a MIME Content-Type (value and parameters) is a feedback report.
function M.is_feedback_report(ctype, params)
  return ctype == 'multipart/report' and type(params) == 'table'
    and (params['report-type'] or ''):lower() == 'feedback-report'
end

-- The id that deduplicates: the same report received twice (or sent to two
-- ruf addresses) is one record. The Message-ID goes in hashed, never kept.
local function record_id(rec, message_id)
  local x = require 'dmarc.xml'
  local key = table.concat({ rec.reporter or '', rec.source_ip, tostring(rec.arrival), rec.domain,
                             message_id or '', table.concat(rec.auth_failure, ',') }, '\n')
  return (x.hmac_sha256('dmarc failure report', key):gsub('.', function(c)
    return string.format('%02x', c:byte())
  end)):sub(1, 32)
end

--- Read one failure report into the record that is kept (redacted).
-- @param feedback {string} the message/feedback-report part
-- @param headers {string|nil} the original message's header block
--   (text/rfc822-headers, or the head of a message/rfc822 part)
-- @param outer {string|nil} the header block of the report message itself
-- @return record, or nil, msg, code ('not_failure_report', 'invalid', 'bad_domain')
function M.read(feedback, headers, outer)
  local limits = M.limits
  local f = fields_of(feedback or '')
  local ftype = (first(f, 'feedback-type') or ''):lower()
  if ftype ~= 'auth-failure' then
    return nil, 'a feedback report of type ' .. (ftype ~= '' and clip(ftype, 32) or '(none)')
      .. ', not auth-failure', 'not_failure_report'
  end
  local h = fields_of(headers or '')
  local o = fields_of(outer or '')
  local ip = (first(f, 'source-ip') or ''):lower()
  if not keys.valid_ip(ip) then return nil, 'no valid Source-IP', 'invalid' end
  local from_domain = domain_of(first(h, 'from'))
  local dom = domain_of(first(f, 'reported-domain')) or from_domain
  if not dom then return nil, 'no valid Reported-Domain', 'bad_domain' end
  local warnings = {}
  local arrival = M.parse_date(first(f, 'arrival-date')) or M.parse_date(first(h, 'date'))
    or M.parse_date(first(o, 'date'))
  if not arrival then
    arrival = os.time()
    warnings[#warnings + 1] = 'no_arrival_date'
  end
  local incidents = tonumber((first(f, 'incidents') or '1'):match('^%d+$') or '')
  if not incidents or incidents < 1 or incidents > limits.max_incidents then incidents = 1 end
  local ar = auth_results(first(f, 'authentication-results'))
  local spf_dns = first(f, 'spf-dns')
  local rec = {
    v = 1,
    domain = dom,
    source_ip = ip,
    arrival = math.floor(arrival),
    incidents = incidents,
    auth_failure = words(table.concat(f['auth-failure'] or {}, ','), AUTH_FAILURES, 8),
    identity_alignment = words(first(f, 'identity-alignment'),
                               { dkim = true, spf = true, none = true }, 3),
    delivery_result = ((first(f, 'delivery-result') or ''):lower():match('^%a+$')),
    -- RFC 6591 §3.2: DKIM-* fields report a failed DKIM signature, SPF-DNS a
    -- failed SPF check, when Authentication-Results does not say.
    dmarc = ar.dmarc, spf = ar.spf or (spf_dns and 'fail' or nil),
    dkim = ar.dkim or (first(f, 'dkim-domain') and 'fail' or nil),
    dkim_domain = domain_of(first(f, 'dkim-domain')),
    dkim_selector = clip(first(f, 'dkim-selector'), 64),
    spf_dns = clip(spf_dns and spf_dns:match('^%a+%s*:%s*[^:]*:%s*(.*)$') or nil),
    header_from = from_domain,
    mail_from = domain_of(first(f, 'original-mail-from')),
    reporting_mta = clip((first(f, 'reporting-mta') or ''):gsub('^dns;%s*', '')),
    user_agent = clip(first(f, 'user-agent'), 64),
    reporter = domain_of(first(o, 'from')),
    warnings = #warnings > 0 and warnings or nil,
  }
  if rec.delivery_result and not DELIVERY[rec.delivery_result] then rec.delivery_result = 'other' end
  rec.id = record_id(rec, first(h, 'message-id') or first(o, 'message-id'))
  return rec
end

--- The key of a policy domain's failure records of one day.
M.key = keys.failure_day

-- Stores one record once: nothing for an id already there (0), the record
-- (1), or, past max_per_day, only a count in '#over' (2). TTL on every write.
--   KEYS: the day's hash   ARGV: id, record JSON, ttl, max_per_day
M.STORE_SCRIPT = [[
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
local r = 1
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  redis.call('HINCRBY', KEYS[1], '#over', 1)
  r = 2
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return r
]]

--- Store a record.
-- @param opts {table|nil} prefix, failure_ttl, max_per_day
-- @return 'stored' | 'duplicate', day, over (true when only counted); or nil, msg, code
function M.store(conn, rec, opts)
  opts = opts or {}
  local cjson = require 'cjson'
  local prefix = opts.prefix or 'dmarc:'
  local day = keys.day_of(rec.arrival)
  local reply, err, code = conn:command('EVAL', M.STORE_SCRIPT, '1', M.key(prefix, rec.domain, day),
                                        rec.id, cjson.encode(rec),
                                        string.format('%d', opts.failure_ttl or M.defaults.ttl),
                                        string.format('%d', opts.max_per_day or M.limits.max_per_day))
  if reply == nil then return nil, err or 'no reply', code or 'redis' end
  if tonumber(reply) == 0 then return 'duplicate', day end
  return 'stored', day, tonumber(reply) == 2
end

--- Ingest one failure report found by dmarc.ingest: read, stored.
-- @param owned function(domain) → whether the site owns it (nil: all)
-- @return a result as dmarc.ingest's (kind = 'failure')
function M.ingest(conn, found, opts, owned)
  local rec, err, code = M.read(found.feedback, found.headers, found.outer)
  if not rec then return { kind = 'failure', status = 'error', message = err, code = code } end
  local res = { kind = 'failure', domain = rec.domain, source_ip = rec.source_ip,
                report_id = rec.id, org_name = rec.reporter or rec.reporting_mta,
                warnings = rec.warnings or {} }
  if owned and not owned(rec.domain) then
    res.foreign = true
    if opts.refuse_foreign then
      res.status, res.code = 'refused', 'foreign'
      res.message = 'failure report for a domain this site does not own'
      return res
    end
  end
  local status, day, over = M.store(conn, rec, opts)
  if not status then
    res.status, res.message, res.code = 'error', day, over
    return res
  end
  res.status, res.day = status, day
  if over then table.insert(res.warnings, 'failure_cap') end
  return res
end

-- ---------------------------------------------------------------------------
-- Reading back, for the summary and the dashboard

--- The commands that read a domain's failure records of some days.
function M.load_commands(prefix, dom, days)
  local cmds = {}
  for i, day in ipairs(days) do cmds[i] = { 'HGETALL', M.key(prefix, dom, day) } end
  return cmds
end

--- Decode the replies of load_commands into {records, over}.
function M.decode(replies, days)
  local cjson = require 'cjson'
  local out = { records = {}, over = 0 }
  for i, day in ipairs(days) do
    local r = replies[i]
    if type(r) == 'table' and not r.err then
      for j = 1, #r - 1, 2 do
        if r[j] == '#over' then
          out.over = out.over + (tonumber(r[j + 1]) or 0)
        else
          local ok, rec = pcall(cjson.decode, r[j + 1])
          if ok and type(rec) == 'table' and keys.valid_ip(rec.source_ip) then
            rec.day = day
            out.records[#out.records + 1] = rec
          end
        end
      end
    end
  end
  return out
end

local function bump(t, k, n)
  if k == nil then return end
  t[k] = (t[k] or 0) + n
end

-- What failed, in a few words: the failed checks of the report and its
-- Identity-Alignment field, as the reporter gave them.
local function what_failed(rec)
  local parts = {}
  if rec.spf and rec.spf ~= 'pass' then parts[#parts + 1] = 'SPF ' .. rec.spf end
  if rec.dkim and rec.dkim ~= 'pass' then parts[#parts + 1] = 'DKIM ' .. rec.dkim end
  if #parts == 0 and type(rec.auth_failure) == 'table' then
    for _, a in ipairs(rec.auth_failure) do parts[#parts + 1] = a end
  end
  local ia = type(rec.identity_alignment) == 'table' and rec.identity_alignment or {}
  local aligned = #ia > 0 and table.concat(ia, '+') or 'not given'
  return (#parts > 0 and table.concat(parts, ', ') or 'dmarc') .. '; identity alignment: '
    .. aligned
end
M.what_failed = what_failed

local function top_values(map)
  local out = {}
  for k, v in pairs(map) do out[#out + 1] = { value = k, messages = v } end
  table.sort(out, function(a, b)
    if a.messages ~= b.messages then return a.messages > b.messages end
    return a.value < b.value
  end)
  return out
end

-- One stored record into the totals, its day and its source.
local function add_record(s, day_index, by_ip, list, rec)
  local n = tonumber(rec.incidents) or 1
  s.reports = s.reports + 1
  s.incidents = s.incidents + n
  local d = day_index[rec.day]
  if d then
    d.reports = d.reports + 1
    d.incidents = d.incidents + n
  end
  local src = by_ip[rec.source_ip]
  if not src then
    src = { ip = rec.source_ip, reports = 0, incidents = 0, days = {}, failed = {},
            header_from = {} }
    by_ip[rec.source_ip] = src
    list[#list + 1] = src
  end
  src.reports = src.reports + 1
  src.incidents = src.incidents + n
  bump(src.days, rec.day, n)
  bump(src.failed, what_failed(rec), n)
  bump(src.header_from, rec.header_from, n)
end

--- Per source IP and day: what the failure reports of the period say.
-- @param loaded {records, over} from decode
-- @param days {table} the period's days
-- @param opts {table|nil} top (sources listed), source (this IP's records kept)
function M.summarize(loaded, days, opts)
  opts = opts or {}
  local s = { reports = 0, incidents = 0, not_itemised = loaded.over or 0, daily = {},
              sources = {}, by_ip = {} }
  local day_index = {}
  for i, day in ipairs(days) do
    s.daily[i] = { day = day, reports = 0, incidents = 0 }
    day_index[day] = s.daily[i]
  end
  local by_ip, list = {}, {}
  local rows = opts.source and {} or nil
  for _, rec in ipairs(loaded.records) do
    add_record(s, day_index, by_ip, list, rec)
    if rows and rec.source_ip == opts.source then rows[#rows + 1] = rec end
  end
  table.sort(list, function(a, b)
    if a.incidents ~= b.incidents then return a.incidents > b.incidents end
    return a.ip < b.ip
  end)
  s.source_count = #list
  for _, src in ipairs(list) do s.by_ip[src.ip] = src.reports end
  for i = 1, math.min(opts.top or 20, #list) do
    local src = list[i]
    local per_day = {}
    for _, day in ipairs(days) do
      if src.days[day] then per_day[#per_day + 1] = { day = day, incidents = src.days[day] } end
    end
    s.sources[i] = { ip = src.ip, reports = src.reports, incidents = src.incidents,
                     failed = top_values(src.failed), header_from = top_values(src.header_from),
                     days = per_day }
  end
  if rows then
    table.sort(rows, function(a, b)
      if a.arrival ~= b.arrival then return (a.arrival or 0) < (b.arrival or 0) end
      return (a.id or '') < (b.id or '')
    end)
    s.rows = rows
  end
  return s
end

return M
