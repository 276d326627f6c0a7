/*
** Identifier alignment, the existence test behind np, and the policy that
** is requested and applied, for one author domain.
*/
#include <string.h>

#include "eval.h"

/* ** {======================================================
** Alignment [ALN-1..8] [EVAL-1] [EVAL-3]
** ======================================================= */

typedef enum align_outcome {
    ALIGN_NO,     /* shown not to align */
    ALIGN_YES,    /* Org Domains equal */
    ALIGN_UNKNOWN /* a query (or the PSL) failed: cannot tell [DISC-10] */
} align_outcome;

static bool same_name(const char *a, size_t alen, const char *b, size_t blen)
{
    /* Both normalized (lowercase A-labels): a byte compare is RFC 4343's
    ** case-insensitive compare [ALN-3] [FROM-2]. */
    return alen == blen && memcmp(a, b, alen) == 0;
}

/* True when @suffix is @name or a whole-label suffix of it: `x.com` is not
** a suffix of `attacker.com` [ALN-8]. */
static bool label_suffix(const char *name, size_t len, const char *suffix, size_t slen)
{
    if (slen > len)
        return false;
    if (memcmp(name + len - slen, suffix, slen) != 0)
        return false;
    return slen == len || name[len - slen - 1] == '.';
}

/* Length of the last label (the TLD) of a name. */
static size_t last_label_len(const char *s, size_t len)
{
    size_t i = len;
    while (i > 0 && s[i - 1] != '.')
        i--;
    return len - i;
}

/* Do two names end in the same label (TLD)? If not, they share no Org
** Domain whatever the DNS says [ALN-5]: no walk at all. */
static bool same_tld(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t ta = last_label_len(a, alen), tb = last_label_len(b, blen);
    return same_name(a + alen - ta, ta, b + blen - tb, tb);
}

/* Relaxed alignment of identifier @id with author domain @d [ALN-4]: both
** Org Domains, each from its own walk (rfc9989) or the PSL (rfc7489). */
static dmarc_status relaxed(dmarc_eval *e, dmarc__domain *d, dmarc__ident *id, align_outcome *out)
{
    const char *dom = dmarc__str(e, d->off), *ident = dmarc__str(e, id->off);
    const char *org_d, *org_i;
    size_t org_dlen, org_ilen;
    dmarc_status st;

    *out = ALIGN_NO;
    if (!same_tld(dom, d->len, ident, id->len))
        return DMARC_OK;
    /* The author's walk first: it continues from the query discovery made
    ** (the memo answers it), so at most its remaining labels are asked. */
    st = dmarc__org_domain(e, dom, d->len, &d->org);
    if (st != DMARC_OK)
        return st;
    if (d->org.state == DMARC__ORG_FAILED) {
        *out = ALIGN_UNKNOWN;
        return DMARC_OK;
    }
    org_d = dom + d->org.off;
    org_dlen = d->len - d->org.off;
    /* The identifier's Org Domain is a suffix of the identifier; if the
    ** author's is not, they cannot be equal and no walk is needed. */
    if (!label_suffix(ident, id->len, org_d, org_dlen))
        return DMARC_OK;
    st = dmarc__org_domain(e, ident, id->len, &id->org);
    if (st != DMARC_OK)
        return st;
    if (id->org.state == DMARC__ORG_FAILED) {
        *out = ALIGN_UNKNOWN;
        return DMARC_OK;
    }
    /* [ALN-6]: a public-suffix identifier (d=com) never aligns relaxed. */
    if (id->org.state == DMARC__ORG_SUFFIX)
        return DMARC_OK;
    org_i = ident + id->org.off;
    org_ilen = id->len - id->org.off;
    if (same_name(org_i, org_ilen, org_d, org_dlen))
        *out = ALIGN_YES;
    return DMARC_OK;
}

static bool exact(const dmarc_eval *e, const dmarc__domain *d, const dmarc__ident *id)
{
    return id->len > 0 && same_name(dmarc__str(e, id->off), id->len, dmarc__str(e, d->off), d->len);
}

/* [ALN-1]: the MAIL FROM result, or HELO when no MAIL FROM result was given. */
static dmarc__ident *spf_identity(dmarc_eval *e)
{
    if (e->has_spf[DMARC__SPF_MFROM])
        return &e->spf[DMARC__SPF_MFROM];
    if (e->has_spf[DMARC__SPF_HELO])
        return &e->spf[DMARC__SPF_HELO];
    return NULL;
}

/* [EVAL-3]: could this non-pass result have produced an aligned
** identifier? An exact match could; a relaxed one needs the walks, and a
** walk that fails leaves the question open, which counts as "could". */
static dmarc_status could_align(dmarc_eval *e, dmarc__domain *d, dmarc__ident *id, bool strict,
                                bool *could)
{
    align_outcome o;
    dmarc_status st;

    *could = false;
    if (id->len == 0)
        return DMARC_OK;
    if (exact(e, d, id)) {
        *could = true;
        return DMARC_OK;
    }
    if (strict)
        return DMARC_OK;
    st = relaxed(e, d, id, &o);
    if (st != DMARC_OK)
        return st;
    *could = o != ALIGN_NO;
    return DMARC_OK;
}

/* Questions that checking one more identifier for relaxed alignment may
** cost at most: the rest of the author's walk plus the identifier's own. */
#define ALIGN_CHECK_MAX_QUERIES (2 * DMARC_WALK_MAX_QUERIES)

/* May the evaluation of @d spend questions on alignment that can no longer
** change its result (after a pass)? Only while enough of
** DMARC_EVAL_MAX_QUERIES is left for this check and for every author domain
** still to come, so completing the picture never costs another domain its
** verdict and never raises the query limit. */
static bool budget_for_completion(const dmarc_eval *e, const dmarc__domain *d)
{
    size_t later = e->ndom - (size_t)(d - e->dom) - 1;
    size_t reserve = (later + 1) * ALIGN_CHECK_MAX_QUERIES;
    return e->memo_used + reserve <= DMARC_EVAL_MAX_QUERIES;
}

/* Relaxed check of one passing identifier. Before a pass is established the
** outcome decides [DISC-10]: ALIGN_UNKNOWN makes *unknown true. After it the
** check only completes the picture for reports ([AGG-6] [AGG-7] want the
** aligned results of both mechanisms and the alignment of every signature),
** within budget_for_completion, and a failed query changes nothing. */
static dmarc_status check_relaxed(dmarc_eval *e, dmarc__domain *d, dmarc__ident *id,
                                  uint8_t *align_out, bool *aligned, bool *unknown)
{
    align_outcome o;
    dmarc_status st;
    bool decisive = !(d->dkim_aligned || d->spf_aligned);

    if (!decisive && !budget_for_completion(e, d))
        return DMARC_OK;
    st = relaxed(e, d, id, &o);
    if (st != DMARC_OK)
        return st;
    if (o == ALIGN_YES) {
        *align_out = DMARC_ALIGN_RELAXED;
        *aligned = true;
    } else if (o == ALIGN_UNKNOWN && decisive) {
        *unknown = true;
    }
    return DMARC_OK;
}

static dmarc_status align(dmarc_eval *e, dmarc__domain *d)
{
    const dmarc_record *rec = d->record;
    bool strict_dkim = rec->adkim == DMARC_ALIGN_STRICT;
    bool strict_spf = rec->aspf == DMARC_ALIGN_STRICT;
    dmarc__ident *spf = spf_identity(e);
    bool unknown = false, could;
    dmarc_status st;
    size_t i;

    d->spf_align = DMARC_ALIGN_NONE;
    memset(d->dkim_align, DMARC_ALIGN_NONE, sizeof d->dkim_align);
    d->spf_aligned = d->dkim_aligned = false;

    /* Exact matches first: no DNS, and they align in either mode [ALN-3]
    ** [ALN-5]. [ALN-2]: only a pass yields an identifier. */
    for (i = 0; i < e->ndkim; i++) {
        if (e->dkim[i].result == DMARC_AUTH_PASS && exact(e, d, &e->dkim[i])) {
            d->dkim_align[i] = DMARC_ALIGN_STRICT;
            d->dkim_aligned = true;
        }
    }
    if (spf != NULL && spf->result == DMARC_AUTH_PASS && exact(e, d, spf)) {
        d->spf_align = DMARC_ALIGN_STRICT;
        d->spf_aligned = true;
    }

    /* Then relaxed candidates, DKIM (input order) then SPF [ALN-4]. Once
    ** one aligned pass is established nothing can change the result
    ** [EVAL-1] [ALN-7]; the remaining checks only complete what the
    ** verdict and the reports say (check_relaxed). */
    for (i = 0; i < e->ndkim && !strict_dkim; i++) {
        dmarc__ident *id = &e->dkim[i];
        if (id->result != DMARC_AUTH_PASS || id->len == 0 || d->dkim_align[i] != DMARC_ALIGN_NONE)
            continue;
        st = check_relaxed(e, d, id, &d->dkim_align[i], &d->dkim_aligned, &unknown);
        if (st != DMARC_OK)
            return st;
    }
    if (spf != NULL && !strict_spf && spf->result == DMARC_AUTH_PASS && spf->len > 0 &&
        d->spf_align == DMARC_ALIGN_NONE) {
        st = check_relaxed(e, d, spf, &d->spf_align, &d->spf_aligned, &unknown);
        if (st != DMARC_OK)
            return st;
    }
    if (d->dkim_aligned || d->spf_aligned) {
        d->result = DMARC_RESULT_PASS; /* [EVAL-1] [ALN-7] */
        return DMARC_OK;
    }
    /* [DISC-10]: an alignment query that failed leaves the outcome open. */
    if (unknown) {
        d->result = DMARC_RESULT_TEMPERROR;
        d->error = "dns error checking alignment";
        return DMARC_OK;
    }
    /* [EVAL-3]: a temperror that might have been an aligned pass. */
    for (i = 0; i < e->ndkim; i++) {
        if (e->dkim[i].result != DMARC_AUTH_TEMPERROR)
            continue;
        st = could_align(e, d, &e->dkim[i], strict_dkim, &could);
        if (st != DMARC_OK)
            return st;
        if (could)
            goto temperror;
    }
    if (spf != NULL && spf->result == DMARC_AUTH_TEMPERROR) {
        st = could_align(e, d, spf, strict_spf, &could);
        if (st != DMARC_OK)
            return st;
        if (could)
            goto temperror;
    }
    d->result = DMARC_RESULT_FAIL;
    return DMARC_OK;

temperror:
    d->result = DMARC_RESULT_TEMPERROR;
    d->error = "spf or dkim temporary error";
    return DMARC_OK;
}

/* }====================================================== */

/* ** {======================================================
** Existence test [DISC-12] and policy [EVAL-6] [POL-4..6]
** ======================================================= */

/* Does the author domain exist? *err on a DNS error. */
static dmarc_status author_exists(dmarc_eval *e, const dmarc__domain *d, bool *exists, bool *err)
{
    static const dmarc_qtype rfc9091_types[] = {DMARC_QTYPE_A, DMARC_QTYPE_AAAA, DMARC_QTYPE_MX};
    const char *dom = dmarc__str(e, d->off);
    dmarc__answer *ans;
    dmarc__dns out;
    dmarc_status st;
    size_t i;

    *exists = true;
    *err = false;
    if (e->mode == DMARC_MODE_RFC9989) {
        /* RFC 9989 §3.2.13, App. A.4 (RFC 8020): only NXDOMAIN says the
        ** name does not exist; one query suffices, NODATA means it exists. */
        st = dmarc__lookup(e, DMARC_QTYPE_A, dom, d->len, &out, &ans);
        if (st != DMARC_OK)
            return st;
        *err = out == DMARC__DNS_ERROR;
        *exists = out != DMARC__DNS_NXDOMAIN;
        return DMARC_OK;
    }
    /* RFC 9091's test, kept in rfc7489 mode [DISC-12]: non-existent iff A,
    ** AAAA and MX each give NXDOMAIN or NODATA; an NXDOMAIN on A settles it. */
    for (i = 0; i < sizeof rfc9091_types / sizeof rfc9091_types[0]; i++) {
        st = dmarc__lookup(e, rfc9091_types[i], dom, d->len, &out, &ans);
        if (st != DMARC_OK)
            return st;
        if (out == DMARC__DNS_ERROR) {
            *err = true;
            return DMARC_OK;
        }
        if (out == DMARC__DNS_DATA)
            return DMARC_OK;
        if (out == DMARC__DNS_NXDOMAIN && rfc9091_types[i] == DMARC_QTYPE_A)
            break;
    }
    *exists = false;
    return DMARC_OK;
}

static dmarc_policy policy_of(const dmarc_record *rec, dmarc_policy_tag tag)
{
    /* [EVAL-7]: an invalid p/sp/np with a valid rua makes the whole record
    ** p=none. The effective sp/np already hold their fallbacks [EVAL-6]. */
    if (rec->as_none)
        return DMARC_POLICY_NONE;
    switch (tag) {
    case DMARC_POLICY_TAG_SP:
        return rec->sp;
    case DMARC_POLICY_TAG_NP:
        return rec->np;
    case DMARC_POLICY_TAG_P:
    case DMARC_POLICY_TAG_NONE:
    case DMARC_POLICY_TAG__COUNT:
        break;
    }
    return rec->p;
}

static dmarc_policy one_level_lower(dmarc_policy p)
{
    /* [POL-4] [POL-6]: reject -> quarantine, quarantine -> none. */
    return p == DMARC_POLICY_REJECT ? DMARC_POLICY_QUARANTINE : DMARC_POLICY_NONE;
}

/* Is t=y in force? [POL-4]; rfc9989 only. [OPEN-3] maps a legacy pct when
** asked to and t is absent. */
static bool testing_of(const dmarc_eval *e, const dmarc_record *rec, bool *mapped)
{
    *mapped = false;
    if (e->mode != DMARC_MODE_RFC9989)
        return false;
    if (e->ctx->opt.pct_as_testing && !rec->has_t && rec->has_pct &&
        (rec->pct == 0 || rec->pct == 100)) {
        *mapped = true;
        return rec->pct == 0;
    }
    return rec->testing;
}

void dmarc__apply_policy(const dmarc_eval *e, dmarc__domain *d)
{
    const dmarc_record *rec = d->record;
    bool mapped;

    d->applied = d->policy;
    d->reason = DMARC_REASON_NONE;
    d->testing = testing_of(e, rec, &mapped);
    d->pct_as_testing = mapped;
    if (e->mode == DMARC_MODE_RFC9989) {
        /* [POL-4]; pct is historic here [POL-5]. */
        if (d->testing)
            d->applied = one_level_lower(d->policy);
        if (d->applied != d->policy)
            d->reason = DMARC_REASON_POLICY_TEST_MODE;
    } else {
        /* [POL-6]: the policy applies iff roll < pct; a failing message
        ** sampled out is handled one level lower. */
        if (!(e->roll < rec->pct))
            d->applied = one_level_lower(d->policy);
        if (d->applied != d->policy)
            d->reason = DMARC_REASON_SAMPLED_OUT;
    }
}

static dmarc_status choose_policy(dmarc_eval *e, dmarc__domain *d)
{
    const dmarc_record *rec = d->record;
    dmarc_policy_tag tag = d->own_record ? DMARC_POLICY_TAG_P : DMARC_POLICY_TAG_SP;
    bool exists, err, mapped;
    dmarc_status st;

    d->has_policy = true;
    /* [EVAL-6]: a record below the author domain speaks through sp, or np
    ** for a non-existent author domain. The existence test runs only when
    ** it can change the outcome: a failure with np different from sp. */
    if (d->result == DMARC_RESULT_FAIL && !d->own_record &&
        policy_of(rec, DMARC_POLICY_TAG_NP) != policy_of(rec, DMARC_POLICY_TAG_SP)) {
        st = author_exists(e, d, &exists, &err);
        if (st != DMARC_OK)
            return st;
        if (err) {
            /* [DISC-10]: policy cannot be applied. */
            d->result = DMARC_RESULT_TEMPERROR;
            d->error = "dns error testing domain existence";
        } else {
            d->author_exists = exists;
            if (!exists)
                tag = DMARC_POLICY_TAG_NP;
        }
    }
    d->policy_tag = tag;
    d->policy = policy_of(rec, tag);
    if (d->result == DMARC_RESULT_FAIL) {
        dmarc__apply_policy(e, d);
    } else {
        /* pass: nothing to apply; temperror: "not applied". */
        d->applied = DMARC_POLICY_NONE;
        d->reason = DMARC_REASON_NONE;
        d->testing = testing_of(e, rec, &mapped);
        d->pct_as_testing = mapped;
    }
    return DMARC_OK;
}

/* }====================================================== */

/*
** The Org Domain reported for the author domain is only ever one that was
** determined [DISC-6]. Under the PSL it costs no DNS question, so it is
** always reported. In rfc9989 mode, discovery that stopped at the author's
** own record has not found it (the [ALN-5] short cut makes the author its
** own Org Domain for alignment only, RFC 9989 §4.10.2): it is determined
** when alignment walked anyway; when the own record says psd=y or psd=n (the
** walk would stop there at once, so it costs nothing); when the context asks
** for the whole walk (options.full_org_walk: `dmarc inspect`); or, with
** options.failure_org_walk, for a failure whose applied policy a site may act
** on by organisation (quarantine, reject). The extra walk runs within
** budget_for_completion; a DNS failure on it (or no budget) leaves the Org
** Domain unreported, which cannot touch the settled result [DISC-10] and can
** only make an override keyed by organisation not match.
*/
static dmarc_status complete_org(dmarc_eval *e, dmarc__domain *d)
{
    const dmarc_options *o = &e->ctx->opt;
    bool wanted;

    if (d->org.state != DMARC__ORG_UNKNOWN || !d->own_record)
        return DMARC_OK;
    if (e->mode == DMARC_MODE_RFC9989) {
        bool terminal =
            d->record != NULL && (d->record->psd == DMARC_PSD_Y || d->record->psd == DMARC_PSD_N);
        wanted = terminal || o->full_org_walk ||
                 (o->failure_org_walk && d->result == DMARC_RESULT_FAIL &&
                  d->applied != DMARC_POLICY_NONE);
        /* A terminal own record is answered from the memo: no budget needed. */
        if (!wanted || (!terminal && !budget_for_completion(e, d)))
            return DMARC_OK;
    }
    return dmarc__org_domain(e, dmarc__str(e, d->off), d->len, &d->org);
}

dmarc_status dmarc__align_domain(dmarc_eval *e, dmarc__domain *d)
{
    dmarc_status st = align(e, d);
    if (st != DMARC_OK)
        return st;
    st = choose_policy(e, d);
    if (st != DMARC_OK)
        return st;
    return complete_org(e, d);
}
