/*
** libFuzzer target for the DNS-server backend's reply reader: the bytes a
** server (or anyone forging its address) sends back to a query.
**
** The input is one reply in wire form; the query it is read against is
** fixed: ID 0x1234, "_dmarc.example.com" TXT, and, when the input's first
** byte is odd, "s._domainkey.example.com" TXT (so both the DMARC and the
** DKIM question shapes are covered).
**
** Invariants checked on every input:
** - dmarc_dns_server_reply returns DMARC_OK, DMARC_ERR_SYNTAX or
**   DMARC_ERR_NOMEM, nothing else;
** - on DMARC_ERR_SYNTAX *problem names why and *out stays NULL;
** - on DMARC_OK either the reply is truncated (no answer: asked again over
**   TCP) or the answer is for the question's name with a valid rcode, RRs
**   only when NOERROR, at most DMARC_DNS_MAX_RRS, each NUL-terminated at
**   its length;
** - a reply whose ID differs from the query's is never DMARC_OK.
** A broken invariant aborts, which libFuzzer and tests/fuzz/replay.c report.
*/
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dmarc_dns_ldns.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *name =
        size > 0 && (data[0] & 1) ? "s._domainkey.example.com" : "_dmarc.example.com";
    dmarc_dns_answer *a = NULL;
    const char *problem = NULL;
    bool truncated = false;
    size_t i;
    dmarc_status st =
        dmarc_dns_server_reply(data, size, 0x1234, name, DMARC_DNS_T_TXT, &a, &truncated, &problem);
    CHECK(st == DMARC_OK || st == DMARC_ERR_SYNTAX || st == DMARC_ERR_NOMEM);
    if (st != DMARC_OK) {
        CHECK(a == NULL);
        CHECK(st != DMARC_ERR_SYNTAX || (problem != NULL && problem[0] != '\0'));
        return 0;
    }
    CHECK(size >= 2 && data[0] == 0x12 && data[1] == 0x34);
    if (truncated) {
        CHECK(a == NULL);
        return 0;
    }
    CHECK(a != NULL);
    CHECK(a->rcode < DMARC_RCODE__COUNT);
    CHECK(strcmp(a->name, name) == 0);
    CHECK(a->count <= DMARC_DNS_MAX_RRS);
    CHECK(a->count == 0 || a->rcode == DMARC_RCODE_NOERROR);
    for (i = 0; i < a->count; i++) {
        CHECK(a->rrs[i].type == DMARC_DNS_T_TXT);
        CHECK(a->rrs[i].data[a->rrs[i].len] == '\0');
    }
    dmarc_dns_answer_free(a);
    return 0;
}
