-- Fuzz target: the failure-report reader (dmarc.owner.failures.read): the feedback fields and
-- the original header block (the data split in two at its first NUL), and the date parser.
local failures = require 'dmarc.owner.failures'
local c = require 'common'

return function(data)
  local feedback, headers = data:match('^(.-)%z(.*)$')
  feedback = feedback or data
  local rec, err, code = failures.read(feedback, headers, headers)
  if not rec then
    c.check_fail('read', rec, err, code)
  else
    c.check(type(rec.id) == 'string' and #rec.id == 32, 'record id')
    c.check(type(rec.domain) == 'string' and type(rec.source_ip) == 'string', 'record keys')
    for _, v in pairs(rec) do
      if type(v) == 'string' then c.check(#v <= 512, 'kept text bound') end
    end
  end
  local t = failures.parse_date(data)
  c.check(t == nil or type(t) == 'number', 'date')
end
