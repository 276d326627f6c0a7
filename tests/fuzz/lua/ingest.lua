-- Fuzz target: a received aggregate report end to end as `dmarc report ingest` reads it
-- (dmarc.owner.ingest.extract: sniffing, the MIME walker of report e-mails, base64 / quoted-printable,
-- gzip and zip readers; then the XML SAX parse and normalisation of every document).
local ingest = require 'dmarc.owner.ingest'
local c = require 'common'

local OPTS = { max_xml = 4 * 1024 * 1024 }

return function(data)
  local docs, err, code = ingest.extract(data, OPTS)
  if not docs then
    c.check_fail('extract', docs, err, code)
    return
  end
  c.check(#docs >= 1 and #docs <= ingest.limits.max_attachments, 'document count bound')
  for _, doc in ipairs(docs) do
    c.check(type(doc) == 'string' and #doc <= OPTS.max_xml, 'document size bound')
    local tree, info, pcode = ingest.parse(doc, OPTS)
    if not tree then
      c.check_fail('parse', tree, info, pcode)
    else
      local rep, nerr, ncode = ingest.normalize(tree, info)
      if not rep then
        c.check_fail('normalize', rep, nerr, ncode)
      else
        c.check(type(rep) == 'table', 'report shape')
      end
    end
  end
end
