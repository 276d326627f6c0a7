/*
** Zone-file parser and the DNS layer's cache (adapters/src/zone.c, dns.c).
**
** The adapters are not part of libdmarc.a (they sit beside the sans-I/O
** core), and these two need nothing but libc, so the test compiles them in
** directly.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../adapters/src/dns.c"
#include "../../adapters/src/zone.c"

/* ** {======================================================
** Helpers
** ======================================================= */

static dmarc_zone *parse_ok(const char *text)
{
    dmarc_zone *z = NULL;
    dmarc_zone_error err;
    dmarc_status st = dmarc_zone_parse(NULL, text, strlen(text), "example.com", &z, &err);
    if (st != DMARC_OK)
        fail_msg("zone did not parse (line %zu): %s", err.line, err.message);
    assert_non_null(z);
    return z;
}

static dmarc_dns_answer *ask(const dmarc_zone *z, const char *name, unsigned type)
{
    dmarc_dns_answer *a = NULL;
    assert_int_equal(dmarc_zone_lookup(z, name, strlen(name), type, &a), DMARC_OK);
    assert_non_null(a);
    return a;
}

static void expect_rcode(const dmarc_zone *z, const char *name, unsigned type, dmarc_rcode rc)
{
    dmarc_dns_answer *a = ask(z, name, type);
    assert_int_equal(a->rcode, rc);
    dmarc_dns_answer_free(a);
}

static dmarc_status parse_err(const char *text, dmarc_zone_error *err)
{
    dmarc_zone *z = NULL;
    dmarc_status st = dmarc_zone_parse(NULL, text, strlen(text), "example.com", &z, err);
    assert_null(z);
    return st;
}

/* An allocator that fails the Nth allocation (counting from 1). */
typedef struct failing {
    size_t fail_at, count, live;
} failing;

static void *failing_alloc(void *ud, void *p, size_t osize, size_t nsize)
{
    failing *f = ud;
    (void)osize;
    if (nsize == 0) {
        if (p != NULL)
            f->live--;
        free(p);
        return NULL;
    }
    if (++f->count == f->fail_at)
        return NULL;
    if (p == NULL)
        f->live++;
    return realloc(p, nsize);
}

/* A backend that answers from a zone but counts questions, and can be told
** to answer SERVFAIL. */
typedef struct counting {
    dmarc_zone *zone;
    size_t queries;
    bool servfail;
} counting;

static dmarc_status counting_query(void *impl, const char *name, unsigned type,
                                   dmarc_dns_answer **out)
{
    counting *c = impl;
    c->queries++;
    if (c->servfail) {
        dmarc_dns_builder b;
        dmarc_dns_builder_init(&b, NULL, name, strlen(name));
        *out = dmarc_dns_builder_finish(&b, DMARC_RCODE_SERVFAIL);
        return *out != NULL ? DMARC_OK : DMARC_ERR_NOMEM;
    }
    return dmarc_zone_lookup(c->zone, name, strlen(name), type, out);
}

static uint64_t fake_now;

static uint64_t fake_clock(void *ud)
{
    (void)ud;
    return fake_now;
}

static dmarc_dns *counting_dns(counting *c, const char *text, size_t entries)
{
    dmarc_dns_options o;
    dmarc_dns_backend be;
    dmarc_status st;
    dmarc_dns *d;
    memset(c, 0, sizeof *c);
    c->zone = parse_ok(text);
    dmarc_dns_options_init(&o);
    o.cache_entries = entries;
    o.clock = fake_clock;
    be.query = counting_query;
    be.free = NULL;
    be.impl = c;
    d = dmarc_dns_new(&o, be, &st);
    assert_int_equal(st, DMARC_OK);
    assert_non_null(d);
    fake_now = 1000;
    return d;
}

static dmarc_dns_answer *query(dmarc_dns *d, const char *name, unsigned type)
{
    dmarc_dns_answer *a = NULL;
    assert_int_equal(dmarc_dns_query(d, name, strlen(name), type, &a), DMARC_OK);
    assert_non_null(a);
    return a;
}

/* }====================================================== */

/* ** {======================================================
** Zone parser
** ======================================================= */

static void zone__origin_ttl_and_relative_names(void **state)
{
    dmarc_zone *z;
    dmarc_dns_answer *a;
    (void)state;
    z = parse_ok("$TTL 300\n"
                 "@        IN A 192.0.2.1\n"
                 "www      600 IN A 192.0.2.2\n"
                 "abs.example.net. A 192.0.2.3\n"
                 "$ORIGIN sub\n"
                 "host     IN 1h A 192.0.2.4\n");
    a = ask(z, "example.com", DMARC_DNS_T_A);
    assert_int_equal(a->rcode, DMARC_RCODE_NOERROR);
    assert_int_equal(a->count, 1);
    assert_int_equal(a->rrs[0].ttl, 300);
    assert_memory_equal(a->rrs[0].data, "\xc0\x00\x02\x01", 4);
    dmarc_dns_answer_free(a);
    a = ask(z, "WWW.Example.COM.", DMARC_DNS_T_A);
    assert_int_equal(a->count, 1);
    assert_int_equal(a->rrs[0].ttl, 600);
    dmarc_dns_answer_free(a);
    expect_rcode(z, "abs.example.net", DMARC_DNS_T_A, DMARC_RCODE_NOERROR);
    /* A relative $ORIGIN is relative to the previous one; TTL units. */
    a = ask(z, "host.sub.example.com", DMARC_DNS_T_A);
    assert_int_equal(a->count, 1);
    assert_int_equal(a->rrs[0].ttl, 3600);
    dmarc_dns_answer_free(a);
    assert_int_equal(dmarc_zone_record_count(z), 4);
    dmarc_zone_free(z);
}

/* [REC-1]: the strings of one TXT RR come back concatenated, no separator;
** two RRs stay two. */
static void zone__txt_strings_concatenated(void **state)
{
    dmarc_zone *z;
    dmarc_dns_answer *a;
    (void)state;
    z = parse_ok("_dmarc TXT \"v=DMARC1; p=rej\" \"ect\"\n"
                 "_dmarc TXT unquoted word\n"
                 "esc    TXT \"a\\\"b\\\\c\\065\"\n");
    a = ask(z, "_dmarc.example.com", DMARC_DNS_T_TXT);
    assert_int_equal(a->count, 2);
    assert_string_equal(a->rrs[0].data, "v=DMARC1; p=reject");
    assert_int_equal(a->rrs[0].len, 18);
    assert_string_equal(a->rrs[1].data, "unquotedword");
    dmarc_dns_answer_free(a);
    a = ask(z, "esc.example.com", DMARC_DNS_T_TXT);
    assert_string_equal(a->rrs[0].data, "a\"b\\cA");
    dmarc_dns_answer_free(a);
    dmarc_zone_free(z);
}

static void zone__parentheses_comments_and_blank_owner(void **state)
{
    dmarc_zone *z;
    dmarc_dns_answer *a;
    (void)state;
    z = parse_ok("; a comment line\n"
                 "\n"
                 "key._domainkey  IN  TXT ( \"v=DKIM1; k=rsa; \"  ; first part\n"
                 "                          \"p=ABC\"           ; second part\n"
                 "                        )\n"
                 "                IN  TXT \"second rr\" ; blank owner: the previous one\n"
                 "mail  MX 10 mx1\n"
                 "      MX 20 mx2.example.net.\n");
    a = ask(z, "key._domainkey.example.com", DMARC_DNS_T_TXT);
    assert_int_equal(a->count, 2);
    assert_string_equal(a->rrs[0].data, "v=DKIM1; k=rsa; p=ABC");
    assert_string_equal(a->rrs[1].data, "second rr");
    dmarc_dns_answer_free(a);
    a = ask(z, "mail.example.com", DMARC_DNS_T_MX);
    assert_int_equal(a->count, 2);
    assert_int_equal(a->rrs[0].pref, 10);
    assert_string_equal(a->rrs[0].data, "mx1.example.com");
    assert_int_equal(a->rrs[1].pref, 20);
    assert_string_equal(a->rrs[1].data, "mx2.example.net");
    dmarc_dns_answer_free(a);
    dmarc_zone_free(z);
}

/* [DISC-12] / RFC 8020: a name with no record and no descendant is
** NXDOMAIN; an empty non-terminal or a name without the type is NODATA. */
static void zone__nxdomain_nodata_and_empty_nonterminals(void **state)
{
    dmarc_zone *z;
    (void)state;
    z = parse_ok("_dmarc.a.b TXT \"v=DMARC1; p=none\"\n"
                 "host A 192.0.2.9\n");
    expect_rcode(z, "host.example.com", DMARC_DNS_T_A, DMARC_RCODE_NOERROR);
    expect_rcode(z, "host.example.com", DMARC_DNS_T_TXT, DMARC_RCODE_NODATA);
    expect_rcode(z, "a.b.example.com", DMARC_DNS_T_A, DMARC_RCODE_NODATA);
    expect_rcode(z, "b.example.com", DMARC_DNS_T_MX, DMARC_RCODE_NODATA);
    expect_rcode(z, "example.com", DMARC_DNS_T_A, DMARC_RCODE_NODATA);
    expect_rcode(z, "nope.example.com", DMARC_DNS_T_A, DMARC_RCODE_NXDOMAIN);
    expect_rcode(z, "x.host.example.com", DMARC_DNS_T_A, DMARC_RCODE_NXDOMAIN);
    expect_rcode(z, "_dmarc.com", DMARC_DNS_T_TXT, DMARC_RCODE_NXDOMAIN);
    /* A name that cannot exist is NXDOMAIN, not an error. */
    expect_rcode(z, "a..b", DMARC_DNS_T_A, DMARC_RCODE_NXDOMAIN);
    dmarc_zone_free(z);
}

/* RFC 4592: the wildcard answers below its parent only where no closer
** name exists ([RUA-4] authorisations use it). */
static void zone__wildcard_below_closest_encloser_only(void **state)
{
    dmarc_zone *z;
    dmarc_dns_answer *a;
    (void)state;
    z = parse_ok("*._report._dmarc TXT \"v=DMARC1\"\n"
                 "x.y._report._dmarc TXT \"specific\"\n");
    a = ask(z, "policy.example._report._dmarc.example.com", DMARC_DNS_T_TXT);
    assert_int_equal(a->rcode, DMARC_RCODE_NOERROR);
    assert_string_equal(a->rrs[0].data, "v=DMARC1");
    assert_string_equal(a->name, "policy.example._report._dmarc.example.com");
    dmarc_dns_answer_free(a);
    /* y._report._dmarc exists (empty non-terminal): the closest encloser of
    ** z.y... is y..., which has no wildcard child. */
    expect_rcode(z, "z.y._report._dmarc.example.com", DMARC_DNS_T_TXT, DMARC_RCODE_NXDOMAIN);
    expect_rcode(z, "y._report._dmarc.example.com", DMARC_DNS_T_TXT, DMARC_RCODE_NODATA);
    dmarc_zone_free(z);
}

static void zone__cname_is_a_pending_link(void **state)
{
    dmarc_zone *z;
    dmarc_dns_answer *a;
    (void)state;
    z = parse_ok("s1._domainkey.brand CNAME s1.domainkey.saas.example.\n");
    a = ask(z, "s1._domainkey.brand.example.com", DMARC_DNS_T_TXT);
    assert_int_equal(a->rcode, DMARC_RCODE_NOERROR);
    assert_int_equal(a->count, 0);
    assert_non_null(a->cname);
    assert_string_equal(a->cname, "s1.domainkey.saas.example");
    dmarc_dns_answer_free(a);
    a = ask(z, "s1._domainkey.brand.example.com", DMARC_DNS_T_CNAME);
    assert_int_equal(a->count, 1);
    assert_null(a->cname);
    dmarc_dns_answer_free(a);
    dmarc_zone_free(z);
}

/* RFC 2308 §5: min(SOA TTL, SOA minimum) of the closest enclosing SOA. */
static void zone__soa_bounds_negative_ttl(void **state)
{
    dmarc_zone *z;
    dmarc_dns_answer *a;
    (void)state;
    z = parse_ok("@ 3600 SOA ns hostmaster 1 7200 900 1209600 120\n"
                 "lower 30 SOA ns hostmaster ( 1 7200 900 1209600 300 )\n"
                 "host A 192.0.2.1\n");
    a = ask(z, "missing.example.com", DMARC_DNS_T_TXT);
    assert_int_equal(a->rcode, DMARC_RCODE_NXDOMAIN);
    assert_int_equal(a->ttl, 120);
    dmarc_dns_answer_free(a);
    a = ask(z, "x.lower.example.com", DMARC_DNS_T_TXT);
    assert_int_equal(a->ttl, 30);
    dmarc_dns_answer_free(a);
    a = ask(z, "host.example.com", DMARC_DNS_T_TXT);
    assert_int_equal(a->rcode, DMARC_RCODE_NODATA);
    assert_int_equal(a->ttl, 120);
    dmarc_dns_answer_free(a);
    dmarc_zone_free(z);
}

static void zone__aaaa_ptr_and_spf_types(void **state)
{
    dmarc_zone *z;
    dmarc_dns_answer *a;
    static const unsigned char v6[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0,
                                         0,    0,    0,    0,    0, 0, 0, 1};
    (void)state;
    z = parse_ok("v6 AAAA 2001:db8::1\n"
                 "1.2.0.192.in-addr.arpa. PTR mail\n");
    a = ask(z, "v6.example.com", DMARC_DNS_T_AAAA);
    assert_int_equal(a->rrs[0].len, 16);
    assert_memory_equal(a->rrs[0].data, v6, 16);
    dmarc_dns_answer_free(a);
    a = ask(z, "1.2.0.192.in-addr.arpa", DMARC_DNS_T_PTR);
    assert_string_equal(a->rrs[0].data, "mail.example.com");
    dmarc_dns_answer_free(a);
    dmarc_zone_free(z);
}

static void zone__errors_name_the_line(void **state)
{
    dmarc_zone_error err;
    (void)state;
    assert_int_equal(parse_err("ok A 192.0.2.1\nbad A 300.1.1.1\n", &err), DMARC_ERR_SYNTAX);
    assert_int_equal(err.line, 2);
    assert_string_equal(err.code, "syntax");
    assert_int_equal(parse_err("a A 192.0.2.1\n\n\nb TXT ( \"x\"\n", &err), DMARC_ERR_SYNTAX);
    assert_int_equal(err.line, 4);
    assert_int_equal(parse_err("a TXT \"never closed\n", &err), DMARC_ERR_SYNTAX);
    assert_int_equal(parse_err("a HINFO x y\n", &err), DMARC_ERR_SYNTAX);
    assert_int_equal(parse_err("   A 192.0.2.1\n", &err), DMARC_ERR_SYNTAX);
    assert_int_equal(parse_err("$INCLUDE other.zone\n", &err), DMARC_ERR_SYNTAX);
    assert_int_equal(parse_err("a CH TXT \"x\"\n", &err), DMARC_ERR_SYNTAX);
    assert_int_equal(parse_err("a ) A 192.0.2.1\n", &err), DMARC_ERR_SYNTAX);
    assert_int_equal(parse_err("a ( ( A 192.0.2.1 ) )\n", &err), DMARC_ERR_SYNTAX);
    assert_int_equal(parse_err("a MX 70000 b\n", &err), DMARC_ERR_SYNTAX);
    assert_int_equal(parse_err("a TXT \"\\999\"\n", &err), DMARC_ERR_SYNTAX);
    /* RFC 1034 §3.6.2: an alias owns nothing else. */
    assert_int_equal(parse_err("a CNAME b\na TXT \"x\"\n", &err), DMARC_ERR_SYNTAX);
    assert_int_equal(err.line, 1);
    /* RFC 1035 §3.3: a character-string is at most 255 bytes. */
    {
        char text[400];
        memset(text, 'x', sizeof text);
        memcpy(text, "a TXT \"", 7);
        text[7 + 256] = '"';
        text[7 + 257] = '\n';
        text[7 + 258] = '\0';
        assert_int_equal(parse_err(text, &err), DMARC_ERR_SYNTAX);
    }
    /* A label over 63 bytes is no name. */
    assert_int_equal(parse_err("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa "
                               "A 192.0.2.1\n",
                               &err),
                     DMARC_ERR_SYNTAX);
}

static void zone__null_and_empty_inputs(void **state)
{
    dmarc_zone *z = NULL;
    dmarc_dns_answer *a = NULL;
    dmarc_zone_error err;
    (void)state;
    assert_int_equal(dmarc_zone_parse(NULL, NULL, 1, NULL, &z, &err), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_zone_parse(NULL, "", 0, NULL, NULL, NULL), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_zone_parse(NULL, "", 0, NULL, &z, NULL), DMARC_OK);
    assert_int_equal(dmarc_zone_record_count(z), 0);
    assert_int_equal(dmarc_zone_lookup(z, "x", 1, DMARC_DNS_T_A, &a), DMARC_OK);
    assert_int_equal(a->rcode, DMARC_RCODE_NXDOMAIN);
    dmarc_dns_answer_free(a);
    assert_int_equal(dmarc_zone_lookup(NULL, "x", 1, DMARC_DNS_T_A, &a), DMARC_ERR_INVAL);
    dmarc_zone_free(z);
    dmarc_zone_free(NULL);
    assert_int_equal(dmarc_zone_load(NULL, "/nonexistent/zone", NULL, &z, &err), DMARC_ERR_INVAL);
    assert_string_equal(err.code, "io");
}

/* Every allocation failure gives DMARC_ERR_NOMEM and leaks nothing; the
** loop ends when the parse finally succeeds. */
static void zone__failing_allocator(void **state)
{
    static const char text[] = "$TTL 60\n"
                               "@ SOA ns hm 1 2 3 4 5\n"
                               "a TXT \"one\" \"two\"\n"
                               "b.c MX 10 a\n"
                               "*.w A 192.0.2.1\n";
    size_t n;
    (void)state;
    for (n = 1; n < 1000; n++) {
        failing f = {n, 0, 0};
        dmarc_allocator al = {failing_alloc, &f};
        dmarc_zone *z = NULL;
        dmarc_status st = dmarc_zone_parse(&al, text, sizeof text - 1, "example.com", &z, NULL);
        if (st == DMARC_OK) {
            dmarc_dns_answer *a = NULL;
            f.fail_at = 0;
            assert_int_equal(dmarc_zone_lookup(z, "a.example.com", 13, DMARC_DNS_T_TXT, &a),
                             DMARC_OK);
            assert_string_equal(a->rrs[0].data, "onetwo");
            dmarc_dns_answer_free(a);
            dmarc_zone_free(z);
            assert_int_equal(f.live, 0);
            return;
        }
        assert_int_equal(st, DMARC_ERR_NOMEM);
        assert_null(z);
        assert_int_equal(f.live, 0);
    }
    fail_msg("the parse never succeeded");
}

/* }====================================================== */

/* ** {======================================================
** The DNS layer: cache, CNAMEs, faults
** ======================================================= */

/* [DISC-11]: a positive answer is reused until its TTL runs out. */
static void dns__cache_serves_until_ttl_expires(void **state)
{
    counting c;
    dmarc_dns *d = counting_dns(&c, "_dmarc 300 TXT \"v=DMARC1; p=none\"\n", 16);
    dmarc_dns_answer *a;
    dmarc_dns_stats s;
    (void)state;
    a = query(d, "_dmarc.example.com", DMARC_DNS_T_TXT);
    assert_false(a->from_cache);
    dmarc_dns_answer_free(a);
    fake_now += 299;
    a = query(d, "_DMARC.example.com.", DMARC_DNS_T_TXT);
    assert_true(a->from_cache);
    assert_int_equal(a->ttl, 1);
    assert_string_equal(a->rrs[0].data, "v=DMARC1; p=none");
    dmarc_dns_answer_free(a);
    assert_int_equal(c.queries, 1);
    fake_now += 1;
    a = query(d, "_dmarc.example.com", DMARC_DNS_T_TXT);
    assert_false(a->from_cache);
    dmarc_dns_answer_free(a);
    assert_int_equal(c.queries, 2);
    /* Another type is another question. */
    dmarc_dns_answer_free(query(d, "_dmarc.example.com", DMARC_DNS_T_A));
    assert_int_equal(c.queries, 3);
    dmarc_dns_get_stats(d, &s);
    assert_int_equal(s.hits, 1);
    assert_int_equal(s.misses, 3);
    assert_int_equal(s.upstream, 3);
    assert_int_equal(s.entries, 2);
    dmarc_dns_free(d);
    dmarc_zone_free(c.zone);
}

/* [DISC-11]: negative answers are cached for the SOA-derived lifetime;
** SERVFAIL never. */
static void dns__negative_cached_failures_not(void **state)
{
    counting c;
    dmarc_dns *d = counting_dns(&c, "@ 600 SOA ns hm 1 2 3 4 45\nhost A 192.0.2.1\n", 16);
    dmarc_dns_answer *a;
    (void)state;
    a = query(d, "nope.example.com", DMARC_DNS_T_TXT);
    assert_int_equal(a->rcode, DMARC_RCODE_NXDOMAIN);
    dmarc_dns_answer_free(a);
    a = query(d, "host.example.com", DMARC_DNS_T_TXT);
    assert_int_equal(a->rcode, DMARC_RCODE_NODATA);
    dmarc_dns_answer_free(a);
    fake_now += 44;
    a = query(d, "nope.example.com", DMARC_DNS_T_TXT);
    assert_true(a->from_cache);
    assert_int_equal(a->rcode, DMARC_RCODE_NXDOMAIN);
    dmarc_dns_answer_free(a);
    a = query(d, "host.example.com", DMARC_DNS_T_TXT);
    assert_true(a->from_cache);
    assert_int_equal(a->rcode, DMARC_RCODE_NODATA);
    dmarc_dns_answer_free(a);
    assert_int_equal(c.queries, 2);
    fake_now += 1;
    dmarc_dns_answer_free(query(d, "nope.example.com", DMARC_DNS_T_TXT));
    assert_int_equal(c.queries, 3);

    c.servfail = true;
    a = query(d, "other.example.com", DMARC_DNS_T_TXT);
    assert_int_equal(a->rcode, DMARC_RCODE_SERVFAIL);
    dmarc_dns_answer_free(a);
    a = query(d, "other.example.com", DMARC_DNS_T_TXT);
    assert_int_equal(a->rcode, DMARC_RCODE_SERVFAIL);
    assert_false(a->from_cache);
    dmarc_dns_answer_free(a);
    assert_int_equal(c.queries, 5);
    dmarc_dns_free(d);
    dmarc_zone_free(c.zone);
}

/* The cache never holds more than its bound; the least recently used goes. */
static void dns__cache_is_lru_bounded(void **state)
{
    counting c;
    dmarc_dns *d = counting_dns(&c, "a TXT \"a\"\nb TXT \"b\"\nc TXT \"c\"\n", 2);
    dmarc_dns_stats s;
    (void)state;
    dmarc_dns_answer_free(query(d, "a.example.com", DMARC_DNS_T_TXT));
    dmarc_dns_answer_free(query(d, "b.example.com", DMARC_DNS_T_TXT));
    dmarc_dns_answer_free(query(d, "a.example.com", DMARC_DNS_T_TXT)); /* a is now recent */
    dmarc_dns_answer_free(query(d, "c.example.com", DMARC_DNS_T_TXT)); /* evicts b */
    dmarc_dns_get_stats(d, &s);
    assert_int_equal(s.entries, 2);
    assert_int_equal(c.queries, 3);
    dmarc_dns_answer_free(query(d, "a.example.com", DMARC_DNS_T_TXT));
    assert_int_equal(c.queries, 3);
    dmarc_dns_answer_free(query(d, "b.example.com", DMARC_DNS_T_TXT));
    assert_int_equal(c.queries, 4);
    dmarc_dns_cache_clear(d);
    dmarc_dns_get_stats(d, &s);
    assert_int_equal(s.entries, 0);
    dmarc_dns_free(d);
    dmarc_zone_free(c.zone);
}

/* CNAME chains are followed; the answer lives as long as its shortest
** link; a loop is SERVFAIL, not an endless walk. */
static void dns__cname_chain_followed_and_bounded(void **state)
{
    counting c;
    dmarc_dns *d = counting_dns(&c,
                                "sel._domainkey.brand 100 CNAME sel.domainkey.saas.example.\n"
                                "sel.domainkey.saas.example. 900 TXT \"v=DKIM1; p=KEY\"\n"
                                "loop1 CNAME loop2\n"
                                "loop2 CNAME loop1\n"
                                "dangling CNAME nowhere.example.org.\n",
                                16);
    dmarc_dns_answer *a;
    (void)state;
    a = query(d, "sel._domainkey.brand.example.com", DMARC_DNS_T_TXT);
    assert_int_equal(a->rcode, DMARC_RCODE_NOERROR);
    assert_string_equal(a->rrs[0].data, "v=DKIM1; p=KEY");
    assert_string_equal(a->name, "sel.domainkey.saas.example");
    assert_int_equal(a->cname_hops, 1);
    assert_int_equal(a->ttl, 100);
    assert_null(a->cname);
    dmarc_dns_answer_free(a);
    a = query(d, "loop1.example.com", DMARC_DNS_T_TXT);
    assert_int_equal(a->rcode, DMARC_RCODE_SERVFAIL);
    dmarc_dns_answer_free(a);
    assert_true(c.queries <= 2 + DMARC_DNS_MAX_CNAME + 1);
    a = query(d, "dangling.example.com", DMARC_DNS_T_TXT);
    assert_int_equal(a->rcode, DMARC_RCODE_NXDOMAIN);
    dmarc_dns_answer_free(a);
    dmarc_dns_free(d);
    dmarc_zone_free(c.zone);
}

/* Impossible names are answered without asking anyone. */
static void dns__impossible_names_not_asked(void **state)
{
    counting c;
    dmarc_dns *d = counting_dns(&c, "", 16);
    char longname[300];
    dmarc_dns_answer *a;
    (void)state;
    memset(longname, 'a', sizeof longname);
    longname[sizeof longname - 1] = '\0';
    a = query(d, longname, DMARC_DNS_T_TXT);
    assert_int_equal(a->rcode, DMARC_RCODE_NXDOMAIN);
    dmarc_dns_answer_free(a);
    a = query(d, ".", DMARC_DNS_T_TXT);
    assert_int_equal(a->rcode, DMARC_RCODE_NXDOMAIN);
    dmarc_dns_answer_free(a);
    assert_int_equal(c.queries, 0);
    assert_int_equal(dmarc_dns_query(d, NULL, 0, DMARC_DNS_T_TXT, &a), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_dns_query(d, "x", 1, 0, &a), DMARC_ERR_INVAL);
    dmarc_dns_free(d);
    dmarc_dns_free(NULL);
    dmarc_zone_free(c.zone);
}

/* Injected faults cover a name and everything below it, and are never
** cached. */
static void dns__faults_cover_the_subtree(void **state)
{
    counting c;
    dmarc_dns *d = counting_dns(&c, "a.slow TXT \"x\"\nslowpoke TXT \"y\"\n", 16);
    dmarc_dns_answer *a;
    (void)state;
    assert_int_equal(dmarc_dns_add_fault(d, "slow.example.com", 16, DMARC_RCODE_TIMEOUT), DMARC_OK);
    a = query(d, "a.slow.example.com", DMARC_DNS_T_TXT);
    assert_int_equal(a->rcode, DMARC_RCODE_TIMEOUT);
    dmarc_dns_answer_free(a);
    a = query(d, "slowpoke.example.com", DMARC_DNS_T_TXT);
    assert_int_equal(a->rcode, DMARC_RCODE_NOERROR);
    dmarc_dns_answer_free(a);
    assert_int_equal(c.queries, 1);
    assert_int_equal(dmarc_dns_add_fault(d, "x", 1, DMARC_RCODE__COUNT), DMARC_ERR_INVAL);
    dmarc_dns_free(d);
    dmarc_zone_free(c.zone);
}

static void dns__query_survives_failing_allocator(void **state)
{
    dmarc_zone *z = parse_ok("t.a 60 CNAME t.b\nt.b 60 TXT \"value\"\n");
    size_t n;
    (void)state;
    for (n = 1; n < 500; n++) {
        failing f = {n, 0, 0};
        dmarc_dns_options o;
        dmarc_dns_backend be;
        dmarc_status st;
        dmarc_dns *d;
        dmarc_dns_answer *a = NULL;
        dmarc_dns_options_init(&o);
        o.alloc.fn = failing_alloc;
        o.alloc.ud = &f;
        o.cache_entries = 8;
        o.clock = fake_clock;
        be.query = counting_query;
        be.free = NULL;
        {
            static counting c;
            memset(&c, 0, sizeof c);
            c.zone = z;
            be.impl = &c;
        }
        d = dmarc_dns_new(&o, be, &st);
        if (d == NULL) {
            assert_int_equal(st, DMARC_ERR_NOMEM);
            assert_int_equal(f.live, 0);
            continue;
        }
        st = dmarc_dns_query(d, "t.a.example.com", 15, DMARC_DNS_T_TXT, &a);
        if (st == DMARC_OK) {
            assert_string_equal(a->rrs[0].data, "value");
            dmarc_dns_answer_free(a);
        } else {
            assert_int_equal(st, DMARC_ERR_NOMEM);
        }
        dmarc_dns_free(d);
        assert_int_equal(f.live, 0);
        if (st == DMARC_OK && f.count < n)
            break;
    }
    dmarc_zone_free(z);
}

static void dns__name_normalize(void **state)
{
    char out[DMARC_DOMAIN_MAX_LEN + 1];
    size_t len;
    (void)state;
    assert_int_equal(dmarc_dns_name_normalize("Mail.Example.COM.", 17, out, &len), DMARC_OK);
    assert_string_equal(out, "mail.example.com");
    assert_int_equal(len, 16);
    assert_int_equal(dmarc_dns_name_normalize("", 0, out, &len), DMARC_ERR_SYNTAX);
    assert_int_equal(dmarc_dns_name_normalize("a..b", 4, out, &len), DMARC_ERR_SYNTAX);
    assert_int_equal(dmarc_dns_name_normalize("a\0b", 3, out, &len), DMARC_ERR_SYNTAX);
    assert_int_equal(dmarc_dns_name_normalize(NULL, 0, out, &len), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_dns_type_from_name("txt", 3), DMARC_DNS_T_TXT);
    assert_string_equal(dmarc_dns_type_name(DMARC_DNS_T_AAAA), "AAAA");
    assert_int_equal(dmarc_dns_type_from_name("BOGUS", 5), 0);
}

/* }====================================================== */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(zone__origin_ttl_and_relative_names),
        cmocka_unit_test(zone__txt_strings_concatenated),
        cmocka_unit_test(zone__parentheses_comments_and_blank_owner),
        cmocka_unit_test(zone__nxdomain_nodata_and_empty_nonterminals),
        cmocka_unit_test(zone__wildcard_below_closest_encloser_only),
        cmocka_unit_test(zone__cname_is_a_pending_link),
        cmocka_unit_test(zone__soa_bounds_negative_ttl),
        cmocka_unit_test(zone__aaaa_ptr_and_spf_types),
        cmocka_unit_test(zone__errors_name_the_line),
        cmocka_unit_test(zone__null_and_empty_inputs),
        cmocka_unit_test(zone__failing_allocator),
        cmocka_unit_test(dns__cache_serves_until_ttl_expires),
        cmocka_unit_test(dns__negative_cached_failures_not),
        cmocka_unit_test(dns__cache_is_lru_bounded),
        cmocka_unit_test(dns__cname_chain_followed_and_bounded),
        cmocka_unit_test(dns__impossible_names_not_asked),
        cmocka_unit_test(dns__faults_cover_the_subtree),
        cmocka_unit_test(dns__query_survives_failing_allocator),
        cmocka_unit_test(dns__name_normalize),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
