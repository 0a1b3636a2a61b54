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
    if (g->m == 0 || g->n == 0) return KVF_OK;
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
