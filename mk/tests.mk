# Test suites. Each runs through tests/run-suite, which records its counts in
# $(BUILD)/test-logs/; `make check` runs them all (-k: one failing suite does not
# hide the others) and ends with tests/tally's "N passed, N failed".

CMOCKA_CFLAGS := $(shell $(PKG_CONFIG) --cflags cmocka)
CMOCKA_LIBS   := $(shell $(PKG_CONFIG) --libs cmocka)
C_TEST_SRCS   := $(sort $(wildcard tests/c/test_*.c))
C_TESTS        = $(patsubst tests/c/%.c,$(BUILD)/tests/%,$(C_TEST_SRCS))
TEST_LOGS     := build/test-logs
RUN_SUITE     := tests/run-suite $(TEST_LOGS)
BUSTED_RUNTIMES := $(foreach r,lua5.4 luajit,$(if $(shell command -v $(r)),$(r)))

# Per-test extras: TEST_CFLAGS_<name> / TEST_LIBS_<name> (e.g. jansson for the shared vectors).
TEST_CFLAGS_test_vectors := $(shell $(PKG_CONFIG) --cflags jansson)
TEST_LIBS_test_vectors   := $(shell $(PKG_CONFIG) --libs jansson)

$(BUILD)/tests/%: tests/c/%.c $(LIB_A) $(wildcard tests/c/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(DMARC_CFLAGS) $(CMOCKA_CFLAGS) $(TEST_CFLAGS_$*) -Itests/c $(CFLAGS) -o $@ $< \
	    $(LIB_A) $(CORE_LIBS) $(CMOCKA_LIBS) $(TEST_LIBS_$*) $(DMARC_LDFLAGS) $(LDFLAGS)

check:
	@rm -rf $(TEST_LOGS)
	@$(MAKE) --no-print-directory -k check-all; status=$$?; tests/tally $(TEST_LOGS) || exit 1; exit $$status

check-all: check-lint check-layout check-examples check-c check-san check-valgrind check-fuzz check-lua check-memcheck check-plugin check-rockspec check-integration

check-memcheck: lua
	@$(RUN_SUITE) memcheck -- tests/memcheck/run

check-examples: all
	@$(RUN_SUITE) examples -- tests/examples-check

check-lint:
	@$(RUN_SUITE) lint -- tests/lint

check-c: $(C_TESTS)
	@for t in $(C_TESTS); do $(RUN_SUITE) c-$$(basename $$t) -- $$t || fail=1; done; exit $${fail:-0}

# The same C tests under AddressSanitizer + UndefinedBehaviorSanitizer.
check-san:
	@$(MAKE) --no-print-directory SANITIZE=address,undefined BUILD=build/san san-tests

san-tests: $(C_TESTS)
	@for t in $(C_TESTS); do ASAN_OPTIONS=detect_leaks=1 $(RUN_SUITE) san-$$(basename $$t) -- $$t || fail=1; done; exit $${fail:-0}

check-valgrind: $(C_TESTS)
	@for t in $(C_TESTS); do $(RUN_SUITE) vg-$$(basename $$t) -- valgrind -q --error-exitcode=99 \
	    --leak-check=full --errors-for-leak-kinds=definite,indirect $$t || fail=1; done; exit $${fail:-0}

# Fuzz targets are libFuzzer harnesses (clang); `make check` replays their seed corpora
# through a plain driver (tests/fuzz/replay.c), under the sanitizers.
FUZZ_SRCS := $(sort $(wildcard tests/fuzz/fuzz_*.c))
check-fuzz:
	@$(MAKE) --no-print-directory SANITIZE=address,undefined BUILD=build/san fuzz-replay

fuzz-replay: $(patsubst tests/fuzz/%.c,$(BUILD)/fuzz-replay/%,$(FUZZ_SRCS))
	@for t in $^; do n=$$(basename $$t); $(RUN_SUITE) fuzz-$$n -- $$t tests/fuzz/corpus/$${n#fuzz_} || fail=1; done; exit $${fail:-0}

$(BUILD)/fuzz-replay/%: tests/fuzz/%.c tests/fuzz/replay.c $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(DMARC_CFLAGS) $(CFLAGS) -o $@ $< tests/fuzz/replay.c $(LIB_A) $(CORE_LIBS) $(DMARC_LDFLAGS)

fuzz:
	@mkdir -p build/fuzz
	for f in $(FUZZ_SRCS); do n=$$(basename $$f .c); \
	  clang-14 -g -O1 -fsanitize=fuzzer,address,undefined -Icore/include -Icore/src $(IDN_CFLAGS) \
	    $(PSL_CFLAGS) -o build/fuzz/$$n $$f $(CORE_SRCS) $(CORE_LIBS) || exit 1; done
	@echo "run e.g.: build/fuzz/fuzz_record -max_total_time=60 tests/fuzz/corpus/record"

check-lua: lua
	@for r in $(BUSTED_RUNTIMES); do $(RUN_SUITE) busted-$$r -- env DMARC_BUILD=$(BUILD)/$$r \
	    LUA_CPATH='$(BUILD)/'$$r'/?.so;;' $$r /usr/bin/busted -o utfTerminal tests/lua || fail=1; done; exit $${fail:-0}

# Integration suites start their own servers (redis-server, unbound, rspamd) on loopback
# ports, inside a network namespace with only `lo`, and stop them by PID.
check-integration: all
	@if [ -x tests/integration/run ]; then $(RUN_SUITE) integration -- tests/integration/run; fi

# Layout rules of the C side: modules export luaopen_* only; internal.h stays in core/src.
check-layout: lua
	@$(RUN_SUITE) layout -- tests/check-layout $(BUILD)

check-rockspec:
	@if [ -x tests/check-rockspec ]; then $(RUN_SUITE) rockspec -- tests/check-rockspec; fi

bench: all
	@if [ -x tests/bench/run ]; then tests/bench/run; fi
