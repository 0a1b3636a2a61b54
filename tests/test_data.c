/* data/ tests: byte tokenizer round trips, text / JSONL readers and their errors, llm.c shard
 * write → read (uint16 and uint32, several shards) and every corrupt-shard case, tar / tar.gz /
 * zip archives made here with libarchive's writer against the plain files, a truncated
 * archive, the batcher (determinism, resume, ranges, shift, rank sharding, split) and the
 * §8 evaluation windows, and the shared KJV text when present. Inputs live in a mkdtemp dir. */
#define _GNU_SOURCE /* nftw */
#include <archive.h>
#include <archive_entry.h>
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "autograd/rng.h"
#include "data/batch.h"
#include "data/corpus.h"
#include "data/shard.h"
#include "data/tokenizer.h"

static char tmpdir[512];

static void setup(void) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/kvf_data_XXXXXX", base && *base ? base : "/tmp");
    ck_assert_msg(mkdtemp(tmpdir) != NULL, "mkdtemp: %s", strerror(errno));
    kvf_error_clear();
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    return remove(p);
}

static void teardown(void) { nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static const char *tpath(const char *name) {
    static char buf[8][1024];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    ck_assert_msg(fp, "fopen %s: %s", path, strerror(errno));
    ck_assert(n == 0 || fwrite(p, 1, n, fp) == n);
    ck_assert(fclose(fp) == 0);
}

static void write_str(const char *path, const char *s) { write_bytes(path, s, strlen(s)); }

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    ck_assert_msg(fp, "fopen %s: %s", path, strerror(errno));
    ck_assert(fseek(fp, 0, SEEK_END) == 0);
    long len = ftell(fp);
    ck_assert(len >= 0);
    rewind(fp);
    unsigned char *buf = malloc((size_t)len + 1);
    ck_assert(buf);
    ck_assert((long)fread(buf, 1, (size_t)len, fp) == len);
    fclose(fp);
    *n = (size_t)len;
    return buf;
}

/* The call failed with `code` and the message contains both strings (the second may be NULL). */
static void expect_error(kvf_status s, kvf_status code, const char *must, const char *must2) {
    ck_assert_msg(s == code, "status %s (expected %s), message: %s", kvf_status_name(s),
                  kvf_status_name(code), kvf_error_message());
    ck_assert_msg(strstr(kvf_error_message(), must), "message lacks '%s': %s", must,
                  kvf_error_message());
    if (must2)
        ck_assert_msg(strstr(kvf_error_message(), must2), "message lacks '%s': %s", must2,
                      kvf_error_message());
    kvf_error_clear();
}

static void expect_ok(kvf_status s) {
    ck_assert_msg(s == KVF_OK, "%s: %s (%s)", kvf_status_name(s), kvf_error_message(),
                  kvf_error_location());
}

/* (Check records every assertion through a pipe: long loops test first, then assert once.) */
static void expect_same(const kvf_ids *a, const kvf_ids *b) {
    ck_assert_int_eq(a->count, b->count);
    int64_t i = 0;
    while (i < a->count && a->data[i] == b->data[i]) i++;
    ck_assert_msg(i == a->count, "token %lld: %d vs %d", (long long)i, a->data[i], b->data[i]);
}

/* ---- tokenizer ----------------------------------------------------------------------------- */

START_TEST(byte_tokenizer_roundtrip) {
    kvf_tokenizer *tok = kvf_tokenizer_byte_init(true), *raw = kvf_tokenizer_byte_init(false);
    ck_assert(tok && raw);
    ck_assert_int_eq(tok->vocab_size, 257);
    ck_assert_int_eq(tok->eos_id, 256);
    ck_assert_int_eq(tok->bos_id, -1);
    ck_assert_int_eq(raw->vocab_size, 256);
    ck_assert_int_eq(raw->eos_id, -1);

    char all[512];
    for (int i = 0; i < 512; i++) all[i] = (char)(i < 256 ? i : 511 - i); /* 0..255, 255..0 */
    kvf_ids ids = {0};
    expect_ok(kvf_tokenizer_encode(tok, all, sizeof all, &ids));
    ck_assert_int_eq(ids.count, 512);
    for (int i = 0; i < 512; i++) ck_assert_int_eq(ids.data[i], (unsigned char)all[i]);
    kvf_bytes out = {0};
    expect_ok(kvf_tokenizer_decode(tok, ids.data, ids.count, &out));
    ck_assert_uint_eq(out.len, sizeof all);
    ck_assert(memcmp(out.data, all, sizeof all) == 0);

    /* UTF-8: one id per byte, exact inverse; EOT decodes to nothing */
    const char *utf8 = "h\xc3\xa9llo, \xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x99\x82\n";
    kvf_ids u = {0};
    expect_ok(kvf_tokenizer_encode(raw, utf8, strlen(utf8), &u));
    ck_assert_int_eq(u.count, (int64_t)strlen(utf8));
    expect_ok(kvf_ids_push(&u, 256));
    kvf_bytes ub = {0};
    expect_ok(kvf_tokenizer_decode(tok, u.data, u.count, &ub));
    ck_assert_str_eq(ub.data, utf8);

    /* ids outside the vocabulary */
    kvf_bytes bad = {0};
    expect_error(kvf_tokenizer_decode(raw, u.data, u.count, &bad), KVF_ERR_ARG, "256", "byte-raw");
    int32_t neg = -1;
    expect_error(kvf_tokenizer_decode(tok, &neg, 1, &bad), KVF_ERR_ARG, "-1", "vocabulary");
    kvf_bytes_free(&bad);

    /* encode appends */
    int64_t before = ids.count;
    expect_ok(kvf_tokenizer_encode(tok, "ab", 2, &ids));
    ck_assert_int_eq(ids.count, before + 2);
    ck_assert_int_eq(ids.data[before + 1], 'b');
    expect_ok(kvf_tokenizer_encode(tok, NULL, 0, &ids));
    ck_assert_int_eq(ids.count, before + 2);

    kvf_ids_free(&ids);
    kvf_ids_free(&u);
    kvf_bytes_free(&out);
    kvf_bytes_free(&ub);
    kvf_tokenizer_free(tok);
    kvf_tokenizer_free(raw);
    kvf_tokenizer_free(NULL);
}
END_TEST

/* ---- text and JSONL ------------------------------------------------------------------------ */

/* expected stream: the byte ids of each document, EOT (256) between them */
static void expect_docs(const kvf_ids *s, const char *const *docs, int n) {
    kvf_ids want = {0};
    for (int i = 0; i < n; i++) {
        if (i) expect_ok(kvf_ids_push(&want, 256));
        for (const char *p = docs[i]; *p; p++) expect_ok(kvf_ids_push(&want, (unsigned char)*p));
    }
    expect_same(s, &want);
    kvf_ids_free(&want);
}

START_TEST(text_reader) {
    kvf_tokenizer *tok = kvf_tokenizer_byte_init(true), *raw = kvf_tokenizer_byte_init(false);
    write_str(tpath("a.txt"), "alpha\n");
    write_str(tpath("b.md"), "beta \xe2\x82\xac");
    write_str(tpath("empty.txt"), "");
    kvf_corpus_opts o = {.tok = raw};
    kvf_token_stream s = {0};
    expect_ok(kvf_corpus_read(tpath("a.txt"), &o, &s));
    expect_docs(&s, (const char *[]){"alpha\n"}, 1);
    kvf_ids_free(&s);

    /* several files: one EOT between documents; an unknown extension is text */
    o.tok = tok;
    const char *paths[] = {tpath("a.txt"), tpath("b.md")};
    expect_ok(kvf_corpus_read_paths(paths, 2, &o, &s));
    expect_docs(&s, (const char *[]){"alpha\n", "beta \xe2\x82\xac"}, 2);
    kvf_ids_free(&s);

    /* a directory: sorted by name, recursive, hidden files skipped */
    ck_assert(mkdir(tpath("d"), 0755) == 0);
    ck_assert(mkdir(tpath("d/m"), 0755) == 0);
    write_str(tpath("d/z.txt"), "zz");
    write_str(tpath("d/a.txt"), "aa");
    write_str(tpath("d/m/x.txt"), "mx");
    write_str(tpath("d/.hidden"), "no");
    expect_ok(kvf_corpus_read(tpath("d"), &o, &s));
    expect_docs(&s, (const char *[]){"aa", "mx", "zz"}, 3);
    kvf_ids_free(&s);

    /* max_tokens cuts the stream */
    o.max_tokens = 4;
    expect_ok(kvf_corpus_read(tpath("d"), &o, &s));
    ck_assert_int_eq(s.count, 4);
    ck_assert_int_eq(s.data[2], 256);
    ck_assert_int_eq(s.data[3], 'm');
    kvf_ids_free(&s);
    o.max_tokens = 0;

    /* errors */
    expect_error(kvf_corpus_read(tpath("missing.txt"), &o, &s), KVF_ERR_IO, "missing.txt", NULL);
    kvf_corpus_opts none = {0};
    expect_error(kvf_corpus_read(tpath("a.txt"), &none, &s), KVF_ERR_ARG, "a.txt", "tokenizer");
    kvf_ids_free(&s);
    kvf_tokenizer_free(tok);
    kvf_tokenizer_free(raw);
}
END_TEST

START_TEST(jsonl_reader) {
    kvf_tokenizer *tok = kvf_tokenizer_byte_init(true);
    /* a document longer than the reader's 64 KiB chunk, escapes, a blank line, CRLF, and no
     * newline at the end */
    size_t big_n = 200000;
    char *big = malloc(big_n + 1);
    for (size_t i = 0; i < big_n; i++) big[i] = (char)('a' + i % 26);
    big[big_n] = '\0';
    size_t cap = big_n + 1024;
    char *file = malloc(cap);
    int len = snprintf(file, cap,
                       "{\"text\": \"first\\nline\", \"id\": 1}\n"
                       "\n"
                       "{\"meta\": {\"x\": [1,2]}, \"text\": \"caf\\u00e9 \\ud83d\\ude42\"}\r\n"
                       "   \n"
                       "{\"text\": \"%s\"}\n"
                       "{\"text\": \"\"}\n"
                       "{\"text\": \"last\"}",
                       big);
    write_bytes(tpath("docs.jsonl"), file, (size_t)len);
    kvf_corpus_opts o = {.tok = tok};
    kvf_token_stream s = {0};
    expect_ok(kvf_corpus_read(tpath("docs.jsonl"), &o, &s));
    expect_docs(&s,
                (const char *[]){"first\nline", "caf\xc3\xa9 \xf0\x9f\x99\x82", big, "", "last"}, 5);
    kvf_ids_free(&s);

    /* the same bytes from memory */
    expect_ok(kvf_corpus_read_buffer("mem.jsonl", file, (size_t)len, &o, &s));
    ck_assert_int_eq(s.count, (int64_t)(10 + 10 + big_n + 0 + 4 + 4));
    kvf_ids_free(&s);
    free(big);
    free(file);
    kvf_tokenizer_free(tok);
}
END_TEST

START_TEST(jsonl_errors) {
    kvf_tokenizer *tok = kvf_tokenizer_byte_init(true);
    kvf_corpus_opts o = {.tok = tok};
    kvf_token_stream s = {0};
    write_str(tpath("bad.jsonl"), "{\"text\": \"ok\"}\n\n{\"text\": \"unterminated}\n{\"text\": \"x\"}\n");
    expect_error(kvf_corpus_read(tpath("bad.jsonl"), &o, &s), KVF_ERR_FORMAT, "bad.jsonl:3:",
                 "invalid JSON");
    kvf_ids_free(&s);
    write_str(tpath("nokey.jsonl"), "{\"text\": \"ok\"}\n{\"body\": \"no text here\"}\n");
    expect_error(kvf_corpus_read(tpath("nokey.jsonl"), &o, &s), KVF_ERR_FORMAT, "nokey.jsonl:2:",
                 "\"text\"");
    kvf_ids_free(&s);
    write_str(tpath("num.jsonl"), "{\"text\": 42}\n");
    expect_error(kvf_corpus_read(tpath("num.jsonl"), &o, &s), KVF_ERR_FORMAT, "num.jsonl:1:",
                 "not a string");
    kvf_ids_free(&s);
    write_str(tpath("arr.ndjson"), "{\"text\": \"a\"}\n[1, 2]\n");
    expect_error(kvf_corpus_read(tpath("arr.ndjson"), &o, &s), KVF_ERR_FORMAT, "arr.ndjson:2:",
                 "object");
    kvf_ids_free(&s);
    write_str(tpath("trail.jsonl"), "{\"text\": \"a\"} x\n");
    expect_error(kvf_corpus_read(tpath("trail.jsonl"), &o, &s), KVF_ERR_FORMAT, "trail.jsonl:1:",
                 NULL);
    kvf_ids_free(&s);
    kvf_tokenizer_free(tok);
}
END_TEST

/* Any implementation plugs in behind the vtable: a mock that maps byte b to id b + 1, uses
 * id 0 as end of text and refuses '#'. */
static kvf_status mock_encode(const kvf_tokenizer *tok, const char *text, size_t len, kvf_ids *out) {
    for (size_t i = 0; i < len; i++) {
        KVF_CHECK(text[i] != '#', KVF_ERR_ARG, "mock tokenizer: '#' at byte offset %zu", i);
        KVF_TRY(kvf_ids_push(out, (unsigned char)text[i] + 1));
    }
    return KVF_OK;
}

static kvf_status mock_decode(const kvf_tokenizer *tok, const int32_t *ids, int64_t n, kvf_bytes *out) {
    for (int64_t i = 0; i < n; i++) {
        char c = (char)(ids[i] - 1);
        if (ids[i]) KVF_TRY(kvf_bytes_append(out, &c, 1));
    }
    return KVF_OK;
}

static int mock_destroyed;
static void mock_destroy(kvf_tokenizer *tok) { mock_destroyed++; }

START_TEST(custom_tokenizer) {
    static const struct kvf_tokenizer_vtable vt = {mock_encode, mock_decode, mock_destroy};
    kvf_tokenizer *tok = malloc(sizeof *tok);
    *tok = (kvf_tokenizer){.vt = &vt, .name = "mock", .vocab_size = 257, .bos_id = -1, .eos_id = 0};
    write_str(tpath("m.jsonl"), "{\"text\": \"ab\"}\n{\"text\": \"c\"}\n");
    kvf_token_stream s = {0};
    expect_ok(kvf_corpus_read(tpath("m.jsonl"), &(kvf_corpus_opts){.tok = tok}, &s));
    ck_assert_int_eq(s.count, 4);
    ck_assert(s.data[0] == 'a' + 1 && s.data[1] == 'b' + 1 && s.data[2] == 0 && s.data[3] == 'c' + 1);
    kvf_bytes b = {0};
    expect_ok(kvf_tokenizer_decode(tok, s.data, s.count, &b));
    ck_assert_str_eq(b.data, "abc");
    kvf_bytes_free(&b);
    kvf_ids_free(&s);
    /* a tokenizer's error is reported with the file (and line) it came from */
    write_str(tpath("h.jsonl"), "{\"text\": \"ok\"}\n{\"text\": \"x#\"}\n");
    expect_error(kvf_corpus_read(tpath("h.jsonl"), &(kvf_corpus_opts){.tok = tok}, &s), KVF_ERR_ARG,
                 "h.jsonl:2: mock tokenizer: '#' at byte offset 1", NULL);
    write_str(tpath("h.txt"), "abc#");
    expect_error(kvf_corpus_read(tpath("h.txt"), &(kvf_corpus_opts){.tok = tok}, &s), KVF_ERR_ARG,
                 "h.txt: mock tokenizer", NULL);
    kvf_ids_free(&s);
    kvf_tokenizer_free(tok);
    ck_assert_int_eq(mock_destroyed, 1);
}
END_TEST

/* ---- shards -------------------------------------------------------------------------------- */

static int count_files(const char *dir) {
    DIR *d = opendir(dir);
    ck_assert(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.' || (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))) n++;
    closedir(d);
    return n;
}

static void shard_roundtrip(int64_t vocab, int64_t n, int64_t per_shard, int expect_shards,
                            int expect_elem) {
    ck_assert(mkdir(tpath("out"), 0755) == 0);
    int32_t *tok = malloc((size_t)n * sizeof *tok);
    kvf_rng rng;
    kvf_rng_init(&rng, 7);
    for (int64_t i = 0; i < n; i++) tok[i] = (int32_t)kvf_rng_below(&rng, (uint64_t)vocab);
    tok[0] = (int32_t)(vocab - 1);
    tok[1] = 0;
    int shards = -1;
    expect_ok(kvf_shard_write(tpath("out/train"), tok, n, vocab, per_shard, &shards));
    ck_assert_int_eq(shards, expect_shards);
    ck_assert_int_eq(count_files(tpath("out")), expect_shards); /* no temp files left */
    int64_t left = n;
    for (int k = 0; k < shards; k++) {
        char name[64], path[1024];
        snprintf(name, sizeof name, "out/train_%06d.bin", k);
        ck_assert_str_eq(kvf_shard_path(path, sizeof path, tpath("out/train"), k), tpath(name));
        size_t len;
        unsigned char *b = slurp(path, &len);
        int64_t here = left < per_shard ? left : per_shard;
        ck_assert_uint_eq(len, 1024 + (size_t)here * (size_t)expect_elem);
        int32_t h[3];
        memcpy(h, b, sizeof h);
        ck_assert_int_eq(h[0], expect_elem == 2 ? 20240520 : 20240801);
        ck_assert_int_eq(h[1], expect_elem == 2 ? 1 : 7);
        ck_assert_int_eq(h[2], here);
        int nz = 0;
        for (int i = 12; i < 1024; i++) nz += b[i] != 0;
        ck_assert_int_eq(nz, 0);
        free(b);
        left -= here;
    }
    /* read back: the directory (sorted), and the shards one by one */
    kvf_token_stream s = {0};
    expect_ok(kvf_corpus_read(tpath("out"), &(kvf_corpus_opts){0}, &s));
    kvf_ids want = {.data = tok, .count = n, .cap = n};
    expect_same(&s, &want);
    kvf_ids_free(&s);
    expect_ok(kvf_corpus_read(tpath("out/train_000001.bin"), &(kvf_corpus_opts){.max_tokens = 5}, &s));
    ck_assert_int_eq(s.count, 5);
    for (int i = 0; i < 5; i++) ck_assert_int_eq(s.data[i], tok[per_shard + i]);
    kvf_ids_free(&s);
    free(tok);
}

START_TEST(shard_roundtrip_u16) { shard_roundtrip(50257, 2500, 1000, 3, 2); }
END_TEST

START_TEST(shard_roundtrip_u32) { shard_roundtrip(128256, 2100, 700, 3, 4); }
END_TEST

START_TEST(shard_boundaries) {
    /* exactly full shards, the 65536 vocabulary edge (still uint16), streaming adds, no tokens */
    ck_assert_int_eq(kvf_shard_elem_size(65536), 2);
    ck_assert_int_eq(kvf_shard_elem_size(65537), 4);
    int32_t t[6] = {65535, 0, 1, 2, 3, 4};
    kvf_shard_writer *w = kvf_shard_writer_init(tpath("e"), 65536, 3);
    ck_assert(w);
    expect_ok(kvf_shard_writer_add(w, t, 2));
    expect_ok(kvf_shard_writer_add(w, t + 2, 4));
    ck_assert_int_eq(kvf_shard_writer_shards(w), 2);
    expect_ok(kvf_shard_writer_finish(w));
    ck_assert_int_eq(kvf_shard_writer_shards(w), 2);
    ck_assert_int_eq(kvf_shard_writer_tokens(w), 6);
    kvf_shard_writer_free(w);
    kvf_token_stream s = {0};
    const char *p[] = {tpath("e_000000.bin"), tpath("e_000001.bin")};
    expect_ok(kvf_corpus_read_paths(p, 2, &(kvf_corpus_opts){0}, &s));
    ck_assert_int_eq(s.count, 6);
    ck_assert_int_eq(s.data[0], 65535);
    ck_assert_int_eq(s.data[5], 4);
    kvf_ids_free(&s);
    int shards = -1;
    expect_ok(kvf_shard_write(tpath("none"), t, 0, 256, 10, &shards));
    ck_assert_int_eq(shards, 0);
    ck_assert(access(tpath("none_000000.bin"), F_OK) != 0);
    /* a shard's tokens checked against the reading tokenizer's vocabulary */
    kvf_tokenizer *tok = kvf_tokenizer_byte_init(true);
    expect_error(kvf_corpus_read(p[0], &(kvf_corpus_opts){.tok = tok}, &s), KVF_ERR_FORMAT, p[0],
                 "65535");
    kvf_ids_free(&s);
    kvf_tokenizer_free(tok);
}
END_TEST

START_TEST(shard_writer_errors) {
    int32_t t[4] = {1, 2, 300, 3};
    expect_error(kvf_shard_write(tpath("v"), t, 4, 257, 2, NULL), KVF_ERR_ARG, "300", "vocabulary");
    /* the first, complete shard stays; the unfinished one leaves no temp file */
    ck_assert(access(tpath("v_000000.bin"), F_OK) == 0);
    ck_assert_int_eq(count_files(tmpdir), 1);
    expect_error(kvf_shard_write(tpath("nodir/x"), t, 2, 257, 2, NULL), KVF_ERR_IO,
                 tpath("nodir/x_000000.bin"), NULL);
    ck_assert(kvf_shard_writer_init(tpath("y"), 256, 0) == NULL);
    expect_error(kvf_error_code(), KVF_ERR_ARG, "tokens per shard", NULL);
    /* after a failure the writer refuses more work */
    kvf_shard_writer *w = kvf_shard_writer_init(tpath("z"), 10, 5);
    ck_assert(w);
    expect_error(kvf_shard_writer_add(w, (int32_t[]){11}, 1), KVF_ERR_ARG, "11", NULL);
    expect_error(kvf_shard_writer_add(w, (int32_t[]){1}, 1), KVF_ERR_STATE, "earlier", NULL);
    expect_error(kvf_shard_writer_finish(w), KVF_ERR_STATE, "earlier", NULL);
    kvf_shard_writer_free(w);
    ck_assert_int_eq(count_files(tmpdir), 1);
}
END_TEST

static void write_shard_raw(const char *path, int32_t magic, int32_t version, int32_t count,
                            size_t data_bytes, size_t total_bytes) {
    size_t n = total_bytes;
    unsigned char *b = calloc(1, n + 1024 + data_bytes);
    int32_t h[3] = {magic, version, count};
    memcpy(b, h, n < sizeof h ? n : sizeof h);
    for (size_t i = 1024; i < 1024 + data_bytes && i < n; i++) b[i] = (unsigned char)(i % 7);
    write_bytes(path, b, n);
    free(b);
}

START_TEST(shard_corrupt) {
    kvf_token_stream s = {0};
    kvf_corpus_opts o = {0};
    write_shard_raw(tpath("magic.bin"), 12345, 1, 4, 8, 1032);
    expect_error(kvf_corpus_read(tpath("magic.bin"), &o, &s), KVF_ERR_FORMAT, tpath("magic.bin"),
                 "bad magic 12345");
    write_shard_raw(tpath("version.bin"), 20240520, 7, 4, 8, 1032);
    expect_error(kvf_corpus_read(tpath("version.bin"), &o, &s), KVF_ERR_FORMAT,
                 tpath("version.bin"), "version 7");
    write_shard_raw(tpath("version32.bin"), 20240801, 1, 4, 16, 1040);
    expect_error(kvf_corpus_read(tpath("version32.bin"), &o, &s), KVF_ERR_FORMAT,
                 tpath("version32.bin"), "expected version 7");
    write_shard_raw(tpath("short.bin"), 20240520, 1, 4, 0, 500);
    expect_error(kvf_corpus_read(tpath("short.bin"), &o, &s), KVF_ERR_FORMAT, tpath("short.bin"),
                 "1024-byte header, found only 500 bytes");
    write_shard_raw(tpath("trunc.bin"), 20240520, 1, 4, 6, 1030);
    expect_error(kvf_corpus_read(tpath("trunc.bin"), &o, &s), KVF_ERR_FORMAT, tpath("trunc.bin"),
                 "expected 1032 bytes");
    write_shard_raw(tpath("trunc.bin"), 20240520, 1, 4, 6, 1030);
    kvf_corpus_read(tpath("trunc.bin"), &o, &s);
    ck_assert_msg(strstr(kvf_error_message(), "found 1030 bytes"), "%s", kvf_error_message());
    kvf_error_clear();
    write_shard_raw(tpath("long.bin"), 20240801, 7, 4, 20, 1044);
    expect_error(kvf_corpus_read(tpath("long.bin"), &o, &s), KVF_ERR_FORMAT, tpath("long.bin"),
                 "expected 1040 bytes");
    write_shard_raw(tpath("neg.bin"), 20240520, 1, -3, 0, 1024);
    expect_error(kvf_corpus_read(tpath("neg.bin"), &o, &s), KVF_ERR_FORMAT, tpath("neg.bin"),
                 "negative");
    /* the same checks when the size is not known in advance (bytes from memory have one; an
     * archive entry is checked in archive_reads) */
    size_t len;
    unsigned char *b = slurp(tpath("trunc.bin"), &len);
    expect_error(kvf_corpus_read_buffer("mem.bin", b, len, &o, &s), KVF_ERR_FORMAT, "mem.bin",
                 "expected");
    free(b);
    /* a valid empty shard is fine */
    write_shard_raw(tpath("empty.bin"), 20240520, 1, 0, 0, 1024);
    expect_ok(kvf_corpus_read(tpath("empty.bin"), &o, &s));
    ck_assert_int_eq(s.count, 0);
    kvf_ids_free(&s);
}
END_TEST

/* ---- archives ------------------------------------------------------------------------------ */

enum afmt { A_TAR, A_TGZ, A_ZIP };

/* An archive of the files `names` (read from dir `src`), plus a directory entry first. */
static void make_archive(const char *path, enum afmt f, const char *srcdir, const char *const *names,
                         int n) {
    struct archive *a = archive_write_new();
    ck_assert(a);
    if (f == A_ZIP) {
        ck_assert_int_eq(archive_write_set_format_zip(a), ARCHIVE_OK);
    } else {
        ck_assert_int_eq(archive_write_set_format_pax_restricted(a), ARCHIVE_OK);
        if (f == A_TGZ) ck_assert_int_eq(archive_write_add_filter_gzip(a), ARCHIVE_OK);
    }
    ck_assert_msg(archive_write_open_filename(a, path) == ARCHIVE_OK, "%s", archive_error_string(a));
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, "corpus/");
    archive_entry_set_filetype(e, AE_IFDIR);
    archive_entry_set_perm(e, 0755);
    ck_assert_int_eq(archive_write_header(a, e), ARCHIVE_OK);
    archive_entry_free(e);
    for (int i = 0; i < n; i++) {
        char full[1024], ename[256];
        snprintf(full, sizeof full, "%s/%s", srcdir, names[i]);
        snprintf(ename, sizeof ename, "corpus/%s", names[i]);
        size_t len;
        unsigned char *buf = slurp(full, &len);
        e = archive_entry_new();
        archive_entry_set_pathname(e, ename);
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_perm(e, 0644);
        archive_entry_set_size(e, (la_int64_t)len);
        ck_assert_msg(archive_write_header(a, e) == ARCHIVE_OK, "%s", archive_error_string(a));
        ck_assert(archive_write_data(a, buf, len) == (la_ssize_t)len);
        archive_entry_free(e);
        free(buf);
    }
    ck_assert_int_eq(archive_write_close(a), ARCHIVE_OK);
    archive_write_free(a);
}

/* plain/ holds a.txt, b.jsonl, c.bin; returns the stream read from the folder */
static void make_plain(kvf_token_stream *want, const kvf_corpus_opts *o) {
    ck_assert(mkdir(tpath("plain"), 0755) == 0);
    write_str(tpath("plain/a.txt"), "In the beginning\n");
    size_t big_n = 150000; /* several blocks of every format */
    char *big = malloc(big_n + 32);
    int len = snprintf(big, 32, "{\"text\": \"");
    for (size_t i = 0; i < big_n; i++) big[len++] = (char)('A' + (i * 7) % 26);
    len += snprintf(big + len, 32, "\"}\n{\"text\": \"two\"}\n");
    write_bytes(tpath("plain/b.jsonl"), big, (size_t)len);
    free(big);
    int32_t toks[300];
    for (int i = 0; i < 300; i++) toks[i] = (i * 37) % 257;
    expect_ok(kvf_shard_write(tpath("plain/c"), toks, 300, 257, 1000, NULL));
    ck_assert(rename(tpath("plain/c_000000.bin"), tpath("plain/c.bin")) == 0);
    expect_ok(kvf_corpus_read(tpath("plain"), o, want));
    ck_assert_int_eq(want->count, 17 + 1 + (int64_t)big_n + 1 + 3 + 300);
}

START_TEST(archive_reads) {
    kvf_tokenizer *tok = kvf_tokenizer_byte_init(true);
    kvf_corpus_opts o = {.tok = tok};
    kvf_token_stream want = {0};
    make_plain(&want, &o);
    const char *names[] = {"a.txt", "b.jsonl", "c.bin"};
    struct {
        const char *file;
        enum afmt f;
    } cases[] = {{"x.tar", A_TAR}, {"x.tar.gz", A_TGZ}, {"x.tgz", A_TGZ}, {"x.zip", A_ZIP}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        make_archive(tpath(cases[i].file), cases[i].f, tpath("plain"), names, 3);
        kvf_token_stream got = {0};
        expect_ok(kvf_corpus_read(tpath(cases[i].file), &o, &got));
        expect_same(&got, &want);
        kvf_ids_free(&got);
        /* from memory too (no seeking, no known archive size) */
        size_t len;
        unsigned char *b = slurp(tpath(cases[i].file), &len);
        expect_ok(kvf_corpus_read_buffer(cases[i].file, b, len, &o, &got));
        expect_same(&got, &want);
        kvf_ids_free(&got);
        free(b);
    }
    /* an archive inside an archive, and an archive inside a directory */
    ck_assert(mkdir(tpath("nest"), 0755) == 0);
    ck_assert(rename(tpath("x.tar.gz"), tpath("nest/inner.tar.gz")) == 0);
    make_archive(tpath("outer.zip"), A_ZIP, tpath("nest"), (const char *[]){"inner.tar.gz"}, 1);
    kvf_token_stream got = {0};
    expect_ok(kvf_corpus_read(tpath("outer.zip"), &o, &got));
    expect_same(&got, &want);
    kvf_ids_free(&got);
    expect_ok(kvf_corpus_read(tpath("nest"), &o, &got));
    expect_same(&got, &want);
    kvf_ids_free(&got);

    /* a corrupt shard inside an archive names the archive and the entry */
    write_shard_raw(tpath("plain/c.bin"), 20240520, 1, 400, 600, 1624);
    make_archive(tpath("badbin.tar"), A_TAR, tpath("plain"), names, 3);
    expect_error(kvf_corpus_read(tpath("badbin.tar"), &o, &got), KVF_ERR_FORMAT,
                 "badbin.tar:corpus/c.bin", "expected");
    kvf_ids_free(&got);
    kvf_ids_free(&want);
    kvf_tokenizer_free(tok);
}
END_TEST

START_TEST(compressed_single_file) {
    kvf_tokenizer *tok = kvf_tokenizer_byte_init(true);
    kvf_corpus_opts o = {.tok = tok};
    const char *body = "{\"text\": \"one\"}\n{\"text\": \"two\"}\n";
    write_str(tpath("d.jsonl"), body);
    struct archive *a = archive_write_new();
    ck_assert_int_eq(archive_write_set_format_raw(a), ARCHIVE_OK);
    ck_assert_int_eq(archive_write_add_filter_gzip(a), ARCHIVE_OK);
    ck_assert_int_eq(archive_write_open_filename(a, tpath("d.jsonl.gz")), ARCHIVE_OK);
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, "d.jsonl");
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_size(e, (la_int64_t)strlen(body));
    ck_assert_int_eq(archive_write_header(a, e), ARCHIVE_OK);
    ck_assert(archive_write_data(a, body, strlen(body)) == (la_ssize_t)strlen(body));
    archive_entry_free(e);
    ck_assert_int_eq(archive_write_close(a), ARCHIVE_OK);
    archive_write_free(a);
    kvf_token_stream want = {0}, got = {0};
    expect_ok(kvf_corpus_read(tpath("d.jsonl"), &o, &want));
    expect_ok(kvf_corpus_read(tpath("d.jsonl.gz"), &o, &got));
    expect_same(&got, &want);
    ck_assert_int_eq(got.count, 7);
    kvf_ids_free(&want);
    kvf_ids_free(&got);
    kvf_tokenizer_free(tok);
}
END_TEST

START_TEST(archive_truncated) {
    kvf_tokenizer *tok = kvf_tokenizer_byte_init(true);
    kvf_corpus_opts o = {.tok = tok};
    kvf_token_stream want = {0}, got = {0};
    make_plain(&want, &o);
    const char *names[] = {"a.txt", "b.jsonl", "c.bin"};
    make_archive(tpath("t.tar.gz"), A_TGZ, tpath("plain"), names, 3);
    make_archive(tpath("t.zip"), A_ZIP, tpath("plain"), names, 3);
    make_archive(tpath("t.tar"), A_TAR, tpath("plain"), names, 3);
    const char *files[] = {"t.tar.gz", "t.zip", "t.tar"};
    for (int i = 0; i < 3; i++) {
        size_t len;
        unsigned char *b = slurp(tpath(files[i]), &len);
        char cut[64];
        snprintf(cut, sizeof cut, "cut_%s", files[i]);
        write_bytes(tpath(cut), b, len / 2);
        free(b);
        kvf_status s = kvf_corpus_read(tpath(cut), &o, &got);
        ck_assert_msg(s != KVF_OK, "%s: truncated archive read without error", cut);
        ck_assert_msg(strstr(kvf_error_message(), tpath(cut)), "message lacks the archive: %s",
                      kvf_error_message());
        ck_assert_msg(strstr(kvf_error_message(), "corpus/") || strstr(kvf_error_message(), "entry"),
                      "message lacks the entry: %s", kvf_error_message());
        kvf_error_clear();
        kvf_ids_free(&got);
    }
    /* not an archive at all */
    write_str(tpath("junk.zip"), "this is not a zip file at all, just some text.....");
    expect_error(kvf_corpus_read(tpath("junk.zip"), &o, &got), KVF_ERR_FORMAT, tpath("junk.zip"),
                 NULL);
    kvf_ids_free(&got);
    kvf_ids_free(&want);
    kvf_tokenizer_free(tok);
}
END_TEST

/* ---- found by fuzzing (tests/fuzz, docs/fuzzing.md) ------------------------------------------ */

/* A 512-byte ustar header for a regular file `name` of `size` bytes (as the header claims). */
static void ustar_header(unsigned char *h, const char *name, unsigned long long size) {
    memset(h, 0, 512);
    snprintf((char *)h, 100, "%s", name);
    memcpy(h + 100, "0000644", 8);
    memcpy(h + 108, "0000000", 8);
    memcpy(h + 116, "0000000", 8);
    snprintf((char *)h + 124, 12, "%011llo", size);
    memcpy(h + 136, "00000000000", 12);
    h[156] = '0';
    memcpy(h + 257, "ustar", 6);
    memcpy(h + 263, "00", 2);
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++) sum += h[i];
    snprintf((char *)h + 148, 8, "%06o", sum);
}

START_TEST(empty_documents) {
    /* an empty text into an empty (NULL) id array: nothing appended, no pointer arithmetic on NULL */
    kvf_tokenizer *tok = kvf_tokenizer_byte_init(true);
    kvf_ids ids = {0};
    expect_ok(kvf_tokenizer_encode(tok, "", 0, &ids));
    ck_assert_int_eq(ids.count, 0);
    kvf_corpus_opts o = {.tok = tok};
    expect_ok(kvf_corpus_read_buffer("empty.txt", "", 0, &o, &ids));
    ck_assert_int_eq(ids.count, 0);
    kvf_ids_free(&ids);
    kvf_tokenizer_free(tok);
}
END_TEST

START_TEST(header_sizes_are_hints) {
    /* Archive entries whose headers claim 4 GiB (a text file) and a 2^30-token shard, followed by
     * a few real bytes: a truncated archive (KVF_ERR_FORMAT), found without first reserving what
     * the headers claim (it was malloc(4 GiB) / 4 GiB of ids before the read). The address space
     * is limited here so that such an allocation would fail as KVF_ERR_OOM instead. */
    kvf_tokenizer *tok = kvf_tokenizer_byte_init(true);
    kvf_corpus_opts o = {.tok = NULL};
    static unsigned char tar[3 * 512 + 2048];
    for (int k = 0; k < 2; k++) {
        memset(tar, 0, sizeof tar);
        size_t len;
        if (k == 0) {
            ustar_header(tar, "big.txt", 1ull << 32);
            memcpy(tar + 512, "hello", 5);
            len = 1024;
            o.tok = tok;
        } else {
            int64_t count = (int64_t)1 << 30;
            ustar_header(tar, "big.bin", KVF_SHARD_HEADER_BYTES + (unsigned long long)count * 4);
            kvf_shard_make_header(tar + 512, 4, count);
            len = 512 + KVF_SHARD_HEADER_BYTES + 512;
            o.tok = NULL;
        }
#if !defined(__SANITIZE_ADDRESS__)
        struct rlimit old, lim;
        ck_assert_int_eq(getrlimit(RLIMIT_AS, &old), 0);
        long pages = 0;
        FILE *fp = fopen("/proc/self/statm", "r");
        if (fp) {
            if (fscanf(fp, "%ld", &pages) != 1) pages = 0;
            fclose(fp);
        }
        lim = old;
        if (pages > 0) {
            rlim_t cap = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + ((rlim_t)1 << 30);
            if (old.rlim_cur == RLIM_INFINITY || cap < old.rlim_cur) lim.rlim_cur = cap;
            ck_assert_int_eq(setrlimit(RLIMIT_AS, &lim), 0);
        }
#endif
        kvf_ids got = {0};
        kvf_status s = kvf_corpus_read_buffer("claims.tar", tar, len, &o, &got);
#if !defined(__SANITIZE_ADDRESS__)
        setrlimit(RLIMIT_AS, &old);
#endif
        expect_error(s, KVF_ERR_FORMAT, k == 0 ? "claims.tar:big.txt" : "claims.tar:big.bin",
                     "truncated");
        kvf_ids_free(&got);
    }
    kvf_tokenizer_free(tok);
}
END_TEST

/* ---- batcher ------------------------------------------------------------------------------- */

static int32_t *iota_tokens(int64_t n) {
    int32_t *t = malloc((size_t)n * sizeof *t);
    for (int64_t i = 0; i < n; i++) t[i] = (int32_t)(i * 3 + 1);
    return t;
}

START_TEST(batcher_windows) {
    int64_t n = 5000, B = 4, T = 16;
    int32_t *tok = iota_tokens(n);
    kvf_batch_opts o = {.batch_size = B, .seq_len = T, .seed = 42, .val_fraction = 0.1};
    kvf_batcher *a = kvf_batcher_init(tok, n, &o), *b = kvf_batcher_init(tok, n, &o);
    ck_assert(a && b);
    int64_t ntr, nval;
    const int32_t *tr = kvf_batcher_train(a, &ntr), *val = kvf_batcher_val(a, &nval);
    ck_assert_int_eq(nval, 500);
    ck_assert_int_eq(ntr, 4500);
    ck_assert(tr == tok && val == tok + 4500);
    int32_t in[64], tg[64], in2[64], tg2[64];
    int64_t st[4], st2[4];
    bool moved = false;
    for (int step = 0; step < 50; step++) {
        expect_ok(kvf_batcher_next(a, in, tg, st));
        expect_ok(kvf_batcher_next(b, in2, tg2, st2));
        ck_assert(memcmp(in, in2, sizeof in) == 0 && memcmp(tg, tg2, sizeof tg) == 0);
        int bad = 0;
        for (int64_t i = 0; i < B; i++) {
            ck_assert(st[i] >= 0 && st[i] + T + 1 <= ntr); /* inside the training part */
            if (step && st[i] != st[0]) moved = true;
            for (int64_t t = 0; t < T; t++) {
                bad += in[i * T + t] != tok[st[i] + t];
                bad += tg[i * T + t] != tok[st[i] + t + 1];
                if (t + 1 < T) bad += in[i * T + t + 1] != tg[i * T + t]; /* shifted by one */
            }
        }
        ck_assert_int_eq(bad, 0);
    }
    ck_assert(moved);
    /* another seed, other windows */
    o.seed = 43;
    kvf_batcher *c = kvf_batcher_init(tok, n, &o);
    expect_ok(kvf_batcher_next(c, NULL, NULL, st2));
    kvf_batcher_free(a);
    a = kvf_batcher_init(tok, n, &(kvf_batch_opts){.batch_size = B, .seq_len = T, .seed = 42,
                                                   .val_fraction = 0.1});
    expect_ok(kvf_batcher_next(a, NULL, NULL, st));
    ck_assert(memcmp(st, st2, sizeof st) != 0);
    kvf_batcher_free(a);
    kvf_batcher_free(b);
    kvf_batcher_free(c);

    /* every start in [0, n - T - 1] is reachable: a tiny stream covers them all */
    kvf_batcher *tiny = kvf_batcher_init(tok, 8, &(kvf_batch_opts){.batch_size = 1, .seq_len = 5});
    ck_assert(tiny);
    bool seen[3] = {0};
    for (int i = 0; i < 200; i++) {
        expect_ok(kvf_batcher_next(tiny, NULL, NULL, st));
        ck_assert(st[0] >= 0 && st[0] <= 2);
        seen[st[0]] = true;
    }
    ck_assert(seen[0] && seen[1] && seen[2]);
    kvf_batcher_free(tiny);
    free(tok);
}
END_TEST

START_TEST(batcher_resume) {
    int64_t n = 3000, B = 3, T = 8;
    int32_t *tok = iota_tokens(n);
    kvf_batch_opts o = {.batch_size = B, .seq_len = T, .seed = 9, .rank = 1, .world_size = 3};
    kvf_batcher *a = kvf_batcher_init(tok, n, &o);
    int32_t in[24], tg[24], in2[24], tg2[24];
    for (int i = 0; i < 7; i++) expect_ok(kvf_batcher_next(a, in, tg, NULL));
    kvf_batch_state state;
    kvf_batcher_get_state(a, &state);
    ck_assert_int_eq(state.batches, 7);
    ck_assert_int_eq(sizeof state, 88); /* fixed layout, no padding */
    /* through plain bytes on disk */
    write_bytes(tpath("loader.state"), &state, sizeof state);
    size_t len;
    unsigned char *bytes = slurp(tpath("loader.state"), &len);
    ck_assert_uint_eq(len, sizeof state);
    kvf_batch_state back;
    memcpy(&back, bytes, sizeof back);
    free(bytes);
    kvf_batcher *b = kvf_batcher_init(tok, n, &o);
    expect_ok(kvf_batcher_set_state(b, &back));
    for (int i = 0; i < 20; i++) {
        expect_ok(kvf_batcher_next(a, in, tg, NULL));
        expect_ok(kvf_batcher_next(b, in2, tg2, NULL));
        ck_assert(memcmp(in, in2, sizeof in) == 0 && memcmp(tg, tg2, sizeof tg) == 0);
    }
    /* a state from other options or data is refused */
    kvf_batcher *c = kvf_batcher_init(tok, n, &(kvf_batch_opts){.batch_size = B, .seq_len = T, .seed = 10,
                                                                .rank = 1, .world_size = 3});
    expect_error(kvf_batcher_set_state(c, &back), KVF_ERR_STATE, "seed", NULL);
    kvf_batcher_free(c);
    c = kvf_batcher_init(tok, n - 1, &o);
    expect_error(kvf_batcher_set_state(c, &back), KVF_ERR_STATE, "training tokens", NULL);
    kvf_batcher_free(c);
    back.magic = 0;
    expect_error(kvf_batcher_set_state(b, &back), KVF_ERR_STATE, "magic", NULL);
    kvf_batcher_free(a);
    kvf_batcher_free(b);
    free(tok);
}
END_TEST

START_TEST(batcher_ranks) {
    int64_t n = 4000, B = 5, T = 4;
    int W = 3, steps = 6;
    int32_t *tok = iota_tokens(n);
    /* one process drawing B*W windows per step = ranks 0..W-1 with B each, interleaved */
    kvf_batcher *one = kvf_batcher_init(tok, n, &(kvf_batch_opts){.batch_size = B * W, .seq_len = T,
                                                                  .seed = 5});
    int64_t *all = malloc(sizeof(int64_t) * (size_t)(B * W * steps));
    for (int s = 0; s < steps; s++) expect_ok(kvf_batcher_next(one, NULL, NULL, all + s * B * W));
    kvf_batcher_free(one);
    int64_t *taken = calloc((size_t)(B * W * steps), sizeof *taken); /* draw index → rank+1 */
    for (int r = 0; r < W; r++) {
        kvf_batcher *b = kvf_batcher_init(tok, n, &(kvf_batch_opts){.batch_size = B, .seq_len = T,
                                                                    .seed = 5, .rank = r, .world_size = W});
        ck_assert(b);
        int64_t st[5];
        for (int s = 0; s < steps; s++) {
            expect_ok(kvf_batcher_next(b, NULL, NULL, st));
            for (int i = 0; i < B; i++) {
                int64_t g = (int64_t)(s * B + i) * W + r; /* the shared draw this rank takes */
                ck_assert_int_eq(st[i], all[g]);
                ck_assert_int_eq(taken[g], 0); /* no draw taken twice */
                taken[g] = r + 1;
            }
        }
        kvf_batcher_free(b);
    }
    for (int64_t g = 0; g < B * W * steps; g++) ck_assert_int_eq(taken[g], g % W + 1);
    free(taken);
    free(all);
    ck_assert(kvf_batcher_init(tok, n, &(kvf_batch_opts){.batch_size = 1, .seq_len = 4, .rank = 3,
                                                         .world_size = 3}) == NULL);
    expect_error(kvf_error_code(), KVF_ERR_ARG, "rank 3", NULL);
    free(tok);
}
END_TEST

START_TEST(batcher_split_and_errors) {
    int32_t *tok = iota_tokens(100);
    /* stream shorter than T+1 */
    ck_assert(kvf_batcher_init(tok, 16, &(kvf_batch_opts){.batch_size = 1, .seq_len = 16}) == NULL);
    expect_error(kvf_error_code(), KVF_ERR_ARG, "16 tokens", "seq_len + 1 = 17");
    kvf_batcher *b = kvf_batcher_init(tok, 17, &(kvf_batch_opts){.batch_size = 2, .seq_len = 16});
    ck_assert(b);
    int64_t st[2];
    expect_ok(kvf_batcher_next(b, NULL, NULL, st));
    ck_assert(st[0] == 0 && st[1] == 0);
    kvf_batcher_free(b);
    /* a validation tail too short for one window */
    ck_assert(kvf_batcher_init(tok, 100, &(kvf_batch_opts){.batch_size = 1, .seq_len = 16,
                                                           .val_fraction = 0.1}) == NULL);
    expect_error(kvf_error_code(), KVF_ERR_ARG, "validation", "10 tokens");
    /* an explicit validation stream */
    b = kvf_batcher_init(tok, 60, &(kvf_batch_opts){.batch_size = 1, .seq_len = 8,
                                                    .val_tokens = tok + 60, .val_count = 40});
    ck_assert(b);
    int64_t nt, nv;
    kvf_batcher_train(b, &nt);
    ck_assert(kvf_batcher_val(b, &nv) == tok + 60);
    ck_assert(nt == 60 && nv == 40);
    kvf_batcher_free(b);
    ck_assert(kvf_batcher_init(tok, 60, &(kvf_batch_opts){.batch_size = 1, .seq_len = 8, .val_fraction = 0.2,
                                                          .val_tokens = tok + 60, .val_count = 40}) == NULL);
    expect_error(kvf_error_code(), KVF_ERR_ARG, "not both", NULL);
    ck_assert(kvf_batcher_init(tok, 60, &(kvf_batch_opts){.batch_size = 0, .seq_len = 8}) == NULL);
    expect_error(kvf_error_code(), KVF_ERR_ARG, "batch size", NULL);
    /* no validation part */
    b = kvf_batcher_init(tok, 60, &(kvf_batch_opts){.batch_size = 1, .seq_len = 8});
    ck_assert(kvf_batcher_val(b, &nv) == NULL && nv == 0);
    kvf_batcher_free(b);
    free(tok);
}
END_TEST

START_TEST(eval_windows) {
    /* DESIGN.md §8: windows start at 0, W, 2W, ... while start + W + 1 <= N */
    int64_t Ns[] = {0, 1, 5, 8, 9, 10, 16, 17, 100, 101, 1000};
    int64_t Ws[] = {1, 2, 4, 8, 16, 100};
    for (size_t i = 0; i < sizeof Ns / sizeof *Ns; i++) {
        for (size_t j = 0; j < sizeof Ws / sizeof *Ws; j++) {
            int64_t N = Ns[i], W = Ws[j], expect = 0;
            for (int64_t start = 0; start + W + 1 <= N; start += W) expect++;
            ck_assert_msg(kvf_eval_window_count(N, W) == expect, "N=%lld W=%lld: %lld vs %lld",
                          (long long)N, (long long)W, (long long)kvf_eval_window_count(N, W),
                          (long long)expect);
        }
    }
    ck_assert_int_eq(kvf_eval_window_count(101, 10), 10);
    ck_assert_int_eq(kvf_eval_window_count(100, 10), 9);
    ck_assert_int_eq(kvf_eval_window_count(10, 0), 0);
    int32_t *tok = iota_tokens(101);
    int32_t in[30], tg[30];
    expect_ok(kvf_eval_windows(tok, 101, 10, 7, 3, in, tg));
    for (int k = 0; k < 3; k++)
        for (int t = 0; t < 10; t++) {
            ck_assert_int_eq(in[k * 10 + t], tok[(7 + k) * 10 + t]);
            ck_assert_int_eq(tg[k * 10 + t], tok[(7 + k) * 10 + t + 1]);
        }
    ck_assert_int_eq(tg[29], tok[100]); /* the last window predicts the last token */
    expect_error(kvf_eval_windows(tok, 100, 10, 7, 3, in, tg), KVF_ERR_ARG, "9 windows", NULL);
    free(tok);
}
END_TEST

/* ---- shared corpus ------------------------------------------------------------------------- */

START_TEST(kjv_bytes) {
    const char *shared = getenv("KVF_SHARED");
    char path[1024];
    snprintf(path, sizeof path, "%s/data/kjv.txt", shared && *shared ? shared : "../shared");
    struct stat stt;
    if (stat(path, &stt) != 0) {
        fprintf(stderr, "test_data: %s not found, skipping the KJV check\n", path);
        return;
    }
    kvf_tokenizer *raw = kvf_tokenizer_byte_init(false);
    kvf_token_stream s = {0};
    expect_ok(kvf_corpus_read(path, &(kvf_corpus_opts){.tok = raw}, &s));
    ck_assert_int_eq(s.count, (int64_t)stt.st_size);
    ck_assert_int_le(s.cap, s.count); /* no slack kept: memory bounded by the input */
    kvf_bytes back = {0};
    expect_ok(kvf_tokenizer_decode(raw, s.data, s.count, &back));
    size_t len;
    unsigned char *file = slurp(path, &len);
    ck_assert(back.len == len && memcmp(back.data, file, len) == 0);
    free(file);
    kvf_bytes_free(&back);
    kvf_ids_free(&s);
    kvf_tokenizer_free(raw);
}
END_TEST

int main(void) {
    Suite *s = suite_create("data");
    TCase *tc = tcase_create("data");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, byte_tokenizer_roundtrip);
    tcase_add_test(tc, text_reader);
    tcase_add_test(tc, jsonl_reader);
    tcase_add_test(tc, jsonl_errors);
    tcase_add_test(tc, custom_tokenizer);
    tcase_add_test(tc, shard_roundtrip_u16);
    tcase_add_test(tc, shard_roundtrip_u32);
    tcase_add_test(tc, shard_boundaries);
    tcase_add_test(tc, shard_writer_errors);
    tcase_add_test(tc, shard_corrupt);
    tcase_add_test(tc, archive_reads);
    tcase_add_test(tc, compressed_single_file);
    tcase_add_test(tc, archive_truncated);
    tcase_add_test(tc, empty_documents);
    tcase_add_test(tc, header_sizes_are_hints);
    tcase_add_test(tc, batcher_windows);
    tcase_add_test(tc, batcher_resume);
    tcase_add_test(tc, batcher_ranks);
    tcase_add_test(tc, batcher_split_and_errors);
    tcase_add_test(tc, eval_windows);
    tcase_add_test(tc, kjv_bytes);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
