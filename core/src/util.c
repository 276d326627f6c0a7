/*
** Allocation through the per-context hook, enum names, status text.
*/
#include <stdlib.h>
#include <string.h>

#include "internal.h"

void *dmarc__realloc(const dmarc_allocator *a, void *p, size_t osize, size_t nsize)
{
    if (a != NULL && a->fn != NULL)
        return a->fn(a->ud, p, osize, nsize);
    if (nsize == 0) {
        free(p);
        return NULL;
    }
    return realloc(p, nsize);
}

void *dmarc_realloc(const dmarc_allocator *a, void *p, size_t osize, size_t nsize)
{
    return dmarc__realloc(a, p, osize, nsize);
}

uint32_t dmarc_hash(uint32_t seed, const void *data, size_t len)
{
    return dmarc__hash(seed, data, len);
}

void *dmarc__alloc(const dmarc_allocator *a, size_t n)
{
    /* A zero-size request would mean "free" to a lua_Alloc-shaped hook. */
    return dmarc__realloc(a, NULL, 0, n == 0 ? 1 : n);
}

void *dmarc__alloc_array(const dmarc_allocator *a, size_t count, size_t size)
{
    if (size != 0 && count > (size_t)-1 / size)
        return NULL;
    return dmarc__alloc(a, count * size);
}

void dmarc__free(const dmarc_allocator *a, void *p, size_t size)
{
    if (p != NULL)
        (void)dmarc__realloc(a, p, size, 0);
}

char *dmarc__strndup(const dmarc_allocator *a, const char *s, size_t len)
{
    char *d;
    if (len == (size_t)-1)
        return NULL;
    d = dmarc__alloc(a, len + 1);
    if (d == NULL)
        return NULL;
    if (len > 0)
        memcpy(d, s, len);
    d[len] = '\0';
    return d;
}

bool dmarc__ieq(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t i;
    if (alen != blen)
        return false;
    for (i = 0; i < alen; i++)
        if (dmarc__lower((unsigned char)a[i]) != dmarc__lower((unsigned char)b[i]))
            return false;
    return true;
}

const char *dmarc_version(void)
{
    return DMARC_VERSION_STRING;
}

const char *dmarc_strerror(dmarc_status st)
{
    switch (st) {
    case DMARC_OK:
        return "ok";
    case DMARC_NEED_DNS:
        return "a DNS answer is needed";
    case DMARC_ERR_NOMEM:
        return "out of memory";
    case DMARC_ERR_INVAL:
        return "invalid argument";
    case DMARC_ERR_STATE:
        return "call not allowed in this state";
    case DMARC_ERR_LIMIT:
        return "limit exceeded";
    case DMARC_ERR_SYNTAX:
        return "syntax error";
    }
    return "unknown status";
}

/* ** {======================================================
** Enum names, generated from the X-macro lists in dmarc.h
** ======================================================= */

#define NAME_STR(U, l) #l,
#define DEFINE_NAMES(type, MAP)                                                                    \
    static const char *const type##_names[] = {MAP(NAME_STR)};                                     \
    const char *type##_name(type v);                                                               \
    const char *type##_name(type v)                                                                \
    {                                                                                              \
        if ((int)v < 0 || (size_t)v >= sizeof(type##_names) / sizeof(type##_names[0]))             \
            return NULL;                                                                           \
        return type##_names[v];                                                                    \
    }

DEFINE_NAMES(dmarc_policy, DMARC_POLICY_MAP)
DEFINE_NAMES(dmarc_result, DMARC_RESULT_MAP)
DEFINE_NAMES(dmarc_auth, DMARC_AUTH_MAP)
DEFINE_NAMES(dmarc_mode, DMARC_MODE_MAP)
DEFINE_NAMES(dmarc_align, DMARC_ALIGN_MAP)
DEFINE_NAMES(dmarc_psd, DMARC_PSD_MAP)
DEFINE_NAMES(dmarc_reason, DMARC_REASON_MAP)
DEFINE_NAMES(dmarc_rcode, DMARC_RCODE_MAP)
DEFINE_NAMES(dmarc_policy_tag, DMARC_POLICY_TAG_MAP)

/* The diag names keep their public name dmarc_diag_name (no dmarc_diag_code_name). */
static const char *const dmarc_diag_code_names[] = {DMARC_DIAG_MAP(NAME_STR)};

const char *dmarc_diag_name(dmarc_diag_code v)
{
    if ((int)v < 0 || (size_t)v >= sizeof(dmarc_diag_code_names) / sizeof(dmarc_diag_code_names[0]))
        return NULL;
    return dmarc_diag_code_names[v];
}

const char *dmarc_qtype_name(dmarc_qtype v)
{
    switch (v) {
#define QTYPE_CASE(U, s, n)                                                                        \
    case DMARC_QTYPE_##U:                                                                          \
        return #s;
        DMARC_QTYPE_MAP(QTYPE_CASE)
#undef QTYPE_CASE
    }
    return NULL;
}

const char *dmarc_flag_name(unsigned flag)
{
    switch (flag) {
#define FLAG_CASE(U, l, b)                                                                         \
    case DMARC_FLAG_##U:                                                                           \
        return #l;
        DMARC_FLAG_MAP(FLAG_CASE)
#undef FLAG_CASE
    }
    return NULL;
}

#define DEFINE_FROM_NAME(type, prefix)                                                             \
    dmarc_status prefix##_from_name(const char *s, size_t len, type *out)                          \
    {                                                                                              \
        size_t i;                                                                                  \
        if (s == NULL || out == NULL)                                                              \
            return DMARC_ERR_INVAL;                                                                \
        for (i = 0; i < sizeof(type##_names) / sizeof(type##_names[0]); i++) {                     \
            if (dmarc__ieq(s, len, type##_names[i], strlen(type##_names[i]))) {                    \
                *out = (type)i;                                                                    \
                return DMARC_OK;                                                                   \
            }                                                                                      \
        }                                                                                          \
        return DMARC_ERR_INVAL;                                                                    \
    }

DEFINE_FROM_NAME(dmarc_policy, dmarc_policy)
DEFINE_FROM_NAME(dmarc_auth, dmarc_auth)
DEFINE_FROM_NAME(dmarc_mode, dmarc_mode)
DEFINE_FROM_NAME(dmarc_rcode, dmarc_rcode)

/* }====================================================== */
