-- dmarc.summary over reports stored by dmarc.ingest (in-memory server): the
-- totals count every message past the daily row cap (the cap limits what is
-- itemised, and says so), advice follows from what the report says, shares
-- are never rounded up to 100 %, the sources table pages, and a DKIM result
-- without a domain is named as such.
local ingest = require 'dmarc.owner.ingest'
local summary = require 'dmarc.owner.summary'
local fake_redis = require 'ingest_fake_redis'

local UNTIL = 1763769600 -- 2025-11-22
local BEGIN = 1763683200 -- 2025-11-21

-- A normalised report of `org` with n records from distinct sources (the
-- first is 10.0.0.`first`), each `count` messages, aligned passes except
-- every `bad`-th, a spoof.
local function report(org, rid, n, count, first, bad)
  local rep = { format = 'rfc7489', org_name = org, email = '', report_id = rid,
                begin = BEGIN, ['end'] = BEGIN + 86399, domain = 'example.org', errors = {},
                policy = { p = 'none' }, records = {}, bad_records = 0, warnings = {} }
  for i = 1, n do
    local k = first + i - 1
    local spoof = bad and i % bad == 0
    rep.records[i] = {
      source_ip = string.format('10.0.%d.%d', math.floor(k / 256), k % 256),
      count = count, disposition = spoof and 'reject' or 'none', header_from = 'example.org',
      envelope_from = '', dkim = spoof and 'fail' or 'pass', spf = spoof and 'fail' or 'pass',
      reasons = {}, dkim_results = {}, spf_results = {},
    }
  end
  return rep
end

local function load(conn)
  return assert(summary.load(conn, { domain = 'example.org', days = 7, ['until'] = UNTIL }))
end

local function reporter(s, org)
  for _, r in ipairs(s.reporters) do
    if r.org_name == org then return r end
  end
end

describe('summary: totals past the daily row cap', function()
  it('counts every message of every reporter; the cap limits itemisation only', function()
    local conn = fake_redis()
    local opts = { max_rows = 10 }
    -- 10 rows a day: A's first report fills 8, its second brings 5 more (3 over the cap,
    -- one of them a spoof), then B's report of 4 rows is wholly over the cap.
    assert.equal('stored', (ingest.store(conn, report('A', 'a1', 8, 10, 1), opts)))
    assert.equal('stored', (ingest.store(conn, report('A', 'a2', 5, 1000, 101, 5), opts)))
    assert.equal('stored', (ingest.store(conn, report('B', 'b1', 4, 7, 201), opts)))
    local data = load(conn)
    assert.equal(10, #data.rows)
    assert.is_true(data.dropped_messages > 0)
    local s = summary.compute(data)
    assert.equal(80 + 5000 + 28, s.messages)
    assert.equal(80 + 4000 + 28, s.dmarc_pass)
    assert.equal(1000, s.classes.spoof)
    assert.equal(3 * 1000 + 28, s.not_itemised.messages)
    assert.equal(5080, reporter(s, 'A').messages)
    assert.equal(28, reporter(s, 'B').messages)
    assert.equal(28, reporter(s, 'B').pass)
    assert.equal(2, reporter(s, 'A').reports)
    local day = s.daily[#s.daily - 1]
    assert.equal('20251121', day.day)
    assert.equal(5108, day.messages)
    -- the itemised sources are the 10 stored rows
    assert.equal(10, s.source_count)
    assert.truthy(summary.text(s):find('not itemised by source', 1, true))
  end)

  it('stays exact at 200,001 messages over two reporters', function()
    local conn = fake_redis()
    local opts = { max_rows = 2 }
    assert.equal('stored', (ingest.store(conn, report('A', 'a1', 2, 100000, 1), opts)))
    assert.equal('stored', (ingest.store(conn, report('B', 'b1', 1, 1, 50), opts)))
    local s = summary.compute(load(conn))
    assert.equal(200001, s.messages)
    assert.equal(1, reporter(s, 'B').messages)
    assert.equal('100.0%', summary.percent(s.pass_rate))
  end)
end)

describe('summary: wording', function()
  it('never rounds a share up to 100 %', function()
    assert.equal('99.9%', summary.percent(84889 / 84890))
    assert.equal('100.0%', summary.percent(1))
    assert.equal('12.3%', summary.percent(0.123))
    assert.equal('0.0%', summary.percent(0.0004))
    assert.equal('0.0%', summary.percent(0))
  end)

  it('names a DKIM result without a domain instead of ": none"', function()
    assert.equal('(no signature)', summary.result_label({ domain = '', result = 'none' }, 'dkim'))
    assert.equal('(no domain) fail', summary.result_label({ domain = '', result = 'fail' }, 'dkim'))
    assert.equal('example.org pass', summary.result_label({ domain = 'example.org', result = 'pass' }))
  end)

  it('pages the sources table', function()
    local conn = fake_redis()
    assert.equal('stored', (ingest.store(conn, report('A', 'a1', 45, 1, 1))))
    local data = load(conn)
    local s = summary.compute(data, { top = 20, offset = 40 })
    assert.equal(45, s.source_count)
    assert.equal(5, #s.sources)
    assert.equal(40, s.source_offset)
    assert.truthy(summary.text(s):find('sources 41 to 45 of 45', 1, true))
  end)
end)

describe('summary: advice follows from what the report says', function()
  local function advice_for(pe_dkim, pe_spf, dkim_domain, spf_domain)
    local rec = {
      org_name = 'AOL', source_ip = '192.0.2.30', header_from = 'example.org', envelope_from = '',
      disposition = 'none', dkim = pe_dkim, spf = pe_spf, reasons = {},
      dkim_results = { { domain = dkim_domain, selector = 's', result = 'pass' } },
      spf_results = { { domain = spf_domain, scope = 'mfrom', result = 'pass' } },
      count = 500, day = '20251121',
    }
    local data = { domain = 'example.org', days = summary.day_list(UNTIL, 7), rows = { rec },
                   reports = {}, dropped_messages = 0 }
    local s = summary.compute(data)
    local out = {}
    for _, h in ipairs(s.readiness.fix_first[1].hints) do
      out[#out + 1] = summary.hint_text(h, 'example.org')
    end
    return table.concat(out, '\n'), s.readiness.fix_first[1].hints
  end

  it('says it cannot tell when the reporter left out the evaluated results', function()
    local text, hints = advice_for('unknown', 'unknown', 'example.org', 'example.org')
    assert.equal('spf_not_evaluated', hints[1].code)
    assert.equal('dkim_not_evaluated', hints[2].code)
    assert.is_nil(text:find('strict', 1, true))
    assert.truthy(text:find('cannot be told', 1, true))
  end)

  it('does not blame strict alignment for a pass of the From domain itself', function()
    local text, hints = advice_for('fail', 'fail', 'example.org', 'example.org')
    assert.equal('spf_exact', hints[1].code)
    assert.is_nil(text:find('strict', 1, true))
  end)

  it('still names strict alignment for a related domain', function()
    local _, hints = advice_for('fail', 'fail', 'mail.example.org', 'bounce.example.org')
    assert.equal('spf_strict', hints[1].code)
    assert.equal('dkim_strict', hints[2].code)
  end)
end)

describe('dashboard: every source reachable, totals whole', function()
  local dashboard = require 'dmarc.owner.dashboard'

  local function serve(conn, target)
    return dashboard.handle({ method = 'GET', target = target }, { source = {
      domains = function() return {}, false end,
      load = function(dom, days, until_time)
        return summary.load(conn, { domain = dom, days = days, ['until'] = until_time })
      end,
    } })
  end

  it('pages the sources table past 20 and links every page', function()
    local conn = fake_redis()
    assert.equal('stored', (ingest.store(conn, report('A', 'a1', 45, 1, 1))))
    local res = serve(conn, '/domain?d=example.org&until=2025-11-22&days=7')
    assert.equal(200, res.status)
    assert.truthy(res.body:find('Sources 1 to 20 of 45 (page 1 of 3)', 1, true))
    assert.truthy(res.body:find('page=3#sources">last<', 1, true))
    local seen = 0
    for page = 1, 3 do
      res = serve(conn, '/domain?d=example.org&until=2025-11-22&days=7&page=' .. page)
      local body = res.body:match('<table id="sources">(.-)</table>')
      for _ in body:gmatch('data%-ip=') do seen = seen + 1 end
    end
    assert.equal(45, seen)
    assert.equal(400, serve(conn, '/domain?d=example.org&page=0').status)
    assert.equal(400, serve(conn, '/domain?d=example.org&page=x').status)
  end)

  it('shows totals past the row cap and says what was not itemised', function()
    local conn = fake_redis()
    assert.equal('stored', (ingest.store(conn, report('A', 'a1', 3, 10, 1), { max_rows = 2 })))
    local res = serve(conn, '/domain?d=example.org&until=2025-11-22&days=7')
    assert.truthy(res.body:find('id="total-messages">30<', 1, true))
    assert.truthy(res.body:find('id="not-itemised"', 1, true))
  end)
end)
