/*
** Org Domain through libpsl (RFC 7489 §3.2, standards [PSL-1..6]).
*/
#include <libpsl.h>
#include <stdlib.h>
#include <string.h>

#include "dmarc_psl.h"

struct dmarc_psl {
    psl_ctx_t *psl;
};

dmarc_psl *dmarc_psl_load(const char *file)
{
    dmarc_psl *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    /* psl_latest picks the newest of the given file, the distribution's
    ** list and the built-in data [PSL-3]; it falls back to built-in. */
    p->psl = psl_latest(file);
    if (p->psl == NULL) {
        free(p);
        return NULL;
    }
    return p;
}

void dmarc_psl_free(dmarc_psl *p)
{
    if (p == NULL)
        return;
    psl_free(p->psl);
    free(p);
}

dmarc_status dmarc_psl_orgdomain(void *ud, const char *domain, size_t len, size_t *org_off,
                                 bool *is_suffix)
{
    const dmarc_psl *p = ud;
    char buf[DMARC_DOMAIN_MAX_LEN + 1];
    const char *reg;

    if (p == NULL || domain == NULL || org_off == NULL || is_suffix == NULL)
        return DMARC_ERR_INVAL;
    if (len == 0 || len > DMARC_DOMAIN_MAX_LEN)
        return DMARC_ERR_INVAL;
    /* libpsl wants a NUL-terminated lowercase name [PSL-5]; the core hands
    ** over normalized names, so a copy is all that is needed. */
    memcpy(buf, domain, len);
    buf[len] = '\0';
    reg = psl_registrable_domain(p->psl, buf);
    if (reg == NULL) {
        /* The name is itself a public suffix (or has no registrable part):
        ** it is its own Org Domain and never aligns relaxed [PSL-1] [ALN-6]. */
        *org_off = 0;
        *is_suffix = true;
        return DMARC_OK;
    }
    *org_off = (size_t)(reg - buf);
    *is_suffix = false;
    return DMARC_OK;
}
