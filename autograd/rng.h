/* rng.h — deterministic random numbers (xoshiro256**, seeded through splitmix64):
 * the same seed gives the same stream on every machine. */
#ifndef KVF_RNG_H
#define KVF_RNG_H

#include <stdint.h>

#include "tensor.h"

struct kvf_rng {
    uint64_t s[4];
};
typedef struct kvf_rng kvf_rng;

void     kvf_rng_init(kvf_rng *r, uint64_t seed);
uint64_t kvf_rng_next(kvf_rng *r);
double   kvf_rng_uniform(kvf_rng *r);                /* [0, 1) with 53 random bits */
double   kvf_rng_normal(kvf_rng *r);                 /* standard normal */
uint64_t kvf_rng_below(kvf_rng *r, uint64_t n);      /* uniform in [0, n), unbiased */

/* Fill a CPU tensor (any layout, float or id dtype) elementwise. */
kvf_status kvf_rng_fill_normal(kvf_rng *r, kvf_tensor *t, double mean, double std);
kvf_status kvf_rng_fill_uniform(kvf_rng *r, kvf_tensor *t, double lo, double hi);

#endif
