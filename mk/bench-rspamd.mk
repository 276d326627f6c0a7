# rspamd benchmark: scan throughput with the dmarc_engine plugin against rspamd's built-in
# dmarc module, same run, same configuration otherwise (tests/bench/rspamd_bench; it runs
# in its own network namespace and starts its own unbound, redis-server and rspamd).
# Include from the Makefile:  include mk/bench-rspamd.mk

.PHONY: bench-rspamd

bench-rspamd: lua
	tests/bench/rspamd_bench
