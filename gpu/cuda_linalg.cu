/* cuda_linalg.cu — the conversions' (convert/) double-precision work on the GPU: the
 * calibration second moments accumulated from device activations (gram_f64), and the dense
 * factorisations of host matrices (eigh_f64, svd_f64, dgemm_f64) through cuSOLVER and cuBLAS.
 *
 * Precision: the Gram block of one batch is a plain f32 GEMM with f32 accumulation (cuBLAS
 * default math: never TF32, whatever KVF_CUDA_TF32 says for training GEMMs) over at most a
 * few thousand rows, then added into f64 accumulators, so the sum over a whole calibration
 * run grows in double as on the CPU; column sums are taken in double. The factorisations
 * are f64 end to end (cusolverDnDsyevd, cusolverDnDgesvd, cublasDgemm).
 *
 * Layouts: kvforge matrices are row-major, cuSOLVER/cuBLAS column-major; a row-major matrix
 * is the column-major view of its transpose. Each function says how it maps.
 *
 * The handles are made on first use (a training run never pays for cuSOLVER), on the legacy
 * default stream like every other kernel here. Host-matrix functions block until their
 * results are downloaded. Scratch: one growable device buffer of this file's own, so a
 * Gram call (which uses kvf_cuda_scratch) never invalidates it. */
#include <cublas_v2.h>
#include <cusolverDn.h>
#include <stdio.h>

#include "cuda_common.h"

static cublasHandle_t g_blas;
static cusolverDnHandle_t g_solver;
static bool g_ready;

static const char *blas_reason(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "cuBLAS error";
    }
}

static const char *solver_reason(cusolverStatus_t s) {
    switch (s) {
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default: return "cuSOLVER error";
    }
}

#define KVF_BLAS(call, ...)                                                                   \
    do {                                                                                      \
        cublasStatus_t kvf_s_ = (call);                                                       \
        if (kvf_s_ != CUBLAS_STATUS_SUCCESS)                                                  \
            return kvf_cuda_report(__FILE__, __LINE__, #call, kvf_s_ == CUBLAS_STATUS_ALLOC_FAILED, \
                                   blas_reason(kvf_s_), __VA_ARGS__);                         \
    } while (0)

#define KVF_SOLVER(call, ...)                                                                 \
    do {                                                                                      \
        cusolverStatus_t kvf_s_ = (call);                                                     \
        if (kvf_s_ != CUSOLVER_STATUS_SUCCESS)                                                \
            return kvf_cuda_report(__FILE__, __LINE__, #call,                                 \
                                   kvf_s_ == CUSOLVER_STATUS_ALLOC_FAILED,                    \
                                   solver_reason(kvf_s_), __VA_ARGS__);                       \
    } while (0)

static kvf_status ready(const char *what) {
    if (g_ready) return KVF_OK;
    KVF_BLAS(cublasCreate(&g_blas), "%s: creating the cuBLAS handle", what);
    /* default math: f32 GEMMs stay in f32 FMA (TF32 would cost the Gram ~1e-3 relative) */
    KVF_BLAS(cublasSetMathMode(g_blas, CUBLAS_DEFAULT_MATH), "%s", what);
    KVF_BLAS(cublasSetStream(g_blas, KVF_STREAM), "%s", what);
    KVF_SOLVER(cusolverDnCreate(&g_solver), "%s: creating the cuSOLVER handle", what);
    KVF_SOLVER(cusolverDnSetStream(g_solver, KVF_STREAM), "%s", what);
    g_ready = true;
    return KVF_OK;
}

/* ---- this file's device buffer ------------------------------------------------------------ */

static void *g_buf;
static size_t g_buf_size;

/* n bytes of device memory valid until the next call; NULL with the error set. */
static void *lin_buf(size_t n, const char *what) {
    if (n <= g_buf_size && g_buf) return g_buf;
    if (g_buf) {
        if (cudaDeviceSynchronize() != cudaSuccess) (void)cudaGetLastError();
        cudaFree(g_buf);
        g_buf = NULL;
        g_buf_size = 0;
    }
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        kvf_error_set(KVF_ERR_OOM, "%s: cudaMalloc of %zu bytes failed: %s (%zu MiB free of %zu MiB)",
                      what, n, cudaGetErrorString(e), fr >> 20, tot >> 20);
        return NULL;
    }
    g_buf = p;
    g_buf_size = n;
    return p;
}

/* Byte offsets of consecutive arrays carved from one buffer, each 256-byte aligned. */
static size_t carve(size_t *at, size_t nbytes) {
    size_t o = *at;
    *at += (nbytes + 255) & ~(size_t)255;
    return o;
}

/* ---- kernels --------------------------------------------------------------------------------- */

/* acc[i·(d+1) + j] += s[i·d + j] for i, j < d (s: the f32 Gram block, row-major). */
__global__ void kvf_gram_add_kernel(double *acc, const float *s, int64_t d) {
    int64_t n = d * d;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = e / d, j = e - i * d;
        acc[i * (d + 1) + j] += (double)s[e];
    }
}

/* The augmented border: acc[i][d] += Σ_t x[t][i], acc[d][j] += Σ_t y[t][j], acc[d][d] += N.
 * One thread per column, rows in order, in double: deterministic, and adjacent threads read
 * adjacent addresses. */
__global__ void kvf_gram_border_kernel(double *acc, const float *x, const float *y, int64_t N,
                                       int64_t d) {
    int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (j < d) {
        double sx = 0.0, sy = 0.0;
        for (int64_t t = 0; t < N; t++) {
            sx += (double)x[t * d + j];
            if (y != x) sy += (double)y[t * d + j];
        }
        acc[j * (d + 1) + d] += sx;
        acc[d * (d + 1) + j] += y != x ? sy : sx;
    } else if (j == d) {
        acc[d * (d + 1) + d] += (double)N;
    }
}

/* out (rows×cols, row-major) = inᵀ where in is cols×rows row-major. */
__global__ void kvf_transpose_f64_kernel(double *out, const double *in, int64_t rows,
                                         int64_t cols) {
    __shared__ double tile[32][33];
    /* this block writes out rows bx.., columns by..: it reads in rows by.., columns bx..
     * (coalesced both ways through the padded tile) */
    int64_t bx = blockIdx.x * 32, by = blockIdx.y * 32;
    for (int k = threadIdx.y; k < 32; k += blockDim.y) {
        int64_t r = by + k, c = bx + threadIdx.x; /* in row r (< cols), column c (< rows) */
        if (r < cols && c < rows) tile[k][threadIdx.x] = in[r * rows + c];
    }
    __syncthreads();
    for (int k = threadIdx.y; k < 32; k += blockDim.y) {
        int64_t r = bx + k, c = by + threadIdx.x; /* out row r (< rows), column c (< cols) */
        if (r < rows && c < cols) out[r * cols + c] = tile[threadIdx.x][k];
    }
}

static kvf_status transpose(double *out, const double *in, int64_t rows, int64_t cols,
                            const char *what) {
    dim3 block(32, 8), grid((unsigned)((rows + 31) / 32), (unsigned)((cols + 31) / 32));
    kvf_transpose_f64_kernel<<<grid, block, 0, KVF_STREAM>>>(out, in, rows, cols);
    KVF_LAUNCH("kvf_transpose_f64_kernel", "%s: transposing %lld×%lld", what, (long long)cols,
               (long long)rows);
    return KVF_OK;
}

/* cuSOLVER's ascending eigenpairs (column-major vectors) → descending, row-major V with
 * eigenvector j in column j: V[i][j] = vc[i + (n-1-j)·n], w[j] = wa[n-1-j]. */
__global__ void kvf_eig_reorder_kernel(double *V, double *w, const double *vc, const double *wa,
                                       int64_t n) {
    int64_t total = n * n;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        int64_t i = e / n, j = e - i * n;
        V[e] = vc[i + (n - 1 - j) * n];
        if (i == 0) w[j] = wa[n - 1 - j];
    }
}

/* ---- the Gram accumulation ---------------------------------------------------------------- */

kvf_status kvf_cuda_gram_f64(double *acc, const kvf_tensor *x, const kvf_tensor *y) {
    char what[200];
    snprintf(what, sizeof what, "gram_f64 of x %s and y %s", KVF_CDESC(x), KVF_CDESC(y ? y : x));
    if (!y) y = x;
    if (x->dtype != KVF_DTYPE_F32 || y->dtype != KVF_DTYPE_F32 || !kvf_tensor_is_contiguous(x) ||
        !kvf_tensor_is_contiguous(y) || x->ndim < 1 || kvf_tensor_numel(x) != kvf_tensor_numel(y) ||
        y->shape[y->ndim - 1] != x->shape[x->ndim - 1])
        return kvf_error_set(KVF_ERR_SHAPE, "%s: want contiguous f32 tensors of one shape [..., d]", what);
    const int64_t d = x->shape[x->ndim - 1], N = d ? kvf_tensor_numel(x) / d : 0;
    if (d > INT32_MAX || N > INT32_MAX)
        return kvf_error_set(KVF_ERR_SHAPE, "%s: sizes exceed cuBLAS's 32-bit limits", what);
    KVF_TRY(ready(what));
    const float *px = (const float *)kvf_tensor_data(x), *py = (const float *)kvf_tensor_data(y);
    if (N > 0 && d > 0) {
        float *s = (float *)kvf_cuda_scratch(sizeof(float) * (size_t)(d * d), what);
        if (!s) return kvf_error_code();
        /* column-major S = Yc·Xcᵀ (Xc = x's memory as d×N), i.e. row-major S[i][j] =
         * Σ_t x[t][i]·y[t][j]: rows from x, columns from y */
        const float one = 1.0f, zero = 0.0f;
        KVF_BLAS(cublasSgemm(g_blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)d, (int)d, (int)N, &one, py,
                             (int)d, px, (int)d, &zero, s, (int)d),
                 "%s: cublasSgemm %lld×%lld×%lld", what, (long long)d, (long long)d, (long long)N);
        kvf_gram_add_kernel<<<kvf_cuda_blocks(d * d, 256), 256, 0, KVF_STREAM>>>(acc, s, d);
        KVF_LAUNCH("kvf_gram_add_kernel", "%s", what);
    }
    kvf_gram_border_kernel<<<(unsigned)((d + 1 + 127) / 128), 128, 0, KVF_STREAM>>>(
        acc, px, py, N, d);
    KVF_LAUNCH("kvf_gram_border_kernel", "%s", what);
    return KVF_OK;
}

/* ---- factorisations of host matrices ---------------------------------------------------------- */

kvf_status kvf_cuda_eigh_f64(int n, const double *A, double *w, double *V) {
    char what[120];
    snprintf(what, sizeof what, "eigh (cuSOLVER) of a %d×%d matrix", n, n);
    if (n <= 0) return n == 0 ? KVF_OK : kvf_error_set(KVF_ERR_SHAPE, "%s: negative size", what);
    KVF_TRY(ready(what));
    const size_t nn = (size_t)n * (size_t)n;
    int lwork = 0;
    /* a row-major symmetric matrix is its own column-major view; LOWER here is the upper
     * triangle of the row-major matrix, the triangle the CPU's LAPACKE_dsyevd('U') reads */
    KVF_SOLVER(cusolverDnDsyevd_bufferSize(g_solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER,
                                           n, NULL, n, NULL, &lwork),
               "%s: cusolverDnDsyevd_bufferSize", what);
    size_t at = 0;
    size_t oa = carve(&at, sizeof(double) * nn), ov = carve(&at, sizeof(double) * nn),
           ow = carve(&at, sizeof(double) * (size_t)n), owa = carve(&at, sizeof(double) * (size_t)n),
           oi = carve(&at, sizeof(int)), owk = carve(&at, sizeof(double) * (size_t)(lwork > 0 ? lwork : 1));
    char *b = (char *)lin_buf(at, what);
    if (!b) return kvf_error_code();
    double *dA = (double *)(b + oa), *dV = (double *)(b + ov), *dw = (double *)(b + ow),
           *dwa = (double *)(b + owa), *work = (double *)(b + owk);
    int *dinfo = (int *)(b + oi);
    KVF_CU(cudaMemcpy(dA, A, sizeof(double) * nn, cudaMemcpyHostToDevice), "%s: upload", what);
    KVF_SOLVER(cusolverDnDsyevd(g_solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, dA, n,
                                dwa, work, lwork, dinfo),
               "%s: cusolverDnDsyevd (lwork %d)", what, lwork);
    int info = 0;
    KVF_CU(cudaMemcpy(&info, dinfo, sizeof info, cudaMemcpyDeviceToHost), "%s: cusolverDnDsyevd info", what);
    if (info != 0)
        return kvf_error_set(KVF_ERR_NUMERIC, "%s: cusolverDnDsyevd failed (info %d)", what, info);
    kvf_eig_reorder_kernel<<<kvf_cuda_blocks((int64_t)nn, 256), 256, 0, KVF_STREAM>>>(dV, dw, dA, dwa, n);
    KVF_LAUNCH("kvf_eig_reorder_kernel", "%s", what);
    KVF_CU(cudaMemcpy(V, dV, sizeof(double) * nn, cudaMemcpyDeviceToHost), "%s: download V", what);
    KVF_CU(cudaMemcpy(w, dw, sizeof(double) * (size_t)n, cudaMemcpyDeviceToHost), "%s: download w", what);
    return KVF_OK;
}

kvf_status kvf_cuda_svd_f64(int m, int n, const double *A, double *U, double *s, double *Vt) {
    char what[120];
    snprintf(what, sizeof what, "svd (cuSOLVER) of a %d×%d matrix", m, n);
    if (m < 0 || n < 0) return kvf_error_set(KVF_ERR_SHAPE, "%s: negative size", what);
    if (m == 0 || n == 0) return KVF_OK;
    KVF_TRY(ready(what));
    /* cusolverDnDgesvd wants rows >= columns (column-major). Wide A (n >= m): its memory is
     * the column-major n×m matrix B = Aᵀ = Vt_Aᵀ S U_Aᵀ, so B's U is, as memory, row-major Vt_A
     * (k×n) and B's Vᵀ is row-major U_A (m×m): no copies. Tall A (m > n): transpose A on the
     * device, whose memory is then the column-major m×n A itself; its U and Vᵀ come back
     * column-major and are transposed into row-major U_A and Vt_A. */
    const bool tall = m > n;
    const int r = tall ? m : n, c = tall ? n : m, k = c; /* column-major r×c, r >= c */
    int lwork = 0;
    KVF_SOLVER(cusolverDnDgesvd_bufferSize(g_solver, r, c, &lwork), "%s: cusolverDnDgesvd_bufferSize", what);
    const size_t mn = (size_t)m * (size_t)n;
    size_t at = 0;
    size_t oa = carve(&at, sizeof(double) * mn), ot = carve(&at, tall ? sizeof(double) * mn : 0),
           ou = carve(&at, sizeof(double) * (size_t)r * (size_t)c),
           ovt = carve(&at, sizeof(double) * (size_t)c * (size_t)c),
           ou2 = carve(&at, tall ? sizeof(double) * (size_t)r * (size_t)c : 0),
           ovt2 = carve(&at, tall ? sizeof(double) * (size_t)c * (size_t)c : 0),
           os = carve(&at, sizeof(double) * (size_t)k), oi = carve(&at, sizeof(int)),
           owk = carve(&at, sizeof(double) * (size_t)(lwork > 0 ? lwork : 1));
    char *b = (char *)lin_buf(at, what);
    if (!b) return kvf_error_code();
    double *dA = (double *)(b + oa), *dT = (double *)(b + ot), *dU = (double *)(b + ou),
           *dVt = (double *)(b + ovt), *dU2 = (double *)(b + ou2), *dVt2 = (double *)(b + ovt2),
           *ds = (double *)(b + os), *work = (double *)(b + owk);
    int *dinfo = (int *)(b + oi);
    KVF_CU(cudaMemcpy(dA, A, sizeof(double) * mn, cudaMemcpyHostToDevice), "%s: upload", what);
    double *src = dA;
    if (tall) {
        KVF_TRY(transpose(dT, dA, n, m, what)); /* row-major Aᵀ (n×m) */
        src = dT;
    }
    signed char job = 'S';
    KVF_SOLVER(cusolverDnDgesvd(g_solver, job, job, r, c, src, r, ds, dU, r, dVt, c, work, lwork, NULL,
                                dinfo),
               "%s: cusolverDnDgesvd %d×%d (lwork %d)", what, r, c, lwork);
    int info = 0;
    KVF_CU(cudaMemcpy(&info, dinfo, sizeof info, cudaMemcpyDeviceToHost), "%s: cusolverDnDgesvd info", what);
    if (info != 0)
        return kvf_error_set(KVF_ERR_NUMERIC, "%s: cusolverDnDgesvd failed (info %d%s)", what, info,
                             info > 0 ? ": superdiagonals did not converge" : "");
    if (tall) {
        /* dU: column-major m×k = row-major k×m → U_A row-major m×k; dVt: column-major k×n =
         * row-major n×k → Vt_A row-major k×n */
        KVF_TRY(transpose(dU2, dU, m, k, what));
        KVF_TRY(transpose(dVt2, dVt, k, n, what));
        KVF_CU(cudaMemcpy(U, dU2, sizeof(double) * (size_t)m * (size_t)k, cudaMemcpyDeviceToHost),
               "%s: download U", what);
        KVF_CU(cudaMemcpy(Vt, dVt2, sizeof(double) * (size_t)k * (size_t)n, cudaMemcpyDeviceToHost),
               "%s: download Vt", what);
    } else {
        KVF_CU(cudaMemcpy(U, dVt, sizeof(double) * (size_t)m * (size_t)k, cudaMemcpyDeviceToHost),
               "%s: download U", what);
        KVF_CU(cudaMemcpy(Vt, dU, sizeof(double) * (size_t)k * (size_t)n, cudaMemcpyDeviceToHost),
               "%s: download Vt", what);
    }
    KVF_CU(cudaMemcpy(s, ds, sizeof(double) * (size_t)k, cudaMemcpyDeviceToHost), "%s: download s", what);
    return KVF_OK;
}

kvf_status kvf_cuda_dgemm_f64(bool ta, bool tb, int m, int n, int k, const double *A, const double *B,
                              double *C) {
    char what[120];
    snprintf(what, sizeof what, "dgemm (cuBLAS) %d×%d×%d%s%s", m, n, k, ta ? " Aᵀ" : "", tb ? " Bᵀ" : "");
    if (m < 0 || n < 0 || k < 0) return kvf_error_set(KVF_ERR_SHAPE, "%s: negative size", what);
    if (m == 0 || n == 0) return KVF_OK;
    KVF_TRY(ready(what));
    size_t at = 0;
    size_t oa = carve(&at, sizeof(double) * (size_t)m * (size_t)k),
           ob = carve(&at, sizeof(double) * (size_t)k * (size_t)n),
           oc = carve(&at, sizeof(double) * (size_t)m * (size_t)n);
    char *b = (char *)lin_buf(at, what);
    if (!b) return kvf_error_code();
    double *dA = (double *)(b + oa), *dB = (double *)(b + ob), *dC = (double *)(b + oc);
    KVF_CU(cudaMemcpy(dA, A, sizeof(double) * (size_t)m * (size_t)k, cudaMemcpyHostToDevice), "%s: upload A", what);
    KVF_CU(cudaMemcpy(dB, B, sizeof(double) * (size_t)k * (size_t)n, cudaMemcpyHostToDevice), "%s: upload B", what);
    /* row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: B's memory first */
    const double one = 1.0, zero = 0.0;
    KVF_BLAS(cublasDgemm(g_blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &one,
                         dB, tb ? k : n, dA, ta ? m : k, &zero, dC, n),
             "%s: cublasDgemm", what);
    KVF_CU(cudaMemcpy(C, dC, sizeof(double) * (size_t)m * (size_t)n, cudaMemcpyDeviceToHost), "%s: download C",
           what);
    return KVF_OK;
}
