--- Aggregate report XML: RFC 9990 (namespace urn:ietf:params:xml:ns:dmarc-2.0,
-- the default) and the RFC 7489 Appendix C format [OPEN-8] [AGG-9].
--
-- The writer streams: begin() writes the metadata and policy, record() one
-- record at a time, finish() the closing tag. Output goes to a `write`
-- function, so a report of any size never sits in memory whole. The report mail is
-- dmarc.report.mail; generation from the rows in Redis is dmarc.report.generate.
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
-- Report identity and file names [AGG-5] [MAIL-2]

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

return M
