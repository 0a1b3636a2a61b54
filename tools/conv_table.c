/* conv_table — the MLA conversion quality table of docs/conversions.md.
 *
 *   kvf_conv_table [--shared DIR] [--calib random|first] [--model NAME]… [--experiments]
 *
 * For each fixture model (default tiny-llama-mha and tiny-llama-gqa under DIR/fixtures, DIR
 * defaulting to $KVF_SHARED, else ../shared): validation loss exactly as the fixtures'
 * reference.json (the val text = kjv.txt from character floor(0.95·len) on, tokenized with
 * the model's tokenizer.json, first 8192 tokens, windows of 128), for the source, the
 * DeepSeek-style conversion at the settings of peer-transmla.json (printed beside the peer
 * number), the partial-RoPE conversion at equal KV budgets, and mean-pooled GQA/MQA.
 * Calibration (--calib): random = 128 windows of 256 tokens at random starts (kvforge's
 * xoshiro RNG, seed 42) in the train split, like the peer's run; first = the first 32768
 * train tokens in windows of 256.
 * --experiments adds the ablations behind the documented choices (latent norm handling,
 * query-aware RoRoPE, BKV, rope selection). Prints Markdown. Not a test: it takes a minute. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/rng.h"
#include "convert/convert.h"
#include "convert/mla_internal.h"
#include "data/tokenizer_load.h"
#include "model/checkpoint.h"
#include "train/eval.h"

static const char *shared_dir = NULL;
static bool calib_random = true;
static bool ablations_only = false;

static void die(const char *what) {
    fprintf(stderr, "conv_table: %s: %s\n", what, kvf_error_message());
    exit(1);
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "conv_table: cannot open %s\n", path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (!b || fread(b, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "conv_table: cannot read %s\n", path);
        exit(1);
    }
    b[n] = 0;
    fclose(f);
    *len = (size_t)n;
    return b;
}

/* Byte offset of character floor(0.95 · characters) of UTF-8 text (Python's str split). */
static size_t split_offset(const char *t, size_t len) {
    size_t chars = 0;
    for (size_t i = 0; i < len; i++) chars += ((unsigned char)t[i] & 0xC0) != 0x80;
    size_t target = (size_t)((double)chars * 0.95), c = 0, i = 0;
    for (; i < len; i++) {
        if (((unsigned char)t[i] & 0xC0) != 0x80) {
            if (c == target) break;
            c++;
        }
    }
    return i;
}

struct data {
    kvf_ids val, calib;
};

static void load_data(const char *model_dir, struct data *D) {
    char path[1024];
    snprintf(path, sizeof path, "%s/data/kjv.txt", shared_dir);
    size_t len;
    char *text = read_file(path, &len);
    size_t sp = split_offset(text, len);
    kvf_tokenizer *tok = kvf_tokenizer_open(model_dir);
    if (!tok) die("tokenizer");
    kvf_ids train = {0};
    memset(D, 0, sizeof *D);
    if (kvf_tokenizer_encode(tok, text + sp, len - sp, &D->val) != KVF_OK ||
        kvf_tokenizer_encode(tok, text, sp, &train) != KVF_OK)
        die("tokenize");
    if (D->val.count > 8192) D->val.count = 8192;
    const int64_t W = 256, N = 128;
    if (calib_random) {
        kvf_rng r;
        kvf_rng_init(&r, 42);
        for (int64_t w = 0; w < N; w++) {
            int64_t s = (int64_t)kvf_rng_below(&r, (uint64_t)(train.count - W));
            kvf_ids_append(&D->calib, train.data + s, W);
        }
        kvf_ids_push(&D->calib, 0); /* the last window's unused target */
    } else {
        kvf_ids_append(&D->calib, train.data, N * W + 1);
    }
    kvf_ids_free(&train);
    kvf_tokenizer_free(tok);
    free(text);
}

static double eval(kvf_model *m, const struct data *D) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_eval_result r;
    if (!ctx || kvf_eval_stream(m, ctx, D->val.data, D->val.count, 128, 8192, 8, &r) != KVF_OK) die("eval");
    kvf_ctx_free(ctx);
    return r.loss;
}

static double peer_value(json_t *peer, const char *model, const char *key) {
    json_t *v = json_object_get(json_object_get(peer, model), key);
    return v ? json_number_value(v) : -1;
}

static void row(const char *model, const char *route, const char *settings, int kv, int kv_src, double loss,
                double peer, double src_loss) {
    printf("| %s | %s | %s | %d (%.0f%%) | %.4f | %+.4f |", model, route, settings, kv, 100.0 * kv / kv_src, loss,
           loss - src_loss);
    if (peer > 0) printf(" %.4f | %+.4f |\n", peer, loss - peer);
    else printf(" | |\n");
    fflush(stdout);
}

static double run_ds(kvf_model *src, const kvf_calib *cal, const struct data *D, int Dr, int F, int R, int RQ,
                     const kvf_mla_tuning *t) {
    kvf_convert_opts o;
    memset(&o, 0, sizeof o);
    o.to = KVF_CONVERT_MLA;
    o.kv_rank = R;
    o.rope_dim = Dr;
    o.freqfold = F;
    o.q_rank = RQ;
    strcpy(o.style, "deepseek");
    kvf_model *m = kvf_convert_mla_deepseek_tuned(src, &o, cal, t, NULL);
    if (!m) die("convert deepseek");
    double l = eval(m, D);
    kvf_model_free(m);
    return l;
}

static double run_pr(kvf_model *src, const kvf_calib *cal, const struct data *D, int Dr, int R, const char *sel) {
    kvf_convert_opts o;
    memset(&o, 0, sizeof o);
    o.to = KVF_CONVERT_MLA;
    o.kv_rank = R;
    o.rope_dim = Dr;
    strcpy(o.style, "partial-rope");
    strcpy(o.rope_select, sel);
    kvf_model *m = kvf_convert_mla_partial(src, &o, cal, NULL);
    if (!m) die("convert partial-rope");
    double l = eval(m, D);
    kvf_model_free(m);
    return l;
}

static double run_gqa(kvf_model *src, const kvf_calib *cal, const struct data *D, int kv_heads, const char *method) {
    kvf_convert_opts o;
    memset(&o, 0, sizeof o);
    o.to = kv_heads == 1 ? KVF_CONVERT_MQA : KVF_CONVERT_GQA;
    o.kv_heads = kv_heads;
    strcpy(o.method, method);
    kvf_model *m = kvf_convert_gqa(src, &o, strcmp(method, "calib") ? NULL : cal, NULL);
    if (!m) die("convert gqa");
    double l = eval(m, D);
    kvf_model_free(m);
    return l;
}

struct ds_setting {
    int D, F, R;
};

static void table_model(const char *name, json_t *peer, bool experiments) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/fixtures/%s", shared_dir, name);
    struct data D;
    load_data(dir, &D);
    kvf_model *src = kvf_checkpoint_load(dir, KVF_DEVICE_CPU);
    if (!src) die(dir);
    kvf_calib cal;
    if (kvf_calib_collect(src, D.calib.data, D.calib.count, 256, 0, &cal, NULL) != KVF_OK) die("calibration");
    const kvf_model_config *c = &src->cfg;
    int g = c->n_kv_heads, d = c->head_dim, kv_src = 2 * g * d;
    double s = eval(src, &D);
    struct ds_setting mha[] = {{16, 1, 112}, {16, 1, 48}, {16, 1, 16}, {8, 2, 56}, {8, 2, 24}, {0}};
    struct ds_setting gqa[] = {{16, 1, 48}, {16, 1, 32}, {16, 1, 16}, {8, 2, 24}, {8, 2, 16}, {0}};
    struct ds_setting *set = g == c->n_heads ? mha : gqa;
    /* partial-RoPE at the same budgets: (rope dims per KV head, rank) */
    int pr_mha[][2] = {{-1, 64}, {4, 48}, {8, 32}, {2, 24}, {4, 16}, {0, 0}};
    int pr_gqa[][2] = {{-1, 32}, {8, 32}, {4, 24}, {8, 16}, {4, 16}, {0, 0}};
    int(*pr)[2] = g == c->n_heads ? pr_mha : pr_gqa;
    kvf_mla_tuning t;
    kvf_mla_tuning_defaults(&t, true);
    if (ablations_only) goto ablations;
    row(name, "source", c->n_kv_heads == c->n_heads ? "MHA" : "GQA", kv_src, kv_src, s,
        peer_value(peer, name, "source"), s);
    for (int i = 0; set[i].R; i++) {
        char key[64], st[64];
        snprintf(key, sizeof key, "mla_D%d_F%d_r%d", set[i].D, set[i].F, set[i].R);
        snprintf(st, sizeof st, "D=%d F=%d r=%d", set[i].D, set[i].F, set[i].R);
        row(name, "deepseek", st, set[i].R + set[i].D, kv_src, run_ds(src, &cal, &D, set[i].D, set[i].F, set[i].R, 0, &t),
            peer_value(peer, name, key), s);
    }
    for (int i = 0; pr[i][1]; i++) {
        int Dr = pr[i][0] < 0 ? d : pr[i][0];
        char st[64];
        snprintf(st, sizeof st, "D=%s r=%d norm", pr[i][0] < 0 ? "all" : (char[8]){0}, pr[i][1]);
        if (pr[i][0] >= 0) snprintf(st, sizeof st, "D=%d/head r=%d norm", pr[i][0], pr[i][1]);
        row(name, "partial-rope", st, pr[i][1] + g * Dr, kv_src, run_pr(src, &cal, &D, pr[i][0], pr[i][1], "norm"), -1, s);
    }
    for (int kv = g / 2; kv >= 1; kv /= 2) {
        char st[64];
        for (int mth = 0; mth < 2; mth++) {
            const char *method = mth ? "calib" : "mean";
            snprintf(st, sizeof st, "%d KV head%s, %s", kv, kv > 1 ? "s" : "", method);
            row(name, kv == 1 ? "MQA" : "GQA", st, 2 * kv * d, kv_src, run_gqa(src, &cal, &D, kv, method), -1, s);
        }
    }
ablations:
    if (experiments) {
        printf("\n**%s ablations** (deepseek route unless noted)\n\n| setting | variant | val loss |\n|---|---|---|\n", name);
        for (int i = 0; set[i].R; i++) {
            const char *nm[] = {"TransMLA's steps (plain RoRoPE PCA)", "kvforge default (query-aware RoRoPE)",
                                "default, kv_a_layernorm weight = latent RMS", "default, no kv_a_layernorm",
                                "default without BKV", "default + output-aware latent"};
            for (int v = 0; v < 6; v++) {
                kvf_mla_tuning u;
                kvf_mla_tuning_defaults(&u, true);
                if (v == 0) u.rorope_query_aware = false;
                if (v == 2) u.norm = KVF_MLA_NORM_MEAN_RMS;
                if (v == 3) u.norm = KVF_MLA_NORM_OFF;
                if (v == 4) u.bkv = false;
                if (v == 5) u.kv_output_aware = true;
                printf("| D=%d F=%d r=%d | %s | %.4f |\n", set[i].D, set[i].F, set[i].R, nm[v],
                       run_ds(src, &cal, &D, set[i].D, set[i].F, set[i].R, 0, &u));
                fflush(stdout);
            }
        }
        int RQ = c->n_heads * d / 2;
        printf("| D=16 F=1 r=%d | default + --q-rank %d | %.4f |\n", set[1].R, RQ,
               run_ds(src, &cal, &D, 16, 1, set[1].R, RQ, &t));
        for (int i = 1; pr[i][1]; i++) {
            const char *sels[] = {"norm", "high", "low", "uniform"};
            for (int v = 0; v < 4; v++)
                printf("| partial-rope D=%d/head r=%d | %s | %.4f |\n", pr[i][0], pr[i][1], sels[v],
                       run_pr(src, &cal, &D, pr[i][0], pr[i][1], sels[v]));
        }
        printf("\n");
    }
    kvf_calib_free(&cal);
    kvf_model_free(src);
    kvf_ids_free(&D.val);
    kvf_ids_free(&D.calib);
}

int main(int argc, char **argv) {
    const char *models[8];
    int nm = 0;
    bool experiments = false;
    shared_dir = getenv("KVF_SHARED") ? getenv("KVF_SHARED") : "../shared";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--shared") && i + 1 < argc) shared_dir = argv[++i];
        else if (!strcmp(argv[i], "--calib") && i + 1 < argc) calib_random = strcmp(argv[++i], "first") != 0;
        else if (!strcmp(argv[i], "--model") && i + 1 < argc && nm < 8) models[nm++] = argv[++i];
        else if (!strcmp(argv[i], "--experiments")) experiments = true;
        else if (!strcmp(argv[i], "--ablations-only")) experiments = ablations_only = true;
        else {
            fprintf(stderr, "usage: kvf_conv_table [--shared DIR] [--calib random|first] [--model NAME]… [--experiments]\n");
            return 2;
        }
    }
    if (!nm) {
        models[nm++] = "tiny-llama-mha";
        models[nm++] = "tiny-llama-gqa";
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/fixtures/peer-transmla.json", shared_dir);
    json_error_t je;
    json_t *peer = json_load_file(path, 0, &je);
    printf("calibration: %s\n\n", calib_random ? "128 random windows of 256 train tokens (seed 42)"
                                               : "first 32768 train tokens, windows of 256");
    printf("| model | route | settings | KV elems/token/layer | val loss | vs source | TransMLA peer | vs peer |\n");
    printf("|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < nm; i++) table_model(models[i], peer, experiments);
    json_decref(peer);
    return 0;
}
