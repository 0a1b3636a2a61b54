/* cuda_norm.cu — softmax, RMSNorm and LayerNorm over the last dim (and their backward), and
 * RoPE, for f32 and bf16.
 *
 * Rows: x is contiguous [N, C]; one block per row, block-tree sums in f32 (fixed order).
 * Statistics (rstd, mean) are f32 whatever x's dtype; rstd is formed in double from the f32
 * sums, as the CPU does. dW / db of the norms are column sums over rows: blocks of 32
 * columns × a chunk of rows write f32 partials, and a second kernel adds the chunks in
 * order and accumulates into dW / db — no atomics, so runs are bitwise reproducible.
 *
 * RoPE: a cos/sin table per (position, frequency) is computed first in double (angles
 * pos·inv_freq in double, like the CPU) and stored as f32; then one thread per rotated pair
 * (and per passed-through dim) writes y (+)= R·x. A thread reads both elements of its pair
 * before writing, so y may alias x. */
#include <math.h>

#include "cuda_common.h"

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

/* out[col] += Σ_chunk partial[chunk·cols + col] */
template <class T>
__global__ void k_colsum_finish(const float *partial, int64_t nchunk, int64_t cols, T *out) {
    for (int64_t col = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; col < cols;
         col += (int64_t)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int64_t c = 0; c < nchunk; c++) s += partial[c * cols + col];
        kvf_st(out + col, kvf_ld(out + col) + s);
    }
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
    k_colsum_finish<T><<<kvf_cuda_blocks(cols, 256), 256, 0, KVF_STREAM>>>(partial, nchunk, cols, out);
    KVF_LAUNCH("colsum_finish", "%s: [%lld, %lld]", what, (long long)rows, (long long)cols);
    return KVF_OK;
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

template <class T>
static kvf_status rmsnorm_t(kvf_tensor *y, kvf_tensor *rstd, const kvf_tensor *x,
                            const kvf_tensor *w, double eps) {
    int64_t N, C;
    rows_cols(x, &N, &C);
    KVF_TRY(check_stats("rmsnorm", rstd, N));
    if (N == 0) return KVF_OK;
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
                       int64_t nf, bool per_head, bool interleaved, bool accumulate, int64_t nrows) {
    const int64_t per_row = nd - nf, n = nrows * per_row;
    const int64_t ntab = per_head ? nh * nf : nf;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t row = e / per_row, i = e % per_row;
        const T *xr = x + row * nd;
        T *yr = y + row * nd;
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
    float2 *cs = NULL;
    if (nt * ntab > 0) {
        cs = (float2 *)kvf_cuda_scratch(sizeof(float2) * (size_t)(nt * ntab), "rope");
        if (!cs) return kvf_error_code();
        k_rope_table<<<kvf_cuda_blocks(nt * ntab, 256), 256, 0, KVF_STREAM>>>(
            cs, (const int32_t *)kvf_tensor_data(pos), (const float *)kvf_tensor_data(inv_freq),
            nt, ntab, inverse);
        KVF_LAUNCH("rope_table", "rope %s", KVF_CDESC(x));
    }
    const int64_t n = nrows * (nd - nf);
    if (n == 0) return KVF_OK;
    k_rope<T><<<kvf_cuda_blocks(n, 256), 256, 0, KVF_STREAM>>>(
        (T *)kvf_tensor_data(y), (const T *)kvf_tensor_data(x), cs, nt, nh, nd, nf, per_head,
        layout == KVF_ROPE_INTERLEAVED, accumulate, nrows);
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
    KVF_TRY(check_contig("rope", x));
    KVF_TRY(check_contig("rope", y));
    KVF_TRY(check_contig("rope", inv_freq));
    KVF_TRY(check_contig("rope", pos));
    KVF_CUDA_DISPATCH("rope", x->dtype, rope_t, y, x, pos, inv_freq, layout, inverse, accumulate);
}
