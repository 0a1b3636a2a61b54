/* cuda_vec.h — 16-byte vector loads and stores for the row kernels (cuda_norm.cu,
 * cuda_loss.cu): 4 f32 or 8 bf16 in a uint4, widened to / narrowed from f32. bf16 widens
 * exactly (a shift) and narrows with round-to-nearest-even, as kvf_ld / kvf_st do. */
#ifndef KVF_CUDA_VEC_H
#define KVF_CUDA_VEC_H

#include "cuda_common.h"

template <class T> struct vec16 {
    static constexpr int n = 16 / (int)sizeof(T);
};

template <class T> __device__ __forceinline__ void vunpack(const uint4 &r, float *f);
template <> __device__ __forceinline__ void vunpack<float>(const uint4 &r, float *f) {
    f[0] = __uint_as_float(r.x);
    f[1] = __uint_as_float(r.y);
    f[2] = __uint_as_float(r.z);
    f[3] = __uint_as_float(r.w);
}
template <> __device__ __forceinline__ void vunpack<__nv_bfloat16>(const uint4 &r, float *f) {
    const unsigned u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(u[i] << 16);
        f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
    }
}

template <class T> __device__ __forceinline__ uint4 vpack(const float *f);
template <> __device__ __forceinline__ uint4 vpack<float>(const float *f) {
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]),
                      __float_as_uint(f[3]));
}
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi); /* .x (lo) at the lower address */
    return *reinterpret_cast<unsigned *>(&h);
}
template <> __device__ __forceinline__ uint4 vpack<__nv_bfloat16>(const float *f) {
    return make_uint4(pack_bf16x2(f[0], f[1]), pack_bf16x2(f[2], f[3]), pack_bf16x2(f[4], f[5]),
                      pack_bf16x2(f[6], f[7]));
}

#endif
