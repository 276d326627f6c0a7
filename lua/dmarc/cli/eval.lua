--- `dmarc eval`: evaluate messages described as JSON, one per line.
--
-- The line contract is fixed (tests outside the project rely on it): see
-- USAGE below. One output line per input line, in order, flushed per line.
--
-- @module dmarc.cli.eval

local cjson = require 'cjson'
local dmarc = require 'dmarc'
local common = require 'dmarc.cli.common'
local json = require 'dmarc.util.json'

local M = {}

local USAGE = [[
usage: dmarc eval [--help]

Reads JSON objects, one per line, on standard input; writes one JSON object
per line on standard output, in the same order, flushed after each line.
Empty lines are skipped.

Input fields:
  id      echoed as is (null when absent)
  mode    "rfc9989" (default) or "rfc7489"
  from    REQUIRED. The raw value of one From field (a string), or an array
          of raw values, one per From field; [] means the message has no From
  spf     {"result": ..., "domain": ..., "scope": "mfrom" | "helo"}
  dkim    [{"result": ..., "domain": ..., "selector": ...}, ...]
          results are RFC 8601 words: none pass fail softfail neutral
          policy temperror permerror
  roll    integer 0-99 for pct sampling: the policy applies iff roll < pct
          (random when absent)
  dns     {"NAME": VALUE, ...}; VALUE is an array of TXT records (the name
          exists: TXT answers with them, [] is NODATA, other types NODATA),
          or "NXDOMAIN", "SERVFAIL", "TIMEOUT" (or "NODATA"). A TXT record
          is a string or an array of strings joined with no separator.
          A name not in the map is NXDOMAIN, unless a mapped name lies below
          it (then NODATA). Absent dns: every name is NXDOMAIN.

Output fields:
  id, result (pass fail none temperror permerror), author_domain,
  policy_domain, org_domain (null when not determined), policy (none
  quarantine reject, null when no record applies), applied (after t= and
  pct, null unless the result is pass or fail), reason (null,
  "policy_test_mode", "sampled_out", or the bound that left part of the From
  unevaluated: "too_many_domains", "too_many_mailboxes",
  "too_many_from_fields", "query_limit"), spf_aligned, dkim_aligned, flags
  (array), queries (array of "NAME/TYPE").

A line that is not a JSON object, or lacks a required field, gives
{"id": <id or null>, "error": "..."} and processing goes on. The exit
status is 0 unless standard input or output fails.
]]

--- Longest input line read (bytes); a longer one is answered with an error.
M.MAX_LINE_BYTES = 4 * 1024 * 1024

-- Output key order (JSON does not need it; people and diffs like it).
local OUTPUT_KEYS = {
  'id', 'result', 'author_domain', 'policy_domain', 'org_domain', 'policy', 'applied', 'reason',
  'spf_aligned', 'dkim_aligned', 'flags', 'queries',
}
local ARRAY_KEYS = { flags = true, queries = true }

-- A private cjson instance: its settings do not leak to other users.
local cjson_private = cjson.new()
-- "inf", "nan" and hex numbers are not JSON.
if cjson_private.decode_invalid_numbers then cjson_private.decode_invalid_numbers(false) end
local null = cjson.null

-- ---------------------------------------------------------------------------
-- Encoding: the contract's key order, values through json.encode (cjson 2.1.0, Debian 12,
-- writes an empty array as {} and escapes '/' needlessly).

local function encode_scalar(v)
  -- An id may be any JSON value: objects and arrays go back through cjson, as they came.
  if type(v) == 'table' then
    local ok, text = pcall(cjson_private.encode, v)
    return ok and text or 'null'
  end
  return json.encode(v)
end

local function encode_array(list)
  local parts = {}
  for i = 1, #(list or {}) do parts[i] = encode_scalar(list[i]) end
  return '[' .. table.concat(parts, ',') .. ']'
end

--- The output line of an evaluation result (without the newline).
function M.encode_output(out)
  local parts = {}
  for i, key in ipairs(OUTPUT_KEYS) do
    local value = out[key]
    local text = ARRAY_KEYS[key] and encode_array(value) or encode_scalar(value)
    parts[i] = json.encode(key) .. ':' .. text
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

--- The output line of an input that could not be evaluated.
function M.encode_error(id, message)
  return '{"id":' .. encode_scalar(id) .. ',"error":' .. json.encode(message) .. '}'
end

-- ---------------------------------------------------------------------------
-- Decoding

-- JSON null means "absent" for every field but id, which is echoed as is.
-- Only object members (string keys) are dropped: a null inside an array
-- stays and is reported as a wrong type. Depth is bounded by cjson's.
local function drop_nulls(t)
  for k, v in pairs(t) do
    if v == null and type(k) == 'string' then
      t[k] = nil
    elseif type(v) == 'table' then
      drop_nulls(v)
    end
  end
end

local function is_object(t)
  if type(t) ~= 'table' then return false end
  -- cjson gives {} for both {} and []; a non-empty array has key 1.
  return t[1] == nil
end

--- Evaluate one input line; returns the output line (no newline), or nil
-- for a line to skip.
function M.process_line(line)
  if line:find('^%s*$') then return nil end
  if #line > M.MAX_LINE_BYTES then
    return M.encode_error(nil, string.format('line longer than %d bytes', M.MAX_LINE_BYTES))
  end
  local ok, input = pcall(cjson_private.decode, line)
  if not ok then return M.encode_error(nil, 'invalid JSON: ' .. tostring(input)) end
  if not is_object(input) then return M.encode_error(nil, 'expected a JSON object') end
  local id = input.id
  input.id = nil
  drop_nulls(input)
  input.id = id
  local ran, out, err = pcall(dmarc.evaluate, input)
  if not ran then return M.encode_error(id, 'evaluation failed: ' .. tostring(out)) end
  if not out then return M.encode_error(id, err) end
  return M.encode_output(out)
end

--- Entry point: run(args) -> exit status.
function M.run(args)
  local a = (args or {})[1]
  if a == '-h' or a == '--help' then
    io.stdout:write(USAGE)
    return 0
  elseif a ~= nil then
    common.fail('dmarc eval', 'unknown argument "' .. a .. '"')
    io.stderr:write(USAGE)
    return 2
  end
  while true do
    local line, rerr = io.stdin:read('*l')
    if line == nil then
      if rerr then
        return common.fail('dmarc eval', 'reading standard input: ' .. tostring(rerr), 1)
      end
      return 0
    end
    line = line:gsub('\r$', '')
    local text = M.process_line(line)
    if text then
      local ok, werr = io.stdout:write(text, '\n')
      if ok then ok, werr = io.stdout:flush() end
      if not ok then
        return common.fail('dmarc eval', 'writing standard output: ' .. tostring(werr), 1)
      end
    end
  end
end

return M
