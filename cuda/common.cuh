// Helpers shared by every .cu file: grid-stride loops with 64-bit indices, a launch helper
// that skips empty work and checks every launch, error reporting into the thread-local last
// error, and a deterministic (fixed-order) sum reduction.
#ifndef CONVNET_CUDA_COMMON_CUH
#define CONVNET_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <stdint.h>

#include "convnet_cuda.h"

namespace convnet {

constexpr int kThreads = 256;        // threads per block everywhere (a power of two)
constexpr int64_t kMaxBlocks = 65535;
constexpr int kReduceBlocks = 512;   // partial sums of a two-stage reduction

// Record the failure as this thread's last error (printf-style) and return status.
convnet_status set_error(convnet_status status, const char* format, ...);

// CONVNET_OK, or CONVNET_ERR_CUDA / CONVNET_ERR_OUT_OF_MEMORY naming what failed with CUDA's
// message.
convnet_status check_cuda(cudaError_t err, const char* what);

// Clear the last error on entry so that a message never outlives its call.
void clear_error();

// Wait for the stream (the only way the library waits for the device), counted for
// convnet_host_waits; CONVNET_OK or the failure, as check_cuda reports it.
convnet_status wait_for(cudaStream_t stream, const char* name);

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

inline int blocks_for(int64_t n) {
    int64_t blocks = (n + kThreads - 1) / kThreads;
    return static_cast<int>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

// The one place a kernel is launched: on the GPU with <<<grid, kThreads>>>, in the host build
// (cuda/host/cuda_runtime.h) as a loop over the grid's blocks, one thread per block.
#ifdef CONVNET_HOST_BUILD
#define CONVNET_LAUNCH(name, grid, stream, kernel, ...) \
    ::convnet_host::launch_kernel((name), (grid), kernel, __VA_ARGS__)
#else
#define CONVNET_LAUNCH(name, grid, stream, kernel, ...) \
    kernel<<<static_cast<unsigned>(grid), kThreads, 0, (stream)>>>(__VA_ARGS__)
#endif

// The launch's status (CUDA's last error, cleared), naming the kernel. With
// CONVNET_CUDA_SYNC=1 in the environment it also waits for the kernel and reports an
// asynchronous fault as this kernel's, not as whichever later call synchronises (debugging).
convnet_status check_launch(const char* name, cudaStream_t stream);

// Launch kernel over n work items (grid-stride loops inside); n <= 0 launches nothing.
template <typename Kernel, typename... Args>
convnet_status launch(const char* name, int64_t n, cudaStream_t stream, Kernel kernel,
                      Args... args) {
    if (n <= 0) return CONVNET_OK;
    CONVNET_LAUNCH(name, blocks_for(n), stream, kernel, args...);
    return check_launch(name, stream);
}

// Launch with an explicit grid (one block per channel, ...); empty grids launch nothing.
template <typename Kernel, typename... Args>
convnet_status launch_blocks(const char* name, int64_t blocks, cudaStream_t stream,
                             Kernel kernel, Args... args) {
    if (blocks <= 0) return CONVNET_OK;
    if (blocks > 2147483647LL) {
        return set_error(CONVNET_ERR_INVALID_ARGUMENT, "%s: %lld blocks exceed the grid limit",
                         name, static_cast<long long>(blocks));
    }
    CONVNET_LAUNCH(name, blocks, stream, kernel, args...);
    return check_launch(name, stream);
}

#define CONVNET_GRID_STRIDE(i, n)                                                     \
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;     \
         i < (n); i += static_cast<int64_t>(blockDim.x) * gridDim.x)

#define CONVNET_TRY(expr)                          \
    do {                                           \
        convnet_status status_ = (expr);           \
        if (status_ != CONVNET_OK) return status_; \
    } while (0)

#define CONVNET_REQUIRE(cond, name, message)                                       \
    do {                                                                           \
        if (!(cond)) {                                                             \
            return ::convnet::set_error(CONVNET_ERR_INVALID_ARGUMENT, "%s: %s",    \
                                        (name), (message));                        \
        }                                                                          \
    } while (0)

// Sum of v over the block in a fixed tree order (blockDim.x a power of two: kThreads on the
// GPU, 1 in the host build); thread 0 gets it.
__device__ inline double block_sum(double v) {
    __shared__ double buf[kThreads];
    buf[threadIdx.x] = v;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) buf[threadIdx.x] += buf[threadIdx.x + half];
        __syncthreads();
    }
    double total = buf[0];
    __syncthreads();   // buf may be reused by the caller's next block_sum
    return total;
}

template <typename Term>
__global__ void reduce_partials_kernel(Term term, int64_t n, double* partial) {
    double acc = 0.0;
    CONVNET_GRID_STRIDE(i, n) { acc += term(i); }
    double total = block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

static __global__ void reduce_final_kernel(const double* partial, int count, double* out) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
    double total = block_sum(acc);
    if (threadIdx.x == 0) *out = total;
}

// device OUT *out = sum over i < n of term(i) (a __device__ functor returning double), in an
// order fixed by n alone: deterministic run to run. Asynchronous (queued on stream).
template <typename Term>
convnet_status reduce_sum_to_device(const char* name, Term term, int64_t n, double* out,
                                    cudaStream_t stream);

// host OUT result = the same sum. Synchronous (one copy back, one wait).
template <typename Term>
convnet_status reduce_sum(const char* name, Term term, int64_t n, double* result,
                          cudaStream_t stream);

// Device scratch memory freed in stream order when the guard goes out of scope.
class Scratch {
   public:
    explicit Scratch(cudaStream_t stream) : stream_(stream) {}
    ~Scratch() {
        if (ptr_ != nullptr) cudaFreeAsync(ptr_, stream_);
    }
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    convnet_status allocate(int64_t nbytes, const char* name) {
        if (nbytes <= 0) return CONVNET_OK;
        return check_cuda(cudaMallocAsync(&ptr_, static_cast<size_t>(nbytes), stream_), name);
    }
    template <typename T>
    T* as() const { return static_cast<T*>(ptr_); }

   private:
    cudaStream_t stream_;
    void* ptr_ = nullptr;
};

// The smallest flat position of a bad value, reported through a device flag: kNoBad until a
// kernel lowers it with atomicMin (the minimum does not depend on thread order).
constexpr unsigned long long kNoBad = 0xFFFFFFFFFFFFFFFFull;

__device__ inline void report_bad(unsigned long long* flag, int64_t position) {
    atomicMin(flag, static_cast<unsigned long long>(position));
}

// A device flag for report_bad: allocate + set (in stream order), then read() it (synchronous).
class BadFlag {
   public:
    explicit BadFlag(cudaStream_t stream) : scratch_(stream), stream_(stream) {}
    convnet_status init(const char* name) {
        CONVNET_TRY(scratch_.allocate(sizeof(unsigned long long), name));
        return check_cuda(cudaMemsetAsync(scratch_.as<void>(), 0xFF,
                                          sizeof(unsigned long long), stream_), name);
    }
    unsigned long long* device() const { return scratch_.as<unsigned long long>(); }
    // host OUT position: the smallest reported position, or -1.
    convnet_status read(int64_t* position, const char* name) {
        unsigned long long value = kNoBad;
        CONVNET_TRY(check_cuda(cudaMemcpyAsync(&value, device(), sizeof(value),
                                               cudaMemcpyDeviceToHost, stream_), name));
        CONVNET_TRY(wait_for(stream_, name));
        *position = value == kNoBad ? -1 : static_cast<int64_t>(value);
        return CONVNET_OK;
    }

   private:
    Scratch scratch_;
    cudaStream_t stream_;
};

template <typename Term>
convnet_status reduce_sum_to_device(const char* name, Term term, int64_t n, double* out,
                                    cudaStream_t stream) {
    if (n <= 0) return check_cuda(cudaMemsetAsync(out, 0, sizeof(double), stream), name);
    const int64_t wanted = (n + kThreads - 1) / kThreads;
    const int blocks = static_cast<int>(wanted < kReduceBlocks ? wanted : kReduceBlocks);
    Scratch partial(stream);
    CONVNET_TRY(partial.allocate(blocks * static_cast<int64_t>(sizeof(double)), name));
    CONVNET_LAUNCH(name, blocks, stream, reduce_partials_kernel<Term>, term, n,
                   partial.as<double>());
    CONVNET_TRY(check_launch(name, stream));
    CONVNET_LAUNCH(name, 1, stream, reduce_final_kernel,
                   static_cast<const double*>(partial.as<double>()), blocks, out);
    return check_launch(name, stream);
}

template <typename Term>
convnet_status reduce_sum(const char* name, Term term, int64_t n, double* result,
                          cudaStream_t stream) {
    *result = 0.0;
    if (n <= 0) return CONVNET_OK;
    Scratch out(stream);
    CONVNET_TRY(out.allocate(sizeof(double), name));
    CONVNET_TRY(reduce_sum_to_device(name, term, n, out.as<double>(), stream));
    CONVNET_TRY(check_cuda(cudaMemcpyAsync(result, out.as<double>(), sizeof(double),
                                           cudaMemcpyDeviceToHost, stream), name));
    return wait_for(stream, name);
}

// ----------------------------------------------------------------- per-channel reductions
// Sums over the (N, S) values of each channel c of an (N, C, S) array, K sums at a time:
// term(c, j, acc) adds the value(s) at j = n*S + s into acc[0..K). The grid is channels x
// parts blocks (flattened): each block sums one contiguous slice of j in a fixed tree order,
// then one thread per channel adds that channel's parts in order and hands the totals to
// finish(c, totals). The partition depends on the shape alone: deterministic run to run,
// and enough blocks to fill the GPU even with few channels.

constexpr int64_t kChannelBlocks = 2048;   // about 16 blocks per SM on a 132-SM H200

inline int64_t channel_parts(int64_t channels, int64_t count) {
    if (channels <= 0) return 1;
    int64_t want = (kChannelBlocks + channels - 1) / channels;
    const int64_t most = (count + kThreads - 1) / kThreads;
    if (want > most) want = most;
    return want < 1 ? 1 : want;
}

template <int K, typename Term>
__global__ void channel_partials_kernel(Term term, int64_t count, int64_t parts,
                                        double* partial) {
    const int64_t c = blockIdx.x / parts;
    const int64_t part = blockIdx.x - c * parts;
    const int64_t per = (count + parts - 1) / parts;
    const int64_t begin = part * per;
    const int64_t end = begin + per < count ? begin + per : count;
    double acc[K];
    for (int k = 0; k < K; ++k) acc[k] = 0.0;
    for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) term(c, j, acc);
    for (int k = 0; k < K; ++k) {
        const double total = block_sum(acc[k]);
        if (threadIdx.x == 0) partial[(c * parts + part) * K + k] = total;
    }
}

template <int K, typename Finish>
__global__ void channel_finish_kernel(const double* partial, int64_t channels, int64_t parts,
                                      Finish finish) {
    CONVNET_GRID_STRIDE(c, channels) {
        double total[K];
        for (int k = 0; k < K; ++k) total[k] = 0.0;
        for (int64_t p = 0; p < parts; ++p) {
            for (int k = 0; k < K; ++k) total[k] += partial[(c * parts + p) * K + k];
        }
        finish(c, total);
    }
}

template <int K, typename Term, typename Finish>
convnet_status channel_sums(const char* name, Term term, Finish finish, int64_t channels,
                            int64_t count, cudaStream_t stream) {
    if (channels <= 0) return CONVNET_OK;
    const int64_t parts = channel_parts(channels, count);
    Scratch partial(stream);
    CONVNET_TRY(partial.allocate(channels * parts * K * static_cast<int64_t>(sizeof(double)),
                                 name));
    CONVNET_TRY(launch_blocks(name, channels * parts, stream, channel_partials_kernel<K, Term>,
                              term, count, parts, partial.as<double>()));
    return launch(name, channels, stream, channel_finish_kernel<K, Finish>,
                  static_cast<const double*>(partial.as<double>()), channels, parts, finish);
}

// The value of channel c at j = n*S + s of an (N, C, S) array.
__device__ inline float channel_at(const float* a, int64_t j, int64_t c, int64_t channels,
                                   int64_t spatial) {
    const int64_t n = j / spatial;
    return a[(n * channels + c) * spatial + (j - n * spatial)];
}

// Mask / label values of any convnet_dtype, read as double (exact for int32 and for the int64
// range a plane index can take) or as int64.
__device__ inline double load_as_double(const void* p, int32_t type, int64_t i) {
    switch (type) {
        case CONVNET_INT32: return static_cast<double>(static_cast<const int32_t*>(p)[i]);
        case CONVNET_INT64: return static_cast<double>(static_cast<const int64_t*>(p)[i]);
        case CONVNET_FLOAT32: return static_cast<double>(static_cast<const float*>(p)[i]);
        default: return static_cast<const double*>(p)[i];
    }
}

// The value as an index in [0, size), or -1 when it is negative, too large, NaN or (for
// floats) not an integer.
__device__ inline int64_t load_index(const void* p, int32_t type, int64_t i, int64_t size) {
    if (type == CONVNET_INT32) {
        int64_t v = static_cast<const int32_t*>(p)[i];
        return (v >= 0 && v < size) ? v : -1;
    }
    if (type == CONVNET_INT64) {
        int64_t v = static_cast<const int64_t*>(p)[i];
        return (v >= 0 && v < size) ? v : -1;
    }
    double v = load_as_double(p, type, i);
    if (!(v >= 0.0 && v < static_cast<double>(size))) return -1;
    int64_t k = static_cast<int64_t>(v);
    return static_cast<double>(k) == v ? k : -1;
}

// cuBLAS, resolved with dlsym (runtime.cu): no cuBLAS header or library at build time. The
// handle is a pointer and the status an int, as in cublas_api.h; 0 is CUBLAS_STATUS_SUCCESS.
constexpr int kCublasOpN = 0;
constexpr int kCublasOpT = 1;
typedef int (*CublasCreate)(void** handle);
typedef int (*CublasSetStream)(void* handle, cudaStream_t stream);
typedef int (*CublasDestroy)(void* handle);
typedef int (*CublasSetMathMode)(void* handle, int mode);
typedef int (*CublasSgemm)(void* handle, int transa, int transb, int m, int n, int k,
                           const float* alpha, const float* a, int lda, const float* b, int ldb,
                           const float* beta, float* c, int ldc);
typedef int (*CublasSgemmStridedBatched)(void* handle, int transa, int transb, int m, int n,
                                         int k, const float* alpha, const float* a, int lda,
                                         long long stride_a, const float* b, int ldb,
                                         long long stride_b, const float* beta, float* c,
                                         int ldc, long long stride_c, int batch);

// Row-major C (m, n) = alpha op(A) op(B) + beta C through cuBLAS, loading it on first use;
// the caller checked that every size fits an int.
convnet_status cublas_sgemm_row_major(int32_t trans_a, int32_t trans_b, int64_t m, int64_t n,
                                      int64_t k, float alpha, const float* a, int64_t lda,
                                      const float* b, int64_t ldb, float beta, float* c,
                                      int64_t ldc, cudaStream_t stream);

// count products C_i = alpha op(A_i) op(B_i) + beta C_i with X_i = X + i * stride_x (row-major
// as above), in one cublasSgemmStridedBatched call.
convnet_status cublas_sgemm_strided_batched_row_major(
    int32_t trans_a, int32_t trans_b, int64_t m, int64_t n, int64_t k, float alpha,
    const float* a, int64_t lda, int64_t stride_a, const float* b, int64_t ldb,
    int64_t stride_b, float beta, float* c, int64_t ldc, int64_t stride_c, int64_t count,
    cudaStream_t stream);

inline bool valid_dtype(int32_t type) { return type >= CONVNET_INT32 && type <= CONVNET_FLOAT64; }

}  // namespace convnet

#endif  // CONVNET_CUDA_COMMON_CUH
