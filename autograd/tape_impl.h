/* tape_impl.h — the tape's storage inside kvf_ctx; private to autograd/. */
#ifndef KVF_TAPE_IMPL_H
#define KVF_TAPE_IMPL_H

#include "context.h"

struct kvf_node;
struct kvf_tape {
    struct kvf_node *nodes;
    int n, cap;
};

struct kvf_tape *kvf_ctx_tape(kvf_ctx *ctx);

#endif
