#include "tensor.h"

#include "backend.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t kvf_dtype_size(kvf_dtype t) {
    switch (t) {
    case KVF_DTYPE_F32: return 4;
    case KVF_DTYPE_F64: return 8;
    case KVF_DTYPE_BF16: return 2;
    case KVF_DTYPE_F16: return 2;
    case KVF_DTYPE_I32: return 4;
    case KVF_DTYPE_I64: return 8;
    default: return 0;
    }
}

const char *kvf_dtype_name(kvf_dtype t) {
    switch (t) {
    case KVF_DTYPE_F32: return "f32";
    case KVF_DTYPE_F64: return "f64";
    case KVF_DTYPE_BF16: return "bf16";
    case KVF_DTYPE_F16: return "f16";
    case KVF_DTYPE_I32: return "i32";
    case KVF_DTYPE_I64: return "i64";
    default: return "?";
    }
}

bool kvf_dtype_is_float(kvf_dtype t) {
    return t == KVF_DTYPE_F32 || t == KVF_DTYPE_F64 || t == KVF_DTYPE_BF16 || t == KVF_DTYPE_F16;
}

const char *kvf_device_name(kvf_device d) {
    switch (d) {
    case KVF_DEVICE_CPU: return "cpu";
    case KVF_DEVICE_CUDA: return "cuda";
    default: return "?";
    }
}

int64_t kvf_tensor_numel(const kvf_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t kvf_tensor_nbytes(const kvf_tensor *t) {
    return (size_t)kvf_tensor_numel(t) * kvf_dtype_size(t->dtype);
}

bool kvf_tensor_rows(const kvf_tensor *t, int64_t *ld) {
    const int nd = t->ndim;
    if (nd == 0) {
        *ld = 1;
        return true;
    }
    const int64_t D = t->shape[nd - 1];
    if (D > 1 && t->stride[nd - 1] != 1) return false;
    /* the row stride: that of the innermost dim above the rows with extent > 1 */
    int64_t r = D, expect = -1;
    for (int i = nd - 2; i >= 0; i--) {
        if (t->shape[i] == 1) continue;
        if (expect < 0) {
            if (t->stride[i] < D) return false;
            r = t->stride[i];
            expect = r * t->shape[i];
        } else {
            if (t->stride[i] != expect) return false;
            expect *= t->shape[i];
        }
    }
    *ld = r;
    return true;
}

bool kvf_tensor_head_rows(const kvf_tensor *t, int64_t *ldt, int64_t *ldh) {
    if (t->ndim != 4) return false;
    const int64_t *sh = t->shape, *st = t->stride;
    if (sh[3] > 1 && st[3] != 1) return false;
    *ldh = sh[2] > 1 ? st[2] : sh[3];
    *ldt = sh[1] > 1 ? st[1] : sh[2] * *ldh;
    if (*ldh < sh[3] || *ldt < sh[2] * *ldh) return false; /* rows must not overlap */
    return sh[0] <= 1 || st[0] == sh[1] * *ldt;
}

bool kvf_tensor_is_contiguous(const kvf_tensor *t) {
    int64_t expect = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != expect) return false;
        expect *= t->shape[i];
    }
    return true;
}

bool kvf_tensor_same_shape(const kvf_tensor *a, const kvf_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

void *kvf_tensor_data(const kvf_tensor *t) {
    return (char *)t->storage->data + (size_t)t->offset * kvf_dtype_size(t->dtype);
}

kvf_device kvf_tensor_device(const kvf_tensor *t) { return t->storage->device; }

const char *kvf_tensor_describe(const kvf_tensor *t, char *buf, size_t n) {
    if (!t) {
        snprintf(buf, n, "(null)");
        return buf;
    }
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < t->ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (k < n) snprintf(buf + k, n - k, "] %s", kvf_dtype_name(t->dtype));
    return buf;
}

bool kvf_layout_contiguous(int ndim, const int64_t *shape, int64_t *stride) {
    if (ndim < 0 || ndim > KVF_MAX_DIMS) return false;
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        if (shape[i] < 0) return false;
        stride[i] = s;
        s *= shape[i];
    }
    return true;
}

kvf_tensor *kvf_tensor_init_owned_on(kvf_device device, kvf_dtype dtype, int ndim,
                                     const int64_t *shape) {
    const kvf_backend *be = NULL;
    if (device != KVF_DEVICE_CPU && !(be = kvf_backend_get(device))) return NULL;
    kvf_tensor *t = calloc(1, sizeof *t + sizeof(struct kvf_storage));
    KVF_CHECK_NULL(t, KVF_ERR_OOM, "tensor: out of host memory");
    t->storage = (struct kvf_storage *)(t + 1);
    t->dtype = dtype;
    t->ndim = ndim;
    t->node = -1;
    if (!kvf_layout_contiguous(ndim, shape, t->stride)) {
        free(t);
        kvf_error_set(KVF_ERR_SHAPE, "tensor: bad shape (ndim %d)", ndim);
        return NULL;
    }
    memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
    size_t nb = kvf_tensor_nbytes(t);
    t->storage->nbytes = nb;
    t->storage->device = device;
    t->storage->owned = true;
    if (!be) {
        t->storage->data = calloc(1, nb ? nb : 1);
        if (!t->storage->data) {
            free(t);
            kvf_error_set(KVF_ERR_OOM, "tensor: cannot allocate %zu bytes", nb);
            return NULL;
        }
        return t;
    }
    t->storage->data = be->alloc(nb ? nb : 1); /* error set (bytes, free memory) on failure */
    if (!t->storage->data || be->memset_zero(t->storage->data, nb) != KVF_OK) {
        if (t->storage->data) be->free(t->storage->data);
        free(t);
        return NULL;
    }
    return t;
}

kvf_tensor *kvf_tensor_init_owned(kvf_dtype dtype, int ndim, const int64_t *shape) {
    return kvf_tensor_init_owned_on(KVF_DEVICE_CPU, dtype, ndim, shape);
}

void kvf_tensor_free_owned(kvf_tensor *t) {
    if (!t) return;
    if (t->storage && t->storage->owned) {
        if (t->storage->device == KVF_DEVICE_CPU) {
            free(t->storage->data);
        } else {
            const kvf_backend *be = kvf_backend_get(t->storage->device);
            if (be) be->free(t->storage->data);
        }
    }
    free(t);
}

static int64_t flat_to_offset(const kvf_tensor *t, int64_t i) {
    int64_t off = t->offset;
    for (int d = t->ndim - 1; d >= 0; d--) {
        off += (i % t->shape[d]) * t->stride[d];
        i /= t->shape[d];
    }
    return off;
}

static double load(const kvf_tensor *t, int64_t off) {
    const void *p = t->storage->data;
    switch (t->dtype) {
    case KVF_DTYPE_F32: return ((const float *)p)[off];
    case KVF_DTYPE_F64: return ((const double *)p)[off];
    case KVF_DTYPE_BF16: return kvf_bf16_to_f32(((const uint16_t *)p)[off]);
    case KVF_DTYPE_F16: return kvf_f16_to_f32(((const uint16_t *)p)[off]);
    case KVF_DTYPE_I32: return ((const int32_t *)p)[off];
    case KVF_DTYPE_I64: return (double)((const int64_t *)p)[off];
    default: return NAN;
    }
}

static void store(kvf_tensor *t, int64_t off, double v) {
    void *p = t->storage->data;
    switch (t->dtype) {
    case KVF_DTYPE_F32: ((float *)p)[off] = (float)v; break;
    case KVF_DTYPE_F64: ((double *)p)[off] = v; break;
    case KVF_DTYPE_BF16: ((uint16_t *)p)[off] = kvf_f32_to_bf16((float)v); break;
    case KVF_DTYPE_F16: ((uint16_t *)p)[off] = kvf_f32_to_f16((float)v); break;
    case KVF_DTYPE_I32: ((int32_t *)p)[off] = (int32_t)v; break;
    case KVF_DTYPE_I64: ((int64_t *)p)[off] = (int64_t)v; break;
    default: break;
    }
}

double kvf_tensor_get(const kvf_tensor *t, const int64_t *idx) {
    int64_t off = t->offset;
    for (int d = 0; d < t->ndim; d++) off += idx[d] * t->stride[d];
    return load(t, off);
}

void kvf_tensor_set(kvf_tensor *t, const int64_t *idx, double v) {
    int64_t off = t->offset;
    for (int d = 0; d < t->ndim; d++) off += idx[d] * t->stride[d];
    store(t, off, v);
}

double kvf_tensor_get_flat(const kvf_tensor *t, int64_t i) { return load(t, flat_to_offset(t, i)); }
void kvf_tensor_set_flat(kvf_tensor *t, int64_t i, double v) { store(t, flat_to_offset(t, i), v); }

uint16_t kvf_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float kvf_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t kvf_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t mant = x & 0x007fffffu;
    int32_t exp = (int32_t)((x >> 23) & 0xff);
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0)); /* Inf / NaN */
    int32_t e = exp - 127 + 15;
    if (e >= 0x1f) return (uint16_t)(sign | 0x7c00u); /* overflow → Inf */
    if (e <= 0) {
        if (e < -10) return (uint16_t)sign; /* underflow → ±0 */
        mant |= 0x00800000u;                /* subnormal: shift in the implicit bit */
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t half = 1u << (shift - 1);
        uint32_t rest = mant & ((1u << shift) - 1);
        uint32_t r = mant >> shift;
        if (rest > half || (rest == half && (r & 1u))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((uint32_t)e << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (r & 1u))) r++; /* may carry into exponent: ok */
    return (uint16_t)(sign | r);
}

float kvf_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (mant == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                mant <<= 1;
                e++;
            } while (!(mant & 0x400u));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
        }
    } else if (exp == 0x1f) {
        u = sign | 0x7f800000u | (mant << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}
