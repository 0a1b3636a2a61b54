/* transformer.h — the decoder-only transformer family of config.h, built only from
 * autograd ops. Parameters carry Hugging Face names (Llama / DeepSeek-V3 style, see
 * docs/model.md), so a checkpoint maps onto them by name. */
#ifndef KVF_MODEL_TRANSFORMER_H
#define KVF_MODEL_TRANSFORMER_H

#include "autograd/context.h"
#include "autograd/params.h"
#include "config.h"

struct kvf_layer_weights {
    kvf_tensor *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    /* standard attention (q also for partial-RoPE MLA) */
    kvf_tensor *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;
    /* MLA */
    kvf_tensor *q_a_w, *q_a_norm, *q_b_w, *kv_a_w, *kv_a_norm, *kv_b_w;
    /* partial-RoPE MLA: K's kept RoPE dims; per-KV-head frequencies [n_kv, rope/2] (buffer) */
    kvf_tensor *k_rope_w, *rope_freqs;
    /* MLP */
    kvf_tensor *gate_w, *gate_b, *up_w, *up_b, *down_w, *down_b;
};

/* Called during forward with each layer's attention input (the normed hidden state,
 * [B, T, d_model]) — what calibration-based conversions collect statistics from. */
typedef kvf_status (*kvf_layer_hook)(int layer, const kvf_tensor *attn_input, void *ud);

/* Activation recomputation (autograd/recompute.h) in the training forward. none: every
 * activation stays in the arena until the step ends. blocks: each transformer block keeps
 * only its boundary — its input x, and for a CLA producer whose K/V later layers read,
 * those K/V — and is re-run during backward, so the arena holds one block's activations
 * at a time plus the boundaries (about a third more forward compute). Loss and gradients
 * are bit-for-bit those of none on the CPU. */
enum kvf_recompute_mode { KVF_RECOMPUTE_NONE, KVF_RECOMPUTE_BLOCKS };
typedef enum kvf_recompute_mode kvf_recompute_mode;
kvf_status kvf_recompute_parse(const char *name, kvf_recompute_mode *mode); /* none | blocks */

struct kvf_model {
    kvf_model_config cfg;
    kvf_params *params;
    kvf_tensor *embed, *pos_embed, *norm_w, *norm_b, *lm_head;
    struct kvf_layer_weights *layers;
    kvf_tensor *rope_inv_freq; /* [rope_dim/2] f32 buffer for standard attention */
    kvf_device device;
    /* dtype the forward computes in: the master dtype (default), or bf16 on a GPU (mixed
     * precision: each weight is cast once per forward, activations are bf16, norm
     * statistics, softmax and the loss f32, gradients reach the f32 masters) */
    kvf_dtype compute_dtype;
    kvf_recompute_mode recompute; /* KVF_RECOMPUTE_NONE unless set */
    /* mixed precision: every weight but the embedding table cast in one pass per step, into
     * the arena of wcast_ctx (valid for that ctx generation and params version) */
    kvf_tensor *wcast;
    const kvf_ctx *wcast_ctx;
    uint64_t wcast_gen, wcast_ver;
    int64_t wcast_lo; /* the flat offset wcast starts at */
    kvf_layer_hook hook; /* NULL: none */
    void *hook_ud;
};
typedef struct kvf_model kvf_model;

/* Registers every parameter of cfg (resolved here) and allocates them, zeroed. */
kvf_model *kvf_model_init(const kvf_model_config *cfg, kvf_device device);
void       kvf_model_free(kvf_model *m);

/* A copy of src (same config, weights and buffers) with its parameters on device; compute
 * dtype the master dtype. */
kvf_model *kvf_model_to_device(const kvf_model *src, kvf_device device);

/* Master dtype, or KVF_DTYPE_BF16 for a model on a GPU (KVF_ERR_DTYPE otherwise). */
kvf_status kvf_model_set_compute_dtype(kvf_model *m, kvf_dtype dtype);

/* GPT-2 / Llama-style initialisation: N(0, init_std) for matrices and embeddings,
 * residual output projections scaled by 1/sqrt(2·n_layers), norms 1, biases 0. */
kvf_status kvf_model_init_weights(kvf_model *m, uint64_t seed);

/* ids i32 [B, T] (T <= max_seq_len) → logits [B, T, vocab] in the master dtype. */
kvf_tensor *kvf_model_forward(kvf_model *m, kvf_ctx *ctx, kvf_tensor *ids);
/* Mean next-token cross-entropy of logits against targets i32 [B, T] (ignore -100); f32
 * (f64 for f64 masters), whatever the compute dtype. */
kvf_tensor *kvf_model_loss(kvf_model *m, kvf_ctx *ctx, kvf_tensor *ids, kvf_tensor *targets);

#endif
