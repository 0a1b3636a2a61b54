#include "convert_testutil.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "autograd/context.h"
#include "autograd/rng.h"
#include "data/tokenizer_load.h"

double *kvf_test_logits(kvf_model *m, const int32_t *ids, int64_t B, int64_t T) {
    int32_t fixed[2 * KVF_TEST_T_SEQ];
    if (!ids) {
        kvf_rng r;
        kvf_rng_init(&r, 77);
        for (int i = 0; i < 2 * KVF_TEST_T_SEQ; i++)
            fixed[i] = (int32_t)kvf_rng_below(&r, (uint64_t)m->cfg.vocab_size);
        ids = fixed;
        B = 2;
        T = KVF_TEST_T_SEQ;
    }
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_ctx_set_grad(ctx, false);
    kvf_tensor *t = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, (int64_t[]){B, T}, ids);
    kvf_tensor *lg = kvf_model_forward(m, ctx, t);
    ck_assert_msg(lg != NULL, "%s", kvf_error_message());
    int64_t n = kvf_tensor_numel(lg);
    ck_assert_int_eq(n, B * T * m->cfg.vocab_size);
    double *out = malloc(sizeof(double) * (size_t)n);
    for (int64_t i = 0; i < n; i++) out[i] = kvf_tensor_get_flat(lg, i);
    kvf_ctx_free(ctx);
    return out;
}

double kvf_test_max_logit_diff(kvf_model *a, kvf_model *b, const int32_t *ids, int64_t B, int64_t T) {
    if (!ids) {
        B = 2;
        T = KVF_TEST_T_SEQ;
    }
    ck_assert_int_eq(a->cfg.vocab_size, b->cfg.vocab_size);
    double *x = kvf_test_logits(a, ids, B, T), *y = kvf_test_logits(b, ids, B, T), m = 0;
    for (int64_t i = 0; i < B * T * a->cfg.vocab_size; i++) {
        double d = fabs(x[i] - y[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    free(x);
    free(y);
    return m;
}

double kvf_test_logit_scale(kvf_model *m) {
    double *x = kvf_test_logits(m, NULL, 0, 0), s = 0;
    for (int64_t i = 0; i < 2 * KVF_TEST_T_SEQ * m->cfg.vocab_size; i++) s = fmax(s, fabs(x[i]));
    free(x);
    return s;
}

void kvf_test_calibrate(kvf_model *m, kvf_calib *cal, const int *partner, uint64_t seed) {
    int64_t n = 8 * 24 + 1;
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)n);
    kvf_rng r;
    kvf_rng_init(&r, seed);
    for (int64_t i = 0; i < n; i++) tok[i] = (int32_t)kvf_rng_below(&r, (uint64_t)m->cfg.vocab_size);
    kvf_status s = partner ? kvf_calib_collect_cross(m, tok, n, 24, 0, partner, cal, NULL)
                           : kvf_calib_collect(m, tok, n, 24, 0, cal, NULL);
    ck_assert_msg(s == KVF_OK, "%s", kvf_error_message());
    free(tok);
}

const char *kvf_test_shared(void) {
    const char *s = getenv("KVF_SHARED");
    return s ? s : "../shared";
}

char *kvf_test_kjv_read(long from, size_t bytes, size_t *got) {
    char path[1200];
    snprintf(path, sizeof path, "%s/data/kjv.txt", kvf_test_shared());
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "skipping: %s not found\n", path);
        return NULL;
    }
    if (from < 0) {
        fseek(f, 0, SEEK_END);
        from = (long)(ftell(f) * 0.95);
    }
    char *buf = malloc(bytes);
    fseek(f, from, SEEK_SET);
    *got = fread(buf, 1, bytes, f);
    fclose(f);
    return buf;
}

kvf_ids kvf_test_kjv_tokens(const char *dir, long from, size_t bytes) {
    kvf_ids ids = {0};
    size_t got;
    char *buf = kvf_test_kjv_read(from, bytes, &got);
    if (!buf) return ids;
    kvf_tokenizer *tok = kvf_tokenizer_open(dir);
    ck_assert_msg(tok != NULL, "%s", kvf_error_message());
    ck_assert(kvf_tokenizer_encode(tok, buf, got, &ids) == KVF_OK);
    kvf_tokenizer_free(tok);
    free(buf);
    return ids;
}
