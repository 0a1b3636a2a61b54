/* cpu_gemm.c — batched GEMM through OpenBLAS. Many small matrices (attention-shaped
 * batches) run one per OpenMP thread with BLAS single-threaded inside (the OpenMP build of
 * OpenBLAS does that by itself in a parallel region); large ones use BLAS's own threads. */
#include <cblas.h>
#include <omp.h>

#include "cpu_impl.h"

static void gemm_one(const kvf_gemm_args *g, int64_t i) {
    CBLAS_TRANSPOSE ta = g->trans_a ? CblasTrans : CblasNoTrans;
    CBLAS_TRANSPOSE tb = g->trans_b ? CblasTrans : CblasNoTrans;
    if (g->dtype == KVF_DTYPE_F32) {
        const float *a = (const float *)g->a + i * g->stride_a;
        const float *b = (const float *)g->b + i * g->stride_b;
        float *c = (float *)g->c + i * g->stride_c;
        cblas_sgemm(CblasRowMajor, ta, tb, (int)g->m, (int)g->n, (int)g->k, (float)g->alpha, a,
                    (int)g->lda, b, (int)g->ldb, (float)g->beta, c, (int)g->ldc);
    } else {
        const double *a = (const double *)g->a + i * g->stride_a;
        const double *b = (const double *)g->b + i * g->stride_b;
        double *c = (double *)g->c + i * g->stride_c;
        cblas_dgemm(CblasRowMajor, ta, tb, (int)g->m, (int)g->n, (int)g->k, g->alpha, a,
                    (int)g->lda, b, (int)g->ldb, g->beta, c, (int)g->ldc);
    }
}

kvf_status kvf_cpu_gemm(const kvf_gemm_args *g) {
    KVF_CHECK(g->dtype == KVF_DTYPE_F32 || g->dtype == KVF_DTYPE_F64, KVF_ERR_DTYPE,
              "gemm: the CPU backend computes in f32 or f64, got %s", kvf_dtype_name(g->dtype));
    KVF_CHECK(!g->c_f32 || g->dtype == KVF_DTYPE_F32, KVF_ERR_DTYPE,
              "gemm: the CPU backend has no mixed %s·%s → f32 GEMM", kvf_dtype_name(g->dtype),
              kvf_dtype_name(g->dtype));
    KVF_CHECK(g->m < INT32_MAX && g->n < INT32_MAX && g->k < INT32_MAX, KVF_ERR_SHAPE,
              "gemm: %lldx%lldx%lld exceeds BLAS's 32-bit sizes", (long long)g->m,
              (long long)g->n, (long long)g->k);
    KVF_CHECK(!g->c_in || (g->batch == 1 && !g->c_f32), KVF_ERR_ARG,
              "gemm: a separate C input needs batch 1 and C in the inputs' dtype");
    if (g->m == 0 || g->n == 0) return KVF_OK;
    if (g->c_in && g->c_in != g->c) {
        /* the product first, then the addend: the same sums, in the same order, as a
         * matmul followed by an add (the CPU is the reference) */
        kvf_gemm_args p = *g;
        p.c_in = NULL;
        p.beta = 0.0;
        gemm_one(&p, 0);
        const size_t es = kvf_dtype_size(g->dtype);
        for (int64_t r = 0; r < g->m; r++) {
            char *c = (char *)g->c + (size_t)(r * g->ldc) * es;
            const char *ci = (const char *)g->c_in + (size_t)(r * g->ldc) * es;
            if (g->dtype == KVF_DTYPE_F32)
                for (int64_t j = 0; j < g->n; j++)
                    ((float *)c)[j] += (float)g->beta * ((const float *)ci)[j];
            else
                for (int64_t j = 0; j < g->n; j++)
                    ((double *)c)[j] += g->beta * ((const double *)ci)[j];
        }
        return KVF_OK;
    }
    /* batches sharing C (stride_c == 0) must run in order: never in parallel */
    bool small = g->m * g->n * g->k < (int64_t)128 * 128 * 128;
    if (g->batch > 1 && small && g->stride_c != 0) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < g->batch; i++) gemm_one(g, i);
    } else {
        for (int64_t i = 0; i < g->batch; i++) gemm_one(g, i);
    }
    return KVF_OK;
}
