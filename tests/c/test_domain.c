/*
** Domain normalization [FROM-2] [FROM-3]: dmarc_domain_normalize and the
** internal variant that says why a name was refused.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "dmarc.h"
#include "domain.h"

/* Normalize a NUL-terminated input; the result must be @want. */
static void expect_ok(const char *in, const char *want)
{
    char out[DMARC_DOMAIN_MAX_LEN + 1];
    size_t n = 0;
    dmarc_diag_code why = DMARC_DIAG_SYNTAX;

    assert_int_equal(dmarc__domain_normalize(in, strlen(in), out, sizeof out, &n, &why), DMARC_OK);
    assert_int_equal(why, DMARC_DIAG_NONE);
    assert_string_equal(out, want);
    assert_int_equal(n, strlen(want));
    /* The public function agrees, and its result is a fixed point. */
    assert_int_equal(dmarc_domain_normalize(in, strlen(in), out, sizeof out, &n), DMARC_OK);
    assert_string_equal(out, want);
    assert_int_equal(dmarc_domain_normalize(out, n, out, sizeof out, &n), DMARC_OK);
    assert_string_equal(out, want);
}

/* Normalize @len bytes of @in; it must be refused for @want_why. */
static void expect_refused_len(const char *in, size_t len, dmarc_diag_code want_why)
{
    char out[DMARC_DOMAIN_MAX_LEN + 1];
    size_t n = 12345;
    dmarc_diag_code why = DMARC_DIAG_NONE;

    memset(out, 'Z', sizeof out);
    assert_int_equal(dmarc__domain_normalize(in, len, out, sizeof out, &n, &why), DMARC_ERR_SYNTAX);
    assert_int_equal(why, want_why);
    assert_int_equal(dmarc_domain_normalize(in, len, out, sizeof out, &n), DMARC_ERR_SYNTAX);
    /* Out-parameters stay untouched on error. */
    assert_int_equal(n, 12345);
    assert_int_equal(out[0], 'Z');
}

static void expect_refused(const char *in, dmarc_diag_code want_why)
{
    expect_refused_len(in, strlen(in), want_why);
}

/* [FROM-2]: compare case-insensitively, so lowercase before anything. */
static void domain__lowercases_ascii(void **state)
{
    (void)state;
    expect_ok("Example.COM", "example.com");
    expect_ok("MAIL.EXAMPLE.ORG", "mail.example.org");
    expect_ok("example.com", "example.com");
}

/* [FROM-2]: one trailing dot is the root and is stripped; only one. */
static void domain__strips_one_trailing_dot(void **state)
{
    (void)state;
    expect_ok("example.com.", "example.com");
    expect_ok("Example.Com.", "example.com");
    expect_refused("example.com..", DMARC_DIAG_NO_DOMAIN);
    expect_refused(".", DMARC_DIAG_NO_DOMAIN);
    expect_refused("..", DMARC_DIAG_NO_DOMAIN);
}

static void domain__single_label_is_a_name(void **state)
{
    (void)state;
    expect_ok("localhost", "localhost");
    expect_ok("COM", "com");
}

/* [FROM-3]: U-labels become A-labels (RFC 5890 §2.3), vector 22 of the digest. */
static void domain__converts_ulabels_to_alabels(void **state)
{
    (void)state;
    expect_ok("ÄÖ.example", "xn--4ca0b.example");
    expect_ok("äö.example", "xn--4ca0b.example");
    expect_ok("bücher.de", "xn--bcher-kva.de");
    expect_ok("BÜCHER.DE", "xn--bcher-kva.de");
    expect_ok("mail.bücher.de.", "mail.xn--bcher-kva.de");
    /* A mixed name keeps its ASCII labels, underscore included. */
    expect_ok("a_b.bücher.de", "a_b.xn--bcher-kva.de");
}

/* An ASCII label obeys the same rules next to a U-label as anywhere else. */
static void domain__ascii_labels_same_rules_in_mixed_names(void **state)
{
    (void)state;
    expect_ok("ab--cd.example", "ab--cd.example");
    expect_ok("AB--cd.bücher.de", "ab--cd.xn--bcher-kva.de");
    expect_refused("-a.example", DMARC_DIAG_NO_DOMAIN);
    expect_refused("-a.bücher.de", DMARC_DIAG_NO_DOMAIN);
    expect_refused("a!b.bücher.de", DMARC_DIAG_NO_DOMAIN);
    expect_refused("bücher.de..", DMARC_DIAG_NO_DOMAIN);
    expect_refused("x.\xe3\x80\x82", DMARC_DIAG_BAD_IDN);
}

/* [FROM-3]: non-transitional processing (IDNA2008): ß and ς are letters of
** their own, not "ss" and "σ". */
static void domain__ulabels_are_nontransitional(void **state)
{
    (void)state;
    expect_ok("faß.de", "xn--fa-hia.de");
    expect_ok("Straße.de", "xn--strae-oqa.de");
}

/* UTS #46 maps the ideographic full stop to '.'; it may also end the name. */
static void domain__maps_ideographic_full_stop(void **state)
{
    (void)state;
    expect_ok("bücher\xe3\x80\x82"
              "de",
              "xn--bcher-kva.de");
    expect_ok("bücher.de\xe3\x80\x82", "xn--bcher-kva.de");
}

/* Names IDNA2008 refuses but IDNA2003 registered (a symbol label, a
** zero-width joiner) still name a policy: see the fallback note in domain.c. */
static void domain__falls_back_to_transitional_only_when_refused(void **state)
{
    (void)state;
    expect_ok("i\xe2\x9d\xa4.ws", "xn--i-7iq.ws");
    expect_ok("xn--i-7iq.ws", "xn--i-7iq.ws");
    expect_ok("pay\xe2\x80\x8dpal.example", "paypal.example");
}

/* Already-A-label input is lowercased and checked, not re-encoded. */
static void domain__keeps_genuine_alabels(void **state)
{
    (void)state;
    expect_ok("xn--4ca0b.example", "xn--4ca0b.example");
    expect_ok("XN--4CA0B.Example", "xn--4ca0b.example");
    expect_ok("xn--Bcher-KVA.de", "xn--bcher-kva.de");
    expect_ok("xn--zca.de", "xn--zca.de");
    /* The check of the xn-- labels leaves the other labels alone. */
    expect_ok("_dmarc.XN--4ca0b.example", "_dmarc.xn--4ca0b.example");
    expect_ok("ab--cd.xn--4ca0b.example", "ab--cd.xn--4ca0b.example");
}

/* RFC 5890 §2.3.2.1: an xn-- label that is no A-label is refused. */
static void domain__refuses_fake_alabels(void **state)
{
    (void)state;
    expect_refused("xn--zz.com", DMARC_DIAG_BAD_IDN);
    expect_refused("xn--a.com", DMARC_DIAG_BAD_IDN);
    expect_refused("xn--0.com", DMARC_DIAG_BAD_IDN);
    expect_refused("mail.xn--55555555.example", DMARC_DIAG_BAD_IDN);
    /* Decodes, but is not what encoding its U-label gives. */
    expect_refused("xn--bcher-kvb.de", DMARC_DIAG_BAD_IDN);
    /* A trailing hyphen is refused before any decoding. */
    expect_refused("xn--abc-.com", DMARC_DIAG_NO_DOMAIN);
    /* "xn--" alone ends with a hyphen. */
    expect_refused("xn--.example", DMARC_DIAG_NO_DOMAIN);
}

static void domain__refuses_broken_utf8_and_bad_ulabels(void **state)
{
    (void)state;
    expect_refused("\xff.com", DMARC_DIAG_BAD_IDN);
    expect_refused("b\xc3.com", DMARC_DIAG_BAD_IDN);
    expect_refused("ü-.de", DMARC_DIAG_BAD_IDN);
    expect_refused("ü!x.de", DMARC_DIAG_BAD_IDN);
    /* A label of soft hyphens maps to nothing: an empty label. */
    expect_refused("\xc2\xad.com", DMARC_DIAG_BAD_IDN);
}

/* Letters, digits, hyphen, and underscore (see domain.c for why). */
static void domain__accepts_underscore_labels(void **state)
{
    (void)state;
    expect_ok("_dmarc.Example.com", "_dmarc.example.com");
    expect_ok("a_b.example", "a_b.example");
}

static void domain__checks_hyphen_position(void **state)
{
    (void)state;
    expect_ok("a-b.example", "a-b.example");
    expect_ok("ab--cd.example", "ab--cd.example");
    expect_refused("-a.example", DMARC_DIAG_NO_DOMAIN);
    expect_refused("a-.example", DMARC_DIAG_NO_DOMAIN);
    expect_refused("example.-", DMARC_DIAG_NO_DOMAIN);
}

static void domain__refuses_characters_no_host_name_has(void **state)
{
    (void)state;
    expect_refused("exa mple.com", DMARC_DIAG_NO_DOMAIN);
    expect_refused("a!b.com", DMARC_DIAG_NO_DOMAIN);
    expect_refused("user@example.com", DMARC_DIAG_NO_DOMAIN);
    expect_refused("[192.0.2.1]", DMARC_DIAG_NO_DOMAIN);
    expect_refused("a\tb.com", DMARC_DIAG_NO_DOMAIN);
    expect_refused("=?utf-8?q?a?=", DMARC_DIAG_NO_DOMAIN);
}

static void domain__refuses_empty_labels(void **state)
{
    (void)state;
    expect_refused("a..b", DMARC_DIAG_NO_DOMAIN);
    expect_refused(".example.com", DMARC_DIAG_NO_DOMAIN);
}

/* Input is pointer + length: a NUL inside is invalid data, and bytes past
** @len are never read. */
static void domain__nul_inside_is_refused(void **state)
{
    (void)state;
    expect_refused_len("exa\0mple.com", 12, DMARC_DIAG_NO_DOMAIN);
    expect_refused_len("example.com\0", 12, DMARC_DIAG_NO_DOMAIN);
    expect_refused_len("b\xc3\xbc\0cher.de", 9, DMARC_DIAG_NO_DOMAIN);
}

static void domain__uses_only_len_bytes(void **state)
{
    char out[DMARC_DOMAIN_MAX_LEN + 1];
    size_t n = 0;
    (void)state;
    assert_int_equal(dmarc_domain_normalize("example.comXYZ", 11, out, sizeof out, &n), DMARC_OK);
    assert_string_equal(out, "example.com");
    assert_int_equal(n, 11);
}

/* RFC 1035 §2.3.4: labels up to 63, names up to DMARC_DOMAIN_MAX_LEN. */
static void domain__enforces_label_and_name_length(void **state)
{
    char name[DMARC_DOMAIN_MAX_LEN + 8];
    (void)state;

    memset(name, 'a', 63);
    strcpy(name + 63, ".com");
    expect_ok(name, name);
    memset(name, 'a', 64);
    strcpy(name + 64, ".com");
    expect_refused(name, DMARC_DIAG_TOO_LONG);

    /* 4 labels of 63 and a dot each: 255; trim to exactly 253. */
    memset(name, 'b', sizeof name);
    name[63] = name[127] = name[191] = '.';
    name[DMARC_DOMAIN_MAX_LEN] = '\0';
    expect_ok(name, name);
    name[DMARC_DOMAIN_MAX_LEN] = '.';
    name[DMARC_DOMAIN_MAX_LEN + 1] = '\0';
    {
        char want[DMARC_DOMAIN_MAX_LEN + 1];
        memcpy(want, name, DMARC_DOMAIN_MAX_LEN);
        want[DMARC_DOMAIN_MAX_LEN] = '\0';
        expect_ok(name, want); /* 253 plus the root dot */
    }
    name[DMARC_DOMAIN_MAX_LEN] = 'b';
    expect_refused(name, DMARC_DIAG_TOO_LONG);
}

/* An A-label is longer than its U-label: the limit applies to the result. */
static void domain__limits_the_converted_length(void **state)
{
    char name[600];
    size_t i, n = 0;
    (void)state;

    /* 40 labels "üü" (4 bytes each) -> "xn--tdaa" (8 chars): 40 * 9 - 1 = 359. */
    for (i = 0; i < 40; i++) {
        memcpy(name + n, "\xc3\xbc\xc3\xbc.", 5);
        n += 5;
    }
    name[n - 1] = '\0';
    expect_refused(name, DMARC_DIAG_TOO_LONG);
}

/* DMARC__DOMAIN_MAX_INPUT bounds the work handed to libidn2. */
static void domain__refuses_oversized_input_early(void **state)
{
    static char big[DMARC__DOMAIN_MAX_INPUT + 16];
    size_t i;
    (void)state;

    for (i = 0; i + 2 <= sizeof big; i += 2)
        memcpy(big + i, "\xc2\xad", 2);
    expect_refused_len(big, DMARC__DOMAIN_MAX_INPUT + 2, DMARC_DIAG_TOO_LONG);
    memset(big, 'a', sizeof big);
    expect_refused_len(big, DMARC_DOMAIN_MAX_LEN + 2, DMARC_DIAG_TOO_LONG);
}

static void domain__null_and_zero_length(void **state)
{
    char out[DMARC_DOMAIN_MAX_LEN + 1];
    size_t n = 7;
    dmarc_diag_code why = DMARC_DIAG_NONE;
    (void)state;

    assert_int_equal(dmarc_domain_normalize(NULL, 0, out, sizeof out, &n), DMARC_ERR_SYNTAX);
    assert_int_equal(dmarc__domain_normalize(NULL, 0, out, sizeof out, &n, &why), DMARC_ERR_SYNTAX);
    assert_int_equal(why, DMARC_DIAG_NO_DOMAIN);
    assert_int_equal(dmarc_domain_normalize("", 0, out, sizeof out, &n), DMARC_ERR_SYNTAX);
    assert_int_equal(dmarc_domain_normalize(NULL, 3, out, sizeof out, &n), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_domain_normalize("a.b", 3, NULL, sizeof out, &n), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_domain_normalize("a.b", 3, out, sizeof out, NULL), DMARC_ERR_INVAL);
    assert_int_equal(n, 7);
    /* why is optional. */
    assert_int_equal(dmarc__domain_normalize("a.b", 3, out, sizeof out, &n, NULL), DMARC_OK);
    assert_int_equal(n, 3);
}

/* A buffer too small for the result is the caller's mistake; nothing is
** written. DMARC_DOMAIN_MAX_LEN + 1 always suffices. */
static void domain__small_buffer_is_inval(void **state)
{
    char out[8];
    size_t n = 99;
    (void)state;

    memset(out, 'Z', sizeof out);
    assert_int_equal(dmarc_domain_normalize("example.com", 11, out, sizeof out, &n),
                     DMARC_ERR_INVAL);
    assert_int_equal(out[0], 'Z');
    assert_int_equal(n, 99);
    assert_int_equal(dmarc_domain_normalize("a.example", 9, out, 9, &n), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_domain_normalize("a.examp", 7, out, 8, &n), DMARC_OK);
    assert_string_equal(out, "a.examp");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(domain__lowercases_ascii),
        cmocka_unit_test(domain__strips_one_trailing_dot),
        cmocka_unit_test(domain__single_label_is_a_name),
        cmocka_unit_test(domain__converts_ulabels_to_alabels),
        cmocka_unit_test(domain__ascii_labels_same_rules_in_mixed_names),
        cmocka_unit_test(domain__ulabels_are_nontransitional),
        cmocka_unit_test(domain__maps_ideographic_full_stop),
        cmocka_unit_test(domain__falls_back_to_transitional_only_when_refused),
        cmocka_unit_test(domain__keeps_genuine_alabels),
        cmocka_unit_test(domain__refuses_fake_alabels),
        cmocka_unit_test(domain__refuses_broken_utf8_and_bad_ulabels),
        cmocka_unit_test(domain__accepts_underscore_labels),
        cmocka_unit_test(domain__checks_hyphen_position),
        cmocka_unit_test(domain__refuses_characters_no_host_name_has),
        cmocka_unit_test(domain__refuses_empty_labels),
        cmocka_unit_test(domain__nul_inside_is_refused),
        cmocka_unit_test(domain__uses_only_len_bytes),
        cmocka_unit_test(domain__enforces_label_and_name_length),
        cmocka_unit_test(domain__limits_the_converted_length),
        cmocka_unit_test(domain__refuses_oversized_input_early),
        cmocka_unit_test(domain__null_and_zero_length),
        cmocka_unit_test(domain__small_buffer_is_inval),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
