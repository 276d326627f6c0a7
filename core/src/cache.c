/*
** DNS answers and the shared, TTL-aware answer cache [DISC-11].
**
** Walks ask the same names for message after message and for identifier
** after identifier (RFC 9989 §4.10 rationale, §11.6; RFC 7489 §10.2), so
** positive and negative answers are kept for their TTL (the SOA minimum for
** a negative answer, as the caller hands it over). Transient failures are
** never kept: a SERVFAIL must be asked again next time [DISC-4].
**
** Layout: a chained hash table keyed by (type, name) plus a doubly linked
** LRU list, bounded by max_entries. The cache holds no clock: expiry is
** compared with the `now` each evaluation was given.
*/
#include <string.h>

#include "cache.h"

/* Initial and largest hash-table sizes (powers of two). The table grows to
** keep chains short, never beyond what max_entries needs. */
#define CACHE_MIN_BUCKETS 64u
#define CACHE_MAX_BUCKETS (1u << 24)

struct dmarc_cache {
    dmarc_allocator alloc;
    size_t max_entries;
    size_t count;
    dmarc__answer **buckets;
    size_t nbuckets;    /* a power of two */
    size_t max_buckets; /* growth stops here */
    dmarc__answer *lru_head, *lru_tail;
    uint64_t hits, misses;
};

/* ** {======================================================
** Answers
** ======================================================= */

uint32_t dmarc__qhash(unsigned type, const char *name, size_t len)
{
    return dmarc__hash(type, name, len);
}

dmarc__answer *dmarc__answer_new(const dmarc_allocator *a, unsigned type, const char *name,
                                 size_t len, uint32_t hash, dmarc_rcode rc, const dmarc_txt *txt,
                                 size_t n)
{
    dmarc__answer *ans;
    dmarc_txt *rrs;
    char *p;
    size_t size, i, m;

    /* Only a TXT NOERROR answer carries data worth keeping; for the
    ** existence test (A/AAAA/MX) the rcode says all [DISC-12]. */
    if (rc == DMARC_RCODE_NOERROR && n == 0)
        rc = DMARC_RCODE_NODATA;
    if (type != DMARC_QTYPE_TXT || rc != DMARC_RCODE_NOERROR)
        n = 0;
    if (n > DMARC_ANSWER_MAX_RRS)
        n = DMARC_ANSWER_MAX_RRS;

    size = sizeof *ans + n * sizeof(dmarc_txt);
    if (len > (size_t)-1 - size - 1)
        return NULL;
    size += len + 1;
    for (i = 0; i < n; i++) {
        if (txt[i].len > (size_t)-1 - size)
            return NULL;
        size += txt[i].len;
    }
    ans = dmarc__alloc(a, size);
    if (ans == NULL)
        return NULL;
    memset(ans, 0, sizeof *ans);
    ans->refs = 1;
    ans->hash = hash;
    ans->alloc = a != NULL ? *a : ans->alloc;
    ans->block_size = size;
    ans->type = type;
    ans->rcode = rc;
    rrs = (dmarc_txt *)(void *)(ans + 1);
    p = (char *)(rrs + n);
    memcpy(p, name, len);
    p[len] = '\0';
    ans->name = p;
    ans->name_len = len;
    p += len + 1;
    for (i = 0; i < n; i++) {
        m = txt[i].len;
        if (m > 0)
            memcpy(p, txt[i].data, m);
        rrs[i].data = p;
        rrs[i].len = m;
        p += m;
    }
    ans->rrs = rrs;
    ans->rr_count = n;
    return ans;
}

void dmarc__answer_release(dmarc__answer *ans)
{
    dmarc_allocator a;
    size_t m;
    if (ans == NULL || --ans->refs > 0)
        return;
    for (m = 0; m < DMARC_MODE__COUNT; m++)
        dmarc_record_free(ans->view[m].record);
    if (ans->free_value != NULL)
        ans->free_value(ans->value);
    a = ans->alloc;
    dmarc__free(&a, ans, ans->block_size);
}

dmarc_status dmarc__answer_view(dmarc__answer *ans, dmarc_mode mode, const dmarc__txtview **out)
{
    dmarc__txtview *v = &ans->view[mode];
    size_t i, lone = 0;
    unsigned found = 0;

    if (!v->done) {
        /* [REC-2] [WALK-1]: drop RRs that do not start v=DMARC1; two or more
        ** left at one name means none of them counts. Counting stops at 2. */
        for (i = 0; i < ans->rr_count && found < 2; i++) {
            if (dmarc_record_is_dmarc(mode, ans->rrs[i].data, ans->rrs[i].len)) {
                found++;
                lone = i;
            }
        }
        if (found == 1) {
            dmarc_record *rec = NULL;
            dmarc_status st = dmarc_record_parse(mode, &ans->alloc, ans->rrs[lone].data,
                                                 ans->rrs[lone].len, &rec, NULL);
            if (st == DMARC_ERR_NOMEM)
                return st;
            /* A lone v=DMARC1 RR the parser refuses still counts as a
            ** record at its name (section 14 of the digest); it is unusable
            ** (NULL) and, if applied, gives permerror [OPEN-4]. */
            v->record = st == DMARC_OK ? rec : NULL;
        }
        v->dmarc_rrs = (uint8_t)found;
        v->done = true;
    }
    *out = v;
    return DMARC_OK;
}

/* }====================================================== */

/* ** {======================================================
** The cache
** ======================================================= */

static size_t pow2_at_least(size_t n, size_t cap)
{
    size_t p = 1;
    while (p < n && p < cap)
        p <<= 1;
    return p;
}

dmarc_cache *dmarc_cache_new(const dmarc_allocator *alloc, size_t max_entries, dmarc_status *st)
{
    dmarc_cache *c;
    dmarc_status dummy;
    dmarc_allocator a = {NULL, NULL};

    if (st == NULL)
        st = &dummy;
    if (max_entries == 0) {
        *st = DMARC_ERR_INVAL;
        return NULL;
    }
    if (alloc != NULL)
        a = *alloc;
    c = dmarc__alloc(&a, sizeof *c);
    if (c == NULL) {
        *st = DMARC_ERR_NOMEM;
        return NULL;
    }
    memset(c, 0, sizeof *c);
    c->alloc = a;
    c->max_entries = max_entries;
    c->max_buckets = pow2_at_least(max_entries, CACHE_MAX_BUCKETS);
    c->nbuckets = c->max_buckets < CACHE_MIN_BUCKETS ? c->max_buckets : CACHE_MIN_BUCKETS;
    c->buckets = dmarc__alloc_array(&a, c->nbuckets, sizeof *c->buckets);
    if (c->buckets == NULL) {
        dmarc__free(&a, c, sizeof *c);
        *st = DMARC_ERR_NOMEM;
        return NULL;
    }
    memset(c->buckets, 0, c->nbuckets * sizeof *c->buckets);
    *st = DMARC_OK;
    return c;
}

static void lru_unlink(dmarc_cache *c, dmarc__answer *ans)
{
    if (ans->lru_prev != NULL)
        ans->lru_prev->lru_next = ans->lru_next;
    else
        c->lru_head = ans->lru_next;
    if (ans->lru_next != NULL)
        ans->lru_next->lru_prev = ans->lru_prev;
    else
        c->lru_tail = ans->lru_prev;
    ans->lru_prev = ans->lru_next = NULL;
}

static void lru_push_front(dmarc_cache *c, dmarc__answer *ans)
{
    ans->lru_prev = NULL;
    ans->lru_next = c->lru_head;
    if (c->lru_head != NULL)
        c->lru_head->lru_prev = ans;
    else
        c->lru_tail = ans;
    c->lru_head = ans;
}

/* Take @ans out of the table and the list and drop the cache's reference. */
static void cache_remove(dmarc_cache *c, dmarc__answer *ans)
{
    dmarc__answer **pp = &c->buckets[ans->hash & (c->nbuckets - 1)];
    while (*pp != NULL && *pp != ans)
        pp = &(*pp)->chain;
    if (*pp == ans)
        *pp = ans->chain;
    ans->chain = NULL;
    lru_unlink(c, ans);
    ans->cached = false;
    c->count--;
    dmarc__answer_release(ans);
}

static dmarc__answer *cache_find(const dmarc_cache *c, unsigned type, const char *name, size_t len,
                                 uint32_t hash)
{
    dmarc__answer *ans = c->buckets[hash & (c->nbuckets - 1)];
    for (; ans != NULL; ans = ans->chain) {
        if (ans->hash == hash && ans->type == type && ans->name_len == len &&
            memcmp(ans->name, name, len) == 0)
            return ans;
    }
    return NULL;
}

dmarc__answer *dmarc__cache_get(dmarc_cache *c, unsigned type, const char *name, size_t len,
                                uint32_t hash, uint64_t now)
{
    dmarc__answer *ans = cache_find(c, type, name, len, hash);
    if (ans != NULL && now >= ans->expires) {
        cache_remove(c, ans);
        ans = NULL;
    }
    if (ans == NULL) {
        c->misses++;
        return NULL;
    }
    c->hits++;
    if (c->lru_head != ans) {
        lru_unlink(c, ans);
        lru_push_front(c, ans);
    }
    return ans;
}

/* Double the table while it is smaller than the entry count; on NOMEM keep
** the current one (longer chains, same answers). */
static void cache_grow(dmarc_cache *c)
{
    dmarc__answer **nb, *ans, *next;
    size_t n = c->nbuckets * 2, i;

    nb = dmarc__alloc_array(&c->alloc, n, sizeof *nb);
    if (nb == NULL)
        return;
    memset(nb, 0, n * sizeof *nb);
    for (i = 0; i < c->nbuckets; i++) {
        for (ans = c->buckets[i]; ans != NULL; ans = next) {
            next = ans->chain;
            ans->chain = nb[ans->hash & (n - 1)];
            nb[ans->hash & (n - 1)] = ans;
        }
    }
    dmarc__free(&c->alloc, c->buckets, c->nbuckets * sizeof *c->buckets);
    c->buckets = nb;
    c->nbuckets = n;
}

void dmarc__cache_put(dmarc_cache *c, dmarc__answer *ans, uint64_t now, uint32_t ttl)
{
    dmarc__answer *old;
    size_t b;

    /* [DISC-4]: transient failures are asked again; TTL 0 means "do not
    ** cache" in the DNS itself (RFC 1035 §3.2.1). */
    if (c == NULL || ans->cached || ttl == 0 || ans->rcode == DMARC_RCODE_SERVFAIL ||
        ans->rcode == DMARC_RCODE_TIMEOUT)
        return;
    old = cache_find(c, ans->type, ans->name, ans->name_len, ans->hash);
    if (old != NULL)
        cache_remove(c, old);
    while (c->count >= c->max_entries && c->lru_tail != NULL)
        cache_remove(c, c->lru_tail);
    if (c->count >= c->nbuckets && c->nbuckets < c->max_buckets)
        cache_grow(c);
    ans->expires = now + ttl;
    ans->cached = true;
    ans->refs++;
    b = ans->hash & (c->nbuckets - 1);
    ans->chain = c->buckets[b];
    c->buckets[b] = ans;
    lru_push_front(c, ans);
    c->count++;
}

/* The key of a PSL answer: the callback and its user data (their bytes),
** then the name. Two lists never share an entry. */
static size_t psl_key(const dmarc_options *o, const char *name, size_t len, char *key)
{
    size_t n = 0;
    memcpy(key + n, &o->psl, sizeof o->psl);
    n += sizeof o->psl;
    memcpy(key + n, &o->psl_ud, sizeof o->psl_ud);
    n += sizeof o->psl_ud;
    memcpy(key + n, name, len);
    return n + len;
}

#define PSL_KEY_MAX (sizeof(dmarc_orgdomain_fn) + sizeof(void *) + DMARC_DOMAIN_MAX_LEN)

bool dmarc__cache_psl_get(dmarc_cache *c, const dmarc_options *o, const char *name, size_t len,
                          uint64_t now, size_t *off, bool *is_suffix)
{
    char key[PSL_KEY_MAX];
    size_t n;
    dmarc__answer *ans;

    if (c == NULL || len > DMARC_DOMAIN_MAX_LEN)
        return false;
    n = psl_key(o, name, len, key);
    ans =
        dmarc__cache_get(c, DMARC__QTYPE_PSL, key, n, dmarc__qhash(DMARC__QTYPE_PSL, key, n), now);
    if (ans == NULL)
        return false;
    *off = ans->org_off;
    *is_suffix = ans->org_suffix;
    return true;
}

void dmarc__cache_psl_put(dmarc_cache *c, const dmarc_options *o, const char *name, size_t len,
                          uint64_t now, size_t off, bool is_suffix)
{
    char key[PSL_KEY_MAX];
    size_t n;
    dmarc__answer *ans;

    if (c == NULL || len > DMARC_DOMAIN_MAX_LEN)
        return;
    n = psl_key(o, name, len, key);
    ans = dmarc__answer_new(&c->alloc, DMARC__QTYPE_PSL, key, n,
                            dmarc__qhash(DMARC__QTYPE_PSL, key, n), DMARC_RCODE_NOERROR, NULL, 0);
    if (ans == NULL)
        return; /* only a cache: the next evaluation asks the PSL again */
    ans->org_off = (uint16_t)off;
    ans->org_suffix = is_suffix;
    dmarc__cache_put(c, ans, now, DMARC__PSL_TTL);
    dmarc__answer_release(ans);
}

/* The key type of a DNS layer's entry: above every DNS type, so that its
** entries and the core's never meet (dmarc_cache_put_value). */
#define VALUE_KEY(type) (DMARC__QTYPE_VALUE | (type))

dmarc_status dmarc_cache_put_value(dmarc_cache *c, unsigned type, const char *name, size_t len,
                                   void *value, dmarc_cache_free_fn free_value, uint64_t now,
                                   uint32_t ttl)
{
    dmarc__answer *ans;
    unsigned key = VALUE_KEY(type);

    if (c == NULL || name == NULL || len > DMARC__DNS_NAME_MAX || type > 0xffff) {
        if (free_value != NULL)
            free_value(value);
        return DMARC_ERR_INVAL;
    }
    if (ttl == 0) {
        if (free_value != NULL)
            free_value(value);
        return DMARC_OK;
    }
    ans = dmarc__answer_new(&c->alloc, key, name, len, dmarc__qhash(key, name, len),
                            DMARC_RCODE_NOERROR, NULL, 0);
    if (ans == NULL) {
        if (free_value != NULL)
            free_value(value);
        return DMARC_ERR_NOMEM;
    }
    ans->value = value;
    ans->free_value = free_value;
    dmarc__cache_put(c, ans, now, ttl);
    dmarc__answer_release(ans); /* the cache's reference is the one left */
    return DMARC_OK;
}

const void *dmarc_cache_get_value(dmarc_cache *c, unsigned type, const char *name, size_t len,
                                  uint64_t now, uint32_t *ttl_left)
{
    dmarc__answer *ans;
    unsigned key = VALUE_KEY(type);

    if (c == NULL || name == NULL || len > DMARC__DNS_NAME_MAX || type > 0xffff)
        return NULL;
    ans = dmarc__cache_get(c, key, name, len, dmarc__qhash(key, name, len), now);
    if (ans == NULL)
        return NULL;
    if (ttl_left != NULL)
        *ttl_left = (uint32_t)(ans->expires - now);
    return ans->value;
}

const dmarc_allocator *dmarc__cache_allocator(const dmarc_cache *c)
{
    return &c->alloc;
}

size_t dmarc_cache_size(const dmarc_cache *c)
{
    return c == NULL ? 0 : c->count;
}

void dmarc_cache_clear(dmarc_cache *c)
{
    if (c == NULL)
        return;
    /* Bounded by the entry count: each step removes one entry. */
    while (c->lru_tail != NULL)
        cache_remove(c, c->lru_tail);
}

void dmarc_cache_stats(const dmarc_cache *c, uint64_t *hits, uint64_t *misses)
{
    if (hits != NULL)
        *hits = c == NULL ? 0 : c->hits;
    if (misses != NULL)
        *misses = c == NULL ? 0 : c->misses;
}

void dmarc_cache_free(dmarc_cache *c)
{
    dmarc_allocator a;
    if (c == NULL)
        return;
    dmarc_cache_clear(c);
    a = c->alloc;
    dmarc__free(&a, c->buckets, c->nbuckets * sizeof *c->buckets);
    dmarc__free(&a, c, sizeof *c);
}

/* }====================================================== */
