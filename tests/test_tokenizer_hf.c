/* Hugging Face tokenizer.json tests (data/tokenizer_hf.h).
 *
 * fixture:     both fixture tokenizers ($KVF_SHARED/fixtures/tok-*) reproduce every probe of
 *              their expected.json (ids and decoded text, made by HF tokenizers 0.23.2), and
 *              the KJV val text matches HF's ids from tests/data/tok_refs when those files exist
 *              (tools/make_tokenizer_refs.py makes them where `tokenizers` is installed).
 *              The fixture models' reference_logits.safetensors input_ids are not tokenized
 *              text (shared/tools/make_fixtures.py draws them with torch.randint), so there is
 *              nothing to encode for them; only their decoding is checked.
 * handcrafted: small tokenizer.json files whose ids are worked out by hand in the comments:
 *              merge order, ignore_merges, byte fallback and unk, added tokens, Metaspace
 *              prepend schemes, normalizers (incl. Unicode forms), split behaviors, the
 *              Llama-3 split regex, the GPT-2 byte map, decoders, bos/eos rules.
 * malformed:   every broken file is an error naming the file; mutated files never crash. */
#define _GNU_SOURCE /* nftw */
#include <check.h>
#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "data/tokenizer_hf.h"

static char tmpdir[512];

static void setup(void) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/kvf_tok_XXXXXX", base && *base ? base : "/tmp");
    ck_assert_msg(mkdtemp(tmpdir) != NULL, "mkdtemp: %s", strerror(errno));
    kvf_error_clear();
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    return remove(p);
}

static void teardown(void) { nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static const char *tpath(const char *name) {
    static char buf[4][1024];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static void write_text(const char *path, const char *s) {
    FILE *fp = fopen(path, "wb");
    ck_assert_msg(fp, "fopen %s: %s", path, strerror(errno));
    ck_assert(fwrite(s, 1, strlen(s), fp) == strlen(s));
    ck_assert(fclose(fp) == 0);
}

static char *read_all(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    rewind(fp);
    char *buf = malloc((size_t)n + 1);
    ck_assert(buf);
    ck_assert(fread(buf, 1, (size_t)n, fp) == (size_t)n);
    buf[n] = '\0';
    fclose(fp);
    *len = (size_t)n;
    return buf;
}

/* $KVF_SHARED/rel, or NULL when the file is not there. */
static const char *shared_file(const char *rel) {
    static char buf[4][1024];
    static int k;
    const char *sh = getenv("KVF_SHARED");
    if (!sh || !*sh) return NULL;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", sh, rel);
    return access(buf[k], R_OK) == 0 ? buf[k] : NULL;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- building small tokenizer.json files ------------------------------------------------ */

static char jbuf[1 << 16];

static const char *tokjson(const char *model, const char *norm, const char *pre, const char *dec,
                           const char *added) {
    snprintf(jbuf, sizeof jbuf,
             "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null, \"added_tokens\": %s,"
             " \"normalizer\": %s, \"pre_tokenizer\": %s, \"post_processor\": null, \"decoder\": %s,"
             " \"model\": %s}",
             added ? added : "[]", norm ? norm : "null", pre ? pre : "null", dec ? dec : "null", model);
    return jbuf;
}

static kvf_tokenizer *mk(const char *model, const char *norm, const char *pre, const char *dec,
                         const char *added) {
    const char *j = tokjson(model, norm, pre, dec, added);
    kvf_tokenizer *tok = kvf_tokenizer_hf_load_buffer("hand.json", j, strlen(j));
    ck_assert_msg(tok, "load failed: %s\n%s", kvf_error_message(), j);
    return tok;
}

static void expect_ids_(const kvf_tokenizer *tok, const char *text, size_t len, const int32_t *want,
                        size_t n, int line) {
    kvf_ids ids = {0};
    kvf_status st = kvf_tokenizer_encode(tok, text, len, &ids);
    ck_assert_msg(st == KVF_OK, "line %d: encode failed: %s", line, kvf_error_message());
    char got[512] = "", *p = got;
    for (int64_t i = 0; i < ids.count && p < got + sizeof got - 16; i++) p += sprintf(p, " %d", ids.data[i]);
    bool same = ids.count == (int64_t)n;
    for (size_t i = 0; same && i < n; i++) same = ids.data[i] == want[i];
    ck_assert_msg(same, "line %d: \"%s\" gave [%s ] (%lld ids, want %zu)", line, text, got,
                  (long long)ids.count, n);
    kvf_ids_free(&ids);
}
#define EXPECT_IDS(tok, text, ...)                                                                 \
    do {                                                                                           \
        const int32_t want_[] = {__VA_ARGS__};                                                     \
        expect_ids_((tok), (text), strlen(text), want_, sizeof want_ / sizeof want_[0], __LINE__); \
    } while (0)

static void expect_decode_(const kvf_tokenizer *tok, const int32_t *ids, size_t n, bool skip,
                           const char *want, int line) {
    kvf_bytes out = {0};
    kvf_status st = kvf_tokenizer_hf_decode_ex(tok, ids, (int64_t)n, skip, &out);
    ck_assert_msg(st == KVF_OK, "line %d: decode failed: %s", line, kvf_error_message());
    ck_assert_msg(out.len == strlen(want) && memcmp(out.data, want, out.len) == 0,
                  "line %d: decoded \"%.*s\", want \"%s\"", line, (int)out.len, out.data, want);
    if (skip) { /* the vtable's decode is skip_special_tokens=True */
        kvf_bytes o2 = {0};
        ck_assert(kvf_tokenizer_decode(tok, ids, (int64_t)n, &o2) == KVF_OK);
        ck_assert(o2.len == out.len && memcmp(o2.data, out.data, out.len) == 0);
        kvf_bytes_free(&o2);
    }
    kvf_bytes_free(&out);
}
#define EXPECT_DECODE(tok, skip, want, ...)                                                        \
    do {                                                                                           \
        const int32_t ids_[] = {__VA_ARGS__};                                                      \
        expect_decode_((tok), ids_, sizeof ids_ / sizeof ids_[0], (skip), (want), __LINE__);        \
    } while (0)

/* The GPT-2 byte → character map, computed here independently of the library. */
static void gpt2_map(uint32_t cps[256]) {
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        cps[b] = keep ? (uint32_t)b : 256u + (uint32_t)extra++;
    }
}

/* A vocab JSON object holding the 256 byte characters (id = byte) plus extra "a b" tokens made of
 * bytes (each given as text), ids 256, 257, ... ; merges as given. */
static char *bytelevel_model(const char *const *extra, size_t nextra, const char *const *merges,
                             size_t nmerges) {
    uint32_t cps[256];
    gpt2_map(cps);
    json_t *vocab = json_object();
    char key[64];
    for (int b = 0; b < 256; b++) {
        char u[5] = {0};
        uint32_t c = cps[b];
        if (c < 0x80) u[0] = (char)c;
        else { u[0] = (char)(0xC0 | (c >> 6)); u[1] = (char)(0x80 | (c & 0x3F)); }
        json_object_set_new(vocab, u, json_integer(b));
    }
    for (size_t i = 0; i < nextra; i++) { /* extra tokens: ASCII text mapped through the table */
        size_t k = 0;
        for (const char *p = extra[i]; *p; p++) {
            uint32_t c = cps[(unsigned char)*p];
            if (c < 0x80) key[k++] = (char)c;
            else { key[k++] = (char)(0xC0 | (c >> 6)); key[k++] = (char)(0x80 | (c & 0x3F)); }
        }
        key[k] = '\0';
        json_object_set_new(vocab, key, json_integer(256 + (json_int_t)i));
    }
    json_t *mg = json_array();
    for (size_t i = 0; i < nmerges; i++) json_array_append_new(mg, json_string(merges[i]));
    json_t *m = json_pack("{s:s, s:o, s:o}", "type", "BPE", "vocab", vocab, "merges", mg);
    char *s = json_dumps(m, JSON_COMPACT);
    json_decref(m);
    return s;
}

/* ============================================================================================
 * Fixtures
 * ========================================================================================== */

static const char *fixture_names[] = {"tok-bytelevel-512", "tok-sentencepiece-512"};

START_TEST(fixture_probes) {
    const char *name = fixture_names[_i];
    char rel[256];
    snprintf(rel, sizeof rel, "fixtures/%s/tokenizer.json", name);
    const char *tpath_ = shared_file(rel);
    snprintf(rel, sizeof rel, "fixtures/%s/expected.json", name);
    const char *epath = shared_file(rel);
    if (!tpath_ || !epath) {
        fprintf(stderr, "fixture %s: skipped, not found (set KVF_SHARED)\n", name);
        return;
    }
    kvf_tokenizer *tok = kvf_tokenizer_hf_load(tpath_);
    ck_assert_msg(tok, "%s", kvf_error_message());
    ck_assert(kvf_tokenizer_is_hf(tok));
    ck_assert_int_eq(tok->vocab_size, 512);
    if (_i == 0) { /* <|endoftext|> is eos; no bos-named token */
        ck_assert_int_eq(tok->eos_id, 0);
        ck_assert_int_eq(tok->bos_id, -1);
    } else { /* <s>, </s> */
        ck_assert_int_eq(tok->bos_id, 1);
        ck_assert_int_eq(tok->eos_id, 2);
    }
    json_error_t je;
    json_t *cases = json_load_file(epath, 0, &je);
    ck_assert_msg(cases && json_is_array(cases), "%s: %s", epath, je.text);
    size_t ok_ids = 0, ok_dec = 0, n = json_array_size(cases);
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(cases, i);
        json_t *text = json_object_get(c, "text"), *ids = json_object_get(c, "ids"),
               *dec = json_object_get(c, "decoded");
        kvf_ids got = {0};
        ck_assert_msg(kvf_tokenizer_encode(tok, json_string_value(text), json_string_length(text), &got) ==
                          KVF_OK, "%s", kvf_error_message());
        bool same = got.count == (int64_t)json_array_size(ids);
        for (size_t k = 0; same && k < json_array_size(ids); k++)
            same = got.data[k] == json_integer_value(json_array_get(ids, k));
        if (same) ok_ids++;
        else {
            fprintf(stderr, "%s probe %zu ids differ; got", name, i);
            for (int64_t k = 0; k < got.count; k++) fprintf(stderr, " %d", got.data[k]);
            fprintf(stderr, "\n");
        }
        kvf_bytes out = {0};
        ck_assert(kvf_tokenizer_decode(tok, got.data, got.count, &out) == KVF_OK);
        if (out.len == json_string_length(dec) && memcmp(out.data, json_string_value(dec), out.len) == 0)
            ok_dec++;
        else
            fprintf(stderr, "%s probe %zu decoded \"%.*s\", want \"%s\"\n", name, i, (int)out.len,
                    out.data, json_string_value(dec));
        kvf_bytes_free(&out);
        kvf_ids_free(&got);
    }
    fprintf(stderr, "fixture %s: %zu/%zu probes give HF's ids, %zu/%zu HF's decoded text\n", name,
            ok_ids, n, ok_dec, n);
    ck_assert_uint_eq(ok_ids, n);
    ck_assert_uint_eq(ok_dec, n);
    json_decref(cases);
    kvf_tokenizer_free(tok);
}
END_TEST

/* The fixture models: tokenizer_config.json beside tokenizer.json names <|endoftext|> as both
 * bos and eos; their reference input_ids (random ids) all decode. */
START_TEST(fixture_model_dir) {
    const char *p = shared_file("fixtures/tiny-llama-gqa/tokenizer.json");
    if (!p) {
        fprintf(stderr, "fixture_model_dir: skipped (set KVF_SHARED)\n");
        return;
    }
    kvf_tokenizer *tok = kvf_tokenizer_hf_load(p);
    ck_assert_msg(tok, "%s", kvf_error_message());
    ck_assert_int_eq(tok->bos_id, 0);
    ck_assert_int_eq(tok->eos_id, 0);
    int32_t ids[512];
    for (int i = 0; i < 512; i++) ids[i] = i;
    kvf_bytes out = {0};
    ck_assert(kvf_tokenizer_hf_decode_ex(tok, ids, 512, false, &out) == KVF_OK);
    ck_assert(out.len > 512);
    kvf_bytes_free(&out);
    kvf_tokenizer_free(tok);
}
END_TEST

/* The val text: characters (code points) from floor(0.95 * count) on. */
static const char *val_text(const char *text, size_t len, size_t *vlen, size_t *nchars) {
    size_t n = 0;
    for (size_t i = 0; i < len; i++) n += ((unsigned char)text[i] & 0xC0) != 0x80;
    size_t k = (size_t)((double)n * 0.95), c = 0, i = 0;
    for (; i < len; i++) {
        if (((unsigned char)text[i] & 0xC0) != 0x80) {
            if (c == k) break;
            c++;
        }
    }
    *vlen = len - i;
    *nchars = n;
    return text + i;
}

START_TEST(kjv_val_parity_and_speed) {
    const char *kjv = shared_file("data/kjv.txt");
    if (!kjv) {
        fprintf(stderr, "kjv: skipped, data/kjv.txt not found (set KVF_SHARED)\n");
        return;
    }
    size_t len, vlen, nchars;
    char *text = read_all(kjv, &len);
    const char *val = val_text(text, len, &vlen, &nchars);
    fprintf(stderr, "kjv.txt: %zu bytes, %zu characters (%s); val text %zu bytes\n", len, nchars,
            nchars == len ? "pure ASCII" : "not ASCII: split on characters", vlen);
    for (int f = 0; f < 2; f++) {
        char rel[256];
        snprintf(rel, sizeof rel, "fixtures/%s/tokenizer.json", fixture_names[f]);
        const char *tp = shared_file(rel);
        if (!tp) continue;
        kvf_tokenizer *tok = kvf_tokenizer_hf_load(tp);
        ck_assert_msg(tok, "%s", kvf_error_message());

        kvf_ids all = {0};
        double t0 = now_s();
        ck_assert(kvf_tokenizer_encode(tok, text, len, &all) == KVF_OK);
        double t1 = now_s();
        kvf_bytes back = {0};
        ck_assert(kvf_tokenizer_decode(tok, all.data, all.count, &back) == KVF_OK);
        double t2 = now_s();
        fprintf(stderr, "%s: all of kjv.txt (%.1f MB) -> %lld ids: encode %.2f s (%.1f MB/s), "
                "decode %.2f s\n", fixture_names[f], len / 1e6, (long long)all.count, t1 - t0,
                len / 1e6 / (t1 - t0), t2 - t1);
        ck_assert_msg(t1 - t0 < 30.0, "encoding kjv.txt took %.1f s", t1 - t0);
        /* KJV is ASCII with characters every fixture vocab covers: decoding gives it back */
        ck_assert(back.len == len && memcmp(back.data, text, len) == 0);
        kvf_bytes_free(&back);

        kvf_ids v = {0};
        ck_assert(kvf_tokenizer_encode(tok, val, vlen, &v) == KVF_OK);
        const char *src = getenv("KVF_SOURCE_DIR");
        char bin[1024], meta[1024];
        snprintf(bin, sizeof bin, "%s/tests/data/tok_refs/%s.val_ids.bin", src ? src : ".", fixture_names[f]);
        snprintf(meta, sizeof meta, "%s/tests/data/tok_refs/%s.val_ids.json", src ? src : ".", fixture_names[f]);
        size_t blen;
        char *ref = read_all(bin, &blen);
        /* made by tools/make_tokenizer_refs.py with HF tokenizers on the GPU machine */
        ck_assert_msg(ref, "%s: missing (tools/make_tokenizer_refs.py makes it)", bin);
        {
            json_error_t je;
            json_t *m = json_load_file(meta, 0, &je);
            ck_assert_msg(m, "%s: %s", meta, je.text);
            ck_assert_int_eq(json_integer_value(json_object_get(m, "count")) * 4, (json_int_t)blen);
            json_decref(m);
            int64_t nref = (int64_t)(blen / 4), first_diff = -1;
            for (int64_t i = 0; i < nref && i < v.count && first_diff < 0; i++) {
                int32_t r;
                memcpy(&r, ref + 4 * i, 4); /* little-endian hosts only (x86-64, aarch64) */
                if (r != v.data[i]) first_diff = i;
            }
            if (first_diff < 0 && nref != v.count) first_diff = nref < v.count ? nref : v.count;
            ck_assert_msg(first_diff < 0, "%s: val ids differ from HF at index %lld (HF %lld ids, "
                          "kvforge %lld)", fixture_names[f], (long long)first_diff, (long long)nref,
                          (long long)v.count);
            fprintf(stderr, "%s: val text gives HF's %lld ids exactly\n", fixture_names[f], (long long)nref);
            free(ref);
        }
        kvf_ids_free(&v);
        kvf_ids_free(&all);
        kvf_tokenizer_free(tok);
    }
    free(text);
}
END_TEST

typedef struct { const kvf_tokenizer *tok; const char *text; size_t len; kvf_ids ids; int st; } thr_arg;

static void *thr_encode(void *p) {
    thr_arg *a = p;
    a->st = kvf_tokenizer_encode(a->tok, a->text, a->len, &a->ids);
    return NULL;
}

START_TEST(shared_between_threads) {
    const char *tp = shared_file("fixtures/tok-bytelevel-512/tokenizer.json");
    const char *kjv = shared_file("data/kjv.txt");
    if (!tp || !kjv) return;
    size_t len;
    char *text = read_all(kjv, &len);
    kvf_tokenizer *tok = kvf_tokenizer_hf_load(tp);
    ck_assert(tok);
    thr_arg a[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (thr_arg){tok, text + i * 100000, 300000, {0}, -1};
        ck_assert(pthread_create(&th[i], NULL, thr_encode, &a[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(a[i].st, KVF_OK);
        kvf_ids one = {0};
        ck_assert(kvf_tokenizer_encode(tok, a[i].text, a[i].len, &one) == KVF_OK);
        ck_assert(one.count == a[i].ids.count &&
                  memcmp(one.data, a[i].ids.data, (size_t)one.count * 4) == 0);
        kvf_ids_free(&one);
        kvf_ids_free(&a[i].ids);
    }
    kvf_tokenizer_free(tok);
    free(text);
}
END_TEST

/* ============================================================================================
 * Handcrafted tokenizers
 * ========================================================================================== */

START_TEST(bpe_merge_order) {
    /* ids: a0 b1 c2 ab3 bc4 abc5 aa6 */
    const char *vocab = "{\"a\":0,\"b\":1,\"c\":2,\"ab\":3,\"bc\":4,\"abc\":5,\"aa\":6}";
    char model[512];
    /* "b c" has rank 0: abc → a|bc, and (a, bc) has no merge → [a, bc] */
    snprintf(model, sizeof model, "{\"type\":\"BPE\",\"vocab\":%s,\"merges\":[\"b c\",\"a b\"]}", vocab);
    kvf_tokenizer *t = mk(model, NULL, NULL, NULL, NULL);
    EXPECT_IDS(t, "abc", 0, 4);
    /* one word (no pre-tokenizer): both bc merge first (rank 0, leftmost first) → a bc a bc */
    EXPECT_IDS(t, "abcabc", 0, 4, 0, 4);
    EXPECT_IDS(t, "ab", 3);
    kvf_tokenizer_free(t);
    /* "a b" first: abc → ab|c, then (ab, c) has no merge */
    snprintf(model, sizeof model, "{\"type\":\"BPE\",\"vocab\":%s,\"merges\":[[\"a\",\"b\"],[\"b\",\"c\"]]}", vocab);
    t = mk(model, NULL, NULL, NULL, NULL);
    EXPECT_IDS(t, "abc", 3, 2);
    kvf_tokenizer_free(t);
    /* with "ab c" as well: ab|c → abc */
    snprintf(model, sizeof model, "{\"type\":\"BPE\",\"vocab\":%s,\"merges\":[\"a b\",\"b c\",\"ab c\"]}", vocab);
    t = mk(model, NULL, NULL, NULL, NULL);
    EXPECT_IDS(t, "abc", 5);
    kvf_tokenizer_free(t);
    /* equal ranks: the leftmost pair merges first: aaa → aa|a */
    snprintf(model, sizeof model, "{\"type\":\"BPE\",\"vocab\":%s,\"merges\":[\"a a\"]}", vocab);
    t = mk(model, NULL, NULL, NULL, NULL);
    EXPECT_IDS(t, "aaa", 6, 0);
    EXPECT_IDS(t, "aaaa", 6, 6);
    /* no decoder: tokens joined with spaces (HF) */
    EXPECT_DECODE(t, true, "aa a", 6, 0);
    kvf_tokenizer_free(t);
}
END_TEST

START_TEST(bpe_ignore_merges) {
    /* ids: a0 b1 c2 abc3 ab4; "abc" is a vocab entry no merge produces */
    const char *m0 = "{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"c\":2,\"abc\":3,\"ab\":4},\"merges\":[\"a b\"]%s}";
    char model[512];
    snprintf(model, sizeof model, m0, "");
    kvf_tokenizer *t = mk(model, NULL, NULL, NULL, NULL);
    EXPECT_IDS(t, "abc", 4, 2);
    kvf_tokenizer_free(t);
    snprintf(model, sizeof model, m0, ",\"ignore_merges\":true");
    t = mk(model, NULL, NULL, NULL, NULL);
    EXPECT_IDS(t, "abc", 3);
    EXPECT_IDS(t, "abca", 4, 2, 0); /* not a vocab entry: merged as usual */
    kvf_tokenizer_free(t);
}
END_TEST

START_TEST(bpe_byte_fallback_and_unk) {
    /* ids: <unk>0 <0xC3>1 <0xA9>2 a3 <0x61>4 b5; é = C3 A9, € = E2 82 AC (no byte tokens) */
    const char *model =
        "{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"byte_fallback\":true,"
        "\"vocab\":{\"<unk>\":0,\"<0xC3>\":1,\"<0xA9>\":2,\"a\":3,\"<0x61>\":4,\"b\":5},\"merges\":[]}";
    const char *dec = "{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"}]}";
    kvf_tokenizer *t = mk(model, NULL, NULL, dec, NULL);
    EXPECT_IDS(t, "a\xC3\xA9", 3, 1, 2);         /* aé: é by bytes */
    EXPECT_IDS(t, "a\xE2\x82\xAC" "b", 3, 0, 5); /* a€b: € has no byte tokens → <unk> */
    EXPECT_IDS(t, "\xE2\x82\xAC\xE2\x82\xAC", 0, 0); /* not fused */
    /* HF quirk (models/bpe/model.rs): a pending <unk> is written after the byte tokens of the
     * character that follows it */
    EXPECT_IDS(t, "\xE2\x82\xAC\xC3\xA9", 1, 2, 0);
    EXPECT_DECODE(t, true, "a\xC3\xA9", 3, 1, 2);
    EXPECT_DECODE(t, true, "\xEF\xBF\xBD" "a", 1, 3); /* a lone C3 byte: one U+FFFD per byte */
    EXPECT_DECODE(t, true, "<unk>a", 0, 3);           /* <unk> is no added token here */
    kvf_tokenizer_free(t);

    /* fuse_unk, and no byte fallback */
    t = mk("{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true,"
           "\"vocab\":{\"<unk>\":0,\"a\":1},\"merges\":[]}", NULL, NULL, NULL, NULL);
    EXPECT_IDS(t, "xyza", 0, 1);
    EXPECT_IDS(t, "axya", 1, 0, 1);
    kvf_tokenizer_free(t);

    /* no unk_token: unknown characters vanish (HF) */
    t = mk("{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}", NULL, NULL, NULL, NULL);
    EXPECT_IDS(t, "xax", 0);
    kvf_tokenizer_free(t);

    /* unk_token missing from the vocab: an error only when it is needed */
    t = mk("{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"vocab\":{\"a\":0},\"merges\":[]}", NULL, NULL,
           NULL, NULL);
    EXPECT_IDS(t, "aa", 0, 0);
    kvf_ids ids = {0};
    ck_assert_int_eq(kvf_tokenizer_encode(t, "ax", 2, &ids), KVF_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "hand.json"));
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "<unk>"));
    kvf_error_clear();
    kvf_ids_free(&ids);
    kvf_tokenizer_free(t);
}
END_TEST

START_TEST(subword_prefix_suffix) {
    /* continuing_subword_prefix "##": a ##b ##c ab abc (HF's own test) */
    kvf_tokenizer *t = mk("{\"type\":\"BPE\",\"continuing_subword_prefix\":\"##\",\"unk_token\":\"[UNK]\","
                          "\"vocab\":{\"a\":0,\"##b\":1,\"##c\":2,\"ab\":3,\"abc\":4,\"[UNK]\":5},"
                          "\"merges\":[\"a ##b\",\"ab ##c\"]}", NULL, NULL, NULL, NULL);
    EXPECT_IDS(t, "ab", 3);
    EXPECT_IDS(t, "abc", 4);
    EXPECT_IDS(t, "ac", 0, 2);
    EXPECT_IDS(t, "b", 5); /* "b" alone is first: no prefix, not in the vocab */
    kvf_tokenizer_free(t);
    /* end_of_word_suffix "</w>": the last character carries it */
    t = mk("{\"type\":\"BPE\",\"end_of_word_suffix\":\"</w>\",\"vocab\":{\"a\":0,\"b</w>\":1,\"b\":2,"
           "\"ab</w>\":3,\"a</w>\":4},\"merges\":[\"a b</w>\"]}", NULL,
           "{\"type\":\"WhitespaceSplit\"}", "{\"type\":\"BPEDecoder\",\"suffix\":\"</w>\"}", NULL);
    EXPECT_IDS(t, "ab b ba", 3, 1, 2, 4);
    EXPECT_DECODE(t, true, "ab b ba", 3, 1, 2, 4);
    kvf_tokenizer_free(t);
}
END_TEST

START_TEST(added_tokens_split) {
    /* model: a0 b1 c2 <3 >4 x5 " "6 m7 w8; added: <ab>9 (special), <ab><c>10, bc11 (normalized),
     * <m>12 (lstrip + rstrip), <w>13 (single_word) */
    const char *model = "{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"c\":2,\"<\":3,\">\":4,\"x\":5,"
                        "\" \":6,\"m\":7,\"w\":8},\"merges\":[]}";
    const char *added =
        "[{\"id\":9,\"content\":\"<ab>\",\"special\":true,\"normalized\":false},"
        "{\"id\":10,\"content\":\"<ab><c>\",\"special\":false,\"normalized\":false},"
        "{\"id\":11,\"content\":\"bc\",\"special\":false,\"normalized\":true},"
        "{\"id\":12,\"content\":\"<m>\",\"special\":false,\"normalized\":false,\"lstrip\":true,\"rstrip\":true},"
        "{\"id\":13,\"content\":\"<w>\",\"special\":false,\"normalized\":false,\"single_word\":true}]";
    kvf_tokenizer *t = mk(model, NULL, NULL, NULL, added);
    ck_assert_int_eq(t->vocab_size, 14);
    /* leftmost-longest: <ab><c> wins over <ab> at the same start */
    EXPECT_IDS(t, "a<ab><c>b<ab>c", 0, 10, 1, 9, 2);
    EXPECT_IDS(t, "<ab<ab>>", 3, 0, 1, 9, 4);
    /* normalized added token matched in the (here unnormalized) text */
    EXPECT_IDS(t, "abcx", 0, 11, 5);
    /* lstrip / rstrip take the spaces around <m> */
    EXPECT_IDS(t, "a <m> b", 0, 12, 1);
    EXPECT_IDS(t, "a <ab> b", 0, 6, 9, 6, 1);
    /* single_word: only between non-word characters */
    EXPECT_IDS(t, "a <w> b", 0, 6, 13, 6, 1);
    EXPECT_IDS(t, "a<w>", 0, 3, 8, 4);
    EXPECT_IDS(t, "<w>b", 3, 8, 4, 1);
    /* decode: special <ab> skipped by default, kept with skip_special_tokens=false */
    EXPECT_DECODE(t, true, "a <ab><c> b c", 0, 10, 1, 9, 2);
    EXPECT_DECODE(t, false, "a <ab><c> b <ab> c", 0, 10, 1, 9, 2);
    ck_assert_int_eq(kvf_tokenizer_hf_token_to_id(t, "<ab>", 4), 9);
    ck_assert_int_eq(kvf_tokenizer_hf_token_to_id(t, "m", 1), 7);
    ck_assert_int_eq(kvf_tokenizer_hf_token_to_id(t, "zz", 2), -1);
    size_t l;
    ck_assert_str_eq(kvf_tokenizer_hf_id_to_token(t, 10, &l), "<ab><c>");
    ck_assert_ptr_null(kvf_tokenizer_hf_id_to_token(t, 14, &l));
    kvf_tokenizer_free(t);

    /* ids as HF assigns them: content already in the vocab keeps the vocab id; a new token takes
     * the next id after the vocab (the file's id 99 is overridden, as HF does) */
    t = mk("{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[]}", NULL, NULL, NULL,
           "[{\"id\":1,\"content\":\"b\",\"special\":true},{\"id\":99,\"content\":\"<z>\",\"special\":true}]");
    ck_assert_int_eq(t->vocab_size, 3);
    EXPECT_IDS(t, "a<z>b", 0, 2, 1);
    EXPECT_DECODE(t, true, "a", 0, 2, 1); /* "b" is special now */
    kvf_tokenizer_free(t);
}
END_TEST

START_TEST(metaspace_prepend) {
    /* ▁a0 a1 ▁2 b3 ▁b4, <s>5 special; merges ▁+a, ▁+b */
    const char *model = "{\"type\":\"BPE\",\"vocab\":{\"\\u2581a\":0,\"a\":1,\"\\u2581\":2,\"b\":3,"
                        "\"\\u2581b\":4},\"merges\":[\"\\u2581 a\",\"\\u2581 b\"]}";
    const char *added = "[{\"id\":5,\"content\":\"<s>\",\"special\":true,\"normalized\":false}]";
    char pre[256], dec[256];
    const char *schemes[] = {"always", "first", "never"};
    for (int s = 0; s < 3; s++) {
        snprintf(pre, sizeof pre, "{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"prepend_scheme\":\"%s\","
                 "\"split\":true}", schemes[s]);
        snprintf(dec, sizeof dec, "{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"prepend_scheme\":\"%s\"}",
                 schemes[s]);
        kvf_tokenizer *t = mk(model, NULL, pre, dec, added);
        if (s < 2) EXPECT_IDS(t, "a b", 0, 4);
        else EXPECT_IDS(t, "a b", 1, 4);
        /* after an added token the text does not start at offset 0: only "always" prepends */
        if (s == 0) EXPECT_IDS(t, "<s>a b", 5, 0, 4);
        else EXPECT_IDS(t, "<s>a b", 5, 1, 4);
        EXPECT_IDS(t, " a", 0); /* the space itself becomes the ▁ */
        EXPECT_IDS(t, "a  b", s < 2 ? 0 : 1, 2, 4);
        if (s < 2) {
            EXPECT_DECODE(t, true, "a b", 0, 4);
            EXPECT_DECODE(t, true, "a b", 1, 4);
            EXPECT_DECODE(t, true, "b", 5, 2, 3); /* <s> skipped: the ▁ left first is dropped */
            EXPECT_DECODE(t, false, "<s> b", 5, 2, 3);
        } else {
            EXPECT_DECODE(t, true, " a b", 0, 4);
        }
        kvf_tokenizer_free(t);
    }
    /* split false: one piece per input; ▁a▁b is then BPE'd as one word */
    kvf_tokenizer *t = mk(model, NULL,
                          "{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"prepend_scheme\":\"always\",\"split\":false}",
                          NULL, added);
    EXPECT_IDS(t, "a b", 0, 4);
    kvf_tokenizer_free(t);
}
END_TEST

START_TEST(normalizers) {
    /* Llama-2 style: Prepend ▁ + Replace " " → ▁, no pre-tokenizer, byte fallback decoders */
    const char *model = "{\"type\":\"BPE\",\"byte_fallback\":true,\"vocab\":{\"\\u2581\":0,\"a\":1,\"b\":2,"
                        "\"\\u2581a\":3,\"\\u2581b\":4,\"<0x21>\":5},\"merges\":[\"\\u2581 a\",\"\\u2581 b\"]}";
    const char *norm = "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"\\u2581\"},"
                       "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\\u2581\"}]}";
    const char *dec = "{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"\\u2581\"},"
                      "\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},"
                      "{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]}";
    kvf_tokenizer *t = mk(model, norm, NULL, dec, NULL);
    EXPECT_IDS(t, "a b", 3, 4);
    EXPECT_IDS(t, "a b!", 3, 4, 5);
    EXPECT_IDS(t, "ab", 3, 2);
    EXPECT_DECODE(t, true, "a b!", 3, 4, 5);
    EXPECT_DECODE(t, true, " a", 0, 3); /* Strip removes one leading space only */
    kvf_tokenizer_free(t);
    /* Strip at both ends, counted in characters */
    t = mk("{\"type\":\"BPE\",\"vocab\":{\"\\u2581\\u2581a\\u2581\\u2581\":0,\"\\u2581\":1},\"merges\":[]}",
           NULL, NULL, "{\"type\":\"Strip\",\"content\":\"\\u2581\",\"start\":1,\"stop\":5}", NULL);
    EXPECT_DECODE(t, true, "\xE2\x96\x81" "a", 0);
    EXPECT_DECODE(t, true, "", 1);
    kvf_tokenizer_free(t);

    /* Unicode forms, lowercase, strip, regex replace: the normalized text comes back byte for
     * byte through a byte-level vocabulary (decode of the ids = the normalized UTF-8) */
    char *bl = bytelevel_model(NULL, 0, NULL, 0);
    const char *pre = "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}";
    struct { const char *norm, *in, *out; } cases[] = {
        {"{\"type\":\"NFC\"}", "e\xCC\x81", "\xC3\xA9"},
        {"{\"type\":\"NFC\"}", "e\xCC\x81\xCC\xA3", "\xE1\xBA\xB9\xCC\x81"},    /* reordered, then composed */
        {"{\"type\":\"NFC\"}", "a\xCC\x88\xCC\x81\xCC\xA3" "b", "\xE1\xBA\xA1\xCC\x88\xCC\x81" "b"},
        {"{\"type\":\"NFC\"}", "A\xCC\x8A\xCC\x81", "\xC7\xBA"},                /* two compositions */
        {"{\"type\":\"NFC\"}", "\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB", "\xED\x95\x9C"}, /* Hangul LV + T */
        {"{\"type\":\"NFC\"}", "\xE2\x84\xAB", "\xC3\x85"},                      /* singleton */
        {"{\"type\":\"NFC\"}", "\xE0\xAD\x87\xE0\xAC\xBE", "\xE0\xAD\x8B"},      /* starter + starter */
        {"{\"type\":\"NFC\"}", "\xCC\x81" "a", "\xCC\x81" "a"},                  /* leading mark */
        {"{\"type\":\"NFD\"}", "\xE1\xBB\x87", "e\xCC\xA3\xCC\x82"},
        {"{\"type\":\"NFD\"}", "\xED\x95\x9C", "\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB"},
        {"{\"type\":\"NFKC\"}", "\xEF\xAC\x81\xE2\x91\xA0\xEF\xBC\xA1", "fi1A"},
        {"{\"type\":\"NFKC\"}", "\xE1\xBA\x9B\xCC\xA3", "\xE1\xB9\xA9"},
        {"{\"type\":\"NFKD\"}", "\xC2\xBD", "1\xE2\x81\x84" "2"},
        {"{\"type\":\"NFKC\"}", "plain ASCII stays", "plain ASCII stays"},
        {"{\"type\":\"Lowercase\"}", "\xC3\x80" "B", "\xC3\xA0" "b"},
        {"{\"type\":\"Lowercase\"}", "\xC4\xB0", "i\xCC\x87"},
        {"{\"type\":\"Strip\",\"strip_left\":true,\"strip_right\":true}", " \t a b \xE3\x80\x80", "a b"},
        {"{\"type\":\"Strip\",\"strip_left\":false,\"strip_right\":true}", "  a  ", "  a"},
        {"{\"type\":\"Replace\",\"pattern\":{\"Regex\":\"\\\\s+\"},\"content\":\" \"}", "a \t\n b", "a b"},
        {"{\"type\":\"Append\",\"append\":\"!\"}", "ab", "ab!"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kvf_tokenizer *u = mk(bl, cases[i].norm, pre, "{\"type\":\"ByteLevel\"}", NULL);
        kvf_ids ids = {0};
        ck_assert(kvf_tokenizer_encode(u, cases[i].in, strlen(cases[i].in), &ids) == KVF_OK);
        size_t n = strlen(cases[i].out);
        bool same = ids.count == (int64_t)n;
        for (size_t k = 0; same && k < n; k++) same = ids.data[k] == (unsigned char)cases[i].out[k];
        ck_assert_msg(same, "case %zu (%s): %lld ids", i, cases[i].norm, (long long)ids.count);
        kvf_ids_free(&ids);
        kvf_tokenizer_free(u);
    }
    free(bl);
}
END_TEST

START_TEST(split_behaviors) {
    /* ignore_merges + a vocab holding every possible piece: the ids show the pieces */
    const char *model = "{\"type\":\"BPE\",\"ignore_merges\":true,\"vocab\":{\"the\":0,\"final\":1,"
                        "\"countdown\":2,\"-\":3,\"the-\":4,\"final-\":5,\"-final\":6,\"-countdown\":7,"
                        "\"--\":8,\"the-final--countdown\":9},\"merges\":[]}";
    struct { const char *behavior; int32_t ids[8]; int n; } cases[] = {
        {"Removed", {0, 1, 2}, 3},
        {"Isolated", {0, 3, 1, 3, 3, 2}, 6},
        {"MergedWithPrevious", {4, 5, 3, 2}, 4},
        {"MergedWithNext", {0, 6, 3, 7}, 4},
        {"Contiguous", {0, 3, 1, 8, 2}, 5},
    };
    for (size_t i = 0; i < 5; i++) {
        char pre[256];
        snprintf(pre, sizeof pre, "{\"type\":\"Split\",\"pattern\":{\"String\":\"-\"},\"behavior\":\"%s\","
                 "\"invert\":false}", cases[i].behavior);
        kvf_tokenizer *t = mk(model, NULL, pre, NULL, NULL);
        expect_ids_(t, "the-final--countdown", 20, cases[i].ids, (size_t)cases[i].n, __LINE__);
        kvf_tokenizer_free(t);
        /* the same with a regex, and with invert on a regex matching the words */
        snprintf(pre, sizeof pre, "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"-\"},\"behavior\":\"%s\","
                 "\"invert\":false}", cases[i].behavior);
        t = mk(model, NULL, pre, NULL, NULL);
        expect_ids_(t, "the-final--countdown", 20, cases[i].ids, (size_t)cases[i].n, __LINE__);
        kvf_tokenizer_free(t);
    }
    /* invert: the words are the matches, and "--" is one gap between two of them */
    kvf_tokenizer *t = mk(model, NULL, "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[a-z]+\"},"
                          "\"behavior\":\"Isolated\",\"invert\":true}", NULL, NULL);
    EXPECT_IDS(t, "the-final--countdown", 0, 3, 1, 8, 2);
    kvf_tokenizer_free(t);
    t = mk(model, NULL, "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[a-z]+\"},"
           "\"behavior\":\"Removed\",\"invert\":true}", NULL, NULL);
    EXPECT_IDS(t, "the-final--countdown", 0, 1, 2);
    kvf_tokenizer_free(t);
    /* Sequence of two pre-tokenizers; Digits; Whitespace; Punctuation */
    t = mk("{\"type\":\"BPE\",\"ignore_merges\":true,\"vocab\":{\"ab\":0,\"1\":1,\"2\":2,"
                          "\"12\":3,\"!\":4,\"?\":5,\"!?\":6,\"a\":7,\"b\":8},\"merges\":[]}", NULL,
                          "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"WhitespaceSplit\"},"
                          "{\"type\":\"Digits\",\"individual_digits\":true}]}", NULL, NULL);
    EXPECT_IDS(t, " ab12  !?", 0, 1, 2, 6);
    kvf_tokenizer_free(t);
    t = mk("{\"type\":\"BPE\",\"ignore_merges\":true,\"vocab\":{\"ab\":0,\"12\":3,\"!?\":6,\"!\":4,\"?\":5,"
           "\"ab12\":9},\"merges\":[]}", NULL, "{\"type\":\"Whitespace\"}", NULL, NULL);
    EXPECT_IDS(t, "ab12 !?", 9, 6); /* \\w+ then [^\\w\\s]+, whitespace dropped */
    kvf_tokenizer_free(t);
    /* Punctuation (Isolated by default), CharDelimiterSplit, BertPreTokenizer */
    const char *pv = "{\"type\":\"BPE\",\"ignore_merges\":true,\"vocab\":{\"a\":0,\",\":1,\"b\":2,\"!\":3,"
                     "\"a,b!\":4,\"$\":5,\"x\":6,\"ab\":7},\"merges\":[]}";
    t = mk(pv, NULL, "{\"type\":\"Punctuation\"}", NULL, NULL);
    EXPECT_IDS(t, "a,b!$", 0, 1, 2, 3, 5); /* $ is ASCII punctuation to Rust, a symbol to Unicode */
    kvf_tokenizer_free(t);
    t = mk(pv, NULL, "{\"type\":\"CharDelimiterSplit\",\"delimiter\":\"x\"}", NULL, NULL);
    EXPECT_IDS(t, "xaxxa,b!x", 0, 4);
    kvf_tokenizer_free(t);
    t = mk(pv, NULL, "{\"type\":\"BertPreTokenizer\"}", NULL, NULL);
    EXPECT_IDS(t, " ab  a,b!", 7, 0, 1, 2, 3);
    kvf_tokenizer_free(t);
    /* Split regexes mean what they mean in Oniguruma (HF's engine): \\w takes combining marks,
     * \\s does not take U+180E */
    const char *mv = "{\"type\":\"BPE\",\"ignore_merges\":true,\"vocab\":{\"e\\u0301x\":0,\"y\":1,\"e\":2,"
                     "\"x\":3,\"\\u0301\":4,\"a\\u180eb\":5,\"a\":6,\"b\":7},\"merges\":[]}";
    t = mk(mv, NULL, "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\w+\"},\"behavior\":\"Removed\","
           "\"invert\":true}", NULL, NULL);
    EXPECT_IDS(t, "e\xCC\x81x y", 0, 1);
    kvf_tokenizer_free(t);
    t = mk(mv, NULL, "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\s\"},\"behavior\":\"Removed\","
           "\"invert\":false}", NULL, NULL);
    EXPECT_IDS(t, "a\xE1\xA0\x8E" "b a\xC2\x85" "b", 5, 6, 7); /* U+180E kept, NEL splits */
    kvf_tokenizer_free(t);
}
END_TEST

START_TEST(llama3_split_regex) {
    /* byte-level vocab 0..255 + 1 2 3 4 5 as "12"256 "123"257 "45"258 "34"259; merges chosen so
     * that splitting matters: without the digit split, 12345 → 1 2 34 5 → 12 34 5 */
    const char *extra[] = {"12", "123", "45", "34"};
    const char *merges[] = {"3 4", "1 2", "4 5", "12 3"};
    char *bl = bytelevel_model(extra, 4, merges, 4);
    const char *llama3 =
        "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
        "\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},"
        "\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
        "\"trim_offsets\":true,\"use_regex\":false}]}";
    kvf_tokenizer *t = mk(bl, NULL, llama3, "{\"type\":\"ByteLevel\"}", NULL);
    EXPECT_IDS(t, "12345", 257, 258); /* \p{N}{1,3}: 123 | 45 */
    EXPECT_IDS(t, "x'LL", 'x', '\'', 'L', 'L'); /* (?i:'ll) matches 'LL as one piece */
    EXPECT_DECODE(t, true, "12345", 257, 258);
    kvf_tokenizer_free(t);
    t = mk(bl, NULL, "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}",
           "{\"type\":\"ByteLevel\"}", NULL);
    EXPECT_IDS(t, "12345", 256, 259, '5');
    kvf_tokenizer_free(t);
    free(bl);
}
END_TEST

START_TEST(bytelevel_map_and_lossy_decode) {
    char *bl = bytelevel_model(NULL, 0, NULL, 0);
    kvf_tokenizer *t = mk(bl, NULL, "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}",
                          "{\"type\":\"ByteLevel\"}", NULL);
    /* every ASCII character and some multi-byte ones: id = byte, decode gives the text back */
    char text[256];
    size_t n = 0;
    for (int c = 1; c < 128; c++) text[n++] = (char)c;
    const char *mb = "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80 \xC2\xA0\xC2\xAD";
    memcpy(text + n, mb, strlen(mb));
    n += strlen(mb);
    kvf_ids ids = {0};
    ck_assert(kvf_tokenizer_encode(t, text, n, &ids) == KVF_OK);
    ck_assert_int_eq(ids.count, (int64_t)n);
    for (size_t i = 0; i < n; i++) ck_assert_int_eq(ids.data[i], (unsigned char)text[i]);
    kvf_bytes out = {0};
    ck_assert(kvf_tokenizer_decode(t, ids.data, ids.count, &out) == KVF_OK);
    ck_assert(out.len == n && memcmp(out.data, text, n) == 0);
    kvf_bytes_free(&out);
    kvf_ids_free(&ids);
    /* invalid UTF-8 from the ids: each maximal invalid piece → one U+FFFD (from_utf8_lossy) */
    EXPECT_DECODE(t, true, "\xEF\xBF\xBD", 0xE2, 0x82);
    EXPECT_DECODE(t, true, "\xEF\xBF\xBD\xEF\xBF\xBD", 0xFF, 0xFE);
    EXPECT_DECODE(t, true, "\xEF\xBF\xBD" "A", 0xC3, 'A');
    EXPECT_DECODE(t, true, "\xEF\xBF\xBD\xEF\xBF\xBD", 0xED, 0xA0); /* surrogate lead */
    kvf_tokenizer_free(t);
    /* add_prefix_space: a space goes in front unless the text starts with one */
    t = mk(bl, NULL, "{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"use_regex\":true}", NULL, NULL);
    EXPECT_IDS(t, "hi", ' ', 'h', 'i');
    EXPECT_IDS(t, " hi", ' ', 'h', 'i');
    kvf_tokenizer_free(t);
    free(bl);
}
END_TEST

START_TEST(bos_eos_rules) {
    const char *model = "{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}";
    const char *added = "[{\"id\":1,\"content\":\"<|begin_of_text|>\",\"special\":true},"
                        "{\"id\":2,\"content\":\"<|end_of_text|>\",\"special\":true},"
                        "{\"id\":3,\"content\":\"<|eot_id|>\",\"special\":true}]";
    kvf_tokenizer *t = mk(model, NULL, NULL, NULL, added);
    ck_assert_int_eq(t->bos_id, 1);
    ck_assert_int_eq(t->eos_id, 2);
    kvf_tokenizer_free(t);
    /* TemplateProcessing: first SpecialToken of "single" is bos, a last one is eos */
    char j[2048];
    snprintf(j, sizeof j,
             "{\"added_tokens\":%s,\"model\":%s,\"post_processor\":{\"type\":\"TemplateProcessing\","
             "\"single\":[{\"SpecialToken\":{\"id\":\"<|begin_of_text|>\",\"type_id\":0}},"
             "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},{\"SpecialToken\":{\"id\":\"<|eot_id|>\",\"type_id\":0}}],"
             "\"special_tokens\":{\"<|begin_of_text|>\":{\"id\":\"<|begin_of_text|>\",\"ids\":[1],"
             "\"tokens\":[\"<|begin_of_text|>\"]},\"<|eot_id|>\":{\"id\":\"<|eot_id|>\",\"ids\":[3],"
             "\"tokens\":[\"<|eot_id|>\"]}}}}", added, model);
    t = kvf_tokenizer_hf_load_buffer("tp.json", j, strlen(j));
    ck_assert_msg(t, "%s", kvf_error_message());
    ck_assert_int_eq(t->bos_id, 1);
    ck_assert_int_eq(t->eos_id, 3);
    /* encode adds no template tokens */
    EXPECT_IDS(t, "a", 0);
    kvf_tokenizer_free(t);
    /* tokenizer_config.json beside the file wins */
    write_text(tpath("tokenizer.json"), tokjson(model, NULL, NULL, NULL, added));
    write_text(tpath("tokenizer_config.json"),
               "{\"bos_token\": {\"content\": \"<|end_of_text|>\"}, \"eos_token\": \"<|eot_id|>\"}");
    t = kvf_tokenizer_hf_load(tpath("tokenizer.json"));
    ck_assert_msg(t, "%s", kvf_error_message());
    ck_assert_int_eq(t->bos_id, 2);
    ck_assert_int_eq(t->eos_id, 3);
    ck_assert_str_eq(t->name, tpath("tokenizer.json"));
    kvf_tokenizer_free(t);
    /* a broken tokenizer_config.json is an error naming it */
    write_text(tpath("tokenizer_config.json"), "{\"bos_token\": ");
    ck_assert_ptr_null(kvf_tokenizer_hf_load(tpath("tokenizer.json")));
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "tokenizer_config.json"));
    kvf_error_clear();
    /* nothing known: -1 */
    t = mk(model, NULL, NULL, NULL, NULL);
    ck_assert_int_eq(t->bos_id, -1);
    ck_assert_int_eq(t->eos_id, -1);
    kvf_tokenizer_free(t);
}
END_TEST

/* Found by fuzzing: a word that gives no ids (no unk_token: HF drops characters outside the
 * vocab) was cached with pointer arithmetic on a still-NULL id array, on the first encode and on
 * the cache hit of the second. */
START_TEST(word_without_ids) {
    kvf_tokenizer *tok = mk("{\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": []}",
                            NULL, "{\"type\": \"WhitespaceSplit\"}", NULL, NULL);
    for (int k = 0; k < 2; k++) {
        kvf_ids ids = {0};
        ck_assert_msg(kvf_tokenizer_encode(tok, "xyz", 3, &ids) == KVF_OK, "%s", kvf_error_message());
        ck_assert_int_eq(ids.count, 0);
        kvf_ids_free(&ids);
    }
    EXPECT_IDS(tok, "xyz ab xyz", 0, 1);
    kvf_tokenizer_free(tok);
}
END_TEST

START_TEST(encode_decode_args) {
    kvf_tokenizer *t = mk("{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":2},\"merges\":[]}", NULL, NULL, NULL, NULL);
    ck_assert_int_eq(t->vocab_size, 3);
    kvf_ids ids = {0};
    ck_assert(kvf_tokenizer_encode(t, "", 0, &ids) == KVF_OK);
    ck_assert_int_eq(ids.count, 0);
    ck_assert(kvf_tokenizer_encode(t, "a", 1, &ids) == KVF_OK);
    /* invalid UTF-8: an error, and out keeps what it had */
    ck_assert_int_eq(kvf_tokenizer_encode(t, "ab\xC3(", 4, &ids), KVF_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "offset 2"));
    ck_assert_int_eq(ids.count, 1);
    kvf_error_clear();
    kvf_ids_free(&ids);
    kvf_bytes out = {0};
    int32_t bad[] = {0, 3};
    ck_assert_int_eq(kvf_tokenizer_decode(t, bad, 2, &out), KVF_ERR_ARG);
    kvf_error_clear();
    int32_t hole[] = {0, 1, 2}; /* id 1 is no token: skipped as HF does */
    ck_assert(kvf_tokenizer_decode(t, hole, 3, &out) == KVF_OK);
    ck_assert_str_eq(out.data, "a b");
    kvf_bytes_free(&out);
    kvf_tokenizer_free(t);
    ck_assert(!kvf_tokenizer_is_hf(NULL));
    ck_assert_int_eq(kvf_tokenizer_hf_decode_ex(NULL, hole, 1, true, &out), KVF_ERR_ARG);
    kvf_error_clear();
}
END_TEST

/* ============================================================================================
 * Malformed files
 * ========================================================================================== */

static const char *good_model = "{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}";

static const struct {
    const char *json; /* "%M" is replaced by good_model */
    kvf_status code;
    const char *needle;
} bad_cases[] = {
    {"{\"model\": {\"type\": \"BPE\",, }}", KVF_ERR_FORMAT, "line 1, column"},
    {"{\"model\": %M,\n \"decoder\": nul}", KVF_ERR_FORMAT, "line 2"},
    {"", KVF_ERR_FORMAT, "broken JSON"},
    {"[1, 2]", KVF_ERR_FORMAT, "top level must be a JSON object"},
    {"{}", KVF_ERR_FORMAT, "no \"model\""},
    {"{\"model\": null}", KVF_ERR_FORMAT, "no \"model\""},
    {"{\"model\": 3}", KVF_ERR_FORMAT, "model must be an object"},
    {"{\"model\": {\"type\": \"BPE\", \"merges\": []}}", KVF_ERR_FORMAT, "model.vocab"},
    {"{\"model\": {\"type\": \"BPE\", \"vocab\": {}}}", KVF_ERR_FORMAT, "model.merges"},
    {"{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", KVF_ERR_UNSUPPORTED, "model type Unigram"},
    {"{\"model\": {\"type\": \"Magic\"}}", KVF_ERR_FORMAT, "unknown model type \"Magic\""},
    {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"zero\"}, \"merges\": []}}", KVF_ERR_FORMAT,
     "model.vocab[\"a\"] must be an integer"},
    {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}", KVF_ERR_FORMAT, "negative"},
    {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a z\"]}}",
     KVF_ERR_FORMAT, "\"z\" is not in the vocab"},
    {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}",
     KVF_ERR_FORMAT, "the merged token \"ab\" is not in the vocab"},
    {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b c\"]}}",
     KVF_ERR_FORMAT, "model.merges[0]"},
    {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [[\"a\"]]}}", KVF_ERR_FORMAT,
     "model.merges[0] must be"},
    {"{\"model\": {\"type\": \"BPE\", \"dropout\": 0.1, \"vocab\": {}, \"merges\": []}}",
     KVF_ERR_UNSUPPORTED, "dropout"},
    {"{\"model\": %M, \"pre_tokenizer\": {\"type\": \"Foo\"}}", KVF_ERR_FORMAT,
     "unknown pre_tokenizer type \"Foo\""},
    {"{\"model\": %M, \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Bar\"}]}}",
     KVF_ERR_FORMAT, "pre_tokenizer.pretokenizers[0]: unknown pre_tokenizer type \"Bar\""},
    {"{\"model\": %M, \"pre_tokenizer\": {\"type\": \"UnicodeScripts\"}}", KVF_ERR_UNSUPPORTED,
     "not supported: pre_tokenizer UnicodeScripts"},
    {"{\"model\": %M, \"pre_tokenizer\": {\"split\": true}}", KVF_ERR_FORMAT, "pre_tokenizer has no \"type\""},
    {"{\"model\": %M, \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"a(b\"}, "
     "\"behavior\": \"Isolated\", \"invert\": false}}", KVF_ERR_FORMAT, "at offset 3"},
    {"{\"model\": %M, \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\p{Nope}\"}, "
     "\"behavior\": \"Isolated\", \"invert\": false}}", KVF_ERR_FORMAT, "bad regex"},
    {"{\"model\": %M, \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"a\"}, "
     "\"behavior\": \"Sideways\"}}", KVF_ERR_FORMAT, "behavior \"Sideways\""},
    {"{\"model\": %M, \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": \"a\", \"behavior\": \"Isolated\"}}",
     KVF_ERR_FORMAT, "pattern must be"},
    {"{\"model\": %M, \"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"ab\"}}", KVF_ERR_FORMAT,
     "exactly one character"},
    {"{\"model\": %M, \"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"_\", "
     "\"prepend_scheme\": \"sometimes\"}}", KVF_ERR_FORMAT, "prepend_scheme \"sometimes\""},
    {"{\"model\": %M, \"normalizer\": {\"type\": \"Precompiled\", \"precompiled_charsmap\": \"\"}}",
     KVF_ERR_UNSUPPORTED, "not supported: normalizer Precompiled"},
    {"{\"model\": %M, \"normalizer\": {\"type\": \"Frobnicate\"}}", KVF_ERR_FORMAT,
     "unknown normalizer type \"Frobnicate\""},
    {"{\"model\": %M, \"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"Regex\": \"(a)\"}, "
     "\"content\": \"$1\"}}", KVF_ERR_UNSUPPORTED, "group references"},
    {"{\"model\": %M, \"decoder\": {\"type\": \"WordPiece\"}}", KVF_ERR_UNSUPPORTED, "not supported: decoder WordPiece"},
    {"{\"model\": %M, \"decoder\": {\"type\": \"Nope\"}}", KVF_ERR_FORMAT, "unknown decoder type \"Nope\""},
    {"{\"model\": %M, \"decoder\": [1]}", KVF_ERR_FORMAT, "decoder must be an object"},
    {"{\"model\": %M, \"added_tokens\": {}}", KVF_ERR_FORMAT, "added_tokens must be an array"},
    {"{\"model\": %M, \"added_tokens\": [{\"content\": \"x\"}]}", KVF_ERR_FORMAT, "added_tokens[0].id"},
    {"{\"model\": %M, \"added_tokens\": [{\"id\": 5}]}", KVF_ERR_FORMAT, "added_tokens[0] has no \"content\""},
    {"{\"model\": %M, \"added_tokens\": [{\"id\": 5, \"content\": \"x\", \"special\": \"yes\"}]}",
     KVF_ERR_FORMAT, "added_tokens[0].special must be true or false"},
    {"{\"version\": \"2.0\", \"model\": %M}", KVF_ERR_UNSUPPORTED, "version \"2.0\""},
};

START_TEST(malformed_file) {
    char json[4096];
    const char *src = bad_cases[_i].json, *m = strstr(src, "%M");
    if (m) snprintf(json, sizeof json, "%.*s%s%s", (int)(m - src), src, good_model, m + 2);
    else snprintf(json, sizeof json, "%s", src);
    /* from a file: the message names the path */
    write_text(tpath("tokenizer.json"), json);
    kvf_tokenizer *t = kvf_tokenizer_hf_load(tpath("tokenizer.json"));
    ck_assert_msg(!t, "case %d loaded: %s", _i, json);
    ck_assert_msg(kvf_error_code() == bad_cases[_i].code, "case %d: %s (%s)", _i,
                  kvf_status_name(kvf_error_code()), kvf_error_message());
    ck_assert_msg(strstr(kvf_error_message(), tpath("tokenizer.json")) == kvf_error_message(),
                  "case %d: the message does not start with the file: %s", _i, kvf_error_message());
    ck_assert_msg(strstr(kvf_error_message(), bad_cases[_i].needle), "case %d: \"%s\" not in: %s", _i,
                  bad_cases[_i].needle, kvf_error_message());
    kvf_error_clear();
    /* from memory: the message names the buffer */
    ck_assert_ptr_null(kvf_tokenizer_hf_load_buffer("mem.json", json, strlen(json)));
    ck_assert_msg(strncmp(kvf_error_message(), "mem.json: ", 10) == 0, "%s", kvf_error_message());
    kvf_error_clear();
}
END_TEST

START_TEST(missing_file) {
    ck_assert_ptr_null(kvf_tokenizer_hf_load(tpath("nope.json")));
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_IO);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "nope.json"));
    kvf_error_clear();
    ck_assert_ptr_null(kvf_tokenizer_hf_load(tmpdir)); /* a directory */
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_IO);
    kvf_error_clear();
}
END_TEST

/* Truncated and byte-mutated copies of a real tokenizer.json: each either loads (and then
 * encodes and decodes a probe) or fails with a message naming the buffer. */
START_TEST(mutated_files_never_crash) {
    const char *p = shared_file("fixtures/tok-sentencepiece-512/tokenizer.json");
    size_t len;
    char *orig = p ? read_all(p, &len) : NULL;
    if (!orig) {
        const char *j = tokjson(good_model, "{\"type\":\"NFKC\"}",
                                "{\"type\":\"Metaspace\",\"replacement\":\"_\"}", "{\"type\":\"Fuse\"}",
                                "[{\"id\":3,\"content\":\"<s>\",\"special\":true}]");
        orig = strdup(j);
        len = strlen(j);
    }
    char *buf = malloc(len + 1);
    ck_assert(buf);
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    int loaded = 0, failed = 0;
    for (int k = 0; k < 400; k++) {
        memcpy(buf, orig, len);
        size_t n = len;
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        if (k < 150) {
            n = (size_t)((rng >> 33) % len);
        } else {
            for (int m = 0; m < 1 + k % 3; m++) {
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                buf[(rng >> 33) % len] = "\"{}[],:0a\\ \xC3\xFF"[(rng >> 20) % 13];
            }
        }
        kvf_tokenizer *t = kvf_tokenizer_hf_load_buffer("fuzz.json", buf, n);
        if (t) {
            loaded++;
            kvf_ids ids = {0};
            const char *probe = "In the beginning <s> caf\xC3\xA9 12345!";
            if (kvf_tokenizer_encode(t, probe, strlen(probe), &ids) == KVF_OK) {
                kvf_bytes out = {0};
                (void)kvf_tokenizer_decode(t, ids.data, ids.count, &out);
                kvf_bytes_free(&out);
            }
            kvf_error_clear();
            kvf_ids_free(&ids);
            kvf_tokenizer_free(t);
        } else {
            failed++;
            ck_assert_msg(strncmp(kvf_error_message(), "fuzz.json: ", 11) == 0, "%s", kvf_error_message());
            kvf_error_clear();
        }
    }
    ck_assert_int_gt(failed, 0);
    free(buf);
    free(orig);
}
END_TEST

int main(void) {
    Suite *s = suite_create("tokenizer_hf");
    TCase *fx = tcase_create("fixture");
    tcase_add_checked_fixture(fx, setup, teardown);
    tcase_set_timeout(fx, 120);
    tcase_add_loop_test(fx, fixture_probes, 0, 2);
    tcase_add_test(fx, fixture_model_dir);
    tcase_add_test(fx, kjv_val_parity_and_speed);
    tcase_add_test(fx, shared_between_threads);
    suite_add_tcase(s, fx);

    TCase *hc = tcase_create("handcrafted");
    tcase_add_checked_fixture(hc, setup, teardown);
    tcase_add_test(hc, bpe_merge_order);
    tcase_add_test(hc, bpe_ignore_merges);
    tcase_add_test(hc, bpe_byte_fallback_and_unk);
    tcase_add_test(hc, subword_prefix_suffix);
    tcase_add_test(hc, added_tokens_split);
    tcase_add_test(hc, metaspace_prepend);
    tcase_add_test(hc, normalizers);
    tcase_add_test(hc, split_behaviors);
    tcase_add_test(hc, llama3_split_regex);
    tcase_add_test(hc, bytelevel_map_and_lossy_decode);
    tcase_add_test(hc, bos_eos_rules);
    tcase_add_test(hc, encode_decode_args);
    tcase_add_test(hc, word_without_ids);
    suite_add_tcase(s, hc);

    TCase *bad = tcase_create("malformed");
    tcase_add_checked_fixture(bad, setup, teardown);
    tcase_add_loop_test(bad, malformed_file, 0, (int)(sizeof bad_cases / sizeof bad_cases[0]));
    tcase_add_test(bad, missing_file);
    tcase_add_test(bad, mutated_files_never_crash);
    suite_add_tcase(s, bad);

    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
