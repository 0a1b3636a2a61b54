/* STUB: to be implemented */
#include "cpu_impl.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"
kvf_status kvf_cpu_rope(kvf_tensor *y, const kvf_tensor *x, const kvf_tensor *pos, const kvf_tensor *inv_freq, kvf_rope_layout layout, bool inverse, bool accumulate) {
    return kvf_error_set(KVF_ERR_UNSUPPORTED, "kvf_cpu_rope: not implemented yet");
}
