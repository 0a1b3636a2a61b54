/* params.h — named parameters in one contiguous value buffer and one gradient buffer.
 * Register every tensor with kvf_params_add, then kvf_params_alloc places them all; the
 * tensors require grad and their .grad views the gradient buffer, which backward
 * accumulates into until kvf_params_zero_grad. Values and grads are f32 (the master copy)
 * unless kvf_params_set_dtype chose f64. */
#ifndef KVF_PARAMS_H
#define KVF_PARAMS_H

#include "tensor.h"

struct kvf_params;
typedef struct kvf_params kvf_params;

kvf_params *kvf_params_init(void);
void        kvf_params_free(kvf_params *p);

/* Master dtype of every parameter: f32 (default) or f64; before kvf_params_add. */
kvf_status kvf_params_set_dtype(kvf_params *p, kvf_dtype dtype);
kvf_dtype  kvf_params_dtype(const kvf_params *p);

/* Returns the parameter's index, or -1 (error set) for a duplicate name or bad shape. */
int kvf_params_add(kvf_params *p, const char *name, int ndim, const int64_t *shape);
/* Allocates both buffers (zeroed) on the device; no kvf_params_add after this. */
kvf_status kvf_params_alloc(kvf_params *p, kvf_device device);

int         kvf_params_count(const kvf_params *p);
kvf_tensor *kvf_params_at(const kvf_params *p, int i);
kvf_tensor *kvf_params_get(const kvf_params *p, const char *name); /* NULL if absent */
int64_t     kvf_params_numel(const kvf_params *p);
/* The flat buffers as 1-D tensors of kvf_params_numel elements (optimizers, IO). */
kvf_tensor *kvf_params_values(const kvf_params *p);
kvf_tensor *kvf_params_grads(const kvf_params *p);
kvf_status  kvf_params_zero_grad(kvf_params *p);

/* A count that changes whenever the values do through the library (optimizer steps,
 * initialisation, conversions' writes): caches of the values (the model's per-step bf16
 * copy) compare it. Code that writes the values directly calls kvf_params_touch. */
uint64_t kvf_params_version(const kvf_params *p);
void     kvf_params_touch(kvf_params *p);

#endif
