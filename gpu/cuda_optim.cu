/* cuda_optim.cu — the optimizer's fused kernels: AdamW over the flat f32 parameter buffers
 * (fp32 master weights and moments on the device, one launch per step for every parameter)
 * and the deterministic sum of squares behind the global gradient norm.
 *
 * AdamW: each block owns a contiguous tile of the flat buffer; a thread finds the segment
 * (parameter) of its first element by binary search and walks forward from there, so the
 * padding between parameters (kvf_params aligns each to 16 elements) is never touched.
 * The arithmetic is the CPU loop's (optim/optimizer.c), in double, rounded to f32 on store.
 *
 * Sum of squares: a fixed grid (SS_BLOCKS blocks, each a fixed contiguous chunk, squares
 * summed in double in a fixed per-thread order, then a fixed tree in shared memory), then
 * one block adds the partials in index order: the same bits on every run and every GPU
 * with the same buffer size. */
#include <math.h>
#include <stdlib.h>

#include "cuda_common.h"

#define AW_THREADS 256
#define AW_TILE (AW_THREADS * 16) /* elements per block */
#define SS_THREADS 256
#define SS_BLOCKS 1024

struct aw_seg_dev {
    int64_t offset, end;
    double decay, step_size; /* 1 − lr·wd, lr / bc1 */
};

/* Index of the last segment whose offset is <= e (segments sorted by offset); -1 if none. */
__device__ __forceinline__ int aw_find(const aw_seg_dev *s, int n, int64_t e) {
    int lo = 0, hi = n - 1, r = -1;
    while (lo <= hi) {
        int mid = (lo + hi) >> 1;
        if (s[mid].offset <= e) {
            r = mid;
            lo = mid + 1;
        } else {
            hi = mid - 1;
        }
    }
    return r;
}

/* One element: the CPU loop's arithmetic. */
__device__ __forceinline__ void aw_update(float &p, float &m, float &v, float g, double decay,
                                          double step, double b1, double b2, double eps,
                                          double bc2_sqrt, double gscale) {
    const double gi = gscale == 1.0 ? (double)g : (double)(float)(gscale * (double)g);
    const double mi = b1 * (double)m + (1.0 - b1) * gi;
    const double vi = b2 * (double)v + (1.0 - b2) * gi * gi;
    double pi = (double)p * decay;
    pi -= step * mi / (sqrt(vi) / bc2_sqrt + eps);
    m = (float)mi;
    v = (float)vi;
    p = (float)pi;
}

/* Element by element, for segments that do not start at multiples of 4. */
__global__ void k_adamw_scalar(float *__restrict__ p, const float *__restrict__ g, float *__restrict__ m,
                               float *__restrict__ v, const aw_seg_dev *__restrict__ segs, int n_segs,
                               int64_t total, double b1, double b2, double eps, double bc2_sqrt,
                               double gscale) {
    const int64_t t0 = (int64_t)blockIdx.x * AW_TILE;
    int64_t e = t0 + threadIdx.x;
    if (e >= total) return;
    int s = aw_find(segs, n_segs, e);
    const int64_t t1 = t0 + AW_TILE < total ? t0 + AW_TILE : total;
    for (; e < t1; e += AW_THREADS) {
        while (s + 1 < n_segs && segs[s + 1].offset <= e) s++;
        if (s < 0 || e >= segs[s].end) continue; /* alignment padding */
        aw_update(p[e], m[e], v[e], g[e], segs[s].decay, segs[s].step_size, b1, b2, eps, bc2_sqrt, gscale);
    }
}

__global__ void k_adamw(float *__restrict__ p, const float *__restrict__ g, float *__restrict__ m,
                        float *__restrict__ v, const aw_seg_dev *__restrict__ segs, int n_segs,
                        int64_t total, double b1, double b2, double eps, double bc2_sqrt,
                        double gscale) {
    const int64_t t0 = (int64_t)blockIdx.x * AW_TILE;
    const int64_t t1 = t0 + AW_TILE < total ? t0 + AW_TILE : total;
    /* groups of 4 elements, 16-byte loads: segments start at multiples of 16 elements
     * (kvf_params' alignment) and the buffers run to a multiple of 16, so a group lies in
     * one segment (its tail may be padding, read and written back as it was) */
    int64_t e = t0 + 4 * (int64_t)threadIdx.x;
    if (e >= t1) return;
    int s = aw_find(segs, n_segs, e);
    for (; e < t1; e += 4 * AW_THREADS) {
        while (s + 1 < n_segs && segs[s + 1].offset <= e) s++;
        if (s < 0 || e >= segs[s].end) continue; /* alignment padding */
        const float4 g4 = *reinterpret_cast<const float4 *>(g + e);
        float4 p4 = *reinterpret_cast<const float4 *>(p + e), m4 = *reinterpret_cast<const float4 *>(m + e),
               v4 = *reinterpret_cast<const float4 *>(v + e);
        const double decay = segs[s].decay, step = segs[s].step_size;
        const int64_t live = segs[s].end - e;
        aw_update(p4.x, m4.x, v4.x, g4.x, decay, step, b1, b2, eps, bc2_sqrt, gscale);
        if (live > 1) aw_update(p4.y, m4.y, v4.y, g4.y, decay, step, b1, b2, eps, bc2_sqrt, gscale);
        if (live > 2) aw_update(p4.z, m4.z, v4.z, g4.z, decay, step, b1, b2, eps, bc2_sqrt, gscale);
        if (live > 3) aw_update(p4.w, m4.w, v4.w, g4.w, decay, step, b1, b2, eps, bc2_sqrt, gscale);
        *reinterpret_cast<float4 *>(p + e) = p4;
        *reinterpret_cast<float4 *>(m + e) = m4;
        *reinterpret_cast<float4 *>(v + e) = v4;
    }
}

static kvf_status cuda_adamw(const kvf_adamw_args *a) {
    if (a->n_segs <= 0) return KVF_OK;
    const int n = a->n_segs;
    aw_seg_dev *host = (aw_seg_dev *)malloc(sizeof(aw_seg_dev) * (size_t)n);
    if (!host)
        return kvf_error_set(KVF_ERR_OOM, "adamw: cannot allocate the table of %d segments", n);
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        const kvf_adamw_seg *s = &a->segs[i];
        if (i > 0 && s->offset < a->segs[i - 1].offset + a->segs[i - 1].numel) {
            free(host);
            return kvf_error_set(KVF_ERR_ARG, "adamw: segment %d (offset %lld) overlaps or precedes "
                                 "segment %d", i, (long long)s->offset, i - 1);
        }
        host[i].offset = s->offset;
        host[i].end = s->offset + s->numel;
        host[i].decay = 1.0 - s->lr * s->weight_decay;
        host[i].step_size = s->lr / a->bc1;
        total = host[i].end;
    }
    aw_seg_dev *dev = (aw_seg_dev *)kvf_cuda_scratch(sizeof(aw_seg_dev) * (size_t)n, "adamw");
    if (!dev) {
        free(host);
        return kvf_error_code();
    }
    kvf_status st = kvf_cuda_upload(dev, host, sizeof(aw_seg_dev) * (size_t)n);
    free(host);
    if (st != KVF_OK) return st;
    if (total == 0) return KVF_OK;
    const int64_t blocks = (total + AW_TILE - 1) / AW_TILE;
    if (blocks > 0x7fffffff)
        return kvf_error_set(KVF_ERR_ARG, "adamw: %lld elements are too many for one launch",
                             (long long)total);
    /* the vector kernel reads whole groups of 4 (kvf_adamw_args: buffers padded to them) */
    bool vec4 = ((uintptr_t)a->p | (uintptr_t)a->g | (uintptr_t)a->m | (uintptr_t)a->v) % 16 == 0;
    for (int i = 0; i < n && vec4; i++) vec4 = a->segs[i].offset % 4 == 0;
    const double gs = a->grad_scale > 0 ? a->grad_scale : 1.0;
    if (vec4)
        k_adamw<<<(unsigned)blocks, AW_THREADS, 0, KVF_STREAM>>>(a->p, a->g, a->m, a->v, dev, n, total,
                                                                 a->beta1, a->beta2, a->eps, a->bc2_sqrt, gs);
    else
        k_adamw_scalar<<<(unsigned)blocks, AW_THREADS, 0, KVF_STREAM>>>(
            a->p, a->g, a->m, a->v, dev, n, total, a->beta1, a->beta2, a->eps, a->bc2_sqrt, gs);
    KVF_LAUNCH("k_adamw", "adamw over %lld elements in %d segments", (long long)total, n);
    return KVF_OK;
}

/* ---- sum of squares ------------------------------------------------------------------------- */

__device__ __forceinline__ double ss_block_sum(double v, double *sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int s = SS_THREADS / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    return sh[0];
}

__global__ void k_sumsq_partial(double *part, const float *__restrict__ x, int64_t n, int64_t chunk) {
    __shared__ double sh[SS_THREADS];
    const int64_t lo = (int64_t)blockIdx.x * chunk, hi = lo + chunk < n ? lo + chunk : n;
    double s = 0.0;
    for (int64_t i = lo + threadIdx.x; i < hi; i += SS_THREADS) {
        const double xi = (double)x[i];
        s += xi * xi;
    }
    s = ss_block_sum(s, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

__global__ void k_sumsq_final(double *out, const double *part, int n) {
    __shared__ double sh[SS_THREADS];
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += SS_THREADS) s += part[i];
    s = ss_block_sum(s, sh);
    if (threadIdx.x == 0) *out = s;
}

static kvf_status cuda_sum_squares(const kvf_tensor *x, double *out) {
    if (x->dtype != KVF_DTYPE_F32 || !kvf_tensor_is_contiguous(x))
        return kvf_error_set(KVF_ERR_DTYPE, "sum_squares: the CUDA kernel takes a contiguous f32 "
                             "tensor, got %s", KVF_CDESC(x));
    const int64_t n = kvf_tensor_numel(x);
    if (n == 0) {
        *out = 0.0;
        return KVF_OK;
    }
    double *part = (double *)kvf_cuda_scratch(sizeof(double) * (SS_BLOCKS + 1), "sum_squares");
    if (!part) return kvf_error_code();
    const int64_t chunk = (n + SS_BLOCKS - 1) / SS_BLOCKS;
    k_sumsq_partial<<<SS_BLOCKS, SS_THREADS, 0, KVF_STREAM>>>(part, (const float *)kvf_tensor_data(x),
                                                              n, chunk);
    KVF_LAUNCH("k_sumsq_partial", "sum_squares of %s", KVF_CDESC(x));
    k_sumsq_final<<<1, SS_THREADS, 0, KVF_STREAM>>>(part + SS_BLOCKS, part, SS_BLOCKS);
    KVF_LAUNCH("k_sumsq_final", "sum_squares of %s", KVF_CDESC(x));
    KVF_CU(cudaMemcpy(out, part + SS_BLOCKS, sizeof(double), cudaMemcpyDeviceToHost),
           "sum_squares of %s: reading the result", KVF_CDESC(x));
    return KVF_OK;
}

kvf_status kvf_cuda_adamw(const kvf_adamw_args *a) { return cuda_adamw(a); }
kvf_status kvf_cuda_sum_squares(const kvf_tensor *x, double *out) { return cuda_sum_squares(x, out); }
