/* kvforge uptrain RECIPE.yaml [--set key=value]… — convert a checkpoint, train the result
 * (model.init_from), and report the validation loss of the source, the converted model and the
 * uptrained one with the KV-cache bytes per token (docs/conversions.md, "Uptraining").
 * The recipe is a run config (docs/config.md, without a model section: the model is the
 * conversion's output) plus
 *   convert: {source: DIR, to: gqa|mqa|mla|cla, …the kvforge convert options, '-' → '_'}
 *   eval:    {data: PATH, seq_len: W, max_tokens: N}   (optional: the before/after report)
 * The converted checkpoint goes to RUN_DIR/converted, the run to RUN_DIR as kvforge train's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_util.h"
#include "convert/convert.h"
#include "data/fsutil.h"
#include "model/checkpoint.h"
#include "model/hf_config.h"
#include "train/eval.h"
#include "train/run_config.h"
#include "train/trainer.h"
#include "train/yaml_tree.h"

/* One scalar option of the convert or eval section into o / the eval settings. */
static kvf_status convert_key(const char *path, int line, const char *key, const kvf_yaml_node *v,
                              kvf_convert_opts *o, const char **source) {
    KVF_CHECK(v->kind == KVF_YAML_SCALAR, KVF_ERR_ARG, "%s:%d: convert.%s must be a single value", path, line,
              key);
    const char *s = v->scalar;
    char *end;
    long long n = strtoll(s, &end, 10);
    bool is_int = *s && !*end;
#define INT_KEY(name, field, min)                                                                        \
    if (!strcmp(key, name)) {                                                                            \
        KVF_CHECK(is_int && n >= (min) && n <= (1ll << 40), KVF_ERR_ARG,                                \
                  "%s:%d: convert.%s must be an integer >= %d, got '%s'", path, line, key, (int)(min), s); \
        o->field = n;                                                                                     \
        return KVF_OK;                                                                                    \
    }
#define STR_KEY(name, field)                                                                             \
    if (!strcmp(key, name)) {                                                                            \
        KVF_CHECK(strlen(s) < sizeof o->field, KVF_ERR_ARG, "%s:%d: convert.%s '%s' is too long", path, \
                  line, key, s);                                                                         \
        snprintf(o->field, sizeof o->field, "%s", s);                                                    \
        return KVF_OK;                                                                                   \
    }
    if (!strcmp(key, "source")) {
        *source = s;
        return KVF_OK;
    }
    if (!strcmp(key, "to")) {
        if (!strcmp(s, "gqa")) o->to = KVF_CONVERT_GQA;
        else if (!strcmp(s, "mqa")) o->to = KVF_CONVERT_MQA;
        else if (!strcmp(s, "mla")) o->to = KVF_CONVERT_MLA;
        else if (!strcmp(s, "cla")) o->to = KVF_CONVERT_CLA;
        else return kvf_error_set(KVF_ERR_ARG, "%s:%d: convert.to must be gqa, mqa, mla or cla, got '%s'", path, line, s);
        return KVF_OK;
    }
    if (!strcmp(key, "rope_dim") && !strcmp(s, "all")) {
        o->rope_dim = -1;
        return KVF_OK;
    }
    if (!strcmp(key, "calib")) {
        o->calib_path = s;
        return KVF_OK;
    }
    INT_KEY("kv_heads", kv_heads, 1)
    INT_KEY("kv_rank", kv_rank, 1)
    INT_KEY("rope_dim", rope_dim, 0)
    INT_KEY("freqfold", freqfold, 1)
    INT_KEY("q_rank", q_rank, 0)
    INT_KEY("share", share, 1)
    INT_KEY("calib_tokens", calib_tokens, 1)
    INT_KEY("calib_seq_len", calib_seq_len, 1)
    INT_KEY("seed", seed, 0)
    STR_KEY("method", method)
    STR_KEY("style", style)
    STR_KEY("rope_select", rope_select)
    STR_KEY("producers", producers)
#undef INT_KEY
#undef STR_KEY
    return kvf_error_set(KVF_ERR_ARG,
                         "%s:%d: unknown key 'convert.%s' (keys: source, to, kv_heads, method, kv_rank, rope_dim, "
                         "style, rope_select, freqfold, q_rank, share, producers, calib, calib_tokens, "
                         "calib_seq_len, seed)",
                         path, line, key);
}

struct eval_opts {
    const char *data;
    int64_t seq_len, max_tokens;
};

static kvf_status eval_key(const char *path, int line, const char *key, const kvf_yaml_node *v,
                           struct eval_opts *e) {
    KVF_CHECK(v->kind == KVF_YAML_SCALAR, KVF_ERR_ARG, "%s:%d: eval.%s must be a single value", path, line, key);
    if (!strcmp(key, "data")) {
        e->data = v->scalar;
        return KVF_OK;
    }
    char *end;
    long long n = strtoll(v->scalar, &end, 10);
    bool ok = *v->scalar && !*end && n >= 1;
    if (!strcmp(key, "seq_len") || !strcmp(key, "max_tokens")) {
        KVF_CHECK(ok, KVF_ERR_ARG, "%s:%d: eval.%s must be a positive integer, got '%s'", path, line, key,
                  v->scalar);
        *(!strcmp(key, "seq_len") ? &e->seq_len : &e->max_tokens) = n;
        return KVF_OK;
    }
    return kvf_error_set(KVF_ERR_ARG, "%s:%d: unknown key 'eval.%s' (keys: data, seq_len, max_tokens)", path, line,
                         key);
}

/* Both extra sections; strings point into root. */
static kvf_status read_sections(const char *path, const kvf_yaml_node *root, kvf_convert_opts *o,
                                const char **source, struct eval_opts *e) {
    const char *names[2] = {"convert", "eval"};
    for (int k = 0; k < 2; k++) {
        const kvf_yaml_node *m = kvf_yaml_get(root, names[k]);
        KVF_CHECK(m || k == 1, KVF_ERR_ARG, "%s: an uptrain recipe needs a convert section (convert: {source: DIR, to: …})",
                  path);
        if (!m) continue;
        KVF_CHECK(m->kind == KVF_YAML_MAP, KVF_ERR_ARG, "%s:%d: section '%s' must be a mapping of keys", path, m->line,
                  names[k]);
        for (int i = 0; i < m->n; i++)
            KVF_TRY(k ? eval_key(path, m->key_lines[i], m->keys[i], m->items[i], e)
                      : convert_key(path, m->key_lines[i], m->keys[i], m->items[i], o, source));
    }
    KVF_CHECK(*source, KVF_ERR_ARG, "%s: convert.source (the model folder to convert) is required", path);
    KVF_CHECK(!e->data || e->data[0], KVF_ERR_ARG, "%s: eval.data is empty", path);
    return KVF_OK;
}

static int fail(const char *what) { return kvf_cli_fail_lib(what); }

int kvf_cmd_uptrain(int argc, char **argv) {
    const char *path = NULL;
    kvf_run_config c;
    kvf_run_config_defaults(&c);
    const char *sets[64];
    int n_sets = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--set")) {
            if (i + 1 >= argc) return kvf_cli_fail(KVF_EXIT_USAGE, "uptrain: --set needs key=value");
            if (n_sets == 64) return kvf_cli_fail(KVF_EXIT_USAGE, "uptrain: at most 64 --set");
            sets[n_sets++] = argv[++i];
        } else if (argv[i][0] == '-') {
            return kvf_cli_fail(KVF_EXIT_USAGE, "uptrain: unknown option '%s' (see kvforge uptrain --help)", argv[i]);
        } else if (path) {
            return kvf_cli_fail(KVF_EXIT_USAGE, "uptrain: one recipe, got '%s' and '%s'", path, argv[i]);
        } else {
            path = argv[i];
        }
    }
    if (!path) return kvf_cli_fail(KVF_EXIT_USAGE, "uptrain: a RECIPE.yaml is required");

    kvf_yaml_node *root = kvf_yaml_load(path, NULL);
    if (!root) return fail("uptrain");
    static const char *const skip[] = {"convert", "eval", NULL};
    kvf_convert_opts o;
    kvf_convert_opts_defaults(&o);
    const char *source = NULL;
    struct eval_opts e = {0};
    kvf_status st = read_sections(path, root, &o, &source, &e);
    if (st == KVF_OK) st = kvf_run_config_load_skip(&c, path, NULL, skip);
    for (int i = 0; st == KVF_OK && i < n_sets; i++) st = kvf_run_config_set(&c, sets[i]);
    if (st == KVF_OK && (c.init_from[0] || c.model_key_given[0]))
        st = kvf_error_set(KVF_ERR_ARG, "%s: model.%s: an uptrain recipe takes its model from convert.source "
                           "(leave the model section out)", path, c.init_from[0] ? "init_from" : c.model_key_given);
    char run_dir[KVF_PATH_MAX + 160], conv_dir[KVF_PATH_MAX + 200];
    snprintf(run_dir, sizeof run_dir, "%s/%s", c.out_dir, c.name);
    snprintf(conv_dir, sizeof conv_dir, "%s/converted", run_dir);
    if (st == KVF_OK && kvf_fs_exists(conv_dir))
        st = kvf_error_set(KVF_ERR_ARG, "%s already holds a converted model: pick another run.name (or continue "
                           "the training with kvforge train and model.init_from: %s)", run_dir, conv_dir);
    if (st == KVF_OK) st = kvf_fs_mkdirs(run_dir);
    /* converted weights stay f32: they are the starting point of f32 master weights */
    o.save_dtype = KVF_DTYPE_F32;
    if (st == KVF_OK) {
        printf("== convert %s\n", source);
        st = kvf_convert_run(source, conv_dir, &o, stdout);
    }
    if (st == KVF_OK) {
        snprintf(c.init_from, sizeof c.init_from, "%s", conv_dir);
        st = kvf_run_config_finish(&c, path);
    }
    kvf_train_result res = {0};
    if (st == KVF_OK) {
        printf("== train from %s\n", conv_dir);
        fflush(stdout);
        kvf_train_opts to = {.config_path = path, .log = stdout};
        st = kvf_train(&c, &to, &res);
    }
    if (st != KVF_OK) {
        kvf_yaml_free(root);
        return fail("uptrain");
    }
    /* the report */
    char ckpt[KVF_PATH_MAX + 32];
    snprintf(ckpt, sizeof ckpt, "%s/checkpoint", res.run_dir);
    const char *dirs[3] = {source, conv_dir, ckpt}, *label[3] = {"source", "converted", "uptrained"};
    printf("\n== uptrain report (%s)\n%-10s %14s %s\n", path, "model", "KV bytes/token",
           e.data ? "val loss" : "(no eval section: no val loss)");
    int rc = KVF_EXIT_OK;
    kvf_device dev = strcmp(c.device, "cuda") ? KVF_DEVICE_CPU : KVF_DEVICE_CUDA;
    for (int i = 0; i < 3 && rc == KVF_EXIT_OK; i++) {
        kvf_model_config mc;
        kvf_hf_arch arch;
        if (kvf_hf_config_read_arch(dirs[i], &mc, &arch) != KVF_OK) {
            rc = fail("uptrain");
            break;
        }
        printf("%-10s %14lld", label[i], (long long)kvf_model_kv_bytes_per_token(&mc));
        kvf_eval_result r;
        if (e.data && kvf_eval_dir(dirs[i], e.data, e.seq_len, e.max_tokens, 8, dev,
                                   dev == KVF_DEVICE_CUDA ? KVF_DTYPE_BF16 : KVF_DTYPE_F32, &r) != KVF_OK) {
            printf("\n");
            rc = fail("uptrain");
            break;
        }
        if (e.data) printf(" %.4f (ppl %.2f, %lld tokens)", r.loss, r.ppl, (long long)r.tokens);
        printf("\n");
    }
    kvf_yaml_free(root);
    return rc;
}
