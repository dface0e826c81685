// The host shim: lets the same cuda/*.cu sources build with a C++ compiler into
// libconvnet_cuda_host.so, so that CI runs the kernels' own source without a GPU.
//
// Compiled with -x c++ -DCONVNET_HOST_BUILD -I cuda/host (this file then stands in for the
// toolkit's <cuda_runtime.h>). It maps:
//  - __global__ / __device__ / __shared__ to plain C++ (shared memory becomes a local array),
//    blockIdx / threadIdx / blockDim / gridDim to thread-local variables;
//  - a launch (CONVNET_LAUNCH in common.cuh) to a loop over the grid's blocks, each block run
//    by ONE thread (blockDim.x == 1), so every grid-stride loop and block reduction is run as
//    written, only narrower; __syncthreads() is then a no-op;
//  - atomics to their sequential meaning;
//  - device memory to host memory (malloc) with a byte budget, streams to in-order execution,
//    and the runtime's error model: a failing call sets the per-thread last error that
//    cudaGetLastError() returns and clears, as CUDA does.
// cuBLAS stays a library located at run time (dlopen), as on a GPU: the host build loads
// libconvnet_cublas_host.so (cuda/host/cublas.cpp), a small CPU sgemm.
//
// Test hooks, read from the environment at each use (the GPU build has none of them):
//   CONVNET_HOST_DEVICE_MEMORY=bytes   device memory size: a larger total is out of memory
//   CONVNET_HOST_DEVICE_COUNT=n        number of devices (default 1)
//   CONVNET_HOST_CURRENT_DEVICE=d      cudaGetDevice reports d (another library switched it)
//   CONVNET_HOST_FAULT_KERNEL=name     a launch of the kernel `name` does not run and leaves
//                                      an asynchronous cudaErrorIllegalAddress that the next
//                                      synchronising call reports, as a faulting kernel would
#ifndef CONVNET_HOST_CUDA_RUNTIME_H
#define CONVNET_HOST_CUDA_RUNTIME_H

#ifndef CONVNET_HOST_BUILD
#error "cuda/host/cuda_runtime.h is the host shim; the GPU build uses the toolkit's header"
#endif

#include <math.h>   // the toolkit's cuda_runtime.h brings the math functions (expf, tanhf, ...)
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <map>
#include <mutex>

#define CUDART_VERSION 13000

#define __global__
#define __device__
#define __host__
#define __shared__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};

inline thread_local uint3 blockIdx = {0, 0, 0};
inline thread_local uint3 threadIdx = {0, 0, 0};
inline thread_local dim3 blockDim = {1, 1, 1};
inline thread_local dim3 gridDim = {1, 1, 1};

inline void __syncthreads() {}

template <typename T>
inline T min(T a, T b) { return b < a ? b : a; }
template <typename T>
inline T max(T a, T b) { return a < b ? b : a; }

inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
    unsigned long long old = *p;
    if (v < old) *p = v;
    return old;
}
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
    unsigned long long old = *p;
    if (v > old) *p = v;
    return old;
}
inline float atomicAdd(float* p, float v) {
    float old = *p;
    *p = old + v;
    return old;
}
inline double atomicAdd(double* p, double v) {
    double old = *p;
    *p = old + v;
    return old;
}

// ------------------------------------------------------------------------ errors

enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorIllegalAddress = 700,
};
typedef cudaError_t cudaError;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

struct CUstream_st;
typedef CUstream_st* cudaStream_t;
struct CUmemPoolHandle_st;
typedef CUmemPoolHandle_st* cudaMemPool_t;
enum cudaMemPoolAttr {
    cudaMemPoolAttrReleaseThreshold = 4,
    cudaMemPoolAttrUsedMemCurrent = 7,
};

inline const char* cudaGetErrorString(cudaError_t err) {
    switch (err) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorInvalidDevice: return "invalid device ordinal";
        case cudaErrorInvalidDevicePointer: return "invalid device pointer";
        case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    }
    return "unrecognized error code";
}

inline const char* cudaGetErrorName(cudaError_t err) {
    switch (err) {
        case cudaSuccess: return "cudaSuccess";
        case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
        case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
        case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
        case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
        case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    }
    return "cudaErrorUnknown";
}

namespace convnet_host {

inline thread_local cudaError_t last_error = cudaSuccess;   // cudaGetLastError's
inline thread_local int current_device = 0;

struct Device {
    std::mutex mutex;
    std::map<void*, size_t> blocks;   // live allocations
    size_t in_use = 0;
    cudaError_t pending = cudaSuccess;   // an asynchronous fault not yet reported
};

inline Device& device() {
    static Device d;
    return d;
}

inline long long env_number(const char* name, long long fallback) {
    const char* text = getenv(name);
    if (text == nullptr || *text == '\0') return fallback;
    return strtoll(text, nullptr, 10);
}

inline cudaError_t fail(cudaError_t err) {
    last_error = err;
    return err;
}

// A synchronising call reports (and, on the host, clears) a pending asynchronous fault.
inline cudaError_t take_pending() {
    Device& d = device();
    std::lock_guard<std::mutex> lock(d.mutex);
    cudaError_t err = d.pending;
    d.pending = cudaSuccess;
    return err == cudaSuccess ? cudaSuccess : fail(err);
}

inline bool should_fault(const char* name) {
    const char* target = getenv("CONVNET_HOST_FAULT_KERNEL");
    return target != nullptr && name != nullptr && strcmp(target, name) == 0;
}

// Run kernel(args...) over a grid of `grid` blocks, one thread each.
template <typename Kernel, typename... Args>
void launch_kernel(const char* name, int64_t grid, Kernel kernel, Args... args) {
    if (should_fault(name)) {
        Device& d = device();
        std::lock_guard<std::mutex> lock(d.mutex);
        d.pending = cudaErrorIllegalAddress;
        return;
    }
    gridDim = dim3{static_cast<unsigned int>(grid), 1, 1};
    blockDim = dim3{1, 1, 1};
    threadIdx = uint3{0, 0, 0};
    for (int64_t b = 0; b < grid; ++b) {
        blockIdx = uint3{static_cast<unsigned int>(b), 0, 0};
        kernel(args...);
    }
    blockIdx = uint3{0, 0, 0};
}

inline bool is_device_pointer(const void* p) {
    Device& d = device();
    std::lock_guard<std::mutex> lock(d.mutex);
    auto it = d.blocks.upper_bound(const_cast<void*>(p));
    if (it == d.blocks.begin()) return false;
    --it;
    const char* base = static_cast<const char*>(it->first);
    return static_cast<const char*>(p) < base + it->second;
}

}  // namespace convnet_host

inline cudaError_t cudaGetLastError() {
    cudaError_t err = convnet_host::last_error;
    convnet_host::last_error = cudaSuccess;
    return err;
}

inline cudaError_t cudaPeekAtLastError() { return convnet_host::last_error; }

// ------------------------------------------------------------------------ devices

inline cudaError_t cudaGetDeviceCount(int* count) {
    *count = static_cast<int>(convnet_host::env_number("CONVNET_HOST_DEVICE_COUNT", 1));
    return cudaSuccess;
}

inline cudaError_t cudaGetDevice(int* device) {
    *device = static_cast<int>(convnet_host::env_number("CONVNET_HOST_CURRENT_DEVICE",
                                                        convnet_host::current_device));
    return cudaSuccess;
}

inline cudaError_t cudaSetDevice(int device) {
    int count = 0;
    cudaGetDeviceCount(&count);
    if (device < 0 || device >= count) return convnet_host::fail(cudaErrorInvalidDevice);
    convnet_host::current_device = device;
    return cudaSuccess;
}

inline cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int device) {
    int count = 0;
    cudaGetDeviceCount(&count);
    if (device < 0 || device >= count) return convnet_host::fail(cudaErrorInvalidDevice);
    *pool = reinterpret_cast<cudaMemPool_t>(static_cast<intptr_t>(device + 1));
    return cudaSuccess;
}

inline cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, cudaMemPoolAttr, void*) {
    return cudaSuccess;
}

// ------------------------------------------------------------------------ memory

enum cudaMemoryType {
    cudaMemoryTypeUnregistered = 0,
    cudaMemoryTypeHost = 1,
    cudaMemoryTypeDevice = 2,
    cudaMemoryTypeManaged = 3,
};

struct cudaPointerAttributes {
    cudaMemoryType type;
    int device;
    void* devicePointer;
    void* hostPointer;
};

inline cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attributes, const void* p) {
    const bool device = convnet_host::is_device_pointer(p);
    attributes->type = device ? cudaMemoryTypeDevice : cudaMemoryTypeUnregistered;
    attributes->device = 0;
    attributes->devicePointer = device ? const_cast<void*>(p) : nullptr;
    attributes->hostPointer = device ? nullptr : const_cast<void*>(p);
    return cudaSuccess;
}

inline cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t, cudaMemPoolAttr attr, void* value) {
    if (attr != cudaMemPoolAttrUsedMemCurrent) return convnet_host::fail(cudaErrorInvalidValue);
    convnet_host::Device& d = convnet_host::device();
    std::lock_guard<std::mutex> lock(d.mutex);
    *static_cast<uint64_t*>(value) = d.in_use;
    return cudaSuccess;
}

inline cudaError_t cudaMalloc(void** ptr, size_t nbytes) {
    using namespace convnet_host;
    *ptr = nullptr;
    Device& d = device();
    std::lock_guard<std::mutex> lock(d.mutex);
    long long budget = env_number("CONVNET_HOST_DEVICE_MEMORY", -1);
    if (budget >= 0 && d.in_use + nbytes > static_cast<size_t>(budget)) {
        return fail(cudaErrorMemoryAllocation);
    }
    void* p = malloc(nbytes == 0 ? 1 : nbytes);
    if (p == nullptr) return fail(cudaErrorMemoryAllocation);
    d.blocks[p] = nbytes;
    d.in_use += nbytes;
    *ptr = p;
    return cudaSuccess;
}

inline cudaError_t cudaFree(void* ptr) {
    using namespace convnet_host;
    if (ptr == nullptr) return cudaSuccess;
    Device& d = device();
    std::lock_guard<std::mutex> lock(d.mutex);
    auto it = d.blocks.find(ptr);
    if (it == d.blocks.end()) return fail(cudaErrorInvalidDevicePointer);
    d.in_use -= it->second;
    d.blocks.erase(it);
    free(ptr);
    return cudaSuccess;
}

inline cudaError_t cudaMallocAsync(void** ptr, size_t nbytes, cudaStream_t) {
    return cudaMalloc(ptr, nbytes);
}

inline cudaError_t cudaFreeAsync(void* ptr, cudaStream_t) { return cudaFree(ptr); }

inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t nbytes, cudaMemcpyKind kind,
                                   cudaStream_t = nullptr) {
    using namespace convnet_host;
    const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    // a pointer that is not device memory is a CUDA error, never a host crash
    if (nbytes > 0 && ((src_dev && !is_device_pointer(src)) ||
                       (dst_dev && !is_device_pointer(dst)))) {
        return fail(cudaErrorInvalidValue);
    }
    if (nbytes > 0) memmove(dst, src, nbytes);
    return cudaSuccess;
}

inline cudaError_t cudaMemsetAsync(void* dst, int value, size_t nbytes, cudaStream_t = nullptr) {
    using namespace convnet_host;
    if (nbytes > 0 && !is_device_pointer(dst)) return fail(cudaErrorInvalidValue);
    if (nbytes > 0) memset(dst, value, nbytes);
    return cudaSuccess;
}

inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return convnet_host::take_pending(); }

inline cudaError_t cudaDeviceSynchronize() { return convnet_host::take_pending(); }

#endif  // CONVNET_HOST_CUDA_RUNTIME_H
