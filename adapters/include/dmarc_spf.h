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

/*
** Sans-I/O checking, for hosts with their own asynchronous resolver
** (rspamd): a checker made with dmarc_spf_new_offline answers libspf2's
** questions from an answer table the caller fills. A question the table
** cannot answer is recorded and stops the evaluation cleanly: the result
** has `pending` set (and says temperror, which the caller must not use).
** The caller fetches the recorded questions (dmarc_spf_question_at), adds
** the answers (dmarc_spf_add_answer) and checks again; each round gets at
** least one question further, so DMARC_SPF_MAX_ROUNDS bounds the rounds.
** When an mx or ptr term's names are known, the addresses of all of them
** (at most DMARC_SPF_MAX_MX_NAMES, §4.6.4) are asked in one round.
*/
/* Questions one round can record: a term, then the addresses of up to
** DMARC_SPF_MAX_MX_NAMES names. */
#define DMARC_SPF_MAX_QUESTIONS 16
/* Answers one table holds: the record, 10 terms, the addresses of up to
** 10 names for each mx or ptr term, with room for the %{p} macro's. */
#define DMARC_SPF_MAX_ANSWERS 160
/* Rounds one check can need: the identity's record, then per DNS-querying
** term its own question and the addresses of its names, then the %{p}
** macro's PTR and addresses. A driver stops there (temperror). */
#define DMARC_SPF_MAX_ROUNDS (1 + 2 * DMARC_SPF_MAX_DNS_TERMS + 2)

typedef struct dmarc_spf dmarc_spf;

/* One DNS question of an offline check. */
typedef struct dmarc_spf_question {
    unsigned type;                       /* DMARC_DNS_T_TXT, _A, _AAAA, _MX, _PTR */
    char name[DMARC_DOMAIN_MAX_LEN + 1]; /* lowercase, no trailing dot */
} dmarc_spf_question;

/* A checker asking through @dns (borrowed: it must outlive the checker).
** @receiver is the receiving host's name for the %{r} macro (RFC 7208
** §7.3); NULL gives "unknown". NULL with *st on failure. */
DMARC_API dmarc_spf *dmarc_spf_new(dmarc_dns *dns, const char *receiver, dmarc_status *st);
/* A checker that asks nothing: it answers from its own answer table (see
** above). NULL with *st on failure. */
DMARC_API dmarc_spf *dmarc_spf_new_offline(const char *receiver, dmarc_status *st);
DMARC_API void dmarc_spf_free(dmarc_spf *s);

/*
** dmarc_spf_add_answer: the answer to (@name, @type) for the offline
** table; a later answer to the same question replaces it. @rrs as in
** dmarc_dns_rr (A/AAAA: 4/16 address bytes; MX, PTR: the name; TXT: the
** strings joined [REC-1]); @rcode NOERROR with no RRs is NODATA. Returns
** DMARC_OK; DMARC_ERR_INVAL (not an offline checker, bad arguments);
** DMARC_ERR_SYNTAX (no such name can exist); DMARC_ERR_LIMIT (beyond
** DMARC_SPF_MAX_ANSWERS); DMARC_ERR_NOMEM.
*/
DMARC_API dmarc_status dmarc_spf_add_answer(dmarc_spf *s, const char *name, size_t len,
                                            unsigned type, dmarc_rcode rcode,
                                            const dmarc_dns_rr *rrs, size_t count);
/* Forget every answer (the checker is then ready for another message). */
DMARC_API void dmarc_spf_clear_answers(dmarc_spf *s);
/* The questions the last dmarc_spf_check recorded (0 unless it is pending),
** in the order asked; NULL when @i is out of range. */
DMARC_API size_t dmarc_spf_question_count(const dmarc_spf *s);
DMARC_API const dmarc_spf_question *dmarc_spf_question_at(const dmarc_spf *s, size_t i);

/* The SPF record of the identity domain the last dmarc_spf_check evaluated:
** the one "v=spf1" TXT record found there, its strings joined without a
** separator (RFC 7208 §3.3), as reports quote it (SPF-DNS, RFC 6591 §3.2).
** NULL when that check found no single record (none, several, a DNS
** failure) or did not get as far. Owned by the checker, valid until its
** next check or dmarc_spf_free. */
DMARC_API const char *dmarc_spf_record(const dmarc_spf *s);

typedef struct dmarc_spf_result {
    dmarc_auth result;                     /* RFC 8601 §2.7.2 word [AR-4] */
    char domain[DMARC_DOMAIN_MAX_LEN + 1]; /* the identity's domain checked, or "" */
    bool is_helo;                          /* the HELO identity was checked [ALN-1] */
    char reason[256];                      /* why, for people */
    unsigned dns_terms;                    /* DNS-querying terms evaluated */
    unsigned void_lookups;                 /* of which answered NXDOMAIN/NODATA */
    bool pending;                          /* offline: stopped for answers the table does not have
                                              (dmarc_spf_question_at); the result is not final */
} dmarc_spf_result;

/*
** dmarc_spf_check: check_host() for one identity of a message from @ip
** (IPv4 or IPv6 text). With @helo_identity false, the MAIL FROM identity:
** @mail_from is "local@domain" (angle brackets allowed); NULL, "" or "<>"
** is the null reverse-path, whose identity is postmaster@<HELO> (RFC 7208
** §2.4) and the result then has is_helo set [ALN-1]. With @helo_identity
** true, the HELO identity (RFC 7208 §2.3). Returns DMARC_OK with *out
** filled (the SPF outcome is in out->result, errors included; for an
** offline checker out->pending says the outcome is not final yet);
** DMARC_ERR_INVAL for a bad @ip or missing arguments; DMARC_ERR_NOMEM.
*/
DMARC_API dmarc_status dmarc_spf_check(dmarc_spf *s, const char *ip, const char *helo,
                                       const char *mail_from, bool helo_identity,
                                       dmarc_spf_result *out);

#endif /* DMARC_SPF_H */
