/*
** The test allocator every C suite shares: fails the Nth request (1-based;
** 0 never), counts what is live in blocks and bytes, and checks that every
** free hands back the size the block was allocated with. The
** failing-allocation loops built on it prove each step returns
** DMARC_ERR_NOMEM cleanly and leaks nothing.
*/
#ifndef DMARC_TEST_FAILING_ALLOC_H
#define DMARC_TEST_FAILING_ALLOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "dmarc.h"

typedef struct failing_alloc {
    size_t fail_at;     /* the request that fails, 1-based; 0: none */
    size_t count;       /* requests so far */
    size_t live;        /* blocks not freed */
    size_t live_bytes;  /* bytes not freed */
    bool failed;        /* the failure happened */
    bool size_mismatch; /* a free or realloc gave an old size larger than what was live */
} failing_alloc;

static inline void *failing_alloc_fn(void *ud, void *ptr, size_t osize, size_t nsize)
{
    failing_alloc *a = ud;
    void *p;
    if (ptr == NULL)
        osize = 0; /* lua_Alloc convention: osize says something else then */
    if (osize > a->live_bytes)
        a->size_mismatch = true;
    if (nsize == 0) {
        if (ptr != NULL) {
            a->live--;
            a->live_bytes -= osize <= a->live_bytes ? osize : a->live_bytes;
        }
        free(ptr);
        return NULL;
    }
    a->count++;
    if (a->fail_at != 0 && a->count == a->fail_at) {
        a->failed = true;
        return NULL;
    }
    p = realloc(ptr, nsize);
    if (p != NULL) {
        if (ptr == NULL)
            a->live++;
        a->live_bytes = a->live_bytes - (osize <= a->live_bytes ? osize : a->live_bytes) + nsize;
    }
    return p;
}

/* A fresh allocator state failing request @fail_at, and its hook. */
static inline void failing_alloc_init(failing_alloc *a, size_t fail_at)
{
    memset(a, 0, sizeof *a);
    a->fail_at = fail_at;
}

static inline dmarc_allocator failing_allocator(failing_alloc *a)
{
    dmarc_allocator al;
    al.fn = failing_alloc_fn;
    al.ud = a;
    return al;
}

#endif
