/*
** SPF (RFC 7208) through libspf2, with every DNS question going through the
** project's DNS layer (dmarc_dns.h): a custom SPF_dns_server_t layer
** answers libspf2's lookups, and fetches SPF records itself so that record
** selection and the RFC 7208 §4.6.4 limits are enforced exactly:
** at most 10 DNS-querying terms over the whole evaluation (includes
** included) and at most 2 void lookups, either excess giving permerror.
*/
#ifndef DMARC_SPF_H
#define DMARC_SPF_H

#include "dmarc_dns.h"

/* RFC 7208 §4.6.4: terms that cause DNS queries (include, a, mx, ptr,
** exists, redirect) per check_host() evaluation. */
#define DMARC_SPF_MAX_DNS_TERMS 10
/* RFC 7208 §4.6.4: lookups answering NXDOMAIN or NODATA ("void"). */
#define DMARC_SPF_MAX_VOID_LOOKUPS 2
/* RFC 7208 §4.6.4: address lookups for one mx, and names checked for one
** ptr. */
#define DMARC_SPF_MAX_MX_NAMES 10
#define DMARC_SPF_MAX_PTR_NAMES 10

typedef struct dmarc_spf dmarc_spf;

/* A checker asking through @dns (borrowed: it must outlive the checker).
** @receiver is the receiving host's name for the %{r} macro (RFC 7208
** §7.3); NULL gives "unknown". NULL with *st on failure. */
DMARC_API dmarc_spf *dmarc_spf_new(dmarc_dns *dns, const char *receiver, dmarc_status *st);
DMARC_API void dmarc_spf_free(dmarc_spf *s);

typedef struct dmarc_spf_result {
    dmarc_auth result;                     /* RFC 8601 §2.7.2 word [AR-4] */
    char domain[DMARC_DOMAIN_MAX_LEN + 1]; /* the identity's domain checked, or "" */
    bool is_helo;                          /* the HELO identity was checked [ALN-1] */
    char reason[256];                      /* why, for people */
    unsigned dns_terms;                    /* DNS-querying terms evaluated */
    unsigned void_lookups;                 /* of which answered NXDOMAIN/NODATA */
} dmarc_spf_result;

/*
** dmarc_spf_check: check_host() for one identity of a message from @ip
** (IPv4 or IPv6 text). With @helo_identity false, the MAIL FROM identity:
** @mail_from is "local@domain" (angle brackets allowed); NULL, "" or "<>"
** is the null reverse-path, whose identity is postmaster@<HELO> (RFC 7208
** §2.4) and the result then has is_helo set [ALN-1]. With @helo_identity
** true, the HELO identity (RFC 7208 §2.3). Returns DMARC_OK with *out
** filled (the SPF outcome is in out->result, errors included);
** DMARC_ERR_INVAL for a bad @ip or missing arguments; DMARC_ERR_NOMEM.
*/
DMARC_API dmarc_status dmarc_spf_check(dmarc_spf *s, const char *ip, const char *helo,
                                       const char *mail_from, bool helo_identity,
                                       dmarc_spf_result *out);

#endif /* DMARC_SPF_H */
