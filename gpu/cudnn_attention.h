/* cudnn_attention.h — cuDNN's fused attention (cudnn-frontend SDPA graphs) for the CUDA
 * backend: bf16 q/k/v in the [B, T, H, D] layout with any head/row strides, GQA/MQA
 * (Hq a multiple of Hkv), Dk ≠ Dv, causal masks aligned bottom-right (query t sees keys
 * up to t + S − T) and sliding windows. libcudnn.so.9 is loaded at run time: without it,
 * with KVF_CUDNN=0 in the environment, or for shapes cuDNN's engines refuse, the calls
 * return 0 and cuda_attention.cu runs its own kernels. Graphs are built once per shape
 * and kept. Plain C interface: the frontend is C++ and stays inside cudnn_attention.cpp. */
#ifndef KVF_CUDNN_ATTENTION_H
#define KVF_CUDNN_ATTENTION_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "autograd/error.h"

struct kvf_cudnn_attn {
    int64_t B, T, S, Hq, Hkv, Dk, Dv;
    int64_t q_b, q_t, q_h, k_b, k_t, k_h, v_b, v_t, v_h; /* element strides; last dim dense */
    int causal;
    int64_t window; /* 0: none; else keys (t + S − T − window, t + S − T] */
    float scale;
    const void *q, *k, *v;
    void *o;    /* forward: [B, T, Hq, Dv] contiguous */
    float *lse; /* forward: [B, Hq, T] natural-log log-sum-exp of the scaled scores */
    const void *o_in, *dout; /* backward: the forward's out and its gradient, contiguous */
    const float *lse_in;
    void *dq, *dk, *dv; /* backward: contiguous, overwritten */
};

/* 1 when cuDNN ran the op (its status in *st: KVF_OK, or an error naming the call and the
 * shapes), 0 when cuDNN does not apply and nothing was done. */
int kvf_cudnn_attn_fwd(const struct kvf_cudnn_attn *a, kvf_status *st);
int kvf_cudnn_attn_bwd(const struct kvf_cudnn_attn *a, kvf_status *st);

/* The cap on the backward's workspace in bytes (KVF_CUDNN_WS_CAP, default 256 MiB), above
 * which the batch runs in chunks; returns the previous cap. The batch elements per call of
 * the last backward (tests). */
int64_t kvf_cudnn_set_ws_cap(int64_t bytes);
int64_t kvf_cudnn_last_bwd_chunk(void);

/* Whether cuDNN is loaded and allowed (loads it on the first call); its version (e.g.
 * 91900) in *version when non-NULL. */
int kvf_cudnn_available(int *version);

/* Turns the cuDNN path on or off for this process (tests compare both paths); returns the
 * previous setting. */
int kvf_cudnn_enable(int on);

#ifdef __cplusplus
}
#endif

#endif
