--- Message authentication around the DMARC engine: SPF, DKIM, the ARC verdict of a trusted
-- host, DMARC itself, and the Authentication-Results header that reports them (RFC 8601).
--
--   local auth = require 'dmarc.receive.auth'
--   local dio = require 'dmarc.io'
--   local r = dio.resolver{ zone = 'examples/example.zone' }
--   local res, err, code = auth.check(r, message_text, {
--     ip = '192.0.2.1', helo = 'mail.example.com', mail_from = 'a@example.com',
--     authserv_id = 'mx.example.org', trusted_authserv_ids = { 'border.example.org' },
--     mode = 'rfc9989' })
--   print(auth.format_ar(res, 'mx.example.org'))
--
-- SPF and DKIM run through dmarc.io (libspf2, libopendkim) over one resolver; DMARC runs
-- through dmarc.evaluate with the same resolver. No ARC library is packaged, so the ARC
-- verdict is taken from an Authentication-Results field whose authserv-id is configured as
-- trusted, never from any other one [AR-5] [ARC-2].
-- @module dmarc.receive.auth

local dmarc = require 'dmarc'
local message = require 'dmarc.receive.message'

local M = {}

--- Bounds on the authentication headers read from a message (all untrusted).
M.MAX_AR_FIELDS = 32        -- Authentication-Results fields looked at
M.MAX_RESULTS = 64          -- resinfo items in one field
M.MAX_PROPS = 32            -- properties of one resinfo
M.MAX_ARC_SETS = 50         -- RFC 8617 §4.2.1: instances 1..50 [ARC-1]

local AUTH_WORDS = {
  none = true, pass = true, fail = true, softfail = true, neutral = true, policy = true,
  temperror = true, permerror = true,
}

local function fail(msg, code)
  return nil, msg, code
end

-- {==================================================================
-- Authentication-Results (RFC 8601 §2.2)
-- ===================================================================

-- One `value` (RFC 2045 token or quoted-string) or pvalue at s[i..]: returns value, next i.
local function read_value(s, i)
  if s:sub(i, i) == '"' then
    local j = i + 1
    while j <= #s do
      local c = s:sub(j, j)
      if c == '\\' then
        j = j + 2
      elseif c == '"' then
        return message.unquote(s:sub(i, j)), j + 1
      else
        j = j + 1
      end
    end
    return nil, i
  end
  local v = s:match('^[^%s;"]+', i)
  if not v then return nil, i end
  return v, i + #v
end

local function skip_ws(s, i)
  local _, e = s:find('^[%s]*', i)
  return e + 1
end

-- key [CFWS] "=" [CFWS] value at s[i..]; returns key, value, next i (or nil).
local function read_pair(s, i)
  local key = s:match('^[%w%._/-]+', i)
  if not key then return nil end
  i = skip_ws(s, i + #key)
  if s:sub(i, i) ~= '=' then return nil end
  i = skip_ws(s, i + 1)
  local value, j = read_value(s, i)
  if value == nil then return nil end
  return key, value, j
end

-- The ARC instance tag `i=N;` at s[i..] (RFC 8617 §4.1.1): instance, next i; or nil, msg.
local function read_arc_instance(s, i)
  local n, j = s:match('^i[%s]*=[%s]*(%d+)[%s]*;()', i)
  if not n then return nil, 'no ARC instance tag' end
  -- RFC 8617 §4.2.1: instances run from 1 to 50 (a longer number is no instance at all).
  if #n > 2 or tonumber(n) < 1 or tonumber(n) > M.MAX_ARC_SETS then
    return nil, 'ARC instance out of range'
  end
  return tonumber(n), skip_ws(s, j)
end

-- The properties of one resinfo at s[i..], up to the next ";" (RFC 8601 §2.2:
-- ptype "." property "=" pvalue; `reason` is kept apart): next i, or nil, msg.
local function read_props(s, i, res)
  local nprops = 0
  while i <= #s and s:sub(i, i) ~= ';' do
    local key, v, n = read_pair(s, i)
    if not key then return nil, 'bad property at "' .. s:sub(i, i + 30) .. '"' end
    key = key:lower()
    if key == 'reason' then
      res.reason = v
    else
      nprops = nprops + 1
      if nprops > M.MAX_PROPS then return nil, 'too many properties' end
      if res.props[key] == nil then res.props[key] = v end
    end
    i = skip_ws(s, n)
  end
  return i
end

-- One resinfo (method "=" result, then properties) at s[i..]: res, next i; or nil, msg.
local function read_resinfo(s, i)
  local method, result, k = read_pair(s, i)
  if not method then return nil, 'bad resinfo at "' .. s:sub(i, i + 30) .. '"' end
  -- RFC 8601 §2.2: a result is a Keyword (letters, digits, hyphens), never a pvalue.
  if not result:find('^[%w%-]+$') then
    return nil, 'bad result at "' .. s:sub(i, i + 30) .. '"'
  end
  local res = { method = method:lower():gsub('/.*$', ''), result = result:lower(), props = {} }
  local next_i, err = read_props(s, skip_ws(s, k), res)
  if not next_i then return nil, err end
  return res, next_i
end

-- The no-result "none" (RFC 8601 §2.2) at s[i..], allowed only before any result.
local function is_no_result(s, i, nresults)
  return nresults == 0 and s:match('^none', i) ~= nil
      and (i + 4 > #s or s:sub(i + 4, i + 4):find('[%s;]') ~= nil)
end

--- Parse the value of one Authentication-Results (or, with @arc, ARC-Authentication-Results)
-- field.
-- @param value {string} the raw field value
-- @param arc {boolean} the value starts with the ARC instance tag `i=N;` (RFC 8617 §4.1.1)
-- @return {table} {authserv_id=, version=, instance= (ARC), results={{method=, result=,
--   reason=, props={['header.d']=...}}, ...}}, or nil, msg, 'syntax'
function M.parse_ar(value, arc)
  if type(value) ~= 'string' then error('dmarc.receive.auth.parse_ar: value must be a string', 2) end
  local s, err = message.strip_comments(message.unfold(value))
  if not s then return fail(err, 'syntax') end
  local out = { results = {} }
  local i = skip_ws(s, 1)
  if arc then
    out.instance, i = read_arc_instance(s, i)
    if not out.instance then return fail(i, 'syntax') end
  end
  local id, j = read_value(s, i)
  if not id or id == '' then return fail('no authserv-id', 'syntax') end
  out.authserv_id = id:lower()
  i = skip_ws(s, j)
  local version = s:match('^%d+', i)
  if version then
    out.version = tonumber(version)
    i = skip_ws(s, i + #version)
  end
  -- Bounded by M.MAX_RESULTS results of at most M.MAX_PROPS properties each.
  while i <= #s do
    if s:sub(i, i) ~= ';' then return fail('expected ";" after ' .. s:sub(1, i - 1), 'syntax') end
    i = skip_ws(s, i + 1)
    if i > #s then break end -- a trailing ";" is tolerated
    if #out.results >= M.MAX_RESULTS then return fail('too many results', 'syntax') end
    if is_no_result(s, i, #out.results) then
      i = skip_ws(s, i + 4)
    else
      local res, k = read_resinfo(s, i)
      if not res then return fail(k, 'syntax') end
      out.results[#out.results + 1] = res
      i = k
    end
  end
  return out
end

-- }==================================================================

-- {==================================================================
-- ARC: the verdict of a trusted host [ARC-2], the sealers of the message [ARC-3]
-- ===================================================================

local function id_set(list)
  local set = {}
  for _, id in ipairs(list or {}) do set[id:lower()] = true end
  return set
end

--- The ARC sealers of a message from its ARC-Seal fields (RFC 8617 §4.1.3): {i=, d=, s=, cv=},
-- newest instance first; malformed seals and duplicate instances are skipped.
function M.arc_sealers(msg)
  local out, seen = {}, {}
  local seals = msg:get('arc-seal')
  for k = 1, math.min(#seals, M.MAX_ARC_SETS) do
    local tags = message.parse_tags(seals[k])
    local i = tags and tonumber(tags.i)
    if i and i >= 1 and i <= M.MAX_ARC_SETS and i % 1 == 0 and not seen[i]
        and tags.d and tags.d ~= '' and tags.s and tags.s ~= '' then
      seen[i] = true
      out[#out + 1] = { i = i, d = tags.d:lower(), s = tags.s, cv = tags.cv and tags.cv:lower() }
    end
  end
  table.sort(out, function(a, b) return a.i > b.i end)
  return out
end

-- The ARC-Authentication-Results of the message, by instance.
local function arc_aars(msg)
  local out = {}
  local fields = msg:get('arc-authentication-results')
  for k = 1, math.min(#fields, M.MAX_ARC_SETS) do
    local ar = M.parse_ar(fields[k], true)
    if ar and ar.instance and ar.instance >= 1 and ar.instance <= M.MAX_ARC_SETS
        and not out[ar.instance] then
      out[ar.instance] = ar
    end
  end
  return out
end

local function prop_ip(res)
  if not res then return nil end
  return res.props['smtp.remote-ip'] or res.props['smtp.client-ip'] or res.props['policy.iprev']
end

--- Read the Authentication-Results fields of a message: the ARC verdict of the topmost trusted
-- one, and the fields that were ignored and why [AR-5].
-- @param msg {Message}
-- @param opts {table} authserv_id (ours: a field claiming it came from outside and is
--   ignored), trusted_authserv_ids (array)
-- @return arc (nil when no trusted field carries an arc result), ignored (array of
--   {authserv_id=, why=})
function M.arc_verdict(msg, opts)
  opts = opts or {}
  local own = opts.authserv_id and opts.authserv_id:lower() or nil
  local trusted = id_set(opts.trusted_authserv_ids)
  local ignored = {}
  local verdict
  local fields = msg:get('authentication-results')
  for k = 1, math.min(#fields, M.MAX_AR_FIELDS) do
    local ar, err = M.parse_ar(fields[k])
    if not ar then
      ignored[#ignored + 1] = { why = 'malformed: ' .. err }
    elseif own and ar.authserv_id == own then
      -- [AR-5]: our own id on an incoming field is a forgery (or stale); never used.
      ignored[#ignored + 1] = { authserv_id = ar.authserv_id, why = 'claims our authserv-id' }
    elseif not trusted[ar.authserv_id] then
      ignored[#ignored + 1] = { authserv_id = ar.authserv_id, why = 'authserv-id not trusted' }
    elseif not verdict then
      for _, res in ipairs(ar.results) do
        if res.method == 'arc' then
          verdict = { ar = ar, res = res }
          break
        end
      end
    end
  end
  if #fields > M.MAX_AR_FIELDS then
    ignored[#ignored + 1] = { why = 'more than ' .. M.MAX_AR_FIELDS .. ' fields; the rest unread' }
  end
  if not verdict then return nil, ignored end
  local res = verdict.res
  local sealers = M.arc_sealers(msg)
  local aars = arc_aars(msg)
  local oldest_pass = tonumber(res.props['header.oldest-pass'])
  -- remote-ip of the oldest instance ([ARC-3] `remote-ip[1]=`), else what the trusted host saw.
  local oldest = sealers[#sealers]
  local remote_ip = prop_ip(oldest and aars[oldest.i] and aars[oldest.i].results[1])
  if oldest and aars[oldest.i] then
    for _, r in ipairs(aars[oldest.i].results) do
      remote_ip = remote_ip or prop_ip(r)
    end
  end
  remote_ip = remote_ip or prop_ip(res)
  local aar = {}
  for i, a in pairs(aars) do
    aar[#aar + 1] = { i = i, authserv_id = a.authserv_id, results = a.results }
  end
  table.sort(aar, function(a, b) return a.i > b.i end)
  local sealer_list = {}
  for _, s in ipairs(sealers) do sealer_list[#sealer_list + 1] = { i = s.i, d = s.d, s = s.s } end
  return {
    result = res.result,
    sealers = sealer_list,
    oldest_pass = oldest_pass,
    remote_ip = remote_ip,
    authserv_id = verdict.ar.authserv_id,
    aar = aar,
  }, ignored
end

-- }==================================================================

-- {==================================================================
-- The whole check
-- ===================================================================

local MODES = { rfc9989 = true, rfc7489 = true }

-- The resolve function dmarc.evaluate is handed for a resolver, made once per resolver rather
-- than once per message. Weak both ways (LuaJIT has no ephemerons): a dropped resolver is
-- never held by its function, and a collected function is simply made again.
local resolve_fns = setmetatable({}, { __mode = 'kv' })

local function resolve_fn(resolver)
  local fn = resolve_fns[resolver]
  if not fn then
    fn = function(name, qtype) return resolver:resolve(name, qtype) end
    resolve_fns[resolver] = fn
  end
  return fn
end

-- The evaluation's details (every domain's verdict and record, per-signature alignment)
-- feed report rows [AGG-6]; a check that writes none can skip building them.
local EVAL_OPTS = { details = true }
local EVAL_OPTS_LIGHT = { details = false }

-- SPF [ALN-1]: the MAIL FROM identity, or HELO for the null reverse-path; the HELO identity
-- too when both are known (RFC 7208 §2.3), for the record. Sets out.spf and out.helo.
-- @return the evaluation's SPF input (nil: none), or false, msg, code
local function check_spf(resolver, opts, out)
  local ip, helo = opts.ip, opts.helo
  if not ip then return nil end
  local spf, serr, scode = resolver:spf{ ip = ip, helo = helo, mail_from = opts.mail_from }
  if not spf then return false, serr, scode end
  out.spf = spf
  if helo and spf.scope == 'mfrom' then
    out.helo = resolver:spf{ ip = ip, helo = helo, identity = 'helo' }
  end
  if spf.domain ~= '' then
    return { result = spf.result, domain = spf.domain, scope = spf.scope }
  end
  return nil
end

-- The evaluation's DKIM input: every signature with a domain, up to the core's bound.
local function dkim_input_of(signatures)
  local dkim_input = {}
  for i = 1, math.min(#signatures, dmarc.limits.max_dkim) do
    local s = signatures[i]
    if s.domain ~= '' then
      dkim_input[#dkim_input + 1] = { result = s.result, domain = s.domain, selector = s.selector }
    end
  end
  return dkim_input
end

-- DMARC on the engine the caller gave (or dmarc.evaluate's own).
local function evaluate(input, opts)
  local eval_opts = opts.details == false and EVAL_OPTS_LIGHT or EVAL_OPTS
  if opts.engine then return opts.engine:evaluate(input, eval_opts) end
  return dmarc.evaluate(input, eval_opts)
end

--- Authenticate a message and evaluate DMARC.
-- @param resolver {dmarc.io.resolver}
-- @param text {string} the message
-- @param opts {table} ip, helo, mail_from (nil: not known; '' or '<>': null reverse-path),
--   authserv_id, trusted_authserv_ids, mode ('rfc9989' | 'rfc7489'), roll (0..99),
--   engine (a dmarc.new engine to evaluate with, e.g. one with an answer cache kept across
--   the messages of a long-running scanner; default: dmarc.evaluate's own engine),
--   details (default true; false: no `details` in the result, for a check that writes
--   no report rows)
-- @return {table} {message=, spf=, helo=, dkim=, arc=, ignored_ar=, from=, dmarc=, details=},
--   or nil, msg, code ('syntax' | 'limit': the message; 'invalid': an option)
function M.check(resolver, text, opts)
  opts = opts or {}
  if opts.mode ~= nil and not MODES[opts.mode] then
    return fail('mode must be rfc9989 or rfc7489', 'invalid')
  end
  local msg, err, code = message.parse(text)
  if not msg then return nil, err, code end
  local out = { message = msg, from = msg:get('from') }
  local spf_input
  spf_input, err, code = check_spf(resolver, opts, out)
  if spf_input == false then return nil, err, code end
  -- DKIM: every signature [EVAL-5].
  local dkim
  dkim, err, code = resolver:dkim(text)
  if not dkim then return nil, err, code end
  out.dkim = dkim
  out.arc, out.ignored_ar = M.arc_verdict(msg, opts)
  local input = {
    mode = opts.mode,
    from = out.from,
    roll = opts.roll,
    resolve = resolve_fn(resolver),
    spf = spf_input,
    dkim = dkim_input_of(dkim.signatures),
  }
  local result, details = evaluate(input, opts)
  if not result then return nil, details, 'invalid' end
  out.dmarc, out.details = result, details
  return out
end

--- The ctx a site policy (dmarc.site.policy) decides with, from a check and the SMTP facts.
function M.policy_ctx(res, opts)
  opts = opts or {}
  local list_id = res.message:first('list-id')
  return {
    ip = opts.ip,
    helo = opts.helo,
    mail_from = opts.mail_from,
    rcpt = opts.rcpt,
    list_id = list_id and message.unfold(list_id) or nil,
    arc = res.arc,
  }
end

-- }==================================================================

-- {==================================================================
-- Authentication-Results output (RFC 8601)
-- ===================================================================

-- A value as an RFC 2045 token when it is one, else a quoted-string. Letters, digits, dots,
-- hyphens and underscores (every domain and almost every selector) are checked first with a
-- short class; anything else gets the full tspecials test.
local function format_value(v)
  if v:find('^[%w%.%-_]+$') then return v end
  if v ~= '' and not v:find('[%c%s%(%)<>@,;:\\"/%[%]%?=]') then return v end
  return '"' .. v:gsub('[\\"]', '\\%0'):gsub('[%c]', ' ') .. '"'
end

-- Formatted values seen before: domains, selectors and algorithms repeat from message to
-- message. Bounded (values come from messages): emptied when full.
local MAX_VALUE_MEMO = 1024
local value_memo, value_memo_size = {}, 0

local function value(v)
  v = tostring(v)
  local out = value_memo[v]
  if out then return out end
  out = format_value(v)
  if value_memo_size >= MAX_VALUE_MEMO then value_memo, value_memo_size = {}, 0 end
  value_memo[v] = out
  value_memo_size = value_memo_size + 1
  return out
end

-- A comment: parentheses and backslashes inside escaped (RFC 5322 §3.2.2).
local function comment(text)
  text = tostring(text)
  if not text:find('[\\()%c]') then return '(' .. text .. ')' end
  return '(' .. text:gsub('[\\()]', '\\%0'):gsub('[%c]', ' ') .. ')'
end

local function word(w)
  return AUTH_WORDS[w] and w or 'permerror'
end

-- The dmarc resinfo: result, the notes comment, header.from and policy.dmarc [AR-3].
local function dmarc_item(d, decision)
  local notes, n = {}, 0
  if d.policy then n = n + 1; notes[n] = 'p=' .. d.policy end
  if d.applied then n = n + 1; notes[n] = 'dis=' .. d.applied end
  if d.reason then n = n + 1; notes[n] = 'reason=' .. d.reason end
  local final = d.applied
  if decision and decision.disposition and d.applied then
    final = decision.disposition == 'pass' and 'none' or decision.disposition
    if final ~= d.applied then
      n = n + 1
      notes[n] = 'applied=' .. final
      for _, r in ipairs(decision.reasons or {}) do
        if r.type ~= d.reason then
          n = n + 1
          notes[n] = 'override=' .. r.type .. (r.comment and (': ' .. r.comment) or '')
        end
      end
    end
  end
  for _, f in ipairs(d.flags or {}) do n = n + 1; notes[n] = f end
  local parts, k = { 'dmarc=', d.result or 'none' }, 2
  if n > 0 then k = k + 2; parts[k - 1] = ' '; parts[k] = comment(table.concat(notes, ' ')) end
  if d.author_domain then k = k + 2; parts[k - 1] = ' header.from='; parts[k] = value(d.author_domain) end
  if final then k = k + 2; parts[k - 1] = ' policy.dmarc='; parts[k] = final end
  return table.concat(parts, '', 1, k)
end

-- One dkim resinfo per signature [AR-2].
local function dkim_item(s)
  local parts, k = { 'dkim=', word(s.result) }, 2
  if s.result ~= 'pass' or s.body_truncated or s.unsigned_from then
    k = k + 2; parts[k - 1] = ' '; parts[k] = comment(s.reason)
  end
  if s.domain ~= '' then k = k + 2; parts[k - 1] = ' header.d='; parts[k] = value(s.domain) end
  if s.selector ~= '' then k = k + 2; parts[k - 1] = ' header.s='; parts[k] = value(s.selector) end
  if s.algorithm ~= '' then k = k + 2; parts[k - 1] = ' header.a='; parts[k] = value(s.algorithm) end
  if s.b ~= '' then k = k + 2; parts[k - 1] = ' header.b='; parts[k] = value(s.b) end
  return table.concat(parts, '', 1, k)
end

local NO_SIGNATURES = {}

--- The Authentication-Results field for a check [AR-1]..[AR-4] [AR-6].
-- @param res {table} from M.check
-- @param authserv_id {string}
-- @param decision {table} optional: the site decision (dmarc.site.policy), whose disposition is
--   what policy.dmarc reports, with the evaluated one and the override reasons as a comment
-- @return {string} the whole field, folded, without the final CRLF
function M.format_ar(res, authserv_id, decision)
  local items, n = { 'Authentication-Results: ', authserv_id }, 2
  local spf = res.spf
  if spf then
    local item = 'spf=' .. word(spf.result)
    if spf.result ~= 'pass' and spf.reason and spf.reason ~= '' then
      item = item .. ' ' .. comment(spf.reason)
    end
    if spf.domain ~= '' then
      item = item .. (spf.scope == 'helo' and ' smtp.helo=' or ' smtp.mailfrom=') .. value(spf.domain)
    end
    n = n + 2; items[n - 1] = ';\r\n\t'; items[n] = item
  else
    n = n + 2; items[n - 1] = ';\r\n\t'; items[n] = 'spf=none ' .. comment('no client address given')
  end
  local helo = res.helo
  if helo and helo.domain ~= '' then
    n = n + 2; items[n - 1] = ';\r\n\t'
    items[n] = 'spf=' .. word(helo.result) .. ' smtp.helo=' .. value(helo.domain)
  end
  local sigs = res.dkim and res.dkim.signatures or NO_SIGNATURES
  if #sigs == 0 then
    n = n + 2; items[n - 1] = ';\r\n\t'; items[n] = 'dkim=none'
  end
  for i = 1, #sigs do
    n = n + 2; items[n - 1] = ';\r\n\t'; items[n] = dkim_item(sigs[i])
  end
  if res.dmarc then
    n = n + 2; items[n - 1] = ';\r\n\t'; items[n] = dmarc_item(res.dmarc, decision)
  end
  return table.concat(items, '', 1, n)
end

-- }==================================================================

-- {==================================================================
-- SPF over a callback-style resolver (sans-I/O, no coroutines)
-- ===================================================================

--- check_host() of RFC 7208 without blocking: a dmarc.io spf_checker answers libspf2
-- from the answers fetched so far; the questions it could not answer are fetched with
-- @resolve_async, all of one round at once, and the check runs again. Each round gets at
-- least one question further, so a check takes at most dio.limits.spf_max_rounds rounds
-- (the record, then per DNS-querying term its question and the addresses of its mx or ptr
-- names, RFC 7208 §4.6.4); one more is a temperror.
-- @param checker {spf_checker} dio.spf_checker{...}; its answers are cleared first
-- @param args {table} ip, helo, mail_from, identity (as resolver:spf)
-- @param resolve_async {function} (name, qtype, cb): cb(rcode, records) once, now or
--   later; records in presentation form (TXT text, addresses, "PREF NAME", names)
-- @param on_done {function} (result) with the resolver:spf result table, or
--   (nil, message, code) for an unusable ip; exactly once
-- @param max_rounds {number} optional, at most dio.limits.spf_max_rounds
function M.spf_async(checker, args, resolve_async, on_done, max_rounds)
  if type(resolve_async) ~= 'function' then error('spf_async: resolve_async must be a function', 2) end
  if type(on_done) ~= 'function' then error('spf_async: on_done must be a function', 2) end
  local limit = max_rounds or require('dmarc.io').limits.spf_max_rounds
  local rounds, finished = 0, false
  local function finish(res, err, code)
    if finished then return end
    finished = true
    on_done(res, err, code)
  end
  -- A question whose answer could not be added (a resolver error, or records that cannot
  -- be of their type) counts as failed: temperror for the term that asked it (RFC 7208 §5).
  local function failed(q)
    checker:answer(q.name, q.type, 'servfail')
  end
  checker:clear()
  local round
  round = function()
    rounds = rounds + 1
    local ok, res, err, code = pcall(checker.check, checker, args)
    if not ok then return finish(nil, tostring(res), 'error') end
    if not res then return finish(nil, err, code) end
    local questions = res.questions
    if not questions then return finish(res) end
    if rounds >= limit then
      res.questions = nil
      res.reason = 'no answer within ' .. limit .. ' rounds of DNS questions'
      return finish(res)
    end
    -- Every question of the round at once; the next round when the last answer is in.
    local waiting, in_round = #questions, true
    local function answered()
      waiting = waiting - 1
      if waiting == 0 and not in_round then round() end
    end
    for i = 1, #questions do
      local q, called = questions[i], false
      local function cb(rcode, records)
        if called or finished then return end
        called = true
        local ok_call, added = pcall(checker.answer, checker, q.name, q.type, rcode or 'servfail',
          records)
        if not ok_call or not added then failed(q) end
        answered()
      end
      if not pcall(resolve_async, q.name, q.type, cb) and not called then
        called = true
        failed(q)
        answered()
      end
    end
    in_round = false
    -- Every answer came at once: the next round from here (a tail call, bounded by limit).
    if waiting == 0 then return round() end
  end
  round()
end

-- }==================================================================

return M
