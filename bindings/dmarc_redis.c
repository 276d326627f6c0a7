/*
** dmarc.redis: a small blocking Redis client for the override store and the
** `dmarc override` command, on hiredis 0.14. Inside rspamd the plugin uses
** rspamd's own callback-style lua_redis instead; this module is for the CLI
** and for embedders that block anyway.
**
** Error contract (style.md, "Error conventions"):
**   - contract misuse (wrong types, a closed connection, too many arguments)
**     raises;
**   - a Redis error reply is data: nil, message, 'redis';
**   - a broken connection (refused, reset, timeout, EOF, an unreadable
**     reply) gives nil, message, 'io'; the connection stays broken and
**     every later call on it says so; the caller reconnects;
**   - an unknown option of connect{} raises (bindings/binding.h).
**
** Replies: bulk string -> string, integer -> integer, status -> {ok = text},
** array -> table. A nil reply is nil at the top level of :command() and
** false inside tables (arrays, pipeline results), so arrays never have
** holes; an error reply inside a table is {err = message}.
**
** Memory: a redisReply is owned by a "reply guard" userdata from the moment
** hiredis hands it over until it is freed, so a Lua error raised while the
** reply is converted (out of memory) never leaks it.
*/
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "binding.h"

#define LDMARC_REDIS_CONN_MT "dmarc.redis"
#define LDMARC_REDIS_GUARD_MT "dmarc.redis.reply"

/* Arguments in one command: an MGET of every key a decision needs stays far
** below this (see lua/dmarc/store.lua, MAX_KEYS). */
#define LDMARC_REDIS_MAX_ARGS 4096
/* Commands in one :pipeline() call. */
#define LDMARC_REDIS_MAX_PIPELINE 1024
/* Nesting of arrays in a reply (EXEC of SCAN replies is 3 deep). */
#define LDMARC_REDIS_MAX_DEPTH 8
/* Bounds of the timeout option, seconds. */
#define LDMARC_REDIS_MIN_TIMEOUT 0.001
#define LDMARC_REDIS_MAX_TIMEOUT 3600.0
#define LDMARC_REDIS_DEFAULT_TIMEOUT 1.0
#define LDMARC_REDIS_DEFAULT_HOST "127.0.0.1"
#define LDMARC_REDIS_DEFAULT_PORT 6379

typedef struct ldmarc_redis_conn {
    redisContext *ctx; /* NULL once closed */
    /* Replies still owed by the server after a pipeline that was cut short
    ** (a raise while converting): the stream is then out of step and the
    ** connection is treated as broken. */
    size_t pending;
} ldmarc_redis_conn;

/*
** {======================================================================
** SIGPIPE: hiredis writes with write(2), so a server that went away would
** kill a process that keeps the default SIGPIPE action (lua5.4, the CLI).
** Block the signal around each hiredis call and discard one it raised, so
** the failure shows up as EPIPE, an 'io' error. Nothing between block and
** restore may raise a Lua error.
** =======================================================================
*/
typedef struct sigpipe_guard {
    sigset_t old_mask;
    int was_pending;
} sigpipe_guard;

static void sigpipe_block(sigpipe_guard *g)
{
    sigset_t set, pending;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    sigemptyset(&pending);
    g->was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &set, &g->old_mask);
}

static void sigpipe_restore(const sigpipe_guard *g)
{
    sigset_t set, pending;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    sigemptyset(&pending);
    if (!g->was_pending && sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1) {
        const struct timespec no_wait = {0, 0};
        while (sigtimedwait(&set, NULL, &no_wait) == -1 && errno == EINTR) {
        }
    }
    pthread_sigmask(SIG_SETMASK, &g->old_mask, NULL);
}
/* }====================================================================== */

/*
** {======================================================================
** Reply guard and conversion
** =======================================================================
*/
static int ldmarc_redis_guard_gc(lua_State *L)
{
    redisReply **box = (redisReply **)luaL_checkudata(L, 1, LDMARC_REDIS_GUARD_MT);
    if (*box != NULL) {
        freeReplyObject(*box);
        *box = NULL;
    }
    return 0;
}

/* Pushes an empty guard; the caller stores the reply in it before any other
** Lua call. */
static redisReply **new_reply_guard(lua_State *L)
{
    redisReply **box = (redisReply **)lua_newuserdata(L, sizeof(*box));
    *box = NULL;
    luaL_setmetatable(L, LDMARC_REDIS_GUARD_MT);
    return box;
}

/* Frees the guarded reply now and pops the guard at stack index idx. */
static void release_reply_guard(lua_State *L, redisReply **box, int idx)
{
    if (*box != NULL) {
        freeReplyObject(*box);
        *box = NULL;
    }
    lua_remove(L, idx);
}

static void push_error_marker(lua_State *L, const char *msg, size_t len)
{
    lua_createtable(L, 0, 1);
    ldmarc_set_string(L, "err", msg, len);
}

/* Pushes one reply. in_table: nil -> false and error -> {err=} (no holes in
** arrays). May raise (memory): the reply is owned by a guard. */
static void push_reply(lua_State *L, const redisReply *r, int depth, int in_table)
{
    size_t i;
    luaL_checkstack(L, 4, "redis reply too deep");
    switch (r->type) {
    case REDIS_REPLY_STRING:
        lua_pushlstring(L, r->str, r->len);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushinteger(L, (lua_Integer)r->integer);
        break;
    case REDIS_REPLY_STATUS:
        lua_createtable(L, 0, 1);
        ldmarc_set_string(L, "ok", r->str, r->len);
        break;
    case REDIS_REPLY_ERROR:
        push_error_marker(L, r->str, r->len);
        break;
    case REDIS_REPLY_ARRAY:
        if (depth >= LDMARC_REDIS_MAX_DEPTH) {
            static const char too_deep[] = "reply nested too deeply";
            push_error_marker(L, too_deep, sizeof(too_deep) - 1);
            break;
        }
        lua_createtable(L, r->elements > (size_t)0x7fffffff ? 0 : (int)r->elements, 0);
        for (i = 0; i < r->elements; i++) {
            push_reply(L, r->element[i], depth + 1, 1);
            lua_rawseti(L, -2, (int)(i + 1));
        }
        break;
    case REDIS_REPLY_NIL:
    default:
        if (in_table) {
            lua_pushboolean(L, 0);
        } else {
            lua_pushnil(L);
        }
        break;
    }
}
/* }====================================================================== */

/*
** {======================================================================
** Connection object
** =======================================================================
*/
static ldmarc_redis_conn *check_conn(lua_State *L, int idx)
{
    ldmarc_redis_conn *conn = (ldmarc_redis_conn *)luaL_checkudata(L, idx, LDMARC_REDIS_CONN_MT);
    if (conn->ctx == NULL) {
        luaL_error(L, "attempt to use a closed dmarc.redis connection");
    }
    return conn;
}

/* Pushes nil, message, code for a broken connection; returns 3. */
static int push_io_failure(lua_State *L, const ldmarc_redis_conn *conn)
{
    lua_pushnil(L);
    if (conn->pending > 0) {
        lua_pushliteral(L, "redis connection out of step after an interrupted pipeline");
        lua_pushliteral(L, "io");
    } else if (conn->ctx->err != 0) {
        lua_pushstring(L, conn->ctx->errstr[0] != '\0' ? conn->ctx->errstr : "redis i/o error");
        lua_pushliteral(L, "io"); /* REDIS_ERR_PROTOCOL too: the message says */
    } else {
        lua_pushliteral(L, "redis i/o error");
        lua_pushliteral(L, "io");
    }
    return 3;
}

static int conn_is_broken(const ldmarc_redis_conn *conn)
{
    return conn->pending > 0 || conn->ctx->err != 0;
}

/* Reads the arguments at stack indexes [first, last] (strings or numbers)
** into argv/argvlen kept in a scratch userdata pushed on the stack. Numbers
** are converted in place on the stack, so the pointers stay valid while the
** arguments are there. Raises on misuse. */
static void collect_stack_args(lua_State *L, int first, int last, const char ***argv,
                               size_t **argvlen)
{
    int n = last - first + 1;
    int i;
    void *scratch;
    if (n < 1) {
        luaL_error(L, "dmarc.redis: a command needs at least its name");
    }
    if (n > LDMARC_REDIS_MAX_ARGS) {
        luaL_error(L, "dmarc.redis: more than %d arguments", LDMARC_REDIS_MAX_ARGS);
    }
    for (i = first; i <= last; i++) {
        int t = lua_type(L, i);
        if (t != LUA_TSTRING && t != LUA_TNUMBER) {
            luaL_argerror(L, i, "string or number expected");
        }
    }
    scratch = lua_newuserdata(L, (size_t)n * (sizeof(const char *) + sizeof(size_t)));
    *argv = (const char **)scratch;
    *argvlen = (size_t *)((char *)scratch + (size_t)n * sizeof(const char *));
    for (i = 0; i < n; i++) {
        (*argv)[i] = lua_tolstring(L, first + i, &(*argvlen)[i]);
    }
}

/***
** @function redis.connect(opts)
** Connects (blocking, with a timeout).
** @param {table} opts host (default 127.0.0.1), port (6379), path (unix socket; wins over
**   host/port), timeout (seconds, float, for connect and every read/write; default 1),
**   password (AUTH), db (SELECT)
** @return {conn} or nil, message, code ('io' | 'auth' | 'redis')
*/
static int ldmarc_redis_connect(lua_State *L)
{
    const char *host, *path, *password;
    size_t password_len = 0;
    lua_Integer port, db;
    lua_Number timeout;
    struct timeval tv;
    ldmarc_redis_conn *conn;
    sigpipe_guard sg;

    static const char *const names[] = {"host", "path", "port", "timeout", "password", "db", NULL};

    /* Read and check every option before anything is allocated. */
    luaL_checktype(L, 1, LUA_TTABLE);
    ldmarc_check_options(L, 1, "dmarc.redis.connect", names);
    lua_getfield(L, 1, "host");
    host = luaL_optstring(L, -1, LDMARC_REDIS_DEFAULT_HOST);
    lua_getfield(L, 1, "path");
    path = luaL_optstring(L, -1, NULL);
    lua_getfield(L, 1, "port");
    port = luaL_optinteger(L, -1, LDMARC_REDIS_DEFAULT_PORT);
    lua_getfield(L, 1, "timeout");
    timeout = luaL_optnumber(L, -1, LDMARC_REDIS_DEFAULT_TIMEOUT);
    lua_getfield(L, 1, "password");
    password = lua_isnil(L, -1) ? NULL : luaL_checklstring(L, -1, &password_len);
    lua_getfield(L, 1, "db");
    db = luaL_optinteger(L, -1, -1);
    if (port < 1 || port > 65535) {
        return luaL_error(L, "dmarc.redis.connect: port out of range");
    }
    if (!(timeout >= LDMARC_REDIS_MIN_TIMEOUT && timeout <= LDMARC_REDIS_MAX_TIMEOUT)) {
        return luaL_error(L, "dmarc.redis.connect: timeout must be between %f and %f seconds",
                          LDMARC_REDIS_MIN_TIMEOUT, LDMARC_REDIS_MAX_TIMEOUT);
    }
    if (lua_type(L, -1) != LUA_TNIL && (db < 0 || db > 0x7fffffff)) {
        return luaL_error(L, "dmarc.redis.connect: db out of range");
    }
    tv.tv_sec = (time_t)floor(timeout);
    tv.tv_usec = (suseconds_t)((timeout - floor(timeout)) * 1e6);

    /* Boxed object first, so __gc frees whatever is connected below. */
    conn = (ldmarc_redis_conn *)lua_newuserdata(L, sizeof(*conn));
    conn->ctx = NULL;
    conn->pending = 0;
    luaL_setmetatable(L, LDMARC_REDIS_CONN_MT);
    if (path != NULL) {
        conn->ctx = redisConnectUnixWithTimeout(path, tv);
    } else {
        conn->ctx = redisConnectWithTimeout(host, (int)port, tv);
    }
    if (conn->ctx == NULL) {
        return luaL_error(L, "dmarc.redis.connect: out of memory");
    }
    if (conn->ctx->err == 0 && redisSetTimeout(conn->ctx, tv) != REDIS_OK) {
        conn->ctx->err = REDIS_ERR_IO;
    }
    if (conn->ctx->err != 0) {
        lua_pushnil(L);
        lua_pushstring(L, conn->ctx->errstr[0] != '\0' ? conn->ctx->errstr : "connect failed");
        lua_pushliteral(L, "io");
        redisFree(conn->ctx);
        conn->ctx = NULL;
        return 3;
    }

    /* AUTH, then SELECT: one reply each, through a guard. */
    if (password != NULL || db >= 0) {
        int step;
        for (step = 0; step < 2; step++) {
            const char *argv[2];
            size_t argvlen[2];
            char dbbuf[24];
            redisReply **guard;
            int failed;
            if (step == 0 && password == NULL) {
                continue;
            }
            if (step == 1 && db < 0) {
                continue;
            }
            if (step == 0) {
                argv[0] = "AUTH";
                argvlen[0] = 4;
                argv[1] = password;
                argvlen[1] = password_len;
            } else {
                int len = snprintf(dbbuf, sizeof(dbbuf), "%lld", (long long)db);
                argv[0] = "SELECT";
                argvlen[0] = 6;
                argv[1] = dbbuf;
                argvlen[1] = (size_t)len;
            }
            guard = new_reply_guard(L);
            sigpipe_block(&sg);
            *guard = (redisReply *)redisCommandArgv(conn->ctx, 2, argv, argvlen);
            sigpipe_restore(&sg);
            failed = *guard == NULL || (*guard)->type == REDIS_REPLY_ERROR;
            if (failed) {
                lua_pushnil(L);
                if (*guard == NULL) {
                    lua_pushstring(L, conn->ctx->errstr);
                    lua_pushliteral(L, "io");
                } else {
                    lua_pushlstring(L, (*guard)->str, (*guard)->len);
                    lua_pushstring(L, step == 0 ? "auth" : "redis");
                }
                release_reply_guard(L, guard, -4);
                redisFree(conn->ctx);
                conn->ctx = NULL;
                return 3;
            }
            release_reply_guard(L, guard, -1);
        }
    }
    return 1;
}

/***
** @method conn:command(name, ...)
** Sends one command and reads its reply.
** @return reply (nil for a nil reply) or nil, message, 'redis' | 'io'
*/
static int ldmarc_redis_command(lua_State *L)
{
    ldmarc_redis_conn *conn = check_conn(L, 1);
    int top = lua_gettop(L);
    const char **argv;
    size_t *argvlen;
    redisReply **guard;
    sigpipe_guard sg;

    collect_stack_args(L, 2, top, &argv, &argvlen);
    if (conn_is_broken(conn)) {
        return push_io_failure(L, conn);
    }
    guard = new_reply_guard(L);
    sigpipe_block(&sg);
    *guard = (redisReply *)redisCommandArgv(conn->ctx, top - 1, argv, argvlen);
    sigpipe_restore(&sg);
    if (*guard == NULL) {
        return push_io_failure(L, conn);
    }
    if ((*guard)->type == REDIS_REPLY_ERROR) {
        lua_pushnil(L);
        lua_pushlstring(L, (*guard)->str, (*guard)->len);
        lua_pushliteral(L, "redis");
        release_reply_guard(L, guard, -4);
        return 3;
    }
    push_reply(L, *guard, 0, 0);
    release_reply_guard(L, guard, -2);
    return 1;
}

/***
** @method conn:pipeline(commands)
** Sends every command, then reads every reply: one round trip.
** @param {table} commands array of arrays, e.g. {{'SET', 'k', 'v'}, {'GET', 'k'}}
** @return array of replies (false for nil, {err=} for an error reply)
**   or nil, message, 'io' when the connection broke
*/
static int ldmarc_redis_pipeline(lua_State *L)
{
    ldmarc_redis_conn *conn = check_conn(L, 1);
    size_t ncmd, i, total = 0, at = 0;
    int anchor;
    const char **argv;
    size_t *argvlen;
    int *argc;
    void *scratch;
    sigpipe_guard sg;

    luaL_checktype(L, 2, LUA_TTABLE);
    ncmd = lua_rawlen(L, 2);
    if (ncmd > LDMARC_REDIS_MAX_PIPELINE) {
        return luaL_error(L, "dmarc.redis: more than %d commands in one pipeline",
                          LDMARC_REDIS_MAX_PIPELINE);
    }
    /* First pass: shapes and types. */
    for (i = 1; i <= ncmd; i++) {
        size_t n, j;
        lua_rawgeti(L, 2, (int)i);
        if (!lua_istable(L, -1)) {
            return luaL_error(L, "dmarc.redis: pipeline entry %d is not a table", (int)i);
        }
        n = lua_rawlen(L, -1);
        if (n < 1 || n > LDMARC_REDIS_MAX_ARGS) {
            return luaL_error(L, "dmarc.redis: pipeline entry %d has %d arguments", (int)i, (int)n);
        }
        for (j = 1; j <= n; j++) {
            int t;
            lua_rawgeti(L, -1, (int)j);
            t = lua_type(L, -1);
            lua_pop(L, 1);
            if (t != LUA_TSTRING && t != LUA_TNUMBER) {
                return luaL_error(L, "dmarc.redis: pipeline entry %d argument %d is a %s", (int)i,
                                  (int)j, lua_typename(L, t));
            }
        }
        total += n;
        lua_pop(L, 1);
    }
    if (ncmd == 0) {
        lua_newtable(L);
        return 1;
    }
    /* Second pass: strings anchored in a table (numbers converted there), so
    ** every pointer stays valid until the commands are appended. */
    lua_createtable(L, total > 0x7fffffff ? 0 : (int)total, 0);
    anchor = lua_gettop(L);
    scratch =
        lua_newuserdata(L, total * (sizeof(const char *) + sizeof(size_t)) + ncmd * sizeof(int));
    argv = (const char **)scratch;
    argvlen = (size_t *)((char *)scratch + total * sizeof(const char *));
    argc = (int *)((char *)scratch + total * (sizeof(const char *) + sizeof(size_t)));
    for (i = 1; i <= ncmd; i++) {
        size_t n, j;
        lua_rawgeti(L, 2, (int)i);
        n = lua_rawlen(L, -1);
        argc[i - 1] = (int)n;
        for (j = 1; j <= n; j++) {
            lua_rawgeti(L, -1, (int)j);
            if (lua_type(L, -1) == LUA_TNUMBER) {
                lua_tolstring(L, -1, NULL);
            }
            lua_pushvalue(L, -1);
            lua_rawseti(L, anchor, (int)(at + 1));
            argv[at] = lua_tolstring(L, -1, &argvlen[at]);
            lua_pop(L, 1);
            at++;
        }
        lua_pop(L, 1);
    }

    if (conn_is_broken(conn)) {
        return push_io_failure(L, conn);
    }
    at = 0;
    for (i = 0; i < ncmd; i++) {
        if (redisAppendCommandArgv(conn->ctx, argc[i], &argv[at], &argvlen[at]) != REDIS_OK) {
            /* Part of the batch may sit in the output buffer: poison the
            ** connection rather than let later replies be misattributed. */
            conn->pending = ncmd;
            return luaL_error(L, "dmarc.redis: out of memory");
        }
        at += (size_t)argc[i];
    }
    /* Replies are owed from here on: a raise before the last one is read
    ** leaves the connection marked out of step. */
    conn->pending = ncmd;
    lua_createtable(L, (int)ncmd, 0);
    for (i = 1; i <= ncmd; i++) {
        redisReply **guard = new_reply_guard(L);
        void *reply = NULL;
        int rc;
        sigpipe_block(&sg);
        rc = redisGetReply(conn->ctx, &reply);
        sigpipe_restore(&sg);
        *guard = (redisReply *)reply;
        if (rc != REDIS_OK || *guard == NULL) {
            conn->pending = 0; /* c->err now says why */
            return push_io_failure(L, conn);
        }
        conn->pending--;
        push_reply(L, *guard, 0, 1);
        lua_rawseti(L, -3, (int)i);
        release_reply_guard(L, guard, -1);
    }
    return 1;
}

/* __gc, :close() and __close share this: idempotent. */
static int ldmarc_redis_close(lua_State *L)
{
    ldmarc_redis_conn *conn = (ldmarc_redis_conn *)luaL_checkudata(L, 1, LDMARC_REDIS_CONN_MT);
    if (conn->ctx != NULL) {
        redisFree(conn->ctx);
        conn->ctx = NULL;
    }
    return 0;
}

/***
** @method conn:is_broken()
** @return true when the connection can no longer be used (the caller reconnects)
*/
static int ldmarc_redis_is_broken(lua_State *L)
{
    ldmarc_redis_conn *conn = (ldmarc_redis_conn *)luaL_checkudata(L, 1, LDMARC_REDIS_CONN_MT);
    lua_pushboolean(L, conn->ctx == NULL || conn_is_broken(conn));
    return 1;
}

static int ldmarc_redis_tostring(lua_State *L)
{
    ldmarc_redis_conn *conn = (ldmarc_redis_conn *)luaL_checkudata(L, 1, LDMARC_REDIS_CONN_MT);
    if (conn->ctx == NULL) {
        lua_pushliteral(L, "dmarc.redis: closed");
    } else {
        lua_pushfstring(L, "dmarc.redis: %p", (void *)conn);
    }
    return 1;
}
/* }====================================================================== */

static const luaL_Reg conn_methods[] = {{"command", ldmarc_redis_command},
                                        {"pipeline", ldmarc_redis_pipeline},
                                        {"close", ldmarc_redis_close},
                                        {"is_broken", ldmarc_redis_is_broken},
                                        {NULL, NULL}};

static const luaL_Reg conn_meta[] = {{"__gc", ldmarc_redis_close},
#if LUA_VERSION_NUM >= 504
                                     {"__close", ldmarc_redis_close},
#endif
                                     {"__tostring", ldmarc_redis_tostring},
                                     {NULL, NULL}};

static const luaL_Reg module_functions[] = {{"connect", ldmarc_redis_connect}, {NULL, NULL}};

LDMARC_EXPORT int luaopen_dmarc_redis(lua_State *L);

LDMARC_EXPORT int luaopen_dmarc_redis(lua_State *L)
{
    luaL_newmetatable(L, LDMARC_REDIS_GUARD_MT);
    lua_pushcfunction(L, ldmarc_redis_guard_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);

    luaL_newmetatable(L, LDMARC_REDIS_CONN_MT);
    luaL_setfuncs(L, conn_meta, 0);
    luaL_newlib(L, conn_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);

    luaL_newlib(L, module_functions);
    lua_pushliteral(L, "dmarc.redis");
    lua_setfield(L, -2, "_NAME");
    lua_pushliteral(L, DMARC_VERSION_STRING);
    lua_setfield(L, -2, "_VERSION");
    lua_pushinteger(L, LDMARC_REDIS_MAX_PIPELINE);
    lua_setfield(L, -2, "MAX_PIPELINE");
    lua_pushinteger(L, LDMARC_REDIS_MAX_ARGS);
    lua_setfield(L, -2, "MAX_ARGS");
    return 1;
}
