-- Fuzz target: the header-field walker (dmarc.receive.message.parse; the C walk in dmarc.io and the
-- Lua walk, which must agree byte for byte), its lenient mode (read_fields, header_map: report
-- mail from anyone; both walks again, with the default bounds and with small ones that drop
-- fields), the MIME parameter reader (mime_params) and the structured-header helpers run on
-- every field (unfold, strip_comments, unquote, parse_tags: DKIM-Signature / ARC tag-lists).
local message = require 'dmarc.receive.message'
local c = require 'common'

local function walk(data, walker)
  message.walker = walker
  local msg, err, code = message.parse(data)
  if not msg then
    c.check_fail('parse(' .. walker .. ')', msg, err, code)
    c.check(code == 'syntax' or code == 'limit', 'parse code', code)
    return nil, err, code
  end
  c.check(#msg.fields % 3 == 0 and #msg.fields >= 3, 'fields come in threes')
  c.check(#msg.fields // 3 <= message.MAX_HEADERS, 'header count bound')
  c.check(msg.body_offset >= 1 and msg.body_offset <= #data + 1, 'body offset in range')
  return msg
end

-- The lenient walks of both walkers must agree too, and never fail.
local SMALL = { max_fields = 3, max_field_bytes = 16 }
local function lenient(data)
  for _, opts in ipairs({ {}, SMALL, { all_blocks = true }, { all_blocks = true, max_fields = 3 } }) do
    message.walker = 'c'
    local a, askipped = message.read_fields(data, opts)
    message.walker = 'lua'
    local b, bskipped = message.read_fields(data, opts)
    c.check(askipped == bskipped, 'lenient walkers disagree on the lines skipped')
    c.check(#a == #b and #a % 3 == 0, 'lenient walkers disagree on the field count')
    for i = 1, #a do
      c.check(a[i] == b[i], 'lenient walkers disagree on field item', tostring(i))
    end
    c.check(#a // 3 <= (opts.max_fields or message.MAX_HEADERS), 'lenient header count bound')
    for i = 3, #a, 3 do
      c.check(#a[i] <= (opts.max_field_bytes or message.MAX_HEADER_BYTES), 'lenient field length bound')
    end
  end
  message.walker = 'c'
  local first, all = message.header_map(data)
  for name, value in pairs(first) do
    c.check(all[name][1] == value, 'header_map: first is the first of all')
    c.check(not value:find('^%s') and not value:find('%s$'), 'header_map: value not trimmed')
    local main, params = message.mime_params(value)
    c.check(type(main) == 'string' and not main:find('%s'), 'mime_params: main value')
    local n = 0
    for k, v in pairs(params) do
      n = n + 1
      c.check(type(k) == 'string' and type(v) == 'string', 'mime_params: types')
    end
    c.check(n <= message.MAX_MIME_PARAMS, 'mime_params: parameter count bound')
  end
end

return function(data)
  lenient(data)
  local a, aerr, acode = walk(data, 'c')
  local b, berr, bcode = walk(data, 'lua')
  -- The two walks implement one grammar: same fields, same body, same refusal.
  c.check((a == nil) == (b == nil), 'walkers disagree on acceptance', tostring(aerr), tostring(berr))
  if not a then
    c.check(acode == bcode and aerr == berr, 'walkers disagree on the error', aerr, berr)
    return
  end
  c.check(a.body_offset == b.body_offset, 'walkers disagree on the body offset')
  c.check(#a.fields == #b.fields, 'walkers disagree on the field count')
  for i = 1, #a.fields do
    c.check(a.fields[i] == b.fields[i], 'walkers disagree on field item', tostring(i))
  end
  for i = 1, #a.fields, 3 do
    local value = a.fields[i + 2]
    c.check(#value <= message.MAX_HEADER_BYTES, 'field length bound')
    local unfolded = message.unfold(value)
    c.check(not unfolded:find('\r?\n[ \t]'), 'unfold leaves folding')
    local stripped, err = message.strip_comments(unfolded)
    c.check(stripped ~= nil or type(err) == 'string', 'strip_comments result')
    message.unquote(unfolded)
    local tags, terr, tcode = message.parse_tags(value)
    if tags then
      local n = 0
      for k, v in pairs(tags) do
        n = n + 1
        c.check(type(k) == 'string' and type(v) == 'string', 'tag types')
        c.check(not v:find('[ \t\r\n]'), 'whitespace left in a tag value')
      end
      c.check(n <= message.MAX_TAGS, 'tag count bound')
    else
      c.check_fail('parse_tags', tags, terr, tcode)
    end
  end
  a:get('from')
  a:first('dkim-signature')
  a:body()
end
