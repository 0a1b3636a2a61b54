/* cuda_elementwise.cu — strided copy with dtype conversion, binary / unary ops and their
 * backward, reduce_sum and SwiGLU, for f32 and bf16 (copy: every dtype).
 *
 * Operands are 4-D strided views (kvf_view4: leading extents of 1, stride 0 for broadcast
 * dims); a flat row-major index over the output's shape is mapped to each operand's
 * offset. Contiguous, same-shape operands take a flat fast path. Math in f32; SCALE in
 * double so that f32 results round exactly like the CPU reference. */
#include <math.h>

#include <initializer_list>

#include "cuda_common.h"

#define EW_THREADS 256

static bool all_contig_same(const kvf_tensor *o, const kvf_tensor *a, const kvf_tensor *b) {
    if (!kvf_tensor_is_contiguous(o) || !kvf_tensor_is_contiguous(a)) return false;
    if (!kvf_tensor_same_shape(o, a)) return false;
    if (b && (!kvf_tensor_is_contiguous(b) || !kvf_tensor_same_shape(o, b))) return false;
    return true;
}

/* ---- 16-byte vectorized flat paths ------------------------------------------------------------
 * Flat (contiguous, same-shape) operands move as 16-byte words: 4 f32 or 8 bf16 per word,
 * U words per operand per thread and step, all loads of a step issued before its stores
 * (so several independent 16-byte loads are in flight per thread; an output that aliases
 * an input element for element is still read before it is written, by the same thread).
 * Pointers need not be 16-byte aligned, only alike: the first `head` elements (head < the
 * group, chosen on the host so that every operand is 16-byte aligned after it) and the tail
 * that does not fill a group go one at a time, through the same per-element math. When no
 * head works (e.g. a bf16 view at an odd element offset next to an aligned one) the scalar
 * kernels are used. The per-element math (same f32 formulas, SCALE in double) and its single
 * rounding on store are the scalar kernels'; only FMA contraction may differ (rounding noise). */

#define VEC_THREADS 256

template <class T> struct vec_t;
template <> struct vec_t<float> {
    typedef float4 W;
    enum { N = 4 };
};
template <> struct vec_t<__nv_bfloat16> {
    typedef uint4 W;
    enum { N = 8 };
};

__device__ __forceinline__ float4 vld(const float *p) { return *(const float4 *)p; }
__device__ __forceinline__ uint4 vld(const __nv_bfloat16 *p) { return *(const uint4 *)p; }
/* Stores through __stwb (st.global.wb.v4, the default cache policy): a plain assignment of
 * the packed word is split by nvcc into 4 scalar stores. Its "memory" clobber keeps later
 * loads after the store, as the aliasing of out and a needs. */
__device__ __forceinline__ void vst(float *p, float4 w) { __stwb((float4 *)p, w); }
__device__ __forceinline__ void vst(__nv_bfloat16 *p, uint4 w) { __stwb((uint4 *)p, w); }

/* Widen a word to f32 (bf16 → f32 is exact: the bits shifted up, as __bfloat162float). */
__device__ __forceinline__ void vunpack(const float4 &w, float *f) {
    f[0] = w.x;
    f[1] = w.y;
    f[2] = w.z;
    f[3] = w.w;
}
__device__ __forceinline__ void bf2_unpack(uint32_t u, float *f) {
    f[0] = __uint_as_float(u << 16);         /* the lower address: element 2i */
    f[1] = __uint_as_float(u & 0xffff0000u); /* element 2i + 1 */
}
__device__ __forceinline__ void vunpack(const uint4 &w, float *f) {
    bf2_unpack(w.x, f);
    bf2_unpack(w.y, f + 2);
    bf2_unpack(w.z, f + 4);
    bf2_unpack(w.w, f + 6);
}
/* Two f32 → two bf16 (round to nearest even, as __float2bfloat16_rn), lo at the lower address. */
__device__ __forceinline__ uint32_t bf2_pack(float lo, float hi) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
           ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16);
}
__device__ __forceinline__ float4 vpack4(const float *f) { return make_float4(f[0], f[1], f[2], f[3]); }
__device__ __forceinline__ void vpack(float4 &w, const float *f) { w = vpack4(f); }
__device__ __forceinline__ void vpack(uint4 &w, const float *f) {
    w.x = bf2_pack(f[0], f[1]);
    w.y = bf2_pack(f[2], f[3]);
    w.z = bf2_pack(f[4], f[5]);
    w.w = bf2_pack(f[6], f[7]);
}

struct vec_ptr {
    const void *p; /* NULL: not an operand */
    size_t esize;
};

/* The head: the smallest h < group such that every operand p + h·esize is 16-byte aligned
 * (at most n), or -1 when there is none. Advancing by whole groups keeps the alignment, as
 * group·esize is a multiple of 16 for every operand. */
static int vec_head(int64_t n, int group, std::initializer_list<vec_ptr> ops) {
    for (int h = 0; h < group; h++) {
        bool ok = true;
        for (const vec_ptr &q : ops)
            if (q.p && ((uintptr_t)q.p + (uintptr_t)h * q.esize) % 16 != 0) ok = false;
        if (ok) return (int64_t)h < n ? h : (int)n;
    }
    return -1;
}

/* Blocks of VEC_THREADS for nv groups, `per_thread` groups per thread and step: one step
 * per thread while that fits in 32 blocks per SM, a grid-stride loop beyond. */
static unsigned vec_blocks(int64_t nv, int per_thread) {
    int64_t per_block = (int64_t)VEC_THREADS * per_thread;
    int64_t b = (nv + per_block - 1) / per_block;
    int64_t cap = (int64_t)kvf_cuda_dev()->sm_count * 32;
    if (b > cap) b = cap;
    return (unsigned)(b > 0 ? b : 1);
}

/* Loop over the elements done one at a time: [0, head) and the tail [head + nv·N, n).
 * Every thread of the grid takes part (there are fewer than 2·N of them). */
#define VEC_SCALAR_FOR(e, n, head, nvN)                                                       \
    for (int64_t s_ = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, e;                     \
         s_ < (n) - (nvN) && ((e = s_ < (head) ? s_ : s_ + (nvN)), true);                     \
         s_ += (int64_t)gridDim.x * blockDim.x)

/* Loop over this thread's steps: v0 is its first group of a step, its others are
 * v0 + j·blockDim.x for j < U (coalesced: a warp reads 32 consecutive words). */
#define VEC_STEP_FOR(v0, nv, U)                                                               \
    for (int64_t v0 = blockIdx.x * (int64_t)blockDim.x * (U) + threadIdx.x; v0 < (nv);        \
         v0 += (int64_t)gridDim.x * blockDim.x * (U))

/* ---- strided views in 16-byte words ----------------------------------------------------------
 * A strided operand whose rows are dense (innermost stride 1) can often move as 16-byte words
 * too: when the innermost extent (the output's, `inner`) and every other stride are multiples
 * of the elements per word and the base is 16-byte aligned, the same view over words (inner
 * extent and strides divided by `per`) addresses whole aligned words. Slices of heads (MLA's
 * nope / rope parts, a split of a fused projection) take this path: 8× fewer index
 * computations and 16-byte accesses instead of 2-byte ones. */
static bool view_words(kvf_view4 *v, int64_t inner, int per) {
    if (v->shape[3] != inner || inner % per || v->stride[3] != 1 || ((uintptr_t)v->base & 15)) return false;
    for (int d = 0; d < 3; d++)
        if (v->stride[d] % per) return false;
    for (int d = 0; d < 3; d++) v->stride[d] /= per;
    v->shape[3] = inner / per;
    return true;
}

/* ---- copy ------------------------------------------------------------------------------------ */

/* Same-dtype strided copy, elements moved as raw words of type W. */
template <class W>
__global__ void k_copy_same(kvf_view4 d, kvf_view4 s, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        const W *sp = (const W *)s.base + kvf_offset4(e, s.shape, s.stride);
        W *dp = (W *)d.base + kvf_offset4(e, d.shape, d.stride);
        *dp = *sp;
    }
}

/* Loads and stores through double, exactly as the CPU's kvf_tensor_get/set: narrow float
 * dtypes round from f32 (so f64 → bf16 is f64 → f32 → bf16), ids truncate. */
__device__ __forceinline__ double cvt_load(const char *base, int64_t off, int dt) {
    switch (dt) {
    case KVF_DTYPE_F32: return ((const float *)base)[off];
    case KVF_DTYPE_F64: return ((const double *)base)[off];
    case KVF_DTYPE_BF16: return __bfloat162float(((const __nv_bfloat16 *)base)[off]);
    case KVF_DTYPE_F16: return __half2float(((const __half *)base)[off]);
    case KVF_DTYPE_I32: return ((const int32_t *)base)[off];
    case KVF_DTYPE_I64: return (double)((const int64_t *)base)[off];
    default: return NAN;
    }
}
__device__ __forceinline__ void cvt_store(char *base, int64_t off, int dt, double v) {
    switch (dt) {
    case KVF_DTYPE_F32: ((float *)base)[off] = (float)v; break;
    case KVF_DTYPE_F64: ((double *)base)[off] = v; break;
    case KVF_DTYPE_BF16: ((__nv_bfloat16 *)base)[off] = __float2bfloat16_rn((float)v); break;
    case KVF_DTYPE_F16: ((__half *)base)[off] = __float2half_rn((float)v); break;
    case KVF_DTYPE_I32: ((int32_t *)base)[off] = (int32_t)v; break;
    case KVF_DTYPE_I64: ((int64_t *)base)[off] = (int64_t)v; break;
    default: break;
    }
}

__global__ void k_copy_convert(kvf_view4 d, int ddt, kvf_view4 s, int sdt, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        double v = cvt_load(s.base, kvf_offset4(e, s.shape, s.stride), sdt);
        cvt_store(d.base, kvf_offset4(e, d.shape, d.stride), ddt, v);
    }
}

/* Contiguous f32 <-> bf16 (mixed precision: weight casts, gradient casts back): flat, two
 * elements per thread step, the same rounding as k_copy_convert (bf16 → f32 is exact, f32
 * → bf16 rounds to nearest even). */
__global__ void k_f32_to_bf16(__nv_bfloat16 *d, const float *s, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x)
        d[e] = __float2bfloat16_rn(s[e]);
}
__global__ void k_bf16_to_f32(float *d, const __nv_bfloat16 *s, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x)
        d[e] = __bfloat162float(s[e]);
}

/* The same, vectorized: groups of 8 elements (two float4 ↔ one uint4 of bf16). */
#define F2B_U 2 /* groups per thread and step: 4 float4 loads in flight */
#define B2F_U 4 /* 4 uint4 loads in flight */
__global__ void __launch_bounds__(VEC_THREADS) k_f32_to_bf16_vec(__nv_bfloat16 *d, const float *s,
                                                                 int64_t n, int head) {
    const int64_t nv = (n - head) / 8;
    VEC_SCALAR_FOR(e, n, head, nv * 8) d[e] = __float2bfloat16_rn(s[e]);
    d += head;
    s += head;
    VEC_STEP_FOR(v0, nv, F2B_U) {
        float4 w[F2B_U][2];
#pragma unroll
        for (int j = 0; j < F2B_U; j++) {
            const int64_t v = v0 + (int64_t)j * blockDim.x;
            if (v < nv) {
                w[j][0] = vld(s + v * 8);
                w[j][1] = vld(s + v * 8 + 4);
            }
        }
#pragma unroll
        for (int j = 0; j < F2B_U; j++) {
            const int64_t v = v0 + (int64_t)j * blockDim.x;
            if (v < nv)
                vst(d + v * 8, make_uint4(bf2_pack(w[j][0].x, w[j][0].y), bf2_pack(w[j][0].z, w[j][0].w),
                                          bf2_pack(w[j][1].x, w[j][1].y), bf2_pack(w[j][1].z, w[j][1].w)));
        }
    }
}
__global__ void __launch_bounds__(VEC_THREADS) k_bf16_to_f32_vec(float *d, const __nv_bfloat16 *s,
                                                                 int64_t n, int head) {
    const int64_t nv = (n - head) / 8;
    VEC_SCALAR_FOR(e, n, head, nv * 8) d[e] = __bfloat162float(s[e]);
    d += head;
    s += head;
    VEC_STEP_FOR(v0, nv, B2F_U) {
        uint4 w[B2F_U];
#pragma unroll
        for (int j = 0; j < B2F_U; j++) {
            const int64_t v = v0 + (int64_t)j * blockDim.x;
            if (v < nv) w[j] = vld(s + v * 8);
        }
#pragma unroll
        for (int j = 0; j < B2F_U; j++) {
            const int64_t v = v0 + (int64_t)j * blockDim.x;
            if (v < nv) {
                float f[8];
                vunpack(w[j], f);
                vst(d + v * 8, vpack4(f));
                vst(d + v * 8 + 4, vpack4(f + 4));
            }
        }
    }
}

kvf_status kvf_cuda_copy(kvf_tensor *dst, const kvf_tensor *src) {
    if (!kvf_tensor_same_shape(dst, src))
        return kvf_error_set(KVF_ERR_SHAPE, "copy: %s into %s", KVF_CDESC(src), KVF_CDESC(dst));
    if (kvf_tensor_device(dst) != KVF_DEVICE_CUDA || kvf_tensor_device(src) != KVF_DEVICE_CUDA)
        return kvf_error_set(KVF_ERR_DEVICE, "copy: %s on %s into %s on %s: the CUDA copy moves "
                             "device tensors only (use upload/download for host memory)",
                             KVF_CDESC(src), kvf_device_name(kvf_tensor_device(src)),
                             KVF_CDESC(dst), kvf_device_name(kvf_tensor_device(dst)));
    int64_t n = kvf_tensor_numel(dst);
    if (n == 0) return KVF_OK;
    if (dst->dtype == src->dtype && kvf_tensor_is_contiguous(dst) &&
        kvf_tensor_is_contiguous(src)) {
        size_t nb = kvf_tensor_nbytes(dst);
        KVF_CU(cudaMemcpyAsync(kvf_tensor_data(dst), kvf_tensor_data(src), nb,
                               cudaMemcpyDeviceToDevice, KVF_STREAM),
               "copy %s", KVF_CDESC(src));
        return KVF_OK;
    }
    unsigned blocks = kvf_cuda_blocks(n, EW_THREADS);
    if (kvf_tensor_is_contiguous(dst) && kvf_tensor_is_contiguous(src)) {
        if (dst->dtype == KVF_DTYPE_BF16 && src->dtype == KVF_DTYPE_F32) {
            __nv_bfloat16 *d = (__nv_bfloat16 *)kvf_tensor_data(dst);
            const float *s = (const float *)kvf_tensor_data(src);
            int head = vec_head(n, 8, {{d, 2}, {s, 4}});
            if (head >= 0)
                k_f32_to_bf16_vec<<<vec_blocks((n - head) / 8, F2B_U), VEC_THREADS, 0, KVF_STREAM>>>(
                    d, s, n, head);
            else
                k_f32_to_bf16<<<blocks, EW_THREADS, 0, KVF_STREAM>>>(d, s, n);
            KVF_LAUNCH("f32_to_bf16", "copy %s into %s", KVF_CDESC(src), KVF_CDESC(dst));
            return KVF_OK;
        }
        if (dst->dtype == KVF_DTYPE_F32 && src->dtype == KVF_DTYPE_BF16) {
            float *d = (float *)kvf_tensor_data(dst);
            const __nv_bfloat16 *s = (const __nv_bfloat16 *)kvf_tensor_data(src);
            int head = vec_head(n, 8, {{d, 4}, {s, 2}});
            if (head >= 0)
                k_bf16_to_f32_vec<<<vec_blocks((n - head) / 8, B2F_U), VEC_THREADS, 0, KVF_STREAM>>>(
                    d, s, n, head);
            else
                k_bf16_to_f32<<<blocks, EW_THREADS, 0, KVF_STREAM>>>(d, s, n);
            KVF_LAUNCH("bf16_to_f32", "copy %s into %s", KVF_CDESC(src), KVF_CDESC(dst));
            return KVF_OK;
        }
    }
    kvf_view4 d = kvf_cuda_view(dst), s = kvf_cuda_view(src);
    const int per = 16 / (int)kvf_dtype_size(dst->dtype);
    kvf_view4 dw = d, sw = s;
    if (dst->dtype == src->dtype && 16 % kvf_dtype_size(dst->dtype) == 0 &&
        view_words(&dw, d.shape[3], per) && view_words(&sw, d.shape[3], per)) {
        k_copy_same<uint4><<<kvf_cuda_blocks(n / per, EW_THREADS), EW_THREADS, 0, KVF_STREAM>>>(dw, sw, n / per);
    } else if (dst->dtype == src->dtype) {
        switch (kvf_dtype_size(dst->dtype)) {
        case 2: k_copy_same<uint16_t><<<blocks, EW_THREADS, 0, KVF_STREAM>>>(d, s, n); break;
        case 4: k_copy_same<uint32_t><<<blocks, EW_THREADS, 0, KVF_STREAM>>>(d, s, n); break;
        case 8: k_copy_same<uint64_t><<<blocks, EW_THREADS, 0, KVF_STREAM>>>(d, s, n); break;
        default:
            return kvf_error_set(KVF_ERR_DTYPE, "copy: unsupported dtype of %s", KVF_CDESC(src));
        }
    } else {
        k_copy_convert<<<blocks, EW_THREADS, 0, KVF_STREAM>>>(d, (int)dst->dtype, s,
                                                             (int)src->dtype, n);
    }
    KVF_LAUNCH("copy", "copy %s into %s", KVF_CDESC(src), KVF_CDESC(dst));
    return KVF_OK;
}

/* ---- binary ---------------------------------------------------------------------------------- */

__device__ __forceinline__ float binop_apply(int op, float a, float b) {
    switch (op) {
    case KVF_BINOP_ADD: return a + b;
    case KVF_BINOP_SUB: return a - b;
    case KVF_BINOP_MUL: return a * b;
    case KVF_BINOP_DIV: return a / b;
    default: return NAN;
    }
}

template <class T>
__global__ void k_binary_flat(int op, T *o, const T *a, const T *b, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x)
        kvf_st(o + e, binop_apply(op, kvf_ld(a + e), kvf_ld(b + e)));
}

/* 16 elements per thread and step: 4 words of f32, 2 of bf16, per operand. */
#define VEC_U(T) (16 / vec_t<T>::N)

template <class T, int OP>
__global__ void __launch_bounds__(VEC_THREADS) k_binary_vec(T *o, const T *a, const T *b,
                                                            int64_t n, int head) {
    constexpr int N = vec_t<T>::N, U = VEC_U(T);
    typedef typename vec_t<T>::W W;
    const int64_t nv = (n - head) / N;
    VEC_SCALAR_FOR(e, n, head, nv * N) kvf_st(o + e, binop_apply(OP, kvf_ld(a + e), kvf_ld(b + e)));
    o += head;
    a += head;
    b += head;
    VEC_STEP_FOR(v0, nv, U) {
        W wa[U], wb[U];
#pragma unroll
        for (int j = 0; j < U; j++) {
            const int64_t v = v0 + (int64_t)j * blockDim.x;
            if (v < nv) {
                wa[j] = vld(a + v * N);
                wb[j] = vld(b + v * N);
            }
        }
#pragma unroll
        for (int j = 0; j < U; j++) {
            const int64_t v = v0 + (int64_t)j * blockDim.x;
            if (v < nv) {
                float fa[N], fb[N];
                vunpack(wa[j], fa);
                vunpack(wb[j], fb);
#pragma unroll
                for (int i = 0; i < N; i++) fa[i] = binop_apply(OP, fa[i], fb[i]);
                W r;
                vpack(r, fa);
                vst(o + v * N, r);
            }
        }
    }
}

template <class T>
__global__ void k_binary_strided(int op, kvf_view4 o, kvf_view4 a, kvf_view4 b, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        float x = kvf_ld((const T *)a.base + kvf_offset4(e, o.shape, a.stride));
        float y = kvf_ld((const T *)b.base + kvf_offset4(e, o.shape, b.stride));
        kvf_st((T *)o.base + kvf_offset4(e, o.shape, o.stride), binop_apply(op, x, y));
    }
}

/* The strided kernel over 16-byte words (view_words): n words. */
template <class T>
__global__ void k_binary_strided_vec(int op, kvf_view4 o, kvf_view4 a, kvf_view4 b, int64_t n) {
    constexpr int N = vec_t<T>::N;
    typedef typename vec_t<T>::W W;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        float fa[N], fb[N];
        vunpack(*((const W *)a.base + kvf_offset4(e, o.shape, a.stride)), fa);
        vunpack(*((const W *)b.base + kvf_offset4(e, o.shape, b.stride)), fb);
#pragma unroll
        for (int i = 0; i < N; i++) fa[i] = binop_apply(op, fa[i], fb[i]);
        W r;
        vpack(r, fa);
        vst((T *)((W *)o.base + kvf_offset4(e, o.shape, o.stride)), r);
    }
}

template <class T>
static kvf_status binary_t(kvf_binop op, kvf_tensor *out, const kvf_tensor *a,
                           const kvf_tensor *b) {
    int64_t n = kvf_tensor_numel(out);
    if (n == 0) return KVF_OK;
    unsigned blocks = kvf_cuda_blocks(n, EW_THREADS);
    if (all_contig_same(out, a, b)) {
        T *po = (T *)kvf_tensor_data(out);
        const T *pa = (const T *)kvf_tensor_data(a), *pb = (const T *)kvf_tensor_data(b);
        int head = vec_head(n, vec_t<T>::N, {{po, sizeof(T)}, {pa, sizeof(T)}, {pb, sizeof(T)}});
        unsigned vblocks = head >= 0 ? vec_blocks((n - head) / vec_t<T>::N, VEC_U(T)) : 0;
        switch (head >= 0 ? (int)op : -1) {
#define BINARY_VEC(OP)                                                                        \
    case OP: k_binary_vec<T, OP><<<vblocks, VEC_THREADS, 0, KVF_STREAM>>>(po, pa, pb, n, head); break;
            BINARY_VEC(KVF_BINOP_ADD)
            BINARY_VEC(KVF_BINOP_SUB)
            BINARY_VEC(KVF_BINOP_MUL)
            BINARY_VEC(KVF_BINOP_DIV)
#undef BINARY_VEC
        default: /* unaligned operands (or an unknown op: NaN, as binop_apply) */
            k_binary_flat<T><<<blocks, EW_THREADS, 0, KVF_STREAM>>>((int)op, po, pa, pb, n);
        }
    } else {
        kvf_view4 ov = kvf_cuda_view(out), av = kvf_cuda_view(a), bv = kvf_cuda_view(b);
        const int N = vec_t<T>::N;
        const int64_t inner = ov.shape[3];
        if (view_words(&ov, inner, N) && view_words(&av, inner, N) && view_words(&bv, inner, N))
            k_binary_strided_vec<T><<<kvf_cuda_blocks(n / N, EW_THREADS), EW_THREADS, 0, KVF_STREAM>>>(
                (int)op, ov, av, bv, n / N);
        else
            k_binary_strided<T><<<blocks, EW_THREADS, 0, KVF_STREAM>>>(
                (int)op, kvf_cuda_view(out), kvf_cuda_view(a), kvf_cuda_view(b), n);
    }
    KVF_LAUNCH("binary", "binary op %d on %s", (int)op, KVF_CDESC(out));
    return KVF_OK;
}

kvf_status kvf_cuda_binary(kvf_binop op, kvf_tensor *out, const kvf_tensor *a,
                           const kvf_tensor *b) {
    if (a->dtype != out->dtype || b->dtype != out->dtype)
        return kvf_error_set(KVF_ERR_DTYPE, "binary: a %s, b %s and out %s must share a dtype",
                             KVF_CDESC(a), KVF_CDESC(b), KVF_CDESC(out));
    KVF_CUDA_DISPATCH("binary", out->dtype, binary_t, op, out, a, b);
}

/* ---- unary ----------------------------------------------------------------------------------- */

#define GELU_C 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_A 0.044715f

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

/* f(x); SCALE is done by the caller in double. */
__device__ __forceinline__ float unop_apply(int op, float x) {
    switch (op) {
    case KVF_UNOP_EXP: return expf(x);
    case KVF_UNOP_LOG: return logf(x);
    case KVF_UNOP_SILU: return x * sigmoidf_(x);
    case KVF_UNOP_GELU_TANH: return 0.5f * x * (1.0f + tanhf(GELU_C * (x + GELU_A * x * x * x)));
    case KVF_UNOP_GELU_ERF: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    default: return NAN;
    }
}

__device__ __forceinline__ float unop_deriv(int op, float x) {
    switch (op) {
    case KVF_UNOP_EXP: return expf(x);
    case KVF_UNOP_LOG: return 1.0f / x;
    case KVF_UNOP_SILU: {
        float s = sigmoidf_(x);
        return s * (1.0f + x * (1.0f - s));
    }
    case KVF_UNOP_GELU_TANH: {
        float t = tanhf(GELU_C * (x + GELU_A * x * x * x));
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_C * (1.0f + 3.0f * GELU_A * x * x);
    }
    case KVF_UNOP_GELU_ERF:
        return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) +
               x * expf(-0.5f * x * x) * 0.3989422804014327f;
    default: return NAN;
    }
}

template <class T>
__global__ void k_unary(int op, double alpha, kvf_view4 o, kvf_view4 x, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        float v = kvf_ld((const T *)x.base + kvf_offset4(e, o.shape, x.stride));
        float r = op == KVF_UNOP_SCALE ? (float)(alpha * (double)v) : unop_apply(op, v);
        kvf_st((T *)o.base + kvf_offset4(e, o.shape, o.stride), r);
    }
}

template <class T>
__global__ void k_unary_flat(int op, double alpha, T *o, const T *x, int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        float v = kvf_ld(x + e);
        kvf_st(o + e, op == KVF_UNOP_SCALE ? (float)(alpha * (double)v) : unop_apply(op, v));
    }
}

template <class T, int OP>
__device__ __forceinline__ float unary_one(double alpha, float v) {
    return OP == KVF_UNOP_SCALE ? (float)(alpha * (double)v) : unop_apply(OP, v);
}

/* k_unary_flat, vectorized, the op a template argument. */
template <class T, int OP>
__global__ void __launch_bounds__(VEC_THREADS) k_unary_vec(double alpha, T *o, const T *x,
                                                           int64_t n, int head) {
    constexpr int N = vec_t<T>::N, U = VEC_U(T);
    typedef typename vec_t<T>::W W;
    const int64_t nv = (n - head) / N;
    VEC_SCALAR_FOR(e, n, head, nv * N) kvf_st(o + e, unary_one<T, OP>(alpha, kvf_ld(x + e)));
    o += head;
    x += head;
    VEC_STEP_FOR(v0, nv, U) {
        W wx[U];
#pragma unroll
        for (int j = 0; j < U; j++) {
            const int64_t v = v0 + (int64_t)j * blockDim.x;
            if (v < nv) wx[j] = vld(x + v * N);
        }
#pragma unroll
        for (int j = 0; j < U; j++) {
            const int64_t v = v0 + (int64_t)j * blockDim.x;
            if (v < nv) {
                float f[N];
                vunpack(wx[j], f);
#pragma unroll
                for (int i = 0; i < N; i++) f[i] = unary_one<T, OP>(alpha, f[i]);
                W r;
                vpack(r, f);
                vst(o + v * N, r);
            }
        }
    }
}

/* dx += f'(x)·dy; x unused for SCALE. */
template <class T>
__global__ void k_unary_bw(int op, double alpha, kvf_view4 dx, kvf_view4 x, kvf_view4 dy,
                           int64_t n) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        float g = kvf_ld((const T *)dy.base + kvf_offset4(e, dx.shape, dy.stride));
        float c;
        if (op == KVF_UNOP_SCALE) {
            c = (float)(alpha * (double)g);
        } else {
            float v = kvf_ld((const T *)x.base + kvf_offset4(e, dx.shape, x.stride));
            c = unop_deriv(op, v) * g;
        }
        T *p = (T *)dx.base + kvf_offset4(e, dx.shape, dx.stride);
        kvf_st(p, kvf_ld(p) + c);
    }
}

/* The backward over flat operands, vectorized: dx += f'(x)·dy as k_unary_bw (x not read
 * for SCALE, and may be NULL then). */
template <class T, int OP>
__device__ __forceinline__ float unary_bw_one(double alpha, float v, float g, float old) {
    float c = OP == KVF_UNOP_SCALE ? (float)(alpha * (double)g) : unop_deriv(OP, v) * g;
    return old + c;
}

template <class T, int OP>
__global__ void __launch_bounds__(VEC_THREADS) k_unary_bw_vec(double alpha, T *dx, const T *x,
                                                              const T *dy, int64_t n, int head) {
    constexpr int N = vec_t<T>::N, U = VEC_U(T);
    constexpr bool HAS_X = OP != KVF_UNOP_SCALE;
    typedef typename vec_t<T>::W W;
    const int64_t nv = (n - head) / N;
    VEC_SCALAR_FOR(e, n, head, nv * N)
        kvf_st(dx + e, unary_bw_one<T, OP>(alpha, HAS_X ? kvf_ld(x + e) : 0.0f, kvf_ld(dy + e),
                                           kvf_ld(dx + e)));
    dx += head;
    dy += head;
    if (HAS_X) x += head;
    VEC_STEP_FOR(v0, nv, U) {
        W wx[U], wg[U], wd[U];
#pragma unroll
        for (int j = 0; j < U; j++) {
            const int64_t v = v0 + (int64_t)j * blockDim.x;
            if (v < nv) {
                if (HAS_X) wx[j] = vld(x + v * N);
                wg[j] = vld(dy + v * N);
                wd[j] = vld(dx + v * N);
            }
        }
#pragma unroll
        for (int j = 0; j < U; j++) {
            const int64_t v = v0 + (int64_t)j * blockDim.x;
            if (v < nv) {
                float fx[N], fg[N], fd[N];
                if (HAS_X) vunpack(wx[j], fx);
                vunpack(wg[j], fg);
                vunpack(wd[j], fd);
#pragma unroll
                for (int i = 0; i < N; i++)
                    fd[i] = unary_bw_one<T, OP>(alpha, HAS_X ? fx[i] : 0.0f, fg[i], fd[i]);
                W r;
                vpack(r, fd);
                vst(dx + v * N, r);
            }
        }
    }
}

#define UNARY_OPS(X)                                                                          \
    X(KVF_UNOP_SCALE) X(KVF_UNOP_EXP) X(KVF_UNOP_LOG) X(KVF_UNOP_SILU) X(KVF_UNOP_GELU_TANH)     \
    X(KVF_UNOP_GELU_ERF)

template <class T>
static kvf_status unary_t(kvf_unop op, kvf_tensor *out, const kvf_tensor *x, double alpha) {
    int64_t n = kvf_tensor_numel(out);
    if (n == 0) return KVF_OK;
    if (all_contig_same(out, x, NULL)) { /* e.g. gradient clipping over the flat buffer */
        T *po = (T *)kvf_tensor_data(out);
        const T *px = (const T *)kvf_tensor_data(x);
        int head = vec_head(n, vec_t<T>::N, {{po, sizeof(T)}, {px, sizeof(T)}});
        unsigned vblocks = head >= 0 ? vec_blocks((n - head) / vec_t<T>::N, VEC_U(T)) : 0;
        switch (head >= 0 ? (int)op : -1) {
#define UNARY_VEC(OP)                                                                         \
    case OP: k_unary_vec<T, OP><<<vblocks, VEC_THREADS, 0, KVF_STREAM>>>(alpha, po, px, n, head); break;
            UNARY_OPS(UNARY_VEC)
#undef UNARY_VEC
        default: /* unaligned operands */
            k_unary_flat<T><<<kvf_cuda_blocks(n, EW_THREADS), EW_THREADS, 0, KVF_STREAM>>>(
                (int)op, alpha, po, px, n);
        }
    } else
        k_unary<T><<<kvf_cuda_blocks(n, EW_THREADS), EW_THREADS, 0, KVF_STREAM>>>(
            (int)op, alpha, kvf_cuda_view(out), kvf_cuda_view(x), n);
    KVF_LAUNCH("unary", "unary op %d on %s", (int)op, KVF_CDESC(out));
    return KVF_OK;
}

kvf_status kvf_cuda_unary(kvf_unop op, kvf_tensor *out, const kvf_tensor *x, double alpha) {
    if (x->dtype != out->dtype)
        return kvf_error_set(KVF_ERR_DTYPE, "unary: x %s and out %s must share a dtype",
                             KVF_CDESC(x), KVF_CDESC(out));
    if ((int)op < 0 || op >= KVF_UNOP_COUNT)
        return kvf_error_set(KVF_ERR_ARG, "unary: unknown op %d", (int)op);
    KVF_CUDA_DISPATCH("unary", out->dtype, unary_t, op, out, x, alpha);
}

template <class T>
static kvf_status unary_bw_t(kvf_unop op, kvf_tensor *dx, const kvf_tensor *x,
                             const kvf_tensor *dy, double alpha) {
    int64_t n = kvf_tensor_numel(dx);
    if (n == 0) return KVF_OK;
    if (all_contig_same(dx, dy, x)) {
        T *pd = (T *)kvf_tensor_data(dx);
        const T *pg = (const T *)kvf_tensor_data(dy);
        const T *px = x && op != KVF_UNOP_SCALE ? (const T *)kvf_tensor_data(x) : NULL;
        int head = vec_head(n, vec_t<T>::N, {{pd, sizeof(T)}, {pg, sizeof(T)}, {px, sizeof(T)}});
        unsigned vblocks = head >= 0 ? vec_blocks((n - head) / vec_t<T>::N, VEC_U(T)) : 0;
        bool launched = true;
        switch (head >= 0 ? (int)op : -1) {
#define UNARY_BW_VEC(OP)                                                                      \
    case OP:                                                                                  \
        k_unary_bw_vec<T, OP><<<vblocks, VEC_THREADS, 0, KVF_STREAM>>>(alpha, pd, px, pg, n, head); \
        break;
            UNARY_OPS(UNARY_BW_VEC)
#undef UNARY_BW_VEC
        default: launched = false; /* unaligned operands (or an unknown op): the strided kernel */
        }
        if (launched) {
            KVF_LAUNCH("unary_backward", "unary_backward op %d on %s", (int)op, KVF_CDESC(dx));
            return KVF_OK;
        }
    }
    kvf_view4 xv = kvf_cuda_view(x ? x : dy);
    k_unary_bw<T><<<kvf_cuda_blocks(n, EW_THREADS), EW_THREADS, 0, KVF_STREAM>>>(
        (int)op, alpha, kvf_cuda_view(dx), xv, kvf_cuda_view(dy), n);
    KVF_LAUNCH("unary_backward", "unary_backward op %d on %s", (int)op, KVF_CDESC(dx));
    return KVF_OK;
}

kvf_status kvf_cuda_unary_backward(kvf_unop op, kvf_tensor *dx, const kvf_tensor *x,
                                   const kvf_tensor *dy, double alpha) {
    if (dy->dtype != dx->dtype || (x && x->dtype != dx->dtype))
        return kvf_error_set(KVF_ERR_DTYPE, "unary_backward: dx %s, dy %s must share a dtype",
                             KVF_CDESC(dx), KVF_CDESC(dy));
    if (!x && op != KVF_UNOP_SCALE)
        return kvf_error_set(KVF_ERR_ARG, "unary_backward: op %d needs x", (int)op);
    KVF_CUDA_DISPATCH("unary_backward", dx->dtype, unary_bw_t, op, dx, x, dy, alpha);
}

/* ---- reduce_sum ------------------------------------------------------------------------------ */
/* out (+)= Σ x over the dims where out has extent 1 and x does not. Output element e (flat
 * over out's shape) starts at x offset Σ idx_d·xs_d over kept dims; reduced element r (flat
 * over ext) adds Σ ridx_d·xs_d over reduced dims. Two layouts:
 *  - rows: the innermost dim is reduced and dense in x: one block per (output, chunk of r),
 *    threads stride over r (coalesced), a block tree sum;
 *  - cols: otherwise: a thread per output (consecutive outputs are usually adjacent in
 *    memory), 8 threads × chunks over r, combined in a fixed order.
 * With more than one chunk, partial sums go to scratch and a second kernel adds them in
 * chunk order. Chunk counts depend only on the shapes, so the result is reproducible. */

struct red_plan {
    kvf_view4 o, x;
    int64_t ext[4];
    int64_t n_out, R;
};

__device__ __forceinline__ int64_t red_xoff_out(const red_plan &p, int64_t e) {
    return kvf_offset4(e, p.o.shape, p.x.stride);
}
__device__ __forceinline__ int64_t red_xoff_r(const red_plan &p, int64_t r) {
    return kvf_offset4(r, p.ext, p.x.stride);
}

template <class T>
__global__ void k_reduce_rows(red_plan p, int64_t chunk_len, int nchunk, float *partial,
                              bool accumulate) {
    __shared__ float sh[33];
    const int64_t e = blockIdx.x;
    const int c = blockIdx.y;
    const int64_t r0 = c * chunk_len, r1 = r0 + chunk_len < p.R ? r0 + chunk_len : p.R;
    const T *base = (const T *)p.x.base + red_xoff_out(p, e);
    float acc = 0.0f;
    for (int64_t r = r0 + threadIdx.x; r < r1; r += blockDim.x) acc += kvf_ld(base + red_xoff_r(p, r));
    acc = kvf_block_sum(acc, sh);
    if (threadIdx.x == 0) {
        if (nchunk == 1) {
            T *po = (T *)p.o.base + kvf_offset4(e, p.o.shape, p.o.stride);
            kvf_st(po, accumulate ? kvf_ld(po) + acc : acc);
        } else {
            partial[e * nchunk + c] = acc;
        }
    }
}

template <class T>
__global__ void k_reduce_cols(red_plan p, int64_t chunk_len, int nchunk, float *partial,
                              bool accumulate) {
    __shared__ float sh[8][33];
    const int64_t e = blockIdx.x * 32 + threadIdx.x;
    const int c = blockIdx.y;
    float acc = 0.0f;
    if (e < p.n_out) {
        const int64_t r0 = c * chunk_len, r1 = r0 + chunk_len < p.R ? r0 + chunk_len : p.R;
        const T *base = (const T *)p.x.base + red_xoff_out(p, e);
        for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) acc += kvf_ld(base + red_xoff_r(p, r));
    }
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && e < p.n_out) {
        float s = sh[0][threadIdx.x];
        for (int t = 1; t < 8; t++) s += sh[t][threadIdx.x];
        if (nchunk == 1) {
            T *po = (T *)p.o.base + kvf_offset4(e, p.o.shape, p.o.stride);
            kvf_st(po, accumulate ? kvf_ld(po) + s : s);
        } else {
            partial[(int64_t)c * p.n_out + e] = s;
        }
    }
}

/* out[e] (+)= Σ_c partial[e·es + c·cs], c in order. */
template <class T>
__global__ void k_reduce_finish(red_plan p, const float *partial, int nchunk, int64_t es,
                                int64_t cs, bool accumulate) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < p.n_out;
         e += (int64_t)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int c = 0; c < nchunk; c++) s += partial[e * es + c * cs];
        T *po = (T *)p.o.base + kvf_offset4(e, p.o.shape, p.o.stride);
        kvf_st(po, accumulate ? kvf_ld(po) + s : s);
    }
}

template <class T>
static kvf_status reduce_t(kvf_tensor *out, const kvf_tensor *x, bool accumulate) {
    red_plan p;
    p.o = kvf_cuda_view(out);
    p.x = kvf_cuda_view(x);
    p.n_out = 1;
    p.R = 1;
    for (int d = 0; d < 4; d++) {
        if (p.o.shape[d] != 1 && p.o.shape[d] != p.x.shape[d])
            return kvf_error_set(KVF_ERR_SHAPE, "reduce_sum: %s into %s", KVF_CDESC(x),
                                 KVF_CDESC(out));
        p.ext[d] = p.o.shape[d] == 1 ? p.x.shape[d] : 1;
        p.n_out *= p.o.shape[d];
        p.R *= p.ext[d];
    }
    if (p.n_out == 0) return KVF_OK;
    if (p.R == 0) { /* an empty sum: 0, or out unchanged */
        if (accumulate) return KVF_OK;
        k_reduce_finish<T><<<kvf_cuda_blocks(p.n_out, EW_THREADS), EW_THREADS, 0, KVF_STREAM>>>(
            p, NULL, 0, 0, 0, false);
        KVF_LAUNCH("reduce_finish", "reduce_sum %s into %s", KVF_CDESC(x), KVF_CDESC(out));
        return KVF_OK;
    }
    const bool rows = p.ext[3] > 1 && p.x.stride[3] == 1 && p.ext[3] >= 32;
    int64_t chunk_len, nchunk;
    if (rows) {
        /* a chunk of at least 8192 elements per block; at most 1024 chunks */
        nchunk = (p.R + 8191) / 8192;
        if (p.n_out >= 1024) nchunk = 1;
        if (nchunk > 1024) nchunk = 1024;
    } else {
        int64_t bx = (p.n_out + 31) / 32;
        nchunk = (2048 + bx - 1) / bx;            /* enough blocks to fill the GPU */
        int64_t maxc = (p.R + 63) / 64;           /* but at least 64 elements per chunk */
        if (nchunk > maxc) nchunk = maxc;
        if (nchunk > 65535) nchunk = 65535;
        if (nchunk < 1) nchunk = 1;
    }
    chunk_len = (p.R + nchunk - 1) / nchunk;
    nchunk = (p.R + chunk_len - 1) / chunk_len;
    float *partial = NULL;
    if (nchunk > 1) {
        partial = (float *)kvf_cuda_scratch(sizeof(float) * (size_t)(nchunk * p.n_out), "reduce_sum");
        if (!partial) return kvf_error_code();
    }
    if (rows) {
        int threads = kvf_row_threads(chunk_len);
        if (p.n_out > 0x7fffffff)
            return kvf_error_set(KVF_ERR_SHAPE, "reduce_sum: %s: too many outputs", KVF_CDESC(out));
        k_reduce_rows<T><<<dim3((unsigned)p.n_out, (unsigned)nchunk), threads, 0, KVF_STREAM>>>(
            p, chunk_len, (int)nchunk, partial, accumulate);
    } else {
        int64_t bx = (p.n_out + 31) / 32;
        if (bx > 0x7fffffff)
            return kvf_error_set(KVF_ERR_SHAPE, "reduce_sum: %s: too many outputs", KVF_CDESC(out));
        k_reduce_cols<T><<<dim3((unsigned)bx, (unsigned)nchunk), dim3(32, 8), 0, KVF_STREAM>>>(
            p, chunk_len, (int)nchunk, partial, accumulate);
    }
    KVF_LAUNCH("reduce_sum", "reduce_sum %s into %s", KVF_CDESC(x), KVF_CDESC(out));
    if (nchunk > 1) {
        int64_t es = rows ? nchunk : 1, cs = rows ? 1 : p.n_out;
        k_reduce_finish<T><<<kvf_cuda_blocks(p.n_out, EW_THREADS), EW_THREADS, 0, KVF_STREAM>>>(
            p, partial, (int)nchunk, es, cs, accumulate);
        KVF_LAUNCH("reduce_finish", "reduce_sum %s into %s", KVF_CDESC(x), KVF_CDESC(out));
    }
    return KVF_OK;
}

kvf_status kvf_cuda_reduce_sum(kvf_tensor *out, const kvf_tensor *x, bool accumulate) {
    if (x->dtype != out->dtype)
        return kvf_error_set(KVF_ERR_DTYPE, "reduce_sum: x %s and out %s must share a dtype",
                             KVF_CDESC(x), KVF_CDESC(out));
    if (x->ndim != out->ndim)
        return kvf_error_set(KVF_ERR_SHAPE, "reduce_sum: x %s and out %s differ in rank",
                             KVF_CDESC(x), KVF_CDESC(out));
    KVF_CUDA_DISPATCH("reduce_sum", out->dtype, reduce_t, out, x, accumulate);
}

/* ---- SwiGLU ----------------------------------------------------------------------------------
 * gate/up (and dgate/dup) are dense rows of F elements a row stride apart: contiguous (one row
 * of n, as a flat array) or the halves of a packed [gate | up] projection (rows of F, 2F
 * apart). out/dout are contiguous; element e of out is row e / F, column e % F. */

__device__ __forceinline__ int64_t sw_at(int64_t e, int64_t F, int64_t ld) {
    /* 32-bit division where it fits (every realistic size): a 64-bit one per word was a
     * quarter of the packed backward's time */
    if (((uint64_t)e | (uint64_t)F) <= 0xffffffffu) {
        const uint32_t r = (uint32_t)e / (uint32_t)F;
        return (int64_t)r * ld + (int64_t)((uint32_t)e - r * (uint32_t)F);
    }
    return (e / F) * ld + e % F;
}

template <class T>
__global__ void k_swiglu(T *o, const T *g, const T *u, int64_t n, int64_t F, int64_t lg, int64_t lu) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        float x = kvf_ld(g + sw_at(e, F, lg));
        kvf_st(o + e, x * sigmoidf_(x) * kvf_ld(u + sw_at(e, F, lu)));
    }
}

/* The backend contract overwrites dgate/dup; the rule hands over fresh buffers. */
template <class T>
__global__ void k_swiglu_bw(T *dg, T *du, const T *g, const T *u, const T *d, int64_t n, int64_t F,
                            int64_t lg, int64_t lu, int64_t ldg, int64_t ldu) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        float x = kvf_ld(g + sw_at(e, F, lg)), s = sigmoidf_(x), dy = kvf_ld(d + e);
        if (dg) kvf_st(dg + sw_at(e, F, ldg), dy * kvf_ld(u + sw_at(e, F, lu)) * s * (1.0f + x * (1.0f - s)));
        if (du) kvf_st(du + sw_at(e, F, ldu), dy * x * s);
    }
}

/* k_swiglu, vectorized: a word never straddles rows (F a multiple of the word, or one row). */
template <class T>
__global__ void __launch_bounds__(VEC_THREADS) k_swiglu_vec(T *o, const T *g, const T *u,
                                                            int64_t n, int head, int64_t F,
                                                            int64_t lg, int64_t lu) {
    constexpr int N = vec_t<T>::N, U = VEC_U(T);
    typedef typename vec_t<T>::W W;
    const int64_t nv = (n - head) / N;
    VEC_SCALAR_FOR(e, n, head, nv * N) {
        float x = kvf_ld(g + sw_at(e, F, lg));
        kvf_st(o + e, x * sigmoidf_(x) * kvf_ld(u + sw_at(e, F, lu)));
    }
    o += head;
    g += head;
    u += head;
    VEC_STEP_FOR(v0, nv, U) {
        W wg[U], wu[U];
#pragma unroll
        for (int j = 0; j < U; j++) {
            const int64_t v = v0 + (int64_t)j * blockDim.x;
            if (v < nv) {
                wg[j] = vld(g + sw_at(v * N, F, lg));
                wu[j] = vld(u + sw_at(v * N, F, lu));
            }
        }
#pragma unroll
        for (int j = 0; j < U; j++) {
            const int64_t v = v0 + (int64_t)j * blockDim.x;
            if (v < nv) {
                float fg[N], fu[N];
                vunpack(wg[j], fg);
                vunpack(wu[j], fu);
#pragma unroll
                for (int i = 0; i < N; i++) {
                    float x = fg[i];
                    fg[i] = x * sigmoidf_(x) * fu[i];
                }
                W r;
                vpack(r, fg);
                vst(o + v * N, r);
            }
        }
    }
}

/* k_swiglu_bw, vectorized: dgate = dout·up·silu'(gate), dup = dout·silu(gate); NULL: not
 * wanted, and then its inputs (up for dgate) are not read. */
#define SWIGLU_BW_U(T) 4 /* words per operand per thread and step */
template <class T>
__global__ void __launch_bounds__(VEC_THREADS) k_swiglu_bw_vec(T *dg, T *du, const T *g,
                                                               const T *u, const T *d, int64_t n,
                                                               int head, int64_t F, int64_t lg,
                                                               int64_t lu, int64_t ldg, int64_t ldu) {
    constexpr int N = vec_t<T>::N, U = SWIGLU_BW_U(T);
    typedef typename vec_t<T>::W W;
    const int64_t nv = (n - head) / N;
    VEC_SCALAR_FOR(e, n, head, nv * N) {
        float x = kvf_ld(g + sw_at(e, F, lg)), s = sigmoidf_(x), dy = kvf_ld(d + e);
        if (dg) kvf_st(dg + sw_at(e, F, ldg), dy * kvf_ld(u + sw_at(e, F, lu)) * s * (1.0f + x * (1.0f - s)));
        if (du) kvf_st(du + sw_at(e, F, ldu), dy * x * s);
    }
    if (dg) dg += head;
    if (du) du += head;
    g += head;
    u += head;
    d += head;
    VEC_STEP_FOR(v0, nv, U) {
        W wg[U], wd[U], wu[U];
#pragma unroll
        for (int j = 0; j < U; j++) {
            const int64_t v = v0 + (int64_t)j * blockDim.x;
            if (v < nv) {
                wg[j] = vld(g + sw_at(v * N, F, lg));
                wd[j] = vld(d + v * N);
                if (dg) wu[j] = vld(u + sw_at(v * N, F, lu));
            }
        }
#pragma unroll
        for (int j = 0; j < U; j++) {
            const int64_t v = v0 + (int64_t)j * blockDim.x;
            if (v < nv) {
                float fg[N], fd[N];
                vunpack(wg[j], fg);
                vunpack(wd[j], fd);
                float s[N];
#pragma unroll
                for (int i = 0; i < N; i++) s[i] = sigmoidf_(fg[i]);
                if (dg) {
                    float fu[N], fo[N];
                    vunpack(wu[j], fu);
#pragma unroll
                    for (int i = 0; i < N; i++) {
                        float x = fg[i], dy = fd[i];
                        fo[i] = dy * fu[i] * s[i] * (1.0f + x * (1.0f - s[i]));
                    }
                    W r;
                    vpack(r, fo);
                    vst(dg + sw_at(v * N, F, ldg), r);
                }
                if (du) {
                    float fo[N];
#pragma unroll
                    for (int i = 0; i < N; i++) {
                        float x = fg[i], dy = fd[i];
                        fo[i] = dy * x * s[i];
                    }
                    W r;
                    vpack(r, fo);
                    vst(du + sw_at(v * N, F, ldu), r);
                }
            }
        }
    }
}

/* The row layout of a SwiGLU operand: contiguous → one row of n (*ld = n, F = n); else dense
 * rows of F (*ld their stride). False: neither. */
static bool sw_rows(const kvf_tensor *t, int64_t n, bool contig, int64_t *ld) {
    if (!t) {
        *ld = contig ? n : 0;
        return true;
    }
    if (contig) {
        *ld = n;
        return kvf_tensor_is_contiguous(t);
    }
    return kvf_tensor_rows(t, ld);
}

template <class T>
static kvf_status swiglu_t(kvf_tensor *out, const kvf_tensor *gate, const kvf_tensor *up) {
    int64_t n = kvf_tensor_numel(out);
    if (n == 0) return KVF_OK;
    const bool contig = kvf_tensor_is_contiguous(gate) && kvf_tensor_is_contiguous(up);
    const int64_t F = contig ? n : out->shape[out->ndim - 1];
    int64_t lg, lu;
    if (!kvf_tensor_is_contiguous(out) || !sw_rows(gate, n, contig, &lg) || !sw_rows(up, n, contig, &lu))
        return kvf_error_set(KVF_ERR_ARG, "swiglu: gate %s and up %s must be dense rows, out %s "
                             "contiguous", KVF_CDESC(gate), KVF_CDESC(up), KVF_CDESC(out));
    T *po = (T *)kvf_tensor_data(out);
    const T *pg = (const T *)kvf_tensor_data(gate), *pu = (const T *)kvf_tensor_data(up);
    const int N = vec_t<T>::N;
    int head = vec_head(n, N, {{po, sizeof(T)}, {pg, sizeof(T)}, {pu, sizeof(T)}});
    if (!contig && (head != 0 || F % N || lg % N || lu % N)) head = -1;
    if (head >= 0)
        k_swiglu_vec<T><<<vec_blocks((n - head) / N, VEC_U(T)), VEC_THREADS, 0, KVF_STREAM>>>(
            po, pg, pu, n, head, F, lg, lu);
    else
        k_swiglu<T><<<kvf_cuda_blocks(n, EW_THREADS), EW_THREADS, 0, KVF_STREAM>>>(po, pg, pu, n, F, lg, lu);
    KVF_LAUNCH("swiglu", "swiglu %s", KVF_CDESC(out));
    return KVF_OK;
}

kvf_status kvf_cuda_swiglu(kvf_tensor *out, const kvf_tensor *gate, const kvf_tensor *up) {
    if (gate->dtype != out->dtype || up->dtype != out->dtype)
        return kvf_error_set(KVF_ERR_DTYPE, "swiglu: gate %s, up %s, out %s must share a dtype",
                             KVF_CDESC(gate), KVF_CDESC(up), KVF_CDESC(out));
    KVF_CUDA_DISPATCH("swiglu", out->dtype, swiglu_t, out, gate, up);
}

template <class T>
static kvf_status swiglu_bw_t(kvf_tensor *dgate, kvf_tensor *dup, const kvf_tensor *gate,
                              const kvf_tensor *up, const kvf_tensor *dout) {
    int64_t n = kvf_tensor_numel(dout);
    if (n == 0 || (!dgate && !dup)) return KVF_OK;
    const bool contig = kvf_tensor_is_contiguous(gate) && kvf_tensor_is_contiguous(up) &&
                        (!dgate || kvf_tensor_is_contiguous(dgate)) && (!dup || kvf_tensor_is_contiguous(dup));
    const int64_t F = contig ? n : dout->shape[dout->ndim - 1];
    int64_t lg, lu, ldg, ldu;
    if (!kvf_tensor_is_contiguous(dout) || !sw_rows(gate, n, contig, &lg) || !sw_rows(up, n, contig, &lu) ||
        !sw_rows(dgate, n, contig, &ldg) || !sw_rows(dup, n, contig, &ldu))
        return kvf_error_set(KVF_ERR_ARG, "swiglu_backward: gate %s, up %s and their gradients "
                             "must be dense rows, dout %s contiguous", KVF_CDESC(gate), KVF_CDESC(up),
                             KVF_CDESC(dout));
    T *pdg = dgate ? (T *)kvf_tensor_data(dgate) : NULL, *pdu = dup ? (T *)kvf_tensor_data(dup) : NULL;
    const T *pg = (const T *)kvf_tensor_data(gate), *pu = (const T *)kvf_tensor_data(up),
            *pd = (const T *)kvf_tensor_data(dout);
    const int N = vec_t<T>::N;
    int head = vec_head(n, N, {{pdg, sizeof(T)}, {pdu, sizeof(T)}, {pg, sizeof(T)},
                               {pdg ? pu : NULL, sizeof(T)}, {pd, sizeof(T)}});
    if (!contig && (head != 0 || F % N || lg % N || lu % N || ldg % N || ldu % N)) head = -1;
    if (head >= 0)
        k_swiglu_bw_vec<T><<<vec_blocks((n - head) / N, SWIGLU_BW_U(T)), VEC_THREADS, 0, KVF_STREAM>>>(
            pdg, pdu, pg, pu, pd, n, head, F, lg, lu, ldg, ldu);
    else
        k_swiglu_bw<T><<<kvf_cuda_blocks(n, EW_THREADS), EW_THREADS, 0, KVF_STREAM>>>(
            pdg, pdu, pg, pu, pd, n, F, lg, lu, ldg, ldu);
    KVF_LAUNCH("swiglu_backward", "swiglu_backward %s", KVF_CDESC(dout));
    return KVF_OK;
}

kvf_status kvf_cuda_swiglu_backward(kvf_tensor *dgate, kvf_tensor *dup, const kvf_tensor *gate,
                                    const kvf_tensor *up, const kvf_tensor *dout) {
    KVF_CUDA_DISPATCH("swiglu_backward", dout->dtype, swiglu_bw_t, dgate, dup, gate, up, dout);
}

/* ---- c = beta·c (gemm with k = 0) ----------------------------------------------------------- */

template <class T>
__global__ void k_scale_rows(T *c, int64_t rows, int64_t cols, int64_t ld, double beta) {
    int64_t n = rows * cols;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        T *p = c + (e / cols) * ld + e % cols;
        kvf_st(p, beta == 0.0 ? 0.0f : (float)(beta * (double)kvf_ld(p)));
    }
}

template <class T>
static kvf_status scale_t(void *c, int64_t rows, int64_t cols, int64_t ld, double beta) {
    if (rows * cols == 0) return KVF_OK;
    k_scale_rows<T><<<kvf_cuda_blocks(rows * cols, EW_THREADS), EW_THREADS, 0, KVF_STREAM>>>(
        (T *)c, rows, cols, ld, beta);
    KVF_LAUNCH("scale_rows", "gemm with k = 0: scaling %lldx%lld by beta", (long long)rows,
               (long long)cols);
    return KVF_OK;
}

kvf_status kvf_cuda_scale_inplace(void *c, int64_t rows, int64_t cols, int64_t ld, double beta,
                                  kvf_dtype dt) {
    KVF_CUDA_DISPATCH("gemm", dt, scale_t, c, rows, cols, ld, beta);
}
