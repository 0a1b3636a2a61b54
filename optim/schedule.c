#include "schedule.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

static const char *const kind_names[KVF_LR_KIND_COUNT] = {"constant", "cosine", "wsd"};
static const char *const decay_names[KVF_LR_DECAY_COUNT] = {"linear", "cosine"};

kvf_lr_schedule kvf_lr_schedule_default(kvf_lr_kind kind) {
    return (kvf_lr_schedule){
        .kind = kind,
        .lr = 3e-4,
        .min_lr = 0.0,
        .warmup_steps = 0,
        .total_steps = 0,
        .decay_fraction = 0.2,
        .decay = KVF_LR_DECAY_LINEAR,
    };
}

int64_t kvf_lr_wsd_decay_start(const kvf_lr_schedule *s) {
    int64_t decay_steps = (int64_t)llround(s->decay_fraction * (double)s->total_steps);
    return s->total_steps - decay_steps;
}

kvf_status kvf_lr_schedule_validate(const kvf_lr_schedule *s) {
    KVF_CHECK(s, KVF_ERR_ARG, "lr schedule: NULL schedule");
    KVF_CHECK((int)s->kind >= 0 && s->kind < KVF_LR_KIND_COUNT, KVF_ERR_ARG,
              "lr schedule: unknown kind %d", (int)s->kind);
    KVF_CHECK(isfinite(s->lr) && s->lr >= 0, KVF_ERR_ARG,
              "lr schedule: lr must be a finite number >= 0, got %g", s->lr);
    KVF_CHECK(isfinite(s->min_lr) && s->min_lr >= 0, KVF_ERR_ARG,
              "lr schedule: min_lr must be a finite number >= 0, got %g", s->min_lr);
    KVF_CHECK(s->warmup_steps >= 0, KVF_ERR_ARG,
              "lr schedule: warmup_steps must be >= 0, got %lld", (long long)s->warmup_steps);
    KVF_CHECK(s->total_steps >= 0, KVF_ERR_ARG,
              "lr schedule: total_steps must be >= 0, got %lld", (long long)s->total_steps);
    if (s->kind != KVF_LR_CONSTANT) {
        KVF_CHECK(s->min_lr <= s->lr, KVF_ERR_ARG,
                  "lr schedule: min_lr (%g) exceeds lr (%g)", s->min_lr, s->lr);
        KVF_CHECK(s->total_steps > 0, KVF_ERR_ARG,
                  "lr schedule: total_steps must be > 0 for the %s schedule",
                  kind_names[s->kind]);
    }
    KVF_CHECK(s->total_steps == 0 || s->warmup_steps <= s->total_steps, KVF_ERR_ARG,
              "lr schedule: warmup_steps (%lld) exceeds total_steps (%lld)",
              (long long)s->warmup_steps, (long long)s->total_steps);
    if (s->kind == KVF_LR_WSD) {
        KVF_CHECK(isfinite(s->decay_fraction) && s->decay_fraction >= 0 && s->decay_fraction <= 1,
                  KVF_ERR_ARG, "lr schedule: decay_fraction must be in [0, 1], got %g",
                  s->decay_fraction);
        KVF_CHECK((int)s->decay >= 0 && s->decay < KVF_LR_DECAY_COUNT, KVF_ERR_ARG,
                  "lr schedule: unknown WSD decay shape %d", (int)s->decay);
        int64_t start = kvf_lr_wsd_decay_start(s);
        KVF_CHECK(start >= s->warmup_steps, KVF_ERR_ARG,
                  "lr schedule: decay_fraction (%g) starts the decay at step %lld, inside the "
                  "warmup (warmup_steps %lld)",
                  s->decay_fraction, (long long)start, (long long)s->warmup_steps);
    }
    return KVF_OK;
}

/* lr + (min_lr − lr)·p for p in [0, 1], shaped linearly or by a half cosine. */
static double decay_to(double lr, double min_lr, double p, bool cosine) {
    if (cosine) return min_lr + 0.5 * (1.0 + cos(M_PI * p)) * (lr - min_lr);
    return lr + (min_lr - lr) * p;
}

double kvf_lr_at(const kvf_lr_schedule *s, int64_t step) {
    if (step < 0) step = 0;
    if (step < s->warmup_steps) return s->lr * (double)(step + 1) / (double)s->warmup_steps;
    switch (s->kind) {
    case KVF_LR_CONSTANT: return s->lr;
    case KVF_LR_COSINE: {
        if (step >= s->total_steps) return s->min_lr;
        double p = (double)(step - s->warmup_steps) / (double)(s->total_steps - s->warmup_steps);
        return decay_to(s->lr, s->min_lr, p, true);
    }
    case KVF_LR_WSD: {
        if (step >= s->total_steps) return s->min_lr;
        int64_t start = kvf_lr_wsd_decay_start(s);
        if (step < start) return s->lr;
        double p = (double)(step - start) / (double)(s->total_steps - start);
        return decay_to(s->lr, s->min_lr, p, s->decay == KVF_LR_DECAY_COSINE);
    }
    default: return s->lr;
    }
}

kvf_status kvf_lr_kind_parse(const char *name, kvf_lr_kind *out) {
    for (int k = 0; name && k < KVF_LR_KIND_COUNT; k++)
        if (strcmp(name, kind_names[k]) == 0) {
            *out = (kvf_lr_kind)k;
            return KVF_OK;
        }
    return kvf_error_set(KVF_ERR_ARG,
                         "lr schedule: unknown schedule '%s' (choose constant, cosine or wsd)",
                         name ? name : "(null)");
}

const char *kvf_lr_kind_name(kvf_lr_kind kind) {
    return ((int)kind >= 0 && kind < KVF_LR_KIND_COUNT) ? kind_names[kind] : "unknown";
}

kvf_status kvf_lr_decay_parse(const char *name, kvf_lr_decay *out) {
    for (int k = 0; name && k < KVF_LR_DECAY_COUNT; k++)
        if (strcmp(name, decay_names[k]) == 0) {
            *out = (kvf_lr_decay)k;
            return KVF_OK;
        }
    return kvf_error_set(KVF_ERR_ARG,
                         "lr schedule: unknown WSD decay shape '%s' (choose linear or cosine)",
                         name ? name : "(null)");
}

const char *kvf_lr_decay_name(kvf_lr_decay decay) {
    return ((int)decay >= 0 && decay < KVF_LR_DECAY_COUNT) ? decay_names[decay] : "unknown";
}
