/* STUB: to be implemented */
#include "cpu_impl.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"
kvf_status kvf_cpu_cross_entropy(kvf_tensor *loss, kvf_tensor *lse, const kvf_tensor *logits, const kvf_tensor *targets, int64_t ignore_index) {
    return kvf_error_set(KVF_ERR_UNSUPPORTED, "kvf_cpu_cross_entropy: not implemented yet");
}
kvf_status kvf_cpu_cross_entropy_backward(kvf_tensor *dlogits, const kvf_tensor *logits, const kvf_tensor *lse, const kvf_tensor *targets, const kvf_tensor *dloss, int64_t ignore_index) {
    return kvf_error_set(KVF_ERR_UNSUPPORTED, "kvf_cpu_cross_entropy_backward: not implemented yet");
}
kvf_status kvf_cpu_embedding(kvf_tensor *out, const kvf_tensor *weight, const kvf_tensor *ids) {
    return kvf_error_set(KVF_ERR_UNSUPPORTED, "kvf_cpu_embedding: not implemented yet");
}
kvf_status kvf_cpu_embedding_backward(kvf_tensor *dweight, const kvf_tensor *ids, const kvf_tensor *dout) {
    return kvf_error_set(KVF_ERR_UNSUPPORTED, "kvf_cpu_embedding_backward: not implemented yet");
}
