--- `dmarc check`: authenticate one message (SPF, DKIM, the ARC verdict of a trusted host),
-- evaluate DMARC, apply the site policy, and print an Authentication-Results field (RFC 8601)
-- and the decision; or, with --json, everything as one object.
-- Exit status: 0 checked (whatever the verdict), 2 usage or input error (bad option,
-- unreadable file, malformed message, zone or site script that does not load).
-- @module dmarc.cli.check

local auth = require 'dmarc.auth'
local dio = require 'dmarc.io'
local policy = require 'dmarc.policy'

local M = {}

M.USAGE = [[
usage: dmarc check [options] [FILE]

Checks the message in FILE (default: standard input): SPF, every DKIM signature, the ARC
verdict of a trusted host, DMARC, then the site policy. Prints an Authentication-Results
field and the decision.

SMTP facts (SPF is checked only when --ip is given):
  --ip ADDR                  the connecting client's address
  --helo NAME                the HELO/EHLO name
  --mail-from ADDR           the MAIL FROM address ("" or "<>": the null reverse-path,
                             checked as postmaster@HELO)
  --rcpt ADDR                a recipient (repeatable; per-recipient site rules)
  --evidence TEXT            other grounds against the message (reputation, content):
                             lets a site reject on p=reject (RFC 9989 7.4)
Policy:
  --policy FILE              site script (alias --site; default: the built-in defaults)
  --mode rfc9989|rfc7489     discovery rules (default rfc9989)
  --roll N                   pct sampling roll 0-99 (default random)
DNS (default: the nameservers of /etc/resolv.conf):
  --zone FILE                answer from a zone file (offline)
  --dns-server HOST[:PORT]   ask this recursive server
  --dns-timeout SECONDS      per try (default 2)
Authentication-Results:
  --authserv-id ID           our authserv-id (default "localhost"); incoming fields that
                             claim it are ignored
  --trusted-authserv-id ID   a host whose Authentication-Results (its arc= verdict) is
                             trusted (repeatable)
Output:
  --json                     everything as one JSON object
]]

local VALUE_OPTIONS = {
  ip = true, helo = true, ['mail-from'] = true, rcpt = true, evidence = true, policy = true,
  site = true, mode = true, roll = true, zone = true, ['dns-server'] = true,
  ['dns-timeout'] = true, ['authserv-id'] = true, ['trusted-authserv-id'] = true,
}
local MULTI_OPTIONS = { rcpt = true, ['trusted-authserv-id'] = true }
local FLAG_OPTIONS = { json = true, help = true }
--- Repeated options are bounded like everything from outside.
M.MAX_REPEATS = 100

-- {==================================================================
-- JSON output: keys sorted, arrays told apart from objects even when empty.
-- ===================================================================

local ARRAY = {}

--- Mark @t as a JSON array (also when empty).
function M.array(t)
  return setmetatable(t or {}, ARRAY)
end

local ESCAPES = {
  ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f', ['\n'] = '\\n',
  ['\r'] = '\\r', ['\t'] = '\\t',
}

local function encode_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return ESCAPES[c] or string.format('\\u%04x', c:byte())
  end) .. '"'
end

local function is_array(t)
  if getmetatable(t) == ARRAY then return true end
  local n = #t
  if n == 0 then return false end
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  return count == n
end

local MAX_DEPTH = 32

local function encode(v, depth, out)
  local t = type(v)
  if t == 'string' then
    out[#out + 1] = encode_string(v)
  elseif t == 'number' then
    if v ~= v or v == math.huge or v == -math.huge then
      out[#out + 1] = 'null'
    elseif v == math.floor(v) and math.abs(v) < 2 ^ 53 then
      out[#out + 1] = string.format('%d', v)
    else
      out[#out + 1] = string.format('%.17g', v)
    end
  elseif t == 'boolean' then
    out[#out + 1] = tostring(v)
  elseif t == 'table' and depth <= MAX_DEPTH then
    if is_array(v) then
      out[#out + 1] = '['
      for i = 1, #v do
        if i > 1 then out[#out + 1] = ',' end
        encode(v[i], depth + 1, out)
      end
      out[#out + 1] = ']'
    else
      local keys = {}
      for k in pairs(v) do
        if type(k) == 'string' then keys[#keys + 1] = k end
      end
      table.sort(keys)
      out[#out + 1] = '{'
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = ',' end
        out[#out + 1] = encode_string(k) .. ':'
        encode(v[k], depth + 1, out)
      end
      out[#out + 1] = '}'
    end
  else
    out[#out + 1] = 'null'
  end
end

--- JSON text of @v (nil and unsupported values are null).
function M.json(v)
  local out = {}
  encode(v, 0, out)
  return table.concat(out)
end

-- }==================================================================

-- {==================================================================
-- Options
-- ===================================================================

--- Parse the command line: options (--name VALUE, --name=VALUE) and at most one FILE.
-- @return opts, or nil, message
function M.parse_args(args)
  local opts = { rcpt = {}, ['trusted-authserv-id'] = {} }
  local i = 1
  while i <= #args do
    local a = args[i]
    local name, inline = a:match('^%-%-([%w-]+)=(.*)$')
    if not name then name = a:match('^%-%-([%w-]+)$') end
    if a == '-h' then name = 'help' end
    if name then
      if VALUE_OPTIONS[name] then
        local v = inline
        if v == nil then
          i = i + 1
          v = args[i]
          if v == nil then return nil, '--' .. name .. ' needs a value' end
        end
        if MULTI_OPTIONS[name] then
          local list = opts[name]
          if #list >= M.MAX_REPEATS then return nil, 'too many --' .. name end
          list[#list + 1] = v
        elseif opts[name] ~= nil then
          return nil, '--' .. name .. ' given twice'
        else
          opts[name] = v
        end
      elseif FLAG_OPTIONS[name] and inline == nil then
        opts[name] = true
      else
        return nil, 'unknown option "' .. a .. '"'
      end
    elseif a:sub(1, 1) == '-' and a ~= '-' then
      return nil, 'unknown option "' .. a .. '"'
    elseif opts.file ~= nil then
      return nil, 'more than one message file given'
    else
      opts.file = a
    end
    i = i + 1
  end
  if opts.site then
    if opts.policy then return nil, '--policy and --site are the same option' end
    opts.policy = opts.site
  end
  if opts.zone and opts['dns-server'] then return nil, '--zone and --dns-server exclude each other' end
  if opts.mode and opts.mode ~= 'rfc9989' and opts.mode ~= 'rfc7489' then
    return nil, '--mode must be rfc9989 or rfc7489'
  end
  if opts.roll then
    local n = tonumber(opts.roll)
    if not n or n % 1 ~= 0 or n < 0 or n > 99 then return nil, '--roll must be an integer 0-99' end
    opts.roll = n
  end
  if opts['dns-timeout'] then
    local n = tonumber(opts['dns-timeout'])
    if not n or n <= 0 or n > 60 then return nil, '--dns-timeout must be 0-60 seconds' end
    opts['dns-timeout'] = n
  end
  if opts['authserv-id'] and not opts['authserv-id']:find('^[%w%.%-_]+$') then
    return nil, '--authserv-id must be a host name'
  end
  for _, id in ipairs(opts['trusted-authserv-id']) do
    if not id:find('^[%w%.%-_]+$') then return nil, '--trusted-authserv-id must be a host name' end
  end
  return opts
end

--- The resolver the options ask for: a zone file, a server, or resolv.conf.
-- @return resolver, or nil, message
function M.resolver(opts)
  local r, err
  if opts.zone then
    r, err = dio.resolver{ zone = opts.zone }
  elseif opts['dns-server'] then
    r, err = dio.resolver{ server = opts['dns-server'], timeout = opts['dns-timeout'] }
  else
    r, err = dio.resolver{ timeout = opts['dns-timeout'] }
  end
  if not r then return nil, err end
  return r
end

local function read_message(file)
  local f, err
  if file == nil or file == '-' then
    f = io.stdin
  else
    f, err = io.open(file, 'rb')
    if not f then return nil, 'cannot read message: ' .. tostring(err) end
  end
  local text = f:read(require('dmarc.message').MAX_MESSAGE_BYTES + 1)
  if f ~= io.stdin then f:close() end
  if text == nil then return nil, 'empty message' end
  return text
end

-- }==================================================================

-- {==================================================================
-- Output
-- ===================================================================

--- One line saying what the decision does.
function M.describe_decision(d)
  local parts = { d.action }
  if d.action == 'folder' then
    parts[#parts + 1] = '"' .. d.folder .. '"'
  elseif d.action == 'score' then
    parts[#parts + 1] = tostring(d.score)
  elseif d.action == 'tag' and d.tag then
    parts[#parts + 1] = d.tag.subject and ('subject "' .. d.tag.subject .. '"')
      or (d.tag.header .. ': ' .. d.tag.value)
  elseif (d.action == 'reject' or d.action == 'defer') and d.smtp_code then
    parts[#parts + 1] = tostring(d.smtp_code) .. ' ' .. tostring(d.smtp_message or '')
  end
  local notes = {}
  if d.disposition then notes[#notes + 1] = 'disposition ' .. d.disposition end
  for _, r in ipairs(d.reasons or {}) do
    notes[#notes + 1] = r.type .. (r.comment and (': ' .. r.comment) or '')
  end
  local line = table.concat(parts, ' ')
  if #notes > 0 then line = line .. ' (' .. table.concat(notes, '; ') .. ')' end
  return line
end

local function as_arrays(res, decision)
  local dkim = res.dkim or { total = 0, signatures = {} }
  local sigs = M.array()
  for i, s in ipairs(dkim.signatures) do sigs[i] = s end
  local dm = {}
  for k, v in pairs(res.dmarc or {}) do dm[k] = v end
  dm.flags = M.array(dm.flags or {})
  dm.queries = M.array(dm.queries or {})
  local arc
  if res.arc then
    arc = {}
    for k, v in pairs(res.arc) do arc[k] = v end
    arc.sealers = M.array(arc.sealers)
    arc.aar = M.array(arc.aar)
  end
  local d
  if decision then
    d = {}
    for k, v in pairs(decision) do d[k] = v end
    d.reasons = M.array(d.reasons or {})
    d.warnings = M.array(d.warnings or {})
  end
  return {
    spf = res.spf, helo = res.helo,
    dkim = { total = dkim.total, signatures = sigs },
    arc = arc,
    ignored_authentication_results = M.array(res.ignored_ar or {}),
    dmarc = dm,
    decision = d,
  }
end

-- }==================================================================

local function usage_error(msg)
  io.stderr:write('dmarc check: ', msg, '\n', 'run "dmarc check --help" for usage\n')
  return 2
end

local function input_error(msg)
  io.stderr:write('dmarc check: ', msg, '\n')
  return 2
end

--- Entry point: run(args) -> exit status.
function M.run(args)
  local opts, err = M.parse_args(args or {})
  if not opts then return usage_error(err) end
  if opts.help then
    io.stdout:write(M.USAGE)
    return 0
  end
  local site
  if opts.policy then
    local code
    site, err, code = policy.load(opts.policy)
    if not site then return input_error('site script: ' .. tostring(err) .. ' (' .. tostring(code) .. ')') end
  else
    site = assert(policy.new({}))
  end
  local text
  text, err = read_message(opts.file)
  if not text then return input_error(err) end
  local resolver
  resolver, err = M.resolver(opts)
  if not resolver then return input_error('DNS: ' .. tostring(err)) end

  local authserv_id = opts['authserv-id'] or 'localhost'
  local check_opts = {
    ip = opts.ip, helo = opts.helo, mail_from = opts['mail-from'],
    authserv_id = authserv_id, trusted_authserv_ids = opts['trusted-authserv-id'],
    mode = opts.mode, roll = opts.roll,
  }
  local res, code
  res, err, code = auth.check(resolver, text, check_opts)
  if not res then
    resolver:close()
    if code == 'syntax' or code == 'limit' then return input_error('malformed message: ' .. tostring(err)) end
    return input_error(tostring(err))
  end
  local ctx = auth.policy_ctx(res, { ip = opts.ip, helo = opts.helo, mail_from = opts['mail-from'],
    rcpt = opts.rcpt })
  ctx.evidence = opts.evidence
  local decision = site:evaluate(res.dmarc, ctx, nil)
  local header = auth.format_ar(res, authserv_id, decision)
  resolver:close()

  if opts.json then
    local out = as_arrays(res, decision)
    out.authentication_results = header
    io.stdout:write(M.json(out), '\n')
    return 0
  end
  io.stdout:write((header:gsub('\r\n', '\n')), '\n')
  io.stdout:write('Decision: ', M.describe_decision(decision), '\n')
  for _, w in ipairs(decision.warnings or {}) do io.stdout:write('Warning: ', w, '\n') end
  for _, ig in ipairs(res.ignored_ar or {}) do
    io.stdout:write('Ignored: Authentication-Results', ig.authserv_id and (' from ' .. ig.authserv_id) or '',
      ' (', ig.why, ')\n')
  end
  return 0
end

return M
