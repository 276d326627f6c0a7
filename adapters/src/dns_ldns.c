/*
** DNS-server backend on libldns. Each question is one ldns query (with the
** resolver's own retries and nameserver rotation); the reply packet is
** turned into a dmarc_dns_answer keeping the four outcomes apart:
** NXDOMAIN, NODATA, SERVFAIL (any error rcode from the server) and TIMEOUT
** (no reply at all) [DISC-4] [DISC-10].
*/
#include <ldns/ldns.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dmarc_dns_ldns.h"

typedef struct server_backend {
    ldns_resolver *res;
} server_backend;

void dmarc_dns_server_options_init(dmarc_dns_server_options *o)
{
    if (o == NULL)
        return;
    memset(o, 0, sizeof *o);
    o->timeout_ms = 2000;
    o->retries = 1;
}

static void set_error(char *errbuf, size_t errlen, const char *msg, const char *detail)
{
    if (errbuf == NULL || errlen == 0)
        return;
    if (detail != NULL)
        snprintf(errbuf, errlen, "%s: %.80s", msg, detail);
    else
        snprintf(errbuf, errlen, "%s", msg);
}

/* One "HOST[:PORT]" or "[V6]:PORT" item of @s (length @len). */
static dmarc_status parse_server(const char *s, size_t len, char *host, size_t hostsz,
                                 unsigned *port, bool *v6)
{
    const char *colon = NULL;
    size_t hlen;
    size_t i;
    *port = 53;
    if (len == 0)
        return DMARC_ERR_SYNTAX;
    if (s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (close == NULL)
            return DMARC_ERR_SYNTAX;
        hlen = (size_t)(close - s) - 1;
        if (hlen == 0 || hlen >= hostsz)
            return DMARC_ERR_SYNTAX;
        memcpy(host, s + 1, hlen);
        host[hlen] = '\0';
        *v6 = true;
        if ((size_t)(close - s) + 1 < len) {
            if (close[1] != ':')
                return DMARC_ERR_SYNTAX;
            colon = close + 1;
        }
    } else {
        size_t colons = 0;
        for (i = 0; i < len; i++)
            if (s[i] == ':') {
                colons++;
                colon = s + i;
            }
        if (colons > 1) {
            /* A bare IPv6 address: no port. */
            colon = NULL;
            hlen = len;
            *v6 = true;
        } else {
            hlen = colon != NULL ? (size_t)(colon - s) : len;
            *v6 = false;
        }
        if (hlen == 0 || hlen >= hostsz)
            return DMARC_ERR_SYNTAX;
        memcpy(host, s, hlen);
        host[hlen] = '\0';
    }
    if (colon != NULL) {
        unsigned long p = 0;
        const char *q = colon + 1, *end = s + len;
        if (q == end || end - q > 5)
            return DMARC_ERR_SYNTAX;
        for (; q < end; q++) {
            if (*q < '0' || *q > '9')
                return DMARC_ERR_SYNTAX;
            p = p * 10 + (unsigned long)(*q - '0');
        }
        if (p == 0 || p > 65535)
            return DMARC_ERR_SYNTAX;
        *port = (unsigned)p;
    }
    return DMARC_OK;
}

static void configure(ldns_resolver *res, const dmarc_dns_server_options *o)
{
    struct timeval tv;
    unsigned ms = o->timeout_ms == 0 ? 2000 : o->timeout_ms;
    unsigned retries = o->retries;
    if (ms > DMARC_DNS_MAX_TIMEOUT_MS)
        ms = DMARC_DNS_MAX_TIMEOUT_MS;
    if (retries > DMARC_DNS_MAX_RETRIES)
        retries = DMARC_DNS_MAX_RETRIES;
    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)((ms % 1000) * 1000);
    ldns_resolver_set_timeout(res, tv);
    /* ldns counts tries: the first one plus the retries. */
    ldns_resolver_set_retry(res, (uint8_t)(retries + 1));
    ldns_resolver_set_retrans(res, 1);
    ldns_resolver_set_recursive(res, true);
    ldns_resolver_set_dnssec(res, false);
    /* Names are asked as given: no search list, no default domain. */
    ldns_resolver_set_defnames(res, false);
    ldns_resolver_set_dnsrch(res, false);
    ldns_resolver_set_fail(res, false);
    ldns_resolver_set_fallback(res, true);
    ldns_resolver_set_igntc(res, false);
    ldns_resolver_set_usevc(res, o->tcp);
    ldns_resolver_set_edns_udp_size(res, DMARC_DNS_EDNS_SIZE);
    ldns_resolver_set_random(res, false);
}

/* Wire form of a normalised name: labels as length + bytes, then 0. Built
** by hand so that no character of a name (SPF macros can put anything in
** one) is read as presentation-format syntax. */
static ldns_rdf *wire_name(const char *name)
{
    uint8_t wire[DMARC_DOMAIN_MAX_LEN + 2];
    size_t len = strlen(name), i, start = 0, w = 0;
    if (len > DMARC_DOMAIN_MAX_LEN)
        return NULL;
    for (i = 0; i <= len; i++) {
        if (i == len || name[i] == '.') {
            size_t l = i - start;
            if (l == 0 || l > 63)
                return NULL;
            wire[w++] = (uint8_t)l;
            memcpy(wire + w, name + start, l);
            w += l;
            start = i + 1;
        }
    }
    wire[w++] = 0;
    return ldns_dname_new_frm_data((uint16_t)w, wire);
}

/* Text form of a dname rdf: lowercase, no trailing dot. */
static size_t dname_text(const ldns_rdf *rdf, char *out, size_t outsz)
{
    const uint8_t *d = ldns_rdf_data(rdf);
    size_t size = ldns_rdf_size(rdf), pos = 0, o = 0, labels = 0;
    while (pos < size && d[pos] != 0 && labels < DMARC_DOMAIN_MAX_LABELS) {
        size_t l = d[pos++], k;
        if (l > 63 || pos + l > size)
            break;
        if (o > 0 && o + 1 < outsz)
            out[o++] = '.';
        for (k = 0; k < l && o + 1 < outsz; k++) {
            char c = (char)d[pos + k];
            out[o++] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
        }
        pos += l;
        labels++;
    }
    out[o] = '\0';
    return o;
}

static dmarc_status add_rr(dmarc_dns_builder *b, const ldns_rr *rr, unsigned type)
{
    uint32_t ttl = ldns_rr_ttl(rr);
    size_t i, n = ldns_rr_rd_count(rr);
    char name[DMARC_DOMAIN_MAX_LEN + 2];
    dmarc_status st;
    switch (type) {
    case DMARC_DNS_T_TXT:
    case DMARC_DNS_T_SPF:
        /* Each rdf is one <character-string>: a length byte, then text. */
        for (i = 0; i < n; i++) {
            const ldns_rdf *rdf = ldns_rr_rdf(rr, i);
            const uint8_t *d = ldns_rdf_data(rdf);
            size_t size = ldns_rdf_size(rdf), l = size > 0 ? d[0] : 0;
            if (l + 1 > size)
                l = size > 0 ? size - 1 : 0;
            if (i == 0)
                st = dmarc_dns_builder_add(b, type, ttl, 0, d + 1, l);
            else
                st = dmarc_dns_builder_append(b, d + 1, l);
            if (st != DMARC_OK)
                return st;
        }
        if (n == 0)
            return dmarc_dns_builder_add(b, type, ttl, 0, "", 0);
        return DMARC_OK;
    case DMARC_DNS_T_A:
    case DMARC_DNS_T_AAAA: {
        size_t want = type == DMARC_DNS_T_A ? 4 : 16;
        const ldns_rdf *rdf = n > 0 ? ldns_rr_rdf(rr, 0) : NULL;
        if (rdf == NULL || ldns_rdf_size(rdf) != want)
            return DMARC_OK;
        return dmarc_dns_builder_add(b, type, ttl, 0, ldns_rdf_data(rdf), want);
    }
    case DMARC_DNS_T_MX: {
        size_t l;
        if (n < 2)
            return DMARC_OK;
        l = dname_text(ldns_rr_rdf(rr, 1), name, sizeof name);
        return dmarc_dns_builder_add(b, type, ttl, ldns_rdf2native_int16(ldns_rr_rdf(rr, 0)), name,
                                     l);
    }
    case DMARC_DNS_T_PTR:
    case DMARC_DNS_T_CNAME:
    case DMARC_DNS_T_NS: {
        size_t l;
        if (n < 1)
            return DMARC_OK;
        l = dname_text(ldns_rr_rdf(rr, 0), name, sizeof name);
        return dmarc_dns_builder_add(b, type, ttl, 0, name, l);
    }
    default:
        return DMARC_OK;
    }
}

/* RFC 2308 §5: min(SOA TTL, SOA minimum) of the authority section's SOA. */
static uint32_t soa_negative_ttl(const ldns_pkt *pkt)
{
    const ldns_rr_list *auth = ldns_pkt_authority(pkt);
    size_t i, n = auth != NULL ? ldns_rr_list_rr_count(auth) : 0;
    for (i = 0; i < n && i < DMARC_DNS_MAX_RRS; i++) {
        const ldns_rr *rr = ldns_rr_list_rr(auth, i);
        if (ldns_rr_get_type(rr) == LDNS_RR_TYPE_SOA && ldns_rr_rd_count(rr) >= 7) {
            uint32_t ttl = ldns_rr_ttl(rr);
            uint32_t min = ldns_rdf2native_int32(ldns_rr_rdf(rr, 6));
            return ttl < min ? ttl : min;
        }
    }
    return UINT32_MAX;
}

static bool has_soa(const ldns_pkt *pkt)
{
    return soa_negative_ttl(pkt) != UINT32_MAX;
}

static dmarc_status from_packet(const ldns_pkt *pkt, const char *qname, const ldns_rdf *qdname,
                                unsigned type, dmarc_dns_answer **out)
{
    dmarc_dns_builder b;
    const ldns_rr_list *ans = ldns_pkt_answer(pkt);
    size_t i, n = ans != NULL ? ldns_rr_list_rr_count(ans) : 0;
    const ldns_rdf *cur = qdname;
    uint32_t chain_ttl = UINT32_MAX;
    unsigned hops = 0;
    dmarc_rcode rc;
    dmarc_status st = DMARC_OK;
    char text[DMARC_DOMAIN_MAX_LEN + 2];

    dmarc_dns_builder_init(&b, NULL, qname, strlen(qname));
    b.negative_ttl = soa_negative_ttl(pkt);
    switch (ldns_pkt_get_rcode(pkt)) {
    case LDNS_RCODE_NOERROR:
        rc = DMARC_RCODE_NOERROR;
        break;
    case LDNS_RCODE_NXDOMAIN:
        rc = DMARC_RCODE_NXDOMAIN;
        break;
    default:
        /* SERVFAIL, REFUSED, FORMERR, NOTIMP...: the server could not
        ** answer; a temporary error for everyone above [DISC-10]. */
        *out = dmarc_dns_builder_finish(&b, DMARC_RCODE_SERVFAIL);
        return *out != NULL ? DMARC_OK : DMARC_ERR_NOMEM;
    }
    if (n > DMARC_DNS_MAX_RRS * 4)
        n = DMARC_DNS_MAX_RRS * 4;
    /* Follow the chain inside the packet (RFC 1034 §4.3.2 step 3a). */
    for (;;) {
        bool found = false;
        const ldns_rdf *next = NULL;
        for (i = 0; i < n; i++) {
            const ldns_rr *rr = ldns_rr_list_rr(ans, i);
            if (ldns_rr_get_class(rr) != LDNS_RR_CLASS_IN ||
                ldns_dname_compare(ldns_rr_owner(rr), cur) != 0)
                continue;
            if ((unsigned)ldns_rr_get_type(rr) == type) {
                found = true;
                if ((st = add_rr(&b, rr, type)) != DMARC_OK)
                    break;
            } else if (ldns_rr_get_type(rr) == LDNS_RR_TYPE_CNAME && next == NULL &&
                       ldns_rr_rd_count(rr) >= 1) {
                next = ldns_rr_rdf(rr, 0);
                if (ldns_rr_ttl(rr) < chain_ttl)
                    chain_ttl = ldns_rr_ttl(rr);
            }
        }
        if (st != DMARC_OK || found || next == NULL)
            break;
        if (++hops > DMARC_DNS_MAX_CNAME) {
            dmarc_dns_builder_discard(&b);
            dmarc_dns_builder_init(&b, NULL, qname, strlen(qname));
            rc = DMARC_RCODE_SERVFAIL;
            break;
        }
        cur = next;
    }
    if (st != DMARC_OK) {
        dmarc_dns_builder_discard(&b);
        return st;
    }
    if (rc == DMARC_RCODE_NOERROR && b.count == 0 && cur != qdname && !has_soa(pkt)) {
        /* The chain stops at an alias whose data the server did not
        ** include: the layer asks for the target. */
        size_t l = dname_text(cur, text, sizeof text);
        dmarc_dns_builder_cname(&b, text, l, chain_ttl);
    }
    if (chain_ttl < b.ttl)
        b.ttl = chain_ttl;
    *out = dmarc_dns_builder_finish(&b, rc);
    if (*out == NULL)
        return DMARC_ERR_NOMEM;
    (*out)->cname_hops = hops;
    return DMARC_OK;
}

static dmarc_status server_query(void *impl, const char *name, unsigned type,
                                 dmarc_dns_answer **out)
{
    server_backend *sb = impl;
    ldns_rdf *dname = wire_name(name);
    ldns_pkt *pkt = NULL;
    ldns_status s;
    dmarc_status st;
    if (dname == NULL) {
        dmarc_dns_builder b;
        dmarc_dns_builder_init(&b, NULL, name, strlen(name));
        *out = dmarc_dns_builder_finish(&b, DMARC_RCODE_NXDOMAIN);
        return *out != NULL ? DMARC_OK : DMARC_ERR_NOMEM;
    }
    /* ldns marks a nameserver unreachable after one timeout and then skips
    ** it for good; every question deserves a fresh try of each server (a
    ** dead zone somewhere must not make every later answer a timeout). */
    {
        size_t i, n = ldns_resolver_nameserver_count(sb->res);
        for (i = 0; i < n; i++)
            ldns_resolver_set_nameserver_rtt(sb->res, i, LDNS_RESOLV_RTT_MIN);
    }
    s = ldns_resolver_send(&pkt, sb->res, dname, (ldns_rr_type)type, LDNS_RR_CLASS_IN, LDNS_RD);
    if (s != LDNS_STATUS_OK || pkt == NULL) {
        dmarc_dns_builder b;
        ldns_rdf_deep_free(dname);
        if (pkt != NULL)
            ldns_pkt_free(pkt);
        if (s == LDNS_STATUS_MEM_ERR)
            return DMARC_ERR_NOMEM;
        /* No usable reply from any nameserver, after every retry. */
        dmarc_dns_builder_init(&b, NULL, name, strlen(name));
        *out = dmarc_dns_builder_finish(&b, DMARC_RCODE_TIMEOUT);
        return *out != NULL ? DMARC_OK : DMARC_ERR_NOMEM;
    }
    st = from_packet(pkt, name, dname, type, out);
    ldns_pkt_free(pkt);
    ldns_rdf_deep_free(dname);
    return st;
}

static void server_free(void *impl)
{
    server_backend *sb = impl;
    if (sb == NULL)
        return;
    if (sb->res != NULL)
        ldns_resolver_deep_free(sb->res);
    free(sb);
}

static dmarc_status add_servers(ldns_resolver *res, const char *list, char *errbuf, size_t errlen)
{
    const char *p = list;
    unsigned port = 0;
    size_t count = 0;
    while (*p != '\0') {
        const char *end = strchr(p, ',');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        char host[64];
        unsigned this_port;
        bool v6 = false;
        ldns_rdf *addr;
        while (len > 0 && (*p == ' ' || *p == '\t')) {
            p++;
            len--;
        }
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        if (count >= DMARC_DNS_MAX_SERVERS) {
            set_error(errbuf, errlen, "too many DNS servers", list);
            return DMARC_ERR_SYNTAX;
        }
        if (parse_server(p, len, host, sizeof host, &this_port, &v6) != DMARC_OK) {
            set_error(errbuf, errlen, "bad DNS server (HOST[:PORT])", list);
            return DMARC_ERR_SYNTAX;
        }
        /* One port for every nameserver: ldns keeps the port per resolver. */
        if (port != 0 && this_port != port) {
            set_error(errbuf, errlen, "all DNS servers must use the same port", list);
            return DMARC_ERR_SYNTAX;
        }
        port = this_port;
        addr = ldns_rdf_new_frm_str(v6 ? LDNS_RDF_TYPE_AAAA : LDNS_RDF_TYPE_A, host);
        if (addr == NULL) {
            set_error(errbuf, errlen, "DNS server must be an IP address", host);
            return DMARC_ERR_SYNTAX;
        }
        if (ldns_resolver_push_nameserver(res, addr) != LDNS_STATUS_OK) {
            ldns_rdf_deep_free(addr);
            set_error(errbuf, errlen, "cannot use DNS server", host);
            return DMARC_ERR_INVAL;
        }
        ldns_rdf_deep_free(addr);
        count++;
        if (end == NULL)
            break;
        p = end + 1;
    }
    if (count == 0) {
        set_error(errbuf, errlen, "no DNS server given", NULL);
        return DMARC_ERR_SYNTAX;
    }
    ldns_resolver_set_port(res, (uint16_t)port);
    return DMARC_OK;
}

dmarc_status dmarc_dns_server_backend(const dmarc_dns_server_options *o, dmarc_dns_backend *out,
                                      char *errbuf, size_t errlen)
{
    dmarc_dns_server_options defaults;
    server_backend *sb;
    ldns_resolver *res = NULL;
    dmarc_status st;
    if (out == NULL)
        return DMARC_ERR_INVAL;
    if (o == NULL) {
        dmarc_dns_server_options_init(&defaults);
        o = &defaults;
    }
    if (o->servers != NULL && o->servers[0] != '\0') {
        res = ldns_resolver_new();
        if (res == NULL)
            return DMARC_ERR_NOMEM;
        st = add_servers(res, o->servers, errbuf, errlen);
        if (st != DMARC_OK) {
            ldns_resolver_deep_free(res);
            return st;
        }
    } else {
        const char *path = o->resolv_conf != NULL ? o->resolv_conf : "/etc/resolv.conf";
        if (ldns_resolver_new_frm_file(&res, path) != LDNS_STATUS_OK || res == NULL) {
            set_error(errbuf, errlen, "cannot read nameservers from", path);
            return DMARC_ERR_INVAL;
        }
        if (ldns_resolver_nameserver_count(res) == 0) {
            ldns_resolver_deep_free(res);
            set_error(errbuf, errlen, "no nameserver in", path);
            return DMARC_ERR_INVAL;
        }
    }
    configure(res, o);
    sb = calloc(1, sizeof *sb);
    if (sb == NULL) {
        ldns_resolver_deep_free(res);
        return DMARC_ERR_NOMEM;
    }
    sb->res = res;
    out->query = server_query;
    out->free = server_free;
    out->impl = sb;
    return DMARC_OK;
}
