/* bench_recompute.c — what activation recomputation (run.recompute: blocks) saves: the
 * activation arena's peak bytes in use with and without it, on one forward + backward of
 * a Llama-style model at the shape of kvf_bench_train (d 768, 12 layers, 12 heads of 64,
 * SwiGLU 2048, vocab 50304, untied embeddings), and a check that loss and every gradient
 * are bit-for-bit the same. Runs on the CPU in f32 (or f64), or on cuda with --device.
 *
 *   kvf_bench_recompute [--variants mha,cla2_mha,mla_r256] [--batch 1] [--seq 1024]
 *                       [--layers 12] [--device cpu|cuda]
 *
 * One line per variant and mode to stderr, one JSON line per variant to stdout. The arena
 * peak is kvf_ctx_arena_peak (every tensor made during the step: activations, their
 * gradients, casts of the weights; not parameters, their gradients or optimizer state). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/backend.h"
#include "autograd/context.h"
#include "autograd/rng.h"
#include "autograd/tape.h"
#include "model/transformer.h"
#include "model/variant.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

struct result {
    double loss, seconds;
    size_t peak, reserved;
    void *grads;
    size_t nbytes;
};

/* FNV-1a over the loss's bits and the gradient bytes: a fingerprint to compare runs of
 * different builds (a memory change must not move any bit). */
static uint64_t fingerprint(const struct result *r) {
    uint64_t h = 1469598103934665603ull;
    const unsigned char *p = (const unsigned char *)&r->loss;
    for (size_t i = 0; i < sizeof r->loss; i++) h = (h ^ p[i]) * 1099511628211ull;
    p = r->grads;
    for (size_t i = 0; i < r->nbytes; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static kvf_status one_step(kvf_model *m, kvf_device dev, const int32_t *ids, const int32_t *tg,
                           int64_t B, int64_t T, struct result *r) {
    kvf_ctx *ctx = kvf_ctx_init(dev);
    if (!ctx) return kvf_error_code();
    kvf_status st = kvf_params_zero_grad(m->params);
    double t0 = now_s();
    int64_t shape[2] = {B, T};
    kvf_tensor *x = st == KVF_OK ? kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, shape, ids) : NULL;
    kvf_tensor *y = x ? kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, shape, tg) : NULL;
    kvf_tensor *loss = y ? kvf_model_loss(m, ctx, x, y) : NULL;
    if (!loss) st = kvf_error_code();
    if (st == KVF_OK) st = kvf_backward(ctx, loss);
    if (st == KVF_OK) st = kvf_tensor_item(loss, &r->loss);
    r->seconds = now_s() - t0;
    r->peak = kvf_ctx_arena_peak(ctx);
    r->reserved = kvf_ctx_arena_reserved(ctx);
    kvf_tensor *g = kvf_params_grads(m->params);
    r->nbytes = kvf_tensor_nbytes(g);
    r->grads = malloc(r->nbytes);
    if (st == KVF_OK && !r->grads) st = kvf_error_set(KVF_ERR_OOM, "bench: out of host memory");
    if (st == KVF_OK) st = kvf_tensor_to_host(g, r->grads, r->nbytes);
    kvf_ctx_free(ctx);
    return st;
}

static int run_variant(const char *variant, int64_t B, int64_t T, int layers, kvf_device dev) {
    kvf_model_config c;
    kvf_model_config_defaults(&c);
    c.vocab_size = 50304;
    c.d_model = 768;
    c.n_layers = layers;
    c.n_heads = 12;
    c.d_ff = 2048;
    c.max_seq_len = T;
    c.rope_theta = 10000.0;
    if (kvf_model_config_apply_variant(&c, variant) != KVF_OK) {
        fprintf(stderr, "bench_recompute: %s\n", kvf_error_message());
        return 1;
    }
    kvf_model *mc = kvf_model_init(&c, KVF_DEVICE_CPU), *m = mc;
    if (mc && kvf_model_init_weights(mc, 1) != KVF_OK) m = NULL;
    if (m && dev != KVF_DEVICE_CPU) {
        m = kvf_model_to_device(mc, dev);
        kvf_model_free(mc);
        if (m && kvf_model_set_compute_dtype(m, KVF_DTYPE_BF16) != KVF_OK) {
            kvf_model_free(m);
            m = NULL;
        }
    }
    if (!m) {
        fprintf(stderr, "bench_recompute %s: %s\n", variant, kvf_error_message());
        return 1;
    }
    int64_t n = B * T;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n), *tg = malloc(sizeof(int32_t) * (size_t)n);
    kvf_rng r;
    kvf_rng_init(&r, 42);
    for (int64_t i = 0; i < n; i++) {
        ids[i] = (int32_t)kvf_rng_below(&r, (uint64_t)c.vocab_size);
        tg[i] = (int32_t)kvf_rng_below(&r, (uint64_t)c.vocab_size);
    }
    struct result res[2] = {{0}};
    int rc = 0;
    for (int k = 0; k < 2 && rc == 0; k++) {
        m->recompute = k ? KVF_RECOMPUTE_BLOCKS : KVF_RECOMPUTE_NONE;
        if (one_step(m, dev, ids, tg, B, T, &res[k]) != KVF_OK) {
            fprintf(stderr, "bench_recompute %s: %s\n", variant, kvf_error_message());
            rc = 1;
            break;
        }
        fprintf(stderr, "%-10s B %lld T %lld %s recompute %-6s | arena peak %8.1f MB (reserved %8.1f MB) | "
                "fwd+bwd %.2f s | loss %.6f\n",
                variant, (long long)B, (long long)T, kvf_device_name(dev), k ? "blocks" : "none",
                (double)res[k].peak / 1e6, (double)res[k].reserved / 1e6, res[k].seconds, res[k].loss);
    }
    if (rc == 0) {
        bool same = res[0].loss == res[1].loss && res[0].nbytes == res[1].nbytes &&
                    memcmp(res[0].grads, res[1].grads, res[0].nbytes) == 0;
        printf("{\"variant\": \"%s\", \"B\": %lld, \"T\": %lld, \"layers\": %d, \"device\": \"%s\", "
               "\"peak_none_bytes\": %zu, \"peak_blocks_bytes\": %zu, \"reserved_none_bytes\": %zu, "
               "\"reserved_blocks_bytes\": %zu, \"seconds_none\": %.3f, \"seconds_blocks\": %.3f, "
               "\"bit_exact\": %s, \"fingerprint\": \"%016llx\"}\n",
               variant, (long long)B, (long long)T, layers, kvf_device_name(dev), res[0].peak,
               res[1].peak, res[0].reserved, res[1].reserved, res[0].seconds, res[1].seconds,
               same ? "true" : "false", (unsigned long long)fingerprint(&res[0]));
        fflush(stdout);
        if (!same && dev == KVF_DEVICE_CPU) {
            fprintf(stderr, "bench_recompute %s: loss or gradients differ with recompute\n", variant);
            rc = 1;
        }
    }
    free(res[0].grads);
    free(res[1].grads);
    free(ids);
    free(tg);
    kvf_model_free(m);
    return rc;
}

int main(int argc, char **argv) {
    const char *variants = "mha,cla2_mha,mla_r256";
    int64_t B = 1, T = 1024;
    int layers = 12;
    kvf_device dev = KVF_DEVICE_CPU;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--variants") && v) variants = argv[++i];
        else if (!strcmp(a, "--batch") && v) B = atoll(argv[++i]);
        else if (!strcmp(a, "--seq") && v) T = atoll(argv[++i]);
        else if (!strcmp(a, "--layers") && v) layers = atoi(argv[++i]);
        else if (!strcmp(a, "--device") && v) {
            const char *d = argv[++i];
            if (!strcmp(d, "cpu")) dev = KVF_DEVICE_CPU;
            else if (!strcmp(d, "cuda")) dev = KVF_DEVICE_CUDA;
            else {
                fprintf(stderr, "bench_recompute: --device must be cpu or cuda, got '%s'\n", d);
                return 2;
            }
        } else {
            fprintf(stderr, "usage: kvf_bench_recompute [--variants a,b] [--batch B] [--seq T] "
                            "[--layers L] [--device cpu|cuda]\n");
            return 2;
        }
    }
    if (B < 1 || T < 2 || layers < 1 || layers > KVF_MAX_LAYERS) {
        fprintf(stderr, "bench_recompute: batch >= 1, seq >= 2, 1 <= layers <= %d\n", KVF_MAX_LAYERS);
        return 2;
    }
    if (dev != KVF_DEVICE_CPU && !kvf_backend_get(dev)) {
        fprintf(stderr, "bench_recompute: skipped: %s\n", kvf_error_message());
        return 77;
    }
    char list[512];
    snprintf(list, sizeof list, "%s", variants);
    int fails = 0;
    for (char *save = NULL, *v = strtok_r(list, ",", &save); v; v = strtok_r(NULL, ",", &save))
        fails += run_variant(v, B, T, layers, dev);
    return fails ? 1 : 0;
}
