/*
** DKIM (RFC 6376, RFC 8463 Ed25519) through libopendkim, verifying every
** signature of a message (up to DMARC_DKIM_MAX_VERIFY) with key lookups
** through the project's DNS layer (dmarc_dns.h): a key lookup callback
** writes the TXT text of <selector>._domainkey.<domain>, so SERVFAIL and
** timeouts stay temperror for that signature, NXDOMAIN/NODATA permerror.
** Per signature: d=, s=, the RFC 8601 result word, a reason, the algorithm
** [EVAL-5].
*/
#ifndef DMARC_DKIM_H
#define DMARC_DKIM_H

#include "dmarc_dns.h"

/* Signatures verified per message; the ones after it are skipped before
** any key lookup (dkim_set_prescreen + dkim_sig_ignore) and reported
** neutral. Each costs a DNS query and ~0.2-0.3 ms of crypto. */
#define DMARC_DKIM_MAX_VERIFY 8
/* Signatures reported per message (the DMARC core takes DMARC_MAX_DKIM). */
#define DMARC_DKIM_MAX_REPORTED 32
/* Header fields fed to the verifier; a message with more is refused. */
#define DMARC_DKIM_MAX_HEADERS 1000
/* Bytes of one header field (folded lines included); longer is refused. */
#define DMARC_DKIM_MAX_HEADER_BYTES (64u * 1024u)

typedef struct dmarc_dkim dmarc_dkim;

/* A verifier asking through @dns (borrowed: it must outlive the
** verifier). NULL with *st on failure. */
DMARC_API dmarc_dkim *dmarc_dkim_new(dmarc_dns *dns, dmarc_status *st);
DMARC_API void dmarc_dkim_free(dmarc_dkim *k);

typedef struct dmarc_dkim_sig {
    dmarc_auth result;                       /* RFC 8601 §2.7.1 word [AR-3] */
    char domain[DMARC_DOMAIN_MAX_LEN + 1];   /* d= (lowercase), or "" */
    char selector[DMARC_DOMAIN_MAX_LEN + 1]; /* s=, or "" */
    char algorithm[24];                      /* a= ("rsa-sha256", "ed25519-sha256"...) */
    char b[12];                              /* first 8 characters of b= (RFC 6008 header.b) */
    char reason[160];                        /* why, for people */
    unsigned key_bits;                       /* size of the key used, 0 if none */
    bool verified;                           /* false: skipped over the cap */
    bool body_truncated;                     /* l= left some of the body unsigned */
    bool unsigned_from;                      /* the message has more From fields than
                                                the signature signed (RFC 6376 §8.15) */
} dmarc_dkim_sig;

typedef struct dmarc_dkim_result {
    size_t total; /* DKIM-Signature fields in the message */
    size_t count; /* reported in sigs (<= DMARC_DKIM_MAX_REPORTED) */
    dmarc_dkim_sig sigs[DMARC_DKIM_MAX_REPORTED];
} dmarc_dkim_result;

/*
** dmarc_dkim_verify: verify every DKIM signature of the RFC 5322 message
** @msg (@len bytes; CRLF or bare LF line ends; a leading mbox "From " line
** is skipped). Returns DMARC_OK with *out filled (count 0: unsigned),
** DMARC_ERR_SYNTAX (not a message: a header line without a colon, a
** continuation line first), DMARC_ERR_LIMIT (over DMARC_DKIM_MAX_HEADERS or
** DMARC_DKIM_MAX_HEADER_BYTES), DMARC_ERR_NOMEM, DMARC_ERR_INVAL.
*/
DMARC_API dmarc_status dmarc_dkim_verify(dmarc_dkim *k, const char *msg, size_t len,
                                         dmarc_dkim_result *out);

#endif /* DMARC_DKIM_H */
