/* `kvforge eval` parity with Hugging Face: for every fixture model, the validation loss on
 * the KJV val text (characters from floor(0.95·len) on, tokenized with the model's own
 * tokenizer.json, first 8192 tokens, windows of 128) must be within 1e-4 of the value HF
 * computed (reference.json). Skips with a message when ../shared is not beside the tree. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/corpus.h"
#include "data/tokenizer_load.h"
#include "model/checkpoint.h"
#include "train/eval.h"

static const char *fixtures[] = {"tiny-llama-mha",       "tiny-llama-gqa", "tiny-qwen2",
                                 "tiny-gpt2",            "tiny-deepseek-v3-mla",
                                 "tiny-deepseek-v3-mla-qlora"};
#define N_FIXTURES (int)(sizeof fixtures / sizeof fixtures[0])

static const char *shared(void) {
    const char *s = getenv("KVF_SHARED");
    return s ? s : "../shared";
}

static char *val_text(size_t *len) {
    char path[1024];
    snprintf(path, sizeof path, "%s/data/kjv.txt", shared());
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *all = malloc((size_t)n + 1);
    if (fread(all, 1, (size_t)n, f) != (size_t)n) n = 0;
    fclose(f);
    /* kjv.txt is pure ASCII, so characters are bytes (checked here) */
    long non_ascii = -1;
    for (long i = 0; i < n && non_ascii < 0; i++)
        if ((unsigned char)all[i] >= 0x80) non_ascii = i;
    ck_assert_msg(non_ascii < 0, "kjv.txt is not ASCII at %ld", non_ascii);
    size_t start = (size_t)floor(0.95 * (double)n);
    *len = (size_t)n - start;
    memmove(all, all + start, *len);
    all[*len] = 0;
    return all;
}

START_TEST(fixture_val_loss_matches_hf) {
    char dir[1024], ref[1100];
    snprintf(dir, sizeof dir, "%s/fixtures/%s", shared(), fixtures[_i]);
    snprintf(ref, sizeof ref, "%s/reference.json", dir);
    json_t *j = json_load_file(ref, 0, NULL);
    size_t len = 0;
    char *text = j ? val_text(&len) : NULL;
    if (!j || !text) {
        printf("%s: fixtures not found under %s: skipping HF eval parity\n", fixtures[_i], shared());
        json_decref(j);
        free(text);
        return;
    }
    double want = json_number_value(json_object_get(j, "val_loss_first_8192_tokens_window_128"));
    json_decref(j);
    kvf_error_clear();
    kvf_tokenizer *tok = kvf_tokenizer_open(dir);
    ck_assert_msg(tok, "%s: %s", fixtures[_i], kvf_error_message());
    kvf_token_stream ts = {0};
    kvf_corpus_opts co = {.tok = tok, .max_tokens = 8192};
    ck_assert_int_eq(kvf_corpus_read_buffer("val.txt", text, len, &co, &ts), KVF_OK);
    ck_assert_int_ge(ts.count, 8192);
    kvf_model *m = kvf_checkpoint_load(dir, KVF_DEVICE_CPU);
    ck_assert_msg(m, "%s: %s", fixtures[_i], kvf_error_message());
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_eval_result r;
    ck_assert_msg(kvf_eval_stream(m, ctx, ts.data, ts.count, 128, 8192, 8, &r) == KVF_OK, "%s",
                  kvf_error_message());
    printf("%-28s kvforge %.6f  HF %.6f  |diff| %.2e  (%lld tokens)\n", fixtures[_i], r.loss, want,
           fabs(r.loss - want), (long long)r.tokens);
    ck_assert_int_eq(r.tokens, 63 * 128); /* floor(8191 / 128) windows */
    ck_assert_msg(fabs(r.loss - want) <= 1e-4, "%s: val loss %.6f vs HF %.6f", fixtures[_i], r.loss, want);
    kvf_ctx_free(ctx);
    kvf_model_free(m);
    kvf_ids_free(&ts);
    kvf_tokenizer_free(tok);
    free(text);
}
END_TEST

int main(void) {
    Suite *s = suite_create("fixture_eval");
    TCase *tc = tcase_create("eval");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, fixture_val_loss_matches_hf, 0, N_FIXTURES);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK); /* see test_train.c: OpenMP threads after fork */
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
