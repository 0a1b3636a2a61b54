/* cla.c — cross-layer KV sharing (CLA): producers every K layers or an explicit list; every
 * other layer reuses the K/V of the nearest producer at or before it and drops its own K/V
 * projections (kv_source[]). Methods for the producer's new K/V projection:
 *   producer  the producer keeps its own (Brandon et al.; dolomite-engine's conversion)
 *   mean      the mean over the group's layers of their K/V projections (weights, biases)
 *   calib     least squares on calibration data: W_new minimises Σ_l w ‖W_new x_p − W_l x_l‖²
 *             over the group's layers, each with its own input x_l — exact normal equations
 *             from cross-layer moments X_lp = Σ x_l x_pᵀ (kvf_calib_collect_cross), rows
 *             weighted by what the error costs (query energy per RoPE pair for keys, o_proj
 *             column norms for values); then each layer's queries / o_proj absorb a per-head
 *             correction fitted on the same moments (complex scalar per RoPE frequency for
 *             keys, a v_head_dim² map for values), which commutes with RoPE and the softmax.
 * A source that already shares K/V is fine when every new producer is a source producer and
 * the source's groups stay inside the new ones. Math: docs/conversions.md. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "convert_impl.h"
#include "linalg.h"

struct group_src { /* one source producer inside a new group */
    int layer;
    int n_layers; /* group layers that read it in the source */
};

/* [W | b] as rows × da (da = d + 1 with bias, else d) */
static double *augment(const double *W, const double *b, int rows, int64_t d, int64_t da) {
    double *A = malloc(sizeof(double) * (size_t)rows * (size_t)da);
    if (!A) return NULL;
    for (int r = 0; r < rows; r++) {
        memcpy(A + (size_t)r * da, W + (size_t)r * d, sizeof(double) * (size_t)d);
        if (da > d) A[(size_t)r * da + d] = b ? b[r] : 0.0;
    }
    return A;
}

/* The da×da block of a (d+1)×(d+1) moment (leading d×d when there is no bias). */
static void block(const double *X, int64_t d, int64_t da, double *out) {
    for (int64_t i = 0; i < da; i++)
        for (int64_t j = 0; j < da; j++) out[i * da + j] = X[i * (d + 1) + j];
}

struct proj { /* one projection (k or v) of the group being fitted */
    const char *wname, *bname;
    int rows, rph; /* rows, rows per head */
    bool is_key;
};

/* ---- calib --------------------------------------------------------------------------------- */


struct cal {
    const kvf_model_config *c;
    int64_t d, da;
    int nkv, rph[2], rows[2], nl, ns, p, L0;
    int jl[KVF_MAX_LAYERS];         /* layer L0+i reads source producer jl[i] */
    double *Gp;                     /* da×da */
    double *X[KVF_MAX_LAYERS];      /* per source producer: X_sp (G_p for p itself) */
    double *Gs[KVF_MAX_LAYERS];     /* per source producer: G_s */
    double *A[2][KVF_MAX_LAYERS];   /* per source producer: [W | b] */
    double *AX[2][KVF_MAX_LAYERS];  /* A_s X_sp (rows × da) */
    double *D[2][KVF_MAX_LAYERS];   /* per layer: row weights */
    double *S[2][KVF_MAX_LAYERS];   /* per layer: per-head corrections, nkv × rph × rph */
    double *Anew[2];
};

/* A_new's rows of one projection given the corrections S: per head h,
 * (Σ_l S_lhᵀ D_lh S_lh) W_h G_p = Σ_l S_lhᵀ D_lh (A_s X_sp)_h. */
static kvf_status refit(struct cal *k, int t) {
    int rph = k->rph[t], da = (int)k->da, nkv = k->nkv;
    size_t rows = (size_t)nkv * rph;
    /* every head's right-hand side first, so that G_p (da×da) is factorised once, not per head */
    double *lhs = calloc((size_t)nkv * rph * rph, sizeof(double)), *rhs = calloc(rows * da, sizeof(double)),
           *Y = malloc(sizeof(double) * rows * da), *YT = malloc(sizeof(double) * (size_t)rph * da),
           *WT = malloc(sizeof(double) * (size_t)rph * da);
    kvf_status s = lhs && rhs && Y && YT && WT ? KVF_OK : kvf_error_set(KVF_ERR_OOM, "cla calib: out of memory");
    for (int h = 0; s == KVF_OK && h < nkv; h++) {
        double *lh = lhs + (size_t)h * rph * rph, *rh = rhs + (size_t)h * rph * da;
        for (int i = 0; i < k->nl; i++) {
            const double *S = k->S[t][i] + (size_t)h * rph * rph, *Dw = k->D[t][i] + (size_t)h * rph,
                         *AX = k->AX[t][k->jl[i]] + (size_t)h * rph * da;
            for (int a = 0; a < rph; a++)
                for (int b = 0; b < rph; b++) {
                    double acc = 0;
                    for (int r = 0; r < rph; r++) acc += S[(size_t)r * rph + a] * Dw[r] * S[(size_t)r * rph + b];
                    lh[(size_t)a * rph + b] += acc;
                }
            for (int a = 0; a < rph; a++)
                for (int r = 0; r < rph; r++) {
                    double f = S[(size_t)r * rph + a] * Dw[r];
                    if (f == 0) continue;
                    for (int e = 0; e < da; e++) rh[(size_t)a * da + e] += f * AX[(size_t)r * da + e];
                }
        }
    }
    if (s == KVF_OK) s = kvf_cv_solve_right((int)rows, da, rhs, k->Gp, Y); /* Y = rhs G_p⁻¹ */
    for (int h = 0; s == KVF_OK && h < nkv; h++) {
        const double *Yh = Y + (size_t)h * rph * da;
        for (int a = 0; a < rph; a++) /* W_h = lhs⁻¹ Y  ⇔  W_hᵀ = Yᵀ lhs⁻¹ */
            for (int e = 0; e < da; e++) YT[(size_t)e * rph + a] = Yh[(size_t)a * da + e];
        s = kvf_cv_solve_right(da, rph, YT, lhs + (size_t)h * rph * rph, WT);
        for (int a = 0; s == KVF_OK && a < rph; a++)
            for (int e = 0; e < da; e++) k->Anew[t][((size_t)h * rph + a) * da + e] = WT[(size_t)e * rph + a];
    }
    free(lhs);
    free(rhs);
    free(Y);
    free(YT);
    free(WT);
    return s;
}

/* Layer i's corrections for projection t from P = A_s X_sp A_newᵀ and N = A_new G_p A_newᵀ:
 * keys a complex scalar per head and RoPE pair (commutes with RoPE) and a dense map on the
 * dims RoPE leaves alone; values a dense map per head. err/den accumulate the relative error. */
static kvf_status correct(struct cal *k, int t, int i, double *err, double *den) {
    const kvf_model_config *c = k->c;
    int rows = k->rows[t], rph = k->rph[t], da = (int)k->da, j = k->jl[i];
    int F = t == 0 ? kvf_cv_rope_pairs(c) : 0, nr = rph - 2 * F;
    double *T1 = malloc(sizeof(double) * (size_t)rows * da), *P = malloc(sizeof(double) * (size_t)rows * rows),
           *N = malloc(sizeof(double) * (size_t)rows * rows), *K = malloc(sizeof(double) * (size_t)rows * rows),
           *Pn = malloc(sizeof(double) * (size_t)nr * nr + 1), *Nn = malloc(sizeof(double) * (size_t)nr * nr + 1),
           *Tm = malloc(sizeof(double) * (size_t)nr * nr + 1);
    kvf_status s = T1 && P && N && K && Pn && Nn && Tm ? KVF_OK : kvf_error_set(KVF_ERR_OOM, "cla calib: out of memory");
    if (s == KVF_OK) {
        kvf_dgemm(false, true, rows, rows, da, k->AX[t][j], k->Anew[t], P);
        kvf_dgemm(false, false, rows, da, da, k->Anew[t], k->Gp, T1);
        kvf_dgemm(false, true, rows, rows, da, T1, k->Anew[t], N);
        kvf_dgemm(false, false, rows, da, da, k->A[t][j], k->Gs[j], T1);
        kvf_dgemm(false, true, rows, rows, da, T1, k->A[t][j], K);
    }
    for (int h = 0; s == KVF_OK && h < k->nkv; h++) {
        double *S = k->S[t][i] + (size_t)h * rph * rph;
        memset(S, 0, sizeof(double) * (size_t)rph * rph);
        size_t o = (size_t)h * rph;
        for (int f = 0; f < F; f++) {
            int a, b;
            kvf_cv_rope_pair(c, f, &a, &b);
            size_t ra = o + a, rb = o + b;
            double dn = N[ra * rows + ra] + N[rb * rows + rb], cr = 1, ci = 0;
            if (dn > 0) {
                cr = (P[ra * rows + ra] + P[rb * rows + rb]) / dn;
                ci = (P[rb * rows + ra] - P[ra * rows + rb]) / dn;
            }
            /* target ≈ c·new: [x; y] ≈ [[cr, −ci], [ci, cr]] [x'; y'] */
            S[(size_t)a * rph + a] = cr;
            S[(size_t)a * rph + b] = -ci;
            S[(size_t)b * rph + a] = ci;
            S[(size_t)b * rph + b] = cr;
        }
        if (nr > 0) {
            for (int x = 0; x < nr; x++)
                for (int y = 0; y < nr; y++) {
                    size_t rx = o + 2 * F + x, ry = o + 2 * F + y;
                    Pn[(size_t)x * nr + y] = P[rx * rows + ry];
                    Nn[(size_t)x * nr + y] = N[rx * rows + ry];
                }
            s = kvf_cv_solve_right(nr, nr, Pn, Nn, Tm);
            for (int x = 0; s == KVF_OK && x < nr; x++)
                for (int y = 0; y < nr; y++) S[(size_t)(2 * F + x) * rph + (2 * F + y)] = Tm[(size_t)x * nr + y];
        }
        /* E‖y_s − S y'‖² = tr K − 2 tr(S Pᵀ) + tr(S N Sᵀ) over the head's rows */
        for (int a = 0; s == KVF_OK && a < rph; a++) {
            double e = K[(o + a) * rows + o + a];
            for (int b = 0; b < rph; b++) {
                e -= 2 * S[(size_t)a * rph + b] * P[(o + a) * rows + o + b];
                for (int q = 0; q < rph; q++)
                    e += S[(size_t)a * rph + b] * N[(o + b) * rows + o + q] * S[(size_t)a * rph + q];
            }
            *err += e;
            *den += K[(o + a) * rows + o + a];
        }
    }
    free(T1);
    free(P);
    free(N);
    free(K);
    free(Pn);
    free(Nn);
    free(Tm);
    return s;
}

static kvf_status calib_group(const kvf_model *src, kvf_model *m, const kvf_model_config *c, int p, int end,
                              const struct group_src *gs, int ns, const kvf_calib *calib,
                              const struct kvf_cv_cla_tuning *tu,
                              double *W[2][KVF_MAX_LAYERS], double *Bv[2][KVF_MAX_LAYERS], char *report,
                              size_t report_len) {
    struct cal k;
    memset(&k, 0, sizeof k);
    k.c = c;
    k.d = c->d_model;
    k.da = c->qkv_bias ? k.d + 1 : k.d;
    k.nkv = c->n_kv_heads;
    k.rph[0] = c->head_dim;
    k.rph[1] = c->v_head_dim;
    k.rows[0] = k.nkv * c->head_dim;
    k.rows[1] = k.nkv * c->v_head_dim;
    k.nl = end - p;
    k.ns = ns;
    k.p = p;
    k.L0 = p;
    int64_t d = k.d, da = k.da;
    int nq = c->n_q_heads, hd = c->head_dim, vd = c->v_head_dim, rep = nq / k.nkv, F = kvf_cv_rope_pairs(c);
    int64_t ocols = (int64_t)nq * vd;
    char name[160];
    double *wq[KVF_MAX_LAYERS] = {0}, *bq[KVF_MAX_LAYERS] = {0}, *wo[KVF_MAX_LAYERS] = {0};
    double *Q = malloc(sizeof(double) * (size_t)hd * hd);
    k.Gp = malloc(sizeof(double) * (size_t)(da * da));
    kvf_status s = Q && k.Gp ? KVF_OK : kvf_error_set(KVF_ERR_OOM, "cla calib: out of memory");
    if (s == KVF_OK) block(kvf_calib_gram(calib, p), d, da, k.Gp);
    for (int j = 0; s == KVF_OK && j < ns; j++) {
        k.X[j] = malloc(sizeof(double) * (size_t)(da * da));
        k.Gs[j] = malloc(sizeof(double) * (size_t)(da * da));
        if (!k.X[j] || !k.Gs[j]) {
            s = kvf_error_set(KVF_ERR_OOM, "cla calib: out of memory");
            break;
        }
        block(gs[j].layer == p ? kvf_calib_gram(calib, p) : kvf_calib_cross(calib, gs[j].layer), d, da, k.X[j]);
        block(kvf_calib_gram(calib, gs[j].layer), d, da, k.Gs[j]);
        for (int t = 0; s == KVF_OK && t < 2; t++) {
            k.A[t][j] = augment(W[t][j], Bv[t][j], k.rows[t], d, da);
            k.AX[t][j] = malloc(sizeof(double) * (size_t)k.rows[t] * (size_t)da);
            if (!k.A[t][j] || !k.AX[t][j]) s = kvf_error_set(KVF_ERR_OOM, "cla calib: out of memory");
            else kvf_dgemm(false, false, k.rows[t], (int)da, (int)da, k.A[t][j], k.X[j], k.AX[t][j]);
        }
    }
    /* each layer's queries / outputs, and its row weights: query energy per RoPE pair (keys),
     * o_proj column norms (values) */
    for (int i = 0; s == KVF_OK && i < k.nl; i++) {
        int l = p + i;
        while (k.jl[i] < ns && gs[k.jl[i]].layer != c->kv_source[l]) k.jl[i]++;
        wq[i] = kvf_cv_read(src, kvf_cv_name(name, sizeof name, l, "q_proj.weight"), NULL);
        wo[i] = wq[i] ? kvf_cv_read(src, kvf_cv_name(name, sizeof name, l, "o_proj.weight"), NULL) : NULL;
        if (c->qkv_bias) bq[i] = kvf_cv_read_opt(src, kvf_cv_name(name, sizeof name, l, "q_proj.bias"));
        if (!wq[i] || !wo[i]) {
            s = kvf_error_code();
            break;
        }
        for (int t = 0; t < 2; t++) {
            k.D[t][i] = calloc((size_t)k.rows[t], sizeof(double));
            k.S[t][i] = calloc((size_t)k.nkv * k.rph[t] * k.rph[t], sizeof(double));
            if (!k.D[t][i] || !k.S[t][i]) s = kvf_error_set(KVF_ERR_OOM, "cla calib: out of memory");
        }
        for (int q = 0; s == KVF_OK && q < nq; q++) {
            int h = q / rep;
            if (!tu->weighted) {
                for (int r = 0; r < hd; r++) k.D[0][i][h * hd + r] = 1;
                for (int r = 0; r < vd; r++) k.D[1][i][h * vd + r] = 1;
                continue;
            }
            s = kvf_calib_project(calib, l, hd, wq[i] + (size_t)q * hd * d, bq[i] ? bq[i] + (size_t)q * hd : NULL, Q);
            for (int f = 0; f < F; f++) {
                int a, b;
                kvf_cv_rope_pair(c, f, &a, &b);
                double e = Q[(size_t)a * hd + a] + Q[(size_t)b * hd + b];
                k.D[0][i][h * hd + a] += e;
                k.D[0][i][h * hd + b] += e;
            }
            for (int x = 2 * F; x < hd; x++) k.D[0][i][h * hd + x] += Q[(size_t)x * hd + x];
            for (int64_t r = 0; r < d; r++) {
                const double *row = wo[i] + (size_t)r * ocols + (size_t)q * vd;
                for (int x = 0; x < vd; x++) k.D[1][i][h * vd + x] += row[x] * row[x];
            }
        }
    }
    /* initial fit: the plain least squares (S = I), or the producer's own projection */
    double err[2] = {0}, den[2] = {0};
    int jp = 0;
    while (jp < ns && gs[jp].layer != p) jp++;
    for (int t = 0; s == KVF_OK && t < 2; t++) {
        k.Anew[t] = malloc(sizeof(double) * (size_t)k.rows[t] * (size_t)da);
        if (!k.Anew[t]) {
            s = kvf_error_set(KVF_ERR_OOM, "cla calib: out of memory");
            break;
        }
        if (tu->init_producer) {
            memcpy(k.Anew[t], k.A[t][jp], sizeof(double) * (size_t)k.rows[t] * (size_t)da);
        } else {
            for (int i = 0; i < k.nl; i++)
                for (int h = 0; h < k.nkv; h++)
                    for (int a = 0; a < k.rph[t]; a++) k.S[t][i][((size_t)h * k.rph[t] + a) * k.rph[t] + a] = 1;
            s = refit(&k, t);
        }
        /* alternate: corrections given A_new, A_new given the corrections */
        for (int it = 0; s == KVF_OK; it++) {
            err[t] = den[t] = 0;
            for (int i = 0; s == KVF_OK && i < k.nl; i++) s = correct(&k, t, i, &err[t], &den[t]);
            if (s != KVF_OK || it >= tu->iters) break;
            s = refit(&k, t);
        }
    }
    /* fold the corrections: keys q_i ← S_hᵀ q_i, values W_o^(i) ← W_o^(i) S_h */
    double *tmp = malloc(sizeof(double) * (size_t)hd * (size_t)(d > vd ? d : vd));
    if (s == KVF_OK && !tmp) s = kvf_error_set(KVF_ERR_OOM, "cla calib: out of memory");
    for (int i = 0; s == KVF_OK && i < k.nl; i++) {
        for (int q = 0; q < nq; q++) {
            const double *Sk = k.S[0][i] + (size_t)(q / rep) * hd * hd, *Sv = k.S[1][i] + (size_t)(q / rep) * vd * vd;
            double *qw = wq[i] + (size_t)q * hd * d;
            memset(tmp, 0, sizeof(double) * (size_t)hd * d);
            for (int a = 0; a < hd; a++)
                for (int r = 0; r < hd; r++) {
                    double f = Sk[(size_t)r * hd + a];
                    if (f == 0) continue;
                    for (int64_t e = 0; e < d; e++) tmp[(size_t)a * d + e] += f * qw[(size_t)r * d + e];
                }
            memcpy(qw, tmp, sizeof(double) * (size_t)hd * d);
            if (bq[i]) {
                double *bb = bq[i] + (size_t)q * hd;
                for (int a = 0; a < hd; a++) {
                    tmp[a] = 0;
                    for (int r = 0; r < hd; r++) tmp[a] += Sk[(size_t)r * hd + a] * bb[r];
                }
                memcpy(bb, tmp, sizeof(double) * (size_t)hd);
            }
            for (int64_t r = 0; r < d; r++) {
                double *row = wo[i] + (size_t)r * ocols + (size_t)q * vd;
                for (int y = 0; y < vd; y++) {
                    double acc = 0;
                    for (int x = 0; x < vd; x++) acc += row[x] * Sv[(size_t)x * vd + y];
                    tmp[y] = acc;
                }
                memcpy(row, tmp, sizeof(double) * (size_t)vd);
            }
        }
        int l = p + i;
        s = kvf_cv_write(m, kvf_cv_name(name, sizeof name, l, "q_proj.weight"), wq[i]);
        if (s == KVF_OK && bq[i]) s = kvf_cv_write(m, kvf_cv_name(name, sizeof name, l, "q_proj.bias"), bq[i]);
        if (s == KVF_OK) s = kvf_cv_write(m, kvf_cv_name(name, sizeof name, l, "o_proj.weight"), wo[i]);
    }
    static const char *const wn[2] = {"k_proj.weight", "v_proj.weight"}, *const bn[2] = {"k_proj.bias", "v_proj.bias"};
    for (int t = 0; s == KVF_OK && t < 2; t++) {
        int rows = k.rows[t];
        double *w = malloc(sizeof(double) * (size_t)rows * (size_t)d), *b = malloc(sizeof(double) * (size_t)rows);
        if (!w || !b) s = kvf_error_set(KVF_ERR_OOM, "cla calib: out of memory");
        for (int r = 0; s == KVF_OK && r < rows; r++) {
            memcpy(w + (size_t)r * d, k.Anew[t] + (size_t)r * da, sizeof(double) * (size_t)d);
            b[r] = da > d ? k.Anew[t][(size_t)r * da + d] : 0;
        }
        if (s == KVF_OK) s = kvf_cv_write(m, kvf_cv_name(name, sizeof name, p, wn[t]), w);
        if (s == KVF_OK && c->qkv_bias) s = kvf_cv_write(m, kvf_cv_name(name, sizeof name, p, bn[t]), b);
        free(w);
        free(b);
    }
    if (s == KVF_OK)
        snprintf(report, report_len,
                 "%s%s fit to %d layers + per-layer corrections: relative error keys %.3f, values %.3f",
                 tu->init_producer ? "producer's own K/V" : "least-squares", tu->iters ? " (alternating)" : "", k.nl, den[0] > 0 ? sqrt(fmax(err[0], 0) / den[0]) : 0, den[1] > 0 ? sqrt(fmax(err[1], 0) / den[1]) : 0);
    free(tmp);
    free(Q);
    free(k.Gp);
    for (int i = 0; i < k.nl; i++) {
        free(wq[i]);
        free(bq[i]);
        free(wo[i]);
        for (int t = 0; t < 2; t++) {
            free(k.D[t][i]);
            free(k.S[t][i]);
        }
    }
    for (int j = 0; j < ns; j++) {
        free(k.X[j]);
        free(k.Gs[j]);
        for (int t = 0; t < 2; t++) {
            free(k.A[t][j]);
            free(k.AX[t][j]);
        }
    }
    free(k.Anew[0]);
    free(k.Anew[1]);
    return s;
}

void kvf_cv_cla_tuning_defaults(struct kvf_cv_cla_tuning *t) {
    t->init_producer = true;
    t->iters = 0;
    t->weighted = true;
}

kvf_model *kvf_convert_cla(const kvf_model *src, const kvf_convert_opts *o, const kvf_calib *calib,
                           FILE *log) {
    struct kvf_cv_cla_tuning t;
    kvf_cv_cla_tuning_defaults(&t);
    return kvf_cv_cla_tuned(src, o, calib, &t, log);
}

kvf_model *kvf_cv_cla_tuned(const kvf_model *src, const kvf_convert_opts *o, const kvf_calib *calib,
                            const struct kvf_cv_cla_tuning *tu, FILE *log) {
    KVF_CHECK_NULL(src && o, KVF_ERR_ARG, "kvf_convert_cla: NULL argument");
    const kvf_model_config *c = &src->cfg;
    int P[KVF_MAX_LAYERS], np = 0, ksrc[KVF_MAX_LAYERS];
    if (kvf_cv_cla_producers(c, o, P, &np) != KVF_OK || kvf_cv_cla_sources(c, P, np, ksrc) != KVF_OK) return NULL;
    const char *method = o->method[0] ? o->method : "producer";
    bool use_calib = !strcmp(method, "calib"), use_mean = !strcmp(method, "mean");
    if (use_calib) {
        KVF_CHECK_NULL(calib && calib->gram, KVF_ERR_ARG, "--method calib needs calibration statistics (--calib PATH)");
        KVF_CHECK_NULL(calib->n_layers == c->n_layers && calib->d == c->d_model, KVF_ERR_ARG,
                       "cla calib: the calibration statistics (%d layers, d %lld) are not of this model (%d layers, "
                       "d %lld)",
                       calib->n_layers, (long long)calib->d, c->n_layers, (long long)c->d_model);
        for (int l = 0; l < c->n_layers; l++) {
            int s = c->kv_source[l];
            if (s == l && ksrc[l] != l)
                KVF_CHECK_NULL(kvf_calib_cross(calib, l) && calib->partner[l] == ksrc[l], KVF_ERR_ARG,
                               "cla calib: no cross-layer moments of layer %d with its new producer %d "
                               "(collect them with kvf_calib_collect_cross)",
                               l, ksrc[l]);
        }
    }
    kvf_model_config cfg = *c;
    memcpy(cfg.kv_source, ksrc, sizeof ksrc);
    kvf_model *m = kvf_cv_derive(src, &cfg);
    if (!m) return NULL;
    int64_t d = c->d_model;
    int hd = c->head_dim, vd = c->v_head_dim, nkv = c->n_kv_heads;
    struct proj projs[2] = {{"k_proj.weight", "k_proj.bias", nkv * hd, hd, true},
                            {"v_proj.weight", "v_proj.bias", nkv * vd, vd, false}};
    char name[160];
    kvf_status s = KVF_OK;
    for (int k = 0; s == KVF_OK && k < np; k++) {
        int p = P[k], end = k + 1 < np ? P[k + 1] : c->n_layers;
        struct group_src gs[KVF_MAX_LAYERS];
        int ns = 0;
        for (int l = p; l < end; l++) {
            int sl = c->kv_source[l], j = 0;
            while (j < ns && gs[j].layer != sl) j++;
            if (j == ns) gs[ns++] = (struct group_src){sl, 0};
            gs[j].n_layers++;
        }
        if (ns == 1 || (!use_mean && !use_calib)) {
            if (log)
                fprintf(log, "layers %d-%d: producer %d keeps its K/V%s\n", p, end - 1, p,
                        ns == 1 ? "" : " (producer method)");
            continue;
        }
        /* weights and biases of every source producer in the group */
        double *W[2][KVF_MAX_LAYERS] = {{0}}, *Bv[2][KVF_MAX_LAYERS] = {{0}};
        for (int j = 0; s == KVF_OK && j < ns; j++)
            for (int t = 0; s == KVF_OK && t < 2; t++) {
                W[t][j] = kvf_cv_read(src, kvf_cv_name(name, sizeof name, gs[j].layer, projs[t].wname), NULL);
                if (!W[t][j]) s = kvf_error_code();
                if (c->qkv_bias) {
                    Bv[t][j] = kvf_cv_read(src, kvf_cv_name(name, sizeof name, gs[j].layer, projs[t].bname), NULL);
                    if (!Bv[t][j]) s = kvf_error_code();
                }
            }
        char report[200] = "";
        if (s == KVF_OK && use_mean) {
            int total = 0;
            for (int j = 0; j < ns; j++) total += gs[j].n_layers;
            for (int t = 0; s == KVF_OK && t < 2; t++) {
                size_t nw = (size_t)projs[t].rows * (size_t)d;
                double *wn = calloc(nw, sizeof(double)), *bn = calloc((size_t)projs[t].rows, sizeof(double));
                if (!wn || !bn) s = kvf_error_set(KVF_ERR_OOM, "cla: out of memory");
                for (int j = 0; s == KVF_OK && j < ns; j++) {
                    double f = (double)gs[j].n_layers / total;
                    for (size_t e = 0; e < nw; e++) wn[e] += f * W[t][j][e];
                    if (c->qkv_bias)
                        for (int r = 0; r < projs[t].rows; r++) bn[r] += f * Bv[t][j][r];
                }
                if (s == KVF_OK) s = kvf_cv_write(m, kvf_cv_name(name, sizeof name, p, projs[t].wname), wn);
                if (s == KVF_OK && c->qkv_bias) s = kvf_cv_write(m, kvf_cv_name(name, sizeof name, p, projs[t].bname), bn);
                free(wn);
                free(bn);
            }
            snprintf(report, sizeof report, "mean of %d layers' K/V", total);
        } else if (s == KVF_OK) {
            s = calib_group(src, m, c, p, end, gs, ns, calib, tu, W, Bv, report, sizeof report);
        }
        for (int j = 0; j < ns; j++)
            for (int t = 0; t < 2; t++) {
                free(W[t][j]);
                free(Bv[t][j]);
            }
        if (s == KVF_OK && log) fprintf(log, "layers %d-%d: producer %d (%s): %s\n", p, end - 1, p, method, report);
    }
    if (s != KVF_OK) {
        kvf_model_free(m);
        return NULL;
    }
    return m;
}
