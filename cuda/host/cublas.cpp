// libconvnet_cublas_host.so: the host build's cuBLAS, the few cuBLAS v2 entry points that
// cuda/runtime.cu resolves with dlsym, computed on the CPU (column-major, as cuBLAS).
// libconvnet_cuda_host.so loads it exactly as the GPU build loads libcublas, so the loader's
// search, fallback and per-device handles run in CI too.
//
// Test hooks: CONVNET_HOST_CUBLAS_CREATE_FAILS=text makes cublasCreate_v2 fail (status 1,
// CUBLAS_STATUS_NOT_INITIALIZED) in a copy of this library whose path contains `text`;
// convnet_host_cublas_live_handles() counts handles created and not destroyed.
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>

namespace {

constexpr int kSuccess = 0;
constexpr int kNotInitialized = 1;
constexpr int kInvalidValue = 7;

struct Handle {
    void* stream = nullptr;
    int math_mode = 0;
};

std::atomic<int> g_live_handles{0};

bool create_should_fail() {
    const char* text = getenv("CONVNET_HOST_CUBLAS_CREATE_FAILS");
    if (text == nullptr || *text == '\0') return false;
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&create_should_fail), &info) == 0 ||
        info.dli_fname == nullptr) {
        return false;
    }
    return strstr(info.dli_fname, text) != nullptr;
}

// Column-major C (m, n) = alpha op(A) op(B) + beta C; beta == 0 never reads C (BLAS rule).
void sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
           int lda, const float* b, int ldb, float beta, float* c, int ldc) {
    for (int j = 0; j < n; ++j) {
        float* cj = c + static_cast<long long>(j) * ldc;
        for (int i = 0; i < m; ++i) cj[i] = beta == 0.0f ? 0.0f : beta * cj[i];
        if (alpha == 0.0f || k == 0) continue;
        if (!trans_a) {
            // C[:, j] += alpha * A[:, l] * op(B)[l, j]: unit-stride inner loop
            for (int l = 0; l < k; ++l) {
                const float blj = trans_b ? b[j + static_cast<long long>(l) * ldb]
                                          : b[l + static_cast<long long>(j) * ldb];
                const float s = alpha * blj;
                const float* al = a + static_cast<long long>(l) * lda;
                for (int i = 0; i < m; ++i) cj[i] += s * al[i];
            }
        } else {
            // C[i, j] += alpha * dot(A[:, i], op(B)[:, j])
            for (int i = 0; i < m; ++i) {
                const float* ai = a + static_cast<long long>(i) * lda;
                float acc = 0.0f;
                for (int l = 0; l < k; ++l) {
                    const float blj = trans_b ? b[j + static_cast<long long>(l) * ldb]
                                              : b[l + static_cast<long long>(j) * ldb];
                    acc += ai[l] * blj;
                }
                cj[i] += alpha * acc;
            }
        }
    }
}

bool bad_sizes(int m, int n, int k, int lda, int ldb, int ldc) {
    return m < 0 || n < 0 || k < 0 || lda < 1 || ldb < 1 || ldc < 1 || ldc < m;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int cublasCreate_v2(void** handle) {
    if (handle == nullptr) return kInvalidValue;
    if (create_should_fail()) return kNotInitialized;
    *handle = new Handle();
    ++g_live_handles;
    return kSuccess;
}

__attribute__((visibility("default"))) int cublasDestroy_v2(void* handle) {
    if (handle == nullptr) return kNotInitialized;
    delete static_cast<Handle*>(handle);
    --g_live_handles;
    return kSuccess;
}

__attribute__((visibility("default"))) int cublasSetStream_v2(void* handle, void* stream) {
    if (handle == nullptr) return kNotInitialized;
    static_cast<Handle*>(handle)->stream = stream;
    return kSuccess;
}

__attribute__((visibility("default"))) int cublasSetMathMode(void* handle, int mode) {
    if (handle == nullptr) return kNotInitialized;
    static_cast<Handle*>(handle)->math_mode = mode;
    return kSuccess;
}

__attribute__((visibility("default"))) int cublasSgemm_v2(
    void* handle, int transa, int transb, int m, int n, int k, const float* alpha,
    const float* a, int lda, const float* b, int ldb, const float* beta, float* c, int ldc) {
    if (handle == nullptr) return kNotInitialized;
    if (bad_sizes(m, n, k, lda, ldb, ldc)) return kInvalidValue;
    sgemm(transa, transb, m, n, k, *alpha, a, lda, b, ldb, *beta, c, ldc);
    return kSuccess;
}

__attribute__((visibility("default"))) int cublasSgemmStridedBatched(
    void* handle, int transa, int transb, int m, int n, int k, const float* alpha,
    const float* a, int lda, long long stride_a, const float* b, int ldb, long long stride_b,
    const float* beta, float* c, int ldc, long long stride_c, int batch) {
    if (handle == nullptr) return kNotInitialized;
    if (bad_sizes(m, n, k, lda, ldb, ldc) || batch < 0) return kInvalidValue;
    for (int i = 0; i < batch; ++i) {
        sgemm(transa, transb, m, n, k, *alpha, a + i * stride_a, lda, b + i * stride_b, ldb,
              *beta, c + i * stride_c, ldc);
    }
    return kSuccess;
}

__attribute__((visibility("default"))) int convnet_host_cublas_live_handles(void) {
    return g_live_handles.load();
}

}  // extern "C"
