-- Fuzz target: the report XML SAX parse (dmarc.xml.parse, libxml2 push parser into the small
-- element tree) with the options ingest uses, then ingest's normalisation of the tree, and
-- the streamed parse of the same records (dmarc.xml.records) compared with it.
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
  if not rep then
    c.check_fail('normalize', rep, err, ncode)
    return
  end
  -- The streamed parse (header with the records deferred, then the records a batch at a
  -- time) reads the same records, never more than a batch per call.
  local htree, hinfo = ingest.parse(data, { max_xml = 4 * 1024 * 1024 }, true)
  c.check(htree ~= nil and hinfo.deferred ~= nil, 'deferred parse', tostring(hinfo))
  local srep = { bad_records = 0 }
  local nxt = ingest.record_batches(data, srep, { max_xml = 4 * 1024 * 1024, batch = 3 })
  for _ = 1, #rep.records + rep.bad_records + 1 do
    local b, berr, bcode = nxt()
    if not b then
      -- Only a bound met inside the records (names interned there) may stop it.
      if berr then c.check(bcode == 'limit', 'records code', tostring(bcode)) end
      if berr then return end
      break
    end
    c.check(#b <= 3, 'batch size', tostring(#b))
  end
  c.check(srep.nrecords == #rep.records and srep.bad_records == rep.bad_records,
          'streamed records', tostring(srep.nrecords) .. ' ' .. tostring(#rep.records))
end
