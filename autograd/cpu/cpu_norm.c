/* STUB: to be implemented */
#include "cpu_impl.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"
kvf_status kvf_cpu_softmax(kvf_tensor *y, const kvf_tensor *x) {
    return kvf_error_set(KVF_ERR_UNSUPPORTED, "kvf_cpu_softmax: not implemented yet");
}
kvf_status kvf_cpu_softmax_backward(kvf_tensor *dx, const kvf_tensor *y, const kvf_tensor *dy) {
    return kvf_error_set(KVF_ERR_UNSUPPORTED, "kvf_cpu_softmax_backward: not implemented yet");
}
kvf_status kvf_cpu_rmsnorm(kvf_tensor *y, kvf_tensor *rstd, const kvf_tensor *x, const kvf_tensor *w, double eps) {
    return kvf_error_set(KVF_ERR_UNSUPPORTED, "kvf_cpu_rmsnorm: not implemented yet");
}
kvf_status kvf_cpu_rmsnorm_backward(kvf_tensor *dx, kvf_tensor *dw, const kvf_tensor *x, const kvf_tensor *w, const kvf_tensor *rstd, const kvf_tensor *dy) {
    return kvf_error_set(KVF_ERR_UNSUPPORTED, "kvf_cpu_rmsnorm_backward: not implemented yet");
}
kvf_status kvf_cpu_layernorm(kvf_tensor *y, kvf_tensor *mean, kvf_tensor *rstd, const kvf_tensor *x, const kvf_tensor *w, const kvf_tensor *b, double eps) {
    return kvf_error_set(KVF_ERR_UNSUPPORTED, "kvf_cpu_layernorm: not implemented yet");
}
kvf_status kvf_cpu_layernorm_backward(kvf_tensor *dx, kvf_tensor *dw, kvf_tensor *db, const kvf_tensor *x, const kvf_tensor *w, const kvf_tensor *mean, const kvf_tensor *rstd, const kvf_tensor *dy) {
    return kvf_error_set(KVF_ERR_UNSUPPORTED, "kvf_cpu_layernorm_backward: not implemented yet");
}
