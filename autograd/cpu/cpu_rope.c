/* cpu_rope.c — rotary position embedding for f32 and f64 (body in cpu_rope.inc).
 * y [B, T, H, D] (+)= R(pos·inv_freq)·x, dense rows; pos i32 [T]; inv_freq f32 [F] or
 * [H, F]. Pairs are (i, i + F) for KVF_ROPE_HALF and (2i, 2i + 1) for
 * KVF_ROPE_INTERLEAVED, i < F; dims from 2F on pass through. Parallel over positions,
 * one cos/sin table per position shared by the batch (and, for [F], by the heads). */
#include <math.h>
#include <stdlib.h>

#include "cpu_impl.h"

#define T float
#define SFX(name) name##_f32
#include "cpu_rope.inc"
#undef T
#undef SFX

#define T double
#define SFX(name) name##_f64
#include "cpu_rope.inc"
#undef T
#undef SFX

kvf_status kvf_cpu_rope(kvf_tensor *y, const kvf_tensor *x, const kvf_tensor *pos,
                        const kvf_tensor *inv_freq, kvf_rope_layout layout, bool inverse,
                        bool accumulate) {
    KVF_CHECK(inv_freq->dtype == KVF_DTYPE_F32 && pos->dtype == KVF_DTYPE_I32, KVF_ERR_DTYPE,
              "rope: the CPU kernel takes inv_freq f32 and pos i32, got %s and %s",
              KVF_DESC(inv_freq), KVF_DESC(pos));
    KVF_CPU_DISPATCH("rope", x->dtype, rope, y, x, pos, inv_freq, layout, inverse, accumulate);
}
