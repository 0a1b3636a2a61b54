/* mla_internal.h — the knobs and pieces behind the two MLA conversions (mla_deepseek.c,
 * mla_partial.c), exposed for tests/test_convert_mla.c and tools/conv_table.c. The public
 * entry points in convert.h use kvf_mla_tuning_defaults(); the other settings exist to test
 * each exact step on its own and to measure the documented choices (docs/conversions.md). */
#ifndef KVF_CONVERT_MLA_INTERNAL_H
#define KVF_CONVERT_MLA_INTERNAL_H

#include <stdio.h>

#include "calib.h"
#include "convert.h"
#include "convert_impl.h"

/* What the DeepSeek route does with the latent RMSNorms (kv_a_layernorm, and q_a_layernorm
 * with --q-rank). HF DeepseekV3 always applies them; kvforge's MLA can switch kv_a off. */
enum kvf_mla_norm_mode {
    /* Keep the norm and make it linear: the latent is scaled down so its mean square is
     * 1e-6 of the norm's fixed eps (1e-6), the norm weight scales it back up. RMSNorm then
     * multiplies by w/sqrt(eps) up to a relative 5e-7·ms_t/mean(ms): the identity to f32
     * rounding. Default (docs/conversions.md: measured against the other two). */
    KVF_MLA_NORM_LINEAR,
    /* Keep the norm as a real normaliser: weight = the latent's RMS over the calibration
     * tokens (each token's latent is rescaled by that RMS over its own RMS). */
    KVF_MLA_NORM_MEAN_RMS,
    /* No kv_a_layernorm (TransMLA's default). The result is written as model_type "kvforge":
     * HF DeepseekV3 cannot express it. q_a_layernorm (always present) falls back to LINEAR. */
    KVF_MLA_NORM_OFF,
};

enum kvf_mla_factor {
    KVF_MLA_FACTOR_PCA,      /* deepseek: activation PCA (TransMLA); partial: see below */
    KVF_MLA_FACTOR_SVD,      /* partial: SVD of the weights [W_k_nope; W_v] (MHA2MLA) */
    KVF_MLA_FACTOR_IDENTITY, /* latent = the stacked projections themselves (needs R = max) */
};

struct kvf_mla_tuning {
    enum kvf_mla_norm_mode norm;
    enum kvf_mla_factor factor; /* deepseek default PCA, partial default SVD */
    bool bkv;                   /* deepseek: balance K_nope against V before the PCA */
    /* deepseek: weight the per-frequency RoRoPE PCA by the query energy of each KV head's
     * group (whitening by diag(Q)^{1/2}, undone on the query side: still exact at F = 1). */
    bool rorope_query_aware;
    /* deepseek: choose the latent by the error it causes downstream (query-weighted logit
     * error of the keys, o_proj-weighted value error) instead of TransMLA's plain PCA. */
    bool kv_output_aware;
};
typedef struct kvf_mla_tuning kvf_mla_tuning;

void kvf_mla_tuning_defaults(kvf_mla_tuning *t, bool deepseek);

kvf_model *kvf_convert_mla_deepseek_tuned(const kvf_model *src, const kvf_convert_opts *o,
                                          const kvf_calib *calib, const kvf_mla_tuning *t,
                                          FILE *log);
kvf_model *kvf_convert_mla_partial_tuned(const kvf_model *src, const kvf_convert_opts *o,
                                         const kvf_calib *calib, const kvf_mla_tuning *t,
                                         FILE *log);

/* RoRoPE of one layer, in the original (un-truncated) coordinates, for tests.
 * The key's L = g·d output dims are re-expressed as L/2 RoPE pairs ("components"): pair
 * P = a·(g·F) + p of frequency group a (original frequencies a·F .. a·F+F−1), principal
 * component p. Kx/Ky (L/2 × d_model each) are the new key rows of the pair's two halves;
 * Cq (n_heads × L/2 × head_dim, x part, and the same again for y) maps query head i's
 * original head vector q_i to the pair's query coordinates, so that for F = 1
 *     Σ_P rot_{ω(P)}(Cqx_i q_i, Cqy_i q_i) · rot_{ω(P)}(Kx x, Ky x) = RoPE(q_i)·RoPE(k_j(i))
 * with ω(P) the original frequency of group a. energy[P] is the calibration energy of the
 * pair's key (descending within a group). All arrays malloc'd by the callee, free() each. */
struct kvf_rorope {
    int pairs, group_size; /* L/2, g·F */
    double *kx, *ky;       /* [pairs][d_model] */
    double *cqx, *cqy;     /* [n_heads][pairs][head_dim] */
    double *energy;        /* [pairs] */
};
kvf_status kvf_mla_rorope(const kvf_model *src, const kvf_calib *calib, int layer, int freqfold,
                          bool query_aware, struct kvf_rorope *out);
void kvf_mla_rorope_free(struct kvf_rorope *r);

/* Shared helpers (mla_common.c). */
/* Copy every parameter of dst that src has under the same name and shape. */
kvf_status kvf_mla_copy_common(const kvf_model *src, kvf_model *dst);
/* The same checks on a config alone (biases included), before any weight is read. */
kvf_status kvf_mla_check_config(const kvf_model_config *c, const char *what);
/* The partial-RoPE route's option checks against a source config. */
kvf_status kvf_mla_partial_check(const kvf_model_config *c, const kvf_convert_opts *o, const kvf_mla_tuning *t);
/* A source the MLA conversions can read: standard attention with full-width RoPE in the HF
 * half layout, every layer its own K/V producer. what names the route for messages. */
kvf_status kvf_mla_check_source(const kvf_model *src, const char *what);

#endif
