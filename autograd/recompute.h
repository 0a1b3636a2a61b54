/* recompute.h — activation recomputation (gradient checkpointing) for any function of
 * tensors. kvf_recompute runs fn once in the forward keeping only its outputs: fn's
 * intermediates are made in the ctx's scratch region and dropped when fn returns, the
 * outputs are copied into the main region, and one tape node (KVF_OP_RECOMPUTE) stands
 * for all of fn. When backward reaches that node, it runs fn again on the same inputs with
 * gradients recorded on a tape of its own (again in scratch), walks that tape with the
 * outputs' gradients, then rewinds scratch — so the memory of fn's activations and of
 * their gradients is held for one function at a time, not for the whole step.
 *
 * Contract for fn:
 *   - a pure function of in[], *ud and parameters (tensors that own their gradient, as in
 *     params.h): the second run must do the same ops on the same values, so it computes
 *     the same floats and the gradients are bit-for-bit those of a plain run;
 *   - every other tensor made before the call that needs a gradient must come in through
 *     in[] (its gradient then lives in the main region); fn reading such a tensor any
 *     other way is an error of kvf_recompute, named there;
 *   - out[] are made by fn (not inputs or parameters, no two the same);
 *   - side effects other than tensors (statistics hooks) check kvf_ctx_recomputing and
 *     skip the second run.
 * With gradient recording off, or inside another recompute (no nesting: the inner
 * function is then recorded op by op on the outer one's tape), fn simply runs.
 *
 * Memory: outputs are contiguous copies; an input or output may be NULL. */
#ifndef KVF_RECOMPUTE_H
#define KVF_RECOMPUTE_H

#include "context.h"

/* Fills out[0..n_out) from in[0..n_in) (the counts are those given to kvf_recompute);
 * returns KVF_OK or a status with the error recorded. */
typedef kvf_status (*kvf_recompute_fn)(kvf_ctx *ctx, const void *ud, kvf_tensor *const *in,
                                       kvf_tensor **out);

/* Runs fn as above. ud (ud_size bytes) is copied, so it may live on the caller's stack. */
kvf_status kvf_recompute(kvf_ctx *ctx, kvf_recompute_fn fn, const void *ud, size_t ud_size,
                         int n_in, kvf_tensor *const *in, int n_out, kvf_tensor **out);

#endif
