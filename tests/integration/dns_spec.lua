-- The DNS layer, SPF, DKIM and DMARC against a real DNS server on loopback (unbound, started
-- by tests/integration/setup-dns.sh with data made fresh for this run, messages signed by
-- python3-dkim). NXDOMAIN, NODATA, SERVFAIL, REFUSED and timeouts come from the server
-- itself; temperror must reach the top unchanged [DISC-10].
-- The helpers and modules of the work tree, whatever path busted was given.
package.path = './lua/?.lua;./tests/lua/helpers/?.lua;' .. package.path
local env = require 'test_env'
local dio = require 'dmarc.io'
local auth = require 'dmarc.receive.auth'
local dmarc = require 'dmarc'

local SERVER = os.getenv('DMARC_TEST_DNS')
local SETUP_ERROR = os.getenv('DMARC_TEST_DNS_ERROR')
local DATA = os.getenv('DMARC_TEST_DNS_DATA')

local function msg(name)
  return env.read_file(DATA .. '/msgs/' .. name)
end

local function resolver(opts)
  local o = { server = SERVER, timeout = 1, retries = 0 }
  for k, v in pairs(opts or {}) do o[k] = v end
  return assert(dio.resolver(o))
end

describe('DNS integration (unbound on loopback)', function()
  if SETUP_ERROR and SETUP_ERROR ~= '' then
    it('has its DNS server', function() error(SETUP_ERROR) end)
    return
  end
  if not SERVER then
    pending('DMARC_TEST_DNS is not set: run through tests/integration/run')
    return
  end

  describe('resolver', function()
    it('keeps the five outcomes apart [DISC-4] [DISC-12]', function()
      local r = resolver()
      assert.equal('noerror', (r:resolve('_dmarc.sender.test', 'TXT')))
      assert.equal('nodata', (r:resolve('sender.test', 'MX')))
      assert.equal('nodata', (r:resolve('deep.sender.test', 'A'))) -- empty non-terminal
      assert.equal('nxdomain', (r:resolve('nope.sender.test', 'A')))
      assert.equal('servfail', (r:resolve('_dmarc.servfail.test', 'TXT')))
      assert.equal('servfail', (r:resolve('_dmarc.refused.test', 'TXT'))) -- REFUSED
      local t0 = os.time()
      assert.equal('timeout', (r:resolve('_dmarc.timeout.test', 'TXT')))
      assert.truthy(os.time() - t0 < 5)
      -- One dead zone does not make the server look dead for the next question.
      assert.equal('noerror', (r:resolve('sender.test', 'TXT')))
    end)

    it('reads TXT strings joined, TTLs and the SOA minimum of negative answers', function()
      local r = resolver()
      local q = r:query('rsa._domainkey.sender.test', 'TXT')
      assert.equal(1, #q.records)
      assert.truthy(q.records[1]:find('^v=DKIM1; k=rsa; p=MII'))
      assert.equal(300, q.ttl)
      assert.truthy(#q.records[1] > 255) -- several character-strings, one record [REC-1]
      q = r:query('nope.sender.test', 'TXT')
      assert.equal('nxdomain', q.rcode)
      assert.truthy(q.ttl > 0)
    end)

    it('caches positive and negative answers, never failures [DISC-11]', function()
      local r = resolver()
      r:resolve('_dmarc.sender.test', 'TXT')
      r:resolve('nope.sender.test', 'TXT')
      r:resolve('_dmarc.servfail.test', 'TXT')
      local before = r:stats().upstream
      assert.is_true(r:query('_dmarc.sender.test', 'TXT').from_cache)
      assert.is_true(r:query('nope.sender.test', 'TXT').from_cache)
      assert.is_false(r:query('_dmarc.servfail.test', 'TXT').from_cache)
      assert.equal(before + 1, r:stats().upstream)
    end)

    it('follows a CNAME-delegated DKIM key to another zone', function()
      local q = resolver():query('s1._domainkey.brand.test', 'TXT')
      assert.equal('noerror', q.rcode)
      assert.equal(1, q.cname_hops)
      assert.equal('s1.domainkey.saas.test', q.name)
      assert.truthy(q.records[1]:find('^v=DKIM1'))
    end)
  end)

  describe('SPF', function()
    local r = resolver()
    local function spf(ip, mail_from, helo)
      return assert(r:spf{ ip = ip, mail_from = mail_from, helo = helo })
    end

    it('passes, fails and follows includes', function()
      assert.equal('pass', spf('192.0.2.10', 'a@sender.test').result)
      assert.equal('pass', spf('2001:db8::25', 'a@sender.test').result)
      assert.equal('fail', spf('203.0.113.9', 'a@sender.test').result)
      assert.equal('pass', spf('198.51.100.9', 'a@inc.test').result)
      assert.equal('softfail', spf('203.0.113.9', 'a@_spf.inc.test').result)
      assert.equal('none', spf('203.0.113.9', 'a@nothing.test').result)
    end)

    it('enforces the RFC 7208 §4.6.4 limits', function()
      assert.equal('permerror', spf('10.0.0.11', 'a@many.test').result)
      assert.equal('permerror', spf('10.9.9.9', 'a@voids.test').result)
    end)

    it('turns server failures into temperror', function()
      assert.equal('temperror', spf('192.0.2.1', 'a@servfail.test').result)
      assert.equal('temperror', spf('192.0.2.1', 'a@spfslow.test').result)
    end)
  end)

  describe('DKIM', function()
    local r = resolver()
    local function sigs(name)
      local res = assert(r:dkim(msg(name)))
      local by = {}
      for _, s in ipairs(res.signatures) do by[s.selector .. '.' .. s.domain] = s end
      return by, res
    end

    it('verifies RSA-2048 and Ed25519 signatures', function()
      assert.equal('pass', sigs('pass-rsa.eml')['rsa.sender.test'].result)
      local ed = sigs('pass-ed25519.eml')['ed.sender.test']
      assert.equal('pass', ed.result)
      assert.equal('ed25519-sha256', ed.algorithm)
    end)

    it('verifies every one of several signatures', function()
      local by, res = sigs('multi.eml')
      assert.equal(3, res.total)
      assert.equal('pass', by['rsa.sender.test'].result)
      assert.equal('pass', by['ed.sender.test'].result)
      assert.equal('pass', by['k1.esp.test'].result)
    end)

    it('fails a broken body', function()
      local s = sigs('broken-body.eml')['rsa.sender.test']
      assert.equal('fail', s.result)
    end)

    it('passes l= with the unsigned tail flagged', function()
      local s = sigs('l-tag.eml')['rsa.sender.test']
      assert.equal('pass', s.result)
      assert.is_true(s.body_truncated)
    end)

    it('flags a From field added after signing', function()
      local s = sigs('injected-from.eml')['rsa.sender.test']
      assert.equal('pass', s.result)
      assert.is_true(s.unsigned_from)
    end)

    it('finds a key through a CNAME', function()
      assert.equal('pass', sigs('cname-key.eml')['s1.brand.test'].result)
    end)

    it('gives temperror when the key lookup fails, permerror when there is no key', function()
      assert.equal('temperror', sigs('key-servfail.eml')['k.keys.servfail.test'].result)
      assert.equal('temperror', sigs('key-timeout.eml')['k.keys.timeout.test'].result)
      assert.equal('temperror', sigs('key-refused.eml')['k.keys.refused.test'].result)
      assert.equal('permerror', sigs('no-key.eml')['missing.sender.test'].result)
    end)
  end)

  describe('DMARC end to end', function()
    local r = resolver()
    local function check(name, opts)
      opts = opts or {}
      opts.roll = 0
      return assert(auth.check(r, msg(name), opts))
    end

    it('passes aligned mail and walks to the Org Domain record [DISC-5]', function()
      assert.equal('pass', check('pass-rsa.eml').dmarc.result)
      local res = check('from-deep.eml')
      assert.equal('pass', res.dmarc.result)
      assert.equal('sender.test', res.dmarc.policy_domain)
      assert.equal('sender.test', res.dmarc.org_domain)
    end)

    it('fails unauthenticated mail with the policy of the domain', function()
      local res = check('unsigned.eml', { ip = '203.0.113.9', mail_from = 'a@sender.test' })
      assert.equal('fail', res.dmarc.result)
      assert.equal('reject', res.dmarc.applied)
    end)

    it('never passes a message with an injected From [OPEN-5]', function()
      local res = check('injected-from.eml')
      assert.are_not.equal('pass', res.dmarc.result)
    end)

    it('gives temperror, not fail, when the policy cannot be fetched [DISC-10]', function()
      assert.equal('temperror', check('from-servfail.eml').dmarc.result)
      assert.equal('temperror', check('from-timeout.eml').dmarc.result)
    end)

    it('finds the Org Domain below a psd=y record [DISC-6]', function()
      local out = assert(dmarc.evaluate{ from = 'x@a.b.psd.test', roll = 0,
        resolve = function(n, t) return r:resolve(n, t) end })
      assert.equal('b.psd.test', out.org_domain)
      assert.equal('psd.test', out.policy_domain)
    end)
  end)

  describe('the commands', function()
    local function dmarc_cmd(args)
      return env.run(env.dmarc_cmd(args .. ' 2>&1'))
    end

    it('dmarc check asks the server given with --dns-server', function()
      local out, status = dmarc_cmd('check --dns-server ' .. SERVER ..
        ' --ip 192.0.2.10 --mail-from news@sender.test ' .. DATA .. '/msgs/multi.eml')
      assert.equal(0, status)
      assert.truthy(out:find('dmarc=pass', 1, true))
      assert.truthy(out:find('header.d=esp.test', 1, true))
      out, status = dmarc_cmd('check --dns-server ' .. SERVER .. ' --dns-timeout 1 ' .. DATA ..
        '/msgs/from-timeout.eml')
      assert.equal(0, status)
      assert.truthy(out:find('dmarc=temperror', 1, true))
    end)

    it('dmarc inspect reports DNS failures as errors', function()
      local out, status = dmarc_cmd('inspect --dns-server ' .. SERVER .. ' sender.test')
      assert.equal(0, status)
      assert.truthy(out:find('Policy domain:  sender.test', 1, true))
      out, status = dmarc_cmd('inspect --dns-server ' .. SERVER .. ' servfail.test')
      assert.equal(1, status)
      assert.truthy(out:find('servfail', 1, true))
    end)
  end)
end)
