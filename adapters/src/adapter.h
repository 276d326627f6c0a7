/*
** What the adapters share, built on the core's public API only (dmarc.h):
** allocation through a caller's dmarc_allocator and locale-independent
** ASCII helpers. Private to adapters/src; nothing here is installed.
*/
#ifndef DMARC_ADAPTER_H
#define DMARC_ADAPTER_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "dmarc.h"

/* Allocation through @a (NULL: libc). A zero-size request is made one byte:
** a lua_Alloc-shaped hook would take size 0 for "free". */
static inline void *adapter_alloc(const dmarc_allocator *a, size_t n)
{
    return dmarc_realloc(a, NULL, 0, n == 0 ? 1 : n);
}

static inline void *adapter_alloc_array(const dmarc_allocator *a, size_t count, size_t size)
{
    if (size != 0 && count > (size_t)-1 / size)
        return NULL;
    return adapter_alloc(a, count * size);
}

static inline void *adapter_realloc(const dmarc_allocator *a, void *p, size_t osize, size_t nsize)
{
    return dmarc_realloc(a, p, osize, nsize);
}

static inline void adapter_free(const dmarc_allocator *a, void *p, size_t size)
{
    if (p != NULL)
        (void)dmarc_realloc(a, p, size, 0);
}

/* Copy of s[0..len) with a terminating NUL; the size to free is len + 1. */
static inline char *adapter_strndup(const dmarc_allocator *a, const char *s, size_t len)
{
    char *d;
    if (len == (size_t)-1)
        return NULL;
    d = (char *)adapter_alloc(a, len + 1);
    if (d == NULL)
        return NULL;
    if (len > 0)
        memcpy(d, s, len);
    d[len] = '\0';
    return d;
}

static inline int adapter_lower(int c)
{
    return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}

/* Case-insensitive ASCII compare of two byte strings of given lengths. */
static inline bool adapter_ieq(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t i;
    if (alen != blen)
        return false;
    for (i = 0; i < alen; i++)
        if (adapter_lower((unsigned char)a[i]) != adapter_lower((unsigned char)b[i]))
            return false;
    return true;
}

#endif /* DMARC_ADAPTER_H */
