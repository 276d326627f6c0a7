-- Fuzz target: SPF records from DNS (libspf2 through the adapter in dmarc.io): the input is
-- the TXT record of the MAIL FROM domain, served from a zone; the check must end in one of the
-- RFC 7208 §2.6 results, whatever the record says.
local dio = require 'dmarc.io'
local c = require 'common'

local RESULTS = { pass = true, fail = true, softfail = true, neutral = true, none = true,
                  temperror = true, permerror = true }

-- A zone TXT value holding @s byte for byte: \DDD escapes, 255-byte character-strings.
local function txt(s)
  local parts = {}
  for i = 1, math.max(#s, 1), 255 do
    parts[#parts + 1] = '"' .. s:sub(i, i + 254):gsub('.', function(ch)
      return string.format('\\%03d', ch:byte())
    end) .. '"'
  end
  return table.concat(parts, ' ')
end

return function(data)
  if #data > 4000 then return end
  local zone = table.concat({
    'example.com. TXT ' .. txt(data),
    'inc.example.com. TXT "v=spf1 ip4:192.0.2.0/24 -all"',
    'mx.example.com. A 192.0.2.10',
    'example.com. MX 10 mx.example.com.',
    '10.2.0.192.in-addr.arpa. PTR mx.example.com.',
    '',
  }, '\n')
  local r, err, code = dio.resolver{ zone_text = zone, origin = '.' }
  if not r then
    c.check_fail('resolver', r, err, code)
    return
  end
  local res, serr, scode = r:spf{ ip = '192.0.2.10', helo = 'mx.example.com',
                                  mail_from = 'user@example.com' }
  if not res then
    c.check_fail('spf', res, serr, scode)
  else
    c.check(RESULTS[res.result], 'spf result', tostring(res.result))
  end
  r:close()
end
