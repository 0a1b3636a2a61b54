/* corpus.h — read text sources into one contiguous int32 token stream.
 *
 * What a path can be, by its name (case-insensitive suffix):
 *   .bin                      llm.c token shard (shard.h): tokens copied as they are
 *   .jsonl, .ndjson           one JSON object per line with a string "text"; each line is a
 *                             document; blank lines are skipped; a malformed line, a missing
 *                             "text" or a non-string "text" is an error naming FILE:LINE
 *   .tar, .tar.gz, .tgz, .tar.bz2, .tbz2, .tar.xz, .txz, .tar.zst, .tzst, .zip
 *                             archive (libarchive): regular entries in archive order, each
 *                             dispatched by its own name (archives may nest); directories and
 *                             other non-files are skipped
 *   .gz, .bz2, .xz, .zst      one compressed file, dispatched by the name without the suffix
 *   anything else             plain text: the whole file is one document
 *   a directory               every file below it, sorted by name (byte order), recursively
 * Names whose last component starts with '.' (hidden files, macOS "._" entries, the shard
 * writer's temp files) are skipped inside directories and archives.
 *
 * Documents: when the tokenizer has an end-of-text id (eos_id >= 0), it is inserted before
 * every text or JSONL document that does not start the stream, so documents are separated
 * by exactly one EOT (also across files). Shard tokens are appended unchanged.
 *
 * Errors name the file (for archive entries "ARCHIVE:ENTRY") and say what was expected and
 * what was found. Memory: a text document is held whole while it is tokenized; JSONL is read
 * one line at a time; shards are read in chunks straight into the stream. */
#ifndef KVF_DATA_CORPUS_H
#define KVF_DATA_CORPUS_H

#include <stddef.h>
#include <stdint.h>

#include "autograd/error.h"
#include "ids.h"
#include "tokenizer.h"

/* A token stream is a growable id array: data[0..count). Free with kvf_ids_free. */
typedef kvf_ids kvf_token_stream;

enum kvf_corpus_kind {
    KVF_CORPUS_TEXT,
    KVF_CORPUS_JSONL,
    KVF_CORPUS_SHARD,
    KVF_CORPUS_ARCHIVE,    /* tar / zip, optionally compressed */
    KVF_CORPUS_COMPRESSED, /* a single gzip / bzip2 / xz / zstd file */
};
typedef enum kvf_corpus_kind kvf_corpus_kind;

/* How a file of this name is read (see the table above). */
kvf_corpus_kind kvf_corpus_kind_of(const char *name);

struct kvf_corpus_opts {
    const kvf_tokenizer *tok; /* needed for text and JSONL; NULL is fine for shards only. When
                                 set, shard tokens outside [0, tok->vocab_size) are an error. */
    int64_t max_tokens;       /* stop once the stream holds this many tokens; 0 = no limit */
};
typedef struct kvf_corpus_opts kvf_corpus_opts;

/* Append the tokens of path (file or directory) to out. On failure out keeps what was read
 * before the error; the caller still frees it. */
kvf_status kvf_corpus_read(const char *path, const kvf_corpus_opts *opts, kvf_token_stream *out);

/* kvf_corpus_read for each path in order. */
kvf_status kvf_corpus_read_paths(const char *const *paths, size_t n, const kvf_corpus_opts *opts,
                                 kvf_token_stream *out);

/* The same for bytes in memory, dispatched by name (fuzzing, embedded data). */
kvf_status kvf_corpus_read_buffer(const char *name, const void *data, size_t len,
                                  const kvf_corpus_opts *opts, kvf_token_stream *out);

#endif
