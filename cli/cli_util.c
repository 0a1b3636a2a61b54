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

bool kvf_cli_parse_device(const char *s, kvf_device *out) {
    if (!strcmp(s, "cpu")) *out = KVF_DEVICE_CPU;
    else if (!strcmp(s, "cuda")) *out = KVF_DEVICE_CUDA;
    else {
        kvf_cli_fail(KVF_EXIT_USAGE, "--device must be cpu or cuda, got '%s'", s);
        return false;
    }
    return true;
}
