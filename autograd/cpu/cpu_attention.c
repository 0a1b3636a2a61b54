/* STUB: to be implemented */
#include "cpu_impl.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"
kvf_status kvf_cpu_attention(kvf_tensor *out, kvf_tensor *lse, const kvf_tensor *q, const kvf_tensor *k, const kvf_tensor *v, const kvf_attn_cfg *cfg) {
    return kvf_error_set(KVF_ERR_UNSUPPORTED, "kvf_cpu_attention: not implemented yet");
}
kvf_status kvf_cpu_attention_backward(kvf_tensor *dq, kvf_tensor *dk, kvf_tensor *dv, const kvf_tensor *q, const kvf_tensor *k, const kvf_tensor *v, const kvf_tensor *out, const kvf_tensor *lse, const kvf_tensor *dout, const kvf_attn_cfg *cfg) {
    return kvf_error_set(KVF_ERR_UNSUPPORTED, "kvf_cpu_attention_backward: not implemented yet");
}
