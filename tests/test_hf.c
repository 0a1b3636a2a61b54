/* Hugging Face interop: config.json for every architecture (read → write → read identical),
 * checkpoint load/save (single file, shards, bf16, GPT-2 Conv1D layout, kvforge's own
 * model_type), logits parity with HF on ../shared/fixtures, and bad input: each error names
 * the file and the problem, and a failed save leaves nothing behind. */
#define _GNU_SOURCE
#include <check.h>
#include <dirent.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "autograd/ops.h"
#include "autograd/rng.h"
#include "model/checkpoint.h"
#include "model/hf_config.h"
#include "model/safetensors.h"
#include "model/variant.h"

static const char *fixture_names[] = {
    "tiny-llama-mha", "tiny-llama-gqa", "tiny-qwen2", "tiny-gpt2", "tiny-deepseek-v3-mla",
    "tiny-deepseek-v3-mla-qlora",
};
static const kvf_hf_arch fixture_archs[] = {
    KVF_HF_LLAMA, KVF_HF_LLAMA, KVF_HF_QWEN2, KVF_HF_GPT2, KVF_HF_DEEPSEEK_V3, KVF_HF_DEEPSEEK_V3,
};
#define N_FIXTURES (int)(sizeof fixture_names / sizeof *fixture_names)

/* ---- helpers ------------------------------------------------------------------------------- */

static char fixtures[4096];

/* The fixtures folder, or NULL (message printed once per test) when there is none. */
static const char *fixtures_dir(const char *test) {
    const char *shared = getenv("KVF_SHARED");
    if (shared) {
        snprintf(fixtures, sizeof fixtures, "%s/fixtures", shared);
        char probe[4200];
        snprintf(probe, sizeof probe, "%s/tiny-llama-mha/config.json", fixtures);
        if (access(probe, R_OK) == 0) return fixtures;
    }
    printf("test_hf: %s: skipped, no fixtures (KVF_SHARED=%s has no fixtures/tiny-*)\n", test,
           shared ? shared : "(unset)");
    return NULL;
}

static char tmp_root[256];

static void make_tmp(void) {
    snprintf(tmp_root, sizeof tmp_root, "/tmp/kvf_test_hf_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmp_root));
}

static int rm_cb(const char *p, const struct stat *sb, int t, struct FTW *f) {
    (void)sb, (void)t, (void)f;
    return remove(p);
}

static void remove_tmp(void) {
    if (tmp_root[0]) nftw(tmp_root, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    tmp_root[0] = '\0';
}

/* tmp_root/name; the result stays valid for the next 255 calls. */
static char *tpath(const char *name) {
    static char buf[256][512];
    static int k;
    char *b = buf[k++ % 256];
    snprintf(b, 512, "%s/%s", tmp_root, name);
    return b;
}

static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static bool exists(const char *p) { return access(p, F_OK) == 0; }

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    ck_assert_int_eq(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    return s;
}

static void expect_error(const char *what, const char *const *needles) {
    const char *msg = kvf_error_message();
    for (int i = 0; needles[i]; i++)
        ck_assert_msg(strstr(msg, needles[i]) != NULL, "%s: message \"%s\" lacks \"%s\"", what,
                      msg, needles[i]);
    printf("test_hf: %s → %s\n", what, msg);
    kvf_error_clear();
}
#define EXPECT_ERROR(what, ...) expect_error(what, (const char *const[]){__VA_ARGS__, NULL})

/* Every parameter of a and b bitwise equal (same names, shapes, dtypes). */
static void assert_same_params(const kvf_model *a, const kvf_model *b, const char *what) {
    ck_assert_int_eq(kvf_params_count(a->params), kvf_params_count(b->params));
    for (int i = 0; i < kvf_params_count(a->params); i++) {
        kvf_tensor *x = kvf_params_at(a->params, i), *y = kvf_params_at(b->params, i);
        ck_assert_str_eq(x->name, y->name);
        ck_assert_msg(kvf_tensor_same_shape(x, y) && x->dtype == y->dtype, "%s: %s shape/dtype",
                      what, x->name);
        ck_assert_msg(memcmp(kvf_tensor_data(x), kvf_tensor_data(y), kvf_tensor_nbytes(x)) == 0,
                      "%s: %s differs after the round trip", what, x->name);
    }
}

static void assert_same_config(const kvf_model_config *a, const kvf_model_config *b,
                               const char *what) {
    char why[256];
    ck_assert_msg(kvf_hf_config_equal(a, b, why, sizeof why), "%s: %s", what, why);
}

static void fixture_path(char *out, size_t n, const char *fx, const char *name, const char *file) {
    snprintf(out, n, "%s/%s%s%s", fx, name, file ? "/" : "", file ? file : "");
}

/* Logits of m on ids i32 [B, T] (host), into out (host f32). */
static void forward_host(kvf_model *m, const int32_t *ids, int64_t B, int64_t T, float *out) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    ck_assert_ptr_nonnull(ctx);
    kvf_ctx_set_grad(ctx, false);
    kvf_tensor *idt = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, (int64_t[]){B, T}, ids);
    kvf_tensor *lg = kvf_model_forward(m, ctx, idt);
    ck_assert_msg(lg != NULL, "forward: %s", kvf_error_message());
    if (lg->dtype != KVF_DTYPE_F32) lg = kvf_cast(ctx, lg, KVF_DTYPE_F32);
    ck_assert_int_eq(kvf_tensor_to_host(lg, out, kvf_tensor_nbytes(lg)), KVF_OK);
    kvf_ctx_free(ctx);
}

/* A small config of a given flavour on top of a variant name. */
enum flavour { FL_LLAMA, FL_LLAMA_BIAS, FL_QWEN2, FL_GPT2, FL_PLAIN };
static void small(kvf_model_config *c, const char *variant, enum flavour fl) {
    kvf_model_config_defaults(c);
    c->vocab_size = 37;
    c->d_model = 24;
    c->n_layers = 4;
    c->n_heads = 4;
    c->d_ff = 40;
    c->max_seq_len = 16;
    c->rope_theta = 500.0;
    c->norm_eps = 1e-6;
    ck_assert_msg(kvf_model_config_apply_variant(c, variant) == KVF_OK, "%s: %s", variant,
                  kvf_error_message());
    switch (fl) {
    case FL_LLAMA_BIAS: c->qkv_bias = c->o_bias = c->mlp_bias = true; break;
    case FL_QWEN2: c->qkv_bias = true; break;
    case FL_GPT2:
        c->norm = KVF_NORM_LAYER;
        c->norm_bias = true;
        c->mlp = KVF_MLP_GELU;
        c->qkv_bias = c->o_bias = c->mlp_bias = true;
        c->pos = KVF_POS_LEARNED;
        c->tie_embeddings = true;
        c->norm_eps = 1e-5;
        break;
    default: break;
    }
}

static kvf_model *random_model(const kvf_model_config *c, uint64_t seed) {
    kvf_model *m = kvf_model_init(c, KVF_DEVICE_CPU);
    ck_assert_msg(m != NULL, "init: %s", kvf_error_message());
    ck_assert_int_eq(kvf_model_init_weights(m, seed), KVF_OK);
    /* norms and biases away from 1 / 0, so a swapped tensor cannot go unnoticed */
    kvf_rng r;
    kvf_rng_init(&r, seed + 99);
    for (int i = 0; i < kvf_params_count(m->params); i++) {
        kvf_tensor *t = kvf_params_at(m->params, i);
        if (t->ndim == 1)
            for (int64_t j = 0; j < kvf_tensor_numel(t); j++)
                kvf_tensor_set_flat(t, j, kvf_tensor_get_flat(t, j) + 0.1 * sin((double)(i * 131 + j)));
    }
    return m;
}

/* ---- fixtures: logits parity --------------------------------------------------------------- */

START_TEST(fixture_logits_match_hf) {
    const char *fx = fixtures_dir("fixture_logits_match_hf");
    if (!fx) return;
    for (int f = 0; f < N_FIXTURES; f++) {
        char dir[4400], ref[4400];
        fixture_path(dir, sizeof dir, fx, fixture_names[f], NULL);
        fixture_path(ref, sizeof ref, fx, fixture_names[f], "reference_logits.safetensors");
        kvf_model *m = kvf_checkpoint_load(dir, KVF_DEVICE_CPU);
        ck_assert_msg(m != NULL, "%s: %s", fixture_names[f], kvf_error_message());
        kvf_hf_arch arch;
        kvf_model_config cfg;
        ck_assert_int_eq(kvf_hf_config_read_arch(dir, &cfg, &arch), KVF_OK);
        ck_assert_int_eq(arch, fixture_archs[f]);
        ck_assert_int_eq(kvf_hf_config_arch(&m->cfg), fixture_archs[f]);

        kvf_st_file *rf = kvf_st_file_open(ref);
        ck_assert_msg(rf != NULL, "%s", kvf_error_message());
        const kvf_st_tensor *ti = kvf_st_file_find(rf, "input_ids"), *tl = kvf_st_file_find(rf, "logits");
        ck_assert(ti && tl && ti->ndim == 2 && tl->ndim == 3);
        int64_t B = ti->shape[0], T = ti->shape[1], V = tl->shape[2];
        ck_assert_int_eq(ti->dtype, KVF_DTYPE_I64);
        ck_assert_int_eq(V, m->cfg.vocab_size);
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)(B * T));
        float *want = malloc(sizeof(float) * (size_t)(B * T * V));
        float *got = malloc(sizeof(float) * (size_t)(B * T * V));
        ck_assert_int_eq(kvf_st_tensor_read(ti, KVF_DTYPE_I32, ids, sizeof(int32_t) * (size_t)(B * T)), KVF_OK);
        ck_assert_int_eq(kvf_st_tensor_read(tl, KVF_DTYPE_F32, want, sizeof(float) * (size_t)(B * T * V)), KVF_OK);
        forward_host(m, ids, B, T, got);
        double maxd = 0, maxref = 0;
        for (int64_t i = 0; i < B * T * V; i++) {
            maxd = fmax(maxd, fabs((double)got[i] - (double)want[i]));
            maxref = fmax(maxref, fabs((double)want[i]));
        }
        printf("test_hf: %-28s %-22s max |logit - HF| = %.3g (max |HF logit| %.3g)\n",
               fixture_names[f], kvf_hf_arch_name(arch), maxd, maxref);
        ck_assert_msg(maxd <= 1e-4, "%s: max logit diff %g > 1e-4", fixture_names[f], maxd);
        free(ids);
        free(want);
        free(got);
        kvf_st_file_close(rf);
        kvf_model_free(m);
    }
}
END_TEST

/* ---- fixtures: config and checkpoint round trips ------------------------------------------- */

START_TEST(fixture_config_round_trip) {
    const char *fx = fixtures_dir("fixture_config_round_trip");
    if (!fx) return;
    make_tmp();
    for (int f = 0; f < N_FIXTURES; f++) {
        char path[4400];
        fixture_path(path, sizeof path, fx, fixture_names[f], "config.json");
        kvf_model_config a, b, c;
        kvf_hf_arch aa, ab;
        ck_assert_msg(kvf_hf_config_read_arch(path, &a, &aa) == KVF_OK, "%s", kvf_error_message());
        char *text = kvf_hf_config_dump(&a, KVF_DTYPE_F32);
        ck_assert_ptr_nonnull(text);
        ck_assert_int_eq(kvf_hf_config_parse(text, "dumped", &b, &ab), KVF_OK);
        ck_assert_int_eq(aa, ab);
        assert_same_config(&a, &b, fixture_names[f]);
        /* through a file as well */
        ck_assert_int_eq(kvf_hf_config_write(&b, KVF_DTYPE_BF16, tpath("config.json")), KVF_OK);
        ck_assert_int_eq(kvf_hf_config_read_arch(tpath("config.json"), &c, &ab), KVF_OK);
        assert_same_config(&a, &c, fixture_names[f]);
        ck_assert_int_eq(aa, ab);
        free(text);
    }
    /* what the fixtures say, spelled out */
    char path[4400];
    kvf_model_config c;
    fixture_path(path, sizeof path, fx, "tiny-llama-gqa", NULL);
    ck_assert_int_eq(kvf_hf_config_read_arch(path, &c, NULL), KVF_OK);
    ck_assert_int_eq(c.n_kv_heads, 2);
    ck_assert(c.tie_embeddings);
    ck_assert_double_eq(c.rope_theta, 500000.0);
    ck_assert_double_eq(c.norm_eps, 1e-6);
    fixture_path(path, sizeof path, fx, "tiny-gpt2", NULL);
    ck_assert_int_eq(kvf_hf_config_read_arch(path, &c, NULL), KVF_OK);
    ck_assert(c.pos == KVF_POS_LEARNED && c.norm == KVF_NORM_LAYER && c.mlp == KVF_MLP_GELU &&
              !c.gelu_exact && c.tie_embeddings && c.d_ff == 256 && c.max_seq_len == 512);
    fixture_path(path, sizeof path, fx, "tiny-deepseek-v3-mla-qlora", NULL);
    ck_assert_int_eq(kvf_hf_config_read_arch(path, &c, NULL), KVF_OK);
    ck_assert(c.attn == KVF_ATTN_MLA && c.q_lora_rank == 24 && c.kv_lora_rank == 32 &&
              c.qk_rope_head_dim == 8 && c.qk_nope_head_dim == 16 && c.v_head_dim == 16 &&
              c.rope_layout == KVF_ROPE_INTERLEAVED);
    fixture_path(path, sizeof path, fx, "tiny-qwen2", NULL);
    ck_assert_int_eq(kvf_hf_config_read_arch(path, &c, NULL), KVF_OK);
    ck_assert(c.qkv_bias && !c.o_bias && c.n_kv_heads == 2);
    remove_tmp();
}
END_TEST

START_TEST(fixture_checkpoint_round_trip) {
    const char *fx = fixtures_dir("fixture_checkpoint_round_trip");
    if (!fx) return;
    make_tmp();
    for (int f = 0; f < N_FIXTURES; f++) {
        char dir[4400];
        fixture_path(dir, sizeof dir, fx, fixture_names[f], NULL);
        kvf_model *m = kvf_checkpoint_load(dir, KVF_DEVICE_CPU);
        ck_assert_msg(m != NULL, "%s", kvf_error_message());

        /* f32: bitwise */
        ck_assert_msg(kvf_checkpoint_save(m, tpath("f32"), KVF_DTYPE_F32, 0) == KVF_OK, "%s",
                      kvf_error_message());
        ck_assert(exists(tpath("f32/model.safetensors")) && exists(tpath("f32/config.json")));
        ck_assert(!exists(tpath("f32/model.safetensors.index.json")));
        kvf_model *r = kvf_checkpoint_load(tpath("f32"), KVF_DEVICE_CPU);
        ck_assert_msg(r != NULL, "%s", kvf_error_message());
        assert_same_config(&m->cfg, &r->cfg, fixture_names[f]);
        assert_same_params(m, r, fixture_names[f]);
        kvf_hf_arch arch;
        kvf_model_config rc;
        ck_assert_int_eq(kvf_hf_config_read_arch(tpath("f32"), &rc, &arch), KVF_OK);
        ck_assert_int_eq(arch, fixture_archs[f]);

        /* the file has HF's layout: same tensor names and shapes as the original */
        kvf_st_dir *orig = kvf_st_dir_open(dir), *mine = kvf_st_dir_open(tpath("f32"));
        ck_assert(orig && mine);
        ck_assert_int_eq(kvf_st_dir_count(orig), kvf_st_dir_count(mine));
        for (size_t i = 0; i < kvf_st_dir_count(orig); i++) {
            const kvf_st_tensor *a = kvf_st_dir_tensor(orig, i), *b = kvf_st_dir_tensor(mine, i);
            ck_assert_str_eq(a->name, b->name);
            ck_assert_int_eq(a->ndim, b->ndim);
            for (int k = 0; k < a->ndim; k++) ck_assert_int_eq(a->shape[k], b->shape[k]);
            ck_assert_int_eq(a->nbytes, b->nbytes);
            ck_assert_msg(memcmp(a->data, b->data, a->nbytes) == 0, "%s: %s bytes differ",
                          fixture_names[f], a->name);
        }
        kvf_st_dir_close(orig);
        kvf_st_dir_close(mine);

        /* shards */
        ck_assert_int_eq(kvf_checkpoint_save(m, tpath("sharded"), KVF_DTYPE_F32, 100000), KVF_OK);
        ck_assert(exists(tpath("sharded/model.safetensors.index.json")));
        ck_assert(!exists(tpath("sharded/model.safetensors")));
        kvf_model *s = kvf_checkpoint_load(tpath("sharded"), KVF_DEVICE_CPU);
        ck_assert_msg(s != NULL, "%s", kvf_error_message());
        assert_same_params(m, s, fixture_names[f]);
        kvf_model_free(s);

        /* bf16 / f16: values are the rounded originals */
        for (int h = 0; h < 2; h++) {
            kvf_dtype dt = h ? KVF_DTYPE_F16 : KVF_DTYPE_BF16;
            ck_assert_int_eq(kvf_checkpoint_save(m, tpath("half"), dt, 0), KVF_OK);
            kvf_st_file *hf = kvf_st_file_open(tpath("half/model.safetensors"));
            ck_assert(hf && kvf_st_file_tensor(hf, 0)->dtype == dt);
            kvf_st_file_close(hf);
            kvf_model *b = kvf_checkpoint_load(tpath("half"), KVF_DEVICE_CPU);
            ck_assert_msg(b != NULL, "%s", kvf_error_message());
            assert_same_config(&m->cfg, &b->cfg, fixture_names[f]);
            for (int i = 0; i < kvf_params_count(m->params); i++) {
                const float *x = kvf_tensor_data(kvf_params_at(m->params, i));
                const float *y = kvf_tensor_data(kvf_params_at(b->params, i));
                for (int64_t j = 0; j < kvf_tensor_numel(kvf_params_at(m->params, i)); j++) {
                    float want = h ? kvf_f16_to_f32(kvf_f32_to_f16(x[j]))
                                   : kvf_bf16_to_f32(kvf_f32_to_bf16(x[j]));
                    ck_assert_msg(memcmp(&want, &y[j], sizeof want) == 0, "%s %s[%lld]: %g vs %g",
                                  fixture_names[f], kvf_params_at(m->params, i)->name,
                                  (long long)j, (double)want, (double)y[j]);
                }
            }
            kvf_model_free(b);
        }
        kvf_model_free(r);
        kvf_model_free(m);
        nftw(tpath("f32"), rm_cb, 8, FTW_DEPTH | FTW_PHYS);
        nftw(tpath("sharded"), rm_cb, 8, FTW_DEPTH | FTW_PHYS);
        nftw(tpath("half"), rm_cb, 8, FTW_DEPTH | FTW_PHYS);
    }
    ck_assert_int_eq(count_entries(tmp_root), 0); /* no temp folders left behind */
    remove_tmp();
}
END_TEST

/* GPT-2 checkpoints as on the hub: no "transformer." prefix, attention-mask buffers. */
START_TEST(gpt2_hub_layout) {
    make_tmp();
    kvf_model_config c;
    small(&c, "mha", FL_GPT2);
    kvf_model *m = random_model(&c, 5);
    ck_assert_int_eq(kvf_hf_config_arch(&m->cfg), KVF_HF_GPT2);
    ck_assert_int_eq(kvf_checkpoint_save(m, tpath("g"), KVF_DTYPE_F32, 0), KVF_OK);
    kvf_st_file *f = kvf_st_file_open(tpath("g/model.safetensors"));
    ck_assert_ptr_nonnull(f);
    const kvf_st_tensor *ca = kvf_st_file_find(f, "transformer.h.1.attn.c_attn.weight");
    ck_assert(ca && ca->shape[0] == 24 && ca->shape[1] == 72);
    ck_assert_ptr_null(kvf_st_file_find(f, "lm_head.weight"));
    /* c_attn columns [C, 2C) are k_proj's rows: W_conv[i][C + o] = k_proj[o][i] */
    const float *w = ca->data;
    const kvf_tensor *k = kvf_params_get(m->params, "model.layers.1.self_attn.k_proj.weight");
    for (int o = 0; o < 24; o++)
        for (int i = 0; i < 24; i++)
            ck_assert(w[i * 72 + 24 + o] == (float)kvf_tensor_get(k, (int64_t[]){o, i}));
    /* rewrite as the hub does */
    kvf_st_writer *wr = kvf_st_writer_init();
    for (size_t i = 0; i < kvf_st_file_count(f); i++) {
        const kvf_st_tensor *t = kvf_st_file_tensor(f, i);
        const char *n = t->name + strlen("transformer.");
        ck_assert_int_eq(kvf_st_writer_add(wr, n, t->dtype, t->ndim, t->shape, t->data), KVF_OK);
    }
    static float mask[16], mb = -1e4f;
    for (int l = 0; l < c.n_layers; l++) {
        char n[64];
        snprintf(n, sizeof n, "h.%d.attn.bias", l);
        ck_assert_int_eq(kvf_st_writer_add(wr, n, KVF_DTYPE_F32, 4, (int64_t[]){1, 1, 4, 4}, mask), KVF_OK);
        snprintf(n, sizeof n, "h.%d.attn.masked_bias", l);
        ck_assert_int_eq(kvf_st_writer_add(wr, n, KVF_DTYPE_F32, 0, NULL, &mb), KVF_OK);
    }
    ck_assert_int_eq(kvf_st_writer_write(wr, tpath("g/model.safetensors")), KVF_OK);
    kvf_st_writer_free(wr);
    kvf_st_file_close(f);
    kvf_model *r = kvf_checkpoint_load(tpath("g"), KVF_DEVICE_CPU);
    ck_assert_msg(r != NULL, "%s", kvf_error_message());
    assert_same_params(m, r, "gpt2 hub layout");
    kvf_model_free(r);
    kvf_model_free(m);
    remove_tmp();
}
END_TEST

/* ---- configs: architecture choice and kvforge's own model_type ----------------------------- */

struct arch_case {
    const char *variant;
    enum flavour fl;
    int tweak;
    kvf_hf_arch want;
};

static void apply_tweak(kvf_model_config *c, int tweak) {
    switch (tweak) {
    case 1: c->rope_layout = KVF_ROPE_INTERLEAVED; break; /* not HF Llama's RoPE */
    case 2: c->softmax_scale = 0.3; break;
    case 3: c->rope_dim = 2; break;                          /* partial RoPE */
    case 4: c->q_lora_rank = 6; c->rope_layout = KVF_ROPE_HALF; break;
    case 5: for (int l = 2; l < 4; l++) c->window[l] = 5; break; /* Qwen2 suffix */
    case 6: c->tie_embeddings = true; c->head_dim = 8; break;
    case 7: c->mla_kv_norm = false; break;
    case 8: c->gelu_exact = true; c->tie_embeddings = false; break;
    case 9: c->o_bias = true; c->qkv_bias = false; break;
    case 10: c->softmax_scale = 1.0; break;
    case 11: c->d_ff = 0; c->max_seq_len = 64; c->init_std = 0.01; c->norm_eps = 3e-7; break;
    case 12: /* GPT-2's blocks with RoPE */
        c->norm = KVF_NORM_LAYER;
        c->norm_bias = c->o_bias = c->mlp_bias = true;
        c->mlp = KVF_MLP_GELU;
        c->gelu_exact = true;
        break;
    default: break;
    }
}

static const struct arch_case arch_cases[] = {
    {"mha", FL_LLAMA, 0, KVF_HF_LLAMA},
    {"gqa2", FL_LLAMA, 6, KVF_HF_LLAMA},
    {"mqa", FL_LLAMA_BIAS, 0, KVF_HF_LLAMA},
    {"gqa2", FL_QWEN2, 0, KVF_HF_QWEN2},
    {"gqa2", FL_QWEN2, 5, KVF_HF_QWEN2},
    {"mha", FL_GPT2, 0, KVF_HF_GPT2},
    {"mha", FL_GPT2, 8, KVF_HF_GPT2},
    {"mha", FL_GPT2, 10, KVF_HF_GPT2},
    {"mla_r8", FL_LLAMA, 0, KVF_HF_DEEPSEEK_V3},
    {"mla_r8_d4", FL_LLAMA, 4, KVF_HF_DEEPSEEK_V3},
    {"mla_r8", FL_LLAMA, 11, KVF_HF_DEEPSEEK_V3},
    /* no HF architecture has these */
    {"gqa2", FL_LLAMA, 1, KVF_HF_KVFORGE},
    {"mha", FL_LLAMA, 2, KVF_HF_KVFORGE},
    {"mha", FL_LLAMA, 3, KVF_HF_KVFORGE},
    {"mha", FL_LLAMA, 9, KVF_HF_KVFORGE},
    {"gqa2", FL_LLAMA, 5, KVF_HF_KVFORGE}, /* windows without Qwen2's biases */
    {"swa3_mha", FL_QWEN2, 0, KVF_HF_KVFORGE}, /* windows that are not a suffix */
    {"cla2_mha", FL_LLAMA, 0, KVF_HF_KVFORGE},
    {"cla2_gqa2", FL_GPT2, 0, KVF_HF_KVFORGE},
    {"sqa_q2kv1", FL_LLAMA, 0, KVF_HF_KVFORGE},
    {"swa3_gqa2", FL_LLAMA, 0, KVF_HF_KVFORGE},
    {"mla_partial_r10_d2", FL_LLAMA, 0, KVF_HF_KVFORGE},
    {"mla_partial_r10_d2", FL_LLAMA, 12, KVF_HF_KVFORGE},
    {"mha", FL_LLAMA, 12, KVF_HF_KVFORGE},
    {"mla_r8", FL_LLAMA, 7, KVF_HF_KVFORGE},
    {"mla_r8", FL_LLAMA, 2, KVF_HF_KVFORGE},
    {"cla2_mla_r8", FL_LLAMA, 0, KVF_HF_KVFORGE},
    {"mha", FL_PLAIN, 0, KVF_HF_LLAMA},
};
#define N_ARCH_CASES (int)(sizeof arch_cases / sizeof *arch_cases)

START_TEST(config_arch_choice_and_round_trip) {
    make_tmp();
    for (int i = 0; i < N_ARCH_CASES; i++) {
        const struct arch_case *ac = &arch_cases[i];
        kvf_model_config c, r, r2;
        small(&c, ac->variant, ac->fl);
        apply_tweak(&c, ac->tweak);
        ck_assert_msg(kvf_model_config_resolve(&c) == KVF_OK, "case %d: %s", i, kvf_error_message());
        kvf_hf_arch got = kvf_hf_config_arch(&c);
        ck_assert_msg(got == ac->want, "case %d (%s, flavour %d, tweak %d): %s, expected %s", i,
                      ac->variant, ac->fl, ac->tweak, kvf_hf_arch_name(got),
                      kvf_hf_arch_name(ac->want));
        char *text = kvf_hf_config_dump(&c, KVF_DTYPE_F32);
        ck_assert_msg(text != NULL, "%s", kvf_error_message());
        kvf_hf_arch ra;
        ck_assert_msg(kvf_hf_config_parse(text, "case", &r, &ra) == KVF_OK, "case %d: %s\n%s", i,
                      kvf_error_message(), text);
        ck_assert_int_eq(ra, ac->want);
        char what[64];
        snprintf(what, sizeof what, "case %d (%s)", i, ac->variant);
        if (ac->want == KVF_HF_KVFORGE) {
            /* kvforge's schema stores everything */
            assert_same_config(&c, &r, what);
        }
        /* read → write → read is exact for every architecture */
        char *text2 = kvf_hf_config_dump(&r, KVF_DTYPE_F32);
        ck_assert_int_eq(kvf_hf_config_parse(text2, "case", &r2, &ra), KVF_OK);
        assert_same_config(&r, &r2, what);
        ck_assert_str_eq(text, text2);
        /* the HF architectures keep every setting they use */
        kvf_model *a = kvf_model_init(&c, KVF_DEVICE_CPU), *b = kvf_model_init(&r, KVF_DEVICE_CPU);
        ck_assert(a && b);
        ck_assert_int_eq(kvf_params_count(a->params), kvf_params_count(b->params));
        for (int p = 0; p < kvf_params_count(a->params); p++) {
            kvf_tensor *x = kvf_params_at(a->params, p), *y = kvf_params_at(b->params, p);
            ck_assert_str_eq(x->name, y->name);
            ck_assert(kvf_tensor_same_shape(x, y));
        }
        ck_assert_double_eq(a->cfg.softmax_scale, b->cfg.softmax_scale);
        kvf_model_free(a);
        kvf_model_free(b);
        free(text);
        free(text2);
    }
    /* the Qwen2 window suffix is spelled the HF way */
    kvf_model_config c;
    small(&c, "gqa2", FL_QWEN2);
    apply_tweak(&c, 5);
    char *text = kvf_hf_config_dump(&c, KVF_DTYPE_COUNT);
    ck_assert_ptr_nonnull(strstr(text, "\"use_sliding_window\": true"));
    ck_assert_ptr_nonnull(strstr(text, "\"max_window_layers\": 2"));
    ck_assert_ptr_nonnull(strstr(text, "\"sliding_window\": 5"));
    ck_assert_ptr_null(strstr(text, "torch_dtype"));
    free(text);
    /* numbers in their short form */
    small(&c, "mha", FL_LLAMA);
    text = kvf_hf_config_dump(&c, KVF_DTYPE_BF16);
    ck_assert_ptr_nonnull(strstr(text, "\"rms_norm_eps\": 1e-06"));
    ck_assert_ptr_nonnull(strstr(text, "\"rope_theta\": 500.0"));
    ck_assert_ptr_nonnull(strstr(text, "\"torch_dtype\": \"bfloat16\""));
    free(text);
    remove_tmp();
}
END_TEST

START_TEST(config_variants_of_hf_keys) {
    kvf_model_config c;
    kvf_hf_arch a;
    /* legacy rope_theta, no architectures (model_type only), GQA, attention/mlp bias */
    ck_assert_int_eq(kvf_hf_config_parse(
                         "{\"model_type\": \"llama\", \"vocab_size\": 10, \"hidden_size\": 16,"
                         " \"intermediate_size\": 20, \"num_hidden_layers\": 2,"
                         " \"num_attention_heads\": 4, \"num_key_value_heads\": 1,"
                         " \"rope_theta\": 1000000.0, \"rope_scaling\": null,"
                         " \"attention_bias\": true, \"mlp_bias\": true, \"rms_norm_eps\": 1e-5,"
                         " \"max_position_embeddings\": 64}",
                         "legacy.json", &c, &a),
                     KVF_OK);
    ck_assert_int_eq(a, KVF_HF_LLAMA);
    ck_assert(c.n_kv_heads == 1 && c.head_dim == 4 && c.qkv_bias && c.o_bias && c.mlp_bias);
    ck_assert_double_eq(c.rope_theta, 1e6);
    /* v5 rope_parameters wins; default type is fine */
    ck_assert_int_eq(kvf_hf_config_parse(
                         "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 10,"
                         " \"hidden_size\": 16, \"intermediate_size\": 20,"
                         " \"num_hidden_layers\": 1, \"num_attention_heads\": 2,"
                         " \"rope_parameters\": {\"rope_theta\": 123.0, \"rope_type\": \"default\"}}",
                         "v5.json", &c, &a),
                     KVF_OK);
    ck_assert_double_eq(c.rope_theta, 123.0);
    /* Qwen2 with layer_types */
    ck_assert_int_eq(kvf_hf_config_parse(
                         "{\"architectures\": [\"Qwen2ForCausalLM\"], \"vocab_size\": 10,"
                         " \"hidden_size\": 16, \"intermediate_size\": 20,"
                         " \"num_hidden_layers\": 3, \"num_attention_heads\": 2,"
                         " \"use_sliding_window\": true, \"sliding_window\": 7,"
                         " \"layer_types\": [\"full_attention\", \"sliding_attention\","
                         " \"sliding_attention\"]}",
                         "qwen.json", &c, &a),
                     KVF_OK);
    ck_assert(c.window[0] == 0 && c.window[1] == 7 && c.window[2] == 7);
    ck_assert_int_eq(kvf_hf_config_arch(&c), KVF_HF_QWEN2);
    /* GPT-2: exact gelu, no attention scaling, untied */
    ck_assert_int_eq(kvf_hf_config_parse(
                         "{\"architectures\": [\"GPT2LMHeadModel\"], \"vocab_size\": 10,"
                         " \"n_embd\": 16, \"n_layer\": 1, \"n_head\": 2, \"n_positions\": 8,"
                         " \"activation_function\": \"gelu\", \"scale_attn_weights\": false,"
                         " \"tie_word_embeddings\": false, \"n_inner\": null}",
                         "gpt2.json", &c, &a),
                     KVF_OK);
    ck_assert(c.gelu_exact && !c.tie_embeddings && c.d_ff == 64);
    ck_assert_double_eq(c.softmax_scale, 1.0);
    ck_assert_int_eq(kvf_hf_config_arch(&c), KVF_HF_GPT2);
}
END_TEST

/* kvforge's own model_type: CLA, SQA, windows, partial-RoPE MLA, through a checkpoint. */
START_TEST(kvforge_model_type_checkpoint) {
    make_tmp();
    const char *variants[] = {"cla2_gqa2", "sqa_q2kv1", "swa3_mha", "mla_partial_r10_d2",
                              "cla2_mla_partial_r10_d2", "mla_r8"};
    for (int v = 0; v < 6; v++) {
        kvf_model_config c;
        small(&c, variants[v], FL_LLAMA);
        kvf_model *m = random_model(&c, 11 + (uint64_t)v);
        for (int l = 0; l < c.n_layers; l++) /* a conversion's frequency choice, not the default */
            if (m->layers[l].rope_freqs)
                for (int64_t j = 0; j < kvf_tensor_numel(m->layers[l].rope_freqs); j++)
                    kvf_tensor_set_flat(m->layers[l].rope_freqs, j, 0.5 / (double)(j + l + 2));
        ck_assert_msg(kvf_checkpoint_save(m, tpath("k"), KVF_DTYPE_F32, 0) == KVF_OK, "%s: %s",
                      variants[v], kvf_error_message());
        char *cfg = read_text(tpath("k/config.json"));
        bool own = v < 5;
        ck_assert_msg((strstr(cfg, "\"model_type\": \"kvforge\"") != NULL) == own, "%s:\n%s",
                      variants[v], cfg);
        free(cfg);
        kvf_model *r = kvf_checkpoint_load(tpath("k"), KVF_DEVICE_CPU);
        ck_assert_msg(r != NULL, "%s: %s", variants[v], kvf_error_message());
        assert_same_config(&m->cfg, &r->cfg, variants[v]);
        assert_same_params(m, r, variants[v]);
        for (int l = 0; l < c.n_layers; l++) {
            ck_assert((m->layers[l].rope_freqs == NULL) == (r->layers[l].rope_freqs == NULL));
            if (m->layers[l].rope_freqs)
                ck_assert(memcmp(kvf_tensor_data(m->layers[l].rope_freqs),
                                 kvf_tensor_data(r->layers[l].rope_freqs),
                                 kvf_tensor_nbytes(m->layers[l].rope_freqs)) == 0);
        }
        int32_t ids[2 * 9];
        for (int i = 0; i < 18; i++) ids[i] = (i * 7 + 3) % 37;
        float a[2 * 9 * 37], b[2 * 9 * 37];
        forward_host(m, ids, 2, 9, a);
        forward_host(r, ids, 2, 9, b);
        ck_assert_msg(memcmp(a, b, sizeof a) == 0, "%s: logits differ after the round trip",
                      variants[v]);
        kvf_model_free(r);
        kvf_model_free(m);
    }
    remove_tmp();
}
END_TEST

/* f64 master weights load and save too. */
START_TEST(f64_master_weights) {
    make_tmp();
    kvf_model_config c;
    small(&c, "gqa2", FL_QWEN2);
    kvf_model *m = random_model(&c, 3);
    ck_assert_int_eq(kvf_checkpoint_save(m, tpath("a"), KVF_DTYPE_F32, 0), KVF_OK);
    kvf_model *d = kvf_checkpoint_load_as(tpath("a"), KVF_DEVICE_CPU, KVF_DTYPE_F64);
    ck_assert_msg(d != NULL, "%s", kvf_error_message());
    ck_assert_int_eq(kvf_params_dtype(d->params), KVF_DTYPE_F64);
    ck_assert_int_eq(kvf_checkpoint_save(d, tpath("b"), KVF_DTYPE_F32, 0), KVF_OK);
    kvf_model *r = kvf_checkpoint_load(tpath("b"), KVF_DEVICE_CPU);
    ck_assert_ptr_nonnull(r);
    assert_same_params(m, r, "via f64");
    kvf_model_free(r);
    kvf_model_free(d);
    kvf_model_free(m);
    remove_tmp();
}
END_TEST

/* ---- bad input ----------------------------------------------------------------------------- */

static json_t *load_json(const char *path) {
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    ck_assert_msg(j != NULL, "%s: %s", path, e.text);
    return j;
}

static void save_json(json_t *j, const char *path) {
    ck_assert_int_eq(json_dump_file(j, path, JSON_INDENT(2)), 0);
}

static void expect_config_error(const char *dir, const char *what, kvf_status code,
                                const char *needle) {
    char cfgp[600];
    snprintf(cfgp, sizeof cfgp, "%s/config.json", dir);
    kvf_model_config c;
    kvf_error_clear();
    ck_assert_int_eq(kvf_hf_config_read_arch(dir, &c, NULL), code);
    kvf_error_clear();
    ck_assert_ptr_null(kvf_checkpoint_load(dir, KVF_DEVICE_CPU));
    ck_assert_int_eq(kvf_error_code(), code);
    EXPECT_ERROR(what, cfgp, needle);
}

START_TEST(bad_configs) {
    make_tmp();
    kvf_model_config c;
    small(&c, "gqa2", FL_LLAMA);
    kvf_model *m = random_model(&c, 1);
    ck_assert_int_eq(kvf_checkpoint_save(m, tpath("m"), KVF_DTYPE_F32, 0), KVF_OK);
    json_t *good = load_json(tpath("m/config.json"));
    const char *dir = tpath("m"), *cp = tpath("m/config.json");

    json_t *j = json_deep_copy(good);
    json_object_set_new(j, "architectures", json_pack("[s]", "MistralForCausalLM"));
    json_object_set_new(j, "model_type", json_string("mistral"));
    save_json(j, cp);
    expect_config_error(dir, "unknown architecture", KVF_ERR_UNSUPPORTED, "MistralForCausalLM");
    kvf_error_clear();
    kvf_hf_config_read_arch(dir, &c, NULL);
    EXPECT_ERROR("unknown architecture lists the supported ones", "LlamaForCausalLM",
                 "Qwen2ForCausalLM", "GPT2LMHeadModel", "DeepseekV3ForCausalLM", "kvforge");
    json_decref(j);

    j = json_deep_copy(good);
    json_object_set_new(j, "rope_scaling",
                        json_pack("{s:s,s:f,s:f,s:f,s:i}", "rope_type", "llama3", "factor", 8.0,
                                  "low_freq_factor", 1.0, "high_freq_factor", 4.0,
                                  "original_max_position_embeddings", 8192));
    save_json(j, cp);
    expect_config_error(dir, "rope_scaling llama3", KVF_ERR_UNSUPPORTED,
                        "not supported: rope_type llama3");
    json_decref(j);

    j = json_deep_copy(good);
    json_object_del(j, "rope_theta");
    json_object_set_new(j, "rope_parameters",
                        json_pack("{s:s,s:f,s:f}", "rope_type", "yarn", "rope_theta", 1e4, "factor", 4.0));
    save_json(j, cp);
    expect_config_error(dir, "rope_parameters yarn", KVF_ERR_UNSUPPORTED,
                        "not supported: rope_type yarn");
    json_decref(j);

    j = json_deep_copy(good);
    json_object_set_new(j, "rope_scaling", json_pack("{s:s,s:f}", "type", "linear", "factor", 2.0));
    save_json(j, cp);
    expect_config_error(dir, "legacy rope_scaling type", KVF_ERR_UNSUPPORTED,
                        "not supported: rope_type linear");
    json_decref(j);

    j = json_deep_copy(good);
    json_object_set_new(j, "hidden_size", json_string("wide"));
    save_json(j, cp);
    expect_config_error(dir, "wrong JSON type", KVF_ERR_FORMAT, "\"hidden_size\" must be an integer");
    json_decref(j);

    j = json_deep_copy(good);
    json_object_del(j, "num_hidden_layers");
    save_json(j, cp);
    expect_config_error(dir, "missing key", KVF_ERR_FORMAT, "missing \"num_hidden_layers\"");
    json_decref(j);

    j = json_deep_copy(good);
    json_object_set_new(j, "num_key_value_heads", json_integer(3));
    save_json(j, cp);
    expect_config_error(dir, "inconsistent heads", KVF_ERR_ARG, "n_kv_heads");
    json_decref(j);

    write_text(cp, "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 3,");
    expect_config_error(dir, "truncated JSON", KVF_ERR_FORMAT, "not valid JSON");

    /* DeepSeek with MoE layers */
    kvf_model_config d;
    small(&d, "mla_r8", FL_LLAMA);
    kvf_model *dm = random_model(&d, 2);
    ck_assert_int_eq(kvf_checkpoint_save(dm, tpath("ds"), KVF_DTYPE_F32, 0), KVF_OK);
    json_t *dj = load_json(tpath("ds/config.json"));
    ck_assert_str_eq(json_string_value(json_object_get(dj, "model_type")), "deepseek_v3");
    json_object_set_new(dj, "first_k_dense_replace", json_integer(1));
    save_json(dj, tpath("ds/config.json"));
    expect_config_error(tpath("ds"), "DeepSeek MoE", KVF_ERR_UNSUPPORTED,
                        "not supported: MoE layers (first_k_dense_replace 1 < num_hidden_layers 4)");
    json_object_set_new(dj, "first_k_dense_replace", json_integer(4));
    json_object_set_new(dj, "rope_scaling",
                        json_pack("{s:s,s:f,s:f,s:f}", "type", "yarn", "factor", 40.0, "mscale", 0.707,
                                  "mscale_all_dim", 0.707));
    save_json(dj, tpath("ds/config.json"));
    expect_config_error(tpath("ds"), "DeepSeek yarn", KVF_ERR_UNSUPPORTED,
                        "not supported: rope_type yarn");
    json_decref(dj);
    kvf_model_free(dm);

    /* kvforge schema: unknown keys are errors */
    kvf_model_config k;
    small(&k, "cla2_mha", FL_LLAMA);
    char *text = kvf_hf_config_dump(&k, KVF_DTYPE_F32);
    json_t *kj = json_loads(text, 0, NULL);
    json_object_set_new(kj, "kv_sorce", json_pack("[i,i,i,i]", 0, 0, 2, 2));
    save_json(kj, cp);
    expect_config_error(dir, "kvforge unknown key", KVF_ERR_FORMAT, "unknown key \"kv_sorce\"");
    json_object_del(kj, "kv_sorce");
    json_object_set_new(kj, "kv_source", json_pack("[i,i,i]", 0, 0, 2));
    save_json(kj, cp);
    expect_config_error(dir, "kvforge short list", KVF_ERR_FORMAT, "\"kv_source\" must be a list of 4");
    json_decref(kj);
    free(text);

    /* no config.json at all */
    unlink(cp);
    kvf_error_clear();
    ck_assert_ptr_null(kvf_checkpoint_load(dir, KVF_DEVICE_CPU));
    EXPECT_ERROR("missing config.json", cp, "cannot read");

    json_decref(good);
    kvf_model_free(m);
    remove_tmp();
}
END_TEST

/* Rewrites DIR/model.safetensors: drop one tensor, rename one, or add one. */
static void rewrite_weights(const char *path, const char *drop, const char *add_name) {
    kvf_st_file *f = kvf_st_file_open(path);
    ck_assert_ptr_nonnull(f);
    kvf_st_writer *w = kvf_st_writer_init();
    for (size_t i = 0; i < kvf_st_file_count(f); i++) {
        const kvf_st_tensor *t = kvf_st_file_tensor(f, i);
        if (drop && !strcmp(t->name, drop)) continue;
        ck_assert_int_eq(kvf_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data), KVF_OK);
    }
    static float extra[3] = {1, 2, 3};
    if (add_name)
        ck_assert_int_eq(kvf_st_writer_add(w, add_name, KVF_DTYPE_F32, 1, (int64_t[]){3}, extra), KVF_OK);
    ck_assert_int_eq(kvf_st_writer_write(w, path), KVF_OK);
    kvf_st_writer_free(w);
    kvf_st_file_close(f);
}

START_TEST(bad_weights) {
    make_tmp();
    kvf_model_config c;
    small(&c, "gqa2", FL_LLAMA);
    kvf_model *m = random_model(&c, 1);
    const char *dir = tpath("m"), *st = tpath("m/model.safetensors"), *cp = tpath("m/config.json");

    /* a missing tensor */
    ck_assert_int_eq(kvf_checkpoint_save(m, dir, KVF_DTYPE_F32, 0), KVF_OK);
    rewrite_weights(st, "model.layers.1.mlp.up_proj.weight", NULL);
    kvf_error_clear();
    ck_assert_ptr_null(kvf_checkpoint_load(dir, KVF_DEVICE_CPU));
    EXPECT_ERROR("missing tensor", st, "missing tensor 'model.layers.1.mlp.up_proj.weight'");

    /* an unexpected tensor */
    ck_assert_int_eq(kvf_checkpoint_save(m, dir, KVF_DTYPE_F32, 0), KVF_OK);
    rewrite_weights(st, NULL, "model.layers.0.self_attn.q_norm.weight");
    kvf_error_clear();
    ck_assert_ptr_null(kvf_checkpoint_load(dir, KVF_DEVICE_CPU));
    EXPECT_ERROR("unexpected tensor", st, "unexpected tensor 'model.layers.0.self_attn.q_norm.weight'");
    /* ... but rotary buffers are fine */
    ck_assert_int_eq(kvf_checkpoint_save(m, dir, KVF_DTYPE_F32, 0), KVF_OK);
    rewrite_weights(st, NULL, "model.layers.0.self_attn.rotary_emb.inv_freq");
    kvf_model *r = kvf_checkpoint_load(dir, KVF_DEVICE_CPU);
    ck_assert_msg(r != NULL, "%s", kvf_error_message());
    assert_same_params(m, r, "with inv_freq buffers");
    kvf_model_free(r);

    /* a shape that disagrees with config.json */
    json_t *j = load_json(cp);
    json_object_set_new(j, "intermediate_size", json_integer(44));
    save_json(j, cp);
    json_decref(j);
    kvf_error_clear();
    ck_assert_ptr_null(kvf_checkpoint_load(dir, KVF_DEVICE_CPU));
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_SHAPE);
    EXPECT_ERROR("wrong shape", st, "model.layers.0.mlp.gate_proj.weight", "[40, 24]",
                 "expected [44, 24]", cp);

    /* an integer tensor where a weight belongs */
    ck_assert_int_eq(kvf_checkpoint_save(m, dir, KVF_DTYPE_F32, 0), KVF_OK);
    {
        kvf_st_file *f = kvf_st_file_open(st);
        kvf_st_writer *w = kvf_st_writer_init();
        static int32_t ints[24];
        for (size_t i = 0; i < kvf_st_file_count(f); i++) {
            const kvf_st_tensor *t = kvf_st_file_tensor(f, i);
            if (!strcmp(t->name, "model.norm.weight"))
                kvf_st_writer_add(w, t->name, KVF_DTYPE_I32, 1, (int64_t[]){24}, ints);
            else
                kvf_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data);
        }
        ck_assert_int_eq(kvf_st_writer_write(w, st), KVF_OK);
        kvf_st_writer_free(w);
        kvf_st_file_close(f);
    }
    kvf_error_clear();
    ck_assert_ptr_null(kvf_checkpoint_load(dir, KVF_DEVICE_CPU));
    EXPECT_ERROR("integer weights", st, "model.norm.weight", "I32");

    /* no weights file */
    unlink(st);
    kvf_error_clear();
    ck_assert_ptr_null(kvf_checkpoint_load(dir, KVF_DEVICE_CPU));
    EXPECT_ERROR("no weights", dir, "model.safetensors");
    kvf_model_free(m);
    remove_tmp();
}
END_TEST

/* ---- saving: atomic, keeps what is not a checkpoint, leaves nothing behind ----------------- */

START_TEST(save_replaces_atomically) {
    make_tmp();
    kvf_model_config c;
    small(&c, "gqa2", FL_LLAMA);
    kvf_model *a = random_model(&c, 1), *b = random_model(&c, 2);
    const char *dir = tpath("ck");
    /* first sharded, with things beside the checkpoint */
    ck_assert_int_eq(kvf_checkpoint_save(a, dir, KVF_DTYPE_F32, 4000), KVF_OK);
    ck_assert(exists(tpath("ck/model.safetensors.index.json")));
    write_text(tpath("ck/tokenizer.json"), "{\"version\": \"1.0\"}");
    ck_assert_int_eq(mkdir(tpath("ck/state"), 0755), 0);
    write_text(tpath("ck/state/optimizer.bin"), "moments");
    chmod(dir, 0750);
    /* then one file: stale shards and index go, the rest stays */
    ck_assert_int_eq(kvf_checkpoint_save(b, dir, KVF_DTYPE_F32, 0), KVF_OK);
    ck_assert(exists(tpath("ck/model.safetensors")));
    ck_assert(!exists(tpath("ck/model.safetensors.index.json")));
    ck_assert(!exists(tpath("ck/model-00001-of-00002.safetensors")) &&
              !exists(tpath("ck/model-00002-of-00002.safetensors")));
    char *tok = read_text(tpath("ck/tokenizer.json"));
    ck_assert_str_eq(tok, "{\"version\": \"1.0\"}");
    free(tok);
    char *st = read_text(tpath("ck/state/optimizer.bin"));
    ck_assert_str_eq(st, "moments");
    free(st);
    struct stat sb;
    ck_assert_int_eq(stat(dir, &sb), 0);
    ck_assert_int_eq(sb.st_mode & 0777, 0750);
    ck_assert_int_eq(count_entries(dir), 4); /* config, weights, tokenizer, state */
    ck_assert_int_eq(count_entries(tmp_root), 1); /* no temp or old folders beside it */
    kvf_model *r = kvf_checkpoint_load(dir, KVF_DEVICE_CPU);
    ck_assert_ptr_nonnull(r);
    assert_same_params(b, r, "replaced");
    kvf_model_free(r);
    /* a trailing slash names the same folder */
    char slash[600];
    snprintf(slash, sizeof slash, "%s/", dir);
    ck_assert_int_eq(kvf_checkpoint_save(a, slash, KVF_DTYPE_BF16, 0), KVF_OK);
    ck_assert_int_eq(count_entries(tmp_root), 1);
    kvf_model_free(a);
    kvf_model_free(b);
    remove_tmp();
}
END_TEST

START_TEST(save_failures_leave_nothing) {
    make_tmp();
    kvf_model_config c;
    small(&c, "mha", FL_LLAMA);
    kvf_model *m = random_model(&c, 1);

    /* the parent is a file */
    write_text(tpath("file"), "x");
    kvf_error_clear();
    ck_assert_int_ne(kvf_checkpoint_save(m, tpath("file/ck"), KVF_DTYPE_F32, 0), KVF_OK);
    EXPECT_ERROR("parent is a file", tpath("file/ck"));
    /* the parent does not exist */
    ck_assert_int_ne(kvf_checkpoint_save(m, tpath("none/ck"), KVF_DTYPE_F32, 0), KVF_OK);
    EXPECT_ERROR("no parent", tpath("none/ck"));
    /* the target is a file */
    ck_assert_int_ne(kvf_checkpoint_save(m, tpath("file"), KVF_DTYPE_F32, 0), KVF_OK);
    EXPECT_ERROR("target is a file", tpath("file"), "not a folder");
    /* a read-only parent (root ignores permissions, so only checked as a user) */
    if (geteuid() != 0) {
        ck_assert_int_eq(mkdir(tpath("ro"), 0555), 0);
        ck_assert_int_ne(kvf_checkpoint_save(m, tpath("ro/ck"), KVF_DTYPE_F32, 0), KVF_OK);
        EXPECT_ERROR("read-only parent", tpath("ro/ck"));
        ck_assert_int_eq(count_entries(tpath("ro")), 0);
        chmod(tpath("ro"), 0755);
        rmdir(tpath("ro"));
    }
    /* a bad dtype */
    ck_assert_int_eq(kvf_checkpoint_save(m, tpath("ck"), KVF_DTYPE_I32, 0), KVF_ERR_ARG);
    EXPECT_ERROR("bad dtype", tpath("ck"), "i32");
    ck_assert_int_eq(count_entries(tmp_root), 1); /* just "file" */
    char *x = read_text(tpath("file"));
    ck_assert_str_eq(x, "x");
    free(x);

    /* the disk fills up mid-write (file size limit): the old checkpoint stays as it was */
    ck_assert_int_eq(kvf_checkpoint_save(m, tpath("ck"), KVF_DTYPE_F32, 0), KVF_OK);
    kvf_model *big;
    kvf_model_config bc;
    small(&bc, "mha", FL_LLAMA);
    bc.vocab_size = 4000; /* ~400 kB of weights */
    big = random_model(&bc, 9);
    fflush(stdout);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {100000, 100000};
        setrlimit(RLIMIT_FSIZE, &rl);
        kvf_status s = kvf_checkpoint_save(big, tpath("ck"), KVF_DTYPE_F32, 0);
        printf("test_hf: disk full → %s\n", kvf_error_message());
        fflush(stdout);
        _exit(s == KVF_ERR_IO && strstr(kvf_error_message(), "model.safetensors") ? 0 : 1);
    }
    int status;
    waitpid(pid, &status, 0);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "save under a size limit did not fail cleanly");
    ck_assert_int_eq(count_entries(tmp_root), 2); /* "file" and "ck", no temp folders */
    ck_assert_int_eq(count_entries(tpath("ck")), 2);
    kvf_model *r = kvf_checkpoint_load(tpath("ck"), KVF_DEVICE_CPU);
    ck_assert_ptr_nonnull(r);
    assert_same_params(m, r, "after a failed save");
    kvf_model_free(r);
    kvf_model_free(big);
    kvf_model_free(m);
    remove_tmp();
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("hf");
    TCase *fx = tcase_create("fixtures");
    tcase_set_timeout(fx, 300);
    tcase_add_test(fx, fixture_logits_match_hf);
    tcase_add_test(fx, fixture_config_round_trip);
    tcase_add_test(fx, fixture_checkpoint_round_trip);
    suite_add_tcase(s, fx);
    TCase *cf = tcase_create("configs");
    tcase_add_test(cf, config_arch_choice_and_round_trip);
    tcase_add_test(cf, config_variants_of_hf_keys);
    tcase_add_test(cf, bad_configs);
    suite_add_tcase(s, cf);
    TCase *ck = tcase_create("checkpoints");
    tcase_set_timeout(ck, 300);
    tcase_add_test(ck, gpt2_hub_layout);
    tcase_add_test(ck, kvforge_model_type_checkpoint);
    tcase_add_test(ck, f64_master_weights);
    tcase_add_test(ck, bad_weights);
    tcase_add_test(ck, save_replaces_atomically);
    tcase_add_test(ck, save_failures_leave_nothing);
    suite_add_tcase(s, ck);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
