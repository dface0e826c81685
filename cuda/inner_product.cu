// InnerProduct's bias (add and gradient) and Embed's lookup: the gemms themselves go through
// convnet_gemm (cuBLAS). Gradients are gathers or per-thread column sums: deterministic, no
// float atomics.
#include "common.cuh"

using namespace convnet;

namespace convnet {
namespace inner_product_impl {

__global__ void bias_add_kernel(float* y, const float* bias, int64_t rows, int64_t cols) {
    CONVNET_GRID_STRIDE(i, rows * cols) { y[i] += bias[i % cols]; }
}

// one thread per column: the rows are summed in order
__global__ void bias_grad_kernel(const float* dy, float* dbias, int64_t rows, int64_t cols) {
    CONVNET_GRID_STRIDE(j, cols) {
        double acc = 0.0;
        for (int64_t r = 0; r < rows; ++r) acc += dy[r * cols + j];
        dbias[j] += static_cast<float>(acc);
    }
}

__global__ void embed_forward_kernel(const void* index, int32_t type, const float* weight,
                                     const float* bias, float* y, int64_t n, int64_t rows,
                                     int64_t dim, unsigned long long* bad) {
    CONVNET_GRID_STRIDE(i, n * dim) {
        const int64_t p = i / dim, j = i % dim;
        const int64_t row = load_index(index, type, p, rows);
        if (row < 0) {
            report_bad(bad, p);
            continue;
        }
        y[i] = weight[row * dim + j] + (bias != nullptr ? bias[j] : 0.0f);
    }
}

// one thread per column j walks every position in order: each dweight element has one
// writer, and the sum order is fixed
__global__ void embed_backward_kernel(const void* index, int32_t type, const float* dy,
                                      float* dweight, int64_t n, int64_t rows, int64_t dim) {
    CONVNET_GRID_STRIDE(j, dim) {
        for (int64_t p = 0; p < n; ++p) {
            const int64_t row = load_index(index, type, p, rows);
            if (row >= 0) dweight[row * dim + j] += dy[p * dim + j];
        }
    }
}

}  // namespace inner_product_impl
}  // namespace convnet

using namespace convnet::inner_product_impl;

extern "C" {

CONVNET_API convnet_status convnet_bias_add(float* y, const float* bias, int64_t rows,
                                            int64_t cols, void* stream) {
    clear_error();
    CONVNET_REQUIRE(rows >= 0 && cols >= 0, "convnet_bias_add", "negative size");
    return launch("bias_add", rows * cols, as_stream(stream), bias_add_kernel, y, bias, rows,
                  cols);
}

CONVNET_API convnet_status convnet_bias_grad(const float* dy, float* dbias, int64_t rows,
                                             int64_t cols, void* stream) {
    clear_error();
    CONVNET_REQUIRE(rows >= 0 && cols >= 0, "convnet_bias_grad", "negative size");
    return launch("bias_grad", cols, as_stream(stream), bias_grad_kernel, dy, dbias, rows,
                  cols);
}

CONVNET_API convnet_status convnet_embed_forward(const void* index, int32_t index_type,
                                                 const float* weight, const float* bias,
                                                 float* y, int64_t n, int64_t rows,
                                                 int64_t dim, int64_t* bad_position,
                                                 void* stream) {
    clear_error();
    const char* name = "convnet_embed_forward";
    CONVNET_REQUIRE(bad_position != nullptr, name, "bad_position is NULL");
    *bad_position = -1;
    CONVNET_REQUIRE(n >= 0 && rows >= 0 && dim >= 0, name, "negative size");
    CONVNET_REQUIRE(valid_dtype(index_type), name, "unknown index_type");
    if (n * dim == 0) return CONVNET_OK;
    cudaStream_t s = as_stream(stream);
    BadFlag bad(s);
    CONVNET_TRY(bad.init(name));
    CONVNET_TRY(launch(name, n * dim, s, embed_forward_kernel, index, index_type, weight, bias,
                       y, n, rows, dim, bad.device()));
    CONVNET_TRY(bad.read(bad_position, name));
    if (*bad_position >= 0) {
        return set_error(CONVNET_ERR_BAD_INDEX, "%s: invalid row id at flat position %lld",
                         name, static_cast<long long>(*bad_position));
    }
    return CONVNET_OK;
}

CONVNET_API convnet_status convnet_embed_backward(const void* index, int32_t index_type,
                                                  const float* dy, float* dweight, int64_t n,
                                                  int64_t rows, int64_t dim, void* stream) {
    clear_error();
    const char* name = "convnet_embed_backward";
    CONVNET_REQUIRE(n >= 0 && rows >= 0 && dim >= 0, name, "negative size");
    CONVNET_REQUIRE(valid_dtype(index_type), name, "unknown index_type");
    return launch(name, dim, as_stream(stream), embed_backward_kernel, index, index_type, dy,
                  dweight, n, rows, dim);
}

}  // extern "C"
