/*
** Lookups, the RFC 9989 DNS tree walk, Org Domains and policy discovery.
*/
#include <string.h>

#include "eval.h"

/* ** {======================================================
** Lookups: memo, then cache, then the caller
** ======================================================= */

static dmarc__dns outcome_of(const dmarc__answer *ans)
{
    switch (ans->rcode) {
    case DMARC_RCODE_NOERROR:
        return DMARC__DNS_DATA;
    case DMARC_RCODE_NODATA:
        return DMARC__DNS_NODATA;
    case DMARC_RCODE_NXDOMAIN:
        return DMARC__DNS_NXDOMAIN;
    case DMARC_RCODE_SERVFAIL:
    case DMARC_RCODE_TIMEOUT:
    case DMARC_RCODE__COUNT:
        break;
    }
    return DMARC__DNS_ERROR;
}

dmarc_status dmarc__lookup(dmarc_eval *e, dmarc_qtype type, const char *name, size_t len,
                           dmarc__dns *out, dmarc__answer **ansp)
{
    dmarc__answer *ans = NULL;
    uint32_t h;
    size_t i;

    *ansp = NULL;
    /* RFC 1035 §2.3.4: a longer name cannot exist, so nothing is there;
    ** asking would only earn a resolver error. */
    if (len > DMARC__DNS_NAME_MAX) {
        *out = DMARC__DNS_NXDOMAIN;
        return DMARC_OK;
    }
    h = dmarc__qhash(type, name, len);
    /* Within one evaluation no question is asked twice, and every answer
    ** stays the one first seen (the memo holds a reference). */
    for (i = 0; i < e->nmemo; i++) {
        const dmarc__answer *m = e->memo[i];
        if (e->memo_hash[i] == h && m->type == type && m->name_len == len &&
            memcmp(m->name, name, len) == 0) {
            ans = e->memo[i];
            if (i + 1 > e->memo_used)
                e->memo_used = i + 1;
            break;
        }
    }
    if (ans == NULL) {
        /* DMARC_EVAL_MAX_QUERIES bounds every lookup, cached or not, so the
        ** verdict never depends on what the cache happened to hold. The
        ** failed lookup counts as a DNS error: never a pass [DISC-10]. */
        if (e->nmemo >= DMARC_EVAL_MAX_QUERIES) {
            if (!(e->flags & DMARC_FLAG_QUERY_LIMIT))
                e->limit_domain = e->ndone;
            e->flags |= DMARC_FLAG_QUERY_LIMIT;
            *out = DMARC__DNS_ERROR;
            return DMARC_OK;
        }
        if (e->cache != NULL)
            ans = dmarc__cache_get(e->cache, type, name, len, h, e->now);
        if (ans == NULL) {
            e->qtype = type;
            e->qhash = h;
            e->qlen = len;
            memcpy(e->qname, name, len);
            e->qname[len] = '\0';
            return DMARC_NEED_DNS;
        }
        ans->refs++;
        e->memo[e->nmemo] = ans;
        e->memo_hash[e->nmemo] = h;
        e->nmemo++;
        e->memo_used = e->nmemo;
    }
    *ansp = ans;
    *out = outcome_of(ans);
    return DMARC_OK;
}

dmarc_status dmarc__lookup_policy(dmarc_eval *e, const char *domain, size_t len,
                                  const dmarc__txtview **view, bool *err)
{
    char qname[DMARC__QNAME_MAX + 1];
    dmarc__answer *ans;
    dmarc__dns out;
    dmarc_status st;

    *view = NULL;
    *err = false;
    if (len > DMARC_DOMAIN_MAX_LEN)
        return DMARC_ERR_INVAL; /* names come normalized: cannot happen */
    /* [DISC-1] [DISC-5]: the record lives at `_dmarc.<domain>` (A-label,
    ** lowercase, no trailing dot [FROM-2] [FROM-3]). */
    memcpy(qname, DMARC__QNAME_PREFIX, DMARC__QNAME_PREFIX_LEN);
    memcpy(qname + DMARC__QNAME_PREFIX_LEN, domain, len);
    st = dmarc__lookup(e, DMARC_QTYPE_TXT, qname, DMARC__QNAME_PREFIX_LEN + len, &out, &ans);
    if (st != DMARC_OK)
        return st;
    /* [DISC-4]: NXDOMAIN and NODATA mean "no record"; SERVFAIL and
    ** TIMEOUT are transient errors. */
    if (out == DMARC__DNS_ERROR) {
        *err = true;
        return DMARC_OK;
    }
    if (out != DMARC__DNS_DATA || ans == NULL)
        return DMARC_OK;
    return dmarc__answer_view(ans, e->mode, view);
}

/* }====================================================== */

/* ** {======================================================
** The tree walk (RFC 9989 §4.10)
** ======================================================= */

static dmarc_psd psd_of(const dmarc__txtview *v)
{
    /* An unusable lone record still takes part in Org Domain selection
    ** (digest section 14); one the parser refused reads as psd=u. */
    return v->record != NULL ? v->record->psd : DMARC_PSD_U;
}

/* Labels of @name: starts[j] is where the suffix of (n - j) labels begins.
** Returns n (at most DMARC_DOMAIN_MAX_LABELS, the RFC 1035 bound). */
static size_t label_starts(const char *name, size_t len, uint16_t *starts)
{
    size_t n = 0, i;
    starts[n++] = 0;
    for (i = 0; i < len && n < DMARC_DOMAIN_MAX_LABELS; i++) {
        if (name[i] == '.')
            starts[n++] = (uint16_t)(i + 1);
    }
    return n;
}

dmarc_status dmarc__walk(dmarc_eval *e, const char *name, size_t len, dmarc__walk_result *w)
{
    uint16_t starts[DMARC_DOMAIN_MAX_LABELS];
    /* Lone records met, in walk order (most labels first). */
    struct {
        size_t labels;
        const dmarc__txtview *v;
    } found[DMARC_WALK_MAX_QUERIES];
    size_t nfound = 0, queries = 0, n, k;
    const dmarc__txtview *v;
    bool err, terminal = false;
    dmarc_status st;
    dmarc_psd psd = DMARC_PSD_U;

    memset(w, 0, sizeof *w);
    n = label_starts(name, len, starts);
    /* [WALK-1]: the start name, then (x >= 8 labels) straight to the
    ** 7-label name or (x < 8) the parent, then one label at a time up to and
    ** including the TLD. [WALK-2]: at most 8 queries; the label arithmetic
    ** already guarantees it, the counter says so in code. */
    for (k = n; k >= 1 && queries < DMARC_WALK_MAX_QUERIES; k = (k - 1 < 7 ? k - 1 : 7)) {
        size_t off = starts[n - k];
        st = dmarc__lookup_policy(e, name + off, len - off, &v, &err);
        if (st != DMARC_OK)
            return st;
        queries++;
        if (err) {
            /* [DISC-10]: without this answer the walk cannot be finished. */
            w->failed = true;
            return DMARC_OK;
        }
        /* [WALK-1]: several DMARC records at one name are all discarded. */
        if (dmarc__has_record(v)) {
            found[nfound].labels = k;
            found[nfound].v = v;
            nfound++;
            psd = psd_of(v);
            /* [WALK-1]: a lone record with psd=y or psd=n ends the walk. */
            if (psd == DMARC_PSD_Y || psd == DMARC_PSD_N) {
                terminal = true;
                break;
            }
        }
        if (k == 1)
            break;
    }

    /* [DISC-6] over the records of this walk, most labels first. Only the
    ** last record can carry psd=y/n, since such a record stops the walk. */
    w->org_off = 0;
    if (terminal && psd == DMARC_PSD_N) {
        /* (1) psd=n: that name is the Org Domain. */
        w->org_off = starts[n - found[nfound - 1].labels];
        w->org_rec = found[nfound - 1].v;
    } else if (terminal && psd == DMARC_PSD_Y && found[nfound - 1].labels != n) {
        /* (2) psd=y below the start: the Org Domain is the name one label
        ** below it on the path. After a jump from more than 8 labels that
        ** name was never queried; no 9th query is made and the PSD record
        ** applies (digest section 14). */
        size_t psd_labels = found[nfound - 1].labels;
        w->org_off = starts[n - (psd_labels + 1)];
        if (nfound >= 2 && found[nfound - 2].labels == psd_labels + 1)
            w->org_rec = found[nfound - 2].v;
        w->psd_rec = found[nfound - 1].v;
        w->psd_off = starts[n - psd_labels];
    } else if (nfound > 0) {
        /* (3) the record with the fewest labels (a psd=y at the start, a
        ** lone record, or the top of several psd=u records). */
        w->org_off = starts[n - found[nfound - 1].labels];
        w->org_rec = found[nfound - 1].v;
    }
    /* No record at all: the start name is the Org Domain (org_off 0). */
    return DMARC_OK;
}

/* }====================================================== */

/* ** {======================================================
** Org Domains
** ======================================================= */

dmarc_status dmarc__org_domain(dmarc_eval *e, const char *name, size_t len, dmarc__org *org)
{
    if (org->state != DMARC__ORG_UNKNOWN)
        return DMARC_OK;
    if (e->mode == DMARC_MODE_RFC9989) {
        /* [ALN-4]: each name gets its own walk, never the author's. */
        dmarc__walk_result w;
        dmarc_status st = dmarc__walk(e, name, len, &w);
        if (st != DMARC_OK)
            return st;
        org->state = w.failed ? DMARC__ORG_FAILED : DMARC__ORG_KNOWN;
        org->off = (uint16_t)w.org_off;
    } else {
        /* RFC 7489 §3.2 through the PSL strategy [PSL-1]. */
        const dmarc_options *o = &e->ctx->opt;
        size_t off = 0;
        bool is_suffix = false;
        dmarc_status st = DMARC_OK;
        /* The shared cache keeps PSL answers too: a lookup costs a hash
        ** where the list itself costs a walk over its rules. */
        if (!dmarc__cache_psl_get(e->cache, o, name, len, e->now, &off, &is_suffix)) {
            st = o->psl(o->psl_ud, name, len, &off, &is_suffix);
            if (is_suffix)
                off = 0;
            if (st >= 0 && off < len && (off == 0 || name[off - 1] == '.'))
                dmarc__cache_psl_put(e->cache, o, name, len, e->now, off, is_suffix);
        }
        /* A callback answer that is not a label boundary of the name is a
        ** failure like any other: the evaluation gives temperror. */
        if (st < 0 || off >= len || (off > 0 && name[off - 1] != '.')) {
            org->state = DMARC__ORG_FAILED;
            org->off = 0;
        } else if (is_suffix) {
            org->state = DMARC__ORG_SUFFIX;
            org->off = 0;
        } else {
            org->state = DMARC__ORG_KNOWN;
            org->off = (uint16_t)off;
        }
    }
    return DMARC_OK;
}

/* }====================================================== */

/* ** {======================================================
** Policy discovery
** ======================================================= */

static void decide(dmarc__domain *d, dmarc_result r, const char *why)
{
    d->result = r;
    d->error = why;
}

/* A record was found at @policy_off: usable, or permerror [EVAL-7] [OPEN-4]. */
static void found_record(dmarc__domain *d, const dmarc__txtview *v, size_t policy_off,
                         bool *decided)
{
    d->has_policy_domain = true;
    d->policy_off = (uint16_t)policy_off;
    d->own_record = policy_off == 0;
    d->record = v->record;
    if (v->record == NULL || !v->record->usable) {
        decide(d, DMARC_RESULT_PERMERROR, "policy record unusable");
        *decided = true;
        return;
    }
    *decided = false;
}

static dmarc_status discover_rfc9989(dmarc_eval *e, dmarc__domain *d, bool *decided)
{
    const char *dom = dmarc__str(e, d->off);
    const dmarc__txtview *v;
    dmarc__walk_result w;
    dmarc_status st;
    bool err;

    /* [DISC-5]: the author's own record first. */
    st = dmarc__lookup_policy(e, dom, d->len, &v, &err);
    if (st != DMARC_OK)
        return st;
    if (err) {
        decide(d, DMARC_RESULT_TEMPERROR, "dns error discovering policy");
        return DMARC_OK;
    }
    if (dmarc__has_record(v)) {
        found_record(d, v, 0, decided);
        return DMARC_OK;
    }
    /* None, or several (all discarded): the walk goes on from the parent.
    ** It starts at the author domain again, whose answer the memo holds. */
    st = dmarc__walk(e, dom, d->len, &w);
    if (st != DMARC_OK)
        return st;
    if (w.failed) {
        decide(d, DMARC_RESULT_TEMPERROR, "dns error discovering policy");
        return DMARC_OK;
    }
    d->org.state = DMARC__ORG_KNOWN;
    d->org.off = (uint16_t)w.org_off;
    /* [DISC-7]: the Org Domain's record, else the PSD's. */
    if (w.org_rec != NULL) {
        found_record(d, w.org_rec, w.org_off, decided);
        return DMARC_OK;
    }
    if (w.psd_rec != NULL) {
        found_record(d, w.psd_rec, w.psd_off, decided);
        return DMARC_OK;
    }
    /* [DISC-9]: a definite negative; DMARC does not apply. */
    decide(d, DMARC_RESULT_NONE, NULL);
    return DMARC_OK;
}

static dmarc_status discover_rfc7489(dmarc_eval *e, dmarc__domain *d, bool *decided)
{
    const char *dom = dmarc__str(e, d->off);
    const dmarc__txtview *v;
    dmarc_status st;
    bool err;

    /* [DISC-1] */
    st = dmarc__lookup_policy(e, dom, d->len, &v, &err);
    if (st != DMARC_OK)
        return st;
    if (err) {
        decide(d, DMARC_RESULT_TEMPERROR, "dns error discovering policy");
        return DMARC_OK;
    }
    if (dmarc__has_record(v)) {
        found_record(d, v, 0, decided);
        return DMARC_OK;
    }
    /* [DISC-3]: several records end discovery; no fallback. */
    if (v != NULL && v->dmarc_rrs > 1) {
        decide(d, DMARC_RESULT_NONE, NULL);
        return DMARC_OK;
    }
    /* [DISC-2]: the PSL Org Domain, when it differs. */
    st = dmarc__org_domain(e, dom, d->len, &d->org);
    if (st != DMARC_OK)
        return st;
    if (d->org.state == DMARC__ORG_FAILED) {
        decide(d, DMARC_RESULT_TEMPERROR, "org domain lookup failed");
        return DMARC_OK;
    }
    if (d->org.state != DMARC__ORG_KNOWN || d->org.off == 0) {
        decide(d, DMARC_RESULT_NONE, NULL);
        return DMARC_OK;
    }
    st = dmarc__lookup_policy(e, dom + d->org.off, d->len - d->org.off, &v, &err);
    if (st != DMARC_OK)
        return st;
    if (err) {
        decide(d, DMARC_RESULT_TEMPERROR, "dns error discovering policy");
        return DMARC_OK;
    }
    if (dmarc__has_record(v)) {
        found_record(d, v, d->org.off, decided);
        return DMARC_OK;
    }
    /* [DISC-3]: nothing, or several records, at the Org Domain. */
    decide(d, DMARC_RESULT_NONE, NULL);
    return DMARC_OK;
}

dmarc_status dmarc__discover(dmarc_eval *e, dmarc__domain *d, bool *decided)
{
    *decided = true;
    if (e->mode == DMARC_MODE_RFC7489)
        return discover_rfc7489(e, d, decided);
    return discover_rfc9989(e, d, decided);
}

/* }====================================================== */
