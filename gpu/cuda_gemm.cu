/* cuda_gemm.cu — batched GEMM through cuBLASLt.
 *
 * kvforge's GEMM is row-major: C[b] = alpha·op(A[b])·op(B[b]) + beta·C[b]. cuBLASLt is
 * column-major, and a row-major matrix is the column-major view of its transpose, so we
 * ask for Cᵀ = op(B)ᵀ·op(A)ᵀ: cuBLASLt's "A" is our B (n×k, or k×n stored) and its "B" is
 * our A, with the same transpose flags; M' = n, N' = m.
 *
 * bf16: bf16 in/out with an f32 accumulator (CUBLAS_COMPUTE_32F); with c_f32, C is f32
 * (weight gradients into the f32 master gradients). f32: plain f32 FMA
 * (CUBLAS_COMPUTE_32F, no TF32) so results stay within f32 rounding of the CPU reference;
 * KVF_CUDA_TF32=1 in the environment switches f32 GEMMs to TF32 tensor cores (about 1e-3
 * relative error). f64 is CPU-only.
 *
 * Batches with stride 0 on A or B are strided batches with a 0 offset. Batches that share
 * C (stride_c = 0, batch > 1) run one after the other, each C = alpha·A_i·B_i + beta·C, as
 * the CPU does. Plans (descriptors + the heuristic's algorithm) are cached per shape,
 * layout, dtype and pointer alignment; the workspace is 32 MiB (Hopper kernels want it). */
#include <cublasLt.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.h"

#define GEMM_WORKSPACE ((size_t)32 << 20)
#define PLAN_SLOTS 512
#define PLAN_PROBE 8

static cublasLtHandle_t g_lt;
static void *g_ws;
static bool g_tf32;

#define KVF_LT(call, ...)                                                                     \
    do {                                                                                      \
        cublasStatus_t kvf_s_ = (call);                                                       \
        if (kvf_s_ != CUBLAS_STATUS_SUCCESS)                                                  \
            return kvf_cuda_report(__FILE__, __LINE__, #call, kvf_s_ == CUBLAS_STATUS_ALLOC_FAILED, \
                                   cublasLtGetStatusString(kvf_s_), __VA_ARGS__);             \
    } while (0)

kvf_status kvf_cuda_gemm_init(void) {
    KVF_LT(cublasLtCreate(&g_lt), "cuda gemm init");
    KVF_CU(cudaMalloc(&g_ws, GEMM_WORKSPACE), "cuda gemm init: %zu byte workspace", GEMM_WORKSPACE);
    const char *e = getenv("KVF_CUDA_TF32");
    g_tf32 = e && e[0] == '1';
    return KVF_OK;
}

struct plan_key {
    int dtype, ta, tb, tf32, c_f32;
    int64_t m, n, k, batch, lda, ldb, ldc, sa, sb, sc;
    uint32_t align_a, align_b, align_c;
};

struct plan {
    bool used;
    plan_key key;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc; /* cuBLASLt's A (our B), B (our A), C */
    cublasLtMatmulAlgo_t algo;
};

static plan g_plans[PLAN_SLOTS];

static uint32_t align_of(const void *p, int64_t stride_bytes, int64_t batch) {
    uint64_t a = (uint64_t)(uintptr_t)p;
    if (batch > 1 && stride_bytes) a |= (uint64_t)stride_bytes;
    uint32_t al = 256;
    while (al > 1 && (a & (al - 1))) al >>= 1;
    return al;
}

static uint64_t key_hash(const plan_key *k) {
    const unsigned char *p = (const unsigned char *)k;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof *k; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static void plan_destroy(plan *p) {
    if (!p->used) return;
    cublasLtMatrixLayoutDestroy(p->la);
    cublasLtMatrixLayoutDestroy(p->lb);
    cublasLtMatrixLayoutDestroy(p->lc);
    cublasLtMatmulDescDestroy(p->op);
    p->used = false;
}

/* A column-major layout rows×cols (ld), batched. */
static kvf_status make_layout(cublasLtMatrixLayout_t *l, cudaDataType_t t, int64_t rows,
                              int64_t cols, int64_t ld, int64_t batch, int64_t stride,
                              const char *what) {
    if (cols <= 1 && ld < rows) ld = rows; /* a single column: ld is free, cuBLASLt wants >= rows */
    if (ld < 1) ld = 1;
    KVF_LT(cublasLtMatrixLayoutCreate(l, t, (uint64_t)rows, (uint64_t)cols, ld), "%s", what);
    if (batch > 1) {
        int32_t bc = (int32_t)batch;
        KVF_LT(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc),
               "%s", what);
        KVF_LT(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                &stride, sizeof stride),
               "%s", what);
    }
    return KVF_OK;
}

static kvf_status plan_build(plan *p, const plan_key *k, const char *what) {
    memset(p, 0, sizeof *p);
    p->key = *k;
    const bool bf = k->dtype == KVF_DTYPE_BF16;
    const cudaDataType_t t = bf ? CUDA_R_16BF : CUDA_R_32F;
    const cublasComputeType_t ct = (!bf && k->tf32) ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    KVF_LT(cublasLtMatmulDescCreate(&p->op, ct, CUDA_R_32F), "%s", what);
    cublasOperation_t opa = k->tb ? CUBLAS_OP_T : CUBLAS_OP_N; /* cuBLASLt's A = our B */
    cublasOperation_t opb = k->ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    KVF_LT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa), "%s", what);
    KVF_LT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb), "%s", what);
    /* our B memory: row-major k×n (no trans) = col-major n×k; trans: row-major n×k = col k×n */
    int64_t ar = k->tb ? k->k : k->n, ac = k->tb ? k->n : k->k;
    /* our A memory: row-major m×k (no trans) = col-major k×m; trans: row-major k×m = col m×k */
    int64_t br = k->ta ? k->m : k->k, bcn = k->ta ? k->k : k->m;
    kvf_status st;
    if ((st = make_layout(&p->la, t, ar, ac, k->ldb, k->batch, k->sb, what)) != KVF_OK ||
        (st = make_layout(&p->lb, t, br, bcn, k->lda, k->batch, k->sa, what)) != KVF_OK ||
        (st = make_layout(&p->lc, k->c_f32 ? CUDA_R_32F : t, k->n, k->m, k->ldc, k->batch, k->sc,
                          what)) != KVF_OK) {
        p->used = true;
        plan_destroy(p);
        return st;
    }
    p->used = true;
    cublasLtMatmulPreference_t pref;
    KVF_LT(cublasLtMatmulPreferenceCreate(&pref), "%s", what);
    uint64_t ws = GEMM_WORKSPACE;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    uint32_t al_a = k->align_b, al_b = k->align_a, al_c = k->align_c; /* swapped roles */
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof al_c);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(g_lt, p->op, p->la, p->lb, p->lc, p->lc,
                                                       pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (hs != CUBLAS_STATUS_SUCCESS || found == 0) {
        plan_destroy(p);
        return kvf_error_set(KVF_ERR_BACKEND,
                             "%s: cublasLtMatmulAlgoGetHeuristic found no algorithm (%s)", what,
                             hs == CUBLAS_STATUS_SUCCESS ? "0 results" : cublasLtGetStatusString(hs));
    }
    p->algo = res.algo;
    return KVF_OK;
}

static plan *plan_get(const plan_key *k, const char *what) {
    uint64_t h = key_hash(k);
    for (int i = 0; i < PLAN_PROBE; i++) {
        plan *p = &g_plans[(h + (uint64_t)i) % PLAN_SLOTS];
        if (p->used && memcmp(&p->key, k, sizeof *k) == 0) return p;
    }
    plan *slot = NULL;
    for (int i = 0; i < PLAN_PROBE && !slot; i++) {
        plan *p = &g_plans[(h + (uint64_t)i) % PLAN_SLOTS];
        if (!p->used) slot = p;
    }
    if (!slot) { /* every probe slot taken: replace the first */
        slot = &g_plans[h % PLAN_SLOTS];
        plan_destroy(slot);
    }
    if (plan_build(slot, k, what) != KVF_OK) return NULL;
    return slot;
}

kvf_status kvf_cuda_gemm(const kvf_gemm_args *g) {
    char what[200];
    snprintf(what, sizeof what, "gemm %s%lldx%lldx%lld%s%s batch %lld",
             kvf_dtype_name(g->dtype), (long long)g->m, (long long)g->n, (long long)g->k,
             g->trans_a ? " Aᵀ" : "", g->trans_b ? " Bᵀ" : "", (long long)g->batch);
    if (g->dtype != KVF_DTYPE_F32 && g->dtype != KVF_DTYPE_BF16)
        return kvf_cuda_bad_dtype("gemm", g->dtype);
    if (g->m < 0 || g->n < 0 || g->k < 0 || g->batch < 0)
        return kvf_error_set(KVF_ERR_SHAPE, "%s: negative size", what);
    if (g->m == 0 || g->n == 0 || g->batch == 0) return KVF_OK;
    const void *c_in = g->c_in ? g->c_in : g->c;
    if (c_in != g->c && (g->batch != 1 || g->c_f32))
        return kvf_error_set(KVF_ERR_ARG, "%s: a separate C input needs batch 1 and C in the "
                             "inputs' dtype", what);
    if (g->m > INT32_MAX || g->n > INT32_MAX || g->k > INT32_MAX || g->batch > INT32_MAX)
        return kvf_error_set(KVF_ERR_SHAPE, "%s: sizes exceed cuBLASLt's 32-bit limits", what);
    const size_t es = kvf_dtype_size(g->dtype);
    const size_t es_c = g->c_f32 ? sizeof(float) : es;
    const bool shared_c = g->stride_c == 0 && g->batch > 1;
    const int64_t nb = shared_c ? 1 : g->batch; /* batches per cuBLASLt call */
    if (g->k == 0 && c_in != g->c) { /* C = beta·c_in */
        KVF_CU(cudaMemcpy2DAsync(g->c, (size_t)g->ldc * es, c_in, (size_t)g->ldc * es,
                                 (size_t)g->n * es, (size_t)g->m, cudaMemcpyDeviceToDevice, KVF_STREAM),
               "%s: copying the C input", what);
        return kvf_cuda_scale_inplace(g->c, g->m, g->n, g->ldc, g->beta, g->dtype);
    }
    if (g->k == 0) { /* C = beta·C for every batch */
        for (int64_t i = 0; i < g->batch; i++) {
            if (shared_c && i > 0 && g->beta == 1.0) break;
            KVF_TRY(kvf_cuda_scale_inplace((char *)g->c + (size_t)(i * g->stride_c) * es_c, g->m,
                                           g->n, g->ldc, g->beta,
                                           g->c_f32 ? KVF_DTYPE_F32 : g->dtype));
            if (shared_c && g->beta == 0.0) break;
        }
        return KVF_OK;
    }
    plan_key key;
    memset(&key, 0, sizeof key);
    key.dtype = (int)g->dtype;
    key.ta = g->trans_a;
    key.tb = g->trans_b;
    key.tf32 = g_tf32 && g->dtype == KVF_DTYPE_F32;
    key.c_f32 = g->c_f32 && g->dtype != KVF_DTYPE_F32;
    key.m = g->m;
    key.n = g->n;
    key.k = g->k;
    key.batch = nb;
    key.lda = g->lda;
    key.ldb = g->ldb;
    key.ldc = g->ldc;
    key.sa = nb > 1 ? g->stride_a : 0;
    key.sb = nb > 1 ? g->stride_b : 0;
    key.sc = nb > 1 ? g->stride_c : 0;
    /* alignment over every batch's pointer (the sequential path offsets by the strides) */
    const int64_t ab = shared_c ? g->batch : nb;
    key.align_a = align_of(g->a, g->stride_a * (int64_t)es, ab);
    key.align_b = align_of(g->b, g->stride_b * (int64_t)es, ab);
    key.align_c = align_of(g->c, g->stride_c * (int64_t)es_c, nb);
    const uint32_t align_ci = align_of(c_in, 0, 1);
    if (align_ci < key.align_c) key.align_c = align_ci;
    plan *p = plan_get(&key, what);
    if (!p) return kvf_error_code();
    const float alpha = (float)g->alpha, beta = (float)g->beta;
    const int64_t calls = shared_c ? g->batch : 1;
    for (int64_t i = 0; i < calls; i++) {
        const char *a = (const char *)g->a + (size_t)(i * g->stride_a) * es;
        const char *b = (const char *)g->b + (size_t)(i * g->stride_b) * es;
        KVF_LT(cublasLtMatmul(g_lt, p->op, &alpha, b, p->la, a, p->lb, &beta, c_in, p->lc, g->c,
                              p->lc, &p->algo, g_ws, GEMM_WORKSPACE, KVF_STREAM),
               "%s", what);
    }
    return KVF_OK;
}
