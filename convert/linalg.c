#include "linalg.h"

#include <cblas.h>
#include <lapacke.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/backend.h"

/* ---- where the work runs ------------------------------------------------------------------ */

static kvf_device g_device = KVF_DEVICE_CPU;
static double g_min_flops = KVF_LINALG_GPU_MIN_FLOPS;
static struct kvf_linalg_counts g_counts;
static char g_failure[512];

kvf_status kvf_linalg_set_device(kvf_device device, double min_flops) {
    if (device != KVF_DEVICE_CPU) {
        const kvf_backend *be = kvf_backend_get(device);
        if (!be) return kvf_error_code();
        KVF_CHECK(be->eigh_f64 && be->svd_f64 && be->dgemm_f64, KVF_ERR_UNSUPPORTED,
                  "linalg: the %s backend has no f64 eigh/svd/dgemm", be->name);
    }
    g_device = device;
    g_min_flops = min_flops < 0 ? KVF_LINALG_GPU_MIN_FLOPS : min_flops;
    memset(&g_counts, 0, sizeof g_counts);
    g_failure[0] = '\0';
    return KVF_OK;
}

kvf_device kvf_linalg_device(void) { return g_device; }

struct kvf_linalg_counts kvf_linalg_device_counts(void) { return g_counts; }

const char *kvf_linalg_take_failure(void) {
    static char out[sizeof g_failure];
    if (!g_failure[0]) return NULL;
    memcpy(out, g_failure, sizeof out);
    g_failure[0] = '\0';
    return out;
}

/* The device backend for a problem of this many flops, or NULL: the CPU. */
static const kvf_backend *device_for(double flops) {
    if (g_device == KVF_DEVICE_CPU || flops < g_min_flops) return NULL;
    return kvf_backend_get(g_device); /* non-NULL: checked by kvf_linalg_set_device */
}

/* ---- the functions -------------------------------------------------------------------------- */

kvf_status kvf_eigh_desc(int n, const double *A, double *w, double *V) {
    const kvf_backend *be = device_for(9.0 * (double)n * (double)n * (double)n);
    if (be) {
        g_counts.eigh++;
        return be->eigh_f64(n, A, w, V);
    }
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
    /* bidiagonalisation 4mnk, plus forming both thin factors */
    const kvf_backend *be = device_for(8.0 * (double)m * (double)n * (double)k);
    if (be) {
        g_counts.svd++;
        return be->svd_f64(m, n, A, U, s, Vt);
    }
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
    const kvf_backend *be = device_for(2.0 * (double)m * (double)n * (double)k);
    if (be) {
        g_counts.dgemm++;
        if (be->dgemm_f64(ta, tb, m, n, k, A, B, C) == KVF_OK) return;
        /* callers take no status: keep the first failure for the driver, compute here */
        if (!g_failure[0]) snprintf(g_failure, sizeof g_failure, "%s", kvf_error_message());
        kvf_error_clear();
    }
    cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k,
                1.0, A, ta ? m : k, B, tb ? k : n, 0.0, C, n);
}
