--- The shared toolkit of the command-line modules (lua/dmarc/cli/*) and the report modules:
-- command-line options, config files, deterministic JSON, text escaping, small file helpers
-- and error lines. One implementation of each, so every command parses, escapes and prints
-- the same way.
--
--   local util = require 'dmarc.util'
--   local opts, operands = util.parse_options(args, { values = { zone = true } })
--   io.stdout:write(util.json({ warnings = util.json_array() }), '\n')  --> {"warnings":[]}
--   return util.usage_fail('dmarc inspect', 'a DOMAIN is required')
--
-- Pure Lua, no module loaded at start: the rspamd plugin's dmarc.report uses the text helpers
-- in its hot path, and the few helpers that need another dmarc module load it when called.
-- @module dmarc.util

local M = {}

-- {==================================================================
-- Text
-- ===================================================================

--- Split @s at every occurrence of the separator byte @sep: `split('a,,b', ',')` is
-- `{'a', '', 'b'}`; the empty string gives an empty list.
-- @param s {string}
-- @param sep {string} one byte, taken literally (not a pattern)
-- @return {table} the pieces, in order
function M.split(s, sep)
  local out = {}
  if s == '' then return out end
  local pos = 1
  -- Each round moves pos past a separator, so it ends within #s rounds.
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

-- The escape of the atoms of a stored field (report rows, ingested records): every byte
-- outside [A-Za-z0-9._@+= -] becomes %XX, so the separators `|`, `,`, `;`, `:` and `!`
-- never occur inside an atom and no value can break the encoding.
local ATOM_ESCAPE, ATOM_UNESCAPE = {}, {}
for b = 0, 255 do
  local c, hex = string.char(b), string.format('%%%02X', b)
  ATOM_ESCAPE[c] = hex
  ATOM_UNESCAPE[hex:sub(2)] = c
  ATOM_UNESCAPE[hex:sub(2):lower()] = c
end

--- One atom of a stored field: bytes outside [A-Za-z0-9._@+= -] as %XX.
-- @param s {any} nil gives ''; other values go through tostring
-- @return {string}
function M.escape_atom(s)
  if s == nil then return '' end
  return (tostring(s):gsub('[^%w%._@%+= %-]', ATOM_ESCAPE))
end

--- The inverse of escape_atom (%XX in either case).
-- @param s {string}
-- @return {string}
function M.unescape_atom(s)
  if not s:find('%', 1, true) then return s end
  return (s:gsub('%%(%x%x)', ATOM_UNESCAPE))
end

--- A value from outside (a report, a request) as a terminal may show it: printable ASCII
-- as is, every other byte as \xHH, so no escape sequence or bidi control reaches the screen.
-- @param s {any} nil gives ''; other values go through tostring
-- @return {string}
function M.shown(s)
  s = tostring(s == nil and '' or s)
  return (s:gsub('[^ -~]', function(c) return string.format('\\x%02X', c:byte()) end))
end

--- Text made safe for XML 1.0, HTML and JSON: C0 controls other than TAB, LF and CR, DEL,
-- and every byte that is not part of a valid UTF-8 sequence become '?'. Strings in reports
-- come from DNS, headers, received reports and site scripts; this keeps every document
-- built from them well-formed.
-- @param s {string}
-- @return {string}
function M.sanitize_text(s)
  if not s:find('[%z\1-\8\11\12\14-\31\127-\255]') then return s end
  local out, i, n = {}, 1, #s
  -- Each round moves i forward by one byte at least: at most #s rounds.
  while i <= n do
    local c = s:byte(i)
    local len = 0
    if c < 0x80 then
      len = 1
      if (c < 0x20 and c ~= 9 and c ~= 10 and c ~= 13) or c == 0x7f then c = nil end
    elseif c >= 0xc2 and c <= 0xdf then len = 2
    elseif c >= 0xe0 and c <= 0xef then len = 3
    elseif c >= 0xf0 and c <= 0xf4 then len = 4
    end
    local ok = len > 0 and c ~= nil and i + len - 1 <= n
    if ok then
      for j = i + 1, i + len - 1 do
        local b = s:byte(j)
        if b < 0x80 or b > 0xbf then ok = false break end
      end
    end
    if ok then
      out[#out + 1] = s:sub(i, i + len - 1)
      i = i + len
    else
      out[#out + 1] = '?'
      i = i + 1
    end
  end
  return table.concat(out)
end

--- @s as one word of a POSIX shell command line, whatever it contains.
-- @param s {any} goes through tostring
-- @return {string}
function M.shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- %XX sequences decoded (RFC 3986 2.1); anything else is left as it is.
-- @param s {string}
-- @return {string}
function M.percent_decode(s)
  return (s:gsub('%%(%x%x)', function(h) return string.char(tonumber(h, 16)) end))
end

-- }==================================================================

-- {==================================================================
-- Files
-- ===================================================================

--- The whole content of a file.
-- @param path {string}
-- @return {string} data, or nil, message
function M.read_file(path)
  local f, err = io.open(path, 'rb')
  if not f then return nil, err end
  -- A directory opens, then fails to read: that is an error too, not a nil to crash on.
  local data, rerr = f:read('*a')
  f:close()
  if data == nil then return nil, path .. ': ' .. tostring(rerr or 'cannot be read') end
  return data
end

--- Write @data to @path, replacing the file, and close it: a full disk shows up as an error
-- (of the write or of the close), never as a short file taken for a good one.
-- @param path {string}
-- @param data {string}
-- @return true, or nil, message
function M.write_file(path, data)
  local f, err = io.open(path, 'wb')
  if not f then return nil, err end
  local ok, werr = f:write(data)
  local closed, cerr = f:close()
  if not ok then return nil, werr end
  if not closed then return nil, cerr end
  return true
end

-- }==================================================================

-- {==================================================================
-- JSON output: keys sorted (equal data, equal bytes), arrays told apart from objects even
-- when empty. Decoding stays with cjson; cjson 2.1.0 (Debian 12) cannot do either of these
-- (it writes an empty table as {} and keys in table order), and it escapes '/' needlessly.
-- ===================================================================

--- Tables nested deeper than this are not followed (a cycle ends here too).
M.MAX_JSON_DEPTH = 32

local JSON_ARRAY = {}

--- Mark @t as a JSON array, so that it is written as one even when it is empty.
-- @param t {table|nil} nil gives a new empty table
-- @return {table} @t
function M.json_array(t)
  return setmetatable(t or {}, JSON_ARRAY)
end

local JSON_ESCAPES = {
  ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f', ['\n'] = '\\n',
  ['\r'] = '\\r', ['\t'] = '\\t',
}

local function json_string(s)
  return '"' .. s:gsub('[%z\1-\31"\\\127]', function(c)
    return JSON_ESCAPES[c] or string.format('\\u%04x', c:byte())
  end) .. '"'
end

local function json_number(n, format)
  if n ~= n or n == math.huge or n == -math.huge then return 'null' end
  -- Integral values print without a fraction on both runtimes (5.4 keeps floats that cjson
  -- decoded as floats: 1 would print as 1.0).
  if n % 1 == 0 and math.abs(n) < 2 ^ 53 then return string.format('%d', n) end
  return string.format(format, n)
end

-- A JSON array: a marked table, or a sequence (keys exactly 1..n, n > 0).
local function is_sequence(t)
  local n = #t
  if n == 0 then return false end
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  return count == n
end

local function json_encode(v, key, depth, o, out)
  local t = type(v)
  if depth > M.MAX_JSON_DEPTH and (o.strict or t == 'table') then
    if o.strict then error('json: nested deeper than ' .. M.MAX_JSON_DEPTH .. ' levels', 0) end
    out[#out + 1] = 'null'
  elseif t == 'string' then
    out[#out + 1] = json_string(o.utf8 and M.sanitize_text(v) or v)
  elseif t == 'number' then
    out[#out + 1] = json_number(v, o.number or '%.17g')
  elseif t == 'boolean' then
    out[#out + 1] = tostring(v)
  elseif t == 'table' then
    if getmetatable(v) == JSON_ARRAY or (o.array_keys and o.array_keys[key]) or is_sequence(v) then
      out[#out + 1] = '['
      for i = 1, #v do
        if i > 1 then out[#out + 1] = ',' end
        json_encode(v[i], nil, depth + 1, o, out)
      end
      out[#out + 1] = ']'
    else
      -- Only string keys: a JSON object has no others.
      local keys = {}
      for k in pairs(v) do
        if type(k) == 'string' then keys[#keys + 1] = k end
      end
      table.sort(keys)
      out[#out + 1] = '{'
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = ',' end
        out[#out + 1] = json_string(o.utf8 and M.sanitize_text(k) or k)
        out[#out + 1] = ':'
        json_encode(v[k], k, depth + 1, o, out)
      end
      out[#out + 1] = '}'
    end
  else
    -- nil, cjson.null, functions and other values JSON has no word for.
    out[#out + 1] = 'null'
  end
end

local NO_OPTIONS = {}

--- The JSON text of @v: object keys sorted, string keys only; arrays are tables marked with
-- json_array and sequences; NaN and infinities are null, as are nil, cjson.null and values
-- JSON cannot carry.
-- @param v {any}
-- @param opts {table|nil}
--   array_keys  {set} a table under one of these object keys is an array, even when empty
--               (data built without json_array)
--   number      string.format format of non-integral numbers (default '%.17g': exact)
--   utf8        strings, keys included, go through sanitize_text first (text from outside)
--   strict      nesting deeper than MAX_JSON_DEPTH raises (default: such tables are null)
-- @return {string}
function M.json(v, opts)
  local out = {}
  json_encode(v, nil, 0, opts or NO_OPTIONS, out)
  return table.concat(out)
end

-- }==================================================================

-- {==================================================================
-- Command lines
-- ===================================================================

--- Parse command-line arguments: `--name VALUE`, `--name=VALUE`, flags, `-h` (--help), and
-- operands. --help is always a flag. Problems come back as a message in the wording of the
-- command family (spec.style), never as a raise.
-- @param args {table} the arguments, in order
-- @param spec {table}
--   values       {set} options that take a value
--   flags        {set} options that take none
--   repeated     {set} value options that may be given again: opts[name] is a list of at
--                most max_repeats values (an empty list when absent)
--   max_repeats  {number} bound of each repeated list (default 100)
--   once         a value option given twice is an error (otherwise the last one counts)
--   max_operands {number} more operands than this are an error, told as too_many_operands
--   dash_operand a lone '-' (standard input) is an operand (default true; false: it is an
--                unknown option)
--   lenient      every --name is accepted: names in neither set take a value, a flag given
--                a value is just set, and '-x' is an operand (the `dmarc report` dispatcher)
--   style        'report': the wording of `dmarc report` and its subcommands (unknown
--                option --NAME, option --NAME needs a value), where '--' ends the options
--                (an operand when lenient); default: the wording of the other commands
--                (unknown option "ARG"), where '--' is an unknown option
-- @return opts (name -> value, true or list), operands (array); or nil, message
function M.parse_options(args, spec)
  local report_style = spec.style == 'report'
  local values, flags = spec.values or {}, spec.flags or {}
  local repeated = spec.repeated or {}
  local max_repeats = spec.max_repeats or 100
  local opts, operands = {}, {}
  for name in pairs(repeated) do opts[name] = {} end
  -- An unknown option, named by its name (report style) or as it was given.
  local function unknown(arg, name)
    if not report_style then return 'unknown option "' .. arg .. '"' end
    if name then return 'unknown option --' .. name end
    return 'unknown option ' .. arg
  end
  local function add_operand(a)
    if spec.max_operands and #operands >= spec.max_operands then return false end
    operands[#operands + 1] = a
    return true
  end
  local i = 1
  -- Each round takes one argument, or two for an option and its value: at most #args rounds.
  while i <= #args do
    local a = args[i]
    local name, inline = a:match('^%-%-([%w-]+)=(.*)$')
    if not name then name = a:match('^%-%-([%w-]+)$') end
    if a == '-h' then name = 'help' end
    if name then
      if name == 'help' or flags[name] then
        if inline ~= nil and not spec.lenient then
          if report_style then return nil, 'option --' .. name .. ' takes no value' end
          return nil, unknown(a)
        end
        opts[name] = true
      elseif values[name] or repeated[name] or spec.lenient then
        local v = inline
        if v == nil then
          i = i + 1
          v = args[i]
          if v == nil then
            return nil, (report_style and 'option --' or '--') .. name .. ' needs a value'
          end
        end
        if repeated[name] then
          local list = opts[name]
          if #list >= max_repeats then return nil, 'too many --' .. name end
          list[#list + 1] = v
        elseif spec.once and opts[name] ~= nil then
          return nil, '--' .. name .. ' given twice'
        else
          opts[name] = v
        end
      else
        return nil, unknown(a, name)
      end
    elseif a == '--' and report_style and not spec.lenient then
      for j = i + 1, #args do
        if not add_operand(args[j]) then return nil, spec.too_many_operands end
      end
      break
    elseif a:sub(1, 1) == '-' and not spec.lenient
        and (a ~= '-' or spec.dash_operand == false) then
      return nil, unknown(a)
    elseif not add_operand(a) then
      return nil, spec.too_many_operands
    end
    i = i + 1
  end
  return opts, operands
end

--- A config file: a Lua chunk run with no globals at all (no os, no io, no require),
-- returning a table of options.
-- @param path {string}
-- @return {table} the options, or nil, message
function M.load_config(path)
  local text, err = M.read_file(path)
  if not text then return nil, err end
  local env = {}
  local chunk, perr
  if setfenv then
    chunk, perr = loadstring(text, '@' .. path) -- luacheck: ignore (LuaJIT)
    if chunk then setfenv(chunk, env) end
  else
    chunk, perr = load(text, '@' .. path, 't', env)
  end
  if not chunk then return nil, perr end
  local ok, conf = pcall(chunk)
  if not ok then return nil, tostring(conf) end
  if type(conf) ~= 'table' then return nil, path .. ': must return a table' end
  return conf
end

--- The value of one option: the command line first, then the config file (the name with
-- '_' for '-': --max-rows is max_rows there), then @default.
-- @param opts {table} parsed options
-- @param conf {table} the config file's table ({} without one)
-- @param name {string} the option's name on the command line
-- @param default {any}
function M.setting(opts, conf, name, default)
  local v = opts[name]
  if v ~= nil then return v end
  v = conf[(name:gsub('%-', '_'))]
  if v ~= nil then return v end
  return default
end

--- A YYYY-MM-DD day as the epoch second of its start (00:00 UTC).
-- @param s {any} goes through tostring (nil is no day)
-- @return {number} or nil for anything else
function M.parse_day(s)
  local y, m, d = tostring(s or ''):match('^(%d%d%d%d)%-(%d%d)%-(%d%d)$')
  if not y then return nil end
  return require('dmarc.report').day_start(y .. m .. d)
end

-- }==================================================================

-- {==================================================================
-- Redis
-- ===================================================================

--- The Redis connection of the report commands: a dmarc.cluster router with --cluster
-- (H:P,H:P or a list in the config file), otherwise a dmarc.redis connection to --redis,
-- $DMARC_REDIS or 127.0.0.1:6379; --redis-timeout seconds (default 5).
-- @param opts {table} parsed options
-- @param conf {table} the config file's table
-- @return connection, or nil, message, code
function M.connect_redis(opts, conf)
  local timeout = tonumber(M.setting(opts, conf, 'redis-timeout', 5))
  local cluster_nodes = M.setting(opts, conf, 'cluster')
  if cluster_nodes then
    local cluster = require 'dmarc.cluster'
    local nodes = {}
    if type(cluster_nodes) == 'table' then
      nodes = cluster_nodes
    else
      for n in tostring(cluster_nodes):gmatch('[^,%s]+') do nodes[#nodes + 1] = n end
    end
    return cluster.new { nodes = nodes, timeout = timeout }
  end
  local addr = tostring(M.setting(opts, conf, 'redis', os.getenv('DMARC_REDIS') or '127.0.0.1:6379'))
  local host, port = addr:match('^%[?([^%]]+)%]?:(%d+)$')
  if not host then host, port = addr, 6379 end
  local ok, redis = pcall(require, 'dmarc.redis')
  if not ok then return nil, 'the dmarc.redis module is not built', 'config' end
  return redis.connect { host = host, port = tonumber(port), timeout = timeout }
end

--- A Redis hash as a table: a flat HGETALL reply (field, value, field, value...), or a
-- reply that is a map already (copied). A reply that is not a table is an empty hash.
-- @param reply {any}
-- @return {table} field -> value
function M.hash_reply(reply)
  local m = {}
  if type(reply) ~= 'table' then return m end
  if reply[1] ~= nil then
    -- An odd last element (no value) is left out.
    for i = 1, #reply - 1, 2 do m[reply[i]] = reply[i + 1] end
  else
    for k, v in pairs(reply) do m[k] = v end
  end
  return m
end

-- }==================================================================

-- {==================================================================
-- Error lines
-- ===================================================================

--- Tell a failure on standard error as "WHO: MESSAGE"; for `return util.fail(...)`.
-- @param who {string} the command, e.g. 'dmarc check'
-- @param message {string}
-- @param status {number|nil} the exit status to return (default 1)
-- @param stream {file|nil} where to write (default io.stderr)
-- @return status
function M.fail(who, message, status, stream)
  local out = stream or io.stderr
  out:write(who, ': ', message, '\n')
  return status or 1
end

--- Tell a usage error: the message, then where the usage is written; exit status 2.
-- @param who {string} the command, e.g. 'dmarc check'
-- @param message {string}
-- @param stream {file|nil} where to write (default io.stderr)
-- @return 2
function M.usage_fail(who, message, stream)
  local out = stream or io.stderr
  out:write(who, ': ', message, '\n', 'run "', who, ' --help" for usage\n')
  return 2
end

-- }==================================================================

return M
