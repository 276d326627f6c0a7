/*
** Domain normalization shared by the From parser and the evaluator.
*/
#ifndef DMARC_DOMAIN_H
#define DMARC_DOMAIN_H

#include "internal.h"

/*
** Longest input dmarc_domain_normalize looks at, in bytes. A name of
** DMARC_DOMAIN_MAX_LEN characters in A-label form can be written with at most
** four UTF-8 bytes per character, plus one trailing dot; anything longer can
** only be padding (ignorable code points), so it is refused before libidn2 is
** asked to do any work.
*/
#define DMARC__DOMAIN_MAX_INPUT (4 * (DMARC_DOMAIN_MAX_LEN + 1))

/* RFC 1035 §2.3.4: a label holds at most 63 octets. */
#define DMARC__LABEL_MAX_LEN 63

/*
** dmarc__domain_normalize: dmarc_domain_normalize with the reason for a
** refusal. On DMARC_ERR_SYNTAX, *why (if not NULL) is DMARC_DIAG_BAD_IDN (a
** U-label or xn-- label that does not convert or check [FROM-3]),
** DMARC_DIAG_TOO_LONG (over DMARC_DOMAIN_MAX_LEN or a label over 63) or
** DMARC_DIAG_NO_DOMAIN (empty, empty label, NUL, a character no host name
** has). On DMARC_OK, *why is DMARC_DIAG_NONE. Allocates nothing of ours
** (libidn2 uses malloc internally and its results are released at once).
*/
DMARC__HIDDEN dmarc_status dmarc__domain_normalize(const char *in, size_t len, char *out,
                                                   size_t outsz, size_t *outlen,
                                                   dmarc_diag_code *why);

/*
** dmarc__from_lenient: the Author Domain a mail reader would show for a From
** field value that does not parse strictly, when that is unambiguous
** (RFC 9989 §11.5). Every '@' in the value must be followed (after optional
** white space) by a run of host-name bytes that normalizes, and all of them
** must give the same domain; at most DMARC_FROM_MAX_MAILBOXES '@' are looked
** at. On true @out (DMARC_DOMAIN_MAX_LEN + 1 bytes) holds the normalized
** domain and *outlen its length. Linear in @len.
*/
DMARC__HIDDEN bool dmarc__from_lenient(const char *raw, size_t len, char *out, size_t *outlen);

#endif /* DMARC_DOMAIN_H */
