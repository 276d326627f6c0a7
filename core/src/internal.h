/*
** Private declarations shared across core/src. Nothing here is installed.
** Cross-file internals carry the `dmarc__` prefix and hidden visibility.
*/
#ifndef DMARC_INTERNAL_H
#define DMARC_INTERNAL_H

#include <string.h>

#include "dmarc.h"

#if defined(__GNUC__) && __GNUC__ >= 4
#define DMARC__HIDDEN __attribute__((visibility("hidden")))
#else
#define DMARC__HIDDEN
#endif

/* Allocation through a dmarc_allocator (NULL fn: libc). Sizes are checked
** for overflow by dmarc__alloc_array. dmarc__free(a, NULL, n) is a no-op. */
DMARC__HIDDEN void *dmarc__alloc(const dmarc_allocator *a, size_t n);
DMARC__HIDDEN void *dmarc__alloc_array(const dmarc_allocator *a, size_t count, size_t size);
DMARC__HIDDEN void *dmarc__realloc(const dmarc_allocator *a, void *p, size_t osize, size_t nsize);
DMARC__HIDDEN void dmarc__free(const dmarc_allocator *a, void *p, size_t size);
/* Copy of s[0..len) with a terminating NUL; size to free is len + 1. */
DMARC__HIDDEN char *dmarc__strndup(const dmarc_allocator *a, const char *s, size_t len);

/* ASCII helpers: locale-independent. */
static inline int dmarc__lower(int c)
{
    return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}
static inline bool dmarc__is_wsp(int c)
{
    return c == ' ' || c == '\t';
}
static inline bool dmarc__is_alpha(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
static inline bool dmarc__is_digit(int c)
{
    return c >= '0' && c <= '9';
}
/* The one hash of the library (dmarc_hash): eight bytes per step, a
** multiply-xorshift mix. Inline because every lookup of every walk hashes
** its name: it is on the hot path of a cached run. */
static inline uint32_t dmarc__hash(uint32_t seed, const void *data, size_t len)
{
    const uint64_t k = 0x9e3779b97f4a7c15u;
    const unsigned char *p = data;
    uint64_t h = ((uint64_t)seed << 32 | (uint64_t)len) * k, w;
    while (len >= 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * k;
        h ^= h >> 32;
        p += 8;
        len -= 8;
    }
    if (len > 0) {
        w = 0;
        memcpy(&w, p, len);
        h = (h ^ w) * k;
        h ^= h >> 32;
    }
    h *= k;
    return (uint32_t)(h >> 32);
}

/* Case-insensitive ASCII compare of two byte strings of given lengths. */
DMARC__HIDDEN bool dmarc__ieq(const char *a, size_t alen, const char *b, size_t blen);

#endif /* DMARC_INTERNAL_H */
