-- dmarc.owner.dashboard: routing with a fake data source, escaping of everything
-- a report carried, the SVG charts' numbers, request parsing limits, the
-- Host check against DNS rebinding, and the security headers. The real
-- server and a real browser are in tests/integration/ingest_dashboard_spec.lua.
local dashboard = require 'dmarc.owner.dashboard'
local ingest = require 'dmarc.owner.ingest'
local summary = require 'dmarc.owner.summary'

local DIR = 'tests/fixtures/reports/'
local UNTIL = '2025-11-22'

local function data_of(names, domain, days, until_time)
  local data = { domain = domain, days = summary.day_list(until_time, days), rows = {},
                 reports = {}, dropped_messages = 0 }
  for _, name in ipairs(names) do
    local f = assert(io.open(DIR .. name, 'rb'))
    local docs = assert(ingest.extract(f:read('*a')))
    f:close()
    local tree, info = assert(ingest.parse(docs[1]))
    local rep = assert(ingest.normalize(tree, info))
    if rep.domain == domain then
      local day = ingest.report_day(rep)
      local order, counts = ingest.fields_of(rep)
      for _, fld in ipairs(order) do
        local rec = ingest.decode_record(fld)
        rec.count, rec.day = counts[fld], day
        data.rows[#data.rows + 1] = rec
      end
      data.reports[#data.reports + 1] = { org_name = rep.org_name, report_id = rep.report_id,
                                          day = day, info = { begin = rep.begin, p = rep.policy.p } }
    end
  end
  return data
end

local function fake_source(names)
  local calls = {}
  return {
    calls = calls,
    domains = function()
      return { { domain = 'example.com', days = 2, last_day = '20251122' } }, false
    end,
    load = function(dom, days, until_time)
      calls[#calls + 1] = { dom = dom, days = days, until_time = until_time }
      return data_of(names, dom, days, until_time)
    end,
  }
end

local function get(target, src)
  return dashboard.handle({ method = 'GET', target = target },
                          { source = src or fake_source({ 'rfc9990.xml', 'rfc7489.xml',
                                                          'hostile.xml' }) })
end

local function attr_sum(body, pattern)
  local total, n = 0, 0
  for v in body:gmatch(pattern) do
    total = total + tonumber(v)
    n = n + 1
  end
  return total, n
end

describe('dashboard: pages', function()
  it('lists domains on the index', function()
    local res = get('/')
    assert.equal(200, res.status)
    assert.truthy(res.body:find('href="/domain?d=example.com"', 1, true))
  end)

  it('shows the totals, charts and tables of a domain', function()
    local res = get('/domain?d=example.com&days=7&until=' .. UNTIL)
    assert.equal(200, res.status)
    assert.equal('text/html; charset=utf-8', res.type)
    local b = res.body
    assert.truthy(b:find('id="total-messages">238<', 1, true))
    -- The volume chart has one bar per day, and its bars add up to the total.
    local total, bars = attr_sum(b, '<g class="bar" data%-day="%d+" data%-messages="(%d+)"')
    assert.equal(7, bars)
    assert.equal(238, total)
    local pass_total = attr_sum(b, 'data%-messages="%d+" data%-pass="(%d+)"')
    assert.equal(190, pass_total)
    -- Pass-rate points only for days with data.
    local _, points = attr_sum(b, '<circle class="point"[^>]* data%-rate="([%d%.]+)"')
    assert.equal(2, points)
    assert.truthy(b:find('data-class="spoof" data-messages="13"', 1, true))
    assert.truthy(b:find('<table id="sources">', 1, true))
    assert.truthy(b:find('data-ip="203.0.113.5" data-messages="30"', 1, true))
    assert.truthy(b:find('id="verdict" data-verdict="insufficient_data"', 1, true))
  end)

  it('escapes every string that came from a report', function()
    local b = get('/domain?d=example.com&days=7&until=' .. UNTIL).body
    assert.falsy(b:find('<script', 1, true))
    assert.falsy(b:find('<svg onload', 1, true))
    assert.falsy(b:find('"onmouseover', 1, true))
    assert.truthy(b:find('&lt;script&gt;alert(&quot;org&quot;)&lt;/script&gt; &amp; Co', 1, true))
    assert.truthy(b:find('&lt;svg onload=alert(2)&gt;.example.com', 1, true))
  end)

  it('drills down into one source', function()
    local res = get('/source?d=example.com&ip=203.0.113.5&days=7&until=' .. UNTIL)
    assert.equal(200, res.status)
    local total, rows = attr_sum(res.body, '<tr data%-count="(%d+)"')
    assert.equal(2, rows)
    assert.equal(30, total)
    assert.truthy(res.body:find('id="source-messages">30<', 1, true))
  end)

  it('drills down into an IPv6 source given percent-encoded', function()
    local res = get('/source?d=example.com&ip=2001%3Adb8%3A%3A25&days=7&until=' .. UNTIL)
    assert.equal(200, res.status)
    assert.truthy(res.body:find('id="source-ip">2001:db8::25<', 1, true))
  end)

  it('answers the summary as JSON', function()
    local cjson = require 'cjson'
    local res = get('/api/summary?d=example.com&days=7&until=' .. UNTIL)
    assert.equal('application/json', res.type)
    assert.equal(238, cjson.decode(res.body).messages)
  end)

  it('refuses bad parameters and unknown paths', function()
    assert.equal(400, get('/domain?d=exa%20mple.com').status)
    assert.equal(400, get('/domain?d=%7B*%7D').status)
    assert.equal(400, get('/domain?d=example.com&days=0').status)
    assert.equal(400, get('/domain?d=example.com&days=100000').status)
    assert.equal(400, get('/domain?d=example.com&until=yesterday').status)
    assert.equal(400, get('/source?d=example.com&ip=%3Cscript%3E').status)
    assert.equal(404, get('/etc/passwd').status)
    assert.equal(405, dashboard.handle({ method = 'POST', target = '/' },
                                       { source = fake_source({}) }).status)
  end)

  it('passes the period to the data source', function()
    local src = fake_source({})
    get('/domain?d=example.com&days=14&until=2025-11-22', src)
    assert.equal(14, src.calls[1].days)
    assert.equal(1763769600, src.calls[1].until_time)
  end)

  it('shows a data-source failure as 503', function()
    local src = { domains = function() return nil, 'Redis: connection refused' end,
                  load = function() return nil, 'Redis: connection refused' end }
    assert.equal(503, get('/', src).status)
    assert.equal(503, get('/domain?d=example.com', src).status)
  end)
end)

describe('dashboard: charts', function()
  it('rounds axis maxima up to 1, 2 or 5 times a power of ten', function()
    assert.equal(1, dashboard.nice_max(0))
    assert.equal(200, dashboard.nice_max(190))
    assert.equal(1000, dashboard.nice_max(1000))
    assert.equal(5000, dashboard.nice_max(2001))
  end)

  it('draws pass and fail of each day', function()
    local svg = dashboard.volume_chart({ { day = '20251121', messages = 10, dmarc_pass = 7 },
                                         { day = '20251122', messages = 0, dmarc_pass = 0 } })
    assert.truthy(svg:find('data-day="20251121" data-messages="10" data-pass="7"', 1, true))
    assert.truthy(svg:find('<rect class="pass"', 1, true))
    assert.truthy(svg:find('<rect class="fail"', 1, true))
    assert.truthy(svg:find('data-day="20251122" data-messages="0" data-pass="0"', 1, true))
  end)
end)

describe('dashboard: HTTP', function()
  it('parses a request head and bounds it', function()
    local req = assert(dashboard.parse_request('GET /domain?d=x HTTP/1.1\r\nHost: 127.0.0.1:8025\r\n'))
    assert.equal('GET', req.method)
    assert.equal('/domain?d=x', req.target)
    assert.equal('127.0.0.1:8025', req.headers.host)
    assert.equal(400, select(2, dashboard.parse_request('garbage\r\n')))
    assert.equal(400, select(2, dashboard.parse_request('GET http://evil/ HTTP/1.1\r\n')))
    local many = 'GET / HTTP/1.1\r\n' .. string.rep('X-A: b\r\n', 101)
    assert.equal(431, select(2, dashboard.parse_request(many)))
  end)

  it('trims header values in one pass, whatever blanks they hold (was quadratic)', function()
    local v = 'a' .. string.rep(' ', 8000) .. 'b'
    local req = assert(dashboard.parse_request('GET / HTTP/1.1\r\nHost:  ' .. v .. ' \t\r\n'))
    assert.equal(v, req.headers.host)
    assert.equal('', assert(dashboard.parse_request('GET / HTTP/1.1\r\nX-E:   \r\n')).headers['x-e'])
  end)

  it('checks the Host header of a loopback listener (DNS rebinding)', function()
    assert.is_true(dashboard.host_allowed('127.0.0.1:8025', '127.0.0.1', 8025))
    assert.is_true(dashboard.host_allowed('localhost:8025', '127.0.0.1', 8025))
    assert.is_true(dashboard.host_allowed('[::1]:8025', '::1', 8025))
    assert.is_false(dashboard.host_allowed('attacker.example:8025', '127.0.0.1', 8025))
    assert.is_false(dashboard.host_allowed('127.0.0.1:9999', '127.0.0.1', 8025))
    assert.is_false(dashboard.host_allowed(nil, '127.0.0.1', 8025))
    assert.is_true(dashboard.host_allowed('dmarc.example', '192.0.2.10', 8025))
  end)

  it('sends security headers and no body for HEAD', function()
    local res = { status = 200, type = 'text/html; charset=utf-8', body = '<p>x</p>' }
    local full = dashboard.encode_response(res)
    assert.truthy(full:find('Content-Security-Policy: default-src \'none\'', 1, true))
    assert.truthy(full:find('X-Content-Type-Options: nosniff', 1, true))
    assert.truthy(full:find('Content-Length: 8\r\n', 1, true))
    assert.equal('<p>x</p>', full:sub(-8))
    local head = dashboard.encode_response(res, true)
    assert.equal('\r\n\r\n', head:sub(-4))
  end)

  it('parses query strings, first value wins, bounded', function()
    local path, params = dashboard.parse_target('/source?ip=2001%3Adb8%3A%3A1&ip=x&d=a+b')
    assert.equal('/source', path)
    assert.equal('2001:db8::1', params.ip)
    assert.equal('a b', params.d)
    local _, many = dashboard.parse_target('/?' .. string.rep('k=v&', 100) .. 'last=1')
    assert.is_nil(many.last)
  end)

  it('reads the listen address', function()
    assert.same({ '127.0.0.1', 8025 }, { dashboard.parse_listen('127.0.0.1:8025') })
    assert.same({ '::1', 80 }, { dashboard.parse_listen('[::1]:80') })
    assert.same({ '127.0.0.1', 0 }, { dashboard.parse_listen('0') })
    assert.is_nil(dashboard.parse_listen('host:99999'))
  end)
end)
