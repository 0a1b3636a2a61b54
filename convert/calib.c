#include "calib.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/backend.h"
#include "autograd/ops.h"
#include "data/batch.h"
#include "linalg.h"

/* On a device whose backend has gram_f64 (CUDA), the moments are accumulated where the
 * activations are, in f64 device buffers, and only the (d+1)² results per layer come to the
 * host at the end; the host path below is the same sums with dsyrk/dgemm. */
struct dev_state {
    const kvf_backend *be;
    double *gram, *cross; /* device, [n_layers][(d+1)²] each (cross: NULL without partners) */
    kvf_tensor *x32;      /* f32 contiguous copy of an input that is not (bf16 compute) */
    kvf_tensor **kept;    /* per layer: its input of the current batch, for a later partner */
};

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
    struct dev_state dev;
};

/* An owned f32 device tensor of h's shape in *slot (reallocated when the shape changed). */
static kvf_status dev_slot(kvf_tensor **slot, const kvf_tensor *h) {
    kvf_tensor *t = *slot;
    if (t && kvf_tensor_numel(t) == kvf_tensor_numel(h) && t->ndim == h->ndim &&
        !memcmp(t->shape, h->shape, sizeof(int64_t) * (size_t)h->ndim))
        return KVF_OK;
    kvf_tensor_free_owned(t);
    *slot = kvf_tensor_init_owned_on(h->storage->device, KVF_DTYPE_F32, h->ndim, h->shape);
    return *slot ? KVF_OK : kvf_error_code();
}

static kvf_status hook_device(int layer, const kvf_tensor *h, struct hook_state *s) {
    struct dev_state *v = &s->dev;
    kvf_calib *c = s->c;
    size_t per = (size_t)((c->d + 1) * (c->d + 1));
    const kvf_tensor *x = h;
    if (h->dtype != KVF_DTYPE_F32 || !kvf_tensor_is_contiguous(h)) {
        KVF_TRY(dev_slot(&v->x32, h));
        KVF_TRY(v->be->copy(v->x32, h));
        x = v->x32;
    }
    KVF_TRY(v->be->gram_f64(v->gram + per * (size_t)layer, x, NULL));
    if (s->partner && s->partner[layer] >= 0) {
        int p = s->partner[layer];
        const kvf_tensor *xp = v->kept[p];
        KVF_CHECK(xp && kvf_tensor_numel(xp) == kvf_tensor_numel(x), KVF_ERR_STATE,
                  "calibration: layer %d's inputs were not kept for layer %d", p, layer);
        KVF_TRY(v->be->gram_f64(v->cross + per * (size_t)layer, x, xp));
    }
    if (s->keep && s->keep[layer]) { /* the arena's h is reused by later ops: keep a copy */
        KVF_TRY(dev_slot(&v->kept[layer], x));
        KVF_TRY(v->be->copy(v->kept[layer], x));
    }
    return KVF_OK;
}

static kvf_status hook(int layer, const kvf_tensor *h, void *ud) {
    struct hook_state *s = ud;
    kvf_calib *c = s->c;
    if (s->dev.be) return hook_device(layer, h, s);
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

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Zeroed device accumulators for every layer (and cross moments when asked). */
static kvf_status dev_begin(struct hook_state *hs, const kvf_backend *be, bool cross) {
    kvf_calib *c = hs->c;
    struct dev_state *v = &hs->dev;
    size_t bytes = sizeof(double) * (size_t)((c->d + 1) * (c->d + 1)) * (size_t)c->n_layers;
    v->be = be;
    v->gram = be->alloc(bytes);
    if (!v->gram) return kvf_error_code();
    KVF_TRY(be->memset_zero(v->gram, bytes));
    if (cross) {
        v->cross = be->alloc(bytes);
        v->kept = calloc((size_t)c->n_layers, sizeof *v->kept);
        if (!v->cross) return kvf_error_code();
        KVF_CHECK(v->kept, KVF_ERR_OOM, "calibration: out of memory");
        KVF_TRY(be->memset_zero(v->cross, bytes));
    }
    return KVF_OK;
}

/* Downloads the device sums into c->gram / c->cross (when st is OK) and frees the device
 * state; the status of the first failure. */
static kvf_status dev_end(struct hook_state *hs, kvf_status st, FILE *progress) {
    kvf_calib *c = hs->c;
    struct dev_state *v = &hs->dev;
    size_t per = (size_t)((c->d + 1) * (c->d + 1));
    for (int l = 0; st == KVF_OK && l < c->n_layers; l++) {
        st = v->be->download(c->gram + per * (size_t)l, v->gram + per * (size_t)l, sizeof(double) * per);
        if (st == KVF_OK && v->cross && c->partner[l] >= 0)
            st = v->be->download(c->cross + per * (size_t)l, v->cross + per * (size_t)l, sizeof(double) * per);
    }
    if (st == KVF_OK && progress) {
        fprintf(progress, "calibration: %d layers' (%lld+1)² moments accumulated on %s (f32 GEMM per batch, f64 sums)\n",
                c->n_layers, (long long)c->d, v->be->name);
        fflush(progress);
    }
    v->be->free(v->gram);
    v->be->free(v->cross);
    kvf_tensor_free_owned(v->x32);
    if (v->kept)
        for (int l = 0; l < c->n_layers; l++) kvf_tensor_free_owned(v->kept[l]);
    free(v->kept);
    memset(v, 0, sizeof *v);
    return st;
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
    kvf_status st = KVF_OK;
    if (m->device != KVF_DEVICE_CPU) {
        const kvf_backend *be = kvf_backend_get(m->device);
        if (be && be->gram_f64) st = dev_begin(&hs, be, partner != NULL);
        else kvf_error_clear(); /* no gram_f64 there: the host path, from downloads */
    }
    kvf_layer_hook old = m->hook;
    void *old_ud = m->hook_ud;
    m->hook = hook;
    m->hook_ud = &hs;
    kvf_ctx *ctx = st == KVF_OK ? kvf_ctx_init(m->device) : NULL;
    int64_t B = 4;
    int32_t *in = malloc(sizeof(int32_t) * (size_t)(B * seq_len)), *tg = malloc(sizeof(int32_t) * (size_t)(B * seq_len));
    if (st == KVF_OK && !(ctx && in && tg)) st = kvf_error_set(KVF_ERR_OOM, "calibration: out of memory");
    if (ctx) kvf_ctx_set_grad(ctx, false);
    const char *where = hs.dev.be ? hs.dev.be->name : "cpu";
    const double t0 = now_s();
    int64_t total = windows * seq_len, next_report = 0;
    for (int64_t w = 0; w < windows && st == KVF_OK; w += B) {
        int64_t b = windows - w < B ? windows - w : B;
        if ((st = kvf_eval_windows(tokens, n, seq_len, w, b, in, tg)) != KVF_OK) break;
        kvf_ctx_reset(ctx);
        kvf_tensor *ids = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, (int64_t[]){b, seq_len}, in);
        if (!ids || !kvf_model_forward(m, ctx, ids)) st = kvf_error_code();
        out->tokens += b * seq_len;
        /* about ten lines per run: every batch would flood the log of a long calibration */
        if (progress && st == KVF_OK && (out->tokens >= next_report || out->tokens == total)) {
            fprintf(progress, "calibration: %lld / %lld tokens (%.1f s on %s)\n", (long long)out->tokens,
                    (long long)total, now_s() - t0, where);
            fflush(progress);
            next_report = out->tokens + (total + 9) / 10;
        }
    }
    m->hook = old;
    m->hook_ud = old_ud;
    kvf_ctx_free(ctx);
    free(in);
    free(tg);
    free(hs.xa);
    if (hs.dev.be) st = dev_end(&hs, st, progress);
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
