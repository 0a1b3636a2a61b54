/* cuda_attention.h — what the attention kernels share: the launch parameters, the mask
 * bounds, and the bf16 tensor-core (mma.sync) path of cuda_attention_mma.cu. */
#ifndef KVF_CUDA_ATTENTION_H
#define KVF_CUDA_ATTENTION_H

#include "cuda_common.h"

struct attn_p {
    const void *q, *k, *v, *dout;
    void *o, *dq, *dk, *dv;
    float *lse;
    const float *lse_in, *delta;
    int64_t B, T, S, Hq, Hkv, Dk, Dv, group, off, window;
    int causal;
    float scale;
    int64_t q_b, q_t, q_h, k_b, k_t, k_h, v_b, v_t, v_h;
};

/* Keys [lo, hi) visible to query t; queries [lo, hi) that see a key of [s0, s1). */
__host__ __device__ __forceinline__ int64_t at_row_lo(const attn_p &p, int64_t t) {
    if (!p.window) return 0;
    int64_t lo = t + p.off - p.window + 1;
    return lo > 0 ? lo : 0;
}
__host__ __device__ __forceinline__ int64_t at_row_hi(const attn_p &p, int64_t t) {
    if (!p.causal) return p.S;
    int64_t hi = t + p.off + 1;
    return hi < p.S ? (hi > 0 ? hi : 0) : p.S;
}
__host__ __device__ __forceinline__ int64_t at_query_lo(const attn_p &p, int64_t s0) {
    if (!p.causal) return 0;
    int64_t lo = s0 - p.off;
    return lo > 0 ? (lo < p.T ? lo : p.T) : 0;
}
__host__ __device__ __forceinline__ int64_t at_query_hi(const attn_p &p, int64_t s1) {
    if (!p.window) return p.T;
    int64_t hi = s1 - 1 - p.off + p.window;
    return hi < p.T ? (hi > 0 ? hi : 0) : p.T;
}

/* The bf16 tensor-core kernels (cuda_attention_mma.cu), for head dims (Dk, Dv) in
 * {(32, 32), (64, 64), (96, 64), (128, 128), (192, 128)} with q/k/v rows 16-byte aligned.
 * Each returns false when it does not apply (the caller then runs the f32 SIMT kernels),
 * else true with *st the launch status. The backward needs p.delta (rowsum(dO∘O)) set. */
bool kvf_cuda_attn_mma_fwd(const attn_p &p, kvf_status *st);
bool kvf_cuda_attn_mma_bwd(const attn_p &p, kvf_status *st);

#endif
