/*
** dmarc.core: the Lua binding of libdmarc. It marshals values between Lua
** and the C API in dmarc.h and holds no policy logic: everything DMARC
** decides is decided in core/.
**
** Error convention (README "Error contract", style.md "Lua binding rules"):
** - contract misuse (wrong type, unknown option, wrong state, closed
**   object) raises through luaL_argerror / luaL_checkoption / luaL_error;
** - bad data returns nil, message, code, where code is a stable token
**   (a dmarc_diag_name such as 'not_dmarc', or 'syntax', 'limit' ...);
** - out of memory raises.
**
** Memory rule: no longjmp over owned C memory. Arguments are read and
** checked first; anything the core allocates is handed to a userdata box
** before the next Lua call that can raise.
*/
#include <stdint.h>
#include <string.h>

#include "binding.h"
#ifdef DMARC_WITH_LIBPSL
#include "dmarc_psl.h"
#endif

#define LDMARC_CTX "dmarc.ctx"
#define LDMARC_EVAL "dmarc.eval"
#define LDMARC_CACHE "dmarc.cache"
#define LDMARC_PSL "dmarc.psl"
/* Temporary owners of parse results while they are copied into tables. */
#define LDMARC_RECORD_BOX "dmarc.record_box"
#define LDMARC_FROM_BOX "dmarc.from_box"

/* Key of the lazily loaded default PSL in the module's private table. */
#define LDMARC_STATE_PSL "psl"

/* ** {====================================================================
** Option tables, generated from the X-macro lists in dmarc.h
** ===================================================================== */

#define LDMARC_NAME_ENTRY(U, l) #l,
static const char *const ldmarc_mode_names[] = {DMARC_MODE_MAP(LDMARC_NAME_ENTRY) NULL};
static const char *const ldmarc_auth_names[] = {DMARC_AUTH_MAP(LDMARC_NAME_ENTRY) NULL};
static const char *const ldmarc_rcode_names[] = {DMARC_RCODE_MAP(LDMARC_NAME_ENTRY) NULL};
#undef LDMARC_NAME_ENTRY

/* Flag bits in order, for ev:flags(). */
#define LDMARC_FLAG_ENTRY(U, l, b) DMARC_FLAG_##U,
static const unsigned ldmarc_flag_bits[] = {DMARC_FLAG_MAP(LDMARC_FLAG_ENTRY)};
#undef LDMARC_FLAG_ENTRY
#define LDMARC_FLAG_COUNT (sizeof(ldmarc_flag_bits) / sizeof(ldmarc_flag_bits[0]))

/* }==================================================================== */

/* ** {====================================================================
** Userdata layouts
**
** A ctx or cache may be closed by the program while evaluations still use
** it. The box then only counts as closed for direct use; the C object is
** freed when the last evaluation that uses it lets go. Boxes stay in memory
** while an eval refers to them (the eval's uservalue holds them), and Lua
** runs every finalizer before freeing any object, so a box is readable in
** any finalizer order.
** ===================================================================== */

typedef struct ldmarc_ctx {
    dmarc_ctx *ctx; /* NULL once freed */
    unsigned users; /* open evaluations using it */
    int closed;     /* closed by the program or collected */
} ldmarc_ctx;

typedef struct ldmarc_cache {
    dmarc_cache *cache;
    unsigned users;
    int closed;
} ldmarc_cache;

typedef struct ldmarc_eval {
    dmarc_eval *ev;      /* NULL once closed */
    ldmarc_ctx *ctx;     /* borrowed; kept alive through the uservalue */
    ldmarc_cache *cache; /* borrowed, or NULL */
} ldmarc_eval;

#ifdef DMARC_WITH_LIBPSL
typedef struct ldmarc_psl {
    dmarc_psl *psl;
} ldmarc_psl;
#endif

typedef struct ldmarc_record_box {
    dmarc_record *rec;
} ldmarc_record_box;

typedef struct ldmarc_from_box {
    dmarc_from *from;
} ldmarc_from_box;

/* }==================================================================== */

/* ** {====================================================================
** Helpers
** ===================================================================== */

/* Raises. Out of memory is not data: it raises like cjson.safe does. */
static int ldmarc_raise_status(lua_State *L, const char *what, dmarc_status st)
{
    return luaL_error(L, "%s: %s", what, dmarc_strerror(st));
}

/* An optional integer argument in [lo, hi]; raises when out of range. */
static lua_Integer ldmarc_opt_range(lua_State *L, int arg, lua_Integer def, lua_Integer lo,
                                    lua_Integer hi)
{
    lua_Integer v = luaL_optinteger(L, arg, def);
    luaL_argcheck(L, v >= lo && v <= hi, arg, "out of range");
    return v;
}

/* }==================================================================== */

/* ** {====================================================================
** Records and From fields as tables
** ===================================================================== */

static void ldmarc_push_uris(lua_State *L, const dmarc_uri *uris, size_t n)
{
    size_t i;
    lua_createtable(L, (int)n, 0);
    for (i = 0; i < n; i++) {
        lua_createtable(L, 0, 3);
        ldmarc_set_string(L, "uri", uris[i].uri, uris[i].len);
        ldmarc_set_integer(L, "max_size", uris[i].max_size);
        ldmarc_set_bool(L, "mailto", uris[i].is_mailto);
        lua_rawseti(L, -2, (int)i + 1);
    }
}

static void ldmarc_push_diag(lua_State *L, const dmarc_diag *d)
{
    const char *name = dmarc_diag_name(d->code);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, name != NULL ? name : "unknown");
    lua_setfield(L, -2, "code");
    ldmarc_set_integer(L, "offset", d->offset);
    if (d->tag[0] != '\0') {
        /* The tag is a fixed-size field: bound the read by its size. */
        size_t len = 0;
        while (len < sizeof(d->tag) && d->tag[len] != '\0')
            len++;
        ldmarc_set_string(L, "tag", d->tag, len);
    }
}

static void ldmarc_push_fo(lua_State *L, unsigned fo)
{
    static const struct {
        unsigned bit;
        const char *name;
    } fo_options[] = {{DMARC_FO_0, "0"}, {DMARC_FO_1, "1"}, {DMARC_FO_D, "d"}, {DMARC_FO_S, "s"}};
    size_t i;
    int n = 0;
    lua_createtable(L, 4, 0);
    for (i = 0; i < sizeof(fo_options) / sizeof(fo_options[0]); i++) {
        if (fo & fo_options[i].bit) {
            lua_pushstring(L, fo_options[i].name);
            lua_rawseti(L, -2, ++n);
        }
    }
}

/* Every dmarc_record field; enums as lowercase names. */
static void ldmarc_push_record(lua_State *L, const dmarc_record *r)
{
    size_t i;
    lua_createtable(L, 0, 48);
    ldmarc_set_cstring(L, "mode", dmarc_mode_name(r->mode));
    ldmarc_set_bool(L, "usable", r->usable);
    ldmarc_set_bool(L, "as_none", r->as_none);
    ldmarc_set_cstring(L, "p", dmarc_policy_name(r->p));
    ldmarc_set_cstring(L, "sp", dmarc_policy_name(r->sp));
    ldmarc_set_cstring(L, "np", dmarc_policy_name(r->np));
    ldmarc_set_bool(L, "has_p", r->has_p);
    ldmarc_set_bool(L, "has_sp", r->has_sp);
    ldmarc_set_bool(L, "has_np", r->has_np);
    ldmarc_set_bool(L, "bad_p", r->bad_p);
    ldmarc_set_bool(L, "bad_sp", r->bad_sp);
    ldmarc_set_bool(L, "bad_np", r->bad_np);
    ldmarc_set_cstring(L, "adkim", dmarc_align_name(r->adkim));
    ldmarc_set_cstring(L, "aspf", dmarc_align_name(r->aspf));
    ldmarc_set_bool(L, "has_adkim", r->has_adkim);
    ldmarc_set_bool(L, "has_aspf", r->has_aspf);
    ldmarc_set_integer(L, "pct", r->pct);
    ldmarc_set_bool(L, "has_pct", r->has_pct);
    ldmarc_set_bool(L, "testing", r->testing);
    ldmarc_set_bool(L, "has_t", r->has_t);
    ldmarc_set_cstring(L, "psd", dmarc_psd_name(r->psd));
    ldmarc_set_bool(L, "has_psd", r->has_psd);
    ldmarc_push_fo(L, r->fo);
    lua_setfield(L, -2, "fo");
    ldmarc_set_cstring(L, "fo_text", r->fo_text);
    ldmarc_set_bool(L, "has_fo", r->has_fo);
    ldmarc_set_bool(L, "rf_afrf", r->rf_afrf);
    ldmarc_set_bool(L, "has_rf", r->has_rf);
    ldmarc_set_integer(L, "ri", r->ri);
    ldmarc_set_bool(L, "has_ri", r->has_ri);
    ldmarc_push_uris(L, r->rua, r->rua != NULL ? r->rua_count : 0);
    lua_setfield(L, -2, "rua");
    ldmarc_push_uris(L, r->ruf, r->ruf != NULL ? r->ruf_count : 0);
    lua_setfield(L, -2, "ruf");
    ldmarc_set_bool(L, "has_rua", r->has_rua);
    ldmarc_set_bool(L, "has_ruf", r->has_ruf);
    lua_createtable(L, (int)r->warning_count, 0);
    for (i = 0; r->warnings != NULL && i < r->warning_count && i < DMARC_RECORD_MAX_WARNINGS; i++) {
        ldmarc_push_diag(L, &r->warnings[i]);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, -2, "warnings");
    ldmarc_set_integer(L, "warnings_dropped", r->warnings_dropped);
}

static int ldmarc_record_box_gc(lua_State *L)
{
    ldmarc_record_box *box = luaL_checkudata(L, 1, LDMARC_RECORD_BOX);
    dmarc_record_free(box->rec);
    box->rec = NULL;
    return 0;
}

static int ldmarc_from_box_gc(lua_State *L)
{
    ldmarc_from_box *box = luaL_checkudata(L, 1, LDMARC_FROM_BOX);
    dmarc_from_free(box->from);
    box->from = NULL;
    return 0;
}

/* A diag as a message: "<what> (<code> at offset N)". */
static void ldmarc_push_diag_message(lua_State *L, const char *what, const dmarc_diag *d)
{
    const char *name = dmarc_diag_name(d->code);
    lua_pushfstring(L, "%s (%s at offset %d)", what, name != NULL ? name : "unknown",
                    (int)(d->offset > INT32_MAX ? INT32_MAX : d->offset));
}

/***
 * Parse one DMARC record (a TXT RR, its strings already joined [REC-1]).
 * @function core.record_parse
 * @param {string} txt
 * @param {string} mode 'rfc9989' (default) or 'rfc7489'
 * @return {table} every dmarc_record field plus diag (why the record is
 *   not usable: 'duplicate_tag', 'invalid_policy', 'missing_p'; 'none' when
 *   it is usable), or nil, message, code
 */
static int ldmarc_record_parse(lua_State *L)
{
    size_t len;
    const char *txt = luaL_checklstring(L, 1, &len);
    dmarc_mode mode = (dmarc_mode)luaL_checkoption(L, 2, "rfc9989", ldmarc_mode_names);
    dmarc_diag diag;
    dmarc_status st;
    ldmarc_record_box *box;

    memset(&diag, 0, sizeof diag);
    /* The box owns the record from the moment it exists: pushing the
    ** table may raise (memory), and __gc then frees the record. */
    box = lua_newuserdatauv(L, sizeof *box, 0);
    box->rec = NULL;
    luaL_setmetatable(L, LDMARC_RECORD_BOX);
    st = dmarc_record_parse(mode, NULL, txt, len, &box->rec, &diag);
    if (st == DMARC_ERR_SYNTAX) {
        const char *code = dmarc_diag_name(diag.code);
        lua_pushnil(L);
        ldmarc_push_diag_message(L, "not a DMARC record", &diag);
        lua_pushstring(L, (code != NULL && diag.code != DMARC_DIAG_NONE) ? code : "syntax");
        return 3;
    }
    if (st != DMARC_OK)
        return ldmarc_status_fail(L, "record_parse", st);
    ldmarc_push_record(L, box->rec);
    /* On DMARC_OK the diag says why a record is not usable (none when it is). */
    ldmarc_set_cstring(L, "diag", dmarc_diag_name(diag.code));
    dmarc_record_free(box->rec);
    box->rec = NULL;
    return 1;
}

/***
 * Does a TXT RR start like a DMARC record [REC-2]?
 * @function core.is_record
 * @param {string} txt
 * @param {string} mode 'rfc9989' (default) or 'rfc7489'
 * @return {boolean}
 */
static int ldmarc_is_record(lua_State *L)
{
    size_t len;
    const char *txt = luaL_checklstring(L, 1, &len);
    dmarc_mode mode = (dmarc_mode)luaL_checkoption(L, 2, "rfc9989", ldmarc_mode_names);
    lua_pushboolean(L, dmarc_record_is_dmarc(mode, txt, len));
    return 1;
}

/***
 * Mailboxes of one From field value [FROM-1..8].
 * @function core.from_parse
 * @param {string} raw the field value after the colon
 * @return {table} array of {domain=, local_part=, display=, problem=} and
 *   the first problem's code (or nil); or nil, message, code
 */
static int ldmarc_from_parse(lua_State *L)
{
    size_t len, i, n;
    const char *raw = luaL_checklstring(L, 1, &len);
    dmarc_diag diag;
    dmarc_status st;
    ldmarc_from_box *box;

    memset(&diag, 0, sizeof diag);
    box = lua_newuserdatauv(L, sizeof *box, 0);
    box->from = NULL;
    luaL_setmetatable(L, LDMARC_FROM_BOX);
    st = dmarc_from_parse(NULL, raw, len, &box->from, &diag);
    if (st == DMARC_ERR_SYNTAX) {
        const char *code = dmarc_diag_name(diag.code);
        lua_pushnil(L);
        ldmarc_push_diag_message(L, "unreadable From field", &diag);
        lua_pushstring(L, (code != NULL && diag.code != DMARC_DIAG_NONE) ? code : "syntax");
        return 3;
    }
    if (st != DMARC_OK)
        return ldmarc_status_fail(L, "from_parse", st);
    n = dmarc_from_count(box->from);
    lua_createtable(L, (int)n, 0);
    for (i = 0; i < n && i < DMARC_FROM_MAX_MAILBOXES; i++) {
        const dmarc_mailbox *mb = dmarc_from_mailbox(box->from, i);
        if (mb == NULL)
            break;
        lua_createtable(L, 0, 4);
        if (mb->domain != NULL)
            ldmarc_set_string(L, "domain", mb->domain, mb->domain_len);
        if (mb->local != NULL)
            ldmarc_set_string(L, "local_part", mb->local, mb->local_len);
        if (mb->display != NULL)
            ldmarc_set_string(L, "display", mb->display, mb->display_len);
        if (mb->problem != DMARC_DIAG_NONE)
            ldmarc_set_cstring(L, "problem", dmarc_diag_name(mb->problem));
        lua_rawseti(L, -2, (int)i + 1);
    }
    if (diag.code != DMARC_DIAG_NONE)
        lua_pushstring(L, dmarc_diag_name(diag.code));
    else
        lua_pushnil(L);
    dmarc_from_free(box->from);
    box->from = NULL;
    return 2;
}

/***
 * Lowercase, strip one trailing dot, U-labels to A-labels [FROM-2] [FROM-3].
 * @function core.domain_normalize
 * @param {string} s
 * @return {string} or nil, message, 'syntax'
 */
static int ldmarc_domain_normalize(lua_State *L)
{
    size_t len, outlen = 0;
    const char *in = luaL_checklstring(L, 1, &len);
    char out[DMARC_DOMAIN_MAX_LEN + 1];
    dmarc_status st = dmarc_domain_normalize(in, len, out, sizeof out, &outlen);
    if (st == DMARC_ERR_SYNTAX)
        return ldmarc_fail(L, "not a usable domain name", "syntax");
    if (st != DMARC_OK)
        return ldmarc_status_fail(L, "domain_normalize", st);
    lua_pushlstring(L, out, outlen);
    return 1;
}

/* }==================================================================== */

/* ** {====================================================================
** Public Suffix List (libpsl adapter), RFC 7489 §3.2
** ===================================================================== */

#ifdef DMARC_WITH_LIBPSL
static int ldmarc_psl_gc(lua_State *L)
{
    ldmarc_psl *box = luaL_checkudata(L, 1, LDMARC_PSL);
    dmarc_psl_free(box->psl);
    box->psl = NULL;
    return 0;
}

/* Pushes a new PSL box loaded from @file (NULL: distribution/built-in).
** Raises when no list loads: a misconfiguration, not data. */
static ldmarc_psl *ldmarc_psl_new(lua_State *L, const char *file)
{
    ldmarc_psl *box = lua_newuserdatauv(L, sizeof *box, 0);
    box->psl = NULL;
    luaL_setmetatable(L, LDMARC_PSL);
    box->psl = dmarc_psl_load(file);
    if (box->psl == NULL)
        luaL_error(L, "cannot load the Public Suffix List%s%s", file ? " from " : "",
                   file ? file : "");
    return box;
}

/* Pushes the module's shared PSL box, loading it on first use: once per
** module instance (per lua_State), kept in the module's private table
** (upvalue 1), freed by its __gc. */
static ldmarc_psl *ldmarc_default_psl(lua_State *L)
{
    ldmarc_psl *box;
    lua_getfield(L, lua_upvalueindex(1), LDMARC_STATE_PSL);
    box = luaL_testudata(L, -1, LDMARC_PSL);
    if (box != NULL)
        return box;
    lua_pop(L, 1);
    box = ldmarc_psl_new(L, NULL);
    lua_pushvalue(L, -1);
    lua_setfield(L, lua_upvalueindex(1), LDMARC_STATE_PSL);
    return box;
}
#endif

/***
 * Org Domain of a domain through the Public Suffix List [PSL-1] [OPEN-2].
 * @function core.psl_org_domain
 * @param {string} domain
 * @return {string} org domain, {boolean} is_suffix; or nil, message, code
 */
static int ldmarc_psl_org_domain(lua_State *L)
{
#ifdef DMARC_WITH_LIBPSL
    size_t len, outlen = 0, org_off = 0;
    const char *in = luaL_checklstring(L, 1, &len);
    char name[DMARC_DOMAIN_MAX_LEN + 1];
    bool is_suffix = false;
    ldmarc_psl *box;
    dmarc_status st = dmarc_domain_normalize(in, len, name, sizeof name, &outlen);
    if (st == DMARC_ERR_SYNTAX)
        return ldmarc_fail(L, "not a usable domain name", "syntax");
    if (st != DMARC_OK)
        return ldmarc_status_fail(L, "psl_org_domain", st);
    box = ldmarc_default_psl(L);
    st = dmarc_psl_orgdomain(box->psl, name, outlen, &org_off, &is_suffix);
    if (st != DMARC_OK)
        return ldmarc_status_fail(L, "psl_org_domain", st);
    if (org_off > outlen)
        org_off = 0;
    lua_pushlstring(L, name + org_off, outlen - org_off);
    lua_pushboolean(L, is_suffix);
    return 2;
#else
    (void)luaL_checkstring(L, 1);
    return luaL_error(L, "dmarc.core was built without libpsl");
#endif
}

/* }==================================================================== */

/* ** {====================================================================
** dmarc.cache
** ===================================================================== */

static void ldmarc_cache_release(ldmarc_cache *c)
{
    if (c->closed && c->users == 0 && c->cache != NULL) {
        dmarc_cache_free(c->cache);
        c->cache = NULL;
    }
}

/* Raises "attempt to use a closed dmarc.cache". */
static ldmarc_cache *ldmarc_check_cache(lua_State *L, int arg)
{
    ldmarc_cache *c = luaL_checkudata(L, arg, LDMARC_CACHE);
    if (c->closed)
        luaL_error(L, "attempt to use a closed " LDMARC_CACHE);
    return c;
}

/***
 * A shared, TTL-aware DNS answer cache [DISC-11].
 * @function core.new_cache
 * @param {integer} max_entries (>= 1)
 * @return {dmarc.cache}
 */
static int ldmarc_new_cache(lua_State *L)
{
    lua_Integer max = luaL_checkinteger(L, 1);
    dmarc_status st = DMARC_OK;
    ldmarc_cache *c;
    luaL_argcheck(L, max >= 1, 1, "must be at least 1");
    c = lua_newuserdatauv(L, sizeof *c, 0);
    c->cache = NULL;
    c->users = 0;
    c->closed = 0;
    luaL_setmetatable(L, LDMARC_CACHE);
    c->cache = dmarc_cache_new(NULL, (size_t)max, &st);
    if (c->cache == NULL) {
        c->closed = 1;
        return ldmarc_raise_status(L, "new_cache", st);
    }
    return 1;
}

/* __gc, __close and :close(): idempotent. */
static int ldmarc_cache_close(lua_State *L)
{
    ldmarc_cache *c = luaL_checkudata(L, 1, LDMARC_CACHE);
    c->closed = 1;
    ldmarc_cache_release(c);
    return 0;
}

static int ldmarc_cache_size(lua_State *L)
{
    ldmarc_cache *c = ldmarc_check_cache(L, 1);
    lua_pushinteger(L, (lua_Integer)dmarc_cache_size(c->cache));
    return 1;
}

static int ldmarc_cache_clear(lua_State *L)
{
    ldmarc_cache *c = ldmarc_check_cache(L, 1);
    dmarc_cache_clear(c->cache);
    return 0;
}

/* Returns hits, misses. */
static int ldmarc_cache_stats(lua_State *L)
{
    ldmarc_cache *c = ldmarc_check_cache(L, 1);
    uint64_t hits = 0, misses = 0;
    dmarc_cache_stats(c->cache, &hits, &misses);
    lua_pushinteger(L, (lua_Integer)hits);
    lua_pushinteger(L, (lua_Integer)misses);
    return 2;
}

static int ldmarc_cache_tostring(lua_State *L)
{
    ldmarc_cache *c = luaL_checkudata(L, 1, LDMARC_CACHE);
    if (c->closed)
        lua_pushliteral(L, LDMARC_CACHE " (closed)");
    else
        lua_pushfstring(L, LDMARC_CACHE ": %p", (void *)c);
    return 1;
}

/* }==================================================================== */

/* ** {====================================================================
** dmarc.ctx
** ===================================================================== */

static void ldmarc_ctx_release(ldmarc_ctx *c)
{
    if (c->closed && c->users == 0 && c->ctx != NULL) {
        dmarc_ctx_free(c->ctx);
        c->ctx = NULL;
    }
}

/* Raises "attempt to use a closed dmarc.ctx". */
static ldmarc_ctx *ldmarc_check_ctx(lua_State *L, int arg)
{
    ldmarc_ctx *c = luaL_checkudata(L, arg, LDMARC_CTX);
    if (c->closed)
        luaL_error(L, "attempt to use a closed " LDMARC_CTX);
    return c;
}

static const char *const ldmarc_ctx_option_names[] = {
    "mode", "pct_as_testing", "full_org_walk", "failure_org_walk", "max_author_domains", "psl_file",
    NULL};

/***
 * A context: immutable configuration.
 * @function core.new
 * @param {table} opts mode ('rfc9989'|'rfc7489'), pct_as_testing (boolean),
 *   full_org_walk (boolean: always find the author's Org Domain),
 *   failure_org_walk (boolean: find it for a failure at quarantine/reject),
 *   max_author_domains (1..8), psl_file (string; rfc7489 mode)
 * @return {dmarc.ctx}; raises on a bad option
 */
static int ldmarc_new(lua_State *L)
{
    dmarc_options o;
    dmarc_status st = DMARC_OK;
    const char *psl_file = NULL;
    ldmarc_ctx *c;
    int has_psl_file = 0;

    dmarc_options_init(&o);
    if (!lua_isnoneornil(L, 1)) {
        luaL_checktype(L, 1, LUA_TTABLE);
        ldmarc_check_options(L, 1, "dmarc.core.new", ldmarc_ctx_option_names);
        if (ldmarc_opt_field(L, 1, "dmarc.core.new", "mode", LUA_TSTRING)) {
            int i;
            const char *m = lua_tostring(L, -1);
            for (i = 0; ldmarc_mode_names[i] != NULL; i++)
                if (strcmp(ldmarc_mode_names[i], m) == 0)
                    break;
            if (ldmarc_mode_names[i] == NULL)
                return luaL_error(L, "option 'mode': invalid value '%s'", m);
            o.mode = (dmarc_mode)i;
        }
        lua_pop(L, 1);
        if (ldmarc_opt_field(L, 1, "dmarc.core.new", "pct_as_testing", LUA_TBOOLEAN))
            o.pct_as_testing = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (ldmarc_opt_field(L, 1, "dmarc.core.new", "full_org_walk", LUA_TBOOLEAN))
            o.full_org_walk = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (ldmarc_opt_field(L, 1, "dmarc.core.new", "failure_org_walk", LUA_TBOOLEAN))
            o.failure_org_walk = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (ldmarc_opt_field(L, 1, "dmarc.core.new", "max_author_domains", LUA_TNUMBER)) {
            lua_Number n = lua_tonumber(L, -1);
            if (!(n >= 1 && n <= DMARC_MAX_AUTHOR_DOMAINS) || n != (lua_Number)(unsigned)n)
                return luaL_error(L, "option 'max_author_domains': must be an integer in 1..%d",
                                  DMARC_MAX_AUTHOR_DOMAINS);
            o.max_author_domains = (unsigned)n;
        }
        lua_pop(L, 1);
        /* Stays on the stack (anchored) until the PSL is loaded. */
        has_psl_file = ldmarc_opt_field(L, 1, "dmarc.core.new", "psl_file", LUA_TSTRING);
        if (has_psl_file)
            psl_file = lua_tostring(L, -1);
    }

    c = lua_newuserdatauv(L, sizeof *c, 1);
    c->ctx = NULL;
    c->users = 0;
    c->closed = 1; /* until the C object exists */
    luaL_setmetatable(L, LDMARC_CTX);

    if (o.mode == DMARC_MODE_RFC7489) {
#ifdef DMARC_WITH_LIBPSL
        /* RFC 7489 §3.2 needs the PSL; the ctx keeps its list alive through
        ** its uservalue (the shared one, or its own from psl_file). */
        ldmarc_psl *psl = has_psl_file ? ldmarc_psl_new(L, psl_file) : ldmarc_default_psl(L);
        o.psl = dmarc_psl_orgdomain;
        o.psl_ud = psl->psl;
        DMARC_SETUSERVALUE(L, -2);
#else
        return luaL_error(L, "option 'mode': rfc7489 needs libpsl, and dmarc.core was built "
                             "without it");
#endif
    }
    (void)psl_file;
    c->ctx = dmarc_ctx_new(&o, &st);
    if (c->ctx == NULL) {
        if (st == DMARC_ERR_NOMEM)
            return ldmarc_raise_status(L, "new", st);
        return luaL_error(L, "invalid options: %s", dmarc_strerror(st));
    }
    c->closed = 0;
    return 1;
}

static int ldmarc_ctx_close(lua_State *L)
{
    ldmarc_ctx *c = luaL_checkudata(L, 1, LDMARC_CTX);
    c->closed = 1;
    ldmarc_ctx_release(c);
    return 0;
}

static int ldmarc_ctx_mode(lua_State *L)
{
    ldmarc_ctx *c = ldmarc_check_ctx(L, 1);
    lua_pushstring(L, dmarc_mode_name(dmarc_ctx_mode(c->ctx)));
    return 1;
}

static int ldmarc_ctx_tostring(lua_State *L)
{
    ldmarc_ctx *c = luaL_checkudata(L, 1, LDMARC_CTX);
    if (c->closed)
        lua_pushliteral(L, LDMARC_CTX " (closed)");
    else
        lua_pushfstring(L, LDMARC_CTX ": %p", (void *)c);
    return 1;
}

/***
 * A new evaluation of one message.
 * @method ctx:eval(cache?)
 * @param {dmarc.cache} cache optional shared answer cache
 * @return {dmarc.eval}
 */
static int ldmarc_ctx_eval(lua_State *L)
{
    ldmarc_ctx *c = ldmarc_check_ctx(L, 1);
    ldmarc_cache *cache = NULL;
    ldmarc_eval *e;
    dmarc_status st = DMARC_OK;

    if (!lua_isnoneornil(L, 2))
        cache = ldmarc_check_cache(L, 2);
    lua_settop(L, 2);
    e = lua_newuserdatauv(L, sizeof *e, 1);
    e->ev = NULL;
    e->ctx = NULL;
    e->cache = NULL;
    luaL_setmetatable(L, LDMARC_EVAL);
    /* uservalue = {ctx, cache}: the eval keeps both alive. */
    lua_createtable(L, 2, 0);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 1);
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, 2);
    DMARC_SETUSERVALUE(L, -2);

    e->ev = dmarc_eval_new(c->ctx, cache != NULL ? cache->cache : NULL, &st);
    if (e->ev == NULL)
        return ldmarc_raise_status(L, "eval", st);
    e->ctx = c;
    c->users++;
    if (cache != NULL) {
        e->cache = cache;
        cache->users++;
    }
    return 1;
}

/* }==================================================================== */

/* ** {====================================================================
** dmarc.eval
** ===================================================================== */

/* Raises "attempt to use a closed dmarc.eval". */
static ldmarc_eval *ldmarc_check_eval(lua_State *L)
{
    ldmarc_eval *e = luaL_checkudata(L, 1, LDMARC_EVAL);
    if (e->ev == NULL)
        luaL_error(L, "attempt to use a closed " LDMARC_EVAL);
    return e;
}

/* __gc, __close and :close(): idempotent. Frees the evaluation first,
** then lets go of its ctx and cache (which may free them). */
static int ldmarc_eval_close(lua_State *L)
{
    ldmarc_eval *e = luaL_checkudata(L, 1, LDMARC_EVAL);
    if (e->ev != NULL) {
        dmarc_eval_free(e->ev);
        e->ev = NULL;
    }
    if (e->ctx != NULL) {
        e->ctx->users--;
        ldmarc_ctx_release(e->ctx);
        e->ctx = NULL;
    }
    if (e->cache != NULL) {
        e->cache->users--;
        ldmarc_cache_release(e->cache);
        e->cache = NULL;
    }
    return 0;
}

static int ldmarc_eval_tostring(lua_State *L)
{
    ldmarc_eval *e = luaL_checkudata(L, 1, LDMARC_EVAL);
    if (e->ev == NULL)
        lua_pushliteral(L, LDMARC_EVAL " (closed)");
    else
        lua_pushfstring(L, LDMARC_EVAL ": %p", (void *)e);
    return 1;
}

/* An input call's status: true; nil, msg, code for data; raises for
** STATE (inputs after run) and NOMEM. */
static int ldmarc_input_result(lua_State *L, const char *what, dmarc_status st)
{
    if (st >= 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    if (st == DMARC_ERR_STATE)
        return luaL_error(L, "%s: inputs are not allowed after run() (reset() first)", what);
    return ldmarc_status_fail(L, what, st);
}

/***
 * One From header field's raw value; call once per field.
 * @method ev:add_from(raw)
 * @return true, or nil, message, code ('limit': too many From fields)
 */
static int ldmarc_eval_add_from(lua_State *L)
{
    ldmarc_eval *e = ldmarc_check_eval(L);
    size_t len;
    const char *raw = luaL_checklstring(L, 2, &len);
    return ldmarc_input_result(L, "add_from", dmarc_eval_add_from(e->ev, raw, len));
}

/***
 * An Author Domain given directly.
 * @method ev:add_author_domain(domain)
 * @return true, or nil, message, 'syntax'
 */
static int ldmarc_eval_add_author_domain(lua_State *L)
{
    ldmarc_eval *e = ldmarc_check_eval(L);
    size_t len;
    const char *dom = luaL_checklstring(L, 2, &len);
    return ldmarc_input_result(L, "add_author_domain",
                               dmarc_eval_add_author_domain(e->ev, dom, len));
}

/***
 * An SPF result [ALN-1].
 * @method ev:add_spf(domain, result, is_helo)
 * @param {string} result RFC 8601 word ('pass', 'softfail' ...)
 */
static int ldmarc_eval_add_spf(lua_State *L)
{
    ldmarc_eval *e = ldmarc_check_eval(L);
    size_t len;
    const char *dom = luaL_checklstring(L, 2, &len);
    dmarc_auth res = (dmarc_auth)luaL_checkoption(L, 3, NULL, ldmarc_auth_names);
    bool is_helo = lua_toboolean(L, 4);
    return ldmarc_input_result(L, "add_spf", dmarc_eval_add_spf(e->ev, dom, len, res, is_helo));
}

/***
 * One DKIM signature's result.
 * @method ev:add_dkim(domain, selector, result)
 * @param {string} selector may be nil
 */
static int ldmarc_eval_add_dkim(lua_State *L)
{
    ldmarc_eval *e = ldmarc_check_eval(L);
    size_t len, sel_len = 0;
    const char *dom = luaL_checklstring(L, 2, &len);
    const char *sel = luaL_optlstring(L, 3, "", &sel_len);
    dmarc_auth res = (dmarc_auth)luaL_checkoption(L, 4, NULL, ldmarc_auth_names);
    return ldmarc_input_result(L, "add_dkim",
                               dmarc_eval_add_dkim(e->ev, dom, len, sel, sel_len, res));
}

/***
 * pct sampling roll 0..99 [POL-6].
 * @method ev:set_roll(n)
 */
static int ldmarc_eval_set_roll(lua_State *L)
{
    ldmarc_eval *e = ldmarc_check_eval(L);
    lua_Integer roll = luaL_checkinteger(L, 2);
    luaL_argcheck(L, roll >= 0 && roll <= 99, 2, "roll must be in 0..99");
    return ldmarc_input_result(L, "set_roll", dmarc_eval_set_roll(e->ev, (unsigned)roll));
}

/***
 * Current time for cache expiry (seconds).
 * @method ev:set_now(t)
 */
static int ldmarc_eval_set_now(lua_State *L)
{
    ldmarc_eval *e = ldmarc_check_eval(L);
    lua_Integer now = luaL_checkinteger(L, 2);
    luaL_argcheck(L, now >= 0, 2, "time must not be negative");
    return ldmarc_input_result(L, "set_now", dmarc_eval_set_now(e->ev, (uint64_t)now));
}

/***
 * Advance the evaluation.
 * @method ev:run()
 * @return {boolean} true when the verdict is ready, false when a DNS
 *   answer is needed (ev:query(), then ev:answer(...)); raises on misuse
 */
static int ldmarc_eval_run(lua_State *L)
{
    ldmarc_eval *e = ldmarc_check_eval(L);
    dmarc_status st = dmarc_eval_run(e->ev);
    if (st == DMARC_OK || st == DMARC_NEED_DNS) {
        lua_pushboolean(L, st == DMARC_OK);
        return 1;
    }
    if (st == DMARC_ERR_STATE)
        return luaL_error(L, "run: a question is pending: answer it first");
    return ldmarc_raise_status(L, "run", st);
}

/***
 * The pending question.
 * @method ev:query()
 * @return {string} name, {string} qtype ('TXT', 'A', 'AAAA', 'MX'); nil when none
 */
static int ldmarc_eval_query(lua_State *L)
{
    ldmarc_eval *e = ldmarc_check_eval(L);
    size_t len = 0;
    dmarc_qtype type = DMARC_QTYPE_TXT;
    const char *name = dmarc_eval_query(e->ev, &len, &type);
    const char *tname;
    if (name == NULL) {
        lua_pushnil(L);
        return 1;
    }
    tname = dmarc_qtype_name(type);
    lua_pushlstring(L, name, len);
    lua_pushstring(L, tname != NULL ? tname : "TXT");
    return 2;
}

/***
 * The answer to the pending question.
 * @method ev:answer(rcode, txts, ttl)
 * @param {string} rcode 'noerror', 'nodata', 'nxdomain', 'servfail', 'timeout'
 * @param {table} txts array of TXT RR strings (each RR's strings joined), or nil
 * @param {integer} ttl seconds for the cache (default 0)
 */
static int ldmarc_eval_answer(lua_State *L)
{
    ldmarc_eval *e = ldmarc_check_eval(L);
    dmarc_rcode rc = (dmarc_rcode)luaL_checkoption(L, 2, NULL, ldmarc_rcode_names);
    lua_Integer ttl = ldmarc_opt_range(L, 4, 0, 0, (lua_Integer)UINT32_MAX);
    dmarc_txt txt[DMARC_ANSWER_MAX_RRS];
    size_t n = 0, i, count = 0;
    dmarc_status st;

    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        count = lua_rawlen(L, 3);
        /* The core reads at most DMARC_ANSWER_MAX_RRS RRs; the rest is
        ** ignored here the same way. Strings stay anchored in the table. */
        if (count > DMARC_ANSWER_MAX_RRS)
            count = DMARC_ANSWER_MAX_RRS;
        luaL_checkstack(L, (int)count, "too many TXT records");
        for (i = 0; i < count; i++) {
            lua_rawgeti(L, 3, (int)i + 1);
            if (lua_type(L, -1) != LUA_TSTRING)
                return luaL_argerror(L, 3, "array of strings expected");
            txt[n].data = lua_tolstring(L, -1, &txt[n].len);
            n++;
        }
    }
    st = dmarc_eval_answer(e->ev, rc, n > 0 ? txt : NULL, n, (uint32_t)ttl);
    if (st == DMARC_ERR_STATE)
        return luaL_error(L, "answer: no question is pending");
    if (st < 0)
        return ldmarc_raise_status(L, "answer", st);
    return 0;
}

/* Pushes a verdict table (strings copied out of the eval); the applied
** record's table only with @with_record (it is most of the cost). */
static void ldmarc_push_verdict(lua_State *L, const dmarc_verdict *v, bool with_record)
{
    lua_createtable(L, 0, 16);
    ldmarc_set_cstring(L, "result", dmarc_result_name(v->result));
    ldmarc_set_cstring(L, "author_domain", v->author_domain);
    ldmarc_set_cstring(L, "policy_domain", v->policy_domain);
    ldmarc_set_cstring(L, "org_domain", v->org_domain);
    ldmarc_set_bool(L, "has_policy", v->has_policy);
    if (v->has_policy) {
        ldmarc_set_cstring(L, "policy", dmarc_policy_name(v->policy));
        ldmarc_set_cstring(L, "policy_tag", dmarc_policy_tag_name(v->policy_tag));
        ldmarc_set_cstring(L, "applied", dmarc_policy_name(v->applied));
    }
    ldmarc_set_cstring(L, "reason", dmarc_reason_name(v->reason));
    ldmarc_set_bool(L, "spf_aligned", v->spf_aligned);
    ldmarc_set_bool(L, "dkim_aligned", v->dkim_aligned);
    ldmarc_set_bool(L, "testing", v->testing);
    ldmarc_set_bool(L, "author_exists", v->author_exists);
    if (with_record && v->record != NULL) {
        ldmarc_push_record(L, v->record);
        lua_setfield(L, -2, "record");
    }
    ldmarc_set_cstring(L, "error", v->error);
}

/* Pushes the array of flag names set in @flags, in bit order. */
static void ldmarc_push_flags(lua_State *L, unsigned flags)
{
    size_t i;
    int n = 0;
    lua_createtable(L, flags != 0 ? 4 : 0, 0);
    for (i = 0; flags != 0 && i < LDMARC_FLAG_COUNT; i++) {
        if (flags & ldmarc_flag_bits[i]) {
            lua_pushstring(L, dmarc_flag_name(ldmarc_flag_bits[i]));
            lua_rawseti(L, -2, ++n);
        }
    }
}

static void ldmarc_verdict_state_error(lua_State *L, const char *what, dmarc_status st)
{
    if (st == DMARC_ERR_STATE)
        luaL_error(L, "%s: no verdict yet: call run() until it returns true", what);
    ldmarc_raise_status(L, what, st);
}

/* The overall verdict into @v, or raise (misuse: the evaluation is not
** done). Nothing is allocated, so raising here leaks nothing. */
static void ldmarc_get_verdict(lua_State *L, const ldmarc_eval *e, const char *what,
                               dmarc_verdict *v)
{
    dmarc_status st;
    memset(v, 0, sizeof *v);
    st = dmarc_eval_verdict(e->ev, v);
    if (st != DMARC_OK)
        ldmarc_verdict_state_error(L, what, st);
}

/***
 * The overall verdict [OPEN-5].
 * @method ev:verdict(with_record)
 * @param {boolean} with_record false leaves the record table out (default
 *   true); ev:record() gives it on its own
 * @return {table} result, author_domain, policy_domain, org_domain,
 *   has_policy, policy, policy_tag, applied, reason, spf_aligned,
 *   dkim_aligned, testing, author_exists, record, error
 */
static int ldmarc_eval_verdict(lua_State *L)
{
    ldmarc_eval *e = ldmarc_check_eval(L);
    bool with_record = lua_isnoneornil(L, 2) || lua_toboolean(L, 2);
    dmarc_verdict v;
    ldmarc_get_verdict(L, e, "verdict", &v);
    ldmarc_push_verdict(L, &v, with_record);
    return 1;
}

/***
 * The overall verdict in the shape of a `dmarc eval` output object: the
 * light path for scanners, one table with no record fields in it.
 * @method ev:outcome()
 * @return {table} result, author_domain, policy_domain, org_domain, policy
 *   (a usable record applies), applied (pass or fail under a policy),
 *   reason (absent when 'none'), spf_aligned, dkim_aligned, flags (array
 *   of names, as ev:flags())
 */
static int ldmarc_eval_outcome(lua_State *L)
{
    ldmarc_eval *e = ldmarc_check_eval(L);
    dmarc_verdict v;
    ldmarc_get_verdict(L, e, "outcome", &v);
    lua_createtable(L, 0, 10);
    ldmarc_set_cstring(L, "result", dmarc_result_name(v.result));
    ldmarc_set_cstring(L, "author_domain", v.author_domain);
    ldmarc_set_cstring(L, "policy_domain", v.policy_domain);
    ldmarc_set_cstring(L, "org_domain", v.org_domain);
    if (v.has_policy) {
        ldmarc_set_cstring(L, "policy", dmarc_policy_name(v.policy));
        /* The applied policy means something only for a decided message. */
        if (v.result == DMARC_RESULT_PASS || v.result == DMARC_RESULT_FAIL)
            ldmarc_set_cstring(L, "applied", dmarc_policy_name(v.applied));
    }
    if (v.reason != DMARC_REASON_NONE)
        ldmarc_set_cstring(L, "reason", dmarc_reason_name(v.reason));
    ldmarc_set_bool(L, "spf_aligned", v.spf_aligned);
    ldmarc_set_bool(L, "dkim_aligned", v.dkim_aligned);
    ldmarc_push_flags(L, dmarc_eval_flags(e->ev));
    lua_setfield(L, -2, "flags");
    return 1;
}

/***
 * The applied record of the overall verdict, alone.
 * @method ev:record()
 * @return {table} as dmarc.core.record_parse gives it, or nil when no
 *   record applies
 */
static int ldmarc_eval_record(lua_State *L)
{
    ldmarc_eval *e = ldmarc_check_eval(L);
    dmarc_verdict v;
    ldmarc_get_verdict(L, e, "record", &v);
    if (v.record == NULL)
        lua_pushnil(L);
    else
        ldmarc_push_record(L, v.record);
    return 1;
}

/***
 * Per Author Domain verdicts, in the order the domains were met.
 * @method ev:domains()
 * @return {table} array of verdict tables
 */
static int ldmarc_eval_domains(lua_State *L)
{
    ldmarc_eval *e = ldmarc_check_eval(L);
    dmarc_verdict v;
    dmarc_status st;
    size_t i, n;

    /* The overall verdict call tells whether the evaluation is done. */
    ldmarc_get_verdict(L, e, "domains", &v);
    n = dmarc_eval_domain_count(e->ev);
    if (n > DMARC_MAX_AUTHOR_DOMAINS)
        n = DMARC_MAX_AUTHOR_DOMAINS;
    lua_createtable(L, (int)n, 0);
    for (i = 0; i < n; i++) {
        memset(&v, 0, sizeof v);
        st = dmarc_eval_domain_verdict(e->ev, i, &v);
        if (st != DMARC_OK)
            ldmarc_verdict_state_error(L, "domains", st);
        ldmarc_push_verdict(L, &v, true);
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

/***
 * Flags of the evaluation, in bit order.
 * @method ev:flags()
 * @return {table} array of names ('multiple_from', 'no_from' ...)
 */
static int ldmarc_eval_flags(lua_State *L)
{
    ldmarc_eval *e = ldmarc_check_eval(L);
    ldmarc_push_flags(L, dmarc_eval_flags(e->ev));
    return 1;
}

/***
 * Every question handed out so far, as 'NAME/TYPE' (cache hits excluded).
 * @method ev:queries()
 */
static int ldmarc_eval_queries(lua_State *L)
{
    ldmarc_eval *e = ldmarc_check_eval(L);
    size_t i, n = dmarc_eval_query_count(e->ev);
    if (n > DMARC_EVAL_MAX_QUERIES)
        n = DMARC_EVAL_MAX_QUERIES;
    lua_createtable(L, (int)n, 0);
    for (i = 0; i < n; i++) {
        size_t len = 0;
        dmarc_qtype type = DMARC_QTYPE_TXT;
        const char *name = dmarc_eval_query_at(e->ev, i, &len, &type);
        const char *tname = dmarc_qtype_name(type);
        luaL_Buffer b;
        if (name == NULL)
            break;
        luaL_buffinit(L, &b);
        luaL_addlstring(&b, name, len);
        luaL_addchar(&b, '/');
        luaL_addstring(&b, tname != NULL ? tname : "TXT");
        luaL_pushresult(&b);
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

/***
 * Alignment the i-th DKIM result (1-based, input order) achieved [AGG-6].
 * @method ev:dkim_alignment(i)
 * @return {string} 'none', 'relaxed' or 'strict'
 */
static int ldmarc_eval_dkim_alignment(lua_State *L)
{
    ldmarc_eval *e = ldmarc_check_eval(L);
    lua_Integer i = luaL_checkinteger(L, 2);
    luaL_argcheck(L, i >= 1, 2, "index starts at 1");
    lua_pushstring(L, dmarc_align_name(dmarc_eval_dkim_alignment(e->ev, (size_t)(i - 1))));
    return 1;
}

/***
 * Alignment the SPF result achieved.
 * @method ev:spf_alignment()
 */
static int ldmarc_eval_spf_alignment(lua_State *L)
{
    ldmarc_eval *e = ldmarc_check_eval(L);
    lua_pushstring(L, dmarc_align_name(dmarc_eval_spf_alignment(e->ev)));
    return 1;
}

/***
 * Back to the freshly created state (same ctx and cache).
 * @method ev:reset()
 */
static int ldmarc_eval_reset(lua_State *L)
{
    ldmarc_eval *e = ldmarc_check_eval(L);
    dmarc_eval_reset(e->ev);
    return 0;
}

/* }==================================================================== */

/* ** {====================================================================
** Module
** ===================================================================== */

static const luaL_Reg ldmarc_eval_meta[] = {
    {"__gc", ldmarc_eval_close},
#if LUA_VERSION_NUM >= 504
    {"__close", ldmarc_eval_close},
#endif
    {"__tostring", ldmarc_eval_tostring},
    {NULL, NULL},
};

static const luaL_Reg ldmarc_eval_methods[] = {
    {"add_from", ldmarc_eval_add_from},
    {"add_author_domain", ldmarc_eval_add_author_domain},
    {"add_spf", ldmarc_eval_add_spf},
    {"add_dkim", ldmarc_eval_add_dkim},
    {"set_roll", ldmarc_eval_set_roll},
    {"set_now", ldmarc_eval_set_now},
    {"run", ldmarc_eval_run},
    {"query", ldmarc_eval_query},
    {"answer", ldmarc_eval_answer},
    {"verdict", ldmarc_eval_verdict},
    {"outcome", ldmarc_eval_outcome},
    {"record", ldmarc_eval_record},
    {"domains", ldmarc_eval_domains},
    {"flags", ldmarc_eval_flags},
    {"queries", ldmarc_eval_queries},
    {"dkim_alignment", ldmarc_eval_dkim_alignment},
    {"spf_alignment", ldmarc_eval_spf_alignment},
    {"reset", ldmarc_eval_reset},
    {"close", ldmarc_eval_close},
    {NULL, NULL},
};

static const luaL_Reg ldmarc_ctx_meta[] = {
    {"__gc", ldmarc_ctx_close},
#if LUA_VERSION_NUM >= 504
    {"__close", ldmarc_ctx_close},
#endif
    {"__tostring", ldmarc_ctx_tostring},
    {NULL, NULL},
};

static const luaL_Reg ldmarc_ctx_methods[] = {
    {"eval", ldmarc_ctx_eval},
    {"mode", ldmarc_ctx_mode},
    {"close", ldmarc_ctx_close},
    {NULL, NULL},
};

static const luaL_Reg ldmarc_cache_meta[] = {
    {"__gc", ldmarc_cache_close},
#if LUA_VERSION_NUM >= 504
    {"__close", ldmarc_cache_close},
#endif
    {"__tostring", ldmarc_cache_tostring},
    {NULL, NULL},
};

static const luaL_Reg ldmarc_cache_methods[] = {
    {"size", ldmarc_cache_size},
    {"clear", ldmarc_cache_clear},
    {"stats", ldmarc_cache_stats},
    {"close", ldmarc_cache_close},
    {NULL, NULL},
};

static const luaL_Reg ldmarc_record_box_meta[] = {{"__gc", ldmarc_record_box_gc}, {NULL, NULL}};
static const luaL_Reg ldmarc_from_box_meta[] = {{"__gc", ldmarc_from_box_gc}, {NULL, NULL}};
#ifdef DMARC_WITH_LIBPSL
static const luaL_Reg ldmarc_psl_meta[] = {{"__gc", ldmarc_psl_gc}, {NULL, NULL}};
#endif

/* Module functions; upvalue 1 is the module's private state table. */
static const luaL_Reg ldmarc_functions[] = {
    {"record_parse", ldmarc_record_parse},     {"is_record", ldmarc_is_record},
    {"from_parse", ldmarc_from_parse},         {"domain_normalize", ldmarc_domain_normalize},
    {"psl_org_domain", ldmarc_psl_org_domain}, {"new", ldmarc_new},
    {"new_cache", ldmarc_new_cache},           {NULL, NULL},
};

/* core.limits: the named bounds of dmarc.h, for drivers and tests. */
static void ldmarc_push_limits(lua_State *L)
{
#define LDMARC_LIMIT(name, value)                                                                  \
    lua_pushinteger(L, (lua_Integer)(value));                                                      \
    lua_setfield(L, -2, name)
    lua_createtable(L, 0, 20);
    LDMARC_LIMIT("walk_max_queries", DMARC_WALK_MAX_QUERIES);
    LDMARC_LIMIT("max_author_domains", DMARC_MAX_AUTHOR_DOMAINS);
    LDMARC_LIMIT("from_max_mailboxes", DMARC_FROM_MAX_MAILBOXES);
    LDMARC_LIMIT("from_max_fields", DMARC_FROM_MAX_FIELDS);
    LDMARC_LIMIT("from_max_len", DMARC_FROM_MAX_LEN);
    LDMARC_LIMIT("from_max_comment_depth", DMARC_FROM_MAX_COMMENT_DEPTH);
    LDMARC_LIMIT("record_max_len", DMARC_RECORD_MAX_LEN);
    LDMARC_LIMIT("record_max_tags", DMARC_RECORD_MAX_TAGS);
    LDMARC_LIMIT("record_max_uris", DMARC_RECORD_MAX_URIS);
    LDMARC_LIMIT("record_max_warnings", DMARC_RECORD_MAX_WARNINGS);
    LDMARC_LIMIT("answer_max_rrs", DMARC_ANSWER_MAX_RRS);
    LDMARC_LIMIT("max_dkim", DMARC_MAX_DKIM);
    LDMARC_LIMIT("max_spf", DMARC_MAX_SPF);
    LDMARC_LIMIT("eval_max_queries", DMARC_EVAL_MAX_QUERIES);
    LDMARC_LIMIT("domain_max_len", DMARC_DOMAIN_MAX_LEN);
    LDMARC_LIMIT("domain_max_labels", DMARC_DOMAIN_MAX_LABELS);
#undef LDMARC_LIMIT
}

LDMARC_EXPORT int luaopen_dmarc_core(lua_State *L);

LDMARC_EXPORT int luaopen_dmarc_core(lua_State *L)
{
    ldmarc_new_class(L, LDMARC_EVAL, ldmarc_eval_meta, ldmarc_eval_methods);
    ldmarc_new_class(L, LDMARC_CTX, ldmarc_ctx_meta, ldmarc_ctx_methods);
    ldmarc_new_class(L, LDMARC_CACHE, ldmarc_cache_meta, ldmarc_cache_methods);
    ldmarc_new_class(L, LDMARC_RECORD_BOX, ldmarc_record_box_meta, NULL);
    ldmarc_new_class(L, LDMARC_FROM_BOX, ldmarc_from_box_meta, NULL);
#ifdef DMARC_WITH_LIBPSL
    ldmarc_new_class(L, LDMARC_PSL, ldmarc_psl_meta, NULL);
#endif

    lua_newtable(L);
    lua_newtable(L); /* private state, shared as upvalue 1 */
    luaL_setfuncs(L, ldmarc_functions, 1);
    ldmarc_push_limits(L);
    lua_setfield(L, -2, "limits");
    lua_pushliteral(L, "dmarc.core");
    lua_setfield(L, -2, "_NAME");
    lua_pushliteral(L, DMARC_VERSION_STRING);
    lua_setfield(L, -2, "_VERSION");
#ifdef DMARC_WITH_LIBPSL
    lua_pushboolean(L, 1);
#else
    lua_pushboolean(L, 0);
#endif
    lua_setfield(L, -2, "has_psl");
    return 1;
}

/* }==================================================================== */
