-- The four C modules share one option checker and one error vocabulary
-- (bindings/binding.h, README "Error contract"): an unknown option raises in
-- every one of them, and the same C status gives the same code.
local core = require 'dmarc.core'
local dio = require 'dmarc.io'
local redis = require 'dmarc.redis'
local has_xml, xml = pcall(require, 'dmarc.xml')

local function raises_unknown(fn, name)
  local ok, err = pcall(fn)
  assert.is_false(ok, name .. ' accepted an unknown option')
  assert.truthy(tostring(err):find("unknown option 'bogus'", 1, true), tostring(err))
end

describe('bindings: one option checker', function()
  it('bindings__unknown_options_raise_in_every_module', function()
    raises_unknown(function() return core.new { bogus = 1 } end, 'dmarc.core.new')
    raises_unknown(function() return dio.resolver { zone_text = '', bogus = 1 } end, 'dmarc.io.resolver')
    raises_unknown(function() return dio.spf_checker { bogus = 1 } end, 'dmarc.io.spf_checker')
    local chk = dio.spf_checker {}
    raises_unknown(function() return chk:check { ip = '192.0.2.1', bogus = 1 } end, 'spf_checker:check')
    -- A misspelt host must not connect to the default one.
    raises_unknown(function() return redis.connect { bogus = 1 } end, 'dmarc.redis.connect')
    if has_xml then
      raises_unknown(function() return xml.parse('<a/>', { bogus = 1 }) end, 'dmarc.xml.parse')
      raises_unknown(function() return xml.inflate('', { bogus = 1 }) end, 'dmarc.xml.inflate')
      raises_unknown(function() return xml.unzip('', { bogus = 1 }) end, 'dmarc.xml.unzip')
      raises_unknown(function() return xml.gzip('', { bogus = 1 }) end, 'dmarc.xml.gzip')
    end
  end)

  it('bindings__known_options_still_work', function()
    assert.truthy(core.new { mode = 'rfc9989' })
    assert.truthy(dio.resolver { zone_text = '', cache = 0 })
    assert.truthy(dio.spf_checker { receiver = 'mx.example' })
  end)
end)

describe('bindings: one error vocabulary', function()
  it('bindings__a_syntax_error_is_syntax_in_core_and_io', function()
    assert.equal('syntax', select(3, dio.resolver { zone_text = 'example.com. IN TXT "unterminated\n' }))
    assert.equal('syntax', select(3, core.domain_normalize('a..b')))
  end)

  it('bindings__an_unreadable_zone_file_is_io', function()
    assert.equal('io', select(3, dio.resolver { zone = '/nonexistent/zone/file' }))
  end)
end)

if has_xml then
  describe('dmarc.xml: gzip and HMAC-SHA256 from zlib and libcrypto', function()
    it('xml__gzip_round_trips_and_is_deterministic', function()
      local text = string.rep('<record><row>192.0.2.1</row></record>\n', 500)
      local gz = xml.gzip(text)
      assert.equal('\31\139', gz:sub(1, 2))
      assert.equal(gz, xml.gzip(text))
      assert.is_true(#gz < #text / 10)
      assert.equal(text, (xml.inflate(gz, { format = 'gzip' })))
      assert.equal('', (xml.inflate(xml.gzip(''), { format = 'gzip' })))
    end)

    it('xml__hmac_sha256_matches_rfc4231', function()
      local function hex(s) return (s:gsub('.', function(c) return string.format('%02x', c:byte()) end)) end
      -- RFC 4231 §4.2 and §4.7 (a key longer than the block).
      assert.equal('b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7',
                   hex(xml.hmac_sha256(string.rep('\11', 20), 'Hi There')))
      assert.equal('9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2',
                   hex(xml.hmac_sha256(string.rep('\170', 131),
                     'This is a test using a larger than block-size key and a larger than '
                     .. 'block-size data. The key needs to be hashed before being used by the '
                     .. 'HMAC algorithm.')))
    end)
  end)
end
