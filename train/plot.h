/* plot.h — `kvforge plot`: loss curves of several runs (metrics.jsonl files) in one SVG:
 * training loss as a line per run, validation loss as dots on the same colour, a legend
 * with each run's name (its folder) and last validation loss. */
#ifndef KVF_TRAIN_PLOT_H
#define KVF_TRAIN_PLOT_H

#include <stdio.h>

#include "autograd/error.h"

kvf_status kvf_plot_svg(const char *const *metrics_paths, int n, const char *out_path);

/* One markdown table row per run: design (from checkpoint/config.json beside the metrics
 * file, when present), parameters, KV-cache bytes per token, last train and val loss;
 * sorted by KV-cache bytes. */
kvf_status kvf_plot_summary(const char *const *metrics_paths, int n, FILE *out);

#endif
