--- Report generation: the rows of a period in Redis become one aggregate report per policy
-- domain and policy configuration [AGG-1] (XML through dmarc.report.xml, gzip'd in process by
-- zlib through dmarc.xml.gzip), one
-- message per mailto destination (dmarc.report.mail) and a manifest per policy domain that
-- `dmarc report send` works from.
--
--   local generate = require 'dmarc.report.generate'
--   local summary, err, code = generate.run { redis = conn, begin = day, ['end'] = day + 86400,
--                                             out = dir, reporter = { ... } }
-- @module dmarc.report.generate

local mail = require 'dmarc.report.mail'
local rows = require 'dmarc.report.rows'
local xml = require 'dmarc.report.xml'
local files = require 'dmarc.util.files'

local M = {}

M.GENERATOR = 'lua-dmarc'
M.MAX_PERIOD_DAYS = 31     -- longest period one run covers

-- Files are written in place, not through a temporary name and a rename:
-- ext4 starts writeback on such a rename, which made generation several
-- times slower. A manifest is written after the messages it names, and a
-- cut-off manifest is not valid JSON (send skips it), so a crash never
-- makes send use a half-written file.
local write_file = files.write

-- {==================================================================
-- Options and the period
-- ===================================================================

--- The "YYYYMMDD" days of [begin, finish), at most MAX_PERIOD_DAYS.
function M.day_list(begin, finish)
  local days = {}
  local t = begin
  while t < finish and #days < M.MAX_PERIOD_DAYS do
    days[#days + 1] = rows.day_of(t)
    t = t + 86400
  end
  return days
end

-- The options checked and completed: a job table, or nil, message, 'usage'.
local function job_of(opts)
  local prefix = opts.prefix or rows.defaults.prefix
  local format = opts.format or 'rfc9990'
  local rep = opts.reporter or {}
  if not xml.FORMATS[format] then return nil, 'unknown format ' .. tostring(format), 'usage' end
  if not rows.valid_prefix(prefix) then return nil, 'invalid key prefix', 'usage' end
  for _, f in ipairs({ 'org_name', 'email', 'submitter' }) do
    if type(rep[f]) ~= 'string' or rep[f] == '' then
      return nil, 'reporter ' .. f .. ' is required (option or config file)', 'usage'
    end
  end
  local submitter = rep.submitter:lower()
  if not rows.valid_domain(submitter) then return nil, 'invalid submitter domain', 'usage' end
  local begin, finish = opts.begin, opts['end']
  if type(begin) ~= 'number' or type(finish) ~= 'number' or begin % 86400 ~= 0
      or finish % 86400 ~= 0 or finish <= begin then
    return nil, 'the period must start and end at 00:00 UTC', 'usage'
  end
  if (finish - begin) / 86400 > M.MAX_PERIOD_DAYS then
    return nil, 'a period covers at most ' .. M.MAX_PERIOD_DAYS .. ' days', 'usage'
  end
  return {
    conn = opts.redis, prefix = prefix, format = format, rep = rep, submitter = submitter,
    begin = begin, finish = finish,
    last = finish - 1, -- date_range end: the period's last second, inclusive
    days = M.day_list(begin, finish), out = opts.out,
    max_rows = opts.max_rows or rows.defaults.max_rows, force = opts.force,
    generator = opts.version and (M.GENERATOR .. ' ' .. opts.version) or M.GENERATOR,
    summary = { domains = 0, reports = 0, records = 0, messages = 0, skipped_rows = 0,
                manifests = {} },
  }
end

-- The policy domains to report on, sorted: those asked for, or those with rows.
local function domains_of(job, asked)
  local domains, seen = {}, {}
  if asked then
    for _, d in ipairs(asked) do
      if rows.valid_domain(d) and not seen[d] then
        seen[d] = true
        domains[#domains + 1] = d
      end
    end
  else
    local err, code
    domains, err, code = rows.policy_domains(job.conn, job.prefix, job.days)
    if not domains then return nil, err, code end
  end
  table.sort(domains)
  return domains
end

-- }==================================================================

-- {==================================================================
-- One policy domain: its rows grouped by policy configuration, one report each
-- ===================================================================

-- Rows grouped by policy configuration [AGG-1]: groups (policy key -> fields, parts,
-- policy) and the sorted policy keys. Rows that do not decode are counted as skipped.
local function group_rows(agg, summary)
  local groups, group_keys = {}, {}
  for field, n in pairs(agg) do
    local parts = rows.split_field(field)
    if parts and n > 0 then
      local pk = parts[9]
      local g = groups[pk]
      if not g then
        g = { fields = {}, parts = {}, policy = rows.decode_policy(pk) }
        groups[pk] = g
        group_keys[#group_keys + 1] = pk
      end
      g.fields[#g.fields + 1] = field
      g.parts[field] = parts
    elseif not parts then
      summary.skipped_rows = summary.skipped_rows + 1
    end
  end
  table.sort(group_keys)
  return groups, group_keys
end

-- The <error> lines of a domain's reports: rows over the cap, messages not recorded.
local function report_errors(meta)
  local errors = {}
  if meta.dropped_messages > 0 then
    errors[#errors + 1] = string.format(
      '%d messages in %d distinct rows are not itemised: the row limit was reached',
      meta.dropped_messages, meta.dropped_rows)
  end
  if meta.lost_messages > 0 then
    errors[#errors + 1] = string.format(
      '%d messages were not recorded while the report store was unavailable',
      meta.lost_messages)
  end
  return errors
end

-- The destinations of the domain's rua list: a mail address each, or why it is skipped.
local function destinations_of(meta)
  local destinations = {}
  for _, u in ipairs(rows.decode_rua(meta.rua)) do
    local addr, why = mail.mailto_address(u.uri)
    destinations[#destinations + 1] = { uri = u.uri, max_size = u.max_size,
                                        address = addr, skipped = not addr and why or nil }
  end
  return destinations
end

-- One report: its XML, built in memory and gzip'd in process (dmarc.xml.gzip: zlib, level 6,
-- no name or time stamp in the header), written to @path.
-- @return records written, the gzip bytes; or nil, message, 'io'
local function write_report(job, path, head, domain, g, agg)
  local pieces, chunks = {}, {}
  local function put(s)
    chunks[#chunks + 1] = s
    if #chunks >= 256 then
      pieces[#pieces + 1] = table.concat(chunks)
      chunks = {}
    end
  end
  local w = xml.writer { format = job.format, write = put }
  w:begin(head, domain, g.policy)
  local written = 0
  for _, field in ipairs(g.fields) do
    if w:record_encoded(field, agg[field], g.parts[field]) then
      written = written + 1
    else
      job.summary.skipped_rows = job.summary.skipped_rows + 1
    end
  end
  w:finish()
  pieces[#pieces + 1] = table.concat(chunks)
  local gz = job.zlib.gzip(table.concat(pieces))
  local ok, err = write_file(path, gz)
  if not ok then return nil, err, 'io' end
  return written, gz
end

-- The reports of one policy domain, one per policy configuration, written gzip'd; their
-- manifest (each report's gzip bytes in r.gz until its messages are written).
-- @return manifest, or nil (no report), or nil, message, code
local function domain_reports(job, domain, agg, meta, read_keys)
  local groups, group_keys = group_rows(agg, job.summary)
  if #group_keys == 0 then return nil end
  local errors = report_errors(meta)
  -- Problems are told once, in the report of the configuration in force
  -- at the end of the period.
  local final = groups[meta.policy or ''] and meta.policy or group_keys[#group_keys]
  local destinations = destinations_of(meta)
  local rep = job.rep
  local man = { version = 1, policy_domain = domain, begin = job.begin, ['end'] = job.last,
                format = job.format, prefix = job.prefix, keys = read_keys, reports = {} }
  for _, pk in ipairs(group_keys) do
    local g = groups[pk]
    table.sort(g.fields)
    local rid = xml.report_id(job.submitter, domain, job.begin, pk, job.format)
    local file = xml.filename(job.submitter, domain, job.begin, job.last, rid)
    local head = { org_name = rep.org_name, email = rep.email,
                   extra_contact_info = rep.extra_contact_info, report_id = rid, begin = job.begin,
                   ['end'] = job.last, errors = pk == final and errors or nil,
                   generator = job.generator }
    local written, gz, code = write_report(job, job.out .. '/' .. file, head, domain, g, agg)
    if not written then return nil, gz, code end
    job.summary.records = job.summary.records + written
    job.summary.reports = job.summary.reports + 1
    local dests = {}
    for i, d in ipairs(destinations) do
      dests[i] = { uri = d.uri, max_size = d.max_size, address = d.address,
                   skipped = d.skipped }
    end
    man.reports[#man.reports + 1] = { report_id = rid, file = file, gz = gz,
                                      destinations = dests }
  end
  return man
end

-- }==================================================================

-- {==================================================================
-- Messages and manifests, per policy domain
-- ===================================================================

-- The messages of one report, one per destination with an address.
local function write_messages(job, man, r, gz)
  local rep = job.rep
  for k, d in ipairs(r.destinations) do
    if d.address then
      local msg = mail.message {
        report_id = r.report_id, domain = man.policy_domain, submitter = job.submitter,
        org_name = rep.org_name, email = rep.email, begin = man.begin, ['end'] = man['end'],
        filename = r.file, gz = gz, to = d.address, format = job.format,
      }
      d.message = r.report_id .. '.' .. k .. '.eml'
      d.message_size = #msg
      local okw, werr = write_file(job.out .. '/' .. d.message, msg)
      if not okw then return nil, werr, 'io' end
      job.summary.messages = job.summary.messages + 1
    end
  end
  return true
end

-- A domain's reports are written: each one's size and messages, then the manifest.
local function finish_domain(job, man)
  local cjson = require 'cjson'
  for _, r in ipairs(man.reports) do
    local gz = r.gz
    r.gz = nil
    r.size = #gz
    local ok, werr, code = write_messages(job, man, r, gz)
    if not ok then return nil, werr, code end
  end
  local path = job.out .. '/' .. man.policy_domain .. '!' .. man.begin .. '!' .. man['end']
    .. '.json'
  local okw, werr = write_file(path, cjson.encode(man))
  if not okw then return nil, werr, 'io' end
  job.summary.manifests[#job.summary.manifests + 1] = path
  return true
end

-- }==================================================================

--- Generate the reports of a period.
-- @param opts {table}
--   redis       a dmarc.redis connection or a dmarc.redis.cluster router
--   prefix      key prefix (default report.defaults.prefix)
--   begin       period start, epoch seconds at 00:00 UTC
--   ['end']     period end (exclusive), at 00:00 UTC
--   format      'rfc9990' (default) | 'rfc7489'
--   out         output directory (exists)
--   reporter    { org_name, email, submitter, extra_contact_info }
--   max_rows    rows read per domain (default report.defaults.max_rows)
--   domains     optional array: only these policy domains
--   progress    function(done, total) called as domains complete
--   force       also periods whose reports were all delivered
--   version     the engine's version, for <generator>
-- @return summary {domains, reports, records, messages, skipped_rows,
--   manifests = {paths}}, or nil, msg, code
function M.run(opts)
  local job, jerr, jcode = job_of(opts)
  if not job then return nil, jerr, jcode end
  local domains, derr, dcode = domains_of(job, opts.domains)
  if not domains then return nil, derr, dcode end
  local summary = job.summary
  local has_zlib, zlib = pcall(require, 'dmarc.xml')
  if not has_zlib then
    return nil, 'the dmarc.xml module is not built (it gzips the reports)', 'config'
  end
  job.zlib = zlib
  for di, domain in ipairs(domains) do
    local state_key = not job.force and rows.state_key(job.prefix, domain, job.begin, job.last) or nil
    local agg, meta, read_keys = rows.read_period(job.conn, job.prefix, domain, job.days,
                                                  job.max_rows, state_key)
    if not agg then return nil, meta, read_keys end
    if agg == 'complete' then
      summary.already_sent = (summary.already_sent or 0) + 1
      agg = {}
    end
    local man, err, code = domain_reports(job, domain, agg, meta, read_keys)
    if err then return nil, err, code end
    if man then
      summary.domains = summary.domains + 1
      local ok
      ok, err, code = finish_domain(job, man)
      if not ok then return nil, err, code end
    end
    if opts.progress then opts.progress(di, #domains) end
  end
  return summary
end

return M
