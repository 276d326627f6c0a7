/*
** libpsl adapter: the RFC 7489 Org Domain (Public Suffix List) strategy for
** dmarc_options.psl. This file does I/O (libpsl may read the list from disk
** when loaded), so it sits beside the sans-I/O core, not in it.
*/
#ifndef DMARC_PSL_H
#define DMARC_PSL_H

#include "dmarc.h"

typedef struct dmarc_psl dmarc_psl;

/* Load the newest of @file (may be NULL), the distribution's list and the
** built-in one (libpsl's psl_latest) [PSL-3] [PSL-6]. NULL if none loads. */
DMARC_API dmarc_psl *dmarc_psl_load(const char *file);
DMARC_API void dmarc_psl_free(dmarc_psl *p);

/* The dmarc_orgdomain_fn to put in dmarc_options.psl, with @ud the
** dmarc_psl. Both PSL sections count [OPEN-2]. */
DMARC_API dmarc_status dmarc_psl_orgdomain(void *ud, const char *domain, size_t len,
                                           size_t *org_off, bool *is_suffix);

#endif
