/* tokenizer_hf.c — Hugging Face tokenizer.json BPE tokenizers (see tokenizer_hf.h).
 *
 * The pipeline follows huggingface/tokenizers (tokenizer/mod.rs, added_vocabulary.rs,
 * normalizer.rs, pre_tokenizers/, models/bpe/{model,word}.rs, decoders/) step by step:
 *   1. added tokens with normalized=false are cut out of the raw text (leftmost-longest);
 *   2. each remaining piece is normalized, then added tokens with normalized=true are cut out
 *      of the normalized text;
 *   3. the pre-tokenizers split the remaining pieces (empty pieces are dropped after every
 *      step, as PreTokenizedString::split does);
 *   4. the BPE model turns each piece into ids: characters → symbols (unk / byte fallback),
 *      then merges by lowest rank, leftmost first (word.rs merge_all), with a per-call cache.
 * Decoding maps ids to token strings (added tokens first), optionally drops special tokens,
 * runs the decoder chain and joins the result. */
#define _GNU_SOURCE /* strndup */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer_hf.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_hf_unicode.inc"

#define HF_MAX_ID (1 << 22) /* ids must be below this (largest real vocabularies: ~260k) */
#define HF_CACHE_MAX_WORD 256
#define HF_CACHE_MAX_ENTRIES (1u << 16) /* words cached per working state (HF: 10000) */

/* ============================================================================================
 * UTF-8
 * ========================================================================================== */

static inline size_t u8_len(unsigned char c) {
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

/* Decode one code point of valid UTF-8 at p; *n gets its length. */
static inline uint32_t u8_get(const unsigned char *p, size_t *n) {
    unsigned char c = p[0];
    if (c < 0x80) { *n = 1; return c; }
    if (c < 0xE0) { *n = 2; return ((uint32_t)(c & 0x1F) << 6) | (p[1] & 0x3F); }
    if (c < 0xF0) {
        *n = 3;
        return ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    }
    *n = 4;
    return ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(p[1] & 0x3F) << 12) |
           ((uint32_t)(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

static inline size_t u8_put(uint32_t cp, char *o) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the valid UTF-8 sequence starting at s[0] (1..4), or 0 when it is invalid; *used
 * gets how many bytes form its maximal valid prefix (at least 1), for lossy replacement. */
static size_t u8_seq(const unsigned char *s, size_t n, size_t *used) {
    unsigned char c = s[0];
    *used = 1;
    if (c < 0x80) return 1;
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c == 0xE0) need = 2, lo = 0xA0;
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) need = 2;
    else if (c == 0xED) need = 2, hi = 0x9F;
    else if (c == 0xF0) need = 3, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) need = 3;
    else if (c == 0xF4) need = 3, hi = 0x8F;
    else return 0;
    size_t j = 1;
    while (j <= need && j < n) {
        unsigned char d = s[j];
        unsigned l = j == 1 ? lo : 0x80, h = j == 1 ? hi : 0xBF;
        if (d < l || d > h) break;
        j++;
    }
    *used = j;
    return j == need + 1 ? j : 0;
}

/* Offset of the first invalid byte, or n when s[0..n) is valid UTF-8. */
static size_t u8_invalid_at(const unsigned char *s, size_t n) {
    size_t i = 0, used;
    while (i < n) {
        if (s[i] < 0x80) { i++; continue; }
        size_t k = u8_seq(s + i, n - i, &used);
        if (!k) return i;
        i += k;
    }
    return n;
}

/* Append s[0..n) with every maximal invalid subsequence replaced by U+FFFD (Rust's
 * String::from_utf8_lossy). */
static kvf_status bytes_append_lossy(kvf_bytes *out, const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        size_t run = i;
        while (run < n && s[run] < 0x80) run++;
        if (run > i) { KVF_TRY(kvf_bytes_append(out, s + i, run - i)); i = run; continue; }
        size_t used, k = u8_seq(s + i, n - i, &used);
        if (k) { KVF_TRY(kvf_bytes_append(out, s + i, k)); i += k; }
        else { KVF_TRY(kvf_bytes_append(out, "\xEF\xBF\xBD", 3)); i += used; }
    }
    return KVF_OK;
}

static bool is_white_space(uint32_t c) { /* Unicode White_Space (Rust char::is_whitespace) */
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}
#define WS_CLASS "\\t-\\r \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"
/* Rust regex's Unicode \w: Alphabetic, marks, decimal numbers, connector punctuation, joiners. */
#define WORD_CLASS "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200c}\\x{200d}"

/* ============================================================================================
 * Hash maps: string → int32 (vocab, added tokens, BPE cache) and id pair → merge
 * ========================================================================================== */

static inline uint32_t hash_bytes(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ull;
    return (uint32_t)(h ^ (h >> 32));
}

typedef struct { uint32_t off, len; int32_t val; uint32_t h; } sm_ent;
typedef struct {
    char *pool; /* every key NUL-terminated */
    size_t plen, pcap;
    sm_ent *e;
    size_t n, ecap;
    uint32_t *slot; /* entry index + 1, 0 = empty */
    size_t nslot;
} strmap;

static void sm_free(strmap *m) {
    free(m->pool);
    free(m->e);
    free(m->slot);
    *m = (strmap){0};
}

static void sm_clear(strmap *m) {
    m->plen = 0;
    m->n = 0;
    if (m->slot) memset(m->slot, 0, m->nslot * sizeof *m->slot);
}

static int64_t sm_find(const strmap *m, const char *s, size_t len) {
    if (!m->nslot) return -1;
    uint32_t h = hash_bytes(s, len);
    size_t mask = m->nslot - 1, i = h & mask;
    while (m->slot[i]) {
        const sm_ent *e = &m->e[m->slot[i] - 1];
        if (e->h == h && e->len == len && memcmp(m->pool + e->off, s, len) == 0) return m->slot[i] - 1;
        i = (i + 1) & mask;
    }
    return -1;
}

static inline int32_t sm_get(const strmap *m, const char *s, size_t len) {
    int64_t i = sm_find(m, s, len);
    return i < 0 ? -1 : m->e[i].val;
}

static inline const char *sm_key(const strmap *m, int64_t i) { return m->pool + m->e[i].off; }

/* Insert or overwrite (a later put of the same key wins, like HashMap::insert). */
static kvf_status sm_put(strmap *m, const char *s, size_t len, int32_t val, int64_t *idx) {
    int64_t f = sm_find(m, s, len);
    if (f >= 0) {
        m->e[f].val = val;
        if (idx) *idx = f;
        return KVF_OK;
    }
    KVF_CHECK(len < UINT32_MAX / 2 && m->plen + len + 1 < UINT32_MAX, KVF_ERR_OOM,
              "string table: too large");
    if ((m->n + 1) * 2 > m->nslot) {
        size_t ns = m->nslot ? m->nslot * 2 : 64;
        uint32_t *sl = calloc(ns, sizeof *sl);
        KVF_CHECK(sl, KVF_ERR_OOM, "string table: out of memory");
        for (size_t k = 0; k < m->n; k++) {
            size_t j = m->e[k].h & (ns - 1);
            while (sl[j]) j = (j + 1) & (ns - 1);
            sl[j] = (uint32_t)k + 1;
        }
        free(m->slot);
        m->slot = sl;
        m->nslot = ns;
    }
    if (m->n == m->ecap) {
        size_t c = m->ecap ? m->ecap * 2 : 64;
        sm_ent *e = realloc(m->e, c * sizeof *e);
        KVF_CHECK(e, KVF_ERR_OOM, "string table: out of memory");
        m->e = e;
        m->ecap = c;
    }
    if (m->plen + len + 1 > m->pcap) {
        size_t c = m->pcap ? m->pcap : 1024;
        while (c < m->plen + len + 1) c *= 2;
        char *p = realloc(m->pool, c);
        KVF_CHECK(p, KVF_ERR_OOM, "string table: out of memory");
        m->pool = p;
        m->pcap = c;
    }
    if (len) memcpy(m->pool + m->plen, s, len);
    m->pool[m->plen + len] = '\0';
    uint32_t h = hash_bytes(s, len);
    m->e[m->n] = (sm_ent){(uint32_t)m->plen, (uint32_t)len, val, h};
    m->plen += len + 1;
    size_t j = h & (m->nslot - 1);
    while (m->slot[j]) j = (j + 1) & (m->nslot - 1);
    m->slot[j] = (uint32_t)m->n + 1;
    if (idx) *idx = (int64_t)m->n;
    m->n++;
    return KVF_OK;
}

typedef struct { uint64_t key; uint32_t rank; int32_t id; } mm_ent;
typedef struct { mm_ent *t; size_t cap, n; } mergemap; /* key UINT64_MAX = empty */

static inline uint64_t mm_mix(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static inline const mm_ent *mm_get(const mergemap *m, int32_t a, int32_t b) {
    if (!m->cap) return NULL;
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = m->cap - 1, i = mm_mix(k) & mask;
    while (m->t[i].key != UINT64_MAX) {
        if (m->t[i].key == k) return &m->t[i];
        i = (i + 1) & mask;
    }
    return NULL;
}

static kvf_status mm_init(mergemap *m, size_t n) {
    size_t cap = 64;
    while (cap < n * 2 + 2) cap *= 2;
    m->t = malloc(cap * sizeof *m->t);
    KVF_CHECK(m->t, KVF_ERR_OOM, "merge table: out of memory");
    for (size_t i = 0; i < cap; i++) m->t[i].key = UINT64_MAX;
    m->cap = cap;
    m->n = 0;
    return KVF_OK;
}

static void mm_put(mergemap *m, int32_t a, int32_t b, uint32_t rank, int32_t id) {
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = m->cap - 1, i = mm_mix(k) & mask;
    while (m->t[i].key != UINT64_MAX && m->t[i].key != k) i = (i + 1) & mask;
    if (m->t[i].key == UINT64_MAX) m->n++;
    m->t[i] = (mm_ent){k, rank, id}; /* a repeated pair: the later merge wins, as in HF */
}

/* ============================================================================================
 * Unicode normalization (NFC / NFD / NFKC / NFKD) and lowercase
 * ========================================================================================== */

#define HG_SBASE 0xAC00u
#define HG_LBASE 0x1100u
#define HG_VBASE 0x1161u
#define HG_TBASE 0x11A7u
#define HG_LCOUNT 19u
#define HG_VCOUNT 21u
#define HG_TCOUNT 28u
#define HG_NCOUNT (HG_VCOUNT * HG_TCOUNT)
#define HG_SCOUNT (HG_LCOUNT * HG_NCOUNT)

static int64_t bs_u32(const uint32_t *a, size_t n, uint32_t key) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (a[mid] < key) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && a[lo] == key ? (int64_t)lo : -1;
}

static uint8_t uni_ccc(uint32_t cp) {
    if (cp < 0x300) return 0;
    size_t lo = 0, hi = sizeof hfu_ccc / sizeof hfu_ccc[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if ((hfu_ccc[mid] >> 8) < cp) lo = mid + 1;
        else hi = mid;
    }
    if (lo < sizeof hfu_ccc / sizeof hfu_ccc[0] && (hfu_ccc[lo] >> 8) == cp) return hfu_ccc[lo] & 0xFF;
    return 0;
}

static uint32_t uni_compose(uint32_t a, uint32_t b) {
    if (a >= HG_LBASE && a < HG_LBASE + HG_LCOUNT && b >= HG_VBASE && b < HG_VBASE + HG_VCOUNT)
        return HG_SBASE + ((a - HG_LBASE) * HG_VCOUNT + (b - HG_VBASE)) * HG_TCOUNT;
    if (a >= HG_SBASE && a < HG_SBASE + HG_SCOUNT && (a - HG_SBASE) % HG_TCOUNT == 0 &&
        b > HG_TBASE && b < HG_TBASE + HG_TCOUNT)
        return a + (b - HG_TBASE);
    uint64_t k = ((uint64_t)a << 21) | b;
    size_t n = sizeof hfu_comp_keys / sizeof hfu_comp_keys[0], lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (hfu_comp_keys[mid] < k) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && hfu_comp_keys[lo] == k ? hfu_comp_vals[lo] : 0;
}

typedef struct { uint32_t *v; size_t n, cap; } u32vec;

static kvf_status u32_push(u32vec *a, uint32_t x) {
    if (a->n == a->cap) {
        size_t c = a->cap ? a->cap * 2 : 256;
        uint32_t *p = realloc(a->v, c * sizeof *p);
        KVF_CHECK(p, KVF_ERR_OOM, "unicode normalization: out of memory");
        a->v = p;
        a->cap = c;
    }
    a->v[a->n++] = x;
    return KVF_OK;
}

enum { UF_NFC, UF_NFD, UF_NFKC, UF_NFKD };

static kvf_status uni_decompose(uint32_t cp, bool compat, u32vec *o) {
    if (cp >= HG_SBASE && cp < HG_SBASE + HG_SCOUNT) {
        uint32_t s = cp - HG_SBASE;
        KVF_TRY(u32_push(o, HG_LBASE + s / HG_NCOUNT));
        KVF_TRY(u32_push(o, HG_VBASE + (s % HG_NCOUNT) / HG_TCOUNT));
        if (s % HG_TCOUNT) KVF_TRY(u32_push(o, HG_TBASE + s % HG_TCOUNT));
        return KVF_OK;
    }
    const uint32_t *keys = compat ? hfu_nfkd_keys : hfu_nfd_keys;
    const uint32_t *offs = compat ? hfu_nfkd_offs : hfu_nfd_offs;
    const uint32_t *pool = compat ? hfu_nfkd_pool : hfu_nfd_pool;
    size_t nk = compat ? sizeof hfu_nfkd_keys / 4 : sizeof hfu_nfd_keys / 4;
    int64_t i = cp < 0xA0 ? -1 : bs_u32(keys, nk, cp);
    if (i < 0) return u32_push(o, cp);
    uint32_t off = offs[i] >> 8, n = offs[i] & 0xFF;
    for (uint32_t k = 0; k < n; k++) KVF_TRY(u32_push(o, pool[off + k]));
    return KVF_OK;
}

/* out gets the normalization form of s[0..n) (valid UTF-8). */
static kvf_status uni_normalize(int form, const char *s, size_t n, kvf_bytes *out) {
    size_t i = 0;
    while (i < n && (unsigned char)s[i] < 0x80) i++;
    if (i == n) return kvf_bytes_append(out, s, n); /* ASCII is in every normal form */
    u32vec cps = {0};
    kvf_status st = KVF_OK;
    bool compat = form == UF_NFKC || form == UF_NFKD;
    for (i = 0; i < n && st == KVF_OK;) {
        size_t l;
        uint32_t cp = u8_get((const unsigned char *)s + i, &l);
        i += l;
        st = uni_decompose(cp, compat, &cps);
    }
    if (st != KVF_OK) goto done;
    /* canonical ordering: stable sort of every run of non-starters by combining class */
    for (size_t k = 1; k < cps.n; k++) {
        uint8_t c = uni_ccc(cps.v[k]);
        if (!c) continue;
        size_t j = k;
        uint32_t x = cps.v[k];
        while (j > 0) {
            uint8_t p = uni_ccc(cps.v[j - 1]);
            if (p == 0 || p <= c) break;
            cps.v[j] = cps.v[j - 1];
            j--;
        }
        cps.v[j] = x;
    }
    size_t m = cps.n;
    if (form == UF_NFC || form == UF_NFKC) { /* canonical composition */
        size_t w = 0;
        int64_t starter = -1;
        uint8_t last_cc = 0;
        for (size_t k = 0; k < cps.n; k++) {
            uint32_t c = cps.v[k];
            uint8_t cc = uni_ccc(c);
            if (starter >= 0 && ((size_t)starter == w - 1 || (last_cc != 0 && last_cc < cc))) {
                uint32_t comp = uni_compose(cps.v[starter], c);
                if (comp) { cps.v[starter] = comp; continue; }
            }
            if (cc == 0) starter = (int64_t)w;
            last_cc = cc;
            cps.v[w++] = c;
        }
        m = w;
    }
    st = kvf_bytes_reserve(out, m * 4);
    if (st == KVF_OK) {
        for (size_t k = 0; k < m; k++) out->len += u8_put(cps.v[k], out->data + out->len);
        out->data[out->len] = '\0';
    }
done:
    free(cps.v);
    return st;
}

static kvf_status uni_lowercase(const char *s, size_t n, kvf_bytes *out) {
    KVF_TRY(kvf_bytes_reserve(out, n));
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            char o = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
            KVF_TRY(kvf_bytes_append(out, &o, 1));
            i++;
            continue;
        }
        size_t l;
        uint32_t cp = u8_get((const unsigned char *)s + i, &l);
        int64_t k = bs_u32(hfu_lower_keys, sizeof hfu_lower_keys / 4, cp);
        if (k < 0) {
            KVF_TRY(kvf_bytes_append(out, s + i, l));
        } else {
            uint32_t off = hfu_lower_offs[k] >> 8, cnt = hfu_lower_offs[k] & 0xFF;
            for (uint32_t j = 0; j < cnt; j++) {
                char b[4];
                KVF_TRY(kvf_bytes_append(out, b, u8_put(hfu_lower_pool[off + j], b)));
            }
        }
        i += l;
    }
    return KVF_OK;
}

/* ============================================================================================
 * The tokenizer's parts
 * ========================================================================================== */

enum { M_REGEX, M_LIT };
typedef struct {
    int kind;
    pcre2_code *re; /* M_REGEX */
    char *lit;      /* M_LIT (non-empty) */
    size_t litlen;
} hf_matcher;

enum { B_REMOVED, B_ISOLATED, B_MERGED_PREV, B_MERGED_NEXT, B_CONTIGUOUS };
enum { PS_ALWAYS, PS_FIRST, PS_NEVER };

enum { NZ_PREPEND, NZ_APPEND, NZ_REPLACE, NZ_UNICODE, NZ_LOWER, NZ_STRIP };
typedef struct {
    int kind;
    int form;          /* NZ_UNICODE: UF_* */
    char *s;           /* prepend / append text, Replace content */
    size_t slen;
    hf_matcher m;      /* NZ_REPLACE */
    bool left, right;  /* NZ_STRIP */
} hf_norm;

enum { PT_BYTELEVEL, PT_SPLIT, PT_METASPACE };
typedef struct {
    int kind;
    bool add_prefix_space, use_regex; /* ByteLevel */
    hf_matcher m;                     /* Split */
    int behavior;
    bool invert;
    char rep[5];                      /* Metaspace replacement (UTF-8) */
    size_t replen;
    int prepend;
    bool split;
} hf_pretok;

enum { DC_BYTELEVEL, DC_METASPACE, DC_REPLACE, DC_BYTEFALLBACK, DC_FUSE, DC_STRIP, DC_BPE };
typedef struct {
    int kind;
    uint32_t rep;      /* Metaspace replacement / Strip content (code point) */
    int prepend;       /* Metaspace */
    hf_matcher m;      /* Replace */
    char *s;           /* Replace content / BPEDecoder suffix */
    size_t slen;
    size_t start, stop; /* Strip */
} hf_dec;

typedef struct {
    char *content;
    size_t len;
    int32_t id;
    bool special, normalized, lstrip, rstrip, single_word;
} hf_added;

typedef struct { const char *pat; size_t len; int32_t id; } trie_ent;
typedef struct {
    trie_ent *e;      /* sorted by (first byte, length descending, insertion order) */
    size_t n;
    uint32_t start[257];
    char *owned;      /* normalized patterns */
} hf_trie;

typedef struct {
    char *name;
    int32_t vocab_size;
    /* BPE model */
    strmap vocab;
    int32_t *vocab_r;   /* id → vocab entry index, -1 */
    mergemap merges;
    char *unk_token;    /* NULL when none */
    size_t unk_len;
    int32_t unk_id;     /* -1 when unk_token is not in the vocab */
    bool fuse_unk, byte_fallback, ignore_merges;
    char *prefix, *suffix;
    size_t prefix_len, suffix_len;
    int32_t byte_id[256];
    /* added tokens */
    hf_added *added;
    size_t nadded;
    strmap added_map;   /* content → id */
    int32_t *added_r;   /* id → index in added, -1 */
    strmap special_set; /* contents of special tokens */
    uint8_t *special;   /* id → decodes to a special token's spelling */
    hf_trie raw, norm;
    pcre2_code *re_word; /* one Unicode word character, for single_word */
    /* pipeline */
    hf_norm *norms;
    size_t nnorms;
    hf_pretok *pts;
    size_t npts;
    bool has_pretok;
    hf_dec *decs;
    size_t ndecs;
    bool has_decoder;
    pcre2_code *gpt2;
    /* working states (hf_ctx) kept between calls: BPE cache and regex scratch survive */
    pthread_mutex_t pool_mu;
    void *pool[16];
    int npool;
    /* ByteLevel maps */
    char bl_enc[256][2];
    uint8_t bl_enclen[256];
    int16_t bl_dec[0x144]; /* code point → byte, -1 */
} hf_impl;

static void ctx_release_all(hf_impl *t);

static void matcher_free(hf_matcher *m) {
    if (m->re) pcre2_code_free(m->re);
    free(m->lit);
    *m = (hf_matcher){0};
}

static void impl_free(hf_impl *t) {
    if (!t) return;
    ctx_release_all(t);
    pthread_mutex_destroy(&t->pool_mu);
    free(t->name);
    sm_free(&t->vocab);
    free(t->vocab_r);
    free(t->merges.t);
    free(t->unk_token);
    free(t->prefix);
    free(t->suffix);
    for (size_t i = 0; i < t->nadded; i++) free(t->added[i].content);
    free(t->added);
    sm_free(&t->added_map);
    free(t->added_r);
    sm_free(&t->special_set);
    free(t->special);
    free(t->raw.e);
    free(t->raw.owned);
    free(t->norm.e);
    free(t->norm.owned);
    if (t->re_word) pcre2_code_free(t->re_word);
    for (size_t i = 0; i < t->nnorms; i++) { free(t->norms[i].s); matcher_free(&t->norms[i].m); }
    free(t->norms);
    for (size_t i = 0; i < t->npts; i++) matcher_free(&t->pts[i].m);
    free(t->pts);
    for (size_t i = 0; i < t->ndecs; i++) { free(t->decs[i].s); matcher_free(&t->decs[i].m); }
    free(t->decs);
    if (t->gpt2) pcre2_code_free(t->gpt2);
    free(t);
}

/* ============================================================================================
 * Per-call working state
 * ========================================================================================== */

typedef struct { size_t s, e; bool m; } span;
typedef struct { span *v; size_t n, cap; } spanv;

typedef struct { size_t off, len; bool first; } piece;
typedef struct { kvf_bytes text; piece *v; size_t n, cap; } plist;

typedef struct { size_t off, len; } tokref;
typedef struct { kvf_bytes text; tokref *v; size_t n, cap; } tlist;

typedef struct { uint32_t rank; int32_t pos, id; } heap_ent;

typedef struct {
    const hf_impl *t;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *js;
    spanv sp, sp2;
    plist pl[2];
    kvf_bytes nb[2], tmp;
    /* BPE */
    int32_t *sc, *sprev, *snext;
    uint32_t *slen;
    size_t scap;
    heap_ent *heap;
    size_t hn, hcap;
    strmap cache;
    kvf_ids cache_ids;
    int64_t *cache_rng; /* (offset, count) pairs */
    size_t cache_cap;
} hf_ctx;

static kvf_status ctx_init(hf_ctx *c, const hf_impl *t) {
    *c = (hf_ctx){.t = t};
    c->md = pcre2_match_data_create(1, NULL);
    c->mctx = pcre2_match_context_create(NULL);
    c->js = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    KVF_CHECK(c->md && c->mctx && c->js, KVF_ERR_OOM, "%s: out of memory", t->name);
    pcre2_jit_stack_assign(c->mctx, NULL, c->js);
    return KVF_OK;
}

static void ctx_free(hf_ctx *c) {
    if (c->md) pcre2_match_data_free(c->md);
    if (c->mctx) pcre2_match_context_free(c->mctx);
    if (c->js) pcre2_jit_stack_free(c->js);
    free(c->sp.v);
    free(c->sp2.v);
    for (int i = 0; i < 2; i++) {
        kvf_bytes_free(&c->pl[i].text);
        free(c->pl[i].v);
        kvf_bytes_free(&c->nb[i]);
    }
    kvf_bytes_free(&c->tmp);
    free(c->sc);
    free(c->sprev);
    free(c->snext);
    free(c->slen);
    free(c->heap);
    sm_free(&c->cache);
    kvf_ids_free(&c->cache_ids);
    free(c->cache_rng);
}

/* A working state for one call: from the tokenizer's pool, or new. NULL (error set) on OOM. */
static hf_ctx *ctx_acquire(const hf_impl *tc) {
    hf_impl *t = (hf_impl *)tc; /* the pool is the only mutable part, behind its mutex */
    hf_ctx *c = NULL;
    pthread_mutex_lock(&t->pool_mu);
    if (t->npool) c = t->pool[--t->npool];
    pthread_mutex_unlock(&t->pool_mu);
    if (c) return c;
    c = malloc(sizeof *c);
    KVF_CHECK_NULL(c, KVF_ERR_OOM, "%s: out of memory", t->name);
    if (ctx_init(c, t) != KVF_OK) {
        ctx_free(c);
        free(c);
        return NULL;
    }
    return c;
}

static void ctx_release(const hf_impl *tc, hf_ctx *c) {
    hf_impl *t = (hf_impl *)tc;
    pthread_mutex_lock(&t->pool_mu);
    bool kept = t->npool < (int)(sizeof t->pool / sizeof t->pool[0]);
    if (kept) t->pool[t->npool++] = c;
    pthread_mutex_unlock(&t->pool_mu);
    if (!kept) {
        ctx_free(c);
        free(c);
    }
}

static void ctx_release_all(hf_impl *t) {
    for (int i = 0; i < t->npool; i++) {
        ctx_free(t->pool[i]);
        free(t->pool[i]);
    }
    t->npool = 0;
}

static kvf_status span_push(spanv *v, size_t s, size_t e, bool m) {
    if (v->n == v->cap) {
        size_t c = v->cap ? v->cap * 2 : 64;
        span *p = realloc(v->v, c * sizeof *p);
        KVF_CHECK(p, KVF_ERR_OOM, "tokenizer: out of memory");
        v->v = p;
        v->cap = c;
    }
    v->v[v->n++] = (span){s, e, m};
    return KVF_OK;
}

static kvf_status pl_push(plist *p, const char *s, size_t len, bool first) {
    if (!len) return KVF_OK; /* empty splits are dropped */
    if (p->n == p->cap) {
        size_t c = p->cap ? p->cap * 2 : 64;
        piece *v = realloc(p->v, c * sizeof *v);
        KVF_CHECK(v, KVF_ERR_OOM, "tokenizer: out of memory");
        p->v = v;
        p->cap = c;
    }
    p->v[p->n++] = (piece){p->text.len, len, first};
    return kvf_bytes_append(&p->text, s, len);
}

static kvf_status tl_push(tlist *l, const char *s, size_t len) {
    if (l->n == l->cap) {
        size_t c = l->cap ? l->cap * 2 : 64;
        tokref *v = realloc(l->v, c * sizeof *v);
        KVF_CHECK(v, KVF_ERR_OOM, "tokenizer: out of memory");
        l->v = v;
        l->cap = c;
    }
    l->v[l->n++] = (tokref){l->text.len, len};
    return kvf_bytes_append(&l->text, s, len);
}

/* Start a token in l whose bytes are appended to l->text afterwards (tl_end closes it). */
static kvf_status tl_begin(tlist *l) { return tl_push(l, "", 0); }
static void tl_end(tlist *l) { l->v[l->n - 1].len = l->text.len - l->v[l->n - 1].off; }

/* ============================================================================================
 * Pattern matching and splitting (tokenizer/pattern.rs, NormalizedString::split)
 * ========================================================================================== */

/* spans covering s[0..len): the matches of m (true) and the text between them (false). */
static kvf_status find_spans(hf_ctx *c, const hf_matcher *m, const char *s, size_t len, spanv *out) {
    out->n = 0;
    if (len == 0) return span_push(out, 0, 0, false);
    size_t prev = 0;
    if (m->kind == M_LIT) {
        size_t pos = 0;
        while (pos < len) {
            const char *f = s + pos;
            for (;;) { /* memchr + memcmp: no memmem (slow under sanitizers) */
                f = memchr(f, m->lit[0], len - (size_t)(f - s));
                if (!f || (size_t)(s + len - f) < m->litlen) { f = NULL; break; }
                if (memcmp(f, m->lit, m->litlen) == 0) break;
                f++;
            }
            if (!f) break;
            size_t ms = (size_t)(f - s);
            if (ms > prev) KVF_TRY(span_push(out, prev, ms, false));
            KVF_TRY(span_push(out, ms, ms + m->litlen, true));
            prev = pos = ms + m->litlen;
        }
    } else {
        /* Oniguruma find_iter: an empty match right at the end of the previous match is
         * skipped and the search moves one character on. */
        size_t last_end = 0;
        int64_t last_match_end = -1;
        while (last_end <= len) {
            int rc = pcre2_match(m->re, (PCRE2_SPTR)s, len, last_end, PCRE2_NO_UTF_CHECK, c->md,
                                 c->mctx);
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc < 0) {
                PCRE2_UCHAR msg[256];
                pcre2_get_error_message(rc, msg, sizeof msg);
                return kvf_error_set(KVF_ERR_UNSUPPORTED, "%s: regex matching failed: %s",
                                     c->t->name, (const char *)msg);
            }
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
            size_t ms = ov[0], me = ov[1];
            if (ms < prev) ms = prev;
            if (me < ms) me = ms;
            if (me == ms && last_match_end == (int64_t)me) {
                if (last_end >= len) break;
                last_end += u8_len((unsigned char)s[last_end]);
                continue;
            }
            if (ms != prev) KVF_TRY(span_push(out, prev, ms, false));
            KVF_TRY(span_push(out, ms, me, true));
            prev = me;
            last_end = me;
            last_match_end = (int64_t)me;
        }
    }
    if (prev != len) KVF_TRY(span_push(out, prev, len, false));
    return KVF_OK;
}

/* Apply a split behavior to in (covering spans); out gets the kept ranges (m = false). */
static kvf_status apply_behavior(int behavior, const spanv *in, spanv *out) {
    out->n = 0;
    bool prev = false;
    switch (behavior) {
    case B_ISOLATED:
        for (size_t i = 0; i < in->n; i++) KVF_TRY(span_push(out, in->v[i].s, in->v[i].e, false));
        break;
    case B_REMOVED:
        for (size_t i = 0; i < in->n; i++)
            if (!in->v[i].m) KVF_TRY(span_push(out, in->v[i].s, in->v[i].e, false));
        break;
    case B_CONTIGUOUS:
        for (size_t i = 0; i < in->n; i++) {
            if (in->v[i].m == prev && out->n) out->v[out->n - 1].e = in->v[i].e;
            else KVF_TRY(span_push(out, in->v[i].s, in->v[i].e, false));
            prev = in->v[i].m;
        }
        break;
    case B_MERGED_PREV:
        for (size_t i = 0; i < in->n; i++) {
            if (in->v[i].m && !prev && out->n) out->v[out->n - 1].e = in->v[i].e;
            else KVF_TRY(span_push(out, in->v[i].s, in->v[i].e, false));
            prev = in->v[i].m;
        }
        break;
    case B_MERGED_NEXT:
        for (size_t i = in->n; i-- > 0;) {
            if (in->v[i].m && !prev && out->n) out->v[out->n - 1].s = in->v[i].s;
            else KVF_TRY(span_push(out, in->v[i].s, in->v[i].e, false));
            prev = in->v[i].m;
        }
        for (size_t i = 0, j = out->n ? out->n - 1 : 0; i < j; i++, j--) {
            span x = out->v[i];
            out->v[i] = out->v[j];
            out->v[j] = x;
        }
        break;
    }
    return KVF_OK;
}

/* Split s by matcher + behavior (+ invert) and push the pieces to out. */
static kvf_status split_into(hf_ctx *c, const hf_matcher *m, int behavior, bool invert,
                             const char *s, size_t len, bool first, plist *out) {
    KVF_TRY(find_spans(c, m, s, len, &c->sp));
    if (invert)
        for (size_t i = 0; i < c->sp.n; i++) c->sp.v[i].m = !c->sp.v[i].m;
    KVF_TRY(apply_behavior(behavior, &c->sp, &c->sp2));
    for (size_t i = 0; i < c->sp2.n; i++) {
        const span *p = &c->sp2.v[i];
        KVF_TRY(pl_push(out, s + p->s, p->e - p->s, first && p->s == 0));
    }
    return KVF_OK;
}

/* ============================================================================================
 * Normalizers
 * ========================================================================================== */

static kvf_status replace_all(hf_ctx *c, const hf_matcher *m, const char *with, size_t wlen,
                              const char *s, size_t n, kvf_bytes *out) {
    KVF_TRY(find_spans(c, m, s, n, &c->sp));
    for (size_t i = 0; i < c->sp.n; i++) {
        const span *p = &c->sp.v[i];
        if (p->m) KVF_TRY(kvf_bytes_append(out, with, wlen));
        else KVF_TRY(kvf_bytes_append(out, s + p->s, p->e - p->s));
    }
    if (!out->data) KVF_TRY(kvf_bytes_append(out, "", 0));
    return KVF_OK;
}

/* Normalize s[0..n); *res / *rlen point at the result (s itself, or one of c->nb). */
static kvf_status normalize(hf_ctx *c, const char *s, size_t n, const char **res, size_t *rlen) {
    const hf_impl *t = c->t;
    int cur = -1; /* which nb holds the current text, -1 = s */
    for (size_t k = 0; k < t->nnorms; k++) {
        const hf_norm *z = &t->norms[k];
        const char *in = cur < 0 ? s : c->nb[cur].data;
        size_t inlen = cur < 0 ? n : c->nb[cur].len;
        int nx = cur == 0 ? 1 : 0;
        kvf_bytes *o = &c->nb[nx];
        o->len = 0;
        KVF_TRY(kvf_bytes_append(o, "", 0));
        switch (z->kind) {
        case NZ_PREPEND:
            if (inlen) KVF_TRY(kvf_bytes_append(o, z->s, z->slen));
            KVF_TRY(kvf_bytes_append(o, in, inlen));
            break;
        case NZ_APPEND:
            KVF_TRY(kvf_bytes_append(o, in, inlen));
            if (inlen) KVF_TRY(kvf_bytes_append(o, z->s, z->slen));
            break;
        case NZ_REPLACE: KVF_TRY(replace_all(c, &z->m, z->s, z->slen, in, inlen, o)); break;
        case NZ_UNICODE: KVF_TRY(uni_normalize(z->form, in, inlen, o)); break;
        case NZ_LOWER: KVF_TRY(uni_lowercase(in, inlen, o)); break;
        case NZ_STRIP: {
            size_t a = 0, b = inlen, l;
            if (z->left)
                while (a < b && is_white_space(u8_get((const unsigned char *)in + a, &l))) a += l;
            if (z->right)
                while (b > a) {
                    size_t q = b - 1;
                    while (q > a && ((unsigned char)in[q] & 0xC0) == 0x80) q--;
                    if (!is_white_space(u8_get((const unsigned char *)in + q, &l))) break;
                    b = q;
                }
            KVF_TRY(kvf_bytes_append(o, in + a, b - a));
            break;
        }
        }
        cur = nx;
    }
    *res = cur < 0 ? s : c->nb[cur].data;
    *rlen = cur < 0 ? n : c->nb[cur].len;
    return KVF_OK;
}

/* ============================================================================================
 * Added tokens (added_vocabulary.rs find_matches)
 * ========================================================================================== */

typedef struct { size_t s, e; int32_t id; } aspan; /* id -1: text */
typedef struct { aspan *v; size_t n, cap; } aspanv;

static kvf_status aspan_push(aspanv *v, size_t s, size_t e, int32_t id) {
    if (v->n == v->cap) {
        size_t c = v->cap ? v->cap * 2 : 16;
        aspan *p = realloc(v->v, c * sizeof *p);
        KVF_CHECK(p, KVF_ERR_OOM, "tokenizer: out of memory");
        v->v = p;
        v->cap = c;
    }
    v->v[v->n++] = (aspan){s, e, id};
    return KVF_OK;
}

/* Leftmost, then longest, pattern occurrence at or after from. */
static bool trie_find(const hf_trie *tr, const char *s, size_t len, size_t from, size_t *ms,
                      size_t *me, int32_t *id) {
    for (size_t i = from; i < len; i++) {
        unsigned char b = (unsigned char)s[i];
        for (uint32_t k = tr->start[b]; k < tr->start[b + 1]; k++) {
            const trie_ent *e = &tr->e[k];
            if (e->len <= len - i && memcmp(s + i, e->pat, e->len) == 0) {
                *ms = i;
                *me = i + e->len;
                *id = e->id;
                return true;
            }
        }
    }
    return false;
}

static bool is_word_char(hf_ctx *c, const char *s, size_t n) {
    int rc = pcre2_match(c->t->re_word, (PCRE2_SPTR)s, n, 0, PCRE2_NO_UTF_CHECK | PCRE2_ANCHORED,
                         c->md, c->mctx);
    return rc >= 0;
}

static kvf_status added_split(hf_ctx *c, const hf_trie *tr, const char *s, size_t len, aspanv *out) {
    const hf_impl *t = c->t;
    out->n = 0;
    size_t start_offset = 0, pos = 0, ms, me;
    int32_t id;
    while (tr->n && pos < len && trie_find(tr, s, len, pos, &ms, &me, &id)) {
        pos = me;
        const hf_added *a = &t->added[t->added_r[id]];
        size_t start = ms, stop = me, l;
        if (a->single_word) {
            bool start_space = true, stop_space = true;
            if (start > 0) {
                size_t q = start - 1;
                while (q > 0 && ((unsigned char)s[q] & 0xC0) == 0x80) q--;
                start_space = !is_word_char(c, s + q, start - q);
            }
            if (stop < len) stop_space = !is_word_char(c, s + stop, u8_len((unsigned char)s[stop]));
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t q = ns - 1;
                while (q > 0 && ((unsigned char)s[q] & 0xC0) == 0x80) q--;
                if (!is_white_space(u8_get((const unsigned char *)s + q, &l))) break;
                ns = q;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip)
            while (stop < len && is_white_space(u8_get((const unsigned char *)s + stop, &l))) stop += l;
        if (start < start_offset) start = start_offset;
        if (stop < start) stop = start;
        if (start_offset < start) KVF_TRY(aspan_push(out, start_offset, start, -1));
        KVF_TRY(aspan_push(out, start, stop, id));
        start_offset = stop;
    }
    if (start_offset < len) KVF_TRY(aspan_push(out, start_offset, len, -1));
    return KVF_OK;
}

/* ============================================================================================
 * Pre-tokenizers
 * ========================================================================================== */

static kvf_status bytelevel_map(const hf_impl *t, const char *s, size_t n, bool first, plist *out) {
    if (!n) return KVF_OK;
    size_t start = out->text.len;
    KVF_TRY(kvf_bytes_reserve(&out->text, 2 * n));
    char *d = out->text.data + out->text.len;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        d[w++] = t->bl_enc[b][0];
        if (t->bl_enclen[b] == 2) d[w++] = t->bl_enc[b][1];
    }
    out->text.len += w;
    out->text.data[out->text.len] = '\0';
    if (out->n == out->cap) {
        size_t cp = out->cap ? out->cap * 2 : 64;
        piece *v = realloc(out->v, cp * sizeof *v);
        KVF_CHECK(v, KVF_ERR_OOM, "tokenizer: out of memory");
        out->v = v;
        out->cap = cp;
    }
    out->v[out->n++] = (piece){start, w, first};
    return KVF_OK;
}

static kvf_status pretok_apply(hf_ctx *c, const hf_pretok *p, const plist *in, plist *out) {
    const hf_impl *t = c->t;
    out->n = 0;
    out->text.len = 0;
    for (size_t i = 0; i < in->n; i++) {
        const char *s = in->text.data + in->v[i].off;
        size_t n = in->v[i].len;
        bool first = in->v[i].first;
        switch (p->kind) {
        case PT_BYTELEVEL: {
            if (p->add_prefix_space && s[0] != ' ') {
                c->tmp.len = 0;
                KVF_TRY(kvf_bytes_append(&c->tmp, " ", 1));
                KVF_TRY(kvf_bytes_append(&c->tmp, s, n));
                s = c->tmp.data;
                n = c->tmp.len;
            }
            if (p->use_regex) {
                hf_matcher m = {.kind = M_REGEX, .re = t->gpt2};
                KVF_TRY(find_spans(c, &m, s, n, &c->sp));
                for (size_t k = 0; k < c->sp.n; k++) {
                    const span *q = &c->sp.v[k];
                    KVF_TRY(bytelevel_map(t, s + q->s, q->e - q->s, first && q->s == 0, out));
                }
            } else {
                KVF_TRY(bytelevel_map(t, s, n, first, out));
            }
            break;
        }
        case PT_SPLIT: KVF_TRY(split_into(c, &p->m, p->behavior, p->invert, s, n, first, out)); break;
        case PT_METASPACE: {
            c->tmp.len = 0;
            KVF_TRY(kvf_bytes_append(&c->tmp, "", 0));
            bool starts = n >= p->replen && memcmp(s, p->rep, p->replen) == 0;
            if (s[0] == ' ' && p->replen) starts = true; /* the space becomes the replacement */
            if (!starts && (p->prepend == PS_ALWAYS || (p->prepend == PS_FIRST && first)))
                KVF_TRY(kvf_bytes_append(&c->tmp, p->rep, p->replen));
            for (size_t k = 0; k < n;) {
                size_t r = k;
                while (r < n && s[r] != ' ') r++;
                KVF_TRY(kvf_bytes_append(&c->tmp, s + k, r - k));
                if (r < n) { KVF_TRY(kvf_bytes_append(&c->tmp, p->rep, p->replen)); r++; }
                k = r;
            }
            if (p->split) {
                hf_matcher m = {.kind = M_LIT, .lit = (char *)p->rep, .litlen = p->replen};
                KVF_TRY(split_into(c, &m, B_MERGED_NEXT, false, c->tmp.data, c->tmp.len, first, out));
            } else {
                KVF_TRY(pl_push(out, c->tmp.data, c->tmp.len, first));
            }
            break;
        }
        }
    }
    return KVF_OK;
}

/* ============================================================================================
 * BPE model
 * ========================================================================================== */

static kvf_status sym_reserve(hf_ctx *c, size_t n) {
    if (n <= c->scap) return KVF_OK;
    size_t cap = c->scap ? c->scap : 64;
    while (cap < n) cap *= 2;
    int32_t *a = realloc(c->sc, cap * sizeof *a);
    if (a) c->sc = a;
    int32_t *b = realloc(c->sprev, cap * sizeof *b);
    if (b) c->sprev = b;
    int32_t *d = realloc(c->snext, cap * sizeof *d);
    if (d) c->snext = d;
    uint32_t *e = realloc(c->slen, cap * sizeof *e);
    if (e) c->slen = e;
    KVF_CHECK(a && b && d && e, KVF_ERR_OOM, "%s: out of memory", c->t->name);
    c->scap = cap;
    return KVF_OK;
}

static kvf_status heap_push(hf_ctx *c, uint32_t rank, int32_t pos, int32_t id) {
    if (c->hn == c->hcap) {
        size_t cap = c->hcap ? c->hcap * 2 : 64;
        heap_ent *h = realloc(c->heap, cap * sizeof *h);
        KVF_CHECK(h, KVF_ERR_OOM, "%s: out of memory", c->t->name);
        c->heap = h;
        c->hcap = cap;
    }
    heap_ent x = {rank, pos, id};
    size_t i = c->hn++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        heap_ent *q = &c->heap[p];
        if (q->rank < x.rank || (q->rank == x.rank && q->pos <= x.pos)) break;
        c->heap[i] = *q;
        i = p;
    }
    c->heap[i] = x;
    return KVF_OK;
}

static heap_ent heap_pop(hf_ctx *c) {
    heap_ent top = c->heap[0], x = c->heap[--c->hn];
    size_t i = 0, n = c->hn;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const heap_ent *best = &x;
        if (l < n && (c->heap[l].rank < best->rank ||
                      (c->heap[l].rank == best->rank && c->heap[l].pos < best->pos)))
            m = l, best = &c->heap[l];
        if (r < n && (c->heap[r].rank < best->rank ||
                      (c->heap[r].rank == best->rank && c->heap[r].pos < best->pos)))
            m = r, best = &c->heap[r];
        if (m == i) break;
        c->heap[i] = c->heap[m];
        i = m;
    }
    if (n) c->heap[i] = x;
    return top;
}

static kvf_status sym_add(hf_ctx *c, size_t *n, int32_t id, uint32_t len) {
    KVF_TRY(sym_reserve(c, *n + 1));
    size_t k = (*n)++;
    c->sc[k] = id;
    c->slen[k] = len;
    c->sprev[k] = (int32_t)k - 1;
    c->snext[k] = -1;
    if (k) c->snext[k - 1] = (int32_t)k;
    return KVF_OK;
}

static kvf_status need_unk(hf_ctx *c) {
    const hf_impl *t = c->t;
    KVF_CHECK(t->unk_id >= 0, KVF_ERR_FORMAT, "%s: model.unk_token \"%s\" is not in the vocab",
              t->name, t->unk_token);
    return KVF_OK;
}

/* models/bpe/model.rs merge_word + word.rs merge_all; appends the ids to out. */
static kvf_status bpe_word(hf_ctx *c, const char *w, size_t len, kvf_ids *out) {
    const hf_impl *t = c->t;
    size_t n = 0;
    bool unk = false;
    uint32_t unk_len = 0;
    for (size_t i = 0; i < len;) {
        size_t cl = u8_len((unsigned char)w[i]);
        bool is_first = i == 0, is_last = i + cl >= len;
        const char *key = w + i;
        size_t klen = cl;
        if ((!is_first && t->prefix) || (is_last && t->suffix)) {
            c->tmp.len = 0;
            if (!is_first && t->prefix) KVF_TRY(kvf_bytes_append(&c->tmp, t->prefix, t->prefix_len));
            KVF_TRY(kvf_bytes_append(&c->tmp, w + i, cl));
            if (is_last && t->suffix) KVF_TRY(kvf_bytes_append(&c->tmp, t->suffix, t->suffix_len));
            key = c->tmp.data;
            klen = c->tmp.len;
        }
        int32_t id = sm_get(&t->vocab, key, klen);
        if (id >= 0) {
            if (unk) { KVF_TRY(sym_add(c, &n, t->unk_id, unk_len)); unk = false; }
            KVF_TRY(sym_add(c, &n, id, (uint32_t)cl));
        } else {
            bool done = false;
            if (t->byte_fallback) {
                bool all = true;
                for (size_t k = 0; k < klen && all; k++) all = t->byte_id[(unsigned char)key[k]] >= 0;
                if (all) {
                    for (size_t k = 0; k < klen; k++)
                        KVF_TRY(sym_add(c, &n, t->byte_id[(unsigned char)key[k]], 1));
                    done = true;
                }
            }
            if (!done && t->unk_token) {
                if (unk && t->fuse_unk) {
                    unk_len += (uint32_t)cl;
                } else {
                    KVF_TRY(need_unk(c));
                    if (unk) KVF_TRY(sym_add(c, &n, t->unk_id, unk_len));
                    unk = true;
                    unk_len = (uint32_t)cl;
                }
            }
        }
        i += cl;
    }
    if (unk) KVF_TRY(sym_add(c, &n, t->unk_id, unk_len));

    c->hn = 0;
    for (size_t k = 0; k + 1 < n; k++) {
        const mm_ent *m = mm_get(&t->merges, c->sc[k], c->sc[k + 1]);
        if (m) KVF_TRY(heap_push(c, m->rank, (int32_t)k, m->id));
    }
    while (c->hn) {
        heap_ent top = heap_pop(c);
        int32_t pos = top.pos;
        if (c->slen[pos] == 0 || c->snext[pos] == -1) continue;
        int32_t nx = c->snext[pos];
        const mm_ent *m = mm_get(&t->merges, c->sc[pos], c->sc[nx]);
        if (!m || m->id != top.id) continue;
        c->sc[pos] = top.id;
        c->slen[pos] += c->slen[nx];
        c->snext[pos] = c->snext[nx];
        c->slen[nx] = 0;
        if (c->snext[pos] >= 0) c->sprev[c->snext[pos]] = pos;
        if (c->sprev[pos] >= 0) {
            int32_t pv = c->sprev[pos];
            const mm_ent *q = mm_get(&t->merges, c->sc[pv], c->sc[pos]);
            if (q) KVF_TRY(heap_push(c, q->rank, pv, q->id));
        }
        if (c->snext[pos] >= 0) {
            const mm_ent *q = mm_get(&t->merges, c->sc[pos], c->sc[c->snext[pos]]);
            if (q) KVF_TRY(heap_push(c, q->rank, pos, q->id));
        }
    }
    KVF_TRY(kvf_ids_reserve(out, (int64_t)n));
    for (size_t k = 0; k < n; k++)
        if (c->slen[k]) out->data[out->count++] = c->sc[k];
    return KVF_OK;
}

static kvf_status bpe_piece(hf_ctx *c, const char *s, size_t len, kvf_ids *out) {
    const hf_impl *t = c->t;
    if (!len) return KVF_OK;
    if (t->ignore_merges) {
        int32_t id = sm_get(&t->vocab, s, len);
        if (id >= 0) return kvf_ids_push(out, id);
    }
    bool cacheable = len < HF_CACHE_MAX_WORD;
    if (cacheable) {
        int64_t e = sm_find(&c->cache, s, len);
        if (e >= 0) {
            int32_t k = c->cache.e[e].val;
            if (!c->cache_rng[2 * k + 1]) return KVF_OK; /* no ids; data may be NULL */
            return kvf_ids_append(out, c->cache_ids.data + c->cache_rng[2 * k], c->cache_rng[2 * k + 1]);
        }
    }
    int64_t before = out->count;
    KVF_TRY(bpe_word(c, s, len, out));
    if (cacheable) {
        if (c->cache.n >= HF_CACHE_MAX_ENTRIES || c->cache_ids.count > (1 << 20)) {
            sm_clear(&c->cache);
            c->cache_ids.count = 0;
        }
        size_t k = c->cache.n;
        if (k + 1 > c->cache_cap) {
            size_t cap = c->cache_cap ? c->cache_cap * 2 : 1024;
            int64_t *r = realloc(c->cache_rng, 2 * cap * sizeof *r);
            KVF_CHECK(r, KVF_ERR_OOM, "%s: out of memory", t->name);
            c->cache_rng = r;
            c->cache_cap = cap;
        }
        c->cache_rng[2 * k] = c->cache_ids.count;
        c->cache_rng[2 * k + 1] = out->count - before;
        if (out->count > before) /* out->data may be NULL when the word gave no ids */
            KVF_TRY(kvf_ids_append(&c->cache_ids, out->data + before, out->count - before));
        KVF_TRY(sm_put(&c->cache, s, len, (int32_t)k, NULL));
    }
    return KVF_OK;
}

/* Pre-tokenize and tokenize one piece of normalized text. */
static kvf_status encode_piece(hf_ctx *c, const char *s, size_t n, bool first, kvf_ids *out) {
    const hf_impl *t = c->t;
    if (!n) return KVF_OK;
    if (!t->npts) return bpe_piece(c, s, n, out);
    plist *a = &c->pl[0], *b = &c->pl[1];
    a->n = 0;
    a->text.len = 0;
    KVF_TRY(pl_push(a, s, n, first));
    for (size_t k = 0; k < t->npts; k++) {
        KVF_TRY(pretok_apply(c, &t->pts[k], a, b));
        plist *x = a;
        a = b;
        b = x;
    }
    for (size_t i = 0; i < a->n; i++) KVF_TRY(bpe_piece(c, a->text.data + a->v[i].off, a->v[i].len, out));
    return KVF_OK;
}

static kvf_status hf_encode_ctx(hf_ctx *c, const char *text, size_t len, kvf_ids *out) {
    const hf_impl *t = c->t;
    aspanv raw = {0}, nsp = {0};
    kvf_status st = added_split(c, &t->raw, text, len, &raw);
    for (size_t i = 0; i < raw.n && st == KVF_OK; i++) {
        const aspan *r = &raw.v[i];
        if (r->id >= 0) { st = kvf_ids_push(out, r->id); continue; }
        if (r->e == r->s) continue;
        const char *ns;
        size_t nn;
        st = normalize(c, text + r->s, r->e - r->s, &ns, &nn);
        if (st != KVF_OK || !nn) continue;
        if (t->norm.n) {
            st = added_split(c, &t->norm, ns, nn, &nsp);
            for (size_t k = 0; k < nsp.n && st == KVF_OK; k++) {
                const aspan *q = &nsp.v[k];
                if (q->id >= 0) st = kvf_ids_push(out, q->id);
                else st = encode_piece(c, ns + q->s, q->e - q->s, r->s == 0 && q->s == 0, out);
            }
        } else {
            st = encode_piece(c, ns, nn, r->s == 0, out);
        }
    }
    free(raw.v);
    free(nsp.v);
    return st;
}

static kvf_status hf_encode(const kvf_tokenizer *tok, const char *text, size_t len, kvf_ids *out) {
    const hf_impl *t = tok->impl;
    size_t bad = u8_invalid_at((const unsigned char *)text, len);
    KVF_CHECK(bad == len, KVF_ERR_ARG,
              "tokenizer %s: the text is not valid UTF-8 (byte 0x%02X at offset %zu); Hugging "
              "Face tokenizers take Unicode text only", t->name, (unsigned char)text[bad], bad);
    hf_ctx *c = ctx_acquire(t);
    if (!c) return kvf_error_code();
    int64_t count0 = out->count;
    kvf_status st = hf_encode_ctx(c, text, len, out);
    if (st != KVF_OK) out->count = count0;
    ctx_release(t, c);
    return st;
}

/* ============================================================================================
 * Decoding
 * ========================================================================================== */

static kvf_status dec_apply(hf_ctx *c, const hf_dec *d, const tlist *in, tlist *out) {
    const hf_impl *t = c->t;
    out->n = 0;
    out->text.len = 0;
    KVF_TRY(kvf_bytes_append(&out->text, "", 0));
    switch (d->kind) {
    case DC_BYTELEVEL: {
        c->tmp.len = 0;
        for (size_t i = 0; i < in->n; i++) {
            const unsigned char *s = (const unsigned char *)in->text.data + in->v[i].off;
            size_t n = in->v[i].len, mark = c->tmp.len, l;
            bool ok = true;
            for (size_t k = 0; k < n && ok; k += l) {
                uint32_t cp = u8_get(s + k, &l);
                if (cp < 0x144 && t->bl_dec[cp] >= 0) {
                    char b = (char)t->bl_dec[cp];
                    KVF_TRY(kvf_bytes_append(&c->tmp, &b, 1));
                } else {
                    ok = false;
                }
            }
            if (!ok) {
                c->tmp.len = mark;
                KVF_TRY(kvf_bytes_append(&c->tmp, s, n));
            }
        }
        KVF_TRY(tl_begin(out));
        KVF_TRY(bytes_append_lossy(&out->text, (const unsigned char *)c->tmp.data, c->tmp.len));
        tl_end(out);
        break;
    }
    case DC_METASPACE:
        for (size_t i = 0; i < in->n; i++) {
            const unsigned char *s = (const unsigned char *)in->text.data + in->v[i].off;
            size_t n = in->v[i].len, l;
            KVF_TRY(tl_begin(out));
            for (size_t k = 0; k < n; k += l) {
                uint32_t cp = u8_get(s + k, &l);
                if (cp == d->rep) {
                    if (!(i == 0 && d->prepend != PS_NEVER)) KVF_TRY(kvf_bytes_append(&out->text, " ", 1));
                } else {
                    KVF_TRY(kvf_bytes_append(&out->text, s + k, l));
                }
            }
            tl_end(out);
        }
        break;
    case DC_REPLACE:
        for (size_t i = 0; i < in->n; i++) {
            KVF_TRY(tl_begin(out));
            /* in->text is not out->text, and replace_all only appends */
            KVF_TRY(replace_all(c, &d->m, d->s, d->slen, in->text.data + in->v[i].off, in->v[i].len,
                                &out->text));
            tl_end(out);
        }
        break;
    case DC_BYTEFALLBACK: {
        size_t pending = 0; /* byte tokens collected in c->tmp */
        c->tmp.len = 0;
        for (size_t i = 0; i <= in->n; i++) {
            const char *s = i < in->n ? in->text.data + in->v[i].off : NULL;
            size_t n = i < in->n ? in->v[i].len : 0;
            int byte = -1;
            if (s && n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>') {
                char hx[3] = {s[3], s[4], 0}, *end;
                long v = strtol(hx, &end, 16);
                bool hex = (isxdigit((unsigned char)s[3]) && isxdigit((unsigned char)s[4]));
                if (hex && *end == '\0') byte = (int)v;
            }
            if (byte >= 0) {
                char b = (char)byte;
                KVF_TRY(kvf_bytes_append(&c->tmp, &b, 1));
                pending++;
                continue;
            }
            if (pending) {
                if (u8_invalid_at((const unsigned char *)c->tmp.data, c->tmp.len) == c->tmp.len) {
                    KVF_TRY(tl_push(out, c->tmp.data, c->tmp.len));
                } else {
                    for (size_t k = 0; k < pending; k++) KVF_TRY(tl_push(out, "\xEF\xBF\xBD", 3));
                }
                pending = 0;
                c->tmp.len = 0;
            }
            if (s) KVF_TRY(tl_push(out, s, n));
        }
        break;
    }
    case DC_FUSE:
        KVF_TRY(tl_begin(out));
        for (size_t i = 0; i < in->n; i++)
            KVF_TRY(kvf_bytes_append(&out->text, in->text.data + in->v[i].off, in->v[i].len));
        tl_end(out);
        break;
    case DC_STRIP:
        for (size_t i = 0; i < in->n; i++) {
            const unsigned char *s = (const unsigned char *)in->text.data + in->v[i].off;
            size_t n = in->v[i].len, l, nch = 0;
            for (size_t k = 0; k < n; k += u8_len(s[k])) nch++;
            /* decoders/strip.rs: up to `start` leading and `stop` trailing `content` characters
             * go (the trailing ones only among those the leading cut left); a and z are the
             * byte offsets of what stays */
            size_t start_cut = 0, a = 0;
            while (start_cut < d->start && a < n && u8_get(s + a, &l) == d->rep) {
                start_cut++;
                a += l;
            }
            size_t lim = d->stop < nch - start_cut ? d->stop : nch - start_cut, z = n;
            for (size_t k = 0; k < lim; k++) {
                size_t q = z - 1;
                while (q > 0 && (s[q] & 0xC0) == 0x80) q--;
                if (u8_get(s + q, &l) != d->rep) break;
                z = q;
            }
            KVF_TRY(tl_push(out, (const char *)s + a, z > a ? z - a : 0));
        }
        break;
    case DC_BPE:
        for (size_t i = 0; i < in->n; i++) {
            const char *s = in->text.data + in->v[i].off;
            size_t n = in->v[i].len;
            const char *with = i + 1 == in->n ? "" : " ";
            hf_matcher m = {.kind = M_LIT, .lit = d->s, .litlen = d->slen};
            KVF_TRY(tl_begin(out));
            KVF_TRY(replace_all(c, &m, with, strlen(with), s, n, &out->text));
            tl_end(out);
        }
        break;
    }
    return KVF_OK;
}

static kvf_status hf_decode_impl(const kvf_tokenizer *tok, const int32_t *ids, int64_t n, bool skip,
                                 kvf_bytes *out) {
    const hf_impl *t = tok->impl;
    for (int64_t i = 0; i < n; i++)
        KVF_CHECK(ids[i] >= 0 && ids[i] < t->vocab_size, KVF_ERR_ARG,
                  "tokenizer %s: id %d at position %lld is outside the vocabulary [0, %d)", t->name,
                  (int)ids[i], (long long)i, (int)t->vocab_size);
    hf_ctx *cp = ctx_acquire(t);
    if (!cp) return kvf_error_code();
    hf_ctx *c = cp;
    tlist l[2];
    memset(l, 0, sizeof l);
    kvf_status st = KVF_OK;
    for (int64_t i = 0; i < n && st == KVF_OK; i++) {
        int32_t id = ids[i];
        if (skip && t->special[id]) continue;
        size_t len;
        const char *s = kvf_tokenizer_hf_id_to_token(tok, id, &len);
        if (s) st = tl_push(&l[0], s, len);
    }
    int cur = 0;
    for (size_t k = 0; k < t->ndecs && st == KVF_OK; k++) {
        st = dec_apply(c, &t->decs[k], &l[cur], &l[1 - cur]);
        cur = 1 - cur;
    }
    if (st == KVF_OK) st = kvf_bytes_reserve(out, l[cur].text.len + l[cur].n);
    for (size_t i = 0; i < l[cur].n && st == KVF_OK; i++) {
        if (i && !t->has_decoder) st = kvf_bytes_append(out, " ", 1);
        if (st == KVF_OK) st = kvf_bytes_append(out, l[cur].text.data + l[cur].v[i].off, l[cur].v[i].len);
    }
    if (st == KVF_OK && !out->data) st = kvf_bytes_append(out, "", 0);
    for (int k = 0; k < 2; k++) { kvf_bytes_free(&l[k].text); free(l[k].v); }
    ctx_release(t, c);
    return st;
}

static kvf_status hf_decode(const kvf_tokenizer *tok, const int32_t *ids, int64_t n, kvf_bytes *out) {
    return hf_decode_impl(tok, ids, n, true, out);
}

static void hf_destroy(kvf_tokenizer *tok) { impl_free(tok->impl); }

static const struct kvf_tokenizer_vtable hf_vtable = {
    .encode = hf_encode,
    .decode = hf_decode,
    .destroy = hf_destroy,
};

bool kvf_tokenizer_is_hf(const kvf_tokenizer *tok) { return tok && tok->vt == &hf_vtable; }

kvf_status kvf_tokenizer_hf_decode_ex(const kvf_tokenizer *tok, const int32_t *ids, int64_t n,
                                      bool skip_special_tokens, kvf_bytes *out) {
    KVF_CHECK(kvf_tokenizer_is_hf(tok), KVF_ERR_ARG, "tokenizer: not a tokenizer.json tokenizer");
    KVF_CHECK(out && n >= 0 && (ids || n == 0), KVF_ERR_ARG, "tokenizer %s: decode of a NULL id array",
              tok->name);
    return hf_decode_impl(tok, ids, n, skip_special_tokens, out);
}

int32_t kvf_tokenizer_hf_token_to_id(const kvf_tokenizer *tok, const char *token, size_t len) {
    if (!kvf_tokenizer_is_hf(tok) || !token) return -1;
    const hf_impl *t = tok->impl;
    int32_t id = sm_get(&t->added_map, token, len);
    return id >= 0 ? id : sm_get(&t->vocab, token, len);
}

const char *kvf_tokenizer_hf_id_to_token(const kvf_tokenizer *tok, int32_t id, size_t *len) {
    if (!kvf_tokenizer_is_hf(tok)) return NULL;
    const hf_impl *t = tok->impl;
    if (id < 0 || id >= t->vocab_size) return NULL;
    if (t->added_r[id] >= 0) {
        const hf_added *a = &t->added[t->added_r[id]];
        if (len) *len = a->len;
        return a->content;
    }
    if (t->vocab_r[id] >= 0) {
        if (len) *len = t->vocab.e[t->vocab_r[id]].len;
        return sm_key(&t->vocab, t->vocab_r[id]);
    }
    return NULL;
}

/* ============================================================================================
 * Loading tokenizer.json
 * ========================================================================================== */

#define GPT2_REGEX \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define MAX_NESTING 64

static const char *jkind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* A string field; absent or null gives *s = NULL unless required. */
static kvf_status j_str(const hf_impl *t, const json_t *obj, const char *key, const char *where,
                        bool required, const char **s, size_t *len) {
    json_t *v = json_object_get(obj, key);
    *s = NULL;
    if (len) *len = 0;
    if (!v || json_is_null(v)) {
        KVF_CHECK(!required, KVF_ERR_FORMAT, "%s: %s has no \"%s\"", t->name, where, key);
        return KVF_OK;
    }
    KVF_CHECK(json_is_string(v), KVF_ERR_FORMAT, "%s: %s.%s must be a string, not %s", t->name,
              where, key, jkind(v));
    *s = json_string_value(v);
    if (len) *len = json_string_length(v);
    return KVF_OK;
}

static kvf_status j_bool(const hf_impl *t, const json_t *obj, const char *key, const char *where,
                         bool dflt, bool *out) {
    json_t *v = json_object_get(obj, key);
    *out = dflt;
    if (!v || json_is_null(v)) return KVF_OK;
    KVF_CHECK(json_is_boolean(v), KVF_ERR_FORMAT, "%s: %s.%s must be true or false, not %s",
              t->name, where, key, jkind(v));
    *out = json_is_true(v);
    return KVF_OK;
}

static kvf_status j_size(const hf_impl *t, const json_t *obj, const char *key, const char *where,
                         size_t dflt, size_t *out) {
    json_t *v = json_object_get(obj, key);
    *out = dflt;
    if (!v || json_is_null(v)) return KVF_OK;
    KVF_CHECK(json_is_integer(v) && json_integer_value(v) >= 0, KVF_ERR_FORMAT,
              "%s: %s.%s must be a non-negative integer", t->name, where, key);
    *out = (size_t)json_integer_value(v);
    return KVF_OK;
}

/* A one-character string field (Metaspace replacement, Strip content, delimiters). */
static kvf_status j_char(const hf_impl *t, const json_t *obj, const char *key, const char *where,
                         uint32_t *cp, char *utf8, size_t *ulen) {
    const char *s;
    size_t n, l;
    KVF_TRY(j_str(t, obj, key, where, true, &s, &n));
    KVF_CHECK(n >= 1 && n <= 4 && u8_invalid_at((const unsigned char *)s, n) == n &&
                  u8_len((unsigned char)s[0]) == n,
              KVF_ERR_FORMAT, "%s: %s.%s must be exactly one character", t->name, where, key);
    *cp = u8_get((const unsigned char *)s, &l);
    if (utf8) memcpy(utf8, s, n);
    if (ulen) *ulen = n;
    return KVF_OK;
}

/* HF compiles its regexes with Oniguruma (Ruby syntax), whose Unicode \s, \w and \h differ from
 * PCRE2's: \s = [\t-\r\x{85}\p{Z}] (PCRE2 adds U+180E), \w = [\p{L}\p{M}\p{N}\p{Pc}] (PCRE2
 * 10.42 has no marks and only "_" of Pc), \h = a hex digit (PCRE2: horizontal space). Rewrite
 * them as explicit classes (\S, \W, \H too, except inside a class, where PCRE2's own stay). */
#define ONIG_SPACE "\\t-\\r\\x{85}\\p{Z}"
#define ONIG_WORD "\\p{L}\\p{M}\\p{N}\\p{Pc}"
#define ONIG_HEX "0-9a-fA-F"

static kvf_status onig_to_pcre2(const char *p, size_t n, kvf_bytes *out) {
    bool in_class = false;
    out->len = 0;
    KVF_TRY(kvf_bytes_append(out, "", 0));
    for (size_t i = 0; i < n;) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char d = p[i + 1];
            const char *body = d == 's' || d == 'S' ? ONIG_SPACE : d == 'w' || d == 'W' ? ONIG_WORD
                               : d == 'h' || d == 'H' ? ONIG_HEX : NULL;
            bool neg = d == 'S' || d == 'W' || d == 'H';
            if (body && !(in_class && neg)) {
                if (!in_class) KVF_TRY(kvf_bytes_append(out, neg ? "[^" : "[", neg ? 2 : 1));
                KVF_TRY(kvf_bytes_append(out, body, strlen(body)));
                if (!in_class) KVF_TRY(kvf_bytes_append(out, "]", 1));
            } else {
                KVF_TRY(kvf_bytes_append(out, p + i, 2));
            }
            i += 2;
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = true;
            KVF_TRY(kvf_bytes_append(out, p + i, 1));
            i++;
            if (i < n && p[i] == '^') KVF_TRY(kvf_bytes_append(out, p + i++, 1));
            if (i < n && p[i] == ']') KVF_TRY(kvf_bytes_append(out, p + i++, 1)); /* literal ] */
            continue;
        }
        if (c == '[' && in_class && i + 1 < n && p[i + 1] == ':') { /* [:alpha:] */
            const char *e = NULL;
            for (size_t k = i + 2; k + 1 < n && !e; k++)
                if (p[k] == ':' && p[k + 1] == ']') e = p + k + 2;
            size_t l = e ? (size_t)(e - (p + i)) : 1;
            KVF_TRY(kvf_bytes_append(out, p + i, l));
            i += l;
            continue;
        }
        if (c == ']' && in_class) in_class = false;
        KVF_TRY(kvf_bytes_append(out, p + i, 1));
        i++;
    }
    return KVF_OK;
}

static kvf_status compile_regex(const hf_impl *t, const char *pat, size_t len, const char *where,
                                pcre2_code **out) {
    int err;
    PCRE2_SIZE off;
    /* compiled as written first, so that a bad regex is reported at its own offsets */
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, len, PCRE2_UTF | PCRE2_UCP, &err, &off, NULL);
    if (re) {
        kvf_bytes rw = {0};
        kvf_status st = onig_to_pcre2(pat, len, &rw);
        if (st != KVF_OK) { pcre2_code_free(re); kvf_bytes_free(&rw); return st; }
        if (rw.len != len || memcmp(rw.data, pat, len) != 0) {
            pcre2_code_free(re);
            re = pcre2_compile((PCRE2_SPTR)rw.data, rw.len, PCRE2_UTF | PCRE2_UCP, &err, &off, NULL);
        }
        kvf_bytes_free(&rw);
    }
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return kvf_error_set(KVF_ERR_FORMAT, "%s: %s: bad regex \"%.*s\": %s at offset %zu", t->name,
                             where, (int)(len > 200 ? 200 : len), pat, (const char *)msg, (size_t)off);
    }
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* the interpreter runs it otherwise */
    *out = re;
    return KVF_OK;
}

static kvf_status regex_matcher(const hf_impl *t, const char *pat, const char *where, hf_matcher *m) {
    *m = (hf_matcher){.kind = M_REGEX};
    return compile_regex(t, pat, strlen(pat), where, &m->re);
}

/* {"String": s} or {"Regex": r}. *is_regex tells which. */
static kvf_status parse_pattern(const hf_impl *t, const json_t *obj, const char *where,
                                hf_matcher *m, bool *is_regex) {
    json_t *p = json_object_get(obj, "pattern");
    KVF_CHECK(p && json_is_object(p), KVF_ERR_FORMAT,
              "%s: %s.pattern must be {\"String\": ...} or {\"Regex\": ...}", t->name, where);
    json_t *s = json_object_get(p, "String"), *r = json_object_get(p, "Regex");
    *m = (hf_matcher){0};
    if (s && json_is_string(s)) {
        size_t n = json_string_length(s);
        KVF_CHECK(n > 0, KVF_ERR_UNSUPPORTED, "%s: %s: an empty String pattern is not supported",
                  t->name, where);
        m->kind = M_LIT;
        m->lit = malloc(n);
        KVF_CHECK(m->lit, KVF_ERR_OOM, "%s: out of memory", t->name);
        memcpy(m->lit, json_string_value(s), n);
        m->litlen = n;
        if (is_regex) *is_regex = false;
        return KVF_OK;
    }
    KVF_CHECK(r && json_is_string(r), KVF_ERR_FORMAT,
              "%s: %s.pattern must be {\"String\": ...} or {\"Regex\": ...}", t->name, where);
    m->kind = M_REGEX;
    if (is_regex) *is_regex = true;
    return compile_regex(t, json_string_value(r), json_string_length(r), where, &m->re);
}

static kvf_status parse_behavior(const hf_impl *t, const json_t *obj, const char *where,
                                 bool required, int dflt, int *out) {
    const char *b;
    KVF_TRY(j_str(t, obj, "behavior", where, required, &b, NULL));
    *out = dflt;
    if (!b) return KVF_OK;
    static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
                                  "Contiguous"};
    for (int i = 0; i < 5; i++)
        if (strcmp(b, names[i]) == 0) { *out = i; return KVF_OK; }
    return kvf_error_set(KVF_ERR_FORMAT,
                         "%s: %s.behavior \"%s\" is not one of Removed, Isolated, "
                         "MergedWithPrevious, MergedWithNext, Contiguous", t->name, where, b);
}

/* prepend_scheme (always / first / never) with the legacy add_prefix_space. */
static kvf_status parse_prepend(const hf_impl *t, const json_t *obj, const char *where, int *out) {
    const char *ps;
    KVF_TRY(j_str(t, obj, "prepend_scheme", where, false, &ps, NULL));
    *out = PS_ALWAYS;
    if (ps) {
        if (strcmp(ps, "always") == 0) *out = PS_ALWAYS;
        else if (strcmp(ps, "first") == 0) *out = PS_FIRST;
        else if (strcmp(ps, "never") == 0) *out = PS_NEVER;
        else
            return kvf_error_set(KVF_ERR_FORMAT,
                                 "%s: %s.prepend_scheme \"%s\" is not always, first or never",
                                 t->name, where, ps);
    }
    json_t *aps = json_object_get(obj, "add_prefix_space");
    if (aps && json_is_false(aps)) {
        KVF_CHECK(!ps || *out == PS_NEVER, KVF_ERR_FORMAT,
                  "%s: %s: add_prefix_space false does not match prepend_scheme \"%s\"", t->name,
                  where, ps);
        *out = PS_NEVER;
    }
    return KVF_OK;
}

static kvf_status grow(void **arr, size_t *n, size_t elsize, const hf_impl *t) {
    void *p = realloc(*arr, (*n + 1) * elsize);
    KVF_CHECK(p, KVF_ERR_OOM, "%s: out of memory", t->name);
    *arr = p;
    memset((char *)p + *n * elsize, 0, elsize);
    (*n)++;
    return KVF_OK;
}

static const char *type_of(const hf_impl *t, const json_t *v, const char *where, kvf_status *st) {
    *st = KVF_OK;
    if (!json_is_object(v)) {
        *st = kvf_error_set(KVF_ERR_FORMAT, "%s: %s must be an object or null, not %s", t->name,
                            where, jkind(v));
        return NULL;
    }
    const char *ty;
    *st = j_str(t, v, "type", where, true, &ty, NULL);
    return ty;
}

static kvf_status parse_normalizer(hf_impl *t, const json_t *v, const char *where, int depth) {
    if (!v || json_is_null(v)) return KVF_OK;
    KVF_CHECK(depth < MAX_NESTING, KVF_ERR_FORMAT, "%s: %s: Sequences nested too deeply", t->name, where);
    kvf_status st;
    const char *ty = type_of(t, v, where, &st);
    KVF_TRY(st);
    if (strcmp(ty, "Sequence") == 0) {
        json_t *a = json_object_get(v, "normalizers");
        KVF_CHECK(a && json_is_array(a), KVF_ERR_FORMAT, "%s: %s.normalizers must be an array",
                  t->name, where);
        for (size_t i = 0; i < json_array_size(a); i++) {
            char w[256];
            snprintf(w, sizeof w, "%s.normalizers[%zu]", where, i);
            KVF_CHECK(!json_is_null(json_array_get(a, i)), KVF_ERR_FORMAT, "%s: %s is null", t->name, w);
            KVF_TRY(parse_normalizer(t, json_array_get(a, i), w, depth + 1));
        }
        return KVF_OK;
    }
    hf_norm z = {0};
    const char *s;
    size_t n;
    if (strcmp(ty, "Prepend") == 0 || strcmp(ty, "Append") == 0) {
        bool pre = ty[0] == 'P';
        KVF_TRY(j_str(t, v, pre ? "prepend" : "append", where, true, &s, &n));
        z.kind = pre ? NZ_PREPEND : NZ_APPEND;
        z.s = malloc(n + 1);
        KVF_CHECK(z.s, KVF_ERR_OOM, "%s: out of memory", t->name);
        memcpy(z.s, s, n);
        z.slen = n;
    } else if (strcmp(ty, "Replace") == 0) {
        bool is_re;
        KVF_TRY(j_str(t, v, "content", where, true, &s, &n));
        z.kind = NZ_REPLACE;
        KVF_TRY(parse_pattern(t, v, where, &z.m, &is_re));
        if (is_re && memchr(s, '$', n)) {
            matcher_free(&z.m);
            return kvf_error_set(KVF_ERR_UNSUPPORTED,
                                 "%s: %s: not supported: Replace content with $ group references",
                                 t->name, where);
        }
        z.s = malloc(n + 1);
        if (!z.s) { matcher_free(&z.m); return kvf_error_set(KVF_ERR_OOM, "%s: out of memory", t->name); }
        memcpy(z.s, s, n);
        z.slen = n;
    } else if (strcmp(ty, "NFC") == 0) { z.kind = NZ_UNICODE; z.form = UF_NFC; }
    else if (strcmp(ty, "NFD") == 0) { z.kind = NZ_UNICODE; z.form = UF_NFD; }
    else if (strcmp(ty, "NFKC") == 0) { z.kind = NZ_UNICODE; z.form = UF_NFKC; }
    else if (strcmp(ty, "NFKD") == 0) { z.kind = NZ_UNICODE; z.form = UF_NFKD; }
    else if (strcmp(ty, "Lowercase") == 0) z.kind = NZ_LOWER;
    else if (strcmp(ty, "Strip") == 0) {
        z.kind = NZ_STRIP;
        KVF_TRY(j_bool(t, v, "strip_left", where, false, &z.left));
        KVF_TRY(j_bool(t, v, "strip_right", where, false, &z.right));
    } else if (strcmp(ty, "BertNormalizer") == 0 || strcmp(ty, "StripAccents") == 0 ||
               strcmp(ty, "Nmt") == 0 || strcmp(ty, "Precompiled") == 0 ||
               strcmp(ty, "ByteLevel") == 0) {
        return kvf_error_set(KVF_ERR_UNSUPPORTED, "%s: %s: not supported: normalizer %s", t->name,
                             where, ty);
    } else {
        return kvf_error_set(KVF_ERR_FORMAT, "%s: %s: unknown normalizer type \"%s\"", t->name,
                             where, ty);
    }
    kvf_status g = grow((void **)&t->norms, &t->nnorms, sizeof *t->norms, t);
    if (g != KVF_OK) { free(z.s); matcher_free(&z.m); return g; }
    t->norms[t->nnorms - 1] = z;
    return KVF_OK;
}

static kvf_status add_pretok(hf_impl *t, hf_pretok p) {
    kvf_status g = grow((void **)&t->pts, &t->npts, sizeof *t->pts, t);
    if (g != KVF_OK) { matcher_free(&p.m); return g; }
    t->pts[t->npts - 1] = p;
    return KVF_OK;
}

static kvf_status add_split(hf_impl *t, const char *re, int behavior, bool invert, const char *where) {
    hf_pretok p = {.kind = PT_SPLIT, .behavior = behavior, .invert = invert};
    KVF_TRY(regex_matcher(t, re, where, &p.m));
    return add_pretok(t, p);
}

#define PUNCT_CLASS "[\\p{P}!-/:-@\\[-`{-~]"

static kvf_status parse_pretok(hf_impl *t, const json_t *v, const char *where, int depth) {
    if (!v || json_is_null(v)) return KVF_OK;
    KVF_CHECK(depth < MAX_NESTING, KVF_ERR_FORMAT, "%s: %s: Sequences nested too deeply", t->name, where);
    kvf_status st;
    const char *ty = type_of(t, v, where, &st);
    KVF_TRY(st);
    t->has_pretok = true;
    if (strcmp(ty, "Sequence") == 0) {
        json_t *a = json_object_get(v, "pretokenizers");
        KVF_CHECK(a && json_is_array(a), KVF_ERR_FORMAT, "%s: %s.pretokenizers must be an array",
                  t->name, where);
        for (size_t i = 0; i < json_array_size(a); i++) {
            char w[256];
            snprintf(w, sizeof w, "%s.pretokenizers[%zu]", where, i);
            KVF_CHECK(!json_is_null(json_array_get(a, i)), KVF_ERR_FORMAT, "%s: %s is null", t->name, w);
            KVF_TRY(parse_pretok(t, json_array_get(a, i), w, depth + 1));
        }
        return KVF_OK;
    }
    if (strcmp(ty, "ByteLevel") == 0) {
        hf_pretok p = {.kind = PT_BYTELEVEL};
        KVF_TRY(j_bool(t, v, "add_prefix_space", where, true, &p.add_prefix_space));
        KVF_TRY(j_bool(t, v, "use_regex", where, true, &p.use_regex));
        if (p.use_regex && !t->gpt2) KVF_TRY(compile_regex(t, GPT2_REGEX, strlen(GPT2_REGEX), where, &t->gpt2));
        return add_pretok(t, p);
    }
    if (strcmp(ty, "Split") == 0) {
        hf_pretok p = {.kind = PT_SPLIT};
        KVF_TRY(parse_behavior(t, v, where, true, B_ISOLATED, &p.behavior));
        KVF_TRY(j_bool(t, v, "invert", where, false, &p.invert));
        KVF_TRY(parse_pattern(t, v, where, &p.m, NULL));
        return add_pretok(t, p);
    }
    if (strcmp(ty, "Metaspace") == 0) {
        hf_pretok p = {.kind = PT_METASPACE};
        uint32_t cp;
        KVF_TRY(j_char(t, v, "replacement", where, &cp, p.rep, &p.replen));
        KVF_TRY(parse_prepend(t, v, where, &p.prepend));
        KVF_TRY(j_bool(t, v, "split", where, true, &p.split));
        return add_pretok(t, p);
    }
    if (strcmp(ty, "Digits") == 0) {
        bool ind;
        KVF_TRY(j_bool(t, v, "individual_digits", where, false, &ind));
        return add_split(t, "\\p{N}", ind ? B_ISOLATED : B_CONTIGUOUS, false, where);
    }
    if (strcmp(ty, "Whitespace") == 0)
        return add_split(t, "[" WORD_CLASS "]+|[^" WORD_CLASS WS_CLASS "]+", B_REMOVED, true, where);
    if (strcmp(ty, "WhitespaceSplit") == 0) return add_split(t, "[" WS_CLASS "]", B_REMOVED, false, where);
    if (strcmp(ty, "Punctuation") == 0) {
        int b;
        KVF_TRY(parse_behavior(t, v, where, false, B_ISOLATED, &b));
        return add_split(t, PUNCT_CLASS, b, false, where);
    }
    if (strcmp(ty, "BertPreTokenizer") == 0) {
        KVF_TRY(add_split(t, "[" WS_CLASS "]", B_REMOVED, false, where));
        return add_split(t, PUNCT_CLASS, B_ISOLATED, false, where);
    }
    if (strcmp(ty, "CharDelimiterSplit") == 0) {
        hf_pretok p = {.kind = PT_SPLIT, .behavior = B_REMOVED};
        char d[4];
        size_t dl;
        uint32_t cp;
        KVF_TRY(j_char(t, v, "delimiter", where, &cp, d, &dl));
        p.m.kind = M_LIT;
        p.m.lit = malloc(dl);
        KVF_CHECK(p.m.lit, KVF_ERR_OOM, "%s: out of memory", t->name);
        memcpy(p.m.lit, d, dl);
        p.m.litlen = dl;
        return add_pretok(t, p);
    }
    if (strcmp(ty, "UnicodeScripts") == 0 || strcmp(ty, "FixedLength") == 0)
        return kvf_error_set(KVF_ERR_UNSUPPORTED, "%s: %s: not supported: pre_tokenizer %s", t->name,
                             where, ty);
    return kvf_error_set(KVF_ERR_FORMAT, "%s: %s: unknown pre_tokenizer type \"%s\"", t->name, where, ty);
}

static kvf_status add_dec(hf_impl *t, hf_dec d) {
    kvf_status g = grow((void **)&t->decs, &t->ndecs, sizeof *t->decs, t);
    if (g != KVF_OK) { free(d.s); matcher_free(&d.m); return g; }
    t->decs[t->ndecs - 1] = d;
    return KVF_OK;
}

static kvf_status parse_decoder(hf_impl *t, const json_t *v, const char *where, int depth) {
    if (!v || json_is_null(v)) return KVF_OK;
    KVF_CHECK(depth < MAX_NESTING, KVF_ERR_FORMAT, "%s: %s: Sequences nested too deeply", t->name, where);
    kvf_status st;
    const char *ty = type_of(t, v, where, &st);
    KVF_TRY(st);
    t->has_decoder = true;
    hf_dec d = {0};
    const char *s;
    size_t n;
    if (strcmp(ty, "Sequence") == 0) {
        json_t *a = json_object_get(v, "decoders");
        KVF_CHECK(a && json_is_array(a), KVF_ERR_FORMAT, "%s: %s.decoders must be an array", t->name, where);
        for (size_t i = 0; i < json_array_size(a); i++) {
            char w[256];
            snprintf(w, sizeof w, "%s.decoders[%zu]", where, i);
            KVF_CHECK(!json_is_null(json_array_get(a, i)), KVF_ERR_FORMAT, "%s: %s is null", t->name, w);
            KVF_TRY(parse_decoder(t, json_array_get(a, i), w, depth + 1));
        }
        return KVF_OK;
    }
    if (strcmp(ty, "ByteLevel") == 0) d.kind = DC_BYTELEVEL;
    else if (strcmp(ty, "ByteFallback") == 0) d.kind = DC_BYTEFALLBACK;
    else if (strcmp(ty, "Fuse") == 0) d.kind = DC_FUSE;
    else if (strcmp(ty, "Metaspace") == 0) {
        d.kind = DC_METASPACE;
        KVF_TRY(j_char(t, v, "replacement", where, &d.rep, NULL, NULL));
        KVF_TRY(parse_prepend(t, v, where, &d.prepend));
    } else if (strcmp(ty, "Strip") == 0) {
        d.kind = DC_STRIP;
        KVF_TRY(j_char(t, v, "content", where, &d.rep, NULL, NULL));
        KVF_TRY(j_size(t, v, "start", where, 0, &d.start));
        KVF_TRY(j_size(t, v, "stop", where, 0, &d.stop));
    } else if (strcmp(ty, "Replace") == 0 || strcmp(ty, "BPEDecoder") == 0) {
        bool rep = ty[0] == 'R', is_re = false;
        KVF_TRY(j_str(t, v, rep ? "content" : "suffix", where, rep, &s, &n));
        if (!rep && !s) s = "</w>", n = 4;
        KVF_CHECK(rep || n > 0, KVF_ERR_UNSUPPORTED, "%s: %s: an empty BPEDecoder suffix is not supported",
                  t->name, where);
        d.kind = rep ? DC_REPLACE : DC_BPE;
        if (rep) {
            KVF_TRY(parse_pattern(t, v, where, &d.m, &is_re));
            if (is_re && memchr(s, '$', n)) {
                matcher_free(&d.m);
                return kvf_error_set(KVF_ERR_UNSUPPORTED,
                                     "%s: %s: not supported: Replace content with $ group references",
                                     t->name, where);
            }
        }
        d.s = malloc(n + 1);
        if (!d.s) { matcher_free(&d.m); return kvf_error_set(KVF_ERR_OOM, "%s: out of memory", t->name); }
        memcpy(d.s, s, n);
        d.s[n] = '\0';
        d.slen = n;
    } else if (strcmp(ty, "WordPiece") == 0 || strcmp(ty, "CTC") == 0) {
        return kvf_error_set(KVF_ERR_UNSUPPORTED, "%s: %s: not supported: decoder %s", t->name, where, ty);
    } else {
        return kvf_error_set(KVF_ERR_FORMAT, "%s: %s: unknown decoder type \"%s\"", t->name, where, ty);
    }
    return add_dec(t, d);
}

static void fmt_tok(char *buf, size_t cap, const char *s, size_t n) {
    snprintf(buf, cap, "\"%.*s\"%s", (int)(n > 60 ? 60 : n), s, n > 60 ? "..." : "");
}

static kvf_status parse_model(hf_impl *t, const json_t *root) {
    json_t *m = json_object_get(root, "model");
    KVF_CHECK(m && !json_is_null(m), KVF_ERR_FORMAT, "%s: no \"model\"", t->name);
    KVF_CHECK(json_is_object(m), KVF_ERR_FORMAT, "%s: model must be an object, not %s", t->name, jkind(m));
    const char *ty;
    KVF_TRY(j_str(t, m, "type", "model", false, &ty, NULL));
    json_t *vocab = json_object_get(m, "vocab"), *merges = json_object_get(m, "merges");
    if (!ty) {
        KVF_CHECK(vocab && merges, KVF_ERR_FORMAT, "%s: model has no \"type\"", t->name);
    } else if (strcmp(ty, "WordPiece") == 0 || strcmp(ty, "Unigram") == 0 || strcmp(ty, "WordLevel") == 0) {
        return kvf_error_set(KVF_ERR_UNSUPPORTED, "%s: not supported: model type %s (only BPE)", t->name, ty);
    } else if (strcmp(ty, "BPE") != 0) {
        return kvf_error_set(KVF_ERR_FORMAT, "%s: unknown model type \"%s\"", t->name, ty);
    }
    json_t *dropout = json_object_get(m, "dropout");
    if (dropout && !json_is_null(dropout)) {
        KVF_CHECK(json_is_number(dropout), KVF_ERR_FORMAT, "%s: model.dropout must be a number or null",
                  t->name);
        double p = json_number_value(dropout);
        KVF_CHECK(p >= 0 && p <= 1, KVF_ERR_FORMAT, "%s: model.dropout %g is not in [0, 1]", t->name, p);
        KVF_CHECK(p == 0, KVF_ERR_UNSUPPORTED,
                  "%s: not supported: model.dropout %g (BPE dropout is random)", t->name, p);
    }
    const char *s;
    size_t n;
    KVF_TRY(j_str(t, m, "unk_token", "model", false, &s, &n));
    if (s) {
        t->unk_token = malloc(n + 1);
        KVF_CHECK(t->unk_token, KVF_ERR_OOM, "%s: out of memory", t->name);
        memcpy(t->unk_token, s, n);
        t->unk_token[n] = '\0';
        t->unk_len = n;
    }
    KVF_TRY(j_str(t, m, "continuing_subword_prefix", "model", false, &s, &n));
    if (s && n) {
        t->prefix = strndup(s, n);
        t->prefix_len = n;
        KVF_CHECK(t->prefix && strlen(t->prefix) == n, KVF_ERR_UNSUPPORTED,
                  "%s: model.continuing_subword_prefix: unsupported value", t->name);
    }
    KVF_TRY(j_str(t, m, "end_of_word_suffix", "model", false, &s, &n));
    if (s && n) {
        t->suffix = strndup(s, n);
        t->suffix_len = n;
        KVF_CHECK(t->suffix && strlen(t->suffix) == n, KVF_ERR_UNSUPPORTED,
                  "%s: model.end_of_word_suffix: unsupported value", t->name);
    }
    KVF_TRY(j_bool(t, m, "fuse_unk", "model", false, &t->fuse_unk));
    KVF_TRY(j_bool(t, m, "byte_fallback", "model", false, &t->byte_fallback));
    KVF_TRY(j_bool(t, m, "ignore_merges", "model", false, &t->ignore_merges));

    KVF_CHECK(vocab && json_is_object(vocab), KVF_ERR_FORMAT, "%s: model.vocab must be an object%s",
              t->name, vocab ? "" : " (it is missing)");
    KVF_CHECK(merges && json_is_array(merges), KVF_ERR_FORMAT, "%s: model.merges must be an array%s",
              t->name, merges ? "" : " (it is missing)");
    const char *key;
    size_t klen;
    json_t *val;
    int32_t maxid = -1;
    json_object_keylen_foreach(vocab, key, klen, val) {
        char tk[80];
        fmt_tok(tk, sizeof tk, key, klen);
        KVF_CHECK(json_is_integer(val), KVF_ERR_FORMAT, "%s: model.vocab[%s] must be an integer id, not %s",
                  t->name, tk, jkind(val));
        json_int_t id = json_integer_value(val);
        KVF_CHECK(id >= 0, KVF_ERR_FORMAT, "%s: model.vocab[%s] = %lld is negative", t->name, tk,
                  (long long)id);
        KVF_CHECK(id < HF_MAX_ID, KVF_ERR_UNSUPPORTED, "%s: model.vocab[%s] = %lld: ids from %d on are "
                  "not supported", t->name, tk, (long long)id, HF_MAX_ID);
        KVF_TRY(sm_put(&t->vocab, key, klen, (int32_t)id, NULL));
        if (id > maxid) maxid = (int32_t)id;
    }
    t->vocab_size = maxid + 1;
    for (int b = 0; b < 256; b++) {
        char code[8];
        snprintf(code, sizeof code, "<0x%02X>", b);
        t->byte_id[b] = sm_get(&t->vocab, code, 6);
    }
    t->unk_id = t->unk_token ? sm_get(&t->vocab, t->unk_token, t->unk_len) : -1;

    size_t nm = json_array_size(merges);
    KVF_TRY(mm_init(&t->merges, nm));
    char *buf = NULL;
    size_t bcap = 0;
    kvf_status st = KVF_OK;
    for (size_t i = 0; i < nm && st == KVF_OK; i++) {
        json_t *e = json_array_get(merges, i);
        const char *a, *b;
        size_t al, bl;
        if (json_is_string(e)) {
            const char *ms = json_string_value(e);
            size_t ml = json_string_length(e);
            const char *sp = memchr(ms, ' ', ml);
            if (!sp || memchr(sp + 1, ' ', ml - (size_t)(sp + 1 - ms))) {
                char tk[80];
                fmt_tok(tk, sizeof tk, ms, ml);
                st = kvf_error_set(KVF_ERR_FORMAT, "%s: model.merges[%zu] = %s is not two tokens "
                                   "separated by one space", t->name, i, tk);
                break;
            }
            a = ms, al = (size_t)(sp - ms), b = sp + 1, bl = ml - al - 1;
        } else if (json_is_array(e) && json_array_size(e) == 2 && json_is_string(json_array_get(e, 0)) &&
                   json_is_string(json_array_get(e, 1))) {
            a = json_string_value(json_array_get(e, 0)), al = json_string_length(json_array_get(e, 0));
            b = json_string_value(json_array_get(e, 1)), bl = json_string_length(json_array_get(e, 1));
        } else {
            st = kvf_error_set(KVF_ERR_FORMAT, "%s: model.merges[%zu] must be a string \"a b\" or a "
                               "pair [\"a\", \"b\"], not %s", t->name, i, jkind(e));
            break;
        }
        int32_t ia = sm_get(&t->vocab, a, al), ib = sm_get(&t->vocab, b, bl);
        if (ia < 0 || ib < 0) {
            char ta[80], tb[80];
            fmt_tok(ta, sizeof ta, a, al);
            fmt_tok(tb, sizeof tb, b, bl);
            st = kvf_error_set(KVF_ERR_FORMAT, "%s: model.merges[%zu] (%s, %s): %s is not in the vocab",
                               t->name, i, ta, tb, ia < 0 ? ta : tb);
            break;
        }
        if (bl < t->prefix_len) {
            char tb[80];
            fmt_tok(tb, sizeof tb, b, bl);
            st = kvf_error_set(KVF_ERR_FORMAT, "%s: model.merges[%zu]: %s is shorter than the "
                               "continuing_subword_prefix", t->name, i, tb);
            break;
        }
        size_t nl = al + bl - t->prefix_len;
        if (nl + 1 > bcap) {
            bcap = 2 * nl + 64;
            char *nb = realloc(buf, bcap);
            if (!nb) { st = kvf_error_set(KVF_ERR_OOM, "%s: out of memory", t->name); break; }
            buf = nb;
        }
        memcpy(buf, a, al);
        memcpy(buf + al, b + t->prefix_len, bl - t->prefix_len);
        int32_t in = sm_get(&t->vocab, buf, nl);
        if (in < 0) {
            char ta[80], tb[80], tn[80];
            fmt_tok(ta, sizeof ta, a, al);
            fmt_tok(tb, sizeof tb, b, bl);
            fmt_tok(tn, sizeof tn, buf, nl);
            st = kvf_error_set(KVF_ERR_FORMAT, "%s: model.merges[%zu] (%s, %s): the merged token %s "
                               "is not in the vocab", t->name, i, ta, tb, tn);
            break;
        }
        mm_put(&t->merges, ia, ib, (uint32_t)i, in);
    }
    free(buf);
    return st;
}

typedef struct { const char *pat; size_t len; int32_t id; uint32_t ord; } tsort;

static int tsort_cmp(const void *x, const void *y) {
    const tsort *a = x, *b = y;
    unsigned char fa = (unsigned char)a->pat[0], fb = (unsigned char)b->pat[0];
    if (fa != fb) return fa < fb ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->ord < b->ord ? -1 : a->ord > b->ord;
}

static kvf_status trie_build(const hf_impl *t, hf_trie *tr, tsort *v, size_t n) {
    qsort(v, n, sizeof *v, tsort_cmp);
    tr->e = calloc(n ? n : 1, sizeof *tr->e);
    KVF_CHECK(tr->e, KVF_ERR_OOM, "%s: out of memory", t->name);
    tr->n = n;
    memset(tr->start, 0, sizeof tr->start);
    for (size_t i = 0; i < n; i++) {
        tr->e[i] = (trie_ent){v[i].pat, v[i].len, v[i].id};
        tr->start[(unsigned char)v[i].pat[0] + 1]++;
    }
    for (int b = 0; b < 256; b++) tr->start[b + 1] += tr->start[b];
    return KVF_OK;
}

static kvf_status parse_added_with(hf_impl *t, const json_t *root, strmap *latest);

static kvf_status parse_added(hf_impl *t, const json_t *root) {
    strmap latest = {0}; /* content → index in t->added of its latest token */
    kvf_status st = parse_added_with(t, root, &latest);
    sm_free(&latest);
    return st;
}

static kvf_status parse_added_with(hf_impl *t, const json_t *root, strmap *latest) {
    json_t *a = json_object_get(root, "added_tokens");
    size_t na = 0;
    if (a && !json_is_null(a)) {
        KVF_CHECK(json_is_array(a), KVF_ERR_FORMAT, "%s: added_tokens must be an array, not %s",
                  t->name, jkind(a));
        na = json_array_size(a);
    }
    int32_t model_n = (int32_t)t->vocab.n, max_added = -1;
    t->added = calloc(na ? na : 1, sizeof *t->added);
    KVF_CHECK(t->added, KVF_ERR_OOM, "%s: out of memory", t->name);
    for (size_t i = 0; i < na; i++) {
        json_t *e = json_array_get(a, i);
        char w[64];
        snprintf(w, sizeof w, "added_tokens[%zu]", i);
        KVF_CHECK(json_is_object(e), KVF_ERR_FORMAT, "%s: %s must be an object", t->name, w);
        json_t *jid = json_object_get(e, "id");
        KVF_CHECK(jid && json_is_integer(jid) && json_integer_value(jid) >= 0, KVF_ERR_FORMAT,
                  "%s: %s.id must be a non-negative integer", t->name, w);
        hf_added x = {0};
        const char *s;
        size_t n;
        KVF_TRY(j_str(t, e, "content", w, true, &s, &n));
        KVF_TRY(j_bool(t, e, "special", w, false, &x.special));
        KVF_TRY(j_bool(t, e, "single_word", w, false, &x.single_word));
        KVF_TRY(j_bool(t, e, "lstrip", w, false, &x.lstrip));
        KVF_TRY(j_bool(t, e, "rstrip", w, false, &x.rstrip));
        KVF_TRY(j_bool(t, e, "normalized", w, !x.special, &x.normalized));
        if (n == 0) continue; /* HF ignores empty added tokens */
        if (x.special) KVF_TRY(sm_put(&t->special_set, s, n, 1, NULL));
        /* an identical token (all fields) that is already added is ignored */
        int32_t prev = sm_get(latest, s, n);
        if (prev >= 0) {
            const hf_added *o = &t->added[prev];
            if (o->special == x.special && o->single_word == x.single_word && o->lstrip == x.lstrip &&
                o->rstrip == x.rstrip && o->normalized == x.normalized)
                continue;
        }
        /* id as HF assigns it: an existing token keeps its id, a new one takes the next free */
        int32_t id = sm_get(&t->added_map, s, n);
        if (id < 0) id = sm_get(&t->vocab, s, n);
        if (id < 0) id = max_added < 0 ? model_n : (max_added >= model_n || model_n == 0 ? max_added + 1 : model_n);
        KVF_CHECK(id < HF_MAX_ID, KVF_ERR_UNSUPPORTED, "%s: %s: ids from %d on are not supported",
                  t->name, w, HF_MAX_ID);
        /* a file id that differs from this one is overridden (HF only logs a warning) */
        x.content = malloc(n + 1);
        KVF_CHECK(x.content, KVF_ERR_OOM, "%s: out of memory", t->name);
        memcpy(x.content, s, n);
        x.content[n] = '\0';
        x.len = n;
        x.id = id;
        t->added[t->nadded++] = x;
        KVF_TRY(sm_put(&t->added_map, s, n, id, NULL));
        KVF_TRY(sm_put(latest, s, n, (int32_t)t->nadded - 1, NULL));
        if (id > max_added) max_added = id; /* an existing content keeps its id: a running max */
        if (id + 1 > t->vocab_size) t->vocab_size = id + 1;
    }
    return KVF_OK;
}

/* The two pattern sets (raw / normalized) in HF's order: special tokens, then the others. */
static kvf_status build_tries(hf_impl *t) {
    size_t n = t->nadded;
    tsort *raw = calloc(n ? n : 1, sizeof *raw), *nrm = calloc(n ? n : 1, sizeof *nrm);
    size_t nr = 0, nn = 0;
    kvf_status st = raw && nrm ? KVF_OK : kvf_error_set(KVF_ERR_OOM, "%s: out of memory", t->name);
    strmap seen_special = {0};
    kvf_bytes owned = {0};
    hf_ctx c = {0};
    bool ctx_ok = false;
    size_t *offs = calloc(n ? n : 1, sizeof *offs);
    if (st == KVF_OK && !offs) st = kvf_error_set(KVF_ERR_OOM, "%s: out of memory", t->name);
    if (st == KVF_OK) { st = ctx_init(&c, t); ctx_ok = true; }
    for (int pass = 0; pass < 2 && st == KVF_OK; pass++) {
        for (size_t i = 0; i < n && st == KVF_OK; i++) {
            const hf_added *a = &t->added[i];
            bool special_list;
            if (a->special) {
                /* the special list holds each content once, in order of first appearance */
                special_list = sm_find(&seen_special, a->content, a->len) < 0;
                if (special_list) st = sm_put(&seen_special, a->content, a->len, 1, NULL);
            } else {
                special_list = false;
            }
            bool in_added_list = sm_find(&t->special_set, a->content, a->len) < 0;
            if ((pass == 0 && !special_list) || (pass == 1 && !in_added_list)) continue;
            if (st != KVF_OK) break;
            int32_t id = sm_get(&t->added_map, a->content, a->len);
            if (!a->normalized) {
                raw[nr] = (tsort){a->content, a->len, id, (uint32_t)nr};
                nr++;
            } else {
                const char *ns;
                size_t nl;
                st = normalize(&c, a->content, a->len, &ns, &nl);
                if (st != KVF_OK || nl == 0) continue;
                offs[nn] = owned.len;
                st = kvf_bytes_append(&owned, ns, nl);
                nrm[nn] = (tsort){NULL, nl, id, (uint32_t)nn};
                nn++;
            }
        }
        if (pass == 0) sm_clear(&seen_special);
    }
    if (st == KVF_OK) {
        for (size_t i = 0; i < nn; i++) nrm[i].pat = owned.data + offs[i];
        st = trie_build(t, &t->raw, raw, nr);
        if (st == KVF_OK) st = trie_build(t, &t->norm, nrm, nn);
        t->norm.owned = owned.data;
        owned = (kvf_bytes){0};
    }
    if (ctx_ok) ctx_free(&c);
    sm_free(&seen_special);
    kvf_bytes_free(&owned);
    free(raw);
    free(nrm);
    free(offs);
    return st;
}

/* Finds the id of a bos/eos token value: "text" or {"content": "text"}. */
static int32_t token_value_id(const hf_impl *t, const json_t *v) {
    if (v && json_is_object(v)) v = json_object_get(v, "content");
    if (!v || !json_is_string(v)) return -1;
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    int32_t id = sm_get(&t->added_map, s, n);
    return id >= 0 ? id : sm_get(&t->vocab, s, n);
}

static void template_ends(const hf_impl *t, const json_t *pp, int32_t *bos, int32_t *eos, int depth) {
    if (!pp || !json_is_object(pp) || depth > 8) return;
    const json_t *ty = json_object_get(pp, "type");
    if (!ty || !json_is_string(ty)) return;
    if (strcmp(json_string_value(ty), "Sequence") == 0) {
        const json_t *a = json_object_get(pp, "processors");
        for (size_t i = 0; a && json_is_array(a) && i < json_array_size(a); i++)
            template_ends(t, json_array_get(a, i), bos, eos, depth + 1);
        return;
    }
    if (strcmp(json_string_value(ty), "TemplateProcessing") != 0) return;
    const json_t *single = json_object_get(pp, "single"), *sp = json_object_get(pp, "special_tokens");
    if (!single || !json_is_array(single) || !json_array_size(single)) return;
    for (int end = 0; end < 2; end++) {
        const json_t *item = json_array_get(single, end ? json_array_size(single) - 1 : 0);
        const json_t *st = item && json_is_object(item) ? json_object_get(item, "SpecialToken") : NULL;
        const json_t *name = st && json_is_object(st) ? json_object_get(st, "id") : NULL;
        if (!name || !json_is_string(name)) continue;
        int32_t id = -1;
        const json_t *ent = sp && json_is_object(sp) ? json_object_get(sp, json_string_value(name)) : NULL;
        const json_t *ids = ent && json_is_object(ent) ? json_object_get(ent, "ids") : NULL;
        if (ids && json_is_array(ids) && json_array_size(ids) == 1 && json_is_integer(json_array_get(ids, 0)))
            id = (int32_t)json_integer_value(json_array_get(ids, 0));
        if (id < 0 || id >= t->vocab_size) id = token_value_id(t, name);
        int32_t *dst = end ? eos : bos;
        if (*dst < 0 && id >= 0 && id < t->vocab_size) *dst = id;
    }
}

static kvf_status find_bos_eos(const hf_impl *t, const json_t *root, const char *config_path,
                               int32_t *bos, int32_t *eos) {
    *bos = *eos = -1;
    if (config_path) {
        FILE *f = fopen(config_path, "rb");
        if (f) {
            fclose(f);
            json_error_t je;
            json_t *cfg = json_load_file(config_path, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &je);
            KVF_CHECK(cfg, KVF_ERR_FORMAT, "%s: broken JSON at line %d, column %d: %s", config_path,
                      je.line, je.column, je.text);
            if (json_is_object(cfg)) {
                *bos = token_value_id(t, json_object_get(cfg, "bos_token"));
                *eos = token_value_id(t, json_object_get(cfg, "eos_token"));
            }
            json_decref(cfg);
        }
    }
    template_ends(t, json_object_get(root, "post_processor"), bos, eos, 0);
    static const char *bos_names[] = {"<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>"};
    static const char *eos_names[] = {"<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>"};
    for (size_t i = 0; i < 4 && *bos < 0; i++)
        if (sm_find(&t->special_set, bos_names[i], strlen(bos_names[i])) >= 0)
            *bos = sm_get(&t->added_map, bos_names[i], strlen(bos_names[i]));
    for (size_t i = 0; i < 5 && *eos < 0; i++)
        if (sm_find(&t->special_set, eos_names[i], strlen(eos_names[i])) >= 0)
            *eos = sm_get(&t->added_map, eos_names[i], strlen(eos_names[i]));
    return KVF_OK;
}

static void bytelevel_tables(hf_impl *t) {
    for (int i = 0; i < 0x144; i++) t->bl_dec[i] = -1;
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        uint32_t cp = keep ? (uint32_t)b : 256u + (uint32_t)extra++;
        t->bl_enclen[b] = (uint8_t)u8_put(cp, t->bl_enc[b]);
        t->bl_dec[cp] = (int16_t)b;
    }
}

static kvf_tokenizer *load_common(const char *name, const char *json, size_t len,
                                  const char *config_path) {
    hf_impl *t = calloc(1, sizeof *t);
    KVF_CHECK_NULL(t, KVF_ERR_OOM, "%s: out of memory", name);
    t->name = strdup(name);
    if (!t->name) { free(t); KVF_CHECK_NULL(0, KVF_ERR_OOM, "%s: out of memory", name); }
    pthread_mutex_init(&t->pool_mu, NULL);
    bytelevel_tables(t);
    kvf_status st = KVF_OK;
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_ALLOW_NUL, &je);
    if (!root) {
        st = kvf_error_set(KVF_ERR_FORMAT, "%s: broken JSON at line %d, column %d: %s", name, je.line,
                           je.column, je.text);
        goto fail;
    }
    if (!json_is_object(root)) {
        st = kvf_error_set(KVF_ERR_FORMAT, "%s: the top level must be a JSON object, not %s", name,
                           jkind(root));
        goto fail;
    }
    json_t *ver = json_object_get(root, "version");
    if (ver && !(json_is_string(ver) && strcmp(json_string_value(ver), "1.0") == 0)) {
        st = kvf_error_set(KVF_ERR_UNSUPPORTED, "%s: unknown tokenizer.json version %s%s%s (only \"1.0\")",
                           name, json_is_string(ver) ? "\"" : "",
                           json_is_string(ver) ? json_string_value(ver) : jkind(ver),
                           json_is_string(ver) ? "\"" : "");
        goto fail;
    }
    if ((st = parse_model(t, root)) != KVF_OK) goto fail;
    if ((st = parse_added(t, root)) != KVF_OK) goto fail;
    if ((st = parse_normalizer(t, json_object_get(root, "normalizer"), "normalizer", 0)) != KVF_OK) goto fail;
    if ((st = parse_pretok(t, json_object_get(root, "pre_tokenizer"), "pre_tokenizer", 0)) != KVF_OK) goto fail;
    if ((st = parse_decoder(t, json_object_get(root, "decoder"), "decoder", 0)) != KVF_OK) goto fail;
    {
        size_t vs = t->vocab_size > 0 ? (size_t)t->vocab_size : 1;
        t->vocab_r = malloc(vs * sizeof *t->vocab_r);
        t->added_r = malloc(vs * sizeof *t->added_r);
        t->special = calloc(vs, 1);
        if (!t->vocab_r || !t->added_r || !t->special) {
            st = kvf_error_set(KVF_ERR_OOM, "%s: out of memory", name);
            goto fail;
        }
        for (size_t i = 0; i < vs; i++) t->vocab_r[i] = t->added_r[i] = -1;
        for (size_t i = 0; i < t->vocab.n; i++) t->vocab_r[t->vocab.e[i].val] = (int32_t)i;
        for (size_t i = 0; i < t->nadded; i++) t->added_r[t->added[i].id] = (int32_t)i;
    }
    for (size_t i = 0; i < t->nadded; i++)
        if (t->added[i].single_word && !t->re_word) {
            const char *w = "[" WORD_CLASS "]";
            if ((st = compile_regex(t, w, strlen(w), "added_tokens", &t->re_word)) != KVF_OK) goto fail;
        }
    if ((st = build_tries(t)) != KVF_OK) goto fail;
    for (int32_t id = 0; id < t->vocab_size; id++) {
        size_t l;
        const char *s = NULL;
        if (t->added_r[id] >= 0) s = t->added[t->added_r[id]].content, l = t->added[t->added_r[id]].len;
        else if (t->vocab_r[id] >= 0) s = sm_key(&t->vocab, t->vocab_r[id]), l = t->vocab.e[t->vocab_r[id]].len;
        if (s && t->special_set.n && sm_find(&t->special_set, s, l) >= 0) t->special[id] = 1;
    }
    int32_t bos, eos;
    if ((st = find_bos_eos(t, root, config_path, &bos, &eos)) != KVF_OK) goto fail;
    json_decref(root);
    root = NULL;
    kvf_tokenizer *tok = malloc(sizeof *tok);
    if (!tok) {
        st = kvf_error_set(KVF_ERR_OOM, "%s: out of memory", name);
        goto fail;
    }
    *tok = (kvf_tokenizer){
        .vt = &hf_vtable,
        .name = t->name,
        .vocab_size = t->vocab_size,
        .bos_id = bos,
        .eos_id = eos,
        .impl = t,
    };
    return tok;
fail:
    (void)st;
    if (root) json_decref(root);
    impl_free(t);
    return NULL;
}

kvf_tokenizer *kvf_tokenizer_hf_load_buffer(const char *name, const char *json, size_t len) {
    if (!name) name = "tokenizer.json";
    KVF_CHECK_NULL(json || len == 0, KVF_ERR_ARG, "%s: no JSON text", name);
    return load_common(name, json ? json : "", len, NULL);
}

kvf_tokenizer *kvf_tokenizer_hf_load(const char *path) {
    KVF_CHECK_NULL(path, KVF_ERR_ARG, "tokenizer: no path given");
    FILE *f = fopen(path, "rb");
    KVF_CHECK_NULL(f, KVF_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 65536 > cap) {
            cap = cap ? cap * 2 : 1 << 20;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                KVF_CHECK_NULL(0, KVF_ERR_OOM, "%s: out of memory reading the file", path);
            }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    int err = ferror(f) ? errno : 0;
    fclose(f);
    if (err) {
        free(buf);
        KVF_CHECK_NULL(0, KVF_ERR_IO, "%s: cannot read: %s", path, strerror(err));
    }
    /* tokenizer_config.json beside the file, for bos/eos */
    size_t pl = strlen(path);
    char *cfg = malloc(pl + 32);
    kvf_tokenizer *tok = NULL;
    if (cfg) {
        const char *slash = strrchr(path, '/');
        size_t dl = slash ? (size_t)(slash - path + 1) : 0;
        memcpy(cfg, path, dl);
        strcpy(cfg + dl, "tokenizer_config.json");
        tok = load_common(path, buf, len, cfg);
    } else {
        kvf_error_set(KVF_ERR_OOM, "%s: out of memory", path);
    }
    free(cfg);
    free(buf);
    return tok;
}
