# The rspamd plugin's own targets. Include from the Makefile (after mk/tests.mk, whose
# RUN_SUITE and BUSTED_RUNTIMES they use):  include mk/bench-rspamd.mk
#
#   install-rspamd-plugin  the plugin and its parts into RSPAMD_PLUGINS_DIR (/etc/rspamd/plugins.d)
#   check-plugin   tests/plugin/*_spec.lua: the plugin under busted with a fake rspamd, on
#                  every Lua runtime present (rspamd's is LuaJIT)
#   bench-rspamd   scan throughput with the dmarc_engine plugin against rspamd's built-in
#                  dmarc module, same run, same configuration otherwise
#                  (tests/bench/rspamd_bench: its own network namespace, unbound,
#                  redis-server and rspamd)

.PHONY: check-plugin bench-rspamd install-rspamd-plugin

# The rspamd plugin: dmarc_engine.lua and its parts (dmarc_engine/), one step.
RSPAMD_PLUGINS_DIR ?= /etc/rspamd/plugins.d
install-rspamd-plugin:
	install -d $(DESTDIR)$(RSPAMD_PLUGINS_DIR)/dmarc_engine
	install -m 644 plugins/rspamd/dmarc_engine.lua $(DESTDIR)$(RSPAMD_PLUGINS_DIR)/
	install -m 644 plugins/rspamd/dmarc_engine/*.lua $(DESTDIR)$(RSPAMD_PLUGINS_DIR)/dmarc_engine/

check-plugin: lua
	@for r in $(BUSTED_RUNTIMES); do $(RUN_SUITE) plugin-$$r -- env LUA_PATH='./lua/?.lua;;' \
	    LUA_CPATH='$(BUILD)/'$$r'/?.so;;' $$r /usr/bin/busted -o utfTerminal tests/plugin \
	    || fail=1; done; exit $${fail:-0}

bench-rspamd: lua
	tests/bench/rspamd_bench
