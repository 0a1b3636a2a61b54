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

double *kvf_mla_param_get(const kvf_tensor *t) {
    int64_t n = kvf_tensor_numel(t);
    double *out = malloc(sizeof(double) * (size_t)(n ? n : 1));
    void *raw = malloc(kvf_tensor_nbytes(t) ? kvf_tensor_nbytes(t) : 1);
    if (!out || !raw) {
        free(out);
        free(raw);
        kvf_error_set(KVF_ERR_OOM, "convert: out of memory reading %s", t->name ? t->name : "a tensor");
        return NULL;
    }
    if (kvf_tensor_to_host(t, raw, kvf_tensor_nbytes(t)) != KVF_OK) {
        free(out);
        free(raw);
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) {
        switch (t->dtype) {
        case KVF_DTYPE_F32: out[i] = ((const float *)raw)[i]; break;
        case KVF_DTYPE_F64: out[i] = ((const double *)raw)[i]; break;
        case KVF_DTYPE_BF16: out[i] = kvf_bf16_to_f32(((const uint16_t *)raw)[i]); break;
        case KVF_DTYPE_F16: out[i] = kvf_f16_to_f32(((const uint16_t *)raw)[i]); break;
        default:
            free(out);
            free(raw);
            kvf_error_set(KVF_ERR_DTYPE, "convert: %s is %s, not a float tensor", t->name ? t->name : "a tensor",
                          kvf_dtype_name(t->dtype));
            return NULL;
        }
    }
    free(raw);
    return out;
}

kvf_status kvf_mla_param_set(kvf_tensor *t, const double *v) {
    int64_t n = kvf_tensor_numel(t);
    size_t nb = kvf_tensor_nbytes(t);
    KVF_CHECK(kvf_tensor_is_contiguous(t), KVF_ERR_ARG, "convert: %s is not contiguous", t->name ? t->name : "a tensor");
    void *raw = malloc(nb ? nb : 1);
    KVF_CHECK(raw, KVF_ERR_OOM, "convert: out of memory writing %s", t->name ? t->name : "a tensor");
    for (int64_t i = 0; i < n; i++) {
        switch (t->dtype) {
        case KVF_DTYPE_F32: ((float *)raw)[i] = (float)v[i]; break;
        case KVF_DTYPE_F64: ((double *)raw)[i] = v[i]; break;
        case KVF_DTYPE_BF16: ((uint16_t *)raw)[i] = kvf_f32_to_bf16((float)v[i]); break;
        case KVF_DTYPE_F16: ((uint16_t *)raw)[i] = kvf_f32_to_f16((float)v[i]); break;
        default: free(raw); return kvf_error_set(KVF_ERR_DTYPE, "convert: cannot write %s", kvf_dtype_name(t->dtype));
        }
    }
    kvf_status st = KVF_OK;
    if (kvf_tensor_device(t) == KVF_DEVICE_CPU) {
        memcpy(kvf_tensor_data(t), raw, nb);
    } else {
        const kvf_backend *be = kvf_backend_get(kvf_tensor_device(t));
        st = be ? be->upload(kvf_tensor_data(t), raw, nb) : kvf_error_code();
    }
    free(raw);
    return st;
}

kvf_status kvf_mla_copy_common(const kvf_model *src, kvf_model *dst) {
    for (int i = 0; i < kvf_params_count(dst->params); i++) {
        kvf_tensor *t = kvf_params_at(dst->params, i);
        kvf_tensor *s = kvf_params_get(src->params, t->name);
        if (!s || !kvf_tensor_same_shape(s, t)) continue;
        double *v = kvf_mla_param_get(s);
        if (!v) return kvf_error_code();
        kvf_status st = kvf_mla_param_set(t, v);
        free(v);
        KVF_TRY(st);
    }
    return KVF_OK;
}

kvf_status kvf_mla_check_source(const kvf_model *src, const char *what) {
    const kvf_model_config *c = &src->cfg;
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
    KVF_CHECK(src->rope_inv_freq, KVF_ERR_STATE, "convert --to mla (%s): the source has no RoPE table", what);
    return KVF_OK;
}
