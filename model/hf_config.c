/* hf_config.c — config.json of the HF architectures kvforge runs, and kvforge's own
 * model_type "kvforge" (schema in docs/formats.md). See hf_config.h. */
#include "hf_config.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
    const char *arch, *model_type;
} arch_names[KVF_HF_ARCH_COUNT] = {
    [KVF_HF_LLAMA] = {"LlamaForCausalLM", "llama"},
    [KVF_HF_QWEN2] = {"Qwen2ForCausalLM", "qwen2"},
    [KVF_HF_GPT2] = {"GPT2LMHeadModel", "gpt2"},
    [KVF_HF_DEEPSEEK_V3] = {"DeepseekV3ForCausalLM", "deepseek_v3"},
    [KVF_HF_KVFORGE] = {"KvforgeForCausalLM", "kvforge"},
};

#define SUPPORTED_LIST                                                                      \
    "LlamaForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel, DeepseekV3ForCausalLM (dense "   \
    "layers only) and KvforgeForCausalLM (model_type \"kvforge\")"

/* Version of kvforge's own schema, written as "kvforge_format". */
#define KVF_FORMAT_VERSION 1

const char *kvf_hf_arch_name(kvf_hf_arch a) {
    return (int)a >= 0 && a < KVF_HF_ARCH_COUNT ? arch_names[a].arch : "?";
}
const char *kvf_hf_arch_model_type(kvf_hf_arch a) {
    return (int)a >= 0 && a < KVF_HF_ARCH_COUNT ? arch_names[a].model_type : "?";
}

/* ============================================================================================
 * reading: typed access to the root object, every error naming the file
 * ========================================================================================== */

struct rd {
    const char *path;
    json_t *root;
};

static const char *jtype(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* The value of key, NULL when absent or null (HF writes null for "use the default"). */
static json_t *get(const struct rd *r, const char *key) {
    json_t *v = json_object_get(r->root, key);
    return v && !json_is_null(v) ? v : NULL;
}

static kvf_status missing(const struct rd *r, const char *key) {
    return kvf_error_set(KVF_ERR_FORMAT, "%s: missing \"%s\"", r->path, key);
}

/* Integer value of v (JSON integer, or a number with an integral value) into [lo, hi]. */
static kvf_status as_int(const struct rd *r, const char *key, const json_t *v, long long lo,
                         long long hi, long long *out) {
    long long x = 0;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9e15) {
        x = (long long)json_real_value(v);
    } else {
        return kvf_error_set(KVF_ERR_FORMAT, "%s: \"%s\" must be an integer, got %s", r->path,
                             key, jtype(v));
    }
    KVF_CHECK(x >= lo && x <= hi, KVF_ERR_FORMAT, "%s: \"%s\" is %lld, must be in %lld..%lld",
              r->path, key, x, lo, hi);
    *out = x;
    return KVF_OK;
}

static kvf_status rd_int(const struct rd *r, const char *key, bool required, long long dflt,
                         long long lo, long long hi, long long *out) {
    json_t *v = get(r, key);
    if (!v) {
        if (required) return missing(r, key);
        *out = dflt;
        return KVF_OK;
    }
    return as_int(r, key, v, lo, hi, out);
}

/* Same into an int field. */
static kvf_status rd_i(const struct rd *r, const char *key, bool required, int dflt, int lo,
                       int hi, int *out) {
    long long x = 0;
    KVF_TRY(rd_int(r, key, required, dflt, lo, hi, &x));
    *out = (int)x;
    return KVF_OK;
}

static kvf_status rd_num(const struct rd *r, const char *key, bool required, double dflt,
                         double *out) {
    json_t *v = get(r, key);
    if (!v) {
        if (required) return missing(r, key);
        *out = dflt;
        return KVF_OK;
    }
    KVF_CHECK(json_is_number(v), KVF_ERR_FORMAT, "%s: \"%s\" must be a number, got %s",
              r->path, key, jtype(v));
    *out = json_number_value(v);
    KVF_CHECK(isfinite(*out), KVF_ERR_FORMAT, "%s: \"%s\" is not finite", r->path, key);
    return KVF_OK;
}

static kvf_status rd_bool(const struct rd *r, const char *key, bool dflt, bool *out) {
    json_t *v = get(r, key);
    if (!v) {
        *out = dflt;
        return KVF_OK;
    }
    KVF_CHECK(json_is_boolean(v), KVF_ERR_FORMAT, "%s: \"%s\" must be true or false, got %s",
              r->path, key, jtype(v));
    *out = json_is_true(v);
    return KVF_OK;
}

static kvf_status rd_str(const struct rd *r, const char *key, const char *dflt,
                         const char **out) {
    json_t *v = get(r, key);
    if (!v) {
        *out = dflt;
        return KVF_OK;
    }
    KVF_CHECK(json_is_string(v), KVF_ERR_FORMAT, "%s: \"%s\" must be a string, got %s",
              r->path, key, jtype(v));
    *out = json_string_value(v);
    return KVF_OK;
}

/* A string key whose value must be one of names[0..n); index into *out. */
static kvf_status rd_enum(const struct rd *r, const char *key, const char *const *names, int n,
                          int dflt, int *out) {
    const char *s;
    KVF_TRY(rd_str(r, key, NULL, &s));
    if (!s) {
        *out = dflt;
        return KVF_OK;
    }
    for (int i = 0; i < n; i++)
        if (!strcmp(s, names[i])) {
            *out = i;
            return KVF_OK;
        }
    char list[256] = "";
    for (int i = 0; i < n; i++) {
        size_t l = strlen(list);
        snprintf(list + l, sizeof list - l, "%s\"%s\"", i ? ", " : "", names[i]);
    }
    return kvf_error_set(KVF_ERR_FORMAT, "%s: \"%s\" is \"%s\"; expected one of %s", r->path,
                         key, s, list);
}

/* The RoPE settings of a Llama-family config: legacy rope_theta / rope_scaling (v4) or
 * rope_parameters {rope_theta, rope_type} (v5). Only "default" RoPE is computed by kvforge. */
static kvf_status rope_type_ok(const struct rd *r, const char *where, const json_t *obj) {
    const json_t *t = json_object_get(obj, "rope_type");
    if (!t || json_is_null(t)) t = json_object_get(obj, "type");
    if (!t || json_is_null(t)) return KVF_OK; /* "default" */
    KVF_CHECK(json_is_string(t), KVF_ERR_FORMAT, "%s: \"%s\".rope_type must be a string, got %s",
              r->path, where, jtype(t));
    const char *s = json_string_value(t);
    KVF_CHECK(!strcmp(s, "default"), KVF_ERR_UNSUPPORTED,
              "%s: not supported: rope_type %s (in \"%s\"; kvforge computes only \"default\" "
              "RoPE, no scaling)",
              r->path, s, where);
    return KVF_OK;
}

static kvf_status partial_factor_ok(const struct rd *r, const char *where, const json_t *v) {
    if (!v || json_is_null(v)) return KVF_OK;
    KVF_CHECK(json_is_number(v), KVF_ERR_FORMAT, "%s: \"%s\" must be a number, got %s", r->path,
              where, jtype(v));
    KVF_CHECK(json_number_value(v) == 1.0, KVF_ERR_UNSUPPORTED,
              "%s: not supported: %s %g (this architecture rotates whole heads)", r->path, where,
              json_number_value(v));
    return KVF_OK;
}

static kvf_status read_rope(const struct rd *r, double *theta) {
    KVF_TRY(rd_num(r, "rope_theta", false, 10000.0, theta));
    KVF_TRY(partial_factor_ok(r, "partial_rotary_factor", get(r, "partial_rotary_factor")));
    json_t *rs = get(r, "rope_scaling");
    if (rs) {
        KVF_CHECK(json_is_object(rs), KVF_ERR_FORMAT,
                  "%s: \"rope_scaling\" must be an object or null, got %s", r->path, jtype(rs));
        KVF_TRY(rope_type_ok(r, "rope_scaling", rs));
    }
    json_t *rp = get(r, "rope_parameters");
    if (rp) {
        KVF_CHECK(json_is_object(rp), KVF_ERR_FORMAT,
                  "%s: \"rope_parameters\" must be an object or null, got %s", r->path, jtype(rp));
        const char *k;
        json_t *v;
        json_object_foreach(rp, k, v) {
            KVF_CHECK(!json_is_object(v), KVF_ERR_UNSUPPORTED,
                      "%s: not supported: per-layer-type rope_parameters (\"%s\")", r->path, k);
        }
        KVF_TRY(rope_type_ok(r, "rope_parameters", rp));
        KVF_TRY(partial_factor_ok(r, "rope_parameters.partial_rotary_factor",
                                  json_object_get(rp, "partial_rotary_factor")));
        json_t *t = json_object_get(rp, "rope_theta");
        if (t && !json_is_null(t)) {
            KVF_CHECK(json_is_number(t), KVF_ERR_FORMAT,
                      "%s: \"rope_parameters\".rope_theta must be a number, got %s", r->path,
                      jtype(t));
            *theta = json_number_value(t);
        }
    }
    KVF_CHECK(*theta > 0 && isfinite(*theta), KVF_ERR_FORMAT,
              "%s: rope_theta must be a positive number (got %g)", r->path, *theta);
    return KVF_OK;
}

static kvf_status need_silu(const struct rd *r) {
    const char *act;
    KVF_TRY(rd_str(r, "hidden_act", "silu", &act));
    KVF_CHECK(!strcmp(act, "silu") || !strcmp(act, "swish"), KVF_ERR_UNSUPPORTED,
              "%s: not supported: hidden_act \"%s\" (this architecture's gated MLP runs silu)",
              r->path, act);
    return KVF_OK;
}

#define INT_MAXV 0x7fffffff
#define I64_MAXV ((long long)1 << 50)

/* vocab, width, depth, heads, MLP width, context: the keys every Llama-family config has. */
static kvf_status read_llama_sizes(const struct rd *r, kvf_model_config *c, long long max_pos) {
    long long v = 0;
    KVF_TRY(rd_int(r, "vocab_size", true, 0, 1, I64_MAXV, &v));
    c->vocab_size = v;
    KVF_TRY(rd_int(r, "hidden_size", true, 0, 1, I64_MAXV, &v));
    c->d_model = v;
    KVF_TRY(rd_i(r, "num_hidden_layers", true, 0, 1, KVF_MAX_LAYERS, &c->n_layers));
    KVF_TRY(rd_i(r, "num_attention_heads", true, 0, 1, KVF_MAX_HEADS, &c->n_heads));
    KVF_TRY(rd_int(r, "intermediate_size", true, 0, 1, I64_MAXV, &v));
    c->d_ff = v;
    KVF_TRY(rd_int(r, "max_position_embeddings", false, max_pos, 1, I64_MAXV, &v));
    c->max_seq_len = v;
    KVF_TRY(rd_num(r, "rms_norm_eps", false, 1e-6, &c->norm_eps));
    KVF_TRY(rd_num(r, "initializer_range", false, 0.02, &c->init_std));
    KVF_TRY(need_silu(r));
    c->norm = KVF_NORM_RMS;
    c->mlp = KVF_MLP_SWIGLU;
    c->pos = KVF_POS_ROPE;
    c->rope_layout = KVF_ROPE_HALF;
    return read_rope(r, &c->rope_theta);
}

static kvf_status read_kv_heads(const struct rd *r, kvf_model_config *c) {
    return rd_i(r, "num_key_value_heads", false, c->n_heads, 1, KVF_MAX_HEADS, &c->n_kv_heads);
}

static kvf_status read_llama(const struct rd *r, kvf_model_config *c) {
    KVF_TRY(read_llama_sizes(r, c, 2048));
    KVF_TRY(read_kv_heads(r, c));
    KVF_TRY(rd_i(r, "head_dim", false, 0, 1, INT_MAXV, &c->head_dim));
    bool ab;
    KVF_TRY(rd_bool(r, "attention_bias", false, &ab));
    c->qkv_bias = c->o_bias = ab;
    KVF_TRY(rd_bool(r, "mlp_bias", false, &c->mlp_bias));
    return rd_bool(r, "tie_word_embeddings", false, &c->tie_embeddings);
}

static kvf_status read_qwen2(const struct rd *r, kvf_model_config *c) {
    KVF_TRY(read_llama_sizes(r, c, 32768));
    KVF_TRY(read_kv_heads(r, c));
    KVF_TRY(rd_i(r, "head_dim", false, 0, 1, INT_MAXV, &c->head_dim));
    c->qkv_bias = true; /* Qwen2 hard-codes q/k/v biases and no o bias */
    c->o_bias = false;
    KVF_TRY(rd_bool(r, "tie_word_embeddings", false, &c->tie_embeddings));
    bool sliding;
    KVF_TRY(rd_bool(r, "use_sliding_window", false, &sliding));
    if (!sliding) return KVF_OK;
    long long w;
    int mwl;
    KVF_TRY(rd_int(r, "sliding_window", true, 0, 1, I64_MAXV, &w));
    KVF_TRY(rd_i(r, "max_window_layers", false, 28, 0, INT_MAXV, &mwl));
    json_t *lt = get(r, "layer_types");
    if (lt) {
        KVF_CHECK(json_is_array(lt) && json_array_size(lt) == (size_t)c->n_layers, KVF_ERR_FORMAT,
                  "%s: \"layer_types\" must be a list of %d strings", r->path, c->n_layers);
        for (int l = 0; l < c->n_layers; l++) {
            const char *s = json_string_value(json_array_get(lt, (size_t)l));
            KVF_CHECK(s && (!strcmp(s, "full_attention") || !strcmp(s, "sliding_attention")),
                      KVF_ERR_FORMAT,
                      "%s: \"layer_types\"[%d] must be \"full_attention\" or "
                      "\"sliding_attention\"",
                      r->path, l);
            c->window[l] = !strcmp(s, "sliding_attention") ? w : 0;
        }
    } else {
        for (int l = 0; l < c->n_layers; l++) c->window[l] = l >= mwl ? w : 0;
    }
    return KVF_OK;
}

static kvf_status read_gpt2(const struct rd *r, kvf_model_config *c) {
    long long v = 0;
    KVF_TRY(rd_int(r, "vocab_size", true, 0, 1, I64_MAXV, &v));
    c->vocab_size = v;
    KVF_TRY(rd_int(r, "n_embd", true, 0, 1, I64_MAXV, &v));
    c->d_model = v;
    KVF_TRY(rd_i(r, "n_layer", true, 0, 1, KVF_MAX_LAYERS, &c->n_layers));
    KVF_TRY(rd_i(r, "n_head", true, 0, 1, KVF_MAX_HEADS, &c->n_heads));
    KVF_TRY(rd_int(r, "n_positions", false, 1024, 1, I64_MAXV, &v));
    c->max_seq_len = v;
    KVF_TRY(rd_int(r, "n_inner", false, 4 * c->d_model, 1, I64_MAXV, &v));
    c->d_ff = v;
    KVF_TRY(rd_num(r, "layer_norm_epsilon", false, 1e-5, &c->norm_eps));
    KVF_TRY(rd_num(r, "initializer_range", false, 0.02, &c->init_std));
    const char *act;
    KVF_TRY(rd_str(r, "activation_function", "gelu_new", &act));
    if (!strcmp(act, "gelu_new") || !strcmp(act, "gelu_pytorch_tanh") || !strcmp(act, "gelu_fast"))
        c->gelu_exact = false;
    else if (!strcmp(act, "gelu"))
        c->gelu_exact = true;
    else
        return kvf_error_set(KVF_ERR_UNSUPPORTED,
                             "%s: not supported: activation_function \"%s\" (kvforge runs "
                             "gelu_new / gelu_pytorch_tanh / gelu_fast and gelu)",
                             r->path, act);
    bool b;
    KVF_TRY(rd_bool(r, "scale_attn_by_inverse_layer_idx", false, &b));
    KVF_CHECK(!b, KVF_ERR_UNSUPPORTED, "%s: not supported: scale_attn_by_inverse_layer_idx true",
              r->path);
    KVF_TRY(rd_bool(r, "add_cross_attention", false, &b));
    KVF_CHECK(!b, KVF_ERR_UNSUPPORTED, "%s: not supported: add_cross_attention true", r->path);
    KVF_TRY(rd_bool(r, "scale_attn_weights", true, &b));
    if (!b) c->softmax_scale = 1.0;
    KVF_TRY(rd_bool(r, "tie_word_embeddings", true, &c->tie_embeddings));
    c->n_kv_heads = c->n_heads;
    c->norm = KVF_NORM_LAYER;
    c->norm_bias = true;
    c->mlp = KVF_MLP_GELU;
    c->pos = KVF_POS_LEARNED;
    c->qkv_bias = c->o_bias = c->mlp_bias = true;
    return KVF_OK;
}

static kvf_status read_deepseek_v3(const struct rd *r, kvf_model_config *c) {
    KVF_TRY(read_llama_sizes(r, c, 4096));
    int fkd;
    KVF_TRY(rd_i(r, "first_k_dense_replace", false, 3, 0, INT_MAXV, &fkd));
    KVF_CHECK(fkd >= c->n_layers, KVF_ERR_UNSUPPORTED,
              "%s: not supported: MoE layers (first_k_dense_replace %d < num_hidden_layers %d)",
              r->path, fkd, c->n_layers);
    int nkv;
    KVF_TRY(rd_i(r, "num_key_value_heads", false, c->n_heads, 1, KVF_MAX_HEADS, &nkv));
    KVF_CHECK(nkv == c->n_heads, KVF_ERR_UNSUPPORTED,
              "%s: not supported: num_key_value_heads %d != num_attention_heads %d in MLA", r->path,
              nkv, c->n_heads);
    bool ab;
    KVF_TRY(rd_bool(r, "attention_bias", false, &ab));
    KVF_CHECK(!ab, KVF_ERR_UNSUPPORTED,
              "%s: not supported: attention_bias true for DeepseekV3ForCausalLM", r->path);
    KVF_TRY(rd_i(r, "kv_lora_rank", false, 512, 1, INT_MAXV, &c->kv_lora_rank));
    KVF_TRY(rd_i(r, "q_lora_rank", false, 1536, 1, INT_MAXV, &c->q_lora_rank));
    if (json_is_null(json_object_get(r->root, "q_lora_rank"))) c->q_lora_rank = 0;
    KVF_TRY(rd_i(r, "qk_nope_head_dim", false, 128, 0, INT_MAXV, &c->qk_nope_head_dim));
    KVF_TRY(rd_i(r, "qk_rope_head_dim", false, 64, 1, INT_MAXV, &c->qk_rope_head_dim));
    KVF_TRY(rd_i(r, "v_head_dim", false, 128, 1, INT_MAXV, &c->v_head_dim));
    int x;
    /* HF sets head_dim = qk_rope_head_dim and lets a "head_dim" key override it as the RoPE
     * width; any other value breaks HF's own forward. */
    KVF_TRY(rd_i(r, "head_dim", false, c->qk_rope_head_dim, 1, INT_MAXV, &x));
    KVF_CHECK(x == c->qk_rope_head_dim, KVF_ERR_UNSUPPORTED,
              "%s: not supported: head_dim %d != qk_rope_head_dim %d (HF rotates head_dim dims)",
              r->path, x, c->qk_rope_head_dim);
    KVF_TRY(rd_i(r, "qk_head_dim", false, c->qk_nope_head_dim + c->qk_rope_head_dim, 1, INT_MAXV, &x));
    KVF_CHECK(x == c->qk_nope_head_dim + c->qk_rope_head_dim, KVF_ERR_FORMAT,
              "%s: qk_head_dim %d != qk_nope_head_dim + qk_rope_head_dim (%d)", r->path, x,
              c->qk_nope_head_dim + c->qk_rope_head_dim);
    bool inter;
    KVF_TRY(rd_bool(r, "rope_interleave", true, &inter));
    c->rope_layout = inter ? KVF_ROPE_INTERLEAVED : KVF_ROPE_HALF;
    KVF_TRY(rd_bool(r, "tie_word_embeddings", false, &c->tie_embeddings));
    c->attn = KVF_ATTN_MLA;
    c->n_kv_heads = 0;
    c->mla_kv_norm = true;
    /* kvforge's head_dim is unused by MLA; keep its default, which needs divisibility */
    c->head_dim = c->d_model % c->n_heads ? c->qk_nope_head_dim + c->qk_rope_head_dim : 0;
    return KVF_OK;
}

/* ---- kvforge's own schema ------------------------------------------------------------------ */

static const char *const norm_names[] = {"rmsnorm", "layernorm"};
static const char *const mlp_names[] = {"swiglu", "gelu"};
static const char *const gelu_names[] = {"tanh", "erf"};
static const char *const pos_names[] = {"rope", "learned", "none"};
static const char *const layout_names[] = {"half", "interleaved"};
static const char *const attn_names[] = {"standard", "mla", "mla_partial_rope"};

static const char *const kvforge_keys[] = {
    "architectures", "model_type", "kvforge_format", "vocab_size", "hidden_size",
    "num_hidden_layers", "num_attention_heads", "num_query_heads", "num_key_value_heads",
    "head_dim", "v_head_dim", "intermediate_size", "max_position_embeddings", "norm", "norm_eps",
    "norm_bias", "mlp", "gelu_approximation", "position", "rope_theta", "rope_layout", "rope_dim",
    "qkv_bias", "o_bias", "mlp_bias", "tie_word_embeddings", "attention", "kv_source",
    "sliding_window", "kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
    "mla_kv_norm", "partial_rope_dim", "softmax_scale", "initializer_range",
    /* generic keys HF tooling adds to any config.json */
    "torch_dtype", "dtype", "transformers_version", "bos_token_id", "eos_token_id",
    "pad_token_id", "use_cache", "_name_or_path", "auto_map",
};

static kvf_status rd_layer_list(const struct rd *r, const char *key, int n, bool is_window,
                                kvf_model_config *c) {
    json_t *v = get(r, key);
    if (!v) return KVF_OK;
    KVF_CHECK(json_is_array(v) && json_array_size(v) == (size_t)n, KVF_ERR_FORMAT,
              "%s: \"%s\" must be a list of %d integers (one per layer), got %s%s", r->path, key,
              n, jtype(v), json_is_array(v) ? " of another length" : "");
    for (int l = 0; l < n; l++) {
        long long x = 0;
        char name[64];
        snprintf(name, sizeof name, "%s[%d]", key, l);
        KVF_TRY(as_int(r, name, json_array_get(v, (size_t)l), 0, is_window ? I64_MAXV : l, &x));
        if (is_window) c->window[l] = x;
        else c->kv_source[l] = (int)x;
    }
    return KVF_OK;
}

static kvf_status read_kvforge(const struct rd *r, kvf_model_config *c) {
    const char *k;
    json_t *v;
    json_object_foreach(r->root, k, v) {
        bool known = false;
        for (size_t i = 0; !known && i < sizeof kvforge_keys / sizeof *kvforge_keys; i++)
            known = !strcmp(k, kvforge_keys[i]);
        KVF_CHECK(known, KVF_ERR_FORMAT,
                  "%s: unknown key \"%s\" for model_type \"kvforge\" (see docs/formats.md)",
                  r->path, k);
    }
    int fmt;
    KVF_TRY(rd_i(r, "kvforge_format", false, KVF_FORMAT_VERSION, 1, INT_MAXV, &fmt));
    KVF_CHECK(fmt == KVF_FORMAT_VERSION, KVF_ERR_UNSUPPORTED,
              "%s: not supported: kvforge_format %d (this build reads version %d)", r->path, fmt,
              KVF_FORMAT_VERSION);
    long long x = 0;
    int e;
    KVF_TRY(rd_int(r, "vocab_size", true, 0, 1, I64_MAXV, &x));
    c->vocab_size = x;
    KVF_TRY(rd_int(r, "hidden_size", true, 0, 1, I64_MAXV, &x));
    c->d_model = x;
    KVF_TRY(rd_i(r, "num_hidden_layers", true, 0, 1, KVF_MAX_LAYERS, &c->n_layers));
    KVF_TRY(rd_i(r, "num_attention_heads", true, 0, 1, KVF_MAX_HEADS, &c->n_heads));
    KVF_TRY(rd_i(r, "num_query_heads", false, 0, 0, KVF_MAX_HEADS, &c->n_q_heads));
    KVF_TRY(rd_i(r, "num_key_value_heads", false, 0, 0, KVF_MAX_HEADS, &c->n_kv_heads));
    KVF_TRY(rd_i(r, "head_dim", false, 0, 0, INT_MAXV, &c->head_dim));
    KVF_TRY(rd_i(r, "v_head_dim", false, 0, 0, INT_MAXV, &c->v_head_dim));
    KVF_TRY(rd_int(r, "intermediate_size", false, 0, 0, I64_MAXV, &x));
    c->d_ff = x;
    KVF_TRY(rd_int(r, "max_position_embeddings", false, c->max_seq_len, 1, I64_MAXV, &x));
    c->max_seq_len = x;
    KVF_TRY(rd_enum(r, "norm", norm_names, 2, c->norm, &e));
    c->norm = (enum kvf_norm_kind)e;
    KVF_TRY(rd_num(r, "norm_eps", false, c->norm_eps, &c->norm_eps));
    KVF_TRY(rd_bool(r, "norm_bias", c->norm_bias, &c->norm_bias));
    KVF_TRY(rd_enum(r, "mlp", mlp_names, 2, c->mlp, &e));
    c->mlp = (enum kvf_mlp_kind)e;
    KVF_TRY(rd_enum(r, "gelu_approximation", gelu_names, 2, c->gelu_exact, &e));
    c->gelu_exact = e == 1;
    KVF_TRY(rd_enum(r, "position", pos_names, 3, c->pos, &e));
    c->pos = (enum kvf_pos_kind)e;
    KVF_TRY(rd_num(r, "rope_theta", false, c->rope_theta, &c->rope_theta));
    KVF_TRY(rd_enum(r, "rope_layout", layout_names, 2, c->rope_layout, &e));
    c->rope_layout = (kvf_rope_layout)e;
    KVF_TRY(rd_i(r, "rope_dim", false, 0, 0, INT_MAXV, &c->rope_dim));
    KVF_TRY(rd_bool(r, "qkv_bias", c->qkv_bias, &c->qkv_bias));
    KVF_TRY(rd_bool(r, "o_bias", c->o_bias, &c->o_bias));
    KVF_TRY(rd_bool(r, "mlp_bias", c->mlp_bias, &c->mlp_bias));
    KVF_TRY(rd_bool(r, "tie_word_embeddings", c->tie_embeddings, &c->tie_embeddings));
    KVF_TRY(rd_enum(r, "attention", attn_names, 3, c->attn, &e));
    c->attn = (enum kvf_attn_kind)e;
    KVF_TRY(rd_layer_list(r, "kv_source", c->n_layers, false, c));
    KVF_TRY(rd_layer_list(r, "sliding_window", c->n_layers, true, c));
    KVF_TRY(rd_i(r, "kv_lora_rank", false, 0, 0, INT_MAXV, &c->kv_lora_rank));
    KVF_TRY(rd_i(r, "q_lora_rank", false, 0, 0, INT_MAXV, &c->q_lora_rank));
    KVF_TRY(rd_i(r, "qk_nope_head_dim", false, 0, 0, INT_MAXV, &c->qk_nope_head_dim));
    KVF_TRY(rd_i(r, "qk_rope_head_dim", false, 0, 0, INT_MAXV, &c->qk_rope_head_dim));
    KVF_TRY(rd_bool(r, "mla_kv_norm", c->mla_kv_norm, &c->mla_kv_norm));
    KVF_TRY(rd_i(r, "partial_rope_dim", false, 0, 0, INT_MAXV, &c->partial_rope_dim));
    KVF_TRY(rd_num(r, "softmax_scale", false, 0.0, &c->softmax_scale));
    KVF_CHECK(c->softmax_scale >= 0, KVF_ERR_FORMAT, "%s: softmax_scale must be positive",
              r->path);
    return rd_num(r, "initializer_range", false, 0.02, &c->init_std);
}

/* ---- dispatch ------------------------------------------------------------------------------ */

static kvf_status detect_arch(const struct rd *r, kvf_hf_arch *out) {
    json_t *archs = get(r, "architectures");
    const char *mt;
    KVF_TRY(rd_str(r, "model_type", NULL, &mt));
    if (archs) {
        KVF_CHECK(json_is_array(archs) && json_array_size(archs) > 0, KVF_ERR_FORMAT,
                  "%s: \"architectures\" must be a non-empty list of strings", r->path);
        const char *first = NULL;
        for (size_t i = 0; i < json_array_size(archs); i++) {
            const char *s = json_string_value(json_array_get(archs, i));
            KVF_CHECK(s, KVF_ERR_FORMAT, "%s: \"architectures\" must be a list of strings",
                      r->path);
            if (!first) first = s;
            for (int a = 0; a < KVF_HF_ARCH_COUNT; a++)
                if (!strcmp(s, arch_names[a].arch)) {
                    *out = (kvf_hf_arch)a;
                    return KVF_OK;
                }
        }
        return kvf_error_set(KVF_ERR_UNSUPPORTED,
                             "%s: not supported: architecture %s (model_type %s); kvforge reads "
                             SUPPORTED_LIST,
                             r->path, first, mt ? mt : "not given");
    }
    KVF_CHECK(mt, KVF_ERR_FORMAT,
              "%s: neither \"architectures\" nor \"model_type\" says which model this is; "
              "kvforge reads " SUPPORTED_LIST,
              r->path);
    for (int a = 0; a < KVF_HF_ARCH_COUNT; a++)
        if (!strcmp(mt, arch_names[a].model_type)) {
            *out = (kvf_hf_arch)a;
            return KVF_OK;
        }
    return kvf_error_set(KVF_ERR_UNSUPPORTED,
                         "%s: not supported: model_type %s; kvforge reads " SUPPORTED_LIST,
                         r->path, mt);
}

static kvf_status parse_root(json_t *root, const char *path, kvf_model_config *cfg,
                             kvf_hf_arch *arch_out) {
    KVF_CHECK(json_is_object(root), KVF_ERR_FORMAT, "%s: config is %s, not a JSON object", path,
              jtype(root));
    struct rd r = {path, root};
    kvf_hf_arch arch = KVF_HF_KVFORGE;
    KVF_TRY(detect_arch(&r, &arch));
    kvf_model_config c;
    kvf_model_config_defaults(&c);
    c.pos = KVF_POS_ROPE;
    switch (arch) {
    case KVF_HF_LLAMA: KVF_TRY(read_llama(&r, &c)); break;
    case KVF_HF_QWEN2: KVF_TRY(read_qwen2(&r, &c)); break;
    case KVF_HF_GPT2: KVF_TRY(read_gpt2(&r, &c)); break;
    case KVF_HF_DEEPSEEK_V3: KVF_TRY(read_deepseek_v3(&r, &c)); break;
    default: KVF_TRY(read_kvforge(&r, &c)); break;
    }
    if (kvf_model_config_resolve(&c) != KVF_OK) {
        /* re-issue the validation message with the file's name in front */
        char msg[768];
        snprintf(msg, sizeof msg, "%s", kvf_error_message());
        kvf_status code = kvf_error_code();
        kvf_error_clear();
        return kvf_error_set(code, "%s: %s", path, msg);
    }
    *cfg = c;
    if (arch_out) *arch_out = arch;
    return KVF_OK;
}

kvf_status kvf_hf_config_parse(const char *json, const char *path, kvf_model_config *cfg,
                               kvf_hf_arch *arch) {
    KVF_CHECK(json && cfg, KVF_ERR_ARG, "kvf_hf_config_parse: NULL argument");
    if (!path) path = "config.json";
    json_error_t err;
    json_t *root = json_loads(json, JSON_REJECT_DUPLICATES, &err);
    KVF_CHECK(root, KVF_ERR_FORMAT, "%s: not valid JSON: %s (line %d, column %d)", path,
              err.text, err.line, err.column);
    kvf_status s = parse_root(root, path, cfg, arch);
    json_decref(root);
    return s;
}

kvf_status kvf_hf_config_read(const char *path, kvf_model_config *cfg, char *arch,
                              size_t arch_len) {
    kvf_hf_arch a = KVF_HF_KVFORGE;
    KVF_TRY(kvf_hf_config_read_arch(path, cfg, &a));
    if (arch && arch_len) snprintf(arch, arch_len, "%s", kvf_hf_arch_name(a));
    return KVF_OK;
}

kvf_status kvf_hf_config_read_arch(const char *path, kvf_model_config *cfg, kvf_hf_arch *arch) {
    KVF_CHECK(path && cfg, KVF_ERR_ARG, "kvf_hf_config_read: NULL argument");
    struct stat st;
    char *file = NULL;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        size_t n = strlen(path) + 16;
        file = malloc(n);
        KVF_CHECK(file, KVF_ERR_OOM, "%s: out of memory", path);
        snprintf(file, n, "%s%sconfig.json", path, path[strlen(path) - 1] == '/' ? "" : "/");
        path = file;
    }
    json_error_t err;
    errno = 0;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
    int e = errno;
    kvf_status s;
    if (!root) {
        bool io = err.line < 0;
        s = io ? kvf_error_set(KVF_ERR_IO, "cannot read %s: %s", path,
                               e ? strerror(e) : err.text)
               : kvf_error_set(KVF_ERR_FORMAT, "%s: not valid JSON: %s (line %d, column %d)",
                               path, err.text, err.line, err.column);
    } else {
        s = parse_root(root, path, cfg, arch);
        json_decref(root);
    }
    free(file);
    return s;
}

/* ============================================================================================
 * which architecture fits
 * ========================================================================================== */

static bool scale_is_default(const kvf_model_config *c) {
    return c->softmax_scale == 1.0 / sqrt((double)kvf_model_qk_head_dim(c));
}

static bool all_producers(const kvf_model_config *c) {
    for (int l = 0; l < c->n_layers; l++)
        if (c->kv_source[l] != l) return false;
    return true;
}

static bool no_windows(const kvf_model_config *c) {
    for (int l = 0; l < c->n_layers; l++)
        if (c->window[l]) return false;
    return true;
}

/* Windowed layers form a suffix [k, n) with one window (Qwen2's max_window_layers); *k = n
 * when no layer is windowed. */
static bool window_suffix(const kvf_model_config *c, int *k, int64_t *w) {
    int first = c->n_layers;
    for (int l = 0; l < c->n_layers; l++)
        if (c->window[l]) {
            first = l;
            break;
        }
    *k = first;
    *w = first < c->n_layers ? c->window[first] : 0;
    for (int l = first; l < c->n_layers; l++)
        if (c->window[l] != *w) return false;
    return true;
}

kvf_hf_arch kvf_hf_config_arch(const kvf_model_config *c) {
    if (!all_producers(c) || c->n_q_heads != c->n_heads) return KVF_HF_KVFORGE;
    bool rms_swiglu = c->norm == KVF_NORM_RMS && !c->norm_bias && c->mlp == KVF_MLP_SWIGLU;
    if (c->attn == KVF_ATTN_MLA) {
        if (rms_swiglu && !c->o_bias && !c->mlp_bias && c->pos == KVF_POS_ROPE &&
            c->mla_kv_norm && no_windows(c) && scale_is_default(c))
            return KVF_HF_DEEPSEEK_V3;
        return KVF_HF_KVFORGE;
    }
    if (c->attn != KVF_ATTN_STANDARD || c->v_head_dim != c->head_dim) return KVF_HF_KVFORGE;
    if (c->pos == KVF_POS_LEARNED) {
        if (c->norm == KVF_NORM_LAYER && c->norm_bias && c->mlp == KVF_MLP_GELU && c->qkv_bias &&
            c->o_bias && c->mlp_bias && c->n_kv_heads == c->n_heads &&
            (int64_t)c->head_dim * c->n_heads == c->d_model && no_windows(c) &&
            (scale_is_default(c) || c->softmax_scale == 1.0))
            return KVF_HF_GPT2;
        return KVF_HF_KVFORGE;
    }
    if (c->pos != KVF_POS_ROPE || c->rope_layout != KVF_ROPE_HALF ||
        c->rope_dim != c->head_dim || !rms_swiglu || !scale_is_default(c))
        return KVF_HF_KVFORGE;
    int k;
    int64_t w;
    if (c->qkv_bias && !c->o_bias && !c->mlp_bias && window_suffix(c, &k, &w))
        return KVF_HF_QWEN2;
    if (c->qkv_bias == c->o_bias && no_windows(c)) return KVF_HF_LLAMA;
    return KVF_HF_KVFORGE;
}

/* ============================================================================================
 * writing: a small ordered JSON emitter (numbers in their shortest exact form)
 * ========================================================================================== */

struct jw {
    char *buf;
    size_t len, cap;
    bool oom;
    bool first;
};

static void jw_raw(struct jw *w, const char *s) {
    size_t n = strlen(s);
    if (w->oom) return;
    if (w->len + n + 1 > w->cap) {
        size_t cap = w->cap ? w->cap : 1024;
        while (cap < w->len + n + 1) cap *= 2;
        char *b = realloc(w->buf, cap);
        if (!b) {
            w->oom = true;
            return;
        }
        w->buf = b;
        w->cap = cap;
    }
    memcpy(w->buf + w->len, s, n + 1);
    w->len += n;
}

static void jw_fmt(struct jw *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void jw_fmt(struct jw *w, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    jw_raw(w, tmp);
}

static void jw_key(struct jw *w, const char *k) {
    jw_raw(w, w->first ? "\n  \"" : ",\n  \"");
    w->first = false;
    jw_raw(w, k); /* keys are kvforge's own ASCII literals */
    jw_raw(w, "\": ");
}

/* Shortest %.Ng that reads back as v, with ".0" added to integral values so Python reads a
 * float. v must be finite. */
static void fmt_double(double v, char *out, size_t n) {
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(out, n, "%.1f", v); /* 500.0, not 5e+02 */
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(out, n, "%.*g", p, v);
        if (strtod(out, NULL) == v) break;
    }
    if (!strpbrk(out, ".eEn")) {
        size_t l = strlen(out);
        if (l + 3 <= n) memcpy(out + l, ".0", 3);
    }
}

static void jw_int(struct jw *w, const char *k, long long v) {
    jw_key(w, k);
    jw_fmt(w, "%lld", v);
}
static void jw_num(struct jw *w, const char *k, double v) {
    char b[48];
    fmt_double(v, b, sizeof b);
    jw_key(w, k);
    jw_raw(w, b);
}
static void jw_bool(struct jw *w, const char *k, bool v) {
    jw_key(w, k);
    jw_raw(w, v ? "true" : "false");
}
static void jw_null(struct jw *w, const char *k) {
    jw_key(w, k);
    jw_raw(w, "null");
}
static void jw_str(struct jw *w, const char *k, const char *v) {
    jw_key(w, k);
    jw_fmt(w, "\"%s\"", v); /* values are kvforge's own ASCII literals */
}
static void jw_strs(struct jw *w, const char *k, const char *const *v, int n) {
    jw_key(w, k);
    jw_raw(w, "[");
    for (int i = 0; i < n; i++) jw_fmt(w, "%s\"%s\"", i ? ", " : "", v[i]);
    jw_raw(w, "]");
}
static void jw_ints(struct jw *w, const char *k, const int64_t *v, int n) {
    jw_key(w, k);
    jw_raw(w, "[");
    for (int i = 0; i < n; i++) jw_fmt(w, "%s%lld", i ? ", " : "", (long long)v[i]);
    jw_raw(w, "]");
}

static const char *torch_dtype_name(kvf_dtype t) {
    switch (t) {
    case KVF_DTYPE_F32: return "float32";
    case KVF_DTYPE_BF16: return "bfloat16";
    case KVF_DTYPE_F16: return "float16";
    case KVF_DTYPE_F64: return "float64";
    default: return NULL;
    }
}

static void write_head(struct jw *w, kvf_hf_arch a) {
    const char *arch = arch_names[a].arch;
    jw_strs(w, "architectures", &arch, 1);
    jw_str(w, "model_type", arch_names[a].model_type);
}

static void write_llama_core(struct jw *w, const kvf_model_config *c) {
    jw_int(w, "vocab_size", c->vocab_size);
    jw_int(w, "hidden_size", c->d_model);
    jw_int(w, "intermediate_size", c->d_ff);
    jw_int(w, "num_hidden_layers", c->n_layers);
    jw_int(w, "num_attention_heads", c->n_heads);
    jw_int(w, "num_key_value_heads", c->n_kv_heads);
    jw_str(w, "hidden_act", "silu");
    jw_int(w, "max_position_embeddings", c->max_seq_len);
    jw_num(w, "rms_norm_eps", c->norm_eps);
    /* legacy keys: read by transformers 4.x and converted by 5.x */
    jw_num(w, "rope_theta", c->rope_theta);
    jw_null(w, "rope_scaling");
    jw_num(w, "attention_dropout", 0.0);
}

static void write_llama(struct jw *w, const kvf_model_config *c) {
    write_llama_core(w, c);
    jw_int(w, "head_dim", c->head_dim);
    jw_bool(w, "attention_bias", c->qkv_bias);
    jw_bool(w, "mlp_bias", c->mlp_bias);
}

static void write_qwen2(struct jw *w, const kvf_model_config *c) {
    write_llama_core(w, c);
    jw_int(w, "head_dim", c->head_dim);
    int k;
    int64_t win;
    window_suffix(c, &k, &win);
    jw_bool(w, "use_sliding_window", k < c->n_layers);
    if (k < c->n_layers) jw_int(w, "sliding_window", win);
    else jw_null(w, "sliding_window");
    jw_int(w, "max_window_layers", k);
    const char *types[KVF_MAX_LAYERS];
    for (int l = 0; l < c->n_layers; l++)
        types[l] = c->window[l] ? "sliding_attention" : "full_attention";
    jw_strs(w, "layer_types", types, c->n_layers);
}

static void write_gpt2(struct jw *w, const kvf_model_config *c) {
    jw_int(w, "vocab_size", c->vocab_size);
    jw_int(w, "n_embd", c->d_model);
    jw_int(w, "n_layer", c->n_layers);
    jw_int(w, "n_head", c->n_heads);
    jw_int(w, "n_positions", c->max_seq_len);
    jw_int(w, "n_inner", c->d_ff);
    jw_str(w, "activation_function", c->gelu_exact ? "gelu" : "gelu_new");
    jw_num(w, "layer_norm_epsilon", c->norm_eps);
    jw_bool(w, "scale_attn_weights", scale_is_default(c));
    jw_bool(w, "scale_attn_by_inverse_layer_idx", false);
    jw_bool(w, "reorder_and_upcast_attn", false);
}

static void write_deepseek_v3(struct jw *w, const kvf_model_config *c) {
    jw_int(w, "vocab_size", c->vocab_size);
    jw_int(w, "hidden_size", c->d_model);
    jw_int(w, "intermediate_size", c->d_ff);
    jw_int(w, "num_hidden_layers", c->n_layers);
    jw_int(w, "num_attention_heads", c->n_heads);
    jw_int(w, "num_key_value_heads", c->n_heads);
    if (c->q_lora_rank) jw_int(w, "q_lora_rank", c->q_lora_rank);
    else jw_null(w, "q_lora_rank");
    jw_int(w, "kv_lora_rank", c->kv_lora_rank);
    jw_int(w, "qk_nope_head_dim", c->qk_nope_head_dim);
    jw_int(w, "qk_rope_head_dim", c->qk_rope_head_dim);
    jw_int(w, "v_head_dim", c->v_head_dim);
    jw_int(w, "head_dim", c->qk_rope_head_dim); /* HF: the RoPE width */
    /* every layer dense; MoE fields as valid ints so strict readers accept the config */
    jw_int(w, "first_k_dense_replace", c->n_layers);
    jw_int(w, "moe_layer_freq", 1);
    jw_int(w, "n_routed_experts", 1);
    jw_int(w, "n_shared_experts", 1);
    jw_int(w, "num_experts_per_tok", 1);
    jw_int(w, "n_group", 1);
    jw_int(w, "topk_group", 1);
    jw_int(w, "moe_intermediate_size", c->d_ff);
    jw_num(w, "routed_scaling_factor", 1.0);
    jw_bool(w, "norm_topk_prob", true);
    jw_str(w, "hidden_act", "silu");
    jw_int(w, "max_position_embeddings", c->max_seq_len);
    jw_num(w, "rms_norm_eps", c->norm_eps);
    jw_num(w, "rope_theta", c->rope_theta);
    jw_null(w, "rope_scaling");
    jw_bool(w, "rope_interleave", c->rope_layout == KVF_ROPE_INTERLEAVED);
    jw_bool(w, "attention_bias", false);
    jw_num(w, "attention_dropout", 0.0);
}

static void write_kvforge(struct jw *w, const kvf_model_config *c) {
    jw_int(w, "kvforge_format", KVF_FORMAT_VERSION);
    jw_int(w, "vocab_size", c->vocab_size);
    jw_int(w, "hidden_size", c->d_model);
    jw_int(w, "num_hidden_layers", c->n_layers);
    jw_int(w, "num_attention_heads", c->n_heads);
    jw_int(w, "num_query_heads", c->n_q_heads);
    jw_int(w, "num_key_value_heads", c->n_kv_heads);
    jw_int(w, "head_dim", c->head_dim);
    jw_int(w, "v_head_dim", c->v_head_dim);
    jw_int(w, "intermediate_size", c->d_ff);
    jw_int(w, "max_position_embeddings", c->max_seq_len);
    jw_str(w, "norm", norm_names[c->norm]);
    jw_num(w, "norm_eps", c->norm_eps);
    jw_bool(w, "norm_bias", c->norm_bias);
    jw_str(w, "mlp", mlp_names[c->mlp]);
    jw_str(w, "gelu_approximation", gelu_names[c->gelu_exact ? 1 : 0]);
    jw_str(w, "position", pos_names[c->pos]);
    jw_num(w, "rope_theta", c->rope_theta);
    jw_str(w, "rope_layout", layout_names[c->rope_layout]);
    jw_int(w, "rope_dim", c->rope_dim);
    jw_bool(w, "qkv_bias", c->qkv_bias);
    jw_bool(w, "o_bias", c->o_bias);
    jw_bool(w, "mlp_bias", c->mlp_bias);
    jw_str(w, "attention", attn_names[c->attn]);
    int64_t src[KVF_MAX_LAYERS];
    for (int l = 0; l < c->n_layers; l++) src[l] = c->kv_source[l];
    jw_ints(w, "kv_source", src, c->n_layers);
    jw_ints(w, "sliding_window", c->window, c->n_layers);
    jw_int(w, "kv_lora_rank", c->kv_lora_rank);
    jw_int(w, "q_lora_rank", c->q_lora_rank);
    jw_int(w, "qk_nope_head_dim", c->qk_nope_head_dim);
    jw_int(w, "qk_rope_head_dim", c->qk_rope_head_dim);
    jw_bool(w, "mla_kv_norm", c->mla_kv_norm);
    jw_int(w, "partial_rope_dim", c->partial_rope_dim);
    if (scale_is_default(c)) jw_null(w, "softmax_scale");
    else jw_num(w, "softmax_scale", c->softmax_scale);
}

static bool finite_fields(const kvf_model_config *c) {
    return isfinite(c->norm_eps) && isfinite(c->rope_theta) && isfinite(c->softmax_scale) &&
           isfinite(c->init_std);
}

char *kvf_hf_config_dump(const kvf_model_config *cfg, kvf_dtype weights_dtype) {
    KVF_CHECK_NULL(cfg, KVF_ERR_ARG, "kvf_hf_config_dump: NULL config");
    kvf_model_config c = *cfg;
    if (kvf_model_config_resolve(&c) != KVF_OK) return NULL;
    KVF_CHECK_NULL(finite_fields(&c), KVF_ERR_NUMERIC,
                   "config.json: a number of the config is not finite");
    KVF_CHECK_NULL((int)c.norm >= 0 && c.norm <= KVF_NORM_LAYER && (int)c.mlp >= 0 &&
                       c.mlp <= KVF_MLP_GELU && (int)c.pos >= 0 && c.pos <= KVF_POS_NONE &&
                       (int)c.attn >= 0 && c.attn <= KVF_ATTN_MLA_PARTIAL_ROPE &&
                       (int)c.rope_layout >= 0 && c.rope_layout <= KVF_ROPE_INTERLEAVED,
                   KVF_ERR_ARG, "config.json: the config holds an unknown enum value");
    const char *td = torch_dtype_name(weights_dtype);
    KVF_CHECK_NULL(td || weights_dtype == KVF_DTYPE_COUNT, KVF_ERR_ARG,
                   "config.json: weights dtype %s is not a float dtype",
                   kvf_dtype_name(weights_dtype));
    kvf_hf_arch a = kvf_hf_config_arch(&c);
    struct jw w = {.first = true};
    jw_raw(&w, "{");
    write_head(&w, a);
    switch (a) {
    case KVF_HF_LLAMA: write_llama(&w, &c); break;
    case KVF_HF_QWEN2: write_qwen2(&w, &c); break;
    case KVF_HF_GPT2: write_gpt2(&w, &c); break;
    case KVF_HF_DEEPSEEK_V3: write_deepseek_v3(&w, &c); break;
    default: write_kvforge(&w, &c); break;
    }
    jw_bool(&w, "tie_word_embeddings", c.tie_embeddings);
    jw_num(&w, "initializer_range", c.init_std);
    if (td) jw_str(&w, "torch_dtype", td);
    jw_bool(&w, "use_cache", true);
    jw_raw(&w, "\n}\n");
    if (w.oom) {
        free(w.buf);
        kvf_error_set(KVF_ERR_OOM, "config.json: out of memory");
        return NULL;
    }
    return w.buf;
}

kvf_status kvf_hf_config_write(const kvf_model_config *cfg, kvf_dtype weights_dtype,
                               const char *path) {
    KVF_CHECK(cfg && path, KVF_ERR_ARG, "kvf_hf_config_write: NULL argument");
    char *text = kvf_hf_config_dump(cfg, weights_dtype);
    if (!text) {
        char msg[768];
        snprintf(msg, sizeof msg, "%s", kvf_error_message());
        kvf_status code = kvf_error_code();
        kvf_error_clear();
        return kvf_error_set(code, "cannot write %s: %s", path, msg);
    }
    size_t n = strlen(path) + 32;
    char *tmp = malloc(n);
    if (!tmp) {
        free(text);
        return kvf_error_set(KVF_ERR_OOM, "cannot write %s: out of memory", path);
    }
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    kvf_status s = KVF_OK;
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        s = kvf_error_set(KVF_ERR_IO, "cannot write %s (creating %s): %s", path, tmp,
                          strerror(errno));
    } else {
        size_t len = strlen(text);
        errno = 0;
        if (fwrite(text, 1, len, fp) != len || fflush(fp) != 0 || fsync(fileno(fp)) != 0)
            s = kvf_error_set(KVF_ERR_IO, "cannot write %s (writing %s): %s", path, tmp,
                              strerror(errno ? errno : EIO));
        errno = 0;
        if (fclose(fp) != 0 && s == KVF_OK)
            s = kvf_error_set(KVF_ERR_IO, "cannot write %s (closing %s): %s", path, tmp,
                              strerror(errno ? errno : EIO));
        if (s == KVF_OK && rename(tmp, path) != 0)
            s = kvf_error_set(KVF_ERR_IO, "cannot write %s (renaming %s): %s", path, tmp,
                              strerror(errno));
        if (s != KVF_OK) unlink(tmp);
    }
    free(tmp);
    free(text);
    return s;
}

/* ============================================================================================
 * comparison
 * ========================================================================================== */

bool kvf_hf_config_equal(const kvf_model_config *a, const kvf_model_config *b, char *why,
                         size_t why_len) {
    char dummy[8];
    if (!why) {
        why = dummy;
        why_len = sizeof dummy;
    }
#define EQ(f)                                                                                  \
    if (a->f != b->f) {                                                                        \
        snprintf(why, why_len, "%s differs: %.17g vs %.17g", #f, (double)a->f, (double)b->f);   \
        return false;                                                                          \
    }
    /* every field of kvf_model_config (config.h); extend when it grows */
    EQ(vocab_size) EQ(d_model) EQ(n_layers) EQ(n_heads) EQ(n_q_heads) EQ(n_kv_heads)
    EQ(head_dim) EQ(v_head_dim) EQ(max_seq_len) EQ(norm) EQ(norm_eps) EQ(mlp) EQ(d_ff)
    EQ(gelu_exact) EQ(pos) EQ(rope_theta) EQ(rope_layout) EQ(rope_dim) EQ(qkv_bias) EQ(o_bias)
    EQ(mlp_bias) EQ(norm_bias) EQ(tie_embeddings) EQ(attn) EQ(kv_lora_rank) EQ(q_lora_rank)
    EQ(qk_nope_head_dim) EQ(qk_rope_head_dim) EQ(mla_kv_norm) EQ(partial_rope_dim) EQ(init_std)
    EQ(param_dtype) EQ(softmax_scale)
#undef EQ
    for (int l = 0; l < a->n_layers && l < KVF_MAX_LAYERS; l++) {
        if (a->kv_source[l] != b->kv_source[l]) {
            snprintf(why, why_len, "kv_source[%d] differs: %d vs %d", l, a->kv_source[l],
                     b->kv_source[l]);
            return false;
        }
        if (a->window[l] != b->window[l]) {
            snprintf(why, why_len, "window[%d] differs: %lld vs %lld", l,
                     (long long)a->window[l], (long long)b->window[l]);
            return false;
        }
    }
    return true;
}
