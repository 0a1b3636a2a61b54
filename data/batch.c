/* batch.c — deterministic training windows, split, rank sharding, evaluation windows (batch.h). */
#include "batch.h"

#include <stdlib.h>
#include <string.h>

#include "autograd/rng.h"

struct kvf_batcher {
    const int32_t *train;
    int64_t n_train;
    const int32_t *val;
    int64_t n_val;
    int64_t B, T;
    uint64_t seed;
    int rank, world;
    kvf_rng rng;
    uint64_t draws;
    uint64_t batches;
};

kvf_batcher *kvf_batcher_init(const int32_t *tokens, int64_t n, const kvf_batch_opts *o) {
    KVF_CHECK_NULL(o, KVF_ERR_ARG, "batcher: no options");
    KVF_CHECK_NULL(n >= 0 && (tokens || n == 0), KVF_ERR_ARG, "batcher: bad token stream");
    KVF_CHECK_NULL(o->batch_size >= 1 && o->seq_len >= 1, KVF_ERR_ARG,
                   "batcher: batch size %lld and sequence length %lld must be >= 1",
                   (long long)o->batch_size, (long long)o->seq_len);
    int world = o->world_size == 0 ? 1 : o->world_size;
    KVF_CHECK_NULL(world >= 1 && o->rank >= 0 && o->rank < world, KVF_ERR_ARG,
                   "batcher: rank %d outside [0, world size %d)", o->rank, world);
    KVF_CHECK_NULL(o->val_fraction >= 0.0 && o->val_fraction < 1.0, KVF_ERR_ARG,
                   "batcher: validation fraction %g outside [0, 1)", o->val_fraction);
    KVF_CHECK_NULL(!(o->val_tokens && o->val_fraction > 0.0), KVF_ERR_ARG,
                   "batcher: give either a validation fraction or a validation stream, not both");
    KVF_CHECK_NULL(o->val_count >= 0 && (o->val_tokens || o->val_count == 0), KVF_ERR_ARG,
                   "batcher: bad validation stream");
    int64_t T = o->seq_len;
    int64_t n_val = o->val_tokens ? 0 : (int64_t)((double)n * o->val_fraction);
    int64_t n_train = n - n_val;
    KVF_CHECK_NULL(n_train >= T + 1, KVF_ERR_ARG,
                   "batcher: the training stream has %lld tokens, fewer than seq_len + 1 = %lld "
                   "(stream of %lld tokens, %lld held out for validation)",
                   (long long)n_train, (long long)(T + 1), (long long)n, (long long)n_val);
    const int32_t *val = o->val_tokens ? o->val_tokens : (n_val ? tokens + n_train : NULL);
    if (o->val_tokens) n_val = o->val_count;
    KVF_CHECK_NULL(!val || n_val >= T + 1, KVF_ERR_ARG,
                   "batcher: the validation stream has %lld tokens, fewer than seq_len + 1 = %lld",
                   (long long)n_val, (long long)(T + 1));
    kvf_batcher *b = calloc(1, sizeof *b);
    KVF_CHECK_NULL(b, KVF_ERR_OOM, "batcher: out of memory");
    *b = (kvf_batcher){.train = tokens, .n_train = n_train, .val = val, .n_val = val ? n_val : 0,
                       .B = o->batch_size, .T = T, .seed = o->seed, .rank = o->rank, .world = world};
    kvf_rng_init(&b->rng, o->seed);
    return b;
}

void kvf_batcher_free(kvf_batcher *b) { free(b); }

/* The start of draw number b->draws of the shared sequence. */
static int64_t draw(kvf_batcher *b) {
    b->draws++;
    return (int64_t)kvf_rng_below(&b->rng, (uint64_t)(b->n_train - b->T));
}

static int64_t take(kvf_batcher *b) {
    while (b->draws % (uint64_t)b->world != (uint64_t)b->rank) (void)draw(b);
    return draw(b);
}

kvf_status kvf_batcher_next(kvf_batcher *b, int32_t *inputs, int32_t *targets, int64_t *starts) {
    KVF_CHECK(b, KVF_ERR_ARG, "batcher: NULL batcher");
    int64_t T = b->T;
    for (int64_t i = 0; i < b->B; i++) {
        int64_t s = take(b);
        if (starts) starts[i] = s;
        const int32_t *w = b->train + s;
        if (inputs) memcpy(inputs + i * T, w, (size_t)T * sizeof *w);
        if (targets) memcpy(targets + i * T, w + 1, (size_t)T * sizeof *w);
    }
    b->batches++;
    return KVF_OK;
}

void kvf_batcher_get_state(const kvf_batcher *b, kvf_batch_state *st) {
    memset(st, 0, sizeof *st);
    st->magic = KVF_BATCH_STATE_MAGIC;
    st->version = KVF_BATCH_STATE_VERSION;
    memcpy(st->rng, b->rng.s, sizeof st->rng);
    st->draws = b->draws;
    st->batches = b->batches;
    st->seed = b->seed;
    st->train_tokens = b->n_train;
    st->seq_len = b->T;
    st->rank = b->rank;
    st->world_size = b->world;
}

kvf_status kvf_batcher_set_state(kvf_batcher *b, const kvf_batch_state *st) {
    KVF_CHECK(b && st, KVF_ERR_ARG, "batcher: NULL state");
    KVF_CHECK(st->magic == KVF_BATCH_STATE_MAGIC, KVF_ERR_STATE,
              "batcher: not a data loader state (magic 0x%08x, expected 0x%08x)", st->magic,
              KVF_BATCH_STATE_MAGIC);
    KVF_CHECK(st->version == KVF_BATCH_STATE_VERSION, KVF_ERR_STATE,
              "batcher: data loader state version %u, expected %u", st->version,
              KVF_BATCH_STATE_VERSION);
#define SAME(field, value, what)                                                                   \
    KVF_CHECK((int64_t)st->field == (int64_t)(value), KVF_ERR_STATE,                              \
              "batcher: the saved data loader state has " what " %lld, this loader %lld",         \
              (long long)st->field, (long long)(value))
    SAME(seed, b->seed, "seed");
    SAME(train_tokens, b->n_train, "training tokens");
    SAME(seq_len, b->T, "seq_len");
    SAME(rank, b->rank, "rank");
    SAME(world_size, b->world, "world size");
#undef SAME
    KVF_CHECK(st->rng[0] | st->rng[1] | st->rng[2] | st->rng[3], KVF_ERR_STATE,
              "batcher: the saved data loader state has an all-zero RNG state");
    memcpy(b->rng.s, st->rng, sizeof st->rng);
    b->draws = st->draws;
    b->batches = st->batches;
    return KVF_OK;
}

const int32_t *kvf_batcher_train(const kvf_batcher *b, int64_t *n) {
    if (n) *n = b->n_train;
    return b->train;
}

const int32_t *kvf_batcher_val(const kvf_batcher *b, int64_t *n) {
    if (n) *n = b->n_val;
    return b->val;
}

int64_t kvf_eval_window_count(int64_t n, int64_t W) {
    if (W < 1 || n <= W) return 0;
    return (n - 1) / W;
}

kvf_status kvf_eval_windows(const int32_t *tokens, int64_t n, int64_t W, int64_t first,
                            int64_t count, int32_t *inputs, int32_t *targets) {
    KVF_CHECK(W >= 1, KVF_ERR_ARG, "eval windows: window length %lld must be >= 1", (long long)W);
    int64_t total = kvf_eval_window_count(n, W);
    KVF_CHECK(first >= 0 && count >= 0 && first <= total - count, KVF_ERR_ARG,
              "eval windows: windows %lld..%lld requested, but %lld tokens give %lld windows of %lld",
              (long long)first, (long long)(first + count - 1), (long long)n, (long long)total,
              (long long)W);
    for (int64_t k = 0; k < count; k++) {
        const int32_t *w = tokens + (first + k) * W;
        if (inputs) memcpy(inputs + k * W, w, (size_t)W * sizeof *w);
        if (targets) memcpy(targets + k * W, w + 1, (size_t)W * sizeof *w);
    }
    return KVF_OK;
}
