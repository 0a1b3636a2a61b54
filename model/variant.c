#include "variant.h"

#include <stdio.h>
#include <string.h>

static kvf_status bad(const char *name, const char *why) {
    return kvf_error_set(KVF_ERR_ARG,
                         "attention variant '%s': %s (known: mha, mqa, gqaN, sqa_qAkvB, mla_rR[_dD], "
                         "mla_partial_rR_dD, claK_<variant>, swaW_<variant>)",
                         name, why);
}

/* name is the whole user-given string (errors name it), s the part still to parse */
static kvf_status apply(kvf_model_config *c, const char *name, const char *s) {
    int a, b, n = 0;
    /* prefixes that modify a base variant (n stays 0 when the '_' after the number is
     * missing: sscanf then stops before %n) */
    if (sscanf(s, "cla%d_%n", &a, &n) == 1 && n > 0) {
        if (a < 1) return bad(name, "sharing factor must be >= 1");
        KVF_TRY(apply(c, name, s + n));
        for (int l = 0; l < KVF_MAX_LAYERS; l++) c->kv_source[l] = l - l % a;
        return KVF_OK;
    }
    n = 0;
    if (sscanf(s, "swa%d_%n", &a, &n) == 1 && n > 0) {
        if (a < 1) return bad(name, "window must be >= 1");
        KVF_TRY(apply(c, name, s + n));
        for (int l = 0; l < KVF_MAX_LAYERS; l++) c->window[l] = (l % 2 == 0) ? a : 0;
        return KVF_OK;
    }
    c->attn = KVF_ATTN_STANDARD;
    c->n_q_heads = 0;
    c->n_kv_heads = 0;
    if (!strcmp(s, "mha")) return KVF_OK;
    if (!strcmp(s, "mqa")) {
        c->n_kv_heads = 1;
        return KVF_OK;
    }
    if (sscanf(s, "gqa%d%n", &a, &n) == 1 && s[n] == '\0') {
        if (a < 1) return bad(name, "KV head count must be >= 1");
        c->n_kv_heads = a;
        return KVF_OK;
    }
    if (sscanf(s, "sqa_q%dkv%d%n", &a, &b, &n) == 2 && s[n] == '\0') {
        if (a < 1 || b < 1) return bad(name, "head counts must be >= 1");
        c->n_q_heads = a;
        c->n_kv_heads = b;
        return KVF_OK;
    }
    if (sscanf(s, "mla_partial_r%d_d%d%n", &a, &b, &n) == 2 && s[n] == '\0') {
        c->attn = KVF_ATTN_MLA_PARTIAL_ROPE;
        c->kv_lora_rank = a;
        c->partial_rope_dim = b;
        return KVF_OK;
    }
    if (sscanf(s, "mla_r%d%n", &a, &n) == 1) {
        int hd = c->head_dim ? c->head_dim : (c->n_heads ? (int)(c->d_model / c->n_heads) : 0);
        c->attn = KVF_ATTN_MLA;
        c->kv_lora_rank = a;
        c->qk_nope_head_dim = hd;
        c->qk_rope_head_dim = hd / 4 * 2 > 0 ? hd / 4 * 2 : 2; /* half the head, even */
        c->v_head_dim = hd;
        c->rope_layout = KVF_ROPE_INTERLEAVED;
        if (s[n] == '\0') return KVF_OK;
        int m;
        if (sscanf(s + n, "_d%d%n", &b, &m) == 1 && s[n + m] == '\0') {
            c->qk_rope_head_dim = b;
            return KVF_OK;
        }
    }
    return bad(name, "unknown name");
}

kvf_status kvf_model_config_apply_variant(kvf_model_config *c, const char *name) {
    return apply(c, name, name);
}
