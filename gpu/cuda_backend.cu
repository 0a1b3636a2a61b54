/* cuda_backend.cu — the CUDA backend's table, device start-up, memory, transfers and the
 * scratch buffer. Kernels live in the other gpu/ .cu files (one per family).
 *
 * The device is started on first use (kvf_backend_cuda): the current CUDA device (set
 * CUDA_VISIBLE_DEVICES to choose one), its properties, the cuBLASLt handle and its 32 MiB
 * workspace. Without a usable device every call returns NULL with KVF_ERR_DEVICE
 * "no CUDA device: <reason>". */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cuda_common.h"

/* ---- errors ---------------------------------------------------------------------------- */

kvf_status kvf_cuda_report(const char *file, int line, const char *call, int is_oom,
                           const char *reason, const char *fmt, ...) {
    char what[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return kvf_error_set_at(file, line, is_oom ? KVF_ERR_OOM : KVF_ERR_BACKEND,
                            "%s: %s failed: %s", what, call, reason);
}

kvf_status kvf_cuda_bad_dtype(const char *what, kvf_dtype dt) {
    if (dt == KVF_DTYPE_F64)
        return kvf_error_set(KVF_ERR_DTYPE, "%s: f64 is CPU-only (the CUDA backend computes in "
                                            "f32 or bf16)", what);
    return kvf_error_set(KVF_ERR_DTYPE, "%s: the CUDA backend computes in f32 or bf16, got %s",
                         what, kvf_dtype_name(dt));
}

const char *kvf_cuda_desc(const kvf_tensor *t, char *buf, size_t n) {
    return kvf_tensor_describe(t, buf, n);
}

kvf_view4 kvf_cuda_view(const kvf_tensor *t) {
    kvf_view4 v;
    int pad = 4 - t->ndim;
    v.base = (char *)kvf_tensor_data(t);
    for (int i = 0; i < 4; i++) {
        v.shape[i] = i < pad ? 1 : t->shape[i - pad];
        v.stride[i] = i < pad ? 0 : t->stride[i - pad];
    }
    return v;
}

/* ---- device start-up ------------------------------------------------------------------- */

static struct kvf_cuda_device g_dev;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static bool g_ok;
static char g_why[400];

/* Any kernel, to ask whether this binary holds code the device can run. */
__global__ void kvf_probe_kernel(int *p) {
    if (p) *p = 1;
}

static void device_init(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        snprintf(g_why, sizeof g_why, "cudaGetDeviceCount failed: %s", cudaGetErrorString(e));
        (void)cudaGetLastError();
        return;
    }
    if (n == 0) {
        snprintf(g_why, sizeof g_why, "cudaGetDeviceCount found no GPU");
        return;
    }
    int id = 0;
    if ((e = cudaGetDevice(&id)) != cudaSuccess || (e = cudaSetDevice(id)) != cudaSuccess) {
        snprintf(g_why, sizeof g_why, "cudaSetDevice failed: %s", cudaGetErrorString(e));
        return;
    }
    cudaDeviceProp prop;
    if ((e = cudaGetDeviceProperties(&prop, id)) != cudaSuccess) {
        snprintf(g_why, sizeof g_why, "cudaGetDeviceProperties(%d) failed: %s", id,
                 cudaGetErrorString(e));
        return;
    }
    g_dev.id = id;
    g_dev.sm_count = prop.multiProcessorCount;
    g_dev.smem_optin = prop.sharedMemPerBlockOptin;
    g_dev.cc_major = prop.major;
    g_dev.cc_minor = prop.minor;
    cudaFuncAttributes fa;
    if ((e = cudaFuncGetAttributes(&fa, kvf_probe_kernel)) != cudaSuccess) {
        snprintf(g_why, sizeof g_why,
                 "GPU %d (%s, sm_%d%d) cannot run this build's kernels (%s): reconfigure with "
                 "-DKVF_CUDA_ARCHS=%d%d",
                 id, prop.name, prop.major, prop.minor, cudaGetErrorString(e), prop.major,
                 prop.minor);
        (void)cudaGetLastError();
        return;
    }
    if (prop.major < 8) {
        snprintf(g_why, sizeof g_why, "GPU %d (%s) is sm_%d%d; bf16 kernels need sm_80 or newer",
                 id, prop.name, prop.major, prop.minor);
        return;
    }
    if (kvf_cuda_gemm_init() != KVF_OK) {
        snprintf(g_why, sizeof g_why, "%s", kvf_error_message());
        kvf_error_clear();
        return;
    }
    g_ok = true;
}

const struct kvf_cuda_device *kvf_cuda_dev(void) { return &g_dev; }

/* ---- scratch ----------------------------------------------------------------------------- */

static void *g_scratch;
static size_t g_scratch_size;

void *kvf_cuda_scratch(size_t nbytes, const char *what) {
    if (nbytes <= g_scratch_size && g_scratch) return g_scratch;
    size_t want = nbytes < ((size_t)16 << 20) ? ((size_t)16 << 20) : nbytes + nbytes / 4;
    if (g_scratch) {
        /* kernels queued earlier may still read the old buffer */
        KVF_CU_NULL(cudaDeviceSynchronize(), "%s: growing the scratch buffer", what);
        cudaFree(g_scratch);
        g_scratch = NULL;
        g_scratch_size = 0;
    }
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, want);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        kvf_error_set(KVF_ERR_OOM,
                      "%s: cannot allocate %zu bytes of GPU scratch memory (%zu MiB free of "
                      "%zu MiB): lower batch_size or seq_len, or set run.recompute: blocks",
                      what, want, fr >> 20, tot >> 20);
        return NULL;
    }
    g_scratch = p;
    g_scratch_size = want;
    return p;
}

/* ---- memory and transfers ------------------------------------------------------------------ */

static void *cuda_alloc(size_t n) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, n ? n : 1);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        kvf_error_set(e == cudaErrorMemoryAllocation ? KVF_ERR_OOM : KVF_ERR_BACKEND,
                      "cuda: cudaMalloc of %zu bytes (%.1f MiB) failed: %s; the GPU has %.1f MiB "
                      "free of %.1f MiB: lower batch_size or seq_len, set run.recompute: blocks, or use a "
                      "smaller model",
                      n, (double)n / 1048576.0, cudaGetErrorString(e), (double)fr / 1048576.0,
                      (double)tot / 1048576.0);
        return NULL;
    }
    return p;
}

static void cuda_free(void *p) {
    if (p) cudaFree(p);
}

/* Stream-ordered allocations from the device's default memory pool, which keeps what is
 * freed (release threshold: everything) so that steady-state steps allocate nothing from
 * the driver; a free is ordered after the kernels already queued that read the block. */
static void *cuda_alloc_temp(size_t n) {
    static bool pool_set = false;
    if (!pool_set) {
        cudaMemPool_t pool;
        int dev = 0;
        if (cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess) {
            uint64_t keep = UINT64_MAX;
            cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
        }
        (void)cudaGetLastError();
        pool_set = true;
    }
    void *p = NULL;
    cudaError_t e = cudaMallocAsync(&p, n ? n : 1, KVF_STREAM);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        kvf_error_set(e == cudaErrorMemoryAllocation ? KVF_ERR_OOM : KVF_ERR_BACKEND,
                      "cuda: cudaMallocAsync of %zu bytes (%.1f MiB) for the backward failed: %s; "
                      "the GPU has %.1f MiB free of %.1f MiB: lower batch_size or seq_len, set "
                      "run.recompute: blocks, or use a smaller model",
                      n, (double)n / 1048576.0, cudaGetErrorString(e), (double)fr / 1048576.0,
                      (double)tot / 1048576.0);
        return NULL;
    }
    return p;
}

static void cuda_free_temp(void *p) {
    if (p) cudaFreeAsync(p, KVF_STREAM);
}

/* Small uploads (token ids, position tables, AdamW's segment table) go through a pinned
 * staging ring with cudaMemcpyAsync: a plain cudaMemcpy from pageable memory waits for the
 * whole stream to drain, and one in the middle of a forward leaves the GPU idle while the
 * host queues the next kernels. The ring is STAGE_SEGS segments; entering a segment waits
 * for the event recorded when it was last left, so the host only blocks when it runs a
 * whole ring ahead of the GPU. Large uploads (checkpoints) stay synchronous. */
#define STAGE_SEGS 8
#define STAGE_SEG_BYTES ((size_t)1 << 20)
static pthread_mutex_t g_stage_mu = PTHREAD_MUTEX_INITIALIZER;
static char *g_stage;
static cudaEvent_t g_stage_ev[STAGE_SEGS];
static bool g_stage_pending[STAGE_SEGS], g_stage_broken;
static int g_stage_seg;
static size_t g_stage_off;

/* Pinned staging for n bytes, or NULL where none is to be had (then copy synchronously). */
static char *stage_take(size_t n) {
    if (n > STAGE_SEG_BYTES || g_stage_broken) return NULL;
    if (!g_stage) {
        if (cudaMallocHost((void **)&g_stage, STAGE_SEGS * STAGE_SEG_BYTES) != cudaSuccess) {
            (void)cudaGetLastError();
            g_stage = NULL;
            g_stage_broken = true;
            return NULL;
        }
        for (int i = 0; i < STAGE_SEGS; i++)
            if (cudaEventCreateWithFlags(&g_stage_ev[i], cudaEventDisableTiming) != cudaSuccess) {
                (void)cudaGetLastError();
                g_stage_broken = true;
                return NULL;
            }
    }
    if (g_stage_off + n > STAGE_SEG_BYTES) {
        if (cudaEventRecord(g_stage_ev[g_stage_seg], KVF_STREAM) != cudaSuccess) return NULL;
        g_stage_pending[g_stage_seg] = true;
        g_stage_seg = (g_stage_seg + 1) % STAGE_SEGS;
        g_stage_off = 0;
        if (g_stage_pending[g_stage_seg]) {
            if (cudaEventSynchronize(g_stage_ev[g_stage_seg]) != cudaSuccess) return NULL;
            g_stage_pending[g_stage_seg] = false;
        }
    }
    char *p = g_stage + (size_t)g_stage_seg * STAGE_SEG_BYTES + g_stage_off;
    g_stage_off += (n + 255) & ~(size_t)255;
    return p;
}

kvf_status kvf_cuda_upload(void *dst, const void *host, size_t n) {
    if (!n) return KVF_OK;
    pthread_mutex_lock(&g_stage_mu);
    char *s = stage_take(n);
    cudaError_t e;
    if (s) {
        memcpy(s, host, n);
        e = cudaMemcpyAsync(dst, s, n, cudaMemcpyHostToDevice, KVF_STREAM);
    } else {
        e = cudaMemcpy(dst, host, n, cudaMemcpyHostToDevice);
    }
    pthread_mutex_unlock(&g_stage_mu);
    KVF_CU(e, "cuda upload of %zu bytes (an earlier kernel may have failed)", n);
    return KVF_OK;
}

static kvf_status cuda_upload(void *dst, const void *host, size_t n) {
    return kvf_cuda_upload(dst, host, n);
}

static kvf_status cuda_download(void *host, const void *src, size_t n) {
    if (!n) return KVF_OK;
    KVF_CU(cudaMemcpy(host, src, n, cudaMemcpyDeviceToHost),
           "cuda download of %zu bytes (an earlier kernel may have failed)", n);
    return KVF_OK;
}

static kvf_status cuda_memset_zero(void *dst, size_t n) {
    if (!n) return KVF_OK;
    KVF_CU(cudaMemsetAsync(dst, 0, n, KVF_STREAM), "cuda memset_zero of %zu bytes", n);
    return KVF_OK;
}

/* ---- the table ------------------------------------------------------------------------------- */

static kvf_backend g_table;

static void table_init(void) {
    kvf_backend *t = &g_table;
    t->name = "cuda";
    t->device = KVF_DEVICE_CUDA;
    t->alloc = cuda_alloc;
    t->free = cuda_free;
    t->alloc_temp = cuda_alloc_temp;
    t->free_temp = cuda_free_temp;
    t->upload = cuda_upload;
    t->download = cuda_download;
    t->memset_zero = cuda_memset_zero;
    t->copy = kvf_cuda_copy;
    t->gemm = kvf_cuda_gemm;
    t->binary = kvf_cuda_binary;
    t->unary = kvf_cuda_unary;
    t->unary_backward = kvf_cuda_unary_backward;
    t->reduce_sum = kvf_cuda_reduce_sum;
    t->softmax = kvf_cuda_softmax;
    t->softmax_backward = kvf_cuda_softmax_backward;
    t->rmsnorm = kvf_cuda_rmsnorm;
    t->rmsnorm_backward = kvf_cuda_rmsnorm_backward;
    t->layernorm = kvf_cuda_layernorm;
    t->layernorm_backward = kvf_cuda_layernorm_backward;
    t->rope = kvf_cuda_rope;
    t->attention = kvf_cuda_attention;
    t->attention_backward = kvf_cuda_attention_backward;
    t->cross_entropy = kvf_cuda_cross_entropy;
    t->cross_entropy_backward = kvf_cuda_cross_entropy_backward;
    t->cross_entropy_backward_inplace = kvf_cuda_cross_entropy_backward_inplace;
    t->embedding = kvf_cuda_embedding;
    t->embedding_backward = kvf_cuda_embedding_backward;
    t->swiglu = kvf_cuda_swiglu;
    t->swiglu_backward = kvf_cuda_swiglu_backward;
    t->adamw = kvf_cuda_adamw;
    t->sum_squares = kvf_cuda_sum_squares;
    t->gram_f64 = kvf_cuda_gram_f64;
    t->eigh_f64 = kvf_cuda_eigh_f64;
    t->svd_f64 = kvf_cuda_svd_f64;
    t->dgemm_f64 = kvf_cuda_dgemm_f64;
}

static void once(void) {
    device_init();
    if (g_ok) table_init();
}

extern "C" const kvf_backend *kvf_backend_cuda(void) {
    pthread_once(&g_once, once);
    if (!g_ok) {
        kvf_error_set(KVF_ERR_DEVICE, "no CUDA device: %s", g_why);
        return NULL;
    }
    return &g_table;
}
