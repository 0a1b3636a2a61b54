/* generate.h — sampling text from a model: temperature (0 = greedy) and optional top-k,
 * seeded, the context cut to the model's max_seq_len. Each step runs the whole window
 * (no KV cache yet), which is plenty for the small models kvforge trains on a CPU. */
#ifndef KVF_TRAIN_GENERATE_H
#define KVF_TRAIN_GENERATE_H

#include <stdio.h>

#include "data/tokenizer.h"
#include "model/transformer.h"

struct kvf_generate_opts {
    int64_t max_new;
    double temperature;
    int64_t top_k; /* 0: whole vocabulary */
    uint64_t seed;
};
typedef struct kvf_generate_opts kvf_generate_opts;

/* Writes the decoded new text to out as it is produced. */
kvf_status kvf_generate(kvf_model *m, const kvf_tokenizer *tok, const char *prompt,
                        const kvf_generate_opts *o, FILE *out);

#endif
