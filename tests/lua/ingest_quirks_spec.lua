-- dmarc.ingest over tests/fixtures/ingest/: the quirks real receivers send,
-- each stored with the right counts and its warning code, and the cases that
-- must be reported instead of lost (a bound hit, a broken attachment beside a
-- good one, a corrupt archive), each a failure with its reason. No input may
-- vanish: every one is stored, a duplicate, or refused with a code.
local ingest = require 'dmarc.owner.ingest'
local fake_redis = require 'ingest_fake_redis'

local DIR = 'tests/fixtures/ingest/'

local function read(name)
  local f = assert(io.open(DIR .. name, 'rb'))
  local d = f:read('*a')
  f:close()
  return d
end

-- Ingests one fixture file (or several) into a fresh fake server.
local function run(names, opts)
  local conn = fake_redis()
  local files = {}
  for i, n in ipairs(type(names) == 'table' and names or { names }) do files[i] = DIR .. n end
  local results = {}
  opts = opts or {}
  opts.on_result = function(path, r) results[#results + 1] = { path = path, r = r } end
  local stats = ingest.ingest_files(conn, files, opts)
  return stats, results, conn
end

local function only_report(name)
  local stats, results = run(name)
  assert.equal(0, stats.errors)
  assert.equal(1, stats.stored)
  return results[1].r, stats
end

local function has(list, code)
  for _, v in ipairs(list or {}) do
    if v == code then return true end
  end
  return false
end

describe('ingest quirks: read and stored with a warning', function()
  it('decimal timestamps (1763683200.0) are read as whole seconds', function()
    local r = only_report('decimal-timestamps.xml')
    assert.equal(12, r.messages)
    assert.equal('20251121', r.day)
    assert.is_true(has(r.warnings, 'decimal_timestamp'))
  end)

  it('an empty <org_name/> is named after the report e-mail domain', function()
    local r = only_report('empty-org-name.xml')
    assert.equal('receiver-q.example', r.org_name)
    assert.equal(12, r.messages)
    assert.is_true(has(r.warnings, 'empty_org_name'))
  end)

  it('a date range over 31 days is filed under its last day', function()
    local r = only_report('long-range.xml')
    assert.equal('20251121', r.day)
    assert.equal(12, r.messages)
    assert.is_true(has(r.warnings, 'long_range'))
  end)

  it('gzip inside gzip', function()
    local r = only_report('gzip-in-gzip.xml.gz')
    assert.equal(12, r.messages)
    assert.is_true(has(r.warnings, 'nested_compression'))
  end)

  it('a zlib stream instead of gzip', function()
    local r = only_report('zlib.xml.gz')
    assert.equal(12, r.messages)
    assert.is_true(has(r.warnings, 'zlib'))
  end)

  it('UTF-16 with a byte-order mark, little and big endian', function()
    for _, name in ipairs({ 'utf16.xml', 'utf16be.xml' }) do
      local r = only_report(name)
      assert.equal(12, r.messages)
      assert.equal('Receiver Q', r.org_name)
      assert.is_true(has(r.warnings, 'utf16'))
    end
  end)

  it('keeps the warnings with the stored report', function()
    local cjson = require 'cjson'
    local _, _, conn = run('decimal-timestamps.xml')
    local reps = conn.data['dmarc:ing:{example.org}:20251121:rep']
    local _, info = next(reps)
    info = cjson.decode(info)
    assert.same({ 'decimal_timestamp' }, info.warnings)
  end)

  it('a report without warnings has none', function()
    local r = only_report('no-evaluated-results.xml')
    assert.same({}, r.warnings)
    assert.equal(7, r.messages)
  end)
end)

describe('ingest: nothing dropped silently', function()
  it('reads every one of ten report attachments of one e-mail', function()
    local stats = run('ten-attachments.eml')
    assert.equal(0, stats.errors)
    assert.equal(10, stats.stored)
    assert.equal(120, stats.messages)
  end)

  it('reports the attachments past max_attachments as a failure', function()
    local saved = ingest.limits.max_attachments
    ingest.limits.max_attachments = 8
    local ok, stats = pcall(run, 'ten-attachments.eml')
    ingest.limits.max_attachments = saved
    assert.is_true(ok, stats)
    assert.equal(8, stats.stored)
    assert.equal(1, stats.errors)
    assert.equal('limit', stats.failures[1].code)
    assert.truthy(stats.failures[1].message:find('more than 8 report attachments', 1, true))
  end)

  it('a broken attachment beside a good one: the good one stored, the broken one failed', function()
    local stats = run('broken-beside-good.eml')
    assert.equal(1, stats.stored)
    assert.equal(1, stats.errors)
    assert.equal('truncated', stats.failures[1].code)
    assert.truthy(stats.failures[1].part:find('broken.xml.gz', 1, true))
  end)

  it('finds a report forwarded twice (nested deeper)', function()
    local stats = run('forwarded-twice.eml')
    assert.equal(0, stats.errors)
    assert.equal(1, stats.stored)
  end)

  it('says so when a report is nested deeper than max_mime_depth', function()
    local saved = ingest.limits.max_mime_depth
    ingest.limits.max_mime_depth = 3
    local ok, stats = pcall(run, 'forwarded-twice.eml')
    ingest.limits.max_mime_depth = saved
    assert.is_true(ok, stats)
    assert.equal(0, stats.stored)
    assert.equal('limit', stats.failures[1].code)
    assert.truthy(stats.failures[1].message:find('nested deeper', 1, true))
  end)

  it('a corrupt zip and a .zip that is not one are refused as corrupt', function()
    local stats = run({ 'corrupt.zip', 'not-zip.zip' })
    assert.equal(2, stats.errors)
    assert.truthy(stats.failures[1].message:find('^corrupt zip'))
    assert.equal('corrupt', stats.failures[2].code)
    assert.equal('corrupt zip: no zip signature', stats.failures[2].message)
  end)

  it('names the reason a path cannot be opened', function()
    local _, missing = ingest.expand_paths({ DIR .. 'no-such-file.xml' })
    assert.equal(1, #missing)
    assert.equal('io', missing[1].code)
    assert.truthy(missing[1].message:find('No such file', 1, true))
  end)

  it('reports the files past max_files', function()
    local files, missing = ingest.expand_paths({ DIR }, { max_files = 3 })
    assert.equal(3, #files)
    assert.equal('limit', missing[1].code)
  end)

  it('counts every failure, listing at most max_failures', function()
    local saved = ingest.limits.max_failures
    ingest.limits.max_failures = 1
    local ok, stats = pcall(run, { 'corrupt.zip', 'not-zip.zip' })
    ingest.limits.max_failures = saved
    assert.is_true(ok, stats)
    assert.equal(2, stats.errors)
    assert.equal(1, #stats.failures)
    assert.equal(1, stats.failures_not_listed)
  end)
end)

describe('ingest: mbox', function()
  it('reads every message of an mbox file', function()
    local stats, results = run('dmarc.mbox')
    assert.equal(2, stats.stored)
    assert.equal(24, stats.messages)
    -- the third message carries no report: refused with its reason, named by its place
    assert.equal(1, stats.errors)
    assert.equal('no_report', stats.failures[1].code)
    assert.equal(DIR .. 'dmarc.mbox:3', stats.failures[1].path)
    assert.equal(DIR .. 'dmarc.mbox:1', results[1].path)
  end)

  it('splits messages across chunk boundaries and unquotes >From', function()
    local text = read('dmarc.mbox')
    for _, size in ipairs({ 1, 3, 7, 64 }) do
      local pos, got = 1, {}
      ingest.each_mbox_message(function()
        if pos > #text then return nil end
        local c = text:sub(pos, pos + size - 1)
        pos = pos + size
        return c
      end, nil, function(i, msg) got[i] = msg end)
      assert.equal(3, #got)
      assert.truthy(got[2]:find('\nFrom the team', 1, true))
      assert.is_nil(got[1]:find('^From '))
    end
  end)

  it('reports a message over the size limit and goes on', function()
    local text = 'From a\n' .. ('x'):rep(5000) .. '\nFrom b\nSubject: s\n\nbody\n'
    local got, failed = {}, {}
    local done = false
    ingest.each_mbox_message(function()
      if done then return nil end
      done = true
      return text
    end, { max_input = 1000 }, function(i, msg, _, code)
      if msg then got[#got + 1] = i else failed[#failed + 1] = code .. ' ' .. i end
    end)
    assert.same({ 'limit 1' }, failed)
    assert.same({ 2 }, got)
  end)

  it('reports the messages past max_messages', function()
    local text = ('From a\nSubject: s\n\nbody\n'):rep(5)
    local failed = {}
    local done = false
    ingest.each_mbox_message(function()
      if done then return nil end
      done = true
      return text
    end, { max_messages = 3 }, function(_, msg, err)
      if not msg then failed[#failed + 1] = err end
    end)
    assert.equal(1, #failed)
    assert.truthy(failed[1]:find('more than 3 messages', 1, true))
  end)
end)
