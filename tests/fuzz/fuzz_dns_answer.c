/*
** libFuzzer target for DNS answers read off the network: the reply parsing
** of the DNS-server resolver (dns_ldns.c). The first input byte picks the
** question type, the rest is the reply in wire format (RFC 1035 §4.1), which
** ldns decodes and from_packet turns into an answer (CNAME chain inside the
** packet, negative TTL from the SOA, rcode mapping).
**
** Invariants: from_packet returns OK (or NOMEM); the answer has at most
** DMARC_DNS_MAX_RRS RRs, only under NOERROR, each NUL-terminated at its
** stated length, names lowercase; at most DMARC_DNS_MAX_CNAME hops.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The reply parser is file-local to the adapter: the harness compiles the
** adapter in, so the fuzzer reaches it without a network. */
#include "dns_ldns.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_dns_answer: invariant broken: %s (line %d)\n", #cond, __LINE__); \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void check_name(const char *s, size_t len)
{
    size_t i;
    for (i = 0; i < len; i++)
        CHECK(!(s[i] >= 'A' && s[i] <= 'Z'));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const unsigned types[] = {DMARC_DNS_T_TXT, DMARC_DNS_T_A,   DMARC_DNS_T_AAAA,
                                     DMARC_DNS_T_MX,  DMARC_DNS_T_PTR, DMARC_DNS_T_CNAME};
    unsigned type;
    ldns_pkt *pkt = NULL;
    ldns_rdf *qdname;
    const char *qname = "_dmarc.example.com";
    char asked[DMARC_DOMAIN_MAX_LEN + 2];
    dmarc_dns_answer *a = NULL;
    dmarc_status st;
    size_t i;

    if (size < 1)
        return 0;
    type = types[data[0] % (sizeof types / sizeof types[0])];
    if (ldns_wire2pkt(&pkt, data + 1, size - 1) != LDNS_STATUS_OK || pkt == NULL)
        return 0;
    /* Odd selector: ask for the packet's own question name (a reply that
    ** matches what was asked), so the answer section's owners can match. */
    if ((data[0] & 0x80) != 0 && ldns_pkt_qdcount(pkt) > 0 && ldns_pkt_question(pkt) != NULL &&
        ldns_rr_list_rr_count(ldns_pkt_question(pkt)) > 0) {
        size_t l = dname_text(ldns_rr_owner(ldns_rr_list_rr(ldns_pkt_question(pkt), 0)), asked,
                              sizeof asked);
        if (l > 0 && strlen(asked) == l)
            qname = asked;
    }
    qdname = wire_name(qname);
    if (qdname == NULL) {
        ldns_pkt_free(pkt);
        return 0;
    }
    st = from_packet(pkt, qname, qdname, type, &a);
    CHECK(st == DMARC_OK || st == DMARC_ERR_NOMEM);
    if (st == DMARC_OK) {
        CHECK(a != NULL && a->name != NULL);
        CHECK(a->count <= DMARC_DNS_MAX_RRS);
        CHECK(a->count == 0 || a->rcode == DMARC_RCODE_NOERROR);
        /* A chain longer than the bound ends as SERVFAIL. */
        CHECK(a->cname_hops <= DMARC_DNS_MAX_CNAME || a->rcode == DMARC_RCODE_SERVFAIL);
        for (i = 0; i < a->count; i++) {
            const dmarc_dns_rr *rr = &a->rrs[i];
            CHECK(rr->data != NULL && rr->data[rr->len] == '\0');
            CHECK(rr->type == type);
            if (type == DMARC_DNS_T_MX || type == DMARC_DNS_T_PTR || type == DMARC_DNS_T_CNAME)
                check_name(rr->data, rr->len);
        }
        if (a->cname != NULL)
            check_name(a->cname, strlen(a->cname));
        dmarc_dns_answer_free(a);
    }
    ldns_rdf_deep_free(qdname);
    ldns_pkt_free(pkt);
    return 0;
}
