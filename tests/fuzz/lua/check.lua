-- Fuzz target: the whole-message path of `dmarc check` (dmarc.receive.auth.check): header walk, DKIM
-- (libopendkim reads every DKIM-Signature tag-list, the adapter copies d=, s=, h=, b=), the
-- trusted-A-R ARC path, From parsing and DMARC evaluation, answered from a fixed zone.
local auth = require 'dmarc.receive.auth'
local dio = require 'dmarc.io'
local c = require 'common'

-- The bundled example keys' public halves (tools/make-examples) under the names the seed
-- messages sign with; the rest of the zone gives every DMARC outcome a path.
local ZONE = [[
$TTL 3600
example.com. TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc.example.com. TXT "v=DMARC1; p=reject; rua=mailto:dmarc-reports@example.com"
_dmarc.shop.example. TXT "v=DMARC1; p=quarantine"
_dmarc.lists.example.net. TXT "v=DMARC1; p=none"
_dmarc.example.org. TXT "v=DMARC1; p=reject; sp=none; np=quarantine"
sub.example.org. A 192.0.2.1
]]

local resolver
local function get_resolver()
  if resolver then return resolver end
  local f = io.open('examples/example.zone', 'rb')
  local text = ZONE
  if f then
    text = f:read('a')
    f:close()
  end
  resolver = assert(dio.resolver{ zone_text = text, origin = '.' })
  return resolver
end

local VERDICTS = { pass = true, fail = true, none = true, temperror = true, permerror = true }

return function(data)
  local r = get_resolver()
  local res, err, code = auth.check(r, data, { ip = '192.0.2.10', helo = 'mx.example.com',
                                              mail_from = 'bounce@example.com',
                                              authserv_id = 'mx.example.org',
                                              trusted_authserv_ids = { 'mx.example.net' } })
  if not res then
    c.check_fail('check', res, err, code)
    return
  end
  c.check(type(res.dmarc) == 'table', 'dmarc result')
  local v = res.dmarc.result or res.dmarc.verdict
  if v ~= nil then c.check(VERDICTS[v] ~= nil, 'dmarc verdict', tostring(v)) end
  c.check(type(res.dkim) == 'table' and type(res.dkim.signatures) == 'table', 'dkim result')
  c.check(#res.dkim.signatures <= res.dkim.total, 'dkim count')
  for _, s in ipairs(res.dkim.signatures) do
    c.check(type(s.domain) == 'string' and type(s.result) == 'string', 'dkim signature shape')
  end
end
