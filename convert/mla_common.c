/* mla_common.c — parameter IO and source checks shared by the MLA conversions. */
#include <stdlib.h>
#include <string.h>

#include "autograd/backend.h"
#include "autograd/context.h"
#include "mla_internal.h"

void kvf_mla_tuning_defaults(kvf_mla_tuning *t, bool deepseek) {
    memset(t, 0, sizeof *t);
    t->norm = KVF_MLA_NORM_LINEAR;
    t->factor = deepseek ? KVF_MLA_FACTOR_PCA : KVF_MLA_FACTOR_SVD;
    t->bkv = true;
    t->rorope_query_aware = deepseek; /* measured better at every setting (docs/conversions.md) */
    t->kv_output_aware = false;       /* mixed: kept as an ablation */
}

kvf_status kvf_mla_copy_common(const kvf_model *src, kvf_model *dst) {
    for (int i = 0; i < kvf_params_count(dst->params); i++) {
        kvf_tensor *t = kvf_params_at(dst->params, i);
        kvf_tensor *s = kvf_params_get(src->params, t->name);
        if (!s || !kvf_tensor_same_shape(s, t)) continue;
        double *v = kvf_cv_tensor_read(s);
        if (!v) return kvf_error_code();
        kvf_status st = kvf_cv_tensor_write(t, v);
        free(v);
        KVF_TRY(st);
    }
    return KVF_OK;
}

kvf_status kvf_mla_check_config(const kvf_model_config *c, const char *what) {
    KVF_CHECK(c->attn == KVF_ATTN_STANDARD, KVF_ERR_UNSUPPORTED,
              "convert --to mla (%s): the source already uses %s; convert from an MHA/GQA model", what,
              c->attn == KVF_ATTN_MLA ? "MLA (DeepSeek form)" : "partial-RoPE MLA");
    KVF_CHECK(c->pos == KVF_POS_ROPE, KVF_ERR_UNSUPPORTED,
              "convert --to mla (%s): the source has %s positions; MLA conversion re-arranges RoPE "
              "frequencies and needs a RoPE model (Llama/Qwen2-style)", what,
              c->pos == KVF_POS_LEARNED ? "learned (GPT-2-style)" : "no");
    KVF_CHECK(c->rope_layout == KVF_ROPE_HALF, KVF_ERR_UNSUPPORTED,
              "convert --to mla (%s): the source uses interleaved RoPE; only the HF Llama half layout "
              "is read", what);
    KVF_CHECK(c->rope_dim == c->head_dim, KVF_ERR_UNSUPPORTED,
              "convert --to mla (%s): the source rotates %d of its %d head dims (partial rotary); "
              "only full-width RoPE is supported", what, c->rope_dim, c->head_dim);
    KVF_CHECK(c->n_q_heads == c->n_heads, KVF_ERR_UNSUPPORTED,
              "convert --to mla (%s): the source has fewer query heads (%d) than heads (%d) (SQA)", what,
              c->n_q_heads, c->n_heads);
    for (int l = 0; l < c->n_layers; l++)
        KVF_CHECK(kvf_model_is_producer(c, l), KVF_ERR_UNSUPPORTED,
                  "convert --to mla (%s): layer %d reuses the K/V of layer %d (cross-layer sharing); "
                  "convert a model where every layer has its own K/V", what, l, c->kv_source[l]);
    KVF_CHECK(!c->qkv_bias && !c->o_bias, KVF_ERR_UNSUPPORTED,
              "convert --to mla (%s): the source has attention biases (%s); neither MLA form in kvforge "
              "(nor DeepSeek-V3's q_proj/kv_b_proj) has one, so MLA conversion needs a source without "
              "attention biases (--to gqa and --to cla keep them)",
              what, c->qkv_bias ? "q/k/v, as in Qwen2" : "o_proj");
    return KVF_OK;
}

kvf_status kvf_mla_check_source(const kvf_model *src, const char *what) {
    KVF_TRY(kvf_mla_check_config(&src->cfg, what));
    KVF_CHECK(src->rope_inv_freq, KVF_ERR_STATE, "convert --to mla (%s): the source has no RoPE table", what);
    return KVF_OK;
}
