#include "cli_util.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

bool kvf_cli_parse_i64(const char *flag, const char *s, int64_t min, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < min) {
        kvf_cli_fail(KVF_EXIT_USAGE, "%s needs an integer >= %lld, got '%s'", flag, (long long)min, s);
        return false;
    }
    *out = v;
    return true;
}

bool kvf_cli_parse_double(const char *flag, const char *s, double *out) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v)) {
        kvf_cli_fail(KVF_EXIT_USAGE, "%s needs a number, got '%s'", flag, s);
        return false;
    }
    *out = v;
    return true;
}

bool kvf_cli_parse_compute_dtype(const char *s, kvf_device dev, kvf_dtype *out) {
    *out = dev == KVF_DEVICE_CPU ? KVF_DTYPE_F32 : KVF_DTYPE_BF16;
    if (!s) return true;
    if (!strcmp(s, "f32")) *out = KVF_DTYPE_F32;
    else if (!strcmp(s, "bf16") && dev != KVF_DEVICE_CPU) *out = KVF_DTYPE_BF16;
    else {
        kvf_cli_fail(KVF_EXIT_USAGE, "--dtype must be f32%s, got '%s'",
                     dev == KVF_DEVICE_CPU ? " on the CPU (bf16 needs --device cuda)" : " or bf16", s);
        return false;
    }
    return true;
}

bool kvf_cli_parse_device(const char *s, kvf_device *out) {
    if (!strcmp(s, "cpu")) *out = KVF_DEVICE_CPU;
    else if (!strcmp(s, "cuda")) *out = KVF_DEVICE_CUDA;
    else {
        kvf_cli_fail(KVF_EXIT_USAGE, "--device must be cpu or cuda, got '%s'", s);
        return false;
    }
    return true;
}
