/* fuzz_safetensors.c — the safetensors reader (model/safetensors.c) on arbitrary bytes:
 * header length, JSON header, dtypes, shapes, data_offsets coverage; then every tensor of an
 * accepted file is looked up, described and converted (float -> F32/BF16, int -> I64/I32). */
#include "fuzz_common.h"

#include "model/safetensors.h"

#define NAME "fuzz.safetensors"

static void read_as(const kvf_st_tensor *t, kvf_dtype dt) {
    size_t bytes = (size_t)t->numel * kvf_dtype_size(dt);
    void *dst = malloc(bytes ? bytes : 1);
    if (!dst) abort();
    kvf_status st = kvf_st_tensor_read(t, dt, dst, bytes);
    if (st == KVF_OK) fuzz_check_ok("kvf_st_tensor_read");
    else fuzz_check_error(st, NULL);
    kvf_error_clear();
    free(dst);
    if (bytes) { /* a destination one element short must be refused, not overrun */
        dst = malloc(bytes);
        if (!dst) abort();
        st = kvf_st_tensor_read(t, dt, dst, bytes - 1);
        FUZZ_REQUIRE(st != KVF_OK, "a short destination was accepted");
        kvf_error_clear();
        free(dst);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kvf_error_clear();
    kvf_st_file *f = kvf_st_file_open_buffer(NAME, data, size);
    if (!f) {
        fuzz_check_error(kvf_error_code(), NAME);
        kvf_error_clear();
        return 0;
    }
    fuzz_check_ok("kvf_st_file_open_buffer");
    size_t n = kvf_st_file_count(f);
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const kvf_st_tensor *t = kvf_st_file_tensor(f, i);
        FUZZ_REQUIRE(t && t->name, "tensor %zu missing", i);
        FUZZ_REQUIRE(kvf_st_file_find(f, t->name) == t, "find(%s) is not tensor %zu", t->name, i);
        if (i) FUZZ_REQUIRE(strcmp(kvf_st_file_tensor(f, i - 1)->name, t->name) < 0, "not sorted");
        FUZZ_REQUIRE(t->nbytes == (size_t)t->numel * kvf_dtype_size(t->dtype), "nbytes");
        FUZZ_REQUIRE(t->offset + t->nbytes <= size, "tensor beyond the input");
        total += t->nbytes;
        char buf[128];
        kvf_st_tensor_describe(t, buf, sizeof buf);
        if (t->nbytes > (1u << 20)) continue; /* keep iterations fast */
        bool is_int = t->dtype == KVF_DTYPE_I32 || t->dtype == KVF_DTYPE_I64;
        read_as(t, is_int ? KVF_DTYPE_I64 : KVF_DTYPE_F32);
        read_as(t, is_int ? KVF_DTYPE_I32 : KVF_DTYPE_BF16);
        if (!is_int) read_as(t, KVF_DTYPE_F16);
    }
    FUZZ_REQUIRE(total <= size, "tensors cover more bytes than the file has");
    const kvf_st_tensor *out = NULL;
    kvf_status st = kvf_st_file_get(f, "no such tensor \x01", &out);
    fuzz_check_error(st, NAME);
    kvf_error_clear();
    for (size_t i = 0; i < kvf_st_file_metadata_count(f); i++) {
        const char *k, *v;
        kvf_st_file_metadata_at(f, i, &k, &v);
        FUZZ_REQUIRE(k && v && kvf_st_file_metadata(f, k) == v, "metadata %zu", i);
    }
    kvf_st_file_close(f);
    return 0;
}
