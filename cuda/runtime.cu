// Status strings, the thread-local last error, device memory, and cuBLAS located at run time
// (dlopen), so that the library builds and loads where only nvcc and the CUDA runtime exist.
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <mutex>
#include <string>
#include <vector>

#include "common.cuh"

namespace convnet {

namespace runtime_impl {
thread_local char g_last_error[2048] = "";
std::atomic<long long> g_waits{0};   // host waits for the device since the library loaded
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
    // a failed call also leaves its error as CUDA's last error; clear it here, where it is
    // handled, so that the next launch does not report it again (a sticky error, one that
    // kills the context, comes back from every later call anyway)
    cudaGetLastError();
    convnet_status status =
        err == cudaErrorMemoryAllocation ? CONVNET_ERR_OUT_OF_MEMORY : CONVNET_ERR_CUDA;
    return set_error(status, "%s: %s (%s)", what, cudaGetErrorString(err),
                     cudaGetErrorName(err));
}

convnet_status wait_for(cudaStream_t stream, const char* name) {
    ++g_waits;
    return check_cuda(cudaStreamSynchronize(stream), name);
}

namespace runtime_impl {

bool sync_after_launch() {
    const char* mode = getenv("CONVNET_CUDA_SYNC");
    return mode != nullptr && mode[0] != '\0' && strcmp(mode, "0") != 0;
}

}  // namespace runtime_impl

convnet_status check_launch(const char* name, cudaStream_t stream) {
    CONVNET_TRY(check_cuda(cudaGetLastError(), name));
    if (!sync_after_launch()) return CONVNET_OK;
    ++g_waits;
    cudaError_t err = cudaStreamSynchronize(stream);
    if (err == cudaSuccess) return CONVNET_OK;
    cudaGetLastError();
    return set_error(err == cudaErrorMemoryAllocation ? CONVNET_ERR_OUT_OF_MEMORY
                                                      : CONVNET_ERR_CUDA,
                     "kernel %s failed (CONVNET_CUDA_SYNC=1 waited for it): %s (%s)", name,
                     cudaGetErrorString(err), cudaGetErrorName(err));
}

// ------------------------------------------------------------------------------- cuBLAS

namespace runtime_impl {

constexpr int kCublasDefaultMath = 0;      // CUBLAS_DEFAULT_MATH
constexpr int kCublasTf32Math = 3;         // CUBLAS_TF32_TENSOR_OP_MATH

struct Cublas {
    std::mutex mutex;
    bool tried = false;
    void* library = nullptr;
    std::string library_path;
    std::string tried_paths;
    std::string search_path;
    CublasCreate create = nullptr;
    CublasDestroy destroy = nullptr;
    CublasSetStream set_stream = nullptr;
    CublasSetMathMode set_math_mode = nullptr;
    CublasSgemm sgemm = nullptr;
    CublasSgemmStridedBatched sgemm_strided_batched = nullptr;
    std::vector<void*> handles;   // one per device, created on first use there, kept
    std::vector<int> math_modes;
};

Cublas& cublas() {
    static Cublas instance;
    return instance;
}

#ifdef CONVNET_HOST_BUILD
// the host build's stand-in (cuda/host/cublas.cpp), beside the library or on the search path
const char* const kCublasNames[] = {"libconvnet_cublas_host.so"};
constexpr bool kTryBareNames = false;
#else
const char* const kCublasNames[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so.11",
                                    "libcublas.so"};
constexpr bool kTryBareNames = true;
#endif

// Where the libcublas this library was built against comes from (CUDART_VERSION: nvcc's, or
// the host shim's, which matches the CUDA 13 toolkit the GPU build uses).
const char* cublas_install_hint() {
#ifdef CONVNET_HOST_BUILD
#define CONVNET_HOST_HINT_PREFIX                                                           \
    "the host build loads libconvnet_cublas_host.so from beside libconvnet_cuda_host.so "  \
    "(rebuild convnet); on a GPU, "
#else
#define CONVNET_HOST_HINT_PREFIX ""
#endif
#if CUDART_VERSION >= 13000
    return CONVNET_HOST_HINT_PREFIX
        "install the CUDA 13 toolkit's cuBLAS or `pip install nvidia-cublas` (CUDA 13)";
#elif CUDART_VERSION >= 12000
    return CONVNET_HOST_HINT_PREFIX
        "install the CUDA 12 toolkit's cuBLAS or `pip install nvidia-cublas-cu12`";
#else
    return CONVNET_HOST_HINT_PREFIX "install the CUDA toolkit's cuBLAS";
#endif
#undef CONVNET_HOST_HINT_PREFIX
}

std::string own_directory() {
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&cublas_install_hint), &info) == 0 ||
        info.dli_fname == nullptr) {
        return "";
    }
    std::string path = info.dli_fname;
    size_t slash = path.rfind('/');
    return slash == std::string::npos ? "" : path.substr(0, slash);
}

std::vector<std::string> cublas_candidates(const Cublas& c) {
    std::vector<std::string> candidates;
    if (kTryBareNames) {
        for (const char* name : kCublasNames) candidates.push_back(name);
    }
    std::vector<std::string> dirs;
    size_t start = 0;
    const std::string& path = c.search_path;
    while (start <= path.size()) {
        size_t end = path.find(':', start);
        if (end == std::string::npos) end = path.size();
        if (end > start) dirs.push_back(path.substr(start, end - start));
        start = end + 1;
    }
#ifdef CONVNET_HOST_BUILD
    dirs.push_back(own_directory());
#else
    dirs.push_back("/usr/local/cuda/lib64");
    dirs.push_back("/usr/local/cuda/targets/x86_64-linux/lib");
#endif
    for (const std::string& dir : dirs) {
        for (const char* name : kCublasNames) candidates.push_back(dir + "/" + name);
    }
    return candidates;
}

void note_tried(Cublas& c, const std::string& what) {
    if (!c.tried_paths.empty()) c.tried_paths += ", ";
    c.tried_paths += what;
}

// Make the handle of `device` (caller holds c.mutex and c.library is loaded).
convnet_status handle_for(Cublas& c, int device, void** handle) {
    if (device < 0) return set_error(CONVNET_ERR_CUDA, "cuBLAS: invalid device %d", device);
    if (static_cast<size_t>(device) >= c.handles.size()) {
        c.handles.resize(device + 1, nullptr);
        c.math_modes.resize(device + 1, kCublasDefaultMath);
    }
    if (c.handles[device] == nullptr) {
        void* h = nullptr;
        int status = c.create(&h);
        if (status != 0) {
            return set_error(CONVNET_ERR_CUBLAS, "cublasCreate (%s) failed on device %d with "
                             "cuBLAS status %d", c.library_path.c_str(), device, status);
        }
        c.handles[device] = h;   // kept for the process: one handle per device
    }
    *handle = c.handles[device];
    return CONVNET_OK;
}

// Caller holds c.mutex. Tries every candidate in turn: one that loads but lacks the entry
// points, or whose cublasCreate fails (a CUDA 12 cuBLAS under a CUDA 13 runtime, a broken
// install), is closed and the next one is tried.
convnet_status load_locked(Cublas& c) {
    if (c.library != nullptr) return CONVNET_OK;
    if (!c.tried) {
        c.tried = true;
        c.tried_paths.clear();
        int device = 0;
        if (cudaGetDevice(&device) != cudaSuccess) {
            cudaGetLastError();
            device = 0;
        }
        for (const std::string& candidate : cublas_candidates(c)) {
            void* lib = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
            if (lib == nullptr) {
                note_tried(c, candidate);
                continue;
            }
            c.create = reinterpret_cast<CublasCreate>(dlsym(lib, "cublasCreate_v2"));
            c.destroy = reinterpret_cast<CublasDestroy>(dlsym(lib, "cublasDestroy_v2"));
            c.set_stream = reinterpret_cast<CublasSetStream>(dlsym(lib, "cublasSetStream_v2"));
            c.set_math_mode =
                reinterpret_cast<CublasSetMathMode>(dlsym(lib, "cublasSetMathMode"));
            c.sgemm = reinterpret_cast<CublasSgemm>(dlsym(lib, "cublasSgemm_v2"));
            c.sgemm_strided_batched = reinterpret_cast<CublasSgemmStridedBatched>(
                dlsym(lib, "cublasSgemmStridedBatched"));
            if (c.create == nullptr || c.set_stream == nullptr || c.sgemm == nullptr) {
                note_tried(c, candidate + " (no cublasCreate_v2/cublasSgemm_v2)");
                dlclose(lib);
                continue;
            }
            void* h = nullptr;
            int status = c.create(&h);
            if (status != 0) {
                note_tried(c, candidate + " (cublasCreate failed with status " +
                                  std::to_string(status) + ")");
                dlclose(lib);
                continue;
            }
            c.library = lib;
            c.library_path = candidate;
            c.handles.assign(device + 1, nullptr);
            c.math_modes.assign(device + 1, kCublasDefaultMath);
            c.handles[device] = h;
            break;
        }
    }
    if (c.library == nullptr) {
        return set_error(CONVNET_ERR_CUBLAS_MISSING,
                         "cuBLAS is needed for Convolution/Deconvolution on the GPU but no "
                         "libcublas could be loaded (tried %s); %s, or put its folder on "
                         "LD_LIBRARY_PATH",
                         c.tried_paths.c_str(), cublas_install_hint());
    }
    return CONVNET_OK;
}

bool tf32_requested() {
    const char* mode = getenv("CONVNET_CUDA_TF32");
    return mode != nullptr && mode[0] != '\0' && strcmp(mode, "0") != 0;
}

// The current device's handle on `stream`, in the math mode asked for (caller holds lock).
convnet_status prepare(Cublas& cb, cudaStream_t stream, void** handle) {
    CONVNET_TRY(load_locked(cb));
    int device = 0;
    CONVNET_TRY(check_cuda(cudaGetDevice(&device), "cudaGetDevice"));
    CONVNET_TRY(handle_for(cb, device, handle));
    int status = cb.set_stream(*handle, stream);
    if (status != 0) {
        return set_error(CONVNET_ERR_CUBLAS, "cublasSetStream failed with cuBLAS status %d",
                         status);
    }
    // TF32 tensor cores only on request (CONVNET_CUDA_TF32=1): float32 results otherwise
    const int mode = tf32_requested() ? kCublasTf32Math : kCublasDefaultMath;
    if (cb.set_math_mode != nullptr && cb.math_modes[device] != mode) {
        status = cb.set_math_mode(*handle, mode);
        if (status != 0) {
            return set_error(CONVNET_ERR_CUBLAS, "cublasSetMathMode(%d) failed with cuBLAS "
                             "status %d", mode, status);
        }
        cb.math_modes[device] = mode;
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
    void* handle = nullptr;
    CONVNET_TRY(prepare(cb, stream, &handle));
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    int status = cb.sgemm(handle, trans_b ? kCublasOpT : kCublasOpN,
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
    return check_launch("cublasSgemm", stream);
}

convnet_status cublas_sgemm_strided_batched_row_major(
    int32_t trans_a, int32_t trans_b, int64_t m, int64_t n, int64_t k, float alpha,
    const float* a, int64_t lda, int64_t stride_a, const float* b, int64_t ldb,
    int64_t stride_b, float beta, float* c, int64_t ldc, int64_t stride_c, int64_t count,
    cudaStream_t stream) {
    if (count <= 0) return CONVNET_OK;
    {
        Cublas& cb = cublas();
        std::lock_guard<std::mutex> lock(cb.mutex);
        void* handle = nullptr;
        CONVNET_TRY(prepare(cb, stream, &handle));
        if (cb.sgemm_strided_batched != nullptr && count <= 2147483647LL) {
            int status = cb.sgemm_strided_batched(
                handle, trans_b ? kCublasOpT : kCublasOpN, trans_a ? kCublasOpT : kCublasOpN,
                static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, b,
                static_cast<int>(ldb), stride_b, a, static_cast<int>(lda), stride_a, &beta, c,
                static_cast<int>(ldc), stride_c, static_cast<int>(count));
            if (status != 0) {
                return set_error(CONVNET_ERR_CUBLAS,
                                 "cublasSgemmStridedBatched (m=%lld n=%lld k=%lld batch=%lld) "
                                 "failed with cuBLAS status %d",
                                 static_cast<long long>(m), static_cast<long long>(n),
                                 static_cast<long long>(k), static_cast<long long>(count),
                                 status);
            }
            return check_launch("cublasSgemmStridedBatched", stream);
        }
    }
    // a cuBLAS without the batched entry point: the same products one by one
    for (int64_t i = 0; i < count; ++i) {
        CONVNET_TRY(cublas_sgemm_row_major(trans_a, trans_b, m, n, k, alpha, a + i * stride_a,
                                           lda, b + i * stride_b, ldb, beta, c + i * stride_c,
                                           ldc, stream));
    }
    return CONVNET_OK;
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

namespace convnet {
namespace runtime_impl {

// Raise the release threshold of the current device's default pool once: memory freed to
// it stays cached for the process instead of going back to the driver at each sync.
convnet_status use_caching_pool() {
    static std::mutex mutex;
    static std::vector<bool> done;
    int device = 0;
    CONVNET_TRY(check_cuda(cudaGetDevice(&device), "cudaGetDevice"));
    std::lock_guard<std::mutex> lock(mutex);
    if (device >= 0 && static_cast<size_t>(device) < done.size() && done[device]) {
        return CONVNET_OK;
    }
    cudaMemPool_t pool;
    CONVNET_TRY(check_cuda(cudaDeviceGetDefaultMemPool(&pool, device),
                           "cudaDeviceGetDefaultMemPool"));
    uint64_t threshold = UINT64_MAX;
    CONVNET_TRY(check_cuda(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold,
                                                   &threshold),
                           "cudaMemPoolSetAttribute"));
    if (static_cast<size_t>(device) >= done.size()) done.resize(device + 1, false);
    done[device] = true;
    return CONVNET_OK;
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
    CONVNET_TRY(use_caching_pool());
    // stream-ordered from the device's pool: a freed block is reused by the next allocation
    // of the stream without cudaMalloc / cudaFree (which waits for the whole GPU)
    cudaError_t err = cudaMallocAsync(ptr, static_cast<size_t>(nbytes), nullptr);
    if (err != cudaSuccess) {
        *ptr = nullptr;
        cudaGetLastError();   // handled here: the next launch must not report it again
        return set_error(err == cudaErrorMemoryAllocation ? CONVNET_ERR_OUT_OF_MEMORY
                                                          : CONVNET_ERR_CUDA,
                         "cudaMallocAsync of %lld bytes: %s (%s)",
                         static_cast<long long>(nbytes), cudaGetErrorString(err),
                         cudaGetErrorName(err));
    }
    return CONVNET_OK;
}

CONVNET_API convnet_status convnet_free(void* ptr) {
    clear_error();
    if (ptr == nullptr) return CONVNET_OK;
    // back to the pool after the work queued so far: no device-wide wait
    return check_cuda(cudaFreeAsync(ptr, nullptr), "cudaFreeAsync");
}

static convnet_status copy(void* dst, const void* src, int64_t nbytes, cudaMemcpyKind kind,
                           void* stream, const char* name) {
    clear_error();
    CONVNET_REQUIRE(nbytes >= 0, name, "negative size");
    if (nbytes == 0) return CONVNET_OK;
    CONVNET_REQUIRE(dst != nullptr && src != nullptr, name, "NULL pointer");
    // from pageable host memory, cudaMemcpyAsync returns once the bytes are staged, so the
    // caller may release its buffer at once: an upload needs no wait
    CONVNET_TRY(check_cuda(
        cudaMemcpyAsync(dst, src, static_cast<size_t>(nbytes), kind, as_stream(stream)), name));
    if (kind == cudaMemcpyDeviceToHost) {
        // the host buffer is read right after the call returns
        return wait_for(as_stream(stream), name);
    }
    if (kind == cudaMemcpyHostToDevice) {
        // from page-locked memory (a pinned PyTorch tensor's NumPy view) the copy really is
        // asynchronous: wait, since the caller may change or free its buffer on return
        cudaPointerAttributes attributes;
        if (cudaPointerGetAttributes(&attributes, src) != cudaSuccess) {
            cudaGetLastError();
            return wait_for(as_stream(stream), name);
        }
        if (attributes.type != cudaMemoryTypeUnregistered) {
            return wait_for(as_stream(stream), name);
        }
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
    return wait_for(as_stream(stream), "cudaStreamSynchronize");
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

CONVNET_API convnet_status convnet_host_waits(int64_t* count) {
    clear_error();
    CONVNET_REQUIRE(count != nullptr, "convnet_host_waits", "count is NULL");
    *count = static_cast<int64_t>(g_waits.load());
    return CONVNET_OK;
}

CONVNET_API int convnet_is_host_build(void) {
#ifdef CONVNET_HOST_BUILD
    return 1;
#else
    return 0;
#endif
}

CONVNET_API convnet_status convnet_memory_in_use(int64_t* bytes) {
    clear_error();
    CONVNET_REQUIRE(bytes != nullptr, "convnet_memory_in_use", "bytes is NULL");
    *bytes = 0;
    int device = 0;
    CONVNET_TRY(check_cuda(cudaGetDevice(&device), "cudaGetDevice"));
    cudaMemPool_t pool;
    CONVNET_TRY(check_cuda(cudaDeviceGetDefaultMemPool(&pool, device),
                           "cudaDeviceGetDefaultMemPool"));
    uint64_t used = 0;
    CONVNET_TRY(check_cuda(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used),
                           "cudaMemPoolGetAttribute"));
    *bytes = static_cast<int64_t>(used);
    return CONVNET_OK;
}

}  // extern "C"
