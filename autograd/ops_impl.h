/* ops_impl.h — helpers shared by the ops_*.c files and the backward rules they define;
 * private to autograd/. */
#ifndef KVF_OPS_IMPL_H
#define KVF_OPS_IMPL_H

#include "backend.h"
#include "ops.h"
#include "tape.h"

/* Check that every operand exists, is floating (unless ids_ok) and shares ctx's device;
 * on failure records "<op>: ..." naming the operands' shapes and returns false. */
bool kvf_ops_check_inputs(kvf_ctx *ctx, const char *op, int n, kvf_tensor *const *xs);
bool kvf_ops_check_float(const char *op, const kvf_tensor *x, const char *what);
bool kvf_ops_check_ids(const char *op, const kvf_tensor *x, const char *what);
/* Run a backend call; on failure add nothing (the backend recorded why). */
#define KVF_OPS_CALL(expr) do { if ((expr) != KVF_OK) return NULL; } while (0)

/* Normalise a possibly negative axis; -1 if out of range. */
int kvf_ops_axis(int axis, int ndim);

/* An arena tensor shaped like x (contiguous, same dtype). */
kvf_tensor *kvf_ops_like(kvf_ctx *ctx, const kvf_tensor *x);

/* Backward rules, one per op id (tape.c builds the table). */
kvf_status kvf_reshape_backward(kvf_ctx *ctx, kvf_node *n);
kvf_status kvf_permute_backward(kvf_ctx *ctx, kvf_node *n);
kvf_status kvf_slice_backward(kvf_ctx *ctx, kvf_node *n);
kvf_status kvf_expand_backward(kvf_ctx *ctx, kvf_node *n);
kvf_status kvf_copy_backward(kvf_ctx *ctx, kvf_node *n);
kvf_status kvf_concat_backward(kvf_ctx *ctx, kvf_node *n);
kvf_status kvf_matmul_backward(kvf_ctx *ctx, kvf_node *n);
kvf_status kvf_binary_backward(kvf_ctx *ctx, kvf_node *n);
kvf_status kvf_unary_backward(kvf_ctx *ctx, kvf_node *n);
kvf_status kvf_sum_backward(kvf_ctx *ctx, kvf_node *n);
kvf_status kvf_softmax_backward(kvf_ctx *ctx, kvf_node *n);
kvf_status kvf_rmsnorm_backward(kvf_ctx *ctx, kvf_node *n);
kvf_status kvf_layernorm_backward(kvf_ctx *ctx, kvf_node *n);
kvf_status kvf_rope_backward(kvf_ctx *ctx, kvf_node *n);
kvf_status kvf_attention_backward(kvf_ctx *ctx, kvf_node *n);
kvf_status kvf_cross_entropy_backward(kvf_ctx *ctx, kvf_node *n);
kvf_status kvf_embedding_backward(kvf_ctx *ctx, kvf_node *n);
kvf_status kvf_swiglu_backward(kvf_ctx *ctx, kvf_node *n);
kvf_status kvf_recompute_backward(kvf_ctx *ctx, kvf_node *n);

#endif
