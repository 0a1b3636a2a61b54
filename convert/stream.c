/* stream.c — conversions that need no calibration, done tensor by tensor from the mapped
 * source checkpoint into a streamed safetensors output, so a checkpoint far larger than
 * memory converts with a resident set of a few tensors: the source is validated against its
 * config first (every parameter present with its shape, nothing unexpected), the output's
 * headers are planned from the target config, then each layer's tensors are copied (converted
 * to the output dtype on the way) or pooled (K/V) and their source pages released. The pooling
 * is the same code as the in-memory conversions (convert_util.c), so both paths write the
 * same values. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/rng.h"
#include "convert_impl.h"
#include "model/safetensors.h"

#define SHARD_BYTES ((uint64_t)5000000000ull) /* HF's default max_shard_size "5GB" */

static void add(struct kvf_cv_param *out, int *n, int cap, bool *ok, int ndim, int64_t a, int64_t b,
                const char *fmt, int layer, const char *what) {
    if (*n >= cap) {
        *ok = false;
        return;
    }
    struct kvf_cv_param *p = &out[(*n)++];
    if (layer >= 0) snprintf(p->name, sizeof p->name, fmt, layer, what);
    else snprintf(p->name, sizeof p->name, "%s", fmt);
    p->ndim = ndim;
    p->shape[0] = a;
    p->shape[1] = b;
}

int kvf_cv_param_list(const kvf_model_config *c, struct kvf_cv_param *out, int cap) {
    if (c->attn != KVF_ATTN_STANDARD) {
        kvf_error_set(KVF_ERR_UNSUPPORTED, "convert: streaming handles standard attention only");
        return -1;
    }
    int n = 0;
    bool ok = true;
    int64_t d = c->d_model, nq = c->n_q_heads, nkv = c->n_kv_heads, hd = c->head_dim, vd = c->v_head_dim,
            ff = c->d_ff;
    const char *L = "model.layers.%d.%s";
    add(out, &n, cap, &ok, 2, c->vocab_size, d, "model.embed_tokens.weight", -1, NULL);
    if (c->pos == KVF_POS_LEARNED) add(out, &n, cap, &ok, 2, c->max_seq_len, d, "model.embed_positions.weight", -1, NULL);
    for (int l = 0; l < c->n_layers; l++) {
        bool prod = kvf_model_is_producer(c, l);
        add(out, &n, cap, &ok, 1, d, 0, L, l, "input_layernorm.weight");
        if (c->norm_bias) add(out, &n, cap, &ok, 1, d, 0, L, l, "input_layernorm.bias");
        add(out, &n, cap, &ok, 2, nq * hd, d, L, l, "self_attn.q_proj.weight");
        if (c->qkv_bias) add(out, &n, cap, &ok, 1, nq * hd, 0, L, l, "self_attn.q_proj.bias");
        if (prod) {
            add(out, &n, cap, &ok, 2, nkv * hd, d, L, l, "self_attn.k_proj.weight");
            if (c->qkv_bias) add(out, &n, cap, &ok, 1, nkv * hd, 0, L, l, "self_attn.k_proj.bias");
            add(out, &n, cap, &ok, 2, nkv * vd, d, L, l, "self_attn.v_proj.weight");
            if (c->qkv_bias) add(out, &n, cap, &ok, 1, nkv * vd, 0, L, l, "self_attn.v_proj.bias");
        }
        add(out, &n, cap, &ok, 2, d, nq * vd, L, l, "self_attn.o_proj.weight");
        if (c->o_bias) add(out, &n, cap, &ok, 1, d, 0, L, l, "self_attn.o_proj.bias");
        add(out, &n, cap, &ok, 1, d, 0, L, l, "post_attention_layernorm.weight");
        if (c->norm_bias) add(out, &n, cap, &ok, 1, d, 0, L, l, "post_attention_layernorm.bias");
        if (c->mlp == KVF_MLP_SWIGLU) {
            add(out, &n, cap, &ok, 2, ff, d, L, l, "mlp.gate_proj.weight");
            if (c->mlp_bias) add(out, &n, cap, &ok, 1, ff, 0, L, l, "mlp.gate_proj.bias");
        }
        add(out, &n, cap, &ok, 2, ff, d, L, l, "mlp.up_proj.weight");
        if (c->mlp_bias) add(out, &n, cap, &ok, 1, ff, 0, L, l, "mlp.up_proj.bias");
        add(out, &n, cap, &ok, 2, d, ff, L, l, "mlp.down_proj.weight");
        if (c->mlp_bias) add(out, &n, cap, &ok, 1, d, 0, L, l, "mlp.down_proj.bias");
    }
    add(out, &n, cap, &ok, 1, d, 0, "model.norm.weight", -1, NULL);
    if (c->norm_bias) add(out, &n, cap, &ok, 1, d, 0, "model.norm.bias", -1, NULL);
    if (!c->tie_embeddings) add(out, &n, cap, &ok, 2, c->vocab_size, d, "lm_head.weight", -1, NULL);
    if (!ok) {
        kvf_error_set(KVF_ERR_STATE, "convert: more than %d parameters", cap);
        return -1;
    }
    return n;
}

bool kvf_cv_can_stream(const kvf_model_config *c, kvf_hf_arch arch, const kvf_convert_opts *o) {
    if (c->attn != KVF_ATTN_STANDARD || arch == KVF_HF_GPT2 || arch == KVF_HF_DEEPSEEK_V3) return false;
    const char *m = o->method;
    if (o->to == KVF_CONVERT_GQA || o->to == KVF_CONVERT_MQA)
        return !*m || !strcmp(m, "mean") || !strcmp(m, "first") || !strcmp(m, "random");
    if (o->to == KVF_CONVERT_CLA) return !*m || !strcmp(m, "producer") || !strcmp(m, "mean");
    return false;
}

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int param_cmp(const void *a, const void *b) {
    return strcmp(((const struct kvf_cv_param *)a)->name, ((const struct kvf_cv_param *)b)->name);
}

/* Every parameter of c present with its shape and a float dtype; nothing unexpected. */
static kvf_status validate(const kvf_st_dir *d, const char *src_dir, const kvf_model_config *c,
                           struct kvf_cv_param *list, int n) {
    for (int i = 0; i < n; i++) {
        const kvf_st_tensor *t = kvf_st_dir_find(d, list[i].name);
        KVF_CHECK(t, KVF_ERR_FORMAT, "%s: missing tensor '%s', which its config.json needs", src_dir, list[i].name);
        bool same = t->ndim == list[i].ndim;
        for (int k = 0; same && k < t->ndim; k++) same = t->shape[k] == list[i].shape[k];
        char buf[96];
        KVF_CHECK(same, KVF_ERR_SHAPE, "%s: tensor '%s' is %s, expected [%lld%s%.0lld] from config.json", t->path,
                  t->name, kvf_st_tensor_describe(t, buf, sizeof buf), (long long)list[i].shape[0],
                  list[i].ndim > 1 ? ", " : "", list[i].ndim > 1 ? (long long)list[i].shape[1] : 0LL);
        KVF_CHECK(t->dtype == KVF_DTYPE_F32 || t->dtype == KVF_DTYPE_BF16 || t->dtype == KVF_DTYPE_F16 ||
                      t->dtype == KVF_DTYPE_F64,
                  KVF_ERR_DTYPE, "%s: tensor '%s' is %s; weights must be F32, BF16, F16 or F64", t->path, t->name,
                  kvf_st_dtype_name(t->dtype));
    }
    struct kvf_cv_param *sorted = malloc(sizeof *sorted * (size_t)(n ? n : 1));
    KVF_CHECK(sorted, KVF_ERR_OOM, "convert: out of memory");
    memcpy(sorted, list, sizeof *sorted * (size_t)n);
    qsort(sorted, (size_t)n, sizeof *sorted, param_cmp);
    kvf_status s = KVF_OK;
    for (size_t i = 0; s == KVF_OK && i < kvf_st_dir_count(d); i++) {
        const kvf_st_tensor *t = kvf_st_dir_tensor(d, i);
        struct kvf_cv_param key;
        snprintf(key.name, sizeof key.name, "%s", t->name);
        if (bsearch(&key, sorted, (size_t)n, sizeof *sorted, param_cmp)) continue;
        if (ends_with(t->name, "rotary_emb.inv_freq")) continue;
        if (c->tie_embeddings && !strcmp(t->name, "lm_head.weight")) continue;
        s = kvf_error_set(KVF_ERR_FORMAT, "%s: unexpected tensor '%s': not a weight of the model its config.json describes",
                          t->path, t->name);
    }
    free(sorted);
    return s;
}

/* Buffers reused from tensor to tensor: a fresh malloc of a K/V projection's doubles (134 MB
 * at 7B) is a fresh mmap whose pages the kernel faults in and zeroes, which took more time
 * than the pooling itself. */
struct scratch {
    double *src, *out;
    float *f32;
    size_t n_src, n_out, n_f32;
};

static void *grow(void **p, size_t *cap, size_t n, size_t elem) {
    if (n > *cap) {
        free(*p);
        *p = malloc(n * elem);
        *cap = *p ? n : 0;
    }
    if (!*p) kvf_error_set(KVF_ERR_OOM, "convert: out of memory for a %.2f GB buffer", (double)(n * elem) / 1e9);
    return *p;
}

/* t as doubles in sc->src (valid until the next call); bf16 is widened here in a tight loop
 * (exact), not element by element through kvf_st_tensor_read's generic path. */
static double *read_f64(const kvf_st_tensor *t, struct scratch *sc) {
    size_t n = (size_t)(t->numel ? t->numel : 1);
    double *v = grow((void **)&sc->src, &sc->n_src, n, sizeof(double));
    if (!v) return NULL;
    if (t->dtype != KVF_DTYPE_BF16)
        return kvf_st_tensor_read(t, KVF_DTYPE_F64, v, sizeof(double) * n) == KVF_OK ? v : NULL;
    const unsigned char *p = t->data; /* may be unaligned */
    for (size_t i = 0; i < (size_t)t->numel; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        v[i] = kvf_bf16_to_f32(h);
    }
    return v;
}

static void scratch_free(struct scratch *sc) {
    free(sc->src);
    free(sc->out);
    free(sc->f32);
    memset(sc, 0, sizeof *sc);
}

/* The pooled (gqa) or group-mean (cla) K/V tensor `what` of producer p, as doubles in sc->out. */
static double *transform(const kvf_st_dir *d, const kvf_model_config *c, const kvf_model_config *nc,
                         const kvf_convert_opts *o, int p, const char *what, int64_t out_numel, struct scratch *sc) {
    bool is_k = strstr(what, "k_proj") != NULL, is_bias = ends_with(what, ".bias");
    char name[160];
    double *out = grow((void **)&sc->out, &sc->n_out, (size_t)(out_numel ? out_numel : 1), sizeof(double));
    if (!out) return NULL;
    memset(out, 0, sizeof(double) * (size_t)out_numel);
    if (o->to == KVF_CONVERT_CLA) { /* mean over the group's layers, as cla.c computes it */
        int end = p + 1, src[KVF_MAX_LAYERS], cnt[KVF_MAX_LAYERS], ns = 0, total = 0;
        while (end < c->n_layers && nc->kv_source[end] == p) end++;
        for (int l = p; l < end; l++) {
            int j = 0;
            while (j < ns && src[j] != c->kv_source[l]) j++;
            if (j == ns) {
                src[ns] = c->kv_source[l];
                cnt[ns++] = 0;
            }
            cnt[j]++;
            total++;
        }
        for (int j = 0; j < ns; j++) {
            const kvf_st_tensor *t = kvf_st_dir_find(d, kvf_cv_name(name, sizeof name, src[j], what));
            double *v = t ? read_f64(t, sc) : NULL;
            if (!v) {
                if (!t) kvf_error_set(KVF_ERR_FORMAT, "convert: missing tensor %s", name);
                return NULL;
            }
            double f = (double)cnt[j] / total;
            for (int64_t e = 0; e < out_numel; e++) out[e] = ns == 1 ? v[e] : out[e] + f * v[e];
            kvf_st_dir_release(d, t);
        }
        return out;
    }
    const kvf_st_tensor *t = kvf_st_dir_find(d, kvf_cv_name(name, sizeof name, p, what));
    double *v = t ? read_f64(t, sc) : NULL;
    if (!v) {
        if (!t) kvf_error_set(KVF_ERR_FORMAT, "convert: missing tensor %s", name);
        return NULL;
    }
    struct kvf_cv_groups G;
    kvf_cv_groups_init(&G, c->n_q_heads, c->n_kv_heads, nc->n_kv_heads);
    const char *m = o->method;
    enum kvf_cv_pool pool = !strcmp(m, "first") ? KVF_CV_POOL_FIRST : !strcmp(m, "random") ? KVF_CV_POOL_RANDOM : KVF_CV_POOL_MEAN;
    int rph = is_k ? c->head_dim : c->v_head_dim;
    int64_t cols = is_bias ? 1 : c->d_model;
    /* the random method draws the weight and then the bias from one generator per projection,
     * as gqa.c does; the bias draws nothing (zeros) */
    kvf_rng r;
    kvf_cv_random_rng(&r, o->seed, p, is_k ? 0 : 1);
    double std = pool == KVF_CV_POOL_RANDOM && !is_bias ? kvf_cv_std(v, t->numel) : 0;
    kvf_cv_pool_rows(&G, pool, rph, cols, v, out, is_bias, &r, std);
    kvf_st_dir_release(d, t);
    return out;
}

/* Writes the doubles v as the planned tensor name. Below f64 they are rounded to f32 first,
 * in a tight loop here, as the in-memory path does (f32 parameters, saved as bf16/f16 from
 * those): the same bytes as both the writer's own f64 conversion and kvf_checkpoint_save. */
static kvf_status put_f64(kvf_st_stream *st, const char *name, kvf_dtype dtype, const double *v, int64_t numel,
                          struct scratch *sc) {
    if (dtype == KVF_DTYPE_F64) return kvf_st_stream_put(st, name, KVF_DTYPE_F64, v);
    float *f = grow((void **)&sc->f32, &sc->n_f32, (size_t)(numel ? numel : 1), sizeof(float));
    if (!f) return kvf_error_code();
    for (int64_t i = 0; i < numel; i++) f[i] = (float)v[i];
    return kvf_st_stream_put(st, name, KVF_DTYPE_F32, f);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

kvf_status kvf_cv_stream(const char *src_dir, const kvf_model_config *c, const kvf_model_config *nc,
                         const kvf_convert_opts *o, kvf_dtype dtype, const char *out_dir, FILE *log) {
    int cap = 32 * (c->n_layers + 2);
    struct kvf_cv_param *sl = malloc(sizeof *sl * (size_t)cap), *dl = malloc(sizeof *dl * (size_t)cap);
    kvf_st_dir *d = NULL;
    kvf_st_writer *w = NULL;
    kvf_st_stream *st = NULL;
    struct scratch sc = {0};
    kvf_status s = sl && dl ? KVF_OK : kvf_error_set(KVF_ERR_OOM, "convert: out of memory");
    int ns = s == KVF_OK ? kvf_cv_param_list(c, sl, cap) : -1, nd = ns >= 0 ? kvf_cv_param_list(nc, dl, cap) : -1;
    if (s == KVF_OK && (ns < 0 || nd < 0)) s = kvf_error_code();
    if (s == KVF_OK && !(d = kvf_st_dir_open(src_dir))) s = kvf_error_code();
    if (s == KVF_OK) s = validate(d, src_dir, c, sl, ns);
    if (s == KVF_OK && dtype == KVF_DTYPE_COUNT) dtype = kvf_st_dir_find(d, "model.embed_tokens.weight")->dtype;
    if (s == KVF_OK && !(w = kvf_st_writer_init())) s = kvf_error_code();
    for (int i = 0; s == KVF_OK && i < nd; i++) s = kvf_st_writer_add_planned(w, dl[i].name, dtype, dl[i].ndim, dl[i].shape);
    if (s == KVF_OK) {
        size_t n = strlen(out_dir) + 16;
        char *cfg = malloc(n);
        if (!cfg) s = kvf_error_set(KVF_ERR_OOM, "convert: out of memory");
        else {
            snprintf(cfg, n, "%s/config.json", out_dir);
            s = kvf_hf_config_write(nc, dtype, cfg);
            free(cfg);
        }
    }
    if (s == KVF_OK && !(st = kvf_st_stream_begin(w, out_dir, SHARD_BYTES))) s = kvf_error_code();
    if (s == KVF_OK && log) {
        fprintf(log, "streaming %d tensors (%.2f GB as %s) from %s\n", nd, (double)kvf_st_writer_data_bytes(w) / 1e9,
                kvf_st_dtype_name(dtype), src_dir);
        fflush(log);
    }
    double t0 = now();
    int cur_layer = -1;
    for (int i = 0; s == KVF_OK && i < nd; i++) {
        int layer = -1, n = 0;
        char what[112] = "";
        if (sscanf(dl[i].name, "model.layers.%d.self_attn.%111s%n", &layer, what, &n) != 2) {
            what[0] = '\0';
            if (sscanf(dl[i].name, "model.layers.%d.", &layer) != 1) layer = -1;
        }
        if (layer != cur_layer) {
            if (cur_layer >= 0 && log) {
                fprintf(log, "layer %d/%d written (%.1f s)\n", cur_layer + 1, c->n_layers, now() - t0);
                fflush(log); /* progress must show as it happens, also when log is a pipe or file */
            }
            cur_layer = layer;
        }
        /* past the layers (final norm, lm_head): the K/V buffers are done with; freeing them
         * keeps them out of the peak that copying lm_head's pages adds */
        if (layer < 0) scratch_free(&sc);
        bool kv = what[0] && (!strncmp(what, "k_proj.", 7) || !strncmp(what, "v_proj.", 7));
        bool changed = kv && (o->to != KVF_CONVERT_CLA || strcmp(o->method, "mean") == 0);
        if (kv && changed) {
            int64_t numel = dl[i].shape[0] * (dl[i].ndim > 1 ? dl[i].shape[1] : 1);
            double *v = transform(d, c, nc, o, layer, what, numel, &sc);
            if (!v) s = kvf_error_code();
            else s = put_f64(st, dl[i].name, dtype, v, numel, &sc);
        } else {
            const kvf_st_tensor *t = kvf_st_dir_find(d, dl[i].name);
            if (!t) s = kvf_error_set(KVF_ERR_FORMAT, "%s: missing tensor '%s'", src_dir, dl[i].name);
            else s = kvf_st_stream_put(st, dl[i].name, t->dtype, t->data);
            if (t) kvf_st_dir_release(d, t);
        }
    }
    if (s == KVF_OK && cur_layer >= 0 && log)
        fprintf(log, "layer %d/%d written (%.1f s)\n", cur_layer + 1, c->n_layers, now() - t0);
    if (s == KVF_OK) {
        s = kvf_st_stream_finish(st);
        st = NULL;
        if (s == KVF_OK && log) fprintf(log, "weights synced to disk (%.1f s)\n", now() - t0);
    }
    kvf_st_stream_abort(st);
    kvf_st_writer_free(w);
    kvf_st_dir_close(d);
    scratch_free(&sc);
    free(sl);
    free(dl);
    return s;
}
