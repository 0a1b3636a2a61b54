/* The CUDA backend against the CPU reference (label "gpu"; exit 77 = skipped without a GPU
 * or without a CUDA build).
 *
 * Every case runs an op (or a few) through the public ops (autograd/ops.h) on a CUDA ctx
 * and on a CPU ctx from the same inputs (for bf16 runs: the bf16-rounded values, so only
 * the kernels' own error is measured), builds loss = Σ f32(out)·R with a fixed random R,
 * runs backward, and compares the output and every input gradient:
 *   ‖gpu − cpu‖ / ‖cpu‖ <= 1e-5 for f32 (cuBLASLt in plain f32, no TF32), 2e-2 for bf16.
 * NaN or Inf where the CPU is finite always fails. Before each GPU run the ctx's arena is
 * filled with NaN bytes, so an output element a kernel forgets to write shows up.
 * Also: strided views, broadcasting, GQA/MQA/MLA/window/non-causal/T<S attention, the
 * GEMM contract (beta, shared C, stride 0) through the backend table, dtype conversions,
 * bitwise run-to-run determinism of the backward kernels, errors (f64, out of memory), and
 * whole tiny models (f32) giving the CPU's loss and parameter gradients; training: the fused
 * AdamW kernel and the device gradient norm against the CPU loops, AdamW steps of tiny models
 * on the GPU (f32, and bf16 compute with f32 masters) against the CPU's, and kvf_train on
 * cuda end to end (learning, val loss ≈ the CPU run's, checkpoint, resume); conversions: the
 * calibration moments collected on the GPU against the CPU's (1e-5), cuSOLVER eigh / SVD and
 * cuBLAS dgemm against LAPACKE / OpenBLAS (1e-9 in double), and `convert --device cuda` end to
 * end on the tiny-llama-mha fixture (val loss within 1e-3 of --device cpu). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/backend.h"
#include "autograd/context.h"
#include "autograd/ops.h"
#include "autograd/params.h"
#include "autograd/rng.h"
#include "autograd/tape.h"
#include "convert/calib.h"
#include "convert/convert.h"
#include "convert/linalg.h"
#include "data/fsutil.h"
#ifdef KVF_WITH_CUDA
#include "gpu/cudnn_attention.h"
#else /* a CPU-only build: the suite skips before anything calls these */
static int kvf_cudnn_enable(int on) {
    (void)on;
    return 0;
}
static int kvf_cudnn_available(int *version) {
    if (version) *version = 0;
    return 0;
}
static int64_t kvf_cudnn_set_ws_cap(int64_t bytes) {
    (void)bytes;
    return 0;
}
static int64_t kvf_cudnn_last_bwd_chunk(void) { return 0; }
#endif
#include "model/checkpoint.h"
#include "model/transformer.h"
#include "model/variant.h"
#include "optim/clip.h"
#include "optim/optimizer.h"
#include "train/trainer.h"

static kvf_ctx *g_cpu, *g_gpu;
static kvf_rng g_rng;

#define TOL_F32 1e-5
#define TOL_BF16 2e-2

/* ---- poisoning ------------------------------------------------------------------------------- */

#define POISON_BLOCK ((size_t)64 << 10)

/* Fill the GPU arena with 0xFF bytes (NaN for f32 and bf16), then rewind it: the next
 * arena tensors are carved from poisoned memory. */
static void poison(kvf_ctx *ctx) {
    static unsigned char *ff;
    if (!ff) {
        ff = malloc(POISON_BLOCK);
        memset(ff, 0xff, POISON_BLOCK);
    }
    const kvf_backend *be = kvf_ctx_backend(ctx);
    kvf_ctx_reset(ctx);
    if (kvf_ctx_arena_reserved(ctx) == 0) {
        kvf_ctx_alloc(ctx, 1);
        kvf_ctx_reset(ctx);
    }
    for (;;) {
        size_t before = kvf_ctx_arena_reserved(ctx);
        if (kvf_ctx_arena_used(ctx) + POISON_BLOCK > before) break;
        void *p = kvf_ctx_alloc(ctx, POISON_BLOCK);
        ck_assert_msg(p != NULL, "poison: %s", kvf_error_message());
        ck_assert_int_eq(be->upload(p, ff, POISON_BLOCK), KVF_OK);
        if (kvf_ctx_arena_reserved(ctx) != before) break; /* a new chunk: stop here */
    }
    kvf_ctx_reset(ctx);
}

/* ---- inputs ------------------------------------------------------------------------------------ */

enum in_kind { IN_FLOAT, IN_IDS, IN_POSITIVE };

struct spec {
    enum in_kind kind;
    int ndim;
    int64_t shape[4];
    int64_t vocab;     /* IN_IDS: values in [0, vocab) */
    int ignore_every;  /* IN_IDS: every k-th is -100 */
    bool same_id;      /* IN_IDS: every id the same (a long run in the embedding sort) */
    bool no_grad;
    double std;        /* IN_FLOAT: 0 → 1 */
};

struct host_in {
    int64_t n;
    float *f;
    int32_t *ids;
};

static int64_t spec_numel(const struct spec *s) {
    int64_t n = 1;
    for (int i = 0; i < s->ndim; i++) n *= s->shape[i];
    return n;
}

static float round_to(kvf_dtype dt, float v) {
    return dt == KVF_DTYPE_BF16 ? kvf_bf16_to_f32(kvf_f32_to_bf16(v)) : v;
}

static void make_inputs(int n, const struct spec *sp, struct host_in *h, kvf_dtype dt) {
    for (int i = 0; i < n; i++) {
        h[i].n = spec_numel(&sp[i]);
        h[i].f = NULL;
        h[i].ids = NULL;
        size_t m = (size_t)(h[i].n ? h[i].n : 1);
        if (sp[i].kind == IN_IDS) {
            h[i].ids = malloc(sizeof(int32_t) * m);
            int32_t same = (int32_t)kvf_rng_below(&g_rng, (uint64_t)sp[i].vocab);
            for (int64_t j = 0; j < h[i].n; j++) {
                h[i].ids[j] = sp[i].same_id ? same : (int32_t)kvf_rng_below(&g_rng, (uint64_t)sp[i].vocab);
                if (sp[i].ignore_every && j % sp[i].ignore_every == 1) h[i].ids[j] = -100;
            }
        } else {
            h[i].f = malloc(sizeof(float) * m);
            for (int64_t j = 0; j < h[i].n; j++) {
                double v = sp[i].kind == IN_POSITIVE ? 0.5 + 1.5 * kvf_rng_uniform(&g_rng)
                                                     : (sp[i].std > 0 ? sp[i].std : 1.0) * kvf_rng_normal(&g_rng);
                h[i].f[j] = round_to(dt, (float)v);
            }
        }
    }
}

static void free_inputs(int n, struct host_in *h) {
    for (int i = 0; i < n; i++) {
        free(h[i].f);
        free(h[i].ids);
    }
}

static kvf_tensor *upload_input(kvf_ctx *ctx, const struct spec *s, const struct host_in *h,
                                kvf_dtype dt) {
    if (s->kind == IN_IDS) return kvf_tensor_from_host(ctx, KVF_DTYPE_I32, s->ndim, s->shape, h->ids);
    if (dt == KVF_DTYPE_F32) return kvf_tensor_from_host(ctx, KVF_DTYPE_F32, s->ndim, s->shape, h->f);
    uint16_t *b = malloc(sizeof(uint16_t) * (size_t)(h->n ? h->n : 1));
    for (int64_t j = 0; j < h->n; j++) b[j] = kvf_f32_to_bf16(h->f[j]);
    kvf_tensor *t = kvf_tensor_from_host(ctx, KVF_DTYPE_BF16, s->ndim, s->shape, b);
    free(b);
    return t;
}

/* A tensor (any float dtype, contiguous) to host f32. */
static float *to_host_f32(const kvf_tensor *t) {
    int64_t n = kvf_tensor_numel(t);
    float *out = malloc(sizeof(float) * (size_t)(n ? n : 1));
    ck_assert_msg(kvf_tensor_is_contiguous(t), "to_host_f32: %s is not contiguous",
                  kvf_tensor_describe(t, (char[96]){0}, 96));
    if (t->dtype == KVF_DTYPE_F32) {
        ck_assert_msg(kvf_tensor_to_host(t, out, kvf_tensor_nbytes(t)) == KVF_OK, "%s",
                      kvf_error_message());
    } else {
        ck_assert_int_eq(t->dtype, KVF_DTYPE_BF16);
        uint16_t *b = malloc(sizeof(uint16_t) * (size_t)(n ? n : 1));
        ck_assert_msg(kvf_tensor_to_host(t, b, kvf_tensor_nbytes(t)) == KVF_OK, "%s",
                      kvf_error_message());
        for (int64_t j = 0; j < n; j++) out[j] = kvf_bf16_to_f32(b[j]);
        free(b);
    }
    return out;
}

/* ---- comparing --------------------------------------------------------------------------------- */

/* ‖g − c‖ / max(‖c‖, floor) (absolute when both are 0); +inf when g has a non-finite value
 * c does not. */
static double rel_err(const float *g, const float *c, int64_t n, double floor, int64_t *worst) {
    double num = 0, den = 0, wd = -1;
    *worst = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(g[i]) && isfinite(c[i])) {
            *worst = i;
            return INFINITY;
        }
        double d = (double)g[i] - (double)c[i];
        if (!isfinite(c[i])) d = (g[i] == c[i]) ? 0.0 : INFINITY;
        num += d * d;
        den += (double)c[i] * (double)c[i];
        if (fabs(d) > wd) {
            wd = fabs(d);
            *worst = i;
        }
    }
    if (!isfinite(num)) return INFINITY;
    den = sqrt(den);
    if (den < floor) den = floor;
    return den > 0 ? sqrt(num) / den : sqrt(num);
}

static bool check_close_floor(const char *name, const char *what, const float *g,
                              const float *c, int64_t n, double tol, double floor) {
    int64_t w;
    double e = rel_err(g, c, n, floor, &w);
    if (getenv("KVF_GPU_VERBOSE")) fprintf(stderr, "%s: %s: relative error %.3g\n", name, what, e);
    if (e <= tol) return true;
    fprintf(stderr, "%s: %s: relative error %.3g > %.3g (%lld elements; worst at %lld: gpu %.8g, "
            "cpu %.8g)\n", name, what, e, tol, (long long)n, (long long)w, n ? g[w] : 0.0,
            n ? c[w] : 0.0);
    return false;
}

static bool check_close(const char *name, const char *what, const float *g, const float *c,
                        int64_t n, double tol) {
    return check_close_floor(name, what, g, c, n, tol, 0.0);
}

static double norm2(const float *x, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * (double)x[i];
    return sqrt(s);
}

/* ---- one op on both backends ----------------------------------------------------------------- */

typedef kvf_tensor *(*op_fn)(kvf_ctx *ctx, kvf_tensor **in, void *ud);

#define MAX_IN 4

struct run_result {
    int64_t ny;
    float *y;
    float *grad[MAX_IN]; /* NULL for ids / no-grad inputs */
};

static void result_free(struct run_result *r) {
    free(r->y);
    for (int i = 0; i < MAX_IN; i++) free(r->grad[i]);
    memset(r, 0, sizeof *r);
}

/* Forward + backward of loss = Σ f32(f(in))·R on ctx, inputs in dt; R is drawn from seed
 * 4242 and rounded to rdt (the dtype compared, so that casting dy back to it is exact). */
static bool run_once(const char *name, kvf_ctx *ctx, op_fn f, void *ud, int n,
                     const struct spec *sp, const struct host_in *h, kvf_dtype dt,
                     kvf_dtype rdt, struct run_result *res) {
    memset(res, 0, sizeof *res);
    if (kvf_ctx_device(ctx) == KVF_DEVICE_CUDA) poison(ctx);
    else kvf_ctx_reset(ctx);
    kvf_ctx_set_grad(ctx, true);
    kvf_tensor *t[MAX_IN];
    for (int i = 0; i < n; i++) {
        t[i] = upload_input(ctx, &sp[i], &h[i], dt);
        if (!t[i]) {
            fprintf(stderr, "%s: input %d: %s\n", name, i, kvf_error_message());
            return false;
        }
        t[i]->requires_grad = sp[i].kind != IN_IDS && !sp[i].no_grad;
    }
    kvf_tensor *args[MAX_IN];
    memcpy(args, t, sizeof t);
    kvf_tensor *y = f(ctx, args, ud);
    kvf_tensor *yc = y ? kvf_cast(ctx, y, KVF_DTYPE_F32) : NULL;
    if (!yc) {
        fprintf(stderr, "%s on %s: forward failed: %s (%s)\n", name,
                kvf_device_name(kvf_ctx_device(ctx)), kvf_error_message(), kvf_error_location());
        kvf_error_clear();
        return false;
    }
    res->ny = kvf_tensor_numel(yc);
    float *R = malloc(sizeof(float) * (size_t)(res->ny ? res->ny : 1));
    kvf_rng rr;
    kvf_rng_init(&rr, 4242);
    for (int64_t i = 0; i < res->ny; i++) R[i] = round_to(rdt, (float)kvf_rng_normal(&rr));
    kvf_tensor *rt = kvf_tensor_from_host(ctx, KVF_DTYPE_F32, yc->ndim, yc->shape, R);
    free(R);
    kvf_tensor *loss = rt ? kvf_sum(ctx, kvf_mul(ctx, yc, rt), KVF_ALL_AXES, false) : NULL;
    if (!loss || kvf_backward(ctx, loss) != KVF_OK) {
        fprintf(stderr, "%s on %s: backward failed: %s (%s)\n", name,
                kvf_device_name(kvf_ctx_device(ctx)), kvf_error_message(), kvf_error_location());
        kvf_error_clear();
        return false;
    }
    res->y = to_host_f32(yc);
    for (int i = 0; i < n; i++) {
        if (!t[i]->requires_grad) continue;
        if (t[i]->grad) {
            res->grad[i] = to_host_f32(t[i]->grad);
        } else {
            res->grad[i] = calloc((size_t)(h[i].n ? h[i].n : 1), sizeof(float));
        }
    }
    return true;
}

/* GPU (dtype dt) against CPU (f32) on the same inputs; tol 0 picks the default. The
 * output's error is relative to max(‖cpu output‖, out_floor): a sum that cancels to near 0
 * is compared at the scale of its terms (summation order differs between the backends). */
static bool compare_op_floor(const char *name, op_fn f, void *ud, int n, const struct spec *sp,
                             kvf_dtype dt, double tol, double out_floor) {
    if (tol <= 0) tol = dt == KVF_DTYPE_F32 ? TOL_F32 : TOL_BF16;
    char full[160];
    snprintf(full, sizeof full, "%s [%s]", name, kvf_dtype_name(dt));
    struct host_in h[MAX_IN];
    make_inputs(n, sp, h, dt);
    struct run_result c = {0}, g = {0};
    bool ok = run_once(full, g_cpu, f, ud, n, sp, h, KVF_DTYPE_F32, dt, &c) &&
              run_once(full, g_gpu, f, ud, n, sp, h, dt, dt, &g);
    if (ok) {
        ok = c.ny == g.ny && check_close_floor(full, "output", g.y, c.y, c.ny, tol, out_floor);
        for (int i = 0; i < n && ok; i++) {
            if (!c.grad[i]) continue;
            char what[32];
            snprintf(what, sizeof what, "grad of input %d", i);
            ok = check_close(full, what, g.grad[i], c.grad[i], h[i].n, tol);
        }
    }
    result_free(&c);
    result_free(&g);
    free_inputs(n, h);
    return ok;
}

static bool compare_op(const char *name, op_fn f, void *ud, int n, const struct spec *sp,
                       kvf_dtype dt, double tol) {
    return compare_op_floor(name, f, ud, n, sp, dt, tol, 0.0);
}

static const kvf_dtype DTYPES[2] = {KVF_DTYPE_F32, KVF_DTYPE_BF16};

#define SPEC_F(...) {.kind = IN_FLOAT, .ndim = (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), .shape = {__VA_ARGS__}}
#define SPEC_P(...) {.kind = IN_POSITIVE, .ndim = (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), .shape = {__VA_ARGS__}}

/* ---- matmul ------------------------------------------------------------------------------------ */

struct mm_case {
    const char *name;
    bool ta, tb;
    struct spec a, b;
};

static kvf_tensor *f_matmul(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    const struct mm_case *c = ud;
    return kvf_matmul(ctx, in[0], in[1], c->ta, c->tb);
}

static const struct mm_case mm_cases[] = {
    {"linear 3x5x7 · 7x9", false, false, SPEC_F(3, 5, 7), SPEC_F(7, 9)},
    {"linear Bᵀ 4x6 · (8x6)ᵀ", false, true, SPEC_F(4, 6), SPEC_F(8, 6)},
    {"batched 2x5x7 · 2x7x9", false, false, SPEC_F(2, 5, 7), SPEC_F(2, 7, 9)},
    {"Aᵀ shared B (stride 0) 3x(7x5)ᵀ · 7x9", true, false, SPEC_F(3, 7, 5), SPEC_F(7, 9)},
    {"Aᵀ Bᵀ 4-D 2x3x(6x5)ᵀ · 2x3x(4x6)ᵀ", true, true, SPEC_F(2, 3, 6, 5), SPEC_F(2, 3, 4, 6)},
    {"odd 33x129 · 129x65", false, false, SPEC_F(33, 129), SPEC_F(129, 65)},
    {"tall 2x100x64 · (96x64)ᵀ", false, true, SPEC_F(2, 100, 64), SPEC_F(96, 64)},
    {"vector 1x17 · 17x1", false, false, SPEC_F(1, 17), SPEC_F(17, 1)},
};

START_TEST(matmul_vs_cpu) {
    const struct mm_case *c = &mm_cases[_i];
    struct spec sp[2] = {c->a, c->b};
    for (int d = 0; d < 2; d++)
        ck_assert_msg(compare_op(c->name, f_matmul, (void *)c, 2, sp, DTYPES[d], 0), "%s", c->name);
}
END_TEST

/* r + a·op(b) with the add in cuBLASLt's epilogue (C input ≠ output), and an r the
 * epilogue does not take (broadcast: matmul then add) */
static kvf_tensor *f_matmul_add(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    const struct mm_case *c = ud;
    return kvf_matmul_add(ctx, in[2], in[0], in[1], c->tb);
}

static const struct mm_case mma_cases[] = {
    {"residual 2x100x64 + ·(96x64)ᵀ", false, true, SPEC_F(2, 100, 64), SPEC_F(96, 64)},
    {"residual odd 33x129 + ·129x65", false, false, SPEC_F(33, 129), SPEC_F(129, 65)},
    {"broadcast r [9] + 3x5x7 · (9x7)ᵀ", false, true, SPEC_F(3, 5, 7), SPEC_F(9, 7)},
};

START_TEST(matmul_add_vs_cpu) {
    const struct mm_case *c = &mma_cases[_i];
    int64_t n = c->tb ? c->b.shape[0] : c->b.shape[1];
    struct spec r = c->a;
    if (_i == 2) r = (struct spec)SPEC_F(n);
    else r.shape[r.ndim - 1] = n;
    struct spec sp[3] = {c->a, c->b, r};
    for (int d = 0; d < 2; d++)
        ck_assert_msg(compare_op(c->name, f_matmul_add, (void *)c, 3, sp, DTYPES[d], 0), "%s", c->name);
}
END_TEST

/* ---- elementwise ------------------------------------------------------------------------------- */

enum ew_op { EW_ADD, EW_SUB, EW_MUL, EW_DIV, EW_SCALE, EW_EXP, EW_LOG, EW_SILU, EW_GELU_T, EW_GELU_E,
             EW_SWIGLU, EW_SWIGLU_PACKED, EW_MUL_PERM, EW_ADD_SLICE, EW_UNARY_PERM };

struct ew_case {
    const char *name;
    enum ew_op op;
    int n;
    struct spec in[2];
};

static kvf_tensor *f_ew(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    const struct ew_case *c = ud;
    switch (c->op) {
    case EW_ADD: return kvf_add(ctx, in[0], in[1]);
    case EW_SUB: return kvf_sub(ctx, in[0], in[1]);
    case EW_MUL: return kvf_mul(ctx, in[0], in[1]);
    case EW_DIV: return kvf_div(ctx, in[0], in[1]);
    case EW_SCALE: return kvf_scale(ctx, in[0], -0.7);
    case EW_EXP: return kvf_exp(ctx, in[0]);
    case EW_LOG: return kvf_log(ctx, in[0]);
    case EW_SILU: return kvf_silu(ctx, in[0]);
    case EW_GELU_T: return kvf_gelu(ctx, in[0], KVF_GELU_TANH);
    case EW_GELU_E: return kvf_gelu(ctx, in[0], KVF_GELU_ERF);
    case EW_SWIGLU: return kvf_swiglu(ctx, in[0], in[1]);
    case EW_SWIGLU_PACKED: return kvf_swiglu_packed(ctx, in[0]);
    case EW_MUL_PERM: /* strided a (a transposed view) times a broadcast b */
        return kvf_mul(ctx, kvf_transpose(ctx, in[0], 0, 2), in[1]);
    case EW_ADD_SLICE: /* a column slice (strided rows) plus a row vector */
        return kvf_add(ctx, kvf_slice(ctx, in[0], 1, 3, 17), in[1]);
    case EW_UNARY_PERM: return kvf_silu(ctx, kvf_permute(ctx, in[0], (int[]){2, 0, 1}));
    }
    return NULL;
}

static const struct ew_case ew_cases[] = {
    {"add broadcast [4,5,6]+[6]", EW_ADD, 2, {SPEC_F(4, 5, 6), SPEC_F(6)}},
    {"sub broadcast [3,1,5]-[4,5]", EW_SUB, 2, {SPEC_F(3, 1, 5), SPEC_F(4, 5)}},
    {"mul broadcast [2,3,4,5]*[2,1,4,1]", EW_MUL, 2, {SPEC_F(2, 3, 4, 5), SPEC_F(2, 1, 4, 1)}},
    {"div [7,33]/[7,1]", EW_DIV, 2, {SPEC_F(7, 33), SPEC_P(7, 1)}},
    {"add same shape [1000,37]", EW_ADD, 2, {SPEC_F(1000, 37), SPEC_F(1000, 37)}},
    {"scale [5,37]", EW_SCALE, 1, {SPEC_F(5, 37)}},
    {"exp [5,37]", EW_EXP, 1, {SPEC_F(5, 37)}},
    {"log [5,37]", EW_LOG, 1, {SPEC_P(5, 37)}},
    {"silu [5,37]", EW_SILU, 1, {SPEC_F(5, 37)}},
    {"gelu tanh [5,37]", EW_GELU_T, 1, {SPEC_F(5, 37)}},
    {"gelu erf [5,37]", EW_GELU_E, 1, {SPEC_F(5, 37)}},
    {"swiglu [5,77]", EW_SWIGLU, 2, {SPEC_F(5, 77), SPEC_F(5, 77)}},
    {"swiglu [3,1000]", EW_SWIGLU, 2, {SPEC_F(3, 1000), SPEC_F(3, 1000)}},
    {"swiglu packed [3,5,256] (words)", EW_SWIGLU_PACKED, 1, {SPEC_F(3, 5, 256)}},
    {"swiglu packed [4,38] (elements)", EW_SWIGLU_PACKED, 1, {SPEC_F(4, 38)}},
    {"mul transposed [6,5,4]ᵀ*[4,5,1]", EW_MUL_PERM, 2, {SPEC_F(6, 5, 4), SPEC_F(4, 5, 1)}},
    {"add slice [9,31][:,3:20]+[17]", EW_ADD_SLICE, 2, {SPEC_F(9, 31), SPEC_F(17)}},
    {"silu permuted [3,4,5]", EW_UNARY_PERM, 1, {SPEC_F(3, 4, 5)}},
};

START_TEST(elementwise_vs_cpu) {
    const struct ew_case *c = &ew_cases[_i];
    for (int d = 0; d < 2; d++)
        ck_assert_msg(compare_op(c->name, f_ew, (void *)c, c->n, c->in, DTYPES[d], 0), "%s", c->name);
}
END_TEST

/* ---- views, copies, reductions ---------------------------------------------------------------- */

enum rv_op { RV_SUM0, RV_SUM_LAST, RV_SUM_MID, RV_SUM_ALL, RV_MEAN, RV_CONTIG_PERM, RV_CONCAT,
             RV_SUM_PERM, RV_SPLIT_CAT, RV_SPLIT_CAT_ODD, RV_SPLIT_PART };

struct rv_case {
    const char *name;
    enum rv_op op;
    int n;
    struct spec in[2];
};

static kvf_tensor *f_rv(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    const struct rv_case *c = ud;
    switch (c->op) {
    case RV_SUM0: return kvf_sum(ctx, in[0], 0, false);
    case RV_SUM_LAST: return kvf_sum(ctx, in[0], -1, true);
    case RV_SUM_MID: return kvf_sum(ctx, in[0], 1, false);
    case RV_SUM_ALL: return kvf_sum(ctx, in[0], KVF_ALL_AXES, false);
    case RV_MEAN: return kvf_mean(ctx, in[0], -1, false);
    case RV_CONTIG_PERM: return kvf_contiguous(ctx, kvf_permute(ctx, in[0], (int[]){3, 1, 0, 2}));
    case RV_CONCAT: {
        kvf_tensor *xs[3] = {in[0], in[1], in[0]};
        return kvf_concat(ctx, xs, 3, 1);
    }
    case RV_SUM_PERM: return kvf_sum(ctx, kvf_transpose(ctx, in[0], 0, 1), 0, false);
    /* head-slices as MLA takes them: 16-byte-aligned rows (the word kernels), an odd split
     * (the element kernels), a piece left unused (slices add into a zeroed gradient) */
    case RV_SPLIT_CAT:
    case RV_SPLIT_CAT_ODD: {
        kvf_tensor *p[2];
        int64_t a = c->op == RV_SPLIT_CAT ? 64 : 63;
        if (kvf_split(ctx, in[0], 3, (int64_t[]){a, 96 - a}, 2, p) != KVF_OK) return NULL;
        kvf_tensor *xs[3] = {p[1], p[0], p[1]};
        return kvf_concat(ctx, xs, 3, 3);
    }
    case RV_SPLIT_PART: {
        kvf_tensor *p[3];
        if (kvf_split(ctx, in[0], 3, (int64_t[]){32, 32, 32}, 3, p) != KVF_OK) return NULL;
        return kvf_add(ctx, p[0], kvf_mul(ctx, p[2], p[2]));
    }
    }
    return NULL;
}

static const struct rv_case rv_cases[] = {
    {"sum axis 0 [300,7]", RV_SUM0, 1, {SPEC_F(300, 7)}},
    {"sum axis 0 [20000,3] (chunked)", RV_SUM0, 1, {SPEC_F(20000, 3)}},
    {"sum axis 0 [64,4096]", RV_SUM0, 1, {SPEC_F(64, 4096)}},
    {"sum last [7,300]", RV_SUM_LAST, 1, {SPEC_F(7, 300)}},
    {"sum last [3,100000] (chunked)", RV_SUM_LAST, 1, {SPEC_F(3, 100000)}},
    {"sum mid [4,50,6]", RV_SUM_MID, 1, {SPEC_F(4, 50, 6)}},
    {"sum all [1000,3]", RV_SUM_ALL, 1, {SPEC_F(1000, 3)}},
    {"sum all [200003]", RV_SUM_ALL, 1, {SPEC_F(200003)}},
    {"sum of transposed [40,30]", RV_SUM_PERM, 1, {SPEC_F(40, 30)}},
    {"mean last [9,13]", RV_MEAN, 1, {SPEC_F(9, 13)}},
    {"contiguous of permuted [2,3,4,5]", RV_CONTIG_PERM, 1, {SPEC_F(2, 3, 4, 5)}},
    {"concat axis 1", RV_CONCAT, 2, {SPEC_F(3, 4, 5), SPEC_F(3, 2, 5)}},
    {"split 64/32 + concat [2,5,3,96]", RV_SPLIT_CAT, 1, {SPEC_F(2, 5, 3, 96)}},
    {"split 63/33 + concat [2,5,3,96]", RV_SPLIT_CAT_ODD, 1, {SPEC_F(2, 5, 3, 96)}},
    {"split 32/32/32, middle unused [2,5,3,96]", RV_SPLIT_PART, 1, {SPEC_F(2, 5, 3, 96)}},
};

START_TEST(views_reductions_vs_cpu) {
    const struct rv_case *c = &rv_cases[_i];
    /* a full sum of n unit normals has spread √n: its error is measured at that scale */
    int64_t n = 1;
    for (int i = 0; i < c->in[0].ndim; i++) n *= c->in[0].shape[i];
    double floor = c->op == RV_SUM_ALL ? sqrt((double)n) : 0.0;
    for (int d = 0; d < 2; d++)
        ck_assert_msg(compare_op_floor(c->name, f_rv, (void *)c, c->n, c->in, DTYPES[d], 0, floor), "%s",
                      c->name);
}
END_TEST

/* ---- norms, softmax ------------------------------------------------------------------------------ */

enum nm_op { NM_SOFTMAX, NM_RMS, NM_RMS_NOW, NM_LN, NM_LN_NOWB };

struct nm_case {
    const char *name;
    enum nm_op op;
    int n;
    struct spec in[3];
};

static kvf_tensor *f_nm(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    const struct nm_case *c = ud;
    switch (c->op) {
    case NM_SOFTMAX: return kvf_softmax(ctx, in[0]);
    case NM_RMS: return kvf_rmsnorm(ctx, in[0], in[1], 1e-5);
    case NM_RMS_NOW: return kvf_rmsnorm(ctx, in[0], NULL, 1e-6);
    case NM_LN: return kvf_layernorm(ctx, in[0], in[1], in[2], 1e-5);
    case NM_LN_NOWB: return kvf_layernorm(ctx, in[0], NULL, NULL, 1e-5);
    }
    return NULL;
}

static const struct nm_case nm_cases[] = {
    {"softmax [7,33]", NM_SOFTMAX, 1, {SPEC_F(7, 33)}},
    {"softmax [3,2000]", NM_SOFTMAX, 1, {SPEC_F(3, 2000)}},
    {"rmsnorm [9,70]", NM_RMS, 2, {SPEC_F(9, 70), SPEC_F(70)}},
    {"rmsnorm [4,3,1500]", NM_RMS, 2, {SPEC_F(4, 3, 1500), SPEC_F(1500)}},
    {"rmsnorm [700,64] (dw chunks)", NM_RMS, 2, {SPEC_F(700, 64), SPEC_F(64)}},
    {"rmsnorm no w [5,31]", NM_RMS_NOW, 1, {SPEC_F(5, 31)}},
    {"layernorm [9,70]", NM_LN, 3, {SPEC_F(9, 70), SPEC_F(70), SPEC_F(70)}},
    {"layernorm [300,257]", NM_LN, 3, {SPEC_F(300, 257), SPEC_F(257), SPEC_F(257)}},
    {"layernorm no w, b [6,100]", NM_LN_NOWB, 1, {SPEC_F(6, 100)}},
};

START_TEST(norms_vs_cpu) {
    const struct nm_case *c = &nm_cases[_i];
    for (int d = 0; d < 2; d++)
        ck_assert_msg(compare_op(c->name, f_nm, (void *)c, c->n, c->in, DTYPES[d], 0), "%s", c->name);
}
END_TEST

/* ---- RoPE --------------------------------------------------------------------------------------- */

struct rope_case {
    const char *name;
    int64_t B, T, H, D, F;
    kvf_rope_layout layout;
    bool per_head, with_pos;
};

static kvf_tensor *f_rope(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    const struct rope_case *c = ud;
    kvf_tensor *freq = c->per_head ? in[1] : kvf_rope_inv_freq(ctx, 2 * c->F, 10000.0);
    kvf_tensor *pos = c->with_pos ? in[c->per_head ? 2 : 1] : NULL;
    return kvf_rope(ctx, in[0], pos, freq, c->layout);
}

/* The same rotation in place over a fresh copy of x (the model's Q and K projections). */
static kvf_tensor *f_rope_inplace(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    const struct rope_case *c = ud;
    kvf_tensor *freq = c->per_head ? in[1] : kvf_rope_inv_freq(ctx, 2 * c->F, 10000.0);
    kvf_tensor *pos = c->with_pos ? in[c->per_head ? 2 : 1] : NULL;
    return kvf_rope_inplace(ctx, kvf_scale(ctx, in[0], 1.0), pos, freq, c->layout);
}

/* In place over heads [1, H − 1) of a fresh copy (the q of a fused q/k/v projection: no copy). */
static kvf_tensor *f_rope_inplace_heads(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    const struct rope_case *c = ud;
    kvf_tensor *freq = kvf_rope_inv_freq(ctx, 2 * c->F, 10000.0);
    kvf_tensor *pos = c->with_pos ? in[1] : NULL;
    kvf_tensor *sl = kvf_slice(ctx, kvf_scale(ctx, in[0], 1.0), 2, 1, c->H - 2);
    return kvf_rope_inplace(ctx, sl, pos, freq, c->layout);
}

/* In place over the last 2F dims of each head (MLA's q), when 2F < D. */
static kvf_tensor *f_rope_inplace_at(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    const struct rope_case *c = ud;
    kvf_tensor *freq = c->per_head ? in[1] : kvf_rope_inv_freq(ctx, 2 * c->F, 10000.0);
    kvf_tensor *pos = c->with_pos ? in[c->per_head ? 2 : 1] : NULL;
    return kvf_rope_inplace_at(ctx, kvf_scale(ctx, in[0], 1.0), c->D - 2 * c->F, pos, freq, c->layout);
}

static const struct rope_case rope_cases[] = {
    {"half full [2,5,3,8]", 2, 5, 3, 8, 4, KVF_ROPE_HALF, false, false},
    {"interleaved full [2,5,3,8]", 2, 5, 3, 8, 4, KVF_ROPE_INTERLEAVED, false, false},
    {"half partial F=2 of D=10", 1, 7, 2, 10, 2, KVF_ROPE_HALF, false, false},
    {"interleaved partial F=3 of D=9", 2, 4, 3, 9, 3, KVF_ROPE_INTERLEAVED, false, false},
    {"per-head [H,F] table", 2, 6, 4, 12, 3, KVF_ROPE_HALF, true, false},
    {"positions given (large)", 1, 9, 2, 16, 8, KVF_ROPE_HALF, false, true},
    {"per-head + positions interleaved", 2, 5, 3, 8, 2, KVF_ROPE_INTERLEAVED, true, true},
    {"head 128 x 64 positions", 2, 64, 4, 128, 64, KVF_ROPE_HALF, false, false},
    {"MLA q: last 32 of 96, interleaved", 2, 16, 3, 96, 16, KVF_ROPE_INTERLEAVED, false, false},
    {"MLA q: last 32 of 96, half", 2, 16, 3, 96, 16, KVF_ROPE_HALF, false, false},
};

START_TEST(rope_vs_cpu) {
    const struct rope_case *c = &rope_cases[_i];
    struct spec sp[3] = {SPEC_F(c->B, c->T, c->H, c->D)};
    int n = 1;
    if (c->per_head) {
        sp[n] = (struct spec)SPEC_P(c->H, c->F);
        sp[n++].no_grad = true;
    }
    if (c->with_pos) sp[n++] = (struct spec){.kind = IN_IDS, .ndim = 1, .shape = {c->T}, .vocab = 40000};
    for (int d = 0; d < 2; d++) {
        ck_assert_msg(compare_op(c->name, f_rope, (void *)c, n, sp, DTYPES[d], 0), "%s", c->name);
        ck_assert_msg(compare_op(c->name, f_rope_inplace, (void *)c, n, sp, DTYPES[d], 0),
                      "%s (in place)", c->name);
        if (c->H >= 3 && !c->per_head)
            ck_assert_msg(compare_op(c->name, f_rope_inplace_heads, (void *)c, n, sp, DTYPES[d], 0),
                          "%s (in place, heads slice)", c->name);
        if (2 * c->F < c->D)
            ck_assert_msg(compare_op(c->name, f_rope_inplace_at, (void *)c, n, sp, DTYPES[d], 0),
                          "%s (in place, last 2F dims)", c->name);
    }
}
END_TEST

/* ---- attention ----------------------------------------------------------------------------------- */

enum attn_form { FORM_PLAIN, FORM_FUSED, FORM_KV, FORM_SELF, FORM_PERMUTE, FORM_TAIL };

struct attn_case {
    const char *name;
    int64_t B, T, S, Hq, Hkv, Dk, Dv;
    bool causal;
    int64_t window;
    enum attn_form form;
};

static kvf_tensor *f_attn(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    const struct attn_case *c = ud;
    kvf_attn_cfg cfg = {.scale = (float)(1.0 / sqrt((double)c->Dk)), .causal = c->causal,
                        .window = c->window};
    switch (c->form) {
    case FORM_FUSED: {
        kvf_tensor *q = kvf_slice(ctx, in[0], 2, 0, c->Hq);
        kvf_tensor *k = kvf_slice(ctx, in[0], 2, c->Hq, c->Hkv);
        kvf_tensor *v = kvf_slice(ctx, in[0], 2, c->Hq + c->Hkv, c->Hkv);
        return kvf_attention(ctx, q, k, v, &cfg);
    }
    case FORM_KV: return kvf_attention(ctx, in[0], in[1], in[1], &cfg);
    case FORM_SELF: return kvf_attention(ctx, in[0], in[0], in[0], &cfg);
    case FORM_PERMUTE: {
        int perm[4] = {0, 1, 3, 2};
        return kvf_attention(ctx, kvf_permute(ctx, in[0], perm), kvf_permute(ctx, in[1], perm),
                             kvf_permute(ctx, in[2], perm), &cfg);
    }
    case FORM_TAIL:
        return kvf_attention(ctx, kvf_slice(ctx, in[0], 1, c->S - c->T, c->T), in[1], in[2], &cfg);
    default: return kvf_attention(ctx, in[0], in[1], in[2], &cfg);
    }
}

static const struct attn_case attn_cases[] = {
    {"MHA causal D16", 2, 17, 17, 3, 3, 16, 16, true, 0, FORM_PLAIN},
    {"GQA 4/2 causal D8", 2, 19, 19, 4, 2, 8, 8, true, 0, FORM_PLAIN},
    {"MQA 4/1 causal D24", 1, 33, 33, 4, 1, 24, 24, true, 0, FORM_PLAIN},
    {"MLA Dk96 Dv64", 1, 70, 70, 2, 2, 96, 64, true, 0, FORM_PLAIN},
    {"MLA Dk192 Dv128 GQA", 1, 40, 40, 4, 2, 192, 128, true, 0, FORM_PLAIN},
    {"D64 several tiles", 1, 130, 130, 2, 1, 64, 64, true, 0, FORM_PLAIN},
    {"D128 odd T", 2, 67, 67, 2, 2, 128, 128, true, 0, FORM_PLAIN},
    {"D256", 1, 37, 37, 2, 1, 256, 256, true, 0, FORM_PLAIN},
    {"window 5", 2, 29, 29, 2, 1, 16, 16, true, 5, FORM_PLAIN},
    {"window 70 several tiles", 1, 200, 200, 2, 2, 32, 32, true, 70, FORM_PLAIN},
    {"non-causal T9 S23", 2, 9, 23, 2, 2, 16, 8, false, 0, FORM_PLAIN},
    {"non-causal long S", 1, 5, 300, 2, 1, 32, 48, false, 0, FORM_PLAIN},
    {"causal T<S (queries at the end)", 1, 5, 77, 2, 2, 16, 16, true, 0, FORM_PLAIN},
    {"causal T<S window", 2, 9, 100, 4, 2, 8, 8, true, 12, FORM_PLAIN},
    {"odd dims Dk5 Dv3", 2, 11, 11, 3, 1, 5, 3, true, 0, FORM_PLAIN},
    {"fused qkv slices (strided)", 2, 13, 13, 4, 2, 16, 16, true, 0, FORM_FUSED},
    {"k = v (one tensor)", 1, 21, 21, 2, 2, 16, 16, true, 0, FORM_KV},
    {"q = k = v (one tensor)", 2, 15, 15, 2, 2, 24, 24, true, 0, FORM_SELF},
    {"permuted q/k/v (copied)", 1, 12, 12, 2, 2, 8, 8, true, 0, FORM_PERMUTE},
    {"q a row slice (strided rows)", 1, 7, 30, 2, 1, 16, 16, true, 0, FORM_TAIL},
    /* head dims of the bf16 tensor-core path (f32 runs take the SIMT kernels) */
    {"mma D64 non-causal T70 S150", 2, 70, 150, 2, 1, 64, 64, false, 0, FORM_PLAIN},
    {"mma D32 causal T<S", 1, 40, 100, 4, 2, 32, 32, true, 0, FORM_PLAIN},
    {"mma D64 window 40", 1, 150, 150, 2, 2, 64, 64, true, 40, FORM_PLAIN},
    {"mma D64 window 40 T<S", 1, 50, 170, 2, 1, 64, 64, true, 40, FORM_PLAIN},
    {"mma D128 GQA 8/2", 1, 129, 129, 8, 2, 128, 128, true, 0, FORM_PLAIN},
    {"mma D96/64 MQA", 2, 33, 33, 4, 1, 96, 64, true, 0, FORM_PLAIN},
    {"mma D64 fused qkv slices", 2, 77, 77, 4, 2, 64, 64, true, 0, FORM_FUSED},
    {"mma D64 q = k = v", 1, 65, 65, 2, 2, 64, 64, true, 0, FORM_SELF},
    {"mma D32 k = v", 1, 31, 31, 2, 1, 32, 32, true, 0, FORM_KV},
    {"mma D64 q a row slice", 1, 20, 90, 2, 2, 64, 64, true, 0, FORM_TAIL},
};

START_TEST(attention_vs_cpu) {
    const struct attn_case *c = &attn_cases[_i];
    struct spec sp[3];
    int n = 3;
    switch (c->form) {
    case FORM_FUSED:
        sp[0] = (struct spec)SPEC_F(c->B, c->T, c->Hq + 2 * c->Hkv, c->Dk);
        n = 1;
        break;
    case FORM_KV:
        sp[0] = (struct spec)SPEC_F(c->B, c->T, c->Hq, c->Dk);
        sp[1] = (struct spec)SPEC_F(c->B, c->S, c->Hkv, c->Dk);
        n = 2;
        break;
    case FORM_SELF:
        sp[0] = (struct spec)SPEC_F(c->B, c->T, c->Hq, c->Dk);
        n = 1;
        break;
    case FORM_PERMUTE:
        sp[0] = (struct spec)SPEC_F(c->B, c->T, c->Dk, c->Hq);
        sp[1] = (struct spec)SPEC_F(c->B, c->S, c->Dk, c->Hkv);
        sp[2] = (struct spec)SPEC_F(c->B, c->S, c->Dv, c->Hkv);
        break;
    case FORM_TAIL:
        sp[0] = (struct spec)SPEC_F(c->B, c->S, c->Hq, c->Dk);
        sp[1] = (struct spec)SPEC_F(c->B, c->S, c->Hkv, c->Dk);
        sp[2] = (struct spec)SPEC_F(c->B, c->S, c->Hkv, c->Dv);
        break;
    default:
        sp[0] = (struct spec)SPEC_F(c->B, c->T, c->Hq, c->Dk);
        sp[1] = (struct spec)SPEC_F(c->B, c->S, c->Hkv, c->Dk);
        sp[2] = (struct spec)SPEC_F(c->B, c->S, c->Hkv, c->Dv);
    }
    /* bf16 runs cuDNN's fused attention where it loads and takes the shape, else the own
     * kernels: both against the CPU */
    for (int d = 0; d < 2; d++)
        for (int cudnn = 1; cudnn >= 0; cudnn--) {
            int was = kvf_cudnn_enable(cudnn);
            bool ok = compare_op(c->name, f_attn, (void *)c, n, sp, DTYPES[d], 0);
            kvf_cudnn_enable(was);
            ck_assert_msg(ok, "%s (%s)", c->name, cudnn ? "cuDNN where it applies" : "own kernels");
        }
}
END_TEST

/* cuDNN's deterministic backward run in batch chunks (its workspace over the cap) gives the
 * bits of one call over the whole batch. */
START_TEST(cudnn_backward_chunked) {
    if (!kvf_cudnn_available(NULL)) {
        printf("cudnn_backward_chunked: cuDNN not loaded: skipped\n");
        return;
    }
    const struct attn_case c = {"chunked", 4, 128, 128, 4, 2, 64, 64, true, 0, FORM_PLAIN};
    struct spec sp[3] = {SPEC_F(c.B, c.T, c.Hq, c.Dk), SPEC_F(c.B, c.S, c.Hkv, c.Dk),
                         SPEC_F(c.B, c.S, c.Hkv, c.Dv)};
    struct host_in h[3];
    make_inputs(3, sp, h, KVF_DTYPE_BF16);
    struct run_result r[2];
    int64_t chunks[2];
    for (int i = 0; i < 2; i++) {
        int64_t old = kvf_cudnn_set_ws_cap(i ? 1 : (int64_t)1 << 40);
        ck_assert(run_once("chunked", g_gpu, f_attn, (void *)&c, 3, sp, h, KVF_DTYPE_BF16, KVF_DTYPE_BF16, &r[i]));
        chunks[i] = kvf_cudnn_last_bwd_chunk();
        kvf_cudnn_set_ws_cap(old);
    }
    ck_assert_int_eq(chunks[0], c.B);
    ck_assert_int_eq(chunks[1], 1);
    ck_assert(memcmp(r[0].y, r[1].y, sizeof(float) * (size_t)r[0].ny) == 0);
    for (int i = 0; i < 3; i++)
        ck_assert_msg(memcmp(r[0].grad[i], r[1].grad[i], sizeof(float) * (size_t)h[i].n) == 0,
                      "gradient of input %d differs when the batch is chunked", i);
    result_free(&r[0]);
    result_free(&r[1]);
    free_inputs(3, h);
}
END_TEST

/* Where the GPU scripts say cuDNN is installed (KVF_EXPECT_CUDNN=1), it must load, so the
 * attention checks above ran it rather than falling back quietly. */
START_TEST(cudnn_loads) {
    int version = 0;
    int ok = kvf_cudnn_available(&version);
    printf("cuDNN: %s (version %d)\n", ok ? "loaded" : "not loaded", version);
    const char *want = getenv("KVF_EXPECT_CUDNN");
    if (want && !strcmp(want, "1")) ck_assert_msg(ok, "cuDNN did not load (libcudnn.so.9 on LD_LIBRARY_PATH?)");
}
END_TEST

/* ---- cross-entropy, embedding ---------------------------------------------------------------------- */

struct ce_case {
    const char *name;
    int64_t N, V;
    int ignore_every;
    double std; /* of the logits; 0: 3 */
};

static kvf_tensor *f_ce(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    (void)ud;
    return kvf_cross_entropy(ctx, in[0], in[1], -100);
}

static const struct ce_case ce_cases[] = {
    {"[37,50] with ignored rows", 37, 50, 5, 0},
    {"[300,5000]", 300, 5000, 0, 0},
    {"[4,70000] (long rows)", 4, 70000, 3, 0},
    /* logits of std 1: with 3 classes and std 3 the loss can be ~0.005, a difference of
     * two terms near 5 whose f32 rounding alone is a relative 1e-5 of it */
    {"[2,3]", 2, 3, 0, 1.0},
};

START_TEST(cross_entropy_vs_cpu) {
    const struct ce_case *c = &ce_cases[_i];
    struct spec sp[2] = {SPEC_F(c->N, c->V),
                         {.kind = IN_IDS, .ndim = 1, .shape = {c->N}, .vocab = c->V,
                          .ignore_every = c->ignore_every}};
    sp[0].std = c->std > 0 ? c->std : 3.0;
    for (int d = 0; d < 2; d++)
        ck_assert_msg(compare_op(c->name, f_ce, (void *)c, 2, sp, DTYPES[d], 0), "%s", c->name);
}
END_TEST

START_TEST(cross_entropy_all_ignored) {
    /* every target ignored: loss 0, gradient 0 (on both backends) */
    struct spec sp[2] = {SPEC_F(6, 10),
                         {.kind = IN_IDS, .ndim = 1, .shape = {6}, .vocab = 10, .ignore_every = 1}};
    struct host_in h[2];
    make_inputs(2, sp, h, KVF_DTYPE_F32);
    for (int j = 0; j < 6; j++) h[1].ids[j] = -100;
    struct run_result g;
    ck_assert(run_once("ce all ignored", g_gpu, f_ce, NULL, 2, sp, h, KVF_DTYPE_F32, KVF_DTYPE_F32, &g));
    ck_assert(g.y[0] == 0.0f);
    for (int j = 0; j < 60; j++) ck_assert(g.grad[0][j] == 0.0f);
    result_free(&g);
    free_inputs(2, h);
}
END_TEST

struct emb_case {
    const char *name;
    int64_t V, C, B, T;
    bool same;
};

static kvf_tensor *f_emb(kvf_ctx *ctx, kvf_tensor **in, void *ud) {
    (void)ud;
    return kvf_embedding(ctx, in[0], in[1]);
}

static const struct emb_case emb_cases[] = {
    {"[50,24] ids [4,33]", 50, 24, 4, 33, false},
    {"[7,300] ids [3,100] (many repeats)", 7, 300, 3, 100, false},
    {"one id repeated 2000 times", 1000, 40, 2, 1000, true},
    {"[5000,64] ids [8,128]", 5000, 64, 8, 128, false},
};

START_TEST(embedding_vs_cpu) {
    const struct emb_case *c = &emb_cases[_i];
    struct spec sp[2] = {SPEC_F(c->V, c->C),
                         {.kind = IN_IDS, .ndim = 2, .shape = {c->B, c->T}, .vocab = c->V,
                          .same_id = c->same}};
    for (int d = 0; d < 2; d++)
        ck_assert_msg(compare_op(c->name, f_emb, (void *)c, 2, sp, DTYPES[d], 0), "%s", c->name);
}
END_TEST

/* ---- the GEMM contract through the backend table ----------------------------------------------- */

/* C[b] = alpha·op(A[b])·op(B[b]) + beta·C[b], including batches that share C (each batch
 * applies beta to the running C, in order) and shared A / B (stride 0). */
static void gemm_case(bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t batch,
                      bool share_a, bool share_b, bool share_c, double alpha, double beta) {
    const kvf_backend *cpu = kvf_backend_get(KVF_DEVICE_CPU), *gpu = kvf_ctx_backend(g_gpu);
    int64_t lda = ta ? m : k, ldb = tb ? k : n, ldc = n;
    int64_t sa = share_a ? 0 : m * k, sb = share_b ? 0 : k * n, sc = share_c ? 0 : m * n;
    int64_t na = (share_a ? 1 : batch) * m * k, nb = (share_b ? 1 : batch) * k * n,
            nc = (share_c ? 1 : batch) * m * n;
    float *A = malloc(sizeof(float) * (size_t)na), *B = malloc(sizeof(float) * (size_t)nb);
    float *C = malloc(sizeof(float) * (size_t)nc), *Cg = malloc(sizeof(float) * (size_t)nc);
    for (int64_t i = 0; i < na; i++) A[i] = (float)kvf_rng_normal(&g_rng);
    for (int64_t i = 0; i < nb; i++) B[i] = (float)kvf_rng_normal(&g_rng);
    for (int64_t i = 0; i < nc; i++) C[i] = (float)kvf_rng_normal(&g_rng);
    poison(g_gpu);
    void *dA = kvf_ctx_alloc(g_gpu, sizeof(float) * (size_t)na);
    void *dB = kvf_ctx_alloc(g_gpu, sizeof(float) * (size_t)nb);
    void *dC = kvf_ctx_alloc(g_gpu, sizeof(float) * (size_t)nc);
    ck_assert(dA && dB && dC);
    ck_assert_int_eq(gpu->upload(dA, A, sizeof(float) * (size_t)na), KVF_OK);
    ck_assert_int_eq(gpu->upload(dB, B, sizeof(float) * (size_t)nb), KVF_OK);
    ck_assert_int_eq(gpu->upload(dC, C, sizeof(float) * (size_t)nc), KVF_OK);
    kvf_gemm_args g = {.trans_a = ta, .trans_b = tb, .m = m, .n = n, .k = k, .batch = batch,
                       .a = A, .b = B, .c = C, .lda = lda, .ldb = ldb, .ldc = ldc,
                       .stride_a = sa, .stride_b = sb, .stride_c = sc, .alpha = alpha,
                       .beta = beta, .dtype = KVF_DTYPE_F32};
    ck_assert_int_eq(cpu->gemm(&g), KVF_OK);
    g.a = dA;
    g.b = dB;
    g.c = dC;
    ck_assert_msg(gpu->gemm(&g) == KVF_OK, "%s", kvf_error_message());
    ck_assert_int_eq(gpu->download(Cg, dC, sizeof(float) * (size_t)nc), KVF_OK);
    char name[128];
    snprintf(name, sizeof name, "gemm %s%s %lldx%lldx%lld b%lld share %d%d%d a%g b%g", ta ? "T" : "N",
             tb ? "T" : "N", (long long)m, (long long)n, (long long)k, (long long)batch, share_a,
             share_b, share_c, alpha, beta);
    ck_assert_msg(check_close(name, "C", Cg, C, nc, TOL_F32), "%s", name);
    free(A);
    free(B);
    free(C);
    free(Cg);
}

START_TEST(gemm_contract) {
    gemm_case(false, false, 5, 7, 3, 1, false, false, false, 1.0, 0.0);
    gemm_case(false, false, 5, 7, 3, 4, false, false, false, 0.5, 1.0);
    gemm_case(true, false, 6, 9, 11, 3, false, true, false, 1.0, 0.5);
    gemm_case(false, true, 6, 9, 11, 3, true, false, false, -2.0, 0.0);
    gemm_case(true, true, 13, 4, 8, 5, false, false, true, 1.0, 1.0);  /* shared C, accumulate */
    gemm_case(false, false, 13, 4, 8, 3, false, false, true, 1.0, 0.5); /* shared C, beta per batch */
    gemm_case(false, false, 3, 4, 0, 2, false, false, false, 1.0, 0.25); /* k = 0: C = beta·C */
    gemm_case(false, true, 65, 130, 257, 2, false, true, false, 1.0, 1.0);
}
END_TEST

/* ---- copies between dtypes ------------------------------------------------------------------- */

START_TEST(copy_dtypes) {
    poison(g_gpu);
    const int64_t n = 37;
    int32_t ids[37];
    for (int i = 0; i < n; i++) ids[i] = (int32_t)(i * 7919 - 100000);
    kvf_tensor *a = kvf_tensor_from_host(g_gpu, KVF_DTYPE_I32, 1, &n, ids);
    kvf_dtype chain[] = {KVF_DTYPE_I64, KVF_DTYPE_F64, KVF_DTYPE_F32, KVF_DTYPE_I32};
    kvf_tensor *t = a;
    for (int i = 0; i < 4; i++) {
        t = kvf_cast(g_gpu, t, chain[i]);
        ck_assert_msg(t != NULL, "%s", kvf_error_message());
    }
    int32_t back[37];
    ck_assert_int_eq(kvf_tensor_to_host(t, back, sizeof back), KVF_OK);
    for (int i = 0; i < n; i++) ck_assert_int_eq(back[i], ids[i]);
    /* f32 → f16 → f32 and → bf16 round to nearest even like the CPU */
    float v[37], vf16[37], vbf[37];
    for (int i = 0; i < n; i++) v[i] = (float)kvf_rng_normal(&g_rng) * 100.0f;
    kvf_tensor *x = kvf_tensor_from_host(g_gpu, KVF_DTYPE_F32, 1, &n, v);
    kvf_tensor *h16 = kvf_cast(g_gpu, kvf_cast(g_gpu, x, KVF_DTYPE_F16), KVF_DTYPE_F32);
    kvf_tensor *hbf = kvf_cast(g_gpu, kvf_cast(g_gpu, x, KVF_DTYPE_BF16), KVF_DTYPE_F32);
    ck_assert(h16 && hbf);
    ck_assert_int_eq(kvf_tensor_to_host(h16, vf16, sizeof vf16), KVF_OK);
    ck_assert_int_eq(kvf_tensor_to_host(hbf, vbf, sizeof vbf), KVF_OK);
    for (int i = 0; i < n; i++) {
        ck_assert_float_eq(vf16[i], kvf_f16_to_f32(kvf_f32_to_f16(v[i])));
        ck_assert_float_eq(vbf[i], kvf_bf16_to_f32(kvf_f32_to_bf16(v[i])));
    }
    /* a strided (transposed) f32 → bf16 copy */
    float m[12];
    for (int i = 0; i < 12; i++) m[i] = (float)i + 0.25f;
    kvf_tensor *mt = kvf_tensor_from_host(g_gpu, KVF_DTYPE_F32, 2, (int64_t[]){3, 4}, m);
    kvf_tensor *tr = kvf_cast(g_gpu, kvf_transpose(g_gpu, mt, 0, 1), KVF_DTYPE_BF16);
    uint16_t tb[12];
    ck_assert(tr != NULL);
    ck_assert_int_eq(kvf_tensor_to_host(tr, tb, sizeof tb), KVF_OK);
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 3; c++) ck_assert_float_eq(kvf_bf16_to_f32(tb[r * 3 + c]), m[c * 4 + r]);
}
END_TEST

/* ---- determinism ------------------------------------------------------------------------------ */

/* The GPU backward twice on the same inputs: outputs and gradients bitwise equal. */
static void same_twice(const char *name, op_fn f, void *ud, int n, const struct spec *sp,
                       kvf_dtype dt) {
    struct host_in h[MAX_IN];
    make_inputs(n, sp, h, dt);
    struct run_result a, b;
    ck_assert(run_once(name, g_gpu, f, ud, n, sp, h, dt, dt, &a));
    ck_assert(run_once(name, g_gpu, f, ud, n, sp, h, dt, dt, &b));
    ck_assert(a.ny == b.ny);
    ck_assert_msg(memcmp(a.y, b.y, sizeof(float) * (size_t)a.ny) == 0, "%s: output differs", name);
    for (int i = 0; i < n; i++)
        if (a.grad[i])
            ck_assert_msg(memcmp(a.grad[i], b.grad[i], sizeof(float) * (size_t)h[i].n) == 0,
                          "%s: grad %d differs between runs", name, i);
    result_free(&a);
    result_free(&b);
    free_inputs(n, h);
}

START_TEST(deterministic) {
    for (int d = 0; d < 2; d++) {
        const struct attn_case *ac = &attn_cases[1]; /* GQA */
        struct spec asp[3] = {SPEC_F(ac->B, ac->T, ac->Hq, ac->Dk), SPEC_F(ac->B, ac->S, ac->Hkv, ac->Dk),
                              SPEC_F(ac->B, ac->S, ac->Hkv, ac->Dv)};
        same_twice("attention", f_attn, (void *)ac, 3, asp, DTYPES[d]);
        const struct emb_case *ec = &emb_cases[1];
        struct spec esp[2] = {SPEC_F(ec->V, ec->C),
                              {.kind = IN_IDS, .ndim = 2, .shape = {ec->B, ec->T}, .vocab = ec->V}};
        same_twice("embedding", f_emb, (void *)ec, 2, esp, DTYPES[d]);
        const struct attn_case *mc = &attn_cases[5]; /* D64: the tensor-core path in bf16 */
        struct spec msp[3] = {SPEC_F(mc->B, mc->T, mc->Hq, mc->Dk), SPEC_F(mc->B, mc->S, mc->Hkv, mc->Dk),
                              SPEC_F(mc->B, mc->S, mc->Hkv, mc->Dv)};
        same_twice("attention D64", f_attn, (void *)mc, 3, msp, DTYPES[d]);
        const struct nm_case *nc = &nm_cases[7]; /* layernorm [300, 257] */
        same_twice("layernorm", f_nm, (void *)nc, nc->n, nc->in, DTYPES[d]);
        const struct rv_case *rc = &rv_cases[1]; /* chunked column sum */
        same_twice("sum", f_rv, (void *)rc, rc->n, rc->in, DTYPES[d]);
    }
}
END_TEST

/* ---- errors ------------------------------------------------------------------------------------ */

START_TEST(errors) {
    poison(g_gpu);
    kvf_error_clear();
    /* f64 is CPU-only */
    double h[6] = {1, 2, 3, 4, 5, 6};
    kvf_tensor *a = kvf_tensor_from_host(g_gpu, KVF_DTYPE_F64, 2, (int64_t[]){2, 3}, h);
    ck_assert(a != NULL);
    kvf_tensor *y = kvf_matmul(g_gpu, a, kvf_transpose(g_gpu, a, 0, 1), false, false);
    ck_assert(y == NULL);
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_DTYPE);
    ck_assert_msg(strstr(kvf_error_message(), "f64 is CPU-only"), "%s", kvf_error_message());
    kvf_error_clear();
    ck_assert(kvf_softmax(g_gpu, a) == NULL);
    ck_assert_msg(strstr(kvf_error_message(), "f64 is CPU-only"), "%s", kvf_error_message());
    kvf_error_clear();
    /* out of device memory: a clear message, no abort */
    const kvf_backend *be = kvf_ctx_backend(g_gpu);
    void *p = be->alloc((size_t)1 << 50);
    ck_assert(p == NULL);
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_OOM);
    ck_assert_msg(strstr(kvf_error_message(), "lower batch_size"), "%s", kvf_error_message());
    kvf_error_clear();
    /* the device still works afterwards */
    float v[3] = {1, 2, 3}, out[3];
    kvf_tensor *x = kvf_tensor_from_host(g_gpu, KVF_DTYPE_F32, 1, (int64_t[]){3}, v);
    kvf_tensor *s = kvf_scale(g_gpu, x, 2.0);
    ck_assert(s != NULL);
    ck_assert_int_eq(kvf_tensor_to_host(s, out, sizeof out), KVF_OK);
    ck_assert(out[0] == 2.0f && out[1] == 4.0f && out[2] == 6.0f);
    /* head dims past the kernel's limit: KVF_ERR_UNSUPPORTED, not a crash */
    kvf_tensor *q = kvf_tensor_zeros(g_gpu, KVF_DTYPE_F32, 4, (int64_t[]){1, 2, 1, 300});
    kvf_attn_cfg cfg = {.scale = 0.1f, .causal = true, .window = 0};
    ck_assert(kvf_attention(g_gpu, q, q, q, &cfg) == NULL);
    ck_assert_int_eq(kvf_error_code(), KVF_ERR_UNSUPPORTED);
    kvf_error_clear();
}
END_TEST

/* ---- whole models ----------------------------------------------------------------------------- */

static const char *model_variants[] = {"mha", "gqa2", "mqa", "swa3_mha", "cla2_mha", "mla_r8",
                                       "mla_partial_r10_d2", "gpt2"};

static void tiny_cfg(kvf_model_config *c, const char *variant) {
    kvf_model_config_defaults(c);
    c->vocab_size = 61;
    c->d_model = 48;
    c->n_layers = 3;
    c->n_heads = 4;
    c->d_ff = 80;
    c->max_seq_len = 24;
    c->rope_theta = 100.0;
    bool gpt2 = strcmp(variant, "gpt2") == 0;
    ck_assert_msg(kvf_model_config_apply_variant(c, gpt2 ? "mha" : variant) == KVF_OK, "%s: %s",
                  variant, kvf_error_message());
    if (gpt2) {
        c->norm = KVF_NORM_LAYER;
        c->norm_bias = true;
        c->mlp = KVF_MLP_GELU;
        c->mlp_bias = c->o_bias = c->qkv_bias = true;
        c->tie_embeddings = true;
        c->pos = KVF_POS_LEARNED;
    }
}

/* _i: variant _i / 2, with block recomputation when _i is odd (the GPU run recomputes, the CPU
 * reference does not: the numbers must still agree) */
START_TEST(model_vs_cpu) {
    const char *variant = model_variants[_i / 2];
    kvf_model_config c;
    tiny_cfg(&c, variant);
    kvf_model *mc = kvf_model_init(&c, KVF_DEVICE_CPU);
    ck_assert_msg(mc != NULL, "%s: %s", variant, kvf_error_message());
    ck_assert_int_eq(kvf_model_init_weights(mc, 7), KVF_OK);
    kvf_rng r;
    kvf_rng_init(&r, 99);
    for (int i = 0; i < kvf_params_count(mc->params); i++) { /* more signal than the 0.02 init */
        kvf_tensor *t = kvf_params_at(mc->params, i);
        for (int64_t j = 0; j < kvf_tensor_numel(t); j++)
            kvf_tensor_set_flat(t, j, kvf_tensor_get_flat(t, j) + 0.1 * kvf_rng_normal(&r));
    }
    kvf_model *mg = kvf_model_init(&c, KVF_DEVICE_CUDA);
    ck_assert_msg(mg != NULL, "%s: %s", variant, kvf_error_message());
    if (_i % 2) mg->recompute = KVF_RECOMPUTE_BLOCKS;
    const int64_t np = kvf_params_numel(mc->params);
    ck_assert_int_eq(np, kvf_params_numel(mg->params));
    const kvf_backend *be = kvf_ctx_backend(g_gpu);
    ck_assert_int_eq(be->upload(kvf_tensor_data(kvf_params_values(mg->params)),
                                kvf_tensor_data(kvf_params_values(mc->params)),
                                sizeof(float) * (size_t)np), KVF_OK);
    const int64_t B = 2, T = 19;
    int32_t ids[38], tg[38];
    for (int i = 0; i < B * T; i++) {
        ids[i] = (int32_t)kvf_rng_below(&r, (uint64_t)c.vocab_size);
        tg[i] = (int32_t)kvf_rng_below(&r, (uint64_t)c.vocab_size);
    }
    tg[3] = tg[20] = -100;
    float loss[2];
    float *grads[2];
    for (int dev = 0; dev < 2; dev++) {
        kvf_ctx *ctx = dev ? g_gpu : g_cpu;
        kvf_model *m = dev ? mg : mc;
        if (dev) poison(ctx);
        else kvf_ctx_reset(ctx);
        kvf_ctx_set_grad(ctx, true);
        ck_assert_int_eq(kvf_params_zero_grad(m->params), KVF_OK);
        kvf_tensor *ti = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, (int64_t[]){B, T}, ids);
        kvf_tensor *tt = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, (int64_t[]){B, T}, tg);
        kvf_tensor *l = kvf_model_loss(m, ctx, ti, tt);
        ck_assert_msg(l != NULL, "%s on %s: %s", variant, dev ? "cuda" : "cpu", kvf_error_message());
        ck_assert_msg(kvf_backward(ctx, l) == KVF_OK, "%s on %s: %s", variant, dev ? "cuda" : "cpu",
                      kvf_error_message());
        ck_assert_int_eq(kvf_tensor_to_host(l, &loss[dev], sizeof(float)), KVF_OK);
        grads[dev] = to_host_f32(kvf_params_grads(m->params));
    }
    ck_assert_msg(isfinite(loss[1]) && fabs(loss[1] - loss[0]) <= 1e-5 * fabs(loss[0]),
                  "%s: loss gpu %.9g vs cpu %.9g", variant, loss[1], loss[0]);
    /* per parameter tensor, so a failure names the weight; relative to the tensor's own
     * norm, floored at 1e-3 of the whole gradient's (k_proj.bias, say, has an exact
     * gradient of 0: both backends give only rounding noise there) */
    const double floor = 1e-3 * norm2(grads[0], np);
    for (int i = 0; i < kvf_params_count(mc->params); i++) {
        kvf_tensor *t = kvf_params_at(mc->params, i);
        int64_t off = t->offset, n = kvf_tensor_numel(t);
        char what[160];
        snprintf(what, sizeof what, "grad %s", t->name);
        ck_assert_msg(check_close_floor(variant, what, grads[1] + off, grads[0] + off, n, 1e-5, floor),
                      "%s: %s", variant, what);
    }
    free(grads[0]);
    free(grads[1]);
    kvf_model_free(mg);
    kvf_model_free(mc);
}
END_TEST

/* ---- training: optimizer kernels, steps, the trainer ------------------------------------------- */

/* The fused AdamW kernel and the device gradient norm against the CPU loops, on the flat
 * buffers of a tiny model with per-parameter groups (a no-decay rule and an lr multiplier). */
START_TEST(adamw_and_norm_vs_cpu) {
    kvf_model_config c;
    tiny_cfg(&c, "mha");
    kvf_model *mc = kvf_model_init(&c, KVF_DEVICE_CPU);
    ck_assert_msg(mc != NULL, "%s", kvf_error_message());
    ck_assert_int_eq(kvf_model_init_weights(mc, 11), KVF_OK);
    kvf_model *mg = kvf_model_to_device(mc, KVF_DEVICE_CUDA);
    ck_assert_msg(mg != NULL, "%s", kvf_error_message());
    const int64_t np = kvf_params_numel(mc->params);
    const kvf_backend *be = kvf_ctx_backend(g_gpu);
    kvf_optim_config oc = kvf_optim_config_default(KVF_OPTIM_ADAMW);
    oc.weight_decay = 0.1;
    kvf_optimizer *oc_cpu = kvf_optimizer_init(mc->params, &oc);
    kvf_optimizer *oc_gpu = kvf_optimizer_init(mg->params, &oc);
    ck_assert_msg(oc_cpu && oc_gpu, "%s", kvf_error_message());
    for (int k = 0; k < 2; k++) {
        kvf_optimizer *o = k ? oc_gpu : oc_cpu;
        ck_assert_int_eq(kvf_optimizer_add_rule(o, "down_proj", 0.0, 0.5), KVF_OK);
    }
    float *g = malloc(sizeof(float) * (size_t)np);
    kvf_rng r;
    kvf_rng_init(&r, 5);
    for (int step = 0; step < 4; step++) {
        /* the same gradients on both; zeros in the alignment padding, as backward leaves them */
        memset(g, 0, sizeof(float) * (size_t)np);
        for (int i = 0; i < kvf_params_count(mc->params); i++) {
            kvf_tensor *t = kvf_params_at(mc->params, i);
            for (int64_t j = 0; j < kvf_tensor_numel(t); j++)
                g[t->offset + j] = (float)(kvf_rng_normal(&r) * (step == 2 ? 30.0 : 0.3));
        }
        memcpy(kvf_tensor_data(kvf_params_grads(mc->params)), g, sizeof(float) * (size_t)np);
        ck_assert_int_eq(be->upload(kvf_tensor_data(kvf_params_grads(mg->params)), g,
                                    sizeof(float) * (size_t)np), KVF_OK);
        kvf_clip_info ci_c, ci_g;
        ck_assert_int_eq(kvf_clip_grad_norm(mc->params, 1.0, &ci_c), KVF_OK);
        /* the GPU defers the clipping into the fused update (the trainer's way) */
        ck_assert_msg(kvf_clip_grad_norm_deferred(mg->params, 1.0, &ci_g) == KVF_OK, "%s", kvf_error_message());
        ck_assert_msg(fabs(ci_g.norm - ci_c.norm) <= 1e-12 * ci_c.norm, "norm gpu %.17g cpu %.17g",
                      ci_g.norm, ci_c.norm);
        ck_assert_int_eq(ci_g.clipped, ci_c.clipped);
        ck_assert_int_eq(kvf_optimizer_step(oc_cpu, 1e-2), KVF_OK);
        ck_assert_msg(kvf_optimizer_step_scaled(oc_gpu, 1e-2, ci_g.scale) == KVF_OK, "%s",
                      kvf_error_message());
    }
    ck_assert_int_eq(kvf_optimizer_step_count(oc_gpu), 4);
    const kvf_tensor *pairs[3][2] = {{kvf_params_values(mg->params), kvf_params_values(mc->params)},
                                     {kvf_optimizer_state(oc_gpu).m, kvf_optimizer_state(oc_cpu).m},
                                     {kvf_optimizer_state(oc_gpu).v, kvf_optimizer_state(oc_cpu).v}};
    static const char *what[3] = {"params", "exp_avg", "exp_avg_sq"};
    for (int k = 0; k < 3; k++) {
        float *gg = to_host_f32(pairs[k][0]);
        /* the same double arithmetic: only FMA contraction can differ */
        ck_assert_msg(check_close("adamw", what[k], gg, kvf_tensor_data(pairs[k][1]), np, 1e-6), "%s",
                      what[k]);
        free(gg);
    }
    /* a NaN gradient is reported, not clipped */
    g[3] = NAN;
    ck_assert_int_eq(be->upload(kvf_tensor_data(kvf_params_grads(mg->params)), g,
                                sizeof(float) * (size_t)np), KVF_OK);
    kvf_clip_info ci;
    ck_assert_int_eq(kvf_clip_grad_norm(mg->params, 1.0, &ci), KVF_OK);
    ck_assert(!ci.finite && !ci.clipped);
    free(g);
    kvf_optimizer_free(oc_cpu);
    kvf_optimizer_free(oc_gpu);
    kvf_model_free(mg);
    kvf_model_free(mc);
}
END_TEST

static const char *train_variants[] = {"mha", "gqa2", "cla2_mha", "mla_r8", "mla_partial_r10_d2", "gpt2"};

/* n AdamW steps (clip 1.0) of a tiny model on fixed random batches; losses[] per step. */
static void train_steps(kvf_model *m, kvf_ctx *ctx, int n, double *losses) {
    kvf_optim_config oc = kvf_optim_config_default(KVF_OPTIM_ADAMW);
    kvf_optimizer *o = kvf_optimizer_init(m->params, &oc);
    ck_assert_msg(o != NULL, "%s", kvf_error_message());
    kvf_rng r;
    kvf_rng_init(&r, 77);
    const int64_t B = 2, T = 19;
    int32_t ids[38], tg[38];
    for (int s = 0; s < n; s++) {
        for (int i = 0; i < B * T; i++) {
            ids[i] = (int32_t)kvf_rng_below(&r, (uint64_t)m->cfg.vocab_size);
            tg[i] = (int32_t)((ids[i] * 7 + 3) % m->cfg.vocab_size); /* learnable */
        }
        if (kvf_ctx_device(ctx) == KVF_DEVICE_CUDA) poison(ctx);
        else kvf_ctx_reset(ctx);
        kvf_ctx_set_grad(ctx, true);
        ck_assert_int_eq(kvf_params_zero_grad(m->params), KVF_OK);
        kvf_tensor *ti = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, (int64_t[]){B, T}, ids);
        kvf_tensor *tt = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, (int64_t[]){B, T}, tg);
        kvf_tensor *l = kvf_model_loss(m, ctx, ti, tt);
        ck_assert_msg(l != NULL, "%s", kvf_error_message());
        ck_assert_int_eq(l->dtype, KVF_DTYPE_F32);
        ck_assert_msg(kvf_backward(ctx, l) == KVF_OK, "%s", kvf_error_message());
        ck_assert_int_eq(kvf_tensor_item(l, &losses[s]), KVF_OK);
        kvf_clip_info ci;
        ck_assert_msg(kvf_clip_grad_norm_deferred(m->params, 1.0, &ci) == KVF_OK, "%s", kvf_error_message());
        ck_assert(ci.finite);
        ck_assert_msg(kvf_optimizer_step_scaled(o, 3e-3, ci.scale) == KVF_OK, "%s", kvf_error_message());
    }
    kvf_ctx_reset(ctx);
    kvf_optimizer_free(o);
}

/* A few AdamW steps on the GPU (f32 compute: tight; bf16 compute with f32 masters: bf16
 * tolerance) against the CPU f32 trainer's losses and parameters. */
START_TEST(train_steps_vs_cpu) {
    const char *variant = train_variants[_i];
    kvf_model_config c;
    tiny_cfg(&c, variant);
    kvf_model *mc = kvf_model_init(&c, KVF_DEVICE_CPU);
    ck_assert_msg(mc != NULL, "%s: %s", variant, kvf_error_message());
    ck_assert_int_eq(kvf_model_init_weights(mc, 7), KVF_OK);
    const int64_t np = kvf_params_numel(mc->params);
    float *p0 = malloc(sizeof(float) * (size_t)np);
    memcpy(p0, kvf_tensor_data(kvf_params_values(mc->params)), sizeof(float) * (size_t)np);
    kvf_model *mg[2];
    for (int k = 0; k < 2; k++) {
        mg[k] = kvf_model_to_device(mc, KVF_DEVICE_CUDA);
        ck_assert_msg(mg[k] != NULL, "%s: %s", variant, kvf_error_message());
    }
    ck_assert_int_eq(kvf_model_set_compute_dtype(mg[1], KVF_DTYPE_BF16), KVF_OK);
    ck_assert_int_eq(kvf_model_set_compute_dtype(mc, KVF_DTYPE_BF16), KVF_ERR_DTYPE);
    kvf_error_clear();
    enum { STEPS = 6 };
    double lc[STEPS], lg[2][STEPS];
    train_steps(mc, g_cpu, STEPS, lc);
    for (int k = 0; k < 2; k++) train_steps(mg[k], g_gpu, STEPS, lg[k]);
    const float *pc = kvf_tensor_data(kvf_params_values(mc->params));
    float *delta_c = malloc(sizeof(float) * (size_t)np), *delta_g = malloc(sizeof(float) * (size_t)np);
    for (int k = 0; k < 2; k++) {
        const char *name = k ? "bf16" : "f32";
        /* bf16: Adam turns small gradients into ±lr steps, so elements whose gradient is
         * within bf16 noise of 0 may step the other way: the change agrees only roughly */
        double ltol = k ? 2e-2 : 1e-5, ptol = k ? 0.35 : 1e-3;
        for (int s = 0; s < STEPS; s++) {
            if (getenv("KVF_GPU_VERBOSE"))
                fprintf(stderr, "%s %s step %d: loss gpu %.6f cpu %.6f\n", variant, name, s + 1,
                        lg[k][s], lc[s]);
            ck_assert_msg(isfinite(lg[k][s]) && fabs(lg[k][s] - lc[s]) <= ltol * fabs(lc[s]),
                          "%s %s step %d: loss gpu %.7g vs cpu %.7g", variant, name, s + 1, lg[k][s], lc[s]);
        }
        ck_assert_msg(lc[STEPS - 1] < lc[0], "%s: the CPU loss did not fall", variant);
        /* the parameters' change over the run, GPU against CPU */
        float *pg = to_host_f32(kvf_params_values(mg[k]->params));
        for (int64_t j = 0; j < np; j++) {
            delta_c[j] = pc[j] - p0[j];
            delta_g[j] = pg[j] - p0[j];
        }
        /* k_proj.bias has an exact gradient of 0 (softmax ignores a per-query constant):
         * each backend's rounding noise there is normalised by Adam into ±lr steps of
         * random sign, so it is left out */
        for (int i = 0; i < kvf_params_count(mc->params); i++) {
            const kvf_tensor *t = kvf_params_at(mc->params, i);
            if (!strstr(t->name, "k_proj.bias")) continue;
            for (int64_t j = 0; j < kvf_tensor_numel(t); j++) delta_c[t->offset + j] = delta_g[t->offset + j] = 0;
        }
        char what[64];
        snprintf(what, sizeof what, "parameter change (%s compute)", name);
        ck_assert_msg(check_close(variant, what, delta_g, delta_c, np, ptol), "%s: %s", variant, what);
        free(pg);
    }
    free(delta_c);
    free(delta_g);
    free(p0);
    for (int k = 0; k < 2; k++) kvf_model_free(mg[k]);
    kvf_model_free(mc);
}
END_TEST

/* kvf_train on cuda (bf16 compute) end to end: it learns, its validation loss is the CPU
 * run's within bf16 noise, the checkpoint it writes (from device parameters) evaluates to
 * the same loss on the CPU, and a run stopped and resumed continues the same trajectory. */
static char g_tmp[256];

static void train_cfg(kvf_run_config *c, const char *name, const char *device, const char *corpus) {
    kvf_run_config_defaults(c);
    snprintf(c->name, sizeof c->name, "%s", name);
    snprintf(c->out_dir, sizeof c->out_dir, "%s/runs", g_tmp);
    snprintf(c->attention, sizeof c->attention, "gqa2");
    snprintf(c->train_data, sizeof c->train_data, "%s", corpus);
    snprintf(c->device, sizeof c->device, "%s", device);
    c->model.d_model = 64;
    c->model.n_layers = 2;
    c->model.n_heads = 4;
    c->seq_len = 64;
    c->batch_size = 8;
    c->lr = 3e-3;
    c->min_lr = 3e-4;
    c->warmup_steps = 10;
    c->steps = 60;
    c->log_every = 1000;
    c->eval_tokens = 8192;
    c->seed = 3;
    ck_assert_msg(kvf_run_config_finish(c, "test") == KVF_OK, "%s", kvf_error_message());
}

START_TEST(trainer_on_cuda) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/kvf_gpu_train_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_tmp));
    char corpus[512];
    snprintf(corpus, sizeof corpus, "%s/corpus.txt", g_tmp);
    FILE *f = fopen(corpus, "wb");
    ck_assert_ptr_nonnull(f);
    static const char *subj[] = {"the king", "a prophet", "the people", "my servant", "his son"};
    static const char *verb[] = {"spake unto", "went up to", "blessed", "smote", "answered"};
    static const char *obj[] = {"the city.", "the house of god.", "all israel.", "the land.", "them."};
    unsigned s = 12345;
    for (int i = 0; i < 6000; i++) {
        s = s * 1103515245u + 12345u;
        int a = (s >> 16) % 5;
        s = s * 1103515245u + 12345u;
        int b = (s >> 16) % 5;
        fprintf(f, "%s %s %s\n", subj[a], verb[(a + b) % 5], obj[b]);
    }
    fclose(f);
    FILE *log = fopen("/dev/null", "w");
    kvf_train_opts o = {.config_path = "test", .log = log};
    kvf_run_config c;
    kvf_train_result rc, rg, rs, rr;
    train_cfg(&c, "cpu", "cpu", corpus);
    ck_assert_msg(kvf_train(&c, &o, &rc) == KVF_OK, "cpu: %s", kvf_error_message());
    train_cfg(&c, "cuda", "cuda", corpus);
    ck_assert_msg(kvf_train(&c, &o, &rg) == KVF_OK, "cuda: %s", kvf_error_message());
    fprintf(stderr, "trainer: val loss cpu %.4f, cuda bf16 %.4f (last train loss %.4f / %.4f)\n",
            rc.val_loss, rg.val_loss, rc.last_loss, rg.last_loss);
    ck_assert_int_eq(rg.steps_done, 60);
    ck_assert_int_eq(rg.skipped, 0);
    ck_assert_msg(rg.val_loss < 2.0, "cuda run did not learn: val loss %.4f", rg.val_loss);
    ck_assert_msg(fabs(rg.val_loss - rc.val_loss) <= 0.03 * rc.val_loss,
                  "val loss cuda %.4f vs cpu %.4f", rg.val_loss, rc.val_loss);
    /* the checkpoint saved from device parameters, evaluated on the CPU in f32 */
    char ckpt[700];
    snprintf(ckpt, sizeof ckpt, "%s/checkpoint", rg.run_dir);
    kvf_model *m = kvf_checkpoint_load(ckpt, KVF_DEVICE_CPU);
    ck_assert_msg(m != NULL, "%s", kvf_error_message());
    kvf_model_free(m);
    /* stop after 25 steps, resume to 60: the same trajectory as the uninterrupted run
     * (deterministic kernels; tolerance for cuBLASLt's choice of algorithm) */
    train_cfg(&c, "cuda_resumed", "cuda", corpus);
    o.stop_after = 25;
    ck_assert_msg(kvf_train(&c, &o, &rs) == KVF_OK, "cuda stop: %s", kvf_error_message());
    ck_assert_int_eq(rs.steps_done, 25);
    o.stop_after = 0;
    o.resume_dir = rs.run_dir;
    ck_assert_msg(kvf_train(&c, &o, &rr) == KVF_OK, "cuda resume: %s", kvf_error_message());
    fprintf(stderr, "trainer: resumed cuda run: val loss %.6f (uninterrupted %.6f), last loss %.6f "
            "(%.6f)\n", rr.val_loss, rg.val_loss, rr.last_loss, rg.last_loss);
    ck_assert_int_eq(rr.steps_done, 60);
    ck_assert_msg(fabs(rr.val_loss - rg.val_loss) <= 1e-3 * rg.val_loss,
                  "resumed val loss %.6f vs %.6f", rr.val_loss, rg.val_loss);
    fclose(log);
    kvf_fs_remove_tree(g_tmp);
}
END_TEST

/* ---- conversions: calibration moments and f64 factorisations on the GPU --------------------------- */

/* ‖a − b‖ / ‖b‖ over n doubles. */
static double rel_err_f64(const double *a, const double *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* The per-layer augmented Gram matrices (and the cross moments of CLA calibration) collected
 * from a model on the GPU (backend gram_f64: f32 GEMM per batch, f64 sums) against the CPU's
 * f64 dsyrk/dgemm path on the same weights and tokens. */
START_TEST(calib_gram_vs_cpu) {
    kvf_model_config c;
    tiny_cfg(&c, "mha");
    c.max_seq_len = 64;
    kvf_model *mc = kvf_model_init(&c, KVF_DEVICE_CPU);
    ck_assert_msg(mc != NULL, "%s", kvf_error_message());
    ck_assert_int_eq(kvf_model_init_weights(mc, 11), KVF_OK);
    kvf_rng r;
    kvf_rng_init(&r, 5);
    for (int i = 0; i < kvf_params_count(mc->params); i++) {
        kvf_tensor *t = kvf_params_at(mc->params, i);
        for (int64_t j = 0; j < kvf_tensor_numel(t); j++)
            kvf_tensor_set_flat(t, j, kvf_tensor_get_flat(t, j) + 0.1 * kvf_rng_normal(&r));
    }
    kvf_model *mg = kvf_model_init(&c, KVF_DEVICE_CUDA);
    ck_assert_msg(mg != NULL, "%s", kvf_error_message());
    const int64_t np = kvf_params_numel(mc->params);
    ck_assert_int_eq(kvf_ctx_backend(g_gpu)->upload(kvf_tensor_data(kvf_params_values(mg->params)),
                                                    kvf_tensor_data(kvf_params_values(mc->params)),
                                                    sizeof(float) * (size_t)np), KVF_OK);
    /* 9 windows of 64: two full batches of 4 and a last batch of 1 (a new input shape) */
    const int64_t n = 9 * 64 + 1;
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++) tok[i] = (int32_t)kvf_rng_below(&r, (uint64_t)c.vocab_size);
    const int partner[3] = {-1, 0, 0};
    for (int cross = 0; cross < 2; cross++) {
        kvf_calib cc, cg;
        kvf_status sc = cross ? kvf_calib_collect_cross(mc, tok, n, 64, 0, partner, &cc, NULL)
                              : kvf_calib_collect(mc, tok, n, 64, 0, &cc, NULL);
        ck_assert_msg(sc == KVF_OK, "cpu: %s", kvf_error_message());
        kvf_status sg = cross ? kvf_calib_collect_cross(mg, tok, n, 64, 0, partner, &cg, NULL)
                              : kvf_calib_collect(mg, tok, n, 64, 0, &cg, NULL);
        ck_assert_msg(sg == KVF_OK, "cuda: %s", kvf_error_message());
        ck_assert_int_eq(cg.tokens, cc.tokens);
        const int64_t per = (c.d_model + 1) * (c.d_model + 1);
        for (int l = 0; l < c.n_layers; l++) {
            const double *gg = kvf_calib_gram(&cg, l), *gc = kvf_calib_gram(&cc, l);
            double e = rel_err_f64(gg, gc, per);
            ck_assert_msg(e <= 1e-5, "layer %d gram: relative error %.3g", l, e);
            ck_assert_msg(gg[per - 1] == (double)cc.tokens, "layer %d: count %g, want %lld", l, gg[per - 1],
                          (long long)cc.tokens);
            if (cross) {
                const double *xg = kvf_calib_cross(&cg, l), *xc = kvf_calib_cross(&cc, l);
                ck_assert_msg((xg == NULL) == (partner[l] < 0) && (xc == NULL) == (xg == NULL), "layer %d cross", l);
                if (xg) {
                    e = rel_err_f64(xg, xc, per);
                    ck_assert_msg(e <= 1e-5, "layer %d cross moment: relative error %.3g", l, e);
                }
            }
        }
        kvf_calib_free(&cc);
        kvf_calib_free(&cg);
    }
    free(tok);
    kvf_model_free(mg);
    kvf_model_free(mc);
}
END_TEST

static double *rand_mat(kvf_rng *r, int64_t n) {
    double *a = malloc(sizeof(double) * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) a[i] = kvf_rng_normal(r);
    return a;
}

/* cuSOLVER eigh / SVD and cuBLAS dgemm (the backend's f64 entries, then through linalg.h with
 * the device set) against LAPACKE / OpenBLAS on random matrices, in double. */
START_TEST(linalg_vs_lapacke) {
    const kvf_backend *be = kvf_ctx_backend(g_gpu);
    ck_assert_ptr_nonnull(be->eigh_f64);
    kvf_rng r;
    kvf_rng_init(&r, 77);
    /* SPD with a spread spectrum: A = X Xᵀ + n·I, X n×n */
    static const int eig_n[] = {1, 5, 64, 301};
    for (size_t t = 0; t < sizeof eig_n / sizeof *eig_n; t++) {
        int n = eig_n[t];
        double *X = rand_mat(&r, (int64_t)n * n), *A = malloc(sizeof(double) * (size_t)n * n);
        kvf_dgemm(false, true, n, n, n, X, X, A);
        for (int i = 0; i < n; i++) A[(size_t)i * n + i] += n;
        double *wc = malloc(sizeof(double) * n), *wg = malloc(sizeof(double) * n);
        double *Vc = malloc(sizeof(double) * (size_t)n * n), *Vg = malloc(sizeof(double) * (size_t)n * n);
        ck_assert_msg(kvf_eigh_desc(n, A, wc, Vc) == KVF_OK, "%s", kvf_error_message());
        ck_assert_msg(be->eigh_f64(n, A, wg, Vg) == KVF_OK, "%s", kvf_error_message());
        double e = rel_err_f64(wg, wc, n);
        ck_assert_msg(e <= 1e-9, "eigh n %d: eigenvalues off by %.3g", n, e);
        for (int i = 1; i < n; i++) ck_assert_msg(wg[i - 1] >= wg[i], "eigh n %d: not descending at %d", n, i);
        /* V diag(w) Vᵀ = A */
        double *VW = malloc(sizeof(double) * (size_t)n * n), *R = malloc(sizeof(double) * (size_t)n * n);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) VW[(size_t)i * n + j] = Vg[(size_t)i * n + j] * wg[j];
        kvf_dgemm(false, true, n, n, n, VW, Vg, R);
        e = rel_err_f64(R, A, (int64_t)n * n);
        ck_assert_msg(e <= 1e-9, "eigh n %d: reconstruction off by %.3g", n, e);
        free(X), free(A), free(wc), free(wg), free(Vc), free(Vg), free(VW), free(R);
    }
    /* thin SVD, wide, tall and square */
    static const int svd_mn[][2] = {{1, 7}, {40, 90}, {90, 40}, {64, 64}, {300, 129}};
    for (size_t t = 0; t < sizeof svd_mn / sizeof *svd_mn; t++) {
        int m = svd_mn[t][0], n = svd_mn[t][1], k = m < n ? m : n;
        double *A = rand_mat(&r, (int64_t)m * n);
        double *Uc = malloc(sizeof(double) * (size_t)m * k), *Ug = malloc(sizeof(double) * (size_t)m * k);
        double *Vc = malloc(sizeof(double) * (size_t)k * n), *Vg = malloc(sizeof(double) * (size_t)k * n);
        double *sc = malloc(sizeof(double) * k), *sg = malloc(sizeof(double) * k);
        ck_assert_msg(kvf_svd(m, n, A, Uc, sc, Vc) == KVF_OK, "%s", kvf_error_message());
        ck_assert_msg(be->svd_f64(m, n, A, Ug, sg, Vg) == KVF_OK, "%s", kvf_error_message());
        double e = rel_err_f64(sg, sc, k);
        ck_assert_msg(e <= 1e-9, "svd %d×%d: singular values off by %.3g", m, n, e);
        double *US = malloc(sizeof(double) * (size_t)m * k), *R = malloc(sizeof(double) * (size_t)m * n);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < k; j++) US[(size_t)i * k + j] = Ug[(size_t)i * k + j] * sg[j];
        kvf_dgemm(false, false, m, n, k, US, Vg, R);
        e = rel_err_f64(R, A, (int64_t)m * n);
        ck_assert_msg(e <= 1e-9, "svd %d×%d: reconstruction off by %.3g", m, n, e);
        free(A), free(Uc), free(Ug), free(Vc), free(Vg), free(sc), free(sg), free(US), free(R);
    }
    /* dgemm, every transpose combination */
    for (int f = 0; f < 4; f++) {
        bool ta = f & 1, tb = f & 2;
        int m = 37, n = 53, k = 29;
        double *A = rand_mat(&r, (int64_t)m * k), *B = rand_mat(&r, (int64_t)k * n);
        double *Cc = malloc(sizeof(double) * (size_t)m * n), *Cg = malloc(sizeof(double) * (size_t)m * n);
        kvf_dgemm(ta, tb, m, n, k, A, B, Cc);
        ck_assert_msg(be->dgemm_f64(ta, tb, m, n, k, A, B, Cg) == KVF_OK, "%s", kvf_error_message());
        double e = rel_err_f64(Cg, Cc, (int64_t)m * n);
        ck_assert_msg(e <= 1e-12, "dgemm ta %d tb %d: off by %.3g", ta, tb, e);
        free(A), free(B), free(Cc), free(Cg);
    }
    /* through linalg.h: everything on the device (min_flops 0), counted */
    ck_assert_msg(kvf_linalg_set_device(KVF_DEVICE_CUDA, 0) == KVF_OK, "%s", kvf_error_message());
    double S[4] = {2, 1, 1, 3}, w[2], V[4], P[4];
    ck_assert_int_eq(kvf_eigh_desc(2, S, w, V), KVF_OK);
    kvf_dgemm(false, true, 2, 2, 2, S, S, P);
    struct kvf_linalg_counts cnt = kvf_linalg_device_counts();
    ck_assert_msg(cnt.eigh == 1 && cnt.dgemm == 1, "device counts: eigh %ld, dgemm %ld", cnt.eigh, cnt.dgemm);
    ck_assert_msg(fabs(w[0] - (2.5 + sqrt(1.25))) <= 1e-12 && fabs(P[1] - 5.0) <= 1e-12, "w %g, P %g", w[0], P[1]);
    ck_assert_ptr_null(kvf_linalg_take_failure());
    ck_assert_int_eq(kvf_linalg_set_device(KVF_DEVICE_CPU, -1), KVF_OK);
}
END_TEST

/* "val loss: before B (ppl ..) → after A" from a conversion log; NAN when missing. */
static double logged_val_loss(const char *log) {
    const char *p = strstr(log, "→ after ");
    return p ? strtod(p + strlen("→ after "), NULL) : NAN;
}

static char *read_all(FILE *f) {
    fflush(f);
    long n = ftell(f);
    char *s = calloc((size_t)n + 1, 1);
    rewind(f);
    size_t got = fread(s, 1, (size_t)n, f);
    s[got] = '\0';
    return s;
}

/* `kvforge convert --device cuda` vs --device cpu on the tiny-llama-mha fixture: GQA calib, MLA
 * (deepseek) and CLA calib, with every factorisation on the GPU (KVF_LINALG_GPU_MIN_FLOPS=0).
 * Both outputs are written and load; their val losses agree to 1e-3. */
static const char *conv_cases[] = {"gqa", "mla", "cla"};

START_TEST(convert_on_cuda) {
    const char *shared = getenv("KVF_SHARED");
    char src[600];
    snprintf(src, sizeof src, "%s/fixtures/tiny-llama-mha", shared ? shared : "../shared");
    if (access(src, F_OK) != 0) {
        fprintf(stderr, "convert_on_cuda: no fixture %s (set KVF_SHARED): skipped\n", src);
        return;
    }
    char dir[256];
    snprintf(dir, sizeof dir, "/tmp/kvf_gpu_conv_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char text[300];
    snprintf(text, sizeof text, "%s/calib.txt", dir);
    FILE *f = fopen(text, "wb");
    ck_assert_ptr_nonnull(f);
    static const char *w[] = {"and", "the", "lord", "said", "unto", "moses", "in", "land", "of", "egypt",
                              "went", "up", "house", "people", "king", "city"};
    unsigned s = 4242;
    for (int i = 0; i < 12000; i++) {
        s = s * 1103515245u + 12345u;
        fprintf(f, "%s%s", w[(s >> 16) % 16], i % 11 == 10 ? ".\n" : " ");
    }
    fclose(f);
    setenv("KVF_LINALG_GPU_MIN_FLOPS", "0", 1);
    const char *what = conv_cases[_i];
    double loss[2];
    for (int dev = 0; dev < 2; dev++) {
        kvf_convert_opts o;
        kvf_convert_opts_defaults(&o);
        if (!strcmp(what, "gqa")) {
            o.to = KVF_CONVERT_GQA;
            o.kv_heads = 2;
            snprintf(o.method, sizeof o.method, "calib");
        } else if (!strcmp(what, "mla")) {
            o.to = KVF_CONVERT_MLA;
            o.kv_rank = 32;
            o.rope_dim = 8;
        } else {
            o.to = KVF_CONVERT_CLA;
            o.share = 2;
            snprintf(o.method, sizeof o.method, "calib");
        }
        o.calib_path = o.eval_path = text;
        o.calib_tokens = 8192;
        o.eval_tokens = 8192;
        o.device = dev ? KVF_DEVICE_CUDA : KVF_DEVICE_CPU;
        char out[400];
        snprintf(out, sizeof out, "%s/%s_%s", dir, what, dev ? "cuda" : "cpu");
        FILE *log = tmpfile();
        ck_assert_ptr_nonnull(log);
        kvf_status st = kvf_convert_run(src, out, &o, log);
        char *txt = read_all(log);
        fclose(log);
        ck_assert_msg(st == KVF_OK, "%s on %s: %s\n%s", what, dev ? "cuda" : "cpu", kvf_error_message(), txt);
        loss[dev] = logged_val_loss(txt);
        ck_assert_msg(isfinite(loss[dev]), "%s: no val loss in the log:\n%s", what, txt);
        if (dev) { /* the work ran on the GPU, with progress lines */
            ck_assert_msg(strstr(txt, "moments accumulated on cuda") && strstr(txt, "calibration: 8192 / 8192 tokens") &&
                              strstr(txt, "factorisations: ") && !strstr(txt, "on cuda: 0 eigh, 0 SVD, 0 dgemm") &&
                              !strstr(txt, "redone on the CPU"),
                          "%s: the cuda log lacks its GPU lines:\n%s", what, txt);
            fprintf(stderr, "convert %s on cuda: val loss %.5f (cpu %.5f)\n%s", what, loss[1], loss[0], txt);
        }
        free(txt);
        kvf_model *m = kvf_checkpoint_load(out, KVF_DEVICE_CPU);
        ck_assert_msg(m != NULL, "%s: %s", out, kvf_error_message());
        kvf_model_free(m);
    }
    unsetenv("KVF_LINALG_GPU_MIN_FLOPS");
    ck_assert_msg(fabs(loss[1] - loss[0]) <= 1e-3, "%s: val loss cuda %.6f vs cpu %.6f", what, loss[1], loss[0]);
    kvf_fs_remove_tree(dir);
}
END_TEST

/* Ids uploaded from the host are checked against that host copy (no download); views at
 * an offset read the right part of it, and a bad id is still named. */
START_TEST(ids_checked_on_gpu) {
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CUDA);
    ck_assert_ptr_nonnull(ctx);
    int32_t ids[6] = {0, 1, 2, 3, 4, 9};
    kvf_tensor *logits = kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 2, (int64_t[]){6, 5});
    kvf_tensor *t = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 1, (int64_t[]){6}, ids);
    ck_assert_ptr_nonnull(t);
    ck_assert_ptr_nonnull(t->storage->host_ids);
    ck_assert_ptr_null(kvf_cross_entropy(ctx, logits, t, -100));
    ck_assert_msg(strstr(kvf_error_message(), "9") && strstr(kvf_error_message(), "outside"), "%s",
                  kvf_error_message());
    kvf_error_clear();
    kvf_tensor *good = kvf_slice(ctx, t, 0, 1, 4); /* 1, 2, 3, 4 */
    kvf_tensor *l = kvf_cross_entropy(ctx, kvf_slice(ctx, logits, 0, 0, 4), good, -100);
    ck_assert_msg(l != NULL, "%s", kvf_error_message());
    double v = 0;
    ck_assert_int_eq(kvf_tensor_item(l, &v), KVF_OK);
    ck_assert_msg(fabs(v - log(5.0)) < 1e-5, "uniform logits: loss %g", v);
    kvf_tensor *table = kvf_tensor_zeros(ctx, KVF_DTYPE_F32, 2, (int64_t[]){5, 3});
    ck_assert_ptr_null(kvf_embedding(ctx, table, kvf_slice(ctx, t, 0, 2, 4)));
    ck_assert_ptr_nonnull(strstr(kvf_error_message(), "outside"));
    kvf_error_clear();
    kvf_ctx_free(ctx);
}
END_TEST

/* The bf16 forward casts every weight in one pass per step (model/transformer.c): a
 * second forward in the same ctx generation after an optimizer step must see the new
 * weights (the cast follows the params' version), as a fresh ctx does. */
START_TEST(weights_cast_follows_updates) {
    kvf_model_config c;
    tiny_cfg(&c, "gqa2");
    kvf_model *mc = kvf_model_init(&c, KVF_DEVICE_CPU);
    ck_assert_int_eq(kvf_model_init_weights(mc, 3), KVF_OK);
    kvf_model *m = kvf_model_to_device(mc, KVF_DEVICE_CUDA);
    ck_assert_msg(m != NULL, "%s", kvf_error_message());
    ck_assert_int_eq(kvf_model_set_compute_dtype(m, KVF_DTYPE_BF16), KVF_OK);
    kvf_optim_config oc = kvf_optim_config_default(KVF_OPTIM_ADAMW);
    kvf_optimizer *o = kvf_optimizer_init(m->params, &oc);
    kvf_ctx *ctx = kvf_ctx_init(KVF_DEVICE_CUDA);
    ck_assert(o && ctx);
    int32_t ids[2 * 9], tg[2 * 9];
    for (int i = 0; i < 18; i++) ids[i] = (i * 5) % (int)c.vocab_size, tg[i] = (i * 3 + 1) % (int)c.vocab_size;
    double l[4], gn[4] = {0};
    for (int k = 0; k < 4; k++) {
        if (k >= 2) kvf_ctx_reset(ctx);
        if (k == 3) m->recompute = KVF_RECOMPUTE_BLOCKS; /* the cast first made inside a block's scratch run */
        ck_assert_int_eq(kvf_params_zero_grad(m->params), KVF_OK);
        kvf_tensor *ti = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, (int64_t[]){2, 9}, ids);
        kvf_tensor *tt = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, (int64_t[]){2, 9}, tg);
        kvf_tensor *loss = kvf_model_loss(m, ctx, ti, tt);
        ck_assert_msg(loss != NULL, "%s", kvf_error_message());
        ck_assert_int_eq(kvf_tensor_item(loss, &l[k]), KVF_OK);
        if (k != 1) {
            ck_assert_msg(kvf_backward(ctx, loss) == KVF_OK, "%s", kvf_error_message());
            ck_assert_int_eq(kvf_grad_norm(m->params, &gn[k]), KVF_OK);
        }
        if (k == 0) ck_assert_int_eq(kvf_optimizer_step(o, 1e-2), KVF_OK);
        if (k == 1) ck_assert_msg(m->wcast != NULL, "the forward did not use the one-pass weight cast");
    }
    /* the same ops on the same values; GEMMs may still pick other algorithms for buffers
     * at other alignments, so within bf16 rounding rather than bit for bit */
    ck_assert_msg(isfinite(l[3]) && fabs(l[3] - l[2]) <= 1e-4 * fabs(l[2]) && isfinite(gn[3]) &&
                      fabs(gn[3] - gn[2]) <= 1e-3 * gn[2],
                  "recompute blocks: loss %.9g grad norm %.9g, plain %.9g %.9g", l[3], gn[3], l[2], gn[2]);
    ck_assert_msg(l[1] != l[0], "the step changed nothing: %.9g", l[0]);
    ck_assert_msg(l[1] == l[2], "after the step: %.9g in the same ctx generation, %.9g after a reset",
                  l[1], l[2]);
    kvf_ctx_free(ctx);
    kvf_optimizer_free(o);
    kvf_model_free(m);
    kvf_model_free(mc);
}
END_TEST

/* ---- main ------------------------------------------------------------------------------------- */

#define NCASES(a) (int)(sizeof(a) / sizeof((a)[0]))

int main(void) {
    g_gpu = kvf_ctx_init(KVF_DEVICE_CUDA);
    if (!g_gpu) {
        printf("no CUDA device: skipping (%s)\n", kvf_error_message());
        return 77;
    }
    g_cpu = kvf_ctx_init(KVF_DEVICE_CPU);
    if (!g_cpu) return EXIT_FAILURE;
    kvf_rng_init(&g_rng, 2024);
    Suite *s = suite_create("gpu");
    TCase *tc = tcase_create("cuda_vs_cpu");
    tcase_set_timeout(tc, 300);
    /* KVF_GPU_TESTS=attention,model (say) runs only the groups whose names contain one of
     * the words, e.g. under compute-sanitizer */
    const char *only = getenv("KVF_GPU_TESTS");
#define WANT(group) (!only || !*only || strstr(only, group))
    if (WANT("matmul")) tcase_add_loop_test(tc, matmul_vs_cpu, 0, NCASES(mm_cases));
    if (WANT("matmul")) tcase_add_loop_test(tc, matmul_add_vs_cpu, 0, NCASES(mma_cases));
    if (WANT("gemm")) tcase_add_test(tc, gemm_contract);
    if (WANT("loss")) tcase_add_test(tc, ids_checked_on_gpu);
    if (WANT("model")) tcase_add_test(tc, weights_cast_follows_updates);
    if (WANT("elementwise")) tcase_add_loop_test(tc, elementwise_vs_cpu, 0, NCASES(ew_cases));
    if (WANT("reduce")) tcase_add_loop_test(tc, views_reductions_vs_cpu, 0, NCASES(rv_cases));
    if (WANT("norm")) tcase_add_loop_test(tc, norms_vs_cpu, 0, NCASES(nm_cases));
    if (WANT("rope")) tcase_add_loop_test(tc, rope_vs_cpu, 0, NCASES(rope_cases));
    if (WANT("attention")) {
        tcase_add_test(tc, cudnn_loads);
        tcase_add_test(tc, cudnn_backward_chunked);
        tcase_add_loop_test(tc, attention_vs_cpu, 0, NCASES(attn_cases));
    }
    if (WANT("loss")) {
        tcase_add_loop_test(tc, cross_entropy_vs_cpu, 0, NCASES(ce_cases));
        tcase_add_test(tc, cross_entropy_all_ignored);
        tcase_add_loop_test(tc, embedding_vs_cpu, 0, NCASES(emb_cases));
    }
    if (WANT("copy")) tcase_add_test(tc, copy_dtypes);
    if (WANT("determinism")) tcase_add_test(tc, deterministic);
    if (WANT("errors")) tcase_add_test(tc, errors);
    if (WANT("model")) tcase_add_loop_test(tc, model_vs_cpu, 0, 2 * NCASES(model_variants));
    if (WANT("optim")) tcase_add_test(tc, adamw_and_norm_vs_cpu);
    if (WANT("train")) {
        tcase_add_loop_test(tc, train_steps_vs_cpu, 0, NCASES(train_variants));
        tcase_add_test(tc, trainer_on_cuda);
    }
    if (WANT("calib")) tcase_add_test(tc, calib_gram_vs_cpu);
    if (WANT("linalg")) tcase_add_test(tc, linalg_vs_lapacke);
    if (WANT("convert")) tcase_add_loop_test(tc, convert_on_cuda, 0, NCASES(conv_cases));
#undef WANT
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    /* CUDA does not survive fork(): run every test in this process */
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    kvf_ctx_free(g_cpu);
    kvf_ctx_free(g_gpu);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
