/* cpu_backend.c — the CPU backend's table, memory and copies. */
#include <stdlib.h>
#include <string.h>

#include "cpu_impl.h"

void kvf_cpu_view_of(struct kvf_cpu_view *v, const kvf_tensor *t) {
    int pad = 4 - t->ndim;
    v->base = kvf_tensor_data(t);
    for (int i = 0; i < 4; i++) {
        v->shape[i] = i < pad ? 1 : t->shape[i - pad];
        v->stride[i] = i < pad ? 0 : t->stride[i - pad];
    }
}

static void *cpu_alloc(size_t n) {
    void *p = aligned_alloc(64, (n + 63) & ~(size_t)63);
    if (!p) kvf_error_set(KVF_ERR_OOM, "cpu: cannot allocate %zu bytes of host memory", n);
    return p;
}

static void cpu_free(void *p) { free(p); }

static kvf_status cpu_upload(void *dst, const void *host, size_t n) {
    if (n) memcpy(dst, host, n);
    return KVF_OK;
}

static kvf_status cpu_download(void *host, const void *src, size_t n) {
    if (n) memcpy(host, src, n);
    return KVF_OK;
}

static kvf_status cpu_memset_zero(void *dst, size_t n) {
    if (n) memset(dst, 0, n);
    return KVF_OK;
}

/* Same-dtype strided copy, element size es. */
static void copy_same(const struct kvf_cpu_view *d, const struct kvf_cpu_view *s, size_t es) {
    int64_t rows = d->shape[0] * d->shape[1] * d->shape[2];
    bool inner_dense = d->stride[3] == 1 && s->stride[3] == 1;
#pragma omp parallel for if (rows * d->shape[3] >= KVF_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        int64_t i2 = r % d->shape[2], i1 = (r / d->shape[2]) % d->shape[1],
                i0 = r / (d->shape[2] * d->shape[1]);
        char *dp = d->base + (size_t)(i0 * d->stride[0] + i1 * d->stride[1] + i2 * d->stride[2]) * es;
        const char *sp =
            s->base + (size_t)(i0 * s->stride[0] + i1 * s->stride[1] + i2 * s->stride[2]) * es;
        if (inner_dense) {
            memcpy(dp, sp, (size_t)d->shape[3] * es);
        } else {
            for (int64_t i3 = 0; i3 < d->shape[3]; i3++)
                memcpy(dp + (size_t)(i3 * d->stride[3]) * es, sp + (size_t)(i3 * s->stride[3]) * es, es);
        }
    }
}

static kvf_status cpu_copy(kvf_tensor *dst, const kvf_tensor *src) {
    KVF_CHECK(kvf_tensor_same_shape(dst, src), KVF_ERR_SHAPE, "copy: %s into %s", KVF_DESC(src),
              KVF_DESC(dst));
    if (dst->dtype == src->dtype) {
        struct kvf_cpu_view d, s;
        kvf_cpu_view_of(&d, dst);
        kvf_cpu_view_of(&s, src);
        copy_same(&d, &s, kvf_dtype_size(dst->dtype));
        return KVF_OK;
    }
    /* dtype conversion goes element by element through double: exact for every pair
     * kvforge converts (f32/f64/bf16/f16/ids) and only used for IO and casts */
    int64_t n = kvf_tensor_numel(dst);
    for (int64_t i = 0; i < n; i++) kvf_tensor_set_flat(dst, i, kvf_tensor_get_flat(src, i));
    return KVF_OK;
}

#define DISPATCH_FLOAT(what, t, fn, ...) KVF_CPU_DISPATCH(what, (t)->dtype, fn, __VA_ARGS__)

static kvf_status cpu_binary(kvf_binop op, kvf_tensor *out, const kvf_tensor *a,
                             const kvf_tensor *b) {
    DISPATCH_FLOAT("binary", out, kvf_cpu_binary, op, out, a, b);
}
static kvf_status cpu_unary(kvf_unop op, kvf_tensor *out, const kvf_tensor *x, double alpha) {
    DISPATCH_FLOAT("unary", out, kvf_cpu_unary, op, out, x, alpha);
}
static kvf_status cpu_unary_backward(kvf_unop op, kvf_tensor *dx, const kvf_tensor *x,
                                     const kvf_tensor *dy, double alpha) {
    DISPATCH_FLOAT("unary_backward", dx, kvf_cpu_unary_backward, op, dx, x, dy, alpha);
}
static kvf_status cpu_reduce_sum(kvf_tensor *out, const kvf_tensor *x, bool accumulate) {
    DISPATCH_FLOAT("reduce_sum", out, kvf_cpu_reduce_sum, out, x, accumulate);
}
static kvf_status cpu_swiglu(kvf_tensor *out, const kvf_tensor *gate, const kvf_tensor *up) {
    DISPATCH_FLOAT("swiglu", out, kvf_cpu_swiglu, out, gate, up);
}
static kvf_status cpu_swiglu_backward(kvf_tensor *dgate, kvf_tensor *dup, const kvf_tensor *gate,
                                      const kvf_tensor *up, const kvf_tensor *dout) {
    DISPATCH_FLOAT("swiglu_backward", dout, kvf_cpu_swiglu_backward, dgate, dup, gate, up, dout);
}

static const kvf_backend cpu_backend = {
    .name = "cpu",
    .device = KVF_DEVICE_CPU,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .memset_zero = cpu_memset_zero,
    .copy = cpu_copy,
    .gemm = kvf_cpu_gemm,
    .binary = cpu_binary,
    .unary = cpu_unary,
    .unary_backward = cpu_unary_backward,
    .reduce_sum = cpu_reduce_sum,
    .softmax = kvf_cpu_softmax,
    .softmax_backward = kvf_cpu_softmax_backward,
    .rmsnorm = kvf_cpu_rmsnorm,
    .rmsnorm_backward = kvf_cpu_rmsnorm_backward,
    .layernorm = kvf_cpu_layernorm,
    .layernorm_backward = kvf_cpu_layernorm_backward,
    .rope = kvf_cpu_rope,
    .attention = kvf_cpu_attention,
    .attention_backward = kvf_cpu_attention_backward,
    .cross_entropy = kvf_cpu_cross_entropy,
    .cross_entropy_backward = kvf_cpu_cross_entropy_backward,
    .cross_entropy_backward_inplace = kvf_cpu_cross_entropy_backward_inplace,
    .embedding = kvf_cpu_embedding,
    .embedding_backward = kvf_cpu_embedding_backward,
    .swiglu = cpu_swiglu,
    .swiglu_backward = cpu_swiglu_backward,
};

const kvf_backend *kvf_backend_cpu(void) { return &cpu_backend; }
