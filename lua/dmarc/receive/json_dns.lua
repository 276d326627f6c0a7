--- The `dns` map of a `dmarc eval` input line, as a resolver.
--
-- One place for these semantics: the CLI, the Lua tests and the front
-- module use this file, and tests/c/test_vectors.c implements the same
-- rules for the C side, so a vector means the same thing everywhere.
--
-- The map is NAME -> VALUE:
--   * an array of TXT RRs: the name exists. A TXT question gets NOERROR with
--     those RRs (an empty array is NODATA); any other type gets NODATA.
--     An RR is a string, or an array of strings that are joined with no
--     separator, as the character-strings of one RR are [REC-1].
--   * "NXDOMAIN", "SERVFAIL" or "TIMEOUT" (any case): that answer, for
--     every question type.
--   * "NODATA": the name exists and has no records of any type.
-- A name that is not in the map is NXDOMAIN, unless a mapped name lies
-- below it: then it exists as an empty non-terminal and answers NODATA
-- (RFC 8020: NXDOMAIN means nothing exists below). This matters for the
-- existence test behind np [DISC-12].
-- Names compare case-insensitively (RFC 4343) and one trailing dot is
-- ignored [FROM-2].
--
-- @module dmarc.receive.json_dns

local M = {}

--- Bounds on a map (it comes from untrusted input lines).
M.MAX_NAMES = 4096
M.MAX_RRS_PER_NAME = 256
M.MAX_STRINGS_PER_RR = 256
-- RFC 1035 §2.3.4: labels counted up to 127 (DMARC_DOMAIN_MAX_LABELS).
M.MAX_LABELS = 127
--- TTL handed to the core for every answer (seconds).
M.TTL = 300

local RCODE_WORDS = {
  nxdomain = 'nxdomain',
  servfail = 'servfail',
  timeout = 'timeout',
  nodata = 'nodata',
}

local function normalize_name(name)
  name = name:lower()
  if name:sub(-1) == '.' then name = name:sub(1, -2) end
  return name
end

-- A Lua table holding a JSON array: keys exactly 1..n. Empty counts (JSON
-- decoders give {} for []).
local function is_array(t, bound)
  local n = 0
  for k in pairs(t) do
    if type(k) ~= 'number' or k < 1 or k % 1 ~= 0 then return false end
    n = n + 1
    if n > bound then return false, 'too many entries' end
  end
  for i = 1, n do
    if t[i] == nil then return false end
  end
  return true, n
end

local function join_rr(rr, where)
  if type(rr) == 'string' then return rr end
  if type(rr) ~= 'table' then
    return nil, where .. ': a TXT record must be a string or an array of strings'
  end
  local ok, n = is_array(rr, M.MAX_STRINGS_PER_RR)
  if not ok then
    return nil, where .. ': a TXT record must be a string or an array of strings'
  end
  local parts = {}
  for i = 1, n do
    if type(rr[i]) ~= 'string' then
      return nil, where .. ': a TXT record must be a string or an array of strings'
    end
    parts[i] = rr[i]
  end
  return table.concat(parts)
end

-- The canonical entry of one map value: {rcode=, txts=}.
local function parse_value(name, value)
  if type(value) == 'string' then
    local word = RCODE_WORDS[value:lower()]
    if not word then
      return nil, string.format('dns["%s"]: unknown answer "%s"', name, value)
    end
    return { rcode = word, txts = {} }
  end
  if type(value) ~= 'table' then
    return nil, string.format('dns["%s"]: expected an array of TXT records or an rcode', name)
  end
  local ok, n = is_array(value, M.MAX_RRS_PER_NAME)
  if not ok then
    return nil, string.format('dns["%s"]: expected an array of TXT records or an rcode', name)
  end
  local txts = {}
  for i = 1, n do
    local rr, err = join_rr(value[i], string.format('dns["%s"][%d]', name, i))
    if not rr then return nil, err end
    txts[i] = rr
  end
  return { rcode = 'noerror', txts = txts }
end

--- Check a map and build its lookup tables.
-- @param map {table} NAME -> VALUE (nil: the empty map)
-- @return {table} zone, or nil, message
function M.compile(map)
  local zone = { names = {}, interior = {} }
  if map == nil then return zone end
  if type(map) ~= 'table' then return nil, 'dns: expected an object' end
  local count = 0
  for name, value in pairs(map) do
    count = count + 1
    if count > M.MAX_NAMES then
      return nil, string.format('dns: more than %d names', M.MAX_NAMES)
    end
    if type(name) ~= 'string' then return nil, 'dns: names must be strings' end
    local entry, err = parse_value(name, value)
    if not entry then return nil, err end
    local key = normalize_name(name)
    zone.names[key] = entry
    -- Every proper ancestor of a mapped name exists (an empty non-terminal
    -- unless mapped itself). The walk up is bounded by the label limit.
    local rest = key
    for _ = 1, M.MAX_LABELS do
      local dot = rest:find('.', 1, true)
      if not dot then break end
      rest = rest:sub(dot + 1)
      if rest == '' then break end
      zone.interior[rest] = true
    end
  end
  return zone
end

--- Answer one question from a compiled zone.
-- @return rcode ('noerror'|'nodata'|'nxdomain'|'servfail'|'timeout'), txts, ttl
function M.lookup(zone, name, qtype)
  local key = normalize_name(name)
  local entry = zone.names[key]
  if entry == nil then
    if zone.interior[key] then return 'nodata', {}, M.TTL end
    return 'nxdomain', {}, M.TTL
  end
  if entry.rcode ~= 'noerror' then return entry.rcode, {}, M.TTL end
  if qtype ~= 'TXT' or #entry.txts == 0 then return 'nodata', {}, M.TTL end
  return 'noerror', entry.txts, M.TTL
end

--- A resolver function(name, qtype) -> rcode, txts, ttl over a map.
-- @param map {table} the `dns` object of an input line
-- @return {function} or nil, message
function M.resolver(map)
  local zone, err = M.compile(map)
  if not zone then return nil, err end
  return function(name, qtype)
    return M.lookup(zone, name, qtype)
  end
end

return M
