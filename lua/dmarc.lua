--- lua-dmarc: DMARC evaluation (RFC 9989, RFC 7489 as a mode) for Lua.
--
-- The policy engine is the C core (dmarc.core); this module drives its
-- query loop, maps `dmarc eval` input objects to core calls and verdicts to
-- output objects, and re-exports the parsers for custom Lua rules.
--
--   local dmarc = require 'dmarc'
--   local out = dmarc.evaluate{ from = 'a@example.com', dns = { ... } }
--   local engine = dmarc.new{ cache_size = 10000 }
--   engine:evaluate_async(input, resolve_async, function(out, err) ... end)
--
-- Input object (the `dmarc eval` contract; see `dmarc eval --help`):
--   id         echoed as is
--   mode       'rfc9989' (default) or 'rfc7489'
--   from       REQUIRED: the raw value of one From field (string), or an
--              array of raw values, one per From field ([] = no From)
--   spf        { result =, domain =, scope = 'mfrom'|'helo' }
--   dkim       array of { result =, domain =, selector = }
--   roll       integer 0..99 for pct sampling (random when absent) [POL-6]
--   dns        NAME -> VALUE map (see dmarc.receive.json_dns); or, in Lua only,
--   resolve    function(name, qtype) -> rcode, txts, ttl in place of dns
--   now        seconds, for the engine's cache (default os.time())
-- Output object: id, result, author_domain, policy_domain, org_domain,
-- policy, applied, reason, spf_aligned, dkim_aligned, flags, queries
-- (fields that are JSON null are nil here).
--
-- Errors: a malformed input object gives nil, message, 'invalid'; misuse of
-- the API (wrong types of arguments, bad engine options) raises.
--
-- @module dmarc

local core = require 'dmarc.core'
local resolve = require 'dmarc.receive.resolve'
local json_dns = require 'dmarc.receive.json_dns'

local M = {
  _NAME = 'dmarc',
  _VERSION = core._VERSION,
  core = core,
  limits = core.limits,
}

-- ---------------------------------------------------------------------------
-- Re-exports for custom Lua rules (the parsers return nil, msg, code on bad
-- data, as dmarc.core does).

--- Parse one record: (txt, mode?) -> table | nil, msg, code.
M.parse_record = core.record_parse
--- Does a TXT RR start like a DMARC record [REC-2]: (txt, mode?) -> boolean.
M.is_record = core.is_record
--- Mailboxes of one From field: (raw) -> array | nil, msg, code.
M.parse_from = core.from_parse
--- Lowercase A-label, no trailing dot [FROM-2] [FROM-3]: (s) -> string | nil, msg, code.
M.normalize_domain = core.domain_normalize
--- Org Domain through the Public Suffix List (RFC 7489 §3.2): (d) -> org, is_suffix.
M.org_domain = core.psl_org_domain
--- A shared DNS answer cache: (max_entries) -> dmarc.cache.
M.new_cache = core.new_cache
M.json_dns = json_dns
M.resolve = resolve

--- Alignment of an identifier with an Author Domain under the Public
-- Suffix List, as RFC 7489 §3.1 defines it: 'strict' when equal, 'relaxed'
-- when the Org Domains match [ALN-3] [ALN-4], nil otherwise. A public
-- suffix never aligns relaxed [ALN-6]. (RFC 9989 relaxed alignment needs a
-- DNS tree walk per domain [ALN-4]: the evaluation does that.)
-- @param identifier {string} DKIM d= or SPF domain
-- @param author {string} Author Domain
-- @param mode {string} 'r' / 'relaxed' (default) or 's' / 'strict'
-- @return {string} 'strict', 'relaxed' or nil; or nil, message, code
function M.aligned_psl(identifier, author, mode)
  local id, err, code = core.domain_normalize(identifier)
  if not id then return nil, err, code end
  local au
  au, err, code = core.domain_normalize(author)
  if not au then return nil, err, code end
  if id == au then return 'strict' end
  if mode == 's' or mode == 'strict' then return nil end
  local id_org, id_suffix = core.psl_org_domain(id)
  local au_org, au_suffix = core.psl_org_domain(au)
  if id_org == nil or au_org == nil or id_suffix or au_suffix then return nil end
  if id_org == au_org then return 'relaxed' end
  return nil
end

-- ---------------------------------------------------------------------------
-- The pct roll [POL-6]. The core has no random source; the roll comes from
-- here unless the input gives one. A private generator (Park-Miller minimal
-- standard, exact in doubles and in integers) keeps the host's math.random
-- state untouched (Rspamd and other hosts seed and use their own); it is
-- seeded once from /dev/urandom, or from the clock when that is missing.

local MODULUS = 2147483647
local rng_state

local function rng_seed()
  local seed
  local f = io.open('/dev/urandom', 'rb')
  if f then
    local bytes = f:read(4)
    f:close()
    if bytes and #bytes == 4 then
      local b1, b2, b3, b4 = bytes:byte(1, 4)
      seed = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
    end
  end
  if not seed then seed = os.time() + math.floor(os.clock() * 1000000) end
  seed = seed % MODULUS
  if seed == 0 then seed = 1 end
  return seed
end

--- A random roll in 0..99.
function M.random_roll()
  if not rng_state then rng_state = rng_seed() end
  rng_state = (rng_state * 48271) % MODULUS
  return math.floor(rng_state % 100)
end

-- ---------------------------------------------------------------------------
-- Input objects

local MODES = { rfc9989 = true, rfc7489 = true }
local AUTH_RESULTS = {
  none = true, pass = true, fail = true, softfail = true, neutral = true,
  policy = true, temperror = true, permerror = true,
}
local SPF_SCOPES = { mfrom = true, helo = true }
--- More From fields than the core reads are not passed on: one beyond
-- its limit is enough for it to flag and ignore the rest.
local MAX_FROM_FIELDS = core.limits.from_max_fields + 1
--- DKIM results beyond the core's limit are ignored.
local MAX_DKIM = core.limits.max_dkim

local function input_error(msg)
  return nil, msg, 'invalid'
end

local function is_integer(n)
  return type(n) == 'number' and n == math.floor(n) and n == n
end

local function is_callable(f)
  if type(f) == 'function' then return true end
  local mt = getmetatable(f)
  return type(mt) == 'table' and mt.__call ~= nil
end

local function check_auth(where, t)
  if type(t) ~= 'table' then return nil, where .. ': expected an object' end
  if type(t.result) ~= 'string' then return nil, where .. '.result: required string' end
  local result = t.result:lower()
  if not AUTH_RESULTS[result] then
    return nil, string.format('%s.result: unknown result "%s"', where, t.result)
  end
  if t.domain ~= nil and type(t.domain) ~= 'string' then
    return nil, where .. '.domain: expected a string'
  end
  return result
end

-- mode: rfc9989 or rfc7489 (any case).
local function input_mode(spec, input)
  -- Absent: the engine's mode (rfc9989 unless the engine says otherwise).
  local mode = input.mode
  if mode ~= nil then
    if type(mode) ~= 'string' or not MODES[mode:lower()] then
      return input_error('mode: expected "rfc9989" or "rfc7489"')
    end
    spec.mode = mode:lower()
  end
  return true
end

-- from: the From field values.
local function input_from(spec, input)
  -- `from` is required: [] says "no From field" explicitly, and a missing or
  -- misspelt key must not silently read as a message without From [FROM-4].
  local from = input.from
  if type(from) == 'string' then
    spec.from = { from }
  elseif type(from) == 'table' then
    spec.from = {}
    for i = 1, math.min(#from, MAX_FROM_FIELDS) do
      if type(from[i]) ~= 'string' then
        return input_error(string.format('from[%d]: expected a string', i))
      end
      spec.from[i] = from[i]
    end
    if next(from) ~= nil and #from == 0 then
      return input_error('from: expected a string or an array of strings')
    end
  elseif from == nil then
    return input_error('from: required (a string, or an array of strings; [] for no From)')
  else
    return input_error('from: expected a string or an array of strings')
  end
  return true
end

-- spf: the SPF result and its scope.
local function input_spf(spec, input)
  if input.spf ~= nil then
    local result, err = check_auth('spf', input.spf)
    if not result then return input_error(err) end
    local scope = input.spf.scope
    if scope == nil then
      scope = 'mfrom'
    elseif type(scope) ~= 'string' or not SPF_SCOPES[scope:lower()] then
      return input_error('spf.scope: expected "mfrom" or "helo"')
    end
    spec.spf = { result = result, domain = input.spf.domain, helo = scope:lower() == 'helo' }
  end
  return true
end

-- dkim: the DKIM results, at most MAX_DKIM.
local function input_dkim(spec, input)
  spec.dkim = {}
  if input.dkim ~= nil then
    if type(input.dkim) ~= 'table' then return input_error('dkim: expected an array') end
    if next(input.dkim) ~= nil and #input.dkim == 0 then
      return input_error('dkim: expected an array')
    end
    for i = 1, math.min(#input.dkim, MAX_DKIM) do
      local where = string.format('dkim[%d]', i)
      local sig = input.dkim[i]
      local result, err = check_auth(where, sig)
      if not result then return input_error(err) end
      if sig.selector ~= nil and type(sig.selector) ~= 'string' then
        return input_error(where .. '.selector: expected a string')
      end
      spec.dkim[i] = { result = result, domain = sig.domain, selector = sig.selector }
    end
  end
  return true
end

-- roll (pct sampling) and now.
local function input_numbers(spec, input)
  if input.roll ~= nil then
    if not is_integer(input.roll) or input.roll < 0 or input.roll > 99 then
      return input_error('roll: expected an integer in 0..99')
    end
    spec.roll = math.floor(input.roll)
  end

  if input.now ~= nil then
    if type(input.now) ~= 'number' or input.now ~= input.now or input.now < 0 then
      return input_error('now: expected a number of seconds')
    end
    spec.now = math.floor(input.now)
  end
  return true
end

-- resolve (a function) or dns (a JSON answer map).
local function input_resolver(spec, input)
  if input.resolve ~= nil then
    if not is_callable(input.resolve) then
      return input_error('resolve: expected a function')
    end
    spec.resolve = input.resolve
  else
    local resolver, err = json_dns.resolver(input.dns)
    if not resolver then return input_error(err) end
    spec.resolve = resolver
  end
  return true
end

-- The steps of check_input, in order; each gives true or nil, message, 'invalid'.
local INPUT_STEPS = { input_mode, input_from, input_spf, input_dkim, input_numbers, input_resolver }

--- Check an input object; returns the normalized form or nil, msg, 'invalid'.
function M.check_input(input)
  if type(input) ~= 'table' then return input_error('input: expected an object') end
  local spec = { id = input.id }
  for _, step in ipairs(INPUT_STEPS) do
    local ok, err, code = step(spec, input)
    if not ok then return nil, err, code end
  end
  return spec
end

-- The output object of an evaluation that ran to its end: the core's
-- light verdict (no record table) plus the input's id and the questions.
local function output_of(spec, ev)
  local out = ev:outcome()
  out.id = spec.id
  out.queries = ev:queries()
  return out
end

-- Details for callers that need more than the contract's output object
-- (report rows [AGG-6], Authentication-Results): only on request.
local function details_of(ev, spec)
  local dkim_alignment = {}
  for i = 1, #spec.dkim do dkim_alignment[i] = ev:dkim_alignment(i) end
  return {
    verdict = ev:verdict(),
    domains = ev:domains(),
    dkim_alignment = dkim_alignment,
    spf_alignment = ev:spf_alignment(),
  }
end

-- Adds the inputs of @spec to a fresh evaluation.
local function feed_inputs(ev, spec, now)
  for i = 1, #spec.from do
    -- A From field beyond the core's limit comes back as 'limit': the
    -- core has flagged it, nothing more to do.
    ev:add_from(spec.from[i])
  end
  -- An SPF or DKIM domain that is not a usable name cannot align; the core
  -- says so with nil, msg, code, and the identifier is simply left out.
  if spec.spf and spec.spf.domain and spec.spf.domain ~= '' then
    ev:add_spf(spec.spf.domain, spec.spf.result, spec.spf.helo)
  end
  for i = 1, #spec.dkim do
    local sig = spec.dkim[i]
    if sig.domain and sig.domain ~= '' then
      ev:add_dkim(sig.domain, sig.selector, sig.result)
    end
  end
  ev:set_roll(spec.roll or M.random_roll())
  ev:set_now(spec.now or now)
end

-- ---------------------------------------------------------------------------
-- Engines: one ctx per mode (made on first use), an optional shared cache.

local Engine = {}
Engine.__index = Engine

local ENGINE_OPTIONS = {
  mode = 'string',
  cache_size = 'number',
  pct_as_testing = 'boolean',
  full_org_walk = 'boolean',
  failure_org_walk = 'boolean',
  max_author_domains = 'number',
  psl_file = 'string',
  clock = 'function',
}

--- A new engine.
-- @param opts {table} mode (default mode of inputs without one; default
--   'rfc9989'), cache_size (entries of a shared answer cache; 0 or nil:
--   none), pct_as_testing [OPEN-3], failure_org_walk (rfc9989: a failure at
--   quarantine/reject gets the author's real Org Domain, walking on past its own
--   record, for site overrides keyed by organisation), max_author_domains (1..8), psl_file
--   (rfc7489 mode), clock (function returning seconds; default os.time)
-- @return {engine}; raises with the option name on a bad option
function M.new(opts)
  opts = opts or {}
  if type(opts) ~= 'table' then error('dmarc.new: options must be a table', 2) end
  for k, v in pairs(opts) do
    local want = ENGINE_OPTIONS[k]
    if not want then error(string.format("dmarc.new: unknown option '%s'", tostring(k)), 2) end
    if type(v) ~= want then
      error(string.format("dmarc.new: option '%s': %s expected, got %s", k, want, type(v)), 2)
    end
  end
  local mode = opts.mode or 'rfc9989'
  if not MODES[mode] then
    error(string.format("dmarc.new: option 'mode': invalid value '%s'", mode), 2)
  end
  local self = setmetatable({
    mode = mode,
    ctx_options = {
      pct_as_testing = opts.pct_as_testing,
      full_org_walk = opts.full_org_walk,
      failure_org_walk = opts.failure_org_walk,
      max_author_domains = opts.max_author_domains,
      psl_file = opts.psl_file,
    },
    ctxs = {},
    clock = opts.clock or os.time,
  }, Engine)
  if opts.cache_size ~= nil and opts.cache_size ~= 0 then
    if opts.cache_size < 1 or opts.cache_size % 1 ~= 0 then
      error("dmarc.new: option 'cache_size': expected a positive integer", 2)
    end
    self.cache = core.new_cache(opts.cache_size)
  end
  -- Made now so that a bad option raises here, not on the first message.
  self:ctx(mode)
  return self
end

--- The engine's context for @mode (made on first use).
function Engine:ctx(mode)
  local ctx = self.ctxs[mode]
  if ctx then return ctx end
  local o = {}
  for k, v in pairs(self.ctx_options) do o[k] = v end
  o.mode = mode
  ctx = core.new(o)
  self.ctxs[mode] = ctx
  return ctx
end

--- The engine's shared cache, or nil.
function Engine:get_cache()
  return self.cache
end

-- A new evaluation with the inputs of @spec added.
function Engine:start(spec)
  local ev = self:ctx(spec.mode or self.mode):eval(self.cache)
  feed_inputs(ev, spec, self.clock())
  return ev
end

--- Evaluate one input object with its synchronous resolver (input.resolve
-- or input.dns).
-- @param input {table} a `dmarc eval` input object
-- @param opts {table} optional: details = true adds a second return value
--   {verdict=, domains=, dkim_alignment=, spf_alignment=}
-- @return {table} the output object; or nil, message, 'invalid'
function Engine:evaluate(input, opts)
  local spec, err, code = M.check_input(input)
  if not spec then return nil, err, code end
  local ev = self:start(spec)
  local ok, res = pcall(resolve.run_sync, ev, spec.resolve)
  if not ok then
    ev:close()
    error(res, 0)
  end
  local out = output_of(spec, ev)
  local details = (opts and opts.details) and details_of(ev, spec) or nil
  ev:close()
  return out, details
end

--- Evaluate one input object with a callback-style resolver.
-- resolve_async(name, qtype, cb) must call cb(rcode, txts, ttl) once, now
-- or later. on_done(out, details) is called exactly once with the output
-- object, or on_done(nil, message, code) ('invalid' for a bad input object,
-- 'error' when the resolver or the evaluation failed). Input errors are
-- reported through on_done too.
-- @param input {table} input object (its dns/resolve fields are ignored)
-- @param resolve_async {function}
-- @param on_done {function}
-- @param opts {table} optional: details = true
function Engine:evaluate_async(input, resolve_async, on_done, opts)
  if type(resolve_async) ~= 'function' then
    error('evaluate_async: resolve_async must be a function', 2)
  end
  if type(on_done) ~= 'function' then error('evaluate_async: on_done must be a function', 2) end
  local spec, err, code = M.check_input(input)
  if not spec then return on_done(nil, err, code) end
  local ev = self:start(spec)
  resolve.run_async(ev, resolve_async, function(ok, run_err)
    if not ok then
      ev:close()
      return on_done(nil, run_err, 'error')
    end
    local made, out = pcall(output_of, spec, ev)
    local details
    if made and opts and opts.details then
      made, details = pcall(details_of, ev, spec)
      if not made then out = details end
    end
    ev:close()
    if not made then return on_done(nil, tostring(out), 'error') end
    return on_done(out, details)
  end)
end

--- Free the engine's contexts and cache now (the GC would do it later).
function Engine:close()
  for mode, ctx in pairs(self.ctxs) do
    ctx:close()
    self.ctxs[mode] = nil
  end
  if self.cache then
    self.cache:close()
    self.cache = nil
  end
end

-- ---------------------------------------------------------------------------
-- Module-level evaluation: a default engine without a cache, since every
-- input brings its own DNS (a cache would mix answers of different lines).

local default_engine

local function get_default()
  if not default_engine then default_engine = M.new() end
  return default_engine
end

--- Evaluate one input object (see Engine:evaluate).
function M.evaluate(input, opts)
  return get_default():evaluate(input, opts)
end

--- Evaluate one input object with an asynchronous resolver (see
-- Engine:evaluate_async).
function M.evaluate_async(input, resolve_async, on_done, opts)
  return get_default():evaluate_async(input, resolve_async, on_done, opts)
end

return M
