/* STUB: to be implemented */
#include "ops_impl.h"

kvf_tensor *kvf_attention(kvf_ctx *ctx, kvf_tensor *q, kvf_tensor *k, kvf_tensor *v, const kvf_attn_cfg *cfg) {
    (void)ctx;
    kvf_error_set(KVF_ERR_UNSUPPORTED, "attention: not implemented yet");
    return NULL;
}
kvf_status kvf_attention_backward(kvf_ctx *ctx, kvf_node *n) {
    (void)ctx; (void)n;
    return kvf_error_set(KVF_ERR_UNSUPPORTED, "attention backward: not implemented yet");
}
