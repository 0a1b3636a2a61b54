/* cuda_attention_mma.cu — bf16 attention on tensor cores (mma.sync.m16n8k16, f32
 * accumulators), FlashAttention-2 style, for the head dims most models use:
 * (Dk, Dv) in {(32, 32), (64, 64), (96, 64), (128, 128), (192, 128)}. Other shapes, f32, and
 * q/k/v whose rows are not 16-byte aligned take the SIMT kernels of cuda_attention.cu.
 * KVF_CUDA_ATTN_SIMT=1 in the environment forces the SIMT kernels (for comparisons).
 *
 * Blocks of 4 warps; a warp owns 16 rows of the block's 64 (queries in the forward and dq
 * kernels, keys in the dk/dv kernel). The streamed tiles (K/V, or Q/dO for dk/dv) are
 * double-buffered with cp.async, the next one loading while the current one is used; tiles
 * are bf16 in shared memory with rows padded by 16 bytes (conflict-free ldmatrix); fragments come from ldmatrix (.trans where
 * the mma wants the other major order), and a score tile's accumulators are re-packed in
 * registers as the A operand of the next product (P·V, dS·K, Pᵀ·dO, dSᵀ·Q) — the usual
 * FlashAttention-2 register reuse, with P and dS rounded to bf16 for that product. Scores
 * are kept in log2 units (exp2); a warp skips the per-element mask on tiles it sees whole.
 *
 * Semantics are those of the SIMT kernels (and the CPU): masks, GQA head groups, lse,
 * accumulation into dq / dk / dv, no atomics (dq by query tile, dk/dv by key tile walking
 * the group's query heads and tiles in order: deterministic), dk before dv per element. */
#include <math.h>
#include <stdlib.h>

#include "cuda_attention.h"

typedef __nv_bfloat16 bf16;

#define MW 4             /* warps per block */
#define MT (MW * 32)     /* threads per block */
#define MB 64            /* rows per block: 16 per warp */
#define NB 64            /* keys per inner tile (forward, dq) */
#define NQ 32            /* queries per inner tile (dk/dv) */

/* ---- PTX wrappers ------------------------------------------------------------------------------ */

__device__ __forceinline__ uint32_t smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void ldsm4(uint32_t (&r)[4], const bf16 *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm4t(uint32_t (&r)[4], const bf16 *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
/* c += a·b: a 16×16 (row), b 16×8 (col), c 16×8 f32 */
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

/* Fragment addresses, for a lane, into a row-major [rows][ld] bf16 tile:
 *  A (16×16 at row r0, col c0):                rows r0 + lane%16, col c0 + (lane/16)·8
 *  B pair from a [n][k] tile (two n-tiles of 8 at n0, k-step at k0; non-trans):
 *                                              row n0 + (lane/16)·8 + lane%8, col k0 + ((lane/8)%2)·8
 *  B pair from a [k][n] tile (k-step at k0, two n-tiles at n0; .trans):
 *                                              row k0 + lane%8 + ((lane/8)%2)·8, col n0 + (lane/16)·8 */
__device__ __forceinline__ const bf16 *a_addr(const bf16 *s, int ld, int r0, int c0, int lane) {
    return s + (r0 + (lane & 15)) * ld + c0 + (lane >> 4) * 8;
}
__device__ __forceinline__ const bf16 *bn_addr(const bf16 *s, int ld, int n0, int k0, int lane) {
    return s + (n0 + (lane >> 4) * 8 + (lane & 7)) * ld + k0 + ((lane >> 3) & 1) * 8;
}
__device__ __forceinline__ const bf16 *bt_addr(const bf16 *s, int ld, int k0, int n0, int lane) {
    return s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8;
}

/* rows [row0, row0 + rows) of a global tile (row stride rs elements, D per row, 16-byte
 * aligned) into shared [rows][D + 8]; rows >= nvalid are zero. */
template <int D>
__device__ __forceinline__ void load_rows(bf16 *s, const bf16 *g, int64_t rs, int64_t row0,
                                          int64_t nvalid, int rows) {
    constexpr int V = D / 8, LD = D + 8;
    for (int idx = threadIdx.x; idx < rows * V; idx += MT) {
        const int r = idx / V, c = idx - r * V;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (r < nvalid) v = *(const uint4 *)(g + (row0 + r) * rs + c * 8);
        *(uint4 *)(s + r * LD + c * 8) = v;
    }
}

/* The same with cp.async (16-byte copies that bypass registers; rows >= nvalid are
 * zero-filled through a source size of 0). Completion: cp_commit / cp_wait. */
template <int D>
__device__ __forceinline__ void cp_rows(bf16 *s, const bf16 *g, int64_t rs, int64_t row0,
                                        int64_t nvalid, int rows) {
    constexpr int V = D / 8, LD = D + 8;
    for (int idx = threadIdx.x; idx < rows * V; idx += MT) {
        const int r = idx / V, c = idx - r * V;
        const bool ok = r < nvalid;
        const bf16 *src = ok ? g + (row0 + r) * rs + c * 8 : g;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(s + r * LD + c * 8)),
                     "l"(src), "r"(ok ? 16 : 0));
    }
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

/* Sum over the 4 lanes that share a row of an accumulator fragment (fixed order). */
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    return v;
}
__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
    return v;
}

/* dst[i] += scale·acc for a pair of adjacent columns (bf16x2 read-modify-write). */
__device__ __forceinline__ void add2(bf16 *dst, float a, float b) {
    __nv_bfloat162 *p = (__nv_bfloat162 *)dst;
    float2 f = __bfloat1622float2(*p);
    *p = __floats2bfloat162_rn(f.x + a, f.y + b);
}

/* ---- forward ------------------------------------------------------------------------------------ */

template <int DK, int DV>
__global__ void __launch_bounds__(MT) k_mma_fwd(attn_p p, int nqt) {
    constexpr int LK = DK + 8, LV = DV + 8;
    extern __shared__ uint4 mma_smem[];
    bf16 *Qs = (bf16 *)mma_smem;   /* [MB][LK] */
    bf16 *Kb = Qs + MB * LK;       /* 2 × [NB][LK] */
    bf16 *Vb = Kb + 2 * NB * LK;   /* 2 × [NB][LV] */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int qt = p.causal ? nqt - 1 - (int)blockIdx.x : (int)blockIdx.x;
    const int64_t h = blockIdx.y, b = blockIdx.z, kvh = h / p.group;
    const int64_t t0 = (int64_t)qt * MB, tn = p.T - t0 < MB ? p.T - t0 : MB;
    const bf16 *Q = (const bf16 *)p.q + b * p.q_b + h * p.q_h;
    const bf16 *K = (const bf16 *)p.k + b * p.k_b + kvh * p.k_h;
    const bf16 *V = (const bf16 *)p.v + b * p.v_b + kvh * p.v_h;
    const float sl = p.scale * LOG2E; /* scores in log2 units: exp2 */

    const int64_t rw0 = t0 + warp * 16; /* this warp's first row */
    const int64_t row[2] = {rw0 + g, rw0 + g + 8};
    int64_t lo[2], hi[2];
    float m[2], l[2], o[DV / 8][4];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        lo[r] = at_row_lo(p, row[r]);
        hi[r] = at_row_hi(p, row[r]);
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }
#pragma unroll
    for (int n = 0; n < DV / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[n][e] = 0.0f;
    /* tiles with no masked element for this warp's 16 rows skip the per-element mask */
    const int64_t wlo = at_row_lo(p, rw0 + 15), whi = at_row_hi(p, rw0);
    const bool wfull_rows = rw0 + 15 < p.T;

    const int64_t k0 = at_row_lo(p, t0), k1 = at_row_hi(p, t0 + tn - 1);
    const int ntile = k1 > k0 ? (int)((k1 - k0 + NB - 1) / NB) : 0;
    cp_rows<DK>(Qs, Q, p.q_t, t0, tn, MB);
    if (ntile > 0) {
        const int64_t kn = k1 - k0 < NB ? k1 - k0 : NB;
        cp_rows<DK>(Kb, K, p.k_t, k0, kn, NB);
        cp_rows<DV>(Vb, V, p.v_t, k0, kn, NB);
    }
    cp_commit();
    uint32_t qf[DK / 16][4];
    for (int it = 0; it < ntile; it++) {
        const int64_t s0 = k0 + (int64_t)it * NB;
        if (it + 1 < ntile) { /* prefetch the next tile into the other buffer */
            const int64_t s1 = s0 + NB, kn = k1 - s1 < NB ? k1 - s1 : NB;
            cp_rows<DK>(Kb + ((it + 1) & 1) * NB * LK, K, p.k_t, s1, kn, NB);
            cp_rows<DV>(Vb + ((it + 1) & 1) * NB * LV, V, p.v_t, s1, kn, NB);
        }
        cp_commit();
        cp_wait<1>();
        __syncthreads();
        const bf16 *Ks = Kb + (it & 1) * NB * LK, *Vs = Vb + (it & 1) * NB * LV;
        if (it == 0) {
#pragma unroll
            for (int kk = 0; kk < DK / 16; kk++) ldsm4(qf[kk], a_addr(Qs, LK, warp * 16, kk * 16, lane));
        }
        float s[NB / 8][4];
#pragma unroll
        for (int j = 0; j < NB / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[j][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < DK / 16; kk++)
#pragma unroll
            for (int np = 0; np < NB / 16; np++) {
                uint32_t bf[4];
                ldsm4(bf, bn_addr(Ks, LK, np * 16, kk * 16, lane));
                mma(s[2 * np], qf[kk], bf[0], bf[1]);
                mma(s[2 * np + 1], qf[kk], bf[2], bf[3]);
            }
        const bool full = wfull_rows && s0 + NB <= k1 && wlo <= s0 && whi >= s0 + NB;
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < NB / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = e >> 1;
                if (full) {
                    s[j][e] *= sl;
                } else {
                    const int64_t key = s0 + j * 8 + 2 * tq + (e & 1);
                    const bool ok = row[r] < p.T && key < k1 && key >= lo[r] && key < hi[r];
                    s[j][e] = ok ? s[j][e] * sl : -INFINITY;
                }
                mx[r] = fmaxf(mx[r], s[j][e]);
            }
        float alpha[2], mn[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = quad_max(mx[r]);
            mn[r] = fmaxf(m[r], mx[r]);
            alpha[r] = mn[r] == -INFINITY ? 1.0f : exp2f(m[r] - mn[r]);
            m[r] = mn[r];
        }
        float rs[2] = {0.0f, 0.0f};
#pragma unroll
        for (int j = 0; j < NB / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = e >> 1;
                s[j][e] = mn[r] == -INFINITY ? 0.0f : exp2f(s[j][e] - mn[r]);
                rs[r] += s[j][e];
            }
#pragma unroll
        for (int r = 0; r < 2; r++) l[r] = l[r] * alpha[r] + rs[r]; /* per-lane partial sums */
#pragma unroll
        for (int n = 0; n < DV / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) o[n][e] *= alpha[e >> 1];
#pragma unroll
        for (int kk = 0; kk < NB / 16; kk++) {
            uint32_t a[4] = {pack2(s[2 * kk][0], s[2 * kk][1]), pack2(s[2 * kk][2], s[2 * kk][3]),
                             pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             pack2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int nd = 0; nd < DV / 16; nd++) {
                uint32_t bf[4];
                ldsm4t(bf, bt_addr(Vs, LV, kk * 16, nd * 16, lane));
                mma(o[2 * nd], a, bf[0], bf[1]);
                mma(o[2 * nd + 1], a, bf[2], bf[3]);
            }
        }
        __syncthreads(); /* the buffer is refilled two tiles on */
    }
    cp_wait<0>();
    bf16 *O = (bf16 *)p.o;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const float lsum = quad_sum(l[r]);
        if (row[r] >= p.T) continue;
        const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
        bf16 *orow = O + ((b * p.T + row[r]) * p.Hq + h) * DV;
#pragma unroll
        for (int n = 0; n < DV / 8; n++)
            *(__nv_bfloat162 *)(orow + n * 8 + 2 * tq) =
                __floats2bfloat162_rn(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
        if (tq == 0)
            p.lse[(b * p.Hq + h) * p.T + row[r]] = lsum > 0.0f ? (m[r] + log2f(lsum)) * LN2 : -INFINITY;
    }
}

/* ---- backward: dq ------------------------------------------------------------------------------ */

template <int DK, int DV>
__global__ void __launch_bounds__(MT) k_mma_dq(attn_p p, int nqt) {
    constexpr int LK = DK + 8, LV = DV + 8;
    extern __shared__ uint4 mma_smem[];
    bf16 *Qs = (bf16 *)mma_smem;  /* [MB][LK] */
    bf16 *dOs = Qs + MB * LK;     /* [MB][LV] */
    bf16 *Kb = dOs + MB * LV;     /* 2 × [NB][LK] */
    bf16 *Vb = Kb + 2 * NB * LK;  /* 2 × [NB][LV] */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int qt = p.causal ? nqt - 1 - (int)blockIdx.x : (int)blockIdx.x;
    const int64_t h = blockIdx.y, b = blockIdx.z, kvh = h / p.group;
    const int64_t t0 = (int64_t)qt * MB, tn = p.T - t0 < MB ? p.T - t0 : MB;
    const bf16 *Q = (const bf16 *)p.q + b * p.q_b + h * p.q_h;
    const bf16 *K = (const bf16 *)p.k + b * p.k_b + kvh * p.k_h;
    const bf16 *V = (const bf16 *)p.v + b * p.v_b + kvh * p.v_h;
    const bf16 *dO = (const bf16 *)p.dout + (b * p.T * p.Hq + h) * DV;
    const float sl = p.scale * LOG2E;

    const int64_t rw0 = t0 + warp * 16;
    const int64_t row[2] = {rw0 + g, rw0 + g + 8};
    int64_t lo[2], hi[2];
    float lq[2], dl[2], acc[DK / 8][4];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        lo[r] = at_row_lo(p, row[r]);
        hi[r] = at_row_hi(p, row[r]);
        const bool in = row[r] < p.T;
        const float lv = in ? p.lse_in[(b * p.Hq + h) * p.T + row[r]] : -INFINITY;
        lq[r] = lv == -INFINITY ? -INFINITY : lv * LOG2E;
        dl[r] = in ? p.delta[(b * p.Hq + h) * p.T + row[r]] : 0.0f;
    }
#pragma unroll
    for (int n = 0; n < DK / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[n][e] = 0.0f;
    const int64_t wlo = at_row_lo(p, rw0 + 15), whi = at_row_hi(p, rw0);
    const bool wfull_rows = rw0 + 15 < p.T;

    const int64_t k0 = at_row_lo(p, t0), k1 = at_row_hi(p, t0 + tn - 1);
    const int ntile = k1 > k0 ? (int)((k1 - k0 + NB - 1) / NB) : 0;
    cp_rows<DK>(Qs, Q, p.q_t, t0, tn, MB);
    cp_rows<DV>(dOs, dO, p.Hq * DV, t0, tn, MB);
    if (ntile > 0) {
        const int64_t kn = k1 - k0 < NB ? k1 - k0 : NB;
        cp_rows<DK>(Kb, K, p.k_t, k0, kn, NB);
        cp_rows<DV>(Vb, V, p.v_t, k0, kn, NB);
    }
    cp_commit();
    for (int it = 0; it < ntile; it++) {
        const int64_t s0 = k0 + (int64_t)it * NB;
        if (it + 1 < ntile) {
            const int64_t s1 = s0 + NB, kn = k1 - s1 < NB ? k1 - s1 : NB;
            cp_rows<DK>(Kb + ((it + 1) & 1) * NB * LK, K, p.k_t, s1, kn, NB);
            cp_rows<DV>(Vb + ((it + 1) & 1) * NB * LV, V, p.v_t, s1, kn, NB);
        }
        cp_commit();
        cp_wait<1>();
        __syncthreads();
        const bf16 *Ks = Kb + (it & 1) * NB * LK, *Vs = Vb + (it & 1) * NB * LV;
        float s[NB / 8][4], dp[NB / 8][4];
#pragma unroll
        for (int j = 0; j < NB / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[j][e] = dp[j][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < DK / 16; kk++) {
            uint32_t a[4];
            ldsm4(a, a_addr(Qs, LK, warp * 16, kk * 16, lane));
#pragma unroll
            for (int np = 0; np < NB / 16; np++) {
                uint32_t bf[4];
                ldsm4(bf, bn_addr(Ks, LK, np * 16, kk * 16, lane));
                mma(s[2 * np], a, bf[0], bf[1]);
                mma(s[2 * np + 1], a, bf[2], bf[3]);
            }
        }
#pragma unroll
        for (int kk = 0; kk < DV / 16; kk++) {
            uint32_t a[4];
            ldsm4(a, a_addr(dOs, LV, warp * 16, kk * 16, lane));
#pragma unroll
            for (int np = 0; np < NB / 16; np++) {
                uint32_t bf[4];
                ldsm4(bf, bn_addr(Vs, LV, np * 16, kk * 16, lane));
                mma(dp[2 * np], a, bf[0], bf[1]);
                mma(dp[2 * np + 1], a, bf[2], bf[3]);
            }
        }
        const bool full = wfull_rows && s0 + NB <= k1 && wlo <= s0 && whi >= s0 + NB;
#pragma unroll
        for (int j = 0; j < NB / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = e >> 1;
                bool ok = true;
                if (!full) {
                    const int64_t key = s0 + j * 8 + 2 * tq + (e & 1);
                    ok = row[r] < p.T && key < k1 && key >= lo[r] && key < hi[r] && lq[r] != -INFINITY;
                }
                const float pr = ok ? exp2f(s[j][e] * sl - lq[r]) : 0.0f;
                s[j][e] = pr * (dp[j][e] - dl[r]); /* dS */
            }
#pragma unroll
        for (int kk = 0; kk < NB / 16; kk++) {
            uint32_t a[4] = {pack2(s[2 * kk][0], s[2 * kk][1]), pack2(s[2 * kk][2], s[2 * kk][3]),
                             pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             pack2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int nd = 0; nd < DK / 16; nd++) {
                uint32_t bf[4];
                ldsm4t(bf, bt_addr(Ks, LK, kk * 16, nd * 16, lane));
                mma(acc[2 * nd], a, bf[0], bf[1]);
                mma(acc[2 * nd + 1], a, bf[2], bf[3]);
            }
        }
        __syncthreads();
    }
    cp_wait<0>();
    bf16 *dQ = (bf16 *)p.dq;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (row[r] >= p.T) continue;
        bf16 *drow = dQ + ((b * p.T + row[r]) * p.Hq + h) * DK;
#pragma unroll
        for (int n = 0; n < DK / 8; n++)
            add2(drow + n * 8 + 2 * tq, p.scale * acc[n][2 * r], p.scale * acc[n][2 * r + 1]);
    }
}

/* ---- backward: dk, dv ---------------------------------------------------------------------------- */

template <int DK, int DV>
__global__ void __launch_bounds__(MT) k_mma_dkdv(attn_p p) {
    constexpr int LK = DK + 8, LV = DV + 8;
    extern __shared__ uint4 mma_smem[];
    bf16 *Ks = (bf16 *)mma_smem;           /* [MB][LK] */
    bf16 *Vs = Ks + MB * LK;               /* [MB][LV] */
    bf16 *Qb = Vs + MB * LV;               /* 2 × [NQ][LK] */
    bf16 *dOb = Qb + 2 * NQ * LK;          /* 2 × [NQ][LV] */
    float *lsb = (float *)(dOb + 2 * NQ * LV); /* 2 × [NQ]: lse·log2(e) */
    float *dlb = lsb + 2 * NQ;                 /* 2 × [NQ]: Δ */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int64_t kvh = blockIdx.y, b = blockIdx.z;
    const int64_t s0 = (int64_t)blockIdx.x * MB, sn = p.S - s0 < MB ? p.S - s0 : MB;
    const bf16 *K = (const bf16 *)p.k + b * p.k_b + kvh * p.k_h;
    const bf16 *V = (const bf16 *)p.v + b * p.v_b + kvh * p.v_h;
    const float sl = p.scale * LOG2E;
    const int64_t kw0 = s0 + warp * 16; /* this warp's first key */
    const int64_t key[2] = {kw0 + g, kw0 + g + 8};
    float ak[DK / 8][4], av[DV / 8][4];
#pragma unroll
    for (int n = 0; n < DK / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) ak[n][e] = 0.0f;
#pragma unroll
    for (int n = 0; n < DV / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) av[n][e] = 0.0f;
    /* iterations: the group's query heads in order, each over its query tiles in order */
    const int64_t qlo = at_query_lo(p, s0), qhi = at_query_hi(p, s0 + sn);
    const int64_t nqt = qhi > qlo ? (qhi - qlo + NQ - 1) / NQ : 0;
    const int64_t nit = nqt * p.group;
    /* stage iteration `it` into buffer `buf` (cp.async for the tiles, plain stores for the
     * per-query statistics; both are visible after the next barrier) */
    auto stage = [&](int64_t it, int buf) {
        const int64_t h = kvh * p.group + it / nqt, t0 = qlo + (it % nqt) * NQ;
        const int64_t tn = qhi - t0 < NQ ? qhi - t0 : NQ;
        const bf16 *Q = (const bf16 *)p.q + b * p.q_b + h * p.q_h;
        const bf16 *dO = (const bf16 *)p.dout + (b * p.T * p.Hq + h) * DV;
        cp_rows<DK>(Qb + buf * NQ * LK, Q, p.q_t, t0, tn, NQ);
        cp_rows<DV>(dOb + buf * NQ * LV, dO, p.Hq * DV, t0, tn, NQ);
        const float *L = p.lse_in + (b * p.Hq + h) * p.T, *Dl = p.delta + (b * p.Hq + h) * p.T;
        for (int r = threadIdx.x; r < NQ; r += MT) {
            const float lv = r < tn ? L[t0 + r] : -INFINITY;
            lsb[buf * NQ + r] = lv == -INFINITY ? -INFINITY : lv * LOG2E;
            dlb[buf * NQ + r] = r < tn ? Dl[t0 + r] : 0.0f;
        }
    };
    cp_rows<DK>(Ks, K, p.k_t, s0, sn, MB);
    cp_rows<DV>(Vs, V, p.v_t, s0, sn, MB);
    if (nit > 0) stage(0, 0);
    cp_commit();
    for (int64_t it = 0; it < nit; it++) {
        const int buf = (int)(it & 1);
        if (it + 1 < nit) stage(it + 1, buf ^ 1);
        cp_commit();
        cp_wait<1>();
        __syncthreads();
        const int64_t t0 = qlo + (it % nqt) * NQ, tn = qhi - t0 < NQ ? qhi - t0 : NQ;
        const bf16 *Qs = Qb + buf * NQ * LK, *dOs = dOb + buf * NQ * LV;
        const float *ls = lsb + buf * NQ, *dls = dlb + buf * NQ;
        float st[NQ / 8][4], dpt[NQ / 8][4];
#pragma unroll
        for (int j = 0; j < NQ / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) st[j][e] = dpt[j][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < DK / 16; kk++) {
            uint32_t a[4];
            ldsm4(a, a_addr(Ks, LK, warp * 16, kk * 16, lane));
#pragma unroll
            for (int np = 0; np < NQ / 16; np++) {
                uint32_t bf[4];
                ldsm4(bf, bn_addr(Qs, LK, np * 16, kk * 16, lane));
                mma(st[2 * np], a, bf[0], bf[1]);
                mma(st[2 * np + 1], a, bf[2], bf[3]);
            }
        }
#pragma unroll
        for (int kk = 0; kk < DV / 16; kk++) {
            uint32_t a[4];
            ldsm4(a, a_addr(Vs, LV, warp * 16, kk * 16, lane));
#pragma unroll
            for (int np = 0; np < NQ / 16; np++) {
                uint32_t bf[4];
                ldsm4(bf, bn_addr(dOs, LV, np * 16, kk * 16, lane));
                mma(dpt[2 * np], a, bf[0], bf[1]);
                mma(dpt[2 * np + 1], a, bf[2], bf[3]);
            }
        }
        /* every (key, query) of this warp visible: no per-element mask */
        const bool full = tn == NQ && kw0 + 15 < p.S && kw0 >= at_row_lo(p, t0 + NQ - 1) &&
                          kw0 + 15 < at_row_hi(p, t0);
#pragma unroll
        for (int j = 0; j < NQ / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int qi = j * 8 + 2 * tq + (e & 1);
                const float lt = ls[qi];
                bool ok = true;
                if (!full) {
                    const int64_t t = t0 + qi, sk = key[e >> 1];
                    ok = qi < tn && sk < p.S && sk >= at_row_lo(p, t) && sk < at_row_hi(p, t) &&
                         lt != -INFINITY;
                }
                const float pr = ok ? exp2f(st[j][e] * sl - lt) : 0.0f;
                st[j][e] = pr;
                dpt[j][e] = pr * (dpt[j][e] - dls[qi]); /* dSᵀ */
            }
#pragma unroll
        for (int kk = 0; kk < NQ / 16; kk++) {
            uint32_t a[4] = {pack2(st[2 * kk][0], st[2 * kk][1]), pack2(st[2 * kk][2], st[2 * kk][3]),
                             pack2(st[2 * kk + 1][0], st[2 * kk + 1][1]),
                             pack2(st[2 * kk + 1][2], st[2 * kk + 1][3])};
#pragma unroll
            for (int nd = 0; nd < DV / 16; nd++) {
                uint32_t bf[4];
                ldsm4t(bf, bt_addr(dOs, LV, kk * 16, nd * 16, lane));
                mma(av[2 * nd], a, bf[0], bf[1]);
                mma(av[2 * nd + 1], a, bf[2], bf[3]);
            }
            uint32_t d[4] = {pack2(dpt[2 * kk][0], dpt[2 * kk][1]), pack2(dpt[2 * kk][2], dpt[2 * kk][3]),
                             pack2(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]),
                             pack2(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3])};
#pragma unroll
            for (int nd = 0; nd < DK / 16; nd++) {
                uint32_t bf[4];
                ldsm4t(bf, bt_addr(Qs, LK, kk * 16, nd * 16, lane));
                mma(ak[2 * nd], d, bf[0], bf[1]);
                mma(ak[2 * nd + 1], d, bf[2], bf[3]);
            }
        }
        __syncthreads(); /* buffer `buf` is restaged two iterations on */
    }
    cp_wait<0>();
    bf16 *dK = (bf16 *)p.dk, *dV = (bf16 *)p.dv;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (key[r] >= p.S) continue;
        if (dK) {
            bf16 *drow = dK + ((b * p.S + key[r]) * p.Hkv + kvh) * DK;
#pragma unroll
            for (int n = 0; n < DK / 8; n++)
                add2(drow + n * 8 + 2 * tq, p.scale * ak[n][2 * r], p.scale * ak[n][2 * r + 1]);
        }
        if (dV) { /* after dk: the same lane owns the element when dk and dv share storage */
            bf16 *drow = dV + ((b * p.S + key[r]) * p.Hkv + kvh) * DV;
#pragma unroll
            for (int n = 0; n < DV / 8; n++) add2(drow + n * 8 + 2 * tq, av[n][2 * r], av[n][2 * r + 1]);
        }
    }
}

/* ---- host side ----------------------------------------------------------------------------------- */

static bool simt_forced(void) {
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("KVF_CUDA_ATTN_SIMT");
        v = e && e[0] == '1';
    }
    return v == 1;
}

static bool aligned16(const void *ptr) { return ((uintptr_t)ptr & 15) == 0; }

/* q/k/v rows start on 16 bytes: base pointers and every stride a multiple of 8 elements. */
static bool rows_aligned(const attn_p &p) {
    const int64_t st[9] = {p.q_b, p.q_t, p.q_h, p.k_b, p.k_t, p.k_h, p.v_b, p.v_t, p.v_h};
    for (int i = 0; i < 9; i++)
        if (st[i] % 8) return false;
    return aligned16(p.q) && aligned16(p.k) && aligned16(p.v);
}

template <class K>
static kvf_status raise_smem(K kernel, size_t bytes, size_t *done, const char *what) {
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

#define SHAPE_FMT "B %lld T %lld S %lld Hq %lld Hkv %lld Dk %lld Dv %lld"
#define SHAPE_ARGS(p)                                                                          \
    (long long)(p).B, (long long)(p).T, (long long)(p).S, (long long)(p).Hq, (long long)(p).Hkv, \
        (long long)(p).Dk, (long long)(p).Dv

template <int DK, int DV>
static kvf_status fwd_run(const attn_p &p) {
    static size_t done = 0;
    const size_t smem = sizeof(bf16) * (size_t)(MB * (DK + 8) + 2 * NB * (DK + 8) + 2 * NB * (DV + 8));
    KVF_TRY(raise_smem(k_mma_fwd<DK, DV>, smem, &done, "attention (bf16 mma)"));
    const int nqt = (int)((p.T + MB - 1) / MB);
    k_mma_fwd<DK, DV><<<dim3(nqt, (unsigned)p.Hq, (unsigned)p.B), MT, smem, KVF_STREAM>>>(p, nqt);
    KVF_LAUNCH("mma_fwd", "attention " SHAPE_FMT, SHAPE_ARGS(p));
    return KVF_OK;
}

template <int DK, int DV>
static kvf_status bwd_run(const attn_p &p) {
    if (p.dq) {
        static size_t done = 0;
        const size_t smem = sizeof(bf16) * (size_t)(MB * (DK + 8) + MB * (DV + 8) + 2 * NB * (DK + 8) +
                                                    2 * NB * (DV + 8));
        KVF_TRY(raise_smem(k_mma_dq<DK, DV>, smem, &done, "attention_backward dq (bf16 mma)"));
        const int nqt = (int)((p.T + MB - 1) / MB);
        k_mma_dq<DK, DV><<<dim3(nqt, (unsigned)p.Hq, (unsigned)p.B), MT, smem, KVF_STREAM>>>(p, nqt);
        KVF_LAUNCH("mma_dq", "attention_backward " SHAPE_FMT, SHAPE_ARGS(p));
    }
    if (p.dk || p.dv) {
        static size_t done = 0;
        const size_t smem = sizeof(bf16) * (size_t)((MB + 2 * NQ) * (DK + 8) + (MB + 2 * NQ) * (DV + 8)) +
                            sizeof(float) * 4 * NQ;
        KVF_TRY(raise_smem(k_mma_dkdv<DK, DV>, smem, &done, "attention_backward dk/dv (bf16 mma)"));
        const int64_t nkt = (p.S + MB - 1) / MB;
        k_mma_dkdv<DK, DV><<<dim3((unsigned)nkt, (unsigned)p.Hkv, (unsigned)p.B), MT, smem, KVF_STREAM>>>(p);
        KVF_LAUNCH("mma_dkdv", "attention_backward " SHAPE_FMT, SHAPE_ARGS(p));
    }
    return KVF_OK;
}

/* Which instantiation serves (Dk, Dv); 0 = none. */
static int pick(const attn_p &p) {
    if (simt_forced() || !rows_aligned(p)) return 0;
    if (p.Dk == 32 && p.Dv == 32) return 1;
    if (p.Dk == 64 && p.Dv == 64) return 2;
    if (p.Dk == 96 && p.Dv == 64) return 3;
    if (p.Dk == 128 && p.Dv == 128) return 4;
    if (p.Dk == 192 && p.Dv == 128) return 5;
    return 0;
}

bool kvf_cuda_attn_mma_fwd(const attn_p &p, kvf_status *st) {
    if (!aligned16(p.o)) return false;
    switch (pick(p)) {
    case 1: *st = fwd_run<32, 32>(p); return true;
    case 2: *st = fwd_run<64, 64>(p); return true;
    case 3: *st = fwd_run<96, 64>(p); return true;
    case 4: *st = fwd_run<128, 128>(p); return true;
    case 5: *st = fwd_run<192, 128>(p); return true;
    default: return false;
    }
}

bool kvf_cuda_attn_mma_bwd(const attn_p &p, kvf_status *st) {
    if (!aligned16(p.dout) || (p.dq && !aligned16(p.dq)) || (p.dk && !aligned16(p.dk)) ||
        (p.dv && !aligned16(p.dv)))
        return false;
    switch (pick(p)) {
    case 1: *st = bwd_run<32, 32>(p); return true;
    case 2: *st = bwd_run<64, 64>(p); return true;
    case 3: *st = bwd_run<96, 64>(p); return true;
    case 4: *st = bwd_run<128, 128>(p); return true;
    case 5: *st = bwd_run<192, 128>(p); return true;
    default: return false;
    }
}
