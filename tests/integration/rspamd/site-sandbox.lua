-- luacheck: read globals folder
-- Site policy of the `sandbox` rspamd instance: the defaults, and a decide hook that does
-- nothing for most messages.
return {
  treat = {
    quarantine = folder 'Junk',
  },
  decide = function(verdict)
    if verdict.author_domain == 'nobody.test' then return 'accept' end
  end,
}
