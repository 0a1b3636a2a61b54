/* clip.h — whole-model gradient L2 norm, clipping and scaling over the flat grad buffer.
 * The norm is summed in double over 256 fixed chunks added in order, so it is the same
 * bits for any thread count. Clipping follows torch.nn.utils.clip_grad_norm_: scale by
 * max_norm / (norm + 1e-6) when that is < 1. A NaN/Inf norm is reported (finite = false)
 * and the gradients are left alone, so the trainer can skip the step and log it. */
#ifndef KVF_OPTIM_CLIP_H
#define KVF_OPTIM_CLIP_H

#include <stdbool.h>

#include "autograd/params.h"

struct kvf_clip_info {
    double norm;  /* global L2 norm before clipping (NaN/Inf when not finite) */
    bool finite;  /* false: some gradient is NaN/Inf; skip this step */
    bool clipped; /* gradients were scaled */
    double scale; /* factor applied (1 when not clipped) */
};
typedef struct kvf_clip_info kvf_clip_info;

/* ‖g‖₂ over every parameter's gradient (CPU params f32 or f64; device params f32 through
 * the backend's deterministic sum of squares). */
kvf_status kvf_grad_norm(const kvf_params *p, double *norm);

/* Norm, finiteness and, when max_norm > 0 and the norm is finite, clipping to max_norm.
 * max_norm 0 disables clipping (norm and finiteness only); negative is KVF_ERR_ARG. */
kvf_status kvf_clip_grad_norm(kvf_params *p, double max_norm, kvf_clip_info *info);
/* The same decision without the scaling pass: info->scale is the factor to hand to
 * kvf_optimizer_step_scaled (info->clipped says whether it is not 1). */
kvf_status kvf_clip_grad_norm_deferred(kvf_params *p, double max_norm, kvf_clip_info *info);

/* g ← factor·g over the whole gradient buffer (clipping, gradient accumulation). */
kvf_status kvf_grads_scale(kvf_params *p, double factor);

#endif
