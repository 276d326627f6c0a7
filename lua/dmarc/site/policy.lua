--- Site policy: what a DMARC verdict *does* at this site.
--
-- A site script (a Lua file returning a table; docs/site-policy.md) says how each outcome is
-- treated, which overrides apply, and may hook every decision. The same script runs in the
-- CLI and in the rspamd plugin. Deciding is split from fetching so that both a blocking store
-- and a callback-style one (rspamd's lua_redis) work without coroutines:
--
--   local site = assert(policy.load('site.lua', { log = logger }))
--   local keys = site:lookups(verdict, ctx)          -- store keys the decision may need
--   local found, err = st:get_many(keys)             -- one round trip (or get_many_async)
--   local decision = site:decide(verdict, ctx, found, { store_error = err })
--   -- or, in one call: site:evaluate(verdict, ctx, st) / site:evaluate_async(..., cb)
--   -- or with the per-message setup done once (a scanner):
--   local m = site:prepare(verdict, ctx); local keys = m:lookups(); m:decide(found, opts)
--
-- ctx fields are read when a decision needs them, not before (a pass reads none), so a
-- scanner may fill ctx lazily (an __index metamethod).
--
-- verdict: the table of dmarc.evaluate (result, author_domain, org_domain, policy, applied,
-- reason, ...). ctx, from the scanner: ip, helo, mail_from, rcpt (array), list_id, evidence
-- (other grounds to reject, [POL-3]), arc = {result=, sealers={{i=, d=, s=}, ...} newest
-- first, oldest_pass=, remote_ip=}, and anything else (handed to the hook untouched).
--
-- A decision: action (reject|defer|folder|score|tag|accept), smtp_code and smtp_message
-- (reject, defer), folder, score, tag ({header=, value=} or {subject=}), disposition (for
-- reports, [OVR-2]: none|pass|quarantine|reject, what was actually done), reasons (array of
-- {type=, comment=}), source ('default'|'site'|'override'|'hook'), outcome (the outcome whose
-- treatment was used), warnings (array of strings), per_rcpt (address -> decision, only when
-- recipients are treated differently).
-- @module dmarc.site.policy
local store = require 'dmarc.site.store'
local sandbox = require 'dmarc.site.sandbox'
local dlog = require 'dmarc.util.log'

local M = {}

local E = {} -- an empty table that is never written to

-- {==================================================================
-- Vocabulary and limits
-- ===================================================================

M.ACTIONS = { reject = true, defer = true, folder = true, score = true, tag = true, accept = true }
-- "Strictest" when recipients disagree: reject > defer > folder > score > tag > accept.
local ACTION_RANK = { accept = 1, tag = 2, score = 3, folder = 4, defer = 5, reject = 6 }

--- Outcomes a site script treats. pass: DMARC pass; reject / quarantine / none: DMARC fail
-- with that applied policy (after t= and pct); temperror, permerror; no_policy: result none;
-- bad_from: a From field that could not be read (it does not parse strictly and names no one
-- domain unambiguously, RFC 9989 §11.5; flag from_unread), and the floor for a message with
-- such a field or one read leniently (flag from_lenient).
M.OUTCOMES = {
  pass = true, reject = true, quarantine = true, none = true,
  temperror = true, permerror = true, no_policy = true, bad_from = true,
}

--- RFC 9990 reason types an override may carry [OVR-2].
M.OVERRIDE_REASONS = { local_policy = true, trusted_forwarder = true, mailing_list = true, other = true }
-- A hook may also pass on the verdict's own reasons.
local REPORT_REASONS = {
  local_policy = true, trusted_forwarder = true, mailing_list = true, other = true,
  policy_test_mode = true, sampled_out = true,
}
M.DISPOSITIONS = { none = true, pass = true, quarantine = true, reject = true }
local LEVEL = { none = 0, quarantine = 1, reject = 2 }

M.MAX_RCPT = 100            -- recipients looked at per message; the rest get the message decision
M.MAX_ARC_SEALERS = 50      -- ARC instances run 1..50 [ARC-1]
M.MAX_REASONS = 8
M.MAX_COMMENT_LEN = 256
M.MAX_TEXT_LEN = 200        -- SMTP reply text; RFC 5321 §4.5.3.1.5 allows 512 per line
M.MAX_FOLDER_LEN = 255
M.MAX_HEADER_NAME_LEN = 64
M.MAX_HEADER_VALUE_LEN = 255
M.MAX_SUBJECT_TAG_LEN = 64
M.MAX_SCORE = 1000
M.MAX_OVERRIDES = 10000     -- entries in one site script
M.MAX_SETS = 32             -- recipient sets in one site script
M.MAX_SCRIPT_BYTES = 1024 * 1024
M.MAX_COPY_DEPTH = 6
M.DEFAULT_HOOK_BUDGET = 100000     -- VM instructions per decide() hook call
M.DEFAULT_LOAD_BUDGET = 10000000   -- VM instructions to run the script itself

local POL3_COMMENT = 'p=reject without other evidence handled as quarantine (RFC 9989 7.4)'

-- }==================================================================

-- {==================================================================
-- Treatments
-- ===================================================================

local function is_text(s, max)
  return type(s) == 'string' and s ~= '' and #s <= max and not s:find('[%c\128-\255]')
end

local function bad(msg)
  return nil, msg, 'invalid'
end

local TREATMENT_FIELDS = {
  action = true, folder = true, score = true, header = true, value = true, subject = true,
  code = true, message = true,
}

local DSL_BARE -- filled below: DSL functions usable without a call (`accept`)

-- A treatment written as a string ('reject', 'folder:Junk', 'score:5') or a bare DSL word,
-- as the table it stands for; a table is returned as it is.
local function treatment_table(spec)
  if type(spec) == 'function' and DSL_BARE[spec] then spec = DSL_BARE[spec]() end
  if type(spec) ~= 'string' then return spec end
  local action, arg = spec:match('^(%a+):(.*)$')
  if action == 'folder' then return { action = 'folder', folder = arg } end
  if action == 'score' then return { action = 'score', score = tonumber(arg) } end
  if action == nil then return { action = spec } end
  return bad('unknown treatment "' .. spec .. '"')
end

-- The fields of each action, checked into the treatment @t: true, or nil, message, code.
local ACTION_FIELDS = {}

function ACTION_FIELDS.folder(t, spec)
  if not is_text(spec.folder, M.MAX_FOLDER_LEN) then return bad('folder needs a folder name') end
  t.folder = spec.folder
  return true
end

function ACTION_FIELDS.score(t, spec)
  local n = spec.score
  if type(n) ~= 'number' or n ~= n or n < -M.MAX_SCORE or n > M.MAX_SCORE then
    return bad('score needs a number between -' .. M.MAX_SCORE .. ' and ' .. M.MAX_SCORE)
  end
  t.score = n
  return true
end

function ACTION_FIELDS.tag(t, spec)
  if spec.subject ~= nil then
    if spec.header ~= nil then return bad('tag takes a header or a subject, not both') end
    if not is_text(spec.subject, M.MAX_SUBJECT_TAG_LEN) then
      return bad('tag subject must be short text')
    end
    t.subject = spec.subject
    return true
  end
  if type(spec.header) ~= 'string' or #spec.header > M.MAX_HEADER_NAME_LEN
      or not spec.header:find('^[%w][%w-]*$') then
    return bad('tag needs a header name (letters, digits, "-") or a subject')
  end
  if not is_text(spec.value, M.MAX_HEADER_VALUE_LEN) then return bad('tag header needs a value') end
  t.header, t.value = spec.header, spec.value
  return true
end

-- reject and defer: an SMTP reply code of their class and a one-line text.
local function reply_fields(t, spec)
  local action = t.action
  local class = action == 'reject' and 5 or 4
  if spec.code ~= nil then
    if type(spec.code) ~= 'number' or spec.code % 1 ~= 0 or math.floor(spec.code / 100) ~= class then
      return bad(action .. ' code must be ' .. class .. 'xx')
    end
    t.code = spec.code
  end
  if spec.message ~= nil then
    if not is_text(spec.message, M.MAX_TEXT_LEN) then
      return bad(action .. ' message must be one line of text')
    end
    -- [POL-3]: a reject done because of DMARC SHOULD say so in its text.
    if action == 'reject' and not spec.message:find('DMARC', 1, true) then
      return bad('reject message must contain "DMARC" (RFC 9989 7.4)')
    end
    t.message = spec.message
  end
  return true
end
ACTION_FIELDS.reject = reply_fields
ACTION_FIELDS.defer = reply_fields

--- Validates a treatment and returns a clean copy, or nil, msg, 'invalid'.
-- Forms: 'accept' | 'reject' | 'defer' | 'folder:NAME' | 'score:N' | a table
-- {action=, folder=, score=, header=, value=, subject=, code=, message=} | a DSL value
-- (accept, reject(msg), defer(msg), folder(name), score(n), tag(header, value),
-- tag{subject=}).
function M.treatment(spec)
  local err, code
  spec, err, code = treatment_table(spec)
  if err then return nil, err, code end
  if type(spec) ~= 'table' then return bad('a treatment must be a string or a table') end
  for k in pairs(spec) do
    if not TREATMENT_FIELDS[k] then return bad('unknown treatment field "' .. tostring(k) .. '"') end
  end
  local action = spec.action
  if not M.ACTIONS[action] then
    return bad('treatment action must be reject, defer, folder, score, tag or accept, not "' ..
      tostring(action) .. '"')
  end
  local t = { action = action }
  local fields = ACTION_FIELDS[action]
  if fields then
    local ok, ferr, fcode = fields(t, spec)
    if not ok then return nil, ferr, fcode end
  end
  return t
end

-- DSL helpers: what a site script writes instead of tables. Module-level functions, so
-- M.treatment recognises the bare ones.
local DSL = {}
function DSL.accept() return { action = 'accept' } end
function DSL.reject(spec)
  if type(spec) == 'table' then
    return { action = 'reject', code = spec.code, message = spec.message }
  end
  return { action = 'reject', message = spec }
end
function DSL.defer(spec)
  if type(spec) == 'table' then
    return { action = 'defer', code = spec.code, message = spec.message }
  end
  return { action = 'defer', message = spec }
end
function DSL.folder(name) return { action = 'folder', folder = name } end
function DSL.score(n) return { action = 'score', score = n } end
function DSL.tag(header, value)
  if type(header) == 'table' then
    return { action = 'tag', header = header.header, value = header.value, subject = header.subject }
  end
  return { action = 'tag', header = header, value = value }
end
DSL_BARE = { [DSL.accept] = DSL.accept, [DSL.reject] = DSL.reject, [DSL.defer] = DSL.defer }

--- Built-in treatments (docs/site-policy.md, "Defaults").
M.DEFAULTS = {
  pass = { action = 'accept' },
  none = { action = 'accept' },                        -- [POL-1]: p=none changes nothing
  quarantine = { action = 'folder', folder = 'Junk' },
  reject = { action = 'reject' },                      -- only when reject is allowed [POL-3]
  -- RFC 9989 §7.2 leaves it to us: accept, tagged, rather than delay every message of a
  -- domain whose DNS (or ours) is having trouble. `treat = { temperror = defer }` switches.
  temperror = { action = 'tag', header = 'X-DMARC-Status', value = 'temperror' },
  permerror = { action = 'accept' },                   -- no usable policy [OPEN-4]
  no_policy = { action = 'accept' },                   -- [DISC-9]
  -- RFC 9989 §11.5: a From no parser can read is how a spoof slips past DMARC, while mail
  -- readers still show an address; never accepted by default. `treat = { bad_from = ... }`.
  bad_from = { action = 'folder', folder = 'Junk' },
}

local BAD_FROM_COMMENT = 'From field not read strictly (RFC 9989 11.5)'

-- The two From flags the site decision reads (the evaluation's output array, or nothing):
-- from_lenient, from_unread. A scan rather than a set: this runs for every message.
local function from_flags(verdict)
  local lenient, unread = false, false
  local flags = verdict.flags
  if type(flags) == 'table' then
    for i = 1, #flags do
      local f = flags[i]
      if f == 'from_lenient' then lenient = true elseif f == 'from_unread' then unread = true end
    end
  end
  return lenient, unread
end

-- }==================================================================

-- {==================================================================
-- Overrides
-- ===================================================================

local OVERRIDE_KINDS = { 'domain', 'org', 'rcpt', 'rcpt_domain', 'ip', 'list', 'arc' }
-- Every kind (as a set): what may match once the store has answered with entries.
local ALL_KINDS = {}
for _, k in ipairs(OVERRIDE_KINDS) do ALL_KINDS[k] = true end
local DEFAULT_REASON = { list = 'mailing_list' }   -- others: local_policy ([ARC-3] for arc)

--- Validates an override entry (script or store): {at_most=, treat=, reason=, comment=}.
-- at_most ('none' | 'quarantine') caps the outcome; treat replaces the treatment; with
-- neither, at_most = 'none'. strict: refuse unknown fields (site scripts; store entries may
-- carry bookkeeping such as `added`).
function M.override(spec, kind, strict)
  if type(spec) ~= 'table' then return bad('an override must be a table') end
  if strict then
    for k in pairs(spec) do
      if k ~= 'at_most' and k ~= 'treat' and k ~= 'reason' and k ~= 'comment' and k ~= kind then
        return bad('unknown override field "' .. tostring(k) .. '"')
      end
    end
  end
  local o = {}
  if spec.treat ~= nil then
    if spec.at_most ~= nil then return bad('an override takes at_most or treat, not both') end
    local t, err = M.treatment(spec.treat)
    if not t then return bad(err) end
    o.treat = t
  else
    local cap = spec.at_most == nil and 'none' or spec.at_most
    if cap ~= 'none' and cap ~= 'quarantine' then return bad('at_most must be none or quarantine') end
    o.at_most = cap
  end
  o.reason = spec.reason == nil and (DEFAULT_REASON[kind] or 'local_policy') or spec.reason
  if not M.OVERRIDE_REASONS[o.reason] then
    return bad('reason must be local_policy, trusted_forwarder, mailing_list or other')
  end
  if spec.comment ~= nil then
    if not is_text(spec.comment, M.MAX_COMMENT_LEN) then return bad('comment must be one line of text') end
    o.comment = spec.comment
  end
  if o.reason == 'other' and not o.comment then return bad('reason "other" needs a comment (RFC 9990)') end
  return o
end

-- }==================================================================

-- {==================================================================
-- Running site code: the sandbox (dmarc.site.sandbox)
-- ===================================================================

local pack = table.pack or function(...) return { n = select('#', ...), ... } end

local function script_name(chunkname)
  if type(chunkname) == 'string' and chunkname:sub(1, 1) == '@' then return chunkname:sub(2) end
  return chunkname or 'site'
end

local function where_of(info, fallback)
  if not info then return fallback end
  local src = info.source or ''
  src = src:sub(1, 1) == '@' and src:sub(2) or (info.short_src or fallback)
  return src .. ':' .. tostring(info.currentline or 0)
end

-- Site code runs in dmarc.site.sandbox: a restricted environment (no io, os, require, load,
-- debug ...) with the DSL, under bounds on Lua instructions, on the work the string and
-- table functions do in C, and on memory (docs/site-policy.md, "Bounds"). A site's hook
-- runs in its script's environment; a hook given as a Lua function (M.new) in a default one.
local function make_env(logger, name)
  return sandbox.env(logger, name, DSL)
end

-- }==================================================================

-- {==================================================================
-- Site construction
-- ===================================================================

local Site = {}
Site.__index = Site

local SITE_FIELDS = {
  unconditional_reject = true, treat = true, recipient_sets = true, overrides = true,
  trusted_arc_sealers = true, decide = true, hook_budget = true,
}

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  return keys
end

local function check_treat_table(t, what, allow)
  local out = {}
  if type(t) ~= 'table' then return bad(what .. ' must be a table of outcome = treatment') end
  for _, outcome in ipairs(sorted_keys(t)) do
    if not (allow and allow[outcome]) then
      if not M.OUTCOMES[outcome] then
        return bad(what .. ': unknown outcome "' .. tostring(outcome) ..
          '" (pass, reject, quarantine, none, temperror, permerror, no_policy)')
      end
      local tr, err = M.treatment(t[outcome])
      if not tr then return bad(what .. '.' .. outcome .. ': ' .. err) end
      out[outcome] = tr
    end
  end
  return out
end

local function add_static(static, key, entry, what)
  if static[key] ~= nil then return bad(what .. ': a second entry for ' .. key) end
  static[key] = entry
  return true
end

-- Turns a site table into a Site; nil, msg, 'invalid' on anything unexpected (typos too).
-- The switches of the site table: unconditional_reject, treat.
local function site_switches(site, config)
  -- [OPEN-6]: the one-line switch from the [POL-3] default to unconditional reject.
  if config.unconditional_reject ~= nil then
    if type(config.unconditional_reject) ~= 'boolean' then
      return bad('unconditional_reject must be true or false')
    end
    site.unconditional_reject = config.unconditional_reject
  end
  if config.treat ~= nil then
    local t, err = check_treat_table(config.treat, 'treat')
    if not t then return bad(err) end
    site.treat = t
  end
  return true
end

-- recipient_sets: each set's treatment, and the members written in the script.
local function site_recipient_sets(site, config)
  if config.recipient_sets ~= nil then
    if type(config.recipient_sets) ~= 'table' then return bad('recipient_sets must be a table') end
    local names = sorted_keys(config.recipient_sets)
    if #names > M.MAX_SETS then return bad('more than ' .. M.MAX_SETS .. ' recipient sets') end
    for _, raw_name in ipairs(names) do
      local set_name, err = store.normalize_set_name(raw_name)
      if not set_name then return bad('recipient_sets: ' .. err) end
      local spec = config.recipient_sets[raw_name]
      local t
      t, err = check_treat_table(spec, 'recipient_sets.' .. set_name, { members = true })
      if not t then return bad(err) end
      if next(t) == nil then return bad('recipient_sets.' .. set_name .. ' treats no outcome') end
      site.sets[set_name] = { treat = t }
      site.set_names[#site.set_names + 1] = set_name
      -- Members written in the script; Redis adds more (`dmarc override add rcpt X --set NAME`).
      local members = spec.members or {}
      if type(members) ~= 'table' or #members > M.MAX_OVERRIDES then
        return bad('recipient_sets.' .. set_name .. '.members must be an array')
      end
      for _, m in ipairs(members) do
        local kind = (type(m) == 'string' and m:find('@', 1, true)) and 'rcpt' or 'rcpt_domain'
        local key, kerr = store.key(kind, m, set_name)
        if not key then return bad('recipient_sets.' .. set_name .. '.members: ' .. kerr) end
        local ok, aerr = add_static(site.static, key, {}, 'recipient_sets')
        if not ok then return bad(aerr) end
      end
    end
    table.sort(site.set_names)
  end
  return true
end

-- overrides: the entries written in the script, each under its store key.
local function site_overrides(site, config)
  if config.overrides ~= nil then
    if type(config.overrides) ~= 'table' or #config.overrides > M.MAX_OVERRIDES then
      return bad('overrides must be an array of at most ' .. M.MAX_OVERRIDES .. ' entries')
    end
    for i, spec in ipairs(config.overrides) do
      local what = 'overrides[' .. i .. ']'
      if type(spec) ~= 'table' then return bad(what .. ' must be a table') end
      local kind
      for _, k in ipairs(OVERRIDE_KINDS) do
        if spec[k] ~= nil then
          if kind then return bad(what .. ' names both ' .. kind .. ' and ' .. k) end
          kind = k
        end
      end
      if not kind then return bad(what .. ' needs one of domain, org, rcpt, rcpt_domain, ip, list, arc') end
      local key, err = store.key(kind, spec[kind])
      if not key then return bad(what .. ': ' .. err) end
      local entry
      entry, err = M.override(spec, kind, true)
      if not entry then return bad(what .. ': ' .. err) end
      local ok, aerr = add_static(site.static, key, entry, what)
      if not ok then return bad(aerr) end
    end
  end
  return true
end

-- trusted_arc_sealers: an override per sealer domain.
local function site_arc_sealers(site, config)
  if config.trusted_arc_sealers ~= nil then
    if type(config.trusted_arc_sealers) ~= 'table' or #config.trusted_arc_sealers > M.MAX_OVERRIDES then
      return bad('trusted_arc_sealers must be an array of domains')
    end
    for _, d in ipairs(config.trusted_arc_sealers) do
      local key, err = store.key('arc', d)
      if not key then return bad('trusted_arc_sealers: ' .. err) end
      -- [ARC-3]: an ARC-based override is reported as local_policy.
      local ok, aerr = add_static(site.static, key, { at_most = 'none', reason = 'local_policy' },
        'trusted_arc_sealers')
      if not ok then return bad(aerr) end
    end
  end
  return true
end

-- decide (the hook) and its instruction budget.
local function site_hook(site, config)
  if config.decide ~= nil then
    if type(config.decide) ~= 'function' then return bad('decide must be a function') end
    -- LuaJIT only counts instructions of interpreted code (dmarc.site.sandbox).
    if type(jit) == 'table' and jit.off then jit.off(config.decide, true) end
    site.hook = config.decide
  end
  if config.hook_budget ~= nil then
    local b = config.hook_budget
    if type(b) ~= 'number' or b < 1000 or b > 1e9 or b % 1 ~= 0 then
      return bad('hook_budget must be a whole number of instructions between 1000 and 1e9')
    end
    site.budget = b
  end
  return true
end

-- Which override kinds the script has entries of: without a store answer, only those can
-- match, and the keys of the others are never built.
local function static_kinds(static)
  local kinds = {}
  for key in pairs(static) do
    local kind = key:match('^([%w_]+):')
    if ALL_KINDS[kind] then kinds[kind] = true end
  end
  return kinds
end

-- The steps of a site table, in order; each gives true or nil, message, code.
local SITE_STEPS = { site_switches, site_recipient_sets, site_overrides, site_arc_sealers, site_hook }

local function build_site(config, opts, name, logger)
  for k in pairs(config) do
    if not SITE_FIELDS[k] then
      return bad('unknown field "' .. tostring(k) .. '" in the site table')
    end
  end
  local site = setmetatable({
    name = name,
    log = logger,
    unconditional_reject = false,
    treat = {},
    sets = {},
    set_names = {},
    static = {},
    hook = nil,
    budget = opts.hook_budget or M.DEFAULT_HOOK_BUDGET,
  }, Site)

  for _, step in ipairs(SITE_STEPS) do
    local ok, err, code = step(site, config)
    if not ok then return nil, err, code end
  end
  site.static_kinds = static_kinds(site.static)
  return site
end

local function check_opts(opts)
  opts = opts or {}
  if type(opts) ~= 'table' then error('dmarc.site.policy: opts must be a table', 3) end
  if opts.log ~= nil and not dlog.is_logger(opts.log) then
    error('dmarc.site.policy: opts.log must be a dmarc.util.log logger', 3)
  end
  return opts, opts.log or dlog.new()
end

--- Site from a Lua table (tests, or a host that builds its configuration itself). Hooks
-- given this way run under the budget too, but on LuaJIT their loops may be compiled and
-- escape it: prefer policy.load for untrusted code.
-- @return site, or nil, msg, 'invalid'
function M.new(config, opts)
  local logger
  opts, logger = check_opts(opts)
  if type(config) ~= 'table' then return bad('a site configuration must be a table') end
  local name = opts.name or 'site'
  local site, err = build_site(config, opts, name, logger)
  if not site then return bad(name .. ': ' .. err) end
  return site
end

-- The loaders of this Lua, taken when this module loads. Under Lua 5.1 and LuaJIT the text
-- is compiled with loadstring and given its environment with setfenv rather than through
-- the global `load`: a host may have replaced that one (rspamd's lualib/lupa.lua defines a
-- 5.1 `load` that drops the chunk name and the mode, so errors would read
-- `[string "..."]:3` and a precompiled chunk would be accepted).
local loadstring_51, setfenv_51 = rawget(_G, 'loadstring'), rawget(_G, 'setfenv')
local load_52 = load

-- Compiles script text (never a precompiled chunk) named @chunkname, with @env as its
-- globals. nil, message on a syntax error.
local function load_text(source, chunkname, env)
  -- A precompiled chunk starts with ESC (Lua and LuaJIT bytecode alike): it could do
  -- what the environment forbids.
  if source:byte(1) == 27 then
    return nil, script_name(chunkname) .. ': a precompiled chunk is not a site script'
  end
  if loadstring_51 and setfenv_51 then
    local chunk, err = loadstring_51(source, chunkname)
    if not chunk then return nil, err end
    return setfenv_51(chunk, env)
  end
  return load_52(source, chunkname, 't', env)
end

--- Site from script text. chunkname as for load ('@path' names a file in messages).
-- @return site, or nil, msg, code ('syntax' | 'runtime' | 'budget' | 'invalid')
function M.load_string(source, chunkname, opts)
  local logger
  opts, logger = check_opts(opts)
  if type(source) ~= 'string' then error('dmarc.site.policy.load_string: source must be a string', 2) end
  local name = script_name(chunkname)
  local env = make_env(logger, name)
  local chunk, err = load_text(source, chunkname or '=site', env)
  if not chunk then return nil, err, 'syntax' end
  if type(jit) == 'table' and jit.off then jit.off(chunk, true) end
  local res = pack(sandbox.call(env, opts.load_budget or M.DEFAULT_LOAD_BUDGET, name, chunk))
  if not res[1] then return nil, res[2], res[3] end
  if type(res[2]) ~= 'table' then return bad(name .. ': the site script must return a table') end
  local site
  site, err = build_site(res[2], opts, name, logger)
  if not site then return bad(name .. ': ' .. err) end
  site.from_script = true
  site.env = env
  return site
end

--- Site from a script file (docs/site-policy.md). A syntax error, an error while the script
-- runs, or a table that does not validate gives nil, 'file:line: ...', code: the CLI and
-- the plugin refuse to start.
-- @param path file name
-- @param opts {log=, hook_budget=, load_budget=}
-- @return site, or nil, msg, code ('io' | 'limit' | 'syntax' | 'runtime' | 'budget' | 'invalid')
function M.load(path, opts)
  if type(path) ~= 'string' then error('dmarc.site.policy.load: path must be a string', 2) end
  local f, err = io.open(path, 'rb')
  if not f then return nil, 'cannot open site script: ' .. tostring(err), 'io' end
  local source = f:read(M.MAX_SCRIPT_BYTES + 1)
  f:close()
  if source and #source > M.MAX_SCRIPT_BYTES then
    return nil, path .. ': larger than ' .. M.MAX_SCRIPT_BYTES .. ' bytes', 'limit'
  end
  return M.load_string(source or '', '@' .. path, opts)
end

-- }==================================================================

-- {==================================================================
-- Deciding
-- ===================================================================

-- Memos of the normalisations messages repeat (the same recipients, author domains and
-- sending IPs come back all day; a scanner decides for message after message): pure
-- functions of one string, at most MEMO_MAX results each, emptied when full. A result is
-- shared between callers, who only read it (the IP prefix keys are an array).
local MEMO_MAX = 4096

local function memo(fn)
  local cache, n = {}, 0
  return function(key)
    if type(key) ~= 'string' then return fn(key) end
    local v = cache[key]
    if v == nil then
      v = fn(key) or false
      if n >= MEMO_MAX then cache, n = {}, 0 end
      cache[key] = v
      n = n + 1
    end
    return v or nil
  end
end

local normalize_domain = memo(store.normalize_domain)
local normalize_address = memo(store.normalize_address)
local ip_keys = memo(store.ip_keys)

local function outcome_of(verdict, from_unread)
  local r = verdict.result
  if r == 'pass' then return 'pass' end
  if r == 'fail' then
    local a = verdict.applied
    if a == 'reject' or a == 'quarantine' then return a end
    return 'none'
  end
  if r == 'temperror' or r == 'permerror' then return r end
  -- A From field that could not be read at all (RFC 9989 §11.5).
  if from_unread then return 'bad_from' end
  return 'no_policy'
end

local function has_evidence(ctx)
  local e = ctx.evidence
  if e == nil or e == false or e == '' then return false end
  if type(e) == 'table' then return next(e) ~= nil end
  return true
end

local function rcpt_list(ctx)
  local raw = ctx.rcpt
  if type(raw) == 'string' then raw = { raw } end
  if type(raw) ~= 'table' then return {}, false end
  local out, seen = {}, {}
  local truncated = #raw > M.MAX_RCPT
  for i = 1, math.min(#raw, M.MAX_RCPT) do
    local a = raw[i]
    if type(a) == 'string' then
      a = a:match('^%s*<?(.-)>?%s*$')
      local addr = normalize_address(a)
      if addr and not seen[addr] then
        seen[addr] = true
        out[#out + 1] = { addr = addr, domain = addr:match('@(.+)$') }
      end
    end
  end
  return out, truncated
end

-- [ARC-3] comment: arc=pass as[2].d=d2.example as[2].s=s2 as[1].d=... remote-ip[1]=192.0.2.1
local function arc_comment(arc, sealers)
  local parts = { 'arc=pass' }
  for _, s in ipairs(sealers) do
    parts[#parts + 1] = string.format('as[%d].d=%s as[%d].s=%s', s.i, s.d, s.i, s.s)
  end
  if arc.remote_ip and store.parse_ip(arc.remote_ip) then
    parts[#parts + 1] = string.format('remote-ip[%d]=%s', sealers[#sealers].i, arc.remote_ip)
  end
  return table.concat(parts, ' ')
end

-- The ARC sealers when the chain passes, validated, newest first; nil otherwise.
local function arc_sealers(arc)
  if type(arc) ~= 'table' or arc.result ~= 'pass' or type(arc.sealers) ~= 'table' then return nil end
  local out = {}
  for i = 1, math.min(#arc.sealers, M.MAX_ARC_SEALERS) do
    local s = arc.sealers[i]
    if type(s) ~= 'table' then return nil end
    local d = store.normalize_domain(s.d)
    local inst = tonumber(s.i)
    if not d or not inst or inst < 1 or inst > M.MAX_ARC_SEALERS or inst % 1 ~= 0
        or type(s.s) ~= 'string' or not s.s:find('^[%w._-]+$') or #s.s > 63 then
      return nil
    end
    out[#out + 1] = { i = inst, d = d, s = s.s }
  end
  if #out == 0 then return nil end
  return out
end

-- A prepared message: everything about a message the lookups and the per-recipient
-- decisions share, made once per message (site:prepare). Only what is always needed is
-- computed here; recipients, matchers and IP prefixes are computed on first use, so that a
-- decision nothing can change (a pass, p=none, a failure at a site without overrides for
-- it) costs no normalisation and no key building at all.
local Prepared = {}
Prepared.__index = Prepared

local function prepare(site, verdict, ctx)
  if type(verdict) ~= 'table' then error('dmarc.site.policy: verdict must be a table', 3) end
  if ctx ~= nil and type(ctx) ~= 'table' then error('dmarc.site.policy: ctx must be a table', 3) end
  ctx = ctx or {}
  local from_lenient, from_unread = from_flags(verdict)
  local outcome = outcome_of(verdict, from_unread)
  local st = setmetatable({
    site = site, verdict = verdict, ctx = ctx, outcome = outcome, base_reasons = {},
    -- A From read only leniently, or one of several From fields not read at all, is never
    -- treated better than a From not read at all.
    lenient = from_lenient or from_unread,
    -- Overrides only lower a failure's enforced disposition; for everything else (most
    -- mail) the matchers are never computed.
    overridable = outcome == 'reject' or outcome == 'quarantine',
  }, Prepared)
  -- t=y and pct sampling are the verdict's own reasons [POL-4] [POL-6].
  if verdict.reason == 'policy_test_mode' or verdict.reason == 'sampled_out' then
    st.base_reasons[1] = { type = verdict.reason }
  end
  return st
end

-- [POL-3]: other evidence is only asked for when p=reject is the outcome.
local function reject_allowed(st)
  local allowed = st.reject_allowed
  if allowed == nil then
    allowed = st.site.unconditional_reject or has_evidence(st.ctx)
    st.reject_allowed = allowed
  end
  return allowed
end

-- The recipients, normalised and bounded (on first use).
local function rcpts_of(st)
  local rcpts = st.rcpts
  if rcpts == nil then
    rcpts, st.rcpt_truncated = rcpt_list(st.ctx)
    st.rcpts = rcpts
  end
  return rcpts
end

-- Author, org domain, List-Id and ARC matchers of a failure (on first use).
local function matchers_of(st)
  if st.matched then return st end
  st.matched = true
  local verdict, ctx = st.verdict, st.ctx
  st.author = verdict.author_domain and normalize_domain(verdict.author_domain) or nil
  st.org = verdict.org_domain and normalize_domain(verdict.org_domain) or nil
  st.list = ctx.list_id and store.normalize_list_id(ctx.list_id) or nil
  -- [ARC-2]: only a passing chain, and only its newest sealer: that is the hop that handed us
  -- the message and vouches for the chain before it. Some ARC being present is not enough.
  st.sealers = arc_sealers(ctx.arc)
  if st.sealers then
    st.arc_key = 'arc:' .. st.sealers[1].d
    st.arc_comment = arc_comment(ctx.arc, st.sealers)
  end
  return st
end

-- The IP prefix keys, longest first (on first use; false when there is no usable IP).
local function ip_keys_of(st)
  local keys = st.ip_keys
  if keys == nil then
    keys = st.ctx.ip and ip_keys(st.ctx.ip) or false
    st.ip_keys = keys
  end
  return keys or nil
end

-- Outcomes a decision can end in, for deciding which lookups are worth a round trip.
local function reachable_outcomes(st)
  local r = { [st.outcome] = true }
  if st.lenient then r.bad_from = true end
  if st.outcome == 'reject' then r.quarantine = true end
  if st.overridable then r.quarantine, r.none = true, true end
  return r
end

--- A prepared message, for hosts that look up and then decide: the setup both steps share
-- is done once.
--   local m = site:prepare(verdict, ctx)
--   local keys = m:lookups()                  -- as site:lookups(verdict, ctx)
--   local decision = m:decide(found, opts)    -- as site:decide(verdict, ctx, found, opts)
-- @return prepared message
function Site:prepare(verdict, ctx)
  return prepare(self, verdict, ctx)
end

function Prepared:lookups()
  return self.site:_lookups(self)
end

function Prepared:decide(found, opts)
  return self.site:_decide(self, found, opts)
end

--- The store keys a decision for this message may need. Empty (no round trip at all) for
-- most mail: a pass, p=none or an error is not overridden, and recipient sets only matter
-- for outcomes they treat.
function Site:lookups(verdict, ctx)
  return self:_lookups(prepare(self, verdict, ctx))
end

function Site:_lookups(st)
  local keys, seen = {}, {}
  local function add(k)
    if k and not seen[k] and #keys < store.MAX_KEYS then
      seen[k] = true
      keys[#keys + 1] = k
    end
  end
  if st.overridable then
    for _, r in ipairs(rcpts_of(st)) do
      add('rcpt:' .. r.addr)
      add('rcpt_domain:' .. r.domain)
    end
    matchers_of(st)
    if st.author then add('domain:' .. st.author) end
    if st.org then add('org:' .. st.org) end
    for _, k in ipairs(ip_keys_of(st) or E) do add(k) end
    if st.list then add('list:' .. st.list) end
    add(st.arc_key)
  end
  local reach = reachable_outcomes(st)
  for _, name in ipairs(self.set_names) do
    local wanted = false
    for outcome in pairs(self.sets[name].treat) do
      if reach[outcome] then wanted = true end
    end
    if wanted then
      for _, r in ipairs(rcpts_of(st)) do
        add('set:' .. name .. ':' .. r.addr)
        add('set:' .. name .. ':' .. r.domain)
      end
    end
  end
  return keys
end

local function add_warning(warnings, msg)
  for _, w in ipairs(warnings) do
    if w == msg then return end
  end
  warnings[#warnings + 1] = msg
end

-- An override for key: the store's entry first (it is the newer word), then the script's.
function Site:_override_at(key, kind, found, warnings)
  local e = found[key]
  if e ~= nil then
    local o, err = M.override(e, kind, false)
    if o then return o end
    add_warning(warnings, 'override ' .. key .. ' ignored: ' .. tostring(err))
  end
  return self.static[key]
end

-- First matching override, most specific first: recipient, recipient domain, author domain,
-- org domain, IP (longest prefix first), List-Id, trusted ARC sealer. @kinds: the kinds
-- that can match at all (site:_override_kinds); the others are not even keyed.
function Site:_find_override(st, found, r, warnings, kinds)
  local function try(key, kind)
    if not key then return nil end
    return self:_override_at(key, kind, found, warnings)
  end
  local o
  if r and (kinds.rcpt or kinds.rcpt_domain) then
    o = try('rcpt:' .. r.addr, 'rcpt') or try('rcpt_domain:' .. r.domain, 'rcpt_domain')
    if o then return o end
  end
  if kinds.domain or kinds.org or kinds.list or kinds.arc then matchers_of(st) end
  o = (st.author and kinds.domain and try('domain:' .. st.author, 'domain'))
    or (st.org and kinds.org and try('org:' .. st.org, 'org'))
  if o then return o end
  if kinds.ip then
    for _, k in ipairs(ip_keys_of(st) or E) do
      o = try(k, 'ip')
      if o then return o end
    end
  end
  o = st.list and kinds.list and try('list:' .. st.list, 'list')
  if o then return o end
  if st.arc_key and kinds.arc then
    o = try(st.arc_key, 'arc')
    if o then return o, st.arc_comment end
  end
  return nil
end

-- The override kinds that can match this message: every kind when the store answered with
-- entries (it was asked for every key that applies), else those the script has entries of.
function Site:_override_kinds(found)
  if next(found) ~= nil then return ALL_KINDS end
  return self.static_kinds
end

local function is_member(self, found, name, r)
  for _, m in ipairs{ r.addr, r.domain } do
    local key = 'set:' .. name .. ':' .. m
    if found[key] ~= nil or self.static[key] ~= nil then return true end
  end
  return false
end

function Site:_treatment_for(outcome, found, r)
  if r then
    for _, name in ipairs(self.set_names) do
      local t = self.sets[name].treat[outcome]
      if t and is_member(self, found, name, r) then return t, 'site' end
    end
  end
  if self.treat[outcome] then return self.treat[outcome], 'site' end
  return M.DEFAULTS[outcome], 'default'
end

-- RFC 9990 disposition before the treatment: what the outcome means by itself.
local function natural_disposition(outcome, verdict)
  if outcome == 'pass' then
    -- 'pass': DMARC passed under an enforcing policy (RFC 9990 Appendix A).
    return (verdict.policy == 'quarantine' or verdict.policy == 'reject') and 'pass' or 'none'
  end
  if outcome == 'reject' or outcome == 'quarantine' then return outcome end
  -- A From that cannot be read: its default treatment quarantines.
  if outcome == 'bad_from' then return 'quarantine' end
  return 'none'
end

-- [OVR-2]: the disposition is what was actually done.
local function disposition_of(action, natural)
  if action == 'reject' then return 'reject' end
  if action == 'folder' or action == 'score' or action == 'tag' then
    return (natural == 'reject' or natural == 'quarantine') and 'quarantine' or natural
  end
  -- accept, defer: nothing was enforced (a deferred message is judged again on retry).
  return (natural == 'none' or natural == 'pass') and natural or 'none'
end

local function smtp_domain(verdict)
  return verdict.author_domain and normalize_domain(verdict.author_domain) or nil
end

local function default_smtp(action, outcome, verdict)
  local d = smtp_domain(verdict)
  if action == 'reject' then
    return 550, '5.7.1 Rejected by DMARC policy' .. (d and (' for ' .. d) or '')
  end
  if outcome == 'temperror' then
    return 451, '4.7.1 DMARC policy' .. (d and (' for ' .. d) or '') ..
      ' could not be evaluated, try again later'
  end
  return 451, '4.7.1 Deferred by local DMARC policy'
end

local function build_decision(t, outcome, verdict, reasons, source)
  local d = { action = t.action, outcome = outcome, source = source, reasons = reasons }
  if t.action == 'folder' then
    d.folder = t.folder
  elseif t.action == 'score' then
    d.score = t.score
  elseif t.action == 'tag' then
    d.tag = t.subject and { subject = t.subject } or { header = t.header, value = t.value }
  elseif t.action == 'reject' or t.action == 'defer' then
    local code, msg = default_smtp(t.action, outcome, verdict)
    d.smtp_code, d.smtp_message = t.code or code, t.message or msg
  end
  d.disposition = disposition_of(t.action, natural_disposition(outcome, verdict))
  return d
end

local function copy_reasons(reasons)
  local out = {}
  for i, r in ipairs(reasons) do out[i] = { type = r.type, comment = r.comment } end
  return out
end

-- One decision for one recipient (or for the whole message when r is nil).
function Site:_decide_one(st, found, r, warnings, kinds)
  local verdict = st.verdict
  local outcome = st.outcome
  local reasons = copy_reasons(st.base_reasons)
  local downgraded = false
  -- [POL-3] [OPEN-6]: MUST NOT reject solely because of p=reject; with no other evidence
  -- the failure is treated as quarantine.
  if outcome == 'reject' and not reject_allowed(st) then
    outcome, downgraded = 'quarantine', true
  end
  local o, comment
  if st.overridable and next(kinds) ~= nil then
    o, comment = self:_find_override(st, found, r, warnings, kinds)
  end
  local treatment, source
  if o then
    source = 'override'
    if o.treat then
      treatment = o.treat
    elseif LEVEL[outcome] > LEVEL[o.at_most] then
      outcome = o.at_most
    end
    reasons[#reasons + 1] = { type = o.reason, comment = comment or o.comment }
  elseif downgraded then
    reasons[#reasons + 1] = { type = 'local_policy', comment = POL3_COMMENT }
  end
  if not treatment then
    local src
    treatment, src = self:_treatment_for(outcome, found, r)
    source = source or src
  end
  if outcome == 'bad_from' then
    reasons[#reasons + 1] = { type = 'local_policy', comment = BAD_FROM_COMMENT }
  elseif st.lenient then
    -- RFC 9989 §11.5: the lenient reading may make things stricter, never laxer than the
    -- From not being read at all; overrides cannot take it below that either.
    local floor, src = self:_treatment_for('bad_from', found, r)
    if ACTION_RANK[floor.action] > ACTION_RANK[treatment.action] then
      treatment, outcome, source = floor, 'bad_from', src
      reasons[#reasons + 1] = { type = 'local_policy', comment = BAD_FROM_COMMENT }
    end
  end
  local d = build_decision(treatment, outcome, verdict, reasons, source)
  -- RFC 9990 wants a reason whenever a failing message's disposition differs from the
  -- policy that was applied; a site treatment (quarantine accepted, say) is local policy.
  if verdict.result == 'fail' and #d.reasons == 0 and LEVEL[d.disposition]
      and d.disposition ~= (verdict.applied or 'none') then
    d.reasons[1] = { type = 'local_policy', comment = 'site treatment' }
  end
  if r then d.rcpt = r.addr end
  return d
end

local function same_decision(a, b)
  local ta, tb = a.tag or {}, b.tag or {}
  return a.action == b.action and a.folder == b.folder and a.score == b.score
    and ta.header == tb.header and ta.value == tb.value and ta.subject == tb.subject
    and a.smtp_code == b.smtp_code and a.smtp_message == b.smtp_message
    and a.disposition == b.disposition
end

local function shallow_copy(t)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  return out
end

-- Several recipients: the strictest decision is the message's (a reject or defer at SMTP
-- time refuses the message for every recipient); when they differ, per_rcpt carries each
-- recipient's own so a delivery agent can file or score per recipient.
local function combine(per, rcpts)
  local top, all_same = per[rcpts[1].addr], true
  for i = 2, #rcpts do
    local d = per[rcpts[i].addr]
    if not same_decision(d, top) then all_same = false end
    if ACTION_RANK[d.action] > ACTION_RANK[top.action] then top = d end
  end
  top = shallow_copy(top)
  top.rcpt = nil
  if not all_same then top.per_rcpt = per end
  return top
end

local function deep_copy(v, depth)
  if type(v) ~= 'table' then return v end
  if depth > M.MAX_COPY_DEPTH then return {} end
  local out = {}
  for k, x in pairs(v) do out[k] = deep_copy(x, depth + 1) end
  return out
end

-- A hook's return value as a decision, or nil, why.
local function hook_decision(result, proposed, verdict)
  if type(result) == 'function' and DSL_BARE[result] then result = DSL_BARE[result]() end
  if type(result) == 'string' then
    local t, err = M.treatment(result)
    if not t then return nil, err end
    result = t
  end
  if type(result) ~= 'table' then return nil, 'a ' .. type(result) .. ' instead of a decision table' end
  local tag = result.tag
  if tag ~= nil and type(tag) ~= 'table' then return nil, 'tag must be a table' end
  tag = tag or {}
  local t, err = M.treatment{
    action = result.action, folder = result.folder, score = result.score,
    header = tag.header or result.header, value = tag.value or result.value,
    subject = tag.subject or result.subject,
    code = result.smtp_code or result.code, message = result.smtp_message or result.message,
  }
  if not t then return nil, err end
  local outcome = M.OUTCOMES[result.outcome] and result.outcome or proposed.outcome
  local reasons = copy_reasons(proposed.reasons)
  if result.reasons ~= nil then
    if type(result.reasons) ~= 'table' or #result.reasons > M.MAX_REASONS then
      return nil, 'reasons must be an array of at most ' .. M.MAX_REASONS
    end
    reasons = {}
    for i, r in ipairs(result.reasons) do
      if type(r) ~= 'table' or not REPORT_REASONS[r.type] then
        return nil, 'reasons[' .. i .. '].type is not an RFC 9990 reason'
      end
      if r.comment ~= nil and not is_text(r.comment, M.MAX_COMMENT_LEN) then
        return nil, 'reasons[' .. i .. '].comment must be one line of text'
      end
      reasons[i] = { type = r.type, comment = r.comment }
    end
  end
  local d = build_decision(t, outcome, verdict, reasons, 'hook')
  if result.disposition ~= nil then
    if not M.DISPOSITIONS[result.disposition] then
      return nil, 'disposition must be none, pass, quarantine or reject'
    end
    d.disposition = result.disposition
  end
  return d
end

function Site:_run_hook(verdict, ctx, proposed)
  local copy = deep_copy(proposed, 0)
  local ok, result, code = sandbox.call(self.env, self.budget, self.name, self.hook, verdict, ctx, copy)
  local msg
  if not ok then
    msg = result .. (code == 'budget' and '' or ' (in decide)')
  elseif result == nil then
    return proposed
  else
    local d, err = hook_decision(result, proposed, verdict)
    if d then
      if result == copy and same_decision(d, proposed) then return proposed end
      -- A hook's decision is the message's, for every recipient: no per_rcpt.
      d.warnings = proposed.warnings
      return d
    end
    local info = debug.getinfo(self.hook, 'S')
    local where = info and where_of({ source = info.source, short_src = info.short_src,
      currentline = info.linedefined }, self.name) or self.name
    msg = where .. ': decide returned ' .. err
  end
  -- Contained: the decision without the hook applies, and the failure is logged. The
  -- decision says where the hook failed (a scanner marks such messages).
  local where = tostring(msg):match('^(.-:%d+):') or self.name
  msg = msg .. '; the site decision applies'
  self.log:warn('%s', msg)
  add_warning(proposed.warnings, msg)
  proposed.site_error = { where = where, message = msg }
  return proposed
end

--- The decision for a message.
-- @param verdict the dmarc.evaluate result table
-- @param ctx scanner context (see the module comment); may be nil
-- @param found logical key -> entry from the store (st:get_many(site:lookups(...))); nil
--   when the store failed: the site's own rules and defaults apply, with a warning
-- @param opts {store_error = message} to say why found is nil
-- @return decision
function Site:decide(verdict, ctx, found, opts)
  return self:_decide(prepare(self, verdict, ctx), found, opts)
end

function Site:_decide(st, found, opts)
  local verdict = st.verdict
  local warnings = {}
  if found == nil then
    add_warning(warnings, 'override store unavailable (' ..
      tostring(opts and opts.store_error or 'no answer') ..
      '); site defaults apply')
    found = {}
  elseif type(found) ~= 'table' then
    error('dmarc.site.policy: found must be a table', 3)
  end
  if st.outcome == 'no_policy' and verdict.result ~= 'none' then
    add_warning(warnings, 'unknown verdict result "' .. tostring(verdict.result) .. '" handled as none')
  end
  local kinds = st.overridable and self:_override_kinds(found) or E
  -- Recipients matter when a set may treat them or a recipient override may match; else
  -- every recipient gets the same decision and it is made once.
  local rcpts = E
  if #self.set_names > 0 or kinds.rcpt or kinds.rcpt_domain then rcpts = rcpts_of(st) end
  if st.rcpt_truncated then
    add_warning(warnings, 'more than ' .. M.MAX_RCPT .. ' recipients; the rest get the message decision')
  end
  local decision
  if #rcpts <= 1 then
    decision = self:_decide_one(st, found, rcpts[1], warnings, kinds)
    decision.rcpt = nil
  else
    local per = {}
    for _, r in ipairs(rcpts) do per[r.addr] = self:_decide_one(st, found, r, warnings, kinds) end
    decision = combine(per, rcpts)
  end
  decision.warnings = warnings
  if self.hook then decision = self:_run_hook(verdict, st.ctx, decision) end
  return decision
end

--- lookups + store:get_many + decide, for a blocking store (nil: no store). A store that
-- fails gives the site defaults and a logged warning, never an error.
function Site:evaluate(verdict, ctx, st)
  local state = prepare(self, verdict, ctx)
  local keys = self:_lookups(state)
  if #keys == 0 or st == nil then return self:_decide(state, {}) end
  local found, err = st:get_many(keys)
  if not found then self.log:warn('override store: %s; site defaults apply', tostring(err)) end
  return self:_decide(state, found, { store_error = err })
end

--- The same with store:get_many_async; cb(decision) is called exactly once.
function Site:evaluate_async(verdict, ctx, st, cb)
  if type(cb) ~= 'function' then error('dmarc.site.policy: evaluate_async needs a callback', 2) end
  local state = prepare(self, verdict, ctx)
  local keys = self:_lookups(state)
  if #keys == 0 or st == nil then return cb(self:_decide(state, {})) end
  local done = false
  st:get_many_async(keys, function(found, err)
    if done then return end
    done = true
    if not found then self.log:warn('override store: %s; site defaults apply', tostring(err)) end
    cb(self:_decide(state, found, { store_error = err }))
  end)
end

-- }==================================================================

--- Override entry for the store from the `dmarc override add` options:
-- action 'accept' (default) | 'quarantine' | a treatment string ('folder:Junk', 'score:6',
-- 'reject', 'defer'), reason, comment. Returns entry or nil, msg, 'invalid'.
function M.entry_from_action(kind, action, reason, comment)
  local spec = { reason = reason, comment = comment }
  if action == nil or action == 'accept' or action == 'none' then
    spec.at_most = 'none'
  elseif action == 'quarantine' then
    spec.at_most = 'quarantine'
  else
    spec.treat = action
  end
  local o, err = M.override(spec, kind, true)
  if not o then return nil, err, 'invalid' end
  return o
end

M.DSL = DSL
return M
