/*
** The libopendmarc side of the benchmark, kept apart from our headers (see
** bench.h). libopendmarc takes non-const `u_char *` everywhere, so every
** string goes through a writable copy made once at start-up.
*/
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <opendmarc/dmarc.h>

#include "bench.h"

/* Longest string handed to libopendmarc (records and domains). */
#define PEER_MAX_TEXT 512

static OPENDMARC_LIB_T peer_lib;
static DMARC_POLICY_T *peer_reused_ctx;
static u_char peer_ip[] = "198.51.100.7";
static u_char peer_selector[] = "sel1";

/* Writable copies of one scenario's strings, made once by peer_init so the
** timed loops measure libopendmarc only. */
static struct peer_strings {
    u_char record[PEER_MAX_TEXT], from[PEER_MAX_TEXT], org[PEER_MAX_TEXT];
    u_char spf[PEER_MAX_TEXT], dkim[PEER_MAX_TEXT];
} peer_text[BENCH_SCENARIOS];

/* A writable copy of @s in @buf; the benchmark strings are short. */
static u_char *writable(u_char *buf, const char *s)
{
    size_t n = strlen(s);
    if (n >= PEER_MAX_TEXT) {
        fprintf(stderr, "bench: string too long for the peer: %s\n", s);
        exit(1);
    }
    memcpy(buf, s, n + 1);
    return buf;
}

int peer_init(const char *psl_file, const char *record)
{
    size_t i;

    for (i = 0; i < BENCH_SCENARIOS; i++) {
        const struct bench_scenario *s = &bench_scenarios[i];
        writable(peer_text[i].record, record);
        writable(peer_text[i].from, s->from);
        writable(peer_text[i].org, s->org != NULL ? s->org : "");
        writable(peer_text[i].spf, s->spf_domain);
        writable(peer_text[i].dkim, s->dkim_domain);
    }
    memset(&peer_lib, 0, sizeof(peer_lib));
    peer_lib.tld_type = OPENDMARC_TLD_TYPE_MOZILLA;
    if (strlen(psl_file) >= sizeof(peer_lib.tld_source_file))
        return -1;
    memcpy(peer_lib.tld_source_file, psl_file, strlen(psl_file) + 1);
    if (opendmarc_policy_library_init(&peer_lib) != DMARC_PARSE_OKAY)
        return -1;
    peer_reused_ctx = opendmarc_policy_connect_init(peer_ip, DMARC_POLICY_IP_TYPE_IPV4);
    return peer_reused_ctx == NULL ? -1 : 0;
}

void peer_shutdown(void)
{
    if (peer_reused_ctx != NULL)
        opendmarc_policy_connect_shutdown(peer_reused_ctx);
    peer_reused_ctx = NULL;
    opendmarc_policy_library_shutdown(&peer_lib);
}

long peer_parse_loop(const char *record, size_t iters)
{
    u_char rec[PEER_MAX_TEXT], dom[PEER_MAX_TEXT];
    long failures = 0;
    size_t i;

    writable(rec, record);
    writable(dom, BENCH_POLICY_DOMAIN);
    for (i = 0; i < iters; i++) {
        if (opendmarc_policy_parse_dmarc(peer_reused_ctx, dom, rec) != DMARC_PARSE_OKAY)
            failures++;
        /* The parse appends to the context's rua/ruf lists: release them,
        ** as our side frees its record. */
        opendmarc_policy_connect_rset(peer_reused_ctx);
    }
    return failures;
}

static enum bench_verdict peer_verdict(int policy)
{
    switch (policy) {
    case DMARC_POLICY_PASS:
        return BENCH_PASS;
    case DMARC_POLICY_NONE:
        return BENCH_NONE;
    case DMARC_POLICY_QUARANTINE:
        return BENCH_QUARANTINE;
    case DMARC_POLICY_REJECT:
        return BENCH_REJECT;
    default:
        return BENCH_OTHER;
    }
}

static enum bench_verdict peer_message(DMARC_POLICY_T *ctx, size_t i)
{
    const struct bench_scenario *s = &bench_scenarios[i];
    struct peer_strings *w = &peer_text[i];

    if (opendmarc_policy_store_from_domain(ctx, w->from) != DMARC_PARSE_OKAY)
        return BENCH_OTHER;
    /* The Org Domain argument is what makes libopendmarc apply sp. */
    if (opendmarc_policy_store_dmarc(ctx, w->record, w->from, s->org != NULL ? w->org : NULL) !=
        DMARC_PARSE_OKAY)
        return BENCH_OTHER;
    if (opendmarc_policy_store_spf(ctx, w->spf,
                                   s->spf_pass ? DMARC_POLICY_SPF_OUTCOME_PASS
                                               : DMARC_POLICY_SPF_OUTCOME_FAIL,
                                   DMARC_POLICY_SPF_ORIGIN_MAILFROM, NULL) != DMARC_PARSE_OKAY)
        return BENCH_OTHER;
    if (opendmarc_policy_store_dkim(ctx, w->dkim, peer_selector,
                                    s->dkim_pass ? DMARC_POLICY_DKIM_OUTCOME_PASS
                                                 : DMARC_POLICY_DKIM_OUTCOME_FAIL,
                                    NULL) != DMARC_PARSE_OKAY)
        return BENCH_OTHER;
    return peer_verdict(opendmarc_get_policy_to_enforce(ctx));
}

enum bench_verdict peer_cycle(size_t scenario)
{
    DMARC_POLICY_T *ctx = opendmarc_policy_connect_init(peer_ip, DMARC_POLICY_IP_TYPE_IPV4);
    enum bench_verdict v;
    if (ctx == NULL)
        return BENCH_OTHER;
    v = peer_message(ctx, scenario);
    opendmarc_policy_connect_shutdown(ctx);
    return v;
}

enum bench_verdict peer_cycle_reused(size_t scenario)
{
    enum bench_verdict v = peer_message(peer_reused_ctx, scenario);
    opendmarc_policy_connect_rset(peer_reused_ctx);
    return v;
}
