-- `dmarc report serve` for real: reports ingested into the test redis-server,
-- the server started as a process on a loopback port, raw HTTP checks
-- (headers, Host check, request limits), and the page in headless Chromium
-- through playwright-core (tests/browser/dashboard.test.js), which asserts
-- that the charts and tables show the ingested numbers and keeps screenshots
-- in build/browser/.
local h = dofile('tests/integration/report_helpers.lua')
local socket = require 'socket'
local cjson = require 'cjson'

local REDIS = os.getenv('DMARC_TEST_REDIS') or '127.0.0.1:16379'
local FIX = h.ROOT .. '/tests/fixtures/reports/'
local PREFIX = 'it:dash' .. os.time() % 100000 .. ':'
local UNTIL, DAYS = '2025-11-22', 7
local SOURCE = '203.0.113.5'

-- One raw HTTP exchange on loopback; the whole response.
local function http(port, request)
  local c = assert(socket.connect('127.0.0.1', port))
  c:settimeout(10)
  c:send(request)
  local out = c:receive('*a')
  c:close()
  return out or ''
end

local function status_of(response)
  return tonumber(response:match('^HTTP/1%.1 (%d+)'))
end

local function browser_ready()
  local ok_node = h.run('command -v node >/dev/null') == 0
  local ok_chromium = h.run('test -x "${DMARC_CHROMIUM:-/usr/bin/chromium}"') == 0
  local ok_pw = h.run('test -d ' .. h.ROOT .. '/tests/browser/node_modules/playwright-core') == 0
  return ok_node and ok_chromium and ok_pw
end

describe('dashboard served over HTTP', function()
  local pid, port, dir

  setup(function()
    dir = h.tmpdir()
    local status = h.run(h.BIN .. ' report ingest --quiet --redis ' .. REDIS .. ' --redis-prefix ' .. PREFIX
                         .. ' ' .. FIX .. 'rfc9990.xml.gz ' .. FIX .. 'report-qp.eml ' .. FIX
                         .. 'rfc7489-ns.xml ' .. FIX .. 'hostile.xml')
    -- hostile.xml carries records with an invalid source_ip: stored without them, and the
    -- run fails so the loss is not silent.
    assert.equal(1, status)
    local out = dir .. '/serve.out'
    pid = h.spawn('exec ' .. h.BIN .. ' report serve --quiet --redis ' .. REDIS .. ' --redis-prefix '
                  .. PREFIX .. ' --listen 127.0.0.1:0 --until ' .. UNTIL .. ' --days ' .. DAYS
                  .. ' >' .. out .. ' 2>' .. dir .. '/serve.err')
    for _ = 1, 100 do
      local f = io.open(out, 'rb')
      local text = f and f:read('*a') or ''
      if f then f:close() end
      port = tonumber(text:match('serving http://127%.0%.0%.1:(%d+)/'))
      if port then break end
      socket.sleep(0.1)
    end
    assert.truthy(port, 'dmarc report serve did not start')
  end)

  teardown(function()
    h.stop(pid)
  end)

  it('dashboard__pages_with_security_headers', function()
    local res = http(port, 'GET /domain?d=example.com&days=7&until=' .. UNTIL .. ' HTTP/1.1\r\n'
                     .. 'Host: 127.0.0.1:' .. port .. '\r\n\r\n')
    assert.equal(200, status_of(res))
    assert.truthy(res:find("Content-Security-Policy: default-src 'none'", 1, true))
    assert.truthy(res:find('X-Content-Type-Options: nosniff', 1, true))
    assert.truthy(res:find('id="total-messages">245<', 1, true))
    assert.falsy(res:find('<script', 1, true))
  end)

  it('dashboard__refuses_a_foreign_host_header (DNS rebinding)', function()
    local res = http(port, 'GET / HTTP/1.1\r\nHost: attacker.example:' .. port .. '\r\n\r\n')
    assert.equal(403, status_of(res))
  end)

  it('dashboard__bounds_the_request_size', function()
    local res = http(port, 'GET /' .. string.rep('a', 9000) .. ' HTTP/1.1\r\nHost: 127.0.0.1:'
                     .. port .. '\r\n\r\n')
    assert.equal(431, status_of(res))
    res = http(port, 'POST / HTTP/1.1\r\nHost: 127.0.0.1:' .. port .. '\r\n\r\n')
    assert.equal(405, status_of(res))
  end)

  it('dashboard__in_a_real_browser_shows_the_ingested_numbers', function()
    if not browser_ready() then
      pending('needs node, chromium and `npm ci` in tests/browser (playwright-core)')
      return
    end
    local base = h.BIN .. ' report summary --json --redis ' .. REDIS .. ' --redis-prefix ' .. PREFIX
      .. ' --domain example.com --until ' .. UNTIL .. ' --days ' .. DAYS
    local st, out = h.run(base)
    assert.equal(0, st)
    local s = cjson.decode(out)
    local st2, out2 = h.run(base .. ' --source ' .. SOURCE)
    assert.equal(0, st2)
    local drill = cjson.decode(out2).drill
    local expected = {
      domain = 'example.com', days = DAYS, ['until'] = UNTIL, messages = s.messages,
      dmarc_pass = s.dmarc_pass, pass_rate = s.pass_rate, reports = s.reports, daily = s.daily,
      sources = s.sources, readiness = s.readiness, reporters = s.reporters,
      source = { ip = SOURCE, messages = drill.source.messages, rows = #drill.rows },
    }
    assert.equal(245, expected.messages)
    local exp_file = dir .. '/expected.json'
    local f = assert(io.open(exp_file, 'wb'))
    f:write(cjson.encode(expected))
    f:close()
    local shots = h.ROOT .. '/build/browser'
    os.execute('rm -f ' .. shots .. '/dashboard.png ' .. shots .. '/source.png')
    local status, report = h.run('cd ' .. h.ROOT .. '/tests/browser && node dashboard.test.js '
                                 .. 'http://127.0.0.1:' .. port .. '/ ' .. exp_file .. ' ' .. shots
                                 .. ' 2>&1')
    print(report)
    assert.equal(0, status)
    assert.truthy(report:find('\n%d+ passed, 0 failed'))
    assert.falsy(report:find('not ok', 1, true))
    assert.equal(0, h.run('test -s ' .. shots .. '/dashboard.png'))
    assert.equal(0, h.run('test -s ' .. shots .. '/source.png'))
  end)
end)
