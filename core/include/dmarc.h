/*
** libdmarc: a sans-I/O DMARC policy engine (RFC 9989, with RFC 7489 as a mode).
**
** The library never opens a socket or a file, never reads the clock, the
** environment or a random source, and never logs. DNS answers go in,
** questions and verdicts come out: the caller runs the I/O however it likes
** (blocking, an event loop, Rspamd's asynchronous resolver).
**
** Conventions (see README.md, "Error contract"):
** - Every `_new` has a matching `_free`; `_free(NULL)` is a no-op.
** - Inputs are borrowed for the duration of the call, always pointer plus
**   length (they may contain NUL bytes, which are then invalid data).
** - Returned `const char *` and views are borrowed from their owner and stay
**   valid until the next mutating call on that owner or its `_free`; every
**   accessor says so. Returned strings are NUL-terminated as a convenience.
** - `dmarc_status`: zero or positive is not an error, negative is.
** - Out-parameters stay untouched on error.
** - Objects are not thread-safe; a `dmarc_ctx` is immutable after creation
**   and may be shared read-only across threads.
**
** Rule IDs in brackets ([DISC-5], ...) are listed with their RFC sections in
** docs/conformance.md.
**
** SPDX-License-Identifier: MIT (see LICENSE; copyright lua-dmarc contributors)
*/
#ifndef DMARC_H
#define DMARC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DMARC_VERSION_MAJOR 0
#define DMARC_VERSION_MINOR 1
#define DMARC_VERSION_PATCH 0
#define DMARC_VERSION_STRING "0.1.0"

/* DMARC_API marks the library's exported functions. A program or module that
** compiles the sources into itself (the Lua modules: they export luaopen_* only)
** defines DMARC_STATIC, which keeps every one of them inside that object. */
#if defined(_WIN32)
#define DMARC_API
#elif defined(__GNUC__) && __GNUC__ >= 4 && defined(DMARC_STATIC)
#define DMARC_API __attribute__((visibility("hidden")))
#elif defined(__GNUC__) && __GNUC__ >= 4
#define DMARC_API __attribute__((visibility("default")))
#else
#define DMARC_API
#endif

/* ** {====================================================================
** Limits. Every loop over untrusted input is bounded by one of these.
** ===================================================================== */

/* RFC 9989 §4.10: a tree walk makes at most 8 queries [WALK-2]. */
#define DMARC_WALK_MAX_QUERIES 8
/* [OPEN-5]: at most 8 distinct author domains are evaluated per message. */
#define DMARC_MAX_AUTHOR_DOMAINS 8
/* Mailboxes kept from one From field. Past it, a mailbox that repeats a kept
** domain (or has none) is skipped; one that may bring a new domain ends the
** field, flagged too_many_domains, and counts as failing [OPEN-5]. */
#define DMARC_FROM_MAX_MAILBOXES 64
/* From fields looked at per message. */
#define DMARC_FROM_MAX_FIELDS 8
/* Longest From field value accepted (bytes); longer is a syntax error. */
#define DMARC_FROM_MAX_LEN 65536
/* Comment nesting depth in a From field (RFC 5322 §3.2.2 allows any). */
#define DMARC_FROM_MAX_COMMENT_DEPTH 32
/* Longest record accepted (bytes). One TXT RR cannot exceed 65535 bytes. */
#define DMARC_RECORD_MAX_LEN 65535
/* Tags read from one record; more is a syntax error of the excess. */
#define DMARC_RECORD_MAX_TAGS 64
/* URIs kept per rua/ruf list; the excess is ignored with a warning. */
#define DMARC_RECORD_MAX_URIS 32
/* Warnings kept per parse; the excess is counted, not stored. */
#define DMARC_RECORD_MAX_WARNINGS 16
/* TXT RRs read from one answer; the excess is ignored. */
#define DMARC_ANSWER_MAX_RRS 32
/* SPF and DKIM results considered per evaluation. */
#define DMARC_MAX_DKIM 32
#define DMARC_MAX_SPF 2
/* DNS questions one evaluation may ask in all (discovery, alignment walks,
** existence checks); hitting it gives temperror, never a pass. Every
** distinct lookup counts, cache hits included, so the verdict never
** depends on what the cache happened to hold. */
#define DMARC_EVAL_MAX_QUERIES 64
/* RFC 1035 §2.3.4: a domain name has at most 253 characters in text form. */
#define DMARC_DOMAIN_MAX_LEN 253
/* RFC 1035 §2.3.4 and RFC 9989 §4.10: labels are counted up to 127. */
#define DMARC_DOMAIN_MAX_LABELS 127

/* }==================================================================== */

/* ** {====================================================================
** Enumerations. Each is an X-macro list, so C names, strings and the Lua
** binding's option tables come from one place.
** ===================================================================== */

typedef enum dmarc_status {
    DMARC_OK = 0,         /* done */
    DMARC_NEED_DNS = 1,   /* dmarc_eval_run wants an answer: see dmarc_eval_query */
    DMARC_ERR_NOMEM = -1, /* an allocation failed; the object is still usable/freeable */
    DMARC_ERR_INVAL = -2, /* caller broke the contract: NULL, bad enum, bad range */
    DMARC_ERR_STATE = -3, /* call not allowed in the object's current state */
    DMARC_ERR_LIMIT = -4, /* a named limit was hit */
    DMARC_ERR_SYNTAX = -5 /* input data is malformed: see the dmarc_diag */
} dmarc_status;

/* Static text, never NULL. */
DMARC_API const char *dmarc_strerror(dmarc_status st);

/* The version of the library actually loaded ("MAJOR.MINOR.PATCH"), which may
** differ from the DMARC_VERSION_STRING a program was compiled against. Static
** text, never NULL. */
DMARC_API const char *dmarc_version(void);

/* Requested or applied policy (RFC 9989 §4.7 p/sp/np). */
/* clang-format off */
#define DMARC_POLICY_MAP(X) \
    X(NONE, none) \
    X(QUARANTINE, quarantine) \
    X(REJECT, reject)
/* clang-format on */
typedef enum dmarc_policy {
#define DMARC__ENUM(U, l) DMARC_POLICY_##U,
    DMARC_POLICY_MAP(DMARC__ENUM)
#undef DMARC__ENUM
        DMARC_POLICY__COUNT
} dmarc_policy;

/* DMARC result, the A-R "dmarc=" words [EVAL-2]. */
/* clang-format off */
#define DMARC_RESULT_MAP(X) \
    X(NONE, none) \
    X(PASS, pass) \
    X(FAIL, fail) \
    X(TEMPERROR, temperror) \
    X(PERMERROR, permerror)
/* clang-format on */
typedef enum dmarc_result {
#define DMARC__ENUM(U, l) DMARC_RESULT_##U,
    DMARC_RESULT_MAP(DMARC__ENUM)
#undef DMARC__ENUM
        DMARC_RESULT__COUNT
} dmarc_result;

/* SPF and DKIM results in RFC 8601 §2.7.1/§2.7.2 words [AR-3] [AR-4].
** Only PASS ever yields an authenticated identifier [ALN-2]. */
/* clang-format off */
#define DMARC_AUTH_MAP(X) \
    X(NONE, none) \
    X(PASS, pass) \
    X(FAIL, fail) \
    X(SOFTFAIL, softfail) \
    X(NEUTRAL, neutral) \
    X(POLICY, policy) \
    X(TEMPERROR, temperror) \
    X(PERMERROR, permerror)
/* clang-format on */
typedef enum dmarc_auth {
#define DMARC__ENUM(U, l) DMARC_AUTH_##U,
    DMARC_AUTH_MAP(DMARC__ENUM)
#undef DMARC__ENUM
        DMARC_AUTH__COUNT
} dmarc_auth;

/* Discovery mode [MODE-1]. */
/* clang-format off */
#define DMARC_MODE_MAP(X) \
    X(RFC9989, rfc9989) \
    X(RFC7489, rfc7489)
/* clang-format on */
typedef enum dmarc_mode {
#define DMARC__ENUM(U, l) DMARC_MODE_##U,
    DMARC_MODE_MAP(DMARC__ENUM)
#undef DMARC__ENUM
        DMARC_MODE__COUNT
} dmarc_mode;

/* Alignment mode of adkim/aspf, and the alignment an identifier achieved. */
/* clang-format off */
#define DMARC_ALIGN_MAP(X) \
    X(NONE, none) \
    X(RELAXED, relaxed) \
    X(STRICT, strict)
/* clang-format on */
typedef enum dmarc_align {
#define DMARC__ENUM(U, l) DMARC_ALIGN_##U,
    DMARC_ALIGN_MAP(DMARC__ENUM)
#undef DMARC__ENUM
        DMARC_ALIGN__COUNT
} dmarc_align;

/* psd= tag (RFC 9989 §4.7). */
/* clang-format off */
#define DMARC_PSD_MAP(X) \
    X(U, u) \
    X(Y, y) \
    X(N, n)
/* clang-format on */
typedef enum dmarc_psd {
#define DMARC__ENUM(U, l) DMARC_PSD_##U,
    DMARC_PSD_MAP(DMARC__ENUM)
#undef DMARC__ENUM
        DMARC_PSD__COUNT
} dmarc_psd;

/* Why the applied policy differs from the requested one (RFC 9990 reason
** types produced by the core; site overrides add their own in Lua), or,
** for the last four, which bound left part of the message unevaluated: what
** was not evaluated counts as failing at reject [OPEN-5], so the message
** verdict is fail whatever the evaluated domains gave. These four are not
** RFC 9990 reason types and never go into a report. */
/* clang-format off */
#define DMARC_REASON_MAP(X) \
    X(NONE, none) \
    X(POLICY_TEST_MODE, policy_test_mode) \
    X(SAMPLED_OUT, sampled_out) \
    X(TOO_MANY_DOMAINS, too_many_domains) /* over options.max_author_domains */ \
    X(TOO_MANY_MAILBOXES, too_many_mailboxes) /* DMARC_FROM_MAX_MAILBOXES */ \
    X(TOO_MANY_FROM_FIELDS, too_many_from_fields) /* DMARC_FROM_MAX_FIELDS */ \
    X(QUERY_LIMIT, query_limit) /* DMARC_EVAL_MAX_QUERIES */
/* clang-format on */
typedef enum dmarc_reason {
#define DMARC__ENUM(U, l) DMARC_REASON_##U,
    DMARC_REASON_MAP(DMARC__ENUM)
#undef DMARC__ENUM
        DMARC_REASON__COUNT
} dmarc_reason;

/* The DNS answer kinds; all stay distinct [DISC-4] [DISC-10] [DISC-12]. */
/* clang-format off */
#define DMARC_RCODE_MAP(X) \
    X(NOERROR, noerror) \
    X(NODATA, nodata) \
    X(NXDOMAIN, nxdomain) \
    X(SERVFAIL, servfail) \
    X(TIMEOUT, timeout)
/* clang-format on */
typedef enum dmarc_rcode {
#define DMARC__ENUM(U, l) DMARC_RCODE_##U,
    DMARC_RCODE_MAP(DMARC__ENUM)
#undef DMARC__ENUM
        DMARC_RCODE__COUNT
} dmarc_rcode;

/* Query types the engine asks for: TXT for records, A/AAAA/MX for the
** existence test behind np [DISC-12]. */
/* clang-format off */
#define DMARC_QTYPE_MAP(X) \
    X(TXT, TXT, 16) \
    X(A, A, 1) \
    X(AAAA, AAAA, 28) \
    X(MX, MX, 15)
/* clang-format on */
typedef enum dmarc_qtype {
#define DMARC__ENUM(U, s, n) DMARC_QTYPE_##U = n,
    DMARC_QTYPE_MAP(DMARC__ENUM)
#undef DMARC__ENUM
} dmarc_qtype;

/* Which tag the requested policy came from [EVAL-6]. */
/* clang-format off */
#define DMARC_POLICY_TAG_MAP(X) \
    X(NONE, none) \
    X(P, p) \
    X(SP, sp) \
    X(NP, np)
/* clang-format on */
typedef enum dmarc_policy_tag {
#define DMARC__ENUM(U, l) DMARC_POLICY_TAG_##U,
    DMARC_POLICY_TAG_MAP(DMARC__ENUM)
#undef DMARC__ENUM
        DMARC_POLICY_TAG__COUNT
} dmarc_policy_tag;

/* Flags of an evaluation [OPEN-5] [FROM-4..6]. Bit values are ABI. */
/* clang-format off */
#define DMARC_FLAG_MAP(X) \
    X(MULTIPLE_FROM, multiple_from, 0) /* two or more From fields */ \
    X(MULTIPLE_DOMAINS, multiple_domains, 1) /* mailboxes with distinct domains */ \
    X(NO_FROM, no_from, 2) /* no From field at all */ \
    X(NO_AUTHOR_DOMAIN, no_author_domain, 3) /* From present, no usable domain */ \
    X(TOO_MANY_DOMAINS, too_many_domains, 4) /* not every domain checked: over DMARC_MAX_AUTHOR_DOMAINS, or mailboxes past DMARC_FROM_MAX_MAILBOXES */ \
    X(FROM_SYNTAX, from_syntax, 5) /* a From field did not parse cleanly */ \
    X(QUERY_LIMIT, query_limit, 6) /* DMARC_EVAL_MAX_QUERIES was hit */ \
    X(PCT_AS_TESTING, pct_as_testing, 7) /* [OPEN-3] mapping was used */ \
    X(FROM_LENIENT, from_lenient, 8) /* a From field that does not parse was read as a mail reader shows it (RFC 9989 §11.5); never a pass */ \
    X(FROM_UNREAD, from_unread, 9) /* a From field that does not parse named no one domain: nothing was read from it (RFC 9989 §11.5) */
/* clang-format on */
enum {
#define DMARC__ENUM(U, l, b) DMARC_FLAG_##U = 1u << (b),
    DMARC_FLAG_MAP(DMARC__ENUM)
#undef DMARC__ENUM
};

/* Diagnostic codes of the parsers. Stable tokens (the Lua `code`). */
/* clang-format off */
#define DMARC_DIAG_MAP(X) \
    X(NONE, none) /* nothing to say */ \
    X(NOT_DMARC, not_dmarc) /* does not start v=DMARC1 [REC-2] */ \
    X(SYNTAX, syntax) /* tag-list syntax error at offset [REC-3] */ \
    X(EMPTY_VALUE, empty_value) /* tag with an empty value [REC-3] */ \
    X(BAD_VALUE, bad_value) /* value not allowed; default used [REC-5] */ \
    X(UNKNOWN_TAG, unknown_tag) /* ignored [REC-4] */ \
    X(TAG_CASE, tag_case) /* known tag in the wrong case, rfc9989 [REC-3] */ \
    X(DUPLICATE_TAG, duplicate_tag) /* record invalid [OPEN-1] */ \
    X(P_NOT_SECOND, p_not_second) /* rfc7489 order [REC-6] */ \
    X(HISTORIC_TAG, historic_tag) /* pct/rf/ri in rfc9989 mode [POL-5] */ \
    X(BAD_URI, bad_uri) /* malformed URI dropped [REC-7] */ \
    X(TOO_MANY_URIS, too_many_uris) /* DMARC_RECORD_MAX_URIS hit */ \
    X(TOO_MANY_TAGS, too_many_tags) /* DMARC_RECORD_MAX_TAGS hit */ \
    X(TOO_LONG, too_long) /* input over its length limit */ \
    X(INVALID_POLICY, invalid_policy) /* bad p/sp/np [EVAL-7] */ \
    X(MISSING_P, missing_p) /* no p tag [EVAL-7] [OPEN-7] */ \
    X(NO_DOMAIN, no_domain) /* a mailbox with no usable domain [FROM-4] */ \
    X(BAD_IDN, bad_idn) /* U-label that does not convert [FROM-3] */ \
    X(BAD_ENCODED_WORD, bad_encoded_word) /* RFC 2047 word left as is */ \
    X(TOO_DEEP, too_deep) /* comment nesting over the limit */ \
    X(TOO_MANY_MAILBOXES, too_many_mailboxes) /* DMARC_FROM_MAX_MAILBOXES hit */
/* clang-format on */
typedef enum dmarc_diag_code {
#define DMARC__ENUM(U, l) DMARC_DIAG_##U,
    DMARC_DIAG_MAP(DMARC__ENUM)
#undef DMARC__ENUM
        DMARC_DIAG__COUNT
} dmarc_diag_code;

/* Lowercase names of enum values ("reject", "temperror", "TXT" ...).
** Static text; NULL for a value out of range. */
DMARC_API const char *dmarc_policy_name(dmarc_policy v);
DMARC_API const char *dmarc_result_name(dmarc_result v);
DMARC_API const char *dmarc_auth_name(dmarc_auth v);
DMARC_API const char *dmarc_mode_name(dmarc_mode v);
DMARC_API const char *dmarc_align_name(dmarc_align v);
DMARC_API const char *dmarc_psd_name(dmarc_psd v);
DMARC_API const char *dmarc_reason_name(dmarc_reason v);
DMARC_API const char *dmarc_rcode_name(dmarc_rcode v);
DMARC_API const char *dmarc_qtype_name(dmarc_qtype v);
DMARC_API const char *dmarc_policy_tag_name(dmarc_policy_tag v);
DMARC_API const char *dmarc_diag_name(dmarc_diag_code v);
/* Name of one flag bit (exactly one bit set), NULL otherwise. */
DMARC_API const char *dmarc_flag_name(unsigned flag);

/* The reverse: parse a name (case-insensitive, pointer + length).
** DMARC_OK and *out set, or DMARC_ERR_INVAL and *out untouched. */
DMARC_API dmarc_status dmarc_policy_from_name(const char *s, size_t len, dmarc_policy *out);
DMARC_API dmarc_status dmarc_auth_from_name(const char *s, size_t len, dmarc_auth *out);
DMARC_API dmarc_status dmarc_mode_from_name(const char *s, size_t len, dmarc_mode *out);
DMARC_API dmarc_status dmarc_rcode_from_name(const char *s, size_t len, dmarc_rcode *out);

/* }==================================================================== */

/* ** {====================================================================
** Allocation. A hook per context, with lua_Alloc's shape: free when nsize
** is 0 (return NULL), otherwise (re)allocate. NULL selects libc.
** ===================================================================== */

typedef void *(*dmarc_alloc_fn)(void *ud, void *ptr, size_t osize, size_t nsize);

typedef struct dmarc_allocator {
    dmarc_alloc_fn fn; /* NULL: libc realloc/free */
    void *ud;          /* passed to fn as is */
} dmarc_allocator;

/* Allocation as the library does it, for code beside the core (adapters)
** that takes a dmarc_allocator from its caller: through @a's hook when it
** has one, libc otherwise (@a NULL or a->fn NULL). @nsize 0 frees @p and
** returns NULL. */
DMARC_API void *dmarc_realloc(const dmarc_allocator *a, void *p, size_t osize, size_t nsize);

/* }==================================================================== */

/* ** {====================================================================
** Diagnostics
** ===================================================================== */

typedef struct dmarc_diag {
    dmarc_diag_code code; /* DMARC_DIAG_NONE when there is nothing to say */
    size_t offset;        /* byte offset into the parsed input */
    char tag[16];         /* tag name involved (truncated, NUL-terminated), or "" */
} dmarc_diag;

/* }==================================================================== */

/* ** {====================================================================
** Policy records (RFC 9989 §4.7, §4.8; RFC 7489 §6.3, §6.4)
** ===================================================================== */

/* One rua/ruf URI [REC-7]. */
typedef struct dmarc_uri {
    const char *uri;   /* the URI without the !size suffix, NUL-terminated */
    size_t len;        /* its length */
    uint64_t max_size; /* RFC 7489 size limit in bytes; 0 = none given */
    bool is_mailto;    /* scheme is mailto (the one receivers MUST support) */
} dmarc_uri;

/* fo= options as bits [FAIL-2]. */
enum { DMARC_FO_0 = 1u << 0, DMARC_FO_1 = 1u << 1, DMARC_FO_D = 1u << 2, DMARC_FO_S = 1u << 3 };

/* A parsed record: a plain read-only view, owned by whoever returned it.
** Effective values have defaults filled in [AGG-8]; `has_*` tells whether
** the tag was present with a valid value. */
typedef struct dmarc_record {
    dmarc_mode mode;            /* the mode it was parsed under */
    bool usable;                /* false: [EVAL-7]/[OPEN-4] no DMARC, permerror */
    bool as_none;               /* [EVAL-7] invalid p/sp/np with valid rua: whole record p=none */
    dmarc_policy p, sp, np;     /* effective (sp inherits p; np inherits sp) */
    bool has_p, has_sp, has_np; /* tag present with a valid value */
    bool bad_p, bad_sp, bad_np; /* tag present with an invalid value */
    dmarc_align adkim, aspf;    /* RELAXED or STRICT; default relaxed */
    bool has_adkim, has_aspf;
    unsigned pct; /* 0..100, default 100 */
    bool has_pct;
    bool testing; /* t=y (RFC 9989) */
    bool has_t;
    dmarc_psd psd; /* default U */
    bool has_psd;
    unsigned fo; /* DMARC_FO_* bits; default DMARC_FO_0 */
    bool has_fo;
    const char *fo_text; /* fo as published (or "0"), NUL-terminated */
    bool rf_afrf;        /* rf includes afrf (default true) */
    bool has_rf;
    uint32_t ri; /* seconds, default 86400 */
    bool has_ri;
    const dmarc_uri *rua; /* valid URIs in order; rua_count may be 0 */
    size_t rua_count;
    const dmarc_uri *ruf;
    size_t ruf_count;
    bool has_rua, has_ruf;      /* tag present (even if every URI was dropped) */
    const dmarc_diag *warnings; /* what the parser noticed, in order */
    size_t warning_count;       /* stored (<= DMARC_RECORD_MAX_WARNINGS) */
    size_t warnings_dropped;    /* beyond the stored ones */
} dmarc_record;

/*
** dmarc_record_parse: parse one TXT RR (its character-strings already
** concatenated with no separator [REC-1]).
** @mode: parsing rules (tag-name case, historic tags, fo syntax).
** @alloc: NULL for libc.
** @txt, @len: borrowed for the call.
** @out: on DMARC_OK, a new record; free with dmarc_record_free.
** @diag: optional; on DMARC_ERR_SYNTAX says why the text is not a record
**        (NOT_DMARC, TOO_LONG); on DMARC_OK it is DMARC_DIAG_NONE for a usable
**        record, else why the record is not usable (DUPLICATE_TAG,
**        INVALID_POLICY, MISSING_P). Untouched on other errors.
** Returns DMARC_OK (the record may still be !usable: check it),
** DMARC_ERR_SYNTAX (not a DMARC record [REC-2]; *out untouched),
** DMARC_ERR_NOMEM, DMARC_ERR_INVAL (NULL out, or txt NULL with len > 0).
*/
DMARC_API dmarc_status dmarc_record_parse(dmarc_mode mode, const dmarc_allocator *alloc,
                                          const char *txt, size_t len, dmarc_record **out,
                                          dmarc_diag *diag);
DMARC_API void dmarc_record_free(dmarc_record *r);

/* True when a TXT RR starts like a DMARC record under @mode [REC-2]
** (the filter of discovery); cheap, allocates nothing. */
DMARC_API bool dmarc_record_is_dmarc(dmarc_mode mode, const char *txt, size_t len);

/* }==================================================================== */

/* ** {====================================================================
** Author Domain extraction (RFC 5322 §3.4 and §3.6.2, RFC 2047, RFC 6532;
** [FROM-1..8])
** ===================================================================== */

typedef struct dmarc_mailbox {
    const char *domain; /* lowercase A-label, no trailing dot; NULL if unusable */
    size_t domain_len;
    const char *local; /* local-part as written (quotes removed), NUL-terminated */
    size_t local_len;
    const char *display; /* display name, RFC 2047 words decoded to UTF-8, or NULL */
    size_t display_len;
    dmarc_diag_code problem; /* why domain is NULL, or NONE */
} dmarc_mailbox;

typedef struct dmarc_from dmarc_from;

/*
** dmarc_from_parse: parse the value of one From header field (after the
** colon, folding allowed) into its mailboxes.
** @alloc: NULL for libc. @raw, @len: borrowed for the call.
** @out: on DMARC_OK a new object, free with dmarc_from_free. An empty
**       mailbox list (group syntax only) is DMARC_OK with count 0.
** @diag: optional; first problem met (also on DMARC_OK, e.g. a bad IDN).
**       On DMARC_OK, SYNTAX or TOO_DEEP means an element that could hold
**       no address was dropped; TOO_MANY_MAILBOXES (reported ahead of any
**       other problem) means mailboxes past the limit went unread. On
**       DMARC_ERR_SYNTAX it is what made the field unusable.
** Returns DMARC_OK, DMARC_ERR_SYNTAX (nothing usable could be read, or an
** unreadable part holds an '@' and might hide an address),
** DMARC_ERR_NOMEM, DMARC_ERR_INVAL.
*/
DMARC_API dmarc_status dmarc_from_parse(const dmarc_allocator *alloc, const char *raw, size_t len,
                                        dmarc_from **out, dmarc_diag *diag);
DMARC_API void dmarc_from_free(dmarc_from *f);
/* Number of mailboxes kept (at most DMARC_FROM_MAX_MAILBOXES). */
DMARC_API size_t dmarc_from_count(const dmarc_from *f);
/* Mailboxes read past DMARC_FROM_MAX_MAILBOXES and left out because they add
** no author domain: no domain, or a domain a kept mailbox already spells the
** same way (up to ASCII case). The bound counts distinct domains [OPEN-5]. */
DMARC_API size_t dmarc_from_skipped(const dmarc_from *f);
/* Mailbox @i, borrowed from @f until dmarc_from_free; NULL if out of range. */
DMARC_API const dmarc_mailbox *dmarc_from_mailbox(const dmarc_from *f, size_t i);

/*
** dmarc_domain_normalize: lowercase, strip one trailing dot, convert
** U-labels to A-labels [FROM-2] [FROM-3], and check the result is a
** syntactically valid host name of at most DMARC_DOMAIN_MAX_LEN.
** @out: buffer of @outsz bytes (DMARC_DOMAIN_MAX_LEN + 1 always suffices);
** on DMARC_OK holds the NUL-terminated result and *outlen its length.
** Returns DMARC_OK, DMARC_ERR_SYNTAX (not a usable domain), DMARC_ERR_INVAL.
*/
DMARC_API dmarc_status dmarc_domain_normalize(const char *in, size_t len, char *out, size_t outsz,
                                              size_t *outlen);

/* }==================================================================== */

/* ** {====================================================================
** DNS answers and the shared answer cache [DISC-11]
** ===================================================================== */

/* One TXT RR, its character-strings concatenated [REC-1]. Borrowed. */
typedef struct dmarc_txt {
    const char *data;
    size_t len;
} dmarc_txt;

typedef struct dmarc_cache dmarc_cache;

/*
** dmarc_cache_new: a TTL-aware cache of DNS answers (positive and negative;
** SERVFAIL and TIMEOUT are never cached), bounded to @max_entries with LRU
** eviction. Share it across any number of evaluations of one thread: a busy
** scanner then asks each name once per TTL. Parsed records are kept with
** their TXT answers (per mode), so a cached policy is not parsed again.
** An entry is live while now < (now when stored) + ttl, `now` being what
** each evaluation was given (dmarc_eval_set_now); TTL 0 is not stored.
** Answers meant for the cache are allocated with @alloc (NULL: libc), so
** they may outlive the evaluation (and context) that asked; an entry an
** evaluation still reads survives its eviction until that evaluation is
** reset or freed. The cache must outlive every evaluation using it.
** In RFC 7489 mode the cache also keeps the PSL callback's answers, keyed by
** (callback, user data, name), for an hour of `now`; after replacing a list
** under the same callback and user data, dmarc_cache_clear applies it at once.
** Returns NULL with *st = DMARC_ERR_NOMEM or DMARC_ERR_INVAL (max_entries 0).
*/
DMARC_API dmarc_cache *dmarc_cache_new(const dmarc_allocator *alloc, size_t max_entries,
                                       dmarc_status *st);
DMARC_API void dmarc_cache_free(dmarc_cache *c);
/* Entries currently held (expired ones included until evicted or looked up). */
DMARC_API size_t dmarc_cache_size(const dmarc_cache *c);
/* Drop every entry. */
DMARC_API void dmarc_cache_clear(dmarc_cache *c);
/* Hits and misses since creation, for monitoring (NULL out-params allowed). */
DMARC_API void dmarc_cache_stats(const dmarc_cache *c, uint64_t *hits, uint64_t *misses);

/*
** The same cache for a DNS layer beside the core. A resolver that answers
** more than DMARC questions (SPF, DKIM keys: adapters/src/dns.c) keeps its
** answers in a dmarc_cache too, so there is one answer cache, one bound and
** one eviction order. Its entries hold a value the cache does not look into
** (the layer's own answer), keyed by (@type, @name) in a space of their own:
** they never answer the core's questions, nor the core's entries theirs.
**
** dmarc_cache_put_value: store @value until @now + @ttl, replacing an entry
** for the same key and evicting the least recently used one when full. The
** cache owns @value from the call on and frees it with @free_value; when it
** is not stored (@ttl 0, out of memory) it is freed at once. Returns
** DMARC_OK, DMARC_ERR_NOMEM or DMARC_ERR_INVAL (name over
** DMARC_DOMAIN_MAX_LEN, type over 0xffff).
**
** dmarc_cache_get_value: the live value for (@type, @name) at @now, or NULL
** (an expired entry is dropped); *ttl_left (optional) gets the seconds left.
** The value is borrowed until the next call that changes the cache. Counts a
** hit or a miss in dmarc_cache_stats.
*/
typedef void (*dmarc_cache_free_fn)(void *value);
DMARC_API dmarc_status dmarc_cache_put_value(dmarc_cache *c, unsigned type, const char *name,
                                             size_t len, void *value,
                                             dmarc_cache_free_fn free_value, uint64_t now,
                                             uint32_t ttl);
DMARC_API const void *dmarc_cache_get_value(dmarc_cache *c, unsigned type, const char *name,
                                            size_t len, uint64_t now, uint32_t *ttl_left);

/* A 32-bit hash of @len bytes mixed with @seed: the one the cache keys its
** table with, for other tables keyed by names (a zone's index, XML element
** names). Fast, not cryptographic. */
DMARC_API uint32_t dmarc_hash(uint32_t seed, const void *data, size_t len);

/* }==================================================================== */

/* ** {====================================================================
** Contexts and evaluations
** ===================================================================== */

/*
** Organisational domain through the Public Suffix List (RFC 7489 §3.2),
** needed in DMARC_MODE_RFC7489. Given a normalized domain, set *org_off to
** the offset in @domain where its Org Domain starts, and *is_suffix when
** @domain is itself a public suffix [PSL-1] (then *org_off is 0). Return
** DMARC_OK, or a negative status on failure (the evaluation then gives
** temperror). The libpsl adapter (adapters/src/psl.c) provides one.
*/
typedef dmarc_status (*dmarc_orgdomain_fn)(void *ud, const char *domain, size_t len,
                                           size_t *org_off, bool *is_suffix);

typedef struct dmarc_options {
    dmarc_mode mode;        /* default DMARC_MODE_RFC9989 */
    dmarc_allocator alloc;  /* default libc */
    dmarc_orgdomain_fn psl; /* required in RFC 7489 mode */
    void *psl_ud;           /* passed to psl */
    bool pct_as_testing;    /* [OPEN-3]: rfc9989 pct=0 -> t=y when t absent; default false */
    bool full_org_walk;     /* rfc9989: always find the author's Org Domain (the rest of the walk),
                               even when the result does not need it; for diagnostics. Default
                               false */
    bool failure_org_walk;  /* rfc9989: for a failure whose applied policy is quarantine or
                               reject, find the author's real Org Domain (the rest of the walk)
                               even where discovery stopped at its own record, for whatever acts
                               on it (a site override keyed by organisation). Default false */
    unsigned max_author_domains; /* 1..DMARC_MAX_AUTHOR_DOMAINS, default 8 */
} dmarc_options;

typedef struct dmarc_ctx dmarc_ctx;
typedef struct dmarc_eval dmarc_eval;

/* Fill @o with defaults. */
DMARC_API void dmarc_options_init(dmarc_options *o);

/* A context: immutable configuration, shareable. @o is copied.
** NULL with *st = DMARC_ERR_INVAL (bad option, e.g. rfc7489 without psl)
** or DMARC_ERR_NOMEM. */
DMARC_API dmarc_ctx *dmarc_ctx_new(const dmarc_options *o, dmarc_status *st);
DMARC_API void dmarc_ctx_free(dmarc_ctx *c);
DMARC_API dmarc_mode dmarc_ctx_mode(const dmarc_ctx *c);

/*
** dmarc_eval_new: one message's evaluation. @c must outlive it. @cache is
** optional (NULL: answers are remembered for this evaluation only) and
** must outlive it too. NULL with *st on failure (DMARC_ERR_INVAL for a
** NULL @c, DMARC_ERR_NOMEM). Memory comes from the context's allocator;
** a typical message needs no allocation beyond the answers it stores.
*/
DMARC_API dmarc_eval *dmarc_eval_new(const dmarc_ctx *c, dmarc_cache *cache, dmarc_status *st);
DMARC_API void dmarc_eval_free(dmarc_eval *e);
/* Back to the freshly created state (roll and now back to 0), keeping
** allocations for reuse. Outputs of the previous message become invalid. */
DMARC_API void dmarc_eval_reset(dmarc_eval *e);

/* --- Inputs: allowed before the first dmarc_eval_run, else DMARC_ERR_STATE.
** On DMARC_ERR_NOMEM an input call changes nothing and may be repeated. */

/* One From header field's raw value; call once per From field present.
** Parse problems are flagged, not fatal: DMARC_OK unless NOMEM/INVAL/LIMIT
** (more than DMARC_FROM_MAX_FIELDS fields: flagged, and counted as failing
** [OPEN-5]). A field that does not parse strictly (flag from_syntax) is read
** as a mail reader would show it when that names one domain unambiguously
** (RFC 9989 §11.5): the domain is evaluated, flagged from_lenient, and the
** message can then be a failure at best, never a pass. When nothing can be
** read the field adds no domain, flagged from_unread (and no_author_domain
** if no field gave one). */
DMARC_API dmarc_status dmarc_eval_add_from(dmarc_eval *e, const char *raw, size_t len);
/* An Author Domain given directly (a scanner that parsed From itself);
** normalized [FROM-2] [FROM-3]. DMARC_ERR_SYNTAX if unusable. */
DMARC_API dmarc_status dmarc_eval_add_author_domain(dmarc_eval *e, const char *dom, size_t len);
/* SPF result for @dom (MAIL FROM domain, or HELO for a null reverse-path
** with @is_helo true) [ALN-1]. Only a MAIL FROM result, or a HELO one when
** no MAIL FROM result was given, is used for alignment. One result per
** scope (DMARC_MAX_SPF): a second gives DMARC_ERR_LIMIT. A domain that
** does not normalize is kept and never aligns. DMARC_ERR_INVAL for a bad
** @result or NULL @dom with @len > 0. */
DMARC_API dmarc_status dmarc_eval_add_spf(dmarc_eval *e, const char *dom, size_t len,
                                          dmarc_auth result, bool is_helo);
/* One DKIM signature's result (d= and s=); every one, up to DMARC_MAX_DKIM
** (then DMARC_ERR_LIMIT, ignored). A d= that does not normalize is kept (so
** indexes stay those of the input) and never aligns. The selector plays no
** part in the verdict. */
DMARC_API dmarc_status dmarc_eval_add_dkim(dmarc_eval *e, const char *dom, size_t len,
                                           const char *selector, size_t sel_len, dmarc_auth result);
/* pct sampling roll 0..99 [POL-6]: the policy applies iff roll < pct. The
** core has no random source: callers wanting sampling must supply a random
** roll. Default 0 (every failing message sampled unless pct=0).
** DMARC_ERR_INVAL for roll > 99. */
DMARC_API dmarc_status dmarc_eval_set_roll(dmarc_eval *e, unsigned roll);
/* Current time (seconds, any epoch, monotonic enough) for cache expiry.
** Default 0. Without a cache it does nothing. */
DMARC_API dmarc_status dmarc_eval_set_now(dmarc_eval *e, uint64_t now);

/* --- The query loop (hiredis's reader turned around). */

/*
** dmarc_eval_run: advance. DMARC_OK: the verdict is ready (and stays so:
** run again returns DMARC_OK). DMARC_NEED_DNS: read the question with
** dmarc_eval_query, answer it with dmarc_eval_answer, call run again.
** Negative: NOMEM (the evaluation is as before the call; run may simply be
** called again once memory frees up) or STATE (run again without
** answering). Within one evaluation no question is asked twice; answers in
** the cache (not expired at `now`) are used without asking. Discovery,
** alignment and the existence test ask in a fixed order, so the sequence of
** questions depends only on the inputs and the answers.
*/
DMARC_API dmarc_status dmarc_eval_run(dmarc_eval *e);
/* The pending question: name (borrowed until the answer) and type.
** NULL when nothing is pending. */
DMARC_API const char *dmarc_eval_query(const dmarc_eval *e, size_t *len, dmarc_qtype *type);
/*
** dmarc_eval_answer: the answer to the pending question. @rc NOERROR with
** @n TXT RRs (for a non-TXT question only the rcode matters: NOERROR with
** any data means the name exists). NOERROR with n == 0 is NODATA. @ttl is
** the cache lifetime in seconds (the record TTL, or the SOA minimum for a
** negative answer [DISC-11]); ignored without a cache. Data is copied; RRs
** beyond DMARC_ANSWER_MAX_RRS are ignored. DMARC_ERR_STATE when nothing is
** pending; DMARC_ERR_INVAL for a bad @rc, @txt NULL with @n > 0, or an RR
** with NULL data and len > 0; DMARC_ERR_NOMEM leaves the question pending
** (answer it again).
*/
DMARC_API dmarc_status dmarc_eval_answer(dmarc_eval *e, dmarc_rcode rc, const dmarc_txt *txt,
                                         size_t n, uint32_t ttl);

/* --- Outputs: valid after dmarc_eval_run returned DMARC_OK, until
** dmarc_eval_reset or dmarc_eval_free (else DMARC_ERR_STATE). Strings are
** borrowed from @e.
**
** Results: pass, fail, none (no record, several records in rfc7489 mode,
** no From or no author domain), temperror (a needed query failed, the PSL
** callback failed, the query limit, or an SPF/DKIM temperror that could
** have aligned [EVAL-3]), permerror (the record that applies is unusable
** [EVAL-7] [OPEN-4]). Policy is applied only to a failure: for any other
** result `applied` is DMARC_POLICY_NONE, meaning "not applied". */

typedef struct dmarc_verdict {
    dmarc_result result;
    const char *author_domain;   /* A-label, or NULL */
    const char *policy_domain;   /* where the applied record was found (for permerror:
                                    the unusable one), or NULL */
    const char *org_domain;      /* of the author domain, as far as the evaluation
                                    determined it: what a tree walk (rfc9989) or the PSL
                                    (rfc7489) found. NULL if not determined: in rfc9989
                                    mode a walk that stopped at the author's own record
                                    (psd=u) has not found it (RFC 9989 §4.10), and the
                                    author domain is never reported in its place; see
                                    options.full_org_walk and failure_org_walk */
    bool has_policy;             /* a usable record applies: policy is meaningful */
    dmarc_policy policy;         /* requested: p for the author's own record; else sp,
                                    or np when a failure's existence test found the
                                    author domain non-existent [EVAL-6] */
    dmarc_policy_tag policy_tag; /* which tag gave it */
    dmarc_policy applied;        /* after t= or pct [POL-4] [POL-6]; NONE unless fail */
    dmarc_reason reason;         /* why applied differs */
    bool spf_aligned;            /* an SPF pass was shown aligned [EVAL-1] */
    bool dkim_aligned;           /* a DKIM pass was shown aligned. Exact matches are
                                    always checked; relaxed ones (which need DNS) stop
                                    at the first aligned pass [DISC-10], so false may
                                    also mean "not checked" */
    bool testing;                /* t=y was in force */
    bool author_exists;          /* false only when the existence test said NXDOMAIN */
    const dmarc_record *record;  /* the applied record, or NULL */
    const char *error;           /* why temperror/permerror, static text, or NULL;
                                    for logs, not to be compared */
} dmarc_verdict;

/* Overall verdict (for several author domains: the deciding one [OPEN-5]). */
DMARC_API dmarc_status dmarc_eval_verdict(const dmarc_eval *e, dmarc_verdict *out);
/* DMARC_FLAG_* bits (before the verdict: those the inputs raised). */
DMARC_API unsigned dmarc_eval_flags(const dmarc_eval *e);
/* Per author domain verdicts, in the order the domains were met (at most
** options.max_author_domains; a pass stays a pass here even when the
** message verdict was turned into a failure [OPEN-5]). */
DMARC_API size_t dmarc_eval_domain_count(const dmarc_eval *e);
DMARC_API dmarc_status dmarc_eval_domain_verdict(const dmarc_eval *e, size_t i, dmarc_verdict *out);
/* Alignment the i-th DKIM result (in input order) achieved against the
** deciding author domain: NONE, RELAXED (org domains match) or STRICT
** (exact). Only a pass counts as aligned; for reports [AGG-6]. NONE also
** for a relaxed candidate left unchecked after an aligned pass. */
DMARC_API dmarc_align dmarc_eval_dkim_alignment(const dmarc_eval *e, size_t i);
DMARC_API dmarc_align dmarc_eval_spf_alignment(const dmarc_eval *e);
/* Every question handed to the caller and answered, in order (cache hits
** excluded). Names are borrowed from @e; NULL when @i is out of range. */
DMARC_API size_t dmarc_eval_query_count(const dmarc_eval *e);
DMARC_API const char *dmarc_eval_query_at(const dmarc_eval *e, size_t i, size_t *len,
                                          dmarc_qtype *type);

/* }==================================================================== */

#ifdef __cplusplus
}
#endif

#endif /* DMARC_H */
