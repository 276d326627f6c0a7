/*
** SPF through libspf2 over the project's DNS layer.
**
** libspf2 is used for what it does well (compiling records, expanding
** macros, matching mechanisms). Around it, a custom SPF_dns_server_t layer
** owns every DNS question:
** - record retrieval (the layer's get_spf hook): TXT only (the SPF RR type
**   is obsolete, RFC 7208 §3.1), exactly one "v=spf1" record (§4.5), the
**   RFC 8601 result for a missing or duplicate record;
** - the §4.6.4 limits, counted over the whole evaluation (libspf2 counts
**   per include level and only after the fact): the 11th DNS-querying term
**   or the 3rd void lookup aborts the evaluation with permerror;
** - the exp= explanation is not fetched (the get_exp hook): no DNS query
**   is spent on text nobody here shows.
** The evaluation driver replaces SPF_request_query_mailfrom so that no
** client address gets a free pass (libspf2 passes loopback addresses
** without looking), and so that the top-level record outcome is known.
**
** An offline checker (dmarc_spf_new_offline) puts an answer table behind
** the same layer, as a DNS backend: libspf2 asks as it goes, and a question
** the table cannot answer is recorded and stops the evaluation (the layer
** answers every further question TRY_AGAIN so that libspf2 unwinds). The
** caller fetches the questions with its own resolver and checks again.
*/
#define _DEFAULT_SOURCE /* netdb.h h_errno codes and arpa/nameser.h types */

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <spf2/spf.h>
#include <spf2/spf_dns.h>

#include "dmarc_spf.h"

/* Why an evaluation was stopped from the DNS layer. */
typedef enum abort_reason { ABORT_NONE, ABORT_TERMS, ABORT_VOIDS, ABORT_PENDING } abort_reason;

/* Outcome of fetching the record of the identity domain itself. */
typedef enum top_status { TOP_FOUND, TOP_NONE, TOP_TEMPERROR, TOP_PERMERROR } top_status;

/* One answer of an offline table. */
typedef struct table_answer {
    unsigned type;
    char name[DMARC_DOMAIN_MAX_LEN + 1];
    dmarc_dns_answer *answer;
} table_answer;

struct dmarc_spf {
    dmarc_dns *dns;
    bool owns_dns; /* offline: the layer over the answer table is ours */
    SPF_server_t *server;
    SPF_dns_server_t *layer;
    /* Offline: the answer table, the questions it could not answer. */
    table_answer *answers; /* DMARC_SPF_MAX_ANSWERS slots, made on first use */
    size_t nanswers;
    dmarc_spf_question questions[DMARC_SPF_MAX_QUESTIONS];
    size_t nquestions;
    bool missed;        /* the query under way was not in the table */
    unsigned addr_type; /* A or AAAA: what libspf2 asks for this client */
    /* Per evaluation. */
    unsigned terms, voids, fetches;
    abort_reason aborted;
    top_status top;
    char top_reason[256];
    /* The identity domain's own record as fetched (its TXT strings joined,
    ** RFC 7208 §3.3), for the reports that quote it (RFC 6591 §3.2); NULL
    ** when there was not exactly one. Bounded by the DNS layer's answer size. */
    char *top_record;
    /* Names an mx or ptr term just returned: their address lookups belong
    ** to that term and are not terms themselves (§4.6.4). */
    char secondary[DMARC_SPF_MAX_MX_NAMES][DMARC_DOMAIN_MAX_LEN + 1];
    bool secondary_used[DMARC_SPF_MAX_MX_NAMES];
    size_t nsecondary;
};

/* libspf2 logs through process-wide handlers; an engine embedded in a
** scanner must not print, so the informational ones are silenced. */
static void quiet_handler(const char *file, int line, const char *msg)
{
    (void)file;
    (void)line;
    (void)msg;
}

static SPF_dns_rr_t *rr_status(SPF_dns_server_t *layer, const char *domain, ns_type type,
                               SPF_dns_stat_t herrno)
{
    return SPF_dns_rr_new_init(layer, domain, type, 0, herrno);
}

static bool is_secondary(dmarc_spf *s, const char *name)
{
    char norm[DMARC_DOMAIN_MAX_LEN + 1];
    size_t len, i;
    if (dmarc_dns_name_normalize(name, strlen(name), norm, &len) != DMARC_OK)
        return false;
    for (i = 0; i < s->nsecondary; i++) {
        if (!s->secondary_used[i] && strcmp(s->secondary[i], norm) == 0) {
            /* Consumed once: a later a:name term for the same host counts. */
            s->secondary_used[i] = true;
            return true;
        }
    }
    return false;
}

static void remember_secondary(dmarc_spf *s, const dmarc_dns_answer *a)
{
    size_t i;
    s->nsecondary = 0;
    for (i = 0; i < a->count && s->nsecondary < DMARC_SPF_MAX_MX_NAMES; i++) {
        size_t len = a->rrs[i].len;
        if (len > DMARC_DOMAIN_MAX_LEN)
            continue;
        memcpy(s->secondary[s->nsecondary], a->rrs[i].data, len);
        s->secondary[s->nsecondary][len] = '\0';
        s->secondary_used[s->nsecondary] = false;
        s->nsecondary++;
    }
}

/* Count a DNS-querying term; false when it is one too many (§4.6.4). */
static bool count_term(dmarc_spf *s)
{
    if (++s->terms > DMARC_SPF_MAX_DNS_TERMS) {
        s->aborted = ABORT_TERMS;
        return false;
    }
    return true;
}

/* Count a void answer to a term; false on the one past the limit. */
static bool count_void(dmarc_spf *s, dmarc_rcode rc)
{
    if (rc != DMARC_RCODE_NXDOMAIN && rc != DMARC_RCODE_NODATA)
        return true;
    if (++s->voids > DMARC_SPF_MAX_VOID_LOOKUPS) {
        s->aborted = ABORT_VOIDS;
        return false;
    }
    return true;
}

/* ** {======================================================
** The offline answer table, a DNS backend
** ======================================================= */

static const dmarc_allocator libc_alloc = {NULL, NULL};

static table_answer *table_find(dmarc_spf *s, const char *name, unsigned type)
{
    size_t i;
    for (i = 0; i < s->nanswers; i++)
        if (s->answers[i].type == type && strcmp(s->answers[i].name, name) == 0)
            return &s->answers[i];
    return NULL;
}

/* Record a question for the caller, once; beyond DMARC_SPF_MAX_QUESTIONS it
** waits for a later round. */
static void table_ask(dmarc_spf *s, const char *name, unsigned type)
{
    size_t i, len = strlen(name);
    if (len > DMARC_DOMAIN_MAX_LEN)
        return;
    for (i = 0; i < s->nquestions; i++)
        if (s->questions[i].type == type && strcmp(s->questions[i].name, name) == 0)
            return;
    if (s->nquestions >= DMARC_SPF_MAX_QUESTIONS)
        return;
    s->questions[s->nquestions].type = type;
    memcpy(s->questions[s->nquestions].name, name, len + 1);
    s->nquestions++;
}

/* The backend's query: a copy of the table's answer, or the question is
** recorded and a stand-in SERVFAIL returned (the layer stops the
** evaluation before libspf2 sees it). @name is normalised by the layer. */
static dmarc_status table_query(void *impl, const char *name, unsigned type, dmarc_dns_answer **out)
{
    dmarc_spf *s = impl;
    table_answer *t = table_find(s, name, type);
    dmarc_dns_builder b;
    if (t != NULL) {
        *out = dmarc_dns_answer_dup(&libc_alloc, t->answer);
        return *out != NULL ? DMARC_OK : DMARC_ERR_NOMEM;
    }
    table_ask(s, name, type);
    s->missed = true;
    dmarc_dns_builder_init(&b, &libc_alloc, name, strlen(name));
    *out = dmarc_dns_builder_finish(&b, DMARC_RCODE_SERVFAIL);
    return *out != NULL ? DMARC_OK : DMARC_ERR_NOMEM;
}

/* The table belongs to the checker, which frees it itself. */
static void table_backend_free(void *impl)
{
    (void)impl;
}

/* Offline: the addresses of an mx or ptr term's names are asked for in the
** same round as the first one the evaluation needs (they are looked up one
** by one, and each would otherwise cost a round of its own). */
static void table_ask_addresses(dmarc_spf *s)
{
    size_t i;
    for (i = 0; i < s->nsecondary; i++)
        if (table_find(s, s->secondary[i], s->addr_type) == NULL)
            table_ask(s, s->secondary[i], s->addr_type);
}

/* }====================================================== */

/* A question through the DNS layer; offline, a question the table does not
** have stops the evaluation (DMARC_ERR_STATE, nothing in *a). */
static dmarc_status ask(dmarc_spf *s, const char *domain, unsigned type, dmarc_dns_answer **a)
{
    dmarc_status st;
    s->missed = false;
    st = dmarc_dns_query(s->dns, domain, strlen(domain), type, a);
    if (st == DMARC_OK && s->missed) {
        dmarc_dns_answer_free(*a);
        *a = NULL;
        s->aborted = ABORT_PENDING;
        return DMARC_ERR_STATE;
    }
    return st;
}

static SPF_dns_rr_t *layer_lookup(SPF_dns_server_t *layer, const char *domain, ns_type type,
                                  int should_cache)
{
    dmarc_spf *s = layer->hook;
    dmarc_dns_answer *a = NULL;
    SPF_dns_rr_t *rr;
    bool term;
    size_t i;
    int n = 0;
    (void)should_cache; /* the DNS layer caches by TTL, always */

    /* RFC 7208 §3.1/§14.1: the SPF RR type is obsolete and never asked. */
    if (type == ns_t_spf)
        return rr_status(layer, domain, type, NO_DATA);
    /* Once aborted, every further question fails fast so that libspf2
    ** unwinds; the result is rewritten afterwards. */
    if (s->aborted != ABORT_NONE)
        return rr_status(layer, domain, type, TRY_AGAIN);
    term = !((type == ns_t_a || type == ns_t_aaaa) && is_secondary(s, domain));
    if (term && !count_term(s))
        return rr_status(layer, domain, type, TRY_AGAIN);
    if (ask(s, domain, (unsigned)type, &a) != DMARC_OK)
        return rr_status(layer, domain, type, TRY_AGAIN);
    if (term && !count_void(s, a->rcode)) {
        dmarc_dns_answer_free(a);
        return rr_status(layer, domain, type, TRY_AGAIN);
    }
    switch (a->rcode) {
    case DMARC_RCODE_NOERROR:
        break;
    case DMARC_RCODE_NODATA:
        dmarc_dns_answer_free(a);
        return rr_status(layer, domain, type, NO_DATA);
    case DMARC_RCODE_NXDOMAIN:
        dmarc_dns_answer_free(a);
        return rr_status(layer, domain, type, HOST_NOT_FOUND);
    default: /* SERVFAIL, TIMEOUT: temperror (§4.4, §5) */
        dmarc_dns_answer_free(a);
        return rr_status(layer, domain, type, TRY_AGAIN);
    }
    if (type == ns_t_mx || type == ns_t_ptr) {
        remember_secondary(s, a);
        if (s->owns_dns)
            table_ask_addresses(s);
    }
    rr = SPF_dns_rr_new_init(layer, domain, type, (int)a->ttl, NETDB_SUCCESS);
    if (rr == NULL) {
        dmarc_dns_answer_free(a);
        return NULL;
    }
    for (i = 0; i < a->count; i++) {
        const dmarc_dns_rr *r = &a->rrs[i];
        if (r->type != (unsigned)type)
            continue;
        if (type == ns_t_a || type == ns_t_aaaa) {
            size_t want = type == ns_t_a ? sizeof(struct in_addr) : sizeof(struct in6_addr);
            if (r->len != want || SPF_dns_rr_buf_realloc(rr, n, want) != SPF_E_SUCCESS)
                continue;
            memcpy(type == ns_t_a ? (void *)&rr->rr[n]->a : (void *)&rr->rr[n]->aaaa, r->data,
                   want);
        } else {
            /* TXT (strings concatenated [REC-1]), MX and PTR names, as C
            ** strings; a NUL inside TXT data ends it, as in libspf2's own
            ** resolver. */
            if (SPF_dns_rr_buf_realloc(rr, n, r->len + 1) != SPF_E_SUCCESS)
                continue;
            memcpy(rr->rr[n]->txt, r->data, r->len);
            rr->rr[n]->txt[r->len] = '\0';
        }
        n++;
    }
    rr->num_rr = n;
    if (n == 0)
        rr->herrno = NO_DATA;
    dmarc_dns_answer_free(a);
    return rr;
}

/* RFC 7208 §4.5: a record starts "v=spf1" followed by a space or the end
** (case-insensitive). */
static bool is_spf_record(const char *txt, size_t len)
{
    static const char tag[] = "v=spf1";
    size_t i;
    if (len < sizeof tag - 1)
        return false;
    for (i = 0; i < sizeof tag - 1; i++) {
        char c = txt[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c + 32);
        if (c != tag[i])
            return false;
    }
    return len == sizeof tag - 1 || txt[sizeof tag - 1] == ' ';
}

static SPF_errcode_t layer_get_spf(SPF_server_t *server, SPF_request_t *req, SPF_response_t *resp,
                                   SPF_record_t **recordp)
{
    dmarc_spf *s = server->resolver->hook;
    const char *domain = req->cur_dom;
    bool first = s->fetches++ == 0;
    dmarc_dns_answer *a = NULL;
    size_t i, found = 0, idx = 0;
    SPF_errcode_t err;
    char *text;

    *recordp = NULL;
    if (domain == NULL)
        return SPF_response_add_error(resp, SPF_E_NOT_CONFIG, "no domain to check");
    if (s->aborted != ABORT_NONE)
        return SPF_response_add_error(resp, SPF_E_DNS_ERROR, "evaluation stopped");
    /* The identity's own record is not a term; include and redirect are. */
    if (!first && !count_term(s))
        return SPF_response_add_error(resp, SPF_E_DNS_ERROR, "too many DNS-querying terms");
    if (ask(s, domain, DMARC_DNS_T_TXT, &a) != DMARC_OK) {
        if (first) {
            s->top = TOP_TEMPERROR;
            snprintf(s->top_reason, sizeof s->top_reason, "%s",
                     s->aborted == ABORT_PENDING ? "DNS answers needed" : "out of memory");
        }
        return SPF_response_add_error(resp, SPF_E_DNS_ERROR, "lookup failed");
    }
    if (!first && !count_void(s, a->rcode)) {
        dmarc_dns_answer_free(a);
        return SPF_response_add_error(resp, SPF_E_DNS_ERROR, "too many void lookups");
    }
    if (a->rcode == DMARC_RCODE_SERVFAIL || a->rcode == DMARC_RCODE_TIMEOUT) {
        if (first) {
            s->top = TOP_TEMPERROR;
            snprintf(s->top_reason, sizeof s->top_reason, "DNS %s for %.120s",
                     dmarc_rcode_name(a->rcode), domain);
        }
        dmarc_dns_answer_free(a);
        /* SPF_E_DNS_ERROR: libspf2 makes an include of it a temperror. */
        return SPF_response_add_error(resp, SPF_E_DNS_ERROR, "temporary DNS failure");
    }
    for (i = 0; i < a->count; i++) {
        if (is_spf_record(a->rrs[i].data, a->rrs[i].len)) {
            found++;
            idx = i;
        }
    }
    if (found != 1) {
        if (first) {
            s->top = found == 0 ? TOP_NONE : TOP_PERMERROR;
            if (found == 0)
                snprintf(s->top_reason, sizeof s->top_reason, "no SPF record at %.120s%s", domain,
                         a->rcode == DMARC_RCODE_NXDOMAIN ? " (no such domain)" : "");
            else
                snprintf(s->top_reason, sizeof s->top_reason,
                         "%zu SPF records at %.120s (RFC 7208 §4.5)", found, domain);
        }
        dmarc_dns_answer_free(a);
        /* For include and redirect both are permerror (§5.2, §6.1). */
        return SPF_response_add_error(resp, found == 0 ? SPF_E_NOT_SPF : SPF_E_MULTIPLE_RECORDS,
                                      "no single SPF record");
    }
    text = malloc(a->rrs[idx].len + 1);
    if (text == NULL) {
        dmarc_dns_answer_free(a);
        return SPF_response_add_error(resp, SPF_E_NO_MEMORY, "out of memory");
    }
    memcpy(text, a->rrs[idx].data, a->rrs[idx].len);
    text[a->rrs[idx].len] = '\0';
    dmarc_dns_answer_free(a);
    err = SPF_record_compile(server, resp, recordp, text);
    if (first) {
        free(s->top_record);
        s->top_record = text; /* kept whether or not it compiles: a permerror quotes it too */
    } else {
        free(text);
    }
    if (err != SPF_E_SUCCESS) {
        if (first) {
            s->top = TOP_PERMERROR;
            snprintf(s->top_reason, sizeof s->top_reason, "SPF record of %.100s: %s", domain,
                     SPF_strerror(err));
        }
        if (*recordp != NULL) {
            SPF_record_free(*recordp);
            *recordp = NULL;
        }
        /* Not SPF_E_DNS_ERROR, so an include of a broken record is a
        ** permerror (§5.2). */
        return err == SPF_E_DNS_ERROR ? SPF_E_SYNTAX : err;
    }
    if (first)
        s->top = TOP_FOUND;
    return SPF_E_SUCCESS;
}

static SPF_errcode_t layer_get_exp(SPF_server_t *server, const char *domain, char **buf,
                                   size_t *buflen)
{
    static const char text[] = "SPF check failed";
    (void)server;
    (void)domain;
    if (*buflen < sizeof text) {
        char *n = realloc(*buf, sizeof text);
        if (n == NULL)
            return SPF_E_NO_MEMORY;
        *buf = n;
        *buflen = sizeof text;
    }
    memcpy(*buf, text, sizeof text);
    return SPF_E_SUCCESS;
}

/* A checker over @dns (NULL: offline, over its own answer table). */
static dmarc_spf *spf_new(dmarc_dns *dns, const char *receiver, dmarc_status *st)
{
    dmarc_spf *s;
    s = calloc(1, sizeof *s);
    if (s == NULL) {
        *st = DMARC_ERR_NOMEM;
        return NULL;
    }
    s->dns = dns;
    if (dns == NULL) {
        dmarc_dns_options o;
        dmarc_dns_backend be;
        dmarc_dns_options_init(&o);
        o.cache_entries = 0; /* the table is the only memory */
        be.query = table_query;
        be.free = table_backend_free;
        be.impl = s;
        s->dns = dmarc_dns_new(&o, be, st);
        if (s->dns == NULL) {
            free(s);
            return NULL;
        }
        s->owns_dns = true;
    }
    s->layer = calloc(1, sizeof *s->layer);
    if (s->layer == NULL) {
        dmarc_spf_free(s);
        *st = DMARC_ERR_NOMEM;
        return NULL;
    }
    /* No destructor: the layer belongs to this checker, which frees it after
    ** the server (libspf2 versions differ on whether the server frees it). */
    s->layer->destroy = NULL;
    s->layer->lookup = layer_lookup;
    s->layer->get_spf = layer_get_spf;
    s->layer->get_exp = layer_get_exp;
    s->layer->add_cache = NULL;
    s->layer->layer_below = NULL;
    s->layer->name = "dmarc";
    s->layer->debug = 0;
    s->layer->hook = s;
    SPF_info_handler = quiet_handler;
    SPF_warning_handler = quiet_handler;
    SPF_debug_handler = quiet_handler;
    s->server = SPF_server_new_dns(s->layer, 0);
    if (s->server == NULL) {
        dmarc_spf_free(s);
        *st = DMARC_ERR_NOMEM;
        return NULL;
    }
    /* libspf2's own per-level checks, set to the RFC values explicitly
    ** (§4.6.4); the layer enforces the global count before they trigger. */
    SPF_server_set_max_dns_mech(s->server, DMARC_SPF_MAX_DNS_TERMS);
    SPF_server_set_max_dns_mx(s->server, DMARC_SPF_MAX_MX_NAMES);
    SPF_server_set_max_dns_ptr(s->server, DMARC_SPF_MAX_PTR_NAMES);
    if (SPF_server_set_rec_dom(s->server, receiver != NULL ? receiver : "unknown") !=
        SPF_E_SUCCESS) {
        dmarc_spf_free(s);
        *st = DMARC_ERR_NOMEM;
        return NULL;
    }
    *st = DMARC_OK;
    return s;
}

dmarc_spf *dmarc_spf_new(dmarc_dns *dns, const char *receiver, dmarc_status *st)
{
    dmarc_status dummy;
    if (st == NULL)
        st = &dummy;
    if (dns == NULL) {
        *st = DMARC_ERR_INVAL;
        return NULL;
    }
    return spf_new(dns, receiver, st);
}

dmarc_spf *dmarc_spf_new_offline(const char *receiver, dmarc_status *st)
{
    dmarc_status dummy;
    return spf_new(NULL, receiver, st != NULL ? st : &dummy);
}

void dmarc_spf_free(dmarc_spf *s)
{
    if (s == NULL)
        return;
    if (s->server != NULL)
        SPF_server_free(s->server);
    free(s->layer);
    free(s->top_record);
    dmarc_spf_clear_answers(s);
    free(s->answers);
    if (s->owns_dns)
        dmarc_dns_free(s->dns);
    free(s);
}

dmarc_status dmarc_spf_add_answer(dmarc_spf *s, const char *name, size_t len, unsigned type,
                                  dmarc_rcode rcode, const dmarc_dns_rr *rrs, size_t count)
{
    char norm[DMARC_DOMAIN_MAX_LEN + 1];
    size_t nlen, i;
    dmarc_dns_builder b;
    dmarc_dns_answer *a;
    table_answer *t;

    if (s == NULL || !s->owns_dns || name == NULL || (count > 0 && rrs == NULL) || (int)rcode < 0 ||
        rcode >= DMARC_RCODE__COUNT || type == 0 || type > 0xffff)
        return DMARC_ERR_INVAL;
    if (dmarc_dns_name_normalize(name, len, norm, &nlen) != DMARC_OK)
        return DMARC_ERR_SYNTAX;
    t = table_find(s, norm, type);
    if (t == NULL) {
        if (s->nanswers >= DMARC_SPF_MAX_ANSWERS)
            return DMARC_ERR_LIMIT;
        if (s->answers == NULL) {
            s->answers = calloc(DMARC_SPF_MAX_ANSWERS, sizeof *s->answers);
            if (s->answers == NULL)
                return DMARC_ERR_NOMEM;
        }
    }
    dmarc_dns_builder_init(&b, &libc_alloc, norm, nlen);
    for (i = 0; rcode == DMARC_RCODE_NOERROR && i < count; i++) {
        /* Over DMARC_DNS_MAX_RRS the builder drops RRs, as a resolver would. */
        if (dmarc_dns_builder_add(&b, type, rrs[i].ttl, rrs[i].pref, rrs[i].data, rrs[i].len) ==
            DMARC_ERR_NOMEM) {
            dmarc_dns_builder_discard(&b);
            return DMARC_ERR_NOMEM;
        }
    }
    a = dmarc_dns_builder_finish(&b, rcode);
    if (a == NULL)
        return DMARC_ERR_NOMEM;
    if (t == NULL) {
        t = &s->answers[s->nanswers++];
        t->type = type;
        memcpy(t->name, norm, nlen + 1);
    } else {
        dmarc_dns_answer_free(t->answer);
    }
    t->answer = a;
    return DMARC_OK;
}

void dmarc_spf_clear_answers(dmarc_spf *s)
{
    size_t i;
    if (s == NULL)
        return;
    for (i = 0; i < s->nanswers; i++)
        dmarc_dns_answer_free(s->answers[i].answer);
    s->nanswers = 0;
    s->nquestions = 0;
}

const char *dmarc_spf_record(const dmarc_spf *s)
{
    return s != NULL ? s->top_record : NULL;
}

size_t dmarc_spf_question_count(const dmarc_spf *s)
{
    return s != NULL ? s->nquestions : 0;
}

const dmarc_spf_question *dmarc_spf_question_at(const dmarc_spf *s, size_t i)
{
    if (s == NULL || i >= s->nquestions)
        return NULL;
    return &s->questions[i];
}

static dmarc_auth map_result(SPF_result_t r)
{
    switch (r) {
    case SPF_RESULT_PASS:
        return DMARC_AUTH_PASS;
    case SPF_RESULT_FAIL:
        return DMARC_AUTH_FAIL;
    case SPF_RESULT_SOFTFAIL:
        return DMARC_AUTH_SOFTFAIL;
    case SPF_RESULT_NEUTRAL:
        return DMARC_AUTH_NEUTRAL;
    case SPF_RESULT_NONE:
        return DMARC_AUTH_NONE;
    case SPF_RESULT_TEMPERROR:
        return DMARC_AUTH_TEMPERROR;
    case SPF_RESULT_PERMERROR:
    case SPF_RESULT_INVALID:
    default:
        return DMARC_AUTH_PERMERROR;
    }
}

/* The domain part of a MAIL FROM address; "" for the null reverse-path. */
static void mailfrom_domain(const char *mf, char *out, size_t outsz)
{
    const char *at, *end;
    size_t len;
    out[0] = '\0';
    if (mf == NULL)
        return;
    while (*mf == ' ' || *mf == '<')
        mf++;
    end = mf + strlen(mf);
    while (end > mf && (end[-1] == ' ' || end[-1] == '>'))
        end--;
    if (end == mf)
        return;
    at = NULL;
    {
        const char *p;
        for (p = mf; p < end; p++)
            if (*p == '@')
                at = p;
    }
    if (at != NULL)
        mf = at + 1;
    len = (size_t)(end - mf);
    if (len >= outsz)
        len = outsz - 1;
    memcpy(out, mf, len);
    out[len] = '\0';
}

/* RFC 7208 §4.3: a malformed or single-label domain gives "none". */
static bool usable_domain(const char *in, char *out)
{
    size_t len;
    if (dmarc_dns_name_normalize(in, strlen(in), out, &len) != DMARC_OK)
        return false;
    return memchr(out, '.', len) != NULL;
}

dmarc_status dmarc_spf_check(dmarc_spf *s, const char *ip, const char *helo, const char *mail_from,
                             bool helo_identity, dmarc_spf_result *out)
{
    SPF_request_t *req;
    SPF_response_t *resp = NULL;
    SPF_record_t *rec = NULL;
    SPF_errcode_t err;
    struct in_addr v4;
    struct in6_addr v6;
    char mfdom[DMARC_DOMAIN_MAX_LEN + 2];
    char domain[DMARC_DOMAIN_MAX_LEN + 1];
    const char *identity;
    bool use_helo;

    if (s == NULL || ip == NULL || out == NULL)
        return DMARC_ERR_INVAL;
    /* A bad address is the caller's error, whatever the identity is. */
    if (inet_pton(AF_INET, ip, &v4) != 1 && inet_pton(AF_INET6, ip, &v6) != 1)
        return DMARC_ERR_INVAL;
    memset(out, 0, sizeof *out);
    free(s->top_record);
    s->top_record = NULL;
    mailfrom_domain(helo_identity ? NULL : mail_from, mfdom, sizeof mfdom);
    /* [ALN-1], RFC 7208 §2.4: a null reverse-path checks postmaster@HELO. */
    use_helo = helo_identity || mfdom[0] == '\0';
    identity = use_helo ? (helo != NULL ? helo : "") : mfdom;
    out->is_helo = use_helo;
    if (!usable_domain(identity, domain)) {
        out->result = DMARC_AUTH_NONE;
        snprintf(out->reason, sizeof out->reason, "no usable %s domain (RFC 7208 §4.3)",
                 use_helo ? "HELO" : "MAIL FROM");
        {
            size_t l = strlen(identity);
            if (l > DMARC_DOMAIN_MAX_LEN)
                l = DMARC_DOMAIN_MAX_LEN;
            memcpy(out->domain, identity, l);
            out->domain[l] = '\0';
        }
        return DMARC_OK;
    }
    memcpy(out->domain, domain, strlen(domain) + 1);

    req = SPF_request_new(s->server);
    if (req == NULL)
        return DMARC_ERR_NOMEM;
    s->addr_type = DMARC_DNS_T_A;
    if (inet_pton(AF_INET, ip, &v4) == 1) {
        err = SPF_request_set_ipv4(req, v4);
    } else if (inet_pton(AF_INET6, ip, &v6) == 1) {
        if (IN6_IS_ADDR_V4MAPPED(&v6)) {
            /* RFC 7208 §5: an IPv4-mapped address is checked as IPv4. */
            memcpy(&v4, &v6.s6_addr[12], 4);
            err = SPF_request_set_ipv4(req, v4);
        } else {
            err = SPF_request_set_ipv6(req, v6);
            s->addr_type = DMARC_DNS_T_AAAA;
        }
    } else {
        SPF_request_free(req);
        return DMARC_ERR_INVAL;
    }
    if (err == SPF_E_SUCCESS && helo != NULL && helo[0] != '\0')
        err = SPF_request_set_helo_dom(req, helo);
    if (err == SPF_E_SUCCESS) {
        if (use_helo) {
            /* %{s} is postmaster@<HELO> (RFC 7208 §2.3, §2.4). */
            char sender[DMARC_DOMAIN_MAX_LEN + 16];
            snprintf(sender, sizeof sender, "postmaster@%s", domain);
            err = SPF_request_set_env_from(req, sender);
        } else {
            err = SPF_request_set_env_from(req, mail_from);
        }
    }
    if (err != SPF_E_SUCCESS) {
        SPF_request_free(req);
        return DMARC_ERR_NOMEM;
    }
    req->use_helo = use_helo;
    req->cur_dom = use_helo ? req->helo_dom : req->env_from_dp;
    if (req->cur_dom == NULL) {
        SPF_request_free(req);
        return DMARC_ERR_INVAL;
    }

    s->terms = s->voids = s->fetches = 0;
    s->aborted = ABORT_NONE;
    s->top = TOP_FOUND;
    s->top_reason[0] = '\0';
    s->nsecondary = 0;
    s->nquestions = 0;

    resp = SPF_response_new(req);
    if (resp == NULL) {
        SPF_request_free(req);
        return DMARC_ERR_NOMEM;
    }
    err = SPF_server_get_record(s->server, req, resp, &rec);
    if (err == SPF_E_SUCCESS && rec != NULL) {
        resp->spf_record_exp = rec;
        SPF_record_interpret(rec, req, resp, 0);
        SPF_record_free(rec);
        out->result = map_result(SPF_response_result(resp));
        if (out->result == DMARC_AUTH_PERMERROR || out->result == DMARC_AUTH_TEMPERROR)
            snprintf(out->reason, sizeof out->reason, "%s",
                     SPF_strerror(SPF_response_errcode(resp)));
        else if (SPF_response_get_header_comment(resp) != NULL) {
            /* libspf2 starts its comment with "<receiver>: ". */
            const char *c = SPF_response_get_header_comment(resp);
            const char *sep = strstr(c, ": ");
            snprintf(out->reason, sizeof out->reason, "%s", sep != NULL ? sep + 2 : c);
        }
    } else {
        if (rec != NULL)
            SPF_record_free(rec);
        switch (s->top) {
        case TOP_NONE:
            out->result = DMARC_AUTH_NONE;
            break;
        case TOP_TEMPERROR:
            out->result = DMARC_AUTH_TEMPERROR;
            break;
        default:
            out->result = DMARC_AUTH_PERMERROR;
            break;
        }
        snprintf(out->reason, sizeof out->reason, "%s",
                 s->top_reason[0] != '\0' ? s->top_reason : SPF_strerror(err));
    }
    /* §4.6.4: going over a limit is permerror, whatever libspf2 made of
    ** the aborted evaluation. Stopped for answers: nothing is final. */
    if (s->aborted == ABORT_PENDING) {
        out->result = DMARC_AUTH_TEMPERROR;
        out->pending = true;
        snprintf(out->reason, sizeof out->reason, "%zu DNS answers needed", s->nquestions);
    } else if (s->aborted == ABORT_TERMS) {
        out->result = DMARC_AUTH_PERMERROR;
        snprintf(out->reason, sizeof out->reason,
                 "more than %d DNS-querying terms (RFC 7208 §4.6.4)", DMARC_SPF_MAX_DNS_TERMS);
    } else if (s->aborted == ABORT_VOIDS) {
        out->result = DMARC_AUTH_PERMERROR;
        snprintf(out->reason, sizeof out->reason, "more than %d void lookups (RFC 7208 §4.6.4)",
                 DMARC_SPF_MAX_VOID_LOOKUPS);
    }
    out->dns_terms = s->terms > DMARC_SPF_MAX_DNS_TERMS ? DMARC_SPF_MAX_DNS_TERMS + 1 : s->terms;
    out->void_lookups = s->voids;
    SPF_response_free(resp);
    SPF_request_free(req);
    return DMARC_OK;
}
