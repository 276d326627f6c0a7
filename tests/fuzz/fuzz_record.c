/*
** libFuzzer harness for dmarc_record_parse: every input is parsed in both
** modes and the result is held to the invariants the rest of the engine
** relies on. A broken invariant aborts, which libFuzzer (and the replay
** driver under the sanitizers) reports as a crash.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dmarc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_record: invariant broken: %s (line %d)\n", #cond, __LINE__);     \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* An allocator whose every request fails: a parse that succeeds with libc
** must then fail cleanly with DMARC_ERR_NOMEM. */
static void *no_memory(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    (void)osize;
    if (nsize == 0)
        free(ptr);
    return NULL;
}

static void check_diag(const dmarc_diag *d, size_t size)
{
    CHECK(d->code > DMARC_DIAG_NONE && d->code < DMARC_DIAG__COUNT);
    CHECK(d->offset <= size);
    CHECK(memchr(d->tag, '\0', sizeof(d->tag)) != NULL);
}

static void check_uris(const dmarc_uri *list, size_t count, bool present)
{
    size_t i, j;
    CHECK(count <= DMARC_RECORD_MAX_URIS);
    CHECK((count == 0) == (list == NULL));
    CHECK(present || count == 0);
    for (i = 0; i < count; i++) {
        const dmarc_uri *u = &list[i];
        const char *colon;
        CHECK(u->uri != NULL && u->len > 0);
        CHECK(strlen(u->uri) == u->len);
        /* [REC-7]: no WSP, ',' or '!' survives inside a kept URI. */
        for (j = 0; j < u->len; j++) {
            unsigned char c = (unsigned char)u->uri[j];
            CHECK(c > 0x20 && c < 0x7f && c != ',' && c != '!' && c != ';');
        }
        colon = strchr(u->uri, ':');
        CHECK(colon != NULL && colon != u->uri && colon[1] != '\0');
        if (u->is_mailto) {
            CHECK(colon - u->uri == 6);
            CHECK(strchr(colon, '@') != NULL);
        }
    }
}

static void check_record(dmarc_mode mode, const dmarc_record *r, size_t size)
{
    size_t i;

    CHECK(r->mode == mode);
    CHECK((unsigned)r->p < DMARC_POLICY__COUNT);
    CHECK((unsigned)r->sp < DMARC_POLICY__COUNT);
    CHECK((unsigned)r->np < DMARC_POLICY__COUNT);
    CHECK(r->adkim == DMARC_ALIGN_RELAXED || r->adkim == DMARC_ALIGN_STRICT);
    CHECK(r->aspf == DMARC_ALIGN_RELAXED || r->aspf == DMARC_ALIGN_STRICT);
    CHECK(r->pct <= 100);
    CHECK((unsigned)r->psd < DMARC_PSD__COUNT);
    CHECK(r->fo != 0 && (r->fo & ~0xfu) == 0);
    CHECK(r->fo_text != NULL && r->fo_text[0] != '\0');
    if (!r->has_fo)
        CHECK(strcmp(r->fo_text, "0") == 0 && r->fo == DMARC_FO_0);
    if (mode == DMARC_MODE_RFC9989) {
        /* fo: 0 and 1 exclusive in rfc9989. */
        CHECK((r->fo & (DMARC_FO_0 | DMARC_FO_1)) != (DMARC_FO_0 | DMARC_FO_1));
    }
    if (!r->has_pct)
        CHECK(r->pct == 100);
    if (!r->has_ri)
        CHECK(r->ri == 86400);

    /* A tag is valid or invalid, never both. */
    CHECK(!(r->has_p && r->bad_p));
    CHECK(!(r->has_sp && r->bad_sp));
    CHECK(!(r->has_np && r->bad_np));

    /* [EVAL-7]: an invalid policy tag means as_none or unusable. */
    if (r->bad_p || r->bad_sp || r->bad_np)
        CHECK(r->as_none || !r->usable);
    if (r->as_none) {
        CHECK(r->usable && r->rua_count > 0);
        CHECK(r->p == DMARC_POLICY_NONE && r->sp == DMARC_POLICY_NONE &&
              r->np == DMARC_POLICY_NONE);
    }
    if (r->usable && !r->as_none) {
        /* Inheritance [EVAL-6]: sp from p, np from sp. */
        if (!r->has_sp)
            CHECK(r->sp == r->p);
        if (!r->has_np)
            CHECK(r->np == r->sp);
        /* [OPEN-7]: a usable record without p is p=none (rfc9989 only). */
        if (!r->has_p) {
            CHECK(r->p == DMARC_POLICY_NONE);
            CHECK(mode == DMARC_MODE_RFC9989);
        }
    }

    check_uris(r->rua, r->rua_count, r->has_rua);
    check_uris(r->ruf, r->ruf_count, r->has_ruf);

    CHECK(r->warning_count <= DMARC_RECORD_MAX_WARNINGS);
    CHECK((r->warning_count == 0) == (r->warnings == NULL));
    CHECK(r->warnings_dropped == 0 || r->warning_count == DMARC_RECORD_MAX_WARNINGS);
    for (i = 0; i < r->warning_count; i++) {
        check_diag(&r->warnings[i], size);
        CHECK(r->warnings[i].code != DMARC_DIAG_NOT_DMARC);
        if (mode == DMARC_MODE_RFC7489) {
            CHECK(r->warnings[i].code != DMARC_DIAG_TAG_CASE);
            CHECK(r->warnings[i].code != DMARC_DIAG_HISTORIC_TAG);
        } else {
            CHECK(r->warnings[i].code != DMARC_DIAG_P_NOT_SECOND);
        }
    }
}

static void run_mode(dmarc_mode mode, const char *txt, size_t size)
{
    dmarc_record *r = NULL;
    dmarc_diag diag;
    dmarc_status st;
    bool is = dmarc_record_is_dmarc(mode, txt, size);

    memset(&diag, 0xa5, sizeof(diag));
    st = dmarc_record_parse(mode, NULL, txt, size, &r, &diag);
    if (st == DMARC_ERR_SYNTAX) {
        CHECK(r == NULL);
        check_diag(&diag, size > DMARC_RECORD_MAX_LEN ? DMARC_RECORD_MAX_LEN : size);
        if (diag.code == DMARC_DIAG_NOT_DMARC)
            CHECK(!is);
        else
            CHECK(diag.code == DMARC_DIAG_TOO_LONG && size > DMARC_RECORD_MAX_LEN);
        return;
    }
    CHECK(st == DMARC_OK && r != NULL);
    CHECK(is);
    CHECK(diag.code < DMARC_DIAG__COUNT);
    CHECK((diag.code == DMARC_DIAG_NONE) == r->usable);
    check_record(mode, r, size);
    dmarc_record_free(r);

    {
        dmarc_allocator none = {no_memory, NULL};
        dmarc_record *untouched = (dmarc_record *)&untouched;
        dmarc_record *sentinel = untouched;
        CHECK(dmarc_record_parse(mode, &none, txt, size, &untouched, NULL) == DMARC_ERR_NOMEM);
        CHECK(untouched == sentinel);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The parser takes pointer + length and must never read past it; an
    ** exact-size copy keeps that checkable under ASan even for size 0. */
    char *txt = malloc(size == 0 ? 1 : size);
    if (txt == NULL)
        return 0;
    if (size > 0)
        memcpy(txt, data, size);
    run_mode(DMARC_MODE_RFC9989, size == 0 ? NULL : txt, size);
    run_mode(DMARC_MODE_RFC7489, txt, size);
    free(txt);
    return 0;
}
