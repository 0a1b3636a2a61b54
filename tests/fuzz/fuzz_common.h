/* fuzz_common.h — shared by the fuzz harnesses (tests/fuzz, docs/fuzzing.md).
 *
 * Each harness defines LLVMFuzzerTestOneInput and is linked either with libFuzzer (clang,
 * -DKVF_FUZZ=ON, scripts/fuzz.sh) or with fuzz_replay.c (the fuzz-smoke CTest tests of the
 * normal build, which replay the seed corpora in tests/fuzz/corpus/TARGET/).
 *
 * Besides "no crash, no hang, no leak, no UB" (the sanitizers' job), the harnesses check the
 * error contract of autograd/error.h: a failure leaves exactly one pending message, it is not
 * empty, and (where a file name is given) it names the file. FUZZ_REQUIRE aborts otherwise,
 * which libFuzzer reports as a crash. */
#ifndef KVF_FUZZ_COMMON_H
#define KVF_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/error.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_REQUIRE(cond, ...)                                                            \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "fuzz: %s:%d: requirement failed: %s\n  ", __FILE__, __LINE__, \
                    #cond);                                                                \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fprintf(stderr, "\n  pending error: [%s] %s (at %s)\n",                        \
                    kvf_status_name(kvf_error_code()), kvf_error_message(),                \
                    kvf_error_location());                                                 \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

/* After a call returned failure st (or NULL): a message is pending and mentions name. */
static inline void fuzz_check_error(kvf_status st, const char *name) {
    FUZZ_REQUIRE(st != KVF_OK, "a failure without a status");
    FUZZ_REQUIRE(kvf_error_pending() && kvf_error_message()[0],
                 "failure (%s) without a recorded message", kvf_status_name(st));
    FUZZ_REQUIRE(kvf_error_code() == st, "returned %s but recorded %s", kvf_status_name(st),
                 kvf_status_name(kvf_error_code()));
    if (name)
        FUZZ_REQUIRE(strstr(kvf_error_message(), name) != NULL,
                     "the message does not name %s", name);
}

/* After a call succeeded: no error may be left pending. */
static inline void fuzz_check_ok(const char *what) {
    FUZZ_REQUIRE(!kvf_error_pending(), "%s succeeded but left an error pending", what);
}

/* data[0..size) as a NUL-terminated malloc'd string (stops at an embedded NUL when read as
 * C text, like a file read with fgets-style APIs would). */
static inline char *fuzz_strdup(const uint8_t *data, size_t size) {
    char *s = malloc(size + 1);
    if (!s) abort();
    if (size) memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

#endif
