/*
** The answer cache and answer objects [DISC-11], through their private
** interface (core/src/cache.h): TTL expiry, LRU eviction, replacement,
** reference counting, what is never stored, per-mode record views, limits
** and failing allocations.
*/
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cache.h"
#include "failing_alloc.h"

#define TXT DMARC_QTYPE_TXT

static dmarc__answer *mk(const char *name, dmarc_rcode rc, const char *txt)
{
    dmarc_txt t;
    dmarc__answer *a;
    t.data = txt;
    t.len = txt != NULL ? strlen(txt) : 0;
    a = dmarc__answer_new(NULL, TXT, name, strlen(name), dmarc__qhash(TXT, name, strlen(name)), rc,
                          txt != NULL ? &t : NULL, txt != NULL ? 1 : 0);
    assert_non_null(a);
    return a;
}

static dmarc__answer *get(dmarc_cache *c, const char *name, uint64_t now)
{
    return dmarc__cache_get(c, TXT, name, strlen(name), dmarc__qhash(TXT, name, strlen(name)), now);
}

/* Store and release the caller's reference, as an evaluation does at the end. */
static void put(dmarc_cache *c, const char *name, dmarc_rcode rc, const char *txt, uint64_t now,
                uint32_t ttl)
{
    dmarc__answer *a = mk(name, rc, txt);
    dmarc__cache_put(c, a, now, ttl);
    dmarc__answer_release(a);
}

static dmarc_cache *new_cache(size_t max)
{
    dmarc_status st;
    dmarc_cache *c = dmarc_cache_new(NULL, max, &st);
    assert_non_null(c);
    assert_int_equal(st, DMARC_OK);
    return c;
}

static void cache__new_checks_arguments(void **state)
{
    dmarc_status st = DMARC_OK;
    (void)state;
    assert_null(dmarc_cache_new(NULL, 0, &st));
    assert_int_equal(st, DMARC_ERR_INVAL);
    assert_null(dmarc_cache_new(NULL, 0, NULL));
    dmarc_cache_free(NULL);
    dmarc_cache_clear(NULL);
    assert_int_equal(dmarc_cache_size(NULL), 0);
    {
        uint64_t h = 7, m = 7;
        dmarc_cache_stats(NULL, &h, &m);
        assert_int_equal(h, 0);
        assert_int_equal(m, 0);
        dmarc_cache_stats(NULL, NULL, NULL);
    }
}

/* [DISC-11]: an entry lives until now + ttl (exclusive), then is dropped. */
static void cache__ttl_expiry(void **state)
{
    dmarc_cache *c = new_cache(10);
    uint64_t hits, misses;
    (void)state;
    put(c, "_dmarc.ex.com", DMARC_RCODE_NOERROR, "v=DMARC1; p=reject", 100, 60);
    assert_int_equal(dmarc_cache_size(c), 1);
    assert_non_null(get(c, "_dmarc.ex.com", 100));
    assert_non_null(get(c, "_dmarc.ex.com", 159));
    assert_null(get(c, "_dmarc.ex.com", 160));
    assert_int_equal(dmarc_cache_size(c), 0);
    assert_null(get(c, "_dmarc.other.com", 100));
    dmarc_cache_stats(c, &hits, &misses);
    assert_int_equal(hits, 2);
    assert_int_equal(misses, 2);
    dmarc_cache_free(c);
}

/* Negative answers are kept (with the SOA minimum the caller passes);
** transient failures and TTL 0 never are [DISC-4]. */
static void cache__what_is_stored(void **state)
{
    dmarc_cache *c = new_cache(10);
    dmarc__answer *a;
    (void)state;
    put(c, "nx.ex.com", DMARC_RCODE_NXDOMAIN, NULL, 0, 30);
    put(c, "nodata.ex.com", DMARC_RCODE_NODATA, NULL, 0, 30);
    put(c, "sf.ex.com", DMARC_RCODE_SERVFAIL, NULL, 0, 30);
    put(c, "to.ex.com", DMARC_RCODE_TIMEOUT, NULL, 0, 30);
    put(c, "zero.ex.com", DMARC_RCODE_NOERROR, "x", 0, 0);
    assert_int_equal(dmarc_cache_size(c), 2);
    a = get(c, "nx.ex.com", 1);
    assert_non_null(a);
    assert_int_equal(a->rcode, DMARC_RCODE_NXDOMAIN);
    a = get(c, "nodata.ex.com", 1);
    assert_non_null(a);
    assert_int_equal(a->rcode, DMARC_RCODE_NODATA);
    assert_null(get(c, "sf.ex.com", 1));
    assert_null(get(c, "to.ex.com", 1));
    assert_null(get(c, "zero.ex.com", 1));
    dmarc_cache_free(c);
}

/* The question is (type, name): the same name under another type is
** another entry. */
static void cache__keyed_by_type_and_name(void **state)
{
    dmarc_cache *c = new_cache(10);
    dmarc__answer *a;
    (void)state;
    a = dmarc__answer_new(NULL, DMARC_QTYPE_A, "ex.com", 6,
                          dmarc__qhash(DMARC_QTYPE_A, "ex.com", 6), DMARC_RCODE_NXDOMAIN, NULL, 0);
    assert_non_null(a);
    dmarc__cache_put(c, a, 0, 60);
    dmarc__answer_release(a);
    assert_null(get(c, "ex.com", 1));
    a = dmarc__cache_get(c, DMARC_QTYPE_A, "ex.com", 6, dmarc__qhash(DMARC_QTYPE_A, "ex.com", 6),
                         1);
    assert_non_null(a);
    assert_null(dmarc__cache_get(c, DMARC_QTYPE_AAAA, "ex.com", 6,
                                 dmarc__qhash(DMARC_QTYPE_AAAA, "ex.com", 6), 1));
    dmarc_cache_free(c);
}

/* A newer answer for the same question replaces the old one. */
static void cache__replace(void **state)
{
    dmarc_cache *c = new_cache(10);
    dmarc__answer *a;
    (void)state;
    put(c, "_dmarc.ex.com", DMARC_RCODE_NXDOMAIN, NULL, 0, 60);
    put(c, "_dmarc.ex.com", DMARC_RCODE_NOERROR, "v=DMARC1; p=none", 10, 600);
    assert_int_equal(dmarc_cache_size(c), 1);
    a = get(c, "_dmarc.ex.com", 100);
    assert_non_null(a);
    assert_int_equal(a->rcode, DMARC_RCODE_NOERROR);
    assert_int_equal(a->rr_count, 1);
    dmarc_cache_free(c);
}

/* Bounded by max_entries; the least recently used entry goes first, and a
** hit makes an entry recent. */
static void cache__lru_eviction(void **state)
{
    dmarc_cache *c = new_cache(3);
    (void)state;
    put(c, "a", DMARC_RCODE_NXDOMAIN, NULL, 0, 60);
    put(c, "b", DMARC_RCODE_NXDOMAIN, NULL, 0, 60);
    put(c, "c", DMARC_RCODE_NXDOMAIN, NULL, 0, 60);
    assert_non_null(get(c, "a", 1)); /* a is now the most recent */
    put(c, "d", DMARC_RCODE_NXDOMAIN, NULL, 0, 60);
    assert_int_equal(dmarc_cache_size(c), 3);
    assert_null(get(c, "b", 1));
    assert_non_null(get(c, "a", 1));
    assert_non_null(get(c, "c", 1));
    assert_non_null(get(c, "d", 1));
    put(c, "e", DMARC_RCODE_NXDOMAIN, NULL, 0, 60);
    assert_null(get(c, "a", 1));
    dmarc_cache_clear(c);
    assert_int_equal(dmarc_cache_size(c), 0);
    assert_null(get(c, "d", 1));
    dmarc_cache_free(c);
}

/* Many entries: the table grows, every entry is still found. */
static void cache__many_entries(void **state)
{
    enum { N = 5000 };
    dmarc_cache *c = new_cache(N);
    char name[32];
    size_t i;
    (void)state;
    for (i = 0; i < N; i++) {
        snprintf(name, sizeof name, "_dmarc.d%zu.example", i);
        put(c, name, DMARC_RCODE_NXDOMAIN, NULL, 0, 60);
    }
    assert_int_equal(dmarc_cache_size(c), N);
    for (i = 0; i < N; i++) {
        snprintf(name, sizeof name, "_dmarc.d%zu.example", i);
        assert_non_null(get(c, name, 1));
    }
    /* One more evicts exactly one. */
    put(c, "_dmarc.one-more.example", DMARC_RCODE_NXDOMAIN, NULL, 0, 60);
    assert_int_equal(dmarc_cache_size(c), N);
    dmarc_cache_free(c);
}

/* An entry an evaluation still holds survives eviction, clear and free of
** the cache; the last reference frees it. */
static void cache__reference_outlives_entry(void **state)
{
    dmarc_cache *c = new_cache(1);
    dmarc__answer *held = mk("_dmarc.ex.com", DMARC_RCODE_NOERROR, "v=DMARC1; p=reject");
    const dmarc__txtview *v;
    (void)state;
    dmarc__cache_put(c, held, 0, 60);
    assert_int_equal(held->refs, 2);
    put(c, "other", DMARC_RCODE_NXDOMAIN, NULL, 0, 60); /* evicts held */
    assert_int_equal(held->refs, 1);
    assert_false(held->cached);
    dmarc_cache_free(c);
    assert_int_equal(dmarc__answer_view(held, DMARC_MODE_RFC9989, &v), DMARC_OK);
    assert_non_null(v->record);
    assert_int_equal(v->record->p, DMARC_POLICY_REJECT);
    dmarc__answer_release(held);
}

/* Answers: the data is copied; RRs beyond DMARC_ANSWER_MAX_RRS are not kept;
** NOERROR with no RR is NODATA; other types keep no text. */
static void cache__answer_copies_and_limits(void **state)
{
    dmarc_txt t[DMARC_ANSWER_MAX_RRS + 3];
    char buf[8];
    dmarc__answer *a;
    size_t i;
    (void)state;
    strcpy(buf, "abc");
    for (i = 0; i < DMARC_ANSWER_MAX_RRS + 3; i++) {
        t[i].data = buf;
        t[i].len = 3;
    }
    a = dmarc__answer_new(NULL, TXT, "n", 1, 1, DMARC_RCODE_NOERROR, t, DMARC_ANSWER_MAX_RRS + 3);
    assert_non_null(a);
    buf[0] = 'x';
    assert_int_equal(a->rr_count, DMARC_ANSWER_MAX_RRS);
    assert_memory_equal(a->rrs[DMARC_ANSWER_MAX_RRS - 1].data, "abc", 3);
    assert_string_equal(a->name, "n");
    dmarc__answer_release(a);

    a = dmarc__answer_new(NULL, TXT, "n", 1, 1, DMARC_RCODE_NOERROR, NULL, 0);
    assert_non_null(a);
    assert_int_equal(a->rcode, DMARC_RCODE_NODATA);
    dmarc__answer_release(a);

    a = dmarc__answer_new(NULL, DMARC_QTYPE_MX, "n", 1, 1, DMARC_RCODE_NOERROR, t, 2);
    assert_non_null(a);
    assert_int_equal(a->rcode, DMARC_RCODE_NOERROR);
    assert_int_equal(a->rr_count, 0);
    dmarc__answer_release(a);

    a = dmarc__answer_new(NULL, TXT, "n", 1, 1, DMARC_RCODE_NXDOMAIN, t, 2);
    assert_non_null(a);
    assert_int_equal(a->rr_count, 0);
    dmarc__answer_release(a);
}

/* [REC-2] [WALK-1]: the view counts DMARC RRs (non-DMARC text ignored) and
** parses a lone one once, per mode; the tag-name case differs by mode
** [REC-3]. */
static void cache__answer_view_per_mode(void **state)
{
    dmarc_txt t[3] = {{"v=spf1 -all", 11}, {"v=DMARC1; P=reject", 18}, {"hello", 5}};
    dmarc_txt two[2] = {{"v=DMARC1; p=none", 16}, {"v=DMARC1; p=reject", 18}};
    const dmarc__txtview *v9, *v7, *again;
    dmarc__answer *a;
    (void)state;
    a = dmarc__answer_new(NULL, TXT, "n", 1, 1, DMARC_RCODE_NOERROR, t, 3);
    assert_non_null(a);
    assert_int_equal(dmarc__answer_view(a, DMARC_MODE_RFC9989, &v9), DMARC_OK);
    assert_int_equal(v9->dmarc_rrs, 1);
    assert_non_null(v9->record);
    assert_int_equal(v9->record->p, DMARC_POLICY_NONE);
    assert_int_equal(dmarc__answer_view(a, DMARC_MODE_RFC7489, &v7), DMARC_OK);
    assert_non_null(v7->record);
    assert_int_equal(v7->record->p, DMARC_POLICY_REJECT);
    assert_int_equal(dmarc__answer_view(a, DMARC_MODE_RFC9989, &again), DMARC_OK);
    assert_ptr_equal(again, v9);
    assert_ptr_equal(again->record, v9->record);
    dmarc__answer_release(a);

    a = dmarc__answer_new(NULL, TXT, "n", 1, 1, DMARC_RCODE_NOERROR, two, 2);
    assert_non_null(a);
    assert_int_equal(dmarc__answer_view(a, DMARC_MODE_RFC9989, &v9), DMARC_OK);
    assert_int_equal(v9->dmarc_rrs, 2);
    assert_null(v9->record);
    dmarc__answer_release(a);
}

/* ** {======================================================
** Failing allocations
** ======================================================= */

/* Cache creation, answers, parsing and table growth with the n-th
** allocation failing: NOMEM or a NULL where documented, the cache always
** consistent, nothing leaked. Table growth that fails is harmless. */
/* The public side for a DNS layer (dmarc_cache_put_value): one cache, one
** bound, its own key space; the cache frees what it owns exactly once. */
static int freed_values;

static void count_free(void *value)
{
    freed_values++;
    free(value);
}

static void *value_of(int n)
{
    int *p = malloc(sizeof *p);
    assert_non_null(p);
    *p = n;
    return p;
}

static void cache__values_for_a_dns_layer(void **state)
{
    dmarc_status st;
    dmarc_cache *c = dmarc_cache_new(NULL, 2, &st);
    const int *v;
    uint32_t left = 0;
    uint64_t hits = 0, misses = 0;
    (void)state;
    freed_values = 0;
    assert_int_equal(dmarc_cache_put_value(c, 16, "a.example", 9, value_of(1), count_free, 100, 60),
                     DMARC_OK);
    v = dmarc_cache_get_value(c, 16, "a.example", 9, 130, &left);
    assert_non_null(v);
    assert_int_equal(*v, 1);
    assert_int_equal(left, 30);
    /* Another type is another key; the core's own TXT entry for the same
    ** name neither answers nor replaces the layer's. */
    assert_null(dmarc_cache_get_value(c, 1, "a.example", 9, 130, NULL));
    put(c, "a.example", DMARC_RCODE_NOERROR, "v=DMARC1; p=none", 100, 60);
    assert_non_null(dmarc_cache_get_value(c, 16, "a.example", 9, 130, NULL));
    assert_int_equal(freed_values, 0);
    /* Expired: dropped and freed. */
    assert_null(dmarc_cache_get_value(c, 16, "a.example", 9, 160, NULL));
    assert_int_equal(freed_values, 1);
    /* TTL 0 and bad keys: not stored, freed at once. */
    assert_int_equal(dmarc_cache_put_value(c, 16, "b", 1, value_of(2), count_free, 100, 0),
                     DMARC_OK);
    assert_int_equal(dmarc_cache_put_value(c, 0x10000, "b", 1, value_of(3), count_free, 100, 9),
                     DMARC_ERR_INVAL);
    assert_int_equal(freed_values, 3);
    /* Replacement and LRU eviction free the old value; free() frees the rest. */
    assert_int_equal(dmarc_cache_put_value(c, 16, "b", 1, value_of(4), count_free, 100, 60),
                     DMARC_OK);
    assert_int_equal(dmarc_cache_put_value(c, 16, "b", 1, value_of(5), count_free, 100, 60),
                     DMARC_OK);
    assert_int_equal(freed_values, 4);
    assert_int_equal(dmarc_cache_put_value(c, 16, "c", 1, value_of(6), count_free, 100, 60),
                     DMARC_OK);
    assert_int_equal(dmarc_cache_put_value(c, 16, "d", 1, value_of(7), count_free, 100, 60),
                     DMARC_OK);
    assert_int_equal(dmarc_cache_size(c), 2);
    dmarc_cache_stats(c, &hits, &misses);
    assert_true(hits >= 2);
    assert_true(misses >= 2);
    dmarc_cache_free(c);
    assert_int_equal(freed_values, 7);
}

/* dmarc_hash is the hash the cache keys with: the same bytes, the same seed. */
static void cache__one_hash(void **state)
{
    (void)state;
    assert_int_equal(dmarc_hash(TXT, "_dmarc.example.com", 18),
                     dmarc__qhash(TXT, "_dmarc.example.com", 18));
    assert_int_not_equal(dmarc_hash(1, "x", 1), dmarc_hash(2, "x", 1));
}

static void cache__nomem_loop(void **state)
{
    long n;
    (void)state;
    for (n = 1; n < 1000; n++) {
        failing_alloc ca;
        dmarc_allocator al;
        dmarc_cache *c;
        dmarc_status st;
        size_t i, stored = 0;
        char name[32];
        dmarc_txt t = {"v=DMARC1; p=reject; rua=mailto:a@ex.com", 39};

        failing_alloc_init(&ca, (size_t)n);
        al = failing_allocator(&ca);
        c = dmarc_cache_new(&al, 200, &st);
        if (c == NULL) {
            assert_int_equal(st, DMARC_ERR_NOMEM);
            assert_int_equal(ca.live, 0);
            assert_false(ca.size_mismatch);
            continue;
        }
        for (i = 0; i < 150; i++) {
            dmarc__answer *a;
            const dmarc__txtview *v;
            snprintf(name, sizeof name, "_dmarc.d%zu.example", i);
            a = dmarc__answer_new(&al, TXT, name, strlen(name),
                                  dmarc__qhash(TXT, name, strlen(name)), DMARC_RCODE_NOERROR, &t,
                                  1);
            if (a == NULL)
                continue;
            if (dmarc__answer_view(a, DMARC_MODE_RFC9989, &v) != DMARC_OK) {
                /* Nothing kept: a later call tries again and succeeds. */
                assert_int_equal(dmarc__answer_view(a, DMARC_MODE_RFC9989, &v), DMARC_OK);
            }
            assert_non_null(v->record);
            dmarc__cache_put(c, a, 0, 60);
            dmarc__answer_release(a);
            stored++;
        }
        assert_int_equal(dmarc_cache_size(c), stored);
        for (i = 0; i < 150; i++) {
            snprintf(name, sizeof name, "_dmarc.d%zu.example", i);
            (void)get(c, name, 1);
        }
        dmarc_cache_free(c);
        assert_int_equal(ca.live, 0);
        assert_false(ca.size_mismatch);
        if (!ca.failed)
            return;
    }
    fail_msg("no end to the allocations");
}

/* }====================================================== */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cache__new_checks_arguments),
        cmocka_unit_test(cache__ttl_expiry),
        cmocka_unit_test(cache__what_is_stored),
        cmocka_unit_test(cache__keyed_by_type_and_name),
        cmocka_unit_test(cache__replace),
        cmocka_unit_test(cache__lru_eviction),
        cmocka_unit_test(cache__many_entries),
        cmocka_unit_test(cache__reference_outlives_entry),
        cmocka_unit_test(cache__answer_copies_and_limits),
        cmocka_unit_test(cache__answer_view_per_mode),
        cmocka_unit_test(cache__nomem_loop),
        cmocka_unit_test(cache__values_for_a_dns_layer),
        cmocka_unit_test(cache__one_hash),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
