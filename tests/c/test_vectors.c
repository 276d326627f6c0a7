/*
** The shared evaluation vectors (tests/vectors/eval.jsonl) through the C
** API. Each line holds one `dmarc eval` input and the output fields
** expected from it; the mapping from dmarc_verdict to those fields and the
** meaning of the "dns" map are written at the top of the vector file, and
** implemented here exactly as the Lua side and the command implement them.
** Every vector runs twice: once with no cache (the "queries" field is
** checked), once more against a cache warmed by the first run (the verdict
** must not change).
*/
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "dmarc.h"
#include "dmarc_psl.h"

#define VECTORS_DEFAULT "tests/vectors/eval.jsonl"
/* Bounds on the file: lines, line length, vectors. */
#define VEC_MAX_LINE 65536
#define VEC_MAX_COUNT 1024
/* Questions one vector may need before the runner calls it a loop. */
#define VEC_MAX_STEPS 256
/* TXT RRs and concatenated bytes handed over per answer. */
#define VEC_MAX_RRS 64
#define VEC_TXT_BYTES 65536

typedef struct vec_env {
    dmarc_psl *psl; /* for rfc7489 vectors */
} vec_env;

static vec_env env;

/* ** {======================================================
** The "dns" map [contract in the header of eval.jsonl]
** ======================================================= */

static bool name_below(const char *name, size_t len, const char *other)
{
    size_t olen = strlen(other);
    return olen > len && memcmp(other + olen - len, name, len) == 0 && other[olen - len - 1] == '.';
}

/* Answer one question from the map. TXT data is concatenated into @buf. */
static void dns_answer(json_t *dns, const char *q, size_t qlen, dmarc_qtype type, dmarc_rcode *rc,
                       dmarc_txt *txt, size_t *n, char *buf)
{
    char name[300];
    json_t *val;
    const char *key;
    size_t used = 0, i;

    *n = 0;
    assert_true(qlen < sizeof name);
    memcpy(name, q, qlen);
    name[qlen] = '\0';
    val = json_object_get(dns, name);
    if (val == NULL) {
        *rc = DMARC_RCODE_NXDOMAIN;
        json_object_foreach(dns, key, val)
        {
            if (name_below(name, qlen, key)) {
                *rc = DMARC_RCODE_NODATA;
                break;
            }
        }
        return;
    }
    if (json_is_string(val)) {
        dmarc_rcode r;
        const char *s = json_string_value(val);
        assert_int_equal(dmarc_rcode_from_name(s, strlen(s), &r), DMARC_OK);
        *rc = r;
        return;
    }
    assert_true(json_is_array(val));
    if (type != DMARC_QTYPE_TXT || json_array_size(val) == 0) {
        *rc = DMARC_RCODE_NODATA;
        return;
    }
    *rc = DMARC_RCODE_NOERROR;
    for (i = 0; i < json_array_size(val) && i < VEC_MAX_RRS; i++) {
        json_t *rr = json_array_get(val, i);
        size_t start = used, j;
        /* [REC-1]: the character-strings of one RR, with no separator. */
        if (json_is_string(rr)) {
            size_t l = json_string_length(rr);
            assert_true(used + l <= VEC_TXT_BYTES);
            memcpy(buf + used, json_string_value(rr), l);
            used += l;
        } else {
            assert_true(json_is_array(rr));
            for (j = 0; j < json_array_size(rr); j++) {
                json_t *part = json_array_get(rr, j);
                size_t l = json_string_length(part);
                assert_true(json_is_string(part));
                assert_true(used + l <= VEC_TXT_BYTES);
                memcpy(buf + used, json_string_value(part), l);
                used += l;
            }
        }
        txt[i].data = buf + start;
        txt[i].len = used - start;
    }
    *n = i;
}

/* }====================================================== */

/* ** {======================================================
** One evaluation
** ======================================================= */

static dmarc_auth auth_of(json_t *obj)
{
    json_t *r = json_object_get(obj, "result");
    dmarc_auth a = DMARC_AUTH_NONE;
    const char *s;
    if (r == NULL)
        return a;
    s = json_string_value(r);
    assert_non_null(s);
    assert_int_equal(dmarc_auth_from_name(s, strlen(s), &a), DMARC_OK);
    return a;
}

static void add_inputs(dmarc_eval *e, json_t *in)
{
    json_t *from = json_object_get(in, "from"), *spf = json_object_get(in, "spf");
    json_t *dkim = json_object_get(in, "dkim"), *roll = json_object_get(in, "roll");
    size_t i;

    if (json_is_string(from)) {
        assert_int_equal(dmarc_eval_add_from(e, json_string_value(from), json_string_length(from)),
                         DMARC_OK);
    } else if (json_is_array(from)) {
        for (i = 0; i < json_array_size(from); i++) {
            json_t *f = json_array_get(from, i);
            dmarc_status st = dmarc_eval_add_from(e, json_string_value(f), json_string_length(f));
            assert_true(st == DMARC_OK || st == DMARC_ERR_LIMIT);
        }
    }
    if (json_is_object(spf)) {
        json_t *d = json_object_get(spf, "domain"), *scope = json_object_get(spf, "scope");
        bool helo = scope != NULL && strcmp(json_string_value(scope), "helo") == 0;
        const char *ds = d != NULL ? json_string_value(d) : "";
        assert_int_equal(dmarc_eval_add_spf(e, ds, strlen(ds), auth_of(spf), helo), DMARC_OK);
    }
    for (i = 0; json_is_array(dkim) && i < json_array_size(dkim); i++) {
        json_t *sig = json_array_get(dkim, i);
        json_t *d = json_object_get(sig, "domain"), *s = json_object_get(sig, "selector");
        const char *ds = d != NULL ? json_string_value(d) : "";
        const char *ss = s != NULL ? json_string_value(s) : "";
        dmarc_status st = dmarc_eval_add_dkim(e, ds, strlen(ds), ss, strlen(ss), auth_of(sig));
        assert_true(st == DMARC_OK || st == DMARC_ERR_LIMIT);
    }
    if (roll != NULL)
        assert_int_equal(dmarc_eval_set_roll(e, (unsigned)json_integer_value(roll)), DMARC_OK);
}

static json_t *str_or_null(const char *s)
{
    return s != NULL ? json_string(s) : json_null();
}

/* The `dmarc eval` output fields of a finished evaluation. */
static json_t *output_of(const dmarc_eval *e)
{
    dmarc_verdict v;
    json_t *out = json_object(), *flags = json_array(), *queries = json_array();
    unsigned f = dmarc_eval_flags(e), bit;
    size_t i;
    bool applies;

    assert_int_equal(dmarc_eval_verdict(e, &v), DMARC_OK);
    applies = v.has_policy && (v.result == DMARC_RESULT_PASS || v.result == DMARC_RESULT_FAIL);
    json_object_set_new(out, "result", json_string(dmarc_result_name(v.result)));
    json_object_set_new(out, "author_domain", str_or_null(v.author_domain));
    json_object_set_new(out, "policy_domain", str_or_null(v.policy_domain));
    json_object_set_new(out, "org_domain", str_or_null(v.org_domain));
    json_object_set_new(out, "policy",
                        str_or_null(v.has_policy ? dmarc_policy_name(v.policy) : NULL));
    json_object_set_new(out, "applied", str_or_null(applies ? dmarc_policy_name(v.applied) : NULL));
    json_object_set_new(
        out, "reason",
        str_or_null(v.reason != DMARC_REASON_NONE ? dmarc_reason_name(v.reason) : NULL));
    json_object_set_new(out, "spf_aligned", json_boolean(v.spf_aligned));
    json_object_set_new(out, "dkim_aligned", json_boolean(v.dkim_aligned));
    for (bit = 1; bit != 0; bit <<= 1) {
        if (f & bit)
            json_array_append_new(flags, json_string(dmarc_flag_name(bit)));
    }
    json_object_set_new(out, "flags", flags);
    for (i = 0; i < dmarc_eval_query_count(e); i++) {
        char q[300];
        size_t len;
        dmarc_qtype type;
        const char *name = dmarc_eval_query_at(e, i, &len, &type);
        snprintf(q, sizeof q, "%.*s/%s", (int)len, name, dmarc_qtype_name(type));
        json_array_append_new(queries, json_string(q));
    }
    json_object_set_new(out, "queries", queries);
    return out;
}

/* Evaluate @in once; the output fields, or fail the test. */
static json_t *evaluate(json_t *in, dmarc_cache *cache)
{
    static char buf[VEC_TXT_BYTES];
    dmarc_txt txt[VEC_MAX_RRS];
    json_t *mode = json_object_get(in, "mode"), *dns = json_object_get(in, "dns"), *out;
    dmarc_options o;
    dmarc_ctx *ctx;
    dmarc_eval *e;
    dmarc_status st;
    size_t steps;

    dmarc_options_init(&o);
    if (mode != NULL) {
        const char *m = json_string_value(mode);
        assert_int_equal(dmarc_mode_from_name(m, strlen(m), &o.mode), DMARC_OK);
    }
    o.psl = dmarc_psl_orgdomain;
    o.psl_ud = env.psl;
    ctx = dmarc_ctx_new(&o, &st);
    assert_non_null(ctx);
    e = dmarc_eval_new(ctx, cache, &st);
    assert_non_null(e);
    add_inputs(e, in);
    for (steps = 0; (st = dmarc_eval_run(e)) == DMARC_NEED_DNS; steps++) {
        size_t qlen, n;
        dmarc_qtype type;
        dmarc_rcode rc;
        const char *q = dmarc_eval_query(e, &qlen, &type);
        assert_true(steps < VEC_MAX_STEPS);
        assert_non_null(q);
        dns_answer(dns, q, qlen, type, &rc, txt, &n, buf);
        assert_int_equal(dmarc_eval_answer(e, rc, txt, n, 300), DMARC_OK);
    }
    assert_int_equal(st, DMARC_OK);
    out = output_of(e);
    dmarc_eval_free(e);
    dmarc_ctx_free(ctx);
    return out;
}

static void compare(const char *name, json_t *expect, json_t *got, bool skip_queries)
{
    const char *key;
    json_t *want;
    int bad = 0;

    json_object_foreach(expect, key, want)
    {
        json_t *have = json_object_get(got, key);
        if (skip_queries && strcmp(key, "queries") == 0)
            continue;
        if (have == NULL) {
            print_error("%s: unknown output field \"%s\"\n", name, key);
            bad++;
            continue;
        }
        if (!json_equal(want, have)) {
            char *w = json_dumps(want, JSON_ENCODE_ANY | JSON_COMPACT);
            char *h = json_dumps(have, JSON_ENCODE_ANY | JSON_COMPACT);
            print_error("%s%s: %s\n  expected %s\n  got      %s\n", name,
                        skip_queries ? " (cached)" : "", key, w, h);
            free(w);
            free(h);
            bad++;
        }
    }
    if (bad)
        fail_msg("%s: %d field(s) differ", name, bad);
}

static void vector__check(void **state)
{
    json_t *vec = *state;
    const char *name = json_string_value(json_object_get(vec, "name"));
    json_t *in = json_object_get(vec, "input"), *expect = json_object_get(vec, "expect");
    json_t *out, *cached;
    dmarc_cache *cache;
    dmarc_status st;

    assert_non_null(in);
    assert_non_null(expect);
    cache = dmarc_cache_new(NULL, 256, &st);
    assert_non_null(cache);
    out = evaluate(in, cache);
    compare(name, expect, out, false);
    /* The same message again, from the cache: the same verdict. */
    cached = evaluate(in, cache);
    compare(name, expect, cached, true);
    json_decref(out);
    json_decref(cached);
    dmarc_cache_free(cache);
}

/* }====================================================== */

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : getenv("DMARC_VECTORS");
    static char line[VEC_MAX_LINE];
    struct CMUnitTest *tests;
    json_t **vecs;
    size_t count = 0, lineno = 0, i;
    int rc;
    FILE *fp;

    if (path == NULL)
        path = VECTORS_DEFAULT;
    fp = fopen(path, "r");
    if (fp == NULL) {
        fprintf(stderr, "cannot open %s\n", path);
        return 1;
    }
    tests = calloc(VEC_MAX_COUNT, sizeof *tests);
    vecs = calloc(VEC_MAX_COUNT, sizeof *vecs);
    if (tests == NULL || vecs == NULL)
        return 1;
    while (fgets(line, sizeof line, fp) != NULL) {
        json_error_t err;
        const char *p = line;
        lineno++;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\n' || *p == '\0' || (p[0] == '/' && p[1] == '/'))
            continue;
        if (count >= VEC_MAX_COUNT) {
            fprintf(stderr, "%s: more than %d vectors\n", path, VEC_MAX_COUNT);
            return 1;
        }
        vecs[count] = json_loads(p, 0, &err);
        if (vecs[count] == NULL || !json_is_string(json_object_get(vecs[count], "name"))) {
            fprintf(stderr, "%s:%zu: bad vector: %s\n", path, lineno, err.text);
            return 1;
        }
        tests[count].name = json_string_value(json_object_get(vecs[count], "name"));
        tests[count].test_func = vector__check;
        tests[count].initial_state = vecs[count];
        count++;
    }
    fclose(fp);
    env.psl = dmarc_psl_load(NULL);
    if (env.psl == NULL) {
        fprintf(stderr, "no Public Suffix List\n");
        return 1;
    }
    rc = _cmocka_run_group_tests("vectors", tests, count, NULL, NULL);
    dmarc_psl_free(env.psl);
    for (i = 0; i < count; i++)
        json_decref(vecs[i]);
    free(vecs);
    free(tests);
    return rc;
}
