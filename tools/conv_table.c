/* conv_table — the conversion quality tables of docs/conversions.md.
 *
 *   kvf_conv_table [--shared DIR] [--calib random|first] [--model NAME]… [--model-dir PATH]…
 *                  [--experiments]
 *
 * For each model — fixtures by NAME under DIR/fixtures (default tiny-llama-mha and
 * tiny-llama-gqa when neither --model nor --model-dir is given; DIR defaults to $KVF_SHARED,
 * else ../shared), and any kvforge/HF model folder given with --model-dir (it must carry its
 * tokenizer) — the validation loss exactly as the fixtures' reference.json: the val text =
 * DIR/data/kjv.txt from character floor(0.95·len) on, tokenized with the model's tokenizer,
 * first 8192 tokens, windows of 128 (of max_seq_len when shorter). Rows:
 *   fixtures   DeepSeek-style MLA at the settings of peer-transmla.json (printed beside the
 *              peer number) and partial-RoPE MLA at equal KV budgets;
 *   --model-dir  both MLA routes at 50% and 25% of the source's KV cache (two RoPE widths
 *              each) plus their full-rank rows, which isolate the cost of the RoPE change;
 *   both       GQA/MQA with every method (mean, first, random, calib) at every halving of
 *              the KV heads, CLA with a producer every 2 layers (producer, mean, calib), and
 *              chained conversions MHA/GQA → GQA (half the KV heads) → CLA share 2, once with
 *              the data-free methods and once with calib at both stages.
 * Calibration (--calib): random = 128 windows of 256 tokens at random starts (kvforge's
 * xoshiro RNG, seed 42) in the train split, like the peer's run; first = the first 32768
 * train tokens in windows of 256. CLA calib, like `kvforge convert`, fits two ways and keeps
 * the one with the lower loss on 16384 held-out train tokens (64 more random windows of the
 * same RNG; with --calib first, the 16384 train tokens after the calibration ones).
 * --experiments adds, for fixtures, the ablations behind the documented choices (latent norm
 * handling, query-aware RoRoPE, BKV, rope selection). Prints Markdown. Not a test: the
 * fixtures and a 4-layer d=128 model take about 20 s on 2 idle cores. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/rng.h"
#include "convert/convert.h"
#include "convert/convert_impl.h"
#include "convert/mla_internal.h"
#include "data/tokenizer_load.h"
#include "model/checkpoint.h"
#include "train/eval.h"

#define VAL_TOKENS 8192
#define CAL_WINDOWS 128
#define HELD_WINDOWS 64

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
    kvf_ids val, calib, held; /* held: CLA calib's fit selection, never in calib */
    int64_t eval_w, cal_w;    /* window lengths (128 and 256, or max_seq_len when shorter) */
};

static void load_data(const char *model_dir, int64_t max_seq_len, struct data *D) {
    char path[1024];
    snprintf(path, sizeof path, "%s/data/kjv.txt", shared_dir);
    size_t len;
    char *text = read_file(path, &len);
    size_t sp = split_offset(text, len);
    kvf_tokenizer *tok = kvf_tokenizer_open(model_dir);
    if (!tok) die("tokenizer (the model folder must carry tokenizer.json or kvforge_tokenizer.json)");
    kvf_ids train = {0};
    memset(D, 0, sizeof *D);
    if (kvf_tokenizer_encode(tok, text + sp, len - sp, &D->val) != KVF_OK ||
        kvf_tokenizer_encode(tok, text, sp, &train) != KVF_OK)
        die("tokenize");
    if (D->val.count > VAL_TOKENS) D->val.count = VAL_TOKENS;
    D->eval_w = max_seq_len < 128 ? max_seq_len : 128;
    D->cal_w = max_seq_len < 256 ? max_seq_len : 256;
    /* the same token budget (32768 + 16384) whatever the window */
    const int64_t W = D->cal_w, N = CAL_WINDOWS * 256 / W, NH = HELD_WINDOWS * 256 / W;
    if (train.count < (N + NH) * W + 1) {
        fprintf(stderr, "conv_table: the train split has only %lld tokens\n", (long long)train.count);
        exit(1);
    }
    if (calib_random) {
        kvf_rng r;
        kvf_rng_init(&r, 42);
        for (int64_t w = 0; w < N + NH; w++) {
            int64_t s = (int64_t)kvf_rng_below(&r, (uint64_t)(train.count - W));
            kvf_ids_append(w < N ? &D->calib : &D->held, train.data + s, W);
        }
        kvf_ids_push(&D->calib, 0); /* the last window's unused target */
        kvf_ids_push(&D->held, 0);
    } else {
        kvf_ids_append(&D->calib, train.data, N * W + 1);
        kvf_ids_append(&D->held, train.data + N * W + 1, NH * W + 1);
    }
    kvf_ids_free(&train);
    kvf_tokenizer_free(tok);
    free(text);
}

static double eval_on(kvf_model *m, const kvf_ids *ids, int64_t W, int64_t max_tokens) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    kvf_eval_result r;
    if (!ctx || kvf_eval_stream(m, ctx, ids->data, ids->count, W, max_tokens, 8, &r) != KVF_OK) die("eval");
    kvf_ctx_free(ctx);
    return r.loss;
}

static double eval(kvf_model *m, const struct data *D) { return eval_on(m, &D->val, D->eval_w, VAL_TOKENS); }

static double peer_value(json_t *peer, const char *model, const char *key) {
    json_t *v = json_object_get(json_object_get(peer, model), key);
    return v ? json_number_value(v) : -1;
}

/* KV elements per token per layer, averaged over layers (CLA: producers only, as the cache). */
static double kv_elems(const kvf_model_config *c) {
    return (double)kvf_model_kv_bytes_per_token(c) / 2.0 / c->n_layers;
}

static void row(const char *model, const char *route, const char *settings, double kv, double kv_src, double loss,
                double peer, double src_loss) {
    printf("| %s | %s | %s | %g (%.1f%%) | %.4f | %+.4f |", model, route, settings, kv, 100.0 * kv / kv_src, loss,
           loss - src_loss);
    if (peer > 0) printf(" %.4f | %+.4f |\n", peer, loss - peer);
    else printf(" | |\n");
    fflush(stdout);
}

/* Evaluates m, prints its row, frees it. */
static void row_model(const char *name, const char *route, const char *settings, kvf_model *m, const struct data *D,
                      double kv_src, double peer, double src_loss) {
    row(name, route, settings, kv_elems(&m->cfg), kv_src, eval(m, D), peer, src_loss);
    kvf_model_free(m);
}

static kvf_model *conv_ds(kvf_model *src, const kvf_calib *cal, int Dr, int F, int R, int RQ,
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
    return m;
}

static double run_ds(kvf_model *src, const kvf_calib *cal, const struct data *D, int Dr, int F, int R, int RQ,
                     const kvf_mla_tuning *t) {
    kvf_model *m = conv_ds(src, cal, Dr, F, R, RQ, t);
    double l = eval(m, D);
    kvf_model_free(m);
    return l;
}

static kvf_model *conv_pr(kvf_model *src, const kvf_calib *cal, int Dr, int R, const char *sel) {
    kvf_convert_opts o;
    memset(&o, 0, sizeof o);
    o.to = KVF_CONVERT_MLA;
    o.kv_rank = R;
    o.rope_dim = Dr;
    strcpy(o.style, "partial-rope");
    strcpy(o.rope_select, sel);
    kvf_model *m = kvf_convert_mla_partial(src, &o, cal, NULL);
    if (!m) die("convert partial-rope");
    return m;
}

static double run_pr(kvf_model *src, const kvf_calib *cal, const struct data *D, int Dr, int R, const char *sel) {
    kvf_model *m = conv_pr(src, cal, Dr, R, sel);
    double l = eval(m, D);
    kvf_model_free(m);
    return l;
}

static kvf_model *conv_gqa(kvf_model *src, const kvf_calib *cal, int kv_heads, const char *method) {
    kvf_convert_opts o;
    memset(&o, 0, sizeof o);
    o.to = kv_heads == 1 ? KVF_CONVERT_MQA : KVF_CONVERT_GQA;
    o.kv_heads = kv_heads;
    o.seed = 0; /* kvforge convert's default --seed */
    strcpy(o.method, method);
    kvf_model *m = kvf_convert_gqa(src, &o, strcmp(method, "calib") ? NULL : cal, NULL);
    if (!m) die("convert gqa");
    return m;
}

/* CLA with a producer every `share` layers. calib needs src's cross-layer moments, so it
 * collects them here (src may itself be a conversion: the chained rows), then does what
 * kvforge convert does (convert.c, cla_calib_select): fit producer-anchored and by
 * alternating least squares, keep the lower loss on the held-out tokens. which (may be NULL)
 * receives the kept fit's name. */
static kvf_model *conv_cla(kvf_model *src, const struct data *D, int share, const char *method, const char **which) {
    kvf_convert_opts o;
    memset(&o, 0, sizeof o);
    o.to = KVF_CONVERT_CLA;
    o.share = share;
    strcpy(o.method, method);
    if (strcmp(method, "calib")) {
        kvf_model *m = kvf_convert_cla(src, &o, NULL, NULL);
        if (!m) die("convert cla");
        return m;
    }
    const kvf_model_config *c = &src->cfg;
    int partner[KVF_MAX_LAYERS];
    for (int l = 0; l < c->n_layers; l++) partner[l] = l % share ? l / share * share : -1;
    kvf_calib cal;
    if (kvf_calib_collect_cross(src, D->calib.data, D->calib.count, D->cal_w, 0, partner, &cal, NULL) != KVF_OK)
        die("cross-layer calibration");
    struct kvf_cv_cla_tuning t[2];
    kvf_cv_cla_tuning_defaults(&t[0]);
    t[1] = t[0];
    t[1].init_producer = false;
    t[1].iters = 3;
    static const char *const label[2] = {"producer-anchored", "alternating LS"};
    kvf_model *best = NULL;
    double best_loss = 0;
    for (int i = 0; i < 2; i++) {
        kvf_model *m = kvf_cv_cla_tuned(src, &o, &cal, &t[i], NULL);
        if (!m) die("convert cla calib");
        double l = eval_on(m, &D->held, D->cal_w, 16384);
        if (!best || l < best_loss) {
            kvf_model_free(best);
            best = m;
            best_loss = l;
            if (which) *which = label[i];
        } else {
            kvf_model_free(m);
        }
    }
    kvf_calib_free(&cal);
    return best;
}

struct ds_setting {
    int D, F, R;
};

/* The fixtures' MLA rows: DeepSeek at the peer's settings, partial-RoPE at equal budgets. */
static void fixture_mla_rows(const char *name, json_t *peer, kvf_model *src, const kvf_calib *cal,
                             const struct data *D, double kv_src, double s, struct ds_setting *set, int (*pr)[2]) {
    const kvf_model_config *c = &src->cfg;
    int g = c->n_kv_heads, d = c->head_dim;
    kvf_mla_tuning t;
    kvf_mla_tuning_defaults(&t, true);
    for (int i = 0; set[i].R; i++) {
        char key[64], st[64];
        snprintf(key, sizeof key, "mla_D%d_F%d_r%d", set[i].D, set[i].F, set[i].R);
        snprintf(st, sizeof st, "D=%d F=%d r=%d", set[i].D, set[i].F, set[i].R);
        row(name, "deepseek", st, set[i].R + set[i].D, kv_src, run_ds(src, cal, D, set[i].D, set[i].F, set[i].R, 0, &t),
            peer_value(peer, name, key), s);
    }
    for (int i = 0; pr[i][1]; i++) {
        int Dr = pr[i][0] < 0 ? d : pr[i][0];
        char st[64];
        if (pr[i][0] < 0) snprintf(st, sizeof st, "D=all r=%d", pr[i][1]);
        else snprintf(st, sizeof st, "D=%d/head r=%d norm", pr[i][0], pr[i][1]);
        row(name, "partial-rope", st, pr[i][1] + g * Dr, kv_src, run_pr(src, cal, D, pr[i][0], pr[i][1], "norm"), -1, s);
    }
}

/* A --model-dir model's MLA rows: both routes at 50% and 25% of the source's KV elements,
 * each with two RoPE widths, after the full-rank rows (RoPE change alone). */
static void budget_mla_rows(const char *name, kvf_model *src, const kvf_calib *cal, const struct data *D,
                            double kv_src, double s) {
    const kvf_model_config *c = &src->cfg;
    int g = c->n_kv_heads, d = c->head_dim, dv = c->v_head_dim, full = g * (d + dv);
    kvf_mla_tuning t;
    kvf_mla_tuning_defaults(&t, true);
    int ds_D[2] = {d, d / 2}, pr_D[2] = {d / 4, d / 8};
    char st[96];
    /* full rank: the deepseek rows lose only the RoPE of the non-leading components, the
     * partial-rope row with every frequency is exact (the source's loss) */
    for (int k = 0; k < 2; k++) {
        int Dr = ds_D[k], R = full - Dr;
        if (Dr < 2 || Dr % 2 || R < 1) continue;
        snprintf(st, sizeof st, "D=%d r=%d (full rank)", Dr, R);
        row_model(name, "deepseek", st, conv_ds(src, cal, Dr, 0, R, 0, &t), D, kv_src, -1, s);
    }
    snprintf(st, sizeof st, "D=all r=%d (full rank)", g * dv);
    row_model(name, "partial-rope", st, conv_pr(src, cal, -1, g * dv, "norm"), D, kv_src, -1, s);
    for (int b = 2; b <= 4; b *= 2) {
        int B = full / b;
        for (int k = 0; k < 2; k++) {
            int Dr = ds_D[k], R = B - Dr;
            if (Dr < 2 || Dr % 2 || R < 1) continue;
            snprintf(st, sizeof st, "D=%d F=%d r=%d", Dr, d / Dr, R);
            row_model(name, "deepseek", st, conv_ds(src, cal, Dr, 0, R, 0, &t), D, kv_src, -1, s);
        }
        for (int k = 0; k < 2; k++) {
            int Dr = pr_D[k], R = B - g * Dr;
            if (Dr < 2 || Dr % 2 || R < 1) continue;
            snprintf(st, sizeof st, "D=%d/head r=%d norm", Dr, R);
            row_model(name, "partial-rope", st, conv_pr(src, cal, Dr, R, "norm"), D, kv_src, -1, s);
        }
    }
}

/* GQA/MQA (every method), CLA share 2 (every method) and the chained rows. */
static void common_rows(const char *name, kvf_model *src, const kvf_calib *cal, const struct data *D, double kv_src,
                        double s) {
    const kvf_model_config *c = &src->cfg;
    int g = c->n_kv_heads;
    static const char *const gqa_methods[] = {"mean", "first", "random", "calib"};
    char st[128];
    for (int kv = g / 2; kv >= 1 && g % kv == 0; kv /= 2) {
        for (int mth = 0; mth < 4; mth++) {
            snprintf(st, sizeof st, "%d KV head%s, %s", kv, kv > 1 ? "s" : "", gqa_methods[mth]);
            row_model(name, kv == 1 ? "MQA" : "GQA", st, conv_gqa(src, cal, kv, gqa_methods[mth]), D, kv_src, -1, s);
        }
        if (kv == 1) break;
    }
    if (c->n_layers < 2) return;
    static const char *const cla_methods[] = {"producer", "mean", "calib"};
    for (int mth = 0; mth < 3; mth++) {
        const char *which = NULL;
        kvf_model *m = conv_cla(src, D, 2, cla_methods[mth], &which);
        snprintf(st, sizeof st, "share 2, %s%s%s%s", cla_methods[mth], which ? " (kept: " : "", which ? which : "",
                 which ? ")" : "");
        row_model(name, "CLA", st, m, D, kv_src, -1, s);
    }
    if (g < 2) return;
    /* chained: halve the KV heads, then share across layer pairs (a quarter of the cache) */
    for (int k = 0; k < 2; k++) {
        kvf_model *gq = conv_gqa(src, cal, g / 2, k ? "calib" : "mean");
        const char *which = NULL;
        kvf_model *m = conv_cla(gq, D, 2, k ? "calib" : "producer", &which);
        snprintf(st, sizeof st, "→ %d KV head%s %s → CLA share 2 %s%s%s%s", g / 2, g / 2 > 1 ? "s" : "",
                 k ? "calib" : "mean", k ? "calib" : "producer", which ? " (kept: " : "", which ? which : "", which ? ")" : "");
        row_model(name, "chained", st, m, D, kv_src, -1, s);
        kvf_model_free(gq);
    }
}

static void ablations(const char *name, kvf_model *src, const kvf_calib *cal, const struct data *D,
                      struct ds_setting *set, int (*pr)[2]) {
    const kvf_model_config *c = &src->cfg;
    int d = c->head_dim;
    kvf_mla_tuning t;
    kvf_mla_tuning_defaults(&t, true);
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
                   run_ds(src, cal, D, set[i].D, set[i].F, set[i].R, 0, &u));
            fflush(stdout);
        }
    }
    int RQ = c->n_heads * d / 2;
    printf("| D=16 F=1 r=%d | default + --q-rank %d | %.4f |\n", set[1].R, RQ, run_ds(src, cal, D, 16, 1, set[1].R, RQ, &t));
    for (int i = 1; pr[i][1]; i++) {
        const char *sels[] = {"norm", "high", "low", "uniform"};
        for (int v = 0; v < 4; v++)
            printf("| partial-rope D=%d/head r=%d | %s | %.4f |\n", pr[i][0], pr[i][1], sels[v],
                   run_pr(src, cal, D, pr[i][0], pr[i][1], sels[v]));
    }
    printf("\n");
}

/* name: the row label; dir: the model folder; fixture: use the peer's settings. */
static void table_model(const char *name, const char *dir, bool fixture, json_t *peer, bool experiments) {
    kvf_model *src = kvf_checkpoint_load(dir, KVF_DEVICE_CPU);
    if (!src) die(dir);
    const kvf_model_config *c = &src->cfg;
    struct data D;
    load_data(dir, c->max_seq_len, &D);
    kvf_calib cal;
    if (kvf_calib_collect(src, D.calib.data, D.calib.count, D.cal_w, 0, &cal, NULL) != KVF_OK) die("calibration");
    int g = c->n_kv_heads;
    double kv_src = kv_elems(c);
    double s = eval(src, &D);
    struct ds_setting mha[] = {{16, 1, 112}, {16, 1, 48}, {16, 1, 16}, {8, 2, 56}, {8, 2, 24}, {0}};
    struct ds_setting gqa[] = {{16, 1, 48}, {16, 1, 32}, {16, 1, 16}, {8, 2, 24}, {8, 2, 16}, {0}};
    struct ds_setting *set = g == c->n_heads ? mha : gqa;
    /* partial-RoPE at the same budgets: (rope dims per KV head, rank) */
    int pr_mha[][2] = {{-1, 64}, {4, 48}, {8, 32}, {2, 24}, {4, 16}, {0, 0}};
    int pr_gqa[][2] = {{-1, 32}, {8, 32}, {4, 24}, {8, 16}, {4, 16}, {0, 0}};
    int(*pr)[2] = g == c->n_heads ? pr_mha : pr_gqa;
    if (!ablations_only) {
        row(name, "source", g == c->n_heads ? "MHA" : g == 1 ? "MQA" : "GQA", kv_src, kv_src, s,
            fixture ? peer_value(peer, name, "source") : -1, s);
        if (fixture) fixture_mla_rows(name, peer, src, &cal, &D, kv_src, s, set, pr);
        else budget_mla_rows(name, src, &cal, &D, kv_src, s);
        common_rows(name, src, &cal, &D, kv_src, s);
    }
    if (experiments && fixture) ablations(name, src, &cal, &D, set, pr);
    kvf_calib_free(&cal);
    kvf_model_free(src);
    kvf_ids_free(&D.val);
    kvf_ids_free(&D.calib);
    kvf_ids_free(&D.held);
}

/* Row label of a --model-dir folder: its name, or its parent's for kvforge's
 * RUN/checkpoint layout. */
static const char *dir_label(const char *path, char *buf, size_t n) {
    snprintf(buf, n, "%s", path);
    size_t len = strlen(buf);
    while (len > 1 && buf[len - 1] == '/') buf[--len] = 0;
    char *slash = strrchr(buf, '/');
    if (slash && !strcmp(slash + 1, "checkpoint") && slash != buf) {
        *slash = 0;
        slash = strrchr(buf, '/');
    }
    return slash ? slash + 1 : buf;
}

int main(int argc, char **argv) {
    const char *models[8], *dirs[8];
    int nm = 0, nd = 0;
    bool experiments = false;
    shared_dir = getenv("KVF_SHARED") ? getenv("KVF_SHARED") : "../shared";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--shared") && i + 1 < argc) shared_dir = argv[++i];
        else if (!strcmp(argv[i], "--calib") && i + 1 < argc) calib_random = strcmp(argv[++i], "first") != 0;
        else if (!strcmp(argv[i], "--model") && i + 1 < argc && nm < 8) models[nm++] = argv[++i];
        else if (!strcmp(argv[i], "--model-dir") && i + 1 < argc && nd < 8) dirs[nd++] = argv[++i];
        else if (!strcmp(argv[i], "--experiments")) experiments = true;
        else if (!strcmp(argv[i], "--ablations-only")) experiments = ablations_only = true;
        else {
            fprintf(stderr, "usage: kvf_conv_table [--shared DIR] [--calib random|first] [--model NAME]… "
                            "[--model-dir PATH]… [--experiments]\n");
            return 2;
        }
    }
    if (!nm && !nd) {
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
    for (int i = 0; i < nm; i++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/fixtures/%s", shared_dir, models[i]);
        table_model(models[i], dir, true, peer, experiments);
    }
    for (int i = 0; i < nd; i++) {
        char label[1024];
        table_model(dir_label(dirs[i], label, sizeof label), dirs[i], false, peer, experiments);
    }
    json_decref(peer);
    return 0;
}
