-- luacheck: read globals folder score
-- Site policy of the `strict` rspamd instance: the default one plus the one-line switch to
-- unconditional reject [OPEN-6].
return {
  unconditional_reject = true,
  treat = {
    quarantine = folder 'Junk',
  },
  recipient_sets = {
    ['score-only'] = { quarantine = score(6) },
  },
  trusted_arc_sealers = { 'forwarder.test' },
}
