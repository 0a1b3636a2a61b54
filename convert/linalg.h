/* linalg.h — the dense linear algebra conversions need, in double precision: symmetric
 * eigendecomposition (PCA of calibration second moments), thin SVD (joint factorisation of
 * weight matrices) and matrix products. Matrices are row-major and live on the host. They run
 * through LAPACKE/OpenBLAS, or, after kvf_linalg_set_device(KVF_DEVICE_CUDA, ...), through the
 * device backend's f64 entries (cuSOLVER / cuBLAS: autograd/backend.h) for problems large
 * enough to pay for the transfers. */
#ifndef KVF_CONVERT_LINALG_H
#define KVF_CONVERT_LINALG_H

#include <stdbool.h>

#include "autograd/tensor.h"

/* A (n×n, symmetric) = V diag(w) Vᵀ with w descending; V's column j is eigenvector j.
 * A is not modified. */
kvf_status kvf_eigh_desc(int n, const double *A, double *w, double *V);

/* A (m×n) = U diag(s) Vt, k = min(m, n): U m×k, s[k] descending, Vt k×n. A unchanged. */
kvf_status kvf_svd(int m, int n, const double *A, double *U, double *s, double *Vt);

/* C (m×n) = op(A)·op(B), op = transpose when the flag is set (row-major, double). On a device
 * a failing product is redone on the CPU (the result is always valid) and the failure is kept
 * for kvf_linalg_take_failure. */
void kvf_dgemm(bool ta, bool tb, int m, int n, int k, const double *A, const double *B, double *C);

/* Below this many floating-point operations (estimated: eigh 9n³, SVD 6mn·min(m, n) + ...,
 * dgemm 2mnk) a problem stays on the CPU even with a device set: the transfers and the
 * launch latency would cost more than the arithmetic. */
#define KVF_LINALG_GPU_MIN_FLOPS 1e8

/* Where the functions above run from now on, process-wide (the conversions run on one
 * thread): KVF_DEVICE_CPU (the default) or a device whose backend has the f64 entries, for
 * problems of at least min_flops (< 0: KVF_LINALG_GPU_MIN_FLOPS). Errors when the device's
 * backend is missing or lacks them; the setting is then unchanged. */
kvf_status kvf_linalg_set_device(kvf_device device, double min_flops);
kvf_device kvf_linalg_device(void);

/* How many eigh / SVD / dgemm calls ran on the device since the last kvf_linalg_set_device,
 * and the first device dgemm failure's message (NULL: none), which is then cleared. */
struct kvf_linalg_counts {
    long eigh, svd, dgemm;
};
struct kvf_linalg_counts kvf_linalg_device_counts(void);
const char *kvf_linalg_take_failure(void);

#endif
