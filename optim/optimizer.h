/* optimizer.h — AdamW and SGD over the flat parameter / gradient buffers of kvf_params.
 * PyTorch semantics (torch.optim.AdamW with decoupled weight decay; torch.optim.SGD with
 * momentum, dampening, nesterov and L2 weight decay). Per-parameter weight decay and lr
 * multiplier come from name rules: by default no decay on norms, biases and embeddings.
 * State (m, v: one flat buffer each, step count) is exposed for checkpoints so a resume is
 * bit-exact. CPU parameters (f32 or f64): AdamW and SGD, elementwise and deterministic for
 * any thread count. Device parameters (f32 masters, e.g. on CUDA): AdamW through the
 * backend's fused kernel (one launch per step, the same double arithmetic), moments on the
 * device. The optimizer never zeroes gradients. */
#ifndef KVF_OPTIM_OPTIMIZER_H
#define KVF_OPTIM_OPTIMIZER_H

#include <stdbool.h>
#include <stdint.h>

#include "autograd/params.h"

enum kvf_optim_kind { KVF_OPTIM_ADAMW, KVF_OPTIM_SGD, KVF_OPTIM_KIND_COUNT };
typedef enum kvf_optim_kind kvf_optim_kind;

struct kvf_optim_config {
    kvf_optim_kind kind;
    double weight_decay; /* AdamW: decoupled (p ← p − lr·wd·p); SGD: L2 (g ← g + wd·p) */
    /* AdamW */
    double beta1, beta2; /* each in [0, 1) */
    double eps;          /* ≥ 0 */
    /* SGD */
    double momentum;  /* ≥ 0; 0: plain SGD, no state */
    double dampening; /* ≥ 0 */
    bool nesterov;    /* needs momentum > 0 and dampening 0 */
    /* No weight decay on names containing "norm" or "embed" or ending in ".bias". */
    bool no_decay_defaults;
};
typedef struct kvf_optim_config kvf_optim_config;

/* PyTorch defaults. AdamW: betas (0.9, 0.999), eps 1e-8, weight_decay 0.01.
 * SGD: momentum 0, dampening 0, no nesterov, weight_decay 0. Both: no_decay_defaults on. */
kvf_optim_config kvf_optim_config_default(kvf_optim_kind kind);
/* KVF_ERR_ARG naming the setting ("optimizer: beta2 must be in [0, 1), got 1"). */
kvf_status kvf_optim_config_validate(const kvf_optim_config *c);

/* "adamw" / "sgd". */
kvf_status  kvf_optim_kind_parse(const char *name, kvf_optim_kind *out);
const char *kvf_optim_kind_name(kvf_optim_kind kind);

struct kvf_optimizer;
typedef struct kvf_optimizer kvf_optimizer;

/* params must be allocated (kvf_params_alloc) and outlive the optimizer; state lives on
 * their device.
 * State buffers are allocated zeroed; step count 0. NULL (error set) on failure. */
kvf_optimizer *kvf_optimizer_init(kvf_params *params, const kvf_optim_config *cfg);
void           kvf_optimizer_free(kvf_optimizer *o);

/* Group rule: every parameter whose name contains `match` gets this weight decay and lr
 * multiplier (effective lr = lr · lr_mult, used by the decay too). Rules are applied in
 * the order added, after the defaults, so a later match overrides an earlier one. */
kvf_status kvf_optimizer_add_rule(kvf_optimizer *o, const char *match, double weight_decay,
                                  double lr_mult);
/* The settings parameter i (kvf_params_at order) ends up with. */
kvf_status kvf_optimizer_param_settings(const kvf_optimizer *o, int i, double *weight_decay,
                                        double *lr_mult);

/* One update with this lr (from kvf_lr_at); increments the step count first, so the
 * AdamW bias correction uses t = step count after the call. KVF_ERR_ARG for an lr that
 * is negative or not finite. Does not look at the gradients' finiteness: see clip.h. */
kvf_status kvf_optimizer_step(kvf_optimizer *o, double lr);
/* The update as if the gradients had been multiplied by grad_scale (> 0) first: deferred
 * clipping (clip.h). The fused device AdamW reads them scaled, one pass over the buffer
 * fewer, and leaves them as they were; the CPU scales the buffer. */
kvf_status kvf_optimizer_step_scaled(kvf_optimizer *o, double lr, double grad_scale);

/* Checkpoint hooks. m: AdamW exp_avg / SGD momentum_buffer (NULL for SGD without momentum);
 * v: AdamW exp_avg_sq (NULL for SGD). Both are 1-D tensors of kvf_params_numel elements
 * on the parameters' device, in the params dtype, laid out like kvf_params_values; the names are the
 * PyTorch state keys. Write saved state into them, then kvf_optimizer_set_step. */
struct kvf_optim_state {
    kvf_tensor *m, *v;
    const char *m_name, *v_name;
    int64_t step; /* updates done so far */
};
typedef struct kvf_optim_state kvf_optim_state;

kvf_optim_state kvf_optimizer_state(const kvf_optimizer *o);
int64_t         kvf_optimizer_step_count(const kvf_optimizer *o);
kvf_status      kvf_optimizer_set_step(kvf_optimizer *o, int64_t step);
const kvf_optim_config *kvf_optimizer_config(const kvf_optimizer *o);

#endif
