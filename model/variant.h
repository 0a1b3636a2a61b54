/* variant.h — attention designs by short name, applied on top of a base config, so runs,
 * recipes and benchmarks say "gqa4" instead of repeating head counts:
 *   mha | mqa | gqaN (N KV heads) | sqa_qAkvB (A query, B KV heads) |
 *   mla_rR[_dD] (DeepSeek MLA, latent rank R, shared RoPE key dim D, default head_dim/2) |
 *   mla_partial_rR_dD (MHA2MLA form: D RoPE dims kept per KV head) |
 *   claK_<variant> (K/V produced every K layers) | swaW_<variant> (sliding window W on
 *   every layer but the last of each group of 2: MixAttention-style). */
#ifndef KVF_MODEL_VARIANT_H
#define KVF_MODEL_VARIANT_H

#include "config.h"

kvf_status kvf_model_config_apply_variant(kvf_model_config *c, const char *name);

#endif
