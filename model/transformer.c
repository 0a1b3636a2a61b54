#include "transformer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"
#include "autograd/recompute.h"
#include "autograd/rng.h"

/* Registers parameter `fmt` (printf-style with the layer index) and records its index. */
#define P(field, nd, a, b, ...)                                                               \
    do {                                                                                      \
        snprintf(name, sizeof name, __VA_ARGS__);                                             \
        if (ok && kvf_params_add(m->params, name, nd, (int64_t[]){a, b}) < 0) ok = false;     \
        if (ok) names[n_names++] = (struct pending){&(field), kvf_params_count(m->params) - 1}; \
    } while (0)

struct pending {
    kvf_tensor **slot;
    int index;
};

kvf_model *kvf_model_init(const kvf_model_config *cfg, kvf_device device) {
    kvf_model *m = calloc(1, sizeof *m);
    KVF_CHECK_NULL(m, KVF_ERR_OOM, "model: out of host memory");
    m->cfg = *cfg;
    m->device = device;
    if (kvf_model_config_resolve(&m->cfg) != KVF_OK) {
        free(m);
        return NULL;
    }
    m->compute_dtype = m->cfg.param_dtype;
    const kvf_model_config *c = &m->cfg;
    m->params = kvf_params_init();
    if (m->params) kvf_params_set_dtype(m->params, c->param_dtype);
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    struct pending *names = calloc((size_t)(c->n_layers * 32 + 16), sizeof *names);
    if (!m->params || !m->layers || !names) {
        free(names);
        kvf_model_free(m);
        kvf_error_set(KVF_ERR_OOM, "model: out of host memory");
        return NULL;
    }
    int n_names = 0;
    bool ok = true;
    char name[160];
    int64_t d = c->d_model, nq = c->n_q_heads, nkv = c->n_kv_heads, hd = c->head_dim,
            vd = c->v_head_dim;
    P(m->embed, 2, c->vocab_size, d, "model.embed_tokens.weight");
    if (c->pos == KVF_POS_LEARNED) P(m->pos_embed, 2, c->max_seq_len, d, "model.embed_positions.weight");
    for (int l = 0; l < c->n_layers; l++) {
        struct kvf_layer_weights *L = &m->layers[l];
        bool prod = kvf_model_is_producer(c, l);
        const char *pre = "model.layers";
        P(L->ln1_w, 1, d, 0, "%s.%d.input_layernorm.weight", pre, l);
        if (c->norm_bias) P(L->ln1_b, 1, d, 0, "%s.%d.input_layernorm.bias", pre, l);
        if (c->attn == KVF_ATTN_MLA) {
            int64_t qk = kvf_model_qk_head_dim(c), r = c->kv_lora_rank, rq = c->q_lora_rank;
            if (rq) {
                P(L->q_a_w, 2, rq, d, "%s.%d.self_attn.q_a_proj.weight", pre, l);
                P(L->q_a_norm, 1, rq, 0, "%s.%d.self_attn.q_a_layernorm.weight", pre, l);
                P(L->q_b_w, 2, nq * qk, rq, "%s.%d.self_attn.q_b_proj.weight", pre, l);
            } else {
                P(L->q_w, 2, nq * qk, d, "%s.%d.self_attn.q_proj.weight", pre, l);
            }
            if (prod) {
                P(L->kv_a_w, 2, r + c->qk_rope_head_dim, d, "%s.%d.self_attn.kv_a_proj_with_mqa.weight", pre, l);
                if (c->mla_kv_norm) P(L->kv_a_norm, 1, r, 0, "%s.%d.self_attn.kv_a_layernorm.weight", pre, l);
                P(L->kv_b_w, 2, nq * (c->qk_nope_head_dim + vd), r, "%s.%d.self_attn.kv_b_proj.weight", pre, l);
            }
        } else {
            P(L->q_w, 2, nq * hd, d, "%s.%d.self_attn.q_proj.weight", pre, l);
            if (c->qkv_bias && c->attn == KVF_ATTN_STANDARD) P(L->q_b, 1, nq * hd, 0, "%s.%d.self_attn.q_proj.bias", pre, l);
            if (prod && c->attn == KVF_ATTN_STANDARD) {
                P(L->k_w, 2, nkv * hd, d, "%s.%d.self_attn.k_proj.weight", pre, l);
                if (c->qkv_bias) P(L->k_b, 1, nkv * hd, 0, "%s.%d.self_attn.k_proj.bias", pre, l);
                P(L->v_w, 2, nkv * vd, d, "%s.%d.self_attn.v_proj.weight", pre, l);
                if (c->qkv_bias) P(L->v_b, 1, nkv * vd, 0, "%s.%d.self_attn.v_proj.bias", pre, l);
            } else if (prod) { /* partial-RoPE MLA */
                int64_t pr = c->partial_rope_dim, r = c->kv_lora_rank;
                if (pr) P(L->k_rope_w, 2, nkv * pr, d, "%s.%d.self_attn.k_rope_proj.weight", pre, l);
                P(L->kv_a_w, 2, r, d, "%s.%d.self_attn.kv_a_proj.weight", pre, l);
                P(L->kv_b_w, 2, nkv * ((hd - pr) + vd), r, "%s.%d.self_attn.kv_b_proj.weight", pre, l);
            }
        }
        P(L->o_w, 2, d, nq * vd, "%s.%d.self_attn.o_proj.weight", pre, l);
        if (c->o_bias) P(L->o_b, 1, d, 0, "%s.%d.self_attn.o_proj.bias", pre, l);
        P(L->ln2_w, 1, d, 0, "%s.%d.post_attention_layernorm.weight", pre, l);
        if (c->norm_bias) P(L->ln2_b, 1, d, 0, "%s.%d.post_attention_layernorm.bias", pre, l);
        if (c->mlp == KVF_MLP_SWIGLU) {
            P(L->gate_w, 2, c->d_ff, d, "%s.%d.mlp.gate_proj.weight", pre, l);
            if (c->mlp_bias) P(L->gate_b, 1, c->d_ff, 0, "%s.%d.mlp.gate_proj.bias", pre, l);
        }
        P(L->up_w, 2, c->d_ff, d, "%s.%d.mlp.up_proj.weight", pre, l);
        if (c->mlp_bias) P(L->up_b, 1, c->d_ff, 0, "%s.%d.mlp.up_proj.bias", pre, l);
        P(L->down_w, 2, d, c->d_ff, "%s.%d.mlp.down_proj.weight", pre, l);
        if (c->mlp_bias) P(L->down_b, 1, d, 0, "%s.%d.mlp.down_proj.bias", pre, l);
    }
    P(m->norm_w, 1, d, 0, "model.norm.weight");
    if (c->norm_bias) P(m->norm_b, 1, d, 0, "model.norm.bias");
    if (!c->tie_embeddings) P(m->lm_head, 2, c->vocab_size, d, "lm_head.weight");
    if (!ok || kvf_params_alloc(m->params, device) != KVF_OK) {
        free(names);
        kvf_model_free(m);
        return NULL;
    }
    for (int i = 0; i < n_names; i++) *names[i].slot = kvf_params_at(m->params, names[i].index);
    free(names);
    if (c->tie_embeddings) m->lm_head = m->embed;
    /* buffers: RoPE frequency tables */
    if (c->pos == KVF_POS_ROPE && c->attn == KVF_ATTN_STANDARD) {
        int64_t f = c->rope_dim / 2;
        m->rope_inv_freq = kvf_tensor_init_owned(KVF_DTYPE_F32, 1, &f);
        if (!m->rope_inv_freq) {
            kvf_model_free(m);
            return NULL;
        }
        for (int64_t i = 0; i < f; i++)
            kvf_tensor_set_flat(m->rope_inv_freq, i, pow(c->rope_theta, -2.0 * (double)i / (double)c->rope_dim));
    }
    if (c->attn == KVF_ATTN_MLA_PARTIAL_ROPE && c->partial_rope_dim) {
        /* from scratch each head keeps the highest frequencies; a conversion overwrites this */
        int64_t f = c->partial_rope_dim / 2, shape[2] = {nkv, f};
        for (int l = 0; l < c->n_layers; l++) {
            if (!kvf_model_is_producer(c, l)) continue;
            kvf_tensor *t = kvf_tensor_init_owned(KVF_DTYPE_F32, 2, shape);
            if (!t) {
                kvf_model_free(m);
                return NULL;
            }
            for (int64_t h = 0; h < nkv; h++)
                for (int64_t i = 0; i < f; i++)
                    kvf_tensor_set(t, (int64_t[]){h, i}, pow(c->rope_theta, -2.0 * (double)i / (double)hd));
            m->layers[l].rope_freqs = t;
        }
    }
    return m;
}

void kvf_model_free(kvf_model *m) {
    if (!m) return;
    if (m->layers)
        for (int l = 0; l < m->cfg.n_layers; l++) kvf_tensor_free_owned(m->layers[l].rope_freqs);
    free(m->layers);
    kvf_tensor_free_owned(m->rope_inv_freq);
    kvf_params_free(m->params);
    free(m);
}

static bool is_residual_out(const char *name) {
    return strstr(name, "o_proj.weight") || strstr(name, "down_proj.weight");
}

kvf_status kvf_model_init_weights(kvf_model *m, uint64_t seed) {
    KVF_CHECK(m->device == KVF_DEVICE_CPU, KVF_ERR_DEVICE,
              "model: initialise on the CPU, then copy to the device");
    kvf_rng r;
    kvf_rng_init(&r, seed);
    double std = m->cfg.init_std, resid = std / sqrt(2.0 * m->cfg.n_layers);
    for (int i = 0; i < kvf_params_count(m->params); i++) {
        kvf_tensor *t = kvf_params_at(m->params, i);
        const char *n = t->name;
        size_t len = strlen(n);
        bool bias = len > 5 && !strcmp(n + len - 5, ".bias");
        bool norm = strstr(n, "norm") != NULL;
        if (bias) KVF_TRY(kvf_rng_fill_uniform(&r, t, 0.0, 0.0));
        else if (norm) KVF_TRY(kvf_rng_fill_uniform(&r, t, 1.0, 1.0));
        else KVF_TRY(kvf_rng_fill_normal(&r, t, 0.0, is_residual_out(n) ? resid : std));
    }
    kvf_params_touch(m->params);
    return KVF_OK;
}

/* Mixed precision: the flat values from the end of the embedding table on (the lookup
 * reads the f32 table), cast once per step in one kernel instead of one launch per
 * weight. Made in the main region even when first asked for inside a checkpointed
 * block's first run (its scratch region is rewound after the block), and never during a
 * backward's recompute (the main region is pooled then). NULL where it does not apply:
 * then each weight is cast by itself. */
static kvf_tensor *weights_cast(kvf_model *m, kvf_ctx *ctx) {
    kvf_params *p = m->params;
    if (m->wcast && m->wcast_ctx == ctx && m->wcast_gen == kvf_ctx_generation(ctx) &&
        m->wcast_ver == kvf_params_version(p))
        return m->wcast;
    m->wcast = NULL;
    if (kvf_ctx_recomputing(ctx) || m->embed->offset != 0) return NULL;
    int64_t lo = (kvf_tensor_numel(m->embed) + 15) / 16 * 16, n = kvf_params_numel(p);
    if (lo >= n) return NULL;
    bool was = kvf_ctx_set_grad(ctx, false), scratch = kvf_ctx_use_scratch(ctx, false);
    kvf_tensor *c = kvf_cast(ctx, kvf_slice(ctx, kvf_params_values(p), 0, lo, n - lo), m->compute_dtype);
    kvf_ctx_use_scratch(ctx, scratch);
    kvf_ctx_set_grad(ctx, was);
    if (!c) {
        kvf_error_clear();
        return NULL;
    }
    m->wcast = c;
    m->wcast_ctx = ctx;
    m->wcast_gen = kvf_ctx_generation(ctx);
    m->wcast_ver = kvf_params_version(p);
    m->wcast_lo = lo;
    return c;
}

/* A parameter in the compute dtype: itself, or (mixed precision) a cast recorded on the
 * tape, whose backward adds the gradient into the f32 master's: a view of the step's
 * flat cast where the weight lies in it, else a cast of its own. */
static kvf_tensor *compute_w(kvf_model *m, kvf_ctx *ctx, kvf_tensor *w) {
    if (!w || w->dtype == m->compute_dtype) return w;
    kvf_tensor *flat = w->storage == kvf_params_values(m->params)->storage && kvf_tensor_is_contiguous(w)
                           ? weights_cast(m, ctx) : NULL;
    if (flat && w->offset >= m->wcast_lo) {
        kvf_tensor *v = kvf_tensor_view_header(ctx, flat);
        if (!v) return NULL;
        v->ndim = w->ndim;
        memcpy(v->shape, w->shape, sizeof v->shape);
        memcpy(v->stride, w->stride, sizeof v->stride);
        v->offset = flat->offset + (w->offset - m->wcast_lo);
        return kvf_cast_view(ctx, w, v);
    }
    return kvf_cast(ctx, w, m->compute_dtype);
}

/* ws[0..n) stacked by rows as one compute-dtype weight, when they lie one after another in
 * the parameter buffer, their gradients too (q/k/v and gate/up are registered so): one GEMM
 * for the n projections, forward and backward. Its master is a view over the same
 * parameters whose gradient views theirs, so dW lands in each parameter's gradient. NULL
 * (no error): not adjacent, or a parameter without a gradient. */
static kvf_tensor *stacked_w(kvf_model *m, kvf_ctx *ctx, kvf_tensor *const *ws, int n) {
    const kvf_tensor *w0 = ws[0];
    int64_t rows = 0;
    for (int i = 0; i < n; i++) {
        const kvf_tensor *w = ws[i];
        if (!w || w->ndim != 2 || !kvf_tensor_is_contiguous(w) || w->storage != w0->storage ||
            w->shape[1] != w0->shape[1] || w->offset != w0->offset + rows * w0->shape[1] ||
            !w->requires_grad || !w->grad || !kvf_tensor_is_contiguous(w->grad) ||
            w->grad->storage != w0->grad->storage ||
            w->grad->offset != w0->grad->offset + rows * w0->shape[1])
            return NULL;
        rows += w->shape[0];
    }
    kvf_tensor *v = kvf_tensor_view_header(ctx, w0), *g = kvf_tensor_view_header(ctx, w0->grad);
    if (!v || !g) return NULL;
    v->shape[0] = g->shape[0] = rows;
    v->requires_grad = true;
    v->grad = g;
    return compute_w(m, ctx, v);
}

/* x [..., in] · Wᵀ (+ b) */
static kvf_tensor *linear(kvf_model *m, kvf_ctx *ctx, kvf_tensor *x, kvf_tensor *w,
                          kvf_tensor *b) {
    kvf_tensor *y = kvf_matmul(ctx, x, compute_w(m, ctx, w), false, true);
    return b ? kvf_add(ctx, y, compute_w(m, ctx, b)) : y;
}

/* r + x · Wᵀ (+ b): a residual after a projection, added in the GEMM's epilogue when
 * there is no bias (no product tensor kept in the arena, no add pass) */
static kvf_tensor *linear_res(kvf_model *m, kvf_ctx *ctx, kvf_tensor *r, kvf_tensor *x,
                              kvf_tensor *w, kvf_tensor *b) {
    if (b) return kvf_add(ctx, r, linear(m, ctx, x, w, b));
    return kvf_matmul_add(ctx, r, x, compute_w(m, ctx, w), true);
}

static kvf_tensor *norm(kvf_model *m, kvf_ctx *ctx, kvf_tensor *x, kvf_tensor *w,
                        kvf_tensor *b) {
    const kvf_model_config *c = &m->cfg;
    return c->norm == KVF_NORM_RMS ? kvf_rmsnorm(ctx, x, compute_w(m, ctx, w), c->norm_eps)
                                   : kvf_layernorm(ctx, x, compute_w(m, ctx, w), compute_w(m, ctx, b), c->norm_eps);
}

static kvf_tensor *heads(kvf_ctx *ctx, kvf_tensor *x, int64_t B, int64_t T, int64_t h, int64_t d) {
    return kvf_reshape(ctx, x, 4, (int64_t[]){B, T, h, d});
}

/* A CPU tensor (model buffer) as an arena tensor on the ctx's device. */
static kvf_tensor *buffer(kvf_ctx *ctx, const kvf_tensor *t) {
    return kvf_tensor_from_host(ctx, t->dtype, t->ndim, t->shape, kvf_tensor_data(t));
}

/* MLA's latent RMSNorms (q_a_layernorm, kv_a_layernorm) use HF DeepSeek's fixed eps 1e-6,
 * not rms_norm_eps (HF builds them with DeepseekV3RMSNorm's default). */
#define KVF_MLA_LATENT_NORM_EPS 1e-6

/* The residual x plus layer l's attention on its normed input h. A producer computes K/V
 * into *k, *v (they are also what its consumers read); a consumer (CLA) reads its
 * producer's from *k, *v. */
static kvf_tensor *attention_block(kvf_model *m, kvf_ctx *ctx, int l, kvf_tensor *x, kvf_tensor *h,
                                   kvf_tensor **k_io, kvf_tensor **v_io, kvf_tensor *inv_freq) {
    const kvf_model_config *c = &m->cfg;
    const struct kvf_layer_weights *L = &m->layers[l];
    int64_t B = h->shape[0], T = h->shape[1], nq = c->n_q_heads, nkv = c->n_kv_heads,
            hd = c->head_dim, vd = c->v_head_dim;
    bool prod = kvf_model_is_producer(c, l);
    kvf_tensor *q = NULL;
    kvf_tensor *qkv_w = NULL;
    if (c->attn == KVF_ATTN_STANDARD && prod && vd == hd && !L->q_b && !L->k_b && !L->v_b)
        qkv_w = stacked_w(m, ctx, (kvf_tensor *[]){L->q_w, L->k_w, L->v_w}, 3);
    if (qkv_w) {
        /* one projection [q | k | v], read as heads; RoPE rotates q's and k's in place */
        kvf_tensor *qkv = heads(ctx, kvf_matmul(ctx, h, qkv_w, false, true), B, T, nq + 2 * nkv, hd), *p[3];
        if (!qkv || kvf_split(ctx, qkv, 2, (int64_t[]){nq, nkv, nkv}, 3, p) != KVF_OK) return NULL;
        q = p[0];
        *k_io = p[1];
        *v_io = p[2];
        if (c->pos == KVF_POS_ROPE) {
            q = kvf_rope_inplace(ctx, q, NULL, inv_freq, c->rope_layout);
            *k_io = kvf_rope_inplace(ctx, *k_io, NULL, inv_freq, c->rope_layout);
        }
    } else if (c->attn == KVF_ATTN_STANDARD) {
        /* the projections are fresh and read by RoPE alone: rotated in place, so the arena
         * keeps one copy of Q and K */
        q = heads(ctx, linear(m, ctx, h, L->q_w, L->q_b), B, T, nq, hd);
        if (c->pos == KVF_POS_ROPE) q = kvf_rope_inplace(ctx, q, NULL, inv_freq, c->rope_layout);
        if (prod) {
            kvf_tensor *k = heads(ctx, linear(m, ctx, h, L->k_w, L->k_b), B, T, nkv, hd);
            if (c->pos == KVF_POS_ROPE) k = kvf_rope_inplace(ctx, k, NULL, inv_freq, c->rope_layout);
            *k_io = k;
            *v_io = heads(ctx, linear(m, ctx, h, L->v_w, L->v_b), B, T, nkv, vd);
        }
    } else if (c->attn == KVF_ATTN_MLA) {
        int64_t nope = c->qk_nope_head_dim, rope = c->qk_rope_head_dim, r = c->kv_lora_rank;
        kvf_tensor *mla_freq = kvf_rope_inv_freq(ctx, rope, c->rope_theta);
        kvf_tensor *qf = L->q_a_w ? linear(m, ctx, kvf_rmsnorm(ctx, linear(m, ctx, h, L->q_a_w, NULL),
                                                            compute_w(m, ctx, L->q_a_norm), KVF_MLA_LATENT_NORM_EPS),
                                           L->q_b_w, NULL)
                                  : linear(m, ctx, h, L->q_w, NULL);
        /* each q head is [nope | rope]: its RoPE part rotated in place, no split or concat */
        q = kvf_rope_inplace_at(ctx, heads(ctx, qf, B, T, nq, nope + rope), nope, NULL, mla_freq, c->rope_layout);
        if (prod) {
            /* [latent | k_pe] as one head: k_pe rotated in place, then broadcast over the heads */
            kvf_tensor *ckv = heads(ctx, linear(m, ctx, h, L->kv_a_w, NULL), B, T, 1, r + rope), *cp[2];
            ckv = kvf_rope_inplace_at(ctx, ckv, r, NULL, mla_freq, c->rope_layout);
            if (!ckv || kvf_split(ctx, ckv, 3, (int64_t[]){r, rope}, 2, cp) != KVF_OK) return NULL;
            kvf_tensor *lat = L->kv_a_norm ? kvf_rmsnorm(ctx, cp[0], compute_w(m, ctx, L->kv_a_norm), KVF_MLA_LATENT_NORM_EPS) : cp[0];
            lat = kvf_reshape(ctx, lat, 3, (int64_t[]){B, T, r});
            kvf_tensor *kvb = heads(ctx, linear(m, ctx, lat, L->kv_b_w, NULL), B, T, nq, nope + vd), *kp[2];
            if (!kvb || kvf_split(ctx, kvb, 3, (int64_t[]){nope, vd}, 2, kp) != KVF_OK) return NULL;
            kvf_tensor *kcat[2] = {kp[0], kvf_expand(ctx, cp[1], 4, (int64_t[]){B, T, nq, rope})};
            *k_io = kvf_concat(ctx, kcat, 2, 3);
            *v_io = kp[1];
        }
    } else { /* partial-RoPE MLA: kept RoPE dims first in every head, per-head frequencies */
        int64_t pr = c->partial_rope_dim, g = nq / nkv;
        q = heads(ctx, linear(m, ctx, h, L->q_w, NULL), B, T, nq, hd);
        kvf_tensor *fk = NULL, *fq = NULL;
        if (pr) {
            const kvf_tensor *src = m->layers[c->kv_source[l]].rope_freqs;
            fk = buffer(ctx, src);
            /* query head i uses its KV head's frequencies: repeat each row g times */
            fq = kvf_reshape(ctx, kvf_contiguous(ctx, kvf_expand(ctx, kvf_reshape(ctx, fk, 3, (int64_t[]){nkv, 1, pr / 2}), 3, (int64_t[]){nkv, g, pr / 2})), 2, (int64_t[]){nq, pr / 2});
            q = kvf_rope(ctx, q, NULL, fq, KVF_ROPE_HALF);
        }
        if (prod) {
            kvf_tensor *lat = linear(m, ctx, h, L->kv_a_w, NULL);
            kvf_tensor *kvb = heads(ctx, linear(m, ctx, lat, L->kv_b_w, NULL), B, T, nkv, (hd - pr) + vd), *kp[2];
            if (!kvb || kvf_split(ctx, kvb, 3, (int64_t[]){hd - pr, vd}, 2, kp) != KVF_OK) return NULL;
            if (pr) {
                kvf_tensor *kr = kvf_rope(ctx, heads(ctx, linear(m, ctx, h, L->k_rope_w, NULL), B, T, nkv, pr), NULL, fk, KVF_ROPE_HALF);
                kvf_tensor *kcat[2] = {kr, kp[0]};
                *k_io = kvf_concat(ctx, kcat, 2, 3);
            } else {
                *k_io = kp[0];
            }
            *v_io = kp[1];
        }
    }
    kvf_attn_cfg acfg = {.scale = (float)c->softmax_scale, .causal = true, .window = c->window[l]};
    kvf_tensor *o = kvf_attention(ctx, q, *k_io, *v_io, &acfg);
    o = kvf_reshape(ctx, o, 3, (int64_t[]){B, T, nq * vd});
    return linear_res(m, ctx, x, o, L->o_w, L->o_b);
}

/* The residual x plus layer l's MLP on its normed input h. */
static kvf_tensor *mlp_block(kvf_model *m, kvf_ctx *ctx, int l, kvf_tensor *x, kvf_tensor *h) {
    const kvf_model_config *c = &m->cfg;
    const struct kvf_layer_weights *L = &m->layers[l];
    kvf_tensor *a, *gu_w = NULL;
    if (c->mlp == KVF_MLP_SWIGLU && !L->gate_b && !L->up_b)
        gu_w = stacked_w(m, ctx, (kvf_tensor *[]){L->gate_w, L->up_w}, 2);
    if (gu_w) /* one projection [gate | up] */
        a = kvf_swiglu_packed(ctx, kvf_matmul(ctx, h, gu_w, false, true));
    else if (c->mlp == KVF_MLP_SWIGLU)
        a = kvf_swiglu(ctx, linear(m, ctx, h, L->gate_w, L->gate_b), linear(m, ctx, h, L->up_w, L->up_b));
    else
        a = kvf_gelu(ctx, linear(m, ctx, h, L->up_w, L->up_b), c->gelu_exact ? KVF_GELU_ERF : KVF_GELU_TANH);
    return linear_res(m, ctx, x, a, L->down_w, L->down_b);
}

/* One transformer block as a kvf_recompute_fn: in {x, inv_freq, producer K, producer V}
 * (the last two for CLA consumers, else NULL) → out {x after the block, K, V} (K/V only for
 * a producer whose K/V later layers read: they cross the block boundary). The same function
 * runs the plain forward, so both modes do the same ops in the same order. */
enum { BLOCK_N_IN = 4, BLOCK_N_OUT = 3 };
struct block_ud {
    kvf_model *m;
    int layer;
    bool pass_kv; /* out has room for K/V: a later layer reads this producer's */
};

static kvf_status block_fn(kvf_ctx *ctx, const void *ud_, kvf_tensor *const *in, kvf_tensor **out) {
    const struct block_ud *ud = ud_;
    kvf_model *m = ud->m;
    int l = ud->layer;
    const struct kvf_layer_weights *L = &m->layers[l];
    kvf_tensor *x = in[0], *k = in[2], *v = in[3];
    kvf_tensor *h = norm(m, ctx, x, L->ln1_w, L->ln1_b);
    /* the hook sees each layer once, not again when a checkpointed block is re-run */
    if (h && m->hook && !kvf_ctx_recomputing(ctx)) KVF_TRY(m->hook(l, h, m->hook_ud));
    x = h ? attention_block(m, ctx, l, x, h, &k, &v, in[1]) : NULL;
    x = x ? mlp_block(m, ctx, l, x, norm(m, ctx, x, L->ln2_w, L->ln2_b)) : NULL;
    if (!x) return kvf_error_code();
    out[0] = x;
    if (ud->pass_kv) {
        out[1] = k;
        out[2] = v;
    }
    return KVF_OK;
}

/* Whether a later layer reads layer l's K/V (then they cross the block boundary). */
static bool kv_read_later(const kvf_model_config *c, int l) {
    for (int j = l + 1; j < c->n_layers; j++)
        if (c->kv_source[j] == l) return true;
    return false;
}

/* Logits [B, T, vocab] in the compute dtype. */
static kvf_tensor *forward_logits(kvf_model *m, kvf_ctx *ctx, kvf_tensor *ids) {
    const kvf_model_config *c = &m->cfg;
    KVF_CHECK_NULL(ids && ids->ndim == 2 && ids->dtype == KVF_DTYPE_I32, KVF_ERR_SHAPE,
                   "model: ids must be i32 [B, T], got %s", KVF_DESC(ids));
    int64_t T = ids->shape[1];
    KVF_CHECK_NULL(T >= 1 && T <= c->max_seq_len, KVF_ERR_SHAPE,
                   "model: sequence length %lld exceeds max_seq_len %lld", (long long)T,
                   (long long)c->max_seq_len);
    /* mixed precision: the lookup reads the f32 table (its gradient is scattered in f32),
     * then the rows are cast */
    kvf_tensor *x = kvf_embedding(ctx, m->embed, ids);
    if (x && x->dtype != m->compute_dtype) x = kvf_cast(ctx, x, m->compute_dtype);
    if (c->pos == KVF_POS_LEARNED) {
        kvf_tensor *p = kvf_slice(ctx, m->pos_embed, 0, 0, T);
        x = kvf_add(ctx, x, compute_w(m, ctx, p));
    }
    kvf_tensor *inv_freq = m->rope_inv_freq ? buffer(ctx, m->rope_inv_freq) : NULL;
    /* K/V by layer: what each producer made, for its consumers (CLA) */
    kvf_tensor **kv = kvf_ctx_alloc_host(ctx, sizeof(kvf_tensor *) * 2 * (size_t)c->n_layers);
    if (!kv || !x) return NULL;
    for (int l = 0; l < c->n_layers; l++) {
        int s = c->kv_source[l];
        bool prod = s == l;
        /* a block's boundary: x, and for a consumer its producer's K/V; a producer whose
         * K/V later layers read hands them on as outputs (checkpointed blocks keep them) */
        kvf_tensor *in[BLOCK_N_IN] = {x, inv_freq, prod ? NULL : kv[2 * s], prod ? NULL : kv[2 * s + 1]};
        kvf_tensor *out[BLOCK_N_OUT] = {NULL, NULL, NULL};
        struct block_ud ud = {m, l, kv_read_later(c, l)};
        kvf_status st = m->recompute == KVF_RECOMPUTE_BLOCKS
                            ? kvf_recompute(ctx, block_fn, &ud, sizeof ud, BLOCK_N_IN, in,
                                            ud.pass_kv ? BLOCK_N_OUT : 1, out)
                            : block_fn(ctx, &ud, in, out);
        if (st != KVF_OK) return NULL;
        x = out[0];
        kv[2 * l] = out[1];
        kv[2 * l + 1] = out[2];
    }
    x = norm(m, ctx, x, m->norm_w, m->norm_b);
    return kvf_matmul(ctx, x, compute_w(m, ctx, m->lm_head), false, true);
}

kvf_tensor *kvf_model_forward(kvf_model *m, kvf_ctx *ctx, kvf_tensor *ids) {
    kvf_tensor *logits = forward_logits(m, ctx, ids);
    if (logits && logits->dtype != m->cfg.param_dtype) logits = kvf_cast(ctx, logits, m->cfg.param_dtype);
    return logits;
}

kvf_tensor *kvf_model_loss(kvf_model *m, kvf_ctx *ctx, kvf_tensor *ids, kvf_tensor *targets) {
    /* logits stay in the compute dtype: the loss is f32 either way (ops.h) */
    kvf_tensor *logits = forward_logits(m, ctx, ids);
    if (!logits) return NULL;
    int64_t N = logits->shape[0] * logits->shape[1];
    kvf_tensor *flat = kvf_reshape(ctx, logits, 2, (int64_t[]){N, logits->shape[2]});
    kvf_tensor *t = kvf_reshape(ctx, targets, 1, (int64_t[]){N});
    /* nothing but the loss sees these logits: backward turns them into their gradient,
     * which the reshape then hands on to the head's matmul (tape.h: kvf_grad_share), so
     * the head holds one [B·T, vocab] buffer instead of three */
    return kvf_cross_entropy_inplace(ctx, flat, t, -100);
}

kvf_status kvf_recompute_parse(const char *name, kvf_recompute_mode *mode) {
    if (!strcmp(name, "none")) *mode = KVF_RECOMPUTE_NONE;
    else if (!strcmp(name, "blocks")) *mode = KVF_RECOMPUTE_BLOCKS;
    else return kvf_error_set(KVF_ERR_ARG, "recompute: '%s' is not none or blocks", name);
    return KVF_OK;
}

kvf_status kvf_model_set_compute_dtype(kvf_model *m, kvf_dtype dtype) {
    KVF_CHECK(dtype == m->cfg.param_dtype || (dtype == KVF_DTYPE_BF16 && m->device != KVF_DEVICE_CPU),
              KVF_ERR_DTYPE, "model: compute dtype %s with %s master weights on %s: the CPU "
              "computes in the master dtype; bf16 needs a GPU", kvf_dtype_name(dtype),
              kvf_dtype_name(m->cfg.param_dtype), kvf_device_name(m->device));
    m->compute_dtype = dtype;
    return KVF_OK;
}

kvf_model *kvf_model_to_device(const kvf_model *src, kvf_device device) {
    kvf_model *m = kvf_model_init(&src->cfg, device);
    if (!m) return NULL;
    const kvf_backend *be = kvf_backend_get(device);
    kvf_tensor *from = kvf_params_values(src->params), *to = kvf_params_values(m->params);
    kvf_status st = be ? KVF_OK : kvf_error_code();
    if (st == KVF_OK && kvf_params_numel(src->params) != kvf_params_numel(m->params))
        st = kvf_error_set(KVF_ERR_STATE, "model: the copy on %s has %lld parameters, the source %lld",
                           kvf_device_name(device), (long long)kvf_params_numel(m->params),
                           (long long)kvf_params_numel(src->params));
    if (st == KVF_OK) {
        /* one transfer of the whole flat buffer (same registration order, same layout) */
        size_t nb = kvf_tensor_nbytes(to);
        if (kvf_tensor_device(from) == KVF_DEVICE_CPU) {
            st = be->upload(kvf_tensor_data(to), kvf_tensor_data(from), nb);
        } else {
            void *host = malloc(nb ? nb : 1);
            st = host ? kvf_tensor_to_host(from, host, nb)
                      : kvf_error_set(KVF_ERR_OOM, "model: cannot allocate %zu host bytes for the copy", nb);
            if (st == KVF_OK) st = be->upload(kvf_tensor_data(to), host, nb);
            free(host);
        }
    }
    /* buffers (host-side tables) */
    for (int l = 0; st == KVF_OK && l < src->cfg.n_layers; l++) {
        const kvf_tensor *a = src->layers[l].rope_freqs;
        kvf_tensor *b = m->layers[l].rope_freqs;
        if (a && b) memcpy(kvf_tensor_data(b), kvf_tensor_data(a), kvf_tensor_nbytes(b));
    }
    if (st != KVF_OK) {
        kvf_model_free(m);
        return NULL;
    }
    m->compute_dtype = m->cfg.param_dtype;
    return m;
}
