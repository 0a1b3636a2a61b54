/* kvf_make_random OUT [options] — writes a Hugging Face Llama checkpoint (config.json and
 * safetensors weights) with random weights of a given shape, by default Llama-2-7B's
 * (32 layers, hidden 4096, 32 heads, 32 KV heads, intermediate 11008, vocab 32000, bf16).
 * It exists to test kvforge at real model sizes without downloading one: e.g. that
 * `kvforge convert` streams a 7B checkpoint with a resident set far below its size.
 *
 * Weights are N(0, 0.02) (GPT-2/Llama-style init), norms 1. They are generated and written
 * one tensor at a time through the streaming safetensors writer, so memory stays at one
 * tensor (the largest is the embedding: vocab × hidden). Values come from kvforge's RNG
 * (xoshiro256**, autograd/rng.h) seeded per (seed, tensor name, chunk): the output is the
 * same for any number of threads, and a tensor's values do not depend on the other tensors
 * (layer 0 of a 2-layer model equals layer 0 of a 32-layer one with the same seed). The
 * Box–Muller transform uses glibc's vector math, so another glibc may round a rare value
 * differently in the last bit.
 *
 * Atomic: everything is written into a hidden temp folder beside OUT that is renamed to OUT
 * at the end; a failure, a full disk or Ctrl-C removes it, so OUT is either absent or
 * complete. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "autograd/rng.h"
#include "convert/convert_impl.h"
#include "data/fsutil.h"
#include "model/hf_config.h"
#include "model/safetensors.h"

#define CHUNK ((int64_t)1 << 16) /* elements per RNG stream: the unit of parallel work */

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) { interrupted = sig; }

static void usage(FILE *f) {
    fprintf(f,
            "usage: kvf_make_random OUT [options]\n"
            "Writes a random-weight Hugging Face Llama checkpoint (config.json + safetensors) to the new\n"
            "folder OUT. Defaults are Llama-2-7B's shape.\n"
            "  --layers N          decoder layers (32)\n"
            "  --hidden D          hidden size (4096)\n"
            "  --heads H           attention heads (32)\n"
            "  --kv-heads K        key/value heads (as many as --heads; fewer: GQA)\n"
            "  --ffn F             MLP intermediate size (11008)\n"
            "  --vocab V           vocabulary size (32000)\n"
            "  --max-seq-len T     max_position_embeddings (4096)\n"
            "  --dtype f32|bf16    weight dtype (bf16)\n"
            "  --seed S            RNG seed (0)\n"
            "  --max-shard-bytes B largest shard's tensor data (5000000000, HF's \"5GB\")\n");
}

static bool parse_i64(const char *flag, const char *s, int64_t min, int64_t max, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) {
        fprintf(stderr, "kvf_make_random: %s '%s': expected an integer in %" PRId64 "..%" PRId64 "\n", flag, s, min,
                max);
        return false;
    }
    *out = v;
    return true;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* FNV-1a: the tensor name's part of its RNG seed. */
static uint64_t hash_name(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static bool is_norm(const char *name) { return strstr(name, "norm.weight") != NULL; }

/* Fills buf (numel elements of dtype) with N(0, std) — chunk c from its own generator seeded
 * by (seed, name, c), Box–Muller using both values of each pair — or with ones for norms.
 * The uniforms are drawn first and transformed in a separate loop that the compiler
 * vectorises (glibc's vector log/sin/cos; this file is built with -ffast-math for that):
 * 4× faster than a kvf_rng_normal per value, which cost minutes of CPU for a 7B checkpoint.
 * scratch: 1.5 CHUNK doubles per OpenMP thread. */
static void fill(void *buf, kvf_dtype dtype, int64_t numel, const char *name, uint64_t seed, double std,
                 double *scratch) {
    bool ones = is_norm(name);
    uint64_t base = seed * 0x9e3779b97f4a7c15ull ^ hash_name(name);
    int64_t n_chunks = (numel + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < n_chunks; c++) {
        double *a = scratch + (size_t)omp_get_thread_num() * 3 * (CHUNK / 2), *b = a + CHUNK / 2, *e = b + CHUNK / 2;
        int64_t lo = c * CHUNK, m = lo + CHUNK < numel ? CHUNK : numel - lo, h = (m + 1) / 2;
        if (ones) {
            for (int64_t j = 0; j < h; j++) a[j] = e[j] = 1.0;
        } else {
            kvf_rng r;
            kvf_rng_init(&r, base + (uint64_t)c * 0xbf58476d1ce4e5b9ull);
            for (int64_t j = 0; j < h; j++) {
                a[j] = kvf_rng_uniform(&r);
                b[j] = kvf_rng_uniform(&r);
            }
            /* three loops, not one: GCC fuses sin and cos of one angle into a scalar sincos
             * call, which it cannot vectorise */
            for (int64_t j = 0; j < h; j++) a[j] = std * sqrt(-2.0 * log(1.0 - a[j]));
            for (int64_t j = 0; j < h; j++) e[j] = a[j] * sin(2.0 * M_PI * b[j]);
            for (int64_t j = 0; j < h; j++) a[j] = a[j] * cos(2.0 * M_PI * b[j]);
        }
        for (int64_t j = 0; j < m; j++) {
            float x = (float)((j & 1) ? e[j / 2] : a[j / 2]);
            if (dtype == KVF_DTYPE_BF16) ((uint16_t *)buf)[lo + j] = kvf_f32_to_bf16(x);
            else ((float *)buf)[lo + j] = x;
        }
    }
}

/* OUT must not exist or be an empty folder; its parent must exist. parent receives it. */
static bool check_out(const char *out, char *parent, size_t n, const char **base) {
    struct stat st;
    if (stat(out, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) {
            fprintf(stderr, "kvf_make_random: %s: exists and is not a folder\n", out);
            return false;
        }
        DIR *dp = opendir(out);
        struct dirent *de;
        bool empty = dp != NULL;
        while (dp && (de = readdir(dp)))
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) empty = false;
        if (dp) closedir(dp);
        if (!empty) {
            fprintf(stderr, "kvf_make_random: %s: the folder exists and is not empty; refusing to overwrite it\n",
                    out);
            return false;
        }
    } else if (errno != ENOENT) {
        fprintf(stderr, "kvf_make_random: %s: %s\n", out, strerror(errno));
        return false;
    }
    const char *slash = strrchr(out, '/');
    *base = slash ? slash + 1 : out;
    if (!slash) snprintf(parent, n, ".");
    else if (slash == out) snprintf(parent, n, "/");
    else snprintf(parent, n, "%.*s", (int)(slash - out), out);
    if (!**base || !strcmp(*base, ".") || !strcmp(*base, "..")) {
        fprintf(stderr, "kvf_make_random: %s: name the output folder itself\n", out);
        return false;
    }
    if (stat(parent, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "kvf_make_random: %s: the parent folder %s does not exist\n", out, parent);
        return false;
    }
    return true;
}

/* Writes config.json and the weights into tmp (an existing folder). */
static kvf_status make(const kvf_model_config *c, kvf_dtype dtype, uint64_t seed, uint64_t shard_bytes,
                       const char *tmp, const char *parent) {
    int cap = 32 * (c->n_layers + 2);
    struct kvf_cv_param *list = malloc(sizeof *list * (size_t)cap);
    KVF_CHECK(list, KVF_ERR_OOM, "kvf_make_random: out of memory");
    int n = kvf_cv_param_list(c, list, cap);
    kvf_st_writer *w = n >= 0 ? kvf_st_writer_init() : NULL;
    kvf_st_stream *st = NULL;
    void *buf = NULL;
    double *scratch = NULL;
    kvf_status s = w ? KVF_OK : kvf_error_code();
    int64_t max_numel = 1;
    for (int i = 0; s == KVF_OK && i < n; i++) {
        s = kvf_st_writer_add_planned(w, list[i].name, dtype, list[i].ndim, list[i].shape);
        int64_t numel = list[i].shape[0] * (list[i].ndim > 1 ? list[i].shape[1] : 1);
        if (numel > max_numel) max_numel = numel;
    }
    uint64_t total = s == KVF_OK ? kvf_st_writer_data_bytes(w) : 0;
    /* a full disk would otherwise only show after minutes of writing */
    struct statvfs vfs;
    if (s == KVF_OK && statvfs(parent, &vfs) == 0) {
        uint64_t avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
        if (avail < total + ((uint64_t)16 << 20)) /* config.json, headers, metadata */
            s = kvf_error_set(KVF_ERR_IO, "%s: not enough disk space: the checkpoint needs %.2f GB, %.2f GB free",
                              parent, (double)total / 1e9, (double)avail / 1e9);
    }
    if (s == KVF_OK) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/config.json", tmp);
        s = kvf_hf_config_write(c, dtype, path);
    }
    if (s == KVF_OK && !(buf = malloc((size_t)max_numel * kvf_dtype_size(dtype))))
        s = kvf_error_set(KVF_ERR_OOM, "kvf_make_random: out of memory for a %.2f GB tensor",
                          (double)max_numel * (double)kvf_dtype_size(dtype) / 1e9);
    if (s == KVF_OK && !(scratch = malloc(sizeof(double) * 3 * (size_t)(CHUNK / 2) * (size_t)omp_get_max_threads())))
        s = kvf_error_set(KVF_ERR_OOM, "kvf_make_random: out of memory");
    if (s == KVF_OK && !(st = kvf_st_stream_begin(w, tmp, shard_bytes))) s = kvf_error_code();
    if (s == KVF_OK)
        printf("writing %d tensors (%.2f GB of %s, %lld parameters) with %d threads\n", n, (double)total / 1e9,
               kvf_st_dtype_name(dtype), (long long)kvf_model_n_params(c), omp_get_max_threads());
    fflush(stdout);
    double t0 = now(), t_gen = 0, t_put = 0;
    uint64_t written = 0;
    for (int i = 0; s == KVF_OK && i < n; i++) {
        if (interrupted) {
            s = kvf_error_set(KVF_ERR_IO, "interrupted by signal %d", (int)interrupted);
            break;
        }
        int64_t numel = list[i].shape[0] * (list[i].ndim > 1 ? list[i].shape[1] : 1);
        double ta = now();
        fill(buf, dtype, numel, list[i].name, seed, 0.02, scratch);
        double tb = now();
        s = kvf_st_stream_put(st, list[i].name, dtype, buf);
        t_gen += tb - ta;
        t_put += now() - tb;
        written += (uint64_t)numel * kvf_dtype_size(dtype);
        /* a line when a layer (or the embedding / head) is done */
        int l, l2;
        bool layer_end = sscanf(list[i].name, "model.layers.%d.", &l) == 1 &&
                         (i + 1 == n || sscanf(list[i + 1].name, "model.layers.%d.", &l2) != 1 || l2 != l);
        if (s == KVF_OK && layer_end) {
            printf("layer %d/%d written (%.1f s, %.2f GB)\n", l + 1, c->n_layers, now() - t0, (double)written / 1e9);
            fflush(stdout);
        }
    }
    if (s == KVF_OK) {
        s = kvf_st_stream_finish(st);
        st = NULL;
        if (s == KVF_OK)
            printf("weights synced to disk (%.1f s: %.1f s generating, %.1f s writing, %.1f s syncing)\n",
                   now() - t0, t_gen, t_put, now() - t0 - t_gen - t_put);
    }
    kvf_st_stream_abort(st);
    kvf_st_writer_free(w);
    free(buf);
    free(scratch);
    free(list);
    return s;
}

int main(int argc, char **argv) {
    enum { O_LAYERS = 256, O_HIDDEN, O_HEADS, O_KV_HEADS, O_FFN, O_VOCAB, O_SEQ, O_DTYPE, O_SEED, O_SHARD, O_HELP };
    static const struct option opts[] = {
        {"layers", required_argument, 0, O_LAYERS}, {"hidden", required_argument, 0, O_HIDDEN},
        {"heads", required_argument, 0, O_HEADS},   {"kv-heads", required_argument, 0, O_KV_HEADS},
        {"ffn", required_argument, 0, O_FFN},       {"vocab", required_argument, 0, O_VOCAB},
        {"max-seq-len", required_argument, 0, O_SEQ}, {"dtype", required_argument, 0, O_DTYPE},
        {"seed", required_argument, 0, O_SEED},     {"max-shard-bytes", required_argument, 0, O_SHARD},
        {"help", no_argument, 0, O_HELP},           {0, 0, 0, 0}};
    int64_t layers = 32, hidden = 4096, heads = 32, kv_heads = 0 /* = heads */, ffn = 11008, vocab = 32000, seq = 4096,
            seed = 0, shard = 5000000000ll;
    kvf_dtype dtype = KVF_DTYPE_BF16;
    opterr = 0;
    int ch;
    bool ok = true;
    while (ok && (ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case O_LAYERS: ok = parse_i64("--layers", optarg, 1, KVF_MAX_LAYERS, &layers); break;
        case O_HIDDEN: ok = parse_i64("--hidden", optarg, 1, 1 << 20, &hidden); break;
        case O_HEADS: ok = parse_i64("--heads", optarg, 1, KVF_MAX_HEADS, &heads); break;
        case O_KV_HEADS: ok = parse_i64("--kv-heads", optarg, 1, KVF_MAX_HEADS, &kv_heads); break;
        case O_FFN: ok = parse_i64("--ffn", optarg, 1, 1 << 22, &ffn); break;
        case O_VOCAB: ok = parse_i64("--vocab", optarg, 1, 1 << 24, &vocab); break;
        case O_SEQ: ok = parse_i64("--max-seq-len", optarg, 1, 1 << 24, &seq); break;
        case O_SEED: ok = parse_i64("--seed", optarg, 0, INT64_MAX, &seed); break;
        case O_SHARD: ok = parse_i64("--max-shard-bytes", optarg, 1, INT64_MAX, &shard); break;
        case O_DTYPE:
            if (!strcmp(optarg, "bf16")) dtype = KVF_DTYPE_BF16;
            else if (!strcmp(optarg, "f32")) dtype = KVF_DTYPE_F32;
            else {
                fprintf(stderr, "kvf_make_random: --dtype must be f32 or bf16, got '%s'\n", optarg);
                ok = false;
            }
            break;
        case 'h':
        case O_HELP: usage(stdout); return 0;
        default:
            fprintf(stderr, "kvf_make_random: unknown or incomplete option '%s'\n", argv[optind - 1]);
            ok = false;
        }
    }
    if (ok && optind != argc - 1) {
        fprintf(stderr, "kvf_make_random: expected one output folder, got %d arguments\n", argc - optind);
        ok = false;
    }
    if (!ok) {
        usage(stderr);
        return 2;
    }
    char out[PATH_MAX];
    snprintf(out, sizeof out, "%s", argv[optind]);
    for (size_t k = strlen(out); k > 1 && out[k - 1] == '/'; k--) out[k - 1] = '\0'; /* "dir/" names dir */

    kvf_model_config c;
    kvf_model_config_defaults(&c); /* Llama: RMSNorm eps 1e-5, SwiGLU, RoPE θ 10000, untied */
    c.n_layers = (int)layers;
    c.d_model = hidden;
    c.n_heads = (int)heads;
    c.n_kv_heads = (int)kv_heads;
    c.d_ff = ffn;
    c.vocab_size = vocab;
    c.max_seq_len = seq;
    if (kvf_model_config_resolve(&c) != KVF_OK) {
        fprintf(stderr, "kvf_make_random: %s\n", kvf_error_message());
        return 2;
    }
    if (kvf_hf_config_arch(&c) != KVF_HF_LLAMA) { /* cannot happen with these options; guards edits */
        fprintf(stderr, "kvf_make_random: this shape would not be written as LlamaForCausalLM\n");
        return 2;
    }

    char parent[PATH_MAX], tmp[PATH_MAX + 64];
    const char *base;
    if (!check_out(out, parent, sizeof parent, &base)) return 1;
    snprintf(tmp, sizeof tmp, "%s/.%s.make_random.%ld", parent, base, (long)getpid());
    if (mkdir(tmp, 0777) != 0) {
        fprintf(stderr, "kvf_make_random: %s: cannot create the temp folder %s: %s\n", out, tmp, strerror(errno));
        return 1;
    }
    /* Ctrl-C / kill stop between tensors so the temp folder is removed, not left behind */
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    double t0 = now();
    kvf_status s = make(&c, dtype, (uint64_t)seed, (uint64_t)shard, tmp, parent);
    if (s == KVF_OK && rename(tmp, out) != 0)
        s = kvf_error_set(KVF_ERR_IO, "%s: cannot move the finished %s into place: %s", out, tmp, strerror(errno));
    if (s != KVF_OK) {
        fprintf(stderr, "kvf_make_random: %s\n", kvf_error_message());
        kvf_fs_remove_tree(tmp);
        return 1;
    }
    printf("wrote %s: LlamaForCausalLM, %d layers, hidden %lld, %d heads, %d KV heads, ffn %lld, vocab %lld, %s "
           "(%.1f s)\n",
           out, c.n_layers, (long long)c.d_model, c.n_q_heads, c.n_kv_heads, (long long)c.d_ff,
           (long long)c.vocab_size, kvf_dtype_name(dtype), now() - t0);
    return 0;
}
