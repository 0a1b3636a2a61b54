/* checkpoint.h — Hugging Face model folders <-> kvf_model (DESIGN.md §5).
 *
 * A folder holds config.json (hf_config.h) and model.safetensors, or shards
 * model-0000i-of-0000N.safetensors listed by model.safetensors.index.json.
 *
 * Tensor names: kvforge's parameter names are the HF names of Llama / Qwen2 / DeepSeek-V3
 * (and of kvforge's own model_type), so those map one to one. GPT2LMHeadModel is mapped:
 *   [transformer.]wte / wpe                 ↔ model.embed_tokens / model.embed_positions
 *   [transformer.]h.N.ln_1 / ln_2 (w + b)   ↔ model.layers.N.input_layernorm / post_attention_layernorm
 *   h.N.attn.c_attn (Conv1D [d, 3d], bias)  ↔ self_attn.q_proj / k_proj / v_proj (transposed, split)
 *   h.N.attn.c_proj (Conv1D)                ↔ self_attn.o_proj (transposed)
 *   h.N.mlp.c_fc / mlp.c_proj (Conv1D)      ↔ mlp.up_proj / mlp.down_proj (transposed)
 *   [transformer.]ln_f                      ↔ model.norm
 * (checkpoints with and without the "transformer." prefix are read; it is written).
 * Partial-RoPE MLA models (model_type "kvforge") also store each producer layer's kept
 * frequencies, "model.layers.N.self_attn.rope_freqs" (F32 [n_kv_heads, partial_rope_dim/2]).
 *
 * Loading validates the folder against its config before any weight is copied: every
 * parameter present with the expected shape and a float dtype, and no tensor left over except
 * known buffers (rotary "inv_freq", GPT-2 "attn.bias" / "attn.masked_bias" masks, a tied
 * "lm_head.weight", DeepSeek multi-token-prediction layers past num_hidden_layers). Tensors
 * are converted (F32/BF16/F16/F64 → the master dtype) one at a time from the read-only
 * mapping, so the file is never held twice. Errors name the file and the tensor.
 *
 * Saving writes config.json and the weights into a new folder beside dir and renames it into
 * place (an existing dir is swapped out whole; files and subfolders in it that are not part
 * of a checkpoint, such as tokenizer.json, are kept). A failure removes the new folder and
 * leaves dir as it was. Tied embeddings are written once (no lm_head.weight), as HF does. */
#ifndef KVF_MODEL_CHECKPOINT_H
#define KVF_MODEL_CHECKPOINT_H

#include <stdint.h>

#include "hf_config.h"
#include "transformer.h"

/* A new model (f32 master weights) on device from the folder dir, or NULL with an error. */
kvf_model *kvf_checkpoint_load(const char *dir, kvf_device device);
/* The same with master weights in param_dtype (f32 or f64). */
kvf_model *kvf_checkpoint_load_as(const char *dir, kvf_device device, kvf_dtype param_dtype);

/* Writes m into dir (created, or replaced atomically) with weights as dtype (F32, BF16, F16 or
 * F64). max_shard_bytes > 0 splits the weights into shards of at most that many tensor bytes
 * (plus the index); 0 writes one model.safetensors. */
kvf_status kvf_checkpoint_save(const kvf_model *m, const char *dir, kvf_dtype dtype,
                               uint64_t max_shard_bytes);

#endif
