/* recompute.c — kvf_recompute (recompute.h) and the backward rule of its tape node. */
#include "recompute.h"

#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "ops_impl.h"
#include "tape_impl.h"

/* What the KVF_OP_RECOMPUTE node keeps: everything needed to run fn again. Lives in the
 * main region's host arena, like the node's tensors. */
struct recompute_rec {
    kvf_recompute_fn fn;
    const void *ud;
    int n_in, n_out;
    kvf_tensor **in, **out;
};

static bool is_input(kvf_tensor *const *in, int n_in, const kvf_tensor *t) {
    for (int i = 0; i < n_in; i++)
        if (in[i] == t) return true;
    return false;
}

/* Checks what the first run recorded: a tensor from before the call that needs a gradient
 * must be an input or own its gradient (a parameter); otherwise the second run would put
 * its gradient in scratch, and it would be lost. */
static kvf_status check_captures(kvf_ctx *ctx, const struct kvf_tape *tape,
                                 const struct kvf_scratch_mark *mark, kvf_tensor *const *in,
                                 int n_in) {
    for (int i = 0; i < tape->n; i++) {
        const kvf_node *n = &tape->nodes[i];
        for (int j = 0; j < n->n_src; j++) {
            const kvf_tensor *s = n->src[j];
            if (!s || !s->requires_grad || s->grad || is_input(in, n_in, s) ||
                kvf_ctx_scratch_since(ctx, mark, s))
                continue;
            return kvf_error_set(KVF_ERR_ARG,
                                 "recompute: the function reads %s, made before the call and "
                                 "needing a gradient, without taking it as an input (op %s)",
                                 KVF_DESC(s), kvf_op_rules[n->op].name);
        }
    }
    return KVF_OK;
}

static kvf_status check_outputs(kvf_ctx *ctx, const struct kvf_scratch_mark *mark,
                                kvf_tensor **out, int n_out) {
    for (int i = 0; i < n_out; i++) {
        if (!out[i]) continue;
        KVF_CHECK(kvf_ctx_scratch_since(ctx, mark, out[i]), KVF_ERR_ARG,
                  "recompute: output %d (%s) was not made by the function (an input or a "
                  "parameter returned as is): return an op's result", i, KVF_DESC(out[i]));
        for (int j = 0; j < i; j++)
            KVF_CHECK(out[j] != out[i], KVF_ERR_ARG,
                      "recompute: outputs %d and %d are the same tensor %s", j, i, KVF_DESC(out[i]));
    }
    return KVF_OK;
}

kvf_status kvf_recompute(kvf_ctx *ctx, kvf_recompute_fn fn, const void *ud, size_t ud_size,
                         int n_in, kvf_tensor *const *in, int n_out, kvf_tensor **out) {
    KVF_CHECK(fn && n_in >= 0 && n_out >= 1 && (in || n_in == 0) && out, KVF_ERR_ARG,
              "recompute: bad arguments (fn %s, %d inputs, %d outputs)", fn ? "set" : "NULL",
              n_in, n_out);
    for (int i = 0; i < n_out; i++) out[i] = NULL;
    /* nothing to save memory for (evaluation), or already inside a recompute (scratch is in
     * use): just run */
    bool in_scratch = kvf_ctx_use_scratch(ctx, false);
    kvf_ctx_use_scratch(ctx, in_scratch);
    if (!kvf_ctx_grad_enabled(ctx) || in_scratch) return fn(ctx, ud, in, out);

    /* host copies that outlive this call: in the main region */
    struct recompute_rec *rec = kvf_ctx_alloc_host(ctx, sizeof *rec);
    void *ud_copy = ud_size ? kvf_ctx_alloc_host(ctx, ud_size) : NULL;
    kvf_tensor **io = kvf_ctx_alloc_host(ctx, sizeof(kvf_tensor *) * (size_t)(n_in + n_out + 1));
    if (!rec || (ud_size && !ud_copy) || !io) return kvf_error_code();
    if (ud_size) memcpy(ud_copy, ud, ud_size);
    *rec = (struct recompute_rec){fn, ud_copy, n_in, n_out, io, io + n_in};
    for (int i = 0; i < n_in; i++) rec->in[i] = in[i];

    /* first run: in scratch, on a tape of its own (to learn which outputs need gradients
     * and to check the captures), then only the outputs are kept */
    struct kvf_scratch_mark mark;
    kvf_ctx_scratch_mark(ctx, &mark);
    kvf_ctx_use_scratch(ctx, true);
    struct kvf_tape sub = {0};
    struct kvf_tape *main_tape = kvf_ctx_swap_tape(ctx, &sub);
    kvf_tensor **tmp = kvf_ctx_alloc_host(ctx, sizeof(kvf_tensor *) * (size_t)n_out);
    kvf_status st = tmp ? KVF_OK : kvf_error_code();
    if (tmp) {
        for (int i = 0; i < n_out; i++) tmp[i] = NULL;
        st = fn(ctx, rec->ud, rec->in, tmp);
    }
    kvf_ctx_swap_tape(ctx, main_tape);
    if (st == KVF_OK) st = check_captures(ctx, &sub, &mark, rec->in, n_in);
    if (st == KVF_OK) st = check_outputs(ctx, &mark, tmp, n_out);
    kvf_ctx_use_scratch(ctx, false);
    const kvf_backend *be = kvf_ctx_backend(ctx);
    bool any = false;
    for (int i = 0; i < n_out && st == KVF_OK; i++) {
        if (!tmp[i]) continue;
        kvf_tensor *c = kvf_tensor_new(ctx, tmp[i]->dtype, tmp[i]->ndim, tmp[i]->shape);
        if (!c || (st = be->copy(c, tmp[i])) != KVF_OK) {
            st = kvf_error_code();
            break;
        }
        c->requires_grad = tmp[i]->requires_grad;
        any |= c->requires_grad;
        rec->out[i] = c;
    }
    kvf_ctx_scratch_rewind(ctx, &mark);
    free(sub.nodes);
    if (st != KVF_OK) return st;

    if (any) {
        int first = 0;
        while (!rec->out[first] || !rec->out[first]->requires_grad) first++;
        kvf_node *n = kvf_tape_push(ctx, KVF_OP_RECOMPUTE, rec->out[first]);
        if (!n) return kvf_error_code();
        n->n_src = n_in < KVF_MAX_SRC ? n_in : KVF_MAX_SRC; /* for inspection; the rule reads rec */
        for (int i = 0; i < n->n_src; i++) n->src[i] = in[i];
        n->ext = rec;
        for (int i = 0; i < n_out; i++)
            if (rec->out[i] && rec->out[i]->requires_grad) {
                rec->out[i]->node = rec->out[first]->node;
                rec->out[i]->born = rec->out[first]->born;
            }
        for (int i = 0; i < n_in; i++) /* read by this node: the clock's order of uses (tape.c) */
            if (in[i]) in[i]->last_use = rec->out[first]->born;
    }
    for (int i = 0; i < n_out; i++) out[i] = rec->out[i];
    return KVF_OK;
}

kvf_status kvf_recompute_backward(kvf_ctx *ctx, kvf_node *n) {
    struct recompute_rec *rec = n->ext;
    bool any = false;
    for (int i = 0; i < rec->n_out; i++) any |= rec->out[i] && rec->out[i]->grad;
    if (!any) return KVF_OK; /* no output is on a path to the loss */
    /* the inputs' gradients must outlive the scratch region: make them in main now (zeroed,
     * as a plain backward would on first use, so the sums run in the same order) */
    for (int i = 0; i < rec->n_in; i++)
        if (rec->in[i] && rec->in[i]->requires_grad && !kvf_grad_get(ctx, rec->in[i]))
            return kvf_error_code();

    struct kvf_scratch_mark mark;
    kvf_ctx_scratch_mark(ctx, &mark);
    kvf_ctx_use_scratch(ctx, true);
    struct kvf_tape sub = {0};
    struct kvf_tape *outer = kvf_ctx_swap_tape(ctx, &sub);
    bool was = kvf_ctx_set_grad(ctx, true);
    kvf_ctx_recompute_enter(ctx, 1);
    kvf_tensor **re = kvf_ctx_alloc_host(ctx, sizeof(kvf_tensor *) * (size_t)rec->n_out);
    kvf_status st = re ? KVF_OK : kvf_error_code();
    if (re) {
        for (int i = 0; i < rec->n_out; i++) re[i] = NULL;
        st = rec->fn(ctx, rec->ud, rec->in, re);
    }
    kvf_ctx_recompute_enter(ctx, -1);
    kvf_ctx_set_grad(ctx, false);
    /* the second run's outputs take the gradients that reached the kept copies: the rules
     * then accumulate exactly as they would have into the originals */
    for (int i = 0; i < rec->n_out && st == KVF_OK; i++) {
        kvf_tensor *o = rec->out[i];
        if (!o || !o->grad) continue;
        if (!re[i] || !re[i]->requires_grad || !kvf_tensor_same_shape(re[i], o) ||
            re[i]->dtype != o->dtype) {
            st = kvf_error_set(KVF_ERR_STATE,
                               "recompute: output %d came out as %s the second time, %s the "
                               "first (the function is not deterministic)",
                               i, re[i] ? KVF_DESC(re[i]) : "NULL", KVF_DESC(o));
            break;
        }
        re[i]->grad = o->grad;
        kvf_grad_hold(re[i]->grad);
    }
    if (st == KVF_OK) st = kvf_tape_run(ctx, &sub);
    kvf_ctx_set_grad(ctx, was);
    kvf_ctx_swap_tape(ctx, outer);
    kvf_ctx_use_scratch(ctx, false);
    kvf_ctx_scratch_rewind(ctx, &mark);
    free(sub.nodes);
    for (int i = 0; i < rec->n_out; i++) kvf_grad_release(ctx, rec->out[i]);
    return st;
}
