# Lua C modules, built once per runtime into $(BUILD)/<runtime>/dmarc/<name>.so.
#   dmarc.core  : bindings/dmarc_core.c + the sans-I/O core (+ the libpsl adapter)
#   dmarc.redis : bindings/dmarc_redis.c, the hiredis client (override store, report rows)
#   dmarc.io    : bindings/dmarc_io*.c + adapters/src/{dns,zone,spf,dkim}* (resolvers, libspf2,
#                 libopendkim)
#   dmarc.xml   : bindings/dmarc_xml.c + core/src/util.c, libxml2, zlib, libcrypto (reading
#                 aggregate reports: ingest; gzip and HMAC for the reports we send)
# A module is built when its binding source exists. Modules link -shared without -llua
# (the host process provides Lua) and export luaopen_* only (bindings/exports.map):
# dmarc.io takes what it needs of the core from libdmarc.a, hidden inside it. `make print-sources` lists each module's C sources,
# which tests/check-rockspec compares with the rockspec.

LUA_RUNTIMES ?= $(LUA_PC) $(filter-out $(LUA_PC),lua5.4 luajit)
# Install directories, under PREFIX/LIBDIR unless set (LuaRocks' and dh-lua's layout):
# Lua 5.4 modules in LUA_CMOD/LUA_LMOD, LuaJIT (Lua 5.1 ABI, rspamd's Lua) in
# LUAJIT_CMOD/LUAJIT_LMOD. Debian: make install PREFIX=/usr LIBDIR=/usr/lib/<multiarch>.
LUA_CMOD    ?= $(LIBDIR)/lua/5.4
LUA_LMOD    ?= $(PREFIX)/share/lua/5.4
LUAJIT_CMOD ?= $(LIBDIR)/lua/5.1
LUAJIT_LMOD ?= $(PREFIX)/share/lua/5.1
CMOD_lua5.4 = $(LUA_CMOD)
LMOD_lua5.4 = $(LUA_LMOD)
CMOD_luajit = $(LUAJIT_CMOD)
LMOD_luajit = $(LUAJIT_LMOD)

MOD_core_SRCS  := bindings/dmarc_core.c
MOD_core_LIBS   = $(CORE_LIBS)
MOD_redis_SRCS := $(wildcard bindings/dmarc_redis.c)
MOD_redis_LIBS := $(shell $(PKG_CONFIG) --libs hiredis 2>/dev/null)
MOD_io_SRCS    := $(sort $(wildcard bindings/dmarc_io*.c))
MOD_io_ADAPTERS := $(filter-out adapters/src/psl.c,$(sort $(wildcard adapters/src/*.c)))
MOD_io_LIBS     = -lspf2 -lopendkim -lldns $(CORE_LIBS)
# Built when libxml2, zlib and libcrypto headers are installed (libxml2-dev, zlib1g-dev,
# libssl-dev); without them
# the other modules still build and the ingest specs say the module is missing.
MOD_xml_SRCS   := $(if $(shell $(PKG_CONFIG) --exists libxml-2.0 zlib libcrypto && echo y),$(wildcard bindings/dmarc_xml.c))
MOD_xml_CFLAGS := $(shell $(PKG_CONFIG) --cflags libxml-2.0 zlib libcrypto 2>/dev/null)
MOD_xml_LIBS   := $(shell $(PKG_CONFIG) --libs libxml-2.0 zlib libcrypto 2>/dev/null)
MOD_xml_ADAPTERS := core/src/util.c # dmarc_hash, the library's one hash
LUA_CMODULES := $(foreach m,core redis io xml,$(if $(MOD_$(m)_SRCS),$(m)))

LUA_TARGETS :=

# $(1) runtime, $(2) module name
define lua_module
$$(BUILD)/$(1)/dmarc/$(2).so: $$(patsubst bindings/%.c,$$(BUILD)/$(1)/obj/%.o,$$(MOD_$(2)_SRCS)) \
    $$(patsubst %.c,$$(BUILD)/obj/%.o,$$(MOD_$(2)_ADAPTERS)) $$(if $$(filter core,$(2)),$$(CORE_OBJS)) \
    $$(if $$(filter io,$(2)),$$(LIB_A)) bindings/exports.map
	@mkdir -p $$(dir $$@)
	$$(CC) -shared -Wl,--version-script=bindings/exports.map $$(DMARC_LDFLAGS) $$(LDFLAGS) -o $$@ \
	    $$(filter-out %.map,$$^) $$(MOD_$(2)_LIBS)
LUA_TARGETS += $$(BUILD)/$(1)/dmarc/$(2).so
endef

define lua_runtime
$(1)_LUA_CFLAGS := $$(shell $$(PKG_CONFIG) --cflags $(1))
$$(BUILD)/$(1)/obj/%.o: bindings/%.c $$(wildcard bindings/*.h core/include/*.h adapters/include/*.h)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(CPPFLAGS) $$(DMARC_CFLAGS) $$($(1)_LUA_CFLAGS) $$(MOD_$$(*:dmarc_%=%)_CFLAGS) $$(CFLAGS) -c $$< -o $$@
$$(foreach m,$$(LUA_CMODULES),$$(eval $$(call lua_module,$(1),$$(m))))
endef

$(foreach r,$(LUA_RUNTIMES),$(if $(shell $(PKG_CONFIG) --exists $(r) && echo y),$(eval $(call lua_runtime,$(r)))))

lua: $(LUA_TARGETS)

print-sources:
	@$(foreach m,$(LUA_CMODULES),echo "dmarc.$(m): $(sort $(MOD_$(m)_SRCS) $(MOD_$(m)_ADAPTERS) $(if $(filter core io,$(m)),$(CORE_SRCS)))";)

# Every runtime built (lua5.4, luajit) into its own directories; bin/dmarc runs on LUA_PC
# and is told where that runtime's modules went, so an install under any PREFIX works.
install-lua: lua
	@set -e; for r in $(LUA_RUNTIMES); do \
	  [ -d $(BUILD)/$$r/dmarc ] || continue; \
	  case $$r in lua5.4) c='$(CMOD_lua5.4)' l='$(LMOD_lua5.4)';; \
	              luajit) c='$(CMOD_luajit)' l='$(LMOD_luajit)';; *) continue;; esac; \
	  install -d "$(DESTDIR)$$c/dmarc" "$(DESTDIR)$$l"; \
	  install -m 755 $(BUILD)/$$r/dmarc/*.so "$(DESTDIR)$$c/dmarc/"; \
	  install -m 644 lua/dmarc.lua "$(DESTDIR)$$l/dmarc.lua"; \
	  (cd lua && find dmarc -name '*.lua') | while read -r f; do \
	    install -d "$(DESTDIR)$$l/$$(dirname "$$f")"; \
	    install -m 644 "lua/$$f" "$(DESTDIR)$$l/$$f"; done; \
	done
	install -d $(DESTDIR)$(BINDIR)
	sed -e '1s|.*|#!/usr/bin/env $(LUA_PC)|' \
	    -e "s|^local INSTALL_LMOD, INSTALL_CMOD = nil, nil\$$|local INSTALL_LMOD, INSTALL_CMOD = '$(LMOD_$(LUA_PC))', '$(CMOD_$(LUA_PC))'|" \
	    bin/dmarc > $(DESTDIR)$(BINDIR)/dmarc
	chmod 755 $(DESTDIR)$(BINDIR)/dmarc
