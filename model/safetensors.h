/* safetensors.h — reading and writing Hugging Face safetensors checkpoints.
 *
 * Reading: kvf_st_file_open maps a .safetensors file read-only and validates everything the
 * format promises (header length, JSON header, dtypes, shapes, byte ranges that cover the
 * data section exactly). Tensors are looked up by name; each gives its dtype, shape and a
 * pointer to its raw bytes inside the mapping, and is converted on use (kvf_st_tensor_read /
 * kvf_st_tensor_load), so a file is never copied as a whole. kvf_st_dir_open opens a model
 * folder: model.safetensors, or the shards listed by model.safetensors.index.json behind one
 * lookup.
 *
 * Writing: a kvf_st_writer collects (name, dtype, shape, data) entries and writes one file
 * (kvf_st_writer_write) or size-limited shards plus an index (kvf_st_writer_write_sharded).
 * Output is deterministic: entries sorted by name, data contiguous in that order, header
 * beginning with "__metadata__": {"format": "pt"} and padded with spaces to 8 bytes. Files
 * are written to "<path>.tmp.<pid>", fsynced and renamed into place.
 *
 * dtypes read and written: F32, F64, BF16, F16, I32, I64; shapes of rank 0..4 (KVF_MAX_DIMS).
 * Every failure returns a kvf_status (or NULL) with a message naming the file and problem:
 * KVF_ERR_FORMAT for malformed files, KVF_ERR_UNSUPPORTED for valid files kvforge does not
 * handle (other dtypes, rank > 4), KVF_ERR_IO for files that cannot be opened or written. */
#ifndef KVF_SAFETENSORS_H
#define KVF_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "autograd/tensor.h"

/* Largest header kvforge accepts (the reference implementation's limit). */
#define KVF_ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)

/* One tensor of an open file. Valid until its file (or directory) is closed. */
struct kvf_st_tensor {
    const char *name;
    const char *path;   /* the file it lives in */
    kvf_dtype dtype;
    int ndim;           /* 0 for a scalar */
    int64_t shape[KVF_MAX_DIMS];
    int64_t numel;
    const void *data;   /* raw little-endian bytes in the read-only mapping; may be unaligned */
    size_t nbytes;
    uint64_t offset;    /* byte offset of data within the file's data section */
};
typedef struct kvf_st_tensor kvf_st_tensor;

/* ---- one file ------------------------------------------------------------------------------ */

typedef struct kvf_st_file kvf_st_file;

kvf_st_file *kvf_st_file_open(const char *path);
/* The same for bytes in memory (fuzzing, embedded files): data[0..len) is copied, name stands
 * for the path in messages and kvf_st_file_path. */
kvf_st_file *kvf_st_file_open_buffer(const char *name, const void *data, size_t len);
void         kvf_st_file_close(kvf_st_file *f);

const char *kvf_st_file_path(const kvf_st_file *f);
size_t      kvf_st_file_count(const kvf_st_file *f);
/* i-th tensor in name order (strcmp), 0 <= i < count. */
const kvf_st_tensor *kvf_st_file_tensor(const kvf_st_file *f, size_t i);
/* NULL when the file has no such tensor (no error is recorded). */
const kvf_st_tensor *kvf_st_file_find(const kvf_st_file *f, const char *name);
/* As find, but a missing tensor is a KVF_ERR_ARG error naming the file. */
kvf_status kvf_st_file_get(const kvf_st_file *f, const char *name, const kvf_st_tensor **out);

/* The header's "__metadata__" map (string -> string), in key order. */
size_t      kvf_st_file_metadata_count(const kvf_st_file *f);
void        kvf_st_file_metadata_at(const kvf_st_file *f, size_t i, const char **key,
                                    const char **value);
const char *kvf_st_file_metadata(const kvf_st_file *f, const char *key); /* NULL if absent */

/* ---- converting a tensor on use ------------------------------------------------------------ */

/* Copy t into dst as numel elements of dtype (row-major). Any float dtype converts to any
 * float dtype (to bf16/f16 with round-to-nearest-even), i32/i64 to i32/i64 (range-checked);
 * float <-> integer is a KVF_ERR_DTYPE error. dst_bytes is dst's capacity. */
kvf_status kvf_st_tensor_read(const kvf_st_tensor *t, kvf_dtype dtype, void *dst,
                              size_t dst_bytes);
/* Into a contiguous CPU tensor of the same shape, converting to dst's dtype as above. */
kvf_status kvf_st_tensor_load(const kvf_st_tensor *t, kvf_tensor *dst);
/* A new owned CPU tensor (kvf_tensor_free_owned) of t's shape in dtype. */
kvf_tensor *kvf_st_tensor_load_owned(const kvf_st_tensor *t, kvf_dtype dtype);

/* "[2, 3] F32" into buf, for messages; returns buf. */
const char *kvf_st_tensor_describe(const kvf_st_tensor *t, char *buf, size_t n);

/* safetensors dtype names ("F32", "BF16", ...) <-> kvf_dtype. parse returns false for names
 * kvforge does not read. */
const char *kvf_st_dtype_name(kvf_dtype t);
bool        kvf_st_dtype_parse(const char *name, kvf_dtype *out);

/* ---- a model directory --------------------------------------------------------------------- */

typedef struct kvf_st_dir kvf_st_dir;

/* DIR/model.safetensors.index.json when it exists (each shard opened once; every weight_map
 * entry must be in its shard and no name may be in two shards), else DIR/model.safetensors. */
kvf_st_dir *kvf_st_dir_open(const char *dir);
void        kvf_st_dir_close(kvf_st_dir *d);

size_t               kvf_st_dir_count(const kvf_st_dir *d); /* tensors over all shards */
const kvf_st_tensor *kvf_st_dir_tensor(const kvf_st_dir *d, size_t i); /* name order */
const kvf_st_tensor *kvf_st_dir_find(const kvf_st_dir *d, const char *name);
kvf_status kvf_st_dir_get(const kvf_st_dir *d, const char *name, const kvf_st_tensor **out);
size_t             kvf_st_dir_shard_count(const kvf_st_dir *d);
const kvf_st_file *kvf_st_dir_shard(const kvf_st_dir *d, size_t i);

/* ---- writing ------------------------------------------------------------------------------- */

typedef struct kvf_st_writer kvf_st_writer;

kvf_st_writer *kvf_st_writer_init(void);
void           kvf_st_writer_free(kvf_st_writer *w);

/* Adds a tensor whose data (numel elements of src_dtype, row-major, any alignment) is
 * written converted to dtype (see kvf_st_tensor_read for the conversions; same dtype is a
 * byte copy). The data is borrowed: it must stay valid until the last write call. Names
 * must be unique and not "__metadata__". */
kvf_status kvf_st_writer_add_as(kvf_st_writer *w, const char *name, kvf_dtype dtype, int ndim,
                                const int64_t *shape, kvf_dtype src_dtype, const void *data);
/* Same with src_dtype == dtype. */
kvf_status kvf_st_writer_add(kvf_st_writer *w, const char *name, kvf_dtype dtype, int ndim,
                             const int64_t *shape, const void *data);
/* A contiguous CPU tensor, written as dtype (e.g. an f32 parameter saved as BF16). */
kvf_status kvf_st_writer_add_tensor(kvf_st_writer *w, const char *name, const kvf_tensor *t,
                                    kvf_dtype dtype);
/* Extra "__metadata__" entries besides "format": "pt" (copied). */
kvf_status kvf_st_writer_set_metadata(kvf_st_writer *w, const char *key, const char *value);

size_t   kvf_st_writer_count(const kvf_st_writer *w);
uint64_t kvf_st_writer_data_bytes(const kvf_st_writer *w); /* sum of output tensor bytes */

/* One file at path, atomically. */
kvf_status kvf_st_writer_write(kvf_st_writer *w, const char *path);
/* Into directory dir (which must exist): shards of at most max_shard_bytes of tensor data
 * (a larger tensor gets a shard of its own), named model-0000i-of-0000N.safetensors, plus
 * model.safetensors.index.json {"metadata": {"total_size": N}, "weight_map": {...}}; or,
 * when everything fits in one shard, model.safetensors and no index. Files of an earlier
 * save in dir that the new one does not use (model.safetensors, stale shards, the index)
 * are removed afterwards so the folder reads back as what was written. */
kvf_status kvf_st_writer_write_sharded(kvf_st_writer *w, const char *dir,
                                       uint64_t max_shard_bytes);

/* ---- streaming: the plan first, then the data tensor by tensor ---------------------------- */

/* Plans a tensor whose bytes come later through kvf_st_stream_put (the writer then only
 * serves as the plan of a stream; kvf_st_writer_write* refuse planned tensors). */
kvf_status kvf_st_writer_add_planned(kvf_st_writer *w, const char *name, kvf_dtype dtype,
                                     int ndim, const int64_t *shape);

/* Writing a checkpoint bigger than memory: every header is computed from the plan (w's
 * entries, in the order and shard split kvf_st_writer_write_sharded would use), the shard
 * files are created as "<file>.tmp.<pid>" in dir (which must exist), and each tensor's bytes
 * are then written at their place, in any order, converted on the way. finish checks that
 * every planned tensor was written, fsyncs, renames the shards into place and writes the
 * index (as kvf_st_writer_write_sharded does); abort (or a failed finish) removes the temp
 * files. w must outlive the stream; finish and abort free it. */
typedef struct kvf_st_stream kvf_st_stream;
kvf_st_stream *kvf_st_stream_begin(kvf_st_writer *w, const char *dir, uint64_t max_shard_bytes);
kvf_status     kvf_st_stream_put(kvf_st_stream *s, const char *name, kvf_dtype src_dtype,
                                 const void *data);
kvf_status     kvf_st_stream_finish(kvf_st_stream *s);
void           kvf_st_stream_abort(kvf_st_stream *s);

/* Drops the pages of t's bytes from this process's mapping of d (they stay in the page cache
 * and are read back if t is used again), so reading a checkpoint tensor by tensor keeps the
 * resident set small. A no-op for files not mapped from disk. */
void kvf_st_dir_release(const kvf_st_dir *d, const kvf_st_tensor *t);

#endif
