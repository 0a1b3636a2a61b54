/* eval.h — mean next-token loss over a token stream with the exact window definition of
 * DESIGN.md §8: windows of W input tokens start at 0, W, 2W, … while start + W + 1 <= N,
 * each predicting its next W tokens; loss = mean cross-entropy (nats) over every predicted
 * token, ppl = exp(loss). Runs with grad off, batch_size windows per forward. */
#ifndef KVF_TRAIN_EVAL_H
#define KVF_TRAIN_EVAL_H

#include "model/transformer.h"

struct kvf_eval_result {
    double loss, ppl;
    int64_t tokens; /* predicted tokens */
    int64_t window; /* W used */
};
typedef struct kvf_eval_result kvf_eval_result;

/* tokens[0..n) (cut to max_tokens when > 0). KVF_ERR_ARG when no window fits. */
kvf_status kvf_eval_stream(kvf_model *m, kvf_ctx *ctx, const int32_t *tokens, int64_t n,
                           int64_t seq_len, int64_t max_tokens, int64_t batch_size,
                           kvf_eval_result *out);

/* The same for a model folder and a data file (text/JSONL tokenized with the folder's
 * tokenizer, or an llm.c shard) on device, computing in cdt (f32, or bf16 on a GPU);
 * seq_len 0: min(max_seq_len, 1024). */
kvf_status kvf_eval_dir(const char *model_dir, const char *data, int64_t seq_len, int64_t max_tokens,
                        int64_t batch_size, kvf_device device, kvf_dtype cdt, kvf_eval_result *out);

#endif
