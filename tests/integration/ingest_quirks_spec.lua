-- `dmarc report ingest` against a real redis-server over the synthetic
-- fixtures of tests/fixtures/ingest: every quirk stored with its warning, every
-- case that cannot be stored named on stderr with a non-zero exit, an mbox
-- read message by message, and the summary counting all of it.
local h = dofile('tests/integration/report_helpers.lua')
local cjson = require 'cjson'

local REDIS = os.getenv('DMARC_TEST_REDIS') or '127.0.0.1:16379'
local FIX = h.ROOT .. '/tests/fixtures/ingest/'

local function dmarc(args)
  local errfile = os.tmpname()
  local status, out = h.run(h.BIN .. ' ' .. args .. ' --redis ' .. REDIS .. ' 2>' .. errfile)
  local f = io.open(errfile, 'rb')
  local err = f and f:read('*a') or ''
  if f then f:close() end
  os.remove(errfile)
  return status, out, err
end

local function prefix(name)
  return string.format('it:quirks:%s:%d:', name, os.time() % 100000)
end

describe('ingest: quirks and failures against Redis', function()
  it('ingest_quirks__every_fixture_stored_or_refused_with_a_reason', function()
    local p = prefix('all')
    local status, out, err = dmarc('report ingest --json --prefix ' .. p .. ' ' .. FIX)
    assert.equal(1, status) -- some fixtures must fail
    local stats = cjson.decode(out)
    -- 9 single reports (quirks, no-evaluated, dkim without domain), 10 attachments, the
    -- good one beside the broken one, the one forwarded twice, 2 reports of the mbox
    assert.equal(9 + 10 + 1 + 1 + 2, stats.stored)
    local codes = {}
    for _, f in ipairs(stats.failures) do codes[f.code] = (codes[f.code] or 0) + 1 end
    -- broken attachment, mbox message without a report, corrupt.zip, not-zip.zip,
    -- make-fixtures (not a report)
    assert.equal(5, stats.errors)
    assert.equal(1, codes.truncated)
    assert.equal(1, codes.no_report)
    assert.equal(1, codes.zip)
    assert.equal(1, codes.corrupt)
    assert.equal(1, codes.format)
    for _, code in ipairs({ 'decimal_timestamp', 'empty_org_name', 'long_range',
                            'nested_compression', 'zlib', 'utf16' }) do
      assert.is_true((stats.warning_counts[code] or 0) >= 1, code)
      assert.truthy(err:find('stored with warning [%w_,]*' .. code), code)
    end
    assert.truthy(err:find('broken%-beside%-good%.eml attachment 2 %(broken%.xml%.gz%): truncated'))
    assert.truthy(err:find('dmarc%.mbox:3: no_report'))
    -- again: every report a duplicate, nothing counted twice
    local status2, out2 = dmarc('report ingest --json --quiet --prefix ' .. p .. ' ' .. FIX)
    assert.equal(1, status2)
    local again = cjson.decode(out2)
    assert.equal(0, again.stored)
    assert.equal(stats.stored, again.duplicates)
    -- the summary counts every stored message and names the warnings
    local s_status, s_out = dmarc('report summary --json --prefix ' .. p
                                  .. ' --domain example.org --until 2025-11-22 --days 7')
    assert.equal(0, s_status)
    local s = cjson.decode(s_out)
    assert.equal(stats.messages, s.messages)
    assert.equal(1, s.report_warnings.zlib)
  end)

  it('ingest_quirks__mbox_path', function()
    local p = prefix('mbox')
    local status, out = dmarc('report ingest --json --quiet --prefix ' .. p .. ' ' .. FIX
                              .. 'dmarc.mbox')
    assert.equal(1, status)
    local stats = cjson.decode(out)
    assert.equal(2, stats.stored)
    assert.equal(24, stats.messages)
    assert.equal(FIX .. 'dmarc.mbox:3', stats.failures[1].path)
  end)

  it('ingest_quirks__missing_file_says_why', function()
    local status, _, err = dmarc('report ingest --prefix ' .. prefix('missing') .. ' '
                                 .. FIX .. 'no-such.xml')
    assert.equal(1, status)
    assert.truthy(err:find('no%-such%.xml: io: cannot open: No such file or directory'))
  end)
end)
