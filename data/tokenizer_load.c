#include "tokenizer_load.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "fsutil.h"
#include "tokenizer_hf.h"

#define KVF_TOKENIZER_FILE "kvforge_tokenizer.json"

static bool is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static kvf_tokenizer *open_kvforge_file(const char *path) {
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    if (!j) {
        kvf_error_set(KVF_ERR_FORMAT, "%s:%d:%d: %s", path, e.line, e.column, e.text);
        return NULL;
    }
    const char *type = json_string_value(json_object_get(j, "type"));
    json_t *eot = json_object_get(j, "eot");
    kvf_tokenizer *t = NULL;
    if (type && !strcmp(type, "byte") && (!eot || json_is_boolean(eot)))
        t = kvf_tokenizer_byte_init(!eot || json_is_true(eot));
    else
        kvf_error_set(KVF_ERR_FORMAT, "%s: expected {\"type\": \"byte\", \"eot\": true|false}", path);
    json_decref(j);
    return t;
}

kvf_tokenizer *kvf_tokenizer_open(const char *spec) {
    if (!strcmp(spec, "byte")) return kvf_tokenizer_byte_init(true);
    if (is_dir(spec)) {
        char p[4096];
        snprintf(p, sizeof p, "%s/tokenizer.json", spec);
        if (is_file(p)) return kvf_tokenizer_hf_load(p);
        snprintf(p, sizeof p, "%s/%s", spec, KVF_TOKENIZER_FILE);
        if (is_file(p)) return open_kvforge_file(p);
        kvf_error_set(KVF_ERR_IO, "%s: no tokenizer.json or %s in this folder", spec, KVF_TOKENIZER_FILE);
        return NULL;
    }
    if (!is_file(spec)) {
        kvf_error_set(KVF_ERR_IO, "tokenizer %s: no such file (use 'byte', a tokenizer.json or a model folder)", spec);
        return NULL;
    }
    size_t n = strlen(spec), m = strlen(KVF_TOKENIZER_FILE);
    if (n >= m && !strcmp(spec + n - m, KVF_TOKENIZER_FILE)) return open_kvforge_file(spec);
    return kvf_tokenizer_hf_load(spec);
}

kvf_status kvf_tokenizer_save_spec(const char *spec, const char *dir) {
    char dst[4096], src[4096];
    if (!strcmp(spec, "byte")) {
        snprintf(dst, sizeof dst, "%s/%s", dir, KVF_TOKENIZER_FILE);
        FILE *f = fopen(dst, "wb");
        if (!f) return kvf_error_set(KVF_ERR_IO, "%s: cannot create: %s", dst, strerror(errno));
        bool ok = fputs("{\"type\": \"byte\", \"eot\": true}\n", f) >= 0;
        if (fclose(f) != 0 || !ok) return kvf_error_set(KVF_ERR_IO, "%s: write failed: %s", dst, strerror(errno));
        return KVF_OK;
    }
    if (is_dir(spec)) {
        snprintf(src, sizeof src, "%s/tokenizer.json", spec);
        if (!is_file(src)) {
            snprintf(src, sizeof src, "%s/%s", spec, KVF_TOKENIZER_FILE);
            snprintf(dst, sizeof dst, "%s/%s", dir, KVF_TOKENIZER_FILE);
        } else {
            snprintf(dst, sizeof dst, "%s/tokenizer.json", dir);
        }
    } else {
        snprintf(src, sizeof src, "%s", spec);
        size_t n = strlen(spec), m = strlen(KVF_TOKENIZER_FILE);
        snprintf(dst, sizeof dst, "%s/%s", dir,
                 n >= m && !strcmp(spec + n - m, KVF_TOKENIZER_FILE) ? KVF_TOKENIZER_FILE : "tokenizer.json");
    }
    const char *slash = strrchr(dst, '/');
    return kvf_fs_copy_file(src, dir, slash ? slash + 1 : dst);
}
