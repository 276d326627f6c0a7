--- `dmarc report ingest PATH...`: store aggregate reports received from other
-- receivers (XML, .xml.gz, .zip, report e-mails) in Redis, per policy domain
-- and day, deduplicated by (org_name, report_id). Run by bin/dmarc as `dmarc
-- report ingest`; the plumbing it shares with `report summary` and `report
-- serve` (options, --help, config file, key prefix) is in dmarc.cli.common.
local common = require 'dmarc.cli.common'
local connect = require 'dmarc.redis.connect'
local options = require 'dmarc.util.options'
local text = require 'dmarc.util.text'

local M = {}

local USAGE = [[
usage: dmarc report ingest [options] PATH...

Stores DMARC aggregate reports (RFC 9990 and RFC 7489 XML, .xml.gz, .zip, or
whole report e-mails) and failure reports (RFC 9991, AFRF) in Redis, per
policy domain and day. Reports already stored are skipped, so ingesting
again is harmless. Every input is stored, a duplicate, or refused with a
reason. See docs/ingest.md.

PATH                     a file, a directory (walked, symbolic links not
                         followed), an mbox file, or - for standard input
options:
  --own D[,D...]         the domains this site owns (config: own_domains);
                         reports for other domains are counted as foreign
  --refuse-foreign       do not store reports for domains not owned
  --hash-envelope-to     store envelope_to as a keyed hash (HMAC-SHA256); the
                         salt from $DMARC_INGEST_SALT or --salt-file FILE
  --retention-days N     keep ingested data N days (default 180)
  --failure-retention-days N
                         keep failure reports (redacted) N days (default 30)
  --max-size BYTES       largest input file and decompressed report
                         (default 67108864)
  --json                 print the result as one JSON object on stdout
  --quiet                no progress or failure lines on stderr
common options:
  --config FILE          Lua file returning a table of options
]] .. common.REDIS_HELP .. [[

exit status: 0 every input ingested (duplicates included), 1 some input
failed (the others are still stored) or a stored report had records that
could not be read (invalid source_ip or count: not in the totals), 2 usage.
]]

-- ---------------------------------------------------------------------------
-- ingest

local SPEC = {
  flags = { json = true, quiet = true, ['refuse-foreign'] = true, ['hash-envelope-to'] = true },
  values = { own = true, ['salt-file'] = true, ['retention-days'] = true, ['max-size'] = true,
             ['failure-retention-days'] = true },
}

local function die(msg, status)
  return common.fail('dmarc report ingest', msg, status)
end

local function domain_list(v)
  local report = require 'dmarc.report.rows'
  local out = {}
  local items = type(v) == 'table' and v or {}
  if type(v) == 'string' then
    for d in v:gmatch('[^,%s]+') do items[#items + 1] = d end
  end
  for _, d in ipairs(items) do
    d = tostring(d):lower():gsub('%.$', '')
    if not report.valid_domain(d) then return nil, d end
    out[#out + 1] = d
  end
  return out
end

local function read_salt(o, conf)
  local file = options.setting(o, conf, 'salt-file')
  if file then
    local f, err = io.open(file, 'rb')
    if not f then return nil, 'salt file: ' .. tostring(err) end
    local s = f:read(4096) or ''
    f:close()
    s = s:gsub('[\r\n]+$', '')
    if #s < 16 then return nil, 'the salt must be at least 16 bytes' end
    return s
  end
  local s = os.getenv('DMARC_INGEST_SALT')
  if not s or #s < 16 then
    return nil, '--hash-envelope-to needs a salt of at least 16 bytes ($DMARC_INGEST_SALT '
      .. 'or --salt-file)'
  end
  return s
end

-- The stderr line of one input's result: a failure (the input is not
-- stored), or the warnings of a report stored despite a quirk.
local function tell(path, r)
  local where = text.shown(path) .. (r.part and (' ' .. text.shown(r.part)) or '')
  if r.status == 'error' then
    io.stderr:write('ingest: ', where, ': ', text.shown(r.code or 'error'), ': ',
                    text.shown(r.message), '\n')
  elseif r.warnings and #r.warnings > 0 then
    io.stderr:write('ingest: ', where, ': ', r.status, ' with warning ',
                    text.shown(table.concat(r.warnings, ',')), ' (report ',
                    text.shown(r.report_id), ' of ', text.shown(r.org_name), ')\n')
  end
end

-- A whole number of days in 1..3660 from an option (or the config file).
local function days_option(o, conf, name, default)
  local n = tonumber(options.setting(o, conf, name, default))
  if not n or n < 1 or n > 3660 or n % 1 ~= 0 then return nil end
  return n
end

-- The ingest options from the command line and the config file.
-- @return opts for ingest.ingest_files (without progress/on_result), or nil, message
local function ingest_options(o, conf)
  local ingest = require 'dmarc.owner.ingest'
  local failures = require 'dmarc.owner.failures'
  local prefix = common.report_prefix(o, conf)
  if not prefix then return nil, 'invalid --redis-prefix' end
  local own, bad = domain_list(options.setting(o, conf, 'own', conf.own_domains))
  if not own then return nil, 'invalid domain in --own: ' .. text.shown(bad) end
  local retention = days_option(o, conf, 'retention-days', ingest.defaults.ttl / 86400)
  if not retention then return nil, '--retention-days must be 1..3660' end
  local fail_days = days_option(o, conf, 'failure-retention-days', failures.defaults.ttl / 86400)
  if not fail_days then return nil, '--failure-retention-days must be 1..3660' end
  local max_size = tonumber(options.setting(o, conf, 'max-size', ingest.limits.max_input))
  if not max_size or max_size < 1024 or max_size > 2 ^ 31 - 1 then
    return nil, '--max-size must be 1024..2147483647'
  end
  local salt
  if o['hash-envelope-to'] or conf.hash_envelope_to then
    local serr
    salt, serr = read_salt(o, conf)
    if not salt then return nil, serr end
  end
  return { prefix = prefix, ttl = retention * 86400, own = #own > 0 and own or nil,
           failure_ttl = fail_days * 86400,
           refuse_foreign = o['refuse-foreign'] or conf.refuse_foreign, hash_salt = salt,
           max_input = max_size, max_xml = max_size }
end

-- The progress line on stderr, at most every 2 seconds (and a final one).
local function progress_writer(clock, nfiles)
  local started = clock()
  local last = started
  return function(stats, final)
    local now = clock()
    if not final and now - last < 2 then return end
    last = now
    local secs = now - started
    local fr = stats.failure_reports
    io.stderr:write(string.format('ingest: %d/%d files, %d reports (%d new, %d duplicate, '
                                  .. '%d refused), %d records, %d failed, %.0f records/s%s\n',
                                  stats.files, nfiles, stats.reports, stats.stored,
                                  stats.duplicates, stats.refused, stats.records, stats.errors,
                                  secs > 0 and stats.records / secs or 0,
                                  (fr.stored + fr.duplicates + fr.refused > 0) and string.format(
                                    '; failure reports %d new, %d duplicate, %d refused',
                                    fr.stored, fr.duplicates, fr.refused) or ''))
  end
end

--- Entry point: run(args) → exit status.
function M.run(args)
  local ingest = require 'dmarc.owner.ingest'
  local summary = require 'dmarc.owner.summary'
  local o, rest, conf = common.report_start('ingest', args, SPEC, USAGE)
  if not o then return rest end -- --help or a usage error: rest is the exit status
  if #rest == 0 then return die('no PATH given (see --help)', 2) end
  local opts, oerr = ingest_options(o, conf)
  if not opts then return die(oerr, 2) end
  local files, missing = ingest.expand_paths(rest)
  local conn, err = connect.from_options(o, conf)
  if not conn then return die(tostring(err), 1) end

  local clock = common.clock()
  local started = clock()
  local quiet = o.quiet
  local progress = quiet and function() end or progress_writer(clock, #files)
  opts.progress = progress
  opts.on_result = not quiet and tell or nil
  local stats = ingest.ingest_files(conn, files, opts)
  if conn.close then pcall(conn.close, conn) end
  for _, m in ipairs(missing) do
    ingest.account(stats, m.path, { status = 'error', code = m.code, message = m.message },
                   { on_result = opts.on_result })
  end
  stats.seconds = clock() - started
  progress(stats, true)
  if o.json then io.stdout:write(summary.json(stats), '\n') end
  if stats.records_dropped > 0 and not quiet then
    io.stderr:write(string.format('ingest: %d records could not be read (invalid source_ip or '
                                  .. 'count) and are not counted\n', stats.records_dropped))
  end
  return (stats.errors > 0 or stats.records_dropped > 0) and 1 or 0
end

return M
