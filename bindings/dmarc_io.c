/*
** dmarc.io: the Lua binding of the I/O adapters beside the core: the DNS
** layer (zone file or DNS server, TTL-aware cache), SPF through libspf2 and
** DKIM through libopendkim, all asking through the same resolver.
**
**   local dio = require 'dmarc.io'
**   local r = assert(dio.resolver{ zone = 'examples/example.zone' })
**   r:resolve(name, 'TXT')        --> rcode, txts, ttl   (dmarc.evaluate's resolve)
**   r:spf{ ip =, helo =, mail_from = }
**   r:dkim(message_text)
**
**   local chk = dio.spf_checker{ receiver = 'mx.example.net' }   -- sans-I/O SPF
**   local res = chk:check{ ip =, helo =, mail_from = }
**   -- res.questions: fetch them (any resolver), chk:answer(...) each, check again
**
** Error convention (bindings/binding.h, README "Error contract"): contract
** misuse raises; bad data (a zone that does not parse, a bad DNS server
** string, a message that is not one) returns nil, message, code with a
** stable code ('syntax', 'io', 'limit', 'invalid', 'state'); out of memory
** raises.
**
** Memory rule: C objects are put in their userdata box before the next Lua
** call that can raise; large results are built in userdata buffers.
** Lookups block: this module is for the command line and tests; a scanner
** with its own event loop (Rspamd) resolves through its own resolver, and
** checks SPF with an spf_checker, which never asks anything itself.
*/
#define _DEFAULT_SOURCE /* inet_ntop */

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "binding.h"
#include "dmarc_dkim.h"
#include "dmarc_dns.h"
#include "dmarc_dns_ldns.h"
#include "dmarc_spf.h"
#include "dmarc_zone.h"

#define LDMARC_IO_RESOLVER "dmarc.io.resolver"
#define LDMARC_IO_SPF_CHECKER "dmarc.io.spf_checker"
#define LDMARC_IO_BUFFER "dmarc.io.buffer"
/* Default cache size of a resolver (answers). */
#define LDMARC_IO_DEFAULT_CACHE 10000
/* Longest message dkim() accepts (bytes): far above any SMTP size limit. */
#define LDMARC_IO_MAX_MESSAGE (256u * 1024u * 1024u)

typedef struct lio_resolver {
    dmarc_dns *dns; /* NULL once closed */
    dmarc_spf *spf; /* made on first use */
    dmarc_dkim *dkim;
    char receiver[DMARC_DOMAIN_MAX_LEN + 1];
    /* The results of the last dkim(): kept with the resolver rather than made per message
    ** (some 23 KB, which would otherwise be garbage after every call). Copied out into Lua
    ** tables before dkim() returns; nothing in between calls back into Lua. */
    dmarc_dkim_result dkim_res;
} lio_resolver;

static const char *const lio_qtype_names[] = {"TXT",   "A",  "AAAA", "MX", "PTR",
                                              "CNAME", "NS", "SOA",  NULL};
static const unsigned lio_qtype_values[] = {DMARC_DNS_T_TXT, DMARC_DNS_T_A,   DMARC_DNS_T_AAAA,
                                            DMARC_DNS_T_MX,  DMARC_DNS_T_PTR, DMARC_DNS_T_CNAME,
                                            DMARC_DNS_T_NS,  DMARC_DNS_T_SOA};

#define LIO_NAME_ENTRY(U, l) #l,
static const char *const lio_rcode_names[] = {DMARC_RCODE_MAP(LIO_NAME_ENTRY) NULL};
#undef LIO_NAME_ENTRY

/* ** {====================================================================
** Helpers
** ===================================================================== */

static lio_resolver *lio_check(lua_State *L, int idx)
{
    lio_resolver *r = luaL_checkudata(L, idx, LDMARC_IO_RESOLVER);
    if (r->dns == NULL)
        luaL_error(L, "attempt to use a closed %s", LDMARC_IO_RESOLVER);
    return r;
}

static void lio_release(lio_resolver *r)
{
    dmarc_spf_free(r->spf);
    r->spf = NULL;
    dmarc_dkim_free(r->dkim);
    r->dkim = NULL;
    dmarc_dns_free(r->dns);
    r->dns = NULL;
}

/* }==================================================================== */

/* ** {====================================================================
** dmarc.io.resolver{...}
** ===================================================================== */

static const char *const lio_option_names[] = {"zone",        "zone_text", "origin",  "server",
                                               "resolv_conf", "timeout",   "retries", "tcp",
                                               "cache",       "receiver",  "faults",  NULL};

/***
** @function dmarc.io.resolver
** @param {table} opts zone (file) | zone_text | server ("HOST[:PORT]", comma-separated)
**   | neither (the nameservers of resolv_conf, default /etc/resolv.conf); origin (zone
**   origin), timeout (seconds per try, default 2), retries (default 1), tcp, cache
**   (entries, default 10000; 0: none), receiver (SPF %{r}), faults ({name = rcode}: every
**   name below answers that rcode, for offline tests)
** @return {resolver} or nil, message, code ('syntax' | 'io' | 'limit' | 'invalid')
*/
static int lio_resolver_new(lua_State *L)
{
    lio_resolver *r;
    const char *zone = NULL, *zone_text = NULL, *origin = NULL, *server = NULL;
    const char *resolv_conf = NULL, *receiver = NULL;
    size_t zone_text_len = 0;
    double timeout = 2.0;
    lua_Integer retries = 1, cache = LDMARC_IO_DEFAULT_CACHE;
    int tcp = 0, has_faults = 0;
    dmarc_dns_options dopts;
    dmarc_dns_backend be;
    dmarc_status st;
    char errbuf[200];

    if (lua_isnoneornil(L, 1))
        lua_newtable(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    ldmarc_check_options(L, 1, "dmarc.io.resolver", lio_option_names);
    /* The option strings stay on the stack (slots 2..) while used. */
    if (ldmarc_opt_field(L, 1, "dmarc.io.resolver", "zone", LUA_TSTRING))
        zone = lua_tostring(L, -1);
    if (ldmarc_opt_field(L, 1, "dmarc.io.resolver", "zone_text", LUA_TSTRING))
        zone_text = lua_tolstring(L, -1, &zone_text_len);
    if (ldmarc_opt_field(L, 1, "dmarc.io.resolver", "origin", LUA_TSTRING))
        origin = lua_tostring(L, -1);
    if (ldmarc_opt_field(L, 1, "dmarc.io.resolver", "server", LUA_TSTRING))
        server = lua_tostring(L, -1);
    if (ldmarc_opt_field(L, 1, "dmarc.io.resolver", "resolv_conf", LUA_TSTRING))
        resolv_conf = lua_tostring(L, -1);
    if (ldmarc_opt_field(L, 1, "dmarc.io.resolver", "receiver", LUA_TSTRING))
        receiver = lua_tostring(L, -1);
    if (ldmarc_opt_field(L, 1, "dmarc.io.resolver", "timeout", LUA_TNUMBER))
        timeout = lua_tonumber(L, -1);
    if (ldmarc_opt_field(L, 1, "dmarc.io.resolver", "retries", LUA_TNUMBER))
        retries = lua_tointeger(L, -1);
    if (ldmarc_opt_field(L, 1, "dmarc.io.resolver", "cache", LUA_TNUMBER))
        cache = lua_tointeger(L, -1);
    if (ldmarc_opt_field(L, 1, "dmarc.io.resolver", "tcp", LUA_TBOOLEAN))
        tcp = lua_toboolean(L, -1);
    has_faults = ldmarc_opt_field(L, 1, "dmarc.io.resolver", "faults", LUA_TTABLE);
    if ((zone != NULL) + (zone_text != NULL) + (server != NULL) > 1)
        return luaL_error(L, "dmarc.io.resolver: give one of zone, zone_text and server");
    if (!(timeout > 0 && timeout <= DMARC_DNS_MAX_TIMEOUT_MS / 1000.0))
        return luaL_error(L, "dmarc.io.resolver: option 'timeout': out of range");
    if (retries < 0 || retries > (lua_Integer)DMARC_DNS_MAX_RETRIES)
        return luaL_error(L, "dmarc.io.resolver: option 'retries': out of range");
    if (cache < 0 || cache > 10000000)
        return luaL_error(L, "dmarc.io.resolver: option 'cache': out of range");
    if (receiver != NULL && strlen(receiver) > DMARC_DOMAIN_MAX_LEN)
        return luaL_error(L, "dmarc.io.resolver: option 'receiver': too long");

    /* The box first, empty, so that __gc frees whatever goes in it. */
    r = lua_newuserdatauv(L, sizeof *r, 0);
    memset(r, 0, sizeof *r);
    luaL_setmetatable(L, LDMARC_IO_RESOLVER);
    snprintf(r->receiver, sizeof r->receiver, "%s", receiver != NULL ? receiver : "unknown");

    if (zone != NULL || zone_text != NULL) {
        dmarc_zone *z = NULL;
        dmarc_zone_error zerr;
        if (zone != NULL)
            st = dmarc_zone_load(NULL, zone, origin, &z, &zerr);
        else
            st = dmarc_zone_parse(NULL, zone_text, zone_text_len, origin, &z, &zerr);
        if (st == DMARC_ERR_NOMEM)
            return luaL_error(L, "dmarc.io.resolver: out of memory");
        if (st != DMARC_OK) {
            if (zerr.line > 0)
                lua_pushfstring(L, "%s:%d: %s", zone != NULL ? zone : "zone", (int)zerr.line,
                                zerr.message);
            else
                lua_pushstring(L, zerr.message);
            lua_pushnil(L);
            lua_insert(L, -2);
            /* An unreadable file is 'io'; the rest is the status's code. */
            lua_pushstring(L, strcmp(zerr.code, "io") == 0 ? "io" : ldmarc_status_code(st));
            return 3;
        }
        be = dmarc_zone_backend(z);
    } else {
        dmarc_dns_server_options sopts;
        dmarc_dns_server_options_init(&sopts);
        sopts.servers = server;
        sopts.resolv_conf = resolv_conf;
        sopts.timeout_ms = (unsigned)(timeout * 1000.0 + 0.5);
        sopts.retries = (unsigned)retries;
        sopts.tcp = tcp != 0;
        errbuf[0] = '\0';
        st = dmarc_dns_server_backend(&sopts, &be, errbuf, sizeof errbuf);
        if (st == DMARC_ERR_NOMEM)
            return luaL_error(L, "dmarc.io.resolver: out of memory");
        if (st != DMARC_OK)
            return ldmarc_fail(L, errbuf[0] != '\0' ? errbuf : dmarc_strerror(st),
                               st == DMARC_ERR_SYNTAX ? "syntax" : "io");
    }
    dmarc_dns_options_init(&dopts);
    dopts.cache_entries = (size_t)cache;
    r->dns = dmarc_dns_new(&dopts, be, &st); /* owns the backend, also on failure */
    if (r->dns == NULL)
        return luaL_error(L, "dmarc.io.resolver: %s", dmarc_strerror(st));

    if (has_faults) {
        int faults;
        lua_getfield(L, 1, "faults");
        faults = lua_gettop(L);
        lua_pushnil(L);
        while (lua_next(L, faults) != 0) {
            size_t len;
            const char *name;
            int rc;
            if (lua_type(L, -2) != LUA_TSTRING)
                return luaL_error(L, "dmarc.io.resolver: faults: names must be strings");
            name = lua_tolstring(L, -2, &len);
            rc = luaL_checkoption(L, -1, NULL, lio_rcode_names);
            st = dmarc_dns_add_fault(r->dns, name, len, (dmarc_rcode)rc);
            if (st != DMARC_OK)
                return luaL_error(L, "dmarc.io.resolver: faults: %s: %s", name, dmarc_strerror(st));
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    return 1;
}

/* }==================================================================== */

/* ** {====================================================================
** Questions
** ===================================================================== */

typedef struct lio_spf_checker {
    dmarc_spf *spf; /* NULL once closed */
} lio_spf_checker;

/* Pushes the presentation form of one RR's data. */
static void lio_push_rdata(lua_State *L, const dmarc_dns_rr *rr)
{
    char buf[INET6_ADDRSTRLEN + 1];
    switch (rr->type) {
    case DMARC_DNS_T_A:
    case DMARC_DNS_T_AAAA:
        if (inet_ntop(rr->type == DMARC_DNS_T_A ? AF_INET : AF_INET6, rr->data, buf, sizeof buf) !=
            NULL) {
            lua_pushstring(L, buf);
            return;
        }
        lua_pushliteral(L, "");
        return;
    case DMARC_DNS_T_MX:
        lua_pushfstring(L, "%d %s", (int)rr->pref, rr->data);
        return;
    default:
        lua_pushlstring(L, rr->data, rr->len);
        return;
    }
}

/* Ask, with the answer owned by a userdata buffer while Lua values are
** made from it. Returns the answer; raises on out of memory. */
static const dmarc_dns_answer *lio_ask(lua_State *L, lio_resolver *r, int name_idx, int type_idx)
{
    size_t len;
    const char *name = luaL_checklstring(L, name_idx, &len);
    int t = luaL_checkoption(L, type_idx, "TXT", lio_qtype_names);
    dmarc_dns_answer *a = NULL, **slot;
    dmarc_status st;
    slot = lua_newuserdatauv(L, sizeof *slot, 0);
    *slot = NULL;
    luaL_setmetatable(L, LDMARC_IO_BUFFER);
    st = dmarc_dns_query(r->dns, name, len, lio_qtype_values[t], &a);
    if (st == DMARC_ERR_NOMEM)
        luaL_error(L, "dmarc.io: out of memory");
    else if (st != DMARC_OK)
        luaL_error(L, "dmarc.io: %s", dmarc_strerror(st));
    *slot = a;
    return a;
}

static int lio_buffer_gc(lua_State *L)
{
    dmarc_dns_answer **slot = luaL_checkudata(L, 1, LDMARC_IO_BUFFER);
    dmarc_dns_answer_free(*slot);
    *slot = NULL;
    return 0;
}

/***
** @method resolver:query(name, qtype)
** @param {string} name
** @param {string} qtype 'TXT' (default), 'A', 'AAAA', 'MX', 'PTR', 'CNAME', 'NS', 'SOA'
** @return {table} {rcode=, ttl=, records={...}, name=, cname_hops=, from_cache=, problem=}:
**   problem (servfail/timeout only, when known) says what went wrong; records
**   are TXT text (strings joined [REC-1]), addresses, "PREF NAME" for MX, or names
*/
static int lio_query(lua_State *L)
{
    lio_resolver *r = lio_check(L, 1);
    const dmarc_dns_answer *a = lio_ask(L, r, 2, 3);
    size_t i;
    lua_createtable(L, 0, 6);
    ldmarc_set_cstring(L, "rcode", dmarc_rcode_name(a->rcode));
    lua_pushinteger(L, (lua_Integer)a->ttl);
    lua_setfield(L, -2, "ttl");
    ldmarc_set_cstring(L, "name", a->name);
    lua_pushinteger(L, (lua_Integer)a->cname_hops);
    lua_setfield(L, -2, "cname_hops");
    ldmarc_set_bool(L, "from_cache", a->from_cache);
    if (a->problem != NULL) {
        ldmarc_set_cstring(L, "problem", a->problem);
    }
    lua_createtable(L, (int)a->count, 0);
    for (i = 0; i < a->count; i++) {
        lio_push_rdata(L, &a->rrs[i]);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, -2, "records");
    return 1;
}

/***
** @method resolver:resolve(name, qtype)
** The resolver shape dmarc.evaluate takes (input.resolve): TXT RRs as
** strings; for other types one stand-in string per RR, so that NOERROR with
** data (the name exists) stays apart from NODATA [DISC-12].
** @return {string} rcode, {table} txts, {number} ttl
*/
static int lio_resolve(lua_State *L)
{
    lio_resolver *r = lio_check(L, 1);
    const dmarc_dns_answer *a = lio_ask(L, r, 2, 3);
    size_t i;
    lua_pushstring(L, dmarc_rcode_name(a->rcode));
    lua_createtable(L, (int)a->count, 0);
    for (i = 0; i < a->count; i++) {
        if (a->rrs[i].type == DMARC_DNS_T_TXT)
            lua_pushlstring(L, a->rrs[i].data, a->rrs[i].len);
        else
            lua_pushliteral(L, "");
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_pushinteger(L, (lua_Integer)a->ttl);
    return 3;
}

/* }==================================================================== */

/* ** {====================================================================
** SPF and DKIM
** ===================================================================== */

static const char *lio_field_string(lua_State *L, int t, const char *name)
{
    int type;
    lua_getfield(L, t, name);
    type = lua_type(L, -1);
    if (type == LUA_TNIL)
        return NULL;
    if (type != LUA_TSTRING)
        luaL_error(L, "spf: field '%s': string expected, got %s", name, lua_typename(L, type));
    return lua_tostring(L, -1);
}

/***
** @method resolver:spf(opts)
** check_host() of RFC 7208 for one identity.
** @param {table} opts ip (required), helo, mail_from ("" or nil: the null
**   reverse-path, checked as postmaster@HELO [ALN-1]), identity ('mfrom'
**   default, or 'helo' for the HELO identity)
** @return {table} {result=, domain=, scope='mfrom'|'helo', reason=, dns_terms=,
**   void_lookups=, record=}; record: the domain's SPF record as evaluated (its TXT
**   strings joined, RFC 7208 §3.3), absent when there was no single one; or nil,
**   message, 'invalid' for an unusable ip
*/
/* The fields of an spf{} / check{} argument table at @arg: ip, helo,
** mail_from, identity. Strings stay anchored on the stack. */
typedef struct lio_spf_args {
    const char *ip, *helo, *mail_from;
    int helo_identity;
} lio_spf_args;

static void lio_spf_args_read(lua_State *L, int arg, lio_spf_args *a)
{
    static const char *const identities[] = {"mfrom", "helo", NULL};
    static const char *const names[] = {"ip", "helo", "mail_from", "identity", NULL};
    luaL_checktype(L, arg, LUA_TTABLE);
    ldmarc_check_options(L, arg, "dmarc.io spf", names);
    a->ip = lio_field_string(L, arg, "ip");
    a->helo = lio_field_string(L, arg, "helo");
    a->mail_from = lio_field_string(L, arg, "mail_from");
    lua_getfield(L, arg, "identity");
    a->helo_identity = 0;
    if (!lua_isnil(L, -1))
        a->helo_identity = luaL_checkoption(L, -1, NULL, identities) == 1;
}

/* Runs one check and pushes its result table (or nil, msg, 'invalid'). */
static int lio_spf_run(lua_State *L, dmarc_spf *spf, const lio_spf_args *a)
{
    dmarc_spf_result res;
    dmarc_status st;
    if (a->ip == NULL)
        return ldmarc_fail(L, "spf: an ip is required", "invalid");
    st = dmarc_spf_check(spf, a->ip, a->helo, a->mail_from, a->helo_identity != 0, &res);
    if (st == DMARC_ERR_INVAL)
        return ldmarc_fail(L, "spf: not an IP address", "invalid");
    if (st != DMARC_OK)
        return luaL_error(L, "dmarc.io: spf: %s", dmarc_strerror(st));
    lua_createtable(L, 0, 8);
    ldmarc_set_cstring(L, "result", dmarc_auth_name(res.result));
    ldmarc_set_cstring(L, "domain", res.domain);
    ldmarc_set_cstring(L, "scope", res.is_helo ? "helo" : "mfrom");
    ldmarc_set_cstring(L, "reason", res.reason);
    lua_pushinteger(L, (lua_Integer)res.dns_terms);
    lua_setfield(L, -2, "dns_terms");
    lua_pushinteger(L, (lua_Integer)res.void_lookups);
    lua_setfield(L, -2, "void_lookups");
    if (dmarc_spf_record(spf) != NULL && !res.pending)
        ldmarc_set_cstring(L, "record", dmarc_spf_record(spf));
    if (res.pending) {
        size_t i, n = dmarc_spf_question_count(spf);
        lua_createtable(L, (int)n, 0);
        for (i = 0; i < n; i++) {
            const dmarc_spf_question *q = dmarc_spf_question_at(spf, i);
            const char *tname = dmarc_dns_type_name(q->type);
            lua_createtable(L, 0, 2);
            ldmarc_set_cstring(L, "name", q->name);
            ldmarc_set_cstring(L, "type", tname != NULL ? tname : "TXT");
            lua_rawseti(L, -2, (int)i + 1);
        }
        lua_setfield(L, -2, "questions");
    }
    return 1;
}

static int lio_spf(lua_State *L)
{
    lio_resolver *r = lio_check(L, 1);
    lio_spf_args a;
    dmarc_status st;
    lio_spf_args_read(L, 2, &a);
    if (r->spf == NULL && a.ip != NULL) {
        r->spf = dmarc_spf_new(r->dns, r->receiver, &st);
        if (r->spf == NULL)
            return luaL_error(L, "dmarc.io: spf: %s", dmarc_strerror(st));
    }
    return lio_spf_run(L, r->spf, &a);
}

/***
** @method resolver:dkim(message)
** Verify every DKIM signature of a message (up to the verify cap).
** @param {string} message the whole message, CRLF or LF line ends
** @return {table} {total=, signatures={{domain=, selector=, result=, reason=,
**   algorithm=, b=, key_bits=, verified=, body_truncated=, unsigned_from=}, ...}};
**   or nil, message, code ('syntax': not a message, 'limit')
*/
static int lio_dkim(lua_State *L)
{
    lio_resolver *r = lio_check(L, 1);
    size_t len, i;
    const char *msg = luaL_checklstring(L, 2, &len);
    dmarc_dkim_result *res;
    dmarc_status st;
    if (len > LDMARC_IO_MAX_MESSAGE)
        return ldmarc_fail(L, "dkim: message too large", "limit");
    if (r->dkim == NULL) {
        r->dkim = dmarc_dkim_new(r->dns, &st);
        if (r->dkim == NULL)
            return luaL_error(L, "dmarc.io: dkim: %s", dmarc_strerror(st));
    }
    /* Results live in the resolver: nothing to free if a push raises. */
    res = &r->dkim_res;
    st = dmarc_dkim_verify(r->dkim, msg, len, res);
    if (st == DMARC_ERR_NOMEM)
        return luaL_error(L, "dmarc.io: dkim: out of memory");
    if (st == DMARC_ERR_SYNTAX)
        return ldmarc_fail(L, "not a message: a header line without a field name", "syntax");
    if (st != DMARC_OK)
        return ldmarc_fail(L, dmarc_strerror(st), ldmarc_status_code(st));
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, (lua_Integer)res->total);
    lua_setfield(L, -2, "total");
    lua_createtable(L, (int)res->count, 0);
    for (i = 0; i < res->count; i++) {
        const dmarc_dkim_sig *s = &res->sigs[i];
        lua_createtable(L, 0, 10);
        ldmarc_set_cstring(L, "domain", s->domain);
        ldmarc_set_cstring(L, "selector", s->selector);
        ldmarc_set_cstring(L, "result", dmarc_auth_name(s->result));
        ldmarc_set_cstring(L, "reason", s->reason);
        ldmarc_set_cstring(L, "algorithm", s->algorithm);
        ldmarc_set_cstring(L, "b", s->b);
        lua_pushinteger(L, (lua_Integer)s->key_bits);
        lua_setfield(L, -2, "key_bits");
        ldmarc_set_bool(L, "verified", s->verified);
        ldmarc_set_bool(L, "body_truncated", s->body_truncated);
        ldmarc_set_bool(L, "unsigned_from", s->unsigned_from);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, -2, "signatures");
    return 1;
}

/* }==================================================================== */

/* ** {====================================================================
** dmarc.io.header_fields(text, pos, max_fields, max_field_bytes[, lenient])
** ===================================================================== */

/* The end of the header section (RFC 5322 §2.1: the first empty line) from 0-based @pos:
** the offset just past its last LF, or @len. Only asked when the message holds a NUL. */
static size_t lio_section_end(const char *text, size_t len, size_t pos)
{
    size_t i;
    if (pos < len && text[pos] == '\n')
        return pos;
    if (pos + 1 < len && text[pos] == '\r' && text[pos + 1] == '\n')
        return pos;
    for (i = pos; i + 1 < len; i++) {
        if (text[i] != '\n')
            continue;
        if (text[i + 1] == '\n' || (i + 2 < len && text[i + 1] == '\r' && text[i + 2] == '\n'))
            return i + 1;
    }
    return len;
}

/* A field name byte: printable ASCII except the colon (RFC 5322 §2.2). */
static int lio_is_ftext(unsigned char c)
{
    return c >= 33 && c <= 126 && c != ':';
}

/* Pushes the value of a field spanning text[start, end): as is when every line end inside
** is CRLF, else with each LF (and one CR before it) rewritten to CRLF. */
static void lio_push_value(lua_State *L, const char *text, size_t start, size_t end, int bare_lf)
{
    luaL_Buffer b;
    size_t i, run = start;
    if (!bare_lf) {
        lua_pushlstring(L, text + start, end - start);
        return;
    }
    luaL_buffinit(L, &b);
    for (i = start; i < end; i++) {
        if (text[i] != '\n')
            continue;
        luaL_addlstring(&b, text + run, (i > run && text[i - 1] == '\r' ? i - 1 : i) - run);
        luaL_addlstring(&b, "\r\n", 2);
        run = i + 1;
    }
    luaL_addlstring(&b, text + run, end - run);
    luaL_pushresult(&b);
}

/* Pushes the lower-case form of a field name (ASCII only: names are printable ASCII). */
static void lio_push_lower(lua_State *L, const char *name, size_t len)
{
    luaL_Buffer b;
    size_t i;
    for (i = 0; i < len && !(name[i] >= 'A' && name[i] <= 'Z'); i++) {
    }
    if (i == len) {
        lua_pushvalue(L, -1); /* already lower case: the same string */
        return;
    }
    luaL_buffinit(L, &b);
    for (i = 0; i < len; i++) {
        char c = name[i];
        luaL_addchar(&b, (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c));
    }
    luaL_pushresult(&b);
}

/* Appends the field being read to the table at @t (name, lower-case name, value), or
** returns 0 with the limit message pushed. */
static int lio_add_field(lua_State *L, int t, lua_Integer *n, const char *text, size_t name_at,
                         size_t name_len, size_t start, size_t end, int bare_lf,
                         lua_Integer max_bytes)
{
    size_t value_len;
    lua_pushlstring(L, text + name_at, name_len);
    lio_push_value(L, text, start, end, bare_lf);
    (void)lua_tolstring(L, -1, &value_len);
    if ((lua_Integer)value_len > max_bytes) {
        lua_pop(L, 1);
        lua_pushfstring(L, "header field %s longer than %d bytes", lua_tostring(L, -1),
                        (int)max_bytes);
        return 0;
    }
    lua_pushvalue(L, -2);
    lua_rawseti(L, t, (int)++*n); /* name */
    lua_insert(L, -2);            /* value, name */
    lio_push_lower(L, text + name_at, name_len);
    lua_rawseti(L, t, (int)++*n); /* lower-case name */
    lua_pop(L, 1);
    lua_rawseti(L, t, (int)++*n); /* value */
    return 1;
}

/***
** @function dmarc.io.header_fields
** The header section of a message walked once in C, for dmarc.receive.message (which keeps
** the rules and the messages of its errors identical to its own walk, its Lua mirror).
** @param {string} text the whole message
** @param {integer} pos where the section starts (1-based: past an mbox "From " line)
** @param {integer} max_fields at most this many fields
** @param {integer} max_field_bytes one field's value at most this long (CRLF-joined)
** @param {boolean} lenient (optional) take what can be read, for report mail received from
**   anyone: a line that is no field (no "name:", or a continuation line with no field before
**   it) is skipped, a field over max_field_bytes or past max_fields is dropped, a NUL byte is
**   kept as data; nothing is refused.
** @return {table} {name, lower-case name, value, ...} (values after the colon, lines joined
**   by CRLF), {integer} the body's offset; lenient: also {integer} the lines and fields
**   skipped or dropped. Strict: or nil, message, code ('syntax' | 'limit')
*/
/* The walk's state: the field being read and what was kept or skipped. */
typedef struct lio_walk {
    const char *text;
    int t;                           /* stack index of the fields table */
    lua_Integer n, nfields, skipped; /* table items, fields kept, lines/fields left out */
    lua_Integer max_fields, max_bytes;
    size_t name_at, name_len, start, end;
    int have, bare_lf, drop, lenient;
} lio_walk;

/* Ends the field being read: appended, or (lenient) counted as dropped. 0: the limit message
** is pushed (strict only). */
static int lio_walk_end_field(lua_State *L, lio_walk *w)
{
    if (!w->have)
        return 1;
    w->have = 0;
    if (w->drop) {
        w->skipped++;
        return 1;
    }
    if (!lio_add_field(L, w->t, &w->n, w->text, w->name_at, w->name_len, w->start, w->end,
                       w->bare_lf, w->max_bytes)) {
        if (!w->lenient)
            return 0;
        lua_pop(L, 2); /* its name and the limit message: the field is dropped */
        w->skipped++;
        return 1;
    }
    w->nfields++;
    return 1;
}

/* What one line of the walk gave: go on, or stop with the message pushed. */
enum { LIO_WALK_OK, LIO_WALK_SYNTAX, LIO_WALK_LIMIT };

/* A continuation line (RFC 5322 §2.2.3, folding) ending at @last: part of the field being
** read. */
static int lio_walk_continuation(lua_State *L, lio_walk *w, size_t line, size_t last,
                                 lua_Integer lineno)
{
    if (!w->have) {
        if (w->lenient) {
            w->skipped++;
            return LIO_WALK_OK;
        }
        lua_pushfstring(L, "line %d: continuation line without a header field", (int)lineno);
        return LIO_WALK_SYNTAX;
    }
    if (w->text[line - 2] != '\r')
        w->bare_lf = 1;
    w->end = last;
    if ((lua_Integer)(w->end - w->start) > w->max_bytes && !w->drop) {
        if (!w->lenient) {
            lua_pushlstring(L, w->text + w->name_at, w->name_len);
            lua_pushfstring(L, "header field %s longer than %d bytes", lua_tostring(L, -1),
                            (int)w->max_bytes);
            return LIO_WALK_LIMIT;
        }
        w->drop = 1; /* its further lines are read past, and it is left out */
    }
    return LIO_WALK_OK;
}

/* A line that starts a field (the one before it ends): a name of printable ASCII but the
** colon (RFC 5322 §2.2), optional WSP (the obsolete syntax, §4.5) and the colon. */
static int lio_walk_field_line(lua_State *L, lio_walk *w, size_t line, size_t last,
                               lua_Integer lineno)
{
    const char *text = w->text;
    size_t i = line;
    if (!lio_walk_end_field(L, w))
        return LIO_WALK_LIMIT;
    while (i < last && lio_is_ftext((unsigned char)text[i]))
        i++;
    w->name_at = line;
    w->name_len = i - line;
    while (i < last && (text[i] == ' ' || text[i] == '\t'))
        i++;
    if (w->name_len == 0 || i >= last || text[i] != ':') {
        if (w->lenient) {
            w->skipped++;
            return LIO_WALK_OK;
        }
        lua_pushfstring(L, "line %d: not a header field (no \"name:\")", (int)lineno);
        return LIO_WALK_SYNTAX;
    }
    w->drop = 0;
    if (w->nfields >= w->max_fields) {
        if (!w->lenient) {
            lua_pushfstring(L, "more than %d header fields", (int)w->max_fields);
            return LIO_WALK_LIMIT;
        }
        w->drop = 1;
    }
    w->have = 1;
    w->bare_lf = 0;
    w->start = i + 1;
    w->end = last;
    return LIO_WALK_OK;
}

/* nil, the message on top, the code. */
static int lio_walk_fail(lua_State *L, int status)
{
    lua_pushnil(L);
    lua_insert(L, -2);
    lua_pushstring(L, status == LIO_WALK_SYNTAX ? "syntax" : "limit");
    return 3;
}

static int lio_header_fields(lua_State *L)
{
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    lua_Integer pos1 = luaL_checkinteger(L, 2);
    size_t pos, line, body = len;
    lua_Integer lineno = 0;
    lio_walk w;
    memset(&w, 0, sizeof w);
    w.text = text;
    w.max_fields = luaL_checkinteger(L, 3);
    w.max_bytes = luaL_checkinteger(L, 4);
    w.lenient = lua_toboolean(L, 5);
    luaL_argcheck(L, pos1 >= 1 && (lua_Integer)len + 1 >= pos1, 2, "out of range");
    pos = (size_t)pos1 - 1;
    if (!w.lenient) {
        const char *nul = memchr(text + pos, '\0', len - pos);
        if (nul != NULL && (size_t)(nul - text) < lio_section_end(text, len, pos))
            return ldmarc_fail(L, "NUL byte in the header section", "syntax");
    }
    lua_createtable(L, 48, 0);
    w.t = lua_gettop(L);
    /* Each line once: every step moves past a LF, so the walk is bounded by the length. */
    for (line = pos; line < len;) {
        const char *nl;
        size_t next, last;
        int status;
        unsigned char first = (unsigned char)text[line];
        if (first == '\n') {
            body = line + 1;
            break;
        }
        if (first == '\r' && line + 1 < len && text[line + 1] == '\n') {
            body = line + 2;
            break;
        }
        lineno++;
        nl = memchr(text + line, '\n', len - line);
        next = nl ? (size_t)(nl - text) : len;
        last = next; /* the line is text[line, last): no LF, and one CR before it dropped */
        if (last > line && text[last - 1] == '\r')
            last--;
        status = (first == ' ' || first == '\t') ? lio_walk_continuation(L, &w, line, last, lineno)
                                                 : lio_walk_field_line(L, &w, line, last, lineno);
        if (status != LIO_WALK_OK)
            return lio_walk_fail(L, status);
        line = next + 1;
    }
    if (lineno == 0 && !w.lenient) {
        lua_pushliteral(L, "line 1: not a header field (no \"name:\")");
        return lio_walk_fail(L, LIO_WALK_SYNTAX);
    }
    if (!lio_walk_end_field(L, &w))
        return lio_walk_fail(L, LIO_WALK_LIMIT);
    lua_pushinteger(L, (lua_Integer)body + 1);
    if (!w.lenient)
        return 2;
    lua_pushinteger(L, w.skipped);
    return 3;
}

/* }==================================================================== */

/* ** {====================================================================
** dmarc.io.spf_checker{...}: SPF without a resolver
** ===================================================================== */

/***
** @function dmarc.io.spf_checker
** @param {table} opts receiver (SPF %{r}, default "unknown")
** @return {spf_checker} a checker that asks nothing itself: its questions
**   come back from check() for the caller to fetch, answer() adds them
*/
static int lio_spf_checker_new(lua_State *L)
{
    const char *receiver = NULL;
    lio_spf_checker *c;
    dmarc_status st;
    static const char *const names[] = {"receiver", NULL};
    ldmarc_check_options(L, 1, "dmarc.io.spf_checker", names);
    if (ldmarc_opt_field(L, 1, "dmarc.io.spf_checker", "receiver", LUA_TSTRING))
        receiver = lua_tostring(L, -1);
    if (receiver != NULL && strlen(receiver) > DMARC_DOMAIN_MAX_LEN)
        return luaL_error(L, "dmarc.io.spf_checker: option 'receiver': too long");
    c = lua_newuserdatauv(L, sizeof *c, 0);
    c->spf = NULL;
    luaL_setmetatable(L, LDMARC_IO_SPF_CHECKER);
    c->spf = dmarc_spf_new_offline(receiver, &st);
    if (c->spf == NULL)
        return luaL_error(L, "dmarc.io.spf_checker: %s", dmarc_strerror(st));
    return 1;
}

static lio_spf_checker *lio_check_checker(lua_State *L)
{
    lio_spf_checker *c = luaL_checkudata(L, 1, LDMARC_IO_SPF_CHECKER);
    if (c->spf == NULL)
        luaL_error(L, "attempt to use a closed %s", LDMARC_IO_SPF_CHECKER);
    return c;
}

/***
** @method spf_checker:check(opts)
** check_host() as resolver:spf(opts), from the answers added so far.
** @return {table} as resolver:spf; when answers are missing, also
**   questions = {{name=, type=}, ...} (at most spf_max_questions): the
**   result is then not final. nil, message, 'invalid' for an unusable ip.
*/
static int lio_checker_check(lua_State *L)
{
    lio_spf_checker *c = lio_check_checker(L);
    lio_spf_args a;
    lio_spf_args_read(L, 2, &a);
    return lio_spf_run(L, c->spf, &a);
}

/* One record of an answer in presentation form, into @rr (data in @buf). */
static int lio_checker_rdata(const char *txt, size_t len, unsigned type, dmarc_dns_rr *rr,
                             char *buf, size_t bufsz)
{
    size_t nlen;
    memset(rr, 0, sizeof *rr);
    rr->type = (uint16_t)type;
    switch (type) {
    case DMARC_DNS_T_A:
    case DMARC_DNS_T_AAAA:
        if (len >= bufsz)
            return 0;
        memcpy(buf, txt, len);
        buf[len] = '\0';
        /* Parsed in place: the address bytes go to the start of buf. */
        {
            unsigned char addr[16];
            if (inet_pton(type == DMARC_DNS_T_A ? AF_INET : AF_INET6, buf, addr) != 1)
                return 0;
            rr->len = type == DMARC_DNS_T_A ? 4 : 16;
            memcpy(buf, addr, rr->len);
        }
        rr->data = buf;
        return 1;
    case DMARC_DNS_T_MX:
        /* "PREF NAME" or "NAME" */
        if (len > 0 && txt[0] >= '0' && txt[0] <= '9') {
            unsigned long pref = 0;
            size_t i = 0;
            while (i < len && txt[i] >= '0' && txt[i] <= '9' && pref <= 65535)
                pref = pref * 10 + (unsigned long)(txt[i++] - '0');
            if (pref > 65535 || i >= len || txt[i] != ' ')
                return 0;
            while (i < len && txt[i] == ' ')
                i++;
            rr->pref = (uint16_t)pref;
            txt += i;
            len -= i;
        }
        if (dmarc_dns_name_normalize(txt, len, buf, &nlen) != DMARC_OK)
            return 0;
        rr->data = buf;
        rr->len = nlen;
        return 1;
    case DMARC_DNS_T_PTR:
        if (dmarc_dns_name_normalize(txt, len, buf, &nlen) != DMARC_OK)
            return 0;
        rr->data = buf;
        rr->len = nlen;
        return 1;
    default:
        rr->data = txt;
        rr->len = len;
        return 1;
    }
}

/***
** @method spf_checker:answer(name, qtype, rcode, records)
** The answer to one question (a later one replaces it).
** @param {string} qtype 'TXT', 'A', 'AAAA', 'MX' or 'PTR'
** @param {string} rcode 'noerror', 'nodata', 'nxdomain', 'servfail', 'timeout'
** @param {table} records presentation forms: TXT text (strings joined),
**   addresses, "PREF NAME" (or NAME) for MX, names for PTR (nil: none)
** @return true; nil, message, code ('syntax' for a name or record that
**   cannot be, 'limit' beyond spf_max_answers answers)
*/
static int lio_checker_answer(lua_State *L)
{
    static const char *const types[] = {"TXT", "A", "AAAA", "MX", "PTR", NULL};
    static const unsigned values[] = {DMARC_DNS_T_TXT, DMARC_DNS_T_A, DMARC_DNS_T_AAAA,
                                      DMARC_DNS_T_MX, DMARC_DNS_T_PTR};
    lio_spf_checker *c = lio_check_checker(L);
    size_t len, count = 0, i;
    const char *name = luaL_checklstring(L, 2, &len);
    unsigned type = values[luaL_checkoption(L, 3, NULL, types)];
    dmarc_rcode rc = (dmarc_rcode)luaL_checkoption(L, 4, NULL, lio_rcode_names);
    dmarc_dns_rr *rrs;
    char(*bufs)[DMARC_DOMAIN_MAX_LEN + 1];
    dmarc_status st;

    if (!lua_isnoneornil(L, 5)) {
        luaL_checktype(L, 5, LUA_TTABLE);
        count = lua_rawlen(L, 5);
        if (count > DMARC_DNS_MAX_RRS)
            count = DMARC_DNS_MAX_RRS; /* the rest is dropped, as the DNS layer does */
    }
    /* Scratch space owned by a userdata: nothing leaks if a check raises. */
    rrs = lua_newuserdatauv(L, (count > 0 ? count : 1) * (sizeof *rrs + sizeof *bufs), 0);
    bufs = (char(*)[DMARC_DOMAIN_MAX_LEN + 1])(void *)(rrs + (count > 0 ? count : 1));
    for (i = 0; i < count; i++) {
        size_t rlen;
        const char *rtxt;
        lua_rawgeti(L, 5, (int)i + 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_argerror(L, 5, "array of strings expected");
        rtxt = lua_tolstring(L, -1, &rlen); /* anchored in the records table */
        lua_pop(L, 1);
        if (!lio_checker_rdata(rtxt, rlen, type, &rrs[i], bufs[i], sizeof bufs[i]))
            return ldmarc_fail(L, "spf_checker: a record that cannot be of its type", "syntax");
    }
    st = dmarc_spf_add_answer(c->spf, name, len, type, rc, rrs, count);
    if (st == DMARC_ERR_NOMEM)
        return luaL_error(L, "dmarc.io: spf_checker: out of memory");
    if (st != DMARC_OK)
        return ldmarc_fail(L,
                           st == DMARC_ERR_LIMIT ? "spf_checker: too many answers"
                                                 : "spf_checker: not a domain name",
                           ldmarc_status_code(st));
    lua_pushboolean(L, 1);
    return 1;
}

/* Forget every answer: the checker is ready for another message. */
static int lio_checker_clear(lua_State *L)
{
    dmarc_spf_clear_answers(lio_check_checker(L)->spf);
    return 0;
}

static int lio_checker_close(lua_State *L)
{
    lio_spf_checker *c = luaL_checkudata(L, 1, LDMARC_IO_SPF_CHECKER);
    dmarc_spf_free(c->spf);
    c->spf = NULL;
    return 0;
}

static const luaL_Reg lio_checker_methods[] = {{"check", lio_checker_check},
                                               {"answer", lio_checker_answer},
                                               {"clear", lio_checker_clear},
                                               {"close", lio_checker_close},
                                               {NULL, NULL}};

static const luaL_Reg lio_checker_meta[] = {{"__gc", lio_checker_close},
#if LUA_VERSION_NUM >= 504
                                            {"__close", lio_checker_close},
#endif
                                            {NULL, NULL}};

/* }==================================================================== */

/* ** {====================================================================
** Housekeeping
** ===================================================================== */

/***
** @method resolver:stats()
** @return {table} {hits=, misses=, upstream=, entries=}
*/
static int lio_stats(lua_State *L)
{
    lio_resolver *r = lio_check(L, 1);
    dmarc_dns_stats s;
    dmarc_dns_get_stats(r->dns, &s);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, (lua_Integer)s.hits);
    lua_setfield(L, -2, "hits");
    lua_pushinteger(L, (lua_Integer)s.misses);
    lua_setfield(L, -2, "misses");
    lua_pushinteger(L, (lua_Integer)s.upstream);
    lua_setfield(L, -2, "upstream");
    lua_pushinteger(L, (lua_Integer)s.entries);
    lua_setfield(L, -2, "entries");
    return 1;
}

static int lio_clear_cache(lua_State *L)
{
    dmarc_dns_cache_clear(lio_check(L, 1)->dns);
    return 0;
}

/* __gc, __close and :close(): idempotent. */
static int lio_close(lua_State *L)
{
    lio_resolver *r = luaL_checkudata(L, 1, LDMARC_IO_RESOLVER);
    lio_release(r);
    return 0;
}

static int lio_tostring(lua_State *L)
{
    lio_resolver *r = luaL_checkudata(L, 1, LDMARC_IO_RESOLVER);
    if (r->dns == NULL)
        lua_pushfstring(L, "%s: closed", LDMARC_IO_RESOLVER);
    else
        lua_pushfstring(L, "%s: %p", LDMARC_IO_RESOLVER, (void *)r);
    return 1;
}

static const luaL_Reg lio_methods[] = {{"query", lio_query}, {"resolve", lio_resolve},
                                       {"spf", lio_spf},     {"dkim", lio_dkim},
                                       {"stats", lio_stats}, {"clear_cache", lio_clear_cache},
                                       {"close", lio_close}, {NULL, NULL}};

static const luaL_Reg lio_meta[] = {{"__gc", lio_close},
#if LUA_VERSION_NUM >= 504
                                    {"__close", lio_close},
#endif
                                    {"__tostring", lio_tostring},
                                    {NULL, NULL}};

static const luaL_Reg lio_buffer_meta[] = {{"__gc", lio_buffer_gc}, {NULL, NULL}};

static const luaL_Reg lio_functions[] = {{"resolver", lio_resolver_new},
                                         {"spf_checker", lio_spf_checker_new},
                                         {"header_fields", lio_header_fields},
                                         {NULL, NULL}};

LDMARC_EXPORT int luaopen_dmarc_io(lua_State *L);

LDMARC_EXPORT int luaopen_dmarc_io(lua_State *L)
{
    luaL_newmetatable(L, LDMARC_IO_RESOLVER);
    luaL_setfuncs(L, lio_meta, 0);
    luaL_newlib(L, lio_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newmetatable(L, LDMARC_IO_BUFFER);
    luaL_setfuncs(L, lio_buffer_meta, 0);
    lua_pop(L, 1);
    luaL_newmetatable(L, LDMARC_IO_SPF_CHECKER);
    luaL_setfuncs(L, lio_checker_meta, 0);
    luaL_newlib(L, lio_checker_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);

    luaL_newlib(L, lio_functions);
    lua_createtable(L, 0, 9);
    lua_pushinteger(L, DMARC_SPF_MAX_DNS_TERMS);
    lua_setfield(L, -2, "spf_max_dns_terms");
    lua_pushinteger(L, DMARC_SPF_MAX_VOID_LOOKUPS);
    lua_setfield(L, -2, "spf_max_void_lookups");
    lua_pushinteger(L, DMARC_SPF_MAX_ROUNDS);
    lua_setfield(L, -2, "spf_max_rounds");
    lua_pushinteger(L, DMARC_SPF_MAX_QUESTIONS);
    lua_setfield(L, -2, "spf_max_questions");
    lua_pushinteger(L, DMARC_SPF_MAX_ANSWERS);
    lua_setfield(L, -2, "spf_max_answers");
    lua_pushinteger(L, DMARC_DKIM_MAX_VERIFY);
    lua_setfield(L, -2, "dkim_max_verify");
    lua_pushinteger(L, DMARC_DKIM_MAX_REPORTED);
    lua_setfield(L, -2, "dkim_max_reported");
    lua_pushinteger(L, DMARC_DNS_MAX_CNAME);
    lua_setfield(L, -2, "dns_max_cname");
    lua_pushinteger(L, LDMARC_IO_MAX_MESSAGE);
    lua_setfield(L, -2, "max_message");
    lua_setfield(L, -2, "limits");
    lua_pushliteral(L, "dmarc.io");
    lua_setfield(L, -2, "_NAME");
    lua_pushliteral(L, DMARC_VERSION_STRING);
    lua_setfield(L, -2, "_VERSION");
    return 1;
}

/* }==================================================================== */
