/* config.h — one transformer configuration covering every attention design kvforge
 * trains and converts (DESIGN.md §3), its validation, and the figures users compare
 * designs by: parameters, FLOPs per token and KV-cache bytes per token. */
#ifndef KVF_MODEL_CONFIG_H
#define KVF_MODEL_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "autograd/backend.h"
#include "autograd/error.h"
#include "autograd/tensor.h"

#define KVF_MAX_LAYERS 256
#define KVF_MAX_HEADS 256

enum kvf_attn_kind {
    KVF_ATTN_STANDARD, /* MHA / GQA / MQA / SQA: q, k, v, o projections */
    KVF_ATTN_MLA,      /* DeepSeek-V2/V3: latent KV + decoupled shared RoPE key */
    KVF_ATTN_MLA_PARTIAL_ROPE, /* MHA2MLA: per-head kept RoPE dims + low-rank joint K/V */
};
enum kvf_norm_kind { KVF_NORM_RMS, KVF_NORM_LAYER };
enum kvf_mlp_kind { KVF_MLP_SWIGLU, KVF_MLP_GELU };
enum kvf_pos_kind { KVF_POS_ROPE, KVF_POS_LEARNED, KVF_POS_NONE };

struct kvf_model_config {
    int64_t vocab_size;
    int64_t d_model;
    int n_layers;
    int n_heads;     /* nominal heads: head_dim defaults to d_model / n_heads */
    int n_q_heads;   /* query heads (SQA: fewer than n_heads); 0 → n_heads */
    int n_kv_heads;  /* 0 → n_q_heads; GQA groups are consecutive query heads */
    int head_dim;    /* q/k head dim; 0 → d_model / n_heads */
    int v_head_dim;  /* 0 → head_dim */
    int64_t max_seq_len;

    enum kvf_norm_kind norm;
    double norm_eps;
    enum kvf_mlp_kind mlp;
    int64_t d_ff;
    bool gelu_exact; /* GELU MLP: erf form instead of tanh */

    enum kvf_pos_kind pos;
    double rope_theta;
    kvf_rope_layout rope_layout;
    int rope_dim;    /* standard attention: leading dims of each head rotated; 0 → head_dim */

    bool qkv_bias;   /* biases on q/k/v projections (Qwen2, GPT-2) */
    bool o_bias;     /* bias on the output projection (GPT-2) */
    bool mlp_bias;   /* biases in the MLP (GPT-2) */
    bool norm_bias;  /* LayerNorm bias */
    bool tie_embeddings;

    /* Cross-layer sharing: layer i takes K/V from layer kv_source[i] <= i, which must be
     * a producer (kv_source[p] == p). Default: every layer its own producer. */
    int kv_source[KVF_MAX_LAYERS];
    /* Sliding window per layer, 0 = global attention. */
    int64_t window[KVF_MAX_LAYERS];

    enum kvf_attn_kind attn;
    /* MLA (DeepSeek form). */
    int kv_lora_rank;
    int q_lora_rank;      /* 0: full-rank q_proj */
    int qk_nope_head_dim;
    int qk_rope_head_dim;
    bool mla_kv_norm;     /* RMSNorm on the latent (kv_a_layernorm) */
    /* MLA, per-head partial RoPE (MHA2MLA): RoPE dims kept per KV head. Which frequencies
     * each head keeps is a per-layer buffer of the model (transformer.h), not config. */
    int partial_rope_dim;

    double init_std;      /* 0 → 0.02 */
    kvf_dtype param_dtype; /* master weights: f32 (default) or f64 (gradient checks) */
    double softmax_scale; /* 0 → 1/sqrt(q/k head dim) */
};
typedef struct kvf_model_config kvf_model_config;

/* A config with Llama-style defaults (RMSNorm, SwiGLU, RoPE θ=10000, half layout). */
void kvf_model_config_defaults(kvf_model_config *c);

/* Fill derived fields (0 → default) and check every constraint; errors name the field. */
kvf_status kvf_model_config_resolve(kvf_model_config *c);

/* Derived quantities of a resolved config. */
int     kvf_model_qk_head_dim(const kvf_model_config *c); /* per query head, RoPE part included */
bool    kvf_model_is_producer(const kvf_model_config *c, int layer);
int64_t kvf_model_n_params(const kvf_model_config *c);
/* Forward FLOPs per token at context length T (2·params of the matmuls + attention core with
 * causal average T/2 keys, window-limited); training is 3× this. */
double  kvf_model_flops_per_token(const kvf_model_config *c, int64_t T);
/* KV-cache bytes per token, all layers, bf16. */
int64_t kvf_model_kv_bytes_per_token(const kvf_model_config *c);

#endif
