/* bench_gpu.c — timings of the CUDA backend's main kernels through the public ops:
 * GEMM (bf16, f32), fused attention forward and forward+backward (bf16, f32), RMSNorm,
 * cross-entropy. Each figure is the median of several timed repetitions after a warm-up;
 * a 4-byte download synchronises the device. Prints one line per case and exits 77 without
 * a GPU. Usage: kvf_bench_gpu [--quick] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/backend.h"
#include "autograd/context.h"
#include "autograd/ops.h"
#include "autograd/rng.h"
#include "autograd/tape.h"

static kvf_ctx *g_ctx;
static int g_reps = 10;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sync_on(const kvf_tensor *t) {
    uint32_t x;
    if (kvf_ctx_backend(g_ctx)->download(&x, kvf_tensor_data(t), sizeof x) != KVF_OK) {
        fprintf(stderr, "bench: %s\n", kvf_error_message());
        exit(1);
    }
}

/* A persistent device tensor (outside the arena, so kvf_ctx_reset between repetitions
 * keeps it): normal · std in dtype dt. */
static kvf_tensor *randn(kvf_dtype dt, int ndim, const int64_t *shape, double std) {
    static kvf_rng r;
    static int init;
    if (!init) kvf_rng_init(&r, 1), init = 1;
    kvf_tensor *t = calloc(1, sizeof *t + sizeof(struct kvf_storage));
    t->storage = (struct kvf_storage *)(t + 1);
    t->dtype = dt;
    t->ndim = ndim;
    t->node = -1;
    memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
    kvf_layout_contiguous(ndim, shape, t->stride);
    int64_t n = kvf_tensor_numel(t);
    size_t nb = kvf_tensor_nbytes(t);
    void *h = malloc(nb);
    for (int64_t i = 0; i < n; i++) {
        float v = (float)(std * kvf_rng_normal(&r));
        if (dt == KVF_DTYPE_F32) ((float *)h)[i] = v;
        else ((uint16_t *)h)[i] = kvf_f32_to_bf16(v);
    }
    const kvf_backend *be = kvf_ctx_backend(g_ctx);
    t->storage->data = be->alloc(nb);
    t->storage->nbytes = nb;
    t->storage->device = KVF_DEVICE_CUDA;
    if (!t->storage->data || be->upload(t->storage->data, h, nb) != KVF_OK) {
        fprintf(stderr, "bench: %s\n", kvf_error_message());
        exit(1);
    }
    free(h);
    return t;
}

static void release(kvf_tensor *t) {
    if (!t) return;
    kvf_ctx_backend(g_ctx)->free(t->storage->data);
    free(t);
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef kvf_tensor *(*bench_fn)(void *ud);

/* Median seconds of fn over g_reps calls after 2 warm-ups; the ctx (arena and tape) is
 * reset before each call, outside the timed region. */
static double time_it(bench_fn fn, void *ud) {
    double t[64];
    int reps = g_reps < 64 ? g_reps : 64;
    for (int i = -2; i < reps; i++) {
        kvf_ctx_reset(g_ctx);
        double t0 = now();
        kvf_tensor *y = fn(ud);
        if (!y) {
            fprintf(stderr, "bench: %s (%s)\n", kvf_error_message(), kvf_error_location());
            exit(1);
        }
        sync_on(y);
        if (i >= 0) t[i] = now() - t0;
    }
    qsort(t, (size_t)reps, sizeof t[0], cmp_d);
    return t[reps / 2];
}

/* ---- GEMM ---- */
struct mm {
    kvf_tensor *a, *b;
};
static kvf_tensor *run_mm(void *ud) {
    struct mm *m = ud;
    return kvf_matmul(g_ctx, m->a, m->b, false, true);
}

static void bench_gemm(kvf_dtype dt, int64_t M, int64_t N, int64_t K) {
    kvf_ctx_reset(g_ctx);
    kvf_ctx_set_grad(g_ctx, false);
    struct mm m = {randn(dt, 2, (int64_t[]){M, K}, 1.0), randn(dt, 2, (int64_t[]){N, K}, 1.0)};
    double s = time_it(run_mm, &m);
    release(m.a);
    release(m.b);
    printf("gemm %-4s %5lldx%5lldx%5lld (x·Wᵀ)          %8.3f ms  %7.1f TFLOP/s\n", kvf_dtype_name(dt),
           (long long)M, (long long)N, (long long)K, s * 1e3, 2.0 * M * N * K / s / 1e12);
}

/* ---- attention ---- */
struct at {
    kvf_tensor *q, *k, *v;
    kvf_attn_cfg cfg;
    bool backward;
};
static kvf_tensor *run_at(void *ud) {
    struct at *a = ud;
    if (!a->backward) return kvf_attention(g_ctx, a->q, a->k, a->v, &a->cfg);
    for (int i = 0; i < 3; i++) { /* fresh leaves: gradients in this step's arena */
        kvf_tensor *x = i == 0 ? a->q : i == 1 ? a->k : a->v;
        x->grad = NULL;
        x->node = -1;
        x->requires_grad = true;
    }
    kvf_tensor *o = kvf_attention(g_ctx, a->q, a->k, a->v, &a->cfg);
    kvf_tensor *l = o ? kvf_sum(g_ctx, o, KVF_ALL_AXES, false) : NULL;
    if (!l || kvf_backward(g_ctx, l) != KVF_OK) return NULL;
    return a->q->grad;
}

static void bench_attention(kvf_dtype dt, int64_t B, int64_t T, int64_t Hq, int64_t Hkv,
                            int64_t Dk, int64_t Dv, bool backward) {
    kvf_ctx_reset(g_ctx);
    kvf_ctx_set_grad(g_ctx, backward);
    struct at a = {randn(dt, 4, (int64_t[]){B, T, Hq, Dk}, 1.0), randn(dt, 4, (int64_t[]){B, T, Hkv, Dk}, 1.0),
                   randn(dt, 4, (int64_t[]){B, T, Hkv, Dv}, 1.0),
                   {.scale = 0.08f, .causal = true, .window = 0}, backward};
    double s = time_it(run_at, &a);
    release(a.q);
    release(a.k);
    release(a.v);
    /* causal: half of the T×T scores; forward 2·(Dk + Dv) flops per score, backward 2.5× */
    double fl = 2.0 * B * Hq * (double)T * (double)T / 2 * (double)(Dk + Dv) * (backward ? 3.5 : 1.0);
    printf("attention %-4s %s B%lld T%lld Hq%lld Hkv%lld Dk%lld Dv%lld causal  %8.3f ms  %7.1f TFLOP/s\n",
           kvf_dtype_name(dt), backward ? "fwd+bwd" : "fwd    ", (long long)B, (long long)T,
           (long long)Hq, (long long)Hkv, (long long)Dk, (long long)Dv, s * 1e3, fl / s / 1e12);
}

/* ---- row kernels ---- */
struct rk {
    kvf_tensor *x, *w, *ids;
    int which;
};
static kvf_tensor *run_rk(void *ud) {
    struct rk *r = ud;
    if (r->which == 0) return kvf_rmsnorm(g_ctx, r->x, r->w, 1e-5);
    return kvf_cross_entropy(g_ctx, r->x, r->ids, -100);
}

static void bench_rows(kvf_dtype dt, int which, int64_t N, int64_t C) {
    kvf_ctx_reset(g_ctx);
    kvf_ctx_set_grad(g_ctx, false);
    struct rk r = {randn(dt, 2, (int64_t[]){N, C}, 1.0), randn(dt, 1, (int64_t[]){C}, 1.0), NULL, which};
    if (which == 1) {
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)N);
        for (int64_t i = 0; i < N; i++) ids[i] = (int32_t)((i * 7919) % C);
        r.ids = calloc(1, sizeof(kvf_tensor) + sizeof(struct kvf_storage));
        r.ids->storage = (struct kvf_storage *)(r.ids + 1);
        r.ids->dtype = KVF_DTYPE_I32;
        r.ids->ndim = 1;
        r.ids->shape[0] = N;
        r.ids->stride[0] = 1;
        r.ids->node = -1;
        r.ids->storage->data = kvf_ctx_backend(g_ctx)->alloc(sizeof(int32_t) * (size_t)N);
        r.ids->storage->nbytes = sizeof(int32_t) * (size_t)N;
        r.ids->storage->device = KVF_DEVICE_CUDA;
        kvf_ctx_backend(g_ctx)->upload(r.ids->storage->data, ids, sizeof(int32_t) * (size_t)N);
        free(ids);
    }
    double s = time_it(run_rk, &r);
    release(r.x);
    release(r.w);
    release(r.ids);
    double bytes = (double)N * C * (double)(dt == KVF_DTYPE_F32 ? 4 : 2) * (which == 0 ? 2 : 1);
    printf("%-13s %-4s [%lld, %lld]                    %8.3f ms  %7.1f GB/s\n",
           which == 0 ? "rmsnorm" : "cross_entropy", kvf_dtype_name(dt), (long long)N, (long long)C,
           s * 1e3, bytes / s / 1e9);
}

int main(int argc, char **argv) {
    bool quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    g_ctx = kvf_ctx_init(KVF_DEVICE_CUDA);
    if (!g_ctx) {
        printf("no CUDA device: skipping (%s)\n", kvf_error_message());
        return 77;
    }
    if (quick) g_reps = 5;
    bench_gemm(KVF_DTYPE_BF16, 8192, 8192, 8192);
    bench_gemm(KVF_DTYPE_BF16, 16384, 4096, 4096);
    bench_gemm(KVF_DTYPE_F32, 4096, 4096, 4096);
    int64_t T = quick ? 1024 : 2048;
    bench_attention(KVF_DTYPE_BF16, 4, T, 16, 16, 128, 128, false);
    bench_attention(KVF_DTYPE_BF16, 4, T, 16, 16, 128, 128, true);
    bench_attention(KVF_DTYPE_BF16, 4, T, 16, 4, 64, 64, true);
    bench_attention(KVF_DTYPE_BF16, 4, T, 16, 16, 192, 128, true);
    bench_attention(KVF_DTYPE_F32, 4, T, 16, 16, 128, 128, true);
    bench_rows(KVF_DTYPE_BF16, 0, 16384, 4096);
    bench_rows(KVF_DTYPE_BF16, 1, 8192, 50304);
    bench_rows(KVF_DTYPE_F32, 1, 8192, 50304);
    kvf_ctx_free(g_ctx);
    return 0;
}
