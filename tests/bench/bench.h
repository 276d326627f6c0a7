/*
** Shared parts of the benchmark (tests/bench): the timing loop, the message
** scenarios, and the interface of the libopendmarc peer. The peer lives in
** its own translation unit (opendmarc_peer.c) because <opendmarc/dmarc.h>
** uses the same include guard as our dmarc.h and defines DMARC_POLICY_*
** macros that clash with our enumerations.
*/
#ifndef BENCH_H
#define BENCH_H

#include <stdbool.h>
#include <stddef.h>

/* The record of the perf.md libopendmarc measurements. */
#define BENCH_RECORD                                                                               \
    "v=DMARC1; p=reject; sp=quarantine; adkim=r; aspf=r; pct=100; fo=1; ri=86400; "                \
    "rua=mailto:dmarc-rua@example.co.uk,mailto:dmarc@reports.example.net; "                        \
    "ruf=mailto:dmarc-ruf@example.co.uk"
#define BENCH_RECORD_SHORT "v=DMARC1; p=none"
/* Where BENCH_RECORD is published. */
#define BENCH_POLICY_DOMAIN "example.com"

/* What a message should come to, in both libraries' terms. */
enum bench_verdict {
    BENCH_PASS,
    BENCH_NONE,
    BENCH_QUARANTINE,
    BENCH_REJECT,
    BENCH_OTHER /* anything else: a broken run */
};

/* One message of the mix (perf.md section 2). */
struct bench_scenario {
    const char *name;
    const char *from; /* Author Domain */
    const char *org;  /* Org Domain holding the record when it is not `from`, else NULL */
    const char *spf_domain;
    bool spf_pass; /* else fail */
    const char *dkim_domain;
    bool dkim_pass; /* else fail */
    enum bench_verdict expect;
};

#define BENCH_SCENARIOS 5
extern const struct bench_scenario bench_scenarios[BENCH_SCENARIOS];

/* ---- the libopendmarc peer (opendmarc_peer.c) */

/* Load the PSL file into libopendmarc and prepare the scenarios' strings
** with @record as every scenario's record; 0 on success. */
int peer_init(const char *psl_file, const char *record);
void peer_shutdown(void);
/* opendmarc_policy_parse_dmarc of @record @iters times, each followed by
** connect_rset to free what the parse allocated; the number of failures. */
long peer_parse_loop(const char *record, size_t iters);
/* One full message cycle of bench_scenarios[@scenario]: connect_init,
** store_from_domain, store_dmarc, store_spf, store_dkim,
** get_policy_to_enforce, connect_shutdown. */
enum bench_verdict peer_cycle(size_t scenario);
/* The same with one context kept and connect_rset between messages. */
enum bench_verdict peer_cycle_reused(size_t scenario);

#endif /* BENCH_H */
