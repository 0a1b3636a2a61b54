/* The transformer family: config validation, parameter counts and KV-cache figures,
 * whole-model gradient checks (f64 finite differences) for every attention variant, and
 * activation recomputation (bit-for-bit the plain run, less arena memory). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"
#include "autograd/recompute.h"
#include "autograd/rng.h"
#include "autograd/tape.h"
#include "model/transformer.h"
#include "model/variant.h"

static void tiny(kvf_model_config *c, const char *variant) {
    kvf_model_config_defaults(c);
    c->vocab_size = 29;
    c->d_model = 24;
    c->n_layers = 3;
    c->n_heads = 4;
    c->d_ff = 40;
    c->max_seq_len = 16;
    c->rope_theta = 100.0; /* short context: make every frequency turn */
    ck_assert_msg(kvf_model_config_apply_variant(c, variant) == KVF_OK, "%s: %s", variant,
                  kvf_error_message());
}

static const char *variants[] = {
    "mha", "gqa2", "mqa", "sqa_q2kv1", "cla2_mha", "cla3_gqa2", "swa3_mha", "mla_r8", "mla_r8_d4",
    "mla_partial_r10_d2",
};
#define N_VARIANTS (int)(sizeof variants / sizeof variants[0])

START_TEST(param_count_matches_registry) {
    for (int v = 0; v < N_VARIANTS; v++)
        for (int flavour = 0; flavour < 3; flavour++) {
            kvf_model_config c;
            tiny(&c, variants[v]);
            if (flavour == 1) { /* GPT-2 style */
                c.norm = KVF_NORM_LAYER;
                c.norm_bias = true;
                c.mlp = KVF_MLP_GELU;
                c.mlp_bias = c.o_bias = true;
                c.qkv_bias = true;
                c.tie_embeddings = true;
                if (c.attn == KVF_ATTN_STANDARD) c.pos = KVF_POS_LEARNED;
            } else if (flavour == 2) {
                c.q_lora_rank = c.attn == KVF_ATTN_MLA ? 6 : 0;
                c.qkv_bias = true;
            }
            kvf_model *m = kvf_model_init(&c, KVF_DEVICE_CPU);
            ck_assert_msg(m != NULL, "%s: %s", variants[v], kvf_error_message());
            int64_t n = 0;
            for (int i = 0; i < kvf_params_count(m->params); i++)
                n += kvf_tensor_numel(kvf_params_at(m->params, i));
            ck_assert_msg(n == kvf_model_n_params(&m->cfg), "%s flavour %d: registered %lld, formula %lld",
                          variants[v], flavour, (long long)n, (long long)kvf_model_n_params(&m->cfg));
            kvf_model_free(m);
        }
}
END_TEST

START_TEST(kv_cache_figures) {
    kvf_model_config c;
    tiny(&c, "mha"); /* 3 layers × 4 heads × (6 + 6) × 2 bytes */
    kvf_model_config_resolve(&c);
    ck_assert_int_eq(kvf_model_kv_bytes_per_token(&c), 3 * 4 * 12 * 2);
    tiny(&c, "gqa2");
    kvf_model_config_resolve(&c);
    ck_assert_int_eq(kvf_model_kv_bytes_per_token(&c), 3 * 2 * 12 * 2);
    tiny(&c, "cla3_gqa2"); /* one producer */
    kvf_model_config_resolve(&c);
    ck_assert_int_eq(kvf_model_kv_bytes_per_token(&c), 1 * 2 * 12 * 2);
    tiny(&c, "mla_r8_d4");
    kvf_model_config_resolve(&c);
    ck_assert_int_eq(kvf_model_kv_bytes_per_token(&c), 3 * (8 + 4) * 2);
    tiny(&c, "mla_partial_r10_d2");
    kvf_model_config_resolve(&c);
    ck_assert_int_eq(kvf_model_kv_bytes_per_token(&c), 3 * (10 + 4 * 2) * 2);
    /* FLOPs: the matmul part is 2 per weight; attention adds per visible key */
    tiny(&c, "mha");
    kvf_model_config_resolve(&c);
    double f1 = kvf_model_flops_per_token(&c, 1), f8 = kvf_model_flops_per_token(&c, 8);
    ck_assert_double_gt(f8, f1);
    ck_assert_double_eq_tol(f8 - f1, 3 * 2.0 * 4 * 12 * (4.5 - 1.0), 1e-6);
}
END_TEST

START_TEST(config_errors) {
    kvf_model_config c;
    tiny(&c, "gqa3"); /* 3 does not divide 4 */
    kvf_error_clear();
    ck_assert_int_eq(kvf_model_config_resolve(&c), KVF_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "n_kv_heads"));
    kvf_error_clear();
    ck_assert_int_eq(kvf_model_config_apply_variant(&c, "gqx4"), KVF_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "gqx4"));
    tiny(&c, "mha");
    c.kv_source[1] = 2; /* takes K/V from a later layer */
    kvf_error_clear();
    ck_assert_int_eq(kvf_model_config_resolve(&c), KVF_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "layer 1"));
    tiny(&c, "mha");
    c.kv_source[2] = 1;
    c.kv_source[1] = 0; /* layer 2 → 1, which is a consumer */
    kvf_error_clear();
    ck_assert_int_eq(kvf_model_config_resolve(&c), KVF_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "not a producer"));
    tiny(&c, "mha");
    c.d_model = 25;
    kvf_error_clear();
    ck_assert_int_eq(kvf_model_config_resolve(&c), KVF_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "head_dim"));
    kvf_error_clear();
}
END_TEST

static double model_loss(kvf_model *m, kvf_ctx *ctx, kvf_tensor *ids, kvf_tensor *tg) {
    kvf_ctx_reset(ctx);
    bool was = kvf_ctx_set_grad(ctx, false);
    kvf_tensor *l = kvf_model_loss(m, ctx, ids, tg);
    kvf_ctx_set_grad(ctx, was);
    return l ? kvf_tensor_get_flat(l, 0) : NAN;
}

/* Analytic gradients of the loss against central differences, on a sample of elements of
 * every parameter tensor (all elements of small ones). */
static void check_model_grad(const char *variant, kvf_model_config *c) {
    c->param_dtype = KVF_DTYPE_F64;
    kvf_model *m = kvf_model_init(c, KVF_DEVICE_CPU);
    ck_assert_msg(m != NULL, "%s: %s", variant, kvf_error_message());
    ck_assert_int_eq(kvf_model_init_weights(m, 7), KVF_OK);
    /* larger weights than the 0.02 init so every path carries signal */
    kvf_rng r;
    kvf_rng_init(&r, 99);
    for (int i = 0; i < kvf_params_count(m->params); i++) {
        kvf_tensor *t = kvf_params_at(m->params, i);
        for (int64_t j = 0; j < kvf_tensor_numel(t); j++)
            kvf_tensor_set_flat(t, j, kvf_tensor_get_flat(t, j) + 0.3 * kvf_rng_normal(&r));
    }
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    int64_t B = 2, T = 7;
    int32_t idv[14], tgv[14];
    for (int i = 0; i < 14; i++) {
        idv[i] = (int32_t)kvf_rng_below(&r, (uint64_t)c->vocab_size);
        tgv[i] = (int32_t)kvf_rng_below(&r, (uint64_t)c->vocab_size);
    }
    tgv[3] = -100; /* an ignored position */
    /* owned (not arena) tensors: they survive the resets between loss evaluations */
    kvf_tensor *ids_o = kvf_tensor_init_owned(KVF_DTYPE_I32, 2, (int64_t[]){B, T});
    kvf_tensor *tg_o = kvf_tensor_init_owned(KVF_DTYPE_I32, 2, (int64_t[]){B, T});
    memcpy(kvf_tensor_data(ids_o), idv, sizeof idv);
    memcpy(kvf_tensor_data(tg_o), tgv, sizeof tgv);
    kvf_ctx_reset(ctx);
    kvf_params_zero_grad(m->params);
    kvf_tensor *loss = kvf_model_loss(m, ctx, ids_o, tg_o);
    ck_assert_msg(loss != NULL, "%s: %s", variant, kvf_error_message());
    ck_assert_msg(kvf_backward(ctx, loss) == KVF_OK, "%s: %s", variant, kvf_error_message());
    int checked = 0, fails = 0;
    for (int i = 0; i < kvf_params_count(m->params) && fails < 3; i++) {
        kvf_tensor *t = kvf_params_at(m->params, i);
        int64_t n = kvf_tensor_numel(t);
        double gmax = 0;
        for (int64_t j = 0; j < n; j++) gmax = fmax(gmax, fabs(kvf_tensor_get_flat(t->grad, j)));
        int samples = n <= 8 ? (int)n : 6;
        for (int s = 0; s < samples; s++) {
            int64_t j = n <= 8 ? s : (int64_t)kvf_rng_below(&r, (uint64_t)n);
            double x0 = kvf_tensor_get_flat(t, j), h = 1e-5;
            kvf_tensor_set_flat(t, j, x0 + h);
            double lp = model_loss(m, ctx, ids_o, tg_o);
            kvf_tensor_set_flat(t, j, x0 - h);
            double lm = model_loss(m, ctx, ids_o, tg_o);
            kvf_tensor_set_flat(t, j, x0);
            double fd = (lp - lm) / (2 * h), a = kvf_tensor_get_flat(t->grad, j);
            checked++;
            if (!(fabs(fd - a) <= 1e-6 * (1.0 + gmax))) {
                fprintf(stderr, "%s: %s[%lld]: analytic %.10g vs finite difference %.10g\n", variant,
                        t->name, (long long)j, a, fd);
                fails++;
            }
        }
    }
    ck_assert_msg(fails == 0, "%s: %d gradient mismatches (of %d checked)", variant, fails, checked);
    kvf_tensor_free_owned(ids_o);
    kvf_tensor_free_owned(tg_o);
    kvf_ctx_free(ctx);
    kvf_model_free(m);
}

START_TEST(whole_model_gradients) {
    kvf_model_config c;
    tiny(&c, variants[_i]);
    check_model_grad(variants[_i], &c);
}
END_TEST

START_TEST(gpt2_style_gradients) {
    kvf_model_config c;
    tiny(&c, "mha");
    c.norm = KVF_NORM_LAYER;
    c.norm_bias = true;
    c.mlp = KVF_MLP_GELU;
    c.mlp_bias = c.o_bias = c.qkv_bias = true;
    c.tie_embeddings = true;
    c.pos = KVF_POS_LEARNED;
    check_model_grad("gpt2-style", &c);
}
END_TEST

START_TEST(mla_qlora_gradients) {
    kvf_model_config c;
    tiny(&c, "mla_r8_d4");
    c.q_lora_rank = 6;
    check_model_grad("mla q-lora", &c);
}
END_TEST

/* ---- activation recomputation ---- */

struct rc_run {
    double loss;
    void *grads; /* the flat gradient buffer, host copy */
    size_t nbytes, peak;
    int hook_calls;
};

static kvf_status count_hook(int layer, const kvf_tensor *h, void *ud) {
    (void)layer;
    (void)h;
    ++*(int *)ud;
    return KVF_OK;
}

/* Loss and every parameter gradient of one forward + backward, and the arena's peak. */
static void rc_step_ex(kvf_model *m, kvf_recompute_mode mode, bool share, const int32_t *idv,
                       const int32_t *tgv, int64_t B, int64_t T, struct rc_run *o) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_ctx_set_grad_sharing(ctx, share);
    m->recompute = mode;
    o->hook_calls = 0;
    m->hook = count_hook;
    m->hook_ud = &o->hook_calls;
    ck_assert_int_eq(kvf_params_zero_grad(m->params), KVF_OK);
    kvf_tensor *ids = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, (int64_t[]){B, T}, idv);
    kvf_tensor *tg = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, (int64_t[]){B, T}, tgv);
    kvf_tensor *loss = kvf_model_loss(m, ctx, ids, tg);
    ck_assert_msg(loss != NULL, "%s", kvf_error_message());
    ck_assert_msg(kvf_backward(ctx, loss) == KVF_OK, "%s", kvf_error_message());
    ck_assert_int_eq(kvf_tensor_item(loss, &o->loss), KVF_OK);
    kvf_tensor *g = kvf_params_grads(m->params);
    o->nbytes = kvf_tensor_nbytes(g);
    o->grads = malloc(o->nbytes);
    memcpy(o->grads, kvf_tensor_data(g), o->nbytes);
    o->peak = kvf_ctx_arena_peak(ctx);
    m->hook = NULL;
    m->recompute = KVF_RECOMPUTE_NONE;
    kvf_ctx_free(ctx);
}

static void rc_step(kvf_model *m, kvf_recompute_mode mode, const int32_t *idv, const int32_t *tgv,
                    int64_t B, int64_t T, struct rc_run *o) {
    rc_step_ex(m, mode, true, idv, tgv, B, T, o);
}

/* Recomputing blocks runs the same ops on the same values in the same order, so the loss
 * and every gradient must be identical to the plain run — not just close — for every
 * attention design, including CLA (K/V cross block boundaries) and MLA (V is a strided
 * view inside the producer, a contiguous copy across the boundary). */
static void check_recompute(const char *variant, kvf_model_config *c, kvf_dtype dtype) {
    c->param_dtype = dtype;
    kvf_model *m = kvf_model_init(c, KVF_DEVICE_CPU);
    ck_assert_msg(m != NULL, "%s: %s", variant, kvf_error_message());
    ck_assert_int_eq(kvf_model_init_weights(m, 5), KVF_OK);
    kvf_rng r;
    kvf_rng_init(&r, 17);
    for (int i = 0; i < kvf_params_count(m->params); i++) {
        kvf_tensor *t = kvf_params_at(m->params, i);
        for (int64_t j = 0; j < kvf_tensor_numel(t); j++)
            kvf_tensor_set_flat(t, j, kvf_tensor_get_flat(t, j) + 0.2 * kvf_rng_normal(&r));
    }
    enum { B = 2, T = 16 };
    int32_t idv[B * T], tgv[B * T];
    for (int i = 0; i < B * T; i++) {
        idv[i] = (int32_t)kvf_rng_below(&r, (uint64_t)c->vocab_size);
        tgv[i] = (int32_t)kvf_rng_below(&r, (uint64_t)c->vocab_size);
    }
    tgv[5] = -100;
    struct rc_run plain, rc;
    rc_step(m, KVF_RECOMPUTE_NONE, idv, tgv, B, T, &plain);
    rc_step(m, KVF_RECOMPUTE_BLOCKS, idv, tgv, B, T, &rc);
    ck_assert_msg(memcmp(&plain.loss, &rc.loss, sizeof plain.loss) == 0, "%s: loss %.17g vs %.17g",
                  variant, plain.loss, rc.loss);
    ck_assert_uint_eq(plain.nbytes, rc.nbytes);
    if (memcmp(plain.grads, rc.grads, plain.nbytes) != 0) {
        for (int i = 0; i < kvf_params_count(m->params); i++) {
            kvf_tensor *t = kvf_params_at(m->params, i);
            size_t off = (size_t)((char *)kvf_tensor_data(t->grad) - (char *)kvf_tensor_data(kvf_params_grads(m->params)));
            if (memcmp((char *)plain.grads + off, (char *)rc.grads + off, kvf_tensor_nbytes(t)) != 0)
                fprintf(stderr, "%s: gradient of %s differs with recompute\n", variant, t->name);
        }
        ck_abort_msg("%s: gradients differ with recompute", variant);
    }
    /* the statistics hook sees each layer once, not again in the backward */
    ck_assert_int_eq(plain.hook_calls, c->n_layers);
    ck_assert_int_eq(rc.hook_calls, c->n_layers);
    fprintf(stderr, "recompute %-18s %s: loss %.9g bit-exact, arena peak %zu -> %zu bytes (%.0f%%)\n",
            variant, kvf_dtype_name(dtype), rc.loss, plain.peak, rc.peak, 100.0 * (double)rc.peak / (double)plain.peak);
    ck_assert_msg(rc.peak < plain.peak, "%s: arena peak %zu with recompute, %zu without", variant,
                  rc.peak, plain.peak);
    free(plain.grads);
    free(rc.grads);
    kvf_model_free(m);
}

/* Gradient sharing (views hand their gradient on, the loss turns the logits into their
 * gradient: tape.h, ops.h) only saves buffers: with and without it, plain and recomputed,
 * the loss and every gradient must be the same bits, and the arena peak lower. */
static void check_sharing(const char *variant, kvf_model_config *c, kvf_dtype dtype) {
    c->param_dtype = dtype;
    kvf_model *m = kvf_model_init(c, KVF_DEVICE_CPU);
    ck_assert_msg(m != NULL, "%s: %s", variant, kvf_error_message());
    ck_assert_int_eq(kvf_model_init_weights(m, 9), KVF_OK);
    kvf_rng r;
    kvf_rng_init(&r, 23);
    enum { B = 2, T = 16 };
    int32_t idv[B * T], tgv[B * T];
    for (int i = 0; i < B * T; i++) {
        idv[i] = (int32_t)kvf_rng_below(&r, (uint64_t)c->vocab_size);
        tgv[i] = (int32_t)kvf_rng_below(&r, (uint64_t)c->vocab_size);
    }
    tgv[3] = tgv[20] = -100;
    for (int k = 0; k < 2; k++) {
        kvf_recompute_mode mode = k ? KVF_RECOMPUTE_BLOCKS : KVF_RECOMPUTE_NONE;
        struct rc_run off, on;
        rc_step_ex(m, mode, false, idv, tgv, B, T, &off);
        rc_step_ex(m, mode, true, idv, tgv, B, T, &on);
        ck_assert_msg(memcmp(&off.loss, &on.loss, sizeof on.loss) == 0, "%s: loss %.17g vs %.17g",
                      variant, off.loss, on.loss);
        ck_assert_uint_eq(off.nbytes, on.nbytes);
        if (memcmp(off.grads, on.grads, on.nbytes) != 0) {
            for (int i = 0; i < kvf_params_count(m->params); i++) {
                kvf_tensor *t = kvf_params_at(m->params, i);
                size_t o = (size_t)((char *)kvf_tensor_data(t->grad) - (char *)kvf_tensor_data(kvf_params_grads(m->params)));
                if (memcmp((char *)off.grads + o, (char *)on.grads + o, kvf_tensor_nbytes(t)) != 0)
                    fprintf(stderr, "%s: gradient of %s differs with sharing\n", variant, t->name);
            }
            ck_abort_msg("%s %s: gradients differ with gradient sharing", variant, k ? "blocks" : "none");
        }
        fprintf(stderr, "sharing %-18s %s %-6s: bit-exact, arena peak %zu -> %zu bytes\n", variant,
                kvf_dtype_name(dtype), k ? "blocks" : "none", off.peak, on.peak);
        ck_assert_msg(on.peak < off.peak, "%s: arena peak %zu with sharing, %zu without", variant,
                      on.peak, off.peak);
        free(off.grads);
        free(on.grads);
    }
    kvf_model_free(m);
}

static const char *rc_variants[] = {
    "mha", "gqa2", "mqa", "sqa_q2kv1", "cla2_mha", "cla3_gqa2", "swa3_mha", "mla_r8", "mla_r8_d4",
    "mla_partial_r10_d2", "cla2_mla_r8", "cla2_mla_partial_r10_d2",
};
#define N_RC_VARIANTS (int)(sizeof rc_variants / sizeof rc_variants[0])

START_TEST(recompute_matches_plain_bitwise) {
    kvf_model_config c;
    tiny(&c, rc_variants[_i]);
    c.n_layers = 5; /* CLA2/CLA3 then have a consumer after a second producer */
    check_recompute(rc_variants[_i], &c, KVF_DTYPE_F32);
    tiny(&c, rc_variants[_i]);
    c.n_layers = 5;
    check_recompute(rc_variants[_i], &c, KVF_DTYPE_F64);
}
END_TEST

/* The configurations the variant list misses: a GPT-2-style CLA model (LayerNorm, GELU, every
 * bias, tied embeddings, learned positions) and MLA with low-rank queries. */
static void check_extra_configs(void (*check)(const char *, kvf_model_config *, kvf_dtype)) {
    kvf_model_config c;
    tiny(&c, "cla2_mha");
    c.n_layers = 4;
    c.norm = KVF_NORM_LAYER;
    c.norm_bias = true;
    c.mlp = KVF_MLP_GELU;
    c.mlp_bias = c.o_bias = c.qkv_bias = true;
    c.tie_embeddings = true; /* the head's weight is the embedding: two gradient sources */
    c.pos = KVF_POS_LEARNED;
    check("gpt2-style cla2", &c, KVF_DTYPE_F32);
    tiny(&c, "mla_r8_d4");
    c.q_lora_rank = 6;
    check("mla q-lora", &c, KVF_DTYPE_F32);
}

START_TEST(recompute_gpt2_style_and_qlora) { check_extra_configs(check_recompute); }
END_TEST

START_TEST(sharing_matches_plain_bitwise) {
    kvf_model_config c;
    tiny(&c, rc_variants[_i]);
    c.n_layers = 5;
    check_sharing(rc_variants[_i], &c, KVF_DTYPE_F32);
    tiny(&c, rc_variants[_i]);
    c.n_layers = 5;
    check_sharing(rc_variants[_i], &c, KVF_DTYPE_F64);
}
END_TEST

START_TEST(sharing_gpt2_style_and_qlora) { check_extra_configs(check_sharing); }
END_TEST

/* The engine's contract (recompute.h): a tensor that needs a gradient must come in as an
 * input; outputs must be made by the function; without grad recording it simply runs. */
struct captured {
    kvf_tensor *w;
};

static kvf_status fn_captures(kvf_ctx *ctx, const void *ud, kvf_tensor *const *in, kvf_tensor **out) {
    const struct captured *c = ud;
    out[0] = kvf_mul(ctx, in[0], c->w);
    return out[0] ? KVF_OK : kvf_error_code();
}

static kvf_status fn_passthrough(kvf_ctx *ctx, const void *ud, kvf_tensor *const *in, kvf_tensor **out) {
    (void)ctx;
    (void)ud;
    out[0] = in[0];
    return KVF_OK;
}

static kvf_status fn_square(kvf_ctx *ctx, const void *ud, kvf_tensor *const *in, kvf_tensor **out) {
    (void)ud;
    out[0] = kvf_mul(ctx, in[0], in[0]);
    out[1] = kvf_add(ctx, in[0], in[1]);
    return out[0] && out[1] ? KVF_OK : kvf_error_code();
}

START_TEST(recompute_engine_contract) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    float xv[3] = {1, 2, 3}, yv[3] = {4, 5, 6};
    kvf_tensor *x = kvf_tensor_from_host(ctx, KVF_DTYPE_F32, 1, (int64_t[]){3}, xv);
    kvf_tensor *y = kvf_tensor_from_host(ctx, KVF_DTYPE_F32, 1, (int64_t[]){3}, yv);
    x->requires_grad = y->requires_grad = true;
    kvf_tensor *x2 = kvf_mul(ctx, x, x); /* an arena tensor needing a gradient */
    struct captured cap = {x2};
    kvf_tensor *out[2];
    ck_assert_int_eq(kvf_recompute(ctx, fn_captures, &cap, sizeof cap, 1, &y, 1, out), KVF_ERR_ARG);
    ck_assert_msg(strstr(kvf_error_message(), "without taking it as an input"), "%s", kvf_error_message());
    kvf_error_clear();
    ck_assert_int_eq(kvf_recompute(ctx, fn_passthrough, NULL, 0, 1, &y, 1, out), KVF_ERR_ARG);
    ck_assert_msg(strstr(kvf_error_message(), "not made by the function"), "%s", kvf_error_message());
    kvf_error_clear();
    /* taken as an input it works; two outputs, one of them reaching the loss twice */
    kvf_tensor *in[2] = {x2, y};
    ck_assert_int_eq(kvf_recompute(ctx, fn_square, NULL, 0, 2, in, 2, out), KVF_OK);
    kvf_tensor *loss = kvf_sum(ctx, kvf_add(ctx, kvf_mul(ctx, out[0], y), out[1]), -1, false);
    ck_assert_ptr_nonnull(loss);
    ck_assert_int_eq(kvf_backward(ctx, loss), KVF_OK);
    /* loss = Σ x⁴·y + x² + y: dx = 4x³y + 2x, dy = x⁴ + 1 */
    for (int i = 0; i < 3; i++) {
        double a = xv[i], b = yv[i];
        ck_assert_double_eq_tol(kvf_tensor_get_flat(x->grad, i), 4 * a * a * a * b + 2 * a, 1e-4);
        ck_assert_double_eq_tol(kvf_tensor_get_flat(y->grad, i), a * a * a * a + 1, 1e-4);
    }
    /* grad off: the function just runs, nothing recorded */
    kvf_ctx_reset(ctx);
    kvf_ctx_set_grad(ctx, false);
    x = kvf_tensor_from_host(ctx, KVF_DTYPE_F32, 1, (int64_t[]){3}, xv);
    in[0] = x;
    in[1] = x;
    ck_assert_int_eq(kvf_recompute(ctx, fn_square, NULL, 0, 2, in, 2, out), KVF_OK);
    ck_assert_int_eq(kvf_tape_size(ctx), 0);
    ck_assert_double_eq(kvf_tensor_get_flat(out[0], 2), 9.0);
    kvf_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("model");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, param_count_matches_registry);
    tcase_add_test(tc, kv_cache_figures);
    tcase_add_test(tc, config_errors);
    tcase_add_loop_test(tc, whole_model_gradients, 0, N_VARIANTS);
    tcase_add_test(tc, gpt2_style_gradients);
    tcase_add_test(tc, mla_qlora_gradients);
    tcase_add_loop_test(tc, recompute_matches_plain_bitwise, 0, N_RC_VARIANTS);
    tcase_add_test(tc, recompute_gpt2_style_and_qlora);
    tcase_add_loop_test(tc, sharing_matches_plain_bitwise, 0, N_RC_VARIANTS);
    tcase_add_test(tc, sharing_gpt2_style_and_qlora);
    tcase_add_test(tc, recompute_engine_contract);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
