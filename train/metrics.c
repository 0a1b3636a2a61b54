#include "metrics.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct kvf_metrics {
    FILE *f;
    char *path;
};

kvf_metrics *kvf_metrics_open(const char *path, int64_t keep_until_step) {
    /* keep earlier lines (resume): read them, rewrite those at or before the step */
    char *kept = NULL;
    size_t kept_len = 0;
    if (keep_until_step > 0) {
        FILE *in = fopen(path, "rb");
        if (in) {
            FILE *mem = open_memstream(&kept, &kept_len);
            char *line = NULL;
            size_t cap = 0;
            ssize_t n;
            while (mem && (n = getline(&line, &cap, in)) > 0) {
                json_t *j = json_loads(line, 0, NULL);
                json_t *s = j ? json_object_get(j, "step") : NULL;
                if (s && json_integer_value(s) <= keep_until_step) fwrite(line, 1, (size_t)n, mem);
                json_decref(j);
            }
            free(line);
            fclose(in);
            if (mem) fclose(mem);
        }
    }
    kvf_metrics *m = calloc(1, sizeof *m);
    if (!m) {
        free(kept);
        kvf_error_set(KVF_ERR_OOM, "metrics: out of memory");
        return NULL;
    }
    m->f = fopen(path, "wb");
    if (!m->f) {
        kvf_error_set(KVF_ERR_IO, "%s: cannot write metrics: %s", path, strerror(errno));
        free(kept);
        free(m);
        return NULL;
    }
    m->path = strdup(path);
    if (kept_len) fwrite(kept, 1, kept_len, m->f);
    free(kept);
    fflush(m->f);
    return m;
}

void kvf_metrics_close(kvf_metrics *m) {
    if (!m) return;
    fclose(m->f);
    free(m->path);
    free(m);
}

static json_t *num(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static kvf_status emit(kvf_metrics *m, json_t *o) {
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(o);
    KVF_CHECK(s, KVF_ERR_OOM, "metrics: out of memory");
    bool ok = fprintf(m->f, "%s\n", s) > 0 && fflush(m->f) == 0;
    free(s);
    KVF_CHECK(ok, KVF_ERR_IO, "%s: cannot write metrics: %s", m->path, strerror(errno));
    return KVF_OK;
}

kvf_status kvf_metrics_step(kvf_metrics *m, int64_t step, double loss, double lr, double grad_norm,
                            double tokens_per_s, double flops_per_s, size_t memory_bytes,
                            size_t arena_peak_bytes) {
    json_t *o = json_object();
    json_object_set_new(o, "step", json_integer(step));
    json_object_set_new(o, "loss", num(loss));
    json_object_set_new(o, "lr", num(lr));
    json_object_set_new(o, "grad_norm", num(grad_norm));
    json_object_set_new(o, "tokens_per_s", num(tokens_per_s));
    json_object_set_new(o, "flops_per_s", num(flops_per_s));
    json_object_set_new(o, "memory_bytes", json_integer((json_int_t)memory_bytes));
    json_object_set_new(o, "arena_peak_bytes", json_integer((json_int_t)arena_peak_bytes));
    return emit(m, o);
}

kvf_status kvf_metrics_eval(kvf_metrics *m, int64_t step, double loss, double ppl, int64_t tokens) {
    json_t *o = json_object();
    json_object_set_new(o, "step", json_integer(step));
    json_object_set_new(o, "val_loss", num(loss));
    json_object_set_new(o, "val_ppl", num(ppl));
    json_object_set_new(o, "val_tokens", json_integer(tokens));
    return emit(m, o);
}

kvf_status kvf_metrics_skip(kvf_metrics *m, int64_t step, double loss, double grad_norm) {
    json_t *o = json_object();
    json_object_set_new(o, "step", json_integer(step));
    json_object_set_new(o, "skipped", json_true());
    json_object_set_new(o, "loss", num(loss));
    json_object_set_new(o, "grad_norm", num(grad_norm));
    return emit(m, o);
}
