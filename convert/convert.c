/* convert.c — the `kvforge convert` driver (convert.h): options, validation up front, the
 * streaming path for conversions that need no data (stream.c), the in-memory path (load,
 * calibrate, convert, evaluate), the KV-cache report, and the atomic output folder: all files
 * are written into a hidden temp folder beside DST that is renamed to DST at the very end; any
 * failure removes it, so DST either does not exist or is complete. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "convert_impl.h"
#include "linalg.h"
#include "data/corpus.h"
#include "data/tokenizer_load.h"
#include "model/checkpoint.h"
#include "model/hf_config.h"
#include "model/safetensors.h"
#include "train/eval.h"
#include "data/fsutil.h"

#define SHARD_BYTES ((uint64_t)5000000000ull)

void kvf_convert_opts_defaults(kvf_convert_opts *o) {
    memset(o, 0, sizeof *o);
    o->to = KVF_CONVERT_GQA;
    o->rope_dim = 0;
    o->freqfold = 0; /* deepseek: head_dim / rope_dim (exact RoRoPE per kept pair) */
    o->calib_tokens = 65536;
    o->calib_seq_len = 256;
    o->eval_seq_len = 0; /* min(max_seq_len, 1024) */
    o->eval_tokens = 0;
    o->device = KVF_DEVICE_CPU;
    o->seed = 0;
    o->save_dtype = KVF_DTYPE_F32;
}

static const char *target_name(enum kvf_convert_target t) {
    switch (t) {
    case KVF_CONVERT_GQA: return "gqa";
    case KVF_CONVERT_MQA: return "mqa";
    case KVF_CONVERT_MLA: return "mla";
    case KVF_CONVERT_CLA: return "cla";
    }
    return "?";
}

static bool is_partial(const kvf_convert_opts *o) { return !strcmp(o->style, "partial-rope"); }

bool kvf_convert_needs_calib(const kvf_convert_opts *o) {
    switch (o->to) {
    case KVF_CONVERT_GQA:
    case KVF_CONVERT_MQA:
    case KVF_CONVERT_CLA: return !strcmp(o->method, "calib");
    case KVF_CONVERT_MLA:
        if (!is_partial(o)) return true; /* RoRoPE and the joint K/V PCA use activations */
        /* partial-rope ranks frequencies by calibration norms unless told which to keep */
        return (!o->rope_select[0] || !strcmp(o->rope_select, "norm")) && o->rope_dim != -1 && o->rope_dim != 0;
    }
    return false;
}

/* With the source's config: partial-rope keeping every dimension needs no ranking. */
static bool needs_calib_for(const kvf_convert_opts *o, const kvf_model_config *c) {
    if (o->to == KVF_CONVERT_MLA && is_partial(o) && o->rope_dim >= c->head_dim) return false;
    return kvf_convert_needs_calib(o);
}

/* ============================================================================================
 * validation
 * ========================================================================================== */

static kvf_status check_opts(const kvf_convert_opts *o) {
    switch (o->to) {
    case KVF_CONVERT_GQA:
    case KVF_CONVERT_MQA:
    case KVF_CONVERT_CLA:
    case KVF_CONVERT_MLA: break;
    default: return kvf_error_set(KVF_ERR_ARG, "--to: unknown conversion target %d", (int)o->to);
    }
    if (o->to == KVF_CONVERT_MLA) {
        KVF_CHECK(!o->style[0] || !strcmp(o->style, "deepseek") || is_partial(o), KVF_ERR_ARG,
                  "--style %s: expected deepseek or partial-rope", o->style);
        KVF_CHECK(!o->method[0], KVF_ERR_ARG, "--method %s: --to mla has no --method (see --style)", o->method);
        KVF_CHECK(o->kv_rank >= 1, KVF_ERR_ARG, "--to mla needs --kv-rank R (the cached latent width, >= 1)");
        KVF_CHECK(o->q_rank >= 0, KVF_ERR_ARG, "--q-rank %d must be >= 0", o->q_rank);
        KVF_CHECK(o->freqfold >= 0, KVF_ERR_ARG, "--freqfold %d must be >= 1", o->freqfold);
        KVF_CHECK(!o->rope_select[0] || !strcmp(o->rope_select, "norm") || !strcmp(o->rope_select, "high") ||
                      !strcmp(o->rope_select, "low") || !strcmp(o->rope_select, "uniform"),
                  KVF_ERR_ARG, "--rope-select %s: expected norm, high, low or uniform", o->rope_select);
    } else {
        KVF_CHECK(o->kv_rank == 0 && o->q_rank == 0 && !o->style[0] && !o->rope_select[0], KVF_ERR_ARG,
                  "--kv-rank, --q-rank, --style and --rope-select are --to mla options, not --to %s",
                  target_name(o->to));
    }
    if (o->to != KVF_CONVERT_CLA)
        KVF_CHECK(o->share == 0 && !o->producers[0], KVF_ERR_ARG,
                  "--share and --producers are --to cla options, not --to %s", target_name(o->to));
    if (o->to != KVF_CONVERT_GQA && o->to != KVF_CONVERT_MQA)
        KVF_CHECK(o->kv_heads == 0, KVF_ERR_ARG, "--kv-heads is a --to gqa option, not --to %s", target_name(o->to));
    KVF_CHECK(o->save_dtype == KVF_DTYPE_F32 || o->save_dtype == KVF_DTYPE_BF16 || o->save_dtype == KVF_DTYPE_F16 ||
                  o->save_dtype == KVF_DTYPE_F64 || o->save_dtype == KVF_DTYPE_COUNT,
              KVF_ERR_ARG, "--dtype: weights are written as f32, bf16, f16 or f64");
    KVF_CHECK(o->calib_tokens >= 0 && o->calib_seq_len >= 0 && o->eval_seq_len >= 0 && o->eval_tokens >= 0,
              KVF_ERR_ARG, "--calib-tokens, --seq-len and --eval-tokens must not be negative");
    KVF_CHECK(o->device == KVF_DEVICE_CPU || o->device == KVF_DEVICE_CUDA, KVF_ERR_ARG, "--device: cpu or cuda");
    return KVF_OK;
}

/* Checks that need the source's config, before any weight is read. */
static kvf_status check_against(const kvf_convert_opts *o, const kvf_model_config *c, kvf_model_config *nc) {
    *nc = *c;
    switch (o->to) {
    case KVF_CONVERT_GQA:
    case KVF_CONVERT_MQA: {
        int kv;
        KVF_TRY(kvf_cv_check_gqa(c, o, &kv, false));
        nc->n_kv_heads = kv;
        break;
    }
    case KVF_CONVERT_CLA: {
        int P[KVF_MAX_LAYERS], np = 0, ks[KVF_MAX_LAYERS];
        KVF_TRY(kvf_cv_cla_producers(c, o, P, &np));
        KVF_TRY(kvf_cv_cla_sources(c, P, np, ks));
        bool same = true;
        for (int l = 0; l < c->n_layers; l++) same = same && ks[l] == c->kv_source[l];
        KVF_CHECK(!same, KVF_ERR_ARG,
                  "--to cla: the source already shares K/V exactly this way (%d producers of %d layers); nothing "
                  "to convert",
                  np, c->n_layers);
        memcpy(nc->kv_source, ks, sizeof ks);
        break;
    }
    case KVF_CONVERT_MLA:
        KVF_CHECK(c->attn == KVF_ATTN_STANDARD, KVF_ERR_UNSUPPORTED,
                  "--to mla: the source already uses %s attention; convert an MHA/GQA model",
                  c->attn == KVF_ATTN_MLA ? "MLA" : "partial-RoPE MLA");
        KVF_CHECK(o->rope_dim == -1 || o->rope_dim >= 0, KVF_ERR_ARG, "--rope-dim %d: expected D >= 0 or all",
                  o->rope_dim);
        KVF_CHECK(c->pos == KVF_POS_ROPE, KVF_ERR_UNSUPPORTED,
                  "--to mla: the source has no RoPE (learned or no positions); the MLA conversions keep RoPE "
                  "dimensions");
        KVF_TRY(kvf_mla_check_opts(c, o)); /* ranks, RoPE width, FreqFold, biases: before any weight is read */
        break;
    }
    KVF_CHECK(!needs_calib_for(o, c) || o->calib_path, KVF_ERR_ARG,
              "--to %s%s%s needs calibration text: --calib PATH", target_name(o->to),
              o->to == KVF_CONVERT_MLA ? " --style " : " --method ",
              o->to == KVF_CONVERT_MLA ? (o->style[0] ? o->style : "deepseek") : o->method);
    return KVF_OK;
}

/* ============================================================================================
 * the output folder
 * ========================================================================================== */

struct out_dir {
    char *dst;  /* as given */
    char *tmp;  /* "<parent>/.<base>.convert.<pid>.<n>", created */
    bool dst_exists;
};

static kvf_status out_begin(const char *dst, struct out_dir *od) {
    memset(od, 0, sizeof *od);
    struct stat st;
    if (stat(dst, &st) == 0) {
        KVF_CHECK(S_ISDIR(st.st_mode), KVF_ERR_IO, "--out %s: exists and is not a folder", dst);
        DIR *dp = opendir(dst);
        KVF_CHECK(dp, KVF_ERR_IO, "--out %s: cannot read the folder: %s", dst, strerror(errno));
        struct dirent *de;
        bool empty = true;
        while ((de = readdir(dp)))
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) empty = false;
        closedir(dp);
        KVF_CHECK(empty, KVF_ERR_IO,
                  "--out %s: the folder exists and is not empty; refusing to overwrite it (choose a new folder "
                  "or remove it first)",
                  dst);
        od->dst_exists = true;
    } else if (errno != ENOENT) {
        return kvf_error_set(KVF_ERR_IO, "--out %s: %s", dst, strerror(errno));
    }
    size_t n = strlen(dst);
    char *copy = strdup(dst);
    KVF_CHECK(copy, KVF_ERR_OOM, "convert: out of memory");
    while (n > 1 && copy[n - 1] == '/') copy[--n] = '\0';
    char *slash = strrchr(copy, '/');
    const char *base = slash ? slash + 1 : copy;
    char parent[PATH_MAX];
    if (!slash) snprintf(parent, sizeof parent, ".");
    else if (slash == copy) snprintf(parent, sizeof parent, "/");
    else snprintf(parent, sizeof parent, "%.*s", (int)(slash - copy), copy);
    if (!*base || !strcmp(base, ".") || !strcmp(base, "..")) {
        free(copy);
        return kvf_error_set(KVF_ERR_ARG, "--out %s: name the output folder itself", dst);
    }
    if (stat(parent, &st) != 0 || !S_ISDIR(st.st_mode)) {
        free(copy);
        return kvf_error_set(KVF_ERR_IO, "--out %s: the parent folder %s does not exist", dst, parent);
    }
    static unsigned counter;
    size_t len = strlen(parent) + strlen(base) + 64;
    od->tmp = malloc(len);
    od->dst = strdup(dst);
    if (!od->tmp || !od->dst) {
        free(copy);
        return kvf_error_set(KVF_ERR_OOM, "convert: out of memory");
    }
    for (int tries = 0;; tries++) {
        snprintf(od->tmp, len, "%s/.%s.convert.%ld.%u", parent, base, (long)getpid(), counter++);
        if (mkdir(od->tmp, 0777) == 0) break;
        if (errno != EEXIST || tries > 1000) {
            kvf_status s = kvf_error_set(KVF_ERR_IO, "--out %s: cannot create a temp folder in %s: %s", dst, parent,
                                         strerror(errno));
            free(copy);
            free(od->tmp);
            od->tmp = NULL;
            return s;
        }
    }
    free(copy);
    return KVF_OK;
}

static void out_abort(struct out_dir *od) {
    if (od->tmp) kvf_fs_remove_tree(od->tmp);
    free(od->tmp);
    free(od->dst);
    memset(od, 0, sizeof *od);
}

static kvf_status out_commit(struct out_dir *od) {
    /* rename onto a missing or empty folder is atomic */
    if (rename(od->tmp, od->dst) != 0)
        return kvf_error_set(KVF_ERR_IO, "--out %s: cannot move the finished %s into place: %s", od->dst, od->tmp,
                             strerror(errno));
    free(od->tmp);
    od->tmp = NULL;
    return KVF_OK;
}

/* The tokenizer and the small HF side files of src, when present. */
static kvf_status copy_side_files(const char *src, const char *dir, FILE *log) {
    char p[PATH_MAX];
    bool tok = false;
    for (int i = 0; i < 2 && !tok; i++) {
        snprintf(p, sizeof p, "%s/%s", src, i ? "kvforge_tokenizer.json" : "tokenizer.json");
        tok = access(p, F_OK) == 0;
    }
    if (tok) KVF_TRY(kvf_tokenizer_save_spec(src, dir));
    else if (log) fprintf(log, "note: %s has no tokenizer.json; none copied\n", src);
    static const char *const side[] = {"tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                                       "tokenizer.model"};
    for (size_t i = 0; i < sizeof side / sizeof *side; i++) {
        snprintf(p, sizeof p, "%s/%s", src, side[i]);
        if (access(p, F_OK) == 0) KVF_TRY(kvf_fs_copy_file(p, dir, side[i]));
    }
    return KVF_OK;
}

/* ============================================================================================
 * data
 * ========================================================================================== */

static kvf_status read_tokens(const char *path, const kvf_tokenizer *tok, int64_t max_tokens, kvf_token_stream *ts,
                              const char *flag) {
    KVF_CHECK(tok, KVF_ERR_ARG, "%s %s: the source folder has no tokenizer to read text with", flag, path);
    kvf_corpus_opts co = {.tok = tok, .max_tokens = max_tokens};
    KVF_TRY(kvf_corpus_read(path, &co, ts));
    KVF_CHECK(ts->count >= 2, KVF_ERR_ARG, "%s %s: only %lld tokens", flag, path, (long long)ts->count);
    return KVF_OK;
}

static kvf_status evaluate(kvf_model *m, const kvf_token_stream *ts, const kvf_convert_opts *o, kvf_eval_result *r) {
    int64_t W = o->eval_seq_len ? o->eval_seq_len : (m->cfg.max_seq_len < 1024 ? m->cfg.max_seq_len : 1024);
    if (W > m->cfg.max_seq_len) W = m->cfg.max_seq_len;
    kvf_ctx *ctx = kvf_ctx_init(m->device);
    KVF_CHECK(ctx, kvf_error_code() ? kvf_error_code() : KVF_ERR_OOM, "convert: cannot create an evaluation context");
    kvf_status s = kvf_eval_stream(m, ctx, ts->data, ts->count, W, o->eval_tokens, 8, r);
    kvf_ctx_free(ctx);
    return s;
}

static void report_kv(FILE *log, const kvf_model_config *a, const kvf_model_config *b) {
    if (!log) return;
    int64_t x = kvf_model_kv_bytes_per_token(a), y = kvf_model_kv_bytes_per_token(b);
    fprintf(log, "KV cache: %lld → %lld bytes per token (%.1f%% less)\n", (long long)x, (long long)y,
            x > 0 ? 100.0 * (double)(x - y) / (double)x : 0.0);
}

/* ============================================================================================
 * the driver
 * ========================================================================================== */

static kvf_dtype source_dtype(const char *src_dir) {
    kvf_st_dir *d = kvf_st_dir_open(src_dir);
    if (!d) {
        kvf_error_clear();
        return KVF_DTYPE_F32;
    }
    kvf_dtype t = KVF_DTYPE_F32;
    const kvf_st_tensor *e = kvf_st_dir_find(d, "model.embed_tokens.weight");
    if (!e) e = kvf_st_dir_count(d) ? kvf_st_dir_tensor(d, 0) : NULL;
    if (e && kvf_dtype_is_float(e->dtype)) t = e->dtype;
    kvf_st_dir_close(d);
    return t;
}

/* --to cla --method calib: the producer-anchored fit and the alternating least-squares fit
 * each win on some models (docs/conversions.md); convert with both and keep the one with the
 * lower loss on up to 16384 calibration-file tokens held out from the statistics. */
static kvf_model *cla_calib_select(const kvf_model *src, const kvf_convert_opts *o, const kvf_calib *calib,
                                   const kvf_token_stream *ts, FILE *log) {
    struct kvf_cv_cla_tuning t[2];
    kvf_cv_cla_tuning_defaults(&t[0]);
    t[1] = t[0];
    t[1].init_producer = false;
    t[1].iters = 3;
    static const char *const label[2] = {"producer-anchored", "alternating least squares"};
    kvf_model *best = NULL;
    double best_loss = 0;
    int64_t T = o->calib_seq_len ? o->calib_seq_len : 256;
    if (T > src->cfg.max_seq_len) T = src->cfg.max_seq_len;
    for (int i = 0; i < 2; i++) {
        kvf_model *m = kvf_cv_cla_tuned(src, o, calib, &t[i], log);
        if (!m) {
            kvf_model_free(best);
            return NULL;
        }
        kvf_convert_opts eo = *o;
        eo.eval_seq_len = T;
        eo.eval_tokens = 16384;
        /* held out: the calibration file's tokens after those calibrated on, when there are
         * enough of them (else the calibration tokens themselves) */
        kvf_token_stream held = *ts;
        int64_t used = calib->tokens + 1;
        if (ts->count - used > 4 * T) {
            held.data = ts->data + used;
            held.count = ts->count - used;
        }
        kvf_eval_result r;
        if (evaluate(m, &held, &eo, &r) != KVF_OK) {
            kvf_model_free(m);
            kvf_model_free(best);
            return NULL;
        }
        if (log) fprintf(log, "cla calib (%s): calibration loss %.4f\n", label[i], r.loss);
        if (!best || r.loss < best_loss) {
            kvf_model_free(best);
            best = m;
            best_loss = r.loss;
        } else {
            kvf_model_free(m);
        }
    }
    if (log) fprintf(log, "cla calib: keeping the fit with calibration loss %.4f\n", best_loss);
    return best;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* --device cuda: the factorisations go to cuSOLVER / cuBLAS too (linalg.h), for problems of
 * at least KVF_LINALG_GPU_MIN_FLOPS, or $KVF_LINALG_GPU_MIN_FLOPS (0: all of them, as the GPU
 * tests do). */
static kvf_status linalg_begin(const kvf_convert_opts *o, FILE *log) {
    if (o->device == KVF_DEVICE_CPU) return KVF_OK;
    const char *e = getenv("KVF_LINALG_GPU_MIN_FLOPS");
    char *end = NULL;
    double min_flops = e && *e ? strtod(e, &end) : -1;
    KVF_CHECK(!e || !*e || (end && !*end && min_flops >= 0), KVF_ERR_ARG,
              "KVF_LINALG_GPU_MIN_FLOPS=%s: expected a number >= 0", e);
    KVF_TRY(kvf_linalg_set_device(o->device, min_flops));
    if (log) {
        fprintf(log, "factorisations: eigh / SVD / dgemm in f64 on %s (cuSOLVER, cuBLAS) from %.0e flops, smaller ones "
                     "on the CPU\n",
                kvf_device_name(o->device), min_flops < 0 ? KVF_LINALG_GPU_MIN_FLOPS : min_flops);
        fflush(log);
    }
    return KVF_OK;
}

static void linalg_end(const kvf_convert_opts *o, double seconds, FILE *log) {
    struct kvf_linalg_counts n = kvf_linalg_device_counts();
    const char *failed = o->device == KVF_DEVICE_CPU ? NULL : kvf_linalg_take_failure();
    if (o->device != KVF_DEVICE_CPU) kvf_linalg_set_device(KVF_DEVICE_CPU, -1);
    if (!log) return;
    if (o->device == KVF_DEVICE_CPU) {
        fprintf(log, "factorisations: %.1f s on the cpu\n", seconds);
        return;
    }
    fprintf(log, "factorisations: %.1f s; on %s: %ld eigh, %ld SVD, %ld dgemm\n", seconds,
            kvf_device_name(o->device), n.eigh, n.svd, n.dgemm);
    if (failed)
        fprintf(log, "note: a dgemm failed on %s and was redone on the CPU: %s\n", kvf_device_name(o->device),
                failed);
}

static kvf_status run_in_memory(const char *src_dir, const kvf_convert_opts *o, const kvf_model_config *c,
                                const kvf_model_config *nc, kvf_dtype dtype, const char *tmp, FILE *log) {
    kvf_tokenizer *tok = NULL;
    kvf_model *src = NULL, *dst = NULL;
    kvf_token_stream calib_ts = {0}, eval_ts = {0};
    kvf_calib calib = {0};
    kvf_eval_result before = {0}, after = {0};
    bool need_calib = needs_calib_for(o, c);
    kvf_status s = KVF_OK;
    if (need_calib || o->eval_path) {
        tok = kvf_tokenizer_open(src_dir);
        if (!tok) s = kvf_error_code();
    }
    /* cla calib also keeps 16384 tokens after the calibration tokens to choose its fit on */
    int64_t extra = o->to == KVF_CONVERT_CLA ? 16384 : 0;
    if (s == KVF_OK && need_calib)
        s = read_tokens(o->calib_path, tok, o->calib_tokens ? o->calib_tokens + 1 + extra : 0, &calib_ts, "--calib");
    if (s == KVF_OK && o->eval_path) s = read_tokens(o->eval_path, tok, o->eval_tokens, &eval_ts, "--eval");
    if (s == KVF_OK && !(src = kvf_checkpoint_load(src_dir, o->device))) s = kvf_error_code();
    if (s == KVF_OK && log)
        fprintf(log, "loaded %s: %d layers, %d query heads, %d KV heads, d_model %lld\n", src_dir, c->n_layers,
                c->n_q_heads, c->n_kv_heads, (long long)c->d_model);
    if (s == KVF_OK && need_calib) {
        double t0 = now_s();
        int64_t T = o->calib_seq_len ? o->calib_seq_len : 256;
        if (o->to == KVF_CONVERT_CLA) {
            int partner[KVF_MAX_LAYERS];
            for (int l = 0; l < c->n_layers; l++)
                partner[l] = kvf_model_is_producer(c, l) && nc->kv_source[l] != l ? nc->kv_source[l] : -1;
            s = kvf_calib_collect_cross(src, calib_ts.data, calib_ts.count, T, o->calib_tokens, partner, &calib, log);
        } else {
            s = kvf_calib_collect(src, calib_ts.data, calib_ts.count, T, o->calib_tokens, &calib, log);
        }
        if (s == KVF_OK && log)
            fprintf(log, "calibration: %lld tokens from %s (windows of %lld, %.1f s on %s)\n", (long long)calib.tokens,
                    o->calib_path, (long long)(T < c->max_seq_len ? T : c->max_seq_len), now_s() - t0,
                    kvf_device_name(src->device));
    }
    if (s == KVF_OK && o->eval_path) s = evaluate(src, &eval_ts, o, &before);
    double t_fact = now_s();
    bool linalg_set = false;
    if (s == KVF_OK) linalg_set = (s = linalg_begin(o, log)) == KVF_OK;
    if (s == KVF_OK) {
        const kvf_calib *cp = need_calib ? &calib : NULL;
        switch (o->to) {
        case KVF_CONVERT_GQA:
        case KVF_CONVERT_MQA: dst = kvf_convert_gqa(src, o, cp, log); break;
        case KVF_CONVERT_CLA:
            if (cp) dst = cla_calib_select(src, o, cp, &calib_ts, log);
            else dst = kvf_convert_cla(src, o, cp, log);
            break;
        case KVF_CONVERT_MLA:
            dst = is_partial(o) ? kvf_convert_mla_partial(src, o, cp, log) : kvf_convert_mla_deepseek(src, o, cp, log);
            break;
        }
        if (!dst) s = kvf_error_code() ? kvf_error_code() : kvf_error_set(KVF_ERR_STATE, "convert: conversion failed");
    }
    if (linalg_set) linalg_end(o, now_s() - t_fact, s == KVF_OK ? log : NULL);
    kvf_calib_free(&calib);
    if (s == KVF_OK) report_kv(log, c, &dst->cfg);
    if (s == KVF_OK && o->eval_path) {
        s = evaluate(dst, &eval_ts, o, &after);
        if (s == KVF_OK && log)
            fprintf(log, "val loss: before %.4f (ppl %.2f) → after %.4f (ppl %.2f) on %lld tokens of %s\n", before.loss,
                    before.ppl, after.loss, after.ppl, (long long)after.tokens, o->eval_path);
    }
    if (s == KVF_OK) s = kvf_checkpoint_save(dst, tmp, dtype, SHARD_BYTES);
    kvf_model_free(src);
    kvf_model_free(dst);
    kvf_ids_free(&calib_ts);
    kvf_ids_free(&eval_ts);
    kvf_tokenizer_free(tok);
    return s;
}

kvf_status kvf_convert_run(const char *src_dir, const char *dst_dir, const kvf_convert_opts *o, FILE *log) {
    KVF_CHECK(src_dir && dst_dir && o, KVF_ERR_ARG, "kvf_convert_run: NULL argument");
    kvf_convert_opts oo = *o;
    if (!oo.method[0] && oo.to != KVF_CONVERT_MLA)
        snprintf(oo.method, sizeof oo.method, "%s", oo.to == KVF_CONVERT_CLA ? "producer" : "mean");
    if (oo.to == KVF_CONVERT_MLA && !oo.style[0]) snprintf(oo.style, sizeof oo.style, "deepseek");
    KVF_TRY(check_opts(&oo));
    struct stat st;
    KVF_CHECK(stat(src_dir, &st) == 0 && S_ISDIR(st.st_mode), KVF_ERR_IO, "--model %s: no such model folder", src_dir);
    kvf_model_config c, nc;
    kvf_hf_arch arch;
    KVF_TRY(kvf_hf_config_read_arch(src_dir, &c, &arch));
    KVF_TRY(check_against(&oo, &c, &nc));
    if (oo.calib_path && needs_calib_for(&oo, &c))
        KVF_CHECK(access(oo.calib_path, R_OK) == 0, KVF_ERR_IO, "--calib %s: %s", oo.calib_path, strerror(errno));
    if (oo.eval_path) KVF_CHECK(access(oo.eval_path, R_OK) == 0, KVF_ERR_IO, "--eval %s: %s", oo.eval_path, strerror(errno));
    kvf_dtype dtype = oo.save_dtype == KVF_DTYPE_COUNT ? source_dtype(src_dir) : oo.save_dtype;
    /* the DeepSeek form folds the latent RMSNorm into weights scaled near 1e-6 (docs/conversions.md),
     * below f16's normal range: f16 would flush part of them to zero */
    if (oo.to == KVF_CONVERT_MLA && !is_partial(&oo) && dtype == KVF_DTYPE_F16) {
        return kvf_error_set(KVF_ERR_ARG, "--to mla --style deepseek cannot write f16 weights (the folded latent norm scales "
                             "weights to ~1e-6, below f16's range): use --dtype bf16 or f32");
    }
    struct out_dir od;
    KVF_TRY(out_begin(dst_dir, &od));
    bool stream = !oo.eval_path && oo.device == KVF_DEVICE_CPU && kvf_cv_can_stream(&c, arch, &oo) &&
                  kvf_hf_config_arch(&nc) != KVF_HF_GPT2;
    if (log)
        fprintf(log, "convert %s (%s) → %s: --to %s%s%s%s\n", src_dir, kvf_hf_arch_name(arch), dst_dir,
                target_name(oo.to), oo.method[0] ? " --method " : "", oo.method,
                stream ? " (streaming tensor by tensor)" : "");
    kvf_status s;
    if (stream) {
        s = kvf_cv_stream(src_dir, &c, &nc, &oo, dtype, od.tmp, log);
        if (s == KVF_OK) report_kv(log, &c, &nc);
    } else {
        s = run_in_memory(src_dir, &oo, &c, &nc, dtype, od.tmp, log);
    }
    if (s == KVF_OK) s = copy_side_files(src_dir, od.tmp, log);
    if (s == KVF_OK) s = out_commit(&od);
    if (s == KVF_OK && log) fprintf(log, "saved %s (%s weights)\n", dst_dir, kvf_dtype_name(dtype));
    out_abort(&od);
    return s;
}
