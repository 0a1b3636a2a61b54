#include "generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"
#include "autograd/rng.h"

static int cmp_desc(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

/* Sample an id from logits row (length V). */
static int32_t sample(const float *logits, int64_t V, const kvf_generate_opts *o, kvf_rng *r,
                      double *scratch) {
    if (o->temperature <= 0) {
        int64_t best = 0;
        for (int64_t i = 1; i < V; i++)
            if (logits[i] > logits[best]) best = i;
        return (int32_t)best;
    }
    double mx = -INFINITY;
    for (int64_t i = 0; i < V; i++) mx = fmax(mx, (double)logits[i]);
    double cutoff = -INFINITY;
    if (o->top_k > 0 && o->top_k < V) {
        for (int64_t i = 0; i < V; i++) scratch[i] = logits[i];
        qsort(scratch, (size_t)V, sizeof *scratch, cmp_desc);
        cutoff = scratch[o->top_k - 1];
    }
    double z = 0;
    for (int64_t i = 0; i < V; i++) {
        scratch[i] = logits[i] >= cutoff ? exp(((double)logits[i] - mx) / o->temperature) : 0.0;
        z += scratch[i];
    }
    double u = kvf_rng_uniform(r) * z, acc = 0;
    for (int64_t i = 0; i < V; i++) {
        acc += scratch[i];
        if (u < acc) return (int32_t)i;
    }
    for (int64_t i = V - 1; i >= 0; i--)
        if (scratch[i] > 0) return (int32_t)i;
    return 0;
}

kvf_status kvf_generate(kvf_model *m, const kvf_tokenizer *tok, const char *prompt,
                        const kvf_generate_opts *o, FILE *out) {
    kvf_ids ids = {0};
    KVF_TRY(kvf_tokenizer_encode(tok, prompt, strlen(prompt), &ids));
    if (ids.count == 0 && tok->bos_id >= 0) kvf_ids_push(&ids, tok->bos_id);
    if (ids.count == 0 && tok->eos_id >= 0) kvf_ids_push(&ids, tok->eos_id);
    if (ids.count == 0) {
        kvf_ids_free(&ids);
        return kvf_error_set(KVF_ERR_ARG, "generate: the prompt is empty and the tokenizer has no "
                                          "begin or end-of-text token to start from");
    }
    kvf_ctx *ctx = kvf_ctx_init(m->device);
    int64_t V = m->cfg.vocab_size;
    float *row = malloc(sizeof(float) * (size_t)V);
    double *scratch = malloc(sizeof(double) * (size_t)V);
    if (!ctx || !row || !scratch) {
        kvf_ctx_free(ctx);
        free(row);
        free(scratch);
        kvf_ids_free(&ids);
        return kvf_error_set(KVF_ERR_OOM, "generate: out of memory");
    }
    kvf_ctx_set_grad(ctx, false);
    kvf_rng r;
    kvf_rng_init(&r, o->seed);
    kvf_status st = KVF_OK;
    kvf_bytes text = {0};
    for (int64_t s = 0; s < o->max_new && st == KVF_OK; s++) {
        int64_t T = ids.count < m->cfg.max_seq_len ? ids.count : m->cfg.max_seq_len;
        kvf_ctx_reset(ctx);
        kvf_tensor *x = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, (int64_t[]){1, T},
                                             ids.data + ids.count - T);
        kvf_tensor *logits = x ? kvf_model_forward(m, ctx, x) : NULL;
        kvf_tensor *last = logits ? kvf_cast(ctx, kvf_slice(ctx, logits, 1, T - 1, 1), KVF_DTYPE_F32) : NULL;
        if (!last) {
            st = kvf_error_code();
            break;
        }
        if ((st = kvf_tensor_to_host(last, row, sizeof(float) * (size_t)V)) != KVF_OK) break;
        int32_t id = sample(row, V, o, &r, scratch);
        if ((st = kvf_ids_push(&ids, id)) != KVF_OK) break;
        text.len = 0;
        if (id < tok->vocab_size && (st = kvf_tokenizer_decode(tok, &id, 1, &text)) == KVF_OK) {
            fwrite(text.data, 1, text.len, out);
            fflush(out);
        }
    }
    fputc('\n', out);
    kvf_bytes_free(&text);
    kvf_ctx_free(ctx);
    free(row);
    free(scratch);
    kvf_ids_free(&ids);
    return st;
}
