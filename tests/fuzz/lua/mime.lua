-- Fuzz target: the MIME walker of report e-mails (dmarc.owner.ingest.mime_attachments) on its own,
-- with the base64 and quoted-printable decoders it calls.
local ingest = require 'dmarc.owner.ingest'
local c = require 'common'

return function(data)
  local parts, err, code = ingest.mime_attachments(data)
  if not parts then
    c.check_fail('mime_attachments', parts, err, code)
  else
    -- at most max_attachments read, plus one failure entry per bound reached (4 kinds)
    c.check(#parts <= ingest.limits.max_attachments + 4, 'attachment count bound')
    for _, p in ipairs(parts) do
      if p.error then
        c.check(type(p.error) == 'string' and type(p.code) == 'string', 'failure entry')
      elseif p.failure then
        c.check(type(p.failure.feedback) == 'string', 'failure report entry')
      else
        c.check(type(p.data) == 'string', 'part data')
      end
    end
  end
  c.check(type(ingest.base64_decode(data)) ~= 'table', 'base64 result')
  c.check(type(ingest.qp_decode(data)) == 'string', 'qp result')
end
