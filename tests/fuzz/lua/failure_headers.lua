-- Fuzz target: the header reader of the failure-report builder (dmarc.report.failure.parse_headers),
-- which reads the failed message's header block, and the redaction of its addresses.
local failure = require 'dmarc.report.failure'
local c = require 'common'

return function(data)
  local fields = failure.parse_headers(data)
  c.check(type(fields) == 'table', 'fields table')
  c.check(#fields <= failure.MAX_HEADER_LINES, 'header count bound')
  for _, f in ipairs(fields) do
    c.check(type(f[1]) == 'string' and type(f[2]) == 'string', 'field shape')
    failure.redact_address(f[2], 'key')
    failure.redact_address(f[2])
  end
end
