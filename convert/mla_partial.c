/* mla_partial.c — MHA/GQA → per-head partial-RoPE MLA (MHA2MLA, notes/conversion-methods.md
 * §2; math and choices in docs/conversions.md "MLA").
 *
 * Per layer, with g KV heads of dim d (v dim dv), D = --rope-dim RoPE dims kept per KV head
 * (all: D = d), R = --kv-rank:
 *   1. Each KV head j keeps D/2 of its d/2 RoPE frequencies, S_j (--rope-select):
 *        norm     largest Σ_{i ∈ group j} ‖q_i,f‖·‖k_j,f‖, the norms being RMS over the
 *                 calibration tokens, ‖q_f‖² = E[q_f,x² + q_f,y²] (from the second moments)
 *        high     f < D/2 (fastest rotations)      low   f ≥ d/2 − D/2
 *        uniform  f = ⌊k·d/D⌋, k < D/2
 *      Query heads inherit their KV head's set.
 *   2. Every head's dims are re-ordered: the kept pairs first in the half layout
 *      [x(S_j) ; y(S_j)] (kvforge's partial form rotates them with the per-KV-head table
 *      rope_freqs = the kept original frequencies), then the other dims [x(rest) ; y(rest)].
 *      q_proj rows move the same way, k_rope_proj takes the kept K rows.
 *   3. Joint SVD of the weights M = [W_k_nope ; W_v] = U Σ Vᵀ (all KV heads): kv_a_proj = the
 *      top-R rows of Vᵀ (orthonormal), kv_b_proj = U Σ restricted to R columns, rows regrouped
 *      per KV head as [k_nope (d − D) ; v (dv)] (MHA2MLA's convention: Σ on the up side).
 *      R at most the width of M, g·(d − D) + g·dv; with D = d and R = g·dv it is exact.
 * Biases: kvforge's partial form has none (and no bias can ride on kv_a/kv_b without one on
 * the latent), so sources with q/k/v biases are refused rather than silently changed. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "linalg.h"
#include "mla_internal.h"

struct pr_dims {
    int Dm, h, g, rep, d, dv, D, R, Wn, W;
    int sel; /* 0 norm, 1 high, 2 low, 3 uniform */
};

static int cmp_int(const void *a, const void *b) {
    return *(const int *)a - *(const int *)b;
}

/* keep[j][0..D/2): the kept frequencies of KV head j, ascending. */
static kvf_status select_freqs(const kvf_model *src, const kvf_calib *calib, int l, const struct pr_dims *z,
                               const double *Wq, const double *Wk, int *keep, FILE *log) {
    int d = z->d, half = d / 2, nk = z->D / 2;
    if (z->sel != 0 || nk == half) {
        for (int j = 0; j < z->g; j++)
            for (int k = 0; k < nk; k++)
                keep[j * nk + k] = nk == half ? k : z->sel == 1 ? k : z->sel == 2 ? half - nk + k : (int)((long)k * d / z->D);
        return KVF_OK;
    }
    double *eq = malloc(sizeof(double) * (size_t)z->h * d), *ek = malloc(sizeof(double) * (size_t)z->g * d);
    double *score = malloc(sizeof(double) * (size_t)half);
    int *idx = malloc(sizeof(int) * (size_t)half);
    kvf_status st = eq && ek && score && idx ? KVF_OK : kvf_error_set(KVF_ERR_OOM, "convert: out of memory");
    if (st == KVF_OK) st = kvf_cv_energies(calib, l, z->h * d, Wq, eq);
    if (st == KVF_OK) st = kvf_cv_energies(calib, l, z->g * d, Wk, ek);
    /* rounding can leave an energy a hair below zero: sqrt of it must not be NaN */
    for (int i = 0; st == KVF_OK && i < z->h * d; i++) eq[i] = eq[i] > 0 ? eq[i] : 0;
    for (int i = 0; st == KVF_OK && i < z->g * d; i++) ek[i] = ek[i] > 0 ? ek[i] : 0;
    double T = calib->tokens > 0 ? (double)calib->tokens : 1.0;
    for (int j = 0; st == KVF_OK && j < z->g; j++) {
        for (int f = 0; f < half; f++) {
            double kn = sqrt((ek[(size_t)j * d + f] + ek[(size_t)j * d + f + half]) / T), s = 0;
            for (int i = j * z->rep; i < (j + 1) * z->rep; i++)
                s += sqrt((eq[(size_t)i * d + f] + eq[(size_t)i * d + f + half]) / T) * kn;
            score[f] = s;
            idx[f] = f;
        }
        /* top nk by score (stable: ties keep the higher frequency, i.e. the smaller f) */
        for (int a = 0; a < nk; a++) {
            int best = a;
            for (int b = a + 1; b < half; b++)
                if (score[idx[b]] > score[idx[best]]) best = b;
            int t = idx[a];
            idx[a] = idx[best];
            idx[best] = t;
        }
        for (int k = 0; k < nk; k++) keep[j * nk + k] = idx[k];
        qsort(keep + j * nk, (size_t)nk, sizeof(int), cmp_int);
    }
    if (st == KVF_OK && log) {
        fprintf(log, "layer %d: kept frequencies per KV head:", l);
        for (int j = 0; j < z->g; j++) {
            fprintf(log, " [");
            for (int k = 0; k < nk; k++) fprintf(log, k ? " %d" : "%d", keep[j * nk + k]);
            fprintf(log, "]");
        }
        fprintf(log, "\n");
    }
    free(eq);
    free(ek);
    free(score);
    free(idx);
    return st;
}

static kvf_status pr_layer(const kvf_model *src, kvf_model *dst, int l, const struct pr_dims *z,
                           const kvf_calib *calib, const kvf_mla_tuning *tu, FILE *log) {
    const struct kvf_layer_weights *Ls = &src->layers[l];
    struct kvf_layer_weights *Ld = &dst->layers[l];
    int Dm = z->Dm, h = z->h, g = z->g, d = z->d, dv = z->dv, D = z->D, R = z->R, W = z->W, half = d / 2,
        nk = D / 2, dn = d - D;
    double *Wq = kvf_cv_tensor_read(Ls->q_w), *Wk = kvf_cv_tensor_read(Ls->k_w), *Wv = kvf_cv_tensor_read(Ls->v_w);
    int *keep = malloc(sizeof(int) * (size_t)(g * nk + 1)), *ord = malloc(sizeof(int) * (size_t)g * d);
    double *q = malloc(sizeof(double) * (size_t)h * d * Dm), *kr = malloc(sizeof(double) * (size_t)(g * D + 1) * Dm);
    double *M = malloc(sizeof(double) * (size_t)W * Dm);
    int k = W < Dm ? W : Dm;
    double *U = malloc(sizeof(double) * (size_t)W * k), *s = malloc(sizeof(double) * (size_t)k);
    double *Vt = malloc(sizeof(double) * (size_t)k * Dm);
    double *kva = calloc((size_t)R * Dm, sizeof(double)), *up = calloc((size_t)W * R, sizeof(double));
    double *kvb = malloc(sizeof(double) * (size_t)g * (dn + dv) * R);
    kvf_status st = Wq && Wk && Wv && keep && ord && q && kr && M && U && s && Vt && kva && up && kvb
                        ? KVF_OK
                        : kvf_error_set(KVF_ERR_OOM, "convert: out of memory (layer %d)", l);
    if (st == KVF_OK) st = select_freqs(src, calib, l, z, Wq, Wk, keep, log);
    if (st != KVF_OK) goto done;
    /* new order of each KV head's dims: [x(kept) ; y(kept) ; x(rest) ; y(rest)] */
    for (int j = 0; j < g; j++) {
        int *o = ord + (size_t)j * d, n = 0;
        char kept[1024] = {0};
        for (int t = 0; t < nk; t++) kept[keep[j * nk + t]] = 1;
        for (int t = 0; t < nk; t++) o[n++] = keep[j * nk + t];
        for (int t = 0; t < nk; t++) o[n++] = keep[j * nk + t] + half;
        for (int f = 0; f < half; f++)
            if (!kept[f]) o[n++] = f;
        for (int f = 0; f < half; f++)
            if (!kept[f]) o[n++] = f + half;
    }
    for (int i = 0; i < h; i++) {
        const int *o = ord + (size_t)(i / z->rep) * d;
        for (int e = 0; e < d; e++)
            memcpy(q + (size_t)(i * d + e) * Dm, Wq + (size_t)(i * d + o[e]) * Dm, sizeof(double) * Dm);
    }
    for (int j = 0; j < g; j++) {
        const int *o = ord + (size_t)j * d;
        for (int e = 0; e < D; e++)
            memcpy(kr + (size_t)(j * D + e) * Dm, Wk + (size_t)(j * d + o[e]) * Dm, sizeof(double) * Dm);
        for (int e = 0; e < dn; e++)
            memcpy(M + (size_t)(j * dn + e) * Dm, Wk + (size_t)(j * d + o[D + e]) * Dm, sizeof(double) * Dm);
    }
    memcpy(M + (size_t)z->Wn * Dm, Wv, sizeof(double) * (size_t)g * dv * Dm);
    /* the factorisation M ≈ up · kva */
    double kept_e = 0, tot_e = 0;
    if (tu->factor == KVF_MLA_FACTOR_IDENTITY) {
        memcpy(kva, M, sizeof(double) * (size_t)W * Dm);
        for (int r = 0; r < W; r++) up[(size_t)r * R + r] = 1.0;
        kept_e = tot_e = 1;
    } else {
        if ((st = kvf_svd(W, Dm, M, U, s, Vt)) != KVF_OK) goto done;
        for (int r = 0; r < k; r++) {
            tot_e += s[r] * s[r];
            if (r >= R) continue;
            kept_e += s[r] * s[r];
            memcpy(kva + (size_t)r * Dm, Vt + (size_t)r * Dm, sizeof(double) * Dm);
            for (int n = 0; n < W; n++) up[(size_t)n * R + r] = U[(size_t)n * k + r] * s[r];
        }
    }
    /* kv_b rows per KV head: [k_nope of head j ; v of head j] */
    for (int j = 0; j < g; j++) {
        double *b = kvb + (size_t)j * (dn + dv) * R;
        memcpy(b, up + (size_t)j * dn * R, sizeof(double) * (size_t)dn * R);
        memcpy(b + (size_t)dn * R, up + (size_t)(z->Wn + j * dv) * R, sizeof(double) * (size_t)dv * R);
    }
    if ((st = kvf_cv_tensor_write(Ld->q_w, q)) != KVF_OK || (D && (st = kvf_cv_tensor_write(Ld->k_rope_w, kr)) != KVF_OK) ||
        (st = kvf_cv_tensor_write(Ld->kv_a_w, kva)) != KVF_OK || (st = kvf_cv_tensor_write(Ld->kv_b_w, kvb)) != KVF_OK)
        goto done;
    if (D) {
        kvf_tensor *fr = Ld->rope_freqs;
        for (int j = 0; j < g; j++)
            for (int t = 0; t < nk; t++)
                kvf_tensor_set(fr, (int64_t[]){j, t}, kvf_tensor_get_flat(src->rope_inv_freq, keep[j * nk + t]));
    }
    if (log)
        fprintf(log, "layer %d: joint SVD of [W_k_nope; W_v] (%d × %d) keeps %.2f%% of the squared singular values at rank %d\n",
                l, W, Dm, tot_e > 0 ? 100.0 * kept_e / tot_e : 100.0, R);
done:
    free(Wq);
    free(Wk);
    free(Wv);
    free(keep);
    free(ord);
    free(q);
    free(kr);
    free(M);
    free(U);
    free(s);
    free(Vt);
    free(kva);
    free(up);
    free(kvb);
    return st;
}

/* The route's dimensions from the source config and the options, with every check that needs
 * no weights (so the driver can refuse before loading anything). */
static kvf_status pr_dims_init(const kvf_model_config *c, const kvf_convert_opts *o, const kvf_mla_tuning *tu,
                               struct pr_dims *z) {
    KVF_TRY(kvf_mla_check_config(c, "partial-rope"));
    memset(z, 0, sizeof *z);
    z->Dm = (int)c->d_model;
    z->h = c->n_q_heads;
    z->g = c->n_kv_heads;
    z->rep = z->h / z->g;
    z->d = c->head_dim;
    z->dv = c->v_head_dim;
    KVF_CHECK(z->d / 2 <= 1024, KVF_ERR_UNSUPPORTED, "convert: head_dim %d is too large", z->d);
    z->D = o->rope_dim == -1 ? z->d : o->rope_dim;
    KVF_CHECK(z->D >= 0 && z->D % 2 == 0 && z->D <= z->d, KVF_ERR_ARG,
              "convert: --rope-dim %d does not work with --style partial-rope: it is the RoPE dims kept "
              "per KV head and must be even and at most head_dim %d (or 'all')",
              z->D, z->d);
    const char *rs = o->rope_select[0] ? o->rope_select : "norm";
    if (!strcmp(rs, "norm")) z->sel = 0;
    else if (!strcmp(rs, "high")) z->sel = 1;
    else if (!strcmp(rs, "low")) z->sel = 2;
    else if (!strcmp(rs, "uniform")) z->sel = 3;
    else {
        return kvf_error_set(KVF_ERR_ARG, "convert: --rope-select %s: expected norm, high, low or uniform", rs);
    }
    z->Wn = z->g * (z->d - z->D);
    z->W = z->Wn + z->g * z->dv;
    z->R = o->kv_rank;
    KVF_CHECK(z->R >= 1, KVF_ERR_ARG, "convert: --kv-rank is required (1 .. %d for this model at --rope-dim %d)",
              z->W, z->D);
    KVF_CHECK(z->R <= z->W, KVF_ERR_ARG,
              "convert: --kv-rank %d is above the maximum %d for this model at --rope-dim %d (the width of "
              "[K_nope, V] over all KV heads: %d·(%d − %d) + %d·%d)",
              z->R, z->W, z->D, z->g, z->d, z->D, z->g, z->dv);
    KVF_CHECK(tu->factor != KVF_MLA_FACTOR_IDENTITY || z->R == z->W, KVF_ERR_ARG,
              "convert: the identity latent needs --kv-rank %d", z->W);
    KVF_CHECK(tu->factor != KVF_MLA_FACTOR_PCA, KVF_ERR_ARG,
              "convert: the partial-rope route factorises the weights by SVD");
    return KVF_OK;
}

kvf_status kvf_mla_partial_check(const kvf_model_config *c, const kvf_convert_opts *o, const kvf_mla_tuning *tu) {
    struct pr_dims z;
    return pr_dims_init(c, o, tu, &z);
}

kvf_model *kvf_convert_mla_partial_tuned(const kvf_model *src, const kvf_convert_opts *o,
                                         const kvf_calib *calib, const kvf_mla_tuning *tu, FILE *log) {
    if (kvf_mla_check_source(src, "partial-rope") != KVF_OK) return NULL;
    const kvf_model_config *c = &src->cfg;
    struct pr_dims z;
    if (pr_dims_init(c, o, tu, &z) != KVF_OK) return NULL;
    bool need_calib = z.sel == 0 && z.D > 0 && z.D < z.d;
    KVF_CHECK_NULL(!need_calib || (calib && calib->gram), KVF_ERR_ARG,
                   "convert: --rope-select norm needs calibration data (--calib PATH) to rank the "
                   "frequencies; or choose --rope-select high|low|uniform");
    KVF_CHECK_NULL(!need_calib || (calib->n_layers == c->n_layers && calib->d == c->d_model), KVF_ERR_ARG,
                   "convert: the calibration statistics (%d layers, width %lld) do not belong to this model",
                   calib->n_layers, (long long)calib->d);

    kvf_model_config nc = *c;
    nc.attn = KVF_ATTN_MLA_PARTIAL_ROPE;
    nc.partial_rope_dim = z.D;
    nc.kv_lora_rank = z.R;
    nc.qkv_bias = false;
    kvf_model *dst = kvf_model_init(&nc, src->device);
    if (!dst) return NULL;
    if (log)
        fprintf(log,
                "mla (partial-rope): %d KV heads of dim %d keep %d RoPE dims each (%s) + latent %d; KV cache "
                "per token per layer %d -> %d\n",
                z.g, z.d, z.D, (const char *[]){"norm", "high", "low", "uniform"}[z.sel], z.R, z.g * (z.d + z.dv), z.R + z.g * z.D);
    kvf_status st = kvf_mla_copy_common(src, dst);
    for (int l = 0; st == KVF_OK && l < c->n_layers; l++) st = pr_layer(src, dst, l, &z, calib, tu, log);
    if (st != KVF_OK) {
        kvf_model_free(dst);
        return NULL;
    }
    return dst;
}

kvf_model *kvf_convert_mla_partial(const kvf_model *src, const kvf_convert_opts *o, const kvf_calib *calib,
                                   FILE *log) {
    kvf_mla_tuning t;
    kvf_mla_tuning_defaults(&t, false);
    return kvf_convert_mla_partial_tuned(src, o, calib, &t, log);
}
