/* cpu_attention.c — fused attention for f32 and f64 (body in cpu_attention.inc).
 *
 * q [B, T, Hq, Dk], k [B, S, Hkv, Dk], v [B, S, Hkv, Dv], each with any strides as long as
 * the last dim is dense (stride 1) and rows do not overlap (row stride >= D); query head h
 * reads kv head h / (Hq / Hkv). out [B, T, Hq, Dv] and the gradients are contiguous.
 * lse [B, Hq, T] is in the element type of q (f32 for f32, f64 for f64 runs) and holds
 * −inf (with an output row of 0) for a query that sees no key.
 *
 * Forward: one task per (b, query head, block of ATTN_BQ queries) running an online
 * softmax over chunks of ATTN_KC keys, only over the keys the block can see (causal and
 * window bounds), with Q·Kᵀ and P·V as single-threaded BLAS calls inside the OpenMP region
 * (the OpenMP build of OpenBLAS does not nest threads) and a per-thread scratch buffer.
 * f32 exponentials use attn_expf (vectorized, within 1.5 ulp of exp); f64 uses libm.
 *
 * Backward recomputes P = exp(scale·q·k − lse): Δ = rowsum(dO∘O); dS = P∘(dO·Vᵀ − Δ);
 * dq += scale·dS·K, dk += scale·dSᵀ·Q, dv += Pᵀ·dO. Without atomics: dq is computed by
 * tasks over (b, query head, query block), dk/dv by tasks over (b, kv head, key block)
 * that walk the kv head's query heads and query blocks in a fixed order, so every
 * gradient element is summed in the same order whatever the thread count. */
/* The exp loops only vectorize when GCC may assume FP operations do not trap (it moves
 * parts of attn_expf under branches otherwise); kvforge never reads FP exception flags, and
 * the values computed are the same. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_impl.h"

#define ATTN_BQ 64  /* queries per block */
#define ATTN_KC 256 /* keys per chunk (forward, dq) */
#define ATTN_BK 64  /* keys per dk/dv task */

struct attn_dims {
    int64_t B, Tq, Sk, Hq, Hkv, Dk, Dv, group;
    int64_t off;    /* S − T: absolute position of query t is t + off */
    int64_t window; /* 0: none (always 0 when not causal) */
    bool causal;
    double scale;
    int64_t q_b, q_t, q_h, k_b, k_t, k_h, v_b, v_t, v_h; /* batch, row, head strides */
};

/* Row stride as BLAS needs it (>= the row length, even for a single row). */
static int64_t row_stride(const kvf_tensor *t) {
    return t->shape[1] > 1 ? t->stride[1] : t->shape[3];
}

static kvf_status attn_dims_of(struct attn_dims *d, const kvf_tensor *q, const kvf_tensor *k,
                               const kvf_tensor *v, const kvf_attn_cfg *cfg, const char *what) {
    d->B = q->shape[0];
    d->Tq = q->shape[1];
    d->Hq = q->shape[2];
    d->Dk = q->shape[3];
    d->Sk = k->shape[1];
    d->Hkv = k->shape[2];
    d->Dv = v->shape[3];
    KVF_CHECK(d->Hkv > 0 && d->Hq % d->Hkv == 0 && d->Dk > 0 && d->Dv > 0, KVF_ERR_SHAPE,
              "%s: q %s, k %s, v %s do not fit", what, KVF_DESC(q), KVF_DESC(k), KVF_DESC(v));
    d->group = d->Hq / d->Hkv;
    d->off = d->Sk - d->Tq;
    d->causal = cfg->causal;
    d->window = cfg->causal && cfg->window > 0 ? cfg->window : 0;
    d->scale = cfg->scale;
    d->q_b = q->stride[0], d->q_t = row_stride(q), d->q_h = q->stride[2];
    d->k_b = k->stride[0], d->k_t = row_stride(k), d->k_h = k->stride[2];
    d->v_b = v->stride[0], d->v_t = row_stride(v), d->v_h = v->stride[2];
    const int64_t lim = INT_MAX;
    KVF_CHECK(d->q_t <= lim && d->k_t <= lim && d->v_t <= lim && d->Hq * d->Dk <= lim &&
                  d->Hq * d->Dv <= lim && d->Sk <= lim,
              KVF_ERR_SHAPE, "%s: q %s, k %s, v %s exceed BLAS's 32-bit sizes", what,
              KVF_DESC(q), KVF_DESC(k), KVF_DESC(v));
    return KVF_OK;
}

/* Keys [lo, hi) visible to query t. */
static inline int64_t attn_row_lo(const struct attn_dims *d, int64_t t) {
    if (!d->window) return 0;
    int64_t lo = t + d->off - d->window + 1;
    return lo > 0 ? lo : 0;
}
static inline int64_t attn_row_hi(const struct attn_dims *d, int64_t t) {
    if (!d->causal) return d->Sk;
    int64_t hi = t + d->off + 1;
    return hi < d->Sk ? (hi > 0 ? hi : 0) : d->Sk;
}
/* Queries [lo, hi) that see at least one key of [s0, s1). */
static inline int64_t attn_query_lo(const struct attn_dims *d, int64_t s0) {
    if (!d->causal) return 0;
    int64_t lo = s0 - d->off;
    return lo > 0 ? (lo < d->Tq ? lo : d->Tq) : 0;
}
static inline int64_t attn_query_hi(const struct attn_dims *d, int64_t s1) {
    if (!d->window) return d->Tq;
    int64_t hi = s1 - 1 - d->off + d->window;
    return hi < d->Tq ? (hi > 0 ? hi : 0) : d->Tq;
}

/* Threads only where there is work for them (an upper bound on the multiply-adds). */
static bool attn_parallel(const struct attn_dims *d, int64_t ntask) {
    return ntask > 1 && d->B * d->Hq * d->Tq * d->Sk * (d->Dk + d->Dv) >= 64 * KVF_CPU_PAR_MIN;
}

/* exp for f32 scores (always <= ~0 here) in plain arithmetic the compiler vectorizes,
 * unlike libm's expf: Cephes' expf (reduction by ln 2 with n rounded by the 1.5·2^23
 * trick, degree-6 polynomial, 2^n built from bits). Within 1.5 ulp of exp on
 * [-87.3, 88]; 0 below ln(FLT_MIN) (so −inf gives 0); NaN stays NaN. The f64 kernels use
 * libm's exp. */
static inline float attn_expf(float x) {
    const float lo = -87.33654f, hi = 88.0f;
    const float xc = isless(x, lo) ? lo : (isgreater(x, hi) ? hi : x);
    const float t = xc * 1.44269504088896341f + 12582912.0f; /* 1.5·2^23 + round(x/ln 2) */
    const float n = t - 12582912.0f;
    float r = xc - n * 0.693359375f; /* ln 2 in two parts */
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * (r * r) + r + 1.0f;
    uint32_t tb;
    memcpy(&tb, &t, sizeof tb);
    const uint32_t e = isless(x, lo) ? 0u : (tb - 0x4B400000u + 127u) << 23; /* 2^n, or 0 */
    float s;
    memcpy(&s, &e, sizeof s);
    return p * s + (xc - xc); /* xc − xc: 0, or NaN for a NaN x */
}

#define T float
#define SFX(name) name##_f32
#define GEMM cblas_sgemm
#define EXP attn_expf
#include "cpu_attention.inc"
#undef T
#undef SFX
#undef GEMM
#undef EXP

#define T double
#define SFX(name) name##_f64
#define GEMM cblas_dgemm
#define EXP exp
#include "cpu_attention.inc"
#undef T
#undef SFX
#undef GEMM
#undef EXP

kvf_status kvf_cpu_attention(kvf_tensor *out, kvf_tensor *lse, const kvf_tensor *q,
                             const kvf_tensor *k, const kvf_tensor *v, const kvf_attn_cfg *cfg) {
    KVF_CHECK(lse->dtype == q->dtype, KVF_ERR_DTYPE,
              "attention: the CPU kernel keeps lse in q's dtype: q %s, lse %s", KVF_DESC(q),
              KVF_DESC(lse));
    KVF_CPU_DISPATCH("attention", q->dtype, attention, out, lse, q, k, v, cfg);
}

kvf_status kvf_cpu_attention_backward(kvf_tensor *dq, kvf_tensor *dk, kvf_tensor *dv,
                                      const kvf_tensor *q, const kvf_tensor *k,
                                      const kvf_tensor *v, const kvf_tensor *out,
                                      const kvf_tensor *lse, const kvf_tensor *dout,
                                      const kvf_attn_cfg *cfg) {
    KVF_CHECK(lse->dtype == q->dtype, KVF_ERR_DTYPE,
              "attention_backward: the CPU kernel keeps lse in q's dtype: q %s, lse %s",
              KVF_DESC(q), KVF_DESC(lse));
    /* the kernel below adds into its outputs; the contract is to overwrite them */
    kvf_tensor *d[3] = {dq, dk, dv};
    for (int i = 0; i < 3; i++)
        if (d[i]) memset(kvf_tensor_data(d[i]), 0, (size_t)kvf_tensor_numel(d[i]) * kvf_dtype_size(d[i]->dtype));
    KVF_CPU_DISPATCH("attention_backward", q->dtype, attention_backward, dq, dk, dv, q, k, v,
                     out, lse, dout, cfg);
}
