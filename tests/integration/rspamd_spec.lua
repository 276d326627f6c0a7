-- The rspamd plugin inside a real rspamd 3.4, on loopback (issue 6).
--
-- tests/integration/setup-rspamd.sh starts unbound with tests/integration/rspamd/zone.conf.in,
-- signs the corpus (tests/integration/rspamd/corpus) and starts three rspamd instances:
-- rspamd's built-in dmarc module (the reference: the harness is proven with it first), and
-- our plugin with the default site script and with the strict one. Each case scans one
-- message with rspamc --json (with --ip, --from, --helo, --rcpt) and checks symbols,
-- actions, added headers and the Redis report rows.
package.path = './tests/integration/rspamd/?.lua;' .. package.path
local h = require 'helpers'

-- Senders: the documentation ranges of zone.conf.in.
local SPOOFER = '203.0.113.66'

describe('rspamd harness', function()
  it('started unbound, signed the corpus and started rspamd', function()
    assert.is_string(h.corpus)
    assert.is_string(h.instances.builtin, h.setup_error)
  end)

  it('started rspamd with the dmarc_engine plugin', function()
    assert.equal('', h.setup_error)
    assert.is_string(h.instances.engine)
    assert.is_string(h.instances.strict)
  end)
end)

-- The reference: rspamd's own dmarc module, same config otherwise. Only behaviour that the
-- built-in module gets right is pinned here; where it differs from the RFCs (no np, no t=y,
-- non-PSL names), our plugin's cases below say what is right.
describe('built-in dmarc module (reference)', function()
  local addr = h.instances.builtin

  it('aligned SPF pass gives DMARC_POLICY_ALLOW [domain, policy]', function()
    local r = h.scan(addr, { file = 'spf-pass.eml', ip = '192.0.2.10', from = 'alice@pass.test' })
    assert.is_table(h.options(r, 'R_SPF_ALLOW'))
    assert.same({ 'pass.test', 'reject' }, h.options(r, 'DMARC_POLICY_ALLOW'))
    assert.equal('no action', r.action)
  end)

  it('aligned DKIM pass gives DMARC_POLICY_ALLOW', function()
    local r = h.scan(addr, { file = 'dkim-pass.eml', ip = '198.51.100.7', from = 'b@esp.test' })
    assert.same({ 'pass.test:s=sel1' }, h.options(r, 'R_DKIM_ALLOW'))
    assert.same({ 'pass.test', 'reject' }, h.options(r, 'DMARC_POLICY_ALLOW'))
  end)

  it('spoofed p=reject gives DMARC_POLICY_REJECT and the configured reject action', function()
    local r = h.scan(addr, { file = 'reject-spoof.eml', ip = SPOOFER, from = 'ceo@reject.test' })
    assert.same({ 'reject.test : No valid SPF, No valid DKIM', 'reject' },
      h.options(r, 'DMARC_POLICY_REJECT'))
    assert.equal('reject', r.action)
  end)

  it('p=quarantine gives DMARC_POLICY_QUARANTINE', function()
    local r = h.scan(addr, { file = 'quarantine.eml', ip = SPOOFER, from = 'info@quar.test' })
    assert.same({ 'quar.test : No valid SPF, No valid DKIM', 'quarantine' },
      h.options(r, 'DMARC_POLICY_QUARANTINE'))
  end)

  it('SERVFAIL and REFUSED on the policy lookup give DMARC_DNSFAIL', function()
    local r = h.scan(addr, { file = 'servfail.eml', ip = SPOOFER, from = 'x@servfail.test' })
    assert.same({ 'servfail.test : server fail' }, h.options(r, 'DMARC_DNSFAIL'))
    r = h.scan(addr, { file = 'refused.eml', ip = SPOOFER, from = 'x@refused.test' })
    assert.same({ 'refused.test : query refused' }, h.options(r, 'DMARC_DNSFAIL'))
  end)

  it('no record gives DMARC_NA, an unusable one DMARC_BAD_POLICY', function()
    local r = h.scan(addr, { file = 'none.eml', ip = SPOOFER, from = 'x@none.test' })
    assert.same({ 'none.test' }, h.options(r, 'DMARC_NA'))
    r = h.scan(addr, { file = 'bad.eml', ip = SPOOFER, from = 'x@bad.test' })
    assert.is_table(h.options(r, 'DMARC_BAD_POLICY'))
  end)

  it('verifies the ARC chain of the forwarded message (ARC_ALLOW)', function()
    local r = h.scan(addr, { file = 'arc-forwarded.eml', ip = '198.51.100.50',
                             from = 'team-bounces@forwarder.test' })
    assert.same({ 'forwarder.test:s=arc1:i=1' }, h.options(r, 'ARC_ALLOW'))
    assert.same({ 'reject.test:s=sel1' }, h.options(r, 'R_DKIM_REJECT'))
  end)
end)
