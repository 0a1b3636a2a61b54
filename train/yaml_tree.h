/* yaml_tree.h — a YAML document (libyaml) as a small tree of mappings, sequences and
 * scalars that remembers the line of every node, so config errors can say file:line. */
#ifndef KVF_YAML_TREE_H
#define KVF_YAML_TREE_H

#include "autograd/error.h"

enum kvf_yaml_kind { KVF_YAML_SCALAR, KVF_YAML_MAP, KVF_YAML_SEQ };

struct kvf_yaml_node {
    enum kvf_yaml_kind kind;
    int line;
    char *scalar;                /* SCALAR */
    bool quoted;                 /* SCALAR written in quotes: always a string */
    int n;                       /* MAP: pairs, SEQ: items */
    char **keys;                 /* MAP */
    int *key_lines;              /* MAP */
    struct kvf_yaml_node **items;
};
typedef struct kvf_yaml_node kvf_yaml_node;

/* Parses a file (or a string when text != NULL, path used in messages). An empty document
 * is an empty map. Duplicate keys, anchors/aliases and non-scalar keys are errors. */
kvf_yaml_node *kvf_yaml_load(const char *path, const char *text);
void           kvf_yaml_free(kvf_yaml_node *n);
const kvf_yaml_node *kvf_yaml_get(const kvf_yaml_node *map, const char *key);

#endif
