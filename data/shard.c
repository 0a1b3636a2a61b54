/* shard.c — llm.c shard header checks and the atomic shard writer (shard.h). */
#include "shard.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint32_t get_u32le(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_u32le(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

kvf_status kvf_shard_parse_header(const char *name, const unsigned char *header, int *elem_size,
                                  int64_t *count) {
    int32_t magic = (int32_t)get_u32le(header);
    int32_t version = (int32_t)get_u32le(header + 4);
    int32_t n = (int32_t)get_u32le(header + 8);
    int expected_version;
    if (magic == KVF_SHARD_MAGIC_U16) {
        expected_version = KVF_SHARD_VERSION_U16;
        *elem_size = 2;
    } else if (magic == KVF_SHARD_MAGIC_U32) {
        expected_version = KVF_SHARD_VERSION_U32;
        *elem_size = 4;
    } else {
        return kvf_error_set(KVF_ERR_FORMAT,
                             "%s: not an llm.c token shard: bad magic %d in the header (expected "
                             "%d for uint16 tokens or %d for uint32 tokens)",
                             name, (int)magic, KVF_SHARD_MAGIC_U16, KVF_SHARD_MAGIC_U32);
    }
    KVF_CHECK(version == expected_version, KVF_ERR_FORMAT,
              "%s: unsupported llm.c shard version %d for magic %d (expected version %d)", name,
              (int)version, (int)magic, expected_version);
    KVF_CHECK(n >= 0, KVF_ERR_FORMAT, "%s: llm.c shard header has a negative token count %d", name,
              (int)n);
    *count = n;
    return KVF_OK;
}

void kvf_shard_make_header(unsigned char *header, int elem_size, int64_t count) {
    memset(header, 0, KVF_SHARD_HEADER_BYTES);
    bool wide = elem_size == 4;
    put_u32le(header, wide ? KVF_SHARD_MAGIC_U32 : KVF_SHARD_MAGIC_U16);
    put_u32le(header + 4, wide ? KVF_SHARD_VERSION_U32 : KVF_SHARD_VERSION_U16);
    put_u32le(header + 8, (uint32_t)count);
}

int kvf_shard_elem_size(int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

const char *kvf_shard_path(char *buf, size_t n, const char *prefix, int index) {
    snprintf(buf, n, "%s_%06d.bin", prefix, index);
    return buf;
}

/* ---- writer -------------------------------------------------------------------------------- */

#define WBUF_BYTES 65536

struct kvf_shard_writer {
    char *prefix;
    int64_t vocab_size;
    int64_t shard_tokens;
    int elem;
    int index;        /* index of the shard being written (or the next one) */
    FILE *fp;         /* open temp file of the current shard, or NULL */
    char *path;       /* final path of the current shard */
    char *tmp;        /* its temp path */
    int64_t in_shard; /* tokens written to the current shard */
    int64_t total;    /* tokens in completed shards */
    bool failed;
    size_t buf_len;
    unsigned char buf[WBUF_BYTES];
};

static void fsync_dir_of(const char *path) {
    /* Best effort: makes the rename durable; some filesystems refuse fsync on directories. */
    char *dir = strdup(path);
    if (!dir) return;
    char *slash = strrchr(dir, '/');
    const char *d = dir;
    if (!slash) d = ".";
    else if (slash == dir) slash[1] = '\0';
    else *slash = '\0';
    int fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dir);
}

/* Abandon the current shard: close and remove its temp file. */
static void drop_current(kvf_shard_writer *w) {
    if (w->fp) {
        fclose(w->fp);
        w->fp = NULL;
    }
    if (w->tmp) unlink(w->tmp);
    free(w->tmp);
    free(w->path);
    w->tmp = w->path = NULL;
    w->buf_len = 0;
    w->in_shard = 0;
}

static kvf_status fail_io(kvf_shard_writer *w, int err, const char *what) {
    kvf_status s = kvf_error_set(KVF_ERR_IO, "cannot write shard %s (%s %s): %s",
                                 w->path ? w->path : w->prefix, what, w->tmp ? w->tmp : "",
                                 strerror(err ? err : EIO));
    drop_current(w);
    w->failed = true;
    return s;
}

static kvf_status open_shard(kvf_shard_writer *w) {
    size_t n = strlen(w->prefix) + 64;
    w->path = malloc(n);
    w->tmp = malloc(n + 32);
    if (!w->path || !w->tmp) {
        free(w->path);
        free(w->tmp);
        w->path = w->tmp = NULL;
        w->failed = true;
        return kvf_error_set(KVF_ERR_OOM, "cannot write shards %s: out of memory", w->prefix);
    }
    kvf_shard_path(w->path, n, w->prefix, w->index);
    const char *slash = strrchr(w->path, '/');
    int dirlen = slash ? (int)(slash - w->path + 1) : 0;
    snprintf(w->tmp, n + 32, "%.*s.%s.tmp.%ld", dirlen, w->path, w->path + dirlen, (long)getpid());
    w->fp = fopen(w->tmp, "wb");
    if (!w->fp) return fail_io(w, errno, "creating");
    unsigned char header[KVF_SHARD_HEADER_BYTES] = {0}; /* placeholder, rewritten at close */
    errno = 0;
    if (fwrite(header, 1, sizeof header, w->fp) != sizeof header) return fail_io(w, errno, "writing");
    w->in_shard = 0;
    w->buf_len = 0;
    return KVF_OK;
}

static kvf_status flush_buf(kvf_shard_writer *w) {
    if (w->buf_len == 0) return KVF_OK;
    errno = 0;
    if (fwrite(w->buf, 1, w->buf_len, w->fp) != w->buf_len) return fail_io(w, errno, "writing");
    w->buf_len = 0;
    return KVF_OK;
}

static kvf_status close_shard(kvf_shard_writer *w) {
    KVF_TRY(flush_buf(w));
    unsigned char header[KVF_SHARD_HEADER_BYTES];
    kvf_shard_make_header(header, w->elem, w->in_shard);
    errno = 0;
    if (fseek(w->fp, 0, SEEK_SET) != 0) return fail_io(w, errno, "seeking in");
    errno = 0;
    if (fwrite(header, 1, sizeof header, w->fp) != sizeof header) return fail_io(w, errno, "writing");
    errno = 0;
    if (fflush(w->fp) != 0) return fail_io(w, errno, "flushing");
    if (fsync(fileno(w->fp)) != 0) return fail_io(w, errno, "syncing");
    errno = 0;
    int rc = fclose(w->fp); /* the stream is gone after fclose, whatever it returns */
    w->fp = NULL;
    if (rc != 0) return fail_io(w, errno, "closing");
    if (rename(w->tmp, w->path) != 0) return fail_io(w, errno, "renaming");
    fsync_dir_of(w->path);
    free(w->tmp);
    free(w->path);
    w->tmp = w->path = NULL;
    w->total += w->in_shard;
    w->in_shard = 0;
    w->index++;
    return KVF_OK;
}

kvf_shard_writer *kvf_shard_writer_init(const char *prefix, int64_t vocab_size,
                                        int64_t shard_tokens) {
    KVF_CHECK_NULL(prefix && *prefix, KVF_ERR_ARG, "shard writer: empty output prefix");
    KVF_CHECK_NULL(vocab_size >= 1 && vocab_size <= (int64_t)INT32_MAX + 1, KVF_ERR_ARG,
                   "shard writer %s: vocabulary size %lld outside [1, 2^31]", prefix,
                   (long long)vocab_size);
    KVF_CHECK_NULL(shard_tokens >= 1 && shard_tokens <= KVF_SHARD_MAX_TOKENS, KVF_ERR_ARG,
                   "shard writer %s: tokens per shard %lld outside [1, %d]", prefix,
                   (long long)shard_tokens, KVF_SHARD_MAX_TOKENS);
    kvf_shard_writer *w = calloc(1, sizeof *w);
    KVF_CHECK_NULL(w, KVF_ERR_OOM, "shard writer %s: out of memory", prefix);
    w->prefix = strdup(prefix);
    if (!w->prefix) {
        free(w);
        kvf_error_set(KVF_ERR_OOM, "shard writer %s: out of memory", prefix);
        return NULL;
    }
    w->vocab_size = vocab_size;
    w->shard_tokens = shard_tokens;
    w->elem = kvf_shard_elem_size(vocab_size);
    return w;
}

kvf_status kvf_shard_writer_add(kvf_shard_writer *w, const int32_t *tokens, int64_t n) {
    KVF_CHECK(w, KVF_ERR_ARG, "shard writer: NULL writer");
    KVF_CHECK(!w->failed, KVF_ERR_STATE, "shard writer %s: an earlier write failed", w->prefix);
    KVF_CHECK(n >= 0 && (tokens || n == 0), KVF_ERR_ARG, "shard writer %s: bad token array",
              w->prefix);
    for (int64_t i = 0; i < n; i++) {
        int32_t t = tokens[i];
        if (t < 0 || t >= w->vocab_size) {
            kvf_status s = kvf_error_set(
                KVF_ERR_ARG, "shard writer %s: token %d (input position %lld) is outside the "
                             "vocabulary [0, %lld)",
                w->prefix, (int)t, (long long)i, (long long)w->vocab_size);
            drop_current(w);
            w->failed = true;
            return s;
        }
        if (!w->fp) KVF_TRY(open_shard(w));
        if (w->buf_len + (size_t)w->elem > WBUF_BYTES) KVF_TRY(flush_buf(w));
        unsigned char *p = w->buf + w->buf_len;
        uint32_t u = (uint32_t)t;
        p[0] = (unsigned char)u;
        p[1] = (unsigned char)(u >> 8);
        if (w->elem == 4) {
            p[2] = (unsigned char)(u >> 16);
            p[3] = (unsigned char)(u >> 24);
        }
        w->buf_len += (size_t)w->elem;
        if (++w->in_shard == w->shard_tokens) KVF_TRY(close_shard(w));
    }
    return KVF_OK;
}

kvf_status kvf_shard_writer_finish(kvf_shard_writer *w) {
    KVF_CHECK(w, KVF_ERR_ARG, "shard writer: NULL writer");
    KVF_CHECK(!w->failed, KVF_ERR_STATE, "shard writer %s: an earlier write failed", w->prefix);
    if (w->fp) KVF_TRY(close_shard(w));
    return KVF_OK;
}

int kvf_shard_writer_shards(const kvf_shard_writer *w) { return w ? w->index : 0; }
int64_t kvf_shard_writer_tokens(const kvf_shard_writer *w) { return w ? w->total : 0; }

void kvf_shard_writer_free(kvf_shard_writer *w) {
    if (!w) return;
    drop_current(w);
    free(w->prefix);
    free(w);
}

kvf_status kvf_shard_write(const char *prefix, const int32_t *tokens, int64_t n,
                           int64_t vocab_size, int64_t shard_tokens, int *n_shards) {
    if (n_shards) *n_shards = 0;
    kvf_shard_writer *w = kvf_shard_writer_init(prefix, vocab_size, shard_tokens);
    if (!w) return kvf_error_code();
    kvf_status s = kvf_shard_writer_add(w, tokens, n);
    if (s == KVF_OK) s = kvf_shard_writer_finish(w);
    if (n_shards) *n_shards = kvf_shard_writer_shards(w);
    kvf_shard_writer_free(w);
    return s;
}
