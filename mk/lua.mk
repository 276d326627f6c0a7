# Lua modules, built once per runtime into $(BUILD)/<runtime>/dmarc/*.so.
#   dmarc.core : lua/dmarc_core.c + the sans-I/O core (+ libpsl adapter)
#   dmarc.io   : lua/dmarc_io*.c + the I/O adapters in core/adapters (resolvers, libspf2,
#                libopendkim, hiredis); built when lua/dmarc_io.c exists.
# Modules link -shared without -llua (the host process provides Lua).

LUA_RUNTIMES ?= $(LUA_PC) $(filter-out $(LUA_PC),lua5.4 luajit)
LUA_CMOD := $(shell $(PKG_CONFIG) --variable=INSTALL_CMOD $(LUA_PC))
LUA_LMOD := $(shell $(PKG_CONFIG) --variable=INSTALL_LMOD $(LUA_PC))

CORE_BIND_SRCS := lua/dmarc_core.c
IO_BIND_SRCS   := $(sort $(wildcard lua/dmarc_io*.c))
IO_SRCS        := $(filter-out core/adapters/psl.c,$(sort $(wildcard core/adapters/*.c)))
IO_OBJS        := $(patsubst %.c,$(BUILD)/obj/%.o,$(IO_SRCS))
IO_LIBS        := -lspf2 -lopendkim $(shell $(PKG_CONFIG) --libs hiredis 2>/dev/null) \
                  $(shell $(PKG_CONFIG) --libs libldns 2>/dev/null || echo -lldns)
LUA_MODULES_LUA := $(sort $(wildcard lua/*.lua lua/dmarc/*.lua))

LUA_TARGETS :=

define lua_runtime
$(1)_LUA_CFLAGS := $$(shell $$(PKG_CONFIG) --cflags $(1))

$$(BUILD)/$(1)/obj/%.o: lua/%.c $$(wildcard lua/*.h core/include/*.h core/adapters/*.h)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(CPPFLAGS) $$(DMARC_CFLAGS) $$($(1)_LUA_CFLAGS) -Icore/adapters $$(CFLAGS) -c $$< -o $$@

$$(BUILD)/$(1)/dmarc/core.so: $$(patsubst lua/%.c,$$(BUILD)/$(1)/obj/%.o,$$(CORE_BIND_SRCS)) $$(CORE_OBJS)
	@mkdir -p $$(dir $$@)
	$$(CC) -shared $$(DMARC_LDFLAGS) $$(LDFLAGS) -o $$@ $$^ $$(CORE_LIBS)

LUA_TARGETS += $$(BUILD)/$(1)/dmarc/core.so

ifneq ($$(IO_BIND_SRCS),)
$$(BUILD)/$(1)/dmarc/io.so: $$(patsubst lua/%.c,$$(BUILD)/$(1)/obj/%.o,$$(IO_BIND_SRCS)) $$(IO_OBJS) $$(CORE_OBJS)
	@mkdir -p $$(dir $$@)
	$$(CC) -shared $$(DMARC_LDFLAGS) $$(LDFLAGS) -o $$@ $$^ $$(IO_LIBS) $$(CORE_LIBS)

LUA_TARGETS += $$(BUILD)/$(1)/dmarc/io.so
endif
endef

$(foreach r,$(LUA_RUNTIMES),$(if $(shell $(PKG_CONFIG) --exists $(r) && echo y),$(eval $(call lua_runtime,$(r)))))

lua: $(LUA_TARGETS)

install-lua: lua
	install -d $(DESTDIR)$(LUA_CMOD)/dmarc $(DESTDIR)$(LUA_LMOD)/dmarc $(DESTDIR)$(BINDIR)
	install -m 755 $(BUILD)/$(LUA_PC)/dmarc/*.so $(DESTDIR)$(LUA_CMOD)/dmarc/
	install -m 644 lua/dmarc.lua $(DESTDIR)$(LUA_LMOD)/dmarc.lua
	for f in lua/dmarc/*.lua; do install -m 644 $$f $(DESTDIR)$(LUA_LMOD)/dmarc/; done
	sed -e '1s|.*|#!/usr/bin/env $(LUA_PC)|' bin/dmarc > $(DESTDIR)$(BINDIR)/dmarc
	chmod 755 $(DESTDIR)$(BINDIR)/dmarc
