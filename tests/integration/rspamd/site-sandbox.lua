-- luacheck: read globals folder
-- Site policy of the `sandbox` rspamd instance: the defaults, and a decide hook that, for
-- mail from reject.test, runs a pattern whose backtracking on its subject would take the
-- worker for ages (line 12): the sandbox refuses it at once.
return {
  treat = {
    quarantine = folder 'Junk',
  },
  decide = function(verdict)
    if verdict.author_domain == 'reject.test' then
      local s = ('a'):rep(30000)
      local found = s:find('a-a-a-a-a-a-a-b')
      if found then return 'accept' end
    end
  end,
}
