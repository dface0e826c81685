// Caffe's fused LSTM unit (LSTMUnit): one thread per (row, unit), gates in the order i, f,
// o, g. Forward keeps the activated gates and tanh(c) for backward.
#include "common.cuh"

using namespace convnet;

namespace convnet {
namespace recurrent_impl {

__device__ inline float sigmoid(float x) { return 0.5f + 0.5f * tanhf(0.5f * x); }

__global__ void lstm_unit_forward_kernel(const float* c_prev, const float* gates,
                                         const float* cont, float forget_bias, float* act,
                                         float* tanh_c, float* c, float* h, int64_t rows,
                                         int64_t d) {
    CONVNET_GRID_STRIDE(i, rows * d) {
        const int64_t r = i / d, k = i % d;
        const float* g = gates + r * 4 * d;
        float* a = act + r * 4 * d;
        const float gi = sigmoid(g[k]);
        const float gf = sigmoid(g[d + k] + forget_bias);
        const float go = sigmoid(g[2 * d + k]);
        const float gg = tanhf(g[3 * d + k]);
        a[k] = gi;
        a[d + k] = gf;
        a[2 * d + k] = go;
        a[3 * d + k] = gg;
        const float cv = cont[r] * gf * c_prev[i] + gi * gg;
        const float tc = tanhf(cv);
        c[i] = cv;
        tanh_c[i] = tc;
        h[i] = go * tc;
    }
}

__global__ void lstm_unit_backward_kernel(const float* c_prev, const float* cont,
                                          const float* act, const float* tanh_c,
                                          const float* dc, const float* dh, float* dc_prev,
                                          float* dgates, int64_t rows, int64_t d) {
    CONVNET_GRID_STRIDE(i, rows * d) {
        const int64_t r = i / d, k = i % d;
        const float* a = act + r * 4 * d;
        float* dg = dgates + r * 4 * d;
        const float gi = a[k], gf = a[d + k], go = a[2 * d + k], gg = a[3 * d + k];
        const float tc = tanh_c[i];
        const float dct = dc[i] + dh[i] * go * (1.0f - tc * tc);
        dc_prev[i] = dct * cont[r] * gf;
        dg[k] = dct * gg * gi * (1.0f - gi);
        dg[d + k] = dct * cont[r] * c_prev[i] * gf * (1.0f - gf);
        dg[2 * d + k] = dh[i] * tc * go * (1.0f - go);
        dg[3 * d + k] = dct * gi * (1.0f - gg * gg);
    }
}

}  // namespace recurrent_impl
}  // namespace convnet

using namespace convnet::recurrent_impl;

extern "C" {

CONVNET_API convnet_status convnet_lstm_unit_forward(const float* c_prev, const float* gates,
                                                     const float* cont, float forget_bias,
                                                     float* act, float* tanh_c, float* c,
                                                     float* h, int64_t rows, int64_t dim,
                                                     void* stream) {
    clear_error();
    CONVNET_REQUIRE(rows >= 0 && dim >= 0, "convnet_lstm_unit_forward", "negative size");
    return launch("lstm_unit_forward", rows * dim, as_stream(stream), lstm_unit_forward_kernel,
                  c_prev, gates, cont, forget_bias, act, tanh_c, c, h, rows, dim);
}

CONVNET_API convnet_status convnet_lstm_unit_backward(const float* c_prev, const float* cont,
                                                      const float* act, const float* tanh_c,
                                                      const float* dc, const float* dh,
                                                      float* dc_prev, float* dgates,
                                                      int64_t rows, int64_t dim, void* stream) {
    clear_error();
    CONVNET_REQUIRE(rows >= 0 && dim >= 0, "convnet_lstm_unit_backward", "negative size");
    return launch("lstm_unit_backward", rows * dim, as_stream(stream),
                  lstm_unit_backward_kernel, c_prev, cont, act, tanh_c, dc, dh, dc_prev, dgates,
                  rows, dim);
}

}  // extern "C"
