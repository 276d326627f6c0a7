/*
** A DNS-server backend for the DNS layer (packets built and parsed by
** libldns, the exchange on its own sockets): a recursive server
** named explicitly (`HOST[:PORT]`, as `--dns-server` gives it, so tests
** can use a real server on loopback) or, when none is named, the
** nameservers of resolv.conf. Timeouts and retries are explicit; the rcode,
** the answer section (CNAME chains followed inside the packet), TTLs and
** the SOA minimum of negative answers are all kept. A reply is used only
** when it comes from the server asked and matches the query's random ID and
** its question (RFC 5452); a truncated reply is asked again over TCP.
*/
#ifndef DMARC_DNS_LDNS_H
#define DMARC_DNS_LDNS_H

#include "dmarc_dns.h"

/* Nameservers used at most (resolv.conf's MAXNS). */
#define DMARC_DNS_MAX_SERVERS 3
/* EDNS0 payload advertised: fits one unfragmented packet on any path
** (DNS flag day 2020), and a 4096-bit RSA DKIM key with room to spare (its
** TXT record is about 760 bytes; with header, question and OPT about 850).
** Larger answers come over TCP on truncation. */
#define DMARC_DNS_EDNS_SIZE 1232
/* Random source ports tried before the kernel picks one (in use, say). */
#define DMARC_DNS_PORT_TRIES 16u
/* Datagrams read per try while waiting for the one that matches: forged
** or stray ones are dropped, up to this many. */
#define DMARC_DNS_MAX_DATAGRAMS 64u
/* Bounds on the per-try timeout (ms) and the retries accepted. */
#define DMARC_DNS_MAX_TIMEOUT_MS 60000u
#define DMARC_DNS_MAX_RETRIES 10u

typedef struct dmarc_dns_server_options {
    const char *servers;     /* "HOST[:PORT]", comma-separated (IPv6 as [ADDR]:PORT);
                                NULL or "": the nameservers of resolv_conf */
    const char *resolv_conf; /* NULL: /etc/resolv.conf */
    unsigned timeout_ms;     /* per try; default 2000 */
    unsigned retries;        /* tries after the first; default 1 */
    bool tcp;                /* TCP only (default: UDP, TCP on truncation) */
} dmarc_dns_server_options;

DMARC_API void dmarc_dns_server_options_init(dmarc_dns_server_options *o);

/*
** dmarc_dns_server_backend: a backend for dmarc_dns_new. On DMARC_OK *out
** is set. On error *out is untouched and @errbuf (optional, @errlen bytes)
** says why: DMARC_ERR_SYNTAX (a server string that does not parse),
** DMARC_ERR_INVAL (no usable nameserver, unreadable resolv.conf),
** DMARC_ERR_NOMEM.
*/
DMARC_API dmarc_status dmarc_dns_server_backend(const dmarc_dns_server_options *o,
                                                dmarc_dns_backend *out, char *errbuf,
                                                size_t errlen);

/*
** dmarc_dns_server_reply: read one reply (@wire, @len bytes, as received)
** to the query with ID @id for (@name, @type) (@name lowercase, no trailing
** dot). It counts only when it is a response with that ID and that one
** question, same name (any case), type and class IN (RFC 5452 §9.1).
** DMARC_OK: *out is the answer (free with dmarc_dns_answer_free), or NULL
** with *truncated set when the reply has TC (ask again over TCP).
** DMARC_ERR_SYNTAX: not a reply to this query, or not a DNS message;
** *problem (a static string) says which. DMARC_ERR_NOMEM, DMARC_ERR_INVAL.
** The backend uses it for every datagram and stream it receives.
*/
DMARC_API dmarc_status dmarc_dns_server_reply(const uint8_t *wire, size_t len, uint16_t id,
                                              const char *name, unsigned type,
                                              dmarc_dns_answer **out, bool *truncated,
                                              const char **problem);

#endif /* DMARC_DNS_LDNS_H */
