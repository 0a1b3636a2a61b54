/* gqa.c — MHA/GQA → fewer KV heads (GQA/MQA). Query head i keeps using its own query and
 * output projections; its KV head becomes i / (nq / kv). Methods:
 *   mean    count-weighted mean of the group's K and V heads (weights and biases; GQA paper)
 *   first   the head used by the group's first query head
 *   random  N(0, std of the layer's source K (V) weights), biases zero; seeded
 *   calib   per group, PCA of the group's keys and values on calibration statistics; the
 *           inverse maps are folded into q_proj (keys) and o_proj (values). Keys are mixed per
 *           RoPE frequency with complex (2×2 rotation-scale) coefficients, which commute with
 *           RoPE, so the fold is exact; see docs/conversions.md for the math.
 * Layers that reuse another layer's K/V (CLA sources) are handled through their producer. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/rng.h"
#include "convert_impl.h"
#include "linalg.h"

struct layer_io { /* one layer's query / output projections (read from src, folded, written) */
    int layer;
    double *wq, *bq, *wo;
};

/* relative weight change sqrt(Σ_i ‖W_s(i) − W'_g(i)‖² / Σ_i ‖W_s(i)‖²) over query heads */
static double rel_change(const struct kvf_cv_groups *G, int rph, int64_t cols, const double *W,
                         const double *Wn) {
    double num = 0, den = 0;
    size_t head = (size_t)rph * (size_t)cols;
    int rs = G->nq / G->n_src, rd = G->nq / G->n_dst;
    for (int i = 0; i < G->nq; i++) {
        const double *a = W + (size_t)(i / rs) * head, *b = Wn + (size_t)(i / rd) * head;
        for (size_t e = 0; e < head; e++) {
            num += (a[e] - b[e]) * (a[e] - b[e]);
            den += a[e] * a[e];
        }
    }
    return den > 0 ? sqrt(num / den) : 0;
}

/* ---- calib: keys ----------------------------------------------------------------------------- */

/* Group g's new key head into wk_new/bk_new (rows g·hd ..), folding into the queries of ios. */
static kvf_status calib_keys(const kvf_model_config *c, const struct kvf_cv_groups *G, int g,
                             const kvf_calib *calib, int p, const double *wk, const double *bk,
                             double *wk_new, double *bk_new, struct layer_io *ios, int n_io,
                             double *kept_num, double *kept_den) {
    int64_t d = c->d_model;
    int hd = c->head_dim, nq = c->n_q_heads, j0 = G->first[g], n = G->first[g + 1] - j0;
    int F = kvf_cv_rope_pairs(c), nr = hd - 2 * F, rd = nq / G->n_dst;
    size_t N = (size_t)n * (size_t)hd;
    double *Ks = malloc(sizeof(double) * N * (size_t)d), *bKs = bk ? malloc(sizeof(double) * N) : NULL,
           *S = malloc(sizeof(double) * N * N), *Q = malloc(sizeof(double) * (size_t)hd * hd),
           *w = calloc((size_t)n * (size_t)(F ? F : 1), sizeof(double)),
           *Mnr = calloc((size_t)n * (size_t)nr * (size_t)nr + 1, sizeof(double)),
           *E = malloc(sizeof(double) * 4 * (size_t)n * n), *ev = malloc(sizeof(double) * 2 * (size_t)n),
           *V = malloc(sizeof(double) * 4 * (size_t)n * n);
    double *u_re = calloc((size_t)n * (size_t)(F ? F : 1), sizeof(double)),
           *u_im = calloc((size_t)n * (size_t)(F ? F : 1), sizeof(double));
    double *Cnr = NULL, *Mfull = NULL, *A = NULL, *B = NULL;
    kvf_status s = Ks && (bKs || !bk) && S && Q && w && Mnr && E && ev && V && u_re && u_im
                       ? KVF_OK
                       : kvf_error_set(KVF_ERR_OOM, "gqa calib: out of memory");
    /* the members' key rows, stacked */
    for (int j = 0; s == KVF_OK && j < n; j++) {
        int h = G->head[j0 + j];
        memcpy(Ks + (size_t)j * hd * d, wk + (size_t)h * hd * d, sizeof(double) * (size_t)hd * d);
        if (bk) memcpy(bKs + (size_t)j * hd, bk + (size_t)h * hd, sizeof(double) * (size_t)hd);
    }
    if (s == KVF_OK) s = kvf_calib_project(calib, p, (int)N, Ks, bKs, S);
    /* query weights: per member and frequency, the energy of the pair over the query heads
     * (all layers reading this producer) that use the member */
    for (int io = 0; s == KVF_OK && io < n_io; io++) {
        for (int i = g * rd; s == KVF_OK && i < (g + 1) * rd; i++) {
            int j = kvf_cv_member_of(G, i) - j0;
            s = kvf_calib_project(calib, ios[io].layer, hd, ios[io].wq + (size_t)i * hd * d,
                                  ios[io].bq ? ios[io].bq + (size_t)i * hd : NULL, Q);
            for (int f = 0; s == KVF_OK && f < F; f++) {
                int a, b;
                kvf_cv_rope_pair(c, f, &a, &b);
                w[(size_t)j * F + f] += Q[(size_t)a * hd + a] + Q[(size_t)b * hd + b];
            }
            for (int x = 0; s == KVF_OK && x < nr; x++)
                for (int y = 0; y < nr; y++)
                    Mnr[(size_t)j * nr * nr + (size_t)x * nr + y] += Q[(size_t)(2 * F + x) * hd + (2 * F + y)];
        }
    }
    /* rotated pairs: complex PCA per frequency */
    for (int f = 0; s == KVF_OK && f < F; f++) {
        int a, b;
        kvf_cv_rope_pair(c, f, &a, &b);
        double wmax = 0;
        for (int j = 0; j < n; j++) wmax = fmax(wmax, w[(size_t)j * F + f]);
        double sw[KVF_MAX_HEADS], target = 0;
        for (int j = 0; j < n; j++) {
            double x = w[(size_t)j * F + f];
            sw[j] = sqrt(wmax > 0 ? fmax(x, 1e-9 * wmax) : 1.0);
        }
        int n2 = 2 * n;
        double trace = 0;
        for (int x = 0; x < n; x++)
            for (int y = 0; y < n; y++) {
                size_t ax = (size_t)x * hd + a, bx = (size_t)x * hd + b, ay = (size_t)y * hd + a,
                       by = (size_t)y * hd + b;
                double Axy = S[ax * N + ay] + S[bx * N + by];      /* Σ x xᵀ + y yᵀ */
                double Bxy = S[ay * N + bx] - S[ax * N + by];      /* Sxyᵀ − Sxy */
                double sc = sw[x] * sw[y];
                E[(size_t)x * n2 + y] = sc * Axy;
                E[(size_t)(x + n) * n2 + (y + n)] = sc * Axy;
                E[(size_t)x * n2 + (y + n)] = -sc * Bxy;
                E[(size_t)(x + n) * n2 + y] = sc * Bxy;
                if (x == y) {
                    trace += sc * Axy;
                    target += Axy / n;
                }
            }
        s = kvf_eigh_desc(n2, E, ev, V);
        if (s != KVF_OK) break;
        *kept_num += ev[0];
        *kept_den += trace;
        /* balance: the new pair carries the members' mean energy (the fold keeps logits exact) */
        double bal = ev[0] > 0 && target > 0 ? sqrt(target / ev[0]) : 1.0;
        for (int j = 0; j < n; j++) {
            u_re[(size_t)j * F + f] = V[(size_t)j * n2];
            u_im[(size_t)j * F + f] = V[(size_t)(j + n) * n2];
        }
        /* new key: k' = bal · Σ_j conj(u_j) √w_j z_j */
        double *ra = wk_new + ((size_t)g * hd + a) * d, *rb = wk_new + ((size_t)g * hd + b) * d;
        memset(ra, 0, sizeof(double) * (size_t)d);
        memset(rb, 0, sizeof(double) * (size_t)d);
        double ba = 0, bb = 0;
        for (int j = 0; j < n; j++) {
            double pr = bal * sw[j] * u_re[(size_t)j * F + f], pi = bal * sw[j] * u_im[(size_t)j * F + f];
            const double *xa = Ks + ((size_t)j * hd + a) * d, *xb = Ks + ((size_t)j * hd + b) * d;
            for (int64_t e = 0; e < d; e++) {
                ra[e] += pr * xa[e] + pi * xb[e];
                rb[e] += pr * xb[e] - pi * xa[e];
            }
            if (bk) {
                ba += pr * bKs[(size_t)j * hd + a] + pi * bKs[(size_t)j * hd + b];
                bb += pr * bKs[(size_t)j * hd + b] - pi * bKs[(size_t)j * hd + a];
            }
        }
        if (bk) {
            bk_new[(size_t)g * hd + a] = ba;
            bk_new[(size_t)g * hd + b] = bb;
        }
        /* queries: q' = q · conj(u_j) / (√w_j · bal) */
        for (int io = 0; io < n_io; io++)
            for (int i = g * rd; i < (g + 1) * rd; i++) {
                int j = kvf_cv_member_of(G, i) - j0;
                double k = 1.0 / (sw[j] * bal), pr = k * u_re[(size_t)j * F + f], pi = k * u_im[(size_t)j * F + f];
                double *qa = ios[io].wq + ((size_t)i * hd + a) * d, *qb = ios[io].wq + ((size_t)i * hd + b) * d;
                for (int64_t e = 0; e < d; e++) {
                    double x = qa[e], y = qb[e];
                    qa[e] = pr * x + pi * y;
                    qb[e] = pr * y - pi * x;
                }
                if (ios[io].bq) {
                    double *bq = ios[io].bq + (size_t)i * hd, x = bq[a], y = bq[b];
                    bq[a] = pr * x + pi * y;
                    bq[b] = pr * y - pi * x;
                }
            }
    }
    /* dims RoPE leaves alone: weighted PCA, any real map folds */
    if (s == KVF_OK && nr > 0) {
        size_t Nn = (size_t)n * nr;
        Cnr = malloc(sizeof(double) * Nn * Nn);
        Mfull = calloc(Nn * Nn, sizeof(double));
        A = malloc(sizeof(double) * (size_t)nr * Nn);
        B = malloc(sizeof(double) * Nn * (size_t)nr);
        if (!Cnr || !Mfull || !A || !B) s = kvf_error_set(KVF_ERR_OOM, "gqa calib: out of memory");
        for (size_t x = 0; s == KVF_OK && x < Nn; x++) {
            size_t jx = x / nr, dx = x % nr;
            for (size_t y = 0; y < Nn; y++) {
                size_t jy = y / nr, dy = y % nr;
                Cnr[x * Nn + y] = S[(jx * hd + 2 * F + dx) * N + (jy * hd + 2 * F + dy)];
                if (jx == jy) Mfull[x * Nn + y] = Mnr[jx * nr * nr + dx * nr + dy];
            }
        }
        bool weighted = false;
        for (size_t x = 0; x < Nn && Mfull; x++) weighted = weighted || Mfull[x * Nn + x] > 0;
        double kept = 0;
        if (s == KVF_OK) s = kvf_cv_wpca((int)Nn, nr, Cnr, weighted ? Mfull : NULL, A, B, &kept);
        if (s == KVF_OK) {
            double tr = 0;
            for (size_t x = 0; x < Nn; x++) tr += Cnr[x * Nn + x];
            *kept_num += kept * tr;
            *kept_den += tr;
            for (int r = 0; r < nr; r++) {
                double *row = wk_new + ((size_t)g * hd + 2 * F + r) * d;
                memset(row, 0, sizeof(double) * (size_t)d);
                double bsum = 0;
                for (size_t x = 0; x < Nn; x++) {
                    double coef = A[(size_t)r * Nn + x];
                    size_t jx = x / nr, dx = x % nr;
                    const double *src = Ks + (jx * hd + 2 * F + dx) * d;
                    for (int64_t e = 0; e < d; e++) row[e] += coef * src[e];
                    if (bk) bsum += coef * bKs[jx * hd + 2 * F + dx];
                }
                if (bk) bk_new[(size_t)g * hd + 2 * F + r] = bsum;
            }
            /* queries: q'[nr] = B_jᵀ q[nr] */
            double *tmp = malloc(sizeof(double) * (size_t)nr * (size_t)d);
            if (!tmp) s = kvf_error_set(KVF_ERR_OOM, "gqa calib: out of memory");
            for (int io = 0; s == KVF_OK && io < n_io; io++)
                for (int i = g * rd; i < (g + 1) * rd; i++) {
                    int j = kvf_cv_member_of(G, i) - j0;
                    double *q = ios[io].wq + ((size_t)i * hd + 2 * F) * d;
                    const double *Bj = B + (size_t)j * nr * nr; /* rows j·nr.., nr×nr */
                    memset(tmp, 0, sizeof(double) * (size_t)nr * d);
                    for (int r = 0; r < nr; r++)
                        for (int x = 0; x < nr; x++) {
                            double coef = Bj[(size_t)x * nr + r];
                            for (int64_t e = 0; e < d; e++) tmp[(size_t)r * d + e] += coef * q[(size_t)x * d + e];
                        }
                    memcpy(q, tmp, sizeof(double) * (size_t)nr * d);
                    if (ios[io].bq) {
                        double *bq = ios[io].bq + (size_t)i * hd + 2 * F, nb[KVF_MAX_HEADS * 4];
                        double *nbp = nr <= (int)(sizeof nb / sizeof *nb) ? nb : malloc(sizeof(double) * nr);
                        for (int r = 0; r < nr && nbp; r++) {
                            nbp[r] = 0;
                            for (int x = 0; x < nr; x++) nbp[r] += Bj[(size_t)x * nr + r] * bq[x];
                        }
                        if (nbp) memcpy(bq, nbp, sizeof(double) * nr);
                        if (nbp != nb) free(nbp);
                    }
                }
            free(tmp);
        }
    }
    free(Ks);
    free(bKs);
    free(S);
    free(Q);
    free(w);
    free(Mnr);
    free(E);
    free(ev);
    free(V);
    free(u_re);
    free(u_im);
    free(Cnr);
    free(Mfull);
    free(A);
    free(B);
    return s;
}

/* ---- calib: values --------------------------------------------------------------------------- */

static kvf_status calib_values(const kvf_model_config *c, const struct kvf_cv_groups *G, int g,
                               const kvf_calib *calib, int p, const double *wv, const double *bv,
                               double *wv_new, double *bv_new, struct layer_io *ios, int n_io,
                               double *kept_num, double *kept_den) {
    int64_t d = c->d_model;
    int vd = c->v_head_dim, nq = c->n_q_heads, j0 = G->first[g], n = G->first[g + 1] - j0,
        rd = nq / G->n_dst;
    int64_t ocols = (int64_t)nq * vd;
    size_t N = (size_t)n * (size_t)vd;
    double *Vs = malloc(sizeof(double) * N * (size_t)d), *bVs = bv ? malloc(sizeof(double) * N) : NULL,
           *S = malloc(sizeof(double) * N * N), *M = calloc(N * N, sizeof(double)),
           *A = malloc(sizeof(double) * (size_t)vd * N), *B = malloc(sizeof(double) * N * (size_t)vd),
           *tmp = malloc(sizeof(double) * (size_t)vd * (size_t)(d > vd ? d : vd));
    kvf_status s = Vs && (bVs || !bv) && S && M && A && B && tmp ? KVF_OK
                                                                  : kvf_error_set(KVF_ERR_OOM, "gqa calib: out of memory");
    for (int j = 0; s == KVF_OK && j < n; j++) {
        int h = G->head[j0 + j];
        memcpy(Vs + (size_t)j * vd * d, wv + (size_t)h * vd * d, sizeof(double) * (size_t)vd * d);
        if (bv) memcpy(bVs + (size_t)j * vd, bv + (size_t)h * vd, sizeof(double) * (size_t)vd);
    }
    if (s == KVF_OK) s = kvf_calib_project(calib, p, (int)N, Vs, bVs, S);
    /* output weighting: M_j = Σ W_o^(i)ᵀ W_o^(i) over the query heads using member j */
    for (int io = 0; s == KVF_OK && io < n_io; io++)
        for (int i = g * rd; i < (g + 1) * rd; i++) {
            int j = kvf_cv_member_of(G, i) - j0;
            const double *wo = ios[io].wo;
            for (int64_t r = 0; r < d; r++) {
                const double *row = wo + (size_t)r * ocols + (size_t)i * vd;
                for (int x = 0; x < vd; x++)
                    for (int y = 0; y < vd; y++) M[((size_t)j * vd + x) * N + (size_t)j * vd + y] += row[x] * row[y];
            }
        }
    double kept = 0;
    if (s == KVF_OK) s = kvf_cv_wpca((int)N, vd, S, M, A, B, &kept);
    if (s == KVF_OK) {
        double tr = 0, target = 0;
        for (size_t x = 0; x < N; x++) tr += S[x * N + x];
        target = tr / (double)N;
        *kept_num += kept * tr;
        *kept_den += tr;
        /* balance each new value dim to the members' mean energy: D A, B D⁻¹ */
        for (int r = 0; r < vd; r++) {
            double e = 0;
            for (size_t x = 0; x < N; x++)
                for (size_t y = 0; y < N; y++) e += A[(size_t)r * N + x] * S[x * N + y] * A[(size_t)r * N + y];
            double D = e > 0 && target > 0 ? sqrt(target / e) : 1.0;
            for (size_t x = 0; x < N; x++) {
                A[(size_t)r * N + x] *= D;
                B[x * vd + r] /= D;
            }
        }
        kvf_dgemm(false, false, vd, (int)d, (int)N, A, Vs, wv_new + (size_t)g * vd * d);
        if (bv)
            for (int r = 0; r < vd; r++) {
                double acc = 0;
                for (size_t x = 0; x < N; x++) acc += A[(size_t)r * N + x] * bVs[x];
                bv_new[(size_t)g * vd + r] = acc;
            }
        /* outputs: W_o^(i) ← W_o^(i) B_j */
        for (int io = 0; io < n_io; io++)
            for (int i = g * rd; i < (g + 1) * rd; i++) {
                int j = kvf_cv_member_of(G, i) - j0;
                const double *Bj = B + (size_t)j * vd * vd;
                double *wo = ios[io].wo;
                for (int64_t r = 0; r < d; r++) {
                    double *row = wo + (size_t)r * ocols + (size_t)i * vd;
                    for (int y = 0; y < vd; y++) {
                        double acc = 0;
                        for (int x = 0; x < vd; x++) acc += row[x] * Bj[(size_t)x * vd + y];
                        tmp[y] = acc;
                    }
                    memcpy(row, tmp, sizeof(double) * (size_t)vd);
                }
            }
    }
    free(Vs);
    free(bVs);
    free(S);
    free(M);
    free(A);
    free(B);
    free(tmp);
    return s;
}

/* ---- the conversion -------------------------------------------------------------------------- */

kvf_model *kvf_convert_gqa(const kvf_model *src, const kvf_convert_opts *o, const kvf_calib *calib,
                           FILE *log) {
    KVF_CHECK_NULL(src && o, KVF_ERR_ARG, "kvf_convert_gqa: NULL argument");
    const kvf_model_config *c = &src->cfg;
    int kv;
    if (kvf_cv_check_gqa(c, o, &kv, true) != KVF_OK) return NULL;
    const char *method = o->method[0] ? o->method : "mean";
    bool use_calib = !strcmp(method, "calib");
    enum kvf_cv_pool pool = !strcmp(method, "first")    ? KVF_CV_POOL_FIRST
                            : !strcmp(method, "random") ? KVF_CV_POOL_RANDOM
                                                        : KVF_CV_POOL_MEAN;
    if (use_calib) {
        KVF_CHECK_NULL(calib && calib->gram, KVF_ERR_ARG,
                       "--method calib needs calibration statistics (--calib PATH)");
        KVF_CHECK_NULL(calib->n_layers == c->n_layers && calib->d == c->d_model, KVF_ERR_ARG,
                       "gqa calib: the calibration statistics (%d layers, d %lld) are not of this model (%d "
                       "layers, d %lld)",
                       calib->n_layers, (long long)calib->d, c->n_layers, (long long)c->d_model);
    }
    kvf_model_config cfg = *c;
    cfg.n_kv_heads = kv;
    kvf_model *m = kvf_cv_derive(src, &cfg);
    if (!m) return NULL;
    struct kvf_cv_groups G;
    kvf_cv_groups_init(&G, c->n_q_heads, c->n_kv_heads, kv);
    int64_t d = c->d_model;
    int hd = c->head_dim, vd = c->v_head_dim;
    char name[160];
    kvf_status s = KVF_OK;
    for (int p = 0; s == KVF_OK && p < c->n_layers; p++) {
        if (!kvf_model_is_producer(c, p)) continue;
        double *wk = kvf_cv_read(src, kvf_cv_name(name, sizeof name, p, "k_proj.weight"), NULL);
        double *wv = wk ? kvf_cv_read(src, kvf_cv_name(name, sizeof name, p, "v_proj.weight"), NULL) : NULL;
        double *bk = c->qkv_bias ? kvf_cv_read_opt(src, kvf_cv_name(name, sizeof name, p, "k_proj.bias")) : NULL;
        double *bv = c->qkv_bias ? kvf_cv_read_opt(src, kvf_cv_name(name, sizeof name, p, "v_proj.bias")) : NULL;
        double *wk_n = malloc(sizeof(double) * (size_t)kv * hd * (size_t)d),
               *wv_n = malloc(sizeof(double) * (size_t)kv * vd * (size_t)d),
               *bk_n = calloc((size_t)kv * hd, sizeof(double)), *bv_n = calloc((size_t)kv * vd, sizeof(double));
        struct layer_io ios[KVF_MAX_LAYERS];
        int n_io = 0;
        if (!wk || !wv || (c->qkv_bias && (!bk || !bv))) s = kvf_error_code() ? kvf_error_code() : KVF_ERR_STATE;
        else if (!wk_n || !wv_n || !bk_n || !bv_n) s = kvf_error_set(KVF_ERR_OOM, "gqa: out of memory");
        char what[120];
        if (s == KVF_OK && !use_calib) {
            kvf_rng rk, rv;
            kvf_cv_random_rng(&rk, o->seed, p, 0);
            kvf_cv_random_rng(&rv, o->seed, p, 1);
            int64_t nk = (int64_t)c->n_kv_heads * hd * d, nv = (int64_t)c->n_kv_heads * vd * d;
            double sk = pool == KVF_CV_POOL_RANDOM ? kvf_cv_std(wk, nk) : 0,
                   sv = pool == KVF_CV_POOL_RANDOM ? kvf_cv_std(wv, nv) : 0;
            kvf_cv_pool_rows(&G, pool, hd, d, wk, wk_n, false, &rk, sk);
            kvf_cv_pool_rows(&G, pool, vd, d, wv, wv_n, false, &rv, sv);
            if (bk) kvf_cv_pool_rows(&G, pool, hd, 1, bk, bk_n, true, &rk, 0);
            if (bv) kvf_cv_pool_rows(&G, pool, vd, 1, bv, bv_n, true, &rv, 0);
            snprintf(what, sizeof what, "relative weight change K %.3f, V %.3f",
                     rel_change(&G, hd, d, wk, wk_n), rel_change(&G, vd, d, wv, wv_n));
        } else if (s == KVF_OK) {
            /* the layers whose queries read this producer's K/V */
            for (int l = p; s == KVF_OK && l < c->n_layers; l++) {
                if (c->kv_source[l] != p) continue;
                struct layer_io *io = &ios[n_io++];
                io->layer = l;
                io->wq = kvf_cv_read(src, kvf_cv_name(name, sizeof name, l, "q_proj.weight"), NULL);
                io->bq = c->qkv_bias ? kvf_cv_read_opt(src, kvf_cv_name(name, sizeof name, l, "q_proj.bias")) : NULL;
                io->wo = io->wq ? kvf_cv_read(src, kvf_cv_name(name, sizeof name, l, "o_proj.weight"), NULL) : NULL;
                if (!io->wq || !io->wo) s = kvf_error_code();
            }
            double kn = 0, kd = 0, vn = 0, vdn = 0;
            for (int g = 0; s == KVF_OK && g < kv; g++) {
                if (G.first[g + 1] - G.first[g] == 1) { /* one member: keep it as it is */
                    int h = G.head[G.first[g]];
                    memcpy(wk_n + (size_t)g * hd * d, wk + (size_t)h * hd * d, sizeof(double) * (size_t)hd * d);
                    memcpy(wv_n + (size_t)g * vd * d, wv + (size_t)h * vd * d, sizeof(double) * (size_t)vd * d);
                    if (bk) memcpy(bk_n + (size_t)g * hd, bk + (size_t)h * hd, sizeof(double) * (size_t)hd);
                    if (bv) memcpy(bv_n + (size_t)g * vd, bv + (size_t)h * vd, sizeof(double) * (size_t)vd);
                    continue;
                }
                s = calib_keys(c, &G, g, calib, p, wk, bk, wk_n, bk_n, ios, n_io, &kn, &kd);
                if (s == KVF_OK) s = calib_values(c, &G, g, calib, p, wv, bv, wv_n, bv_n, ios, n_io, &vn, &vdn);
            }
            snprintf(what, sizeof what, "calibration energy kept: keys %.2f%% (query-weighted), values %.2f%% "
                     "(output-weighted)",
                     kd > 0 ? 100 * kn / kd : 100.0, vdn > 0 ? 100 * vn / vdn : 100.0);
            for (int io = 0; s == KVF_OK && io < n_io; io++) {
                int l = ios[io].layer;
                s = kvf_cv_write(m, kvf_cv_name(name, sizeof name, l, "q_proj.weight"), ios[io].wq);
                if (s == KVF_OK && ios[io].bq) s = kvf_cv_write(m, kvf_cv_name(name, sizeof name, l, "q_proj.bias"), ios[io].bq);
                if (s == KVF_OK) s = kvf_cv_write(m, kvf_cv_name(name, sizeof name, l, "o_proj.weight"), ios[io].wo);
            }
        }
        if (s == KVF_OK) s = kvf_cv_write(m, kvf_cv_name(name, sizeof name, p, "k_proj.weight"), wk_n);
        if (s == KVF_OK) s = kvf_cv_write(m, kvf_cv_name(name, sizeof name, p, "v_proj.weight"), wv_n);
        if (s == KVF_OK && bk) s = kvf_cv_write(m, kvf_cv_name(name, sizeof name, p, "k_proj.bias"), bk_n);
        if (s == KVF_OK && bv) s = kvf_cv_write(m, kvf_cv_name(name, sizeof name, p, "v_proj.bias"), bv_n);
        if (s == KVF_OK && log)
            fprintf(log, "layer %d/%d: K/V %d → %d heads (%s): %s\n", p + 1, c->n_layers, c->n_kv_heads, kv,
                    method, what);
        for (int io = 0; io < n_io; io++) {
            free(ios[io].wq);
            free(ios[io].bq);
            free(ios[io].wo);
        }
        free(wk);
        free(wv);
        free(bk);
        free(bv);
        free(wk_n);
        free(wv_n);
        free(bk_n);
        free(bv_n);
    }
    if (s != KVF_OK) {
        kvf_model_free(m);
        return NULL;
    }
    return m;
}
