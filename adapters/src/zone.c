/*
** Zone-file backend: parse an RFC 1035 §5 master file (the subset listed in
** dmarc_zone.h) into records sorted by owner, index every owner and every
** ancestor of an owner (empty non-terminals exist too, RFC 8020), and
** answer questions from that index.
**
** Why our own reader rather than ldns's (ldns_rr_new_frm_fp_l, which
** dmarc.io links anyway): on the inputs the tests pin down, ldns 1.8 reads
** bad data as good. It wraps an MX preference of 70000 to 4464, accepts a
** TXT string whose quote never closes, nested parentheses and a first
** record with a blank owner (it takes the origin), and refuses a relative
** $ORIGIN that RFC 1035 §5.1 allows. A zone that does not say what it seems
** to say must be refused, not served, so reading stays here.
*/
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter.h"
#include "dmarc_zone.h"

typedef struct zrec {
    char *owner; /* lowercase, no trailing dot */
    size_t owner_len;
    uint16_t type;
    uint16_t pref; /* MX */
    uint32_t ttl;
    char *data; /* as dmarc_dns_rr.data */
    size_t len;
    uint32_t soa_min; /* SOA minimum field */
    size_t seq;       /* order in the file, for a stable sort */
    size_t line;
} zrec;

/* A name the zone knows: an owner (count > 0) or an empty non-terminal. */
typedef struct znode {
    const char *name; /* points into a record's owner; NULL: empty slot */
    size_t len;
    size_t first, count; /* records [first, first + count) */
} znode;

struct dmarc_zone {
    dmarc_allocator alloc;
    zrec *recs;
    size_t nrecs, caprecs;
    znode *table;
    size_t tsize; /* a power of two */
};

/* ** {======================================================
** Parsing
** ======================================================= */

typedef struct token {
    size_t off, len;
    bool quoted;
} token;

typedef struct parser {
    dmarc_zone *z;
    const char *p, *end;
    size_t line;
    size_t rec_line;
    char origin[DMARC_DOMAIN_MAX_LEN + 1];
    size_t origin_len; /* 0: the root */
    char prev_owner[DMARC_DOMAIN_MAX_LEN + 1];
    size_t prev_owner_len;
    bool has_prev_owner;
    uint32_t default_ttl;
    bool has_default_ttl;
    uint32_t last_ttl;
    bool has_last_ttl;
    token tok[DMARC_ZONE_MAX_TOKENS];
    size_t ntok;
    char *buf;
    size_t blen, bcap;
    bool owner_blank;
    dmarc_zone_error *err;
} parser;

static dmarc_status parse_fail(parser *ps, dmarc_status st, const char *code, const char *msg,
                               const char *detail)
{
    if (ps->err != NULL) {
        ps->err->code = code;
        ps->err->line = ps->rec_line;
        if (detail != NULL)
            snprintf(ps->err->message, sizeof ps->err->message, "%s: %.60s", msg, detail);
        else
            snprintf(ps->err->message, sizeof ps->err->message, "%s", msg);
    }
    return st;
}

static dmarc_status syntax(parser *ps, const char *msg, const char *detail)
{
    return parse_fail(ps, DMARC_ERR_SYNTAX, "syntax", msg, detail);
}

static dmarc_status put_byte(parser *ps, char c)
{
    if (ps->blen + 1 >= DMARC_ZONE_MAX_RECORD_BYTES)
        return parse_fail(ps, DMARC_ERR_LIMIT, "limit", "record too long", NULL);
    if (ps->blen + 1 >= ps->bcap) {
        size_t cap = ps->bcap == 0 ? 512 : ps->bcap * 2;
        char *n = adapter_realloc(&ps->z->alloc, ps->buf, ps->bcap, cap);
        if (n == NULL)
            return parse_fail(ps, DMARC_ERR_NOMEM, "nomem", "out of memory", NULL);
        ps->buf = n;
        ps->bcap = cap;
    }
    ps->buf[ps->blen++] = c;
    return DMARC_OK;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* One backslash escape (RFC 1035 §5.1): \DDD is a byte in decimal, \X is X. */
static dmarc_status read_escape(parser *ps)
{
    const char *p = ps->p + 1;
    if (p >= ps->end || *p == '\n')
        return syntax(ps, "backslash at end of line", NULL);
    if (is_digit(*p)) {
        unsigned v = 0, i;
        for (i = 0; i < 3; i++) {
            if (p + i >= ps->end || !is_digit(p[i]))
                return syntax(ps, "\\DDD escape needs three digits", NULL);
            v = v * 10 + (unsigned)(p[i] - '0');
        }
        if (v > 255)
            return syntax(ps, "\\DDD escape over 255", NULL);
        ps->p = p + 3;
        return put_byte(ps, (char)v);
    }
    ps->p = p + 1;
    return put_byte(ps, *p);
}

static dmarc_status start_token(parser *ps, bool quoted)
{
    if (ps->ntok >= DMARC_ZONE_MAX_TOKENS)
        return parse_fail(ps, DMARC_ERR_LIMIT, "limit", "too many fields in one record", NULL);
    ps->tok[ps->ntok].off = ps->blen;
    ps->tok[ps->ntok].quoted = quoted;
    return DMARC_OK;
}

static dmarc_status end_token(parser *ps)
{
    dmarc_status st;
    ps->tok[ps->ntok].len = ps->blen - ps->tok[ps->ntok].off;
    /* A NUL after every token lets the interpreter use C string calls;
    ** tokens keep their length, so NUL bytes inside stay data. */
    st = put_byte(ps, '\0');
    if (st != DMARC_OK)
        return st;
    ps->ntok++;
    return DMARC_OK;
}

/*
** Read one logical record (physical lines joined by parentheses) into
** tokens. 1: a record; 0: end of input; negative: an error.
*/
static int read_record(parser *ps, dmarc_status *st)
{
    int depth = 0;
    bool line_start = true;
    ps->ntok = 0;
    ps->blen = 0;
    ps->owner_blank = false;
    ps->rec_line = ps->line;
    while (ps->p < ps->end) {
        char c = *ps->p;
        if (line_start && depth == 0 && ps->ntok == 0) {
            ps->rec_line = ps->line;
            ps->owner_blank = (c == ' ' || c == '\t');
        }
        line_start = false;
        if (c == '\n') {
            ps->p++;
            ps->line++;
            line_start = true;
            if (depth == 0 && ps->ntok > 0)
                return 1;
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\r') {
            ps->p++;
            continue;
        }
        if (c == ';') {
            while (ps->p < ps->end && *ps->p != '\n')
                ps->p++;
            continue;
        }
        if (c == '(') {
            /* RFC 1035 §5.1: parentheses group lines; they do not nest. */
            if (depth > 0) {
                *st = syntax(ps, "nested parenthesis", NULL);
                return -1;
            }
            depth++;
            ps->p++;
            continue;
        }
        if (c == ')') {
            if (depth == 0) {
                *st = syntax(ps, "unbalanced parenthesis", NULL);
                return -1;
            }
            depth--;
            ps->p++;
            continue;
        }
        if (c == '"') {
            if ((*st = start_token(ps, true)) != DMARC_OK)
                return -1;
            ps->p++;
            for (;;) {
                if (ps->p >= ps->end || *ps->p == '\n') {
                    *st = syntax(ps, "unterminated quoted string", NULL);
                    return -1;
                }
                if (*ps->p == '"') {
                    ps->p++;
                    break;
                }
                if (*ps->p == '\\')
                    *st = read_escape(ps);
                else
                    *st = put_byte(ps, *ps->p++);
                if (*st != DMARC_OK)
                    return -1;
            }
            if ((*st = end_token(ps)) != DMARC_OK)
                return -1;
            continue;
        }
        if ((*st = start_token(ps, false)) != DMARC_OK)
            return -1;
        while (ps->p < ps->end) {
            c = *ps->p;
            if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == ';' || c == '(' ||
                c == ')' || c == '"')
                break;
            if (c == '\\')
                *st = read_escape(ps);
            else
                *st = put_byte(ps, *ps->p++);
            if (*st != DMARC_OK)
                return -1;
        }
        if ((*st = end_token(ps)) != DMARC_OK)
            return -1;
    }
    if (depth > 0) {
        *st = syntax(ps, "parenthesis not closed before the end", NULL);
        return -1;
    }
    return ps->ntok > 0 ? 1 : 0;
}

static const char *tok_str(const parser *ps, size_t i)
{
    return ps->buf + ps->tok[i].off;
}

static bool tok_is(const parser *ps, size_t i, const char *word)
{
    return !ps->tok[i].quoted && adapter_ieq(tok_str(ps, i), ps->tok[i].len, word, strlen(word));
}

/* A domain name in the file: absolute (trailing dot), relative to the
** origin, or `@` for the origin itself. */
static dmarc_status read_name(parser *ps, size_t i, char *out, size_t *outlen)
{
    const char *s = tok_str(ps, i);
    size_t len = ps->tok[i].len;
    char full[2 * DMARC_DOMAIN_MAX_LEN + 4];
    size_t flen;
    if (ps->tok[i].quoted || len == 0)
        return syntax(ps, "bad domain name", s);
    if (len == 1 && s[0] == '@') {
        if (ps->origin_len == 0)
            return syntax(ps, "@ stands for the root here, which owns nothing we serve", NULL);
        memcpy(out, ps->origin, ps->origin_len + 1);
        *outlen = ps->origin_len;
        return DMARC_OK;
    }
    if (len > DMARC_DOMAIN_MAX_LEN + 1)
        return syntax(ps, "domain name too long", s);
    memcpy(full, s, len);
    flen = len;
    if (s[len - 1] != '.' && ps->origin_len > 0) {
        full[flen++] = '.';
        memcpy(full + flen, ps->origin, ps->origin_len);
        flen += ps->origin_len;
    }
    if (dmarc_dns_name_normalize(full, flen, out, outlen) != DMARC_OK)
        return syntax(ps, "bad domain name", s);
    return DMARC_OK;
}

/* A TTL: seconds, or BIND-style units (1h30m); RFC 2181 §8 caps it at
** 2^31 - 1. */
static bool parse_ttl(const char *s, size_t len, uint32_t *out)
{
    uint64_t total = 0, num = 0;
    size_t i;
    bool digits = false;
    if (len == 0 || !is_digit(s[0]))
        return false;
    for (i = 0; i < len; i++) {
        char c = (char)adapter_lower((unsigned char)s[i]);
        uint64_t unit = 0;
        if (is_digit(c)) {
            num = num * 10 + (uint64_t)(c - '0');
            digits = true;
            if (num > 0x7fffffffu)
                return false;
            continue;
        }
        switch (c) {
        case 's':
            unit = 1;
            break;
        case 'm':
            unit = 60;
            break;
        case 'h':
            unit = 3600;
            break;
        case 'd':
            unit = 86400;
            break;
        case 'w':
            unit = 604800;
            break;
        default:
            return false;
        }
        if (!digits)
            return false;
        total += num * unit;
        num = 0;
        digits = false;
        if (total > 0x7fffffffu)
            return false;
    }
    total += num;
    if (total > 0x7fffffffu)
        return false;
    *out = (uint32_t)total;
    return true;
}

static dmarc_status add_record(parser *ps, const char *owner, size_t owner_len, unsigned type,
                               uint32_t ttl, uint16_t pref, const char *data, size_t len,
                               uint32_t soa_min)
{
    dmarc_zone *z = ps->z;
    zrec *r;
    if (z->nrecs >= DMARC_ZONE_MAX_RECORDS)
        return parse_fail(ps, DMARC_ERR_LIMIT, "limit", "too many records", NULL);
    if (z->nrecs == z->caprecs) {
        size_t cap = z->caprecs == 0 ? 64 : z->caprecs * 2;
        zrec *n = adapter_realloc(&z->alloc, z->recs, z->caprecs * sizeof *n, cap * sizeof *n);
        if (n == NULL)
            return parse_fail(ps, DMARC_ERR_NOMEM, "nomem", "out of memory", NULL);
        z->recs = n;
        z->caprecs = cap;
    }
    r = &z->recs[z->nrecs];
    memset(r, 0, sizeof *r);
    r->owner = adapter_strndup(&z->alloc, owner, owner_len);
    r->data = adapter_strndup(&z->alloc, data, len);
    if (r->owner == NULL || r->data == NULL) {
        adapter_free(&z->alloc, r->owner, owner_len + 1);
        adapter_free(&z->alloc, r->data, len + 1);
        return parse_fail(ps, DMARC_ERR_NOMEM, "nomem", "out of memory", NULL);
    }
    r->owner_len = owner_len;
    r->type = (uint16_t)type;
    r->ttl = ttl;
    r->pref = pref;
    r->len = len;
    r->soa_min = soa_min;
    r->seq = z->nrecs;
    r->line = ps->rec_line;
    z->nrecs++;
    return DMARC_OK;
}

static dmarc_status directive(parser *ps)
{
    const char *d = tok_str(ps, 0);
    if (tok_is(ps, 0, "$ORIGIN")) {
        if (ps->ntok != 2)
            return syntax(ps, "$ORIGIN takes one name", NULL);
        if (ps->tok[1].len == 1 && tok_str(ps, 1)[0] == '.') {
            ps->origin_len = 0;
            ps->origin[0] = '\0';
            return DMARC_OK;
        }
        /* A relative $ORIGIN is relative to the current one (read_name). */
        return read_name(ps, 1, ps->origin, &ps->origin_len);
    }
    if (tok_is(ps, 0, "$TTL")) {
        if (ps->ntok != 2 || !parse_ttl(tok_str(ps, 1), ps->tok[1].len, &ps->default_ttl))
            return syntax(ps, "$TTL takes one TTL", NULL);
        ps->has_default_ttl = true;
        return DMARC_OK;
    }
    return syntax(ps, "unsupported directive", d);
}

static dmarc_status parse_u16(parser *ps, size_t i, uint16_t *out)
{
    const char *s = tok_str(ps, i);
    unsigned long v = 0;
    size_t k;
    if (ps->tok[i].len == 0 || ps->tok[i].len > 5)
        return syntax(ps, "bad number", s);
    for (k = 0; k < ps->tok[i].len; k++) {
        if (!is_digit(s[k]))
            return syntax(ps, "bad number", s);
        v = v * 10 + (unsigned long)(s[k] - '0');
    }
    if (v > 65535)
        return syntax(ps, "number over 65535", s);
    *out = (uint16_t)v;
    return DMARC_OK;
}

/* The rdata of one record, tokens [i, ntok). */
static dmarc_status rdata(parser *ps, size_t i, const char *owner, size_t owner_len, unsigned type,
                          uint32_t ttl)
{
    size_t n = ps->ntok - i, k;
    char name[DMARC_DOMAIN_MAX_LEN + 1];
    size_t nlen;
    dmarc_status st;
    switch (type) {
    case DMARC_DNS_T_A:
    case DMARC_DNS_T_AAAA: {
        unsigned char addr[16];
        int af = type == DMARC_DNS_T_A ? AF_INET : AF_INET6;
        if (n != 1 || ps->tok[i].quoted || inet_pton(af, tok_str(ps, i), addr) != 1)
            return syntax(ps, type == DMARC_DNS_T_A ? "bad IPv4 address" : "bad IPv6 address",
                          n >= 1 ? tok_str(ps, i) : NULL);
        return add_record(ps, owner, owner_len, type, ttl, 0, (const char *)addr,
                          type == DMARC_DNS_T_A ? 4 : 16, 0);
    }
    case DMARC_DNS_T_TXT:
    case DMARC_DNS_T_SPF: {
        /* [REC-1]: the character-strings of one RR are kept concatenated,
        ** with no separator, which is how every consumer here reads them. */
        char *joined;
        size_t total = 0, off = 0;
        if (n == 0)
            return syntax(ps, "TXT needs at least one string", NULL);
        for (k = i; k < ps->ntok; k++) {
            /* RFC 1035 §3.3: a <character-string> is at most 255 bytes. */
            if (ps->tok[k].len > 255)
                return syntax(ps, "TXT string over 255 bytes (split it)", NULL);
            total += ps->tok[k].len;
        }
        joined = adapter_alloc(&ps->z->alloc, total + 1);
        if (joined == NULL)
            return parse_fail(ps, DMARC_ERR_NOMEM, "nomem", "out of memory", NULL);
        for (k = i; k < ps->ntok; k++) {
            memcpy(joined + off, tok_str(ps, k), ps->tok[k].len);
            off += ps->tok[k].len;
        }
        joined[total] = '\0';
        st = add_record(ps, owner, owner_len, type, ttl, 0, joined, total, 0);
        adapter_free(&ps->z->alloc, joined, total + 1);
        return st;
    }
    case DMARC_DNS_T_MX: {
        uint16_t pref = 0;
        if (n != 2)
            return syntax(ps, "MX takes a preference and a name", NULL);
        if ((st = parse_u16(ps, i, &pref)) != DMARC_OK)
            return st;
        if ((st = read_name(ps, i + 1, name, &nlen)) != DMARC_OK)
            return st;
        return add_record(ps, owner, owner_len, type, ttl, pref, name, nlen, 0);
    }
    case DMARC_DNS_T_CNAME:
    case DMARC_DNS_T_PTR:
    case DMARC_DNS_T_NS:
        if (n != 1)
            return syntax(ps, "this type takes one name", NULL);
        if ((st = read_name(ps, i, name, &nlen)) != DMARC_OK)
            return st;
        return add_record(ps, owner, owner_len, type, ttl, 0, name, nlen, 0);
    case DMARC_DNS_T_SOA: {
        char text[2 * DMARC_DOMAIN_MAX_LEN + 80];
        char rname[DMARC_DOMAIN_MAX_LEN + 1];
        size_t rlen;
        uint32_t v[5];
        if (n != 7)
            return syntax(ps, "SOA takes mname rname serial refresh retry expire minimum", NULL);
        if ((st = read_name(ps, i, name, &nlen)) != DMARC_OK)
            return st;
        if ((st = read_name(ps, i + 1, rname, &rlen)) != DMARC_OK)
            return st;
        for (k = 0; k < 5; k++)
            if (!parse_ttl(tok_str(ps, i + 2 + k), ps->tok[i + 2 + k].len, &v[k]))
                return syntax(ps, "bad SOA number", tok_str(ps, i + 2 + k));
        snprintf(text, sizeof text, "%s %s %lu %lu %lu %lu %lu", name, rname, (unsigned long)v[0],
                 (unsigned long)v[1], (unsigned long)v[2], (unsigned long)v[3],
                 (unsigned long)v[4]);
        return add_record(ps, owner, owner_len, type, ttl, 0, text, strlen(text), v[4]);
    }
    default:
        return syntax(ps, "unsupported record type", dmarc_dns_type_name(type));
    }
}

static dmarc_status record(parser *ps)
{
    char owner[DMARC_DOMAIN_MAX_LEN + 1];
    size_t owner_len, i = 0;
    uint32_t ttl = 0;
    bool has_ttl = false, has_class = false;
    unsigned type = 0;
    dmarc_status st;

    if (!ps->owner_blank && !ps->tok[0].quoted && tok_str(ps, 0)[0] == '$')
        return directive(ps);
    if (ps->owner_blank) {
        if (!ps->has_prev_owner)
            return syntax(ps, "record without an owner name", NULL);
        memcpy(owner, ps->prev_owner, ps->prev_owner_len + 1);
        owner_len = ps->prev_owner_len;
    } else {
        if ((st = read_name(ps, 0, owner, &owner_len)) != DMARC_OK)
            return st;
        i = 1;
    }
    /* [<TTL>] [<class>] <type> or [<class>] [<TTL>] <type> (RFC 1035 §5.1). */
    for (; i < ps->ntok && type == 0; i++) {
        const char *s = tok_str(ps, i);
        size_t len = ps->tok[i].len;
        if (ps->tok[i].quoted)
            return syntax(ps, "expected a TTL, class or type", s);
        if (!has_ttl && parse_ttl(s, len, &ttl)) {
            has_ttl = true;
        } else if (!has_class && tok_is(ps, i, "IN")) {
            has_class = true;
        } else if (tok_is(ps, i, "CH") || tok_is(ps, i, "HS") || tok_is(ps, i, "CS")) {
            return syntax(ps, "only class IN is served", s);
        } else {
            type = dmarc_dns_type_from_name(s, len);
            if (type == 0)
                return syntax(ps, "unknown or unsupported record type", s);
        }
    }
    if (type == 0)
        return syntax(ps, "record without a type", NULL);
    if (!has_ttl) {
        if (ps->has_default_ttl)
            ttl = ps->default_ttl;
        else if (ps->has_last_ttl)
            ttl = ps->last_ttl;
        else
            ttl = DMARC_ZONE_DEFAULT_TTL;
    }
    st = rdata(ps, i, owner, owner_len, type, ttl);
    if (st != DMARC_OK)
        return st;
    memcpy(ps->prev_owner, owner, owner_len + 1);
    ps->prev_owner_len = owner_len;
    ps->has_prev_owner = true;
    ps->last_ttl = ttl;
    ps->has_last_ttl = true;
    return DMARC_OK;
}

/* }====================================================== */

/* ** {======================================================
** The name index
** ======================================================= */

/* The core's hash (dmarc_hash), the one every name table of the library uses. */
static size_t name_hash(const char *s, size_t len)
{
    return (size_t)dmarc_hash(0, s, len);
}

static znode *node_slot(const dmarc_zone *z, const char *name, size_t len)
{
    size_t mask = z->tsize - 1, i = name_hash(name, len) & mask, probes;
    /* Linear probing in a table at most half full: a free slot is always
    ** reached within tsize probes. */
    for (probes = 0; probes < z->tsize; probes++) {
        znode *n = &z->table[i];
        if (n->name == NULL || (n->len == len && memcmp(n->name, name, len) == 0))
            return n;
        i = (i + 1) & mask;
    }
    return NULL;
}

static const znode *node_find(const dmarc_zone *z, const char *name, size_t len)
{
    const znode *n;
    if (z->tsize == 0)
        return NULL;
    n = node_slot(z, name, len);
    return (n != NULL && n->name != NULL) ? n : NULL;
}

static int rec_cmp(const void *a, const void *b)
{
    const zrec *x = a, *y = b;
    int c = strcmp(x->owner, y->owner);
    if (c != 0)
        return c;
    return x->seq < y->seq ? -1 : (x->seq > y->seq ? 1 : 0);
}

static dmarc_status build_index(parser *ps)
{
    dmarc_zone *z = ps->z;
    size_t i, j, bound = 0, size = 16;
    if (z->nrecs > 1)
        qsort(z->recs, z->nrecs, sizeof *z->recs, rec_cmp);
    for (i = 0; i < z->nrecs; i++) {
        bound++;
        for (j = 0; j < z->recs[i].owner_len; j++)
            if (z->recs[i].owner[j] == '.')
                bound++;
    }
    while (size < 2 * bound + 2)
        size *= 2;
    z->table = adapter_alloc_array(&z->alloc, size, sizeof *z->table);
    if (z->table == NULL)
        return parse_fail(ps, DMARC_ERR_NOMEM, "nomem", "out of memory", NULL);
    memset(z->table, 0, size * sizeof *z->table);
    z->tsize = size;
    /* Owners first, so that an ancestor which owns records is never left
    ** marked as an empty non-terminal. */
    for (i = 0; i < z->nrecs; i = j) {
        znode *n;
        bool has_cname = false;
        for (j = i; j < z->nrecs && strcmp(z->recs[j].owner, z->recs[i].owner) == 0; j++)
            if (z->recs[j].type == DMARC_DNS_T_CNAME)
                has_cname = true;
        /* RFC 1034 §3.6.2: an alias owns nothing else. */
        if (has_cname && j - i > 1) {
            ps->rec_line = z->recs[i].line;
            return syntax(ps, "a CNAME owner cannot have other records", z->recs[i].owner);
        }
        n = node_slot(z, z->recs[i].owner, z->recs[i].owner_len);
        n->name = z->recs[i].owner;
        n->len = z->recs[i].owner_len;
        n->first = i;
        n->count = j - i;
    }
    for (i = 0; i < z->nrecs; i++) {
        const zrec *r = &z->recs[i];
        for (j = 0; j < r->owner_len; j++) {
            if (r->owner[j] == '.') {
                const char *anc = r->owner + j + 1;
                size_t alen = r->owner_len - j - 1;
                znode *n = node_slot(z, anc, alen);
                if (n->name == NULL) {
                    n->name = anc;
                    n->len = alen;
                    n->first = n->count = 0;
                }
            }
        }
    }
    return DMARC_OK;
}

/* }====================================================== */

dmarc_status dmarc_zone_parse(const dmarc_allocator *alloc, const char *text, size_t len,
                              const char *origin, dmarc_zone **out, dmarc_zone_error *err)
{
    parser ps;
    dmarc_zone *z;
    dmarc_status st = DMARC_OK;
    int r;
    if (err != NULL) {
        err->code = "none";
        err->line = 0;
        err->message[0] = '\0';
    }
    if (out == NULL || (text == NULL && len > 0)) {
        if (err != NULL) {
            err->code = "inval";
            snprintf(err->message, sizeof err->message, "invalid argument");
        }
        return DMARC_ERR_INVAL;
    }
    memset(&ps, 0, sizeof ps);
    ps.err = err;
    ps.line = 1;
    if (len > DMARC_ZONE_MAX_BYTES)
        return parse_fail(&ps, DMARC_ERR_LIMIT, "limit", "zone text too large", NULL);
    z = adapter_alloc(alloc, sizeof *z);
    if (z == NULL)
        return parse_fail(&ps, DMARC_ERR_NOMEM, "nomem", "out of memory", NULL);
    memset(z, 0, sizeof *z);
    if (alloc != NULL)
        z->alloc = *alloc;
    ps.z = z;
    ps.p = text;
    ps.end = text + len;
    if (origin != NULL && strcmp(origin, ".") != 0 && origin[0] != '\0') {
        if (dmarc_dns_name_normalize(origin, strlen(origin), ps.origin, &ps.origin_len) !=
            DMARC_OK) {
            dmarc_zone_free(z);
            return parse_fail(&ps, DMARC_ERR_INVAL, "inval", "bad origin", origin);
        }
    }
    while ((r = read_record(&ps, &st)) > 0) {
        st = record(&ps);
        if (st != DMARC_OK)
            break;
    }
    if (r < 0 || st != DMARC_OK) {
        adapter_free(&z->alloc, ps.buf, ps.bcap);
        dmarc_zone_free(z);
        return st;
    }
    adapter_free(&z->alloc, ps.buf, ps.bcap);
    st = build_index(&ps);
    if (st != DMARC_OK) {
        dmarc_zone_free(z);
        return st;
    }
    *out = z;
    return DMARC_OK;
}

dmarc_status dmarc_zone_load(const dmarc_allocator *alloc, const char *path, const char *origin,
                             dmarc_zone **out, dmarc_zone_error *err)
{
    FILE *f;
    char *text = NULL;
    size_t len = 0, cap = 0;
    dmarc_status st;
    dmarc_allocator libc = {NULL, NULL};
    const dmarc_allocator *a = alloc != NULL ? alloc : &libc;
    if (path == NULL || out == NULL)
        return DMARC_ERR_INVAL;
    f = fopen(path, "rb");
    if (f == NULL) {
        if (err != NULL) {
            err->code = "io";
            err->line = 0;
            snprintf(err->message, sizeof err->message, "cannot open %.100s: %s", path,
                     strerror(errno));
        }
        return DMARC_ERR_INVAL;
    }
    for (;;) {
        size_t got;
        if (len == cap) {
            size_t ncap = cap == 0 ? 65536 : cap * 2;
            char *n;
            if (cap >= DMARC_ZONE_MAX_BYTES) {
                fclose(f);
                adapter_free(a, text, cap);
                if (err != NULL) {
                    err->code = "limit";
                    err->line = 0;
                    snprintf(err->message, sizeof err->message, "%.100s: zone file too large",
                             path);
                }
                return DMARC_ERR_LIMIT;
            }
            n = adapter_realloc(a, text, cap, ncap);
            if (n == NULL) {
                fclose(f);
                adapter_free(a, text, cap);
                if (err != NULL) {
                    err->code = "nomem";
                    snprintf(err->message, sizeof err->message, "out of memory");
                }
                return DMARC_ERR_NOMEM;
            }
            text = n;
            cap = ncap;
        }
        got = fread(text + len, 1, cap - len, f);
        len += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        fclose(f);
        adapter_free(a, text, cap);
        if (err != NULL) {
            err->code = "io";
            err->line = 0;
            snprintf(err->message, sizeof err->message, "cannot read %.100s", path);
        }
        return DMARC_ERR_INVAL;
    }
    fclose(f);
    st = dmarc_zone_parse(alloc, text, len, origin, out, err);
    adapter_free(a, text, cap);
    return st;
}

void dmarc_zone_free(dmarc_zone *z)
{
    size_t i;
    if (z == NULL)
        return;
    for (i = 0; i < z->nrecs; i++) {
        adapter_free(&z->alloc, z->recs[i].owner, z->recs[i].owner_len + 1);
        adapter_free(&z->alloc, z->recs[i].data, z->recs[i].len + 1);
    }
    adapter_free(&z->alloc, z->recs, z->caprecs * sizeof *z->recs);
    adapter_free(&z->alloc, z->table, z->tsize * sizeof *z->table);
    {
        dmarc_allocator a = z->alloc;
        adapter_free(&a, z, sizeof *z);
    }
}

size_t dmarc_zone_record_count(const dmarc_zone *z)
{
    return z != NULL ? z->nrecs : 0;
}

/* ** {======================================================
** Answering
** ======================================================= */

/* RFC 2308 §5: a negative answer lives min(SOA TTL, SOA minimum) of the
** closest enclosing SOA; UINT32_MAX (the layer's default) without one. */
static uint32_t negative_ttl(const dmarc_zone *z, const char *name, size_t len)
{
    size_t k;
    for (k = 0;; k++) {
        const znode *n = node_find(z, name, len);
        if (n != NULL) {
            size_t i;
            for (i = n->first; i < n->first + n->count; i++) {
                const zrec *r = &z->recs[i];
                if (r->type == DMARC_DNS_T_SOA)
                    return r->ttl < r->soa_min ? r->ttl : r->soa_min;
            }
        }
        /* Up one label (at most DMARC_DOMAIN_MAX_LABELS steps). */
        while (len > 0 && *name != '.') {
            name++;
            len--;
        }
        if (len == 0 || k >= DMARC_DOMAIN_MAX_LABELS)
            return UINT32_MAX;
        name++;
        len--;
    }
}

static dmarc_status answer_from_node(const dmarc_zone *z, const znode *n, const char *qname,
                                     size_t qlen, unsigned type, dmarc_dns_answer **out)
{
    dmarc_dns_builder b;
    size_t i;
    dmarc_status st = DMARC_OK;
    dmarc_dns_builder_init(&b, &z->alloc, qname, qlen);
    for (i = n->first; i < n->first + n->count; i++) {
        const zrec *r = &z->recs[i];
        if (r->type == DMARC_DNS_T_CNAME && type != DMARC_DNS_T_CNAME) {
            dmarc_dns_builder_cname(&b, r->data, r->len, r->ttl);
            break;
        }
        if (r->type == type) {
            st = dmarc_dns_builder_add(&b, type, r->ttl, r->pref, r->data, r->len);
            if (st != DMARC_OK)
                break;
        }
    }
    if (st != DMARC_OK) {
        dmarc_dns_builder_discard(&b);
        return st;
    }
    b.negative_ttl = negative_ttl(z, qname, qlen);
    *out = dmarc_dns_builder_finish(&b, DMARC_RCODE_NOERROR);
    return *out != NULL ? DMARC_OK : DMARC_ERR_NOMEM;
}

dmarc_status dmarc_zone_lookup(const dmarc_zone *z, const char *name, size_t len, unsigned type,
                               dmarc_dns_answer **out)
{
    char norm[DMARC_DOMAIN_MAX_LEN + 1];
    char wild[DMARC_DOMAIN_MAX_LEN + 3];
    size_t nlen, k;
    const znode *n;
    const char *enc;
    size_t elen;
    dmarc_dns_builder b;
    if (z == NULL || name == NULL || out == NULL)
        return DMARC_ERR_INVAL;
    if (dmarc_dns_name_normalize(name, len, norm, &nlen) != DMARC_OK) {
        dmarc_dns_builder_init(&b, &z->alloc, "", 0);
        *out = dmarc_dns_builder_finish(&b, DMARC_RCODE_NXDOMAIN);
        return *out != NULL ? DMARC_OK : DMARC_ERR_NOMEM;
    }
    n = node_find(z, norm, nlen);
    if (n != NULL)
        return answer_from_node(z, n, norm, nlen, type, out);
    /* RFC 4592 §3.3.1: the closest encloser is the longest existing
    ** ancestor; only its `*` child may synthesise an answer. */
    enc = norm;
    elen = nlen;
    for (k = 0; k < DMARC_DOMAIN_MAX_LABELS; k++) {
        while (elen > 0 && *enc != '.') {
            enc++;
            elen--;
        }
        if (elen == 0)
            break;
        enc++;
        elen--;
        if (node_find(z, enc, elen) != NULL) {
            const znode *w;
            wild[0] = '*';
            wild[1] = '.';
            memcpy(wild + 2, enc, elen);
            w = node_find(z, wild, elen + 2);
            if (w != NULL && w->count > 0)
                return answer_from_node(z, w, norm, nlen, type, out);
            break;
        }
    }
    dmarc_dns_builder_init(&b, &z->alloc, norm, nlen);
    b.negative_ttl = negative_ttl(z, norm, nlen);
    *out = dmarc_dns_builder_finish(&b, DMARC_RCODE_NXDOMAIN);
    return *out != NULL ? DMARC_OK : DMARC_ERR_NOMEM;
}

static dmarc_status zone_backend_query(void *impl, const char *name, unsigned type,
                                       dmarc_dns_answer **out)
{
    return dmarc_zone_lookup(impl, name, strlen(name), type, out);
}

static void zone_backend_free(void *impl)
{
    dmarc_zone_free(impl);
}

dmarc_dns_backend dmarc_zone_backend(dmarc_zone *z)
{
    dmarc_dns_backend be;
    be.query = zone_backend_query;
    be.free = zone_backend_free;
    be.impl = z;
    return be;
}

/* }====================================================== */
