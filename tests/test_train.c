/* Training end to end on the CPU: every attention variant learns (its loss falls below the
 * unigram entropy of the data, computed here), a checkpoint reloads to identical logits,
 * a run resumed from its checkpoint continues bit for bit, eval follows the §8 windows,
 * and a NaN loss stops the run with a clear error. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/ops.h"
#include "convert/convert.h"
#include "data/corpus.h"
#include "data/tokenizer.h"
#include "model/checkpoint.h"
#include "train/eval.h"
#include "data/fsutil.h"
#include "train/trainer.h"

static char tmpdir[256], corpus[512];

/* A corpus with structure a small model can learn fast: sentences from a tiny grammar. */
static void write_corpus(void) {
    static const char *subj[] = {"the king", "a prophet", "the people", "my servant", "his son"};
    static const char *verb[] = {"spake unto", "went up to", "blessed", "smote", "answered"};
    static const char *obj[] = {"the city.", "the house of god.", "all israel.", "the land.", "them."};
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", tmpdir);
    FILE *f = fopen(corpus, "wb");
    ck_assert_ptr_nonnull(f);
    unsigned s = 12345;
    for (int i = 0; i < 6000; i++) {
        s = s * 1103515245u + 12345u;
        int a = (s >> 16) % 5;
        s = s * 1103515245u + 12345u;
        int b = (s >> 16) % 5;
        fprintf(f, "%s %s %s\n", subj[a], verb[(a + b) % 5], obj[b]);
    }
    fclose(f);
}

static double unigram_entropy(const char *path) {
    FILE *f = fopen(path, "rb");
    double cnt[256] = {0}, n = 0;
    int ch;
    while ((ch = fgetc(f)) != EOF) {
        cnt[ch]++;
        n++;
    }
    fclose(f);
    double h = 0;
    for (int i = 0; i < 256; i++)
        if (cnt[i] > 0) h -= cnt[i] / n * log(cnt[i] / n);
    return h; /* nats per byte */
}

static void setup(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/kvf_train_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    write_corpus();
    kvf_error_clear();
}

static void teardown(void) { kvf_fs_remove_tree(tmpdir); }

static void base_config(kvf_run_config *c, const char *name, const char *attention) {
    kvf_run_config_defaults(c);
    snprintf(c->name, sizeof c->name, "%s", name);
    snprintf(c->out_dir, sizeof c->out_dir, "%s/runs", tmpdir);
    snprintf(c->attention, sizeof c->attention, "%s", attention);
    snprintf(c->train_data, sizeof c->train_data, "%s", corpus);
    c->model.d_model = 32;
    c->model.n_layers = 2;
    c->model.n_heads = 4;
    c->seq_len = 32;
    c->batch_size = 8;
    c->lr = 3e-3;
    c->min_lr = 3e-4;
    c->warmup_steps = 10;
    c->steps = 80;
    c->log_every = 1000;
    c->eval_tokens = 4096;
    c->seed = 3;
}

static FILE *quiet(void) { return fopen("/dev/null", "w"); }

static const char *variants[] = {"mha", "gqa2", "mqa", "sqa_q2kv2", "cla2_mha", "swa8_mha",
                                 "mla_r16", "mla_partial_r16_d4"};
#define N_VARIANTS (int)(sizeof variants / sizeof variants[0])

START_TEST(every_variant_learns) {
    double h = unigram_entropy(corpus);
    kvf_run_config c;
    base_config(&c, variants[_i], variants[_i]);
    ck_assert_msg(kvf_run_config_finish(&c, "test") == KVF_OK, "%s", kvf_error_message());
    FILE *log = quiet();
    kvf_train_opts o = {.config_path = "test", .log = log};
    kvf_train_result r;
    ck_assert_msg(kvf_train(&c, &o, &r) == KVF_OK, "%s: %s", variants[_i], kvf_error_message());
    fclose(log);
    fprintf(stderr, "%-20s val loss %.3f (unigram entropy %.3f)\n", variants[_i], r.val_loss, h);
    ck_assert_int_eq(r.steps_done, 80);
    ck_assert_msg(r.val_loss < h - 0.3, "%s: val loss %.3f not below the unigram entropy %.3f",
                  variants[_i], r.val_loss, h);
}
END_TEST

static kvf_tensor *logits_of(kvf_model *m, kvf_ctx *ctx, const int32_t *ids, int64_t T) {
    kvf_tensor *x = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, (int64_t[]){1, T}, ids);
    return kvf_model_forward(m, ctx, x);
}

START_TEST(resume_is_bit_exact_and_checkpoint_reloads) {
    kvf_run_config c;
    base_config(&c, "straight", "gqa2");
    c.steps = 40;
    c.eval_every = 20;
    ck_assert(kvf_run_config_finish(&c, "test") == KVF_OK);
    FILE *log = quiet();
    kvf_train_opts o = {.config_path = "test", .log = log};
    kvf_train_result r1, r2;
    ck_assert_msg(kvf_train(&c, &o, &r1) == KVF_OK, "%s", kvf_error_message());
    /* the same run in two halves */
    snprintf(c.name, sizeof c.name, "halves");
    o.stop_after = 20;
    ck_assert_msg(kvf_train(&c, &o, &r2) == KVF_OK, "%s", kvf_error_message());
    ck_assert_int_eq(r2.steps_done, 20);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/runs/halves", tmpdir);
    o.stop_after = 0;
    o.resume_dir = dir;
    ck_assert_msg(kvf_train(&c, &o, &r2) == KVF_OK, "%s", kvf_error_message());
    fclose(log);
    ck_assert_int_eq(r2.steps_done, 40);
    ck_assert_msg(r1.last_loss == r2.last_loss, "loss %.9g vs %.9g", r1.last_loss, r2.last_loss);
    ck_assert_msg(r1.val_loss == r2.val_loss, "val loss %.9g vs %.9g", r1.val_loss, r2.val_loss);
    char p1[1024], p2[1024];
    snprintf(p1, sizeof p1, "%s/runs/straight/checkpoint", tmpdir);
    snprintf(p2, sizeof p2, "%s/runs/halves/checkpoint", tmpdir);
    kvf_model *a = kvf_checkpoint_load(p1, KVF_DEVICE_CPU), *b = kvf_checkpoint_load(p2, KVF_DEVICE_CPU);
    ck_assert_msg(a && b, "%s", kvf_error_message());
    kvf_tensor *va = kvf_params_values(a->params), *vb = kvf_params_values(b->params);
    ck_assert_int_eq(kvf_tensor_numel(va), kvf_tensor_numel(vb));
    ck_assert_msg(memcmp(kvf_tensor_data(va), kvf_tensor_data(vb), kvf_tensor_nbytes(va)) == 0,
                  "parameters differ after resume");
    /* reloaded checkpoint: identical logits to a save → load of itself */
    char p3[1024];
    snprintf(p3, sizeof p3, "%s/resaved", tmpdir);
    ck_assert_int_eq(kvf_checkpoint_save(a, p3, KVF_DTYPE_F32, 0), KVF_OK);
    kvf_model *a2 = kvf_checkpoint_load(p3, KVF_DEVICE_CPU);
    ck_assert_ptr_nonnull(a2);
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_ctx_set_grad(ctx, false);
    int32_t ids[16];
    for (int i = 0; i < 16; i++) ids[i] = "the king spake u"[i];
    kvf_tensor *l1 = logits_of(a, ctx, ids, 16), *l2 = logits_of(a2, ctx, ids, 16);
    ck_assert_ptr_nonnull(l1);
    ck_assert_ptr_nonnull(l2);
    ck_assert(memcmp(kvf_tensor_data(l1), kvf_tensor_data(l2), kvf_tensor_nbytes(l1)) == 0);
    kvf_ctx_free(ctx);
    kvf_model_free(a);
    kvf_model_free(a2);
    kvf_model_free(b);
}
END_TEST

/* run.recompute: blocks re-runs every block in backward; the floats are the same, so the
 * whole run (losses, validation, final weights) must be identical to recompute: none —
 * for CLA too, where K/V cross block boundaries. */
START_TEST(recompute_run_is_bit_exact) {
    const char *att[] = {"gqa2", "cla2_mla_r16"};
    for (int v = 0; v < 2; v++) {
        kvf_run_config c;
        kvf_train_result r[2];
        kvf_model *m[2];
        for (int k = 0; k < 2; k++) {
            char name[64];
            snprintf(name, sizeof name, "%s_%s", att[v], k ? "blocks" : "none");
            base_config(&c, name, att[v]);
            c.model.n_layers = 4;
            c.steps = 12;
            c.eval_every = 6;
            ck_assert_int_eq(kvf_run_config_set(&c, k ? "run.recompute=blocks" : "run.recompute=none"), KVF_OK);
            ck_assert_msg(kvf_run_config_finish(&c, "test") == KVF_OK, "%s", kvf_error_message());
            FILE *log = quiet();
            kvf_train_opts o = {.config_path = "test", .log = log};
            ck_assert_msg(kvf_train(&c, &o, &r[k]) == KVF_OK, "%s: %s", name, kvf_error_message());
            fclose(log);
            char p[1024];
            snprintf(p, sizeof p, "%s/checkpoint", r[k].run_dir);
            m[k] = kvf_checkpoint_load(p, KVF_DEVICE_CPU);
            ck_assert_msg(m[k] != NULL, "%s", kvf_error_message());
        }
        ck_assert_msg(r[0].last_loss == r[1].last_loss, "%s: loss %.9g vs %.9g", att[v], r[0].last_loss, r[1].last_loss);
        ck_assert_msg(r[0].val_loss == r[1].val_loss, "%s: val loss %.9g vs %.9g", att[v], r[0].val_loss, r[1].val_loss);
        kvf_tensor *a = kvf_params_values(m[0]->params), *b = kvf_params_values(m[1]->params);
        ck_assert_int_eq(kvf_tensor_numel(a), kvf_tensor_numel(b));
        ck_assert_msg(memcmp(kvf_tensor_data(a), kvf_tensor_data(b), kvf_tensor_nbytes(a)) == 0,
                      "%s: weights differ after training with recompute", att[v]);
        kvf_model_free(m[0]);
        kvf_model_free(m[1]);
    }
}
END_TEST

/* model.init_from: uptraining starts from a converted checkpoint. With lr 0 the run's final
 * weights are the converted ones byte for byte (so they were loaded, not initialised), and
 * training from them lowers the validation loss; other model keys are refused. */
START_TEST(init_from_converted_checkpoint) {
    kvf_run_config c;
    base_config(&c, "src", "mha");
    c.model.n_layers = 4;
    c.steps = 40;
    ck_assert(kvf_run_config_finish(&c, "test") == KVF_OK);
    FILE *log = quiet();
    kvf_train_opts o = {.config_path = "test", .log = log};
    kvf_train_result r;
    ck_assert_msg(kvf_train(&c, &o, &r) == KVF_OK, "%s", kvf_error_message());
    char src[1024], conv[1024];
    snprintf(src, sizeof src, "%s/runs/src/checkpoint", tmpdir);
    snprintf(conv, sizeof conv, "%s/cla2", tmpdir);
    kvf_convert_opts co;
    kvf_convert_opts_defaults(&co);
    co.to = KVF_CONVERT_CLA;
    co.share = 2;
    ck_assert_msg(kvf_convert_run(src, conv, &co, log) == KVF_OK, "%s", kvf_error_message());

    double val[2];
    for (int k = 0; k < 2; k++) {
        char yaml[2048];
        snprintf(yaml, sizeof yaml,
                 "run: {name: up%d, out_dir: %s/runs, seed: 3}\nmodel: {init_from: %s}\n"
                 "data: {train: %s, seq_len: 32, batch_size: 8}\n"
                 "optim: {lr: %s, min_lr: 0, warmup_steps: 0}\ntrain: {steps: %d, log_every: 1000, eval_tokens: 4096}\n",
                 k, tmpdir, conv, corpus, k ? "3e-3" : "0", k ? 40 : 1);
        kvf_run_config u;
        kvf_run_config_defaults(&u);
        ck_assert_msg(kvf_run_config_load(&u, "up.yaml", yaml) == KVF_OK, "%s", kvf_error_message());
        ck_assert_msg(kvf_run_config_finish(&u, "up.yaml") == KVF_OK, "%s", kvf_error_message());
        ck_assert_msg(kvf_train(&u, &o, &r) == KVF_OK, "%s", kvf_error_message());
        val[k] = r.val_loss;
        if (k == 0) {
            char out[1024];
            snprintf(out, sizeof out, "%s/runs/up0/checkpoint", tmpdir);
            kvf_model *a = kvf_checkpoint_load(conv, KVF_DEVICE_CPU), *b = kvf_checkpoint_load(out, KVF_DEVICE_CPU);
            ck_assert_msg(a && b, "%s", kvf_error_message());
            ck_assert_int_eq(a->cfg.kv_source[1], 0); /* still CLA2 */
            ck_assert_int_eq(b->cfg.kv_source[1], 0);
            kvf_tensor *va = kvf_params_values(a->params), *vb = kvf_params_values(b->params);
            ck_assert_int_eq(kvf_tensor_numel(va), kvf_tensor_numel(vb));
            ck_assert_msg(memcmp(kvf_tensor_data(va), kvf_tensor_data(vb), kvf_tensor_nbytes(va)) == 0,
                          "an lr-0 run from init_from changed (or never loaded) the weights");
            kvf_model_free(a);
            kvf_model_free(b);
        }
    }
    fclose(log);
    fprintf(stderr, "cla2 from a trained mha: val loss %.4f -> %.4f after 40 steps\n", val[0], val[1]);
    ck_assert_msg(val[1] < val[0] - 0.01, "uptraining did not help: %.4f -> %.4f", val[0], val[1]);

    kvf_run_config u;
    kvf_run_config_defaults(&u);
    char yaml[2048];
    snprintf(yaml, sizeof yaml, "model: {init_from: %s, d_model: 64}\ndata: {train: %s}\n", conv, corpus);
    ck_assert(kvf_run_config_load(&u, "bad.yaml", yaml) == KVF_OK);
    ck_assert_int_eq(kvf_run_config_finish(&u, "bad.yaml"), KVF_ERR_ARG);
    ck_assert_msg(strstr(kvf_error_message(), "model.d_model") && strstr(kvf_error_message(), "init_from"), "%s",
                  kvf_error_message());
    kvf_error_clear();
    kvf_run_config_defaults(&u);
    snprintf(yaml, sizeof yaml, "model: {init_from: %s/nope}\ndata: {train: %s}\n", tmpdir, corpus);
    ck_assert(kvf_run_config_load(&u, "bad.yaml", yaml) == KVF_OK);
    ck_assert(kvf_run_config_finish(&u, "bad.yaml") != KVF_OK);
    ck_assert_msg(strstr(kvf_error_message(), "model.init_from") && strstr(kvf_error_message(), "nope"), "%s",
                  kvf_error_message());
    kvf_error_clear();
}
END_TEST

START_TEST(eval_windows_match_definition) {
    /* eval over N tokens with window W equals the mean of per-window losses computed one
     * window at a time, over floor((N-1)/W) windows */
    kvf_model_config mc;
    kvf_model_config_defaults(&mc);
    mc.vocab_size = 40;
    mc.d_model = 16;
    mc.n_heads = 2;
    mc.max_seq_len = 32;
    kvf_model *m = kvf_model_init(&mc, KVF_DEVICE_CPU);
    ck_assert_int_eq(kvf_model_init_weights(m, 5), KVF_OK);
    int32_t tok[101];
    for (int i = 0; i < 101; i++) tok[i] = (i * 7 + i / 3) % 40;
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_eval_result r;
    ck_assert_int_eq(kvf_eval_stream(m, ctx, tok, 101, 16, 0, 3, &r), KVF_OK);
    ck_assert_int_eq(r.tokens, 6 * 16); /* floor(100/16) = 6 windows */
    double sum = 0;
    kvf_ctx_set_grad(ctx, false);
    for (int w = 0; w < 6; w++) {
        kvf_ctx_reset(ctx);
        kvf_tensor *x = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, (int64_t[]){1, 16}, tok + 16 * w);
        kvf_tensor *y = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, (int64_t[]){1, 16}, tok + 16 * w + 1);
        double v;
        ck_assert_int_eq(kvf_tensor_item(kvf_model_loss(m, ctx, x, y), &v), KVF_OK);
        sum += v;
    }
    ck_assert_double_eq_tol(r.loss, sum / 6, 1e-6);
    ck_assert_double_eq_tol(r.ppl, exp(r.loss), 1e-9);
    /* max_tokens cuts the stream first: 40 tokens → 2 windows */
    ck_assert_int_eq(kvf_eval_stream(m, ctx, tok, 101, 16, 40, 3, &r), KVF_OK);
    ck_assert_int_eq(r.tokens, 32);
    kvf_error_clear();
    ck_assert_int_eq(kvf_eval_stream(m, ctx, tok, 10, 16, 0, 3, &r), KVF_ERR_ARG);
    kvf_error_clear();
    kvf_ctx_free(ctx);
    kvf_model_free(m);
}
END_TEST

START_TEST(divergence_stops_with_an_error) {
    kvf_run_config c;
    base_config(&c, "diverge", "mha");
    c.lr = 1e6; /* guaranteed to blow up */
    c.min_lr = 0;
    c.warmup_steps = 0;
    c.grad_clip = 0;
    c.steps = 60;
    ck_assert(kvf_run_config_finish(&c, "test") == KVF_OK);
    FILE *log = quiet();
    kvf_train_opts o = {.config_path = "test", .log = log};
    kvf_train_result r;
    kvf_error_clear();
    ck_assert_int_eq(kvf_train(&c, &o, &r), KVF_ERR_NUMERIC);
    fclose(log);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "diverged"));
    ck_assert_int_ge(r.skipped, 0);
    kvf_error_clear();
}
END_TEST

START_TEST(existing_run_needs_resume) {
    kvf_run_config c;
    base_config(&c, "twice", "mha");
    c.steps = 2;
    c.warmup_steps = 0;
    ck_assert(kvf_run_config_finish(&c, "test") == KVF_OK);
    FILE *log = quiet();
    kvf_train_opts o = {.config_path = "test", .log = log};
    kvf_train_result r;
    ck_assert_int_eq(kvf_train(&c, &o, &r), KVF_OK);
    kvf_error_clear();
    ck_assert_int_eq(kvf_train(&c, &o, &r), KVF_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "--resume"));
    kvf_error_clear();
    snprintf(c.train_data, sizeof c.train_data, "%s/missing.txt", tmpdir);
    snprintf(c.name, sizeof c.name, "missing");
    ck_assert_int_ne(kvf_train(&c, &o, &r), KVF_OK);
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "missing.txt"));
    fclose(log);
    kvf_error_clear();
}
END_TEST

int main(void) {
    Suite *s = suite_create("train");
    TCase *tc = tcase_create("train");
    tcase_set_timeout(tc, 600);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_loop_test(tc, every_variant_learns, 0, N_VARIANTS);
    tcase_add_test(tc, resume_is_bit_exact_and_checkpoint_reloads);
    tcase_add_test(tc, eval_windows_match_definition);
    tcase_add_test(tc, recompute_run_is_bit_exact);
    tcase_add_test(tc, divergence_stops_with_an_error);
    tcase_add_test(tc, existing_run_needs_resume);
    tcase_add_test(tc, init_from_converted_checkpoint);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    /* no fork per test: in a forked child the parent's idle OpenMP/OpenBLAS threads keep
     * spinning on the second core and training runs ~15x slower */
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
