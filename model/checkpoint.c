/* checkpoint.c — HF model folders <-> kvf_model. See checkpoint.h. */
#define _GNU_SOURCE /* renameat2 (RENAME_EXCHANGE), nftw */
#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "autograd/backend.h"
#include "safetensors.h"

#define BUFFER_ROPE_FREQS "self_attn.rope_freqs"

/* ============================================================================================
 * the name map: one entry per kvforge parameter (or stored buffer)
 * ========================================================================================== */

enum src_kind {
    SRC_DIRECT, /* the source tensor is the parameter */
    SRC_CONV1D, /* source [in, total] (GPT-2 Conv1D): param [out, in] = columns [off, off+out)ᵀ */
    SRC_SLICE,  /* source [total]: param [n] = elements [off, off+n) */
};

struct entry {
    kvf_tensor *dst;  /* parameter, or a CPU f32 buffer */
    bool buffer;
    char src[200];    /* name in the file */
    enum src_kind kind;
    int64_t off;
    int src_ndim;
    int64_t src_shape[KVF_MAX_DIMS];
};

struct map {
    struct entry *e;
    int n;
};

static void map_free(struct map *mp) {
    free(mp->e);
    mp->e = NULL;
    mp->n = 0;
}

static void direct(struct entry *e, kvf_tensor *t, const char *name) {
    e->dst = t;
    snprintf(e->src, sizeof e->src, "%s", name);
    e->kind = SRC_DIRECT;
    e->src_ndim = t->ndim;
    for (int i = 0; i < t->ndim; i++) e->src_shape[i] = t->shape[i];
}

/* GPT-2 source of kvforge parameter `name`. */
static kvf_status gpt2_entry(const kvf_model_config *c, const char *pre, kvf_tensor *t,
                             struct entry *e) {
    const char *name = t->name;
    char rest[160];
    int l;
    int64_t q = (int64_t)c->n_q_heads * c->head_dim,
            k = (int64_t)c->n_kv_heads * c->head_dim, v = (int64_t)c->n_kv_heads * c->v_head_dim;
    direct(e, t, name);
    if (!strcmp(name, "model.embed_tokens.weight")) {
        snprintf(e->src, sizeof e->src, "%swte.weight", pre);
    } else if (!strcmp(name, "model.embed_positions.weight")) {
        snprintf(e->src, sizeof e->src, "%swpe.weight", pre);
    } else if (!strcmp(name, "model.norm.weight")) {
        snprintf(e->src, sizeof e->src, "%sln_f.weight", pre);
    } else if (!strcmp(name, "model.norm.bias")) {
        snprintf(e->src, sizeof e->src, "%sln_f.bias", pre);
    } else if (!strcmp(name, "lm_head.weight")) {
        /* GPT2LMHeadModel keeps lm_head outside the transformer */
    } else if (sscanf(name, "model.layers.%d.%159s", &l, rest) == 2) {
        static const struct {
            const char *kv, *hf;
        } same[] = {
            {"input_layernorm.weight", "ln_1.weight"},
            {"input_layernorm.bias", "ln_1.bias"},
            {"post_attention_layernorm.weight", "ln_2.weight"},
            {"post_attention_layernorm.bias", "ln_2.bias"},
            {"self_attn.o_proj.bias", "attn.c_proj.bias"},
            {"mlp.up_proj.bias", "mlp.c_fc.bias"},
            {"mlp.down_proj.bias", "mlp.c_proj.bias"},
        };
        for (size_t i = 0; i < sizeof same / sizeof *same; i++)
            if (!strcmp(rest, same[i].kv)) {
                snprintf(e->src, sizeof e->src, "%sh.%d.%s", pre, l, same[i].hf);
                return KVF_OK;
            }
        static const struct {
            const char *kv, *hf;
            int part; /* 0 q, 1 k, 2 v; -1 a whole Conv1D */
        } conv[] = {
            {"self_attn.q_proj.weight", "attn.c_attn.weight", 0},
            {"self_attn.k_proj.weight", "attn.c_attn.weight", 1},
            {"self_attn.v_proj.weight", "attn.c_attn.weight", 2},
            {"self_attn.q_proj.bias", "attn.c_attn.bias", 0},
            {"self_attn.k_proj.bias", "attn.c_attn.bias", 1},
            {"self_attn.v_proj.bias", "attn.c_attn.bias", 2},
            {"self_attn.o_proj.weight", "attn.c_proj.weight", -1},
            {"mlp.up_proj.weight", "mlp.c_fc.weight", -1},
            {"mlp.down_proj.weight", "mlp.c_proj.weight", -1},
        };
        for (size_t i = 0; i < sizeof conv / sizeof *conv; i++) {
            if (strcmp(rest, conv[i].kv)) continue;
            snprintf(e->src, sizeof e->src, "%sh.%d.%s", pre, l, conv[i].hf);
            int part = conv[i].part;
            int64_t offs[3] = {0, q, q + k};
            if (t->ndim == 1) { /* a c_attn bias slice */
                e->kind = SRC_SLICE;
                e->off = offs[part];
                e->src_ndim = 1;
                e->src_shape[0] = q + k + v;
            } else {
                e->kind = SRC_CONV1D;
                e->off = part < 0 ? 0 : offs[part];
                e->src_ndim = 2;
                e->src_shape[0] = t->shape[1];
                e->src_shape[1] = part < 0 ? t->shape[0] : q + k + v;
            }
            return KVF_OK;
        }
        return kvf_error_set(KVF_ERR_STATE, "checkpoint: no GPT-2 name for parameter %s", name);
    } else {
        return kvf_error_set(KVF_ERR_STATE, "checkpoint: no GPT-2 name for parameter %s", name);
    }
    return KVF_OK;
}

static kvf_status build_map(kvf_model *m, kvf_hf_arch arch, const char *gpt2_prefix,
                            struct map *mp) {
    int np = kvf_params_count(m->params);
    mp->e = calloc((size_t)np + (size_t)m->cfg.n_layers + 1, sizeof *mp->e);
    KVF_CHECK(mp->e, KVF_ERR_OOM, "checkpoint: out of memory");
    mp->n = 0;
    for (int i = 0; i < np; i++) {
        kvf_tensor *t = kvf_params_at(m->params, i);
        struct entry *e = &mp->e[mp->n++];
        if (arch == KVF_HF_GPT2) KVF_TRY(gpt2_entry(&m->cfg, gpt2_prefix, t, e));
        else direct(e, t, t->name);
    }
    for (int l = 0; l < m->cfg.n_layers; l++) {
        kvf_tensor *f = m->layers[l].rope_freqs;
        if (!f) continue;
        char name[128];
        snprintf(name, sizeof name, "model.layers.%d." BUFFER_ROPE_FREQS, l);
        struct entry *e = &mp->e[mp->n++];
        direct(e, f, name);
        e->buffer = true;
    }
    return KVF_OK;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static char *join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *s = malloc(a + b + 2);
    if (!s) return NULL;
    memcpy(s, dir, a);
    size_t k = a;
    if (a && dir[a - 1] != '/') s[k++] = '/';
    memcpy(s + k, name, b + 1);
    return s;
}

static const char *shape_str(int nd, const int64_t *sh, char *buf, size_t n) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < nd && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)sh[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
    return buf;
}

/* ============================================================================================
 * loading
 * ========================================================================================== */

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* Tensors a checkpoint may carry that are not parameters. */
static bool ignorable(const char *name, kvf_hf_arch arch, const kvf_model_config *c) {
    if (ends_with(name, "rotary_emb.inv_freq")) return true;
    if (c->tie_embeddings && !strcmp(name, "lm_head.weight")) return true;
    if (arch == KVF_HF_GPT2 && (ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias") ||
                                !strcmp(name, "attn.bias") || !strcmp(name, "attn.masked_bias")))
        return true;
    int l, n = 0;
    if (arch == KVF_HF_DEEPSEEK_V3 && sscanf(name, "model.layers.%d.%n", &l, &n) == 1 && n > 0 &&
        l >= c->n_layers)
        return true; /* multi-token-prediction layers (num_nextn_predict_layers) */
    return false;
}

static kvf_status check_tensor(const struct entry *e, const kvf_st_tensor *t, const char *cfg_path,
                               kvf_hf_arch arch) {
    char a[96], b[96];
    bool same = t->ndim == e->src_ndim;
    for (int i = 0; same && i < t->ndim; i++) same = t->shape[i] == e->src_shape[i];
    KVF_CHECK(same, KVF_ERR_SHAPE,
              "%s: tensor '%s' has shape %s, expected %s from %s (%s)", t->path, t->name,
              shape_str(t->ndim, t->shape, a, sizeof a),
              shape_str(e->src_ndim, e->src_shape, b, sizeof b), cfg_path, kvf_hf_arch_name(arch));
    bool fl = t->dtype == KVF_DTYPE_F32 || t->dtype == KVF_DTYPE_BF16 ||
              t->dtype == KVF_DTYPE_F16 || t->dtype == KVF_DTYPE_F64;
    KVF_CHECK(fl, KVF_ERR_DTYPE, "%s: tensor '%s' is %s; weights must be F32, BF16, F16 or F64",
              t->path, t->name, kvf_st_dtype_name(t->dtype));
    return KVF_OK;
}

/* Host bytes → the destination tensor (CPU memcpy or device upload). */
static kvf_status put(kvf_tensor *dst, const void *host) {
    size_t nb = kvf_tensor_nbytes(dst);
    if (kvf_tensor_device(dst) == KVF_DEVICE_CPU) {
        memcpy(kvf_tensor_data(dst), host, nb);
        return KVF_OK;
    }
    const kvf_backend *be = kvf_backend_get(kvf_tensor_device(dst));
    if (!be) return kvf_error_code();
    return be->upload(kvf_tensor_data(dst), host, nb);
}

static kvf_status load_entry(const struct entry *e, const kvf_st_tensor *t) {
    kvf_tensor *dst = e->dst;
    kvf_dtype dt = dst->dtype;
    size_t es = kvf_dtype_size(dt), nb = kvf_tensor_nbytes(dst);
    if (e->kind == SRC_DIRECT && kvf_tensor_device(dst) == KVF_DEVICE_CPU)
        return kvf_st_tensor_read(t, dt, kvf_tensor_data(dst), nb);
    size_t sb = (size_t)t->numel * es;
    unsigned char *src = malloc(sb ? sb : 1), *out = NULL;
    KVF_CHECK(src, KVF_ERR_OOM, "%s: tensor '%s': out of memory", t->path, t->name);
    kvf_status s = kvf_st_tensor_read(t, dt, src, sb);
    if (s == KVF_OK && e->kind != SRC_DIRECT) {
        out = malloc(nb ? nb : 1);
        if (!out) s = kvf_error_set(KVF_ERR_OOM, "%s: tensor '%s': out of memory", t->path, t->name);
    }
    if (s == KVF_OK && e->kind == SRC_CONV1D) {
        int64_t O = dst->shape[0], I = dst->shape[1], total = e->src_shape[1];
        for (int64_t o = 0; o < O; o++)
            for (int64_t i = 0; i < I; i++)
                memcpy(out + (size_t)(o * I + i) * es, src + (size_t)(i * total + e->off + o) * es, es);
    } else if (s == KVF_OK && e->kind == SRC_SLICE) {
        memcpy(out, src + (size_t)e->off * es, nb);
    }
    if (s == KVF_OK) s = put(dst, e->kind == SRC_DIRECT ? src : out);
    free(out);
    free(src);
    return s;
}

static const char *gpt2_prefix(const kvf_st_dir *d) {
    if (kvf_st_dir_find(d, "transformer.wte.weight")) return "transformer.";
    if (kvf_st_dir_find(d, "wte.weight")) return "";
    return "transformer.";
}

/* The file a missing tensor should have been in. */
static char *weights_source(const char *dir) {
    char *idx = join(dir, "model.safetensors.index.json");
    if (idx && access(idx, F_OK) == 0) return idx;
    free(idx);
    return join(dir, "model.safetensors");
}

static kvf_status load_weights(kvf_model *m, kvf_hf_arch arch, const char *dir,
                               const char *cfg_path, kvf_st_dir *d) {
    struct map mp = {0};
    const char **want = NULL;
    char *source = NULL;
    kvf_status s = build_map(m, arch, arch == KVF_HF_GPT2 ? gpt2_prefix(d) : "", &mp);
    if (s == KVF_OK) {
        want = malloc(((size_t)mp.n + 1) * sizeof *want);
        source = weights_source(dir);
        if (!want || !source) s = kvf_error_set(KVF_ERR_OOM, "%s: out of memory", dir);
    }
    /* 1. every parameter present, with its shape and a float dtype */
    for (int i = 0; s == KVF_OK && i < mp.n; i++) {
        const struct entry *e = &mp.e[i];
        const kvf_st_tensor *t = kvf_st_dir_find(d, e->src);
        if (!t) {
            char kv[240] = "";
            if (strcmp(e->src, e->dst->name ? e->dst->name : e->src))
                snprintf(kv, sizeof kv, " (kvforge's %s)", e->dst->name);
            s = kvf_error_set(KVF_ERR_FORMAT,
                              "%s: missing tensor '%s'%s, which the %s config %s needs", source,
                              e->src, kv, kvf_hf_arch_name(arch), cfg_path);
        } else {
            s = check_tensor(e, t, cfg_path, arch);
        }
        want[i] = e->src;
    }
    /* 2. nothing unexpected */
    if (s == KVF_OK) {
        qsort(want, (size_t)mp.n, sizeof *want, cmp_str);
        for (size_t i = 0; s == KVF_OK && i < kvf_st_dir_count(d); i++) {
            const kvf_st_tensor *t = kvf_st_dir_tensor(d, i);
            if (bsearch(&t->name, want, (size_t)mp.n, sizeof *want, cmp_str)) continue;
            if (ignorable(t->name, arch, &m->cfg)) continue;
            s = kvf_error_set(KVF_ERR_FORMAT,
                              "%s: unexpected tensor '%s': not a weight of the %s model that %s "
                              "describes",
                              t->path, t->name, kvf_hf_arch_name(arch), cfg_path);
        }
    }
    /* 3. copy, converting one tensor at a time */
    for (int i = 0; s == KVF_OK && i < mp.n; i++)
        s = load_entry(&mp.e[i], kvf_st_dir_find(d, mp.e[i].src));
    free(source);
    free(want);
    map_free(&mp);
    return s;
}

kvf_model *kvf_checkpoint_load_as(const char *dir, kvf_device device, kvf_dtype param_dtype) {
    KVF_CHECK_NULL(dir, KVF_ERR_ARG, "kvf_checkpoint_load: NULL folder");
    KVF_CHECK_NULL(param_dtype == KVF_DTYPE_F32 || param_dtype == KVF_DTYPE_F64, KVF_ERR_ARG,
                   "%s: master weights must be f32 or f64, not %s", dir,
                   kvf_dtype_name(param_dtype));
    char *cfg_path = join(dir, "config.json");
    KVF_CHECK_NULL(cfg_path, KVF_ERR_OOM, "%s: out of memory", dir);
    kvf_model_config cfg;
    kvf_hf_arch arch;
    kvf_model *m = NULL;
    kvf_st_dir *d = NULL;
    if (kvf_hf_config_read_arch(cfg_path, &cfg, &arch) != KVF_OK) goto fail;
    cfg.param_dtype = param_dtype;
    d = kvf_st_dir_open(dir);
    if (!d) goto fail;
    m = kvf_model_init(&cfg, device);
    if (!m) goto fail;
    if (load_weights(m, arch, dir, cfg_path, d) != KVF_OK) goto fail;
    kvf_st_dir_close(d);
    free(cfg_path);
    return m;
fail:
    kvf_model_free(m);
    kvf_st_dir_close(d);
    free(cfg_path);
    return NULL;
}

kvf_model *kvf_checkpoint_load(const char *dir, kvf_device device) {
    return kvf_checkpoint_load_as(dir, device, KVF_DTYPE_F32);
}

/* ============================================================================================
 * saving: tensors
 * ========================================================================================== */

struct owned {
    void **p;
    int n, cap;
};

static void *own(struct owned *o, size_t nbytes) {
    if (o->n == o->cap) {
        int cap = o->cap ? 2 * o->cap : 64;
        void **p = realloc(o->p, (size_t)cap * sizeof *p);
        if (!p) return NULL;
        o->p = p;
        o->cap = cap;
    }
    void *b = calloc(1, nbytes ? nbytes : 1);
    if (b) o->p[o->n++] = b;
    return b;
}

static void owned_free(struct owned *o) {
    for (int i = 0; i < o->n; i++) free(o->p[i]);
    free(o->p);
}

/* The tensor's values in host memory (its own storage on the CPU, else a download). */
static const void *host_values(const kvf_tensor *t, struct owned *o) {
    if (kvf_tensor_device(t) == KVF_DEVICE_CPU && kvf_tensor_is_contiguous(t))
        return kvf_tensor_data(t);
    void *b = own(o, kvf_tensor_nbytes(t));
    if (!b) {
        kvf_error_set(KVF_ERR_OOM, "checkpoint: out of host memory");
        return NULL;
    }
    if (kvf_tensor_to_host(t, b, kvf_tensor_nbytes(t)) != KVF_OK) return NULL;
    return b;
}

struct fused {
    const char *name;
    int ndim;
    int64_t shape[2];
    unsigned char *buf;
};

static kvf_status add_tensors(const kvf_model *m, const struct map *mp, kvf_dtype dtype,
                              kvf_st_writer *w, struct owned *o) {
    kvf_dtype md = kvf_params_dtype(m->params);
    size_t es = kvf_dtype_size(md);
    struct fused *fz = calloc((size_t)mp->n + 1, sizeof *fz);
    KVF_CHECK(fz, KVF_ERR_OOM, "checkpoint: out of memory");
    int nf = 0;
    kvf_status s = KVF_OK;
    for (int i = 0; s == KVF_OK && i < mp->n; i++) {
        const struct entry *e = &mp->e[i];
        const unsigned char *v = host_values(e->dst, o);
        if (!v) {
            s = kvf_error_code();
            break;
        }
        if (e->kind == SRC_DIRECT) {
            kvf_dtype out = e->buffer ? KVF_DTYPE_F32 : dtype; /* buffers keep full precision */
            s = kvf_st_writer_add_as(w, e->src, out, e->src_ndim, e->src_shape, e->dst->dtype, v);
            continue;
        }
        struct fused *f = NULL;
        for (int j = 0; j < nf && !f; j++)
            if (!strcmp(fz[j].name, e->src)) f = &fz[j];
        if (!f) {
            f = &fz[nf++];
            f->name = e->src;
            f->ndim = e->src_ndim;
            f->shape[0] = e->src_shape[0];
            f->shape[1] = e->src_ndim > 1 ? e->src_shape[1] : 1;
            f->buf = own(o, (size_t)(f->shape[0] * f->shape[1]) * es);
            if (!f->buf) {
                s = kvf_error_set(KVF_ERR_OOM, "checkpoint: out of host memory");
                break;
            }
        }
        if (e->kind == SRC_CONV1D) {
            int64_t O = e->dst->shape[0], I = e->dst->shape[1], total = f->shape[1];
            for (int64_t r = 0; r < O; r++)
                for (int64_t c = 0; c < I; c++)
                    memcpy(f->buf + (size_t)(c * total + e->off + r) * es, v + (size_t)(r * I + c) * es, es);
        } else {
            memcpy(f->buf + (size_t)e->off * es, v, kvf_tensor_nbytes(e->dst));
        }
    }
    for (int j = 0; s == KVF_OK && j < nf; j++)
        s = kvf_st_writer_add_as(w, fz[j].name, dtype, fz[j].ndim, fz[j].shape, md, fz[j].buf);
    free(fz);
    return s;
}

/* ============================================================================================
 * saving: the folder swap
 * ========================================================================================== */

static int rm_cb(const char *path, const struct stat *sb, int type, struct FTW *ftw) {
    (void)sb;
    (void)type;
    (void)ftw;
    return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

static void remove_tree(const char *path) {
    if (path) nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static bool checkpoint_file(const char *name) {
    unsigned a, b;
    int n = 0;
    if (!strcmp(name, "config.json") || !strcmp(name, "model.safetensors") ||
        !strcmp(name, "model.safetensors.index.json"))
        return true;
    return sscanf(name, "model-%5u-of-%5u.safetensors%n", &a, &b, &n) == 2 && n > 0 &&
           name[n] == '\0';
}

static kvf_status copy_file(const char *from, const char *to) {
    int in = open(from, O_RDONLY | O_CLOEXEC);
    if (in < 0) return kvf_error_set(KVF_ERR_IO, "cannot read %s: %s", from, strerror(errno));
    struct stat st;
    fstat(in, &st);
    int out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, st.st_mode & 07777);
    if (out < 0) {
        int e = errno;
        close(in);
        return kvf_error_set(KVF_ERR_IO, "cannot write %s: %s", to, strerror(e));
    }
    char buf[1 << 16];
    kvf_status s = KVF_OK;
    for (;;) {
        ssize_t r = read(in, buf, sizeof buf);
        if (r == 0) break;
        if (r < 0) {
            if (errno == EINTR) continue;
            s = kvf_error_set(KVF_ERR_IO, "cannot read %s: %s", from, strerror(errno));
            break;
        }
        for (ssize_t off = 0; off < r && s == KVF_OK;) {
            ssize_t k = write(out, buf + off, (size_t)(r - off));
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) s = kvf_error_set(KVF_ERR_IO, "cannot write %s: %s", to, strerror(errno));
            else off += k;
        }
        if (s != KVF_OK) break;
    }
    if (s == KVF_OK && fsync(out) != 0)
        s = kvf_error_set(KVF_ERR_IO, "cannot write %s: %s", to, strerror(errno));
    close(out);
    close(in);
    return s;
}

/* Files of the old folder that are not checkpoint files go into the new one before the swap
 * (hard links, or copies where links fail); subfolders and other entries are moved after. */
static kvf_status carry_files(const char *old, const char *fresh) {
    DIR *dp = opendir(old);
    if (!dp) return kvf_error_set(KVF_ERR_IO, "cannot read folder %s: %s", old, strerror(errno));
    kvf_status s = KVF_OK;
    struct dirent *de;
    while (s == KVF_OK && (de = readdir(dp))) {
        const char *n = de->d_name;
        if (!strcmp(n, ".") || !strcmp(n, "..") || checkpoint_file(n)) continue;
        char *a = join(old, n), *b = join(fresh, n);
        struct stat st;
        if (!a || !b) s = kvf_error_set(KVF_ERR_OOM, "%s: out of memory", old);
        else if (lstat(a, &st) != 0) s = kvf_error_set(KVF_ERR_IO, "cannot stat %s: %s", a, strerror(errno));
        else if (S_ISREG(st.st_mode)) {
            if (link(a, b) != 0) s = copy_file(a, b);
        } else if (S_ISLNK(st.st_mode)) {
            char target[PATH_MAX];
            ssize_t k = readlink(a, target, sizeof target - 1);
            if (k < 0) s = kvf_error_set(KVF_ERR_IO, "cannot read link %s: %s", a, strerror(errno));
            else {
                target[k] = '\0';
                if (symlink(target, b) != 0)
                    s = kvf_error_set(KVF_ERR_IO, "cannot create link %s: %s", b, strerror(errno));
            }
        }
        free(a);
        free(b);
    }
    closedir(dp);
    return s;
}

static kvf_status move_rest(const char *old, const char *fresh) {
    DIR *dp = opendir(old);
    if (!dp) return kvf_error_set(KVF_ERR_IO, "cannot read folder %s: %s", old, strerror(errno));
    kvf_status s = KVF_OK;
    struct dirent *de;
    while (s == KVF_OK && (de = readdir(dp))) {
        const char *n = de->d_name;
        if (!strcmp(n, ".") || !strcmp(n, "..") || checkpoint_file(n)) continue;
        char *a = join(old, n), *b = join(fresh, n);
        struct stat st;
        if (!a || !b) s = kvf_error_set(KVF_ERR_OOM, "%s: out of memory", old);
        else if (lstat(a, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode) &&
                 rename(a, b) != 0)
            s = kvf_error_set(KVF_ERR_IO,
                              "checkpoint saved as %s, but %s of the folder it replaced could not "
                              "be moved into it (%s); it is still in %s",
                              fresh, n, strerror(errno), old);
        free(a);
        free(b);
    }
    closedir(dp);
    return s;
}

static void fsync_dir(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

/* "<parent>/.<base>.<tag>.<pid>.<n>", created as a folder (mode 0777 & ~umask). */
static char *make_sibling(const char *parent, const char *base, const char *tag) {
    static atomic_uint counter;
    size_t n = strlen(parent) + strlen(base) + 64;
    for (int tries = 0; tries < 1000; tries++) {
        char *p = malloc(n);
        if (!p) return NULL;
        snprintf(p, n, "%s/.%s.%s.%ld.%u", parent, base, tag, (long)getpid(),
                 atomic_fetch_add(&counter, 1));
        if (mkdir(p, 0777) == 0) return p;
        int e = errno;
        free(p);
        if (e != EEXIST) {
            errno = e;
            return NULL;
        }
    }
    errno = EEXIST;
    return NULL;
}

struct target {
    char *path;   /* the folder to write (symlinks resolved) */
    char *parent;
    char *base;
    bool exists;
    mode_t mode;
};

static void target_free(struct target *t) {
    free(t->path);
    free(t->parent);
    free(t->base);
}

static kvf_status target_init(const char *dir, struct target *t) {
    memset(t, 0, sizeof *t);
    struct stat st;
    if (lstat(dir, &st) == 0 && S_ISLNK(st.st_mode)) {
        t->path = realpath(dir, NULL);
        if (!t->path)
            return kvf_error_set(KVF_ERR_IO, "cannot save into %s: %s", dir, strerror(errno));
    } else {
        t->path = strdup(dir);
        KVF_CHECK(t->path, KVF_ERR_OOM, "%s: out of memory", dir);
    }
    size_t len = strlen(t->path);
    while (len > 1 && t->path[len - 1] == '/') t->path[--len] = '\0';
    char *slash = strrchr(t->path, '/');
    const char *base = slash ? slash + 1 : t->path;
    t->parent = slash ? (slash == t->path ? strdup("/") : strndup(t->path, (size_t)(slash - t->path)))
                      : strdup(".");
    t->base = strdup(base);
    KVF_CHECK(t->parent && t->base, KVF_ERR_OOM, "%s: out of memory", dir);
    KVF_CHECK(*t->base && strcmp(t->base, ".") && strcmp(t->base, "..") && strcmp(t->path, "/"),
              KVF_ERR_ARG, "cannot save into %s: name the checkpoint folder itself", dir);
    if (stat(t->path, &st) == 0) {
        KVF_CHECK(S_ISDIR(st.st_mode), KVF_ERR_IO, "cannot save into %s: it exists and is not a folder",
                  dir);
        t->exists = true;
        t->mode = st.st_mode & 07777;
    } else if (errno != ENOENT) {
        return kvf_error_set(KVF_ERR_IO, "cannot save into %s: %s", dir, strerror(errno));
    }
    return KVF_OK;
}

/* Puts the finished folder `fresh` at t->path. On failure before the swap (*swapped false)
 * t->path is as it was and fresh is left for the caller to remove; after it, the new
 * checkpoint is in place and what could not be carried over stays where the message says. */
static kvf_status install(const struct target *t, const char *fresh, bool *swapped) {
    *swapped = false;
    if (!t->exists) {
        if (rename(fresh, t->path) != 0)
            return kvf_error_set(KVF_ERR_IO, "cannot save into %s (renaming %s): %s", t->path,
                                 fresh, strerror(errno));
        *swapped = true;
        fsync_dir(t->parent);
        return KVF_OK;
    }
    chmod(fresh, t->mode);
    KVF_TRY(carry_files(t->path, fresh));
    char *old = NULL;
    if (renameat2(AT_FDCWD, fresh, AT_FDCWD, t->path, RENAME_EXCHANGE) == 0) {
        old = strdup(fresh); /* the replaced folder now sits at fresh's name */
    } else {
        /* no atomic exchange on this filesystem: two renames, undone on failure */
        old = make_sibling(t->parent, t->base, "old");
        if (!old)
            return kvf_error_set(KVF_ERR_IO, "cannot save into %s (making a folder beside it): %s",
                                 t->path, strerror(errno));
        if (rename(t->path, old) != 0) {
            int e = errno;
            rmdir(old);
            free(old);
            return kvf_error_set(KVF_ERR_IO, "cannot save into %s (moving it aside): %s", t->path,
                                 strerror(e));
        }
        if (rename(fresh, t->path) != 0) {
            int e = errno;
            rename(old, t->path);
            free(old);
            return kvf_error_set(KVF_ERR_IO, "cannot save into %s (renaming %s): %s", t->path,
                                 fresh, strerror(e));
        }
    }
    *swapped = true;
    fsync_dir(t->parent);
    kvf_status s = old ? move_rest(old, t->path)
                       : kvf_error_set(KVF_ERR_OOM, "%s: out of memory", t->path);
    if (s == KVF_OK) remove_tree(old);
    free(old);
    return s;
}

kvf_status kvf_checkpoint_save(const kvf_model *m, const char *dir, kvf_dtype dtype,
                               uint64_t max_shard_bytes) {
    KVF_CHECK(m && dir, KVF_ERR_ARG, "kvf_checkpoint_save: NULL argument");
    KVF_CHECK(dtype == KVF_DTYPE_F32 || dtype == KVF_DTYPE_BF16 || dtype == KVF_DTYPE_F16 ||
                  dtype == KVF_DTYPE_F64,
              KVF_ERR_ARG, "cannot save into %s: weights dtype %s is not F32, BF16, F16 or F64",
              dir, kvf_dtype_name(dtype));
    kvf_hf_arch arch = kvf_hf_config_arch(&m->cfg);
    struct map mp = {0};
    struct owned o = {0};
    struct target t;
    char *fresh = NULL, *cfg_path = NULL;
    kvf_st_writer *w = NULL;
    kvf_status s = target_init(dir, &t);
    if (s == KVF_OK) s = build_map((kvf_model *)m, arch, "transformer.", &mp);
    if (s == KVF_OK) {
        w = kvf_st_writer_init();
        if (!w) s = kvf_error_code() ? kvf_error_code() : kvf_error_set(KVF_ERR_OOM, "out of memory");
    }
    if (s == KVF_OK) s = add_tensors(m, &mp, dtype, w, &o);
    if (s == KVF_OK) {
        fresh = make_sibling(t.parent, t.base, "tmp");
        if (!fresh)
            s = kvf_error_set(KVF_ERR_IO, "cannot save into %s (creating a folder in %s): %s", dir,
                              t.parent, strerror(errno));
    }
    if (s == KVF_OK) {
        cfg_path = join(fresh, "config.json");
        s = cfg_path ? kvf_hf_config_write(&m->cfg, dtype, cfg_path)
                     : kvf_error_set(KVF_ERR_OOM, "%s: out of memory", dir);
    }
    if (s == KVF_OK)
        s = kvf_st_writer_write_sharded(w, fresh, max_shard_bytes ? max_shard_bytes : UINT64_MAX);
    if (s == KVF_OK) {
        fsync_dir(fresh);
        bool swapped;
        s = install(&t, fresh, &swapped);
        if (swapped) {
            free(fresh);
            fresh = NULL;
        }
    }
    if (fresh) {
        struct stat st;
        if (stat(fresh, &st) == 0) remove_tree(fresh);
        free(fresh);
    }
    free(cfg_path);
    kvf_st_writer_free(w);
    owned_free(&o);
    map_free(&mp);
    target_free(&t);
    return s;
}
