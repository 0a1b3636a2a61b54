/* MHA/GQA → MLA conversions (convert/mla_deepseek.c, convert/mla_partial.c): every exact step
 * exact in code, on random small models (f64 master weights: rounding-level checks) and on the
 * shared fixtures tiny-llama-mha / tiny-llama-gqa (f32, as a user loads them), the DeepSeek
 * export loadable as DeepseekV3ForCausalLM, and every refusal a clear error. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/context.h"
#include "autograd/rng.h"
#include "convert/convert.h"
#include "convert_testutil.h"
#include "convert/mla_internal.h"
#include "data/tokenizer_load.h"
#include "model/checkpoint.h"
#include "model/hf_config.h"
#include "train/eval.h"

#define T_SEQ KVF_TEST_T_SEQ

/* ---- helpers -------------------------------------------------------------------------------- */

static kvf_model *random_model(int n_kv, kvf_dtype dt, uint64_t seed) {
    kvf_model_config c;
    kvf_model_config_defaults(&c);
    c.vocab_size = 37;
    c.d_model = 32;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = n_kv;
    c.head_dim = 8;
    c.d_ff = 48;
    c.max_seq_len = 32;
    c.rope_theta = 50.0; /* short context: every frequency turns */
    c.init_std = 0.25;   /* attention far from uniform */
    c.param_dtype = dt;
    kvf_model *m = kvf_model_init(&c, KVF_DEVICE_CPU);
    ck_assert_msg(m != NULL, "%s", kvf_error_message());
    ck_assert(kvf_model_init_weights(m, seed) == KVF_OK);
    return m;
}

static kvf_convert_opts mla_opts(const char *style, int R, int D) {
    kvf_convert_opts o;
    memset(&o, 0, sizeof o);
    o.to = KVF_CONVERT_MLA;
    o.kv_rank = R;
    o.rope_dim = D;
    o.freqfold = 1;
    strcpy(o.style, style);
    strcpy(o.rope_select, "norm");
    return o;
}

static kvf_model *fixture(const char *name, kvf_dtype dt, char *dir, size_t n) {
    snprintf(dir, n, "%s/fixtures/%s", kvf_test_shared(), name);
    char cfg[1200];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    if (access(cfg, R_OK) != 0) return NULL;
    kvf_model *m = kvf_checkpoint_load_as(dir, KVF_DEVICE_CPU, dt);
    ck_assert_msg(m != NULL, "%s: %s", dir, kvf_error_message());
    return m;
}

/* ---- partial-RoPE (MHA2MLA) ------------------------------------------------------------------ */

START_TEST(partial_all_full_rank_exact) {
    int kvs[] = {4, 2, 1};
    const char *sel[] = {"norm", "high", "low", "uniform"};
    for (int k = 0; k < 3; k++)
        for (int s = 0; s < 4; s++) {
            kvf_model *src = random_model(kvs[k], KVF_DTYPE_F64, 10 + k);
            kvf_calib cal;
            kvf_test_calibrate(src, &cal, NULL, 3);
            kvf_convert_opts o = mla_opts("partial-rope", kvs[k] * 8, -1);
            strcpy(o.rope_select, sel[s]);
            kvf_model *dst = kvf_convert_mla_partial(src, &o, &cal, NULL);
            ck_assert_msg(dst != NULL, "%s", kvf_error_message());
            ck_assert_int_eq(dst->cfg.attn, KVF_ATTN_MLA_PARTIAL_ROPE);
            ck_assert_int_eq(dst->cfg.partial_rope_dim, 8);
            double md = kvf_test_max_logit_diff(src, dst, NULL, 0, 0);
            ck_assert_msg(md < 1e-10, "partial all, %d KV heads, %s: max logit diff %g", kvs[k], sel[s], md);
            kvf_model_free(dst);
            kvf_calib_free(&cal);
            kvf_model_free(src);
        }
}
END_TEST

/* Step 0 of the partial route: the projections themselves as the latent (identity up). */
START_TEST(partial_identity_latent_exact) {
    kvf_model *src = random_model(2, KVF_DTYPE_F64, 5);
    kvf_mla_tuning t;
    kvf_mla_tuning_defaults(&t, false);
    t.factor = KVF_MLA_FACTOR_IDENTITY;
    kvf_convert_opts o = mla_opts("partial-rope", 16, -1);
    strcpy(o.rope_select, "high");
    kvf_model *dst = kvf_convert_mla_partial_tuned(src, &o, NULL, &t, NULL);
    ck_assert_msg(dst != NULL, "%s", kvf_error_message());
    double md = kvf_test_max_logit_diff(src, dst, NULL, 0, 0);
    ck_assert_msg(md < 1e-10, "identity latent: %g", md);
    kvf_model_free(dst);
    kvf_model_free(src);
}
END_TEST

/* With some frequencies dropped the RoPE change is lossy, but the SVD at full rank is exact:
 * it must equal the identity latent with the same kept frequencies. */
START_TEST(partial_svd_full_rank_equals_identity) {
    int kvs[] = {4, 2};
    int Ds[] = {2, 4, 6, 0};
    for (int k = 0; k < 2; k++)
        for (int di = 0; di < 4; di++) {
            kvf_model *src = random_model(kvs[k], KVF_DTYPE_F64, 21 + k);
            kvf_calib cal;
            kvf_test_calibrate(src, &cal, NULL, 4);
            int D = Ds[di], W = kvs[k] * (8 - D) + kvs[k] * 8;
            kvf_convert_opts o = mla_opts("partial-rope", W, D);
            kvf_mla_tuning t;
            kvf_mla_tuning_defaults(&t, false);
            kvf_model *a = kvf_convert_mla_partial_tuned(src, &o, &cal, &t, NULL);
            t.factor = KVF_MLA_FACTOR_IDENTITY;
            kvf_model *b = kvf_convert_mla_partial_tuned(src, &o, &cal, &t, NULL);
            ck_assert_msg(a && b, "%s", kvf_error_message());
            double md = kvf_test_max_logit_diff(a, b, NULL, 0, 0), lossy = kvf_test_max_logit_diff(src, a, NULL, 0, 0);
            ck_assert_msg(md < 1e-10, "SVD vs identity, %d KV, D=%d: %g", kvs[k], D, md);
            ck_assert_msg(lossy > 1e-6, "dropping RoPE frequencies should change the logits (D=%d)", D);
            /* a lower rank is lossy */
            o.kv_rank = (W < 32 ? W : 32) / 2; /* below the rank of M (at most d_model) */
            kvf_model *c = kvf_convert_mla_partial(src, &o, &cal, NULL);
            ck_assert(c && kvf_test_max_logit_diff(a, c, NULL, 0, 0) > 1e-6);
            kvf_model_free(a);
            kvf_model_free(b);
            kvf_model_free(c);
            kvf_calib_free(&cal);
            kvf_model_free(src);
        }
}
END_TEST

START_TEST(partial_frequency_selection) {
    kvf_model *src = random_model(2, KVF_DTYPE_F64, 8);
    kvf_calib cal;
    kvf_test_calibrate(src, &cal, NULL, 5);
    float f[4];
    for (int i = 0; i < 4; i++) f[i] = (float)kvf_tensor_get_flat(src->rope_inv_freq, i);
    struct {
        const char *sel;
        int want[2];
    } cases[] = {{"high", {0, 1}}, {"low", {2, 3}}, {"uniform", {0, 2}}};
    for (int c = 0; c < 3; c++) {
        kvf_convert_opts o = mla_opts("partial-rope", 8, 4);
        strcpy(o.rope_select, cases[c].sel);
        kvf_model *dst = kvf_convert_mla_partial(src, &o, NULL, NULL);
        ck_assert_msg(dst != NULL, "%s", kvf_error_message());
        for (int l = 0; l < 2; l++)
            for (int j = 0; j < 2; j++)
                for (int t = 0; t < 2; t++)
                    ck_assert_msg(kvf_tensor_get(dst->layers[l].rope_freqs, (int64_t[]){j, t}) == f[cases[c].want[t]],
                                  "%s: layer %d head %d slot %d", cases[c].sel, l, j, t);
        kvf_model_free(dst);
    }
    /* norm: make frequency 3 of KV head 1 (both halves) dominate in layer 0's keys */
    double *wk = kvf_cv_tensor_read(src->layers[0].k_w);
    for (int x = 0; x < 32; x++) {
        wk[(8 + 3) * 32 + x] *= 40;
        wk[(8 + 3 + 4) * 32 + x] *= 40;
    }
    ck_assert(kvf_cv_tensor_write(src->layers[0].k_w, wk) == KVF_OK);
    free(wk);
    kvf_calib_free(&cal);
    kvf_test_calibrate(src, &cal, NULL, 5);
    kvf_convert_opts o = mla_opts("partial-rope", 8, 2);
    kvf_model *dst = kvf_convert_mla_partial(src, &o, &cal, NULL);
    ck_assert_msg(dst != NULL, "%s", kvf_error_message());
    ck_assert(kvf_tensor_get(dst->layers[0].rope_freqs, (int64_t[]){1, 0}) == f[3]);
    kvf_model_free(dst);
    kvf_calib_free(&cal);
    kvf_model_free(src);
}
END_TEST

/* ---- DeepSeek (TransMLA) ---------------------------------------------------------------------- */

/* RoRoPE with F = 1, every component kept with RoPE at its group's frequency: attention
 * scores unchanged (orthogonal or query-whitened mixing of same-frequency pairs). Checked on
 * the projections directly, for random inputs at random positions. */
START_TEST(rorope_f1_exact) {
    int kvs[] = {4, 2, 1};
    for (int k = 0; k < 3; k++)
        for (int qa = 0; qa < 2; qa++) {
            kvf_model *src = random_model(kvs[k], KVF_DTYPE_F64, 30 + k);
            kvf_calib cal;
            kvf_test_calibrate(src, &cal, NULL, 6);
            struct kvf_rorope rr;
            ck_assert_msg(kvf_mla_rorope(src, &cal, 1, 1, qa, &rr) == KVF_OK, "%s", kvf_error_message());
            int Dm = 32, d = 8, h = 4, g = kvs[k], half = 4;
            ck_assert_int_eq(rr.pairs, g * half);
            double *Wq = kvf_cv_tensor_read(src->layers[1].q_w), *Wk = kvf_cv_tensor_read(src->layers[1].k_w);
            kvf_rng r;
            kvf_rng_init(&r, 99);
            double worst = 0, scale = 0;
            for (int trial = 0; trial < 20; trial++) {
                double x1[32], x2[32], q[32], kk[32];
                for (int i = 0; i < Dm; i++) x1[i] = kvf_rng_normal(&r), x2[i] = kvf_rng_normal(&r);
                int p1 = (int)kvf_rng_below(&r, 30), p2 = (int)kvf_rng_below(&r, 30);
                for (int i = 0; i < h; i++) {
                    int j = i / (h / g);
                    for (int e = 0; e < d; e++) {
                        q[e] = kk[e] = 0;
                        for (int x = 0; x < Dm; x++) {
                            q[e] += Wq[(i * d + e) * Dm + x] * x1[x];
                            kk[e] += Wk[(j * d + e) * Dm + x] * x2[x];
                        }
                    }
                    double ref = 0, got = 0;
                    for (int f = 0; f < half; f++) { /* rotated dot product, half layout */
                        double w = kvf_tensor_get_flat(src->rope_inv_freq, f), ang = w * (p1 - p2);
                        ref += (q[f] * kk[f] + q[f + half] * kk[f + half]) * cos(ang) +
                               (q[f] * kk[f + half] - q[f + half] * kk[f]) * sin(ang);
                    }
                    for (int P = 0; P < rr.pairs; P++) {
                        int f = P / rr.group_size; /* F = 1: group a = frequency a */
                        double w = kvf_tensor_get_flat(src->rope_inv_freq, f), ang = w * (p1 - p2);
                        double qx = 0, qy = 0, kx = 0, ky = 0;
                        for (int e = 0; e < d; e++) {
                            qx += rr.cqx[((size_t)i * rr.pairs + P) * d + e] * q[e];
                            qy += rr.cqy[((size_t)i * rr.pairs + P) * d + e] * q[e];
                        }
                        for (int x = 0; x < Dm; x++) kx += rr.kx[P * Dm + x] * x2[x], ky += rr.ky[P * Dm + x] * x2[x];
                        got += (qx * kx + qy * ky) * cos(ang) + (qx * ky - qy * kx) * sin(ang);
                    }
                    worst = fmax(worst, fabs(got - ref));
                    scale = fmax(scale, fabs(ref));
                }
            }
            ck_assert_msg(worst < 1e-10 * fmax(1, scale), "RoRoPE F=1 (%d KV, query-aware %d): %g (scale %g)",
                          kvs[k], qa, worst, scale);
            /* energies descend within each frequency group */
            for (int P = 1; P < rr.pairs; P++)
                if (P % rr.group_size) ck_assert(rr.energy[P] <= rr.energy[P - 1] * (1 + 1e-9) + 1e-12);
            free(Wq);
            free(Wk);
            kvf_mla_rorope_free(&rr);
            kvf_calib_free(&cal);
            kvf_model_free(src);
        }
}
END_TEST

/* MQA source, rope-dim = head_dim, F = 1: RoRoPE keeps everything with RoPE, K_nope is empty
 * and the latent is V at full rank — the whole DeepSeek pipeline (identity up-projection,
 * RoRoPE, PCA, query absorption and scale, interleaved layout, latent norm) must be exact. */
START_TEST(deepseek_mqa_full_pipeline_exact) {
    enum kvf_mla_norm_mode modes[] = {KVF_MLA_NORM_OFF, KVF_MLA_NORM_LINEAR};
    for (int mi = 0; mi < 2; mi++)
        for (int variant = 0; variant < 4; variant++) {
            kvf_model *src = random_model(1, KVF_DTYPE_F64, 40 + variant);
            kvf_calib cal;
            kvf_test_calibrate(src, &cal, NULL, 7);
            kvf_mla_tuning t;
            kvf_mla_tuning_defaults(&t, true);
            t.norm = modes[mi];
            t.rorope_query_aware = variant & 1;
            t.kv_output_aware = variant & 2;
            kvf_convert_opts o = mla_opts("deepseek", 8, 8);
            kvf_model *dst = kvf_convert_mla_deepseek_tuned(src, &o, &cal, &t, NULL);
            ck_assert_msg(dst != NULL, "%s", kvf_error_message());
            ck_assert_int_eq(dst->cfg.attn, KVF_ATTN_MLA);
            ck_assert_int_eq(dst->cfg.qk_rope_head_dim, 8);
            ck_assert_int_eq(dst->cfg.qk_nope_head_dim, 8);
            ck_assert_int_eq(dst->cfg.rope_layout, KVF_ROPE_INTERLEAVED);
            ck_assert(dst->cfg.mla_kv_norm == (modes[mi] != KVF_MLA_NORM_OFF));
            double md = kvf_test_max_logit_diff(src, dst, NULL, 0, 0), tol = modes[mi] == KVF_MLA_NORM_OFF ? 1e-10 : 1e-5;
            ck_assert_msg(md < tol * fmax(1, kvf_test_logit_scale(src)), "norm mode %d variant %d: max logit diff %g", modes[mi],
                          variant, md);
            /* low-rank queries at full rank: exact too (q_a_layernorm in the linear regime) */
            o.q_rank = 32;
            kvf_model *q = kvf_convert_mla_deepseek_tuned(src, &o, &cal, &t, NULL);
            ck_assert_msg(q != NULL, "%s", kvf_error_message());
            ck_assert_int_eq(q->cfg.q_lora_rank, 32);
            md = kvf_test_max_logit_diff(src, q, NULL, 0, 0);
            ck_assert_msg(md < 1e-5 * fmax(1, kvf_test_logit_scale(src)), "q-rank full: %g", md);
            kvf_model_free(q);
            kvf_model_free(dst);
            kvf_calib_free(&cal);
            kvf_model_free(src);
        }
}
END_TEST

/* With several KV heads the RoPE drop is the one lossy step; at full rank every later step is
 * exact, so all these must give the same model function: identity latent (GQA as MLA, no PCA),
 * PCA, PCA without BKV, output-aware latent. */
START_TEST(deepseek_exact_steps_agree) {
    int kvs[] = {4, 2};
    int Ds[][2] = {{8, 1}, {4, 2}, {2, 4}};
    for (int k = 0; k < 2; k++)
        for (int di = 0; di < 3; di++) {
            kvf_model *src = random_model(kvs[k], KVF_DTYPE_F64, 50 + k);
            kvf_calib cal;
            kvf_test_calibrate(src, &cal, NULL, 8);
            int D = Ds[di][0], W = 2 * kvs[k] * 8 - D;
            kvf_convert_opts o = mla_opts("deepseek", W, D);
            o.freqfold = Ds[di][1];
            kvf_model *m[5];
            for (int v = 0; v < 5; v++) {
                kvf_mla_tuning t;
                kvf_mla_tuning_defaults(&t, true);
                t.norm = KVF_MLA_NORM_OFF;
                if (v == 0) t.factor = KVF_MLA_FACTOR_IDENTITY;
                if (v == 2) t.bkv = false;
                if (v == 3) t.kv_output_aware = true;
                if (v == 4) t.norm = KVF_MLA_NORM_LINEAR;
                m[v] = kvf_convert_mla_deepseek_tuned(src, &o, &cal, &t, NULL);
                ck_assert_msg(m[v] != NULL, "%s", kvf_error_message());
            }
            double sc = fmax(1, kvf_test_logit_scale(src));
            for (int v = 1; v < 5; v++) {
                double md = kvf_test_max_logit_diff(m[0], m[v], NULL, 0, 0);
                ck_assert_msg(md < (v == 4 ? 1e-5 : 1e-10) * sc, "%d KV, D=%d: variant %d vs identity latent: %g",
                              kvs[k], D, v, md);
            }
            /* the RoPE drop itself is visible, and a lower rank is lossy */
            ck_assert(kvf_test_max_logit_diff(src, m[0], NULL, 0, 0) > 1e-6);
            o.kv_rank = W / 3;
            kvf_model *low = kvf_convert_mla_deepseek(src, &o, &cal, NULL);
            ck_assert(low && kvf_test_max_logit_diff(m[0], low, NULL, 0, 0) > 1e-6);
            kvf_model_free(low);
            for (int v = 0; v < 5; v++) kvf_model_free(m[v]);
            kvf_calib_free(&cal);
            kvf_model_free(src);
        }
}
END_TEST

/* The DeepSeek result is written as DeepseekV3ForCausalLM and reads back as the same model;
 * without kv_a_layernorm it can only be kvforge's own type. */
START_TEST(deepseek_export_roundtrip) {
    kvf_model *src = random_model(2, KVF_DTYPE_F32, 60);
    kvf_calib cal;
    kvf_test_calibrate(src, &cal, NULL, 9);
    kvf_convert_opts o = mla_opts("deepseek", 12, 4);
    o.freqfold = 2;
    kvf_model *dst = kvf_convert_mla_deepseek(src, &o, &cal, NULL);
    ck_assert_msg(dst != NULL, "%s", kvf_error_message());
    ck_assert_int_eq(kvf_hf_config_arch(&dst->cfg), KVF_HF_DEEPSEEK_V3);
    char dir[] = "/tmp/kvf_mla_testXXXXXX";
    ck_assert(mkdtemp(dir) != NULL);
    char out[256];
    snprintf(out, sizeof out, "%s/ds", dir);
    ck_assert_msg(kvf_checkpoint_save(dst, out, KVF_DTYPE_F32, 0) == KVF_OK, "%s", kvf_error_message());
    kvf_model *back = kvf_checkpoint_load(out, KVF_DEVICE_CPU);
    ck_assert_msg(back != NULL, "%s", kvf_error_message());
    char arch[64];
    kvf_model_config rc;
    ck_assert(kvf_hf_config_read(out, &rc, arch, sizeof arch) == KVF_OK);
    ck_assert_str_eq(arch, "DeepseekV3ForCausalLM");
    ck_assert_msg(kvf_test_max_logit_diff(dst, back, NULL, 0, 0) == 0, "round trip changed the logits");
    /* partial-RoPE: kvforge's own type, rope_freqs included */
    kvf_convert_opts p = mla_opts("partial-rope", 20, 4);
    kvf_model *pm = kvf_convert_mla_partial(src, &p, &cal, NULL);
    ck_assert_msg(pm != NULL, "%s", kvf_error_message());
    snprintf(out, sizeof out, "%s/pr", dir);
    ck_assert_msg(kvf_checkpoint_save(pm, out, KVF_DTYPE_F32, 0) == KVF_OK, "%s", kvf_error_message());
    kvf_model *pb = kvf_checkpoint_load(out, KVF_DEVICE_CPU);
    ck_assert_msg(pb != NULL, "%s", kvf_error_message());
    ck_assert(kvf_hf_config_read(out, &rc, arch, sizeof arch) == KVF_OK);
    ck_assert_str_eq(arch, "KvforgeForCausalLM");
    ck_assert_msg(kvf_test_max_logit_diff(pm, pb, NULL, 0, 0) == 0, "partial round trip changed the logits");
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert(system(cmd) == 0);
    kvf_model_free(pb);
    kvf_model_free(pm);
    kvf_model_free(back);
    kvf_model_free(dst);
    kvf_calib_free(&cal);
    kvf_model_free(src);
}
END_TEST

/* ---- errors --------------------------------------------------------------------------------- */

static void expect_error(kvf_model *(*fn)(const kvf_model *, const kvf_convert_opts *, const kvf_calib *, FILE *),
                         const kvf_model *src, const kvf_convert_opts *o, const kvf_calib *cal, const char *needle) {
    kvf_error_clear();
    kvf_model *m = fn(src, o, cal, NULL);
    ck_assert_msg(m == NULL, "expected an error containing \"%s\"", needle);
    ck_assert_msg(strstr(kvf_error_message(), needle) != NULL, "message \"%s\" lacks \"%s\"", kvf_error_message(),
                  needle);
    kvf_error_clear();
}

START_TEST(errors_are_clear) {
    kvf_model *src = random_model(2, KVF_DTYPE_F32, 70);
    kvf_calib cal;
    kvf_test_calibrate(src, &cal, NULL, 10);
    kvf_convert_opts o = mla_opts("deepseek", 29, 4);
    o.freqfold = 2;
    expect_error(kvf_convert_mla_deepseek, src, &o, &cal, "--kv-rank 29 is above the maximum 28");
    o.kv_rank = 0;
    expect_error(kvf_convert_mla_deepseek, src, &o, &cal, "--kv-rank is required");
    o.kv_rank = 8;
    o.rope_dim = 3;
    expect_error(kvf_convert_mla_deepseek, src, &o, &cal, "--rope-dim 3");
    o.rope_dim = 10;
    expect_error(kvf_convert_mla_deepseek, src, &o, &cal, "at most head_dim 8");
    o.rope_dim = 6;
    expect_error(kvf_convert_mla_deepseek, src, &o, &cal, "divide it");
    o.rope_dim = -1;
    expect_error(kvf_convert_mla_deepseek, src, &o, &cal, "--rope-dim all is only for --style partial-rope");
    o.rope_dim = 4;
    o.freqfold = 1;
    expect_error(kvf_convert_mla_deepseek, src, &o, &cal, "--freqfold 1 must be a multiple of");
    o.freqfold = 3;
    expect_error(kvf_convert_mla_deepseek, src, &o, &cal, "--freqfold 3");
    o.freqfold = 2;
    o.q_rank = 33;
    expect_error(kvf_convert_mla_deepseek, src, &o, &cal, "--q-rank 33 is above the maximum 32");
    o.q_rank = 0;
    expect_error(kvf_convert_mla_deepseek, src, &o, NULL, "needs calibration data");

    kvf_convert_opts p = mla_opts("partial-rope", 33, 0);
    expect_error(kvf_convert_mla_partial, src, &p, &cal, "--kv-rank 33 is above the maximum 32");
    p.rope_dim = -1;
    p.kv_rank = 17;
    expect_error(kvf_convert_mla_partial, src, &p, &cal, "--kv-rank 17 is above the maximum 16");
    p.kv_rank = 8;
    p.rope_dim = 5;
    expect_error(kvf_convert_mla_partial, src, &p, &cal, "--rope-dim 5");
    p.rope_dim = 10;
    expect_error(kvf_convert_mla_partial, src, &p, &cal, "at most head_dim 8");
    p.rope_dim = 4;
    expect_error(kvf_convert_mla_partial, src, &p, NULL, "--rope-select norm needs calibration data");
    strcpy(p.rope_select, "middle");
    expect_error(kvf_convert_mla_partial, src, &p, &cal, "--rope-select middle");

    /* unsupported sources */
    kvf_model_config c = src->cfg;
    c.qkv_bias = true;
    kvf_model *qwen = kvf_model_init(&c, KVF_DEVICE_CPU);
    o.kv_rank = 8;
    p.kv_rank = 8;
    strcpy(p.rope_select, "high");
    expect_error(kvf_convert_mla_deepseek, qwen, &o, &cal, "attention biases (q/k/v, as in Qwen2)");
    expect_error(kvf_convert_mla_partial, qwen, &p, &cal, "attention biases (q/k/v, as in Qwen2)");
    c = src->cfg;
    c.pos = KVF_POS_LEARNED;
    kvf_model *gpt2 = kvf_model_init(&c, KVF_DEVICE_CPU);
    expect_error(kvf_convert_mla_deepseek, gpt2, &o, &cal, "learned (GPT-2-style) positions");
    expect_error(kvf_convert_mla_partial, gpt2, &p, &cal, "learned (GPT-2-style) positions");
    kvf_model *mla = kvf_convert_mla_deepseek(src, &o, &cal, NULL);
    ck_assert_msg(mla != NULL, "%s", kvf_error_message());
    expect_error(kvf_convert_mla_deepseek, mla, &o, &cal, "already uses MLA");
    expect_error(kvf_convert_mla_partial, mla, &p, &cal, "already uses MLA");
    c = src->cfg;
    c.kv_source[1] = 0;
    kvf_model *cla = kvf_model_init(&c, KVF_DEVICE_CPU);
    expect_error(kvf_convert_mla_partial, cla, &p, &cal, "cross-layer sharing");
    c = src->cfg;
    kvf_calib other = cal;
    other.n_layers = 1;
    expect_error(kvf_convert_mla_deepseek, src, &o, &other, "do not belong to this model");
    kvf_model_free(cla);
    kvf_model_free(mla);
    kvf_model_free(gpt2);
    kvf_model_free(qwen);
    kvf_calib_free(&cal);
    kvf_model_free(src);
}
END_TEST

/* ---- the shared fixtures ------------------------------------------------------------------------ */

static const char *fixtures[] = {"tiny-llama-mha", "tiny-llama-gqa"};

START_TEST(fixture_partial_all_exact) {
    for (int fi = 0; fi < 2; fi++)
        for (int dt = 0; dt < 2; dt++) {
            char dir[1100];
            kvf_model *src = fixture(fixtures[fi], dt ? KVF_DTYPE_F64 : KVF_DTYPE_F32, dir, sizeof dir);
            if (!src) {
                fprintf(stderr, "skipping %s: fixture not found\n", fixtures[fi]);
                continue;
            }
            kvf_convert_opts o = mla_opts("partial-rope", src->cfg.n_kv_heads * src->cfg.v_head_dim, -1);
            kvf_model *dst = kvf_convert_mla_partial(src, &o, NULL, NULL);
            ck_assert_msg(dst != NULL, "%s", kvf_error_message());
            double md = kvf_test_max_logit_diff(src, dst, NULL, 0, 0);
            fprintf(stderr, "%s (%s): partial-RoPE, all frequencies, full rank: max |Δlogit| = %.3g\n",
                    fixtures[fi], dt ? "f64" : "f32", md);
            ck_assert_msg(md <= (dt ? 1e-9 : 1e-4), "%s: max logit diff %g", fixtures[fi], md);
            kvf_model_free(dst);
            kvf_model_free(src);
        }
}
END_TEST

/* On the fixtures: the exact DeepSeek steps agree at full rank (f32 → 1e-4), and the conversion
 * at a peer setting is at least as good as TransMLA's published number for these fixtures. */
START_TEST(fixture_deepseek) {
    for (int fi = 0; fi < 2; fi++) {
        char dir[1100];
        kvf_model *src = fixture(fixtures[fi], KVF_DTYPE_F32, dir, sizeof dir);
        if (!src) {
            fprintf(stderr, "skipping %s: fixture not found\n", fixtures[fi]);
            continue;
        }
        kvf_ids cal_ids = kvf_test_kjv_tokens(dir, 0, 200000);
        if (cal_ids.count < 32 * 256 + 1) {
            fprintf(stderr, "skipping %s: kjv.txt not found\n", fixtures[fi]);
            kvf_model_free(src);
            continue;
        }
        kvf_calib cal;
        ck_assert(kvf_calib_collect(src, cal_ids.data, 32 * 256 + 1, 256, 0, &cal, NULL) == KVF_OK);
        int g = src->cfg.n_kv_heads, d = src->cfg.head_dim, W = 2 * g * d - 16;
        kvf_convert_opts o = mla_opts("deepseek", W, 16);
        kvf_mla_tuning t;
        kvf_mla_tuning_defaults(&t, true);
        t.factor = KVF_MLA_FACTOR_IDENTITY;
        t.norm = KVF_MLA_NORM_OFF;
        kvf_model *ident = kvf_convert_mla_deepseek_tuned(src, &o, &cal, &t, NULL);
        kvf_model *def = kvf_convert_mla_deepseek(src, &o, &cal, NULL);
        ck_assert_msg(ident && def, "%s", kvf_error_message());
        double md = kvf_test_max_logit_diff(ident, def, NULL, 0, 0);
        fprintf(stderr, "%s: deepseek D=16 full rank %d vs identity latent: max |Δlogit| = %.3g\n", fixtures[fi], W, md);
        ck_assert_msg(md < 1e-4, "%s: %g", fixtures[fi], md);
        /* quality: val loss as reference.json, at the peer's D=16 F=1 mid rank */
        char path[1200];
        snprintf(path, sizeof path, "%s/data/kjv.txt", kvf_test_shared());
        FILE *f = fopen(path, "rb");
        fseek(f, 0, SEEK_END);
        long len = ftell(f);
        fclose(f);
        kvf_ids val = kvf_test_kjv_tokens(dir, (size_t)(len * 0.95), 60000); /* ASCII: chars = bytes */
        ck_assert(val.count >= 8192);
        o.kv_rank = fi == 0 ? 48 : 32;
        kvf_model *mid = kvf_convert_mla_deepseek(src, &o, &cal, NULL);
        ck_assert_msg(mid != NULL, "%s", kvf_error_message());
        kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
        kvf_eval_result r0, r1;
        ck_assert(kvf_eval_stream(src, ctx, val.data, val.count, 128, 8192, 8, &r0) == KVF_OK);
        ck_assert(kvf_eval_stream(mid, ctx, val.data, val.count, 128, 8192, 8, &r1) == KVF_OK);
        double peer = fi == 0 ? 3.4102692868974476 : 3.3937126871139283,
               ref = fi == 0 ? 3.1607302824656167 : 3.2983957812899636;
        fprintf(stderr, "%s: val loss source %.4f (HF %.4f), deepseek D=16 F=1 r=%d %.4f (TransMLA %.4f)\n",
                fixtures[fi], r0.loss, ref, o.kv_rank, r1.loss, peer);
        ck_assert(fabs(r0.loss - ref) < 1e-4);
        ck_assert_msg(r1.loss <= peer, "%s: %.4f worse than TransMLA's %.4f", fixtures[fi], r1.loss, peer);
        kvf_ctx_free(ctx);
        kvf_ids_free(&val);
        kvf_model_free(mid);
        kvf_model_free(ident);
        kvf_model_free(def);
        kvf_calib_free(&cal);
        kvf_ids_free(&cal_ids);
        kvf_model_free(src);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("convert_mla");
    TCase *tc = tcase_create("mla");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, partial_all_full_rank_exact);
    tcase_add_test(tc, partial_identity_latent_exact);
    tcase_add_test(tc, partial_svd_full_rank_equals_identity);
    tcase_add_test(tc, partial_frequency_selection);
    tcase_add_test(tc, rorope_f1_exact);
    tcase_add_test(tc, deepseek_mqa_full_pipeline_exact);
    tcase_add_test(tc, deepseek_exact_steps_agree);
    tcase_add_test(tc, deepseek_export_roundtrip);
    tcase_add_test(tc, errors_are_clear);
    tcase_add_test(tc, fixture_partial_all_exact);
    tcase_add_test(tc, fixture_deepseek);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
