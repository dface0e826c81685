// Solver updates, one fused element-wise pass per param (Caffe's SGD and Adam).
#include <math.h>

#include "common.cuh"

using namespace convnet;

namespace convnet {
namespace solvers_impl {

__global__ void sgd_kernel(float* data, const float* diff, float* history, float rate,
                           float momentum, float decay, int64_t n) {
    CONVNET_GRID_STRIDE(i, n) {
        const float h = momentum * history[i] + rate * diff[i] + rate * decay * data[i];
        history[i] = h;
        data[i] -= h;
    }
}

__global__ void adam_kernel(float* data, const float* diff, float* m, float* v, float step,
                            float beta1, float beta2, float delta, float decay, int64_t n) {
    CONVNET_GRID_STRIDE(i, n) {
        const float g = diff[i] + decay * data[i];
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        data[i] -= step * (mi / (sqrtf(vi) + delta));
    }
}

// Any thread that sees a non-finite value stores 1: the same store from every writer, so the
// result does not depend on their order.
__global__ void nonfinite_kernel(const float* x, int64_t n, int32_t* flag) {
    CONVNET_GRID_STRIDE(i, n) {
        if (!isfinite(x[i])) *flag = 1;
    }
}

}  // namespace solvers_impl
}  // namespace convnet

using namespace convnet::solvers_impl;

extern "C" {

CONVNET_API convnet_status convnet_sgd_update(float* data, const float* diff, float* history,
                                              float local_rate, float momentum,
                                              float local_decay, int64_t n, void* stream) {
    clear_error();
    CONVNET_REQUIRE(n >= 0, "convnet_sgd_update", "negative size");
    return launch("sgd_update", n, as_stream(stream), sgd_kernel, data, diff, history,
                  local_rate, momentum, local_decay, n);
}

CONVNET_API convnet_status convnet_adam_update(float* data, const float* diff, float* m,
                                               float* v, float step, float beta1, float beta2,
                                               float delta, float local_decay, int64_t n,
                                               void* stream) {
    clear_error();
    CONVNET_REQUIRE(n >= 0, "convnet_adam_update", "negative size");
    return launch("adam_update", n, as_stream(stream), adam_kernel, data, diff, m, v, step,
                  beta1, beta2, delta, local_decay, n);
}

CONVNET_API convnet_status convnet_flag_nonfinite(const float* x, int64_t n, int32_t* flag,
                                                  void* stream) {
    clear_error();
    CONVNET_REQUIRE(n >= 0, "convnet_flag_nonfinite", "negative size");
    CONVNET_REQUIRE(flag != nullptr, "convnet_flag_nonfinite", "flag is NULL");
    return launch("flag_nonfinite", n, as_stream(stream), nonfinite_kernel, x, n, flag);
}

}  // extern "C"
