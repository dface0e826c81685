// Crop, Concat (strided copies) and Eltwise MAX; Eltwise SUM / PROD run on blas.cu.
#include "common.cuh"

using namespace convnet;

namespace convnet {
namespace structure_impl {

constexpr int kMaxDims = 8;

struct Strided {
    int32_t ndim;
    int64_t shape[kMaxDims];
    int64_t dst_strides[kMaxDims];
    int64_t src_strides[kMaxDims];
};

template <typename T>
__global__ void copy_strided_kernel(T* dst, const T* src, Strided a, int64_t n) {
    CONVNET_GRID_STRIDE(i, n) {
        int64_t rest = i, d = 0, s = 0;
        for (int axis = a.ndim - 1; axis >= 0; --axis) {
            const int64_t coord = rest % a.shape[axis];
            rest /= a.shape[axis];
            d += coord * a.dst_strides[axis];
            s += coord * a.src_strides[axis];
        }
        dst[d] = src[s];
    }
}

__global__ void max_step_kernel(const float* x, int32_t index, float* y, int32_t* argmax,
                                int64_t n) {
    CONVNET_GRID_STRIDE(i, n) {
        if (x[i] > y[i]) {
            y[i] = x[i];
            argmax[i] = index;
        }
    }
}

__global__ void max_backward_kernel(const float* dy, const int32_t* argmax, int32_t index,
                                    float* dx, int64_t n) {
    CONVNET_GRID_STRIDE(i, n) { dx[i] = argmax[i] == index ? dy[i] : 0.0f; }
}

}  // namespace structure_impl
}  // namespace convnet

using namespace convnet::structure_impl;

extern "C" {

CONVNET_API convnet_status convnet_copy_strided(void* dst, const void* src, int64_t itemsize,
                                                int32_t ndim, const int64_t* shape,
                                                const int64_t* dst_strides,
                                                const int64_t* src_strides, void* stream) {
    clear_error();
    const char* name = "convnet_copy_strided";
    CONVNET_REQUIRE(ndim >= 0 && ndim <= kMaxDims, name, "ndim must be 0 to 8");
    CONVNET_REQUIRE(ndim == 0 || (shape != nullptr && dst_strides != nullptr &&
                                  src_strides != nullptr),
                    name, "NULL shape or strides");
    Strided a{};
    a.ndim = ndim;
    int64_t n = 1;
    for (int axis = 0; axis < ndim; ++axis) {
        CONVNET_REQUIRE(shape[axis] >= 0, name, "negative size");
        a.shape[axis] = shape[axis];
        a.dst_strides[axis] = dst_strides[axis];
        a.src_strides[axis] = src_strides[axis];
        n *= shape[axis];
    }
    cudaStream_t s = as_stream(stream);
    switch (itemsize) {
        case 1:
            return launch(name, n, s, copy_strided_kernel<uint8_t>, static_cast<uint8_t*>(dst),
                          static_cast<const uint8_t*>(src), a, n);
        case 2:
            return launch(name, n, s, copy_strided_kernel<uint16_t>,
                          static_cast<uint16_t*>(dst), static_cast<const uint16_t*>(src), a, n);
        case 4:
            return launch(name, n, s, copy_strided_kernel<uint32_t>,
                          static_cast<uint32_t*>(dst), static_cast<const uint32_t*>(src), a, n);
        case 8:
            return launch(name, n, s, copy_strided_kernel<uint64_t>,
                          static_cast<uint64_t*>(dst), static_cast<const uint64_t*>(src), a, n);
        default: break;
    }
    return set_error(CONVNET_ERR_INVALID_ARGUMENT, "%s: itemsize %lld is not 1, 2, 4 or 8",
                     name, static_cast<long long>(itemsize));
}

CONVNET_API convnet_status convnet_eltwise_max_step(const float* x, int32_t index, float* y,
                                                    int32_t* argmax, int64_t n, void* stream) {
    clear_error();
    CONVNET_REQUIRE(n >= 0, "convnet_eltwise_max_step", "negative size");
    return launch("eltwise_max_step", n, as_stream(stream), max_step_kernel, x, index, y,
                  argmax, n);
}

CONVNET_API convnet_status convnet_eltwise_max_backward(const float* dy,
                                                        const int32_t* argmax, int32_t index,
                                                        float* dx, int64_t n, void* stream) {
    clear_error();
    CONVNET_REQUIRE(n >= 0, "convnet_eltwise_max_backward", "negative size");
    return launch("eltwise_max_backward", n, as_stream(stream), max_backward_kernel, dy,
                  argmax, index, dx, n);
}

}  // extern "C"
