-- Ingest benchmark (run by tests/bench/ingest_bench.sh, which starts its own
-- redis-server):
--   ingest   REPORTS reports of RECORDS records each (RFC 9990 XML, built in
--            memory, varied sources and results) through the whole path:
--            libxml2 parse, normalisation, one store script per report;
--            records/s and reports/s; then the same for gzip'd reports through
--            `dmarc report ingest` on files (GZ_REPORTS of them)
--   summary  DOMAINS policy domains with DAYS days of reports each (stored
--            directly, 20 records a report), then `summary.load` +
--            `summary.compute` over DAYS days for SAMPLES domains: latency
--            min / median / p95 / max
--
--   write-large / large  one report of RECORDS records written to FILE, then
--            ingested from it by a fresh process: records/s beside that
--            process's peak RSS (the largest report the defaults allow, and
--            1,000,000 records under raised limits); FILE is the report in
--            any form (gzip'd, zipped, in an e-mail, an mbox; '-': stdin)
--
-- usage: lua5.4 tests/bench/ingest_bench.lua PORT ingest [REPORTS] [RECORDS] [GZ_REPORTS]
--        lua5.4 tests/bench/ingest_bench.lua PORT write-large RECORDS FILE
--        lua5.4 tests/bench/ingest_bench.lua PORT large FILE RECORDS XML_BYTES FORM
--        lua5.4 tests/bench/ingest_bench.lua PORT summary [DOMAINS] [DAYS] [SAMPLES]
package.path = './lua/?.lua;' .. package.path
package.cpath = './build/' .. (type(jit) == 'table' and 'luajit' or 'lua5.4') .. '/?.so;'
  .. package.cpath

local socket = require 'socket'
local redis = require 'dmarc.redis'
local ingest = require 'dmarc.owner.ingest'
local summary = require 'dmarc.owner.summary'
local text = require 'dmarc.util.text'

local PORT = tonumber(arg[1]) or 16399
local PHASE = arg[2] or 'ingest'
local DAY = 1763683200 -- 2025-11-21

local conn = assert(redis.connect { host = '127.0.0.1', port = PORT, timeout = 60 })

local function rss_peak_mb()
  local f = io.open('/proc/self/status')
  if not f then return 0 end
  local s = f:read('*a')
  f:close()
  return (tonumber(s:match('VmHWM:%s*(%d+)')) or 0) / 1024
end

local HEAD = [[<?xml version="1.0" encoding="UTF-8"?>
<feedback xmlns="urn:ietf:params:xml:ns:dmarc-2.0">
  <version>1.0</version>
  <report_metadata>
    <org_name>Bench Receiver %d</org_name>
    <email>dmarc@bench%d.example</email>
    <report_id>bench-%d</report_id>
    <date_range><begin>%d</begin><end>%d</end></date_range>
  </report_metadata>
  <policy_published>
    <domain>%s</domain><p>none</p><sp>none</sp><adkim>r</adkim><aspf>r</aspf><testing>n</testing>
  </policy_published>
]]

local RECORD = [[  <record>
    <row>
      <source_ip>%s</source_ip>
      <count>%d</count>
      <policy_evaluated><disposition>none</disposition><dkim>%s</dkim><spf>%s</spf></policy_evaluated>
    </row>
    <identifiers><header_from>%s</header_from><envelope_from>%s</envelope_from></identifiers>
    <auth_results>
      <dkim><domain>%s</domain><selector>s%d</selector><result>%s</result></dkim>
      <spf><domain>%s</domain><scope>mfrom</scope><result>%s</result></spf>
    </auth_results>
  </record>
]]

-- Report n: domain n % 1000, records with rotating sources and classes.
local function report_xml_of(n, records)
  local dom = string.format('d%d.example', n % 1000)
  local day = DAY - (n % 30) * 86400
  local parts = { string.format(HEAD, n % 50, n % 50, n, day, day + 86399, dom) }
  for i = 1, records do
    local k = (n * 7 + i) % 4
    local ip = string.format('10.%d.%d.%d', n % 200, i, k)
    if k == 0 then
      parts[#parts + 1] = string.format(RECORD, ip, 1 + i % 9, 'pass', 'pass', dom, dom, dom, 1,
                                        'pass', dom, 'pass')
    elseif k == 1 then
      parts[#parts + 1] = string.format(RECORD, ip, 1 + i % 5, 'fail', 'fail', dom,
                                        'bounce.esp.example', 'esp.example', 2, 'pass',
                                        'bounce.esp.example', 'pass')
    elseif k == 2 then
      parts[#parts + 1] = string.format(RECORD, ip, 1 + i % 3, 'pass', 'fail', dom,
                                        'fwd.example', dom, 1, 'pass', 'fwd.example', 'fail')
    else
      parts[#parts + 1] = string.format(RECORD, ip, 1, 'fail', 'fail', dom, 'spam.example',
                                        'spam.example', 3, 'fail', dom, 'fail')
    end
  end
  parts[#parts + 1] = '</feedback>\n'
  return table.concat(parts)
end

local function phase_ingest()
  local reports = tonumber(arg[3]) or 10000
  local records = tonumber(arg[4]) or 100
  local gz_reports = tonumber(arg[5]) or 1000
  conn:command('FLUSHALL')
  local total_records, bytes, gen_time = 0, 0, 0
  local t0 = socket.gettime()
  for n = 1, reports do
    local g0 = socket.gettime()
    local doc = report_xml_of(n, records)
    gen_time = gen_time + socket.gettime() - g0
    bytes = bytes + #doc
    local res = ingest.ingest_data(conn, doc)
    if res[1].status ~= 'stored' then
      error('report ' .. n .. ': ' .. tostring(res[1].status) .. ' ' .. tostring(res[1].message))
    end
    total_records = total_records + res[1].records
  end
  local dt = socket.gettime() - t0 - gen_time
  io.write(string.format('ingest %-40s %10.0f records/s %8.0f reports/s  (%d reports x %d records, '
                         .. '%.1f MB XML, %.2f s, peak RSS %.0f MB)\n', 'XML in memory (parse+store)',
                         total_records / dt, reports / dt, reports, records, bytes / 1e6, dt,
                         rss_peak_mb()))
  -- Re-ingesting the same reports: every one a duplicate.
  t0 = socket.gettime()
  gen_time = 0
  for n = 1, math.min(reports, 1000) do
    local g0 = socket.gettime()
    local doc = report_xml_of(n, records)
    gen_time = gen_time + socket.gettime() - g0
    assert(ingest.ingest_data(conn, doc)[1].status == 'duplicate')
  end
  dt = socket.gettime() - t0 - gen_time
  io.write(string.format('ingest %-40s %10.0f records/s %8.0f reports/s  (%d reports)\n',
                         'duplicates (parsed, nothing stored)', math.min(reports, 1000) * records / dt,
                         math.min(reports, 1000) / dt, math.min(reports, 1000)))

  -- The command line on .xml.gz files (process start, file reads, inflate).
  if gz_reports > 0 then
    conn:command('FLUSHALL')
    local dir = os.tmpname()
    os.remove(dir)
    os.execute('mkdir -p ' .. dir)
    for n = 1, gz_reports do
      local f = assert(io.open(string.format('%s/r%05d.xml', dir, n), 'wb'))
      f:write(report_xml_of(n, records))
      f:close()
    end
    assert(os.execute('cd ' .. dir .. ' && gzip -n -6 *.xml'))
    t0 = socket.gettime()
    local p = io.popen('./bin/dmarc report ingest --quiet --json --redis 127.0.0.1:' .. PORT
                       .. ' ' .. text.shell_quote(dir))
    local out = p:read('*a')
    p:close()
    dt = socket.gettime() - t0
    -- Decoded, not matched: failure_reports has a "stored" key of its own.
    local stats = require('cjson.safe').decode(out) or {}
    local stored = tonumber(stats.stored) or 0
    local recs = tonumber(stats.records) or 0
    io.write(string.format('ingest %-40s %10.0f records/s %8.0f reports/s  (%d of %d stored, '
                           .. '%.2f s)\n', 'dmarc report ingest on .xml.gz files', recs / dt,
                           stored / dt, stored, gz_reports, dt))
    os.execute('rm -rf ' .. text.shell_quote(dir))
  end
end

local function phase_summary()
  local domains = tonumber(arg[3]) or 1000
  local days = tonumber(arg[4]) or 30
  local samples = tonumber(arg[5]) or 100
  conn:command('FLUSHALL')
  local t0 = socket.gettime()
  local stored = 0
  for d = 1, domains do
    local dom = string.format('d%d.example', d)
    for k = 1, days do
      local begin = DAY - (k - 1) * 86400
      local rep = { org_name = 'Bench Receiver ' .. (k % 5), report_id = dom .. '-' .. k,
                    begin = begin, ['end'] = begin + 86399, domain = dom, format = 'rfc9990',
                    email = '', policy = { p = 'none' }, errors = {}, bad_records = 0,
                    records = {} }
      for i = 1, 20 do
        local pass = i % 4 ~= 1
        rep.records[i] = {
          source_ip = string.format('10.%d.%d.%d', d % 250, k, i), count = 1 + i % 7,
          disposition = 'none', dkim = pass and 'pass' or 'fail', spf = pass and 'pass' or 'fail',
          header_from = dom, envelope_from = pass and dom or 'esp.example', reasons = {},
          dkim_results = { { domain = pass and dom or 'esp.example', selector = 's',
                             result = 'pass' } },
          spf_results = { { domain = pass and dom or 'esp.example', scope = 'mfrom',
                            result = 'pass' } },
        }
      end
      assert(ingest.store(conn, rep) == 'stored')
      stored = stored + 1
    end
  end
  local fill = socket.gettime() - t0
  local info = conn:command('INFO', 'memory') or ''
  io.write(string.format('summary %-39s %d domains x %d days = %d reports, %d records (%.1f s, '
                         .. 'Redis used %s)\n', 'data set', domains, days, stored, stored * 20, fill,
                         info:match('used_memory_human:(%S+)') or '?'))
  local times = {}
  local until_time = DAY + 86399
  for s = 1, samples do
    local dom = string.format('d%d.example', (s * 7919) % domains + 1)
    local s0 = socket.gettime()
    local data = assert(summary.load(conn, { domain = dom, days = days, ['until'] = until_time }))
    local sum = summary.compute(data)
    times[#times + 1] = socket.gettime() - s0
    assert(sum.reports == days, dom .. ': ' .. sum.reports .. ' reports')
  end
  table.sort(times)
  local function ms(x) return x * 1000 end
  io.write(string.format('summary %-39s min %.1f ms, median %.1f ms, p95 %.1f ms, max %.1f ms '
                         .. '(%d domains sampled)\n', string.format('load+compute over %d days', days),
                         ms(times[1]), ms(times[math.ceil(#times / 2)]),
                         ms(times[math.max(1, math.ceil(#times * 0.95))]), ms(times[#times]), samples))
  local c0 = socket.gettime()
  local p = io.popen('./bin/dmarc report summary --json --redis 127.0.0.1:' .. PORT
                     .. ' --domain d1.example --days ' .. days .. ' --until 2025-11-21 >/dev/null')
  p:close()
  io.write(string.format('summary %-39s %.1f ms (process start included)\n',
                         'dmarc report summary (one domain)', ms(socket.gettime() - c0)))
end

-- One report of RECORDS records (distinct sources) written to FILE a record
-- at a time, so the writer holds none of it.
local function phase_write_large()
  local records, file = tonumber(arg[3]), arg[4]
  local f = assert(io.open(file, 'wb'))
  f:write(string.format(HEAD, 1, 1, 1000000 + records, DAY, DAY + 86399, 'large.example'))
  -- Compact (no indentation): 200,000 of these fit the default 64 MiB.
  local rec = '<record><row><source_ip>%s</source_ip><count>%d</count><policy_evaluated>'
    .. '<disposition>none</disposition><dkim>pass</dkim><spf>pass</spf></policy_evaluated></row>'
    .. '<identifiers><header_from>large.example</header_from></identifiers><auth_results><dkim>'
    .. '<domain>large.example</domain><selector>s1</selector><result>pass</result></dkim><spf>'
    .. '<domain>large.example</domain><result>pass</result></spf></auth_results></record>\n'
  -- Within the default limits: as many records as fit max_xml (at most RECORDS).
  local budget = records <= ingest.limits.max_records and ingest.limits.max_xml - 64 or math.huge
  local size = f:seek('cur')
  for i = 1, records do
    local ip = string.format('10.%d.%d.%d', math.floor(i / 65536) % 256, math.floor(i / 256) % 256,
                             i % 256)
    local r = string.format(rec, ip, 1 + i % 9)
    if size + #r > budget then break end
    size = size + #r
    f:write(r)
  end
  f:write('</feedback>\n')
  f:close()
end

-- Ingest FILE (one large report, in any form; '-': standard input) in this
-- fresh process: records/s and the process's peak RSS. RECORDS above the
-- default record limit raise it, and XML_BYTES (the report's XML) the size
-- limits with it.
local function phase_large()
  local file, records, bytes, form = arg[3], tonumber(arg[4]), tonumber(arg[5]), arg[6]
  local opts = { max_input = math.max(bytes + 1, ingest.limits.max_input),
                 max_xml = math.max(bytes + 1, ingest.limits.max_xml), max_rows = records + 1,
                 max_elements = math.max(ingest.limits.max_elements, records * 20 + 100) }
  if records > ingest.limits.max_records then ingest.limits.max_records = records end
  conn:command('FLUSHALL')
  local t0 = socket.gettime()
  local stats = ingest.ingest_files(conn, { file }, opts)
  local dt = socket.gettime() - t0
  if stats.stored ~= 1 then
    error(form .. ': large report not stored: '
          .. tostring(stats.failures[1] and stats.failures[1].message))
  end
  io.write(string.format('ingest one large report, %-26s %9.0f records/s  peak RSS %4.0f MB  '
                         .. '(%d records, %.1f MB XML, %.2f s)\n', form, stats.records / dt,
                         rss_peak_mb(), stats.records, bytes / 1e6, dt))
end

if PHASE == 'ingest' then
  phase_ingest()
elseif PHASE == 'write-large' then
  phase_write_large()
elseif PHASE == 'large' then
  phase_large()
elseif PHASE == 'summary' then
  phase_summary()
else
  error('unknown phase ' .. tostring(PHASE))
end
conn:close()
