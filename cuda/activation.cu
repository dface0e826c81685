// ReLU and Dropout: single memory-bound element-wise passes.
#include "common.cuh"

using namespace convnet;

namespace convnet {
namespace activation_impl {

// As the CPU backend: slope 0 is max(x, 0), so -inf and -0.0 give +0 (v * 0 would give NaN
// and -0.0) and NaN stays NaN; other slopes are v * slope for v <= 0.
__global__ void relu_forward_kernel(const float* x, float slope, float* y, int64_t n) {
    CONVNET_GRID_STRIDE(i, n) {
        const float v = x[i];
        y[i] = v > 0.0f ? v : (slope == 0.0f ? (v != v ? v : 0.0f) : v * slope);
    }
}

__global__ void relu_backward_kernel(const float* dy, const float* x, float slope, float* dx,
                                     int64_t n) {
    // Caffe's factor (x > 0) + slope * (x <= 0), as the CPU backend: 0 for a NaN input
    CONVNET_GRID_STRIDE(i, n) {
        const float v = x[i];
        const float factor = (v > 0.0f ? 1.0f : 0.0f) + (v <= 0.0f ? slope : 0.0f);
        dx[i] = dy[i] * factor;
    }
}

// x * (keep * scale), as the CPU backend: a dropped NaN or Inf gives NaN, a dropped -x gives
// -0.0 (IEEE x * 0), never a silent 0 that hides a bad input.
__global__ void dropout_apply_kernel(const float* x, const uint8_t* keep, float scale,
                                     float* y, int64_t n) {
    CONVNET_GRID_STRIDE(i, n) { y[i] = keep[i] ? x[i] * scale : x[i] * 0.0f; }
}

// splitmix64's finaliser: a bijective hash, so every (seed, counter) gives its own value
__device__ inline uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__global__ void dropout_mask_kernel(uint64_t seed, uint64_t offset, float ratio, uint8_t* keep,
                                    int64_t n) {
    const uint64_t key = splitmix64(seed);
    CONVNET_GRID_STRIDE(i, n) {
        const uint64_t bits = splitmix64(key ^ (offset + static_cast<uint64_t>(i)));
        // the top 24 bits as a float in [0, 1), exactly representable
        const float u = static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
        keep[i] = u >= ratio ? 1 : 0;
    }
}

}  // namespace activation_impl
}  // namespace convnet

using namespace convnet::activation_impl;

extern "C" {

CONVNET_API convnet_status convnet_relu_forward(const float* x, float negative_slope,
                                                float* y, int64_t n, void* stream) {
    clear_error();
    CONVNET_REQUIRE(n >= 0, "convnet_relu_forward", "negative size");
    return launch("relu_forward", n, as_stream(stream), relu_forward_kernel, x,
                  negative_slope, y, n);
}

CONVNET_API convnet_status convnet_relu_backward(const float* dy, const float* x,
                                                 float negative_slope, float* dx, int64_t n,
                                                 void* stream) {
    clear_error();
    CONVNET_REQUIRE(n >= 0, "convnet_relu_backward", "negative size");
    return launch("relu_backward", n, as_stream(stream), relu_backward_kernel, dy, x,
                  negative_slope, dx, n);
}

CONVNET_API convnet_status convnet_dropout_apply(const float* x, const uint8_t* keep,
                                                 float scale, float* y, int64_t n,
                                                 void* stream) {
    clear_error();
    CONVNET_REQUIRE(n >= 0, "convnet_dropout_apply", "negative size");
    return launch("dropout_apply", n, as_stream(stream), dropout_apply_kernel, x, keep, scale,
                  y, n);
}

CONVNET_API convnet_status convnet_dropout_mask(uint64_t seed, uint64_t offset, float ratio,
                                                uint8_t* keep, int64_t n, void* stream) {
    clear_error();
    CONVNET_REQUIRE(n >= 0, "convnet_dropout_mask", "negative size");
    return launch("dropout_mask", n, as_stream(stream), dropout_mask_kernel, seed, offset,
                  ratio, keep, n);
}

}  // extern "C"
