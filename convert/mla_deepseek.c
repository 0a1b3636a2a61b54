/* mla_deepseek.c — MHA/GQA → DeepSeek-V3 MLA (TransMLA, notes/conversion-methods.md §1;
 * the math and the choices are written out in docs/conversions.md "MLA").
 *
 * Per layer, with h query heads, g KV heads of dim d, v dim dv, D = --rope-dim, c = d/D,
 * F = --freqfold, R = --kv-rank, everything in double from the calibration moments
 * G = Σ[x;1][x;1]ᵀ (calib.h):
 *   0. GQA as MLA with identity up-projections: query head i reads KV head j(i) = i/(h/g).
 *   1. RoRoPE + FreqFold: per group a of F adjacent frequencies, PCA across KV heads (and the
 *      F frequencies) of the key's RoPE pairs, the same matrix on both halves of a pair. The
 *      top F/c components of every group form the shared RoPE key k_pe (dim D, interleaved,
 *      pair k = a·F/c + p rotating at θ^(−2k/D) = the original frequency k·c); the rest of
 *      the L = g·d key dims become "nope" and lose RoPE (exact for F = 1 up to that drop).
 *   2. BKV: K_nope /= α, its up-projection ·= α, α = mean column RMS of K_nope / that of V.
 *   3. Joint PCA of [K_nope/α, V] (uncentred, 1% mean-diagonal damping) to rank R: kv_a's
 *      latent rows, kv_b per head [k_nope (d rows); v (dv rows)].
 *   4. Queries: q_nope = the original query head, q_pe = the RoPE-side key up-projection
 *      absorbed into the query, both times sqrt((d+D)/d) (DeepSeek scales by (d+D)^-½).
 *      --q-rank RQ: q_a = top-RQ PCA directions of the query outputs, q_b absorbs the rest.
 *   5. The latent RMSNorms: see kvf_mla_norm_mode (mla_internal.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "convert_impl.h"
#include "linalg.h"
#include "mla_internal.h"

#define LATENT_EPS 1e-6 /* kvforge's / HF DeepSeek's fixed eps of kv_a/q_a_layernorm */
#define DAMP 0.01       /* TransMLA: 1% of the mean diagonal added before eigh */

static void *xcalloc(size_t n, size_t sz, bool *ok) {
    void *p = calloc(n ? n : 1, sz);
    if (!p) *ok = false;
    return p;
}

/* The first k columns of the n×n matrix P as an n×k matrix. */
static double *first_cols(const double *P, int n, int k) {
    double *o = malloc(sizeof(double) * (size_t)n * (size_t)(k ? k : 1));
    if (!o) {
        kvf_error_set(KVF_ERR_OOM, "convert: out of memory");
        return NULL;
    }
    for (int r = 0; r < n; r++) memcpy(o + (size_t)r * k, P + (size_t)r * n, sizeof(double) * (size_t)k);
    return o;
}

/* out (k × Dm) = Pkᵀ M and e = Σ_r (Pkᵀ S Pk)_rr, for Pk (n × k), M (n × Dm), S (n × n). */
static kvf_status project_basis(const double *Pk, int n, int k, const double *M, int Dm, const double *S,
                                double *out, double *e) {
    double *SP = malloc(sizeof(double) * (size_t)n * (size_t)k);
    KVF_CHECK(SP, KVF_ERR_OOM, "convert: out of memory");
    kvf_dgemm(true, false, k, Dm, n, Pk, M, out);
    kvf_dgemm(false, false, n, k, n, S, Pk, SP);
    double s = 0;
    for (size_t i = 0; i < (size_t)n * k; i++) s += Pk[i] * SP[i];
    *e = s;
    free(SP);
    return KVF_OK;
}

static void damp(int n, double *H) {
    double tr = 0;
    for (int i = 0; i < n; i++) tr += H[(size_t)i * n + i];
    double e = DAMP * tr / (n ? n : 1);
    if (!(e > 0)) e = 1e-12;
    for (int i = 0; i < n; i++) H[(size_t)i * n + i] += e;
}

void kvf_mla_rorope_free(struct kvf_rorope *r) {
    if (!r) return;
    free(r->kx);
    free(r->ky);
    free(r->cqx);
    free(r->cqy);
    free(r->energy);
    memset(r, 0, sizeof *r);
}

kvf_status kvf_mla_rorope(const kvf_model *src, const kvf_calib *calib, int layer, int F,
                          bool query_aware, struct kvf_rorope *out) {
    memset(out, 0, sizeof *out);
    const kvf_model_config *c = &src->cfg;
    int Dm = (int)c->d_model, h = c->n_q_heads, g = c->n_kv_heads, d = c->head_dim, half = d / 2;
    int rep = h / g;
    KVF_CHECK(F >= 1 && half % F == 0, KVF_ERR_ARG, "convert: --freqfold %d must divide head_dim/2 = %d", F, half);
    KVF_CHECK(calib && layer < calib->n_layers && calib->d == Dm, KVF_ERR_ARG,
              "convert: calibration statistics do not fit the model (layer %d)", layer);
    const struct kvf_layer_weights *Lw = &src->layers[layer];
    double *Wk = kvf_cv_tensor_read(Lw->k_w), *Wq = kvf_cv_tensor_read(Lw->q_w);
    int gs = g * F, ngrp = half / F, pairs = ngrp * gs;
    bool ok = Wk && Wq;
    double *qdiag = xcalloc((size_t)h * d, sizeof(double), &ok);
    double *X = xcalloc((size_t)2 * gs * Dm, sizeof(double), &ok);
    double *S = xcalloc((size_t)4 * gs * gs, sizeof(double), &ok);
    double *H = xcalloc((size_t)gs * gs, sizeof(double), &ok);
    double *U = xcalloc((size_t)gs * gs, sizeof(double), &ok);
    double *lam = xcalloc((size_t)gs, sizeof(double), &ok);
    double *w = xcalloc((size_t)gs, sizeof(double), &ok);
    out->pairs = pairs;
    out->group_size = gs;
    out->kx = xcalloc((size_t)pairs * Dm, sizeof(double), &ok);
    out->ky = xcalloc((size_t)pairs * Dm, sizeof(double), &ok);
    out->cqx = xcalloc((size_t)h * pairs * d, sizeof(double), &ok);
    out->cqy = xcalloc((size_t)h * pairs * d, sizeof(double), &ok);
    out->energy = xcalloc((size_t)pairs, sizeof(double), &ok);
    kvf_status st = ok ? KVF_OK : kvf_error_set(KVF_ERR_OOM, "convert: out of memory (RoRoPE, layer %d)", layer);
    if (st == KVF_OK && query_aware) st = kvf_cv_energies(calib, layer, h * d, Wq, qdiag);
    for (int a = 0; st == KVF_OK && a < ngrp; a++) {
        /* rows 0..gs: x halves, gs..2gs: y halves; column col = j·F + t ↔ frequency a·F + t */
        for (int j = 0; j < g; j++)
            for (int t = 0; t < F; t++) {
                int col = j * F + t, f = a * F + t;
                memcpy(X + (size_t)col * Dm, Wk + (size_t)(j * d + f) * Dm, sizeof(double) * Dm);
                memcpy(X + (size_t)(gs + col) * Dm, Wk + (size_t)(j * d + f + half) * Dm, sizeof(double) * Dm);
            }
        if ((st = kvf_calib_project(calib, layer, 2 * gs, X, NULL, S)) != KVF_OK) break;
        for (int r = 0; r < gs; r++)
            for (int s = 0; s < gs; s++)
                H[r * gs + s] = S[(size_t)r * 2 * gs + s] + S[(size_t)(gs + r) * 2 * gs + gs + s];
        double qmean = 0;
        for (int col = 0; col < gs; col++) {
            int j = col / F, f = a * F + col % F;
            double e = 0;
            if (query_aware)
                for (int i = j * rep; i < (j + 1) * rep; i++)
                    e += qdiag[(size_t)i * d + f] + qdiag[(size_t)i * d + f + half];
            w[col] = e;
            qmean += e / gs;
        }
        for (int col = 0; col < gs; col++) /* query weights, damped like the PCA */
            w[col] = query_aware ? sqrt(w[col] + DAMP * qmean + 1e-300) : 1.0;
        for (int r = 0; r < gs; r++)
            for (int s = 0; s < gs; s++) H[r * gs + s] *= w[r] * w[s];
        double tr = 0;
        for (int r = 0; r < gs; r++) tr += H[r * gs + r];
        damp(gs, H);
        if ((st = kvf_eigh_desc(gs, H, lam, U)) != KVF_OK) break;
        double e = DAMP * tr / gs;
        for (int p = 0; p < gs; p++) {
            int P = a * gs + p;
            out->energy[P] = lam[p] - (e > 0 ? e : 1e-12);
            /* key: T = Uᵀ diag(w); query: T^{-T} = Uᵀ diag(1/w) */
            for (int col = 0; col < gs; col++) {
                double tk = U[col * gs + p] * w[col];
                const double *xr = X + (size_t)col * Dm, *yr = X + (size_t)(gs + col) * Dm;
                for (int k = 0; k < Dm; k++) {
                    out->kx[(size_t)P * Dm + k] += tk * xr[k];
                    out->ky[(size_t)P * Dm + k] += tk * yr[k];
                }
                int j = col / F, f = a * F + col % F;
                double tq = U[col * gs + p] / w[col];
                for (int i = j * rep; i < (j + 1) * rep; i++) {
                    out->cqx[((size_t)i * pairs + P) * d + f] = tq;
                    out->cqy[((size_t)i * pairs + P) * d + f + half] = tq;
                }
            }
        }
    }
    free(Wk);
    free(Wq);
    free(qdiag);
    free(X);
    free(S);
    free(H);
    free(U);
    free(lam);
    free(w);
    if (st != KVF_OK) kvf_mla_rorope_free(out);
    return st;
}

/* ---- the conversion ----------------------------------------------------------------------- */

struct ds_dims {
    int Dm, h, g, rep, d, dv, m, F, c, nr, gs, ngrp, L, Lk, W, R, RQ;
    double scale; /* query factor s = src softmax scale · sqrt(d + m) */
};

/* The latent norm: scales the latent rows (rows × Dm, in place) and gives the norm weight,
 * from the latent's mean square per token (ms, over tokens and dims). */
static double norm_setup(enum kvf_mla_norm_mode mode, double ms, int rows, int Dm, double *lat_rows) {
    double rms = sqrt(ms > 0 ? ms : 1e-30);
    if (mode == KVF_MLA_NORM_MEAN_RMS) return rms;
    /* LINEAR: latent mean square = 1e-6 · eps, weight = sqrt(eps)/γ */
    double gamma = 1e-3 * sqrt(LATENT_EPS) / rms;
    for (size_t i = 0; i < (size_t)rows * Dm; i++) lat_rows[i] *= gamma;
    return sqrt(LATENT_EPS) / gamma;
}

/* The output-aware latent (kv_output_aware): weighted PCA of y = [K_nope/α; V] minimising
 *   Σ_i s²·σ_i²·E[(q_iᵀ A_iᵀ α δk)²] + Σ_i E‖W_o,i δv_j(i)‖²
 * — the logit error of every query head, converted to output units by the spread σ_i² of its
 * values through o_proj, plus the value error seen through o_proj. The K block is centred: a
 * key error common to all tokens shifts every logit of a query equally (softmax-invariant).
 * Dn = Φᵀ M^½, Up = M^-½ Φ (kvf_cv_wpca) with the metric M = diag(M_k, M_v(1..g)). */
static kvf_status output_aware_basis(const kvf_model *src, const kvf_calib *calib, int l, const struct ds_dims *z,
                                     double alpha, const double *Y, const double *S, const double *A, double *Dn,
                                     double *Up) {
    int Dm = z->Dm, h = z->h, d = z->d, dv = z->dv, Lk = z->Lk, W = z->W, R = z->R;
    double T = calib->tokens > 0 ? (double)calib->tokens : 1.0, sc = src->cfg.softmax_scale;
    const double *G = kvf_calib_gram(calib, l);
    double *Wq = kvf_cv_tensor_read(src->layers[l].q_w), *Wo = kvf_cv_tensor_read(src->layers[l].o_w);
    double *xbar = malloc(sizeof(double) * (size_t)Dm), *mu = malloc(sizeof(double) * (size_t)W);
    double *C = malloc(sizeof(double) * (size_t)W * W), *Mt = calloc((size_t)W * W, sizeof(double));
    double *Qi = malloc(sizeof(double) * (size_t)d * d), *AQ = malloc(sizeof(double) * (size_t)(Lk ? Lk : 1) * d);
    double *OtO = malloc(sizeof(double) * (size_t)dv * dv);
    kvf_status st = Wq && Wo && xbar && mu && C && Mt && Qi && AQ && OtO
                        ? KVF_OK
                        : kvf_error_set(KVF_ERR_OOM, "convert: out of memory (output-aware latent)");
    if (st != KVF_OK) goto done;
    for (int x = 0; x < Dm; x++) xbar[x] = G[(size_t)x * (Dm + 1) + Dm] / T;
    for (int r = 0; r < W; r++) {
        double m = 0;
        for (int x = 0; x < Dm; x++) m += Y[(size_t)r * Dm + x] * xbar[x];
        mu[r] = m;
    }
    for (int r = 0; r < W; r++)
        for (int c = 0; c < W; c++)
            C[(size_t)r * W + c] = S[(size_t)r * W + c] / T - (r < Lk || c < Lk ? mu[r] * mu[c] : 0.0);
    for (int i = 0; i < h; i++) {
        int j = i / z->rep;
        /* W_o,iᵀ W_o,i and σ_i² = tr(W_o,i Cov(v_j) W_o,iᵀ) */
        for (int a = 0; a < dv; a++)
            for (int b = 0; b < dv; b++) {
                double s = 0;
                for (int x = 0; x < Dm; x++) s += Wo[(size_t)x * h * dv + i * dv + a] * Wo[(size_t)x * h * dv + i * dv + b];
                OtO[(size_t)a * dv + b] = s;
            }
        double sig = 0;
        for (int a = 0; a < dv; a++)
            for (int b = 0; b < dv; b++) {
                int ra = Lk + j * dv + a, rb = Lk + j * dv + b;
                sig += OtO[(size_t)a * dv + b] * (S[(size_t)ra * W + rb] / T - mu[ra] * mu[rb]);
            }
        for (int a = 0; a < dv; a++)
            for (int b = 0; b < dv; b++) Mt[(size_t)(Lk + j * dv + a) * W + Lk + j * dv + b] += OtO[(size_t)a * dv + b];
        if (!Lk) continue;
        /* M_k += α² s² σ_i² A_i Q_i A_iᵀ, Q_i = E[q_i q_iᵀ] */
        if ((st = kvf_calib_project(calib, l, d, Wq + (size_t)i * d * Dm, NULL, Qi)) != KVF_OK) goto done;
        const double *Ai = A + (size_t)i * Lk * d;
        kvf_dgemm(false, false, Lk, d, d, Ai, Qi, AQ);
        double wgt = alpha * alpha * sc * sc * (sig > 0 ? sig : 0) / T;
        for (int r = 0; r < Lk; r++)
            for (int c = 0; c < Lk; c++) {
                double s = 0;
                for (int f = 0; f < d; f++) s += AQ[(size_t)r * d + f] * Ai[(size_t)c * d + f];
                Mt[(size_t)r * W + c] += wgt * s;
            }
    }
    /* damp each block by 1% of its mean diagonal */
    for (int blk = 0; blk <= z->g; blk++) {
        int lo = blk == 0 ? 0 : Lk + (blk - 1) * dv, hi = blk == 0 ? Lk : Lk + blk * dv;
        if (hi <= lo) continue;
        double tr = 0;
        for (int r = lo; r < hi; r++) tr += Mt[(size_t)r * W + r];
        double e = DAMP * tr / (hi - lo);
        for (int r = lo; r < hi; r++) Mt[(size_t)r * W + r] += e > 0 ? e : 1e-12;
    }
    st = kvf_cv_wpca(W, R, C, Mt, Dn, Up, NULL);
done:
    free(Wq);
    free(Wo);
    free(xbar);
    free(mu);
    free(C);
    free(Mt);
    free(Qi);
    free(AQ);
    free(OtO);
    return st;
}

static kvf_status fill(kvf_tensor *t, double v) {
    int64_t n = kvf_tensor_numel(t);
    double *b = malloc(sizeof(double) * (size_t)n);
    KVF_CHECK(b, KVF_ERR_OOM, "convert: out of memory");
    for (int64_t i = 0; i < n; i++) b[i] = v;
    kvf_status st = kvf_cv_tensor_write(t, b);
    free(b);
    return st;
}

static kvf_status ds_layer(const kvf_model *src, kvf_model *dst, int l, const struct ds_dims *z,
                           const kvf_calib *calib, const kvf_mla_tuning *tu, FILE *log) {
    const struct kvf_layer_weights *Ls = &src->layers[l];
    struct kvf_layer_weights *Ld = &dst->layers[l];
    int Dm = z->Dm, h = z->h, d = z->d, dv = z->dv, m = z->m, Lk = z->Lk, W = z->W, R = z->R,
        RQ = z->RQ, gs = z->gs, nr = z->nr;
    struct kvf_rorope rr;
    KVF_TRY(kvf_mla_rorope(src, calib, l, z->F, tu->rorope_query_aware, &rr));
    double *Wq = kvf_cv_tensor_read(Ls->q_w), *Wv = kvf_cv_tensor_read(Ls->v_w);
    bool ok = Wq && Wv;
    double *kpe = xcalloc((size_t)m * Dm, sizeof(double), &ok);
    double *M = xcalloc((size_t)W * Dm, sizeof(double), &ok);     /* [K_nope/α; V] */
    double *A = xcalloc((size_t)h * Lk * d, sizeof(double), &ok);  /* per head: q_i → nope coords */
    double *B = xcalloc((size_t)h * m * d, sizeof(double), &ok);   /* per head: q_i → q_pe */
    double *diag = xcalloc((size_t)W, sizeof(double), &ok);
    double *S = xcalloc((size_t)W * W, sizeof(double), &ok);
    double *P = xcalloc((size_t)W * W, sizeof(double), &ok);
    double *lam = xcalloc((size_t)W, sizeof(double), &ok);
    double *lat = xcalloc((size_t)R * Dm, sizeof(double), &ok);
    double *kva = xcalloc((size_t)(R + m) * Dm, sizeof(double), &ok);
    double *kvb = xcalloc((size_t)h * (d + dv) * R, sizeof(double), &ok);
    int qk = d + m, qin = RQ ? RQ : Dm;
    double *qout = xcalloc((size_t)h * qk * qin, sizeof(double), &ok);
    kvf_status st = ok ? KVF_OK : kvf_error_set(KVF_ERR_OOM, "convert: out of memory (layer %d)", l);
    double *Sq = NULL, *Pq = NULL, *lq = NULL, *qa = NULL, *Dn = NULL, *Up = NULL;
    if (st != KVF_OK) goto done;

    /* 1. split RoRoPE's pairs into the shared RoPE key and the nope dims */
    double rope_energy = 0, all_energy = 0;
    for (int P_ = 0; P_ < rr.pairs; P_++) {
        int a = P_ / gs, p = P_ % gs;
        all_energy += rr.energy[P_];
        double *kx = rr.kx + (size_t)P_ * Dm, *ky = rr.ky + (size_t)P_ * Dm;
        if (p < nr) {
            int k = a * nr + p; /* interleaved pair (2k, 2k+1) */
            rope_energy += rr.energy[P_];
            memcpy(kpe + (size_t)(2 * k) * Dm, kx, sizeof(double) * Dm);
            memcpy(kpe + (size_t)(2 * k + 1) * Dm, ky, sizeof(double) * Dm);
            for (int i = 0; i < h; i++) {
                memcpy(B + ((size_t)i * m + 2 * k) * d, rr.cqx + ((size_t)i * rr.pairs + P_) * d, sizeof(double) * d);
                memcpy(B + ((size_t)i * m + 2 * k + 1) * d, rr.cqy + ((size_t)i * rr.pairs + P_) * d, sizeof(double) * d);
            }
        } else {
            int np = a * (gs - nr) + (p - nr);
            memcpy(M + (size_t)(2 * np) * Dm, kx, sizeof(double) * Dm);
            memcpy(M + (size_t)(2 * np + 1) * Dm, ky, sizeof(double) * Dm);
            for (int i = 0; i < h; i++) {
                memcpy(A + ((size_t)i * Lk + 2 * np) * d, rr.cqx + ((size_t)i * rr.pairs + P_) * d, sizeof(double) * d);
                memcpy(A + ((size_t)i * Lk + 2 * np + 1) * d, rr.cqy + ((size_t)i * rr.pairs + P_) * d, sizeof(double) * d);
            }
        }
    }
    memcpy(M + (size_t)Lk * Dm, Wv, sizeof(double) * (size_t)z->g * dv * Dm);

    /* 2. BKV */
    double alpha = 1.0;
    if ((st = kvf_cv_energies(calib, l, W, M, diag)) != KVF_OK) goto done;
    if (tu->bkv && Lk > 0) {
        double kn = 0, vn = 0;
        for (int r = 0; r < Lk; r++) kn += sqrt(diag[r] > 0 ? diag[r] : 0) / Lk;
        for (int r = Lk; r < W; r++) vn += sqrt(diag[r] > 0 ? diag[r] : 0) / (W - Lk);
        if (kn > 0 && vn > 0 && isfinite(kn / vn)) alpha = kn / vn;
        for (size_t i = 0; i < (size_t)Lk * Dm; i++) M[i] /= alpha;
    }

    /* 3. the latent: c = Dn·y (R × W), y ≈ Up·c (W × R), y = [K_nope/α; V] */
    double kept = 0, total = 0;
    Dn = calloc((size_t)R * W, sizeof(double));
    Up = calloc((size_t)W * R, sizeof(double));
    if (!Dn || !Up) {
        st = kvf_error_set(KVF_ERR_OOM, "convert: out of memory");
        goto done;
    }
    if ((st = kvf_calib_project(calib, l, W, M, NULL, S)) != KVF_OK) goto done;
    for (int r = 0; r < W; r++) total += S[(size_t)r * W + r];
    if (tu->factor == KVF_MLA_FACTOR_IDENTITY) {
        for (int r = 0; r < W; r++) Dn[(size_t)r * W + r] = Up[(size_t)r * R + r] = 1.0;
    } else if (tu->kv_output_aware) {
        if ((st = output_aware_basis(src, calib, l, z, alpha, M, S, A, Dn, Up)) != KVF_OK) goto done;
    } else { /* TransMLA: uncentred PCA, 1% damping */
        double *Sd = malloc(sizeof(double) * (size_t)W * W);
        if (!Sd) {
            st = kvf_error_set(KVF_ERR_OOM, "convert: out of memory");
            goto done;
        }
        memcpy(Sd, S, sizeof(double) * (size_t)W * W);
        damp(W, Sd);
        st = kvf_eigh_desc(W, Sd, lam, P);
        free(Sd);
        if (st != KVF_OK) goto done;
        for (int n = 0; n < W; n++)
            for (int r = 0; r < R; r++) Dn[(size_t)r * W + n] = Up[(size_t)n * R + r] = P[(size_t)n * W + r];
    }
    /* latent rows = Dn·M; energy kept = tr(Dn S Dnᵀ) (exact for an orthonormal Dn) */
    {
        double *DnT = malloc(sizeof(double) * (size_t)W * R);
        if (!DnT) {
            st = kvf_error_set(KVF_ERR_OOM, "convert: out of memory");
            goto done;
        }
        for (int r = 0; r < R; r++)
            for (int n = 0; n < W; n++) DnT[(size_t)n * R + r] = Dn[(size_t)r * W + n];
        st = project_basis(DnT, W, R, M, Dm, S, lat, &kept);
        free(DnT);
        if (st != KVF_OK) goto done;
    }
    double ms = kept / ((double)R * (calib->tokens > 0 ? (double)calib->tokens : 1.0));
    /* kv_b: head i = [α·A_iᵀ Up_k ; Up_v(j)] */
    for (int i = 0; i < h; i++) {
        int j = i / z->rep;
        double *kb = kvb + (size_t)i * (d + dv) * R;
        /* A_i is Lk×d, Up's first Lk rows Lk×R: kb_k = α·A_iᵀ·Up_k (d×R) */
        kvf_dgemm(true, false, d, R, Lk, A + (size_t)i * Lk * d, Up, kb);
        for (size_t q = 0; q < (size_t)d * R; q++) kb[q] *= alpha;
        for (int e = 0; e < dv; e++)
            for (int r = 0; r < R; r++) kb[(size_t)(d + e) * R + r] = Up[(size_t)(Lk + j * dv + e) * R + r];
    }
    double kv_w = 0;
    if (tu->norm != KVF_MLA_NORM_OFF) kv_w = norm_setup(tu->norm, ms, R, Dm, lat);
    memcpy(kva, lat, sizeof(double) * (size_t)R * Dm);
    memcpy(kva + (size_t)R * Dm, kpe, sizeof(double) * (size_t)m * Dm);

    /* 4. queries: per head [s·q_i ; s·B_i q_i], through the query PCA with --q-rank */
    double qkept = 1, qw = 0;
    if (RQ) {
        int hd = h * d;
        Sq = malloc(sizeof(double) * (size_t)hd * hd);
        Pq = malloc(sizeof(double) * (size_t)hd * hd);
        lq = malloc(sizeof(double) * (size_t)hd);
        qa = calloc((size_t)RQ * Dm, sizeof(double));
        if (!Sq || !Pq || !lq || !qa) {
            st = kvf_error_set(KVF_ERR_OOM, "convert: out of memory (query PCA)");
            goto done;
        }
        if ((st = kvf_calib_project(calib, l, hd, Wq, NULL, Sq)) != KVF_OK) goto done;
        double qtot = 0, qk_ = 0;
        for (int r = 0; r < hd; r++) qtot += Sq[(size_t)r * hd + r];
        double *Sd = malloc(sizeof(double) * (size_t)hd * hd);
        if (!Sd) {
            st = kvf_error_set(KVF_ERR_OOM, "convert: out of memory");
            goto done;
        }
        memcpy(Sd, Sq, sizeof(double) * (size_t)hd * hd);
        damp(hd, Sd);
        st = kvf_eigh_desc(hd, Sd, lq, Pq);
        free(Sd);
        if (st != KVF_OK) goto done;
        double *PQ = first_cols(Pq, hd, RQ);
        if (!PQ) {
            st = kvf_error_code();
            goto done;
        }
        st = project_basis(PQ, hd, RQ, Wq, Dm, Sq, qa, &qk_);
        free(PQ);
        if (st != KVF_OK) goto done;
        qkept = qtot > 0 ? qk_ / qtot : 1;
        double qms = qk_ / ((double)RQ * (calib->tokens > 0 ? (double)calib->tokens : 1.0));
        qw = norm_setup(tu->norm == KVF_MLA_NORM_MEAN_RMS ? KVF_MLA_NORM_MEAN_RMS : KVF_MLA_NORM_LINEAR, qms,
                        RQ, Dm, qa);
    }
    /* the query head's input-side matrix: W_q_i (d × Dm) or Pq rows of head i (d × RQ) */
    for (int i = 0; i < h; i++) {
        double *qo = qout + (size_t)i * qk * qin;
        for (int f = 0; f < d; f++) {
            const double *srow = RQ ? NULL : Wq + (size_t)(i * d + f) * Dm;
            for (int x = 0; x < qin; x++)
                qo[(size_t)f * qin + x] = z->scale * (RQ ? Pq[(size_t)(i * d + f) * (h * d) + x] : srow[x]);
        }
        /* rows d..d+m of the head: B_i (m×d) times its first d rows (d×qin) */
        kvf_dgemm(false, false, m, qin, d, B + (size_t)i * m * d, qo, qo + (size_t)d * qin);
    }

    if (RQ) {
        if ((st = kvf_cv_tensor_write(Ld->q_a_w, qa)) != KVF_OK || (st = fill(Ld->q_a_norm, qw)) != KVF_OK ||
            (st = kvf_cv_tensor_write(Ld->q_b_w, qout)) != KVF_OK)
            goto done;
    } else if ((st = kvf_cv_tensor_write(Ld->q_w, qout)) != KVF_OK) {
        goto done;
    }
    if ((st = kvf_cv_tensor_write(Ld->kv_a_w, kva)) != KVF_OK || (st = kvf_cv_tensor_write(Ld->kv_b_w, kvb)) != KVF_OK)
        goto done;
    if (Ld->kv_a_norm && (st = fill(Ld->kv_a_norm, kv_w)) != KVF_OK) goto done;
    if (log) {
        fprintf(log,
                "layer %d: RoRoPE keeps %.2f%% of the key energy on the %d-dim RoPE key; alpha %.4g; "
                "latent rank %d keeps %.2f%% of [K_nope, V]",
                l, all_energy > 0 ? 100.0 * rope_energy / all_energy : 100.0, m, alpha, R,
                total > 0 ? 100.0 * kept / total : 100.0);
        if (RQ) fprintf(log, "; query rank %d keeps %.2f%%", RQ, 100.0 * qkept);
        fprintf(log, "\n");
    }
done:
    kvf_mla_rorope_free(&rr);
    free(Wq);
    free(Wv);
    free(kpe);
    free(M);
    free(A);
    free(B);
    free(diag);
    free(S);
    free(P);
    free(lam);
    free(lat);
    free(kva);
    free(kvb);
    free(qout);
    free(Sq);
    free(Pq);
    free(lq);
    free(qa);
    free(Dn);
    free(Up);
    return st;
}

/* The route's dimensions from the source config and the options, with every check that needs
 * no weights (so the driver can refuse before loading anything). */
static kvf_status ds_dims_init(const kvf_model_config *c, const kvf_convert_opts *o, const kvf_mla_tuning *tu,
                               struct ds_dims *z) {
    KVF_TRY(kvf_mla_check_config(c, "deepseek"));
    memset(z, 0, sizeof *z);
    z->Dm = (int)c->d_model;
    z->h = c->n_q_heads;
    z->g = c->n_kv_heads;
    z->rep = z->h / z->g;
    z->d = c->head_dim;
    z->dv = c->v_head_dim;
    z->L = z->g * z->d;
    KVF_CHECK(o->rope_dim != -1, KVF_ERR_ARG,
              "convert: --rope-dim all is only for --style partial-rope; --style deepseek needs the "
              "shared RoPE key's dimension (an even divisor of head_dim %d)", z->d);
    z->m = o->rope_dim;
    KVF_CHECK(z->m >= 2 && z->m % 2 == 0 && z->m <= z->d && z->d % z->m == 0, KVF_ERR_ARG,
              "convert: --rope-dim %d does not work with --style deepseek: it must be even, at least 2, "
              "at most head_dim %d and divide it (each pair of the shared RoPE key stands for "
              "head_dim/rope_dim original frequencies)",
              z->m, z->d);
    z->c = z->d / z->m;
    z->F = o->freqfold > 0 ? o->freqfold : z->c;
    KVF_CHECK(z->F % z->c == 0, KVF_ERR_ARG,
              "convert: --freqfold %d must be a multiple of head_dim/rope_dim = %d/%d = %d (FreqFold "
              "folds that many frequencies into each kept RoPE pair)",
              z->F, z->d, z->m, z->c);
    KVF_CHECK((z->d / 2) % z->F == 0, KVF_ERR_ARG, "convert: --freqfold %d must divide head_dim/2 = %d",
              z->F, z->d / 2);
    z->nr = z->F / z->c;
    z->gs = z->g * z->F;
    z->ngrp = z->d / 2 / z->F;
    z->Lk = z->L - z->m;
    z->W = z->Lk + z->g * z->dv;
    z->R = o->kv_rank;
    KVF_CHECK(z->R >= 1, KVF_ERR_ARG, "convert: --kv-rank is required (1 .. %d for this model)", z->W);
    KVF_CHECK(z->R <= z->W, KVF_ERR_ARG,
              "convert: --kv-rank %d is above the maximum %d for this model (the width of [K_nope, V] "
              "over all KV heads: 2·%d·%d − %d)",
              z->R, z->W, z->g, z->d, z->m);
    z->RQ = o->q_rank;
    KVF_CHECK(z->RQ >= 0 && z->RQ <= z->h * z->d, KVF_ERR_ARG,
              "convert: --q-rank %d is above the maximum %d for this model (query heads × head_dim)",
              z->RQ, z->h * z->d);
    KVF_CHECK(tu->factor != KVF_MLA_FACTOR_SVD, KVF_ERR_ARG,
              "convert: the deepseek route factorises by activation PCA, not weight SVD");
    KVF_CHECK(tu->factor != KVF_MLA_FACTOR_IDENTITY || z->R == z->W, KVF_ERR_ARG,
              "convert: the identity latent needs --kv-rank %d", z->W);
    return KVF_OK;
}

kvf_model *kvf_convert_mla_deepseek_tuned(const kvf_model *src, const kvf_convert_opts *o,
                                          const kvf_calib *calib, const kvf_mla_tuning *tu,
                                          FILE *log) {
    if (kvf_mla_check_source(src, "deepseek") != KVF_OK) return NULL;
    const kvf_model_config *c = &src->cfg;
    struct ds_dims z;
    if (ds_dims_init(c, o, tu, &z) != KVF_OK) return NULL;
    KVF_CHECK_NULL(calib && calib->gram, KVF_ERR_ARG,
                   "convert --to mla --style deepseek needs calibration data (--calib PATH): RoRoPE and the "
                   "joint K/V PCA are computed from activations");
    KVF_CHECK_NULL(calib->n_layers == c->n_layers && calib->d == c->d_model, KVF_ERR_ARG,
                   "convert: the calibration statistics (%d layers, width %lld) do not belong to this model",
                   calib->n_layers, (long long)calib->d);
    /* s = source scale / DeepSeek's (d + m)^-1/2, as the attention kernel applies them (f32) */
    z.scale = (double)(float)c->softmax_scale / (double)(float)(1.0 / sqrt((double)(z.d + z.m)));

    kvf_model_config nc = *c;
    nc.attn = KVF_ATTN_MLA;
    nc.kv_lora_rank = z.R;
    nc.q_lora_rank = z.RQ;
    nc.qk_nope_head_dim = z.d;
    nc.qk_rope_head_dim = z.m;
    nc.v_head_dim = z.dv;
    nc.n_kv_heads = 0;
    nc.rope_layout = KVF_ROPE_INTERLEAVED;
    nc.rope_dim = 0;
    nc.mla_kv_norm = tu->norm != KVF_MLA_NORM_OFF;
    nc.softmax_scale = 0; /* (d + m)^-1/2, compensated in the queries */
    /* as hf_config.c reads DeepSeek: head_dim is unused by MLA, its default must resolve */
    nc.head_dim = c->d_model % c->n_heads ? z.d + z.m : 0;
    kvf_model *dst = kvf_model_init(&nc, src->device);
    if (!dst) return NULL;
    if (log)
        fprintf(log,
                "mla (deepseek): %d heads, %d KV heads of dim %d -> latent %d + shared RoPE key %d "
                "(freqfold %d)%s; KV cache per token per layer %d -> %d\n",
                z.h, z.g, z.d, z.R, z.m, z.F, z.RQ ? ", low-rank queries" : "", z.g * (z.d + z.dv), z.R + z.m);
    kvf_status st = kvf_mla_copy_common(src, dst);
    for (int l = 0; st == KVF_OK && l < c->n_layers; l++) st = ds_layer(src, dst, l, &z, calib, tu, log);
    if (st != KVF_OK) {
        kvf_model_free(dst);
        return NULL;
    }
    return dst;
}

kvf_status kvf_mla_check_opts(const kvf_model_config *c, const kvf_convert_opts *o) {
    kvf_mla_tuning t;
    bool partial = !strcmp(o->style, "partial-rope");
    kvf_mla_tuning_defaults(&t, !partial);
    if (partial) return kvf_mla_partial_check(c, o, &t);
    struct ds_dims z;
    return ds_dims_init(c, o, &t, &z);
}

kvf_model *kvf_convert_mla_deepseek(const kvf_model *src, const kvf_convert_opts *o, const kvf_calib *calib,
                                    FILE *log) {
    kvf_mla_tuning t;
    kvf_mla_tuning_defaults(&t, true);
    return kvf_convert_mla_deepseek_tuned(src, o, calib, &t, log);
}
