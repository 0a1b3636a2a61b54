/* tape.h — the autograd tape. Ops append one node each while grad mode is on and an
 * input requires grad; kvf_backward walks the nodes in reverse and calls the op's rule
 * from one table indexed by op id (kvf_op_rules, tape.c). Rules accumulate into input
 * gradients, allocated (zeroed) in the arena on first use unless they already exist
 * (parameters own theirs: params.h). */
#ifndef KVF_TAPE_H
#define KVF_TAPE_H

#include "backend.h"
#include "context.h"

enum kvf_op {
    KVF_OP_NONE,
    KVF_OP_RESHAPE,
    KVF_OP_PERMUTE,
    KVF_OP_SLICE,
    KVF_OP_EXPAND,
    KVF_OP_COPY, /* contiguous / cast */
    KVF_OP_CONCAT,
    KVF_OP_MATMUL,
    KVF_OP_BINARY,
    KVF_OP_UNARY,
    KVF_OP_SUM,
    KVF_OP_SOFTMAX,
    KVF_OP_RMSNORM,
    KVF_OP_LAYERNORM,
    KVF_OP_ROPE,
    KVF_OP_ATTENTION,
    KVF_OP_CROSS_ENTROPY,
    KVF_OP_EMBEDDING,
    KVF_OP_SWIGLU,
    KVF_OP_RECOMPUTE, /* a whole function re-run during backward (recompute.h) */
    KVF_OP_COUNT
};
typedef enum kvf_op kvf_op;

#define KVF_MAX_SRC 8

struct kvf_node {
    kvf_op op;
    kvf_tensor *out;
    int n_src;
    kvf_tensor *src[KVF_MAX_SRC];
    kvf_tensor *saved[3]; /* op-specific: softmax stats, norm statistics, ... */
    int64_t src_prev_use[KVF_MAX_SRC]; /* src[i]->last_use just before this node read it */
    int64_t iparam[8];
    double fparam[4];
    kvf_attn_cfg attn;
    void *ext; /* op-specific host record (recompute: the function, its inputs and outputs) */
};
typedef struct kvf_node kvf_node;

typedef kvf_status (*kvf_backward_fn)(kvf_ctx *ctx, kvf_node *node);

struct kvf_op_rule {
    const char *name;
    kvf_backward_fn backward;
};
extern const struct kvf_op_rule kvf_op_rules[KVF_OP_COUNT];

/* Ops call this after computing out; it returns NULL (and records nothing) when no input
 * needs a gradient or grad mode is off. The returned node is filled in by the op. */
kvf_node *kvf_tape_record(kvf_ctx *ctx, kvf_op op, kvf_tensor *out, int n_src,
                          kvf_tensor *const *src);
int       kvf_tape_size(const kvf_ctx *ctx);
kvf_node *kvf_tape_node(kvf_ctx *ctx, int i);

/* Seeds d(loss)/d(loss) = 1 (loss must have one element) and runs every rule in reverse. */
kvf_status kvf_backward(kvf_ctx *ctx, kvf_tensor *loss);

/* For rules: the gradient buffer of t (zeroed arena tensor on first use), or NULL if t
 * does not require grad. */
kvf_tensor *kvf_grad_get(kvf_ctx *ctx, kvf_tensor *t);

/* For rules that can either write or add: t's gradient buffer, *fresh = true when it was
 * just made (uninitialised: write it) and false when it holds a sum (add into it). */
kvf_tensor *kvf_grad_fresh(kvf_ctx *ctx, kvf_tensor *t, bool *fresh);

/* For rules whose kernel writes a gradient rather than adding to it: the buffer the
 * kernel may overwrite for t's gradient. When t has none yet it is allocated
 * (uninitialised: the kernel's write is its first value) and becomes t's gradient,
 * *pending = NULL; when t has one, a fresh temporary is returned and *pending is t's
 * gradient, which kvf_grad_finish then adds it into. NULL when t needs no gradient
 * (*pending NULL too) or on error (check t->requires_grad). */
kvf_tensor *kvf_grad_out(kvf_ctx *ctx, kvf_tensor *t, kvf_tensor **pending);
/* After the kernel: pending += out (nothing when pending is NULL). */
kvf_status kvf_grad_finish(kvf_ctx *ctx, kvf_tensor *pending, const kvf_tensor *out);

/* For rules of ops whose input's gradient is their output's gradient g as it is (reshape,
 * same-dtype copy): when t has no gradient yet, make t's gradient g itself, read in t's
 * shape (g contiguous, t's dtype and element count), instead of a zeroed buffer that g is
 * then added into — the same numbers (0 + g; only a −0 in g stays −0, which no later sum
 * can turn into a different nonzero value) without a second buffer of g's size.
 * Safe because a rule runs after every consumer of its output (they were recorded later),
 * so g is final and only this rule reads it: gradients arriving at t later are added into
 * g's storage. t's gradient, when it exists, is never replaced (a parameter's, a recompute
 * input's made in the main region, or one a later consumer already accumulated into).
 * Returns true when t now shares g; false (nothing done): accumulate as usual. Off with
 * kvf_ctx_set_grad_sharing(ctx, false). */
bool kvf_grad_share(kvf_ctx *ctx, kvf_tensor *t, const kvf_tensor *g);

/* Whether g's block is a pooled one held by exactly one tensor (the rule's output). */
bool kvf_grad_sole(const kvf_tensor *g);
/* kvf_grad_share for a second tensor (a residual add handing g to both operands, which
 * checked kvf_grad_sole first and the order of the operands' uses: ops_math.c). Plain
 * kvf_grad_share refuses a block that another tensor holds as well. */
bool kvf_grad_share_again(kvf_ctx *ctx, kvf_tensor *t, const kvf_tensor *g);

/* For rules: dst += src where src's shape broadcasts to dst's (summing broadcast dims). */
kvf_status kvf_grad_accumulate(kvf_ctx *ctx, kvf_tensor *dst, const kvf_tensor *src);
/* t's gradient += g (g's shape broadcasting to t's, as kvf_grad_accumulate). When t has no
 * gradient yet, g (summed down) is written into a fresh buffer instead of being added to a
 * zeroed one: one pass fewer, the same numbers (0 + g). Nothing when t needs no gradient. */
kvf_status kvf_grad_add(kvf_ctx *ctx, kvf_tensor *t, const kvf_tensor *g);

#endif
