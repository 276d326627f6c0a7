--- `dmarc override add|del|list`: manage the override store in Redis.
-- Exit status: 0 done, 1 the store failed (or the entry to delete is absent), 2 usage or
-- invalid input. Key schema: docs/redis-keys.md.
-- @module dmarc.cli.override
local store = require 'dmarc.site.store'
local policy = require 'dmarc.site.policy'
local common = require 'dmarc.cli.common'
local connect = require 'dmarc.redis.connect'
local options = require 'dmarc.util.options'

local M = {}

local USAGE = [[
usage: dmarc override add KIND VALUE [--action ACTION] [--reason REASON] [--comment TEXT]
                                      [--ttl SECONDS] [--set NAME]
       dmarc override del KIND VALUE [--set NAME]
       dmarc override list [KIND] [--json]

Manages site overrides and recipient sets kept in Redis (docs/redis-keys.md).

KIND     domain (exact author domain), org (organizational domain), rcpt (recipient
         address), rcpt_domain, ip (address or CIDR), arc (trusted ARC sealer domain),
         list (List-Id); `list` also accepts `set`
ACTION   accept (default: a failing message is delivered normally), quarantine (never
         more than quarantine), folder:NAME, score:N, reject, defer
REASON   local_policy (default; mailing_list for KIND list), trusted_forwarder,
         mailing_list, other (needs --comment); shown in aggregate reports (RFC 9990)
--ttl    seconds (or with a unit: 90m, 12h, 30d); without it the entry never expires
--set    add VALUE (KIND rcpt or rcpt_domain) to the named recipient set instead

options:
  --json                     list: one JSON object per entry
  --redis-tag TAG            hash tag of the override store's keys (default ovr)
]] .. common.REDIS_HELP .. [[
exit status: 0 done, 1 the store failed (or the entry to delete is absent), 2 usage.
]]

local VALUE_OPTIONS = {
  action = true, reason = true, comment = true, ttl = true, set = true,
  ['redis-tag'] = true,
}
for name in pairs(connect.OPTIONS) do VALUE_OPTIONS[name] = true end
local FLAG_OPTIONS = { json = true, help = true }

local UNIT = { s = 1, m = 60, h = 3600, d = 86400 }

local function usage_error(sys, msg)
  return common.usage_fail('dmarc override', msg, sys.stderr)
end

-- The store failed (or has no such entry): exit status 1.
local function store_error(sys, msg)
  return common.fail('dmarc override', msg, 1, sys.stderr)
end

local function parse_args(args)
  return options.parse(args, { values = VALUE_OPTIONS, flags = FLAG_OPTIONS })
end

local function parse_ttl(s)
  if s == nil then return nil end
  local n, unit = s:match('^(%d+)([smhd]?)$')
  if not n then return nil, 'bad --ttl "' .. s .. '"' end
  local ttl = tonumber(n) * UNIT[unit ~= '' and unit or 's']
  if ttl < 1 or ttl > store.MAX_TTL then return nil, '--ttl out of range' end
  return ttl
end

local function describe_entry(entry)
  if type(entry) ~= 'table' then return '' end
  local parts = {}
  if entry.treat and type(entry.treat) == 'table' then
    local t = entry.treat
    local text = tostring(t.action)
    if t.action == 'folder' then
      text = 'folder:' .. tostring(t.folder)
    elseif t.action == 'score' then
      text = 'score:' .. string.format('%g', tonumber(t.score) or 0)
    end
    parts[#parts + 1] = 'action=' .. text
  elseif entry.at_most then
    parts[#parts + 1] = 'action=' .. (entry.at_most == 'none' and 'accept' or tostring(entry.at_most))
  end
  if entry.reason then parts[#parts + 1] = 'reason=' .. tostring(entry.reason) end
  if entry.comment then parts[#parts + 1] = string.format('comment=%q', tostring(entry.comment)) end
  return table.concat(parts, ' ')
end

-- The override store where the Redis options point. On a Redis Cluster every key of the
-- store carries the one {TAG} hash tag, so the router (dmarc.redis.cluster) sends each
-- command to that slot's master.
local function open_store(opts, sys)
  if sys.store then return sys.store end
  local tag = opts['redis-tag']
  if tag and not tag:find('^[%w_.:-]+$') then return nil, '--redis-tag: letters, digits and "_.:-"', 2 end
  local s, err = connect.settings(opts, nil, sys.getenv, connect.DEFAULT_ADDRESS)
  if not s then return nil, err, 2 end
  local conf = { prefix = s.prefix, tag = tag, timeout = s.timeout, backoff = 0 }
  if s.cluster then
    conf.where = 'cluster ' .. table.concat(s.cluster, ',')
    conf.connect = function() return connect.open(s) end
  else
    conf.host, conf.port, conf.path = s.host, s.port, s.path
    conf.db, conf.password = s.db, s.password
  end
  local ok, st = pcall(store.redis, conf)
  if not ok then return nil, (tostring(st):gsub('^[^:]*:%d+: ', '')), 2 end
  return st
end

local function cmd_add(opts, words, sys)
  if #words ~= 3 then return usage_error(sys, 'add takes KIND and VALUE') end
  local kind, value = words[2], words[3]
  local key, err = store.key(kind, value, opts.set)
  if not key then return usage_error(sys, err) end
  local entry
  if opts.set then
    if opts.action or opts.reason then
      return usage_error(sys, '--set adds a member; the set\'s treatment is in the site script')
    end
    entry = {}
    if opts.comment then
      if opts.comment:find('[%c]') or #opts.comment > policy.MAX_COMMENT_LEN then
        return usage_error(sys, 'comment must be one line of text')
      end
      entry.comment = opts.comment
    end
  else
    entry, err = policy.entry_from_action(kind, opts.action, opts.reason, opts.comment)
    if not entry then return usage_error(sys, err) end
  end
  local ttl
  ttl, err = parse_ttl(opts.ttl)
  if err then return usage_error(sys, err) end
  local st, serr, scode = open_store(opts, sys)
  if not st then return scode == 2 and usage_error(sys, serr) or 1 end
  local ok, aerr = st:add(key, entry, ttl)
  st:close()
  if not ok then
    return store_error(sys, tostring(aerr))
  end
  sys.stdout:write('added ', key, ttl and (' (expires in ' .. ttl .. ' s)') or '', '\n')
  return 0
end

local function cmd_del(opts, words, sys)
  if #words ~= 3 then return usage_error(sys, 'del takes KIND and VALUE') end
  local key, err = store.key(words[2], words[3], opts.set)
  if not key then return usage_error(sys, err) end
  local st, serr, scode = open_store(opts, sys)
  if not st then return scode == 2 and usage_error(sys, serr) or 1 end
  local removed, derr = st:del(key)
  st:close()
  if removed == nil then
    return store_error(sys, tostring(derr))
  end
  if not removed then
    return store_error(sys, 'no entry ' .. key)
  end
  sys.stdout:write('deleted ', key, '\n')
  return 0
end

local function cmd_list(opts, words, sys)
  if #words > 2 then return usage_error(sys, 'list takes at most a KIND') end
  local kind = words[2]
  if kind and not store.KINDS[kind] then return usage_error(sys, 'unknown kind "' .. kind .. '"') end
  local st, serr, scode = open_store(opts, sys)
  if not st then return scode == 2 and usage_error(sys, serr) or 1 end
  local items, err = st:list(kind)
  st:close()
  if not items then
    return store_error(sys, tostring(err))
  end
  local cjson = opts.json and require 'cjson'
  for _, it in ipairs(items) do
    if cjson then
      sys.stdout:write(cjson.encode{ kind = it.kind, value = it.value, set = it.set, entry = it.entry or {},
        ttl = it.ttl }, '\n')
    else
      local cols = { it.kind, it.value }
      if it.set then cols[#cols + 1] = 'set=' .. it.set end
      local d = describe_entry(it.entry)
      if d ~= '' then cols[#cols + 1] = d end
      if it.ttl then cols[#cols + 1] = string.format('ttl=%ds', it.ttl) end
      sys.stdout:write(table.concat(cols, ' '), '\n')
    end
  end
  return 0
end

--- Runs the command. sys (for tests): {stdout=, stderr=, getenv=, store=} — a given store
-- replaces Redis.
function M.run(args, sys)
  sys = sys or {}
  sys.stdout = sys.stdout or io.stdout
  sys.stderr = sys.stderr or io.stderr
  sys.getenv = sys.getenv or os.getenv
  local opts, words = parse_args(args or {})
  if not opts then return usage_error(sys, words) end
  if opts.help then
    sys.stdout:write(USAGE)
    return 0
  end
  local sub = words[1]
  if sub == 'add' then return cmd_add(opts, words, sys) end
  if sub == 'del' or sub == 'delete' then return cmd_del(opts, words, sys) end
  if sub == 'list' then return cmd_list(opts, words, sys) end
  if sub == nil then
    sys.stderr:write(USAGE)
    return 2
  end
  return usage_error(sys, 'unknown subcommand "' .. sub .. '" (add, del, list)')
end

return M
