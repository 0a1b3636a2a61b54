#include "accum.h"

#include "clip.h"

kvf_status kvf_grad_accum_average(kvf_params *p, int accum_steps) {
    KVF_CHECK(accum_steps >= 1, KVF_ERR_ARG,
              "grad accumulation: accum_steps must be >= 1, got %d", accum_steps);
    if (accum_steps == 1) return KVF_OK;
    return kvf_grads_scale(p, 1.0 / (double)accum_steps);
}
