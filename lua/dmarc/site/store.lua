--- Override store: where site overrides and recipient sets live at run time.
--
-- Three stores share one interface (docs/redis-keys.md has the key schema):
--
--   store.memory{clock=, log=}                      in-process; the embedded default
--   store.redis{host=, port=, path=, timeout=, password=, db=, prefix=, tag=,
--               backoff=, clock=, log=}             Redis through the dmarc.redis module
--   store.callback{mget=, prefix=, tag=, log=}      any asynchronous MGET (rspamd's lua_redis)
--
--   st:get_many(keys)           -> found, or nil, msg, code     (one round trip)
--   st:get_many_async(keys, cb) -> cb(found) or cb(nil, msg, code), exactly once
--   st:add(key, entry, ttl)     -> true, or nil, msg, code
--   st:del(key)                 -> true (removed) | false (absent), or nil, msg, code
--   st:list(kind)               -> array of {key=, kind=, value=, set=, entry=, ttl=}
--
-- Keys given to and returned by a store are *logical* keys, `<kind>:<value>` (or
-- `set:<name>:<member>`), built by store.key(); each store maps them to its own storage
-- (Redis: `<prefix>{<tag>}:<kind>:<value>`). `found` maps logical key -> entry table; a key
-- with no entry is absent. Codes: 'invalid' (a value that cannot be a key), 'limit',
-- 'unavailable' (Redis down or backing off), 'io', 'redis', 'unsupported'.
-- @module dmarc.site.store
local cjson = require 'cjson.safe'

local M = {}

-- Bounds on everything that comes from messages, the command line or Redis.
M.MAX_VALUE_LEN = 320     -- an address: 64 (local part) + 1 + 255 (domain), RFC 5321 §4.5.3.1
M.MAX_DOMAIN_LEN = 253    -- RFC 1035 §2.3.4, without the trailing dot
M.MAX_LABEL_LEN = 63
M.MAX_LABELS = 127        -- 253 characters hold at most 127 labels
M.MAX_LOCAL_LEN = 64
M.MAX_SET_NAME_LEN = 64
M.MAX_PREFIX_LEN = 64
M.MAX_KEYS = 1024         -- logical keys in one get_many (one MGET)
M.MAX_ENTRY_BYTES = 4096  -- one encoded entry
M.MAX_LIST = 10000        -- entries `list` returns
M.LIST_CHUNK = 500        -- keys per round trip while listing
M.MAX_TTL = 10 * 366 * 86400
M.DEFAULT_PREFIX = 'dmarc:'
M.DEFAULT_TAG = 'ovr'
M.DEFAULT_BACKOFF = 10    -- seconds Redis is skipped after a failure
M.DEFAULT_TIMEOUT = 0.5   -- seconds, connect and each reply: this is on the mail path

--- Kinds of override keys (docs/redis-keys.md). `set` holds recipient-set membership.
M.KINDS = {
  domain = 'exact author domain',
  org = 'organizational domain of the author domain',
  rcpt = 'recipient address',
  rcpt_domain = 'recipient domain',
  ip = 'sending IP or CIDR (IPv4 /8../32, IPv6 /16../128 in steps of 4)',
  arc = 'trusted ARC sealer domain',
  list = 'mailing list (List-Id)',
  set = 'member (address or domain) of a named recipient set',
}

local function refuse(msg)
  return nil, msg, 'invalid'
end

-- Characters that would change a key's meaning or break a command line: whitespace
-- (including CR/LF), controls, braces (they delimit the Redis Cluster hash tag) and any
-- byte outside ASCII.
local function check_raw(value, what)
  if type(value) ~= 'string' then return refuse(what .. ' must be a string') end
  if value == '' then return refuse(what .. ' is empty') end
  if #value > M.MAX_VALUE_LEN then
    return refuse(string.format('%s is longer than %d characters', what, M.MAX_VALUE_LEN))
  end
  if value:find('[%c%s{}]') then
    return refuse(what .. ' contains whitespace, a control character or a brace')
  end
  if value:find('[\128-\255]') then
    return refuse(what .. ' is not ASCII (give domains as A-labels, xn--...)')
  end
  return value
end

--- Lowercased domain (A-label) without a trailing dot, or nil, msg, 'invalid'. [FROM-2]
function M.normalize_domain(value, what)
  what = what or 'domain'
  local d, err = check_raw(value, what)
  if not d then return refuse(err) end
  d = d:lower():gsub('%.$', '')
  if d == '' or #d > M.MAX_DOMAIN_LEN then return refuse(what .. ' has a bad length') end
  local labels = 0
  for label in (d .. '.'):gmatch('([^.]*)%.') do
    labels = labels + 1
    if labels > M.MAX_LABELS then return refuse(what .. ' has too many labels') end
    if label == '' or #label > M.MAX_LABEL_LEN or not label:find('^[%w_-]+$') then
      return refuse(what .. ' "' .. d .. '" is not a domain name')
    end
  end
  return d
end

--- Lowercased address local@domain, or nil, msg, 'invalid'. Quoted local parts are
-- refused (they may hold spaces); matching is case-insensitive, as most MTAs do.
function M.normalize_address(value, what)
  what = what or 'address'
  local a, err = check_raw(value, what)
  if not a then return refuse(err) end
  a = a:lower()
  local localpart, domain = a:match('^(.+)@([^@]+)$')
  if not localpart then return refuse(what .. ' "' .. a .. '" is not local@domain') end
  if #localpart > M.MAX_LOCAL_LEN or localpart:find('[%(%)<>%[%]\\,;:"@]') then
    return refuse(what .. ' "' .. a .. '" has an unsupported local part')
  end
  local d, derr = M.normalize_domain(domain, what .. ' domain')
  if not d then return refuse(derr) end
  return localpart .. '@' .. d
end

--- The list identifier of a List-Id value (RFC 2919: `Name <list.example.org>` or the bare
-- id), lowercased, or nil, msg, 'invalid'.
function M.normalize_list_id(value, what)
  what = what or 'list id'
  if type(value) ~= 'string' then return refuse(what .. ' must be a string') end
  if #value > 2 * M.MAX_VALUE_LEN then return refuse(what .. ' is too long') end
  local id = value:match('<([^<>]*)>') or value
  id = id:match('^%s*(.-)%s*$')
  local ok, err = check_raw(id, what)
  if not ok then return refuse(err) end
  id = id:lower()
  if not id:find("^[%w!#$%%&'*+/=?^_`|~.-]+$") or id:find('^%.') or id:find('%.$') then
    return refuse(what .. ' "' .. id .. '" is not a list identifier')
  end
  return id
end

--- Recipient-set name: letters, digits, '_', '.', '-' (lowercased).
function M.normalize_set_name(value)
  if type(value) ~= 'string' or value == '' or #value > M.MAX_SET_NAME_LEN
      or not value:find('^[%w_.-]+$') then
    return refuse('set name must be 1-' .. M.MAX_SET_NAME_LEN .. ' letters, digits, "_", "." or "-"')
  end
  return value:lower()
end

-- {==================================================================
-- IP addresses and CIDR prefixes, with arithmetic only (LuaJIT has no integer bit
-- operators, Lua 5.4 no bit library): IPv4 as 4 octets, IPv6 as 8 groups of 16 bits.
-- ===================================================================

local function parse_ipv4(s)
  local a, b, c, d = s:match('^(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)$')
  if not a then return nil end
  local t = { tonumber(a), tonumber(b), tonumber(c), tonumber(d) }
  for i = 1, 4 do
    if t[i] > 255 then return nil end
  end
  return t
end

-- Groups of one side of '::'; an embedded IPv4 address may end the address (RFC 4291 §2.2).
local function ipv6_groups(part, allow_v4)
  local out = {}
  if part == '' then return out end
  local fields = {}
  for f in (part .. ':'):gmatch('([^:]*):') do
    fields[#fields + 1] = f
    if #fields > 8 then return nil end
  end
  for i, f in ipairs(fields) do
    if i == #fields and allow_v4 and f:find('.', 1, true) then
      local v4 = parse_ipv4(f)
      if not v4 then return nil end
      out[#out + 1] = v4[1] * 256 + v4[2]
      out[#out + 1] = v4[3] * 256 + v4[4]
    elseif f:find('^%x%x?%x?%x?$') then
      out[#out + 1] = tonumber(f, 16)
    else
      return nil
    end
  end
  return out
end

local function parse_ipv6(s)
  if #s > 45 or s:find('[^%x:.]') then return nil end
  local dbl = s:find('::', 1, true)
  if not dbl then
    local g = ipv6_groups(s, true)
    if not g or #g ~= 8 then return nil end
    return g
  end
  local tail_text = s:sub(dbl + 2)
  if tail_text:find('::', 1, true) then return nil end
  local head, tail = ipv6_groups(s:sub(1, dbl - 1), false), ipv6_groups(tail_text, true)
  if not head or not tail or #head + #tail > 7 then return nil end
  local g = {}
  for _, v in ipairs(head) do g[#g + 1] = v end
  for _ = 1, 8 - #head - #tail do g[#g + 1] = 0 end
  for _, v in ipairs(tail) do g[#g + 1] = v end
  return g
end

-- An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is the IPv4 address: a dual-stack
-- listener reports IPv4 clients that way.
local function unmap(groups)
  for i = 1, 5 do
    if groups[i] ~= 0 then return nil end
  end
  if groups[6] ~= 65535 then return nil end
  return { math.floor(groups[7] / 256), groups[7] % 256, math.floor(groups[8] / 256), groups[8] % 256 }
end

--- Parses an IP address: 4 or 6, groups (octets or 16-bit groups); nil if not an address.
function M.parse_ip(s)
  if type(s) ~= 'string' or #s > 64 then return nil end
  s = s:match('^%[?(.-)%]?$')
  local v4 = parse_ipv4(s)
  if v4 then return 4, v4 end
  local v6 = parse_ipv6(s:lower())
  if not v6 then return nil end
  local mapped = unmap(v6)
  if mapped then return 4, mapped end
  return 6, v6
end

local POW2 = {}
for i = 0, 16 do POW2[i] = math.floor(2 ^ i) end

-- Keeps the first len bits of groups of `width` bits.
local function mask(groups, width, len)
  local out = {}
  for i = 1, #groups do
    local before = (i - 1) * width
    if before >= len then
      out[i] = 0
    elseif before + width <= len then
      out[i] = groups[i]
    else
      local unit = POW2[width - (len - before)]
      out[i] = math.floor(groups[i] / unit) * unit
    end
  end
  return out
end

local function format_ipv4(g)
  return string.format('%d.%d.%d.%d', g[1], g[2], g[3], g[4])
end

-- RFC 5952 §4: lowercase, no leading zeros, the longest run (>= 2) of zero groups
-- compressed, the first one on a tie.
local function format_ipv6(g)
  local best_at, best_len, run_at, run_len = nil, 1, nil, 0
  for i = 1, 8 do
    if g[i] == 0 then
      if run_len == 0 then run_at = i end
      run_len = run_len + 1
      if run_len > best_len then best_at, best_len = run_at, run_len end
    else
      run_len = 0
    end
  end
  local parts = {}
  local i = 1
  while i <= 8 do
    if i == best_at then
      parts[#parts + 1] = (i == 1) and ':' or ''
      i = i + best_len
      if i > 8 then parts[#parts + 1] = '' end
    else
      parts[#parts + 1] = string.format('%x', g[i])
      i = i + 1
    end
  end
  return table.concat(parts, ':')
end

M.IPV4_MIN_PREFIX = 8
M.IPV6_MIN_PREFIX = 16
M.IPV6_PREFIX_STEP = 4

--- Canonical `network/len` for an address or CIDR, or nil, msg, 'invalid'. The host bits
-- are cleared (192.0.2.7/24 -> 192.0.2.0/24). Lengths: IPv4 8..32, IPv6 16..128 in steps
-- of 4, the prefixes a lookup tries (see ip_keys).
function M.normalize_cidr(value)
  local s, err = check_raw(value, 'IP address')
  if not s then return refuse(err) end
  local addr, len_text = s:match('^([^/]+)/(%d+)$')
  if not addr then addr = s end
  if s:find('/', 1, true) and not len_text then return refuse('bad prefix length in "' .. s .. '"') end
  local family, groups
  local v4 = parse_ipv4(addr)
  if v4 then
    family, groups = 4, v4
  else
    local v6 = parse_ipv6(addr:lower())
    if not v6 then return refuse('"' .. addr .. '" is not an IP address') end
    family, groups = 6, v6
  end
  local len = tonumber(len_text or (family == 4 and 32 or 128))
  if family == 6 then
    local mapped = unmap(groups)
    if mapped and len >= 96 then family, groups, len = 4, mapped, len - 96 end
  end
  if family == 4 then
    if len < M.IPV4_MIN_PREFIX or len > 32 then
      return refuse('IPv4 prefix length must be between /8 and /32')
    end
    return format_ipv4(mask(groups, 8, len)) .. '/' .. len
  end
  if len < M.IPV6_MIN_PREFIX or len > 128 or len % M.IPV6_PREFIX_STEP ~= 0 then
    return refuse('IPv6 prefix length must be a multiple of 4 between /16 and /128')
  end
  return format_ipv6(mask(groups, 16, len)) .. '/' .. len
end

--- Logical keys of every prefix that could hold an override for this IP, longest first:
-- IPv4 /32 down to /8 (25 keys), IPv6 /128 down to /16 in steps of 4 (29 keys). They go in
-- the same MGET as the other keys, so a CIDR lookup costs no extra round trip.
function M.ip_keys(ip)
  local family, groups = M.parse_ip(ip)
  if not family then return nil, 'not an IP address', 'invalid' end
  local keys = {}
  if family == 4 then
    -- As one 32-bit number: clearing host bits is a subtraction (doubles hold it exactly).
    local n = ((groups[1] * 256 + groups[2]) * 256 + groups[3]) * 256 + groups[4]
    local step = 1
    for len = 32, M.IPV4_MIN_PREFIX, -1 do
      local net = n - n % step
      keys[#keys + 1] = string.format('ip:%d.%d.%d.%d/%d', math.floor(net / 16777216),
        math.floor(net / 65536) % 256, math.floor(net / 256) % 256, net % 256, len)
      step = step * 2
    end
  else
    for len = 128, M.IPV6_MIN_PREFIX, -M.IPV6_PREFIX_STEP do
      keys[#keys + 1] = 'ip:' .. format_ipv6(mask(groups, 16, len)) .. '/' .. len
    end
  end
  return keys
end
-- }==================================================================

local NORMALIZE = {
  domain = M.normalize_domain,
  org = M.normalize_domain,
  rcpt = M.normalize_address,
  rcpt_domain = M.normalize_domain,
  ip = M.normalize_cidr,
  arc = M.normalize_domain,
  list = M.normalize_list_id,
}

--- Logical key for an entry: `<kind>:<value>`, or `set:<name>:<member>` when set is given
-- (kind rcpt or rcpt_domain). Values are normalized; anything that could inject into a key
-- is refused: nil, msg, 'invalid'.
function M.key(kind, value, set)
  if set ~= nil then
    local name, err = M.normalize_set_name(set)
    if not name then return nil, err, 'invalid' end
    local member
    if kind == 'rcpt' then
      member, err = M.normalize_address(value, 'recipient')
    elseif kind == 'rcpt_domain' then
      member, err = M.normalize_domain(value, 'recipient domain')
    else
      return refuse('a recipient set holds rcpt or rcpt_domain entries, not ' .. tostring(kind))
    end
    if not member then return nil, err, 'invalid' end
    return 'set:' .. name .. ':' .. member
  end
  local normalize = NORMALIZE[kind]
  if not normalize then return refuse('unknown kind "' .. tostring(kind) .. '"') end
  local v, err = normalize(value, kind)
  if not v then return nil, err, 'invalid' end
  return kind .. ':' .. v
end

--- Splits a logical key: kind, value, set (set only for set membership, whose kind is
-- then rcpt or rcpt_domain). nil for a string that is not a well-formed logical key.
function M.parse_key(key)
  if type(key) ~= 'string' then return nil end
  local kind, rest = key:match('^([%w_]+):(.+)$')
  if not kind then return nil end
  if kind == 'set' then
    local name, member = rest:match('^([^:]+):(.+)$')
    if not name then return nil end
    local mkind = member:find('@', 1, true) and 'rcpt' or 'rcpt_domain'
    if M.key(mkind, member, name) ~= key then return nil end
    return mkind, member, name
  end
  if M.key(kind, rest) ~= key then return nil end
  return kind, rest
end

-- A cheap check of keys handed to get_many (they come from policy lookups, built by
-- M.key): a string with none of the characters check_raw refuses.
local function check_lookup_keys(keys)
  if type(keys) ~= 'table' then return nil, 'keys must be an array', 'invalid' end
  if #keys > M.MAX_KEYS then
    return nil, string.format('more than %d keys in one lookup', M.MAX_KEYS), 'limit'
  end
  for i = 1, #keys do
    local k = keys[i]
    if type(k) ~= 'string' or #k > 2 * M.MAX_VALUE_LEN or k:find('[%c%s{}\128-\255]') then
      return nil, 'lookup key ' .. i .. ' is not a valid key', 'invalid'
    end
  end
  return true
end

local function check_ttl(ttl)
  if ttl == nil or ttl == 0 then return true end
  if type(ttl) ~= 'number' or ttl ~= ttl or ttl < 1 or ttl > M.MAX_TTL or ttl % 1 ~= 0 then
    return nil, 'ttl must be a whole number of seconds between 1 and ' .. M.MAX_TTL, 'invalid'
  end
  return true
end

-- JSON null (cjson.null) carries no information in an entry: drop it, so the policy sees
-- absent fields rather than userdata.
local function drop_nulls(t, depth)
  for k, v in pairs(t) do
    if v == cjson.null then
      t[k] = nil
    elseif type(v) == 'table' and depth < 2 then
      drop_nulls(v, depth + 1)
    end
  end
  return t
end

local function encode_entry(entry)
  if type(entry) ~= 'table' then return nil, 'entry must be a table', 'invalid' end
  local json, err = cjson.encode(entry)
  if not json then return nil, 'entry cannot be stored: ' .. tostring(err), 'invalid' end
  if #json > M.MAX_ENTRY_BYTES then
    return nil, 'entry is larger than ' .. M.MAX_ENTRY_BYTES .. ' bytes', 'invalid'
  end
  return json
end

local function decode_entry(json, key, log)
  if type(json) ~= 'string' then return nil end
  if #json > M.MAX_ENTRY_BYTES then
    if log then log:warn('override store: entry %s is too large, ignored', key) end
    return nil
  end
  local entry = cjson.decode(json)
  if type(entry) ~= 'table' then
    if log then log:warn('override store: entry %s is not a JSON object, ignored', key) end
    return nil
  end
  return drop_nulls(entry, 0)
end

local function kind_matches(key, kind)
  if kind == nil then return true end
  if kind == 'set' then return key:sub(1, 4) == 'set:' end
  return key:sub(1, #kind + 1) == kind .. ':'
end

local function list_item(key, entry, ttl)
  local kind, value, set = M.parse_key(key)
  if not kind then return nil end
  return { key = key, kind = kind, value = value, set = set, entry = entry, ttl = ttl }
end

local function check_list_kind(kind)
  if kind ~= nil and not M.KINDS[kind] then
    return nil, 'unknown kind "' .. tostring(kind) .. '"', 'invalid'
  end
  return true
end

-- get_many_async for stores whose get_many is synchronous: the callback runs before
-- get_many_async returns.
local function sync_get_many_async(self, keys, cb)
  local found, err, code = self:get_many(keys)
  cb(found, err, code)
end

-- {==================================================================
-- In-memory store
-- ===================================================================
local Memory = {}
Memory.__index = Memory
Memory.get_many_async = sync_get_many_async

--- The in-process store (no Redis configured; tests). opts.clock: function -> seconds
-- (default os.time), for TTLs.
function M.memory(opts)
  opts = opts or {}
  return setmetatable({ data = {}, clock = opts.clock or os.time, log = opts.log, kind = 'memory' },
    Memory)
end

function Memory:_live(key)
  local item = self.data[key]
  if item and item.expires and item.expires <= self.clock() then
    self.data[key] = nil
    return nil
  end
  return item
end

function Memory:get_many(keys)
  local ok, err, code = check_lookup_keys(keys)
  if not ok then return nil, err, code end
  local found = {}
  for i = 1, #keys do
    local item = self:_live(keys[i])
    if item then found[keys[i]] = decode_entry(item.json, keys[i], self.log) end
  end
  return found
end

function Memory:add(key, entry, ttl)
  if not M.parse_key(key) then return nil, 'not a valid override key', 'invalid' end
  local ok, err, code = check_ttl(ttl)
  if not ok then return nil, err, code end
  local json
  json, err, code = encode_entry(entry)
  if not json then return nil, err, code end
  self.data[key] = { json = json, expires = (ttl and ttl > 0) and (self.clock() + ttl) or nil }
  return true
end

function Memory:del(key)
  if not M.parse_key(key) then return nil, 'not a valid override key', 'invalid' end
  local existed = self:_live(key) ~= nil
  self.data[key] = nil
  return existed
end

function Memory:list(kind)
  local ok, err, code = check_list_kind(kind)
  if not ok then return nil, err, code end
  local keys = {}
  for key in pairs(self.data) do
    if kind_matches(key, kind) and self:_live(key) then keys[#keys + 1] = key end
  end
  table.sort(keys)
  local out = {}
  for i = 1, math.min(#keys, M.MAX_LIST) do
    local item = self.data[keys[i]]
    local ttl = item.expires and (item.expires - self.clock()) or nil
    out[#out + 1] = list_item(keys[i], decode_entry(item.json, keys[i], self.log), ttl)
  end
  return out
end

function Memory.close() end
-- }==================================================================

-- Key prefix and hash tag: `<prefix>{<tag>}:` in front of every logical key, so every key
-- of the store hashes to one Redis Cluster slot (MGET and MULTI work there).
local function key_space(opts)
  local prefix = opts.prefix == nil and M.DEFAULT_PREFIX or opts.prefix
  local tag = opts.tag == nil and M.DEFAULT_TAG or opts.tag
  if type(prefix) ~= 'string' or #prefix > M.MAX_PREFIX_LEN or prefix:find('[%c%s{}\128-\255]') then
    error('dmarc.site.store: prefix must be at most ' .. M.MAX_PREFIX_LEN ..
      ' characters without whitespace or braces', 3)
  end
  if type(tag) ~= 'string' or tag == '' or #tag > M.MAX_PREFIX_LEN or not tag:find('^[%w_.:-]+$') then
    error('dmarc.site.store: tag must be 1-' .. M.MAX_PREFIX_LEN .. ' letters, digits, "_", ".", ":", "-"', 3)
  end
  local head = prefix .. '{' .. tag .. '}:'
  return head, head .. 'index'
end

--- The Redis key of a logical key, for a prefix and tag (defaults when nil).
function M.redis_key(logical, prefix, tag)
  local head = key_space{ prefix = prefix, tag = tag }
  return head .. logical
end

local function decode_values(keys, values, log)
  local found = {}
  for i = 1, #keys do
    local v = values[i]
    if type(v) == 'string' then found[keys[i]] = decode_entry(v, keys[i], log) end
  end
  return found
end

-- {==================================================================
-- Redis store (blocking, dmarc.redis)
-- ===================================================================
local Redis = {}
Redis.__index = Redis
Redis.get_many_async = sync_get_many_async

-- The one Redis connector (dmarc.redis.connect), loaded when the store first connects.
local function default_connect(conf)
  return require('dmarc.redis.connect').open(conf)
end

--- A store in Redis. opts: host, port, path, timeout (seconds, default 0.5), password, db,
-- prefix ('dmarc:'), tag ('ovr'), backoff (seconds Redis is skipped after a failure,
-- default 10), clock (os.time), log (a dmarc.util.log logger), connect (conf -> conn: tests, or a
-- caller's own connection such as a dmarc.redis.cluster router, whose every command of one
-- decision addresses the one {tag} slot), where (how messages name the server, default
-- host:port).
function M.redis(opts)
  opts = opts or {}
  local head, index = key_space(opts)
  local backoff = opts.backoff == nil and M.DEFAULT_BACKOFF or opts.backoff
  if type(backoff) ~= 'number' or backoff < 0 then
    error('dmarc.site.store: backoff must be >= 0 seconds', 2)
  end
  return setmetatable({
    kind = 'redis',
    head = head,
    index = index,
    conf = {
      host = opts.host, port = opts.port, path = opts.path, password = opts.password, db = opts.db,
      timeout = opts.timeout or M.DEFAULT_TIMEOUT,
    },
    backoff = backoff,
    clock = opts.clock or os.time,
    log = opts.log,
    connect = opts.connect or default_connect,
    where = opts.where,
    conn = nil,
    down_until = nil,
    last_error = nil,
  }, Redis)
end

function Redis:_where()
  if self.where then return self.where end
  local c = self.conf
  if c.path then return 'unix:' .. c.path end
  return (c.host or '127.0.0.1') .. ':' .. tostring(c.port or 6379)
end

function Redis:_drop()
  if self.conn then pcall(self.conn.close, self.conn) end
  self.conn = nil
end

function Redis:_mark_down(err)
  self:_drop()
  if not self.down_until and self.log then
    self.log:warn('redis %s unavailable (%s); overrides from it are skipped for %d s',
      self:_where(), tostring(err), self.backoff)
  end
  self.down_until = self.clock() + self.backoff
  self.last_error = err
end

-- The connection, or nil, msg, code. While backing off, no connection is attempted, so a
-- dead Redis costs one timeout per backoff period, not one per message.
function Redis:_connect()
  if self.conn then return self.conn, false end
  if self.down_until then
    if self.clock() < self.down_until then
      return nil, 'Redis at ' .. self:_where() .. ' is unavailable (' .. tostring(self.last_error) ..
        '); retrying later', 'unavailable'
    end
  end
  local conn, err, code = self.connect(self.conf)
  if not conn then
    self:_mark_down(err)
    return nil, 'cannot connect to Redis at ' .. self:_where() .. ': ' .. tostring(err), code or 'io'
  end
  if self.down_until and self.log then self.log:info('redis %s is back', self:_where()) end
  self.down_until, self.last_error = nil, nil
  self.conn = conn
  return conn, true
end

-- dmarc.redis says 'io' for every broken connection (an unreadable reply too).
local function is_io(code)
  return code == 'io'
end

-- Runs fn(conn) -> result or nil, msg, code. A reused connection that fails with an I/O
-- error may only be stale (the server restarted since): one immediate retry on a fresh
-- connection, then back off.
function Redis:_run(fn)
  local conn, fresh_or_err, code = self:_connect()
  if not conn then return nil, fresh_or_err, code end
  local r, err
  r, err, code = fn(conn)
  if r == nil and is_io(code) then
    if fresh_or_err then
      self:_mark_down(err)
      return nil, err, code
    end
    self:_drop()
    conn, fresh_or_err, code = self:_connect()
    if not conn then return nil, fresh_or_err, code end
    r, err, code = fn(conn)
    if r == nil and is_io(code) then self:_mark_down(err) end
  end
  return r, err, code
end

function Redis:get_many(keys)
  local ok, err, code = check_lookup_keys(keys)
  if not ok then return nil, err, code end
  if #keys == 0 then return {} end
  local args = { 'MGET' }
  for i = 1, #keys do args[i + 1] = self.head .. keys[i] end
  local values
  values, err, code = self:_run(function(conn) return conn:command((table.unpack or unpack)(args)) end)
  if not values then return nil, err, code end
  if type(values) ~= 'table' then return nil, 'unexpected MGET reply', 'redis' end
  return decode_values(keys, values, self.log)
end

-- Checks every reply of a pipeline for error markers: true or nil, msg, 'redis'.
local function pipeline_ok(replies)
  for i = 1, #replies do
    local r = replies[i]
    if type(r) == 'table' and r.err then return nil, r.err, 'redis' end
  end
  return true
end

--- Adds or replaces an entry; ttl in seconds (nil or 0: no expiry). One round trip:
-- MULTI, SET (EX), ZADD to the index (score = expiry time, +inf without one), EXEC.
function Redis:add(key, entry, ttl)
  if not M.parse_key(key) then return nil, 'not a valid override key', 'invalid' end
  local ok, err, code = check_ttl(ttl)
  if not ok then return nil, err, code end
  local json
  json, err, code = encode_entry(entry)
  if not json then return nil, err, code end
  local set = { 'SET', self.head .. key, json }
  local score = '+inf'
  if ttl and ttl > 0 then
    set[4], set[5] = 'EX', string.format('%d', ttl)
    score = string.format('%d', self.clock() + ttl)
  end
  local replies
  replies, err, code = self:_run(function(conn)
    return conn:pipeline{ { 'MULTI' }, set, { 'ZADD', self.index, score, key }, { 'EXEC' } }
  end)
  if not replies then return nil, err, code end
  ok, err, code = pipeline_ok(replies)
  if not ok then return nil, err, code end
  local exec = replies[4]
  if type(exec) ~= 'table' then return nil, 'transaction aborted', 'redis' end
  ok, err, code = pipeline_ok(exec)
  if not ok then return nil, err, code end
  return true
end

function Redis:del(key)
  if not M.parse_key(key) then return nil, 'not a valid override key', 'invalid' end
  local replies, err, code = self:_run(function(conn)
    return conn:pipeline{ { 'DEL', self.head .. key }, { 'ZREM', self.index, key } }
  end)
  if not replies then return nil, err, code end
  local ok
  ok, err, code = pipeline_ok(replies)
  if not ok then return nil, err, code end
  return replies[1] == 1
end

--- Lists live entries. The index is a sorted set of logical keys scored by expiry time;
-- entries whose time has passed are removed from it first, and every key is then read
-- back, so an entry that expired (or was deleted behind our back) is never listed.
function Redis:list(kind)
  local ok, err, code = check_list_kind(kind)
  if not ok then return nil, err, code end
  local now = string.format('%d', self.clock())
  local replies
  replies, err, code = self:_run(function(conn)
    return conn:pipeline{
      { 'ZREMRANGEBYSCORE', self.index, '-inf', '(' .. now },
      { 'ZRANGEBYSCORE', self.index, now, '+inf', 'LIMIT', '0', string.format('%d', M.MAX_LIST) },
    }
  end)
  if not replies then return nil, err, code end
  ok, err, code = pipeline_ok(replies)
  if not ok then return nil, err, code end
  local keys = {}
  for _, key in ipairs(type(replies[2]) == 'table' and replies[2] or {}) do
    if type(key) == 'string' and kind_matches(key, kind) and M.parse_key(key) then keys[#keys + 1] = key end
  end
  table.sort(keys)
  local out, stale = {}, {}
  for first = 1, #keys, M.LIST_CHUNK do
    local cmds = {}
    local last = math.min(first + M.LIST_CHUNK - 1, #keys)
    for i = first, last do
      cmds[#cmds + 1] = { 'GET', self.head .. keys[i] }
      cmds[#cmds + 1] = { 'TTL', self.head .. keys[i] }
    end
    replies, err, code = self:_run(function(conn) return conn:pipeline(cmds) end)
    if not replies then return nil, err, code end
    for i = first, last do
      local j = 2 * (i - first) + 1
      local value, ttl = replies[j], replies[j + 1]
      if type(value) == 'string' then
        out[#out + 1] = list_item(keys[i], decode_entry(value, keys[i], self.log),
          (type(ttl) == 'number' and ttl >= 0) and ttl or nil)
      else
        stale[#stale + 1] = keys[i]
      end
    end
  end
  if #stale > 0 then
    -- Best effort: an index member whose key is gone (deleted with redis-cli).
    self:_run(function(conn) return conn:command('ZREM', self.index, (table.unpack or unpack)(stale)) end)
  end
  return out
end

function Redis:close()
  self:_drop()
end
-- }==================================================================

-- {==================================================================
-- Callback store: lookups through a host's asynchronous Redis client
-- ===================================================================
local Callback = {}
Callback.__index = Callback

--- A lookup-only store over an asynchronous MGET supplied by the host, e.g. in rspamd:
--   store.callback{ prefix = ..., mget = function(redis_keys, done)
--     lua_redis.redis_make_request(task, redis_params, redis_keys[1], false,
--       function(err, data) done(err, data) end, 'MGET', redis_keys)
--   end }
-- done(err, values): values an array aligned with redis_keys (strings; anything else means
-- absent). Entries are managed with `dmarc override` (store.redis) meanwhile.
function M.callback(opts)
  opts = opts or {}
  if type(opts.mget) ~= 'function' then error('dmarc.site.store.callback: mget function required', 2) end
  local head, index = key_space(opts)
  return setmetatable({ kind = 'callback', head = head, index = index, mget = opts.mget, log = opts.log },
    Callback)
end

function Callback.get_many()
  return nil, 'this store only answers asynchronously (get_many_async)', 'unsupported'
end

function Callback:get_many_async(keys, cb)
  local ok, err, code = check_lookup_keys(keys)
  if not ok then return cb(nil, err, code) end
  if #keys == 0 then return cb({}) end
  local physical = {}
  for i = 1, #keys do physical[i] = self.head .. keys[i] end
  local called = false
  local function done(mget_err, values)
    if called then return end
    called = true
    if mget_err or type(values) ~= 'table' then
      return cb(nil, 'redis lookup failed: ' .. tostring(mget_err or 'no values'), 'unavailable')
    end
    return cb(decode_values(keys, values, self.log))
  end
  local ran, perr = pcall(self.mget, physical, done)
  if not ran and not called then
    called = true
    return cb(nil, 'redis lookup failed: ' .. tostring(perr), 'unavailable')
  end
end

function Callback.add()
  return nil, 'this store is lookup-only', 'unsupported'
end
Callback.del = Callback.add
Callback.list = Callback.add
function Callback.close() end
-- }==================================================================

return M
