--- Ingest of aggregate reports received from other receivers: the domain
-- owner's side of RFC 9990 (and RFC 7489 Appendix C reports).
--
-- A report arrives as XML, .xml.gz, .zip, or a whole report e-mail. It is
-- unwrapped (`extract`; a file on disk by `ingest_file`, where it lies: read
-- a window at a time, layers and attachments through temporary files, so no
-- form is held whole), parsed by libxml2 through `dmarc.xml` (`parse`),
-- checked and normalised (`normalize`), and stored in Redis whole or not at
-- all (`store`): one server-side script per report, every key of the policy
-- domain in one Cluster slot ({DOMAIN} hash tag), deduplicated by
-- (org_name, report_id) so ingesting the same report again changes nothing.
-- Key schema and conventions: docs/ingest.md (prefix, hash tags and TTLs
-- follow docs/report-keys.md).
--
-- Everything read here is hostile until proven otherwise ([MAIL-6], RFC 9990
-- §8): sizes, ratios, nesting, counts and string lengths are bounded by the
-- named limits below, and bad input gives nil, message, code (never a raise).
local mime = require 'mime.core' -- LuaSocket's codec (mime.lua only adds filters)
local keys = require 'dmarc.redis.keys'
local text_util = require 'dmarc.util.text'
local failures = require 'dmarc.owner.failures'
local header_fields = require 'dmarc.receive.message'

local unpack = table.unpack or unpack -- luacheck: ignore 143 (LuaJIT)

local M = {}

M.VERSION = 1

M.NS_9990 = 'urn:ietf:params:xml:ns:dmarc-2.0'
M.NS_7489 = 'http://dmarc.org/dmarc-xml/0.1'

--- Named bounds on untrusted input.
M.limits = {
  max_input = 64 * 1024 * 1024,  -- bytes read from one file (or stdin)
  max_xml = 64 * 1024 * 1024,    -- bytes of XML after decompression (RFC 7489 §8: 10 MB+)
  max_ratio = 200,               -- decompressed / compressed ([MAIL-6] bombs)
  max_depth = 16,                -- XML nesting (a report needs 5)
  max_elements = 4000000,        -- XML elements of one report (a record has about 20)
  max_records = 200000,          -- <record> elements in one report
  max_files = 100000,            -- files taken from the paths of one run
  max_attachments = 100,         -- report attachments read from one e-mail (more: 'limit')
  max_mime_parts = 256,          -- MIME parts looked at in one e-mail (more: 'limit')
  max_mime_depth = 8,            -- nested multiparts / message/rfc822 (forwarded twice: 5)
  max_layers = 3,                -- compression layers (gzip inside gzip: 2)
  max_messages = 100000,         -- messages read from one mbox file (more: 'limit')
  max_mbox = 16 * 1024 * 1024 * 1024, -- bytes of one mbox file (read one message at a time)
  max_failures = 1000,           -- failures listed in --json (all are counted and printed)
  max_header = 256 * 1024,       -- bytes of one MIME header block
  max_header_lines = 1000,       -- header fields of one MIME header block
  max_header_params = 32,        -- parameters of one structured header field
  max_labels = 127,              -- labels of a domain name (253 bytes / 2)
  max_dkim = 100,                -- DKIM results kept per record [AGG-6]
  max_spf = 8,                   -- SPF results kept per record (7489: 1..n)
  max_reasons = 8,               -- reasons kept per record (as dmarc.report.rows)
  max_errors = 8,                -- report_metadata/error kept per report
  max_text = 256,                -- bytes kept of a comment, org name, selector ...
  max_count = 1e12,              -- largest message count believed for one record
  max_range = 31 * 86400,        -- longer date_range: stored with the warning long_range
}

M.defaults = {
  prefix = 'dmarc:',
  ttl = 180 * 86400,      -- ingested data: half a year of history for the dashboard
  max_rows = 200000,      -- distinct rows per policy domain and day
  stage_ttl = 3600,       -- a staged large report disappears if the run dies
  stage_pairs = 1000,     -- field/count pairs per staging command
  batch = 1000,           -- records parsed, normalised and staged at a time
}

-- Known words; anything else is kept as 'unknown' (never as the raw text).
local DISPOSITIONS = { none = true, pass = true, quarantine = true, reject = true }
local ALIGNED = { pass = true, fail = true }
local AUTH_WORDS = {
  none = true, pass = true, fail = true, softfail = true, neutral = true,
  policy = true, temperror = true, permerror = true,
}
local REASON_TYPES = {
  forwarded = true, sampled_out = true, trusted_forwarder = true, mailing_list = true,
  local_policy = true, other = true, policy_test_mode = true,
}
local POLICIES = { none = true, quarantine = true, reject = true }
local ALIGN_MODES = { r = true, s = true }
local SPF_SCOPES = { mfrom = true, helo = true }
local DISCOVERY = { psl = true, treewalk = true }
local YES_NO = { y = true, n = true }

-- The parser's view of a report: which children repeat (RFC 9990 App. A,
-- RFC 7489 App. C).
local ARRAY_PAIRS = {
  'feedback/record', 'policy_evaluated/reason', 'auth_results/dkim', 'auth_results/spf',
  'report_metadata/error',
}

-- ---------------------------------------------------------------------------
-- Small helpers

local function xmlmod()
  local ok, x = pcall(require, 'dmarc.xml')
  if not ok then return nil end
  return x
end

--- Keeps what a report string may show: at most n bytes, C0 controls and
-- DEL replaced by '?' (the storage escape keeps everything else safe).
local function clip(s, n)
  if type(s) ~= 'string' then return nil end
  if #s > n then s = s:sub(1, n) end
  if s:find('[%z\1-\31\127]') then s = s:gsub('[%z\1-\31\127]', '?') end
  return s
end
M.clip = clip

local function text(v, n)
  if type(v) ~= 'string' then return nil end
  return clip(v, n or M.limits.max_text)
end

local function word(v, set)
  if type(v) ~= 'string' then return nil end
  v = v:lower()
  if set[v] then return v end
  return nil
end

-- A domain as reports carry it: lowercased, trailing dot dropped. nil when
-- it is not a valid host name (valid_domain of dmarc.report.rows).
local function domain(v)
  if type(v) ~= 'string' then return nil end
  v = v:lower():gsub('%.$', '')
  if keys.valid_domain(v) then return v end
  return nil
end

-- Domains that are not host names are still shown (escaped), but never used
-- in keys.
local function loose_domain(v)
  if type(v) ~= 'string' then return '' end
  return clip(v:lower(), 253)
end

local function integer(v, max)
  if type(v) ~= 'string' or not v:match('^%d+$') or #v > 15 then return nil end
  local n = tonumber(v)
  if n > max then return nil end
  return n
end

local function list(v)
  if type(v) == 'table' then return v end
  return {}
end

local function hex(s)
  return (s:gsub('.', function(c) return string.format('%02x', c:byte()) end))
end

-- ---------------------------------------------------------------------------
-- Unwrapping: gzip, zip, MIME

--- What the bytes are: 'gzip', 'zip', 'xml', 'xml16' (UTF-16 with a
-- byte-order mark, which libxml2 reads), 'mbox', 'mime' or nil.
function M.sniff(data)
  if type(data) ~= 'string' or #data < 2 then return nil end
  local a, b, c, d = data:byte(1, 4)
  if a == 0x1f and b == 0x8b then return 'gzip' end
  if a == 0x50 and b == 0x4b and (c == 3 and d == 4 or c == 5 and d == 6) then return 'zip' end
  if (a == 0xff and b == 0xfe or a == 0xfe and b == 0xff) and #data >= 4 then
    -- '<' (or white space) as the first UTF-16 character.
    local ch = a == 0xff and c + 256 * d or d + 256 * c
    if ch == 0x3c or ch == 0x20 or ch == 0x0a or ch == 0x0d or ch == 0x09 then return 'xml16' end
  end
  local head = data:sub(1, 512):gsub('^\239\187\191', '')
  if head:match('^%s*<') then return 'xml' end
  -- The "From " separator line mail tools write first in an mbox file.
  if head:match('^From [^\r\n]*\r?\n') then return 'mbox' end
  -- An RFC 5322 header field: a name, a colon.
  if head:match('^[!-9;-~]+:') then return 'mime' end
  return nil
end

--- Base64 (RFC 2045 §6.8): characters outside the alphabet are skipped,
-- decoding stops at padding; a last incomplete group gives the bytes it holds.
-- The decoding is LuaSocket's mime (the project's one base64 codec).
function M.base64_decode(s)
  s = s:gsub('[^%w%+/=]', '')
  local pad = s:find('=', 1, true)
  if pad then s = s:sub(1, pad - 1) end
  local rest = #s % 4
  if rest == 1 then
    s = s:sub(1, -2)
  elseif rest > 1 then
    s = s .. ('='):rep(4 - rest)
  end
  return (mime.unb64(s)) or ''
end

--- Quoted-printable (RFC 2045 §6.7): soft line breaks and =XX only. Not mime.unqp, which
-- also rewrites line ends and drops trailing blanks: the decoded bytes would change.
function M.qp_decode(s)
  s = s:gsub('=\r?\n', '')
  return (s:gsub('=(%x%x)', function(h) return string.char(tonumber(h, 16)) end))
end

-- Header fields of one MIME entity: lowercased name → first value, unfolded; read by the one
-- lenient header walker (dmarc.receive.message.header_map: a bad line is skipped, never the
-- report). The block is within max_header, so no field is dropped for its length.
local function parse_headers(block)
  return (header_fields.header_map(block, { max_fields = M.limits.max_header_lines,
                                            max_field_bytes = 2 * M.limits.max_header }))
end

-- The value and parameters of a structured header field (RFC 2045 §5.1, RFC 2183, RFC 2231):
-- dmarc.receive.message.mime_params.
local function header_params(value)
  return header_fields.mime_params(value, M.limits.max_header_params)
end

local REPORT_TYPES = {
  ['application/gzip'] = true, ['application/x-gzip'] = true, ['application/zip'] = true,
  ['application/x-zip-compressed'] = true, ['application/x-zip'] = true,
  ['text/xml'] = true, ['application/xml'] = true, ['application/octet-stream'] = true,
}

-- The MIME walk reads a message from a source: a string, or a file read a
-- window at a time, so a message of any size within max_input costs a window
-- of memory. An entity is a range [a, b] of the source (1-based, inclusive);
-- bodies stay ranges until an attachment is decoded, a chunk at a time.
local SCAN = 65536

-- A failure of a file the run reads or writes itself (a file cut short
-- under the MIME walk, a temporary file that cannot be made or written): a
-- table raised through the walk and caught where the input is read, so that
-- input fails with 'io' and the run goes on.
local IO_FAILURE = {}

local function io_fail(message)
  error(setmetatable({ message = message }, IO_FAILURE), 0)
end

-- The result for an error caught from reading one input: its 'io' failure;
-- anything else is raised again (a bug is never turned into a result).
local function io_result(err)
  if getmetatable(err) == IO_FAILURE then
    return { status = 'error', message = err.message, code = 'io' }
  end
  error(err, 0)
end

local function checked_write(f, piece)
  local ok, err = f:write(piece)
  if not ok then io_fail('temporary file not written: ' .. tostring(err)) end
end

local function open_temp(path, mode)
  local f, err = io.open(path, mode)
  if not f then io_fail('temporary file not opened: ' .. tostring(err)) end
  return f
end

local function string_source(str)
  local src = { len = #str }
  function src.sub(_, i, j)
    if j < i then return '' end
    return str:sub(i, j)
  end
  -- needle (plain) at or after init, wholly inside [init, last]
  function src.find(_, needle, init, last)
    local s, e = str:find(needle, init, true)
    if s and e <= last then return s, e end
    return nil
  end
  return src
end

local function file_source(f, size)
  local src = { len = size }
  function src.sub(_, i, j)
    if i < 1 then i = 1 end
    if j > size then j = size end
    if j < i then return '' end
    local d = f:seek('set', i - 1) and f:read(j - i + 1)
    if not d or #d < j - i + 1 then io_fail('file cut short while it was read') end
    return d
  end
  function src.find(self, needle, init, last)
    local n = #needle
    -- Bound: each window moves SCAN bytes on, to the end of the range.
    for pos = init, last - n + 1, SCAN do
      local chunk = self:sub(pos, math.min(last, pos + SCAN + n - 2))
      local s = chunk:find(needle, 1, true)
      if s then return pos + s - 1, pos + s + n - 2 end
    end
    return nil
  end
  return src
end

-- An entity's header block and body (RFC 5322 §2.1: the first empty line).
-- A header block is only read up to max_header: when no empty line ends it
-- there, the head is the whole range (over the bound either way; a caller
-- that takes its first max_header bytes gets the same bytes).
-- @return ha, hb, ba, bb
local function split_entity(src, a, b)
  local chunk = src:sub(a, math.min(b, a + M.limits.max_header + 8))
  local s, e = chunk:find('\r?\n\r?\n')
  if not s then return a, b, b + 1, b end
  return a, a + s - 2, a + e, b
end

-- The MIME walk of one message: `w` holds what it found, the parts and
-- report attachments counted so far, and the bounds already told.

-- One failure entry per bound: the first time it is hit.
local function over(w, key, message)
  if w.told[key] then return end
  w.told[key] = true
  w.found[#w.found + 1] = { error = message, code = 'limit' }
end

-- The body parts of a multipart entity (RFC 2046 §5.1), at most
-- max_mime_parts: ranges of src. The body is read as if a line end came
-- before it (a delimiter may open the body), in positions p of that text:
-- p = 1 is the line end, p > 1 the source's a + p - 2.
local function split_parts(w, src, a, b, cparams)
  local limits = M.limits
  local boundary = cparams.boundary
  if not boundary or boundary == '' or #boundary > 200 then return {} end
  local delim = '--' .. boundary
  local blen = b - a + 2
  local function find(needle, init)
    if init == 1 and src:sub(a, math.min(b, a + #needle - 2)) == needle:sub(2) then
      return 1, #needle
    end
    local s, e = src:find(needle, a + math.max(init, 2) - 2, b)
    if s then return s - a + 2, e - a + 2 end
    return nil
  end
  local pos = 1
  local starts = {}
  while true do
    if #starts > limits.max_mime_parts then
      over(w, 'parts', 'more than ' .. limits.max_mime_parts .. ' MIME parts in one message')
      break
    end
    local s, e = find('\n' .. delim, pos)
    if not s then break end
    local closing = src:sub(a + e - 1, math.min(b, a + e)) == '--'
    local line_end = find('\n', e + 1)
    starts[#starts + 1] = { s = s, after = line_end and line_end + 1 or blen + 1,
                            closing = closing }
    if closing or not line_end then break end
    pos = line_end
  end
  local parts = {}
  for i = 1, #starts - 1 do
    if starts[i].closing then break end
    local pa, pb = a + starts[i].after - 2, a + starts[i + 1].s - 3
    if pb >= pa and src:sub(pb, pb) == '\r' then pb = pb - 1 end
    parts[#parts + 1] = { pa, pb }
  end
  return parts
end

-- Decoders fed a chunk at a time (nil: the end), giving the bytes of
-- M.base64_decode and M.qp_decode on the whole text to out(piece).
local function base64_decoder(out)
  local carry, stopped = '', false
  return function(chunk)
    if chunk == nil then
      local rest = #carry % 4
      if rest == 1 then
        carry = carry:sub(1, -2)
      elseif rest > 1 then
        carry = carry .. ('='):rep(4 - rest)
      end
      if carry ~= '' then out((mime.unb64(carry)) or '') end
      return
    end
    if stopped then return end
    local buf = carry .. chunk:gsub('[^%w%+/=]', '')
    local pad = buf:find('=', 1, true)
    if pad then
      buf = buf:sub(1, pad - 1)
      stopped = true
    end
    local whole = #buf - #buf % 4
    if whole > 0 then out((mime.unb64(buf:sub(1, whole))) or '') end
    carry = buf:sub(whole + 1)
  end
end

local function qp_unhex(h) return string.char(tonumber(h, 16)) end

local function qp_decoder(out)
  -- Soft line breaks go first, then =XX (as M.qp_decode): each pass holds back
  -- the end of its buf that may begin a match with the next chunk.
  local soft, pending = '', ''
  local function decode_hex(buf, last)
    buf = pending .. buf
    local keep = 0
    if not last then
      if buf:sub(-1) == '=' then
        keep = 1
      elseif buf:sub(-2, -2) == '=' and buf:sub(-1):match('%x') then
        keep = 2
      end
    end
    pending = buf:sub(#buf - keep + 1)
    out((buf:sub(1, #buf - keep):gsub('=(%x%x)', qp_unhex)))
  end
  return function(chunk)
    local buf = soft .. (chunk or '')
    local keep = 0
    if chunk then
      if buf:sub(-1) == '=' then
        keep = 1
      elseif buf:sub(-2) == '=\r' then
        keep = 2
      end
    end
    soft = buf:sub(#buf - keep + 1)
    decode_hex((buf:sub(1, #buf - keep):gsub('=\r?\n', '')), chunk == nil)
  end
end

-- The decoded body [a, b] of src (Content-Transfer-Encoding, RFC 2045 §6)
-- to out(piece), a window at a time; stop() true ends the reading early.
--- A body decoder fed a chunk at a time (Content-Transfer-Encoding, RFC
-- 2045 §6): feed(chunk) gives the decoded bytes to out(piece) as they are
-- known, feed(nil) the rest at the end; the bytes are those of
-- M.base64_decode / M.qp_decode on the whole text (7bit, 8bit, binary: as is).
-- @param cte {string} the encoding's name, lowercase
-- @param out function(piece)
-- @return feed
function M.body_decoder(cte, out)
  if cte == 'base64' then return base64_decoder(out) end
  if cte == 'quoted-printable' then return qp_decoder(out) end
  return function(chunk) if chunk then out(chunk) end end
end

local function decode_body(h, src, a, b, out, stop)
  local cte = (h['content-transfer-encoding'] or '7bit'):lower():gsub('%s', '')
  local feed = M.body_decoder(cte, out)
  -- Bound: SCAN bytes a step, to the end of the body.
  for pos = a, b, SCAN do
    feed(src:sub(pos, math.min(b, pos + SCAN - 1)))
    if stop and stop() then return end
  end
  feed(nil)
end

-- The first max bytes of a decoded body, as a string.
local function decode_prefix(h, src, a, b, max)
  local parts, size = {}, 0
  decode_body(h, src, a, b, function(piece)
    if size < max and piece ~= '' then
      parts[#parts + 1] = piece:sub(1, max - size)
      size = size + #parts[#parts]
    end
  end, function() return size >= max end)
  return table.concat(parts)
end

-- Counts one report found; false (and a failure entry) past max_attachments.
local function count_attachment(w)
  w.attachments = w.attachments + 1
  if w.attachments <= M.limits.max_attachments then return true end
  over(w, 'attachments', 'more than ' .. M.limits.max_attachments
       .. ' report attachments in one message; the rest not read')
  return false
end

-- A failure report (RFC 6591: multipart/report; report-type=
-- feedback-report): its feedback fields and the original message's header
-- block; the original body is never taken.
local function take_feedback(w, outer, src, a, b, cparams)
  local limits = M.limits
  local fb = { outer = outer }
  for _, part in ipairs(split_parts(w, src, a, b, cparams)) do
    local ha, hb, pa, pb = split_entity(src, part[1], part[2])
    if hb - ha + 1 <= limits.max_header then
      local h = parse_headers(src:sub(ha, hb))
      local ctype = header_params(h['content-type'] or 'text/plain')
      if ctype == 'message/feedback-report' and not fb.feedback then
        fb.feedback = decode_prefix(h, src, pa, pb, limits.max_header)
      elseif ctype == 'text/rfc822-headers' and not fb.headers then
        fb.headers = decode_prefix(h, src, pa, pb, limits.max_header)
      elseif (ctype == 'message/rfc822' or ctype == 'message/rfc822-headers')
          and not fb.headers then
        local xa, xb = split_entity(src, pa, pb)
        fb.headers = src:sub(xa, math.min(xb, xa + limits.max_header - 1))
      end
    end
  end
  if not count_attachment(w) then return end
  if not fb.feedback then
    w.found[#w.found + 1] = { error = 'a multipart/report without a message/feedback-report part',
                              code = 'invalid' }
    return
  end
  w.found[#w.found + 1] = { failure = fb }
end

-- A leaf part: taken when it is gzip, zip or XML by media type or file name;
-- its body stays a range (body = {a, b}, headers h) until it is decoded.
local function take_leaf(w, h, ctype, cparams, a, b)
  local limits = M.limits
  local _, dparams = header_params(h['content-disposition'])
  local filename = dparams.filename or cparams.name or ''
  local lname = filename:lower()
  local by_name = lname:match('%.xml$') or lname:match('%.gz$') or lname:match('%.zip$')
  if not REPORT_TYPES[ctype] and not by_name then return end
  if not count_attachment(w) then return end
  local name = clip(filename, limits.max_text)
  if b - a + 1 > limits.max_input * 4 / 3 + 4096 then
    w.found[#w.found + 1] = { error = 'attachment ' .. text_util.shown(name)
                              .. ' over the size limit', code = 'limit' }
    return
  end
  w.found[#w.found + 1] = { content_type = ctype, filename = name, body = { a, b, h = h } }
end

local function walk(w, src, a, b, depth)
  local limits = M.limits
  if depth > limits.max_mime_depth then
    over(w, 'depth', 'a part nested deeper than ' .. limits.max_mime_depth
         .. ' MIME levels (forwarded too many times); not read')
    return
  end
  w.parts_seen = w.parts_seen + 1
  if w.parts_seen > limits.max_mime_parts then
    over(w, 'parts', 'more than ' .. limits.max_mime_parts .. ' MIME parts in one message')
    return
  end
  local ha, hb, ba, bb = split_entity(src, a, b)
  if hb - ha + 1 > limits.max_header then
    over(w, 'header', 'a MIME header block over ' .. limits.max_header .. ' bytes; part not read')
    return
  end
  local head = src:sub(ha, hb)
  local h = parse_headers(head)
  local ctype, cparams = header_params(h['content-type'] or 'text/plain')
  if ctype == 'multipart/report' and (cparams['report-type'] or ''):lower() == 'feedback-report' then
    return take_feedback(w, head, src, ba, bb, cparams)
  end
  if ctype:match('^multipart/') then
    for _, part in ipairs(split_parts(w, src, ba, bb, cparams)) do
      walk(w, src, part[1], part[2], depth + 1)
    end
    return
  end
  if ctype == 'message/rfc822' then return walk(w, src, ba, bb, depth + 1) end
  take_leaf(w, h, ctype, cparams, ba, bb)
end

-- The walk of a message in src: mime_attachments' entries, a report
-- attachment's body left as a range; or nil, message, code.
local function mime_walk(src)
  local w = { found = {}, parts_seen = 0, attachments = 0, told = {} }
  walk(w, src, 1, src.len, 1)
  if #w.found == 0 then return nil, 'no report attachment in the message', 'no_report' end
  return w.found
end

--- Report attachments of an e-mail (RFC 5322 + MIME): the decoded content
-- of every part that is gzip, zip or XML by media type or file name, in
-- order, and every failure report (multipart/report); multipart and
-- message/rfc822 (forwarded reports, forwarded again) are walked. Every
-- bound that stops the walk (max_attachments, max_mime_parts,
-- max_mime_depth, max_header, an attachment over the size limit) is an
-- entry of its own, {error = message, code = 'limit'}, so the caller reports
-- it: nothing is dropped silently.
-- @return array of {content_type, filename, data}, {failure = {feedback,
--   headers, outer}} or {error, code}; or nil, msg, code when the message
--   carries nothing to read
function M.mime_attachments(msg)
  if type(msg) ~= 'string' then error('mime_attachments: string expected', 2) end
  local src = string_source(msg)
  local found, err, code = mime_walk(src)
  if not found then return nil, err, code end
  for _, p in ipairs(found) do
    if p.body then
      local pieces = {}
      decode_body(p.body.h, src, p.body[1], p.body[2], function(piece)
        pieces[#pieces + 1] = piece
      end)
      p.data, p.body = table.concat(pieces), nil
    end
  end
  return found
end

-- Whether bytes are a zlib stream (RFC 1950 §2.2: CM 8, the check bits).
local function is_zlib(data)
  local cmf, flg = data:byte(1, 2)
  if not flg then return false end
  -- FDICT (a preset dictionary) is never used for a report: also keeps
  -- text such as "x?" from looking like zlib.
  return cmf % 16 == 8 and math.floor(cmf / 16) <= 7 and (cmf * 256 + flg) % 31 == 0
    and math.floor(flg / 32) % 2 == 0
end

-- What one layer is, from its first bytes (`head`) and its size: 'xml'
-- (UTF-16 noted in warnings), or 'archive' with kind and zlib; or nil,
-- message, code when it is over a bound or no archive (nil, nil, 'format' at
-- the first layer). Shared by the string and the file paths.
local function layer_kind(z, head, size, layer, warnings)
  local kind = M.sniff(head)
  if kind == 'xml' or kind == 'xml16' then
    if size > z.max_output then return nil, 'XML over the size limit', 'limit' end
    if kind == 'xml16' then warnings[#warnings + 1] = 'utf16' end
    return 'xml'
  end
  local zlib = kind == nil and is_zlib(head)
  if kind ~= 'gzip' and kind ~= 'zip' and not zlib then
    if layer > 1 then return nil, 'compressed content is not XML', 'format' end
    return nil, nil, 'format'
  end
  if layer > M.limits.max_layers then
    return nil, 'more than ' .. M.limits.max_layers .. ' layers of compression', 'limit'
  end
  return 'archive', kind, zlib
end

-- Bytes to XML through up to max_layers of compression (z: the dmarc.xml
-- module and the output bounds); warnings collect the quirks met.
-- @return xml, or nil, message, code (nil, nil, 'format' for bytes that are
--   no archive at the first layer)
local function decompress(z, bytes, layer, warnings)
  local what, kind, zlib = layer_kind(z, bytes, #bytes, layer, warnings)
  if what == 'xml' then return bytes end
  if not what then return nil, kind, zlib end
  local out, err, code
  if kind == 'zip' then
    out, err, code = z.x.unzip(bytes, { max_output = z.max_output, max_ratio = z.max_ratio })
    if not out then
      local broken = code == 'zip' or code == 'corrupt' or code == 'truncated' or code == 'crc'
      return nil, (broken and 'corrupt zip: ' or 'zip: ') .. err, code
    end
  else
    out, err, code = z.x.inflate(bytes, { format = zlib and 'zlib' or 'gzip',
                                          max_output = z.max_output, max_ratio = z.max_ratio })
    if not out then return nil, (zlib and 'zlib: ' or 'gzip: ') .. err, code end
    if zlib then warnings[#warnings + 1] = 'zlib' end
  end
  if layer > 1 then warnings[#warnings + 1] = 'nested_compression' end
  local got, e, c = decompress(z, out, layer + 1, warnings)
  if not got and not e then
    return nil, (kind or 'zlib') .. ' content is not XML', 'format'
  end
  return got, e, c
end

-- One document or attachment as an item. A name that says zip or gzip for
-- bytes that are neither is a broken archive, not "not a report".
-- Why an input that is no archive at its first layer is refused: its first
-- bytes (`head`) or its name say zip or gzip (a broken archive: message and
-- code 'corrupt'), or it is not a report at all (message only: the caller's
-- code stands). Shared by the string and the file paths.
local function not_archive_reason(head, file_name, part)
  local lname = (file_name or ''):lower()
  if head:sub(1, 2) == 'PK' or lname:match('%.zip$') then
    return 'corrupt zip: no zip signature', 'corrupt'
  elseif lname:match('%.gz$') or lname:match('%.gzip$') then
    return 'corrupt gzip: no gzip or zlib header', 'corrupt'
  end
  return part and 'attachment is not a report (XML, gzip or zip)'
    or 'not a report (XML, gzip, zip, e-mail or mbox)', nil
end

local function unwrap_item(z, bytes, part, file_name)
  local warnings = {}
  local xml, err, code = decompress(z, bytes, 1, warnings)
  if xml then return { xml = xml, warnings = warnings, part = part } end
  if not err then
    local corrupt
    err, corrupt = not_archive_reason(bytes, file_name, part)
    code = corrupt or code
  end
  return { error = err, code = code, part = part }
end

-- ---------------------------------------------------------------------------
-- Unwrapping a file on disk a layer at a time: the checks, messages and
-- warnings of decompress and unwrap_item, with nothing held whole. A gzip or
-- zlib layer whose content is XML is parsed as it is inflated; any other
-- layer (a zip's report entry, gzip inside gzip) is unpacked into a
-- temporary file (dmarc.xml.unpack) and read from there.

-- Temporary files, each made with mkstemp (mode 0600, a name no other
-- process holds) in $TMPDIR when it is set (dmarc.xml.temp_file), else by
-- os.tmpname in /tmp; the caller removes them once the input is read.
local function temp_file(temps)
  local dir = os.getenv('TMPDIR')
  local name, err
  if dir and dir ~= '' then
    name, err = xmlmod().temp_file(dir)
  else
    local ok, made = pcall(os.tmpname)
    name, err = ok and made or nil, made
  end
  if not name then io_fail('no temporary file: ' .. tostring(err)) end
  temps[#temps + 1] = name
  return name
end

local function remove_temps(temps)
  for i = #temps, 1, -1 do
    os.remove(temps[i])
    temps[i] = nil
  end
end

-- The first bytes (at most 512) and the size of a file; nil, message when it
-- cannot be opened.
local function file_head(path)
  local f, err = io.open(path, 'rb')
  if not f then return nil, err end
  local head = f:read(512) or ''
  local size = f:seek('end')
  f:close()
  return head, size
end

-- decompress on a file: a document to read ({path = file of XML} or {doc =
-- dmarc.xml.map inflating, prefix = 'gzip: ' | 'zlib: '}), or nil, message,
-- code (nil, nil, 'format' for a file that is no archive at layer 1).
local function decompress_file(z, path, layer, warnings, temps)
  local head, size = file_head(path)
  if not head then return nil, 'cannot open: ' .. tostring(size), 'io' end
  local what, kind, zlib = layer_kind(z, head, size, layer, warnings)
  if what == 'xml' then return { path = path, size = size } end
  if not what then return nil, kind, zlib end
  local prefix = zlib and 'zlib: ' or 'gzip: '
  if kind ~= 'zip' then
    local ok, doc, _, ihead = pcall(z.x.map, path, {
      max_input = math.max(size, 1), inflate = zlib and 'zlib' or 'gzip',
      max_output = z.max_output, max_ratio = z.max_ratio })
    local ikind = ok and doc and ihead and M.sniff(ihead)
    if ikind == 'xml' or ikind == 'xml16' then
      if zlib then warnings[#warnings + 1] = 'zlib' end
      if layer > 1 then warnings[#warnings + 1] = 'nested_compression' end
      if ikind == 'xml16' then warnings[#warnings + 1] = 'utf16' end
      return { doc = doc, prefix = prefix }
    end
    if ok and doc then doc:close() end
  end
  local out = temp_file(temps)
  local done, err, code = z.x.unpack(path, out, {
    format = kind == 'zip' and 'zip' or zlib and 'zlib' or 'gzip', max_input = math.max(size, 1),
    max_output = z.max_output, max_ratio = z.max_ratio })
  if not done then
    if kind == 'zip' then
      local broken = code == 'zip' or code == 'corrupt' or code == 'truncated' or code == 'crc'
      return nil, (broken and 'corrupt zip: ' or 'zip: ') .. err, code
    end
    return nil, prefix .. err, code
  end
  if zlib then warnings[#warnings + 1] = 'zlib' end
  if layer > 1 then warnings[#warnings + 1] = 'nested_compression' end
  local got, e, c = decompress_file(z, out, layer + 1, warnings, temps)
  if not got and not e then
    return nil, (kind or 'zlib') .. ' content is not XML', 'format'
  end
  return got, e, c
end

-- unwrap_item on a file: {xml_file = what decompress_file found, warnings,
-- part} or {error, code, part}.
local function unwrap_item_file(z, path, part, file_name, temps)
  local warnings = {}
  local got, err, code = decompress_file(z, path, 1, warnings, temps)
  if got then return { xml_file = got, warnings = warnings, part = part } end
  if not err then
    local corrupt
    err, corrupt = not_archive_reason(file_head(path) or '', file_name, part)
    code = corrupt or code
  end
  return { error = err, code = code, part = part }
end

-- The label unwrap gives the i-th part of a message.
local function part_label(i, p)
  return 'attachment ' .. i .. (p.filename and p.filename ~= '' and (' (' .. p.filename .. ')') or '')
end

--- The report documents in some bytes: plain XML, gzip (also gzip inside
-- gzip), a zlib stream, zip, or an e-mail carrying any of those (and
-- failure reports). Every attachment gives one item, read or failed: a
-- broken attachment beside a good one is reported, never skipped.
-- @param data {string}
-- @param opts {table|nil} max_xml, max_ratio (limits by default)
-- @param name {string|nil} the file name, for a better reason
-- @return array of {xml = string, warnings = {code...}, part = label},
--   {failure = ..., part = label} or {error = message, code = code, part =
--   label}; never empty
function M.unwrap(data, opts, name)
  opts = opts or {}
  local x = xmlmod()
  if not x then return { { error = 'the dmarc.xml module is not built', code = 'config' } } end
  local z = { x = x, max_output = opts.max_xml or M.limits.max_xml,
              max_ratio = opts.max_ratio or M.limits.max_ratio }
  if type(data) ~= 'string' then error('ingest.unwrap: string expected', 2) end
  local kind = M.sniff(data)
  if kind == 'mbox' then
    return { { error = 'an mbox file: give its path (or use ingest_mbox)', code = 'format' } }
  end
  if kind ~= 'mime' then return { unwrap_item(z, data, nil, name) } end
  local parts, err, code = M.mime_attachments(data)
  if not parts then return { { error = err, code = code } } end
  local items = {}
  for i, p in ipairs(parts) do
    local label = part_label(i, p)
    if p.failure then
      items[#items + 1] = { failure = p.failure, part = #parts > 1 and ('report ' .. i) or nil }
    elseif p.error then
      items[#items + 1] = { error = p.error, code = p.code, part = p.filename and label or nil }
    else
      items[#items + 1] = unwrap_item(z, p.data, label, p.filename)
    end
  end
  return items
end

--- The XML documents in some bytes (M.unwrap without the per-item detail).
-- @return array of XML strings and the array of failed items; or nil, msg,
--   code when nothing could be read
function M.extract(data, opts)
  if type(data) ~= 'string' then error('ingest.extract: string expected', 2) end
  local docs, failed = {}, {}
  for _, it in ipairs(M.unwrap(data, opts)) do
    if it.xml then
      docs[#docs + 1] = it.xml
    elseif it.error then
      failed[#failed + 1] = it
    end
  end
  if #docs > 0 then return docs, failed end
  if failed[1] then return nil, failed[1].error, failed[1].code or 'format' end
  return nil, 'a failure report, not an aggregate report', 'failure_report'
end

-- ---------------------------------------------------------------------------
-- Parsing and normalisation

local function parse_options(opts)
  return { max_input = opts.max_xml or M.limits.max_xml,
           max_depth = opts.max_depth or M.limits.max_depth,
           max_elements = opts.max_elements or M.limits.max_elements,
           max_text = 4096, arrays = ARRAY_PAIRS }
end

-- A declaration after white space is not well-formed; senders do that.
-- (A document from dmarc.xml's map is trimmed there.)
local function trim_start(xml_text)
  if type(xml_text) == 'string' and xml_text:find('^%s') then xml_text = xml_text:gsub('^%s+', '') end
  return xml_text
end

--- Parse one XML document into the libxml2 tree of dmarc.xml.
-- @param xml_text {string|userdata} the document, or a file's (dmarc.xml.map)
-- @param defer {boolean|nil} leave the records out of the tree (only counted,
--   info.deferred); M.record_batches reads them a batch at a time
-- @return tree, info, or nil, msg, code ('xml', 'dtd', 'limit')
function M.parse(xml_text, opts, defer)
  opts = opts or {}
  local x = xmlmod()
  if not x then return nil, 'the dmarc.xml module is not built', 'unavailable' end
  local po = parse_options(opts)
  po.defer_records = defer or nil
  return x.parse(trim_start(xml_text), po)
end

local function first_text(v)
  if type(v) == 'table' then v = v[1] end
  if type(v) == 'string' then return v end
  return nil
end

local function normalize_record(r)
  local limits = M.limits
  if type(r) ~= 'table' then return nil, 'record without content' end
  local row = type(r.row) == 'table' and r.row or {}
  local ip = type(row.source_ip) == 'string' and row.source_ip:lower() or nil
  if not keys.valid_ip(ip) then return nil, 'record with an invalid source_ip' end
  local count = integer(row.count, limits.max_count)
  if not count then return nil, 'record with an invalid count' end
  local pe = type(row.policy_evaluated) == 'table' and row.policy_evaluated or {}
  local ids = type(r.identifiers) == 'table' and r.identifiers or {}
  local ar = type(r.auth_results) == 'table' and r.auth_results or {}
  local rec = {
    source_ip = ip,
    count = count,
    disposition = word(pe.disposition, DISPOSITIONS) or 'unknown',
    -- policy_evaluated dkim/spf are the aligned results [AGG-7].
    dkim = word(first_text(pe.dkim), ALIGNED) or 'unknown',
    spf = word(first_text(pe.spf), ALIGNED) or 'unknown',
    header_from = loose_domain(ids.header_from),
    envelope_from = loose_domain(ids.envelope_from),
    envelope_to = ids.envelope_to and loose_domain(ids.envelope_to) or nil,
    reasons = {}, dkim_results = {}, spf_results = {},
  }
  if rec.envelope_to == '' then rec.envelope_to = nil end
  for i, reason in ipairs(list(pe.reason)) do
    if i > limits.max_reasons then break end
    if type(reason) == 'table' then
      rec.reasons[#rec.reasons + 1] = { type = word(reason.type, REASON_TYPES) or 'other',
                                        comment = text(reason.comment) }
    end
  end
  -- auth_results hold the raw results [AGG-7]; 9990 has 0..1 spf, 7489 1..n.
  for i, d in ipairs(list(ar.dkim)) do
    if i > limits.max_dkim then break end
    if type(d) == 'table' then
      rec.dkim_results[#rec.dkim_results + 1] = {
        domain = loose_domain(d.domain), selector = text(d.selector) or '',
        result = word(d.result, AUTH_WORDS) or 'none',
      }
    end
  end
  for i, s in ipairs(list(ar.spf)) do
    if i > limits.max_spf then break end
    if type(s) == 'table' then
      rec.spf_results[#rec.spf_results + 1] = {
        domain = loose_domain(s.domain), scope = word(s.scope, SPF_SCOPES) or 'mfrom',
        result = word(s.result, AUTH_WORDS) or 'none',
      }
    end
  end
  return rec
end

-- A date_range time: whole seconds since the epoch; some receivers write a
-- decimal (`1337270400.0`), read as its whole part with the warning
-- decimal_timestamp.
local function timestamp(v, warnings)
  local n = integer(v, 1e11)
  if n then return n end
  if type(v) ~= 'string' then return nil end
  local whole = v:match('^(%d+)%.%d*$')
  n = integer(whole, 1e11)
  if n then M.warn(warnings, 'decimal_timestamp') end
  return n
end

--- Adds a warning code once.
function M.warn(warnings, code)
  for _, w in ipairs(warnings) do
    if w == code then return end
  end
  warnings[#warnings + 1] = code
end

-- org_name, report_id, date_range of report_metadata, quirks accepted with
-- a warning: an empty org_name is named after the e-mail's domain.
local function read_metadata(md, warnings)
  local org = text(md.org_name)
  local rid = text(md.report_id)
  if not org or org:find('^%s*$') then
    local from = type(md.email) == 'string' and md.email:match('@([%w%.%-]+)%s*$')
    org = from and from:lower() or 'unknown reporter'
    M.warn(warnings, 'empty_org_name')
  end
  if not rid or rid == '' then return nil, 'no report_id', 'invalid' end
  local dr = type(md.date_range) == 'table' and md.date_range or {}
  local begin, finish = timestamp(dr.begin, warnings), timestamp(dr['end'], warnings)
  if not begin or not finish or finish < begin then
    return nil, 'no valid date_range', 'invalid'
  end
  if finish - begin > M.limits.max_range then M.warn(warnings, 'long_range') end
  return { org = org, rid = rid, begin = begin, finish = finish }
end

--- Check and normalise a parsed report.
-- @param tree {table} from parse
-- @param info {table} from parse (root, ns)
-- @return report {format, org_name, email, report_id, begin, ['end'], domain,
--   policy, errors, generator, records, bad_records, warnings}, or nil, msg,
--   code ('not_report', 'invalid', 'bad_domain', 'limit')
function M.normalize(tree, info)
  local limits = M.limits
  if type(tree) ~= 'table' or type(info) ~= 'table' or info.root ~= 'feedback' then
    return nil, 'the root element is not <feedback>', 'not_report'
  end
  -- [AGG-9] / section 10.3: match local names, accept both namespaces.
  local format = info.ns == M.NS_9990 and 'rfc9990' or 'rfc7489'
  local md = tree.report_metadata
  if type(md) ~= 'table' then return nil, 'no report_metadata', 'invalid' end
  local warnings = {}
  local meta, merr, mcode = read_metadata(md, warnings)
  if not meta then return nil, merr, mcode end
  local pp = tree.policy_published
  if type(pp) ~= 'table' then return nil, 'no policy_published', 'invalid' end
  local dom = domain(pp.domain)
  if not dom then return nil, 'policy domain is not a valid host name', 'bad_domain' end
  local errors = {}
  for i, e in ipairs(list(md.error)) do
    if i > limits.max_errors then break end
    errors[#errors + 1] = text(e)
  end
  local rep = {
    format = format,
    org_name = meta.org,
    email = text(md.email) or '',
    extra_contact_info = text(md.extra_contact_info),
    report_id = meta.rid,
    begin = meta.begin,
    ['end'] = meta.finish,
    generator = text(md.generator),
    errors = errors,
    domain = dom,
    policy = {
      p = word(pp.p, POLICIES), sp = word(pp.sp, POLICIES), np = word(pp.np, POLICIES),
      adkim = word(pp.adkim, ALIGN_MODES), aspf = word(pp.aspf, ALIGN_MODES),
      pct = integer(pp.pct, 100), fo = text(pp.fo, 16),
      testing = word(pp.testing, YES_NO), discovery_method = word(pp.discovery_method, DISCOVERY),
    },
    records = {},
    bad_records = 0,
    warnings = warnings,
  }
  local recs = list(tree.record)
  if #recs + (info.deferred or 0) > limits.max_records then
    return nil, 'more than ' .. limits.max_records .. ' records', 'limit'
  end
  for _, r in ipairs(recs) do
    local rec = normalize_record(r)
    if rec then
      rep.records[#rep.records + 1] = rec
    else
      rep.bad_records = rep.bad_records + 1
    end
  end
  if rep.bad_records > 0 then M.warn(warnings, 'bad_records') end
  return rep
end

--- The records of a document parsed with defer, normalised a batch at a
-- time (RFC 9990 §3: a report is a header and many records; only one batch
-- of them is ever in memory). Records that do not normalise are counted in
-- rep.bad_records, those that do in rep.nrecords.
-- @return an iterator: each call gives an array of normalised records, nil
--   at the end, or nil, msg, code
function M.record_batches(xml_text, rep, opts)
  opts = opts or {}
  local x = xmlmod()
  if not x then error('ingest: the dmarc.xml module is not built', 2) end
  local po = parse_options(opts)
  po.batch = opts.batch or M.defaults.batch
  local nxt, err, code = x.records(trim_start(xml_text), po)
  rep.nrecords = rep.nrecords or 0
  return function()
    if not nxt then return nil, err, code end
    local batch, berr, bcode = nxt()
    if not batch then
      nxt, err, code = nil, berr, bcode
      return nil, berr, bcode
    end
    local out = {}
    for _, r in ipairs(batch) do
      local rec = normalize_record(r)
      if rec then
        out[#out + 1] = rec
      else
        rep.bad_records = rep.bad_records + 1
      end
    end
    rep.nrecords = rep.nrecords + #out
    return out
  end
end

-- ---------------------------------------------------------------------------
-- Storage encoding. One escape for every atom (text_util.escape_atom, as
-- dmarc.report.rows's): bytes outside [A-Za-z0-9._@+= -] become %XX, so the
-- separators | ; : never occur inside an atom.

local esc, unesc = text_util.escape_atom, text_util.unescape_atom
local split = text_util.split
M.esc = esc
M.unesc = unesc

--- The hash field of one record (the count is the value):
-- 1|org|source_ip|header_from|envelope_from|envelope_to|disposition|dkim|spf|REASONS|DKIMS|SPFS
-- REASONS = type:comment;...  DKIMS = domain:selector:result;...  SPFS = domain:scope:result;...
function M.encode_record(org, rec)
  local reasons, dkims, spfs = {}, {}, {}
  for i, r in ipairs(rec.reasons or {}) do reasons[i] = esc(r.type) .. ':' .. esc(r.comment) end
  for i, d in ipairs(rec.dkim_results or {}) do
    dkims[i] = esc(d.domain) .. ':' .. esc(d.selector) .. ':' .. esc(d.result)
  end
  for i, s in ipairs(rec.spf_results or {}) do
    spfs[i] = esc(s.domain) .. ':' .. esc(s.scope) .. ':' .. esc(s.result)
  end
  return table.concat({
    tostring(M.VERSION), esc(org), esc(rec.source_ip), esc(rec.header_from),
    esc(rec.envelope_from), esc(rec.envelope_to), esc(rec.disposition), esc(rec.dkim),
    esc(rec.spf), table.concat(reasons, ';'), table.concat(dkims, ';'), table.concat(spfs, ';'),
  }, '|')
end

-- The DKIM or SPF results of a stored field: domain:NAME:result;... where NAME is
-- the selector or the scope; at most max of them.
local function decode_results(encoded, max, name)
  local out = {}
  for i, item in ipairs(split(encoded, ';')) do
    if i > max then break end
    local a = split(item, ':')
    out[#out + 1] = { domain = unesc(a[1] or ''), [name] = unesc(a[2] or ''),
                      result = unesc(a[3] or 'none') }
  end
  return out
end

--- Decode a stored field; nil, msg, code for one this version does not read.
function M.decode_record(field)
  if type(field) ~= 'string' or #field > 65536 then return nil, 'bad field', 'bad_row' end
  local f = split(field, '|')
  if f[1] ~= tostring(M.VERSION) or #f ~= 12 then return nil, 'unknown encoding', 'bad_row' end
  local rec = {
    org_name = unesc(f[2]), source_ip = unesc(f[3]), header_from = unesc(f[4]),
    envelope_from = unesc(f[5]), envelope_to = f[6] ~= '' and unesc(f[6]) or nil,
    disposition = unesc(f[7]), dkim = unesc(f[8]), spf = unesc(f[9]),
    reasons = {},
  }
  for i, r in ipairs(split(f[10], ';')) do
    if i > M.limits.max_reasons then break end
    local a = split(r, ':')
    rec.reasons[#rec.reasons + 1] = { type = unesc(a[1] or ''),
                                      comment = a[2] and a[2] ~= '' and unesc(a[2]) or nil }
  end
  rec.dkim_results = decode_results(f[11], M.limits.max_dkim, 'selector')
  rec.spf_results = decode_results(f[12], M.limits.max_spf, 'scope')
  return rec
end

--- The dedup field of a report in its day's reports hash: (org_name, report_id).
function M.report_field(org, rid)
  return esc(org) .. '|' .. esc(rid)
end

function M.decode_report_field(field)
  local org, rid = field:match('^([^|]*)|([^|]*)$')
  if not org then return nil end
  return unesc(org), unesc(rid)
end

--- The UTC day a report is filed under: the middle of its date_range (a
-- report of a receiver whose day is not UTC still lands on the day it
-- mostly covers).
-- A range longer than max_range (a receiver's quirk: 47 days, 3 years) is
-- filed whole under the last day it covers, where a summary of recent days
-- sees it, instead of a middle day that may be long gone.
function M.report_day(rep)
  if rep['end'] - rep.begin > M.limits.max_range then
    return keys.day_of(math.max(rep.begin, rep['end'] - 1))
  end
  return keys.day_of(math.floor((rep.begin + rep['end']) / 2))
end

-- Key names (docs/ingest.md) live in dmarc.redis.keys with every other side's.
M.keys = keys.ingest_day
M.stage_key = keys.ingest_stage_key
M.scan_pattern = keys.ingest_scan_pattern
M.parse_key = keys.parse_ingest_key

-- One atomic step per report (docs/ingest.md, "The store script"):
-- nothing happens for a report already stored (dedup by org_name and
-- report_id); otherwise every record is counted (up to max_rows distinct
-- rows per day; the rest are counted as dropped, never silently), the
-- report is listed, both TTLs are refreshed and a staging hash is removed.
-- A script runs whole on the server, so a report is stored whole or not at
-- all; all keys share the {DOMAIN} hash tag.
--   KEYS: rows, reports [, staged rows]
--   ARGV: report field, report info (JSON), ttl, max_rows, field, count, ...
M.STORE_SCRIPT = [[
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  if KEYS[3] then redis.call('DEL', KEYS[3]) end
  return 0
end
local items, first = ARGV, 5
if KEYS[3] then
  items, first = redis.call('HGETALL', KEYS[3]), 1
end
local n = redis.call('HLEN', KEYS[1])
local max = tonumber(ARGV[4])
local dropped, dropped_rows = 0, 0
for i = first, #items - 1, 2 do
  local f, c = items[i], tonumber(items[i + 1])
  if n < max or redis.call('HEXISTS', KEYS[1], f) == 1 then
    if redis.call('HINCRBY', KEYS[1], f, c) == c then n = n + 1 end
  else
    dropped = dropped + c
    dropped_rows = dropped_rows + 1
  end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if dropped > 0 then
  redis.call('HINCRBY', KEYS[2], '#dropped_messages', dropped)
  redis.call('HINCRBY', KEYS[2], '#dropped_rows', dropped_rows)
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if KEYS[3] then redis.call('DEL', KEYS[3]) end
return 1
]]

--- Whether a policy domain is one of ours: equal to, or below, a domain of
-- `own` (a set or array). With no list every domain is ours.
function M.owned(dom, own)
  if own == nil then return true end
  local set = own
  if own[1] ~= nil then
    set = {}
    for _, d in ipairs(own) do set[d] = true end
  end
  if next(set) == nil then return true end
  local d = dom
  for _ = 1, M.limits.max_labels do
    if set[d] then return true end
    d = d:match('^[^.]*%.(.+)$')
    if not d then return false end
  end
  return false
end

--- Keyed hash of an envelope_to domain (privacy option): 'h:' and the first
-- 16 hex digits of HMAC-SHA256(salt, domain).
function M.hash_envelope_to(salt, value)
  local x = xmlmod()
  if not x then error('ingest: the dmarc.xml module is not built', 2) end
  return 'h:' .. hex(x.hmac_sha256(salt, value:lower())):sub(1, 16)
end

-- ---------------------------------------------------------------------------
-- Classes (docs/ingest.md, summary): kept here because the store keeps a
-- per-report tally of them, so totals stay whole past the daily row cap.

local FORWARD_REASONS = { forwarded = true, trusted_forwarder = true, mailing_list = true }
local BROKEN_DKIM = { fail = true, neutral = true, permerror = true, temperror = true,
                      policy = true }

--- Whether domain d is the policy domain, below it or above it (the same
-- organisation as far as a report on this policy domain can tell).
function M.related(d, dom)
  if d == nil or d == '' then return false end
  if d == dom then return true end
  return d:sub(-#dom - 1) == '.' .. dom or dom:sub(-#d - 1) == '.' .. d
end
local related = M.related

--- The class of one record (pass, forwarded, unaligned, forwarded_broken,
-- spoof; see dmarc.summary) and the raw passes that were not aligned:
-- {spf = {domain...}, dkim = {domain...}}.
function M.classify(rec, dom)
  local spf_pass, dkim_pass = false, false
  local unaligned = { spf = {}, dkim = {} }
  local own_broken = false
  for _, s in ipairs(rec.spf_results or {}) do
    if s.result == 'pass' then
      spf_pass = true
      unaligned.spf[#unaligned.spf + 1] = s.domain
    end
  end
  for _, d in ipairs(rec.dkim_results or {}) do
    if d.result == 'pass' then
      dkim_pass = true
      unaligned.dkim[#unaligned.dkim + 1] = d.domain
    elseif BROKEN_DKIM[d.result] and (related(d.domain, rec.header_from)
                                      or related(d.domain, dom)) then
      own_broken = true
    end
  end
  if rec.dkim == 'pass' or rec.spf == 'pass' then
    if rec.dkim == 'pass' and rec.spf ~= 'pass' and not spf_pass then
      return 'forwarded'
    end
    return 'pass'
  end
  if spf_pass or dkim_pass then return 'unaligned', unaligned end
  for _, r in ipairs(rec.reasons or {}) do
    if FORWARD_REASONS[r.type] then return 'forwarded_broken' end
  end
  if own_broken then return 'forwarded_broken' end
  return 'spoof'
end

--- The tally key of a record: what the totals need of it when it is not
-- itemised (class|disposition|dkim|spf).
function M.tally_key(cls, rec)
  return cls .. '|' .. rec.disposition .. '|' .. rec.dkim .. '|' .. rec.spf
end

--- Records of a report aggregated into hash fields (identical rows add up).
-- @return fields (array, in first-seen order), counts (field → count),
--   messages, tally (tally_key → count)
function M.fields_of(rep, opts)
  local acc = { order = {}, counts = {}, messages = 0, tally = {} }
  M.add_fields(acc, rep, rep.records, opts)
  return acc.order, acc.counts, acc.messages, acc.tally
end

--- Adds records to an accumulator {order, counts, messages, tally} as
-- fields_of makes it.
function M.add_fields(acc, rep, records, opts)
  opts = opts or {}
  local order, counts, tally = acc.order, acc.counts, acc.tally
  local messages = 0
  for _, rec in ipairs(records) do
    if rec.count > 0 then
      local key = M.tally_key((M.classify(rec, rep.domain)), rec)
      tally[key] = (tally[key] or 0) + rec.count
      local r = rec
      if opts.hash_salt and rec.envelope_to then
        r = setmetatable({ envelope_to = M.hash_envelope_to(opts.hash_salt, rec.envelope_to) },
                         { __index = rec })
      end
      local f = M.encode_record(rep.org_name, r)
      if counts[f] then
        counts[f] = counts[f] + rec.count
      else
        counts[f] = rec.count
        order[#order + 1] = f
      end
      messages = messages + rec.count
    end
  end
  acc.messages = acc.messages + messages
end

local function report_info(rep, records, messages, tally, now)
  local cjson = require 'cjson'
  local p = rep.policy
  return cjson.encode({
    tally = next(tally) and tally or nil,
    warnings = rep.warnings and #rep.warnings > 0 and rep.warnings or nil,
    v = M.VERSION, begin = rep.begin, ['end'] = rep['end'], records = records,
    messages = messages, format = rep.format, email = rep.email, p = p.p, sp = p.sp, np = p.np,
    adkim = p.adkim, aspf = p.aspf, pct = p.pct, testing = p.testing,
    discovery_method = p.discovery_method, ingested = now, bad_records = rep.bad_records,
    errors = #rep.errors > 0 and rep.errors or nil,
  })
end

local function is_error_reply(r)
  return type(r) == 'table' and r.err ~= nil and r[1] == nil
end

local function fmt_int(n)
  return string.format('%d', n)
end

local token_counter = 0

-- Adds field/count pairs to a staging hash (HINCRBY: a row repeated in a
-- later batch adds up). KEYS: stage; ARGV: field, count, ...
M.STAGE_SCRIPT = [[
for i = 1, #ARGV - 1, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
]]

--- Store one normalised report.
-- @param conn a dmarc.redis connection or dmarc.redis.cluster router
-- @param rep {table} from normalize
-- @param opts {table|nil} prefix, ttl, max_rows, hash_salt, now, max_args
-- @return 'stored' | 'duplicate', {records, messages, day}; or nil, msg, code
function M.store(conn, rep, opts)
  local given = rep.records
  return M.store_batches(conn, rep, function()
    local b = given
    given = nil
    return b
  end, opts)
end

--- Store a report whose records come in batches (M.record_batches): rows of
-- a few batches go in one script call as before; more go to a staging hash
-- batch by batch, and one script moves them in atomically at the end, so a
-- report is still stored whole or not at all, and deduplicated.
-- @param batches iterator of arrays of normalised records (nil at the end,
--   or nil, msg, code)
-- @param finish {function|nil} called once every record has been read,
--   before the report's info is made
function M.store_batches(conn, rep, batches, opts, finish)
  opts = opts or {}
  local prefix = opts.prefix or M.defaults.prefix
  if not keys.valid_prefix(prefix) then return nil, 'invalid key prefix', 'usage' end
  if not keys.valid_domain(rep.domain) then return nil, 'invalid policy domain', 'bad_domain' end
  local day = M.report_day(rep)
  local k = M.keys(prefix, rep.domain, day)
  local ttl = fmt_int(opts.ttl or M.defaults.ttl)
  local max_rows = fmt_int(opts.max_rows or M.defaults.max_rows)
  local rfield = M.report_field(rep.org_name, rep.report_id)
  local max_args = opts.max_args or 4000
  local acc = { order = {}, counts = {}, messages = 0, tally = {} }
  local stage, staged
  -- Too many rows for one command: they go to a staging hash first (same
  -- slot, short TTL), then one script moves them in atomically. A run that
  -- dies in between leaves only the staging hash, which expires.
  local function flush()
    if not stage then
      token_counter = token_counter + 1
      local token = string.format('%d.%d.%d', opts.now or os.time(),
                                  math.random(0, 2147483646), token_counter)
      stage = M.stage_key(prefix, rep.domain, token)
    end
    local order, counts = acc.order, acc.counts
    local step = M.defaults.stage_pairs
    local cmds = {}
    for i = 1, #order, step do
      local cmd = { 'EVAL', M.STAGE_SCRIPT, '1', stage }
      for j = i, math.min(i + step - 1, #order) do
        cmd[#cmd + 1] = order[j]
        cmd[#cmd + 1] = fmt_int(counts[order[j]])
      end
      cmds[#cmds + 1] = cmd
    end
    cmds[#cmds + 1] = { 'EXPIRE', stage, fmt_int(M.defaults.stage_ttl) }
    local replies, perr, pcode = conn:pipeline(cmds)
    if not replies then return nil, perr, pcode or 'io' end
    for _, r in ipairs(replies) do
      if is_error_reply(r) then return nil, 'staging failed: ' .. tostring(r.err), 'redis' end
    end
    acc.order, acc.counts = {}, {}
    return true
  end
  for _ = 1, math.huge do
    local batch, berr, bcode = batches()
    if not batch then
      if berr then
        -- Refused part-way (a bound met in a later record): nothing was stored; the
        -- staging hash goes now rather than at its TTL.
        if stage then conn:command('DEL', stage) end
        return nil, berr, bcode or 'xml'
      end
      break
    end
    M.add_fields(acc, rep, batch, opts)
    if stage or 6 + 2 * #acc.order > max_args then
      local ok, ferr, fcode = flush()
      if not ok then return nil, ferr, fcode end
    end
    batch = nil -- luacheck: ignore 311
    -- A report's XML given as a string (up to max_xml) stays live while it
    -- is read (a file is read a window at a time instead), and Lua's
    -- collector lets garbage grow to the live size before a cycle: a full
    -- collection per batch (only a batch is garbage; the live heap is small)
    -- keeps the peak near the XML's size.
    collectgarbage()
  end
  if finish then finish() end
  local reply, err, code
  local records
  if not stage then
    records = #acc.order
    local info = report_info(rep, records, acc.messages, acc.tally, opts.now or os.time())
    local cmd = { 'EVAL', M.STORE_SCRIPT, '2', k.rows, k.reports, rfield, info, ttl, max_rows }
    for _, f in ipairs(acc.order) do
      cmd[#cmd + 1] = f
      cmd[#cmd + 1] = fmt_int(acc.counts[f])
    end
    reply, err, code = conn:command(unpack(cmd))
  else
    if #acc.order > 0 then
      local ok, ferr, fcode = flush()
      if not ok then return nil, ferr, fcode end
    end
    -- Distinct rows: identical rows of different batches were added up.
    staged, err, code = conn:command('HLEN', stage)
    if staged == nil or is_error_reply(staged) then
      return nil, err or 'staging failed', code or 'redis'
    end
    records = tonumber(staged)
    local info = report_info(rep, records, acc.messages, acc.tally, opts.now or os.time())
    reply, err, code = conn:command('EVAL', M.STORE_SCRIPT, '3', k.rows, k.reports, stage,
                                    rfield, info, ttl, max_rows)
  end
  if reply == nil then return nil, err or 'no reply', code or 'redis' end
  local result = { records = records, messages = acc.messages, day = day }
  if tonumber(reply) == 0 then return 'duplicate', result end
  return 'stored', result
end

-- ---------------------------------------------------------------------------
-- Files and runs

--- The files named by command-line paths: files as given, directories
-- walked (regular files, sorted, symbolic links not followed), '-' for
-- standard input. At most max_files: the paths past the bound are one
-- failure of their own, never skipped silently.
-- @return array of paths, array of {path, message, code} for paths not read
function M.expand_paths(paths, opts)
  opts = opts or {}
  local max_files = opts.max_files or M.limits.max_files
  local files, missing = {}, {}
  local full = false
  local function add(name)
    if #files >= max_files then
      full = true
      return false
    end
    files[#files + 1] = name
    return true
  end
  for _, p in ipairs(paths) do
    if p == '-' then
      add('-')
    else
      local f, err = io.open(p, 'rb')
      local is_dir = false
      if f then
        local _, _, errno = f:read(1)
        is_dir = errno == 21 -- EISDIR
        f:close()
      end
      if not f then
        -- io.open says "PATH: reason"; the reason is what the user needs.
        local reason = tostring(err)
        if reason:sub(1, #p + 2) == p .. ': ' then reason = reason:sub(#p + 3) end
        missing[#missing + 1] = { path = p, message = 'cannot open: ' .. reason, code = 'io' }
      elseif is_dir then
        -- At most max_files + 1 names are read, however large the tree.
        local pipe = io.popen('find ' .. text_util.shell_quote(p) .. ' -type f -print0 2>/dev/null'
                              .. ' | head -z -n ' .. string.format('%d', max_files + 1))
        local out = pipe and pipe:read('*a') or ''
        if pipe then pipe:close() end
        local found = {}
        for name in out:gmatch('([^%z]+)%z') do found[#found + 1] = name end
        table.sort(found)
        for _, name in ipairs(found) do
          if not add(name) then break end
        end
      else
        add(p)
      end
    end
  end
  if full then
    missing[#missing + 1] = { path = '(paths)', code = 'limit',
                              message = 'more than ' .. max_files .. ' files: the rest not read' }
  end
  return files, missing
end

--- Read a file (or '-', standard input), at most max_input bytes.
-- @return data, or nil, msg, code
function M.read_input(path, opts)
  local max = (opts and opts.max_input) or M.limits.max_input
  local f, err
  if path == '-' then
    f = io.stdin
  else
    f, err = io.open(path, 'rb')
    if not f then return nil, 'cannot open: ' .. tostring(err), 'io' end
    local size = f:seek('end')
    if size and size > max then
      f:close()
      return nil, 'file over the size limit (' .. max .. ' bytes)', 'limit'
    end
    f:seek('set')
  end
  local data = f:read(max + 1) or ''
  if path ~= '-' then f:close() end
  if #data > max then return nil, 'input over the size limit (' .. max .. ' bytes)', 'limit' end
  return data
end

local MBOX_CHUNK = 1024 * 1024

--- The messages of an mbox (the "From " separated format mail tools write),
-- read one chunk at a time: a message is held only up to max_input bytes,
-- so any mbox size within max_mbox is read in bounded memory. The "From "
-- line is dropped and ">From " lines are unquoted (mboxrd).
-- @param read function(n) → the next bytes, or nil at the end
-- @param opts {table|nil} max_input, max_messages, max_mbox
-- @param fn function(index, message) or function(index, nil, msg, code) for
--   a message over a bound; a bound that stops the file is reported last
-- @param sink {table|nil} where a message is held while it is read (the
--   default holds it in memory; ingest spools it into a temporary file):
--   add(piece), drop() (over max_input), message() → what fn is given
function M.each_mbox_message(read, opts, fn, sink)
  opts = opts or {}
  local max_msg = opts.max_input or M.limits.max_input
  local max_messages = opts.max_messages or M.limits.max_messages
  local max_total = opts.max_mbox or M.limits.max_mbox
  local size, index, total, carry = 0, 0, 0, ''
  local parts = {}
  sink = sink or {
    add = function(piece) parts[#parts + 1] = piece end,
    drop = function() parts = {} end,
    message = function()
      local msg = table.concat(parts):gsub('^From [^\n]*\n', '', 1)
      return (msg:gsub('\n>(>*From )', '\n%1'))
    end,
  }

  local function add(piece)
    size = size + #piece
    if size <= max_msg then sink.add(piece) else sink.drop() end
  end
  local function deliver()
    if size == 0 then return true end
    index = index + 1
    if index > max_messages then
      fn(index, nil, 'more than ' .. max_messages .. ' messages in one mbox: the rest not read',
         'limit')
      return false
    end
    if size > max_msg then
      fn(index, nil, 'message over the size limit (' .. max_msg .. ' bytes)', 'limit')
    else
      fn(index, sink.message())
    end
    sink.drop()
    size = 0
    return true
  end

  while true do
    local chunk = read(MBOX_CHUNK)
    if not chunk or chunk == '' then break end
    total = total + #chunk
    if total > max_total then
      fn(index + 1, nil, 'mbox over ' .. max_total .. ' bytes: the rest not read', 'limit')
      return
    end
    local buf = carry .. chunk
    local pos = 1
    while true do
      local s = buf:find('\nFrom ', pos, true)
      if not s then break end
      add(buf:sub(pos, s))
      if not deliver() then return end
      pos = s + 1
    end
    -- The last 5 bytes wait for the next chunk: a separator may straddle it.
    local keep = math.max(pos, #buf - 4)
    add(buf:sub(pos, keep - 1))
    carry = buf:sub(keep)
  end
  add(carry)
  deliver()
end

-- One report document: parsed, normalised, checked for ownership, stored.
-- The header is parsed first with the records left out (only counted, so
-- the record bound is judged before anything is stored); the records are
-- then parsed, normalised and staged a batch at a time.
local function ingest_doc(conn, it, opts)
  local tree, info, pcode = M.parse(it.xml, opts, true)
  if not tree then return { status = 'error', message = info, code = pcode, part = it.part } end
  local rep, nerr, ncode = M.normalize(tree, info)
  if not rep then return { status = 'error', message = nerr, code = ncode, part = it.part } end
  local batches = M.record_batches(it.xml, rep, opts)
  -- The warnings in the order a whole-report normalisation gives them.
  local function finish()
    if rep.bad_records > 0 then M.warn(rep.warnings, 'bad_records') end
    for _, w in ipairs(it.warnings or {}) do M.warn(rep.warnings, w) end
  end
  local res = { domain = rep.domain, org_name = rep.org_name, report_id = rep.report_id,
                format = rep.format, records = 0, bad_records = 0,
                warnings = rep.warnings, part = it.part }
  res.foreign = not M.owned(rep.domain, opts.own)
  if res.foreign and opts.refuse_foreign then
    for _ = 1, math.huge do
      local b, berr, bcode = batches()
      if not b then
        if berr then return { status = 'error', message = berr, code = bcode, part = it.part } end
        break
      end
    end
    finish()
    res.records, res.bad_records = rep.nrecords, rep.bad_records
    res.status = 'refused'
    res.code = 'foreign'
    res.message = 'report for a domain this site does not own'
    return res
  end
  local status, r, scode = M.store_batches(conn, rep, batches, opts, finish)
  res.records, res.bad_records = rep.nrecords, rep.bad_records
  if status then
    res.status = status
    res.messages = r.messages
    res.rows = r.records
    res.day = r.day
  else
    res.status = 'error'
    res.message = r
    res.code = scode
  end
  return res
end

--- Ingest the bytes of one input (file, message): every report in it, and
-- one result per attachment that could not be read.
-- @param conn redis connection or router
-- @param data {string}
-- @param opts {table} prefix, ttl, max_rows, hash_salt, own (domains),
--   refuse_foreign, now, max_xml, max_ratio
-- @param name {string|nil} the file name (a .zip that is no zip: corrupt)
-- @return array of per-report results {status = 'stored' | 'duplicate' |
--   'refused' | 'error', domain, org_name, report_id, records, messages,
--   foreign, warnings, part, message, code}
-- A report document found in a file (decompress_file): read from the file
-- a window at a time, or inflated as it is parsed; closed once ingested.
local function ingest_doc_file(conn, it, opts)
  local spec, doc = it.xml_file, it.xml_file.doc
  if not doc then
    local err, code
    doc, err, code = xmlmod().map(spec.path, { max_input = math.max(spec.size, 1) })
    if not doc then
      return { status = 'error', message = 'cannot open: ' .. tostring(err), code = code,
               part = it.part }
    end
  end
  local r = ingest_doc(conn, { xml = doc, warnings = it.warnings, part = it.part }, opts)
  doc:close()
  if spec.prefix and r.status == 'error'
      and (r.code == 'bomb' or r.code == 'corrupt' or r.code == 'truncated') then
    r.message = spec.prefix .. tostring(r.message)
  end
  return r
end

-- The result of one item of M.unwrap (or of a file's unwrapping).
local function ingest_item(conn, it, opts)
  if it.xml then return ingest_doc(conn, it, opts) end
  if it.xml_file then return ingest_doc_file(conn, it, opts) end
  if it.failure then
    local r = failures.ingest(conn, it.failure, {
      prefix = opts.prefix, failure_ttl = opts.failure_ttl, refuse_foreign = opts.refuse_foreign,
    }, opts.own and function(d) return M.owned(d, opts.own) end or nil)
    r.part = it.part
    return r
  end
  return { status = 'error', message = it.error, code = it.code, part = it.part }
end

function M.ingest_data(conn, data, opts, name)
  opts = opts or {}
  local results = {}
  for _, it in ipairs(M.unwrap(data, opts, name)) do
    results[#results + 1] = ingest_item(conn, it, opts)
  end
  return results
end

-- The reading bounds of unwrap, from the run's options.
local function unwrap_bounds(opts)
  return { x = xmlmod(), max_output = opts.max_xml or M.limits.max_xml,
           max_ratio = opts.max_ratio or M.limits.max_ratio }
end

-- A report e-mail on disk, as M.ingest_data ingests its bytes: the MIME walk
-- reads the file a window at a time (only header blocks are held), and each
-- report attachment is decoded a chunk at a time into a temporary file, read
-- from there and removed before the next one is decoded.
local function ingest_mime_file(conn, f, size, opts, z)
  local src = file_source(f, size)
  local parts, err, code = mime_walk(src)
  if not parts then return { { status = 'error', message = err, code = code } } end
  local results = {}
  for i, p in ipairs(parts) do
    local label = part_label(i, p)
    if p.failure then
      results[#results + 1] = ingest_item(conn, { failure = p.failure,
                                                  part = #parts > 1 and ('report ' .. i) or nil }, opts)
    elseif p.error then
      results[#results + 1] = ingest_item(conn, { error = p.error, code = p.code,
                                                  part = p.filename and label or nil }, opts)
    else
      local temps = {}
      local ok, r = pcall(function()
        local path = temp_file(temps)
        local out = open_temp(path, 'wb')
        decode_body(p.body.h, src, p.body[1], p.body[2], function(piece)
          checked_write(out, piece)
        end)
        out:close()
        return ingest_item(conn, unwrap_item_file(z, path, label, p.filename, temps), opts)
      end)
      remove_temps(temps)
      if not ok then
        r = io_result(r)
        r.part = label
      end
      results[#results + 1] = r
    end
  end
  return results
end

--- Ingest one file on disk as M.ingest_data ingests its bytes, with the same
-- results, messages and codes, without holding it whole: plain XML is read
-- a window at a time, gzip and zlib inflated as they are parsed, a zip's
-- report entry and each further layer unpacked into a temporary file
-- (removed once read).
-- @param name {string|nil} the name shown for it (a .zip that is no zip: corrupt)
-- @return array of per-report results, as M.ingest_data
function M.ingest_file(conn, path, opts, name)
  opts = opts or {}
  local max = opts.max_input or M.limits.max_input
  local head, size = file_head(path)
  if not head then return { { status = 'error', message = 'cannot open: ' .. tostring(size),
                              code = 'io' } } end
  if size > max then
    return { { status = 'error', message = 'file over the size limit (' .. max .. ' bytes)',
               code = 'limit' } }
  end
  local z = unwrap_bounds(opts)
  local kind = M.sniff(head)
  if not z.x then kind = 'mime' end -- (read whole: unwrap says the module is not built)
  if kind == 'mbox' then
    return { { status = 'error', message = 'an mbox file: give its path (or use ingest_mbox)',
               code = 'format' } }
  end
  if kind == 'mime' and not z.x then
    local data, err, code = M.read_input(path, opts)
    if not data then return { { status = 'error', message = err, code = code } } end
    return M.ingest_data(conn, data, opts, name)
  end
  if kind == 'mime' then
    local f, err = io.open(path, 'rb')
    if not f then return { { status = 'error', message = 'cannot open: ' .. tostring(err),
                             code = 'io' } } end
    local ok, r = pcall(ingest_mime_file, conn, f, size, opts, z)
    f:close()
    if not ok then return { io_result(r) } end
    return r
  end
  local temps = {}
  local ok, r = pcall(function()
    return ingest_item(conn, unwrap_item_file(z, path, nil, name, temps), opts)
  end)
  remove_temps(temps)
  if not ok then r = io_result(r) end
  return { r }
end

--- New run statistics (the --json object of docs/ingest.md).
function M.new_stats()
  return { files = 0, reports = 0, stored = 0, duplicates = 0, refused = 0, foreign = 0,
           errors = 0, records = 0, records_dropped = 0, messages = 0, failures = {},
           failures_not_listed = 0,
           warnings = {}, warning_counts = {},
           failure_reports = { stored = 0, duplicates = 0, refused = 0 } }
end

--- Counts one result in stats; every failure and warning is listed (up to
-- max_failures each; the rest counted) and passed to opts.on_result.
function M.account(stats, path, r, opts)
  local max = M.limits.max_failures
  if r.status == 'error' then
    stats.errors = stats.errors + 1
    if #stats.failures < max then
      stats.failures[#stats.failures + 1] = { path = path, code = r.code or 'error',
                                              message = r.message, part = r.part }
    else
      stats.failures_not_listed = stats.failures_not_listed + 1
    end
  elseif r.kind == 'failure' then
    local fr = stats.failure_reports
    if r.foreign then stats.foreign = stats.foreign + 1 end
    if r.status == 'stored' then
      fr.stored = fr.stored + 1
    elseif r.status == 'duplicate' then
      fr.duplicates = fr.duplicates + 1
    else
      fr.refused = fr.refused + 1
    end
  else
    stats.reports = stats.reports + 1
    if r.foreign then stats.foreign = stats.foreign + 1 end
    if r.status == 'stored' then
      stats.stored = stats.stored + 1
      stats.records = stats.records + (r.records or 0)
      -- Records that could not be read are not in the totals: the run says so and fails.
      stats.records_dropped = stats.records_dropped + (r.bad_records or 0)
      stats.messages = stats.messages + (r.messages or 0)
    elseif r.status == 'duplicate' then
      stats.duplicates = stats.duplicates + 1
    elseif r.status == 'refused' then
      stats.refused = stats.refused + 1
    end
  end
  if r.status ~= 'error' then
    for _, w in ipairs(r.warnings or {}) do
      stats.warning_counts[w] = (stats.warning_counts[w] or 0) + 1
      if #stats.warnings < max then
        stats.warnings[#stats.warnings + 1] = { path = path, code = w, report_id = r.report_id,
                                                org_name = r.org_name, part = r.part }
      end
    end
  end
  if opts and opts.on_result then opts.on_result(path, r) end
end

-- A message of an mbox as each_mbox_message gives it (the "From " line
-- dropped, ">From " lines unquoted), from the raw message in file raw into
-- file out, a chunk at a time.
local function unquote_mbox_message(raw, out)
  local start = 0
  if raw:read(5) == 'From ' then
    -- The line goes with its line end; without one, nothing goes.
    local off = 5
    for _ = 1, math.huge do
      local chunk = raw:read(MBOX_CHUNK)
      if not chunk then break end
      local nl = chunk:find('\n', 1, true)
      if nl then
        start = off + nl
        break
      end
      off = off + #chunk
    end
  end
  raw:seek('set', start)
  local carry = ''
  -- Bound: MBOX_CHUNK bytes a step, to the end of the message (max_input).
  for _ = 1, math.huge do
    local chunk = raw:read(MBOX_CHUNK)
    if not chunk then break end
    local buf = carry .. chunk
    -- A line end at the very end may start a quoted separator the next chunk ends.
    local cut, last = #buf, buf:match('.*()\n')
    if last and buf:sub(last):match('^\n>*F?r?o?m?$') then cut = last - 1 end
    checked_write(out, (buf:sub(1, cut):gsub('\n>(>*From )', '\n%1')))
    carry = buf:sub(cut + 1)
  end
  checked_write(out, (carry:gsub('\n>(>*From )', '\n%1')))
end

--- A sink for M.each_mbox_message that holds the message being read in a
-- temporary file, and gives fn the path of another holding it unquoted.
-- @param temps {table} the temporary files' names are added to it (the
--   caller removes them); sink.close() closes the first
function M.mbox_file_sink(temps)
  local raw_path, msg_path = temp_file(temps), temp_file(temps)
  local raw = open_temp(raw_path, 'w+b')
  local sink = { raw_path = raw_path }
  function sink.add(piece) checked_write(raw, piece) end
  function sink.drop()
    raw:close()
    raw = open_temp(raw_path, 'w+b')
  end
  function sink.message()
    raw:flush()
    raw:seek('set', 0)
    local out = open_temp(msg_path, 'wb')
    unquote_mbox_message(raw, out)
    out:close()
    return msg_path
  end
  function sink.close() raw:close() end
  return sink
end

-- One mbox file: every message ingested as an input of its own, named
-- PATH:N (its place in the file), from a temporary file.
local function ingest_mbox(conn, f, head, path, stats, opts)
  local first = true
  local function read(n)
    if first then
      first = false
      return head
    end
    return f:read(n)
  end
  local temps = {}
  local ok, err = pcall(function()
    local sink = M.mbox_file_sink(temps)
    M.each_mbox_message(read, opts, function(index, msg, merr, code)
      local name = path .. ':' .. index
      if not msg then
        M.account(stats, name, { status = 'error', message = merr, code = code }, opts)
        return
      end
      for _, r in ipairs(M.ingest_file(conn, msg, opts)) do M.account(stats, name, r, opts) end
    end, sink)
    sink.close()
  end)
  remove_temps(temps)
  -- A temporary file that failed ends the file, with its reason.
  if not ok then M.account(stats, path, io_result(err), opts) end
end

-- Standard input (not an mbox) copied into a temporary file a chunk at a
-- time, at most max_input bytes, so it is read as a file is.
-- @return the file's path, or nil, message, code
local function spool_stdin(head, opts, temps)
  local max = opts.max_input or M.limits.max_input
  local path = temp_file(temps)
  local out = open_temp(path, 'wb')
  local size = #(head or '')
  checked_write(out, head or '')
  while head and size <= max do
    local chunk = io.stdin:read(math.min(MBOX_CHUNK, max + 1 - size))
    if not chunk or chunk == '' then break end
    size = size + #chunk
    checked_write(out, chunk)
  end
  out:close()
  if size > max then return nil, 'input over the size limit (' .. max .. ' bytes)', 'limit' end
  return path
end

-- The results of one path: an mbox is read a message at a time, any other
-- file (standard input copied to a temporary file first) by M.ingest_file.
local function ingest_path(conn, path, stats, opts)
  local stdin = path == '-'
  local f = stdin and io.stdin or io.open(path, 'rb')
  local head = f and f:read(512)
  if head and M.sniff(head) == 'mbox' then
    -- An mbox is read a message at a time, from a file or standard input.
    ingest_mbox(conn, f, head, path, stats, opts)
    if not stdin then f:close() end
    return
  end
  local results
  if stdin then
    local temps = {}
    local ok, r = pcall(function()
      local file, err, code = spool_stdin(head, opts, temps)
      if not file then return { { status = 'error', message = err, code = code } } end
      return M.ingest_file(conn, file, opts, path)
    end)
    remove_temps(temps)
    results = ok and r or { io_result(r) }
  else
    if f then f:close() end
    results = M.ingest_file(conn, path, opts, path)
  end
  for _, r in ipairs(results) do M.account(stats, path, r, opts) end
end

--- Ingest files. Each file's failure is its own: the rest of the batch is
-- still ingested.
-- @param conn redis connection or router
-- @param files {table} paths (or '-')
-- @param opts {table} as ingest_data, plus progress (function(stats)),
--   on_result (function(path, result))
-- @return stats (M.new_stats)
function M.ingest_files(conn, files, opts)
  opts = opts or {}
  local stats = M.new_stats()
  for _, path in ipairs(files) do
    stats.files = stats.files + 1
    ingest_path(conn, path, stats, opts)
    if opts.progress then opts.progress(stats) end
  end
  return stats
end

return M
