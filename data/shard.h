/* shard.h — llm.c token shards (.bin): the header format, and the writer behind
 * `kvforge prepare`. Shards are read back through corpus.h (kvf_corpus_read).
 *
 * Layout (little-endian): int32 header[256] = {magic, version, token count, 0...}, then the
 * tokens:
 *   magic 20240520, version 1: uint16 tokens (vocab <= 65536; GPT-2 shards)
 *   magic 20240801, version 7: uint32 tokens (larger vocabularies; Llama-3 shards)
 * and the file is exactly 1024 + count * token size bytes.
 *
 * Writer: shards hold at most shard_tokens tokens each and are named PREFIX_000000.bin,
 * PREFIX_000001.bin, ...; each is written to a hidden temp file in the same folder
 * (.NAME.tmp.PID, which directory readers skip) and renamed into place when complete, so a
 * shard path either does not exist or holds a whole shard. Every write is checked; a failure
 * removes the temp file and names the path. The folder of PREFIX must exist. */
#ifndef KVF_DATA_SHARD_H
#define KVF_DATA_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "autograd/error.h"

#define KVF_SHARD_HEADER_INTS 256
#define KVF_SHARD_HEADER_BYTES 1024
#define KVF_SHARD_MAGIC_U16 20240520
#define KVF_SHARD_VERSION_U16 1
#define KVF_SHARD_MAGIC_U32 20240801
#define KVF_SHARD_VERSION_U32 7
#define KVF_SHARD_MAX_TOKENS INT32_MAX /* header[2] is an int32 */

/* Check a 1024-byte header read from `name` (used in error messages): magic, version and a
 * non-negative count. Sets *elem_size (2 or 4) and *count. KVF_ERR_FORMAT otherwise. */
kvf_status kvf_shard_parse_header(const char *name, const unsigned char *header, int *elem_size,
                                  int64_t *count);

/* Fill header[1024] for count tokens of elem_size (2 or 4) bytes. */
void kvf_shard_make_header(unsigned char *header, int elem_size, int64_t count);

/* The token size a writer uses for a vocabulary: 2 when vocab_size <= 65536, else 4. */
int kvf_shard_elem_size(int64_t vocab_size);

/* "PREFIX_%06d.bin" into buf; returns buf (truncated names are the caller's buffer size). */
const char *kvf_shard_path(char *buf, size_t n, const char *prefix, int index);

typedef struct kvf_shard_writer kvf_shard_writer;

/* A writer for tokens in [0, vocab_size), at most shard_tokens per shard (1..2^31-1).
 * NULL (error recorded) on a bad argument or out of memory; no file is touched yet. */
kvf_shard_writer *kvf_shard_writer_init(const char *prefix, int64_t vocab_size,
                                        int64_t shard_tokens);
/* Append tokens; full shards are written and renamed into place as they fill. A token outside
 * the vocabulary is KVF_ERR_ARG. After any failure the writer only fails (KVF_ERR_STATE). */
kvf_status kvf_shard_writer_add(kvf_shard_writer *w, const int32_t *tokens, int64_t n);
/* Write the last, partly filled shard (none when it would be empty). */
kvf_status kvf_shard_writer_finish(kvf_shard_writer *w);
int     kvf_shard_writer_shards(const kvf_shard_writer *w); /* shards completed so far */
int64_t kvf_shard_writer_tokens(const kvf_shard_writer *w); /* tokens in completed shards */
/* Removes an unfinished shard's temp file; completed shards stay. NULL is allowed. */
void kvf_shard_writer_free(kvf_shard_writer *w);

/* One call: tokens[0..n) into shards PREFIX_000000.bin, ...; *n_shards (may be NULL) gets the
 * number written (0 when n == 0). */
kvf_status kvf_shard_write(const char *prefix, const int32_t *tokens, int64_t n,
                           int64_t vocab_size, int64_t shard_tokens, int *n_shards);

#endif
