--- Failure reports (RFC 9991; RFC 6591 and RFC 5965 AFRF with the DMARC
-- profile) [FAIL-1..7].
--
-- Off by default: `failure.new{ enabled = true, ... }` (or
-- `failure_reports = true` in the report config) turns them on. When on, a
-- message that fails per the record's `fo` [FAIL-2] gives one
-- multipart/report per verified `ruf` destination [RUA-5], rate-limited per
-- policy domain [FAIL-7], with the local parts of addresses redacted and
-- only the headers of the original message (text/rfc822-headers).
--
-- Loops: no failure report is made about a message that is itself a report
-- (multipart/report, a DMARC report Subject, Auto-Submitted other than
-- "no", or our own reporter address as sender).
--
-- A scanner that cannot deliver mail itself (`dmarc check`, one process per
-- message) queues the reports in Redis instead (`Reporter:queue`), and
-- `dmarc report send` verifies the destinations and delivers them
-- (docs/report-keys.md, "Failure reports"). A scanner with an asynchronous
-- Redis client of its own (the rspamd plugin) takes the same command from
-- `Reporter:queue_command`, sends it itself and reads the reply with
-- `failure.queue_result`.
local report = require 'dmarc.report.rows'
local mail = require 'dmarc.report.mail'
local report_xml = require 'dmarc.report.xml'
local header_fields = require 'dmarc.receive.message'

local M = {}

M.defaults = {
  enabled = false,
  rate_limit = 10,        -- reports per policy domain per window [FAIL-7]
  rate_window = 3600,     -- seconds
  redact = true,          -- RFC 6590 redaction of local parts
  max_ruf = 4,            -- ruf destinations served per message
  max_header_bytes = 65536, -- of the original header block copied
  prefix = 'dmarc:',
  queue_max = 100,        -- queued reports per policy domain (then new ones are refused)
  queue_ttl = 7 * 86400,  -- seconds a queue outlives its last addition
}

M.MAX_HEADER_LINES = 1000
M.MAX_RCPT_FIELDS = 10      -- Original-Rcpt-To fields written
M.MAX_ENTRY_BYTES = 262144  -- one queued report (headers are capped at max_header_bytes)

-- ---------------------------------------------------------------------------
-- The queue in Redis (docs/report-keys.md): one list per policy domain,
-- newest at the head, beside the rate-limit counter under the same hash tag.

--- The rate-limit counter of a policy domain and window [FAIL-7].
function M.rate_key(prefix, domain, window)
  return string.format('%sruf:{%s}:%d', prefix, domain, window)
end

--- The queue of a policy domain.
function M.queue_key(prefix, domain)
  return prefix .. 'ruf:{' .. domain .. '}:queue'
end

--- The SCAN MATCH pattern of every queue.
function M.queue_pattern(prefix)
  return prefix .. 'ruf:{*}:queue'
end

--- The policy domain of a queue key found by SCAN, or nil.
function M.domain_of_queue_key(prefix, key)
  if type(key) ~= 'string' or key:sub(1, #prefix) ~= prefix then return nil end
  local d = key:sub(#prefix + 1):match('^ruf:{([^}]*)}:queue$')
  if d and report.valid_domain(d) then return d end
  return nil
end

-- Count the message against the domain's window, then add its reports
-- unless the window's budget is spent (-1) or the queue is full (-2). One
-- atomic step, so the limit holds across every scanner sharing the Redis.
M.QUEUE_SCRIPT = [[
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
if n > tonumber(ARGV[1]) then return -1 end
local room = tonumber(ARGV[3]) - redis.call('LLEN', KEYS[2])
if room < 1 then return -2 end
local added = 0
for i = 5, #ARGV do
  if added >= room then break end
  redis.call('LPUSH', KEYS[2], ARGV[i])
  added = added + 1
end
redis.call('EXPIRE', KEYS[2], ARGV[4])
return added
]]

--- A queued report as stored: one header line, then the message.
-- @param e {table} domain, to, created, attempts, next_at, message
function M.encode_entry(e)
  return string.format('ruf1 %s %s %d %d %d\n%s', e.domain, e.to, math.floor(e.created or 0),
                       math.floor(e.attempts or 0), math.floor(e.next_at or 0), e.message)
end

--- The fields of a stored entry, or nil for anything malformed.
function M.decode_entry(s)
  if type(s) ~= 'string' or #s > M.MAX_ENTRY_BYTES then return nil end
  local nl = s:find('\n', 1, true)
  if not nl or nl > 600 then return nil end
  local domain, to, created, attempts, next_at =
    s:sub(1, nl - 1):match('^ruf1 (%S+) (%S+) (%d+) (%d+) (%d+)$')
  if not domain or not report.valid_domain(domain) then return nil end
  local addr = mail.mailto_address('mailto:' .. to)
  if addr ~= to then return nil end
  return { domain = domain, to = to, created = tonumber(created), attempts = tonumber(attempts),
           next_at = tonumber(next_at), message = s:sub(nl + 1) }
end

-- ---------------------------------------------------------------------------
-- When [FAIL-2]

local function fo_set(record)
  local set = {}
  local fo = record.fo
  if type(fo) == 'table' then
    for _, v in ipairs(fo) do set[tostring(v)] = true end
  else
    for v in tostring(record.fo_text or '0'):gmatch('[^:%s]+') do set[v] = true end
  end
  if next(set) == nil then set['0'] = true end
  return set
end

--- Does this evaluation call for a failure report under the record's fo?
-- @return true, identity_alignment_list | false, reason
function M.should_report(record, verdict, input)
  if type(record) ~= 'table' or type(record.ruf) ~= 'table' or #record.ruf == 0 then
    return false, 'no_ruf' -- [FAIL-2]: fo is ignored without ruf
  end
  -- [RUA-7]: no failure reports on the ruf of a PSD record.
  if record.psd == 'y' then return false, 'psd' end
  if verdict.result ~= 'pass' and verdict.result ~= 'fail' then return false, 'not_evaluated' end
  local fo = fo_set(record)
  local failed = {}
  if not verdict.dkim_aligned then failed[#failed + 1] = 'dkim' end
  if not verdict.spf_aligned then failed[#failed + 1] = 'spf' end
  local trigger = false
  if fo['0'] and #failed == 2 then trigger = true end          -- every mechanism failed
  if fo['1'] and #failed >= 1 then trigger = true end          -- any mechanism failed
  if fo.d then
    for i, d in ipairs(input and input.dkim or {}) do
      if i > report.limits.max_dkim_input then break end
      if d.result and d.result ~= 'pass' and d.result ~= 'none' then trigger = true end
    end
  end
  if fo.s and input and input.spf and input.spf.result
      and input.spf.result ~= 'pass' and input.spf.result ~= 'none' then
    trigger = true
  end
  if not trigger then return false, 'fo' end
  return true, failed
end

--- Is the message itself a report (or otherwise automatic)? Those never get
-- failure reports: that is how report loops start.
-- @param headers {table} array of {name, value} or a raw header block
function M.is_loop_risk(headers, ctx, opts)
  ctx = ctx or {}
  if ctx.is_report then return true end
  local own = opts and opts.reporter_address
  if own and type(ctx.mail_from) == 'string'
      and ctx.mail_from:lower():gsub('[<>]', '') == own:lower() then
    return true
  end
  for _, hd in ipairs(headers or {}) do
    local name, value = hd[1]:lower(), hd[2] or ''
    if name == 'content-type' and value:lower():find('multipart/report', 1, true) then return true end
    if name == 'subject' and value:find('^%s*Report Domain:') then return true end
    if name == 'auto-submitted' and not value:lower():match('^%s*no%s*$') then return true end
  end
  return false
end

-- ---------------------------------------------------------------------------
-- Building the report

--- Split a raw header block into {name, value, raw=} fields, bounded: value after the colon
-- and its blanks, folded lines joined by LF; raw the field's lines as received, CRLF-joined.
-- Read by the one lenient header walker (dmarc.receive.message.read_fields).
function M.parse_headers(raw)
  local out = {}
  if type(raw) ~= 'string' then return out end
  -- Cut to max_header_bytes first: no field is then dropped for its length.
  local fields = header_fields.read_fields(raw:sub(1, M.defaults.max_header_bytes),
                                           { max_fields = M.MAX_HEADER_LINES,
                                             max_field_bytes = 2 * M.defaults.max_header_bytes })
  for i = 1, #fields, 3 do
    local name, value = fields[i], fields[i + 2]
    out[#out + 1] = { name, (value:gsub('^[ \t]+', ''):gsub('\r\n', '\n')), raw = name .. ':' .. value }
  end
  return out
end

local ADDRESS_HEADERS = { from = true, to = true, cc = true, sender = true, ['reply-to'] = true,
                          ['return-path'] = true, ['delivered-to'] = true, bcc = true }

--- Redact local parts [FAIL-7] (RFC 6590): with a key, each becomes a keyed
-- hash (still lets the domain owner correlate), otherwise "redacted".
function M.redact_address(addr, key)
  return (addr:gsub('([%w%.!#%$%%&\'%*%+/=%?%^_`{|}~%-]+)@([%w%.%-]+)', function(lp, dom)
    local r = key and ('r' .. report_xml.hash64(key .. '\0' .. lp):sub(1, 12)) or 'redacted'
    return r .. '@' .. dom
  end))
end

local function header_safe(s)
  return (tostring(s or ''):gsub('[%c]', ' '))
end

-- The Delivery-Result of each local action [FAIL-6].
local DELIVERY_RESULT = { reject = 'reject', defer = 'other', folder = 'spam', score = 'spam',
                          tag = 'delivered', accept = 'delivered' }

-- Adds "Name: value" to a list of header fields, the value made header-safe.
local function add_field(fields, name, value)
  fields[#fields + 1] = name .. ': ' .. header_safe(value)
end

-- A field line over RFC 5322's 998 characters (§2.1.1; a long SPF record can make one),
-- folded before spaces (§2.2.3), which its unfolding gives back as they were. Each round
-- moves on by at least one character.
local MAX_LINE = 998
local function fold_long(line)
  if #line <= MAX_LINE then return line end
  local out, rest = {}, line
  while #rest > MAX_LINE do
    local cut = rest:sub(1, MAX_LINE + 1):match('^.*() ')
    if not cut or cut <= 1 then break end
    out[#out + 1] = rest:sub(1, cut - 1)
    rest = rest:sub(cut)
  end
  out[#out + 1] = rest
  return table.concat(out, '\r\n')
end

-- An address made header-safe and, unless the report asks otherwise, redacted [FAIL-7].
local function redacted(r, s)
  if r.redact == false then return header_safe(s) end
  return M.redact_address(header_safe(s), r.redact_key)
end

-- The envelope and arrival fields of the feedback report [FAIL-3..6].
local function add_arrival_fields(fields, r, ctx, author, now)
  local rep, v = r.reporter, r.verdict
  if ctx.mail_from then
    add_field(fields, 'Original-Mail-From', '<' .. redacted(r, ctx.mail_from) .. '>')
  end
  for i, rcpt in ipairs(type(ctx.rcpt) == 'table' and ctx.rcpt or {}) do
    if i > M.MAX_RCPT_FIELDS then break end
    add_field(fields, 'Original-Rcpt-To', '<' .. redacted(r, rcpt) .. '>')
  end
  add_field(fields, 'Arrival-Date', mail.rfc5322_date(ctx.arrival or now))
  if ctx.ip then add_field(fields, 'Source-IP', ctx.ip) end
  add_field(fields, 'Reporting-MTA', 'dns; ' .. rep.submitter)
  add_field(fields, 'Incidents', string.format('%d', r.incidents or 1))
  add_field(fields, 'Reported-Domain', author)
  add_field(fields, 'Authentication-Results', string.format('%s; dmarc=%s header.from=%s',
                                                            rep.submitter, v.result or 'fail',
                                                            author))
end

-- DKIM-* when an aligned DKIM identifier failed; SPF-DNS when an aligned
-- SPF identifier failed [FAIL-6].
local function add_identifier_fields(fields, r, input, author)
  local org = r.verdict.org_domain or author
  local function aligned(dom)
    dom = (dom or ''):lower()
    return dom == author or dom == org or dom:sub(-(#org + 1)) == '.' .. org
  end
  for i, d in ipairs(input.dkim or {}) do
    if i > report.limits.max_dkim_input then break end
    if d.result ~= 'pass' and aligned(d.domain) then
      add_field(fields, 'DKIM-Domain', d.domain)
      add_field(fields, 'DKIM-Identity', '@' .. d.domain)
      add_field(fields, 'DKIM-Selector', d.selector or '')
      break
    end
  end
  -- SPF-DNS (RFC 6591 §3.2) carries the SPF record that was evaluated, as
  -- the caller knows it (input.spf.record or r.spf_dns); it is never made up:
  -- without the record only the type and domain are given.
  if input.spf and input.spf.result ~= 'pass' and aligned(input.spf.domain) then
    local record = r.spf_dns or input.spf.record
    add_field(fields, 'SPF-DNS', 'txt : ' .. (input.spf.domain or '')
              .. (type(record) == 'string' and record ~= '' and (' : ' .. record) or ''))
    fields[#fields] = fold_long(fields[#fields])
  end
end

-- The machine-readable part (message/feedback-report) [FAIL-3..6].
local function feedback_fields(r, input, ctx, author, now)
  local fields = {
    'Feedback-Type: auth-failure',
    'User-Agent: lua-dmarc/' .. (r.version or '0'),
    'Version: 1',
  }
  add_arrival_fields(fields, r, ctx, author, now)
  -- [FAIL-6] the DMARC profile
  add_field(fields, 'Auth-Failure', 'dmarc')
  local ia = r.identity_alignment or {}
  add_field(fields, 'Identity-Alignment', #ia > 0 and table.concat(ia, ', ') or 'none')
  local action = r.decision and r.decision.action
  local delivery = DELIVERY_RESULT[action or '']
  if delivery then add_field(fields, 'Delivery-Result', delivery) end
  add_identifier_fields(fields, r, input, author)
  return fields
end

-- The failed message's header section (text/rfc822-headers), addresses redacted [FAIL-7].
local function original_headers(r)
  local hdrs = {}
  for i, hd in ipairs(r.headers or {}) do
    if i > M.MAX_HEADER_LINES then break end
    local line = hd.raw or (hd[1] .. ': ' .. hd[2])
    if ADDRESS_HEADERS[hd[1]:lower()] and r.redact ~= false then
      line = M.redact_address(line, r.redact_key)
    end
    hdrs[#hdrs + 1] = line
  end
  return hdrs
end

--- The AFRF message [FAIL-3..6].
-- @param r {table} reporter {org_name, email, submitter}, to, policy_domain,
--   verdict, input, ctx, decision, headers (parsed), identity_alignment,
--   redact, redact_key, now, incidents, version, spf_dns
function M.build(r)
  local v, input, ctx = r.verdict, r.input or {}, r.ctx or {}
  local rep = r.reporter
  local now = r.now or os.time()
  local author = v.author_domain or ''
  local id = report_xml.hash64(table.concat({ author, tostring(ctx.ip), tostring(now),
                                              tostring(r.to), tostring(ctx.queue_id) }, '|'))
  local boundary = '=_afrf' .. id
  local fields = feedback_fields(r, input, ctx, author, now)
  local hdrs = original_headers(r)

  local subject = 'DMARC failure report for ' .. author .. ' from ' .. tostring(ctx.ip or '?')
  local lines = {
    'From: "' .. header_safe(rep.org_name):gsub('["\\]', '') .. '" <' .. header_safe(rep.email) .. '>',
    'To: <' .. header_safe(r.to) .. '>',
    'Date: ' .. mail.rfc5322_date(now),
    'Subject: ' .. header_safe(subject),
    'Message-ID: <' .. id .. '.afrf@' .. rep.submitter .. '>',
    'MIME-Version: 1.0',
    'Auto-Submitted: auto-generated',
    'Content-Type: multipart/report; report-type=feedback-report; boundary="' .. boundary .. '"',
    '',
    '--' .. boundary,
    'Content-Type: text/plain; charset=us-ascii',
    'Content-Transfer-Encoding: 7bit',
    '',
    'This is a DMARC authentication failure report (RFC 9991) for a message',
    'claiming to be from ' .. header_safe(author) .. ', received from ' .. header_safe(ctx.ip or '?')
      .. '.',
    '',
    '--' .. boundary,
    'Content-Type: message/feedback-report',
    '',
    table.concat(fields, '\r\n'),
    '',
    '--' .. boundary,
    'Content-Type: text/rfc822-headers',
    '',
    table.concat(hdrs, '\r\n'),
    '',
    '--' .. boundary .. '--',
    '',
  }
  return table.concat(lines, '\r\n')
end

-- ---------------------------------------------------------------------------
-- The reporter: decision, rate limit, verification, delivery

local Reporter = {}
Reporter.__index = Reporter

--- @param opts {table} enabled (default false), reporter {org_name, email,
--   submitter}, redis (connection or router; absent: an in-memory counter),
--   prefix, rate_limit, rate_window, verify (report_send.verifier), transport
--   (report_send transports), redact, redact_key, clock, version
function M.new(opts)
  local o = {}
  for k, v in pairs(M.defaults) do o[k] = v end
  for k, v in pairs(opts or {}) do o[k] = v end
  if o.enabled then
    local rep = o.reporter
    if type(rep) ~= 'table' or not rep.email or not rep.submitter then
      error('failure.new: reporter {org_name, email, submitter} is required when enabled', 2)
    end
    if not report.valid_prefix(o.prefix) then error('failure.new: invalid prefix', 2) end
  end
  return setmetatable({ o = o, clock = o.clock or os.time, counters = {} }, Reporter)
end

--- Count one report against the domain's window; true when allowed.
function Reporter:_allow(domain)
  local o = self.o
  local window = math.floor(self.clock() / o.rate_window)
  if o.redis then
    local key = M.rate_key(o.prefix, domain, window)
    local replies = o.redis:pipeline({ { 'INCR', key }, { 'EXPIRE', key, tostring(o.rate_window * 2) } })
    local n = replies and tonumber(replies[1])
    -- Redis unreachable: no report (the limit is a MUST, so failing closed).
    if not n then return false end
    return n <= o.rate_limit
  end
  local key = domain .. '\0' .. window
  if self.window ~= window then
    self.counters, self.window = {}, window
  end
  local n = (self.counters[key] or 0) + 1
  self.counters[key] = n
  return n <= o.rate_limit
end

--- The failure reports one message calls for.
-- @param verdict {table} with record (details.verdict of dmarc.evaluate)
-- @param input {table} the evaluation input (spf, dkim)
-- @param ctx {table} ip, mail_from, rcpt, arrival
-- @param decision {table|nil} site decision (for Delivery-Result)
-- @param headers {table|string} parsed or raw original headers
-- @return array of {to=, message=} (possibly empty), and a reason code when
--   empty ('disabled', 'no_ruf', 'fo', 'loop', 'rate_limited',
--   'unverified', ...)
-- What every report of a message needs: nil, reason when none is due.
function Reporter:_due(verdict, input, ctx, headers)
  local o = self.o
  if not o.enabled then return nil, 'disabled' end
  if type(headers) == 'string' then headers = M.parse_headers(headers) end
  if M.is_loop_risk(headers, ctx, { reporter_address = o.reporter.email }) then return nil, 'loop' end
  local ok, ia = M.should_report(verdict.record, verdict, input)
  if not ok then return nil, ia end
  local domain = verdict.policy_domain and verdict.policy_domain:lower()
  if not report.valid_domain(domain) then return nil, 'bad_domain' end
  return { headers = headers, ia = ia, domain = domain }
end

function Reporter:prepare(verdict, input, ctx, decision, headers)
  local o = self.o
  local due, why0 = self:_due(verdict, input, ctx, headers)
  if not due then return {}, why0 end
  local record, ia, domain = verdict.record, due.ia, due.domain
  headers = due.headers
  if not self:_allow(domain) then return {}, 'rate_limited' end
  local out, why = {}, 'unverified'
  for i, u in ipairs(record.ruf) do
    if i > o.max_ruf then break end
    local addr = mail.mailto_address(u.uri or u)
    if addr then
      local st, final = 'ok', addr
      -- [RUA-5]: the same external-destination check as for rua.
      if o.verify then st, final = o.verify(domain, addr) end
      if st == 'ok' then
        out[#out + 1] = { to = final, message = M.build {
          reporter = o.reporter, to = final, policy_domain = domain, verdict = verdict,
          input = input, ctx = ctx, decision = decision, headers = headers,
          identity_alignment = ia, redact = o.redact, redact_key = o.redact_key,
          now = self.clock(), version = o.version,
        } }
      elseif st == 'temperror' then
        why = 'temperror'
      end
    end
  end
  if #out == 0 then return out, why end
  return out
end

-- The queue command of a message whose reports are due: its entries, one per ruf
-- destination (at most max_ruf), built now; nil, 'no_destination' when none is usable.
function Reporter:_queue_command(due, verdict, input, ctx, decision)
  local o = self.o
  local now = math.floor(self.clock())
  local entries = {}
  for i, u in ipairs(verdict.record.ruf) do
    if i > o.max_ruf then break end
    local addr = mail.mailto_address(type(u) == 'table' and u.uri or u)
    if addr then
      local message = M.build {
        reporter = o.reporter, to = addr, policy_domain = due.domain, verdict = verdict,
        input = input, ctx = ctx, decision = decision, headers = due.headers,
        identity_alignment = due.ia, redact = o.redact, redact_key = o.redact_key,
        now = now, version = o.version,
      }
      local entry = M.encode_entry { domain = due.domain, to = addr, created = now, attempts = 0,
                                     next_at = 0, message = message }
      if #entry <= M.MAX_ENTRY_BYTES then entries[#entries + 1] = entry end
    end
  end
  if #entries == 0 then return nil, 'no_destination' end
  return M.queue_command(o, due.domain, entries, now)
end

--- The Redis command that queues a message's failure reports: counting the
-- message against the policy domain's rate limit [FAIL-7] and adding the
-- entries are one atomic step (QUEUE_SCRIPT). Pure: it builds the command,
-- and a scanner sends it with its own Redis client (the rspamd plugin
-- as EVAL with the script's text, never through lua_redis's script cache).
-- @param o {table} prefix, rate_limit, rate_window, queue_max, queue_ttl
--   (M.defaults for those absent)
-- @param domain {string} the policy domain (report.valid_domain)
-- @param entries {table} array of encoded entries (M.encode_entry)
-- @param now {number} epoch seconds: the rate-limit window
-- @return {'EVAL', QUEUE_SCRIPT, '2', rate key, queue key, rate_limit,
--   2*rate_window, queue_max, queue_ttl, entry...}; its reply goes to
--   M.queue_result
function M.queue_command(o, domain, entries, now)
  local d = M.defaults
  local prefix = o.prefix or d.prefix
  local rate_window = o.rate_window or d.rate_window
  local window = math.floor(now / rate_window)
  local cmd = { 'EVAL', M.QUEUE_SCRIPT, '2', M.rate_key(prefix, domain, window),
                M.queue_key(prefix, domain), tostring(o.rate_limit or d.rate_limit),
                tostring(rate_window * 2), tostring(o.queue_max or d.queue_max),
                tostring(o.queue_ttl or d.queue_ttl) }
  for _, e in ipairs(entries) do cmd[#cmd + 1] = e end
  return cmd
end

--- What the reply to a queue command means.
-- @param reply the script's reply (a number), or anything else for a
--   failed request
-- @param err {string|nil} the client's error, for the 'redis' case
-- @return number of reports queued, and a reason code when 0
--   ('rate_limited', 'queue_full', 'redis'), and for 'redis' the error text
function M.queue_result(reply, err)
  if type(reply) ~= 'number' then
    return 0, 'redis', tostring(err or (type(reply) == 'table' and reply.err) or 'no reply')
  end
  if reply == -1 then return 0, 'rate_limited' end
  if reply == -2 then return 0, 'queue_full' end
  return reply
end

--- The queue command (M.queue_command) for the failure reports one message
-- calls for, without sending it: what a scanner with its own asynchronous
-- Redis client sends. Nothing when no report is due.
-- @param verdict, input, ctx, decision, headers as for prepare
-- @return the command, or nil and a reason code ('disabled', 'no_ruf', 'fo',
--   'loop', 'psd', 'bad_domain', 'no_destination', ...)
function Reporter:queue_command(verdict, input, ctx, decision, headers)
  local due, why = self:_due(verdict, input, ctx, headers)
  if not due then return nil, why end
  return self:_queue_command(due, verdict, input, ctx, decision)
end

--- Queue the failure reports one message calls for in Redis, for `dmarc
-- report send` to verify [RUA-5] and deliver. Counting against the rate
-- limit [FAIL-7] and adding to the queue are one atomic step (QUEUE_SCRIPT,
-- one round trip); nothing is sent to Redis when no report is due.
-- @param verdict, input, ctx, decision, headers as for prepare
-- @return number of reports queued, and a reason code when 0 ('disabled',
--   'no_ruf', 'fo', 'loop', 'rate_limited', 'queue_full', 'no_destination',
--   'redis'), and for 'redis' the error message
function Reporter:queue(verdict, input, ctx, decision, headers)
  local o = self.o
  local due, why = self:_due(verdict, input, ctx, headers)
  if not due then return 0, why end
  if not o.redis then return 0, 'redis', 'no Redis connection for the queue' end
  local cmd
  cmd, why = self:_queue_command(due, verdict, input, ctx, decision)
  if not cmd then return 0, why end
  local replies, err = o.redis:pipeline({ cmd })
  return M.queue_result(replies and replies[1], err)
end

--- Deliver prepared reports through the transport; counts by status.
function Reporter:send(list)
  local counts = { accepted = 0, temp = 0, perm = 0 }
  for _, item in ipairs(list) do
    local st = self.o.transport(self.o.envelope_from or self.o.reporter.email, item.to, item.message)
    counts[st] = (counts[st] or 0) + 1
  end
  return counts
end

return M
