/*
** The query loop in C: the core asks, the caller answers. README.md shows this file;
** `make check` (tests/examples-check) builds and runs it.
*/
#include <dmarc.h>
#include <stdio.h>
#include <string.h>

/* A stand-in for a real resolver: one record, everything else NXDOMAIN. */
static dmarc_rcode lookup(const char *name, dmarc_qtype type, dmarc_txt *txt, size_t *n)
{
    static const char rec[] = "v=DMARC1; p=reject; rua=mailto:dmarc@example.com";
    *n = 0;
    if (type == DMARC_QTYPE_TXT && strcmp(name, "_dmarc.example.com") == 0) {
        txt[0].data = rec;
        txt[0].len = sizeof rec - 1;
        *n = 1;
        return DMARC_RCODE_NOERROR;
    }
    return DMARC_RCODE_NXDOMAIN;
}

int main(void)
{
    dmarc_options opt;
    dmarc_status st;
    dmarc_options_init(&opt); /* RFC 9989 tree walk by default */
    dmarc_ctx *ctx = dmarc_ctx_new(&opt, &st);
    dmarc_eval *ev = dmarc_eval_new(ctx, NULL, &st);

    const char from[] = "\"Alice\" <alice@example.com>";
    dmarc_eval_add_from(ev, from, sizeof from - 1);
    dmarc_eval_add_dkim(ev, "example.com", 11, "sel", 3, DMARC_AUTH_PASS);
    dmarc_eval_add_spf(ev, "bounce.example.net", 18, DMARC_AUTH_PASS, false);

    while ((st = dmarc_eval_run(ev)) == DMARC_NEED_DNS) {
        size_t len, n;
        dmarc_qtype type;
        dmarc_txt txt[4];
        const char *name = dmarc_eval_query(ev, &len, &type);
        dmarc_rcode rc = lookup(name, type, txt, &n); /* do the I/O any way you like */
        dmarc_eval_answer(ev, rc, txt, n, 300);
    }
    dmarc_verdict v;
    if (st == DMARC_OK && dmarc_eval_verdict(ev, &v) == DMARC_OK)
        printf("dmarc=%s header.from=%s policy.dmarc=%s\n", dmarc_result_name(v.result),
               v.author_domain, v.has_policy ? dmarc_policy_name(v.applied) : "-");
    dmarc_eval_free(ev);
    dmarc_ctx_free(ctx);
    return 0;
}
