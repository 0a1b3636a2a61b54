/* ops.h — every differentiable op. Each returns a new arena tensor, or NULL with an error
 * recorded that names the op and the operand shapes (a NULL operand yields NULL and keeps
 * the first error, so a graph can be built and checked once at the end). Float ops take
 * f32 or f64 on the CPU; all operands must share a device. */
#ifndef KVF_OPS_H
#define KVF_OPS_H

#include "backend.h"
#include "context.h"

/* Views: share storage with x. reshape copies first when x is not contiguous. A shape
 * entry of -1 is inferred. */
kvf_tensor *kvf_reshape(kvf_ctx *ctx, kvf_tensor *x, int ndim, const int64_t *shape);
kvf_tensor *kvf_permute(kvf_ctx *ctx, kvf_tensor *x, const int *perm);
kvf_tensor *kvf_transpose(kvf_ctx *ctx, kvf_tensor *x, int d0, int d1);
kvf_tensor *kvf_slice(kvf_ctx *ctx, kvf_tensor *x, int axis, int64_t start, int64_t len);
kvf_tensor *kvf_expand(kvf_ctx *ctx, kvf_tensor *x, int ndim, const int64_t *shape);
kvf_tensor *kvf_contiguous(kvf_ctx *ctx, kvf_tensor *x); /* x itself when already so */
kvf_tensor *kvf_cast(kvf_ctx *ctx, kvf_tensor *x, kvf_dtype dtype);
/* kvf_cast(x, y's dtype) where y (same shape, a tensor nothing else writes) already holds
 * that cast, made without recording (one pass over many tensors at once): no kernel, the
 * same record on the tape; returns y. */
kvf_tensor *kvf_cast_view(kvf_ctx *ctx, kvf_tensor *x, kvf_tensor *y);
kvf_tensor *kvf_concat(kvf_ctx *ctx, kvf_tensor *const *xs, int n, int axis);
/* n slices of x along axis with the given sizes (must sum to the axis extent). */
kvf_status  kvf_split(kvf_ctx *ctx, kvf_tensor *x, int axis, const int64_t *sizes, int n,
                      kvf_tensor **out);

/* a [..., M, K] (or [..., K, M] with trans_a) times b [..., K, N] (or [..., N, K] with
 * trans_b); b may be 2-D and is then shared by every batch (a linear layer). */
kvf_tensor *kvf_matmul(kvf_ctx *ctx, kvf_tensor *a, kvf_tensor *b, bool trans_a, bool trans_b);
/* r + a·op(b): kvf_add(r, kvf_matmul(a, b, false, trans_b)) with the add in the GEMM's
 * epilogue where r has the product's shape and b is 2-D (a residual after a projection):
 * no product tensor and no add pass. Same numbers on the CPU as the two ops. */
kvf_tensor *kvf_matmul_add(kvf_ctx *ctx, kvf_tensor *r, kvf_tensor *a, kvf_tensor *b, bool trans_b);

/* Elementwise with NumPy broadcasting. */
kvf_tensor *kvf_add(kvf_ctx *ctx, kvf_tensor *a, kvf_tensor *b);
kvf_tensor *kvf_sub(kvf_ctx *ctx, kvf_tensor *a, kvf_tensor *b);
kvf_tensor *kvf_mul(kvf_ctx *ctx, kvf_tensor *a, kvf_tensor *b);
kvf_tensor *kvf_div(kvf_ctx *ctx, kvf_tensor *a, kvf_tensor *b);
kvf_tensor *kvf_scale(kvf_ctx *ctx, kvf_tensor *x, double s);
kvf_tensor *kvf_exp(kvf_ctx *ctx, kvf_tensor *x);
kvf_tensor *kvf_log(kvf_ctx *ctx, kvf_tensor *x);
kvf_tensor *kvf_silu(kvf_ctx *ctx, kvf_tensor *x);
enum kvf_gelu { KVF_GELU_TANH, KVF_GELU_ERF };
kvf_tensor *kvf_gelu(kvf_ctx *ctx, kvf_tensor *x, enum kvf_gelu approx);
kvf_tensor *kvf_swiglu(kvf_ctx *ctx, kvf_tensor *gate, kvf_tensor *up); /* silu(gate)·up */
/* kvf_swiglu of the halves of gu [..., 2F] = [gate | up] (a fused gate/up projection) →
 * [..., F]; read in place, and the backward writes gu's gradient in one pass. */
kvf_tensor *kvf_swiglu_packed(kvf_ctx *ctx, kvf_tensor *gu);

/* Reductions over one axis (negative counts from the end); axis = KVF_ALL_AXES: every
 * element, result shape [1]. */
#define KVF_ALL_AXES 99
kvf_tensor *kvf_sum(kvf_ctx *ctx, kvf_tensor *x, int axis, bool keepdim);
kvf_tensor *kvf_mean(kvf_ctx *ctx, kvf_tensor *x, int axis, bool keepdim);

kvf_tensor *kvf_softmax(kvf_ctx *ctx, kvf_tensor *x); /* over the last dim */

/* Over the last dim; w and b may be NULL. */
kvf_tensor *kvf_rmsnorm(kvf_ctx *ctx, kvf_tensor *x, kvf_tensor *w, double eps);
kvf_tensor *kvf_layernorm(kvf_ctx *ctx, kvf_tensor *x, kvf_tensor *w, kvf_tensor *b, double eps);

/* x [B, T, H, D]; pos i32 [T] (NULL: 0..T-1); inv_freq f32 [F] or [H, F] with 2F <= D.
 * A zero frequency leaves its pair untouched, so a per-head mask of kept frequencies is
 * inv_freq with the dropped ones zeroed. kvf_rope_inv_freq fills theta^(-2i/dim). */
kvf_tensor *kvf_rope(kvf_ctx *ctx, kvf_tensor *x, kvf_tensor *pos, kvf_tensor *inv_freq,
                     kvf_rope_layout layout);
/* kvf_rope writing over x's storage (x dense head rows: contiguous, or a slice of the heads
 * or head dims of a contiguous tensor; else over a contiguous copy): for an x that nothing
 * reads again and no backward rule keeps, such as a fresh projection or a head slice of one. */
kvf_tensor *kvf_rope_inplace(kvf_ctx *ctx, kvf_tensor *x, kvf_tensor *pos, kvf_tensor *inv_freq,
                             kvf_rope_layout layout);
/* kvf_rope_inplace rotating dims [d0, d0 + 2F) of each head instead of the first 2F (the
 * others are left as they are): DeepSeek MLA's RoPE part at the end of a q head. */
kvf_tensor *kvf_rope_inplace_at(kvf_ctx *ctx, kvf_tensor *x, int64_t d0, kvf_tensor *pos,
                                kvf_tensor *inv_freq, kvf_rope_layout layout);
kvf_tensor *kvf_rope_inv_freq(kvf_ctx *ctx, int64_t dim, double theta);

/* q [B, T, Hq, Dk], k [B, S, Hkv, Dk], v [B, S, Hkv, Dv] → [B, T, Hq, Dv]; query head h
 * uses KV head h / (Hq / Hkv). See kvf_attn_cfg for the mask. */
kvf_tensor *kvf_attention(kvf_ctx *ctx, kvf_tensor *q, kvf_tensor *k, kvf_tensor *v,
                          const kvf_attn_cfg *cfg);

/* logits [N, V], targets i32 [N] → mean cross-entropy [1] over targets != ignore_index. */
kvf_tensor *kvf_cross_entropy(kvf_ctx *ctx, kvf_tensor *logits, kvf_tensor *targets,
                              int64_t ignore_index);

/* The same loss, but backward overwrites the logits with their gradient instead of making
 * a second [N, V] buffer for it (what a vocabulary-sized head spends most of its memory
 * on). The caller promises that nothing reads the logits' values — through this tensor or
 * any other view of its storage — once backward has reached this op: no op recorded
 * before it saved them for its own backward, and the caller does not look at them after
 * backward. A model's loss, whose logits nothing else sees, is the use. The numbers are
 * those of kvf_cross_entropy bit for bit; when another consumer has already given the
 * logits a gradient, or sharing is off (kvf_ctx_set_grad_sharing), it accumulates as
 * kvf_cross_entropy does. */
kvf_tensor *kvf_cross_entropy_inplace(kvf_ctx *ctx, kvf_tensor *logits, kvf_tensor *targets,
                                      int64_t ignore_index);

/* weight [V, C], ids i32 [...] → [..., C]. */
kvf_tensor *kvf_embedding(kvf_ctx *ctx, kvf_tensor *weight, kvf_tensor *ids);

#endif
