/* cudnn_attention.cpp — the SDPA graphs of cudnn-frontend behind the C interface of
 * cudnn_attention.h. The frontend loads libcudnn through dlopen (its dynamic-loading mode),
 * so a build with the frontend's headers still runs where cuDNN is not installed. */
#include "cudnn_attention.h"

#ifdef KVF_CUDNN_FRONTEND
#define NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING
#include <cudnn_frontend.h>

#include <dlfcn.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>

namespace cudnn_frontend {
void *cudnn_dlhandle = nullptr;
}
namespace fe = cudnn_frontend;

/* cuda_backend.cu (C++ linkage): one growing device buffer, valid until its next call. */
void *kvf_cuda_scratch(size_t nbytes, const char *what);

namespace {

enum : int64_t { UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_SCALE, UID_DO, UID_DQ, UID_DK, UID_DV };

int g_state = -1; /* -1 not tried, 0 unavailable or off, 1 loaded */
int64_t g_ws_cap = -1;   /* backward workspace cap in bytes; -1: not read yet */
int64_t g_last_chunk = 0; /* batch elements per call of the last backward */

/* KVF_CUDNN_WS_CAP (bytes), default 256 MiB */
int64_t ws_cap() {
    if (g_ws_cap < 0) {
        const char *e = std::getenv("KVF_CUDNN_WS_CAP");
        g_ws_cap = e && *e ? std::atoll(e) : (int64_t)256 << 20;
    }
    return g_ws_cap;
}
bool g_enabled = true;
int g_version = 0;
cudnnHandle_t g_handle = nullptr;

bool load() {
    if (g_state >= 0) return g_state == 1;
    g_state = 0;
    const char *env = std::getenv("KVF_CUDNN");
    if (env && !std::strcmp(env, "0")) return false;
    void *h = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_GLOBAL);
    if (!h) h = dlopen("libcudnn.so", RTLD_NOW | RTLD_GLOBAL);
    if (!h) return false;
    fe::cudnn_dlhandle = h;
    try {
        g_version = (int)fe::detail::get_backend_version();
        /* the SDPA engines this file asks for (bf16 fwd/bwd with stats, bottom-right causal
         * masks, GQA) need cuDNN 9 */
        if (g_version < 90000) return false;
        if (fe::detail::create_handle(&g_handle) != CUDNN_STATUS_SUCCESS) return false;
        if (fe::detail::set_stream(g_handle, (cudaStream_t)0) != CUDNN_STATUS_SUCCESS) return false;
    } catch (...) {
        return false;
    }
    g_state = 1;
    return true;
}

/* Everything a graph bakes in: direction, sizes, input strides, mask. */
using graph_key = std::array<int64_t, 19>;

struct graph_entry {
    std::shared_ptr<fe::graph::Graph> g; /* null: cuDNN refused this shape; don't ask again */
    int64_t workspace = 0;
};

std::map<graph_key, graph_entry> g_graphs;

graph_key key_of(const kvf_cudnn_attn *a, bool bwd) {
    return {bwd, a->B, a->T, a->S, a->Hq, a->Hkv, a->Dk, a->Dv, a->q_b, a->q_t, a->q_h,
            a->k_b, a->k_t, a->k_h, a->v_b, a->v_t, a->v_h, a->causal, a->window};
}

template <class Attr> void set_mask(Attr &opt, const kvf_cudnn_attn *a) {
    if (!a->causal) return;
    opt.set_diagonal_alignment(fe::DiagonalAlignment_t::BOTTOM_RIGHT).set_diagonal_band_right_bound(0);
    if (a->window > 0) opt.set_diagonal_band_left_bound((int)a->window);
}

std::shared_ptr<fe::graph::Graph> build(const kvf_cudnn_attn *a, bool bwd, int64_t *workspace) {
    const int64_t B = a->B, T = a->T, S = a->S, Hq = a->Hq, Hkv = a->Hkv, Dk = a->Dk, Dv = a->Dv;
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    /* cuDNN's logical layout is [B, H, T, D]; ours is [B, T, H, D]: the strides say so */
    auto tensor = [&](const char *name, int64_t uid, std::vector<int64_t> dim, std::vector<int64_t> stride) {
        return g->tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim(dim).set_stride(stride));
    };
    auto Q = tensor("Q", UID_Q, {B, Hq, T, Dk}, {a->q_b, a->q_h, a->q_t, 1});
    auto K = tensor("K", UID_K, {B, Hkv, S, Dk}, {a->k_b, a->k_h, a->k_t, 1});
    auto V = tensor("V", UID_V, {B, Hkv, S, Dv}, {a->v_b, a->v_h, a->v_t, 1});
    auto scale = g->tensor(fe::graph::Tensor_attributes()
                               .set_name("scale")
                               .set_uid(UID_SCALE)
                               .set_dim({1, 1, 1, 1})
                               .set_stride({1, 1, 1, 1})
                               .set_is_pass_by_value(true)
                               .set_data_type(fe::DataType_t::FLOAT));
    const std::vector<int64_t> o_dim{B, Hq, T, Dv}, o_stride{T * Hq * Dv, Dv, Hq * Dv, 1};
    const std::vector<int64_t> st_dim{B, Hq, T, 1}, st_stride{Hq * T, T, 1, 1};
    if (!bwd) {
        auto opt = fe::graph::SDPA_attributes().set_name("kvf_sdpa").set_generate_stats(true).set_attn_scale(scale);
        set_mask(opt, a);
        auto [O, stats] = g->sdpa(Q, K, V, opt);
        O->set_output(true).set_dim(o_dim).set_stride(o_stride).set_uid(UID_O);
        stats->set_output(true).set_data_type(fe::DataType_t::FLOAT).set_dim(st_dim).set_stride(st_stride).set_uid(UID_STATS);
    } else {
        auto O = tensor("O", UID_O, o_dim, o_stride);
        auto dO = tensor("dO", UID_DO, o_dim, o_stride);
        auto stats = g->tensor(fe::graph::Tensor_attributes()
                                   .set_name("stats")
                                   .set_uid(UID_STATS)
                                   .set_dim(st_dim)
                                   .set_stride(st_stride)
                                   .set_data_type(fe::DataType_t::FLOAT));
        /* deterministic: the CUDA backend's results are bitwise reproducible run to run
         * (cuda_common.h); KVF_CUDNN_DETERMINISTIC=0 lets cuDNN sum dQ with atomics */
        const char *det = std::getenv("KVF_CUDNN_DETERMINISTIC");
        auto opt = fe::graph::SDPA_backward_attributes()
                       .set_name("kvf_sdpa_bwd")
                       .set_attn_scale(scale)
                       .set_deterministic_algorithm(!(det && !std::strcmp(det, "0")));
        set_mask(opt, a);
        auto [dQ, dK, dV] = g->sdpa_backward(Q, K, V, O, dO, stats, opt);
        dQ->set_output(true).set_dim({B, Hq, T, Dk}).set_stride({T * Hq * Dk, Dk, Hq * Dk, 1}).set_uid(UID_DQ);
        dK->set_output(true).set_dim({B, Hkv, S, Dk}).set_stride({S * Hkv * Dk, Dk, Hkv * Dk, 1}).set_uid(UID_DK);
        dV->set_output(true).set_dim({B, Hkv, S, Dv}).set_stride({S * Hkv * Dv, Dv, Hkv * Dv, 1}).set_uid(UID_DV);
    }
    /* KVF_CUDNN_VERBOSE=1: say once per shape whether cuDNN took it, and if not, why (a
     * refused shape runs kvforge's own kernels, several times slower) */
    const char *verbose = std::getenv("KVF_CUDNN_VERBOSE");
    const bool say = verbose && std::strcmp(verbose, "0");
    auto refuse = [&](const char *stage, const std::string &why) -> std::shared_ptr<fe::graph::Graph> {
        if (say)
            std::fprintf(stderr, "kvforge: cuDNN SDPA %s B %lld T %lld S %lld Hq %lld Hkv %lld Dk %lld Dv %lld: "
                         "refused at %s: %s\n", bwd ? "bwd" : "fwd", (long long)B, (long long)T, (long long)S,
                         (long long)Hq, (long long)Hkv, (long long)Dk, (long long)Dv, stage, why.c_str());
        return nullptr;
    };
    try {
        fe::error_t e;
        if ((e = g->validate()).is_bad()) return refuse("validate", e.get_message());
        if ((e = g->build_operation_graph(g_handle)).is_bad()) return refuse("build_operation_graph", e.get_message());
        if ((e = g->create_execution_plans({fe::HeurMode_t::A})).is_bad()) return refuse("create_execution_plans", e.get_message());
        if ((e = g->check_support()).is_bad()) return refuse("check_support", e.get_message());
        if ((e = g->build_plans()).is_bad()) return refuse("build_plans", e.get_message());
        int64_t ws = 0;
        if ((e = g->get_workspace_size(ws)).is_bad()) return refuse("get_workspace_size", e.get_message());
        *workspace = ws;
        if (say)
            std::fprintf(stderr, "kvforge: cuDNN SDPA %s B %lld T %lld S %lld Hq %lld Hkv %lld Dk %lld Dv %lld: "
                         "taken, workspace %lld bytes\n", bwd ? "bwd" : "fwd", (long long)B, (long long)T,
                         (long long)S, (long long)Hq, (long long)Hkv, (long long)Dk, (long long)Dv, (long long)ws);
    } catch (const std::exception &x) {
        return refuse("exception", x.what());
    } catch (...) {
        return refuse("exception", "unknown");
    }
    return g;
}

bool aligned(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* The cached graph for a's shape, or null when cuDNN does not take it. */
const graph_entry *graph_for(const kvf_cudnn_attn *a, bool bwd) {
    if (!g_enabled || !load()) return nullptr;
    /* bottom-right causal masks with fewer keys than queries leave rows with no key, which
     * the own kernels define (zero output) and cuDNN's engines do not */
    if (a->causal && a->S < a->T) return nullptr;
    if (a->window > 0 && !a->causal) return nullptr;
    if (!aligned(a->q) || !aligned(a->k) || !aligned(a->v)) return nullptr;
    const graph_key key = key_of(a, bwd);
    auto it = g_graphs.find(key);
    if (it == g_graphs.end()) {
        graph_entry e;
        e.g = build(a, bwd, &e.workspace);
        it = g_graphs.emplace(key, e).first;
    }
    return it->second.g ? &it->second : nullptr;
}

kvf_status run(const graph_entry *e, const kvf_cudnn_attn *a, std::unordered_map<int64_t, void *> &pack,
               const char *what) {
    void *ws = nullptr;
    if (e->workspace > 0 && !(ws = kvf_cuda_scratch((size_t)e->workspace, what))) return kvf_error_code();
    float scale = a->scale;
    pack[UID_SCALE] = &scale;
    fe::error_t err;
    try {
        err = e->g->execute(g_handle, pack, ws);
    } catch (const std::exception &x) {
        err = fe::error_t(fe::error_code_t::GRAPH_EXECUTION_FAILED, x.what());
    }
    if (err.is_bad())
        return kvf_error_set(KVF_ERR_BACKEND,
                             "%s: cuDNN SDPA execute failed: %s (B %lld T %lld S %lld Hq %lld Hkv %lld "
                             "Dk %lld Dv %lld; KVF_CUDNN=0 uses kvforge's own kernels)",
                             what, err.get_message().c_str(), (long long)a->B, (long long)a->T,
                             (long long)a->S, (long long)a->Hq, (long long)a->Hkv, (long long)a->Dk,
                             (long long)a->Dv);
    return KVF_OK;
}

} // namespace

extern "C" int kvf_cudnn_available(int *version) {
    bool ok = load();
    if (version) *version = ok ? g_version : 0;
    return ok;
}

extern "C" int kvf_cudnn_enable(int on) {
    int old = g_enabled;
    g_enabled = on != 0;
    return old;
}

extern "C" int kvf_cudnn_attn_fwd(const kvf_cudnn_attn *a, kvf_status *st) {
    if (!aligned(a->o) || !aligned(a->lse)) return 0;
    const graph_entry *e = graph_for(a, false);
    if (!e) return 0;
    std::unordered_map<int64_t, void *> pack = {{UID_Q, (void *)a->q}, {UID_K, (void *)a->k},
                                                {UID_V, (void *)a->v}, {UID_O, a->o},
                                                {UID_STATS, (void *)a->lse}};
    *st = run(e, a, pack, "attention (cuDNN)");
    return 1;
}

extern "C" int kvf_cudnn_attn_bwd(const kvf_cudnn_attn *a, kvf_status *st) {
    if (!a->dq || !a->dk || !a->dv) return 0; /* cuDNN computes all three */
    if (!aligned(a->o_in) || !aligned(a->dout) || !aligned(a->dq) || !aligned(a->dk) || !aligned(a->dv))
        return 0;
    const graph_entry *e = graph_for(a, true);
    if (!e) return 0;
    /* The deterministic backward keeps dS for a separate dQ pass: its workspace grows as
     * B·Hq·T·S (0.4 GB at B 16, T 1024, 12 heads; 3.2 GB at B 2, T 8192). Above the cap the
     * batch runs in equal chunks, the largest whose workspace fits, one call each: every
     * batch element's result is the same either way (tests/test_gpu.c). */
    int64_t chunk = a->B;
    if (e->workspace > ws_cap())
        for (chunk = a->B - 1; chunk > 1; chunk--)
            if (a->B % chunk == 0 && e->workspace / a->B * chunk <= ws_cap()) break;
    kvf_cudnn_attn sub = *a;
    sub.B = chunk;
    const graph_entry *se = chunk < a->B ? graph_for(&sub, true) : nullptr;
    if (!se) {
        chunk = a->B;
        se = e;
        sub = *a;
    }
    g_last_chunk = chunk;
    const size_t bf = 2; /* bf16 */
    for (int64_t b0 = 0; b0 < a->B; b0 += chunk) {
        sub.q = (const char *)a->q + b0 * a->q_b * bf;
        sub.k = (const char *)a->k + b0 * a->k_b * bf;
        sub.v = (const char *)a->v + b0 * a->v_b * bf;
        sub.o_in = (const char *)a->o_in + b0 * a->T * a->Hq * a->Dv * bf;
        sub.dout = (const char *)a->dout + b0 * a->T * a->Hq * a->Dv * bf;
        sub.lse_in = a->lse_in + b0 * a->Hq * a->T;
        sub.dq = (char *)a->dq + b0 * a->T * a->Hq * a->Dk * bf;
        sub.dk = (char *)a->dk + b0 * a->S * a->Hkv * a->Dk * bf;
        sub.dv = (char *)a->dv + b0 * a->S * a->Hkv * a->Dv * bf;
        std::unordered_map<int64_t, void *> pack = {
            {UID_Q, (void *)sub.q},       {UID_K, (void *)sub.k},     {UID_V, (void *)sub.v},
            {UID_O, (void *)sub.o_in},    {UID_DO, (void *)sub.dout}, {UID_STATS, (void *)sub.lse_in},
            {UID_DQ, sub.dq},             {UID_DK, sub.dk},           {UID_DV, sub.dv}};
        *st = run(se, &sub, pack, "attention_backward (cuDNN)");
        if (*st != KVF_OK) break;
    }
    return 1;
}

extern "C" int64_t kvf_cudnn_set_ws_cap(int64_t bytes) {
    int64_t old = ws_cap();
    g_ws_cap = bytes;
    return old;
}

extern "C" int64_t kvf_cudnn_last_bwd_chunk(void) { return g_last_chunk; }

#else /* built without the cudnn-frontend headers: attention uses kvforge's own kernels */

extern "C" int kvf_cudnn_available(int *version) {
    if (version) *version = 0;
    return 0;
}
extern "C" int kvf_cudnn_enable(int on) { return 0; }
extern "C" int kvf_cudnn_attn_fwd(const kvf_cudnn_attn *a, kvf_status *st) { return 0; }
extern "C" int kvf_cudnn_attn_bwd(const kvf_cudnn_attn *a, kvf_status *st) { return 0; }
extern "C" int64_t kvf_cudnn_set_ws_cap(int64_t bytes) { return 0; }
extern "C" int64_t kvf_cudnn_last_bwd_chunk(void) { return 0; }

#endif
