/*
** Domain normalization [FROM-2] [FROM-3]: the one place where a name from a
** From field, an SPF identity or a DKIM d= becomes the lowercase A-label form
** that discovery, alignment and reports compare byte for byte.
**
** Choices the RFCs leave to us, and why:
** - Underscore is accepted in labels. DNS allows any octet (RFC 2181 §11) and
**   underscore labels are everywhere in it (`_dmarc`, `_domainkey`); DKIM d=
**   never carries one, but a From domain may, and refusing it would turn a spoof
**   of `x@a_b.bank.example` into "no DMARC at all" while the tree walk would
**   have found bank.example's policy. Other characters outside letters, digits
**   and hyphen are refused, and no label starts or ends with a hyphen (RFC 1123
**   §2.1, RFC 5891 §4.2.3.1).
** - U-labels go through UTS #46 non-transitional processing with NFC input,
**   the IDNA2008 reading RFC 5890 asks for, so `faß.de` stays `xn--fa-hia.de`.
**   Only when that refuses a label do we retry with transitional processing,
**   the IDNA2003-compatible mapping: names registered under IDNA2003 rules
**   (symbol and emoji labels under some ccTLDs) exist in DNS and publish
**   records, and a refused label leaves the message with no Author Domain, so a
**   spoofer could escape the policy of the domain above by adding one such
**   character (or an invisible ZERO WIDTH JOINER) to a subdomain. Labels that
**   non-transitional processing accepts never reach the fallback, so ß, ς and
**   joiners in valid contexts keep their IDNA2008 meaning.
** - Labels already in A-label form (`xn--`) are lowercased and checked, never
**   re-encoded: libidn2 must accept the label and give back the very same
**   string, else it is a fake A-label (RFC 5890 §2.3.2.1) and refused.
** - Labels are handled one at a time, so an ASCII label obeys the same rules
**   whether or not its name also holds U-labels (libidn2 would otherwise
**   refuse `ab--cd` next to a U-label and nowhere else).
*/
#include <string.h>

#include <idn2.h>

#include "domain.h"

/* The ACE prefix of an A-label (RFC 5890 §2.3.2.5), compared lowercase. */
#define ACE_PREFIX "xn--"
#define ACE_PREFIX_LEN 4

static bool is_host_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || dmarc__is_digit(c) || c == '-' || c == '_';
}

/* One lowercase ASCII label against the rules above. */
static dmarc_diag_code check_label(const char *s, size_t len)
{
    size_t i;

    if (len == 0)
        return DMARC_DIAG_NO_DOMAIN;
    if (len > DMARC__LABEL_MAX_LEN)
        return DMARC_DIAG_TOO_LONG;
    if (s[0] == '-' || s[len - 1] == '-')
        return DMARC_DIAG_NO_DOMAIN;
    for (i = 0; i < len; i++)
        if (!is_host_char((unsigned char)s[i]))
            return DMARC_DIAG_NO_DOMAIN;
    return DMARC_DIAG_NONE;
}

static bool has_ace_prefix(const char *s, size_t len)
{
    return len > ACE_PREFIX_LEN && memcmp(s, ACE_PREFIX, ACE_PREFIX_LEN) == 0;
}

/*
** IDNA lookup processing of a NUL-terminated label: non-transitional first,
** transitional only as the fallback explained at the top of the file.
** On IDN2_OK, *res is libidn2's malloc'd result (release with idn2_free).
*/
static int idna_to_ascii(const char *label, uint8_t **res)
{
    int rc = idn2_lookup_u8((const uint8_t *)label, res, IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL);
    if (rc != IDN2_OK) {
        *res = NULL;
        rc = idn2_lookup_u8((const uint8_t *)label, res, IDN2_NFC_INPUT | IDN2_TRANSITIONAL);
    }
    if (rc != IDN2_OK)
        *res = NULL;
    return rc;
}

/* An xn-- label (lowercase, NUL-terminated) that survives a round trip. */
static bool alabel_is_genuine(const char *label, size_t len)
{
    uint8_t *res = NULL;
    bool same;

    if (idna_to_ascii(label, &res) != IDN2_OK)
        return false;
    same = strlen((const char *)res) == len && memcmp(res, label, len) == 0;
    idn2_free(res);
    return same;
}

/* Append @len bytes to the name being built, with a dot before all but the
** first label. */
static dmarc_diag_code append_label(char *buf, size_t *n, const char *label, size_t len)
{
    size_t need = len + (*n > 0 ? 1 : 0);

    if (need > DMARC_DOMAIN_MAX_LEN - *n)
        return DMARC_DIAG_TOO_LONG;
    if (*n > 0)
        buf[(*n)++] = '.';
    memcpy(buf + *n, label, len);
    *n += len;
    return DMARC_DIAG_NONE;
}

/* An ASCII label: lowercase, check, and check an A-label's encoding. */
static dmarc_diag_code ascii_label(const char *in, size_t len, char *buf, size_t *n)
{
    char label[DMARC__LABEL_MAX_LEN + 1];
    dmarc_diag_code code;
    size_t i;

    if (len > DMARC__LABEL_MAX_LEN)
        return DMARC_DIAG_TOO_LONG;
    for (i = 0; i < len; i++)
        label[i] = (char)dmarc__lower((unsigned char)in[i]);
    label[len] = '\0';
    code = check_label(label, len);
    if (code != DMARC_DIAG_NONE)
        return code;
    if (has_ace_prefix(label, len) && !alabel_is_genuine(label, len))
        return DMARC_DIAG_BAD_IDN;
    return append_label(buf, n, label, len);
}

/*
** A label with UTF-8: to an A-label through libidn2 [FROM-3]. UTS #46 maps
** the ideographic and fullwidth full stops to '.', so the result may hold
** several labels, each checked; when it is the last one, a dot it ends with
** is the root.
*/
static dmarc_diag_code unicode_label(const char *in, size_t len, bool last, char *buf, size_t *n)
{
    char src[DMARC__DOMAIN_MAX_INPUT + 1];
    uint8_t *res = NULL;
    const char *r;
    dmarc_diag_code code = DMARC_DIAG_NONE;
    size_t rlen, start, end;
    int rc;

    memcpy(src, in, len);
    src[len] = '\0';
    rc = idna_to_ascii(src, &res);
    if (rc == IDN2_TOO_BIG_DOMAIN || rc == IDN2_TOO_BIG_LABEL)
        return DMARC_DIAG_TOO_LONG;
    if (rc != IDN2_OK)
        return DMARC_DIAG_BAD_IDN;
    r = (const char *)res;
    rlen = strlen(r);
    if (last && rlen > 0 && r[rlen - 1] == '.')
        rlen--;
    /* libidn2 built the xn-- labels itself: only their shape is checked. A
    ** mapping that empties a label (soft hyphens) fails here. Bounded by the
    ** result, each round one label. */
    for (start = 0; code == DMARC_DIAG_NONE; start = end + 1) {
        end = start;
        while (end < rlen && r[end] != '.')
            end++;
        code = check_label(r + start, end - start);
        if (code == DMARC_DIAG_NONE)
            code = append_label(buf, n, r + start, end - start);
        else if (code != DMARC_DIAG_TOO_LONG)
            code = DMARC_DIAG_BAD_IDN;
        if (end >= rlen)
            break;
    }
    idn2_free(res);
    return code;
}

/* The name, label by label, into buf (DMARC_DOMAIN_MAX_LEN + 1 bytes). */
static dmarc_diag_code normalize_name(const char *in, size_t len, char *buf, size_t *buflen)
{
    dmarc_diag_code code;
    size_t start = 0, end, n = 0;

    if (len == 0)
        return DMARC_DIAG_NO_DOMAIN;
    if (len > DMARC__DOMAIN_MAX_INPUT)
        return DMARC_DIAG_TOO_LONG;
    /* Bounded by the input: each round consumes one label and its dot. */
    for (;;) {
        bool ascii = true;
        for (end = start; end < len && in[end] != '.'; end++)
            if ((unsigned char)in[end] >= 0x80)
                ascii = false;
        if (ascii)
            code = ascii_label(in + start, end - start, buf, &n);
        else
            code = unicode_label(in + start, end - start, end == len, buf, &n);
        if (code != DMARC_DIAG_NONE)
            return code;
        /* [FROM-2]: exactly one trailing dot is the root, not a label. */
        if (end == len || end + 1 == len)
            break;
        start = end + 1;
    }
    buf[n] = '\0';
    *buflen = n;
    return n > 0 ? DMARC_DIAG_NONE : DMARC_DIAG_NO_DOMAIN;
}

dmarc_status dmarc__domain_normalize(const char *in, size_t len, char *out, size_t outsz,
                                     size_t *outlen, dmarc_diag_code *why)
{
    char buf[DMARC_DOMAIN_MAX_LEN + 1];
    dmarc_diag_code code;
    size_t n = 0;

    if (why != NULL)
        *why = DMARC_DIAG_NONE;
    if ((in == NULL && len > 0) || out == NULL || outlen == NULL)
        return DMARC_ERR_INVAL;
    /* A NUL would cut the name short for every C API after us. */
    if (len > 0 && memchr(in, '\0', len) != NULL)
        code = DMARC_DIAG_NO_DOMAIN;
    else
        code = normalize_name(in, len, buf, &n);
    if (code != DMARC_DIAG_NONE) {
        if (why != NULL)
            *why = code;
        return DMARC_ERR_SYNTAX;
    }
    /* The caller's buffer is only touched on success. */
    if (n + 1 > outsz)
        return DMARC_ERR_INVAL;
    memcpy(out, buf, n + 1);
    *outlen = n;
    return DMARC_OK;
}

dmarc_status dmarc_domain_normalize(const char *in, size_t len, char *out, size_t outsz,
                                    size_t *outlen)
{
    return dmarc__domain_normalize(in, len, out, outsz, outlen, NULL);
}
