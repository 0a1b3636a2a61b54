/* convert.h — checkpoint → checkpoint conversions that shrink the KV cache (DESIGN.md §4).
 * Each conversion is a function from a source model (+ calibration statistics when its
 * method needs them) to a new model; kvf_convert_run is the driver behind
 * `kvforge convert`: load, calibrate, convert, report KV-cache bytes per token before and
 * after (and validation loss with an eval file), save atomically — no partial output
 * folder on any failure. Exact steps are exact in code; lossy ones report their error. */
#ifndef KVF_CONVERT_CONVERT_H
#define KVF_CONVERT_CONVERT_H

#include <stdio.h>

#include "calib.h"
#include "model/transformer.h"

enum kvf_convert_target { KVF_CONVERT_GQA, KVF_CONVERT_MQA, KVF_CONVERT_MLA, KVF_CONVERT_CLA };

struct kvf_convert_opts {
    enum kvf_convert_target to;
    char method[16];       /* gqa: mean|first|random|calib; cla: producer|mean|calib */
    int kv_heads;          /* gqa */
    /* mla */
    int kv_rank;           /* R: cached latent width per token per layer */
    int rope_dim;          /* D; -1 = all (partial-rope only) */
    char style[16];        /* deepseek | partial-rope */
    char rope_select[16];  /* norm | high | low | uniform (partial-rope) */
    int freqfold;          /* deepseek: FreqFold F (1 = exact RoRoPE per frequency) */
    int q_rank;            /* deepseek: low-rank queries (0: none) */
    /* cla */
    int share;             /* producer every K layers */
    char producers[256];   /* or an explicit list "0,2,5" */
    /* data */
    const char *calib_path;
    int64_t calib_tokens;  /* default 65536 */
    int64_t calib_seq_len; /* default 256 */
    const char *eval_path;
    int64_t eval_seq_len;  /* default: min(max_seq_len, 1024) */
    int64_t eval_tokens;   /* 0: all */
    kvf_device device;
    uint64_t seed;         /* random init method */
    kvf_dtype save_dtype;  /* KVF_DTYPE_F32 default */
};
typedef struct kvf_convert_opts kvf_convert_opts;

void kvf_convert_opts_defaults(kvf_convert_opts *o);

/* The driver. log receives progress (a line per layer) and the before/after report. */
kvf_status kvf_convert_run(const char *src_dir, const char *dst_dir, const kvf_convert_opts *o,
                           FILE *log);

/* The conversions; calib is NULL when the method needs none. Each returns a new model on
 * src's device or NULL with an error naming the option that cannot work. */
kvf_model *kvf_convert_gqa(const kvf_model *src, const kvf_convert_opts *o, const kvf_calib *calib, FILE *log);
kvf_model *kvf_convert_cla(const kvf_model *src, const kvf_convert_opts *o, const kvf_calib *calib, FILE *log);
kvf_model *kvf_convert_mla_deepseek(const kvf_model *src, const kvf_convert_opts *o, const kvf_calib *calib, FILE *log);
kvf_model *kvf_convert_mla_partial(const kvf_model *src, const kvf_convert_opts *o, const kvf_calib *calib, FILE *log);

/* Whether a conversion needs calibration statistics. */
bool kvf_convert_needs_calib(const kvf_convert_opts *o);

#endif
