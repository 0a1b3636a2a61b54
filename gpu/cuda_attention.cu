/* cuda_attention.cu — fused attention (FlashAttention-2 style), forward and backward, for
 * f32 and bf16 with f32 math.
 *
 * q [B, T, Hq, Dk], k [B, S, Hkv, Dk], v [B, S, Hkv, Dv] with any strides whose last one
 * is 1; query head h reads kv head h / (Hq / Hkv) (GQA / MQA); Dk != Dv allowed (MLA);
 * Dk, Dv <= 256. out [B, T, Hq, Dv] and the gradients are contiguous; lse [B, Hq, T] f32.
 * Masks as on the CPU: causal aligned to the end (query t at position t + S − T sees keys
 * s <= t + S − T), optional sliding window (s > p − window), or none.
 *
 * bf16 with common head dims runs on tensor cores (cuda_attention_mma.cu); these SIMT
 * kernels take everything else (f32, any Dk / Dv <= 256, unaligned views).
 *
 * Kernels: 256 threads as a 16×16 grid; a tile of BQ queries × BK keys gives each thread
 * (BQ/16)×(BK/16) scores, computed from transposed Q / K tiles in shared memory (vector
 * loads), and (rows)×(D/16) output columns in registers (D rounded up to 32/64/128/256,
 * a template parameter, so the accumulators stay in registers).
 *  - forward: one block per (query tile, head, batch); an online softmax over the key
 *    tiles the query tile can see; O and lse = m + log l written once at the end.
 *  - backward: Δ = rowsum(dO∘O) first; then dq: one block per (query tile, head, batch)
 *    recomputing P = exp(scale·q·k − lse) per key tile, dS = P∘(dO·vᵀ − Δ),
 *    dq += scale·dS·K; then dk/dv: one block per (key tile, kv head, batch) that walks the
 *    query heads of its group and the query tiles that see its keys in a fixed order,
 *    dv += Pᵀ·dO, dk += scale·dSᵀ·Q. Every gradient element is owned by one thread and
 *    summed in a fixed order: deterministic, no atomics. The dq pass finishes before the
 *    dk/dv pass starts (stream order), and a thread adds dk before dv to the same element,
 *    so gradients may share storage (q = k = v). */
#include <math.h>
#include <string.h>

#include "cuda_attention.h"
#include "cudnn_attention.h"

#define AT_THREADS 256
#define AT_PAD 4
#define AT_MAX_D 256

/* R consecutive floats from 16-byte (R = 4) / 8-byte (R = 2) aligned shared memory. */
template <int R>
__device__ __forceinline__ void lds(float (&r)[R], const float *p) {
    if constexpr (R == 4) {
        float4 v = *(const float4 *)p;
        r[0] = v.x, r[1] = v.y, r[2] = v.z, r[3] = v.w;
    } else if constexpr (R == 2) {
        float2 v = *(const float2 *)p;
        r[0] = v.x, r[1] = v.y;
    } else {
#pragma unroll
        for (int i = 0; i < R; i++) r[i] = p[i];
    }
}

/* Reductions over the 16 threads of a half warp that share a row (tx = lane & 15). */
__device__ __forceinline__ float hw_max(float v) {
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float hw_sum(float v) {
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* dst[d·ld + r] = src row (row0 + r), elements d < D, rows < nrows valid (else 0). Rows of
 * src are `rs` elements apart. */
template <class T>
__device__ __forceinline__ void load_t(float *dst, int ld, const T *src, int64_t rs, int64_t row0,
                                       int64_t nrows_valid, int rows, int64_t D) {
    const int n = rows * (int)D;
    for (int idx = threadIdx.x; idx < n; idx += AT_THREADS) {
        const int r = idx / (int)D, d = idx - r * (int)D;
        dst[d * ld + r] = r < nrows_valid ? kvf_ld(src + (row0 + r) * rs + d) : 0.0f;
    }
}

/* ---- forward ------------------------------------------------------------------------------------ */

template <class T, int BQ, int BK, int DV>
__global__ void __launch_bounds__(AT_THREADS, 1) k_attn_fwd(attn_p p, int nqt) {
    constexpr int RI = BQ / 16, RJ = BK / 16, CO = DV / 16;
    constexpr int LQ = BQ + AT_PAD, LK = BK + AT_PAD;
    extern __shared__ float4 at_smem4[];
    float *sm = (float *)at_smem4;
    const int64_t Dk = p.Dk, Dv = p.Dv;
    float *Qt = sm;                    /* [Dk][LQ] */
    float *Kt = Qt + Dk * LQ;          /* [Dk][LK] */
    float *Vs = Kt + Dk * LK;          /* [BK][DV], columns >= Dv zero */
    float *Pt = Vs + BK * DV;          /* [BK][LQ] */
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int qt = p.causal ? nqt - 1 - (int)blockIdx.x : (int)blockIdx.x; /* long rows first */
    const int64_t h = blockIdx.y, b = blockIdx.z, kvh = h / p.group;
    const int64_t t0 = (int64_t)qt * BQ, tn = p.T - t0 < BQ ? p.T - t0 : BQ;
    const T *Q = (const T *)p.q + b * p.q_b + h * p.q_h;
    const T *K = (const T *)p.k + b * p.k_b + kvh * p.k_h;
    const T *V = (const T *)p.v + b * p.v_b + kvh * p.v_h;
    load_t(Qt, LQ, Q, p.q_t, t0, tn, BQ, Dk);

    float o[RI][CO], m[RI], l[RI];
#pragma unroll
    for (int i = 0; i < RI; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < CO; c++) o[i][c] = 0.0f;
    }
    const int64_t k0 = at_row_lo(p, t0), k1 = at_row_hi(p, t0 + tn - 1);
    for (int64_t s0 = k0; s0 < k1; s0 += BK) {
        const int64_t kn = k1 - s0 < BK ? k1 - s0 : BK;
        __syncthreads(); /* the previous tile's P·V is done with Kt, Vs, Pt */
        load_t(Kt, LK, K, p.k_t, s0, kn, BK, Dk);
        for (int idx = threadIdx.x; idx < BK * DV; idx += AT_THREADS) {
            const int c = idx / DV, d = idx - c * DV;
            Vs[idx] = (c < kn && d < Dv) ? kvf_ld(V + (s0 + c) * p.v_t + d) : 0.0f;
        }
        __syncthreads();
        float sc[RI][RJ];
#pragma unroll
        for (int i = 0; i < RI; i++)
#pragma unroll
            for (int j = 0; j < RJ; j++) sc[i][j] = 0.0f;
        for (int64_t d = 0; d < Dk; d++) {
            float a[RI], bb[RJ];
            lds<RI>(a, Qt + d * LQ + ty * RI);
            lds<RJ>(bb, Kt + d * LK + tx * RJ);
#pragma unroll
            for (int i = 0; i < RI; i++)
#pragma unroll
                for (int j = 0; j < RJ; j++) sc[i][j] = fmaf(a[i], bb[j], sc[i][j]);
        }
#pragma unroll
        for (int i = 0; i < RI; i++) {
            const int64_t t = t0 + ty * RI + i;
            const int64_t lo = at_row_lo(p, t), hi = at_row_hi(p, t);
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < RJ; j++) {
                const int64_t s = s0 + tx * RJ + j;
                const bool ok = t < p.T && s < k1 && s >= lo && s < hi;
                sc[i][j] = ok ? sc[i][j] * p.scale : -INFINITY;
                mx = fmaxf(mx, sc[i][j]);
            }
            mx = hw_max(mx);
            const float mnew = fmaxf(m[i], mx);
            float alpha, rs = 0.0f;
            if (mnew == -INFINITY) { /* nothing visible yet */
                alpha = 1.0f;
#pragma unroll
                for (int j = 0; j < RJ; j++) sc[i][j] = 0.0f;
            } else {
                alpha = expf(m[i] - mnew); /* 0 when m was −inf */
#pragma unroll
                for (int j = 0; j < RJ; j++) {
                    sc[i][j] = expf(sc[i][j] - mnew);
                    rs += sc[i][j];
                }
            }
            rs = hw_sum(rs);
            l[i] = l[i] * alpha + rs;
            m[i] = mnew;
#pragma unroll
            for (int c = 0; c < CO; c++) o[i][c] *= alpha;
#pragma unroll
            for (int j = 0; j < RJ; j++) Pt[(tx * RJ + j) * LQ + ty * RI + i] = sc[i][j];
        }
        __syncthreads();
        for (int c = 0; c < kn; c++) {
            float pv[RI];
            lds<RI>(pv, Pt + c * LQ + ty * RI);
#pragma unroll
            for (int cc = 0; cc < CO; cc++) {
                const float vv = Vs[c * DV + tx + 16 * cc];
#pragma unroll
                for (int i = 0; i < RI; i++) o[i][cc] = fmaf(pv[i], vv, o[i][cc]);
            }
        }
    }
    T *O = (T *)p.o;
#pragma unroll
    for (int i = 0; i < RI; i++) {
        const int64_t t = t0 + ty * RI + i;
        if (t >= p.T) continue;
        const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
        T *orow = O + ((b * p.T + t) * p.Hq + h) * Dv;
#pragma unroll
        for (int cc = 0; cc < CO; cc++) {
            const int col = tx + 16 * cc;
            if (col < Dv) kvf_st(orow + col, o[i][cc] * inv);
        }
        if (tx == 0) p.lse[(b * p.Hq + h) * p.T + t] = l[i] > 0.0f ? m[i] + logf(l[i]) : -INFINITY;
    }
}

/* ---- backward: Δ ------------------------------------------------------------------------------- */

/* delta[b, h, t] = Σ_j dO·O over the row (b, t, h) of the contiguous [B, T, Hq, Dv] tensors;
 * a warp per row. */
template <class T>
__global__ void k_attn_delta(float *delta, const T *o, const T *dout, int64_t rows, int64_t T_,
                             int64_t Hq, int64_t Dv) {
    const int lane = threadIdx.x & 31;
    for (int64_t r = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5; r < rows;
         r += ((int64_t)gridDim.x * blockDim.x) >> 5) {
        float acc = 0.0f;
        for (int64_t j = lane; j < Dv; j += 32) acc += kvf_ld(dout + r * Dv + j) * kvf_ld(o + r * Dv + j);
        acc = kvf_warp_sum(acc);
        if (lane == 0) {
            const int64_t h = r % Hq, t = (r / Hq) % T_, b = r / (Hq * T_);
            delta[(b * Hq + h) * T_ + t] = acc;
        }
    }
}

/* ---- backward: dq ------------------------------------------------------------------------------ */

template <class T, int BQ, int BK, int DK>
__global__ void __launch_bounds__(AT_THREADS, 1) k_attn_dq(attn_p p, int nqt) {
    constexpr int RI = BQ / 16, RJ = BK / 16, CO = DK / 16;
    constexpr int LQ = BQ + AT_PAD, LK = BK + AT_PAD;
    extern __shared__ float4 at_smem4[];
    float *sm = (float *)at_smem4;
    const int64_t Dk = p.Dk, Dv = p.Dv;
    float *Qt = sm;                 /* [Dk][LQ] */
    float *dOt = Qt + Dk * LQ;      /* [Dv][LQ] */
    float *Kt = dOt + Dv * LQ;      /* [Dk][LK] */
    float *Vt = Kt + Dk * LK;       /* [Dv][LK] */
    float *dSt = Vt + Dv * LK;      /* [BK][LQ] */
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int qt = p.causal ? nqt - 1 - (int)blockIdx.x : (int)blockIdx.x;
    const int64_t h = blockIdx.y, b = blockIdx.z, kvh = h / p.group;
    const int64_t t0 = (int64_t)qt * BQ, tn = p.T - t0 < BQ ? p.T - t0 : BQ;
    const T *Q = (const T *)p.q + b * p.q_b + h * p.q_h;
    const T *K = (const T *)p.k + b * p.k_b + kvh * p.k_h;
    const T *V = (const T *)p.v + b * p.v_b + kvh * p.v_h;
    const T *dO = (const T *)p.dout + (b * p.T * p.Hq + h) * Dv;
    load_t(Qt, LQ, Q, p.q_t, t0, tn, BQ, Dk);
    load_t(dOt, LQ, dO, p.Hq * Dv, t0, tn, BQ, Dv);
    float lq[RI], dl[RI], acc[RI][CO];
#pragma unroll
    for (int i = 0; i < RI; i++) {
        const int64_t t = t0 + ty * RI + i;
        lq[i] = t < p.T ? p.lse_in[(b * p.Hq + h) * p.T + t] : -INFINITY;
        dl[i] = t < p.T ? p.delta[(b * p.Hq + h) * p.T + t] : 0.0f;
#pragma unroll
        for (int c = 0; c < CO; c++) acc[i][c] = 0.0f;
    }
    const int64_t k0 = at_row_lo(p, t0), k1 = at_row_hi(p, t0 + tn - 1);
    for (int64_t s0 = k0; s0 < k1; s0 += BK) {
        const int64_t kn = k1 - s0 < BK ? k1 - s0 : BK;
        __syncthreads();
        load_t(Kt, LK, K, p.k_t, s0, kn, BK, Dk);
        load_t(Vt, LK, V, p.v_t, s0, kn, BK, Dv);
        __syncthreads();
        float sc[RI][RJ], dp[RI][RJ];
#pragma unroll
        for (int i = 0; i < RI; i++)
#pragma unroll
            for (int j = 0; j < RJ; j++) sc[i][j] = dp[i][j] = 0.0f;
        for (int64_t d = 0; d < Dk; d++) {
            float a[RI], bb[RJ];
            lds<RI>(a, Qt + d * LQ + ty * RI);
            lds<RJ>(bb, Kt + d * LK + tx * RJ);
#pragma unroll
            for (int i = 0; i < RI; i++)
#pragma unroll
                for (int j = 0; j < RJ; j++) sc[i][j] = fmaf(a[i], bb[j], sc[i][j]);
        }
        for (int64_t d = 0; d < Dv; d++) {
            float a[RI], bb[RJ];
            lds<RI>(a, dOt + d * LQ + ty * RI);
            lds<RJ>(bb, Vt + d * LK + tx * RJ);
#pragma unroll
            for (int i = 0; i < RI; i++)
#pragma unroll
                for (int j = 0; j < RJ; j++) dp[i][j] = fmaf(a[i], bb[j], dp[i][j]);
        }
#pragma unroll
        for (int i = 0; i < RI; i++) {
            const int64_t t = t0 + ty * RI + i;
            const int64_t lo = at_row_lo(p, t), hi = at_row_hi(p, t);
#pragma unroll
            for (int j = 0; j < RJ; j++) {
                const int64_t s = s0 + tx * RJ + j;
                const bool ok = t < p.T && s < k1 && s >= lo && s < hi && lq[i] != -INFINITY;
                const float pr = ok ? expf(sc[i][j] * p.scale - lq[i]) : 0.0f;
                dSt[(tx * RJ + j) * LQ + ty * RI + i] = pr * (dp[i][j] - dl[i]);
            }
        }
        __syncthreads();
        for (int c = 0; c < kn; c++) {
            float dsv[RI];
            lds<RI>(dsv, dSt + c * LQ + ty * RI);
#pragma unroll
            for (int cc = 0; cc < CO; cc++) {
                const int col = tx + 16 * cc;
                const float kv = col < Dk ? Kt[col * LK + c] : 0.0f;
#pragma unroll
                for (int i = 0; i < RI; i++) acc[i][cc] = fmaf(dsv[i], kv, acc[i][cc]);
            }
        }
    }
    T *dQ = (T *)p.dq;
#pragma unroll
    for (int i = 0; i < RI; i++) {
        const int64_t t = t0 + ty * RI + i;
        if (t >= p.T) continue;
        T *row = dQ + ((b * p.T + t) * p.Hq + h) * Dk;
#pragma unroll
        for (int cc = 0; cc < CO; cc++) {
            const int col = tx + 16 * cc;
            if (col < Dk) kvf_st(row + col, kvf_ld(row + col) + p.scale * acc[i][cc]);
        }
    }
}

/* ---- backward: dk, dv ---------------------------------------------------------------------------- */

template <class T, int BQ, int BK, int DM>
__global__ void __launch_bounds__(AT_THREADS, 1) k_attn_dkdv(attn_p p) {
    constexpr int RI = BK / 16, RJ = BQ / 16, CO = DM / 16;
    constexpr int LQ = BQ + AT_PAD, LK = BK + AT_PAD;
    extern __shared__ float4 at_smem4[];
    float *sm = (float *)at_smem4;
    const int64_t Dk = p.Dk, Dv = p.Dv;
    float *Kt = sm;                 /* [Dk][LK] */
    float *Vt = Kt + Dk * LK;       /* [Dv][LK] */
    float *Qt = Vt + Dv * LK;       /* [Dk][LQ] */
    float *dOt = Qt + Dk * LQ;      /* [Dv][LQ] */
    float *Ps = dOt + Dv * LQ;      /* [BQ][LK] */
    float *dSs = Ps + BQ * LK;      /* [BQ][LK] */
    float *ls = dSs + BQ * LK;      /* [BQ] */
    float *dls = ls + BQ;           /* [BQ] */
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int64_t kvh = blockIdx.y, b = blockIdx.z;
    const int64_t s0 = (int64_t)blockIdx.x * BK, sn = p.S - s0 < BK ? p.S - s0 : BK;
    const T *K = (const T *)p.k + b * p.k_b + kvh * p.k_h;
    const T *V = (const T *)p.v + b * p.v_b + kvh * p.v_h;
    load_t(Kt, LK, K, p.k_t, s0, sn, BK, Dk);
    load_t(Vt, LK, V, p.v_t, s0, sn, BK, Dv);
    float ak[RI][CO], av[RI][CO];
#pragma unroll
    for (int i = 0; i < RI; i++)
#pragma unroll
        for (int c = 0; c < CO; c++) ak[i][c] = av[i][c] = 0.0f;
    const int64_t qlo = at_query_lo(p, s0), qhi = at_query_hi(p, s0 + sn);
    for (int64_t g = 0; g < p.group; g++) {
        const int64_t h = kvh * p.group + g;
        const T *Q = (const T *)p.q + b * p.q_b + h * p.q_h;
        const T *dO = (const T *)p.dout + (b * p.T * p.Hq + h) * Dv;
        const float *L = p.lse_in + (b * p.Hq + h) * p.T, *Dl = p.delta + (b * p.Hq + h) * p.T;
        for (int64_t t0 = qlo; t0 < qhi; t0 += BQ) {
            const int64_t tn = qhi - t0 < BQ ? qhi - t0 : BQ;
            __syncthreads();
            load_t(Qt, LQ, Q, p.q_t, t0, tn, BQ, Dk);
            load_t(dOt, LQ, dO, p.Hq * Dv, t0, tn, BQ, Dv);
            for (int r = threadIdx.x; r < BQ; r += AT_THREADS) {
                ls[r] = r < tn ? L[t0 + r] : -INFINITY;
                dls[r] = r < tn ? Dl[t0 + r] : 0.0f;
            }
            __syncthreads();
            float st[RI][RJ], dpt[RI][RJ];
#pragma unroll
            for (int i = 0; i < RI; i++)
#pragma unroll
                for (int j = 0; j < RJ; j++) st[i][j] = dpt[i][j] = 0.0f;
            for (int64_t d = 0; d < Dk; d++) {
                float a[RI], bb[RJ];
                lds<RI>(a, Kt + d * LK + ty * RI);
                lds<RJ>(bb, Qt + d * LQ + tx * RJ);
#pragma unroll
                for (int i = 0; i < RI; i++)
#pragma unroll
                    for (int j = 0; j < RJ; j++) st[i][j] = fmaf(a[i], bb[j], st[i][j]);
            }
            for (int64_t d = 0; d < Dv; d++) {
                float a[RI], bb[RJ];
                lds<RI>(a, Vt + d * LK + ty * RI);
                lds<RJ>(bb, dOt + d * LQ + tx * RJ);
#pragma unroll
                for (int i = 0; i < RI; i++)
#pragma unroll
                    for (int j = 0; j < RJ; j++) dpt[i][j] = fmaf(a[i], bb[j], dpt[i][j]);
            }
#pragma unroll
            for (int j = 0; j < RJ; j++) {
                const int q = tx * RJ + j;
                const int64_t t = t0 + q;
                const int64_t lo = at_row_lo(p, t), hi = at_row_hi(p, t);
                const float lt = ls[q], dt = dls[q];
#pragma unroll
                for (int i = 0; i < RI; i++) {
                    const int64_t s = s0 + ty * RI + i;
                    const bool ok = q < tn && s < p.S && s >= lo && s < hi && lt != -INFINITY;
                    const float pr = ok ? expf(st[i][j] * p.scale - lt) : 0.0f;
                    Ps[q * LK + ty * RI + i] = pr;
                    dSs[q * LK + ty * RI + i] = pr * (dpt[i][j] - dt);
                }
            }
            __syncthreads();
            for (int q = 0; q < tn; q++) {
                float pv[RI], dsv[RI];
                lds<RI>(pv, Ps + q * LK + ty * RI);
                lds<RI>(dsv, dSs + q * LK + ty * RI);
#pragma unroll
                for (int cc = 0; cc < CO; cc++) {
                    const int col = tx + 16 * cc;
                    const float dov = col < Dv ? dOt[col * LQ + q] : 0.0f;
                    const float qv = col < Dk ? Qt[col * LQ + q] : 0.0f;
#pragma unroll
                    for (int i = 0; i < RI; i++) {
                        av[i][cc] = fmaf(pv[i], dov, av[i][cc]);
                        ak[i][cc] = fmaf(dsv[i], qv, ak[i][cc]);
                    }
                }
            }
        }
    }
    T *dK = (T *)p.dk, *dV = (T *)p.dv;
#pragma unroll
    for (int i = 0; i < RI; i++) {
        const int64_t s = s0 + ty * RI + i;
        if (s >= p.S) continue;
        if (dK) {
            T *row = dK + ((b * p.S + s) * p.Hkv + kvh) * Dk;
#pragma unroll
            for (int cc = 0; cc < CO; cc++) {
                const int col = tx + 16 * cc;
                if (col < Dk) kvf_st(row + col, kvf_ld(row + col) + p.scale * ak[i][cc]);
            }
        }
        if (dV) { /* after dk: the same thread owns the element if dk and dv share storage */
            T *row = dV + ((b * p.S + s) * p.Hkv + kvh) * Dv;
#pragma unroll
            for (int cc = 0; cc < CO; cc++) {
                const int col = tx + 16 * cc;
                if (col < Dv) kvf_st(row + col, kvf_ld(row + col) + av[i][cc]);
            }
        }
    }
}

/* ---- host side ----------------------------------------------------------------------------------- */

static int d_bucket(int64_t d) { return d <= 32 ? 32 : d <= 64 ? 64 : d <= 128 ? 128 : 256; }

static kvf_status attn_setup(attn_p *p, const kvf_tensor *q, const kvf_tensor *k,
                             const kvf_tensor *v, const kvf_attn_cfg *cfg, const char *what) {
    memset(p, 0, sizeof *p);
    if (q->ndim != 4 || k->ndim != 4 || v->ndim != 4)
        return kvf_error_set(KVF_ERR_SHAPE, "%s: q %s, k %s, v %s must be 4-D", what,
                             KVF_CDESC(q), KVF_CDESC(k), KVF_CDESC(v));
    p->B = q->shape[0];
    p->T = q->shape[1];
    p->Hq = q->shape[2];
    p->Dk = q->shape[3];
    p->S = k->shape[1];
    p->Hkv = k->shape[2];
    p->Dv = v->shape[3];
    if (p->Hkv <= 0 || p->Hq % p->Hkv || p->Dk <= 0 || p->Dv <= 0 || k->shape[3] != p->Dk)
        return kvf_error_set(KVF_ERR_SHAPE, "%s: q %s, k %s, v %s do not fit", what, KVF_CDESC(q),
                             KVF_CDESC(k), KVF_CDESC(v));
    if (p->Dk > AT_MAX_D || p->Dv > AT_MAX_D)
        return kvf_error_set(KVF_ERR_UNSUPPORTED, "%s: q %s, v %s: the CUDA attention kernel "
                             "takes head dims up to %d", what, KVF_CDESC(q), KVF_CDESC(v), AT_MAX_D);
    if (q->dtype != k->dtype || q->dtype != v->dtype)
        return kvf_error_set(KVF_ERR_DTYPE, "%s: q %s, k %s, v %s must share a dtype", what,
                             KVF_CDESC(q), KVF_CDESC(k), KVF_CDESC(v));
    if ((q->shape[3] > 1 && q->stride[3] != 1) || (k->shape[3] > 1 && k->stride[3] != 1) ||
        (v->shape[3] > 1 && v->stride[3] != 1))
        return kvf_error_set(KVF_ERR_ARG, "%s: q, k, v need a dense last dim", what);
    if (p->B > 65535 || p->Hq > 65535 || p->T > (int64_t)INT32_MAX * 16)
        return kvf_error_set(KVF_ERR_SHAPE, "%s: q %s exceeds the kernel's grid", what, KVF_CDESC(q));
    p->group = p->Hq / p->Hkv;
    p->off = p->S - p->T;
    p->causal = cfg->causal;
    p->window = cfg->causal && cfg->window > 0 ? cfg->window : 0;
    p->scale = cfg->scale;
    p->q = kvf_tensor_data(q);
    p->k = kvf_tensor_data(k);
    p->v = kvf_tensor_data(v);
    p->q_b = q->stride[0], p->q_t = q->stride[1], p->q_h = q->stride[2];
    p->k_b = k->stride[0], p->k_t = k->stride[1], p->k_h = k->stride[2];
    p->v_b = v->stride[0], p->v_t = v->stride[1], p->v_h = v->stride[2];
    return KVF_OK;
}

/* Raise a kernel's dynamic shared memory limit (once per kernel and size). */
template <class K>
static kvf_status smem_attr(K kernel, size_t bytes, size_t *done, const char *what) {
    if (bytes > kvf_cuda_dev()->smem_optin)
        return kvf_error_set(KVF_ERR_UNSUPPORTED, "%s: needs %zu bytes of shared memory per "
                             "block, the GPU allows %zu", what, bytes, kvf_cuda_dev()->smem_optin);
    if (bytes > *done) {
        KVF_CU(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes),
               "%s: %zu bytes of shared memory", what, bytes);
        *done = bytes;
    }
    return KVF_OK;
}

template <class T, int DV>
static kvf_status fwd_launch(const attn_p &p) {
    constexpr int BQ = 64, BK = 64;
    static size_t done = 0;
    const size_t smem = sizeof(float) * (size_t)(p.Dk * (BQ + AT_PAD) + p.Dk * (BK + AT_PAD) +
                                                 BK * DV + BK * (BQ + AT_PAD));
    KVF_TRY(smem_attr(k_attn_fwd<T, BQ, BK, DV>, smem, &done, "attention"));
    const int nqt = (int)((p.T + BQ - 1) / BQ);
    k_attn_fwd<T, BQ, BK, DV><<<dim3(nqt, (unsigned)p.Hq, (unsigned)p.B), AT_THREADS, smem, KVF_STREAM>>>(p, nqt);
    KVF_LAUNCH("attn_fwd", "attention B %lld T %lld S %lld Hq %lld Hkv %lld Dk %lld Dv %lld",
               (long long)p.B, (long long)p.T, (long long)p.S, (long long)p.Hq, (long long)p.Hkv,
               (long long)p.Dk, (long long)p.Dv);
    return KVF_OK;
}

/* bf16: cuDNN's fused attention where it loads and takes the shape (cudnn_attention.h),
 * else the tensor-core kernels where they apply (cuda_attention_mma.cu). */
static kvf_cudnn_attn cudnn_args(const attn_p &p) {
    kvf_cudnn_attn a;
    memset(&a, 0, sizeof a);
    a.B = p.B, a.T = p.T, a.S = p.S, a.Hq = p.Hq, a.Hkv = p.Hkv, a.Dk = p.Dk, a.Dv = p.Dv;
    a.q_b = p.q_b, a.q_t = p.q_t, a.q_h = p.q_h, a.k_b = p.k_b, a.k_t = p.k_t, a.k_h = p.k_h;
    a.v_b = p.v_b, a.v_t = p.v_t, a.v_h = p.v_h;
    a.causal = p.causal, a.window = p.window, a.scale = p.scale;
    a.q = p.q, a.k = p.k, a.v = p.v;
    return a;
}

template <class T>
static bool fast_fwd(const attn_p &, kvf_status *) { return false; }
template <>
bool fast_fwd<__nv_bfloat16>(const attn_p &p, kvf_status *st) {
    kvf_cudnn_attn a = cudnn_args(p);
    a.o = p.o, a.lse = p.lse;
    return kvf_cudnn_attn_fwd(&a, st) || kvf_cuda_attn_mma_fwd(p, st);
}
template <class T>
static bool cudnn_bwd(const attn_p &, const void *, kvf_status *) { return false; }
template <>
bool cudnn_bwd<__nv_bfloat16>(const attn_p &p, const void *o, kvf_status *st) {
    kvf_cudnn_attn a = cudnn_args(p);
    a.o_in = o, a.dout = p.dout, a.lse_in = p.lse_in;
    a.dq = p.dq, a.dk = p.dk, a.dv = p.dv;
    return kvf_cudnn_attn_bwd(&a, st);
}
template <class T>
static bool mma_bwd(const attn_p &, kvf_status *) { return false; }
template <>
bool mma_bwd<__nv_bfloat16>(const attn_p &p, kvf_status *st) { return kvf_cuda_attn_mma_bwd(p, st); }

template <class T>
static kvf_status attention_t(kvf_tensor *out, kvf_tensor *lse, const kvf_tensor *q,
                              const kvf_tensor *k, const kvf_tensor *v, const kvf_attn_cfg *cfg) {
    attn_p p;
    KVF_TRY(attn_setup(&p, q, k, v, cfg, "attention"));
    if (p.B * p.T * p.Hq == 0) return KVF_OK;
    p.o = kvf_tensor_data(out);
    p.lse = (float *)kvf_tensor_data(lse);
    kvf_status st;
    if (fast_fwd<T>(p, &st)) return st;
    switch (d_bucket(p.Dv)) {
    case 32: return fwd_launch<T, 32>(p);
    case 64: return fwd_launch<T, 64>(p);
    case 128: return fwd_launch<T, 128>(p);
    default: return fwd_launch<T, 256>(p);
    }
}

kvf_status kvf_cuda_attention(kvf_tensor *out, kvf_tensor *lse, const kvf_tensor *q,
                              const kvf_tensor *k, const kvf_tensor *v, const kvf_attn_cfg *cfg) {
    if (lse->dtype != KVF_DTYPE_F32 || out->dtype != q->dtype || !kvf_tensor_is_contiguous(out))
        return kvf_error_set(KVF_ERR_DTYPE, "attention: out %s must be contiguous in q's dtype "
                             "and lse %s f32", KVF_CDESC(out), KVF_CDESC(lse));
    KVF_CUDA_DISPATCH("attention", q->dtype, attention_t, out, lse, q, k, v, cfg);
}

template <class T, int DK, int BQ, int BK>
static kvf_status dq_launch(const attn_p &p) {
    static size_t done = 0;
    const size_t smem = sizeof(float) * (size_t)((p.Dk + p.Dv) * (BQ + AT_PAD) +
                                                 (p.Dk + p.Dv) * (BK + AT_PAD) + BK * (BQ + AT_PAD));
    KVF_TRY(smem_attr(k_attn_dq<T, BQ, BK, DK>, smem, &done, "attention_backward dq"));
    const int nqt = (int)((p.T + BQ - 1) / BQ);
    k_attn_dq<T, BQ, BK, DK><<<dim3(nqt, (unsigned)p.Hq, (unsigned)p.B), AT_THREADS, smem, KVF_STREAM>>>(p, nqt);
    KVF_LAUNCH("attn_dq", "attention_backward B %lld T %lld S %lld Hq %lld Hkv %lld Dk %lld Dv %lld",
               (long long)p.B, (long long)p.T, (long long)p.S, (long long)p.Hq, (long long)p.Hkv,
               (long long)p.Dk, (long long)p.Dv);
    return KVF_OK;
}

template <class T, int DM, int BQ, int BK>
static kvf_status dkdv_launch(const attn_p &p) {
    static size_t done = 0;
    const size_t smem = sizeof(float) * (size_t)((p.Dk + p.Dv) * (BK + AT_PAD) +
                                                 (p.Dk + p.Dv) * (BQ + AT_PAD) +
                                                 2 * BQ * (BK + AT_PAD) + 2 * BQ);
    KVF_TRY(smem_attr(k_attn_dkdv<T, BQ, BK, DM>, smem, &done, "attention_backward dk/dv"));
    const int64_t nkt = (p.S + BK - 1) / BK;
    if (nkt > INT32_MAX || p.Hkv > 65535)
        return kvf_error_set(KVF_ERR_SHAPE, "attention_backward: S %lld exceeds the kernel's grid",
                             (long long)p.S);
    k_attn_dkdv<T, BQ, BK, DM><<<dim3((unsigned)nkt, (unsigned)p.Hkv, (unsigned)p.B), AT_THREADS, smem,
                                 KVF_STREAM>>>(p);
    KVF_LAUNCH("attn_dkdv", "attention_backward B %lld T %lld S %lld Hq %lld Hkv %lld Dk %lld Dv %lld",
               (long long)p.B, (long long)p.T, (long long)p.S, (long long)p.Hq, (long long)p.Hkv,
               (long long)p.Dk, (long long)p.Dv);
    return KVF_OK;
}

template <class T>
static kvf_status attention_bw_t(kvf_tensor *dq, kvf_tensor *dk, kvf_tensor *dv,
                                 const kvf_tensor *q, const kvf_tensor *k, const kvf_tensor *v,
                                 const kvf_tensor *out, const kvf_tensor *lse,
                                 const kvf_tensor *dout, const kvf_attn_cfg *cfg) {
    attn_p p;
    KVF_TRY(attn_setup(&p, q, k, v, cfg, "attention_backward"));
    if (!dq && !dk && !dv) return KVF_OK;
    p.dout = kvf_tensor_data(dout);
    p.lse_in = (const float *)kvf_tensor_data(lse);
    p.dq = dq ? kvf_tensor_data(dq) : NULL;
    p.dk = dk ? kvf_tensor_data(dk) : NULL;
    p.dv = dv ? kvf_tensor_data(dv) : NULL;
    kvf_status st;
    if (p.B * p.T * p.Hq > 0 && cudnn_bwd<T>(p, kvf_tensor_data(out), &st)) return st;
    /* the kernels below add into dq/dk/dv; the contract is to overwrite them */
    const kvf_tensor *d[3] = {dq, dk, dv};
    for (int i = 0; i < 3; i++)
        if (d[i]) KVF_CU(cudaMemsetAsync(kvf_tensor_data(d[i]), 0, (size_t)kvf_tensor_numel(d[i]) * sizeof(T), KVF_STREAM),
                         "attention_backward: zeroing %s", KVF_CDESC(d[i]));
    if (p.B * p.T * p.Hq == 0) return KVF_OK;
    const int64_t rows = p.B * p.T * p.Hq;
    float *delta = (float *)kvf_cuda_scratch(sizeof(float) * (size_t)rows, "attention_backward");
    if (!delta) return kvf_error_code();
    k_attn_delta<T><<<kvf_cuda_blocks(rows * 32, 256), 256, 0, KVF_STREAM>>>(
        delta, (const T *)kvf_tensor_data(out), (const T *)kvf_tensor_data(dout), rows, p.T, p.Hq, p.Dv);
    KVF_LAUNCH("attn_delta", "attention_backward %s", KVF_CDESC(out));
    p.delta = delta;
    if (mma_bwd<T>(p, &st)) return st;
    if (dq) {
        switch (d_bucket(p.Dk)) {
        case 32: KVF_TRY((dq_launch<T, 32, 64, 64>(p))); break;
        case 64: KVF_TRY((dq_launch<T, 64, 64, 64>(p))); break;
        case 128: KVF_TRY((dq_launch<T, 128, 64, 64>(p))); break;
        default: KVF_TRY((dq_launch<T, 256, 32, 32>(p))); break;
        }
    }
    if (dk || dv) {
        switch (d_bucket(p.Dk > p.Dv ? p.Dk : p.Dv)) {
        case 32: KVF_TRY((dkdv_launch<T, 32, 64, 64>(p))); break;
        case 64: KVF_TRY((dkdv_launch<T, 64, 64, 64>(p))); break;
        case 128: KVF_TRY((dkdv_launch<T, 128, 64, 64>(p))); break;
        default: KVF_TRY((dkdv_launch<T, 256, 32, 32>(p))); break;
        }
    }
    return KVF_OK;
}

kvf_status kvf_cuda_attention_backward(kvf_tensor *dq, kvf_tensor *dk, kvf_tensor *dv,
                                       const kvf_tensor *q, const kvf_tensor *k,
                                       const kvf_tensor *v, const kvf_tensor *out,
                                       const kvf_tensor *lse, const kvf_tensor *dout,
                                       const kvf_attn_cfg *cfg) {
    if (lse->dtype != KVF_DTYPE_F32 || out->dtype != q->dtype || dout->dtype != q->dtype ||
        !kvf_tensor_is_contiguous(out) || !kvf_tensor_is_contiguous(dout) ||
        (dq && (dq->dtype != q->dtype || !kvf_tensor_is_contiguous(dq))) ||
        (dk && (dk->dtype != q->dtype || !kvf_tensor_is_contiguous(dk))) ||
        (dv && (dv->dtype != q->dtype || !kvf_tensor_is_contiguous(dv))))
        return kvf_error_set(KVF_ERR_DTYPE, "attention_backward: out %s, dout %s and the "
                             "gradients must be contiguous in q's dtype %s, lse %s f32",
                             KVF_CDESC(out), KVF_CDESC(dout), KVF_CDESC(q), KVF_CDESC(lse));
    KVF_CUDA_DISPATCH("attention_backward", q->dtype, attention_bw_t, dq, dk, dv, q, k, v, out,
                      lse, dout, cfg);
}
