/* cpu_elementwise.c — binary, unary, reductions and SwiGLU for f32 and f64. */
#include <math.h>

#include "cpu_impl.h"

#define T float
#define SFX(name) name##_f32
#include "cpu_elementwise.inc"
#undef T
#undef SFX

#define T double
#define SFX(name) name##_f64
#include "cpu_elementwise.inc"
#undef T
#undef SFX
