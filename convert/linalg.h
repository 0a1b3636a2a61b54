/* linalg.h — the dense linear algebra conversions need, in double precision through
 * LAPACKE: symmetric eigendecomposition (PCA of calibration second moments) and thin SVD
 * (joint factorisation of weight matrices). Matrices are row-major. */
#ifndef KVF_CONVERT_LINALG_H
#define KVF_CONVERT_LINALG_H

#include "autograd/error.h"

/* A (n×n, symmetric) = V diag(w) Vᵀ with w descending; V's column j is eigenvector j.
 * A is not modified. */
kvf_status kvf_eigh_desc(int n, const double *A, double *w, double *V);

/* A (m×n) = U diag(s) Vt, k = min(m, n): U m×k, s[k] descending, Vt k×n. A unchanged. */
kvf_status kvf_svd(int m, int n, const double *A, double *U, double *s, double *Vt);

/* C (m×n) = op(A)·op(B), op = transpose when the flag is set (row-major, double). */
void kvf_dgemm(bool ta, bool tb, int m, int n, int k, const double *A, const double *B, double *C);

#endif
