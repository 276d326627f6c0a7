/*
** Evaluations end to end through the NEED_DNS loop: discovery (RFC 9989
** tree walk, RFC 7489 PSL), alignment, policy, several author domains, the
** query loop's contract, the cache, limits and failing allocations.
** Rule IDs and the acceptance vectors "#n" are listed in docs/conformance.md.
*/
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "dmarc.h"
#include "failing_alloc.h"
#include "fake_dns.h"

#define TXT DMARC_QTYPE_TXT
#define NOERR DMARC_RCODE_NOERROR
#define LOG_SIZE 8192

/* ** {======================================================
** Harness
** ======================================================= */

/* A PSL for rfc7489 tests: these suffixes, plus the implicit "*" rule (an
** unlisted TLD is a suffix) [PSL-1]. */
static const char *const table_suffixes[] = {"com", "net", "org", "example", "uk", "co.uk", "test"};

/* Calls of table_psl, for the PSL caching test. */
static int psl_calls;

static dmarc_status table_psl(void *ud, const char *d, size_t len, size_t *off, bool *is_suffix)
{
    const int *fail = ud;
    size_t best = 0, i, j;
    psl_calls++;
    if (fail != NULL && *fail)
        return DMARC_ERR_LIMIT;
    for (i = 0; i < sizeof table_suffixes / sizeof table_suffixes[0]; i++) {
        size_t sl = strlen(table_suffixes[i]);
        if (sl <= len && memcmp(d + len - sl, table_suffixes[i], sl) == 0 &&
            (sl == len || d[len - sl - 1] == '.') && sl > best)
            best = sl;
    }
    if (best == 0) {
        const char *dot = NULL;
        for (i = 0; i < len; i++)
            if (d[i] == '.')
                dot = d + i;
        best = dot != NULL ? len - (size_t)(dot + 1 - d) : len;
    }
    if (best == len) {
        *off = 0;
        *is_suffix = true;
        return DMARC_OK;
    }
    j = len - best - 1; /* the dot before the suffix */
    while (j > 0 && d[j - 1] != '.')
        j--;
    *off = j;
    *is_suffix = false;
    return DMARC_OK;
}

typedef struct T {
    dmarc_options opt;
    dmarc_ctx *ctx;
    dmarc_cache *cache;
    dmarc_eval *e;
    fake_zone z;
    dmarc_verdict v;
    int psl_fail;
    char log[LOG_SIZE];
} T;

static void t_open(T *t)
{
    dmarc_status st;
    t->ctx = dmarc_ctx_new(&t->opt, &st);
    assert_non_null(t->ctx);
    t->e = dmarc_eval_new(t->ctx, t->cache, &st);
    assert_non_null(t->e);
}

static void t_close(T *t)
{
    dmarc_eval_free(t->e);
    dmarc_ctx_free(t->ctx);
    t->e = NULL;
    t->ctx = NULL;
}

static int setup(void **state)
{
    T *t = calloc(1, sizeof *t);
    if (t == NULL)
        return -1;
    dmarc_options_init(&t->opt);
    t->opt.psl = table_psl;
    t->opt.psl_ud = &t->psl_fail;
    t->z.ttl = 300;
    t_open(t);
    *state = t;
    return 0;
}

static int teardown(void **state)
{
    T *t = *state;
    t_close(t);
    dmarc_cache_free(t->cache);
    free(t);
    return 0;
}

/* Switch mode (or other options): a new context and evaluation. */
static void t_mode(T *t, dmarc_mode mode)
{
    t_close(t);
    t->opt.mode = mode;
    t_open(t);
}

static void from(T *t, const char *raw)
{
    assert_int_equal(dmarc_eval_add_from(t->e, raw, strlen(raw)), DMARC_OK);
}

static void dkim(T *t, const char *d, dmarc_auth r)
{
    assert_int_equal(dmarc_eval_add_dkim(t->e, d, strlen(d), "sel", 3, r), DMARC_OK);
}

static void spf(T *t, const char *d, dmarc_auth r)
{
    assert_int_equal(dmarc_eval_add_spf(t->e, d, strlen(d), r, false), DMARC_OK);
}

static void helo(T *t, const char *d, dmarc_auth r)
{
    assert_int_equal(dmarc_eval_add_spf(t->e, d, strlen(d), r, true), DMARC_OK);
}

/* Every run also checks the loop's promise: no question twice [DISC-11]. */
static void check_no_repeat(const dmarc_eval *e)
{
    size_t i, j, n = dmarc_eval_query_count(e);
    for (i = 0; i < n; i++) {
        size_t li, lj;
        dmarc_qtype ti, tj;
        const char *qi = dmarc_eval_query_at(e, i, &li, &ti);
        assert_non_null(qi);
        for (j = i + 1; j < n; j++) {
            const char *qj = dmarc_eval_query_at(e, j, &lj, &tj);
            assert_false(ti == tj && li == lj && memcmp(qi, qj, li) == 0);
        }
    }
}

static void run(T *t, const fake_rr *zone)
{
    t->z.rr = zone;
    assert_int_equal(fake_run(t->e, &t->z), DMARC_OK);
    assert_int_equal(dmarc_eval_verdict(t->e, &t->v), DMARC_OK);
    fake_log(t->e, t->log, sizeof t->log);
    check_no_repeat(t->e);
}

static void expect_queries(const T *t, const char *expected)
{
    if (strcmp(t->log, expected) != 0)
        fail_msg("queries:\n  got      %s\n  expected %s", t->log, expected);
}

static void expect_str(const char *got, const char *want)
{
    if (want == NULL) {
        if (got != NULL)
            fail_msg("got \"%s\", expected NULL", got);
        return;
    }
    if (got == NULL)
        fail_msg("got NULL, expected \"%s\"", want);
    assert_string_equal(got, want);
}

/* }====================================================== */

/* ** {======================================================
** Section 15 vectors
** ======================================================= */

static const fake_rr zone_ex_reject[] = {
    {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1; p=reject"}},
    {NULL, 0, NOERR, {NULL}},
};

/* #1 [EVAL-1] [ALN-3]: exact DKIM match, one query, no walk [ALN-5]. */
static void eval__v01_exact_dkim_pass(void **state)
{
    T *t = *state;
    from(t, "user@ex.com");
    dkim(t, "ex.com", DMARC_AUTH_PASS);
    run(t, zone_ex_reject);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    assert_true(t->v.has_policy);
    assert_int_equal(t->v.policy, DMARC_POLICY_REJECT);
    assert_int_equal(t->v.policy_tag, DMARC_POLICY_TAG_P);
    assert_int_equal(t->v.applied, DMARC_POLICY_NONE);
    assert_true(t->v.dkim_aligned);
    assert_false(t->v.spf_aligned);
    expect_str(t->v.author_domain, "ex.com");
    expect_str(t->v.policy_domain, "ex.com");
    /* [ALN-5]: own record, every identifier equal: aligned without a walk,
    ** so the Org Domain was not determined and is not reported [DISC-6]. */
    assert_null(t->v.org_domain);
    assert_int_equal(dmarc_eval_dkim_alignment(t->e, 0), DMARC_ALIGN_STRICT);
    expect_queries(t, "_dmarc.ex.com/TXT");
}

static const fake_rr zone_ex_strict[] = {
    {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1; p=reject; adkim=s; aspf=s"}},
    {NULL, 0, NOERR, {NULL}},
};

/* #2 [ALN-3]: adkim=s, d=mail.ex.com: fail; strict needs no walk [ALN-5].
** The engine reports requested and applied policy; the "treat as
** quarantine" of [POL-3] is site treatment [OPEN-6]. */
static void eval__v02_strict_dkim_subdomain_fails(void **state)
{
    T *t = *state;
    from(t, "user@ex.com");
    dkim(t, "mail.ex.com", DMARC_AUTH_PASS);
    run(t, zone_ex_strict);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_int_equal(t->v.policy, DMARC_POLICY_REJECT);
    assert_int_equal(t->v.applied, DMARC_POLICY_REJECT);
    assert_int_equal(t->v.reason, DMARC_REASON_NONE);
    assert_false(t->v.dkim_aligned);
    assert_int_equal(dmarc_eval_dkim_alignment(t->e, 0), DMARC_ALIGN_NONE);
    expect_queries(t, "_dmarc.ex.com/TXT");
}

/* #3 [ALN-4]: relaxed; the author's walk continues (memo reused), the
** identifier gets its own walk. */
static void eval__v03_relaxed_dkim_subdomain_passes(void **state)
{
    T *t = *state;
    from(t, "user@ex.com");
    dkim(t, "mail.ex.com", DMARC_AUTH_PASS);
    run(t, zone_ex_reject);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    assert_true(t->v.dkim_aligned);
    assert_int_equal(dmarc_eval_dkim_alignment(t->e, 0), DMARC_ALIGN_RELAXED);
    expect_str(t->v.org_domain, "ex.com");
    expect_queries(t, "_dmarc.ex.com/TXT _dmarc.com/TXT _dmarc.mail.ex.com/TXT");
}

/* #4 [ALN-3]: aspf=s, MAIL FROM bounce.ex.com: fail. */
static void eval__v04_strict_spf_subdomain_fails(void **state)
{
    T *t = *state;
    from(t, "user@ex.com");
    spf(t, "bounce.ex.com", DMARC_AUTH_PASS);
    run(t, zone_ex_strict);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_false(t->v.spf_aligned);
    assert_int_equal(dmarc_eval_spf_alignment(t->e), DMARC_ALIGN_NONE);
}

static const fake_rr zone_v05[] = {
    {"_dmarc.a.ex.com", TXT, NOERR, {"v=DMARC1; p=none", "v=DMARC1; p=reject"}},
    {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1; p=reject; sp=quarantine"}},
    {NULL, 0, NOERR, {NULL}},
};

/* #5 rfc9989 [WALK-1] [DISC-5]: several records at the author are all
** discarded and the walk goes on: ex.com's record, through sp. */
static void eval__v05_multi_record_rfc9989_walks_on(void **state)
{
    T *t = *state;
    from(t, "user@a.ex.com");
    run(t, zone_v05);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    expect_str(t->v.policy_domain, "ex.com");
    expect_str(t->v.org_domain, "ex.com");
    assert_int_equal(t->v.policy_tag, DMARC_POLICY_TAG_SP);
    assert_int_equal(t->v.policy, DMARC_POLICY_QUARANTINE);
    expect_queries(t, "_dmarc.a.ex.com/TXT _dmarc.ex.com/TXT _dmarc.com/TXT");
}

/* #5 rfc7489 [DISC-3]: several records at the author end discovery. */
static void eval__v05_multi_record_rfc7489_none(void **state)
{
    T *t = *state;
    t_mode(t, DMARC_MODE_RFC7489);
    from(t, "user@a.ex.com");
    dkim(t, "a.ex.com", DMARC_AUTH_PASS);
    run(t, zone_v05);
    assert_int_equal(t->v.result, DMARC_RESULT_NONE);
    assert_false(t->v.has_policy);
    expect_str(t->v.policy_domain, NULL);
    expect_queries(t, "_dmarc.a.ex.com/TXT");
}

static const fake_rr zone_v06[] = {
    {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1; p=bogus; rua=mailto:x@ex.com"}},
    {NULL, 0, NOERR, {NULL}},
};

/* #6 [EVAL-7]: an invalid p with a valid rua acts as p=none. */
static void eval__v06_bad_p_with_rua_is_none(void **state)
{
    T *t = *state;
    from(t, "user@ex.com");
    run(t, zone_v06);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_true(t->v.has_policy);
    assert_int_equal(t->v.policy, DMARC_POLICY_NONE);
    assert_int_equal(t->v.applied, DMARC_POLICY_NONE);
}

static const fake_rr zone_v07[] = {
    {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1; p=reject; sp=bogus"}},
    {NULL, 0, NOERR, {NULL}},
};

/* #7 [EVAL-7] [OPEN-4]: an invalid sp without rua: permerror. */
static void eval__v07_bad_sp_without_rua_permerror(void **state)
{
    T *t = *state;
    from(t, "user@ex.com");
    dkim(t, "ex.com", DMARC_AUTH_PASS);
    run(t, zone_v07);
    assert_int_equal(t->v.result, DMARC_RESULT_PERMERROR);
    assert_false(t->v.has_policy);
    assert_non_null(t->v.error);
    expect_str(t->v.policy_domain, "ex.com");
}

static const fake_rr zone_v08[] = {
    {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1"}},
    {NULL, 0, NOERR, {NULL}},
};

/* #8 rfc9989 [OPEN-7]: a bare v=DMARC1 is p=none. */
static void eval__v08_bare_record_rfc9989_p_none(void **state)
{
    T *t = *state;
    from(t, "user@ex.com");
    run(t, zone_v08);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_true(t->v.has_policy);
    assert_int_equal(t->v.policy, DMARC_POLICY_NONE);
}

/* #8 rfc7489 [EVAL-7] [OPEN-4]: a missing p is invalid; no rua: permerror. */
static void eval__v08_bare_record_rfc7489_permerror(void **state)
{
    T *t = *state;
    t_mode(t, DMARC_MODE_RFC7489);
    from(t, "user@ex.com");
    run(t, zone_v08);
    assert_int_equal(t->v.result, DMARC_RESULT_PERMERROR);
    assert_false(t->v.has_policy);
}

static const fake_rr zone_v12[] = {
    {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1; p=reject; sp=quarantine; np=reject"}},
    {NULL, 0, NOERR, {NULL}},
};

/* #12 [DISC-12] [EVAL-6]: author x.y.ex.com does not exist (NXDOMAIN on A):
** np. One existence query in rfc9989 mode. */
static void eval__v12_nxdomain_author_gets_np(void **state)
{
    T *t = *state;
    from(t, "user@x.y.ex.com");
    run(t, zone_v12);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_int_equal(t->v.policy_tag, DMARC_POLICY_TAG_NP);
    assert_int_equal(t->v.policy, DMARC_POLICY_REJECT);
    assert_int_equal(t->v.applied, DMARC_POLICY_REJECT);
    assert_false(t->v.author_exists);
    expect_str(t->v.policy_domain, "ex.com");
    expect_str(t->v.org_domain, "ex.com");
    expect_queries(t, "_dmarc.x.y.ex.com/TXT _dmarc.y.ex.com/TXT _dmarc.ex.com/TXT "
                      "_dmarc.com/TXT x.y.ex.com/A");
}

static const fake_rr zone_v13[] = {
    {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1; p=reject; sp=quarantine; np=reject"}},
    {"x.y.ex.com", TXT, NOERR, {NULL}}, /* exists: NODATA for every type */
    {NULL, 0, NOERR, {NULL}},
};

/* #13 rfc9989 [DISC-12]: NODATA means the author exists: sp. */
static void eval__v13_nodata_author_rfc9989_gets_sp(void **state)
{
    T *t = *state;
    from(t, "user@x.y.ex.com");
    run(t, zone_v13);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_int_equal(t->v.policy_tag, DMARC_POLICY_TAG_SP);
    assert_int_equal(t->v.policy, DMARC_POLICY_QUARANTINE);
    assert_true(t->v.author_exists);
}

/* #13 rfc7489+9091 [DISC-12]: NODATA for A, AAAA and MX: non-existent: np. */
static void eval__v13_nodata_author_rfc7489_gets_np(void **state)
{
    T *t = *state;
    t_mode(t, DMARC_MODE_RFC7489);
    from(t, "user@x.y.ex.com");
    run(t, zone_v13);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_int_equal(t->v.policy_tag, DMARC_POLICY_TAG_NP);
    assert_int_equal(t->v.policy, DMARC_POLICY_REJECT);
    assert_false(t->v.author_exists);
    expect_queries(t, "_dmarc.x.y.ex.com/TXT _dmarc.ex.com/TXT x.y.ex.com/A x.y.ex.com/AAAA "
                      "x.y.ex.com/MX");
}

static const fake_rr zone_v14[] = {
    {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1; p=reject; t=y"}},
    {NULL, 0, NOERR, {NULL}},
};

/* #14 [POL-4]: t=y applies one level lower, reason policy_test_mode. */
static void eval__v14_testing_lowers_one_level(void **state)
{
    T *t = *state;
    from(t, "user@ex.com");
    run(t, zone_v14);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_int_equal(t->v.policy, DMARC_POLICY_REJECT);
    assert_int_equal(t->v.applied, DMARC_POLICY_QUARANTINE);
    assert_int_equal(t->v.reason, DMARC_REASON_POLICY_TEST_MODE);
    assert_true(t->v.testing);
}

static const fake_rr zone_v15[] = {
    {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1; p=reject; pct=0"}},
    {NULL, 0, NOERR, {NULL}},
};

/* #15 rfc7489 [POL-6]: pct=0: reject becomes quarantine, sampled_out. */
static void eval__v15_pct0_rfc7489_sampled_out(void **state)
{
    T *t = *state;
    t_mode(t, DMARC_MODE_RFC7489);
    from(t, "user@ex.com");
    run(t, zone_v15);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_int_equal(t->v.policy, DMARC_POLICY_REJECT);
    assert_int_equal(t->v.applied, DMARC_POLICY_QUARANTINE);
    assert_int_equal(t->v.reason, DMARC_REASON_SAMPLED_OUT);
}

/* [POL-5]: in rfc9989 mode pct is historic and ignored by default. */
static void eval__pct_ignored_in_rfc9989(void **state)
{
    T *t = *state;
    from(t, "user@ex.com");
    run(t, zone_v15);
    assert_int_equal(t->v.applied, DMARC_POLICY_REJECT);
    assert_int_equal(t->v.reason, DMARC_REASON_NONE);
    assert_int_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_PCT_AS_TESTING, 0);
}

/* [OPEN-3]: the option maps pct=0 to t=y when t is absent. */
static void eval__pct_as_testing_option(void **state)
{
    T *t = *state;
    static const fake_rr zone_t_n[] = {
        {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1; p=reject; pct=0; t=n"}},
        {NULL, 0, NOERR, {NULL}},
    };
    t->opt.pct_as_testing = true;
    t_mode(t, DMARC_MODE_RFC9989);
    from(t, "user@ex.com");
    run(t, zone_v15);
    assert_int_equal(t->v.applied, DMARC_POLICY_QUARANTINE);
    assert_int_equal(t->v.reason, DMARC_REASON_POLICY_TEST_MODE);
    assert_true(t->v.testing);
    assert_int_not_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_PCT_AS_TESTING, 0);

    /* An explicit t wins over the mapping. */
    dmarc_eval_reset(t->e);
    from(t, "user@ex.com");
    run(t, zone_t_n);
    assert_int_equal(t->v.applied, DMARC_POLICY_REJECT);
    assert_false(t->v.testing);
    assert_int_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_PCT_AS_TESTING, 0);
}

static const fake_rr zone_v16[] = {
    {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1; p=quarantine; pct=50"}},
    {NULL, 0, NOERR, {NULL}},
};

/* #16 rfc7489 [POL-6]: pct=50 over every roll: exactly half enforced;
** quarantine sampled out is none. */
static void eval__v16_pct50_half_sampled(void **state)
{
    T *t = *state;
    unsigned roll, quarantined = 0, none = 0;
    t_mode(t, DMARC_MODE_RFC7489);
    for (roll = 0; roll < 100; roll++) {
        dmarc_eval_reset(t->e);
        from(t, "user@ex.com");
        assert_int_equal(dmarc_eval_set_roll(t->e, roll), DMARC_OK);
        run(t, zone_v16);
        assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
        if (t->v.applied == DMARC_POLICY_QUARANTINE) {
            quarantined++;
            assert_true(roll < 50);
            assert_int_equal(t->v.reason, DMARC_REASON_NONE);
        } else {
            none++;
            assert_int_equal(t->v.applied, DMARC_POLICY_NONE);
            assert_int_equal(t->v.reason, DMARC_REASON_SAMPLED_OUT);
        }
    }
    assert_int_equal(quarantined, 50);
    assert_int_equal(none, 50);
}

static const fake_rr zone_v17[] = {
    {"_dmarc.example.com", TXT, NOERR, {"v=DMARC1; p=reject"}},
    {NULL, 0, NOERR, {NULL}},
};

/* #17 [WALK-1] [WALK-2]: 13 labels: exactly 8 TXT queries, in order. */
static void eval__v17_thirteen_labels_eight_queries(void **state)
{
    T *t = *state;
    from(t, "user@a.b.c.d.e.f.g.h.i.j.mail.example.com");
    run(t, zone_v17);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    expect_str(t->v.policy_domain, "example.com");
    expect_str(t->v.org_domain, "example.com");
    assert_int_equal(dmarc_eval_query_count(t->e), 8);
    expect_queries(t, "_dmarc.a.b.c.d.e.f.g.h.i.j.mail.example.com/TXT "
                      "_dmarc.g.h.i.j.mail.example.com/TXT _dmarc.h.i.j.mail.example.com/TXT "
                      "_dmarc.i.j.mail.example.com/TXT _dmarc.j.mail.example.com/TXT "
                      "_dmarc.mail.example.com/TXT _dmarc.example.com/TXT _dmarc.com/TXT");
}

static const fake_rr zone_v18[] = {
    {"_dmarc.bank.example", TXT, NOERR, {"v=DMARC1; p=none; sp=quarantine; np=reject; psd=y"}},
    {NULL, 0, NOERR, {NULL}},
};

/* #18 [DISC-6] (2) [DISC-7]: psd=y at bank.example: Org Domain is
** b.bank.example (no record), the PSD record applies via np/sp. */
static void eval__v18_psd_record_applies_via_np(void **state)
{
    T *t = *state;
    from(t, "user@a.b.bank.example");
    run(t, zone_v18);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    expect_str(t->v.org_domain, "b.bank.example");
    expect_str(t->v.policy_domain, "bank.example");
    assert_int_equal(t->v.policy_tag, DMARC_POLICY_TAG_NP);
    assert_int_equal(t->v.policy, DMARC_POLICY_REJECT);
    expect_queries(t, "_dmarc.a.b.bank.example/TXT _dmarc.b.bank.example/TXT "
                      "_dmarc.bank.example/TXT a.b.bank.example/A");
}

static void eval__v18_psd_record_applies_via_sp(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.bank.example", TXT, NOERR, {"v=DMARC1; p=none; sp=quarantine; np=reject; psd=y"}},
        {"a.b.bank.example", DMARC_QTYPE_A, NOERR, {"192.0.2.1"}},
        {NULL, 0, NOERR, {NULL}},
    };
    from(t, "user@a.b.bank.example");
    run(t, zone);
    assert_int_equal(t->v.policy_tag, DMARC_POLICY_TAG_SP);
    assert_int_equal(t->v.policy, DMARC_POLICY_QUARANTINE);
    assert_true(t->v.author_exists);
}

static const fake_rr zone_v19[] = {
    {"_dmarc.mail.ex.com", TXT, NOERR, {"v=DMARC1; p=reject; psd=n"}},
    {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1; p=reject"}},
    {NULL, 0, NOERR, {NULL}},
};

/* #19 [DISC-6] (1): psd=n at mail.ex.com makes it the Org Domain; d=ex.com
** has another Org Domain: not aligned. No walk for ex.com is needed. */
static void eval__v19_psd_n_separates_org_domains(void **state)
{
    T *t = *state;
    from(t, "user@a.mail.ex.com");
    dkim(t, "ex.com", DMARC_AUTH_PASS);
    run(t, zone_v19);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    expect_str(t->v.org_domain, "mail.ex.com");
    expect_str(t->v.policy_domain, "mail.ex.com");
    assert_false(t->v.dkim_aligned);
    expect_queries(t, "_dmarc.a.mail.ex.com/TXT _dmarc.mail.ex.com/TXT");
}

static const fake_rr zone_v20[] = {
    {"_dmarc.ex.com", 0, DMARC_RCODE_SERVFAIL, {NULL}},
    {NULL, 0, NOERR, {NULL}},
};

/* #20 [DISC-4] [DISC-10]: SERVFAIL on the _dmarc query: temperror. */
static void eval__v20_servfail_temperror(void **state)
{
    T *t = *state;
    from(t, "user@ex.com");
    dkim(t, "ex.com", DMARC_AUTH_PASS);
    run(t, zone_v20);
    assert_int_equal(t->v.result, DMARC_RESULT_TEMPERROR);
    assert_false(t->v.has_policy);
    assert_int_equal(t->v.applied, DMARC_POLICY_NONE);
    assert_non_null(t->v.error);
}

/* [DISC-4]: TIMEOUT is a transient error too, also in rfc7489 mode. */
static void eval__timeout_temperror_both_modes(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.ex.com", 0, DMARC_RCODE_TIMEOUT, {NULL}},
        {NULL, 0, NOERR, {NULL}},
    };
    from(t, "user@ex.com");
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_TEMPERROR);
    t_mode(t, DMARC_MODE_RFC7489);
    from(t, "user@ex.com");
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_TEMPERROR);
}

/* #21 [EVAL-3]: SPF temperror for the author domain, DKIM none: temperror,
** the record known but not applied. */
static void eval__v21_spf_temperror_not_fail(void **state)
{
    T *t = *state;
    from(t, "user@ex.com");
    spf(t, "ex.com", DMARC_AUTH_TEMPERROR);
    dkim(t, "ex.com", DMARC_AUTH_NONE);
    run(t, zone_ex_reject);
    assert_int_equal(t->v.result, DMARC_RESULT_TEMPERROR);
    assert_true(t->v.has_policy);
    assert_int_equal(t->v.policy, DMARC_POLICY_REJECT);
    assert_int_equal(t->v.applied, DMARC_POLICY_NONE);
    assert_non_null(t->v.error);
}

/* [EVAL-3]: a temperror for a domain that could not align is no excuse. */
static void eval__temperror_of_unrelated_domain_fails(void **state)
{
    T *t = *state;
    from(t, "user@ex.com");
    spf(t, "other.net", DMARC_AUTH_TEMPERROR);
    dkim(t, "else.org", DMARC_AUTH_TEMPERROR);
    run(t, zone_ex_reject);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    expect_queries(t, "_dmarc.ex.com/TXT");
}

/* [EVAL-3]: a DKIM temperror whose d= would align relaxed: temperror. */
static void eval__dkim_temperror_relaxed_candidate(void **state)
{
    T *t = *state;
    from(t, "user@ex.com");
    dkim(t, "mail.ex.com", DMARC_AUTH_TEMPERROR);
    run(t, zone_ex_reject);
    assert_int_equal(t->v.result, DMARC_RESULT_TEMPERROR);
}

static const fake_rr zone_v22[] = {
    {"_dmarc.xn--4ca0b.example", TXT, NOERR, {"v=DMARC1; p=quarantine"}},
    {NULL, 0, NOERR, {NULL}},
};

/* #22 [FROM-3]: a U-label From domain is looked up as its A-label. */
static void eval__v22_idn_from_uses_a_label(void **state)
{
    T *t = *state;
    from(t, "J\xc3\xbcrgen <j@\xc3\x84\xc3\x96.example>");
    dkim(t, "xn--4ca0b.example", DMARC_AUTH_PASS);
    run(t, zone_v22);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    expect_str(t->v.author_domain, "xn--4ca0b.example");
    expect_queries(t, "_dmarc.xn--4ca0b.example/TXT");
}

/* #23 [FROM-5] [OPEN-5]: two From fields never pass; the would-be pass
** becomes a failure with the requested policy. */
static void eval__v23_two_from_fields_never_pass(void **state)
{
    T *t = *state;
    from(t, "a@ex.com");
    from(t, "b@ex.com");
    dkim(t, "ex.com", DMARC_AUTH_PASS);
    run(t, zone_ex_reject);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_int_equal(t->v.policy, DMARC_POLICY_REJECT);
    assert_int_equal(t->v.applied, DMARC_POLICY_REJECT);
    assert_int_not_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_MULTIPLE_FROM, 0);
    assert_int_equal(dmarc_eval_domain_count(t->e), 1);
    {
        dmarc_verdict dv;
        assert_int_equal(dmarc_eval_domain_verdict(t->e, 0, &dv), DMARC_OK);
        assert_int_equal(dv.result, DMARC_RESULT_PASS);
    }
}

/* }====================================================== */

/* ** {======================================================
** Tree walks (RFC 9989 App. B.4 style), psd, one-letter labels
** ======================================================= */

/* B.4.2: a deep name with only _dmarc.example.com: the policy domain is
** example.com, reached by the walk. */
static void eval__walk_b42_deep_name(void **state)
{
    T *t = *state;
    from(t, "user@a.b.c.mail.example.com");
    dkim(t, "example.com", DMARC_AUTH_PASS);
    run(t, zone_v17);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    expect_str(t->v.policy_domain, "example.com");
    expect_str(t->v.org_domain, "example.com");
    assert_int_equal(t->v.policy_tag, DMARC_POLICY_TAG_SP);
    assert_int_equal(dmarc_eval_dkim_alignment(t->e, 0), DMARC_ALIGN_RELAXED);
}

static const fake_rr zone_b43[] = {
    {"_dmarc.giant.bank.example", TXT, NOERR, {"v=DMARC1; p=reject"}},
    {"_dmarc.bank.example", TXT, NOERR, {"v=DMARC1; p=none; psd=y"}},
    {NULL, 0, NOERR, {NULL}},
};

/* B.4.3 [DISC-6] (2): giant.bank.example has a record, bank.example psd=y:
** the Org Domain is giant.bank.example; a sibling under the PSD is another
** organisation and never aligns. */
static void eval__walk_b43_psd_parent(void **state)
{
    T *t = *state;
    from(t, "user@giant.bank.example");
    dkim(t, "other.bank.example", DMARC_AUTH_PASS);
    dkim(t, "mail.giant.bank.example", DMARC_AUTH_PASS);
    run(t, zone_b43);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    expect_str(t->v.org_domain, "giant.bank.example");
    expect_str(t->v.policy_domain, "giant.bank.example");
    assert_int_equal(dmarc_eval_dkim_alignment(t->e, 0), DMARC_ALIGN_NONE);
    assert_int_equal(dmarc_eval_dkim_alignment(t->e, 1), DMARC_ALIGN_RELAXED);

    dmarc_eval_reset(t->e);
    from(t, "user@giant.bank.example");
    dkim(t, "other.bank.example", DMARC_AUTH_PASS);
    run(t, zone_b43);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
}

/* [DISC-6] (3): a psd=y record at the walk's start is that name's own;
** it is its own Org Domain and its p applies; names below it are not. */
static void eval__walk_psd_y_at_start(void **state)
{
    T *t = *state;
    from(t, "user@bank.example");
    spf(t, "mail.bank.example", DMARC_AUTH_PASS);
    run(t, zone_b43);
    assert_int_equal(t->v.policy_tag, DMARC_POLICY_TAG_P);
    expect_str(t->v.org_domain, "bank.example");
    /* mail.bank.example's own walk meets psd=y one label up: it is its own
    ** Org Domain [DISC-6] (2), another organisation than the PSD's. */
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_false(t->v.spf_aligned);
    expect_queries(t, "_dmarc.bank.example/TXT _dmarc.mail.bank.example/TXT");
}

/* Digest section 14: psd=y at the 7-label name right after the jump from
** 10 labels: the Org Domain is the 8-label name, never queried; no 9th
** query; the PSD record applies. */
static void eval__walk_psd_after_jump_no_extra_query(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.d.e.f.g.h.i.example", TXT, NOERR, {"v=DMARC1; p=reject; sp=quarantine; psd=y"}},
        {NULL, 0, NOERR, {NULL}},
    };
    from(t, "user@a.b.c.d.e.f.g.h.i.example");
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    expect_str(t->v.org_domain, "c.d.e.f.g.h.i.example");
    expect_str(t->v.policy_domain, "d.e.f.g.h.i.example");
    assert_int_equal(t->v.policy, DMARC_POLICY_QUARANTINE);
    expect_queries(t, "_dmarc.a.b.c.d.e.f.g.h.i.example/TXT _dmarc.d.e.f.g.h.i.example/TXT");
}

/* [DISC-6] (3): several psd=u records: the one with the fewest labels is
** the Org Domain and its record applies [DISC-7]. */
static void eval__walk_fewest_labels_wins(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.b.c.example.com", TXT, NOERR, {"v=DMARC1; p=none"}},
        {"_dmarc.example.com", TXT, NOERR, {"v=DMARC1; p=reject; sp=quarantine"}},
        {NULL, 0, NOERR, {NULL}},
    };
    from(t, "user@a.b.c.example.com");
    run(t, zone);
    expect_str(t->v.org_domain, "example.com");
    expect_str(t->v.policy_domain, "example.com");
    assert_int_equal(t->v.policy, DMARC_POLICY_QUARANTINE);
}

/* [WALK-1]: two records in the middle of the walk are discarded and the
** walk goes on. */
static void eval__walk_discards_multi_record_midway(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.b.example.com", TXT, NOERR, {"v=DMARC1; p=none; psd=n", "v=DMARC1; p=none"}},
        {"_dmarc.example.com", TXT, NOERR, {"v=DMARC1; p=reject"}},
        {NULL, 0, NOERR, {NULL}},
    };
    from(t, "user@a.b.example.com");
    run(t, zone);
    expect_str(t->v.policy_domain, "example.com");
    expect_str(t->v.org_domain, "example.com");
}

/* [REC-2]: non-DMARC TXT RRs at _dmarc are ignored. */
static void eval__walk_ignores_non_dmarc_txt(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.ex.com", TXT, NOERR, {"v=spf1 -all", "v=DMARC1; p=quarantine", "hello"}},
        {NULL, 0, NOERR, {NULL}},
    };
    from(t, "user@ex.com");
    run(t, zone);
    assert_int_equal(t->v.policy, DMARC_POLICY_QUARANTINE);
    assert_int_equal(t->v.policy_tag, DMARC_POLICY_TAG_P);
}

/* [DISC-9]: no record anywhere: none, the start is its own Org Domain. */
static void eval__no_record_is_none(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {{NULL, 0, NOERR, {NULL}}};
    from(t, "user@a.ex.com");
    dkim(t, "a.ex.com", DMARC_AUTH_PASS);
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_NONE);
    assert_false(t->v.has_policy);
    expect_str(t->v.policy_domain, NULL);
    expect_str(t->v.org_domain, "a.ex.com");
    expect_queries(t, "_dmarc.a.ex.com/TXT _dmarc.ex.com/TXT _dmarc.com/TXT");
}

/* One-letter labels walk like any others. */
static void eval__one_letter_labels(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.b.c", TXT, NOERR, {"v=DMARC1; p=reject"}},
        {NULL, 0, NOERR, {NULL}},
    };
    from(t, "x@a.b.c");
    dkim(t, "d.b.c", DMARC_AUTH_PASS);
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    expect_str(t->v.org_domain, "b.c");
    expect_queries(t, "_dmarc.a.b.c/TXT _dmarc.b.c/TXT _dmarc.c/TXT _dmarc.d.b.c/TXT");
}

/* [DISC-10]: a SERVFAIL on a parent during discovery: temperror. */
static void eval__walk_servfail_midway_temperror(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.b.example.com", 0, DMARC_RCODE_SERVFAIL, {NULL}},
        {"_dmarc.example.com", TXT, NOERR, {"v=DMARC1; p=reject"}},
        {NULL, 0, NOERR, {NULL}},
    };
    from(t, "user@a.b.example.com");
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_TEMPERROR);
    assert_false(t->v.has_policy);
    expect_queries(t, "_dmarc.a.b.example.com/TXT _dmarc.b.example.com/TXT");
}

/* }====================================================== */

/* ** {======================================================
** Alignment
** ======================================================= */

/* [ALN-8]: From news.example.com, d=example.com: relaxed yes, strict no. */
static void eval__aln8_parent_d_relaxed_only(void **state)
{
    T *t = *state;
    static const fake_rr zone_r[] = {
        {"_dmarc.example.com", TXT, NOERR, {"v=DMARC1; p=reject"}},
        {NULL, 0, NOERR, {NULL}},
    };
    static const fake_rr zone_s[] = {
        {"_dmarc.example.com", TXT, NOERR, {"v=DMARC1; p=reject; adkim=s"}},
        {NULL, 0, NOERR, {NULL}},
    };
    from(t, "user@news.example.com");
    dkim(t, "example.com", DMARC_AUTH_PASS);
    run(t, zone_r);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    dmarc_eval_reset(t->e);
    from(t, "user@news.example.com");
    dkim(t, "example.com", DMARC_AUTH_PASS);
    run(t, zone_s);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
}

/* [ALN-8]: MAIL FROM cbg.bounces.example.com, From example.com: relaxed. */
static void eval__aln8_bounce_subdomain_spf(void **state)
{
    T *t = *state;
    from(t, "user@example.com");
    spf(t, "cbg.bounces.example.com", DMARC_AUTH_PASS);
    run(t, zone_v17);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    assert_true(t->v.spf_aligned);
    assert_int_equal(dmarc_eval_spf_alignment(t->e), DMARC_ALIGN_RELAXED);
}

/* [ALN-8]: foo.example.net vs news.example.com: never; no common TLD, no
** walk at all [ALN-5]. */
static void eval__aln8_different_tld_no_walk(void **state)
{
    T *t = *state;
    from(t, "user@news.example.com");
    dkim(t, "foo.example.net", DMARC_AUTH_PASS);
    spf(t, "foo.example.net", DMARC_AUTH_PASS);
    run(t, zone_v17);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    expect_queries(t, "_dmarc.news.example.com/TXT _dmarc.example.com/TXT _dmarc.com/TXT");
}

/* Whole labels only: x.com never aligns with attacker.com. */
static void eval__label_boundary_x_com_attacker_com(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.x.com", TXT, NOERR, {"v=DMARC1; p=reject"}},
        {NULL, 0, NOERR, {NULL}},
    };
    from(t, "user@x.com");
    dkim(t, "attacker.com", DMARC_AUTH_PASS);
    spf(t, "mail.attacker.com", DMARC_AUTH_PASS);
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    /* The author's Org Domain (x.com) is not a suffix of either: no
    ** identifier walk. */
    expect_queries(t, "_dmarc.x.com/TXT _dmarc.com/TXT");
}

/* [ALN-6] in rfc9989 terms: d=com cannot share example.com's Org Domain. */
static void eval__public_suffix_dkim_rfc9989(void **state)
{
    T *t = *state;
    from(t, "user@example.com");
    dkim(t, "com", DMARC_AUTH_PASS);
    run(t, zone_v17);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
}

/* [ALN-6] rfc7489 with the PSL: d=com never aligns relaxed; a subdomain of
** the same registered domain does. */
static void eval__public_suffix_dkim_rfc7489(void **state)
{
    T *t = *state;
    t_mode(t, DMARC_MODE_RFC7489);
    from(t, "user@mail.example.com");
    dkim(t, "com", DMARC_AUTH_PASS);
    run(t, zone_v17);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    expect_str(t->v.policy_domain, "example.com");
    expect_str(t->v.org_domain, "example.com");
    assert_int_equal(t->v.policy_tag, DMARC_POLICY_TAG_SP);
    expect_queries(t, "_dmarc.mail.example.com/TXT _dmarc.example.com/TXT");

    dmarc_eval_reset(t->e);
    from(t, "user@mail.example.com");
    dkim(t, "com", DMARC_AUTH_PASS);
    dkim(t, "bounce.example.com", DMARC_AUTH_PASS);
    run(t, zone_v17);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    assert_int_equal(dmarc_eval_dkim_alignment(t->e, 0), DMARC_ALIGN_NONE);
    assert_int_equal(dmarc_eval_dkim_alignment(t->e, 1), DMARC_ALIGN_RELAXED);
}

/* rfc7489 [DISC-2]: no record at the author, the PSL Org Domain's record. A
** failing PSL callback gives temperror. */
static void eval__rfc7489_psl_failure_temperror(void **state)
{
    T *t = *state;
    t_mode(t, DMARC_MODE_RFC7489);
    t->psl_fail = 1;
    from(t, "user@mail.example.com");
    run(t, zone_v17);
    assert_int_equal(t->v.result, DMARC_RESULT_TEMPERROR);
    assert_non_null(t->v.error);
}

/* [ALN-2]: only pass results are identifiers. */
static void eval__non_pass_results_never_align(void **state)
{
    T *t = *state;
    from(t, "user@ex.com");
    dkim(t, "ex.com", DMARC_AUTH_FAIL);
    dkim(t, "ex.com", DMARC_AUTH_NEUTRAL);
    dkim(t, "ex.com", DMARC_AUTH_POLICY);
    dkim(t, "ex.com", DMARC_AUTH_PERMERROR);
    spf(t, "ex.com", DMARC_AUTH_SOFTFAIL);
    run(t, zone_ex_reject);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_false(t->v.dkim_aligned);
    assert_false(t->v.spf_aligned);
}

/* [ALN-1]: HELO counts only without a MAIL FROM result. */
static void eval__helo_only_without_mail_from(void **state)
{
    T *t = *state;
    from(t, "user@ex.com");
    spf(t, "other.net", DMARC_AUTH_PASS);
    helo(t, "ex.com", DMARC_AUTH_PASS);
    run(t, zone_ex_reject);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);

    dmarc_eval_reset(t->e);
    from(t, "user@ex.com");
    helo(t, "ex.com", DMARC_AUTH_PASS);
    run(t, zone_ex_reject);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    assert_true(t->v.spf_aligned);
}

/* [ALN-7] [DISC-10]: a DNS error in one identifier's walk does not matter
** when another identifier aligns; alone it makes temperror. */
/* [AGG-7] [DISC-10]: after an exact-match pass, the relaxed checks that only
** complete the picture stay within DMARC_EVAL_MAX_QUERIES: thirty-two
** signatures of unrelated domains under one TLD never raise the query limit
** and never cost the pass. */
static void eval__alignment_completion_bounded(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1; p=reject"}},
        {NULL, 0, NOERR, {NULL}},
    };
    char name[64];
    size_t i;

    from(t, "user@ex.com");
    spf(t, "ex.com", DMARC_AUTH_PASS);
    for (i = 0; i < DMARC_MAX_DKIM; i++) {
        snprintf(name, sizeof name, "a.b.c.d.e.f.g.h.sig%u.ex.com", (unsigned)i);
        dkim(t, name, DMARC_AUTH_PASS);
    }
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    assert_true(t->v.spf_aligned);
    assert_true(t->v.dkim_aligned);
    assert_false(dmarc_eval_flags(t->e) & DMARC_FLAG_QUERY_LIMIT);
    assert_true(dmarc_eval_query_count(t->e) <= DMARC_EVAL_MAX_QUERIES);
    /* The first signatures were checked (relaxed: same Org Domain), the
    ** budget stopped the rest before the limit. */
    assert_int_equal(dmarc_eval_dkim_alignment(t->e, 0), DMARC_ALIGN_RELAXED);
    assert_int_equal(dmarc_eval_dkim_alignment(t->e, DMARC_MAX_DKIM - 1), DMARC_ALIGN_NONE);
}

/* [FROM-6] [OPEN-5]: mailboxes beyond DMARC_FROM_MAX_MAILBOXES are never
** read, so a From field that has more cannot pass, however well the first
** ones align; a field the parser had to repair is flagged. */
static void eval__from_mailbox_cap_never_passes(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.good.com", TXT, NOERR, {"v=DMARC1; p=reject"}},
        {NULL, 0, NOERR, {NULL}},
    };
    static char raw[DMARC_FROM_MAX_MAILBOXES * 16 + 64];
    size_t i, off = 0;

    for (i = 0; i < DMARC_FROM_MAX_MAILBOXES; i++)
        off += (size_t)snprintf(raw + off, sizeof raw - off, "u%u@good.com, ", (unsigned)i);
    snprintf(raw + off, sizeof raw - off, "ceo@evil.com");
    from(t, raw);
    dkim(t, "good.com", DMARC_AUTH_PASS);
    run(t, zone);
    assert_int_not_equal(t->v.result, DMARC_RESULT_PASS);
    assert_true(dmarc_eval_flags(t->e) & DMARC_FLAG_TOO_MANY_DOMAINS);

    dmarc_eval_reset(t->e);
    from(t, "broken (comment <user@good.com>");
    run(t, zone);
    assert_true(dmarc_eval_flags(t->e) & (DMARC_FLAG_FROM_SYNTAX | DMARC_FLAG_NO_AUTHOR_DOMAIN));
}

/* options.full_org_walk: the author's Org Domain is found by the whole walk
** even when the result does not need it ([ALN-5] would skip it), and a DNS
** failure on that walk cannot touch the settled result [DISC-10]. */
static void eval__full_org_walk_option(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.shop.example", TXT, NOERR, {"v=DMARC1; p=reject"}},
        {"_dmarc.example", TXT, NOERR, {"v=DMARC1; p=none"}},
        {NULL, 0, NOERR, {NULL}},
    };
    static const fake_rr broken[] = {
        {"_dmarc.shop.example", TXT, NOERR, {"v=DMARC1; p=reject"}},
        {"_dmarc.example", 0, DMARC_RCODE_SERVFAIL, {NULL}},
        {NULL, 0, NOERR, {NULL}},
    };

    from(t, "user@shop.example");
    run(t, zone);
    /* Discovery stopped at the author's own record: the Org Domain is not
    ** known, and the author domain is never reported in its place [DISC-6]. */
    assert_null(t->v.org_domain);
    expect_queries(t, "_dmarc.shop.example/TXT");

    t->opt.full_org_walk = true;
    t_mode(t, DMARC_MODE_RFC9989);
    from(t, "user@shop.example");
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    expect_str(t->v.org_domain, "example"); /* the literal [DISC-6] rule */
    expect_str(t->v.policy_domain, "shop.example");
    assert_int_equal(t->v.policy_tag, DMARC_POLICY_TAG_P);
    expect_queries(t, "_dmarc.shop.example/TXT _dmarc.example/TXT");

    dmarc_eval_reset(t->e);
    from(t, "user@shop.example");
    run(t, broken);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_int_equal(t->v.applied, DMARC_POLICY_REJECT);
    assert_null(t->v.org_domain);
}

/* [DISC-6]: never a wrong Org Domain. mail.contoso.net publishes its own
** record below contoso.net's: without a walk the Org Domain is unknown
** (null); options.failure_org_walk finds the real one for an enforced
** failure (a site override keyed by organisation acts on it), not for a
** pass or an applied none; an own record with psd=n names itself at no cost. */
static void eval__org_domain_never_the_author_by_default(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.mail.contoso.net", TXT, NOERR, {"v=DMARC1; p=reject"}},
        {"_dmarc.contoso.net", TXT, NOERR, {"v=DMARC1; p=none"}},
        {"_dmarc.none.contoso.net", TXT, NOERR, {"v=DMARC1; p=none"}},
        {"_dmarc.own.contoso.net", TXT, NOERR, {"v=DMARC1; p=reject; psd=n"}},
        {"_dmarc.broken.example", TXT, NOERR, {"v=DMARC1; p=reject"}},
        {"_dmarc.example", 0, DMARC_RCODE_SERVFAIL, {NULL}},
        {NULL, 0, NOERR, {NULL}},
    };

    from(t, "ceo@mail.contoso.net");
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    expect_str(t->v.policy_domain, "mail.contoso.net");
    assert_null(t->v.org_domain);
    expect_queries(t, "_dmarc.mail.contoso.net/TXT");

    dmarc_eval_reset(t->e);
    from(t, "ceo@own.contoso.net");
    run(t, zone);
    expect_str(t->v.org_domain, "own.contoso.net"); /* psd=n: rule (1) */
    expect_queries(t, "_dmarc.own.contoso.net/TXT");

    t->opt.failure_org_walk = true;
    t_mode(t, DMARC_MODE_RFC9989);
    from(t, "ceo@mail.contoso.net");
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_int_equal(t->v.applied, DMARC_POLICY_REJECT);
    expect_str(t->v.policy_domain, "mail.contoso.net");
    expect_str(t->v.org_domain, "contoso.net");
    expect_queries(t, "_dmarc.mail.contoso.net/TXT _dmarc.contoso.net/TXT _dmarc.net/TXT");

    /* A pass needs no Org Domain: no walk, none reported. */
    dmarc_eval_reset(t->e);
    from(t, "ceo@mail.contoso.net");
    dkim(t, "mail.contoso.net", DMARC_AUTH_PASS);
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    assert_null(t->v.org_domain);
    expect_queries(t, "_dmarc.mail.contoso.net/TXT");

    /* An applied none is not acted on: no walk either. */
    dmarc_eval_reset(t->e);
    from(t, "ceo@none.contoso.net");
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_int_equal(t->v.applied, DMARC_POLICY_NONE);
    assert_null(t->v.org_domain);

    /* The walk fails: the result stands, the Org Domain stays unknown. */
    dmarc_eval_reset(t->e);
    from(t, "ceo@broken.example");
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_int_equal(t->v.applied, DMARC_POLICY_REJECT);
    assert_null(t->v.org_domain);
}

static void eval__alignment_walk_servfail(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1; p=reject"}},
        {"_dmarc.bad.ex.com", 0, DMARC_RCODE_SERVFAIL, {NULL}},
        {NULL, 0, NOERR, {NULL}},
    };
    from(t, "user@ex.com");
    dkim(t, "bad.ex.com", DMARC_AUTH_PASS);
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_TEMPERROR);
    assert_true(t->v.has_policy);
    assert_int_equal(t->v.applied, DMARC_POLICY_NONE);

    dmarc_eval_reset(t->e);
    from(t, "user@ex.com");
    dkim(t, "bad.ex.com", DMARC_AUTH_PASS);
    dkim(t, "good.ex.com", DMARC_AUTH_PASS);
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);

    /* An exact match settles the result before any walk: the walks made
    ** afterwards only complete the alignment picture for reports
    ** [AGG-7], so their failure cannot turn the pass into a temperror
    ** [DISC-10]; the signature they could not check stays unaligned. */
    dmarc_eval_reset(t->e);
    from(t, "user@ex.com");
    dkim(t, "bad.ex.com", DMARC_AUTH_PASS);
    spf(t, "ex.com", DMARC_AUTH_PASS);
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    assert_true(t->v.spf_aligned);
    assert_false(t->v.dkim_aligned);
    assert_int_equal(dmarc_eval_dkim_alignment(t->e, 0), DMARC_ALIGN_NONE);
    expect_queries(t, "_dmarc.ex.com/TXT _dmarc.com/TXT _dmarc.bad.ex.com/TXT");
}

/* [ALN-4]: each identifier gets its own walk: a psd=n record under the
** author's Org Domain separates the identifier. */
static void eval__identifier_own_walk(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.example.com", TXT, NOERR, {"v=DMARC1; p=reject"}},
        {"_dmarc.tenant.example.com", TXT, NOERR, {"v=DMARC1; p=none; psd=n"}},
        {NULL, 0, NOERR, {NULL}},
    };
    from(t, "user@example.com");
    dkim(t, "mail.tenant.example.com", DMARC_AUTH_PASS);
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    expect_queries(t, "_dmarc.example.com/TXT _dmarc.com/TXT _dmarc.mail.tenant.example.com/TXT "
                      "_dmarc.tenant.example.com/TXT");
}

/* }====================================================== */

/* ** {======================================================
** Policy selection [EVAL-6] [DISC-12] [POL-4]
** ======================================================= */

/* No np: np = sp, so no existence test is made. */
static void eval__no_existence_test_without_np(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1; p=reject; sp=quarantine"}},
        {NULL, 0, NOERR, {NULL}},
    };
    from(t, "user@gone.ex.com");
    run(t, zone);
    assert_int_equal(t->v.policy_tag, DMARC_POLICY_TAG_SP);
    assert_int_equal(t->v.policy, DMARC_POLICY_QUARANTINE);
    expect_queries(t, "_dmarc.gone.ex.com/TXT _dmarc.ex.com/TXT _dmarc.com/TXT");
}

/* The existence test is for failures only; a pass reports sp untested. */
static void eval__no_existence_test_on_pass(void **state)
{
    T *t = *state;
    from(t, "user@x.y.ex.com");
    dkim(t, "ex.com", DMARC_AUTH_PASS);
    run(t, zone_v12);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    assert_int_equal(t->v.policy_tag, DMARC_POLICY_TAG_SP);
    assert_int_equal(t->v.applied, DMARC_POLICY_NONE);
    assert_true(t->v.author_exists);
}

/* [DISC-10]: a DNS error in the existence test: temperror. */
static void eval__existence_servfail_temperror(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1; p=reject; sp=quarantine; np=reject"}},
        {"x.ex.com", DMARC_QTYPE_A, DMARC_RCODE_SERVFAIL, {NULL}},
        {NULL, 0, NOERR, {NULL}},
    };
    from(t, "user@x.ex.com");
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_TEMPERROR);
    assert_int_equal(t->v.applied, DMARC_POLICY_NONE);
}

/* rfc7489 existence: data for any of A/AAAA/MX means it exists. */
static void eval__rfc7489_existence_mx_data(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1; p=reject; sp=quarantine; np=reject"}},
        {"x.ex.com", DMARC_QTYPE_MX, NOERR, {"10 mx.ex.com"}},
        {NULL, 0, NOERR, {NULL}},
    };
    t_mode(t, DMARC_MODE_RFC7489);
    from(t, "user@x.ex.com");
    run(t, zone);
    assert_int_equal(t->v.policy_tag, DMARC_POLICY_TAG_SP);
    assert_true(t->v.author_exists);
    expect_queries(t, "_dmarc.x.ex.com/TXT _dmarc.ex.com/TXT x.ex.com/A x.ex.com/AAAA "
                      "x.ex.com/MX");
}

/* rfc7489 existence: an NXDOMAIN on A settles it. */
static void eval__rfc7489_existence_nxdomain_on_a(void **state)
{
    T *t = *state;
    t_mode(t, DMARC_MODE_RFC7489);
    from(t, "user@x.y.ex.com");
    run(t, zone_v12);
    assert_int_equal(t->v.policy_tag, DMARC_POLICY_TAG_NP);
    expect_queries(t, "_dmarc.x.y.ex.com/TXT _dmarc.ex.com/TXT x.y.ex.com/A");
}

/* [POL-4]: t=y on quarantine gives none; on none nothing changes. */
static void eval__testing_quarantine_and_none(void **state)
{
    T *t = *state;
    static const fake_rr zone_q[] = {
        {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1; p=quarantine; t=y"}},
        {NULL, 0, NOERR, {NULL}},
    };
    static const fake_rr zone_n[] = {
        {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1; p=none; t=y"}},
        {NULL, 0, NOERR, {NULL}},
    };
    from(t, "user@ex.com");
    run(t, zone_q);
    assert_int_equal(t->v.applied, DMARC_POLICY_NONE);
    assert_int_equal(t->v.reason, DMARC_REASON_POLICY_TEST_MODE);
    dmarc_eval_reset(t->e);
    from(t, "user@ex.com");
    run(t, zone_n);
    assert_int_equal(t->v.applied, DMARC_POLICY_NONE);
    assert_int_equal(t->v.reason, DMARC_REASON_NONE);
    assert_true(t->v.testing);
}

/* rfc7489 ignores t [MODE-1]. */
static void eval__rfc7489_ignores_t(void **state)
{
    T *t = *state;
    t_mode(t, DMARC_MODE_RFC7489);
    from(t, "user@ex.com");
    run(t, zone_v14);
    assert_int_equal(t->v.applied, DMARC_POLICY_REJECT);
    assert_false(t->v.testing);
}

/* }====================================================== */

/* ** {======================================================
** Several author domains [OPEN-5] [FROM-4..7] [POL-7]
** ======================================================= */

static const fake_rr zone_two[] = {
    {"_dmarc.a.com", TXT, NOERR, {"v=DMARC1; p=quarantine"}},
    {"_dmarc.b.com", TXT, NOERR, {"v=DMARC1; p=reject"}},
    {"_dmarc.c.com", TXT, NOERR, {"v=DMARC1; p=reject; t=y"}},
    {"_dmarc.d.com", 0, DMARC_RCODE_SERVFAIL, {NULL}},
    {"_dmarc.e.com", TXT, NOERR, {"v=DMARC1; p=none"}},
    {NULL, 0, NOERR, {NULL}},
};

static void eval__multi_domain_all_pass(void **state)
{
    T *t = *state;
    from(t, "x@a.com, y@b.com");
    dkim(t, "a.com", DMARC_AUTH_PASS);
    dkim(t, "b.com", DMARC_AUTH_PASS);
    run(t, zone_two);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    assert_int_equal(dmarc_eval_domain_count(t->e), 2);
    assert_int_not_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_MULTIPLE_DOMAINS, 0);
}

/* The strictest applied policy among the failures decides, first on ties. */
static void eval__multi_domain_strictest_failure(void **state)
{
    T *t = *state;
    from(t, "x@a.com, y@c.com, z@b.com");
    run(t, zone_two);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    expect_str(t->v.author_domain, "b.com");
    assert_int_equal(t->v.applied, DMARC_POLICY_REJECT);

    /* c.com applies quarantine (t=y), a.com quarantine: first wins. */
    dmarc_eval_reset(t->e);
    from(t, "x@c.com, y@a.com");
    run(t, zone_two);
    expect_str(t->v.author_domain, "c.com");
}

/* A failure beats a pass, and a temperror when it applies a policy;
** temperror beats pass. */
static void eval__multi_domain_precedence(void **state)
{
    T *t = *state;
    from(t, "x@d.com, y@a.com, z@b.com");
    dkim(t, "b.com", DMARC_AUTH_PASS);
    run(t, zone_two);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    expect_str(t->v.author_domain, "a.com");

    dmarc_eval_reset(t->e);
    from(t, "x@b.com, y@d.com");
    dkim(t, "b.com", DMARC_AUTH_PASS);
    run(t, zone_two);
    assert_int_equal(t->v.result, DMARC_RESULT_TEMPERROR);
    expect_str(t->v.author_domain, "d.com");

    /* A failure that applies nothing (p=none) does not outrank a temperror:
    ** d.com's policy is unknown, and a site deferring on temperror must not
    ** accept because a monitoring-only domain was added to the From. */
    dmarc_eval_reset(t->e);
    from(t, "x@e.com, y@d.com");
    run(t, zone_two);
    assert_int_equal(t->v.result, DMARC_RESULT_TEMPERROR);
    expect_str(t->v.author_domain, "d.com");

    /* A failure that applies quarantine still does. */
    dmarc_eval_reset(t->e);
    from(t, "x@d.com, y@e.com, z@a.com");
    run(t, zone_two);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    expect_str(t->v.author_domain, "a.com");

    /* A pass and a none: not all passed: none. */
    dmarc_eval_reset(t->e);
    from(t, "x@b.com, y@nothing.com");
    dkim(t, "b.com", DMARC_AUTH_PASS);
    run(t, zone_two);
    assert_int_equal(t->v.result, DMARC_RESULT_NONE);
    expect_str(t->v.author_domain, "nothing.com");
}

/* [FROM-7]: the same domain twice is one domain. */
static void eval__same_domain_twice_is_one(void **state)
{
    T *t = *state;
    from(t, "x@A.com, y@a.com.");
    dkim(t, "a.com", DMARC_AUTH_PASS);
    run(t, zone_two);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    assert_int_equal(dmarc_eval_domain_count(t->e), 1);
    assert_int_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_MULTIPLE_DOMAINS, 0);
}

/* [FROM-6]: more domains than the cap: the rest unchecked, never a pass;
** the strictest requested policy, sp/p as for a failure. */
static void eval__too_many_domains_never_pass(void **state)
{
    T *t = *state;
    t->opt.max_author_domains = 2;
    t_mode(t, DMARC_MODE_RFC9989);
    from(t, "x@a.com, y@b.com, z@c.com");
    dkim(t, "a.com", DMARC_AUTH_PASS);
    dkim(t, "b.com", DMARC_AUTH_PASS);
    run(t, zone_two);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    /* [OPEN-5]: c.com was not evaluated; it counts as failing at reject,
    ** and the verdict names it and the bound. */
    expect_str(t->v.author_domain, "c.com");
    assert_null(t->v.policy_domain);
    assert_null(t->v.record);
    assert_int_equal(t->v.policy, DMARC_POLICY_REJECT);
    assert_int_equal(t->v.applied, DMARC_POLICY_REJECT);
    assert_int_equal(t->v.reason, DMARC_REASON_TOO_MANY_DOMAINS);
    assert_non_null(t->v.error);
    assert_int_equal(dmarc_eval_domain_count(t->e), 2);
    assert_int_not_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_TOO_MANY_DOMAINS, 0);
}

/* [OPEN-5]: bounds never open a door. Eight harmless domains (no record,
** or p=none failing) before a spoofed p=reject domain: the ninth is not
** evaluated and counts as failing at reject, never none. A query limit hit
** on an attacker's own domain leaves the next ones unevaluated: the same. */
static void eval__unevaluated_counts_as_failing(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.h0.example", TXT, NOERR, {"v=DMARC1; p=none"}},
        {"_dmarc.example.com", TXT, NOERR, {"v=DMARC1; p=reject"}},
        {NULL, 0, NOERR, {NULL}},
    };
    static char names[DMARC_MAX_DKIM][2][48];
    static fake_rr burn[DMARC_MAX_DKIM + 3];
    size_t i;

    from(t, "u@h0.example, u@h1.example, u@h2.example, u@h3.example, u@h4.example, "
            "u@h5.example, u@h6.example, u@h7.example, ceo@example.com");
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_int_equal(t->v.applied, DMARC_POLICY_REJECT);
    assert_int_equal(t->v.reason, DMARC_REASON_TOO_MANY_DOMAINS);
    expect_str(t->v.author_domain, "example.com");

    /* Nine From fields: the ninth is not read. */
    dmarc_eval_reset(t->e);
    for (i = 0; i < DMARC_FROM_MAX_FIELDS; i++)
        from(t, "u@h1.example");
    assert_int_equal(dmarc_eval_add_from(t->e, "ceo@example.com", 15), DMARC_ERR_LIMIT);
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_int_equal(t->v.applied, DMARC_POLICY_REJECT);
    assert_int_equal(t->v.reason, DMARC_REASON_TOO_MANY_FROM_FIELDS);
    assert_null(t->v.author_domain);

    /* The attacker's own a.example burns the query budget with signatures
    ** that each need a walk; example.com then gets no answer at all. */
    dmarc_eval_reset(t->e);
    burn[0].name = "_dmarc.a.example";
    burn[0].type = TXT;
    burn[0].txt[0] = "v=DMARC1; p=none";
    burn[1].name = "_dmarc.example.com";
    burn[1].type = TXT;
    burn[1].txt[0] = "v=DMARC1; p=reject";
    from(t, "u@a.example, ceo@example.com");
    for (i = 0; i < DMARC_MAX_DKIM; i++) {
        snprintf(names[i][0], sizeof names[i][0], "_dmarc.d%zu.a.example", i);
        snprintf(names[i][1], sizeof names[i][1], "x.d%zu.a.example", i);
        burn[i + 2].name = names[i][0];
        burn[i + 2].type = TXT;
        burn[i + 2].txt[0] = "v=DMARC1; p=none; psd=n";
        dkim(t, names[i][1], DMARC_AUTH_PASS);
    }
    burn[DMARC_MAX_DKIM + 2].name = NULL;
    run(t, burn);
    assert_int_not_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_QUERY_LIMIT, 0);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_int_equal(t->v.applied, DMARC_POLICY_REJECT);
    assert_int_equal(t->v.reason, DMARC_REASON_QUERY_LIMIT);

    /* Two signatures fewer: the budget runs out in the middle of the walk
    ** from mail.example.com, the domain after the attacker's. */
    dmarc_eval_reset(t->e);
    from(t, "u@a.example, ceo@mail.example.com");
    for (i = 0; i < DMARC_MAX_DKIM - 2; i++)
        dkim(t, names[i][1], DMARC_AUTH_PASS);
    run(t, burn);
    assert_int_not_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_QUERY_LIMIT, 0);
    assert_int_equal(dmarc_eval_query_count(t->e), DMARC_EVAL_MAX_QUERIES);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_int_equal(t->v.applied, DMARC_POLICY_REJECT);
    assert_int_equal(t->v.reason, DMARC_REASON_QUERY_LIMIT);
}

/* RFC 9989 §11.5: a From that does not parse strictly but shows one address
** in a mail reader is evaluated on that domain, flagged, never a pass; one
** that shows nothing unambiguous adds no domain. */
static void eval__lenient_from(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.example.com", TXT, NOERR, {"v=DMARC1; p=reject"}},
        {NULL, 0, NOERR, {NULL}},
    };
    static const char *const fields[] = {
        "CEO\r <ceo@example.com>",
        "<ceo@example.com> CEO",
        "ceo@example.com (CEO",
    };
    size_t i;

    for (i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        dmarc_eval_reset(t->e);
        from(t, fields[i]);
        dkim(t, "example.com", DMARC_AUTH_PASS);
        run(t, zone);
        assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
        expect_str(t->v.author_domain, "example.com");
        assert_int_equal(t->v.applied, DMARC_POLICY_REJECT);
        assert_int_not_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_FROM_LENIENT, 0);
        assert_int_not_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_FROM_SYNTAX, 0);
    }
    dmarc_eval_reset(t->e);
    from(t, "\"ceo@example.com\" <x@evil.example");
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_NONE);
    assert_int_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_FROM_LENIENT, 0);
    assert_int_not_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_NO_AUTHOR_DOMAIN, 0);
    assert_int_not_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_FROM_UNREAD, 0);
    /* Read strictly, or leniently: not unread. */
    dmarc_eval_reset(t->e);
    from(t, "ceo@example.com (CEO");
    run(t, zone);
    assert_int_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_FROM_UNREAD, 0);
}

/* [FROM-4]: no From at all; group syntax only; an unparsable field. */
static void eval__no_from_and_no_domain(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {{NULL, 0, NOERR, {NULL}}};
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_NONE);
    expect_str(t->v.author_domain, NULL);
    assert_int_not_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_NO_FROM, 0);
    assert_int_equal(dmarc_eval_query_count(t->e), 0);

    dmarc_eval_reset(t->e);
    from(t, "undisclosed-recipients:;");
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_NONE);
    assert_int_not_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_NO_AUTHOR_DOMAIN, 0);
    assert_int_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_NO_FROM, 0);

    dmarc_eval_reset(t->e);
    from(t, "<<<@@@");
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_NONE);
    assert_int_not_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_FROM_SYNTAX, 0);
    assert_int_not_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_NO_AUTHOR_DOMAIN, 0);
}

/* Author domains given directly are normalized [FROM-2]; bad ones refused. */
static void eval__add_author_domain(void **state)
{
    T *t = *state;
    assert_int_equal(dmarc_eval_add_author_domain(t->e, "EX.COM.", 7), DMARC_OK);
    assert_int_equal(dmarc_eval_add_author_domain(t->e, "bad..name", 9), DMARC_ERR_SYNTAX);
    dkim(t, "ex.com", DMARC_AUTH_PASS);
    run(t, zone_ex_reject);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    expect_str(t->v.author_domain, "ex.com");
}

/* }====================================================== */

/* The evaluation takes already-normalized names as they are; whatever it
** takes must be exactly what dmarc_domain_normalize gives [FROM-2]. */
static void eval__names_normalized_like_domain_normalize(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {{NULL, 0, NOERR, {NULL}}};
    char l63[64], l64[65], n253[254], n254[255];
    const char *names[] = {
        "ex.com",
        "EX.com",
        "ex.com.",
        "ex..com",
        ".ex.com",
        "-a.com",
        "a-.com",
        "a-b.com",
        "a_b.com",
        "xn--4ca0b.example",
        "xn--zz.example",
        "1.2.3",
        "a",
        "a b.com",
        "a\x01.com",
        "\xc3\x84\xc3\x96.example",
        l63,
        l64,
        n253,
        n254,
        "",
    };
    size_t i;
    memset(l63, 'a', 63);
    memcpy(l63 + 59, ".com", 5); /* 59 + 4 characters, label of 59 */
    memset(l64, 'b', 64);
    l64[64] = '\0';
    memset(n253, 'c', 253);
    memset(n254, 'd', 254);
    for (i = 49; i < 253; i += 50)
        n253[i] = n254[i] = '.';
    n253[253] = n254[254] = '\0';
    for (i = 0; i < sizeof names / sizeof names[0]; i++) {
        char want[DMARC_DOMAIN_MAX_LEN + 1];
        size_t wlen = 0;
        dmarc_status a, b;
        const char *n = names[i];
        a = dmarc_domain_normalize(n, strlen(n), want, sizeof want, &wlen);
        dmarc_eval_reset(t->e);
        b = dmarc_eval_add_author_domain(t->e, n, strlen(n));
        if (a != DMARC_OK) {
            if (b != DMARC_ERR_SYNTAX)
                fail_msg("\"%s\": normalize %d, evaluation took it (%d)", n, a, b);
            continue;
        }
        assert_int_equal(b, DMARC_OK);
        run(t, zone);
        expect_str(t->v.author_domain, want);
    }
}

/* ** {======================================================
** The query loop's contract
** ======================================================= */

static void eval__wrong_state_calls(void **state)
{
    T *t = *state;
    dmarc_verdict v;
    size_t len;
    dmarc_qtype type;

    /* Nothing pending yet. */
    assert_null(dmarc_eval_query(t->e, &len, &type));
    assert_int_equal(dmarc_eval_answer(t->e, NOERR, NULL, 0, 0), DMARC_ERR_STATE);
    assert_int_equal(dmarc_eval_verdict(t->e, &v), DMARC_ERR_STATE);
    from(t, "user@ex.com");
    assert_int_equal(dmarc_eval_run(t->e), DMARC_NEED_DNS);
    /* Inputs are closed once the run started. */
    assert_int_equal(dmarc_eval_add_from(t->e, "a@b.c", 5), DMARC_ERR_STATE);
    assert_int_equal(dmarc_eval_add_dkim(t->e, "b.c", 3, "s", 1, DMARC_AUTH_PASS), DMARC_ERR_STATE);
    assert_int_equal(dmarc_eval_add_spf(t->e, "b.c", 3, DMARC_AUTH_PASS, false), DMARC_ERR_STATE);
    assert_int_equal(dmarc_eval_add_author_domain(t->e, "b.c", 3), DMARC_ERR_STATE);
    assert_int_equal(dmarc_eval_set_roll(t->e, 1), DMARC_ERR_STATE);
    assert_int_equal(dmarc_eval_set_now(t->e, 1), DMARC_ERR_STATE);
    /* Run again without answering. */
    assert_int_equal(dmarc_eval_run(t->e), DMARC_ERR_STATE);
    assert_int_equal(dmarc_eval_verdict(t->e, &v), DMARC_ERR_STATE);
    assert_string_equal(dmarc_eval_query(t->e, &len, &type), "_dmarc.ex.com");
    assert_int_equal(len, 13);
    assert_int_equal(type, DMARC_QTYPE_TXT);
    assert_int_equal(dmarc_eval_answer(t->e, DMARC_RCODE_NXDOMAIN, NULL, 0, 0), DMARC_OK);
    /* Answer twice. */
    assert_int_equal(dmarc_eval_answer(t->e, DMARC_RCODE_NXDOMAIN, NULL, 0, 0), DMARC_ERR_STATE);
    assert_null(dmarc_eval_query(t->e, &len, &type));
    t->z.rr = zone_ex_reject;
    assert_int_equal(fake_run(t->e, &t->z), DMARC_OK);
    /* Done: run is harmless, answer is not allowed. */
    assert_int_equal(dmarc_eval_run(t->e), DMARC_OK);
    assert_int_equal(dmarc_eval_answer(t->e, NOERR, NULL, 0, 0), DMARC_ERR_STATE);
    assert_int_equal(dmarc_eval_verdict(t->e, &v), DMARC_OK);
    assert_int_equal(v.result, DMARC_RESULT_NONE);
}

static void eval__null_and_bad_inputs(void **state)
{
    T *t = *state;
    dmarc_status st;
    dmarc_verdict v;
    dmarc_txt bad = {NULL, 3};

    assert_null(dmarc_ctx_new(NULL, &st));
    assert_int_equal(st, DMARC_ERR_INVAL);
    assert_null(dmarc_eval_new(NULL, NULL, &st));
    assert_int_equal(st, DMARC_ERR_INVAL);
    assert_null(dmarc_cache_new(NULL, 0, &st));
    assert_int_equal(st, DMARC_ERR_INVAL);
    dmarc_ctx_free(NULL);
    dmarc_eval_free(NULL);
    dmarc_cache_free(NULL);
    dmarc_eval_reset(NULL);
    dmarc_cache_clear(NULL);
    dmarc_options_init(NULL);
    assert_int_equal(dmarc_cache_size(NULL), 0);
    assert_int_equal(dmarc_eval_run(NULL), DMARC_ERR_INVAL);
    assert_null(dmarc_eval_query(NULL, NULL, NULL));
    assert_int_equal(dmarc_eval_answer(NULL, NOERR, NULL, 0, 0), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_eval_add_from(NULL, "a", 1), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_eval_add_from(t->e, NULL, 1), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_eval_add_dkim(t->e, NULL, 2, NULL, 0, DMARC_AUTH_PASS), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_eval_add_dkim(t->e, "a.b", 3, NULL, 2, DMARC_AUTH_PASS),
                     DMARC_ERR_INVAL);
    assert_int_equal(dmarc_eval_add_dkim(t->e, "a.b", 3, "s", 1, (dmarc_auth)99), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_eval_add_spf(t->e, NULL, 1, DMARC_AUTH_PASS, false), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_eval_add_spf(t->e, "a.b", 3, (dmarc_auth)-1, false), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_eval_add_author_domain(t->e, NULL, 2), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_eval_set_roll(t->e, 100), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_eval_set_roll(NULL, 1), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_eval_set_now(NULL, 1), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_eval_verdict(NULL, &v), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_eval_verdict(t->e, NULL), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_eval_domain_verdict(NULL, 0, &v), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_eval_flags(NULL), 0);
    assert_int_equal(dmarc_eval_domain_count(NULL), 0);
    assert_int_equal(dmarc_eval_query_count(NULL), 0);
    assert_null(dmarc_eval_query_at(NULL, 0, NULL, NULL));
    assert_int_equal(dmarc_eval_dkim_alignment(NULL, 0), DMARC_ALIGN_NONE);
    assert_int_equal(dmarc_eval_spf_alignment(NULL), DMARC_ALIGN_NONE);

    /* Bad answers are refused and change nothing. */
    from(t, "user@ex.com");
    assert_int_equal(dmarc_eval_run(t->e), DMARC_NEED_DNS);
    assert_int_equal(dmarc_eval_answer(t->e, (dmarc_rcode)42, NULL, 0, 0), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_eval_answer(t->e, NOERR, NULL, 1, 0), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_eval_answer(t->e, NOERR, &bad, 1, 0), DMARC_ERR_INVAL);
    assert_non_null(dmarc_eval_query(t->e, NULL, NULL));
    assert_int_equal(dmarc_eval_domain_verdict(t->e, 0, &v), DMARC_ERR_STATE);
    t->z.rr = zone_ex_reject;
    assert_int_equal(fake_run(t->e, &t->z), DMARC_OK);
    assert_int_equal(dmarc_eval_domain_verdict(t->e, 5, &v), DMARC_ERR_INVAL);
    assert_null(dmarc_eval_query_at(t->e, 5, NULL, NULL));
    assert_int_equal(dmarc_eval_dkim_alignment(t->e, 40), DMARC_ALIGN_NONE);
}

/* Options are checked [MODE-1] [OPEN-5]. */
static void eval__ctx_options_checked(void **state)
{
    dmarc_options o;
    dmarc_status st;
    dmarc_ctx *c;
    (void)state;
    dmarc_options_init(&o);
    assert_int_equal(o.mode, DMARC_MODE_RFC9989);
    assert_int_equal(o.max_author_domains, DMARC_MAX_AUTHOR_DOMAINS);
    o.mode = DMARC_MODE_RFC7489;
    assert_null(dmarc_ctx_new(&o, &st));
    assert_int_equal(st, DMARC_ERR_INVAL);
    dmarc_options_init(&o);
    o.max_author_domains = 0;
    assert_null(dmarc_ctx_new(&o, &st));
    assert_int_equal(st, DMARC_ERR_INVAL);
    o.max_author_domains = DMARC_MAX_AUTHOR_DOMAINS + 1;
    assert_null(dmarc_ctx_new(&o, &st));
    dmarc_options_init(&o);
    o.mode = (dmarc_mode)7;
    assert_null(dmarc_ctx_new(&o, &st));
    dmarc_options_init(&o);
    c = dmarc_ctx_new(&o, &st);
    assert_non_null(c);
    assert_int_equal(st, DMARC_OK);
    assert_int_equal(dmarc_ctx_mode(c), DMARC_MODE_RFC9989);
    dmarc_ctx_free(c);
}

/* Input limits: DMARC_MAX_DKIM, one MAIL FROM and one HELO result
** (DMARC_MAX_SPF), DMARC_FROM_MAX_FIELDS. */
static void eval__input_limits(void **state)
{
    T *t = *state;
    size_t i;
    for (i = 0; i < DMARC_MAX_DKIM; i++)
        dkim(t, "ex.com", DMARC_AUTH_FAIL);
    assert_int_equal(dmarc_eval_add_dkim(t->e, "ex.com", 6, "s", 1, DMARC_AUTH_PASS),
                     DMARC_ERR_LIMIT);
    spf(t, "ex.com", DMARC_AUTH_FAIL);
    helo(t, "ex.com", DMARC_AUTH_PASS);
    assert_int_equal(dmarc_eval_add_spf(t->e, "ex.com", 6, DMARC_AUTH_PASS, false),
                     DMARC_ERR_LIMIT);
    assert_int_equal(dmarc_eval_add_spf(t->e, "ex.com", 6, DMARC_AUTH_PASS, true), DMARC_ERR_LIMIT);
    for (i = 0; i < DMARC_FROM_MAX_FIELDS; i++)
        from(t, "user@ex.com");
    assert_int_equal(dmarc_eval_add_from(t->e, "user@ex.com", 11), DMARC_ERR_LIMIT);
    run(t, zone_ex_reject);
    /* Only failing results went in: nothing aligned, and never a pass. */
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
    assert_int_not_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_MULTIPLE_FROM, 0);
}

/* DMARC_ANSWER_MAX_RRS: RRs beyond it are ignored. */
static void eval__answer_rr_limit(void **state)
{
    T *t = *state;
    dmarc_txt txt[DMARC_ANSWER_MAX_RRS + 2];
    size_t i;
    for (i = 0; i < DMARC_ANSWER_MAX_RRS + 2; i++) {
        txt[i].data = "junk";
        txt[i].len = 4;
    }
    txt[DMARC_ANSWER_MAX_RRS].data = "v=DMARC1; p=reject";
    txt[DMARC_ANSWER_MAX_RRS].len = 18;
    from(t, "user@ex.com");
    assert_int_equal(dmarc_eval_run(t->e), DMARC_NEED_DNS);
    assert_int_equal(dmarc_eval_answer(t->e, NOERR, txt, DMARC_ANSWER_MAX_RRS + 2, 60), DMARC_OK);
    t->z.rr = zone_ex_reject; /* the rest of the walk */
    assert_int_equal(fake_run(t->e, &t->z), DMARC_OK);
    assert_int_equal(dmarc_eval_verdict(t->e, &t->v), DMARC_OK);
    expect_str(t->v.policy_domain, NULL);
    assert_int_equal(t->v.result, DMARC_RESULT_NONE);
}

/* Answers are copied: the caller's buffer may change right after. */
static void eval__answer_is_copied(void **state)
{
    T *t = *state;
    char buf[32];
    dmarc_txt txt;
    strcpy(buf, "v=DMARC1; p=reject");
    txt.data = buf;
    txt.len = strlen(buf);
    from(t, "user@ex.com");
    assert_int_equal(dmarc_eval_run(t->e), DMARC_NEED_DNS);
    assert_int_equal(dmarc_eval_answer(t->e, NOERR, &txt, 1, 60), DMARC_OK);
    memset(buf, 'x', sizeof buf);
    assert_int_equal(dmarc_eval_run(t->e), DMARC_OK);
    assert_int_equal(dmarc_eval_verdict(t->e, &t->v), DMARC_OK);
    assert_int_equal(t->v.policy, DMARC_POLICY_REJECT);
    assert_non_null(t->v.record);
    assert_int_equal(t->v.record->p, DMARC_POLICY_REJECT);
}

/* DMARC_EVAL_MAX_QUERIES: identifiers that each need two new queries; the
** limit is hit, flagged, and the result is temperror, never a pass. */
static void eval__query_limit(void **state)
{
    T *t = *state;
    static char names[DMARC_MAX_DKIM][2][48];
    static fake_rr zone[DMARC_MAX_DKIM + 2];
    size_t i;

    zone[0].name = "_dmarc.a.example";
    zone[0].type = TXT;
    zone[0].rcode = NOERR;
    zone[0].txt[0] = "v=DMARC1; p=reject";
    from(t, "user@a.example");
    for (i = 0; i < DMARC_MAX_DKIM; i++) {
        /* x.dN.a.example: its walk asks x.dN and dN (psd=n there). */
        snprintf(names[i][0], sizeof names[i][0], "_dmarc.d%zu.a.example", i);
        snprintf(names[i][1], sizeof names[i][1], "x.d%zu.a.example", i);
        zone[i + 1].name = names[i][0];
        zone[i + 1].type = TXT;
        zone[i + 1].rcode = NOERR;
        zone[i + 1].txt[0] = "v=DMARC1; p=none; psd=n";
        dkim(t, names[i][1], DMARC_AUTH_PASS);
    }
    zone[DMARC_MAX_DKIM + 1].name = NULL;
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_TEMPERROR);
    assert_int_not_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_QUERY_LIMIT, 0);
    assert_int_equal(dmarc_eval_query_count(t->e), DMARC_EVAL_MAX_QUERIES);
}

/* DMARC_EVAL_MAX_QUERIES: "never a pass". The limit is hit on the 31st
** identifier; the 32nd (a.example) aligns from answers the memo already
** holds, yet the domain where the limit was hit gives temperror. */
static void eval__query_limit_never_passes(void **state)
{
    T *t = *state;
    static char names[DMARC_MAX_DKIM][2][48];
    static fake_rr zone[DMARC_MAX_DKIM + 3];
    size_t i, n = DMARC_MAX_DKIM - 1;

    zone[0].name = "_dmarc.m.a.example";
    zone[0].type = TXT;
    zone[0].txt[0] = "v=DMARC1; p=reject";
    zone[1].name = "_dmarc.a.example";
    zone[1].type = TXT;
    zone[1].txt[0] = "v=DMARC1; p=quarantine";
    from(t, "user@m.a.example");
    for (i = 0; i < n; i++) {
        snprintf(names[i][0], sizeof names[i][0], "_dmarc.d%zu.a.example", i);
        snprintf(names[i][1], sizeof names[i][1], "x.d%zu.a.example", i);
        zone[i + 2].name = names[i][0];
        zone[i + 2].type = TXT;
        zone[i + 2].txt[0] = "v=DMARC1; p=none; psd=n";
        dkim(t, names[i][1], DMARC_AUTH_PASS);
    }
    zone[n + 2].name = NULL;
    dkim(t, "a.example", DMARC_AUTH_PASS);
    run(t, zone);
    assert_int_not_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_QUERY_LIMIT, 0);
    assert_int_equal(t->v.result, DMARC_RESULT_TEMPERROR);
    assert_int_equal(t->v.applied, DMARC_POLICY_NONE);
    assert_non_null(t->v.error);

    /* The same message with one identifier less stays under the limit
    ** and passes. */
    dmarc_eval_reset(t->e);
    from(t, "user@m.a.example");
    for (i = 1; i < n; i++)
        dkim(t, names[i][1], DMARC_AUTH_PASS);
    dkim(t, "a.example", DMARC_AUTH_PASS);
    run(t, zone);
    assert_int_equal(dmarc_eval_flags(t->e) & DMARC_FLAG_QUERY_LIMIT, 0);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
}

/* Names too long for the DNS are not asked: `_dmarc.` + 250 characters. */
static void eval__overlong_query_name_not_asked(void **state)
{
    T *t = *state;
    char dom[251];
    static const fake_rr zone[] = {{NULL, 0, NOERR, {NULL}}};
    size_t i;
    for (i = 0; i < 250; i++)
        dom[i] = (i % 50 == 49) ? '.' : 'a';
    dom[250] = '\0';
    memcpy(dom + 246, ".com", 4);
    assert_int_equal(dmarc_eval_add_author_domain(t->e, dom, 250), DMARC_OK);
    run(t, zone);
    assert_int_equal(t->v.result, DMARC_RESULT_NONE);
    /* The first name the walk can ask is the 5-label parent... */
    for (i = 0; i < dmarc_eval_query_count(t->e); i++) {
        size_t len;
        assert_non_null(dmarc_eval_query_at(t->e, i, &len, NULL));
        assert_true(len <= 253);
    }
}

/* reset gives a fresh evaluation; outputs of the old one are gone. */
static void eval__reset_reuses(void **state)
{
    T *t = *state;
    from(t, "user@ex.com");
    dkim(t, "ex.com", DMARC_AUTH_PASS);
    run(t, zone_ex_reject);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    dmarc_eval_reset(t->e);
    assert_int_equal(dmarc_eval_query_count(t->e), 0);
    assert_int_equal(dmarc_eval_domain_count(t->e), 0);
    assert_int_equal(dmarc_eval_verdict(t->e, &t->v), DMARC_ERR_STATE);
    from(t, "user@ex.com");
    run(t, zone_ex_reject);
    assert_int_equal(t->v.result, DMARC_RESULT_FAIL);
}

/* }====================================================== */

/* ** {======================================================
** The cache [DISC-11]
** ======================================================= */

static void use_cache(T *t, size_t max)
{
    dmarc_status st;
    t_close(t);
    t->cache = dmarc_cache_new(NULL, max, &st);
    assert_non_null(t->cache);
    t_open(t);
}

/* A second evaluation is answered from the cache: no question at all, the
** same verdict, and hits counted. */
static void eval__cache_hit_no_questions(void **state)
{
    T *t = *state;
    uint64_t hits, misses;
    use_cache(t, 100);
    from(t, "user@ex.com");
    dkim(t, "mail.ex.com", DMARC_AUTH_PASS);
    run(t, zone_ex_reject);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    assert_int_equal(dmarc_eval_query_count(t->e), 3);
    assert_int_equal(dmarc_cache_size(t->cache), 3);
    dmarc_eval_reset(t->e);
    from(t, "user@ex.com");
    dkim(t, "mail.ex.com", DMARC_AUTH_PASS);
    run(t, zone_ex_reject);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    assert_int_equal(dmarc_eval_query_count(t->e), 0);
    assert_int_equal(t->z.steps, 0);
    dmarc_cache_stats(t->cache, &hits, &misses);
    assert_int_equal(hits, 3);
    assert_int_equal(misses, 3);
}

/* Expiry at now + ttl; ttl 0 and SERVFAIL are not stored. */
static void eval__cache_expiry_and_uncached(void **state)
{
    T *t = *state;
    use_cache(t, 100);
    assert_int_equal(dmarc_eval_set_now(t->e, 1000), DMARC_OK);
    from(t, "user@ex.com");
    run(t, zone_ex_reject);
    assert_int_equal(dmarc_eval_query_count(t->e), 1);

    dmarc_eval_reset(t->e);
    assert_int_equal(dmarc_eval_set_now(t->e, 1000 + 299), DMARC_OK);
    from(t, "user@ex.com");
    run(t, zone_ex_reject);
    assert_int_equal(dmarc_eval_query_count(t->e), 0);

    dmarc_eval_reset(t->e);
    assert_int_equal(dmarc_eval_set_now(t->e, 1000 + 300), DMARC_OK);
    from(t, "user@ex.com");
    run(t, zone_ex_reject);
    assert_int_equal(dmarc_eval_query_count(t->e), 1);

    dmarc_cache_clear(t->cache);
    assert_int_equal(dmarc_cache_size(t->cache), 0);
    dmarc_eval_reset(t->e);
    t->z.ttl = 0;
    from(t, "user@ex.com");
    run(t, zone_ex_reject);
    assert_int_equal(dmarc_cache_size(t->cache), 0);

    t->z.ttl = 300;
    dmarc_eval_reset(t->e);
    from(t, "user@ex.com");
    run(t, zone_v20);
    assert_int_equal(t->v.result, DMARC_RESULT_TEMPERROR);
    assert_int_equal(dmarc_cache_size(t->cache), 0);
}

/* LRU eviction bounded by max_entries: the least recently used goes. */
static void eval__cache_lru_eviction(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {{NULL, 0, NOERR, {NULL}}};
    use_cache(t, 2);
    assert_int_equal(dmarc_eval_add_author_domain(t->e, "a.com", 5), DMARC_OK);
    run(t, zone); /* _dmarc.a.com, _dmarc.com */
    assert_int_equal(dmarc_cache_size(t->cache), 2);

    dmarc_eval_reset(t->e);
    assert_int_equal(dmarc_eval_add_author_domain(t->e, "b.com", 5), DMARC_OK);
    run(t, zone); /* _dmarc.b.com asked (evicts _dmarc.a.com), _dmarc.com hit */
    expect_queries(t, "_dmarc.b.com/TXT");
    assert_int_equal(dmarc_cache_size(t->cache), 2);

    dmarc_eval_reset(t->e);
    assert_int_equal(dmarc_eval_add_author_domain(t->e, "a.com", 5), DMARC_OK);
    run(t, zone);
    expect_queries(t, "_dmarc.a.com/TXT");
}

/* An entry evicted while an evaluation holds it stays valid for that
** evaluation (reference counted). */
static void eval__cache_entry_outlives_eviction(void **state)
{
    T *t = *state;
    dmarc_status st;
    dmarc_eval *other;
    fake_zone z2 = {NULL, 300, 0, 0};
    use_cache(t, 1);
    from(t, "user@ex.com");
    dkim(t, "ex.com", DMARC_AUTH_PASS);
    run(t, zone_ex_reject);
    other = dmarc_eval_new(t->ctx, t->cache, &st);
    assert_non_null(other);
    assert_int_equal(dmarc_eval_add_author_domain(other, "zz.net", 6), DMARC_OK);
    z2.rr = zone_ex_reject;
    assert_int_equal(fake_run(other, &z2), DMARC_OK);
    dmarc_cache_clear(t->cache);
    /* The first evaluation's record is still readable. */
    assert_int_equal(dmarc_eval_verdict(t->e, &t->v), DMARC_OK);
    assert_non_null(t->v.record);
    assert_int_equal(t->v.record->p, DMARC_POLICY_REJECT);
    dmarc_eval_free(other);
}

/* rfc7489 and rfc9989 evaluations share one cache; each mode parses the
** cached TXT by its own rules (tag case [REC-3]). */
static void eval__cache_shared_across_modes(void **state)
{
    T *t = *state;
    static const fake_rr zone[] = {
        {"_dmarc.ex.com", TXT, NOERR, {"v=DMARC1; P=reject"}},
        {NULL, 0, NOERR, {NULL}},
    };
    use_cache(t, 10);
    from(t, "user@ex.com");
    run(t, zone);
    assert_int_equal(t->v.policy, DMARC_POLICY_NONE); /* P is an unknown tag */
    t_mode(t, DMARC_MODE_RFC7489);
    from(t, "user@ex.com");
    run(t, zone);
    assert_int_equal(dmarc_eval_query_count(t->e), 0);
    assert_int_equal(t->v.policy, DMARC_POLICY_REJECT);
}

/* }====================================================== */

/* rfc7489: PSL answers are kept in the shared cache, per callback and user
** data; failures are not kept. */
static void eval__cache_keeps_psl_answers(void **state)
{
    T *t = *state;
    int other_ud = 0;
    use_cache(t, 100);
    t_mode(t, DMARC_MODE_RFC7489);
    psl_calls = 0;
    from(t, "user@mail.example.com");
    dkim(t, "bounce.example.com", DMARC_AUTH_PASS);
    run(t, zone_v17);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    assert_int_equal(psl_calls, 2);

    dmarc_eval_reset(t->e);
    from(t, "user@mail.example.com");
    dkim(t, "bounce.example.com", DMARC_AUTH_PASS);
    run(t, zone_v17);
    assert_int_equal(t->v.result, DMARC_RESULT_PASS);
    assert_int_equal(psl_calls, 2);
    assert_int_equal(dmarc_eval_query_count(t->e), 0);

    /* Another list (user data): asked afresh. */
    t->opt.psl_ud = &other_ud;
    t_mode(t, DMARC_MODE_RFC7489);
    from(t, "user@mail.example.com");
    run(t, zone_v17);
    assert_int_equal(psl_calls, 3);

    /* A failing list is asked every time. */
    t->opt.psl_ud = &t->psl_fail;
    t_mode(t, DMARC_MODE_RFC7489);
    dmarc_cache_clear(t->cache);
    t->psl_fail = 1;
    from(t, "user@mail.example.com");
    run(t, zone_v17);
    assert_int_equal(t->v.result, DMARC_RESULT_TEMPERROR);
    dmarc_eval_reset(t->e);
    from(t, "user@mail.example.com");
    run(t, zone_v17);
    assert_int_equal(t->v.result, DMARC_RESULT_TEMPERROR);
    assert_int_equal(psl_calls, 5);
}

/* ** {======================================================
** Failing allocations
** ======================================================= */

static const fake_rr zone_nomem[] = {
    {"_dmarc.example.com",
     TXT,
     NOERR,
     {"v=DMARC1; p=reject; sp=quarantine; np=reject; rua=mailto:a@example.com"}},
    {"_dmarc.tenant.example.com", TXT, NOERR, {"v=DMARC1; p=none; psd=n"}},
    {NULL, 0, NOERR, {NULL}},
};

/* One full evaluation (From parse, cache, walks, record parses, existence
** test) with allocation number n failing. */
static dmarc_status nomem_once(failing_alloc *ca, bool use_a_cache, dmarc_mode mode,
                               dmarc_result *result)
{
    dmarc_options o;
    dmarc_allocator al = {failing_alloc_fn, NULL};
    dmarc_ctx *ctx = NULL;
    dmarc_cache *cache = NULL;
    dmarc_eval *e = NULL;
    dmarc_status st;
    dmarc_verdict v;
    fake_zone z = {zone_nomem, 300, 0, 0};
    int pass;

    al.ud = ca;
    dmarc_options_init(&o);
    o.alloc = al;
    o.mode = mode;
    o.psl = table_psl;
    ctx = dmarc_ctx_new(&o, &st);
    if (ctx == NULL)
        goto out;
    if (use_a_cache) {
        cache = dmarc_cache_new(&al, 4, &st);
        if (cache == NULL)
            goto out;
    }
    e = dmarc_eval_new(ctx, cache, &st);
    if (e == NULL)
        goto out;
    /* Twice: the second evaluation runs from the (small) cache. */
    for (pass = 0; pass < 2; pass++) {
        dmarc_eval_reset(e);
        st = dmarc_eval_add_from(e, "A <a@x.y.example.com>, b@other.example.com",
                                 strlen("A <a@x.y.example.com>, b@other.example.com"));
        if (st != DMARC_OK)
            goto out;
        /* rfc9989: tenant.example.com's psd=n keeps this d= from aligning;
        ** the PSL knows nothing of it, so in rfc7489 mode it fails instead. */
        st = dmarc_eval_add_dkim(e, "mail.tenant.example.com", 23, "s", 1,
                                 mode == DMARC_MODE_RFC9989 ? DMARC_AUTH_PASS : DMARC_AUTH_FAIL);
        if (st != DMARC_OK)
            goto out;
        st = dmarc_eval_add_spf(e, "bounce.example.com", 18, DMARC_AUTH_FAIL, false);
        if (st != DMARC_OK)
            goto out;
        st = fake_run(e, &z);
        if (st != DMARC_OK)
            goto out;
        st = dmarc_eval_verdict(e, &v);
        if (st != DMARC_OK)
            goto out;
        *result = v.result;
    }
out:
    dmarc_eval_free(e);
    dmarc_cache_free(cache);
    dmarc_ctx_free(ctx);
    return st;
}

static void nomem_loop(bool use_a_cache, dmarc_mode mode)
{
    long n;
    dmarc_result want = DMARC_RESULT__COUNT, got;
    failing_alloc ca;

    memset(&ca, 0, sizeof ca);
    assert_int_equal(nomem_once(&ca, use_a_cache, mode, &want), DMARC_OK);
    assert_int_equal(want, DMARC_RESULT_FAIL);
    assert_int_equal(ca.live, 0);
    assert_false(ca.size_mismatch);
    for (n = 1; n < 10000; n++) {
        dmarc_status st;
        memset(&ca, 0, sizeof ca);
        ca.fail_at = (size_t)n;
        got = DMARC_RESULT__COUNT;
        st = nomem_once(&ca, use_a_cache, mode, &got);
        /* Nothing leaks, whatever failed. */
        if (ca.live != 0)
            fail_msg("allocation %ld failing leaked %zu blocks", n, ca.live);
        if (!ca.failed) {
            /* Every allocation succeeded: done, and the same verdict. */
            assert_int_equal(st, DMARC_OK);
            assert_int_equal(got, want);
            return;
        }
        if (st != DMARC_ERR_NOMEM)
            fail_msg("allocation %ld failing gave status %d", n, st);
    }
    fail_msg("no end to the allocations");
}

static void eval__nomem_loop_without_cache(void **state)
{
    (void)state;
    nomem_loop(false, DMARC_MODE_RFC9989);
}

static void eval__nomem_loop_with_cache(void **state)
{
    (void)state;
    nomem_loop(true, DMARC_MODE_RFC9989);
}

/* rfc7489 paths (PSL discovery, the A/AAAA/MX existence test). Without a
** cache: with one, a PSL answer that cannot be stored is silently not
** stored, which is no failure of the evaluation. */
static void eval__nomem_loop_rfc7489(void **state)
{
    (void)state;
    nomem_loop(false, DMARC_MODE_RFC7489);
}

/* After NOMEM the same call may be retried and the evaluation completes. */
static void eval__nomem_retry_completes(void **state)
{
    long n;
    (void)state;
    for (n = 1; n < 200; n++) {
        failing_alloc ca;
        dmarc_options o;
        dmarc_allocator al;
        dmarc_ctx *ctx;
        dmarc_eval *e;
        dmarc_status st;
        dmarc_verdict v;
        fake_zone z = {zone_nomem, 300, 0, 0};
        const char *f = "a@x.y.example.com";
        int guard;

        memset(&ca, 0, sizeof ca);
        al.fn = failing_alloc_fn;
        al.ud = &ca;
        dmarc_options_init(&o);
        o.alloc = al;
        ctx = dmarc_ctx_new(&o, &st);
        assert_non_null(ctx);
        e = dmarc_eval_new(ctx, NULL, &st);
        assert_non_null(e);
        ca.fail_at = ca.count + (size_t)n;
        for (guard = 0; (st = dmarc_eval_add_from(e, f, strlen(f))) == DMARC_ERR_NOMEM; guard++)
            assert_true(guard < 2);
        assert_int_equal(st, DMARC_OK);
        for (guard = 0; (st = fake_run(e, &z)) == DMARC_ERR_NOMEM; guard++)
            assert_true(guard < 2);
        assert_int_equal(st, DMARC_OK);
        assert_int_equal(dmarc_eval_verdict(e, &v), DMARC_OK);
        assert_int_equal(v.result, DMARC_RESULT_FAIL);
        assert_int_equal(v.policy_tag, DMARC_POLICY_TAG_NP);
        dmarc_eval_free(e);
        dmarc_ctx_free(ctx);
        assert_int_equal(ca.live, 0);
        assert_false(ca.size_mismatch);
        if (!ca.failed)
            return;
    }
}

/* }====================================================== */

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T_(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T_(eval__v01_exact_dkim_pass),
        T_(eval__v02_strict_dkim_subdomain_fails),
        T_(eval__v03_relaxed_dkim_subdomain_passes),
        T_(eval__v04_strict_spf_subdomain_fails),
        T_(eval__v05_multi_record_rfc9989_walks_on),
        T_(eval__v05_multi_record_rfc7489_none),
        T_(eval__v06_bad_p_with_rua_is_none),
        T_(eval__v07_bad_sp_without_rua_permerror),
        T_(eval__v08_bare_record_rfc9989_p_none),
        T_(eval__v08_bare_record_rfc7489_permerror),
        T_(eval__v12_nxdomain_author_gets_np),
        T_(eval__v13_nodata_author_rfc9989_gets_sp),
        T_(eval__v13_nodata_author_rfc7489_gets_np),
        T_(eval__v14_testing_lowers_one_level),
        T_(eval__v15_pct0_rfc7489_sampled_out),
        T_(eval__pct_ignored_in_rfc9989),
        T_(eval__pct_as_testing_option),
        T_(eval__v16_pct50_half_sampled),
        T_(eval__v17_thirteen_labels_eight_queries),
        T_(eval__v18_psd_record_applies_via_np),
        T_(eval__v18_psd_record_applies_via_sp),
        T_(eval__v19_psd_n_separates_org_domains),
        T_(eval__v20_servfail_temperror),
        T_(eval__timeout_temperror_both_modes),
        T_(eval__v21_spf_temperror_not_fail),
        T_(eval__temperror_of_unrelated_domain_fails),
        T_(eval__dkim_temperror_relaxed_candidate),
        T_(eval__v22_idn_from_uses_a_label),
        T_(eval__v23_two_from_fields_never_pass),
        T_(eval__walk_b42_deep_name),
        T_(eval__walk_b43_psd_parent),
        T_(eval__walk_psd_y_at_start),
        T_(eval__walk_psd_after_jump_no_extra_query),
        T_(eval__walk_fewest_labels_wins),
        T_(eval__walk_discards_multi_record_midway),
        T_(eval__walk_ignores_non_dmarc_txt),
        T_(eval__no_record_is_none),
        T_(eval__one_letter_labels),
        T_(eval__walk_servfail_midway_temperror),
        T_(eval__aln8_parent_d_relaxed_only),
        T_(eval__aln8_bounce_subdomain_spf),
        T_(eval__aln8_different_tld_no_walk),
        T_(eval__label_boundary_x_com_attacker_com),
        T_(eval__public_suffix_dkim_rfc9989),
        T_(eval__public_suffix_dkim_rfc7489),
        T_(eval__rfc7489_psl_failure_temperror),
        T_(eval__non_pass_results_never_align),
        T_(eval__helo_only_without_mail_from),
        T_(eval__alignment_walk_servfail),
        T_(eval__full_org_walk_option),
        T_(eval__org_domain_never_the_author_by_default),
        T_(eval__from_mailbox_cap_never_passes),
        T_(eval__alignment_completion_bounded),
        T_(eval__identifier_own_walk),
        T_(eval__no_existence_test_without_np),
        T_(eval__no_existence_test_on_pass),
        T_(eval__existence_servfail_temperror),
        T_(eval__rfc7489_existence_mx_data),
        T_(eval__rfc7489_existence_nxdomain_on_a),
        T_(eval__testing_quarantine_and_none),
        T_(eval__rfc7489_ignores_t),
        T_(eval__multi_domain_all_pass),
        T_(eval__multi_domain_strictest_failure),
        T_(eval__multi_domain_precedence),
        T_(eval__same_domain_twice_is_one),
        T_(eval__too_many_domains_never_pass),
        T_(eval__unevaluated_counts_as_failing),
        T_(eval__lenient_from),
        T_(eval__no_from_and_no_domain),
        T_(eval__add_author_domain),
        T_(eval__names_normalized_like_domain_normalize),
        T_(eval__wrong_state_calls),
        T_(eval__null_and_bad_inputs),
        T_(eval__ctx_options_checked),
        T_(eval__input_limits),
        T_(eval__answer_rr_limit),
        T_(eval__answer_is_copied),
        T_(eval__query_limit),
        T_(eval__query_limit_never_passes),
        T_(eval__overlong_query_name_not_asked),
        T_(eval__reset_reuses),
        T_(eval__cache_hit_no_questions),
        T_(eval__cache_expiry_and_uncached),
        T_(eval__cache_lru_eviction),
        T_(eval__cache_entry_outlives_eviction),
        T_(eval__cache_shared_across_modes),
        T_(eval__cache_keeps_psl_answers),
        T_(eval__nomem_loop_without_cache),
        T_(eval__nomem_loop_with_cache),
        T_(eval__nomem_loop_rfc7489),
        T_(eval__nomem_retry_completes),
#undef T_
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
