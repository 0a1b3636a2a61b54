/* Conversions other than MLA (convert/gqa.c, convert/cla.c, convert/stream.c, convert/convert.c):
 * MHA/GQA → GQA/MQA pooling against naive references computed here; exactness where the math
 * is exact (K/V heads of a group that are copies of each other: every method; maps of each
 * other that attention can absorb: calib — and the same for layers of a CLA group that see the
 * same input), each with a control showing the check can fail; calib beating mean on a real
 * fixture; CLA producer/mean/calib, chains with GQA, producer lists, save/load; the streaming
 * path writing the same bytes as the in-memory path; and the kvf_convert_run driver refusing
 * bad input without leaving an output or temp folder behind. Random models use f64 master
 * weights where a check is at rounding level. */
#define _GNU_SOURCE /* open_memstream, mkdtemp */
#include <check.h>
#include <dirent.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "autograd/context.h"
#include "autograd/rng.h"
#include "convert/convert.h"
#include "convert_testutil.h"
#include "convert/convert_impl.h"
#include "data/fsutil.h"
#include "data/tokenizer_load.h"
#include "model/checkpoint.h"
#include "model/hf_config.h"
#include "model/safetensors.h"
#include "train/eval.h"

#define T_SEQ KVF_TEST_T_SEQ

/* ============================================================================================
 * helpers: models, parameters, logits
 * ========================================================================================== */

static kvf_model_config base_cfg(int n_layers, int nq, int nkv) {
    kvf_model_config c;
    kvf_model_config_defaults(&c);
    c.vocab_size = 37;
    c.d_model = 32;
    c.n_layers = n_layers;
    c.n_heads = nq;
    c.n_kv_heads = nkv;
    c.head_dim = 8;
    c.d_ff = 48;
    c.max_seq_len = 32;
    c.rope_theta = 50.0; /* short context: every frequency turns */
    c.init_std = 0.25;   /* attention far from uniform */
    c.param_dtype = KVF_DTYPE_F64;
    return c;
}

static kvf_model *build(const kvf_model_config *c, uint64_t seed) {
    kvf_model *m = kvf_model_init(c, KVF_DEVICE_CPU);
    ck_assert_msg(m != NULL, "%s", kvf_error_message());
    ck_assert(kvf_model_init_weights(m, seed) == KVF_OK);
    /* biases start at zero; make them matter */
    kvf_rng r;
    kvf_rng_init(&r, seed ^ 0xB1A5);
    for (int i = 0; i < kvf_params_count(m->params); i++) {
        kvf_tensor *t = kvf_params_at(m->params, i);
        size_t n = strlen(t->name);
        if (n > 5 && !strcmp(t->name + n - 5, ".bias"))
            for (int64_t e = 0; e < kvf_tensor_numel(t); e++) kvf_tensor_set_flat(t, e, 0.3 * kvf_rng_normal(&r));
    }
    return m;
}

static const char *pname(char *buf, size_t n, int layer, const char *what) {
    snprintf(buf, n, "model.layers.%d.self_attn.%s", layer, what);
    return buf;
}

static kvf_tensor *param(const kvf_model *m, const char *name) {
    kvf_tensor *t = kvf_params_get(m->params, name);
    ck_assert_msg(t != NULL, "no parameter %s", name);
    return t;
}

/* A malloc'd copy of a parameter as doubles. */
static double *get(const kvf_model *m, const char *name, int64_t *numel) {
    kvf_tensor *t = param(m, name);
    int64_t n = kvf_tensor_numel(t);
    double *v = malloc(sizeof(double) * (size_t)n);
    for (int64_t i = 0; i < n; i++) v[i] = kvf_tensor_get_flat(t, i);
    if (numel) *numel = n;
    return v;
}

static void put(kvf_model *m, const char *name, const double *v) {
    kvf_tensor *t = param(m, name);
    for (int64_t i = 0; i < kvf_tensor_numel(t); i++) kvf_tensor_set_flat(t, i, v[i]);
}

static bool same_bytes(const kvf_tensor *a, const kvf_tensor *b) {
    return a->dtype == b->dtype && kvf_tensor_same_shape(a, b) &&
           !memcmp(kvf_tensor_data(a), kvf_tensor_data(b), kvf_tensor_nbytes(a));
}

static bool is_kv_name(const char *name) {
    return strstr(name, "self_attn.k_proj.") || strstr(name, "self_attn.v_proj.");
}

/* Every parameter of dst that is not a K/V projection is bit-for-bit src's. */
static void others_unchanged(const kvf_model *src, const kvf_model *dst, const char *what) {
    for (int i = 0; i < kvf_params_count(dst->params); i++) {
        kvf_tensor *d = kvf_params_at(dst->params, i);
        if (is_kv_name(d->name)) continue;
        kvf_tensor *s = kvf_params_get(src->params, d->name);
        ck_assert_msg(s && same_bytes(s, d), "%s: parameter %s changed", what, d->name);
    }
}

static kvf_convert_opts gqa_opts(int kv, const char *method) {
    kvf_convert_opts o;
    kvf_convert_opts_defaults(&o);
    o.to = kv == 1 ? KVF_CONVERT_MQA : KVF_CONVERT_GQA;
    o.kv_heads = kv == 1 ? 0 : kv;
    snprintf(o.method, sizeof o.method, "%s", method);
    return o;
}

static kvf_convert_opts cla_opts(int share, const char *producers, const char *method) {
    kvf_convert_opts o;
    kvf_convert_opts_defaults(&o);
    o.to = KVF_CONVERT_CLA;
    o.share = share;
    if (producers) snprintf(o.producers, sizeof o.producers, "%s", producers);
    snprintf(o.method, sizeof o.method, "%s", method);
    return o;
}

static kvf_model *gqa(const kvf_model *src, int kv, const char *method, const kvf_calib *cal) {
    kvf_convert_opts o = gqa_opts(kv, method);
    kvf_model *m = kvf_convert_gqa(src, &o, cal, NULL);
    ck_assert_msg(m != NULL, "gqa %d %s: %s", kv, method, kvf_error_message());
    ck_assert_int_eq(m->cfg.n_kv_heads, kv);
    return m;
}

/* The driver's partner list for cla calib: a source producer that becomes a consumer pairs
 * with its new producer. */
static void cla_partners(const kvf_model_config *c, const kvf_convert_opts *o, int *partner) {
    kvf_model *probe = kvf_model_init(c, KVF_DEVICE_CPU);
    kvf_convert_opts po = *o; /* the producer method needs no data: just the new kv_source */
    snprintf(po.method, sizeof po.method, "producer");
    kvf_model *z = kvf_convert_cla(probe, &po, NULL, NULL);
    ck_assert_msg(z != NULL, "%s", kvf_error_message());
    for (int l = 0; l < c->n_layers; l++)
        partner[l] = kvf_model_is_producer(c, l) && z->cfg.kv_source[l] != l ? z->cfg.kv_source[l] : -1;
    kvf_model_free(z);
    kvf_model_free(probe);
}

/* ---- files ---------------------------------------------------------------------------------- */

static bool fixture_dir(const char *name, char *dir, size_t n) {
    snprintf(dir, n, "%s/fixtures/%s", kvf_test_shared(), name);
    char cfg[1200];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    if (access(cfg, R_OK) == 0) return true;
    fprintf(stderr, "skipping: fixture %s not found\n", name);
    return false;
}

static void tmpdir(char *buf, size_t n) {
    snprintf(buf, n, "/tmp/kvf_convert_testXXXXXX");
    ck_assert(mkdtemp(buf) != NULL);
}

static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    ck_assert_msg(d != NULL, "cannot open %s", dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

/* No ".BASE.convert.*" temp folder left in parent. */
static void no_temp_left(const char *parent, const char *base) {
    char prefix[300];
    snprintf(prefix, sizeof prefix, ".%s.convert.", base);
    DIR *d = opendir(parent);
    ck_assert(d != NULL);
    struct dirent *e;
    while ((e = readdir(d)))
        ck_assert_msg(strncmp(e->d_name, prefix, strlen(prefix)) != 0, "temp folder %s/%s left behind", parent,
                      e->d_name);
    closedir(d);
}

static bool exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

/* Copies the files of folder src into the new folder dst (flat folders only). */
static void copy_dir(const char *src, const char *dst) {
    ck_assert(mkdir(dst, 0777) == 0);
    DIR *d = opendir(src);
    ck_assert(d != NULL);
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') {
            char p[1200];
            snprintf(p, sizeof p, "%s/%s", src, e->d_name);
            ck_assert_msg(kvf_fs_copy_file(p, dst, e->d_name) == KVF_OK, "%s", kvf_error_message());
        }
    closedir(d);
}

/* kvf_convert_run with the log captured (freed by the caller). */
static kvf_status run_driver(const char *src, const char *dst, const kvf_convert_opts *o, char **log) {
    size_t len = 0;
    char *buf = NULL;
    FILE *f = open_memstream(&buf, &len);
    ck_assert(f != NULL);
    kvf_error_clear();
    kvf_status s = kvf_convert_run(src, dst, o, f);
    fclose(f);
    if (log) *log = buf;
    else free(buf);
    return s;
}

/* Those bytes into the file DIR/NAME (its path in path); false without kjv.txt. Small files
 * keep the driver's tokenizing and evaluating fast. */
static bool kjv_slice(const char *dir, const char *name, long from, size_t bytes, char *path, size_t n) {
    size_t got;
    char *buf = kvf_test_kjv_read(from, bytes, &got);
    if (!buf) return false;
    snprintf(path, n, "%s/%s", dir, name);
    FILE *o = fopen(path, "wb");
    ck_assert(o != NULL);
    ck_assert(fwrite(buf, 1, got, o) == got);
    fclose(o);
    free(buf);
    return true;
}

/* ============================================================================================
 * MHA/GQA → GQA/MQA
 * ========================================================================================== */

struct gqa_case {
    int nq, nsrc, ndst, vd;
    bool bias;
};
static const struct gqa_case gqa_cases[] = {
    {4, 4, 2, 0, false}, {4, 4, 1, 0, false}, {4, 2, 1, 0, false}, {6, 3, 2, 0, false},
    {8, 4, 2, 0, true},  {4, 4, 2, 0, true},  {4, 4, 2, 4, false}, {6, 3, 1, 0, true},
};
#define N_GQA_CASES (int)(sizeof gqa_cases / sizeof gqa_cases[0])

static kvf_model *gqa_source(const struct gqa_case *k, uint64_t seed) {
    kvf_model_config c = base_cfg(2, k->nq, k->nsrc);
    c.qkv_bias = k->bias;
    c.v_head_dim = k->vd;
    return build(&c, seed);
}

/* Target head g of a projection with rph rows per head, the naive way: query head i of the
 * target's group g used source head i / (nq / nsrc); mean = average over the group's query
 * heads of the rows they used (so a source head shared by two of them counts twice). */
static void naive_pool(const char *method, int nq, int nsrc, int ndst, int rph, int64_t cols, const double *W,
                       double *out) {
    int rs = nq / nsrc, rd = nq / ndst;
    for (int g = 0; g < ndst; g++)
        for (int64_t e = 0; e < (int64_t)rph * cols; e++) {
            double acc = 0;
            if (!strcmp(method, "first")) {
                acc = W[(size_t)((g * rd) / rs) * rph * cols + e];
            } else {
                for (int i = g * rd; i < (g + 1) * rd; i++) acc += W[(size_t)(i / rs) * rph * cols + e];
                acc /= rd;
            }
            out[(size_t)g * rph * cols + e] = acc;
        }
}

static void check_pooled(const kvf_model *src, const kvf_model *dst, const char *method, double tol) {
    const kvf_model_config *c = &src->cfg;
    char n[160];
    static const char *const what[4] = {"k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias"};
    for (int l = 0; l < c->n_layers; l++) {
        if (!kvf_model_is_producer(c, l)) continue;
        for (int w = 0; w < (c->qkv_bias ? 4 : 2); w++) {
            int rph = w % 2 ? c->v_head_dim : c->head_dim;
            int64_t cols = w < 2 ? c->d_model : 1, ns, nd;
            double *S = get(src, pname(n, sizeof n, l, what[w]), &ns), *D = get(dst, n, &nd);
            ck_assert_int_eq(ns, (int64_t)c->n_kv_heads * rph * cols);
            ck_assert_int_eq(nd, (int64_t)dst->cfg.n_kv_heads * rph * cols);
            double *R = malloc(sizeof(double) * (size_t)nd);
            naive_pool(method, c->n_q_heads, c->n_kv_heads, dst->cfg.n_kv_heads, rph, cols, S, R);
            for (int64_t e = 0; e < nd; e++)
                ck_assert_msg(fabs(R[e] - D[e]) <= tol, "%s %d→%d heads: %s element %lld: %.17g, naive %.17g", method,
                              c->n_kv_heads, dst->cfg.n_kv_heads, n, (long long)e, D[e], R[e]);
            free(S);
            free(D);
            free(R);
        }
    }
}

START_TEST(gqa_mean_and_first_match_naive) {
    for (int k = 0; k < N_GQA_CASES; k++) {
        const struct gqa_case *gc = &gqa_cases[k];
        kvf_model *src = gqa_source(gc, 100 + k);
        for (int mi = 0; mi < 2; mi++) {
            const char *method = mi ? "first" : "mean";
            kvf_model *dst = gqa(src, gc->ndst, method, NULL);
            ck_assert_int_eq(dst->cfg.n_q_heads, gc->nq);
            check_pooled(src, dst, method, mi ? 0.0 : 1e-14);
            others_unchanged(src, dst, method);
            ck_assert_int_eq(kvf_model_kv_bytes_per_token(&dst->cfg) * gc->nsrc,
                             kvf_model_kv_bytes_per_token(&src->cfg) * gc->ndst);
            /* pooling different heads is lossy: the check above is not vacuous */
            ck_assert_msg(kvf_test_max_logit_diff(src, dst, NULL, 0, 0) > 1e-4, "case %d %s: logits did not change", k, method);
            kvf_model_free(dst);
        }
        kvf_model_free(src);
    }
}
END_TEST

/* --to mqa is --to gqa --kv-heads 1. */
START_TEST(mqa_is_gqa_one) {
    kvf_model *src = gqa_source(&gqa_cases[0], 7);
    kvf_convert_opts a = gqa_opts(1, "mean"), b = gqa_opts(1, "mean");
    b.to = KVF_CONVERT_GQA;
    b.kv_heads = 1;
    kvf_model *x = kvf_convert_gqa(src, &a, NULL, NULL), *y = kvf_convert_gqa(src, &b, NULL, NULL);
    ck_assert(x && y);
    ck_assert_int_eq(x->cfg.n_kv_heads, 1);
    for (int i = 0; i < kvf_params_count(x->params); i++)
        ck_assert(same_bytes(kvf_params_at(x->params, i), param(y, kvf_params_at(x->params, i)->name)));
    a.kv_heads = 2;
    kvf_error_clear();
    ck_assert(kvf_convert_gqa(src, &a, NULL, NULL) == NULL);
    ck_assert_msg(strstr(kvf_error_message(), "--kv-heads 2") != NULL, "%s", kvf_error_message());
    kvf_error_clear();
    kvf_model_free(x);
    kvf_model_free(y);
    kvf_model_free(src);
}
END_TEST

START_TEST(gqa_random_seeded) {
    for (int k = 0; k < N_GQA_CASES; k++) {
        const struct gqa_case *gc = &gqa_cases[k];
        kvf_model *src = gqa_source(gc, 200 + k);
        kvf_convert_opts o = gqa_opts(gc->ndst, "random");
        o.seed = 11;
        kvf_model *a = kvf_convert_gqa(src, &o, NULL, NULL), *b = kvf_convert_gqa(src, &o, NULL, NULL);
        o.seed = 12;
        kvf_model *c = kvf_convert_gqa(src, &o, NULL, NULL);
        ck_assert(a && b && c);
        others_unchanged(src, a, "random");
        char n[160];
        for (int l = 0; l < 2; l++)
            for (int w = 0; w < 2; w++) {
                const char *what = w ? "v_proj.weight" : "k_proj.weight";
                kvf_tensor *ta = param(a, pname(n, sizeof n, l, what)), *tb = param(b, n), *tc = param(c, n);
                ck_assert_msg(same_bytes(ta, tb), "random: seed 11 twice gave different %s", n);
                ck_assert_msg(!same_bytes(ta, tc), "random: seeds 11 and 12 gave the same %s", n);
                /* N(0, std of the source projection) */
                int64_t ns, nd;
                double *S = get(src, n, &ns), *D = get(a, n, &nd), ms = 0, ss = 0, md = 0, sd = 0;
                for (int64_t e = 0; e < ns; e++) ms += S[e] / (double)ns;
                for (int64_t e = 0; e < ns; e++) ss += (S[e] - ms) * (S[e] - ms) / (double)ns;
                for (int64_t e = 0; e < nd; e++) md += D[e] / (double)nd;
                for (int64_t e = 0; e < nd; e++) sd += (D[e] - md) * (D[e] - md) / (double)nd;
                ck_assert_msg(fabs(sqrt(sd) / sqrt(ss) - 1) < 0.25, "%s: std %g vs source %g", n, sqrt(sd), sqrt(ss));
                ck_assert_msg(fabs(md) < 4 * sqrt(ss / (double)nd) + 1e-12, "%s: mean %g", n, md);
                /* the draws are not a copy of a source head */
                for (int64_t e = 0; e < nd && e < ns; e++) ck_assert(D[e] != S[e]);
                free(S);
                free(D);
                if (gc->bias) { /* biases: zero */
                    const char *bw = w ? "v_proj.bias" : "k_proj.bias";
                    double *B = get(a, pname(n, sizeof n, l, bw), &nd);
                    for (int64_t e = 0; e < nd; e++) ck_assert(B[e] == 0.0);
                    free(B);
                }
            }
        /* layers and K vs V draw from different streams */
        double *k0 = get(a, "model.layers.0.self_attn.k_proj.weight", NULL),
               *k1 = get(a, "model.layers.1.self_attn.k_proj.weight", NULL),
               *v0 = get(a, "model.layers.0.self_attn.v_proj.weight", NULL);
        ck_assert(k0[0] != k1[0] && k0[1] != k1[1]);
        ck_assert(k0[0] / v0[0] != k0[1] / v0[1]); /* not one stream scaled by two stds */
        free(k0);
        free(k1);
        free(v0);
        kvf_model_free(a);
        kvf_model_free(b);
        kvf_model_free(c);
        kvf_model_free(src);
    }
}
END_TEST

/* kvf_convert_gqa to the source's own count (the driver refuses it; see driver_errors) changes
 * nothing for mean, first and calib. */
START_TEST(gqa_same_count_is_identity) {
    for (int bias = 0; bias < 2; bias++)
        for (int nkv = 4; nkv >= 2; nkv -= 2) {
            kvf_model_config c = base_cfg(2, 4, nkv);
            c.qkv_bias = bias;
            c.param_dtype = KVF_DTYPE_F32;
            kvf_model *src = build(&c, 300 + nkv);
            kvf_calib cal;
            kvf_test_calibrate(src, &cal, NULL, 1);
            static const char *const methods[] = {"mean", "first", "calib"};
            for (int mi = 0; mi < 3; mi++) {
                kvf_model *dst = gqa(src, nkv, methods[mi], &cal);
                for (int i = 0; i < kvf_params_count(src->params); i++) {
                    kvf_tensor *s = kvf_params_at(src->params, i);
                    ck_assert_msg(same_bytes(s, param(dst, s->name)), "%s to %d KV heads changed %s", methods[mi],
                                  nkv, s->name);
                }
                ck_assert(kvf_test_max_logit_diff(src, dst, NULL, 0, 0) == 0);
                kvf_model_free(dst);
            }
            kvf_calib_free(&cal);
            kvf_model_free(src);
        }
}
END_TEST

/* A per-head map of K or V outputs that attention can absorb exactly (rows × rows into R):
 * keys a complex scalar per RoPE pair (commutes with the rotation) and a dense block on the
 * dims RoPE leaves alone; values any (here well-conditioned) matrix, which o_proj absorbs. */
static void absorbable_map(const kvf_model_config *c, bool is_key, kvf_rng *r, double *R) {
    int rows = is_key ? c->head_dim : c->v_head_dim;
    memset(R, 0, sizeof(double) * (size_t)rows * rows);
    int F = is_key && c->pos == KVF_POS_ROPE ? c->rope_dim / 2 : 0;
    for (int f = 0; f < F; f++) {
        int a = c->rope_layout == KVF_ROPE_INTERLEAVED ? 2 * f : f, b = c->rope_layout == KVF_ROPE_INTERLEAVED ? a + 1 : f + F;
        double re = 0.5 + kvf_rng_uniform(r), im = kvf_rng_normal(r);
        R[a * rows + a] = re;
        R[a * rows + b] = -im;
        R[b * rows + a] = im;
        R[b * rows + b] = re;
    }
    for (int x = 2 * F; x < rows; x++)
        for (int y = 2 * F; y < rows; y++) R[x * rows + y] = (x == y) + 0.4 * kvf_rng_normal(r);
}

/* out (rows × cols) = R · in (head rows × cols). */
static void apply_map(const double *R, int rows, int64_t cols, const double *in, double *out) {
    for (int x = 0; x < rows; x++)
        for (int64_t e = 0; e < cols; e++) {
            double acc = 0;
            for (int y = 0; y < rows; y++) acc += R[x * rows + y] * in[y * cols + e];
            out[x * cols + e] = acc;
        }
}

enum relate { RELATE_COPY, RELATE_MAP };

/* Makes the source KV heads within each target group of ndst depend on the group's first head,
 * in every producer layer: copies of it (pooling by any method is then exact), or absorbable
 * maps of it (mean/first are lossy, calib's fold is exact). Weights and biases alike. */
static void relate_groups(kvf_model *m, int ndst, enum relate how, uint64_t seed) {
    const kvf_model_config *c = &m->cfg;
    int nq = c->n_q_heads, nsrc = c->n_kv_heads, rs = nq / nsrc, rd = nq / ndst;
    kvf_rng r;
    kvf_rng_init(&r, seed);
    char n[160];
    for (int l = 0; l < c->n_layers; l++) {
        if (!kvf_model_is_producer(c, l)) continue;
        for (int t = 0; t < 2; t++) {
            int rows = t ? c->v_head_dim : c->head_dim;
            double *W = get(m, pname(n, sizeof n, l, t ? "v_proj.weight" : "k_proj.weight"), NULL);
            double *B = c->qkv_bias ? get(m, pname(n, sizeof n, l, t ? "v_proj.bias" : "k_proj.bias"), NULL) : NULL;
            double *R = malloc(sizeof(double) * (size_t)rows * rows);
            /* groups in order: a head in two groups (6 query / 3 KV heads → 2) is set by the
             * first and then is the second's first head */
            for (int g = 0; g < ndst; g++) {
                int h0 = (g * rd) / rs;
                for (int h = h0 + 1; h <= ((g + 1) * rd - 1) / rs; h++) {
                    if (how == RELATE_COPY) {
                        memset(R, 0, sizeof(double) * (size_t)rows * rows);
                        for (int x = 0; x < rows; x++) R[x * rows + x] = 1;
                    } else {
                        absorbable_map(c, t == 0, &r, R);
                    }
                    apply_map(R, rows, c->d_model, W + (size_t)h0 * rows * c->d_model, W + (size_t)h * rows * c->d_model);
                    if (B) apply_map(R, rows, 1, B + (size_t)h0 * rows, B + (size_t)h * rows);
                }
            }
            put(m, pname(n, sizeof n, l, t ? "v_proj.weight" : "k_proj.weight"), W);
            if (B) put(m, pname(n, sizeof n, l, t ? "v_proj.bias" : "k_proj.bias"), B);
            free(W);
            free(B);
            free(R);
        }
    }
}

struct exact_case {
    int nq, nsrc, ndst, rope_dim, vd;
    bool bias, interleaved, cla_source;
};

START_TEST(gqa_related_heads_exact) {
    static const struct exact_case cases[] = {
        {4, 4, 2, 0, 0, false, false, false}, {4, 4, 1, 0, 0, false, false, false},
        {4, 2, 1, 0, 0, false, false, false}, {6, 3, 2, 0, 0, false, false, false},
        {4, 4, 2, 4, 0, false, false, false}, /* dims RoPE leaves alone */
        {4, 4, 2, 0, 0, false, true, false},  /* interleaved pairs */
        {4, 4, 2, 6, 0, true, false, false},  /* q/k/v biases, partial rotary */
        {4, 4, 1, 0, 4, false, false, false}, /* v_head_dim != head_dim */
        {4, 4, 2, 0, 0, true, false, true},   /* a CLA source: layer 1 reads layer 0's K/V */
        {4, 4, 2, -1, 0, true, false, false}, /* GPT-2 style: learned positions, every bias */
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        const struct exact_case *e = &cases[k];
        kvf_model_config c = base_cfg(3, e->nq, e->nsrc);
        c.rope_dim = e->rope_dim > 0 ? e->rope_dim : 0;
        if (e->rope_dim < 0) {
            c.pos = KVF_POS_LEARNED;
            c.o_bias = c.mlp_bias = true;
        }
        c.v_head_dim = e->vd;
        c.qkv_bias = e->bias;
        c.rope_layout = e->interleaved ? KVF_ROPE_INTERLEAVED : KVF_ROPE_HALF;
        if (e->cla_source) {
            c.kv_source[0] = 0;
            c.kv_source[1] = 0;
            c.kv_source[2] = 2;
        }
        kvf_model *src = build(&c, 400 + k);
        /* control: before the heads are related, every method is lossy */
        kvf_model *lossy = gqa(src, e->ndst, "mean", NULL);
        double control = kvf_test_max_logit_diff(src, lossy, NULL, 0, 0);
        kvf_model_free(lossy);
        ck_assert_msg(control > 1e-4, "case %zu: mean pooling of distinct heads left logits unchanged", k);
        for (int how = 0; how < 2; how++) {
            kvf_model *m = kvf_cv_derive(src, &src->cfg);
            ck_assert(m != NULL);
            relate_groups(m, e->ndst, how, 40 + k);
            kvf_calib cal;
            kvf_test_calibrate(m, &cal, NULL, 2);
            double tol = 1e-9 * fmax(1, kvf_test_logit_scale(m));
            static const char *const methods[] = {"mean", "first", "calib"};
            for (int mi = 0; mi < 3; mi++) {
                kvf_model *dst = gqa(m, e->ndst, methods[mi], mi == 2 ? &cal : NULL);
                double md = kvf_test_max_logit_diff(m, dst, NULL, 0, 0);
                if (how == RELATE_COPY || mi == 2)
                    ck_assert_msg(md < tol, "case %zu (%d→%d KV heads, heads %s): %s changed the logits by %g", k,
                                  e->nsrc, e->ndst, how ? "mapped" : "copied", methods[mi], md);
                else /* mapped heads are not copies: mean and first are lossy (the control for calib) */
                    ck_assert_msg(md > 1e-4, "case %zu: %s of mapped heads is exact?", k, methods[mi]);
                if (e->cla_source)
                    for (int l = 0; l < 3; l++) ck_assert_int_eq(dst->cfg.kv_source[l], c.kv_source[l]);
                kvf_model_free(dst);
            }
            kvf_calib_free(&cal);
            kvf_model_free(m);
        }
        kvf_model_free(src);
    }
}
END_TEST

/* A GQA source (2 KV heads) to MQA, as a user loads it (f32): the single head is the average
 * of the two, rounded once to f32. */
START_TEST(gqa_fixture_gqa_source) {
    char dir[1100];
    if (!fixture_dir("tiny-llama-gqa", dir, sizeof dir)) return;
    kvf_model *src = kvf_checkpoint_load(dir, KVF_DEVICE_CPU);
    ck_assert_msg(src != NULL, "%s", kvf_error_message());
    ck_assert_int_eq(src->cfg.n_kv_heads, 2);
    kvf_model *dst = gqa(src, 1, "mean", NULL);
    char n[160];
    for (int l = 0; l < src->cfg.n_layers; l++)
        for (int w = 0; w < 2; w++) {
            int64_t ns, nd;
            double *S = get(src, pname(n, sizeof n, l, w ? "v_proj.weight" : "k_proj.weight"), &ns),
                   *D = get(dst, n, &nd);
            ck_assert_int_eq(nd * 2, ns);
            for (int64_t e = 0; e < nd; e++)
                ck_assert_msg(D[e] == (double)(float)(0.5 * (S[e] + S[e + nd])), "%s[%lld]", n, (long long)e);
            free(S);
            free(D);
        }
    others_unchanged(src, dst, "tiny-llama-gqa → mqa");
    double md = kvf_test_max_logit_diff(src, dst, NULL, 0, 0);
    ck_assert_msg(md > 1e-3, "pooling the fixture's two distinct heads should change its logits (%g)", md);
    /* the same through the driver, saved and reloaded */
    char tmp[64], out[128];
    tmpdir(tmp, sizeof tmp);
    snprintf(out, sizeof out, "%s/mqa", tmp);
    kvf_convert_opts o = gqa_opts(1, "mean");
    char *log;
    ck_assert_msg(run_driver(dir, out, &o, &log) == KVF_OK, "%s", kvf_error_message());
    ck_assert_msg(strstr(log, "KV cache: 256 → 128 bytes per token"), "%s", log);
    free(log);
    kvf_model *back = kvf_checkpoint_load(out, KVF_DEVICE_CPU);
    ck_assert_msg(back != NULL, "%s", kvf_error_message());
    ck_assert(kvf_test_max_logit_diff(dst, back, NULL, 0, 0) == 0);
    char arch[64];
    kvf_model_config rc;
    ck_assert(kvf_hf_config_read(out, &rc, arch, sizeof arch) == KVF_OK);
    ck_assert_str_eq(arch, "LlamaForCausalLM");
    kvf_fs_remove_tree(tmp);
    kvf_model_free(back);
    kvf_model_free(dst);
    kvf_model_free(src);
}
END_TEST

/* On tiny-llama-mha at 2 KV heads (half the cache) and 1 (a quarter): calib's validation loss
 * on held-out text (the val split; calibration on the train split) is below mean pooling's at
 * the same KV budget, and below first's and random's. */
START_TEST(gqa_calib_beats_mean_fixture) {
    char dir[1100];
    if (!fixture_dir("tiny-llama-mha", dir, sizeof dir)) return;
    kvf_model *src = kvf_checkpoint_load(dir, KVF_DEVICE_CPU);
    ck_assert_msg(src != NULL, "%s", kvf_error_message());
    kvf_ids cal_ids = kvf_test_kjv_tokens(dir, 0, 12000), val = kvf_test_kjv_tokens(dir, -1, 12000);
    if (cal_ids.count < 16 * 128 + 1 || val.count < 2048) {
        fprintf(stderr, "skipping: kjv.txt not found\n");
        kvf_ids_free(&cal_ids);
        kvf_ids_free(&val);
        kvf_model_free(src);
        return;
    }
    kvf_calib cal;
    ck_assert(kvf_calib_collect(src, cal_ids.data, 16 * 128 + 1, 128, 0, &cal, NULL) == KVF_OK);
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    static const char *const methods[] = {"calib", "mean", "first", "random"};
    double loss[4], l0;
    kvf_eval_result r;
    ck_assert(kvf_eval_stream(src, ctx, val.data, val.count, 128, 2048, 8, &r) == KVF_OK);
    l0 = r.loss;
    for (int kv = 2; kv >= 1; kv--) {
        for (int mi = 0; mi < 4; mi++) {
            kvf_model *m = gqa(src, kv, methods[mi], &cal);
            ck_assert(kvf_eval_stream(m, ctx, val.data, val.count, 128, 2048, 8, &r) == KVF_OK);
            loss[mi] = r.loss;
            kvf_model_free(m);
        }
        fprintf(stderr, "tiny-llama-mha → %d KV heads, val loss: source %.4f, calib %.4f, mean %.4f, first %.4f, random %.4f\n",
                kv, l0, loss[0], loss[1], loss[2], loss[3]);
        ck_assert_msg(loss[0] < loss[1], "%d KV heads: calib %.4f is not better than mean %.4f", kv, loss[0], loss[1]);
        ck_assert_msg(loss[0] < loss[2] && loss[0] < loss[3], "%d KV heads: calib %.4f vs first %.4f / random %.4f", kv,
                      loss[0], loss[2], loss[3]);
        ck_assert(loss[0] >= l0 - 0.05); /* lossy, not magic */
    }
    kvf_ctx_free(ctx);
    kvf_calib_free(&cal);
    kvf_ids_free(&cal_ids);
    kvf_ids_free(&val);
    kvf_model_free(src);
}
END_TEST

/* ============================================================================================
 * CLA
 * ========================================================================================== */

static kvf_model *cla(const kvf_model *src, const kvf_convert_opts *o, const kvf_calib *cal) {
    kvf_model *m = kvf_convert_cla(src, o, cal, NULL);
    ck_assert_msg(m != NULL, "cla: %s", kvf_error_message());
    return m;
}

static void expect_sources(const kvf_model *m, const int *want) {
    for (int l = 0; l < m->cfg.n_layers; l++)
        ck_assert_msg(m->cfg.kv_source[l] == want[l], "layer %d reads %d, want %d", l, m->cfg.kv_source[l], want[l]);
}

/* Consumers have no K/V parameters; producers have them. */
static void check_kv_params(const kvf_model *m) {
    char n[160];
    for (int l = 0; l < m->cfg.n_layers; l++) {
        bool prod = m->cfg.kv_source[l] == l;
        static const char *const what[4] = {"k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias"};
        for (int w = 0; w < (m->cfg.qkv_bias ? 4 : 2); w++) {
            bool has = kvf_params_get(m->params, pname(n, sizeof n, l, what[w])) != NULL;
            ck_assert_msg(has == prod, "layer %d (%s) %s %s", l, prod ? "producer" : "consumer",
                          has ? "has" : "lacks", n);
        }
        ck_assert(prod == (m->layers[l].k_w != NULL && m->layers[l].v_w != NULL));
    }
}

START_TEST(cla_producer_keeps_weights) {
    for (int bias = 0; bias < 2; bias++) {
        kvf_model_config c = base_cfg(4, 4, 2);
        c.qkv_bias = bias;
        c.param_dtype = KVF_DTYPE_F32;
        kvf_model *src = build(&c, 500 + bias);
        kvf_convert_opts o = cla_opts(2, NULL, "producer");
        kvf_model *dst = cla(src, &o, NULL);
        expect_sources(dst, (int[]){0, 0, 2, 2});
        check_kv_params(dst);
        /* every parameter dst has is src's, bit for bit (producers' K/V included) */
        for (int i = 0; i < kvf_params_count(dst->params); i++) {
            kvf_tensor *d = kvf_params_at(dst->params, i);
            ck_assert_msg(same_bytes(param(src, d->name), d), "%s changed", d->name);
        }
        ck_assert_int_eq(kvf_params_count(dst->params), kvf_params_count(src->params) - 2 * (bias ? 4 : 2));
        ck_assert_int_eq(2 * kvf_model_kv_bytes_per_token(&dst->cfg), kvf_model_kv_bytes_per_token(&src->cfg));
        ck_assert_msg(kvf_test_max_logit_diff(src, dst, NULL, 0, 0) > 1e-4, "sharing distinct layers' K/V should change the logits");
        kvf_model_free(dst);
        kvf_model_free(src);
    }
}
END_TEST

/* The producer's K/V under --method mean: the average over the group's layers of the K/V each
 * computed with in the source (its own, or its source producer's). */
static void check_cla_mean(const kvf_model *src, const kvf_model *dst) {
    const kvf_model_config *c = &src->cfg;
    char n[160];
    static const char *const what[4] = {"k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias"};
    for (int p = 0; p < c->n_layers; p++) {
        if (dst->cfg.kv_source[p] != p) continue;
        int end = p + 1;
        while (end < c->n_layers && dst->cfg.kv_source[end] == p) end++;
        for (int w = 0; w < (c->qkv_bias ? 4 : 2); w++) {
            int64_t nd;
            double *D = get(dst, pname(n, sizeof n, p, what[w]), &nd);
            double *R = calloc((size_t)nd, sizeof(double));
            for (int l = p; l < end; l++) {
                double *S = get(src, pname(n, sizeof n, c->kv_source[l], what[w]), NULL);
                for (int64_t e = 0; e < nd; e++) R[e] += S[e];
                free(S);
            }
            for (int64_t e = 0; e < nd; e++)
                ck_assert_msg(fabs(R[e] / (end - p) - D[e]) <= 1e-14, "producer %d %s[%lld]: %.17g, naive %.17g", p,
                              what[w], (long long)e, D[e], R[e] / (end - p));
            free(D);
            free(R);
        }
    }
}

START_TEST(cla_mean_matches_naive) {
    struct {
        int share;
        const char *producers;
        int want[4];
        int source[4]; /* the source's own kv_source */
    } cases[] = {
        {2, NULL, {0, 0, 2, 2}, {0, 1, 2, 3}},
        {3, NULL, {0, 0, 0, 3}, {0, 1, 2, 3}},
        {0, "0,1,3", {0, 1, 1, 3}, {0, 1, 2, 3}},
        {4, NULL, {0, 0, 0, 0}, {0, 1, 2, 3}},
        {4, NULL, {0, 0, 0, 0}, {0, 0, 2, 3}}, /* layers 0, 2, 3's K/V weigh 1/2, 1/4, 1/4 */
        {0, "0,2", {0, 0, 2, 2}, {0, 1, 2, 2}}, /* layers 0 and 1's 1/2 each; producer 2 keeps */
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++)
        for (int bias = 0; bias < 2; bias++) {
            kvf_model_config c = base_cfg(4, 4, 2);
            c.qkv_bias = bias;
            for (int l = 0; l < 4; l++) c.kv_source[l] = cases[k].source[l];
            kvf_model *src = build(&c, 600 + 2 * k + bias);
            kvf_convert_opts o = cla_opts(cases[k].share, cases[k].producers, "mean");
            kvf_model *dst = cla(src, &o, NULL);
            expect_sources(dst, cases[k].want);
            check_kv_params(dst);
            check_cla_mean(src, dst);
            /* queries, outputs, MLPs and norms of every layer stay */
            for (int i = 0; i < kvf_params_count(dst->params); i++) {
                kvf_tensor *d = kvf_params_at(dst->params, i);
                if (!is_kv_name(d->name)) ck_assert_msg(same_bytes(param(src, d->name), d), "%s changed", d->name);
            }
            kvf_model_free(dst);
            kvf_model_free(src);
        }
}
END_TEST

/* A 4-layer model made so that sharing K/V is exact or absorbable. Plain (cla_src false): for
 * p = 0, 2, layer p adds nothing to the residual stream (o_proj and down_proj zero, their
 * biases too) and layer p+1 has p's input norm, so both see the same input; layer p+1's K/V
 * heads are then copies of p's (--share 2 is exact for every method) or absorbable maps of
 * them (producer/mean lossy, calib's per-layer corrections exact). cla_src: the source already
 * shares (kv_source 0,0,2,2), layers 0 and 1 add nothing and layer 2's input norm and K/V are
 * made from layer 0's, for --share 4. how < 0 leaves the model as drawn: the control. */
static kvf_model *shared_input_model(int variant, int how, bool cla_src, uint64_t seed) {
    kvf_model_config c = base_cfg(4, 4, 2);
    bool bias = variant > 0;
    c.qkv_bias = bias;
    if (variant == 2) { /* GPT-2 style: learned positions, LayerNorm, GELU, every bias */
        c.pos = KVF_POS_LEARNED;
        c.norm = KVF_NORM_LAYER;
        c.mlp = KVF_MLP_GELU;
        c.o_bias = c.mlp_bias = c.norm_bias = true;
    }
    if (cla_src)
        for (int l = 0; l < 4; l++) c.kv_source[l] = l < 2 ? 0 : 2;
    kvf_model *m = build(&c, seed);
    if (how < 0) return m;
    kvf_rng r;
    kvf_rng_init(&r, seed + 1);
    char n[160], n2[160];
    int silent[2] = {0, cla_src ? 1 : 2}; /* layers that add nothing */
    int from[2] = {0, 2}, to[2] = {1, 3};   /* input norm and K/V of `to` made from `from`'s */
    if (cla_src) to[0] = 2;
    for (int k = 0; k < 2; k++) {
        static const char *const out_params[3] = {"mlp.down_proj.weight", "self_attn.o_proj.bias",
                                                  "mlp.down_proj.bias"};
        for (int i = -1; i < (variant == 2 ? 3 : 1); i++) {
            if (i < 0) pname(n, sizeof n, silent[k], "o_proj.weight");
            else snprintf(n, sizeof n, "model.layers.%d.%s", silent[k], out_params[i]);
            int64_t cnt;
            double *z = get(m, n, &cnt);
            memset(z, 0, sizeof(double) * (size_t)cnt);
            put(m, n, z);
            free(z);
        }
    }
    for (int k = 0; k < (cla_src ? 1 : 2); k++) {
        int p = from[k], q = to[k];
        for (int i = 0; i < (variant == 2 ? 2 : 1); i++) {
            snprintf(n, sizeof n, "model.layers.%d.input_layernorm.%s", p, i ? "bias" : "weight");
            snprintf(n2, sizeof n2, "model.layers.%d.input_layernorm.%s", q, i ? "bias" : "weight");
            double *z = get(m, n, NULL);
            put(m, n2, z);
            free(z);
        }
        for (int t = 0; t < 2; t++) {
            int rows = c.head_dim; /* = v_head_dim here */
            double *W = get(m, pname(n, sizeof n, p, t ? "v_proj.weight" : "k_proj.weight"), NULL);
            double *B = bias ? get(m, pname(n, sizeof n, p, t ? "v_proj.bias" : "k_proj.bias"), NULL) : NULL;
            double *W2 = get(m, pname(n, sizeof n, q, t ? "v_proj.weight" : "k_proj.weight"), NULL);
            double *B2 = bias ? get(m, pname(n, sizeof n, q, t ? "v_proj.bias" : "k_proj.bias"), NULL) : NULL;
            double R[64];
            for (int h = 0; h < c.n_kv_heads; h++) {
                if (how == RELATE_MAP) {
                    absorbable_map(&m->cfg, t == 0, &r, R);
                } else {
                    memset(R, 0, sizeof R);
                    for (int x = 0; x < rows; x++) R[x * rows + x] = 1;
                }
                apply_map(R, rows, c.d_model, W + (size_t)h * rows * c.d_model, W2 + (size_t)h * rows * c.d_model);
                if (B) apply_map(R, rows, 1, B + (size_t)h * rows, B2 + (size_t)h * rows);
            }
            put(m, pname(n, sizeof n, q, t ? "v_proj.weight" : "k_proj.weight"), W2);
            if (B) put(m, pname(n, sizeof n, q, t ? "v_proj.bias" : "k_proj.bias"), B2);
            free(W);
            free(B);
            free(W2);
            free(B2);
        }
    }
    return m;
}

START_TEST(cla_shared_inputs_exact) {
    for (int v = 0; v < 4; v++) { /* no biases, q/k/v biases, GPT-2 style, a source that shares */
        int variant = v == 3 ? 1 : v, share = v == 3 ? 4 : 2;
        bool cla_src = v == 3;
        kvf_model *ctrl = shared_input_model(variant, -1, cla_src, 700 + v);
        kvf_convert_opts o = cla_opts(share, NULL, "producer");
        kvf_model *lossy = cla(ctrl, &o, NULL);
        double control = kvf_test_max_logit_diff(ctrl, lossy, NULL, 0, 0);
        ck_assert_msg(control > 1e-4, "control: sharing distinct K/V left logits unchanged (%g)", control);
        kvf_model_free(lossy);
        kvf_model_free(ctrl);
        for (int how = 0; how < 2; how++) {
            kvf_model *src = shared_input_model(variant, how, cla_src, 700 + v);
            int partner[4];
            cla_partners(&src->cfg, &o, partner);
            if (cla_src) ck_assert(partner[0] == -1 && partner[1] == -1 && partner[2] == 0 && partner[3] == -1);
            else ck_assert(partner[0] == -1 && partner[1] == 0 && partner[2] == -1 && partner[3] == 2);
            kvf_calib cal;
            kvf_test_calibrate(src, &cal, partner, 3);
            double sc = fmax(1, kvf_test_logit_scale(src));
            static const char *const methods[] = {"producer", "mean", "calib"};
            for (int mi = 0; mi < 3; mi++) {
                o = cla_opts(share, NULL, methods[mi]);
                kvf_model *dst = cla(src, &o, mi == 2 ? &cal : NULL);
                double md = kvf_test_max_logit_diff(src, dst, NULL, 0, 0);
                if (how == RELATE_COPY || mi == 2) /* calib's solves carry a 1e-9 relative ridge */
                    ck_assert_msg(md < (mi == 2 ? 1e-6 : 1e-10) * sc, "variant %d, K/V %s: cla %s: max logit diff %g",
                                  v, how ? "mapped" : "copied", methods[mi], md);
                else
                    ck_assert_msg(md > 1e-4, "variant %d: cla %s of mapped K/V is exact?", v, methods[mi]);
                kvf_model_free(dst);
            }
            /* the driver's other calib candidate (least squares over the group's layers, then
             * alternating refits) reproduces copies exactly, weighted or not */
            for (int w = 0; how == RELATE_COPY && w < 2; w++) {
                struct kvf_cv_cla_tuning t;
                kvf_cv_cla_tuning_defaults(&t);
                t.init_producer = false;
                t.iters = 3;
                t.weighted = w;
                o = cla_opts(share, NULL, "calib");
                kvf_model *dst = kvf_cv_cla_tuned(src, &o, &cal, &t, NULL);
                ck_assert_msg(dst != NULL, "%s", kvf_error_message());
                double md = kvf_test_max_logit_diff(src, dst, NULL, 0, 0);
                ck_assert_msg(md < 1e-6 * sc, "variant %d: cla calib (least squares, weighted %d): %g", v, w, md);
                kvf_model_free(dst);
            }
            o = cla_opts(share, NULL, "producer");
            kvf_calib_free(&cal);
            kvf_model_free(src);
        }
    }
}
END_TEST

/* MHA → GQA → CLA and MHA → CLA → GQA give the same model (pooling heads and choosing
 * producers commute); on a model where both steps are exact the chain is exact. */
START_TEST(cla_chained_with_gqa) {
    for (int mi = 0; mi < 2; mi++) {
        const char *cm = mi ? "mean" : "producer";
        kvf_model_config c = base_cfg(4, 4, 4);
        kvf_model *src = build(&c, 800 + mi);
        kvf_convert_opts co = cla_opts(2, NULL, cm);
        kvf_model *g = gqa(src, 2, "mean", NULL), *gc = cla(g, &co, NULL);
        kvf_model *cl = cla(src, &co, NULL), *cg = gqa(cl, 2, "mean", NULL);
        expect_sources(gc, (int[]){0, 0, 2, 2});
        expect_sources(cg, (int[]){0, 0, 2, 2});
        ck_assert_int_eq(gc->cfg.n_kv_heads, 2);
        ck_assert_int_eq(cg->cfg.n_kv_heads, 2);
        check_kv_params(gc);
        check_kv_params(cg);
        ck_assert_int_eq(4 * kvf_model_kv_bytes_per_token(&gc->cfg), kvf_model_kv_bytes_per_token(&src->cfg));
        ck_assert_int_eq(kvf_params_count(gc->params), kvf_params_count(cg->params));
        for (int i = 0; i < kvf_params_count(gc->params); i++) {
            kvf_tensor *a = kvf_params_at(gc->params, i), *b = param(cg, a->name);
            for (int64_t e = 0; e < kvf_tensor_numel(a); e++)
                ck_assert_msg(fabs(kvf_tensor_get_flat(a, e) - kvf_tensor_get_flat(b, e)) <= 1e-14,
                              "%s: GQA→CLA and CLA→GQA differ at %lld", a->name, (long long)e);
        }
        if (!mi) /* producer: the pooled producer K/V, bit for bit */
            for (int p = 0; p < 4; p += 2)
                for (int w = 0; w < 2; w++) {
                    char n[160];
                    pname(n, sizeof n, p, w ? "v_proj.weight" : "k_proj.weight");
                    ck_assert(same_bytes(param(g, n), param(gc, n)));
                }
        kvf_model_free(g);
        kvf_model_free(gc);
        kvf_model_free(cl);
        kvf_model_free(cg);
        kvf_model_free(src);
    }
    /* an exact chain: all KV heads copies of one (→ MQA), layer pairs sharing inputs and K/V */
    kvf_model *src = shared_input_model(1, RELATE_COPY, false, 810);
    relate_groups(src, 1, RELATE_COPY, 0);
    kvf_model *g = gqa(src, 1, "mean", NULL);
    kvf_convert_opts co = cla_opts(2, NULL, "mean");
    kvf_model *gc = cla(g, &co, NULL);
    double md = kvf_test_max_logit_diff(src, gc, NULL, 0, 0);
    ck_assert_msg(md < 1e-10 * fmax(1, kvf_test_logit_scale(src)), "exact GQA→CLA chain: %g", md);
    kvf_model_free(g);
    kvf_model_free(gc);
    kvf_model_free(src);
}
END_TEST

static void expect_cla_error(const kvf_model *src, const kvf_convert_opts *o, const char *needle) {
    kvf_error_clear();
    kvf_model *m = kvf_convert_cla(src, o, NULL, NULL);
    ck_assert_msg(m == NULL, "expected an error containing \"%s\"", needle);
    ck_assert_msg(strstr(kvf_error_message(), needle) != NULL, "message \"%s\" lacks \"%s\"", kvf_error_message(),
                  needle);
    kvf_error_clear();
}

START_TEST(cla_producer_lists) {
    kvf_model_config c = base_cfg(4, 4, 2);
    kvf_model *src = build(&c, 900);
    /* --share 2 and --producers 0,2 are the same conversion */
    kvf_convert_opts a = cla_opts(2, NULL, "mean"), b = cla_opts(0, "0,2", "mean");
    kvf_model *x = cla(src, &a, NULL), *y = cla(src, &b, NULL);
    ck_assert_int_eq(kvf_params_count(x->params), kvf_params_count(y->params));
    for (int i = 0; i < kvf_params_count(x->params); i++)
        ck_assert(same_bytes(kvf_params_at(x->params, i), param(y, kvf_params_at(x->params, i)->name)));
    kvf_model_free(x);
    kvf_model_free(y);
    struct {
        int share;
        const char *list;
        int want[4];
    } ok[] = {{1, NULL, {0, 1, 2, 3}}, {3, NULL, {0, 0, 0, 3}}, {9, NULL, {0, 0, 0, 0}},
              {0, "0", {0, 0, 0, 0}},  {0, "0,3", {0, 0, 0, 3}}, {0, "0,1,2,3", {0, 1, 2, 3}}};
    for (size_t k = 0; k < sizeof ok / sizeof *ok; k++) {
        kvf_convert_opts o = cla_opts(ok[k].share, ok[k].list, "producer");
        kvf_model *m = cla(src, &o, NULL);
        expect_sources(m, ok[k].want);
        check_kv_params(m);
        kvf_model_free(m);
    }
    kvf_convert_opts o = cla_opts(0, "1,2", "producer");
    expect_cla_error(src, &o, "must start with layer 0");
    o = cla_opts(0, "0,2,1", "producer");
    expect_cla_error(src, &o, "strictly increasing");
    o = cla_opts(0, "0,2,2", "producer");
    expect_cla_error(src, &o, "strictly increasing");
    o = cla_opts(0, "0,4", "producer");
    expect_cla_error(src, &o, "layer 4 is out of range");
    o = cla_opts(0, "0,-1", "producer");
    expect_cla_error(src, &o, "out of range");
    o = cla_opts(0, "0,2,", "producer");
    expect_cla_error(src, &o, "trailing comma");
    o = cla_opts(0, "0,x", "producer");
    expect_cla_error(src, &o, "'x' is not a layer number");
    o = cla_opts(2, "0,2", "producer");
    expect_cla_error(src, &o, "not both");
    o = cla_opts(0, NULL, "producer");
    expect_cla_error(src, &o, "--share K");
    o = cla_opts(-1, NULL, "producer");
    expect_cla_error(src, &o, "--share -1");
    o = cla_opts(2, NULL, "first");
    expect_cla_error(src, &o, "--method first is not a cla method");
    o = cla_opts(2, NULL, "calib");
    expect_cla_error(src, &o, "--calib");
    /* a source that already shares: a consumer cannot become a producer */
    c.kv_source[0] = 0;
    c.kv_source[1] = 0;
    c.kv_source[2] = 2;
    c.kv_source[3] = 2;
    kvf_model *shared_src = build(&c, 901);
    o = cla_opts(0, "0,3", "producer");
    expect_cla_error(shared_src, &o, "layer 3 cannot be a producer");
    o = cla_opts(0, "0,1,2", "mean");
    expect_cla_error(shared_src, &o, "layer 1 cannot be a producer");
    kvf_model_free(shared_src);
    kvf_model_free(src);
}
END_TEST

/* A CLA result (model_type "kvforge") and a GQA result (Llama) save, load back with the same
 * config and give the same logits. */
START_TEST(convert_save_load) {
    for (int bias = 0; bias < 2; bias++) {
        kvf_model_config c = base_cfg(4, 4, 4);
        c.qkv_bias = bias;
        c.param_dtype = KVF_DTYPE_F32;
        kvf_model *src = build(&c, 950 + bias);
        kvf_convert_opts co = cla_opts(0, "0,1,3", "mean");
        kvf_model *cm = cla(src, &co, NULL), *gm = gqa(src, 2, "mean", NULL), *gcm = cla(gm, &co, NULL);
        kvf_model *ms[3] = {cm, gm, gcm};
        const char *want[3] = {"KvforgeForCausalLM", bias ? "Qwen2ForCausalLM" : "LlamaForCausalLM",
                               "KvforgeForCausalLM"};
        char tmp[64], out[128];
        tmpdir(tmp, sizeof tmp);
        for (int i = 0; i < 3; i++) {
            snprintf(out, sizeof out, "%s/m%d", tmp, i);
            ck_assert_msg(kvf_checkpoint_save(ms[i], out, KVF_DTYPE_F32, 0) == KVF_OK, "%s", kvf_error_message());
            char arch[64];
            kvf_model_config rc;
            ck_assert_msg(kvf_hf_config_read(out, &rc, arch, sizeof arch) == KVF_OK, "%s", kvf_error_message());
            ck_assert_str_eq(arch, want[i]);
            kvf_model *back = kvf_checkpoint_load(out, KVF_DEVICE_CPU);
            ck_assert_msg(back != NULL, "%s", kvf_error_message());
            char why[200];
            ck_assert_msg(kvf_hf_config_equal(&back->cfg, &ms[i]->cfg, why, sizeof why), "%s", why);
            ck_assert_msg(kvf_test_max_logit_diff(ms[i], back, NULL, 0, 0) == 0, "%s: reload changed the logits", want[i]);
            check_kv_params(back);
            kvf_model_free(back);
        }
        kvf_fs_remove_tree(tmp);
        kvf_model_free(cm);
        kvf_model_free(gm);
        kvf_model_free(gcm);
        kvf_model_free(src);
    }
}
END_TEST

/* ============================================================================================
 * streaming == in-memory
 * ========================================================================================== */

/* Same tensors (names, dtypes, shapes, bytes) and the same config in folders a and b. */
static void same_checkpoints(const char *a, const char *b, const char *what) {
    kvf_st_dir *da = kvf_st_dir_open(a), *db = kvf_st_dir_open(b);
    ck_assert_msg(da && db, "%s: %s", what, kvf_error_message());
    ck_assert_int_eq(kvf_st_dir_count(da), kvf_st_dir_count(db));
    for (size_t i = 0; i < kvf_st_dir_count(da); i++) {
        const kvf_st_tensor *x = kvf_st_dir_tensor(da, i), *y = kvf_st_dir_tensor(db, i);
        ck_assert_msg(!strcmp(x->name, y->name), "%s: tensor %zu is %s vs %s", what, i, x->name, y->name);
        ck_assert_msg(x->dtype == y->dtype && x->ndim == y->ndim && x->nbytes == y->nbytes, "%s: %s dtype/shape", what,
                      x->name);
        for (int k = 0; k < x->ndim; k++) ck_assert(x->shape[k] == y->shape[k]);
        if (memcmp(x->data, y->data, x->nbytes)) {
            size_t es = x->nbytes / (size_t)(x->numel ? x->numel : 1), first = 0, n = 0;
            for (size_t e = (size_t)x->numel; e-- > 0;)
                if (memcmp((const char *)x->data + e * es, (const char *)y->data + e * es, es)) first = e, n++;
            ck_abort_msg("%s: %s (%s) differs in %zu of %lld elements, first at %zu", what, x->name,
                         kvf_st_dtype_name(x->dtype), n, (long long)x->numel, first);
        }
    }
    kvf_st_dir_close(da);
    kvf_st_dir_close(db);
    kvf_model_config ca, cb;
    kvf_hf_arch aa, ab;
    ck_assert(kvf_hf_config_read_arch(a, &ca, &aa) == KVF_OK && kvf_hf_config_read_arch(b, &cb, &ab) == KVF_OK);
    char why[200];
    ck_assert_msg(aa == ab && kvf_hf_config_equal(&ca, &cb, why, sizeof why), "%s: configs differ: %s", what, why);
}

/* kvf_convert_run (streaming) vs load + kvf_convert_gqa/cla + kvf_checkpoint_save. */
static void stream_vs_memory(const char *src_dir, const kvf_convert_opts *o, kvf_dtype dt, kvf_dtype ref_dt,
                             const char *tmp, const char *label) {
    char a[300], b[300];
    const char *dn = dt == KVF_DTYPE_COUNT ? "source" : kvf_dtype_name(dt);
    snprintf(a, sizeof a, "%s/stream-%s-%s", tmp, label, dn);
    snprintf(b, sizeof b, "%s/memory-%s-%s", tmp, label, dn);
    kvf_convert_opts oo = *o;
    oo.save_dtype = dt;
    char *log;
    ck_assert_msg(run_driver(src_dir, a, &oo, &log) == KVF_OK, "%s: %s", label, kvf_error_message());
    ck_assert_msg(strstr(log, "(streaming tensor by tensor)"), "%s: the driver did not stream:\n%s", label, log);
    ck_assert_msg(strstr(log, "KV cache: "), "%s: no KV report:\n%s", label, log);
    free(log);
    kvf_model *src = kvf_checkpoint_load(src_dir, KVF_DEVICE_CPU);
    ck_assert_msg(src != NULL, "%s", kvf_error_message());
    kvf_model *dst = o->to == KVF_CONVERT_CLA ? kvf_convert_cla(src, o, NULL, NULL) : kvf_convert_gqa(src, o, NULL, NULL);
    ck_assert_msg(dst != NULL, "%s: %s", label, kvf_error_message());
    ck_assert_msg(kvf_checkpoint_save(dst, b, ref_dt, 0) == KVF_OK, "%s", kvf_error_message());
    char what[200];
    snprintf(what, sizeof what, "%s as %s", label, dn);
    same_checkpoints(a, b, what);
    kvf_model_free(dst);
    kvf_model_free(src);
}

START_TEST(stream_equals_in_memory) {
    char tmp[64];
    tmpdir(tmp, sizeof tmp);
    /* random sources written here: 4 layers, plain, with biases, already sharing, bf16 */
    char rnd[4][200];
    for (int i = 0; i < 4; i++) {
        kvf_model_config c = base_cfg(4, 4, 4);
        c.param_dtype = KVF_DTYPE_F32;
        c.qkv_bias = i == 1;
        if (i == 2) /* producers 0, 2, 3: a mean over them weighs 1/2, 1/4, 1/4 */
            for (int l = 0; l < 4; l++) c.kv_source[l] = l < 2 ? 0 : l;
        kvf_model *m = build(&c, 1000 + i);
        snprintf(rnd[i], sizeof rnd[i], "%s/src%d", tmp, i);
        ck_assert_msg(kvf_checkpoint_save(m, rnd[i], i == 3 ? KVF_DTYPE_BF16 : KVF_DTYPE_F32, 0) == KVF_OK, "%s",
                      kvf_error_message());
        kvf_model_free(m);
    }
    struct {
        const char *src; /* fixture name, or NULL: rnd[ri] */
        int ri;
        const char *label;
        kvf_convert_opts o;
    } cases[24];
    int n = 0;
#define CASE(S, RI, L, O) cases[n].src = (S), cases[n].ri = (RI), cases[n].label = (L), cases[n].o = (O), n++
    kvf_convert_opts r = gqa_opts(2, "random");
    r.seed = 5;
    kvf_convert_opts r1 = gqa_opts(1, "random");
    r1.seed = 6;
    CASE("tiny-llama-mha", 0, "mha-gqa2-mean", gqa_opts(2, "mean"));
    CASE("tiny-llama-mha", 0, "mha-gqa2-first", gqa_opts(2, "first"));
    CASE("tiny-llama-mha", 0, "mha-gqa2-random", r);
    CASE("tiny-llama-mha", 0, "mha-mqa-mean", gqa_opts(1, "mean"));
    CASE("tiny-llama-mha", 0, "mha-cla2-producer", cla_opts(2, NULL, "producer"));
    CASE("tiny-llama-mha", 0, "mha-cla2-mean", cla_opts(2, NULL, "mean"));
    CASE("tiny-llama-gqa", 0, "gqa-mqa-mean", gqa_opts(1, "mean"));
    CASE("tiny-llama-gqa", 0, "gqa-cla-mean", cla_opts(0, "0", "mean"));
    CASE("tiny-qwen2", 0, "qwen2-mqa-mean", gqa_opts(1, "mean"));
    CASE("tiny-qwen2", 0, "qwen2-mqa-random", r1);
    CASE("tiny-qwen2", 0, "qwen2-cla-mean", cla_opts(2, NULL, "mean"));
    CASE(NULL, 0, "rnd-cla-013-mean", cla_opts(0, "0,1,3", "mean"));
    CASE(NULL, 0, "rnd-cla3-producer", cla_opts(3, NULL, "producer"));
    CASE(NULL, 1, "bias-gqa2-first", gqa_opts(2, "first"));
    CASE(NULL, 1, "bias-cla2-mean", cla_opts(2, NULL, "mean"));
    CASE(NULL, 2, "cla-src-gqa1-mean", gqa_opts(1, "mean"));
    CASE(NULL, 2, "cla-src-cla4-mean", cla_opts(4, NULL, "mean"));
    CASE(NULL, 3, "bf16-gqa2-mean", gqa_opts(2, "mean"));
    CASE(NULL, 3, "bf16-cla2-mean", cla_opts(2, NULL, "mean"));
#undef CASE
    for (int k = 0; k < n; k++) {
        char dir[1100];
        if (cases[k].src && !fixture_dir(cases[k].src, dir, sizeof dir)) continue;
        if (!cases[k].src) snprintf(dir, sizeof dir, "%s", rnd[cases[k].ri]);
        stream_vs_memory(dir, &cases[k].o, KVF_DTYPE_F32, KVF_DTYPE_F32, tmp, cases[k].label);
        stream_vs_memory(dir, &cases[k].o, KVF_DTYPE_BF16, KVF_DTYPE_BF16, tmp, cases[k].label);
        /* --dtype source (the CLI's default): the source's dtype */
        if (!cases[k].src && cases[k].ri == 3)
            stream_vs_memory(dir, &cases[k].o, KVF_DTYPE_COUNT, KVF_DTYPE_BF16, tmp, cases[k].label);
    }
    kvf_fs_remove_tree(tmp);
}
END_TEST

/* ============================================================================================
 * the driver: refusals leave nothing behind
 * ========================================================================================== */

/* kvf_convert_run(src → PARENT/out) fails with a message containing both needles (needle2 may
 * be NULL) and leaves PARENT empty. Returns the status. */
static kvf_status driver_fails(const char *src, const kvf_convert_opts *o, const char *needle, const char *needle2) {
    char tmp[64], out[128];
    tmpdir(tmp, sizeof tmp);
    snprintf(out, sizeof out, "%s/out", tmp);
    kvf_status s = run_driver(src, out, o, NULL);
    ck_assert_msg(s != KVF_OK, "expected a failure containing \"%s\"", needle);
    const char *msg = kvf_error_message();
    ck_assert_msg(strstr(msg, needle) && (!needle2 || strstr(msg, needle2)), "message \"%s\" lacks \"%s\" / \"%s\"", msg,
                  needle, needle2 ? needle2 : "");
    ck_assert_msg(!exists(out), "%s exists after a failed conversion", out);
    no_temp_left(tmp, "out");
    ck_assert_int_eq(count_entries(tmp), 0);
    kvf_fs_remove_tree(tmp);
    kvf_error_clear();
    return s;
}

START_TEST(driver_errors) {
    char mha[1100], gpt2[1100], qwen[1100], kjv[200];
    bool have = fixture_dir("tiny-llama-mha", mha, sizeof mha) && fixture_dir("tiny-gpt2", gpt2, sizeof gpt2) &&
                fixture_dir("tiny-qwen2", qwen, sizeof qwen);
    if (!have) return;
    char tmp[64], src4[128];
    tmpdir(tmp, sizeof tmp);
    if (!kjv_slice(tmp, "calib.txt", 0, 4000, kjv, sizeof kjv)) {
        kvf_fs_remove_tree(tmp);
        return;
    }
    /* a 4-layer source for producer lists */
    kvf_model_config c = base_cfg(4, 4, 4);
    c.param_dtype = KVF_DTYPE_F32;
    kvf_model *m = build(&c, 1100);
    snprintf(src4, sizeof src4, "%s/src4", tmp);
    ck_assert(kvf_checkpoint_save(m, src4, KVF_DTYPE_F32, 0) == KVF_OK);
    kvf_model_free(m);

    /* GQA: a head count that does not divide the query heads; the source's own count */
    kvf_convert_opts o = gqa_opts(3, "mean");
    ck_assert_int_eq(driver_fails(mha, &o, "--kv-heads 3", "does not divide"), KVF_ERR_ARG);
    o = gqa_opts(4, "mean");
    driver_fails(mha, &o, "--kv-heads 4", "already has 4 KV heads");
    o = gqa_opts(8, "mean");
    driver_fails(mha, &o, "--kv-heads 8", NULL);
    o = gqa_opts(2, "median");
    driver_fails(mha, &o, "--method median", NULL);
    /* calib methods without --calib */
    o = gqa_opts(2, "calib");
    ck_assert_int_eq(driver_fails(mha, &o, "--calib PATH", "--method calib"), KVF_ERR_ARG);
    o = cla_opts(2, NULL, "calib");
    driver_fails(mha, &o, "--calib PATH", "--to cla");
    kvf_convert_opts ml;
    kvf_convert_opts_defaults(&ml);
    ml.to = KVF_CONVERT_MLA;
    ml.kv_rank = 16;
    ml.rope_dim = 4;
    driver_fails(mha, &ml, "--calib PATH", "--to mla");
    o = gqa_opts(2, "calib");
    o.calib_path = "/nonexistent/calib.txt";
    driver_fails(mha, &o, "--calib /nonexistent/calib.txt", NULL);
    /* MLA: a kv-rank above the maximum (found after loading, in the temp folder's lifetime) */
    kvf_convert_opts p = ml;
    snprintf(p.style, sizeof p.style, "partial-rope");
    snprintf(p.rope_select, sizeof p.rope_select, "high");
    p.kv_rank = 1000;
    ck_assert_int_eq(driver_fails(mha, &p, "--kv-rank 1000", "above the maximum"), KVF_ERR_ARG);
    ml.kv_rank = 1000;
    ml.calib_path = kjv;
    ml.calib_tokens = 256;
    ml.calib_seq_len = 64;
    driver_fails(mha, &ml, "--kv-rank 1000", "above the maximum");
    /* sources that cannot be converted */
    ml.kv_rank = 16;
    driver_fails(gpt2, &ml, "--to mla", "no RoPE");
    driver_fails(qwen, &ml, "attention biases", "Qwen2");
    /* CLA producer lists */
    o = cla_opts(0, "1,2", "producer");
    driver_fails(src4, &o, "--producers '1,2'", "must start with layer 0");
    o = cla_opts(0, "0,2,1", "mean");
    driver_fails(src4, &o, "--producers '0,2,1'", "strictly increasing");
    o = cla_opts(0, "0,4", "producer");
    driver_fails(src4, &o, "--producers '0,4'", "out of range");
    o = cla_opts(1, NULL, "producer");
    driver_fails(src4, &o, "--to cla", "nothing to convert");
    o = cla_opts(2, NULL, "producer");
    o.kv_heads = 2;
    driver_fails(src4, &o, "--kv-heads", "not --to cla");
    /* a model type the reader does not know (by architecture, or model_type alone) */
    char unk[200], cfgp[260];
    snprintf(unk, sizeof unk, "%s/unknown", tmp);
    copy_dir(mha, unk);
    snprintf(cfgp, sizeof cfgp, "%s/config.json", unk);
    FILE *f = fopen(cfgp, "w");
    fputs("{\"architectures\": [\"FrobForCausalLM\"], \"model_type\": \"frob\", \"hidden_size\": 64}\n", f);
    fclose(f);
    o = gqa_opts(2, "mean");
    driver_fails(unk, &o, "config.json", "not supported");
    f = fopen(cfgp, "w");
    fputs("{\"model_type\": \"frob\", \"hidden_size\": 64}\n", f);
    fclose(f);
    driver_fails(unk, &o, "config.json", "frob");
    driver_fails("/nonexistent/model", &o, "--model /nonexistent/model", NULL);
    /* MLA sources have no KV heads to pool or per-layer K/V projections to share */
    char ds[1100];
    if (fixture_dir("tiny-deepseek-v3-mla", ds, sizeof ds)) {
        driver_fails(ds, &o, "--to gqa", "MLA");
        o = cla_opts(2, NULL, "producer");
        driver_fails(ds, &o, "--to cla", "MLA");
        o = gqa_opts(2, "mean");
    }
    /* a truncated safetensors file: the streaming path and the in-memory path */
    char tr[200], st[260];
    snprintf(tr, sizeof tr, "%s/truncated", tmp);
    copy_dir(mha, tr);
    snprintf(st, sizeof st, "%s/model.safetensors", tr);
    struct stat sb;
    ck_assert(stat(st, &sb) == 0);
    ck_assert(truncate(st, sb.st_size - 1000) == 0);
    driver_fails(tr, &o, "model.safetensors", NULL);
    o = cla_opts(2, NULL, "mean");
    driver_fails(tr, &o, "model.safetensors", NULL);
    o = gqa_opts(2, "calib");
    o.calib_path = kjv;
    o.calib_tokens = 256;
    driver_fails(tr, &o, "model.safetensors", NULL);
    o = gqa_opts(2, "mean");
    o.eval_path = kjv;
    o.eval_tokens = 300;
    driver_fails(tr, &o, "model.safetensors", NULL);
    /* MLA option errors come from the config alone, before any weight or calibration text is read:
     * the truncated weights, or a missing --calib, are never reached */
    kvf_convert_opts e = ml;
    e.kv_rank = 1000;
    driver_fails(tr, &e, "--kv-rank 1000", "above the maximum");
    e.kv_rank = 16;
    e.rope_dim = 6;
    driver_fails(tr, &e, "--rope-dim 6", NULL);
    e.rope_dim = 4;
    e.calib_path = NULL;
    driver_fails(qwen, &e, "attention biases", "Qwen2");
    /* the DeepSeek form cannot be written in f16 */
    e = ml;
    e.save_dtype = KVF_DTYPE_F16;
    driver_fails(mha, &e, "f16", "bf16");
    kvf_fs_remove_tree(tmp);
}
END_TEST

/* --out that exists and is not empty is refused and left as it was; an empty one is used. */
START_TEST(driver_out_folder) {
    char mha[1100];
    if (!fixture_dir("tiny-llama-mha", mha, sizeof mha)) return;
    char tmp[64], out[128], keep[200];
    tmpdir(tmp, sizeof tmp);
    snprintf(out, sizeof out, "%s/out", tmp);
    ck_assert(mkdir(out, 0777) == 0);
    snprintf(keep, sizeof keep, "%s/keep.txt", out);
    FILE *f = fopen(keep, "w");
    fputs("precious\n", f);
    fclose(f);
    kvf_convert_opts o = gqa_opts(2, "mean");
    for (int inmem = 0; inmem < 2; inmem++) { /* the streaming path, then the in-memory one */
        kvf_convert_opts oo = o;
        if (inmem) oo.eval_path = keep; /* never read: the refusal comes first */
        char *log;
        kvf_status s = run_driver(mha, out, &oo, &log);
        ck_assert(s != KVF_OK);
        ck_assert_msg(strstr(kvf_error_message(), "--out") && strstr(kvf_error_message(), "refusing to overwrite"),
                      "%s", kvf_error_message());
        /* refused up front, before any work */
        ck_assert_msg(!*log, "log of a refused conversion:\n%s", log);
        free(log);
        kvf_error_clear();
        ck_assert_int_eq(count_entries(out), 1);
        char buf[32] = "";
        f = fopen(keep, "r");
        ck_assert(fgets(buf, sizeof buf, f) != NULL);
        fclose(f);
        ck_assert_str_eq(buf, "precious\n");
        no_temp_left(tmp, "out");
        ck_assert_int_eq(count_entries(tmp), 1);
    }
    /* an empty folder is fine, and a trailing slash names the same folder */
    char empty[200];
    snprintf(empty, sizeof empty, "%s/empty/", tmp);
    ck_assert(mkdir(empty, 0777) == 0);
    ck_assert_msg(run_driver(mha, empty, &o, NULL) == KVF_OK, "%s", kvf_error_message());
    char cfgp[260];
    snprintf(cfgp, sizeof cfgp, "%sconfig.json", empty);
    ck_assert(exists(cfgp));
    no_temp_left(tmp, "empty");
    /* an --out whose parent does not exist */
    snprintf(out, sizeof out, "%s/no/such/out", tmp);
    ck_assert(run_driver(mha, out, &o, NULL) != KVF_OK);
    ck_assert_msg(strstr(kvf_error_message(), "--out"), "%s", kvf_error_message());
    kvf_error_clear();
    kvf_fs_remove_tree(tmp);
}
END_TEST

/* The in-memory driver path (calib, --eval) ends in a loadable folder with the report lines. */
START_TEST(driver_in_memory_report) {
    char mha[1100], calib[200], val[200];
    if (!fixture_dir("tiny-llama-mha", mha, sizeof mha)) return;
    char tmp[64], out[128];
    tmpdir(tmp, sizeof tmp);
    if (!kjv_slice(tmp, "calib.txt", 0, 8000, calib, sizeof calib) ||
        !kjv_slice(tmp, "val.txt", -1, 3000, val, sizeof val)) {
        kvf_fs_remove_tree(tmp);
        return;
    }
    struct {
        kvf_convert_opts o;
        int kv, src0;
    } cases[3] = {{gqa_opts(2, "calib"), 2, 0}, {cla_opts(2, NULL, "calib"), 4, 1}, {cla_opts(2, NULL, "mean"), 4, 1}};
    for (int k = 0; k < 3; k++) {
        kvf_convert_opts o = cases[k].o;
        o.calib_path = calib;
        o.calib_tokens = 1024;
        o.calib_seq_len = 128;
        o.eval_path = val;
        o.eval_tokens = 600;
        o.eval_seq_len = 64;
        snprintf(out, sizeof out, "%s/out%d", tmp, k);
        char *log;
        ck_assert_msg(run_driver(mha, out, &o, &log) == KVF_OK, "%s", kvf_error_message());
        ck_assert_msg(!strstr(log, "streaming"), "%s", log);
        ck_assert_msg(strstr(log, "KV cache: 512 → 256 bytes per token (50.0% less)"), "%s", log);
        ck_assert_msg(strstr(log, "val loss: before ") && strstr(log, " → after "), "%s", log);
        free(log);
        kvf_model *m = kvf_checkpoint_load(out, KVF_DEVICE_CPU);
        ck_assert_msg(m != NULL, "%s", kvf_error_message());
        ck_assert_int_eq(m->cfg.n_kv_heads, cases[k].kv);
        ck_assert_int_eq(m->cfg.kv_source[1], cases[k].src0 ? 0 : 1);
        kvf_model_free(m);
        char tokp[260];
        snprintf(tokp, sizeof tokp, "%s/tokenizer.json", out);
        ck_assert(exists(tokp));
    }
    no_temp_left(tmp, "out0");
    kvf_fs_remove_tree(tmp);
}
END_TEST

int main(void) {
    /* the models here are tiny: a parallel region costs more than it saves, and on a shared
     * machine waiting threads multiply the run time (thread counts are tested in test_ops_*) */
    omp_set_num_threads(1);
    Suite *s = suite_create("convert");
    TCase *tc = tcase_create("convert");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, gqa_mean_and_first_match_naive);
    tcase_add_test(tc, mqa_is_gqa_one);
    tcase_add_test(tc, gqa_random_seeded);
    tcase_add_test(tc, gqa_same_count_is_identity);
    tcase_add_test(tc, gqa_related_heads_exact);
    tcase_add_test(tc, gqa_fixture_gqa_source);
    tcase_add_test(tc, gqa_calib_beats_mean_fixture);
    tcase_add_test(tc, cla_producer_keeps_weights);
    tcase_add_test(tc, cla_mean_matches_naive);
    tcase_add_test(tc, cla_shared_inputs_exact);
    tcase_add_test(tc, cla_chained_with_gqa);
    tcase_add_test(tc, cla_producer_lists);
    tcase_add_test(tc, convert_save_load);
    tcase_add_test(tc, stream_equals_in_memory);
    tcase_add_test(tc, driver_errors);
    tcase_add_test(tc, driver_out_folder);
    tcase_add_test(tc, driver_in_memory_report);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
