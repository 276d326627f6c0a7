/*
** Author Domain extraction: the value of one From header field into its
** mailboxes [FROM-1..8].
**
** Grammar: RFC 5322 §3.4 (mailbox-list, name-addr, addr-spec, group) with the
** obsolete forms of §4.4 that real mail still carries (obs-phrase, obs-route,
** obs-local-part, obs-domain, empty list elements), CFWS and nested comments
** of §3.2.2, folding of §3.2.2/§4.2, RFC 6532 UTF-8 in atoms, quoted strings
** and literals, and RFC 2047 encoded-words, decoded in display names only.
**
** The work is done in three passes over the input, each linear:
**  1. lex and parse, recording for every mailbox the spans of its display
**     name, local-part and domain (no copying, no allocation);
**  2. one allocation sized from those spans: the object, its mailbox array
**     and every string it will hold;
**  3. build the strings (unquoting, unfolding, decoding) and normalize the
**     domains into that block.
**
** Broken input. An address element (the text between two top-level commas,
** or between two commas or a comma and ';' inside a group) that does not
** parse is dropped when it holds no '@': it cannot hide an address, so the
** mailboxes around it are unambiguous and are kept (the diag says what was
** wrong). When it does hold an '@', some reader of the message could take a
** domain from it that we did not, so the whole field is DMARC_ERR_SYNTAX:
** the evaluator then flags it rather than deciding on part of the authors.
*/
#include <string.h>

#include "domain.h"

/*
** Longest RFC 2047 encoded-word recognized as one token. RFC 2047 §2 caps
** encoded-words at 75 characters; senders exceed that, so a generous bound
** keeps their display names readable while bounding the look-ahead.
*/
#define FROM_EWORD_MAX_LEN 256

/* ** {======================================================
** Lexer: RFC 5322 §3.2 tokens, with CFWS skipped and remembered
** ======================================================= */

typedef enum tok_kind {
    TOK_END,     /* end of input */
    TOK_ATOM,    /* atext and '.' run: atom, dot-atom, obs-phrase pieces */
    TOK_QUOTED,  /* quoted-string, quotes included */
    TOK_EWORD,   /* RFC 2047 encoded-word standing alone */
    TOK_LITERAL, /* domain-literal, brackets included */
    TOK_SPECIAL, /* one of < > @ , ; : */
    TOK_BAD      /* a byte or construct that cannot be read */
} tok_kind;

typedef struct token {
    tok_kind kind;
    size_t lead;         /* where the CFWS before the token began */
    size_t start;        /* first byte of the token (TOK_BAD: where it went wrong) */
    size_t end;          /* one past its last byte */
    bool cfws_before;    /* whitespace or a comment separated it from what came before */
    char special;        /* TOK_SPECIAL: which one */
    dmarc_diag_code bad; /* TOK_BAD: SYNTAX or TOO_DEEP */
} token;

typedef struct lexer {
    const char *s;
    size_t len;
    size_t pos;
} lexer;

/*
** Byte classes. A: RFC 5322 §3.2.3 atext, '.' (dot-atom and obs-phrase
** pieces are one token; the parser looks at the dots), and RFC 6532
** UTF8-non-ascii, whose bytes are not validated here: local-parts and
** display names are passed on as written, domains are checked by the
** normalizer. S: the specials that shape an address (§3.2.3 specials but
** the ones with tokens of their own: quotes, parentheses, brackets,
** backslash, and '.'). A table keeps a common field well under a
** microsecond.
*/
enum { BYTE_ATEXT = 1, BYTE_SPECIAL = 2 };
#define A BYTE_ATEXT
#define S BYTE_SPECIAL
static const unsigned char byte_class[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x10 */
    0, A, 0, A, A, A, A, A, 0, 0, A, A, S, A, A, A, /* 0x20 */
    A, A, A, A, A, A, A, A, A, A, S, S, S, A, S, A, /* 0x30 */
    S, A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, /* 0x40 */
    A, A, A, A, A, A, A, A, A, A, A, 0, 0, 0, A, A, /* 0x50 */
    A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, /* 0x60 */
    A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, 0, /* 0x70 */
    A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, /* 0x80 */
    A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, /* 0x90 */
    A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, /* 0xa0 */
    A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, /* 0xb0 */
    A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, /* 0xc0 */
    A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, /* 0xd0 */
    A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, /* 0xe0 */
    A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, A, /* 0xf0 */
};
#undef A
#undef S

static bool is_atext(unsigned char c)
{
    return byte_class[c] == BYTE_ATEXT;
}

static bool is_special(unsigned char c)
{
    return byte_class[c] == BYTE_SPECIAL;
}

/*
** Length of the folding white space at @pos, 0 if none. RFC 5322 §3.2.2 FWS
** and §4.2 obs-FWS: WSP, or a line break followed by WSP. A bare LF counts
** as a line break (headers stored with Unix line ends); a line break at the
** very end of the input is the end of the field. A CR without LF, or a line
** break not followed by WSP, is no FWS: it would end the header field.
*/
static size_t fws_len(const char *s, size_t len, size_t pos)
{
    if (dmarc__is_wsp((unsigned char)s[pos]))
        return 1;
    if (s[pos] == '\r' && pos + 1 < len && s[pos + 1] == '\n') {
        if (pos + 2 == len)
            return 2;
        if (dmarc__is_wsp((unsigned char)s[pos + 2]))
            return 3;
        return 0;
    }
    if (s[pos] == '\n') {
        if (pos + 1 == len)
            return 1;
        if (dmarc__is_wsp((unsigned char)s[pos + 1]))
            return 2;
    }
    return 0;
}

/*
** Length of the quoted-pair at @pos (a backslash), 0 if it is not one.
** RFC 5322 §3.2.1 quoted-pair and §4.1 obs-qp, except that a NUL, CR or LF
** is never quoted: they only serve to hide a line break or cut a string.
*/
static size_t quoted_pair_len(const char *s, size_t len, size_t pos)
{
    unsigned char c;
    if (pos + 1 >= len)
        return 0;
    c = (unsigned char)s[pos + 1];
    return (c == '\0' || c == '\r' || c == '\n') ? 0 : 2;
}

/*
** Skip a comment starting at lx->pos ('('), nested up to
** DMARC_FROM_MAX_COMMENT_DEPTH (RFC 5322 §3.2.2 sets no limit; we must).
** On a problem returns its code with *err_at set; the caller gives up on the
** rest of the input, as a broken comment leaves no reliable structure.
*/
static dmarc_diag_code skip_comment(lexer *lx, size_t *err_at)
{
    const char *s = lx->s;
    size_t pos = lx->pos, depth = 0, n;

    while (pos < lx->len) {
        unsigned char c = (unsigned char)s[pos];
        if (c == '(') {
            if (++depth > DMARC_FROM_MAX_COMMENT_DEPTH) {
                *err_at = pos;
                return DMARC_DIAG_TOO_DEEP;
            }
            pos++;
        } else if (c == ')') {
            pos++;
            if (--depth == 0) {
                lx->pos = pos;
                return DMARC_DIAG_NONE;
            }
        } else if (c == '\\') {
            if ((n = quoted_pair_len(s, lx->len, pos)) == 0)
                break;
            pos += n;
        } else if (c == '\r' || c == '\n') {
            if ((n = fws_len(s, lx->len, pos)) == 0)
                break;
            pos += n;
        } else if (c == '\0') {
            break;
        } else {
            pos++; /* ctext, obs-ctext, UTF-8 */
        }
    }
    *err_at = pos < lx->len ? pos : lx->len;
    return DMARC_DIAG_SYNTAX;
}

/*
** End of the quoted-string or domain-literal opened at @pos, or 0 when it
** is broken (*err_at then says where). RFC 5322 §3.2.4 qcontent and §3.4.1
** dtext with their obsolete forms: any byte but the closing one, backslash,
** NUL and bare line breaks; a domain-literal may not hold '['.
*/
static size_t delimited_end(const char *s, size_t len, size_t pos, char close, size_t *err_at)
{
    size_t n;

    for (pos++; pos < len;) {
        unsigned char c = (unsigned char)s[pos];
        if (c == (unsigned char)close)
            return pos + 1;
        if (c == '\\') {
            if ((n = quoted_pair_len(s, len, pos)) == 0)
                break;
            pos += n;
        } else if (c == '\r' || c == '\n') {
            if ((n = fws_len(s, len, pos)) == 0)
                break;
            pos += n;
        } else if (c == '\0' || (close == ']' && c == '[')) {
            break;
        } else {
            pos++;
        }
    }
    *err_at = pos < len ? pos : len;
    return 0;
}

static bool is_eword_charset_char(unsigned char c)
{
    /* RFC 2047 §2 token: no SPACE, CTLs or especials. */
    return c > 0x20 && c < 0x7f && strchr("()<>@,;:\"/[]?.=", c) == NULL;
}

static bool is_eword_text_char(unsigned char c)
{
    /* RFC 2047 §2 encoded-text is printable ASCII but '?' and SPACE; in a
    ** phrase §5 narrows it further. We accept the wider set minus the bytes
    ** that shape an address, so a word never swallows a quote, comment,
    ** bracket or separator. '@' and '.' stay: senders put them raw in
    ** Q-encoded names, and a word is never read as an address anyway. */
    return c > 0x20 && c < 0x7f && c != '?' && strchr("\"()<>,;:\\[]", c) == NULL;
}

/* End of the encoded-word starting at @pos ("=?"), or 0 if there is none. */
static size_t eword_end(const char *s, size_t len, size_t pos)
{
    size_t limit = len - pos > FROM_EWORD_MAX_LEN ? pos + FROM_EWORD_MAX_LEN : len;
    size_t p = pos + 2, mark;

    mark = p;
    while (p < limit && is_eword_charset_char((unsigned char)s[p]))
        p++;
    if (p == mark || p + 3 > limit || s[p] != '?')
        return 0;
    p++;
    if ((dmarc__lower((unsigned char)s[p]) != 'b' && dmarc__lower((unsigned char)s[p]) != 'q') ||
        s[p + 1] != '?')
        return 0;
    p += 2;
    mark = p;
    while (p < limit && is_eword_text_char((unsigned char)s[p]))
        p++;
    if (p == mark || p + 2 > limit || s[p] != '?' || s[p + 1] != '=')
        return 0;
    p += 2;
    /* RFC 2047 §5: a word in a phrase is set apart from its neighbours. */
    if (p < len && is_atext((unsigned char)s[p]))
        return 0;
    return p;
}

/* The next token; never fails, a problem is a TOK_BAD. */
static void lex_next(lexer *lx, token *t)
{
    const char *s = lx->s;
    size_t n, err_at = 0;
    unsigned char c;

    t->lead = lx->pos;
    t->cfws_before = false;
    t->bad = DMARC_DIAG_NONE;
    t->special = '\0';
    /* Each round consumes input or leaves the loop. */
    while (lx->pos < lx->len) {
        if ((n = fws_len(s, lx->len, lx->pos)) > 0) {
            lx->pos += n;
        } else if (s[lx->pos] == '(') {
            dmarc_diag_code code = skip_comment(lx, &err_at);
            if (code != DMARC_DIAG_NONE) {
                t->kind = TOK_BAD;
                t->bad = code;
                t->start = err_at;
                t->end = lx->pos = lx->len;
                return;
            }
        } else {
            break;
        }
        t->cfws_before = true;
    }
    t->start = lx->pos;
    if (lx->pos >= lx->len) {
        t->kind = TOK_END;
        t->end = lx->pos;
        return;
    }
    c = (unsigned char)s[lx->pos];
    if (c == '"' || c == '[') {
        n = delimited_end(s, lx->len, lx->pos, c == '"' ? '"' : ']', &err_at);
        if (n == 0) {
            /* Unterminated or broken: nothing after it can be trusted. */
            t->kind = TOK_BAD;
            t->bad = DMARC_DIAG_SYNTAX;
            t->start = err_at;
            t->end = lx->pos = lx->len;
            return;
        }
        t->kind = c == '"' ? TOK_QUOTED : TOK_LITERAL;
        t->end = lx->pos = n;
        return;
    }
    if (is_special(c)) {
        t->kind = TOK_SPECIAL;
        t->special = (char)c;
        t->end = ++lx->pos;
        return;
    }
    if (c == '=' && lx->pos + 1 < lx->len && s[lx->pos + 1] == '?' &&
        (n = eword_end(s, lx->len, lx->pos)) > 0) {
        t->kind = TOK_EWORD;
        t->end = lx->pos = n;
        return;
    }
    if (is_atext(c)) {
        while (lx->pos < lx->len && is_atext((unsigned char)s[lx->pos]))
            lx->pos++;
        t->kind = TOK_ATOM;
        t->end = lx->pos;
        return;
    }
    /* NUL, a stray ')' ']' or '\', a bare line break, a control character. */
    t->kind = TOK_BAD;
    t->bad = DMARC_DIAG_SYNTAX;
    t->end = ++lx->pos;
}

static bool tok_is(const token *t, char special)
{
    return t->kind == TOK_SPECIAL && t->special == special;
}

/* RFC 5322 §3.2.5 word, plus encoded-words (phrases) */
static bool tok_is_word(const token *t)
{
    return t->kind == TOK_ATOM || t->kind == TOK_QUOTED || t->kind == TOK_EWORD;
}

/* ** {======================================================
** Parser (pass 1): where each mailbox's parts are
** ======================================================= */

typedef struct span {
    size_t start, end;
} span;

typedef struct mailbox_plan {
    span display;        /* phrase before '<' */
    span local;          /* local-part tokens */
    span domain;         /* domain tokens after '@' */
    bool has_display;    /* a phrase came before '<' */
    bool has_at;         /* an '@' and a domain followed the local-part */
    bool domain_literal; /* the domain is a [literal] */
} mailbox_plan;

/* A run of words: a phrase or a local-part, told apart by what follows. */
typedef struct word_run {
    span sp;
    size_t count;
    bool has_eword; /* holds an encoded-word: only a display name may */
    bool loose;     /* words set apart by CFWS with no dot between them */
} word_run;

typedef struct parser {
    lexer lx;
    token tok; /* the current token, not consumed yet */
    mailbox_plan plans[DMARC_FROM_MAX_MAILBOXES];
    size_t count;
    size_t skipped;       /* mailboxes past the limit that add no domain */
    size_t dropped;       /* unreadable elements left out */
    bool saw_group;       /* a group was read, so an empty list is legitimate */
    bool stopped;         /* DMARC_FROM_MAX_MAILBOXES reached: the rest is ignored */
    bool fatal;           /* an unreadable element might hide an address */
    dmarc_diag_code err;  /* why the current element failed */
    size_t err_at;        /* and where */
    dmarc_diag_code code; /* the problem reported to the caller */
    size_t code_at;
} parser;

/*
** Remember a problem. The caller hears of the first one in the input, except
** that running out of room for mailboxes always wins: it means some authors
** were never read, and an evaluation that missed one must not pass [FROM-6].
*/
static void note(parser *p, dmarc_diag_code code, size_t offset)
{
    if (p->code == DMARC_DIAG_TOO_MANY_MAILBOXES)
        return;
    if (p->code == DMARC_DIAG_NONE || offset < p->code_at ||
        code == DMARC_DIAG_TOO_MANY_MAILBOXES) {
        p->code = code;
        p->code_at = offset;
    }
}

static void advance(parser *p)
{
    lex_next(&p->lx, &p->tok);
}

/* The current element cannot be read: say why, at the current token. */
static bool fail(parser *p)
{
    p->err = p->tok.kind == TOK_BAD ? p->tok.bad : DMARC_DIAG_SYNTAX;
    p->err_at = p->tok.start;
    return false;
}

/*
** Does a kept mailbox already carry the domain of @plan, byte for byte up to
** ASCII case? Such a domain normalizes to the same name, so a mailbox past
** the limit that repeats it adds no author domain [FROM-7]. A different
** spelling of the same name (a trailing dot, a U-label) is not recognized
** here: it takes room as a new domain would, which can only end the field
** early (flagged), never hide a domain. Work: at most
** DMARC_FROM_MAX_MAILBOXES compares per mailbox past the limit, each bounded
** by the domain's length.
*/
static bool domain_already_kept(const parser *p, const mailbox_plan *plan)
{
    const char *s = p->lx.s;
    size_t i, n = plan->domain.end - plan->domain.start;

    for (i = 0; i < p->count; i++) {
        const mailbox_plan *k = &p->plans[i];
        if (k->has_at && !k->domain_literal && k->domain.end - k->domain.start == n &&
            dmarc__ieq(s + k->domain.start, n, s + plan->domain.start, n))
            return true;
    }
    return false;
}

static void add_plan(parser *p, const mailbox_plan *plan, size_t at)
{
    if (p->count == DMARC_FROM_MAX_MAILBOXES) {
        /* The bound counts distinct domains, not addresses [OPEN-5]: a
        ** mailbox past it with no domain, or one already kept, cannot add
        ** an author domain and is skipped. Only a possibly new domain ends
        ** the field, flagged, so that the evaluation cannot pass. */
        if (!plan->has_at || plan->domain_literal || domain_already_kept(p, plan)) {
            p->skipped++;
            return;
        }
        p->stopped = true;
        note(p, DMARC_DIAG_TOO_MANY_MAILBOXES, at);
        return;
    }
    p->plans[p->count++] = *plan;
}

/* Words up to the first non-word token. Bounded by the input: each round
** consumes a token. */
static void read_words(parser *p, word_run *w)
{
    const char *s = p->lx.s;
    bool prev_dot = false;

    w->count = 0;
    w->has_eword = false;
    w->loose = false;
    w->sp.start = w->sp.end = p->tok.start;
    while (tok_is_word(&p->tok)) {
        const token *t = &p->tok;
        /* RFC 5322 §4.4 obs-local-part: word *("." word), CFWS allowed around
        ** the dots. Words set apart by CFWS alone make a phrase, never a
        ** local-part. */
        if (w->count > 0 && t->cfws_before && !prev_dot && s[t->start] != '.')
            w->loose = true;
        prev_dot = t->kind == TOK_ATOM && s[t->end - 1] == '.';
        if (t->kind == TOK_EWORD)
            w->has_eword = true;
        w->sp.end = t->end;
        w->count++;
        advance(p);
    }
}

/*
** domain = dot-atom / domain-literal / obs-domain (RFC 5322 §3.4.1, §4.4).
** An encoded-word here is taken as the atom it is spelled as (RFC 2047 §5:
** never decoded in an addr-spec); the normalizer then refuses it.
*/
static bool parse_domain(parser *p, mailbox_plan *plan)
{
    const char *s = p->lx.s;
    bool prev_dot = false;
    size_t n = 0;

    if (p->tok.kind == TOK_LITERAL) {
        plan->domain.start = p->tok.start;
        plan->domain.end = p->tok.end;
        plan->domain_literal = true;
        advance(p);
        return true;
    }
    plan->domain.start = p->tok.start;
    /* Bounded by the input: each round consumes a token. */
    while (p->tok.kind == TOK_ATOM || p->tok.kind == TOK_EWORD) {
        /* `exa mple.com`: two names or one? Nobody can tell. */
        if (n > 0 && !prev_dot && s[p->tok.start] != '.')
            return fail(p);
        prev_dot = s[p->tok.end - 1] == '.';
        plan->domain.end = p->tok.end;
        n++;
        advance(p);
    }
    return n > 0 ? true : fail(p);
}

static bool parse_group(parser *p);
static bool recover(parser *p, size_t elem_start, size_t count_before, bool in_group);

/* angle-addr = "<" [obs-route] addr-spec ">" (RFC 5322 §3.4, §4.4). */
static bool parse_angle(parser *p, mailbox_plan *plan, size_t elem_at)
{
    word_run words;

    advance(p); /* '<' */
    /* obs-route = obs-domain-list ":", a source route; the route is ignored.
    ** Bounded by the input: each round consumes a token. */
    if (tok_is(&p->tok, ',') || tok_is(&p->tok, '@')) {
        for (;;) {
            if (tok_is(&p->tok, ',')) {
                advance(p);
            } else if (tok_is(&p->tok, '@')) {
                mailbox_plan route;
                advance(p);
                memset(&route, 0, sizeof route);
                if (!parse_domain(p, &route))
                    return false;
            } else if (tok_is(&p->tok, ':')) {
                advance(p);
                break;
            } else {
                return fail(p);
            }
        }
    }
    read_words(p, &words);
    if (words.count == 0)
        return fail(p);
    plan->local = words.sp;
    if (tok_is(&p->tok, '@')) {
        advance(p);
        plan->has_at = true;
        if (!parse_domain(p, plan))
            return false;
    } else if (words.has_eword || words.loose) {
        return fail(p);
    }
    if (!tok_is(&p->tok, '>'))
        return fail(p);
    advance(p);
    if (words.loose)
        note(p, DMARC_DIAG_SYNTAX, words.sp.start);
    add_plan(p, plan, elem_at);
    return true;
}

/* address = mailbox / group; mailbox = name-addr / addr-spec (§3.4). */
static bool parse_address(parser *p, bool in_group)
{
    mailbox_plan plan;
    word_run words;
    size_t elem_at = p->tok.start;

    memset(&plan, 0, sizeof plan);
    read_words(p, &words);
    if (tok_is(&p->tok, '<')) {
        if (words.count > 0) {
            plan.has_display = true;
            plan.display = words.sp;
        }
        return parse_angle(p, &plan, elem_at);
    }
    if (tok_is(&p->tok, ':')) {
        /* RFC 5322 §3.4: a group needs a display-name and does not nest. */
        if (in_group || words.count == 0)
            return fail(p);
        return parse_group(p);
    }
    if (words.count == 0)
        return fail(p);
    plan.local = words.sp;
    if (tok_is(&p->tok, '@')) {
        advance(p);
        plan.has_at = true;
        if (!parse_domain(p, &plan))
            return false;
    } else if (words.has_eword || words.loose) {
        /* A display name with no address: `John Smith`, or an encoded-word
        ** that would spell one; never a mailbox [FROM-1]. */
        return fail(p);
    }
    /* Otherwise `user` alone: a mailbox without a domain [FROM-4]. */
    if (words.loose)
        note(p, DMARC_DIAG_SYNTAX, words.sp.start);
    add_plan(p, &plan, elem_at);
    return true;
}

/*
** group-list after "display-name:", up to ";" (RFC 5322 §3.4, §4.4
** obs-group-list). Members that cannot be read are handled like top-level
** elements. Bounded by the input: each round consumes a token.
*/
static bool parse_group(parser *p)
{
    advance(p); /* ':' */
    p->saw_group = true;
    while (!p->stopped) {
        size_t member_start = p->tok.lead, count_before = p->count;
        if (tok_is(&p->tok, ';')) {
            advance(p);
            return true;
        }
        if (tok_is(&p->tok, ',')) {
            advance(p);
            continue;
        }
        if (p->tok.kind == TOK_END) {
            /* `undisclosed-recipients:` left open: harmless, but noted. */
            note(p, DMARC_DIAG_SYNTAX, p->tok.start);
            return true;
        }
        if (parse_address(p, true)) {
            if (p->stopped || tok_is(&p->tok, ',') || tok_is(&p->tok, ';') ||
                p->tok.kind == TOK_END)
                continue;
            fail(p);
        }
        if (p->fatal || !recover(p, member_start, count_before, true))
            return false;
    }
    return true;
}

/*
** Skip the rest of an element that did not parse, up to the next separator,
** and forget what it added. False (and p->fatal) when the element holds an
** '@': see the top of the file. Bounded by the input: each round consumes a
** token.
*/
static bool recover(parser *p, size_t elem_start, size_t count_before, bool in_group)
{
    while (p->tok.kind != TOK_END && !tok_is(&p->tok, ',') && !(in_group && tok_is(&p->tok, ';')))
        advance(p);
    p->count = count_before;
    if (memchr(p->lx.s + elem_start, '@', p->tok.start - elem_start) != NULL) {
        p->fatal = true;
        return false;
    }
    p->dropped++;
    note(p, p->err, p->err_at);
    return true;
}

/*
** The field: mailbox-list, with obs-mbox-list's empty elements and groups
** (RFC 5322 §3.6.2 From, §4.4). Bounded by the input: each round consumes a
** token, and DMARC_FROM_MAX_MAILBOXES ends it early.
*/
static void parse_field(parser *p)
{
    advance(p);
    while (!p->stopped && p->tok.kind != TOK_END) {
        size_t elem_start = p->tok.lead, count_before = p->count;
        if (tok_is(&p->tok, ',')) {
            advance(p);
            continue;
        }
        if (parse_address(p, false)) {
            if (p->stopped)
                break;
            if (tok_is(&p->tok, ',')) {
                advance(p);
                continue;
            }
            if (p->tok.kind == TOK_END)
                break;
            fail(p);
        }
        if (p->fatal || !recover(p, elem_start, count_before, false))
            break;
    }
}

/* }====================================================== */

/* ** {======================================================
** RFC 2047 encoded-words (display names only)
** ======================================================= */

typedef enum eword_charset { CHARSET_UTF8, CHARSET_ASCII, CHARSET_LATIN1 } eword_charset;

static int hex_value(unsigned char c)
{
    if (dmarc__is_digit(c))
        return c - '0';
    c = (unsigned char)dmarc__lower(c);
    return (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
}

static int base64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (dmarc__is_digit(c))
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* RFC 2047 §4.1 "B": base64 (RFC 4648 §4); a missing final padding is
** forgiven, a truncated quantum or data after padding is not. */
static bool decode_b(const char *t, size_t n, unsigned char *dst, size_t *outlen)
{
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t i, k = 0, pad = 0;

    for (i = 0; i < n; i++) {
        int v;
        if (t[i] == '=') {
            pad++;
            continue;
        }
        if (pad > 0 || (v = base64_value((unsigned char)t[i])) < 0)
            return false;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            dst[k++] = (unsigned char)(acc >> bits);
        }
    }
    if (pad > 2 || bits >= 6)
        return false;
    *outlen = k;
    return true;
}

/* RFC 2047 §4.2 "Q": '_' is a space, =XX a byte, the rest as is. */
static bool decode_q(const char *t, size_t n, unsigned char *dst, size_t *outlen)
{
    size_t i = 0, k = 0;

    while (i < n) {
        if (t[i] == '=') {
            int hi, lo;
            if (i + 2 >= n)
                return false;
            hi = hex_value((unsigned char)t[i + 1]);
            lo = hex_value((unsigned char)t[i + 2]);
            if (hi < 0 || lo < 0)
                return false;
            dst[k++] = (unsigned char)(hi * 16 + lo);
            i += 3;
        } else {
            dst[k++] = t[i] == '_' ? ' ' : (unsigned char)t[i];
            i++;
        }
    }
    *outlen = k;
    return true;
}

/* Well-formed UTF-8 (RFC 3629 §4): no overlong forms, surrogates or values
** past U+10FFFF. */
static bool utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        unsigned char c = s[i];
        size_t need, j;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xe0) == 0xc0) {
            need = 1;
            cp = c & 0x1fu;
            min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            need = 2;
            cp = c & 0x0fu;
            min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            need = 3;
            cp = c & 0x07u;
            min = 0x10000;
        } else {
            return false;
        }
        if (n - i - 1 < need)
            return false;
        for (j = 1; j <= need; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + j] & 0x3fu);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += need + 1;
    }
    return true;
}

/*
** Decode one encoded-word (already shaped by eword_end) into @dst, which
** has room for twice its length, as UTF-8. False when the word must be
** shown as written: unknown charset, bad encoding, bytes its charset does
** not allow, or control characters (which have no place in a name and
** could forge log lines).
*/
static bool decode_eword(const char *w, size_t n, char *dst, size_t *outlen)
{
    unsigned char *out = (unsigned char *)dst;
    const char *cs = w + 2, *q = memchr(cs, '?', n - 2), *star;
    size_t cs_len = (size_t)(q - cs), k = 0, i, high = 0;
    eword_charset charset;
    bool ok;

    /* RFC 2231 §5: charset*language; the language is not needed. */
    star = memchr(cs, '*', cs_len);
    if (star != NULL)
        cs_len = (size_t)(star - cs);
    if (dmarc__ieq(cs, cs_len, "utf-8", 5))
        charset = CHARSET_UTF8;
    else if (dmarc__ieq(cs, cs_len, "us-ascii", 8))
        charset = CHARSET_ASCII;
    else if (dmarc__ieq(cs, cs_len, "iso-8859-1", 10))
        charset = CHARSET_LATIN1;
    else
        return false;
    /* After the charset: "?" encoding "?" text "?=". */
    if (dmarc__lower((unsigned char)q[1]) == 'b')
        ok = decode_b(q + 3, (size_t)(w + n - 2 - (q + 3)), out, &k);
    else
        ok = decode_q(q + 3, (size_t)(w + n - 2 - (q + 3)), out, &k);
    if (!ok)
        return false;
    for (i = 0; i < k; i++) {
        if ((out[i] < 0x20 && out[i] != '\t') || out[i] == 0x7f)
            return false;
        if (out[i] >= 0x80)
            high++;
    }
    if (charset == CHARSET_UTF8 && !utf8_valid(out, k))
        return false;
    if (charset == CHARSET_ASCII && high > 0)
        return false;
    if (charset == CHARSET_LATIN1 && high > 0) {
        /* ISO-8859-1 is the first 256 code points: widen in place, from the
        ** end, into two-byte sequences. */
        size_t j = k + high;
        for (i = k; i-- > 0;) {
            unsigned char c = out[i];
            if (c < 0x80) {
                out[--j] = c;
            } else {
                out[--j] = (unsigned char)(0x80 | (c & 0x3f));
                out[--j] = (unsigned char)(0xc0 | (c >> 6));
            }
        }
        k += high;
    }
    *outlen = k;
    return true;
}

/* }====================================================== */

/* ** {======================================================
** Building the strings (pass 3)
** ======================================================= */

struct dmarc_from {
    dmarc_allocator alloc; /* what the block came from */
    size_t size;           /* bytes in the block, for the allocator */
    size_t count;
    size_t skipped;
    dmarc_mailbox boxes[]; /* then the strings, NUL-terminated */
};

/* Content of a quoted-string: quoted-pairs resolved, folding unfolded
** (RFC 5322 §3.2.4: the CRLF of FWS is not part of the content). */
static size_t unquote(const char *s, const token *t, char *dst)
{
    size_t i = t->start + 1, n = 0;

    while (i + 1 < t->end) {
        if (s[i] == '\\') {
            dst[n++] = s[i + 1];
            i += 2;
        } else if (s[i] == '\r' || s[i] == '\n') {
            i++;
        } else {
            dst[n++] = s[i++];
        }
    }
    return n;
}

/* First token of @sp, from a fresh lexer over the whole input. */
static void span_lexer(const parser *p, span sp, lexer *lx)
{
    lx->s = p->lx.s;
    lx->len = p->lx.len;
    lx->pos = sp.start;
}

/* The local-part as written, quotes removed and escapes resolved. Words
** set apart without a dot (noted as a problem) keep one space. */
static size_t build_local(const parser *p, span sp, char *dst)
{
    const char *s = p->lx.s;
    lexer lx;
    token t;
    size_t n = 0;
    bool first = true, prev_dot = false;

    span_lexer(p, sp, &lx);
    /* Bounded by the span: each round consumes a token. */
    for (lex_next(&lx, &t); tok_is_word(&t) && t.end <= sp.end; lex_next(&lx, &t)) {
        if (!first && t.cfws_before && !prev_dot && s[t.start] != '.')
            dst[n++] = ' ';
        if (t.kind == TOK_QUOTED) {
            n += unquote(s, &t, dst + n);
        } else {
            memcpy(dst + n, s + t.start, t.end - t.start);
            n += t.end - t.start;
        }
        prev_dot = t.kind == TOK_ATOM && s[t.end - 1] == '.';
        first = false;
    }
    return n;
}

/*
** The display name: words joined by one space where CFWS separated them,
** quoted strings unquoted, encoded-words decoded. RFC 2047 §6.2: white space
** between two encoded-words is not displayed. A word that does not decode is
** shown as written and noted [BAD_ENCODED_WORD]. @dst has room for twice
** the span (ISO-8859-1 doubles at most).
*/
static size_t build_display(parser *p, span sp, char *dst)
{
    const char *s = p->lx.s;
    lexer lx;
    token t;
    size_t n = 0, dec;
    bool first = true, prev_decoded = false;

    span_lexer(p, sp, &lx);
    /* Bounded by the span: each round consumes a token. */
    for (lex_next(&lx, &t); tok_is_word(&t) && t.end <= sp.end; lex_next(&lx, &t)) {
        bool spaced = !first && t.cfws_before;
        if (t.kind == TOK_EWORD) {
            if (spaced && !prev_decoded)
                dst[n++] = ' ';
            if (decode_eword(s + t.start, t.end - t.start, dst + n, &dec)) {
                n += dec;
                prev_decoded = true;
                first = false;
                continue;
            }
            note(p, DMARC_DIAG_BAD_ENCODED_WORD, t.start);
            if (spaced && prev_decoded)
                dst[n++] = ' ';
        } else if (spaced) {
            dst[n++] = ' ';
        }
        if (t.kind == TOK_QUOTED) {
            n += unquote(s, &t, dst + n);
        } else {
            memcpy(dst + n, s + t.start, t.end - t.start);
            n += t.end - t.start;
        }
        prev_decoded = false;
        first = false;
    }
    return n;
}

/*
** Normalize the domain of @plan into @dst (DMARC_DOMAIN_MAX_LEN + 1 bytes).
** Returns NONE, or why the mailbox has no usable domain.
*/
static dmarc_diag_code build_domain(const parser *p, const mailbox_plan *plan, char *dst,
                                    size_t *dlen)
{
    char joined[DMARC__DOMAIN_MAX_INPUT];
    const char *s = p->lx.s, *name = s + plan->domain.start;
    size_t n = plan->domain.end - plan->domain.start;
    dmarc_diag_code why;
    lexer lx;
    token t;

    /* [FROM-4]: an address literal names no domain to look a policy up for. */
    if (plan->domain_literal)
        return DMARC_DIAG_NO_DOMAIN;
    span_lexer(p, plan->domain, &lx);
    lex_next(&lx, &t);
    if (t.end != plan->domain.end) {
        /* obs-domain with CFWS around the dots: join the atoms. Bounded by
        ** the span: each round consumes a token. */
        n = 0;
        for (; t.kind != TOK_END && t.end <= plan->domain.end; lex_next(&lx, &t)) {
            if (t.end - t.start > sizeof joined - n)
                return DMARC_DIAG_TOO_LONG;
            memcpy(joined + n, s + t.start, t.end - t.start);
            n += t.end - t.start;
        }
        name = joined;
    }
    if (dmarc__domain_normalize(name, n, dst, DMARC_DOMAIN_MAX_LEN + 1, dlen, &why) != DMARC_OK)
        return why;
    return DMARC_DIAG_NONE;
}

/* Bytes of strings plan @m may need: see build_display for the doubling. */
static size_t plan_bytes(const mailbox_plan *m)
{
    size_t n = m->local.end - m->local.start + 1;
    if (m->has_display)
        n += 2 * (m->display.end - m->display.start) + 1;
    if (m->has_at && !m->domain_literal)
        n += DMARC_DOMAIN_MAX_LEN + 1;
    return n;
}

static void build_mailbox(parser *p, const mailbox_plan *plan, dmarc_mailbox *m, char *arena,
                          size_t *used)
{
    char *at = arena + *used;
    size_t n;
    dmarc_diag_code why;

    n = build_local(p, plan->local, at);
    at[n] = '\0';
    m->local = at;
    m->local_len = n;
    at += n + 1;

    m->display = NULL;
    m->display_len = 0;
    if (plan->has_display) {
        n = build_display(p, plan->display, at);
        if (n > 0) {
            at[n] = '\0';
            m->display = at;
            m->display_len = n;
            at += n + 1;
        }
    }

    m->domain = NULL;
    m->domain_len = 0;
    m->problem = DMARC_DIAG_NONE;
    if (!plan->has_at) {
        m->problem = DMARC_DIAG_NO_DOMAIN;
        note(p, DMARC_DIAG_NO_DOMAIN, plan->local.end);
    } else if ((why = build_domain(p, plan, at, &n)) != DMARC_DIAG_NONE) {
        m->problem = why;
        note(p, why, plan->domain.start);
    } else {
        m->domain = at;
        m->domain_len = n;
        at += n + 1;
    }
    *used = (size_t)(at - arena);
}

/* }====================================================== */

static void set_diag(dmarc_diag *diag, dmarc_diag_code code, size_t offset)
{
    if (diag == NULL)
        return;
    diag->code = code;
    diag->offset = offset;
    diag->tag[0] = '\0';
}

dmarc_status dmarc_from_parse(const dmarc_allocator *alloc, const char *raw, size_t len,
                              dmarc_from **out, dmarc_diag *diag)
{
    parser p;
    dmarc_from *f;
    size_t i, arena_size = 0, size, used = 0;
    char *arena;

    if (out == NULL || (raw == NULL && len > 0))
        return DMARC_ERR_INVAL;
    if (len > DMARC_FROM_MAX_LEN) {
        set_diag(diag, DMARC_DIAG_TOO_LONG, DMARC_FROM_MAX_LEN);
        return DMARC_ERR_SYNTAX;
    }
    /* The plans are written as they are found; only the rest needs a start. */
    p.lx.s = raw != NULL ? raw : "";
    p.lx.len = len;
    p.lx.pos = 0;
    p.count = p.dropped = p.skipped = 0;
    p.saw_group = p.stopped = p.fatal = false;
    p.err = p.code = DMARC_DIAG_NONE;
    p.err_at = p.code_at = 0;

    parse_field(&p);
    if (p.fatal) {
        set_diag(diag, p.err, p.err_at);
        return DMARC_ERR_SYNTAX;
    }
    if (p.count == 0 && (!p.saw_group || p.dropped > 0)) {
        /* Nothing usable: empty, only comments or commas, or only junk. */
        if (p.code == DMARC_DIAG_NONE)
            set_diag(diag, DMARC_DIAG_SYNTAX, p.tok.start);
        else
            set_diag(diag, p.code, p.code_at);
        return DMARC_ERR_SYNTAX;
    }

    for (i = 0; i < p.count; i++)
        arena_size += plan_bytes(&p.plans[i]);
    size = sizeof *f + p.count * sizeof f->boxes[0] + arena_size;
    f = dmarc__alloc(alloc, size);
    if (f == NULL)
        return DMARC_ERR_NOMEM;
    if (alloc != NULL) {
        f->alloc = *alloc;
    } else {
        f->alloc.fn = NULL;
        f->alloc.ud = NULL;
    }
    f->size = size;
    f->count = p.count;
    f->skipped = p.skipped;
    arena = (char *)(f->boxes + p.count);
    for (i = 0; i < p.count; i++)
        build_mailbox(&p, &p.plans[i], &f->boxes[i], arena, &used);

    set_diag(diag, p.code, p.code_at);
    *out = f;
    return DMARC_OK;
}

void dmarc_from_free(dmarc_from *f)
{
    if (f != NULL) {
        dmarc_allocator a = f->alloc;
        dmarc__free(&a, f, f->size);
    }
}

size_t dmarc_from_count(const dmarc_from *f)
{
    return f != NULL ? f->count : 0;
}

size_t dmarc_from_skipped(const dmarc_from *f)
{
    return f != NULL ? f->skipped : 0;
}

const dmarc_mailbox *dmarc_from_mailbox(const dmarc_from *f, size_t i)
{
    if (f == NULL || i >= f->count)
        return NULL;
    return &f->boxes[i];
}

/* ** {======================================================
** Lenient reading of a field that does not parse (RFC 9989 §11.5)
** ======================================================= */

/* Bytes a host name may hold as written in a From: letters, digits, '-',
** '.', '_' and UTF-8 (U-labels); the normalizer decides the rest. */
static bool is_host_byte(unsigned char c)
{
    return dmarc__is_alpha(c) || dmarc__is_digit(c) || c == '-' || c == '.' || c == '_' ||
           c >= 0x80;
}

/*
** A field the strict parser refuses (a bare CR, comments nested past the
** bound, a trailing word, an unclosed comment) is still shown by mail
** readers, which look for the address in it. The structure around the '@'
** cannot be trusted, so neither quotes nor comments are honoured here:
** every '@' counts, and the reading stands only when they all name one
** domain. Several domains, a '@' with no host name after it, or a name that
** does not normalize: ambiguous, nothing is extracted. Bounded by the input
** and by DMARC_FROM_MAX_MAILBOXES normalizations.
*/
bool dmarc__from_lenient(const char *raw, size_t len, char *out, size_t *outlen)
{
    char cand[DMARC_DOMAIN_MAX_LEN + 1];
    size_t pos = 0, n, found = 0, ats = 0;
    const char *at;

    while (pos < len && (at = memchr(raw + pos, '@', len - pos)) != NULL) {
        size_t start = (size_t)(at - raw) + 1, end;
        if (++ats > DMARC_FROM_MAX_MAILBOXES)
            return false;
        while (start < len && dmarc__is_wsp((unsigned char)raw[start]))
            start++;
        end = start;
        while (end < len && is_host_byte((unsigned char)raw[end]))
            end++;
        if (end == start || dmarc__domain_normalize(raw + start, end - start, cand, sizeof cand, &n,
                                                    NULL) != DMARC_OK)
            return false;
        if (found == 0) {
            memcpy(out, cand, n + 1);
            *outlen = n;
            found = 1;
        } else if (n != *outlen || memcmp(out, cand, n) != 0) {
            return false;
        }
        pos = end;
    }
    return found == 1;
}

/* }====================================================== */
