-- Site policy: what a DMARC failure does here. Loaded by `dmarc check --site` and by the
-- rspamd plugin alike; docs/site-policy.md describes every field and the defaults.
-- luacheck: read globals folder score
return {
  treat = {
    -- A failing message whose domain asks for quarantine goes to the Junk folder
    -- (so does p=reject: with no other evidence it is handled as quarantine, RFC 9989 7.4).
    quarantine = folder 'Junk',
  },
  recipient_sets = {
    -- Except for recipients in the Redis set `score-only` (`dmarc override add rcpt
    -- alice@example.com --set score-only`): their copy only gets 6 more spam points.
    ['score-only'] = { quarantine = score(6) },
  },
  overrides = {
    -- Never reject mail from our partner, whatever other evidence says.
    { org = 'example-partner.org', at_most = 'quarantine', comment = 'partner, never rejected' },
  },
  -- Trust ARC chains sealed by our mailing-list server, when they pass (RFC 8617 §7.2).
  trusted_arc_sealers = { 'lists.example.net' },
}
