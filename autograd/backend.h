/* backend.h — the kernel table every backend implements (CPU here, CUDA in gpu/).
 * Ops in ops_*.c check shapes, allocate outputs and call these; kernels trust their
 * arguments. Kernels named *_backward ACCUMULATE into their gradient outputs (+=), so
 * a tensor used twice simply receives two contributions. Unless a comment says otherwise,
 * tensors are contiguous, float tensors share one dtype, and shapes are as documented. */
#ifndef KVF_BACKEND_H
#define KVF_BACKEND_H

#include "tensor.h"

enum kvf_binop { KVF_BINOP_ADD, KVF_BINOP_SUB, KVF_BINOP_MUL, KVF_BINOP_DIV, KVF_BINOP_COUNT };
typedef enum kvf_binop kvf_binop;

enum kvf_unop {
    KVF_UNOP_SCALE,     /* alpha·x */
    KVF_UNOP_EXP,
    KVF_UNOP_LOG,
    KVF_UNOP_SILU,
    KVF_UNOP_GELU_TANH, /* GPT-2 "gelu_new" */
    KVF_UNOP_GELU_ERF,  /* exact */
    KVF_UNOP_COUNT
};
typedef enum kvf_unop kvf_unop;

enum kvf_rope_layout {
    KVF_ROPE_HALF,        /* pairs (i, i + r/2): HF Llama rotate_half */
    KVF_ROPE_INTERLEAVED, /* pairs (2i, 2i + 1): DeepSeek / GPT-J */
};
typedef enum kvf_rope_layout kvf_rope_layout;

/* Causal attention, queries aligned to the end of the keys: query t sits at absolute
 * position p = t + S - T and sees keys s with s <= p and, if window > 0, s > p - window.
 * Non-causal: every key. scale multiplies q·k before the softmax. */
struct kvf_attn_cfg {
    float scale;
    bool causal;
    int64_t window; /* 0: no sliding window */
};
typedef struct kvf_attn_cfg kvf_attn_cfg;

/* Row-major C[b] = alpha·op(A[b])·op(B[b]) + beta·C[b], b < batch. op(A) is m×k: A is stored
 * m×k (lda ≥ k) or, with trans_a, k×m (lda ≥ m). stride_* step between batches (0 = shared). */
struct kvf_gemm_args {
    bool trans_a, trans_b;
    int64_t m, n, k, batch;
    const void *a, *b;
    void *c;
    int64_t lda, ldb, ldc;
    int64_t stride_a, stride_b, stride_c;
    double alpha, beta;
    kvf_dtype dtype;
    /* C in f32 while A and B are in dtype (bf16): weight gradients straight into the f32
     * master gradients. Backends without mixed GEMMs (the CPU) refuse it unless dtype is f32. */
    bool c_f32;
    /* Where C's old value comes from when it is not C itself: C = alpha·op(A)·op(B) +
     * beta·c_in, C only written (a residual added in the GEMM's epilogue). c_in is laid
     * out as C; batch 1 only. NULL: c_in is C. */
    const void *c_in;
};
typedef struct kvf_gemm_args kvf_gemm_args;

/* One parameter's slice of the flat buffers for the fused AdamW update: elements
 * [offset, offset + numel), its learning rate (lr · lr_mult) and weight decay. */
struct kvf_adamw_seg {
    int64_t offset, numel;
    double lr, weight_decay;
};

/* AdamW (torch.optim.AdamW semantics) over flat f32 buffers p, g, m, v (each holding the
 * last segment's end rounded up to 4 elements: kernels may read whole groups), one segment per
 * parameter: m ← β1·m + (1−β1)·g, v ← β2·v + (1−β2)·g², p ← p·(1 − lr·wd) −
 * (lr/bc1)·m / (sqrt(v)/bc2_sqrt + eps), arithmetic in double as on the CPU. */
struct kvf_adamw_args {
    float *p, *m, *v;
    const float *g;
    const struct kvf_adamw_seg *segs; /* host array */
    int n_segs;
    double beta1, beta2, eps, bc1, bc2_sqrt;
    /* g is read as (f32)(grad_scale·g), the bits of scaling the buffer first (clipping
     * deferred into the update: optim/clip.h); 1 or 0 (unset): as it is */
    double grad_scale;
};
typedef struct kvf_adamw_args kvf_adamw_args;

struct kvf_backend {
    const char *name;
    kvf_device device;

    void *(*alloc)(size_t nbytes); /* NULL on failure (error set) */
    void (*free)(void *p);
    /* Optional (NULL: alloc/free serve): memory freed and reused within a step — the
     * backward's gradients and temporaries (context.c). Freeing may happen while queued
     * work still reads the block; reuse is ordered after it (one stream). */
    void *(*alloc_temp)(size_t nbytes);
    void (*free_temp)(void *p);
    kvf_status (*upload)(void *dst, const void *host, size_t nbytes);
    kvf_status (*download)(void *host, const void *src, size_t nbytes);
    kvf_status (*memset_zero)(void *dst, size_t nbytes);

    /* dst = src, any strides on both sides, dtype conversion allowed; same shapes. */
    kvf_status (*copy)(kvf_tensor *dst, const kvf_tensor *src);
    kvf_status (*gemm)(const kvf_gemm_args *g);
    /* out = a ∘ b. a and b are views with out's shape; any strides (0 for broadcast dims).
     * out may alias a (used to accumulate: out = out + b). */
    kvf_status (*binary)(kvf_binop op, kvf_tensor *out, const kvf_tensor *a, const kvf_tensor *b);
    /* out = f(x); any strides on x. */
    kvf_status (*unary)(kvf_unop op, kvf_tensor *out, const kvf_tensor *x, double alpha);
    /* dx += f'(x)·dy (x may be NULL for SCALE). */
    kvf_status (*unary_backward)(kvf_unop op, kvf_tensor *dx, const kvf_tensor *x,
                                 const kvf_tensor *dy, double alpha);
    /* out (+)= sum of x over the dims where out has extent 1 and x does not; same ndim.
     * x any strides. */
    kvf_status (*reduce_sum)(kvf_tensor *out, const kvf_tensor *x, bool accumulate);

    /* Softmax over the last dim. */
    kvf_status (*softmax)(kvf_tensor *y, const kvf_tensor *x);
    kvf_status (*softmax_backward)(kvf_tensor *dx, const kvf_tensor *y, const kvf_tensor *dy);

    /* Norms over the last dim C of x [N, C]; w, b [C] (either may be NULL); stats [N] in
     * the compute dtype (f64 for f64 x, else f32). */
    kvf_status (*rmsnorm)(kvf_tensor *y, kvf_tensor *rstd, const kvf_tensor *x,
                          const kvf_tensor *w, double eps);
    kvf_status (*rmsnorm_backward)(kvf_tensor *dx, kvf_tensor *dw, const kvf_tensor *x,
                                   const kvf_tensor *w, const kvf_tensor *rstd,
                                   const kvf_tensor *dy);
    kvf_status (*layernorm)(kvf_tensor *y, kvf_tensor *mean, kvf_tensor *rstd,
                            const kvf_tensor *x, const kvf_tensor *w, const kvf_tensor *b,
                            double eps);
    kvf_status (*layernorm_backward)(kvf_tensor *dx, kvf_tensor *dw, kvf_tensor *db,
                                     const kvf_tensor *x, const kvf_tensor *w,
                                     const kvf_tensor *mean, const kvf_tensor *rstd,
                                     const kvf_tensor *dy);

    /* x [B, T, H, D]; pos i32 [T]; inv_freq f32 [F] or [H, F], rotating the first 2F dims
     * of each head (the rest pass through). inverse rotates by −angle (the backward).
     * accumulate: y += R·x instead of y = R·x. x and y are dense head rows, each laid out
     * its own way (kvf_tensor_head_rows: slices of heads, or of each head's dims). */
    kvf_status (*rope)(kvf_tensor *y, const kvf_tensor *x, const kvf_tensor *pos,
                       const kvf_tensor *inv_freq, kvf_rope_layout layout, bool inverse,
                       bool accumulate);

    /* q [B, T, Hq, Dk], k [B, S, Hkv, Dk], v [B, S, Hkv, Dv] with Hq % Hkv == 0; q/k/v may
     * have any strides with stride[3] == 1 (and row stride[1] >= D). out [B, T, Hq, Dv];
     * lse [B, Hq, T] in the compute dtype (f64 for f64 q, else f32). The backward
     * overwrites dq/dk/dv (contiguous; NULL: not wanted): their old contents are ignored. */
    kvf_status (*attention)(kvf_tensor *out, kvf_tensor *lse, const kvf_tensor *q,
                            const kvf_tensor *k, const kvf_tensor *v, const kvf_attn_cfg *cfg);
    kvf_status (*attention_backward)(kvf_tensor *dq, kvf_tensor *dk, kvf_tensor *dv,
                                     const kvf_tensor *q, const kvf_tensor *k,
                                     const kvf_tensor *v, const kvf_tensor *out,
                                     const kvf_tensor *lse, const kvf_tensor *dout,
                                     const kvf_attn_cfg *cfg);

    /* logits [N, V], targets i32 [N]; loss [1] = mean over targets != ignore_index
     * (0 when none); loss, dloss and lse [N] in the compute dtype (f64 for f64 logits,
     * else f32, also for bf16 logits).
     * Backward: dlogits += (softmax − onehot)·dloss/count.
     * Backward in place: logits become their gradient, bit for bit what the accumulating
     * backward adds into a zeroed buffer (0 + value, so never −0; ignored rows 0); each
     * element is read before it is written, so no second [N, V] buffer is needed. */
    kvf_status (*cross_entropy)(kvf_tensor *loss, kvf_tensor *lse, const kvf_tensor *logits,
                                const kvf_tensor *targets, int64_t ignore_index);
    kvf_status (*cross_entropy_backward)(kvf_tensor *dlogits, const kvf_tensor *logits,
                                         const kvf_tensor *lse, const kvf_tensor *targets,
                                         const kvf_tensor *dloss, int64_t ignore_index);
    kvf_status (*cross_entropy_backward_inplace)(kvf_tensor *logits, const kvf_tensor *lse,
                                                 const kvf_tensor *targets,
                                                 const kvf_tensor *dloss, int64_t ignore_index);

    /* weight [V, C], ids i32 [N] → out [N, C]. Backward scatter-adds rows (deterministic). */
    kvf_status (*embedding)(kvf_tensor *out, const kvf_tensor *weight, const kvf_tensor *ids);
    kvf_status (*embedding_backward)(kvf_tensor *dweight, const kvf_tensor *ids,
                                     const kvf_tensor *dout);

    /* out = silu(gate) · up, all [N]. The backward overwrites dgate/dup (NULL: not wanted). */
    /* gate/up (and dgate/dup) may be dense rows a row stride apart (kvf_tensor_rows: the
     * halves of a packed [gate | up]); out and dout contiguous */
    kvf_status (*swiglu)(kvf_tensor *out, const kvf_tensor *gate, const kvf_tensor *up);
    kvf_status (*swiglu_backward)(kvf_tensor *dgate, kvf_tensor *dup, const kvf_tensor *gate,
                                  const kvf_tensor *up, const kvf_tensor *dout);

    /* Optional (NULL where a backend has none; the CPU optimizer and clipping keep their own
     * loops). Fused AdamW step over device buffers (see kvf_adamw_args), and the sum of
     * squares of a contiguous f32 tensor in double with a fixed reduction order (gradient
     * norm: same bits run to run). */
    kvf_status (*adamw)(const kvf_adamw_args *a);
    kvf_status (*sum_squares)(const kvf_tensor *x, double *out);

    /* Optional, for the conversions (convert/calib.c, convert/linalg.c; NULL: they compute
     * on the CPU). gram_f64: acc ((d+1)×(d+1) f64 row-major, on this device) += Σ_t [x_t; 1]
     * [y_t; 1]ᵀ over the rows t of x and y (contiguous f32 [..., d] of one shape, on this
     * device; y NULL or x: the Gram of x). The d×d block is one f32 GEMM with f32
     * accumulation (no TF32) added into acc in double, the border sums are in double:
     * close to the CPU's f64 sums when each call covers a batch, not a whole run. */
    kvf_status (*gram_f64)(double *acc, const kvf_tensor *x, const kvf_tensor *y);
    /* Dense f64 linear algebra on HOST row-major matrices, computed on this device (upload,
     * compute, download; blocking), with kvf_eigh_desc / kvf_svd / kvf_dgemm's contracts
     * (convert/linalg.h): eigenvalues descending, thin SVD, C = op(A)·op(B). */
    kvf_status (*eigh_f64)(int n, const double *A, double *w, double *V);
    kvf_status (*svd_f64)(int m, int n, const double *A, double *U, double *s, double *Vt);
    kvf_status (*dgemm_f64)(bool ta, bool tb, int m, int n, int k, const double *A,
                            const double *B, double *C);
};
typedef struct kvf_backend kvf_backend;

/* The backend for a device, or NULL (error set) if it is not built in / no device found. */
const kvf_backend *kvf_backend_get(kvf_device device);
const kvf_backend *kvf_backend_cpu(void);

/* A persistent, zeroed tensor owning storage on a device (the CPU: as kvf_tensor_init_owned);
 * kvf_tensor_free_owned releases it through that device's backend. NULL (error set, naming
 * the bytes asked for) on failure. */
kvf_tensor *kvf_tensor_init_owned_on(kvf_device device, kvf_dtype dtype, int ndim,
                                     const int64_t *shape);

#endif
