/* YAML run configs: parsing, every error names file:line and the key, --set overrides,
 * and docs/config.md documents every key the schema knows. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/run_config.h"

static kvf_status load(kvf_run_config *c, const char *text) {
    kvf_run_config_defaults(c);
    kvf_error_clear();
    kvf_status st = kvf_run_config_load(c, "run.yaml", text);
    if (st == KVF_OK) st = kvf_run_config_finish(c, "run.yaml");
    return st;
}

#define HAS(s) ck_assert_msg(strstr(kvf_error_message(), s), "message '%s' lacks '%s'", kvf_error_message(), s)

START_TEST(parses_a_full_config) {
    kvf_run_config c;
    const char *y = "run:\n  name: gqa\n  seed: 7\nmodel:\n  attention: gqa2\n  d_model: 64\n"
                    "  n_layers: 3\n  n_heads: 4\n  vocab_size: 256\n  kv_producers: [0, 2]\n"
                    "  window: 0,16,0\n  tie_embeddings: true\n"
                    "data:\n  train: corpus.txt\n  seq_len: 32\n  batch_size: 4\n"
                    "optim:\n  lr: 3e-4\n  min_lr: 3e-5\n  schedule: wsd\n  warmup_steps: 10\n"
                    "train:\n  steps: 1e3\n";
    ck_assert_msg(load(&c, y) == KVF_OK, "%s", kvf_error_message());
    ck_assert_str_eq(c.name, "gqa");
    ck_assert_int_eq(c.seed, 7);
    ck_assert_int_eq(c.model.n_kv_heads, 2);
    ck_assert_int_eq(c.model.d_model, 64);
    ck_assert_int_eq(c.model.kv_source[1], 0);
    ck_assert_int_eq(c.model.kv_source[2], 2);
    ck_assert_int_eq(c.model.window[1], 16);
    ck_assert(c.model.tie_embeddings);
    ck_assert_int_eq(c.model.max_seq_len, 32);
    ck_assert_double_eq(c.lr, 3e-4);
    ck_assert_str_eq(c.schedule, "wsd");
    ck_assert_int_eq(c.steps, 1000);
}
END_TEST

START_TEST(unknown_keys_are_errors) {
    kvf_run_config c;
    ck_assert_int_eq(load(&c, "model:\n  d_model: 64\n  n_head: 4\n"), KVF_ERR_ARG);
    HAS("run.yaml:3");
    HAS("'model.n_head'");
    HAS("did you mean 'model.n_heads'");
    ck_assert_int_eq(load(&c, "modle:\n  d_model: 64\n"), KVF_ERR_ARG);
    HAS("run.yaml:1");
    HAS("unknown section 'modle'");
    ck_assert_int_eq(load(&c, "optim:\n  zzz: 1\n"), KVF_ERR_ARG);
    HAS("unknown key 'optim.zzz'");
}
END_TEST

START_TEST(wrong_types_are_errors) {
    kvf_run_config c;
    ck_assert_int_eq(load(&c, "model:\n  d_model: wide\n"), KVF_ERR_ARG);
    HAS("run.yaml:2");
    HAS("model.d_model must be an integer");
    ck_assert_int_eq(load(&c, "model:\n  d_model: 64.5\n"), KVF_ERR_ARG);
    HAS("integer");
    ck_assert_int_eq(load(&c, "optim:\n  lr: \"0.1\"\n"), KVF_ERR_ARG); /* quoted: a string */
    HAS("optim.lr must be a number");
    ck_assert_int_eq(load(&c, "model:\n  tie_embeddings: maybe\n"), KVF_ERR_ARG);
    HAS("true or false");
    ck_assert_int_eq(load(&c, "model:\n  norm: batchnorm\n"), KVF_ERR_ARG);
    HAS("rmsnorm|layernorm");
    ck_assert_int_eq(load(&c, "optim:\n  lr: -1\n"), KVF_ERR_ARG);
    HAS("outside");
    ck_assert_int_eq(load(&c, "model:\n  d_model: [1, 2]\n"), KVF_ERR_ARG);
    HAS("single value");
    ck_assert_int_eq(load(&c, "model: 3\n"), KVF_ERR_ARG);
    HAS("must be a mapping");
    ck_assert_int_eq(load(&c, "model:\n  d_model: 64\n  d_model: 65\n"), KVF_ERR_FORMAT);
    HAS("appears twice");
    ck_assert_int_eq(load(&c, "model:\n  d_model: [64\n"), KVF_ERR_FORMAT);
    HAS("YAML syntax error");
}
END_TEST

START_TEST(impossible_shapes_are_errors) {
    kvf_run_config c;
    const char *base = "data:\n  train: x.txt\n";
    char y[512];
    snprintf(y, sizeof y, "%smodel:\n  vocab_size: 256\n  n_heads: 4\n  attention: gqa3\n", base);
    ck_assert_int_eq(load(&c, y), KVF_ERR_ARG);
    HAS("run.yaml");
    HAS("n_kv_heads (3) must divide n_q_heads (4)");
    snprintf(y, sizeof y, "%smodel:\n  n_layers: 4\n  kv_producers: 1,2\n", base);
    ck_assert_int_eq(load(&c, y), KVF_ERR_ARG);
    HAS("kv_producers must start with layer 0");
    snprintf(y, sizeof y, "%smodel:\n  n_layers: 4\n  window: 1,2\n", base);
    ck_assert_int_eq(load(&c, y), KVF_ERR_ARG);
    HAS("model.window");
    snprintf(y, sizeof y, "%smodel:\n  attention: gqa\n", base);
    ck_assert_int_eq(load(&c, y), KVF_ERR_ARG);
    HAS("model.attention");
    snprintf(y, sizeof y, "%smodel:\n  max_seq_len: 16\ndata:\n  seq_len: 32\n", "");
    ck_assert_int_eq(load(&c, y), KVF_ERR_ARG);
    HAS("seq_len");
    ck_assert_int_eq(load(&c, "model:\n  d_model: 64\n"), KVF_ERR_ARG);
    HAS("data.train is required");
}
END_TEST

START_TEST(match_params_tunes_d_ff) {
    /* each design's d_ff is chosen so its parameter count is within one d_ff step of MHA's */
    const char *designs[] = {"gqa2", "mqa", "sqa_q2kv2", "cla2_mha", "mla_r32"};
    kvf_run_config ref;
    ck_assert_int_eq(load(&ref, "data:\n  train: x\nmodel:\n  vocab_size: 257\n  d_model: 64\n  n_layers: 4\n"), KVF_OK);
    kvf_model_config_resolve(&ref.model);
    int64_t target = kvf_model_n_params(&ref.model);
    for (int i = 0; i < 5; i++) {
        char y[256];
        snprintf(y, sizeof y, "data:\n  train: x\nmodel:\n  vocab_size: 257\n  d_model: 64\n  n_layers: 4\n"
                 "  attention: %s\n  match_params: mha\n", designs[i]);
        kvf_run_config c;
        ck_assert_msg(load(&c, y) == KVF_OK, "%s: %s", designs[i], kvf_error_message());
        kvf_model_config_resolve(&c.model);
        int64_t n = kvf_model_n_params(&c.model), step = 3 * 64 * c.model.n_layers;
        ck_assert_msg(llabs(n - target) <= step / 2 + 1, "%s: %lld params vs %lld", designs[i],
                      (long long)n, (long long)target);
        /* cheaper attention (all but this MLA, whose latent path costs more here) → wider MLP */
        if (i < 4) ck_assert_int_gt(c.model.d_ff, ref.model.d_ff);
    }
}
END_TEST

START_TEST(set_overrides) {
    kvf_run_config c;
    kvf_run_config_defaults(&c);
    kvf_error_clear();
    ck_assert_int_eq(kvf_run_config_set(&c, "optim.lr=0.25"), KVF_OK);
    ck_assert_double_eq(c.lr, 0.25);
    ck_assert_int_eq(kvf_run_config_set(&c, "model.attention=mqa"), KVF_OK);
    ck_assert_str_eq(c.attention, "mqa");
    ck_assert_int_eq(kvf_run_config_set(&c, "model.d_modl=3"), KVF_ERR_ARG);
    HAS("did you mean 'model.d_model'");
    kvf_error_clear();
    ck_assert_int_eq(kvf_run_config_set(&c, "lr=3"), KVF_ERR_ARG);
    HAS("section.key=value");
    kvf_error_clear();
    ck_assert_int_eq(kvf_run_config_set(&c, "train.steps=ten"), KVF_ERR_ARG);
    HAS("--set train.steps");
    kvf_error_clear();
}
END_TEST

/* Found by fuzzing: "cla2x…" matched cla%d but not the '_', so sscanf never stored %n and the
 * variant parser recursed at an uninitialised offset. Now every such name is an error. */
START_TEST(variant_prefix_without_underscore) {
    const char *names[] = {"cla2", "cla2x_mha", "cla2mha", "swa16", "swa16gqa2", "cla2_swa8"};
    for (int i = 0; i < 6; i++) {
        char y[256];
        snprintf(y, sizeof y, "data:\n  train: x.txt\nmodel:\n  attention: %s\n", names[i]);
        kvf_run_config c;
        ck_assert_msg(load(&c, y) == KVF_ERR_ARG, "%s was accepted", names[i]);
        HAS("model.attention");
        HAS(names[i]);
        kvf_error_clear();
    }
    kvf_run_config c;
    ck_assert_int_eq(load(&c, "data:\n  train: x.txt\nmodel:\n  n_heads: 4\n  attention: cla2_gqa2\n"),
                     KVF_OK);
}
END_TEST

START_TEST(docs_list_every_key) {
    const char *src = getenv("KVF_SOURCE_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/docs/config.md", src ? src : "..");
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f, "cannot open %s", path);
    static char doc[1 << 16];
    size_t n = fread(doc, 1, sizeof doc - 1, f);
    doc[n] = 0;
    fclose(f);
    int nk;
    const struct kvf_run_key *k = kvf_run_config_keys(&nk);
    for (int i = 0; i < nk; i++) {
        char want[128];
        snprintf(want, sizeof want, "`%s.%s`", k[i].section, k[i].key);
        ck_assert_msg(strstr(doc, want), "docs/config.md does not document %s", want);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("run_config");
    TCase *tc = tcase_create("yaml");
    tcase_add_test(tc, parses_a_full_config);
    tcase_add_test(tc, unknown_keys_are_errors);
    tcase_add_test(tc, wrong_types_are_errors);
    tcase_add_test(tc, impossible_shapes_are_errors);
    tcase_add_test(tc, set_overrides);
    tcase_add_test(tc, match_params_tunes_d_ff);
    tcase_add_test(tc, docs_list_every_key);
    tcase_add_test(tc, variant_prefix_without_underscore);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
