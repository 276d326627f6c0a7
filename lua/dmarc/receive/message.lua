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
local function add_field(fields, text, name, value_start, value_end, bare_lf)
  local value = text:sub(value_start, value_end)
  if bare_lf then value = value:gsub('\r?\n', '\r\n') end
  if #value > M.MAX_HEADER_BYTES then
    return fail(string.format('header field %s longer than %d bytes', name, M.MAX_HEADER_BYTES),
      'limit')
  end
  local n = #fields
  fields[n + 1], fields[n + 2], fields[n + 3] = name, lower_name(name), value
  return true
end

-- The header section walked in Lua, where dmarc.io (which walks it in C, by the same rules
-- and with the same error messages) is not built: fields and the body offset, or nil, msg,
-- code.
local function header_fields_lua(text, pos, max_fields)
  local fields, nfields = {}, 0
  -- The field being read: its name, where its value starts, where its last line ends, and
  -- whether one of its line ends is a bare LF (the value then has them rewritten to CRLF;
  -- with CRLF throughout, the span of the field in @text is already its value).
  local name, value_start, value_end, bare_lf
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
    if first == 32 or first == 9 then
      if not name then
        return fail(string.format('line %d: continuation line without a header field', lineno),
          'syntax')
      end
      if text:byte(line_start - 2) ~= 13 then bare_lf = true end
      value_end = line_last
      -- The field as joined so far (with bare LFs it grows by one byte per line once joined;
      -- add_field checks the joined length again).
      if line_last - value_start + 1 > M.MAX_HEADER_BYTES then
        return fail(string.format('header field %s longer than %d bytes', name,
          M.MAX_HEADER_BYTES), 'limit')
      end
    else
      if name then
        local ok, err, code = add_field(fields, text, name, value_start, value_end, bare_lf)
        if not ok then return nil, err, code end
        nfields = nfields + 1
      end
      -- A field name: printable ASCII except the colon (RFC 5322 §2.2), then optional WSP
      -- (the obsolete syntax, §4.5) and the colon.
      local _, colon, field = text:find('^([!-9;-~]+)[ \t]*:', line_start)
      if not colon then
        return fail(string.format('line %d: not a header field (no "name:")', lineno), 'syntax')
      end
      if nfields >= max_fields then
        return fail(string.format('more than %d header fields', max_fields), 'limit')
      end
      name, value_start, value_end, bare_lf = field, colon + 1, line_last, false
    end
    line_start = nl + 1
  end
  if lineno == 0 then return fail('line 1: not a header field (no "name:")', 'syntax') end
  if name then
    local ok, err, code = add_field(fields, text, name, value_start, value_end, bare_lf)
    if not ok then return nil, err, code end
  end
  return fields, body_offset
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
    fields, body_offset, code = header_fields_lua(text, pos, M.MAX_HEADERS)
  end
  if not fields then return nil, body_offset, code end
  if #fields == 0 then return fail('no header fields: not a message', 'syntax') end
  return setmetatable({ fields = fields, text = text, body_offset = body_offset }, Message)
end

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
