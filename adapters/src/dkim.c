/*
** DKIM through libopendkim over the project's DNS layer.
**
** The message is split into header fields (folded lines kept, line ends
** made CRLF as RFC 5322 has them on the wire) and a body (bare LF turned
** into CRLF: files on disk usually lose the CR). Every signature is
** verified up to DMARC_DKIM_MAX_VERIFY: the prescreen callback ignores
** the rest before any key lookup. Keys come from the key lookup callback,
** which asks the DNS layer, so a CNAME-delegated key (a Zendesk-style
** `sel._domainkey.brand CNAME sel.domainkey.saas`) is followed and a
** SERVFAIL or timeout is remembered as temperror for that signature.
*/
#define _DEFAULT_SOURCE /* u_char and friends, used by dkim.h */

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <opendkim/dkim.h>

#include "dmarc_dkim.h"

/* What the key lookup met, per signature verified. */
typedef struct key_note {
    const DKIM_SIGINFO *sig;
    dmarc_rcode rcode;
    const char *problem; /* the DNS layer's word on a SERVFAIL/TIMEOUT, or NULL */
    bool too_long;
} key_note;

struct dmarc_dkim {
    dmarc_dns *dns;
    DKIM_LIB *lib;
    /* Per message. */
    size_t total;
    key_note notes[DMARC_DKIM_MAX_VERIFY];
    size_t nnotes;
};

/* ** {======================================================
** libopendkim callbacks
** ======================================================= */

/* Verify at most DMARC_DKIM_MAX_VERIFY signatures; ignored ones are never
** looked up nor verified (perf.md: the only real saving). */
static DKIM_CBSTAT prescreen(DKIM *dkim, DKIM_SIGINFO **sigs, int nsigs)
{
    dmarc_dkim *k = dkim_get_user_context(dkim);
    int i;
    if (k != NULL)
        k->total = nsigs > 0 ? (size_t)nsigs : 0;
    for (i = DMARC_DKIM_MAX_VERIFY; i < nsigs; i++)
        dkim_sig_ignore(sigs[i]);
    return DKIM_CBSTAT_CONTINUE;
}

static key_note *note_for(dmarc_dkim *k, const DKIM_SIGINFO *sig)
{
    size_t i;
    for (i = 0; i < k->nnotes; i++)
        if (k->notes[i].sig == sig)
            return &k->notes[i];
    if (k->nnotes >= DMARC_DKIM_MAX_VERIFY)
        return NULL;
    k->notes[k->nnotes].sig = sig;
    k->notes[k->nnotes].rcode = DMARC_RCODE_NOERROR;
    k->notes[k->nnotes].problem = NULL;
    k->notes[k->nnotes].too_long = false;
    return &k->notes[k->nnotes++];
}

/* RFC 6376 §3.6.2.2: the key is the TXT record at
** <selector>._domainkey.<domain>; with several, the first is used. */
static DKIM_CBSTAT key_lookup(DKIM *dkim, DKIM_SIGINFO *sig, u_char *buf, size_t buflen)
{
    dmarc_dkim *k = dkim_get_user_context(dkim);
    const char *d = (const char *)dkim_sig_getdomain(sig);
    const char *s = (const char *)dkim_sig_getselector(sig);
    char name[2 * DMARC_DOMAIN_MAX_LEN + 16];
    dmarc_dns_answer *a = NULL;
    key_note *note;
    int n;
    if (k == NULL || d == NULL || s == NULL || buf == NULL || buflen == 0)
        return DKIM_CBSTAT_ERROR;
    note = note_for(k, sig);
    n = snprintf(name, sizeof name, "%s._domainkey.%s", s, d);
    if (n < 0 || (size_t)n >= sizeof name)
        return DKIM_CBSTAT_NOTFOUND;
    if (dmarc_dns_query(k->dns, name, (size_t)n, DMARC_DNS_T_TXT, &a) != DMARC_OK)
        return DKIM_CBSTAT_TRYAGAIN;
    if (note != NULL) {
        note->rcode = a->rcode;
        note->problem = a->problem;
    }
    switch (a->rcode) {
    case DMARC_RCODE_NOERROR:
        break;
    case DMARC_RCODE_NXDOMAIN:
    case DMARC_RCODE_NODATA:
        dmarc_dns_answer_free(a);
        return DKIM_CBSTAT_NOTFOUND;
    default: /* SERVFAIL, TIMEOUT: RFC 6376 §6.1.2 TEMPFAIL */
        dmarc_dns_answer_free(a);
        return DKIM_CBSTAT_TRYAGAIN;
    }
    if (a->rrs[0].len >= buflen) {
        if (note != NULL)
            note->too_long = true;
        dmarc_dns_answer_free(a);
        return DKIM_CBSTAT_ERROR;
    }
    memcpy(buf, a->rrs[0].data, a->rrs[0].len);
    buf[a->rrs[0].len] = '\0';
    dmarc_dns_answer_free(a);
    return DKIM_CBSTAT_CONTINUE;
}

/* }====================================================== */

dmarc_dkim *dmarc_dkim_new(dmarc_dns *dns, dmarc_status *st)
{
    dmarc_dkim *k;
    dmarc_status dummy;
    if (st == NULL)
        st = &dummy;
    if (dns == NULL) {
        *st = DMARC_ERR_INVAL;
        return NULL;
    }
    k = calloc(1, sizeof *k);
    if (k == NULL) {
        *st = DMARC_ERR_NOMEM;
        return NULL;
    }
    k->dns = dns;
    k->lib = dkim_init(NULL, NULL);
    if (k->lib == NULL) {
        free(k);
        *st = DMARC_ERR_NOMEM;
        return NULL;
    }
    if (dkim_set_key_lookup(k->lib, key_lookup) != DKIM_STAT_OK ||
        dkim_set_prescreen(k->lib, prescreen) != DKIM_STAT_OK) {
        dmarc_dkim_free(k);
        *st = DMARC_ERR_INVAL;
        return NULL;
    }
    *st = DMARC_OK;
    return k;
}

void dmarc_dkim_free(dmarc_dkim *k)
{
    if (k == NULL)
        return;
    if (k->lib != NULL)
        dkim_close(k->lib);
    free(k);
}

/* ** {======================================================
** Feeding the message
** ======================================================= */

typedef struct hdrbuf {
    char *p;
    size_t len, cap;
} hdrbuf;

static dmarc_status hdr_append(hdrbuf *h, const char *s, size_t len)
{
    if (h->len + len > DMARC_DKIM_MAX_HEADER_BYTES)
        return DMARC_ERR_LIMIT;
    if (h->len + len + 1 > h->cap) {
        size_t cap = h->cap == 0 ? 1024 : h->cap;
        char *n;
        while (cap < h->len + len + 1)
            cap *= 2;
        n = realloc(h->p, cap);
        if (n == NULL)
            return DMARC_ERR_NOMEM;
        h->p = n;
        h->cap = cap;
    }
    memcpy(h->p + h->len, s, len);
    h->len += len;
    h->p[h->len] = '\0';
    return DMARC_OK;
}

static bool is_from(const char *h, size_t len)
{
    static const char name[] = "from";
    size_t i = 0;
    if (len < sizeof name)
        return false;
    for (i = 0; i < sizeof name - 1; i++) {
        char c = h[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c + 32);
        if (c != name[i])
            return false;
    }
    /* RFC 5322 §3.6.8 allows WSP before the colon in the obsolete syntax. */
    while (i < len && (h[i] == ' ' || h[i] == '\t'))
        i++;
    return i < len && h[i] == ':';
}

/* A field name is one or more printable characters other than the colon
** (RFC 5322 §2.2). */
static bool has_field_name(const char *line, size_t len)
{
    size_t i;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)line[i];
        if (c == ':')
            return i > 0;
        if (c < 33 || c > 126) {
            /* Obsolete syntax: WSP between the name and the colon. */
            size_t j = i;
            while (j < len && (line[j] == ' ' || line[j] == '\t'))
                j++;
            return i > 0 && j < len && line[j] == ':';
        }
    }
    return false;
}

static dmarc_status flush_header(DKIM *d, hdrbuf *h, size_t *count, size_t *froms)
{
    if (h->len == 0)
        return DMARC_OK;
    if (++*count > DMARC_DKIM_MAX_HEADERS)
        return DMARC_ERR_LIMIT;
    if (is_from(h->p, h->len))
        (*froms)++;
    /* A header libopendkim rejects is its business: it is not signed data
    ** any signature could cover. */
    (void)dkim_header(d, (u_char *)h->p, h->len);
    h->len = 0;
    return DMARC_OK;
}

static dmarc_status feed_headers(DKIM *d, const char *msg, size_t len, size_t *body_off,
                                 size_t *froms)
{
    const char *p = msg, *end = msg + len;
    hdrbuf h = {NULL, 0, 0};
    size_t count = 0;
    dmarc_status st = DMARC_OK;
    *froms = 0;
    /* An mbox separator line is not part of the message. */
    if (len >= 5 && memcmp(msg, "From ", 5) == 0) {
        const char *nl = memchr(p, '\n', len);
        p = nl != NULL ? nl + 1 : end;
    }
    *body_off = len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl != NULL ? nl : end;
        const char *next = nl != NULL ? nl + 1 : end;
        size_t l;
        if (eol > p && eol[-1] == '\r')
            eol--;
        l = (size_t)(eol - p);
        if (l == 0) {
            /* RFC 5322 §2.1: an empty line ends the header section. */
            *body_off = (size_t)(next - msg);
            break;
        }
        if (p[0] == ' ' || p[0] == '\t') {
            if (h.len == 0 && count == 0) {
                st = DMARC_ERR_SYNTAX; /* a continuation of nothing */
                break;
            }
            if ((st = hdr_append(&h, "\r\n", 2)) != DMARC_OK ||
                (st = hdr_append(&h, p, l)) != DMARC_OK)
                break;
        } else {
            if ((st = flush_header(d, &h, &count, froms)) != DMARC_OK)
                break;
            if (!has_field_name(p, l)) {
                st = DMARC_ERR_SYNTAX;
                break;
            }
            if ((st = hdr_append(&h, p, l)) != DMARC_OK)
                break;
        }
        p = next;
    }
    if (st == DMARC_OK)
        st = flush_header(d, &h, &count, froms);
    free(h.p);
    if (st == DMARC_OK && count == 0)
        st = DMARC_ERR_SYNTAX; /* no header field at all: not a message */
    return st;
}

/* The body with every bare LF made CRLF, in chunks. */
static dmarc_status feed_body(DKIM *d, const char *body, size_t len)
{
    char chunk[16384];
    size_t i, n = 0;
    char prev = '\0';
    for (i = 0; i < len; i++) {
        char c = body[i];
        if (n + 2 > sizeof chunk) {
            if (dkim_body(d, (u_char *)chunk, n) == DKIM_STAT_NORESOURCE)
                return DMARC_ERR_NOMEM;
            n = 0;
        }
        if (c == '\n' && prev != '\r')
            chunk[n++] = '\r';
        chunk[n++] = c;
        prev = c;
    }
    if (n > 0 && dkim_body(d, (u_char *)chunk, n) == DKIM_STAT_NORESOURCE)
        return DMARC_ERR_NOMEM;
    return DMARC_OK;
}

/* }====================================================== */

/* ** {======================================================
** Results
** ======================================================= */

static void copy_tag(char *dst, size_t dstsz, const unsigned char *src)
{
    size_t i, o = 0;
    if (src == NULL) {
        dst[0] = '\0';
        return;
    }
    for (i = 0; src[i] != '\0' && o + 1 < dstsz; i++) {
        char c = (char)src[i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
            continue;
        dst[o++] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    dst[o] = '\0';
}

/* How many times h= names From (RFC 6376 §5.4: over-signing lists it once
** more than there are From fields). */
static size_t signed_froms(DKIM_SIGINFO *sig)
{
    u_char tag[] = "h";
    const unsigned char *h = dkim_sig_gettagvalue(sig, false, tag);
    size_t n = 0;
    const char *p;
    if (h == NULL)
        return 0;
    p = (const char *)h;
    while (*p != '\0') {
        const char *start, *stop;
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n' || *p == ':')
            p++;
        start = p;
        while (*p != '\0' && *p != ':')
            p++;
        stop = p;
        while (stop > start &&
               (stop[-1] == ' ' || stop[-1] == '\t' || stop[-1] == '\r' || stop[-1] == '\n'))
            stop--;
        if (stop - start == 4 && (start[0] | 32) == 'f' && (start[1] | 32) == 'r' &&
            (start[2] | 32) == 'o' && (start[3] | 32) == 'm')
            n++;
    }
    return n;
}

static const char *alg_name(DKIM_SIGINFO *sig)
{
    dkim_alg_t alg;
    if (dkim_sig_getsignalg(sig, &alg) != DKIM_STAT_OK)
        return "";
    switch (alg) {
    case DKIM_SIGN_RSASHA1:
        return "rsa-sha1";
    case DKIM_SIGN_RSASHA256:
        return "rsa-sha256";
    case DKIM_SIGN_ED25519SHA256:
        return "ed25519-sha256";
    default:
        return "";
    }
}

/* RFC 8601 §2.7.1 words: pass; fail (the signature or body hash did not
** verify, or the signature expired); neutral (the signature could not be
** processed: syntax); temperror (the key could not be fetched now);
** permerror (no usable key, or a signature without a required field). */
static void classify(dmarc_dkim *k, DKIM *d, DKIM_SIGINFO *sig, size_t froms, dmarc_dkim_sig *o)
{
    unsigned flags = dkim_sig_getflags(sig);
    int err = dkim_sig_geterror(sig);
    int bh = dkim_sig_getbh(sig);
    const key_note *note = NULL;
    size_t i;
    unsigned bits = 0;

    copy_tag(o->domain, sizeof o->domain, dkim_sig_getdomain(sig));
    {
        const unsigned char *s = dkim_sig_getselector(sig);
        size_t l = s != NULL ? strlen((const char *)s) : 0;
        if (l >= sizeof o->selector)
            l = sizeof o->selector - 1;
        if (l > 0)
            memcpy(o->selector, s, l);
        o->selector[l] = '\0';
    }
    snprintf(o->algorithm, sizeof o->algorithm, "%s", alg_name(sig));
    {
        u_char tag[] = "b";
        const unsigned char *b = dkim_sig_gettagvalue(sig, false, tag);
        size_t j, n = 0;
        for (j = 0; b != NULL && b[j] != '\0' && n < 8; j++)
            if (b[j] != ' ' && b[j] != '\t' && b[j] != '\r' && b[j] != '\n')
                o->b[n++] = (char)b[j];
        o->b[n] = '\0';
    }
    if ((flags & DKIM_SIGFLAG_IGNORE) != 0) {
        o->result = DMARC_AUTH_NEUTRAL;
        o->verified = false;
        snprintf(o->reason, sizeof o->reason, "not verified: over %d signatures",
                 DMARC_DKIM_MAX_VERIFY);
        return;
    }
    o->verified = true;
    if (dkim_sig_getkeysize(sig, &bits) == DKIM_STAT_OK)
        o->key_bits = bits;
    for (i = 0; i < k->nnotes; i++)
        if (k->notes[i].sig == sig)
            note = &k->notes[i];
    o->unsigned_from = froms > signed_froms(sig);
    {
        ssize_t msglen = 0, canonlen = 0, signlen = -1;
        if (dkim_sig_getcanonlen(d, sig, &msglen, &canonlen, &signlen) == DKIM_STAT_OK &&
            signlen >= 0 && canonlen < msglen)
            o->body_truncated = true;
    }

    if ((flags & DKIM_SIGFLAG_PASSED) != 0 && bh == DKIM_SIGBH_MATCH) {
        o->result = DMARC_AUTH_PASS;
        if (o->body_truncated)
            snprintf(o->reason, sizeof o->reason, "l= leaves part of the body unsigned");
        else if (o->unsigned_from)
            snprintf(o->reason, sizeof o->reason, "a From field is not covered by the signature");
        else
            snprintf(o->reason, sizeof o->reason, "good signature");
        return;
    }
    if (note != NULL &&
        (note->rcode == DMARC_RCODE_SERVFAIL || note->rcode == DMARC_RCODE_TIMEOUT)) {
        o->result = DMARC_AUTH_TEMPERROR;
        /* What went wrong, when the DNS layer knows ("malformed reply"). */
        snprintf(o->reason, sizeof o->reason, "key lookup: %s",
                 note->problem != NULL ? note->problem : dmarc_rcode_name(note->rcode));
        return;
    }
    if (bh == DKIM_SIGBH_MISMATCH) {
        /* The body changed after signing (or l= did not cover it). */
        o->result = DMARC_AUTH_FAIL;
        snprintf(o->reason, sizeof o->reason, "body hash did not verify");
        return;
    }
    switch (err) {
    case DKIM_SIGERROR_KEYFAIL:
        o->result = DMARC_AUTH_TEMPERROR;
        snprintf(o->reason, sizeof o->reason, "key lookup failed");
        return;
    case DKIM_SIGERROR_NOKEY:
        o->result = DMARC_AUTH_PERMERROR;
        snprintf(o->reason, sizeof o->reason, "no key record (%s)",
                 note != NULL ? dmarc_rcode_name(note->rcode) : "not found");
        return;
    case DKIM_SIGERROR_DNSSYNTAX:
    case DKIM_SIGERROR_MULTIREPLY:
    case DKIM_SIGERROR_KEYVERSION:
    case DKIM_SIGERROR_KEYUNKNOWNHASH:
    case DKIM_SIGERROR_KEYHASHMISMATCH:
    case DKIM_SIGERROR_NOTEMAILKEY:
    case DKIM_SIGERROR_KEYTYPEMISSING:
    case DKIM_SIGERROR_KEYTYPEUNKNOWN:
    case DKIM_SIGERROR_KEYREVOKED:
    case DKIM_SIGERROR_KEYDECODE:
    case DKIM_SIGERROR_KEYTOOSMALL:
    case DKIM_SIGERROR_INVALID_H:
    case DKIM_SIGERROR_EMPTY_H:
    case DKIM_SIGERROR_MISSING_H:
        o->result = DMARC_AUTH_PERMERROR;
        break;
    case DKIM_SIGERROR_BADSIG:
    case DKIM_SIGERROR_EXPIRED:
    case DKIM_SIGERROR_FUTURE:
    case DKIM_SIGERROR_TOOLARGE_L:
    case DKIM_SIGERROR_MBSFAILED:
        o->result = DMARC_AUTH_FAIL;
        break;
    case DKIM_SIGERROR_OK:
    case DKIM_SIGERROR_UNKNOWN:
        o->result = DMARC_AUTH_FAIL;
        break;
    default:
        /* Signature syntax: version, tags missing or malformed. */
        o->result = DMARC_AUTH_NEUTRAL;
        break;
    }
    if (note != NULL && note->too_long)
        snprintf(o->reason, sizeof o->reason, "key record too long");
    else {
        const char *why = dkim_sig_geterrorstr(err);
        snprintf(o->reason, sizeof o->reason, "%s", why != NULL ? why : "did not verify");
    }
}

/* }====================================================== */

dmarc_status dmarc_dkim_verify(dmarc_dkim *k, const char *msg, size_t len, dmarc_dkim_result *out)
{
    DKIM *d;
    DKIM_STAT ds;
    DKIM_SIGINFO **sigs = NULL;
    int nsigs = 0, i;
    size_t body_off = 0, froms = 0;
    dmarc_status st;
    if (k == NULL || out == NULL || (msg == NULL && len > 0))
        return DMARC_ERR_INVAL;
    if (msg == NULL) {
        msg = "";
        len = 0;
    }
    k->total = 0;
    k->nnotes = 0;
    d = dkim_verify(k->lib, (const u_char *)"dmarc", NULL, &ds);
    if (d == NULL)
        return DMARC_ERR_NOMEM;
    dkim_set_user_context(d, k);
    st = feed_headers(d, msg, len, &body_off, &froms);
    if (st != DMARC_OK) {
        dkim_free(d);
        return st;
    }
    ds = dkim_eoh(d);
    memset(out, 0, sizeof *out);
    if (ds == DKIM_STAT_NOSIG && k->total == 0) {
        dkim_free(d);
        return DMARC_OK;
    }
    if (ds == DKIM_STAT_NORESOURCE) {
        dkim_free(d);
        return DMARC_ERR_NOMEM;
    }
    st = feed_body(d, msg + body_off, len - body_off);
    if (st != DMARC_OK) {
        dkim_free(d);
        return st;
    }
    /* Per-signature outcomes are read below; eom's summary status is not
    ** what DMARC needs. */
    (void)dkim_eom(d, NULL);
    if (dkim_getsiglist(d, &sigs, &nsigs) == DKIM_STAT_OK && sigs != NULL) {
        out->total = k->total > (size_t)nsigs ? k->total : (size_t)nsigs;
        for (i = 0; i < nsigs && out->count < DMARC_DKIM_MAX_REPORTED; i++)
            classify(k, d, sigs[i], froms, &out->sigs[out->count++]);
    }
    dkim_free(d);
    return DMARC_OK;
}
