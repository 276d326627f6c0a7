-- The layering rules of the Lua side (README, "Layout"): every require of every Lua module
-- (lua/, plugins/, bin/dmarc) is an arrow, and no arrow may break a rule:
--   util/     requires nothing of ours but other util/ modules;
--   redis/    requires only util/, its own room and the dmarc.redis binding;
--   receive/, site/, report/, owner/ never require cli/ or a plugin; report/ and owner/ never
--             require each other (they share key names through dmarc.redis.keys);
--   cli/      a command never requires another command; dmarc.cli.common requires none;
--   lua/      knows no scanner (no rspamd library); plugins never require cli/;
--   every dmarc.* module required exists.
-- Requires are read with a small Lua tokenizer, so comments and strings that merely mention
-- a module do not count, and `pcall(require, 'x')` does.

local BINDINGS = { ['dmarc.core'] = true, ['dmarc.io'] = true, ['dmarc.redis'] = true, ['dmarc.xml'] = true }
-- Bound of the files walked (the tree has a few dozen).
local MAX_FILES = 1000

-- The tokens of a Lua chunk: { kind = 'name' | 'string' | 'op', value = ... }; comments and
-- whitespace dropped. Enough of Lua's lexical grammar for requires.
local function tokens(src)
  local out, i, n = {}, 1, #src
  -- Each round consumes at least one byte: at most #src rounds.
  while i <= n do
    local c = src:sub(i, i)
    local long_open = src:match('^%[(=*)%[', i)
    if c:match('%s') then
      i = i + 1
    elseif src:sub(i, i + 1) == '--' then
      local eq = src:match('^%-%-%[(=*)%[', i)
      if eq then
        local _, e = src:find(']' .. eq .. ']', i, true)
        i = (e or n) + 1
      else
        i = (src:find('\n', i, true) or n) + 1
      end
    elseif long_open then
      local s = i + #long_open + 2
      local e1, e2 = src:find(']' .. long_open .. ']', s, true)
      out[#out + 1] = { kind = 'string', value = src:sub(s, (e1 or n + 1) - 1) }
      i = (e2 or n) + 1
    elseif c == '"' or c == "'" then
      local j, buf = i + 1, {}
      while j <= n and src:sub(j, j) ~= c do
        if src:sub(j, j) == '\\' then j = j + 1 end
        buf[#buf + 1] = src:sub(j, j)
        j = j + 1
      end
      out[#out + 1] = { kind = 'string', value = table.concat(buf) }
      i = j + 1
    elseif c:match('[%a_]') then
      local w = src:match('^[%w_]+', i)
      out[#out + 1] = { kind = 'name', value = w }
      i = i + #w
    elseif src:sub(i, i + 1) == '..' then
      out[#out + 1] = { kind = 'op', value = '..' }
      i = i + 2
    else
      out[#out + 1] = { kind = 'op', value = c }
      i = i + 1
    end
  end
  return out
end

-- The module names a chunk requires with a literal name: require 'x', require('x'),
-- pcall(require, 'x'). A name built at run time ('dmarc.cli.report.' .. sub) is skipped.
local function requires(src)
  local t, found = tokens(src), {}
  local function literal(k)
    local tok, nxt = t[k], t[k + 1]
    if tok and tok.kind == 'string' and not (nxt and nxt.value == '..') then return tok.value end
  end
  for k, tok in ipairs(t) do
    if tok.kind == 'name' and tok.value == 'require' then
      local prev, nxt = t[k - 1], t[k + 1]
      local name
      if nxt and nxt.kind == 'string' then
        name = literal(k + 1)
      elseif nxt and nxt.value == '(' then
        name = literal(k + 2)
      elseif nxt and nxt.value == ',' and prev and prev.value == '(' then
        name = literal(k + 2)
      end
      if name then found[#found + 1] = name end
    end
  end
  return found
end

local function room(name)
  return name:match('^dmarc%.([%w_]+)%.')
end

-- The rules, as one function of an arrow: nil when it is allowed, else why not.
-- @param from {string} the requiring module ('plugins.rspamd.x' and 'bin.dmarc' for those files)
-- @param to {string} the required module
local function broken(from, to)
  local from_room, to_room = room(from), room(to)
  local ours = to == 'dmarc' or to:find('^dmarc%.')
  local plugin = from:find('^plugins%.')
  if not plugin and from ~= 'bin.dmarc' and (to:find('^rspamd') or to:find('^lua_')) then
    return 'the Lua layer knows no scanner'
  end
  if to:find('^plugins%.') or to:find('^dmarc_engine') then return 'a plugin is above every module' end
  if not ours then return nil end
  if from_room == 'util' and to_room ~= 'util' then return 'util/ requires only util/' end
  if from_room == 'redis' and not (to_room == 'util' or to_room == 'redis' or to == 'dmarc.redis') then
    return 'redis/ requires only util/, redis/ and the dmarc.redis binding'
  end
  local side = { receive = true, site = true, report = true, owner = true }
  if (side[from_room] or from == 'dmarc' or plugin) and to_room == 'cli' then
    return 'only bin/dmarc and the commands use cli/'
  end
  if (from_room == 'report' and to_room == 'owner') or (from_room == 'owner' and to_room == 'report') then
    return 'report/ and owner/ share key names through dmarc.redis.keys, not through each other'
  end
  if from_room == 'cli' and to_room == 'cli' and from ~= to then
    if to ~= 'dmarc.cli.common' then return 'a command never requires another command' end
  end
  if from == 'dmarc.cli.common' and to_room == 'cli' and to ~= from then
    return 'dmarc.cli.common requires no command'
  end
  return nil
end

local function module_of(path)
  if path == 'bin/dmarc' then return 'bin.dmarc' end
  if path:find('^lua/') then return (path:gsub('^lua/', ''):gsub('%.lua$', ''):gsub('/', '.')) end
  return (path:gsub('%.lua$', ''):gsub('/', '.'))
end

local function lua_files()
  local files = { 'bin/dmarc' }
  local p = assert(io.popen("find lua plugins -name '*.lua' -type f | sort"))
  for line in p:lines() do
    if #files >= MAX_FILES then error('more than ' .. MAX_FILES .. ' Lua files') end
    files[#files + 1] = line
  end
  p:close()
  return files
end

local function read(path)
  local f = assert(io.open(path, 'rb'))
  local s = f:read('*a')
  f:close()
  return s
end

describe('layering', function()
  it('layering__the_tokenizer_finds_requires_and_skips_mentions', function()
    local src = table.concat({
      "local a = require 'dmarc.util.text'",
      'local b = require("dmarc.redis.keys")',
      "local ok, c = pcall(require, 'dmarc.io')",
      "-- local d = require 'dmarc.cli.check'",
      "--[[ require 'dmarc.owner.ingest' ]]",
      "local s = \"require 'dmarc.site.store'\"",
      "local m = require('dmarc.cli.report.' .. sub)",
      "local l = [==[ require 'dmarc.report.rows' ]==]",
    }, '\n')
    assert.same({ 'dmarc.util.text', 'dmarc.redis.keys', 'dmarc.io' }, requires(src))
  end)

  it('layering__the_rules_reject_each_kind_of_bad_arrow', function()
    local bad = {
      { 'dmarc.util.json', 'dmarc.report.rows' }, { 'dmarc.util.text', 'dmarc.redis.keys' },
      { 'dmarc.redis.connect', 'dmarc.report.rows' }, { 'dmarc.redis.keys', 'dmarc.io' },
      { 'dmarc.report.xml', 'dmarc.cli.common' }, { 'dmarc.owner.summary', 'dmarc.cli.report.summary' },
      { 'dmarc.receive.auth', 'dmarc.cli.check' }, { 'dmarc.site.policy', 'rspamd_logger' },
      { 'dmarc.owner.ingest', 'dmarc.report.rows' }, { 'dmarc.report.send', 'dmarc.owner.summary' },
      { 'dmarc.cli.inspect', 'dmarc.cli.check' }, { 'dmarc.cli.report.serve', 'dmarc.cli.report.ingest' },
      { 'dmarc.cli.common', 'dmarc.cli.report.generate' }, { 'dmarc', 'dmarc.cli.eval' },
      { 'plugins.rspamd.dmarc_engine', 'dmarc.cli.check' }, { 'dmarc.report.rows', 'lua_redis' },
    }
    for _, a in ipairs(bad) do assert.is_string(broken(a[1], a[2]), a[1] .. ' -> ' .. a[2]) end
    local good = {
      { 'dmarc.util.json', 'dmarc.util.text' }, { 'dmarc.redis.connect', 'dmarc.redis' },
      { 'dmarc.redis.keys', 'dmarc.util.time' }, { 'dmarc.owner.ingest', 'dmarc.redis.keys' },
      { 'dmarc.cli.check', 'dmarc.cli.common' }, { 'dmarc.cli.report.send', 'dmarc.report.send' },
      { 'plugins.rspamd.dmarc_engine', 'rspamd_logger' }, { 'bin.dmarc', 'dmarc.cli.common' },
      { 'dmarc.report.failure', 'dmarc.report.xml' }, { 'dmarc.util.json', 'cjson' },
    }
    for _, a in ipairs(good) do assert.is_nil(broken(a[1], a[2]), a[1] .. ' -> ' .. a[2]) end
  end)

  it('layering__no_module_requires_against_the_rules', function()
    local files = lua_files()
    local present = {}
    for _, path in ipairs(files) do present[module_of(path)] = true end
    assert.is_true(present['dmarc.util.text'] and present['dmarc.cli.common'] and true)
    local problems, arrows = {}, 0
    for _, path in ipairs(files) do
      local from = module_of(path)
      for _, to in ipairs(requires(read(path))) do
        arrows = arrows + 1
        local why = broken(from, to)
        if not why and (to == 'dmarc' or to:find('^dmarc%.')) and not present[to] and not BINDINGS[to] then
          why = 'no such module'
        end
        if why then problems[#problems + 1] = from .. ' -> ' .. to .. ': ' .. why end
      end
    end
    assert.is_true(arrows > 50, 'too few requires found: ' .. arrows)
    assert.same({}, problems)
  end)
end)
