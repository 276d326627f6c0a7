/*
** libFuzzer target for the zone-file reader (dmarc_zone_parse): zone text is
** untrusted when `dmarc check --zone` is pointed at a file someone else wrote.
**
** Invariants checked on every input:
** - the parse returns OK, SYNTAX, LIMIT or INVAL (a bad $ORIGIN), never
**   anything else; on failure the out-parameter is untouched and the error
**   names a code and a line;
** - lookups of a few names in the parsed zone return answers whose RRs are
**   NUL-terminated at their stated length, at most DMARC_DNS_MAX_RRS of them,
**   and only for NOERROR.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dmarc.h"
#include "dmarc_dns.h"
#include "dmarc_zone.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_zone: invariant broken: %s (line %d)\n", #cond, __LINE__);       \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void check_answer(const dmarc_dns_answer *a)
{
    size_t i;
    CHECK(a != NULL);
    CHECK(a->count <= DMARC_DNS_MAX_RRS);
    CHECK(a->count == 0 || a->rcode == DMARC_RCODE_NOERROR);
    CHECK(a->name != NULL);
    for (i = 0; i < a->count; i++) {
        const dmarc_dns_rr *rr = &a->rrs[i];
        CHECK(rr->data != NULL && rr->data[rr->len] == '\0');
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const names[] = {"example",         "_dmarc.example", "a.example",
                                        "www.a.example",   "x.y.example",    "example.org",
                                        "_dmarc.a.example"};
    static const unsigned types[] = {DMARC_DNS_T_TXT, DMARC_DNS_T_A, DMARC_DNS_T_AAAA,
                                     DMARC_DNS_T_MX, DMARC_DNS_T_PTR};
    /* An exact-size copy: the reader takes pointer + length and must stop there. */
    char *text = malloc(size == 0 ? 1 : size);
    dmarc_zone *z = NULL, *sentinel = (dmarc_zone *)&sentinel;
    dmarc_zone_error err;
    dmarc_status st;
    size_t i, j;

    if (text == NULL)
        return 0;
    if (size > 0)
        memcpy(text, data, size);
    z = sentinel;
    st = dmarc_zone_parse(NULL, text, size, "example.", &z, &err);
    if (st != DMARC_OK) {
        CHECK(st == DMARC_ERR_SYNTAX || st == DMARC_ERR_LIMIT || st == DMARC_ERR_INVAL);
        CHECK(z == sentinel);
        CHECK(err.code != NULL && strcmp(err.code, "none") != 0);
        CHECK(memchr(err.message, '\0', sizeof err.message) != NULL);
        free(text);
        return 0;
    }
    CHECK(z != NULL && z != sentinel);
    CHECK(dmarc_zone_record_count(z) <= DMARC_ZONE_MAX_RECORDS);
    for (i = 0; i < sizeof names / sizeof names[0]; i++) {
        for (j = 0; j < sizeof types / sizeof types[0]; j++) {
            dmarc_dns_answer *a = NULL;
            st = dmarc_zone_lookup(z, names[i], strlen(names[i]), types[j], &a);
            CHECK(st == DMARC_OK);
            check_answer(a);
            dmarc_dns_answer_free(a);
        }
    }
    dmarc_zone_free(z);
    free(text);
    return 0;
}
