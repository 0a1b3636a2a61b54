/* cuda_loss.cu — cross-entropy and embedding lookup, for f32 and bf16.
 *
 * Cross-entropy forward: one block per row runs an online log-sum-exp over the vocabulary
 * (each thread keeps a running max and sum; the block combines them in a fixed order), so
 * no probability row is ever stored. Row losses go to scratch; one block sums them in
 * row order (in double) and writes loss = mean over kept rows to the f32 [1] tensor on the
 * device (f32 for bf16 logits too, as PyTorch's logits.float() would give): no host
 * synchronisation. Backward reads dloss from the device and recounts the
 * kept rows on the device: dlogits += (exp(x − lse) − onehot)·dloss/count.
 * Both read the logits in 16-byte vectors (8 bf16 / 4 f32; a row's unaligned head and tail
 * go element by element), each element once; in place, the backward writes each once.
 *
 * Embedding backward is deterministic without float atomics: the (id, position) pairs
 * are sorted by id with CUB's stable radix sort, so each id's positions stay in ascending
 * order; one block per run of equal ids then adds its dout rows in that order into
 * dweight — the same order as the CPU kernel (bitwise equal results for f32). */
#include <cub/device/device_radix_sort.cuh>
#include <math.h>

#include "cuda_common.h"
#include "cuda_vec.h"

/* Elements of T before the first 16-byte boundary of a row (at most n): rows are split into
 * that scalar head, whole 16-byte vectors, and a scalar tail, whatever V and the base. */
template <class T>
__device__ __forceinline__ int64_t head_elems(const T *row, int64_t n) {
    const int64_t h = (int64_t)(((16u - ((unsigned)(uintptr_t)row & 15u)) & 15u) / sizeof(T));
    return h < n ? h : n;
}

/* ---- cross-entropy ------------------------------------------------------------------------------ */

/* Combine (m, s) running log-sum-exp pairs: s·exp(m) + s2·exp(m2). A side with m = −inf has
 * seen only −inf (and NaN) elements, so its s is 0 (or NaN, which must carry on). */
__device__ __forceinline__ void lse_combine(float &m, float &s, float m2, float s2) {
    if (m2 == -INFINITY) {
        s += s2;
        return;
    }
    if (m == -INFINITY) {
        m = m2;
        s = s2 + s;
        return;
    }
    if (m2 > m) {
        s = s * expf(m - m2) + s2;
        m = m2;
    } else {
        s = s + s2 * expf(m2 - m);
    }
}

/* One element into a thread's running (max, Σ exp(x − max)). */
__device__ __forceinline__ void lse_push(float &m, float &s, float x) {
    if (x == -INFINITY) return;
    if (x > m) {
        s = s * expf(m - x) + 1.0f; /* exp(−inf) = 0 on the first element */
        m = x;
    } else {
        s += expf(x - m);
    }
}

/* 2^x on the SFU (ex2.approx.ftz: ~2 ulp; results below 2^−126 flush to 0, which a sum
 * dominated by exp(0) = 1 cannot see). */
__device__ __forceinline__ float ex2_fast(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

#define CE_THREADS 256
#define CE_UNROLL 4 /* 16-byte vectors in flight per thread and step */

/* One block per row: each thread keeps a running (max, sum) over its elements — per step
 * CE_UNROLL vectors (strided by the block, so a warp reads contiguous 512 bytes per vector),
 * their max first, one rescale, then exp(x − max) = 2^((x − max)·log2 e) into four partial
 * sums; the block combines the threads in a fixed order. */
template <class T>
__global__ void __launch_bounds__(CE_THREADS) k_ce_rows(float *lse, float *row_loss,
                                                        const T *logits, const int32_t *targets,
                                                        int64_t V, int64_t ignore_index) {
    constexpr int VEC = vec16<T>::n;
    __shared__ float shm[32], shs[32];
    const int64_t row = blockIdx.x;
    const T *xr = logits + row * V;
    const int64_t head = head_elems(xr, V), nvec = (V - head) / VEC, tail = head + nvec * VEC;
    float m = -INFINITY, s = 0.0f;
    for (int64_t j = threadIdx.x; j < head; j += blockDim.x) lse_push(m, s, kvf_ld(xr + j));
    const uint4 *xv = reinterpret_cast<const uint4 *>(xr + head);
    const float L2E = 1.4426950408889634f;
    for (int64_t v0 = threadIdx.x; v0 < nvec; v0 += CE_UNROLL * (int64_t)blockDim.x) {
        uint4 raw[CE_UNROLL];
#pragma unroll
        for (int u = 0; u < CE_UNROLL; u++) {
            const int64_t v = v0 + u * (int64_t)blockDim.x;
            /* 0xff80 / 0xff800000: −inf (bf16 / f32), which adds nothing */
            raw[u] = v < nvec ? xv[v]
                              : (sizeof(T) == 2 ? make_uint4(0xff80ff80u, 0xff80ff80u, 0xff80ff80u,
                                                             0xff80ff80u)
                                                : make_uint4(0xff800000u, 0xff800000u,
                                                             0xff800000u, 0xff800000u));
        }
        float f[CE_UNROLL][VEC];
#pragma unroll
        for (int u = 0; u < CE_UNROLL; u++) vunpack<T>(raw[u], f[u]);
        float cm = f[0][0];
#pragma unroll
        for (int u = 0; u < CE_UNROLL; u++)
#pragma unroll
            for (int e = 0; e < VEC; e++) cm = fmaxf(cm, f[u][e]); /* NaN-ignoring, like fmax */
        if (cm > m) {
            s *= expf(m - cm); /* m = −inf: s is 0 (or NaN) and stays so */
            m = cm;
        }
        /* m = −inf: every element so far is −inf (→ 2^−inf = 0) or NaN (→ NaN) */
        const float mm = m == -INFINITY ? 0.0f : m;
        float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int u = 0; u < CE_UNROLL; u++)
#pragma unroll
            for (int e = 0; e < VEC; e++) a[e & 3] += ex2_fast((f[u][e] - mm) * L2E);
        s += (a[0] + a[1]) + (a[2] + a[3]);
    }
    for (int64_t j = tail + threadIdx.x; j < V; j += blockDim.x) lse_push(m, s, kvf_ld(xr + j));
    /* warp: xor butterfly (commutative combine: all lanes agree), then warps in order */
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        /* order the pair by lane so both lanes combine (lower, upper) identically */
        const bool upper = (threadIdx.x & o) != 0;
        float ma = upper ? m2 : m, sa = upper ? s2 : s, mb = upper ? m : m2, sb = upper ? s : s2;
        lse_combine(ma, sa, mb, sb);
        m = ma;
        s = sa;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) {
        shm[warp] = m;
        shs[warp] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float M = shm[0], Sm = shs[0];
        for (int w = 1; w < nw; w++) lse_combine(M, Sm, shm[w], shs[w]);
        const float l = M + logf(Sm);
        lse[row] = l;
        const int64_t t = targets[row];
        row_loss[row] = t == ignore_index ? 0.0f : l - kvf_ld(xr + t);
    }
}

__global__ void k_ce_total(float *loss, const float *row_loss, const int32_t *targets, int64_t N,
                           int64_t ignore_index) {
    __shared__ double shd[1024];
    __shared__ long long shc[1024];
    double s = 0.0;
    long long c = 0;
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
        if ((int64_t)targets[i] == ignore_index) continue;
        s += (double)row_loss[i];
        c++;
    }
    shd[threadIdx.x] = s;
    shc[threadIdx.x] = c;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) {
            shd[threadIdx.x] += shd[threadIdx.x + w];
            shc[threadIdx.x] += shc[threadIdx.x + w];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) *loss = shc[0] ? (float)(shd[0] / (double)shc[0]) : 0.0f;
}

template <class T>
static kvf_status ce_t(kvf_tensor *loss, kvf_tensor *lse, const kvf_tensor *logits,
                       const kvf_tensor *targets, int64_t ignore_index) {
    const int64_t N = logits->shape[0], V = logits->shape[1];
    if (N > 0) {
        float *row = (float *)kvf_cuda_scratch(sizeof(float) * (size_t)N, "cross_entropy");
        if (!row) return kvf_error_code();
        if (N > INT32_MAX)
            return kvf_error_set(KVF_ERR_SHAPE, "cross_entropy: %s has too many rows for the "
                                 "kernel's grid", KVF_CDESC(logits));
        k_ce_rows<T><<<(unsigned)N, CE_THREADS, 0, KVF_STREAM>>>(
            (float *)kvf_tensor_data(lse), row, (const T *)kvf_tensor_data(logits),
            (const int32_t *)kvf_tensor_data(targets), V, ignore_index);
        KVF_LAUNCH("ce_rows", "cross_entropy %s", KVF_CDESC(logits));
        k_ce_total<<<1, 1024, 0, KVF_STREAM>>>((float *)kvf_tensor_data(loss), row,
                                                 (const int32_t *)kvf_tensor_data(targets), N,
                                                 ignore_index);
    } else {
        k_ce_total<<<1, 1024, 0, KVF_STREAM>>>((float *)kvf_tensor_data(loss), NULL, NULL, 0,
                                                 ignore_index);
    }
    KVF_LAUNCH("ce_total", "cross_entropy %s", KVF_CDESC(logits));
    return KVF_OK;
}

kvf_status kvf_cuda_cross_entropy(kvf_tensor *loss, kvf_tensor *lse, const kvf_tensor *logits,
                                  const kvf_tensor *targets, int64_t ignore_index) {
    if (lse->dtype != KVF_DTYPE_F32 || targets->dtype != KVF_DTYPE_I32 || logits->ndim != 2 ||
        loss->dtype != KVF_DTYPE_F32)
        return kvf_error_set(KVF_ERR_DTYPE, "cross_entropy: logits %s, targets %s, lse %s, loss "
                             "%s: the CUDA kernel takes [N, V] logits, i32 targets, f32 lse and "
                             "an f32 loss", KVF_CDESC(logits), KVF_CDESC(targets),
                             KVF_CDESC(lse), KVF_CDESC(loss));
    if (!kvf_tensor_is_contiguous(logits) || !kvf_tensor_is_contiguous(targets))
        return kvf_error_set(KVF_ERR_ARG, "cross_entropy: logits %s and targets must be contiguous",
                             KVF_CDESC(logits));
    KVF_CUDA_DISPATCH("cross_entropy", logits->dtype, ce_t, loss, lse, logits, targets, ignore_index);
}

/* count of kept rows → *count (one block, integer sums: exact) */
__global__ void k_ce_count(int64_t *count, const int32_t *targets, int64_t N, int64_t ignore_index) {
    __shared__ long long sh[256];
    long long c = 0;
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) c += (int64_t)targets[i] != ignore_index;
    sh[threadIdx.x] = c;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) *count = sh[0];
}

/* dl[row] (+)= (exp(x − lse) − onehot)·g with g = dloss/count, for the elements [0, V) of a
 * row split like the forward's (scalar head, 16-byte vectors, scalar tail) and spread over
 * the gridDim.y blocks of the row. INPLACE: dl == logits, overwritten with 0 + g·p (what the
 * accumulating form stores into a zeroed buffer) and zeroed in ignored rows; each thread reads
 * its elements before it writes them, so the aliasing is safe. VEC_OK: dl and logits have the
 * same alignment modulo 16 bytes (always so in place), else every element goes scalar. */
#define CE_BW_UNROLL 2
template <class T, bool INPLACE>
__global__ void __launch_bounds__(CE_THREADS) k_ce_bw(T *dl, const T *logits, const float *lse,
                                                      const int32_t *targets, const float *dloss,
                                                      const int64_t *count, int64_t V,
                                                      int64_t ignore_index, bool vec_ok) {
    constexpr int VEC = vec16<T>::n;
    const int64_t row = blockIdx.x;
    const int64_t t = targets[row];
    const int64_t cnt = *count;
    T *dr = dl + row * V;
    const T *xr = logits + row * V;
    const int64_t head = vec_ok ? head_elems(xr, V) : V;
    const int64_t nvec = (V - head) / VEC, tail = head + nvec * VEC;
    const int64_t tid = (int64_t)blockIdx.y * blockDim.x + threadIdx.x;
    const int64_t stride = (int64_t)gridDim.y * blockDim.x;
    uint4 *dv = reinterpret_cast<uint4 *>(dr + head);
    const uint4 *xv = reinterpret_cast<const uint4 *>(xr + head);
    if (t == ignore_index || cnt == 0) {
        if (INPLACE) {
            for (int64_t j = tid; j < head; j += stride) kvf_st(dr + j, 0.0f);
            for (int64_t v = tid; v < nvec; v += stride) dv[v] = make_uint4(0u, 0u, 0u, 0u);
            for (int64_t j = tail + tid; j < V; j += stride) kvf_st(dr + j, 0.0f);
        }
        return;
    }
    const float g = (float)((double)*dloss / (double)cnt);
    const float l = lse[row];
    for (int64_t j = tid; j < head; j += stride) {
        const float p = expf(kvf_ld(xr + j) - l) - (j == t ? 1.0f : 0.0f);
        kvf_st(dr + j, (INPLACE ? 0.0f : kvf_ld(dr + j)) + g * p);
    }
    for (int64_t v0 = tid; v0 < nvec; v0 += CE_BW_UNROLL * stride) {
        uint4 rx[CE_BW_UNROLL], rd[CE_BW_UNROLL];
#pragma unroll
        for (int u = 0; u < CE_BW_UNROLL; u++) {
            const int64_t v = v0 + u * stride;
            if (v < nvec) {
                rx[u] = xv[v];
                if (!INPLACE) rd[u] = dv[v];
            }
        }
#pragma unroll
        for (int u = 0; u < CE_BW_UNROLL; u++) {
            const int64_t v = v0 + u * stride;
            if (v >= nvec) continue;
            const int64_t tl = t - (head + v * VEC); /* the target's slot in this vector */
            float f[VEC], o[VEC];
            vunpack<T>(rx[u], f);
            if (!INPLACE) vunpack<T>(rd[u], o);
#pragma unroll
            for (int e = 0; e < VEC; e++) {
                const float p = expf(f[e] - l) - (e == tl ? 1.0f : 0.0f);
                o[e] = (INPLACE ? 0.0f : o[e]) + g * p;
            }
            dv[v] = vpack<T>(o);
        }
    }
    for (int64_t j = tail + tid; j < V; j += stride) {
        const float p = expf(kvf_ld(xr + j) - l) - (j == t ? 1.0f : 0.0f);
        kvf_st(dr + j, (INPLACE ? 0.0f : kvf_ld(dr + j)) + g * p);
    }
}

template <class T, bool INPLACE>
static kvf_status ce_bw_run(kvf_tensor *dlogits, const kvf_tensor *logits, const kvf_tensor *lse,
                            const kvf_tensor *targets, const kvf_tensor *dloss,
                            int64_t ignore_index) {
    const int64_t N = logits->shape[0], V = logits->shape[1];
    if (N == 0 || V == 0) return KVF_OK;
    int64_t *count = (int64_t *)kvf_cuda_scratch(sizeof(int64_t), "cross_entropy_backward");
    if (!count) return kvf_error_code();
    k_ce_count<<<1, 256, 0, KVF_STREAM>>>(count, (const int32_t *)kvf_tensor_data(targets), N,
                                          ignore_index);
    KVF_LAUNCH("ce_count", "cross_entropy_backward %s", KVF_CDESC(logits));
    if (N > INT32_MAX)
        return kvf_error_set(KVF_ERR_SHAPE, "cross_entropy_backward: %s is too large for the "
                             "kernel's grid", KVF_CDESC(logits));
    /* one block per row; with few rows, several blocks per row (vectors strided across them)
     * so that the GPU fills, each with at least CE_BW_UNROLL vectors per thread */
    const int64_t per_block = (int64_t)CE_THREADS * CE_BW_UNROLL * vec16<T>::n;
    int64_t ncb = (V + per_block - 1) / per_block;
    const int64_t fill = ((int64_t)kvf_cuda_dev()->sm_count * 8 + N - 1) / N;
    if (ncb > fill) ncb = fill;
    if (ncb > 65535) ncb = 65535;
    if (ncb < 1) ncb = 1;
    const bool vec_ok = (((uintptr_t)kvf_tensor_data(dlogits) -
                          (uintptr_t)kvf_tensor_data(logits)) & 15) == 0;
    k_ce_bw<T, INPLACE><<<dim3((unsigned)N, (unsigned)ncb), CE_THREADS, 0, KVF_STREAM>>>(
        (T *)kvf_tensor_data(dlogits), (const T *)kvf_tensor_data(logits),
        (const float *)kvf_tensor_data(lse), (const int32_t *)kvf_tensor_data(targets),
        (const float *)kvf_tensor_data(dloss), count, V, ignore_index, vec_ok);
    KVF_LAUNCH("ce_bw", "cross_entropy_backward %s", KVF_CDESC(logits));
    return KVF_OK;
}

template <class T>
static kvf_status ce_bw_t(kvf_tensor *dlogits, const kvf_tensor *logits, const kvf_tensor *lse,
                          const kvf_tensor *targets, const kvf_tensor *dloss, int64_t ignore_index) {
    return ce_bw_run<T, false>(dlogits, logits, lse, targets, dloss, ignore_index);
}

template <class T>
static kvf_status ce_bw_inplace_t(kvf_tensor *logits, const kvf_tensor *lse,
                                  const kvf_tensor *targets, const kvf_tensor *dloss,
                                  int64_t ignore_index) {
    return ce_bw_run<T, true>(logits, logits, lse, targets, dloss, ignore_index);
}

kvf_status kvf_cuda_cross_entropy_backward_inplace(kvf_tensor *logits, const kvf_tensor *lse,
                                                   const kvf_tensor *targets,
                                                   const kvf_tensor *dloss, int64_t ignore_index) {
    if (lse->dtype != KVF_DTYPE_F32 || dloss->dtype != KVF_DTYPE_F32 ||
        !kvf_tensor_is_contiguous(logits))
        return kvf_error_set(KVF_ERR_DTYPE, "cross_entropy_backward_inplace: logits %s, lse %s, "
                             "dloss %s do not fit the CUDA kernel", KVF_CDESC(logits),
                             KVF_CDESC(lse), KVF_CDESC(dloss));
    KVF_CUDA_DISPATCH("cross_entropy_backward_inplace", logits->dtype, ce_bw_inplace_t, logits,
                      lse, targets, dloss, ignore_index);
}

kvf_status kvf_cuda_cross_entropy_backward(kvf_tensor *dlogits, const kvf_tensor *logits,
                                           const kvf_tensor *lse, const kvf_tensor *targets,
                                           const kvf_tensor *dloss, int64_t ignore_index) {
    if (lse->dtype != KVF_DTYPE_F32 || dloss->dtype != KVF_DTYPE_F32 ||
        dlogits->dtype != logits->dtype || !kvf_tensor_is_contiguous(dlogits))
        return kvf_error_set(KVF_ERR_DTYPE, "cross_entropy_backward: logits %s, dlogits %s, lse "
                             "%s, dloss %s do not fit the CUDA kernel", KVF_CDESC(logits),
                             KVF_CDESC(dlogits), KVF_CDESC(lse), KVF_CDESC(dloss));
    KVF_CUDA_DISPATCH("cross_entropy_backward", logits->dtype, ce_bw_t, dlogits, logits, lse,
                      targets, dloss, ignore_index);
}

/* ---- embedding ------------------------------------------------------------------------------------ */

template <class T>
__global__ void k_embedding(T *out, const T *w, const int32_t *ids, int64_t N, int64_t C) {
    const int64_t n = N * C;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = e / C, c = e % C;
        out[e] = w[(int64_t)ids[r] * C + c];
    }
}

__global__ void k_iota(int32_t *p, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x)
        p[e] = (int32_t)e;
}

/* Block i (a sorted position) starts a run of equal ids or exits; it adds the run's dout
 * rows, in ascending position order, to dweight[id] (columns across threads). */
template <class T>
__global__ void k_embedding_bw(T *dw, const int32_t *keys, const int32_t *pos, const T *dout,
                               int64_t N, int64_t C) {
    const int64_t i = blockIdx.x;
    const int32_t id = keys[i];
    if (i > 0 && keys[i - 1] == id) return;
    int64_t end = i + 1;
    while (end < N && keys[end] == id) end++;
    T *row = dw + (int64_t)id * C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = kvf_ld(row + c);
        for (int64_t j = i; j < end; j++) acc += kvf_ld(dout + (int64_t)pos[j] * C + c);
        kvf_st(row + c, acc);
    }
}

template <class T>
static kvf_status embedding_t(kvf_tensor *out, const kvf_tensor *weight, const kvf_tensor *ids) {
    const int64_t N = kvf_tensor_numel(ids), C = weight->shape[1];
    if (N * C == 0) return KVF_OK;
    k_embedding<T><<<kvf_cuda_blocks(N * C, 256), 256, 0, KVF_STREAM>>>(
        (T *)kvf_tensor_data(out), (const T *)kvf_tensor_data(weight),
        (const int32_t *)kvf_tensor_data(ids), N, C);
    KVF_LAUNCH("embedding", "embedding %s ids %s", KVF_CDESC(weight), KVF_CDESC(ids));
    return KVF_OK;
}

kvf_status kvf_cuda_embedding(kvf_tensor *out, const kvf_tensor *weight, const kvf_tensor *ids) {
    if (ids->dtype != KVF_DTYPE_I32 || out->dtype != weight->dtype || weight->ndim != 2)
        return kvf_error_set(KVF_ERR_DTYPE, "embedding: weight %s, ids %s, out %s do not fit",
                             KVF_CDESC(weight), KVF_CDESC(ids), KVF_CDESC(out));
    KVF_CUDA_DISPATCH("embedding", weight->dtype, embedding_t, out, weight, ids);
}

template <class T>
static kvf_status embedding_bw_t(kvf_tensor *dweight, const kvf_tensor *ids,
                                 const kvf_tensor *dout) {
    const int64_t N = kvf_tensor_numel(ids), V = dweight->shape[0], C = dweight->shape[1];
    if (N == 0 || C == 0) return KVF_OK;
    if (N > INT32_MAX)
        return kvf_error_set(KVF_ERR_SHAPE, "embedding_backward: %lld ids exceed 2^31", (long long)N);
    int end_bit = 1;
    while (end_bit < 31 && ((int64_t)1 << end_bit) < V) end_bit++;
    size_t temp = 0;
    KVF_CU(cub::DeviceRadixSort::SortPairs(NULL, temp, (const int32_t *)NULL, (int32_t *)NULL,
                                           (const int32_t *)NULL, (int32_t *)NULL, (int)N, 0,
                                           end_bit, KVF_STREAM),
           "embedding_backward: sort of %lld ids", (long long)N);
    const size_t ints = (size_t)N * sizeof(int32_t), al = 256;
    const size_t words = (ints + al - 1) / al * al;
    char *ws = (char *)kvf_cuda_scratch(3 * words + temp + al, "embedding_backward");
    if (!ws) return kvf_error_code();
    int32_t *keys_out = (int32_t *)ws, *vals_in = (int32_t *)(ws + words),
            *vals_out = (int32_t *)(ws + 2 * words);
    void *tmp = ws + 3 * words;
    k_iota<<<kvf_cuda_blocks(N, 256), 256, 0, KVF_STREAM>>>(vals_in, N);
    KVF_LAUNCH("iota", "embedding_backward %s", KVF_CDESC(dweight));
    KVF_CU(cub::DeviceRadixSort::SortPairs(tmp, temp, (const int32_t *)kvf_tensor_data(ids),
                                           keys_out, vals_in, vals_out, (int)N, 0, end_bit,
                                           KVF_STREAM),
           "embedding_backward: sort of %lld ids", (long long)N);
    k_embedding_bw<T><<<(unsigned)N, kvf_row_threads(C), 0, KVF_STREAM>>>(
        (T *)kvf_tensor_data(dweight), keys_out, vals_out, (const T *)kvf_tensor_data(dout), N, C);
    KVF_LAUNCH("embedding_bw", "embedding_backward %s", KVF_CDESC(dweight));
    return KVF_OK;
}

kvf_status kvf_cuda_embedding_backward(kvf_tensor *dweight, const kvf_tensor *ids,
                                       const kvf_tensor *dout) {
    if (ids->dtype != KVF_DTYPE_I32 || dout->dtype != dweight->dtype ||
        !kvf_tensor_is_contiguous(dweight))
        return kvf_error_set(KVF_ERR_DTYPE, "embedding_backward: dweight %s, ids %s, dout %s do "
                             "not fit", KVF_CDESC(dweight), KVF_CDESC(ids), KVF_CDESC(dout));
    KVF_CUDA_DISPATCH("embedding_backward", dweight->dtype, embedding_bw_t, dweight, ids, dout);
}
