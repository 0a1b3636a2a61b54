#include "params.h"

#include <stdlib.h>
#include <string.h>

#include "backend.h"

struct param_entry {
    char *name;
    kvf_tensor value, grad;
    int64_t offset; /* elements into the flat buffers */
};

struct kvf_params {
    struct param_entry *e;
    int n, cap;
    int64_t numel;
    kvf_dtype dtype;
    const kvf_backend *be;
    struct kvf_storage values, grads;
    kvf_tensor flat_values, flat_grads;
    uint64_t version;
};

kvf_params *kvf_params_init(void) {
    kvf_params *p = calloc(1, sizeof *p);
    KVF_CHECK_NULL(p, KVF_ERR_OOM, "params: out of host memory");
    return p;
}

void kvf_params_free(kvf_params *p) {
    if (!p) return;
    for (int i = 0; i < p->n; i++) free(p->e[i].name);
    free(p->e);
    if (p->be) {
        p->be->free(p->values.data);
        p->be->free(p->grads.data);
    }
    free(p);
}

kvf_status kvf_params_set_dtype(kvf_params *p, kvf_dtype dtype) {
    KVF_CHECK(p->n == 0 && !p->be, KVF_ERR_STATE, "params: set the dtype before adding parameters");
    KVF_CHECK(dtype == KVF_DTYPE_F32 || dtype == KVF_DTYPE_F64, KVF_ERR_DTYPE,
              "params: master weights are f32 or f64, not %s", kvf_dtype_name(dtype));
    p->dtype = dtype;
    return KVF_OK;
}

kvf_dtype kvf_params_dtype(const kvf_params *p) { return p->dtype; }

int kvf_params_add(kvf_params *p, const char *name, int ndim, const int64_t *shape) {
    if (p->be) {
        kvf_error_set(KVF_ERR_STATE, "params: '%s' added after the buffers were allocated", name);
        return -1;
    }
    if (kvf_params_get(p, name)) {
        kvf_error_set(KVF_ERR_ARG, "params: duplicate parameter name '%s'", name);
        return -1;
    }
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 64;
        struct param_entry *e = realloc(p->e, sizeof *e * (size_t)cap);
        if (!e) {
            kvf_error_set(KVF_ERR_OOM, "params: out of host memory");
            return -1;
        }
        p->e = e;
        p->cap = cap;
    }
    struct param_entry *e = &p->e[p->n];
    memset(e, 0, sizeof *e);
    kvf_tensor *v = &e->value;
    if (!kvf_layout_contiguous(ndim, shape, v->stride) || ndim < 1) {
        kvf_error_set(KVF_ERR_SHAPE, "params: '%s' has a bad shape (ndim %d)", name, ndim);
        return -1;
    }
    e->name = strdup(name);
    if (!e->name) {
        kvf_error_set(KVF_ERR_OOM, "params: out of host memory");
        return -1;
    }
    v->ndim = ndim;
    memcpy(v->shape, shape, sizeof(int64_t) * (size_t)ndim);
    v->dtype = p->dtype;
    v->node = -1;
    v->name = e->name;
    e->offset = p->numel;
    /* keep each tensor 64-byte aligned (16 floats) for vector loads */
    p->numel += (kvf_tensor_numel(v) + 15) / 16 * 16;
    return p->n++;
}

kvf_status kvf_params_alloc(kvf_params *p, kvf_device device) {
    KVF_CHECK(!p->be, KVF_ERR_STATE, "params: already allocated");
    const kvf_backend *be = kvf_backend_get(device);
    if (!be) return kvf_error_code();
    size_t nb = (size_t)(p->numel ? p->numel : 1) * kvf_dtype_size(p->dtype);
    p->values = (struct kvf_storage){.data = be->alloc(nb), .nbytes = nb, .device = device};
    p->grads = (struct kvf_storage){.data = be->alloc(nb), .nbytes = nb, .device = device};
    if (!p->values.data || !p->grads.data) {
        if (p->values.data) be->free(p->values.data);
        if (p->grads.data) be->free(p->grads.data);
        return kvf_error_set(KVF_ERR_OOM, "params: cannot allocate 2 × %zu bytes on %s", nb,
                             kvf_device_name(device));
    }
    p->be = be;
    KVF_TRY(be->memset_zero(p->values.data, nb));
    KVF_TRY(be->memset_zero(p->grads.data, nb));
    for (int i = 0; i < p->n; i++) {
        struct param_entry *e = &p->e[i];
        e->value.storage = &p->values;
        e->value.offset = e->offset;
        e->value.requires_grad = true;
        e->grad = e->value;
        e->grad.storage = &p->grads;
        e->grad.requires_grad = false;
        e->grad.name = NULL;
        e->value.grad = &e->grad;
    }
    int64_t n1[1] = {p->numel};
    for (int k = 0; k < 2; k++) {
        kvf_tensor *f = k ? &p->flat_grads : &p->flat_values;
        memset(f, 0, sizeof *f);
        f->storage = k ? &p->grads : &p->values;
        f->dtype = p->dtype;
        f->ndim = 1;
        f->shape[0] = n1[0];
        f->stride[0] = 1;
        f->node = -1;
    }
    return KVF_OK;
}

int kvf_params_count(const kvf_params *p) { return p->n; }
kvf_tensor *kvf_params_at(const kvf_params *p, int i) { return (i >= 0 && i < p->n) ? &p->e[i].value : NULL; }

kvf_tensor *kvf_params_get(const kvf_params *p, const char *name) {
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->e[i].name, name) == 0) return &p->e[i].value;
    return NULL;
}

int64_t kvf_params_numel(const kvf_params *p) { return p->numel; }
kvf_tensor *kvf_params_values(const kvf_params *p) { return p->be ? (kvf_tensor *)&p->flat_values : NULL; }
kvf_tensor *kvf_params_grads(const kvf_params *p) { return p->be ? (kvf_tensor *)&p->flat_grads : NULL; }

kvf_status kvf_params_zero_grad(kvf_params *p) {
    KVF_CHECK(p->be, KVF_ERR_STATE, "params: zero_grad before alloc");
    return p->be->memset_zero(p->grads.data, p->grads.nbytes);
}

uint64_t kvf_params_version(const kvf_params *p) { return p->version; }
void kvf_params_touch(kvf_params *p) { p->version++; }
