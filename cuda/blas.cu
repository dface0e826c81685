// The GPU's BLAS door (like pyx/_blas): GEMM through cuBLAS (loaded at run time) and the
// level-1 element-wise operations the layers and solvers share.
#include "common.cuh"

using namespace convnet;

namespace convnet {
namespace blas_impl {

__global__ void axpby_kernel(int64_t n, float alpha, const float* x, float beta, float* y) {
    CONVNET_GRID_STRIDE(i, n) { y[i] = alpha * x[i] + beta * y[i]; }
}

__global__ void axpy0_kernel(int64_t n, float alpha, const float* x, float* y) {
    CONVNET_GRID_STRIDE(i, n) { y[i] = alpha * x[i]; }
}

__global__ void scale_kernel(int64_t n, float alpha, float* x) {
    CONVNET_GRID_STRIDE(i, n) { x[i] *= alpha; }
}

__global__ void sub_kernel(int64_t n, const float* a, const float* b, float* out) {
    CONVNET_GRID_STRIDE(i, n) { out[i] = a[i] - b[i]; }
}

__global__ void mul_kernel(int64_t n, const float* a, const float* b, float* out) {
    CONVNET_GRID_STRIDE(i, n) { out[i] = a[i] * b[i]; }
}

struct DotTerm {
    const float* a;
    const float* b;
    __device__ double operator()(int64_t i) const {
        return static_cast<double>(a[i]) * static_cast<double>(b[i]);
    }
};

bool fits_int(int64_t v) { return v >= 0 && v <= 2147483647LL; }

}  // namespace blas_impl
}  // namespace convnet

using namespace convnet::blas_impl;

extern "C" {

CONVNET_API convnet_status convnet_gemm(int32_t trans_a, int32_t trans_b, int64_t m, int64_t n,
                                        int64_t k, float alpha, const float* a, int64_t lda,
                                        const float* b, int64_t ldb, float beta, float* c,
                                        int64_t ldc, void* stream) {
    clear_error();
    const char* name = "convnet_gemm";
    CONVNET_REQUIRE(fits_int(m) && fits_int(n) && fits_int(k) && fits_int(lda) &&
                        fits_int(ldb) && fits_int(ldc),
                    name, "a size or leading dimension is negative or does not fit 32 bits");
    if (m == 0 || n == 0) return CONVNET_OK;
    CONVNET_REQUIRE(a != nullptr && b != nullptr && c != nullptr, name, "NULL matrix");
    return cublas_sgemm_row_major(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c,
                                  ldc, as_stream(stream));
}

CONVNET_API convnet_status convnet_axpby(int64_t n, float alpha, const float* x, float beta,
                                         float* y, void* stream) {
    clear_error();
    CONVNET_REQUIRE(n >= 0, "convnet_axpby", "negative size");
    if (beta == 0.0f) {
        return launch("convnet_axpby", n, as_stream(stream), axpy0_kernel, n, alpha, x, y);
    }
    return launch("convnet_axpby", n, as_stream(stream), axpby_kernel, n, alpha, x, beta, y);
}

CONVNET_API convnet_status convnet_scale(int64_t n, float alpha, float* x, void* stream) {
    clear_error();
    CONVNET_REQUIRE(n >= 0, "convnet_scale", "negative size");
    return launch("convnet_scale", n, as_stream(stream), scale_kernel, n, alpha, x);
}

CONVNET_API convnet_status convnet_sub(int64_t n, const float* a, const float* b, float* out,
                                       void* stream) {
    clear_error();
    CONVNET_REQUIRE(n >= 0, "convnet_sub", "negative size");
    return launch("convnet_sub", n, as_stream(stream), sub_kernel, n, a, b, out);
}

CONVNET_API convnet_status convnet_mul(int64_t n, const float* a, const float* b, float* out,
                                       void* stream) {
    clear_error();
    CONVNET_REQUIRE(n >= 0, "convnet_mul", "negative size");
    return launch("convnet_mul", n, as_stream(stream), mul_kernel, n, a, b, out);
}

CONVNET_API convnet_status convnet_dot(int64_t n, const float* a, const float* b,
                                       double* result, void* stream) {
    clear_error();
    CONVNET_REQUIRE(n >= 0, "convnet_dot", "negative size");
    CONVNET_REQUIRE(result != nullptr, "convnet_dot", "result is NULL");
    return reduce_sum("convnet_dot", DotTerm{a, b}, n, result, as_stream(stream));
}

}  // extern "C"
