/*
** Tests of the DMARC record parser (core/src/record.c). Each test cites the
** rule of the standards digest it pins ([REC-3], [EVAL-7] ...). The shared
** vectors in tests/vectors/records.tsv are checked by record__vectors_file.
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
#include "failing_alloc.h"

#define R9 DMARC_MODE_RFC9989
#define R7 DMARC_MODE_RFC7489

/* ** {======================================================
** Helpers
** ======================================================= */

static dmarc_record *parse_ok(dmarc_mode mode, const char *txt)
{
    dmarc_record *r = NULL;
    dmarc_diag diag;
    assert_int_equal(dmarc_record_parse(mode, NULL, txt, strlen(txt), &r, &diag), DMARC_OK);
    assert_non_null(r);
    assert_int_equal(r->mode, mode);
    return r;
}

static dmarc_status parse_status(dmarc_mode mode, const char *txt, size_t len, dmarc_diag *diag)
{
    dmarc_record *r = NULL;
    dmarc_status st = dmarc_record_parse(mode, NULL, txt, len, &r, diag);
    if (st == DMARC_OK) {
        assert_non_null(r);
        dmarc_record_free(r);
    } else {
        assert_null(r);
    }
    return st;
}

static void assert_not_dmarc(dmarc_mode mode, const char *txt)
{
    dmarc_diag diag;
    memset(&diag, 0, sizeof(diag));
    assert_int_equal(parse_status(mode, txt, strlen(txt), &diag), DMARC_ERR_SYNTAX);
    assert_int_equal(diag.code, DMARC_DIAG_NOT_DMARC);
    assert_false(dmarc_record_is_dmarc(mode, txt, strlen(txt)));
}

/* Number of warnings with @code. */
static size_t count_warn(const dmarc_record *r, dmarc_diag_code code)
{
    size_t i, n = 0;
    for (i = 0; i < r->warning_count; i++)
        if (r->warnings[i].code == code)
            n++;
    return n;
}

static const dmarc_diag *find_warn(const dmarc_record *r, dmarc_diag_code code)
{
    size_t i;
    for (i = 0; i < r->warning_count; i++)
        if (r->warnings[i].code == code)
            return &r->warnings[i];
    return NULL;
}

/* Growable text buffer for the long inputs of the limit tests. */
struct buf {
    char *s;
    size_t len, cap;
};

static void buf_add(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;
    for (;;) {
        size_t room = b->cap - b->len;
        va_start(ap, fmt);
        n = vsnprintf(b->s == NULL ? NULL : b->s + b->len, room, fmt, ap);
        va_end(ap);
        assert_true(n >= 0);
        if ((size_t)n < room)
            break;
        b->cap = (b->cap + (size_t)n + 1) * 2;
        b->s = realloc(b->s, b->cap);
        assert_non_null(b->s);
    }
    b->len += (size_t)n;
}

/* }====================================================== */

/* ** {======================================================
** Section 15 vectors that are about the record alone
** ======================================================= */

/* #6 [EVAL-7]: invalid p with a valid rua: the whole record acts as p=none. */
static void record__vector6_bad_p_with_rua_acts_as_none(void **state)
{
    dmarc_mode modes[] = {R9, R7};
    size_t i;
    (void)state;
    for (i = 0; i < 2; i++) {
        dmarc_record *r = parse_ok(modes[i], "v=DMARC1; p=bogus; sp=reject; rua=mailto:x@ex.com");
        assert_true(r->usable);
        assert_true(r->as_none);
        assert_true(r->bad_p);
        assert_false(r->has_p);
        assert_int_equal(r->p, DMARC_POLICY_NONE);
        /* "even if another tag says reject" */
        assert_int_equal(r->sp, DMARC_POLICY_NONE);
        assert_int_equal(r->np, DMARC_POLICY_NONE);
        assert_int_equal(r->rua_count, 1);
        assert_int_equal(count_warn(r, DMARC_DIAG_INVALID_POLICY), 1);
        dmarc_record_free(r);
    }
}

/* #7 [EVAL-7] [OPEN-4]: invalid sp and no rua: no DMARC (permerror). */
static void record__vector7_bad_sp_without_rua_unusable(void **state)
{
    dmarc_mode modes[] = {R9, R7};
    size_t i;
    (void)state;
    for (i = 0; i < 2; i++) {
        dmarc_record *r = NULL;
        dmarc_diag diag;
        const char *txt = "v=DMARC1; p=reject; sp=bogus";
        assert_int_equal(dmarc_record_parse(modes[i], NULL, txt, strlen(txt), &r, &diag), DMARC_OK);
        assert_false(r->usable);
        assert_false(r->as_none);
        assert_true(r->bad_sp);
        assert_int_equal(diag.code, DMARC_DIAG_INVALID_POLICY);
        assert_string_equal(diag.tag, "sp");
        assert_int_equal(diag.offset, strlen("v=DMARC1; p=reject; sp="));
        dmarc_record_free(r);
    }
}

/* #8 [OPEN-7] [EVAL-7]: `v=DMARC1` alone: rfc9989 p=none, rfc7489 no DMARC. */
static void record__vector8_v_only_depends_on_mode(void **state)
{
    dmarc_record *r;
    dmarc_diag diag;
    (void)state;
    r = parse_ok(R9, "v=DMARC1");
    assert_true(r->usable);
    assert_false(r->as_none);
    assert_false(r->has_p);
    assert_int_equal(r->p, DMARC_POLICY_NONE);
    assert_int_equal(r->sp, DMARC_POLICY_NONE);
    assert_int_equal(r->np, DMARC_POLICY_NONE);
    assert_int_equal(count_warn(r, DMARC_DIAG_MISSING_P), 1);
    dmarc_record_free(r);

    r = NULL;
    assert_int_equal(dmarc_record_parse(R7, NULL, "v=DMARC1", 8, &r, &diag), DMARC_OK);
    assert_false(r->usable);
    assert_int_equal(diag.code, DMARC_DIAG_MISSING_P);
    dmarc_record_free(r);
}

/* #9 [REC-4]: an unknown tag is ignored with a warning. */
static void record__vector9_unknown_tag_ignored(void **state)
{
    dmarc_record *r;
    const dmarc_diag *w;
    (void)state;
    r = parse_ok(R9, "v=DMARC1; p=quarantine; foo=bar");
    assert_true(r->usable);
    assert_int_equal(r->p, DMARC_POLICY_QUARANTINE);
    assert_int_equal(r->warning_count, 1);
    w = find_warn(r, DMARC_DIAG_UNKNOWN_TAG);
    assert_non_null(w);
    assert_string_equal(w->tag, "foo");
    assert_int_equal(w->offset, strlen("v=DMARC1; p=quarantine; "));
    dmarc_record_free(r);
}

/* #10 [REC-2]: v must come first. */
static void record__vector10_v_not_first_is_not_a_record(void **state)
{
    (void)state;
    assert_not_dmarc(R9, "p=DMARC1; v=DMARC1");
    assert_not_dmarc(R7, "p=DMARC1; v=DMARC1");
    assert_not_dmarc(R9, "p=reject; v=DMARC1");
}

/* #11 [REC-1]: character-strings concatenated with no separator. */
static void record__vector11_split_strings_concatenated(void **state)
{
    const char *parts[] = {"v=DMARC1; p=rej", "ect"};
    char joined[64];
    dmarc_record *r;
    (void)state;
    snprintf(joined, sizeof(joined), "%s%s", parts[0], parts[1]);
    r = parse_ok(R9, joined);
    assert_true(r->has_p);
    assert_int_equal(r->p, DMARC_POLICY_REJECT);
    dmarc_record_free(r);
}

/* #25 [REC-7]: `!10m` is parsed in both modes (rfc9989 receivers ignore it). */
static void record__vector25_size_suffix_in_both_modes(void **state)
{
    dmarc_mode modes[] = {R9, R7};
    size_t i;
    (void)state;
    for (i = 0; i < 2; i++) {
        dmarc_record *r = parse_ok(modes[i], "v=DMARC1; p=none; rua=mailto:r@ex.com!10m");
        assert_int_equal(r->rua_count, 1);
        assert_string_equal(r->rua[0].uri, "mailto:r@ex.com");
        assert_int_equal(r->rua[0].len, strlen("mailto:r@ex.com"));
        assert_true(r->rua[0].max_size == 10485760u);
        assert_true(r->rua[0].is_mailto);
        assert_int_equal(r->warning_count, 0);
        dmarc_record_free(r);
    }
}

/* }====================================================== */

/* ** {======================================================
** Prefix and grammar
** ======================================================= */

/* [REC-2]: v *WSP "=" *WSP "DMARC1" *WSP, then ';' or the end. */
static void record__version_prefix(void **state)
{
    dmarc_record *r;
    (void)state;
    assert_not_dmarc(R9, "v=DMARC10");
    assert_not_dmarc(R9, "v=DMARC1 p=reject");
    assert_not_dmarc(R9, "v=dmarc1; p=reject");
    assert_not_dmarc(R7, "v=Dmarc1; p=reject");
    assert_not_dmarc(R9, " v=DMARC1; p=reject");
    assert_not_dmarc(R9, "v=DMARC");
    assert_not_dmarc(R9, "v:DMARC1");
    assert_not_dmarc(R9, "v=spf1 include:ex.com -all");
    assert_not_dmarc(R9, "\"v=DMARC1\"");

    r = parse_ok(R9, "v \t= \tDMARC1 \t; p=reject");
    assert_int_equal(r->p, DMARC_POLICY_REJECT);
    dmarc_record_free(r);
    r = parse_ok(R9, "v=DMARC1   ");
    assert_true(r->usable);
    dmarc_record_free(r);
}

/* [REC-2]: the name `v` is a case-insensitive ABNF literal in both modes
** (RFC 9989 §4.8, RFC 5234 §2.3); rfc9989 warns tag_case at offset 0. The
** value DMARC1 stays case-sensitive. */
static void record__v_name_case_insensitive_in_both_modes(void **state)
{
    dmarc_record *r;
    const dmarc_diag *w;
    (void)state;
    assert_true(dmarc_record_is_dmarc(R9, "V=DMARC1; p=reject", 18));
    assert_true(dmarc_record_is_dmarc(R7, "V=DMARC1; p=reject", 18));
    r = parse_ok(R9, "V = DMARC1 ; p=reject");
    assert_true(r->usable);
    assert_int_equal(r->p, DMARC_POLICY_REJECT);
    assert_int_equal(count_warn(r, DMARC_DIAG_TAG_CASE), 1);
    w = find_warn(r, DMARC_DIAG_TAG_CASE);
    assert_string_equal(w->tag, "V");
    assert_int_equal(w->offset, 0);
    dmarc_record_free(r);
    r = parse_ok(R7, "V=DMARC1; p=reject");
    assert_int_equal(r->p, DMARC_POLICY_REJECT);
    assert_int_equal(r->warning_count, 0);
    dmarc_record_free(r);
    assert_not_dmarc(R9, "V=dmarc1; p=reject");
    assert_not_dmarc(R7, "V=Dmarc1; p=reject");
}

/* [REC-2]: dmarc_record_is_dmarc agrees with the parser on every input. */
static void record__is_dmarc_agrees_with_parse(void **state)
{
    static const char *const inputs[] = {
        "v=DMARC1",
        "v=DMARC1;",
        "v=DMARC1; p=none",
        "V=DMARC1",
        "v = DMARC1 ;x",
        "v=DMARC10",
        "v=DMARC1 x",
        "",
        "v",
        "v=",
        "v=DMARC",
        "x=DMARC1",
        "v=DMARC1\t",
        "v=DMARC1\x01;",
    };
    size_t i, m;
    (void)state;
    for (m = 0; m < DMARC_MODE__COUNT; m++) {
        for (i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
            dmarc_diag diag;
            size_t len = strlen(inputs[i]);
            bool is = dmarc_record_is_dmarc((dmarc_mode)m, inputs[i], len);
            dmarc_status st = parse_status((dmarc_mode)m, inputs[i], len, &diag);
            assert_int_equal(is, st == DMARC_OK);
        }
    }
    assert_false(dmarc_record_is_dmarc(R9, NULL, 0));
    assert_false(dmarc_record_is_dmarc((dmarc_mode)7, "v=DMARC1", 8));
}

/* [REC-3]: rfc9989 tag names are case-sensitive: a known tag in another
** case is an unknown tag with its own warning, tag_case. */
static void record__tag_case_rfc9989(void **state)
{
    dmarc_record *r;
    const dmarc_diag *w;
    (void)state;
    r = parse_ok(R9, "v=DMARC1; P=reject; p=quarantine; ADKIM=s");
    assert_true(r->usable);
    assert_int_equal(r->p, DMARC_POLICY_QUARANTINE);
    assert_int_equal(r->adkim, DMARC_ALIGN_RELAXED);
    assert_int_equal(count_warn(r, DMARC_DIAG_TAG_CASE), 2);
    assert_int_equal(count_warn(r, DMARC_DIAG_UNKNOWN_TAG), 0);
    w = find_warn(r, DMARC_DIAG_TAG_CASE);
    assert_string_equal(w->tag, "P");
    assert_int_equal(w->offset, 10);
    dmarc_record_free(r);
}

/* [REC-3]: rfc7489 tag names are case-insensitive ABNF literals. */
static void record__tag_case_rfc7489(void **state)
{
    dmarc_record *r;
    (void)state;
    r = parse_ok(R7, "v=DMARC1; P=reject; SP=none; ADKIM=s; Aspf=s; PCT=10; RUA=mailto:a@ex.com");
    assert_true(r->usable);
    assert_int_equal(r->p, DMARC_POLICY_REJECT);
    assert_int_equal(r->sp, DMARC_POLICY_NONE);
    assert_int_equal(r->adkim, DMARC_ALIGN_STRICT);
    assert_int_equal(r->aspf, DMARC_ALIGN_STRICT);
    assert_int_equal(r->pct, 10);
    assert_int_equal(r->rua_count, 1);
    assert_int_equal(r->warning_count, 0);
    dmarc_record_free(r);
}

/* [REC-3]: keyword values are case-insensitive in both modes. */
static void record__keyword_values_case_insensitive(void **state)
{
    dmarc_mode modes[] = {R9, R7};
    size_t i;
    (void)state;
    for (i = 0; i < 2; i++) {
        dmarc_record *r = parse_ok(modes[i], "v=DMARC1; p=Reject; sp=QuaranTine; np=NONE; "
                                             "adkim=S; aspf=R; t=Y; psd=N; fo=D");
        assert_int_equal(r->p, DMARC_POLICY_REJECT);
        assert_int_equal(r->sp, DMARC_POLICY_QUARANTINE);
        assert_int_equal(r->np, DMARC_POLICY_NONE);
        assert_int_equal(r->adkim, DMARC_ALIGN_STRICT);
        assert_int_equal(r->aspf, DMARC_ALIGN_RELAXED);
        assert_true(r->testing);
        assert_int_equal(r->psd, DMARC_PSD_N);
        assert_int_equal(r->fo, DMARC_FO_D);
        assert_int_equal(r->warning_count, 0);
        dmarc_record_free(r);
    }
}

/* [REC-3]: WSP around '=' and ';' is not part of names or values. */
static void record__whitespace_around_separators(void **state)
{
    dmarc_record *r;
    (void)state;
    r = parse_ok(R9, "v=DMARC1 ;\tp =\treject\t; sp= none ;rua = mailto:a@ex.com ; ");
    assert_int_equal(r->p, DMARC_POLICY_REJECT);
    assert_int_equal(r->sp, DMARC_POLICY_NONE);
    assert_int_equal(r->rua_count, 1);
    assert_string_equal(r->rua[0].uri, "mailto:a@ex.com");
    assert_int_equal(r->warning_count, 0);
    dmarc_record_free(r);
}

/* [REC-3] [REC-5], section 14: a bare tag is a syntax error of that tag
** only; the record stays usable with its other values. */
static void record__bare_tag_is_discarded(void **state)
{
    dmarc_record *r;
    const dmarc_diag *w;
    (void)state;
    r = parse_ok(R9, "v=DMARC1; p=reject; sp");
    assert_true(r->usable);
    assert_int_equal(r->p, DMARC_POLICY_REJECT);
    assert_int_equal(r->sp, DMARC_POLICY_REJECT);
    assert_false(r->has_sp);
    assert_false(r->bad_sp);
    w = find_warn(r, DMARC_DIAG_SYNTAX);
    assert_non_null(w);
    assert_string_equal(w->tag, "sp");
    dmarc_record_free(r);

    /* Neither does a bare tag count as a first occurrence for [OPEN-1]. */
    r = parse_ok(R9, "v=DMARC1; p; p=reject");
    assert_true(r->usable);
    assert_int_equal(r->p, DMARC_POLICY_REJECT);
    dmarc_record_free(r);
}

/* [REC-3] [REC-5]: an empty value is a syntax error; the tag is discarded. */
static void record__empty_value_discards_tag(void **state)
{
    dmarc_record *r;
    const dmarc_diag *w;
    (void)state;
    r = parse_ok(R9, "v=DMARC1; p=reject; adkim=; sp=  ;");
    assert_true(r->usable);
    assert_false(r->has_adkim);
    assert_int_equal(r->adkim, DMARC_ALIGN_RELAXED);
    assert_false(r->has_sp);
    assert_int_equal(r->sp, DMARC_POLICY_REJECT);
    assert_int_equal(count_warn(r, DMARC_DIAG_EMPTY_VALUE), 2);
    w = find_warn(r, DMARC_DIAG_EMPTY_VALUE);
    assert_string_equal(w->tag, "adkim");
    assert_int_equal(w->offset, strlen("v=DMARC1; p=reject; adkim="));
    dmarc_record_free(r);
}

/* [REC-3]: bytes outside printable ASCII make the tag a syntax error. */
static void record__bad_bytes_in_value(void **state)
{
    static const char txt[] = "v=DMARC1; p=reject; sp=no\0ne; aspf=s\xc3\xa9; adkim=s";
    dmarc_record *r = NULL;
    const dmarc_diag *w;
    (void)state;
    assert_int_equal(dmarc_record_parse(R9, NULL, txt, sizeof(txt) - 1, &r, NULL), DMARC_OK);
    assert_true(r->usable);
    assert_false(r->has_sp);
    assert_false(r->has_aspf);
    assert_true(r->has_adkim);
    assert_int_equal(r->adkim, DMARC_ALIGN_STRICT);
    assert_int_equal(count_warn(r, DMARC_DIAG_SYNTAX), 2);
    w = find_warn(r, DMARC_DIAG_SYNTAX);
    assert_string_equal(w->tag, "sp");
    assert_int_equal(w->offset, strlen("v=DMARC1; p=reject; sp=no"));
    dmarc_record_free(r);
}

/* [REC-3]: `;;`, a name that does not start with a letter, junk after a name. */
static void record__malformed_tag_specs(void **state)
{
    dmarc_record *r;
    (void)state;
    r = parse_ok(R9, "v=DMARC1;; p=reject; =x; 1p=none; p-x=none; sp none; aspf=s");
    assert_true(r->usable);
    assert_int_equal(r->p, DMARC_POLICY_REJECT);
    assert_int_equal(r->sp, DMARC_POLICY_REJECT);
    assert_int_equal(r->aspf, DMARC_ALIGN_STRICT);
    assert_int_equal(count_warn(r, DMARC_DIAG_SYNTAX), 5);
    assert_int_equal(r->warnings[0].offset, strlen("v=DMARC1;"));
    dmarc_record_free(r);
}

/* }====================================================== */

/* ** {======================================================
** Duplicates [OPEN-1] [OPEN-4]
** ======================================================= */

static void record__duplicate_known_tag_unusable(void **state)
{
    dmarc_record *r = NULL;
    dmarc_diag diag;
    const char *txt = "v=DMARC1; p=none; p=reject";
    (void)state;
    assert_int_equal(dmarc_record_parse(R9, NULL, txt, strlen(txt), &r, &diag), DMARC_OK);
    assert_false(r->usable);
    assert_int_equal(diag.code, DMARC_DIAG_DUPLICATE_TAG);
    assert_string_equal(diag.tag, "p");
    assert_int_equal(diag.offset, strlen("v=DMARC1; p=none; "));
    /* The first value stays, for diagnostics. */
    assert_int_equal(r->p, DMARC_POLICY_NONE);
    dmarc_record_free(r);

    r = parse_ok(R9, "v=DMARC1; p=none; v=DMARC1");
    assert_false(r->usable);
    dmarc_record_free(r);
}

/* Unknown names count too (RFC 6376 §3.2: a tag-list with duplicates is invalid). */
static void record__duplicate_unknown_tag_unusable(void **state)
{
    dmarc_record *r;
    (void)state;
    r = parse_ok(R9, "v=DMARC1; p=none; x=1; x=2");
    assert_false(r->usable);
    assert_int_equal(count_warn(r, DMARC_DIAG_DUPLICATE_TAG), 1);
    dmarc_record_free(r);
}

/* "Same name after the mode's case rule". */
static void record__duplicate_follows_case_rule_of_mode(void **state)
{
    dmarc_record *r;
    (void)state;
    r = parse_ok(R9, "v=DMARC1; p=none; P=reject; x=1; X=2");
    assert_true(r->usable);
    assert_int_equal(count_warn(r, DMARC_DIAG_DUPLICATE_TAG), 0);
    dmarc_record_free(r);
    r = parse_ok(R7, "v=DMARC1; p=none; P=reject");
    assert_false(r->usable);
    dmarc_record_free(r);
    r = parse_ok(R7, "v=DMARC1; p=none; x=1; X=2");
    assert_false(r->usable);
    dmarc_record_free(r);
}

/* A duplicate wins over the [EVAL-7] rua rule: permerror, not p=none. */
static void record__duplicate_beats_as_none(void **state)
{
    dmarc_record *r;
    (void)state;
    r = parse_ok(R9, "v=DMARC1; p=bogus; rua=mailto:a@ex.com; rua=mailto:b@ex.com");
    assert_false(r->usable);
    assert_false(r->as_none);
    assert_int_equal(r->rua_count, 1);
    dmarc_record_free(r);
}

/* }====================================================== */

/* ** {======================================================
** Tag values
** ======================================================= */

/* [EVAL-6] defaults: sp inherits p, np inherits sp. */
static void record__policy_inheritance(void **state)
{
    dmarc_record *r;
    (void)state;
    r = parse_ok(R9, "v=DMARC1; p=reject");
    assert_int_equal(r->sp, DMARC_POLICY_REJECT);
    assert_int_equal(r->np, DMARC_POLICY_REJECT);
    assert_false(r->has_sp);
    assert_false(r->has_np);
    dmarc_record_free(r);
    r = parse_ok(R9, "v=DMARC1; p=reject; sp=quarantine");
    assert_int_equal(r->np, DMARC_POLICY_QUARANTINE);
    dmarc_record_free(r);
    r = parse_ok(R9, "v=DMARC1; p=reject; np=none");
    assert_int_equal(r->sp, DMARC_POLICY_REJECT);
    assert_int_equal(r->np, DMARC_POLICY_NONE);
    assert_true(r->has_np);
    dmarc_record_free(r);
}

/* [EVAL-7]: bad np too; a well-formed non-mailto rua URI counts. */
static void record__bad_np_with_other_scheme_rua(void **state)
{
    dmarc_record *r;
    (void)state;
    r = parse_ok(R9, "v=DMARC1; p=reject; np=never; rua=https://ex.com/dmarc");
    assert_true(r->usable);
    assert_true(r->as_none);
    assert_true(r->bad_np);
    assert_int_equal(r->p, DMARC_POLICY_NONE);
    assert_false(r->rua[0].is_mailto);
    dmarc_record_free(r);

    /* A malformed URI does not count. */
    r = parse_ok(R9, "v=DMARC1; p=reject; np=never; rua=mailto:nobody");
    assert_false(r->usable);
    assert_true(r->has_rua);
    assert_int_equal(r->rua_count, 0);
    dmarc_record_free(r);
}

/* [OPEN-7] [EVAL-7]: missing p by mode, with and without rua. */
static void record__missing_p_by_mode(void **state)
{
    dmarc_record *r;
    (void)state;
    r = parse_ok(R9, "v=DMARC1; sp=reject; rua=mailto:a@ex.com");
    assert_true(r->usable);
    assert_false(r->as_none);
    assert_int_equal(r->p, DMARC_POLICY_NONE);
    assert_int_equal(r->sp, DMARC_POLICY_REJECT);
    assert_int_equal(count_warn(r, DMARC_DIAG_MISSING_P), 1);
    dmarc_record_free(r);

    r = parse_ok(R7, "v=DMARC1; sp=reject; rua=mailto:a@ex.com");
    assert_true(r->usable);
    assert_true(r->as_none);
    assert_int_equal(r->sp, DMARC_POLICY_NONE);
    dmarc_record_free(r);

    r = parse_ok(R7, "v=DMARC1; sp=reject");
    assert_false(r->usable);
    dmarc_record_free(r);
}

/* [REC-6]: rfc7489 warns when p is not right after v; rfc9989 does not. */
static void record__p_not_second_rfc7489(void **state)
{
    dmarc_record *r;
    const dmarc_diag *w;
    (void)state;
    r = parse_ok(R7, "v=DMARC1; sp=none; p=reject");
    assert_true(r->usable);
    assert_int_equal(r->p, DMARC_POLICY_REJECT);
    w = find_warn(r, DMARC_DIAG_P_NOT_SECOND);
    assert_non_null(w);
    assert_string_equal(w->tag, "p");
    assert_int_equal(w->offset, strlen("v=DMARC1; sp=none; "));
    dmarc_record_free(r);
    r = parse_ok(R9, "v=DMARC1; sp=none; p=reject");
    assert_int_equal(count_warn(r, DMARC_DIAG_P_NOT_SECOND), 0);
    dmarc_record_free(r);
    r = parse_ok(R7, "v=DMARC1;; p=reject");
    assert_int_equal(count_warn(r, DMARC_DIAG_P_NOT_SECOND), 0);
    dmarc_record_free(r);
}

/* [POL-5]: pct, rf and ri are historic in rfc9989 but still exposed. */
static void record__historic_tags_rfc9989(void **state)
{
    dmarc_record *r;
    (void)state;
    r = parse_ok(R9, "v=DMARC1; p=reject; pct=0; rf=afrf; ri=3600; t=y");
    assert_true(r->usable);
    assert_int_equal(r->pct, 0);
    assert_true(r->has_pct);
    assert_int_equal(r->ri, 3600);
    assert_true(r->has_rf);
    assert_int_equal(count_warn(r, DMARC_DIAG_HISTORIC_TAG), 3);
    assert_string_equal(r->warnings[0].tag, "pct");
    assert_string_equal(r->warnings[1].tag, "rf");
    assert_string_equal(r->warnings[2].tag, "ri");
    dmarc_record_free(r);
    r = parse_ok(R7, "v=DMARC1; p=reject; pct=0; rf=afrf; ri=3600");
    assert_int_equal(r->warning_count, 0);
    dmarc_record_free(r);
}

/* [POL-6] [REC-5]: pct is 1*3DIGIT within 0..100, else 100. */
static void record__pct_values(void **state)
{
    static const struct {
        const char *value;
        unsigned pct;
        bool valid;
    } cases[] = {
        {"0", 0, true},      {"1", 1, true},      {"100", 100, true},   {"007", 7, true},
        {"101", 100, false}, {"999", 100, false}, {"0100", 100, false}, {"-1", 100, false},
        {"+5", 100, false},  {"5%", 100, false},  {"5 0", 100, false},  {"x", 100, false},
    };
    size_t i;
    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char txt[64];
        dmarc_record *r;
        snprintf(txt, sizeof(txt), "v=DMARC1; p=reject; pct=%s", cases[i].value);
        r = parse_ok(R7, txt);
        assert_int_equal(r->pct, cases[i].pct);
        assert_int_equal(r->has_pct, cases[i].valid);
        assert_int_equal(count_warn(r, DMARC_DIAG_BAD_VALUE), cases[i].valid ? 0 : 1);
        dmarc_record_free(r);
    }
}

/* RFC 7489 §6.3: ri is a 32-bit unsigned number of seconds. */
static void record__ri_values(void **state)
{
    dmarc_record *r;
    (void)state;
    r = parse_ok(R7, "v=DMARC1; p=none; ri=4294967295");
    assert_true(r->ri == 4294967295u);
    dmarc_record_free(r);
    r = parse_ok(R7, "v=DMARC1; p=none; ri=4294967296");
    assert_int_equal(r->ri, 86400);
    assert_false(r->has_ri);
    assert_int_equal(count_warn(r, DMARC_DIAG_BAD_VALUE), 1);
    dmarc_record_free(r);
    r = parse_ok(R7, "v=DMARC1; p=none; ri=000000000000000000000000000060");
    assert_int_equal(r->ri, 60);
    dmarc_record_free(r);
    r = parse_ok(R7, "v=DMARC1; p=none; ri=-60");
    assert_int_equal(r->ri, 86400);
    dmarc_record_free(r);
}

/* RFC 7489 §6.3: rf is a Keyword list; unknown formats are ignored. */
static void record__rf_values(void **state)
{
    dmarc_record *r;
    (void)state;
    r = parse_ok(R7, "v=DMARC1; p=none; rf=iodef");
    assert_true(r->has_rf);
    assert_false(r->rf_afrf);
    assert_int_equal(r->warning_count, 0);
    dmarc_record_free(r);
    r = parse_ok(R7, "v=DMARC1; p=none; rf=iodef : AFRF");
    assert_true(r->rf_afrf);
    dmarc_record_free(r);
    r = parse_ok(R7, "v=DMARC1; p=none; rf=-afrf");
    assert_false(r->has_rf);
    assert_true(r->rf_afrf);
    assert_int_equal(count_warn(r, DMARC_DIAG_BAD_VALUE), 1);
    dmarc_record_free(r);
    r = parse_ok(R7, "v=DMARC1; p=none; rf=afrf::iodef");
    assert_false(r->has_rf);
    dmarc_record_free(r);
}

/* Table of section 4: rfc7489 fo is any colon-separated mix of 0, 1, d, s. */
static void record__fo_rfc7489_any_mix(void **state)
{
    dmarc_record *r;
    (void)state;
    r = parse_ok(R7, "v=DMARC1; p=none; fo=0:1:d:s");
    assert_int_equal(r->fo, DMARC_FO_0 | DMARC_FO_1 | DMARC_FO_D | DMARC_FO_S);
    assert_string_equal(r->fo_text, "0:1:d:s");
    dmarc_record_free(r);
    r = parse_ok(R7, "v=DMARC1; p=none; fo=s : s : 1");
    assert_int_equal(r->fo, DMARC_FO_1 | DMARC_FO_S);
    assert_string_equal(r->fo_text, "s : s : 1");
    assert_int_equal(r->warning_count, 0);
    dmarc_record_free(r);
    r = parse_ok(R7, "v=DMARC1; p=none; fo=2");
    assert_int_equal(r->fo, DMARC_FO_0);
    assert_string_equal(r->fo_text, "0");
    assert_false(r->has_fo);
    assert_int_equal(count_warn(r, DMARC_DIAG_BAD_VALUE), 1);
    dmarc_record_free(r);
}

/* Table of section 4: rfc9989 fo keeps 0 and 1 apart, d and s at most once. */
static void record__fo_rfc9989_exclusive(void **state)
{
    static const struct {
        const char *value;
        unsigned bits; /* 0: invalid */
    } cases[] = {
        {"0", DMARC_FO_0},
        {"1", DMARC_FO_1},
        {"d", DMARC_FO_D},
        {"s", DMARC_FO_S},
        {"0:d", DMARC_FO_0 | DMARC_FO_D},
        {"1:s:d", DMARC_FO_1 | DMARC_FO_D | DMARC_FO_S},
        {"d:s", DMARC_FO_D | DMARC_FO_S},
        {"0:1", 0},
        {"1:0", 0},
        {"d:d", 0},
        {"s:1:s", 0},
        {"0:0", 0},
        {":", 0},
        {"1:", 0},
        {"ds", 0},
    };
    size_t i;
    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char txt[64];
        dmarc_record *r;
        snprintf(txt, sizeof(txt), "v=DMARC1; p=none; fo=%s", cases[i].value);
        r = parse_ok(R9, txt);
        if (cases[i].bits != 0) {
            assert_true(r->has_fo);
            assert_int_equal(r->fo, cases[i].bits);
            assert_string_equal(r->fo_text, cases[i].value);
        } else {
            assert_false(r->has_fo);
            assert_int_equal(r->fo, DMARC_FO_0);
            assert_string_equal(r->fo_text, "0");
            assert_int_equal(count_warn(r, DMARC_DIAG_BAD_VALUE), 1);
        }
        dmarc_record_free(r);
    }
}

/* adkim/aspf r|s, t y|n, psd y|n|u; bad values keep the defaults [REC-5]. */
static void record__letter_tags(void **state)
{
    dmarc_record *r;
    (void)state;
    r = parse_ok(R9, "v=DMARC1; p=none; adkim=s; aspf=s; t=y; psd=y");
    assert_int_equal(r->adkim, DMARC_ALIGN_STRICT);
    assert_int_equal(r->aspf, DMARC_ALIGN_STRICT);
    assert_true(r->testing && r->has_t);
    assert_int_equal(r->psd, DMARC_PSD_Y);
    dmarc_record_free(r);
    r = parse_ok(R9, "v=DMARC1; p=none; t=n; psd=u");
    assert_false(r->testing);
    assert_true(r->has_t);
    assert_int_equal(r->psd, DMARC_PSD_U);
    assert_true(r->has_psd);
    dmarc_record_free(r);
    r = parse_ok(R9, "v=DMARC1; p=none; adkim=strict; aspf=; t=yes; psd=n n");
    assert_int_equal(r->adkim, DMARC_ALIGN_RELAXED);
    assert_int_equal(r->aspf, DMARC_ALIGN_RELAXED);
    assert_false(r->testing);
    assert_int_equal(r->psd, DMARC_PSD_U);
    assert_false(r->has_adkim || r->has_aspf || r->has_t || r->has_psd);
    assert_int_equal(count_warn(r, DMARC_DIAG_BAD_VALUE), 3);
    assert_int_equal(count_warn(r, DMARC_DIAG_EMPTY_VALUE), 1);
    dmarc_record_free(r);
    /* rfc7489 exposes t/psd/np too; the evaluation decides. */
    r = parse_ok(R7, "v=DMARC1; p=none; np=reject; t=y; psd=n");
    assert_int_equal(r->np, DMARC_POLICY_REJECT);
    assert_true(r->testing);
    assert_int_equal(r->psd, DMARC_PSD_N);
    assert_int_equal(r->warning_count, 0);
    dmarc_record_free(r);
}

/* Defaults of every tag [AGG-8]. */
static void record__defaults(void **state)
{
    dmarc_record *r;
    (void)state;
    r = parse_ok(R9, "v=DMARC1; p=none");
    assert_true(r->usable);
    assert_false(r->as_none);
    assert_int_equal(r->adkim, DMARC_ALIGN_RELAXED);
    assert_int_equal(r->aspf, DMARC_ALIGN_RELAXED);
    assert_int_equal(r->pct, 100);
    assert_false(r->testing);
    assert_int_equal(r->psd, DMARC_PSD_U);
    assert_int_equal(r->fo, DMARC_FO_0);
    assert_string_equal(r->fo_text, "0");
    assert_true(r->rf_afrf);
    assert_int_equal(r->ri, 86400);
    assert_null(r->rua);
    assert_int_equal(r->rua_count, 0);
    assert_null(r->ruf);
    assert_int_equal(r->ruf_count, 0);
    assert_false(r->has_rua || r->has_ruf || r->has_sp || r->has_np || r->has_adkim ||
                 r->has_aspf || r->has_pct || r->has_t || r->has_psd || r->has_fo || r->has_rf ||
                 r->has_ri);
    assert_null(r->warnings);
    assert_int_equal(r->warning_count, 0);
    assert_int_equal(r->warnings_dropped, 0);
    dmarc_record_free(r);
}

/* }====================================================== */

/* ** {======================================================
** URI lists [REC-7]
** ======================================================= */

static void record__uri_list_with_spaces(void **state)
{
    dmarc_record *r;
    (void)state;
    r = parse_ok(R9, "v=DMARC1; p=none; rua= mailto:a@ex.com ,\tmailto:b@ex.com\t, "
                     "mailto:c@ex.com!5k ; ruf=mailto:f@ex.com");
    assert_int_equal(r->rua_count, 3);
    assert_string_equal(r->rua[0].uri, "mailto:a@ex.com");
    assert_string_equal(r->rua[1].uri, "mailto:b@ex.com");
    assert_string_equal(r->rua[2].uri, "mailto:c@ex.com");
    assert_true(r->rua[2].max_size == 5u * 1024u);
    assert_int_equal(r->ruf_count, 1);
    assert_string_equal(r->ruf[0].uri, "mailto:f@ex.com");
    assert_true(r->has_rua && r->has_ruf);
    assert_int_equal(r->warning_count, 0);
    dmarc_record_free(r);
}

/* k=2^10, m=2^20, g=2^30, t=2^40; no unit: bytes. */
static void record__uri_size_suffixes(void **state)
{
    dmarc_record *r;
    (void)state;
    r = parse_ok(R7, "v=DMARC1; p=none; rua=mailto:a@ex.com!7,mailto:b@ex.com!3k,"
                     "mailto:c@ex.com!2M,mailto:d@ex.com!1g,mailto:e@ex.com!2T,mailto:f@ex.com");
    assert_int_equal(r->rua_count, 6);
    assert_true(r->rua[0].max_size == 7u);
    assert_true(r->rua[1].max_size == 3u << 10);
    assert_true(r->rua[2].max_size == 2u << 20);
    assert_true(r->rua[3].max_size == (uint64_t)1 << 30);
    assert_true(r->rua[4].max_size == (uint64_t)2 << 40);
    assert_true(r->rua[5].max_size == 0);
    assert_string_equal(r->rua[4].uri, "mailto:e@ex.com");
    dmarc_record_free(r);
}

/* The size must fit in a uint64, else the URI is malformed. */
static void record__uri_size_overflow(void **state)
{
    dmarc_record *r;
    (void)state;
    r = parse_ok(R7, "v=DMARC1; p=none; rua=mailto:a@ex.com!18446744073709551615,"
                     "mailto:b@ex.com!18446744073709551616,mailto:c@ex.com!16777215t,"
                     "mailto:d@ex.com!16777216t,mailto:e@ex.com!99999999999999999999999k");
    assert_int_equal(r->rua_count, 2);
    assert_true(r->rua[0].max_size == UINT64_MAX);
    assert_string_equal(r->rua[1].uri, "mailto:c@ex.com");
    assert_true(r->rua[1].max_size == (uint64_t)16777215 << 40);
    assert_int_equal(count_warn(r, DMARC_DIAG_BAD_URI), 3);
    dmarc_record_free(r);
}

/* Malformed items are dropped with BAD_URI; the rest stay in order. */
static void record__uri_malformed_dropped(void **state)
{
    static const char *const bad[] = {
        "",                    /* empty item */
        "mailto",              /* no scheme separator */
        ":a@ex.com",           /* empty scheme */
        "1x:a@ex.com",         /* scheme must start with a letter */
        "http:",               /* nothing after the scheme */
        "mailto:a@ex.com b",   /* WSP inside */
        "mailto:a<b>@ex.com",  /* not an RFC 3986 character */
        "mailto:a@ex.com%4",   /* broken pct-encoding */
        "mailto:a@ex.com%zz",  /* broken pct-encoding */
        "mailto:a@ex.com!",    /* empty size */
        "mailto:a@ex.com!k",   /* unit without digits */
        "mailto:a@ex.com!10q", /* unknown unit */
        "mailto:a@ex.com!1!2", /* '!' must be encoded inside */
        "mailto:a@ex.com!-1",  /* not digits */
        "mailto:a@ex.com\x7f", /* DEL */
    };
    size_t i;
    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char txt[128];
        dmarc_record *r;
        const dmarc_diag *w;
        snprintf(txt, sizeof(txt), "v=DMARC1; p=none; rua=mailto:ok@ex.com,%s,mailto:ok2@ex.com",
                 bad[i]);
        r = parse_ok(R9, txt);
        if (strchr(bad[i], 0x7f) != NULL) {
            /* Not printable: a syntax error of the whole rua tag [REC-3]. */
            assert_false(r->has_rua);
            assert_int_equal(count_warn(r, DMARC_DIAG_SYNTAX), 1);
            dmarc_record_free(r);
            continue;
        }
        assert_int_equal(r->rua_count, 2);
        assert_string_equal(r->rua[0].uri, "mailto:ok@ex.com");
        assert_string_equal(r->rua[1].uri, "mailto:ok2@ex.com");
        assert_int_equal(count_warn(r, DMARC_DIAG_BAD_URI), 1);
        w = find_warn(r, DMARC_DIAG_BAD_URI);
        assert_string_equal(w->tag, "rua");
        assert_int_equal(w->offset, strlen("v=DMARC1; p=none; rua=mailto:ok@ex.com,"));
        dmarc_record_free(r);
    }
}

/* RFC 6068: a mailto URI needs local-part, '@' and a domain. */
static void record__uri_mailto_requirements(void **state)
{
    static const struct {
        const char *uri;
        bool ok;
    } cases[] = {
        {"mailto:a@ex.com", true},
        {"MailTo:a@ex.com", true},
        {"mailto:a.b+c@sub.ex-ample.com", true},
        {"mailto:a@ex.com?subject=DMARC", true},
        {"mailto:a%40b@ex.com", true},
        {"mailto:a@ex.com.", true},
        {"mailto:", false},
        {"mailto:ex.com", false},
        {"mailto:@ex.com", false},
        {"mailto:a@", false},
        {"mailto:a@?subject=x", false},
        {"mailto:a@.ex.com", false},
        {"mailto:a@ex/com", false},
        {"mailto:?to=a@ex.com", false},
    };
    size_t i;
    (void)state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char txt[128];
        dmarc_record *r;
        snprintf(txt, sizeof(txt), "v=DMARC1; p=none; ruf=%s", cases[i].uri);
        r = parse_ok(R9, txt);
        assert_true(r->has_ruf);
        assert_int_equal(r->ruf_count, cases[i].ok ? 1 : 0);
        if (cases[i].ok) {
            assert_true(r->ruf[0].is_mailto);
            assert_string_equal(r->ruf[0].uri, cases[i].uri);
        }
        dmarc_record_free(r);
    }
}

/* Other schemes are kept with is_mailto false. */
static void record__uri_other_scheme_kept(void **state)
{
    dmarc_record *r;
    (void)state;
    r = parse_ok(R9, "v=DMARC1; p=none; rua=https://r.example/x?a=b&c=%2C,"
                     "mailtox:a@ex.com,mailt:a@ex.com");
    assert_int_equal(r->rua_count, 3);
    assert_false(r->rua[0].is_mailto);
    assert_string_equal(r->rua[0].uri, "https://r.example/x?a=b&c=%2C");
    assert_false(r->rua[1].is_mailto);
    assert_false(r->rua[2].is_mailto);
    dmarc_record_free(r);
}

/* DMARC_RECORD_MAX_URIS per list; the rest ignored with TOO_MANY_URIS. */
static void record__uri_cap(void **state)
{
    struct buf b = {NULL, 0, 0};
    dmarc_record *r;
    const dmarc_diag *w;
    size_t i, offset_of_extra = 0;
    (void)state;
    buf_add(&b, "v=DMARC1; p=none; rua=");
    for (i = 0; i < DMARC_RECORD_MAX_URIS + 3; i++) {
        if (i == DMARC_RECORD_MAX_URIS)
            offset_of_extra = b.len;
        buf_add(&b, "mailto:r%zu@ex.com,", i);
    }
    buf_add(&b, "; ruf=");
    for (i = 0; i < DMARC_RECORD_MAX_URIS; i++)
        buf_add(&b, "%smailto:f%zu@ex.com", i ? "," : "", i);
    r = parse_ok(R9, b.s);
    assert_int_equal(r->rua_count, DMARC_RECORD_MAX_URIS);
    assert_int_equal(r->ruf_count, DMARC_RECORD_MAX_URIS);
    assert_string_equal(r->rua[DMARC_RECORD_MAX_URIS - 1].uri, "mailto:r31@ex.com");
    assert_string_equal(r->ruf[DMARC_RECORD_MAX_URIS - 1].uri, "mailto:f31@ex.com");
    assert_int_equal(count_warn(r, DMARC_DIAG_TOO_MANY_URIS), 1);
    w = find_warn(r, DMARC_DIAG_TOO_MANY_URIS);
    assert_int_equal(w->offset, offset_of_extra);
    assert_string_equal(w->tag, "rua");
    dmarc_record_free(r);
    free(b.s);
}

/* }====================================================== */

/* ** {======================================================
** Limits
** ======================================================= */

/* DMARC_RECORD_MAX_TAGS tags (v included) are read; the rest is ignored
** with TOO_MANY_TAGS, which is kept even when the warnings are full. */
static void record__tag_cap(void **state)
{
    struct buf b = {NULL, 0, 0};
    dmarc_record *r;
    const dmarc_diag *last;
    size_t i, offset_of_extra;
    (void)state;
    buf_add(&b, "v=DMARC1; p=reject");
    for (i = 2; i < DMARC_RECORD_MAX_TAGS; i++)
        buf_add(&b, "; x%zu=1", i);
    /* Tag number MAX_TAGS + 1 would change sp: it must not be read. */
    buf_add(&b, "; ");
    offset_of_extra = b.len;
    buf_add(&b, "sp=none");
    r = parse_ok(R9, b.s);
    assert_true(r->usable);
    assert_int_equal(r->sp, DMARC_POLICY_REJECT);
    assert_false(r->has_sp);
    assert_int_equal(r->warning_count, DMARC_RECORD_MAX_WARNINGS);
    /* 62 unknown tags and the cut. */
    assert_int_equal(r->warning_count + r->warnings_dropped, DMARC_RECORD_MAX_TAGS - 2 + 1);
    last = &r->warnings[r->warning_count - 1];
    assert_int_equal(last->code, DMARC_DIAG_TOO_MANY_TAGS);
    assert_int_equal(last->offset, offset_of_extra);
    dmarc_record_free(r);
    free(b.s);

    /* Exactly at the cap: every tag read, no TOO_MANY_TAGS; `;;` is no tag. */
    b.s = NULL;
    b.len = b.cap = 0;
    buf_add(&b, "v=DMARC1;");
    for (i = 1; i < DMARC_RECORD_MAX_TAGS - 1; i++)
        buf_add(&b, "; y%zu=1", i);
    buf_add(&b, "; p=quarantine");
    r = parse_ok(R9, b.s);
    assert_int_equal(r->p, DMARC_POLICY_QUARANTINE);
    /* 62 unknown tags and one empty tag-spec. */
    assert_int_equal(r->warnings_dropped + r->warning_count, DMARC_RECORD_MAX_TAGS - 2 + 1);
    assert_int_equal(count_warn(r, DMARC_DIAG_TOO_MANY_TAGS), 0);
    dmarc_record_free(r);
    free(b.s);

    /* Few warnings: the cut is simply the next one. */
    b.s = NULL;
    b.len = b.cap = 0;
    buf_add(&b, "v=DMARC1; p=none");
    for (i = 2; i < DMARC_RECORD_MAX_TAGS; i++)
        buf_add(&b, "; adkim=r");
    r = parse_ok(R7, b.s);
    assert_false(r->usable); /* duplicates [OPEN-1] */
    dmarc_record_free(r);
    free(b.s);
}

/* DMARC_RECORD_MAX_WARNINGS stored, the excess counted. */
static void record__warning_cap(void **state)
{
    struct buf b = {NULL, 0, 0};
    dmarc_record *r;
    size_t i;
    (void)state;
    buf_add(&b, "v=DMARC1; p=none");
    for (i = 0; i < DMARC_RECORD_MAX_WARNINGS + 5; i++)
        buf_add(&b, "; u%zu=1", i);
    r = parse_ok(R9, b.s);
    assert_true(r->usable);
    assert_int_equal(r->warning_count, DMARC_RECORD_MAX_WARNINGS);
    assert_int_equal(r->warnings_dropped, 5);
    assert_string_equal(r->warnings[0].tag, "u0");
    assert_string_equal(r->warnings[DMARC_RECORD_MAX_WARNINGS - 1].tag, "u15");
    dmarc_record_free(r);
    free(b.s);
}

/* DMARC_RECORD_MAX_LEN bytes parse; one more is TOO_LONG. */
static void record__length_cap(void **state)
{
    size_t len = DMARC_RECORD_MAX_LEN + 1;
    char *txt = malloc(len);
    dmarc_record *r = NULL;
    dmarc_diag diag;
    const char *head = "v=DMARC1; p=reject; x=";
    (void)state;
    assert_non_null(txt);
    memset(txt, 'a', len);
    memcpy(txt, head, strlen(head));
    assert_int_equal(dmarc_record_parse(R9, NULL, txt, DMARC_RECORD_MAX_LEN, &r, &diag), DMARC_OK);
    assert_int_equal(r->p, DMARC_POLICY_REJECT);
    dmarc_record_free(r);
    r = NULL;
    assert_int_equal(dmarc_record_parse(R9, NULL, txt, len, &r, &diag), DMARC_ERR_SYNTAX);
    assert_null(r);
    assert_int_equal(diag.code, DMARC_DIAG_TOO_LONG);
    free(txt);
}

/* A long unknown tag name is truncated in the diag, NUL-terminated. */
static void record__diag_tag_truncated(void **state)
{
    dmarc_record *r;
    const dmarc_diag *w;
    (void)state;
    r = parse_ok(R9, "v=DMARC1; p=none; averyveryverylongtagname=1");
    w = find_warn(r, DMARC_DIAG_UNKNOWN_TAG);
    assert_non_null(w);
    assert_int_equal(strlen(w->tag), sizeof(w->tag) - 1);
    assert_memory_equal(w->tag, "averyveryverylongtagname", sizeof(w->tag) - 1);
    dmarc_record_free(r);
}

/* }====================================================== */

/* ** {======================================================
** Contract: arguments, ownership, memory
** ======================================================= */

static void record__invalid_arguments(void **state)
{
    dmarc_record *r = (dmarc_record *)&r; /* a sentinel that must stay */
    dmarc_record *sentinel = r;
    dmarc_diag diag;
    (void)state;
    assert_int_equal(dmarc_record_parse(R9, NULL, "v=DMARC1", 8, NULL, &diag), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_record_parse(R9, NULL, NULL, 3, &r, &diag), DMARC_ERR_INVAL);
    assert_int_equal(dmarc_record_parse((dmarc_mode)42, NULL, "v=DMARC1", 8, &r, &diag),
                     DMARC_ERR_INVAL);
    assert_ptr_equal(r, sentinel);
}

/* NULL with length 0 and the empty string: not a record, no crash. */
static void record__null_and_empty_input(void **state)
{
    dmarc_record *r = NULL;
    dmarc_diag diag;
    (void)state;
    diag.code = DMARC_DIAG_NONE;
    assert_int_equal(dmarc_record_parse(R9, NULL, NULL, 0, &r, &diag), DMARC_ERR_SYNTAX);
    assert_int_equal(diag.code, DMARC_DIAG_NOT_DMARC);
    assert_null(r);
    assert_int_equal(dmarc_record_parse(R7, NULL, "", 0, &r, NULL), DMARC_ERR_SYNTAX);
    assert_null(r);
    assert_false(dmarc_record_is_dmarc(R9, "", 0));
    /* A NUL right after the prefix: not ';', so not a record. */
    assert_int_equal(dmarc_record_parse(R9, NULL, "v=DMARC1\0; p=none", 17, &r, NULL),
                     DMARC_ERR_SYNTAX);
    /* The length is honoured: the bytes after it are never looked at. */
    assert_int_equal(dmarc_record_parse(R9, NULL, "v=DMARC1; p=reject", 8, &r, NULL), DMARC_OK);
    assert_false(r->has_p);
    dmarc_record_free(r);
}

/* Out-parameter untouched on a syntax error [dmarc.h conventions]. */
static void record__out_untouched_on_error(void **state)
{
    dmarc_record *r = (dmarc_record *)&r;
    dmarc_record *sentinel = r;
    (void)state;
    assert_int_equal(dmarc_record_parse(R9, NULL, "v=DMARC2", 8, &r, NULL), DMARC_ERR_SYNTAX);
    assert_ptr_equal(r, sentinel);
}

static void record__free_null_is_noop(void **state)
{
    (void)state;
    dmarc_record_free(NULL);
}

/* Strings are owned by the record: the input can go away. */
static void record__strings_owned_and_terminated(void **state)
{
    char txt[] = "v=DMARC1; p=none; fo=1:d; rua=mailto:a@ex.com!1k,https://x.example/y; "
                 "ruf=mailto:f@ex.com";
    dmarc_record *r;
    size_t i;
    (void)state;
    r = parse_ok(R9, txt);
    memset(txt, 'X', sizeof(txt) - 1);
    assert_string_equal(r->fo_text, "1:d");
    assert_string_equal(r->rua[0].uri, "mailto:a@ex.com");
    assert_string_equal(r->rua[1].uri, "https://x.example/y");
    assert_string_equal(r->ruf[0].uri, "mailto:f@ex.com");
    for (i = 0; i < r->rua_count; i++) {
        assert_int_equal(strlen(r->rua[i].uri), r->rua[i].len);
        assert_true(r->rua[i].uri[r->rua[i].len] == '\0');
    }
    dmarc_record_free(r);
}

/* Each allocation failure gives DMARC_ERR_NOMEM, leaves *out alone and
** leaks nothing; looped until the parse succeeds. */
static void record__failing_allocator_each_step(void **state)
{
    static const char *const inputs[] = {
        "v=DMARC1",
        "v=DMARC1; p=reject; sp=quarantine; adkim=r; aspf=r; pct=100; fo=1; ri=86400; "
        "rua=mailto:dmarc-rua@example.co.uk,mailto:dmarc@reports.example.net; "
        "ruf=mailto:dmarc-ruf@example.co.uk",
        "v=DMARC1; p=bogus; p=none; x; rua=mailto:a@ex.com!10m,bad; foo=bar",
    };
    size_t i;
    (void)state;
    for (i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
        size_t n;
        bool done = false;
        for (n = 0; !done && n < 100; n++) {
            failing_alloc ca;
            dmarc_allocator a;
            failing_alloc_init(&ca, n + 1);
            a = failing_allocator(&ca);
            dmarc_record *r = (dmarc_record *)&r;
            dmarc_record *sentinel = r;
            dmarc_status st = dmarc_record_parse(R9, &a, inputs[i], strlen(inputs[i]), &r, NULL);
            if (st == DMARC_OK) {
                assert_true(ca.live > 0);
                dmarc_record_free(r);
                done = true;
            } else {
                assert_int_equal(st, DMARC_ERR_NOMEM);
                assert_ptr_equal(r, sentinel);
            }
            assert_int_equal(ca.live, 0);
            assert_int_equal(ca.live_bytes, 0);
            assert_false(ca.size_mismatch);
        }
        assert_true(done);
    }
}

/* The record is freed through the allocator it was made with. */
/* The runtime version call reports the version this library was built as,
** which the macros spell out part by part. */
static void record__version_matches_header(void **state)
{
    char expect[32];
    (void)state;
    snprintf(expect, sizeof expect, "%d.%d.%d", DMARC_VERSION_MAJOR, DMARC_VERSION_MINOR,
             DMARC_VERSION_PATCH);
    assert_string_equal(dmarc_version(), DMARC_VERSION_STRING);
    assert_string_equal(dmarc_version(), expect);
}

static void record__custom_allocator_balanced(void **state)
{
    failing_alloc ca;
    dmarc_allocator a;
    dmarc_record *r1 = NULL, *r2 = NULL;
    const char *txt = "v=DMARC1; p=none; rua=mailto:a@ex.com";
    (void)state;
    failing_alloc_init(&ca, 0);
    a = failing_allocator(&ca);
    assert_int_equal(dmarc_record_parse(R9, &a, txt, strlen(txt), &r1, NULL), DMARC_OK);
    assert_int_equal(dmarc_record_parse(R7, &a, txt, strlen(txt), &r2, NULL), DMARC_OK);
    /* One allocation per record. */
    assert_int_equal(ca.count, 2);
    assert_int_equal(ca.live, 2);
    dmarc_record_free(r1);
    dmarc_record_free(r2);
    assert_int_equal(ca.live, 0);
    assert_int_equal(ca.live_bytes, 0);
    assert_false(ca.size_mismatch);
}

/* }====================================================== */

/* ** {======================================================
** tests/vectors/records.tsv
** ======================================================= */

#define VECTORS_PATH "tests/vectors/records.tsv"
/* Longest line accepted from the vectors file. */
#define VECTORS_MAX_LINE 8192

static int hex_digit(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Undo the escapes of the file format in place; returns the new length or -1. */
static long unescape(char *s)
{
    size_t r = 0, w = 0;
    while (s[r] != '\0') {
        if (s[r] != '\\') {
            s[w++] = s[r++];
            continue;
        }
        switch (s[r + 1]) {
        case 't':
            s[w++] = '\t';
            break;
        case 'n':
            s[w++] = '\n';
            break;
        case 'r':
            s[w++] = '\r';
            break;
        case '\\':
            s[w++] = '\\';
            break;
        case 'x': {
            int hi = hex_digit((unsigned char)s[r + 2]), lo;
            if (hi < 0)
                return -1;
            lo = hex_digit((unsigned char)s[r + 3]);
            if (lo < 0)
                return -1;
            s[w++] = (char)(hi * 16 + lo);
            r += 2;
            break;
        }
        default:
            return -1;
        }
        r += 2;
    }
    s[w] = '\0';
    return (long)w;
}

static const char *yn(bool b)
{
    return b ? "1" : "0";
}

static void append(char *out, size_t outsz, const char *s)
{
    size_t l = strlen(out);
    snprintf(out + l, outsz - l, "%s", s);
}

/* The record's value for @key in the file's notation; false for an unknown key. */
static bool record_value(const dmarc_record *r, const char *key, char *out, size_t outsz)
{
    static const char align_letter[] = {'-', 'r', 's'};
    static const char psd_letter[] = {'u', 'y', 'n'};
    const dmarc_uri *list = NULL;
    size_t count = 0, i;

    out[0] = '\0';
#define FLAG(name)                                                                                 \
    if (strcmp(key, #name) == 0) {                                                                 \
        snprintf(out, outsz, "%s", yn(r->name));                                                   \
        return true;                                                                               \
    }
    FLAG(usable)
    FLAG(as_none)
    FLAG(rf_afrf)
    FLAG(has_p)
    FLAG(has_sp)
    FLAG(has_np)
    FLAG(has_adkim)
    FLAG(has_aspf)
    FLAG(has_pct)
    FLAG(has_t)
    FLAG(has_psd)
    FLAG(has_fo)
    FLAG(has_rf)
    FLAG(has_ri)
    FLAG(has_rua)
    FLAG(has_ruf)
    FLAG(bad_p)
    FLAG(bad_sp)
    FLAG(bad_np)
#undef FLAG
    if (strcmp(key, "p") == 0 || strcmp(key, "sp") == 0 || strcmp(key, "np") == 0) {
        dmarc_policy v = key[0] == 'p' ? r->p : key[0] == 's' ? r->sp : r->np;
        snprintf(out, outsz, "%s", dmarc_policy_name(v));
        return true;
    }
    if (strcmp(key, "adkim") == 0 || strcmp(key, "aspf") == 0) {
        dmarc_align v = key[1] == 'd' ? r->adkim : r->aspf;
        snprintf(out, outsz, "%c", align_letter[v]);
        return true;
    }
    if (strcmp(key, "t") == 0) {
        snprintf(out, outsz, "%s", r->testing ? "y" : "n");
        return true;
    }
    if (strcmp(key, "psd") == 0) {
        snprintf(out, outsz, "%c", psd_letter[r->psd]);
        return true;
    }
    if (strcmp(key, "pct") == 0) {
        snprintf(out, outsz, "%u", r->pct);
        return true;
    }
    if (strcmp(key, "ri") == 0) {
        snprintf(out, outsz, "%lu", (unsigned long)r->ri);
        return true;
    }
    if (strcmp(key, "dropped") == 0) {
        snprintf(out, outsz, "%zu", r->warnings_dropped);
        return true;
    }
    if (strcmp(key, "fo") == 0) {
        snprintf(out, outsz, "%s", r->fo_text);
        return true;
    }
    if (strcmp(key, "warn") == 0) {
        for (i = 0; i < r->warning_count; i++) {
            if (i > 0)
                append(out, outsz, ",");
            append(out, outsz, dmarc_diag_name(r->warnings[i].code));
        }
        if (r->warning_count == 0)
            append(out, outsz, "-");
        return true;
    }
    if (strcmp(key, "rua") == 0) {
        list = r->rua;
        count = r->rua_count;
    } else if (strcmp(key, "ruf") == 0) {
        list = r->ruf;
        count = r->ruf_count;
    } else {
        return false;
    }
    for (i = 0; i < count; i++) {
        char size[32];
        if (i > 0)
            append(out, outsz, ",");
        append(out, outsz, list[i].uri);
        if (list[i].max_size != 0) {
            snprintf(size, sizeof(size), "!%llu", (unsigned long long)list[i].max_size);
            append(out, outsz, size);
        }
    }
    if (count == 0)
        append(out, outsz, "-");
    return true;
}

/* Check one line; prints what differs and returns the number of problems. */
static int check_vector(size_t lineno, char *line)
{
    char *mode_s = line, *txt, *expect, *tab, *item, *save = NULL;
    dmarc_mode mode;
    dmarc_record *r = NULL;
    dmarc_diag diag;
    dmarc_status st;
    long txt_len;
    int problems = 0;

    tab = strchr(mode_s, '\t');
    if (tab == NULL)
        goto malformed;
    *tab = '\0';
    txt = tab + 1;
    tab = strchr(txt, '\t');
    if (tab == NULL)
        goto malformed;
    *tab = '\0';
    expect = tab + 1;
    if (strchr(expect, '\t') != NULL)
        goto malformed;
    if (dmarc_mode_from_name(mode_s, strlen(mode_s), &mode) != DMARC_OK)
        goto malformed;
    txt_len = unescape(txt);
    if (txt_len < 0)
        goto malformed;

    diag.code = DMARC_DIAG__COUNT;
    st = dmarc_record_parse(mode, NULL, txt, (size_t)txt_len, &r, &diag);
    if (strcmp(expect, "not_dmarc") == 0) {
        if (st != DMARC_ERR_SYNTAX || diag.code != DMARC_DIAG_NOT_DMARC) {
            print_error("records.tsv:%zu: expected not_dmarc, got status %d diag %s\n", lineno,
                        (int)st, dmarc_diag_name(diag.code));
            problems++;
        }
        if (st == DMARC_OK)
            dmarc_record_free(r);
        if (dmarc_record_is_dmarc(mode, txt, (size_t)txt_len)) {
            print_error("records.tsv:%zu: dmarc_record_is_dmarc says yes\n", lineno);
            problems++;
        }
        return problems;
    }
    if (st != DMARC_OK) {
        print_error("records.tsv:%zu: parse failed with status %d\n", lineno, (int)st);
        return 1;
    }
    for (item = strtok_r(expect, " ", &save); item != NULL; item = strtok_r(NULL, " ", &save)) {
        char *eq = strchr(item, '=');
        char got[VECTORS_MAX_LINE];
        if (eq == NULL) {
            print_error("records.tsv:%zu: no '=' in %s\n", lineno, item);
            problems++;
            continue;
        }
        *eq = '\0';
        if (unescape(eq + 1) < 0) {
            print_error("records.tsv:%zu: bad escape in %s\n", lineno, item);
            problems++;
            continue;
        }
        if (strcmp(item, "diag") == 0) {
            snprintf(got, sizeof(got), "%s", dmarc_diag_name(diag.code));
        } else if (!record_value(r, item, got, sizeof(got))) {
            print_error("records.tsv:%zu: unknown key %s\n", lineno, item);
            problems++;
            continue;
        }
        if (strcmp(got, eq + 1) != 0) {
            print_error("records.tsv:%zu: %s: expected '%s', got '%s'\n", lineno, item, eq + 1,
                        got);
            problems++;
        }
    }
    dmarc_record_free(r);
    return problems;

malformed:
    print_error("records.tsv:%zu: malformed line\n", lineno);
    return 1;
}

/* Every line of the shared vectors file (tests run from the repository root). */
static void record__vectors_file(void **state)
{
    FILE *f = fopen(VECTORS_PATH, "r");
    char line[VECTORS_MAX_LINE];
    size_t lineno = 0, cases = 0;
    int problems = 0;
    (void)state;
    assert_non_null(f);
    while (fgets(line, sizeof(line), f) != NULL) {
        size_t n = strlen(line);
        lineno++;
        assert_true(n < sizeof(line) - 1 || line[n - 1] == '\n');
        if (n > 0 && line[n - 1] == '\n')
            line[--n] = '\0';
        if (n == 0 || line[0] == '#')
            continue;
        cases++;
        problems += check_vector(lineno, line);
    }
    fclose(f);
    assert_true(cases >= 60);
    assert_int_equal(problems, 0);
}

/* }====================================================== */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(record__vector6_bad_p_with_rua_acts_as_none),
        cmocka_unit_test(record__vector7_bad_sp_without_rua_unusable),
        cmocka_unit_test(record__vector8_v_only_depends_on_mode),
        cmocka_unit_test(record__vector9_unknown_tag_ignored),
        cmocka_unit_test(record__vector10_v_not_first_is_not_a_record),
        cmocka_unit_test(record__vector11_split_strings_concatenated),
        cmocka_unit_test(record__vector25_size_suffix_in_both_modes),
        cmocka_unit_test(record__version_prefix),
        cmocka_unit_test(record__v_name_case_insensitive_in_both_modes),
        cmocka_unit_test(record__is_dmarc_agrees_with_parse),
        cmocka_unit_test(record__tag_case_rfc9989),
        cmocka_unit_test(record__tag_case_rfc7489),
        cmocka_unit_test(record__keyword_values_case_insensitive),
        cmocka_unit_test(record__whitespace_around_separators),
        cmocka_unit_test(record__bare_tag_is_discarded),
        cmocka_unit_test(record__empty_value_discards_tag),
        cmocka_unit_test(record__bad_bytes_in_value),
        cmocka_unit_test(record__malformed_tag_specs),
        cmocka_unit_test(record__duplicate_known_tag_unusable),
        cmocka_unit_test(record__duplicate_unknown_tag_unusable),
        cmocka_unit_test(record__duplicate_follows_case_rule_of_mode),
        cmocka_unit_test(record__duplicate_beats_as_none),
        cmocka_unit_test(record__policy_inheritance),
        cmocka_unit_test(record__bad_np_with_other_scheme_rua),
        cmocka_unit_test(record__missing_p_by_mode),
        cmocka_unit_test(record__p_not_second_rfc7489),
        cmocka_unit_test(record__historic_tags_rfc9989),
        cmocka_unit_test(record__pct_values),
        cmocka_unit_test(record__ri_values),
        cmocka_unit_test(record__rf_values),
        cmocka_unit_test(record__fo_rfc7489_any_mix),
        cmocka_unit_test(record__fo_rfc9989_exclusive),
        cmocka_unit_test(record__letter_tags),
        cmocka_unit_test(record__defaults),
        cmocka_unit_test(record__uri_list_with_spaces),
        cmocka_unit_test(record__uri_size_suffixes),
        cmocka_unit_test(record__uri_size_overflow),
        cmocka_unit_test(record__uri_malformed_dropped),
        cmocka_unit_test(record__uri_mailto_requirements),
        cmocka_unit_test(record__uri_other_scheme_kept),
        cmocka_unit_test(record__uri_cap),
        cmocka_unit_test(record__tag_cap),
        cmocka_unit_test(record__warning_cap),
        cmocka_unit_test(record__length_cap),
        cmocka_unit_test(record__diag_tag_truncated),
        cmocka_unit_test(record__invalid_arguments),
        cmocka_unit_test(record__null_and_empty_input),
        cmocka_unit_test(record__out_untouched_on_error),
        cmocka_unit_test(record__free_null_is_noop),
        cmocka_unit_test(record__strings_owned_and_terminated),
        cmocka_unit_test(record__failing_allocator_each_step),
        cmocka_unit_test(record__version_matches_header),
        cmocka_unit_test(record__custom_allocator_balanced),
        cmocka_unit_test(record__vectors_file),
    };
    return cmocka_run_group_tests_name("record", tests, NULL, NULL);
}
