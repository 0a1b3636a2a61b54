/* plot.h — `kvforge plot`: loss curves of several runs (metrics.jsonl files) in one SVG:
 * training loss as a line per run, validation loss as dots on the same colour, a legend
 * with each run's name (its folder) and last validation loss. */
#ifndef KVF_TRAIN_PLOT_H
#define KVF_TRAIN_PLOT_H

#include "autograd/error.h"

kvf_status kvf_plot_svg(const char *const *metrics_paths, int n, const char *out_path);

#endif
