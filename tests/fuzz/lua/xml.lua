-- Fuzz target: the report XML SAX parse (dmarc.xml.parse, libxml2 push parser into the small
-- element tree) with the options ingest uses, then ingest's normalisation of the tree.
local ingest = require 'dmarc.owner.ingest'
local c = require 'common'

return function(data)
  local tree, info, code = ingest.parse(data, { max_xml = 4 * 1024 * 1024 })
  if not tree then
    c.check_fail('parse', tree, info, code)
    c.check(code == 'xml' or code == 'dtd' or code == 'limit', 'parse code', tostring(code))
    return
  end
  local rep, err, ncode = ingest.normalize(tree, info)
  if not rep then c.check_fail('normalize', rep, err, ncode) end
end
