/* run_config.h — a training run as a YAML file (docs/config.md lists every key).
 * kvf_run_config_load parses it against one schema table: an unknown key, a wrong type
 * or an impossible shape is an error naming the file, line and key. --set overrides use
 * the same table with dotted keys ("optim.lr=1e-3"). */
#ifndef KVF_RUN_CONFIG_H
#define KVF_RUN_CONFIG_H

#include "model/config.h"

#define KVF_PATH_MAX 1024

struct kvf_run_config {
    /* run */
    char name[128];
    char out_dir[KVF_PATH_MAX];
    int64_t seed;
    char device[16];      /* cpu | cuda */
    char dtype[16];       /* auto | f32 | bf16: compute dtype (masters stay f32) */
    char recompute[16];   /* none | blocks: activation recomputation (model/transformer.h) */
    /* model: base shape + attention variant name (model/variant.h) */
    kvf_model_config model;
    char attention[64];
    char norm[16], mlp[16], position[16]; /* mapped onto model.norm / mlp / pos */
    bool bias;
    char kv_producers[256]; /* "0,2,5": explicit CLA producer list, empty = variant's */
    char window[256];       /* one value for every layer or a comma list per layer */
    char match_params[64];  /* attention design whose parameter count d_ff is tuned to match */
    char init_from[KVF_PATH_MAX]; /* a model folder to start from (architecture and weights) */
    char model_key_given[64];     /* the first other model.* key set (refused with init_from) */
    bool tokenizer_given;         /* data.tokenizer was set (else init_from's tokenizer, or byte) */
    /* data */
    char train_data[KVF_PATH_MAX];
    char val_data[KVF_PATH_MAX]; /* empty: the tail of train_data */
    double val_fraction;
    char tokenizer[KVF_PATH_MAX]; /* "byte" or a tokenizer.json */
    int64_t seq_len;
    int64_t batch_size;
    /* optim */
    char optimizer[16];     /* adamw | sgd */
    double lr, min_lr, weight_decay, beta1, beta2, eps, momentum, grad_clip;
    char schedule[16];      /* constant | cosine | wsd */
    int64_t warmup_steps;
    double decay_fraction;
    int64_t grad_accum;
    /* train */
    int64_t steps;
    int64_t log_every, eval_every, eval_tokens, save_every;
};
typedef struct kvf_run_config kvf_run_config;

void kvf_run_config_defaults(kvf_run_config *c);
/* Load path (text != NULL: parse text instead, path names it in messages). */
kvf_status kvf_run_config_load(kvf_run_config *c, const char *path, const char *text);
/* The same, leaving the top-level sections named in skip (NULL-terminated) to the caller
 * (kvforge uptrain's convert and eval sections). */
kvf_status kvf_run_config_load_skip(kvf_run_config *c, const char *path, const char *text,
                                    const char *const *skip);
/* Apply one "section.key=value" override. */
kvf_status kvf_run_config_set(kvf_run_config *c, const char *assignment);
/* Cross-field checks and the model config derived from model.* + attention + lists. */
kvf_status kvf_run_config_finish(kvf_run_config *c, const char *path);

/* Every key with its type and one-line description, for docs and --help. */
struct kvf_run_key {
    const char *section, *key, *type, *help;
};
const struct kvf_run_key *kvf_run_config_keys(int *n);

#endif
