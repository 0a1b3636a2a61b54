/* hf_config.h — Hugging Face config.json <-> kvf_model_config.
 *
 * Reads the architectures kvforge runs (DESIGN.md §5):
 *   LlamaForCausalLM       (GQA, tied embeddings, attention_bias / mlp_bias, head_dim,
 *                           rope_theta or transformers-5 rope_parameters)
 *   Qwen2ForCausalLM       (q/k/v biases, no o bias; sliding window on the last layers)
 *   GPT2LMHeadModel        (LayerNorm with bias, GELU, learned positions, biases everywhere)
 *   DeepseekV3ForCausalLM  (MLA, dense layers only: first_k_dense_replace >= num_hidden_layers)
 *   KvforgeForCausalLM     (model_type "kvforge": kvforge's own schema for designs no HF
 *                           architecture has — CLA, SQA, per-layer sliding windows,
 *                           partial-RoPE MLA; see docs/formats.md)
 * and writes a config back in the HF architecture the config fits exactly, else as
 * model_type "kvforge". Reading what was written gives an identical config
 * (kvf_hf_config_equal), so read → write → read is lossless.
 *
 * Anything a supported architecture can say but kvforge cannot compute (rope scaling other
 * than "default", MoE layers, DeepSeek attention biases, …) is a KVF_ERR_UNSUPPORTED error
 * "not supported: …"; malformed files are KVF_ERR_FORMAT; every message names the
 * config.json path. */
#ifndef KVF_MODEL_HF_CONFIG_H
#define KVF_MODEL_HF_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

enum kvf_hf_arch {
    KVF_HF_LLAMA,       /* LlamaForCausalLM, model_type "llama" */
    KVF_HF_QWEN2,       /* Qwen2ForCausalLM, "qwen2" */
    KVF_HF_GPT2,        /* GPT2LMHeadModel, "gpt2" */
    KVF_HF_DEEPSEEK_V3, /* DeepseekV3ForCausalLM, "deepseek_v3" (dense) */
    KVF_HF_KVFORGE,     /* KvforgeForCausalLM, "kvforge" */
    KVF_HF_ARCH_COUNT
};
typedef enum kvf_hf_arch kvf_hf_arch;

/* "LlamaForCausalLM", … (the architectures[0] entry) and "llama", … (model_type). */
const char *kvf_hf_arch_name(kvf_hf_arch a);
const char *kvf_hf_arch_model_type(kvf_hf_arch a);

/* Reads path (a config.json, or a model folder holding one) into *cfg, resolved
 * (kvf_model_config_resolve). arch, when not NULL, receives the architecture read. */
kvf_status kvf_hf_config_read_arch(const char *path, kvf_model_config *cfg, kvf_hf_arch *arch);
/* The same; arch (when not NULL, arch_len bytes) receives the architecture's name
 * ("LlamaForCausalLM", …, "KvforgeForCausalLM"), for messages and reports. */
kvf_status kvf_hf_config_read(const char *path, kvf_model_config *cfg, char *arch,
                              size_t arch_len);
/* The same from JSON text; path is only used in messages. */
kvf_status kvf_hf_config_parse(const char *json, const char *path, kvf_model_config *cfg,
                               kvf_hf_arch *arch);

/* The architecture config.json is written as: the HF one whose every relevant setting
 * matches cfg (resolved) exactly, else KVF_HF_KVFORGE. Fields that cfg's design does not use
 * (RoPE settings under learned positions, MLA ranks under standard attention, …) are not
 * considered and not written. */
kvf_hf_arch kvf_hf_config_arch(const kvf_model_config *cfg);

/* config.json text for cfg (resolved here on a copy), malloc'd (free()), or NULL with an
 * error set. weights_dtype (F32/BF16/F16/F64, or KVF_DTYPE_COUNT to leave it out) is written
 * as "torch_dtype". */
char *kvf_hf_config_dump(const kvf_model_config *cfg, kvf_dtype weights_dtype);
/* Writes kvf_hf_config_dump's text to path atomically (temp file, fsync, rename). */
kvf_status kvf_hf_config_write(const kvf_model_config *cfg, kvf_dtype weights_dtype,
                               const char *path);

/* Every field of two resolved configs equal (per-layer lists over the first n_layers).
 * When they differ and why is not NULL, the first differing field is described there. */
bool kvf_hf_config_equal(const kvf_model_config *a, const kvf_model_config *b, char *why,
                         size_t why_len);

#endif
