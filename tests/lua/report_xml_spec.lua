-- dmarc.report.xml: the XML writer (validated with xmllint against the RFC
-- 9990 and RFC 7489 schemas [AGG-9]), identity, file names, messages, and
-- generation from (fake) Redis data.
local report = require 'dmarc.report.rows'
local xml = require 'dmarc.report.xml'
local files = require 'dmarc.util.files'
local generate = require 'dmarc.report.generate'
local mail = require 'dmarc.report.mail'
local util_text = require 'dmarc.util.text'
local fake_redis = dofile('tests/lua/report_fake_redis.lua')

local DAY = 1763683200 -- 2025-11-21
-- The public IETF schemas, copied into the repository (tests/fixtures/schemas).
local SCHEMAS = 'tests/fixtures/schemas'

local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  os.execute('mkdir -p ' .. p)
  return p
end

-- The RFC 7489 Appendix C schema as published does not compile (its type
-- references lack the target namespace) and its IPAddress pattern carries
-- line-break whitespace (errata 5221/7865): validate against a copy with
-- exactly those two fixes.
local function schema_7489(dir)
  local src = files.read(SCHEMAS .. '/dmarc-0.1-rfc7489.xsd')
  src = src:gsub('targetNamespace="http://dmarc.org/dmarc%-xml/0.1">',
                 'targetNamespace="http://dmarc.org/dmarc-xml/0.1" xmlns="http://dmarc.org/dmarc-xml/0.1">')
  src = src:gsub('(<xs:pattern value=")([^"]*)(")', function(a, v, b) return a .. v:gsub('%s+', '') .. b end)
  local path = dir .. '/rfc7489-fixed.xsd'
  assert(files.write(path, src))
  return path
end

local function xmllint(schema, file)
  local ok = os.execute('xmllint --noout --schema ' .. util_text.shell_quote(schema) .. ' '
                        .. util_text.shell_quote(file) .. ' 2>/dev/null')
  return ok == true or ok == 0
end

local function sample_rows()
  local rec = { mode = 'rfc9989', p = 'reject', sp = 'none', adkim = 'relaxed', aspf = 'relaxed',
                testing = true, fo_text = '0', pct = 100,
                rua = { { uri = 'mailto:agg@example.com', max_size = 0 } } }
  local v = { result = 'fail', author_domain = 'example.com', policy_domain = 'example.com',
              org_domain = 'example.com', policy = 'reject', applied = 'quarantine',
              reason = 'policy_test_mode', spf_aligned = false, dkim_aligned = false, record = rec }
  local input = { spf = { result = 'policy', domain = 'example.com', scope = 'helo' },
                  dkim = { { result = 'fail', domain = 'example.com', selector = '' } } }
  local decision = { disposition = 'quarantine',
                     reasons = { { type = 'sampled_out', comment = 'bad \1 byte \255 <&>' },
                                 { type = 'mailing_list', comment = 'List-Id: <l.example>' } } }
  local rows = {}
  for _, ip in ipairs({ '192.0.2.1', '2001:db8::7', '::ffff:192.0.2.9' }) do
    rows[#rows + 1] = report.build_rows(v, input, { ip = ip, mail_from = '' }, decision,
                                        { time = DAY })[1]
  end
  return rows
end

local function write_report(format, dir, opts)
  local path = dir .. '/' .. format .. '.xml'
  local f = assert(io.open(path, 'wb'))
  local w = xml.writer { format = format, write = function(s) f:write(s) end,
                         xmlns_7489 = opts and opts.xmlns_7489 }
  local rows = sample_rows()
  w:begin({ org_name = 'Receiver & Co', email = 'dmarc@receiver.example', report_id = 'abc123',
            begin = DAY, ['end'] = DAY + 86399, errors = { 'one', 'two' },
            extra_contact_info = 'https://receiver.example/dmarc', generator = 'lua-dmarc test' },
          'example.com', rows[1].policy)
  for _, r in ipairs(rows) do
    local back = assert(report.decode_row(report.encode_row(r)))
    w:record(back, 3)
  end
  w:finish()
  f:close()
  return path
end

describe('report_xml writer', function()
  it('report_xml__rfc9990_output_validates [AGG-9]', function()
    local dir = tmpdir()
    local path = write_report('rfc9990', dir)
    assert.is_true(xmllint(SCHEMAS .. '/dmarc-2.0.xsd', path))
    local text = files.read(path)
    assert.truthy(text:find('<feedback xmlns="urn:ietf:params:xml:ns:dmarc-2.0">', 1, true))
    assert.truthy(text:find('<testing>y</testing>', 1, true))
    assert.truthy(text:find('<discovery_method>treewalk</discovery_method>', 1, true))
    assert.truthy(text:find('<type>policy_test_mode</type>', 1, true))
    -- sampled_out is not an RFC 9990 type: carried as "other".
    assert.is_nil(text:find('<type>sampled_out</type>', 1, true))
    assert.truthy(text:find('<np>none</np>', 1, true))
  end)

  it('report_xml__rfc7489_output_validates [AGG-9] [OPEN-8]', function()
    local dir = tmpdir()
    local path = write_report('rfc7489', dir, { xmlns_7489 = true })
    assert.is_true(xmllint(schema_7489(dir), path))
    local text = files.read(path)
    assert.is_nil(text:find('<testing>', 1, true))
    assert.truthy(text:find('<pct>100</pct>', 1, true))
    assert.truthy(text:find('<source_ip>2001:db8:0:0:0:0:0:7</source_ip>', 1, true))
    -- no namespace by default, as reports in the wild
    path = write_report('rfc7489', dir)
    assert.truthy(files.read(path):find('\n<feedback>\n', 1, true))
  end)

  it('report_xml__record_encoded_matches_record', function()
    for _, format in ipairs({ 'rfc9990', 'rfc7489' }) do
      local a, b = {}, {}
      local wa = xml.writer { format = format, write = function(s) a[#a + 1] = s end }
      local wb = xml.writer { format = format, write = function(s) b[#b + 1] = s end }
      for _, r in ipairs(sample_rows()) do
        local field = report.encode_row(r)
        wa:record(report.decode_row(field), 2)
        assert.is_true(wb:record_encoded(field, 2))
        assert.is_true(wb:record_encoded(field, 5)) -- from the caches
        wa:record(report.decode_row(field), 5)
      end
      assert.equal(table.concat(a), table.concat(b))
      assert.is_nil(wb:record_encoded('1|broken', 1))
    end
  end)

  it('report_xml__escape_and_sanitize_keep_xml_well_formed', function()
    assert.equal('a&amp;b&lt;c&gt;&quot;&apos;', xml.escape('a&b<c>"\''))
    assert.equal('a?b', xml.escape('a\1b'))
    assert.equal('x?y', xml.escape('x\255y'))
    assert.equal('é', xml.escape('é'))
    assert.equal('??', xml.escape('\237\160')) -- truncated sequence
  end)

  it('report_xml__expand_ipv6', function()
    assert.equal('2001:db8:0:0:0:0:0:1', xml.expand_ipv6('2001:db8::1'))
    assert.equal('0:0:0:0:0:ffff:c000:209', xml.expand_ipv6('::ffff:192.0.2.9'))
    assert.equal('0:0:0:0:0:0:0:0', xml.expand_ipv6('::'))
    assert.equal('192.0.2.1', xml.expand_ipv6('192.0.2.1'))
  end)

  it('report_xml__base64_vectors', function()
    -- RFC 4648 §10
    assert.equal('', mail.base64(''))
    assert.equal('Zg==\r\n', mail.base64('f'))
    assert.equal('Zm8=\r\n', mail.base64('fo'))
    assert.equal('Zm9v\r\n', mail.base64('foo'))
    assert.equal('Zm9vYmFy\r\n', mail.base64('foobar'))
    local long = mail.base64(('x'):rep(100))
    assert.equal(76, #long:match('^([^\r]*)'))
  end)

  it('report_xml__report_id_and_filename_follow_the_abnf [AGG-5] [MAIL-2]', function()
    local rid = xml.report_id('receiver.example', 'example.com', DAY, 'pk', 'rfc9990')
    assert.truthy(rid:match('^%w+$'))
    assert.equal(rid, xml.report_id('receiver.example', 'example.com', DAY, 'pk', 'rfc9990'))
    assert.are_not.equal(rid, xml.report_id('receiver.example', 'example.com', DAY, 'pk2', 'rfc9990'))
    local name = xml.filename('receiver.example', 'example.com', DAY, DAY + 86399, rid)
    assert.truthy(name:match('^receiver%.example!example%.com!%d+!%d+!%w+%.xml%.gz$'))
  end)

  it('report_xml__message_has_mail3_subject [MAIL-1] [MAIL-3]', function()
    local m = mail.message { report_id = 'r1', domain = 'example.com', submitter = 'receiver.example',
                            org_name = 'Receiver "R"', email = 'dmarc@receiver.example', begin = DAY,
                            ['end'] = DAY + 86399, filename = 'f.xml.gz', gz = 'GZDATA',
                            to = 'agg@example.com\r\nBcc: x@evil.example', format = 'rfc9990' }
    assert.truthy(m:find('\r\nSubject: Report Domain: example.com Submitter: receiver.example '
                         .. 'Report-ID: <r1>\r\n', 1, true))
    assert.truthy(m:find('Content-Type: application/gzip; name="f.xml.gz"', 1, true))
    assert.truthy(m:find('filename="f.xml.gz"', 1, true))
    assert.truthy(m:find('Auto-Submitted: auto-generated', 1, true))
    assert.is_nil(m:find('\r\nBcc:', 1, true))
    assert.truthy(m:find('R1pEQVRB', 1, true))
  end)

  it('report_xml__mailto_addresses_are_checked', function()
    assert.equal('agg@example.com', (mail.mailto_address('mailto:agg@EXAMPLE.com')))
    assert.equal('a+b@example.com', (mail.mailto_address('mailto:a%2Bb@example.com?subject=x')))
    assert.equal('unsupported_scheme', select(2, mail.mailto_address('https://example.com/r')))
    assert.equal('bad_uri', select(2, mail.mailto_address('mailto:a@b.example%0d%0aRCPT')))
    assert.equal('bad_uri', select(2, mail.mailto_address('mailto:a>b@example.com')))
    assert.equal('bad_uri', select(2, mail.mailto_address('mailto:nobody')))
  end)
end)

describe('report_xml generate', function()
  local REPORTER = { org_name = 'Example Receiver', email = 'dmarc@receiver.example',
                     submitter = 'receiver.example' }

  local function fill(conn, n, policy_over)
    for i = 1, n do
      local rec = { mode = 'rfc9989', p = 'none', rua = { { uri = 'mailto:agg@example.com' },
                                                          { uri = 'mailto:agg@reports.example.net' } } }
      for k, v in pairs(policy_over or {}) do rec[k] = v end
      local v = { result = 'pass', author_domain = 'example.com', policy_domain = 'example.com',
                  policy = rec.p, applied = rec.p, dkim_aligned = true, record = rec }
      report.write(conn, report.build_rows(v, { dkim = { { result = 'pass', domain = 'example.com',
                                                          selector = 's' } } },
                                           { ip = '198.51.100.' .. (i % 3) }, nil, { time = DAY + i }))
    end
  end

  it('report_xml__generate_writes_valid_reports_and_manifest', function()
    local conn = fake_redis.new()
    fill(conn, 30)
    local dir = tmpdir()
    local s = assert(generate.run { redis = conn, begin = DAY, ['end'] = DAY + 86400, out = dir,
                                    reporter = REPORTER })
    assert.equal(1, s.domains)
    assert.equal(1, s.reports)
    assert.equal(3, s.records)
    assert.equal(2, s.messages)
    local man = require('cjson').decode(files.read(s.manifests[1]))
    assert.equal('example.com', man.policy_domain)
    assert.equal(2, #man.reports[1].destinations)
    local gz = dir .. '/' .. man.reports[1].file
    assert.is_true(os.execute('gzip -dc ' .. util_text.shell_quote(gz) .. ' > ' .. dir .. '/r.xml') == true
                   or true)
    assert.is_true(xmllint(SCHEMAS .. '/dmarc-2.0.xsd', dir .. '/r.xml'))
    -- the counts add up
    local total = 0
    for c in files.read(dir .. '/r.xml'):gmatch('<count>(%d+)</count>') do total = total + tonumber(c) end
    assert.equal(30, total)
  end)

  it('report_xml__regeneration_is_byte_identical [MAIL-2]', function()
    local conn = fake_redis.new()
    fill(conn, 10)
    local d1, d2 = tmpdir(), tmpdir()
    local s1 = assert(generate.run { redis = conn, begin = DAY, ['end'] = DAY + 86400, out = d1,
                                     reporter = REPORTER })
    local s2 = assert(generate.run { redis = conn, begin = DAY, ['end'] = DAY + 86400, out = d2,
                                     reporter = REPORTER })
    local man = require('cjson').decode(files.read(s1.manifests[1]))
    local r = man.reports[1]
    assert.equal(files.read(d1 .. '/' .. r.file), files.read(d2 .. '/' .. r.file))
    local m = r.destinations[1].message
    assert.equal(files.read(d1 .. '/' .. m), files.read(d2 .. '/' .. m))
    assert.equal(s1.records, s2.records)
  end)

  it('report_xml__multi_day_period_merges_day_buckets [AGG-4]', function()
    local conn = fake_redis.new()
    local v = { result = 'pass', author_domain = 'example.com', policy_domain = 'example.com',
                policy = 'none', record = { p = 'none', rua = { { uri = 'mailto:a@example.com' } } } }
    for day = 0, 2 do
      for _ = 1, 3 do
        report.write(conn, report.build_rows(v, {}, { ip = '198.51.100.1' }, nil,
                                             { time = DAY + day * 86400 + 60 }))
      end
    end
    local dir = tmpdir()
    local s = assert(generate.run { redis = conn, begin = DAY, ['end'] = DAY + 2 * 86400, out = dir,
                                    reporter = REPORTER })
    assert.equal(1, s.reports)
    assert.equal(1, s.records)
    local man = require('cjson').decode(files.read(s.manifests[1]))
    assert.equal(DAY + 2 * 86400 - 1, man['end'])
    assert.equal(4, #man.keys) -- rows and meta of both days, deleted after delivery
    os.execute('gzip -dc ' .. util_text.shell_quote(dir .. '/' .. man.reports[1].file) .. ' > '
               .. dir .. '/r.xml')
    local text = files.read(dir .. '/r.xml')
    assert.truthy(text:find('<count>6</count>', 1, true)) -- the third day is outside
    assert.truthy(text:find('<end>' .. (DAY + 2 * 86400 - 1) .. '</end>', 1, true))
  end)

  it('report_xml__policy_change_splits_reports [AGG-1]', function()
    local conn = fake_redis.new()
    fill(conn, 5, { p = 'none' })
    fill(conn, 7, { p = 'quarantine' })
    local dir = tmpdir()
    local s = assert(generate.run { redis = conn, begin = DAY, ['end'] = DAY + 86400, out = dir,
                                    reporter = REPORTER })
    assert.equal(2, s.reports)
    local man = require('cjson').decode(files.read(s.manifests[1]))
    assert.equal(2, #man.reports)
    assert.are_not.equal(man.reports[1].report_id, man.reports[2].report_id)
  end)

  it('report_xml__row_cap_is_reported_in_error', function()
    local conn = fake_redis.new()
    for i = 1, 4 do
      local v = { result = 'pass', author_domain = 'example.com', policy_domain = 'example.com',
                  policy = 'none', record = { p = 'none', rua = { { uri = 'mailto:a@example.com' } } } }
      report.write(conn, report.build_rows(v, {}, { ip = '198.51.100.' .. i }, nil, { time = DAY }),
                   { max_rows = 1 })
    end
    local dir = tmpdir()
    local s = assert(generate.run { redis = conn, begin = DAY, ['end'] = DAY + 86400, out = dir,
                                    reporter = REPORTER, format = 'rfc7489' })
    local man = require('cjson').decode(files.read(s.manifests[1]))
    os.execute('gzip -dc ' .. util_text.shell_quote(dir .. '/' .. man.reports[1].file) .. ' > '
               .. dir .. '/r.xml')
    local text = files.read(dir .. '/r.xml')
    assert.truthy(text:find('<error>3 messages in 3 distinct rows are not itemised', 1, true))
  end)

  it('report_xml__generate_refuses_bad_periods_and_identity', function()
    local conn = fake_redis.new()
    local _, _, code = generate.run { redis = conn, begin = DAY + 1, ['end'] = DAY + 86400, out = '/tmp',
                                      reporter = REPORTER }
    assert.equal('usage', code)
    _, _, code = generate.run { redis = conn, begin = DAY, ['end'] = DAY + 86400, out = '/tmp',
                                reporter = { org_name = 'x', email = 'y' } }
    assert.equal('usage', code)
    _, _, code = generate.run { redis = conn, begin = DAY, ['end'] = DAY + 86400, out = '/tmp',
                                reporter = REPORTER, format = 'rfc1234' }
    assert.equal('usage', code)
  end)
end)
