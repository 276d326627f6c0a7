/*
** What the four Lua C modules (dmarc.core, dmarc.io, dmarc.redis, dmarc.xml)
** share: the one exported symbol per module, the option checker, the error
** vocabulary (README "Error contract") and the helpers that push results.
** A binding marshals between Lua and C and decides nothing; everything here
** is mechanical.
**
** Conventions every binding follows:
** - contract misuse (wrong type, unknown option, wrong state, closed object)
**   raises; so does running out of memory;
** - bad data returns nil, message, code: code is one of the tokens of the
**   README's error contract, the same token for the same C status in every
**   module (ldmarc_status_code), the message is for people.
*/
#ifndef DMARC_BINDING_H
#define DMARC_BINDING_H

#include <stdint.h>
#include <string.h>

#include "compat.h"
#include "dmarc.h"

/* luaopen_* is the only symbol a module exports: the rest is compiled with
** -fvisibility=hidden or DMARC_STATIC and linked with bindings/exports.map. */
#if defined(__GNUC__) && __GNUC__ >= 4
#define LDMARC_EXPORT __attribute__((visibility("default")))
#else
#define LDMARC_EXPORT
#endif

/* ** {====================================================================
** Errors
** ===================================================================== */

/* The code for a C status: one mapping for every module. DMARC_ERR_NOMEM
** never reaches Lua as a code (it raises); 'io' is the adapters' word for a
** failure outside the process (a file, a socket, a server). */
static inline const char *ldmarc_status_code(dmarc_status st)
{
    switch (st) {
    case DMARC_ERR_SYNTAX:
        return "syntax";
    case DMARC_ERR_LIMIT:
        return "limit";
    case DMARC_ERR_INVAL:
        return "invalid";
    case DMARC_ERR_STATE:
        return "state";
    case DMARC_ERR_NOMEM:
        return "nomem";
    case DMARC_OK:
    case DMARC_NEED_DNS:
        break;
    }
    return "state"; /* a status that is not an error, where one was expected */
}

/* nil, message, code; returns 3. */
static inline int ldmarc_fail(lua_State *L, const char *message, const char *code)
{
    lua_pushnil(L);
    lua_pushstring(L, message);
    lua_pushstring(L, code);
    return 3;
}

/* A failed C call: out of memory raises; anything else is nil,
** "<what>: <dmarc_strerror>", ldmarc_status_code. */
static inline int ldmarc_status_fail(lua_State *L, const char *what, dmarc_status st)
{
    if (st == DMARC_ERR_NOMEM)
        return luaL_error(L, "%s: %s", what, dmarc_strerror(st));
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", what, dmarc_strerror(st));
    lua_pushstring(L, ldmarc_status_code(st));
    return 3;
}

/* }==================================================================== */

/* ** {====================================================================
** Options: a table of named fields, every name known
** ===================================================================== */

/* Raises "<what>: unknown option '<key>'" for a key of the table at @idx
** that is not in @names (NULL-terminated): a misspelt option must never
** fall back to a default silently. nil or none at @idx is no options. */
static inline void ldmarc_check_options(lua_State *L, int idx, const char *what,
                                        const char *const *names)
{
    if (lua_isnoneornil(L, idx))
        return;
    idx = lua_absindex(L, idx);
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        const char *key;
        size_t i;
        lua_pop(L, 1); /* the value; the key stays for lua_next */
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "%s: option names must be strings", what);
        key = lua_tostring(L, -1);
        for (i = 0; names[i] != NULL; i++)
            if (strcmp(key, names[i]) == 0)
                break;
        if (names[i] == NULL)
            luaL_error(L, "%s: unknown option '%s'", what, key);
    }
}

/* Pushes field @key of the options table at @idx (nil when @idx is none or
** nil); raises naming the option when it is neither nil nor of @type.
** Returns whether it is set. The value stays on the stack either way. */
static inline int ldmarc_opt_field(lua_State *L, int idx, const char *what, const char *key,
                                   int type)
{
    int t;
    if (lua_isnoneornil(L, idx)) {
        lua_pushnil(L);
        return 0;
    }
    lua_getfield(L, idx, key);
    t = lua_type(L, -1);
    if (t != LUA_TNIL && t != type)
        luaL_error(L, "%s: option '%s': %s expected, got %s", what, key, lua_typename(L, type),
                   lua_typename(L, t));
    return t != LUA_TNIL;
}

/* }==================================================================== */

/* ** {====================================================================
** Pushing results into the table on top of the stack
** ===================================================================== */

static inline void ldmarc_set_string(lua_State *L, const char *key, const char *s, size_t len)
{
    lua_pushlstring(L, s, len);
    lua_setfield(L, -2, key);
}

/* NULL leaves the field absent (nil). */
static inline void ldmarc_set_cstring(lua_State *L, const char *key, const char *s)
{
    if (s == NULL)
        return;
    lua_pushstring(L, s);
    lua_setfield(L, -2, key);
}

static inline void ldmarc_set_bool(lua_State *L, const char *key, bool b)
{
    lua_pushboolean(L, b);
    lua_setfield(L, -2, key);
}

/* Counts beyond lua_Integer's range go out as floats rather than wrap. */
static inline void ldmarc_push_count(lua_State *L, uint64_t v)
{
    if (v > (uint64_t)INT64_MAX)
        lua_pushnumber(L, (lua_Number)v);
    else
        lua_pushinteger(L, (lua_Integer)v);
}

static inline void ldmarc_set_integer(lua_State *L, const char *key, uint64_t v)
{
    ldmarc_push_count(L, v);
    lua_setfield(L, -2, key);
}

/* A metatable @name with @meta, __index = @methods (when not NULL) and
** __name (LuaJIT does not set it; messages and __tostring read it). Leaves
** nothing on the stack. */
static inline void ldmarc_new_class(lua_State *L, const char *name, const luaL_Reg *meta,
                                    const luaL_Reg *methods)
{
    luaL_newmetatable(L, name);
    luaL_setfuncs(L, meta, 0);
    if (methods != NULL) {
        lua_newtable(L);
        luaL_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
    }
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
}

/* }==================================================================== */

#endif /* DMARC_BINDING_H */
