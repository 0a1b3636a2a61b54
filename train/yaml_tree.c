#include "yaml_tree.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

struct parser {
    yaml_parser_t p;
    const char *path;
};

static kvf_yaml_node *node_new(enum kvf_yaml_kind k, int line) {
    kvf_yaml_node *n = calloc(1, sizeof *n);
    if (n) {
        n->kind = k;
        n->line = line;
    }
    return n;
}

void kvf_yaml_free(kvf_yaml_node *n) {
    if (!n) return;
    free(n->scalar);
    for (int i = 0; i < n->n; i++) {
        if (n->keys) free(n->keys[i]);
        kvf_yaml_free(n->items[i]);
    }
    free(n->keys);
    free(n->key_lines);
    free(n->items);
    free(n);
}

static bool next(struct parser *ps, yaml_event_t *ev) {
    if (yaml_parser_parse(&ps->p, ev)) return true;
    kvf_error_set(KVF_ERR_FORMAT, "%s:%zu:%zu: YAML syntax error: %s", ps->path,
                  ps->p.problem_mark.line + 1, ps->p.problem_mark.column + 1,
                  ps->p.problem ? ps->p.problem : "unknown problem");
    return false;
}

static bool push(kvf_yaml_node *n, char *key, int key_line, kvf_yaml_node *item) {
    if (n->n % 16 == 0) {
        size_t cap = (size_t)n->n + 16;
        kvf_yaml_node **items = realloc(n->items, cap * sizeof *items);
        if (!items) return false;
        n->items = items;
        if (n->kind == KVF_YAML_MAP) {
            char **keys = realloc(n->keys, cap * sizeof *keys);
            int *lines = keys ? realloc(n->key_lines, cap * sizeof *lines) : NULL;
            if (keys) n->keys = keys;
            if (!keys || !lines) return false;
            n->key_lines = lines;
        }
    }
    if (n->kind == KVF_YAML_MAP) {
        n->keys[n->n] = key;
        n->key_lines[n->n] = key_line;
    }
    n->items[n->n++] = item;
    return true;
}

/* Builds the node whose first event is ev (already consumed). */
static kvf_yaml_node *build(struct parser *ps, yaml_event_t *ev) {
    int line = (int)ev->start_mark.line + 1;
    switch (ev->type) {
    case YAML_SCALAR_EVENT: {
        kvf_yaml_node *n = node_new(KVF_YAML_SCALAR, line);
        if (!n) break;
        n->scalar = strndup((const char *)ev->data.scalar.value, ev->data.scalar.length);
        n->quoted = ev->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
                    ev->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE;
        if (ev->data.scalar.anchor) {
            kvf_error_set(KVF_ERR_FORMAT, "%s:%d: YAML anchors are not supported", ps->path, line);
            kvf_yaml_free(n);
            return NULL;
        }
        return n;
    }
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        bool map = ev->type == YAML_MAPPING_START_EVENT;
        kvf_yaml_node *n = node_new(map ? KVF_YAML_MAP : KVF_YAML_SEQ, line);
        if (!n) break;
        for (;;) {
            yaml_event_t e;
            if (!next(ps, &e)) {
                kvf_yaml_free(n);
                return NULL;
            }
            if (e.type == YAML_MAPPING_END_EVENT || e.type == YAML_SEQUENCE_END_EVENT) {
                yaml_event_delete(&e);
                return n;
            }
            char *key = NULL;
            int key_line = 0;
            if (map) {
                key_line = (int)e.start_mark.line + 1;
                if (e.type != YAML_SCALAR_EVENT) {
                    kvf_error_set(KVF_ERR_FORMAT, "%s:%d: mapping keys must be plain words",
                                  ps->path, key_line);
                    yaml_event_delete(&e);
                    kvf_yaml_free(n);
                    return NULL;
                }
                key = strndup((const char *)e.data.scalar.value, e.data.scalar.length);
                yaml_event_delete(&e);
                for (int i = 0; key && i < n->n; i++)
                    if (!strcmp(n->keys[i], key)) {
                        kvf_error_set(KVF_ERR_FORMAT, "%s:%d: key '%s' appears twice (first on line %d)",
                                      ps->path, key_line, key, n->key_lines[i]);
                        free(key);
                        kvf_yaml_free(n);
                        return NULL;
                    }
                if (!next(ps, &e)) {
                    free(key);
                    kvf_yaml_free(n);
                    return NULL;
                }
            }
            kvf_yaml_node *item = build(ps, &e);
            yaml_event_delete(&e);
            if (!item || !push(n, key, key_line, item)) {
                if (item) kvf_error_set(KVF_ERR_OOM, "%s: out of memory", ps->path);
                free(key);
                kvf_yaml_free(item);
                kvf_yaml_free(n);
                return NULL;
            }
        }
    }
    case YAML_ALIAS_EVENT:
        kvf_error_set(KVF_ERR_FORMAT, "%s:%d: YAML aliases are not supported", ps->path, line);
        return NULL;
    default:
        kvf_error_set(KVF_ERR_FORMAT, "%s:%d: unexpected YAML event", ps->path, line);
        return NULL;
    }
    kvf_error_set(KVF_ERR_OOM, "%s: out of memory", ps->path);
    return NULL;
}

kvf_yaml_node *kvf_yaml_load(const char *path, const char *text) {
    struct parser ps = {.path = path};
    FILE *f = NULL;
    if (!yaml_parser_initialize(&ps.p)) {
        kvf_error_set(KVF_ERR_OOM, "%s: cannot start the YAML parser", path);
        return NULL;
    }
    if (text) {
        yaml_parser_set_input_string(&ps.p, (const unsigned char *)text, strlen(text));
    } else {
        f = fopen(path, "rb");
        if (!f) {
            kvf_error_set(KVF_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
            yaml_parser_delete(&ps.p);
            return NULL;
        }
        yaml_parser_set_input_file(&ps.p, f);
    }
    kvf_yaml_node *root = NULL;
    bool ok = true, done = false;
    while (ok && !done) {
        yaml_event_t e;
        if (!next(&ps, &e)) {
            ok = false;
            break;
        }
        switch (e.type) {
        case YAML_STREAM_START_EVENT:
        case YAML_DOCUMENT_START_EVENT:
        case YAML_DOCUMENT_END_EVENT: break;
        case YAML_STREAM_END_EVENT: done = true; break;
        default:
            if (root) {
                kvf_error_set(KVF_ERR_FORMAT, "%s:%zu: only one YAML document is allowed", path,
                              e.start_mark.line + 1);
                ok = false;
            } else {
                root = build(&ps, &e);
                ok = root != NULL;
            }
        }
        yaml_event_delete(&e);
    }
    yaml_parser_delete(&ps.p);
    if (f) fclose(f);
    if (!ok) {
        kvf_yaml_free(root);
        return NULL;
    }
    if (!root) root = node_new(KVF_YAML_MAP, 1);
    if (root && root->kind != KVF_YAML_MAP) {
        kvf_error_set(KVF_ERR_FORMAT, "%s:%d: the top level must be a mapping of sections", path,
                      root->line);
        kvf_yaml_free(root);
        return NULL;
    }
    return root;
}

const kvf_yaml_node *kvf_yaml_get(const kvf_yaml_node *map, const char *key) {
    if (!map || map->kind != KVF_YAML_MAP) return NULL;
    for (int i = 0; i < map->n; i++)
        if (!strcmp(map->keys[i], key)) return map->items[i];
    return NULL;
}
