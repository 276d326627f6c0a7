/*
** DNS answers and the shared answer cache [DISC-11]: private interface.
**
** An answer is one reference-counted block holding the question (type and
** name), the rcode and the TXT RRs. The cache and every evaluation that
** used it hold one reference each, so an entry evicted or expired while an
** evaluation still reads it stays alive until that evaluation lets go.
** Everything inside an answer, the lazily parsed records included, is
** allocated with the allocator recorded in the answer.
*/
#ifndef DMARC_CACHE_H
#define DMARC_CACHE_H

#include "internal.h"

/* Longest query name: "_dmarc." + a domain of DMARC_DOMAIN_MAX_LEN. */
#define DMARC__QNAME_PREFIX "_dmarc."
#define DMARC__QNAME_PREFIX_LEN 7
#define DMARC__QNAME_MAX (DMARC__QNAME_PREFIX_LEN + DMARC_DOMAIN_MAX_LEN)
/* RFC 1035 §2.3.4: a name longer than this cannot be in the DNS at all. */
#define DMARC__DNS_NAME_MAX 253

/* PSL answers (rfc7489 Org Domains) share the cache under this pseudo type,
** which no DNS question uses, keyed by the callback, its user data and the
** name. They live this long (seconds of `now`): a list reloaded under the
** same callback and user data takes effect within that time, or at once
** after dmarc_cache_clear. [PSL-6]: lists are refreshed about daily. */
#define DMARC__QTYPE_PSL 0
#define DMARC__PSL_TTL 3600
/* A DNS layer's entries (dmarc_cache_put_value) are keyed by this bit or'd
** with their DNS type: no DNS type (16 bits) and no PSL entry has it. */
#define DMARC__QTYPE_VALUE 0x10000u

/* What discovery needs from one TXT answer under one mode [WALK-1]. */
typedef struct dmarc__txtview {
    bool done;            /* classified for this mode */
    uint8_t dmarc_rrs;    /* RRs that pass dmarc_record_is_dmarc, counted up to 2 */
    dmarc_record *record; /* exactly one: its parse; NULL if the parser refused it */
} dmarc__txtview;

typedef struct dmarc__answer dmarc__answer;
struct dmarc__answer {
    uint32_t refs;         /* holders: the cache and evaluations */
    uint32_t hash;         /* dmarc__qhash of (type, name) */
    dmarc_allocator alloc; /* allocated with this; frees with it */
    size_t block_size;     /* size of the block the answer lives in */
    unsigned type;         /* the question: a dmarc_qtype, or a pseudo type above */
    const char *name;      /* NUL-terminated, inside the block */
    size_t name_len;
    dmarc_rcode rcode;    /* NOERROR only with data; NOERROR + 0 RRs is stored as NODATA */
    size_t rr_count;      /* TXT RRs kept (<= DMARC_ANSWER_MAX_RRS), 0 for other types */
    const dmarc_txt *rrs; /* inside the block */
    dmarc__txtview view[DMARC_MODE__COUNT];
    /* Cache linkage: hash chain, LRU list (most recent first), expiry. */
    dmarc__answer *chain;
    dmarc__answer *lru_prev, *lru_next;
    uint64_t expires;
    bool cached;
    /* DMARC__QTYPE_PSL entries: what the callback said. */
    uint16_t org_off;
    bool org_suffix;
    /* DMARC__QTYPE_VALUE entries: the layer's value, freed with the entry. */
    void *value;
    dmarc_cache_free_fn free_value;
};

/* Hash of a question; the same function keys the cache and the memo. */
DMARC__HIDDEN uint32_t dmarc__qhash(unsigned type, const char *name, size_t len);

/* A new answer with one reference, data copied; NULL on NOMEM. For a
** non-TXT type, or an rcode other than NOERROR, @txt is not kept. */
DMARC__HIDDEN dmarc__answer *dmarc__answer_new(const dmarc_allocator *a, unsigned type,
                                               const char *name, size_t len, uint32_t hash,
                                               dmarc_rcode rc, const dmarc_txt *txt, size_t n);
DMARC__HIDDEN void dmarc__answer_release(dmarc__answer *ans);
/* Classify a TXT answer under @mode once (filter with dmarc_record_is_dmarc,
** parse a lone DMARC RR) and keep the result in the answer. DMARC_OK or
** DMARC_ERR_NOMEM (nothing kept; a later call tries again). */
DMARC__HIDDEN dmarc_status dmarc__answer_view(dmarc__answer *ans, dmarc_mode mode,
                                              const dmarc__txtview **out);

/* A live entry for the question at time @now, or NULL (an expired entry is
** dropped). Counts a hit or a miss. The caller takes its own reference. */
DMARC__HIDDEN dmarc__answer *dmarc__cache_get(dmarc_cache *c, unsigned type, const char *name,
                                              size_t len, uint32_t hash, uint64_t now);
/* Store @ans (the cache takes a reference) until now + ttl, replacing an
** entry for the same question and evicting the least recently used one when
** full. SERVFAIL, TIMEOUT and ttl 0 are not stored. Never fails: when the
** hash table cannot grow it stays as it is. */
DMARC__HIDDEN void dmarc__cache_put(dmarc_cache *c, dmarc__answer *ans, uint64_t now, uint32_t ttl);
/* PSL answers: a live entry for @name under the callback of @o (*off and
** *is_suffix set, true), or false. Storing never fails (NOMEM: not stored). */
DMARC__HIDDEN bool dmarc__cache_psl_get(dmarc_cache *c, const dmarc_options *o, const char *name,
                                        size_t len, uint64_t now, size_t *off, bool *is_suffix);
DMARC__HIDDEN void dmarc__cache_psl_put(dmarc_cache *c, const dmarc_options *o, const char *name,
                                        size_t len, uint64_t now, size_t off, bool is_suffix);

/* The allocator answers meant for the cache must be made with. */
DMARC__HIDDEN const dmarc_allocator *dmarc__cache_allocator(const dmarc_cache *c);

#endif /* DMARC_CACHE_H */
