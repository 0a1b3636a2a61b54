/* batch.h — deterministic batches of training windows over a token stream, the train /
 * validation split, per-rank sharding, and the sequential evaluation windows of `kvforge eval`.
 *
 * Training windows: each window is T+1 consecutive tokens of the training part, starting at a
 * position drawn uniformly from [0, n_train - T - 1] with kvf_rng (seeded with opts.seed);
 * inputs are its first T tokens, targets its last T (inputs shifted by one). Windows are drawn
 * with replacement. All ranks share one sequence of draws: rank r of W takes draws r, r+W,
 * r+2W, ..., so ranks never take the same draw, and the windows of ranks 0..W-1 together are
 * exactly the windows a single process would draw. Batch k of a rank holds its draws
 * k*B .. k*B+B-1 (in its own order).
 *
 * Split: the last floor(n * val_fraction) tokens are the validation part and the rest the
 * training part (no window crosses the boundary); or an explicit validation stream is given.
 *
 * Resume: kvf_batch_state is a plain struct of fixed-width fields (no pointers) — write its
 * bytes beside a checkpoint; kvf_batcher_set_state on a batcher built with the same tokens and
 * options continues bit-for-bit.
 *
 * Evaluation windows (DESIGN.md §8): over N tokens with window W, windows start at 0, W, 2W, ...
 * while start + W + 1 <= N; window k has inputs tokens[kW .. kW+W) and targets
 * tokens[kW+1 .. kW+W+1), so there are floor((N-1)/W) windows (0 when N <= W) and each
 * predicts W tokens. The batcher only references its token arrays: keep them alive. */
#ifndef KVF_DATA_BATCH_H
#define KVF_DATA_BATCH_H

#include <stdint.h>

#include "autograd/error.h"

struct kvf_batch_opts {
    int64_t batch_size;        /* B: windows per batch (per rank), >= 1 */
    int64_t seq_len;           /* T: input tokens per window, >= 1 */
    uint64_t seed;
    double val_fraction;       /* in [0, 1): held-out tail of the stream; 0 = none */
    const int32_t *val_tokens; /* or an explicit validation stream (val_fraction must be 0) */
    int64_t val_count;
    int rank;                  /* 0 <= rank < world_size */
    int world_size;            /* processes drawing from the same sequence; 0 means 1 */
};
typedef struct kvf_batch_opts kvf_batch_opts;

#define KVF_BATCH_STATE_MAGIC 0x4246564bu /* "KVFB" little-endian */
#define KVF_BATCH_STATE_VERSION 1u

struct kvf_batch_state {
    uint32_t magic;
    uint32_t version;
    uint64_t rng[4];       /* kvf_rng state after the draws consumed so far */
    uint64_t draws;        /* draws of the shared sequence consumed (this rank's and skipped) */
    uint64_t batches;      /* batches this rank has taken */
    uint64_t seed;         /* the options the state belongs to, checked on restore */
    int64_t train_tokens;
    int64_t seq_len;
    int32_t rank;
    int32_t world_size;
};
typedef struct kvf_batch_state kvf_batch_state;

typedef struct kvf_batcher kvf_batcher;

/* A batcher over tokens[0..n). NULL (error recorded) on bad options, or when the training part
 * (or a validation part) is shorter than T+1 tokens. */
kvf_batcher *kvf_batcher_init(const int32_t *tokens, int64_t n, const kvf_batch_opts *opts);
void         kvf_batcher_free(kvf_batcher *b);

/* The next batch: inputs and targets are B*T ids each, row-major [B, T]; starts (may be NULL)
 * gets the B window start positions within the training part. */
kvf_status kvf_batcher_next(kvf_batcher *b, int32_t *inputs, int32_t *targets, int64_t *starts);

void       kvf_batcher_get_state(const kvf_batcher *b, kvf_batch_state *state);
/* KVF_ERR_STATE when the state is not a batch state or belongs to other options / data. */
kvf_status kvf_batcher_set_state(kvf_batcher *b, const kvf_batch_state *state);

/* The two parts (validation: NULL and 0 when there is none). */
const int32_t *kvf_batcher_train(const kvf_batcher *b, int64_t *n);
const int32_t *kvf_batcher_val(const kvf_batcher *b, int64_t *n);

/* Number of evaluation windows of W tokens over n tokens (see above). */
int64_t kvf_eval_window_count(int64_t n, int64_t W);
/* Windows first .. first+count-1 of that sequence into inputs / targets ([count, W] each). */
kvf_status kvf_eval_windows(const int32_t *tokens, int64_t n, int64_t W, int64_t first,
                            int64_t count, int32_t *inputs, int32_t *targets);

#endif
