-- Round trip: rows collected by the reporting side (dmarc.report.rows, as the
-- scanner writes them), reports written by `dmarc report generate` in both
-- formats, then `dmarc report ingest` of the .xml.gz files and of the report
-- e-mails: the summary gives back the same counts, per policy domain, per
-- source and for DMARC pass. Real redis-server ($DMARC_TEST_REDIS).
local h = dofile('tests/integration/report_helpers.lua')
local redis = require 'dmarc.redis'
local dmarc = require 'dmarc'
local report = require 'dmarc.report.rows'
local cjson = require 'cjson'

local REDIS = os.getenv('DMARC_TEST_REDIS') or '127.0.0.1:16379'
local HOST, PORT = REDIS:match('^(.+):(%d+)$')
local DAY = 1763683200 -- 2025-11-21 00:00 UTC
local DATE = '2025-11-21'

local DNS = {
  ['_dmarc.example.com'] = { 'v=DMARC1; p=none; rua=mailto:agg@example.com' },
  ['_dmarc.example.org'] = { 'v=DMARC1; p=quarantine; rua=mailto:agg@example.org' },
  ['example.com'] = {}, ['example.org'] = {}, ['esp.example'] = {},
}

-- The i-th message: aligned senders, an ESP with its own domains, spoofers.
local function message(i)
  local dom = (i % 3 == 0) and 'example.org' or 'example.com'
  local kind = i % 5
  local spf_dom, dkim = dom, { { result = 'pass', domain = dom, selector = 's1' } }
  local spf_res = 'pass'
  if kind == 1 then -- ESP: passes for its own domains only
    spf_dom = 'bounce.esp.example'
    dkim = { { result = 'pass', domain = 'esp.example', selector = 'e' } }
  elseif kind == 2 then -- spoofer
    spf_res = 'fail'
    dkim = {}
  elseif kind == 3 then -- forwarded: SPF fails at the forwarder, DKIM survives
    spf_dom, spf_res = 'forwarder.example', 'fail'
  end
  local input = {
    from = 'user' .. i .. '@' .. dom,
    spf = { result = spf_res, domain = spf_dom, scope = 'mfrom' },
    dkim = dkim, dns = DNS, roll = 0,
  }
  local ctx = { ip = (kind == 2) and ('203.0.113.' .. (i % 4)) or ('192.0.2.' .. kind),
                mail_from = 'bounce@' .. spf_dom, rcpt = { 'u@rcpt.example' } }
  return input, ctx
end

local function connect()
  return assert(redis.connect { host = HOST, port = tonumber(PORT), timeout = 5 })
end

local function run(args)
  local status, out = h.run(h.BIN .. ' ' .. args .. ' --redis ' .. REDIS .. ' 2>/dev/null')
  return status, out
end

describe('generate then ingest', function()
  local gen_prefix = 'it:rtgen' .. os.time() % 100000 .. ':'
  local expect = {} -- policy domain → {messages, pass, by_ip}

  setup(function()
    local conn = connect()
    for i = 1, 600 do
      local input, ctx = message(i)
      local out, details = assert(dmarc.evaluate(input, { details = true }))
      local rows = assert(report.build_rows(out, input, ctx, nil,
                                            { details = details, time = DAY + i }))
      for _, row in ipairs(rows) do
        local cmds = assert(report.commands(row, { prefix = gen_prefix }))
        assert(conn:pipeline(cmds))
        local e = expect[row.policy_domain] or { messages = 0, pass = 0, by_ip = {} }
        expect[row.policy_domain] = e
        e.messages = e.messages + 1
        if row.dkim == 'pass' or row.spf == 'pass' then e.pass = e.pass + 1 end
        e.by_ip[row.source_ip] = (e.by_ip[row.source_ip] or 0) + 1
      end
    end
    conn:close()
    assert.equal(600, expect['example.com'].messages + expect['example.org'].messages)
  end)

  for _, format in ipairs({ 'rfc9990', 'rfc7489' }) do
    for _, kind in ipairs({ 'xml.gz', 'eml' }) do
      it('roundtrip__' .. format .. '_' .. kind .. '_gives_the_same_counts', function()
        local out = h.tmpdir()
        local status = run('report generate --quiet --force --redis-prefix ' .. gen_prefix .. ' --date '
                           .. DATE .. ' --format ' .. format .. ' --out ' .. out
                           .. ' --org-name "Round Trip Receiver" --email dmarc@receiver.example'
                           .. ' --submitter receiver.example')
        assert.equal(0, status)
        local files = h.ls(out, kind == 'eml' and '%.eml$' or '%.xml%.gz$')
        assert.equal(2, #files)
        local paths = {}
        for i, f in ipairs(files) do paths[i] = "'" .. out .. '/' .. f .. "'" end
        local ing_prefix = 'it:rting' .. format .. kind:gsub('%.', '') .. os.time() % 100000 .. ':'
        local ist, iout = run('report ingest --quiet --json --redis-prefix ' .. ing_prefix .. ' '
                              .. table.concat(paths, ' '))
        assert.equal(0, ist)
        assert.equal(2, cjson.decode(iout).stored)
        for dom, e in pairs(expect) do
          local sst, sout = run('report summary --json --top 100 --redis-prefix ' .. ing_prefix
                                .. ' --domain ' .. dom .. ' --until ' .. DATE .. ' --days 1')
          assert.equal(0, sst)
          local s = cjson.decode(sout)
          assert.equal(e.messages, s.messages)
          assert.equal(e.pass, s.dmarc_pass)
          assert.equal(1, s.reports)
          assert.equal('Round Trip Receiver', s.reporters[1].org_name)
          local by_ip = {}
          for _, src in ipairs(s.sources) do
            -- RFC 7489 reports carry IPv6 in full form; these are IPv4.
            by_ip[src.ip] = src.messages
          end
          assert.same(e.by_ip, by_ip)
          assert.truthy(s.classes.unaligned > 0)
          assert.truthy(s.classes.spoof > 0)
          assert.truthy(s.classes.forwarded > 0)
        end
      end)
    end
  end
end)
