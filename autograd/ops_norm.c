/* STUB: to be implemented */
#include "ops_impl.h"

kvf_tensor *kvf_softmax(kvf_ctx *ctx, kvf_tensor *x) {
    (void)ctx;
    kvf_error_set(KVF_ERR_UNSUPPORTED, "softmax: not implemented yet");
    return NULL;
}
kvf_tensor *kvf_rmsnorm(kvf_ctx *ctx, kvf_tensor *x, kvf_tensor *w, double eps) {
    (void)ctx;
    kvf_error_set(KVF_ERR_UNSUPPORTED, "rmsnorm: not implemented yet");
    return NULL;
}
kvf_tensor *kvf_layernorm(kvf_ctx *ctx, kvf_tensor *x, kvf_tensor *w, kvf_tensor *b, double eps) {
    (void)ctx;
    kvf_error_set(KVF_ERR_UNSUPPORTED, "layernorm: not implemented yet");
    return NULL;
}
kvf_status kvf_softmax_backward(kvf_ctx *ctx, kvf_node *n) {
    (void)ctx; (void)n;
    return kvf_error_set(KVF_ERR_UNSUPPORTED, "softmax backward: not implemented yet");
}
kvf_status kvf_rmsnorm_backward(kvf_ctx *ctx, kvf_node *n) {
    (void)ctx; (void)n;
    return kvf_error_set(KVF_ERR_UNSUPPORTED, "rmsnorm backward: not implemented yet");
}
kvf_status kvf_layernorm_backward(kvf_ctx *ctx, kvf_node *n) {
    (void)ctx; (void)n;
    return kvf_error_set(KVF_ERR_UNSUPPORTED, "layernorm backward: not implemented yet");
}
