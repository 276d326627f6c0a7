--- Deterministic JSON output (decoding stays with cjson).
--
--   local json = require 'dmarc.util.json'
--   io.stdout:write(json.encode({ warnings = json.array() }), '\n')  --> {"warnings":[]}
-- @module dmarc.util.json

local text = require 'dmarc.util.text'

local M = {}

-- {==================================================================
-- JSON output: keys sorted (equal data, equal bytes), arrays told apart from objects even
-- when empty. Decoding stays with cjson; cjson 2.1.0 (Debian 12) cannot do either of these
-- (it writes an empty table as {} and keys in table order), and it escapes '/' needlessly.
-- ===================================================================

--- Tables nested deeper than this are not followed (a cycle ends here too).
M.MAX_DEPTH = 32

local JSON_ARRAY = {}

--- Mark @t as a JSON array, so that it is written as one even when it is empty.
-- @param t {table|nil} nil gives a new empty table
-- @return {table} @t
function M.array(t)
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
  if depth > M.MAX_DEPTH and (o.strict or t == 'table') then
    if o.strict then error('json: nested deeper than ' .. M.MAX_DEPTH .. ' levels', 0) end
    out[#out + 1] = 'null'
  elseif t == 'string' then
    out[#out + 1] = json_string(o.utf8 and text.sanitize(v) or v)
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
        out[#out + 1] = json_string(o.utf8 and text.sanitize(k) or k)
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
-- array and sequences; NaN and infinities are null, as are nil, cjson.null and values
-- JSON cannot carry.
-- @param v {any}
-- @param opts {table|nil}
--   array_keys  {set} a table under one of these object keys is an array, even when empty
--               (data built without array)
--   number      string.format format of non-integral numbers (default '%.17g': exact)
--   utf8        strings, keys included, go through text.sanitize first (text from outside)
--   strict      nesting deeper than MAX_DEPTH raises (default: such tables are null)
-- @return {string}
function M.encode(v, opts)
  local out = {}
  json_encode(v, nil, 0, opts or NO_OPTIONS, out)
  return table.concat(out)
end

-- }==================================================================

return M
