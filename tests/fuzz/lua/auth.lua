-- Fuzz target: Authentication-Results and ARC parsing (dmarc.receive.auth): parse_ar on every A-R and
-- ARC-Authentication-Results field of a message, the ARC sealers and the trusted-A-R verdict;
-- an input that is not a message is parsed as one A-R value.
local message = require 'dmarc.receive.message'
local auth = require 'dmarc.receive.auth'
local c = require 'common'

local function check_ar(value, arc)
  local ar, err, code = auth.parse_ar(value, arc)
  if not ar then
    c.check_fail('parse_ar', ar, err, code)
    c.check(code == 'syntax', 'parse_ar code', code)
    return
  end
  c.check(type(ar.authserv_id) == 'string' and ar.authserv_id ~= '', 'authserv-id')
  c.check(type(ar.results) == 'table', 'results')
  if arc then c.check(math.type(ar.instance) == 'integer', 'ARC instance') end
  for _, r in ipairs(ar.results) do
    c.check(type(r.method) == 'string' and type(r.result) == 'string', 'result shape')
    c.check(r.result:find('^[%w%-]+$') ~= nil, 'result is a keyword', r.result)
    c.check(type(r.props) == 'table', 'props')
  end
end

return function(data)
  local msg = message.parse(data)
  if not msg then
    check_ar(data, false)
    check_ar(data, true)
    return
  end
  for _, v in ipairs(msg:get('authentication-results')) do check_ar(v, false) end
  for _, v in ipairs(msg:get('arc-authentication-results')) do check_ar(v, true) end
  local sealers = auth.arc_sealers(msg)
  c.check(type(sealers) == 'table', 'sealers')
  local arc, ignored = auth.arc_verdict(msg, { authserv_id = 'mx.example.org',
                                               trusted_authserv_ids = { 'mx.example.net' } })
  c.check(type(ignored) == 'table', 'ignored list')
  if arc ~= nil then
    c.check(type(arc) == 'table', 'arc verdict type')
    -- A result is an RFC 8601 Keyword, whatever a trusted host wrote.
    c.check(type(arc.result) == 'string' and arc.result:find('^[%w%-]+$') ~= nil, 'arc result',
            tostring(arc.result))
  end
end
