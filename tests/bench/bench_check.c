/*
** bench_check: what a full `check` of one message costs next to libopendkim's verify
** alone (perf.md: the wrapper should add little over bare libopendkim).
**
**   bench_check MESSAGE ZONE IP MAIL_FROM
**
** "opendkim alone": dkim_verify, the header fields, dkim_eoh, the body, dkim_eom, with
** the key handed over from memory (the header split is done once, outside the loop).
** "check": DKIM through dmarc_dkim_verify (the message split, key lookups through the
** DNS layer), SPF through dmarc_spf_check, and the DMARC evaluation of the core, every
** DNS answer from the layer's warm cache. Both run in the same process, interleaved
** run by run (the machine is noisy: compare the ratio, perf.md). Each run is checked
** for the expected outcome (DKIM pass, SPF pass, DMARC pass) before it counts.
** BENCH_RUNS (default 7) and BENCH_RUN_MS (default 200) tune the timing.
*/
#define _DEFAULT_SOURCE /* u_char for dkim.h */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <opendkim/dkim.h>

#include "dmarc.h"
#include "dmarc_dkim.h"
#include "dmarc_dns.h"
#include "dmarc_spf.h"
#include "dmarc_zone.h"

#define MAX_RUNS 50
#define MAX_FIELDS 200

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : (x > y ? 1 : 0);
}

static void report(const char *what, double *runs, int n)
{
    qsort(runs, (size_t)n, sizeof *runs, cmp_double);
    printf("%-44s min %9.1f us  median %9.1f us  max %9.1f us\n", what, runs[0], runs[n / 2],
           runs[n - 1]);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long size;
    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 ||
        fseek(f, 0, SEEK_SET) != 0) {
        fprintf(stderr, "bench_check: cannot read %s\n", path);
        exit(1);
    }
    buf = malloc((size_t)size + 1);
    if (buf == NULL || fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "bench_check: cannot read %s\n", path);
        exit(1);
    }
    fclose(f);
    buf[size] = '\0';
    *len = (size_t)size;
    return buf;
}

/* ---- libopendkim alone */

typedef struct raw_msg {
    const char *fields[MAX_FIELDS];
    size_t lens[MAX_FIELDS];
    size_t nfields;
    const char *body;
    size_t body_len;
    char key[4096];
} raw_msg;

/* The message must have CRLF line ends (the signer writes them). */
static void split(raw_msg *m, char *msg, size_t len)
{
    char *p = msg, *end = msg + len;
    m->nfields = 0;
    while (p < end) {
        char *eol = strstr(p, "\r\n");
        if (eol == NULL || eol == p) {
            m->body = eol != NULL ? eol + 2 : end;
            m->body_len = (size_t)(end - m->body);
            return;
        }
        if (*p == ' ' || *p == '\t') {
            m->lens[m->nfields - 1] = (size_t)(eol - m->fields[m->nfields - 1]);
        } else {
            if (m->nfields == MAX_FIELDS)
                exit(1);
            m->fields[m->nfields] = p;
            m->lens[m->nfields] = (size_t)(eol - p);
            m->nfields++;
        }
        p = eol + 2;
    }
}

static DKIM_CBSTAT raw_key(DKIM *dkim, DKIM_SIGINFO *sig, u_char *buf, size_t buflen)
{
    raw_msg *m = dkim_get_user_context(dkim);
    size_t len = strlen(m->key);
    (void)sig;
    if (len >= buflen)
        return DKIM_CBSTAT_ERROR;
    memcpy(buf, m->key, len + 1);
    return DKIM_CBSTAT_CONTINUE;
}

static int raw_verify(DKIM_LIB *lib, raw_msg *m)
{
    DKIM_STAT st;
    DKIM *d = dkim_verify(lib, (const u_char *)"bench", NULL, &st);
    DKIM_SIGINFO **sigs;
    int n = 0, ok;
    size_t i;
    dkim_set_user_context(d, m);
    for (i = 0; i < m->nfields; i++)
        dkim_header(d, (u_char *)(uintptr_t)m->fields[i], m->lens[i]);
    dkim_eoh(d);
    dkim_body(d, (u_char *)(uintptr_t)m->body, m->body_len);
    dkim_eom(d, NULL);
    ok = dkim_getsiglist(d, &sigs, &n) == DKIM_STAT_OK && n == 1 && DKIM_SIG_CHECK(sigs[0]);
    dkim_free(d);
    return ok;
}

/* ---- the whole check */

typedef struct checker {
    dmarc_dns *dns;
    dmarc_dkim *dkim;
    dmarc_spf *spf;
    dmarc_ctx *ctx;
    dmarc_eval *ev;
    const char *from;
    size_t from_len;
} checker;

/* Answers the core's questions from the DNS layer. */
static int run_eval(checker *c)
{
    dmarc_status st;
    size_t steps;
    for (steps = 0; steps <= DMARC_EVAL_MAX_QUERIES + 1; steps++) {
        size_t len, i;
        dmarc_qtype type;
        const char *name;
        dmarc_dns_answer *a = NULL;
        dmarc_txt txts[DMARC_ANSWER_MAX_RRS];
        size_t n = 0;
        st = dmarc_eval_run(c->ev);
        if (st == DMARC_OK)
            return 1;
        if (st != DMARC_NEED_DNS)
            return 0;
        name = dmarc_eval_query(c->ev, &len, &type);
        if (dmarc_dns_query(c->dns, name, len, (unsigned)type, &a) != DMARC_OK)
            return 0;
        for (i = 0; i < a->count && n < DMARC_ANSWER_MAX_RRS; i++) {
            txts[n].data = a->rrs[i].type == DMARC_DNS_T_TXT ? a->rrs[i].data : "";
            txts[n].len = a->rrs[i].type == DMARC_DNS_T_TXT ? a->rrs[i].len : 0;
            n++;
        }
        st = dmarc_eval_answer(c->ev, a->rcode, txts, n, a->ttl);
        dmarc_dns_answer_free(a);
        if (st != DMARC_OK)
            return 0;
    }
    return 0;
}

static int full_check(checker *c, const char *msg, size_t len, const char *ip,
                      const char *mail_from)
{
    dmarc_dkim_result *dk = malloc(sizeof *dk);
    dmarc_spf_result spf;
    dmarc_verdict v;
    size_t i;
    int ok = 0;
    if (dk == NULL)
        return 0;
    if (dmarc_dkim_verify(c->dkim, msg, len, dk) != DMARC_OK || dk->count != 1 ||
        dk->sigs[0].result != DMARC_AUTH_PASS)
        goto out;
    if (dmarc_spf_check(c->spf, ip, "mx.example.com", mail_from, false, &spf) != DMARC_OK ||
        spf.result != DMARC_AUTH_PASS)
        goto out;
    dmarc_eval_reset(c->ev);
    dmarc_eval_add_from(c->ev, c->from, c->from_len);
    dmarc_eval_add_spf(c->ev, spf.domain, strlen(spf.domain), spf.result, spf.is_helo);
    for (i = 0; i < dk->count; i++)
        dmarc_eval_add_dkim(c->ev, dk->sigs[i].domain, strlen(dk->sigs[i].domain),
                            dk->sigs[i].selector, strlen(dk->sigs[i].selector), dk->sigs[i].result);
    dmarc_eval_set_roll(c->ev, 0);
    if (!run_eval(c) || dmarc_eval_verdict(c->ev, &v) != DMARC_OK)
        goto out;
    ok = v.result == DMARC_RESULT_PASS;
out:
    free(dk);
    return ok;
}

int main(int argc, char **argv)
{
    size_t len, zlen;
    char *msg, *zone_text, *copy;
    raw_msg raw;
    dmarc_zone *z = NULL;
    dmarc_zone_error zerr;
    dmarc_dns_options o;
    dmarc_options co;
    dmarc_status st;
    checker c;
    DKIM_LIB *lib;
    const char *env_runs = getenv("BENCH_RUNS"), *env_ms = getenv("BENCH_RUN_MS");
    int runs = env_runs != NULL ? atoi(env_runs) : 7;
    double run_us = (env_ms != NULL ? atof(env_ms) : 200.0) * 1000.0;
    double t_raw[MAX_RUNS], t_full[MAX_RUNS];
    int r;

    if (argc != 5) {
        fprintf(stderr, "usage: bench_check MESSAGE ZONE IP MAIL_FROM\n");
        return 2;
    }
    if (runs < 1 || runs > MAX_RUNS)
        runs = 7;
    msg = read_file(argv[1], &len);
    zone_text = read_file(argv[2], &zlen);

    if (dmarc_zone_parse(NULL, zone_text, zlen, NULL, &z, &zerr) != DMARC_OK) {
        fprintf(stderr, "bench_check: zone line %zu: %s\n", zerr.line, zerr.message);
        return 1;
    }
    dmarc_dns_options_init(&o);
    o.cache_entries = 1000;
    c.dns = dmarc_dns_new(&o, dmarc_zone_backend(z), &st);
    c.dkim = dmarc_dkim_new(c.dns, &st);
    c.spf = dmarc_spf_new(c.dns, "mx.example.org", &st);
    dmarc_options_init(&co);
    c.ctx = dmarc_ctx_new(&co, &st);
    c.ev = c.ctx != NULL ? dmarc_eval_new(c.ctx, NULL, &st) : NULL;
    if (c.dns == NULL || c.dkim == NULL || c.spf == NULL || c.ev == NULL) {
        fprintf(stderr, "bench_check: setup failed\n");
        return 1;
    }

    /* The raw side: headers split once, the key text from the zone. */
    copy = malloc(len + 1);
    memcpy(copy, msg, len + 1);
    memset(&raw, 0, sizeof raw);
    split(&raw, copy, len);
    {
        const char *from = NULL, *sel = NULL, *dom = NULL;
        size_t i;
        char name[600];
        dmarc_dns_answer *a = NULL;
        for (i = 0; i < raw.nfields; i++) {
            if (strncasecmp(raw.fields[i], "From:", 5) == 0)
                from = raw.fields[i] + 5;
        }
        /* selector and domain of the signature, from the test message layout */
        sel = strstr(msg, " s=");
        dom = strstr(msg, " d=");
        if (from == NULL || sel == NULL || dom == NULL) {
            fprintf(stderr, "bench_check: the message needs From and one DKIM-Signature\n");
            return 1;
        }
        c.from = from;
        c.from_len = (size_t)(strstr(from, "\r\n") - from);
        snprintf(name, sizeof name, "%.*s._domainkey.%.*s", (int)strcspn(sel + 3, ";"), sel + 3,
                 (int)strcspn(dom + 3, ";"), dom + 3);
        if (dmarc_dns_query(c.dns, name, strlen(name), DMARC_DNS_T_TXT, &a) != DMARC_OK ||
            a->count != 1 || a->rrs[0].len >= sizeof raw.key) {
            fprintf(stderr, "bench_check: no key at %s\n", name);
            return 1;
        }
        memcpy(raw.key, a->rrs[0].data, a->rrs[0].len + 1);
        dmarc_dns_answer_free(a);
    }
    lib = dkim_init(NULL, NULL);
    dkim_set_key_lookup(lib, raw_key);

    /* Warm up (and fill the DNS cache), checking both give the right answer. */
    if (!raw_verify(lib, &raw) || !full_check(&c, msg, len, argv[3], argv[4])) {
        fprintf(stderr, "bench_check: the message does not verify/pass: nothing to time\n");
        return 1;
    }
    for (r = 0; r < runs; r++) {
        long n;
        double t0, t1;
        for (n = 0, t0 = now_us(), t1 = t0; t1 - t0 < run_us; n++, t1 = now_us())
            if (!raw_verify(lib, &raw))
                return 1;
        t_raw[r] = (t1 - t0) / (double)n;
        for (n = 0, t0 = now_us(), t1 = t0; t1 - t0 < run_us; n++, t1 = now_us())
            if (!full_check(&c, msg, len, argv[3], argv[4]))
                return 1;
        t_full[r] = (t1 - t0) / (double)n;
    }
    printf("message: %s (%zu bytes, body %zu bytes, one signature), %d runs of %.0f ms, "
           "thread CPU time\n",
           argv[1], len, raw.body_len, runs, run_us / 1000.0);
    report("libopendkim verify alone (key from memory)", t_raw, runs);
    report("check: DKIM + SPF + DMARC, cached DNS", t_full, runs);
    printf("ratio of medians (check / libopendkim): %.2f\n", t_full[runs / 2] / t_raw[runs / 2]);

    dkim_close(lib);
    dmarc_eval_free(c.ev);
    dmarc_ctx_free(c.ctx);
    dmarc_spf_free(c.spf);
    dmarc_dkim_free(c.dkim);
    dmarc_dns_free(c.dns);
    free(copy);
    free(msg);
    free(zone_text);
    return 0;
}
