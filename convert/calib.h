/* calib.h — calibration statistics for data-driven conversions. kvf_calib_collect runs the
 * source model over calibration text (no gradients) and accumulates, for every layer, the
 * second moment of its attention input augmented with a constant 1:
 *     G = Σ_t [x_t; 1][x_t; 1]ᵀ   ((d+1)×(d+1), double; G[d][d] = token count)
 * Every quadratic statistic of a linear projection y = W x + b follows from it exactly:
 * Σ_t y_t y_tᵀ = [W b] G [W b]ᵀ — key/value/query covariances for PCA, per-frequency norms
 * of RoPE pairs, least-squares fits between projections. */
#ifndef KVF_CONVERT_CALIB_H
#define KVF_CONVERT_CALIB_H

#include <stdio.h>

#include "model/transformer.h"

struct kvf_calib {
    int n_layers;
    int64_t d;      /* d_model; matrices are (d+1)×(d+1) */
    int64_t tokens; /* calibration tokens seen */
    double *gram;   /* [n_layers][(d+1)*(d+1)] */
    /* kvf_calib_collect_cross only (NULL otherwise): partner[l] (-1: none) and the cross
     * moment X_lp = Σ_t [x_l; 1][x_p; 1]ᵀ of layer l's input with partner p's, per layer */
    int *partner;
    double *cross;
};
typedef struct kvf_calib kvf_calib;

/* Windows of seq_len tokens from tokens[0..n) (at most max_tokens in all, 0 = all), run in
 * batches through m. progress (may be NULL) gets a line per layer-pass batch. */
kvf_status kvf_calib_collect(kvf_model *m, const int32_t *tokens, int64_t n, int64_t seq_len,
                             int64_t max_tokens, kvf_calib *out, FILE *progress);
void kvf_calib_free(kvf_calib *c);

/* kvf_calib_collect plus cross-layer moments: for every layer l with partner[l] = p, an
 * earlier layer (p < l; -1 or p == l: none), X_lp = Σ_t [x_l; 1][x_p; 1]ᵀ over the same tokens
 * (rows: layer l's input, columns: layer p's). Cross-layer K/V sharing fits a producer's
 * projection to what its consumers computed from their own inputs with these. */
kvf_status kvf_calib_collect_cross(kvf_model *m, const int32_t *tokens, int64_t n,
                                   int64_t seq_len, int64_t max_tokens, const int *partner,
                                   kvf_calib *out, FILE *progress);
/* Layer l's X_lp, or NULL when it has no partner (or no cross moments were collected). */
const double *kvf_calib_cross(const kvf_calib *c, int layer);

/* The layer's G. */
const double *kvf_calib_gram(const kvf_calib *c, int layer);

/* S = A G Aᵀ for A = [W b] (rows × (d+1)); W row-major rows×d (any float, as double), b
 * may be NULL (zero). S is rows×rows. The second moment of the projection's outputs. */
kvf_status kvf_calib_project(const kvf_calib *c, int layer, int rows, const double *W,
                             const double *b, double *S);

#endif
