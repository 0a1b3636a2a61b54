/* cli_util.h — argument parsing helpers shared by the subcommands; each prints the
 * usage error itself and returns false. */
#ifndef KVF_CLI_UTIL_H
#define KVF_CLI_UTIL_H

#include <stdbool.h>
#include <stdint.h>

#include "autograd/tensor.h"

bool kvf_cli_parse_i64(const char *flag, const char *s, int64_t min, int64_t *out);
bool kvf_cli_parse_double(const char *flag, const char *s, double *out);
bool kvf_cli_parse_device(const char *s, kvf_device *out);
/* --dtype f32|bf16 (NULL: bf16 on a GPU, f32 on the CPU), the model's compute dtype. */
bool kvf_cli_parse_compute_dtype(const char *s, kvf_device dev, kvf_dtype *out);

#endif
