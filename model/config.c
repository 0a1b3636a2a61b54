#include "config.h"

#include <math.h>
#include <string.h>

void kvf_model_config_defaults(kvf_model_config *c) {
    memset(c, 0, sizeof *c);
    c->vocab_size = 256;
    c->d_model = 128;
    c->n_layers = 2;
    c->n_heads = 4;
    c->max_seq_len = 256;
    c->norm = KVF_NORM_RMS;
    c->norm_eps = 1e-5;
    c->mlp = KVF_MLP_SWIGLU;
    c->pos = KVF_POS_ROPE;
    c->rope_theta = 10000.0;
    c->rope_layout = KVF_ROPE_HALF;
    c->attn = KVF_ATTN_STANDARD;
    c->mla_kv_norm = true;
    for (int i = 0; i < KVF_MAX_LAYERS; i++) c->kv_source[i] = -1;
}

#define NEED(cond, ...) KVF_CHECK(cond, KVF_ERR_ARG, "model config: " __VA_ARGS__)

kvf_status kvf_model_config_resolve(kvf_model_config *c) {
    NEED(c->vocab_size > 0, "vocab_size must be positive (got %lld)", (long long)c->vocab_size);
    NEED(c->d_model > 0, "d_model must be positive (got %lld)", (long long)c->d_model);
    NEED(c->n_layers > 0 && c->n_layers <= KVF_MAX_LAYERS, "n_layers must be in 1..%d (got %d)",
         KVF_MAX_LAYERS, c->n_layers);
    NEED(c->n_heads > 0 && c->n_heads <= KVF_MAX_HEADS, "n_heads must be in 1..%d (got %d)",
         KVF_MAX_HEADS, c->n_heads);
    if (!c->n_q_heads) c->n_q_heads = c->n_heads;
    if (!c->n_kv_heads) c->n_kv_heads = c->n_q_heads;
    NEED(c->n_q_heads > 0 && c->n_q_heads <= KVF_MAX_HEADS, "n_q_heads must be in 1..%d (got %d)",
         KVF_MAX_HEADS, c->n_q_heads);
    NEED(c->n_kv_heads > 0 && c->n_q_heads % c->n_kv_heads == 0,
         "n_kv_heads (%d) must divide n_q_heads (%d)", c->n_kv_heads, c->n_q_heads);
    if (!c->head_dim) {
        NEED(c->d_model % c->n_heads == 0,
             "d_model (%lld) is not divisible by n_heads (%d); set head_dim explicitly",
             (long long)c->d_model, c->n_heads);
        c->head_dim = (int)(c->d_model / c->n_heads);
    }
    if (!c->v_head_dim) c->v_head_dim = c->head_dim;
    NEED(c->head_dim > 0 && c->v_head_dim > 0, "head dims must be positive");
    NEED(c->max_seq_len > 0, "max_seq_len must be positive");
    NEED(c->norm_eps > 0, "norm_eps must be positive (got %g)", c->norm_eps);
    if (!c->d_ff) c->d_ff = c->mlp == KVF_MLP_SWIGLU ? ((8 * c->d_model / 3 + 63) / 64) * 64 : 4 * c->d_model;
    NEED(c->d_ff > 0, "d_ff must be positive");
    if (c->pos == KVF_POS_ROPE) {
        NEED(c->rope_theta > 0, "rope_theta must be positive (got %g)", c->rope_theta);
        if (!c->rope_dim) c->rope_dim = c->head_dim;
        NEED(c->rope_dim % 2 == 0 && c->rope_dim <= c->head_dim,
             "rope_dim (%d) must be even and at most head_dim (%d)", c->rope_dim, c->head_dim);
    }
    if (!c->init_std) c->init_std = 0.02;
    for (int i = 0; i < c->n_layers; i++) {
        if (c->kv_source[i] < 0) c->kv_source[i] = i;
        NEED(c->kv_source[i] <= i, "layer %d takes K/V from layer %d, which comes after it", i,
             c->kv_source[i]);
        NEED(c->kv_source[c->kv_source[i]] == c->kv_source[i],
             "layer %d takes K/V from layer %d, which is not a producer", i, c->kv_source[i]);
        NEED(c->window[i] >= 0, "window of layer %d is negative", i);
    }
    NEED(c->kv_source[0] == 0, "layer 0 must produce its own K/V");
    if (c->attn == KVF_ATTN_MLA) {
        NEED(c->kv_lora_rank > 0, "MLA needs kv_lora_rank > 0");
        NEED(c->qk_rope_head_dim > 0 && c->qk_rope_head_dim % 2 == 0,
             "MLA needs an even qk_rope_head_dim > 0 (got %d)", c->qk_rope_head_dim);
        NEED(c->qk_nope_head_dim >= 0, "qk_nope_head_dim must be >= 0");
        NEED(c->q_lora_rank >= 0, "q_lora_rank must be >= 0");
        NEED(c->pos == KVF_POS_ROPE, "MLA uses RoPE positions");
        /* MLA's heads are all query heads; one latent serves them all */
        c->n_kv_heads = c->n_q_heads;
    } else if (c->attn == KVF_ATTN_MLA_PARTIAL_ROPE) {
        NEED(c->kv_lora_rank > 0, "partial-RoPE MLA needs kv_lora_rank > 0");
        NEED(c->partial_rope_dim >= 0 && c->partial_rope_dim % 2 == 0 &&
                 c->partial_rope_dim <= c->head_dim,
             "partial_rope_dim (%d) must be even and at most head_dim (%d)", c->partial_rope_dim,
             c->head_dim);
        NEED(c->pos == KVF_POS_ROPE, "partial-RoPE MLA uses RoPE positions");
    }
    if (!c->softmax_scale) c->softmax_scale = 1.0 / sqrt((double)kvf_model_qk_head_dim(c));
    return KVF_OK;
}

int kvf_model_qk_head_dim(const kvf_model_config *c) {
    if (c->attn == KVF_ATTN_MLA) return c->qk_nope_head_dim + c->qk_rope_head_dim;
    return c->head_dim;
}

bool kvf_model_is_producer(const kvf_model_config *c, int layer) {
    return c->kv_source[layer] == layer;
}

/* Matmul weights of the attention block of one layer (no biases, no norms). */
static int64_t attn_weights(const kvf_model_config *c, int layer) {
    int64_t d = c->d_model, nq = c->n_q_heads, nkv = c->n_kv_heads, hd = c->head_dim,
            vd = c->v_head_dim;
    bool prod = kvf_model_is_producer(c, layer);
    switch (c->attn) {
    case KVF_ATTN_MLA: {
        int64_t qk = kvf_model_qk_head_dim(c), r = c->kv_lora_rank, rq = c->q_lora_rank;
        int64_t q = rq ? d * rq + rq * nq * qk : d * nq * qk;
        int64_t kv = prod ? d * (r + c->qk_rope_head_dim) + r * nq * (c->qk_nope_head_dim + vd) : 0;
        return q + kv + nq * vd * d;
    }
    case KVF_ATTN_MLA_PARTIAL_ROPE: {
        int64_t r = c->kv_lora_rank, pr = c->partial_rope_dim;
        int64_t kv = prod ? d * nkv * pr + d * r + r * nkv * ((hd - pr) + vd) : 0;
        return d * nq * hd + kv + nq * vd * d;
    }
    default:
        return d * nq * hd + (prod ? d * nkv * (hd + vd) : 0) + nq * vd * d;
    }
}

static int64_t mlp_weights(const kvf_model_config *c) {
    return (c->mlp == KVF_MLP_SWIGLU ? 3 : 2) * c->d_model * c->d_ff;
}

int64_t kvf_model_n_params(const kvf_model_config *c) {
    int64_t d = c->d_model, n = c->vocab_size * d;
    if (c->pos == KVF_POS_LEARNED) n += c->max_seq_len * d;
    int64_t norm = c->norm_bias ? 2 * d : d;
    for (int l = 0; l < c->n_layers; l++) {
        bool prod = kvf_model_is_producer(c, l);
        n += 2 * norm + attn_weights(c, l) + mlp_weights(c);
        if (c->qkv_bias && c->attn == KVF_ATTN_STANDARD)
            n += c->n_q_heads * c->head_dim + (prod ? c->n_kv_heads * (c->head_dim + c->v_head_dim) : 0);
        if (c->o_bias) n += d;
        if (c->mlp_bias) n += c->d_ff * (c->mlp == KVF_MLP_SWIGLU ? 2 : 1) + d;
        if (c->attn == KVF_ATTN_MLA) {
            if (c->q_lora_rank) n += c->q_lora_rank;
            if (prod && c->mla_kv_norm) n += c->kv_lora_rank;
        }
    }
    n += norm;
    if (!c->tie_embeddings) n += c->vocab_size * d;
    return n;
}

double kvf_model_flops_per_token(const kvf_model_config *c, int64_t T) {
    double f = 2.0 * (double)(c->vocab_size * c->d_model); /* lm_head */
    for (int l = 0; l < c->n_layers; l++) {
        f += 2.0 * (double)(attn_weights(c, l) + mlp_weights(c));
        /* mean number of visible keys over positions 1..T */
        int64_t W = c->window[l];
        double keys = 0;
        for (int64_t t = 1; t <= T; t++) keys += (double)(W && W < t ? W : t);
        keys /= (double)(T > 0 ? T : 1);
        f += 2.0 * (double)c->n_q_heads * (double)(kvf_model_qk_head_dim(c) + c->v_head_dim) * keys;
    }
    return f;
}

int64_t kvf_model_kv_bytes_per_token(const kvf_model_config *c) {
    int64_t elems = 0;
    for (int l = 0; l < c->n_layers; l++) {
        if (!kvf_model_is_producer(c, l)) continue;
        switch (c->attn) {
        case KVF_ATTN_MLA: elems += c->kv_lora_rank + c->qk_rope_head_dim; break;
        case KVF_ATTN_MLA_PARTIAL_ROPE: elems += c->kv_lora_rank + (int64_t)c->n_kv_heads * c->partial_rope_dim; break;
        default: elems += (int64_t)c->n_kv_heads * (c->head_dim + c->v_head_dim); break;
        }
    }
    return 2 * elems; /* bf16 */
}
