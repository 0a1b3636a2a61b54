/* tensor.h — dtypes, devices, storage and the tensor handle.
 * A tensor is storage + element offset + shape/strides (in elements, up to 4 dims).
 * Views share storage. Tensors made by ops live in a kvf_ctx arena (context.h);
 * persistent ones (parameters, optimizer state) own their storage (kvf_tensor_init_owned). */
#ifndef KVF_TENSOR_H
#define KVF_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define KVF_MAX_DIMS 4

enum kvf_dtype {
    KVF_DTYPE_F32,
    KVF_DTYPE_F64,  /* CPU reference precision: gradient checks, factorisations */
    KVF_DTYPE_BF16, /* GPU compute, checkpoint IO */
    KVF_DTYPE_F16,  /* checkpoint IO */
    KVF_DTYPE_I32,  /* token ids, positions */
    KVF_DTYPE_I64,
    KVF_DTYPE_COUNT
};
typedef enum kvf_dtype kvf_dtype;

enum kvf_device { KVF_DEVICE_CPU, KVF_DEVICE_CUDA, KVF_DEVICE_COUNT };
typedef enum kvf_device kvf_device;

struct kvf_storage {
    void *data;
    size_t nbytes;
    kvf_device device;
    bool owned; /* freed by kvf_tensor_free_owned; arena storage is not */
    bool pooled; /* a backward block (context.c): freed when refs falls to 0 after a rule */
    int refs;    /* pooled: how many tensors hold it as their ->grad */
    int slot;    /* pooled: index in the ctx's list of live blocks */
    /* i32 ids uploaded by kvf_tensor_from_host to a device: their host copy (the ctx's host
     * memory), so that ops checking ids on the host need no download (a stream drain) */
    const void *host_ids;
};

struct kvf_tensor {
    struct kvf_storage *storage;
    int64_t offset; /* elements from storage->data */
    kvf_dtype dtype;
    int ndim;
    int64_t shape[KVF_MAX_DIMS];
    int64_t stride[KVF_MAX_DIMS]; /* elements; 0 marks a broadcast (expanded) dim */
    bool requires_grad;
    struct kvf_tensor *grad; /* same shape, contiguous; NULL until backward reaches it */
    int node;                /* tape node that produced it, -1 for leaves */
    int64_t born, last_use;  /* ctx clock when recorded as an op's output / last read by a
                              * recorded op; 0: never (tape.c; orders uses across tapes) */
    const char *name;        /* parameter name or NULL */
};
typedef struct kvf_tensor kvf_tensor;

size_t      kvf_dtype_size(kvf_dtype t);
const char *kvf_dtype_name(kvf_dtype t);
bool        kvf_dtype_is_float(kvf_dtype t);
const char *kvf_device_name(kvf_device d);

int64_t kvf_tensor_numel(const kvf_tensor *t);
size_t  kvf_tensor_nbytes(const kvf_tensor *t);
bool    kvf_tensor_is_contiguous(const kvf_tensor *t);
/* Whether t [.., D] is dense rows of D elements one stride apart (*ld, the row stride;
 * D itself when contiguous): a slice of the last dim of a contiguous tensor is. */
bool    kvf_tensor_rows(const kvf_tensor *t, int64_t *ld);
/* Whether t [B, T, H, D] is dense head rows of D at (b·T + t)·ldt + h·ldh (ldt = H·D, ldh = D
 * when contiguous): slices of the heads or of their dims of a contiguous [B, T, H', D'] are. */
bool    kvf_tensor_head_rows(const kvf_tensor *t, int64_t *ldt, int64_t *ldh);
bool    kvf_tensor_same_shape(const kvf_tensor *a, const kvf_tensor *b);
void   *kvf_tensor_data(const kvf_tensor *t); /* address of element 0 */
kvf_device kvf_tensor_device(const kvf_tensor *t);

/* "[2, 3, 4] f32" into buf; returns buf. For error messages. */
const char *kvf_tensor_describe(const kvf_tensor *t, char *buf, size_t n);
#define KVF_DESC(t) kvf_tensor_describe((t), (char[96]){0}, 96)

/* Fill shape/strides of a contiguous row-major layout. Returns false on a bad shape. */
bool kvf_layout_contiguous(int ndim, const int64_t *shape, int64_t *stride);

/* Persistent tensor with its own storage on the CPU (device tensors: backend.h). */
kvf_tensor *kvf_tensor_init_owned(kvf_dtype dtype, int ndim, const int64_t *shape);
void        kvf_tensor_free_owned(kvf_tensor *t);

/* Host-side element access for tests and IO (CPU tensors of any float dtype / ids). */
double kvf_tensor_get(const kvf_tensor *t, const int64_t *idx);
void   kvf_tensor_set(kvf_tensor *t, const int64_t *idx, double v);
double kvf_tensor_get_flat(const kvf_tensor *t, int64_t i); /* i-th element in row-major order */
void   kvf_tensor_set_flat(kvf_tensor *t, int64_t i, double v);

/* bf16 / f16 conversion, round-to-nearest-even as in PyTorch. */
uint16_t kvf_f32_to_bf16(float f);
float    kvf_bf16_to_f32(uint16_t h);
uint16_t kvf_f32_to_f16(float f);
float    kvf_f16_to_f32(uint16_t h);

#endif
