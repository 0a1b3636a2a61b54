/* gradcheck.h — the test harness for op gradients.
 * kvf_gradcheck builds loss = Σ f(inputs)·R (R fixed random) in f64, runs backward and
 * compares every input gradient element with a central finite difference computed in
 * f64; then it runs f in f32 and checks outputs and gradients against the f64 run, so
 * the f32 kernels (the reference for GPU) are held to the f64 ones. */
#ifndef KVF_TEST_GRADCHECK_H
#define KVF_TEST_GRADCHECK_H

#include <stdbool.h>

#include "autograd/context.h"
#include "autograd/ops.h"
#include "autograd/rng.h"
#include "autograd/tape.h"

#define GC_MAX_IN 6

struct gc_input {
    kvf_dtype dtype; /* KVF_DTYPE_F64 for float inputs (cast to f32 in the f32 pass), I32 ids */
    int ndim;
    int64_t shape[KVF_MAX_DIMS];
    double *data;    /* float values, numel entries (owned, freed by gc_inputs_free) */
    int32_t *ids;    /* id values (owned) */
    bool no_grad;    /* a float input that is not differentiated (e.g. a frequency table) */
};

/* f builds the op(s) under test from arena tensors in[0..n-1] (float inputs in the pass's
 * dtype); returns NULL on error. */
typedef kvf_tensor *(*gc_fn)(kvf_ctx *ctx, kvf_tensor **in, void *ud);

struct gc_opts {
    double fd_step;     /* default 1e-6 */
    double tol;         /* f64 analytic vs FD: |a-b| <= tol·(1 + |a|+|b|)·scale; default 1e-6 */
    double tol_f32;     /* f32 vs f64 outputs and gradients, relative to the max |value|; 1e-4 */
    bool skip_f32;
};

/* Returns true when all checks pass; otherwise prints the first failures to stderr. */
bool kvf_gradcheck(const char *name, gc_fn f, void *ud, int n, struct gc_input *in,
                   const struct gc_opts *opts);

/* Input helpers: normal(0, std) floats, uniform ids in [0, vocab). */
void gc_input_randn(struct gc_input *in, kvf_rng *r, double std, int ndim, const int64_t *shape);
void gc_input_ids(struct gc_input *in, kvf_rng *r, int64_t vocab, int ndim, const int64_t *shape);
void gc_inputs_free(int n, struct gc_input *in);
int64_t gc_numel(const struct gc_input *in);

#endif
