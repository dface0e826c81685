// SoftmaxWithLoss forward / backward (EuclideanLoss runs on blas.cu's sub, dot and axpby).
#include <math.h>
#include <string.h>

#include "common.cuh"

using namespace convnet;

namespace convnet {
namespace loss_impl {

constexpr int64_t kIgnored = -1;
constexpr int64_t kBad = -2;

__device__ inline int64_t class_of(const void* labels, int32_t type, int64_t i,
                                   int64_t classes, int32_t has_ignore, int64_t ignore) {
    if (type == CONVNET_FLOAT32 || type == CONVNET_FLOAT64) {
        const double v = load_as_double(labels, type, i);
        if (v != floor(v)) return kBad;   // also NaN
        if (has_ignore && v == static_cast<double>(ignore)) return kIgnored;
        if (v >= 0.0 && v < static_cast<double>(classes)) return static_cast<int64_t>(v);
        return kBad;
    }
    const int64_t v = type == CONVNET_INT32 ? static_cast<const int32_t*>(labels)[i]
                                            : static_cast<const int64_t*>(labels)[i];
    if (has_ignore && v == ignore) return kIgnored;
    if (v >= 0 && v < classes) return v;
    return kBad;
}

// One thread per pixel (n, s): softmax over the C scores, the pixel's loss and class.
__global__ void softmax_forward_kernel(const float* scores, const void* labels, int32_t type,
                                       int32_t has_ignore, int64_t ignore, float* prob,
                                       int32_t* label_index, double* pixel_loss,
                                       int64_t batch, int64_t classes, int64_t spatial,
                                       unsigned long long* bad) {
    CONVNET_GRID_STRIDE(index, batch * spatial) {
        const int64_t s = index % spatial;
        const int64_t n = index / spatial;
        const float* x = scores + n * classes * spatial + s;
        float* p = prob + n * classes * spatial + s;
        float m = x[0];
        for (int64_t c = 1; c < classes; ++c) {
            const float v = x[c * spatial];
            if (v > m) m = v;
        }
        float sum = 0.0f;
        for (int64_t c = 0; c < classes; ++c) {
            const float e = expf(x[c * spatial] - m);
            p[c * spatial] = e;
            sum += e;
        }
        const float inv = 1.0f / sum;
        for (int64_t c = 0; c < classes; ++c) p[c * spatial] *= inv;
        int64_t k = class_of(labels, type, index, classes, has_ignore, ignore);
        double loss = 0.0;
        if (k >= 0) {
            loss = log(static_cast<double>(sum)) -
                   (static_cast<double>(x[k * spatial]) - static_cast<double>(m));
        } else if (k == kBad) {
            report_bad(bad, index);
            k = kIgnored;
        }
        pixel_loss[index] = loss;
        label_index[index] = static_cast<int32_t>(k);
    }
}

struct PixelLoss {
    const double* loss;
    __device__ double operator()(int64_t i) const { return loss[i]; }
};

struct ValidCount {
    const int32_t* label_index;
    __device__ double operator()(int64_t i) const { return label_index[i] >= 0 ? 1.0 : 0.0; }
};

// I: int32_t when the size fits (32-bit index decomposition), else int64_t.
template <typename I>
__global__ void softmax_backward_kernel(const float* prob, const int32_t* label_index,
                                        float weight, float* grad, I batch, I classes,
                                        I spatial) {
    CONVNET_GRID_STRIDE(index64, static_cast<int64_t>(batch) * classes * spatial) {
        const I index = static_cast<I>(index64);
        const I s = index % spatial;
        const I c = (index / spatial) % classes;
        const I n = index / (spatial * classes);
        const int32_t k = label_index[n * spatial + s];
        float g = 0.0f;
        if (k >= 0) g = weight * (prob[index] - (k == c ? 1.0f : 0.0f));
        grad[index] = g;
    }
}

}  // namespace loss_impl
}  // namespace convnet

using namespace convnet::loss_impl;

extern "C" {

CONVNET_API convnet_status convnet_softmax_loss_forward(
    const float* scores, const void* labels, int32_t label_type, int32_t has_ignore,
    int64_t ignore_label, float* prob, int32_t* label_index, int64_t batch, int64_t classes,
    int64_t spatial, double* loss_sum, int64_t* valid_count, int64_t* bad_position,
    void* stream) {
    clear_error();
    const char* name = "convnet_softmax_loss_forward";
    CONVNET_REQUIRE(loss_sum != nullptr && valid_count != nullptr && bad_position != nullptr,
                    name, "NULL output");
    *loss_sum = 0.0;
    *valid_count = 0;
    *bad_position = -1;
    CONVNET_REQUIRE(batch >= 0 && classes >= 1 && spatial >= 0, name,
                    "negative size or no classes");
    CONVNET_REQUIRE(valid_dtype(label_type), name, "unknown label_type");
    const int64_t pixels = batch * spatial;
    if (pixels == 0) return CONVNET_OK;
    cudaStream_t s = as_stream(stream);
    // one scratch: the per-pixel losses, then the results {loss sum, valid count, bad flag},
    // read back with ONE copy and ONE wait (the loss read-back the training step needs)
    Scratch scratch(s);
    CONVNET_TRY(scratch.allocate((pixels + 3) * static_cast<int64_t>(sizeof(double)), name));
    double* losses = scratch.as<double>();
    double* results = losses + pixels;
    unsigned long long* bad = reinterpret_cast<unsigned long long*>(results + 2);
    CONVNET_TRY(check_cuda(cudaMemsetAsync(bad, 0xFF, sizeof(unsigned long long), s), name));
    CONVNET_TRY(launch(name, pixels, s, softmax_forward_kernel, scores, labels, label_type,
                       has_ignore, ignore_label, prob, label_index, losses, batch, classes,
                       spatial, bad));
    CONVNET_TRY(reduce_sum_to_device(name, PixelLoss{losses}, pixels, results, s));
    CONVNET_TRY(reduce_sum_to_device(name, ValidCount{label_index}, pixels, results + 1, s));
    double host[3];
    CONVNET_TRY(check_cuda(cudaMemcpyAsync(host, results, sizeof(host), cudaMemcpyDeviceToHost,
                                           s),
                           name));
    CONVNET_TRY(wait_for(s, name));
    *loss_sum = host[0];
    *valid_count = static_cast<int64_t>(host[1]);
    unsigned long long flag;
    memcpy(&flag, &host[2], sizeof(flag));
    *bad_position = flag == kNoBad ? -1 : static_cast<int64_t>(flag);
    if (*bad_position >= 0) {
        return set_error(CONVNET_ERR_BAD_INDEX, "%s: invalid label at flat position %lld",
                         name, static_cast<long long>(*bad_position));
    }
    return CONVNET_OK;
}

CONVNET_API convnet_status convnet_softmax_loss_backward(
    const float* prob, const int32_t* label_index, float weight, float* grad, int64_t batch,
    int64_t classes, int64_t spatial, void* stream) {
    clear_error();
    CONVNET_REQUIRE(batch >= 0 && classes >= 0 && spatial >= 0,
                    "convnet_softmax_loss_backward", "negative size");
    const int64_t n = batch * classes * spatial;
    if (n < 2147483647LL) {
        return launch("softmax_loss_backward", n, as_stream(stream),
                      softmax_backward_kernel<int32_t>, prob, label_index, weight, grad,
                      static_cast<int32_t>(batch), static_cast<int32_t>(classes),
                      static_cast<int32_t>(spatial));
    }
    return launch("softmax_loss_backward", n, as_stream(stream),
                  softmax_backward_kernel<int64_t>, prob, label_index, weight, grad, batch,
                  classes, spatial);
}

}  // extern "C"
