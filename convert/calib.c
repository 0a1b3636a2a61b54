#include "calib.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"
#include "data/batch.h"
#include "linalg.h"

struct hook_state {
    kvf_calib *c;
    double *xa; /* scratch: tokens × (d+1) */
    int64_t cap_rows;
    /* cross moments: kept[p] holds layer p's augmented inputs of the current batch while a
     * later layer l with partner[l] == p still needs them */
    const int *partner;
    bool *keep;
    double **kept;
    int64_t *kept_cap;
};

static kvf_status hook(int layer, const kvf_tensor *h, void *ud) {
    struct hook_state *s = ud;
    kvf_calib *c = s->c;
    int64_t d = c->d, rows = kvf_tensor_numel(h) / d;
    if (rows > s->cap_rows) {
        double *nx = realloc(s->xa, sizeof(double) * (size_t)(rows * (d + 1)));
        KVF_CHECK(nx, KVF_ERR_OOM, "calibration: out of memory for %lld tokens", (long long)rows);
        s->xa = nx;
        s->cap_rows = rows;
    }
    /* h may live on the GPU or be bf16: bring it to the host as f32 first */
    float *tmp = malloc(sizeof(float) * (size_t)(rows * d));
    KVF_CHECK(tmp, KVF_ERR_OOM, "calibration: out of memory");
    kvf_status st = KVF_OK;
    if (h->dtype == KVF_DTYPE_F32) st = kvf_tensor_to_host(h, tmp, sizeof(float) * (size_t)(rows * d));
    else if (h->dtype == KVF_DTYPE_F64) {
        double *t64 = malloc(sizeof(double) * (size_t)(rows * d));
        st = t64 ? kvf_tensor_to_host(h, t64, sizeof(double) * (size_t)(rows * d)) : KVF_ERR_OOM;
        for (int64_t i = 0; t64 && i < rows * d; i++) tmp[i] = (float)t64[i];
        free(t64);
    } else {
        st = kvf_error_set(KVF_ERR_DTYPE, "calibration: attention inputs in %s", kvf_dtype_name(h->dtype));
    }
    if (st != KVF_OK) {
        free(tmp);
        return st;
    }
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t j = 0; j < d; j++) s->xa[r * (d + 1) + j] = tmp[r * d + j];
        s->xa[r * (d + 1) + d] = 1.0;
    }
    free(tmp);
    /* G += Xaᵀ Xa (upper triangle, mirrored at the end) */
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)(d + 1), (int)rows, 1.0, s->xa, (int)(d + 1), 1.0,
                c->gram + (size_t)layer * (size_t)((d + 1) * (d + 1)), (int)(d + 1));
    if (s->partner && s->partner[layer] >= 0 && s->partner[layer] != layer) {
        /* X_lp += Xa_lᵀ Xa_p */
        int p = s->partner[layer];
        KVF_CHECK(s->kept[p] && s->kept_cap[p] >= rows, KVF_ERR_STATE,
                  "calibration: layer %d's inputs were not kept for layer %d", p, layer);
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(d + 1), (int)(d + 1), (int)rows, 1.0,
                    s->xa, (int)(d + 1), s->kept[p], (int)(d + 1), 1.0,
                    c->cross + (size_t)layer * (size_t)((d + 1) * (d + 1)), (int)(d + 1));
    }
    if (s->keep && s->keep[layer]) {
        if (s->kept_cap[layer] < rows) {
            double *nk = realloc(s->kept[layer], sizeof(double) * (size_t)(rows * (d + 1)));
            KVF_CHECK(nk, KVF_ERR_OOM, "calibration: out of memory for %lld tokens", (long long)rows);
            s->kept[layer] = nk;
            s->kept_cap[layer] = rows;
        }
        memcpy(s->kept[layer], s->xa, sizeof(double) * (size_t)(rows * (d + 1)));
    }
    return KVF_OK;
}

static kvf_status collect(kvf_model *m, const int32_t *tokens, int64_t n, int64_t seq_len,
                          int64_t max_tokens, const int *partner, kvf_calib *out, FILE *progress);

kvf_status kvf_calib_collect(kvf_model *m, const int32_t *tokens, int64_t n, int64_t seq_len,
                             int64_t max_tokens, kvf_calib *out, FILE *progress) {
    return collect(m, tokens, n, seq_len, max_tokens, NULL, out, progress);
}

kvf_status kvf_calib_collect_cross(kvf_model *m, const int32_t *tokens, int64_t n,
                                   int64_t seq_len, int64_t max_tokens, const int *partner,
                                   kvf_calib *out, FILE *progress) {
    memset(out, 0, sizeof *out);
    KVF_CHECK(partner, KVF_ERR_ARG, "calibration: NULL partner list");
    for (int l = 0; l < m->cfg.n_layers; l++)
        KVF_CHECK(partner[l] >= -1 && partner[l] <= l, KVF_ERR_ARG,
                  "calibration: layer %d's partner %d must be an earlier layer (or -1)", l, partner[l]);
    return collect(m, tokens, n, seq_len, max_tokens, partner, out, progress);
}

static kvf_status collect(kvf_model *m, const int32_t *tokens, int64_t n, int64_t seq_len,
                          int64_t max_tokens, const int *partner, kvf_calib *out, FILE *progress) {
    memset(out, 0, sizeof *out);
    int64_t d = m->cfg.d_model;
    if (seq_len > m->cfg.max_seq_len) seq_len = m->cfg.max_seq_len;
    if (max_tokens > 0 && n > max_tokens + 1) n = max_tokens + 1;
    int64_t windows = kvf_eval_window_count(n, seq_len);
    KVF_CHECK(windows > 0, KVF_ERR_ARG, "calibration: %lld tokens hold no window of %lld tokens",
              (long long)n, (long long)seq_len);
    out->n_layers = m->cfg.n_layers;
    out->d = d;
    size_t per = (size_t)((d + 1) * (d + 1));
    out->gram = calloc(per * (size_t)out->n_layers, sizeof(double));
    KVF_CHECK(out->gram, KVF_ERR_OOM, "calibration: cannot hold %d × %lld² statistics", out->n_layers,
              (long long)(d + 1));
    struct hook_state hs = {.c = out};
    if (partner) {
        int L = out->n_layers;
        out->partner = malloc(sizeof(int) * (size_t)L);
        out->cross = calloc(per * (size_t)L, sizeof(double));
        hs.partner = partner;
        hs.keep = calloc((size_t)L, sizeof(bool));
        hs.kept = calloc((size_t)L, sizeof(double *));
        hs.kept_cap = calloc((size_t)L, sizeof(int64_t));
        if (!out->partner || !out->cross || !hs.keep || !hs.kept || !hs.kept_cap) {
            free(hs.keep);
            free(hs.kept);
            free(hs.kept_cap);
            kvf_calib_free(out);
            return kvf_error_set(KVF_ERR_OOM, "calibration: cannot hold %d × %lld² cross moments", L,
                                 (long long)(d + 1));
        }
        for (int l = 0; l < L; l++) {
            out->partner[l] = partner[l] == l ? -1 : partner[l];
            if (out->partner[l] >= 0) hs.keep[out->partner[l]] = true;
        }
        hs.partner = out->partner;
    }
    kvf_layer_hook old = m->hook;
    void *old_ud = m->hook_ud;
    m->hook = hook;
    m->hook_ud = &hs;
    kvf_ctx *ctx = kvf_ctx_init(m->device);
    int64_t B = 4;
    int32_t *in = malloc(sizeof(int32_t) * (size_t)(B * seq_len)), *tg = malloc(sizeof(int32_t) * (size_t)(B * seq_len));
    kvf_status st = ctx && in && tg ? KVF_OK : kvf_error_set(KVF_ERR_OOM, "calibration: out of memory");
    if (ctx) kvf_ctx_set_grad(ctx, false);
    for (int64_t w = 0; w < windows && st == KVF_OK; w += B) {
        int64_t b = windows - w < B ? windows - w : B;
        if ((st = kvf_eval_windows(tokens, n, seq_len, w, b, in, tg)) != KVF_OK) break;
        kvf_ctx_reset(ctx);
        kvf_tensor *ids = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, (int64_t[]){b, seq_len}, in);
        if (!ids || !kvf_model_forward(m, ctx, ids)) st = kvf_error_code();
        out->tokens += b * seq_len;
        if (progress && st == KVF_OK)
            fprintf(progress, "calibration: %lld / %lld tokens\n", (long long)out->tokens,
                    (long long)(windows * seq_len));
    }
    m->hook = old;
    m->hook_ud = old_ud;
    kvf_ctx_free(ctx);
    free(in);
    free(tg);
    free(hs.xa);
    if (hs.kept)
        for (int l = 0; l < out->n_layers; l++) free(hs.kept[l]);
    free(hs.kept);
    free(hs.keep);
    free(hs.kept_cap);
    if (st != KVF_OK) {
        kvf_calib_free(out);
        return st;
    }
    for (int l = 0; l < out->n_layers; l++) { /* mirror the upper triangle */
        double *g = out->gram + per * (size_t)l;
        for (int64_t i = 0; i <= d; i++)
            for (int64_t j = 0; j < i; j++) g[i * (d + 1) + j] = g[j * (d + 1) + i];
    }
    return KVF_OK;
}

void kvf_calib_free(kvf_calib *c) {
    if (!c) return;
    free(c->gram);
    free(c->cross);
    free(c->partner);
    c->gram = NULL;
    c->cross = NULL;
    c->partner = NULL;
}

const double *kvf_calib_cross(const kvf_calib *c, int layer) {
    if (!c->cross || !c->partner || layer < 0 || layer >= c->n_layers || c->partner[layer] < 0) return NULL;
    return c->cross + (size_t)layer * (size_t)((c->d + 1) * (c->d + 1));
}

const double *kvf_calib_gram(const kvf_calib *c, int layer) {
    return c->gram + (size_t)layer * (size_t)((c->d + 1) * (c->d + 1));
}

kvf_status kvf_calib_project(const kvf_calib *c, int layer, int rows, const double *W,
                             const double *b, double *S) {
    int64_t d = c->d, da = d + 1;
    double *A = malloc(sizeof(double) * (size_t)(rows * da)), *AG = malloc(sizeof(double) * (size_t)(rows * da));
    if (!A || !AG) {
        free(A);
        free(AG);
        return kvf_error_set(KVF_ERR_OOM, "calibration: out of memory");
    }
    for (int r = 0; r < rows; r++) {
        memcpy(A + (size_t)r * da, W + (size_t)r * d, sizeof(double) * (size_t)d);
        A[(size_t)r * da + d] = b ? b[r] : 0.0;
    }
    kvf_dgemm(false, false, rows, (int)da, (int)da, A, kvf_calib_gram(c, layer), AG);
    kvf_dgemm(false, true, rows, rows, (int)da, AG, A, S);
    free(A);
    free(AG);
    return KVF_OK;
}
