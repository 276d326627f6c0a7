--- The report mail (RFC 5322, MIME): the message that carries one aggregate report to one
-- destination [MAIL-1] [MAIL-3], the dates and addresses it is made of, and base64 through
-- LuaSocket's mime (the one codec of the project).
--
--   local mail = require 'dmarc.report.mail'
--   local msg = mail.message { report_id = ..., to = 'dmarc@example.com', gz = bytes, ... }
-- @module dmarc.report.mail

local mime = require 'mime.core' -- LuaSocket's codec (mime.lua only adds filters)
local keys = require 'dmarc.redis.keys'
local text = require 'dmarc.util.text'

local M = {}

--- Base64 line length of a MIME body part (RFC 2045 §6.8: at most 76).
M.BASE64_LINE = 76

--- Base64 (RFC 2045) in lines of 76 characters ending in CRLF.
function M.base64(data)
  local encoded = mime.b64(data) or ''
  if encoded == '' then return '' end
  local out = {}
  -- One round per line: #encoded / 76 rounds.
  for i = 1, #encoded, M.BASE64_LINE do out[#out + 1] = encoded:sub(i, i + M.BASE64_LINE - 1) end
  return table.concat(out, '\r\n') .. '\r\n'
end

--- Base64 on one line, as SMTP AUTH wants it (RFC 4954).
function M.base64_line(data)
  return mime.b64(data) or ''
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
  if not keys.valid_domain(dom) then return nil, 'bad_uri' end
  return lp .. '@' .. dom, dom
end

return M
