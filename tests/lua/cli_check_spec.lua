-- `dmarc check` and `dmarc inspect` as separate processes (bin/dmarc, this runtime, this build):
-- outputs over the bundled example (zone, messages, site script), --json, and the errors a
-- person meets: bad option, missing file, malformed message, bad zone (exit 2, one clear
-- line, never a stack trace).
local env = require 'test_env'
local cjson = require 'cjson'

local EXAMPLE = '--zone examples/example.zone --authserv-id mx.example.org --roll 0 '

-- Runs `dmarc <args>`; returns stdout, stderr, status.
local function dmarc(args, stdin_text)
  local errfile = env.tmpname()
  local cmd = env.dmarc_cmd(args) .. ' 2>' .. env.shell_quote(errfile)
  local infile
  if stdin_text then
    infile = env.tmpname()
    env.write_file(infile, stdin_text)
    cmd = cmd .. ' < ' .. env.shell_quote(infile)
  else
    cmd = cmd .. ' < /dev/null'
  end
  local out, status = env.run(cmd)
  local err = env.read_file(errfile)
  os.remove(errfile)
  if infile then os.remove(infile) end
  return out, err, status
end

local function clean_error(err)
  assert.falsy(err:find('traceback', 1, true))
  assert.falsy(err:find('internal error', 1, true))
  assert.truthy(err:find('^dmarc %a+: '))
end

describe('dmarc check', function()
  it('passes an aligned, signed message', function()
    local out, _, status = dmarc('check ' .. EXAMPLE ..
      '--ip 192.0.2.10 --helo mx.example.com --mail-from news@example.com examples/pass.eml')
    assert.equal(0, status)
    assert.truthy(out:find('^Authentication%-Results: mx%.example%.org;\n'))
    assert.truthy(out:find('\tspf=pass smtp.mailfrom=example.com;', 1, true))
    assert.truthy(out:find('dkim=pass header.d=example.com header.s=sel2026', 1, true))
    assert.truthy(out:find('dkim=pass header.d=example.com header.s=ed2026', 1, true))
    assert.truthy(out:find('dmarc=pass (p=reject dis=none) header.from=example.com policy.dmarc=none',
      1, true))
    assert.truthy(out:find('\nDecision: accept', 1, true))
  end)

  it('reads the message from standard input', function()
    local out, _, status = dmarc('check ' .. EXAMPLE .. '--ip 192.0.2.10 --mail-from news@example.com',
      env.read_file(env.root .. '/examples/pass.eml'))
    assert.equal(0, status)
    assert.truthy(out:find('dmarc=pass', 1, true))
  end)

  it('handles a spoofed p=reject failure as quarantine without other evidence [POL-3]', function()
    local out, _, status = dmarc('check ' .. EXAMPLE ..
      '--ip 203.0.113.200 --mail-from ceo@example.com examples/spoofed.eml')
    assert.equal(0, status)
    assert.truthy(out:find('spf=fail', 1, true))
    assert.truthy(out:find('dkim=none', 1, true))
    assert.truthy(out:find('dmarc=fail', 1, true))
    assert.truthy(out:find('policy.dmarc=quarantine', 1, true))
    assert.truthy(out:find('Decision: folder "Junk"', 1, true))
  end)

  it('rejects the spoofed message when there is other evidence', function()
    local out, _, status = dmarc('check ' .. EXAMPLE ..
      '--ip 203.0.113.200 --mail-from ceo@example.com --evidence blocklisted examples/spoofed.eml')
    assert.equal(0, status)
    assert.truthy(out:find('policy.dmarc=reject', 1, true))
    assert.truthy(out:find('Decision: reject 550', 1, true))
  end)

  it('applies the site script: quarantine to the Junk folder', function()
    local out, _, status = dmarc('check ' .. EXAMPLE .. '--policy examples/site.lua ' ..
      '--ip 203.0.113.20 --mail-from b@bulk-mailer.example examples/quarantined.eml')
    assert.equal(0, status)
    assert.truthy(out:find('dkim=pass header.d=bulk-mailer.example', 1, true))
    assert.truthy(out:find('dmarc=fail (p=quarantine dis=quarantine) header.from=shop.example', 1, true))
    assert.truthy(out:find('Decision: folder "Junk"', 1, true))
  end)

  it('saves forwarded mail on the ARC verdict of a trusted host only [ARC-2] [AR-5]', function()
    local args = 'check ' .. EXAMPLE .. '--policy examples/site.lua --ip 198.51.100.25 ' ..
      '--helo lists.example.net --mail-from b@lists.example.net '
    local out, _, status = dmarc(args .. '--trusted-authserv-id border.example.org examples/forwarded.eml')
    assert.equal(0, status)
    assert.truthy(out:find('dmarc=fail', 1, true))
    assert.truthy(out:find('policy.dmarc=none', 1, true))
    assert.truthy(out:find('arc=pass as[1].d=lists.example.net as[1].s=arc', 1, true))
    assert.truthy(out:find('Decision: accept', 1, true))
    -- The same message, the border host not trusted: the failure stands.
    out, _, status = dmarc(args .. 'examples/forwarded.eml')
    assert.equal(0, status)
    assert.falsy(out:find('Decision: accept', 1, true))
    assert.truthy(out:find('authserv-id not trusted', 1, true))
  end)

  it('prints everything as one JSON object with --json', function()
    local out, _, status = dmarc('check --json ' .. EXAMPLE ..
      '--ip 192.0.2.10 --mail-from news@example.com examples/pass.eml')
    assert.equal(0, status)
    local obj = cjson.decode(out)
    assert.equal('pass', obj.dmarc.result)
    assert.equal('example.com', obj.dmarc.author_domain)
    assert.equal('pass', obj.spf.result)
    assert.equal('mfrom', obj.spf.scope)
    assert.equal(2, obj.dkim.total)
    assert.equal(2, #obj.dkim.signatures)
    assert.equal('accept', obj.decision.action)
    assert.truthy(obj.authentication_results:find('^Authentication%-Results:'))
    -- empty arrays stay arrays
    assert.truthy(out:find('"flags":[]', 1, true))
    assert.truthy(out:find('"ignored_authentication_results":[]', 1, true))
  end)

  it('gives dmarc=none when no record applies [DISC-9]', function()
    local zone = env.tmpname()
    env.write_file(zone, env.read_file(env.root .. '/examples/example.zone'):gsub(
      '_dmarc%.example%.com%.[^\n]*\n', ''))
    -- no record now: result none
    local out, _, status = dmarc('check --zone ' .. env.shell_quote(zone) ..
      ' --ip 203.0.113.200 --mail-from ceo@example.com examples/spoofed.eml')
    os.remove(zone)
    assert.equal(0, status)
    assert.truthy(out:find('dmarc=none', 1, true))
  end)

  it('refuses a bad option: exit 2, one clear line', function()
    local out, err, status = dmarc('check --bogus')
    assert.equal(2, status)
    assert.equal('', out)
    clean_error(err)
    assert.truthy(err:find('--bogus', 1, true))
    out, err, status = dmarc('check --ip')
    assert.equal(2, status)
    assert.equal('', out)
    clean_error(err)
    out, err, status = dmarc('check --mode rfc1234 examples/pass.eml')
    assert.equal(2, status)
    assert.equal('', out)
    clean_error(err)
    out, err, status = dmarc('check --zone a --dns-server 127.0.0.1 examples/pass.eml')
    assert.equal(2, status)
    assert.equal('', out)
    clean_error(err)
  end)

  it('refuses a missing message file: exit 2', function()
    local _, err, status = dmarc('check ' .. EXAMPLE .. '/nonexistent/message.eml')
    assert.equal(2, status)
    clean_error(err)
    assert.truthy(err:find('/nonexistent/message.eml', 1, true))
  end)

  it('refuses a malformed message: exit 2', function()
    local _, err, status = dmarc('check ' .. EXAMPLE, 'this is not\na message\n')
    assert.equal(2, status)
    clean_error(err)
    assert.truthy(err:find('malformed message', 1, true))
    _, err, status = dmarc('check ' .. EXAMPLE, '')
    assert.equal(2, status)
    clean_error(err)
  end)

  it('refuses a zone file that does not parse or exist: exit 2', function()
    local zone = env.tmpname()
    env.write_file(zone, 'ok A 192.0.2.1\nbroken A not-an-address\n')
    local _, err, status = dmarc('check --zone ' .. env.shell_quote(zone) .. ' examples/pass.eml')
    os.remove(zone)
    assert.equal(2, status)
    clean_error(err)
    assert.truthy(err:find(':2:', 1, true))
    _, err, status = dmarc('check --zone /nonexistent/zone examples/pass.eml')
    assert.equal(2, status)
    clean_error(err)
  end)

  it('refuses a site script that does not load: exit 2', function()
    local site = env.tmpname()
    env.write_file(site, 'return { treat = { quarantine = "nowhere:x" } }\n')
    local _, err, status = dmarc('check ' .. EXAMPLE .. '--policy ' .. env.shell_quote(site) ..
      ' examples/pass.eml')
    os.remove(site)
    assert.equal(2, status)
    clean_error(err)
  end)

  it('prints its usage with --help', function()
    local out, _, status = dmarc('check --help')
    assert.equal(0, status)
    assert.truthy(out:find('usage: dmarc check', 1, true))
  end)
end)

-- Redis options that need no server: usage errors, and a Redis that does not answer
-- (127.0.0.1:1 refuses at once). The real server is in tests/integration/check_redis_spec.lua.
describe('dmarc check with Redis', function()
  local SPOOF = EXAMPLE .. '--ip 203.0.113.200 --mail-from ceo@example.com '
  local DOWN = '--redis 127.0.0.1:1 '

  local function decision_line(out)
    return out:match('\nDecision: [^\n]*')
  end

  it('cli_check__help_describes_the_redis_options', function()
    local out, _, status = dmarc('check --help')
    assert.equal(0, status)
    for _, opt in ipairs({ '--redis ADDR', '--redis-prefix', '--redis-password-file', '--spool DIR',
                           '--failure-reports',
                           '--report-config', '--no-report-rows' }) do
      assert.truthy(out:find(opt, 1, true), opt)
    end
  end)

  it('cli_check__redis_down_keeps_the_decision_and_warns', function()
    local plain, _, plain_status = dmarc('check ' .. SPOOF .. 'examples/spoofed.eml')
    local out, err, status = dmarc('check ' .. SPOOF .. DOWN .. 'examples/spoofed.eml')
    assert.equal(0, plain_status)
    assert.equal(0, status)
    assert.is_string(decision_line(plain))
    assert.equal(decision_line(plain), decision_line(out))
    assert.truthy(out:find('^Authentication%-Results: '))
    assert.falsy(err:find('traceback', 1, true))
    -- one line for the store, one for the row that could not be written
    assert.truthy(err:find('dmarc check: warn: override store', 1, true))
    assert.truthy(err:find('1 report row of this message lost', 1, true))
  end)

  it('cli_check__redis_down_counts_lost_rows_in_json', function()
    local out, _, status = dmarc('check --json ' .. SPOOF .. DOWN .. 'examples/spoofed.eml')
    assert.equal(0, status)
    local obj = cjson.decode(out)
    assert.equal(1, obj.reporting.rows_lost)
    assert.equal(0, obj.reporting.rows_written)
    assert.equal('folder', obj.decision.action)
    -- without Redis there is no reporting object
    out = dmarc('check --json ' .. SPOOF .. 'examples/spoofed.eml')
    assert.is_nil(cjson.decode(out).reporting)
  end)

  it('cli_check__redis_down_spools_the_rows', function()
    local dir = env.tmpname()
    os.remove(dir)
    local out, err, status = dmarc('check --json ' .. SPOOF .. DOWN .. '--spool ' .. env.shell_quote(dir) ..
      ' examples/spoofed.eml')
    assert.equal(0, status)
    assert.equal(1, cjson.decode(out).reporting.rows_spooled)
    assert.truthy(err:find('1 report row kept in', 1, true))
    local listing = env.run('ls -1 ' .. env.shell_quote(dir))
    assert.truthy(listing:find('^%d+%-%x+%.rows\n$'), listing)
    env.run('rm -rf ' .. env.shell_quote(dir))
  end)

  it('cli_check__no_row_for_a_record_without_rua [RUA-1]', function()
    local zone = env.tmpname()
    env.write_file(zone, (env.read_file(env.root .. '/examples/example.zone'):gsub(
      '; rua=mailto:dmarc%-reports@example%.com', '')))
    local out, err, status = dmarc('check --json --roll 0 --zone ' .. env.shell_quote(zone) .. ' '
      .. DOWN .. '--ip 203.0.113.200 --mail-from ceo@example.com examples/spoofed.eml')
    os.remove(zone)
    assert.equal(0, status)
    local obj = cjson.decode(out)
    assert.equal(0, obj.reporting.rows_lost)
    assert.falsy(err:find('report row', 1, true))
  end)

  it('cli_check__redis_usage_errors_exit_2', function()
    for _, args in ipairs({
      '--redis "bad host:x"',
      '--redis 127.0.0.1:99999',
      '--redis 127.0.0.1:1 --redis-prefix "a b"',
      '--redis 127.0.0.1:1 --redis-timeout 0',
      '--redis 127.0.0.1:1 --time yesterday',
      '--redis 127.0.0.1:1 --failure-reports',                -- no reporter identity
      '--failure-reports --email dmarc@receiver.example',      -- no submitter
      '--redis 127.0.0.1:1 --failure-reports --email x --submitter receiver.example',
      '--redis 127.0.0.1:1 --report-config /nonexistent/report.lua',
    }) do
      local out, err, status = dmarc('check ' .. EXAMPLE .. args .. ' examples/pass.eml')
      assert.equal(2, status, args)
      assert.equal('', out, args)
      clean_error(err)
    end
  end)

  it('cli_check__without_redis_the_redis_features_only_warn', function()
    -- e.g. $DMARC_REDIS missing from the MTA's environment: the check must still run
    local out, err, status = dmarc('check ' .. SPOOF .. '--failure-reports --email dmarc@receiver.example '
      .. '--submitter receiver.example --spool /nonexistent/spool examples/spoofed.eml')
    assert.equal(0, status)
    assert.truthy(out:find('\nDecision: folder "Junk"', 1, true))
    assert.truthy(err:find('dmarc check: warn: --failure-reports has no effect without Redis', 1, true))
  end)

  it('cli_check__report_config_supplies_redis_and_identity', function()
    local conf = env.tmpname()
    env.write_file(conf, "return { redis = '127.0.0.1:1', email = 'dmarc@receiver.example', "
      .. "submitter = 'receiver.example', redis_prefix = 'cfg:' }")
    local out, err, status = dmarc('check --json --failure-reports --report-config ' .. env.shell_quote(conf)
      .. ' ' .. SPOOF .. 'examples/spoofed.eml')
    os.remove(conf)
    assert.equal(0, status)
    assert.equal(1, cjson.decode(out).reporting.rows_lost) -- Redis from the file (down)
    assert.truthy(err:find('warn:', 1, true))
  end)
end)

-- Doors that opened the wrong way (RFC 9989 §4.10, §11.5): the lines a person reads.
describe('dmarc check fails closed', function()
  local function message(from)
    return 'From: ' .. from .. '\r\nTo: accounts@example.org\r\nSubject: wire\r\n' ..
      'Date: Sun, 22 Nov 2026 09:05:00 +0000\r\nMessage-ID: <1@evil.example>\r\n\r\nPay now.\r\n'
  end
  local SPOOFER = '--ip 203.0.113.200 --mail-from ceo@evil.example '

  it('matches an org override by the real Org Domain, also below it', function()
    local z = env.tmpname()
    env.write_file(z, [[
_dmarc.example-partner.org. TXT "v=DMARC1; p=reject"
_dmarc.mail.example-partner.org. TXT "v=DMARC1; p=reject"
]])
    for _, dom in ipairs({ 'example-partner.org', 'mail.example-partner.org' }) do
      local out, _, status = dmarc('check --zone ' .. env.shell_quote(z) .. ' --roll 0 ' ..
        '--policy examples/site.lua --evidence rbl ' .. SPOOFER, message('CEO <ceo@' .. dom .. '>'))
      assert.equal(0, status)
      assert.truthy(out:find('dmarc=fail (p=reject dis=reject applied=quarantine ' ..
        'override=local_policy: partner, never rejected) header.from=' .. dom ..
        ' policy.dmarc=quarantine', 1, true), out)
      assert.truthy(out:find('\nDecision: folder "Junk" (disposition quarantine; local_policy: ' ..
        'partner, never rejected)\n', 1, true), out)
    end
    os.remove(z)
  end)

  it('enforces p=reject after eight harmless From domains, and passes 65 aligned addresses', function()
    local from = {}
    for i = 0, 7 do from[#from + 1] = 'u@h' .. i .. '.example' end
    from[#from + 1] = 'ceo@example.com'
    local out, _, status = dmarc('check ' .. EXAMPLE .. '--evidence rbl ' .. SPOOFER,
      message(table.concat(from, ', ')))
    assert.equal(0, status)
    assert.truthy(out:find('dmarc=fail (p=reject dis=reject reason=too_many_domains ' ..
      'multiple_domains too_many_domains) header.from=example.com policy.dmarc=reject', 1, true), out)
    assert.truthy(out:find('\nDecision: reject 550 5.7.1 Rejected by DMARC policy for example.com', 1, true))
    from = {}
    for i = 1, 65 do from[i] = 'u' .. i .. '@example.com' end
    out = dmarc('check ' .. EXAMPLE .. '--ip 192.0.2.10 --mail-from news@example.com',
      message(table.concat(from, ', ')))
    assert.truthy(out:find('dmarc=pass (p=reject dis=none) header.from=example.com policy.dmarc=none',
      1, true), out)
  end)

  it('evaluates a From a mail reader shows; does not accept one nobody can read', function()
    local deep = string.rep('(', 33) .. string.rep(')', 33) .. ' ceo@example.com'
    for _, from in ipairs({ 'CEO\r <ceo@example.com>', deep, '<ceo@example.com> CEO',
                            'ceo@example.com (CEO' }) do
      local out, _, status = dmarc('check ' .. EXAMPLE .. '--evidence rbl ' .. SPOOFER, message(from))
      assert.equal(0, status)
      assert.truthy(out:find('dmarc=fail (p=reject dis=reject from_syntax from_lenient) ' ..
        'header.from=example.com policy.dmarc=reject', 1, true), out)
      assert.truthy(out:find('\nDecision: reject 550 5.7.1', 1, true), out)
    end
    local out = dmarc('check ' .. EXAMPLE .. SPOOFER, message('"ceo@example.com" <x@evil.example'))
    assert.truthy(out:find('dmarc=none (no_author_domain from_syntax from_unread)', 1, true), out)
    assert.truthy(out:find('\nDecision: folder "Junk" (disposition quarantine; local_policy: ' ..
      'From field not read strictly (RFC 9989 11.5))\n', 1, true), out)
    -- Beside a readable From field of a p=none domain: not accepted either.
    local z = env.tmpname()
    env.write_file(z, '_dmarc.attacker.example. TXT "v=DMARC1; p=none"\n')
    out = dmarc('check --zone ' .. env.shell_quote(z) .. ' --roll 0 ' .. SPOOFER,
      message('"ceo@example.com" <x@evil.example\r\nFrom: me@attacker.example'))
    os.remove(z)
    assert.truthy(out:find('dmarc=fail (p=none dis=none applied=quarantine override=local_policy: ' ..
      'From field not read strictly \\(RFC 9989 11.5\\) multiple_from from_syntax from_unread) ' ..
      'header.from=attacker.example policy.dmarc=quarantine', 1, true), out)
    assert.truthy(out:find('\nDecision: folder "Junk"', 1, true), out)
  end)
end)

describe('dmarc inspect', function()
  local function zone_file(text)
    local z = env.tmpname()
    env.write_file(z, text)
    return z
  end

  it('shows the walk, the domains and the effective tags', function()
    local out, _, status = dmarc('inspect --zone examples/example.zone example.com')
    assert.equal(0, status)
    assert.truthy(out:find('_dmarc.example.com TXT -> noerror', 1, true))
    assert.truthy(out:find('Policy domain:  example.com', 1, true))
    assert.truthy(out:find('Org domain:     example.com', 1, true))
    assert.truthy(out:find('\n  sp +reject +%(inherits p%)'))
    assert.truthy(out:find('\n  adkim +r +%(default%)'))
  end)

  it('walks from a subdomain to the Org Domain record [DISC-5]', function()
    local out, _, status = dmarc('inspect --zone examples/example.zone --json a.b.example.com')
    assert.equal(0, status)
    local obj = cjson.decode(out)
    assert.equal('example.com', obj.policy_domain)
    assert.equal('_dmarc.a.b.example.com', obj.walk[1].name)
    assert.equal('nxdomain', obj.walk[1].rcode)
  end)

  it('warns about what receivers will ignore, and exits 0 when a policy applies', function()
    local z = zone_file([[
_dmarc.example.com. TXT "v=DMARC1; p=none; pct=50; P=reject; foo=bar; rua=mailto:r@reports.example.net"
]])
    local out, _, status = dmarc('inspect --json --zone ' .. env.shell_quote(z) .. ' example.com')
    os.remove(z)
    assert.equal(0, status)
    local obj = cjson.decode(out)
    local codes = {}
    for _, w in ipairs(obj.warnings) do codes[w.code] = true end
    assert.is_true(codes.historic_tag)     -- [POL-5]
    assert.is_true(codes.tag_case)         -- [REC-3]
    assert.is_true(codes.unknown_tag)      -- [REC-4]
    assert.is_true(codes.rua_unauthorised) -- [RUA-3]
    assert.same({}, obj.errors)
  end)

  it('reads V=DMARC1 as the record it is, without blaming a missing ";"', function()
    local z = zone_file([[
_dmarc.example.com. TXT "V=DMARC1; p=reject; rua=mailto:d@example.com"
]])
    local out, _, status = dmarc('inspect --zone ' .. env.shell_quote(z) .. ' example.com')
    local json = dmarc('inspect --json --zone ' .. env.shell_quote(z) .. ' example.com')
    os.remove(z)
    assert.equal(0, status)
    assert.truthy(out:find('Unauthenticated mail: dmarc=fail, policy reject, applied reject', 1, true))
    assert.truthy(out:find('Record:         V=DMARC1; p=reject', 1, true))
    assert.falsy(out:find('then ";"', 1, true))
    assert.falsy(out:find('unknown tag and ignored', 1, true))
    assert.truthy(out:find('Warning: tag "V" is not in lowercase: it is read as the version', 1, true))
    local obj = cjson.decode(json)
    assert.same({}, obj.errors)
    assert.equal('example.com', obj.policy_domain)
  end)

  it('accepts an authorised external report address [RUA-3] [RUA-4]', function()
    local z = zone_file([[
_dmarc.example.com. TXT "v=DMARC1; p=reject; rua=mailto:r@reports.example.net"
*._report._dmarc.reports.example.net. TXT "v=DMARC1"
]])
    local out, _, status = dmarc('inspect --json --zone ' .. env.shell_quote(z) .. ' example.com')
    os.remove(z)
    assert.equal(0, status)
    local obj = cjson.decode(out)
    assert.same({}, obj.warnings)
  end)

  it('walks to the TLD even when the domain has its own record [DISC-6]', function()
    local z = zone_file([[
_dmarc.shop.example. TXT "v=DMARC1; p=reject"
_dmarc.example. TXT "v=DMARC1; p=none"
]])
    local out, _, status = dmarc('inspect --json --zone ' .. env.shell_quote(z) .. ' shop.example')
    os.remove(z)
    assert.equal(0, status)
    local obj = cjson.decode(out)
    assert.equal('shop.example', obj.policy_domain)
    assert.equal('example', obj.org_domain) -- the literal [DISC-6] rule
    assert.equal('_dmarc.example', obj.walk[2].name)
    local codes = {}
    for _, w in ipairs(obj.warnings) do codes[w.code] = true end
    assert.is_true(codes.tld_record)
  end)

  it('flags p=none without rua and a TLD record without psd=y', function()
    local z = zone_file([[
_dmarc.example. TXT "v=DMARC1; p=none"
]])
    local out, _, status = dmarc('inspect --json --zone ' .. env.shell_quote(z) .. ' shop.example')
    os.remove(z)
    assert.equal(0, status)
    local obj = cjson.decode(out)
    local codes = {}
    for _, w in ipairs(obj.warnings) do codes[w.code] = true end
    assert.is_true(codes.none_without_rua)
    assert.is_true(codes.tld_record)
  end)

  it('exits 1 on errors: no record, duplicates, unusable record, DNS failure', function()
    local z = zone_file([[
_dmarc.dup.example. TXT "v=DMARC1; p=none"
_dmarc.dup.example. TXT "v=DMARC1; p=reject"
_dmarc.twice.example. TXT "v=DMARC1; p=none; p=reject"
]])
    local q = env.shell_quote(z)
    local _, _, status = dmarc('inspect --zone ' .. q .. ' nothing.example')
    assert.equal(1, status)
    local out
    out, _, status = dmarc('inspect --json --zone ' .. q .. ' dup.example')
    assert.equal(1, status)
    assert.equal('duplicate_records', cjson.decode(out).errors[1].code)
    out, _, status = dmarc('inspect --json --zone ' .. q .. ' twice.example')
    assert.equal(1, status)
    assert.equal('permerror', cjson.decode(out).result)
    os.remove(z)
  end)

  it('refuses bad usage: exit 2', function()
    local _, err, status = dmarc('inspect')
    assert.equal(2, status)
    clean_error(err)
    _, err, status = dmarc('inspect --zone examples/example.zone bad..name')
    assert.equal(2, status)
    clean_error(err)
    _, err, status = dmarc('inspect --frob example.com')
    assert.equal(2, status)
    clean_error(err)
  end)
end)
