--- Aggregate report XML: RFC 9990 (namespace urn:ietf:params:xml:ns:dmarc-2.0,
-- the default) and the RFC 7489 Appendix C format [OPEN-8] [AGG-9].
--
-- The writer streams: begin() writes the metadata and policy, record() one
-- record at a time, finish() the closing tag. Output goes to a `write`
-- function, so a report of any size never sits in memory whole.
local connect = require 'dmarc.redis.connect'
local files = require 'dmarc.util.files'
local text = require 'dmarc.util.text'

local M = {}

M.NS_9990 = 'urn:ietf:params:xml:ns:dmarc-2.0'
M.NS_7489 = 'http://dmarc.org/dmarc-xml/0.1'
M.FORMATS = { rfc9990 = true, rfc7489 = true }

-- Reason types each format allows [OVR-2]; others become "other" with the
-- original type at the start of the comment.
local REASONS = {
  rfc9990 = { local_policy = true, mailing_list = true, other = true, policy_test_mode = true,
              trusted_forwarder = true },
  rfc7489 = { forwarded = true, sampled_out = true, trusted_forwarder = true,
              mailing_list = true, local_policy = true, other = true },
}
local DKIM_WORDS = { none = true, pass = true, fail = true, policy = true, neutral = true,
                     temperror = true, permerror = true }
local SPF_WORDS = {
  rfc9990 = { none = true, pass = true, fail = true, softfail = true, policy = true,
              neutral = true, temperror = true, permerror = true },
  -- The 7489 schema has no "policy" (RFC 8601 added it later).
  rfc7489 = { none = true, neutral = true, pass = true, fail = true, softfail = true,
              temperror = true, permerror = true },
}

-- ---------------------------------------------------------------------------
-- Text

-- What XML 1.0 cannot carry (C0 controls other than TAB/LF/CR, byte
-- sequences that are not UTF-8) becomes '?' (text.sanitize). Strings
-- in reports come from DNS, headers and site scripts, so this is the guard
-- that keeps every report well-formed.
local sanitize = text.sanitize
M.sanitize = sanitize

local ENT = { ['&'] = '&amp;', ['<'] = '&lt;', ['>'] = '&gt;', ['"'] = '&quot;', ["'"] = '&apos;' }

--- Escape text for element content or attribute values.
function M.escape(s)
  s = tostring(s)
  if not s:find('[&<>"\'%z\1-\31\127-\255]') then return s end
  s = sanitize(s)
  return (s:gsub('[&<>"\']', ENT))
end
local escape = M.escape

--- IPv6 in full eight-group form (the RFC 7489 schema's pattern accepts only
-- that: errata 5221/7865). IPv4 and unparsable text come back unchanged.
function M.expand_ipv6(ip)
  if not ip:find(':', 1, true) then return ip end
  local head, tail = ip, nil
  local dc = ip:find('::', 1, true)
  if dc then head, tail = ip:sub(1, dc - 1), ip:sub(dc + 2) end
  local function groups(s)
    local g = {}
    for _, part in ipairs(text.split(s, ':')) do
      local a, b, c, d = part:match('^(%d+)%.(%d+)%.(%d+)%.(%d+)$')
      if a then
        g[#g + 1] = string.format('%x', tonumber(a) * 256 + tonumber(b))
        g[#g + 1] = string.format('%x', tonumber(c) * 256 + tonumber(d))
      else
        g[#g + 1] = part
      end
    end
    return g
  end
  local h, t = groups(head), groups(tail or '')
  local all = {}
  for _, x in ipairs(h) do all[#all + 1] = x end
  if tail then
    for _ = 1, 8 - #h - #t do all[#all + 1] = '0' end
  end
  for _, x in ipairs(t) do all[#all + 1] = x end
  if #all ~= 8 then return ip end
  for i, x in ipairs(all) do
    if not x:match('^%x%x?%x?%x?$') then return ip end
    all[i] = x:lower()
  end
  return table.concat(all, ':')
end

-- ---------------------------------------------------------------------------
-- Writer

local Writer = {}
Writer.__index = Writer

--- A streaming writer.
-- @param opts {table} format ('rfc9990' default | 'rfc7489'), write
--   (function(string)), indent (default true), xmlns_7489 (put the 7489
--   namespace on the root; reports in the wild usually have none)
function M.writer(opts)
  local format = opts.format or 'rfc9990'
  if not M.FORMATS[format] then error('report_xml.writer: unknown format ' .. tostring(format), 2) end
  if type(opts.write) ~= 'function' then error('report_xml.writer: write function expected', 2) end
  return setmetatable({ format = format, write = opts.write, opts = opts, records = 0 }, Writer)
end

local function el(buf, ind, name, value)
  buf[#buf + 1] = ind .. '<' .. name .. '>' .. escape(value) .. '</' .. name .. '>\n'
end

--- Write the head: version, report_metadata, policy_published.
-- @param meta {table} org_name, email, extra_contact_info, report_id,
--   begin, ['end'], errors (array of strings), generator
-- @param domain {string} the policy domain
-- @param pol {table} published policy (report.policy_of shape)
function Writer:begin(meta, domain, pol)
  local f = self.format
  local b = { '<?xml version="1.0" encoding="UTF-8"?>\n' }
  if f == 'rfc9990' then
    b[#b + 1] = '<feedback xmlns="' .. M.NS_9990 .. '">\n'
  elseif self.opts.xmlns_7489 then
    b[#b + 1] = '<dmarc:feedback xmlns:dmarc="' .. M.NS_7489 .. '">\n'
  else
    b[#b + 1] = '<feedback>\n'
  end
  el(b, '  ', 'version', '1.0')
  b[#b + 1] = '  <report_metadata>\n'
  el(b, '    ', 'org_name', meta.org_name)
  el(b, '    ', 'email', meta.email)
  if meta.extra_contact_info then el(b, '    ', 'extra_contact_info', meta.extra_contact_info) end
  el(b, '    ', 'report_id', meta.report_id)
  b[#b + 1] = '    <date_range>\n'
  el(b, '      ', 'begin', string.format('%d', meta.begin))
  el(b, '      ', 'end', string.format('%d', meta['end']))
  b[#b + 1] = '    </date_range>\n'
  local errors = meta.errors or {}
  if f == 'rfc9990' then
    -- 0..1 error element in RFC 9990: several problems share it.
    if #errors > 0 then el(b, '    ', 'error', table.concat(errors, '; ')) end
    if meta.generator then el(b, '    ', 'generator', meta.generator) end
  else
    for _, e in ipairs(errors) do el(b, '    ', 'error', e) end
  end
  b[#b + 1] = '  </report_metadata>\n'
  b[#b + 1] = '  <policy_published>\n'
  el(b, '    ', 'domain', domain)
  if f == 'rfc9990' then
    if pol.discovery_method then el(b, '    ', 'discovery_method', pol.discovery_method) end
    el(b, '    ', 'p', pol.p or 'none')
    el(b, '    ', 'sp', pol.sp or pol.p or 'none')
    el(b, '    ', 'np', pol.np or pol.sp or pol.p or 'none')
    el(b, '    ', 'adkim', pol.adkim or 'r')
    el(b, '    ', 'aspf', pol.aspf or 'r')
    el(b, '    ', 'fo', pol.fo or '0')
    el(b, '    ', 'testing', pol.testing or 'n')
  else
    el(b, '    ', 'adkim', pol.adkim or 'r')
    el(b, '    ', 'aspf', pol.aspf or 'r')
    el(b, '    ', 'p', pol.p or 'none')
    el(b, '    ', 'sp', pol.sp or pol.p or 'none')
    el(b, '    ', 'pct', string.format('%d', tonumber(pol.pct) or 100))
    el(b, '    ', 'fo', pol.fo or '0')
  end
  b[#b + 1] = '  </policy_published>\n'
  self.write(table.concat(b))
end

-- The three parts of a record other than source_ip and count. Rows of one
-- report share most of them, so record_encoded() caches each part's XML.

local function eval_xml(f, row)
  local b = { '      <policy_evaluated>\n' }
  local disp = row.disposition
  -- RFC 7489 has no "pass" disposition: no action was taken, i.e. none.
  if f == 'rfc7489' and disp == 'pass' then disp = 'none' end
  el(b, '        ', 'disposition', disp)
  el(b, '        ', 'dkim', row.dkim == 'pass' and 'pass' or 'fail')
  el(b, '        ', 'spf', row.spf == 'pass' and 'pass' or 'fail')
  for _, r in ipairs(row.reasons or {}) do
    local t, c = r.type, r.comment
    if not REASONS[f][t] then
      c = c and (t .. ': ' .. c) or t
      t = 'other'
    end
    b[#b + 1] = '        <reason>\n'
    el(b, '          ', 'type', t)
    if c then el(b, '          ', 'comment', c) end
    b[#b + 1] = '        </reason>\n'
  end
  b[#b + 1] = '      </policy_evaluated>\n    </row>\n'
  return table.concat(b)
end

local function ident_xml(f, row)
  local b = { '    <identifiers>\n' }
  if f == 'rfc9990' then
    el(b, '      ', 'header_from', row.header_from)
    -- Optional in 9990 and empty for a null reverse-path: omitted then.
    if row.envelope_from and row.envelope_from ~= '' then
      el(b, '      ', 'envelope_from', row.envelope_from)
    end
    if row.envelope_to then el(b, '      ', 'envelope_to', row.envelope_to) end
  else
    if row.envelope_to then el(b, '      ', 'envelope_to', row.envelope_to) end
    el(b, '      ', 'envelope_from', row.envelope_from or '')
    el(b, '      ', 'header_from', row.header_from)
  end
  b[#b + 1] = '    </identifiers>\n'
  return table.concat(b)
end

local function auth_xml(f, row)
  local b = { '    <auth_results>\n' }
  for _, d in ipairs(row.dkim_results or {}) do
    b[#b + 1] = '      <dkim>\n'
    el(b, '        ', 'domain', d.domain)
    -- Required in 9990 (empty when the signature had none), optional in 7489.
    if f == 'rfc9990' or (d.selector and d.selector ~= '') then
      el(b, '        ', 'selector', d.selector or '')
    end
    el(b, '        ', 'result', DKIM_WORDS[d.result] and d.result or 'none')
    if d.human_result then el(b, '        ', 'human_result', d.human_result) end
    b[#b + 1] = '      </dkim>\n'
  end
  local s = row.spf_result
  if f == 'rfc9990' then
    if s then
      b[#b + 1] = '      <spf>\n'
      el(b, '        ', 'domain', s.domain)
      -- 9990 knows only the mfrom scope; a HELO result goes without one.
      if s.scope == 'mfrom' then el(b, '        ', 'scope', 'mfrom') end
      el(b, '        ', 'result', SPF_WORDS.rfc9990[s.result] and s.result or 'none')
      if s.human_result then el(b, '        ', 'human_result', s.human_result) end
      b[#b + 1] = '      </spf>\n'
    end
  else
    -- 7489 requires at least one spf element with a scope.
    s = s or { domain = (row.envelope_from or '') ~= '' and row.envelope_from or row.header_from,
               scope = 'mfrom', result = 'none' }
    b[#b + 1] = '      <spf>\n'
    el(b, '        ', 'domain', s.domain)
    el(b, '        ', 'scope', s.scope == 'helo' and 'helo' or 'mfrom')
    local r = s.result
    if r == 'policy' then r = 'fail' end
    el(b, '        ', 'result', SPF_WORDS.rfc7489[r] and r or 'none')
    b[#b + 1] = '      </spf>\n'
  end
  b[#b + 1] = '    </auth_results>\n  </record>\n'
  return table.concat(b)
end

local function row_xml(f, ip, count, ev, id, au)
  if f == 'rfc7489' then ip = M.expand_ipv6(ip) end
  return '  <record>\n    <row>\n      <source_ip>' .. escape(ip) .. '</source_ip>\n      <count>'
    .. string.format('%d', count) .. '</count>\n' .. ev .. id .. au
end

--- Write one record: a row of the report with its message count.
-- @param row {table} a decoded row (report.decode_row)
-- @param count {number}
function Writer:record(row, count)
  local f = self.format
  self.write(row_xml(f, row.source_ip, count, eval_xml(f, row), ident_xml(f, row), auth_xml(f, row)))
  self.records = self.records + 1
end

M.CACHE_MAX = 4096 -- fragments cached per writer

local function cached(self, cache, key, build)
  local c = self[cache]
  local v = c[key]
  if v then return v end
  v = build()
  if self[cache .. '_n'] >= M.CACHE_MAX then
    c = {}
    self[cache] = c
    self[cache .. '_n'] = 0
  end
  c[key] = v
  self[cache .. '_n'] = self[cache .. '_n'] + 1
  return v
end

--- Write one record straight from its encoded hash field (report.encode_row):
-- the same XML as record(decode_row(field), count), with the parts rows
-- share built once.
-- @return true, or nil when the field is not a valid row
function Writer:record_encoded(field, count, parts)
  local report = require 'dmarc.report.rows'
  parts = parts or report.split_field(field)
  if not parts then return nil end
  if not self.ev_cache then
    self.ev_cache, self.id_cache, self.au_cache = {}, {}, {}
    self.ev_cache_n, self.id_cache_n, self.au_cache_n = 0, 0, 0
  end
  local f = self.format
  local row
  local function decoded()
    row = row or report.decode_row(field)
    return row
  end
  local ok = true
  local ev = cached(self, 'ev_cache', parts[6] .. '|' .. parts[7] .. '|' .. parts[8] .. '|' .. parts[10],
                    function()
                      local r = decoded()
                      if not r then ok = false return '' end
                      return eval_xml(f, r)
                    end)
  if not ok then return nil end
  local id = cached(self, 'id_cache', parts[2] .. '|' .. parts[3] .. '|' .. parts[4], function()
    local r = decoded()
    if not r then ok = false return '' end
    return ident_xml(f, r)
  end)
  if not ok then return nil end
  local au = cached(self, 'au_cache', parts[11] .. '|' .. parts[12] .. '|' .. parts[2] .. '|' .. parts[3],
                    function()
                      local r = decoded()
                      if not r then ok = false return '' end
                      return auth_xml(f, r)
                    end)
  if not ok then return nil end
  local ip = row and row.source_ip or text.unescape_atom(parts[5])
  self.write(row_xml(f, ip, count, ev, id, au))
  self.records = self.records + 1
  return true
end

function Writer:finish()
  if self.format == 'rfc7489' and self.opts.xmlns_7489 then
    self.write('</dmarc:feedback>\n')
  else
    self.write('</feedback>\n')
  end
end

-- ---------------------------------------------------------------------------
-- Report identity, file names, messages [AGG-5] [MAIL-1..3]

-- Two independent 32-bit polynomial hashes (exact in double arithmetic on
-- both runtimes), printed as 16 hex digits.
local function hash64(s)
  local h1, h2 = 5381, 52711
  for i = 1, #s do
    local c = s:byte(i)
    h1 = (h1 * 33 + c) % 4294967296
    h2 = (h2 * 131 + c) % 4294967291
  end
  return string.format('%08x%08x', h1, h2)
end
M.hash64 = hash64

--- The report_id: stable for the same reporter, domain, period, policy
-- configuration and format, so a regenerated report (a resend) is byte-
-- identical [MAIL-2]; letters and digits only, so it is also a valid
-- unique-id of the file name and a dot-atom-text of ridfmt [AGG-5].
function M.report_id(submitter, domain, begin, policy_key, format)
  local day = os.date('!%Y%m%d', begin)
  return day .. hash64(table.concat({ submitter, domain, tostring(begin), policy_key, format }, '|'))
end

--- receiver "!" policy-domain "!" begin "!" end "!" unique-id ".xml.gz" [MAIL-2]
function M.filename(submitter, domain, begin, finish, report_id)
  return string.format('%s!%s!%d!%d!%s.xml.gz', submitter, domain, begin, finish, report_id)
end

local B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local B64_PAIRS = {}
for i = 0, 4095 do
  local a, b = math.floor(i / 64), i % 64
  B64_PAIRS[i] = B64:sub(a + 1, a + 1) .. B64:sub(b + 1, b + 1)
end

--- Base64 (RFC 2045) in lines of 76 characters ending in CRLF.
function M.base64(data)
  local out = {}
  local n = #data
  local full = n - n % 3
  local line = {}
  for i = 1, full, 3 do
    local a, b, c = data:byte(i, i + 2)
    local v = a * 65536 + b * 256 + c
    line[#line + 1] = B64_PAIRS[math.floor(v / 4096)] .. B64_PAIRS[v % 4096]
    if #line == 19 then
      out[#out + 1] = table.concat(line)
      line = {}
    end
  end
  local rest = n - full
  if rest > 0 then
    local a, b = data:byte(full + 1, n)
    local v = a * 65536 + (b or 0) * 256
    local q = B64_PAIRS[math.floor(v / 4096)] .. B64_PAIRS[v % 4096]
    line[#line + 1] = rest == 1 and (q:sub(1, 2) .. '==') or (q:sub(1, 3) .. '=')
  end
  if #line > 0 then out[#out + 1] = table.concat(line) end
  if #out == 0 then return '' end
  return table.concat(out, '\r\n') .. '\r\n'
end

local DAYS = { 'Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat' }
local MONTHS = { 'Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec' }

--- RFC 5322 date-time in UTC, independent of the locale.
function M.rfc5322_date(t)
  local d = os.date('!*t', t)
  return string.format('%s, %02d %s %04d %02d:%02d:%02d +0000', DAYS[d.wday], d.day,
                       MONTHS[d.month], d.year, d.hour, d.min, d.sec)
end

-- A header value from data: no CR/LF or other controls can reach the header.
local function header_safe(s)
  return (tostring(s):gsub('[%c]', ' '))
end

--- The report message for one destination [MAIL-1] [MAIL-3]: multipart/
-- mixed with a short text part and the gzip attachment. Everything in it
-- is derived from the report, so regenerating it gives the same bytes.
-- @param r {table} report_id, domain, submitter, org_name, email, begin,
--   ['end'], filename, gz (the attachment's bytes), to (address), format
function M.message(r)
  local boundary = '=_' .. r.report_id
  local subject = string.format('Report Domain: %s Submitter: %s Report-ID: <%s>', r.domain,
                                r.submitter, r.report_id)
  local from_name = header_safe(r.org_name):gsub('["\\]', '')
  local lines = {
    'From: "' .. from_name .. '" <' .. header_safe(r.email) .. '>',
    'To: <' .. header_safe(r.to) .. '>',
    'Date: ' .. M.rfc5322_date(r['end'] + 1),
    'Subject: ' .. subject,
    'Message-ID: <' .. r.report_id .. '@' .. r.submitter .. '>',
    'MIME-Version: 1.0',
    -- RFC 3834: marks the report as automatic, one of the loop guards.
    'Auto-Submitted: auto-generated',
    'Content-Type: multipart/mixed; boundary="' .. boundary .. '"',
    '',
    'This is a MIME-formatted message.',
    '',
    '--' .. boundary,
    'Content-Type: text/plain; charset=us-ascii',
    'Content-Transfer-Encoding: 7bit',
    '',
    string.format('DMARC aggregate report (%s) for %s from %s,', r.format == 'rfc7489'
                  and 'RFC 7489' or 'RFC 9990', r.domain, r.submitter),
    string.format('covering %s to %s.', os.date('!%Y-%m-%d %H:%M:%S UTC', r.begin),
                  os.date('!%Y-%m-%d %H:%M:%S UTC', r['end'])),
    '',
    '--' .. boundary,
    'Content-Type: application/gzip; name="' .. r.filename .. '"',
    'Content-Disposition: attachment; filename="' .. r.filename .. '"',
    'Content-Transfer-Encoding: base64',
    '',
  }
  return table.concat(lines, '\r\n') .. '\r\n' .. M.base64(r.gz) .. '\r\n--' .. boundary
    .. '--\r\n'
end

-- ---------------------------------------------------------------------------
-- Generation: Redis rows → one report per policy domain, period and policy
-- configuration, gzip'd, with one message per mailto destination and a
-- manifest that `dmarc report send` works from.

M.GENERATOR = 'lua-dmarc'
M.GZIP_BATCH = 200         -- reports compressed per gzip process
M.MAX_PERIOD_DAYS = 31     -- longest period one run covers
M.HSCAN_COUNT = 1000

local shell_quote = text.shell_quote
M.shell_quote = shell_quote

-- Files are written in place, not through a temporary name and a rename:
-- ext4 starts writeback on such a rename, which made generation several
-- times slower. A manifest is written after the messages it names, and a
-- cut-off manifest is not valid JSON (send skips it), so a crash never
-- makes send use a half-written file.
local read_file, write_file = files.read, files.write
M.read_file = read_file
M.write_file = write_file

--- The address of a mailto: URI (RFC 6068), lowercased domain, or nil,
-- code. Anything that could inject into an SMTP command or a header is
-- refused.
function M.mailto_address(uri)
  if type(uri) ~= 'string' then return nil, 'bad_uri' end
  local rest = uri:match('^[Mm][Aa][Ii][Ll][Tt][Oo]:(.*)$')
  if not rest then return nil, 'unsupported_scheme' end
  rest = text.percent_decode(rest:match('^([^?]*)') or '')
  local lp, dom = rest:match('^([^@]+)@([^@]+)$')
  if not lp or #rest > 254 or lp:find('[%c%s<>,;:"\\%(%)%[%]]') then return nil, 'bad_uri' end
  dom = dom:lower()
  local report = require 'dmarc.report.rows'
  if not report.valid_domain(dom) then return nil, 'bad_uri' end
  return lp .. '@' .. dom, dom
end

local function day_list(begin, finish)
  local report = require 'dmarc.report.rows'
  local days = {}
  local t = begin
  while t < finish and #days < M.MAX_PERIOD_DAYS do
    days[#days + 1] = report.day_of(t)
    t = t + 86400
  end
  return days
end
M.day_list = day_list

-- Everything stored for one policy domain over the period's days.
local function collect_domain(conn, prefix, domain, days, max_rows, state_key)
  local report = require 'dmarc.report.rows'
  local agg, nfields = {}, 0
  local meta = { dropped_rows = 0, dropped_messages = 0, lost_messages = 0 }
  local keys = {}
  for _, day in ipairs(days) do
    local k = report.keys(prefix, domain, day)
    keys[#keys + 1] = k.rows
    keys[#keys + 1] = k.meta
    local cursor = '0'
    local first = true
    repeat
      local cmds = { { 'HSCAN', k.rows, cursor, 'COUNT', tostring(M.HSCAN_COUNT) } }
      if first then cmds[2] = { 'HGETALL', k.meta } end
      if first and state_key and day == days[1] then
        cmds[3] = { 'HGET', state_key, 'complete' }
      end
      local replies, err, code = conn:pipeline(cmds)
      if not replies then return nil, err, code end
      -- A period whose reports were all delivered is not generated again:
      -- rows that arrived after that are not reported twice (or differently).
      if replies[3] == '1' then return 'complete' end
      local page = replies[1]
      if type(page) ~= 'table' or page.err then
        return nil, 'HSCAN failed: ' .. tostring(page and page.err), 'redis'
      end
      if first then
        local m = connect.hash_reply(replies[2])
        if m.rua and m.rua ~= '' then meta.rua = m.rua end
        if m.policy and m.policy ~= '' then meta.policy = m.policy end
        for _, f in ipairs({ 'dropped_rows', 'dropped_messages', 'lost_messages' }) do
          meta[f] = meta[f] + (tonumber(m[f]) or 0)
        end
        first = false
      end
      cursor = tostring(page[1])
      local items = type(page[2]) == 'table' and page[2] or {}
      for i = 1, #items - 1, 2 do
        local field, n = items[i], tonumber(items[i + 1]) or 0
        if agg[field] then
          agg[field] = agg[field] + n
        elseif nfields < max_rows then
          agg[field] = n
          nfields = nfields + 1
        else
          meta.dropped_rows = meta.dropped_rows + 1
          meta.dropped_messages = meta.dropped_messages + n
        end
      end
    until cursor == '0'
  end
  return agg, meta, keys
end

--- Generate the reports of a period.
-- @param opts {table}
--   redis       a dmarc.redis connection or a dmarc.redis.cluster router
--   prefix      key prefix (default report.defaults.prefix)
--   begin       period start, epoch seconds at 00:00 UTC
--   ['end']     period end (exclusive), at 00:00 UTC
--   format      'rfc9990' (default) | 'rfc7489'
--   out         output directory (exists)
--   reporter    { org_name, email, submitter, extra_contact_info }
--   max_rows    rows read per domain (default report.defaults.max_rows)
--   domains     optional array: only these policy domains
--   progress    function(done, total) called as domains complete
--   gzip        command prefix (default 'gzip -n -f -6 --')
-- @return summary {domains, reports, records, messages, skipped_rows,
--   manifests = {paths}}, or nil, msg, code
function M.generate(opts)
  local report = require 'dmarc.report.rows'
  local cluster = require 'dmarc.redis.cluster'
  local cjson = require 'cjson'
  local conn = opts.redis
  local prefix = opts.prefix or report.defaults.prefix
  local format = opts.format or 'rfc9990'
  local rep = opts.reporter or {}
  if not M.FORMATS[format] then return nil, 'unknown format ' .. tostring(format), 'usage' end
  if not report.valid_prefix(prefix) then return nil, 'invalid key prefix', 'usage' end
  for _, f in ipairs({ 'org_name', 'email', 'submitter' }) do
    if type(rep[f]) ~= 'string' or rep[f] == '' then
      return nil, 'reporter ' .. f .. ' is required (option or config file)', 'usage'
    end
  end
  local submitter = rep.submitter:lower()
  if not report.valid_domain(submitter) then return nil, 'invalid submitter domain', 'usage' end
  local begin, finish = opts.begin, opts['end']
  if type(begin) ~= 'number' or type(finish) ~= 'number' or begin % 86400 ~= 0
      or finish % 86400 ~= 0 or finish <= begin then
    return nil, 'the period must start and end at 00:00 UTC', 'usage'
  end
  if (finish - begin) / 86400 > M.MAX_PERIOD_DAYS then
    return nil, 'a period covers at most ' .. M.MAX_PERIOD_DAYS .. ' days', 'usage'
  end
  local out = opts.out
  local days = day_list(begin, finish)
  local last = finish - 1 -- date_range end: the period's last second, inclusive

  -- Which policy domains have rows in the period.
  local domains, seen = {}, {}
  if opts.domains then
    for _, d in ipairs(opts.domains) do
      if report.valid_domain(d) and not seen[d] then
        seen[d] = true
        domains[#domains + 1] = d
      end
    end
  else
    for _, day in ipairs(days) do
      local keys, err, code = cluster.scan(conn, report.scan_pattern(prefix, day))
      if not keys then return nil, err, code end
      for _, k in ipairs(keys) do
        local d = report.domain_of_key(prefix, k)
        if d and not seen[d] then
          seen[d] = true
          domains[#domains + 1] = d
        end
      end
    end
  end
  table.sort(domains)

  local summary = { domains = 0, reports = 0, records = 0, messages = 0, skipped_rows = 0,
                    manifests = {} }
  local pending = {} -- manifests whose XML waits for gzip
  local gzip = opts.gzip or 'gzip -n -f -6 --'

  -- Compression runs in a gzip process per batch of reports, started
  -- without waiting (io.popen), so it overlaps with writing the next batch;
  -- a batch's messages and manifests are written once its gzip is done.
  local in_flight -- { handle, batch }

  local function finish_batch(batch)
    for _, man in ipairs(batch) do
      for _, r in ipairs(man.reports) do
        local gz, err = read_file(out .. '/' .. r.file)
        if not gz then return nil, err, 'io' end
        r.size = #gz
        for k, d in ipairs(r.destinations) do
          if d.address then
            local msg = M.message {
              report_id = r.report_id, domain = man.policy_domain, submitter = submitter,
              org_name = rep.org_name, email = rep.email, begin = man.begin, ['end'] = man['end'],
              filename = r.file, gz = gz, to = d.address, format = format,
            }
            d.message = r.report_id .. '.' .. k .. '.eml'
            d.message_size = #msg
            local okw, werr = write_file(out .. '/' .. d.message, msg)
            if not okw then return nil, werr, 'io' end
            summary.messages = summary.messages + 1
          end
        end
        r.xml = nil
      end
      local path = out .. '/' .. man.policy_domain .. '!' .. man.begin .. '!' .. man['end']
        .. '.json'
      local okw, werr = write_file(path, cjson.encode(man))
      if not okw then return nil, werr, 'io' end
      summary.manifests[#summary.manifests + 1] = path
    end
    return true
  end

  local function wait_in_flight()
    if not in_flight then return true end
    local h, batch = in_flight[1], in_flight[2]
    in_flight = nil
    local status = tonumber((h:read('*a') or ''):match('gzip=(%d+)'))
    h:close()
    if status ~= 0 then return nil, 'gzip failed with status ' .. tostring(status), 'io' end
    return finish_batch(batch)
  end

  local function flush_pending()
    if #pending == 0 then return true end
    local ok, err, code = wait_in_flight()
    if not ok then return nil, err, code end
    local args = {}
    for _, man in ipairs(pending) do
      for _, r in ipairs(man.reports) do args[#args + 1] = shell_quote(out .. '/' .. r.xml) end
    end
    local h = io.popen(gzip .. ' ' .. table.concat(args, ' ') .. ' </dev/null; echo "gzip=$?"')
    if not h then return nil, 'cannot run gzip', 'io' end
    in_flight = { h, pending }
    pending = {}
    return true
  end

  for di, domain in ipairs(domains) do
    local agg, meta, keys = collect_domain(conn, prefix, domain, days,
                                           opts.max_rows or report.defaults.max_rows,
                                           not opts.force and report.state_key(prefix, domain, begin,
                                                                                last) or nil)
    if not agg then return nil, meta, keys end
    if agg == 'complete' then
      summary.already_sent = (summary.already_sent or 0) + 1
      agg = {}
    end
    -- Group rows by policy configuration [AGG-1].
    local groups, group_keys = {}, {}
    for field, n in pairs(agg) do
      local parts = report.split_field(field)
      if parts and n > 0 then
        local pk = parts[9]
        local g = groups[pk]
        if not g then
          g = { fields = {}, parts = {}, policy = report.decode_policy(pk) }
          groups[pk] = g
          group_keys[#group_keys + 1] = pk
        end
        g.fields[#g.fields + 1] = field
        g.parts[field] = parts
      elseif not parts then
        summary.skipped_rows = summary.skipped_rows + 1
      end
    end
    table.sort(group_keys)
    if #group_keys > 0 then
      local errors = {}
      if meta.dropped_messages > 0 then
        errors[#errors + 1] = string.format(
          '%d messages in %d distinct rows are not itemised: the row limit was reached',
          meta.dropped_messages, meta.dropped_rows)
      end
      if meta.lost_messages > 0 then
        errors[#errors + 1] = string.format(
          '%d messages were not recorded while the report store was unavailable',
          meta.lost_messages)
      end
      -- Problems are told once, in the report of the configuration in force
      -- at the end of the period.
      local final = groups[meta.policy or ''] and meta.policy or group_keys[#group_keys]
      local destinations = {}
      for _, u in ipairs(report.decode_rua(meta.rua)) do
        local addr, why = M.mailto_address(u.uri)
        destinations[#destinations + 1] = { uri = u.uri, max_size = u.max_size,
                                            address = addr, skipped = not addr and why or nil }
      end
      local man = { version = 1, policy_domain = domain, begin = begin, ['end'] = last,
                    format = format, prefix = prefix, keys = keys, reports = {} }
      for _, pk in ipairs(group_keys) do
        local g = groups[pk]
        table.sort(g.fields)
        local rid = M.report_id(submitter, domain, begin, pk, format)
        local file = M.filename(submitter, domain, begin, last, rid)
        local xml_name = file:sub(1, -4)
        local f, err = io.open(out .. '/' .. xml_name, 'wb')
        if not f then return nil, err, 'io' end
        local chunks = {}
        local function put(s)
          chunks[#chunks + 1] = s
          if #chunks >= 256 then
            f:write(table.concat(chunks))
            chunks = {}
          end
        end
        local w = M.writer { format = format, write = put }
        w:begin({ org_name = rep.org_name, email = rep.email,
                  extra_contact_info = rep.extra_contact_info, report_id = rid, begin = begin,
                  ['end'] = last, errors = pk == final and errors or nil,
                  generator = opts.version and (M.GENERATOR .. ' ' .. opts.version)
                    or M.GENERATOR },
                domain, g.policy)
        local written = 0
        for _, field in ipairs(g.fields) do
          if w:record_encoded(field, agg[field], g.parts[field]) then
            written = written + 1
          else
            summary.skipped_rows = summary.skipped_rows + 1
          end
        end
        w:finish()
        f:write(table.concat(chunks))
        f:close()
        summary.records = summary.records + written
        summary.reports = summary.reports + 1
        local dests = {}
        for i, d in ipairs(destinations) do
          dests[i] = { uri = d.uri, max_size = d.max_size, address = d.address,
                       skipped = d.skipped }
        end
        man.reports[#man.reports + 1] = { report_id = rid, file = file, xml = xml_name,
                                          destinations = dests }
      end
      pending[#pending + 1] = man
      summary.domains = summary.domains + 1
    end
    local n = 0
    for _, man in ipairs(pending) do n = n + #man.reports end
    if n >= M.GZIP_BATCH then
      local ok, err, code = flush_pending()
      if not ok then return nil, err, code end
    end
    if opts.progress then opts.progress(di, #domains) end
  end
  local ok, err, code = flush_pending()
  if ok then ok, err, code = wait_in_flight() end
  if not ok then return nil, err, code end
  return summary
end

return M
