#include "backend.h"

#ifdef KVF_WITH_CUDA
const kvf_backend *kvf_backend_cuda(void); /* gpu/, NULL (error set) without a usable GPU */
#endif

const kvf_backend *kvf_backend_get(kvf_device device) {
    switch (device) {
    case KVF_DEVICE_CPU: return kvf_backend_cpu();
    case KVF_DEVICE_CUDA:
#ifdef KVF_WITH_CUDA
        return kvf_backend_cuda();
#else
        kvf_error_set(KVF_ERR_DEVICE, "device cuda: this kvforge was built without CUDA "
                                      "(configure with -DKVF_CUDA=ON on a machine with nvcc)");
        return NULL;
#endif
    default: break;
    }
    kvf_error_set(KVF_ERR_DEVICE, "unknown device %d", (int)device);
    return NULL;
}
