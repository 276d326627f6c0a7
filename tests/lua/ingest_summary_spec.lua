-- dmarc.owner.summary: classes of records (aligned pass, forwarding, unaligned
-- pass, broken forwarding, spoofing), the numbers of a summary, the
-- readiness verdict and its thresholds, the drill-down, and the text and
-- JSON outputs (escaped, valid, deterministic). The data is built from the
-- report fixtures the same way `load` builds it from Redis.
local ingest = require 'dmarc.owner.ingest'
local summary = require 'dmarc.owner.summary'

local DIR = 'tests/fixtures/reports/'
local UNTIL = 1763769600 -- 2025-11-22

local function report_of(name)
  local f = assert(io.open(DIR .. name, 'rb'))
  local data = f:read('*a')
  f:close()
  local docs = assert(ingest.extract(data))
  local tree, info = assert(ingest.parse(docs[1]))
  return assert(ingest.normalize(tree, info))
end

-- The data `summary.load` would return after ingesting these reports.
local function data_of(names, days)
  local data = { domain = 'example.com', days = summary.day_list(UNTIL, days or 7), rows = {},
                 reports = {}, dropped_messages = 0 }
  for _, name in ipairs(names) do
    local rep = report_of(name)
    local day = ingest.report_day(rep)
    local order, counts = ingest.fields_of(rep)
    for _, f in ipairs(order) do
      local rec = assert(ingest.decode_record(f))
      rec.count = counts[f]
      rec.day = day
      data.rows[#data.rows + 1] = rec
    end
    data.reports[#data.reports + 1] = {
      org_name = rep.org_name, report_id = rep.report_id, day = day,
      info = { begin = rep.begin, p = rep.policy.p, pct = rep.policy.pct,
               testing = rep.policy.testing },
    }
  end
  return data
end

-- A synthetic data set: `per_day` messages a day for `ndays` days, of which
-- `bad` a day are unaligned passes from one ESP address.
local function synthetic(ndays, per_day, bad, p)
  local data = { domain = 'example.com', days = summary.day_list(UNTIL, ndays), rows = {},
                 reports = {}, dropped_messages = 0 }
  for _, day in ipairs(data.days) do
    data.rows[#data.rows + 1] = {
      org_name = 'R', source_ip = '192.0.2.1', header_from = 'example.com',
      envelope_from = 'example.com', disposition = 'none', dkim = 'pass', spf = 'pass',
      reasons = {}, dkim_results = { { domain = 'example.com', selector = 's', result = 'pass' } },
      spf_results = { { domain = 'example.com', scope = 'mfrom', result = 'pass' } },
      count = per_day - bad, day = day,
    }
    if bad > 0 then
      data.rows[#data.rows + 1] = {
        org_name = 'R', source_ip = '203.0.113.9', header_from = 'example.com',
        envelope_from = 'bounce.esp.example', disposition = 'none', dkim = 'fail', spf = 'fail',
        reasons = {}, dkim_results = {},
        spf_results = { { domain = 'bounce.esp.example', scope = 'mfrom', result = 'pass' } },
        count = bad, day = day,
      }
    end
    data.reports[#data.reports + 1] = { org_name = 'R', report_id = day, day = day,
                                        info = { begin = 0, p = p or 'none' } }
  end
  return data
end

describe('summary: classes', function()
  local rep = report_of('rfc9990.xml')
  local function class_of(i) return summary.classify(rep.records[i], 'example.com') end

  it('aligned SPF and DKIM: pass', function() assert.equal('pass', class_of(1)) end)
  it('DKIM aligned, SPF failed at a forwarder: the forwarding signature', function()
    assert.equal('forwarded', class_of(2))
  end)
  it('SPF and DKIM pass for an ESP domain, not aligned: unaligned', function()
    local cls, un = class_of(3)
    assert.equal('unaligned', cls)
    assert.same({ 'bounce.esp-mail.example' }, un.spf)
    assert.same({ 'esp-mail.example' }, un.dkim)
  end)
  it('nothing of ours passes or breaks: spoof', function() assert.equal('spoof', class_of(4)) end)
  it('our DKIM signature broke in transit: forwarded_broken', function()
    assert.equal('forwarded_broken', class_of(5))
  end)
  it('a forwarding reason without any pass: forwarded_broken', function()
    local rec = { dkim = 'fail', spf = 'fail', dkim_results = {}, spf_results = {},
                  reasons = { { type = 'mailing_list' } }, header_from = 'example.com' }
    assert.equal('forwarded_broken', summary.classify(rec, 'example.com'))
  end)
end)

describe('summary: numbers', function()
  local s = summary.compute(data_of({ 'rfc9990.xml', 'rfc7489.xml' }))

  it('counts volume, pass rate, aligned and unaligned passes', function()
    assert.equal(235, s.messages)
    assert.equal(2, s.reports)
    assert.equal(100 + 40 + 50, s.dmarc_pass)
    assert.near(190 / 235, s.pass_rate, 1e-9)
    assert.equal(150, s.aligned.spf)
    assert.equal(190, s.aligned.dkim)
    assert.equal(150, s.aligned.both)
    assert.equal(30, s.unaligned_pass.spf) -- 25 (report A) + 5 (report B)
    assert.equal(25, s.unaligned_pass.dkim)
    assert.same({ pass = 150, forwarded = 40, unaligned = 30, forwarded_broken = 5, spoof = 10 },
                s.classes)
  end)

  it('lists sources by volume, with their results and reporters', function()
    assert.equal(5, s.source_count)
    assert.equal('192.0.2.1', s.sources[1].ip)
    assert.equal(150, s.sources[1].messages)
    assert.equal('203.0.113.5', s.sources[3].ip)
    assert.equal('unaligned', s.sources[3].class)
    assert.equal(2, #s.sources[3].reporters)
    assert.equal('bounce.esp-mail.example pass', s.sources[3].spf[1].value)
  end)

  it('separates forwarding and likely spoofing', function()
    assert.equal(45, s.forwarding.messages)
    assert.equal('198.51.100.7', s.forwarding.sources[1].ip)
    assert.equal(10, s.spoofing.messages)
    assert.equal('192.0.2.200', s.spoofing.sources[1].ip)
  end)

  it('counts per reporter and per day', function()
    assert.equal('Receiver A', s.reporters[1].org_name)
    assert.equal(180, s.reporters[1].messages)
    assert.equal(1, s.reporters[1].reports)
    local by_day = {}
    for _, d in ipairs(s.daily) do by_day[d.day] = d end
    assert.equal(180, by_day['20251121'].messages)
    assert.equal(140, by_day['20251121'].dmarc_pass)
    assert.equal(55, by_day['20251122'].messages)
    assert.equal(0, by_day['20251120'].messages)
    assert.equal(7, #s.daily)
  end)

  it('takes the policy of the latest report', function()
    assert.equal('none', s.policy.p)
    assert.equal('Receiver B', s.policy.reported_by)
  end)

  it('ranks the sources to fix first with hints', function()
    local r = s.readiness
    assert.equal('none', r.current)
    assert.equal('quarantine', r.next)
    assert.equal(35, r.at_risk)
    assert.equal(225, r.legitimate)
    assert.equal('203.0.113.5', r.fix_first[1].ip)
    assert.equal(30, r.fix_first[1].at_risk)
    local hints = {}
    for _, h in ipairs(r.fix_first[1].hints) do hints[h.code .. ' ' .. h.domain] = true end
    assert.is_true(hints['spf_unaligned bounce.esp-mail.example'])
    assert.is_true(hints['spf_unaligned mta.esp-mail.example'])
    assert.is_true(hints['dkim_unaligned esp-mail.example'])
    assert.equal('dkim_broken', r.fix_first[2].hints[1].code)
    -- two days of data in a week: too little for a verdict
    assert.equal('insufficient_data', r.verdict)
  end)
end)

describe('summary: readiness verdict', function()
  it('ready when at most 0.5 % of legitimate mail would be hit', function()
    local s = summary.compute(synthetic(14, 1000, 5))
    assert.equal('ready', s.readiness.verdict)
    assert.near(0.005, s.readiness.share, 1e-12)
  end)

  it('nearly ready up to 2 %, not ready above', function()
    assert.equal('nearly_ready', summary.compute(synthetic(14, 1000, 20)).readiness.verdict)
    assert.equal('not_ready', summary.compute(synthetic(14, 1000, 21)).readiness.verdict)
  end)

  it('needs enough messages and days', function()
    assert.equal('insufficient_data', summary.compute(synthetic(14, 5, 0)).readiness.verdict)
    assert.equal('ready', summary.compute(synthetic(7, 100, 0)).readiness.verdict)
    local data = synthetic(14, 1000, 0)
    for i = #data.rows, 7, -1 do table.remove(data.rows, i) end -- 6 days of data
    assert.equal('insufficient_data', summary.compute(data).readiness.verdict)
  end)

  it('proposes reject after quarantine, and says when reject is reached', function()
    local s = summary.compute(synthetic(14, 1000, 0, 'quarantine'))
    assert.equal('reject', s.readiness.next)
    assert.equal('ready', s.readiness.verdict)
    s = summary.compute(synthetic(14, 1000, 0, 'reject'))
    assert.is_nil(s.readiness.next)
    assert.equal('enforced', s.readiness.verdict)
  end)
end)

describe('summary: drill-down and outputs', function()
  it('keeps the records of one source', function()
    local s = summary.compute(data_of({ 'rfc9990.xml', 'rfc7489.xml' }), { source = '203.0.113.5' })
    assert.equal(2, #s.drill.rows)
    assert.equal(25, s.drill.rows[1].count)
    assert.equal('unaligned', s.drill.rows[1].class)
    assert.equal(30, s.drill.source.messages)
  end)

  it('escapes everything a report carried in the text output', function()
    local s = summary.compute(data_of({ 'hostile.xml' }))
    local text = summary.text(s)
    assert.falsy(text:find('[%z\1-\9\11-\31\127-\255]'))
    assert.equal('a\\x1B[31m\\x0A', summary.shown('a\27[31m\n'))
  end)

  it('writes deterministic JSON with empty arrays as arrays', function()
    local cjson = require 'cjson'
    local s = summary.compute(synthetic(3, 10, 0))
    local text = summary.json(s)
    assert.equal(text, summary.json(summary.compute(synthetic(3, 10, 0))))
    local back = cjson.decode(text)
    assert.equal(30, back.messages)
    assert.truthy(text:find('"fix_first":[]', 1, true))
    -- Line breaks escaped, UTF-8 kept, other controls and bytes that are not
    -- UTF-8 replaced.
    assert.equal('"a?\\n\195\169?"', summary.json('a\27\n\195\169\255'))
  end)
end)
