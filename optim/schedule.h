/* schedule.h — learning-rate schedules as a pure function of the step.
 * kvf_lr_at(s, step) gives the lr for the 0-based step about to be taken: a linear warmup
 * (step+1)/warmup_steps·lr for step < warmup_steps, then constant, cosine decay to min_lr,
 * or WSD (stable, then linear or cosine decay to min_lr over the last decay_fraction of
 * total_steps). Formulas in docs/optim.md. No state, so resuming needs only the step. */
#ifndef KVF_OPTIM_SCHEDULE_H
#define KVF_OPTIM_SCHEDULE_H

#include <stdint.h>

#include "autograd/error.h"

enum kvf_lr_kind { KVF_LR_CONSTANT, KVF_LR_COSINE, KVF_LR_WSD, KVF_LR_KIND_COUNT };
typedef enum kvf_lr_kind kvf_lr_kind;

/* Shape of the WSD decay phase. */
enum kvf_lr_decay { KVF_LR_DECAY_LINEAR, KVF_LR_DECAY_COSINE, KVF_LR_DECAY_COUNT };
typedef enum kvf_lr_decay kvf_lr_decay;

struct kvf_lr_schedule {
    kvf_lr_kind kind;
    double lr;             /* peak (base) lr, ≥ 0 */
    double min_lr;         /* end of cosine / WSD decay, 0 ≤ min_lr ≤ lr */
    int64_t warmup_steps;  /* ≥ 0; 0: no warmup */
    int64_t total_steps;   /* > 0 for cosine and WSD; 0 allowed for constant (unbounded) */
    double decay_fraction; /* WSD: share of total_steps spent decaying, in [0, 1] */
    kvf_lr_decay decay;    /* WSD decay shape (default linear) */
};
typedef struct kvf_lr_schedule kvf_lr_schedule;

/* Defaults: kind given, lr 3e-4, min_lr 0, no warmup, total 0, decay_fraction 0.2, linear. */
kvf_lr_schedule kvf_lr_schedule_default(kvf_lr_kind kind);

/* KVF_ERR_ARG with a message naming the offending setting ("lr schedule: warmup_steps
 * (200) exceeds total_steps (100)"). */
kvf_status kvf_lr_schedule_validate(const kvf_lr_schedule *s);

/* lr for the 0-based step. Assumes a validated schedule; steps < 0 count as 0, steps
 * ≥ total_steps give min_lr (cosine, WSD). */
double kvf_lr_at(const kvf_lr_schedule *s, int64_t step);

/* "constant" / "cosine" / "wsd" and "linear" / "cosine"; KVF_ERR_ARG naming the choices. */
kvf_status  kvf_lr_kind_parse(const char *name, kvf_lr_kind *out);
const char *kvf_lr_kind_name(kvf_lr_kind kind);
kvf_status  kvf_lr_decay_parse(const char *name, kvf_lr_decay *out);
const char *kvf_lr_decay_name(kvf_lr_decay decay);

/* First step of the WSD decay phase: total_steps − round(decay_fraction·total_steps). */
int64_t kvf_lr_wsd_decay_start(const kvf_lr_schedule *s);

#endif
