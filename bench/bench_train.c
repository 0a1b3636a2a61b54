/* bench_train.c — training throughput and memory of kvforge on a GPU, at the shapes of the
 * PyTorch peer (../shared/bench/torch_baseline.py): a Llama-style model with d 768, 12 layers,
 * 12 heads of 64, SwiGLU 2048, vocab 50304, untied embeddings, for each attention variant.
 *
 *   kvf_bench_train [--variants mha,gqa4,mqa,cla2_mha,sqa_q6kv6,mla_r256] [--batch 16]
 *                   [--seq 1024] [--steps 20] [--warmup 3] [--dtype bf16|f32] [--profile]
 *                   [--recompute none|blocks]
 *
 * Each step is the trainer's (train/trainer.c): zero grads, forward + loss, backward (queued
 * before the loss is read), global-norm clipping at 1.0, one fused AdamW update (lr 3e-4,
 * as the peer), on fixed random tokens. tokens/s = batch·seq·steps / wall time of the timed
 * steps (after the warm-up steps, each step ending when the gradient norm is read back).
 * Memory: device memory kvforge holds after the steps (cudaMemGetInfo, against the free
 * memory before the model was made); kvforge frees nothing between steps, so this is its
 * peak (parameters, gradients, AdamW moments, the activation arena, scratch). The peer
 * reports torch.cuda.max_memory_allocated(), which likewise excludes the CUDA context.
 * --profile adds one step with synchronisation after each phase (forward, backward,
 * optimizer) and prints their times. --recompute blocks re-runs each transformer block in
 * the backward (model/transformer.h); arena_peak_gb is the most arena bytes in use at once.
 * One JSON line per variant goes to stdout; exit 77 without a GPU. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/backend.h"
#include "autograd/context.h"
#include "autograd/ops.h"
#include "autograd/rng.h"
#include "autograd/tape.h"
#include "model/config.h"
#include "model/transformer.h"
#include "model/variant.h"
#include "optim/clip.h"
#include "optim/optimizer.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static size_t gpu_free(void) {
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return fr;
}

/* High-water marks of the default memory pool (the backward's temporaries), reset after
 * reading: reserved from the driver and in use at once. */
static void pool_high(double *reserved_gb, double *used_gb) {
    cudaMemPool_t pool;
    int dev = 0;
    uint64_t r = 0, u = 0, zero = 0;
    if (cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess) {
        cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &r);
        cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &u);
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReservedMemHigh, &zero);
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &zero);
    }
    (void)cudaGetLastError();
    *reserved_gb = (double)r / 1e9;
    *used_gb = (double)u / 1e9;
}

struct opts {
    const char *variants;
    int64_t batch, seq;
    int steps, warmup;
    kvf_dtype dtype;
    bool profile;
    kvf_recompute_mode recompute;
};

struct step_ctx {
    kvf_model *m;
    kvf_ctx *ctx;
    kvf_optimizer *opt;
    const int32_t *ids, *tg;
    int64_t B, T;
};

/* One training step; *loss and *norm receive the loss and the gradient norm. With t (5
 * entries) the phases are synchronised and timed: fwd, bwd, opt, and the host's time to
 * queue the forward and the backward (when it nears the phase's time, the GPU waits on
 * the host). */
static kvf_status step(struct step_ctx *s, double *loss, double *norm, double *t) {
    KVF_TRY(kvf_params_zero_grad(s->m->params));
    kvf_ctx_reset(s->ctx);
    double t0 = now_s();
    int64_t shape[2] = {s->B, s->T};
    kvf_tensor *ids = kvf_tensor_from_host(s->ctx, KVF_DTYPE_I32, 2, shape, s->ids);
    kvf_tensor *tgt = kvf_tensor_from_host(s->ctx, KVF_DTYPE_I32, 2, shape, s->tg);
    kvf_tensor *l = ids && tgt ? kvf_model_loss(s->m, s->ctx, ids, tgt) : NULL;
    if (!l) return kvf_error_code();
    if (t) {
        t[3] = now_s() - t0;
        KVF_TRY(kvf_tensor_item(l, loss));
        t[0] = now_s() - t0;
        t0 = now_s();
    }
    KVF_TRY(kvf_backward(s->ctx, l));
    if (t) t[4] = now_s() - t0;
    KVF_TRY(kvf_tensor_item(l, loss));
    if (t) {
        t[1] = now_s() - t0;
        t0 = now_s();
    }
    kvf_clip_info ci;
    KVF_TRY(kvf_clip_grad_norm_deferred(s->m->params, 1.0, &ci));
    *norm = ci.norm;
    KVF_TRY(kvf_optimizer_step_scaled(s->opt, 3e-4, ci.scale));
    if (t) {
        double dummy;
        KVF_TRY(kvf_tensor_item(l, &dummy)); /* waits for the update */
        t[2] = now_s() - t0;
    }
    return KVF_OK;
}

static int run_variant(const char *variant, const struct opts *o, bool quiet) {
    kvf_model_config c;
    kvf_model_config_defaults(&c);
    c.vocab_size = 50304;
    c.d_model = 768;
    c.n_layers = 12;
    c.n_heads = 12;
    c.d_ff = 2048;
    c.max_seq_len = o->seq;
    c.rope_theta = 10000.0;
    if (kvf_model_config_apply_variant(&c, variant) != KVF_OK) {
        fprintf(stderr, "bench_train: %s\n", kvf_error_message());
        return 1;
    }
    size_t free0 = gpu_free();
    double pool_r, pool_u;
    pool_high(&pool_r, &pool_u);
    /* initialise on the CPU, as the trainer does, then copy to the GPU */
    kvf_model *mc = kvf_model_init(&c, KVF_DEVICE_CPU);
    kvf_model *m = NULL;
    if (mc && kvf_model_init_weights(mc, 1) == KVF_OK) m = kvf_model_to_device(mc, KVF_DEVICE_CUDA);
    kvf_model_free(mc);
    kvf_ctx *ctx = m ? kvf_ctx_init(KVF_DEVICE_CUDA) : NULL;
    kvf_optim_config oc = kvf_optim_config_default(KVF_OPTIM_ADAMW);
    kvf_optimizer *opt = ctx ? kvf_optimizer_init(m->params, &oc) : NULL;
    if (m) m->recompute = o->recompute;
    if (!opt || kvf_model_set_compute_dtype(m, o->dtype) != KVF_OK) {
        fprintf(stderr, "bench_train %s: %s\n", variant, kvf_error_message());
        kvf_optimizer_free(opt);
        kvf_ctx_free(ctx);
        kvf_model_free(m);
        return 1;
    }
    const int64_t n = o->batch * o->seq;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n), *tg = malloc(sizeof(int32_t) * (size_t)n);
    kvf_rng r;
    kvf_rng_init(&r, 42);
    for (int64_t i = 0; i < n; i++) {
        ids[i] = (int32_t)kvf_rng_below(&r, (uint64_t)c.vocab_size);
        tg[i] = (int32_t)kvf_rng_below(&r, (uint64_t)c.vocab_size);
    }
    struct step_ctx s = {m, ctx, opt, ids, tg, o->batch, o->seq};
    double loss = NAN, norm = NAN, tw = 0, tt = 0, ph[5] = {0};
    kvf_status st = KVF_OK;
    double t0 = now_s();
    for (int i = 0; i < o->warmup && st == KVF_OK; i++) st = step(&s, &loss, &norm, NULL);
    tw = now_s() - t0;
    t0 = now_s();
    for (int i = 0; i < o->steps && st == KVF_OK; i++) st = step(&s, &loss, &norm, NULL);
    tt = now_s() - t0;
    size_t free1 = gpu_free();
    if (st == KVF_OK && o->profile) st = step(&s, &loss, &norm, ph);
    int rc = 0;
    if (quiet) {
        if (st != KVF_OK) fprintf(stderr, "bench_train %s warm-up: %s\n", variant, kvf_error_message());
        rc = st != KVF_OK;
    } else if (st != KVF_OK) {
        fprintf(stderr, "bench_train %s (B %lld, T %lld): %s\n", variant, (long long)o->batch,
                (long long)o->seq, kvf_error_message());
        printf("{\"variant\": \"%s\", \"B\": %lld, \"T\": %lld, \"error\": \"step failed\"}\n", variant,
               (long long)o->batch, (long long)o->seq);
        rc = 1;
    } else {
        double tps = (double)n * o->steps / tt;
        double flops_tok = 3.0 * kvf_model_flops_per_token(&m->cfg, o->seq);
        double mem_gb = free0 > free1 ? (double)(free0 - free1) / 1e9 : NAN;
        double arena_gb = (double)kvf_ctx_arena_reserved(ctx) / 1e9;
        double peak_gb = (double)kvf_ctx_arena_peak(ctx) / 1e9;
        double state_gb = (double)kvf_params_numel(m->params) * 16.0 / 1e9;
        pool_high(&pool_r, &pool_u);
        fprintf(stderr, "%-10s B %2lld T %5lld %s | %8.0f tok/s | %7.1f ms/step | %5.1f TFLOP/s | "
                "mem %.2f GB (arena %.2f, peak in use %.2f, backward pool %.2f reserved / %.2f used, "
                "params+grads+adam %.2f) | loss %.4f | "
                "warm-up %.1fs%s",
                variant, (long long)o->batch, (long long)o->seq, kvf_dtype_name(o->dtype), tps,
                1e3 * tt / o->steps, flops_tok * tps / 1e12, mem_gb, arena_gb, peak_gb, pool_r, pool_u, state_gb, loss,
                tw, o->recompute == KVF_RECOMPUTE_BLOCKS ? " | recompute blocks" : "");
        if (o->profile)
            fprintf(stderr, " | fwd %.1f bwd %.1f opt %.1f ms (host queues fwd in %.1f, bwd in %.1f)",
                    1e3 * ph[0], 1e3 * ph[1], 1e3 * ph[2], 1e3 * ph[3], 1e3 * ph[4]);
        fputc('\n', stderr);
        printf("{\"variant\": \"%s\", \"B\": %lld, \"T\": %lld, \"dtype\": \"%s\", \"params\": %lld, "
               "\"tok_per_s\": %.1f, \"step_ms\": %.3f, \"model_tflops\": %.2f, \"peak_mem_gb\": %.3f, "
               "\"arena_gb\": %.3f, \"arena_peak_gb\": %.3f, \"recompute\": \"%s\", \"loss\": %.5f, "
               "\"warm_s\": %.2f, \"fwd_ms\": %.2f, \"bwd_ms\": %.2f, \"opt_ms\": %.2f}\n",
               variant, (long long)o->batch, (long long)o->seq, kvf_dtype_name(o->dtype),
               (long long)kvf_model_n_params(&m->cfg), tps, 1e3 * tt / o->steps,
               flops_tok * tps / 1e12, mem_gb, arena_gb, peak_gb,
               o->recompute == KVF_RECOMPUTE_BLOCKS ? "blocks" : "none", loss, tw, 1e3 * ph[0], 1e3 * ph[1],
               1e3 * ph[2]);
        fflush(stdout);
    }
    free(ids);
    free(tg);
    kvf_optimizer_free(opt);
    kvf_ctx_free(ctx);
    kvf_model_free(m);
    return rc;
}

int main(int argc, char **argv) {
    struct opts o = {.variants = "mha,gqa4,mqa,cla2_mha,sqa_q6kv6,mla_r256", .batch = 16, .seq = 1024,
                     .steps = 20, .warmup = 3, .dtype = KVF_DTYPE_BF16};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--variants") && v) o.variants = argv[++i];
        else if (!strcmp(a, "--batch") && v) o.batch = atoll(argv[++i]);
        else if (!strcmp(a, "--seq") && v) o.seq = atoll(argv[++i]);
        else if (!strcmp(a, "--steps") && v) o.steps = atoi(argv[++i]);
        else if (!strcmp(a, "--warmup") && v) o.warmup = atoi(argv[++i]);
        else if (!strcmp(a, "--dtype") && v) {
            const char *d = argv[++i];
            if (!strcmp(d, "bf16")) o.dtype = KVF_DTYPE_BF16;
            else if (!strcmp(d, "f32")) o.dtype = KVF_DTYPE_F32;
            else {
                fprintf(stderr, "bench_train: --dtype must be bf16 or f32, got '%s'\n", d);
                return 2;
            }
        } else if (!strcmp(a, "--recompute") && v) {
            if (kvf_recompute_parse(argv[++i], &o.recompute) != KVF_OK) {
                fprintf(stderr, "bench_train: --recompute: %s\n", kvf_error_message());
                return 2;
            }
        } else if (!strcmp(a, "--profile")) o.profile = true;
        else {
            fprintf(stderr, "usage: kvf_bench_train [--variants a,b] [--batch B] [--seq T] [--steps N] "
                            "[--warmup N] [--dtype bf16|f32] [--profile] [--recompute none|blocks]\n");
            return 2;
        }
    }
    if (o.batch < 1 || o.seq < 2 || o.steps < 1 || o.warmup < 0) {
        fprintf(stderr, "bench_train: batch >= 1, seq >= 2, steps >= 1, warmup >= 0\n");
        return 2;
    }
    if (!kvf_backend_get(KVF_DEVICE_CUDA)) {
        fprintf(stderr, "bench_train: skipped: %s\n", kvf_error_message());
        return 77;
    }
    char list[512];
    snprintf(list, sizeof list, "%s", o.variants);
    int fails = 0;
    /* One small step first, so that "mem" is what the run itself holds: the CUDA
     * libraries' own state (cuBLASLt and cuDNN handles, their loaded kernels) stays
     * resident after it, as torch's CUDA context and libraries sit outside
     * torch.cuda.max_memory_allocated. How much that is gets printed. */
    size_t lib0 = gpu_free();
    struct opts w = o;
    w.batch = 1, w.seq = o.seq < 128 ? o.seq : 128, w.steps = 1, w.warmup = 0, w.profile = false;
    char first[64];
    snprintf(first, sizeof first, "%.*s", (int)strcspn(list, ","), list);
    if (run_variant(first, &w, true) == 0) {
        size_t lib1 = gpu_free();
        fprintf(stderr, "library warm-up (%s B 1 T %lld): %.2f GB stays with the CUDA libraries\n",
                first, (long long)w.seq, lib0 > lib1 ? (double)(lib0 - lib1) / 1e9 : 0.0);
    }
    for (char *save = NULL, *v = strtok_r(list, ",", &save); v; v = strtok_r(NULL, ",", &save))
        fails += run_variant(v, &o, false);
    return fails ? 1 : 0;
}
