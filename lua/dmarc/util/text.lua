--- Text helpers shared by every side: the atom escape of stored fields, text as a terminal
-- may show it, text made safe for XML/HTML/JSON, shell words, percent-decoding.
--
--   local text = require 'dmarc.util.text'
--   text.split('a,,b', ',')          --> { 'a', '', 'b' }
--   io.stderr:write(text.shown(value), '\n')
--
-- Pure Lua, requires nothing: the rspamd plugin's report rows use it in their hot path.
-- @module dmarc.util.text

local M = {}

-- {==================================================================
-- Text
-- ===================================================================

--- Split @s at every occurrence of the separator byte @sep: `split('a,,b', ',')` is
-- `{'a', '', 'b'}`; the empty string gives an empty list.
-- @param s {string}
-- @param sep {string} one byte, taken literally (not a pattern)
-- @return {table} the pieces, in order
function M.split(s, sep)
  local out = {}
  if s == '' then return out end
  local pos = 1
  -- Each round moves pos past a separator, so it ends within #s rounds.
  while true do
    local i = s:find(sep, pos, true)
    if not i then
      out[#out + 1] = s:sub(pos)
      return out
    end
    out[#out + 1] = s:sub(pos, i - 1)
    pos = i + 1
  end
end

-- The escape of the atoms of a stored field (report rows, ingested records): every byte
-- outside [A-Za-z0-9._@+= -] becomes %XX, so the separators `|`, `,`, `;`, `:` and `!`
-- never occur inside an atom and no value can break the encoding.
local ATOM_ESCAPE, ATOM_UNESCAPE = {}, {}
for b = 0, 255 do
  local c, hex = string.char(b), string.format('%%%02X', b)
  ATOM_ESCAPE[c] = hex
  ATOM_UNESCAPE[hex:sub(2)] = c
  ATOM_UNESCAPE[hex:sub(2):lower()] = c
end

--- One atom of a stored field: bytes outside [A-Za-z0-9._@+= -] as %XX.
-- @param s {any} nil gives ''; other values go through tostring
-- @return {string}
function M.escape_atom(s)
  if s == nil then return '' end
  return (tostring(s):gsub('[^%w%._@%+= %-]', ATOM_ESCAPE))
end

--- The inverse of escape_atom (%XX in either case).
-- @param s {string}
-- @return {string}
function M.unescape_atom(s)
  if not s:find('%', 1, true) then return s end
  return (s:gsub('%%(%x%x)', ATOM_UNESCAPE))
end

--- A value from outside (a report, a request) as a terminal may show it: printable ASCII
-- as is, every other byte as \xHH, so no escape sequence or bidi control reaches the screen.
-- @param s {any} nil gives ''; other values go through tostring
-- @return {string}
function M.shown(s)
  s = tostring(s == nil and '' or s)
  return (s:gsub('[^ -~]', function(c) return string.format('\\x%02X', c:byte()) end))
end

--- Text made safe for XML 1.0, HTML and JSON: C0 controls other than TAB, LF and CR, DEL,
-- and every byte that is not part of a valid UTF-8 sequence become '?'. Strings in reports
-- come from DNS, headers, received reports and site scripts; this keeps every document
-- built from them well-formed.
-- @param s {string}
-- @return {string}
function M.sanitize(s)
  if not s:find('[%z\1-\8\11\12\14-\31\127-\255]') then return s end
  local out, i, n = {}, 1, #s
  -- Each round moves i forward by one byte at least: at most #s rounds.
  while i <= n do
    local c = s:byte(i)
    local len = 0
    if c < 0x80 then
      len = 1
      if (c < 0x20 and c ~= 9 and c ~= 10 and c ~= 13) or c == 0x7f then c = nil end
    elseif c >= 0xc2 and c <= 0xdf then len = 2
    elseif c >= 0xe0 and c <= 0xef then len = 3
    elseif c >= 0xf0 and c <= 0xf4 then len = 4
    end
    local ok = len > 0 and c ~= nil and i + len - 1 <= n
    if ok then
      for j = i + 1, i + len - 1 do
        local b = s:byte(j)
        if b < 0x80 or b > 0xbf then ok = false break end
      end
    end
    if ok then
      out[#out + 1] = s:sub(i, i + len - 1)
      i = i + len
    else
      out[#out + 1] = '?'
      i = i + 1
    end
  end
  return table.concat(out)
end

--- @s as one word of a POSIX shell command line, whatever it contains.
-- @param s {any} goes through tostring
-- @return {string}
function M.shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- %XX sequences decoded (RFC 3986 2.1); anything else is left as it is.
-- @param s {string}
-- @return {string}
function M.percent_decode(s)
  return (s:gsub('%%(%x%x)', function(h) return string.char(tonumber(h, 16)) end))
end

-- }==================================================================

return M
