#include "train_state.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/backend.h"
#include "autograd/context.h"
#include "model/safetensors.h"

#define STATE_FILE "trainer_state.safetensors"
#define STATE_FORMAT "kvforge-trainer-state-1"

static void hex_encode(const void *p, size_t n, char *out) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", b[i]);
    out[2 * n] = '\0';
}

static bool hex_decode(const char *s, void *p, size_t n) {
    if (!s || strlen(s) != 2 * n) return false;
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) return false;
        b[i] = (unsigned char)v;
    }
    return true;
}

/* t itself on the CPU, else a host copy (free it with kvf_tensor_free_owned). */
static kvf_status host_copy(kvf_tensor *t, kvf_tensor **out) {
    *out = t;
    if (kvf_tensor_device(t) == KVF_DEVICE_CPU) return KVF_OK;
    kvf_tensor *h = kvf_tensor_init_owned(t->dtype, t->ndim, t->shape);
    if (!h) return kvf_error_code();
    kvf_status st = kvf_tensor_to_host(t, kvf_tensor_data(h), kvf_tensor_nbytes(h));
    if (st != KVF_OK) {
        kvf_tensor_free_owned(h);
        return st;
    }
    *out = h;
    return KVF_OK;
}

kvf_status kvf_train_state_save(const char *dir, const kvf_optimizer *opt, int64_t step,
                                const kvf_batch_state *batch) {
    char path[4096], buf[64], hex[2 * sizeof(kvf_batch_state) + 1];
    snprintf(path, sizeof path, "%s/%s", dir, STATE_FILE);
    kvf_st_writer *w = kvf_st_writer_init();
    if (!w) return kvf_error_code();
    kvf_optim_state s = kvf_optimizer_state(opt);
    kvf_status st = kvf_st_writer_set_metadata(w, "kvforge.format", STATE_FORMAT);
    snprintf(buf, sizeof buf, "%" PRId64, step);
    if (st == KVF_OK) st = kvf_st_writer_set_metadata(w, "kvforge.step", buf);
    snprintf(buf, sizeof buf, "%" PRId64, s.step);
    if (st == KVF_OK) st = kvf_st_writer_set_metadata(w, "kvforge.optimizer_step", buf);
    hex_encode(batch, sizeof *batch, hex);
    if (st == KVF_OK) st = kvf_st_writer_set_metadata(w, "kvforge.batch_state", hex);
    char mname[96], vname[96];
    kvf_tensor *hm = NULL, *hv = NULL; /* host copies of device moments */
    if (st == KVF_OK && s.m) {
        snprintf(mname, sizeof mname, "optimizer.%s", s.m_name);
        st = host_copy(s.m, &hm);
        if (st == KVF_OK) st = kvf_st_writer_add_tensor(w, mname, hm, hm->dtype);
    }
    if (st == KVF_OK && s.v) {
        snprintf(vname, sizeof vname, "optimizer.%s", s.v_name);
        st = host_copy(s.v, &hv);
        if (st == KVF_OK) st = kvf_st_writer_add_tensor(w, vname, hv, hv->dtype);
    }
    if (st == KVF_OK) st = kvf_st_writer_write(w, path);
    kvf_st_writer_free(w);
    if (hm != s.m) kvf_tensor_free_owned(hm);
    if (hv != s.v) kvf_tensor_free_owned(hv);
    return st;
}

static kvf_status load_moment(kvf_st_file *f, const char *path, kvf_tensor *dst, const char *name) {
    if (!dst) return KVF_OK;
    char full[96];
    snprintf(full, sizeof full, "optimizer.%s", name);
    const kvf_st_tensor *t;
    KVF_TRY(kvf_st_file_get(f, full, &t));
    KVF_CHECK(t->numel == kvf_tensor_numel(dst), KVF_ERR_FORMAT,
              "%s: %s has %lld elements, the model's optimizer state %lld", path, full,
              (long long)t->numel, (long long)kvf_tensor_numel(dst));
    if (kvf_tensor_device(dst) == KVF_DEVICE_CPU)
        return kvf_st_tensor_read(t, dst->dtype, kvf_tensor_data(dst), kvf_tensor_nbytes(dst));
    /* device moments: read on the host, then upload */
    void *host = malloc(kvf_tensor_nbytes(dst) ? kvf_tensor_nbytes(dst) : 1);
    KVF_CHECK(host, KVF_ERR_OOM, "%s: cannot allocate %zu bytes for %s", path,
              kvf_tensor_nbytes(dst), full);
    kvf_status st = kvf_st_tensor_read(t, dst->dtype, host, kvf_tensor_nbytes(dst));
    const kvf_backend *be = st == KVF_OK ? kvf_backend_get(kvf_tensor_device(dst)) : NULL;
    if (st == KVF_OK) st = be ? be->upload(kvf_tensor_data(dst), host, kvf_tensor_nbytes(dst)) : kvf_error_code();
    free(host);
    return st;
}

kvf_status kvf_train_state_load(const char *dir, kvf_optimizer *opt, kvf_train_state_info *info,
                                kvf_batch_state *batch) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, STATE_FILE);
    kvf_st_file *f = kvf_st_file_open(path);
    if (!f) return kvf_error_code();
    kvf_status st = KVF_OK;
    const char *fmt = kvf_st_file_metadata(f, "kvforge.format");
    const char *step = kvf_st_file_metadata(f, "kvforge.step");
    const char *ostep = kvf_st_file_metadata(f, "kvforge.optimizer_step");
    const char *bs = kvf_st_file_metadata(f, "kvforge.batch_state");
    char *end = NULL;
    if (!fmt || strcmp(fmt, STATE_FORMAT) != 0)
        st = kvf_error_set(KVF_ERR_FORMAT, "%s: not a kvforge trainer state (format %s)", path,
                           fmt ? fmt : "missing");
    else if (!step || !ostep || (info->step = strtoll(step, &end, 10), *end) || info->step < 0)
        st = kvf_error_set(KVF_ERR_FORMAT, "%s: bad or missing kvforge.step", path);
    else if (!hex_decode(bs, batch, sizeof *batch))
        st = kvf_error_set(KVF_ERR_FORMAT, "%s: bad or missing kvforge.batch_state", path);
    if (st == KVF_OK) {
        kvf_optim_state s = kvf_optimizer_state(opt);
        st = load_moment(f, path, s.m, s.m_name);
        if (st == KVF_OK) st = load_moment(f, path, s.v, s.v_name);
        if (st == KVF_OK) st = kvf_optimizer_set_step(opt, strtoll(ostep, NULL, 10));
    }
    kvf_st_file_close(f);
    return st;
}
