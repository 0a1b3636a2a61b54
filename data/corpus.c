/* corpus.c — text / JSONL / llm.c shard / archive readers into one token stream (corpus.h).
 * Every input is read through a small sequential "source" (a FILE, bytes in memory, or an
 * archive entry), so the same readers work on plain files and inside (nested) archives. */
#include "corpus.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "shard.h"

#define CHUNK 65536
#define MAX_DIR_DEPTH 64
#define MAX_ARCHIVE_DEPTH 8
/* Sizes read from headers (an archive entry's size, a shard's token count) are hints: a few
 * corrupt bytes can claim gigabytes. At most this much is reserved before data arrives. */
#define PREALLOC_MAX ((int64_t)64 << 20)

/* ---- sources ------------------------------------------------------------------------------- */

typedef struct src src;
struct src {
    const char *name; /* for messages: a path, or "ARCHIVE:ENTRY" */
    int64_t size;     /* bytes, or -1 when unknown */
    /* Up to n bytes into buf: the count, 0 at the end, -1 with an error recorded. */
    long (*read)(src *s, void *buf, size_t n);
    void *ud;
};

static long file_read(src *s, void *buf, size_t n) {
    FILE *fp = s->ud;
    size_t got = fread(buf, 1, n, fp);
    if (got == 0 && ferror(fp)) {
        kvf_error_set(KVF_ERR_IO, "cannot read %s: %s", s->name, strerror(errno ? errno : EIO));
        return -1;
    }
    return (long)got;
}

struct mem_ud {
    const unsigned char *p;
    size_t len, pos;
};

static long mem_read(src *s, void *buf, size_t n) {
    struct mem_ud *m = s->ud;
    size_t k = m->len - m->pos < n ? m->len - m->pos : n;
    if (k) memcpy(buf, m->p + m->pos, k);
    m->pos += k;
    return (long)k;
}

struct entry_ud {
    struct archive *a;
};

static long entry_read(src *s, void *buf, size_t n) {
    struct entry_ud *e = s->ud;
    la_ssize_t got = archive_read_data(e->a, buf, n);
    if (got < 0) {
        kvf_error_set(KVF_ERR_FORMAT, "%s: corrupt or truncated archive data: %s", s->name,
                      archive_error_string(e->a) ? archive_error_string(e->a) : "read failed");
        return -1;
    }
    return (long)got;
}

/* Read until n bytes or the end: the count read, or -1 (error recorded). */
static long read_full(src *s, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        long k = s->read(s, (char *)buf + got, n - got);
        if (k < 0) return -1;
        if (k == 0) break;
        got += (size_t)k;
    }
    return (long)got;
}

static kvf_status read_all(src *s, kvf_bytes *b) {
    if (s->size >= 0)
        KVF_TRY(kvf_bytes_reserve(b, (size_t)(s->size < PREALLOC_MAX ? s->size : PREALLOC_MAX)));
    for (;;) {
        KVF_TRY(kvf_bytes_reserve(b, CHUNK));
        long k = s->read(s, b->data + b->len, CHUNK);
        if (k < 0) return kvf_error_code();
        if (k == 0) break;
        b->len += (size_t)k;
    }
    if (b->data) b->data[b->len] = '\0';
    return KVF_OK;
}

/* ---- the reader ---------------------------------------------------------------------------- */

struct reader {
    const kvf_tokenizer *tok;
    int64_t max_tokens;
    kvf_ids *out;
    bool done; /* max_tokens reached */
    int archive_depth;
};

static void clamp(struct reader *r) {
    if (r->max_tokens > 0 && r->out->count >= r->max_tokens) {
        r->out->count = r->max_tokens;
        r->done = true;
    }
}

/* lineno > 0: a JSONL line, named in messages as NAME:LINE. */
static kvf_status add_document(struct reader *r, const char *name, long long lineno,
                               const char *text, size_t len) {
    if (r->done) return KVF_OK;
    KVF_CHECK(r->tok, KVF_ERR_ARG, "%s: reading text needs a tokenizer", name);
    if (r->out->count > 0 && r->tok->eos_id >= 0) KVF_TRY(kvf_ids_push(r->out, r->tok->eos_id));
    kvf_status s = kvf_tokenizer_encode(r->tok, text, len, r->out);
    if (s != KVF_OK) {
        /* The tokenizer's message (e.g. invalid UTF-8 at an offset) does not know the file. */
        char msg[768];
        snprintf(msg, sizeof msg, "%s", kvf_error_message());
        kvf_error_clear();
        if (lineno > 0) return kvf_error_set(s, "%s:%lld: %s", name, lineno, msg);
        return kvf_error_set(s, "%s: %s", name, msg);
    }
    clamp(r);
    return KVF_OK;
}

static bool has_suffix(const char *name, const char *suf) {
    size_t n = strlen(name), k = strlen(suf);
    return n >= k && strcasecmp(name + n - k, suf) == 0;
}

static const char *const archive_suffixes[] = {".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2",
                                               ".tar.xz", ".txz", ".tar.zst", ".tzst", ".zip"};
static const char *const compressed_suffixes[] = {".gz", ".bz2", ".xz", ".zst"};

kvf_corpus_kind kvf_corpus_kind_of(const char *name) {
    for (size_t i = 0; i < sizeof archive_suffixes / sizeof *archive_suffixes; i++)
        if (has_suffix(name, archive_suffixes[i])) return KVF_CORPUS_ARCHIVE;
    for (size_t i = 0; i < sizeof compressed_suffixes / sizeof *compressed_suffixes; i++)
        if (has_suffix(name, compressed_suffixes[i])) return KVF_CORPUS_COMPRESSED;
    if (has_suffix(name, ".bin")) return KVF_CORPUS_SHARD;
    if (has_suffix(name, ".jsonl") || has_suffix(name, ".ndjson")) return KVF_CORPUS_JSONL;
    return KVF_CORPUS_TEXT;
}

static bool hidden_name(const char *path) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    return base[0] == '.';
}

static kvf_status read_source(struct reader *r, src *s, const char *kind_name);

/* ---- plain text ---------------------------------------------------------------------------- */

static kvf_status read_text(struct reader *r, src *s) {
    kvf_bytes b = {0};
    kvf_status st = read_all(s, &b);
    if (st == KVF_OK) st = add_document(r, s->name, 0, b.data ? b.data : "", b.len);
    kvf_bytes_free(&b);
    return st;
}

/* ---- JSONL --------------------------------------------------------------------------------- */

static bool blank(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\n') return false;
    return true;
}

static kvf_status jsonl_line(struct reader *r, src *s, long long lineno, const char *p, size_t n) {
    if (lineno == 1 && n >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) p += 3, n -= 3; /* UTF-8 BOM */
    if (blank(p, n)) return KVF_OK;
    json_error_t jerr;
    json_t *doc = json_loadb(p, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    KVF_CHECK(doc, KVF_ERR_FORMAT, "%s:%lld: invalid JSON at column %d: %s", s->name, lineno,
              jerr.column, jerr.text);
    kvf_status st = KVF_OK;
    json_t *text = json_is_object(doc) ? json_object_get(doc, "text") : NULL;
    if (!json_is_object(doc))
        st = kvf_error_set(KVF_ERR_FORMAT, "%s:%lld: expected a JSON object with a \"text\" string",
                           s->name, lineno);
    else if (!text)
        st = kvf_error_set(KVF_ERR_FORMAT, "%s:%lld: object has no \"text\" key", s->name, lineno);
    else if (!json_is_string(text))
        st = kvf_error_set(KVF_ERR_FORMAT, "%s:%lld: \"text\" is not a string", s->name, lineno);
    else
        st = add_document(r, s->name, lineno, json_string_value(text), json_string_length(text));
    json_decref(doc);
    return st;
}

static kvf_status read_jsonl(struct reader *r, src *s) {
    char *chunk = malloc(CHUNK);
    KVF_CHECK(chunk, KVF_ERR_OOM, "%s: out of memory", s->name);
    kvf_bytes line = {0};
    kvf_status st = KVF_OK;
    long long lineno = 1;
    bool pending = false; /* line holds a started, unfinished line */
    while (st == KVF_OK && !r->done) {
        long k = s->read(s, chunk, CHUNK);
        if (k < 0) {
            st = kvf_error_code();
            break;
        }
        if (k == 0) break;
        const char *p = chunk, *end = chunk + k;
        while (p < end && st == KVF_OK && !r->done) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            const char *stop = nl ? nl : end;
            if (!nl || pending) {
                st = kvf_bytes_append(&line, p, (size_t)(stop - p));
                pending = true;
                if (st != KVF_OK || !nl) break;
                st = jsonl_line(r, s, lineno, line.data, line.len);
                line.len = 0;
                pending = false;
            } else {
                st = jsonl_line(r, s, lineno, p, (size_t)(stop - p)); /* whole line in the chunk */
            }
            lineno++;
            p = nl + 1;
        }
    }
    if (st == KVF_OK && pending && !r->done) st = jsonl_line(r, s, lineno, line.data, line.len);
    kvf_bytes_free(&line);
    free(chunk);
    return st;
}

/* ---- llm.c shards -------------------------------------------------------------------------- */

static kvf_status read_shard(struct reader *r, src *s) {
    unsigned char header[KVF_SHARD_HEADER_BYTES];
    long got = read_full(s, header, sizeof header);
    if (got < 0) return kvf_error_code();
    KVF_CHECK(got == (long)sizeof header, KVF_ERR_FORMAT,
              "%s: truncated llm.c shard: expected a %d-byte header, found only %ld bytes", s->name,
              KVF_SHARD_HEADER_BYTES, got);
    int elem;
    int64_t count;
    KVF_TRY(kvf_shard_parse_header(s->name, header, &elem, &count));
    int64_t expected = KVF_SHARD_HEADER_BYTES + count * elem;
    KVF_CHECK(s->size < 0 || s->size == expected, KVF_ERR_FORMAT,
              "%s: llm.c shard size mismatch: expected %lld bytes (1024-byte header + %lld tokens "
              "of %d bytes, as the header says), found %lld bytes",
              s->name, (long long)expected, (long long)count, elem, (long long)s->size);

    int64_t want = count; /* tokens to keep */
    if (r->max_tokens > 0 && r->max_tokens - r->out->count < want)
        want = r->max_tokens - r->out->count;
    if (want < 0) want = 0;
    KVF_TRY(kvf_ids_reserve(r->out, want < PREALLOC_MAX / 4 ? want : PREALLOC_MAX / 4));
    /* With a known size the file is already checked: stop after the tokens we keep. Otherwise
     * read everything, so that a short or long entry is still caught. */
    int64_t to_read = s->size >= 0 ? want : count;
    unsigned char *buf = malloc(CHUNK);
    KVF_CHECK(buf, KVF_ERR_OOM, "%s: out of memory", s->name);
    int32_t vocab = r->tok ? r->tok->vocab_size : INT32_MAX;
    int64_t done = 0;
    kvf_status st = KVF_OK;
    while (done < to_read && st == KVF_OK) {
        int64_t n = to_read - done;
        if (n > CHUNK / elem) n = CHUNK / elem;
        long k = read_full(s, buf, (size_t)(n * elem));
        if (k < 0) {
            st = kvf_error_code();
            break;
        }
        if (k != n * elem) {
            st = kvf_error_set(KVF_ERR_FORMAT,
                               "%s: truncated llm.c shard: expected %lld bytes (the header says "
                               "%lld tokens), found only %lld bytes",
                               s->name, (long long)expected, (long long)count,
                               (long long)(KVF_SHARD_HEADER_BYTES + done * elem + k));
            break;
        }
        if (done < want) st = kvf_ids_reserve(r->out, want - done < n ? want - done : n);
        for (int64_t i = 0; i < n && st == KVF_OK; i++) {
            int64_t idx = done + i;
            const unsigned char *p = buf + i * elem;
            uint32_t t = elem == 2 ? (uint32_t)p[0] | (uint32_t)p[1] << 8
                                   : (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                                         (uint32_t)p[3] << 24;
            if (t >= (uint32_t)vocab) {
                if (r->tok)
                    st = kvf_error_set(KVF_ERR_FORMAT,
                                       "%s: token %u at index %lld is outside the vocabulary of "
                                       "tokenizer %s (%d ids)",
                                       s->name, (unsigned)t, (long long)idx, r->tok->name, (int)vocab);
                else
                    st = kvf_error_set(KVF_ERR_FORMAT,
                                       "%s: token %u at index %lld does not fit an int32 id", s->name,
                                       (unsigned)t, (long long)idx);
            } else if (idx < want) {
                r->out->data[r->out->count++] = (int32_t)t;
            }
        }
        done += n;
    }
    if (st == KVF_OK && s->size < 0) {
        long extra = read_full(s, buf, 1);
        if (extra < 0) st = kvf_error_code();
        else if (extra > 0)
            st = kvf_error_set(KVF_ERR_FORMAT,
                               "%s: llm.c shard size mismatch: expected %lld bytes (the header "
                               "says %lld tokens), found more data after them",
                               s->name, (long long)expected, (long long)count);
    }
    free(buf);
    if (st == KVF_OK) clamp(r);
    return st;
}

/* ---- archives ------------------------------------------------------------------------------ */

struct archive_in {
    src *s;
    void *buf;
};

static la_ssize_t archive_cb_read(struct archive *a, void *ud, const void **out) {
    struct archive_in *in = ud;
    long k = read_full(in->s, in->buf, CHUNK);
    *out = in->buf;
    if (k < 0) {
        archive_set_error(a, EIO, "%s", kvf_error_message());
        return -1;
    }
    return (la_ssize_t)k;
}

/* The name inside a single compressed file: "x.jsonl.gz" → "x.jsonl". */
static char *strip_compression(const char *name) {
    char *inner = strdup(name);
    if (!inner) return NULL;
    for (size_t i = 0; i < sizeof compressed_suffixes / sizeof *compressed_suffixes; i++) {
        if (has_suffix(inner, compressed_suffixes[i])) {
            inner[strlen(inner) - strlen(compressed_suffixes[i])] = '\0';
            break;
        }
    }
    return inner;
}

/* s == NULL: the archive is the file at path (opened seekable, which zip prefers). */
static kvf_status read_archive(struct reader *r, src *s, const char *path, bool single) {
    const char *aname = s ? s->name : path;
    KVF_CHECK(r->archive_depth < MAX_ARCHIVE_DEPTH, KVF_ERR_FORMAT,
              "%s: archives nested more than %d deep", aname, MAX_ARCHIVE_DEPTH);
    struct archive *a = archive_read_new();
    KVF_CHECK(a, KVF_ERR_OOM, "%s: out of memory opening the archive", aname);
    archive_read_support_filter_all(a);
    if (single) {
        archive_read_support_format_raw(a);
    } else {
        archive_read_support_format_tar(a);
        archive_read_support_format_gnutar(a);
        archive_read_support_format_zip(a);
    }
    struct archive_in in = {.s = s, .buf = NULL};
    int rc;
    if (s) {
        in.buf = malloc(CHUNK);
        if (!in.buf) {
            archive_read_free(a);
            return kvf_error_set(KVF_ERR_OOM, "%s: out of memory opening the archive", aname);
        }
        rc = archive_read_open(a, &in, NULL, archive_cb_read, NULL);
    } else {
        rc = archive_read_open_filename(a, path, CHUNK);
    }
    kvf_status st = KVF_OK;
    if (rc != ARCHIVE_OK) {
        st = kvf_error_set(s ? KVF_ERR_FORMAT : (archive_errno(a) == ENOENT ? KVF_ERR_IO : KVF_ERR_FORMAT),
                           "%s: cannot open as an archive: %s", aname,
                           archive_error_string(a) ? archive_error_string(a) : "unknown error");
    }
    r->archive_depth++;
    char *last = NULL; /* name of the last entry read, for messages */
    char *inner_single = single ? strip_compression(aname) : NULL;
    if (single && !inner_single && st == KVF_OK) st = kvf_error_set(KVF_ERR_OOM, "%s: out of memory", aname);
    while (st == KVF_OK && !r->done) {
        struct archive_entry *e;
        rc = archive_read_next_header(a, &e);
        if (rc == ARCHIVE_EOF) break;
        if (rc < ARCHIVE_WARN) {
            const char *msg = archive_error_string(a) ? archive_error_string(a) : "read failed";
            if (last)
                st = kvf_error_set(KVF_ERR_FORMAT, "%s: corrupt or truncated archive after entry %s: %s",
                                   aname, last, msg);
            else
                st = kvf_error_set(KVF_ERR_FORMAT, "%s: corrupt or truncated archive at its first entry: %s",
                                   aname, msg);
            break;
        }
        if (!single && archive_entry_filetype(e) != AE_IFREG) continue;
        const char *ename = single ? inner_single : archive_entry_pathname(e);
        if (!ename) ename = "(unnamed entry)";
        free(last);
        last = strdup(ename);
        if (!single && hidden_name(ename)) continue;
        size_t dn = strlen(aname) + strlen(ename) + 2;
        char *display = malloc(dn);
        if (!display || !last) {
            free(display);
            st = kvf_error_set(KVF_ERR_OOM, "%s: out of memory", aname);
            break;
        }
        if (single) snprintf(display, dn, "%s", aname);
        else snprintf(display, dn, "%s:%s", aname, ename);
        struct entry_ud eud = {.a = a};
        src child = {.name = display,
                     .size = (!single && archive_entry_size_is_set(e)) ? (int64_t)archive_entry_size(e) : -1,
                     .read = entry_read,
                     .ud = &eud};
        st = read_source(r, &child, ename);
        free(display);
    }
    r->archive_depth--;
    free(last);
    free(inner_single);
    archive_read_free(a);
    free(in.buf);
    return st;
}

/* ---- dispatch ------------------------------------------------------------------------------ */

/* s is a sequential source; kind_name decides how it is read. */
static kvf_status read_source(struct reader *r, src *s, const char *kind_name) {
    if (r->done) return KVF_OK;
    switch (kvf_corpus_kind_of(kind_name)) {
    case KVF_CORPUS_SHARD: return read_shard(r, s);
    case KVF_CORPUS_JSONL: return read_jsonl(r, s);
    case KVF_CORPUS_ARCHIVE: return read_archive(r, s, NULL, false);
    case KVF_CORPUS_COMPRESSED: return read_archive(r, s, NULL, true);
    case KVF_CORPUS_TEXT: return read_text(r, s);
    }
    return read_text(r, s);
}

static kvf_status read_file(struct reader *r, const char *path, const struct stat *stt) {
    kvf_corpus_kind kind = kvf_corpus_kind_of(path);
    if (kind == KVF_CORPUS_ARCHIVE) return read_archive(r, NULL, path, false);
    FILE *fp = fopen(path, "rb");
    KVF_CHECK(fp, KVF_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    src s = {.name = path,
             .size = S_ISREG(stt->st_mode) ? (int64_t)stt->st_size : -1,
             .read = file_read,
             .ud = fp};
    kvf_status st = read_source(r, &s, path);
    fclose(fp);
    return st;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static kvf_status read_path(struct reader *r, const char *path, int depth);

static kvf_status read_dir(struct reader *r, const char *path, int depth) {
    KVF_CHECK(depth < MAX_DIR_DEPTH, KVF_ERR_IO, "%s: directories nested more than %d deep (a link loop?)",
              path, MAX_DIR_DEPTH);
    DIR *d = opendir(path);
    KVF_CHECK(d, KVF_ERR_IO, "cannot open directory %s: %s", path, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    kvf_status st = KVF_OK;
    struct dirent *de;
    errno = 0;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue; /* ".", "..", hidden files, writers' temp files */
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **p = realloc(names, cap * sizeof *names);
            if (!p) {
                st = kvf_error_set(KVF_ERR_OOM, "%s: out of memory listing the directory", path);
                break;
            }
            names = p;
        }
        names[n] = strdup(de->d_name);
        if (!names[n]) {
            st = kvf_error_set(KVF_ERR_OOM, "%s: out of memory listing the directory", path);
            break;
        }
        n++;
        errno = 0;
    }
    if (st == KVF_OK && errno != 0)
        st = kvf_error_set(KVF_ERR_IO, "cannot list directory %s: %s", path, strerror(errno));
    closedir(d);
    if (st == KVF_OK) qsort(names, n, sizeof *names, cmp_names);
    for (size_t i = 0; i < n && st == KVF_OK && !r->done; i++) {
        size_t len = strlen(path) + strlen(names[i]) + 2;
        char *child = malloc(len);
        if (!child) {
            st = kvf_error_set(KVF_ERR_OOM, "%s: out of memory", path);
            break;
        }
        snprintf(child, len, "%s%s%s", path, path[strlen(path) - 1] == '/' ? "" : "/", names[i]);
        st = read_path(r, child, depth + 1);
        free(child);
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return st;
}

static kvf_status read_path(struct reader *r, const char *path, int depth) {
    struct stat stt;
    KVF_CHECK(stat(path, &stt) == 0, KVF_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    if (S_ISDIR(stt.st_mode)) return read_dir(r, path, depth);
    if (depth > 0 && !S_ISREG(stt.st_mode)) return KVF_OK; /* sockets, fifos inside folders */
    return read_file(r, path, &stt);
}

static kvf_status reader_init(struct reader *r, const kvf_corpus_opts *opts, kvf_token_stream *out) {
    KVF_CHECK(out, KVF_ERR_ARG, "corpus: NULL output stream");
    KVF_CHECK(!opts || opts->max_tokens >= 0, KVF_ERR_ARG, "corpus: negative max_tokens %lld",
              (long long)opts->max_tokens);
    *r = (struct reader){.tok = opts ? opts->tok : NULL,
                         .max_tokens = opts ? opts->max_tokens : 0,
                         .out = out};
    clamp(r);
    return KVF_OK;
}

kvf_status kvf_corpus_read(const char *path, const kvf_corpus_opts *opts, kvf_token_stream *out) {
    return kvf_corpus_read_paths(&path, 1, opts, out);
}

kvf_status kvf_corpus_read_paths(const char *const *paths, size_t n, const kvf_corpus_opts *opts,
                                 kvf_token_stream *out) {
    struct reader r;
    KVF_TRY(reader_init(&r, opts, out));
    kvf_status st = KVF_OK;
    for (size_t i = 0; i < n && st == KVF_OK && !r.done; i++) {
        KVF_CHECK(paths[i] && *paths[i], KVF_ERR_ARG, "corpus: empty path");
        st = read_path(&r, paths[i], 0);
    }
    if (st == KVF_OK) kvf_ids_shrink(out);
    return st;
}

kvf_status kvf_corpus_read_buffer(const char *name, const void *data, size_t len,
                                  const kvf_corpus_opts *opts, kvf_token_stream *out) {
    KVF_CHECK(name && (data || len == 0), KVF_ERR_ARG, "corpus: bad buffer arguments");
    struct reader r;
    KVF_TRY(reader_init(&r, opts, out));
    struct mem_ud m = {.p = data, .len = len, .pos = 0};
    src s = {.name = name, .size = (int64_t)len, .read = mem_read, .ud = &m};
    kvf_status st = read_source(&r, &s, name);
    if (st == KVF_OK) kvf_ids_shrink(out);
    return st;
}
