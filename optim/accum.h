/* accum.h — gradient accumulation over several micro-batches.
 * Gradients add up across backward calls until kvf_params_zero_grad, so accumulating N
 * micro-batches is: zero_grad, N × (forward, backward), then average, clip, step. Average
 * either by dividing each micro-batch loss by N before backward (nothing to call here), or
 * by one kvf_grad_accum_average(p, N) after the last backward — pick one, not both. The two
 * agree to float rounding, not bitwise; a run and its resume must use the same one. */
#ifndef KVF_OPTIM_ACCUM_H
#define KVF_OPTIM_ACCUM_H

#include "autograd/params.h"

/* g ← g / accum_steps (accum_steps ≥ 1; 1 leaves the gradients untouched). */
kvf_status kvf_grad_accum_average(kvf_params *p, int accum_steps);

#endif
