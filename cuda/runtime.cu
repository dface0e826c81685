// Status strings, the thread-local last error, device memory, and cuBLAS located at run time
// (dlopen), so that the library builds and loads where only nvcc and the CUDA runtime exist.
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <mutex>
#include <string>
#include <vector>

#include "common.cuh"

namespace convnet {

namespace runtime_impl {
thread_local char g_last_error[2048] = "";
}  // namespace runtime_impl

using namespace runtime_impl;

void clear_error() { g_last_error[0] = '\0'; }

convnet_status set_error(convnet_status status, const char* format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(g_last_error, sizeof(g_last_error), format, args);
    va_end(args);
    return status;
}

convnet_status check_cuda(cudaError_t err, const char* what) {
    if (err == cudaSuccess) return CONVNET_OK;
    convnet_status status =
        err == cudaErrorMemoryAllocation ? CONVNET_ERR_OUT_OF_MEMORY : CONVNET_ERR_CUDA;
    return set_error(status, "%s: %s (%s)", what, cudaGetErrorString(err),
                     cudaGetErrorName(err));
}

// ------------------------------------------------------------------------------- cuBLAS

namespace runtime_impl {

struct Cublas {
    std::mutex mutex;
    bool tried = false;
    void* library = nullptr;
    std::string tried_paths;
    std::string search_path;
    CublasCreate create = nullptr;
    CublasSetStream set_stream = nullptr;
    CublasSgemm sgemm = nullptr;
    void* handle = nullptr;
    int handle_device = -1;
};

Cublas& cublas() {
    static Cublas instance;
    return instance;
}

const char* const kCublasNames[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so.11",
                                    "libcublas.so"};

void* open_cublas(Cublas& c) {
    std::vector<std::string> candidates;
    for (const char* name : kCublasNames) candidates.push_back(name);
    std::vector<std::string> dirs;
    size_t start = 0;
    const std::string& path = c.search_path;
    while (start <= path.size()) {
        size_t end = path.find(':', start);
        if (end == std::string::npos) end = path.size();
        if (end > start) dirs.push_back(path.substr(start, end - start));
        start = end + 1;
    }
    dirs.push_back("/usr/local/cuda/lib64");
    dirs.push_back("/usr/local/cuda/targets/x86_64-linux/lib");
    for (const std::string& dir : dirs) {
        for (const char* name : kCublasNames) candidates.push_back(dir + "/" + name);
    }
    c.tried_paths.clear();
    for (const std::string& candidate : candidates) {
        void* lib = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (lib != nullptr) return lib;
        if (!c.tried_paths.empty()) c.tried_paths += ", ";
        c.tried_paths += candidate;
    }
    return nullptr;
}

// Caller holds c.mutex.
convnet_status load_locked(Cublas& c) {
    if (!c.tried) {
        c.tried = true;
        c.library = open_cublas(c);
        if (c.library != nullptr) {
            c.create = reinterpret_cast<CublasCreate>(dlsym(c.library, "cublasCreate_v2"));
            c.set_stream =
                reinterpret_cast<CublasSetStream>(dlsym(c.library, "cublasSetStream_v2"));
            c.sgemm = reinterpret_cast<CublasSgemm>(dlsym(c.library, "cublasSgemm_v2"));
            if (c.create == nullptr || c.set_stream == nullptr || c.sgemm == nullptr) {
                c.library = nullptr;
                c.tried_paths = "a libcublas without cublasCreate_v2/cublasSgemm_v2";
            }
        }
    }
    if (c.library == nullptr) {
        return set_error(CONVNET_ERR_CUBLAS_MISSING,
                         "cuBLAS is needed for Convolution/Deconvolution on the GPU but no "
                         "libcublas could be loaded (tried %s); install the CUDA toolkit's "
                         "cuBLAS or `pip install nvidia-cublas-cu12`, or put its folder on "
                         "LD_LIBRARY_PATH",
                         c.tried_paths.c_str());
    }
    return CONVNET_OK;
}

}  // namespace runtime_impl

convnet_status cublas_sgemm_row_major(int32_t trans_a, int32_t trans_b, int64_t m, int64_t n,
                                      int64_t k, float alpha, const float* a, int64_t lda,
                                      const float* b, int64_t ldb, float beta, float* c,
                                      int64_t ldc, cudaStream_t stream) {
    Cublas& cb = cublas();
    std::lock_guard<std::mutex> lock(cb.mutex);
    CONVNET_TRY(load_locked(cb));
    int device = 0;
    CONVNET_TRY(check_cuda(cudaGetDevice(&device), "cudaGetDevice"));
    if (cb.handle == nullptr || cb.handle_device != device) {
        void* handle = nullptr;
        int status = cb.create(&handle);
        if (status != 0) {
            return set_error(CONVNET_ERR_CUBLAS, "cublasCreate failed with cuBLAS status %d",
                             status);
        }
        cb.handle = handle;   // one handle per process, for the current device
        cb.handle_device = device;
    }
    int status = cb.set_stream(cb.handle, stream);
    if (status != 0) {
        return set_error(CONVNET_ERR_CUBLAS, "cublasSetStream failed with cuBLAS status %d",
                         status);
    }
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    status = cb.sgemm(cb.handle, trans_b ? kCublasOpT : kCublasOpN,
                      trans_a ? kCublasOpT : kCublasOpN, static_cast<int>(n),
                      static_cast<int>(m), static_cast<int>(k), &alpha, b,
                      static_cast<int>(ldb), a, static_cast<int>(lda), &beta, c,
                      static_cast<int>(ldc));
    if (status != 0) {
        return set_error(CONVNET_ERR_CUBLAS,
                         "cublasSgemm (m=%lld n=%lld k=%lld) failed with cuBLAS status %d",
                         static_cast<long long>(m), static_cast<long long>(n),
                         static_cast<long long>(k), status);
    }
    return check_cuda(cudaGetLastError(), "cublasSgemm");
}

}  // namespace convnet

using namespace convnet;
using namespace convnet::runtime_impl;

namespace convnet {
namespace runtime_impl {

template <typename T>
__global__ void fill_kernel(T* dst, T value, int64_t n) {
    CONVNET_GRID_STRIDE(i, n) { dst[i] = value; }
}

template <typename T>
convnet_status fill_typed(void* dst, int64_t count, const void* value,
                                 cudaStream_t stream) {
    T v;
    memcpy(&v, value, sizeof(T));
    return launch("convnet_fill", count, stream, fill_kernel<T>, static_cast<T*>(dst), v,
                  count);
}

}  // namespace runtime_impl
}  // namespace convnet

// ------------------------------------------------------------------------------- C API

extern "C" {

CONVNET_API int convnet_abi_version(void) { return CONVNET_CUDA_ABI_VERSION; }

CONVNET_API const char* convnet_status_string(convnet_status status) {
    switch (status) {
        case CONVNET_OK: return "CONVNET_OK";
        case CONVNET_ERR_CUDA: return "CONVNET_ERR_CUDA";
        case CONVNET_ERR_INVALID_ARGUMENT: return "CONVNET_ERR_INVALID_ARGUMENT";
        case CONVNET_ERR_BAD_INDEX: return "CONVNET_ERR_BAD_INDEX";
        case CONVNET_ERR_CUBLAS_MISSING: return "CONVNET_ERR_CUBLAS_MISSING";
        case CONVNET_ERR_CUBLAS: return "CONVNET_ERR_CUBLAS";
        case CONVNET_ERR_OUT_OF_MEMORY: return "CONVNET_ERR_OUT_OF_MEMORY";
    }
    return "CONVNET_ERR_UNKNOWN";
}

CONVNET_API const char* convnet_last_error(void) { return g_last_error; }

CONVNET_API convnet_status convnet_device_count(int* count) {
    clear_error();
    CONVNET_REQUIRE(count != nullptr, "convnet_device_count", "count is NULL");
    *count = 0;
    int n = 0;
    CONVNET_TRY(check_cuda(cudaGetDeviceCount(&n), "cudaGetDeviceCount"));
    *count = n;
    return CONVNET_OK;
}

CONVNET_API convnet_status convnet_malloc(void** ptr, int64_t nbytes) {
    clear_error();
    CONVNET_REQUIRE(ptr != nullptr, "convnet_malloc", "ptr is NULL");
    CONVNET_REQUIRE(nbytes >= 0, "convnet_malloc", "negative size");
    *ptr = nullptr;
    if (nbytes == 0) return CONVNET_OK;
    cudaError_t err = cudaMalloc(ptr, static_cast<size_t>(nbytes));
    if (err != cudaSuccess) {
        *ptr = nullptr;
        return set_error(err == cudaErrorMemoryAllocation ? CONVNET_ERR_OUT_OF_MEMORY
                                                          : CONVNET_ERR_CUDA,
                         "cudaMalloc of %lld bytes: %s (%s)", static_cast<long long>(nbytes),
                         cudaGetErrorString(err), cudaGetErrorName(err));
    }
    return CONVNET_OK;
}

CONVNET_API convnet_status convnet_free(void* ptr) {
    clear_error();
    if (ptr == nullptr) return CONVNET_OK;
    return check_cuda(cudaFree(ptr), "cudaFree");
}

static convnet_status copy(void* dst, const void* src, int64_t nbytes, cudaMemcpyKind kind,
                           void* stream, const char* name) {
    clear_error();
    CONVNET_REQUIRE(nbytes >= 0, name, "negative size");
    if (nbytes == 0) return CONVNET_OK;
    CONVNET_REQUIRE(dst != nullptr && src != nullptr, name, "NULL pointer");
    CONVNET_TRY(check_cuda(
        cudaMemcpyAsync(dst, src, static_cast<size_t>(nbytes), kind, as_stream(stream)), name));
    if (kind == cudaMemcpyDeviceToHost) {
        // the host buffer is read right after the call returns
        return check_cuda(cudaStreamSynchronize(as_stream(stream)), name);
    }
    if (kind == cudaMemcpyHostToDevice) {
        // pageable host memory may be released by the caller as soon as we return
        return check_cuda(cudaStreamSynchronize(as_stream(stream)), name);
    }
    return CONVNET_OK;
}

CONVNET_API convnet_status convnet_memcpy_htod(void* dst, const void* src, int64_t nbytes,
                                               void* stream) {
    return copy(dst, src, nbytes, cudaMemcpyHostToDevice, stream, "convnet_memcpy_htod");
}

CONVNET_API convnet_status convnet_memcpy_dtoh(void* dst, const void* src, int64_t nbytes,
                                               void* stream) {
    return copy(dst, src, nbytes, cudaMemcpyDeviceToHost, stream, "convnet_memcpy_dtoh");
}

CONVNET_API convnet_status convnet_memcpy_dtod(void* dst, const void* src, int64_t nbytes,
                                               void* stream) {
    return copy(dst, src, nbytes, cudaMemcpyDeviceToDevice, stream, "convnet_memcpy_dtod");
}

CONVNET_API convnet_status convnet_memset(void* dst, int value, int64_t nbytes, void* stream) {
    clear_error();
    CONVNET_REQUIRE(nbytes >= 0, "convnet_memset", "negative size");
    if (nbytes == 0) return CONVNET_OK;
    CONVNET_REQUIRE(dst != nullptr, "convnet_memset", "NULL pointer");
    return check_cuda(cudaMemsetAsync(dst, value, static_cast<size_t>(nbytes),
                                      as_stream(stream)),
                      "convnet_memset");
}

CONVNET_API convnet_status convnet_fill(void* dst, int64_t count, int64_t itemsize,
                                        const void* value, void* stream) {
    clear_error();
    CONVNET_REQUIRE(count >= 0, "convnet_fill", "negative count");
    if (count == 0) return CONVNET_OK;
    CONVNET_REQUIRE(dst != nullptr && value != nullptr, "convnet_fill", "NULL pointer");
    cudaStream_t s = as_stream(stream);
    switch (itemsize) {
        case 1: return fill_typed<uint8_t>(dst, count, value, s);
        case 2: return fill_typed<uint16_t>(dst, count, value, s);
        case 4: return fill_typed<uint32_t>(dst, count, value, s);
        case 8: return fill_typed<uint64_t>(dst, count, value, s);
        default: break;
    }
    return set_error(CONVNET_ERR_INVALID_ARGUMENT, "convnet_fill: itemsize %lld is not 1, 2, "
                     "4 or 8", static_cast<long long>(itemsize));
}

CONVNET_API convnet_status convnet_synchronize(void* stream) {
    clear_error();
    return check_cuda(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
}

CONVNET_API convnet_status convnet_set_cublas_search_path(const char* paths) {
    clear_error();
    Cublas& cb = cublas();
    std::lock_guard<std::mutex> lock(cb.mutex);
    cb.search_path = paths != nullptr ? paths : "";
    if (cb.library == nullptr) cb.tried = false;   // a new path gets a new attempt
    return CONVNET_OK;
}

CONVNET_API convnet_status convnet_cublas_load(void) {
    clear_error();
    Cublas& cb = cublas();
    std::lock_guard<std::mutex> lock(cb.mutex);
    return load_locked(cb);
}

}  // extern "C"
