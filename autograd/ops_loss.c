/* STUB: to be implemented */
#include "ops_impl.h"

kvf_tensor *kvf_cross_entropy(kvf_ctx *ctx, kvf_tensor *logits, kvf_tensor *targets, int64_t ignore_index) {
    (void)ctx;
    kvf_error_set(KVF_ERR_UNSUPPORTED, "cross_entropy: not implemented yet");
    return NULL;
}
kvf_tensor *kvf_embedding(kvf_ctx *ctx, kvf_tensor *weight, kvf_tensor *ids) {
    (void)ctx;
    kvf_error_set(KVF_ERR_UNSUPPORTED, "embedding: not implemented yet");
    return NULL;
}
kvf_status kvf_cross_entropy_backward(kvf_ctx *ctx, kvf_node *n) {
    (void)ctx; (void)n;
    return kvf_error_set(KVF_ERR_UNSUPPORTED, "cross_entropy backward: not implemented yet");
}
kvf_status kvf_embedding_backward(kvf_ctx *ctx, kvf_node *n) {
    (void)ctx; (void)n;
    return kvf_error_set(KVF_ERR_UNSUPPORTED, "embedding backward: not implemented yet");
}
