/*
** dmarc.xml: the C side of `dmarc report ingest`. Aggregate reports arrive from the whole
** Internet, so everything here reads hostile input ([MAIL-6], RFC 9990 §8: zip and XML
** bombs, forged reports) and every loop has a named bound.
**
**   xml.parse(data [, opts])        libxml2 SAX2 push parse into a small element tree
**   xml.records(data [, opts])      the same parse, the records handed over a batch at a time
**   xml.map(path [, opts])          a file's document for both, read with pread a window at a
**                                   time (inflated as it is read when compressed); the
**                                   name is historical: the file is never mapped
**   xml.inflate(data [, opts])      gzip / zlib / raw deflate, output and ratio capped
**   xml.unzip(data [, opts])        the report entry of a zip archive (stored or deflate)
**   xml.unpack(src, dst [, opts])   one layer (gzip, zlib, zip) from a file into a file, a
**                                   window at a time, with the checks of the two above
**   xml.hmac_sha256(key, message)   keyed hash (RFC 2104, FIPS 180-4; libcrypto) for the
**                                   envelope_to privacy option
**   xml.gzip(data [, opts])         one gzip member (zlib), for the reports we send
**
** libxml2 is used with XML_PARSE_NONET, without XML_PARSE_NOENT (no entity substitution),
** without DTD loading and without XML_PARSE_HUGE. A report never needs a DTD, so a DOCTYPE
** stops the parse in the internalSubset callback, before a single entity declaration is
** read: entity expansion bombs and external entities never get a chance.
**
** Error contract (style.md, "Error conventions"): bad input gives nil, message, code with
** code one of 'xml' (not well-formed, truncated), 'dtd' (a DOCTYPE), 'limit' (size, depth,
** element or name count), 'bomb' (decompressed size or ratio), 'truncated' (compressed
** stream cut short), 'corrupt' (bad compressed data, a CRC-32 mismatch), 'zip' (malformed
** archive), 'zip_entries' (no single report entry), 'unsupported' (zip64, encryption,
** method); misuse (wrong argument types, unknown or bad options) and out of memory raise
** (bindings/binding.h).
**
** Memory: every C allocation belongs to a userdata (parse state, inflate state) from the
** moment it is made, and its __gc frees it, so a Lua error raised while results are pushed
** (out of memory) never leaks. libxml2 and zlib callbacks never call Lua.
*/
#define _DEFAULT_SOURCE /* pread */
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libxml/parser.h>
#include <libxml/xmlerror.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <zlib.h>

#include "binding.h"

#define LDMARC_XML_PARSE_MT "dmarc.xml.parse"
#define LDMARC_XML_FILE_MT "dmarc.xml.map"
#define LDMARC_XML_INFLATE_MT "dmarc.xml.inflate"
#define LDMARC_XML_DEFLATE_MT "dmarc.xml.deflate"
#define LDMARC_XML_UNPACK_MT "dmarc.xml.unpack"

/* Input accepted by xml.parse: RFC 7489 §8 asks receivers to accept reports of 10 MB; a
** large receiver's uncompressed XML is several times that. */
#define LDMARC_XML_DEFAULT_MAX_INPUT ((size_t)64 << 20)
/* Nesting: a report is 5 levels deep (feedback/record/auth_results/dkim/domain); room is
** left for extensions ([AGG-10]). The hard cap bounds the C stack of the conversion. */
#define LDMARC_XML_DEFAULT_MAX_DEPTH 16
#define LDMARC_XML_HARD_MAX_DEPTH 64
/* Elements in one document (a record is about 25). */
#define LDMARC_XML_DEFAULT_MAX_ELEMENTS 4000000
/* Bytes kept of one text node; longer text is cut and counted. */
#define LDMARC_XML_DEFAULT_MAX_TEXT 65536
/* Distinct element names (RFC 9990 has about 50). */
#define LDMARC_XML_MAX_NAMES 1024
#define LDMARC_XML_NAME_BUCKETS 256
/* "parent/child" pairs whose children are collected into arrays. */
#define LDMARC_XML_MAX_ARRAY_PAIRS 64
/* Bytes handed to libxml2 per xmlParseChunk call. */
#define LDMARC_XML_CHUNK 65536
#define LDMARC_XML_ARENA_BLOCK 65536
#define LDMARC_XML_ERRMSG 256
/* Attributes on one element (a report's root has three: xmlns, xmlns:xsi and
** xsi:schemaLocation). libxml2 compares every attribute of a start tag with every earlier one,
** so an element with n attributes costs n^2: 300,000 of them on one element (3.5 MB) take
** minutes. They are counted before libxml2 reads a byte, and counted again in the SAX
** callback. */
#define LDMARC_XML_DEFAULT_MAX_ATTRIBUTES 64
#define LDMARC_XML_HARD_MAX_ATTRIBUTES 4096
/* Code units of the document read to find the XML declaration's encoding. */
#define LDMARC_XML_DECL_UNITS 256

/* Decompression: output cap, ratio cap, and the output size under which the ratio is not
** judged (a tiny report can compress very well). */
#define LDMARC_XML_DEFAULT_MAX_OUTPUT ((size_t)64 << 20)
#define LDMARC_XML_DEFAULT_MAX_RATIO 200
#define LDMARC_XML_RATIO_FLOOR ((size_t)1 << 20)
/* Output produced per inflate() call, so the caps are checked often. */
#define LDMARC_XML_INFLATE_STEP ((size_t)256 << 10)
/* Concatenated gzip members in one file (gzip allows several). */
#define LDMARC_XML_MAX_GZIP_MEMBERS 16

/* Zip: entries looked at in the central directory, and the EOCD search window (the
** archive comment is at most 65535 bytes). */
#define LDMARC_XML_DEFAULT_MAX_ENTRIES 16
#define LDMARC_XML_HARD_MAX_ENTRIES 1024
#define LDMARC_XML_ZIP_EOCD_SIZE 22
#define LDMARC_XML_ZIP_MAX_COMMENT 65535
#define LDMARC_XML_ZIP_CDIR_SIZE 46
#define LDMARC_XML_ZIP_LOCAL_SIZE 30

/* Input of xml.gzip: zlib counts in uInt; an aggregate report is far below this. */
#define LDMARC_XML_MAX_GZIP_INPUT ((size_t)1 << 30)

/* An integer option of table idx, in [lo, hi], default def. Raises on misuse. */
static size_t opt_size(lua_State *L, int idx, const char *name, size_t def, size_t lo, size_t hi)
{
    lua_Integer v;
    if (lua_isnoneornil(L, idx)) {
        return def;
    }
    lua_getfield(L, idx, name);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return def;
    }
    v = luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    if (v < 0 || (uint64_t)v < lo || (uint64_t)v > hi) {
        luaL_error(L, "dmarc.xml: option %s out of range", name);
    }
    return (size_t)v;
}

/*
** {======================================================================
** Arena: nodes, names and texts of one parse, freed at once
** =======================================================================
*/
typedef struct arena_block {
    struct arena_block *next;
    size_t used;
    size_t cap;
    double align; /* keeps the data that follows suitably aligned */
} arena_block;

typedef struct arena {
    arena_block *head;
    size_t block; /* block size; 0 for LDMARC_XML_ARENA_BLOCK */
} arena;

static void *arena_alloc(arena *a, size_t n)
{
    arena_block *b = a->head;
    void *p;
    n = (n + 7u) & ~(size_t)7u;
    if (b == NULL || b->cap - b->used < n) {
        size_t block = a->block != 0 ? a->block : LDMARC_XML_ARENA_BLOCK;
        size_t cap = n > block ? n : block;
        b = (arena_block *)malloc(sizeof(*b) + cap);
        if (b == NULL) {
            return NULL;
        }
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
    }
    p = (char *)(b + 1) + b->used;
    b->used += n;
    return p;
}

static void arena_free(arena *a)
{
    while (a->head != NULL) {
        arena_block *next = a->head->next;
        free(a->head);
        a->head = next;
    }
}
/* }====================================================================== */

/*
** {======================================================================
** Parse state and SAX2 callbacks
** =======================================================================
*/
typedef struct xname {
    const char *s;
    size_t len;
    unsigned hash;
    struct xname *next;
} xname;

typedef struct xnode {
    const xname *name;
    struct xnode *first, *last, *next;
    const char *text;
    size_t text_len;
} xnode;

/* One <record> of a streamed parse (xml.records): its nodes live in an arena of their own,
** freed as soon as the record has been handed to Lua, so memory holds a batch, not a report. */
typedef struct rec_box {
    struct rec_box *next;
    arena mem;
    xnode *node;
} rec_box;

typedef struct array_pair {
    const xname *parent, *child;
} array_pair;

typedef struct parse_state {
    xmlParserCtxtPtr ctxt;
    arena mem;
    xname *buckets[LDMARC_XML_NAME_BUCKETS];
    size_t nnames;
    array_pair pairs[LDMARC_XML_MAX_ARRAY_PAIRS];
    size_t npairs;
    xnode *stack[LDMARC_XML_HARD_MAX_DEPTH + 1];
    size_t depth;      /* open elements that are kept */
    size_t raw_depth;  /* every open element, skipped ones too */
    size_t skip_depth; /* > 0: inside a subtree skipped from this raw depth */
    char *text;        /* text of the innermost open element (malloc'd) */
    size_t text_len, text_cap;
    int text_cut;
    xnode *root;
    char *root_ns; /* the root element's namespace URI, NULL for none */
    size_t elements, skipped, truncated, duplicates;
    size_t max_depth, max_elements, max_text, max_attributes;
    /* Streaming (RFC 9990 §3: a report is a header and many records): 1 skips the root's
    ** <record> children and counts them (deferred); 2 keeps only those, one arena each. */
    int mode;
    size_t deferred;
    const xname *record_name;
    rec_box *cur;              /* the record being built (mode 2) */
    rec_box *done, *done_tail; /* completed records not yet handed over */
    size_t ndone;
    size_t off, len, batch; /* xml.records: bytes fed so far, document size, batch size */
    int finished;           /* the final xmlParseChunk has been made */
    /* A file's document (xml.map): the window zbuf[zfp..zend) of bytes read (inflated, for
    ** a compressed file) not yet fed; bytes before zsc are pre-scanned, zbase is the document
    ** offset of zbuf[0], zout every byte produced so far (leading white space too). zin holds
    ** compressed input read from the file; zpos is the file offset read next. */
    const struct file_doc *z;
    z_stream zs;
    int zlive, zfinal, zlead;
    unsigned zmembers;
    unsigned char *zbuf, *zin;
    size_t zfp, zsc, zend, zbase, zout, zskipped, zmax_input, zpos;
    size_t zwidth;
    int zbig_endian;
    struct scan_state *zss;
    const char *err_code; /* set once; the parse stops */
    char err_msg[LDMARC_XML_ERRMSG];
    int nomem;
} parse_state;

static void state_fail(parse_state *st, const char *code, const char *msg)
{
    if (st->err_code != NULL) {
        return;
    }
    st->err_code = code;
    strncpy(st->err_msg, msg, sizeof(st->err_msg) - 1);
    st->err_msg[sizeof(st->err_msg) - 1] = '\0';
    if (st->ctxt != NULL) {
        xmlStopParser(st->ctxt);
    }
}

static void state_nomem(parse_state *st)
{
    st->nomem = 1;
    state_fail(st, "nomem", "out of memory");
}

/* Where the nodes and texts of the element being read go. */
static arena *node_mem(parse_state *st)
{
    return st->cur != NULL ? &st->cur->mem : &st->mem;
}

static void rec_box_free(rec_box *b)
{
    arena_free(&b->mem);
    free(b);
}

/* The interned name for s, created when new; NULL when the name table is full (a 'limit'
** failure is recorded) or memory ran out. */
static const xname *intern(parse_state *st, const char *s, size_t len)
{
    unsigned h = dmarc_hash(0, s, len); /* the core's one hash */
    xname **slot = &st->buckets[h % LDMARC_XML_NAME_BUCKETS];
    xname *n;
    char *copy;
    for (n = *slot; n != NULL; n = n->next) {
        if (n->hash == h && n->len == len && memcmp(n->s, s, len) == 0) {
            return n;
        }
    }
    if (st->nnames >= LDMARC_XML_MAX_NAMES) {
        state_fail(st, "limit", "too many distinct element names");
        return NULL;
    }
    n = (xname *)arena_alloc(&st->mem, sizeof(*n));
    copy = (char *)arena_alloc(&st->mem, len + 1);
    if (n == NULL || copy == NULL) {
        state_nomem(st);
        return NULL;
    }
    memcpy(copy, s, len);
    copy[len] = '\0';
    n->s = copy;
    n->len = len;
    n->hash = h;
    n->next = *slot;
    *slot = n;
    st->nnames++;
    return n;
}

static int same_ns(const char *a, const xmlChar *b)
{
    return a != NULL && strcmp(a, (const char *)b) == 0;
}

static void sax_start(void *ctx, const xmlChar *localname, const xmlChar *prefix,
                      const xmlChar *uri, int nb_namespaces, const xmlChar **namespaces,
                      int nb_attributes, int nb_defaulted, const xmlChar **attributes)
{
    parse_state *st = (parse_state *)ctx;
    xnode *node, *parent;
    const xname *name;
    (void)prefix;
    (void)nb_namespaces;
    (void)namespaces;
    (void)nb_defaulted;
    (void)attributes;
    if (st->err_code != NULL) {
        return;
    }
    /* The pre-scan (attribute_scan) refuses such a document before libxml2 reads it; this
    ** holds the bound should the two ever disagree on where a start tag ends. */
    if ((size_t)nb_attributes + (size_t)nb_namespaces > st->max_attributes) {
        state_fail(st, "limit", "too many attributes on one element (max_attributes)");
        return;
    }
    if (++st->elements > st->max_elements) {
        state_fail(st, "limit", "too many elements");
        return;
    }
    if (++st->raw_depth > st->max_depth) {
        state_fail(st, "limit", "elements nested too deeply");
        return;
    }
    if (st->skip_depth > 0) {
        return;
    }
    if (st->root != NULL && uri != NULL && !same_ns(st->root_ns, uri)) {
        /* RFC 9990 §5 / [AGG-10]: extensions live in other namespaces and are skipped
        ** whole. Elements without a namespace are kept: RFC 7489's schema has
        ** unqualified local elements under a namespaced root. */
        st->skip_depth = st->raw_depth;
        st->skipped++;
        return;
    }
    name = intern(st, (const char *)localname, strlen((const char *)localname));
    if (name == NULL) {
        return;
    }
    if (st->mode != 0 && st->raw_depth == 2 && (st->mode == 1) == (name == st->record_name)) {
        /* Mode 1 skips the records (counted), mode 2 everything but the records. */
        st->skip_depth = st->raw_depth;
        if (st->mode == 1) {
            st->deferred++;
        }
        return;
    }
    if (st->mode == 2 && st->raw_depth == 2) {
        rec_box *b = (rec_box *)calloc(1, sizeof(*b));
        if (b == NULL) {
            state_nomem(st);
            return;
        }
        /* A record is about 2 KB of nodes and text. */
        b->mem.block = 4096;
        st->cur = b;
    }
    node = (xnode *)arena_alloc(node_mem(st), sizeof(*node));
    if (node == NULL) {
        state_nomem(st);
        return;
    }
    memset(node, 0, sizeof(*node));
    node->name = name;
    if (st->root == NULL) {
        st->root = node;
        if (uri != NULL) {
            size_t n = strlen((const char *)uri);
            st->root_ns = (char *)arena_alloc(&st->mem, n + 1);
            if (st->root_ns == NULL) {
                state_nomem(st);
                return;
            }
            memcpy(st->root_ns, uri, n + 1);
        }
    } else if (st->cur != NULL && st->cur->node == NULL) {
        st->cur->node = node; /* a streamed record: not linked under the root */
    } else {
        parent = st->stack[st->depth - 1];
        if (parent->last != NULL) {
            parent->last->next = node;
        } else {
            parent->first = node;
        }
        parent->last = node;
    }
    st->stack[st->depth++] = node;
    st->text_len = 0;
    st->text_cut = 0;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static void sax_end(void *ctx, const xmlChar *localname, const xmlChar *prefix, const xmlChar *uri)
{
    parse_state *st = (parse_state *)ctx;
    xnode *node;
    (void)localname;
    (void)prefix;
    (void)uri;
    if (st->err_code != NULL || st->raw_depth == 0) {
        return;
    }
    if (st->skip_depth > 0) {
        if (st->raw_depth == st->skip_depth) {
            st->skip_depth = 0;
        }
        st->raw_depth--;
        st->text_len = 0;
        return;
    }
    st->raw_depth--;
    node = st->stack[--st->depth];
    if (node->first == NULL && st->text_len > 0) {
        /* A leaf: its text, trimmed of XML white space. */
        const char *s = st->text, *e = st->text + st->text_len;
        char *copy;
        while (s < e && is_space(*s)) {
            s++;
        }
        while (e > s && is_space(e[-1])) {
            e--;
        }
        copy = (char *)arena_alloc(node_mem(st), (size_t)(e - s) + 1);
        if (copy == NULL) {
            state_nomem(st);
            return;
        }
        memcpy(copy, s, (size_t)(e - s));
        copy[e - s] = '\0';
        node->text = copy;
        node->text_len = (size_t)(e - s);
    }
    /* Text after a child belongs to the parent's mixed content, which is ignored. */
    st->text_len = 0;
    if (st->cur != NULL && st->cur->node == node) {
        if (st->done_tail != NULL) {
            st->done_tail->next = st->cur;
        } else {
            st->done = st->cur;
        }
        st->done_tail = st->cur;
        st->ndone++;
        st->cur = NULL;
    }
}

static void sax_text(void *ctx, const xmlChar *ch, int len)
{
    parse_state *st = (parse_state *)ctx;
    size_t n, room;
    if (st->err_code != NULL || st->skip_depth > 0 || st->depth == 0 || len <= 0) {
        return;
    }
    if (st->stack[st->depth - 1]->first != NULL) {
        return; /* mixed content */
    }
    n = (size_t)len;
    room = st->max_text - st->text_len;
    if (n > room) {
        n = room;
        if (!st->text_cut) {
            st->text_cut = 1;
            st->truncated++;
        }
    }
    if (n == 0) {
        return;
    }
    if (st->text_len + n > st->text_cap) {
        size_t cap = st->text_cap ? st->text_cap : 256;
        char *p;
        while (cap < st->text_len + n) {
            cap *= 2;
        }
        p = (char *)realloc(st->text, cap);
        if (p == NULL) {
            state_nomem(st);
            return;
        }
        st->text = p;
        st->text_cap = cap;
    }
    memcpy(st->text + st->text_len, ch, n);
    st->text_len += n;
}

/* A DOCTYPE: no report needs one. Stopping here, before the internal subset is parsed,
** means no entity is ever declared, so none can be expanded or fetched ([MAIL-6]). */
static void sax_doctype(void *ctx, const xmlChar *name, const xmlChar *external_id,
                        const xmlChar *system_id)
{
    (void)name;
    (void)external_id;
    (void)system_id;
    state_fail((parse_state *)ctx, "dtd", "a DOCTYPE is not allowed in a report");
}

static void sax_entity_decl(void *ctx, const xmlChar *name, int type, const xmlChar *public_id,
                            const xmlChar *system_id, xmlChar *content)
{
    (void)name;
    (void)type;
    (void)public_id;
    (void)system_id;
    (void)content;
    state_fail((parse_state *)ctx, "dtd", "entity declarations are not allowed");
}

/* Only the five predefined entities exist (libxml2 resolves those itself). */
static xmlEntityPtr sax_get_entity(void *ctx, const xmlChar *name)
{
    (void)ctx;
    (void)name;
    return NULL;
}

static void sax_error(void *ctx, xmlErrorPtr err)
{
    parse_state *st = (parse_state *)ctx;
    char msg[LDMARC_XML_ERRMSG];
    size_t n;
    if (err == NULL || err->level < XML_ERR_ERROR || st->err_msg[0] != '\0') {
        return;
    }
    /* The first error is the useful one; libxml2 ends its messages with a newline. */
    snprintf(msg, sizeof(msg), "line %d: %s", err->line,
             err->message != NULL ? err->message : "not well-formed");
    n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) {
        msg[--n] = '\0';
    }
    memcpy(st->err_msg, msg, n + 1);
}

static int parse_state_gc(lua_State *L)
{
    parse_state *st = (parse_state *)luaL_checkudata(L, 1, LDMARC_XML_PARSE_MT);
    if (st->ctxt != NULL) {
        xmlFreeParserCtxt(st->ctxt);
        st->ctxt = NULL;
    }
    if (st->zlive) {
        inflateEnd(&st->zs);
        st->zlive = 0;
    }
    free(st->zbuf);
    st->zbuf = NULL;
    free(st->zin);
    st->zin = NULL;
    free(st->zss);
    st->zss = NULL;
    while (st->done != NULL) {
        rec_box *next = st->done->next;
        rec_box_free(st->done);
        st->done = next;
    }
    st->done_tail = NULL;
    st->ndone = 0;
    if (st->cur != NULL) {
        rec_box_free(st->cur);
        st->cur = NULL;
    }
    arena_free(&st->mem);
    free(st->text);
    st->text = NULL;
    st->text_cap = st->text_len = 0;
    return 0;
}
/* }====================================================================== */

/*
** {======================================================================
** Conversion of the tree to Lua
** =======================================================================
*/
static int is_array_pair(const parse_state *st, const xname *parent, const xname *child)
{
    size_t i;
    for (i = 0; i < st->npairs; i++) {
        if (st->pairs[i].parent == parent && st->pairs[i].child == child) {
            return 1;
        }
    }
    return 0;
}

/* Pushes one element: a string for a leaf, a table for an element with children. The
** first of duplicate singletons wins (a hostile report cannot override a value by
** repeating it); children of array pairs are collected in order. Depth is bounded by
** max_depth, so the recursion is too. */
static void push_node(lua_State *L, parse_state *st, const xnode *node)
{
    const xnode *c;
    if (node->first == NULL) {
        lua_pushlstring(L, node->text != NULL ? node->text : "", node->text_len);
        return;
    }
    luaL_checkstack(L, 6, "dmarc.xml: report too deep");
    lua_newtable(L);
    for (c = node->first; c != NULL; c = c->next) {
        lua_pushlstring(L, c->name->s, c->name->len);
        if (is_array_pair(st, node->name, c->name)) {
            lua_pushvalue(L, -1);
            lua_rawget(L, -3);
            if (!lua_istable(L, -1)) {
                lua_pop(L, 1);
                lua_newtable(L);
                lua_pushvalue(L, -2);
                lua_pushvalue(L, -2);
                lua_rawset(L, -5);
            }
            push_node(L, st, c);
            lua_rawseti(L, -2, (int)lua_rawlen(L, -2) + 1);
            lua_pop(L, 2);
        } else {
            lua_pushvalue(L, -1);
            lua_rawget(L, -3);
            if (!lua_isnil(L, -1)) {
                st->duplicates++;
                lua_pop(L, 2);
                continue;
            }
            lua_pop(L, 1);
            push_node(L, st, c);
            lua_rawset(L, -3);
        }
    }
}

/* Reads opts.arrays ({"parent/child", ...}) into interned pairs. */
static void read_array_pairs(lua_State *L, int opts, parse_state *st)
{
    size_t i, n;
    if (lua_isnoneornil(L, opts)) {
        return;
    }
    lua_getfield(L, opts, "arrays");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    luaL_checktype(L, -1, LUA_TTABLE);
    n = lua_rawlen(L, -1);
    if (n > LDMARC_XML_MAX_ARRAY_PAIRS) {
        luaL_error(L, "dmarc.xml.parse: at most %d array pairs", LDMARC_XML_MAX_ARRAY_PAIRS);
    }
    for (i = 1; i <= n; i++) {
        size_t len;
        const char *s, *slash;
        lua_rawgeti(L, -1, (int)i);
        s = luaL_checklstring(L, -1, &len);
        slash = (const char *)memchr(s, '/', len);
        if (slash == NULL || slash == s || slash == s + len - 1) {
            luaL_error(L, "dmarc.xml.parse: array pairs are \"parent/child\"");
        }
        st->pairs[st->npairs].parent = intern(st, s, (size_t)(slash - s));
        st->pairs[st->npairs].child = intern(st, slash + 1, len - (size_t)(slash - s) - 1);
        if (st->nomem) {
            luaL_error(L, "dmarc.xml.parse: out of memory");
        }
        st->npairs++;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/*
** {======================================================================
** Attribute pre-scan
** =======================================================================
*/

/* How the document's characters are laid out: code units of 1, 2 or 4 bytes, and their
** byte order. ASCII characters are exactly the units below 0x80. */
typedef struct unit_reader {
    const unsigned char *p;
    size_t len, width;
    int big_endian;
} unit_reader;

static uint32_t unit_at(const unit_reader *r, size_t i)
{
    const unsigned char *u = r->p + i * r->width;
    switch (r->width) {
    case 2:
        return r->big_endian ? ((uint32_t)u[0] << 8 | u[1]) : ((uint32_t)u[1] << 8 | u[0]);
    case 4:
        return r->big_endian
                   ? ((uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3])
                   : ((uint32_t)u[3] << 24 | (uint32_t)u[2] << 16 | (uint32_t)u[1] << 8 | u[0]);
    default:
        return u[0];
    }
}

static int ascii_ieq_prefix(const char *s, size_t len, const char *prefix)
{
    size_t i, n = strlen(prefix);
    if (len < n) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z') {
            c = (char)(c + 32);
        }
        if (c != prefix[i]) {
            return 0;
        }
    }
    return 1;
}

/* An encoding whose ASCII characters are the bytes (or units) below 0x80 and whose other
** characters never use such bytes: the pre-scan reads those exactly. */
static int encoding_scannable(const char *name, size_t len)
{
    static const char *const prefixes[] = {"utf-8",   "utf8",  "us-ascii",    "ascii",  "iso-8859-",
                                           "iso8859", "latin", "windows-125", "cp125",  "utf-16",
                                           "utf16",   "ucs-4", "ucs4",        "utf-32", NULL};
    size_t i;
    for (i = 0; prefixes[i] != NULL; i++) {
        if (ascii_ieq_prefix(name, len, prefixes[i])) {
            return 1;
        }
    }
    return 0;
}

/* The code-unit layout libxml2 will read @data with (XML 1.0 Appendix F: byte order mark or
** the first characters); 0 when it is one the scan cannot follow (EBCDIC, odd UCS-4 orders,
** or a declared encoding outside encoding_scannable), with @msg set. */
static int unit_layout(const unsigned char *data, size_t len, unit_reader *r, char *msg,
                       size_t msgsz)
{
    xmlCharEncoding enc = len >= 4 ? xmlDetectCharEncoding(data, 4) : XML_CHAR_ENCODING_NONE;
    char decl[LDMARC_XML_DECL_UNITS + 1];
    size_t i, n = 0, start = 0;
    const char *e;

    r->p = data;
    r->len = len;
    r->width = 1;
    r->big_endian = 0;
    switch (enc) {
    case XML_CHAR_ENCODING_UTF16LE:
        r->width = 2;
        break;
    case XML_CHAR_ENCODING_UTF16BE:
        r->width = 2;
        r->big_endian = 1;
        break;
    case XML_CHAR_ENCODING_UCS4LE:
        r->width = 4;
        break;
    case XML_CHAR_ENCODING_UCS4BE:
        r->width = 4;
        r->big_endian = 1;
        break;
    case XML_CHAR_ENCODING_NONE:
    case XML_CHAR_ENCODING_UTF8:
        break;
    default:
        snprintf(msg, msgsz, "document encoding not read (EBCDIC or an unusual UCS-4 order)");
        return 0;
    }
    r->len = len / r->width;
    /* The declaration, in ASCII: <?xml version="1.0" encoding="NAME"?>. */
    if (r->len > 0 && unit_at(r, 0) == 0xFEFF) {
        start = 1;
    }
    for (i = start; i < r->len && n < LDMARC_XML_DECL_UNITS; i++) {
        uint32_t u = unit_at(r, i);
        if (u == 0 || u >= 0x80) {
            break;
        }
        decl[n++] = (char)u;
        if (u == '>') {
            break;
        }
    }
    decl[n] = '\0';
    if (n < 5 || memcmp(decl, "<?xml", 5) != 0) {
        return 1;
    }
    e = strstr(decl, "encoding");
    if (e != NULL) {
        const char *q;
        size_t elen;
        e += 8;
        while (*e == ' ' || *e == '\t' || *e == '\r' || *e == '\n') {
            e++;
        }
        if (*e != '=') {
            return 1;
        }
        e++;
        while (*e == ' ' || *e == '\t' || *e == '\r' || *e == '\n') {
            e++;
        }
        if (*e != '"' && *e != '\'') {
            return 1;
        }
        q = strchr(e + 1, *e);
        elen = q != NULL ? (size_t)(q - e - 1) : strlen(e + 1);
        if (!encoding_scannable(e + 1, elen)) {
            snprintf(msg, msgsz,
                     "document encoding %.*s not read (UTF-8, UTF-16, ISO-8859, "
                     "windows-125x)",
                     (int)(elen > 40 ? 40 : elen), e + 1);
            return 0;
        }
    }
    return 1;
}

/* States of the scan over code units. */
enum { SCAN_TEXT, SCAN_LT, SCAN_TAG, SCAN_QUOTE, SCAN_COMMENT, SCAN_PI, SCAN_CDATA, SCAN_DECL };

static int unit_match(const unit_reader *r, size_t i, const char *s)
{
    size_t k;
    for (k = 0; s[k] != '\0'; k++) {
        if (i + k >= r->len || unit_at(r, i + k) != (unsigned char)s[k]) {
            return 0;
        }
    }
    return 1;
}

/* Counts the attributes (each one has an '=' outside quotes, XML 1.0 §3.1) of every start
** tag, skipping comments, PIs, CDATA sections and declarations as XML 1.0 §2.5-2.8 delimit
** them. Returns 1 when every element has at most @max, else 0 with @msg naming the bound and
** the byte where the scan stopped: the work is linear, and stops at the bound. */
typedef struct scan_state {
    int state;
    size_t count;
    uint32_t quote;
} scan_state;

/* The scan of units [*@pos, @end) of @r, resumed from and saved in @ss (an inflating
** document is scanned a window at a time); @base is the document's byte offset of r->p. A
** window that is not the last ends 16 units early, so look-ahead stays inside it. */
static int attribute_scan_part(const unit_reader *r, scan_state *ss, size_t *pos, size_t end,
                               size_t base, size_t max, char *msg, size_t msgsz)
{
    size_t i, count = ss->count;
    uint32_t quote = ss->quote;
    int state = ss->state;
    for (i = *pos; i < end; i++) {
        uint32_t u = unit_at(r, i);
        switch (state) {
        case SCAN_TEXT:
            if (u == '<') {
                state = SCAN_LT;
            }
            break;
        case SCAN_LT:
            if (u == '!' && unit_match(r, i, "!--")) {
                state = SCAN_COMMENT;
                i += 2;
            } else if (u == '!' && unit_match(r, i, "![CDATA[")) {
                state = SCAN_CDATA;
                i += 7;
            } else if (u == '!') {
                state = SCAN_DECL;
            } else if (u == '?') {
                state = SCAN_PI;
            } else {
                /* A start or end tag: an end tag has no '=' outside quotes. */
                state = SCAN_TAG;
                count = 0;
                i--;
            }
            break;
        case SCAN_TAG:
            if (u == '"' || u == '\'') {
                quote = u;
                state = SCAN_QUOTE;
            } else if (u == '=') {
                if (++count > max) {
                    snprintf(msg, msgsz,
                             "more than %zu attributes on one element (max_attributes); "
                             "stopped at byte %zu",
                             max, base + (i + 1) * r->width);
                    return 0;
                }
            } else if (u == '>') {
                state = SCAN_TEXT;
            } else if (u == '<') {
                state = SCAN_LT;
            }
            break;
        case SCAN_QUOTE:
            if (u == quote) {
                state = SCAN_TAG;
            }
            break;
        case SCAN_COMMENT:
            if (u == '-' && unit_match(r, i, "-->")) {
                state = SCAN_TEXT;
                i += 2;
            }
            break;
        case SCAN_PI:
            if (u == '?' && unit_match(r, i, "?>")) {
                state = SCAN_TEXT;
                i += 1;
            }
            break;
        case SCAN_CDATA:
            if (u == ']' && unit_match(r, i, "]]>")) {
                state = SCAN_TEXT;
                i += 2;
            }
            break;
        default: /* SCAN_DECL: a DOCTYPE, which the parse refuses anyway */
            if (u == '>') {
                state = SCAN_TEXT;
            }
            break;
        }
    }
    ss->state = state;
    ss->count = count;
    ss->quote = quote;
    *pos = i;
    return 1;
}

static int attribute_scan(const unit_reader *r, size_t max, char *msg, size_t msgsz)
{
    scan_state ss = {SCAN_TEXT, 0, 0};
    size_t pos = 0;
    return attribute_scan_part(r, &ss, &pos, r->len, 0, max, msg, msgsz);
}
/* }====================================================================== */

/* Bytes handed to libxml2 per step of xml.records: a step completes at most this much XML's
** records, so the batch waiting in C stays small. */
#define LDMARC_XML_STREAM_CHUNK 16384
/* Records handed to Lua per call of a xml.records iterator (default and hard cap). */
#define LDMARC_XML_DEFAULT_BATCH 1000
#define LDMARC_XML_MAX_BATCH 100000

typedef struct inflate_limits {
    size_t max_output;
    size_t max_ratio;
    int multi_member; /* gzip: go on with a following member */
} inflate_limits;

static void read_inflate_limits(lua_State *L, int opts, inflate_limits *lim)
{
    lim->max_output =
        opt_size(L, opts, "max_output", LDMARC_XML_DEFAULT_MAX_OUTPUT, 1, (size_t)INT_MAX);
    lim->max_ratio = opt_size(L, opts, "max_ratio", LDMARC_XML_DEFAULT_MAX_RATIO, 1, 1000000);
    lim->multi_member = 0;
}

/* Bytes of compressed input read from a file per pread (xml.map with inflate). */
#define LDMARC_XML_READ_STEP ((size_t)64 << 10)

/* A file's document (xml.map): the file stays open and every pass of xml.parse and
** xml.records reads it with pread, a window at a time. It is never mapped: a file cut short
** by another process while it is read gives a failure ('io'), where a mapping's pages past
** the new end would kill the process with SIGBUS. */
typedef struct file_doc {
    int fd;          /* -1 once closed */
    size_t size;     /* the file's size when opened: a pass reads exactly this much */
    size_t skip;     /* leading white space, left out as a string's caller trims it */
    int window_bits; /* 0, or the file is compressed: zlib's windowBits to inflate it */
    int multi_member;
    size_t max_output, max_ratio;
} file_doc;

/* The document at @idx, a string (its bytes, *@z NULL) or a file's (*@z set, "" returned). */
static const char *doc_arg(lua_State *L, int idx, size_t *len, const file_doc **z)
{
    file_doc *m = (file_doc *)luaL_testudata(L, idx, LDMARC_XML_FILE_MT);
    *z = m;
    if (m != NULL) {
        *len = 0;
        return "";
    }
    return luaL_checklstring(L, idx, len);
}

/* Reads exactly @n bytes at file offset @off. Returns NULL, or why not: a read error, or
** the file ending early (shrunk since it was opened). */
static const char *read_at(int fd, unsigned char *buf, size_t n, size_t off)
{
    size_t got = 0;
    if (fd < 0) {
        return "document closed";
    }
    /* Bound: each pass reads at least one byte, or fails. */
    while (got < n) {
        ssize_t r = pread(fd, buf + got, n - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            return strerror(errno);
        }
        if (r == 0) {
            return "file cut short while it was read";
        }
        got += (size_t)r;
    }
    return NULL;
}

static void file_doc_close(file_doc *m)
{
    if (m->fd >= 0) {
        close(m->fd);
        m->fd = -1;
    }
}

static int file_doc_gc(lua_State *L)
{
    file_doc_close((file_doc *)luaL_checkudata(L, 1, LDMARC_XML_FILE_MT));
    return 0;
}

/***
** @function doc:close()
** Closes the file of a document from xml.map now rather than when it is collected (a run
** over many files would otherwise hold a descriptor each). A pass over it afterwards fails
** ('io').
*/
static int file_doc_close_method(lua_State *L)
{
    file_doc_close((file_doc *)luaL_checkudata(L, 1, LDMARC_XML_FILE_MT));
    return 0;
}

/* Leading white space of a plain file (a sender's declaration after white space), read a
** block at a time; bounded by the file's size. */
static const char *file_skip_space(file_doc *m)
{
    unsigned char buf[4096];
    while (m->skip < m->size) {
        size_t n = m->size - m->skip < sizeof buf ? m->size - m->skip : sizeof buf, k;
        const char *err = read_at(m->fd, buf, n, m->skip);
        if (err != NULL) {
            return err;
        }
        for (k = 0; k < n; k++) {
            if (buf[k] == '\0' || strchr(" \t\n\v\f\r", buf[k]) == NULL) {
                m->skip += k;
                return NULL;
            }
        }
        m->skip += n;
    }
    return NULL;
}

/* Pushes the first inflated bytes of a compressed file (at most 512), or nil when they do not
** inflate: the caller sees what the file holds. */
static void push_inflated_head(lua_State *L, const file_doc *m)
{
    unsigned char head[512];
    size_t n = m->size < LDMARC_XML_READ_STEP ? m->size : LDMARC_XML_READ_STEP;
    unsigned char *in = (unsigned char *)malloc(n > 0 ? n : 1);
    z_stream zs;
    int rc;
    if (in == NULL) {
        luaL_error(L, "dmarc.xml.map: out of memory");
        return;
    }
    if (read_at(m->fd, in, n, 0) != NULL) {
        free(in);
        lua_pushnil(L);
        return;
    }
    memset(&zs, 0, sizeof(zs));
    if (inflateInit2(&zs, m->window_bits) != Z_OK) {
        free(in);
        luaL_error(L, "dmarc.xml.map: out of memory");
        return;
    }
    zs.next_in = in;
    zs.avail_in = (uInt)n;
    zs.next_out = head;
    zs.avail_out = sizeof(head);
    rc = inflate(&zs, Z_NO_FLUSH);
    if ((rc == Z_OK || rc == Z_STREAM_END || rc == Z_BUF_ERROR) && zs.total_out > 0) {
        lua_pushlstring(L, (const char *)head, sizeof(head) - zs.avail_out);
    } else {
        lua_pushnil(L);
    }
    inflateEnd(&zs);
    free(in);
}

/***
** @function xml.map(path [, opts])
** A file's document for xml.parse and xml.records in place of a string (the name is
** historical: the file is not mapped): the file is opened, not read, and each pass reads it with
** pread a window at a time, so a large report costs a window of memory, not its size.
** Leading white space is left out (a sender's declaration after white space). A file cut
** short by another process while a pass reads it fails that pass ('io'). With inflate
** ('gzip' or 'zlib') the file is a compressed document: each pass inflates it anew, 256 KiB
** at a time, under the caps of xml.inflate (max_output, max_ratio: failures 'bomb',
** 'corrupt', 'truncated' come from the pass), and the pre-scan reads each window before
** libxml2 does. doc:close() closes the file.
** @param {string} path
** @param {table} opts max_input (bytes of the file; default xml.DEFAULT_MAX_INPUT),
**   inflate ('gzip' | 'zlib'), max_output, max_ratio (as xml.inflate)
** @return the document (userdata), the file's size and, with inflate, its first inflated
**   bytes (at most 512; nil when they do not inflate); or nil, message, code ('io' | 'limit')
*/
static int ldmarc_xml_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    static const char *const names[] = {"max_input", "inflate", "max_output", "max_ratio", NULL};
    static const char *const formats[] = {"none", "gzip", "zlib", NULL};
    size_t max_input;
    struct stat sb;
    file_doc *m;
    int format = 0;
    inflate_limits lim;
    const char *err;

    lua_settop(L, 2);
    ldmarc_check_options(L, 2, "dmarc.xml.map", names);
    max_input = opt_size(L, 2, "max_input", LDMARC_XML_DEFAULT_MAX_INPUT, 1, (size_t)INT_MAX);
    if (!lua_isnil(L, 2)) {
        lua_getfield(L, 2, "inflate");
        format = luaL_checkoption(L, -1, "none", formats);
        lua_pop(L, 1);
    }
    read_inflate_limits(L, 2, &lim);
    m = (file_doc *)lua_newuserdata(L, sizeof(*m));
    memset(m, 0, sizeof(*m));
    m->fd = -1;
    luaL_setmetatable(L, LDMARC_XML_FILE_MT);
    m->window_bits = format == 1 ? 15 + 16 : format == 2 ? 15 : 0;
    m->multi_member = format == 1;
    m->max_output = lim.max_output;
    m->max_ratio = lim.max_ratio;
    m->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (m->fd < 0) {
        ldmarc_fail(L, strerror(errno), "io");
        return 3;
    }
    if (fstat(m->fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        file_doc_close(m);
        ldmarc_fail(L, "not a regular file", "io");
        return 3;
    }
    if ((uintmax_t)sb.st_size > (uintmax_t)max_input) {
        file_doc_close(m);
        ldmarc_fail(L, "document larger than max_input", "limit");
        return 3;
    }
    m->size = (size_t)sb.st_size;
    err = m->window_bits == 0 ? file_skip_space(m) : NULL;
    if (err != NULL) {
        file_doc_close(m);
        ldmarc_fail(L, err, "io");
        return 3;
    }
    lua_pushinteger(L, (lua_Integer)m->size);
    if (m->window_bits == 0) {
        return 2;
    }
    push_inflated_head(L, m);
    return 3;
}

/* The common start of xml.parse and xml.records: options read, the pre-scan made, the push
** parser created with the first bytes. Leaves the state userdata on the stack and returns it;
** on refused input pushes nil, message, code and returns NULL. */
/* A file document's failure: the pass stops with its code and message (xml.inflate's). */
static int zfail(parse_state *st, const char *code, const char *msg)
{
    if (strcmp(code, "nomem") == 0) {
        state_nomem(st);
    } else {
        state_fail(st, code, msg);
    }
    return 0;
}

/* Compressed input for zlib: when fewer than @want bytes wait, the rest moves to the front of
** zin and more of the file is read (LDMARC_XML_READ_STEP at most). Returns 0 when the pass
** failed (st->err_code set). */
static int zinput(parse_state *st, size_t want)
{
    const file_doc *z = st->z;
    size_t have = st->zs.avail_in, n;
    const char *err;
    if (have >= want || st->zpos >= z->size) {
        return 1;
    }
    if (have > 0) {
        memmove(st->zin, st->zs.next_in, have);
    }
    n = LDMARC_XML_READ_STEP - have;
    if (n > z->size - st->zpos) {
        n = z->size - st->zpos;
    }
    err = read_at(z->fd, st->zin + have, n, st->zpos);
    if (err != NULL) {
        return zfail(st, "io", err);
    }
    st->zpos += n;
    st->zs.next_in = st->zin;
    st->zs.avail_in = (uInt)(have + n);
    return 1;
}

/* A plain file's next step: read into the window, to the file's size (leading white space
** was left out when it was opened). Returns 0 when the pass failed. */
static int zread_plain(parse_state *st)
{
    const file_doc *z = st->z;
    size_t n = LDMARC_XML_INFLATE_STEP;
    const char *err;
    if (n > z->size - st->zpos) {
        n = z->size - st->zpos;
    }
    err = read_at(z->fd, st->zbuf + st->zend, n, st->zpos);
    if (err != NULL) {
        return zfail(st, "io", err);
    }
    st->zpos += n;
    st->zend += n;
    st->zout += n;
    st->zfinal = st->zpos == z->size;
    return 1;
}

/* A compressed file's next step of output into the window, under the caps of inflate_run (the
** same 256 KiB steps, so the ratio is judged at the same points). Returns 0 when the pass
** failed (st->err_code set). */
static int zinflate_step(parse_state *st)
{
    const file_doc *z = st->z;
    size_t got = 0;
    /* Bound: each call fills a step, ends the stream, or fails (as inflate_run). */
    while (got < LDMARC_XML_INFLATE_STEP && !st->zfinal) {
        size_t step = LDMARC_XML_INFLATE_STEP - got, n;
        int rc;
        if (!zinput(st, 1)) {
            return 0;
        }
        st->zs.next_out = st->zbuf + st->zend;
        st->zs.avail_out = (uInt)step;
        rc = inflate(&st->zs, Z_NO_FLUSH);
        n = step - st->zs.avail_out;
        st->zout += n;
        got += n;
        if (st->zout > z->max_output) {
            return zfail(st, "bomb", "decompressed size over the limit");
        }
        /* A bomb, judged as inflate_run does: the ratio past LDMARC_XML_RATIO_FLOOR. */
        if (st->zout > LDMARC_XML_RATIO_FLOOR &&
            st->zout / z->max_ratio > (size_t)st->zs.total_in) {
            return zfail(st, "bomb", "compression ratio over the limit");
        }
        if (st->zlead) {
            /* Leading white space is left out, as of a string (a sender's declaration
            ** after white space). */
            size_t k = 0;
            while (k < n && strchr(" \t\n\v\f\r", st->zbuf[st->zend + k]) != NULL &&
                   st->zbuf[st->zend + k] != '\0') {
                k++;
            }
            memmove(st->zbuf + st->zend, st->zbuf + st->zend + k, n - k);
            st->zskipped += k;
            n -= k;
            st->zlead = n == 0;
        }
        st->zend += n;
        if (st->zout - st->zskipped > st->zmax_input) {
            return zfail(st, "limit", "document larger than max_input");
        }
        if (rc == Z_STREAM_END) {
            if (z->multi_member && !zinput(st, 2)) {
                return 0;
            }
            if (z->multi_member && st->zs.avail_in >= 2 && st->zs.next_in[0] == 0x1f &&
                st->zs.next_in[1] == 0x8b && st->zmembers < LDMARC_XML_MAX_GZIP_MEMBERS) {
                uLong total_in = st->zs.total_in;
                st->zmembers++;
                if (inflateReset(&st->zs) != Z_OK) {
                    return zfail(st, "corrupt", "corrupt gzip member");
                }
                st->zs.total_in = total_in;
                continue; /* as inflate_run: the next member fills what is left of the step */
            }
            st->zfinal = 1;
            break;
        }
        if (rc == Z_NEED_DICT || rc == Z_DATA_ERROR) {
            return zfail(st, "corrupt",
                         st->zs.msg != NULL ? st->zs.msg : "corrupt compressed data");
        }
        if (rc == Z_MEM_ERROR) {
            return zfail(st, "nomem", "out of memory");
        }
        if (rc == Z_BUF_ERROR || rc == Z_OK) {
            /* Input used up with room left: the stream ends early, unless the file has more. */
            if (st->zs.avail_in == 0 && st->zs.avail_out > 0 && st->zpos >= z->size) {
                return zfail(st, "truncated", "compressed data ends early");
            }
            if (st->zs.avail_out == 0) {
                break;
            }
            continue;
        }
        return zfail(st, "corrupt", "inflate failed");
    }
    return 1;
}

/* One more step of a file's document into the window, then its pre-scan. The fed bytes go;
** the unscanned tail (under 16 units and a partial one) moves to the front. Returns 0 when
** the pass failed (st->err_code set). */
static int zfill(parse_state *st)
{
    size_t rem = st->zend - st->zfp;
    unit_reader r;
    char msg[LDMARC_XML_ERRMSG];
    size_t pos = 0, end;

    memmove(st->zbuf, st->zbuf + st->zfp, rem);
    st->zbase += st->zfp;
    st->zfp = st->zsc = 0;
    st->zend = rem;
    if (!(st->z->window_bits == 0 ? zread_plain(st) : zinflate_step(st))) {
        return 0;
    }
    if (st->zwidth == 0) {
        return 1; /* the first window: parse_begin reads its encoding, then scans it */
    }
    /* The pre-scan of the new bytes before libxml2 reads them. */
    memset(&r, 0, sizeof(r));
    r.p = st->zbuf;
    r.width = st->zwidth;
    r.big_endian = st->zbig_endian;
    r.len = st->zend / r.width;
    end = st->zfinal ? r.len : (r.len > 16 ? r.len - 16 : 0);
    if (!attribute_scan_part(&r, st->zss, &pos, end, st->zbase, st->max_attributes, msg,
                             sizeof msg)) {
        return zfail(st, "limit", msg);
    }
    st->zsc = pos * r.width;
    return 1;
}

/* Bytes of a file's document libxml2 may read now. */
static size_t zready(const parse_state *st)
{
    return st->zfinal ? st->zend : st->zsc;
}

static parse_state *parse_begin(lua_State *L, const char *fname, const char *data, size_t len,
                                const file_doc *z, const char *const *names, int mode)
{
    size_t max_input, first;
    parse_state *st;
    xmlSAXHandler sax;

    ldmarc_check_options(L, 2, fname, names);
    max_input = opt_size(L, 2, "max_input", LDMARC_XML_DEFAULT_MAX_INPUT, 1, (size_t)INT_MAX);
    st = (parse_state *)lua_newuserdata(L, sizeof(*st));
    memset(st, 0, sizeof(*st));
    luaL_setmetatable(L, LDMARC_XML_PARSE_MT);
    st->max_depth =
        opt_size(L, 2, "max_depth", LDMARC_XML_DEFAULT_MAX_DEPTH, 1, LDMARC_XML_HARD_MAX_DEPTH);
    st->max_elements =
        opt_size(L, 2, "max_elements", LDMARC_XML_DEFAULT_MAX_ELEMENTS, 1, (size_t)INT_MAX);
    st->max_text = opt_size(L, 2, "max_text", LDMARC_XML_DEFAULT_MAX_TEXT, 1, (size_t)INT_MAX);
    st->max_attributes = opt_size(L, 2, "max_attributes", LDMARC_XML_DEFAULT_MAX_ATTRIBUTES, 1,
                                  LDMARC_XML_HARD_MAX_ATTRIBUTES);
    read_array_pairs(L, 2, st);
    st->mode = mode;
    if (mode != 0) {
        st->record_name = intern(st, "record", 6);
        if (st->nomem) {
            luaL_error(L, "%s: out of memory", fname);
        }
    }
    if (z != NULL && z->window_bits == 0) {
        len = z->size - z->skip; /* a plain file: judged on its size, as a string */
    }
    if (len > max_input) {
        ldmarc_fail(L, "document larger than max_input", "limit");
        return NULL;
    }
    if (z != NULL) {
        unit_reader r;
        char msg[LDMARC_XML_ERRMSG];
        st->z = z;
        st->zmax_input = max_input;
        st->zlead = z->window_bits != 0;
        st->zpos = z->window_bits != 0 ? 0 : z->skip;
        st->zmembers = 1;
        st->zbuf = (unsigned char *)malloc(LDMARC_XML_INFLATE_STEP + 128);
        st->zss = (scan_state *)calloc(1, sizeof(scan_state));
        if (st->zbuf == NULL || st->zss == NULL) {
            luaL_error(L, "%s: out of memory", fname);
        }
        if (z->window_bits != 0) {
            st->zin = (unsigned char *)malloc(LDMARC_XML_READ_STEP);
            if (st->zin == NULL || inflateInit2(&st->zs, z->window_bits) != Z_OK) {
                luaL_error(L, "%s: out of memory", fname);
            }
            st->zlive = 1;
        }
        /* The first window: the encoding is read from it (a window is 256 KiB of text). */
        while (!st->zfinal && st->zend == 0) {
            if (!zfill(st)) {
                break;
            }
        }
        if (st->err_code == NULL) {
            if (!unit_layout(st->zbuf, st->zend, &r, msg, sizeof msg)) {
                ldmarc_fail(L, msg, "xml");
                return NULL;
            }
            st->zwidth = r.width;
            st->zbig_endian = r.big_endian;
            {
                size_t pos = 0, ulen = st->zend / r.width;
                size_t end = st->zfinal ? ulen : (ulen > 16 ? ulen - 16 : 0);
                r.len = ulen;
                if (!attribute_scan_part(&r, st->zss, &pos, end, 0, st->max_attributes, msg,
                                         sizeof msg)) {
                    ldmarc_fail(L, msg, "limit");
                    return NULL;
                }
                st->zsc = pos * r.width;
            }
        }
        if (st->err_code != NULL) {
            if (st->nomem) {
                luaL_error(L, "%s: out of memory", fname);
            }
            ldmarc_fail(L, st->err_msg, st->err_code);
            return NULL;
        }
        data = (const char *)st->zbuf;
        len = zready(st);
    } else {
        unit_reader r;
        char msg[LDMARC_XML_ERRMSG];
        if (!unit_layout((const unsigned char *)data, len, &r, msg, sizeof msg)) {
            ldmarc_fail(L, msg, "xml");
            return NULL;
        }
        if (!attribute_scan(&r, st->max_attributes, msg, sizeof msg)) {
            ldmarc_fail(L, msg, "limit");
            return NULL;
        }
    }

    memset(&sax, 0, sizeof(sax));
    sax.initialized = XML_SAX2_MAGIC;
    sax.startElementNs = sax_start;
    sax.endElementNs = sax_end;
    sax.characters = sax_text;
    sax.cdataBlock = sax_text;
    sax.internalSubset = sax_doctype;
    sax.externalSubset = sax_doctype;
    sax.entityDecl = sax_entity_decl;
    sax.getEntity = sax_get_entity;
    sax.getParameterEntity = sax_get_entity;
    sax.serror = sax_error;

    /* The first bytes go in at creation so libxml2 can detect the encoding. */
    first = len < 4 ? len : 4;
    st->ctxt = xmlCreatePushParserCtxt(&sax, st, data, (int)first, NULL);
    if (st->ctxt == NULL) {
        luaL_error(L, "%s: out of memory", fname);
    }
    xmlCtxtUseOptions(st->ctxt, XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    st->off = first;
    st->len = len;
    st->zfp = z != NULL ? first : 0;
    return st;
}

/* A step of a file's document: at most @chunk pre-scanned bytes, reading more when
** the window is fed (the end of the document after the last one). */
static void zparse_step(parse_state *st, size_t chunk)
{
    size_t ready = zready(st);
    /* Bound: each zfill adds a step of output or ends the stream (max_output caps them). */
    while (st->zfp == ready && !st->zfinal && st->err_code == NULL) {
        if (!zfill(st)) {
            return;
        }
        ready = zready(st);
    }
    if (st->err_code != NULL) {
        return;
    }
    if (st->zfp < ready) {
        size_t n = ready - st->zfp < chunk ? ready - st->zfp : chunk;
        xmlParseChunk(st->ctxt, (const char *)st->zbuf + st->zfp, (int)n, 0);
        st->zfp += n;
    } else {
        xmlParseChunk(st->ctxt, NULL, 0, 1);
        st->finished = 1;
    }
}

/* Feeds at most @chunk more bytes (the end of the document after the last one). */
static void parse_step(parse_state *st, const char *data, size_t chunk)
{
    if (st->err_code != NULL || st->finished) {
        return;
    }
    if (st->z != NULL) {
        zparse_step(st, chunk);
        return;
    }
    if (st->off < st->len) {
        size_t n = st->len - st->off < chunk ? st->len - st->off : chunk;
        xmlParseChunk(st->ctxt, data + st->off, (int)n, 0);
        st->off += n;
    } else {
        xmlParseChunk(st->ctxt, NULL, 0, 1);
        st->finished = 1;
    }
}

/* After the last step: pushes nil, message, code and returns 1 when the document failed. */
static int parse_failed(lua_State *L, parse_state *st, const char *fname)
{
    if (st->nomem) {
        luaL_error(L, "%s: out of memory", fname);
    }
    if (st->err_code != NULL) {
        ldmarc_fail(L, st->err_msg, st->err_code);
        return 1;
    }
    if (st->finished && (!st->ctxt->wellFormed || st->root == NULL)) {
        ldmarc_fail(L, st->err_msg[0] ? st->err_msg : "not a well-formed document", "xml");
        return 1;
    }
    return 0;
}

/***
** @function xml.parse(data [, opts])
** Parses one XML document into a tree: an element with children is a table keyed by local
** name (namespace prefixes ignored, elements of foreign namespaces skipped), a leaf is its
** trimmed text. Attributes are ignored.
** @param {string|userdata} data the document (a string, or a file's from xml.map)
** @param {table} opts max_input (bytes), max_depth, max_elements, max_text (bytes per text),
**   max_attributes (on one element, default 64),
**   arrays ({"parent/child", ...}: those children go in arrays, in document order),
**   defer_records (true: the root's <record> children are left out of the tree and only
**   counted, in info.deferred; xml.records reads them)
** @return {table} tree, {table} info (root, ns, elements, skipped, truncated, duplicates,
**   deferred); or nil, message, code ('xml' | 'dtd' | 'limit')
*/
static int ldmarc_xml_parse(lua_State *L)
{
    size_t len;
    const file_doc *z;
    const char *data = doc_arg(L, 1, &len, &z);
    parse_state *st;
    int mode = 0;

    static const char *const names[] = {"max_input",      "max_depth", "max_elements",  "max_text",
                                        "max_attributes", "arrays",    "defer_records", NULL};

    lua_settop(L, 2); /* opts stays at index 2 while state is pushed above it */
    if (!lua_isnil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "defer_records");
        mode = lua_toboolean(L, -1) ? 1 : 0;
        lua_pop(L, 1);
    }
    st = parse_begin(L, "dmarc.xml.parse", data, len, z, names, mode);
    if (st == NULL) {
        return 3;
    }
    while (!st->finished && st->err_code == NULL) {
        parse_step(st, data, LDMARC_XML_CHUNK);
    }
    if (parse_failed(L, st, "dmarc.xml.parse")) {
        return 3;
    }
    push_node(L, st, st->root);
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
    }
    lua_createtable(L, 0, 7);
    ldmarc_set_string(L, "root", st->root->name->s, st->root->name->len);
    if (st->root_ns != NULL) {
        ldmarc_set_cstring(L, "ns", st->root_ns);
    }
    lua_pushinteger(L, (lua_Integer)st->elements);
    lua_setfield(L, -2, "elements");
    lua_pushinteger(L, (lua_Integer)st->skipped);
    lua_setfield(L, -2, "skipped");
    lua_pushinteger(L, (lua_Integer)st->truncated);
    lua_setfield(L, -2, "truncated");
    lua_pushinteger(L, (lua_Integer)st->duplicates);
    lua_setfield(L, -2, "duplicates");
    if (mode == 1) {
        lua_pushinteger(L, (lua_Integer)st->deferred);
        lua_setfield(L, -2, "deferred");
    }
    return 2;
}

/* The iterator of xml.records: upvalue 1 the parse state, upvalue 2 the document. */
static int records_next(lua_State *L)
{
    parse_state *st = (parse_state *)luaL_checkudata(L, lua_upvalueindex(1), LDMARC_XML_PARSE_MT);
    size_t len;
    const file_doc *z;
    const char *data = doc_arg(L, lua_upvalueindex(2), &len, &z);
    lua_Integer n = 0;

    /* Whole steps until a batch is complete: a step reads a bounded number of bytes, so at
    ** most a batch and one step's records wait in C. */
    while (st->ndone < st->batch && !st->finished && st->err_code == NULL) {
        parse_step(st, data, LDMARC_XML_STREAM_CHUNK);
    }
    if (parse_failed(L, st, "dmarc.xml.records")) {
        return 3;
    }
    if (st->ndone == 0) {
        lua_pushnil(L);
        return 1;
    }
    lua_createtable(L, (int)(st->ndone < st->batch ? st->ndone : st->batch), 0);
    while (st->done != NULL && (size_t)n < st->batch) {
        rec_box *b = st->done;
        /* Pushed before the box is unlinked: a raise (out of memory) leaves it to __gc. */
        push_node(L, st, b->node);
        lua_rawseti(L, -2, (int)++n);
        st->done = b->next;
        if (st->done == NULL) {
            st->done_tail = NULL;
        }
        st->ndone--;
        rec_box_free(b);
    }
    return 1;
}

/***
** @function xml.records(data [, opts])
** The root's <record> children of a document, in batches: the document is parsed step by
** step and each record's nodes are freed once handed over, so memory holds one batch, not
** the report (a report's header is read by xml.parse with defer_records).
** @param {string|userdata} data the document (a string, or a file's from xml.map)
** @param {table} opts as xml.parse (max_input, max_depth, max_elements, max_text,
**   max_attributes, arrays), and batch (records per call, default 1000)
** @return {function} an iterator: each call returns an array of at most batch records
**   (each converted as xml.parse would), nil at the end, or nil, message, code; or nil,
**   message, code when the document is refused at once
*/
static int ldmarc_xml_records(lua_State *L)
{
    size_t len;
    const file_doc *z;
    const char *data = doc_arg(L, 1, &len, &z);
    parse_state *st;
    size_t batch;

    static const char *const names[] = {"max_input",      "max_depth", "max_elements", "max_text",
                                        "max_attributes", "arrays",    "batch",        NULL};

    lua_settop(L, 2);
    batch = opt_size(L, 2, "batch", LDMARC_XML_DEFAULT_BATCH, 1, LDMARC_XML_MAX_BATCH);
    st = parse_begin(L, "dmarc.xml.records", data, len, z, names, 2);
    if (st == NULL) {
        return 3;
    }
    st->batch = batch;
    lua_pushvalue(L, 1);
    lua_pushcclosure(L, records_next, 2);
    return 1;
}
/* }====================================================================== */

/*
** {======================================================================
** Decompression with caps (gzip, zlib, raw deflate)
** =======================================================================
*/
typedef struct inflate_state {
    z_stream zs;
    int live; /* inflateInit2 succeeded; inflateEnd owed */
    unsigned char *out;
    size_t out_len, out_cap;
} inflate_state;

static int inflate_state_gc(lua_State *L)
{
    inflate_state *st = (inflate_state *)luaL_checkudata(L, 1, LDMARC_XML_INFLATE_MT);
    if (st->live) {
        inflateEnd(&st->zs);
        st->live = 0;
    }
    free(st->out);
    st->out = NULL;
    st->out_len = st->out_cap = 0;
    return 0;
}

static inflate_state *new_inflate_state(lua_State *L)
{
    inflate_state *st = (inflate_state *)lua_newuserdata(L, sizeof(*st));
    memset(st, 0, sizeof(*st));
    luaL_setmetatable(L, LDMARC_XML_INFLATE_MT);
    return st;
}

/* Inflates in[0..in_len) into st->out. Returns NULL on success, else a failure code with
** *msg set; "nomem" means the caller raises. The output may grow to max_output + 1 bytes
** only, so a bomb is caught without ever holding more than that. */
static const char *inflate_run(inflate_state *st, const unsigned char *in, size_t in_len,
                               int window_bits, const inflate_limits *lim, const char **msg)
{
    unsigned members = 1;
    size_t hard_cap = lim->max_output + 1;
    if (in_len > UINT_MAX) {
        *msg = "compressed input too large";
        return "limit";
    }
    if (inflateInit2(&st->zs, window_bits) != Z_OK) {
        *msg = "out of memory";
        return "nomem";
    }
    st->live = 1;
    st->zs.next_in = (Bytef *)(uintptr_t)in; /* zlib's API is not const-qualified */
    st->zs.avail_in = (uInt)in_len;
    for (;;) {
        size_t step;
        int rc;
        if (st->out_len == st->out_cap) {
            size_t cap = st->out_cap ? st->out_cap * 2 : 65536;
            unsigned char *p;
            if (cap > hard_cap) {
                cap = hard_cap;
            }
            if (cap <= st->out_len) {
                *msg = "decompressed size over the limit";
                return "bomb";
            }
            p = (unsigned char *)realloc(st->out, cap);
            if (p == NULL) {
                *msg = "out of memory";
                return "nomem";
            }
            st->out = p;
            st->out_cap = cap;
        }
        step = st->out_cap - st->out_len;
        if (step > LDMARC_XML_INFLATE_STEP) {
            step = LDMARC_XML_INFLATE_STEP;
        }
        st->zs.next_out = st->out + st->out_len;
        st->zs.avail_out = (uInt)step;
        rc = inflate(&st->zs, Z_NO_FLUSH);
        st->out_len += step - st->zs.avail_out;
        if (st->out_len > lim->max_output) {
            *msg = "decompressed size over the limit";
            return "bomb";
        }
        /* [MAIL-6]: a ratio far beyond what XML compresses to is a bomb, whatever the
        ** absolute size. */
        if (st->out_len > LDMARC_XML_RATIO_FLOOR &&
            st->out_len / lim->max_ratio > (size_t)st->zs.total_in) {
            *msg = "compression ratio over the limit";
            return "bomb";
        }
        if (rc == Z_STREAM_END) {
            if (lim->multi_member && st->zs.avail_in >= 2 && st->zs.next_in[0] == 0x1f &&
                st->zs.next_in[1] == 0x8b && members < LDMARC_XML_MAX_GZIP_MEMBERS) {
                uLong total_in = st->zs.total_in;
                members++;
                if (inflateReset(&st->zs) != Z_OK) {
                    *msg = "corrupt gzip member";
                    return "corrupt";
                }
                /* total_in is cleared by the reset; the ratio counts every member. */
                st->zs.total_in = total_in;
                continue;
            }
            return NULL; /* trailing bytes after the last member are ignored */
        }
        if (rc == Z_NEED_DICT || rc == Z_DATA_ERROR) {
            *msg = st->zs.msg != NULL ? st->zs.msg : "corrupt compressed data";
            return "corrupt";
        }
        if (rc == Z_MEM_ERROR) {
            *msg = "out of memory";
            return "nomem";
        }
        if (rc == Z_BUF_ERROR || rc == Z_OK) {
            if (st->zs.avail_in == 0 && st->zs.avail_out > 0) {
                *msg = "compressed data ends early";
                return "truncated";
            }
            continue;
        }
        *msg = "inflate failed";
        return "corrupt";
    }
}

/***
** @function xml.inflate(data [, opts])
** Decompresses gzip (RFC 1952, several members allowed), zlib (RFC 1950) or raw deflate
** (RFC 1951).
** @param {string} data
** @param {table} opts format ('auto' (gzip or zlib, the default) | 'gzip' | 'zlib' | 'raw'),
**   max_output (bytes, default 64 MiB), max_ratio (output / input, default 200; judged once
**   the output passes 1 MiB)
** @return {string} the data, {integer} compressed bytes read; or nil, message, code
**   ('bomb' | 'truncated' | 'corrupt' | 'limit')
*/
static int ldmarc_xml_inflate(lua_State *L)
{
    static const char *const formats[] = {"auto", "gzip", "zlib", "raw", NULL};
    static const int window_bits[] = {15 + 32, 15 + 16, 15, -15};
    size_t len;
    const char *data = luaL_checklstring(L, 1, &len);
    inflate_limits lim;
    inflate_state *st;
    const char *code, *msg = NULL;
    int format = 0;

    static const char *const names[] = {"format", "max_output", "max_ratio", NULL};

    lua_settop(L, 2);
    ldmarc_check_options(L, 2, "dmarc.xml.inflate", names);
    if (!lua_isnil(L, 2)) {
        lua_getfield(L, 2, "format");
        format = luaL_checkoption(L, -1, "auto", formats);
        lua_pop(L, 1);
    }
    read_inflate_limits(L, 2, &lim);
    lim.multi_member = format == 0 || format == 1;
    st = new_inflate_state(L);
    code = inflate_run(st, (const unsigned char *)data, len, window_bits[format], &lim, &msg);
    if (code != NULL && strcmp(code, "nomem") == 0) {
        return luaL_error(L, "dmarc.xml.inflate: out of memory");
    }
    if (code != NULL) {
        return ldmarc_fail(L, msg, code);
    }
    lua_pushlstring(L, (const char *)st->out, st->out_len);
    lua_pushinteger(L, (lua_Integer)st->zs.total_in);
    return 2;
}
/* }====================================================================== */

/*
** {======================================================================
** Zip (APPNOTE.TXT 4.3): the one report entry, stored or deflated
** =======================================================================
*/
static uint16_t rd16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

typedef struct zip_entry {
    const unsigned char *name;
    size_t name_len;
    uint16_t flags, method;
    uint32_t crc, csize, usize, local_off;
} zip_entry;

static int ends_with_ci(const unsigned char *s, size_t len, const char *suffix)
{
    size_t n = strlen(suffix), i;
    if (len < n) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = s[len - n + i];
        if (c >= 'A' && c <= 'Z') {
            c = (unsigned char)(c - 'A' + 'a');
        }
        if (c != (unsigned char)suffix[i]) {
            return 0;
        }
    }
    return 1;
}

/* Finds the End Of Central Directory record: the last 22..22+65535 bytes, with a comment
** length that reaches exactly to the end of the data. */
static const unsigned char *find_eocd(const unsigned char *d, size_t len)
{
    size_t i, lowest;
    if (len < LDMARC_XML_ZIP_EOCD_SIZE) {
        return NULL;
    }
    lowest = len - LDMARC_XML_ZIP_EOCD_SIZE > LDMARC_XML_ZIP_MAX_COMMENT
                 ? len - LDMARC_XML_ZIP_EOCD_SIZE - LDMARC_XML_ZIP_MAX_COMMENT
                 : 0;
    for (i = len - LDMARC_XML_ZIP_EOCD_SIZE + 1; i-- > lowest;) {
        if (rd32(d + i) == 0x06054b50u &&
            (size_t)rd16(d + i + 20) == len - i - LDMARC_XML_ZIP_EOCD_SIZE) {
            return d + i;
        }
    }
    return NULL;
}

/* Where an archive or a compressed stream is read from: a string in memory, or a file read
** with pread (xml.unpack). */
typedef struct byte_source {
    const unsigned char *mem; /* the string; NULL for a file */
    int fd;
    size_t len;
} byte_source;

/* Bytes [@off, @off + @n) of @src (the caller has checked they lie inside it): a pointer into
** the string, or @buf (at least @n bytes) filled from the file. NULL with *@err set when the
** file cannot be read (or was cut short while it was read). */
static const unsigned char *src_at(const byte_source *src, size_t off, size_t n, unsigned char *buf,
                                   const char **err)
{
    if (src->mem != NULL) {
        return src->mem + off;
    }
    *err = read_at(src->fd, buf, n, off);
    return *err == NULL ? buf : NULL;
}

/* Zip: what the central directory and the local header say of the one report entry. */
typedef struct zip_found {
    zip_entry chosen;
    size_t data_off;
    unsigned char *tail, *cdir; /* a file's end and central directory, read (malloc'd) */
} zip_found;

static void zip_found_free(zip_found *zf)
{
    free(zf->tail);
    free(zf->cdir);
    zf->tail = zf->cdir = NULL;
}

/* Central directory bytes read of a file: max_entries entries at their largest (a name, an
** extra field and a comment of 65535 bytes each); a longer directory is never walked past
** that anyway. */
#define LDMARC_XML_ZIP_MAX_CDIR_ENTRY (LDMARC_XML_ZIP_CDIR_SIZE + 3 * (size_t)65535)

/* Finds the one report entry of the archive in @src (APPNOTE.TXT 4.3.16, 4.3.12, 4.3.7): the
** only file entry, or the only one whose name ends in .xml, its declared sizes judged against
** the caps before anything is inflated. Returns NULL, or a failure code with *@msg set
** ("nomem": the caller raises). */
static const char *zip_locate(const byte_source *src, size_t max_entries, const inflate_limits *lim,
                              zip_found *zf, const char **msg)
{
    size_t len = src->len, nfiles = 0, nxml = 0, i, p, cd_end, tail_len, eocd_off, cd_read;
    const unsigned char *tail, *eocd, *d, *lh;
    unsigned char local[LDMARC_XML_ZIP_LOCAL_SIZE];
    zip_entry only_file, only_xml;
    uint32_t cd_off, cd_size;
    uint16_t total;

    memset(&only_file, 0, sizeof(only_file));
    memset(&only_xml, 0, sizeof(only_xml));
    /* The EOCD lies in the last 22 + 65535 bytes. */
    tail_len = len < LDMARC_XML_ZIP_EOCD_SIZE + LDMARC_XML_ZIP_MAX_COMMENT
                   ? len
                   : LDMARC_XML_ZIP_EOCD_SIZE + LDMARC_XML_ZIP_MAX_COMMENT;
    if (src->mem == NULL && (zf->tail = (unsigned char *)malloc(tail_len + 1)) == NULL) {
        *msg = "out of memory";
        return "nomem";
    }
    tail = src_at(src, len - tail_len, tail_len, zf->tail, msg);
    if (tail == NULL) {
        return "io";
    }
    eocd = find_eocd(tail, tail_len);
    if (eocd == NULL) {
        *msg = "no zip end of central directory";
        return "zip";
    }
    eocd_off = len - tail_len + (size_t)(eocd - tail);
    if (rd16(eocd + 4) != 0 || rd16(eocd + 6) != 0) {
        *msg = "multi-part zip archives are not supported";
        return "unsupported";
    }
    total = rd16(eocd + 10);
    cd_size = rd32(eocd + 12);
    cd_off = rd32(eocd + 16);
    if (total == 0xffff || cd_size == 0xffffffffu || cd_off == 0xffffffffu) {
        *msg = "zip64 archives are not supported";
        return "unsupported";
    }
    if (total > max_entries) {
        *msg = "too many zip entries";
        return "zip_entries";
    }
    if ((size_t)cd_off > eocd_off || (size_t)cd_size > eocd_off - cd_off) {
        *msg = "central directory out of bounds";
        return "zip";
    }
    cd_read = cd_size;
    if (cd_read > max_entries * LDMARC_XML_ZIP_MAX_CDIR_ENTRY) {
        cd_read = max_entries * LDMARC_XML_ZIP_MAX_CDIR_ENTRY;
    }
    if (src->mem == NULL && (zf->cdir = (unsigned char *)malloc(cd_read + 1)) == NULL) {
        *msg = "out of memory";
        return "nomem";
    }
    /* d + q is the archive's byte q (q from cd_off on): the directory read. */
    d = src_at(src, cd_off, cd_read, zf->cdir, msg);
    if (d == NULL) {
        return "io";
    }
    d -= cd_off;
    cd_end = (size_t)cd_off + cd_size;
    p = cd_off;
    for (i = 0; i < total; i++) {
        zip_entry e;
        size_t nlen, xlen, clen;
        if (cd_end - p < LDMARC_XML_ZIP_CDIR_SIZE || rd32(d + p) != 0x02014b50u) {
            *msg = "bad central directory entry";
            return "zip";
        }
        e.flags = rd16(d + p + 8);
        e.method = rd16(d + p + 10);
        e.crc = rd32(d + p + 16);
        e.csize = rd32(d + p + 20);
        e.usize = rd32(d + p + 24);
        nlen = rd16(d + p + 28);
        xlen = rd16(d + p + 30);
        clen = rd16(d + p + 32);
        e.local_off = rd32(d + p + 42);
        if (cd_end - p - LDMARC_XML_ZIP_CDIR_SIZE < nlen + xlen + clen) {
            *msg = "central directory entry out of bounds";
            return "zip";
        }
        e.name = d + p + LDMARC_XML_ZIP_CDIR_SIZE;
        e.name_len = nlen;
        p += LDMARC_XML_ZIP_CDIR_SIZE + nlen + xlen + clen;
        if (nlen > 0 && e.name[nlen - 1] == '/') {
            continue; /* a directory */
        }
        nfiles++;
        only_file = e;
        if (ends_with_ci(e.name, nlen, ".xml")) {
            nxml++;
            only_xml = e;
        }
    }
    if (nfiles == 1) {
        zf->chosen = only_file;
    } else if (nxml == 1) {
        zf->chosen = only_xml;
    } else {
        *msg = nfiles == 0 ? "empty zip archive" : "no single report in the zip";
        return "zip_entries";
    }
    if (zf->chosen.flags & 1u) {
        *msg = "encrypted zip entry";
        return "unsupported";
    }
    if (zf->chosen.method != 0 && zf->chosen.method != 8) {
        *msg = "zip compression method not supported";
        return "unsupported";
    }
    if (zf->chosen.csize == 0xffffffffu || zf->chosen.usize == 0xffffffffu) {
        *msg = "zip64 entries are not supported";
        return "unsupported";
    }
    /* The sizes the archive declares are checked before anything is inflated. */
    if ((size_t)zf->chosen.usize > lim->max_output) {
        *msg = "declared size over the limit";
        return "bomb";
    }
    if ((size_t)zf->chosen.usize > LDMARC_XML_RATIO_FLOOR &&
        (size_t)zf->chosen.usize / lim->max_ratio > (size_t)zf->chosen.csize) {
        *msg = "declared compression ratio over the limit";
        return "bomb";
    }
    if ((size_t)zf->chosen.local_off > len ||
        len - zf->chosen.local_off < LDMARC_XML_ZIP_LOCAL_SIZE) {
        *msg = "bad local header";
        return "zip";
    }
    lh = src_at(src, zf->chosen.local_off, LDMARC_XML_ZIP_LOCAL_SIZE, local, msg);
    if (lh == NULL) {
        return "io";
    }
    if (rd32(lh) != 0x04034b50u) {
        *msg = "bad local header";
        return "zip";
    }
    zf->data_off =
        (size_t)zf->chosen.local_off + LDMARC_XML_ZIP_LOCAL_SIZE + rd16(lh + 26) + rd16(lh + 28);
    if (zf->data_off > len || len - zf->data_off < zf->chosen.csize) {
        *msg = "entry data out of bounds";
        return "zip";
    }
    if (zf->chosen.method == 0 && zf->chosen.csize != zf->chosen.usize) {
        *msg = "stored entry sizes differ";
        return "zip";
    }
    return NULL;
}

/***
** @function xml.unzip(data [, opts])
** The report inside a zip archive: the only file entry, or the only one whose name ends in
** .xml. Stored and deflate entries; the CRC-32 is checked.
** @param {string} data
** @param {table} opts max_output, max_ratio (as xml.inflate), max_entries (default 16)
** @return {string} content, {string} entry name; or nil, message, code ('zip' |
**   'zip_entries' | 'unsupported' | 'bomb' | 'corrupt' | 'truncated' | 'limit')
*/
static int ldmarc_xml_unzip(lua_State *L)
{
    size_t len, max_entries;
    const unsigned char *d = (const unsigned char *)luaL_checklstring(L, 1, &len);
    inflate_limits lim;
    zip_found zf;
    byte_source src;
    const char *code, *msg = NULL;

    static const char *const names[] = {"max_entries", "max_output", "max_ratio", NULL};

    lua_settop(L, 2);
    ldmarc_check_options(L, 2, "dmarc.xml.unzip", names);
    read_inflate_limits(L, 2, &lim);
    max_entries = opt_size(L, 2, "max_entries", LDMARC_XML_DEFAULT_MAX_ENTRIES, 1,
                           LDMARC_XML_HARD_MAX_ENTRIES);
    memset(&zf, 0, sizeof(zf));
    src.mem = d;
    src.fd = -1;
    src.len = len;
    code = zip_locate(&src, max_entries, &lim, &zf, &msg);
    if (code != NULL) {
        return ldmarc_fail(L, msg, code); /* a string source allocates nothing */
    }
    if (zf.chosen.method == 0) {
        if (crc32(0L, d + zf.data_off, (uInt)zf.chosen.usize) != zf.chosen.crc) {
            return ldmarc_fail(L, "CRC-32 mismatch", "corrupt");
        }
        lua_pushlstring(L, (const char *)(d + zf.data_off), zf.chosen.usize);
    } else {
        inflate_state *st = new_inflate_state(L);
        inflate_limits exact = lim;
        /* Never more than the entry declares: a lying header cannot get past it. */
        exact.max_output = zf.chosen.usize;
        code = inflate_run(st, d + zf.data_off, zf.chosen.csize, -15, &exact, &msg);
        if (code != NULL && strcmp(code, "nomem") == 0) {
            return luaL_error(L, "dmarc.xml.unzip: out of memory");
        }
        if (code != NULL) {
            /* More output than the directory declares is a lying archive, not a bomb. */
            return ldmarc_fail(L, msg, st->out_len > zf.chosen.usize ? "zip" : code);
        }
        if (st->out_len != zf.chosen.usize) {
            return ldmarc_fail(L, "entry size differs from the directory", "zip");
        }
        if (crc32(0L, st->out, (uInt)st->out_len) != zf.chosen.crc) {
            return ldmarc_fail(L, "CRC-32 mismatch", "corrupt");
        }
        lua_pushlstring(L, (const char *)st->out, st->out_len);
    }
    lua_pushlstring(L, (const char *)zf.chosen.name, zf.chosen.name_len);
    return 2;
}

/* Writes all of @buf to @fd. NULL, or why not. */
static const char *write_all(int fd, const unsigned char *buf, size_t n)
{
    /* Bound: each pass writes at least one byte, or fails. */
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return w < 0 ? strerror(errno) : "short write";
        }
        buf += w;
        n -= (size_t)w;
    }
    return NULL;
}

/* A streamed unpack: its descriptors and buffers, a userdata's (unpack_job_gc frees them). */
typedef struct unpack_job {
    byte_source src;
    int out_fd;
    zip_found zf;
    z_stream zs;
    int zlive;
    unsigned char *in, *out;
    size_t in_pos, in_end; /* file bytes [in_pos, in_end) are still to be read */
    size_t out_len;        /* bytes written */
    uLong crc;
} unpack_job;

/* Frees the buffers and closes the descriptors of @j (again: a no-op). Called before
** xml.unpack returns, so a run over many files holds no descriptor until the collector
** comes (it would run out of them); __gc is for a raise in between. */
static void unpack_job_release(unpack_job *j)
{
    if (j->zlive) {
        inflateEnd(&j->zs);
        j->zlive = 0;
    }
    free(j->in);
    free(j->out);
    j->in = j->out = NULL;
    zip_found_free(&j->zf);
    if (j->src.fd >= 0) {
        close(j->src.fd);
        j->src.fd = -1;
    }
    if (j->out_fd >= 0) {
        close(j->out_fd);
        j->out_fd = -1;
    }
}

static int unpack_job_gc(lua_State *L)
{
    unpack_job_release((unpack_job *)luaL_checkudata(L, 1, LDMARC_XML_UNPACK_MT));
    return 0;
}

/* Releases @j, then pushes nil, @msg, @code (a string of zlib's, strerror's or a literal:
** none lives in @j). */
static int unpack_fail(lua_State *L, unpack_job *j, const char *msg, const char *code)
{
    unpack_job_release(j);
    return ldmarc_fail(L, msg, code);
}

/* More compressed input when fewer than @want bytes wait (as zinput). NULL, or "io" with
** *@msg set. */
static const char *unpack_input(unpack_job *j, size_t want, const char **msg)
{
    size_t have = j->zs.avail_in, n;
    if (have >= want || j->in_pos >= j->in_end) {
        return NULL;
    }
    if (have > 0) {
        memmove(j->in, j->zs.next_in, have);
    }
    n = LDMARC_XML_READ_STEP - have;
    if (n > j->in_end - j->in_pos) {
        n = j->in_end - j->in_pos;
    }
    *msg = read_at(j->src.fd, j->in + have, n, j->in_pos);
    if (*msg != NULL) {
        return "io";
    }
    j->in_pos += n;
    j->zs.next_in = j->in;
    j->zs.avail_in = (uInt)(have + n);
    return NULL;
}

/* Inflates file bytes [in_pos, in_end) into out_fd, under the caps and with the failures of
** inflate_run: output is made in the same steps (inflate_run's buffer doubling from 64 KiB,
** at most 256 KiB a step) and the caps are judged at the end of each, so a file and a string
** give the same verdict. Input is read LDMARC_XML_READ_STEP at a time; the CRC-32 of the
** output is kept. Returns NULL, or a failure code with *@msg set ("nomem": the caller
** raises). */
static const char *unpack_inflate(unpack_job *j, int window_bits, const inflate_limits *lim,
                                  const char **msg)
{
    unsigned members = 1;
    size_t cap = 0, hard_cap = lim->max_output + 1;
    const char *code;
    if (inflateInit2(&j->zs, window_bits) != Z_OK) {
        *msg = "out of memory";
        return "nomem";
    }
    j->zlive = 1;
    /* Bound: each step makes output up to max_output + 1, ends the stream, or fails. */
    for (;;) {
        size_t step, made;
        int rc;
        if (j->out_len == cap) {
            cap = cap ? cap * 2 : 65536;
            if (cap > hard_cap) {
                cap = hard_cap;
            }
            if (cap <= j->out_len) {
                *msg = "decompressed size over the limit";
                return "bomb";
            }
        }
        step = cap - j->out_len;
        if (step > LDMARC_XML_INFLATE_STEP) {
            step = LDMARC_XML_INFLATE_STEP;
        }
        j->zs.next_out = j->out;
        j->zs.avail_out = (uInt)step;
        /* One step: input read as zlib asks for it, until the step is full or the stream
        ** ends, fails, or runs out of input. */
        do {
            if ((code = unpack_input(j, 1, msg)) != NULL) {
                return code;
            }
            rc = inflate(&j->zs, Z_NO_FLUSH);
        } while ((rc == Z_OK || rc == Z_BUF_ERROR) && j->zs.avail_out > 0 &&
                 (j->zs.avail_in > 0 || j->in_pos < j->in_end));
        made = step - j->zs.avail_out;
        j->crc = crc32(j->crc, j->out, (uInt)made);
        if ((*msg = write_all(j->out_fd, j->out, made)) != NULL) {
            return "io";
        }
        j->out_len += made;
        if (j->out_len > lim->max_output) {
            *msg = "decompressed size over the limit";
            return "bomb";
        }
        if (j->out_len > LDMARC_XML_RATIO_FLOOR &&
            j->out_len / lim->max_ratio > (size_t)j->zs.total_in) {
            *msg = "compression ratio over the limit";
            return "bomb";
        }
        if (rc == Z_STREAM_END) {
            if (lim->multi_member && (code = unpack_input(j, 2, msg)) != NULL) {
                return code;
            }
            if (lim->multi_member && j->zs.avail_in >= 2 && j->zs.next_in[0] == 0x1f &&
                j->zs.next_in[1] == 0x8b && members < LDMARC_XML_MAX_GZIP_MEMBERS) {
                uLong total_in = j->zs.total_in;
                members++;
                if (inflateReset(&j->zs) != Z_OK) {
                    *msg = "corrupt gzip member";
                    return "corrupt";
                }
                j->zs.total_in = total_in;
                continue;
            }
            return NULL;
        }
        if (rc == Z_NEED_DICT || rc == Z_DATA_ERROR) {
            *msg = j->zs.msg != NULL ? j->zs.msg : "corrupt compressed data";
            return "corrupt";
        }
        if (rc == Z_MEM_ERROR) {
            *msg = "out of memory";
            return "nomem";
        }
        if (rc == Z_BUF_ERROR || rc == Z_OK) {
            if (j->zs.avail_in == 0 && j->in_pos >= j->in_end && j->zs.avail_out > 0) {
                *msg = "compressed data ends early";
                return "truncated";
            }
            continue;
        }
        *msg = "inflate failed";
        return "corrupt";
    }
}

/* A zip archive's report entry into out_fd, checked as xml.unzip checks it. */
static const char *unpack_zip(unpack_job *j, size_t max_entries, const inflate_limits *lim,
                              zip_found *zf, const char **msg)
{
    const char *code = zip_locate(&j->src, max_entries, lim, zf, msg);
    if (code != NULL) {
        return code;
    }
    j->in_pos = zf->data_off;
    j->in_end = zf->data_off + zf->chosen.csize;
    if (zf->chosen.method == 0) {
        /* Stored: copied a read at a time. */
        while (j->in_pos < j->in_end) {
            size_t n = j->in_end - j->in_pos;
            if (n > LDMARC_XML_READ_STEP) {
                n = LDMARC_XML_READ_STEP;
            }
            if ((*msg = read_at(j->src.fd, j->in, n, j->in_pos)) != NULL ||
                (*msg = write_all(j->out_fd, j->in, n)) != NULL) {
                return "io";
            }
            j->crc = crc32(j->crc, j->in, (uInt)n);
            j->in_pos += n;
            j->out_len += n;
        }
    } else {
        inflate_limits exact = *lim;
        /* Never more than the entry declares: a lying header cannot get past it. */
        exact.max_output = zf->chosen.usize;
        exact.multi_member = 0;
        code = unpack_inflate(j, -15, &exact, msg);
        if (code != NULL) {
            /* More output than the directory declares is a lying archive, not a bomb. */
            return strcmp(code, "bomb") == 0 && j->out_len > zf->chosen.usize ? "zip" : code;
        }
        if (j->out_len != zf->chosen.usize) {
            *msg = "entry size differs from the directory";
            return "zip";
        }
    }
    if (j->crc != zf->chosen.crc) {
        *msg = "CRC-32 mismatch";
        return "corrupt";
    }
    return NULL;
}

/***
** @function xml.unpack(src, dst [, opts])
** One layer of a compressed file into another file, a window at a time, never whole in
** memory: gzip (several members), zlib, or the report entry of a zip archive. The caps,
** checks and failures are those of xml.inflate and xml.unzip; a file that cannot be read or
** written (or is cut short while it is read) gives 'io'.
** @param {string} src the compressed file's path
** @param {string} dst the output file's path (an existing file is truncated; one that does
**   not exist is made with mode 0600)
** @param {table} opts format ('gzip' | 'zlib' | 'zip'), max_output, max_ratio,
**   max_entries (as xml.unzip), max_input (bytes of src, default xml.DEFAULT_MAX_INPUT)
** @return true, the bytes written and, for a zip, the entry's name; or nil, message, code
*/
static int ldmarc_xml_unpack(lua_State *L)
{
    const char *src_path = luaL_checkstring(L, 1), *dst_path = luaL_checkstring(L, 2);
    static const char *const names[] = {"format",      "max_output", "max_ratio",
                                        "max_entries", "max_input",  NULL};
    static const char *const formats[] = {"gzip", "zlib", "zip", NULL};
    static const int window_bits[] = {15 + 16, 15, 0};
    size_t max_entries, max_input;
    int format = 0;
    inflate_limits lim;
    unpack_job *j;
    struct stat sb;
    const char *code = NULL, *msg = NULL;

    lua_settop(L, 3);
    ldmarc_check_options(L, 3, "dmarc.xml.unpack", names);
    if (!lua_isnil(L, 3)) {
        lua_getfield(L, 3, "format");
        format = luaL_checkoption(L, -1, "gzip", formats);
        lua_pop(L, 1);
    }
    read_inflate_limits(L, 3, &lim);
    lim.multi_member = format == 0;
    max_entries = opt_size(L, 3, "max_entries", LDMARC_XML_DEFAULT_MAX_ENTRIES, 1,
                           LDMARC_XML_HARD_MAX_ENTRIES);
    max_input = opt_size(L, 3, "max_input", LDMARC_XML_DEFAULT_MAX_INPUT, 1, (size_t)INT_MAX);
    /* Every buffer and descriptor belongs to the userdata: its __gc frees them on a raise. */
    j = (unpack_job *)lua_newuserdata(L, sizeof(*j));
    memset(j, 0, sizeof(*j));
    j->src.fd = j->out_fd = -1;
    luaL_setmetatable(L, LDMARC_XML_UNPACK_MT);
    j->src.fd = open(src_path, O_RDONLY | O_CLOEXEC);
    if (j->src.fd < 0) {
        return unpack_fail(L, j, strerror(errno), "io");
    }
    if (fstat(j->src.fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        return unpack_fail(L, j, "not a regular file", "io");
    }
    if ((uintmax_t)sb.st_size > (uintmax_t)max_input) {
        return unpack_fail(L, j, "document larger than max_input", "limit");
    }
    j->src.len = (size_t)sb.st_size;
    j->in_end = j->src.len;
    j->crc = crc32(0L, Z_NULL, 0);
    j->out_fd = open(dst_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (j->out_fd < 0) {
        return unpack_fail(L, j, strerror(errno), "io");
    }
    j->in = (unsigned char *)malloc(LDMARC_XML_READ_STEP);
    j->out = (unsigned char *)malloc(LDMARC_XML_INFLATE_STEP);
    if (j->in == NULL || j->out == NULL) {
        unpack_job_release(j);
        return luaL_error(L, "dmarc.xml.unpack: out of memory");
    }
    code = format == 2 ? unpack_zip(j, max_entries, &lim, &j->zf, &msg)
                       : unpack_inflate(j, window_bits[format], &lim, &msg);
    if (code == NULL) {
        /* Closed here, not in unpack_job_release: a failed close (a full disk) is a failure. */
        int rc = close(j->out_fd);
        j->out_fd = -1;
        if (rc != 0) {
            msg = strerror(errno);
            code = "io";
        }
    }
    if (code != NULL && strcmp(code, "nomem") == 0) {
        unpack_job_release(j);
        return luaL_error(L, "dmarc.xml.unpack: out of memory");
    }
    if (code != NULL) {
        return unpack_fail(L, j, msg, code);
    }
    lua_pushboolean(L, 1);
    lua_pushinteger(L, (lua_Integer)j->out_len);
    if (format == 2) {
        lua_pushlstring(L, (const char *)j->zf.chosen.name, j->zf.chosen.name_len);
    }
    unpack_job_release(j);
    return format == 2 ? 3 : 2;
}
/* }====================================================================== */

/*
** {======================================================================
** HMAC-SHA256 (RFC 2104 over FIPS 180-4) and gzip (RFC 1952): OpenSSL's libcrypto and zlib
** =======================================================================
*/

/***
** @function xml.hmac_sha256(key, message)
** @return {string} the 32-byte HMAC-SHA256 (RFC 2104 over FIPS 180-4 SHA-256), raw bytes
*/
static int ldmarc_xml_hmac_sha256(lua_State *L)
{
    size_t klen, mlen;
    const char *key = luaL_checklstring(L, 1, &klen);
    const unsigned char *msg = (const unsigned char *)luaL_checklstring(L, 2, &mlen);
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int outlen = 0;

    luaL_argcheck(L, klen <= (size_t)INT_MAX, 1, "key too long");
    if (HMAC(EVP_sha256(), key, (int)klen, msg, mlen, out, &outlen) == NULL) {
        return luaL_error(L, "dmarc.xml.hmac_sha256: libcrypto failed");
    }
    lua_pushlstring(L, (const char *)out, outlen);
    return 1;
}

/* The deflate stream of xml.gzip, owned by a userdata so that a raise frees it. */
typedef struct deflate_box {
    z_stream zs;
    int live;
    unsigned char *out;
    size_t cap;
} deflate_box;

static int deflate_box_gc(lua_State *L)
{
    deflate_box *b = (deflate_box *)luaL_checkudata(L, 1, LDMARC_XML_DEFLATE_MT);
    if (b->live) {
        deflateEnd(&b->zs);
        b->live = 0;
    }
    free(b->out);
    b->out = NULL;
    return 0;
}

/***
** @function xml.gzip(data [, opts])
** One gzip member (RFC 1952) holding @data, made in process by zlib: no file name and no
** time stamp in the header, so the same data always gives the same bytes.
** @param {table} opts level (1..9, default 6)
** @return {string} the gzip bytes
*/
static int ldmarc_xml_gzip(lua_State *L)
{
    static const char *const names[] = {"level", NULL};
    size_t len, level;
    const char *data = luaL_checklstring(L, 1, &len);
    deflate_box *b;
    uLong bound;

    lua_settop(L, 2);
    ldmarc_check_options(L, 2, "dmarc.xml.gzip", names);
    level = opt_size(L, 2, "level", 6, 1, 9);
    luaL_argcheck(L, len <= (size_t)LDMARC_XML_MAX_GZIP_INPUT, 1, "data too large");
    b = (deflate_box *)lua_newuserdata(L, sizeof(*b));
    memset(b, 0, sizeof(*b));
    luaL_setmetatable(L, LDMARC_XML_DEFLATE_MT);
    /* windowBits 15 + 16: a gzip wrapper with a zeroed header (no name, mtime 0). */
    if (deflateInit2(&b->zs, (int)level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        return luaL_error(L, "dmarc.xml.gzip: out of memory");
    }
    b->live = 1;
    bound = deflateBound(&b->zs, (uLong)len);
    b->cap = (size_t)bound;
    b->out = (unsigned char *)malloc(b->cap);
    if (b->out == NULL) {
        return luaL_error(L, "dmarc.xml.gzip: out of memory");
    }
    b->zs.next_in = (Bytef *)(uintptr_t)data;
    b->zs.avail_in = (uInt)len;
    b->zs.next_out = b->out;
    b->zs.avail_out = (uInt)b->cap;
    /* deflateBound is enough for one Z_FINISH call: anything else is a zlib fault. */
    if (deflate(&b->zs, Z_FINISH) != Z_STREAM_END) {
        return luaL_error(L, "dmarc.xml.gzip: deflate did not finish");
    }
    lua_pushlstring(L, (const char *)b->out, b->cap - b->zs.avail_out);
    deflateEnd(&b->zs);
    b->live = 0;
    return 1;
}

/* A directory name longer than this is refused: the template must fit a path. */
#define LDMARC_XML_TEMP_DIR_MAX 3900

/***
** @function xml.temp_file(dir)
** A new empty file in @dir (ingest's temporary files: unpacked layers, decoded attachments,
** spooled input), made with mkstemp: mode 0600, a name no other process holds. Lua's
** os.tmpname always uses /tmp; this follows $TMPDIR or the operator's choice.
** @param {string} dir an existing directory
** @return {string} the path, or nil, message, 'io'
*/
static int ldmarc_xml_temp_file(lua_State *L)
{
    size_t dir_len;
    const char *dir = luaL_checklstring(L, 1, &dir_len);
    static const char suffix[] = "/dmarc-ingest-XXXXXX";
    char path[LDMARC_XML_TEMP_DIR_MAX + sizeof suffix];
    int fd;

    if (dir_len == 0 || dir_len > LDMARC_XML_TEMP_DIR_MAX || memchr(dir, 0, dir_len) != NULL)
        return ldmarc_fail(L, "temporary directory name unusable", "io");
    memcpy(path, dir, dir_len);
    memcpy(path + dir_len, suffix, sizeof suffix);
    fd = mkstemp(path);
    if (fd < 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s: %s", dir, strerror(errno));
        lua_pushliteral(L, "io");
        return 3;
    }
    close(fd);
    lua_pushstring(L, path);
    return 1;
}
/* }====================================================================== */

static const luaL_Reg module_functions[] = {{"parse", ldmarc_xml_parse},
                                            {"records", ldmarc_xml_records},
                                            {"map", ldmarc_xml_file},
                                            {"inflate", ldmarc_xml_inflate},
                                            {"unzip", ldmarc_xml_unzip},
                                            {"unpack", ldmarc_xml_unpack},
                                            {"hmac_sha256", ldmarc_xml_hmac_sha256},
                                            {"gzip", ldmarc_xml_gzip},
                                            {"temp_file", ldmarc_xml_temp_file},
                                            {NULL, NULL}};

LDMARC_EXPORT int luaopen_dmarc_xml(lua_State *L);

LDMARC_EXPORT int luaopen_dmarc_xml(lua_State *L)
{
    /* Checks the headers against the loaded library; initialises its tables once. */
    LIBXML_TEST_VERSION

    luaL_newmetatable(L, LDMARC_XML_PARSE_MT);
    lua_pushcfunction(L, parse_state_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    luaL_newmetatable(L, LDMARC_XML_FILE_MT);
    lua_pushcfunction(L, file_doc_gc);
    lua_setfield(L, -2, "__gc");
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, file_doc_close_method);
    lua_setfield(L, -2, "close");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newmetatable(L, LDMARC_XML_INFLATE_MT);
    lua_pushcfunction(L, inflate_state_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    luaL_newmetatable(L, LDMARC_XML_UNPACK_MT);
    lua_pushcfunction(L, unpack_job_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    luaL_newmetatable(L, LDMARC_XML_DEFLATE_MT);
    lua_pushcfunction(L, deflate_box_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);

    luaL_newlib(L, module_functions);
    lua_pushliteral(L, "dmarc.xml");
    lua_setfield(L, -2, "_NAME");
    lua_pushliteral(L, DMARC_VERSION_STRING);
    lua_setfield(L, -2, "_VERSION");
    lua_pushliteral(L, LIBXML_DOTTED_VERSION);
    lua_setfield(L, -2, "LIBXML_VERSION");
    lua_pushinteger(L, (lua_Integer)LDMARC_XML_DEFAULT_MAX_INPUT);
    lua_setfield(L, -2, "DEFAULT_MAX_INPUT");
    lua_pushinteger(L, (lua_Integer)LDMARC_XML_DEFAULT_MAX_OUTPUT);
    lua_setfield(L, -2, "DEFAULT_MAX_OUTPUT");
    lua_pushinteger(L, LDMARC_XML_DEFAULT_MAX_RATIO);
    lua_setfield(L, -2, "DEFAULT_MAX_RATIO");
    lua_pushinteger(L, LDMARC_XML_HARD_MAX_DEPTH);
    lua_setfield(L, -2, "MAX_DEPTH");
    return 1;
}
