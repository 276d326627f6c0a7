/*
** libFuzzer target for the From parser and the domain normalizer.
**
** Invariants checked on every input:
** - dmarc_from_parse returns DMARC_OK or DMARC_ERR_SYNTAX, never anything
**   else; on DMARC_ERR_SYNTAX the out-parameter is untouched and the diag
**   names a problem inside the input;
** - a parse is deterministic (the same input gives the same mailboxes);
** - every string a mailbox holds is NUL-terminated at its stated length
**   and holds no other NUL;
** - a mailbox has a domain exactly when it has no problem, and that domain
**   is normalized: lowercase host-name characters, 1..253 bytes, no empty
**   label, no trailing dot, and normalizing it again changes nothing;
** - the same holds for dmarc_domain_normalize run on the raw input;
** - the input as the one From field of an evaluation: a field that does not
**   parse is flagged from_syntax, and read leniently (RFC 9989 §11.5) it
**   gives at most one author domain, flagged from_lenient, or none, flagged
**   from_unread; a
**   mailbox count past the bound never loses a domain silently (a parse
**   that kept fewer domains than it read ends in too_many_domains).
** A broken invariant aborts, which libFuzzer and tests/fuzz/replay.c report.
*/
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dmarc.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_normalized(const char *d, size_t len)
{
    char again[DMARC_DOMAIN_MAX_LEN + 1];
    size_t i, n = 0;

    CHECK(d != NULL);
    CHECK(len > 0 && len <= DMARC_DOMAIN_MAX_LEN);
    CHECK(strlen(d) == len);
    CHECK(d[0] != '.' && d[len - 1] != '.');
    for (i = 0; i < len; i++) {
        char c = d[i];
        CHECK((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.');
        CHECK(!(c == '.' && d[i + 1] == '.'));
    }
    CHECK(dmarc_domain_normalize(d, len, again, sizeof again, &n) == DMARC_OK);
    CHECK(n == len && memcmp(again, d, len) == 0);
}

static void check_from(const dmarc_from *f)
{
    size_t i, count = dmarc_from_count(f);

    CHECK(count <= DMARC_FROM_MAX_MAILBOXES);
    CHECK(dmarc_from_mailbox(f, count) == NULL);
    for (i = 0; i < count; i++) {
        const dmarc_mailbox *m = dmarc_from_mailbox(f, i);
        CHECK(m != NULL && m->local != NULL);
        /* No NUL gets into a string: it would cut it short for C callers. */
        CHECK(strlen(m->local) == m->local_len);
        if (m->display != NULL)
            CHECK(m->display_len > 0 && strlen(m->display) == m->display_len);
        if (m->domain != NULL) {
            CHECK(m->problem == DMARC_DIAG_NONE);
            check_normalized(m->domain, m->domain_len);
        } else {
            CHECK(m->problem != DMARC_DIAG_NONE && m->domain_len == 0);
        }
    }
}

static void check_same(const dmarc_from *a, const dmarc_from *b)
{
    size_t i;

    CHECK(dmarc_from_count(a) == dmarc_from_count(b));
    for (i = 0; i < dmarc_from_count(a); i++) {
        const dmarc_mailbox *x = dmarc_from_mailbox(a, i), *y = dmarc_from_mailbox(b, i);
        CHECK(x->problem == y->problem && x->domain_len == y->domain_len);
        CHECK(x->local_len == y->local_len && memcmp(x->local, y->local, x->local_len) == 0);
        CHECK((x->domain == NULL) == (y->domain == NULL));
        if (x->domain != NULL)
            CHECK(memcmp(x->domain, y->domain, x->domain_len) == 0);
    }
}

/* The input as the one From field of an evaluation (no DNS is answered:
** only the inputs' flags and domains are looked at). */
static void check_eval(const char *raw, size_t size)
{
    dmarc_options o;
    dmarc_status st;
    dmarc_ctx *ctx;
    dmarc_eval *e;
    dmarc_from *f = NULL;
    unsigned flags;

    dmarc_options_init(&o);
    ctx = dmarc_ctx_new(&o, &st);
    CHECK(ctx != NULL);
    e = dmarc_eval_new(ctx, NULL, &st);
    CHECK(e != NULL);
    CHECK(dmarc_eval_add_from(e, raw, size) == DMARC_OK);
    flags = dmarc_eval_flags(e);
    st = dmarc_from_parse(NULL, raw, size, &f, NULL);
    if (st != DMARC_OK) {
        CHECK(flags & DMARC_FLAG_FROM_SYNTAX);
        CHECK(dmarc_eval_domain_count(e) <= 1);
        CHECK(((flags & DMARC_FLAG_FROM_LENIENT) != 0) == (dmarc_eval_domain_count(e) == 1));
        CHECK(((flags & DMARC_FLAG_FROM_UNREAD) != 0) == (dmarc_eval_domain_count(e) == 0));
    } else {
        CHECK(!(flags & (DMARC_FLAG_FROM_LENIENT | DMARC_FLAG_FROM_UNREAD)));
        dmarc_from_free(f);
    }
    dmarc_eval_free(e);
    dmarc_ctx_free(ctx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *raw = (const char *)data;
    dmarc_from *f = NULL, *g = NULL, *sentinel = (dmarc_from *)&sentinel;
    char out[DMARC_DOMAIN_MAX_LEN + 1];
    dmarc_diag diag;
    dmarc_status st;
    size_t n = 0;

    f = sentinel;
    st = dmarc_from_parse(NULL, raw, size, &f, &diag);
    CHECK(st == DMARC_OK || st == DMARC_ERR_SYNTAX);
    CHECK(diag.offset <= size || diag.code == DMARC_DIAG_TOO_LONG);
    if (st == DMARC_ERR_SYNTAX) {
        CHECK(f == sentinel);
        CHECK(diag.code != DMARC_DIAG_NONE);
    } else {
        CHECK(f != sentinel && f != NULL);
        check_from(f);
        CHECK(dmarc_from_parse(NULL, raw, size, &g, NULL) == DMARC_OK);
        check_same(f, g);
        dmarc_from_free(g);
        dmarc_from_free(f);
    }

    st = dmarc_domain_normalize(raw, size, out, sizeof out, &n);
    CHECK(st == DMARC_OK || st == DMARC_ERR_SYNTAX);
    if (st == DMARC_OK)
        check_normalized(out, n);
    check_eval(raw, size);
    return 0;
}
