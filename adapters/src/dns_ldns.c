/*
** DNS-server backend. libldns builds and parses the packets; the exchange
** itself is ours, on our own sockets, because ldns_resolver_send accepts a
** reply whose transaction ID or question differs from the query (a forged
** "p=none" or an empty answer for _dmarc.example.com would be taken as
** the truth) and cannot be told to pick a random source port per query.
** Here (RFC 5452 §4, §9.1):
**   - every query gets a random ID and a random source port (getrandom);
**   - the UDP socket is connected to the server asked, so the kernel drops
**     datagrams from any other address or port;
**   - a reply counts only when it is a response with that ID and the same
**     question (name, type, class); anything else is ignored and the wait
**     goes on until the per-try timeout;
**   - a reply with TC set is asked again over TCP (RFC 1035 §4.2.2,
**     RFC 7766 §5), so a key that does not fit is never "no key";
**   - queries carry EDNS0 (RFC 6891) with DMARC_DNS_EDNS_SIZE;
**   - a reply that matches but does not parse is SERVFAIL with the problem
**     "malformed reply", never a timeout.
** The answer keeps the four outcomes apart: NXDOMAIN, NODATA, SERVFAIL (any
** error rcode from the server) and TIMEOUT (no usable reply at all).
*/
#define _GNU_SOURCE /* getrandom */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ldns/ldns.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dmarc_dns_ldns.h"

typedef struct server_addr {
    struct sockaddr_storage ss;
    socklen_t len;
} server_addr;

typedef struct server_backend {
    server_addr servers[DMARC_DNS_MAX_SERVERS];
    size_t nservers;
    unsigned timeout_ms; /* per try */
    unsigned tries;      /* the first one plus the retries */
    bool tcp_only;
    uint8_t buf[65535]; /* one reply: the largest DNS message (RFC 1035 §4.2.2) */
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

/* ** {======================================================
** The exchange: one query, one server
** ======================================================= */

/* What asking gave so far. */
typedef struct exchange {
    dmarc_dns_answer *answer; /* from a reply that matches the query, or NULL */
    bool truncated;           /* a matching reply had TC set: ask over TCP */
    const char *problem;      /* why the last datagram or stream that came was not used */
    bool nomem;
} exchange;

static uint64_t now_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Milliseconds left before @deadline, for poll (0 when it has passed). */
static int ms_left(uint64_t deadline)
{
    uint64_t now = now_ms();
    return now >= deadline ? 0 : (int)(deadline - now);
}

/* The kernel's CSPRNG: an off-path forger must guess ID and port
** (RFC 5452 §9.2). */
static bool random_bytes(void *buf, size_t len)
{
    uint8_t *p = buf;
    size_t got = 0;
    unsigned tries;
    for (tries = 0; got < len && tries < 8; tries++) {
        ssize_t n = getrandom(p + got, len - got, 0);
        if (n > 0)
            got += (size_t)n;
        else if (n < 0 && errno != EINTR)
            return false;
    }
    return got == len;
}

/* Wire form of the query for (@qname, @type) with @id and EDNS0; free(). */
static uint8_t *build_query(const ldns_rdf *qname, unsigned type, uint16_t id, size_t *len)
{
    ldns_rdf *name = ldns_rdf_clone(qname);
    ldns_pkt *q;
    uint8_t *wire = NULL;
    if (name == NULL)
        return NULL;
    q = ldns_pkt_query_new(name, (ldns_rr_type)type, LDNS_RR_CLASS_IN, LDNS_RD);
    if (q == NULL) {
        ldns_rdf_deep_free(name);
        return NULL;
    }
    ldns_pkt_set_id(q, id);
    /* RFC 6891 §6.2.3: the payload we can take over UDP. */
    ldns_pkt_set_edns_udp_size(q, DMARC_DNS_EDNS_SIZE);
    if (ldns_pkt2wire(&wire, q, len) != LDNS_STATUS_OK)
        wire = NULL;
    ldns_pkt_free(q);
    return wire;
}

/* The reply in @buf if it answers our query: a response (QR) with our ID
** and our one question, same name (case-insensitive), type and class
** (RFC 5452 §9.1). Otherwise NULL with *problem set. */
static ldns_pkt *match_reply(const uint8_t *buf, size_t len, uint16_t id, const ldns_rdf *qname,
                             unsigned type, const char **problem)
{
    ldns_pkt *p = NULL;
    const ldns_rr_list *qs;
    const ldns_rr *q;
    if (len < LDNS_HEADER_SIZE) {
        *problem = "malformed reply";
        return NULL;
    }
    if (LDNS_ID_WIRE(buf) != id || !LDNS_QR_WIRE(buf)) {
        *problem = "reply with another transaction ID";
        return NULL;
    }
    if (ldns_wire2pkt(&p, buf, len) != LDNS_STATUS_OK || p == NULL) {
        *problem = "malformed reply";
        return NULL;
    }
    qs = ldns_pkt_question(p);
    q = qs != NULL && ldns_rr_list_rr_count(qs) == 1 ? ldns_rr_list_rr(qs, 0) : NULL;
    if (ldns_pkt_get_opcode(p) != LDNS_PACKET_QUERY || q == NULL ||
        ldns_rr_get_type(q) != (ldns_rr_type)type || ldns_rr_get_class(q) != LDNS_RR_CLASS_IN ||
        ldns_dname_compare(ldns_rr_owner(q), qname) != 0) {
        ldns_pkt_free(p);
        *problem = "reply to another question";
        return NULL;
    }
    return p;
}

dmarc_status dmarc_dns_server_reply(const uint8_t *wire, size_t len, uint16_t id, const char *name,
                                    unsigned type, dmarc_dns_answer **out, bool *truncated,
                                    const char **problem)
{
    ldns_rdf *qname;
    ldns_pkt *p;
    dmarc_status st = DMARC_OK;
    if (wire == NULL || name == NULL || out == NULL || truncated == NULL || problem == NULL)
        return DMARC_ERR_INVAL;
    *out = NULL;
    *truncated = false;
    qname = wire_name(name);
    if (qname == NULL) {
        *problem = "reply to another question";
        return DMARC_ERR_SYNTAX;
    }
    p = match_reply(wire, len, id, qname, type, problem);
    if (p == NULL) {
        ldns_rdf_deep_free(qname);
        return DMARC_ERR_SYNTAX;
    }
    /* Half an RRset is not the RRset: a truncated DKIM key is not "no
    ** key", a truncated _dmarc answer not "no record". */
    if (ldns_pkt_tc(p))
        *truncated = true;
    else
        st = from_packet(p, name, qname, type, out);
    ldns_pkt_free(p);
    ldns_rdf_deep_free(qname);
    return st;
}

/* One datagram or stream from the server into @x. */
static void take_reply(exchange *x, const uint8_t *buf, size_t len, uint16_t id, const char *name,
                       unsigned type)
{
    dmarc_status st =
        dmarc_dns_server_reply(buf, len, id, name, type, &x->answer, &x->truncated, &x->problem);
    if (st == DMARC_ERR_NOMEM)
        x->nomem = true;
}

/* Bind @fd to a random port >= 1024 (RFC 5452 §9.2, §10); after
** DMARC_DNS_PORT_TRIES ports in use, the kernel's own choice. */
static void bind_random_port(int fd, int family)
{
    unsigned i;
    for (i = 0; i < DMARC_DNS_PORT_TRIES; i++) {
        struct sockaddr_storage ss;
        socklen_t len;
        uint16_t r;
        in_port_t port;
        if (!random_bytes(&r, sizeof r))
            return;
        port = htons((uint16_t)(1024u + r % (65536u - 1024u)));
        memset(&ss, 0, sizeof ss);
        if (family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)(void *)&ss;
            a->sin6_family = AF_INET6;
            a->sin6_addr = in6addr_any;
            a->sin6_port = port;
            len = sizeof *a;
        } else {
            struct sockaddr_in *a = (struct sockaddr_in *)(void *)&ss;
            a->sin_family = AF_INET;
            a->sin_addr.s_addr = htonl(INADDR_ANY);
            a->sin_port = port;
            len = sizeof *a;
        }
        if (bind(fd, (struct sockaddr *)(void *)&ss, len) == 0)
            return;
        if (errno != EADDRINUSE && errno != EACCES)
            return;
    }
}

/* One try over UDP: send, then read what the server sends until a reply
** matches or the try's time is up. The socket is connected, so datagrams
** from any other address or port never reach us. */
static void udp_exchange(server_backend *sb, const server_addr *sv, const uint8_t *wire,
                         size_t wlen, uint16_t id, const char *name, unsigned type, exchange *x)
{
    uint64_t deadline = now_ms() + sb->timeout_ms;
    unsigned datagrams;
    int fd = socket(sv->ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return;
    bind_random_port(fd, sv->ss.ss_family);
    if (connect(fd, (const struct sockaddr *)(const void *)&sv->ss, sv->len) != 0 ||
        send(fd, wire, wlen, 0) != (ssize_t)wlen) {
        close(fd);
        return;
    }
    for (datagrams = 0; datagrams < DMARC_DNS_MAX_DATAGRAMS;) {
        struct pollfd pfd = {fd, POLLIN, 0};
        int left = ms_left(deadline), r;
        ssize_t n;
        if (left == 0)
            break;
        r = poll(&pfd, 1, left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n = recv(fd, sb->buf, sizeof sb->buf, 0);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            break; /* ECONNREFUSED: nothing listens there */
        }
        datagrams++;
        take_reply(x, sb->buf, (size_t)n, id, name, type);
        if (x->answer != NULL || x->truncated || x->nomem)
            break;
    }
    close(fd);
}

/* Read or write all of @buf on non-blocking @fd before @deadline. */
static bool stream_io(int fd, uint8_t *buf, size_t len, bool writing, uint64_t deadline)
{
    size_t done = 0;
    while (done < len) {
        struct pollfd pfd = {fd, writing ? POLLOUT : POLLIN, 0};
        int left = ms_left(deadline), r;
        ssize_t n;
        if (left == 0)
            return false;
        r = poll(&pfd, 1, left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        n = writing ? send(fd, buf + done, len - done, MSG_NOSIGNAL)
                    : recv(fd, buf + done, len - done, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            return false;
        done += (size_t)n;
    }
    return true;
}

/* One try over TCP (RFC 1035 §4.2.2, RFC 7766): the query and the reply
** each behind a two-byte length. */
static void tcp_exchange(server_backend *sb, const server_addr *sv, const uint8_t *wire,
                         size_t wlen, uint16_t id, const char *name, unsigned type, exchange *x)
{
    uint64_t deadline = now_ms() + sb->timeout_ms;
    uint8_t *out;
    size_t rlen;
    bool ok = false;
    int fd = socket(sv->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return;
    if (connect(fd, (const struct sockaddr *)(const void *)&sv->ss, sv->len) != 0 &&
        errno != EINPROGRESS) {
        close(fd);
        return;
    }
    out = malloc(wlen + 2);
    if (out == NULL) {
        x->nomem = true;
        close(fd);
        return;
    }
    out[0] = (uint8_t)(wlen >> 8);
    out[1] = (uint8_t)wlen;
    memcpy(out + 2, wire, wlen);
    /* A connect that failed shows up as a failed write. */
    if (stream_io(fd, out, wlen + 2, true, deadline) &&
        stream_io(fd, sb->buf, 2, false, deadline)) {
        rlen = (size_t)sb->buf[0] << 8 | sb->buf[1];
        ok = stream_io(fd, sb->buf, rlen, false, deadline);
    }
    free(out);
    close(fd);
    if (ok)
        take_reply(x, sb->buf, rlen, id, name, type);
}

/* Ask one server once: UDP, then TCP when the reply is truncated (or TCP
** only when asked to). */
static void ask_server(server_backend *sb, const server_addr *sv, const char *name,
                       const ldns_rdf *qname, unsigned type, exchange *x)
{
    uint16_t id;
    uint8_t *wire;
    size_t wlen = 0;
    if (!random_bytes(&id, sizeof id)) {
        x->problem = "no random source for the query ID";
        return;
    }
    wire = build_query(qname, type, id, &wlen);
    if (wire == NULL) {
        x->nomem = true;
        return;
    }
    x->truncated = false;
    if (!sb->tcp_only)
        udp_exchange(sb, sv, wire, wlen, id, name, type, x);
    if (!x->nomem && (sb->tcp_only || x->truncated)) {
        if (x->truncated)
            x->problem = "truncated reply, and none over TCP";
        x->truncated = false;
        tcp_exchange(sb, sv, wire, wlen, id, name, type, x);
        if (x->truncated) {
            x->truncated = false;
            x->problem = "truncated reply over TCP";
        }
    }
    free(wire);
}

/* }====================================================== */

static dmarc_status server_query(void *impl, const char *name, unsigned type,
                                 dmarc_dns_answer **out)
{
    server_backend *sb = impl;
    ldns_rdf *dname = wire_name(name);
    exchange x = {NULL, false, NULL, false};
    dmarc_dns_builder b;
    unsigned t;
    size_t i;
    if (dname == NULL) {
        dmarc_dns_builder_init(&b, NULL, name, strlen(name));
        *out = dmarc_dns_builder_finish(&b, DMARC_RCODE_NXDOMAIN);
        return *out != NULL ? DMARC_OK : DMARC_ERR_NOMEM;
    }
    /* Every try asks each server in turn; a server that timed out on one
    ** question is asked again on the next. */
    for (t = 0; t < sb->tries && x.answer == NULL && !x.nomem; t++)
        for (i = 0; i < sb->nservers && x.answer == NULL && !x.nomem; i++)
            ask_server(sb, &sb->servers[i], name, dname, type, &x);
    ldns_rdf_deep_free(dname);
    if (x.nomem) {
        dmarc_dns_answer_free(x.answer);
        return DMARC_ERR_NOMEM;
    }
    if (x.answer != NULL) {
        *out = x.answer;
        return DMARC_OK;
    }
    /* No usable reply from any server after every try: SERVFAIL when
    ** something unusable came (said what), TIMEOUT when nothing did. */
    dmarc_dns_builder_init(&b, NULL, name, strlen(name));
    b.problem = x.problem;
    *out = dmarc_dns_builder_finish(&b,
                                    x.problem != NULL ? DMARC_RCODE_SERVFAIL : DMARC_RCODE_TIMEOUT);
    return *out != NULL ? DMARC_OK : DMARC_ERR_NOMEM;
}

static void server_free(void *impl)
{
    free(impl);
}

/* @host (an IP address literal) and @port into @sv. */
static bool server_address(const char *host, unsigned port, bool v6, server_addr *sv)
{
    memset(sv, 0, sizeof *sv);
    if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)(void *)&sv->ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        sv->len = sizeof *a;
        return inet_pton(AF_INET6, host, &a->sin6_addr) == 1;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)(void *)&sv->ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        sv->len = sizeof *a;
        return inet_pton(AF_INET, host, &a->sin_addr) == 1;
    }
}

static dmarc_status add_servers(server_backend *sb, const char *list, char *errbuf, size_t errlen)
{
    const char *p = list;
    while (*p != '\0') {
        const char *end = strchr(p, ',');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        char host[64];
        unsigned port;
        bool v6 = false;
        while (len > 0 && (*p == ' ' || *p == '\t')) {
            p++;
            len--;
        }
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        if (sb->nservers >= DMARC_DNS_MAX_SERVERS) {
            set_error(errbuf, errlen, "too many DNS servers", list);
            return DMARC_ERR_SYNTAX;
        }
        if (parse_server(p, len, host, sizeof host, &port, &v6) != DMARC_OK) {
            set_error(errbuf, errlen, "bad DNS server (HOST[:PORT])", list);
            return DMARC_ERR_SYNTAX;
        }
        if (!server_address(host, port, v6, &sb->servers[sb->nservers])) {
            set_error(errbuf, errlen, "DNS server must be an IP address", host);
            return DMARC_ERR_SYNTAX;
        }
        sb->nservers++;
        if (end == NULL)
            break;
        p = end + 1;
    }
    if (sb->nservers == 0) {
        set_error(errbuf, errlen, "no DNS server given", NULL);
        return DMARC_ERR_SYNTAX;
    }
    return DMARC_OK;
}

/* The nameservers of a resolv.conf file, read by ldns (at most
** DMARC_DNS_MAX_SERVERS). */
static dmarc_status add_resolv_conf(server_backend *sb, const char *path, char *errbuf,
                                    size_t errlen)
{
    ldns_resolver *res = NULL;
    size_t i, n;
    if (ldns_resolver_new_frm_file(&res, path) != LDNS_STATUS_OK || res == NULL) {
        set_error(errbuf, errlen, "cannot read nameservers from", path);
        return DMARC_ERR_INVAL;
    }
    n = ldns_resolver_nameserver_count(res);
    for (i = 0; i < n && sb->nservers < DMARC_DNS_MAX_SERVERS; i++) {
        size_t size = 0;
        struct sockaddr_storage *ss = ldns_rdf2native_sockaddr_storage(
            ldns_resolver_nameservers(res)[i], ldns_resolver_port(res), &size);
        if (ss == NULL)
            continue;
        if (size <= sizeof sb->servers[0].ss) {
            memcpy(&sb->servers[sb->nservers].ss, ss, size);
            sb->servers[sb->nservers].len = (socklen_t)size;
            sb->nservers++;
        }
        free(ss);
    }
    ldns_resolver_deep_free(res);
    if (sb->nservers == 0) {
        set_error(errbuf, errlen, "no nameserver in", path);
        return DMARC_ERR_INVAL;
    }
    return DMARC_OK;
}

dmarc_status dmarc_dns_server_backend(const dmarc_dns_server_options *o, dmarc_dns_backend *out,
                                      char *errbuf, size_t errlen)
{
    dmarc_dns_server_options defaults;
    server_backend *sb;
    dmarc_status st;
    unsigned ms, retries;
    if (out == NULL)
        return DMARC_ERR_INVAL;
    if (o == NULL) {
        dmarc_dns_server_options_init(&defaults);
        o = &defaults;
    }
    sb = calloc(1, sizeof *sb);
    if (sb == NULL)
        return DMARC_ERR_NOMEM;
    if (o->servers != NULL && o->servers[0] != '\0')
        st = add_servers(sb, o->servers, errbuf, errlen);
    else
        st = add_resolv_conf(sb, o->resolv_conf != NULL ? o->resolv_conf : "/etc/resolv.conf",
                             errbuf, errlen);
    if (st != DMARC_OK) {
        free(sb);
        return st;
    }
    ms = o->timeout_ms == 0 ? 2000 : o->timeout_ms;
    retries = o->retries;
    sb->timeout_ms = ms > DMARC_DNS_MAX_TIMEOUT_MS ? DMARC_DNS_MAX_TIMEOUT_MS : ms;
    sb->tries = (retries > DMARC_DNS_MAX_RETRIES ? DMARC_DNS_MAX_RETRIES : retries) + 1;
    sb->tcp_only = o->tcp;
    out->query = server_query;
    out->free = server_free;
    out->impl = sb;
    return DMARC_OK;
}
