/*
** The DNS layer beside the sans-I/O core: one resolver interface for DMARC
** discovery, SPF (libspf2) and DKIM key lookups (libopendkim), with a
** TTL-aware answer cache (positive and negative) in front of a backend that
** does the asking: a zone file (dmarc_zone.h) or a DNS server (ldns,
** dmarc_dns_ldns.h).
**
** NXDOMAIN, NODATA, SERVFAIL and TIMEOUT stay distinct all the way up
** [DISC-4] [DISC-10] [DISC-12]: they are dmarc_rcode values, never folded
** into one "lookup failed".
**
** Conventions are those of dmarc.h: `_new` has a `_free`, `_free(NULL)` is a
** no-op, inputs are borrowed for the call, out-parameters stay untouched on
** error. Objects are not thread-safe.
*/
#ifndef DMARC_DNS_H
#define DMARC_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dmarc.h"

/* ** {====================================================================
** Limits
** ===================================================================== */

/* CNAME links followed for one question (RFC 1034 §3.6.2 chains); a longer
** chain answers SERVFAIL, as a recursive server does for a loop. */
#define DMARC_DNS_MAX_CNAME 8
/* Resource records kept per answer; the excess is dropped. */
#define DMARC_DNS_MAX_RRS 64
/* Bytes of RR data kept per answer (TXT text, names, addresses). */
#define DMARC_DNS_MAX_ANSWER_BYTES (256u * 1024u)
/* Upper bound on any cache lifetime, whatever the TTL says (1 day). */
#define DMARC_DNS_MAX_TTL 86400u
/* Lifetime of a negative answer that came without an SOA (RFC 2308 §5
** would not cache it at all; a short lifetime keeps a burst of identical
** questions off the wire without holding a stale "no" for long). */
#define DMARC_DNS_DEFAULT_NEGATIVE_TTL 60u
/* Names with an injected fault (dmarc_dns_add_fault). */
#define DMARC_DNS_MAX_FAULTS 64

/* }==================================================================== */

/* RR types the layer understands. The DMARC_QTYPE_* values of dmarc.h are
** the same numbers (RFC 1035 §3.2.2, RFC 3596 for AAAA, RFC 7208 for 99). */
enum {
    DMARC_DNS_T_A = 1,
    DMARC_DNS_T_NS = 2,
    DMARC_DNS_T_CNAME = 5,
    DMARC_DNS_T_SOA = 6,
    DMARC_DNS_T_PTR = 12,
    DMARC_DNS_T_MX = 15,
    DMARC_DNS_T_TXT = 16,
    DMARC_DNS_T_AAAA = 28,
    DMARC_DNS_T_SPF = 99
};

/* Name of an RR type ("TXT"), or NULL; and back (case-insensitive), 0 if
** unknown. */
DMARC_API const char *dmarc_dns_type_name(unsigned type);
DMARC_API unsigned dmarc_dns_type_from_name(const char *s, size_t len);

/* One resource record of an answer, a plain read-only view. */
typedef struct dmarc_dns_rr {
    uint16_t type;    /* DMARC_DNS_T_* */
    uint16_t pref;    /* MX preference; 0 otherwise */
    uint32_t ttl;     /* as received */
    const char *data; /* TXT: its character-strings concatenated [REC-1];
                         A/AAAA: 4/16 address bytes; MX/CNAME/PTR/NS: the
                         name, lowercase, no trailing dot. NUL-terminated. */
    size_t len;       /* bytes in data */
} dmarc_dns_rr;

/* An answer: one block the caller owns; free with dmarc_dns_answer_free. */
typedef struct dmarc_dns_answer {
    dmarc_rcode rcode;       /* NOERROR with count 0 never occurs: it is NODATA */
    uint32_t ttl;            /* cache lifetime: smallest TTL of the RRs (CNAMEs
                                included), or the negative TTL [DISC-11] */
    size_t count;            /* RRs in rrs (0 unless NOERROR) */
    const dmarc_dns_rr *rrs; /* answers to the question, in the order received */
    const char *name;        /* owner of the data after CNAMEs (lowercase) */
    const char *cname;       /* backend-internal: a CNAME target still to follow,
                                or NULL; never set on answers of dmarc_dns_query */
    unsigned cname_hops;     /* CNAME links followed to get here */
    const char *problem;     /* SERVFAIL/TIMEOUT only: what went wrong when the backend
                                knows more than the rcode ("malformed reply"), or NULL.
                                A static string of the backend. */
    bool from_cache;         /* answered from the cache */
    /* private */
    dmarc_allocator alloc_; /* a copy: the answer may outlive its resolver */
    size_t size_;
} dmarc_dns_answer;

DMARC_API void dmarc_dns_answer_free(dmarc_dns_answer *a);
/* A copy of @a through @alloc; NULL when out of memory. */
DMARC_API dmarc_dns_answer *dmarc_dns_answer_dup(const dmarc_allocator *alloc,
                                                 const dmarc_dns_answer *a);

/* ** {====================================================================
** Building answers (for backends)
** ===================================================================== */

typedef struct dmarc_dns_builder {
    const dmarc_allocator *alloc;
    dmarc_rcode rcode;
    uint32_t ttl;          /* running minimum; UINT32_MAX until an RR is added */
    uint32_t negative_ttl; /* used when the answer ends up negative */
    size_t count;
    dmarc_dns_rr rrs[DMARC_DNS_MAX_RRS]; /* data is set by finish */
    char *buf;
    size_t len, cap;
    char name[DMARC_DOMAIN_MAX_LEN + 2];
    char cname[DMARC_DOMAIN_MAX_LEN + 2];
    bool has_cname;
    const char *problem; /* copied to the answer (a static string) */
    bool truncated;      /* a limit dropped data */
    bool dropping;       /* the last RR was dropped: drop what is appended to it */
    bool nomem;
} dmarc_dns_builder;

/* Start an answer for @name (copied, lowercased; at most
** DMARC_DOMAIN_MAX_LEN + 1 bytes are kept). */
DMARC_API void dmarc_dns_builder_init(dmarc_dns_builder *b, const dmarc_allocator *alloc,
                                      const char *name, size_t len);
/* Add one RR (data copied). Over a limit the RR is dropped and
** b->truncated set; DMARC_ERR_NOMEM when the buffer cannot grow. */
DMARC_API dmarc_status dmarc_dns_builder_add(dmarc_dns_builder *b, unsigned type, uint32_t ttl,
                                             uint16_t pref, const void *data, size_t len);
/* Append a character-string to the last TXT RR added (TXT RRs are added
** with their first string, then grow). */
DMARC_API dmarc_status dmarc_dns_builder_append(dmarc_dns_builder *b, const void *data, size_t len);
/* Record that the name is an alias: @target still has to be asked. */
DMARC_API void dmarc_dns_builder_cname(dmarc_dns_builder *b, const char *target, size_t len,
                                       uint32_t ttl);
/* The answer: rcode NOERROR becomes NODATA when no RR was added (and no
** CNAME is pending). NULL when out of memory. Frees the builder's buffer
** in every case. */
DMARC_API dmarc_dns_answer *dmarc_dns_builder_finish(dmarc_dns_builder *b, dmarc_rcode rcode);
/* Release a builder that will not be finished. */
DMARC_API void dmarc_dns_builder_discard(dmarc_dns_builder *b);

/* }==================================================================== */

/* ** {====================================================================
** Backends: what actually asks
** ===================================================================== */

/*
** query: answer @name (lowercase, no trailing dot, NUL-terminated) for
** @type. Return DMARC_OK with *out set, or a negative status (NOMEM).
** A backend that meets a CNAME without the data it points to returns the
** answer with `cname` set; the layer follows it (bounded). Transport
** failures are answers too: SERVFAIL or TIMEOUT.
** free: release @impl (called by dmarc_dns_free).
*/
typedef struct dmarc_dns_backend {
    dmarc_status (*query)(void *impl, const char *name, unsigned type, dmarc_dns_answer **out);
    void (*free)(void *impl);
    void *impl;
} dmarc_dns_backend;

/* }==================================================================== */

/* ** {====================================================================
** The resolver: backend + CNAME following + cache + injected faults
** ===================================================================== */

typedef struct dmarc_dns dmarc_dns;

/* Seconds on any monotonic scale; the cache compares expiry times only. */
typedef uint64_t (*dmarc_dns_clock_fn)(void *ud);

typedef struct dmarc_dns_options {
    dmarc_allocator alloc;    /* default libc */
    size_t cache_entries;     /* 0: no cache; else LRU-bounded to this many answers */
    uint32_t max_ttl;         /* default DMARC_DNS_MAX_TTL */
    uint32_t negative_ttl;    /* default DMARC_DNS_DEFAULT_NEGATIVE_TTL */
    dmarc_dns_clock_fn clock; /* default CLOCK_MONOTONIC seconds */
    void *clock_ud;
} dmarc_dns_options;

DMARC_API void dmarc_dns_options_init(dmarc_dns_options *o);

/* A resolver over @backend, which it owns from now on (also on failure:
** backend.free is called). NULL with *st on failure. */
DMARC_API dmarc_dns *dmarc_dns_new(const dmarc_dns_options *o, dmarc_dns_backend backend,
                                   dmarc_status *st);
DMARC_API void dmarc_dns_free(dmarc_dns *d);

/*
** dmarc_dns_query: the answer to (@name, @type). @name may carry one
** trailing dot and any case; it is normalised. A name that cannot exist in
** the DNS (empty label, label over 63 bytes, name over 253) is answered
** NXDOMAIN without asking. CNAME chains are followed up to
** DMARC_DNS_MAX_CNAME links (longer: SERVFAIL). Positive and negative
** answers are cached for their TTL [DISC-11]; SERVFAIL and TIMEOUT never.
** Returns DMARC_OK with *out (free with dmarc_dns_answer_free),
** DMARC_ERR_INVAL, DMARC_ERR_NOMEM.
*/
DMARC_API dmarc_status dmarc_dns_query(dmarc_dns *d, const char *name, size_t len, unsigned type,
                                       dmarc_dns_answer **out);

/* Answer @rc (SERVFAIL, TIMEOUT, NXDOMAIN...) for @name and every name
** below it, whatever the backend says: offline tests of error paths.
** DMARC_ERR_LIMIT beyond DMARC_DNS_MAX_FAULTS. */
DMARC_API dmarc_status dmarc_dns_add_fault(dmarc_dns *d, const char *name, size_t len,
                                           dmarc_rcode rc);

typedef struct dmarc_dns_stats {
    uint64_t hits;     /* questions answered from the cache */
    uint64_t misses;   /* questions the cache could not answer */
    uint64_t upstream; /* questions sent to the backend (CNAME links included) */
    size_t entries;    /* answers held now */
} dmarc_dns_stats;

DMARC_API void dmarc_dns_get_stats(const dmarc_dns *d, dmarc_dns_stats *out);
/* Drop every cached answer. */
DMARC_API void dmarc_dns_cache_clear(dmarc_dns *d);

/* Normalise a domain name for the layer: strip one trailing dot, lowercase
** ASCII, check lengths (labels 1..63, name <= DMARC_DOMAIN_MAX_LEN). Writes
** NUL-terminated @out (DMARC_DOMAIN_MAX_LEN + 1 bytes). DMARC_ERR_SYNTAX
** when no such name can exist. */
DMARC_API dmarc_status dmarc_dns_name_normalize(const char *in, size_t len, char *out,
                                                size_t *outlen);

/* }==================================================================== */

#endif /* DMARC_DNS_H */
