--[[
dmarc_engine: the lua-dmarc engine as rspamd's DMARC module (rspamd 3.4, LuaJIT).

A thin adapter (style.md, "Rspamd plugin"): it gathers the From fields, SPF, DKIM and ARC
results and the envelope from the task, drives the engine's query loop with rspamd's
asynchronous resolver (callbacks only: the coroutine-style calls crash 3.4 workers under
load, rspamd issue #4902), asks the site policy script what to do, and maps the outcome to
rspamd: the symbols of rspamd's own dmarc module (same names, same option formats, so
composites and rules keep working), an action, headers, an Authentication-Results entry,
Redis report rows and queued failure reports. All DMARC logic lives in the engine
(lua/dmarc*.lua, core/).

Install and configuration: plugins/rspamd/README.md. rspamd's built-in `dmarc` module must
be disabled (`local.d/dmarc.conf: enabled = false;`): both register DMARC_CHECK.
]]

if confighelp then
  return
end

local N = 'dmarc_engine'

local rspamd_logger = require 'rspamd_logger'
local lua_util = require 'lua_util'
local lua_redis = require 'lua_redis'
local rspamd_util = require 'rspamd_util'

-- Bounds on what one message can make the plugin do (everything else is bounded by the
-- engine's own limits, dmarc.core.limits).
local MAX_FROM_FIELDS = 16       -- From fields passed on (the engine reads 8 and flags more)
local MAX_DKIM_RESULTS = 64      -- DKIM results passed on (the engine reads 32)
local MAX_RCPT = 100             -- envelope recipients passed to the site policy
local MAX_ARC_SETS = 50          -- RFC 8617 §4.2.1: instance values are 1..50
local MAX_OPTION_LEN = 256       -- bytes of one symbol option taken from a message
local MAX_FALLBACK_SIGS = 8      -- DKIM signatures the fallback verifies (keys fetched)
local MAX_TXT_STRING = 255       -- RFC 1035 §3.3: one character-string

local settings = {
  -- Where the engine is, when not on rspamd's default paths (rspamd 3.4 ignores
  -- options { lua_path; lua_cpath; }). Prepended to package.path / package.cpath.
  lua_path = nil,
  lua_cpath = nil,
  mode = 'rfc9989',               -- or 'rfc7489' (PSL discovery, pct honoured) [MODE-1]
  psl_file = nil,                 -- rfc7489 mode: a public suffix list file (default: libpsl's)
  pct_as_testing = false,         -- [OPEN-3]
  cache_size = 10000,             -- DNS answers kept per worker [DISC-11]
  -- rspamd's resolver does not tell a record's TTL to Lua: answers are kept this long.
  dns_cache_ttl = 300,
  dns_negative_ttl = 60,
  site_script = nil,              -- the site policy script (lua/dmarc/site/policy.lua); nil: defaults
  authserv_id = nil,              -- Authentication-Results authserv-id; nil: the host name
  auth_results = true,            -- add `Authentication-Results: <id>; dmarc=...`
  auth_results_header = 'Authentication-Results',
  folder_header = 'X-DMARC-Folder', -- a `folder` decision: the delivery agent files by it
  score_symbol = 'DMARC_SITE_SCORE', -- a `score` decision: this symbol, weight score_weight
  score_weight = 1.0,
  check_local = false,
  check_authed = false,
  -- RFC 9989 §7.4 [POL-3]: p=reject is enforced only with other evidence. Any of these
  -- symbols on the message is such evidence (they are checked before DMARC_CHECK).
  evidence_symbols = {},
  -- Actions for the site's `reject` and `defer` decisions.
  actions = {
    reject = 'reject',
    defer = 'soft reject',
  },
  -- rspamd's symbol names (rspamd's dmarc module and lua_auth_results use the same).
  symbols = {
    allow = 'DMARC_POLICY_ALLOW',
    reject = 'DMARC_POLICY_REJECT',
    quarantine = 'DMARC_POLICY_QUARANTINE',
    softfail = 'DMARC_POLICY_SOFTFAIL',
    dnsfail = 'DMARC_DNSFAIL',
    badpolicy = 'DMARC_BAD_POLICY',
    na = 'DMARC_NA',
    spf_allow = 'R_SPF_ALLOW',
    spf_fail = 'R_SPF_FAIL',
    spf_softfail = 'R_SPF_SOFTFAIL',
    spf_neutral = 'R_SPF_NEUTRAL',
    spf_tempfail = 'R_SPF_DNSFAIL',
    spf_permfail = 'R_SPF_PERMFAIL',
    spf_na = 'R_SPF_NA',
    dkim_allow = 'R_DKIM_ALLOW',
    arc_allow = 'ARC_ALLOW',
    arc_reject = 'ARC_REJECT',
    arc_invalid = 'ARC_INVALID',
    arc_dnsfail = 'ARC_DNSFAIL',
  },
  -- Overrides (recipient sets, domains, IPs ...) read from Redis with the CLI's key schema
  -- (docs/redis-keys.md). Servers: `servers` here, else this module's, else `redis {}`.
  -- Off unless enabled: without it, the site script's own overrides and members apply.
  overrides = {
    enabled = false,
    prefix = 'dmarc:',
    tag = 'ovr',
    timeout = 0.5,
    cache_ttl = 10,               -- seconds an entry (or its absence) is reused; 0: never
    cache_size = 10000,           -- keys kept per worker
  },
  -- Aggregate report rows in the reporting schema (docs/report-keys.md), so that
  -- `dmarc report generate` reports on what rspamd collected.
  reporting = {
    enabled = false,
    prefix = 'dmarc:',
    ttl = nil,                    -- default of lua/dmarc/report/rows.lua
    max_rows = nil,
    timeout = 1.0,
    skip_rspamc = true,           -- as rspamd's module: not for rspamc/controller scans
    reporter_address = nil,       -- our own report sender: its mail is never reported on
  },
  -- RFC 9991 failure reports [FAIL-1], off by default: built with lua/dmarc/report/failure.lua
  -- and queued in Redis (docs/report-keys.md, "Failure reports"), where `dmarc report send`
  -- verifies the ruf destinations [RUA-5] and delivers them: the same queue, the same
  -- per-domain rate limit [FAIL-7] as `dmarc check --failure-reports`.
  failure_reports = {
    enabled = false,
    email = nil,                  -- the reporter address (From of the reports); required
    submitter = nil,              -- the reporting domain (Reporting-MTA); required
    org_name = nil,               -- default: the submitter
    prefix = 'dmarc:',            -- the key prefix `dmarc report send --prefix` reads
    rate_limit = 10,              -- reports per policy domain per window [FAIL-7]
    rate_window = 3600,           -- seconds
    queue_max = 100,              -- queued reports per policy domain
    queue_ttl = 7 * 86400,        -- seconds a queue outlives its last addition
    redact_key = nil,             -- local parts as a keyed hash instead of "redacted" [FAIL-7]
    timeout = 1.0,
    skip_rspamc = true,           -- as for rows: not for rspamc/controller scans
  },
  -- When rspamd's DKIM check did not run (its dkim filter is not loaded), verify DKIM with
  -- the engine's libopendkim (dmarc.io). Keys are fetched with rspamd's asynchronous
  -- resolver first, so the verification itself never waits for DNS.
  fallback_dkim = false,
  -- When rspamd's spf module gave no result for a message (it is not loaded), check SPF
  -- with the engine's libspf2 (dmarc.io), every DNS question asked through rspamd's
  -- asynchronous resolver, round by round. With rspamd's spf module loaded its result is
  -- always used. On by default; without dmarc.io it is then off, with a log line.
  fallback_spf = true,
  -- Seconds Redis is left alone after a failure, so a dead Redis costs no time per message.
  redis_backoff = 10,
}

local E = {}
local dio              -- require 'dmarc.io', for the fallbacks (set up at the end)
local fallback_dkim = false  -- settings.fallback_dkim, with dmarc.io loaded
local fallback_spf = false   -- settings.fallback_spf, with dmarc.io loaded
local auth                   -- require 'dmarc.receive.auth', for the SPF fallback
local sample_pct = false     -- rfc7489 mode: each message gets a pct roll
local mime_header_encode = rspamd_util.mime_header_encode

-- ---------------------------------------------------------------------------
-- Pure helpers (no rspamd objects): exported at the end for the unit tests.

local exports = {}

--- RFC 8601 result words for rspamd's DKIM results (task:get_dkim_results()).
local DKIM_WORDS = {
  allow = 'pass',
  reject = 'fail',
  tempfail = 'temperror',
  ['not found'] = 'permerror',    -- no key record: RFC 6376 §6.1.2 PERMFAIL
  ['bad record'] = 'permerror',
  ['permanent error'] = 'permerror',
  permerror = 'permerror',
  unknown = 'neutral',
}
exports.DKIM_WORDS = DKIM_WORDS

--- The SPF symbol keys in the order they are looked for, with their RFC 8601 words.
local SPF_WORDS = {
  { 'spf_allow', 'pass' }, { 'spf_fail', 'fail' }, { 'spf_softfail', 'softfail' },
  { 'spf_neutral', 'neutral' }, { 'spf_tempfail', 'temperror' },
  { 'spf_permfail', 'permerror' }, { 'spf_na', 'none' },
}
exports.SPF_WORDS = SPF_WORDS

--- rspamd resolver error strings (librdns) to the engine's rcodes [DISC-4].
-- NXDOMAIN and NODATA stay distinct: the np existence test needs NXDOMAIN [DISC-12].
local function rcode_of(err, results)
  if not err then
    if type(results) == 'table' and #results > 0 then return 'noerror' end
    return 'nodata'
  end
  if err == 'no records with this name' then return 'nxdomain' end
  if err == 'requested record is not found' then return 'nodata' end
  if err == 'query timed out' then return 'timeout' end
  -- 'server fail', 'query refused', 'network error' ...: transient [DISC-10].
  return 'servfail'
end
exports.rcode_of = rcode_of

-- rspamd's resolver methods by question type (others go through resolver:resolve(type)).
local RESOLVE_METHODS = { TXT = 'resolve_txt', A = 'resolve_a', MX = 'resolve_mx' }

local function clip(s, n)
  s = tostring(s)
  if #s > n then return s:sub(1, n) end
  return s
end

--- The list identifier of a List-Id value (RFC 2919 §2: `phrase <id>`), lowercased.
local function list_id_of(value)
  if type(value) ~= 'string' then return nil end
  local id = value:match('<([^<>]+)>') or value
  id = id:match('^%s*(.-)%s*$')
  if id == '' or #id > 255 or id:find('[%s%c]') then return nil end
  return id:lower()
end
exports.list_id_of = list_id_of

--- ARC sealers, newest first, from ARC-Seal header values (RFC 8617 §4.1.3: i=, d=, s=).
local function arc_sealers(seal_values)
  local sealers = {}
  for n, value in ipairs(seal_values) do
    if n > MAX_ARC_SETS then break end
    local tags = {}
    for k, v in tostring(value):gmatch('([%a]+)%s*=%s*([^;]*)') do
      tags[k:lower()] = v:gsub('%s+', '')
    end
    local i = tonumber(tags.i)
    if i and i >= 1 and i <= MAX_ARC_SETS and tags.d and tags.s then
      sealers[#sealers + 1] = { i = i, d = tags.d:lower(), s = tags.s }
    end
  end
  table.sort(sealers, function(a, b) return a.i > b.i end)
  return sealers
end
exports.arc_sealers = arc_sealers

--- The client IP that ARC set @i recorded (smtp.remote-ip of its ARC-Authentication-Results),
-- for the [ARC-3] comment.
local function arc_remote_ip(aar_values, i)
  for n, value in ipairs(aar_values) do
    if n > MAX_ARC_SETS then break end
    local inst = tonumber(tostring(value):match('^%s*i%s*=%s*(%d+)'))
    if inst == i then
      return tostring(value):match('smtp%.remote%-ip%s*=%s*([%x%.:]+)')
    end
  end
  return nil
end
exports.arc_remote_ip = arc_remote_ip

--- rspamd's explanation of a DMARC failure, in its words ("No valid SPF, No valid DKIM",
-- "SPF not aligned (relaxed)"), so rules matching the built-in module's options still match.
local function failure_text(out, record, input)
  local parts = {}
  local spf = input.spf
  if spf and spf.result == 'pass' then
    if not out.spf_aligned then
      parts[#parts + 1] = string.format('SPF not aligned (%s)',
        (record and record.aspf == 'strict') and 'strict' or 'relaxed')
    end
  else
    parts[#parts + 1] = 'No valid SPF'
  end
  local dkim_pass = false
  for _, d in ipairs(input.dkim or E) do
    if d.result == 'pass' then dkim_pass = true end
  end
  if dkim_pass then
    if not out.dkim_aligned then
      parts[#parts + 1] = string.format('DKIM not aligned (%s)',
        (record and record.adkim == 'strict') and 'strict' or 'relaxed')
    end
  else
    parts[#parts + 1] = 'No valid DKIM'
  end
  return table.concat(parts, ', ')
end
exports.failure_text = failure_text

--- The symbol and options of a verdict, in the formats of rspamd's dmarc module:
--   DMARC_POLICY_ALLOW       [<policy domain>, <policy>]
--   DMARC_POLICY_REJECT/_QUARANTINE/_SOFTFAIL (by the policy applied after t=/pct)
--                            [<policy domain> : <why>, <policy>(, <reason>)...]
--   DMARC_NA                 [<author domain>] | [No From header] | [No domain in From header]
--   DMARC_DNSFAIL            [<domain> : <resolver error>, <policy>?]
--   DMARC_BAD_POLICY         [<domain> : <why>]
-- Extra options (after rspamd's) name the engine's reason (policy_test_mode, sampled_out)
-- and flags (multiple_from ...).
-- @param out the engine's output object, with out.record (the applied record, when a failure
--   needs its aspf/adkim words) and out.error (why a temperror or permerror)
-- @param input the evaluation input; @param dns_error the first resolver error, or nil
-- @return symbol key (allow, reject ...), options array
local function compat_result(out, input, dns_error)
  local record = out.record
  local domain = out.policy_domain or out.author_domain or 'unknown'
  local opts
  local key
  if out.result == 'pass' then
    key = 'allow'
    opts = { domain, out.policy or 'none' }
  elseif out.result == 'fail' then
    local applied = out.applied or out.policy or 'none'
    key = (applied == 'reject' and 'reject') or (applied == 'quarantine' and 'quarantine')
      or 'softfail'
    opts = { domain .. ' : ' .. failure_text(out, record, input), out.policy or 'none' }
    if out.reason then opts[#opts + 1] = out.reason end
  elseif out.result == 'temperror' then
    key = 'dnsfail'
    opts = { domain .. ' : ' .. (dns_error or 'SPF/DKIM temp error') }
    if out.policy then opts[#opts + 1] = out.policy end
  elseif out.result == 'permerror' then
    key = 'badpolicy'
    opts = { domain .. ' : ' .. (out.error or 'invalid DMARC record') }
  else
    key = 'na'
    local no_from, no_author = false, false
    for _, f in ipairs(out.flags or E) do
      if f == 'no_from' then no_from = true elseif f == 'no_author_domain' then no_author = true end
    end
    if no_from then
      opts = { 'No From header' }
    elseif no_author or not out.author_domain then
      opts = { 'No domain in From header' }
    else
      opts = { out.author_domain }
    end
  end
  local flags = out.flags or E
  for i = 1, #flags do opts[#opts + 1] = flags[i] end
  for i = 1, #opts do
    if #opts[i] > MAX_OPTION_LEN then opts[i] = opts[i]:sub(1, MAX_OPTION_LEN) end
  end
  return key, opts
end
exports.compat_result = compat_result

-- RFC 8601 §2.2: a value that is not a token goes in quotes.
local function ar_value(s)
  s = tostring(s)
  if s:find('^[%w%.%-_]+$') then return s end
  return '"' .. s:gsub('[\\"]', '\\%0') .. '"'
end

--- The dmarc= entry of an Authentication-Results header [AR-2]: the real From (author)
-- domain as header.from, policy.dmarc = the policy actually applied after t=, pct and site
-- overrides, and an OpenDMARC-style comment with the published and applied dispositions.
-- A temperror or permerror says why in reason= (RFC 8601 §2.2).
local function ar_entry(out, decision, why)
  local parts = { 'dmarc=' .. out.result }
  local decided = out.result == 'pass' or out.result == 'fail'
  local applied
  if decided and out.policy then
    local dis = decision and decision.disposition or out.applied or 'none'
    if dis == 'pass' then dis = 'none' end
    applied = dis
    parts[#parts + 1] = string.format('(p=%s dis=%s)', out.policy, dis)
  elseif (out.result == 'temperror' or out.result == 'permerror') and why then
    parts[#parts + 1] = 'reason=' .. ar_value(clip(why, MAX_OPTION_LEN))
  end
  if out.author_domain then parts[#parts + 1] = 'header.from=' .. ar_value(out.author_domain) end
  if applied then parts[#parts + 1] = 'policy.dmarc=' .. applied end
  return table.concat(parts, ' ')
end
exports.ar_entry = ar_entry

-- ---------------------------------------------------------------------------
-- Gathering the inputs from the task

--- Raw values of every From field, in order, as received.
local function from_values(task)
  local n = task:get_header_count('From') or 0
  if n == 0 then return {} end
  -- The common case without building every header's table.
  if n == 1 then return { task:get_header_raw('From') or '' } end
  local out = {}
  for i, hdr in ipairs(task:get_header_full('From') or E) do
    if i > MAX_FROM_FIELDS then break end
    out[#out + 1] = hdr.value or hdr.decoded or ''
  end
  return out
end

-- rspamd's SPF symbol names with their RFC 8601 words, in the order they are looked for
-- (set up with the configuration: the names are configurable).
local spf_symbols = {}

--- rspamd's SPF result word, or nil when its spf module gave none (not loaded, or skipped
-- the message).
local function rspamd_spf_result(task)
  for i = 1, #spf_symbols do
    local pair = spf_symbols[i]
    if task:has_symbol(pair[1]) then return pair[2] end
  end
  return nil
end

--- SPF as rspamd's spf module found it: the result from its symbols, the domain it checked
-- (MAIL FROM, or HELO for a null reverse-path, RFC 7208 §2.4) [ALN-1].
local function spf_of(task, env, result)
  if not result then return nil end
  if env.domain and env.domain ~= '' then
    return { result = result, domain = env.domain:lower(), scope = 'mfrom' }
  end
  local helo = task:get_helo()
  if helo and helo ~= '' then
    return { result = result, domain = helo:lower(), scope = 'helo' }
  end
  return nil
end

--- Did rspamd's DKIM check run? Its dkim filter and the spf module each count themselves
-- in the mempool variable dmarc_checks (the variable rspamd's dmarc module reads).
local function rspamd_checked_dkim(task, spf_ran)
  local checks = task:get_mempool():get_variable('dmarc_checks', 'double') or 0
  return checks - (spf_ran and 1 or 0) >= 1
end

--- Every DKIM signature rspamd checked (nil: rspamd did not check, and the fallback will).
local function dkim_of(task, spf_ran)
  if fallback_dkim and not rspamd_checked_dkim(task, spf_ran) then return nil end
  local results = task:get_dkim_results() or E
  local out = {}
  for i = 1, math.min(#results, MAX_DKIM_RESULTS) do
    local r = results[i]
    if r.domain then
      out[#out + 1] = {
        result = DKIM_WORDS[r.result] or 'neutral',
        domain = r.domain:lower(),
        selector = r.selector,
        human_result = r.fail_reason,
      }
    end
  end
  return out
end

-- {==================================================================
-- The DKIM fallback: libopendkim through dmarc.io, over keys fetched asynchronously.
-- ===================================================================

--- d= and s= of the message's DKIM-Signature fields (RFC 6376 §3.5), at most
-- MAX_FALLBACK_SIGS; only names that can be looked up.
local function dkim_key_names(values)
  local names, seen = {}, {}
  for _, value in ipairs(values) do
    if #names >= MAX_FALLBACK_SIGS then break end
    local tags = {}
    for k, v in tostring(value):gmatch('([%a]+)%s*=%s*([^;]*)') do
      tags[k:lower()] = v:gsub('%s+', '')
    end
    local d, sel = tags.d and tags.d:lower(), tags.s and tags.s:lower()
    if d and sel and (sel .. d):find('^[%w%.%-_]+$') and #d + #sel < 240 then
      local name = sel .. '._domainkey.' .. d:gsub('%.$', '')
      if not seen[name] then
        seen[name] = true
        names[#names + 1] = name
      end
    end
  end
  return names
end
exports.dkim_key_names = dkim_key_names

--- A master-file TXT record (RFC 1035 §5.1) holding @txt, split into character-strings.
local function zone_txt_record(name, txt)
  local parts = {}
  for i = 1, math.max(#txt, 1), MAX_TXT_STRING do
    local chunk = txt:sub(i, i + MAX_TXT_STRING - 1)
    chunk = chunk:gsub('[\\"]', '\\%0'):gsub('[%c\128-\255]', function(c)
      return string.format('\\%03d', c:byte())
    end)
    parts[#parts + 1] = '"' .. chunk .. '"'
  end
  return name .. '. 60 IN TXT ' .. table.concat(parts, ' ')
end
exports.zone_txt_record = zone_txt_record

--- Verify every DKIM signature of the task; cb(results) with results in the plugin's
-- input shape ({result=, domain=, selector=, human_result=}), exactly once.
local function dkim_fallback(task, cb)
  local values = {}
  for _, hdr in ipairs(task:get_header_full('DKIM-Signature') or E) do
    values[#values + 1] = hdr.value or ''
    if #values > MAX_FALLBACK_SIGS then break end
  end
  local names = dkim_key_names(values)
  if #names == 0 then return cb({}) end
  local records, faults, pending = {}, nil, #names
  local function verify()
    local out = {}
    local ok, err = pcall(function()
      local r, rerr = dio.resolver{ zone_text = table.concat(records, '\n') .. '\n', faults = faults,
                                     cache = 0 }
      if not r then error(rerr, 0) end
      local res, verr = r:dkim(tostring(task:get_content()))
      r:close()
      if not res then error(verr, 0) end
      for i, sig in ipairs(res.signatures or E) do
        if i > MAX_DKIM_RESULTS then break end
        if sig.domain and sig.domain ~= '' then
          out[#out + 1] = { result = sig.result, domain = sig.domain:lower(), selector = sig.selector,
                            human_result = sig.reason }
        end
      end
    end)
    if not ok then rspamd_logger.warnx(task, '%s: DKIM fallback failed: %s', N, err) end
    cb(out)
  end
  local resolver = task:get_resolver()
  for _, name in ipairs(names) do
    local function on_answer(_, _, results, err)
      local rcode = rcode_of(err, results)
      if rcode == 'noerror' then
        for _, rr in ipairs(results) do records[#records + 1] = zone_txt_record(name, tostring(rr)) end
      elseif rcode == 'servfail' or rcode == 'timeout' then
        -- A key that could not be fetched is a temperror for its signature, not a fail.
        faults = faults or {}
        faults[name] = rcode
      end
      pending = pending - 1
      if pending == 0 then verify() end
    end
    local ok, sent = pcall(resolver.resolve_txt, resolver,
      { task = task, name = name, forced = true, callback = on_answer })
    if not ok or not sent then on_answer(nil, nil, nil, 'server fail') end
  end
end

-- }==================================================================

-- {==================================================================
-- The SPF fallback: libspf2 through dmarc.io, sans-I/O, over rspamd's resolver.
-- ===================================================================

local MAX_SPF_RRS = 64           -- records of one answer handed to libspf2

--- The address a reverse-lookup name stands for (in-addr.arpa, RFC 1035 §3.5; ip6.arpa,
-- RFC 3596 §2.5): rspamd's resolve_ptr takes the address, not the name. nil otherwise.
local function ptr_address(name)
  local d, c, b, a = name:match('^(%d+)%.(%d+)%.(%d+)%.(%d+)%.in%-addr%.arpa$')
  if d then return a .. '.' .. b .. '.' .. c .. '.' .. d end
  local nibbles = name:match('^([%x.]+)%.ip6%.arpa$')
  if not nibbles or #nibbles ~= 63 then return nil end
  local hex = nibbles:gsub('%.', ''):reverse()
  if #hex ~= 32 then return nil end
  local groups = {}
  for i = 1, 32, 4 do groups[#groups + 1] = hex:sub(i, i + 3) end
  return table.concat(groups, ':')
end
exports.ptr_address = ptr_address

--- The question callback of auth.spf_async over rspamd's resolver: records in the
-- presentation form dmarc.io's spf_checker takes.
local function spf_resolver(task)
  local resolver = task:get_resolver()
  return function(name, qtype, cb)
    local function on_answer(_, _, results, err)
      local rcode = rcode_of(err, results)
      local records
      if rcode == 'noerror' then
        records = {}
        for i = 1, math.min(#results, MAX_SPF_RRS) do
          local rr = results[i]
          if qtype == 'MX' then
            records[i] = tostring(rr.priority or 0) .. ' ' .. tostring(rr.name)
          else
            records[i] = tostring(rr)
          end
        end
      end
      cb(rcode, records)
    end
    local args = { task = task, name = name, forced = true, callback = on_answer }
    local ok, sent
    if qtype == 'PTR' then
      args.name = ptr_address(name)
      if not args.name then return cb('servfail') end
      ok, sent = pcall(resolver.resolve_ptr, resolver, args)
    elseif RESOLVE_METHODS[qtype] then
      ok, sent = pcall(resolver[RESOLVE_METHODS[qtype]], resolver, args)
    else
      ok, sent = pcall(resolver.resolve, resolver, qtype:lower(), args)
    end
    -- Not even sent: transient, a temperror for the term that asked (RFC 7208 §5).
    if not ok or not sent then cb('servfail') end
  end
end

-- Checkers are reused (each holds a libspf2 server): at most SPF_POOL_MAX wait here.
local SPF_POOL_MAX = 16
local spf_pool, spf_pool_n = {}, 0

--- SPF for the message as check_host() finds it (RFC 7208 §2.3, §2.4: MAIL FROM, or HELO
-- for a null reverse-path) [ALN-1]; cb(spf input) or cb(nil) when there is nothing to
-- check (no client address), exactly once.
local function spf_fallback(task, env, cb)
  local ip = task:get_from_ip()
  if not (ip and ip:is_valid()) then return cb(nil) end
  local checker
  if spf_pool_n > 0 then
    checker = spf_pool[spf_pool_n]
    spf_pool[spf_pool_n] = nil
    spf_pool_n = spf_pool_n - 1
  else
    checker = dio.spf_checker{ receiver = settings.authserv_id }
  end
  local args = { ip = ip:to_string(), helo = task:get_helo(), mail_from = env.addr or '' }
  auth.spf_async(checker, args, spf_resolver(task), function(res, err)
    checker:clear()
    if spf_pool_n < SPF_POOL_MAX then
      spf_pool_n = spf_pool_n + 1
      spf_pool[spf_pool_n] = checker
    else
      checker:close()
    end
    if not res then
      rspamd_logger.warnx(task, '%s: SPF fallback: %s', N, err)
      return cb(nil)
    end
    lua_util.debugm(N, task, 'SPF fallback: %s for %s (%s)', res.result, res.domain, res.reason)
    if res.domain == '' then return cb(nil) end
    cb({ result = res.result, domain = res.domain:lower(), scope = res.scope,
         human_result = res.reason })
  end)
end

-- }==================================================================

--- rspamd's ARC verdict (its arc module) and the sealers of the chain [ARC-1].
local function arc_of(task)
  local s = settings.symbols
  local result = 'none'
  if task:has_symbol(s.arc_allow) then
    result = 'pass'
  elseif task:has_symbol(s.arc_reject) or task:has_symbol(s.arc_invalid) then
    result = 'fail'
  elseif task:has_symbol(s.arc_dnsfail) then
    result = 'temperror'
  end
  local arc = { result = result, sealers = {} }
  if result == 'none' then return arc end
  local seals = {}
  for _, hdr in ipairs(task:get_header_full('ARC-Seal') or E) do
    seals[#seals + 1] = hdr.value or ''
  end
  arc.sealers = arc_sealers(seals)
  local aars = {}
  for _, hdr in ipairs(task:get_header_full('ARC-Authentication-Results') or E) do
    aars[#aars + 1] = hdr.value or ''
  end
  arc.remote_ip = arc_remote_ip(aars, 1)
  return arc
end

-- The site policy's view of the message (lua/dmarc/site/policy.lua ctx), each field read from
-- the task on first use: most decisions read none of it (a pass, p=none, a failure at a
-- site without overrides), and every field costs calls into rspamd. A field that comes out
-- nil is kept as false (neither is a value the policy or the report rows tell apart), so
-- it is not read twice.
local CTX_TASK = {}    -- the key of the task in a ctx that still reads lazily

local CTX_FIELDS = {
  ip = function(task)
    local ip = task:get_from_ip()
    return (ip and ip:is_valid()) and ip:to_string() or nil
  end,
  helo = function(task) return task:get_helo() end,
  mail_from = function(task) return (((task:get_from('smtp') or E)[1]) or E).addr end,
  rcpt = function(task)
    local rcpt = {}
    local list = task:get_recipients('smtp') or E
    for i = 1, math.min(#list, MAX_RCPT) do
      local addr = list[i].addr
      if addr and addr ~= '' then rcpt[#rcpt + 1] = addr:lower() end
    end
    return rcpt
  end,
  list_id = function(task) return list_id_of(task:get_header('List-Id')) end,
  arc = function(task) return arc_of(task) end,
  evidence = function(task)
    local evidence = {}
    for _, sym in ipairs(settings.evidence_symbols) do
      if task:has_symbol(sym) then evidence[#evidence + 1] = sym end
    end
    return evidence
  end,
}

local LAZY_CTX = {
  __index = function(ctx, key)
    local read, task = CTX_FIELDS[key], rawget(ctx, CTX_TASK)
    if not read or not task then return nil end
    local value = read(task)
    if value == nil then value = false end
    rawset(ctx, key, value)
    return value
  end,
}

local function ctx_of(task)
  return setmetatable({ [CTX_TASK] = task }, LAZY_CTX)
end

--- Every field read, the task let go: a plain table, as a site hook may iterate it.
local function ctx_materialize(ctx)
  if not rawget(ctx, CTX_TASK) then return ctx end
  for key in pairs(CTX_FIELDS) do
    if ctx[key] == false then ctx[key] = nil end
  end
  ctx[CTX_TASK] = nil
  return setmetatable(ctx, nil)
end
exports.ctx_of, exports.ctx_materialize = ctx_of, ctx_materialize

-- ---------------------------------------------------------------------------
-- Runtime state, set up by the configuration code at the end

local dmarc            -- require 'dmarc'
local resolve          -- require 'dmarc.receive.resolve'
local engine_ctx       -- the engine's dmarc.ctx for settings.mode
local engine_cache     -- its shared answer cache (per worker), or nil
local engine_limits    -- dmarc.core.limits
local report           -- require 'dmarc.report.rows', when reporting is enabled
local store_mod        -- require 'dmarc.site.store', when overrides are enabled
local engine           -- dmarc.new{...}: one per worker, with the shared answer cache
local site             -- the loaded site policy
local overrides_redis  -- lua_redis params, or nil
local reporting_redis
local row_script_id    -- lua_redis script id of report.ROW_SCRIPT
local failure          -- require 'dmarc.report.failure', when failure reports are enabled
local failure_reporter -- failure.new{...}: builds the queue commands
local failure_redis    -- lua_redis params of the failure-report queue
local queue_script_id  -- lua_redis script id of failure.QUEUE_SCRIPT
local auth_local_conf
local redis_down_until = 0

-- The override cache: logical store key -> { entry or false (absent), expiry }. Override
-- changes (`dmarc override add|del`) take effect within overrides.cache_ttl seconds; in
-- exchange most messages need no Redis round trip at all. Bounded: emptied when full.
local override_cache, override_cache_n = {}, 0

local function override_cache_get(keys)
  local found, missing = {}, {}
  local now = os.time()
  for _, k in ipairs(keys) do
    local c = override_cache[k]
    if c and c[2] > now then
      if c[1] then found[k] = c[1] end
    else
      missing[#missing + 1] = k
    end
  end
  return found, missing
end

local function override_cache_put(keys, fetched)
  local ttl = settings.overrides.cache_ttl
  if ttl <= 0 then return end
  if override_cache_n + #keys > settings.overrides.cache_size then
    override_cache, override_cache_n = {}, 0
  end
  local expiry = os.time() + ttl
  for _, k in ipairs(keys) do
    if not override_cache[k] then override_cache_n = override_cache_n + 1 end
    override_cache[k] = { fetched[k] or false, expiry }
  end
end

local function redis_healthy()
  return os.time() >= redis_down_until
end

local function redis_failed(task, what, err)
  redis_down_until = os.time() + settings.redis_backoff
  rspamd_logger.warnx(task, '%s: redis %s failed (%s); redis is skipped for %s s',
    N, what, err, settings.redis_backoff)
end

--- One asynchronous Redis request that never raises and calls @cb exactly once:
-- cb(err, data). Redis down or backing off -> cb('unavailable') at once.
local function redis_request(task, params, key, is_write, cmd, args, cb)
  if not redis_healthy() then return cb('unavailable (backing off)') end
  local called = false
  local function done(err, data)
    if called then return end
    called = true
    if err then redis_failed(task, cmd, err) end
    cb(err, data)
  end
  local ok, ret = pcall(lua_redis.redis_make_request, task, params, key, is_write,
    function(err, data) done(err, data) end, cmd, args)
  if not ok or not ret then done(ok and 'cannot connect' or tostring(ret)) end
end

-- The resolver adapter: the engine's resolve_async(name, qtype, cb) over rspamd's
-- callback resolver. `forced`: DMARC lookups are never dropped by rspamd's per-task DNS
-- limit, as its own module does.

local function make_resolver(task, dns_errors)
  local resolver = task:get_resolver()
  return function(name, qtype, cb)
    local function on_answer(_, _, results, err)
      local rcode = rcode_of(err, results)
      if rcode == 'servfail' or rcode == 'timeout' then
        dns_errors[#dns_errors + 1] = name .. ': ' .. tostring(err)
      end
      local txts
      if rcode == 'noerror' and qtype == 'TXT' then
        txts = {}
        for i, rr in ipairs(results) do txts[i] = tostring(rr) end
      end
      local ttl = (rcode == 'noerror') and settings.dns_cache_ttl or settings.dns_negative_ttl
      cb(rcode, txts, ttl)
    end
    local args = { task = task, name = name, forced = true, callback = on_answer }
    local ok, started
    local method = RESOLVE_METHODS[qtype]
    if method then
      ok, started = pcall(resolver[method], resolver, args)
    else
      -- AAAA (the RFC 9091 existence test of rfc7489 mode) has no dedicated method.
      ok, started = pcall(resolver.resolve, resolver, qtype:lower(), args)
    end
    if not ok or not started then
      -- Not even sent: transient, so the message is temperror, never a pass or a fail.
      dns_errors[#dns_errors + 1] = name .. ': ' .. (ok and 'not sent' or tostring(started))
      cb('servfail', nil, 0)
    end
  end
end

-- ---------------------------------------------------------------------------
-- Acting on the outcome

-- Header changes go to the MTA in the reply's milter block (rspamd_proxy in milter mode,
-- or the MTA's rspamd integration applies them); set_milter_reply merges them with other
-- modules' changes. Order 0: on top, where RFC 8601 §5 puts Authentication-Results.
local function header_changes(task, out, decision, why)
  local add, remove = {}, nil
  if settings.auth_results then
    add[settings.auth_results_header] = {
      order = 0, value = settings.authserv_id .. '; ' .. ar_entry(out, decision, why),
    }
  end
  -- A header the delivery agent acts on must not come from outside (asked first: most
  -- messages have none, and an empty removal still costs the reply's conversion).
  if (task:get_header_count(settings.folder_header) or 0) > 0 then
    remove = { [settings.folder_header] = 0 }
  end
  if decision then
    if decision.action == 'folder' and decision.folder then
      add[settings.folder_header] = { order = 0, value = tostring(decision.folder) }
    elseif decision.action == 'tag' and type(decision.tag) == 'table' then
      local tag = decision.tag
      if tag.header and tag.value then
        add[tag.header] = { order = 0, value = tostring(tag.value) }
        remove = remove or {}
        remove[tag.header] = 0
      elseif tag.subject then
        -- The decoded Subject with the tag in front, encoded again (RFC 2047) when needed.
        local subject = tostring(tag.subject) .. ' ' .. (task:get_header('Subject') or '')
        if subject:find('[\128-\255]') and mime_header_encode then
          subject = mime_header_encode(subject)
        end
        add.Subject = { order = 0, value = subject }
        remove = remove or {}
        remove.Subject = 0
      end
    end
  end
  task:set_milter_reply({ add_headers = next(add) and add or nil, remove_headers = remove })
end

local function apply_decision(task, out, decision, symbol_key, options)
  local s = settings.symbols
  -- The DMARC symbol says what DMARC found. When the site let a failing message through
  -- (an override: trusted forwarder, local policy ...), it stays, with no weight, and
  -- names the override, as rspamd's module does with "local_policy".
  local weight = 1.0
  if decision and out.result == 'fail' and decision.action == 'accept'
      and decision.source ~= 'default' then
    weight = 0.0
    for _, r in ipairs(decision.reasons or E) do
      if r.type and #options < 16 then options[#options + 1] = r.type end
    end
  end
  task:insert_result(s[symbol_key], weight, options)
  if not decision then return end

  local action = decision.action
  if action == 'reject' or action == 'defer' then
    -- The MTA integration puts its own codes in front (rspamd's milter: 554 5.7.1 and
    -- 451 4.7.1): the message is the text, which names DMARC [POL-3].
    local message = tostring(decision.smtp_message or 'DMARC policy'):gsub('^%d%.%d+%.%d+%s+', '')
    task:set_pre_result(settings.actions[action], message, N, nil, nil, 'least')
    -- rspamd 3.4 can lose a `least` pre-result's message by the time it writes the reply
    -- (its score is raised to the action's threshold first): set the SMTP text explicitly.
    task:append_message(message, 'smtp_message')
  elseif action == 'score' then
    local score = tonumber(decision.score) or 0
    if score ~= 0 then
      task:insert_result(settings.score_symbol, score, out.author_domain or 'unknown')
    end
  end
end

--- The keys and arguments of an `EVAL script numkeys key... arg...` command, for
-- lua_redis.exec_redis_script (which sends EVALSHA of the same script).
local function script_parts(cmd)
  local nkeys = tonumber(cmd[3]) or 0
  local keys, args = {}, {}
  for i = 4, 3 + nkeys do keys[#keys + 1] = cmd[i] end
  for i = 4 + nkeys, #cmd do args[#args + 1] = cmd[i] end
  return keys, args
end
exports.script_parts = script_parts

--- The time the message arrived (rspamd's connection time), whole seconds.
local function arrival_time(task)
  return math.floor(task:get_date({ format = 'connect', gmt = true }) or os.time())
end

-- Report rows (lua/dmarc/report/rows.lua) through rspamd's redis client: the same commands
-- `report.commands` gives the CLI, the row script run with EVALSHA.
local function store_report_rows(task, verdict, input, ctx, decision)
  if not reporting_redis or not redis_healthy() then return end
  if settings.reporting.skip_rspamc and lua_util.is_rspamc_or_controller(task) then return end
  local rows, err = report.build_rows(verdict, input, ctx, decision, {
    time = arrival_time(task),
    reporter_address = settings.reporting.reporter_address,
  })
  if not rows then
    rspamd_logger.infox(task, '%s: no report row: %s', N, err)
    return
  end
  local opts = {
    prefix = settings.reporting.prefix,
    ttl = settings.reporting.ttl,
    max_rows = settings.reporting.max_rows,
  }
  for _, row in ipairs(rows) do
    local cmds, cerr = report.commands(row, opts)
    if not cmds then
      rspamd_logger.infox(task, '%s: report row for %s not stored: %s', N, row.policy_domain, cerr)
    else
      for _, cmd in ipairs(cmds) do
        local function done(rerr)
          if rerr then redis_failed(task, 'report row', rerr) end
        end
        if cmd[1] == 'EVAL' and cmd[2] == report.ROW_SCRIPT and row_script_id then
          local keys, args = script_parts(cmd)
          local ok, perr = pcall(lua_redis.exec_redis_script, row_script_id,
            { task = task, is_write = true, key = keys[1] }, done, keys, args)
          if not ok then done(tostring(perr)) end
        else
          local args = {}
          for i = 2, #cmd do args[#args + 1] = cmd[i] end
          redis_request(task, reporting_redis, cmd[2], true, cmd[1], args, done)
        end
      end
    end
  end
end

-- {==================================================================
-- Failure reports (RFC 9991) queued in Redis for `dmarc report send`
-- ===================================================================

--- Could this outcome call for a failure report under some fo [FAIL-2]? A DMARC failure
-- can; a pass only when a mechanism gave no aligned pass (fo=1), a DKIM signature failed
-- (fo=d) or SPF did not pass (fo=s). Only then are the records read: most passes cost
-- nothing more.
local function failure_report_possible(out, input)
  local result = out.result
  if result == 'fail' then return true end
  if result ~= 'pass' then return false end
  if not (out.spf_aligned and out.dkim_aligned) or #(out.flags or E) > 0 then return true end
  local spf = input.spf
  if spf and spf.result ~= 'pass' and spf.result ~= 'none' then return true end
  local dkim = input.dkim or E
  for i = 1, #dkim do
    local r = dkim[i].result
    if r ~= 'pass' and r ~= 'none' then return true end
  end
  return false
end
exports.failure_report_possible = failure_report_possible

--- The message's header block as received: the report's text/rfc822-headers part and the
-- loop guard read it (failure.lua bounds what it takes of it). '' when rspamd has none.
local function raw_headers(task)
  local ok, text = pcall(task.get_raw_headers, task)
  if not ok or text == nil then return '' end
  if type(text) ~= 'string' then text = tostring(text) end
  return text
end

-- Policy domains whose rate-limit budget is spent, with the window it is spent for: within
-- that window every further report would be refused by the queue script, so none is built
-- or sent (the shared counter only grows within a window [FAIL-7]). Per worker, bounded:
-- emptied when full.
local MAX_SPENT_DOMAINS = 10000
local spent_windows, spent_n = {}, 0

local function rate_window_now()
  return math.floor(os.time() / settings.failure_reports.rate_window)
end

local function budget_spent(domain)
  return spent_windows[domain] == rate_window_now()
end

local function mark_spent(domain)
  if not spent_windows[domain] then
    if spent_n >= MAX_SPENT_DOMAINS then spent_windows, spent_n = {}, 0 end
    spent_n = spent_n + 1
  end
  spent_windows[domain] = rate_window_now()
end

-- One queue command through lua_redis (EVALSHA of failure.QUEUE_SCRIPT, callback style):
-- the rate limit is counted and the reports added in one atomic step on the server. The
-- queue's key picks the server among several (lua_redis hashes it): it stays the same
-- while the counter's changes with every window, so a domain's queue and counters always
-- meet on one server.
local function send_queue_command(task, cmd, domain)
  local keys, args = script_parts(cmd)
  local function done(err, data)
    if err then return redis_failed(task, 'failure report', err) end
    local n, why = failure.queue_result(data)
    if why == 'rate_limited' then mark_spent(domain) end
    if n > 0 then
      rspamd_logger.infox(task, '%s: %s failure report(s) about %s queued', N, n, domain)
    elseif why == 'queue_full' then
      rspamd_logger.warnx(task, '%s: failure-report queue of %s is full: report dropped', N, domain)
    else
      rspamd_logger.infox(task, '%s: no failure report about %s: %s', N, domain, why)
    end
  end
  local ok, perr = pcall(lua_redis.exec_redis_script, queue_script_id,
    { task = task, is_write = true, key = keys[2] }, done, keys, args)
  if not ok then done(tostring(perr)) end
end

--- Queue the failure reports the message calls for: per author domain's verdict, when its
-- record has ruf and its fo asks for one [FAIL-2]; never about a report (the loop guard of
-- failure.lua). With Redis down or backing off no report is made: the rate limit is a
-- MUST [FAIL-7], and the scan goes on as if the feature were off.
local function queue_failure_reports(task, details, input, ctx, decision)
  if settings.failure_reports.skip_rspamc and lua_util.is_rspamc_or_controller(task) then return end
  local list = details.domains
  if type(list) ~= 'table' or #list == 0 then list = { details.verdict } end
  local headers, fctx
  for i = 1, math.min(#list, engine_limits.max_author_domains) do
    local v = list[i]
    -- The cheap test first: no header block is read for a record without ruf.
    if type(v) == 'table' and v.record and failure.should_report(v.record, v, input) then
      local domain = type(v.policy_domain) == 'string' and v.policy_domain:lower() or ''
      if budget_spent(domain) then
        lua_util.debugm(N, task, 'no failure report about %s: rate_limited (known)', domain)
      elseif not redis_healthy() then
        rspamd_logger.infox(task, '%s: no failure report about %s: redis unavailable', N, domain)
        return
      else
        headers = headers or raw_headers(task)
        if not fctx then
          local mail_from = ctx.mail_from or nil
          -- Mail from the aggregate reports' sender is a report too (failure.lua knows the
          -- failure reports' own address).
          local own = settings.reporting.reporter_address
          fctx = {
            ip = ctx.ip or nil, mail_from = mail_from, rcpt = ctx.rcpt or nil,
            arrival = arrival_time(task),
            queue_id = task.get_queue_id and task:get_queue_id() or nil,
            is_report = (type(own) == 'string' and type(mail_from) == 'string'
              and mail_from:lower():gsub('[<>]', '') == own:lower()) or nil,
          }
        end
        local ok, cmd, why = pcall(failure_reporter.queue_command, failure_reporter, v, input, fctx,
          decision, headers)
        if not ok then
          rspamd_logger.errx(task, '%s: failure report about %s: %s', N, domain, cmd)
        elseif cmd then
          send_queue_command(task, cmd, domain)
        else
          lua_util.debugm(N, task, 'no failure report about %s: %s', domain, why)
        end
      end
    end
  end
end

-- }==================================================================

-- ---------------------------------------------------------------------------
-- The check

local function finish(task, out, details, input, ctx, dns_errors, decision)
  local dns_error = dns_errors[1]
  local symbol_key, options = compat_result(out, input, dns_error and dns_error:match(': (.*)$'))
  apply_decision(task, out, decision, symbol_key, options)
  header_changes(task, out, decision, out.error)
  local pool = task:get_mempool()
  pool:set_variable('dmarc_result', out.result)
  if decision and decision.disposition then
    pool:set_variable('dmarc_disposition', decision.disposition)
  end
  if details then
    -- A fresh verdict table of the evaluation's own (the full one, with its record).
    local verdict = details.verdict
    verdict.domains = details.domains
    verdict.mode = input.mode
    store_report_rows(task, verdict, input, ctx, decision)
    if failure_reporter then queue_failure_reports(task, details, input, ctx, decision) end
  end
end

-- The site's decision with the store's answer (found; nil when the store failed: the site's
-- own rules and defaults apply and decision.warnings says so), then the symbols.
local function conclude(task, out, details, input, ctx, dns_errors, msg, found, store_error)
  local ok, decision = pcall(msg.decide, msg, found, store_error and { store_error = store_error })
  if not ok or type(decision) ~= 'table' then
    rspamd_logger.errx(task, '%s: site policy failed: %s', N, decision)
    decision = nil
  end
  local warnings = decision and decision.warnings or E
  for i = 1, #warnings do
    rspamd_logger.warnx(task, '%s: site policy: %s', N, warnings[i])
  end
  finish(task, out, details, input, ctx, dns_errors, decision)
end

local function decide(task, out, details, input, ctx, dns_errors)
  local verdict = out
  if site.hook then
    -- The hook sees plain tables of its own: a ctx it can iterate, a verdict it cannot
    -- change the symbols through.
    ctx_materialize(ctx)
    verdict = {}
    for k, v in pairs(out) do verdict[k] = v end
  end
  -- One setup of the site policy per message, for the lookups and the decision.
  local msg = site:prepare(verdict, ctx)
  -- Without an override store there is nothing to look up: the site's own overrides and
  -- recipient set members are in the script.
  local keys = E
  if overrides_redis then
    local okk, lk = pcall(msg.lookups, msg)
    if okk then
      keys = lk
    else
      rspamd_logger.errx(task, '%s: site policy lookups failed: %s', N, lk)
    end
  end
  if type(keys) ~= 'table' or #keys == 0 then
    return conclude(task, out, details, input, ctx, dns_errors, msg, E)
  end
  -- Entries (and their absence) seen within cache_ttl need no round trip.
  local found, missing = override_cache_get(keys)
  if #missing == 0 then
    return conclude(task, out, details, input, ctx, dns_errors, msg, found)
  end
  if not redis_healthy() then
    return conclude(task, out, details, input, ctx, dns_errors, msg, nil,
      'redis unavailable, backing off')
  end
  local st = store_mod.callback{
    prefix = settings.overrides.prefix,
    tag = settings.overrides.tag,
    mget = function(redis_keys, done)
      redis_request(task, overrides_redis, redis_keys[1], false, 'MGET', redis_keys,
        function(err, data) done(err, data) end)
    end,
  }
  st:get_many_async(missing, function(fetched, err)
    if not fetched then
      return conclude(task, out, details, input, ctx, dns_errors, msg, nil, err)
    end
    override_cache_put(missing, fetched)
    for k, v in pairs(fetched) do found[k] = v end
    conclude(task, out, details, input, ctx, dns_errors, msg, found)
  end)
end

--- Did SPF or DKIM pass (rspamd's failure text then names the alignment that was missing)?
local function auth_passed(input)
  if input.spf and input.spf.result == 'pass' then return true end
  local dkim = input.dkim or E
  for i = 1, #dkim do
    if dkim[i].result == 'pass' then return true end
  end
  return false
end

-- The evaluation's outcome: the core's light verdict in the shape of a `dmarc eval` output
-- object (lua/dmarc.lua), with only what this message needs on top: the applied record when
-- a failure's text names its alignment modes (or a site hook may read it), why a
-- temperror or permerror, and for report rows and failure reports the full verdicts (for
-- failure reports only when the outcome could call for one).
local function outcome_of(ev, input)
  local out = ev:outcome()
  local result = out.result
  if site.hook or (result == 'fail' and auth_passed(input)) then out.record = ev:record() end
  if result == 'temperror' or result == 'permerror' then out.error = ev:verdict(false).error end
  local details
  if reporting_redis or (failure_reporter and failure_report_possible(out, input)) then
    details = { verdict = ev:verdict(), domains = ev:domains() }
  end
  return out, details
end

-- Evaluations are reused (ev:reset()) rather than made for each message: a new one
-- allocates the core's evaluation state and a userdata with a finaliser. At most
-- EVAL_POOL_MAX wait here; more messages in flight than that get fresh ones, closed after.
local EVAL_POOL_MAX = 64
local eval_pool, eval_pool_n = {}, 0

local function eval_acquire()
  local n = eval_pool_n
  if n == 0 then return engine_ctx:eval(engine_cache) end
  local ev = eval_pool[n]
  eval_pool[n] = nil
  eval_pool_n = n - 1
  return ev
end

local function eval_release(ev)
  if eval_pool_n < EVAL_POOL_MAX then
    ev:reset()
    eval_pool_n = eval_pool_n + 1
    eval_pool[eval_pool_n] = ev
  else
    ev:close()
  end
end
exports.eval_pool_size = function() return eval_pool_n end

--- Run one evaluation: the core's query loop (lua/dmarc/receive/resolve.lua) with rspamd's
-- resolver. on_done(out, details) or on_done(nil, message), exactly once.
local function evaluate(input, resolver, on_done)
  local ev = eval_acquire()
  -- Bad values (a From field that does not parse, an SPF domain that is no domain) come
  -- back as nil, msg, code and are flagged by the core or left out: nothing to do here.
  local from = input.from
  for i = 1, math.min(#from, engine_limits.from_max_fields + 1) do ev:add_from(from[i]) end
  local spf = input.spf
  if spf then ev:add_spf(spf.domain, spf.result, spf.scope == 'helo') end
  local dkim = input.dkim
  for i = 1, math.min(#dkim, engine_limits.max_dkim) do
    local d = dkim[i]
    ev:add_dkim(d.domain, d.selector, d.result)
  end
  -- RFC 7489 pct sampling [POL-6]; pct is historic in RFC 9989 mode [POL-5], where the
  -- core never reads the roll.
  if sample_pct then ev:set_roll(dmarc.random_roll()) end
  ev:set_now(os.time())              -- expiry in the shared answer cache [DISC-11]
  resolve.run_async(ev, resolver, function(ok, err)
    local out, details
    if ok then
      ok, out, details = pcall(outcome_of, ev, input)
      if not ok then err = out end
    end
    eval_release(ev)
    if not ok then return on_done(nil, err) end
    return on_done(out, details)
  end)
end

-- Evaluate, decide and act; every failure is logged and contained.
local function run(task, input, ctx)
  local dns_errors = {}
  local started, serr = pcall(evaluate, input, make_resolver(task, dns_errors), function(out, details)
    if not out then
      -- An engine failure is never a reason to reject: log it, add nothing.
      rspamd_logger.errx(task, '%s: evaluation failed: %s', N, details)
      return
    end
    local ok, err = pcall(decide, task, out, details, input, ctx, dns_errors)
    if not ok then rspamd_logger.errx(task, '%s: %s', N, err) end
  end)
  if not started then rspamd_logger.errx(task, '%s: evaluation failed: %s', N, serr) end
end

local function dmarc_check(task)
  if lua_util.is_skip_local_or_authed(task, auth_local_conf) then
    rspamd_logger.infox(task, '%s: skip DMARC checks for local networks and authorized users', N)
    return
  end
  local env = ((task:get_from('smtp') or E)[1] or E)
  local spf_result = rspamd_spf_result(task)
  local input = {
    mode = settings.mode,
    from = from_values(task),
    spf = spf_of(task, env, spf_result),
    dkim = dkim_of(task, spf_result ~= nil),
  }
  local ctx = ctx_of(task)
  local function with_dkim()
    if input.dkim then return run(task, input, ctx) end
    dkim_fallback(task, function(results)
      input.dkim = results
      run(task, input, ctx)
    end)
  end
  if spf_result or not fallback_spf then return with_dkim() end
  spf_fallback(task, env, function(spf)
    input.spf = spf
    with_dkim()
  end)
end
exports.dmarc_check = dmarc_check

-- ---------------------------------------------------------------------------
-- Configuration. Any problem disables the module with one clear log line.

local function disable(why, ...)
  rspamd_logger.errx(rspamd_config, '%s: module disabled: ' .. why, N, ...)
  lua_util.disable_module(N, 'config')
  exports.disabled = string.format(why, ...)
  return exports
end

local function prepend_path(field, value)
  if type(value) == 'string' and value ~= '' and not package[field]:find(value, 1, true) then
    package[field] = value .. ';' .. package[field]
  end
end

local opts = rspamd_config:get_all_opt(N)
if not opts then
  -- No section: not configured (rspamd logs that the module is not enabled).
  return exports
end
settings = lua_util.override_defaults(settings, opts)

-- rspamd's own dmarc module registers the same symbols: both cannot run.
local builtin = rspamd_config:get_all_opt('dmarc')
if builtin and builtin.enabled ~= false then
  return disable('the built-in dmarc module is enabled; set `enabled = false;` in local.d/dmarc.conf')
end

prepend_path('path', settings.lua_path)
prepend_path('cpath', settings.lua_cpath)

local ok_dmarc, dmarc_or_err = pcall(require, 'dmarc')
if not ok_dmarc then
  return disable('cannot load the engine (require "dmarc"): %s; check lua_path and lua_cpath ' ..
    '(a module built for LuaJIT is needed)', dmarc_or_err)
end
dmarc = dmarc_or_err

if settings.mode ~= 'rfc9989' and settings.mode ~= 'rfc7489' then
  return disable('mode must be "rfc9989" or "rfc7489", not "%s"', settings.mode)
end
if type(settings.evidence_symbols) == 'string' then
  settings.evidence_symbols = { settings.evidence_symbols }
end
if type(settings.evidence_symbols) ~= 'table' then
  return disable('evidence_symbols must be a list of symbol names')
end
for _, sym in ipairs(settings.evidence_symbols) do
  if type(sym) ~= 'string' then return disable('evidence_symbols must be a list of symbol names') end
end
for _, k in ipairs({ 'cache_size', 'dns_cache_ttl', 'dns_negative_ttl', 'redis_backoff' }) do
  if type(settings[k]) ~= 'number' or settings[k] < 0 then
    return disable('%s must be a number >= 0', k)
  end
end
for _, k in ipairs({ 'cache_ttl', 'cache_size', 'timeout' }) do
  if type(settings.overrides[k]) ~= 'number' or settings.overrides[k] < 0 then
    return disable('overrides.%s must be a number >= 0', k)
  end
end
-- set_pre_result raises on an unknown action: refuse it here instead, on every message.
local known_actions = {
  reject = true, ['soft reject'] = true, ['rewrite subject'] = true, ['add header'] = true,
  greylist = true, ['no action'] = true, accept = true,
}
for name in pairs(rspamd_config:get_all_actions() or E) do known_actions[name] = true end
for _, k in ipairs({ 'reject', 'defer' }) do
  if not known_actions[settings.actions[k]] then
    return disable('actions.%s: unknown action "%s"', k, tostring(settings.actions[k]))
  end
end

local ok_engine, engine_or_err = pcall(dmarc.new, {
  mode = settings.mode,
  cache_size = math.floor(settings.cache_size),
  pct_as_testing = settings.pct_as_testing and true or false,
  psl_file = settings.psl_file,
  -- The site's `org` overrides need the real Org Domain of a failing author domain, also
  -- where discovery stopped at its own record (RFC 9989 4.10).
  failure_org_walk = true,
})
if not ok_engine then
  return disable('engine options: %s', engine_or_err)
end
engine = engine_or_err
engine_ctx = engine:ctx(settings.mode)
engine_cache = engine:get_cache()
engine_limits = dmarc.limits
resolve = dmarc.resolve

-- The site policy (lua/dmarc/site/policy.lua): the script, or the documented defaults.
-- Its messages go to rspamd's log.
local ok_log, dlog = pcall(require, 'dmarc.util.log')
local ok_pol, policy = pcall(require, 'dmarc.site.policy')
if not ok_pol or not ok_log then
  return disable('cannot load dmarc.site.policy: %s', ok_pol and dlog or policy)
end
local LOG_FUNCS = { debug = 'debugm', info = 'infox', warn = 'warnx', error = 'errx' }
local site_log = dlog.new{
  level = 'info',
  sink = function(level, msg)
    if level == 'debug' then
      lua_util.debugm(N, rspamd_config, '%s', msg)
    else
      rspamd_logger[LOG_FUNCS[level] or 'errx'](rspamd_config, '%s: %s', N, msg)
    end
  end,
}
local site_err
if settings.site_script then
  site, site_err = policy.load(settings.site_script, { log = site_log })
else
  site, site_err = policy.new({}, { log = site_log })
end
if not site then
  return disable('site script %s: %s', settings.site_script or '(defaults)', site_err)
end

if not settings.authserv_id then
  settings.authserv_id = rspamd_util.get_hostname() or 'localhost'
end
if not settings.authserv_id:find('^[%w%.%-_]+$') then
  return disable('authserv_id "%s" is not a token (RFC 8601 §2.2)', settings.authserv_id)
end

if settings.overrides.enabled then
  local ok_store, st = pcall(require, 'dmarc.site.store')
  if not ok_store then return disable('cannot load dmarc.site.store: %s', st) end
  store_mod = st
  local ok_key, kerr = pcall(store_mod.redis_key, 'domain:x', settings.overrides.prefix,
    settings.overrides.tag)
  if not ok_key then return disable('overrides: %s', kerr) end
  overrides_redis = lua_redis.parse_redis_server(N, settings.overrides)
  if not overrides_redis then
    rspamd_logger.infox(rspamd_config, '%s: no redis servers: overrides come from the site ' ..
      'script only', N)
  else
    overrides_redis.timeout = settings.overrides.timeout
  end
end

if settings.reporting.enabled then
  local ok_rep, rep = pcall(require, 'dmarc.report.rows')
  if not ok_rep then return disable('reporting: cannot load dmarc.report.rows: %s', rep) end
  report = rep
  if not report.valid_prefix(settings.reporting.prefix) then
    return disable('reporting: invalid prefix "%s"', tostring(settings.reporting.prefix))
  end
  reporting_redis = lua_redis.parse_redis_server(N, settings.reporting)
  if not reporting_redis then
    return disable('reporting is enabled but no redis servers are configured')
  end
  reporting_redis.timeout = settings.reporting.timeout
  row_script_id = lua_redis.add_redis_script(report.ROW_SCRIPT, reporting_redis)
end

if settings.failure_reports.enabled then
  local fs = settings.failure_reports
  local ok_fail, fail_or_err = pcall(require, 'dmarc.report.failure')
  if not ok_fail then return disable('failure_reports: cannot load dmarc.report.failure: %s', fail_or_err) end
  failure = fail_or_err
  report = report or require('dmarc.report.rows')
  -- The reporter's identity goes into every report's From and Reporting-MTA [FAIL-4].
  if type(fs.email) ~= 'string' or #fs.email > 254 or not fs.email:find('^[^%s<>@"]+@[%w%.%-_]+$') then
    return disable('failure_reports.email must be the reporter address (dmarc-reports@example.net)')
  end
  if type(fs.submitter) ~= 'string' or not report.valid_domain(fs.submitter) then
    return disable('failure_reports.submitter must be a lowercase domain name')
  end
  if fs.org_name ~= nil and type(fs.org_name) ~= 'string' then
    return disable('failure_reports.org_name must be a string')
  end
  if fs.redact_key ~= nil and (type(fs.redact_key) ~= 'string' or fs.redact_key == '') then
    return disable('failure_reports.redact_key must be a non-empty string')
  end
  if not report.valid_prefix(fs.prefix) then
    return disable('failure_reports: invalid prefix "%s"', tostring(fs.prefix))
  end
  for _, k in ipairs({ 'rate_limit', 'rate_window', 'queue_max', 'queue_ttl' }) do
    if type(fs[k]) ~= 'number' or fs[k] < 1 or fs[k] % 1 ~= 0 then
      return disable('failure_reports.%s must be a whole number >= 1', k)
    end
  end
  if type(fs.timeout) ~= 'number' or fs.timeout <= 0 then
    return disable('failure_reports.timeout must be a number > 0')
  end
  failure_redis = lua_redis.parse_redis_server(N, fs)
  if not failure_redis then
    -- No queue, no report: the rate limit lives in Redis [FAIL-7].
    return disable('failure_reports is enabled but no redis servers are configured')
  end
  failure_redis.timeout = fs.timeout
  queue_script_id = lua_redis.add_redis_script(failure.QUEUE_SCRIPT, failure_redis)
  local ok_new, fr = pcall(failure.new, {
    enabled = true,
    reporter = { org_name = fs.org_name or fs.submitter, email = fs.email, submitter = fs.submitter },
    prefix = fs.prefix, rate_limit = fs.rate_limit, rate_window = fs.rate_window,
    queue_max = fs.queue_max, queue_ttl = fs.queue_ttl,
    redact = true, redact_key = fs.redact_key, version = dmarc._VERSION,
  })
  if not ok_new then return disable('failure_reports: %s', fr) end
  failure_reporter = fr
end

if settings.fallback_dkim or settings.fallback_spf then
  local ok_io, io_or_err = pcall(require, 'dmarc.io')
  local ok_auth, auth_or_err = pcall(require, 'dmarc.receive.auth')
  if not ok_io or not ok_auth then
    local why = ok_io and auth_or_err or io_or_err
    if settings.fallback_dkim then
      return disable('fallback_dkim needs dmarc.io (libopendkim), which cannot be loaded: %s', why)
    end
    if opts.fallback_spf ~= nil then
      return disable('fallback_spf needs dmarc.io (libspf2), which cannot be loaded: %s', why)
    end
    -- On by default only: without dmarc.io, SPF comes from rspamd's spf module alone.
    rspamd_logger.infox(rspamd_config, '%s: no SPF fallback: dmarc.io cannot be loaded: %s', N, why)
  else
    dio, auth = io_or_err, auth_or_err
    fallback_dkim = settings.fallback_dkim and true or false
    fallback_spf = settings.fallback_spf and true or false
  end
end

auth_local_conf = { settings.check_local, settings.check_authed }
sample_pct = settings.mode == 'rfc7489'
for _, pair in ipairs(SPF_WORDS) do
  spf_symbols[#spf_symbols + 1] = { settings.symbols[pair[1]], pair[2] }
end

-- Register like rspamd's dmarc module: DMARC_CHECK (other modules depend on that name),
-- virtual children for the results, after SPF, DKIM and ARC.
local id = rspamd_config:register_symbol({
  name = 'DMARC_CHECK',
  type = 'callback',
  callback = dmarc_check,
})
rspamd_config:register_symbol({ name = 'DMARC_CALLBACK', type = 'virtual,skip', parent = id })
for _, key in ipairs({ 'allow', 'reject', 'quarantine', 'softfail', 'dnsfail', 'badpolicy', 'na' }) do
  rspamd_config:register_symbol({
    name = settings.symbols[key],
    parent = id,
    type = 'virtual',
    group = 'policies',
    groups = { 'dmarc' },
  })
end
rspamd_config:register_symbol({
  name = settings.score_symbol,
  parent = id,
  type = 'virtual',
  score = settings.score_weight,
  group = 'policies',
  groups = { 'dmarc' },
  description = 'DMARC site policy: score treatment',
})
rspamd_config:register_dependency('DMARC_CHECK', settings.symbols.spf_allow)
rspamd_config:register_dependency('DMARC_CHECK', settings.symbols.dkim_allow)
rspamd_config:register_dependency('DMARC_CHECK', 'ARC_CHECK')
for _, sym in ipairs(settings.evidence_symbols) do
  rspamd_config:register_dependency('DMARC_CHECK', sym)
end

rspamd_logger.infox(rspamd_config, '%s: enabled, mode %s, site %s, overrides %s, reporting %s, ' ..
  'failure reports %s, fallbacks: spf %s, dkim %s', N, settings.mode,
  settings.site_script or 'defaults', overrides_redis and 'redis' or 'none',
  reporting_redis and 'redis' or 'off', failure_reporter and 'redis' or 'off',
  fallback_spf and 'on' or 'off', fallback_dkim and 'on' or 'off')

exports.settings = settings
return exports
