/*
** The DNS layer: answers, the builder backends use, and the resolver that
** puts CNAME following, injected faults and the TTL-aware cache in front of
** a backend (zone file or DNS server).
*/
#include <string.h>
#include <time.h>

#include "adapter.h"
#include "dmarc_dns.h"

/* ** {======================================================
** RR type names
** ======================================================= */

static const struct {
    unsigned type;
    const char *name;
} type_names[] = {
    {DMARC_DNS_T_A, "A"},     {DMARC_DNS_T_NS, "NS"},     {DMARC_DNS_T_CNAME, "CNAME"},
    {DMARC_DNS_T_SOA, "SOA"}, {DMARC_DNS_T_PTR, "PTR"},   {DMARC_DNS_T_MX, "MX"},
    {DMARC_DNS_T_TXT, "TXT"}, {DMARC_DNS_T_AAAA, "AAAA"}, {DMARC_DNS_T_SPF, "SPF"},
};

#define TYPE_NAME_COUNT (sizeof(type_names) / sizeof(type_names[0]))

const char *dmarc_dns_type_name(unsigned type)
{
    size_t i;
    for (i = 0; i < TYPE_NAME_COUNT; i++)
        if (type_names[i].type == type)
            return type_names[i].name;
    return NULL;
}

unsigned dmarc_dns_type_from_name(const char *s, size_t len)
{
    size_t i;
    if (s == NULL)
        return 0;
    for (i = 0; i < TYPE_NAME_COUNT; i++)
        if (adapter_ieq(s, len, type_names[i].name, strlen(type_names[i].name)))
            return type_names[i].type;
    return 0;
}

/* }====================================================== */

/* ** {======================================================
** Names
** ======================================================= */

dmarc_status dmarc_dns_name_normalize(const char *in, size_t len, char *out, size_t *outlen)
{
    size_t i, label = 0;
    if (in == NULL || out == NULL || outlen == NULL)
        return DMARC_ERR_INVAL;
    /* One trailing dot is the absolute form of the same name. */
    if (len > 0 && in[len - 1] == '.')
        len--;
    /* RFC 1035 §2.3.4: 253 characters in text form, labels 1..63. */
    if (len == 0 || len > DMARC_DOMAIN_MAX_LEN)
        return DMARC_ERR_SYNTAX;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '.') {
            if (label == 0)
                return DMARC_ERR_SYNTAX;
            label = 0;
        } else if (c == '\0') {
            return DMARC_ERR_SYNTAX;
        } else if (++label > 63) {
            return DMARC_ERR_SYNTAX;
        }
        out[i] = (char)adapter_lower(c);
    }
    out[len] = '\0';
    *outlen = len;
    return DMARC_OK;
}

/* }====================================================== */

/* ** {======================================================
** Answers and the builder
** ======================================================= */

void dmarc_dns_answer_free(dmarc_dns_answer *a)
{
    if (a != NULL)
        adapter_free(&a->alloc_, a, a->size_);
}

/* Layout of an answer block: the struct, the RR array, the RR data, the
** owner name and the pending CNAME target, each NUL-terminated. */
static dmarc_dns_answer *answer_alloc(const dmarc_allocator *alloc, size_t count, size_t data_len,
                                      size_t name_len, size_t cname_len)
{
    size_t size = sizeof(dmarc_dns_answer);
    dmarc_dns_answer *a;
    if (count > DMARC_DNS_MAX_RRS || data_len > DMARC_DNS_MAX_ANSWER_BYTES + DMARC_DNS_MAX_RRS)
        return NULL;
    size += count * sizeof(dmarc_dns_rr) + data_len + name_len + 1 + cname_len + 1;
    a = adapter_alloc(alloc, size);
    if (a == NULL)
        return NULL;
    memset(a, 0, sizeof *a);
    a->alloc_ = alloc != NULL ? *alloc : (dmarc_allocator){NULL, NULL};
    a->size_ = size;
    a->count = count;
    a->rrs = count > 0 ? (const dmarc_dns_rr *)(void *)(a + 1) : NULL;
    return a;
}

/* Where the variable parts of @a start. */
static char *answer_data(dmarc_dns_answer *a)
{
    return (char *)(a + 1) + a->count * sizeof(dmarc_dns_rr);
}

dmarc_dns_answer *dmarc_dns_answer_dup(const dmarc_allocator *alloc, const dmarc_dns_answer *a)
{
    dmarc_dns_answer *c;
    dmarc_dns_rr *rrs;
    size_t i, data_len = 0, name_len, cname_len;
    char *p;
    if (a == NULL)
        return NULL;
    for (i = 0; i < a->count; i++)
        data_len += a->rrs[i].len + 1;
    name_len = a->name != NULL ? strlen(a->name) : 0;
    cname_len = a->cname != NULL ? strlen(a->cname) : 0;
    c = answer_alloc(alloc, a->count, data_len, name_len, cname_len);
    if (c == NULL)
        return NULL;
    c->rcode = a->rcode;
    c->ttl = a->ttl;
    c->cname_hops = a->cname_hops;
    c->problem = a->problem;
    c->from_cache = a->from_cache;
    rrs = (dmarc_dns_rr *)(void *)(c + 1);
    p = answer_data(c);
    for (i = 0; i < a->count; i++) {
        rrs[i] = a->rrs[i];
        memcpy(p, a->rrs[i].data, a->rrs[i].len);
        p[a->rrs[i].len] = '\0';
        rrs[i].data = p;
        p += a->rrs[i].len + 1;
    }
    memcpy(p, a->name != NULL ? a->name : "", name_len + 1);
    c->name = p;
    p += name_len + 1;
    if (a->cname != NULL) {
        memcpy(p, a->cname, cname_len + 1);
        c->cname = p;
    }
    return c;
}

static void copy_name(char *dst, const char *src, size_t len)
{
    size_t i;
    if (len > DMARC_DOMAIN_MAX_LEN + 1)
        len = DMARC_DOMAIN_MAX_LEN + 1;
    for (i = 0; i < len; i++)
        dst[i] = (char)adapter_lower((unsigned char)src[i]);
    dst[len] = '\0';
}

void dmarc_dns_builder_init(dmarc_dns_builder *b, const dmarc_allocator *alloc, const char *name,
                            size_t len)
{
    memset(b, 0, sizeof *b);
    b->alloc = alloc;
    b->ttl = UINT32_MAX;
    b->negative_ttl = UINT32_MAX;
    copy_name(b->name, name != NULL ? name : "", name != NULL ? len : 0);
}

static bool builder_reserve(dmarc_dns_builder *b, size_t more)
{
    size_t cap;
    char *p;
    if (b->len + more <= b->cap)
        return true;
    cap = b->cap == 0 ? 256 : b->cap;
    while (cap < b->len + more)
        cap *= 2;
    p = adapter_realloc(b->alloc, b->buf, b->cap, cap);
    if (p == NULL) {
        b->nomem = true;
        return false;
    }
    b->buf = p;
    b->cap = cap;
    return true;
}

dmarc_status dmarc_dns_builder_add(dmarc_dns_builder *b, unsigned type, uint32_t ttl, uint16_t pref,
                                   const void *data, size_t len)
{
    dmarc_dns_rr *rr;
    if (b == NULL || (data == NULL && len > 0))
        return DMARC_ERR_INVAL;
    if (b->count >= DMARC_DNS_MAX_RRS || b->len + len + 1 > DMARC_DNS_MAX_ANSWER_BYTES) {
        b->truncated = true;
        b->dropping = true;
        return DMARC_OK;
    }
    if (!builder_reserve(b, len + 1))
        return DMARC_ERR_NOMEM;
    b->dropping = false;
    rr = &b->rrs[b->count++];
    rr->type = (uint16_t)type;
    rr->pref = pref;
    rr->ttl = ttl;
    rr->len = len;
    /* RR data is laid out back to back, each NUL-terminated; finish turns
    ** that into pointers once the buffer can no longer move. */
    rr->data = NULL;
    if (len > 0)
        memcpy(b->buf + b->len, data, len);
    b->buf[b->len + len] = '\0';
    b->len += len + 1;
    if (ttl < b->ttl)
        b->ttl = ttl;
    return DMARC_OK;
}

dmarc_status dmarc_dns_builder_append(dmarc_dns_builder *b, const void *data, size_t len)
{
    dmarc_dns_rr *rr;
    if (b == NULL || (data == NULL && len > 0))
        return DMARC_ERR_INVAL;
    if (b->dropping)
        return DMARC_OK; /* the RR it belongs to was dropped */
    if (b->count == 0)
        return DMARC_ERR_STATE;
    rr = &b->rrs[b->count - 1];
    if (b->len + len > DMARC_DNS_MAX_ANSWER_BYTES) {
        /* Half a TXT record would be a different record: drop it whole. */
        b->len -= rr->len + 1;
        b->count--;
        b->truncated = true;
        b->dropping = true;
        return DMARC_OK;
    }
    if (!builder_reserve(b, len))
        return DMARC_ERR_NOMEM;
    /* The last RR's data ends just before b->len (its NUL is at b->len - 1). */
    if (len > 0)
        memcpy(b->buf + b->len - 1, data, len);
    b->len += len;
    b->buf[b->len - 1] = '\0';
    rr->len += len;
    return DMARC_OK;
}

void dmarc_dns_builder_cname(dmarc_dns_builder *b, const char *target, size_t len, uint32_t ttl)
{
    if (b == NULL || target == NULL)
        return;
    copy_name(b->cname, target, len);
    b->has_cname = true;
    if (ttl < b->ttl)
        b->ttl = ttl;
}

void dmarc_dns_builder_discard(dmarc_dns_builder *b)
{
    if (b == NULL)
        return;
    adapter_free(b->alloc, b->buf, b->cap);
    b->buf = NULL;
    b->cap = b->len = 0;
}

dmarc_dns_answer *dmarc_dns_builder_finish(dmarc_dns_builder *b, dmarc_rcode rcode)
{
    dmarc_dns_answer *a;
    dmarc_dns_rr *rrs;
    size_t i, off = 0, name_len, cname_len;
    char *p;
    if (b == NULL)
        return NULL;
    if (b->nomem) {
        dmarc_dns_builder_discard(b);
        return NULL;
    }
    if (rcode != DMARC_RCODE_NOERROR)
        b->count = 0;
    if (rcode == DMARC_RCODE_NOERROR && b->count == 0 && !b->has_cname)
        rcode = DMARC_RCODE_NODATA;
    name_len = strlen(b->name);
    cname_len = b->has_cname ? strlen(b->cname) : 0;
    a = answer_alloc(b->alloc, b->count, b->count > 0 ? b->len : 0, name_len, cname_len);
    if (a == NULL) {
        dmarc_dns_builder_discard(b);
        return NULL;
    }
    a->rcode = rcode;
    if (rcode == DMARC_RCODE_SERVFAIL || rcode == DMARC_RCODE_TIMEOUT)
        a->problem = b->problem;
    if (rcode == DMARC_RCODE_NOERROR)
        a->ttl = b->ttl;
    else if (rcode == DMARC_RCODE_NODATA || rcode == DMARC_RCODE_NXDOMAIN)
        a->ttl = b->negative_ttl;
    else
        a->ttl = 0;
    rrs = (dmarc_dns_rr *)(void *)(a + 1);
    p = answer_data(a);
    if (b->count > 0)
        memcpy(p, b->buf, b->len);
    /* RR data was laid out back to back, each NUL-terminated, in order. */
    for (i = 0; i < b->count; i++) {
        rrs[i] = b->rrs[i];
        rrs[i].data = p + off;
        off += b->rrs[i].len + 1;
    }
    p += b->count > 0 ? b->len : 0;
    memcpy(p, b->name, name_len + 1);
    a->name = p;
    p += name_len + 1;
    if (b->has_cname) {
        memcpy(p, b->cname, cname_len + 1);
        a->cname = p;
    }
    dmarc_dns_builder_discard(b);
    return a;
}

/* }====================================================== */

/* ** {======================================================
** The resolver and its cache
** ======================================================= */

typedef struct fault {
    char name[DMARC_DOMAIN_MAX_LEN + 1];
    size_t len;
    dmarc_rcode rcode;
} fault;

struct dmarc_dns {
    dmarc_allocator alloc;
    dmarc_dns_backend backend;
    dmarc_dns_options opts;
    dmarc_cache *cache; /* the core's answer cache; NULL without one */
    dmarc_dns_stats stats;
    fault faults[DMARC_DNS_MAX_FAULTS];
    size_t nfaults;
};

static uint64_t default_clock(void *ud)
{
    struct timespec ts;
    (void)ud;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec;
}

void dmarc_dns_options_init(dmarc_dns_options *o)
{
    if (o == NULL)
        return;
    memset(o, 0, sizeof *o);
    o->max_ttl = DMARC_DNS_MAX_TTL;
    o->negative_ttl = DMARC_DNS_DEFAULT_NEGATIVE_TTL;
}

dmarc_dns *dmarc_dns_new(const dmarc_dns_options *o, dmarc_dns_backend backend, dmarc_status *st)
{
    dmarc_dns_options defaults;
    dmarc_dns *d;
    dmarc_status dummy;
    if (st == NULL)
        st = &dummy;
    if (o == NULL) {
        dmarc_dns_options_init(&defaults);
        o = &defaults;
    }
    if (backend.query == NULL) {
        if (backend.free != NULL)
            backend.free(backend.impl);
        *st = DMARC_ERR_INVAL;
        return NULL;
    }
    d = adapter_alloc(&o->alloc, sizeof *d);
    if (d == NULL) {
        if (backend.free != NULL)
            backend.free(backend.impl);
        *st = DMARC_ERR_NOMEM;
        return NULL;
    }
    memset(d, 0, sizeof *d);
    d->alloc = o->alloc;
    d->opts = *o;
    if (d->opts.clock == NULL)
        d->opts.clock = default_clock;
    if (d->opts.max_ttl == 0)
        d->opts.max_ttl = DMARC_DNS_MAX_TTL;
    d->backend = backend;
    if (o->cache_entries > 0) {
        /* The core's answer cache holds our answers as opaque values. */
        d->cache = dmarc_cache_new(&d->alloc, o->cache_entries, st);
        if (d->cache == NULL) {
            dmarc_dns_free(d);
            return NULL;
        }
    }
    *st = DMARC_OK;
    return d;
}

void dmarc_dns_cache_clear(dmarc_dns *d)
{
    if (d != NULL)
        dmarc_cache_clear(d->cache);
}

void dmarc_dns_free(dmarc_dns *d)
{
    if (d == NULL)
        return;
    dmarc_cache_free(d->cache);
    if (d->backend.free != NULL)
        d->backend.free(d->backend.impl);
    adapter_free(&d->alloc, d, sizeof *d);
}

static void cached_answer_free(void *value)
{
    dmarc_dns_answer_free(value);
}

/* Keep a copy of @a for its lifetime. Caching is best effort: running out
** of memory here only means the next question goes to the backend. */
static void cache_store(dmarc_dns *d, const char *name, size_t len, unsigned type,
                        const dmarc_dns_answer *a, uint64_t now)
{
    dmarc_dns_answer *copy;
    uint32_t ttl = a->ttl;
    /* [DISC-11]: positive and negative answers; failures are not answers. */
    if (d->cache == NULL || a->rcode == DMARC_RCODE_SERVFAIL || a->rcode == DMARC_RCODE_TIMEOUT)
        return;
    if (ttl > d->opts.max_ttl)
        ttl = d->opts.max_ttl;
    if (ttl == 0) /* RFC 1035 §3.2.1: zero means "do not cache" */
        return;
    copy = dmarc_dns_answer_dup(&d->alloc, a);
    if (copy == NULL)
        return;
    copy->from_cache = true;
    (void)dmarc_cache_put_value(d->cache, type, name, len, copy, cached_answer_free, now, ttl);
}

/* An answer with no data: NXDOMAIN for impossible names, injected faults,
** SERVFAIL for a chain that is too long. */
static dmarc_status empty_answer(dmarc_dns *d, const char *name, size_t len, dmarc_rcode rc,
                                 dmarc_dns_answer **out)
{
    dmarc_dns_builder b;
    dmarc_dns_builder_init(&b, &d->alloc, name, len);
    b.negative_ttl = 0;
    *out = dmarc_dns_builder_finish(&b, rc);
    return *out != NULL ? DMARC_OK : DMARC_ERR_NOMEM;
}

static const fault *fault_find(const dmarc_dns *d, const char *name, size_t len)
{
    size_t i;
    for (i = 0; i < d->nfaults; i++) {
        const fault *f = &d->faults[i];
        if (len == f->len && memcmp(name, f->name, len) == 0)
            return f;
        if (len > f->len && name[len - f->len - 1] == '.' &&
            memcmp(name + len - f->len, f->name, f->len) == 0)
            return f;
    }
    return NULL;
}

/* One normalised question: faults, cache, backend, then the CNAME link the
** backend left (recursion bounded by @hops). */
static dmarc_status lookup(dmarc_dns *d, const char *name, size_t len, unsigned type, unsigned hops,
                           dmarc_dns_answer **out)
{
    const fault *f;
    dmarc_dns_answer *a = NULL, *next = NULL;
    dmarc_status st;
    uint64_t now;

    f = fault_find(d, name, len);
    if (f != NULL)
        return empty_answer(d, name, len, f->rcode, out);

    now = d->opts.clock(d->opts.clock_ud);
    if (d->cache != NULL) {
        uint32_t left = 0;
        const dmarc_dns_answer *hit = dmarc_cache_get_value(d->cache, type, name, len, now, &left);
        if (hit != NULL) {
            a = dmarc_dns_answer_dup(&d->alloc, hit);
            if (a == NULL)
                return DMARC_ERR_NOMEM;
            /* The TTL left, for anyone passing it on (the DMARC core's cache). */
            a->ttl = left;
            *out = a;
            return DMARC_OK;
        }
    }

    d->stats.upstream++;
    st = d->backend.query(d->backend.impl, name, type, &a);
    if (st != DMARC_OK)
        return st;
    if (a == NULL)
        return DMARC_ERR_NOMEM;
    if ((a->rcode == DMARC_RCODE_NODATA || a->rcode == DMARC_RCODE_NXDOMAIN) &&
        a->ttl == UINT32_MAX)
        a->ttl = d->opts.negative_ttl;

    if (a->cname != NULL && a->count == 0) {
        char target[DMARC_DOMAIN_MAX_LEN + 1];
        size_t tlen;
        uint32_t link_ttl = a->ttl;
        if (hops >= DMARC_DNS_MAX_CNAME ||
            dmarc_dns_name_normalize(a->cname, strlen(a->cname), target, &tlen) != DMARC_OK) {
            /* A loop or an endless chain: what a recursive server says. */
            dmarc_dns_answer_free(a);
            return empty_answer(d, name, len, DMARC_RCODE_SERVFAIL, out);
        }
        dmarc_dns_answer_free(a);
        st = lookup(d, target, tlen, type, hops + 1, &next);
        if (st != DMARC_OK)
            return st;
        /* The alias lives as long as its shortest link [DISC-11]. */
        if (link_ttl < next->ttl)
            next->ttl = link_ttl;
        next->cname_hops += 1;
        next->from_cache = false;
        a = next;
    } else if (a->cname != NULL) {
        /* Data arrived with the chain: the pending target is moot. */
        a->cname = NULL;
    }
    cache_store(d, name, len, type, a, now);
    *out = a;
    return DMARC_OK;
}

dmarc_status dmarc_dns_query(dmarc_dns *d, const char *name, size_t len, unsigned type,
                             dmarc_dns_answer **out)
{
    char norm[DMARC_DOMAIN_MAX_LEN + 1];
    size_t nlen;
    if (d == NULL || name == NULL || out == NULL || type == 0 || type > 0xffff)
        return DMARC_ERR_INVAL;
    if (dmarc_dns_name_normalize(name, len, norm, &nlen) != DMARC_OK) {
        /* No such name can exist, so nothing is asked. */
        return empty_answer(d, "", 0, DMARC_RCODE_NXDOMAIN, out);
    }
    return lookup(d, norm, nlen, type, 0, out);
}

dmarc_status dmarc_dns_add_fault(dmarc_dns *d, const char *name, size_t len, dmarc_rcode rc)
{
    fault *f;
    if (d == NULL || name == NULL || (int)rc < 0 || rc >= DMARC_RCODE__COUNT)
        return DMARC_ERR_INVAL;
    if (d->nfaults >= DMARC_DNS_MAX_FAULTS)
        return DMARC_ERR_LIMIT;
    f = &d->faults[d->nfaults];
    if (dmarc_dns_name_normalize(name, len, f->name, &f->len) != DMARC_OK)
        return DMARC_ERR_SYNTAX;
    f->rcode = rc;
    d->nfaults++;
    return DMARC_OK;
}

void dmarc_dns_get_stats(const dmarc_dns *d, dmarc_dns_stats *out)
{
    if (d == NULL || out == NULL)
        return;
    *out = d->stats;
    /* Hits and misses are the cache's own count: every question it was asked. */
    dmarc_cache_stats(d->cache, &out->hits, &out->misses);
    out->entries = dmarc_cache_size(d->cache);
}

/* }====================================================== */
