--- Aggregate-report collection: report rows, their Redis encoding, and a
-- buffering collector.
--
-- A row is one message's contribution to the aggregate report of one DMARC
-- Policy Domain (RFC 9990 §3.1, [AGG-1..8]). Rows that are identical apart
-- from the message count aggregate in Redis: the encoded row is a hash field
-- and its value is the count. The encoding and the Redis commands are pure
-- functions (`encode_row`, `commands`), so any Redis client (the CLI's
-- `dmarc.redis`, rspamd's `lua_redis`) writes exactly the same data. The key
-- schema is documented in docs/report-keys.md.
--
-- Errors follow the project contract: bad data gives `nil, message, code`;
-- misuse of the API (wrong types) raises.
local M = {}

M.VERSION = 1

--- Named bounds [AGG-6] and hostile-record guards (issue 5, item 5).
M.limits = {
  max_dkim = 100,          -- DKIM results per row [AGG-6]: "at most 100"
  max_reasons = 8,         -- override reasons kept per row
  max_comment = 256,       -- bytes of one reason comment or human_result
  max_rua = 10,            -- rua URIs stored per policy domain (the rest ignored) [RUA-2]
  max_uri = 512,           -- longest URI kept
  max_field = 65536,       -- longest encoded row accepted by decode_row
  max_prefix = 64,         -- longest key prefix
  max_domains = 8,         -- rows per message (one per author domain) [OPEN-5]
  max_rcpt = 1000,         -- recipients looked at for envelope_to
  max_dkim_input = 400,    -- DKIM results read from the input before ordering
}

M.defaults = {
  prefix = 'dmarc:',
  ttl = 8 * 86400,           -- a day bucket outlives generation plus retries
  max_rows = 100000,         -- distinct rows per policy domain and day before the cap
  buffer_max = 10000,        -- distinct rows held in memory while Redis is down
  retry_interval = 5,        -- seconds between reconnection attempts
  batch = 1,                 -- rows per pipeline: 1 = one round trip per message
  pipeline_max = 512,        -- commands per pipeline when flushing a buffer
}

local DISPOSITIONS = { none = true, pass = true, quarantine = true, reject = true }
local POLICIES = { none = true, quarantine = true, reject = true }
local AUTH_WORDS = {
  none = true, pass = true, fail = true, softfail = true, neutral = true,
  policy = true, temperror = true, permerror = true,
}
-- Reason types of both RFCs [OVR-2]; the XML writer maps each to its format.
local REASON_TYPES = {
  forwarded = true, sampled_out = true, trusted_forwarder = true, mailing_list = true,
  local_policy = true, other = true, policy_test_mode = true,
}

-- ---------------------------------------------------------------------------
-- Validation

--- A policy domain or other host name safe to put in a key, a glob pattern
-- and XML: lowercase LDH labels (underscore allowed, as DNS allows it),
-- 1..253 characters, labels 1..63 [FROM-2]. Anything else (braces, spaces,
-- CR/LF, glob characters) is refused, never escaped, because the domain is
-- part of the key's hash tag.
function M.valid_domain(d)
  if type(d) ~= 'string' or #d == 0 or #d > 253 then return false end
  if d:find('[^a-z0-9_%.%-]') then return false end
  if d:sub(1, 1) == '.' or d:sub(-1) == '.' or d:find('..', 1, true) then return false end
  for label in d:gmatch('[^.]+') do
    if #label > 63 then return false end
  end
  return true
end

--- A key prefix: word characters and `:_.-`, at most max_prefix bytes. It
-- takes part in SCAN MATCH patterns, so glob characters are refused.
function M.valid_prefix(p)
  return type(p) == 'string' and #p <= M.limits.max_prefix and not p:find('[^%w:_%.%-]')
end

local function lower_domain(d)
  if type(d) ~= 'string' then return nil end
  d = d:lower():gsub('%.$', '')
  return d
end

--- The domain part of an address ("user@Example.COM" → "example.com"), or
-- the argument itself when it has no @. nil for nil/empty.
function M.domain_of(addr)
  if type(addr) ~= 'string' or addr == '' then return nil end
  addr = addr:gsub('^%s*<', ''):gsub('>%s*$', '')
  local dom = addr:match('@([^@]*)$') or addr
  dom = lower_domain(dom)
  if dom == '' then return nil end
  return dom
end

-- IPv4 dotted quad or an IPv6 text form (RFC 3986 §3.2.2 words); the
-- check is about safety and shape, not about reserved ranges.
local function valid_ip(ip)
  if type(ip) ~= 'string' or #ip > 45 then return false end
  local a, b, c, d = ip:match('^(%d+)%.(%d+)%.(%d+)%.(%d+)$')
  if a then
    for _, o in ipairs({ a, b, c, d }) do
      if #o > 3 or tonumber(o) > 255 then return false end
    end
    return true
  end
  if not ip:find(':', 1, true) or ip:find('[^%x:%.]') then return false end
  return select(2, ip:gsub(':', '')) <= 7
end
M.valid_ip = valid_ip

-- ---------------------------------------------------------------------------
-- Encoding. One escape for every atom: bytes outside [A-Za-z0-9._@+= -]
-- become %XX, so the separators `|`, `,`, `;` and `:` never occur inside an
-- atom and the field can hold nothing that breaks the encoding.

local ESC, UNESC = {}, {}
for b = 0, 255 do
  local c, hex = string.char(b), string.format('%%%02X', b)
  ESC[c] = hex
  UNESC[hex:sub(2)] = c
  UNESC[hex:sub(2):lower()] = c
end

local function esc(s)
  if s == nil then return '' end
  s = tostring(s)
  return (s:gsub('[^%w%._@%+= %-]', ESC))
end

local function unesc(s)
  if not s:find('%', 1, true) then return s end
  return (s:gsub('%%(%x%x)', UNESC))
end

local function clip(s, n)
  if s == nil then return nil end
  s = tostring(s)
  if #s > n then return s:sub(1, n) end
  return s
end

local function split(s, sep)
  local out = {}
  if s == '' then return out end
  local pos = 1
  while true do
    local i = s:find(sep, pos, true)
    if not i then
      out[#out + 1] = s:sub(pos)
      return out
    end
    out[#out + 1] = s:sub(pos, i - 1)
    pos = i + 1
  end
end

local POLICY_FIELDS = { 'p', 'sp', 'np', 'adkim', 'aspf', 'testing', 'discovery_method', 'fo', 'pct', 'psd' }

--- The published policy part of a row, as one string: rows of one policy
-- domain and period with different strings came from different policy
-- configurations, which go in different reports [AGG-1].
function M.encode_policy(pol)
  local parts = {}
  for i, k in ipairs(POLICY_FIELDS) do parts[i] = esc(pol[k]) end
  return table.concat(parts, ',')
end

function M.decode_policy(s)
  local parts = split(s, ',')
  local pol = {}
  for i, k in ipairs(POLICY_FIELDS) do
    local v = parts[i]
    if v ~= nil and v ~= '' then pol[k] = unesc(v) end
  end
  if pol.pct then pol.pct = tonumber(pol.pct) end
  return pol
end

--- Encode a row (as built by build_row) to its hash field. Pure; the
-- policy domain and day are not in the field (they are in the key).
-- @param policy_enc {string|nil} encode_policy(row.policy), when known
-- @return {string}
function M.encode_row(row, policy_enc)
  local reasons = {}
  for i, r in ipairs(row.reasons or {}) do
    if i > M.limits.max_reasons then break end
    reasons[#reasons + 1] = esc(r.type) .. ':' .. esc(clip(r.comment, M.limits.max_comment))
  end
  local dkims = {}
  for i, d in ipairs(row.dkim_results or {}) do
    if i > M.limits.max_dkim then break end
    dkims[#dkims + 1] = table.concat({ esc(d.domain), esc(d.selector), esc(d.result),
                                       esc(clip(d.human_result, M.limits.max_comment)) }, ':')
  end
  local spf = ''
  local s = row.spf_result
  if s then
    spf = table.concat({ esc(s.domain), esc(s.scope), esc(s.result),
                         esc(clip(s.human_result, M.limits.max_comment)) }, ':')
  end
  return table.concat({
    tostring(M.VERSION),
    esc(row.header_from), esc(row.envelope_from), esc(row.envelope_to), esc(row.source_ip),
    esc(row.disposition), esc(row.dkim), esc(row.spf),
    policy_enc or row.policy_enc or M.encode_policy(row.policy or {}),
    table.concat(reasons, ';'), table.concat(dkims, ';'), spf,
  }, '|')
end

local function opt(v)
  if v == '' then return nil end
  return v
end

-- Rows of one report share their policy part: decode each one once.
local policy_cache, policy_cached = {}, 0
local function decoded_policy(key)
  local p = policy_cache[key]
  if p then return p end
  if policy_cached >= 256 then policy_cache, policy_cached = {}, 0 end
  p = M.decode_policy(key)
  policy_cache[key] = p
  policy_cached = policy_cached + 1
  return p
end

--- The 12 raw (still escaped) parts of an encoded row, or nil. Part 9 is
-- the policy configuration (report grouping [AGG-1]).
function M.split_field(field)
  if type(field) ~= 'string' or #field > M.limits.max_field then return nil end
  local f = split(field, '|')
  if f[1] ~= tostring(M.VERSION) or #f ~= 12 then return nil end
  return f
end

M.unescape = unesc

--- Decode a hash field back to a row table; nil, msg, code on a field this
-- version does not understand (the generator counts and skips those).
function M.decode_row(field)
  if type(field) ~= 'string' or #field > M.limits.max_field then
    return nil, 'row too long or not a string', 'bad_row'
  end
  local f = split(field, '|')
  if f[1] ~= tostring(M.VERSION) or #f ~= 12 then
    return nil, 'unknown row encoding', 'bad_row'
  end
  local row = {
    header_from = unesc(f[2]), envelope_from = unesc(f[3]), envelope_to = opt(unesc(f[4])),
    source_ip = unesc(f[5]), disposition = unesc(f[6]), dkim = unesc(f[7]), spf = unesc(f[8]),
    policy_key = f[9], policy = decoded_policy(f[9]),
    reasons = {}, dkim_results = {},
  }
  for i, r in ipairs(split(f[10], ';')) do
    if i > M.limits.max_reasons then break end
    local t, c = r:match('^([^:]*):(.*)$')
    if t then row.reasons[#row.reasons + 1] = { type = unesc(t), comment = opt(unesc(c)) } end
  end
  for i, d in ipairs(split(f[11], ';')) do
    if i > M.limits.max_dkim then break end
    local a = split(d, ':')
    row.dkim_results[#row.dkim_results + 1] = {
      domain = unesc(a[1] or ''), selector = unesc(a[2] or ''), result = unesc(a[3] or 'none'),
      human_result = opt(unesc(a[4] or '')),
    }
  end
  if f[12] ~= '' then
    local a = split(f[12], ':')
    row.spf_result = { domain = unesc(a[1] or ''), scope = opt(unesc(a[2] or '')),
                       result = unesc(a[3] or 'none'), human_result = opt(unesc(a[4] or '')) }
  end
  if not DISPOSITIONS[row.disposition] or not row.header_from:find('%S') then
    return nil, 'row fields out of range', 'bad_row'
  end
  return row
end

--- The rua list as stored in the meta hash: URIs (with their RFC 7489
-- size limit as `!bytes`) joined by `,` after escaping ([REC-7]: a `,` or
-- `!` inside a URI is percent-encoded already; others are escaped here).
function M.encode_rua(list)
  local out = {}
  for _, u in ipairs(list or {}) do
    if #out >= M.limits.max_rua then break end
    local uri = type(u) == 'table' and u.uri or u
    if type(uri) == 'string' and #uri <= M.limits.max_uri and uri ~= '' then
      local size = type(u) == 'table' and tonumber(u.max_size) or 0
      local item = esc(uri)
      if size and size > 0 then item = item .. '!' .. string.format('%d', size) end
      out[#out + 1] = item
    end
  end
  return table.concat(out, ',')
end

function M.decode_rua(s)
  local out = {}
  if type(s) ~= 'string' then return out end
  for i, item in ipairs(split(s, ',')) do
    if i > M.limits.max_rua then break end
    local uri, size = item:match('^([^!]*)!(%d+)$')
    uri = unesc(uri or item)
    out[#out + 1] = { uri = uri, max_size = tonumber(size) or 0 }
  end
  return out
end

-- ---------------------------------------------------------------------------
-- Keys (docs/report-keys.md)

--- UTC day bucket of a time: "YYYYMMDD".
function M.day_of(t)
  return os.date('!%Y%m%d', math.floor(t))
end

--- Start of the UTC day "YYYYMMDD" in epoch seconds; nil if malformed.
function M.day_start(day)
  local y, m, d = tostring(day):match('^(%d%d%d%d)(%d%d)(%d%d)$')
  if not y then return nil end
  y, m, d = tonumber(y), tonumber(m), tonumber(d)
  if m < 1 or m > 12 or d < 1 or d > 31 then return nil end
  -- Days from the civil date (proleptic Gregorian), independent of the
  -- process time zone (os.time would apply it).
  local yy = m <= 2 and y - 1 or y
  local era = math.floor(yy / 400)
  local yoe = yy - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return (era * 146097 + doe - 719468) * 86400
end

--- Keys of one policy domain and day. The `{domain}` hash tag puts every
-- key of a domain in one Redis Cluster slot, so a message's commands and a
-- report's reads and deletes never cross slots.
function M.keys(prefix, policy_domain, day)
  local base = prefix .. 'rpt:{' .. policy_domain .. '}:' .. day
  return { rows = base, meta = base .. ':meta' }
end

--- The delivery-state hash of one policy domain and period (written by
-- `dmarc report send`, read by `generate` to skip periods already done).
function M.state_key(prefix, policy_domain, begin, finish)
  -- %d: numbers read back from a JSON manifest are floats on Lua 5.4.
  return string.format('%srpt:{%s}:sent:%d-%d', prefix, policy_domain, begin, finish)
end

--- The SCAN MATCH pattern that finds every rows key of a day.
function M.scan_pattern(prefix, day)
  return prefix .. 'rpt:{*}:' .. day
end

--- The policy domain of a rows key found by SCAN, or nil.
function M.domain_of_key(prefix, key)
  if key:sub(1, #prefix) ~= prefix then return nil end
  local d = key:sub(#prefix + 1):match('^rpt:{([^}]*)}:%d+$')
  if d and M.valid_domain(d) then return d end
  return nil
end

-- ---------------------------------------------------------------------------
-- Commands

-- One atomic step per row: count it unless the domain's day already holds
-- max_rows distinct rows (then count it as dropped, to be reported in the
-- report's <error>: never trimmed silently), refresh both TTLs, and keep
-- the latest rua list. Both keys share the hash tag, so this is legal on a
-- Redis Cluster.
M.ROW_SCRIPT = [[
local n = tonumber(ARGV[2])
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 or redis.call('HLEN', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('HINCRBY', KEYS[1], ARGV[1], n)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
else
  redis.call('HINCRBY', KEYS[2], 'dropped_rows', 1)
  redis.call('HINCRBY', KEYS[2], 'dropped_messages', n)
end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'rua', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HINCRBY', KEYS[2], 'lost_messages', tonumber(ARGV[6])) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[2], 'policy', ARGV[7]) end
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
]]

local function opts_with_defaults(opts)
  opts = opts or {}
  local o = {}
  for k, v in pairs(M.defaults) do o[k] = v end
  for k, v in pairs(opts) do o[k] = v end
  return o
end

--- The Redis commands that store one row (an array of argv arrays).
-- Pure: the rspamd plugin sends the same commands through lua_redis.
-- @param row {table} from build_row (policy_domain, time, count, rua ...)
-- @param opts {table} prefix, ttl, max_rows (defaults in report.defaults)
-- @return {table} commands, or nil, msg, code for a row that must not be stored
function M.commands(row, opts)
  local o = opts_with_defaults(opts)
  if not M.valid_prefix(o.prefix) then return nil, 'invalid key prefix', 'bad_prefix' end
  if not M.valid_domain(row.policy_domain) then
    return nil, 'invalid policy domain', 'bad_domain'
  end
  local day = row.day or M.day_of(row.time or os.time())
  local k = M.keys(o.prefix, row.policy_domain, day)
  local field = row.field or M.encode_row(row)
  return {
    { 'EVAL', M.ROW_SCRIPT, '2', k.rows, k.meta, field, tostring(math.floor(row.count or 1)),
      tostring(math.floor(o.max_rows)), tostring(math.floor(o.ttl)),
      row.rua_enc or M.encode_rua(row.rua), row.lost and tostring(row.lost) or '',
      row.policy_enc or (row.policy and M.encode_policy(row.policy)) or '' },
  }
end

--- The same data as plain commands (HINCRBY, EXPIRE, HSET, EXPIRE) without
-- the cap; only for the benchmark's one-round-trip-per-command baseline.
function M.plain_commands(row, opts)
  local o = opts_with_defaults(opts)
  local k = M.keys(o.prefix, row.policy_domain, row.day or M.day_of(row.time or os.time()))
  local ttl = tostring(math.floor(o.ttl))
  return {
    { 'HINCRBY', k.rows, row.field or M.encode_row(row), tostring(row.count or 1) },
    { 'EXPIRE', k.rows, ttl },
    { 'HSET', k.meta, 'rua', row.rua_enc or M.encode_rua(row.rua) },
    { 'EXPIRE', k.meta, ttl },
  }
end

-- ---------------------------------------------------------------------------
-- Building rows from an evaluation

local function align_letter(a)
  if a == 's' or a == 'strict' then return 's' end
  return 'r'
end

-- Alignment of a DKIM d= to the author domain, for the [AGG-6] order:
-- 2 strict, 1 relaxed (shares the Org Domain), 0 none.
local function dkim_rank(d, author, org)
  if d.result ~= 'pass' then return 3 end
  local dom = lower_domain(d.domain) or ''
  if dom == author or d.aligned == 'strict' then return 0 end
  if d.aligned == true or d.aligned == 'relaxed' then return 1 end
  if org and org ~= '' and (dom == org or dom:sub(-(#org + 1)) == '.' .. org) then return 1 end
  return 2
end

--- DKIM results in [AGG-6] order: pass+strict, pass+relaxed, other passes,
-- then the rest, each group in input order; at most limits.max_dkim.
function M.order_dkim(list, author, org)
  local ranked = {}
  for i, d in ipairs(list or {}) do
    if i > M.limits.max_dkim_input then break end
    ranked[#ranked + 1] = { d = d, rank = dkim_rank(d, author, org), i = i }
  end
  table.sort(ranked, function(a, b)
    if a.rank ~= b.rank then return a.rank < b.rank end
    return a.i < b.i
  end)
  local out = {}
  for i, r in ipairs(ranked) do
    if i > M.limits.max_dkim then break end
    local d = r.d
    out[i] = {
      domain = lower_domain(d.domain) or '',
      selector = d.selector or '',
      result = AUTH_WORDS[d.result] and d.result or 'none',
      human_result = d.human_result or d.reason,
    }
  end
  return out
end

--- The published policy as evaluated, defaults filled in [AGG-8].
function M.policy_of(record, mode)
  mode = mode or record.mode or 'rfc9989'
  local fo = record.fo_text
  if type(fo) ~= 'string' or fo == '' then fo = '0' end
  return {
    p = POLICIES[record.p] and record.p or 'none',
    sp = POLICIES[record.sp] and record.sp or (POLICIES[record.p] and record.p or 'none'),
    np = POLICIES[record.np] and record.np or nil,
    adkim = align_letter(record.adkim),
    aspf = align_letter(record.aspf),
    testing = record.testing and 'y' or 'n',
    discovery_method = mode == 'rfc7489' and 'psl' or 'treewalk',
    fo = clip(fo, 32),
    pct = tonumber(record.pct) or 100,
    psd = (record.psd == 'y' or record.psd == 'n') and record.psd or 'u',
  }
end

local function disposition_of(verdict, decision)
  if decision and DISPOSITIONS[decision.disposition] then return decision.disposition end
  if verdict.result == 'pass' then
    -- RFC 9990: "pass" = passed under an enforcing policy; "none" = no action.
    return (verdict.policy and verdict.policy ~= 'none') and 'pass' or 'none'
  end
  if verdict.result == 'fail' and POLICIES[verdict.applied] then return verdict.applied end
  return 'none'
end

local function reasons_of(verdict, decision, disposition)
  local out, seen = {}, {}
  local function add(t, c)
    if #out >= M.limits.max_reasons or not REASON_TYPES[t] then return end
    local key = t .. '\0' .. (c or '')
    if seen[key] then return end
    seen[key] = true
    out[#out + 1] = { type = t, comment = clip(c, M.limits.max_comment) }
  end
  if verdict.reason and verdict.reason ~= 'none' then add(verdict.reason) end
  for i, r in ipairs(decision and decision.reasons or {}) do
    if i > M.limits.max_reasons then break end
    if type(r) == 'table' then add(r.type, r.comment) end
  end
  -- RFC 9990 §3.1.1 / [OVR-2]: when alignment failed and the disposition
  -- differs from the published policy, a reason MUST be given.
  if #out == 0 and verdict.result == 'fail' and verdict.policy
      and disposition ~= verdict.policy then
    add('local_policy', 'site policy applied ' .. disposition .. ' to p=' .. verdict.policy)
  end
  return out
end

local function is_report_message(ctx, opts)
  if type(ctx) ~= 'table' then return false end
  if ctx.is_report then return true end
  local own = opts and opts.reporter_address
  local mf = type(ctx.mail_from) == 'string' and ctx.mail_from:lower():gsub('^<', ''):gsub('>$', '')
  return own ~= nil and mf == own:lower()
end

--- Build the report row(s) of one evaluated message.
-- @param verdict {table} from dmarc.evaluate (record, mode, result, ...);
--   verdict.domains (per author domain verdicts) gives one row each [AGG-2]
-- @param input {table} the evaluation input: spf={result,domain,scope},
--   dkim={{result,domain,selector}...}
-- @param ctx {table} ip, mail_from, rcpt (array), plus is_report
-- @param decision {table|nil} the site policy decision (disposition, reasons)
-- @param opts {table|nil} time (default os.time()), reporter_address,
--   details (the second result of dmarc.evaluate(input, {details = true}):
--   its raw verdict carries the applied record, its domains the per author
--   domain verdicts, its dkim_alignment the [AGG-6] order)
-- @return {table} array of rows (possibly empty), or nil, msg, code
function M.build_rows(verdict, input, ctx, decision, opts)
  opts = opts or {}
  ctx = ctx or {}
  input = input or {}
  if type(verdict) ~= 'table' then error('build_rows: verdict table expected', 2) end
  local details = opts.details
  if type(details) == 'table' then
    local v = {}
    for k, x in pairs(details.verdict or {}) do v[k] = x end
    for k, x in pairs(verdict) do if v[k] == nil then v[k] = x end end
    v.domains = details.domains
    verdict = v
    if type(details.dkim_alignment) == 'table' and type(input.dkim) == 'table' then
      local sigs = {}
      for i, d in ipairs(input.dkim) do
        local a = details.dkim_alignment[i]
        sigs[i] = setmetatable({ aligned = a ~= 'none' and a or nil }, { __index = d })
      end
      input = setmetatable({ dkim = sigs }, { __index = input })
    end
  end
  -- Loop guard: our own reports coming back through this scanner are not
  -- reported on again (docs/report-keys.md, "Loops").
  if is_report_message(ctx, opts) then return {} end
  local ip = ctx.ip or input.ip
  if not valid_ip(ip) then return nil, 'missing or invalid source IP', 'bad_ip' end
  local list = verdict.domains
  if type(list) ~= 'table' or #list == 0 then list = { verdict } end
  local rows = {}
  local rcpt_domain
  for i, r in ipairs(type(ctx.rcpt) == 'table' and ctx.rcpt or { ctx.rcpt }) do
    if i > M.limits.max_rcpt then break end
    local d = M.domain_of(r)
    if rcpt_domain == nil then rcpt_domain = d
    elseif d ~= rcpt_domain then rcpt_domain = false break end
  end
  local envelope_from = M.domain_of(ctx.mail_from or (input.spf and input.spf.scope ~= 'helo'
                                                      and input.spf.domain)) or ''
  for i, v in ipairs(list) do
    if i > M.limits.max_domains then break end
    local rec = v.record or (i == 1 and verdict.record) or nil
    -- [RUA-1]: no rua in the applied record, no report.
    if rec and v.policy_domain and type(rec.rua) == 'table' and #rec.rua > 0
        and v.result ~= 'none' then
      local pd = lower_domain(v.policy_domain)
      if not M.valid_domain(pd) then return nil, 'invalid policy domain', 'bad_domain' end
      local author = lower_domain(v.author_domain) or ''
      local disposition = disposition_of(v, decision)
      local spf
      if input.spf and input.spf.result then
        spf = { domain = lower_domain(input.spf.domain) or '',
                scope = input.spf.scope == 'helo' and 'helo' or 'mfrom',
                result = AUTH_WORDS[input.spf.result] and input.spf.result or 'none',
                human_result = input.spf.human_result or input.spf.reason }
      end
      rows[#rows + 1] = {
        policy_domain = pd,
        time = opts.time or os.time(),
        count = 1,
        source_ip = ip,
        header_from = author,
        envelope_from = envelope_from,
        envelope_to = rcpt_domain or nil,
        policy = M.policy_of(rec, verdict.mode or rec.mode),
        disposition = disposition,
        dkim = v.dkim_aligned and 'pass' or 'fail',
        spf = v.spf_aligned and 'pass' or 'fail',
        reasons = reasons_of(v, decision, disposition),
        dkim_results = M.order_dkim(input.dkim, author, v.org_domain),
        spf_result = spf,
        rua = rec.rua,
      }
    end
  end
  return rows
end

-- ---------------------------------------------------------------------------
-- Collector: writes rows, buffers them while Redis is unreachable.

local Collector = {}
Collector.__index = Collector

--- A collector.
-- @param opts {table} redis (a connection with :pipeline) or connect (a
--   function returning one, called again after failures), prefix, ttl,
--   max_rows, buffer_max, retry_interval, batch, clock (default os.time),
--   log (function(level, msg))
function M.collector(opts)
  local o = opts_with_defaults(opts)
  if not M.valid_prefix(o.prefix) then error('report.collector: invalid prefix', 2) end
  local self = setmetatable({
    o = o, conn = o.redis, connect = o.connect, clock = o.clock or os.time,
    log = o.log or function() end,
    pending = {},        -- rows waiting for the next pipeline (batch mode)
    buffer = {},         -- key..'\0'..field -> row, while Redis is down
    buffer_order = {},   -- insertion order of buffer keys
    buffered = 0,        -- distinct buffered rows
    lost = {},           -- policy domain..'\0'..day -> messages dropped by a full buffer
    down_until = nil,
    stats = { written = 0, buffered = 0, buffer_dropped = 0, errors = 0, flushes = 0 },
  }, Collector)
  return self
end

local function row_key(row, o)
  return M.keys(o.prefix, row.policy_domain, row.day).rows .. '\0' .. row.field
end

-- Freeze a row for storage: day, field and encoded rua computed once.
local function prepared(row)
  if row.field then return row end
  local policy_enc = row.policy_enc or M.encode_policy(row.policy or {})
  return {
    policy_domain = row.policy_domain, day = row.day or M.day_of(row.time or os.time()),
    field = M.encode_row(row, policy_enc), rua_enc = M.encode_rua(row.rua), count = row.count or 1,
    policy_enc = policy_enc,
  }
end

function Collector:_buffer(row)
  local k = row_key(row, self.o)
  local b = self.buffer[k]
  if b then
    b.count = b.count + row.count
  elseif self.buffered < self.o.buffer_max then
    self.buffer[k] = { policy_domain = row.policy_domain, day = row.day, field = row.field,
                       rua_enc = row.rua_enc, policy_enc = row.policy_enc, count = row.count }
    self.buffer_order[#self.buffer_order + 1] = k
    self.buffered = self.buffered + 1
  else
    -- Bounded memory: the row is lost, but counted, and the count reaches
    -- the report as an <error> once Redis is back.
    local lk = row.policy_domain .. '\0' .. row.day
    self.lost[lk] = (self.lost[lk] or 0) + row.count
    self.stats.buffer_dropped = self.stats.buffer_dropped + row.count
    return
  end
  self.stats.buffered = self.stats.buffered + row.count
end

function Collector:_get_conn()
  if self.conn then return self.conn end
  if not self.connect then return nil, 'no Redis connection configured', 'config' end
  local conn, err, code = self.connect()
  if not conn then return nil, err, code end
  self.conn = conn
  return conn
end

local function is_error_reply(r)
  return type(r) == 'table' and (r.err ~= nil or r.error ~= nil) and r[1] == nil
end

-- Send rows; the ones that could not be written come back.
function Collector:_send(rows)
  local conn, err, code = self:_get_conn()
  if not conn then return rows, err, code end
  local cmds = {}
  local o = self.o
  -- The same command as M.commands(), without re-validating options and
  -- re-encoding rows the collector prepared already.
  local max_rows, ttl = tostring(math.floor(o.max_rows)), tostring(math.floor(o.ttl))
  for i, row in ipairs(rows) do
    local k = M.keys(o.prefix, row.policy_domain, row.day)
    cmds[i] = { 'EVAL', M.ROW_SCRIPT, '2', k.rows, k.meta, row.field,
                tostring(math.floor(row.count)), max_rows, ttl, row.rua_enc,
                row.lost and tostring(row.lost) or '', row.policy_enc or '' }
  end
  local replies, perr, pcode = conn:pipeline(cmds)
  if not replies then
    -- An I/O failure: the connection is dropped and reopened later.
    if conn.close and self.connect then pcall(conn.close, conn) end
    if self.connect then self.conn = nil end
    return rows, perr, pcode or 'io'
  end
  local failed = {}
  for i, row in ipairs(rows) do
    if replies[i] == nil or is_error_reply(replies[i]) then failed[#failed + 1] = row end
  end
  self.stats.written = self.stats.written + (#rows - #failed)
  if #failed > 0 then return failed, 'Redis refused some rows', 'redis' end
  return {}
end

function Collector:_healthy()
  return self.down_until == nil or self.clock() >= self.down_until
end

function Collector:_mark_down(err)
  self.stats.errors = self.stats.errors + 1
  self.down_until = self.clock() + self.o.retry_interval
  self.log('warning', 'report rows buffered, Redis unavailable: ' .. tostring(err))
end

-- Rows carrying the loss counts of a full buffer, attached to the next
-- write of the same domain and day (or written on their own).
function Collector:_loss_rows()
  local rows = {}
  for lk, n in pairs(self.lost) do
    local z = lk:find('\0', 1, true)
    local pd, day = lk:sub(1, z - 1), lk:sub(z + 1)
    rows[#rows + 1] = { policy_domain = pd, day = day, field = '', rua_enc = '', count = 0,
                        lost = n, loss_key = lk }
  end
  return rows
end

--- Flush the buffer (and pending batch) to Redis.
-- @return true, or nil, msg, code (rows stay buffered)
function Collector:flush()
  local rows = {}
  for _, row in ipairs(self.pending) do rows[#rows + 1] = row end
  self.pending = {}
  local order = self.buffer_order
  for _, k in ipairs(order) do rows[#rows + 1] = self.buffer[k] end
  self.buffer, self.buffer_order, self.buffered = {}, {}, 0
  if #rows == 0 and next(self.lost) == nil then return true end
  self.stats.flushes = self.stats.flushes + 1
  local step = self.o.pipeline_max
  local i = 1
  local err, code
  while i <= #rows do
    local chunk = {}
    for j = i, math.min(i + step - 1, #rows) do chunk[#chunk + 1] = rows[j] end
    local failed
    failed, err, code = self:_send(chunk)
    if #failed > 0 then
      -- Keep everything not yet written, in order, and stop for now.
      for _, row in ipairs(failed) do self:_buffer(row) end
      for j = i + step, #rows do self:_buffer(rows[j]) end
      self:_mark_down(err)
      return nil, err, code
    end
    i = i + step
  end
  local loss = self:_loss_rows()
  if #loss > 0 then
    local conn = self:_get_conn()
    local cmds = {}
    for _, r in ipairs(loss) do
      local k = M.keys(self.o.prefix, r.policy_domain, r.day)
      cmds[#cmds + 1] = { 'HINCRBY', k.meta, 'lost_messages', tostring(r.lost) }
    end
    local replies = conn and conn:pipeline(cmds)
    if replies then
      for j, r in ipairs(loss) do
        if not is_error_reply(replies[j]) then self.lost[r.loss_key] = nil end
      end
    end
  end
  self.down_until = nil
  return true
end

--- Add one message's rows (an array from build_rows, or one row).
-- With batch = 1 this is one pipelined round trip; with batch = N rows wait
-- until N are pending (call flush() at the end, or on a timer).
-- @return true when written or queued, false, msg when buffered
function Collector:add(rows)
  if rows.policy_domain then rows = { rows } end
  for _, row in ipairs(rows) do
    if M.valid_domain(row.policy_domain) then
      self.pending[#self.pending + 1] = prepared(row)
    end
  end
  if not self:_healthy() then
    for _, row in ipairs(self.pending) do self:_buffer(row) end
    self.pending = {}
    return false, 'buffered'
  end
  if #self.pending < self.o.batch and self.buffered == 0 then return true end
  local ok, err = self:flush()
  if not ok then return false, err end
  return true
end

--- Counters: written, buffered (messages that went through the buffer),
-- buffer_dropped (lost to a full buffer), errors, flushes, in_buffer.
function Collector:counters()
  local s = {}
  for k, v in pairs(self.stats) do s[k] = v end
  s.in_buffer = self.buffered
  return s
end

function Collector:close()
  if self.conn and self.conn.close then pcall(self.conn.close, self.conn) end
  self.conn = nil
end

return M
