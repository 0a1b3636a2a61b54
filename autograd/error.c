#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char err_msg[1024];
static _Thread_local char err_loc[128];
static _Thread_local kvf_status err_code = KVF_OK;

kvf_status kvf_error_set_at(const char *file, int line, kvf_status code, const char *fmt, ...) {
    if (err_code != KVF_OK) return code;
    err_code = code;
    const char *base = strrchr(file, '/');
    snprintf(err_loc, sizeof err_loc, "%s:%d", base ? base + 1 : file, line);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof err_msg, fmt, ap);
    va_end(ap);
    return code;
}

const char *kvf_error_message(void) { return err_code == KVF_OK ? "" : err_msg; }
const char *kvf_error_location(void) { return err_code == KVF_OK ? "" : err_loc; }
kvf_status kvf_error_code(void) { return err_code; }
bool kvf_error_pending(void) { return err_code != KVF_OK; }

void kvf_error_clear(void) {
    err_code = KVF_OK;
    err_msg[0] = '\0';
    err_loc[0] = '\0';
}

const char *kvf_status_name(kvf_status s) {
    switch (s) {
    case KVF_OK: return "ok";
    case KVF_ERR_ARG: return "bad argument";
    case KVF_ERR_SHAPE: return "shape mismatch";
    case KVF_ERR_DTYPE: return "wrong dtype";
    case KVF_ERR_DEVICE: return "wrong device";
    case KVF_ERR_OOM: return "out of memory";
    case KVF_ERR_IO: return "i/o error";
    case KVF_ERR_FORMAT: return "malformed file";
    case KVF_ERR_UNSUPPORTED: return "not supported";
    case KVF_ERR_NUMERIC: return "numerical failure";
    case KVF_ERR_BACKEND: return "backend failure";
    case KVF_ERR_STATE: return "bad state";
    }
    return "unknown";
}
