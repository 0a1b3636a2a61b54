#include "run_config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/hf_config.h"
#include "model/variant.h"
#include "yaml_tree.h"

enum ftype { F_INT, F_FLOAT, F_BOOL, F_STR, F_ENUM };

struct field {
    const char *section, *key;
    enum ftype type;
    size_t offset, size;   /* size: string capacity */
    const char *choices;   /* F_ENUM: "a|b|c" */
    double lo, hi;         /* numeric range, inclusive */
    const char *help;
};

#define OFF(f) offsetof(kvf_run_config, f)
#define STR(sec, k, f, help) {sec, k, F_STR, OFF(f), sizeof(((kvf_run_config *)0)->f), NULL, 0, 0, help}
#define INT(sec, k, f, lo, hi, help) {sec, k, F_INT, OFF(f), 0, NULL, lo, hi, help}
#define FLT(sec, k, f, lo, hi, help) {sec, k, F_FLOAT, OFF(f), 0, NULL, lo, hi, help}
#define BOOL(sec, k, f, help) {sec, k, F_BOOL, OFF(f), 0, NULL, 0, 0, help}
#define ENUM(sec, k, f, ch, help) {sec, k, F_ENUM, OFF(f), sizeof(((kvf_run_config *)0)->f), ch, 0, 0, help}

/* model.* fields that are ints in kvf_model_config are stored as int; the table knows */
enum { F_MINT = 100 };
#define MINT(k, f, lo, hi, help) {"model", k, (enum ftype)F_MINT, OFF(model.f), 0, NULL, lo, hi, help}
#define MI64(k, f, lo, hi, help) {"model", k, F_INT, OFF(model.f), 0, NULL, lo, hi, help}

static const struct field fields[] = {
    STR("run", "name", name, "run name; checkpoints and metrics go to out_dir/name"),
    STR("run", "out_dir", out_dir, "folder for runs (default runs)"),
    INT("run", "seed", seed, 0, 9.0e18, "seed for initialisation and data order"),
    ENUM("run", "device", device, "cpu|cuda", "where to train"),
    ENUM("run", "dtype", dtype, "auto|f32|bf16", "compute dtype: auto = bf16 on cuda (f32 master weights and optimizer state), f32 on the CPU"),
    ENUM("run", "recompute", recompute, "none|blocks", "activation recomputation: blocks keeps only each transformer block's input (and K/V that later CLA layers read) and re-runs the block in backward: less activation memory for about a third more forward compute; same loss and gradients"),
    ENUM("model", "attention", attention, NULL, "attention design: mha, gqaN, mqa, sqa_qAkvB, mla_rR[_dD], mla_partial_rR_dD, claK_<design>, swaW_<design>"),
    MI64("vocab_size", vocab_size, 1, 1e9, "vocabulary size (0: the tokenizer's)"),
    MI64("d_model", d_model, 1, 1e6, "model width"),
    MINT("n_layers", n_layers, 1, KVF_MAX_LAYERS, "number of layers"),
    MINT("n_heads", n_heads, 1, KVF_MAX_HEADS, "nominal heads (head_dim = d_model / n_heads)"),
    MINT("head_dim", head_dim, 0, 4096, "q/k head dim (0: d_model / n_heads)"),
    MINT("v_head_dim", v_head_dim, 0, 4096, "value head dim (0: head_dim)"),
    MI64("d_ff", d_ff, 0, 1e7, "MLP hidden width (0: 8/3·d rounded to 64 for SwiGLU, 4·d for GELU)"),
    MI64("max_seq_len", max_seq_len, 1, 1e7, "longest context (0: data.seq_len)"),
    ENUM("model", "norm", norm, "rmsnorm|layernorm", "normalisation"),
    FLT("model", "norm_eps", model.norm_eps, 1e-12, 1, "normalisation epsilon"),
    ENUM("model", "mlp", mlp, "swiglu|gelu|gelu_exact", "MLP kind"),
    ENUM("model", "position", position, "rope|learned|none", "positional encoding"),
    FLT("model", "rope_theta", model.rope_theta, 1e-6, 1e12, "RoPE base"),
    MINT("rope_dim", rope_dim, 0, 4096, "RoPE dims per head for standard attention (0: all)"),
    BOOL("model", "bias", bias, "biases on every projection and norm (GPT-2 style)"),
    BOOL("model", "qkv_bias", model.qkv_bias, "biases on q/k/v only (Qwen2 style)"),
    BOOL("model", "tie_embeddings", model.tie_embeddings, "share the embedding and output matrices"),
    MINT("q_lora_rank", q_lora_rank, 0, 65536, "MLA: low-rank queries (0: full rank)"),
    MINT("kv_lora_rank", kv_lora_rank, 0, 65536, "MLA: latent rank (set by mla_rR too)"),
    MINT("qk_rope_head_dim", qk_rope_head_dim, 0, 4096, "MLA: shared RoPE key dim (set by mla_rR_dD)"),
    STR("model", "kv_producers", kv_producers, "cross-layer sharing by list: layers that produce K/V, e.g. 0,2,5"),
    STR("model", "match_params", match_params, "tune d_ff so the model has as many parameters as this attention design would (fair comparisons)"),
    STR("model", "window", window, "sliding window: one value for all layers, or a comma list per layer (0 = global)"),
    FLT("model", "init_std", model.init_std, 0, 10, "initialisation std (0: 0.02)"),
    STR("model", "init_from", init_from, "start from this model folder (HF or kvforge checkpoint, e.g. a kvforge convert output): its architecture and weights; no other model.* key may be given, and its tokenizer is used unless data.tokenizer is set"),
    STR("data", "train", train_data, "training data: text, JSONL, llm.c .bin, archive or folder"),
    STR("data", "val", val_data, "validation data (empty: the last val_fraction of train)"),
    FLT("data", "val_fraction", val_fraction, 0, 0.5, "share of train held out when val is empty"),
    STR("data", "tokenizer", tokenizer, "'byte' or a tokenizer.json"),
    INT("data", "seq_len", seq_len, 1, 1e7, "context length of training windows"),
    INT("data", "batch_size", batch_size, 1, 1e6, "windows per micro-batch"),
    ENUM("optim", "name", optimizer, "adamw|sgd", "optimizer"),
    FLT("optim", "lr", lr, 0, 100, "peak learning rate"),
    FLT("optim", "min_lr", min_lr, 0, 100, "final learning rate of cosine / WSD"),
    ENUM("optim", "schedule", schedule, "constant|cosine|wsd", "learning-rate schedule after warmup"),
    INT("optim", "warmup_steps", warmup_steps, 0, 1e12, "linear warmup steps"),
    FLT("optim", "decay_fraction", decay_fraction, 0, 1, "WSD: share of steps spent decaying"),
    FLT("optim", "weight_decay", weight_decay, 0, 10, "decoupled weight decay (not on norms, biases, embeddings)"),
    FLT("optim", "beta1", beta1, 0, 0.999999, "AdamW beta1"),
    FLT("optim", "beta2", beta2, 0, 0.999999999, "AdamW beta2"),
    FLT("optim", "eps", eps, 0, 1, "AdamW epsilon"),
    FLT("optim", "momentum", momentum, 0, 0.999999, "SGD momentum"),
    FLT("optim", "grad_clip", grad_clip, 0, 1e9, "global gradient-norm clip (0: off)"),
    INT("optim", "grad_accum", grad_accum, 1, 1e6, "micro-batches per optimizer step"),
    INT("train", "steps", steps, 1, 1e12, "optimizer steps"),
    INT("train", "log_every", log_every, 1, 1e12, "steps between progress lines"),
    INT("train", "eval_every", eval_every, 0, 1e12, "steps between validation evals (0: only at the end)"),
    INT("train", "eval_tokens", eval_tokens, 0, 1e12, "validation tokens per eval (0: all)"),
    INT("train", "save_every", save_every, 0, 1e12, "steps between checkpoints (0: only at the end)"),
};
#define N_FIELDS (int)(sizeof fields / sizeof fields[0])

void kvf_run_config_defaults(kvf_run_config *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "run");
    snprintf(c->out_dir, sizeof c->out_dir, "runs");
    c->seed = 1;
    snprintf(c->device, sizeof c->device, "cpu");
    snprintf(c->dtype, sizeof c->dtype, "auto");
    snprintf(c->recompute, sizeof c->recompute, "none");
    kvf_model_config_defaults(&c->model);
    c->model.vocab_size = 0;
    c->model.max_seq_len = 0;
    snprintf(c->attention, sizeof c->attention, "mha");
    snprintf(c->norm, sizeof c->norm, "rmsnorm");
    snprintf(c->mlp, sizeof c->mlp, "swiglu");
    snprintf(c->position, sizeof c->position, "rope");
    c->val_fraction = 0.05;
    snprintf(c->tokenizer, sizeof c->tokenizer, "byte");
    c->seq_len = 128;
    c->batch_size = 8;
    snprintf(c->optimizer, sizeof c->optimizer, "adamw");
    c->lr = 1e-3;
    c->min_lr = 1e-4;
    snprintf(c->schedule, sizeof c->schedule, "cosine");
    c->decay_fraction = 0.2;
    c->weight_decay = 0.1;
    c->beta1 = 0.9;
    c->beta2 = 0.95;
    c->eps = 1e-8;
    c->grad_clip = 1.0;
    c->grad_accum = 1;
    c->steps = 100;
    c->log_every = 10;
}

const struct kvf_run_key *kvf_run_config_keys(int *n) {
    static struct kvf_run_key keys[N_FIELDS];
    static const char *types[] = {"int", "float", "bool", "string", "choice"};
    for (int i = 0; i < N_FIELDS; i++) {
        const struct field *f = &fields[i];
        keys[i] = (struct kvf_run_key){f->section, f->key,
                                       f->type == (enum ftype)F_MINT ? "int" : types[f->type], f->help};
    }
    *n = N_FIELDS;
    return keys;
}

/* Levenshtein distance, for "did you mean". */
static int edit_distance(const char *a, const char *b) {
    int la = (int)strlen(a), lb = (int)strlen(b);
    if (la > 63 || lb > 63) return 99;
    int d[64][64];
    for (int i = 0; i <= la; i++) d[i][0] = i;
    for (int j = 0; j <= lb; j++) d[0][j] = j;
    for (int i = 1; i <= la; i++)
        for (int j = 1; j <= lb; j++) {
            int s = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            int del = d[i - 1][j] + 1, ins = d[i][j - 1] + 1;
            d[i][j] = s < del ? (s < ins ? s : ins) : (del < ins ? del : ins);
        }
    return d[la][lb];
}

static const struct field *find_field(const char *section, const char *key) {
    for (int i = 0; i < N_FIELDS; i++)
        if (!strcmp(fields[i].section, section) && !strcmp(fields[i].key, key)) return &fields[i];
    return NULL;
}

static bool known_section(const char *s) {
    for (int i = 0; i < N_FIELDS; i++)
        if (!strcmp(fields[i].section, s)) return true;
    return false;
}

static kvf_status unknown_key(const char *where, const char *section, const char *key) {
    const char *best = NULL;
    int bd = 3;
    for (int i = 0; i < N_FIELDS; i++) {
        if (strcmp(fields[i].section, section)) continue;
        int dd = edit_distance(key, fields[i].key);
        if (dd < bd) {
            bd = dd;
            best = fields[i].key;
        }
    }
    if (best)
        return kvf_error_set(KVF_ERR_ARG, "%s: unknown key '%s.%s' (did you mean '%s.%s'?)", where,
                             section, key, section, best);
    return kvf_error_set(KVF_ERR_ARG, "%s: unknown key '%s.%s' (docs/config.md lists every key)",
                         where, section, key);
}

/* Store a scalar's text into field f; where = "file:line" for messages. */
static kvf_status set_value(kvf_run_config *c, const struct field *f, const char *text, bool quoted,
                            const char *where);

/* Records which keys were given (init_from takes the whole model section, and the tokenizer
 * unless one is named), then sets the value. */
static kvf_status set_field(kvf_run_config *c, const struct field *f, const char *text, bool quoted,
                            const char *where) {
    if (!strcmp(f->section, "model") && strcmp(f->key, "init_from") && !c->model_key_given[0])
        snprintf(c->model_key_given, sizeof c->model_key_given, "%s", f->key);
    if (!strcmp(f->section, "data") && !strcmp(f->key, "tokenizer")) c->tokenizer_given = true;
    return set_value(c, f, text, quoted, where);
}

static kvf_status set_value(kvf_run_config *c, const struct field *f, const char *text, bool quoted,
                            const char *where) {
    char *dst = (char *)c + f->offset;
    char *end;
    switch ((int)f->type) {
    case F_INT:
    case F_MINT: {
        errno = 0;
        long long v = quoted ? 0 : strtoll(text, &end, 0);
        if (quoted || errno || end == text || *end) {
            /* accept exact integers written as floats, e.g. 1e6 */
            double dv = quoted ? NAN : strtod(text, &end);
            if (quoted || end == text || *end || dv != floor(dv) || fabs(dv) > 9.2e18)
                return kvf_error_set(KVF_ERR_ARG, "%s: %s.%s must be an integer, got '%s'", where,
                                     f->section, f->key, text);
            v = (long long)dv;
        }
        if ((double)v < f->lo || (double)v > f->hi)
            return kvf_error_set(KVF_ERR_ARG, "%s: %s.%s = %lld is outside [%.0f, %.0f]", where,
                                 f->section, f->key, v, f->lo, f->hi);
        if ((int)f->type == F_MINT) *(int *)dst = (int)v;
        else *(int64_t *)dst = v;
        return KVF_OK;
    }
    case F_FLOAT: {
        double v = quoted ? NAN : strtod(text, &end);
        if (quoted || end == text || *end || !isfinite(v))
            return kvf_error_set(KVF_ERR_ARG, "%s: %s.%s must be a number, got '%s'", where,
                                 f->section, f->key, text);
        if (v < f->lo || v > f->hi)
            return kvf_error_set(KVF_ERR_ARG, "%s: %s.%s = %g is outside [%g, %g]", where, f->section,
                                 f->key, v, f->lo, f->hi);
        *(double *)dst = v;
        return KVF_OK;
    }
    case F_BOOL:
        if (!quoted && (!strcmp(text, "true") || !strcmp(text, "yes") || !strcmp(text, "on"))) *(bool *)dst = true;
        else if (!quoted && (!strcmp(text, "false") || !strcmp(text, "no") || !strcmp(text, "off"))) *(bool *)dst = false;
        else
            return kvf_error_set(KVF_ERR_ARG, "%s: %s.%s must be true or false, got '%s'", where,
                                 f->section, f->key, text);
        return KVF_OK;
    case F_ENUM:
        if (f->choices) {
            bool ok = false;
            size_t len = strlen(text);
            for (const char *p = f->choices; *p;) {
                const char *bar = strchr(p, '|');
                size_t n = bar ? (size_t)(bar - p) : strlen(p);
                if (n == len && !strncmp(p, text, n)) ok = true;
                p += n + (bar ? 1 : 0);
            }
            if (!ok)
                return kvf_error_set(KVF_ERR_ARG, "%s: %s.%s must be one of %s, got '%s'", where,
                                     f->section, f->key, f->choices, text);
        }
        /* fall through */
    case F_STR:
        if (strlen(text) >= f->size)
            return kvf_error_set(KVF_ERR_ARG, "%s: %s.%s is longer than %zu characters", where,
                                 f->section, f->key, f->size - 1);
        snprintf(dst, f->size, "%s", text);
        return KVF_OK;
    }
    return KVF_OK;
}

static bool in_list(const char *const *list, const char *s) {
    for (; list && *list; list++)
        if (!strcmp(*list, s)) return true;
    return false;
}

kvf_status kvf_run_config_load(kvf_run_config *c, const char *path, const char *text) {
    return kvf_run_config_load_skip(c, path, text, NULL);
}

kvf_status kvf_run_config_load_skip(kvf_run_config *c, const char *path, const char *text,
                                    const char *const *skip) {
    kvf_yaml_node *root = kvf_yaml_load(path, text);
    if (!root) return kvf_error_code();
    kvf_status st = KVF_OK;
    char where[KVF_PATH_MAX + 32];
    for (int i = 0; i < root->n && st == KVF_OK; i++) {
        const char *sec = root->keys[i];
        const kvf_yaml_node *m = root->items[i];
        snprintf(where, sizeof where, "%s:%d", path, root->key_lines[i]);
        if (in_list(skip, sec)) continue;
        if (!known_section(sec)) {
            st = kvf_error_set(KVF_ERR_ARG, "%s: unknown section '%s' (sections: run, model, data, optim, train)",
                               where, sec);
            break;
        }
        if (m->kind != KVF_YAML_MAP) {
            st = kvf_error_set(KVF_ERR_ARG, "%s: section '%s' must be a mapping of keys", where, sec);
            break;
        }
        for (int j = 0; j < m->n && st == KVF_OK; j++) {
            snprintf(where, sizeof where, "%s:%d", path, m->key_lines[j]);
            const struct field *f = find_field(sec, m->keys[j]);
            if (!f) {
                st = unknown_key(where, sec, m->keys[j]);
                break;
            }
            const kvf_yaml_node *v = m->items[j];
            if (v->kind == KVF_YAML_SEQ && f->type == F_STR) {
                /* lists (kv_producers, window) are accepted as YAML sequences too */
                char buf[256] = "";
                size_t k = 0;
                for (int e = 0; e < v->n && st == KVF_OK; e++) {
                    if (v->items[e]->kind != KVF_YAML_SCALAR) {
                        st = kvf_error_set(KVF_ERR_ARG, "%s: %s.%s must be a list of numbers", where, sec, f->key);
                        break;
                    }
                    k += (size_t)snprintf(buf + k, sizeof buf - k, e ? ",%s" : "%s", v->items[e]->scalar);
                    if (k >= sizeof buf) st = kvf_error_set(KVF_ERR_ARG, "%s: %s.%s list is too long", where, sec, f->key);
                }
                if (st == KVF_OK) st = set_field(c, f, buf, false, where);
            } else if (v->kind != KVF_YAML_SCALAR) {
                st = kvf_error_set(KVF_ERR_ARG, "%s: %s.%s must be a single value, not a %s", where,
                                   sec, f->key, v->kind == KVF_YAML_MAP ? "mapping" : "list");
            } else {
                st = set_field(c, f, v->scalar, v->quoted, where);
            }
        }
    }
    kvf_yaml_free(root);
    return st;
}

kvf_status kvf_run_config_set(kvf_run_config *c, const char *assignment) {
    const char *eq = strchr(assignment, '='), *dot = strchr(assignment, '.');
    KVF_CHECK(eq && dot && dot < eq, KVF_ERR_ARG,
              "--set %s: expected section.key=value (e.g. optim.lr=3e-4)", assignment);
    char sec[32], key[64];
    KVF_CHECK((size_t)(dot - assignment) < sizeof sec && (size_t)(eq - dot - 1) < sizeof key,
              KVF_ERR_ARG, "--set %s: key too long", assignment);
    snprintf(sec, sizeof sec, "%.*s", (int)(dot - assignment), assignment);
    snprintf(key, sizeof key, "%.*s", (int)(eq - dot - 1), dot + 1);
    char where[128];
    snprintf(where, sizeof where, "--set %s.%s", sec, key);
    const struct field *f = find_field(sec, key);
    if (!f) return unknown_key("--set", sec, key);
    return set_field(c, f, eq + 1, false, where);
}

/* Parse "a,b,c" into ints; returns the count or -1 on a bad entry. */
static int parse_list(const char *s, int64_t *out, int max) {
    int n = 0;
    while (*s) {
        char *end;
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (end == s || errno || n >= max) return -1;
        out[n++] = v;
        while (isspace((unsigned char)*end)) end++;
        if (*end == ',') end++;
        else if (*end) return -1;
        s = end;
        while (isspace((unsigned char)*s)) s++;
    }
    return n;
}

/* model.init_from: the architecture is the folder's; the schedule, data and optimizer keys
 * still come from the run config. */
static kvf_status finish_init_from(kvf_run_config *c, const char *path) {
    KVF_CHECK(!c->model_key_given[0], KVF_ERR_ARG,
              "%s: model.%s cannot be combined with model.init_from (the architecture comes from %s)", path,
              c->model_key_given, c->init_from);
    kvf_hf_arch arch;
    if (kvf_hf_config_read_arch(c->init_from, &c->model, &arch) != KVF_OK) {
        char msg[768];
        snprintf(msg, sizeof msg, "%s", kvf_error_message());
        kvf_error_clear();
        return kvf_error_set(KVF_ERR_ARG, "%s: model.init_from: %s", path, msg);
    }
    if (!c->tokenizer_given) snprintf(c->tokenizer, sizeof c->tokenizer, "%s", c->init_from);
    return KVF_OK;
}

kvf_status kvf_run_config_finish(kvf_run_config *c, const char *path) {
    kvf_model_config *m = &c->model;
    if (c->init_from[0]) {
        KVF_TRY(finish_init_from(c, path));
        goto checks;
    }
    m->norm = !strcmp(c->norm, "layernorm") ? KVF_NORM_LAYER : KVF_NORM_RMS;
    m->mlp = !strcmp(c->mlp, "swiglu") ? KVF_MLP_SWIGLU : KVF_MLP_GELU;
    m->gelu_exact = !strcmp(c->mlp, "gelu_exact");
    m->pos = !strcmp(c->position, "learned") ? KVF_POS_LEARNED
             : !strcmp(c->position, "none")  ? KVF_POS_NONE
                                             : KVF_POS_ROPE;
    if (c->bias) m->qkv_bias = m->o_bias = m->mlp_bias = m->norm_bias = true;
    if (!m->max_seq_len) m->max_seq_len = c->seq_len;
    if (kvf_model_config_apply_variant(m, c->attention) != KVF_OK) {
        kvf_error_clear();
        kvf_model_config_apply_variant(m, c->attention);
        char msg[512];
        snprintf(msg, sizeof msg, "%s", kvf_error_message());
        kvf_error_clear();
        return kvf_error_set(KVF_ERR_ARG, "%s: model.attention: %s", path, msg);
    }
    int64_t list[KVF_MAX_LAYERS];
    if (c->kv_producers[0]) {
        int n = parse_list(c->kv_producers, list, KVF_MAX_LAYERS);
        KVF_CHECK(n > 0, KVF_ERR_ARG, "%s: model.kv_producers must be a list of layer numbers, got '%s'",
                  path, c->kv_producers);
        KVF_CHECK(list[0] == 0, KVF_ERR_ARG,
                  "%s: model.kv_producers must start with layer 0 (a consumer cannot come first), got '%s'",
                  path, c->kv_producers);
        for (int i = 0; i < n; i++)
            KVF_CHECK(list[i] >= 0 && list[i] < m->n_layers && (i == 0 || list[i] > list[i - 1]),
                      KVF_ERR_ARG, "%s: model.kv_producers must rise within 0..%d, got '%s'", path,
                      m->n_layers - 1, c->kv_producers);
        for (int l = 0, p = 0; l < m->n_layers; l++) {
            while (p + 1 < n && list[p + 1] <= l) p++;
            m->kv_source[l] = (int)list[p];
        }
    }
    if (c->window[0]) {
        int n = parse_list(c->window, list, KVF_MAX_LAYERS);
        KVF_CHECK(n == 1 || n == m->n_layers, KVF_ERR_ARG,
                  "%s: model.window needs one value or one per layer (%d), got '%s'", path,
                  m->n_layers, c->window);
        for (int l = 0; l < m->n_layers; l++) {
            m->window[l] = list[n == 1 ? 0 : l];
            KVF_CHECK(m->window[l] >= 0, KVF_ERR_ARG, "%s: model.window entries must be >= 0", path);
        }
    }
    if (c->match_params[0]) {
        kvf_model_config ref = *m;
        for (int l = 0; l < KVF_MAX_LAYERS; l++) ref.kv_source[l] = -1; /* the design decides */
        /* the embedding is the same for both designs, so the vocabulary does not change the
         * answer: stand in 1 when it comes from the tokenizer later */
        if (!ref.vocab_size) ref.vocab_size = 1;
        if (kvf_model_config_apply_variant(&ref, c->match_params) != KVF_OK) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", kvf_error_message());
            kvf_error_clear();
            return kvf_error_set(KVF_ERR_ARG, "%s: model.match_params: %s", path, msg);
        }
        kvf_model_config a = ref, b = *m;
        b.vocab_size = ref.vocab_size;
        if (kvf_model_config_resolve(&a) != KVF_OK || kvf_model_config_resolve(&b) != KVF_OK) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", kvf_error_message());
            kvf_error_clear();
            return kvf_error_set(KVF_ERR_ARG, "%s: %s", path, msg);
        }
        /* d_ff enters the count linearly: solve, then round to the nearest integer */
        int64_t target = kvf_model_n_params(&a), have = kvf_model_n_params(&b);
        kvf_model_config b1 = b;
        b1.d_ff += 1;
        int64_t per = kvf_model_n_params(&b1) - have;
        int64_t d_ff = b.d_ff + (int64_t)llround((double)(target - have) / (double)per);
        KVF_CHECK(d_ff >= 1, KVF_ERR_ARG, "%s: model.match_params %s: no positive d_ff matches (%lld vs %lld params)",
                  path, c->match_params, (long long)target, (long long)have);
        m->d_ff = d_ff;
    }
checks:
    KVF_CHECK(c->seq_len <= m->max_seq_len, KVF_ERR_ARG,
              "%s: data.seq_len (%lld) exceeds model.max_seq_len (%lld)", path,
              (long long)c->seq_len, (long long)m->max_seq_len);
    KVF_CHECK(c->min_lr <= c->lr, KVF_ERR_ARG, "%s: optim.min_lr (%g) exceeds optim.lr (%g)", path,
              c->min_lr, c->lr);
    KVF_CHECK(c->warmup_steps <= c->steps, KVF_ERR_ARG,
              "%s: optim.warmup_steps (%lld) exceeds train.steps (%lld)", path,
              (long long)c->warmup_steps, (long long)c->steps);
    KVF_CHECK(c->train_data[0], KVF_ERR_ARG, "%s: data.train is required", path);
    if (m->vocab_size) {
        kvf_model_config r = *m;
        if (kvf_model_config_resolve(&r) != KVF_OK) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", kvf_error_message());
            kvf_error_clear();
            return kvf_error_set(KVF_ERR_ARG, "%s: %s", path, msg);
        }
    }
    return KVF_OK;
}
