/* context.h — the per-step context: an arena for activations and the tape.
 * kvf_ctx_reset drops every tensor made since the last reset and the tape, keeping the
 * arena's memory for the next step. Gradient recording is on by default. */
#ifndef KVF_CONTEXT_H
#define KVF_CONTEXT_H

#include "tensor.h"

struct kvf_backend;
struct kvf_ctx;
typedef struct kvf_ctx kvf_ctx;

kvf_ctx *kvf_ctx_init(kvf_device device); /* NULL (error set) if the backend is not built */
void     kvf_ctx_free(kvf_ctx *ctx);
void     kvf_ctx_reset(kvf_ctx *ctx);

const struct kvf_backend *kvf_ctx_backend(const kvf_ctx *ctx);
kvf_device kvf_ctx_device(const kvf_ctx *ctx);

/* Returns the previous setting. With grad off, ops record nothing (evaluation). */
bool kvf_ctx_set_grad(kvf_ctx *ctx, bool enabled);
bool kvf_ctx_grad_enabled(const kvf_ctx *ctx);

/* Gradient buffer sharing (on by default; returns the previous setting): a view's rule
 * hands its gradient to its input instead of adding it into a fresh zeroed buffer, and
 * kvf_cross_entropy_inplace turns its logits into their gradient (tape.h, ops.h). The
 * numbers are the same either way; off is the reference the tests compare with, and
 * keeps every intermediate tensor's ->grad its own after backward. */
bool kvf_ctx_set_grad_sharing(kvf_ctx *ctx, bool enabled);
bool kvf_ctx_grad_sharing(const kvf_ctx *ctx);

/* Bytes of arena memory in use / reserved (for memory reports). Both count the main and
 * the scratch region (recompute.h). peak: the most bytes in use at once since the ctx was
 * made or the last peak_reset (resets keep it: it is the high-water mark of the steps). */
size_t kvf_ctx_arena_used(const kvf_ctx *ctx);
size_t kvf_ctx_arena_reserved(const kvf_ctx *ctx);
size_t kvf_ctx_arena_peak(const kvf_ctx *ctx);
void   kvf_ctx_arena_peak_reset(kvf_ctx *ctx);

/* True while a recompute rule re-runs a forward during backward (recompute.h): code with
 * side effects besides computing tensors (statistics hooks) skips them then. */
bool kvf_ctx_recomputing(const kvf_ctx *ctx);
/* Allocations into the scratch region (on: a checkpointed block's runs, rewound after
 * each) or the main one (off: they live until the next reset); returns the previous
 * setting. A cache that must outlive the block switches to main around its allocation. */
bool kvf_ctx_use_scratch(kvf_ctx *ctx, bool on);
/* Changes at every reset and is unique across the process's ctxs: arena tensors made
 * under one generation live as long as it stays the ctx's. */
uint64_t kvf_ctx_generation(const kvf_ctx *ctx);

/* New arena tensors on the ctx's device, contiguous. new: uninitialised. */
kvf_tensor *kvf_tensor_new(kvf_ctx *ctx, kvf_dtype dtype, int ndim, const int64_t *shape);
kvf_tensor *kvf_tensor_zeros(kvf_ctx *ctx, kvf_dtype dtype, int ndim, const int64_t *shape);
kvf_tensor *kvf_tensor_full(kvf_ctx *ctx, kvf_dtype dtype, int ndim, const int64_t *shape, double v);
/* Copy host data (in the tensor's dtype, row-major) into a new tensor. */
kvf_tensor *kvf_tensor_from_host(kvf_ctx *ctx, kvf_dtype dtype, int ndim, const int64_t *shape,
                                 const void *host);
/* A view header in the arena sharing t's storage (shape/strides to be set by the caller). */
kvf_tensor *kvf_tensor_view_header(kvf_ctx *ctx, const kvf_tensor *t);

/* Copy a tensor (any layout) to host memory in row-major order, in dtype t->dtype. */
kvf_status kvf_tensor_to_host(const kvf_tensor *t, void *host, size_t nbytes);

/* The value of a one-element tensor (any float or id dtype, any device). */
kvf_status kvf_tensor_item(const kvf_tensor *t, double *value);

/* Raw arena memory, aligned to 64 bytes, on the ctx's device / on the host; both are
 * released by kvf_ctx_reset. */
void *kvf_ctx_alloc(kvf_ctx *ctx, size_t nbytes);
void *kvf_ctx_alloc_host(kvf_ctx *ctx, size_t nbytes);

#endif
