/* error.h — status codes and the per-thread error message.
 * Library code never aborts or exits: a failing function returns a kvf_status (or NULL)
 * and records one message, with the file and line that raised it, for cli/ to print. */
#ifndef KVF_ERROR_H
#define KVF_ERROR_H

#include <stdbool.h>

enum kvf_status {
    KVF_OK = 0,
    KVF_ERR_ARG,         /* bad argument: wrong value, NULL where a tensor is needed */
    KVF_ERR_SHAPE,       /* shapes that do not fit the op */
    KVF_ERR_DTYPE,       /* a dtype the op or backend does not take */
    KVF_ERR_DEVICE,      /* operands on different devices, or a device that is not built */
    KVF_ERR_OOM,         /* an allocation failed */
    KVF_ERR_IO,          /* a file could not be opened, read or written */
    KVF_ERR_FORMAT,      /* a file's contents are malformed */
    KVF_ERR_UNSUPPORTED, /* valid input that kvforge does not handle */
    KVF_ERR_NUMERIC,     /* NaN/Inf where a number was needed */
    KVF_ERR_BACKEND,     /* a BLAS/CUDA library call failed */
    KVF_ERR_STATE,       /* a call out of order (e.g. backward without a tape) */
};
typedef enum kvf_status kvf_status;

/* Records the message if none is pending (the first failure is the cause) and returns code. */
kvf_status kvf_error_set_at(const char *file, int line, kvf_status code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define kvf_error_set(code, ...) kvf_error_set_at(__FILE__, __LINE__, (code), __VA_ARGS__)

const char *kvf_error_message(void);      /* "" when no error is pending */
const char *kvf_error_location(void);     /* "file.c:123" of the first failure */
kvf_status  kvf_error_code(void);
bool        kvf_error_pending(void);
void        kvf_error_clear(void);
const char *kvf_status_name(kvf_status s);

/* Return early with a recorded error when cond is false. */
#define KVF_CHECK(cond, code, ...) \
    do { if (!(cond)) return kvf_error_set((code), __VA_ARGS__); } while (0)
#define KVF_CHECK_NULL(cond, code, ...) \
    do { if (!(cond)) { kvf_error_set((code), __VA_ARGS__); return NULL; } } while (0)
/* Propagate a failed status unchanged. */
#define KVF_TRY(expr) \
    do { kvf_status kvf_try_s_ = (expr); if (kvf_try_s_ != KVF_OK) return kvf_try_s_; } while (0)

#endif
