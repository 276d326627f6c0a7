--- Message helpers: the header section of an RFC 5322 message, and the small structured-header
-- grammars the authentication headers use (comments, quoted strings, tag-lists).
--
--   local message = require 'dmarc.receive.message'
--   local msg, err, code = message.parse(text)       -- code: 'syntax' | 'limit'
--   msg:get('from')      --> array of raw values (after the colon, folding kept), top first
--   msg:first('list-id') --> the first value, or nil
--   msg.headers          --> array of {name=, lname=, value=} (made on first use)
--   msg.fields           --> the same flat: name, lower-case name, value, name, ...
--
-- Bad data gives nil, message, code (a stable token); misuse (wrong argument types) raises.
-- @module dmarc.receive.message

local M = {}

--- Bounds on what a message may hold before it is refused: a message is untrusted input.
M.MAX_MESSAGE_BYTES = 64 * 1024 * 1024
M.MAX_HEADERS = 1000             -- header fields (libopendkim is fed the same ones)
M.MAX_HEADER_BYTES = 64 * 1024   -- one field, folded lines included
M.MAX_COMMENT_DEPTH = 32         -- nested comments, RFC 5322 §3.2.2 sets no limit
M.MAX_TAGS = 64                  -- tags in one tag-list (RFC 6376 §3.2)

local Message = {}
-- msg.headers ({name=, lname=, value=} per field) is made on first use: the checks read
-- msg.fields (name, lower-case name, value, ...) and need no table per field.
Message.__index = function(self, key)
  local method = Message[key]
  if method ~= nil or key ~= 'headers' then return method end
  local fields, headers = self.fields, {}
  for i = 1, #fields, 3 do
    headers[#headers + 1] = { name = fields[i], lname = fields[i + 1], value = fields[i + 2] }
  end
  rawset(self, 'headers', headers)
  return headers
end

local function fail(msg, code)
  return nil, msg, code
end

-- Lower-case field names seen before: most messages repeat the same few dozen names, and the
-- memo saves a string.lower per field. Bounded, since names come from untrusted input.
local MAX_LOWER_MEMO = 512
local lower_memo, lower_memo_size = {}, 0

local function lower_name(name)
  local lname = lower_memo[name]
  if lname then return lname end
  lname = name:lower()
  if lower_memo_size < MAX_LOWER_MEMO then
    lower_memo[name] = lname
    lower_memo_size = lower_memo_size + 1
  end
  return lname
end

-- Where the header section ends (RFC 5322 §2.1: at the first empty line): the last byte of
-- the section (its final LF) and the first byte of the body.
local function find_section_end(text, pos)
  if text:byte(pos) == 10 then return pos - 1, pos + 1 end
  if text:byte(pos) == 13 and text:byte(pos + 1) == 10 then return pos - 1, pos + 2 end
  -- Plain searches (memchr speed), the earlier of LF LF and LF CR LF.
  local a = text:find('\n\n', pos, true)
  local b = text:find('\n\r\n', pos, true)
  if a and (not b or a < b) then return a, a + 2 end
  if b then return b, b + 3 end
  return #text, #text + 1
end

-- Appends the field @name whose value spans text[value_start .. value_end] to @fields as
-- name, lower-case name, value; or returns nil, msg, 'limit'. With a bare LF among its line
-- ends, they are all rewritten to CRLF.
local function add_field(fields, text, name, value_start, value_end, bare_lf, max_bytes)
  local value = text:sub(value_start, value_end)
  if bare_lf then value = value:gsub('\r?\n', '\r\n') end
  if #value > max_bytes then
    return fail(string.format('header field %s longer than %d bytes', name, max_bytes), 'limit')
  end
  local n = #fields
  fields[n + 1], fields[n + 2], fields[n + 3] = name, lower_name(name), value
  return true
end

-- The state of a walk in Lua: the field being read (its name, where its value starts, where
-- its last line ends, whether one of its line ends is a bare LF: the value then has them
-- rewritten to CRLF; with CRLF throughout, the span of the field in the text is already its
-- value; drop: lenient, too long or past max_fields, read past and left out), and what was
-- kept or skipped.
local function new_walk(text, max_fields, max_bytes, lenient)
  return { text = text, fields = {}, nfields = 0, skipped = 0, max_fields = max_fields,
           max_bytes = max_bytes, lenient = lenient }
end

-- Ends the field being read: appended, or (lenient) counted as dropped.
local function end_field(w)
  local name = w.name
  if not name then return true end
  w.name = nil
  if w.drop then
    w.skipped = w.skipped + 1
    return true
  end
  local ok, err, code = add_field(w.fields, w.text, name, w.value_start, w.value_end, w.bare_lf,
                                  w.max_bytes)
  if not ok then
    if not w.lenient then return nil, err, code end
    w.skipped = w.skipped + 1
    return true
  end
  w.nfields = w.nfields + 1
  return true
end

-- A continuation line (RFC 5322 §2.2.3, folding) ending at @line_last: part of the field
-- being read.
local function continuation_line(w, line_start, line_last, lineno)
  if not w.name then
    if w.lenient then
      w.skipped = w.skipped + 1
      return true
    end
    return fail(string.format('line %d: continuation line without a header field', lineno),
      'syntax')
  end
  if w.text:byte(line_start - 2) ~= 13 then w.bare_lf = true end
  w.value_end = line_last
  -- The field as joined so far (with bare LFs it grows by one byte per line once joined;
  -- add_field checks the joined length again).
  if line_last - w.value_start + 1 > w.max_bytes and not w.drop then
    if not w.lenient then
      return fail(string.format('header field %s longer than %d bytes', w.name, w.max_bytes),
        'limit')
    end
    w.drop = true
  end
  return true
end

-- A line that starts a field (the one before it ends): a name of printable ASCII but the
-- colon (RFC 5322 §2.2), then optional WSP (the obsolete syntax, §4.5) and the colon.
local function field_line(w, line_start, line_last, lineno)
  local ok, err, code = end_field(w)
  if not ok then return nil, err, code end
  local _, colon, name = w.text:find('^([!-9;-~]+)[ \t]*:', line_start)
  if not colon or colon > line_last then
    if w.lenient then
      w.skipped = w.skipped + 1
      return true
    end
    return fail(string.format('line %d: not a header field (no "name:")', lineno), 'syntax')
  end
  w.drop = w.nfields >= w.max_fields
  if w.drop and not w.lenient then
    return fail(string.format('more than %d header fields', w.max_fields), 'limit')
  end
  w.name, w.value_start, w.value_end, w.bare_lf = name, colon + 1, line_last, false
  return true
end

-- The header section walked in Lua, where dmarc.io (which walks it in C, by the same rules
-- and with the same error messages) is not built, and to check the C walk against: fields
-- and the body offset, or nil, msg, code. @lenient: take what can be read (dmarc.io's
-- header_fields documents the rules): never an error, and a third result, the lines and
-- fields skipped or dropped.
local function header_fields_lua(text, pos, max_fields, max_bytes, lenient)
  local w = new_walk(text, max_fields, max_bytes, lenient)
  local body_offset = #text + 1
  local lineno = 0
  local line_start = pos
  -- Each line of the section once; bounded by the message size (each step moves forward).
  while line_start <= #text do
    local first = text:byte(line_start)
    -- RFC 5322 §2.1: the first empty line ends the header section.
    if first == 10 then
      body_offset = line_start + 1
      break
    elseif first == 13 and text:byte(line_start + 1) == 10 then
      body_offset = line_start + 2
      break
    end
    lineno = lineno + 1
    local nl = text:find('\n', line_start, true) or #text + 1
    -- The line is text[line_start .. line_last]: without its LF and one CR before it.
    local line_last = nl - 1
    if text:byte(line_last) == 13 and line_last >= line_start then line_last = line_last - 1 end
    local step = (first == 32 or first == 9) and continuation_line or field_line
    local ok, err, code = step(w, line_start, line_last, lineno)
    if not ok then return nil, err, code end
    line_start = nl + 1
  end
  if lineno == 0 and not lenient then
    return fail('line 1: not a header field (no "name:")', 'syntax')
  end
  local ok, err, code = end_field(w)
  if not ok then return nil, err, code end
  if lenient then return w.fields, body_offset, w.skipped end
  return w.fields, body_offset
end

local has_io, dio = pcall(require, 'dmarc.io')
local header_fields_c = has_io and type(dio) == 'table' and dio.header_fields or nil

--- Which walk parse uses: 'c' (dmarc.io) or 'lua'. Tests set it to compare the two.
M.walker = header_fields_c and 'c' or 'lua'

--- Parse the header section of a message.
-- A leading mbox "From " line is skipped; CRLF and bare LF line ends are both accepted. A
-- field's value is the text after its colon, its lines joined by CRLF (folding kept).
-- The lines are walked by position in @text: no copy of the section, one substring per field.
-- @param text {string} the whole message
-- @return {Message}, or nil, message, code ('syntax': not a message; 'limit')
function M.parse(text)
  if type(text) ~= 'string' then error('dmarc.receive.message.parse: text must be a string', 2) end
  if #text > M.MAX_MESSAGE_BYTES then
    return fail(string.format('message larger than %d bytes', M.MAX_MESSAGE_BYTES), 'limit')
  end
  if text == '' then return fail('empty message', 'syntax') end
  local pos = 1
  if text:sub(1, 5) == 'From ' then
    local nl = text:find('\n', 1, true)
    pos = nl and nl + 1 or #text + 1
  end
  local fields, body_offset, code
  if M.walker == 'c' and header_fields_c then
    fields, body_offset, code = header_fields_c(text, pos, M.MAX_HEADERS, M.MAX_HEADER_BYTES)
  else
    -- A NUL anywhere in the header section is refused first; the section's end is only
    -- looked for up front when there is a NUL somewhere (the walk finds it otherwise).
    local nul = text:find('\0', pos, true)
    if nul and nul <= find_section_end(text, pos) then
      return fail('NUL byte in the header section', 'syntax')
    end
    fields, body_offset, code = header_fields_lua(text, pos, M.MAX_HEADERS, M.MAX_HEADER_BYTES)
  end
  if not fields then return nil, body_offset, code end
  if #fields == 0 then return fail('no header fields: not a message', 'syntax') end
  return setmetatable({ fields = fields, text = text, body_offset = body_offset }, Message)
end

-- {==================================================================
-- Header fields read leniently: mail received from anyone (report mail, failure reports)
-- ===================================================================

--- Bounds of the lenient reading (callers may pass smaller ones).
M.MAX_MIME_PARAMS = 32           -- parameters of one Content-Type / Content-Disposition

-- One lenient walk of @text from @pos: the C walk when built (dmarc.io), else its Lua mirror.
local function walk_lenient(text, pos, max_fields, max_bytes)
  if M.walker == 'c' and header_fields_c then
    return header_fields_c(text, pos, max_fields, max_bytes, true)
  end
  return header_fields_lua(text, pos, max_fields, max_bytes, true)
end

--- The header fields of a block read leniently, for mail received from anyone: report mail
-- is often malformed (bare LF, lines without a colon, 8-bit bytes, a folded line first), and
-- one bad line must not cost the rest. A line that is no field (no "name:", or a continuation
-- line with no field before it) is skipped; a field longer than max_field_bytes, or past
-- max_fields, is dropped; a NUL byte is data. Nothing fails. The walk is the one
-- dmarc.receive.message.parse uses (dmarc.io's header_fields, or its Lua mirror), in its
-- lenient mode.
-- @param text {string} a header block (the walk stops at its first empty line)
-- @param opts {table|nil} max_fields (default M.MAX_HEADERS), max_field_bytes (default
--   M.MAX_HEADER_BYTES), all_blocks (true: an empty line does not end the walk, which goes
--   on with the next block of lines, as a message/feedback-report body is read)
-- @return {table} fields flat: name, lower-case name, value (after the colon, lines joined
--   by CRLF), ...; {integer} the lines and fields skipped or dropped
function M.read_fields(text, opts)
  if type(text) ~= 'string' then error('dmarc.receive.message.read_fields: text must be a string', 2) end
  opts = opts or {}
  local max_fields = opts.max_fields or M.MAX_HEADERS
  local max_bytes = opts.max_field_bytes or M.MAX_HEADER_BYTES
  local fields, body_offset, skipped = walk_lenient(text, 1, max_fields, max_bytes)
  -- Further blocks: each walk moves past at least one line (an empty one), so at most one
  -- walk per line of @text; their fields count against the same max_fields.
  while opts.all_blocks and body_offset <= #text do
    local more, next_offset, more_skipped = walk_lenient(text, body_offset,
                                                         max_fields - #fields / 3, max_bytes)
    local n = #fields
    for i = 1, #more do fields[n + i] = more[i] end
    body_offset, skipped = next_offset, skipped + more_skipped
  end
  return fields, skipped
end

-- A value read for its meaning: each line break with the blanks after it read as one space,
-- outer whitespace trimmed (as unfold, but a folded run of blanks is one space).
local function flat_value(value)
  value = value:gsub('\r?\n[ \t]+', ' '):gsub('^%s+', '')
  return value:match('^.*%S') or ''
end

--- The header fields of a block as maps, read leniently (M.read_fields: its rules and opts).
-- @return {table} lower-case name → the first value, unfolded (a line break and the blanks
--   after it read as one space) and trimmed; {table} lower-case name → every such value, in
--   order; {integer} the lines and fields skipped or dropped
function M.header_map(text, opts)
  local fields, skipped = M.read_fields(text, opts)
  local first, all = {}, {}
  for i = 2, #fields, 3 do
    local lname, value = fields[i], flat_value(fields[i + 1])
    local list = all[lname]
    if list then
      list[#list + 1] = value
    else
      first[lname], all[lname] = value, { value }
    end
  end
  return first, all, skipped
end

local function percent_decode(v)
  return (v:gsub('%%(%x%x)', function(x) return string.char(tonumber(x, 16)) end))
end

-- RFC 2231 §4: an extended value; the first section starts with charset'language'.
local function extended_value(v, first_section)
  if first_section then v = v:gsub("^[^']*'[^']*'", '') end
  return percent_decode(v)
end

-- The value of a parameter starting at @rest[@i]: a quoted-string (RFC 2045 §5.1, RFC 5322
-- §3.2.4: quoted-pairs unescaped; one left open runs to the end) or a token; and the rest
-- after it and its trailing blanks.
local function param_value(rest, i)
  if rest:byte(i) ~= 34 then
    local v, after = rest:match('^([^;%s]*)%s*()', i)
    return v, rest:sub(after)
  end
  local out, j = {}, i + 1
  -- Each step moves past a quote or a backslash: bounded by the length.
  while true do
    local k = rest:find('["\\]', j)
    if not k then
      out[#out + 1] = rest:sub(j)
      j = #rest + 1
      break
    end
    out[#out + 1] = rest:sub(j, k - 1)
    if rest:byte(k) == 34 then
      j = k + 1
      break
    end
    out[#out + 1] = rest:sub(k + 1, k + 1)
    j = k + 2
  end
  return table.concat(out), rest:match('^%s*(.*)$', j)
end

-- The RFC 2231 §3 continuations (name*0, name*1*, ...) joined, in order, up to the first
-- missing section; a parameter already given whole keeps its first value.
local function join_sections(params, sections)
  for name, parts in pairs(sections) do
    local out, n = {}, 0
    while parts[n] do
      local v, ext = parts[n][1], parts[n][2]
      out[#out + 1] = ext and extended_value(v, n == 0) or v
      n = n + 1
    end
    if n > 0 and params[name] == nil then params[name] = table.concat(out) end
  end
end

--- The value and parameters of a MIME structured field: Content-Type (RFC 2045 §5.1),
-- Content-Disposition (RFC 2183), with RFC 2231's extended values (name*=charset'lang'%XX)
-- and continuations (name*0=, name*1*=). Lenient: a parameter that cannot be read is passed
-- over to the next ";". The first of two same-named parameters counts.
-- @param value {string|nil} the field's value (unfolded)
-- @param max_params {integer|nil} parameters read at most (default M.MAX_MIME_PARAMS)
-- @return {string} the value before the first ";", lower-case, without blanks;
--   {table} lower-case parameter name → value
function M.mime_params(value, max_params)
  value = type(value) == 'string' and value or ''
  max_params = max_params or M.MAX_MIME_PARAMS
  local main = value:match('^([^;]*)')
  local params, sections = {}, {}
  local rest = value:sub(#main + 1)
  local seen = 0
  -- Each round reads a parameter or passes over at least one byte, at most max_params rounds.
  while rest ~= '' and seen < max_params do
    seen = seen + 1
    local name, at = rest:match('^;%s*([%w%-%*_%.]+)%s*=%s*()')
    if not name then
      rest = rest:match('^;?[^;]*(.*)$')
    else
      local v
      v, rest = param_value(rest, at)
      name = name:lower()
      local base, num, ext = name:match('^(.-)%*(%d+)(%*?)$')
      if base then
        local parts = sections[base] or {}
        sections[base] = parts
        num = tonumber(num)
        if parts[num] == nil then parts[num] = { v, ext == '*' } end
      else
        base = name:match('^(.-)%*$')
        if base then name, v = base, extended_value(v, true) end
        if params[name] == nil then params[name] = v end
      end
    end
  end
  join_sections(params, sections)
  return (main:lower():gsub('%s', '')), params
end

-- }==================================================================

--- Raw values (after the colon, folding kept) of every field named @name, top first.
function Message:get(name)
  local lname = lower_name(name)
  local fields, out = self.fields, {}
  for i = 2, #fields, 3 do
    if fields[i] == lname then out[#out + 1] = fields[i + 1] end
  end
  return out
end

--- The first (topmost) value of field @name, or nil.
function Message:first(name)
  local lname = lower_name(name)
  local fields = self.fields
  for i = 2, #fields, 3 do
    if fields[i] == lname then return fields[i + 1] end
  end
  return nil
end

--- The body, as received.
function Message:body()
  return self.text:sub(self.body_offset)
end

--- A value with its folding removed (RFC 5322 §2.2.3) and outer whitespace trimmed.
function M.unfold(value)
  -- Trailing whitespace goes with one anchored greedy match: gsub('[ \t]+$', '') would retry
  -- from every blank of a long inner run (quadratic on a 64 KB field of spaces).
  value = value:gsub('\r?\n([ \t])', '%1'):gsub('^[ \t]+', '')
  return value:match('^.*[^ \t]') or ''
end

--- Remove CFWS comments (RFC 5322 §3.2.2) from a structured value, keeping quoted strings
-- intact. Nested comments are followed to M.MAX_COMMENT_DEPTH.
-- @return {string} the value without comments (each replaced by a space), or nil, msg, 'syntax'
function M.strip_comments(value)
  local out = {}
  local i, n = 1, #value
  local depth = 0
  local in_quote = false
  while i <= n do
    local c = value:sub(i, i)
    if c == '\\' and (in_quote or depth > 0) then
      -- quoted-pair: the next character is literal
      if depth == 0 then out[#out + 1] = value:sub(i, i + 1) end
      i = i + 2
    elseif in_quote then
      out[#out + 1] = c
      if c == '"' then in_quote = false end
      i = i + 1
    elseif c == '(' then
      depth = depth + 1
      if depth > M.MAX_COMMENT_DEPTH then return fail('comments nested too deeply', 'syntax') end
      if depth == 1 then out[#out + 1] = ' ' end
      i = i + 1
    elseif c == ')' then
      if depth == 0 then return fail('unbalanced ")"', 'syntax') end
      depth = depth - 1
      i = i + 1
    else
      if depth == 0 then
        out[#out + 1] = c
        if c == '"' then in_quote = true end
      end
      i = i + 1
    end
  end
  if depth > 0 then return fail('comment not closed', 'syntax') end
  if in_quote then return fail('quoted string not closed', 'syntax') end
  return table.concat(out)
end

--- Unquote a quoted-string (RFC 5322 §3.2.4); a bare token is returned as is.
function M.unquote(s)
  if s:sub(1, 1) == '"' and s:sub(-1) == '"' and #s >= 2 then
    return (s:sub(2, -2):gsub('\\(.)', '%1'))
  end
  return s
end

--- Parse a tag-list (RFC 6376 §3.2: `tag=value; tag=value`, FWS allowed around everything):
-- ARC-Seal, ARC-Message-Signature, DKIM-Signature.
-- Whitespace inside values is removed (it is only folding there, e.g. in b=).
-- @return {table} tag -> value, or nil, msg, 'syntax' (a duplicate tag makes the list
--   invalid, RFC 6376 §3.2)
function M.parse_tags(value)
  local tags = {}
  local count = 0
  for item in (value .. ';'):gmatch('([^;]*);') do
    -- (Trimmed by anchored matches, linear whatever the blanks inside; see unfold.)
    local trimmed = item:gsub('^[ \t\r\n]+', ''):match('^.*[^ \t\r\n]') or ''
    if trimmed ~= '' then
      count = count + 1
      if count > M.MAX_TAGS then return fail('more than ' .. M.MAX_TAGS .. ' tags', 'syntax') end
      local tag, v = trimmed:match('^([%a][%w_]*)[ \t\r\n]*=(.*)$')
      if not tag then return fail('not a tag=value pair: ' .. trimmed:sub(1, 40), 'syntax') end
      if tags[tag] ~= nil then return fail('duplicate tag ' .. tag, 'syntax') end
      tags[tag] = v:gsub('[ \t\r\n]+', '')
    end
  end
  return tags
end

M.Message = Message
return M
