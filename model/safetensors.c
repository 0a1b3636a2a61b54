/* safetensors.c — the safetensors reader (mmap + jansson), model-directory lookup over
 * shards, and the deterministic atomic writer. See safetensors.h. */
#include "safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host (safetensors data is little-endian)"
#endif

#define ST_INDEX_NAME "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"

/* ============================================================================================
 * dtypes
 * ========================================================================================== */

static const struct {
    const char *name;
    kvf_dtype dtype;
} st_dtypes[] = {
    {"F32", KVF_DTYPE_F32}, {"F64", KVF_DTYPE_F64}, {"BF16", KVF_DTYPE_BF16},
    {"F16", KVF_DTYPE_F16}, {"I32", KVF_DTYPE_I32}, {"I64", KVF_DTYPE_I64},
};

/* Valid safetensors dtypes that kvforge does not read. */
static const char *const st_other_dtypes[] = {
    "BOOL", "U8", "I8", "U16", "I16", "U32", "U64", "F8_E5M2", "F8_E4M3", "F8_E8M0",
    "F4", "F6_E2M3", "F6_E3M2", "C64",
};

const char *kvf_st_dtype_name(kvf_dtype t) {
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (st_dtypes[i].dtype == t) return st_dtypes[i].name;
    return "?";
}

bool kvf_st_dtype_parse(const char *name, kvf_dtype *out) {
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (strcmp(st_dtypes[i].name, name) == 0) {
            if (out) *out = st_dtypes[i].dtype;
            return true;
        }
    return false;
}

static bool st_dtype_is_other(const char *name) {
    for (size_t i = 0; i < sizeof st_other_dtypes / sizeof st_other_dtypes[0]; i++)
        if (strcmp(st_other_dtypes[i], name) == 0) return true;
    return false;
}

static bool dtype_valid(kvf_dtype t) { return (int)t >= 0 && t < KVF_DTYPE_COUNT; }
static bool dtype_is_int(kvf_dtype t) { return t == KVF_DTYPE_I32 || t == KVF_DTYPE_I64; }

/* Whether src converts to dst (float <-> float, int <-> int, or the same dtype). */
static bool dtype_convertible(kvf_dtype src, kvf_dtype dst) {
    if (src == dst) return true;
    if (kvf_dtype_is_float(src) && kvf_dtype_is_float(dst)) return true;
    return dtype_is_int(src) && dtype_is_int(dst);
}

static const char *shape_str(int ndim, const int64_t *shape, char *buf, size_t n) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %" PRId64 : "%" PRId64, shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
    return buf;
}
#define SHAPE_STR(nd, sh) shape_str((nd), (sh), (char[96]){0}, 96)

const char *kvf_st_tensor_describe(const kvf_st_tensor *t, char *buf, size_t n) {
    if (!t) {
        snprintf(buf, n, "(null)");
        return buf;
    }
    char s[96];
    snprintf(buf, n, "%s %s", shape_str(t->ndim, t->shape, s, sizeof s),
             kvf_st_dtype_name(t->dtype));
    return buf;
}

/* ============================================================================================
 * element conversion (unaligned sources and destinations are fine: memcpy per element)
 * ========================================================================================== */

static double load_float(const unsigned char *p, kvf_dtype t, size_t i) {
    switch (t) {
    case KVF_DTYPE_F32: {
        float v;
        memcpy(&v, p + 4 * i, 4);
        return v;
    }
    case KVF_DTYPE_F64: {
        double v;
        memcpy(&v, p + 8 * i, 8);
        return v;
    }
    case KVF_DTYPE_BF16: {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        return kvf_bf16_to_f32(h);
    }
    default: { /* F16 */
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        return kvf_f16_to_f32(h);
    }
    }
}

static void store_float(unsigned char *p, kvf_dtype t, size_t i, double v) {
    switch (t) {
    case KVF_DTYPE_F32: {
        float f = (float)v;
        memcpy(p + 4 * i, &f, 4);
        break;
    }
    case KVF_DTYPE_F64: memcpy(p + 8 * i, &v, 8); break;
    case KVF_DTYPE_BF16: {
        uint16_t h = kvf_f32_to_bf16((float)v);
        memcpy(p + 2 * i, &h, 2);
        break;
    }
    default: { /* F16 */
        uint16_t h = kvf_f32_to_f16((float)v);
        memcpy(p + 2 * i, &h, 2);
        break;
    }
    }
}

/* Converts n elements; what/path name the tensor for messages. The caller has checked
 * dtype_convertible. */
static kvf_status convert(const void *src, kvf_dtype sd, void *dst, kvf_dtype dd, size_t n,
                          size_t first, const char *what, const char *path) {
    const unsigned char *s = src;
    unsigned char *d = dst;
    if (n == 0) return KVF_OK;
    if (sd == dd) {
        memcpy(d, s, n * kvf_dtype_size(sd));
        return KVF_OK;
    }
    if (dtype_is_int(sd)) {
        if (sd == KVF_DTYPE_I32) { /* widen */
            for (size_t i = 0; i < n; i++) {
                int32_t v;
                memcpy(&v, s + 4 * i, 4);
                int64_t w = v;
                memcpy(d + 8 * i, &w, 8);
            }
        } else {
            for (size_t i = 0; i < n; i++) {
                int64_t v;
                memcpy(&v, s + 8 * i, 8);
                if (v < INT32_MIN || v > INT32_MAX)
                    return kvf_error_set(KVF_ERR_NUMERIC,
                                         "%s: tensor '%s': element %zu = %" PRId64
                                         " does not fit in i32",
                                         path, what, first + i, v);
                int32_t w = (int32_t)v;
                memcpy(d + 4 * i, &w, 4);
            }
        }
        return KVF_OK;
    }
    /* float -> float; the common pairs without the double detour */
    if (dd == KVF_DTYPE_F32 && sd == KVF_DTYPE_BF16) {
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            float f = kvf_bf16_to_f32(h);
            memcpy(d + 4 * i, &f, 4);
        }
    } else if (dd == KVF_DTYPE_F32 && sd == KVF_DTYPE_F16) {
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            float f = kvf_f16_to_f32(h);
            memcpy(d + 4 * i, &f, 4);
        }
    } else if (sd == KVF_DTYPE_F32 && (dd == KVF_DTYPE_BF16 || dd == KVF_DTYPE_F16)) {
        for (size_t i = 0; i < n; i++) {
            float f;
            memcpy(&f, s + 4 * i, 4);
            uint16_t h = dd == KVF_DTYPE_BF16 ? kvf_f32_to_bf16(f) : kvf_f32_to_f16(f);
            memcpy(d + 2 * i, &h, 2);
        }
    } else {
        /* F64 -> BF16/F16 rounds through f32 (double rounding, at most 1 ulp of the target
         * in rare ties); everything else is exact or a single rounding. */
        for (size_t i = 0; i < n; i++) store_float(d, dd, i, load_float(s, sd, i));
    }
    return KVF_OK;
}

/* ============================================================================================
 * reading one file
 * ========================================================================================== */

struct kvf_st_file {
    char *path;
    void *map;          /* whole file, read-only; NULL for an empty data-less mapping */
    size_t map_size;
    bool heap;          /* map is a malloc'd copy (kvf_st_file_open_buffer), not an mmap */
    uint64_t header_len;
    const unsigned char *data; /* the data section */
    uint64_t data_size;
    size_t n;
    kvf_st_tensor *tensors; /* sorted by name */
    size_t n_meta;
    char **meta_keys; /* sorted by key */
    char **meta_vals;
};

static const char *json_type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE: return "true";
    case JSON_FALSE: return "false";
    case JSON_NULL: return "null";
    }
    return "?";
}

void kvf_st_file_close(kvf_st_file *f) {
    if (!f) return;
    if (f->heap) free(f->map);
    else if (f->map) munmap(f->map, f->map_size);
    for (size_t i = 0; i < f->n; i++) free((char *)f->tensors[i].name);
    free(f->tensors);
    for (size_t i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->meta_keys);
    free(f->meta_vals);
    free(f->path);
    free(f);
}

/* Reads a non-negative JSON integer; false when v is not one. */
static bool json_uint(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v)) return false;
    json_int_t x = json_integer_value(v);
    if (x < 0) return false;
    *out = (uint64_t)x;
    return true;
}

static kvf_status parse_metadata(kvf_st_file *f, json_t *meta) {
    const char *p = f->path;
    KVF_CHECK(json_is_object(meta), KVF_ERR_FORMAT,
              "%s: header \"__metadata__\" is %s, not an object of strings", p,
              json_type_name(meta));
    size_t n = json_object_size(meta);
    f->meta_keys = calloc(n ? n : 1, sizeof(char *));
    f->meta_vals = calloc(n ? n : 1, sizeof(char *));
    KVF_CHECK(f->meta_keys && f->meta_vals, KVF_ERR_OOM, "%s: out of memory", p);
    const char *key;
    json_t *val;
    json_object_foreach(meta, key, val) {
        KVF_CHECK(json_is_string(val), KVF_ERR_FORMAT,
                  "%s: header \"__metadata__\" value of \"%s\" is %s, not a string", p, key,
                  json_type_name(val));
        size_t i = f->n_meta;
        f->meta_keys[i] = strdup(key);
        f->meta_vals[i] = strdup(json_string_value(val));
        if (f->meta_keys[i] || f->meta_vals[i]) f->n_meta++; /* so close frees them */
        KVF_CHECK(f->meta_keys[i] && f->meta_vals[i], KVF_ERR_OOM, "%s: out of memory", p);
    }
    /* key order (insertion sort: metadata maps are tiny) */
    for (size_t i = 1; i < f->n_meta; i++)
        for (size_t j = i; j > 0 && strcmp(f->meta_keys[j - 1], f->meta_keys[j]) > 0; j--) {
            char *k = f->meta_keys[j], *v = f->meta_vals[j];
            f->meta_keys[j] = f->meta_keys[j - 1];
            f->meta_vals[j] = f->meta_vals[j - 1];
            f->meta_keys[j - 1] = k;
            f->meta_vals[j - 1] = v;
        }
    return KVF_OK;
}

/* Validates one header entry into t (t->name already set). */
static kvf_status parse_entry(kvf_st_file *f, const char *name, json_t *e, kvf_st_tensor *t) {
    const char *p = f->path;
    KVF_CHECK(json_is_object(e), KVF_ERR_FORMAT,
              "%s: header entry '%s' is %s, not an object with dtype, shape and data_offsets",
              p, name, json_type_name(e));
    json_t *jd = json_object_get(e, "dtype");
    json_t *js = json_object_get(e, "shape");
    json_t *jo = json_object_get(e, "data_offsets");
    KVF_CHECK(jd, KVF_ERR_FORMAT, "%s: tensor '%s' has no \"dtype\"", p, name);
    KVF_CHECK(js, KVF_ERR_FORMAT, "%s: tensor '%s' has no \"shape\"", p, name);
    KVF_CHECK(jo, KVF_ERR_FORMAT, "%s: tensor '%s' has no \"data_offsets\"", p, name);
    KVF_CHECK(json_is_string(jd), KVF_ERR_FORMAT, "%s: tensor '%s': \"dtype\" is %s, not a string",
              p, name, json_type_name(jd));
    KVF_CHECK(json_is_array(js), KVF_ERR_FORMAT,
              "%s: tensor '%s': \"shape\" is %s, not an array of integers", p, name,
              json_type_name(js));
    KVF_CHECK(json_is_array(jo), KVF_ERR_FORMAT,
              "%s: tensor '%s': \"data_offsets\" is %s, not an array [begin, end]", p, name,
              json_type_name(jo));

    /* shape */
    size_t rank = json_array_size(js);
    uint64_t dims[KVF_MAX_DIMS] = {0};
    for (size_t i = 0; i < rank; i++) {
        json_t *v = json_array_get(js, i);
        uint64_t x;
        KVF_CHECK(json_uint(v, &x), KVF_ERR_FORMAT,
                  "%s: tensor '%s': shape entry %zu is %s, not a non-negative integer", p, name,
                  i, json_is_integer(v) ? "negative" : json_type_name(v));
        if (i < KVF_MAX_DIMS) dims[i] = x;
    }

    /* data_offsets */
    KVF_CHECK(json_array_size(jo) == 2, KVF_ERR_FORMAT,
              "%s: tensor '%s': \"data_offsets\" has %zu entries, not [begin, end]", p, name,
              json_array_size(jo));
    uint64_t begin, end;
    for (int i = 0; i < 2; i++) {
        json_t *v = json_array_get(jo, (size_t)i);
        KVF_CHECK(json_uint(v, i ? &end : &begin), KVF_ERR_FORMAT,
                  "%s: tensor '%s': data_offsets[%d] is %s, not a non-negative integer", p,
                  name, i, json_is_integer(v) ? "negative" : json_type_name(v));
    }
    KVF_CHECK(begin <= end, KVF_ERR_FORMAT,
              "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] has begin > end", p,
              name, begin, end);
    KVF_CHECK(end <= f->data_size, KVF_ERR_FORMAT,
              "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
              "] end beyond the data section (%" PRIu64 " bytes)",
              p, name, begin, end, f->data_size);

    /* dtype */
    const char *dn = json_string_value(jd);
    if (!kvf_st_dtype_parse(dn, &t->dtype)) {
        KVF_CHECK(!st_dtype_is_other(dn), KVF_ERR_UNSUPPORTED,
                  "%s: tensor '%s' has dtype %s, which kvforge does not read "
                  "(F32, F64, BF16, F16, I32, I64)",
                  p, name, dn);
        return kvf_error_set(KVF_ERR_FORMAT, "%s: tensor '%s' has unknown dtype \"%s\"", p, name,
                             dn);
    }
    KVF_CHECK(rank <= KVF_MAX_DIMS, KVF_ERR_UNSUPPORTED,
              "%s: tensor '%s' has rank %zu; kvforge handles at most %d dims", p, name, rank,
              KVF_MAX_DIMS);

    /* size */
    uint64_t numel = 1;
    for (size_t i = 0; i < rank; i++)
        KVF_CHECK(!__builtin_mul_overflow(numel, dims[i], &numel) && numel <= INT64_MAX,
                  KVF_ERR_FORMAT, "%s: tensor '%s': shape %s overflows", p, name,
                  SHAPE_STR((int)rank, (const int64_t *)dims));
    uint64_t nbytes;
    bool ovf = __builtin_mul_overflow(numel, (uint64_t)kvf_dtype_size(t->dtype), &nbytes);
    t->ndim = (int)rank;
    for (size_t i = 0; i < rank; i++) t->shape[i] = (int64_t)dims[i];
    KVF_CHECK(!ovf && nbytes == end - begin, KVF_ERR_FORMAT,
              "%s: tensor '%s': shape %s of %s needs %" PRIu64
              " bytes but data_offsets [%" PRIu64 ", %" PRIu64 "] span %" PRIu64,
              p, name, SHAPE_STR(t->ndim, t->shape), dn, nbytes, begin, end, end - begin);
    t->numel = (int64_t)numel;
    t->nbytes = (size_t)nbytes;
    t->offset = begin;
    t->data = f->data + begin;
    t->path = f->path;
    return KVF_OK;
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const kvf_st_tensor *)a)->name, ((const kvf_st_tensor *)b)->name);
}

static int cmp_tensor_range(const void *a, const void *b) {
    const kvf_st_tensor *x = *(const kvf_st_tensor *const *)a;
    const kvf_st_tensor *y = *(const kvf_st_tensor *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* The byte ranges must tile the data section: no overlap, no hole, nothing after the end. */
static kvf_status check_coverage(kvf_st_file *f) {
    const char *p = f->path;
    const kvf_st_tensor **ord = malloc((f->n ? f->n : 1) * sizeof *ord);
    KVF_CHECK(ord, KVF_ERR_OOM, "%s: out of memory", p);
    for (size_t i = 0; i < f->n; i++) ord[i] = &f->tensors[i];
    qsort(ord, f->n, sizeof *ord, cmp_tensor_range);
    uint64_t pos = 0;
    const kvf_st_tensor *prev = NULL;
    kvf_status s = KVF_OK;
    for (size_t i = 0; i < f->n && s == KVF_OK; i++) {
        const kvf_st_tensor *t = ord[i];
        uint64_t e = t->offset + t->nbytes;
        if (t->offset < pos)
            s = kvf_error_set(KVF_ERR_FORMAT,
                              "%s: byte ranges of tensors '%s' [%" PRIu64 ", %" PRIu64
                              ") and '%s' [%" PRIu64 ", %" PRIu64 ") overlap",
                              p, prev->name, prev->offset, prev->offset + prev->nbytes, t->name,
                              t->offset, e);
        else if (t->offset > pos)
            s = kvf_error_set(KVF_ERR_FORMAT,
                              "%s: hole in the data section: bytes [%" PRIu64 ", %" PRIu64
                              ") before tensor '%s' belong to no tensor",
                              p, pos, t->offset, t->name);
        pos = e;
        if (t->nbytes) prev = t;
    }
    free(ord);
    if (s != KVF_OK) return s;
    KVF_CHECK(pos == f->data_size, KVF_ERR_FORMAT,
              "%s: hole in the data section: bytes [%" PRIu64 ", %" PRIu64
              ") after the last tensor belong to no tensor",
              p, pos, f->data_size);
    return KVF_OK;
}

static kvf_status parse_header(kvf_st_file *f) {
    const char *p = f->path;
    json_error_t err;
    json_t *root = json_loadb((const char *)f->map + 8, (size_t)f->header_len,
                              JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &err);
    KVF_CHECK(root || json_error_code(&err) != json_error_duplicate_key, KVF_ERR_FORMAT,
              "%s: header names a tensor twice: %s (line %d, column %d)", p, err.text, err.line,
              err.column);
    KVF_CHECK(root, KVF_ERR_FORMAT,
              "%s: header (%" PRIu64 " bytes) is not valid JSON: %s (line %d, column %d)", p,
              f->header_len, err.text, err.line, err.column);
    kvf_status s = KVF_OK;
    if (!json_is_object(root)) {
        s = kvf_error_set(KVF_ERR_FORMAT, "%s: header is %s, not a JSON object", p,
                          json_type_name(root));
        goto done;
    }
    size_t cap = json_object_size(root);
    f->tensors = calloc(cap ? cap : 1, sizeof *f->tensors);
    if (!f->tensors) {
        s = kvf_error_set(KVF_ERR_OOM, "%s: out of memory", p);
        goto done;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            s = parse_metadata(f, val);
        } else {
            kvf_st_tensor *t = &f->tensors[f->n];
            t->name = strdup(key);
            if (!t->name) {
                s = kvf_error_set(KVF_ERR_OOM, "%s: out of memory", p);
                break;
            }
            f->n++;
            s = parse_entry(f, key, val, t);
        }
        if (s != KVF_OK) break;
    }
    if (s == KVF_OK) {
        qsort(f->tensors, f->n, sizeof *f->tensors, cmp_tensor_name);
        s = check_coverage(f);
    }
done:
    json_decref(root);
    return s;
}

/* Validates the header of f->map[0..map_size) (at least 8 bytes) and fills in f. */
static kvf_status st_file_parse(kvf_st_file *f) {
    const char *path = f->path;
    uint64_t size = (uint64_t)f->map_size;
    memcpy(&f->header_len, f->map, 8);
    uint64_t hl = f->header_len;
    KVF_CHECK(hl <= size - 8, KVF_ERR_FORMAT,
              "%s: header length %" PRIu64 " is larger than the file (%" PRIu64
              " bytes after the 8-byte length)",
              path, hl, size - 8);
    KVF_CHECK(hl <= KVF_ST_MAX_HEADER, KVF_ERR_FORMAT,
              "%s: header length %" PRIu64 " is absurd (limit %" PRIu64 " bytes)", path, hl,
              KVF_ST_MAX_HEADER);
    f->data = (const unsigned char *)f->map + 8 + hl;
    f->data_size = size - 8 - hl;
    return parse_header(f);
}

/* referrer: what listed this file (for messages), or NULL. */
static kvf_st_file *st_file_open(const char *path, const char *referrer) {
    KVF_CHECK_NULL(path, KVF_ERR_ARG, "safetensors: NULL path");
    char ref[1100] = "";
    if (referrer) snprintf(ref, sizeof ref, " (listed in %s)", referrer);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    KVF_CHECK_NULL(fd >= 0, KVF_ERR_IO, "cannot open %s%s: %s", path, ref, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        kvf_error_set(KVF_ERR_IO, "cannot read %s%s: %s", path, ref, strerror(e));
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        kvf_error_set(KVF_ERR_IO, "cannot read %s%s: %s", path, ref,
                      S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file");
        return NULL;
    }
    kvf_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        close(fd);
        free(f);
        kvf_error_set(KVF_ERR_OOM, "%s: out of memory", path);
        return NULL;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size < 8) {
        close(fd);
        if (size == 0)
            kvf_error_set(KVF_ERR_FORMAT, "%s: empty file, not safetensors (no header)", path);
        else
            kvf_error_set(KVF_ERR_FORMAT,
                          "%s: file is %" PRIu64
                          " bytes, shorter than the 8-byte header length",
                          path, size);
        kvf_st_file_close(f);
        return NULL;
    }
    f->map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        kvf_error_set(KVF_ERR_IO, "cannot map %s%s: %s", path, ref, strerror(e));
        kvf_st_file_close(f);
        return NULL;
    }
    f->map_size = (size_t)size;
    if (st_file_parse(f) != KVF_OK) {
        kvf_st_file_close(f);
        return NULL;
    }
    return f;
}

kvf_st_file *kvf_st_file_open(const char *path) { return st_file_open(path, NULL); }

kvf_st_file *kvf_st_file_open_buffer(const char *name, const void *data, size_t len) {
    KVF_CHECK_NULL(name && (data || len == 0), KVF_ERR_ARG,
                   "safetensors: NULL name or data");
    kvf_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(name)) || !(f->map = malloc(len ? len : 1))) {
        if (f) free(f->path);
        free(f);
        kvf_error_set(KVF_ERR_OOM, "%s: out of memory", name);
        return NULL;
    }
    f->heap = true;
    if (len) memcpy(f->map, data, len);
    f->map_size = len;
    if (len < 8) {
        if (len == 0)
            kvf_error_set(KVF_ERR_FORMAT, "%s: empty file, not safetensors (no header)", name);
        else
            kvf_error_set(KVF_ERR_FORMAT,
                          "%s: file is %zu bytes, shorter than the 8-byte header length", name,
                          len);
        kvf_st_file_close(f);
        return NULL;
    }
    if (st_file_parse(f) != KVF_OK) {
        kvf_st_file_close(f);
        return NULL;
    }
    return f;
}


const char *kvf_st_file_path(const kvf_st_file *f) { return f->path; }
size_t kvf_st_file_count(const kvf_st_file *f) { return f->n; }

const kvf_st_tensor *kvf_st_file_tensor(const kvf_st_file *f, size_t i) {
    return i < f->n ? &f->tensors[i] : NULL;
}

const kvf_st_tensor *kvf_st_file_find(const kvf_st_file *f, const char *name) {
    if (!f || !name) return NULL;
    kvf_st_tensor key = {.name = name};
    return bsearch(&key, f->tensors, f->n, sizeof *f->tensors, cmp_tensor_name);
}

kvf_status kvf_st_file_get(const kvf_st_file *f, const char *name, const kvf_st_tensor **out) {
    KVF_CHECK(f && name && out, KVF_ERR_ARG, "kvf_st_file_get: NULL argument");
    *out = kvf_st_file_find(f, name);
    KVF_CHECK(*out, KVF_ERR_ARG, "%s: no tensor named '%s'", f->path, name);
    return KVF_OK;
}

size_t kvf_st_file_metadata_count(const kvf_st_file *f) { return f->n_meta; }

void kvf_st_file_metadata_at(const kvf_st_file *f, size_t i, const char **key,
                             const char **value) {
    bool ok = i < f->n_meta;
    if (key) *key = ok ? f->meta_keys[i] : NULL;
    if (value) *value = ok ? f->meta_vals[i] : NULL;
}

const char *kvf_st_file_metadata(const kvf_st_file *f, const char *key) {
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    return NULL;
}

/* ============================================================================================
 * loading a tensor
 * ========================================================================================== */

kvf_status kvf_st_tensor_read(const kvf_st_tensor *t, kvf_dtype dtype, void *dst,
                              size_t dst_bytes) {
    KVF_CHECK(t, KVF_ERR_ARG, "kvf_st_tensor_read: NULL tensor");
    KVF_CHECK(dtype_valid(dtype), KVF_ERR_ARG, "%s: tensor '%s': bad destination dtype %d",
              t->path, t->name, (int)dtype);
    KVF_CHECK(dtype_convertible(t->dtype, dtype), KVF_ERR_DTYPE,
              "%s: tensor '%s' is %s and cannot be converted to %s", t->path, t->name,
              kvf_st_dtype_name(t->dtype), kvf_st_dtype_name(dtype));
    size_t need = (size_t)t->numel * kvf_dtype_size(dtype);
    KVF_CHECK(dst_bytes >= need, KVF_ERR_ARG,
              "%s: tensor '%s' needs %zu bytes as %s, the buffer has %zu", t->path, t->name,
              need, kvf_st_dtype_name(dtype), dst_bytes);
    KVF_CHECK(dst || need == 0, KVF_ERR_ARG, "%s: tensor '%s': NULL destination", t->path,
              t->name);
    return convert(t->data, t->dtype, dst, dtype, (size_t)t->numel, 0, t->name, t->path);
}

kvf_status kvf_st_tensor_load(const kvf_st_tensor *t, kvf_tensor *dst) {
    KVF_CHECK(t && dst && dst->storage, KVF_ERR_ARG, "kvf_st_tensor_load: NULL argument");
    KVF_CHECK(dst->storage->device == KVF_DEVICE_CPU, KVF_ERR_DEVICE,
              "%s: tensor '%s': destination is on %s, not the CPU", t->path, t->name,
              kvf_device_name(dst->storage->device));
    KVF_CHECK(kvf_tensor_is_contiguous(dst), KVF_ERR_ARG,
              "%s: tensor '%s': destination is not contiguous", t->path, t->name);
    bool same = dst->ndim == t->ndim;
    for (int i = 0; same && i < t->ndim; i++) same = dst->shape[i] == t->shape[i];
    KVF_CHECK(same, KVF_ERR_SHAPE, "%s: tensor '%s' is %s but the destination is %s", t->path,
              t->name, SHAPE_STR(t->ndim, t->shape), SHAPE_STR(dst->ndim, dst->shape));
    size_t avail = dst->storage->nbytes - (size_t)dst->offset * kvf_dtype_size(dst->dtype);
    return kvf_st_tensor_read(t, dst->dtype, kvf_tensor_data(dst), avail);
}

kvf_tensor *kvf_st_tensor_load_owned(const kvf_st_tensor *t, kvf_dtype dtype) {
    KVF_CHECK_NULL(t, KVF_ERR_ARG, "kvf_st_tensor_load_owned: NULL tensor");
    KVF_CHECK_NULL(dtype_valid(dtype) && dtype_convertible(t->dtype, dtype), KVF_ERR_DTYPE,
                   "%s: tensor '%s' is %s and cannot be converted to %s", t->path, t->name,
                   kvf_st_dtype_name(t->dtype), kvf_st_dtype_name(dtype));
    kvf_tensor *out = kvf_tensor_init_owned(dtype, t->ndim, t->shape);
    if (!out) return NULL;
    if (kvf_st_tensor_load(t, out) != KVF_OK) {
        kvf_tensor_free_owned(out);
        return NULL;
    }
    return out;
}

/* ============================================================================================
 * a model directory
 * ========================================================================================== */

struct kvf_st_dir {
    char *source; /* the index or model.safetensors, for messages */
    size_t n_shards;
    kvf_st_file **shards;
    size_t n;
    const kvf_st_tensor **tensors; /* sorted by name */
};

static char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *s = malloc(a + b + 2);
    if (!s) return NULL;
    memcpy(s, dir, a);
    size_t k = a;
    if (a && dir[a - 1] != '/') s[k++] = '/';
    memcpy(s + k, name, b + 1);
    return s;
}

void kvf_st_dir_close(kvf_st_dir *d) {
    if (!d) return;
    for (size_t i = 0; i < d->n_shards; i++) kvf_st_file_close(d->shards[i]);
    free(d->shards);
    free(d->tensors);
    free(d->source);
    free(d);
}

static int cmp_tensor_ptr_name(const void *a, const void *b) {
    return strcmp((*(const kvf_st_tensor *const *)a)->name,
                  (*(const kvf_st_tensor *const *)b)->name);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Collects every shard's tensors into d->tensors; a name in two shards is an error. */
static kvf_status dir_build_lookup(kvf_st_dir *d, const char *where) {
    size_t total = 0;
    for (size_t i = 0; i < d->n_shards; i++) total += kvf_st_file_count(d->shards[i]);
    d->tensors = malloc((total ? total : 1) * sizeof *d->tensors);
    KVF_CHECK(d->tensors, KVF_ERR_OOM, "%s: out of memory", where);
    for (size_t i = 0; i < d->n_shards; i++)
        for (size_t j = 0; j < kvf_st_file_count(d->shards[i]); j++)
            d->tensors[d->n++] = kvf_st_file_tensor(d->shards[i], j);
    qsort(d->tensors, d->n, sizeof *d->tensors, cmp_tensor_ptr_name);
    for (size_t i = 1; i < d->n; i++)
        KVF_CHECK(strcmp(d->tensors[i - 1]->name, d->tensors[i]->name) != 0, KVF_ERR_FORMAT,
                  "%s: tensor '%s' is in two shards, %s and %s", where, d->tensors[i]->name,
                  d->tensors[i - 1]->path, d->tensors[i]->path);
    return KVF_OK;
}

static bool plain_file_name(const char *s) {
    return s[0] && strchr(s, '/') == NULL && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static kvf_status dir_open_index(kvf_st_dir *d, const char *dir, const char *idx) {
    json_error_t err;
    json_t *root = json_load_file(idx, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &err);
    if (!root) {
        if (err.line < 0) return kvf_error_set(KVF_ERR_IO, "cannot read %s: %s", idx, err.text);
        return kvf_error_set(KVF_ERR_FORMAT, "%s: not valid JSON: %s (line %d, column %d)", idx,
                             err.text, err.line, err.column);
    }
    kvf_status s = KVF_OK;
    const char **names = NULL;
    char *shard_path = NULL;
    json_t *wm = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(root)) {
        s = kvf_error_set(KVF_ERR_FORMAT, "%s: index is %s, not a JSON object", idx,
                          json_type_name(root));
        goto done;
    }
    if (!json_is_object(wm)) {
        s = kvf_error_set(KVF_ERR_FORMAT, "%s: \"weight_map\" is %s, not an object", idx,
                          wm ? json_type_name(wm) : "missing");
        goto done;
    }
    /* the distinct shard files, sorted */
    size_t nw = json_object_size(wm), nn = 0;
    names = malloc((nw ? nw : 1) * sizeof *names);
    if (!names) {
        s = kvf_error_set(KVF_ERR_OOM, "%s: out of memory", idx);
        goto done;
    }
    const char *key;
    json_t *val;
    json_object_foreach(wm, key, val) {
        if (!json_is_string(val) || !plain_file_name(json_string_value(val))) {
            s = kvf_error_set(KVF_ERR_FORMAT,
                              "%s: weight_map entry '%s' is %s, not a shard file name in %s",
                              idx, key,
                              json_is_string(val) ? json_string_value(val) : json_type_name(val),
                              dir);
            goto done;
        }
        names[nn++] = json_string_value(val);
    }
    qsort(names, nn, sizeof *names, cmp_str);
    size_t nu = 0;
    for (size_t i = 0; i < nn; i++)
        if (nu == 0 || strcmp(names[nu - 1], names[i]) != 0) names[nu++] = names[i];
    d->shards = calloc(nu ? nu : 1, sizeof *d->shards);
    if (!d->shards) {
        s = kvf_error_set(KVF_ERR_OOM, "%s: out of memory", idx);
        goto done;
    }
    for (size_t i = 0; i < nu; i++) {
        shard_path = path_join(dir, names[i]);
        if (!shard_path) {
            s = kvf_error_set(KVF_ERR_OOM, "%s: out of memory", idx);
            goto done;
        }
        d->shards[i] = st_file_open(shard_path, idx);
        free(shard_path);
        shard_path = NULL;
        if (!d->shards[i]) {
            s = kvf_error_code();
            goto done;
        }
        d->n_shards++;
    }
    /* every mapped tensor must be in its shard */
    json_object_foreach(wm, key, val) {
        const char *file = json_string_value(val);
        const char **hit = bsearch(&file, names, nu, sizeof *names, cmp_str);
        const kvf_st_file *sh = d->shards[hit - names];
        if (!kvf_st_file_find(sh, key)) {
            s = kvf_error_set(KVF_ERR_FORMAT,
                              "%s: tensor '%s' is mapped to %s, which has no such tensor", idx,
                              key, kvf_st_file_path(sh));
            goto done;
        }
    }
    s = dir_build_lookup(d, idx);
done:
    free(names);
    json_decref(root);
    return s;
}

kvf_st_dir *kvf_st_dir_open(const char *dir) {
    KVF_CHECK_NULL(dir, KVF_ERR_ARG, "kvf_st_dir_open: NULL directory");
    kvf_st_dir *d = calloc(1, sizeof *d);
    char *idx = path_join(dir, ST_INDEX_NAME);
    char *single = path_join(dir, ST_SINGLE_NAME);
    kvf_status s = KVF_OK;
    if (!d || !idx || !single) {
        s = kvf_error_set(KVF_ERR_OOM, "%s: out of memory", dir);
        goto done;
    }
    struct stat st;
    if (stat(idx, &st) == 0) {
        d->source = strdup(idx);
        s = d->source ? dir_open_index(d, dir, idx)
                      : kvf_error_set(KVF_ERR_OOM, "%s: out of memory", dir);
    } else if (errno != ENOENT) {
        s = kvf_error_set(KVF_ERR_IO, "cannot read %s: %s", idx, strerror(errno));
    } else if (stat(single, &st) != 0 && errno == ENOENT) {
        struct stat ds;
        if (stat(dir, &ds) != 0)
            s = kvf_error_set(KVF_ERR_IO, "cannot open model directory %s: %s", dir,
                              strerror(errno));
        else
            s = kvf_error_set(KVF_ERR_IO, "%s: no %s or %s in this directory", dir,
                              ST_SINGLE_NAME, ST_INDEX_NAME);
    } else {
        d->shards = calloc(1, sizeof *d->shards);
        d->source = strdup(single);
        if (!d->shards || !d->source) {
            s = kvf_error_set(KVF_ERR_OOM, "%s: out of memory", dir);
            goto done;
        }
        d->shards[0] = st_file_open(single, NULL);
        if (!d->shards[0]) {
            s = kvf_error_code();
            goto done;
        }
        d->n_shards = 1;
        s = dir_build_lookup(d, single);
    }
done:
    free(idx);
    free(single);
    if (s != KVF_OK) {
        kvf_st_dir_close(d);
        return NULL;
    }
    return d;
}

size_t kvf_st_dir_count(const kvf_st_dir *d) { return d->n; }

const kvf_st_tensor *kvf_st_dir_tensor(const kvf_st_dir *d, size_t i) {
    return i < d->n ? d->tensors[i] : NULL;
}

const kvf_st_tensor *kvf_st_dir_find(const kvf_st_dir *d, const char *name) {
    if (!d || !name) return NULL;
    kvf_st_tensor key = {.name = name};
    const kvf_st_tensor *kp = &key;
    const kvf_st_tensor **hit =
        bsearch(&kp, d->tensors, d->n, sizeof *d->tensors, cmp_tensor_ptr_name);
    return hit ? *hit : NULL;
}

kvf_status kvf_st_dir_get(const kvf_st_dir *d, const char *name, const kvf_st_tensor **out) {
    KVF_CHECK(d && name && out, KVF_ERR_ARG, "kvf_st_dir_get: NULL argument");
    *out = kvf_st_dir_find(d, name);
    KVF_CHECK(*out, KVF_ERR_ARG, "%s: no tensor named '%s'", d->source, name);
    return KVF_OK;
}

size_t kvf_st_dir_shard_count(const kvf_st_dir *d) { return d->n_shards; }

const kvf_st_file *kvf_st_dir_shard(const kvf_st_dir *d, size_t i) {
    return i < d->n_shards ? d->shards[i] : NULL;
}

/* ============================================================================================
 * writing
 * ========================================================================================== */

struct st_entry {
    char *name;
    kvf_dtype dtype;     /* written */
    kvf_dtype src_dtype; /* of data */
    int ndim;
    int64_t shape[KVF_MAX_DIMS];
    uint64_t numel;
    uint64_t nbytes; /* written */
    const void *data;
    bool planned;    /* kvf_st_writer_add_planned: data comes through a kvf_st_stream */
};

struct kvf_st_writer {
    size_t n, cap;
    struct st_entry *e;
    size_t n_meta, cap_meta;
    char **meta_keys, **meta_vals;
    uint64_t data_bytes;
};

kvf_st_writer *kvf_st_writer_init(void) {
    kvf_st_writer *w = calloc(1, sizeof *w);
    KVF_CHECK_NULL(w, KVF_ERR_OOM, "safetensors writer: out of memory");
    return w;
}

void kvf_st_writer_free(kvf_st_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) free(w->e[i].name);
    free(w->e);
    for (size_t i = 0; i < w->n_meta; i++) {
        free(w->meta_keys[i]);
        free(w->meta_vals[i]);
    }
    free(w->meta_keys);
    free(w->meta_vals);
    free(w);
}

size_t kvf_st_writer_count(const kvf_st_writer *w) { return w->n; }
uint64_t kvf_st_writer_data_bytes(const kvf_st_writer *w) { return w->data_bytes; }

static bool valid_utf8_key(const char *s) {
    json_t *j = json_string(s); /* NULL for invalid UTF-8 */
    json_decref(j);
    return j != NULL;
}

static kvf_status add_entry(kvf_st_writer *w, const char *name, kvf_dtype dtype, int ndim,
                            const int64_t *shape, kvf_dtype src_dtype, const void *data,
                            bool planned) {
    KVF_CHECK(w && name, KVF_ERR_ARG, "safetensors writer: NULL argument");
    KVF_CHECK(strcmp(name, "__metadata__") != 0, KVF_ERR_ARG,
              "safetensors writer: \"__metadata__\" is not a tensor name");
    KVF_CHECK(valid_utf8_key(name), KVF_ERR_ARG,
              "safetensors writer: tensor name '%s' is not valid UTF-8", name);
    KVF_CHECK(dtype_valid(dtype) && dtype_valid(src_dtype), KVF_ERR_ARG,
              "safetensors writer: tensor '%s': bad dtype", name);
    KVF_CHECK(dtype_convertible(src_dtype, dtype), KVF_ERR_DTYPE,
              "safetensors writer: tensor '%s': %s data cannot be written as %s", name,
              kvf_st_dtype_name(src_dtype), kvf_st_dtype_name(dtype));
    KVF_CHECK(ndim >= 0 && ndim <= KVF_MAX_DIMS && (ndim == 0 || shape), KVF_ERR_SHAPE,
              "safetensors writer: tensor '%s': rank %d (0..%d)", name, ndim, KVF_MAX_DIMS);
    uint64_t numel = 1, nbytes;
    for (int i = 0; i < ndim; i++) {
        KVF_CHECK(shape[i] >= 0, KVF_ERR_SHAPE, "safetensors writer: tensor '%s': shape %s",
                  name, SHAPE_STR(ndim, shape));
        KVF_CHECK(!__builtin_mul_overflow(numel, (uint64_t)shape[i], &numel) &&
                      numel <= INT64_MAX,
                  KVF_ERR_SHAPE, "safetensors writer: tensor '%s': shape %s overflows", name,
                  SHAPE_STR(ndim, shape));
    }
    KVF_CHECK(!__builtin_mul_overflow(numel, (uint64_t)kvf_dtype_size(dtype), &nbytes) &&
                  !__builtin_mul_overflow(numel, (uint64_t)kvf_dtype_size(src_dtype),
                                          &(uint64_t){0}),
              KVF_ERR_SHAPE, "safetensors writer: tensor '%s': shape %s overflows", name,
              SHAPE_STR(ndim, shape));
    KVF_CHECK(data || numel == 0 || planned, KVF_ERR_ARG,
              "safetensors writer: tensor '%s': NULL data", name);
    for (size_t i = 0; i < w->n; i++)
        KVF_CHECK(strcmp(w->e[i].name, name) != 0, KVF_ERR_ARG,
                  "safetensors writer: tensor '%s' added twice", name);
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 64;
        struct st_entry *e = realloc(w->e, cap * sizeof *e);
        KVF_CHECK(e, KVF_ERR_OOM, "safetensors writer: out of memory");
        w->e = e;
        w->cap = cap;
    }
    struct st_entry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    KVF_CHECK(e->name, KVF_ERR_OOM, "safetensors writer: out of memory");
    e->dtype = dtype;
    e->src_dtype = src_dtype;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    e->numel = numel;
    e->nbytes = nbytes;
    e->data = data;
    e->planned = planned;
    w->n++;
    w->data_bytes += nbytes;
    return KVF_OK;
}

kvf_status kvf_st_writer_add_as(kvf_st_writer *w, const char *name, kvf_dtype dtype, int ndim,
                                const int64_t *shape, kvf_dtype src_dtype, const void *data) {
    return add_entry(w, name, dtype, ndim, shape, src_dtype, data, false);
}

kvf_status kvf_st_writer_add_planned(kvf_st_writer *w, const char *name, kvf_dtype dtype,
                                     int ndim, const int64_t *shape) {
    return add_entry(w, name, dtype, ndim, shape, dtype, NULL, true);
}

kvf_status kvf_st_writer_add(kvf_st_writer *w, const char *name, kvf_dtype dtype, int ndim,
                             const int64_t *shape, const void *data) {
    return kvf_st_writer_add_as(w, name, dtype, ndim, shape, dtype, data);
}

kvf_status kvf_st_writer_add_tensor(kvf_st_writer *w, const char *name, const kvf_tensor *t,
                                    kvf_dtype dtype) {
    KVF_CHECK(t && t->storage, KVF_ERR_ARG, "safetensors writer: tensor '%s': NULL tensor",
              name ? name : "?");
    KVF_CHECK(t->storage->device == KVF_DEVICE_CPU, KVF_ERR_DEVICE,
              "safetensors writer: tensor '%s' is on %s; copy it to the CPU first",
              name ? name : "?", kvf_device_name(t->storage->device));
    KVF_CHECK(kvf_tensor_is_contiguous(t), KVF_ERR_ARG,
              "safetensors writer: tensor '%s' is not contiguous", name ? name : "?");
    return kvf_st_writer_add_as(w, name, dtype, t->ndim, t->shape, t->dtype,
                                kvf_tensor_data(t));
}

kvf_status kvf_st_writer_set_metadata(kvf_st_writer *w, const char *key, const char *value) {
    KVF_CHECK(w && key && value, KVF_ERR_ARG, "safetensors writer: NULL metadata argument");
    KVF_CHECK(valid_utf8_key(key) && valid_utf8_key(value), KVF_ERR_ARG,
              "safetensors writer: metadata '%s' is not valid UTF-8", key);
    char *v = strdup(value);
    KVF_CHECK(v, KVF_ERR_OOM, "safetensors writer: out of memory");
    for (size_t i = 0; i < w->n_meta; i++)
        if (strcmp(w->meta_keys[i], key) == 0) {
            free(w->meta_vals[i]);
            w->meta_vals[i] = v;
            return KVF_OK;
        }
    if (w->n_meta == w->cap_meta) {
        size_t cap = w->cap_meta ? 2 * w->cap_meta : 8;
        char **k = realloc(w->meta_keys, cap * sizeof *k);
        if (k) w->meta_keys = k;
        char **vv = k ? realloc(w->meta_vals, cap * sizeof *vv) : NULL;
        if (vv) w->meta_vals = vv;
        if (!k || !vv) {
            free(v);
            return kvf_error_set(KVF_ERR_OOM, "safetensors writer: out of memory");
        }
        w->cap_meta = cap;
    }
    char *k = strdup(key);
    if (!k) {
        free(v);
        return kvf_error_set(KVF_ERR_OOM, "safetensors writer: out of memory");
    }
    w->meta_keys[w->n_meta] = k;
    w->meta_vals[w->n_meta] = v;
    w->n_meta++;
    return KVF_OK;
}

/* Larger elements first, then by name (as HF's writer does): every tensor then starts at an
 * offset aligned to its own element size, and the order is deterministic. */
static int cmp_entry_name(const void *a, const void *b) {
    const struct st_entry *x = a, *y = b;
    size_t sx = kvf_dtype_size(x->dtype), sy = kvf_dtype_size(y->dtype);
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* The header for entries [from, to): compact JSON, "__metadata__" first, then the entries in
 * order with contiguous offsets, padded with spaces to a multiple of 8 bytes. */
static kvf_status build_header(const kvf_st_writer *w, size_t from, size_t to, const char *path,
                               char **out, size_t *out_len) {
    json_t *root = json_object(), *meta = json_object();
    bool ok = root && meta && json_object_set_new(meta, "format", json_string("pt")) == 0;
    for (size_t i = 0; ok && i < w->n_meta; i++)
        ok = json_object_set_new(meta, w->meta_keys[i], json_string(w->meta_vals[i])) == 0;
    ok = ok && json_object_set(root, "__metadata__", meta) == 0;
    uint64_t off = 0;
    for (size_t i = from; ok && i < to; i++) {
        const struct st_entry *e = &w->e[i];
        json_t *shape = json_array(), *ent = json_object();
        ok = shape && ent;
        for (int d = 0; ok && d < e->ndim; d++)
            ok = json_array_append_new(shape, json_integer(e->shape[d])) == 0;
        ok = ok && json_object_set_new(ent, "dtype", json_string(kvf_st_dtype_name(e->dtype))) == 0;
        ok = ok && json_object_set(ent, "shape", shape) == 0;
        ok = ok && json_object_set_new(ent, "data_offsets",
                                       json_pack("[II]", (json_int_t)off,
                                                 (json_int_t)(off + e->nbytes))) == 0;
        ok = ok && json_object_set(root, e->name, ent) == 0;
        json_decref(shape);
        json_decref(ent);
        off += e->nbytes;
    }
    char *s = ok ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(meta);
    json_decref(root);
    KVF_CHECK(s, KVF_ERR_OOM, "cannot write %s: building the JSON header failed", path);
    size_t len = strlen(s), padded = (len + 7) & ~(size_t)7;
    if (padded > KVF_ST_MAX_HEADER) {
        free(s);
        return kvf_error_set(KVF_ERR_ARG, "cannot write %s: header of %zu bytes exceeds %" PRIu64,
                             path, padded, KVF_ST_MAX_HEADER);
    }
    char *p = realloc(s, padded + 1);
    if (!p) {
        free(s);
        return kvf_error_set(KVF_ERR_OOM, "cannot write %s: out of memory", path);
    }
    memset(p + len, ' ', padded - len);
    p[padded] = '\0';
    *out = p;
    *out_len = padded;
    return KVF_OK;
}

/* ---- atomic file output -------------------------------------------------------------------- */

struct st_out {
    FILE *fp;
    const char *path; /* final path */
    char *tmp;
};

static kvf_status out_fail(struct st_out *o, int err, const char *what) {
    return kvf_error_set(KVF_ERR_IO, "cannot write %s (%s %s): %s", o->path, what, o->tmp,
                         strerror(err ? err : EIO));
}

static kvf_status out_write(struct st_out *o, const void *p, size_t n) {
    if (n == 0) return KVF_OK;
    errno = 0;
    if (fwrite(p, 1, n, o->fp) != n) return out_fail(o, errno, "writing");
    return KVF_OK;
}

static void fsync_parent_dir(const char *path) {
    /* Best effort: makes the rename durable; some filesystems refuse fsync on directories
     * and the file itself is already complete and in place. */
    char *dir = strdup(path);
    if (!dir) return;
    char *slash = strrchr(dir, '/');
    const char *d = dir;
    if (!slash) d = ".";
    else if (slash == dir) slash[1] = '\0';
    else *slash = '\0';
    int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dir);
}

typedef kvf_status (*st_body_fn)(struct st_out *o, const void *ud);

/* Writes path through "<path>.tmp.<pid>": body, fflush, fsync, fclose, rename. Any failure
 * removes the temp file and leaves path as it was. */
static kvf_status write_atomic(const char *path, st_body_fn body, const void *ud) {
    struct st_out o = {.path = path};
    size_t n = strlen(path) + 32;
    o.tmp = malloc(n);
    KVF_CHECK(o.tmp, KVF_ERR_OOM, "cannot write %s: out of memory", path);
    snprintf(o.tmp, n, "%s.tmp.%ld", path, (long)getpid());
    o.fp = fopen(o.tmp, "wb");
    if (!o.fp) {
        kvf_status s = out_fail(&o, errno, "creating");
        free(o.tmp);
        return s;
    }
    kvf_status s = body(&o, ud);
    if (s == KVF_OK) {
        errno = 0;
        if (fflush(o.fp) != 0) s = out_fail(&o, errno, "flushing");
    }
    if (s == KVF_OK && fsync(fileno(o.fp)) != 0) s = out_fail(&o, errno, "syncing");
    errno = 0;
    int rc = fclose(o.fp); /* the stream is gone after fclose, whatever it returns */
    if (s == KVF_OK && rc != 0) s = out_fail(&o, errno, "closing");
    if (s == KVF_OK && rename(o.tmp, path) != 0) s = out_fail(&o, errno, "renaming");
    if (s != KVF_OK) unlink(o.tmp);
    else fsync_parent_dir(path);
    free(o.tmp);
    return s;
}

/* ---- one safetensors file ------------------------------------------------------------------ */

struct st_file_job {
    const kvf_st_writer *w;
    size_t from, to;
    const char *header;
    size_t header_len;
};

static kvf_status write_entry_data(struct st_out *o, const struct st_entry *e) {
    if (e->src_dtype == e->dtype) return out_write(o, e->data, (size_t)e->nbytes);
    enum { CHUNK = 16384 };
    unsigned char *buf = malloc(CHUNK * 8);
    KVF_CHECK(buf, KVF_ERR_OOM, "cannot write %s: out of memory", o->path);
    kvf_status s = KVF_OK;
    size_t ss = kvf_dtype_size(e->src_dtype), ds = kvf_dtype_size(e->dtype);
    for (uint64_t i = 0; s == KVF_OK && i < e->numel; i += CHUNK) {
        size_t m = (size_t)(e->numel - i < CHUNK ? e->numel - i : CHUNK);
        s = convert((const unsigned char *)e->data + (size_t)i * ss, e->src_dtype, buf, e->dtype,
                    m, (size_t)i, e->name, o->path);
        if (s == KVF_OK) s = out_write(o, buf, m * ds);
    }
    free(buf);
    return s;
}

static kvf_status st_file_body(struct st_out *o, const void *ud) {
    const struct st_file_job *j = ud;
    unsigned char len[8];
    uint64_t hl = j->header_len;
    memcpy(len, &hl, 8); /* little-endian host */
    KVF_TRY(out_write(o, len, 8));
    KVF_TRY(out_write(o, j->header, j->header_len));
    for (size_t i = j->from; i < j->to; i++) KVF_TRY(write_entry_data(o, &j->w->e[i]));
    return KVF_OK;
}

static kvf_status write_range(const kvf_st_writer *w, size_t from, size_t to, const char *path) {
    for (size_t i = from; i < to; i++)
        KVF_CHECK(!w->e[i].planned, KVF_ERR_STATE,
                  "cannot write %s: tensor '%s' was planned for a kvf_st_stream and has no data",
                  path, w->e[i].name);
    struct st_file_job j = {.w = w, .from = from, .to = to};
    char *hdr;
    KVF_TRY(build_header(w, from, to, path, &hdr, &j.header_len));
    j.header = hdr;
    kvf_status s = write_atomic(path, st_file_body, &j);
    free(hdr);
    return s;
}

static void writer_sort(kvf_st_writer *w) {
    if (w->n > 1) qsort(w->e, w->n, sizeof *w->e, cmp_entry_name);
}

kvf_status kvf_st_writer_write(kvf_st_writer *w, const char *path) {
    KVF_CHECK(w && path, KVF_ERR_ARG, "safetensors writer: NULL argument");
    writer_sort(w);
    return write_range(w, 0, w->n, path);
}

/* ---- sharded ------------------------------------------------------------------------------- */

struct st_bytes {
    const char *p;
    size_t n;
};

static kvf_status bytes_body(struct st_out *o, const void *ud) {
    const struct st_bytes *b = ud;
    return out_write(o, b->p, b->n);
}

/* "model-%05u-of-%05u.safetensors" -> (i, n). */
static bool parse_shard_name(const char *s, unsigned *i, unsigned *n) {
    static const char tmpl[] = "model-DDDDD-of-DDDDD.safetensors";
    if (strlen(s) != sizeof tmpl - 1) return false;
    unsigned v[2] = {0, 0};
    int k = -1;
    for (size_t c = 0; c < sizeof tmpl - 1; c++) {
        if (tmpl[c] == 'D') {
            if (s[c] < '0' || s[c] > '9') return false;
            if (c == 0 || tmpl[c - 1] != 'D') k++;
            v[k] = v[k] * 10 + (unsigned)(s[c] - '0');
        } else if (s[c] != tmpl[c]) {
            return false;
        }
    }
    *i = v[0];
    *n = v[1];
    return true;
}

static kvf_status remove_file(const char *dir, const char *name) {
    char *p = path_join(dir, name);
    KVF_CHECK(p, KVF_ERR_OOM, "%s: out of memory", dir);
    kvf_status s = KVF_OK;
    if (unlink(p) != 0 && errno != ENOENT)
        s = kvf_error_set(KVF_ERR_IO, "cannot remove stale %s: %s", p, strerror(errno));
    free(p);
    return s;
}

/* Removes what an earlier save left in dir that the one just written (n_shards shards, or a
 * single file when n_shards == 1) does not use. */
static kvf_status remove_stale(const char *dir, unsigned n_shards) {
    if (n_shards == 1) KVF_TRY(remove_file(dir, ST_INDEX_NAME));
    else KVF_TRY(remove_file(dir, ST_SINGLE_NAME));
    DIR *dp = opendir(dir);
    KVF_CHECK(dp, KVF_ERR_IO, "cannot list %s: %s", dir, strerror(errno));
    kvf_status s = KVF_OK;
    struct dirent *de;
    while (s == KVF_OK && (de = readdir(dp)) != NULL) {
        unsigned i, n;
        if (!parse_shard_name(de->d_name, &i, &n)) continue;
        if (n_shards > 1 && n == n_shards && i >= 1 && i <= n) continue;
        s = remove_file(dir, de->d_name);
    }
    closedir(dp);
    return s;
}

static kvf_status write_index(const kvf_st_writer *w, const size_t *start, unsigned n_shards,
                              const char *dir) {
    char *path = path_join(dir, ST_INDEX_NAME);
    KVF_CHECK(path, KVF_ERR_OOM, "%s: out of memory", dir);
    json_t *wm = json_object();
    json_t *root = json_pack("{s:{s:I},s:o}", "metadata", "total_size",
                             (json_int_t)w->data_bytes, "weight_map", wm);
    bool ok = root != NULL;
    char name[64];
    for (unsigned k = 0; ok && k < n_shards; k++) {
        snprintf(name, sizeof name, "model-%05u-of-%05u.safetensors", k + 1, n_shards);
        for (size_t i = start[k]; ok && i < start[k + 1]; i++)
            ok = json_object_set_new(wm, w->e[i].name, json_string(name)) == 0;
    }
    char *s = ok ? json_dumps(root, JSON_INDENT(2)) : NULL;
    json_decref(root);
    kvf_status st;
    if (!s) {
        st = kvf_error_set(KVF_ERR_OOM, "cannot write %s: building the JSON failed", path);
    } else {
        size_t len = strlen(s);
        char *t = realloc(s, len + 2);
        if (!t) {
            free(s);
            st = kvf_error_set(KVF_ERR_OOM, "cannot write %s: out of memory", path);
        } else {
            t[len] = '\n';
            t[len + 1] = '\0';
            struct st_bytes b = {t, len + 1};
            st = write_atomic(path, bytes_body, &b);
            free(t);
        }
    }
    free(path);
    return st;
}

/* Greedy split of the sorted entries: start[k] = first entry of shard k, start[n] = w->n.
 * NULL when out of memory. */
static size_t *split_shards(const kvf_st_writer *w, uint64_t max_shard_bytes, size_t *n_out) {
    size_t *start = malloc((w->n + 2) * sizeof *start);
    if (!start) return NULL;
    size_t n = 0;
    uint64_t cur = 0;
    start[n++] = 0;
    for (size_t i = 0; i < w->n; i++) {
        if (cur > 0 && cur + w->e[i].nbytes > max_shard_bytes) {
            start[n++] = i;
            cur = 0;
        }
        cur += w->e[i].nbytes;
    }
    start[n] = w->n;
    *n_out = n;
    return start;
}

kvf_status kvf_st_writer_write_sharded(kvf_st_writer *w, const char *dir,
                                       uint64_t max_shard_bytes) {
    KVF_CHECK(w && dir, KVF_ERR_ARG, "safetensors writer: NULL argument");
    KVF_CHECK(max_shard_bytes > 0, KVF_ERR_ARG, "safetensors writer: max shard size is 0");
    writer_sort(w);
    size_t n, *start = split_shards(w, max_shard_bytes, &n);
    KVF_CHECK(start, KVF_ERR_OOM, "%s: out of memory", dir);
    kvf_status s = KVF_OK;
    if (n > 99999) {
        s = kvf_error_set(KVF_ERR_ARG, "%s: %zu shards; at most 99999 (raise the max shard size)",
                          dir, n);
    } else if (n == 1) {
        char *path = path_join(dir, ST_SINGLE_NAME);
        s = path ? write_range(w, 0, w->n, path)
                 : kvf_error_set(KVF_ERR_OOM, "%s: out of memory", dir);
        free(path);
    } else {
        char name[64];
        for (size_t k = 0; s == KVF_OK && k < n; k++) {
            snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", k + 1, n);
            char *path = path_join(dir, name);
            s = path ? write_range(w, start[k], start[k + 1], path)
                     : kvf_error_set(KVF_ERR_OOM, "%s: out of memory", dir);
            free(path);
        }
        if (s == KVF_OK) s = write_index(w, start, (unsigned)n, dir);
    }
    if (s == KVF_OK) s = remove_stale(dir, (unsigned)n);
    free(start);
    return s;
}

/* ---- releasing mapped pages ---------------------------------------------------------------- */

void kvf_st_dir_release(const kvf_st_dir *d, const kvf_st_tensor *t) {
    if (!d || !t || !t->nbytes) return;
    const unsigned char *p = t->data;
    for (size_t i = 0; i < d->n_shards; i++) {
        const kvf_st_file *f = d->shards[i];
        const unsigned char *m = f->map;
        if (!m || f->heap || p < m || p + t->nbytes > m + f->map_size) continue;
        long ps = sysconf(_SC_PAGESIZE);
        uintptr_t a = (uintptr_t)p & ~(uintptr_t)(ps - 1), b = (uintptr_t)(p + t->nbytes);
        /* a read-only private mapping: the pages leave this process and come back from the
         * file (page cache) if touched again */
        (void)madvise((void *)a, (size_t)(b - a), MADV_DONTNEED);
        return;
    }
}

/* ---- streaming writer ---------------------------------------------------------------------- */

struct kvf_st_stream {
    kvf_st_writer *w;
    char *dir;
    size_t n_shards, *start;
    char **paths, **tmps;
    int *fds;
    uint64_t *data_start;  /* per shard: 8 + header length */
    uint64_t *offset;      /* per entry: offset within its shard's data section */
    size_t *shard_of;      /* per entry */
    bool *done;            /* per entry */
    size_t *by_name;       /* entry indices sorted by name */
};

static void stream_free(kvf_st_stream *s, bool unlink_tmps) {
    if (!s) return;
    for (size_t k = 0; k < s->n_shards; k++) {
        if (s->fds && s->fds[k] >= 0) close(s->fds[k]);
        if (unlink_tmps && s->tmps && s->tmps[k]) unlink(s->tmps[k]);
        if (s->paths) free(s->paths[k]);
        if (s->tmps) free(s->tmps[k]);
    }
    free(s->paths);
    free(s->tmps);
    free(s->fds);
    free(s->data_start);
    free(s->offset);
    free(s->shard_of);
    free(s->done);
    free(s->by_name);
    free(s->start);
    free(s->dir);
    free(s);
}

void kvf_st_stream_abort(kvf_st_stream *s) { stream_free(s, true); }

static const kvf_st_writer *by_name_w; /* qsort context (single-threaded use) */
static int cmp_by_name(const void *a, const void *b) {
    return strcmp(by_name_w->e[*(const size_t *)a].name, by_name_w->e[*(const size_t *)b].name);
}

static kvf_status pwrite_all(int fd, const void *p, size_t n, uint64_t off, const char *path) {
    const unsigned char *c = p;
    while (n > 0) {
        ssize_t k = pwrite(fd, c, n, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return kvf_error_set(KVF_ERR_IO, "cannot write %s: %s", path, strerror(k < 0 ? errno : EIO));
        c += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return KVF_OK;
}

kvf_st_stream *kvf_st_stream_begin(kvf_st_writer *w, const char *dir, uint64_t max_shard_bytes) {
    KVF_CHECK_NULL(w && dir, KVF_ERR_ARG, "safetensors stream: NULL argument");
    KVF_CHECK_NULL(max_shard_bytes > 0, KVF_ERR_ARG, "safetensors stream: max shard size is 0");
    writer_sort(w);
    kvf_st_stream *s = calloc(1, sizeof *s);
    KVF_CHECK_NULL(s, KVF_ERR_OOM, "%s: out of memory", dir);
    s->w = w;
    s->dir = strdup(dir);
    s->start = split_shards(w, max_shard_bytes, &s->n_shards);
    size_t n = w->n ? w->n : 1, ns = s->n_shards;
    s->paths = calloc(ns, sizeof *s->paths);
    s->tmps = calloc(ns, sizeof *s->tmps);
    s->fds = malloc(ns * sizeof *s->fds);
    s->data_start = calloc(ns, sizeof *s->data_start);
    s->offset = calloc(n, sizeof *s->offset);
    s->shard_of = calloc(n, sizeof *s->shard_of);
    s->done = calloc(n, sizeof *s->done);
    s->by_name = calloc(n, sizeof *s->by_name);
    if (!s->dir || !s->start || !s->paths || !s->tmps || !s->fds || !s->data_start || !s->offset ||
        !s->shard_of || !s->done || !s->by_name) {
        if (s->fds) for (size_t k = 0; k < ns; k++) s->fds[k] = -1;
        else s->n_shards = 0;
        stream_free(s, false);
        kvf_error_set(KVF_ERR_OOM, "%s: out of memory", dir);
        return NULL;
    }
    for (size_t k = 0; k < ns; k++) s->fds[k] = -1;
    if (ns > 99999) {
        kvf_error_set(KVF_ERR_ARG, "%s: %zu shards; at most 99999 (raise the max shard size)", dir, ns);
        stream_free(s, false);
        return NULL;
    }
    for (size_t i = 0; i < w->n; i++) s->by_name[i] = i;
    by_name_w = w;
    if (w->n > 1) qsort(s->by_name, w->n, sizeof *s->by_name, cmp_by_name);
    kvf_status st = KVF_OK;
    for (size_t k = 0; st == KVF_OK && k < ns; k++) {
        char name[64];
        if (ns == 1) snprintf(name, sizeof name, "%s", ST_SINGLE_NAME);
        else snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", k + 1, ns);
        s->paths[k] = path_join(dir, name);
        size_t len = s->paths[k] ? strlen(s->paths[k]) + 32 : 0;
        s->tmps[k] = len ? malloc(len) : NULL;
        if (!s->paths[k] || !s->tmps[k]) {
            st = kvf_error_set(KVF_ERR_OOM, "%s: out of memory", dir);
            break;
        }
        snprintf(s->tmps[k], len, "%s.tmp.%ld", s->paths[k], (long)getpid());
        char *hdr = NULL;
        size_t hl = 0;
        st = build_header(w, s->start[k], s->start[k + 1], s->paths[k], &hdr, &hl);
        if (st != KVF_OK) break;
        uint64_t off = 0;
        for (size_t i = s->start[k]; i < s->start[k + 1]; i++) {
            s->offset[i] = off;
            s->shard_of[i] = k;
            off += w->e[i].nbytes;
        }
        s->data_start[k] = 8 + hl;
        s->fds[k] = open(s->tmps[k], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
        if (s->fds[k] < 0) {
            st = kvf_error_set(KVF_ERR_IO, "cannot write %s (creating %s): %s", s->paths[k], s->tmps[k],
                               strerror(errno));
            free(hdr);
            break;
        }
        unsigned char lenb[8];
        uint64_t h64 = hl;
        memcpy(lenb, &h64, 8);
        st = pwrite_all(s->fds[k], lenb, 8, 0, s->tmps[k]);
        if (st == KVF_OK) st = pwrite_all(s->fds[k], hdr, hl, 8, s->tmps[k]);
        free(hdr);
        if (st == KVF_OK && ftruncate(s->fds[k], (off_t)(8 + hl + off)) != 0)
            st = kvf_error_set(KVF_ERR_IO, "cannot write %s (sizing %s): %s", s->paths[k], s->tmps[k],
                               strerror(errno));
    }
    if (st != KVF_OK) {
        stream_free(s, true);
        return NULL;
    }
    return s;
}

static size_t stream_find(const kvf_st_stream *s, const char *name) {
    size_t lo = 0, hi = s->w->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(s->w->e[s->by_name[mid]].name, name);
        if (c == 0) return s->by_name[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return (size_t)-1;
}

kvf_status kvf_st_stream_put(kvf_st_stream *s, const char *name, kvf_dtype src_dtype,
                             const void *data) {
    KVF_CHECK(s && name, KVF_ERR_ARG, "safetensors stream: NULL argument");
    size_t i = stream_find(s, name);
    KVF_CHECK(i != (size_t)-1, KVF_ERR_ARG, "safetensors stream into %s: tensor '%s' was not planned",
              s->dir, name);
    const struct st_entry *e = &s->w->e[i];
    size_t k = s->shard_of[i];
    KVF_CHECK(!s->done[i], KVF_ERR_STATE, "safetensors stream into %s: tensor '%s' written twice",
              s->paths[k], name);
    KVF_CHECK(dtype_valid(src_dtype) && dtype_convertible(src_dtype, e->dtype), KVF_ERR_DTYPE,
              "safetensors stream into %s: tensor '%s': %s data cannot be written as %s", s->paths[k],
              name, dtype_valid(src_dtype) ? kvf_st_dtype_name(src_dtype) : "?",
              kvf_st_dtype_name(e->dtype));
    KVF_CHECK(data || e->numel == 0, KVF_ERR_ARG, "safetensors stream: tensor '%s': NULL data", name);
    uint64_t base = s->data_start[k] + s->offset[i];
    kvf_status st = KVF_OK;
    if (src_dtype == e->dtype) {
        st = pwrite_all(s->fds[k], data, (size_t)e->nbytes, base, s->tmps[k]);
    } else {
        enum { CHUNK = 1 << 18 };
        unsigned char *buf = malloc((size_t)CHUNK * 8);
        KVF_CHECK(buf, KVF_ERR_OOM, "cannot write %s: out of memory", s->paths[k]);
        size_t ss = kvf_dtype_size(src_dtype), ds = kvf_dtype_size(e->dtype);
        for (uint64_t j = 0; st == KVF_OK && j < e->numel; j += CHUNK) {
            size_t m = (size_t)(e->numel - j < CHUNK ? e->numel - j : CHUNK);
            st = convert((const unsigned char *)data + (size_t)j * ss, src_dtype, buf, e->dtype, m,
                         (size_t)j, e->name, s->paths[k]);
            if (st == KVF_OK) st = pwrite_all(s->fds[k], buf, m * ds, base + j * ds, s->tmps[k]);
        }
        free(buf);
    }
    if (st == KVF_OK) s->done[i] = true;
    return st;
}

kvf_status kvf_st_stream_finish(kvf_st_stream *s) {
    KVF_CHECK(s, KVF_ERR_ARG, "safetensors stream: NULL argument");
    kvf_status st = KVF_OK;
    for (size_t i = 0; st == KVF_OK && i < s->w->n; i++)
        if (!s->done[i])
            st = kvf_error_set(KVF_ERR_STATE, "cannot finish %s: tensor '%s' was planned but never written",
                               s->paths[s->shard_of[i]], s->w->e[i].name);
    for (size_t k = 0; st == KVF_OK && k < s->n_shards; k++) {
        if (fsync(s->fds[k]) != 0)
            st = kvf_error_set(KVF_ERR_IO, "cannot write %s (syncing %s): %s", s->paths[k], s->tmps[k],
                               strerror(errno));
        int rc = close(s->fds[k]);
        s->fds[k] = -1;
        if (st == KVF_OK && rc != 0)
            st = kvf_error_set(KVF_ERR_IO, "cannot write %s (closing %s): %s", s->paths[k], s->tmps[k],
                               strerror(errno));
    }
    for (size_t k = 0; st == KVF_OK && k < s->n_shards; k++) {
        if (rename(s->tmps[k], s->paths[k]) != 0)
            st = kvf_error_set(KVF_ERR_IO, "cannot write %s (renaming %s): %s", s->paths[k], s->tmps[k],
                               strerror(errno));
        else {
            free(s->tmps[k]);
            s->tmps[k] = NULL;
        }
    }
    if (st == KVF_OK && s->n_shards > 1) st = write_index(s->w, s->start, (unsigned)s->n_shards, s->dir);
    if (st == KVF_OK) st = remove_stale(s->dir, (unsigned)s->n_shards);
    if (st == KVF_OK) fsync_parent_dir(s->paths[0]);
    stream_free(s, true);
    return st;
}
