--- rspamd_it: helpers for tests/integration/rspamd_spec.lua: scan corpus messages with
-- rspamc against the rspamd instances that tests/integration/setup-rspamd.sh started, and
-- read Redis.
-- Everything runs inside the test run's network namespace (loopback only).
local cjson = require 'cjson'

local M = {}

M.corpus = os.getenv('DMARC_TEST_RSPAMD_CORPUS')
M.redis = os.getenv('DMARC_TEST_REDIS') or '127.0.0.1:16379'
M.instances = {
  builtin = os.getenv('DMARC_TEST_RSPAMD_BUILTIN'),
  engine = os.getenv('DMARC_TEST_RSPAMD_ENGINE'),
  strict = os.getenv('DMARC_TEST_RSPAMD_STRICT'),
  legacy = os.getenv('DMARC_TEST_RSPAMD_LEGACY'),
  broken = os.getenv('DMARC_TEST_RSPAMD_BROKEN'),
  sandbox = os.getenv('DMARC_TEST_RSPAMD_SANDBOX'),
}
M.setup_error = os.getenv('DMARC_TEST_RSPAMD_ERROR') or ''

--- Quote one shell word.
function M.q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- Run a command, return its whole stdout and whether it exited 0.
function M.run(cmd)
  local p = assert(io.popen(cmd, 'r'))
  local out = p:read('*a')
  local ok = p:close()
  return out, ok == true or ok == 0
end

--- Scan one corpus message. @case: {file=, ip=, from=, helo=, rcpt= (string or array),
-- headers = {NAME = value} (extra HTTP request headers)}. Returns the decoded /checkv2
-- reply (rspamc --json) with helpers: sym(name) -> symbol table or nil.
function M.scan(addr, case)
  assert(addr, 'rspamd instance address missing (setup failed?)')
  local args = { 'rspamc', '-h', M.q(addr), '-t', '20', '--json' }
  if case.ip then args[#args + 1] = '--ip ' .. M.q(case.ip) end
  if case.from then args[#args + 1] = '--from ' .. M.q(case.from) end
  args[#args + 1] = '--helo ' .. M.q(case.helo or 'mx.sender.test')
  local rcpts = type(case.rcpt) == 'table' and case.rcpt or { case.rcpt or 'bob@rcpt.test' }
  for _, r in ipairs(rcpts) do args[#args + 1] = '--rcpt ' .. M.q(r) end
  for k, v in pairs(case.headers or {}) do
    args[#args + 1] = '--header ' .. M.q(k .. '=' .. v)
  end
  args[#args + 1] = 'symbols'
  args[#args + 1] = M.q(M.corpus .. '/' .. case.file)
  local out = M.run(table.concat(args, ' ') .. ' 2>&1')
  local ok, reply = pcall(cjson.decode, out)
  if not ok or type(reply) ~= 'table' then
    error('rspamc gave no JSON reply for ' .. case.file .. ': ' .. out, 2)
  end
  reply.symbols = reply.symbols or {}
  return reply
end

--- Options of a symbol in a reply (array, possibly empty), or nil when absent.
function M.options(reply, name)
  local s = reply.symbols[name]
  if not s then return nil end
  return s.options or {}
end

--- Names of the symbols of a reply that start with @prefix, sorted.
function M.symbols_like(reply, prefix)
  local out = {}
  for name in pairs(reply.symbols) do
    if name:sub(1, #prefix) == prefix then out[#out + 1] = name end
  end
  table.sort(out)
  return out
end

--- Headers the scan asked the MTA to add (milter block): NAME -> value (first instance).
function M.added_headers(reply)
  local out = {}
  local add = reply.milter and reply.milter.add_headers or {}
  for name, v in pairs(add) do
    if type(v) == 'table' and v.value then
      out[name] = v.value
    elseif type(v) == 'table' and type(v[1]) == 'table' then
      out[name] = v[1].value
    else
      out[name] = v
    end
  end
  return out
end

--- redis-cli against the test Redis (db @db), one command; returns trimmed lines.
function M.redis_cli(db, ...)
  local host, port = M.redis:match('^(.*):(%d+)$')
  local args = { 'redis-cli', '-h', M.q(host), '-p', M.q(port), '-n', M.q(db), '--raw' }
  for _, a in ipairs({ ... }) do args[#args + 1] = M.q(a) end
  local out = M.run(table.concat(args, ' ') .. ' 2>&1')
  local lines = {}
  for line in out:gmatch('[^\n]+') do lines[#lines + 1] = line end
  return lines
end

return M
