/*
** A zone-file resolver backend: an RFC 1035 §5 master-file subset, for
** offline use, the bundled example and tests.
**
** Understood: $ORIGIN, $TTL (seconds, or with s/m/h/d/w units), owner names
** (absolute, relative to the origin, `@`, blank = the previous owner, `*`
** wildcards per RFC 4592), TTL and class IN in either order, comments,
** parentheses continuation, quoted strings with \" \\ and \DDD escapes.
** Types: A, AAAA, TXT (several character-strings, concatenated when asked
** [REC-1]), MX, CNAME, PTR, NS, SOA (whose minimum bounds negative answers,
** RFC 2308 §5).
**
** The zone is the whole namespace the backend knows: a name that owns no
** record and has no descendant is NXDOMAIN; an empty non-terminal, or a
** name without data of the asked type, is NODATA (RFC 8020) [DISC-12].
*/
#ifndef DMARC_ZONE_H
#define DMARC_ZONE_H

#include "dmarc_dns.h"

/* Records per zone. */
#define DMARC_ZONE_MAX_RECORDS 100000
/* Bytes of zone text accepted (a file over this is refused). */
#define DMARC_ZONE_MAX_BYTES (64u * 1024u * 1024u)
/* Tokens in one record (a 64 KiB TXT RR is at most 257 strings). */
#define DMARC_ZONE_MAX_TOKENS 300
/* Bytes of one record's text after unescaping. */
#define DMARC_ZONE_MAX_RECORD_BYTES 70000u
/* TTL used when neither the record nor $TTL gives one (RFC 1035 leaves it
** to the previous record; the first record needs something). */
#define DMARC_ZONE_DEFAULT_TTL 3600u

typedef struct dmarc_zone dmarc_zone;

typedef struct dmarc_zone_error {
    const char *code;  /* stable token: "syntax", "io", "limit", "nomem", "inval" */
    size_t line;       /* 1-based line of the problem, 0 if none */
    char message[160]; /* what went wrong, for people */
} dmarc_zone_error;

/*
** dmarc_zone_parse: parse zone text. @origin is the initial $ORIGIN (NULL
** or "." for the root). @alloc: NULL for libc. On DMARC_OK *out is a new
** zone (dmarc_zone_free). Otherwise *out is untouched and @err (optional)
** says where and why: DMARC_ERR_SYNTAX, DMARC_ERR_LIMIT, DMARC_ERR_NOMEM,
** DMARC_ERR_INVAL.
*/
DMARC_API dmarc_status dmarc_zone_parse(const dmarc_allocator *alloc, const char *text, size_t len,
                                        const char *origin, dmarc_zone **out,
                                        dmarc_zone_error *err);
/* The same for a file (read whole; DMARC_ERR_INVAL with code "io" when it
** cannot be read). */
DMARC_API dmarc_status dmarc_zone_load(const dmarc_allocator *alloc, const char *path,
                                       const char *origin, dmarc_zone **out, dmarc_zone_error *err);
DMARC_API void dmarc_zone_free(dmarc_zone *z);
DMARC_API size_t dmarc_zone_record_count(const dmarc_zone *z);

/* Answer (@name, @type) from the zone; @name normalised as by
** dmarc_dns_name_normalize. A CNAME at the name is returned as a pending
** link (answer->cname) unless CNAME itself is asked. */
DMARC_API dmarc_status dmarc_zone_lookup(const dmarc_zone *z, const char *name, size_t len,
                                         unsigned type, dmarc_dns_answer **out);

/* A backend for dmarc_dns_new that owns @z (freed with the resolver). */
DMARC_API dmarc_dns_backend dmarc_zone_backend(dmarc_zone *z);

#endif /* DMARC_ZONE_H */
