// BatchNorm: per-channel statistics and gradient sums (channels x parts blocks, double
// accumulators, fixed order: deterministic), element-wise normalisation and input gradient.
#include <math.h>

#include "common.cuh"

using namespace convnet;

namespace convnet {
namespace normalization_impl {

constexpr int64_t kInt32Limit = 2147483647LL;

struct SumTerm {
    const float* x;
    int64_t channels, spatial;
    __device__ void operator()(int64_t c, int64_t j, double* acc) const {
        acc[0] += channel_at(x, j, c, channels, spatial);
    }
};

struct StoreMean {
    double* mean;
    double count;
    __device__ void operator()(int64_t c, const double* total) const {
        mean[c] = total[0] / count;
    }
};

struct SquareTerm {
    const float* x;
    const double* mean;
    int64_t channels, spatial;
    __device__ void operator()(int64_t c, int64_t j, double* acc) const {
        const double d = channel_at(x, j, c, channels, spatial) - mean[c];
        acc[0] += d * d;
    }
};

struct StoreStats {
    const double* mean_in;
    float* mean;
    float* var;
    double count;
    __device__ void operator()(int64_t c, const double* total) const {
        mean[c] = static_cast<float>(mean_in[c]);
        var[c] = static_cast<float>(total[0] / count);
    }
};

__global__ void update_kernel(float* running_mean, float* running_var, const float* mean,
                              const float* var, float fraction, float correction,
                              int64_t channels) {
    CONVNET_GRID_STRIDE(c, channels) {
        running_mean[c] = fraction * running_mean[c] + (1.0f - fraction) * mean[c];
        running_var[c] = fraction * running_var[c] + (1.0f - fraction) * correction * var[c];
    }
}

// I: int32_t when n fits (32-bit channel decomposition), else int64_t.
template <typename I>
__global__ void forward_kernel(const float* x, const float* mean, const float* var, float eps,
                               const float* scale, const float* bias, float* y, I n,
                               I channels, I spatial) {
    CONVNET_GRID_STRIDE(i, n) {
        const I c = (static_cast<I>(i) / spatial) % channels;
        float a = 1.0f / sqrtf(var[c] + eps);
        if (scale != nullptr) a *= scale[c];
        float b = -mean[c] * a;
        if (bias != nullptr) b += bias[c];
        y[i] = x[i] * a + b;
    }
}

// acc[0] += dy, acc[1] += dy * xhat at (c, j).
struct GradTerm {
    const float* dy;
    const float* x;
    const float* mean;
    const float* var;
    float eps;
    int64_t channels, spatial;
    __device__ void operator()(int64_t c, int64_t j, double* acc) const {
        const float inv_std = 1.0f / sqrtf(var[c] + eps);
        const float g = channel_at(dy, j, c, channels, spatial);
        const float xhat = (channel_at(x, j, c, channels, spatial) - mean[c]) * inv_std;
        acc[0] += g;
        acc[1] += static_cast<double>(g) * xhat;
    }
};

// sums[2c] = sum dy, sums[2c + 1] = sum dy * xhat; dscale / dbias += them.
struct StoreGradSums {
    double* sums;
    float* dscale;
    float* dbias;
    __device__ void operator()(int64_t c, const double* total) const {
        sums[2 * c] = total[0];
        sums[2 * c + 1] = total[1];
        if (dscale != nullptr) dscale[c] += static_cast<float>(total[1]);
        if (dbias != nullptr) dbias[c] += static_cast<float>(total[0]);
    }
};

template <typename I>
__global__ void dx_kernel(const float* dy, const float* x, const float* mean, const float* var,
                          float eps, const float* scale, const double* sums, float* dx,
                          I n, I channels, I spatial, int64_t count) {
    CONVNET_GRID_STRIDE(i, n) {
        const I c = (static_cast<I>(i) / spatial) % channels;
        const float inv_std = 1.0f / sqrtf(var[c] + eps);
        const float gain = scale != nullptr ? inv_std * scale[c] : inv_std;
        if (sums == nullptr) {
            dx[i] = dy[i] * gain;
        } else {
            const float xhat = (x[i] - mean[c]) * inv_std;
            const float mean_dy = static_cast<float>(sums[2 * c] / count);
            const float mean_dy_xhat = static_cast<float>(sums[2 * c + 1] / count);
            dx[i] = gain * (dy[i] - xhat * mean_dy_xhat - mean_dy);
        }
    }
}

}  // namespace normalization_impl
}  // namespace convnet

using namespace convnet::normalization_impl;

extern "C" {

CONVNET_API convnet_status convnet_batch_norm_stats(const float* x, float* mean, float* var,
                                                    int64_t batch, int64_t channels,
                                                    int64_t spatial, void* stream) {
    clear_error();
    const char* name = "convnet_batch_norm_stats";
    CONVNET_REQUIRE(batch >= 0 && channels >= 0 && spatial >= 0, name, "negative size");
    CONVNET_REQUIRE(channels == 0 || batch * spatial > 0, name, "no values per channel");
    if (channels == 0) return CONVNET_OK;
    cudaStream_t s = as_stream(stream);
    const int64_t count = batch * spatial;
    // two passes (mean, then the centred squares: no cancellation), each over a
    // channels x parts grid with a fixed-order second stage
    Scratch mu(s);
    CONVNET_TRY(mu.allocate(channels * static_cast<int64_t>(sizeof(double)), name));
    CONVNET_TRY(channel_sums<1>(name, SumTerm{x, channels, spatial},
                                StoreMean{mu.as<double>(), static_cast<double>(count)},
                                channels, count, s));
    return channel_sums<1>(name, SquareTerm{x, mu.as<double>(), channels, spatial},
                           StoreStats{mu.as<double>(), mean, var, static_cast<double>(count)},
                           channels, count, s);
}

CONVNET_API convnet_status convnet_batch_norm_update(float* running_mean, float* running_var,
                                                     const float* mean, const float* var,
                                                     float fraction, float var_correction,
                                                     int64_t channels, void* stream) {
    clear_error();
    CONVNET_REQUIRE(channels >= 0, "convnet_batch_norm_update", "negative size");
    return launch("batch_norm_update", channels, as_stream(stream), update_kernel,
                  running_mean, running_var, mean, var, fraction, var_correction, channels);
}

CONVNET_API convnet_status convnet_batch_norm_forward(const float* x, const float* mean,
                                                      const float* var, float eps,
                                                      const float* scale, const float* bias,
                                                      float* y, int64_t batch,
                                                      int64_t channels, int64_t spatial,
                                                      void* stream) {
    clear_error();
    CONVNET_REQUIRE(batch >= 0 && channels >= 0 && spatial >= 0, "convnet_batch_norm_forward",
                    "negative size");
    const int64_t n = batch * channels * spatial;
    if (n < kInt32Limit) {
        return launch("batch_norm_forward", n, as_stream(stream), forward_kernel<int32_t>, x,
                      mean, var, eps, scale, bias, y, static_cast<int32_t>(n),
                      static_cast<int32_t>(channels), static_cast<int32_t>(spatial));
    }
    return launch("batch_norm_forward", n, as_stream(stream), forward_kernel<int64_t>, x, mean,
                  var, eps, scale, bias, y, n, channels, spatial);
}

CONVNET_API convnet_status convnet_batch_norm_backward(
    const float* dy, const float* x, const float* mean, const float* var, float eps,
    const float* scale, float* dx, float* dscale, float* dbias, int32_t batch_stats,
    int64_t batch, int64_t channels, int64_t spatial, void* stream) {
    clear_error();
    const char* name = "convnet_batch_norm_backward";
    CONVNET_REQUIRE(batch >= 0 && channels >= 0 && spatial >= 0, name, "negative size");
    cudaStream_t s = as_stream(stream);
    const int64_t n = batch * channels * spatial;
    const bool need_sums =
        dscale != nullptr || dbias != nullptr || (dx != nullptr && batch_stats);
    Scratch sums(s);
    if (need_sums && n > 0) {
        CONVNET_TRY(sums.allocate(2 * channels * sizeof(double), name));
        CONVNET_TRY(channel_sums<2>(name, GradTerm{dy, x, mean, var, eps, channels, spatial},
                                    StoreGradSums{sums.as<double>(), dscale, dbias}, channels,
                                    batch * spatial, s));
    }
    if (dx == nullptr) return CONVNET_OK;
    const double* used = batch_stats ? sums.as<double>() : nullptr;
    if (n < kInt32Limit) {
        return launch(name, n, s, dx_kernel<int32_t>, dy, x, mean, var, eps, scale, used, dx,
                      static_cast<int32_t>(n), static_cast<int32_t>(channels),
                      static_cast<int32_t>(spatial), batch * spatial);
    }
    return launch(name, n, s, dx_kernel<int64_t>, dy, x, mean, var, eps, scale, used, dx, n,
                  channels, spatial, batch * spatial);
}

}  // extern "C"
