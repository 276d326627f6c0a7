/*
** DMARC policy record parser (RFC 9989 §4.7, §4.8; RFC 7489 §6.3, §6.4).
**
** One pass over the TXT text fills a parse state on the stack (values,
** offsets of the URIs, warnings); then one allocation receives the record,
** its URI arrays, its warnings and copies of its strings, so a record costs
** a single call to the allocator and dmarc_record_free a single release.
**
** Rule IDs ([REC-3], [EVAL-7] ...) refer to the project's standards digest.
**
** Readings of points the RFCs leave open, pinned by tests/c/test_record.c:
** - A tag-spec with a syntax error (no `=`, an empty value, a byte outside
**   printable ASCII) is discarded as if absent [REC-5]; for p/sp/np only a
**   well-formed value that is not a policy keyword is "invalid" (bad_*) in
**   the sense of [EVAL-7]. So `p=reject; sp` stays p=reject (section 14),
**   and an empty `p=` is a missing p.
** - [OPEN-1] counts every tag name, unknown ones too (RFC 6376 §3.2 calls
**   any tag-list with a repeated name invalid); a bare tag is no occurrence.
** - An empty tag-spec (`;;`) is a harmless SYNTAX warning.
** - A URI needs something after its scheme; `!0` is a well-formed size and
**   reads as "no limit" (max_size 0).
*/
#include <string.h>

#include "internal.h"

/* ** {======================================================
** Tags
** ======================================================= */

enum tag_id {
    TAG_V,
    TAG_P,
    TAG_SP,
    TAG_NP,
    TAG_ADKIM,
    TAG_ASPF,
    TAG_PCT,
    TAG_T,
    TAG_PSD,
    TAG_FO,
    TAG_RF,
    TAG_RI,
    TAG_RUA,
    TAG_RUF,
    TAG__COUNT,
    TAG_UNKNOWN = TAG__COUNT
};

/* Longest known tag name (adkim): longer names are unknown at once. */
#define RECORD_LONGEST_TAG 5

/* }====================================================== */

/* ** {======================================================
** Parse state
** ======================================================= */

/* A URI kept while parsing: where it is in the input, and what its suffix said. */
struct uri_span {
    size_t off, len;
    uint64_t max_size;
    bool is_mailto;
};

enum { LIST_RUA, LIST_RUF, LIST__COUNT };

struct parse_state {
    dmarc_mode mode;
    const char *txt;
    size_t len;

    dmarc_record rec;                   /* the values, defaults filled in */
    dmarc_policy p_val, sp_val, np_val; /* valid p/sp/np as parsed */

    unsigned seen;    /* bit per enum tag_id met (by name) */
    size_t tag_count; /* tag-specs read, v included [DMARC_RECORD_MAX_TAGS] */
    struct {
        size_t off, len;
    } unknown[DMARC_RECORD_MAX_TAGS]; /* names of unknown tags, for [OPEN-1] */
    size_t unknown_count;

    struct uri_span uris[LIST__COUNT][DMARC_RECORD_MAX_URIS];
    size_t uri_count[LIST__COUNT];
    size_t uri_bytes; /* sum of kept URI lengths */

    size_t fo_off, fo_len; /* fo value as published, when valid */

    dmarc_diag warn[DMARC_RECORD_MAX_WARNINGS];
    size_t warn_count, warn_dropped;

    bool duplicate;            /* [OPEN-1] */
    dmarc_diag unusable;       /* first reason the record cannot be used */
    dmarc_diag policy_problem; /* first invalid p/sp/np [EVAL-7] */
};

static void diag_set(dmarc_diag *d, dmarc_diag_code code, size_t offset, const char *tag,
                     size_t tag_len)
{
    if (tag_len > sizeof(d->tag) - 1)
        tag_len = sizeof(d->tag) - 1;
    d->code = code;
    d->offset = offset;
    if (tag_len > 0)
        memcpy(d->tag, tag, tag_len);
    d->tag[tag_len] = '\0';
}

/* Record a warning; past DMARC_RECORD_MAX_WARNINGS only count it. The
** one warning that ends the parse, TOO_MANY_TAGS, is always kept (in the
** last slot if need be): every tag past the known ones warns, so it would
** otherwise never be seen, and nothing else in the record tells of the cut. */
static void warn(struct parse_state *st, dmarc_diag_code code, size_t offset, const char *tag,
                 size_t tag_len)
{
    if (st->warn_count == DMARC_RECORD_MAX_WARNINGS) {
        st->warn_dropped++;
        if (code == DMARC_DIAG_TOO_MANY_TAGS)
            diag_set(&st->warn[DMARC_RECORD_MAX_WARNINGS - 1], code, offset, tag, tag_len);
        return;
    }
    diag_set(&st->warn[st->warn_count++], code, offset, tag, tag_len);
}

/* }====================================================== */

/* ** {======================================================
** Character classes (ASCII only; locale-independent)
** ======================================================= */

/*
** One table, built by the compiler, answers every "is this byte allowed
** here" question in one load: the per-byte loops are the parser's hot path.
*/
enum {
    CH_VALUE = 1u << 0,    /* [REC-3] tag-value byte: %x21-3A / %x3C-7E (printable, not ';') */
    CH_WSP = 1u << 1,      /* SP / HTAB */
    CH_NAME = 1u << 2,     /* RFC 6376 §3.2 ALNUMPUNC: ALPHA / DIGIT / "_" */
    CH_SCHEME = 1u << 3,   /* RFC 3986 §3.1: ALPHA / DIGIT / "+" / "-" / "." */
    CH_URI = 1u << 4,      /* RFC 3986 §2 characters, '%' included, ',' and '!' excluded */
    CH_DOMAIN = 1u << 5,   /* mailto domain: ALPHA / DIGIT / "-" / "." / "_" / "%" */
    CH_HEX = 1u << 6,      /* HEXDIG */
    CH_URI_PLAIN = 1u << 7 /* CH_URI minus the bytes scan_uri must look at: '%' '@' '?' */
};

#define CH_IS_ALPHA(c) (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z'))
#define CH_IS_DIGIT(c) ((c) >= '0' && (c) <= '9')
#define CH_IS_ALNUM(c) (CH_IS_ALPHA(c) || CH_IS_DIGIT(c))
/* RFC 3986 §2.2 and §2.3 minus ',' and '!', which a DMARC URI MUST
** percent-encode [REC-7]; '%' starts a pct-encoded triplet (checked apart). */
#define CH_IS_URI(c)                                                                               \
    (CH_IS_ALNUM(c) || (c) == '-' || (c) == '.' || (c) == '_' || (c) == '~' || (c) == ':' ||       \
     (c) == '/' || (c) == '?' || (c) == '#' || (c) == '[' || (c) == ']' || (c) == '@' ||           \
     (c) == '$' || (c) == '&' || (c) == '\'' || (c) == '(' || (c) == ')' || (c) == '*' ||          \
     (c) == '+' || (c) == '=' || (c) == '%')
#define CH_CLASS(c)                                                                                \
    ((((c) >= 0x21 && (c) <= 0x7e && (c) != ';') ? CH_VALUE : 0) |                                 \
     (((c) == ' ' || (c) == '\t') ? CH_WSP : 0) | ((CH_IS_ALNUM(c) || (c) == '_') ? CH_NAME : 0) | \
     ((CH_IS_ALNUM(c) || (c) == '+' || (c) == '-' || (c) == '.') ? CH_SCHEME : 0) |                \
     (CH_IS_URI(c) ? CH_URI : 0) |                                                                 \
     ((CH_IS_ALNUM(c) || (c) == '-' || (c) == '.' || (c) == '_' || (c) == '%') ? CH_DOMAIN : 0) |  \
     ((CH_IS_DIGIT(c) || ((c) >= 'a' && (c) <= 'f') || ((c) >= 'A' && (c) <= 'F')) ? CH_HEX : 0) | \
     ((CH_IS_URI(c) && (c) != '%' && (c) != '@' && (c) != '?') ? CH_URI_PLAIN : 0))
#define CH_ROW(b)                                                                                  \
    CH_CLASS((b) + 0), CH_CLASS((b) + 1), CH_CLASS((b) + 2), CH_CLASS((b) + 3), CH_CLASS((b) + 4), \
        CH_CLASS((b) + 5), CH_CLASS((b) + 6), CH_CLASS((b) + 7), CH_CLASS((b) + 8),                \
        CH_CLASS((b) + 9), CH_CLASS((b) + 10), CH_CLASS((b) + 11), CH_CLASS((b) + 12),             \
        CH_CLASS((b) + 13), CH_CLASS((b) + 14), CH_CLASS((b) + 15)

static const unsigned char char_class[256] = {
    CH_ROW(0x00), CH_ROW(0x10), CH_ROW(0x20), CH_ROW(0x30), CH_ROW(0x40), CH_ROW(0x50),
    CH_ROW(0x60), CH_ROW(0x70), CH_ROW(0x80), CH_ROW(0x90), CH_ROW(0xa0), CH_ROW(0xb0),
    CH_ROW(0xc0), CH_ROW(0xd0), CH_ROW(0xe0), CH_ROW(0xf0),
};

static bool char_is(char c, unsigned cls)
{
    return (char_class[(unsigned char)c] & cls) != 0;
}

/* Eight bytes at a time (SWAR): true when some byte of @w may end a tag
** value: below 0x20 (TAB included, which the byte loop then accepts),
** above 0x7e, or ';'. It may say yes for a byte that is fine, never no for
** one that is not (the byte loop decides). */
#define SWAR_ONES 0x0101010101010101u
#define SWAR_HIGHS 0x8080808080808080u
static bool swar_may_stop(uint64_t w)
{
    uint64_t below = (w - SWAR_ONES * 0x20) & ~w & SWAR_HIGHS;
    uint64_t above = ((w + SWAR_ONES * (127 - 0x7e)) | w) & SWAR_HIGHS;
    uint64_t x = w ^ (SWAR_ONES * ';');
    uint64_t semi = (x - SWAR_ONES) & ~x & SWAR_HIGHS;
    return (below | above | semi) != 0;
}

/* Offset of the first byte at or after @pos that is not a [REC-3]
** tag-value byte or WSP (a ';', a control, an 8-bit byte), or @len. Every
** turn of the outer loop moves pos by 8 or returns. */
static size_t scan_value(const char *s, size_t len, size_t pos)
{
    for (;;) {
        size_t end;
        while (len - pos >= 8) {
            uint64_t w;
            memcpy(&w, s + pos, 8);
            if (swar_may_stop(w))
                break;
            pos += 8;
        }
        end = len - pos > 8 ? pos + 8 : len;
        while (pos < end && char_is(s[pos], CH_VALUE | CH_WSP))
            pos++;
        if (pos < end || pos == len)
            return pos;
    }
}

/* }====================================================== */

/* ** {======================================================
** The version prefix [REC-2]
** ======================================================= */

/*
** Match `v *WSP "=" *WSP "DMARC1" *WSP` followed by ";" or the end.
** On success *end is the offset of that ";" (or len). On failure *fail is
** the offset where the text stopped looking like a record.
*/
static bool match_version(const char *s, size_t len, size_t *end, size_t *fail)
{
    static const char version[] = "DMARC1";
    size_t i = 0;

    /* `v` is a quoted ABNF literal in both RFCs (RFC 9989 §4.8 and RFC 7489
    ** §6.4 `dmarc-version = "v" equals ...`), so it is case-insensitive (RFC
    ** 5234 §2.3): `V=DMARC1; p=reject` asks for reject in either mode, and
    ** ignoring it would leave the domain unprotected [REC-2]. Only the value
    ** is case-sensitive. */
    if (len == 0 || (s[0] != 'v' && s[0] != 'V')) {
        *fail = 0;
        return false;
    }
    i = 1;
    while (i < len && dmarc__is_wsp((unsigned char)s[i]))
        i++;
    if (i == len || s[i] != '=') {
        *fail = i;
        return false;
    }
    i++;
    while (i < len && dmarc__is_wsp((unsigned char)s[i]))
        i++;
    /* `DMARC1` is case-sensitive in both RFCs. */
    if (len - i < sizeof(version) - 1 || memcmp(s + i, version, sizeof(version) - 1) != 0) {
        *fail = i;
        return false;
    }
    i += sizeof(version) - 1;
    while (i < len && dmarc__is_wsp((unsigned char)s[i]))
        i++;
    /* `v=DMARC10` and `v=DMARC1 p=reject` are not records. */
    if (i < len && s[i] != ';') {
        *fail = i;
        return false;
    }
    *end = i;
    return true;
}

bool dmarc_record_is_dmarc(dmarc_mode mode, const char *txt, size_t len)
{
    size_t end, fail;
    if (txt == NULL || (mode != DMARC_MODE_RFC9989 && mode != DMARC_MODE_RFC7489))
        return false;
    return match_version(txt, len, &end, &fail);
}

/* }====================================================== */

/* ** {======================================================
** Tag values
** ======================================================= */

/* Case-insensitive compare of s[0..len) with a lowercase literal. */
static bool keyword_is(const char *s, size_t len, const char *lit, size_t lit_len)
{
    size_t i;
    if (len != lit_len)
        return false;
    for (i = 0; i < len; i++)
        if (dmarc__lower((unsigned char)s[i]) != lit[i])
            return false;
    return true;
}

#define KEYWORD_IS(s, len, lit) keyword_is((s), (len), lit, sizeof(lit) - 1)

/* none / quarantine / reject, case-insensitive [REC-3]. */
static bool parse_policy(const char *v, size_t n, dmarc_policy *out)
{
    if (KEYWORD_IS(v, n, "none"))
        *out = DMARC_POLICY_NONE;
    else if (KEYWORD_IS(v, n, "quarantine"))
        *out = DMARC_POLICY_QUARANTINE;
    else if (KEYWORD_IS(v, n, "reject"))
        *out = DMARC_POLICY_REJECT;
    else
        return false;
    return true;
}

/* A single letter keyword out of @allowed (lowercase letters: r/s, y/n,
** y/n/u), matched case-insensitively; the lowercase letter on success. */
static bool parse_letter(const char *v, size_t n, const char *allowed, int *out)
{
    int c;
    if (n != 1)
        return false;
    c = dmarc__lower((unsigned char)v[0]);
    for (; *allowed != '\0'; allowed++) {
        if (*allowed == c) {
            *out = c;
            return true;
        }
    }
    return false;
}

/* pct: 1*3DIGIT, 0..100 (RFC 7489 §6.3; [POL-6]: anything else gives 100). */
static bool parse_pct(const char *v, size_t n, unsigned *out)
{
    unsigned val = 0;
    size_t i;
    if (n == 0 || n > 3)
        return false;
    for (i = 0; i < n; i++) {
        if (!dmarc__is_digit((unsigned char)v[i]))
            return false;
        val = val * 10 + (unsigned)(v[i] - '0');
    }
    if (val > 100)
        return false;
    *out = val;
    return true;
}

/* ri: 1*DIGIT that fits in 32 bits (RFC 7489 §6.3). */
static bool parse_ri(const char *v, size_t n, uint32_t *out)
{
    uint32_t val = 0;
    size_t i;
    if (n == 0)
        return false;
    for (i = 0; i < n; i++) {
        uint32_t d;
        if (!dmarc__is_digit((unsigned char)v[i]))
            return false;
        d = (uint32_t)(v[i] - '0');
        if (val > (UINT32_MAX - d) / 10)
            return false;
        val = val * 10 + d;
    }
    *out = val;
    return true;
}

/* Split v[0..n) on ':' with optional WSP around each colon, as the fo and
** rf ABNF allow (RFC 7489 §6.4). Calls back per item; false stops with an
** error. The loop advances at least one byte per item, so it ends within n. */
typedef bool (*colon_item_fn)(void *ud, const char *item, size_t len);

static bool split_colon_list(const char *v, size_t n, colon_item_fn fn, void *ud)
{
    size_t pos = 0;
    for (;;) {
        size_t start, end;
        while (pos < n && dmarc__is_wsp((unsigned char)v[pos]))
            pos++;
        start = pos;
        while (pos < n && v[pos] != ':')
            pos++;
        end = pos;
        while (end > start && dmarc__is_wsp((unsigned char)v[end - 1]))
            end--;
        if (end == start || !fn(ud, v + start, end - start))
            return false;
        if (pos == n)
            return true;
        pos++; /* the ':' */
    }
}

struct fo_acc {
    dmarc_mode mode;
    unsigned bits;
};

static bool fo_item(void *ud, const char *item, size_t len)
{
    struct fo_acc *acc = ud;
    unsigned bit;
    int c;

    if (len != 1)
        return false;
    c = dmarc__lower((unsigned char)item[0]);
    switch (c) {
    case '0':
        bit = DMARC_FO_0;
        break;
    case '1':
        bit = DMARC_FO_1;
        break;
    case 'd':
        bit = DMARC_FO_D;
        break;
    case 's':
        bit = DMARC_FO_S;
        break;
    default:
        return false;
    }
    /* RFC 9989 §4.8: `0` and `1` exclude each other, `d` and `s` appear at
    ** most once. RFC 7489 §6.3 allows any colon-separated mix. */
    if (acc->mode == DMARC_MODE_RFC9989) {
        if ((acc->bits & bit) != 0)
            return false;
        if ((bit & (DMARC_FO_0 | DMARC_FO_1)) != 0 && (acc->bits & (DMARC_FO_0 | DMARC_FO_1)) != 0)
            return false;
    }
    acc->bits |= bit;
    return true;
}

static bool rf_item(void *ud, const char *item, size_t len)
{
    bool *afrf = ud;
    size_t i;
    /* RFC 7489 §6.3: Keyword (RFC 5321 Ldh-str): letters, digits, inner hyphens. */
    if (item[0] == '-' || item[len - 1] == '-')
        return false;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)item[i];
        if (!dmarc__is_alpha(c) && !dmarc__is_digit(c) && c != '-')
            return false;
    }
    /* A format other than afrf is ignored (RFC 7489 §6.3 SHOULD). */
    if (KEYWORD_IS(item, len, "afrf"))
        *afrf = true;
    return true;
}

/* }====================================================== */

/* ** {======================================================
** URI lists [REC-7]
** ======================================================= */

/* Size suffix `1*DIGIT [k|m|g|t]` in powers of two (RFC 7489 §6.4); the
** result must fit in 64 bits. */
static bool parse_size(const char *s, size_t n, uint64_t *out)
{
    uint64_t val = 0;
    unsigned shift = 0;
    size_t digits = n, i;

    if (n > 0 && !dmarc__is_digit((unsigned char)s[n - 1])) {
        switch (dmarc__lower((unsigned char)s[n - 1])) {
        case 'k':
            shift = 10;
            break;
        case 'm':
            shift = 20;
            break;
        case 'g':
            shift = 30;
            break;
        case 't':
            shift = 40;
            break;
        default:
            return false;
        }
        digits = n - 1;
    }
    if (digits == 0)
        return false;
    for (i = 0; i < digits; i++) {
        uint64_t d;
        if (!dmarc__is_digit((unsigned char)s[i]))
            return false;
        d = (uint64_t)(s[i] - '0');
        if (val > (UINT64_MAX - d) / 10)
            return false;
        val = val * 10 + d;
    }
    if (val > (UINT64_MAX >> shift))
        return false;
    *out = val << shift;
    return true;
}

/*
** Scan one rua/ruf item at s[0..n), where n reaches the end of the tag
** value: `scheme ":" rest` in RFC 3986 characters, an optional `!size`,
** optional WSP, then ',' or the end [REC-7]. *stop is set to the offset
** of that ',' (or n) whether the item is well-formed or not, so the list
** always moves on. mailto URIs (RFC 6068) also need an addr-spec before
** any `?hfields`: a non-empty local-part, '@' and a domain.
*/
static bool scan_uri(const char *s, size_t n, size_t *stop, struct uri_span *u)
{
    size_t i, colon, at = 0, query = 0, end, d;
    const char *comma;

    if (n == 0 || !dmarc__is_alpha((unsigned char)s[0]))
        goto bad;
    for (i = 1; i < n && char_is(s[i], CH_SCHEME); i++)
        continue;
    if (i == n || s[i] != ':')
        goto bad;
    colon = i;
    i = colon + 1;
    for (;;) {
        /* The common bytes in a tight loop; the three that matter below. */
        while (i < n && char_is(s[i], CH_URI_PLAIN))
            i++;
        if (i == n)
            break;
        if (s[i] == '%') {
            if (n - i < 3 || !char_is(s[i + 1], CH_HEX) || !char_is(s[i + 2], CH_HEX))
                goto bad;
            i += 3;
        } else if (s[i] == '@' || s[i] == '?') {
            /* Only the part before `?hfields` is the addr-spec (RFC 6068). */
            if (query == 0) {
                if (s[i] == '@')
                    at = i;
                else
                    query = i;
            }
            i++;
        } else {
            break;
        }
    }
    end = i;
    /* A scheme with nothing after it addresses nothing. */
    if (end == colon + 1)
        goto bad;
    u->max_size = 0;
    if (i < n && s[i] == '!') {
        size_t size_start = ++i;
        while (i < n && char_is(s[i], CH_NAME))
            i++;
        if (!parse_size(s + size_start, i - size_start, &u->max_size))
            goto bad;
    }
    while (i < n && dmarc__is_wsp((unsigned char)s[i]))
        i++;
    if (i < n && s[i] != ',')
        goto bad;
    u->is_mailto = colon == 6 && KEYWORD_IS(s, 6, "mailto");
    if (u->is_mailto) {
        size_t addr_end = query != 0 ? query : end;
        if (at <= colon + 1 || at + 1 >= addr_end || s[at + 1] == '.')
            goto bad;
        for (d = at + 1; d < addr_end; d++)
            if (!char_is(s[d], CH_DOMAIN))
                goto bad;
    }
    u->len = end;
    *stop = i;
    return true;
bad:
    comma = memchr(s, ',', n);
    *stop = comma == NULL ? n : (size_t)(comma - s);
    return false;
}

/* rua/ruf: URIs separated by ',' with optional WSP around it. Malformed
** items are dropped with BAD_URI; the rest are kept in order, at most
** DMARC_RECORD_MAX_URIS. Each item moves pos past its ',' or to the end. */
static void parse_uri_list(struct parse_state *st, int list, size_t vs, size_t ve, size_t tag_off,
                           size_t tag_len)
{
    const char *s = st->txt;
    size_t pos = vs;

    for (;;) {
        size_t start, stop;
        struct uri_span *u;

        while (pos < ve && dmarc__is_wsp((unsigned char)s[pos]))
            pos++;
        start = pos;
        if (st->uri_count[list] == DMARC_RECORD_MAX_URIS) {
            warn(st, DMARC_DIAG_TOO_MANY_URIS, start, s + tag_off, tag_len);
            return;
        }
        u = &st->uris[list][st->uri_count[list]];
        if (scan_uri(s + start, ve - start, &stop, u)) {
            u->off = start;
            st->uri_count[list]++;
            st->uri_bytes += u->len + 1;
        } else {
            warn(st, DMARC_DIAG_BAD_URI, start, s + tag_off, tag_len);
        }
        pos = start + stop;
        if (pos == ve)
            return;
        pos++; /* the ',' */
    }
}

/* }====================================================== */

/* ** {======================================================
** One tag
** ======================================================= */

/* A tag name of at most RECORD_LONGEST_TAG bytes packed into one integer,
** so the lookup is a single switch. */
#define TAG_KEY1(a) ((uint64_t)(unsigned char)(a))
#define TAG_KEY2(a, b) ((TAG_KEY1(a) << 8) | TAG_KEY1(b))
#define TAG_KEY3(a, b, c) ((TAG_KEY2(a, b) << 8) | TAG_KEY1(c))
#define TAG_KEY4(a, b, c, d) ((TAG_KEY3(a, b, c) << 8) | TAG_KEY1(d))
#define TAG_KEY5(a, b, c, d, e) ((TAG_KEY4(a, b, c, d) << 8) | TAG_KEY1(e))

static enum tag_id lookup_tag(const struct parse_state *st, size_t off, size_t n, bool *wrong_case)
{
    const char *name = st->txt + off;
    uint64_t key = 0, exact = 0;
    enum tag_id id;
    size_t i;

    *wrong_case = false;
    if (n > RECORD_LONGEST_TAG)
        return TAG_UNKNOWN;
    /* Names are ALPHA / DIGIT / "_": OR-ing 0x20 lowercases the letters and
    ** leaves digits alone; '_' becomes DEL, which no known name holds. */
    for (i = 0; i < n; i++) {
        exact = (exact << 8) | (unsigned char)name[i];
        key = (key << 8) | ((unsigned char)name[i] | 0x20u);
    }
    switch (key) {
    case TAG_KEY1('v'):
        id = TAG_V;
        break;
    case TAG_KEY1('p'):
        id = TAG_P;
        break;
    case TAG_KEY2('s', 'p'):
        id = TAG_SP;
        break;
    case TAG_KEY2('n', 'p'):
        id = TAG_NP;
        break;
    case TAG_KEY5('a', 'd', 'k', 'i', 'm'):
        id = TAG_ADKIM;
        break;
    case TAG_KEY4('a', 's', 'p', 'f'):
        id = TAG_ASPF;
        break;
    case TAG_KEY3('p', 'c', 't'):
        id = TAG_PCT;
        break;
    case TAG_KEY1('t'):
        id = TAG_T;
        break;
    case TAG_KEY3('p', 's', 'd'):
        id = TAG_PSD;
        break;
    case TAG_KEY2('f', 'o'):
        id = TAG_FO;
        break;
    case TAG_KEY2('r', 'f'):
        id = TAG_RF;
        break;
    case TAG_KEY2('r', 'i'):
        id = TAG_RI;
        break;
    case TAG_KEY3('r', 'u', 'a'):
        id = TAG_RUA;
        break;
    case TAG_KEY3('r', 'u', 'f'):
        id = TAG_RUF;
        break;
    default:
        return TAG_UNKNOWN;
    }
    if (exact != key && st->mode == DMARC_MODE_RFC9989) {
        /* RFC 7489 tag names are ABNF literals, case-insensitive; RFC 9989
        ** uses RFC 6376 tag-value syntax, case-sensitive [REC-3]. */
        *wrong_case = true;
        return TAG_UNKNOWN;
    }
    return id;
}

/* [OPEN-1] for names that are not known tags: compare with earlier ones
** under the mode's case rule. At most DMARC_RECORD_MAX_TAGS names. */
static bool unknown_seen_before(struct parse_state *st, size_t off, size_t n)
{
    size_t i;
    for (i = 0; i < st->unknown_count; i++) {
        const char *prev = st->txt + st->unknown[i].off;
        if (st->unknown[i].len != n)
            continue;
        if (st->mode == DMARC_MODE_RFC7489 ? dmarc__ieq(prev, n, st->txt + off, n)
                                           : memcmp(prev, st->txt + off, n) == 0)
            return true;
    }
    if (st->unknown_count < DMARC_RECORD_MAX_TAGS) {
        st->unknown[st->unknown_count].off = off;
        st->unknown[st->unknown_count].len = n;
        st->unknown_count++;
    }
    return false;
}

static void bad_policy(struct parse_state *st, enum tag_id id, size_t vs, size_t name_off,
                       size_t name_len)
{
    if (id == TAG_P)
        st->rec.bad_p = true;
    else if (id == TAG_SP)
        st->rec.bad_sp = true;
    else
        st->rec.bad_np = true;
    warn(st, DMARC_DIAG_INVALID_POLICY, vs, st->txt + name_off, name_len);
    if (st->policy_problem.code == DMARC_DIAG_NONE)
        diag_set(&st->policy_problem, DMARC_DIAG_INVALID_POLICY, vs, st->txt + name_off, name_len);
}

/*
** A tag-spec whose name and value are syntactically fine: interpret the
** value. v[0..n) is the value with surrounding WSP removed, at offset vs.
*/
static void apply_value(struct parse_state *st, enum tag_id id, size_t vs, size_t n,
                        size_t name_off, size_t name_len)
{
    const char *v = st->txt + vs;
    dmarc_record *r = &st->rec;
    int letter;
    bool ok = true;

    switch (id) {
    case TAG_V:
    case TAG__COUNT:
        break;
    case TAG_P:
    case TAG_SP:
    case TAG_NP: {
        dmarc_policy pol;
        if (!parse_policy(v, n, &pol)) {
            /* [EVAL-7]: decided once the whole record is read. */
            bad_policy(st, id, vs, name_off, name_len);
            return;
        }
        if (id == TAG_P) {
            st->p_val = pol;
            r->has_p = true;
        } else if (id == TAG_SP) {
            st->sp_val = pol;
            r->has_sp = true;
        } else {
            st->np_val = pol;
            r->has_np = true;
        }
        return;
    }
    case TAG_ADKIM:
    case TAG_ASPF:
        if ((ok = parse_letter(v, n, "rs", &letter))) {
            dmarc_align a = letter == 's' ? DMARC_ALIGN_STRICT : DMARC_ALIGN_RELAXED;
            if (id == TAG_ADKIM) {
                r->adkim = a;
                r->has_adkim = true;
            } else {
                r->aspf = a;
                r->has_aspf = true;
            }
        }
        break;
    case TAG_PCT:
        if ((ok = parse_pct(v, n, &r->pct)))
            r->has_pct = true;
        break;
    case TAG_T:
        if ((ok = parse_letter(v, n, "yn", &letter))) {
            r->testing = letter == 'y';
            r->has_t = true;
        }
        break;
    case TAG_PSD:
        if ((ok = parse_letter(v, n, "ynu", &letter))) {
            r->psd = letter == 'y' ? DMARC_PSD_Y : letter == 'n' ? DMARC_PSD_N : DMARC_PSD_U;
            r->has_psd = true;
        }
        break;
    case TAG_FO: {
        struct fo_acc acc;
        acc.mode = st->mode;
        acc.bits = 0;
        if ((ok = split_colon_list(v, n, fo_item, &acc))) {
            r->fo = acc.bits;
            r->has_fo = true;
            st->fo_off = vs;
            st->fo_len = n;
        }
        break;
    }
    case TAG_RF: {
        bool afrf = false;
        if ((ok = split_colon_list(v, n, rf_item, &afrf))) {
            r->rf_afrf = afrf;
            r->has_rf = true;
        }
        break;
    }
    case TAG_RI:
        if ((ok = parse_ri(v, n, &r->ri)))
            r->has_ri = true;
        break;
    case TAG_RUA:
        r->has_rua = true;
        parse_uri_list(st, LIST_RUA, vs, vs + n, name_off, name_len);
        break;
    case TAG_RUF:
        r->has_ruf = true;
        parse_uri_list(st, LIST_RUF, vs, vs + n, name_off, name_len);
        break;
    }
    /* [REC-5]: a bad value is discarded in favour of the default, which
    ** the parse functions above left untouched. */
    if (!ok)
        warn(st, DMARC_DIAG_BAD_VALUE, vs, st->txt + name_off, name_len);
}

/* Skip to the next ';' (or the end): the rest of a broken tag-spec. */
static size_t skip_tag(const char *s, size_t len, size_t pos)
{
    const char *semi = memchr(s + pos, ';', len - pos);
    return semi == NULL ? len : (size_t)(semi - s);
}

/*
** Read one tag-spec starting at pos (WSP already skipped, not at ';' or
** the end). Returns the offset of the ';' that ends it, or len.
*/
static size_t parse_tag(struct parse_state *st, size_t pos)
{
    const char *s = st->txt;
    size_t len = st->len;
    size_t name_off = pos, name_len, vs, ve, bad_char = len;
    enum tag_id id;
    bool wrong_case;

    /* RFC 6376 §3.2 tag-name; anything else is a syntax error of this
    ** tag-spec, which is discarded [REC-5]. */
    if (!dmarc__is_alpha((unsigned char)s[pos])) {
        warn(st, DMARC_DIAG_SYNTAX, pos, "", 0);
        return skip_tag(s, len, pos);
    }
    while (pos < len && char_is(s[pos], CH_NAME))
        pos++;
    name_len = pos - name_off;
    while (pos < len && dmarc__is_wsp((unsigned char)s[pos]))
        pos++;
    if (pos == len || s[pos] != '=') {
        /* A bare tag (`sp` with no `=`) or junk after the name: discarded,
        ** the record stays usable (standards §14). */
        warn(st, DMARC_DIAG_SYNTAX, pos, st->txt + name_off, name_len);
        return skip_tag(s, len, pos);
    }
    pos++;
    while (pos < len && dmarc__is_wsp((unsigned char)s[pos]))
        pos++;
    vs = pos;
    /* [REC-3] value: printable ASCII except ';', WSP only between parts. */
    pos = scan_value(s, len, pos);
    if (pos < len && s[pos] != ';') {
        bad_char = pos;
        pos = skip_tag(s, len, pos);
    }
    ve = pos;
    while (ve > vs && dmarc__is_wsp((unsigned char)s[ve - 1]))
        ve--;

    id = lookup_tag(st, name_off, name_len, &wrong_case);
    if (id == TAG_UNKNOWN) {
        if (unknown_seen_before(st, name_off, name_len)) {
            st->duplicate = true;
            warn(st, DMARC_DIAG_DUPLICATE_TAG, name_off, st->txt + name_off, name_len);
        } else {
            /* [REC-4]: ignored, never fatal. A known name in the wrong case
            ** gets its own code so `dmarc inspect` can point at it. */
            warn(st, wrong_case ? DMARC_DIAG_TAG_CASE : DMARC_DIAG_UNKNOWN_TAG, name_off,
                 st->txt + name_off, name_len);
        }
        return pos;
    }
    if ((st->seen & (1u << id)) != 0) {
        /* [OPEN-1]: the first value stays for diagnostics; the record is unusable. */
        st->duplicate = true;
        warn(st, DMARC_DIAG_DUPLICATE_TAG, name_off, st->txt + name_off, name_len);
        return pos;
    }
    st->seen |= 1u << id;

    /* [REC-6]: RFC 7489's ABNF puts p right after v; accepted with a warning. */
    if (id == TAG_P && st->mode == DMARC_MODE_RFC7489 && st->tag_count != 2)
        warn(st, DMARC_DIAG_P_NOT_SECOND, name_off, st->txt + name_off, name_len);
    /* [POL-5]: historic in RFC 9989, still parsed for the [OPEN-3] option. */
    if (st->mode == DMARC_MODE_RFC9989 && (id == TAG_PCT || id == TAG_RF || id == TAG_RI))
        warn(st, DMARC_DIAG_HISTORIC_TAG, name_off, st->txt + name_off, name_len);

    if (bad_char != len) {
        warn(st, DMARC_DIAG_SYNTAX, bad_char, st->txt + name_off, name_len);
        return pos;
    }
    if (ve == vs) {
        warn(st, DMARC_DIAG_EMPTY_VALUE, vs, st->txt + name_off, name_len);
        return pos;
    }
    apply_value(st, id, vs, ve - vs, name_off, name_len);
    return pos;
}

/* }====================================================== */

/* ** {======================================================
** The record
** ======================================================= */

/* The allocation behind a dmarc_record: the public view first, so a
** dmarc_record pointer is a pointer to its block; then what free needs.
** URI arrays, warnings and strings follow in the same allocation. */
struct record_block {
    dmarc_record pub;
    dmarc_allocator alloc;
    size_t size;
};

static void state_init(struct parse_state *st, dmarc_mode mode, const char *txt, size_t len)
{
    dmarc_record *r = &st->rec;

    /* Field by field: a struct copy or memset of this size becomes a
    ** `rep stos`, whose start-up costs more than a short record's parse. */
    r->mode = mode;
    r->usable = true;
    r->as_none = false;
    r->p = r->sp = r->np = DMARC_POLICY_NONE;
    r->has_p = r->has_sp = r->has_np = false;
    r->bad_p = r->bad_sp = r->bad_np = false;
    r->adkim = r->aspf = DMARC_ALIGN_RELAXED;
    r->has_adkim = r->has_aspf = false;
    r->pct = 100;
    r->has_pct = false;
    r->testing = r->has_t = false;
    r->psd = DMARC_PSD_U;
    r->has_psd = false;
    r->fo = DMARC_FO_0;
    r->has_fo = false;
    r->fo_text = NULL;
    r->rf_afrf = true;
    r->has_rf = false;
    r->ri = 86400;
    r->has_ri = false;
    r->rua = r->ruf = NULL;
    r->rua_count = r->ruf_count = 0;
    r->has_rua = r->has_ruf = false;
    r->warnings = NULL;
    r->warning_count = r->warnings_dropped = 0;
    st->mode = mode;
    st->txt = txt;
    st->len = len;
    st->p_val = st->sp_val = st->np_val = DMARC_POLICY_NONE;
    st->seen = 1u << TAG_V;
    st->tag_count = 1;
    st->unknown_count = 0;
    st->uri_count[LIST_RUA] = st->uri_count[LIST_RUF] = 0;
    st->uri_bytes = 0;
    st->fo_off = st->fo_len = 0;
    st->warn_count = st->warn_dropped = 0;
    st->duplicate = false;
    st->unusable.code = DMARC_DIAG_NONE;
    st->policy_problem.code = DMARC_DIAG_NONE;
}

/* After the last tag: effective policies, [EVAL-7], [OPEN-1], [OPEN-7]. */
static void finish(struct parse_state *st)
{
    dmarc_record *r = &st->rec;
    bool invalid = r->bad_p || r->bad_sp || r->bad_np;

    r->p = r->has_p ? st->p_val : DMARC_POLICY_NONE;
    r->sp = r->has_sp ? st->sp_val : r->p;
    r->np = r->has_np ? st->np_val : r->sp;

    if (!r->has_p && !r->bad_p) {
        /* [OPEN-7]: RFC 9989 §4.7 reads an absent p as none; RFC 7489
        ** §6.6.3 counts it as invalid, under the same rua rule. */
        warn(st, DMARC_DIAG_MISSING_P, st->len, "p", 1);
        if (st->mode == DMARC_MODE_RFC7489) {
            invalid = true;
            if (st->policy_problem.code == DMARC_DIAG_NONE)
                diag_set(&st->policy_problem, DMARC_DIAG_MISSING_P, st->len, "p", 1);
        }
    }
    if (invalid) {
        /* [EVAL-7]: one syntactically valid rua URI turns the whole record
        ** into p=none, whatever the other tags say; otherwise no DMARC. */
        if (st->uri_count[LIST_RUA] > 0) {
            r->as_none = true;
            r->p = r->sp = r->np = DMARC_POLICY_NONE;
        } else {
            r->usable = false;
            st->unusable = st->policy_problem;
        }
    }
    if (st->duplicate) {
        /* [OPEN-1] [OPEN-4]: permerror, whatever else holds. */
        size_t i;
        r->usable = false;
        r->as_none = false;
        for (i = 0; i < st->warn_count; i++)
            if (st->warn[i].code == DMARC_DIAG_DUPLICATE_TAG)
                break;
        if (i < st->warn_count)
            st->unusable = st->warn[i];
        else
            diag_set(&st->unusable, DMARC_DIAG_DUPLICATE_TAG, 0, "", 0);
    }
}

/* One allocation for the record and everything it points to. */
static dmarc_status build(const struct parse_state *st, const dmarc_allocator *alloc,
                          dmarc_record **out)
{
    size_t n_rua = st->uri_count[LIST_RUA], n_ruf = st->uri_count[LIST_RUF];
    size_t fo_len = st->rec.has_fo ? st->fo_len : 1;
    size_t size, l, i;
    struct record_block *b;
    dmarc_uri *uris;
    dmarc_diag *warnings;
    char *text;

    /* Sizes are bounded by DMARC_RECORD_MAX_LEN and the URI and warning
    ** caps, so none of these sums can overflow. Every array keeps the
    ** alignment of the block because each element size is a multiple of it. */
    size = sizeof(*b) + (n_rua + n_ruf) * sizeof(dmarc_uri) + st->warn_count * sizeof(dmarc_diag) +
           st->uri_bytes + fo_len + 1;
    b = dmarc__alloc(alloc, size);
    if (b == NULL)
        return DMARC_ERR_NOMEM;
    b->pub = st->rec;
    if (alloc != NULL) {
        b->alloc = *alloc;
    } else {
        b->alloc.fn = NULL;
        b->alloc.ud = NULL;
    }
    b->size = size;
    uris = (dmarc_uri *)(void *)(b + 1);
    warnings = (dmarc_diag *)(void *)(uris + n_rua + n_ruf);
    text = (char *)(warnings + st->warn_count);

    if (st->rec.has_fo)
        memcpy(text, st->txt + st->fo_off, fo_len);
    else
        text[0] = '0';
    text[fo_len] = '\0';
    b->pub.fo_text = text;
    text += fo_len + 1;

    for (l = 0; l < LIST__COUNT; l++) {
        for (i = 0; i < st->uri_count[l]; i++) {
            const struct uri_span *u = &st->uris[l][i];
            dmarc_uri *d = &uris[(l == LIST_RUA ? 0 : n_rua) + i];
            memcpy(text, st->txt + u->off, u->len);
            text[u->len] = '\0';
            d->uri = text;
            d->len = u->len;
            d->max_size = u->max_size;
            d->is_mailto = u->is_mailto;
            text += u->len + 1;
        }
    }
    b->pub.rua = n_rua > 0 ? uris : NULL;
    b->pub.rua_count = n_rua;
    b->pub.ruf = n_ruf > 0 ? uris + n_rua : NULL;
    b->pub.ruf_count = n_ruf;

    if (st->warn_count > 0)
        memcpy(warnings, st->warn, st->warn_count * sizeof(dmarc_diag));
    b->pub.warnings = st->warn_count > 0 ? warnings : NULL;
    b->pub.warning_count = st->warn_count;
    b->pub.warnings_dropped = st->warn_dropped;

    *out = &b->pub;
    return DMARC_OK;
}

dmarc_status dmarc_record_parse(dmarc_mode mode, const dmarc_allocator *alloc, const char *txt,
                                size_t len, dmarc_record **out, dmarc_diag *diag)
{
    struct parse_state st;
    size_t pos, fail;
    dmarc_status status;

    if (out == NULL || (txt == NULL && len > 0) ||
        (mode != DMARC_MODE_RFC9989 && mode != DMARC_MODE_RFC7489))
        return DMARC_ERR_INVAL;
    if (len > DMARC_RECORD_MAX_LEN) {
        if (diag != NULL)
            diag_set(diag, DMARC_DIAG_TOO_LONG, DMARC_RECORD_MAX_LEN, "", 0);
        return DMARC_ERR_SYNTAX;
    }
    if (!match_version(txt, len, &pos, &fail)) {
        if (diag != NULL)
            diag_set(diag, DMARC_DIAG_NOT_DMARC, fail, "v", 1);
        return DMARC_ERR_SYNTAX;
    }

    state_init(&st, mode, txt, len);
    /* RFC 9989 spells the other tag names case-sensitively [REC-3]; an
    ** uppercase `V` is still the version (above), but worth a word. */
    if (mode == DMARC_MODE_RFC9989 && txt[0] == 'V')
        warn(&st, DMARC_DIAG_TAG_CASE, 0, txt, 1);
    /* pos is at a ';' or the end. Each turn consumes at least that ';',
    ** so the loop ends within len bytes; tags are capped on top of it. */
    while (pos < len) {
        pos++; /* the ';' */
        while (pos < len && dmarc__is_wsp((unsigned char)txt[pos]))
            pos++;
        if (pos == len)
            break; /* [REC-3]: a trailing ';' is allowed */
        if (txt[pos] == ';') {
            /* An empty tag-spec (`;;`): not in the grammar, harmless. */
            warn(&st, DMARC_DIAG_SYNTAX, pos, "", 0);
            continue;
        }
        if (st.tag_count == DMARC_RECORD_MAX_TAGS) {
            warn(&st, DMARC_DIAG_TOO_MANY_TAGS, pos, "", 0);
            break;
        }
        st.tag_count++;
        pos = parse_tag(&st, pos);
    }
    finish(&st);

    status = build(&st, alloc, out);
    if (status == DMARC_OK && diag != NULL) {
        if (st.rec.usable)
            diag_set(diag, DMARC_DIAG_NONE, 0, "", 0);
        else
            *diag = st.unusable;
    }
    return status;
}

void dmarc_record_free(dmarc_record *r)
{
    struct record_block *b;
    dmarc_allocator alloc;

    if (r == NULL)
        return;
    b = (struct record_block *)(void *)r;
    /* Copy the allocator out first: the block holds it. */
    alloc = b->alloc;
    dmarc__free(&alloc, b, b->size);
}

/* }====================================================== */
