--- Redis key names, one place for every side: the receiver's report rows (dmarc.report.*),
-- the domain owner's side (dmarc.owner.*) and the commands read and write the same keys
-- through these functions, and validate the parts that go into a key here. The schema is
-- documented in docs/report-keys.md and docs/redis-keys.md.
--
--   local keys = require 'dmarc.redis.keys'
--   local k = keys.report_day('dmarc:', 'example.com', '20251121')  --> { rows = ..., meta = ... }
-- @module dmarc.redis.keys

local time = require 'dmarc.util.time'

local M = {}

--- The key prefix when none is configured.
M.DEFAULT_PREFIX = 'dmarc:'
--- Longest key prefix.
M.MAX_PREFIX = 64
--- Longest row id (idempotent writes).
M.MAX_ROW_ID = 64

-- {==================================================================
-- The parts of a key
-- ===================================================================

--- A policy domain or other host name safe to put in a key, a glob pattern
-- and XML: lowercase LDH labels (underscore allowed, as DNS allows it),
-- 1..253 characters, labels 1..63 [FROM-2]. Anything else (braces, spaces,
-- CR/LF, glob characters) is refused, never escaped, because the domain is
-- part of the key's hash tag.
function M.valid_domain(d)
  if type(d) ~= 'string' or #d == 0 or #d > 253 then return false end
  if d:find('[^a-z0-9_%.%-]') then return false end
  if d:sub(1, 1) == '.' or d:sub(-1) == '.' or d:find('..', 1, true) then return false end
  for label in d:gmatch('[^.]+') do
    if #label > 63 then return false end
  end
  return true
end

--- A key prefix: word characters and `:_.-`, at most max_prefix bytes. It
-- takes part in SCAN MATCH patterns, so glob characters are refused.
function M.valid_prefix(p)
  return type(p) == 'string' and #p <= M.MAX_PREFIX and not p:find('[^%w:_%.%-]')
end

-- IPv4 dotted quad or an IPv6 text form (RFC 3986 §3.2.2 words); the
-- check is about safety and shape, not about reserved ranges.
function M.valid_ip(ip)
  if type(ip) ~= 'string' or #ip > 45 then return false end
  local a, b, c, d = ip:match('^(%d+)%.(%d+)%.(%d+)%.(%d+)$')
  if a then
    for _, o in ipairs({ a, b, c, d }) do
      if #o > 3 or tonumber(o) > 255 then return false end
    end
    return true
  end
  if not ip:find(':', 1, true) or ip:find('[^%x:%.]') then return false end
  return select(2, ip:gsub(':', '')) <= 7
end

-- }==================================================================

-- {==================================================================
-- Report rows (docs/report-keys.md)
-- ===================================================================

--- UTC day bucket of a time: "YYYYMMDD".
function M.day_of(t)
  return os.date('!%Y%m%d', math.floor(t))
end

--- Start of the UTC day "YYYYMMDD" in epoch seconds; nil if malformed.
M.day_start = time.day_start

--- Keys of one policy domain and day. The `{domain}` hash tag puts every
-- key of a domain in one Redis Cluster slot, so a message's commands and a
-- report's reads and deletes never cross slots.
function M.report_day(prefix, policy_domain, day)
  local base = prefix .. 'rpt:{' .. policy_domain .. '}:' .. day
  return { rows = base, meta = base .. ':meta' }
end

--- The key that remembers one written row id (idempotent writes, section
-- "Retries" of docs/report-keys.md). Same hash tag as the rows, so the row
-- script may touch it on a Redis Cluster.
function M.seen_key(prefix, policy_domain, id)
  return prefix .. 'rpt:{' .. policy_domain .. '}:seen:' .. id
end

--- A row id: letters, digits, `.`, `_`, `-`, at most max_row_id bytes
-- (it is part of a key, so nothing that could change the key's meaning).
function M.valid_row_id(id)
  return type(id) == 'string' and #id > 0 and #id <= M.MAX_ROW_ID
    and not id:find('[^%w%._%-]')
end

--- The delivery-state hash of one policy domain and period (written by
-- `dmarc report send`, read by `generate` to skip periods already done).
function M.state_key(prefix, policy_domain, begin, finish)
  -- %d: numbers read back from a JSON manifest are floats on Lua 5.4.
  return string.format('%srpt:{%s}:sent:%d-%d', prefix, policy_domain, begin, finish)
end

--- The SCAN MATCH pattern that finds every rows key of a day.
function M.scan_pattern(prefix, day)
  return prefix .. 'rpt:{*}:' .. day
end

--- The policy domain of a rows key found by SCAN, or nil.
function M.domain_of_key(prefix, key)
  if key:sub(1, #prefix) ~= prefix then return nil end
  local d = key:sub(#prefix + 1):match('^rpt:{([^}]*)}:%d+$')
  if d and M.valid_domain(d) then return d end
  return nil
end

-- }==================================================================

-- {==================================================================
-- Ingested reports (docs/ingest.md)
-- ===================================================================

--- Keys of one policy domain and day (docs/ingest.md). The {DOMAIN} hash
-- tag keeps every key of a domain in one Cluster slot, so the store script
-- is legal on a Cluster.
function M.ingest_day(prefix, policy_domain, day)
  local base = prefix .. 'ing:{' .. policy_domain .. '}:' .. day
  return { rows = base, reports = base .. ':rep' }
end

--- The staging hash of one report being stored in pieces.
function M.ingest_stage_key(prefix, policy_domain, token)
  return prefix .. 'ing:{' .. policy_domain .. '}:stage:' .. token
end

--- SCAN pattern for every rows key (any day).
function M.ingest_scan_pattern(prefix)
  return prefix .. 'ing:{*}:????????'
end

--- Policy domain and day of a rows key found by SCAN, or nil.
function M.parse_ingest_key(prefix, key)
  if key:sub(1, #prefix) ~= prefix then return nil end
  local d, day = key:sub(#prefix + 1):match('^ing:{([^}]*)}:(%d%d%d%d%d%d%d%d)$')
  if d and M.valid_domain(d) then return d, day end
  return nil
end

--- The failure reports received for a policy domain and day: one hash, in
-- the same {DOMAIN} slot as the domain's aggregate data.
function M.failure_day(prefix, policy_domain, day)
  return prefix .. 'fail:{' .. policy_domain .. '}:' .. day
end

--- SCAN pattern for every failure-report key (any day).
function M.failure_scan_pattern(prefix)
  return prefix .. 'fail:{*}:????????'
end

--- Policy domain and day of a failure-report key found by SCAN, or nil.
function M.parse_failure_key(prefix, key)
  if key:sub(1, #prefix) ~= prefix then return nil end
  local d, day = key:sub(#prefix + 1):match('^fail:{([^}]*)}:(%d%d%d%d%d%d%d%d)$')
  if d and M.valid_domain(d) then return d, day end
  return nil
end

-- }==================================================================

return M
