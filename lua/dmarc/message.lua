--- Message helpers: the header section of an RFC 5322 message, and the small structured-header
-- grammars the authentication headers use (comments, quoted strings, tag-lists).
--
--   local message = require 'dmarc.message'
--   local msg, err, code = message.parse(text)       -- code: 'syntax' | 'limit'
--   msg:get('from')      --> array of raw values (after the colon, folding kept), top first
--   msg:first('list-id') --> the first value, or nil
--   msg.headers          --> array of {name=, lname=, value=}
--
-- Bad data gives nil, message, code (a stable token); misuse (wrong argument types) raises.
-- @module dmarc.message

local M = {}

--- Bounds on what a message may hold before it is refused: a message is untrusted input.
M.MAX_MESSAGE_BYTES = 64 * 1024 * 1024
M.MAX_HEADERS = 1000             -- header fields (libopendkim is fed the same ones)
M.MAX_HEADER_BYTES = 64 * 1024   -- one field, folded lines included
M.MAX_COMMENT_DEPTH = 32         -- nested comments, RFC 5322 §3.2.2 sets no limit
M.MAX_TAGS = 64                  -- tags in one tag-list (RFC 6376 §3.2)

local Message = {}
Message.__index = Message

local function fail(msg, code)
  return nil, msg, code
end

-- A field name: printable ASCII except the colon (RFC 5322 §2.2), then optional WSP (the
-- obsolete syntax, §4.5) and the colon.
local function split_field(line)
  local name, value = line:match('^([!-9;-~]+)[ \t]*:(.*)$')
  return name, value
end

--- Parse the header section of a message.
-- A leading mbox "From " line is skipped; CRLF and bare LF line ends are both accepted.
-- @param text {string} the whole message
-- @return {Message}, or nil, message, code ('syntax': not a message; 'limit')
function M.parse(text)
  if type(text) ~= 'string' then error('dmarc.message.parse: text must be a string', 2) end
  if #text > M.MAX_MESSAGE_BYTES then
    return fail(string.format('message larger than %d bytes', M.MAX_MESSAGE_BYTES), 'limit')
  end
  if text == '' then return fail('empty message', 'syntax') end
  local pos = 1
  if text:sub(1, 5) == 'From ' then
    local nl = text:find('\n', 1, true)
    pos = nl and nl + 1 or #text + 1
  end
  local headers = {}
  local current -- {name, parts}
  local lineno = 0
  local function flush()
    if not current then return true end
    local value = table.concat(current.parts, '\r\n')
    if #value > M.MAX_HEADER_BYTES then
      return fail(string.format('header field %s longer than %d bytes', current.name,
        M.MAX_HEADER_BYTES), 'limit')
    end
    headers[#headers + 1] = { name = current.name, lname = current.name:lower(), value = value }
    current = nil
    return true
  end
  -- RFC 5322 §2.1: the first empty line ends the header section. Find it once, then walk the
  -- lines of the header section only.
  local block_end, body_offset
  if text:sub(pos, pos) == '\n' then
    block_end, body_offset = pos - 1, pos + 1
  elseif text:sub(pos, pos + 1) == '\r\n' then
    block_end, body_offset = pos - 1, pos + 2
  else
    -- Plain searches (memchr speed), the earlier of LF LF and LF CR LF.
    local a = text:find('\n\n', pos, true)
    local b = text:find('\n\r\n', pos, true)
    if a and (not b or a < b) then
      block_end, body_offset = a, a + 2
    elseif b then
      block_end, body_offset = b, b + 3
    else
      block_end, body_offset = #text, #text + 1
    end
  end
  local block = text:sub(pos, block_end)
  if block:find('\0', 1, true) then return fail('NUL byte in the header section', 'syntax') end
  if block:sub(-1) ~= '\n' then block = block .. '\n' end
  for line in block:gmatch('([^\n]*)\n') do
    lineno = lineno + 1
    if line:byte(-1) == 13 then line = line:sub(1, -2) end
    local first = line:byte(1)
    if first == 32 or first == 9 then
      if not current then
        return fail(string.format('line %d: continuation line without a header field', lineno),
          'syntax')
      end
      local parts = current.parts
      parts[#parts + 1] = line
      current.bytes = current.bytes + #line + 2
      if current.bytes > M.MAX_HEADER_BYTES then
        return fail(string.format('header field %s longer than %d bytes', current.name,
          M.MAX_HEADER_BYTES), 'limit')
      end
    else
      local ok, err, code = flush()
      if not ok then return nil, err, code end
      local name, value = split_field(line)
      if not name then
        return fail(string.format('line %d: not a header field (no "name:")', lineno), 'syntax')
      end
      if #headers >= M.MAX_HEADERS then
        return fail(string.format('more than %d header fields', M.MAX_HEADERS), 'limit')
      end
      current = { name = name, parts = { value }, bytes = #value }
    end
  end
  local ok, err, code = flush()
  if not ok then return nil, err, code end
  if #headers == 0 then return fail('no header fields: not a message', 'syntax') end
  return setmetatable({ headers = headers, text = text, body_offset = body_offset }, Message)
end

--- Raw values (after the colon, folding kept) of every field named @name, top first.
function Message:get(name)
  local lname = name:lower()
  local out = {}
  for _, h in ipairs(self.headers) do
    if h.lname == lname then out[#out + 1] = h.value end
  end
  return out
end

--- The first (topmost) value of field @name, or nil.
function Message:first(name)
  local lname = name:lower()
  for _, h in ipairs(self.headers) do
    if h.lname == lname then return h.value end
  end
  return nil
end

--- The body, as received.
function Message:body()
  return self.text:sub(self.body_offset)
end

--- A value with its folding removed (RFC 5322 §2.2.3) and outer whitespace trimmed.
function M.unfold(value)
  return (value:gsub('\r?\n([ \t])', '%1'):gsub('^[ \t]+', ''):gsub('[ \t]+$', ''))
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
    local trimmed = item:gsub('^[ \t\r\n]+', ''):gsub('[ \t\r\n]+$', '')
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
