/* kvf_resave SRC DST [f32|bf16] — load a checkpoint with kvforge, write it back with
 * kvforge's writer, reload what it wrote, and store kvforge's logits for SRC/reference_logits.safetensors'
 * input_ids (or ids 0..23 when absent) in DST/kvforge_logits.safetensors. Used on the GPU
 * machine by tools/hf_roundtrip.py to check that Hugging Face transformers loads what
 * kvforge writes and computes the same logits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"

static int fail(const char *what) {
    fprintf(stderr, "kvf_resave: %s: %s\n", what, kvf_error_message());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: kvf_resave SRC DST [f32|bf16]\n");
        return 2;
    }
    kvf_dtype dt = argc > 3 && !strcmp(argv[3], "bf16") ? KVF_DTYPE_BF16 : KVF_DTYPE_F32;
    kvf_model *m = kvf_checkpoint_load(argv[1], KVF_DEVICE_CPU);
    if (!m) return fail(argv[1]);
    if (kvf_checkpoint_save(m, argv[2], dt, 0) != KVF_OK) return fail(argv[2]);
    /* logits of what was written (a bf16 save rounds the weights) */
    kvf_model_free(m);
    m = kvf_checkpoint_load(argv[2], KVF_DEVICE_CPU);
    if (!m) return fail(argv[2]);
    /* input ids */
    int64_t B = 1, T = 24;
    int32_t *ids = NULL;
    char ref[2048];
    snprintf(ref, sizeof ref, "%s/reference_logits.safetensors", argv[1]);
    kvf_st_file *f = kvf_st_file_open(ref);
    const kvf_st_tensor *t = f ? kvf_st_file_find(f, "input_ids") : NULL;
    kvf_error_clear();
    if (t && t->ndim == 2) {
        B = t->shape[0];
        T = t->shape[1];
        ids = malloc(sizeof(int32_t) * (size_t)(B * T));
        if (kvf_st_tensor_read(t, KVF_DTYPE_I32, ids, sizeof(int32_t) * (size_t)(B * T)) != KVF_OK)
            return fail(ref);
    } else {
        ids = malloc(sizeof(int32_t) * (size_t)T);
        for (int i = 0; i < T; i++) ids[i] = (int32_t)(i * 7 % m->cfg.vocab_size);
    }
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_ctx_set_grad(ctx, false);
    kvf_tensor *x = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, (int64_t[]){B, T}, ids);
    kvf_tensor *y = x ? kvf_model_forward(m, ctx, x) : NULL;
    if (!y) return fail("forward");
    kvf_st_writer *w = kvf_st_writer_init();
    char out[2048];
    snprintf(out, sizeof out, "%s/kvforge_logits.safetensors", argv[2]);
    if (kvf_st_writer_add_tensor(w, "logits", y, KVF_DTYPE_F32) != KVF_OK ||
        kvf_st_writer_add(w, "input_ids", KVF_DTYPE_I32, 2, (int64_t[]){B, T}, ids) != KVF_OK ||
        kvf_st_writer_write(w, out) != KVF_OK)
        return fail(out);
    printf("kvf_resave: %s -> %s (%s), logits %lldx%lldx%lld\n", argv[1], argv[2], kvf_dtype_name(dt),
           (long long)B, (long long)T, (long long)m->cfg.vocab_size);
    kvf_st_writer_free(w);
    if (f) kvf_st_file_close(f);
    kvf_ctx_free(ctx);
    kvf_model_free(m);
    free(ids);
    return 0;
}
