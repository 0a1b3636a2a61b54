/* bench_cpu — CPU throughput of kvforge's matmul and fused attention (forward + backward)
 * against OpenBLAS sgemm on the same machine. Usage: kvf_bench_cpu [--quick]
 * Prints one table; docs/benchmarks.md records its output with date and machine. */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/context.h"
#include "autograd/ops.h"
#include "autograd/rng.h"
#include "autograd/tape.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static kvf_tensor *randn(kvf_ctx *ctx, kvf_rng *r, int nd, const int64_t *shape, bool grad) {
    kvf_tensor *t = kvf_tensor_new(ctx, KVF_DTYPE_F32, nd, shape);
    float *p = kvf_tensor_data(t);
    for (int64_t i = 0; i < kvf_tensor_numel(t); i++) p[i] = (float)kvf_rng_normal(r);
    t->requires_grad = grad;
    return t;
}

/* Seconds per call of fn, best of `reps` after one warm-up. */
typedef int (*bench_fn)(void *);
static double best_time(bench_fn fn, void *ud, int reps) {
    if (fn(ud)) return -1;
    double best = 1e30;
    for (int i = 0; i < reps; i++) {
        double t0 = now();
        if (fn(ud)) return -1;
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    return best;
}

struct sgemm_case { int m, n, k; float *a, *b, *c; };
static int run_sgemm(void *ud) {
    struct sgemm_case *s = ud;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->m, s->n, s->k, 1.0f, s->a, s->k, s->b,
                s->k, 0.0f, s->c, s->n);
    return 0;
}

struct kvf_case {
    kvf_ctx *ctx;
    kvf_tensor *a, *b, *c; /* matmul operands, or q, k, v */
    bool backward;
    kvf_attn_cfg cfg;
};

static int run_matmul(void *ud) {
    struct kvf_case *c = ud;
    kvf_ctx_reset(c->ctx);
    c->a->grad = c->b->grad = NULL;
    kvf_tensor *y = kvf_matmul(c->ctx, c->a, c->b, false, true);
    if (!y) return 1;
    if (c->backward) {
        kvf_tensor *l = kvf_sum(c->ctx, y, KVF_ALL_AXES, false);
        if (!l || kvf_backward(c->ctx, l) != KVF_OK) return 1;
    }
    return 0;
}

static int run_attention(void *ud) {
    struct kvf_case *c = ud;
    kvf_ctx_reset(c->ctx);
    c->a->grad = c->b->grad = c->c->grad = NULL;
    kvf_tensor *y = kvf_attention(c->ctx, c->a, c->b, c->c, &c->cfg);
    if (!y) return 1;
    if (c->backward) {
        kvf_tensor *l = kvf_sum(c->ctx, y, KVF_ALL_AXES, false);
        if (!l || kvf_backward(c->ctx, l) != KVF_OK) return 1;
    }
    return 0;
}

static void row(const char *what, const char *shape, double flops, double sec) {
    if (sec <= 0) {
        printf("| %-34s | %-26s | failed: %s |\n", what, shape, kvf_error_message());
        return;
    }
    printf("| %-34s | %-26s | %9.2f | %8.1f |\n", what, shape, sec * 1e3, flops / sec * 1e-9);
}

int main(int argc, char **argv) {
    bool quick = argc > 1 && !strcmp(argv[1], "--quick");
    int reps = quick ? 2 : 5;
    kvf_rng r;
    kvf_rng_init(&r, 1);
    kvf_ctx *persist = kvf_ctx_init(KVF_DEVICE_CPU), *ctx = kvf_ctx_init(KVF_DEVICE_CPU);
    if (!persist || !ctx) {
        fprintf(stderr, "bench: %s\n", kvf_error_message());
        return 1;
    }
    printf("kvforge CPU benchmark: %d OpenMP threads, OpenBLAS %s\n\n", omp_get_max_threads(),
           openblas_get_config());
    printf("| %-34s | %-26s | %9s | %8s |\n", "operation", "shape", "ms", "GFLOP/s");
    printf("|%s|%s|%s|%s|\n", "------------------------------------", "----------------------------",
           "-----------", "----------");

    /* reference: OpenBLAS sgemm, C = A·Bᵀ */
    int sq = quick ? 512 : 1024;
    struct sgemm_case s = {sq, sq, sq, malloc(sizeof(float) * (size_t)sq * sq),
                           malloc(sizeof(float) * (size_t)sq * sq), malloc(sizeof(float) * (size_t)sq * sq)};
    for (int i = 0; i < sq * sq; i++) s.a[i] = s.b[i] = (float)kvf_rng_normal(&r);
    char shape[64];
    snprintf(shape, sizeof shape, "%dx%dx%d", sq, sq, sq);
    row("OpenBLAS sgemm (reference)", shape, 2.0 * sq * sq * sq, best_time(run_sgemm, &s, reps));

    /* linear layer shape: tokens × d_model by d_model × d_model */
    int64_t tok = quick ? 512 : 2048, d = 768;
    struct sgemm_case s2 = {(int)tok, (int)d, (int)d, malloc(sizeof(float) * (size_t)(tok * d)),
                            malloc(sizeof(float) * (size_t)(d * d)), malloc(sizeof(float) * (size_t)(tok * d))};
    for (int64_t i = 0; i < tok * d; i++) s2.a[i] = (float)kvf_rng_normal(&r);
    for (int64_t i = 0; i < d * d; i++) s2.b[i] = (float)kvf_rng_normal(&r);
    snprintf(shape, sizeof shape, "%lldx%lldx%lld", (long long)tok, (long long)d, (long long)d);
    double fl = 2.0 * (double)(tok * d * d);
    row("OpenBLAS sgemm (linear shape)", shape, fl, best_time(run_sgemm, &s2, reps));
    struct kvf_case mm = {ctx, randn(persist, &r, 2, (int64_t[]){tok, d}, true),
                          randn(persist, &r, 2, (int64_t[]){d, d}, true), NULL, false,
                          {.scale = 1.0f, .causal = false, .window = 0}};
    row("kvf_matmul forward", shape, fl, best_time(run_matmul, &mm, reps));
    mm.backward = true;
    row("kvf_matmul forward+backward", shape, 3 * fl, best_time(run_matmul, &mm, reps));

    /* causal attention, GPT-2-small head shape */
    int64_t B = quick ? 1 : 2, T = quick ? 256 : 1024, H = 12, D = 64;
    for (int v = 0; v < 2; v++) {
        int64_t Hkv = v ? 4 : H;
        struct kvf_case at = {ctx, randn(persist, &r, 4, (int64_t[]){B, T, H, D}, true),
                              randn(persist, &r, 4, (int64_t[]){B, T, Hkv, D}, true),
                              randn(persist, &r, 4, (int64_t[]){B, T, Hkv, D}, true), false,
                              {.scale = 0.125f, .causal = true, .window = 0}};
        double pairs = (double)T * (double)(T + 1) / 2.0; /* visible (query, key) pairs */
        double ffw = 4.0 * (double)(B * H * D) * pairs;       /* Q·Kᵀ and P·V */
        double fbw = 10.0 * (double)(B * H * D) * pairs;      /* recompute S, dV, dP, dQ, dK */
        snprintf(shape, sizeof shape, "B%lld T%lld H%lld/%lld D%lld", (long long)B, (long long)T,
                 (long long)H, (long long)Hkv, (long long)D);
        row(v ? "kvf_attention forward (GQA)" : "kvf_attention forward (MHA)", shape, ffw,
            best_time(run_attention, &at, reps));
        at.backward = true;
        row(v ? "kvf_attention fwd+bwd (GQA)" : "kvf_attention fwd+bwd (MHA)", shape, ffw + fbw,
            best_time(run_attention, &at, reps));
    }
    printf("\nGFLOP/s counts useful FLOPs only (causal: visible pairs; fwd+bwd includes the\n"
           "recomputed scores), so attention and sgemm figures compare directly.\n");
    kvf_ctx_free(ctx);
    kvf_ctx_free(persist);
    return 0;
}
