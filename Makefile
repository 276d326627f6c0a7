# lua-dmarc: sans-I/O DMARC engine (C), Lua binding, scanner plugins.
#
# Variables a user may set (never overwritten here):
#   PREFIX (/usr/local)  DESTDIR  CC  CFLAGS  LDFLAGS  PKG_CONFIG
#   LIBDIR INCLUDEDIR BINDIR MANDIR (under PREFIX unless set)
#   LUA_PC      pkg-config name of the Lua to build the module for: lua5.4 (default) or luajit
#   WITH_LIBPSL 1 (default): build the libpsl Org Domain adapter into libdmarc (RFC 7489 mode)
#   WERROR      1: warnings are errors (CI sets it; the default too)
#   SANITIZE    e.g. address,undefined: instrumented build into build/san-*
#
# Targets: all check check-c check-lua check-integration check-rockspec install bench lint
#          fuzz coverage clean

PREFIX     ?= /usr/local
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR     ?= $(PREFIX)/bin
MANDIR     ?= $(PREFIX)/share/man
PKG_CONFIG ?= pkg-config
LUA_PC     ?= lua5.4
WITH_LIBPSL ?= 1
WERROR     ?= 1
CC         ?= cc
CFLAGS     ?= -O2 -g

VERSION := $(shell sed -n 's/^\#define DMARC_VERSION_STRING "\(.*\)"/\1/p' core/include/dmarc.h)

WARN := -std=c99 -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
        -Wwrite-strings -Wcast-qual -Wformat=2 -Wundef -Wvla
ifeq ($(WERROR),1)
WARN += -Werror
endif

ifneq ($(SANITIZE),)
SANFLAGS := -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
BUILD    ?= build/san
else
SANFLAGS :=
BUILD    ?= build
endif

IDN_CFLAGS := $(shell $(PKG_CONFIG) --cflags libidn2)
IDN_LIBS   := $(shell $(PKG_CONFIG) --libs libidn2)
ifeq ($(WITH_LIBPSL),1)
PSL_CFLAGS := $(shell $(PKG_CONFIG) --cflags libpsl) -DDMARC_WITH_LIBPSL=1
PSL_LIBS   := $(shell $(PKG_CONFIG) --libs libpsl)
endif

DMARC_CFLAGS = $(WARN) -D_POSIX_C_SOURCE=200809L -fPIC -fvisibility=hidden -Icore/include \
               -Iadapters/include -Icore/src $(IDN_CFLAGS) $(PSL_CFLAGS) $(SANFLAGS)
DMARC_LDFLAGS = $(SANFLAGS)

# The sans-I/O core. Adapters that do I/O or wrap I/O libraries live in adapters/.
CORE_SRCS    := $(sort $(wildcard core/src/*.c))
ifeq ($(WITH_LIBPSL),1)
CORE_SRCS    += adapters/src/psl.c
endif
CORE_OBJS    := $(patsubst %.c,$(BUILD)/obj/%.o,$(CORE_SRCS))
CORE_LIBS    := $(IDN_LIBS) $(PSL_LIBS)

LIB_A  := $(BUILD)/libdmarc.a
LIB_SO := $(BUILD)/libdmarc.so

.PHONY: all lib lua check check-all check-lint check-layout check-examples check-memcheck san-tests fuzz-replay print-sources install-lua man check-install check-packages check-c check-lua check-integration check-rockspec check-san \
        check-valgrind check-fuzz install bench lint fuzz coverage clean format

all: lib lua

lib: $(LIB_A) $(LIB_SO) $(BUILD)/dmarc.pc

$(BUILD)/obj/%.o: %.c $(wildcard core/include/*.h core/src/*.h adapters/include/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(DMARC_CFLAGS) $(CFLAGS) -c $< -o $@

$(LIB_A): $(CORE_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

$(LIB_SO): $(CORE_OBJS)
	$(CC) -shared -Wl,-soname,libdmarc.so.0 $(DMARC_LDFLAGS) $(LDFLAGS) -o $@ $^ $(CORE_LIBS)

# dmarc.pc names the directories of the install, so `make install` writes it again with the
# PREFIX/LIBDIR/INCLUDEDIR given then (`make && make install PREFIX=P` must say P).
PC_SED = sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	    -e 's|@VERSION@|$(VERSION)|' -e 's|@LIBS_PRIVATE@|$(CORE_LIBS)|' core/dmarc.pc.in
$(BUILD)/dmarc.pc: core/dmarc.pc.in core/include/dmarc.h
	@mkdir -p $(dir $@)
	$(PC_SED) > $@

# Installed headers: every one that declares symbols libdmarc.so exports.
PUBLIC_HEADERS := core/include/dmarc.h $(if $(filter 1,$(WITH_LIBPSL)),adapters/include/dmarc_psl.h)

# Man pages, generated from the `--help` text of bin/dmarc and each command (tools/gen-man).
man: lua
	@rm -rf $(BUILD)/man
	DMARC_BUILD=$(BUILD)/lua5.4 tools/gen-man bin/dmarc $(BUILD)/man

# ---------------------------------------------------------------------------
# Lua modules: one build per runtime, side by side (build/lua5.4, build/luajit)

include mk/lua.mk

# ---------------------------------------------------------------------------
# Tests. Every suite prints its own summary; tests/run-suite tallies them and the
# last line of `make check` is "N passed, N failed" over all of them.

include mk/tests.mk
include mk/bench-rspamd.mk

# ---------------------------------------------------------------------------

install: all man
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(BINDIR) \
	    $(DESTDIR)$(MANDIR)/man1
	install -m 644 $(PUBLIC_HEADERS) $(DESTDIR)$(INCLUDEDIR)/
	install -m 644 $(LIB_A) $(DESTDIR)$(LIBDIR)/libdmarc.a
	install -m 755 $(LIB_SO) $(DESTDIR)$(LIBDIR)/libdmarc.so.$(VERSION)
	ln -sf libdmarc.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libdmarc.so.0
	ln -sf libdmarc.so.0 $(DESTDIR)$(LIBDIR)/libdmarc.so
	$(PC_SED) > $(DESTDIR)$(LIBDIR)/pkgconfig/dmarc.pc
	install -m 644 $(BUILD)/man/*.1 $(DESTDIR)$(MANDIR)/man1/
	$(MAKE) install-lua

lint:
	clang-format --dry-run -Werror $(wildcard core/include/*.h core/src/*.[ch] adapters/src/*.c adapters/include/*.h bindings/*.[ch] tests/c/*.[ch] tests/fuzz/*.c tests/bench/*.c)
	cppcheck --quiet --error-exitcode=1 --enable=warning,portability --inline-suppr \
	    --suppress=missingIncludeSystem -Icore/include -Iadapters/include -Icore/src core/src adapters/src bindings
	luacheck --quiet lua plugins tests bin

format:
	clang-format -i $(wildcard core/include/*.h core/src/*.[ch] adapters/src/*.c adapters/include/*.h bindings/*.[ch] tests/c/*.[ch] tests/fuzz/*.c tests/bench/*.c)

clean:
	rm -rf build
