/*
** Private declarations shared across core/src. Nothing here is installed.
** Cross-file internals carry the `dmarc__` prefix and hidden visibility.
*/
#ifndef DMARC_INTERNAL_H
#define DMARC_INTERNAL_H

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
/* Case-insensitive ASCII compare of two byte strings of given lengths. */
DMARC__HIDDEN bool dmarc__ieq(const char *a, size_t alen, const char *b, size_t blen);

#endif /* DMARC_INTERNAL_H */
