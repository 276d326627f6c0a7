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
**   §2.1, RFC 5891 §4.2.3.1; libidn2 applies the same rule to mixed names).
** - U-labels go through UTS #46 non-transitional processing with NFC input,
**   the IDNA2008 reading RFC 5890 asks for, so `faß.de` stays `xn--fa-hia.de`.
**   Only when that refuses a name do we retry with transitional processing,
**   the IDNA2003-compatible mapping: names registered under IDNA2003 rules
**   (symbol and emoji labels under some ccTLDs) exist in DNS and publish
**   records, and a refused name leaves the message with no Author Domain, so a
**   spoofer could escape the policy of the domain above by adding one such
**   character (or an invisible ZERO WIDTH JOINER) to a subdomain. Names that
**   non-transitional processing accepts never reach the fallback, so ß, ς and
**   joiners in valid contexts keep their IDNA2008 meaning.
** - Labels already in A-label form (`xn--`) are lowercased and checked, never
**   re-encoded: libidn2 must accept the name and give back the very same
**   string, else the label is a fake A-label (RFC 5890 §2.3.2.1) and refused.
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

/*
** Check a lowercase ASCII name (no trailing dot) against the rules above.
** Sets *has_alabel when some label carries the ACE prefix.
*/
static dmarc_diag_code check_host_name(const char *s, size_t len, bool *has_alabel)
{
    size_t i, label_start = 0;

    if (len == 0)
        return DMARC_DIAG_NO_DOMAIN;
    if (len > DMARC_DOMAIN_MAX_LEN)
        return DMARC_DIAG_TOO_LONG;
    for (i = 0; i <= len; i++) {
        size_t label_len;
        if (i < len && s[i] != '.') {
            if (!is_host_char((unsigned char)s[i]))
                return DMARC_DIAG_NO_DOMAIN;
            continue;
        }
        label_len = i - label_start;
        if (label_len == 0)
            return DMARC_DIAG_NO_DOMAIN;
        if (label_len > DMARC__LABEL_MAX_LEN)
            return DMARC_DIAG_TOO_LONG;
        if (s[label_start] == '-' || s[i - 1] == '-')
            return DMARC_DIAG_NO_DOMAIN;
        if (label_len > ACE_PREFIX_LEN && memcmp(s + label_start, ACE_PREFIX, ACE_PREFIX_LEN) == 0)
            *has_alabel = true;
        label_start = i + 1;
    }
    return DMARC_DIAG_NONE;
}

/*
** IDNA lookup processing of a NUL-terminated name: non-transitional first,
** transitional only as the fallback explained at the top of the file.
** On IDN2_OK, *res is libidn2's malloc'd result (release with idn2_free).
*/
static int idna_to_ascii(const char *name, uint8_t **res)
{
    int rc = idn2_lookup_u8((const uint8_t *)name, res, IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL);
    if (rc != IDN2_OK) {
        *res = NULL;
        rc = idn2_lookup_u8((const uint8_t *)name, res, IDN2_NFC_INPUT | IDN2_TRANSITIONAL);
    }
    if (rc != IDN2_OK)
        *res = NULL;
    return rc;
}

/* An all-ASCII name whose xn-- labels must survive a round trip unchanged. */
static bool alabels_are_genuine(const char *name, size_t len)
{
    uint8_t *res = NULL;
    bool same;

    if (idna_to_ascii(name, &res) != IDN2_OK)
        return false;
    same = strlen((const char *)res) == len && memcmp(res, name, len) == 0;
    idn2_free(res);
    return same;
}

/* All-ASCII input: lowercase into buf and check; no libidn2 unless xn--. */
static dmarc_diag_code normalize_ascii(const char *in, size_t len, char *buf, size_t *buflen)
{
    bool has_alabel = false;
    dmarc_diag_code code;
    size_t i;

    /* [FROM-2]: exactly one trailing dot is the root, not part of the name. */
    if (len > 0 && in[len - 1] == '.')
        len--;
    if (len > DMARC_DOMAIN_MAX_LEN)
        return DMARC_DIAG_TOO_LONG;
    for (i = 0; i < len; i++)
        buf[i] = (char)dmarc__lower((unsigned char)in[i]);
    buf[len] = '\0';
    code = check_host_name(buf, len, &has_alabel);
    if (code != DMARC_DIAG_NONE)
        return code;
    if (has_alabel && !alabels_are_genuine(buf, len))
        return DMARC_DIAG_BAD_IDN;
    *buflen = len;
    return DMARC_DIAG_NONE;
}

/* Input with UTF-8: U-labels to A-labels through libidn2 [FROM-3]. */
static dmarc_diag_code normalize_idn(const char *in, size_t len, char *buf, size_t *buflen)
{
    char src[DMARC__DOMAIN_MAX_INPUT + 1];
    uint8_t *res = NULL;
    bool has_alabel = false;
    dmarc_diag_code code;
    size_t n;
    int rc;

    if (len > DMARC__DOMAIN_MAX_INPUT)
        return DMARC_DIAG_TOO_LONG;
    memcpy(src, in, len);
    src[len] = '\0';
    /* UTS #46 maps the ideographic and fullwidth full stops to '.', so the
    ** trailing dot is stripped from the result, where every dot is ASCII. */
    rc = idna_to_ascii(src, &res);
    if (rc == IDN2_TOO_BIG_DOMAIN || rc == IDN2_TOO_BIG_LABEL)
        return DMARC_DIAG_TOO_LONG;
    if (rc != IDN2_OK)
        return DMARC_DIAG_BAD_IDN;
    n = strlen((const char *)res);
    if (n > 0 && res[n - 1] == '.')
        n--;
    if (n > DMARC_DOMAIN_MAX_LEN) {
        idn2_free(res);
        return DMARC_DIAG_TOO_LONG;
    }
    memcpy(buf, res, n);
    buf[n] = '\0';
    idn2_free(res);
    /* libidn2 built the xn-- labels itself, so only the host-name shape is
    ** checked; a mapping that empties a label (soft hyphens) fails here. */
    code = check_host_name(buf, n, &has_alabel);
    if (code != DMARC_DIAG_NONE)
        return code == DMARC_DIAG_TOO_LONG ? code : DMARC_DIAG_BAD_IDN;
    *buflen = n;
    return DMARC_DIAG_NONE;
}

dmarc_status dmarc__domain_normalize(const char *in, size_t len, char *out, size_t outsz,
                                     size_t *outlen, dmarc_diag_code *why)
{
    char buf[DMARC_DOMAIN_MAX_LEN + 1];
    dmarc_diag_code code;
    size_t n = 0, i;
    bool ascii = true;

    if (why != NULL)
        *why = DMARC_DIAG_NONE;
    if ((in == NULL && len > 0) || out == NULL || outlen == NULL)
        return DMARC_ERR_INVAL;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '\0')
            break; /* a NUL would cut the name short for every C API after us */
        if (c >= 0x80)
            ascii = false;
    }
    if (len == 0 || i < len)
        code = DMARC_DIAG_NO_DOMAIN;
    else if (ascii)
        code = normalize_ascii(in, len, buf, &n);
    else
        code = normalize_idn(in, len, buf, &n);
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
