/*
** Contexts: the immutable configuration shared by evaluations.
*/
#include <string.h>

#include "eval.h"

void dmarc_options_init(dmarc_options *o)
{
    if (o == NULL)
        return;
    memset(o, 0, sizeof *o);
    o->mode = DMARC_MODE_RFC9989;
    o->alloc.fn = NULL;
    o->alloc.ud = NULL;
    o->psl = NULL;
    o->psl_ud = NULL;
    o->pct_as_testing = false;
    o->full_org_walk = false;
    o->failure_org_walk = false;
    o->max_author_domains = DMARC_MAX_AUTHOR_DOMAINS;
}

dmarc_ctx *dmarc_ctx_new(const dmarc_options *o, dmarc_status *st)
{
    dmarc_ctx *c;
    dmarc_status dummy;

    if (st == NULL)
        st = &dummy;
    if (o == NULL || (unsigned)o->mode >= DMARC_MODE__COUNT) {
        *st = DMARC_ERR_INVAL;
        return NULL;
    }
    /* [MODE-1]: RFC 7489 discovery and alignment need the PSL (§3.2). */
    if (o->mode == DMARC_MODE_RFC7489 && o->psl == NULL) {
        *st = DMARC_ERR_INVAL;
        return NULL;
    }
    /* [OPEN-5]: the cap on evaluated author domains is a DoS guard. */
    if (o->max_author_domains < 1 || o->max_author_domains > DMARC_MAX_AUTHOR_DOMAINS) {
        *st = DMARC_ERR_INVAL;
        return NULL;
    }
    c = dmarc__alloc(&o->alloc, sizeof *c);
    if (c == NULL) {
        *st = DMARC_ERR_NOMEM;
        return NULL;
    }
    c->opt = *o;
    *st = DMARC_OK;
    return c;
}

void dmarc_ctx_free(dmarc_ctx *c)
{
    dmarc_allocator a;
    if (c == NULL)
        return;
    a = c->opt.alloc;
    dmarc__free(&a, c, sizeof *c);
}

dmarc_mode dmarc_ctx_mode(const dmarc_ctx *c)
{
    return c == NULL ? DMARC_MODE_RFC9989 : c->opt.mode;
}
