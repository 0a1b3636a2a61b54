/* cuda_norm.cu — softmax, RMSNorm and LayerNorm over the last dim (and their backward), and
 * RoPE, for f32 and bf16.
 *
 * Rows: x is contiguous [N, C]; one block per row, block-tree sums in f32 (fixed order).
 * Statistics (rstd, mean) are f32 whatever x's dtype; rstd is formed in double from the f32
 * sums, as the CPU does. dW / db of the norms are column sums over rows: blocks of 32
 * columns × a chunk of rows write f32 partials, and a second kernel adds the chunks in
 * order and accumulates into dW / db — no atomics, so runs are bitwise reproducible.
 * RMSNorm's fast path (16-byte rows, see row_plan) keeps a row in registers (one warp per row
 * up to 1024 bf16 / 512 f32) and computes dx and dW's per-block partials in one pass.
 *
 * RoPE: a cos/sin table per (position, frequency) is computed first in double (angles
 * pos·inv_freq in double, like the CPU) and stored as f32; then one thread per rotated pair
 * (and per passed-through dim) writes y (+)= R·x — or, when the rotated pairs and the rest
 * fill whole 16-byte vectors, one thread per vector (pair of vectors for HALF). A thread reads
 * the elements it writes before writing them, so y may alias x. */
#include <math.h>

#include "cuda_common.h"
#include "cuda_vec.h"

/* ---- 16-byte vectors ------------------------------------------------------------------------------
 * The fast paths move 16 bytes per load/store (cuda_vec.h) when the rows are 16-byte aligned
 * and their length a multiple of the vector; the scalar kernels stay as the general fallback. */

/* Hides a register's value from the optimiser, so values derived from it are recomputed
 * rather than kept alive (register pressure). */
__device__ __forceinline__ void opaque(uint4 &r) {
    asm volatile("" : "+r"(r.x), "+r"(r.y), "+r"(r.z), "+r"(r.w));
}

static inline bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }
static inline bool aligned16(const kvf_tensor *t) { return !t || aligned16(kvf_tensor_data(t)); }

/* Sum over a row group of tpr threads: one warp (tpr == 32), or the whole block (tpr ==
 * blockDim.x, a multiple of 32: warps added in index order, so every thread gets the same
 * bits). sh: 32 floats; with tpr > 32 every thread of the block must call it. */
__device__ __forceinline__ float group_sum(float v, float *sh, int tpr) {
    v = kvf_warp_sum(v);
    if (tpr > 32) {
        if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
        __syncthreads();
        float s = sh[0];
        for (int i = 1; i < (tpr >> 5); i++) s += sh[i];
        __syncthreads(); /* sh may be reused */
        v = s;
    }
    return v;
}

/* Row kernels with the row in registers: tpr threads per row (a power of two, 32..ROW_BLOCK),
 * each holding NV vectors (NV <= ROW_NV_MAX) — vector v of a row lives in thread v % tpr, slot
 * v / tpr. Rows of up to 32·ROW_NV_MAX vectors take one warp each (8 rows per ROW_BLOCK-thread
 * block); longer rows one block of tpr threads (up to 8192 bf16 / 4096 f32 elements; longer
 * rows go to the scalar kernels). */
#define ROW_NV_MAX 4
#define ROW_BLOCK 256

static bool row_plan(int64_t nvec, int *tpr, int *nv) {
    int64_t t = 32;
    while (t * ROW_NV_MAX < nvec) t *= 2;
    if (t > ROW_BLOCK || nvec <= 0) return false;
    *tpr = (int)t;
    *nv = (int)((nvec + t - 1) / t);
    return true;
}

static void rows_cols(const kvf_tensor *x, int64_t *n, int64_t *c) {
    *c = x->ndim ? x->shape[x->ndim - 1] : 1;
    *n = *c ? kvf_tensor_numel(x) / *c : 0;
}

static kvf_status check_contig(const char *op, const kvf_tensor *t) {
    if (t && !kvf_tensor_is_contiguous(t))
        return kvf_error_set(KVF_ERR_ARG, "%s: %s must be contiguous", op, KVF_CDESC(t));
    return KVF_OK;
}

static kvf_status check_stats(const char *op, const kvf_tensor *s, int64_t N) {
    if (s->dtype != KVF_DTYPE_F32 || kvf_tensor_numel(s) != N)
        return kvf_error_set(KVF_ERR_DTYPE, "%s: statistics %s must be f32 [%lld] on the GPU", op,
                             KVF_CDESC(s), (long long)N);
    return KVF_OK;
}

/* ---- column sums (dW, db) ---------------------------------------------------------------------- */

#define COL_ROWS_MIN 64  /* rows per chunk, at least */
#define COL_CHUNKS_MAX 512

/* partial[chunk·cols + col] = Σ f(r, col) over the chunk's rows (8 row-lanes, fixed order). */
template <class F>
__global__ void k_colsum_partial(F f, int64_t rows, int64_t cols, int64_t rpc, float *partial) {
    __shared__ float sh[8][33];
    const int64_t col = blockIdx.x * 32 + threadIdx.x;
    const int64_t r0 = blockIdx.y * rpc, r1 = r0 + rpc < rows ? r0 + rpc : rows;
    float acc = 0.0f;
    if (col < cols)
        for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) acc += f(r, col);
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        float s = sh[0][threadIdx.x];
        for (int t = 1; t < 8; t++) s += sh[t][threadIdx.x];
        partial[blockIdx.y * cols + col] = s;
    }
}

/* out[col] += Σ_chunk partial[chunk·cols + col]. A block takes 32 columns; its 32 chunk-lanes
 * (threadIdx.y) each add the chunks ≡ lane (mod 32) in order, then the 32 lane sums are added
 * in lane order: a fixed order, with many loads in flight per column. */
#define FINISH_LANES 32
template <class T>
__global__ void k_colsum_finish(const float *partial, int64_t nchunk, int64_t cols, T *out) {
    __shared__ float sh[FINISH_LANES][33];
    const int64_t col = blockIdx.x * 32 + threadIdx.x;
    float s = 0.0f;
    if (col < cols) {
#pragma unroll 4
        for (int64_t c = threadIdx.y; c < nchunk; c += FINISH_LANES) s += partial[c * cols + col];
    }
    sh[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        float t = sh[0][threadIdx.x];
        for (int q = 1; q < FINISH_LANES; q++) t += sh[q][threadIdx.x];
        kvf_st(out + col, kvf_ld(out + col) + t);
    }
}

template <class T>
static kvf_status colsum_finish(const float *partial, int64_t nchunk, int64_t cols, T *out,
                                const char *what) {
    k_colsum_finish<T><<<(unsigned)((cols + 31) / 32), dim3(32, FINISH_LANES), 0, KVF_STREAM>>>(
        partial, nchunk, cols, out);
    KVF_LAUNCH("colsum_finish", "%s: %lld chunks of [%lld]", what, (long long)nchunk,
               (long long)cols);
    return KVF_OK;
}

template <class T, class F>
static kvf_status colsum(F f, int64_t rows, int64_t cols, T *out, const char *what) {
    if (rows == 0 || cols == 0) return KVF_OK;
    int64_t rpc = (rows + COL_CHUNKS_MAX - 1) / COL_CHUNKS_MAX;
    if (rpc < COL_ROWS_MIN) rpc = COL_ROWS_MIN;
    int64_t nchunk = (rows + rpc - 1) / rpc;
    float *partial = (float *)kvf_cuda_scratch(sizeof(float) * (size_t)(nchunk * cols), what);
    if (!partial) return kvf_error_code();
    k_colsum_partial<F><<<dim3((unsigned)((cols + 31) / 32), (unsigned)nchunk), dim3(32, 8), 0,
                          KVF_STREAM>>>(f, rows, cols, rpc, partial);
    KVF_LAUNCH("colsum_partial", "%s: [%lld, %lld]", what, (long long)rows, (long long)cols);
    return colsum_finish<T>(partial, nchunk, cols, out, what);
}

/* ---- softmax ------------------------------------------------------------------------------------ */

template <class T>
__global__ void k_softmax(T *y, const T *x, int64_t C) {
    __shared__ float sh[33];
    const T *xr = x + blockIdx.x * C;
    T *yr = y + blockIdx.x * C;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) m = fmaxf(m, kvf_ld(xr + j));
    m = kvf_block_max(m, sh);
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) s += expf(kvf_ld(xr + j) - m);
    s = kvf_block_sum(s, sh);
    const float inv = 1.0f / s;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) kvf_st(yr + j, expf(kvf_ld(xr + j) - m) * inv);
}

/* dx += y·(dy − Σ dy·y) */
template <class T>
__global__ void k_softmax_bw(T *dx, const T *y, const T *dy, int64_t C) {
    __shared__ float sh[33];
    const int64_t off = blockIdx.x * C;
    float dot = 0.0f;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) dot += kvf_ld(dy + off + j) * kvf_ld(y + off + j);
    dot = kvf_block_sum(dot, sh);
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
        T *p = dx + off + j;
        kvf_st(p, kvf_ld(p) + kvf_ld(y + off + j) * (kvf_ld(dy + off + j) - dot));
    }
}

template <class T>
static kvf_status softmax_t(kvf_tensor *y, const kvf_tensor *x) {
    int64_t N, C;
    rows_cols(x, &N, &C);
    if (N == 0 || C == 0) return KVF_OK;
    k_softmax<T><<<(unsigned)N, kvf_row_threads(C), 0, KVF_STREAM>>>(
        (T *)kvf_tensor_data(y), (const T *)kvf_tensor_data(x), C);
    KVF_LAUNCH("softmax", "softmax %s", KVF_CDESC(x));
    return KVF_OK;
}

kvf_status kvf_cuda_softmax(kvf_tensor *y, const kvf_tensor *x) {
    KVF_TRY(check_contig("softmax", x));
    KVF_TRY(check_contig("softmax", y));
    KVF_CUDA_DISPATCH("softmax", x->dtype, softmax_t, y, x);
}

template <class T>
static kvf_status softmax_bw_t(kvf_tensor *dx, const kvf_tensor *y, const kvf_tensor *dy) {
    int64_t N, C;
    rows_cols(y, &N, &C);
    if (N == 0 || C == 0) return KVF_OK;
    k_softmax_bw<T><<<(unsigned)N, kvf_row_threads(C), 0, KVF_STREAM>>>(
        (T *)kvf_tensor_data(dx), (const T *)kvf_tensor_data(y), (const T *)kvf_tensor_data(dy), C);
    KVF_LAUNCH("softmax_backward", "softmax_backward %s", KVF_CDESC(y));
    return KVF_OK;
}

kvf_status kvf_cuda_softmax_backward(kvf_tensor *dx, const kvf_tensor *y, const kvf_tensor *dy) {
    KVF_TRY(check_contig("softmax_backward", dx));
    KVF_CUDA_DISPATCH("softmax_backward", y->dtype, softmax_bw_t, dx, y, dy);
}

/* ---- RMSNorm ------------------------------------------------------------------------------------- */

template <class T>
__global__ void k_rmsnorm(T *y, float *rstd, const T *x, const T *w, int64_t C, double eps) {
    __shared__ float sh[33];
    const int64_t off = blockIdx.x * C;
    float ss = 0.0f;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
        float v = kvf_ld(x + off + j);
        ss += v * v;
    }
    ss = kvf_block_sum(ss, sh);
    const float r = (float)(1.0 / sqrt((double)ss / (double)C + eps));
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
        float v = kvf_ld(x + off + j) * r;
        if (w) v *= kvf_ld(w + j);
        kvf_st(y + off + j, v);
    }
}

/* g = dy·w: dx += r·g − r³·x·mean(g·x) */
template <class T>
__global__ void k_rmsnorm_bw_dx(T *dx, const T *x, const T *w, const float *rstd, const T *dy,
                                int64_t C) {
    __shared__ float sh[33];
    const int64_t off = blockIdx.x * C;
    const float r = rstd[blockIdx.x];
    float dot = 0.0f;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
        float g = kvf_ld(dy + off + j) * (w ? kvf_ld(w + j) : 1.0f);
        dot += g * kvf_ld(x + off + j);
    }
    dot = kvf_block_sum(dot, sh);
    const float k = r * r * r * dot / (float)C;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
        float g = kvf_ld(dy + off + j) * (w ? kvf_ld(w + j) : 1.0f);
        T *p = dx + off + j;
        kvf_st(p, kvf_ld(p) + r * g - k * kvf_ld(x + off + j));
    }
}

template <class T>
struct rms_dw_fn {
    const T *x, *dy;
    const float *rstd;
    int64_t C;
    __device__ float operator()(int64_t r, int64_t c) const {
        return kvf_ld(dy + r * C + c) * kvf_ld(x + r * C + c) * rstd[r];
    }
};

/* Vectorized forward (see row_plan): the row's vectors stay in registers between the sum of
 * squares and the scaling pass, so x is read once. */
template <class T, int NV>
__global__ void __launch_bounds__(ROW_BLOCK) k_rmsnorm_vec(T *y, float *rstd, const T *x,
                                                           const T *w, int64_t N, int C, int tpr,
                                                           double eps) {
    constexpr int VEC = vec16<T>::n;
    __shared__ float sh[32];
    const int lr = threadIdx.x & (tpr - 1);
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x / tpr) + threadIdx.x / tpr;
    if (row >= N) return; /* only with several rows per block (tpr == 32): no barrier follows */
    const int nvec = C / VEC;
    const uint4 *xv = reinterpret_cast<const uint4 *>(x + row * C);
    uint4 raw[NV];
#pragma unroll
    for (int k = 0; k < NV; k++) {
        const int v = lr + k * tpr;
        raw[k] = v < nvec ? xv[v] : make_uint4(0u, 0u, 0u, 0u); /* zeros add nothing */
    }
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < NV; k++) {
        float f[VEC];
        vunpack<T>(raw[k], f);
#pragma unroll
        for (int e = 0; e < VEC; e++) ss += f[e] * f[e];
    }
    ss = group_sum(ss, sh, tpr);
    const float r = (float)(1.0 / sqrt((double)ss / (double)C + eps));
    if (lr == 0) rstd[row] = r;
    uint4 *yv = reinterpret_cast<uint4 *>(y + row * C);
    const uint4 *wv = reinterpret_cast<const uint4 *>(w);
#pragma unroll
    for (int k = 0; k < NV; k++) {
        const int v = lr + k * tpr;
        if (v >= nvec) continue;
        float f[VEC];
        vunpack<T>(raw[k], f);
        if (w) {
            float g[VEC];
            vunpack<T>(wv[v], g);
#pragma unroll
            for (int e = 0; e < VEC; e++) f[e] = f[e] * r * g[e];
        } else {
#pragma unroll
            for (int e = 0; e < VEC; e++) f[e] = f[e] * r;
        }
        yv[v] = vpack<T>(f);
    }
}

/* Vectorized backward, dx and dW in one pass over x and dy (see row_plan). A block owns the
 * rows [blockIdx.x·rpb, +rpb); its row groups take them in turn (group g: rows g, g + G, ...).
 * DX: dx += r·g − r³·x·mean(g·x) with g = dy·w, as k_rmsnorm_bw_dx. DW: each thread adds
 * dy·x·r of its columns over its rows in row order; the block's groups are then added in group
 * order into partial[blockIdx.x] (f32 [C]), which k_colsum_finish sums over blocks in order. */
template <class T, int NV, bool DX, bool DW>
__global__ void __launch_bounds__(ROW_BLOCK, NV >= 4 ? 1 : 2)
    k_rmsnorm_bw_vec(T *dx, float *partial, const T *x, const T *w, const float *rstd,
                     const T *dy, int64_t N, int C, int tpr, int64_t rpb) {
    constexpr int VEC = vec16<T>::n;
    extern __shared__ float shc[]; /* DW with G > 1: [G][C] */
    __shared__ float sh[32];
    const int G = blockDim.x / tpr, g = threadIdx.x / tpr, lr = threadIdx.x & (tpr - 1);
    const int nvec = C / VEC;
    const int64_t r0 = (int64_t)blockIdx.x * rpb, r1 = r0 + rpb < N ? r0 + rpb : N;
    uint4 rw[NV];
    if (DX && w) {
        const uint4 *wv = reinterpret_cast<const uint4 *>(w);
#pragma unroll
        for (int k = 0; k < NV; k++) {
            const int v = lr + k * tpr;
            rw[k] = v < nvec ? wv[v] : make_uint4(0u, 0u, 0u, 0u);
        }
    }
    float acc[DW ? NV : 1][VEC];
#pragma unroll
    for (int k = 0; k < (DW ? NV : 1); k++)
#pragma unroll
        for (int e = 0; e < VEC; e++) acc[k][e] = 0.0f;

    for (int64_t row = r0 + g; row < r1; row += G) {
        const uint4 *xv = reinterpret_cast<const uint4 *>(x + row * C);
        const uint4 *gv = reinterpret_cast<const uint4 *>(dy + row * C);
        uint4 *dv = reinterpret_cast<uint4 *>(dx + row * C);
        uint4 rx[NV], rg[NV], rd[NV];
#pragma unroll
        for (int k = 0; k < NV; k++) {
            const int v = lr + k * tpr;
            const bool ok = v < nvec;
            rx[k] = ok ? xv[v] : make_uint4(0u, 0u, 0u, 0u);
            rg[k] = ok ? gv[v] : make_uint4(0u, 0u, 0u, 0u);
            if (DX) rd[k] = ok ? dv[v] : make_uint4(0u, 0u, 0u, 0u);
        }
        const float r = rstd[row];
        if (DX && w) /* keep w packed: no hoisting of its NV·VEC floats out of the loop */
#pragma unroll
            for (int k = 0; k < NV; k++) opaque(rw[k]);
        float dot = 0.0f;
#pragma unroll
        for (int k = 0; k < NV; k++) {
            float fx[VEC], fg[VEC];
            vunpack<T>(rx[k], fx);
            vunpack<T>(rg[k], fg);
            if (DW)
#pragma unroll
                for (int e = 0; e < VEC; e++) acc[DW ? k : 0][e] += fg[e] * fx[e] * r;
            if (DX) {
                if (w) {
                    float fw[VEC];
                    vunpack<T>(rw[k], fw);
#pragma unroll
                    for (int e = 0; e < VEC; e++) fg[e] *= fw[e];
                }
#pragma unroll
                for (int e = 0; e < VEC; e++) dot += fg[e] * fx[e];
            }
        }
        if (DX) {
            dot = group_sum(dot, sh, tpr);
            const float kk = r * r * r * dot / (float)C;
            /* unpack again below rather than keep 2·NV·VEC floats alive across the sum */
#pragma unroll
            for (int k = 0; k < NV; k++) {
                opaque(rx[k]);
                opaque(rg[k]);
            }
#pragma unroll
            for (int k = 0; k < NV; k++) {
                const int v = lr + k * tpr;
                if (v >= nvec) continue;
                float fx[VEC], fg[VEC], fd[VEC];
                vunpack<T>(rx[k], fx);
                vunpack<T>(rg[k], fg);
                vunpack<T>(rd[k], fd);
                if (w) {
                    float fw[VEC];
                    vunpack<T>(rw[k], fw);
#pragma unroll
                    for (int e = 0; e < VEC; e++) fg[e] *= fw[e];
                }
#pragma unroll
                for (int e = 0; e < VEC; e++) fd[e] = fd[e] + r * fg[e] - kk * fx[e];
                dv[v] = vpack<T>(fd);
            }
        }
    }
    if (DW) {
        float *pr = partial + (int64_t)blockIdx.x * C;
        if (G == 1) {
#pragma unroll
            for (int k = 0; k < (DW ? NV : 1); k++) {
                const int v = lr + k * tpr;
                if (v < nvec)
#pragma unroll
                    for (int e = 0; e < VEC; e++) pr[v * VEC + e] = acc[k][e];
            }
        } else {
#pragma unroll
            for (int k = 0; k < (DW ? NV : 1); k++) {
                const int v = lr + k * tpr;
                if (v < nvec)
#pragma unroll
                    for (int e = 0; e < VEC; e++) shc[g * C + v * VEC + e] = acc[k][e];
            }
            __syncthreads();
            for (int c = threadIdx.x; c < C; c += blockDim.x) {
                float t = shc[c];
                for (int q = 1; q < G; q++) t += shc[q * C + c];
                pr[c] = t;
            }
        }
    }
}

/* The vector plan for rows of C elements of T, or false (then the scalar kernels run). */
template <class T>
static bool rms_vec_plan(int64_t C, int *tpr, int *nv) {
    const int VEC = vec16<T>::n;
    if (C % VEC != 0 || C > INT32_MAX) return false;
    return row_plan(C / VEC, tpr, nv);
}

template <class T, int NV>
static kvf_status rmsnorm_vec_run(T *y, float *rstd, const T *x, const T *w, int64_t N, int64_t C,
                                  int tpr, double eps) {
    const int threads = tpr > 32 ? tpr : ROW_BLOCK, G = threads / tpr; /* G > 1: tpr 32 */
    const int64_t blocks = (N + G - 1) / G;
    if (blocks > INT32_MAX)
        return kvf_error_set(KVF_ERR_SHAPE, "rmsnorm: %lld rows are too many for the grid",
                             (long long)N);
    k_rmsnorm_vec<T, NV><<<(unsigned)blocks, threads, 0, KVF_STREAM>>>(y, rstd, x, w, N, (int)C,
                                                                      tpr, eps);
    KVF_LAUNCH("rmsnorm_vec", "rmsnorm [%lld, %lld]", (long long)N, (long long)C);
    return KVF_OK;
}

template <class T, int NV, bool DX, bool DW>
static kvf_status rmsnorm_bw_vec_launch(T *dx, T *dw, const T *x, const T *w, const float *rstd,
                                        const T *dy, int64_t N, int64_t C, int tpr) {
    const int threads = tpr > 32 ? tpr : ROW_BLOCK, G = threads / tpr; /* G > 1: tpr 32 */
    /* dW with several groups per block: [G][C] f32 in shared memory (<= 32 KiB, row_plan) */
    const size_t smem = DW && G > 1 ? sizeof(float) * (size_t)G * (size_t)C : 0;
    /* one wave of resident blocks, each looping over its rows: as many loads in flight as the
     * SMs hold, and few dW partials for k_colsum_finish to add */
    int occ = 0;
    KVF_CU(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, k_rmsnorm_bw_vec<T, NV, DX, DW>,
                                                         threads, smem),
           "rmsnorm_backward [%lld, %lld]", (long long)N, (long long)C);
    int64_t blocks = (int64_t)kvf_cuda_dev()->sm_count * (occ > 0 ? occ : 1);
    const int64_t most = (N + G - 1) / G;
    if (blocks > most) blocks = most;
    if (blocks < 1) blocks = 1;
    const int64_t rpb = (N + blocks - 1) / blocks;
    blocks = (N + rpb - 1) / rpb;
    float *partial = NULL;
    if (DW) {
        partial = (float *)kvf_cuda_scratch(sizeof(float) * (size_t)(blocks * C),
                                            "rmsnorm_backward dw");
        if (!partial) return kvf_error_code();
    }
    k_rmsnorm_bw_vec<T, NV, DX, DW><<<(unsigned)blocks, threads, smem, KVF_STREAM>>>(
        dx, partial, x, w, rstd, dy, N, (int)C, tpr, rpb);
    KVF_LAUNCH("rmsnorm_bw_vec", "rmsnorm_backward [%lld, %lld]", (long long)N, (long long)C);
    if (DW) return colsum_finish<T>(partial, blocks, C, dw, "rmsnorm_backward dw");
    return KVF_OK;
}

template <class T, int NV>
static kvf_status rmsnorm_bw_vec_run(T *dx, T *dw, const T *x, const T *w, const float *rstd,
                                     const T *dy, int64_t N, int64_t C, int tpr) {
    if (dx && dw) return rmsnorm_bw_vec_launch<T, NV, true, true>(dx, dw, x, w, rstd, dy, N, C, tpr);
    if (dx) return rmsnorm_bw_vec_launch<T, NV, true, false>(dx, dw, x, w, rstd, dy, N, C, tpr);
    if (dw) return rmsnorm_bw_vec_launch<T, NV, false, true>(dx, dw, x, w, rstd, dy, N, C, tpr);
    return KVF_OK;
}

template <class T>
static kvf_status rmsnorm_t(kvf_tensor *y, kvf_tensor *rstd, const kvf_tensor *x,
                            const kvf_tensor *w, double eps) {
    int64_t N, C;
    rows_cols(x, &N, &C);
    KVF_TRY(check_stats("rmsnorm", rstd, N));
    if (N == 0) return KVF_OK;
    int tpr, nv;
    if (C > 0 && rms_vec_plan<T>(C, &tpr, &nv) && aligned16(y) && aligned16(x) && aligned16(w)) {
        T *py = (T *)kvf_tensor_data(y);
        float *pr = (float *)kvf_tensor_data(rstd);
        const T *px = (const T *)kvf_tensor_data(x), *pw = w ? (const T *)kvf_tensor_data(w) : NULL;
        switch (nv) {
        case 1: return rmsnorm_vec_run<T, 1>(py, pr, px, pw, N, C, tpr, eps);
        case 2: return rmsnorm_vec_run<T, 2>(py, pr, px, pw, N, C, tpr, eps);
        case 3: return rmsnorm_vec_run<T, 3>(py, pr, px, pw, N, C, tpr, eps);
        default: return rmsnorm_vec_run<T, 4>(py, pr, px, pw, N, C, tpr, eps);
        }
    }
    k_rmsnorm<T><<<(unsigned)N, kvf_row_threads(C), 0, KVF_STREAM>>>(
        (T *)kvf_tensor_data(y), (float *)kvf_tensor_data(rstd), (const T *)kvf_tensor_data(x),
        w ? (const T *)kvf_tensor_data(w) : NULL, C, eps);
    KVF_LAUNCH("rmsnorm", "rmsnorm %s", KVF_CDESC(x));
    return KVF_OK;
}

kvf_status kvf_cuda_rmsnorm(kvf_tensor *y, kvf_tensor *rstd, const kvf_tensor *x,
                            const kvf_tensor *w, double eps) {
    KVF_TRY(check_contig("rmsnorm", x));
    KVF_TRY(check_contig("rmsnorm", w));
    KVF_CUDA_DISPATCH("rmsnorm", x->dtype, rmsnorm_t, y, rstd, x, w, eps);
}

template <class T>
static kvf_status rmsnorm_bw_t(kvf_tensor *dx, kvf_tensor *dw, const kvf_tensor *x,
                               const kvf_tensor *w, const kvf_tensor *rstd, const kvf_tensor *dy) {
    int64_t N, C;
    rows_cols(x, &N, &C);
    KVF_TRY(check_stats("rmsnorm_backward", rstd, N));
    if (N == 0 || C == 0) return KVF_OK;
    const T *px = (const T *)kvf_tensor_data(x), *pg = (const T *)kvf_tensor_data(dy);
    const float *pr = (const float *)kvf_tensor_data(rstd);
    int tpr, nv;
    if (rms_vec_plan<T>(C, &tpr, &nv) && aligned16(dx) && aligned16(x) && aligned16(w) &&
        aligned16(dy)) {
        T *pdx = dx ? (T *)kvf_tensor_data(dx) : NULL, *pdw = dw ? (T *)kvf_tensor_data(dw) : NULL;
        const T *pw = w ? (const T *)kvf_tensor_data(w) : NULL;
        switch (nv) {
        case 1: return rmsnorm_bw_vec_run<T, 1>(pdx, pdw, px, pw, pr, pg, N, C, tpr);
        case 2: return rmsnorm_bw_vec_run<T, 2>(pdx, pdw, px, pw, pr, pg, N, C, tpr);
        case 3: return rmsnorm_bw_vec_run<T, 3>(pdx, pdw, px, pw, pr, pg, N, C, tpr);
        default: return rmsnorm_bw_vec_run<T, 4>(pdx, pdw, px, pw, pr, pg, N, C, tpr);
        }
    }
    if (dx) {
        k_rmsnorm_bw_dx<T><<<(unsigned)N, kvf_row_threads(C), 0, KVF_STREAM>>>(
            (T *)kvf_tensor_data(dx), px, w ? (const T *)kvf_tensor_data(w) : NULL, pr, pg, C);
        KVF_LAUNCH("rmsnorm_bw_dx", "rmsnorm_backward %s", KVF_CDESC(x));
    }
    if (dw) {
        rms_dw_fn<T> f = {px, pg, pr, C};
        KVF_TRY(colsum<T>(f, N, C, (T *)kvf_tensor_data(dw), "rmsnorm_backward dw"));
    }
    return KVF_OK;
}

kvf_status kvf_cuda_rmsnorm_backward(kvf_tensor *dx, kvf_tensor *dw, const kvf_tensor *x,
                                     const kvf_tensor *w, const kvf_tensor *rstd,
                                     const kvf_tensor *dy) {
    KVF_TRY(check_contig("rmsnorm_backward", dx));
    KVF_TRY(check_contig("rmsnorm_backward", dw));
    KVF_CUDA_DISPATCH("rmsnorm_backward", x->dtype, rmsnorm_bw_t, dx, dw, x, w, rstd, dy);
}

/* ---- LayerNorm ----------------------------------------------------------------------------------- */

template <class T>
__global__ void k_layernorm(T *y, float *mean, float *rstd, const T *x, const T *w, const T *b,
                            int64_t C, double eps) {
    __shared__ float sh[33];
    const int64_t off = blockIdx.x * C;
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) s += kvf_ld(x + off + j);
    s = kvf_block_sum(s, sh);
    const float mu = C ? s / (float)C : 0.0f;
    float v = 0.0f;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
        float d = kvf_ld(x + off + j) - mu;
        v += d * d;
    }
    v = kvf_block_sum(v, sh);
    const float r = (float)(1.0 / sqrt((C ? (double)v / (double)C : 0.0) + eps));
    if (threadIdx.x == 0) {
        mean[blockIdx.x] = mu;
        rstd[blockIdx.x] = r;
    }
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
        float h = (kvf_ld(x + off + j) - mu) * r;
        if (w) h *= kvf_ld(w + j);
        if (b) h += kvf_ld(b + j);
        kvf_st(y + off + j, h);
    }
}

/* x̂ = (x − mean)·rstd, g = dy·w: dx += rstd·(g − mean(g) − x̂·mean(g·x̂)) */
template <class T>
__global__ void k_layernorm_bw_dx(T *dx, const T *x, const T *w, const float *mean,
                                  const float *rstd, const T *dy, int64_t C) {
    __shared__ float sh[33];
    const int64_t off = blockIdx.x * C;
    const float mu = mean[blockIdx.x], r = rstd[blockIdx.x];
    float sg = 0.0f, sgx = 0.0f;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
        float g = kvf_ld(dy + off + j) * (w ? kvf_ld(w + j) : 1.0f);
        sg += g;
        sgx += g * (kvf_ld(x + off + j) - mu) * r;
    }
    sg = kvf_block_sum(sg, sh);
    sgx = kvf_block_sum(sgx, sh);
    const float mg = sg / (float)C, mgx = sgx / (float)C;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
        float g = kvf_ld(dy + off + j) * (w ? kvf_ld(w + j) : 1.0f);
        float h = (kvf_ld(x + off + j) - mu) * r;
        T *p = dx + off + j;
        kvf_st(p, kvf_ld(p) + r * (g - mg - h * mgx));
    }
}

template <class T>
struct ln_dw_fn {
    const T *x, *dy;
    const float *mean, *rstd;
    int64_t C;
    __device__ float operator()(int64_t r, int64_t c) const {
        return kvf_ld(dy + r * C + c) * (kvf_ld(x + r * C + c) - mean[r]) * rstd[r];
    }
};

template <class T>
struct ln_db_fn {
    const T *dy;
    int64_t C;
    __device__ float operator()(int64_t r, int64_t c) const { return kvf_ld(dy + r * C + c); }
};

template <class T>
static kvf_status layernorm_t(kvf_tensor *y, kvf_tensor *mean, kvf_tensor *rstd,
                              const kvf_tensor *x, const kvf_tensor *w, const kvf_tensor *b,
                              double eps) {
    int64_t N, C;
    rows_cols(x, &N, &C);
    KVF_TRY(check_stats("layernorm", mean, N));
    KVF_TRY(check_stats("layernorm", rstd, N));
    if (N == 0) return KVF_OK;
    k_layernorm<T><<<(unsigned)N, kvf_row_threads(C), 0, KVF_STREAM>>>(
        (T *)kvf_tensor_data(y), (float *)kvf_tensor_data(mean), (float *)kvf_tensor_data(rstd),
        (const T *)kvf_tensor_data(x), w ? (const T *)kvf_tensor_data(w) : NULL,
        b ? (const T *)kvf_tensor_data(b) : NULL, C, eps);
    KVF_LAUNCH("layernorm", "layernorm %s", KVF_CDESC(x));
    return KVF_OK;
}

kvf_status kvf_cuda_layernorm(kvf_tensor *y, kvf_tensor *mean, kvf_tensor *rstd,
                              const kvf_tensor *x, const kvf_tensor *w, const kvf_tensor *b,
                              double eps) {
    KVF_TRY(check_contig("layernorm", x));
    KVF_TRY(check_contig("layernorm", w));
    KVF_TRY(check_contig("layernorm", b));
    KVF_CUDA_DISPATCH("layernorm", x->dtype, layernorm_t, y, mean, rstd, x, w, b, eps);
}

template <class T>
static kvf_status layernorm_bw_t(kvf_tensor *dx, kvf_tensor *dw, kvf_tensor *db,
                                 const kvf_tensor *x, const kvf_tensor *w, const kvf_tensor *mean,
                                 const kvf_tensor *rstd, const kvf_tensor *dy) {
    int64_t N, C;
    rows_cols(x, &N, &C);
    KVF_TRY(check_stats("layernorm_backward", mean, N));
    KVF_TRY(check_stats("layernorm_backward", rstd, N));
    if (N == 0 || C == 0) return KVF_OK;
    const T *px = (const T *)kvf_tensor_data(x), *pg = (const T *)kvf_tensor_data(dy);
    const float *pm = (const float *)kvf_tensor_data(mean), *pr = (const float *)kvf_tensor_data(rstd);
    if (dx) {
        k_layernorm_bw_dx<T><<<(unsigned)N, kvf_row_threads(C), 0, KVF_STREAM>>>(
            (T *)kvf_tensor_data(dx), px, w ? (const T *)kvf_tensor_data(w) : NULL, pm, pr, pg, C);
        KVF_LAUNCH("layernorm_bw_dx", "layernorm_backward %s", KVF_CDESC(x));
    }
    if (dw) {
        ln_dw_fn<T> f = {px, pg, pm, pr, C};
        KVF_TRY(colsum<T>(f, N, C, (T *)kvf_tensor_data(dw), "layernorm_backward dw"));
    }
    if (db) {
        ln_db_fn<T> f = {pg, C};
        KVF_TRY(colsum<T>(f, N, C, (T *)kvf_tensor_data(db), "layernorm_backward db"));
    }
    return KVF_OK;
}

kvf_status kvf_cuda_layernorm_backward(kvf_tensor *dx, kvf_tensor *dw, kvf_tensor *db,
                                       const kvf_tensor *x, const kvf_tensor *w,
                                       const kvf_tensor *mean, const kvf_tensor *rstd,
                                       const kvf_tensor *dy) {
    KVF_TRY(check_contig("layernorm_backward", dx));
    KVF_TRY(check_contig("layernorm_backward", dw));
    KVF_TRY(check_contig("layernorm_backward", db));
    KVF_CUDA_DISPATCH("layernorm_backward", x->dtype, layernorm_bw_t, dx, dw, db, x, w, mean,
                      rstd, dy);
}

/* ---- RoPE ---------------------------------------------------------------------------------------- */

/* cs[t·ntab + j] = (cos, ±sin)(pos[t]·freq[j]), angles in double. */
__global__ void k_rope_table(float2 *cs, const int32_t *pos, const float *freq, int64_t nt,
                             int64_t ntab, bool inverse) {
    const int64_t n = nt * ntab;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = e / ntab, j = e % ntab;
        double s, c;
        sincos((double)pos[t] * (double)freq[j], &s, &c);
        cs[e] = make_float2((float)c, (float)(inverse ? -s : s));
    }
}

/* Work item (row, i): i < F rotates pair i; F <= i < D − F passes dim F + i through. */
template <class T>
__global__ void k_rope(T *y, const T *x, const float2 *cs, int64_t nt, int64_t nh, int64_t nd,
                       int64_t nf, bool per_head, bool interleaved, bool accumulate, int64_t nrows,
                       int64_t xt, int64_t xh, int64_t yt, int64_t yh) {
    const int64_t per_row = nd - nf, n = nrows * per_row;
    const int64_t ntab = per_head ? nh * nf : nf;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t row = e / per_row, i = e % per_row;
        const T *xr = x + (row / nh) * xt + (row % nh) * xh;
        T *yr = y + (row / nh) * yt + (row % nh) * yh;
        if (i < nf) {
            const int64_t h = row % nh, t = (row / nh) % nt;
            const float2 c = cs[t * ntab + (per_head ? h * nf : 0) + i];
            const int64_t i0 = interleaved ? 2 * i : i, i1 = interleaved ? i0 + 1 : i + nf;
            const float x0 = kvf_ld(xr + i0), x1 = kvf_ld(xr + i1);
            float y0 = x0 * c.x - x1 * c.y, y1 = x0 * c.y + x1 * c.x;
            if (accumulate) {
                y0 += kvf_ld(yr + i0);
                y1 += kvf_ld(yr + i1);
            }
            kvf_st(yr + i0, y0);
            kvf_st(yr + i1, y1);
        } else {
            const int64_t d = nf + i; /* 2F + (i − F) */
            const float v = kvf_ld(xr + d);
            kvf_st(yr + d, accumulate ? kvf_ld(yr + d) + v : v);
        }
    }
}

/* Vectorized form (16-byte x / y rows, pairs that fill whole vectors; rope_t checks): work item
 * (row, k) of ipr per row. k < nrot rotates: HALF, the vectors at k·VEC and F + k·VEC (VEC
 * pairs (i, i + F)); INTERLEAVED, the vector at k·VEC (VEC/2 pairs (2i, 2i + 1)). Other items
 * pass one vector of the dims 2F.. through. The cos/sin pairs are read as float4s. Each
 * thread reads its vectors before writing them, so y may alias x. */
template <class T>
__global__ void k_rope_vec(T *y, const T *x, const float2 *cs, unsigned nitems, unsigned ipr,
                           unsigned nrot, unsigned nt, unsigned nh, int nd, int nf, int ntab,
                           bool per_head, bool interleaved, bool accumulate, int64_t xt, int64_t xh,
                           int64_t yt, int64_t yh) {
    constexpr int VEC = vec16<T>::n;
    for (unsigned e = blockIdx.x * blockDim.x + threadIdx.x; e < nitems;
         e += gridDim.x * blockDim.x) {
        const unsigned row = e / ipr, k = e - row * ipr;
        const unsigned bt = row / nh, h = row - bt * nh;
        const T *xr = x + (int64_t)bt * xt + (int64_t)h * xh;
        T *yr = y + (int64_t)bt * yt + (int64_t)h * yh;
        if (k < nrot) {
            const unsigned t = bt % nt;
            const float4 *c4 = reinterpret_cast<const float4 *>(
                cs + (int64_t)t * ntab + (per_head ? (int64_t)h * nf : 0));
            if (!interleaved) {
                const int i0 = (int)k * VEC;
                const uint4 ra = *reinterpret_cast<const uint4 *>(xr + i0);
                const uint4 rb = *reinterpret_cast<const uint4 *>(xr + i0 + nf);
                float c[2 * VEC]; /* (cos, ±sin) of pairs i0 .. i0 + VEC − 1 */
#pragma unroll
                for (int q = 0; q < VEC / 2; q++) {
                    const float4 v = c4[i0 / 2 + q];
                    c[4 * q] = v.x, c[4 * q + 1] = v.y, c[4 * q + 2] = v.z, c[4 * q + 3] = v.w;
                }
                float a[VEC], b[VEC], ya[VEC], yb[VEC];
                vunpack<T>(ra, a);
                vunpack<T>(rb, b);
#pragma unroll
                for (int i = 0; i < VEC; i++) {
                    ya[i] = a[i] * c[2 * i] - b[i] * c[2 * i + 1];
                    yb[i] = a[i] * c[2 * i + 1] + b[i] * c[2 * i];
                }
                if (accumulate) {
                    float oa[VEC], ob[VEC];
                    vunpack<T>(*reinterpret_cast<const uint4 *>(yr + i0), oa);
                    vunpack<T>(*reinterpret_cast<const uint4 *>(yr + i0 + nf), ob);
#pragma unroll
                    for (int i = 0; i < VEC; i++) ya[i] += oa[i], yb[i] += ob[i];
                }
                *reinterpret_cast<uint4 *>(yr + i0) = vpack<T>(ya);
                *reinterpret_cast<uint4 *>(yr + i0 + nf) = vpack<T>(yb);
            } else {
                const int i0 = (int)k * VEC;
                const uint4 ra = *reinterpret_cast<const uint4 *>(xr + i0);
                float c[VEC]; /* pairs i0/2 .. i0/2 + VEC/2 − 1 */
#pragma unroll
                for (int q = 0; q < VEC / 4; q++) {
                    const float4 v = c4[i0 / 4 + q];
                    c[4 * q] = v.x, c[4 * q + 1] = v.y, c[4 * q + 2] = v.z, c[4 * q + 3] = v.w;
                }
                float a[VEC], o[VEC];
                vunpack<T>(ra, a);
#pragma unroll
                for (int i = 0; i < VEC / 2; i++) {
                    const float x0 = a[2 * i], x1 = a[2 * i + 1], co = c[2 * i], si = c[2 * i + 1];
                    o[2 * i] = x0 * co - x1 * si;
                    o[2 * i + 1] = x0 * si + x1 * co;
                }
                if (accumulate) {
                    float old[VEC];
                    vunpack<T>(*reinterpret_cast<const uint4 *>(yr + i0), old);
#pragma unroll
                    for (int i = 0; i < VEC; i++) o[i] += old[i];
                }
                *reinterpret_cast<uint4 *>(yr + i0) = vpack<T>(o);
            }
        } else {
            const int d = 2 * nf + (int)(k - nrot) * VEC;
            const uint4 ra = *reinterpret_cast<const uint4 *>(xr + d);
            if (accumulate) {
                float a[VEC], o[VEC];
                vunpack<T>(ra, a);
                vunpack<T>(*reinterpret_cast<const uint4 *>(yr + d), o);
#pragma unroll
                for (int i = 0; i < VEC; i++) o[i] = o[i] + a[i];
                *reinterpret_cast<uint4 *>(yr + d) = vpack<T>(o);
            } else {
                *reinterpret_cast<uint4 *>(yr + d) = ra;
            }
        }
    }
}

template <class T>
static kvf_status rope_t(kvf_tensor *y, const kvf_tensor *x, const kvf_tensor *pos,
                         const kvf_tensor *inv_freq, kvf_rope_layout layout, bool inverse,
                         bool accumulate) {
    const int64_t nb = x->shape[0], nt = x->shape[1], nh = x->shape[2], nd = x->shape[3];
    const bool per_head = inv_freq->ndim == 2;
    const int64_t nf = inv_freq->shape[inv_freq->ndim - 1];
    const int64_t ntab = per_head ? nh * nf : nf;
    const int64_t nrows = nb * nt * nh;
    if (nrows == 0 || nd == 0) return KVF_OK;
    int64_t xt, xh, yt, yh;
    kvf_tensor_head_rows(x, &xt, &xh);
    kvf_tensor_head_rows(y, &yt, &yh);
    float2 *cs = NULL;
    if (nt * ntab > 0) {
        cs = (float2 *)kvf_cuda_scratch(sizeof(float2) * (size_t)(nt * ntab), "rope");
        if (!cs) return kvf_error_code();
        k_rope_table<<<kvf_cuda_blocks(nt * ntab, 256), 256, 0, KVF_STREAM>>>(
            cs, (const int32_t *)kvf_tensor_data(pos), (const float *)kvf_tensor_data(inv_freq),
            nt, ntab, inverse);
        KVF_LAUNCH("rope_table", "rope %s", KVF_CDESC(x));
    }
    /* vector path: whole 16-byte vectors of rotated pairs and of passed-through dims */
    const int VEC = vec16<T>::n;
    const bool inter = layout == KVF_ROPE_INTERLEAVED;
    if (nd % VEC == 0 && (inter ? (2 * nf) % VEC == 0 : nf % VEC == 0) && aligned16(x) &&
        aligned16(y) && xt % VEC == 0 && xh % VEC == 0 && yt % VEC == 0 && yh % VEC == 0 && nd <= INT32_MAX && ntab <= INT32_MAX) {
        const int64_t nrot = inter ? 2 * nf / VEC : nf / VEC, ipr = nrot + (nd - 2 * nf) / VEC;
        const int64_t items = nrows * ipr;
        if (items == 0) return KVF_OK;
        if (items <= INT32_MAX && nt <= INT32_MAX && nh <= INT32_MAX) {
            k_rope_vec<T><<<kvf_cuda_blocks(items, 256), 256, 0, KVF_STREAM>>>(
                (T *)kvf_tensor_data(y), (const T *)kvf_tensor_data(x), cs, (unsigned)items,
                (unsigned)ipr, (unsigned)nrot, (unsigned)nt, (unsigned)nh, (int)nd, (int)nf,
                (int)ntab, per_head, inter, accumulate, xt, xh, yt, yh);
            KVF_LAUNCH("rope_vec", "rope %s", KVF_CDESC(x));
            return KVF_OK;
        }
    }
    const int64_t n = nrows * (nd - nf);
    if (n == 0) return KVF_OK;
    k_rope<T><<<kvf_cuda_blocks(n, 256), 256, 0, KVF_STREAM>>>(
        (T *)kvf_tensor_data(y), (const T *)kvf_tensor_data(x), cs, nt, nh, nd, nf, per_head,
        layout == KVF_ROPE_INTERLEAVED, accumulate, nrows, xt, xh, yt, yh);
    KVF_LAUNCH("rope", "rope %s", KVF_CDESC(x));
    return KVF_OK;
}

kvf_status kvf_cuda_rope(kvf_tensor *y, const kvf_tensor *x, const kvf_tensor *pos,
                         const kvf_tensor *inv_freq, kvf_rope_layout layout, bool inverse,
                         bool accumulate) {
    if (inv_freq->dtype != KVF_DTYPE_F32 || pos->dtype != KVF_DTYPE_I32)
        return kvf_error_set(KVF_ERR_DTYPE, "rope: the CUDA kernel takes inv_freq f32 and pos "
                             "i32, got %s and %s", KVF_CDESC(inv_freq), KVF_CDESC(pos));
    if (x->ndim != 4 || y->dtype != x->dtype || 2 * inv_freq->shape[inv_freq->ndim - 1] > x->shape[3])
        return kvf_error_set(KVF_ERR_SHAPE, "rope: x %s, y %s, inv_freq %s do not fit",
                             KVF_CDESC(x), KVF_CDESC(y), KVF_CDESC(inv_freq));
    int64_t lt, lh;
    if (!kvf_tensor_head_rows(x, &lt, &lh) || !kvf_tensor_head_rows(y, &lt, &lh))
        return kvf_error_set(KVF_ERR_ARG, "rope: x %s and y %s must be dense head rows (a "
                             "contiguous tensor or a slice of its heads or head dims)",
                             KVF_CDESC(x), KVF_CDESC(y));
    KVF_TRY(check_contig("rope", inv_freq));
    KVF_TRY(check_contig("rope", pos));
    KVF_CUDA_DISPATCH("rope", x->dtype, rope_t, y, x, pos, inv_freq, layout, inverse, accumulate);
}
