--- Running site code: a restricted environment, and bounds on everything it can make the
-- host do. A site script (docs/site-policy.md) is the site's own code, but a mistake in it
-- runs inside a mail scanner: a loop, a pattern that backtracks, a string of 2 GB must end
-- as an error for that script, quickly, never as a stalled or exhausted worker.
--
--   local env = sandbox.env(logger, 'site.lua', { extra = ... })
--   local ok, res_or_msg, code = sandbox.call(env, budget, 'site.lua', fn, ...)
--
-- Three bounds hold for one call (a script's load, or one decide hook):
--   instructions  Lua VM instructions, counted by a count hook (`budget`);
--   library work  what the string and table functions do in C, charged per call by the
--                 wrappers below (sizes, pattern matching steps), at most WORK_FACTOR per
--                 instruction of the budget and MAX_WORK in all;
--   memory        growth of the Lua heap (collectgarbage('count')), checked by the same
--                 hook every CHECK_EVERY instructions, at most MAX_MEMORY_KB.
-- Running out of any of them stops the call (code 'budget'); a script cannot catch that with
-- pcall. A single library call that would go far beyond them (a result over MAX_STRING
-- bytes, a pattern whose worst case on that subject is over MAX_PATTERN_COST steps) is
-- refused before any work is done: an ordinary error the script may catch.
--
-- String methods (`s:find(...)`) go through the string metatable, shared with the host:
-- during a call its __index is the sandbox's wrapped string library, and it is put back
-- after. Works on Lua 5.4 and LuaJIT (whose count hook is global rather than per coroutine,
-- and which counts only interpreted code: callers turn the JIT off for site chunks).
-- @module dmarc.site.sandbox
local M = {}

M.MAX_STRING = 1024 * 1024          -- bytes of one string a library function may return
M.MAX_PATTERN_COST = 4000000        -- worst-case matching steps of one pattern call
M.WORK_FACTOR = 16                  -- library work units per instruction of the budget
M.MAX_WORK = 32 * 1024 * 1024       -- library work units of one call, at most
M.MAX_MEMORY_KB = 16 * 1024         -- Lua heap growth during one call
M.CHECK_EVERY = 4                   -- instructions between two checks of the heap

-- The host's library functions, taken when this module loads.
local s_rep, s_format, s_find, s_match = string.rep, string.format, string.find, string.match
local s_gmatch, s_gsub, s_byte, s_sub = string.gmatch, string.gsub, string.byte, string.sub
local s_upper, s_lower, s_reverse = string.upper, string.lower, string.reverse
local t_concat, t_insert, t_remove, t_sort = table.concat, table.insert, table.remove, table.sort
local floor, log = math.floor, math.log
local pack = table.pack or function(...) return { n = select('#', ...), ... } end
local unpack = table.unpack or unpack
local STRING_MT = getmetatable('')

-- Raised when a bound runs out. A table, so no script can produce it, and the pcall of the
-- environment re-raises it: a script cannot catch its way past its bounds.
local STOP = setmetatable({}, { __tostring = function() return 'sandbox bound exceeded' end })

-- The call being run (calls do not nest: a decide hook does not load a script).
local current

local SELF = debug.getinfo(1, 'S').source

local function where_of(info, fallback)
  if not info then return fallback end
  local src = info.source or ''
  src = s_sub(src, 1, 1) == '@' and s_sub(src, 2) or (info.short_src or fallback)
  return src .. ':' .. tostring(info.currentline or 0)
end

-- The line of site code running now: the first Lua frame that is not this module's.
local function script_where(fallback)
  for level = 2, 30 do
    local info = debug.getinfo(level, 'Sl')
    if not info then break end
    if info.what ~= 'C' and info.source ~= SELF then return where_of(info, fallback) end
  end
  return fallback
end

local function stop(run, what)
  if not run.stopped then run.stopped = { what = what, where = script_where(run.name) } end
  error(STOP, 0)
end

--- Charge @n units of library work to the running call.
local function charge(n)
  local run = current
  if not run then return end
  run.work = run.work - n
  if run.work < 0 then stop(run, 'library work budget') end
end

-- An ordinary error at the site code's line: the call is refused before any work is done.
local function refuse(fname, msg)
  local where = script_where(current and current.name or 'site')
  error(where .. ': ' .. fname .. ': ' .. msg .. ' (site script sandbox)', 0)
end

-- {==================================================================
-- Pattern cost: an upper bound on the steps of Lua's backtracking matcher
-- ===================================================================

-- Lua's matcher (lstrlib.c, LuaJIT's lj_strscan) tries each start position (one, when the
-- pattern is anchored) and at each one may try every length for every `*`, `+`, `-` item
-- (and `%b`), two for every `?`. Worst case: starts * (n + 1)^quantifiers * 2^optionals.
-- Counted outside sets and escapes; a quantifier character that is really a literal makes
-- the bound larger, never smaller.
local function pattern_shape(p)
  local q, opt, i, len = 0, 0, 1, #p
  while i <= len do
    local c = s_byte(p, i)
    if c == 37 then -- '%'
      local nx = s_byte(p, i + 1)
      if nx == 98 then -- %bxy
        q, i = q + 1, i + 4
      elseif nx == 102 and s_byte(p, i + 2) == 91 then -- %f[set]
        i = i + 2
      else
        i = i + 2
      end
    elseif c == 91 then -- '[': skip the set ("[]...]" and "[^]...]" hold a literal ']')
      i = i + 1
      if s_byte(p, i) == 94 then i = i + 1 end
      if s_byte(p, i) == 93 then i = i + 1 end
      while i <= len and s_byte(p, i) ~= 93 do
        if s_byte(p, i) == 37 then i = i + 1 end
        i = i + 1
      end
      i = i + 1
    else
      if c == 42 or c == 43 or c == 45 then q = q + 1 elseif c == 63 then opt = opt + 1 end
      i = i + 1
    end
  end
  return q, opt
end

local SPECIALS = '[%^%$%*%+%?%.%(%)%[%]%%%-]'

-- Shapes of the patterns seen (site scripts use the same few over and over), bounded.
local SHAPES_MAX = 512
local shapes, shapes_n = {}, 0

local function shape_of(p)
  local sh = shapes[p]
  if sh then return sh[1], sh[2] end
  local q, opt = pattern_shape(p)
  if shapes_n >= SHAPES_MAX then shapes, shapes_n = {}, 0 end
  shapes[p], shapes_n = { q, opt }, shapes_n + 1
  return q, opt
end

--- Worst-case matching steps of pattern @p on a subject of @n bytes (plain: a substring
-- search). @anchorable: the pattern's '^' anchors it (not in gmatch on Lua 5.1).
local function pattern_cost(n, p, plain, anchorable)
  if plain then return (n + 1) * (#p + 1) end
  local q, opt = shape_of(p)
  if q == 0 and opt == 0 and not s_find(p, SPECIALS) then return (n + 1) * (#p + 1) end
  local starts = (anchorable and s_byte(p, 1) == 94) and 1 or (n + 1)
  return starts * (n + 1) ^ q * 2 ^ opt * (#p + 1)
end
M.pattern_cost = pattern_cost

local function check_pattern(fname, s, p, plain, anchorable)
  if type(s) == 'number' then s = tostring(s) end
  if type(s) ~= 'string' or (type(p) ~= 'string' and type(p) ~= 'number') then return 0 end
  p = tostring(p)
  local cost = pattern_cost(#s, p, plain, anchorable)
  if cost > M.MAX_PATTERN_COST then
    refuse('string.' .. fname, s_format('pattern "%s" is too costly for a subject of %d bytes',
      s_sub(p, 1, 40), #s))
  end
  charge(floor(cost / 64) + 1)
  return cost
end

-- }==================================================================

-- {==================================================================
-- The wrapped string and table libraries
-- ===================================================================

local function size_of(v)
  if type(v) == 'string' then return #v end
  return 32 -- a number's text; anything else the native function refuses itself
end

local function check_size(fname, size)
  if size > M.MAX_STRING then
    refuse('string.' .. fname, s_format('a result of %.0f bytes is over the limit of %d', size, M.MAX_STRING))
  end
  charge(floor(size / 16) + 1)
end

local S = {}

function S.rep(s, n, sep)
  local len = type(s) == 'string' and #s or size_of(s)
  local count = tonumber(n) or 0
  local size = 0
  if count >= 1 then
    size = count * len + (count - 1) * (sep ~= nil and size_of(sep) or 0)
  end
  check_size('rep', size)
  return s_rep(s, n, sep)
end

function S.format(fmt, ...)
  local size = type(fmt) == 'string' and #fmt or 0
  for i = 1, select('#', ...) do size = size + size_of((select(i, ...))) + 100 end
  check_size('format', size)
  return s_format(fmt, ...)
end

function S.find(s, p, init, plain)
  check_pattern('find', s, p, plain, true)
  return s_find(s, p, init, plain)
end

function S.match(s, p, init)
  check_pattern('match', s, p, false, true)
  return s_match(s, p, init)
end

function S.gmatch(s, p, ...)
  -- Every later step of the iterator resumes where the last match ended: its worst case
  -- together is the unanchored search's.
  check_pattern('gmatch', s, p, false, false)
  return s_gmatch(s, p, ...)
end

function S.gsub(s, p, repl, n)
  check_pattern('gsub', s, p, false, true)
  local len = type(s) == 'string' and #s or size_of(s)
  local matches = len + 1
  if type(n) == 'number' and n < matches then matches = math.max(n, 0) end
  local total = len
  if type(repl) == 'string' then
    -- Each match is replaced by repl, each %0..%9 in it by at most the subject.
    local refs = select(2, s_gsub(repl, '%%%d', ''))
    total = len + matches * (#repl + refs * len)
    check_size('gsub', total)
    return s_gsub(s, p, repl, n)
  end
  -- A table or function: the replacements are counted as they are made.
  local lookup = repl
  local f = type(repl) == 'table' and function(k) return lookup[k] end or repl
  local function counted(...)
    local v = f(...)
    if type(v) == 'string' then
      total = total + #v
      if total > M.MAX_STRING then check_size('gsub', total) end
    end
    return v
  end
  if type(repl) ~= 'table' and type(repl) ~= 'function' then return s_gsub(s, p, repl, n) end
  local res, count = s_gsub(s, p, counted, n)
  charge(floor(#res / 16) + 1)
  return res, count
end

local function linear(fname, native)
  return function(s, ...)
    if type(s) == 'string' then check_size(fname, #s) end
    return native(s, ...)
  end
end
S.upper, S.lower, S.reverse = linear('upper', s_upper), linear('lower', s_lower),
  linear('reverse', s_reverse)

local T = {}

function T.concat(t, sep, i, j)
  if type(t) ~= 'table' then return t_concat(t, sep, i, j) end
  i = tonumber(i) or 1
  j = tonumber(j) or #t
  local size = 0
  if j >= i then
    -- Counting costs one step per item: charged before it is done.
    charge(j - i + 1)
    for k = i, j do size = size + size_of(t[k]) end
    size = size + (j - i) * (sep ~= nil and size_of(sep) or 0)
  end
  if size > M.MAX_STRING then
    refuse('table.concat', s_format('a result of %.0f bytes is over the limit of %d', size, M.MAX_STRING))
  end
  charge(floor(size / 16) + 1)
  return t_concat(t, sep, i, j)
end

function T.insert(t, ...)
  -- Inserting at a position moves every item after it.
  if select('#', ...) >= 2 and type(t) == 'table' then
    local pos = tonumber((...)) or 1
    charge(math.max(#t - pos, 0) + 1)
  else
    charge(1)
  end
  return t_insert(t, ...)
end

function T.remove(t, pos)
  if type(t) == 'table' then charge(math.max(#t - (tonumber(pos) or #t), 0) + 1) end
  return t_remove(t, pos)
end

function T.sort(t, cmp)
  if type(t) == 'table' then
    local n = #t
    charge(floor(n * (log(n + 1) / log(2) + 1)) + 1)
  end
  return t_sort(t, cmp)
end

--- A fresh copy of library @lib with the wrappers of @wrapped, without @drop.
local function copy_lib(lib, wrapped, drop)
  local t = {}
  for k, v in pairs(lib) do
    if not (drop and drop[k]) then t[k] = (wrapped and wrapped[k]) or v end
  end
  return t
end

-- }==================================================================

-- {==================================================================
-- The environment and the guarded call
-- ===================================================================

local function safe_pcall(f, ...)
  local r = pack(pcall(f, ...))
  if not r[1] and r[2] == STOP then error(STOP, 0) end
  return unpack(r, 1, r.n)
end

-- The string library each environment's calls see as the strings' methods.
local string_libs = setmetatable({}, { __mode = 'k' })
local DEFAULT_STRING = copy_lib(string, S, { dump = true })

--- The environment of a site script: no io, os, require, load, debug, package,
-- setmetatable, coroutine; fresh copies of string, table and math (a script cannot alter the
-- host's), the string and table functions bounded. @extra: further globals (the DSL).
function M.env(logger, name, extra)
  local env = {
    pairs = pairs, ipairs = ipairs, next = next, tostring = tostring, tonumber = tonumber,
    type = type, select = select, error = error, assert = assert, rawequal = rawequal,
    pcall = safe_pcall, unpack = unpack,
    string = copy_lib(string, S, { dump = true }),
    table = copy_lib(table, T),
    math = copy_lib(math),
    log = function(msg) logger:info('%s: %s', name, tostring(msg)) end,
  }
  string_libs[env] = env.string
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

local function new_run(budget, name)
  return {
    name = name,
    budget = budget,
    work = math.min(budget * M.WORK_FACTOR, M.MAX_WORK),
    heap = collectgarbage('count'),
  }
end

-- The count hook: instructions, and the heap every CHECK_EVERY of them. Heap growth over
-- the bound is checked again after a full collection (garbage is not growth); the next
-- collection waits until the heap grew by another quarter of the bound, so a script that
-- makes garbage does not make the host collect every few instructions.
-- The hook runs every few instructions of site code, so it is one closure over locals (no
-- table fields, no second call): its cost is most of what the bounds cost a decide hook.
local gc = collectgarbage
local function count_hook(run, co, global_hook)
  local budget, step, limit = run.budget, M.CHECK_EVERY, M.MAX_MEMORY_KB
  local count, low, recheck = 0, run.heap, 0
  local function on_count()
    count = count + step
    if count > budget then stop(run, 'instructions') end
    local now = gc('count')
    -- Garbage of the host's freed during the call must not hide the call's own growth: the
    -- growth is counted from the lowest heap seen.
    if now < low then
      low = now
    elseif now - low > limit and now > recheck then
      gc('collect')
      now = gc('count')
      if now - low > limit then stop(run, 'memory') end
      recheck = now + limit / 4
    end
  end
  local function counted() return count end
  if not global_hook then return on_count, counted end
  -- LuaJIT's hook also fires in the host's own code while it is set: count the call's only.
  local running = coroutine.running
  return function() if running() == co then on_count() end end, counted
end

-- Lua 5.4 counts the instructions a Lua hook runs itself against the thread's count (LuaJIT
-- does not): after a hook of h instructions the next call comes (count - h) instructions of
-- site code later, so with a count of CHECK_EVERY the hook would run after nearly every
-- instruction and charge each one CHECK_EVERY. The hook's own length on its common path is
-- measured once, on a loop of known length, and added to the count given to sethook: site
-- code is then checked every CHECK_EVERY of its own instructions, as documented. A longer
-- path through the hook (a collection) only brings the next check closer.
local HOOK_PROBE_COUNT = 64       -- sethook count while measuring (longer than the hook)
local HOOK_PROBE_LOOPS = 100000   -- iterations of the measured loop (one FORLOOP each)
local hook_own
local function hook_length()
  if hook_own then return hook_own end
  hook_own = 0
  if type(jit) == 'table' then return hook_own end
  local co = coroutine.create(function() for _ = 1, HOOK_PROBE_LOOPS do end end)
  local hook, counted = count_hook({ budget = math.huge, heap = gc('count') }, co, false)
  debug.sethook(co, hook, '', HOOK_PROBE_COUNT)
  local ok = coroutine.resume(co)
  debug.sethook(co)
  local calls = counted() / M.CHECK_EVERY
  if ok and calls > 0 then
    local h = floor(HOOK_PROBE_COUNT - HOOK_PROBE_LOOPS / calls + 0.5)
    if h > 0 and h < HOOK_PROBE_COUNT - M.CHECK_EVERY then hook_own = h end
  end
  return hook_own
end

local MESSAGES = {
  instructions = 'instruction budget of %d exceeded',
  ['library work budget'] = 'library work budget exceeded (string and table functions; ' ..
    'budget of %d instructions)',
  memory = 'memory limit exceeded (' .. M.MAX_MEMORY_KB .. ' KiB; budget of %d instructions)',
}

--- Calls fn(...) in a coroutine under the bounds: true, results... or false, msg, code
-- ('runtime' | 'budget'). The message names the file and line that was running.
-- @param env the environment of M.env (its string library serves string methods), or nil
-- @param budget VM instructions
function M.call(env, budget, name, fn, ...)
  local args = pack(...)
  local co = coroutine.create(function() return fn(unpack(args, 1, args.n)) end)
  local run = new_run(budget, name)
  local global_hook = type(jit) == 'table'
  local old
  if global_hook then old = pack(debug.gethook()) end
  local outer, old_index = current, STRING_MT.__index
  current = run
  STRING_MT.__index = (env and string_libs[env]) or DEFAULT_STRING
  debug.sethook(co, (count_hook(run, co, global_hook)), '', M.CHECK_EVERY + hook_length())
  local res = pack(coroutine.resume(co))
  if global_hook then
    if old[1] then debug.sethook(old[1], old[2], old[3]) else debug.sethook() end
  else
    debug.sethook(co)
  end
  STRING_MT.__index = old_index
  current = outer
  if res[1] then return true, unpack(res, 2, res.n) end
  local err = res[2]
  if err == STOP then
    local s = run.stopped or { what = 'instructions', where = name }
    return false, s.where .. ': ' .. s_format(MESSAGES[s.what], budget), 'budget'
  end
  if type(err) ~= 'string' then
    return false, name .. ': raised a ' .. type(err) .. ' value, not an error message', 'runtime'
  end
  return false, err, 'runtime'
end

-- }==================================================================

return M
