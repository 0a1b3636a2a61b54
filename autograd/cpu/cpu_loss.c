/* cpu_loss.c — cross-entropy and embedding lookup, for f32 and f64. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_impl.h"

/* Embedding gradients are scattered per block of this many columns: each block walks the
 * tokens in order on one thread, so repeated ids accumulate in a fixed order. */
#define KVF_EMB_COL_BLOCK 32

#define T float
#define SFX(name) name##_f32
#include "cpu_loss.inc"
#undef T
#undef SFX

#define T double
#define SFX(name) name##_f64
#include "cpu_loss.inc"
#undef T
#undef SFX

kvf_status kvf_cpu_cross_entropy(kvf_tensor *loss, kvf_tensor *lse, const kvf_tensor *logits,
                                 const kvf_tensor *targets, int64_t ignore_index) {
    KVF_CPU_DISPATCH("cross_entropy", logits->dtype, kvf_cpu_cross_entropy, loss, lse, logits,
                     targets, ignore_index);
}

kvf_status kvf_cpu_cross_entropy_backward(kvf_tensor *dlogits, const kvf_tensor *logits,
                                          const kvf_tensor *lse, const kvf_tensor *targets,
                                          const kvf_tensor *dloss, int64_t ignore_index) {
    KVF_CPU_DISPATCH("cross_entropy_backward", logits->dtype, kvf_cpu_cross_entropy_backward,
                     dlogits, logits, lse, targets, dloss, ignore_index);
}

kvf_status kvf_cpu_cross_entropy_backward_inplace(kvf_tensor *logits, const kvf_tensor *lse,
                                                  const kvf_tensor *targets,
                                                  const kvf_tensor *dloss, int64_t ignore_index) {
    KVF_CPU_DISPATCH("cross_entropy_backward_inplace", logits->dtype,
                     kvf_cpu_cross_entropy_backward_inplace, logits, lse, targets, dloss,
                     ignore_index);
}

kvf_status kvf_cpu_embedding(kvf_tensor *out, const kvf_tensor *weight, const kvf_tensor *ids) {
    KVF_CPU_DISPATCH("embedding", weight->dtype, kvf_cpu_embedding, out, weight, ids);
}

kvf_status kvf_cpu_embedding_backward(kvf_tensor *dweight, const kvf_tensor *ids,
                                      const kvf_tensor *dout) {
    KVF_CPU_DISPATCH("embedding_backward", dweight->dtype, kvf_cpu_embedding_backward, dweight,
                     ids, dout);
}
