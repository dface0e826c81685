// Sigmoid, TanH and Softmax (activation family) and Scale (normalization family): the
// layers recurrent cells are built from. Softmax and Scale view their blobs as
// (outer, C, inner); reductions are per-thread or fixed-order block sums (deterministic).
#include "common.cuh"

using namespace convnet;

namespace convnet {
namespace smooth_impl {

__global__ void sigmoid_forward_kernel(const float* x, float* y, int64_t n) {
    CONVNET_GRID_STRIDE(i, n) { y[i] = 0.5f + 0.5f * tanhf(0.5f * x[i]); }
}

__global__ void sigmoid_backward_kernel(const float* dy, const float* y, float* dx,
                                        int64_t n) {
    CONVNET_GRID_STRIDE(i, n) { dx[i] = dy[i] * y[i] * (1.0f - y[i]); }
}

__global__ void tanh_forward_kernel(const float* x, float* y, int64_t n) {
    CONVNET_GRID_STRIDE(i, n) { y[i] = tanhf(x[i]); }
}

__global__ void tanh_backward_kernel(const float* dy, const float* y, float* dx, int64_t n) {
    CONVNET_GRID_STRIDE(i, n) { dx[i] = dy[i] * (1.0f - y[i] * y[i]); }
}

// one thread per (outer, inner) position walks its C values
__global__ void softmax_forward_kernel(const float* x, float* y, int64_t outer, int64_t c,
                                       int64_t inner) {
    CONVNET_GRID_STRIDE(i, outer * inner) {
        const int64_t o = i / inner, in = i % inner;
        const float* xs = x + o * c * inner + in;
        float* ys = y + o * c * inner + in;
        float m = xs[0];
        for (int64_t k = 1; k < c; ++k) m = fmaxf(m, xs[k * inner]);
        double sum = 0.0;
        for (int64_t k = 0; k < c; ++k) {
            const float e = expf(xs[k * inner] - m);
            ys[k * inner] = e;
            sum += e;
        }
        const float inv = static_cast<float>(1.0 / sum);
        for (int64_t k = 0; k < c; ++k) ys[k * inner] *= inv;
    }
}

__global__ void softmax_backward_kernel(const float* dy, const float* y, float* dx,
                                        int64_t outer, int64_t c, int64_t inner) {
    CONVNET_GRID_STRIDE(i, outer * inner) {
        const int64_t base = (i / inner) * c * inner + i % inner;
        double dot = 0.0;
        for (int64_t k = 0; k < c; ++k) dot += dy[base + k * inner] * y[base + k * inner];
        const float d = static_cast<float>(dot);
        for (int64_t k = 0; k < c; ++k) {
            const int64_t j = base + k * inner;
            dx[j] = y[j] * (dy[j] - d);
        }
    }
}

__global__ void scale_forward_kernel(const float* x, const float* scale, const float* bias,
                                     float* y, int64_t outer, int64_t size, int64_t inner) {
    CONVNET_GRID_STRIDE(i, outer * size * inner) {
        const int64_t s = (i / inner) % size;
        y[i] = x[i] * scale[s] + (bias != nullptr ? bias[s] : 0.0f);
    }
}

__global__ void scale_backward_data_kernel(const float* dy, const float* scale, float* dx,
                                           int64_t outer, int64_t size, int64_t inner) {
    CONVNET_GRID_STRIDE(i, outer * size * inner) { dx[i] = dy[i] * scale[(i / inner) % size]; }
}

// one block per scale entry s: fixed-order block sums of dy * x and dy over outer x inner
__global__ void scale_backward_param_kernel(const float* dy, const float* x, float* dscale,
                                            float* dbias, int64_t outer, int64_t size,
                                            int64_t inner) {
    const int64_t s = blockIdx.x;
    double acc_s = 0.0, acc_b = 0.0;
    for (int64_t k = threadIdx.x; k < outer * inner; k += blockDim.x) {
        const int64_t i = (k / inner) * size * inner + s * inner + k % inner;
        acc_s += static_cast<double>(dy[i]) * x[i];
        acc_b += dy[i];
    }
    const double ts = block_sum(acc_s);
    const double tb = block_sum(acc_b);
    if (threadIdx.x == 0) {
        if (dscale != nullptr) dscale[s] += static_cast<float>(ts);
        if (dbias != nullptr) dbias[s] += static_cast<float>(tb);
    }
}

}  // namespace smooth_impl
}  // namespace convnet

using namespace convnet::smooth_impl;

extern "C" {

CONVNET_API convnet_status convnet_sigmoid_forward(const float* x, float* y, int64_t n,
                                                   void* stream) {
    clear_error();
    CONVNET_REQUIRE(n >= 0, "convnet_sigmoid_forward", "negative size");
    return launch("sigmoid_forward", n, as_stream(stream), sigmoid_forward_kernel, x, y, n);
}

CONVNET_API convnet_status convnet_sigmoid_backward(const float* dy, const float* y, float* dx,
                                                    int64_t n, void* stream) {
    clear_error();
    CONVNET_REQUIRE(n >= 0, "convnet_sigmoid_backward", "negative size");
    return launch("sigmoid_backward", n, as_stream(stream), sigmoid_backward_kernel, dy, y, dx,
                  n);
}

CONVNET_API convnet_status convnet_tanh_forward(const float* x, float* y, int64_t n,
                                                void* stream) {
    clear_error();
    CONVNET_REQUIRE(n >= 0, "convnet_tanh_forward", "negative size");
    return launch("tanh_forward", n, as_stream(stream), tanh_forward_kernel, x, y, n);
}

CONVNET_API convnet_status convnet_tanh_backward(const float* dy, const float* y, float* dx,
                                                 int64_t n, void* stream) {
    clear_error();
    CONVNET_REQUIRE(n >= 0, "convnet_tanh_backward", "negative size");
    return launch("tanh_backward", n, as_stream(stream), tanh_backward_kernel, dy, y, dx, n);
}

CONVNET_API convnet_status convnet_softmax_forward(const float* x, float* y, int64_t outer,
                                                   int64_t channels, int64_t inner,
                                                   void* stream) {
    clear_error();
    CONVNET_REQUIRE(outer >= 0 && channels >= 1 && inner >= 0, "convnet_softmax_forward",
                    "sizes must be >= 0 with at least one channel");
    return launch("softmax_forward", outer * inner, as_stream(stream), softmax_forward_kernel,
                  x, y, outer, channels, inner);
}

CONVNET_API convnet_status convnet_softmax_backward(const float* dy, const float* y, float* dx,
                                                    int64_t outer, int64_t channels,
                                                    int64_t inner, void* stream) {
    clear_error();
    CONVNET_REQUIRE(outer >= 0 && channels >= 1 && inner >= 0, "convnet_softmax_backward",
                    "sizes must be >= 0 with at least one channel");
    return launch("softmax_backward", outer * inner, as_stream(stream),
                  softmax_backward_kernel, dy, y, dx, outer, channels, inner);
}

CONVNET_API convnet_status convnet_scale_forward(const float* x, const float* scale,
                                                 const float* bias, float* y, int64_t outer,
                                                 int64_t size, int64_t inner, void* stream) {
    clear_error();
    CONVNET_REQUIRE(outer >= 0 && size >= 0 && inner >= 0, "convnet_scale_forward",
                    "negative size");
    return launch("scale_forward", outer * size * inner, as_stream(stream),
                  scale_forward_kernel, x, scale, bias, y, outer, size, inner);
}

CONVNET_API convnet_status convnet_scale_backward(const float* dy, const float* x,
                                                  const float* scale, float* dx, float* dscale,
                                                  float* dbias, int64_t outer, int64_t size,
                                                  int64_t inner, void* stream) {
    clear_error();
    const char* name = "convnet_scale_backward";
    CONVNET_REQUIRE(outer >= 0 && size >= 0 && inner >= 0, name, "negative size");
    cudaStream_t s = as_stream(stream);
    if (dscale != nullptr || dbias != nullptr) {
        CONVNET_TRY(launch_blocks(name, size, s, scale_backward_param_kernel, dy, x, dscale,
                                  dbias, outer, size, inner));
    }
    if (dx != nullptr) {
        CONVNET_TRY(launch(name, outer * size * inner, s, scale_backward_data_kernel, dy, scale,
                           dx, outer, size, inner));
    }
    return CONVNET_OK;
}

}  // extern "C"
