--- Report delivery: external-destination verification [RUA-3..5], the RFC
-- 7489 size limits [RUA-6], SMTP (STARTTLS, AUTH) or sendmail transports,
-- retry with backoff, a Redis lock so one sender runs across many scanner
-- hosts, and deletion of a report's data only once every destination has
-- accepted it or failed for good.
--
-- Delivery state lives in Redis (docs/report-keys.md, "Delivery state"), not
-- in the local output directory, so two hosts that generated the same
-- (byte-identical) reports never both send them.
local report = require 'dmarc.report.rows'
local mail = require 'dmarc.report.mail'
local connect = require 'dmarc.redis.connect'
local files = require 'dmarc.util.files'
local text = require 'dmarc.util.text'

local M = {}

M.defaults = {
  retry_base = 300,          -- seconds before the first retry
  retry_max_delay = 6 * 3600,
  max_attempts = 8,          -- then the destination is given up
  lock_ttl = 600,            -- seconds; refreshed between manifests
  state_ttl = 30 * 86400,    -- delivery state outlives the data it guards
  verify_ttl = 3600,         -- seconds a verification result is cached
  verify_cache_max = 10000,  -- entries in the verification cache
  smtp_timeout = 30,
  -- Trust anchors for relays whose certificate is verified: the system CA store (Debian's
  -- bundle, or the hashed directory when the bundle is missing).
  tls_cafile = '/etc/ssl/certs/ca-certificates.crt',
  tls_capath = '/etc/ssl/certs',
}
M.MAX_CERT_NAMES = 100       -- subjectAltName entries of a certificate looked at
M.MAX_MANIFESTS = 100000     -- manifests read per run
M.MAX_FAILURE_QUEUES = 10000 -- policy domains whose queued failure reports are read per run
M.MAX_FAILURE_PER_QUEUE = 100 -- queued failure reports read per policy domain per run
M.MAX_REPLY_LINES = 100      -- lines of one SMTP reply
M.MAX_CONSENT_TXT = 32       -- TXT RRs read from a _report._dmarc answer

-- ---------------------------------------------------------------------------
-- Org Domains, for deciding whether a destination is external [RUA-3]

local function default_org_domain(d)
  local ok, core = pcall(require, 'dmarc.core')
  if ok and core.has_psl then
    local org, is_suffix = core.psl_org_domain(d)
    if org and not is_suffix then return org end
    if org then return d end
  end
  -- Without a PSL: the last two labels (documented fallback).
  return d:match('([^.]+%.[^.]+)$') or d
end
M.org_domain = default_org_domain

local function is_dmarc_txt(txt)
  local ok, core = pcall(require, 'dmarc.core')
  if ok and core.is_record then return core.is_record(txt) end
  return txt:match('^v%s*=%s*DMARC1%s*;') ~= nil or txt:match('^v%s*=%s*DMARC1%s*$') ~= nil
end

-- rua URIs of an authorizing record, as mailto addresses.
local function consent_rua(txt)
  local ok, core = pcall(require, 'dmarc.core')
  local list = {}
  if ok and core.record_parse then
    local rec = core.record_parse(txt)
    if rec and type(rec.rua) == 'table' then
      for i, u in ipairs(rec.rua) do
        if i > report.limits.max_rua then break end
        list[#list + 1] = u.uri
      end
    end
    return list, rec and rec.has_rua
  end
  local v = txt:match('[;%s]rua%s*=%s*([^;]*)')
  if not v then return list, false end
  for u in v:gmatch('[^,]+') do
    if #list >= report.limits.max_rua then break end
    list[#list + 1] = (u:gsub('^%s+', ''):gsub('%s+$', ''):gsub('!.*$', ''))
  end
  return list, true
end

-- Asks DNS for the authorization record at @name [RUA-3].
-- @return 'ok' | 'unauthorized' | 'temperror', the record's rua list (or nil), the answer's TTL
local function consent_lookup(resolve, name)
  local ok, rcode, txts, answer_ttl = pcall(resolve, name, 'TXT')
  if not ok then rcode = 'servfail' end
  local result, rua = 'unauthorized', nil
  if rcode == 'servfail' or rcode == 'timeout' or rcode == nil then
    result = 'temperror'
  elseif rcode == 'noerror' then
    for i, txt in ipairs(type(txts) == 'table' and txts or {}) do
      if i > M.MAX_CONSENT_TXT then break end
      if type(txt) == 'string' and is_dmarc_txt(txt) then
        local list, has = consent_rua(txt)
        result = 'ok'
        if has then rua = list end
        break
      end
    end
  end
  return result, rua, answer_ttl
end

-- The answer for @address once its host authorized reports (the cache entry @c).
local function consented_address(c, host, address)
  if c.result ~= 'ok' then return c.result end
  if c.rua then
    -- [RUA-3] step 6: the record's own rua replaces the URI only when it
    -- names the same host; otherwise the report goes to neither.
    for _, uri in ipairs(c.rua) do
      local addr, dom = mail.mailto_address(uri)
      if addr and dom == host then return 'ok', addr end
    end
    if #c.rua > 0 then return 'unauthorized' end
  end
  return 'ok', address
end

--- A verifier with a bounded TTL cache.
-- @param opts {table} resolve (function(name, qtype) → rcode, txts, ttl),
--   org_domain (function(d) → org), clock, ttl, max_entries
function M.verifier(opts)
  opts = opts or {}
  local resolve = opts.resolve
  local org_of = opts.org_domain or default_org_domain
  local clock = opts.clock or os.time
  local ttl = opts.ttl or M.defaults.verify_ttl
  local max_entries = opts.max_entries or M.defaults.verify_cache_max
  local cache, size = {}, 0

  -- The cache entry of @name, looked up again when missing or expired.
  local function entry(name)
    local now = clock()
    local c = cache[name]
    if c and c.expires > now then return c end
    if not resolve then return nil end
    local result, rua, answer_ttl = consent_lookup(resolve, name)
    c = { result = result, rua = rua,
          expires = now + math.min(ttl, tonumber(answer_ttl) or ttl) }
    if result == 'temperror' then c.expires = now end -- never cached
    if size >= max_entries then cache, size = {}, 0 end
    if not cache[name] then size = size + 1 end
    cache[name] = c
    return c
  end

  --- Is `address` allowed to receive reports about `policy_domain`?
  -- @return 'ok', address (possibly replaced [RUA-3] step 6) |
  --   'unauthorized' | 'temperror'
  return function(policy_domain, address)
    local host = report.domain_of(address)
    if not host or not report.valid_domain(host) then return 'unauthorized' end
    if host == policy_domain or org_of(host) == org_of(policy_domain) then
      return 'ok', address
    end
    local name = policy_domain .. '._report._dmarc.' .. host
    -- [RUA-3] step 2: a name beyond DNS limits cannot be verified.
    if #name > 253 then return 'unauthorized' end
    local c = entry(name)
    if not c then return 'temperror' end
    return consented_address(c, host, address)
  end
end

-- ---------------------------------------------------------------------------
-- Transports. Each is function(envelope_from, rcpt, message) → status,
-- code, text with status 'accepted' | 'temp' | 'perm'.

local function smtp_read(sock)
  local lines = {}
  for _ = 1, M.MAX_REPLY_LINES do
    local line, err = sock:receive('*l')
    if not line then return nil, err end
    lines[#lines + 1] = line
    local code, sep = line:match('^(%d%d%d)([ -]?)')
    if not code then return nil, 'malformed SMTP reply' end
    if sep ~= '-' then return tonumber(code), table.concat(lines, '\n') end
  end
  return nil, 'SMTP reply too long'
end

local function smtp_cmd(sock, line)
  local ok, err = sock:send(line .. '\r\n')
  if not ok then return nil, err end
  return smtp_read(sock)
end

--- The message with CRLF line ends and leading dots doubled (RFC 5321
-- §4.5.2), ended by the lone dot.
function M.dot_stuff(message)
  local m = message:gsub('\r?\n', '\r\n')
  m = m:gsub('^%.', '..'):gsub('\r\n%.', '\r\n..')
  if m:sub(-2) ~= '\r\n' then m = m .. '\r\n' end
  return m .. '.\r\n'
end

-- ---------------------------------------------------------------------------
-- The relay's certificate

local function is_ip_literal(host)
  return host:match('^%d+%.%d+%.%d+%.%d+$') ~= nil or host:find(':', 1, true) ~= nil
end

-- One DNS-ID of a certificate against the host name (RFC 6125 §6.4.1, §6.4.3): equal
-- ignoring case, or a wildcard that is the whole leftmost label and stands for exactly
-- one label of the host.
local function name_matches(pattern, host)
  pattern = pattern:lower():gsub('%.$', '')
  if pattern == host then return true end
  local rest = pattern:match('^%*(%..+%..+)$')
  if not rest then return false end
  local label, tail = host:match('^([^.]+)(%..+)$')
  return label ~= nil and tail == rest
end

--- Whether a certificate (a LuaSec x509 object) names the host it was reached as:
-- a subjectAltName dNSName (or iPAddress for an address literal); the subject's CN only
-- when the certificate has no dNSName at all (RFC 6125 §6.4.4).
-- @return true, or false, what the certificate names instead
function M.cert_matches_host(cert, host)
  if not cert then return false, 'no certificate' end
  host = tostring(host):lower():gsub('%.$', '')
  local ip = is_ip_literal(host)
  local ok, ext = pcall(cert.extensions, cert)
  local san = ok and type(ext) == 'table' and ext['2.5.29.17'] or {}
  local seen, dns_names = {}, 0
  for _, n in ipairs(san.dNSName or {}) do
    dns_names = dns_names + 1
    if dns_names > M.MAX_CERT_NAMES then break end
    seen[#seen + 1] = n
    if not ip and name_matches(n, host) then return true end
  end
  for i, a in ipairs(san.iPAddress or {}) do
    if i > M.MAX_CERT_NAMES then break end
    seen[#seen + 1] = a
    if ip and a:lower() == host then return true end
  end
  if dns_names == 0 and not ip then
    local sok, subject = pcall(cert.subject, cert)
    for _, e in ipairs(sok and subject or {}) do
      if e.name == 'commonName' and type(e.value) == 'string' then
        seen[#seen + 1] = e.value
        if name_matches(e.value, host) then return true end
      end
    end
  end
  return false, #seen > 0 and table.concat(seen, ', ', 1, math.min(#seen, 5)) or 'no names'
end

local function readable(path)
  local f = io.open(path, 'rb')
  if not f then return false end
  f:close()
  return true
end

-- LuaSec parameters of the STARTTLS handshake. Verified: the peer's chain against the CA
-- store or @opts.tls_ca; otherwise any certificate (opportunistic TLS, RFC 7435).
local function tls_params(opts, verify)
  local params = { mode = 'client', protocol = 'any', verify = 'none',
                   options = { 'all', 'no_sslv2', 'no_sslv3' } }
  if verify then
    params.verify = { 'peer', 'fail_if_no_peer_cert' }
    if opts.tls_ca then
      params.cafile = opts.tls_ca
    elseif readable(M.defaults.tls_cafile) then
      params.cafile = M.defaults.tls_cafile
    else
      params.capath = M.defaults.tls_capath
    end
  end
  for k, v in pairs(opts.tls or {}) do params[k] = v end
  return params
end

-- Ends a session that failed: a polite QUIT, but never a long wait for its answer.
-- @return the transport's answer for that failure
local function smtp_fail(s, code, reply, kind)
  s.sock:settimeout(math.min(2, s.opts.timeout or M.defaults.smtp_timeout))
  pcall(smtp_cmd, s.sock, 'QUIT')
  s.sock:close()
  if code == nil then return 'temp', nil, reply, kind end
  if code >= 500 then return 'perm', code, reply end
  return 'temp', code, reply
end

-- The greeting and EHLO; s.caps gets the relay's extensions. Nothing returned: done.
local function smtp_hello(s)
  local code, reply = smtp_read(s.sock)
  if code ~= 220 then return smtp_fail(s, code, reply) end
  code, reply = smtp_cmd(s.sock, 'EHLO ' .. s.helo)
  if code ~= 250 then return smtp_fail(s, code, reply) end
  s.caps = reply
end

-- The TLS handshake after a STARTTLS the relay took, the certificate checked when @s.verify,
-- then EHLO again. Nothing returned: s.sock is the TLS socket.
local function smtp_handshake(s)
  local opts, host = s.opts, s.host
  local ssl = require 'ssl'
  local wrapped, werr = ssl.wrap(s.sock, tls_params(opts, s.verify))
  if not wrapped then return smtp_fail(s, nil, 'tls: ' .. tostring(werr)) end
  -- The TLS socket does not inherit the timeout.
  wrapped:settimeout(opts.timeout or M.defaults.smtp_timeout)
  -- RFC 6066 §3: no SNI for an address literal.
  if wrapped.sni and not is_ip_literal(host) then wrapped:sni(host) end
  local hs, herr = wrapped:dohandshake()
  if not hs then
    if s.verify then
      return smtp_fail(s, nil, 'TLS: the certificate of ' .. host .. ' is not trusted ('
                       .. tostring(herr) .. ')', 'untrusted')
    end
    return smtp_fail(s, nil, 'tls handshake: ' .. tostring(herr))
  end
  if s.verify then
    local named, names = M.cert_matches_host(wrapped:getpeercertificate(), host)
    if not named then
      s.sock = wrapped
      return smtp_fail(s, nil, 'TLS: the certificate of ' .. host .. ' is for another name ('
                       .. tostring(names) .. ')', 'untrusted')
    end
  end
  s.sock = wrapped
  s.tls = true
  local code, reply = smtp_cmd(s.sock, 'EHLO ' .. s.helo)
  if code ~= 250 then return smtp_fail(s, code, reply) end
  s.caps = reply
end

-- STARTTLS as opts.starttls asks. Nothing returned: go on (over TLS when s.tls).
local function smtp_starttls(s)
  local mode = s.opts.starttls or 'try'
  if mode ~= 'never' and s.caps:upper():find('STARTTLS', 1, true) then
    local code, reply = smtp_cmd(s.sock, 'STARTTLS')
    if code ~= 220 then
      if mode == 'require' then return smtp_fail(s, code, reply) end
      return
    end
    return smtp_handshake(s)
  elseif mode == 'require' then
    return smtp_fail(s, nil, 'STARTTLS required but not offered')
  end
end

-- AUTH PLAIN, or LOGIN when only that is offered; only over TLS unless allow_plain_auth.
-- Nothing returned: logged in (or no credentials to give).
local function smtp_auth(s)
  local opts = s.opts
  if not opts.user then return end
  if not s.tls and not opts.allow_plain_auth then
    return smtp_fail(s, nil, 'AUTH refused without TLS')
  end
  local upper = s.caps:upper()
  local code, reply
  if upper:find('AUTH[ =][^\n]*PLAIN') then
    local plain = '\0' .. opts.user .. '\0' .. opts.password
    code, reply = smtp_cmd(s.sock, 'AUTH PLAIN ' .. mail.base64_line(plain))
  elseif upper:find('AUTH[ =][^\n]*LOGIN') then
    code, reply = smtp_cmd(s.sock, 'AUTH LOGIN')
    if code == 334 then code, reply = smtp_cmd(s.sock, mail.base64_line(opts.user)) end
    if code == 334 then code, reply = smtp_cmd(s.sock, mail.base64_line(opts.password)) end
  else
    return smtp_fail(s, nil, 'no supported AUTH mechanism')
  end
  -- A refused login is our configuration, not the destination's
  -- answer: retried (and given up after max_attempts), never final.
  if code ~= 235 then
    local _, _, t = smtp_fail(s, code, reply)
    return 'temp', code, t
  end
end

-- The envelope and the message, then QUIT.
local function smtp_transaction(s, from, rcpt, message)
  local code, reply = smtp_cmd(s.sock, 'MAIL FROM:<' .. from .. '>')
  if code ~= 250 then return smtp_fail(s, code, reply) end
  code, reply = smtp_cmd(s.sock, 'RCPT TO:<' .. rcpt .. '>')
  if code ~= 250 and code ~= 251 then return smtp_fail(s, code, reply) end
  code, reply = smtp_cmd(s.sock, 'DATA')
  if code ~= 354 then return smtp_fail(s, code, reply) end
  local sent, serr = s.sock:send(M.dot_stuff(message))
  if not sent then return smtp_fail(s, nil, 'send: ' .. tostring(serr)) end
  code, reply = smtp_read(s.sock)
  if code ~= 250 then return smtp_fail(s, code, reply) end
  pcall(smtp_cmd, s.sock, 'QUIT')
  s.sock:close()
  return 'accepted', code, reply
end

--- An SMTP transport to one relay.
-- @param opts {table} host, port (25), helo (default 'localhost'),
--   starttls ('never' | 'try' (default) | 'require'), tls (LuaSec params
--   table merged over the defaults), user, password (AUTH PLAIN, or LOGIN when only that
--   is offered; only over TLS unless allow_plain_auth), timeout,
--   tls_ca (a PEM file of trust anchors instead of the system CA store),
--   tls_no_verify (true: never verify the relay's certificate).
--   The certificate and its name (the host as given) are verified whenever credentials
--   are sent or starttls is 'require', unless tls_no_verify; with 'try' and no
--   credentials TLS is opportunistic and any certificate is taken (RFC 7435).
-- @return function(from, rcpt, message) → status ('accepted'|'temp'|'perm'), code, text,
--   and 'untrusted' as a fourth value when the relay's certificate was refused
function M.smtp_transport(opts)
  local socket = require 'socket'
  return function(from, rcpt, message)
    local sock = socket.tcp()
    sock:settimeout(opts.timeout or M.defaults.smtp_timeout)
    local ok, err = sock:connect(opts.host or '127.0.0.1', opts.port or 25)
    if not ok then return 'temp', nil, 'connect: ' .. tostring(err) end
    local s = {
      sock = sock, opts = opts, helo = opts.helo or 'localhost', caps = nil, tls = false,
      host = tostring(opts.host or '127.0.0.1'),
      -- Credentials and a required TLS go only to the relay we meant; opportunistic TLS
      -- without credentials takes any certificate (RFC 7435 §1.3).
      verify = (opts.user ~= nil or (opts.starttls or 'try') == 'require')
        and not opts.tls_no_verify,
    }
    for _, step in ipairs { smtp_hello, smtp_starttls, smtp_auth } do
      local status, code, reply, kind = step(s)
      if status then return status, code, reply, kind end
    end
    return smtp_transaction(s, from, rcpt, message)
  end
end

-- Exit status of os.execute on Lua 5.4 (true|nil, 'exit'|'signal', n) and
-- LuaJIT (the raw wait status).
local function exit_status(a, b, c)
  if type(a) == 'number' then
    if a >= 256 then return math.floor(a / 256) end
    return a
  end
  if a == true then return 0 end
  if b == 'exit' then return c end
  return 128 + (tonumber(c) or 0)
end
M.exit_status = exit_status

--- A sendmail-compatible transport: `<command> -oi -f <from> -- <rcpt>`
-- with the message on standard input. Exit 0 is accepted, EX_TEMPFAIL
-- (75) and failures to run the command are temporary, other sysexits
-- codes (64..78) permanent.
function M.sendmail_transport(opts)
  local command = opts.command or '/usr/sbin/sendmail'
  return function(from, rcpt, message)
    local tmp = os.tmpname()
    local f = io.open(tmp, 'wb')
    if not f then return 'temp', nil, 'cannot write a temporary file' end
    f:write(message)
    f:close()
    local q = text.shell_quote
    local st = exit_status(os.execute(command .. ' -oi -f ' .. q(from) .. ' -- ' .. q(rcpt)
                                      .. ' < ' .. q(tmp)))
    os.remove(tmp)
    if st == 0 then return 'accepted', 0, 'sendmail exit 0' end
    if st >= 64 and st <= 78 and st ~= 75 then return 'perm', st, 'sendmail exit ' .. st end
    return 'temp', st, 'sendmail exit ' .. st
  end
end

-- ---------------------------------------------------------------------------
-- Lock: one sender across scanner hosts.

local UNLOCK = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
]]
local EXTEND = [[
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
]]

function M.lock_key(prefix)
  return prefix .. 'lock:report-send'
end

local function token()
  local f = io.open('/dev/urandom', 'rb')
  local raw = f and f:read(16) or tostring(os.time()) .. tostring(os.clock())
  if f then f:close() end
  return (raw:gsub('.', function(c) return string.format('%02x', c:byte()) end))
end

--- Take the sender lock: token, or nil, msg, 'locked' | code.
function M.lock(conn, prefix, ttl)
  local t = token()
  local r, err, code = conn:command('SET', M.lock_key(prefix), t, 'NX', 'PX',
                                    tostring(math.floor((ttl or M.defaults.lock_ttl) * 1000)))
  if type(r) == 'table' and r.ok then return t end
  if r == nil and err == nil then return nil, 'another sender holds the lock', 'locked' end
  return nil, err or 'lock failed', code or 'redis'
end

function M.extend_lock(conn, prefix, t, ttl)
  local r = conn:command('EVAL', EXTEND, '1', M.lock_key(prefix), t,
                         tostring(math.floor((ttl or M.defaults.lock_ttl) * 1000)))
  return r == 1
end

function M.unlock(conn, prefix, t)
  local r = conn:command('EVAL', UNLOCK, '1', M.lock_key(prefix), t)
  return r == 1
end

-- ---------------------------------------------------------------------------
-- Sending manifests

--- The delivery-state key of one policy domain and period.
M.state_key = report.state_key

local function list_manifests(dir)
  local p = io.popen('ls -1 ' .. text.shell_quote(dir) .. ' 2>/dev/null')
  if not p then return {} end
  local out = {}
  for name in p:lines() do
    if name:match('%.json$') then out[#out + 1] = name end
    if #out >= M.MAX_MANIFESTS then break end
  end
  p:close()
  table.sort(out)
  return out
end

local function is_final(state)
  return state ~= nil and not state:match('^retry:')
end

-- ---------------------------------------------------------------------------
-- Queued failure reports (dmarc.report.failure, Reporter:queue)

-- Replace a queue entry by its next state (or remove it when ARGV[2] is
-- empty), only if it is still there: LREM of the exact value, so an entry
-- dropped or already handled meanwhile is never sent or queued again.
local REQUEUE = [[
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then return 0 end
if ARGV[2] ~= '' then redis.call('RPUSH', KEYS[1], ARGV[2]) end
return 1
]]
M.REQUEUE_SCRIPT = REQUEUE

-- Sends one due queued failure report (after the destination check [RUA-5]) and counts it.
-- @return the entry's next state: '' (gone), its re-encoded retry, or nil (kept as it is)
local function send_failure_entry(o, e, domain, now, summary, log)
  local vres, addr = 'ok', e.to
  if o.verify then vres, addr = o.verify(domain, e.to) end
  if vres == 'unauthorized' then
    summary.failure_skipped = summary.failure_skipped + 1
    log('info', string.format('failure report for %s to %s: destination not authorized',
                              domain, e.to))
    return ''
  end
  local status, scode, stext, kind
  if vres == 'temperror' then
    status, stext = 'temp', 'destination verification: DNS temporary error'
  else
    status, scode, stext, kind = o.transport(o.envelope_from, addr, e.message)
  end
  if kind == 'untrusted' then
    -- Our relay is in question, not the destination: no attempt counted.
    summary.failure_deferred = summary.failure_deferred + 1
    log('warning', string.format('failure report for %s to %s kept: %s', domain,
                                 tostring(addr), tostring(stext)))
    return nil
  elseif status == 'accepted' then
    summary.failure_accepted = summary.failure_accepted + 1
    log('info', string.format('failure report for %s sent to %s', domain, addr))
    return ''
  elseif status == 'perm' or e.attempts + 1 >= o.max_attempts then
    summary.failure_failed = summary.failure_failed + 1
    log('warning', string.format('failure report for %s to %s failed: %s', domain,
                                 tostring(addr), tostring(stext or scode)))
    return ''
  end
  e.attempts = e.attempts + 1
  e.next_at = math.floor(now + math.min(o.retry_base * 2 ^ (e.attempts - 1), o.retry_max_delay))
  local next_state = require('dmarc.report.failure').encode_entry(e)
  summary.failure_deferred = summary.failure_deferred + 1
  log('info', string.format('failure report for %s to %s deferred: %s', domain,
                            tostring(addr), tostring(stext)))
  return next_state
end

-- One queued entry: dropped when malformed, left while not due, otherwise sent.
-- @return its next state ('' to remove it) or nil (kept as it is)
local function handle_failure_entry(o, raw, domain, summary, log, clock)
  local e = require('dmarc.report.failure').decode_entry(raw)
  local now = clock()
  if not e or e.domain ~= domain then
    summary.failure_failed = summary.failure_failed + 1
    log('warning', 'dropping a malformed queued failure report for ' .. domain)
    return ''
  elseif e.next_at > now then
    summary.failure_pending = summary.failure_pending + 1
    return nil
  end
  return send_failure_entry(o, e, domain, now, summary, log)
end

-- The queue of one policy domain, oldest entry first; each handled entry is replaced by its
-- next state only if it is still there, and the sender lock is extended.
local function deliver_failure_list(conn, o, prefix, t, key, domain, summary, log, clock)
  -- The oldest entries sit at the tail (LPUSH adds at the head).
  local list, lerr, lcode = conn:command('LRANGE', key, tostring(-M.MAX_FAILURE_PER_QUEUE), '-1')
  if type(list) ~= 'table' then return nil, lerr or 'LRANGE failed', lcode or 'redis' end
  for i = #list, 1, -1 do
    local raw = list[i]
    local next_state = handle_failure_entry(o, raw, domain, summary, log, clock)
    if next_state then
      local r, rerr, rcode = conn:command('EVAL', REQUEUE, '1', key, raw, next_state)
      if r == nil and rerr then return nil, rerr, rcode end
      M.extend_lock(conn, prefix, t, o.lock_ttl)
    end
  end
  return true
end

-- Deliver the queued failure reports of every policy domain, under the
-- sender lock: the same destination check [RUA-5], transports and retry
-- rules as aggregate reports; an entry goes once accepted, failed for good,
-- unauthorized or given up.
local function deliver_failure_queue(conn, o, prefix, t, summary, log, clock)
  local failure = require 'dmarc.report.failure'
  local cluster = require 'dmarc.redis.cluster'
  local keys, err, code = cluster.scan(conn, failure.queue_pattern(prefix),
                                       { max_keys = M.MAX_FAILURE_QUEUES })
  if not keys then return nil, err, code end
  table.sort(keys)
  for _, key in ipairs(keys) do
    local domain = failure.domain_of_queue_key(prefix, key)
    if domain then
      local ok, derr, dcode = deliver_failure_list(conn, o, prefix, t, key, domain, summary, log,
                                                   clock)
      if not ok then return nil, derr, dcode end
    end
  end
  return true
end

-- The manifest at @path, or nil when it cannot be read or is not one.
local function read_manifest(path)
  local cjson = require 'cjson'
  local okj, man = pcall(cjson.decode, files.read(path) or '')
  if not okj or type(man) ~= 'table' or type(man.reports) ~= 'table'
      or not report.valid_domain(man.policy_domain) then
    return nil
  end
  return man
end

-- Send one report to one destination now: the new state of the destination, and whether
-- it is final (accepted, failed, skipped) or waits for a retry.
local function attempt(job, man, r, d, attempts, now)
  local o, summary, log = job.o, job.summary, job.log
  if d.skipped or not d.address or not d.message then
    summary.skipped = summary.skipped + 1
    return 'skipped:' .. tostring(d.skipped or 'bad_uri'), true
  end
  if o.size_limits and (tonumber(d.max_size) or 0) > 0
      and (tonumber(d.message_size) or 0) > tonumber(d.max_size) then
    -- [RUA-6]: a report larger than the URI's limit is not sent there.
    summary.skipped = summary.skipped + 1
    return 'skipped:too_big', true
  end
  local vres, addr = 'ok', d.address
  if o.verify then vres, addr = o.verify(man.policy_domain, d.address) end
  if vres == 'unauthorized' then
    summary.skipped = summary.skipped + 1
    return 'skipped:unauthorized', true
  end
  local status, scode, stext, kind
  if vres == 'temperror' then
    status, stext = 'temp', 'destination verification: DNS temporary error'
  else
    local msg = files.read(o.out .. '/' .. d.message)
    if not msg then
      status, stext = 'perm', 'message file missing'
    else
      status, scode, stext, kind = o.transport(o.envelope_from, addr, msg)
    end
  end
  if kind == 'untrusted' then
    -- Our relay, not the destination, is in question: no attempt is counted, so a
    -- certificate problem never makes a report give up; the state stays as it was.
    summary.deferred = summary.deferred + 1
    log('warning', string.format('report %s to %s kept: %s', r.report_id, tostring(addr),
                                 tostring(stext)))
    return nil, false
  end
  if status == 'accepted' then
    summary.accepted = summary.accepted + 1
    log('info', string.format('report %s sent to %s', r.report_id, addr))
    return 'accepted', true
  elseif status == 'perm' or attempts + 1 >= o.max_attempts then
    summary.failed = summary.failed + 1
    log('warning', string.format('report %s to %s failed: %s', r.report_id,
                                 tostring(addr), tostring(stext)))
    return 'failed:' .. tostring(scode or 'gave_up'), true
  end
  local delay = math.min(o.retry_base * 2 ^ attempts, o.retry_max_delay)
  summary.deferred = summary.deferred + 1
  log('info', string.format('report %s to %s deferred: %s', r.report_id,
                            tostring(addr), tostring(stext)))
  return string.format('retry:%d:%d', attempts + 1, math.floor(now + delay)), false
end

-- One destination of one report, given its stored state: the new state to store (nil:
-- none), and whether the destination is final.
local function deliver_destination(job, man, r, d, st, now)
  if is_final(st) then return nil, true end
  local attempts, next_at = 0, 0
  if st then
    local a, n = st:match('^retry:(%d+):(%d+)')
    attempts, next_at = tonumber(a) or 0, tonumber(n) or 0
  end
  if next_at > now then
    job.summary.pending = job.summary.pending + 1
    return nil, false
  end
  return attempt(job, man, r, d, attempts, now)
end

-- Every destination accepted or gave up: the data goes, the state stays (marked
-- complete) so no stale copy is sent again.
local function complete(job, man, skey, path)
  local cmds = {}
  for _, key in ipairs(man.keys or {}) do
    if key:find('{' .. man.policy_domain .. '}', 1, true) then cmds[#cmds + 1] = { 'DEL', key } end
  end
  cmds[#cmds + 1] = { 'HSET', skey, 'complete', '1' }
  cmds[#cmds + 1] = { 'EXPIRE', skey, tostring(job.o.state_ttl) }
  local ok, err, code = job.conn:pipeline(cmds)
  if not ok then return nil, err, code end
  os.rename(path, path .. '.done')
  job.summary.completed = job.summary.completed + 1
  return true
end

-- The reports of one manifest, each destination that is due.
local function send_manifest(job, man, path)
  local conn, o = job.conn, job.o
  local skey = M.state_key(man.prefix or job.prefix, man.policy_domain, man.begin, man['end'])
  local st_reply, st_err, st_code = conn:command('HGETALL', skey)
  -- Without the delivery state nothing is sent: it could be a resend.
  if type(st_reply) ~= 'table' then return nil, st_err or 'HGETALL failed', st_code or 'redis' end
  local state = connect.hash_reply(st_reply)
  local all_final = true
  local now = job.clock()
  for _, r in ipairs(man.reports) do
    for k, d in ipairs(r.destinations or {}) do
      local fid = r.report_id .. '|' .. k
      local new, final = deliver_destination(job, man, r, d, state[fid], now)
      if not final then all_final = false end
      if new then
        -- A slow relay must not let the lock lapse under a long run.
        M.extend_lock(conn, job.prefix, job.token, o.lock_ttl)
        state[fid] = new
        local ok, err, code = conn:pipeline({ { 'HSET', skey, fid, new },
                                              { 'EXPIRE', skey, tostring(o.state_ttl) } })
        if not ok then return nil, err, code end
      end
    end
  end
  if all_final then
    local ok, err, code = complete(job, man, skey, path)
    if not ok then return nil, err, code end
  end
  M.extend_lock(conn, job.prefix, job.token, o.lock_ttl)
  return true
end

-- Under the lock: every manifest in the output directory, then the failure queue.
local function send_all(job)
  local o = job.o
  for _, name in ipairs(list_manifests(o.out)) do
    local path = o.out .. '/' .. name
    local man = read_manifest(path)
    if not man then
      job.log('warning', 'skipping unreadable manifest ' .. path)
    else
      local ok, err, code = send_manifest(job, man, path)
      if not ok then return nil, err, code end
    end
  end
  if o.failure_queue ~= false then
    local ok, ferr, fcode = deliver_failure_queue(job.conn, o, job.prefix, job.token, job.summary,
                                                  job.log, job.clock)
    if not ok then return nil, ferr, fcode end
  end
  return job.summary
end

--- Deliver every report of the manifests in a directory.
-- @param opts {table}
--   redis        connection or cluster router (state, lock, deletion)
--   out          the directory `generate` wrote
--   transport    function(from, rcpt, message) → status, code, text
--   envelope_from  the reporter's address (MAIL FROM)
--   verify       function(policy_domain, address) → 'ok', address |
--                'unauthorized' | 'temperror' (M.verifier)
--   size_limits  true: honour RFC 7489 !size limits [RUA-6]
--   clock, retry_base, retry_max_delay, max_attempts, lock_ttl, state_ttl
--   log          function(level, msg)
--   failure_queue  false: leave queued failure reports alone (default:
--                delivered after the manifests, same lock)
-- @return summary {accepted, deferred, failed, skipped, completed,
--   pending, failure_accepted, failure_deferred, failure_failed,
--   failure_skipped, failure_pending}, or nil, msg, code ('locked' when
--   another sender runs)
function M.send(opts)
  local o = {}
  for k, v in pairs(M.defaults) do o[k] = v end
  for k, v in pairs(opts) do o[k] = v end
  local conn = o.redis
  local prefix = o.prefix or report.defaults.prefix
  local t, err, code = M.lock(conn, prefix, o.lock_ttl)
  if not t then return nil, err, code end
  local job = {
    o = o, conn = conn, prefix = prefix, token = t, clock = o.clock or os.time,
    log = o.log or function() end,
    summary = { accepted = 0, deferred = 0, failed = 0, skipped = 0, completed = 0,
                pending = 0, failure_accepted = 0, failure_deferred = 0, failure_failed = 0,
                failure_skipped = 0, failure_pending = 0 },
  }
  local ok, res, e, c = pcall(send_all, job)
  M.unlock(conn, prefix, t)
  if not ok then error(res, 0) end
  if not res then return nil, e, c end
  return res
end

return M
