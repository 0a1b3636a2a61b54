/* metrics.h — the run's metrics.jsonl: one JSON object per logged step
 * {"step", "loss", "lr", "grad_norm", "tokens_per_s", "flops_per_s", "memory_bytes",
 * "arena_peak_bytes"} (memory_bytes: arena reserved + parameters, gradients and AdamW
 * moments; arena_peak_bytes: the most activation bytes in use at once so far),
 * per evaluation {"step", "val_loss", "val_ppl", "val_tokens"} and per skipped step
 * {"step", "skipped": true, ...}. Reopening for a resume keeps the lines up to that step. */
#ifndef KVF_TRAIN_METRICS_H
#define KVF_TRAIN_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "autograd/error.h"

typedef struct kvf_metrics kvf_metrics;

kvf_metrics *kvf_metrics_open(const char *path, int64_t keep_until_step);
void         kvf_metrics_close(kvf_metrics *m);
kvf_status kvf_metrics_step(kvf_metrics *m, int64_t step, double loss, double lr, double grad_norm,
                            double tokens_per_s, double flops_per_s, size_t memory_bytes,
                            size_t arena_peak_bytes);
kvf_status kvf_metrics_eval(kvf_metrics *m, int64_t step, double loss, double ppl, int64_t tokens);
kvf_status kvf_metrics_skip(kvf_metrics *m, int64_t step, double loss, double grad_norm);

#endif
