#include "eval.h"

#include <math.h>
#include <stdlib.h>

#include "autograd/ops.h"
#include "data/batch.h"
#include "data/corpus.h"
#include "data/tokenizer_load.h"
#include "model/checkpoint.h"

kvf_status kvf_eval_stream(kvf_model *m, kvf_ctx *ctx, const int32_t *tokens, int64_t n,
                           int64_t seq_len, int64_t max_tokens, int64_t batch_size,
                           kvf_eval_result *out) {
    if (max_tokens > 0 && n > max_tokens) n = max_tokens;
    KVF_CHECK(seq_len >= 1 && seq_len <= m->cfg.max_seq_len, KVF_ERR_ARG,
              "eval: window %lld outside 1..max_seq_len %lld", (long long)seq_len,
              (long long)m->cfg.max_seq_len);
    int64_t windows = kvf_eval_window_count(n, seq_len);
    KVF_CHECK(windows > 0, KVF_ERR_ARG,
              "eval: %lld tokens hold no window of %lld (+1 target) tokens", (long long)n,
              (long long)seq_len);
    if (batch_size < 1) batch_size = 1;
    int32_t *in = malloc(sizeof(int32_t) * (size_t)(batch_size * seq_len));
    int32_t *tg = malloc(sizeof(int32_t) * (size_t)(batch_size * seq_len));
    if (!in || !tg) {
        free(in);
        free(tg);
        return kvf_error_set(KVF_ERR_OOM, "eval: out of host memory");
    }
    bool was = kvf_ctx_set_grad(ctx, false);
    double sum = 0; /* sum of per-token losses, in double */
    kvf_status st = KVF_OK;
    for (int64_t w = 0; w < windows && st == KVF_OK; w += batch_size) {
        int64_t b = windows - w < batch_size ? windows - w : batch_size;
        st = kvf_eval_windows(tokens, n, seq_len, w, b, in, tg);
        if (st != KVF_OK) break;
        kvf_ctx_reset(ctx);
        int64_t shape[2] = {b, seq_len};
        kvf_tensor *ids = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, shape, in);
        kvf_tensor *tgt = kvf_tensor_from_host(ctx, KVF_DTYPE_I32, 2, shape, tg);
        kvf_tensor *loss = ids && tgt ? kvf_model_loss(m, ctx, ids, tgt) : NULL;
        double v = 0;
        if (!loss) {
            st = kvf_error_code();
            break;
        }
        st = kvf_tensor_item(loss, &v);
        sum += v * (double)(b * seq_len);
    }
    kvf_ctx_reset(ctx);
    kvf_ctx_set_grad(ctx, was);
    free(in);
    free(tg);
    if (st != KVF_OK) return st;
    out->tokens = windows * seq_len;
    out->window = seq_len;
    out->loss = sum / (double)out->tokens;
    out->ppl = exp(out->loss);
    KVF_CHECK(isfinite(out->loss), KVF_ERR_NUMERIC, "eval: the loss is not finite (%g)", out->loss);
    return KVF_OK;
}

kvf_status kvf_eval_dir(const char *model_dir, const char *data, int64_t seq_len, int64_t max_tokens,
                        int64_t batch_size, kvf_device device, kvf_dtype cdt, kvf_eval_result *out) {
    kvf_tokenizer *tok = kvf_tokenizer_open(model_dir);
    if (!tok) return kvf_error_code();
    kvf_model *m = kvf_checkpoint_load(model_dir, device);
    kvf_status st = m ? kvf_model_set_compute_dtype(m, cdt) : kvf_error_code();
    kvf_token_stream ts = {0};
    kvf_corpus_opts co = {.tok = tok, .max_tokens = max_tokens};
    kvf_ctx *ctx = NULL;
    if (st == KVF_OK && !(ctx = kvf_ctx_init(device))) st = kvf_error_code();
    if (st == KVF_OK) st = kvf_corpus_read(data, &co, &ts);
    if (st == KVF_OK) {
        int64_t W = seq_len ? seq_len : (m->cfg.max_seq_len < 1024 ? m->cfg.max_seq_len : 1024);
        st = kvf_eval_stream(m, ctx, ts.data, ts.count, W, max_tokens, batch_size, out);
    }
    kvf_ctx_free(ctx);
    kvf_ids_free(&ts);
    kvf_model_free(m);
    kvf_tokenizer_free(tok);
    return st;
}
