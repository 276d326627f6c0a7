--- Aggregate-report collection: report rows, their Redis encoding, the one writer
-- of rows (M.write) and the spool of a process that cannot wait for Redis.
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
local text = require 'dmarc.util.text'
local keys = require 'dmarc.redis.keys'

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
  max_prefix = keys.MAX_PREFIX, -- longest key prefix
  max_domains = 8,         -- rows per message (one per author domain) [OPEN-5]
  max_rcpt = 1000,         -- recipients looked at for envelope_to
  max_dkim_input = 400,    -- DKIM results read from the input before ordering
  max_row_id = keys.MAX_ROW_ID, -- longest row id (idempotent writes)
}

M.defaults = {
  prefix = keys.DEFAULT_PREFIX,
  ttl = 8 * 86400,           -- a day bucket outlives generation plus retries
  max_rows = 100000,         -- distinct rows per policy domain and day before the cap
  seen_ttl = 3600,           -- seconds a written row id is remembered (0: ids off)
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

-- ---------------------------------------------------------------------------
-- Encoding. One escape for every atom (text.escape_atom): bytes outside
-- [A-Za-z0-9._@+= -] become %XX, so the separators `|`, `,`, `;` and `:`
-- never occur inside an atom and the field can hold nothing that breaks the
-- encoding.

local esc, unesc = text.escape_atom, text.unescape_atom
local split = text.split

local function clip(s, n)
  if s == nil then return nil end
  s = tostring(s)
  if #s > n then return s:sub(1, n) end
  return s
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

-- The key names and the validators of their parts live in dmarc.redis.keys (shared with
-- the domain owner's side); these are the same functions.
M.valid_domain = keys.valid_domain
M.valid_prefix = keys.valid_prefix
M.valid_ip = keys.valid_ip
M.day_of = keys.day_of
M.day_start = keys.day_start
M.keys = keys.report_day
M.seen_key = keys.seen_key
M.valid_row_id = keys.valid_row_id
M.state_key = keys.state_key
M.scan_pattern = keys.scan_pattern
M.domain_of_key = keys.domain_of_key

-- Random bytes as hex, from the kernel; a weaker fallback (time, clock and a
-- table address) where /dev/urandom cannot be read. Ids only need to be
-- unique between processes, not secret.
local function random_hex(nbytes)
  local f = io.open('/dev/urandom', 'rb')
  local raw = f and f:read(nbytes)
  if f then f:close() end
  if not raw or #raw < nbytes then
    raw = tostring(os.time()) .. tostring(os.clock()) .. tostring({})
    local h = 0
    local out = {}
    for i = 1, nbytes do
      for j = 1, #raw do h = (h * 31 + raw:byte(j) + i) % 4294967296 end
      out[i] = string.char(h % 256)
    end
    raw = table.concat(out)
  end
  return (raw:gsub('.', function(c) return string.format('%02x', c:byte()) end))
end
M.random_hex = random_hex

--- A source of row ids unique across processes: a random process part and
-- a counter. Each call returns a fresh id.
function M.id_source()
  local base, n = random_hex(8), 0
  return function()
    n = n + 1
    return string.format('%s.%d', base, n)
  end
end

-- ---------------------------------------------------------------------------
-- Commands

-- One atomic step per row: count it unless the domain's day already holds
-- max_rows distinct rows (then count it as dropped, to be reported in the
-- report's <error>: never trimmed silently), refresh both TTLs, and keep
-- the latest rua list. Both keys share the hash tag, so this is legal on a
-- Redis Cluster.
--
-- With a third key (the row id's `seen` key, see M.seen_key) the write is
-- idempotent: SET NX EX marks the id, and a retry of a write whose reply
-- was lost finds the mark and changes nothing (returns 0). ARGV[8] is the
-- mark's TTL. Without it the script counts as before.
M.ROW_SCRIPT = [[
if KEYS[3] and not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[8]) then return 0 end
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

-- The EVAL of one row: 2 keys, or 3 with the row id's seen key.
local function row_eval(prefix, row, field, count, max_rows, ttl, seen_ttl)
  local k = M.keys(prefix, row.policy_domain, row.day)
  local cmd = { 'EVAL', M.ROW_SCRIPT, '2', k.rows, k.meta }
  if row.id and seen_ttl ~= '0' then
    cmd[3] = '3'
    cmd[#cmd + 1] = M.seen_key(prefix, row.policy_domain, row.id)
  end
  local n = #cmd
  cmd[n + 1] = field
  cmd[n + 2] = count
  cmd[n + 3] = max_rows
  cmd[n + 4] = ttl
  cmd[n + 5] = row.rua_enc or M.encode_rua(row.rua)
  cmd[n + 6] = row.lost and tostring(row.lost) or ''
  cmd[n + 7] = row.policy_enc or (row.policy and M.encode_policy(row.policy)) or ''
  if cmd[3] == '3' then cmd[n + 8] = seen_ttl end
  return cmd
end

--- The Redis commands that store one row (an array of argv arrays).
-- Pure: the rspamd plugin sends the same commands through lua_redis.
-- @param row {table} from build_row (policy_domain, time, count, rua ...)
--   or prepare_row; with row.id the write is idempotent (a retry of the
--   same id counts once, for opts.seen_ttl seconds)
-- @param opts {table} prefix, ttl, max_rows, seen_ttl (defaults in
--   report.defaults)
-- @return {table} commands, or nil, msg, code for a row that must not be stored
function M.commands(row, opts)
  local o = opts_with_defaults(opts)
  if not M.valid_prefix(o.prefix) then return nil, 'invalid key prefix', 'bad_prefix' end
  if not M.valid_domain(row.policy_domain) then
    return nil, 'invalid policy domain', 'bad_domain'
  end
  if row.id ~= nil and not M.valid_row_id(row.id) then return nil, 'invalid row id', 'bad_id' end
  local r = setmetatable({ day = row.day or M.day_of(row.time or os.time()) }, { __index = row })
  return {
    row_eval(o.prefix, r, row.field or M.encode_row(row), tostring(math.floor(row.count or 1)),
             tostring(math.floor(o.max_rows)), tostring(math.floor(o.ttl)),
             tostring(math.floor(tonumber(o.seen_ttl) or 0))),
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

-- The verdict and input seen through dmarc.evaluate's details: its raw verdict (the applied
-- record) under the given one, its per author domain verdicts, and each signature's
-- alignment in the [AGG-6] order.
local function with_details(verdict, input, details)
  local v = {}
  for k, x in pairs(details.verdict or {}) do v[k] = x end
  for k, x in pairs(verdict) do if v[k] == nil then v[k] = x end end
  v.domains = details.domains
  if type(details.dkim_alignment) == 'table' and type(input.dkim) == 'table' then
    local sigs = {}
    for i, d in ipairs(input.dkim) do
      local a = details.dkim_alignment[i]
      sigs[i] = setmetatable({ aligned = a ~= 'none' and a or nil }, { __index = d })
    end
    input = setmetatable({ dkim = sigs }, { __index = input })
  end
  return v, input
end

-- The envelope recipients' domain when they all share one; false when they differ.
local function envelope_to_of(ctx)
  local rcpt_domain
  for i, r in ipairs(type(ctx.rcpt) == 'table' and ctx.rcpt or { ctx.rcpt }) do
    if i > M.limits.max_rcpt then break end
    local d = M.domain_of(r)
    if rcpt_domain == nil then rcpt_domain = d
    elseif d ~= rcpt_domain then rcpt_domain = false break end
  end
  return rcpt_domain
end

-- The row's SPF result, or nil when the input has none.
local function spf_result_of(input)
  if not (input.spf and input.spf.result) then return nil end
  return { domain = lower_domain(input.spf.domain) or '',
           scope = input.spf.scope == 'helo' and 'helo' or 'mfrom',
           result = AUTH_WORDS[input.spf.result] and input.spf.result or 'none',
           human_result = input.spf.human_result or input.spf.reason }
end

-- The row of one author domain's verdict @v under the record @rec (its policy domain @pd).
-- @param m {table} what every row of the message shares: ip, envelope_from, envelope_to
local function row_of(v, rec, pd, verdict, input, decision, opts, m)
  local author = lower_domain(v.author_domain) or ''
  local disposition = disposition_of(v, decision)
  local spf = spf_result_of(input)
  return {
    policy_domain = pd,
    time = opts.time or os.time(),
    count = 1,
    source_ip = m.ip,
    header_from = author,
    envelope_from = m.envelope_from,
    envelope_to = m.envelope_to or nil,
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
  if type(opts.details) == 'table' then
    verdict, input = with_details(verdict, input, opts.details)
  end
  -- Loop guard: our own reports coming back through this scanner are not
  -- reported on again (docs/report-keys.md, "Loops").
  if is_report_message(ctx, opts) then return {} end
  local ip = ctx.ip or input.ip
  if not keys.valid_ip(ip) then return nil, 'missing or invalid source IP', 'bad_ip' end
  local list = verdict.domains
  if type(list) ~= 'table' or #list == 0 then list = { verdict } end
  local rows = {}
  local m = { ip = ip, envelope_to = envelope_to_of(ctx) }
  m.envelope_from = M.domain_of(ctx.mail_from or (input.spf and input.spf.scope ~= 'helo'
                                                  and input.spf.domain)) or ''
  for i, v in ipairs(list) do
    if i > M.limits.max_domains then break end
    local rec = v.record or (i == 1 and verdict.record) or nil
    -- [RUA-1]: no rua in the applied record, no report.
    if rec and v.policy_domain and type(rec.rua) == 'table' and #rec.rua > 0
        and v.result ~= 'none' then
      local pd = lower_domain(v.policy_domain)
      if not M.valid_domain(pd) then return nil, 'invalid policy domain', 'bad_domain' end
      rows[#rows + 1] = row_of(v, rec, pd, verdict, input, decision, opts, m)
    end
  end
  return rows
end

-- ---------------------------------------------------------------------------
-- Writing: the one writer of report rows (dmarc check, the tests and benchmarks; the rspamd
-- plugin sends the same commands, M.commands, through lua_redis).

--- Freeze a row for storage: day, field and encoded rua computed once.
-- @param row {table} from build_rows (or already prepared: returned as is)
-- @param id {string|nil} the row id of an idempotent write (valid_row_id)
-- @return {table} policy_domain, day, field, rua_enc, policy_enc, count, id
function M.prepare_row(row, id)
  if row.field then
    if id and not row.id then row.id = id end
    return row
  end
  local policy_enc = row.policy_enc or M.encode_policy(row.policy or {})
  return {
    policy_domain = row.policy_domain, day = row.day or M.day_of(row.time or os.time()),
    field = M.encode_row(row, policy_enc), rua_enc = M.encode_rua(row.rua), count = row.count or 1,
    policy_enc = policy_enc, id = id,
  }
end

--- Write rows through one connection in one pipeline, one command per row.
-- @param conn {table} a dmarc.redis connection or dmarc.redis.cluster router (:pipeline)
-- @param rows {table} an array of rows (build_rows or prepare_row)
-- @param opts {table|nil} prefix, ttl, max_rows, seen_ttl (M.defaults)
-- @return {table} what happened, always:
--   invalid    {{row =, message =}} rows that must not be stored (never sent)
--   commands   number of rows sent
--   written    rows the server stored (or counted against the cap)
--   failed, error   the pipeline failed (error: its message): nothing is known to be
--              written, every row sent is in doubt (its id makes sending it again safe)
--   refused, refused_why   rows the server refused for good (an error reply that sending
--              again would get again): lost
--   unreached, unreached_why   rows Redis was not ready for: a temporary error reply
--              (LOADING while it replays its AOF, BUSY, MASTERDOWN, TRYAGAIN, CLUSTERDOWN,
--              READONLY; dmarc.redis.connect.temporary_error) or a Cluster node that could
--              not be reached ('io: ' replies): like rows of a Redis that is down
function M.write(conn, rows, opts)
  local out = { invalid = {}, commands = 0, written = 0, refused = 0, unreached = {} }
  local cmds, sent = {}, {}
  for _, row in ipairs(rows) do
    local c, cerr = M.commands(row, opts)
    if c then
      cmds[#cmds + 1] = c[1]
      sent[#cmds] = row
    else
      out.invalid[#out.invalid + 1] = { row = row, message = cerr }
    end
  end
  out.commands = #cmds
  if #cmds == 0 then return out end
  local replies, perr = conn:pipeline(cmds)
  if not replies then
    out.failed, out.error = true, perr
    return out
  end
  local temporary = require('dmarc.redis.connect').temporary_error
  for i = 1, #cmds do
    -- An error reply is { err = ... } (dmarc.redis, dmarc.redis.cluster).
    local r = replies[i]
    if type(r) == 'table' and r.err then
      if temporary(r.err) then
        out.unreached[#out.unreached + 1] = sent[i]
        out.unreached_why = out.unreached_why or r.err
      else
        out.refused = out.refused + 1
        out.refused_why = out.refused_why or r.err
      end
    end
  end
  out.written = #cmds - out.refused - #out.unreached
  return out
end

-- ---------------------------------------------------------------------------
-- Reading: the rows of a period, for the report generator

--- Fields per HSCAN page.
M.HSCAN_COUNT = 1000

--- Everything stored for one policy domain over a period's days, read with HSCAN in pages
-- of HSCAN_COUNT: the rows (encoded field -> count, at most max_rows distinct ones; the rest
-- are counted as dropped) and the meta hashes summed.
-- @param conn a dmarc.redis connection or dmarc.redis.cluster router
-- @param prefix {string} key prefix
-- @param domain {string} the policy domain
-- @param days {table} "YYYYMMDD" days
-- @param max_rows {number}
-- @param state_key {string|nil} the delivery state: when it says complete, nothing is read
-- @return rows, meta {rua, policy, dropped_rows, dropped_messages, lost_messages}, keys read;
--   or 'complete'; or nil, message, code
function M.read_period(conn, prefix, domain, days, max_rows, state_key)
  -- Loaded here: the rspamd plugin writes rows and never reads them.
  local connect = require 'dmarc.redis.connect'
  local agg, nfields = {}, 0
  local meta = { dropped_rows = 0, dropped_messages = 0, lost_messages = 0 }
  local read = {}
  for _, day in ipairs(days) do
    local k = M.keys(prefix, domain, day)
    read[#read + 1] = k.rows
    read[#read + 1] = k.meta
    local cursor = '0'
    local first = true
    repeat
      local cmds = { { 'HSCAN', k.rows, cursor, 'COUNT', tostring(M.HSCAN_COUNT) } }
      if first then cmds[2] = { 'HGETALL', k.meta } end
      if first and state_key and day == days[1] then
        cmds[3] = { 'HGET', state_key, 'complete' }
      end
      local replies, err, code = conn:pipeline(cmds)
      if not replies then return nil, err, code end
      -- A period whose reports were all delivered is not generated again:
      -- rows that arrived after that are not reported twice (or differently).
      if replies[3] == '1' then return 'complete' end
      local page = replies[1]
      if type(page) ~= 'table' or page.err then
        return nil, 'HSCAN failed: ' .. tostring(page and page.err), 'redis'
      end
      if first then
        local m = connect.hash_reply(replies[2])
        if m.rua and m.rua ~= '' then meta.rua = m.rua end
        if m.policy and m.policy ~= '' then meta.policy = m.policy end
        for _, f in ipairs({ 'dropped_rows', 'dropped_messages', 'lost_messages' }) do
          meta[f] = meta[f] + (tonumber(m[f]) or 0)
        end
        first = false
      end
      cursor = tostring(page[1])
      local items = type(page[2]) == 'table' and page[2] or {}
      for i = 1, #items - 1, 2 do
        local field, n = items[i], tonumber(items[i + 1]) or 0
        if agg[field] then
          agg[field] = agg[field] + n
        elseif nfields < max_rows then
          agg[field] = n
          nfields = nfields + 1
        else
          meta.dropped_rows = meta.dropped_rows + 1
          meta.dropped_messages = meta.dropped_messages + n
        end
      end
    until cursor == '0'
  end
  return agg, meta, read
end


--- The policy domains that have rows on any of @days (SCAN, on every master of a Cluster).
-- @return {table} domains (unsorted, each once), or nil, message, code
function M.policy_domains(conn, prefix, days)
  local cluster = require 'dmarc.redis.cluster'
  local domains, seen = {}, {}
  for _, day in ipairs(days) do
    local found, err, code = cluster.scan(conn, M.scan_pattern(prefix, day))
    if not found then return nil, err, code end
    for _, k in ipairs(found) do
      local d = M.domain_of_key(prefix, k)
      if d and not seen[d] then
        seen[d] = true
        domains[#domains + 1] = d
      end
    end
  end
  return domains
end

-- ---------------------------------------------------------------------------
-- Spool: the rows of a process that lives for one message (`dmarc check`)
-- cannot wait in memory for Redis to come back. They are written to a
-- directory instead, one file per message, and the next run that reaches
-- Redis writes them first. Files are created under a temporary name and
-- renamed into place, and claimed by renaming them, so concurrent runs
-- never read a half-written file and never both take the same one. The
-- rows keep their ids, so a file written again after a lost reply counts
-- once (section "Retries").

M.spool_limits = {
  max_files = 10000,      -- files in the spool; beyond, a message's rows are lost (counted)
  flush_files = 64,       -- files one run claims (at most 8 rows each: one pipeline)
  file_rows = 64,         -- rows read from one file
  file_bytes = 1048576,   -- bytes read from one file
  list_max = 20000,       -- directory entries looked at in one listing
  stale_claim = 300,      -- seconds after which a claimed file is taken back
}
M.SPOOL_MAGIC = 'dmarc-spool 1'

local Spool = {}
Spool.__index = Spool

--- A spool directory (created when missing).
-- @param dir {string} the directory
-- @param opts {table|nil} clock (os.time), limits (overrides of spool_limits)
-- @return spool, or nil, msg, 'io'
function M.spool(dir, opts)
  opts = opts or {}
  if type(dir) ~= 'string' or dir == '' or dir:find('[%c]') then
    return nil, 'invalid spool directory', 'io'
  end
  local limits = {}
  for k, v in pairs(M.spool_limits) do limits[k] = v end
  for k, v in pairs(opts.limits or {}) do limits[k] = v end
  local self = setmetatable({ dir = dir:gsub('/+$', ''), clock = opts.clock or os.time,
                              limits = limits, token = random_hex(6) }, Spool)
  if self.dir == '' then self.dir = '/' end
  local probe = self.dir .. '/.probe-' .. self.token
  local f = io.open(probe, 'w')
  if not f then
    os.execute("mkdir -p '" .. self.dir:gsub("'", "'\\''") .. "' 2>/dev/null")
    f = io.open(probe, 'w')
  end
  if not f then return nil, 'cannot write to spool directory ' .. self.dir, 'io' end
  f:close()
  os.remove(probe)
  return self
end

-- Names in the directory, at most list_max (LuaFileSystem when present,
-- else `ls`).
function Spool:_list()
  local max = self.limits.list_max
  local names = {}
  local ok, lfs = pcall(require, 'lfs')
  if ok and type(lfs) == 'table' and lfs.dir then
    local okd, iter, dobj = pcall(lfs.dir, self.dir)
    if not okd then return names end
    for name in iter, dobj do
      if #names >= max then break end
      names[#names + 1] = name
    end
    if dobj and dobj.close then pcall(dobj.close, dobj) end
    return names
  end
  local p = io.popen("ls -1 '" .. self.dir:gsub("'", "'\\''") .. "' 2>/dev/null")
  if not p then return names end
  for name in p:lines() do
    if #names >= max then break end
    names[#names + 1] = name
  end
  p:close()
  return names
end

local SPOOL_NAME = '^%d+%-%x+%.rows$'
local CLAIM_NAME = '^(%d+%-%x+%.rows)%.(%d+)%.%x+%.claim$'

--- Spool files waiting (up to list_max).
function Spool:count()
  local n = 0
  for _, name in ipairs(self:_list()) do
    if name:match(SPOOL_NAME) or name:match(CLAIM_NAME) then n = n + 1 end
  end
  return n
end

local function spool_line(row)
  return table.concat({ 'R', row.policy_domain, row.day, string.format('%d', row.count or 1),
                        row.id or '', row.field, row.rua_enc or '', row.policy_enc or '' }, '\t')
end

local COUNT_MAX = 1000000000

local function spool_row(line)
  local parts = split(line, '\t')
  if #parts ~= 8 or parts[1] ~= 'R' then return nil end
  local pd, day, count, id, field, rua_enc, policy_enc = parts[2], parts[3], parts[4], parts[5],
    parts[6], parts[7], parts[8]
  count = count:match('^%d+$') and tonumber(count)
  if not M.valid_domain(pd) or not day:match('^%d%d%d%d%d%d%d%d$') or not count
      or count < 1 or count > COUNT_MAX or (id ~= '' and not M.valid_row_id(id))
      or not M.split_field(field) or rua_enc:find('[^%w%._@%+= %-%%,!]')
      or policy_enc:find('[^%w%._@%+= %-%%,]') then
    return nil
  end
  return { policy_domain = pd, day = day, count = count, id = id ~= '' and id or nil,
           field = field, rua_enc = rua_enc, policy_enc = policy_enc }
end

--- Keep the prepared rows of one message (prepare_row) in a new file.
-- @return true, or nil, msg, code ('full': max_files reached; 'io')
function Spool:write(rows)
  if #rows == 0 then return true end
  if self:count() >= self.limits.max_files then
    return nil, 'spool full (' .. self.limits.max_files .. ' files)', 'full'
  end
  local lines = { M.SPOOL_MAGIC }
  for i, row in ipairs(rows) do
    if i > self.limits.file_rows then break end
    lines[#lines + 1] = spool_line(row)
  end
  local name = string.format('%010d-%s.rows', math.floor(self.clock()), random_hex(8))
  local tmp = self.dir .. '/.tmp-' .. name
  local f, err = io.open(tmp, 'wb')
  if not f then return nil, 'spool: ' .. tostring(err), 'io' end
  local ok, werr = f:write(table.concat(lines, '\n'), '\n')
  local closed = f:close()
  if not ok or not closed then
    os.remove(tmp)
    return nil, 'spool: ' .. tostring(werr or 'write failed'), 'io'
  end
  local renamed, rerr = os.rename(tmp, self.dir .. '/' .. name)
  if not renamed then
    os.remove(tmp)
    return nil, 'spool: ' .. tostring(rerr), 'io'
  end
  return true
end

local function read_spool_file(path, limits)
  local f = io.open(path, 'rb')
  if not f then return nil end
  local data = f:read(limits.file_bytes) or ''
  f:close()
  local rows, bad = {}, 0
  local first = true
  for line in data:gmatch('([^\n]*)\n') do
    if first then
      if line ~= M.SPOOL_MAGIC then return {}, 1 end
      first = false
    elseif #rows >= limits.file_rows then
      break
    else
      local row = spool_row(line)
      if row then rows[#rows + 1] = row else bad = bad + 1 end
    end
  end
  return rows, bad
end

--- Claim the oldest spool files (and claims older than stale_claim, left
-- by a run that died) for this run.
-- @return rows (prepared, with their ids), claims (for finish), bad (lines
--   that did not parse and are dropped)
function Spool:claim()
  local now = math.floor(self.clock())
  local candidates = {}
  for _, name in ipairs(self:_list()) do
    if name:match(SPOOL_NAME) then
      candidates[#candidates + 1] = { name = name, base = name }
    else
      local base, at = name:match(CLAIM_NAME)
      if base and tonumber(at) + self.limits.stale_claim < now then
        candidates[#candidates + 1] = { name = name, base = base }
      end
    end
  end
  -- Oldest first: names start with the time they were written.
  table.sort(candidates, function(a, b) return a.base < b.base end)
  local rows, claims, bad = {}, {}, 0
  for _, c in ipairs(candidates) do
    if #claims >= self.limits.flush_files then break end
    local claimed = string.format('%s/%s.%d.%s.claim', self.dir, c.base, now, self.token)
    -- The rename is the lock: of two runs only one succeeds.
    if os.rename(self.dir .. '/' .. c.name, claimed) then
      local got, nbad = read_spool_file(claimed, self.limits)
      claims[#claims + 1] = { path = claimed, base = c.base }
      for _, row in ipairs(got or {}) do rows[#rows + 1] = row end
      bad = bad + (nbad or 0)
    end
  end
  return rows, claims, bad
end

--- End a claim: written → the files go; otherwise they return to the spool
-- for a later run.
function Spool:finish(claims, written)
  for _, c in ipairs(claims) do
    if written then
      os.remove(c.path)
    else
      os.rename(c.path, self.dir .. '/' .. c.base)
    end
  end
end

return M
