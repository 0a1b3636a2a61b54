/* safetensors reader, writer and model-directory tests: round trips for every dtype (incl. a
 * scalar and a zero-size tensor), header layout and determinism, conversion on read and on
 * write, sharded write + directory open, atomic-write failure, every malformed-file case
 * (each must name the file), and the tiny-llama-mha fixture against its config.json. */
#define _GNU_SOURCE /* nftw */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "autograd/tensor.h"
#include "model/safetensors.h"

static char tmpdir[512];

static void setup(void) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/kvf_st_XXXXXX", base && *base ? base : "/tmp");
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

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    ck_assert_msg(fp, "fopen %s: %s", path, strerror(errno));
    ck_assert(n == 0 || fwrite(p, 1, n, fp) == n);
    ck_assert(fclose(fp) == 0);
}

/* A hand-made safetensors file: 8-byte length (hlen, or the header's real length when
 * hlen == UINT64_MAX), the header text, then data_len bytes 0, 1, 2, ... */
static void write_raw(const char *path, const char *header, size_t data_len, uint64_t hlen) {
    size_t h = strlen(header);
    uint64_t len = hlen == UINT64_MAX ? h : hlen;
    unsigned char *buf = malloc(8 + h + data_len + 1);
    ck_assert(buf);
    memcpy(buf, &len, 8);
    memcpy(buf + 8, header, h);
    for (size_t i = 0; i < data_len; i++) buf[8 + h + i] = (unsigned char)i;
    write_bytes(path, buf, 8 + h + data_len);
    free(buf);
}

static unsigned char *read_all(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    ck_assert_msg(fp, "fopen %s", path);
    fseek(fp, 0, SEEK_END);
    long sz = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)sz + 1);
    ck_assert(b && fread(b, 1, (size_t)sz, fp) == (size_t)sz);
    fclose(fp);
    b[sz] = 0;
    *n = (size_t)sz;
    return b;
}

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static int count_tmp_files(void) {
    DIR *d = opendir(tmpdir);
    ck_assert(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strstr(de->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

static void assert_error(kvf_status code, const char *path, const char *needle) {
    const char *msg = kvf_error_message();
    ck_assert_msg(kvf_error_code() == code, "expected %s, got %s: %s", kvf_status_name(code),
                  kvf_status_name(kvf_error_code()), msg);
    ck_assert_msg(strstr(msg, path), "message does not name %s: %s", path, msg);
    if (needle) ck_assert_msg(strstr(msg, needle), "message lacks \"%s\": %s", needle, msg);
    kvf_error_clear();
}

static void expect_open_error(const char *path, kvf_status code, const char *needle) {
    kvf_error_clear();
    kvf_st_file *f = kvf_st_file_open(path);
    ck_assert_msg(f == NULL, "%s opened but should not", path);
    assert_error(code, path, needle);
}

static void assert_same_tensor(const kvf_st_tensor *t, kvf_dtype dt, int ndim,
                               const int64_t *shape, const void *data, size_t nbytes) {
    ck_assert_ptr_nonnull(t);
    ck_assert_msg(t->dtype == dt, "%s: dtype %d", t->name, t->dtype);
    ck_assert_int_eq(t->ndim, ndim);
    for (int i = 0; i < ndim; i++) ck_assert_int_eq(t->shape[i], shape[i]);
    ck_assert_uint_eq(t->nbytes, nbytes);
    if (nbytes) ck_assert_msg(memcmp(t->data, data, nbytes) == 0, "%s: bytes differ", t->name);
}

/* ---- round trips --------------------------------------------------------------------------- */

static float f32v[6] = {1.5f, -2.25f, 3.0e-8f, 1e30f, -0.0f, 7.0f};
static uint16_t bf16v[5] = {0x3f80, 0xbf80, 0x7f80, 0x0001, 0x4049};
static uint16_t f16v[3] = {0x3c00, 0xc000, 0x7bff};
static int32_t i32v[4] = {0, -1, 2147483647, -2147483647 - 1};
static int64_t i64v[2] = {-5, 4000000000LL};
static double f64v[2] = {3.141592653589793, -1e-300};
static float scalarv = 42.5f;

static void add_all(kvf_st_writer *w, bool reverse) {
    struct {
        const char *name;
        kvf_dtype dt;
        int ndim;
        int64_t shape[4];
        const void *data;
    } e[] = {
        {"w.f32", KVF_DTYPE_F32, 2, {2, 3}, f32v},
        {"w.bf16", KVF_DTYPE_BF16, 1, {5}, bf16v},
        {"w.f16", KVF_DTYPE_F16, 2, {3, 1}, f16v},
        {"ids.i32", KVF_DTYPE_I32, 4, {1, 2, 1, 2}, i32v},
        {"ids.i64", KVF_DTYPE_I64, 1, {2}, i64v},
        {"x.f64", KVF_DTYPE_F64, 1, {2}, f64v},
        {"scalar", KVF_DTYPE_F32, 0, {0}, &scalarv},
        {"empty", KVF_DTYPE_F32, 2, {0, 3}, NULL},
    };
    int n = (int)(sizeof e / sizeof e[0]);
    for (int k = 0; k < n; k++) {
        int i = reverse ? n - 1 - k : k;
        ck_assert_int_eq(kvf_st_writer_add(w, e[i].name, e[i].dt, e[i].ndim, e[i].shape,
                                           e[i].data),
                         KVF_OK);
    }
}

START_TEST(roundtrip_all_dtypes) {
    kvf_st_writer *w = kvf_st_writer_init();
    add_all(w, false);
    ck_assert_int_eq(kvf_st_writer_set_metadata(w, "producer", "kvforge-test"), KVF_OK);
    const char *path = tpath("rt.safetensors");
    ck_assert_int_eq(kvf_st_writer_write(w, path), KVF_OK);
    kvf_st_writer_free(w);
    ck_assert_int_eq(count_tmp_files(), 0);

    kvf_st_file *f = kvf_st_file_open(path);
    ck_assert_msg(f, "%s", kvf_error_message());
    ck_assert_str_eq(kvf_st_file_path(f), path);
    ck_assert_uint_eq(kvf_st_file_count(f), 8);
    ck_assert_str_eq(kvf_st_file_metadata(f, "format"), "pt");
    ck_assert_str_eq(kvf_st_file_metadata(f, "producer"), "kvforge-test");
    ck_assert_ptr_null(kvf_st_file_metadata(f, "nope"));
    ck_assert_uint_eq(kvf_st_file_metadata_count(f), 2);
    assert_same_tensor(kvf_st_file_find(f, "w.f32"), KVF_DTYPE_F32, 2, (int64_t[]){2, 3}, f32v,
                       sizeof f32v);
    assert_same_tensor(kvf_st_file_find(f, "w.bf16"), KVF_DTYPE_BF16, 1, (int64_t[]){5}, bf16v,
                       sizeof bf16v);
    assert_same_tensor(kvf_st_file_find(f, "w.f16"), KVF_DTYPE_F16, 2, (int64_t[]){3, 1}, f16v,
                       sizeof f16v);
    assert_same_tensor(kvf_st_file_find(f, "ids.i32"), KVF_DTYPE_I32, 4,
                       (int64_t[]){1, 2, 1, 2}, i32v, sizeof i32v);
    assert_same_tensor(kvf_st_file_find(f, "ids.i64"), KVF_DTYPE_I64, 1, (int64_t[]){2}, i64v,
                       sizeof i64v);
    assert_same_tensor(kvf_st_file_find(f, "x.f64"), KVF_DTYPE_F64, 1, (int64_t[]){2}, f64v,
                       sizeof f64v);
    const kvf_st_tensor *sc = kvf_st_file_find(f, "scalar");
    assert_same_tensor(sc, KVF_DTYPE_F32, 0, NULL, &scalarv, 4);
    ck_assert_int_eq(sc->numel, 1);
    const kvf_st_tensor *em = kvf_st_file_find(f, "empty");
    assert_same_tensor(em, KVF_DTYPE_F32, 2, (int64_t[]){0, 3}, NULL, 0);
    ck_assert_int_eq(em->numel, 0);
    ck_assert_ptr_null(kvf_st_file_find(f, "missing"));
    ck_assert(!kvf_error_pending());
    const kvf_st_tensor *t;
    ck_assert_int_eq(kvf_st_file_get(f, "missing", &t), KVF_ERR_ARG);
    assert_error(KVF_ERR_ARG, path, "missing");
    /* iteration is in name order */
    for (size_t i = 1; i < kvf_st_file_count(f); i++)
        ck_assert(strcmp(kvf_st_file_tensor(f, i - 1)->name, kvf_st_file_tensor(f, i)->name) < 0);
    ck_assert_ptr_null(kvf_st_file_tensor(f, 8));
    /* conversion on use: a scalar and an empty tensor load fine */
    kvf_tensor *s32 = kvf_st_tensor_load_owned(sc, KVF_DTYPE_F64);
    ck_assert_ptr_nonnull(s32);
    ck_assert_double_eq(kvf_tensor_get_flat(s32, 0), 42.5);
    kvf_tensor_free_owned(s32);
    kvf_tensor *e0 = kvf_st_tensor_load_owned(em, KVF_DTYPE_F32);
    ck_assert_ptr_nonnull(e0);
    kvf_tensor_free_owned(e0);
    kvf_st_file_close(f);
}
END_TEST

START_TEST(header_layout_deterministic) {
    const char *p1 = tpath("a.safetensors"), *p2 = tpath("b.safetensors");
    kvf_st_writer *w = kvf_st_writer_init();
    add_all(w, false);
    ck_assert_int_eq(kvf_st_writer_write(w, p1), KVF_OK);
    kvf_st_writer_free(w);
    w = kvf_st_writer_init();
    add_all(w, true);
    ck_assert_int_eq(kvf_st_writer_write(w, p2), KVF_OK);
    ck_assert_uint_eq(kvf_st_writer_count(w), 8);
    uint64_t data_bytes = kvf_st_writer_data_bytes(w);
    kvf_st_writer_free(w);

    size_t n1, n2;
    unsigned char *b1 = read_all(p1, &n1), *b2 = read_all(p2, &n2);
    ck_assert_uint_eq(n1, n2);
    ck_assert_msg(memcmp(b1, b2, n1) == 0, "output depends on the order of add calls");
    uint64_t hl;
    memcpy(&hl, b1, 8);
    ck_assert_uint_eq(hl % 8, 0);
    ck_assert_uint_eq(n1, 8 + hl + data_bytes);
    const char *expect = "{\"__metadata__\":{\"format\":\"pt\"}";
    ck_assert_msg(memcmp(b1 + 8, expect, strlen(expect)) == 0, "header starts %.40s", b1 + 8);
    /* padding is spaces after the closing brace */
    size_t end = 8 + (size_t)hl;
    while (end > 8 && b1[end - 1] == ' ') end--;
    ck_assert_int_eq(b1[end - 1], '}');
    ck_assert_uint_lt(8 + hl - end, 8);
    /* data contiguous in writer order: larger elements first, then by name, so each tensor
     * starts aligned to its element size */
    kvf_st_file *f = kvf_st_file_open(p1);
    ck_assert_ptr_nonnull(f);
    size_t n = kvf_st_file_count(f);
    const kvf_st_tensor *order[16];
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (kvf_st_file_tensor(f, i)->nbytes) order[k++] = kvf_st_file_tensor(f, i);
    for (size_t a = 1; a < k; a++) /* insertion sort by offset */
        for (size_t b = a; b > 0 && order[b]->offset < order[b - 1]->offset; b--) {
            const kvf_st_tensor *tmp = order[b];
            order[b] = order[b - 1];
            order[b - 1] = tmp;
        }
    uint64_t off = 0;
    for (size_t i = 0; i < k; i++) {
        const kvf_st_tensor *t = order[i];
        size_t es = kvf_dtype_size(t->dtype);
        ck_assert_msg(t->offset == off, "%s at %llu, expected %llu", t->name,
                      (unsigned long long)t->offset, (unsigned long long)off);
        ck_assert_uint_eq(t->offset % es, 0);
        if (i) ck_assert_uint_le(es, kvf_dtype_size(order[i - 1]->dtype));
        ck_assert(memcmp(t->data, b1 + 8 + hl + off, t->nbytes) == 0);
        off += t->nbytes;
    }
    ck_assert_uint_eq(off, data_bytes);
    kvf_st_file_close(f);
    free(b1);
    free(b2);
}
END_TEST

START_TEST(convert_on_write_and_read) {
    enum { N = 37 };
    float src[N];
    for (int i = 0; i < N; i++) src[i] = (float)(i - 18) * 0.3337f + 1e-3f * (float)(i * i);
    int64_t shape[2] = {1, N};
    int64_t big[3] = {1, 5000000000LL, 7};
    kvf_st_writer *w = kvf_st_writer_init();
    ck_assert_int_eq(kvf_st_writer_add_as(w, "bf", KVF_DTYPE_BF16, 2, shape, KVF_DTYPE_F32, src),
                     KVF_OK);
    ck_assert_int_eq(kvf_st_writer_add_as(w, "hf", KVF_DTYPE_F16, 2, shape, KVF_DTYPE_F32, src),
                     KVF_OK);
    ck_assert_int_eq(kvf_st_writer_add_as(w, "df", KVF_DTYPE_F64, 2, shape, KVF_DTYPE_F32, src),
                     KVF_OK);
    kvf_tensor *t = kvf_tensor_init_owned(KVF_DTYPE_F32, 2, shape);
    memcpy(kvf_tensor_data(t), src, sizeof src);
    ck_assert_int_eq(kvf_st_writer_add_tensor(w, "tensor_bf", t, KVF_DTYPE_BF16), KVF_OK);
    int64_t ids[3] = {1, -2, 3000000000LL};
    ck_assert_int_eq(kvf_st_writer_add(w, "ids", KVF_DTYPE_I64, 1, (int64_t[]){3}, ids), KVF_OK);
    /* bad adds */
    ck_assert_int_eq(kvf_st_writer_add(w, "bf", KVF_DTYPE_F32, 2, shape, src), KVF_ERR_ARG);
    kvf_error_clear();
    ck_assert_int_eq(kvf_st_writer_add(w, "__metadata__", KVF_DTYPE_F32, 2, shape, src),
                     KVF_ERR_ARG);
    kvf_error_clear();
    ck_assert_int_eq(kvf_st_writer_add_as(w, "x", KVF_DTYPE_I32, 2, shape, KVF_DTYPE_F32, src),
                     KVF_ERR_DTYPE);
    kvf_error_clear();
    ck_assert_int_eq(kvf_st_writer_add(w, "x", KVF_DTYPE_F32, 5, big, src), KVF_ERR_SHAPE);
    kvf_error_clear();
    ck_assert_int_eq(kvf_st_writer_add(w, "x", KVF_DTYPE_F32, 2, (int64_t[]){2, -1}, src),
                     KVF_ERR_SHAPE);
    kvf_error_clear();
    ck_assert_int_eq(kvf_st_writer_add(w, "x", KVF_DTYPE_F32, 2, shape, NULL), KVF_ERR_ARG);
    kvf_error_clear();
    ck_assert_int_eq(kvf_st_writer_add(w, "bad\xff", KVF_DTYPE_F32, 2, shape, src), KVF_ERR_ARG);
    kvf_error_clear();
    const char *path = tpath("conv.safetensors");
    ck_assert_int_eq(kvf_st_writer_write(w, path), KVF_OK);
    kvf_st_writer_free(w);
    kvf_tensor_free_owned(t);

    kvf_st_file *f = kvf_st_file_open(path);
    ck_assert_msg(f, "%s", kvf_error_message());
    const kvf_st_tensor *bf = kvf_st_file_find(f, "bf"), *hf = kvf_st_file_find(f, "hf"),
                        *df = kvf_st_file_find(f, "df"), *tb = kvf_st_file_find(f, "tensor_bf");
    ck_assert(bf->dtype == KVF_DTYPE_BF16 && hf->dtype == KVF_DTYPE_F16 &&
              df->dtype == KVF_DTYPE_F64 && tb->dtype == KVF_DTYPE_BF16);
    ck_assert_int_eq(memcmp(bf->data, tb->data, bf->nbytes), 0);
    float got[N];
    double gotd[N];
    ck_assert_int_eq(kvf_st_tensor_read(bf, KVF_DTYPE_F32, got, sizeof got), KVF_OK);
    for (int i = 0; i < N; i++) {
        uint16_t raw;
        memcpy(&raw, (const char *)bf->data + 2 * i, 2);
        ck_assert_uint_eq(raw, kvf_f32_to_bf16(src[i]));
        ck_assert_float_eq(got[i], kvf_bf16_to_f32(kvf_f32_to_bf16(src[i])));
    }
    ck_assert_int_eq(kvf_st_tensor_read(hf, KVF_DTYPE_F64, gotd, sizeof gotd), KVF_OK);
    for (int i = 0; i < N; i++)
        ck_assert_double_eq(gotd[i], kvf_f16_to_f32(kvf_f32_to_f16(src[i])));
    /* into a kvf_tensor of the same shape, f32 and f64 */
    kvf_tensor *d32 = kvf_tensor_init_owned(KVF_DTYPE_F32, 2, shape);
    ck_assert_int_eq(kvf_st_tensor_load(df, d32), KVF_OK);
    ck_assert_int_eq(memcmp(kvf_tensor_data(d32), src, sizeof src), 0);
    kvf_tensor *wrong = kvf_tensor_init_owned(KVF_DTYPE_F32, 2, (int64_t[]){N, 1});
    ck_assert_int_eq(kvf_st_tensor_load(df, wrong), KVF_ERR_SHAPE);
    assert_error(KVF_ERR_SHAPE, path, "'df'");
    ck_assert_int_eq(kvf_st_tensor_read(bf, KVF_DTYPE_F32, got, sizeof got - 1), KVF_ERR_ARG);
    assert_error(KVF_ERR_ARG, path, NULL);
    /* ints: i64 -> i32 range-checked, float <-> int refused */
    const kvf_st_tensor *it = kvf_st_file_find(f, "ids");
    int32_t i32[3];
    ck_assert_int_eq(kvf_st_tensor_read(it, KVF_DTYPE_I32, i32, sizeof i32), KVF_ERR_NUMERIC);
    assert_error(KVF_ERR_NUMERIC, path, "3000000000");
    ck_assert_int_eq(kvf_st_tensor_read(it, KVF_DTYPE_F32, got, sizeof got), KVF_ERR_DTYPE);
    assert_error(KVF_ERR_DTYPE, path, "'ids'");
    ck_assert_ptr_null(kvf_st_tensor_load_owned(bf, KVF_DTYPE_I64));
    assert_error(KVF_ERR_DTYPE, path, NULL);
    kvf_tensor *i64t = kvf_st_tensor_load_owned(it, KVF_DTYPE_I64);
    ck_assert_ptr_nonnull(i64t);
    ck_assert_double_eq(kvf_tensor_get_flat(i64t, 2), 3000000000.0);
    kvf_tensor_free_owned(i64t);
    kvf_tensor_free_owned(d32);
    kvf_tensor_free_owned(wrong);
    kvf_st_file_close(f);
}
END_TEST

START_TEST(misaligned_tensor_reads) {
    /* the writer puts F32 before BF16, so both are aligned; read both with conversion */
    uint16_t a[3] = {0x3f80, 0x4000, 0x4040};
    float b[4] = {1, 2, 3, 4};
    kvf_st_writer *w = kvf_st_writer_init();
    ck_assert_int_eq(kvf_st_writer_add(w, "a", KVF_DTYPE_BF16, 1, (int64_t[]){3}, a), KVF_OK);
    ck_assert_int_eq(kvf_st_writer_add(w, "b", KVF_DTYPE_F32, 1, (int64_t[]){4}, b), KVF_OK);
    const char *path = tpath("mis.safetensors");
    ck_assert_int_eq(kvf_st_writer_write(w, path), KVF_OK);
    kvf_st_writer_free(w);
    kvf_st_file *f = kvf_st_file_open(path);
    ck_assert_ptr_nonnull(f);
    const kvf_st_tensor *tb = kvf_st_file_find(f, "b"), *ta = kvf_st_file_find(f, "a");
    ck_assert_uint_eq(tb->offset, 0);
    ck_assert_uint_eq(ta->offset, 16);
    double gota[3];
    ck_assert_int_eq(kvf_st_tensor_read(ta, KVF_DTYPE_F64, gota, sizeof gota), KVF_OK);
    ck_assert_double_eq(gota[2], 3.0);
    double got[4];
    ck_assert_int_eq(kvf_st_tensor_read(tb, KVF_DTYPE_F64, got, sizeof got), KVF_OK);
    for (int i = 0; i < 4; i++) ck_assert_double_eq(got[i], b[i]);
    kvf_st_file_close(f);
}
END_TEST

START_TEST(empty_model_file) {
    /* no tensors at all: header "{}" and nothing else is a valid file */
    const char *path = tpath("none.safetensors");
    write_raw(path, "{}      ", 0, UINT64_MAX);
    kvf_st_file *f = kvf_st_file_open(path);
    ck_assert_msg(f, "%s", kvf_error_message());
    ck_assert_uint_eq(kvf_st_file_count(f), 0);
    ck_assert_uint_eq(kvf_st_file_metadata_count(f), 0);
    kvf_st_file_close(f);
    /* and the writer makes one */
    kvf_st_writer *w = kvf_st_writer_init();
    ck_assert_int_eq(kvf_st_writer_write(w, path), KVF_OK);
    kvf_st_writer_free(w);
    f = kvf_st_file_open(path);
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(kvf_st_file_count(f), 0);
    kvf_st_file_close(f);
}
END_TEST

/* ---- sharded ------------------------------------------------------------------------------- */

enum { NT = 7, NE = 100 };
static float shard_data[NT][NE];

static kvf_st_writer *make_shard_writer(void) {
    kvf_st_writer *w = kvf_st_writer_init();
    for (int k = 0; k < NT; k++) {
        for (int i = 0; i < NE; i++) shard_data[k][i] = (float)(k * 1000 + i) * 0.5f;
        char name[64];
        snprintf(name, sizeof name, "model.layers.%d.weight", k);
        /* one bf16 tensor, the rest f32: 400 bytes each, the bf16 one 200 */
        if (k == 3)
            ck_assert_int_eq(kvf_st_writer_add_as(w, name, KVF_DTYPE_BF16, 2,
                                                  (int64_t[]){10, NE / 10}, KVF_DTYPE_F32,
                                                  shard_data[k]),
                             KVF_OK);
        else
            ck_assert_int_eq(kvf_st_writer_add(w, name, KVF_DTYPE_F32, 2,
                                               (int64_t[]){10, NE / 10}, shard_data[k]),
                             KVF_OK);
    }
    return w;
}

static void check_dir_tensors(kvf_st_dir *d) {
    ck_assert_uint_eq(kvf_st_dir_count(d), NT);
    for (int k = 0; k < NT; k++) {
        char name[64];
        snprintf(name, sizeof name, "model.layers.%d.weight", k);
        const kvf_st_tensor *t;
        ck_assert_int_eq(kvf_st_dir_get(d, name, &t), KVF_OK);
        ck_assert_int_eq(t->ndim, 2);
        ck_assert_int_eq(t->shape[0], 10);
        ck_assert_int_eq(t->shape[1], NE / 10);
        if (k == 3) {
            ck_assert(t->dtype == KVF_DTYPE_BF16);
            for (int i = 0; i < NE; i++) {
                uint16_t raw;
                memcpy(&raw, (const char *)t->data + 2 * i, 2);
                ck_assert_uint_eq(raw, kvf_f32_to_bf16(shard_data[k][i]));
            }
        } else {
            ck_assert(t->dtype == KVF_DTYPE_F32);
            ck_assert_int_eq(memcmp(t->data, shard_data[k], sizeof shard_data[k]), 0);
        }
    }
}

START_TEST(sharded_roundtrip) {
    kvf_st_writer *w = make_shard_writer();
    /* F32 first: 0,1,2 (400 each) | 4,5,6 | then BF16 3 (200), max 1200 -> 3 shards */
    ck_assert_int_eq(kvf_st_writer_write_sharded(w, tmpdir, 1200), KVF_OK);
    for (int i = 1; i <= 3; i++) {
        char name[64];
        snprintf(name, sizeof name, "model-%05d-of-00003.safetensors", i);
        ck_assert_msg(file_exists(tpath(name)), "%s missing", name);
    }
    ck_assert(!file_exists(tpath("model.safetensors")));
    ck_assert_int_eq(count_tmp_files(), 0);
    /* the index */
    json_error_t err;
    json_t *idx = json_load_file(tpath("model.safetensors.index.json"), 0, &err);
    ck_assert_msg(idx, "index: %s", err.text);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(idx, "metadata"),
                                                        "total_size")),
                     6 * 400 + 200);
    json_t *wm = json_object_get(idx, "weight_map");
    ck_assert_uint_eq(json_object_size(wm), NT);
    ck_assert_str_eq(json_string_value(json_object_get(wm, "model.layers.0.weight")),
                     "model-00001-of-00003.safetensors");
    ck_assert_str_eq(json_string_value(json_object_get(wm, "model.layers.6.weight")),
                     "model-00002-of-00003.safetensors");
    ck_assert_str_eq(json_string_value(json_object_get(wm, "model.layers.3.weight")),
                     "model-00003-of-00003.safetensors");
    json_decref(idx);

    kvf_st_dir *d = kvf_st_dir_open(tmpdir);
    ck_assert_msg(d, "%s", kvf_error_message());
    ck_assert_uint_eq(kvf_st_dir_shard_count(d), 3);
    check_dir_tensors(d);
    const kvf_st_tensor *none;
    ck_assert_int_eq(kvf_st_dir_get(d, "nope", &none), KVF_ERR_ARG);
    assert_error(KVF_ERR_ARG, tpath("model.safetensors.index.json"), "nope");
    for (size_t i = 0; i < 3; i++)
        ck_assert_str_eq(kvf_st_file_metadata(kvf_st_dir_shard(d, i), "format"), "pt");
    kvf_st_dir_close(d);

    /* saving again with everything in one shard: model.safetensors, the old index and
     * shards gone */
    ck_assert_int_eq(kvf_st_writer_write_sharded(w, tmpdir, 1 << 20), KVF_OK);
    ck_assert(file_exists(tpath("model.safetensors")));
    ck_assert(!file_exists(tpath("model.safetensors.index.json")));
    ck_assert(!file_exists(tpath("model-00001-of-00003.safetensors")));
    d = kvf_st_dir_open(tmpdir);
    ck_assert_msg(d, "%s", kvf_error_message());
    ck_assert_uint_eq(kvf_st_dir_shard_count(d), 1);
    check_dir_tensors(d);
    kvf_st_dir_close(d);

    /* and back to shards of one tensor each (max below one tensor): 7 shards */
    ck_assert_int_eq(kvf_st_writer_write_sharded(w, tmpdir, 1), KVF_OK);
    ck_assert(!file_exists(tpath("model.safetensors")));
    ck_assert(file_exists(tpath("model-00007-of-00007.safetensors")));
    d = kvf_st_dir_open(tmpdir);
    ck_assert_msg(d, "%s", kvf_error_message());
    ck_assert_uint_eq(kvf_st_dir_shard_count(d), 7);
    check_dir_tensors(d);
    kvf_st_dir_close(d);
    kvf_st_writer_free(w);
}
END_TEST

START_TEST(dir_errors) {
    /* no model at all */
    ck_assert_ptr_null(kvf_st_dir_open(tmpdir));
    assert_error(KVF_ERR_IO, tmpdir, "model.safetensors");

    kvf_st_writer *w = make_shard_writer();
    ck_assert_int_eq(kvf_st_writer_write_sharded(w, tmpdir, 1200), KVF_OK);
    kvf_st_writer_free(w);
    const char *idx = tpath("model.safetensors.index.json");
    size_t n;
    unsigned char *good = read_all(idx, &n);

    /* index pointing at a missing shard */
    const char *missing =
        "{\"metadata\":{},\"weight_map\":{\"model.layers.0.weight\":"
        "\"model-00001-of-00003.safetensors\",\"extra\":\"gone.safetensors\"}}";
    write_bytes(idx, missing, strlen(missing));
    ck_assert_ptr_null(kvf_st_dir_open(tmpdir));
    assert_error(KVF_ERR_IO, tpath("gone.safetensors"), "model.safetensors.index.json");

    /* a tensor missing from its shard */
    const char *absent = "{\"weight_map\":{\"model.layers.0.weight\":"
                         "\"model-00002-of-00003.safetensors\"}}";
    write_bytes(idx, absent, strlen(absent));
    ck_assert_ptr_null(kvf_st_dir_open(tmpdir));
    assert_error(KVF_ERR_FORMAT, idx, "model-00002-of-00003.safetensors");

    /* a name in two shards: copy shard 1 as an extra shard */
    size_t sn;
    unsigned char *s1 = read_all(tpath("model-00001-of-00003.safetensors"), &sn);
    write_bytes(tpath("copy.safetensors"), s1, sn);
    free(s1);
    const char *twice = "{\"weight_map\":{\"model.layers.0.weight\":"
                        "\"model-00001-of-00003.safetensors\",\"model.layers.1.weight\":"
                        "\"copy.safetensors\"}}";
    write_bytes(idx, twice, strlen(twice));
    ck_assert_ptr_null(kvf_st_dir_open(tmpdir));
    assert_error(KVF_ERR_FORMAT, idx, "two shards");

    /* broken index JSON, a non-object weight_map, a path instead of a file name */
    write_bytes(idx, "{\"weight_map\": {", 16);
    ck_assert_ptr_null(kvf_st_dir_open(tmpdir));
    assert_error(KVF_ERR_FORMAT, idx, "line 1");
    write_bytes(idx, "{\"weight_map\": []}", 18);
    ck_assert_ptr_null(kvf_st_dir_open(tmpdir));
    assert_error(KVF_ERR_FORMAT, idx, "weight_map");
    const char *escape = "{\"weight_map\":{\"a\":\"../x.safetensors\"}}";
    write_bytes(idx, escape, strlen(escape));
    ck_assert_ptr_null(kvf_st_dir_open(tmpdir));
    assert_error(KVF_ERR_FORMAT, idx, "../x.safetensors");

    /* a malformed shard is reported with the shard's path */
    write_bytes(idx, good, n);
    write_bytes(tpath("model-00002-of-00003.safetensors"), "abc", 3);
    ck_assert_ptr_null(kvf_st_dir_open(tmpdir));
    assert_error(KVF_ERR_FORMAT, tpath("model-00002-of-00003.safetensors"), "8-byte");
    free(good);
}
END_TEST

/* ---- write failures ------------------------------------------------------------------------ */

START_TEST(write_failure_cleans_up) {
    static float big[64 * 1024]; /* 256 KiB */
    kvf_st_writer *w = kvf_st_writer_init();
    ck_assert_int_eq(kvf_st_writer_add(w, "big", KVF_DTYPE_F32, 1, (int64_t[]){64 * 1024}, big),
                     KVF_OK);
    /* a directory that does not exist */
    const char *nodir = tpath("no/such/dir/model.safetensors");
    ck_assert_int_eq(kvf_st_writer_write(w, nodir), KVF_ERR_IO);
    assert_error(KVF_ERR_IO, nodir, "No such file");

    /* a full disk, simulated by a file size limit: writes fail with EFBIG */
    const char *path = tpath("full.safetensors");
    struct rlimit old, lim;
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 64 * 1024;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    kvf_status s = kvf_st_writer_write(w, path);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    ck_assert_int_eq(s, KVF_ERR_IO);
    assert_error(KVF_ERR_IO, path, "too large");
    ck_assert(!file_exists(path));
    ck_assert_int_eq(count_tmp_files(), 0);

    /* an existing file survives a failed overwrite */
    float one = 1.0f;
    kvf_st_writer *w1 = kvf_st_writer_init();
    ck_assert_int_eq(kvf_st_writer_add(w1, "one", KVF_DTYPE_F32, 0, NULL, &one), KVF_OK);
    ck_assert_int_eq(kvf_st_writer_write(w1, path), KVF_OK);
    kvf_st_writer_free(w1);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    signal(SIGXFSZ, SIG_IGN);
    s = kvf_st_writer_write(w, path);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    ck_assert_int_eq(s, KVF_ERR_IO);
    kvf_error_clear();
    kvf_st_file *f = kvf_st_file_open(path);
    ck_assert_msg(f, "%s", kvf_error_message());
    ck_assert_ptr_nonnull(kvf_st_file_find(f, "one"));
    kvf_st_file_close(f);
    ck_assert_int_eq(count_tmp_files(), 0);
    kvf_st_writer_free(w);
}
END_TEST

/* ---- malformed files ----------------------------------------------------------------------- */

struct bad_case {
    const char *what;
    const char *header;
    size_t data_len;
    uint64_t hlen; /* UINT64_MAX: the header's real length */
    kvf_status code;
    const char *needle;
};

#define REAL UINT64_MAX
#define T1 "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"
static const struct bad_case bad_cases[] = {
    {"lying header length", "{" T1 "}", 8, 5000, KVF_ERR_FORMAT, "larger than the file"},
    {"broken JSON", "{\"a\":{\"dtype\":\"F32\",\n\"shape\":[2]", 8, REAL, KVF_ERR_FORMAT,
     "line 2"},
    {"header not an object", "[1, 2]", 0, REAL, KVF_ERR_FORMAT, "not a JSON object"},
    {"entry not an object", "{\"a\":[1]}", 0, REAL, KVF_ERR_FORMAT, "'a' is an array"},
    {"missing dtype", "{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, REAL, KVF_ERR_FORMAT,
     "no \"dtype\""},
    {"missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, REAL,
     KVF_ERR_FORMAT, "no \"shape\""},
    {"missing data_offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, REAL, KVF_ERR_FORMAT,
     "no \"data_offsets\""},
    {"dtype not a string", "{\"a\":{\"dtype\":32,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, REAL,
     KVF_ERR_FORMAT, "\"dtype\" is an integer"},
    {"shape not an array", "{\"a\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}", 8,
     REAL, KVF_ERR_FORMAT, "\"shape\" is a string"},
    {"negative shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
     REAL, KVF_ERR_FORMAT, "negative"},
    {"non-integer shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8,
     REAL, KVF_ERR_FORMAT, "a real number"},
    {"data_offsets of 3", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4,8]}}", 8,
     REAL, KVF_ERR_FORMAT, "has 3 entries"},
    {"data_offsets not integers",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[\"0\",8]}}", 8, REAL,
     KVF_ERR_FORMAT, "data_offsets[0] is a string"},
    {"begin > end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8, REAL,
     KVF_ERR_FORMAT, "begin > end"},
    {"end beyond data", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
     REAL, KVF_ERR_FORMAT, "beyond the data section"},
    {"truncated data", "{" T1 "}", 5, REAL, KVF_ERR_FORMAT, "beyond the data section"},
    {"wrong dtype size", "{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
     REAL, KVF_ERR_FORMAT, "needs 4 bytes"},
    {"overlap",
     "{" T1 ",\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, REAL,
     KVF_ERR_FORMAT, "overlap"},
    {"hole", "{" T1 ",\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}", 16, REAL,
     KVF_ERR_FORMAT, "bytes [8, 12)"},
    {"trailing bytes", "{" T1 "}", 12, REAL, KVF_ERR_FORMAT, "bytes [8, 12)"},
    {"unsupported dtype", "{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[8],\"data_offsets\":[0,8]}}",
     8, REAL, KVF_ERR_UNSUPPORTED, "'a' has dtype F8_E4M3"},
    {"bool dtype", "{\"mask\":{\"dtype\":\"BOOL\",\"shape\":[8],\"data_offsets\":[0,8]}}", 8, REAL,
     KVF_ERR_UNSUPPORTED, "'mask' has dtype BOOL"},
    {"unknown dtype", "{\"a\":{\"dtype\":\"F99\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, REAL,
     KVF_ERR_FORMAT, "unknown dtype \"F99\""},
    {"rank 5", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,2],\"data_offsets\":[0,8]}}", 8,
     REAL, KVF_ERR_UNSUPPORTED, "rank 5"},
    {"duplicate names", "{" T1 "," T1 "}", 8, REAL, KVF_ERR_FORMAT, "duplicate"},
    {"metadata value not a string", "{\"__metadata__\":{\"format\":\"pt\",\"step\":3}," T1 "}", 8,
     REAL, KVF_ERR_FORMAT, "\"step\" is an integer"},
    {"metadata not an object", "{\"__metadata__\":\"pt\"," T1 "}", 8, REAL, KVF_ERR_FORMAT,
     "__metadata__"},
    {"shape overflow",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8,
     REAL, KVF_ERR_FORMAT, "overflows"},
    {"NUL in header", "{" T1 "}\0\0", 8, REAL, KVF_ERR_FORMAT, "not valid JSON"},
};

START_TEST(malformed_file) {
    const struct bad_case *c = &bad_cases[_i];
    const char *path = tpath("bad.safetensors");
    if (strcmp(c->what, "NUL in header") == 0) {
        /* strlen stops at the NUL: write the padding by hand */
        char hdr[128];
        size_t h = strlen(c->header);
        memcpy(hdr, c->header, h);
        hdr[h] = hdr[h + 1] = '\0';
        unsigned char buf[256];
        uint64_t len = h + 2;
        memcpy(buf, &len, 8);
        memcpy(buf + 8, hdr, h + 2);
        memset(buf + 8 + h + 2, 0, 8);
        write_bytes(path, buf, 8 + h + 2 + 8);
    } else {
        write_raw(path, c->header, c->data_len, c->hlen);
    }
    kvf_error_clear();
    ck_assert_msg(kvf_st_file_open(path) == NULL, "case '%s' opened", c->what);
    const char *msg = kvf_error_message();
    ck_assert_msg(kvf_error_code() == c->code, "case '%s': expected %s, got %s: %s", c->what,
                  kvf_status_name(c->code), kvf_status_name(kvf_error_code()), msg);
    ck_assert_msg(strstr(msg, path), "case '%s': message does not name the file: %s", c->what,
                  msg);
    ck_assert_msg(strstr(msg, c->needle), "case '%s': message lacks \"%s\": %s", c->what,
                  c->needle, msg);
}
END_TEST

START_TEST(short_files) {
    const char *path = tpath("short.safetensors");
    write_bytes(path, "", 0);
    expect_open_error(path, KVF_ERR_FORMAT, "empty");
    write_bytes(path, "\x10\0\0\0\0", 5);
    expect_open_error(path, KVF_ERR_FORMAT, "shorter than the 8-byte");
    /* a valid file cut short in its data */
    float v[4] = {1, 2, 3, 4};
    kvf_st_writer *w = kvf_st_writer_init();
    ck_assert_int_eq(kvf_st_writer_add(w, "v", KVF_DTYPE_F32, 1, (int64_t[]){4}, v), KVF_OK);
    ck_assert_int_eq(kvf_st_writer_write(w, path), KVF_OK);
    kvf_st_writer_free(w);
    size_t n;
    unsigned char *b = read_all(path, &n);
    uint64_t hl;
    memcpy(&hl, b, 8);
    free(b);
    ck_assert_uint_eq(n, 8 + hl + 16);
    ck_assert_int_eq(truncate(path, (off_t)(8 + hl + 4)), 0);
    kvf_error_clear();
    kvf_st_file *f = kvf_st_file_open(path);
    ck_assert_ptr_null(f);
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), path));
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "beyond the data section"));
    kvf_error_clear();
    /* not a file */
    expect_open_error(tmpdir, KVF_ERR_IO, "directory");
    const char *nf = tpath("does-not-exist.safetensors");
    expect_open_error(nf, KVF_ERR_IO, "No such file");
}
END_TEST

START_TEST(absurd_header_length) {
    /* a sparse 120 MB file whose header claims 110 MB: inside the file, beyond the limit */
    const char *path = tpath("huge.safetensors");
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    ck_assert_int_ge(fd, 0);
    uint64_t len = 110ull * 1000 * 1000;
    ck_assert_int_eq(write(fd, &len, 8), 8);
    ck_assert_int_eq(ftruncate(fd, 120 * 1000 * 1000), 0);
    close(fd);
    expect_open_error(path, KVF_ERR_FORMAT, "absurd");
    /* and a length near 2^64 */
    write_raw(path, "{}", 0, UINT64_MAX - 3);
    expect_open_error(path, KVF_ERR_FORMAT, "larger than the file");
}
END_TEST

/* ---- the real fixture ---------------------------------------------------------------------- */

static json_int_t cfg_int(json_t *cfg, const char *key) {
    json_t *v = json_object_get(cfg, key);
    ck_assert_msg(json_is_integer(v), "config.json: %s", key);
    return json_integer_value(v);
}

START_TEST(fixture_tiny_llama) {
    const char *shared = getenv("KVF_SHARED");
    if (!shared || !*shared) shared = "../shared";
    char dir[1024], path[1100], cfgp[1100];
    snprintf(dir, sizeof dir, "%s/fixtures/tiny-llama-mha", shared);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    snprintf(cfgp, sizeof cfgp, "%s/config.json", dir);
    if (!file_exists(path) || !file_exists(cfgp)) {
        fprintf(stderr, "fixture_tiny_llama: skipped, %s not found (set KVF_SHARED)\n", path);
        return;
    }
    json_error_t err;
    json_t *cfg = json_load_file(cfgp, 0, &err);
    ck_assert_msg(cfg, "%s: %s", cfgp, err.text);
    int64_t V = cfg_int(cfg, "vocab_size"), H = cfg_int(cfg, "hidden_size"),
            I = cfg_int(cfg, "intermediate_size"), L = cfg_int(cfg, "num_hidden_layers"),
            nh = cfg_int(cfg, "num_attention_heads"), nkv = cfg_int(cfg, "num_key_value_heads");
    int64_t hd = json_is_integer(json_object_get(cfg, "head_dim")) ? cfg_int(cfg, "head_dim")
                                                                   : H / nh;
    bool tied = json_is_true(json_object_get(cfg, "tie_word_embeddings"));
    json_decref(cfg);

    kvf_st_file *f = kvf_st_file_open(path);
    ck_assert_msg(f, "%s", kvf_error_message());
    ck_assert_uint_eq(kvf_st_file_count(f), (size_t)(1 + (tied ? 0 : 1) + 1 + 9 * L));
    struct {
        const char *name;
        int ndim;
        int64_t shape[2];
    } want[] = {
        {"model.embed_tokens.weight", 2, {V, H}},
        {"model.norm.weight", 1, {H}},
        {"model.layers.0.self_attn.q_proj.weight", 2, {nh * hd, H}},
        {"model.layers.0.self_attn.k_proj.weight", 2, {nkv * hd, H}},
        {"model.layers.0.self_attn.o_proj.weight", 2, {H, nh * hd}},
        {"model.layers.0.mlp.gate_proj.weight", 2, {I, H}},
        {"model.layers.0.mlp.down_proj.weight", 2, {H, I}},
        {"model.layers.1.input_layernorm.weight", 1, {H}},
    };
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        const kvf_st_tensor *t = kvf_st_file_find(f, want[k].name);
        ck_assert_msg(t, "%s: no %s", path, want[k].name);
        ck_assert(t->dtype == KVF_DTYPE_F32);
        ck_assert_int_eq(t->ndim, want[k].ndim);
        for (int d = 0; d < t->ndim; d++) ck_assert_int_eq(t->shape[d], want[k].shape[d]);
    }
    /* load the embedding and check it is finite and trained (not all zero) */
    kvf_tensor *emb = kvf_st_tensor_load_owned(kvf_st_file_find(f, "model.embed_tokens.weight"),
                                               KVF_DTYPE_F64);
    ck_assert_ptr_nonnull(emb);
    double sumsq = 0;
    for (int64_t i = 0; i < V * H; i++) {
        double v = kvf_tensor_get_flat(emb, i);
        ck_assert(isfinite(v));
        sumsq += v * v;
    }
    ck_assert(sumsq > 0);
    kvf_tensor_free_owned(emb);
    kvf_st_file_close(f);

    /* the directory API gives the same */
    kvf_st_dir *d = kvf_st_dir_open(dir);
    ck_assert_msg(d, "%s", kvf_error_message());
    ck_assert_uint_eq(kvf_st_dir_shard_count(d), 1);
    ck_assert_ptr_nonnull(kvf_st_dir_find(d, "model.embed_tokens.weight"));
    const kvf_st_tensor *none;
    ck_assert_int_eq(kvf_st_dir_get(d, "model.nope", &none), KVF_ERR_ARG);
    assert_error(KVF_ERR_ARG, path, "model.nope");
    kvf_st_dir_close(d);

    /* the reference logits file holds I64 ids */
    snprintf(path, sizeof path, "%s/reference_logits.safetensors", dir);
    if (file_exists(path)) {
        f = kvf_st_file_open(path);
        ck_assert_msg(f, "%s", kvf_error_message());
        const kvf_st_tensor *ids = kvf_st_file_find(f, "input_ids");
        ck_assert_ptr_nonnull(ids);
        ck_assert(ids->dtype == KVF_DTYPE_I64);
        kvf_tensor *t = kvf_st_tensor_load_owned(ids, KVF_DTYPE_I32);
        ck_assert_msg(t, "%s", kvf_error_message());
        for (int64_t i = 0; i < ids->numel; i++) {
            double v = kvf_tensor_get_flat(t, i);
            ck_assert(v >= 0 && v < (double)V);
        }
        kvf_tensor_free_owned(t);
        const kvf_st_tensor *lg = kvf_st_file_find(f, "logits");
        ck_assert_ptr_nonnull(lg);
        ck_assert_int_eq(lg->shape[lg->ndim - 1], V);
        kvf_st_file_close(f);
    }
}
END_TEST

/* kvf_st_file_open_buffer (the fuzz target's entry point): the same reader on bytes in memory. */
START_TEST(open_buffer) {
    const char *path = tpath("buf.safetensors");
    float v[6] = {1, 2, 3, 4, 5, 6};
    int64_t i[2] = {7, -8};
    kvf_st_writer *w = kvf_st_writer_init();
    ck_assert_int_eq(kvf_st_writer_add(w, "v", KVF_DTYPE_F32, 2, (int64_t[]){2, 3}, v), KVF_OK);
    ck_assert_int_eq(kvf_st_writer_add(w, "i", KVF_DTYPE_I64, 1, (int64_t[]){2}, i), KVF_OK);
    ck_assert_int_eq(kvf_st_writer_set_metadata(w, "k", "val"), KVF_OK);
    ck_assert_int_eq(kvf_st_writer_write(w, path), KVF_OK);
    kvf_st_writer_free(w);
    size_t n;
    unsigned char *b = read_all(path, &n);
    kvf_st_file *f = kvf_st_file_open_buffer("mem.safetensors", b, n);
    ck_assert_msg(f, "%s", kvf_error_message());
    memset(b, 0, n); /* the reader keeps its own copy */
    free(b);
    ck_assert_str_eq(kvf_st_file_path(f), "mem.safetensors");
    ck_assert_uint_eq(kvf_st_file_count(f), 2);
    ck_assert_str_eq(kvf_st_file_metadata(f, "k"), "val");
    assert_same_tensor(kvf_st_file_find(f, "v"), KVF_DTYPE_F32, 2, (int64_t[]){2, 3}, v, sizeof v);
    assert_same_tensor(kvf_st_file_find(f, "i"), KVF_DTYPE_I64, 1, (int64_t[]){2}, i, sizeof i);
    kvf_st_file_close(f);
    /* malformed buffers fail like files, naming the buffer */
    kvf_error_clear();
    ck_assert_ptr_null(kvf_st_file_open_buffer("mem.safetensors", "", 0));
    assert_error(KVF_ERR_FORMAT, "mem.safetensors", "empty");
    ck_assert_ptr_null(kvf_st_file_open_buffer("mem.safetensors", "\x10\0\0\0\0", 5));
    assert_error(KVF_ERR_FORMAT, "mem.safetensors", "shorter than the 8-byte");
    ck_assert_ptr_null(kvf_st_file_open_buffer("mem.safetensors", "\xff\xff\0\0\0\0\0\0{}", 10));
    assert_error(KVF_ERR_FORMAT, "mem.safetensors", "larger than the file");
    ck_assert_ptr_null(kvf_st_file_open_buffer("mem.safetensors", NULL, 3));
    assert_error(KVF_ERR_ARG, "safetensors", NULL);
}
END_TEST

int main(void) {
    Suite *s = suite_create("safetensors");
    TCase *rt = tcase_create("roundtrip");
    tcase_add_checked_fixture(rt, setup, teardown);
    tcase_add_test(rt, roundtrip_all_dtypes);
    tcase_add_test(rt, header_layout_deterministic);
    tcase_add_test(rt, convert_on_write_and_read);
    tcase_add_test(rt, misaligned_tensor_reads);
    tcase_add_test(rt, empty_model_file);
    suite_add_tcase(s, rt);

    TCase *sh = tcase_create("sharded");
    tcase_add_checked_fixture(sh, setup, teardown);
    tcase_add_test(sh, sharded_roundtrip);
    tcase_add_test(sh, dir_errors);
    tcase_add_test(sh, write_failure_cleans_up);
    suite_add_tcase(s, sh);

    TCase *bad = tcase_create("malformed");
    tcase_add_checked_fixture(bad, setup, teardown);
    tcase_add_loop_test(bad, malformed_file, 0, (int)(sizeof bad_cases / sizeof bad_cases[0]));
    tcase_add_test(bad, short_files);
    tcase_add_test(bad, absurd_header_length);
    tcase_add_test(bad, open_buffer);
    suite_add_tcase(s, bad);

    TCase *fx = tcase_create("fixture");
    tcase_add_checked_fixture(fx, setup, teardown);
    tcase_add_test(fx, fixture_tiny_llama);
    suite_add_tcase(s, fx);

    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
