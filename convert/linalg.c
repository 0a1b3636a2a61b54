#include "linalg.h"

#include <cblas.h>
#include <lapacke.h>
#include <stdlib.h>
#include <string.h>

kvf_status kvf_eigh_desc(int n, const double *A, double *w, double *V) {
    double *a = malloc(sizeof(double) * (size_t)n * (size_t)n), *wa = malloc(sizeof(double) * (size_t)n);
    if (!a || !wa) {
        free(a);
        free(wa);
        return kvf_error_set(KVF_ERR_OOM, "eigh: out of memory for a %d×%d matrix", n, n);
    }
    memcpy(a, A, sizeof(double) * (size_t)n * (size_t)n);
    lapack_int info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', n, a, n, wa);
    if (info != 0) {
        free(a);
        free(wa);
        return kvf_error_set(KVF_ERR_NUMERIC, "eigh: LAPACKE_dsyevd failed on a %d×%d matrix (info %d)", n, n,
                             (int)info);
    }
    /* LAPACK returns ascending order: reverse the columns */
    for (int j = 0; j < n; j++) {
        w[j] = wa[n - 1 - j];
        for (int i = 0; i < n; i++) V[(size_t)i * n + j] = a[(size_t)i * n + (n - 1 - j)];
    }
    free(a);
    free(wa);
    return KVF_OK;
}

kvf_status kvf_svd(int m, int n, const double *A, double *U, double *s, double *Vt) {
    int k = m < n ? m : n;
    double *a = malloc(sizeof(double) * (size_t)m * (size_t)n);
    KVF_CHECK(a, KVF_ERR_OOM, "svd: out of memory for a %d×%d matrix", m, n);
    memcpy(a, A, sizeof(double) * (size_t)m * (size_t)n);
    lapack_int info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', m, n, a, n, s, U, k, Vt, n);
    free(a);
    KVF_CHECK(info == 0, KVF_ERR_NUMERIC, "svd: LAPACKE_dgesdd failed on a %d×%d matrix (info %d)", m, n,
              (int)info);
    return KVF_OK;
}

void kvf_dgemm(bool ta, bool tb, int m, int n, int k, const double *A, const double *B, double *C) {
    cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k,
                1.0, A, ta ? m : k, B, tb ? k : n, 0.0, C, n);
}
