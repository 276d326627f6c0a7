-- Fuzz target: the dashboard server's HTTP request parsing (dmarc.owner.dashboard.parse_request,
-- parse_target, host_allowed) and the handler over a fixed data source, as a client on the
-- listening socket drives them.
local dashboard = require 'dmarc.owner.dashboard'
local c = require 'common'

local STATUS = { [200] = true, [204] = true, [400] = true, [404] = true, [405] = true,
                 [431] = true, [503] = true }

local ingest = require 'dmarc.owner.ingest'
local summary = require 'dmarc.owner.summary'

-- The rows of the bundled RFC 9990 report fixture, as the Redis source would load them.
local function data_of(domain, days, until_time)
  local data = { domain = domain, days = summary.day_list(until_time, days), rows = {},
                 reports = {}, dropped_messages = 0 }
  local f = io.open('tests/fixtures/reports/rfc9990.xml', 'rb')
  if not f then return data end
  local docs = assert(ingest.extract(f:read('a')))
  f:close()
  local rep = assert(ingest.normalize(assert(ingest.parse(docs[1]))))
  local day = ingest.report_day(rep)
  local order, counts = ingest.fields_of(rep)
  for _, fld in ipairs(order) do
    local rec = ingest.decode_record(fld)
    rec.count, rec.day = counts[fld], day
    data.rows[#data.rows + 1] = rec
  end
  data.reports[1] = { org_name = rep.org_name, report_id = rep.report_id, day = day,
                      info = { begin = rep.begin, p = rep.policy.p } }
  return data
end

local ctx = {
  days = 7,
  source = {
    domains = function()
      return { { domain = 'example.com', days = 2, last_day = '20251122' } }, false
    end,
    load = function(dom, days, until_time) return data_of(dom, days, until_time) end,
  },
}

return function(data)
  local req, status = dashboard.parse_request(data)
  if not req then
    c.check(status == 400 or status == 431, 'parse_request status', tostring(status))
  else
    c.check(type(req.method) == 'string' and req.target:sub(1, 1) == '/', 'request shape')
    dashboard.host_allowed(req.headers.host, '127.0.0.1', 8080)
    local res = dashboard.handle(req, ctx)
    c.check(type(res) == 'table' and STATUS[res.status], 'handler status', tostring(res.status))
    local bytes = dashboard.encode_response(res, req.method == 'HEAD')
    c.check(type(bytes) == 'string', 'encoded response')
  end
  local path, params = dashboard.parse_target(data)
  c.check(type(path) == 'string' and type(params) == 'table', 'parse_target shape')
end
