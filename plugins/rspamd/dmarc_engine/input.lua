--[[
dmarc_engine/input.lua: what the engine and the site policy read from the task. The From
fields, rspamd's SPF, DKIM and ARC results and the envelope; the resolver adapter that
answers the engine's questions with rspamd's asynchronous resolver; and, when rspamd did not
check SPF or DKIM itself, the engine's own checks over that resolver (callbacks only: the
coroutine-style calls crash rspamd 3.4 workers under load, rspamd issue #4902).

Loaded by dmarc_engine.lua with the plugin's state P (config.lua).
]]

local P = ...

local rspamd_logger = require 'rspamd_logger'
local lua_util = require 'lua_util'

local N = P.N
local E = {}

local M = {}

-- Bounds on what one message can make the plugin do (everything else is bounded by the
-- engine's own limits, dmarc.limits).
local MAX_FROM_FIELDS = 16       -- From fields passed on (the engine reads 8 and flags more)
local MAX_DKIM_RESULTS = 64      -- DKIM results passed on (the engine reads 32)
local MAX_RCPT = 100             -- envelope recipients passed to the site policy
local MAX_ARC_SETS = 50          -- RFC 8617 §4.2.1: instance values are 1..50
local MAX_FALLBACK_SIGS = 8      -- DKIM signatures the fallback verifies (keys fetched)
local MAX_TXT_STRING = 255       -- RFC 1035 §3.3: one character-string
local MAX_SPF_RRS = 64           -- records of one answer handed to libspf2

-- ---------------------------------------------------------------------------
-- Pure helpers (no rspamd objects), exported for the unit tests.

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
M.DKIM_WORDS = DKIM_WORDS

--- The SPF symbol keys in the order they are looked for, with their RFC 8601 words.
local SPF_WORDS = {
  { 'spf_allow', 'pass' }, { 'spf_fail', 'fail' }, { 'spf_softfail', 'softfail' },
  { 'spf_neutral', 'neutral' }, { 'spf_tempfail', 'temperror' },
  { 'spf_permfail', 'permerror' }, { 'spf_na', 'none' },
}
M.SPF_WORDS = SPF_WORDS

--- rspamd resolver error strings (librdns) to the engine's rcodes (RFC 9989 §4.10).
-- NXDOMAIN and NODATA stay distinct: the np existence test needs NXDOMAIN.
local function rcode_of(err, results)
  if not err then
    if type(results) == 'table' and #results > 0 then return 'noerror' end
    return 'nodata'
  end
  if err == 'no records with this name' then return 'nxdomain' end
  if err == 'requested record is not found' then return 'nodata' end
  if err == 'query timed out' then return 'timeout' end
  -- 'server fail', 'query refused', 'network error' ...: transient.
  return 'servfail'
end
M.rcode_of = rcode_of

-- rspamd's resolver methods by question type (others go through resolver:resolve(type)).
local RESOLVE_METHODS = { TXT = 'resolve_txt', A = 'resolve_a', MX = 'resolve_mx' }

--- The list identifier of a List-Id value (RFC 2919 §2: `phrase <id>`), lowercased.
local function list_id_of(value)
  if type(value) ~= 'string' then return nil end
  local id = value:match('<([^<>]+)>') or value
  id = id:match('^%s*(.-)%s*$')
  if id == '' or #id > 255 or id:find('[%s%c]') then return nil end
  return id:lower()
end
M.list_id_of = list_id_of

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
M.arc_sealers = arc_sealers

--- The client IP that ARC set @i recorded (smtp.remote-ip of its ARC-Authentication-Results),
-- for the report comment of an ARC-based override.
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
M.arc_remote_ip = arc_remote_ip

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
M.dkim_key_names = dkim_key_names

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
M.zone_txt_record = zone_txt_record

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
M.ptr_address = ptr_address

-- ---------------------------------------------------------------------------
-- The task's identities and rspamd's results

local settings = P.settings

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

-- rspamd's SPF symbol names with their RFC 8601 words, in the order they are looked for.
local spf_symbols = {}
for _, pair in ipairs(SPF_WORDS) do
  spf_symbols[#spf_symbols + 1] = { settings.symbols[pair[1]], pair[2] }
end

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
-- (MAIL FROM, or HELO for a null reverse-path, RFC 7208 §2.4; RFC 9989 §4.4).
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
  if P.fallback_dkim and not rspamd_checked_dkim(task, spf_ran) then return nil end
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

--- The evaluation input of a message: its From fields, and SPF and DKIM as rspamd found
-- them (input.spf / input.dkim nil: rspamd did not check, the fallbacks may).
function M.read(task)
  local env = ((task:get_from('smtp') or E)[1] or E)
  local spf_result = rspamd_spf_result(task)
  local input = {
    mode = settings.mode,
    from = from_values(task),
    spf = spf_of(task, env, spf_result),
    dkim = dkim_of(task, spf_result ~= nil),
  }
  return input, env, spf_result ~= nil
end

-- {==================================================================
-- The DKIM fallback: libopendkim through dmarc.io, over keys fetched asynchronously.
-- ===================================================================

-- Verifies the signatures once every key lookup answered; results in the input's shape.
local function verify_signatures(task, records, faults)
  local out = {}
  local ok, err = pcall(function()
    local r, rerr = P.dio.resolver{ zone_text = table.concat(records, '\n') .. '\n',
                                   faults = faults, cache = 0 }
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
  return out
end

--- Verify every DKIM signature of the task; cb(results) in the input's shape
-- ({result=, domain=, selector=, human_result=}), exactly once.
function M.dkim_fallback(task, cb)
  local values = {}
  for _, hdr in ipairs(task:get_header_full('DKIM-Signature') or E) do
    values[#values + 1] = hdr.value or ''
    if #values > MAX_FALLBACK_SIGS then break end
  end
  local names = dkim_key_names(values)
  if #names == 0 then return cb({}) end
  local records, faults, pending = {}, nil, #names
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
      if pending == 0 then cb(verify_signatures(task, records, faults)) end
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

--- The records of an answer in the presentation form dmarc.io's spf_checker takes.
local function spf_records(qtype, results)
  local records = {}
  for i = 1, math.min(#results, MAX_SPF_RRS) do
    local rr = results[i]
    if qtype == 'MX' then
      records[i] = tostring(rr.priority or 0) .. ' ' .. tostring(rr.name)
    else
      records[i] = tostring(rr)
    end
  end
  return records
end

--- The question callback of auth.spf_async over rspamd's resolver.
local function spf_resolver(task)
  local resolver = task:get_resolver()
  return function(name, qtype, cb)
    local function on_answer(_, _, results, err)
      local rcode = rcode_of(err, results)
      cb(rcode, rcode == 'noerror' and spf_records(qtype, results) or nil)
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

local function spf_checker_acquire()
  if spf_pool_n == 0 then return P.dio.spf_checker{ receiver = settings.authserv_id } end
  local checker = spf_pool[spf_pool_n]
  spf_pool[spf_pool_n] = nil
  spf_pool_n = spf_pool_n - 1
  return checker
end

local function spf_checker_release(checker)
  checker:clear()
  if spf_pool_n < SPF_POOL_MAX then
    spf_pool_n = spf_pool_n + 1
    spf_pool[spf_pool_n] = checker
  else
    checker:close()
  end
end

--- SPF for the message as check_host() finds it (RFC 7208 §2.3, §2.4: MAIL FROM, or HELO
-- for a null reverse-path); cb(spf input) or cb(nil) when there is nothing to check (no
-- client address), exactly once.
function M.spf_fallback(task, env, cb)
  local ip = task:get_from_ip()
  if not (ip and ip:is_valid()) then return cb(nil) end
  local checker = spf_checker_acquire()
  local args = { ip = ip:to_string(), helo = task:get_helo(), mail_from = env.addr or '' }
  P.auth.spf_async(checker, args, spf_resolver(task), function(res, err)
    spf_checker_release(checker)
    if not res then
      rspamd_logger.warnx(task, '%s: SPF fallback: %s', N, err)
      return cb(nil)
    end
    lua_util.debugm(N, task, 'SPF fallback: %s for %s (%s)', res.result, res.domain, res.reason)
    if res.domain == '' then return cb(nil) end
    -- The record evaluated, whole (its TXT strings joined, RFC 7208 §3.3), for the failure
    -- reports' SPF-DNS (RFC 6591 §3.2).
    cb({ result = res.result, domain = res.domain:lower(), scope = res.scope,
         human_result = res.reason, record = res.record })
  end)
end

-- }==================================================================

-- {==================================================================
-- The site policy's view of the message
-- ===================================================================

--- rspamd's ARC verdict (its arc module) and the sealers of the chain.
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

-- The site policy's view of the message (the site policy module's ctx), each field read
-- from the task on first use: most decisions read none of it (a pass, p=none, a failure at
-- a site without overrides), and every field costs calls into rspamd. A field that comes
-- out nil is kept as false (neither is a value the policy or the report rows tell apart),
-- so it is not read twice.
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

function M.ctx_of(task)
  return setmetatable({ [CTX_TASK] = task }, LAZY_CTX)
end

--- Every field read, the task let go: a plain table, as a site hook may iterate it.
function M.ctx_materialize(ctx)
  if not rawget(ctx, CTX_TASK) then return ctx end
  for key in pairs(CTX_FIELDS) do
    if ctx[key] == false then ctx[key] = nil end
  end
  ctx[CTX_TASK] = nil
  return setmetatable(ctx, nil)
end

-- }==================================================================

--- The resolver adapter: the engine's resolve_async(name, qtype, cb) over rspamd's callback
-- resolver. `forced`: DMARC lookups are never dropped by rspamd's per-task DNS limit, as its
-- own module does. Resolver errors are collected in @dns_errors (the DMARC_DNSFAIL text).
function M.make_resolver(task, dns_errors)
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

return M
