/* ops_common.c — operand checks shared by every op. */
#include <string.h>

#include "ops_impl.h"

bool kvf_ops_check_inputs(kvf_ctx *ctx, const char *op, int n, kvf_tensor *const *xs) {
    for (int i = 0; i < n; i++) {
        if (!xs[i]) {
            /* an earlier op failed: keep its message, which names the cause */
            if (!kvf_error_pending())
                kvf_error_set(KVF_ERR_ARG, "%s: operand %d is NULL", op, i);
            return false;
        }
        if (kvf_tensor_device(xs[i]) != kvf_ctx_device(ctx)) {
            kvf_error_set(KVF_ERR_DEVICE, "%s: operand %d %s is on %s, the context on %s", op, i,
                          KVF_DESC(xs[i]), kvf_device_name(kvf_tensor_device(xs[i])),
                          kvf_device_name(kvf_ctx_device(ctx)));
            return false;
        }
    }
    return true;
}

bool kvf_ops_check_float(const char *op, const kvf_tensor *x, const char *what) {
    if (kvf_dtype_is_float(x->dtype)) return true;
    kvf_error_set(KVF_ERR_DTYPE, "%s: %s %s must be a float tensor", op, what, KVF_DESC(x));
    return false;
}

bool kvf_ops_check_ids(const char *op, const kvf_tensor *x, const char *what) {
    if (x->dtype == KVF_DTYPE_I32) return true;
    kvf_error_set(KVF_ERR_DTYPE, "%s: %s %s must be i32", op, what, KVF_DESC(x));
    return false;
}

int kvf_ops_axis(int axis, int ndim) {
    if (axis < 0) axis += ndim;
    return (axis >= 0 && axis < ndim) ? axis : -1;
}

kvf_tensor *kvf_ops_like(kvf_ctx *ctx, const kvf_tensor *x) {
    return kvf_tensor_new(ctx, x->dtype, x->ndim, x->shape);
}
