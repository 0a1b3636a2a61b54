/* The transformer family: config validation, parameter counts and KV-cache figures, and
 * whole-model gradient checks (f64 finite differences) for every attention variant. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"
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
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
