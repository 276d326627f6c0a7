/*
** A table-driven DNS answerer for tests: it runs an evaluation's NEED_DNS
** loop against a static zone, with no mocks.
**
** Zone semantics (the same as the "dns" map of tests/vectors/eval.jsonl):
** - an entry {name, type, rcode, txt...} answers questions for (name,
**   type); type 0 answers every type (e.g. a SERVFAIL for the whole name);
** - a TXT entry with NOERROR and no strings is NODATA;
** - a name that has entries, but none for the asked type, gives NODATA;
** - a name with no entry gives NXDOMAIN, unless some entry lies below it
**   (an empty non-terminal: NODATA).
*/
#ifndef FAKE_DNS_H
#define FAKE_DNS_H

#include <stdio.h>
#include <string.h>

#include "dmarc.h"

#define FAKE_MAX_TXT 8
/* Questions one fake_run answers before it gives up (a runaway loop). */
#define FAKE_MAX_STEPS 256

typedef struct fake_rr {
    const char *name;
    int type; /* a dmarc_qtype, or 0 for any type */
    dmarc_rcode rcode;
    const char *txt[FAKE_MAX_TXT]; /* NULL-terminated TXT RRs */
} fake_rr;

/* A zone: entries up to one with a NULL name. */
typedef struct fake_zone {
    const fake_rr *rr;
    uint32_t ttl; /* TTL handed to dmarc_eval_answer */
    size_t asked; /* questions answered so far */
    size_t steps; /* run calls */
} fake_zone;

static inline bool fake_below(const char *name, size_t len, const char *other)
{
    size_t olen = strlen(other);
    return olen > len && memcmp(other + olen - len, name, len) == 0 && other[olen - len - 1] == '.';
}

/* The answer to (name, type): *rc, and the TXT RRs into txt[] (count in *n). */
static inline void fake_lookup(const fake_zone *z, const char *name, size_t len, dmarc_qtype type,
                               dmarc_rcode *rc, dmarc_txt *txt, size_t *n)
{
    const fake_rr *r;
    bool name_known = false, below = false;
    size_t i;

    *n = 0;
    for (r = z->rr; r != NULL && r->name != NULL; r++) {
        if (strlen(r->name) == len && memcmp(r->name, name, len) == 0) {
            name_known = true;
            if (r->type == 0 || r->type == (int)type) {
                *rc = r->rcode;
                /* Other types hand their data over as text: only its
                ** presence matters to the engine. */
                if (r->rcode == DMARC_RCODE_NOERROR) {
                    for (i = 0; i < FAKE_MAX_TXT && r->txt[i] != NULL; i++) {
                        txt[i].data = r->txt[i];
                        txt[i].len = strlen(r->txt[i]);
                    }
                    *n = i;
                }
                if (*rc == DMARC_RCODE_NOERROR && *n == 0)
                    *rc = DMARC_RCODE_NODATA;
                return;
            }
        } else if (fake_below(name, len, r->name)) {
            below = true;
        }
    }
    *rc = name_known || below ? DMARC_RCODE_NODATA : DMARC_RCODE_NXDOMAIN;
}

/* Drive @e to the end against @z: answer the pending question if there is
** one (so a call that failed with NOMEM can simply be repeated), run, and
** so on. Returns the last status of run (DMARC_OK when the verdict is
** ready), or of answer if that failed. z->steps counts the questions. */
static inline dmarc_status fake_run(dmarc_eval *e, fake_zone *z)
{
    dmarc_status st;
    dmarc_txt txt[FAKE_MAX_TXT];

    for (z->steps = 0; z->steps < FAKE_MAX_STEPS;) {
        const char *q;
        size_t qlen, n;
        dmarc_qtype type;
        dmarc_rcode rc;

        q = dmarc_eval_query(e, &qlen, &type);
        if (q == NULL) {
            st = dmarc_eval_run(e);
            if (st != DMARC_NEED_DNS)
                return st;
            continue;
        }
        z->steps++;
        fake_lookup(z, q, qlen, type, &rc, txt, &n);
        st = dmarc_eval_answer(e, rc, txt, n, z->ttl);
        if (st != DMARC_OK)
            return st;
        z->asked++;
    }
    return DMARC_ERR_LIMIT;
}

/* The query log as "name/TYPE" strings joined by spaces, for messages. */
static inline void fake_log(const dmarc_eval *e, char *buf, size_t size)
{
    size_t i, used = 0;
    buf[0] = '\0';
    for (i = 0; i < dmarc_eval_query_count(e); i++) {
        size_t len;
        dmarc_qtype type;
        const char *q = dmarc_eval_query_at(e, i, &len, &type);
        int w = snprintf(buf + used, size - used, "%s%.*s/%s", i ? " " : "", (int)len, q,
                         dmarc_qtype_name(type));
        if (w < 0 || (size_t)w >= size - used)
            return;
        used += (size_t)w;
    }
}

#endif /* FAKE_DNS_H */
