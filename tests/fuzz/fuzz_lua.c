/*
** libFuzzer driver for the parsers written in Lua (and the Lua C modules they
** call): it embeds Lua 5.4, links the four C modules in (dmarc.core, dmarc.io,
** dmarc.redis, dmarc.xml; package.preload, so their code is instrumented like
** the driver) and runs tests/fuzz/lua/<target>.lua, which returns a function
** called once per input with the input as a string.
**
** The target is named at build time (-DFUZZ_LUA_TARGET="message") or by the
** environment (DMARC_FUZZ_TARGET=message), which the replay build uses. The
** Lua modules are read from $DMARC_FUZZ_ROOT/lua (default: the current
** directory, the repository root under make).
**
** A Lua error escaping the target function is a finding: the modules' contract
** is that bad data gives nil, message, code and only misuse raises. The target
** scripts assert their invariants with error(), so both end in abort(), which
** libFuzzer and tests/fuzz/replay.c report.
**
** Coverage of the Lua code: libFuzzer sees the C code's edges only; with
** FUZZ_LUA_COVERAGE a line hook hashes (function, previous line, line) into
** libFuzzer's extra counters, so new paths through the Lua parsers count as
** new coverage too.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int luaopen_dmarc_core(lua_State *L);
int luaopen_dmarc_io(lua_State *L);
int luaopen_dmarc_redis(lua_State *L);
int luaopen_dmarc_xml(lua_State *L);

/* Room for a root directory plus a module path. */
#define FUZZ_LUA_PATH_MAX 4096
/* Inputs between two full collections: keeps the heap (and ASan's view of it) small. */
#define FUZZ_LUA_GC_EVERY 256

static lua_State *fuzz_L;
static int fuzz_fn_ref = LUA_NOREF;
static unsigned long fuzz_runs;

#ifdef FUZZ_LUA_COVERAGE
#define FUZZ_LUA_COUNTERS (1u << 16)
__attribute__((
    used,
    section("__libfuzzer_extra_counters"))) static uint8_t fuzz_lua_counters[FUZZ_LUA_COUNTERS];
static uintptr_t fuzz_prev;

static void fuzz_line_hook(lua_State *L, lua_Debug *ar)
{
    uintptr_t here;
    if (lua_getinfo(L, "S", ar) == 0)
        return;
    /* The source string of a loaded chunk is interned and lives as long as the
    ** chunk: its address names the file. */
    here = ((uintptr_t)ar->source * 31u) ^ ((uintptr_t)ar->currentline * 2654435761u);
    fuzz_lua_counters[(here ^ (fuzz_prev >> 1)) % FUZZ_LUA_COUNTERS]++;
    fuzz_prev = here;
}
#endif

static void fuzz_die(const char *what, const char *msg)
{
    fprintf(stderr, "fuzz_lua: %s: %s\n", what, msg != NULL ? msg : "(no message)");
    abort();
}

static int fuzz_traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    luaL_traceback(L, L, msg != NULL ? msg : "(error object is not a string)", 1);
    return 1;
}

static void fuzz_preload(lua_State *L, const char *name, lua_CFunction open)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, open);
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
}

static void fuzz_init(void)
{
    const char *target = getenv("DMARC_FUZZ_TARGET");
    const char *root = getenv("DMARC_FUZZ_ROOT");
    char path[FUZZ_LUA_PATH_MAX];
    lua_State *L;

#ifdef FUZZ_LUA_TARGET
    if (target == NULL || target[0] == '\0')
        target = FUZZ_LUA_TARGET;
#endif
    if (target == NULL || target[0] == '\0')
        fuzz_die("init", "no target: set DMARC_FUZZ_TARGET");
    if (root == NULL || root[0] == '\0')
        root = ".";
    L = luaL_newstate();
    if (L == NULL)
        fuzz_die("init", "out of memory");
    luaL_openlibs(L);
    fuzz_preload(L, "dmarc.core", luaopen_dmarc_core);
    fuzz_preload(L, "dmarc.io", luaopen_dmarc_io);
    fuzz_preload(L, "dmarc.redis", luaopen_dmarc_redis);
    fuzz_preload(L, "dmarc.xml", luaopen_dmarc_xml);
    lua_getglobal(L, "package");
    snprintf(path, sizeof path, "%s/lua/?.lua;%s/lua/?/init.lua;%s/tests/fuzz/lua/?.lua", root,
             root, root);
    lua_pushstring(L, path);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
    snprintf(path, sizeof path, "%s/tests/fuzz/lua/%s.lua", root, target);
    lua_pushcfunction(L, fuzz_traceback);
    if (luaL_loadfile(L, path) != LUA_OK)
        fuzz_die(path, lua_tostring(L, -1));
    if (lua_pcall(L, 0, 1, -2) != LUA_OK)
        fuzz_die(path, lua_tostring(L, -1));
    if (!lua_isfunction(L, -1))
        fuzz_die(path, "the target script must return a function");
    fuzz_fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);
#ifdef FUZZ_LUA_COVERAGE
    lua_sethook(L, fuzz_line_hook, LUA_MASKLINE, 0);
#endif
    fuzz_L = L;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L;
    if (fuzz_L == NULL)
        fuzz_init();
    L = fuzz_L;
    lua_pushcfunction(L, fuzz_traceback);
    lua_rawgeti(L, LUA_REGISTRYINDEX, fuzz_fn_ref);
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 0, -3) != LUA_OK)
        fuzz_die("error escaped the target", lua_tostring(L, -1));
    lua_pop(L, 1);
    if (++fuzz_runs % FUZZ_LUA_GC_EVERY == 0)
        lua_gc(L, LUA_GCCOLLECT, 0);
    return 0;
}
