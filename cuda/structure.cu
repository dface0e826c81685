// Crop, Concat (strided copies) and Eltwise MAX; Eltwise SUM / PROD run on blas.cu.
#include "common.cuh"

using namespace convnet;

namespace convnet {
namespace structure_impl {

constexpr int kMaxDims = 8;


// I: int32_t when the size and every offset fit (32-bit divides), else int64_t.
template <typename I>
struct StridedT {
    int32_t ndim;
    I shape[kMaxDims];
    I dst_strides[kMaxDims];
    I src_strides[kMaxDims];
};

template <typename T, typename I>
__global__ void copy_strided_kernel(T* dst, const T* src, StridedT<I> a, int64_t n) {
    CONVNET_GRID_STRIDE(i, n) {
        I rest = static_cast<I>(i), d = 0, s = 0;
        for (int axis = a.ndim - 1; axis >= 0; --axis) {
            const I coord = rest % a.shape[axis];
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

template <typename I>
convnet_status copy_typed(void* dst, const void* src, int64_t itemsize, const StridedT<I>& a,
                          int64_t n, cudaStream_t s, const char* name) {
    switch (itemsize) {
        case 1:
            return launch(name, n, s, copy_strided_kernel<uint8_t, I>,
                          static_cast<uint8_t*>(dst), static_cast<const uint8_t*>(src), a, n);
        case 2:
            return launch(name, n, s, copy_strided_kernel<uint16_t, I>,
                          static_cast<uint16_t*>(dst), static_cast<const uint16_t*>(src), a, n);
        case 4:
            return launch(name, n, s, copy_strided_kernel<uint32_t, I>,
                          static_cast<uint32_t*>(dst), static_cast<const uint32_t*>(src), a, n);
        default:
            return launch(name, n, s, copy_strided_kernel<uint64_t, I>,
                          static_cast<uint64_t*>(dst), static_cast<const uint64_t*>(src), a, n);
    }
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
    StridedT<int64_t> a{};
    a.ndim = ndim;
    int64_t n = 1, dst_reach = 0, src_reach = 0;
    for (int axis = 0; axis < ndim; ++axis) {
        CONVNET_REQUIRE(shape[axis] >= 0, name, "negative size");
        a.shape[axis] = shape[axis];
        a.dst_strides[axis] = dst_strides[axis];
        a.src_strides[axis] = src_strides[axis];
        n *= shape[axis];
        const int64_t last = shape[axis] > 0 ? shape[axis] - 1 : 0;
        dst_reach += last * (dst_strides[axis] < 0 ? -dst_strides[axis] : dst_strides[axis]);
        src_reach += last * (src_strides[axis] < 0 ? -src_strides[axis] : src_strides[axis]);
    }
    if (itemsize != 1 && itemsize != 2 && itemsize != 4 && itemsize != 8) {
        return set_error(CONVNET_ERR_INVALID_ARGUMENT, "%s: itemsize %lld is not 1, 2, 4 or 8",
                         name, static_cast<long long>(itemsize));
    }
    cudaStream_t s = as_stream(stream);
    constexpr int64_t limit = 2147483647LL;
    if (n < limit && dst_reach < limit && src_reach < limit) {
        StridedT<int32_t> b{};
        b.ndim = ndim;
        for (int axis = 0; axis < ndim; ++axis) {
            b.shape[axis] = static_cast<int32_t>(a.shape[axis]);
            b.dst_strides[axis] = static_cast<int32_t>(a.dst_strides[axis]);
            b.src_strides[axis] = static_cast<int32_t>(a.src_strides[axis]);
        }
        return copy_typed(dst, src, itemsize, b, n, s, name);
    }
    return copy_typed(dst, src, itemsize, a, n, s, name);
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
