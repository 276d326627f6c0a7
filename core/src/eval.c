/*
** Evaluations: inputs, the query loop, the message verdict and outputs.
**
** This file drives; the two others are services it calls, and the calls
** point one way: eval.c -> walk.c (lookups, the RFC 9989 tree walk, Org
** Domains, policy discovery) and eval.c -> align.c (identifier alignment,
** the existence test behind np, the policy requested and applied), which
** asks walk.c for Org Domains. For each author domain eval_domain runs
** discovery, then, when discovery did not decide, alignment. A lookup the
** memo and the cache cannot answer unwinds to dmarc_eval_run as
** DMARC_NEED_DNS; the caller answers and runs again, and the rerun replays
** the same path from the memo (eval.h). Measured when the driver moved here
** from align.c: dmarc_eval_run +0.3% instructions under callgrind (one more
** call per author domain), no change in `make bench` times.
**
** States: INPUT (inputs allowed) -> run -> PENDING (one question out) ->
** answer -> ANSWERED -> run -> ... -> DONE. Any call out of turn gives
** DMARC_ERR_STATE and changes nothing. DMARC_ERR_NOMEM from any call leaves
** the evaluation as it was before that call, so the call may be retried
** (or the evaluation freed) once memory is back.
*/
#include <string.h>

#include "domain.h"
#include "eval.h"

/* ** {======================================================
** Life cycle
** ======================================================= */

dmarc_eval *dmarc_eval_new(const dmarc_ctx *c, dmarc_cache *cache, dmarc_status *st)
{
    dmarc_eval *e;
    dmarc_status dummy;

    if (st == NULL)
        st = &dummy;
    if (c == NULL) {
        *st = DMARC_ERR_INVAL;
        return NULL;
    }
    e = dmarc__alloc(&c->opt.alloc, sizeof *e);
    if (e == NULL) {
        *st = DMARC_ERR_NOMEM;
        return NULL;
    }
    /* No memset of the whole object (a few KB, mostly arrays filled as they
    ** are used): a scanner may create one evaluation per message. */
    e->ctx = c;
    e->cache = cache;
    e->alloc = c->opt.alloc;
    e->mode = c->opt.mode;
    e->arena = e->arena_inline;
    e->arena_cap = sizeof e->arena_inline;
    e->nmemo = 0;
    dmarc_eval_reset(e);
    *st = DMARC_OK;
    return e;
}

static void release_memo(dmarc_eval *e)
{
    size_t i;
    for (i = 0; i < e->nmemo; i++)
        dmarc__answer_release(e->memo[i]);
    e->nmemo = 0;
    e->nasked = 0;
}

void dmarc_eval_reset(dmarc_eval *e)
{
    if (e == NULL)
        return;
    release_memo(e);
    /* The arena keeps its block: the next message reuses it. */
    e->arena_len = 0;
    e->state = DMARC__EVAL_INPUT;
    e->in_flags = e->flags = 0;
    e->from_fields = 0;
    e->roll = 0;
    e->now = 0;
    e->ndom = e->ndone = 0;
    e->has_over = e->mailboxes_cut = e->fields_dropped = e->final_has_author = false;
    e->over_len = 0;
    e->over_off = 0;
    e->limit_domain = 0;
    e->ndkim = 0;
    e->has_spf[DMARC__SPF_MFROM] = e->has_spf[DMARC__SPF_HELO] = false;
    e->qlen = 0;
    e->qtype = DMARC_QTYPE_TXT;
    e->qhash = 0;
    e->decider = 0;
    memset(&e->final, 0, sizeof e->final);
}

void dmarc_eval_free(dmarc_eval *e)
{
    dmarc_allocator a;
    if (e == NULL)
        return;
    release_memo(e);
    a = e->alloc;
    if (e->arena != e->arena_inline)
        dmarc__free(&a, e->arena, e->arena_cap);
    dmarc__free(&a, e, sizeof *e);
}

/* }====================================================== */

/* ** {======================================================
** Inputs
** ======================================================= */

/* Copy a (normalized) name into the arena; its offset in *off. */
static dmarc_status arena_put(dmarc_eval *e, const char *s, size_t len, uint32_t *off)
{
    size_t need = e->arena_len + len + 1;
    if (need > e->arena_cap) {
        size_t cap = e->arena_cap * 2;
        char *p;
        while (cap < need)
            cap *= 2;
        if (e->arena == e->arena_inline) {
            p = dmarc__alloc(&e->alloc, cap);
            if (p == NULL)
                return DMARC_ERR_NOMEM;
            memcpy(p, e->arena, e->arena_len);
        } else {
            p = dmarc__realloc(&e->alloc, e->arena, e->arena_cap, cap);
            if (p == NULL)
                return DMARC_ERR_NOMEM;
        }
        e->arena = p;
        e->arena_cap = cap;
    }
    memcpy(e->arena + e->arena_len, s, len);
    e->arena[e->arena_len + len] = '\0';
    *off = (uint32_t)e->arena_len;
    e->arena_len += len + 1;
    return DMARC_OK;
}

/* One author domain (normalized), kept when new [FROM-7] and under the cap
** [OPEN-5] [FROM-6]. */
static dmarc_status add_domain(dmarc_eval *e, const char *dom, size_t len)
{
    size_t i, max = e->ctx->opt.max_author_domains;
    dmarc__domain *d;
    dmarc_status st;
    uint32_t off;

    for (i = 0; i < e->ndom; i++) {
        if (e->dom[i].len == len && memcmp(dmarc__str(e, e->dom[i].off), dom, len) == 0)
            return DMARC_OK;
    }
    if (e->ndom >= 1)
        e->in_flags |= DMARC_FLAG_MULTIPLE_DOMAINS;
    if (e->ndom >= max) {
        /* Not every domain gets checked: the evaluation is incomplete, and
        ** what is not evaluated counts as failing [FROM-6] [OPEN-5]. The
        ** first such domain is kept to be named in the verdict. */
        if (!e->has_over) {
            st = arena_put(e, dom, len, &off);
            if (st != DMARC_OK)
                return st;
            e->has_over = true;
            e->over_off = off;
            e->over_len = (uint16_t)len;
        }
        e->in_flags |= DMARC_FLAG_TOO_MANY_DOMAINS;
        return DMARC_OK;
    }
    st = arena_put(e, dom, len, &off);
    if (st != DMARC_OK)
        return st;
    d = &e->dom[e->ndom++];
    memset(d, 0, sizeof *d);
    d->off = off;
    d->len = (uint16_t)len;
    return DMARC_OK;
}

/* Characters of a normalized host name: 1 letter, digit or underscore, 2
** hyphen, 3 dot, 0 anything else (uppercase included). */
static const unsigned char host_chars[256] = {
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1, ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1,
    ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1, ['_'] = 1, ['-'] = 2, ['.'] = 3,
};

/* One label [start, end) of a name already_normal accepts. */
static bool label_is_normal(const char *start, const char *end)
{
    size_t n = (size_t)(end - start);
    if (n == 0 || n > DMARC__LABEL_MAX_LEN || start[0] == '-' || end[-1] == '-')
        return false;
    /* An xn-- label needs libidn2's round trip: the slow path decides. */
    return !(n > 4 && memcmp(start, "xn--", 4) == 0);
}

/* True when @s is already what dmarc_domain_normalize makes of it: lowercase
** letters, digits, hyphen and underscore, labels of 1..63 characters that do
** not start or end with a hyphen, no xn-- label (those need libidn2's round
** trip), no trailing dot, at most DMARC_DOMAIN_MAX_LEN. Such a name is taken
** as is (the common case: SPF and DKIM domains arrive normalized), anything
** else goes through dmarc_domain_normalize, which owns the rules. */
static bool already_normal(const char *s, size_t len)
{
    const char *p = s, *end = s + len, *label = s;
    if (len == 0 || len > DMARC_DOMAIN_MAX_LEN)
        return false;
    for (; p < end; p++) {
        unsigned char k = host_chars[(unsigned char)*p];
        if (k == 0)
            return false;
        if (k != 3)
            continue;
        if (!label_is_normal(label, p))
            return false;
        label = p + 1;
    }
    return label_is_normal(label, end);
}

static dmarc_status normalize(const char *in, size_t len, char *buf, size_t *n)
{
    if (in != NULL && already_normal(in, len)) {
        memcpy(buf, in, len);
        buf[len] = '\0';
        *n = len;
        return DMARC_OK;
    }
    return dmarc_domain_normalize(in != NULL ? in : "", len, buf, DMARC_DOMAIN_MAX_LEN + 1, n);
}

static dmarc_status check_input(const dmarc_eval *e)
{
    if (e == NULL)
        return DMARC_ERR_INVAL;
    if (e->state != DMARC__EVAL_INPUT)
        return DMARC_ERR_STATE;
    return DMARC_OK;
}

dmarc_status dmarc_eval_add_from(dmarc_eval *e, const char *raw, size_t len)
{
    dmarc_from *f = NULL;
    dmarc_diag diag = {DMARC_DIAG_NONE, 0, {0}};
    dmarc_status st;
    size_t i, n, saved_ndom, saved_arena;
    unsigned saved_flags;
    bool saved_over, cut = false;

    st = check_input(e);
    if (st != DMARC_OK)
        return st;
    if (raw == NULL && len > 0)
        return DMARC_ERR_INVAL;
    if (e->from_fields >= DMARC_FROM_MAX_FIELDS) {
        /* Already more than one field: [FROM-5] holds whatever this says,
        ** and what it says is not evaluated: it counts as failing [OPEN-5]. */
        e->in_flags |= DMARC_FLAG_MULTIPLE_FROM;
        e->fields_dropped = true;
        return DMARC_ERR_LIMIT;
    }
    st = dmarc_from_parse(&e->alloc, raw != NULL ? raw : "", len, &f, &diag);
    if (st == DMARC_ERR_NOMEM || st == DMARC_ERR_INVAL)
        return st;
    e->from_fields++;
    if (e->from_fields >= 2)
        e->in_flags |= DMARC_FLAG_MULTIPLE_FROM; /* [FROM-5] [OPEN-5] */
    if (st != DMARC_OK) {
        /* Unreadable field: flagged. RFC 9989 §11.5 wants it recognised for
        ** the threat it is: mail readers still show an address in it, so
        ** when that names one domain unambiguously, the domain is evaluated
        ** (and the message cannot pass, decide_message); else no domain. */
        char dom[DMARC_DOMAIN_MAX_LEN + 1];
        size_t dlen;
        saved_flags = e->in_flags;
        e->in_flags |= DMARC_FLAG_FROM_SYNTAX;
        if (raw != NULL && dmarc__from_lenient(raw, len, dom, &dlen)) {
            saved_ndom = e->ndom;
            saved_arena = e->arena_len;
            saved_over = e->has_over;
            st = add_domain(e, dom, dlen);
            if (st != DMARC_OK) {
                /* Back to the state before the call: it can be retried. */
                e->ndom = saved_ndom;
                e->arena_len = saved_arena;
                e->has_over = saved_over;
                e->in_flags = saved_flags;
                e->from_fields--;
                if (e->from_fields < 2)
                    e->in_flags &= ~(unsigned)DMARC_FLAG_MULTIPLE_FROM;
                return st;
            }
            e->in_flags |= DMARC_FLAG_FROM_LENIENT;
        } else {
            e->in_flags |= DMARC_FLAG_FROM_UNREAD;
        }
        return DMARC_OK;
    }
    saved_ndom = e->ndom;
    saved_arena = e->arena_len;
    saved_flags = e->in_flags;
    saved_over = e->has_over;
    /* Mailboxes past DMARC_FROM_MAX_MAILBOXES were never read: their
    ** domains are unchecked, so the evaluation is incomplete and must not
    ** pass [FROM-6] [OPEN-5] -- the same rule as too many domains. A piece
    ** of the field the parser had to drop is a syntax problem to flag. */
    if (diag.code == DMARC_DIAG_TOO_MANY_MAILBOXES) {
        e->in_flags |= DMARC_FLAG_TOO_MANY_DOMAINS;
        cut = true;
    } else if (diag.code == DMARC_DIAG_SYNTAX || diag.code == DMARC_DIAG_TOO_DEEP)
        e->in_flags |= DMARC_FLAG_FROM_SYNTAX;
    n = dmarc_from_count(f);
    for (i = 0; i < n && i < DMARC_FROM_MAX_MAILBOXES; i++) {
        const dmarc_mailbox *mb = dmarc_from_mailbox(f, i);
        /* [FROM-4]: a mailbox without a usable domain adds nothing. */
        if (mb == NULL || mb->domain == NULL || mb->domain_len == 0)
            continue;
        st = add_domain(e, mb->domain, mb->domain_len);
        if (st != DMARC_OK) {
            /* Back to the state before the call: it can be retried. */
            e->ndom = saved_ndom;
            e->arena_len = saved_arena;
            e->in_flags = saved_flags;
            e->has_over = saved_over;
            e->from_fields--;
            if (e->from_fields < 2)
                e->in_flags &= ~(unsigned)DMARC_FLAG_MULTIPLE_FROM;
            dmarc_from_free(f);
            return st;
        }
    }
    dmarc_from_free(f);
    if (cut)
        e->mailboxes_cut = true;
    return DMARC_OK;
}

dmarc_status dmarc_eval_add_author_domain(dmarc_eval *e, const char *dom, size_t len)
{
    char buf[DMARC_DOMAIN_MAX_LEN + 1];
    size_t n;
    dmarc_status st;

    st = check_input(e);
    if (st != DMARC_OK)
        return st;
    if (dom == NULL && len > 0)
        return DMARC_ERR_INVAL;
    st = normalize(dom, len, buf, &n);
    if (st != DMARC_OK)
        return st == DMARC_ERR_INVAL ? DMARC_ERR_SYNTAX : st;
    return add_domain(e, buf, n);
}

/* Keep an identifier's domain; one that does not normalize is kept as
** unusable (len 0) so indexes stay those of the input, and never aligns. */
static dmarc_status put_ident(dmarc_eval *e, dmarc__ident *id, const char *dom, size_t len,
                              dmarc_auth result)
{
    char buf[DMARC_DOMAIN_MAX_LEN + 1];
    size_t n = 0;
    uint32_t off = 0;
    dmarc_status st;

    if (dom != NULL && normalize(dom, len, buf, &n) == DMARC_OK) {
        st = arena_put(e, buf, n, &off);
        if (st != DMARC_OK)
            return st;
    } else {
        n = 0;
    }
    memset(id, 0, sizeof *id);
    id->off = off;
    id->len = (uint16_t)n;
    id->result = result;
    return DMARC_OK;
}

dmarc_status dmarc_eval_add_spf(dmarc_eval *e, const char *dom, size_t len, dmarc_auth result,
                                bool is_helo)
{
    int slot = is_helo ? DMARC__SPF_HELO : DMARC__SPF_MFROM;
    dmarc_status st;

    st = check_input(e);
    if (st != DMARC_OK)
        return st;
    if ((dom == NULL && len > 0) || (unsigned)result >= DMARC_AUTH__COUNT)
        return DMARC_ERR_INVAL;
    /* DMARC_MAX_SPF: one MAIL FROM and one HELO result. */
    if (e->has_spf[slot])
        return DMARC_ERR_LIMIT;
    st = put_ident(e, &e->spf[slot], dom, len, result);
    if (st != DMARC_OK)
        return st;
    e->has_spf[slot] = true;
    return DMARC_OK;
}

dmarc_status dmarc_eval_add_dkim(dmarc_eval *e, const char *dom, size_t len, const char *selector,
                                 size_t sel_len, dmarc_auth result)
{
    dmarc_status st;

    st = check_input(e);
    if (st != DMARC_OK)
        return st;
    if ((dom == NULL && len > 0) || (selector == NULL && sel_len > 0) ||
        (unsigned)result >= DMARC_AUTH__COUNT)
        return DMARC_ERR_INVAL;
    if (e->ndkim >= DMARC_MAX_DKIM)
        return DMARC_ERR_LIMIT;
    /* The selector plays no part in the verdict; reports take it from the
    ** caller's own records. */
    st = put_ident(e, &e->dkim[e->ndkim], dom, len, result);
    if (st != DMARC_OK)
        return st;
    e->ndkim++;
    return DMARC_OK;
}

dmarc_status dmarc_eval_set_roll(dmarc_eval *e, unsigned roll)
{
    dmarc_status st = check_input(e);
    if (st != DMARC_OK)
        return st;
    if (roll > 99)
        return DMARC_ERR_INVAL;
    e->roll = roll;
    return DMARC_OK;
}

dmarc_status dmarc_eval_set_now(dmarc_eval *e, uint64_t now)
{
    dmarc_status st = check_input(e);
    if (st != DMARC_OK)
        return st;
    e->now = now;
    return DMARC_OK;
}

/* }====================================================== */

/* ** {======================================================
** The query loop
** ======================================================= */

/*
** Which bound, if any, kept part of the From from evaluation [OPEN-5]. A
** domain whose evaluation met the query limit with earlier domains having
** spent the budget, and that ended in temperror, was not evaluated either:
** its temperror says nothing of it, and the earlier domains (an attacker's
** own, with signatures of its own) chose how much was left. The first
** domain can only spend the budget on identifiers under its own Org Domain,
** so its temperror stays one.
*/
static dmarc_reason unevaluated(const dmarc_eval *e)
{
    size_t i;

    if (e->has_over)
        return DMARC_REASON_TOO_MANY_DOMAINS;
    if (e->mailboxes_cut)
        return DMARC_REASON_TOO_MANY_MAILBOXES;
    if (e->fields_dropped)
        return DMARC_REASON_TOO_MANY_FROM_FIELDS;
    if (e->flags & DMARC_FLAG_QUERY_LIMIT) {
        for (i = e->limit_domain > 0 ? e->limit_domain : 1; i < e->ndom; i++) {
            if (e->dom[i].result == DMARC_RESULT_TEMPERROR)
                return DMARC_REASON_QUERY_LIMIT;
        }
    }
    return DMARC_REASON_NONE;
}

static const char *unevaluated_text(dmarc_reason r)
{
    switch (r) {
    case DMARC_REASON_TOO_MANY_DOMAINS:
        return "more distinct From domains than the bound of author domains evaluated "
               "(max_author_domains): those not evaluated count as failing at reject";
    case DMARC_REASON_TOO_MANY_MAILBOXES:
        return "From field cut at DMARC_FROM_MAX_MAILBOXES (64) mailboxes: the domains not "
               "read count as failing at reject";
    case DMARC_REASON_TOO_MANY_FROM_FIELDS:
        return "more From fields than DMARC_FROM_MAX_FIELDS (8): those not read count as "
               "failing at reject";
    case DMARC_REASON_QUERY_LIMIT:
        return "DMARC_EVAL_MAX_QUERIES (64) reached: the From domains left unevaluated count "
               "as failing at reject";
    default:
        return NULL;
    }
}

/*
** [OPEN-5]: what a bound kept from evaluation counts as failing, at reject
** since its policy is unknown: the message verdict is a failure at reject,
** never none or pass, whatever the evaluated domains gave (an attacker picks
** the order of the domains). An evaluated domain failing at reject already
** says as much and stays the verdict (a failure made up from passes because
** of the bound does not); otherwise the verdict names the first
** domain not evaluated (when one was read) and the bound, with no policy
** domain and no record.
*/
static void count_unevaluated_as_failing(dmarc_eval *e)
{
    dmarc_reason why = unevaluated(e);

    if (why == DMARC_REASON_NONE)
        return;
    if (e->decider < e->ndom && e->dom[e->decider].result == DMARC_RESULT_FAIL &&
        e->final.result == DMARC_RESULT_FAIL && e->final.applied == DMARC_POLICY_REJECT)
        return;
    memset(&e->final, 0, sizeof e->final);
    e->final.result = DMARC_RESULT_FAIL;
    e->final.has_policy = true;
    e->final.policy = DMARC_POLICY_REJECT;
    e->final.policy_tag = DMARC_POLICY_TAG_NONE;
    e->final.applied = DMARC_POLICY_REJECT;
    e->final.reason = why;
    e->final.author_exists = true;
    e->final.error = unevaluated_text(why);
    e->final_has_author = why == DMARC_REASON_TOO_MANY_DOMAINS;
    if (e->final_has_author) {
        e->final.off = e->over_off;
        e->final.len = e->over_len;
    }
    e->decider = e->ndom;
}

/* The first domain whose result is `result`, or `otherwise` when none is. */
static size_t first_with_result(const dmarc_eval *e, dmarc_result result, size_t otherwise)
{
    size_t i;

    for (i = 0; i < e->ndom; i++) {
        if (e->dom[i].result == result)
            return i;
    }
    return otherwise;
}

/* [OPEN-5] [FROM-5] [FROM-6] [POL-7]: one verdict for the message. */
static void decide_message(dmarc_eval *e)
{
    size_t i, pick = e->ndom;
    bool all_pass = true;

    e->final_has_author = e->ndom > 0;
    if (e->ndom == 0) {
        /* [FROM-4]: DMARC cannot be applied. */
        memset(&e->final, 0, sizeof e->final);
        e->final.result = DMARC_RESULT_NONE;
        e->final.author_exists = true;
        e->decider = 0;
        count_unevaluated_as_failing(e);
        return;
    }
    /* Any failure: the failing domain with the strictest applied policy,
    ** the first on ties. */
    for (i = 0; i < e->ndom; i++) {
        if (e->dom[i].result == DMARC_RESULT_FAIL &&
            (pick == e->ndom || e->dom[i].applied > e->dom[pick].applied))
            pick = i;
    }
    /* A failure that applies no policy (p=none, t=y, pct) does not outrank
    ** a temperror: the domain that could not be evaluated may ask for reject
    ** (RFC 9989 §5.3.6), and a site that defers on temperror must not accept
    ** because an attacker added a monitoring-only domain to the From. */
    if (pick < e->ndom && e->dom[pick].applied == DMARC_POLICY_NONE)
        pick = first_with_result(e, DMARC_RESULT_TEMPERROR, pick);
    for (i = 0; i < e->ndom && pick == e->ndom; i++) {
        if (e->dom[i].result == DMARC_RESULT_TEMPERROR)
            pick = i;
    }
    for (i = 0; i < e->ndom && pick == e->ndom; i++) {
        if (e->dom[i].result == DMARC_RESULT_PERMERROR)
            pick = i;
    }
    for (i = 0; i < e->ndom; i++)
        all_pass &= e->dom[i].result == DMARC_RESULT_PASS;
    if (pick == e->ndom && all_pass)
        pick = 0;
    for (i = 0; i < e->ndom && pick == e->ndom; i++) {
        if (e->dom[i].result == DMARC_RESULT_NONE)
            pick = i;
    }
    if (pick == e->ndom)
        pick = 0; /* cannot happen: every result is one of the above */
    e->decider = pick;
    e->final = e->dom[pick];

    /* Two or more From fields, domains left unchecked, or a From read only
    ** leniently: never a pass [FROM-5] [FROM-6] (RFC 9989 §11.5: no better
    ** than the strict reading). The strictest requested policy among the domains,
    ** applied as for a failure (t=, pct). */
    if (all_pass && (e->flags & (DMARC_FLAG_MULTIPLE_FROM | DMARC_FLAG_TOO_MANY_DOMAINS |
                                 DMARC_FLAG_FROM_LENIENT))) {
        pick = 0;
        for (i = 1; i < e->ndom; i++) {
            if (e->dom[i].policy > e->dom[pick].policy)
                pick = i;
        }
        e->decider = pick;
        e->final = e->dom[pick];
        e->final.result = DMARC_RESULT_FAIL;
        dmarc__apply_policy(e, &e->final);
    }
    for (i = 0; i < e->ndom; i++) {
        if (e->dom[i].pct_as_testing)
            e->flags |= DMARC_FLAG_PCT_AS_TESTING;
    }
    count_unevaluated_as_failing(e);
}

static void report_org(dmarc__domain *d)
{
    d->has_org_out = d->org.state == DMARC__ORG_KNOWN || d->org.state == DMARC__ORG_SUFFIX;
    d->org_out_off = d->has_org_out ? d->org.off : 0;
}

/* One author domain to its verdict: discovery (walk.c), then, when
** discovery did not decide, alignment and policy (align.c). Rerun from the
** start on every dmarc_eval_run; the memo makes that cheap (eval.h). */
static dmarc_status eval_domain(dmarc_eval *e, dmarc__domain *d)
{
    bool decided;
    dmarc_status st;

    /* A rerun recomputes the verdict from the memo: start clean. */
    if (!d->memo_started) {
        d->memo_started = true;
        d->memo_base = e->nmemo;
    }
    e->memo_used = d->memo_base;
    d->result = DMARC_RESULT_NONE;
    d->has_policy_domain = false;
    d->policy_off = 0;
    d->own_record = false;
    d->has_org_out = false;
    d->org_out_off = 0;
    d->has_policy = false;
    d->policy = DMARC_POLICY_NONE;
    d->policy_tag = DMARC_POLICY_TAG_NONE;
    d->applied = DMARC_POLICY_NONE;
    d->reason = DMARC_REASON_NONE;
    d->spf_aligned = d->dkim_aligned = false;
    d->testing = false;
    d->author_exists = true;
    d->pct_as_testing = false;
    d->record = NULL;
    d->error = NULL;
    d->spf_align = DMARC_ALIGN_NONE;
    memset(d->dkim_align, DMARC_ALIGN_NONE, sizeof d->dkim_align);

    st = dmarc__discover(e, d, &decided);
    if (st != DMARC_OK)
        return st;
    if (!decided) {
        st = dmarc__align_domain(e, d);
        if (st != DMARC_OK)
            return st;
    }
    /* DMARC_EVAL_MAX_QUERIES: once the limit was hit while this domain was
    ** evaluated it cannot pass, even on answers the memo already held. */
    if ((e->flags & DMARC_FLAG_QUERY_LIMIT) && e->limit_domain == (size_t)(d - e->dom) &&
        d->result == DMARC_RESULT_PASS) {
        d->result = DMARC_RESULT_TEMPERROR;
        d->error = "query limit reached";
        d->applied = DMARC_POLICY_NONE;
        d->reason = DMARC_REASON_NONE;
    }
    report_org(d);
    return DMARC_OK;
}

dmarc_status dmarc_eval_run(dmarc_eval *e)
{
    dmarc_status st;

    if (e == NULL)
        return DMARC_ERR_INVAL;
    switch (e->state) {
    case DMARC__EVAL_PENDING:
        return DMARC_ERR_STATE; /* the pending question needs its answer */
    case DMARC__EVAL_DONE:
        return DMARC_OK;
    case DMARC__EVAL_INPUT:
        e->flags = e->in_flags;
        if (e->ndom == 0)
            e->flags |= e->from_fields == 0 ? DMARC_FLAG_NO_FROM : DMARC_FLAG_NO_AUTHOR_DOMAIN;
        e->state = DMARC__EVAL_ANSWERED;
        break;
    default:
        break;
    }
    /* Bounded by DMARC_MAX_AUTHOR_DOMAINS; each domain's own work by
    ** DMARC_EVAL_MAX_QUERIES through the memo. */
    while (e->ndone < e->ndom) {
        st = eval_domain(e, &e->dom[e->ndone]);
        if (st == DMARC_NEED_DNS) {
            e->state = DMARC__EVAL_PENDING;
            return st;
        }
        if (st != DMARC_OK)
            return st;
        e->ndone++;
    }
    decide_message(e);
    e->state = DMARC__EVAL_DONE;
    return DMARC_OK;
}

const char *dmarc_eval_query(const dmarc_eval *e, size_t *len, dmarc_qtype *type)
{
    if (e == NULL || e->state != DMARC__EVAL_PENDING)
        return NULL;
    if (len != NULL)
        *len = e->qlen;
    if (type != NULL)
        *type = e->qtype;
    return e->qname;
}

dmarc_status dmarc_eval_answer(dmarc_eval *e, dmarc_rcode rc, const dmarc_txt *txt, size_t n,
                               uint32_t ttl)
{
    const dmarc_allocator *a;
    dmarc__answer *ans;
    bool cacheable;
    size_t i;

    if (e == NULL)
        return DMARC_ERR_INVAL;
    if (e->state != DMARC__EVAL_PENDING)
        return DMARC_ERR_STATE;
    if ((unsigned)rc >= DMARC_RCODE__COUNT || (txt == NULL && n > 0))
        return DMARC_ERR_INVAL;
    /* The excess over DMARC_ANSWER_MAX_RRS is ignored, unread. */
    for (i = 0; i < n && i < DMARC_ANSWER_MAX_RRS; i++) {
        if (txt[i].data == NULL && txt[i].len > 0)
            return DMARC_ERR_INVAL;
    }
    /* [DISC-11]: an answer bound for the cache is made with the cache's
    ** allocator, so it may outlive this evaluation and its context. */
    cacheable =
        e->cache != NULL && ttl > 0 && rc != DMARC_RCODE_SERVFAIL && rc != DMARC_RCODE_TIMEOUT;
    a = cacheable ? dmarc__cache_allocator(e->cache) : &e->alloc;
    ans = dmarc__answer_new(a, e->qtype, e->qname, e->qlen, e->qhash, rc, txt, n);
    if (ans == NULL)
        return DMARC_ERR_NOMEM;
    /* dmarc__lookup made sure there is room before asking. */
    e->asked[e->nasked++] = (uint8_t)e->nmemo;
    e->memo[e->nmemo] = ans;
    e->memo_hash[e->nmemo] = e->qhash;
    e->nmemo++;
    if (cacheable)
        dmarc__cache_put(e->cache, ans, e->now, ttl);
    e->state = DMARC__EVAL_ANSWERED;
    return DMARC_OK;
}

/* }====================================================== */

/* ** {======================================================
** Outputs
** ======================================================= */

static void fill_verdict(const dmarc_eval *e, const dmarc__domain *d, bool has_domain,
                         dmarc_verdict *out)
{
    const char *dom = has_domain ? dmarc__str(e, d->off) : NULL;
    memset(out, 0, sizeof *out);
    out->result = d->result;
    out->author_domain = dom;
    out->policy_domain = dom != NULL && d->has_policy_domain ? dom + d->policy_off : NULL;
    out->org_domain = dom != NULL && d->has_org_out ? dom + d->org_out_off : NULL;
    out->has_policy = d->has_policy;
    out->policy = d->policy;
    out->policy_tag = d->policy_tag;
    out->applied = d->applied;
    out->reason = d->reason;
    out->spf_aligned = d->spf_aligned;
    out->dkim_aligned = d->dkim_aligned;
    out->testing = d->testing;
    out->author_exists = d->author_exists;
    out->record = d->record;
    out->error = d->error;
}

dmarc_status dmarc_eval_verdict(const dmarc_eval *e, dmarc_verdict *out)
{
    if (e == NULL || out == NULL)
        return DMARC_ERR_INVAL;
    if (e->state != DMARC__EVAL_DONE)
        return DMARC_ERR_STATE;
    fill_verdict(e, &e->final, e->final_has_author, out);
    return DMARC_OK;
}

unsigned dmarc_eval_flags(const dmarc_eval *e)
{
    if (e == NULL)
        return 0;
    return e->state == DMARC__EVAL_DONE ? e->flags : e->in_flags;
}

size_t dmarc_eval_domain_count(const dmarc_eval *e)
{
    return e == NULL ? 0 : e->ndom;
}

dmarc_status dmarc_eval_domain_verdict(const dmarc_eval *e, size_t i, dmarc_verdict *out)
{
    if (e == NULL || out == NULL)
        return DMARC_ERR_INVAL;
    if (e->state != DMARC__EVAL_DONE)
        return DMARC_ERR_STATE;
    if (i >= e->ndom)
        return DMARC_ERR_INVAL;
    fill_verdict(e, &e->dom[i], true, out);
    return DMARC_OK;
}

dmarc_align dmarc_eval_dkim_alignment(const dmarc_eval *e, size_t i)
{
    if (e == NULL || e->state != DMARC__EVAL_DONE || e->ndom == 0 || i >= e->ndkim)
        return DMARC_ALIGN_NONE;
    return (dmarc_align)e->final.dkim_align[i];
}

dmarc_align dmarc_eval_spf_alignment(const dmarc_eval *e)
{
    if (e == NULL || e->state != DMARC__EVAL_DONE || e->ndom == 0)
        return DMARC_ALIGN_NONE;
    return (dmarc_align)e->final.spf_align;
}

size_t dmarc_eval_query_count(const dmarc_eval *e)
{
    return e == NULL ? 0 : e->nasked;
}

const char *dmarc_eval_query_at(const dmarc_eval *e, size_t i, size_t *len, dmarc_qtype *type)
{
    const dmarc__answer *ans;
    if (e == NULL || i >= e->nasked)
        return NULL;
    ans = e->memo[e->asked[i]];
    if (len != NULL)
        *len = ans->name_len;
    if (type != NULL)
        *type = ans->type;
    return ans->name;
}

/* }====================================================== */
