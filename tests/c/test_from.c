/*
** Author Domain extraction [FROM-1..8]: dmarc_from_parse and its accessors,
** RFC 5322 Appendix A, RFC 2047 display names, hostile input, limits, the
** failing allocator, and the shared vectors in tests/vectors/from.tsv.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dmarc.h"
#include "domain.h"
#include "failing_alloc.h"

/* Path of the shared vectors, relative to the repository root. */
#define FROM_VECTORS "tests/vectors/from.tsv"
/* Longest vector line read. */
#define VECTOR_LINE_MAX 4096
/* Vectors the file must hold at least (a truncated file must not pass). */
#define VECTOR_MIN_COUNT 50

/* ** {======================================================
** Helpers
** ======================================================= */

/* What every successful parse must satisfy, whatever the input. */
static void check_invariants(const dmarc_from *f)
{
    size_t i, n = dmarc_from_count(f);

    assert_true(n <= DMARC_FROM_MAX_MAILBOXES);
    assert_null(dmarc_from_mailbox(f, n));
    for (i = 0; i < n; i++) {
        const dmarc_mailbox *m = dmarc_from_mailbox(f, i);
        assert_non_null(m);
        assert_non_null(m->local);
        assert_int_equal(strlen(m->local), m->local_len);
        if (m->display != NULL) {
            assert_true(m->display_len > 0);
            assert_int_equal(strlen(m->display), m->display_len);
        }
        if (m->domain != NULL) {
            char again[DMARC_DOMAIN_MAX_LEN + 1];
            size_t len = 0;
            assert_int_equal(m->problem, DMARC_DIAG_NONE);
            assert_int_equal(strlen(m->domain), m->domain_len);
            assert_true(m->domain_len > 0 && m->domain_len <= DMARC_DOMAIN_MAX_LEN);
            /* Normalized: normalizing again changes nothing. */
            assert_int_equal(
                dmarc_domain_normalize(m->domain, m->domain_len, again, sizeof again, &len),
                DMARC_OK);
            assert_string_equal(again, m->domain);
        } else {
            assert_int_not_equal(m->problem, DMARC_DIAG_NONE);
        }
    }
}

static dmarc_status parse_len(const char *raw, size_t len, dmarc_from **out, dmarc_diag *diag)
{
    dmarc_status st = dmarc_from_parse(NULL, raw, len, out, diag);
    if (st == DMARC_OK)
        check_invariants(*out);
    return st;
}

/* Parse a NUL-terminated field that must parse; returns the object. */
static dmarc_from *parse_ok(const char *raw, dmarc_diag *diag)
{
    dmarc_from *f = NULL;
    dmarc_diag local;
    assert_int_equal(parse_len(raw, strlen(raw), &f, diag != NULL ? diag : &local), DMARC_OK);
    assert_non_null(f);
    return f;
}

/* A field that must be refused; returns the diag code. */
static dmarc_diag_code parse_syntax(const char *raw, size_t len)
{
    dmarc_from *f = (dmarc_from *)&f; /* sentinel: must stay untouched */
    dmarc_diag diag;
    assert_int_equal(parse_len(raw, len, &f, &diag), DMARC_ERR_SYNTAX);
    assert_ptr_equal(f, (dmarc_from *)&f);
    assert_int_not_equal(diag.code, DMARC_DIAG_NONE);
    assert_true(diag.offset <= len);
    return diag.code;
}

/* The field's domains, "-" for none, comma-separated, into @buf. */
static void domains_of(const dmarc_from *f, char *buf, size_t size)
{
    size_t i, used = 0;
    buf[0] = '\0';
    for (i = 0; i < dmarc_from_count(f); i++) {
        const dmarc_mailbox *m = dmarc_from_mailbox(f, i);
        const char *d = m->domain != NULL ? m->domain : "-";
        int w = snprintf(buf + used, size - used, "%s%s", i > 0 ? "," : "", d);
        assert_true(w > 0 && (size_t)w < size - used);
        used += (size_t)w;
    }
}

static void expect_domains(const char *raw, const char *want)
{
    char got[2048];
    dmarc_from *f = parse_ok(raw, NULL);
    domains_of(f, got, sizeof got);
    assert_string_equal(got, want);
    dmarc_from_free(f);
}

static void expect_display(const char *raw, const char *want, dmarc_diag_code want_diag)
{
    dmarc_diag diag;
    dmarc_from *f = parse_ok(raw, &diag);
    const dmarc_mailbox *m = dmarc_from_mailbox(f, 0);
    assert_non_null(m);
    if (want == NULL) {
        assert_null(m->display);
    } else {
        assert_non_null(m->display);
        assert_string_equal(m->display, want);
    }
    assert_int_equal(diag.code, want_diag);
    dmarc_from_free(f);
}

/* }====================================================== */

/* ** {======================================================
** Forms of RFC 5322 §3.4 and Appendix A
** ======================================================= */

/* [FROM-1]: only the domain of the address counts. */
static void from__reads_name_addr(void **state)
{
    dmarc_diag diag;
    dmarc_from *f;
    const dmarc_mailbox *m;
    (void)state;

    f = parse_ok("\"Name\" <user@Example.COM>", &diag);
    assert_int_equal(diag.code, DMARC_DIAG_NONE);
    assert_int_equal(dmarc_from_count(f), 1);
    m = dmarc_from_mailbox(f, 0);
    assert_string_equal(m->domain, "example.com");
    assert_int_equal(m->domain_len, 11);
    assert_string_equal(m->local, "user");
    assert_int_equal(m->local_len, 4);
    assert_string_equal(m->display, "Name");
    assert_int_equal(m->display_len, 4);
    assert_int_equal(m->problem, DMARC_DIAG_NONE);
    dmarc_from_free(f);
}

static void from__reads_bare_addr_spec(void **state)
{
    dmarc_from *f;
    const dmarc_mailbox *m;
    (void)state;

    f = parse_ok("user@example.com", NULL);
    m = dmarc_from_mailbox(f, 0);
    assert_string_equal(m->domain, "example.com");
    assert_string_equal(m->local, "user");
    assert_null(m->display);
    dmarc_from_free(f);
    expect_domains("<user@example.com>", "example.com");
    expect_domains("Name<user@example.com>", "example.com");
}

/* Only @len bytes are read: the input is pointer + length. */
static void from__reads_only_len_bytes(void **state)
{
    dmarc_from *f = NULL;
    dmarc_diag diag;
    (void)state;

    assert_int_equal(parse_len("a@example.comXYZ", 13, &f, &diag), DMARC_OK);
    assert_string_equal(dmarc_from_mailbox(f, 0)->domain, "example.com");
    dmarc_from_free(f);
}

/* RFC 5322 Appendix A.1.1 */
static void from__rfc5322_a_1_1(void **state)
{
    dmarc_from *f;
    (void)state;
    f = parse_ok("John Doe <jdoe@machine.example>", NULL);
    assert_string_equal(dmarc_from_mailbox(f, 0)->display, "John Doe");
    assert_string_equal(dmarc_from_mailbox(f, 0)->domain, "machine.example");
    dmarc_from_free(f);
}

/* RFC 5322 Appendix A.1.2 (the To and Cc lists read as mailbox-lists) */
static void from__rfc5322_a_1_2(void **state)
{
    dmarc_from *f;
    (void)state;

    f = parse_ok("\"Joe Q. Public\" <john.q.public@example.com>", NULL);
    assert_string_equal(dmarc_from_mailbox(f, 0)->display, "Joe Q. Public");
    assert_string_equal(dmarc_from_mailbox(f, 0)->local, "john.q.public");
    dmarc_from_free(f);

    f = parse_ok("Mary Smith <mary@x.test>, jdoe@example.org, Who? <one@y.test>", NULL);
    assert_int_equal(dmarc_from_count(f), 3);
    assert_string_equal(dmarc_from_mailbox(f, 2)->display, "Who?");
    dmarc_from_free(f);
    expect_domains("Mary Smith <mary@x.test>, jdoe@example.org, Who? <one@y.test>",
                   "x.test,example.org,y.test");

    f = parse_ok("<boss@nil.test>, \"Giant; \\\"Big\\\" Box\" <sysservices@example.net>", NULL);
    assert_null(dmarc_from_mailbox(f, 0)->display);
    assert_string_equal(dmarc_from_mailbox(f, 1)->display, "Giant; \"Big\" Box");
    assert_string_equal(dmarc_from_mailbox(f, 1)->domain, "example.net");
    dmarc_from_free(f);
}

/* RFC 5322 Appendix A.1.3: groups. */
static void from__rfc5322_a_1_3(void **state)
{
    dmarc_from *f;
    (void)state;

    f = parse_ok("A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;", NULL);
    assert_int_equal(dmarc_from_count(f), 3);
    assert_string_equal(dmarc_from_mailbox(f, 0)->display, "Ed Jones");
    assert_string_equal(dmarc_from_mailbox(f, 1)->local, "joe");
    assert_string_equal(dmarc_from_mailbox(f, 2)->domain, "one.test");
    dmarc_from_free(f);

    f = parse_ok("Undisclosed recipients:;", NULL);
    assert_int_equal(dmarc_from_count(f), 0);
    assert_null(dmarc_from_mailbox(f, 0));
    dmarc_from_free(f);
}

/* RFC 5322 Appendix A.5: white space, comments and other oddities. */
static void from__rfc5322_a_5(void **state)
{
    dmarc_from *f;
    (void)state;

    f = parse_ok("Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>", NULL);
    assert_string_equal(dmarc_from_mailbox(f, 0)->display, "Pete");
    assert_string_equal(dmarc_from_mailbox(f, 0)->local, "pete");
    assert_string_equal(dmarc_from_mailbox(f, 0)->domain, "silly.test");
    dmarc_from_free(f);

    f = parse_ok("A Group(Some people)\r\n     :Chris Jones <c@(Chris's host.)public.example>,\r\n"
                 "         joe@example.org,\r\n  John <jdoe@one.test> (my dear friend); (the end "
                 "of the group)",
                 NULL);
    assert_int_equal(dmarc_from_count(f), 3);
    assert_string_equal(dmarc_from_mailbox(f, 0)->display, "Chris Jones");
    assert_string_equal(dmarc_from_mailbox(f, 0)->domain, "public.example");
    assert_string_equal(dmarc_from_mailbox(f, 1)->domain, "example.org");
    assert_string_equal(dmarc_from_mailbox(f, 2)->domain, "one.test");
    dmarc_from_free(f);

    f = parse_ok("(Empty list)(start)Hidden recipients  :(nobody(that I know))  ;", NULL);
    assert_int_equal(dmarc_from_count(f), 0);
    dmarc_from_free(f);
}

/* RFC 5322 Appendix A.6: obsolete phrase, route, empty list element,
** obs-domain with CFWS, and folding over a blank line. */
static void from__rfc5322_a_6(void **state)
{
    dmarc_from *f;
    (void)state;

    f = parse_ok("Joe Q. Public <john.q.public@example.com>", NULL);
    assert_string_equal(dmarc_from_mailbox(f, 0)->display, "Joe Q. Public");
    dmarc_from_free(f);

    f = parse_ok("Mary Smith <@node.test:mary@example.net>, , jdoe@test  . example", NULL);
    assert_int_equal(dmarc_from_count(f), 2);
    assert_string_equal(dmarc_from_mailbox(f, 0)->local, "mary");
    assert_string_equal(dmarc_from_mailbox(f, 0)->domain, "example.net");
    assert_string_equal(dmarc_from_mailbox(f, 1)->domain, "test.example");
    dmarc_from_free(f);

    expect_domains("John Doe <jdoe@machine(comment).  example>", "machine.example");
    f = parse_ok("Mary Smith\r\n    \r\n <mary@example.net>", NULL);
    assert_string_equal(dmarc_from_mailbox(f, 0)->display, "Mary Smith");
    dmarc_from_free(f);
}

static void from__ignores_obs_route(void **state)
{
    (void)state;
    expect_domains("<@route1,@route2:user@ex.com>", "ex.com");
    expect_domains("Name <,@route1,,@[192.0.2.1]:user@ex.com>", "ex.com");
}

/* obs-local-part: words and dots with CFWS between. */
static void from__joins_obs_local_part(void **state)
{
    dmarc_from *f;
    (void)state;

    f = parse_ok("john . doe@example.com", NULL);
    assert_string_equal(dmarc_from_mailbox(f, 0)->local, "john.doe");
    dmarc_from_free(f);
    f = parse_ok("a.\"b c\".d@example.com", NULL);
    assert_string_equal(dmarc_from_mailbox(f, 0)->local, "a.b c.d");
    dmarc_from_free(f);
}

/* Local-parts lose their quotes and escapes. */
static void from__unquotes_local_part(void **state)
{
    dmarc_from *f;
    (void)state;

    f = parse_ok("\"x <a@junk.com>\"@my.com", NULL);
    assert_string_equal(dmarc_from_mailbox(f, 0)->local, "x <a@junk.com>");
    assert_string_equal(dmarc_from_mailbox(f, 0)->domain, "my.com");
    dmarc_from_free(f);
    f = parse_ok("\"a\\\"b\\\\c\"@example.com", NULL);
    assert_string_equal(dmarc_from_mailbox(f, 0)->local, "a\"b\\c");
    dmarc_from_free(f);
}

/* What a quoted display name says is never an address. */
static void from__quoted_display_never_an_address(void **state)
{
    dmarc_from *f;
    (void)state;

    f = parse_ok("\"a@b\" <c@d.com>", NULL);
    assert_int_equal(dmarc_from_count(f), 1);
    assert_string_equal(dmarc_from_mailbox(f, 0)->display, "a@b");
    assert_string_equal(dmarc_from_mailbox(f, 0)->domain, "d.com");
    dmarc_from_free(f);
    expect_domains("\"user@paypal.example\" <attacker@evil.example>", "evil.example");
}

/* Words set apart by spaces where a local-part should be: the domain is
** clear, the mailbox is kept, the problem is noted. */
static void from__loose_local_part_is_noted(void **state)
{
    dmarc_diag diag;
    dmarc_from *f;
    (void)state;

    f = parse_ok("john doe@example.com", &diag);
    assert_int_equal(diag.code, DMARC_DIAG_SYNTAX);
    assert_int_equal(diag.offset, 0);
    assert_string_equal(dmarc_from_mailbox(f, 0)->local, "john doe");
    assert_string_equal(dmarc_from_mailbox(f, 0)->domain, "example.com");
    dmarc_from_free(f);
}

/* }====================================================== */

/* ** {======================================================
** [FROM-4] [FROM-6] [FROM-7] groups, missing domains, several domains
** ======================================================= */

/* [FROM-4]: a group alone gives no mailbox, and that is not an error. */
static void from__group_only_has_no_mailbox(void **state)
{
    dmarc_diag diag;
    dmarc_from *f;
    (void)state;

    f = parse_ok("undisclosed-recipients:;", &diag);
    assert_int_equal(dmarc_from_count(f), 0);
    assert_int_equal(diag.code, DMARC_DIAG_NONE);
    dmarc_from_free(f);
}

static void from__group_members_are_mailboxes(void **state)
{
    (void)state;
    expect_domains("grp: a@x.com, b@y.com;", "x.com,y.com");
    expect_domains("grp: a@x.com, b@y.com;, c@z.com", "x.com,y.com,z.com");
    expect_domains("grp:,,a@x.com,,;", "x.com");
}

/* A group left open at the end is read, and noted. */
static void from__unterminated_group_is_noted(void **state)
{
    dmarc_diag diag;
    dmarc_from *f;
    (void)state;

    f = parse_ok("undisclosed-recipients:", &diag);
    assert_int_equal(dmarc_from_count(f), 0);
    assert_int_equal(diag.code, DMARC_DIAG_SYNTAX);
    dmarc_from_free(f);
    f = parse_ok("grp: a@x.com", &diag);
    assert_int_equal(dmarc_from_count(f), 1);
    assert_int_equal(diag.code, DMARC_DIAG_SYNTAX);
    dmarc_from_free(f);
}

/* RFC 5322 §3.4: groups do not nest. */
static void from__nested_group_is_refused(void **state)
{
    const char *raw = "g1: g2: a@x.com;;";
    (void)state;
    assert_int_equal(parse_syntax(raw, strlen(raw)), DMARC_DIAG_SYNTAX);
}

/* [FROM-4]: an address literal or a missing domain gives a mailbox whose
** domain is NULL, with the reason. */
static void from__mailbox_without_usable_domain(void **state)
{
    dmarc_diag diag;
    dmarc_from *f;
    const dmarc_mailbox *m;
    (void)state;

    f = parse_ok("user@[1.2.3.4]", &diag);
    m = dmarc_from_mailbox(f, 0);
    assert_null(m->domain);
    assert_int_equal(m->domain_len, 0);
    assert_int_equal(m->problem, DMARC_DIAG_NO_DOMAIN);
    assert_string_equal(m->local, "user");
    assert_int_equal(diag.code, DMARC_DIAG_NO_DOMAIN);
    assert_int_equal(diag.offset, 5);
    dmarc_from_free(f);

    f = parse_ok("user", &diag);
    m = dmarc_from_mailbox(f, 0);
    assert_null(m->domain);
    assert_int_equal(m->problem, DMARC_DIAG_NO_DOMAIN);
    assert_string_equal(m->local, "user");
    assert_int_equal(diag.code, DMARC_DIAG_NO_DOMAIN);
    dmarc_from_free(f);

    f = parse_ok("Name <user>", &diag);
    assert_int_equal(dmarc_from_mailbox(f, 0)->problem, DMARC_DIAG_NO_DOMAIN);
    assert_string_equal(dmarc_from_mailbox(f, 0)->display, "Name");
    dmarc_from_free(f);
}

/* The reason a domain is unusable is kept per mailbox. */
static void from__domain_problems_are_per_mailbox(void **state)
{
    char raw[200];
    dmarc_diag diag;
    dmarc_from *f;
    (void)state;

    f = parse_ok("a@xn--zz.example, b@example.org, c@-x.example", &diag);
    assert_int_equal(dmarc_from_count(f), 3);
    assert_int_equal(dmarc_from_mailbox(f, 0)->problem, DMARC_DIAG_BAD_IDN);
    assert_string_equal(dmarc_from_mailbox(f, 1)->domain, "example.org");
    assert_int_equal(dmarc_from_mailbox(f, 2)->problem, DMARC_DIAG_NO_DOMAIN);
    /* The first problem in the input is the one reported. */
    assert_int_equal(diag.code, DMARC_DIAG_BAD_IDN);
    assert_int_equal(diag.offset, 2);
    dmarc_from_free(f);

    strcpy(raw, "a@");
    memset(raw + 2, 'x', 64);
    strcpy(raw + 66, ".example");
    f = parse_ok(raw, &diag);
    assert_int_equal(dmarc_from_mailbox(f, 0)->problem, DMARC_DIAG_TOO_LONG);
    assert_int_equal(diag.code, DMARC_DIAG_TOO_LONG);
    dmarc_from_free(f);
}

/* [FROM-6]: several domains are all reported, in order. */
static void from__keeps_every_distinct_domain(void **state)
{
    (void)state;
    expect_domains("a@one.example, B <b@two.example>, c@three.example",
                   "one.example,two.example,three.example");
}

/* [FROM-7]: the same domain twice is two mailboxes; collapsing is eval's. */
static void from__keeps_same_domain_twice(void **state)
{
    (void)state;
    expect_domains("a@example.com, b@EXAMPLE.com.", "example.com,example.com");
}

/* }====================================================== */

/* ** {======================================================
** [FROM-2] [FROM-3] domains, RFC 6532 UTF-8
** ======================================================= */

static void from__normalizes_case_and_trailing_dot(void **state)
{
    (void)state;
    expect_domains("a@MiXeD.Example.", "mixed.example");
    expect_domains("a@example.com..", "-");
}

/* [FROM-3]: U-labels become A-labels before anything looks them up. */
static void from__converts_idn_domain(void **state)
{
    (void)state;
    expect_domains("a@ÄÖ.example", "xn--4ca0b.example");
    expect_domains("a@XN--4CA0B.example", "xn--4ca0b.example");
}

/* RFC 6532: UTF-8 in local-parts, display names and domains. */
static void from__accepts_utf8_everywhere(void **state)
{
    dmarc_from *f;
    (void)state;

    f = parse_ok("Jürgen Müller <jürgen@Bücher.de>", NULL);
    assert_string_equal(dmarc_from_mailbox(f, 0)->display, "Jürgen Müller");
    assert_string_equal(dmarc_from_mailbox(f, 0)->local, "jürgen");
    assert_string_equal(dmarc_from_mailbox(f, 0)->domain, "xn--bcher-kva.de");
    dmarc_from_free(f);
    f = parse_ok("\"Ä, Ö\" <x@example.com>", NULL);
    assert_string_equal(dmarc_from_mailbox(f, 0)->display, "Ä, Ö");
    dmarc_from_free(f);
}

/* }====================================================== */

/* ** {======================================================
** RFC 2047 encoded-words
** ======================================================= */

static void from__decodes_encoded_display_names(void **state)
{
    (void)state;
    expect_display("=?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <j@x.de>", "Jürgen Müller",
                   DMARC_DIAG_NONE);
    expect_display("=?UTF-8?B?w4TDlg==?= <a@example.com>", "ÄÖ", DMARC_DIAG_NONE);
    expect_display("=?ISO-8859-1?Q?Andr=E9?= Pirard <p@example.be>", "André Pirard",
                   DMARC_DIAG_NONE);
    expect_display("=?iso-8859-1?b?6Q==?= <p@example.be>", "é", DMARC_DIAG_NONE);
    expect_display("=?US-ASCII?Q?Keith_Moore?= <moore@example.edu>", "Keith Moore",
                   DMARC_DIAG_NONE);
    /* RFC 2231 §5: a language after '*' is allowed and ignored. */
    expect_display("=?utf-8*en?q?Hi?= <a@example.com>", "Hi", DMARC_DIAG_NONE);
    /* Missing final padding is forgiven. */
    expect_display("=?utf-8?b?w4Q?= <a@example.com>", "Ä", DMARC_DIAG_NONE);
}

/* RFC 2047 §6.2: space between encoded-words is not displayed; space
** between an encoded-word and other text is. */
static void from__joins_adjacent_encoded_words(void **state)
{
    (void)state;
    expect_display("=?utf-8?q?a?= =?utf-8?q?b?= <x@example.com>", "ab", DMARC_DIAG_NONE);
    expect_display("=?utf-8?q?a?=\r\n =?utf-8?q?_b?= <x@example.com>", "a b", DMARC_DIAG_NONE);
    expect_display("=?utf-8?q?a?= b <x@example.com>", "a b", DMARC_DIAG_NONE);
    expect_display("x =?utf-8?q?a?= <x@example.com>", "x a", DMARC_DIAG_NONE);
}

/* A word that cannot be decoded is shown as written, and noted. */
static void from__leaves_broken_encoded_words(void **state)
{
    (void)state;
    expect_display("=?x-unknown?q?abc?= <a@example.com>",
                   "=?x-unknown?q?abc?=", DMARC_DIAG_BAD_ENCODED_WORD);
    expect_display("=?utf-8?b?!!!!?= <a@example.com>",
                   "=?utf-8?b?!!!!?=", DMARC_DIAG_BAD_ENCODED_WORD);
    expect_display("=?utf-8?b?QQ=x?= <a@example.com>",
                   "=?utf-8?b?QQ=x?=", DMARC_DIAG_BAD_ENCODED_WORD);
    expect_display("=?utf-8?b?Q?= <a@example.com>", "=?utf-8?b?Q?=", DMARC_DIAG_BAD_ENCODED_WORD);
    expect_display("=?utf-8?q?=FF?= <a@example.com>",
                   "=?utf-8?q?=FF?=", DMARC_DIAG_BAD_ENCODED_WORD);
    expect_display("=?utf-8?q?=C3?= <a@example.com>",
                   "=?utf-8?q?=C3?=", DMARC_DIAG_BAD_ENCODED_WORD);
    expect_display("=?utf-8?q?=ZZ?= <a@example.com>",
                   "=?utf-8?q?=ZZ?=", DMARC_DIAG_BAD_ENCODED_WORD);
    expect_display("=?us-ascii?q?=E9?= <a@example.com>",
                   "=?us-ascii?q?=E9?=", DMARC_DIAG_BAD_ENCODED_WORD);
    /* Decoded control characters could forge log lines. */
    expect_display("=?utf-8?q?a=00b?= <a@example.com>",
                   "=?utf-8?q?a=00b?=", DMARC_DIAG_BAD_ENCODED_WORD);
    expect_display("=?utf-8?q?a=0D=0Ab?= <a@example.com>",
                   "=?utf-8?q?a=0D=0Ab?=", DMARC_DIAG_BAD_ENCODED_WORD);
    /* Only B and Q are encodings; a NUL is none (and no word at all). */
    expect_display("=?utf-8?x?abc?= <a@example.com>", "=?utf-8?x?abc?=", DMARC_DIAG_NONE);
    assert_int_equal(parse_syntax("=?utf-8?\0?abc?= <a@example.com>", 31), DMARC_DIAG_SYNTAX);
    /* A broken word next to a good one keeps its space. */
    expect_display("=?utf-8?q?a?= =?bad?q?b?= <x@example.com>",
                   "a =?bad?q?b?=", DMARC_DIAG_BAD_ENCODED_WORD);
}

/* An encoded-word never yields an address (RFC 2047 §5). */
static void from__encoded_word_never_yields_an_address(void **state)
{
    dmarc_from *f;
    const char *raw = "=?utf-8?q?a@evil.com?=";
    (void)state;

    f = parse_ok("=?utf-8?q?a@evil.com?= <a@good.com>", NULL);
    assert_int_equal(dmarc_from_count(f), 1);
    assert_string_equal(dmarc_from_mailbox(f, 0)->display, "a@evil.com");
    assert_string_equal(dmarc_from_mailbox(f, 0)->domain, "good.com");
    dmarc_from_free(f);

    assert_int_equal(parse_syntax(raw, strlen(raw)), DMARC_DIAG_SYNTAX);
    /* In an addr-spec it is the atom it is spelled as, never decoded. */
    f = parse_ok("=?utf-8?q?x?=@good.com", NULL);
    assert_string_equal(dmarc_from_mailbox(f, 0)->local, "=?utf-8?q?x?=");
    assert_string_equal(dmarc_from_mailbox(f, 0)->domain, "good.com");
    dmarc_from_free(f);
    expect_domains("a@=?utf-8?q?evil.com?=", "-");
}

/* RFC 2047 §5: not inside quoted strings; and comments are skipped. */
static void from__encoded_word_only_in_phrases(void **state)
{
    (void)state;
    expect_display("\"=?utf-8?q?a?=\" <x@example.com>", "=?utf-8?q?a?=", DMARC_DIAG_NONE);
    expect_display("Name (=?utf-8?q?x?=) <x@example.com>", "Name", DMARC_DIAG_NONE);
}

/* Display names: runs of CFWS become one space, folding is unfolded. */
static void from__normalizes_display_spacing(void **state)
{
    (void)state;
    expect_display("John    Q.   Public <x@example.com>", "John Q. Public", DMARC_DIAG_NONE);
    expect_display("John(comment)Doe <x@example.com>", "John Doe", DMARC_DIAG_NONE);
    expect_display("\"John\r\n Doe\" <x@example.com>", "John Doe", DMARC_DIAG_NONE);
    expect_display("\"\" <x@example.com>", NULL, DMARC_DIAG_NONE);
    expect_display("<x@example.com>", NULL, DMARC_DIAG_NONE);
}

/* }====================================================== */

/* ** {======================================================
** Broken and hostile input
** ======================================================= */

/* Mailboxes around a broken element that cannot hide an address are kept. */
static void from__recovers_unambiguous_mailboxes(void **state)
{
    dmarc_diag diag;
    dmarc_from *f;
    (void)state;

    f = parse_ok("a@good.com, <broken", &diag);
    assert_int_equal(dmarc_from_count(f), 1);
    assert_string_equal(dmarc_from_mailbox(f, 0)->domain, "good.com");
    assert_int_equal(diag.code, DMARC_DIAG_SYNTAX);
    assert_int_equal(diag.offset, 19);
    dmarc_from_free(f);

    f = parse_ok("<broken, b@good.com", &diag);
    assert_int_equal(dmarc_from_count(f), 1);
    assert_int_equal(diag.code, DMARC_DIAG_SYNTAX);
    dmarc_from_free(f);

    f = parse_ok("grp: <broken, b@good.com;", &diag);
    assert_int_equal(dmarc_from_count(f), 1);
    assert_int_equal(diag.code, DMARC_DIAG_SYNTAX);
    dmarc_from_free(f);
}

/* A broken element holding an '@' may hide an address: the field is refused. */
static void from__refuses_ambiguous_fields(void **state)
{
    static const char *const raws[] = {
        "user@paypal.com <attacker@evil.com>",
        "a@b.example, \"unterminated <x@paypal.com>",
        "a@exa mple.com",
        "a@b@c.example",
        "a@example.com junk",
        "Name <a@example.com, b@example.org>",
        "a@example.com; b@example.org",
        "@example.com",
        "<a@example.com",
        "a@example.com>",
        "grp: a@x.com junk;",
    };
    size_t i;
    (void)state;

    for (i = 0; i < sizeof raws / sizeof raws[0]; i++)
        assert_int_equal(parse_syntax(raws[i], strlen(raws[i])), DMARC_DIAG_SYNTAX);
}

/* DMARC_ERR_SYNTAX when nothing usable could be read. */
static void from__refuses_fields_with_nothing_usable(void **state)
{
    static const char *const raws[] = {
        "", "   ", ",,,", "(comment only)", "John Smith", "<>", "\"unterminated", "<broken",
    };
    size_t i;
    (void)state;

    for (i = 0; i < sizeof raws / sizeof raws[0]; i++)
        assert_int_equal(parse_syntax(raws[i], strlen(raws[i])), DMARC_DIAG_SYNTAX);
}

/* The offset of a refusal points at the trouble. */
static void from__reports_where_it_failed(void **state)
{
    dmarc_from *f = NULL;
    dmarc_diag diag;
    (void)state;

    assert_int_equal(parse_len("user@paypal.com <attacker@evil.com>", 35, &f, &diag),
                     DMARC_ERR_SYNTAX);
    assert_int_equal(diag.code, DMARC_DIAG_SYNTAX);
    assert_int_equal(diag.offset, 16);
    assert_string_equal(diag.tag, "");
    assert_null(f);
}

/* Folding is unfolded; a line break that is not folding ends the field. */
static void from__handles_line_breaks(void **state)
{
    const char *bad_cr = "a@example.com\r";
    const char *bad_crlf = "Name\r\n<a@example.com>";
    const char *bad_lf = "a@example.com\nb@example.org";
    (void)state;

    expect_domains("Name\r\n <a@example.com>", "example.com");
    expect_domains("Name\n\t<a@example.com>", "example.com");
    expect_domains("a@example.com\r\n", "example.com");
    expect_domains("a@example.com\n", "example.com");
    assert_int_equal(parse_syntax(bad_cr, strlen(bad_cr)), DMARC_DIAG_SYNTAX);
    assert_int_equal(parse_syntax(bad_crlf, strlen(bad_crlf)), DMARC_DIAG_SYNTAX);
    assert_int_equal(parse_syntax(bad_lf, strlen(bad_lf)), DMARC_DIAG_SYNTAX);
}

/* A NUL is invalid data wherever it is; it never cuts the field short. */
static void from__nul_is_never_data(void **state)
{
    (void)state;
    assert_int_equal(parse_syntax("a@example.com\0@evil.com", 24), DMARC_DIAG_SYNTAX);
    assert_int_equal(parse_syntax("\"a\0b\" <c@example.com>", 22), DMARC_DIAG_SYNTAX);
    assert_int_equal(parse_syntax("a@example.com (x\0)", 18), DMARC_DIAG_SYNTAX);
    assert_int_equal(parse_syntax("\0", 1), DMARC_DIAG_SYNTAX);
}

static void from__unbalanced_delimiters(void **state)
{
    static const char *const raws[] = {
        "\"a@example.com", "a@example.com\"",  "(a@example.com",  "a@example.com)", "a@[1.2.3.4",
        "a@1.2.3.4]",      "<<a@example.com>", "a@example.com>>", "a@[1.[2].3]",
    };
    size_t i;
    (void)state;

    for (i = 0; i < sizeof raws / sizeof raws[0]; i++)
        assert_int_equal(parse_syntax(raws[i], strlen(raws[i])), DMARC_DIAG_SYNTAX);
}

/* DMARC_FROM_MAX_COMMENT_DEPTH levels are read, one more is TOO_DEEP. */
static void from__limits_comment_depth(void **state)
{
    char raw[2 * DMARC_FROM_MAX_COMMENT_DEPTH + 64];
    dmarc_diag diag;
    dmarc_from *f;
    size_t depth, n;
    (void)state;

    for (depth = DMARC_FROM_MAX_COMMENT_DEPTH; depth <= DMARC_FROM_MAX_COMMENT_DEPTH + 1; depth++) {
        n = 0;
        memset(raw, '(', depth);
        n += depth;
        raw[n++] = 'x';
        memset(raw + n, ')', depth);
        n += depth;
        strcpy(raw + n, "a@example.com");
        n += 13;
        if (depth == DMARC_FROM_MAX_COMMENT_DEPTH) {
            expect_domains(raw, "example.com");
        } else {
            assert_int_equal(parse_syntax(raw, n), DMARC_DIAG_TOO_DEEP);
        }
    }
    /* After the last mailbox and with no '@', it only costs a note. */
    strcpy(raw, "b@example.org, ");
    n = strlen(raw);
    memset(raw + n, '(', DMARC_FROM_MAX_COMMENT_DEPTH + 1);
    raw[n + DMARC_FROM_MAX_COMMENT_DEPTH + 1] = '\0';
    f = parse_ok(raw, &diag);
    assert_int_equal(dmarc_from_count(f), 1);
    assert_int_equal(diag.code, DMARC_DIAG_TOO_DEEP);
    assert_int_equal(diag.offset, n + DMARC_FROM_MAX_COMMENT_DEPTH);
    dmarc_from_free(f);
}

/* DMARC_FROM_MAX_LEN bytes are read; one more is TOO_LONG. */
static void from__limits_field_length(void **state)
{
    char *raw = malloc(DMARC_FROM_MAX_LEN + 1);
    dmarc_from *f = NULL;
    dmarc_diag diag;
    (void)state;

    assert_non_null(raw);
    memset(raw, ' ', DMARC_FROM_MAX_LEN + 1);
    memcpy(raw, "a@example.com", 13);
    assert_int_equal(parse_len(raw, DMARC_FROM_MAX_LEN, &f, &diag), DMARC_OK);
    assert_int_equal(dmarc_from_count(f), 1);
    dmarc_from_free(f);
    f = NULL;
    assert_int_equal(parse_len(raw, DMARC_FROM_MAX_LEN + 1, &f, &diag), DMARC_ERR_SYNTAX);
    assert_int_equal(diag.code, DMARC_DIAG_TOO_LONG);
    assert_null(f);
    free(raw);
}

/* Write @count mailboxes "mN@dN.example," into a new buffer. */
static char *many_mailboxes(size_t count, size_t *len)
{
    char *raw = malloc(count * 32 + 1);
    size_t i, n = 0;
    assert_non_null(raw);
    for (i = 0; i < count; i++)
        n += (size_t)sprintf(raw + n, "m%zu@d%zu.example,", i, i);
    *len = n;
    return raw;
}

/* DMARC_FROM_MAX_MAILBOXES are kept; the rest is ignored, and said so. */
static void from__limits_mailbox_count(void **state)
{
    dmarc_from *f = NULL;
    dmarc_diag diag;
    size_t len;
    char *raw;
    (void)state;

    raw = many_mailboxes(DMARC_FROM_MAX_MAILBOXES, &len);
    assert_int_equal(parse_len(raw, len, &f, &diag), DMARC_OK);
    assert_int_equal(dmarc_from_count(f), DMARC_FROM_MAX_MAILBOXES);
    assert_int_equal(diag.code, DMARC_DIAG_NONE);
    dmarc_from_free(f);
    free(raw);

    raw = many_mailboxes(DMARC_FROM_MAX_MAILBOXES + 1, &len);
    assert_int_equal(parse_len(raw, len, &f, &diag), DMARC_OK);
    assert_int_equal(dmarc_from_count(f), DMARC_FROM_MAX_MAILBOXES);
    assert_int_equal(diag.code, DMARC_DIAG_TOO_MANY_MAILBOXES);
    assert_string_equal(dmarc_from_mailbox(f, DMARC_FROM_MAX_MAILBOXES - 1)->domain, "d63.example");
    dmarc_from_free(f);
    free(raw);
}

/* The mailbox bound counts distinct domains [OPEN-5]: past it, a mailbox
** repeating a kept domain (any ASCII case) or with no domain is skipped and
** the field is complete; one that may bring a new domain still ends it. */
static void from__mailbox_limit_counts_distinct_domains(void **state)
{
    size_t n = DMARC_FROM_MAX_MAILBOXES + 6, i, len = 0;
    char *raw = malloc(n * 32 + 64);
    dmarc_from *f = NULL;
    dmarc_diag diag;
    (void)state;

    assert_non_null(raw);
    for (i = 0; i < n; i++)
        len += (size_t)sprintf(raw + len, "u%zu@%s, ", i, i % 2 ? "EXAMPLE.com" : "example.com");
    len += (size_t)sprintf(raw + len, "postmaster, x@[192.0.2.1]");
    assert_int_equal(parse_len(raw, len, &f, &diag), DMARC_OK);
    assert_int_equal(diag.code, DMARC_DIAG_NONE);
    assert_int_equal(dmarc_from_count(f), DMARC_FROM_MAX_MAILBOXES);
    assert_int_equal(dmarc_from_skipped(f), n - DMARC_FROM_MAX_MAILBOXES + 2);
    check_invariants(f);
    dmarc_from_free(f);

    /* A new domain past the bound: cut, and said so. */
    len = 0;
    for (i = 0; i < DMARC_FROM_MAX_MAILBOXES; i++)
        len += (size_t)sprintf(raw + len, "u%zu@example.com, ", i);
    len += (size_t)sprintf(raw + len, "ceo@evil.example");
    assert_int_equal(parse_len(raw, len, &f, &diag), DMARC_OK);
    assert_int_equal(diag.code, DMARC_DIAG_TOO_MANY_MAILBOXES);
    assert_int_equal(dmarc_from_skipped(f), 0);
    dmarc_from_free(f);
    assert_int_equal(dmarc_from_skipped(NULL), 0);
    free(raw);
}

/* RFC 9989 §11.5: a field the strict parser refuses is read as a mail
** reader shows it when every '@' names the same domain; otherwise nothing. */
static void from__lenient_reading(void **state)
{
    static const struct {
        const char *raw;
        const char *want; /* NULL: nothing extracted */
    } cases[] = {
        {"CEO <ceo@example.com>\r", "example.com"},
        {"CEO\r <ceo@example.com>", "example.com"},
        {"ceo@example.com (CEO", "example.com"},
        {"CEO (x <ceo@example.com>", "example.com"},
        {"<ceo@example.com> CEO", "example.com"},
        {"ceo@example.com (x) y", "example.com"},
        {"\"ceo@EXAMPLE.com\" <ceo@example.com.", "example.com"},
        {"ceo@ b\xc3\xbc"
         "cher.example (x",
         "xn--bcher-kva.example"},
        {"\"ceo@example.com\" <x@evil.example", NULL},
        {"\"Bob @ Home\" <bob@example.com", NULL},
        {"ceo@ (x", NULL},
        {"ceo@.example.com (x", NULL},
        {"ceo@example.com@", NULL},
        {"no address at all (", NULL},
        {"", NULL},
    };
    char out[DMARC_DOMAIN_MAX_LEN + 1];
    size_t i, n;
    char *raw;
    (void)state;

    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bool got = dmarc__from_lenient(cases[i].raw, strlen(cases[i].raw), out, &n);
        if (cases[i].want == NULL) {
            assert_false(got);
        } else {
            assert_true(got);
            assert_string_equal(out, cases[i].want);
            assert_int_equal(n, strlen(cases[i].want));
        }
    }
    /* Comments nested one deeper than the bound: refused strictly, read
    ** leniently. */
    raw = malloc(2 * (DMARC_FROM_MAX_COMMENT_DEPTH + 1) + 32);
    assert_non_null(raw);
    n = 0;
    for (i = 0; i <= DMARC_FROM_MAX_COMMENT_DEPTH; i++)
        raw[n++] = '(';
    for (i = 0; i <= DMARC_FROM_MAX_COMMENT_DEPTH; i++)
        raw[n++] = ')';
    n += (size_t)sprintf(raw + n, " ceo@example.com");
    assert_int_equal(parse_syntax(raw, n), DMARC_DIAG_TOO_DEEP);
    assert_true(dmarc__from_lenient(raw, n, out, &i));
    assert_string_equal(out, "example.com");
    free(raw);
    /* More '@' than DMARC_FROM_MAX_MAILBOXES: not looked at. */
    raw = malloc((DMARC_FROM_MAX_MAILBOXES + 1) * 16 + 8);
    assert_non_null(raw);
    n = 0;
    for (i = 0; i <= DMARC_FROM_MAX_MAILBOXES; i++)
        n += (size_t)sprintf(raw + n, "a@example.com ");
    raw[n++] = '(';
    assert_false(dmarc__from_lenient(raw, n, out, &i));
    free(raw);
}

/* Mailboxes went unread: that outranks any earlier problem, so an
** evaluation never mistakes a truncated list for a complete one [FROM-6]. */
static void from__mailbox_limit_outranks_other_problems(void **state)
{
    dmarc_from *f = NULL;
    dmarc_diag diag;
    size_t len;
    char *raw = many_mailboxes(DMARC_FROM_MAX_MAILBOXES + 10, &len);
    (void)state;

    memcpy(raw, "m0@[1.2.3.4]", 12); /* "m0@d0.example," -> a literal, then junk */
    memcpy(raw + 12, ", ", 2);
    assert_int_equal(parse_len(raw, len, &f, &diag), DMARC_OK);
    assert_int_equal(dmarc_from_mailbox(f, 0)->problem, DMARC_DIAG_NO_DOMAIN);
    assert_int_equal(diag.code, DMARC_DIAG_TOO_MANY_MAILBOXES);
    dmarc_from_free(f);
    free(raw);
}

/* 10,000 commas: empty list elements (obs-mbox-list), read in one pass. */
static void from__survives_many_commas(void **state)
{
    size_t n = 10000;
    char *raw = malloc(n + 32);
    dmarc_from *f = NULL;
    dmarc_diag diag;
    (void)state;

    assert_non_null(raw);
    memset(raw, ',', n);
    assert_int_equal(parse_syntax(raw, n), DMARC_DIAG_SYNTAX);
    memcpy(raw + n, "a@example.com", 13);
    assert_int_equal(parse_len(raw, n + 13, &f, &diag), DMARC_OK);
    assert_int_equal(dmarc_from_count(f), 1);
    dmarc_from_free(f);
    free(raw);
}

/* Large hostile inputs: always a clean result or DMARC_ERR_SYNTAX. */
static void from__survives_hostile_input(void **state)
{
    static const char *const patterns[] = {
        "(",      ")",       "\"",     "<",     ">",    "[",    "\\",       "@",
        "=?a?q?", "=?a?q?@", "a@b.c ", "\"a\\", "<@a,", ":",    "g:",       "=?utf-8?q?x?= ",
        "\r",     "\r\n",    "\n",     "\0",    "a.",   "\xff", "\xc3\xa4", "a@b,",
    };
    size_t size = DMARC_FROM_MAX_LEN, i, k;
    char *raw = malloc(size);
    uint32_t x = 12345;
    dmarc_from *f;
    dmarc_diag diag;
    dmarc_status st;
    (void)state;

    assert_non_null(raw);
    /* Each pattern repeated over 64 KiB. */
    for (i = 0; i < sizeof patterns / sizeof patterns[0]; i++) {
        size_t plen = strlen(patterns[i]) > 0 ? strlen(patterns[i]) : 1;
        for (k = 0; k < size; k++)
            raw[k] = patterns[i][k % plen];
        f = NULL;
        st = parse_len(raw, size, &f, &diag);
        assert_true(st == DMARC_OK || st == DMARC_ERR_SYNTAX);
        dmarc_from_free(f);
    }
    /* Pseudo-random bytes, and pseudo-random picks of the patterns. */
    for (i = 0; i < 8; i++) {
        for (k = 0; k < size; k++) {
            x = x * 1103515245u + 12345u;
            raw[k] = (char)(x >> 16);
        }
        f = NULL;
        st = parse_len(raw, size, &f, &diag);
        assert_true(st == DMARC_OK || st == DMARC_ERR_SYNTAX);
        dmarc_from_free(f);
    }
    for (i = 0; i < 8; i++) {
        size_t n = 0;
        while (n < size - 16) {
            const char *p;
            x = x * 1103515245u + 12345u;
            p = patterns[(x >> 16) % (sizeof patterns / sizeof patterns[0])];
            memcpy(raw + n, p, strlen(p) > 0 ? strlen(p) : 1);
            n += strlen(p) > 0 ? strlen(p) : 1;
        }
        f = NULL;
        st = parse_len(raw, n, &f, &diag);
        assert_true(st == DMARC_OK || st == DMARC_ERR_SYNTAX);
        dmarc_from_free(f);
    }
    free(raw);
}

/* }====================================================== */

/* ** {======================================================
** Contract: NULL, zero length, accessors, allocator
** ======================================================= */

static void from__null_and_zero_length(void **state)
{
    dmarc_from *f = (dmarc_from *)&f;
    dmarc_diag diag;
    (void)state;

    assert_int_equal(dmarc_from_parse(NULL, "a@b.c", 5, NULL, &diag), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_from_parse(NULL, NULL, 5, &f, &diag), DMARC_ERR_INVAL);
    assert_ptr_equal(f, (dmarc_from *)&f);
    assert_int_equal(dmarc_from_parse(NULL, NULL, 0, &f, &diag), DMARC_ERR_SYNTAX);
    assert_int_equal(diag.code, DMARC_DIAG_SYNTAX);
    assert_int_equal(dmarc_from_parse(NULL, "", 0, &f, &diag), DMARC_ERR_SYNTAX);
    assert_ptr_equal(f, (dmarc_from *)&f);
    /* diag is optional, on success and on failure. */
    assert_int_equal(dmarc_from_parse(NULL, "", 0, &f, NULL), DMARC_ERR_SYNTAX);
    f = NULL;
    assert_int_equal(dmarc_from_parse(NULL, "a@b.example", 11, &f, NULL), DMARC_OK);
    assert_int_equal(dmarc_from_count(f), 1);
    dmarc_from_free(f);
}

static void from__accessors_accept_null_and_range(void **state)
{
    dmarc_from *f;
    (void)state;

    dmarc_from_free(NULL);
    assert_int_equal(dmarc_from_count(NULL), 0);
    assert_null(dmarc_from_mailbox(NULL, 0));
    f = parse_ok("a@x.example, b@y.example", NULL);
    assert_int_equal(dmarc_from_count(f), 2);
    assert_non_null(dmarc_from_mailbox(f, 1));
    assert_null(dmarc_from_mailbox(f, 2));
    assert_null(dmarc_from_mailbox(f, (size_t)-1));
    dmarc_from_free(f);
}

/* Fail the Nth allocation, N = 1, 2, ... until the parse succeeds: every
** failure is DMARC_ERR_NOMEM with nothing leaked and nothing returned. */
static void from__fails_cleanly_without_memory(void **state)
{
    static const char *const raws[] = {
        "\"Name\" <user@example.com>",
        "=?utf-8?q?J=C3=BCrgen?= <j@bücher.de>, grp: a@x.example, b@[1.2.3.4];, c",
        "undisclosed-recipients:;",
    };
    size_t i, n;
    (void)state;

    for (i = 0; i < sizeof raws / sizeof raws[0]; i++) {
        failing_alloc ca;
        failing_alloc_init(&ca, 0);
        dmarc_allocator alloc;
        dmarc_from *f = NULL;
        dmarc_status st = DMARC_ERR_NOMEM;
        alloc.fn = failing_alloc_fn;
        alloc.ud = &ca;
        for (n = 1; n < 100; n++) {
            ca.fail_at = n;
            ca.count = 0;
            f = NULL;
            st = dmarc_from_parse(&alloc, raws[i], strlen(raws[i]), &f, NULL);
            if (st != DMARC_ERR_NOMEM)
                break;
            assert_null(f);
            assert_int_equal(ca.live, 0);
            assert_false(ca.size_mismatch);
        }
        assert_true(n > 1); /* at least one allocation was made and failed */
        assert_int_equal(st, DMARC_OK);
        check_invariants(f);
        /* Everything the object owns comes from the allocator. */
        assert_true(ca.live > 0);
        dmarc_from_free(f);
        assert_int_equal(ca.live, 0);
        assert_false(ca.size_mismatch);
    }
}

/* }====================================================== */

/* ** {======================================================
** Shared vectors: tests/vectors/from.tsv
** ======================================================= */

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Resolve the file's escapes; false on a malformed one. */
static bool unescape(const char *in, size_t len, char *out, size_t *outlen)
{
    size_t i, n = 0;
    for (i = 0; i < len; i++) {
        if (in[i] != '\\') {
            out[n++] = in[i];
            continue;
        }
        if (++i >= len)
            return false;
        switch (in[i]) {
        case 't':
            out[n++] = '\t';
            break;
        case 'r':
            out[n++] = '\r';
            break;
        case 'n':
            out[n++] = '\n';
            break;
        case '0':
            out[n++] = '\0';
            break;
        case '\\':
            out[n++] = '\\';
            break;
        case 'x': {
            int hi, lo;
            if (i + 2 >= len)
                return false;
            hi = hex_digit(in[i + 1]);
            lo = hex_digit(in[i + 2]);
            if (hi < 0 || lo < 0)
                return false;
            out[n++] = (char)(hi * 16 + lo);
            i += 2;
            break;
        }
        default:
            return false;
        }
    }
    *outlen = n;
    return true;
}

static void from__shared_vectors(void **state)
{
    FILE *fp = fopen(FROM_VECTORS, "rb");
    char line[VECTOR_LINE_MAX], raw[VECTOR_LINE_MAX], got[VECTOR_LINE_MAX];
    size_t lineno = 0, count = 0, failures = 0;
    (void)state;

    if (fp == NULL)
        fail_msg("cannot open %s (tests run from the repository root)", FROM_VECTORS);
    while (fgets(line, sizeof line, fp) != NULL) {
        size_t len = strlen(line), rawlen = 0;
        char *tab, *want;
        dmarc_from *f = NULL;
        dmarc_diag diag;
        dmarc_status st;

        lineno++;
        if (len > 0 && line[len - 1] == '\n')
            line[--len] = '\0';
        else if (!feof(fp))
            fail_msg("%s:%zu: line too long", FROM_VECTORS, lineno);
        if (len == 0 || line[0] == '#')
            continue;
        tab = strchr(line, '\t');
        if (tab == NULL || !unescape(line, (size_t)(tab - line), raw, &rawlen))
            fail_msg("%s:%zu: malformed vector", FROM_VECTORS, lineno);
        want = tab + 1;
        count++;
        st = parse_len(raw, rawlen, &f, &diag);
        if (st == DMARC_OK) {
            domains_of(f, got, sizeof got);
            dmarc_from_free(f);
        } else if (st == DMARC_ERR_SYNTAX) {
            strcpy(got, "syntax_error");
        } else {
            strcpy(got, "unexpected status");
        }
        if (strcmp(got, want) != 0) {
            print_error("%s:%zu: expected [%s], got [%s]\n", FROM_VECTORS, lineno, want, got);
            failures++;
        }
    }
    fclose(fp);
    assert_int_equal(failures, 0);
    assert_true(count >= VECTOR_MIN_COUNT);
}

/* }====================================================== */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(from__reads_name_addr),
        cmocka_unit_test(from__reads_bare_addr_spec),
        cmocka_unit_test(from__reads_only_len_bytes),
        cmocka_unit_test(from__rfc5322_a_1_1),
        cmocka_unit_test(from__rfc5322_a_1_2),
        cmocka_unit_test(from__rfc5322_a_1_3),
        cmocka_unit_test(from__rfc5322_a_5),
        cmocka_unit_test(from__rfc5322_a_6),
        cmocka_unit_test(from__ignores_obs_route),
        cmocka_unit_test(from__joins_obs_local_part),
        cmocka_unit_test(from__unquotes_local_part),
        cmocka_unit_test(from__quoted_display_never_an_address),
        cmocka_unit_test(from__loose_local_part_is_noted),
        cmocka_unit_test(from__group_only_has_no_mailbox),
        cmocka_unit_test(from__group_members_are_mailboxes),
        cmocka_unit_test(from__unterminated_group_is_noted),
        cmocka_unit_test(from__nested_group_is_refused),
        cmocka_unit_test(from__mailbox_without_usable_domain),
        cmocka_unit_test(from__domain_problems_are_per_mailbox),
        cmocka_unit_test(from__keeps_every_distinct_domain),
        cmocka_unit_test(from__keeps_same_domain_twice),
        cmocka_unit_test(from__normalizes_case_and_trailing_dot),
        cmocka_unit_test(from__converts_idn_domain),
        cmocka_unit_test(from__accepts_utf8_everywhere),
        cmocka_unit_test(from__decodes_encoded_display_names),
        cmocka_unit_test(from__joins_adjacent_encoded_words),
        cmocka_unit_test(from__leaves_broken_encoded_words),
        cmocka_unit_test(from__encoded_word_never_yields_an_address),
        cmocka_unit_test(from__encoded_word_only_in_phrases),
        cmocka_unit_test(from__normalizes_display_spacing),
        cmocka_unit_test(from__recovers_unambiguous_mailboxes),
        cmocka_unit_test(from__refuses_ambiguous_fields),
        cmocka_unit_test(from__refuses_fields_with_nothing_usable),
        cmocka_unit_test(from__reports_where_it_failed),
        cmocka_unit_test(from__handles_line_breaks),
        cmocka_unit_test(from__nul_is_never_data),
        cmocka_unit_test(from__unbalanced_delimiters),
        cmocka_unit_test(from__limits_comment_depth),
        cmocka_unit_test(from__limits_field_length),
        cmocka_unit_test(from__limits_mailbox_count),
        cmocka_unit_test(from__mailbox_limit_outranks_other_problems),
        cmocka_unit_test(from__survives_many_commas),
        cmocka_unit_test(from__survives_hostile_input),
        cmocka_unit_test(from__null_and_zero_length),
        cmocka_unit_test(from__accessors_accept_null_and_range),
        cmocka_unit_test(from__fails_cleanly_without_memory),
        cmocka_unit_test(from__shared_vectors),
        cmocka_unit_test(from__mailbox_limit_counts_distinct_domains),
        cmocka_unit_test(from__lenient_reading),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
