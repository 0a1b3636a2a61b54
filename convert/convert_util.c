/* convert_util.c — helpers shared by the conversions; see convert_impl.h. */
#include <errno.h>
#include <lapacke.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/backend.h"
#include "autograd/context.h"
#include "autograd/rng.h"
#include "convert_impl.h"
#include "linalg.h"

/* ============================================================================================
 * parameters
 * ========================================================================================== */

const char *kvf_cv_name(char *buf, size_t n, int layer, const char *what) {
    snprintf(buf, n, "model.layers.%d.self_attn.%s", layer, what);
    return buf;
}

double *kvf_cv_tensor_read(const kvf_tensor *t) {
    int64_t n = kvf_tensor_numel(t);
    double *out = malloc(sizeof(double) * (size_t)(n ? n : 1));
    void *raw = malloc(kvf_tensor_nbytes(t) ? kvf_tensor_nbytes(t) : 1);
    if (!out || !raw) {
        free(out);
        free(raw);
        kvf_error_set(KVF_ERR_OOM, "convert: out of memory reading %s", t->name ? t->name : "a tensor");
        return NULL;
    }
    if (kvf_tensor_to_host(t, raw, kvf_tensor_nbytes(t)) != KVF_OK) {
        free(out);
        free(raw);
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) {
        switch (t->dtype) {
        case KVF_DTYPE_F32: out[i] = ((const float *)raw)[i]; break;
        case KVF_DTYPE_F64: out[i] = ((const double *)raw)[i]; break;
        case KVF_DTYPE_BF16: out[i] = kvf_bf16_to_f32(((const uint16_t *)raw)[i]); break;
        case KVF_DTYPE_F16: out[i] = kvf_f16_to_f32(((const uint16_t *)raw)[i]); break;
        default:
            free(out);
            free(raw);
            kvf_error_set(KVF_ERR_DTYPE, "convert: %s is %s, not a float tensor", t->name ? t->name : "a tensor",
                          kvf_dtype_name(t->dtype));
            return NULL;
        }
    }
    free(raw);
    return out;
}

kvf_status kvf_cv_tensor_write(kvf_tensor *t, const double *v) {
    int64_t n = kvf_tensor_numel(t);
    size_t nb = kvf_tensor_nbytes(t);
    KVF_CHECK(kvf_tensor_is_contiguous(t), KVF_ERR_ARG, "convert: %s is not contiguous", t->name ? t->name : "a tensor");
    void *raw = malloc(nb ? nb : 1);
    KVF_CHECK(raw, KVF_ERR_OOM, "convert: out of memory writing %s", t->name ? t->name : "a tensor");
    for (int64_t i = 0; i < n; i++) {
        switch (t->dtype) {
        case KVF_DTYPE_F32: ((float *)raw)[i] = (float)v[i]; break;
        case KVF_DTYPE_F64: ((double *)raw)[i] = v[i]; break;
        case KVF_DTYPE_BF16: ((uint16_t *)raw)[i] = kvf_f32_to_bf16((float)v[i]); break;
        case KVF_DTYPE_F16: ((uint16_t *)raw)[i] = kvf_f32_to_f16((float)v[i]); break;
        default: free(raw); return kvf_error_set(KVF_ERR_DTYPE, "convert: cannot write %s", kvf_dtype_name(t->dtype));
        }
    }
    kvf_status st = KVF_OK;
    if (kvf_tensor_device(t) == KVF_DEVICE_CPU) {
        memcpy(kvf_tensor_data(t), raw, nb);
    } else {
        const kvf_backend *be = kvf_backend_get(kvf_tensor_device(t));
        st = be ? be->upload(kvf_tensor_data(t), raw, nb) : kvf_error_code();
    }
    free(raw);
    return st;
}

double *kvf_cv_read_opt(const kvf_model *m, const char *name) {
    kvf_tensor *t = kvf_params_get(m->params, name);
    return t ? kvf_cv_tensor_read(t) : NULL;
}

double *kvf_cv_read(const kvf_model *m, const char *name, int64_t *numel) {
    kvf_tensor *t = kvf_params_get(m->params, name);
    KVF_CHECK_NULL(t, KVF_ERR_STATE, "convert: the model has no parameter %s", name);
    if (numel) *numel = kvf_tensor_numel(t);
    return kvf_cv_tensor_read(t);
}

kvf_status kvf_cv_write(kvf_model *m, const char *name, const double *v) {
    kvf_tensor *t = kvf_params_get(m->params, name);
    KVF_CHECK(t, KVF_ERR_STATE, "convert: the model has no parameter %s", name);
    kvf_params_touch(m->params);
    return kvf_cv_tensor_write(t, v);
}

kvf_model *kvf_cv_derive(const kvf_model *src, const kvf_model_config *cfg) {
    kvf_model *m = kvf_model_init(cfg, src->device);
    if (!m) return NULL;
    for (int i = 0; i < kvf_params_count(m->params); i++) {
        kvf_tensor *d = kvf_params_at(m->params, i), *s = kvf_params_get(src->params, d->name);
        if (!s || !kvf_tensor_same_shape(s, d) || s->dtype != d->dtype) continue;
        size_t nb = kvf_tensor_nbytes(d);
        kvf_status st = KVF_OK;
        if (kvf_tensor_device(d) == KVF_DEVICE_CPU && kvf_tensor_device(s) == KVF_DEVICE_CPU &&
            kvf_tensor_is_contiguous(s)) {
            memcpy(kvf_tensor_data(d), kvf_tensor_data(s), nb);
        } else {
            void *host = malloc(nb ? nb : 1);
            const kvf_backend *be = kvf_backend_get(kvf_tensor_device(d));
            if (!host) st = kvf_error_set(KVF_ERR_OOM, "convert: out of memory copying %s", d->name);
            else if (!be) st = kvf_error_code();
            else if ((st = kvf_tensor_to_host(s, host, nb)) == KVF_OK) st = be->upload(kvf_tensor_data(d), host, nb);
            free(host);
        }
        if (st != KVF_OK) {
            kvf_model_free(m);
            return NULL;
        }
    }
    return m;
}

/* ============================================================================================
 * grouping and pooling
 * ========================================================================================== */

void kvf_cv_groups_init(struct kvf_cv_groups *G, int nq, int n_src, int n_dst) {
    memset(G, 0, sizeof *G);
    G->nq = nq;
    G->n_src = n_src;
    G->n_dst = n_dst;
    int rs = nq / n_src, rd = nq / n_dst, k = 0;
    for (int g = 0; g < n_dst; g++) {
        G->first[g] = k;
        for (int i = g * rd; i < (g + 1) * rd; i++) {
            int h = i / rs;
            if (k > G->first[g] && G->head[k - 1] == h) G->count[k - 1]++;
            else {
                G->head[k] = h;
                G->count[k] = 1;
                k++;
            }
        }
    }
    G->first[n_dst] = k;
}

int kvf_cv_member_of(const struct kvf_cv_groups *G, int i) {
    int g = i / (G->nq / G->n_dst), h = i / (G->nq / G->n_src);
    for (int j = G->first[g]; j < G->first[g + 1]; j++)
        if (G->head[j] == h) return j;
    return -1; /* unreachable for a valid grouping */
}

void kvf_cv_pool_rows(const struct kvf_cv_groups *G, enum kvf_cv_pool method, int rph,
                      int64_t cols, const double *W, double *out, bool is_bias, kvf_rng *rng,
                      double std) {
    size_t head = (size_t)rph * (size_t)cols;
    for (int g = 0; g < G->n_dst; g++) {
        double *o = out + (size_t)g * head;
        if (method == KVF_CV_POOL_RANDOM) {
            for (size_t e = 0; e < head; e++) o[e] = is_bias ? 0.0 : std * kvf_rng_normal(rng);
        } else if (method == KVF_CV_POOL_FIRST) {
            memcpy(o, W + (size_t)G->head[G->first[g]] * head, sizeof(double) * head);
        } else {
            int total = 0;
            memset(o, 0, sizeof(double) * head);
            for (int j = G->first[g]; j < G->first[g + 1]; j++) {
                const double *w = W + (size_t)G->head[j] * head;
                for (size_t e = 0; e < head; e++) o[e] += G->count[j] * w[e];
                total += G->count[j];
            }
            for (size_t e = 0; e < head; e++) o[e] /= total;
        }
    }
}

void kvf_cv_random_rng(kvf_rng *r, uint64_t seed, int layer, int which) {
    kvf_rng_init(r, seed ^ (0x9E3779B97F4A7C15ull * (uint64_t)(2 * layer + which + 1)));
}

double kvf_cv_std(const double *v, int64_t n) {
    if (n <= 0) return 0;
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) s += v[i];
    double mean = s / (double)n;
    for (int64_t i = 0; i < n; i++) s2 += (v[i] - mean) * (v[i] - mean);
    return sqrt(s2 / (double)n);
}

/* ============================================================================================
 * RoPE pairs
 * ========================================================================================== */

int kvf_cv_rope_pairs(const kvf_model_config *c) {
    return c->pos == KVF_POS_ROPE ? c->rope_dim / 2 : 0;
}

void kvf_cv_rope_pair(const kvf_model_config *c, int f, int *a, int *b) {
    int F = kvf_cv_rope_pairs(c);
    if (c->rope_layout == KVF_ROPE_INTERLEAVED) {
        *a = 2 * f;
        *b = 2 * f + 1;
    } else {
        *a = f;
        *b = f + F;
    }
}

/* ============================================================================================
 * linear algebra
 * ========================================================================================== */

kvf_status kvf_cv_wpca(int N, int r, const double *C, const double *M, double *A, double *B,
                       double *kept) {
    size_t nn = (size_t)N * (size_t)N;
    double *Mh = NULL, *Mih = NULL, *Ct = malloc(sizeof(double) * nn), *lam = malloc(sizeof(double) * (size_t)N),
           *Phi = malloc(sizeof(double) * nn), *tmp = malloc(sizeof(double) * nn);
    kvf_status s = Ct && lam && Phi && tmp ? KVF_OK : kvf_error_set(KVF_ERR_OOM, "PCA: out of memory (%d×%d)", N, N);
    if (s == KVF_OK && M) {
        Mh = malloc(sizeof(double) * nn);
        Mih = malloc(sizeof(double) * nn);
        if (!Mh || !Mih) s = kvf_error_set(KVF_ERR_OOM, "PCA: out of memory (%d×%d)", N, N);
        if (s == KVF_OK) s = kvf_eigh_desc(N, M, lam, Phi);
        if (s == KVF_OK) {
            double floor = 1e-12 * (lam[0] > 0 ? lam[0] : 1.0);
            for (int j = 0; j < N; j++) {
                double w = lam[j] > floor ? lam[j] : floor;
                for (int i = 0; i < N; i++) tmp[(size_t)i * N + j] = Phi[(size_t)i * N + j] * sqrt(w);
            }
            kvf_dgemm(false, true, N, N, N, tmp, Phi, Mh); /* V √Λ Vᵀ */
            for (int j = 0; j < N; j++) {
                double w = lam[j] > floor ? lam[j] : floor;
                for (int i = 0; i < N; i++) tmp[(size_t)i * N + j] = Phi[(size_t)i * N + j] / sqrt(w);
            }
            kvf_dgemm(false, true, N, N, N, tmp, Phi, Mih);
            kvf_dgemm(false, false, N, N, N, Mh, C, tmp);
            kvf_dgemm(false, false, N, N, N, tmp, Mh, Ct);
        }
    } else if (s == KVF_OK) {
        memcpy(Ct, C, sizeof(double) * nn);
    }
    if (s == KVF_OK) {
        for (int i = 0; i < N; i++) /* symmetrise against rounding */
            for (int j = 0; j < i; j++) {
                double v = 0.5 * (Ct[(size_t)i * N + j] + Ct[(size_t)j * N + i]);
                Ct[(size_t)i * N + j] = Ct[(size_t)j * N + i] = v;
            }
        s = kvf_eigh_desc(N, Ct, lam, Phi);
    }
    if (s == KVF_OK) {
        double tot = 0, top = 0;
        for (int j = 0; j < N; j++) {
            double v = lam[j] > 0 ? lam[j] : 0;
            tot += v;
            if (j < r) top += v;
        }
        if (kept) *kept = tot > 0 ? top / tot : 1.0;
        /* Φr: first r columns */
        for (int i = 0; i < N; i++)
            for (int j = 0; j < r; j++) tmp[(size_t)i * r + j] = Phi[(size_t)i * N + j];
        if (M) {
            kvf_dgemm(true, false, r, N, N, tmp, Mh, A);  /* Φrᵀ M^½ */
            kvf_dgemm(false, false, N, r, N, Mih, tmp, B); /* M^-½ Φr */
        } else {
            for (int i = 0; i < N; i++)
                for (int j = 0; j < r; j++) {
                    A[(size_t)j * N + i] = tmp[(size_t)i * r + j];
                    B[(size_t)i * r + j] = tmp[(size_t)i * r + j];
                }
        }
    }
    free(Mh);
    free(Mih);
    free(Ct);
    free(lam);
    free(Phi);
    free(tmp);
    return s;
}

kvf_status kvf_cv_solve_right(int rows, int n, const double *R, const double *G, double *X) {
    size_t nn = (size_t)n * (size_t)n;
    double *a = malloc(sizeof(double) * nn), *b = malloc(sizeof(double) * (size_t)n * (size_t)rows);
    if (!a || !b) {
        free(a);
        free(b);
        return kvf_error_set(KVF_ERR_OOM, "least squares: out of memory (%d×%d)", n, n);
    }
    double md = 0;
    for (int i = 0; i < n; i++) md += G[(size_t)i * n + i];
    md = md > 0 ? md / n : 1.0;
    lapack_int info = 1;
    for (double ridge = 1e-9; ridge <= 1e-1 && info != 0; ridge *= 100) {
        memcpy(a, G, sizeof(double) * nn);
        for (int i = 0; i < n; i++) a[(size_t)i * n + i] += ridge * md;
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < n; j++) b[(size_t)j * rows + i] = R[(size_t)i * n + j];
        info = LAPACKE_dposv(LAPACK_ROW_MAJOR, 'U', n, rows, a, n, b, rows);
    }
    if (info == 0)
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < n; j++) X[(size_t)i * n + j] = b[(size_t)j * rows + i];
    free(a);
    free(b);
    KVF_CHECK(info == 0, KVF_ERR_NUMERIC,
              "least squares: the calibration second moment (%d×%d) is not positive definite even with a "
              "ridge (LAPACKE_dposv info %d)",
              n, n, (int)info);
    return KVF_OK;
}

/* ============================================================================================
 * validation
 * ========================================================================================== */

kvf_status kvf_cv_check_gqa(const kvf_model_config *c, const kvf_convert_opts *o, int *kv_out,
                            bool allow_same) {
    const char *to = o->to == KVF_CONVERT_MQA ? "mqa" : "gqa";
    KVF_CHECK(c->attn == KVF_ATTN_STANDARD, KVF_ERR_UNSUPPORTED,
              "--to %s: the source model uses %s attention, whose keys and values are a shared latent, "
              "not heads; only MHA/GQA models can be converted to fewer KV heads",
              to, c->attn == KVF_ATTN_MLA ? "MLA" : "partial-RoPE MLA");
    int kv;
    if (o->to == KVF_CONVERT_MQA) {
        KVF_CHECK(o->kv_heads == 0 || o->kv_heads == 1, KVF_ERR_ARG,
                  "--to mqa means one KV head; --kv-heads %d contradicts it (use --to gqa)", o->kv_heads);
        kv = 1;
    } else {
        KVF_CHECK(o->kv_heads >= 1, KVF_ERR_ARG, "--to gqa needs --kv-heads N (N >= 1), got %d", o->kv_heads);
        kv = o->kv_heads;
    }
    KVF_CHECK(c->n_q_heads % kv == 0, KVF_ERR_ARG,
              "--kv-heads %d does not divide the %d query heads of the source (consecutive groups of "
              "query heads share a KV head)",
              kv, c->n_q_heads);
    KVF_CHECK(kv <= c->n_kv_heads, KVF_ERR_ARG,
              "--kv-heads %d: the source has only %d KV heads; a conversion can only reduce them", kv,
              c->n_kv_heads);
    KVF_CHECK(allow_same || kv < c->n_kv_heads, KVF_ERR_ARG,
              "--kv-heads %d: the source already has %d KV heads, nothing to convert", kv, c->n_kv_heads);
    const char *m = o->method;
    KVF_CHECK(!*m || !strcmp(m, "mean") || !strcmp(m, "first") || !strcmp(m, "random") || !strcmp(m, "calib"),
              KVF_ERR_ARG, "--method %s is not a %s method (mean, first, random, calib)", m, to);
    if (kv_out) *kv_out = kv;
    return KVF_OK;
}

kvf_status kvf_cv_cla_producers(const kvf_model_config *c, const kvf_convert_opts *o,
                                int *producers, int *n_producers) {
    int L = c->n_layers, n = 0;
    KVF_CHECK(c->attn == KVF_ATTN_STANDARD, KVF_ERR_UNSUPPORTED,
              "--to cla: the source model uses %s attention; cross-layer sharing is converted for MHA/GQA/MQA "
              "models only",
              c->attn == KVF_ATTN_MLA ? "MLA" : "partial-RoPE MLA");
    bool list = o->producers[0] != '\0';
    KVF_CHECK(!(list && o->share > 0), KVF_ERR_ARG, "--to cla: give --share K or --producers LIST, not both");
    KVF_CHECK(list || o->share != 0, KVF_ERR_ARG,
              "--to cla needs --share K (a producer every K layers) or --producers LIST (e.g. 0,2,5)");
    const char *m = o->method;
    KVF_CHECK(!*m || !strcmp(m, "producer") || !strcmp(m, "mean") || !strcmp(m, "calib"), KVF_ERR_ARG,
              "--method %s is not a cla method (producer, mean, calib)", m);
    if (!list) {
        KVF_CHECK(o->share >= 1, KVF_ERR_ARG, "--share %d: must be at least 1", o->share);
        for (int l = 0; l < L; l += o->share) producers[n++] = l;
    } else {
        const char *p = o->producers;
        while (*p) {
            char *end;
            errno = 0;
            long v = strtol(p, &end, 10);
            KVF_CHECK(end != p && errno == 0 && (*end == ',' || *end == '\0'), KVF_ERR_ARG,
                      "--producers '%s': '%.*s' is not a layer number", o->producers,
                      (int)strcspn(p, ","), p);
            KVF_CHECK(v >= 0 && v < L, KVF_ERR_ARG,
                      "--producers '%s': layer %ld is out of range (the model has %d layers: 0..%d)",
                      o->producers, v, L, L - 1);
            KVF_CHECK(n == 0 || v > producers[n - 1], KVF_ERR_ARG,
                      "--producers '%s' must be strictly increasing (%ld after %d)", o->producers, v,
                      producers[n - 1]);
            KVF_CHECK(n > 0 || v == 0, KVF_ERR_ARG,
                      "--producers '%s' must start with layer 0: layers before the first producer would have "
                      "no K/V to reuse",
                      o->producers);
            producers[n++] = (int)v;
            p = *end ? end + 1 : end;
            KVF_CHECK(*end != ',' || *p, KVF_ERR_ARG, "--producers '%s': trailing comma", o->producers);
        }
        KVF_CHECK(n > 0, KVF_ERR_ARG, "--producers is empty");
    }
    *n_producers = n;
    return KVF_OK;
}

kvf_status kvf_cv_cla_sources(const kvf_model_config *c, const int *producers, int n_producers,
                              int *kv_source) {
    int k = 0;
    for (int l = 0; l < c->n_layers; l++) {
        while (k + 1 < n_producers && producers[k + 1] <= l) k++;
        kv_source[l] = producers[k];
    }
    for (int i = 0; i < n_producers; i++) {
        int p = producers[i];
        KVF_CHECK(c->kv_source[p] == p, KVF_ERR_ARG,
                  "--to cla: layer %d cannot be a producer: in the source it has no K/V projection of its own "
                  "(it reuses layer %d's)",
                  p, c->kv_source[p]);
    }
    for (int l = 0; l < c->n_layers; l++)
        KVF_CHECK(c->kv_source[l] >= kv_source[l], KVF_ERR_ARG,
                  "--to cla: layer %d reuses layer %d's K/V in the source, which would fall outside its new "
                  "group (producer %d); choose producers that keep the source's sharing groups together",
                  l, c->kv_source[l], kv_source[l]);
    return KVF_OK;
}

/* Diagonal of [W 0] G [W 0]ᵀ (rows × d_model W, no bias): the outputs' energies. */
kvf_status kvf_cv_energies(const kvf_calib *c, int layer, int rows, const double *W, double *out) {
    int64_t d = c->d, da = d + 1;
    const double *G = kvf_calib_gram(c, layer);
    double *Gd = malloc(sizeof(double) * (size_t)(d * d)), *WG = malloc(sizeof(double) * (size_t)rows * (size_t)d);
    if (!Gd || !WG) {
        free(Gd);
        free(WG);
        return kvf_error_set(KVF_ERR_OOM, "convert: out of memory");
    }
    for (int64_t i = 0; i < d; i++) memcpy(Gd + i * d, G + i * da, sizeof(double) * (size_t)d);
    kvf_dgemm(false, false, rows, (int)d, (int)d, W, Gd, WG);
    for (int r = 0; r < rows; r++) {
        double s = 0;
        for (int64_t i = 0; i < d; i++) s += W[(size_t)r * d + i] * WG[(size_t)r * d + i];
        out[r] = s;
    }
    free(Gd);
    free(WG);
    return KVF_OK;
}
