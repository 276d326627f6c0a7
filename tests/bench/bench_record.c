/*
** `make bench`: libdmarc side by side with libopendmarc, in the same process
** and the same runs (the two sides alternate run by run, so machine noise
** hits both alike; perf.md: set goals as ratios measured in the same pass).
**
**   (a) record parse: dmarc_record_parse + dmarc_record_free against
**       opendmarc_policy_parse_dmarc + connect_rset;
**   (b) a whole evaluation with every DNS answer already in a dmarc_cache,
**       over the five-message mix of perf.md section 2, against
**       libopendmarc's full cycle.
**
** Times are thread CPU time (CLOCK_THREAD_CPUTIME_ID) per operation; each
** line gives the minimum and the median over the runs. Every verdict is
** checked before and during timing: a wrong answer aborts the benchmark.
**
** Environment: BENCH_RUNS (default 7), BENCH_RUN_MS (per side and run,
** default 150). `--quick`: 3 runs of 40 ms.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "dmarc.h"
#include "dmarc_psl.h"

#define PSL_FILE "/usr/share/publicsuffix/public_suffix_list.dat"
/* Most runs per measurement; BENCH_RUNS is clamped to it. */
#define BENCH_MAX_RUNS 51
/* DNS questions one message may ask before the run counts as broken. */
#define BENCH_MAX_QUESTIONS 64
/* Cache lifetime of the bench zone's answers; the clock never moves. */
#define BENCH_TTL 86400
/* Iterations of the first, calibrating pass of a loop. */
#define BENCH_CALIBRATE_ITERS 2000

const struct bench_scenario bench_scenarios[BENCH_SCENARIOS] = {
    {"exact DKIM pass", "example.com", NULL, "mail.other.example", false, "example.com", true,
     BENCH_PASS},
    {"relaxed SPF pass via the org domain", "example.com", NULL, "bounce.example.com", true,
     "example.com", false, BENCH_PASS},
    {"relaxed DKIM pass via the org domain", "example.com", NULL, "mail.other.example", false,
     "mail.example.com", true, BENCH_PASS},
    {"fail on a subdomain: sp=quarantine", "news.example.com", "example.com", "mail.other.example",
     true, "other.example", true, BENCH_QUARANTINE},
    {"fail: p=reject", "example.com", NULL, "mail.other.example", true, "other.example", false,
     BENCH_REJECT},
};

static const char *const verdict_names[] = {"pass", "none", "quarantine", "reject", "other"};

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "bench: %s\n", what);
    exit(1);
}

/* ** {======================================================
** Our side
** ======================================================= */

struct engine {
    dmarc_ctx *ctx;
    dmarc_cache *cache;
    dmarc_eval *reused; /* for the reset-per-message loop */
    const char *record; /* what _dmarc.example.com holds */
    size_t questions;   /* asked while timing: should stay 0 */
    size_t wrong;       /* verdicts that differ from the scenario's */
};

/* The bench zone: one DMARC record; other TXT names do not exist; every
** name exists for the A/AAAA/MX existence test behind np [DISC-12]. */
static void answer(struct engine *en, dmarc_eval *e)
{
    static const char policy_name[] = "_dmarc." BENCH_POLICY_DOMAIN;
    dmarc_qtype type;
    size_t len;
    const char *name = dmarc_eval_query(e, &len, &type);
    dmarc_txt rr;
    dmarc_status st;

    if (name == NULL)
        die("NEED_DNS without a question");
    if (type != DMARC_QTYPE_TXT) {
        rr.data = "";
        rr.len = 0;
        st = dmarc_eval_answer(e, DMARC_RCODE_NOERROR, &rr, 1, BENCH_TTL);
    } else if (len == sizeof(policy_name) - 1 && memcmp(name, policy_name, len) == 0) {
        rr.data = en->record;
        rr.len = strlen(en->record);
        st = dmarc_eval_answer(e, DMARC_RCODE_NOERROR, &rr, 1, BENCH_TTL);
    } else {
        st = dmarc_eval_answer(e, DMARC_RCODE_NXDOMAIN, NULL, 0, BENCH_TTL);
    }
    if (st != DMARC_OK)
        die("dmarc_eval_answer failed");
}

static enum bench_verdict our_message(struct engine *en, dmarc_eval *e, size_t scenario)
{
    const struct bench_scenario *s = &bench_scenarios[scenario];
    dmarc_verdict v;
    size_t asked = 0;
    dmarc_status st;

    if (dmarc_eval_add_author_domain(e, s->from, strlen(s->from)) != DMARC_OK ||
        dmarc_eval_add_spf(e, s->spf_domain, strlen(s->spf_domain),
                           s->spf_pass ? DMARC_AUTH_PASS : DMARC_AUTH_FAIL, false) != DMARC_OK ||
        dmarc_eval_add_dkim(e, s->dkim_domain, strlen(s->dkim_domain), "sel1", 4,
                            s->dkim_pass ? DMARC_AUTH_PASS : DMARC_AUTH_FAIL) != DMARC_OK)
        return BENCH_OTHER;
    while ((st = dmarc_eval_run(e)) == DMARC_NEED_DNS) {
        if (++asked > BENCH_MAX_QUESTIONS)
            return BENCH_OTHER;
        answer(en, e);
    }
    en->questions += asked;
    if (st != DMARC_OK || dmarc_eval_verdict(e, &v) != DMARC_OK)
        return BENCH_OTHER;
    if (v.result == DMARC_RESULT_PASS)
        return BENCH_PASS;
    if (v.result != DMARC_RESULT_FAIL || !v.has_policy)
        return BENCH_OTHER;
    switch (v.applied) {
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

/* One message with a fresh evaluation, as a scanner does per message. */
static enum bench_verdict our_cycle(struct engine *en, size_t scenario)
{
    dmarc_status st;
    dmarc_eval *e = dmarc_eval_new(en->ctx, en->cache, &st);
    enum bench_verdict v;
    if (e == NULL)
        die("dmarc_eval_new failed");
    v = our_message(en, e, scenario);
    dmarc_eval_free(e);
    return v;
}

static enum bench_verdict our_cycle_reused(struct engine *en, size_t scenario)
{
    enum bench_verdict v = our_message(en, en->reused, scenario);
    dmarc_eval_reset(en->reused);
    return v;
}

static void engine_open(struct engine *en, dmarc_mode mode, dmarc_psl *psl)
{
    dmarc_options o;
    dmarc_status st;

    memset(en, 0, sizeof(*en));
    en->record = BENCH_RECORD;
    dmarc_options_init(&o);
    o.mode = mode;
    if (mode == DMARC_MODE_RFC7489) {
        o.psl = dmarc_psl_orgdomain;
        o.psl_ud = psl;
    }
    en->ctx = dmarc_ctx_new(&o, &st);
    en->cache = dmarc_cache_new(NULL, 1024, &st);
    if (en->ctx == NULL || en->cache == NULL)
        die("cannot create a context and a cache");
    en->reused = dmarc_eval_new(en->ctx, en->cache, &st);
    if (en->reused == NULL)
        die("dmarc_eval_new failed");
}

static void engine_close(struct engine *en)
{
    dmarc_eval_free(en->reused);
    dmarc_cache_free(en->cache);
    dmarc_ctx_free(en->ctx);
}

/* Every scenario gives its verdict on both sides; this also fills the cache. */
static void check_scenarios(struct engine *en, const char *label)
{
    size_t i;
    for (i = 0; i < BENCH_SCENARIOS; i++) {
        enum bench_verdict ours = our_cycle(en, i);
        enum bench_verdict again = our_cycle_reused(en, i);
        enum bench_verdict peer = peer_cycle(i);
        enum bench_verdict peer_again = peer_cycle_reused(i);
        if (ours != bench_scenarios[i].expect || again != ours || peer != ours ||
            peer_again != ours) {
            fprintf(stderr,
                    "bench: %s, scenario '%s': expected %s, libdmarc %s/%s, "
                    "libopendmarc %s/%s\n",
                    label, bench_scenarios[i].name, verdict_names[bench_scenarios[i].expect],
                    verdict_names[ours], verdict_names[again], verdict_names[peer],
                    verdict_names[peer_again]);
            exit(1);
        }
    }
    /* From here on every answer comes from the cache. */
    en->questions = 0;
}

/* }====================================================== */

/* ** {======================================================
** Loops and timing
** ======================================================= */

enum loop_kind {
    LOOP_PARSE_OURS,
    LOOP_PARSE_PEER,
    LOOP_EVAL_OURS,
    LOOP_EVAL_OURS_REUSED,
    LOOP_EVAL_PEER,
    LOOP_EVAL_PEER_REUSED
};

struct loop {
    enum loop_kind kind;
    dmarc_mode mode;    /* parse: the mode */
    const char *record; /* parse: the text */
    struct engine *en;  /* eval: ours */
};

static void run_loop(const struct loop *l, size_t iters)
{
    size_t i, bad = 0;

    switch (l->kind) {
    case LOOP_PARSE_OURS: {
        size_t len = strlen(l->record);
        for (i = 0; i < iters; i++) {
            dmarc_record *r;
            if (dmarc_record_parse(l->mode, NULL, l->record, len, &r, NULL) != DMARC_OK)
                bad++;
            else
                dmarc_record_free(r);
        }
        break;
    }
    case LOOP_PARSE_PEER:
        bad = (size_t)peer_parse_loop(l->record, iters);
        break;
    case LOOP_EVAL_OURS:
        for (i = 0; i < iters; i++)
            bad += our_cycle(l->en, i % BENCH_SCENARIOS) !=
                   bench_scenarios[i % BENCH_SCENARIOS].expect;
        break;
    case LOOP_EVAL_OURS_REUSED:
        for (i = 0; i < iters; i++)
            bad += our_cycle_reused(l->en, i % BENCH_SCENARIOS) !=
                   bench_scenarios[i % BENCH_SCENARIOS].expect;
        break;
    case LOOP_EVAL_PEER:
        for (i = 0; i < iters; i++)
            bad += peer_cycle(i % BENCH_SCENARIOS) != bench_scenarios[i % BENCH_SCENARIOS].expect;
        break;
    case LOOP_EVAL_PEER_REUSED:
        for (i = 0; i < iters; i++)
            bad += peer_cycle_reused(i % BENCH_SCENARIOS) !=
                   bench_scenarios[i % BENCH_SCENARIOS].expect;
        break;
    }
    if (bad != 0)
        die("a timed operation gave a wrong result");
}

struct timing {
    double min, median;
};

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Iterations that take about @run_ns for @l. */
static size_t calibrate(const struct loop *l, double run_ns)
{
    double t0 = now_ns(), per;
    run_loop(l, BENCH_CALIBRATE_ITERS);
    per = (now_ns() - t0) / BENCH_CALIBRATE_ITERS;
    if (per <= 0)
        per = 1;
    return run_ns / per < BENCH_CALIBRATE_ITERS ? BENCH_CALIBRATE_ITERS : (size_t)(run_ns / per);
}

static struct timing summarize(double *ns, size_t n)
{
    struct timing t;
    qsort(ns, n, sizeof(*ns), cmp_double);
    t.min = ns[0];
    t.median = n % 2 ? ns[n / 2] : (ns[n / 2 - 1] + ns[n / 2]) / 2;
    return t;
}

struct settings {
    size_t runs;
    double run_ns;
};

/* Time @a and @b alternately, run by run. @b may be NULL (ours alone). */
static void measure(const struct settings *cfg, const struct loop *a, const struct loop *b,
                    struct timing *ta, struct timing *tb)
{
    double na[BENCH_MAX_RUNS], nb[BENCH_MAX_RUNS];
    size_t ia = calibrate(a, cfg->run_ns), ib = b != NULL ? calibrate(b, cfg->run_ns) : 0;
    size_t r;

    for (r = 0; r < cfg->runs; r++) {
        double t0 = now_ns();
        run_loop(a, ia);
        na[r] = (now_ns() - t0) / (double)ia;
        if (b != NULL) {
            t0 = now_ns();
            run_loop(b, ib);
            nb[r] = (now_ns() - t0) / (double)ib;
        }
    }
    *ta = summarize(na, cfg->runs);
    if (b != NULL)
        *tb = summarize(nb, cfg->runs);
}

/* }====================================================== */

/* ** {======================================================
** Report
** ======================================================= */

static void print_header(const struct settings *cfg)
{
    printf("lua-dmarc bench: ns per operation (thread CPU time), runs: %zu of ~%.0f ms per side, "
           "sides interleaved\n",
           cfg->runs, cfg->run_ns / 1e6);
    printf("%-58s %17s %17s %15s\n", "", "libdmarc", "libopendmarc", "speed-up");
    printf("%-58s %8s %8s %8s %8s %7s %7s\n", "", "min", "median", "min", "median", "min",
           "median");
}

static void print_line(const char *label, const struct timing *ours, const struct timing *peer)
{
    if (peer == NULL) {
        printf("%-58s %8.0f %8.0f %8s %8s %7s %7s\n", label, ours->min, ours->median, "-", "-", "-",
               "-");
        return;
    }
    printf("%-58s %8.0f %8.0f %8.0f %8.0f %6.1fx %6.1fx\n", label, ours->min, ours->median,
           peer->min, peer->median, peer->min / ours->min, peer->median / ours->median);
}

static void print_target(const char *what, double target, const struct timing *ours,
                         const struct timing *peer)
{
    double ratio = peer->median / ours->median;
    printf("target %-24s >= %4.1fx: %5.1fx at the median, %5.1fx at the min: %s\n", what, target,
           ratio, peer->min / ours->min, ratio >= target ? "met" : "NOT met");
}

/* }====================================================== */

static size_t env_size(const char *name, size_t dflt, size_t lo, size_t hi)
{
    const char *v = getenv(name);
    char *end;
    unsigned long n;
    if (v == NULL || *v == '\0')
        return dflt;
    n = strtoul(v, &end, 10);
    if (*end != '\0' || n < lo || n > hi) {
        fprintf(stderr, "bench: %s must be %zu..%zu\n", name, lo, hi);
        exit(2);
    }
    return (size_t)n;
}

int main(int argc, char **argv)
{
    struct settings cfg;
    struct engine en7, en9;
    dmarc_psl *psl;
    struct loop a, b;
    struct timing t_ours, t_peer, t_parse_ours, t_parse_peer, t_eval_ours, t_eval_peer;

    cfg.runs = env_size("BENCH_RUNS", 7, 1, BENCH_MAX_RUNS);
    cfg.run_ns = (double)env_size("BENCH_RUN_MS", 150, 1, 60000) * 1e6;
    if (argc > 1 && strcmp(argv[1], "--quick") == 0) {
        cfg.runs = 3;
        cfg.run_ns = 40e6;
    } else if (argc > 1) {
        fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
        return 2;
    }

    psl = dmarc_psl_load(PSL_FILE);
    if (psl == NULL)
        die("cannot load the Public Suffix List");
    if (peer_init(PSL_FILE, BENCH_RECORD) != 0)
        die("libopendmarc did not initialise");
    engine_open(&en7, DMARC_MODE_RFC7489, psl);
    engine_open(&en9, DMARC_MODE_RFC9989, NULL);
    check_scenarios(&en7, "rfc7489");
    check_scenarios(&en9, "rfc9989");

    print_header(&cfg);

    /* (a) record parse */
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    a.kind = LOOP_PARSE_OURS;
    a.mode = DMARC_MODE_RFC7489;
    a.record = BENCH_RECORD;
    b.kind = LOOP_PARSE_PEER;
    b.record = BENCH_RECORD;
    measure(&cfg, &a, &b, &t_parse_ours, &t_parse_peer);
    print_line("(a) parse, realistic record (rua+ruf), rfc7489 mode", &t_parse_ours, &t_parse_peer);
    a.mode = DMARC_MODE_RFC9989;
    measure(&cfg, &a, NULL, &t_ours, NULL);
    print_line("(a) parse, realistic record, rfc9989 mode", &t_ours, NULL);
    a.mode = DMARC_MODE_RFC7489;
    a.record = b.record = BENCH_RECORD_SHORT;
    measure(&cfg, &a, &b, &t_ours, &t_peer);
    print_line("(a) parse, v=DMARC1; p=none", &t_ours, &t_peer);

    /* (b) whole evaluations, every DNS answer cached */
    a.record = b.record = NULL;
    a.kind = LOOP_EVAL_OURS;
    a.en = &en7;
    b.kind = LOOP_EVAL_PEER;
    measure(&cfg, &a, &b, &t_eval_ours, &t_eval_peer);
    print_line("(b) evaluation, 5-message mix, new + free per message", &t_eval_ours, &t_eval_peer);
    a.kind = LOOP_EVAL_OURS_REUSED;
    b.kind = LOOP_EVAL_PEER_REUSED;
    measure(&cfg, &a, &b, &t_ours, &t_peer);
    print_line("(b) evaluation, 5-message mix, reset / connect_rset", &t_ours, &t_peer);
    a.kind = LOOP_EVAL_OURS;
    a.en = &en9;
    measure(&cfg, &a, NULL, &t_ours, NULL);
    print_line("(b) evaluation, rfc9989 mode (tree walks, cached)", &t_ours, NULL);
    printf("    (rfc7489 mode with libpsl on the .dat list, as libopendmarc; cached DNS "
           "questions: %zu)\n",
           en7.questions + en9.questions);

    print_target("record parse", 5.0, &t_parse_ours, &t_parse_peer);
    print_target("evaluation", 10.0, &t_eval_ours, &t_eval_peer);

    engine_close(&en7);
    engine_close(&en9);
    dmarc_psl_free(psl);
    peer_shutdown();
    return 0;
}
