/*
** The only place that tests LUA_VERSION_NUM / LUAJIT_VERSION: one source
** builds against Lua 5.4 and LuaJIT 2.1 (which reports 5.1). Shim only what
** the bindings use (LPeg's lptypes.h approach).
*/
#ifndef DMARC_LUA_COMPAT_H
#define DMARC_LUA_COMPAT_H

#include <lauxlib.h>
#include <lua.h>

#if LUA_VERSION_NUM == 501
/* LuaJIT 2.1 has luaL_setfuncs, luaL_newlib, luaL_testudata,
** luaL_setmetatable and lua_tointegerx; it lacks the following. */
#define lua_rawlen(L, i) lua_objlen((L), (i))
#define lua_newuserdatauv(L, sz, nuv) lua_newuserdata((L), (sz))
static inline int dmarc_compat_absindex(lua_State *L, int i)
{
    return (i > 0 || i <= LUA_REGISTRYINDEX) ? i : lua_gettop(L) + i + 1;
}
#define lua_absindex(L, i) dmarc_compat_absindex((L), (i))
/* One uservalue slot, kept in the userdata's environment table. */
static inline void dmarc_compat_setuservalue(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    lua_createtable(L, 1, 0);
    lua_insert(L, -2);
    lua_rawseti(L, -2, 1);
    lua_setfenv(L, idx);
}
static inline int dmarc_compat_getuservalue(lua_State *L, int idx)
{
    lua_getfenv(L, idx);
    if (lua_istable(L, -1)) {
        lua_rawgeti(L, -1, 1);
        lua_remove(L, -2);
    } else {
        lua_pop(L, 1);
        lua_pushnil(L);
    }
    return lua_type(L, -1);
}
#define DMARC_SETUSERVALUE(L, i) dmarc_compat_setuservalue((L), (i))
#define DMARC_GETUSERVALUE(L, i) dmarc_compat_getuservalue((L), (i))
#else
#define DMARC_SETUSERVALUE(L, i) lua_setiuservalue((L), (i), 1)
#define DMARC_GETUSERVALUE(L, i) lua_getiuservalue((L), (i), 1)
#endif

#endif /* DMARC_LUA_COMPAT_H */
