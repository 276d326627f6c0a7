/*
** Evaluations: private types shared by eval.c (API, inputs, the run loop
** that drives each author domain, the message verdict), walk.c (lookups,
** the RFC 9989 tree walk, Org Domains, discovery) and align.c (alignment,
** existence test, policy). eval.c calls walk.c and align.c; align.c calls
** walk.c; nothing calls back up.
**
** The run is restartable: each dmarc_eval_run recomputes the evaluation of
** the current author domain from the start, and every DNS lookup is first
** answered from the per-evaluation memo, then from the shared cache, and
** only then handed out as the pending question. Because the memo only grows
** and each step is a pure function of the answers, a rerun takes the same
** path and stops one question further; no question is asked twice. Facts
** that are final (a finished author domain, an identifier's Org Domain) are
** kept so reruns skip them.
*/
#ifndef DMARC_EVAL_H
#define DMARC_EVAL_H

#include "cache.h"

struct dmarc_ctx {
    dmarc_options opt; /* validated copy */
};

/* What is known about the Org Domain of one name. */
enum {
    DMARC__ORG_UNKNOWN = 0, /* not computed yet */
    DMARC__ORG_KNOWN,       /* name + off is the Org Domain */
    DMARC__ORG_SUFFIX,      /* rfc7489: the name is a public suffix [PSL-1] */
    DMARC__ORG_FAILED       /* a query failed (or the PSL callback): unknown for good */
};

typedef struct dmarc__org {
    uint8_t state;
    uint16_t off; /* offset of the Org Domain inside the name */
} dmarc__org;

/* An SPF or DKIM result as given. */
typedef struct dmarc__ident {
    uint32_t off; /* normalized domain in the arena */
    uint16_t len; /* 0: not a usable domain, never aligns */
    dmarc_auth result;
    dmarc__org org; /* its own Org Domain [ALN-4], computed when needed */
} dmarc__ident;

/* One author domain and, once evaluated, its verdict. */
typedef struct dmarc__domain {
    uint32_t off; /* normalized domain in the arena */
    uint16_t len;
    dmarc__org org; /* the author's Org Domain, computed when needed */
    /* verdict */
    dmarc_result result;
    bool has_policy_domain; /* a record was found: policy_off is set */
    uint16_t policy_off;    /* where (a suffix of the author domain) */
    bool own_record;        /* the record is the author domain's own */
    bool has_org_out;       /* org_out_off is reported as the Org Domain */
    uint16_t org_out_off;
    bool has_policy;
    dmarc_policy policy;
    dmarc_policy_tag policy_tag;
    dmarc_policy applied;
    dmarc_reason reason;
    bool spf_aligned, dkim_aligned;
    bool testing;
    bool author_exists;
    bool pct_as_testing; /* [OPEN-3] decided `testing` */
    const dmarc_record *record;
    const char *error;
    uint8_t spf_align;                  /* dmarc_align */
    bool memo_started;                  /* memo_base is set */
    size_t memo_base;                   /* memo entries in use when evaluation began */
    uint8_t dkim_align[DMARC_MAX_DKIM]; /* dmarc_align, per DKIM result */
} dmarc__domain;

/* Small strings (domains) live in one arena; this much is embedded so a
** typical message needs no allocation at all. */
#define DMARC__ARENA_INLINE 1024

enum {
    DMARC__EVAL_INPUT = 0, /* taking inputs; run not called yet */
    DMARC__EVAL_PENDING,   /* a question is out */
    DMARC__EVAL_ANSWERED,  /* the answer is in; run again */
    DMARC__EVAL_DONE       /* the verdict is ready */
};

/* SPF slots [ALN-1]. */
enum { DMARC__SPF_MFROM = 0, DMARC__SPF_HELO = 1 };

struct dmarc_eval {
    const dmarc_ctx *ctx;
    dmarc_cache *cache; /* optional */
    dmarc_allocator alloc;
    dmarc_mode mode;
    int state;
    unsigned in_flags;    /* flags raised by the inputs */
    unsigned flags;       /* in_flags plus those of the run */
    unsigned from_fields; /* From fields seen (parsed or not) */
    unsigned roll;
    uint64_t now;

    char *arena; /* arena_inline, or a heap block kept across resets */
    size_t arena_len, arena_cap;

    dmarc__domain dom[DMARC_MAX_AUTHOR_DOMAINS];
    size_t ndom;
    /* Parts of the From that a bound kept from evaluation [OPEN-5]: the
    ** first distinct author domain over max_author_domains (has_over), a
    ** field cut at DMARC_FROM_MAX_MAILBOXES, From fields past
    ** DMARC_FROM_MAX_FIELDS. */
    bool has_over;
    uint16_t over_len;
    uint32_t over_off;
    bool mailboxes_cut;
    bool fields_dropped;
    bool final_has_author; /* final.off names the author domain */
    size_t ndone;          /* author domains fully evaluated */
    size_t limit_domain;   /* the one being evaluated when the query limit was hit */

    dmarc__ident dkim[DMARC_MAX_DKIM];
    size_t ndkim;
    dmarc__ident spf[DMARC_MAX_SPF];
    bool has_spf[DMARC_MAX_SPF];

    /* Every answer used, in order of first use; asked[] lists the memo
    ** slots of the questions handed to the caller, in order. */
    dmarc__answer *memo[DMARC_EVAL_MAX_QUERIES];
    uint32_t memo_hash[DMARC_EVAL_MAX_QUERIES];
    size_t nmemo;
    /* Memo entries the current pass over one author domain has used so far
    ** (a rerun replays the same lookups in the same order, so this is the
    ** same at each point of every pass: budgets based on it are stable). */
    size_t memo_used;
    uint8_t asked[DMARC_EVAL_MAX_QUERIES];
    size_t nasked;

    /* The pending question. */
    dmarc_qtype qtype;
    uint32_t qhash;
    size_t qlen;
    char qname[DMARC__QNAME_MAX + 1];

    /* The message verdict [OPEN-5]. */
    dmarc__domain final;
    size_t decider; /* index of the deciding domain; ndom when there is none */

    char arena_inline[DMARC__ARENA_INLINE];
};

static inline const char *dmarc__str(const dmarc_eval *e, uint32_t off)
{
    return e->arena + off;
}

/* ** {======================================================
** walk.c
** ======================================================= */

/* Outcome of one lookup. */
typedef enum dmarc__dns {
    DMARC__DNS_DATA,     /* NOERROR with data */
    DMARC__DNS_NODATA,   /* the name exists, no data of the type */
    DMARC__DNS_NXDOMAIN, /* the name does not exist */
    DMARC__DNS_ERROR     /* SERVFAIL, TIMEOUT or the query limit [DISC-4] [DISC-10] */
} dmarc__dns;

/* Look a question up: memo, cache, else make it the pending question.
** DMARC_OK with *out set (and *ans, NULL when no answer object backs the
** outcome), or DMARC_NEED_DNS. */
DMARC__HIDDEN dmarc_status dmarc__lookup(dmarc_eval *e, dmarc_qtype type, const char *name,
                                         size_t len, dmarc__dns *out, dmarc__answer **ans);

/* TXT at `_dmarc.<domain>` under the evaluation's mode: *view is NULL when
** there is no TXT data; *err when the query failed. */
DMARC__HIDDEN dmarc_status dmarc__lookup_policy(dmarc_eval *e, const char *domain, size_t len,
                                                const dmarc__txtview **view, bool *err);

/* A lone DMARC record at a name [WALK-1] (usable or not). */
static inline bool dmarc__has_record(const dmarc__txtview *v)
{
    return v != NULL && v->dmarc_rrs == 1;
}

/* The outcome of one RFC 9989 tree walk [WALK-1] [WALK-2] [DISC-6]. */
typedef struct dmarc__walk_result {
    bool failed;                   /* a query failed: nothing below is meaningful */
    size_t org_off;                /* the Org Domain, as an offset in the start name */
    const dmarc__txtview *org_rec; /* the Org Domain's record, if it had one */
    const dmarc__txtview *psd_rec; /* the psd=y record that ended the walk (not at the start) */
    size_t psd_off;
} dmarc__walk_result;

DMARC__HIDDEN dmarc_status dmarc__walk(dmarc_eval *e, const char *name, size_t len,
                                       dmarc__walk_result *w);

/* Make sure @org describes the Org Domain of @name (a tree walk in rfc9989
** mode, the PSL callback in rfc7489 mode). */
DMARC__HIDDEN dmarc_status dmarc__org_domain(dmarc_eval *e, const char *name, size_t len,
                                             dmarc__org *org);

/* Policy discovery for one author domain [DISC-1..10]; fills the verdict
** as far as discovery decides it (none, temperror, permerror) or leaves
** d->record set for alignment. *decided says which. */
DMARC__HIDDEN dmarc_status dmarc__discover(dmarc_eval *e, dmarc__domain *d, bool *decided);

/* }====================================================== */

/* ** {======================================================
** align.c
** ======================================================= */

/* Alignment and policy for one author domain whose discovery found a
** record to apply (d->record): identifier alignment, the existence test
** behind np, the policy requested and applied, the Org Domain to report. */
DMARC__HIDDEN dmarc_status dmarc__align_domain(dmarc_eval *e, dmarc__domain *d);

/* Apply t= or pct to a requested policy [POL-4] [POL-6] [OPEN-3]. */
DMARC__HIDDEN void dmarc__apply_policy(const dmarc_eval *e, dmarc__domain *d);

/* }====================================================== */

#endif /* DMARC_EVAL_H */
