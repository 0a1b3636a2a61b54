/* STUB: to be implemented */
#include "ops_impl.h"

kvf_tensor *kvf_rope(kvf_ctx *ctx, kvf_tensor *x, kvf_tensor *pos, kvf_tensor *inv_freq, kvf_rope_layout layout) {
    (void)ctx;
    kvf_error_set(KVF_ERR_UNSUPPORTED, "rope: not implemented yet");
    return NULL;
}
kvf_tensor *kvf_rope_inv_freq(kvf_ctx *ctx, int64_t dim, double theta) {
    (void)ctx;
    kvf_error_set(KVF_ERR_UNSUPPORTED, "rope_inv_freq: not implemented yet");
    return NULL;
}
kvf_status kvf_rope_backward(kvf_ctx *ctx, kvf_node *n) {
    (void)ctx; (void)n;
    return kvf_error_set(KVF_ERR_UNSUPPORTED, "rope backward: not implemented yet");
}
