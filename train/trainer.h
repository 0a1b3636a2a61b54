/* trainer.h — the training loop behind `kvforge train`: data, model, optimizer, schedule,
 * progress lines (step, loss, lr, grad norm, tokens/s, ETA), metrics JSONL, periodic
 * evaluation, atomic checkpoints in HF layout plus the optimizer / data state, and
 * bit-exact resume on the CPU. The run folder is out_dir/name:
 *   config.yaml        the config the run started from
 *   metrics.jsonl      one JSON object per logged step and per evaluation
 *   checkpoint/        config.json, model.safetensors, tokenizer file, trainer_state.safetensors */
#ifndef KVF_TRAIN_TRAINER_H
#define KVF_TRAIN_TRAINER_H

#include <stdio.h>

#include "run_config.h"

struct kvf_train_opts {
    const char *config_path; /* for messages and the copy in the run folder */
    const char *resume_dir;  /* continue this run folder, or NULL */
    FILE *log;               /* progress lines (stderr when NULL) */
    int64_t stop_after;      /* > 0: stop (and save) after this many steps of this call */
};
typedef struct kvf_train_opts kvf_train_opts;

struct kvf_train_result {
    int64_t steps_done, skipped;
    double last_loss, val_loss; /* val_loss NaN when there was no validation data */
    char run_dir[KVF_PATH_MAX];
};
typedef struct kvf_train_result kvf_train_result;

kvf_status kvf_train(const kvf_run_config *cfg, const kvf_train_opts *opts, kvf_train_result *res);

#endif
