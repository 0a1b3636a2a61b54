#include "trainer.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "autograd/backend.h"
#include "autograd/ops.h"
#include "autograd/tape.h"
#include "data/batch.h"
#include "data/corpus.h"
#include "data/tokenizer_load.h"
#include "eval.h"
#include "data/fsutil.h"
#include "metrics.h"
#include "model/checkpoint.h"
#include "optim/accum.h"
#include "optim/clip.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"
#include "train_state.h"

#define MAX_CONSECUTIVE_SKIPS 10

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void fmt_duration(char *buf, size_t n, double s) {
    if (!isfinite(s) || s < 0) snprintf(buf, n, "?");
    else if (s < 60) snprintf(buf, n, "%.0fs", s);
    else if (s < 3600) snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
}

static void fmt_rate(char *buf, size_t n, double r) {
    if (r >= 1e6) snprintf(buf, n, "%.2fM", r / 1e6);
    else if (r >= 1e3) snprintf(buf, n, "%.1fk", r / 1e3);
    else snprintf(buf, n, "%.0f", r);
}

struct run {
    const kvf_run_config *cfg;
    const kvf_train_opts *opts;
    FILE *log;
    kvf_tokenizer *tok;
    kvf_token_stream train, val;
    kvf_batcher *batcher;
    kvf_model *model;
    kvf_ctx *ctx;
    kvf_optimizer *opt;
    kvf_lr_schedule sched;
    kvf_metrics *metrics;
    char dir[KVF_PATH_MAX], ckpt[KVF_PATH_MAX + 32];
    int64_t step; /* steps done */
};

static kvf_status load_data(struct run *r) {
    const kvf_run_config *c = r->cfg;
    kvf_corpus_opts co = {.tok = r->tok, .max_tokens = 0};
    KVF_TRY(kvf_corpus_read(c->train_data, &co, &r->train));
    kvf_batch_opts bo = {.batch_size = c->batch_size, .seq_len = c->seq_len, .seed = (uint64_t)c->seed,
                         .val_fraction = c->val_fraction, .rank = 0, .world_size = 1};
    if (c->val_data[0]) {
        KVF_TRY(kvf_corpus_read(c->val_data, &co, &r->val));
        bo.val_fraction = 0;
        bo.val_tokens = r->val.data;
        bo.val_count = r->val.count;
    }
    r->batcher = kvf_batcher_init(r->train.data, r->train.count, &bo);
    if (!r->batcher) {
        char msg[768];
        snprintf(msg, sizeof msg, "%s", kvf_error_message());
        kvf_error_clear();
        return kvf_error_set(KVF_ERR_ARG, "%s: data.train %s: %s", r->opts->config_path, c->train_data, msg);
    }
    return KVF_OK;
}

static kvf_status make_optimizer(struct run *r) {
    const kvf_run_config *c = r->cfg;
    kvf_optim_kind kind;
    KVF_TRY(kvf_optim_kind_parse(c->optimizer, &kind));
    kvf_optim_config oc = kvf_optim_config_default(kind);
    oc.weight_decay = c->weight_decay;
    if (kind == KVF_OPTIM_ADAMW) {
        oc.beta1 = c->beta1;
        oc.beta2 = c->beta2;
        oc.eps = c->eps;
    } else {
        oc.momentum = c->momentum;
    }
    KVF_TRY(kvf_optim_config_validate(&oc));
    r->opt = kvf_optimizer_init(r->model->params, &oc);
    if (!r->opt) return kvf_error_code();
    kvf_lr_kind lk;
    KVF_TRY(kvf_lr_kind_parse(c->schedule, &lk));
    r->sched = kvf_lr_schedule_default(lk);
    r->sched.lr = c->lr;
    r->sched.min_lr = c->min_lr;
    r->sched.warmup_steps = c->warmup_steps;
    r->sched.total_steps = c->steps;
    r->sched.decay_fraction = c->decay_fraction;
    return kvf_lr_schedule_validate(&r->sched);
}

static kvf_status evaluate(struct run *r, kvf_eval_result *ev) {
    int64_t n;
    const int32_t *val = kvf_batcher_val(r->batcher, &n);
    if (!val || n < 2) return KVF_ERR_STATE; /* no validation data: not an error */
    int64_t W = r->cfg->seq_len < n - 1 ? r->cfg->seq_len : n - 1;
    return kvf_eval_stream(r->model, r->ctx, val, n, W, r->cfg->eval_tokens, r->cfg->batch_size, ev);
}

static kvf_status save(struct run *r) {
    char tmp[KVF_PATH_MAX + 64], old[KVF_PATH_MAX + 64];
    snprintf(tmp, sizeof tmp, "%s/.checkpoint.tmp.%d", r->dir, (int)getpid());
    snprintf(old, sizeof old, "%s/.checkpoint.old.%d", r->dir, (int)getpid());
    kvf_fs_remove_tree(tmp);
    kvf_status st = kvf_checkpoint_save(r->model, tmp, KVF_DTYPE_F32, 0);
    if (st == KVF_OK) st = kvf_tokenizer_save_spec(r->cfg->tokenizer, tmp);
    if (st == KVF_OK) {
        kvf_batch_state bs;
        kvf_batcher_get_state(r->batcher, &bs);
        st = kvf_train_state_save(tmp, r->opt, r->step, &bs);
    }
    if (st == KVF_OK) st = kvf_fs_replace_dir(tmp, r->ckpt, old);
    if (st != KVF_OK) kvf_fs_remove_tree(tmp);
    return st;
}

static kvf_status resume(struct run *r, kvf_device dev) {
    snprintf(r->ckpt, sizeof r->ckpt, "%s/checkpoint", r->dir);
    kvf_model *m = kvf_checkpoint_load(r->ckpt, dev);
    if (!m) return kvf_error_code();
    /* the checkpoint must be the run the config describes */
    kvf_model_config want = r->cfg->model;
    if (!want.vocab_size) want.vocab_size = r->tok->vocab_size;
    kvf_status st = kvf_model_config_resolve(&want);
    if (st == KVF_OK && (m->cfg.d_model != want.d_model || m->cfg.n_layers != want.n_layers ||
                         m->cfg.vocab_size != want.vocab_size ||
                         kvf_model_n_params(&m->cfg) != kvf_model_n_params(&want)))
        st = kvf_error_set(KVF_ERR_ARG, "resume: %s holds a different model than %s describes",
                           r->ckpt, r->opts->config_path);
    if (st != KVF_OK) {
        kvf_model_free(m);
        return st;
    }
    kvf_model_free(r->model);
    r->model = m;
    return KVF_OK;
}

kvf_status kvf_train(const kvf_run_config *cfg, const kvf_train_opts *opts, kvf_train_result *res) {
    struct run R = {.cfg = cfg, .opts = opts, .log = opts->log ? opts->log : stderr};
    struct run *r = &R;
    kvf_status st = KVF_OK;
    memset(res, 0, sizeof *res);
    res->val_loss = NAN;
    kvf_device dev = !strcmp(cfg->device, "cuda") ? KVF_DEVICE_CUDA : KVF_DEVICE_CPU;
    KVF_CHECK(dev == KVF_DEVICE_CUDA || !strcmp(cfg->device, "cpu"), KVF_ERR_ARG,
              "%s: run.device must be cpu or cuda, got '%s'", opts->config_path, cfg->device);
    /* compute dtype: bf16 on a GPU unless asked otherwise; masters and moments stay f32 */
    kvf_dtype cdt = dev == KVF_DEVICE_CUDA ? KVF_DTYPE_BF16 : KVF_DTYPE_F32;
    if (!strcmp(cfg->dtype, "f32")) cdt = KVF_DTYPE_F32;
    else if (!strcmp(cfg->dtype, "bf16")) cdt = KVF_DTYPE_BF16;
    KVF_CHECK(!(cdt == KVF_DTYPE_BF16 && dev == KVF_DEVICE_CPU), KVF_ERR_ARG,
              "%s: run.dtype bf16 needs run.device cuda (the CPU trains in f32)", opts->config_path);
    if (dev != KVF_DEVICE_CPU && !kvf_backend_get(dev)) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s", kvf_error_message());
        kvf_error_clear();
        return kvf_error_set(KVF_ERR_DEVICE, "%s: run.device %s: %s", opts->config_path, cfg->device, msg);
    }

    if (opts->resume_dir) snprintf(r->dir, sizeof r->dir, "%s", opts->resume_dir);
    else snprintf(r->dir, sizeof r->dir, "%s/%s", cfg->out_dir, cfg->name);
    snprintf(r->ckpt, sizeof r->ckpt, "%s/checkpoint", r->dir);
    snprintf(res->run_dir, sizeof res->run_dir, "%s", r->dir);
    if (!opts->resume_dir && kvf_fs_exists(r->ckpt))
        return kvf_error_set(KVF_ERR_ARG, "%s already holds a checkpoint: continue it with --resume %s, "
                             "or pick another run.name", r->dir, r->dir);
    if (opts->resume_dir && !kvf_fs_exists(r->ckpt))
        return kvf_error_set(KVF_ERR_IO, "--resume %s: no checkpoint folder %s", r->dir, r->ckpt);
    KVF_TRY(kvf_fs_mkdirs(r->dir));

    r->tok = kvf_tokenizer_open(cfg->tokenizer);
    if (!r->tok) return kvf_error_code();
    kvf_model_config mc = cfg->model;
    if (!mc.vocab_size) mc.vocab_size = r->tok->vocab_size;
    if (mc.vocab_size < r->tok->vocab_size) {
        st = kvf_error_set(KVF_ERR_ARG, "%s: model.vocab_size %lld is smaller than the tokenizer's %d",
                           opts->config_path, (long long)mc.vocab_size, r->tok->vocab_size);
        goto done;
    }
    if ((st = load_data(r)) != KVF_OK) goto done;
    /* initialised (or loaded) on the CPU (the same weights for any device), then copied over */
    if (cfg->init_from[0] && !opts->resume_dir) {
        r->model = kvf_checkpoint_load(cfg->init_from, KVF_DEVICE_CPU);
        if (!r->model) {
            st = kvf_error_code();
            goto done;
        }
    } else {
        r->model = kvf_model_init(&mc, KVF_DEVICE_CPU);
        if (!r->model || (st = kvf_model_init_weights(r->model, (uint64_t)cfg->seed)) != KVF_OK) {
            st = kvf_error_code();
            goto done;
        }
    }
    if (dev != KVF_DEVICE_CPU && !opts->resume_dir) {
        kvf_model *dm = kvf_model_to_device(r->model, dev);
        if (!dm) {
            st = kvf_error_code();
            goto done;
        }
        kvf_model_free(r->model);
        r->model = dm;
    }
    kvf_train_state_info saved = {0};
    if (opts->resume_dir) {
        if ((st = resume(r, dev)) != KVF_OK) goto done;
    }
    if ((st = kvf_model_set_compute_dtype(r->model, cdt)) != KVF_OK) goto done;
    if ((st = kvf_recompute_parse(cfg->recompute, &r->model->recompute)) != KVF_OK) goto done;
    r->ctx = kvf_ctx_init(dev);
    if (!r->ctx || (st = make_optimizer(r)) != KVF_OK) {
        st = kvf_error_code();
        goto done;
    }
    if (opts->resume_dir) {
        kvf_batch_state bs;
        if ((st = kvf_train_state_load(r->ckpt, r->opt, &saved, &bs)) != KVF_OK) goto done;
        if ((st = kvf_batcher_set_state(r->batcher, &bs)) != KVF_OK) goto done;
        r->step = saved.step;
    } else {
        kvf_fs_copy_file(opts->config_path, r->dir, "config.yaml");
        kvf_error_clear(); /* the copy is a convenience; a config given as text has no file */
    }
    char mpath[KVF_PATH_MAX + 32];
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", r->dir);
    r->metrics = kvf_metrics_open(mpath, r->step);
    if (!r->metrics) {
        st = kvf_error_code();
        goto done;
    }

    const kvf_model_config *m = &r->model->cfg;
    int64_t tokens_per_step = cfg->batch_size * cfg->seq_len * cfg->grad_accum;
    double flops_tok = 3.0 * kvf_model_flops_per_token(m, cfg->seq_len);
    int64_t n_train = 0, n_val = 0;
    kvf_batcher_train(r->batcher, &n_train);
    kvf_batcher_val(r->batcher, &n_val);
    char what[KVF_PATH_MAX + 64];
    if (cfg->init_from[0]) snprintf(what, sizeof what, "from %s", cfg->init_from);
    else snprintf(what, sizeof what, "%s attention", cfg->attention);
    fprintf(r->log, "kvforge train: %s | %s | %lld params | KV cache %lld B/token | "
            "%lld train + %lld val tokens | %lld steps of %lld tokens%s%s%s%s\n",
            r->dir, what, (long long)kvf_model_n_params(m),
            (long long)kvf_model_kv_bytes_per_token(m), (long long)n_train, (long long)n_val,
            (long long)cfg->steps, (long long)tokens_per_step, dev == KVF_DEVICE_CPU ? "" : " | ",
            dev == KVF_DEVICE_CPU ? "" : kvf_device_name(dev),
            dev == KVF_DEVICE_CPU ? "" : (cdt == KVF_DTYPE_BF16 ? " bf16 (f32 masters)" : " f32"),
            r->model->recompute == KVF_RECOMPUTE_BLOCKS ? " | recomputing blocks" : "");
    if (opts->resume_dir) fprintf(r->log, "resuming at step %lld\n", (long long)r->step);

    int32_t *in = malloc(sizeof(int32_t) * (size_t)(cfg->batch_size * cfg->seq_len));
    int32_t *tg = malloc(sizeof(int32_t) * (size_t)(cfg->batch_size * cfg->seq_len));
    if (!in || !tg) {
        free(in);
        free(tg);
        st = kvf_error_set(KVF_ERR_OOM, "train: out of host memory");
        goto done;
    }
    double t_start = now_s(), t_log = t_start;
    int64_t start_step = r->step, tokens_since_log = 0, consecutive_skips = 0;
    double last_loss = NAN;
    while (r->step < cfg->steps && st == KVF_OK) {
        kvf_params_zero_grad(r->model->params);
        double loss_sum = 0;
        for (int64_t a = 0; a < cfg->grad_accum && st == KVF_OK; a++) {
            if ((st = kvf_batcher_next(r->batcher, in, tg, NULL)) != KVF_OK) break;
            kvf_ctx_reset(r->ctx);
            int64_t shape[2] = {cfg->batch_size, cfg->seq_len};
            kvf_tensor *ids = kvf_tensor_from_host(r->ctx, KVF_DTYPE_I32, 2, shape, in);
            kvf_tensor *tgt = kvf_tensor_from_host(r->ctx, KVF_DTYPE_I32, 2, shape, tg);
            kvf_tensor *loss = ids && tgt ? kvf_model_loss(r->model, r->ctx, ids, tgt) : NULL;
            double lv = NAN;
            if (dev == KVF_DEVICE_CPU) {
                if (!loss || (st = kvf_tensor_item(loss, &lv)) != KVF_OK ||
                    (isfinite(lv) && (st = kvf_backward(r->ctx, loss)) != KVF_OK)) {
                    st = kvf_error_code();
                    break;
                }
            } else if (!loss || (st = kvf_backward(r->ctx, loss)) != KVF_OK ||
                       (st = kvf_tensor_item(loss, &lv)) != KVF_OK) {
                /* on a GPU the backward is queued before the loss is read (reading waits for
                 * the device); a non-finite loss then leaves non-finite gradients, and the
                 * step is skipped below just the same */
                st = kvf_error_code();
                break;
            }
            loss_sum += lv;
        }
        if (st != KVF_OK) break;
        kvf_ctx_reset(r->ctx);
        double loss = loss_sum / (double)cfg->grad_accum;
        if (cfg->grad_accum > 1 && (st = kvf_grad_accum_average(r->model->params, cfg->grad_accum)) != KVF_OK) break;
        kvf_clip_info ci = {0};
        /* clipping's factor goes into the update (no pass over the gradients of its own) */
        if ((st = kvf_clip_grad_norm_deferred(r->model->params, cfg->grad_clip, &ci)) != KVF_OK) break;
        double lr = kvf_lr_at(&r->sched, r->step);
        bool skip = !isfinite(loss) || !ci.finite;
        if (skip) {
            res->skipped++;
            consecutive_skips++;
            fprintf(r->log, "step %lld: skipped: %s is not finite (loss %g, grad norm %g)\n",
                    (long long)r->step + 1, isfinite(loss) ? "the gradient norm" : "the loss", loss, ci.norm);
            kvf_metrics_skip(r->metrics, r->step + 1, loss, ci.norm);
            if (consecutive_skips >= MAX_CONSECUTIVE_SKIPS) {
                st = kvf_error_set(KVF_ERR_NUMERIC,
                                   "training diverged: %d consecutive steps with a non-finite loss or "
                                   "gradient (step %lld, lr %.3g); lower optim.lr or raise warmup_steps",
                                   MAX_CONSECUTIVE_SKIPS, (long long)r->step + 1, lr);
                break;
            }
        } else {
            consecutive_skips = 0;
            if ((st = kvf_optimizer_step_scaled(r->opt, lr, ci.scale)) != KVF_OK) break;
            last_loss = loss;
        }
        r->step++;
        tokens_since_log += tokens_per_step;
        bool stop = opts->stop_after > 0 && r->step - start_step >= opts->stop_after;
        bool last = r->step == cfg->steps || stop;
        if (r->step % cfg->log_every == 0 || last || r->step == start_step + 1) {
            double t = now_s(), tps = (double)tokens_since_log / fmax(t - t_log, 1e-9);
            double eta = (t - t_start) / (double)(r->step - start_step) * (double)(cfg->steps - r->step);
            char rate[32], etas[32];
            fmt_rate(rate, sizeof rate, tps);
            fmt_duration(etas, sizeof etas, eta);
            size_t peak = kvf_ctx_arena_peak(r->ctx);
            fprintf(r->log, "step %*lld/%lld | loss %.4f | lr %.2e | norm %.3f | %s tok/s | "
                    "arena peak %.1f MB | ETA %s\n",
                    (int)snprintf(NULL, 0, "%lld", (long long)cfg->steps), (long long)r->step,
                    (long long)cfg->steps, loss, lr, ci.norm, rate, (double)peak / 1e6, etas);
            kvf_metrics_step(r->metrics, r->step, loss, lr, ci.norm, tps, flops_tok * tps,
                             kvf_ctx_arena_reserved(r->ctx) +
                                 (size_t)kvf_params_numel(r->model->params) * 4 * 4,
                             peak);
            t_log = t;
            tokens_since_log = 0;
        }
        bool do_eval = last || (cfg->eval_every > 0 && r->step % cfg->eval_every == 0);
        if (do_eval) {
            kvf_eval_result ev;
            kvf_status es = evaluate(r, &ev);
            if (es == KVF_OK) {
                fprintf(r->log, "eval step %lld | val loss %.4f | ppl %.2f | %lld tokens\n",
                        (long long)r->step, ev.loss, ev.ppl, (long long)ev.tokens);
                kvf_metrics_eval(r->metrics, r->step, ev.loss, ev.ppl, ev.tokens);
                res->val_loss = ev.loss;
            } else if (es != KVF_ERR_STATE) {
                st = es;
                break;
            }
        }
        if (last || (cfg->save_every > 0 && r->step % cfg->save_every == 0)) {
            if ((st = save(r)) != KVF_OK) break;
            fprintf(r->log, "saved %s (step %lld)\n", r->ckpt, (long long)r->step);
        }
        if (stop) break;
    }
    free(in);
    free(tg);
    res->steps_done = r->step;
    res->last_loss = last_loss;
done:
    kvf_metrics_close(r->metrics);
    kvf_optimizer_free(r->opt);
    kvf_ctx_free(r->ctx);
    kvf_model_free(r->model);
    kvf_batcher_free(r->batcher);
    kvf_ids_free(&r->train);
    kvf_ids_free(&r->val);
    kvf_tokenizer_free(r->tok);
    return st;
}
