-- Report rows against a real redis-server (our own, on a loopback port, with
-- AOF): aggregation of many evaluations, a Redis restart in the middle of
-- the stream, two writer processes at once, and `dmarc report generate`
-- output validated against the RFC 9990 and RFC 7489 schemas [AGG-9].
local h = dofile('tests/integration/report_helpers.lua')
local redis = require 'dmarc.redis'
local socket = require 'socket'
local dmarc = require 'dmarc'
local report = require 'dmarc.report.rows'
local xml = require 'dmarc.report.xml'
local util_files = require 'dmarc.util.files'

local PORT = 16391
local DAY = 1763683200 -- 2025-11-21 00:00 UTC
local DATE = '2025-11-21'

local DNS = {
  ['_dmarc.example.com'] = { 'v=DMARC1; p=reject; rua=mailto:agg@example.com' },
  ['_dmarc.example.org'] = { 'v=DMARC1; p=quarantine; t=y; rua=mailto:agg@example.org' },
  ['_dmarc.example.net'] = { 'v=DMARC1; p=none; rua=mailto:agg@example.net,mailto:x@example.net' },
  ['_dmarc.norua.example'] = { 'v=DMARC1; p=reject' },
  ['example.com'] = {}, ['example.org'] = {}, ['example.net'] = {}, ['norua.example'] = {},
}
local FROMS = { 'a@example.com', 'b@news.example.com', 'c@example.org', 'd@example.net',
                'e@norua.example' }

-- The i-th message: varying From, IP and authentication results.
local function message(i)
  local from = FROMS[i % #FROMS + 1]
  local dom = from:match('@(.*)$')
  local input = {
    from = from,
    spf = { result = (i % 3 == 0) and 'fail' or 'pass', domain = dom, scope = 'mfrom' },
    dkim = { { result = (i % 4 == 0) and 'fail' or 'pass', domain = dom, selector = 's' .. (i % 2) } },
    dns = DNS,
    roll = 0,
  }
  local ctx = { ip = '198.51.100.' .. (i % 7), mail_from = 'bounce@' .. dom, rcpt = { 'u@rcpt.example' } }
  return input, ctx
end

local function rows_of(i)
  local input, ctx = message(i)
  local out, details = assert(dmarc.evaluate(input, { details = true }))
  return assert(report.build_rows(out, input, ctx, nil, { details = details, time = DAY + i }))
end

local function totals(conn, domain)
  local k = report.keys('dmarc:', domain, '20251121')
  local all = conn:command('HGETALL', k.rows) or {}
  local n, sum = 0, 0
  for i = 1, #all, 2 do
    n = n + 1
    sum = sum + tonumber(all[i + 1])
  end
  return sum, n
end

describe('report rows in Redis', function()
  local dir, pid

  local function connect()
    return redis.connect { host = '127.0.0.1', port = PORT, timeout = 0.5 }
  end

  setup(function()
    dir = h.tmpdir()
    pid = h.start_redis(PORT, dir .. '/redis')
  end)

  teardown(function()
    h.stop(pid)
    os.execute('rm -rf ' .. dir)
  end)

  before_each(function()
    local c = assert(connect())
    c:command('FLUSHALL')
    c:close()
  end)

  it('report__many_evaluations_aggregate_to_the_right_counts [AGG-2] [AGG-3]', function()
    local writer = assert(connect())
    local expected = {}
    for i = 1, 500 do
      local rows = rows_of(i)
      for _, r in ipairs(rows) do
        local key = r.policy_domain .. ' ' .. report.encode_row(r)
        expected[key] = (expected[key] or 0) + 1
      end
      assert.equal(#rows, report.write(writer, rows).written)
    end
    writer:close()
    local conn = assert(connect())
    local got = {}
    for _, d in ipairs({ 'example.com', 'example.org', 'example.net', 'norua.example' }) do
      local all = conn:command('HGETALL', report.keys('dmarc:', d, '20251121').rows) or {}
      for i = 1, #all, 2 do got[d .. ' ' .. all[i]] = tonumber(all[i + 1]) end
    end
    assert.same(expected, got)
    -- 4 of 5 From domains publish rua; norua.example gets nothing [RUA-1]
    assert.equal(0, (totals(conn, 'norua.example')))
    assert.equal(400, totals(conn, 'example.com') + totals(conn, 'example.org')
                 + totals(conn, 'example.net'))
    conn:close()
  end)

  it('report__redis_restart_mid_stream_loses_nothing', function()
    -- The writer as `dmarc check --spool` uses it: the rows of a write that fails wait in
    -- the spool, and the next write that reaches Redis sends the spool first. Row ids make
    -- a resent row count once.
    os.execute('mkdir -p ' .. dir .. '/spool')
    local sp = assert(report.spool(dir .. '/spool'))
    local ids = report.id_source()
    local conn
    local function write(n)
      for _ = 1, n do
        local rows = {}
        -- example.com, always the same row
        for k, r in ipairs(rows_of(1)) do rows[k] = report.prepare_row(r, ids()) end
        conn = conn or connect()
        local all, claims = {}, {}
        if conn then all, claims = sp:claim() end
        for _, r in ipairs(rows) do all[#all + 1] = r end
        local res = conn and report.write(conn, all)
        if res and not res.failed then
          assert.equal(0, res.refused)
          sp:finish(claims, true)
        else
          if conn then
            sp:finish(claims, false)
            conn:close()
            conn = nil
          end
          assert(sp:write(rows))
        end
      end
    end
    write(50)
    h.stop(pid)
    assert.is_true(h.wait_closed(PORT))
    write(50)
    assert.is_true(sp:count() > 0)
    pid = h.start_redis(PORT, dir .. '/redis')
    -- Listening is not ready: while it loads the append-only file, Redis refuses commands
    -- (LOADING), and the writer does not send refused rows again.
    local ready = false
    for _ = 1, 100 do
      local c = connect()
      ready = c and c:command('PING') ~= nil
      if c then c:close() end
      if ready then break end
      socket.sleep(0.05)
    end
    assert.is_true(ready)
    write(50)
    assert.equal(0, sp:count())
    if conn then conn:close() end
    conn = assert(connect())
    assert.equal(150, (totals(conn, 'example.com')))
    conn:close()
  end)

  it('report__two_writer_processes_agree', function()
    local script = dir .. '/writer.lua'
    assert(util_files.write(script, [[
package.path = './lua/?.lua;' .. package.path
package.cpath = './build/lua5.4/?.so;' .. package.cpath
local redis = require 'dmarc.redis'
local socket = require 'socket'
local report = require 'dmarc.report.rows'
local conn = assert(redis.connect { host = '127.0.0.1', port = ]] .. PORT .. [[, timeout = 1 })
local rec = { p = 'none', rua = { { uri = 'mailto:agg@example.com' } } }
for i = 1, 400 do
  local v = { result = 'pass', author_domain = 'example.com', policy_domain = 'example.com',
              policy = 'none', dkim_aligned = true, record = rec }
  local rows = report.build_rows(v, {}, { ip = '203.0.113.' .. (i % 10) }, nil, { time = ]] .. DAY .. [[ })
  assert(report.write(conn, rows).written == #rows)
end
]]))
    local status = h.run('cd ' .. h.ROOT .. ' && (lua5.4 ' .. script .. ' & lua5.4 ' .. script
                         .. ' & wait)')
    assert.equal(0, status)
    local conn = assert(connect())
    local sum, n = totals(conn, 'example.com')
    assert.equal(800, sum)
    assert.equal(10, n)
    conn:close()
  end)

  it('failure__rate_limit_shared_through_redis [FAIL-7]', function()
    local failure = require 'dmarc.report.failure'
    local function reporter()
      return failure.new { enabled = true, rate_limit = 3, redis = assert(connect()),
                           reporter = { org_name = 'R', email = 'dmarc@receiver.example',
                                        submitter = 'receiver.example' } }
    end
    local a, b = reporter(), reporter()
    local v = { result = 'fail', author_domain = 'example.com', policy_domain = 'example.com',
                record = { p = 'reject', fo = { '1' }, ruf = { { uri = 'mailto:ruf@example.com' } } } }
    local ctx = { ip = '192.0.2.1', mail_from = 'x@example.com' }
    local sent = 0
    for i = 1, 5 do
      local list = (i % 2 == 0 and a or b):prepare(v, {}, ctx, nil, 'From: x@example.com\r\n\r\n')
      sent = sent + #list
    end
    assert.equal(3, sent)
  end)

  it('report__generate_output_validates_against_both_schemas [AGG-9] [OPEN-8]', function()
    local writer = assert(connect())
    local batch = {}
    for i = 1, 300 do
      for _, r in ipairs(rows_of(i)) do batch[#batch + 1] = r end
      if i % 50 == 0 then
        assert.equal(#batch, report.write(writer, batch).written)
        batch = {}
      end
    end
    writer:close()
    local base = h.BIN .. ' report generate --quiet --redis 127.0.0.1:' .. PORT .. ' --date ' .. DATE
      .. ' --org-name "Example Receiver" --email dmarc@receiver.example --submitter receiver.example'
    for _, format in ipairs({ 'rfc9990', 'rfc7489' }) do
      local out = dir .. '/out-' .. format
      local status = h.run(base .. ' --format ' .. format .. ' --out ' .. out)
      assert.equal(0, status)
      local files = h.ls(out, '%.xml%.gz$')
      assert.equal(3, #files) -- example.com, example.org, example.net
      local total = 0
      for _, f in ipairs(files) do
        assert.truthy(f:match('^receiver%.example![%w%.%-]+!%d+!%d+!%w+%.xml%.gz$'))
        local text = h.gunzip(out .. '/' .. f)
        for n in text:gmatch('<count>(%d+)</count>') do total = total + tonumber(n) end
        local check = out .. '/check.xml'
        local schema = h.SCHEMAS .. '/dmarc-2.0.xsd'
        if format == 'rfc7489' then
          -- Reports in the wild carry no namespace; put it on the root to
          -- validate, as the schemas' README says.
          text = text:gsub('<feedback>', '<dmarc:feedback xmlns:dmarc="' .. xml.NS_7489 .. '">', 1)
                     :gsub('</feedback>', '</dmarc:feedback>', 1)
          schema = h.schema_7489(dir)
        end
        assert(util_files.write(check, text))
        assert.is_true(h.xmllint(schema, check), f)
      end
      assert.equal(300 - 60, total) -- every message of a domain with rua
      -- one message per rua destination: 1 + 1 + 2
      assert.equal(4, #h.ls(out, '%.eml$'))
    end
  end)
end)
