#include "rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void kvf_rng_init(kvf_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

uint64_t kvf_rng_next(kvf_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double kvf_rng_uniform(kvf_rng *r) { return (double)(kvf_rng_next(r) >> 11) * 0x1.0p-53; }

double kvf_rng_normal(kvf_rng *r) {
    /* Box–Muller, one value per call so the stream position is simple to reason about */
    double u1 = kvf_rng_uniform(r), u2 = kvf_rng_uniform(r);
    return sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2);
}

uint64_t kvf_rng_below(kvf_rng *r, uint64_t n) {
    if (n == 0) return 0;
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = kvf_rng_next(r);
    while (x >= limit);
    return x % n;
}

kvf_status kvf_rng_fill_normal(kvf_rng *r, kvf_tensor *t, double mean, double std) {
    KVF_CHECK(kvf_tensor_device(t) == KVF_DEVICE_CPU, KVF_ERR_DEVICE,
              "rng: fill a CPU tensor and upload it");
    int64_t n = kvf_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) kvf_tensor_set_flat(t, i, mean + std * kvf_rng_normal(r));
    return KVF_OK;
}

kvf_status kvf_rng_fill_uniform(kvf_rng *r, kvf_tensor *t, double lo, double hi) {
    KVF_CHECK(kvf_tensor_device(t) == KVF_DEVICE_CPU, KVF_ERR_DEVICE,
              "rng: fill a CPU tensor and upload it");
    int64_t n = kvf_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) kvf_tensor_set_flat(t, i, lo + (hi - lo) * kvf_rng_uniform(r));
    return KVF_OK;
}
