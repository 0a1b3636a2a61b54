/* train_state.h — the part of a checkpoint that makes --resume exact: optimizer moments,
 * step count and the data loader's state, in trainer_state.safetensors beside the model
 * (tensors named like PyTorch's optimizer state, the rest as header metadata). */
#ifndef KVF_TRAIN_STATE_H
#define KVF_TRAIN_STATE_H

#include "data/batch.h"
#include "optim/optimizer.h"

struct kvf_train_state_info {
    int64_t step;
};
typedef struct kvf_train_state_info kvf_train_state_info;

kvf_status kvf_train_state_save(const char *dir, const kvf_optimizer *opt, int64_t step,
                                const kvf_batch_state *batch);
/* Restores the optimizer's moments and step; errors name the file when it does not match. */
kvf_status kvf_train_state_load(const char *dir, kvf_optimizer *opt, kvf_train_state_info *info,
                                kvf_batch_state *batch);

#endif
