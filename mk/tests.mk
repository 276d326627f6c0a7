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

check-all: check-lint check-layout check-examples check-c check-san check-valgrind check-fuzz check-lua check-lua-san check-memcheck check-plugin check-rockspec check-integration
check-all: check-install
# CI (tools/setup check) also builds, installs and tests the Debian packages.
check-all: $(if $(filter 1,$(DMARC_CHECK_PACKAGES)),check-packages)

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

# Fuzz targets are libFuzzer harnesses (clang): tests/fuzz/fuzz_<name>.c for a C parser,
# tests/fuzz/lua/<name>.lua for a Lua one (run by tests/fuzz/fuzz_lua.c, which embeds Lua and
# links the four C modules in). `make check` replays every seed corpus tests/fuzz/corpus/<name>/
# through a plain driver (tests/fuzz/replay.c), under the sanitizers; tests/fuzz/check-targets
# fails when a parser of untrusted input has no target. `make fuzz` builds the libFuzzer
# binaries into build/fuzz, `make fuzz-long` runs each target FUZZ_SECONDS on one core.
FUZZ_SRCS := $(filter-out tests/fuzz/fuzz_lua.c,$(sort $(wildcard tests/fuzz/fuzz_*.c)))
FUZZ_LUA_TARGETS := $(filter-out common,$(basename $(notdir $(wildcard tests/fuzz/lua/*.lua))))
FUZZ_ADAPTERS := adapters/src
# Per-target extras: the adapters a harness needs besides the core (dns_answer compiles
# dns_ldns.c in itself, to reach its file-local reply parser).
FUZZ_EXTRA_zone       := $(FUZZ_ADAPTERS)/zone.c $(FUZZ_ADAPTERS)/dns.c
FUZZ_EXTRA_dns_answer := $(FUZZ_ADAPTERS)/dns.c
FUZZ_LIBS_dns_answer := -lldns
FUZZ_EXTRA_dns_reply  := $(FUZZ_ADAPTERS)/dns.c $(FUZZ_ADAPTERS)/dns_ldns.c
FUZZ_LIBS_dns_reply  := -lldns
FUZZ_LUA_CSRCS = $(foreach m,$(LUA_CMODULES),$(MOD_$(m)_SRCS)) $(MOD_io_ADAPTERS)
FUZZ_LUA_LIBS  = $(shell $(PKG_CONFIG) --libs lua5.4) $(foreach m,$(LUA_CMODULES),$(MOD_$(m)_LIBS)) -lm
FUZZ_LUA_CFLAGS = $(shell $(PKG_CONFIG) --cflags lua5.4) $(MOD_xml_CFLAGS) -I$(FUZZ_ADAPTERS)

check-fuzz:
	@$(MAKE) --no-print-directory SANITIZE=address,undefined BUILD=build/san fuzz-replay
	@$(RUN_SUITE) fuzz-targets -- tests/fuzz/check-targets

fuzz-replay: $(patsubst tests/fuzz/%.c,$(BUILD)/fuzz-replay/%,$(FUZZ_SRCS)) $(BUILD)/fuzz-replay/fuzz_lua
	@for t in $(filter-out %/fuzz_lua,$^); do n=$$(basename $$t); \
	  $(RUN_SUITE) fuzz-$$n -- $$t tests/fuzz/corpus/$${n#fuzz_} || fail=1; done; \
	for n in $(FUZZ_LUA_TARGETS); do ASAN_OPTIONS=detect_leaks=0 DMARC_FUZZ_TARGET=$$n \
	  $(RUN_SUITE) fuzz-lua-$$n -- $(BUILD)/fuzz-replay/fuzz_lua tests/fuzz/corpus/$$n || fail=1; \
	done; exit $${fail:-0}

$(BUILD)/fuzz-replay/%: tests/fuzz/%.c tests/fuzz/replay.c $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(DMARC_CFLAGS) -I$(FUZZ_ADAPTERS) $(CFLAGS) -o $@ $< tests/fuzz/replay.c \
	    $(patsubst %.c,$(BUILD)/obj/%.o,$(FUZZ_EXTRA_$(*:fuzz_%=%))) $(LIB_A) $(CORE_LIBS) \
	    $(FUZZ_LIBS_$(*:fuzz_%=%)) \
	    $(DMARC_LDFLAGS)

$(BUILD)/fuzz-replay/fuzz_zone $(BUILD)/fuzz-replay/fuzz_dns_answer: \
    $(patsubst %.c,$(BUILD)/obj/%.o,$(FUZZ_EXTRA_zone))
$(BUILD)/fuzz-replay/fuzz_dns_reply: $(patsubst %.c,$(BUILD)/obj/%.o,$(FUZZ_EXTRA_dns_reply))

# The Lua driver links the modules' objects of the lua5.4 build (same flags as the .so files).
$(BUILD)/fuzz-replay/fuzz_lua: tests/fuzz/fuzz_lua.c tests/fuzz/replay.c $(LUA_TARGETS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(DMARC_CFLAGS) $(FUZZ_LUA_CFLAGS) $(CFLAGS) -o $@ $< tests/fuzz/replay.c \
	    $(patsubst bindings/%.c,$(BUILD)/lua5.4/obj/%.o,$(filter bindings/%,$(FUZZ_LUA_CSRCS))) \
	    $(patsubst %.c,$(BUILD)/obj/%.o,$(MOD_io_ADAPTERS)) $(CORE_OBJS) $(FUZZ_LUA_LIBS) \
	    $(DMARC_LDFLAGS) -Wl,-E

FUZZ_CC    ?= clang-14
FUZZ_FLAGS := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
              -Icore/include -Icore/src -Iadapters/include -I$(FUZZ_ADAPTERS) $(IDN_CFLAGS) $(PSL_CFLAGS)
fuzz: $(patsubst tests/fuzz/%.c,build/fuzz/%,$(FUZZ_SRCS)) build/fuzz/fuzz_lua
	@echo "run e.g.: make fuzz-long FUZZ_SECONDS=60 [FUZZ_TARGETS='record xml']"

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(CORE_SRCS) $(FUZZ_EXTRA_zone)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(CORE_SRCS) $(FUZZ_EXTRA_$*) $(CORE_LIBS) $(FUZZ_LIBS_$*)

build/fuzz/fuzz_lua: tests/fuzz/fuzz_lua.c $(FUZZ_LUA_CSRCS) $(CORE_SRCS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -DFUZZ_LUA_COVERAGE $(FUZZ_LUA_CFLAGS) -o $@ $< $(FUZZ_LUA_CSRCS) \
	    $(CORE_SRCS) $(FUZZ_LUA_LIBS) -Wl,-E

FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= $(patsubst tests/fuzz/fuzz_%.c,%,$(FUZZ_SRCS)) $(FUZZ_LUA_TARGETS)
.PHONY: fuzz-long
fuzz-long: fuzz
	@FUZZ_SECONDS=$(FUZZ_SECONDS) tests/fuzz/fuzz-long $(FUZZ_TARGETS)

check-lua: lua
	@for r in $(BUSTED_RUNTIMES); do $(RUN_SUITE) busted-$$r -- env DMARC_BUILD=$(BUILD)/$$r \
	    LUA_CPATH='$(BUILD)/'$$r'/?.so;;' $$r /usr/bin/busted -o utfTerminal tests/lua || fail=1; done; exit $${fail:-0}

# The Lua suites (lua5.4) against the four C modules built with ASan + UBSan (build/san, as
# check-san): lua5.4 itself is not instrumented, so the ASan runtime is preloaded. Leaks are
# not checked: Lua and busted keep memory until exit by design.
LIBASAN = $(shell $(CC) -print-file-name=libasan.so)
.PHONY: check-lua-san lua-san-tests
check-lua-san:
	@$(MAKE) --no-print-directory SANITIZE=address,undefined BUILD=build/san lua-san-tests

lua-san-tests: lua
	@$(RUN_SUITE) busted-lua5.4-san -- env LD_PRELOAD=$(LIBASAN) ASAN_OPTIONS=detect_leaks=0 \
	    UBSAN_OPTIONS=print_stacktrace=1 DMARC_BUILD=$(BUILD)/lua5.4 \
	    LUA_CPATH='$(BUILD)/lua5.4/?.so;;' lua5.4 /usr/bin/busted -o utfTerminal tests/lua

# make soak: rspamd + redis-server + unbound on loopback under faults, and what is lost
# (tests/soak/run; SOAK_MESSAGES, default 100000). Not part of `make check`.
.PHONY: soak
soak: all
	@tests/soak/run

# Integration suites start their own servers (redis-server, unbound, rspamd) on loopback
# ports, inside a network namespace with only `lo`, and stop them by PID.
check-integration: all
	@if [ -x tests/integration/run ]; then $(RUN_SUITE) integration -- tests/integration/run; fi

# Layout rules of the C side: modules export luaopen_* only; the core's private header is
# used in core/src only.
check-layout: lua
	@$(RUN_SUITE) layout -- tests/check-layout $(BUILD)

check-rockspec:
	@if [ -x tests/check-rockspec ]; then $(RUN_SUITE) rockspec -- tests/check-rockspec; fi

bench: all
	@if [ -x tests/bench/run ]; then tests/bench/run; fi

# The Debian packages, built, installed on this machine and tested as installed
# (tests/packages/run; root). Part of `make check` when DMARC_CHECK_PACKAGES=1, as
# tools/setup check (CI) sets it.
check-packages: all
	@$(RUN_SUITE) packages -- tests/packages/run

# `make install` under a temporary PREFIX (and with DESTDIR), tested as installed.
check-install: all
	@$(RUN_SUITE) install -- tests/install-check
