-- luacheck: read globals folder score
-- Site policy of the `engine` rspamd instance (tests/integration/setup-rspamd.sh): the
-- README's example with this test's names. The RFC 9989 §7.4 default holds: p=reject with
-- no other evidence is handled as quarantine [POL-3].
return {
  treat = {
    quarantine = folder 'Junk',
  },
  recipient_sets = {
    -- Recipients added with `dmarc override add rcpt ADDRESS --set score-only` get a score.
    ['score-only'] = { quarantine = score(6) },
  },
  -- The forwarder's ARC seal is trusted when its chain passes [ARC-2].
  trusted_arc_sealers = { 'forwarder.test' },
}
