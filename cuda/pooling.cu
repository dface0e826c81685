// Pooling: max (with argmax and the float mask top) and average pooling, forward and
// backward, and max unpooling. Backward passes gather per input pixel over the windows that
// contain it, so they are deterministic and need no atomics.
#include "common.cuh"

using namespace convnet;

namespace convnet {
namespace pooling_impl {

// The window geometry in the kernels' index type I: int32_t when the input and output
// sizes fit (32-bit index decompositions), else int64_t.
template <typename I>
struct WindowT {
    I planes, height, width, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w, pad_h,
        pad_w;
};
using Window = WindowT<int64_t>;

template <typename I>
WindowT<I> narrow(const Window& g) {
    return WindowT<I>{static_cast<I>(g.planes),   static_cast<I>(g.height),
                      static_cast<I>(g.width),    static_cast<I>(g.out_h),
                      static_cast<I>(g.out_w),    static_cast<I>(g.kernel_h),
                      static_cast<I>(g.kernel_w), static_cast<I>(g.stride_h),
                      static_cast<I>(g.stride_w), static_cast<I>(g.pad_h),
                      static_cast<I>(g.pad_w)};
}

// True when every offset of x and y fits int32_t.
inline bool fits32(const Window& g) {
    const int64_t in = g.planes * g.height * g.width;
    const int64_t out = g.planes * g.out_h * g.out_w;
    return (in > out ? in : out) < 2147483647LL;
}

// The output windows [oh_start, oh_end) x [ow_start, ow_end) that contain input pixel
// ``index`` (plane p, row h, column w): what the backward gathers over.
template <typename I>
struct Windows {
    I p, h, w, oh_start, oh_end, ow_start, ow_end;
};

template <typename I>
__device__ Windows<I> windows_of(I index, const WindowT<I>& g) {
    Windows<I> r;
    r.w = index % g.width;
    r.h = (index / g.width) % g.height;
    r.p = index / (g.width * g.height);
    const I hp = r.h + g.pad_h;
    const I wp = r.w + g.pad_w;
    r.oh_start = hp < g.kernel_h ? 0 : (hp - g.kernel_h) / g.stride_h + 1;
    r.ow_start = wp < g.kernel_w ? 0 : (wp - g.kernel_w) / g.stride_w + 1;
    r.oh_end = min(hp / g.stride_h + 1, g.out_h);
    r.ow_end = min(wp / g.stride_w + 1, g.out_w);
    return r;
}

template <typename Index, typename I>
__global__ void max_forward_kernel(const float* x, float* y, Index* argmax, float* mask,
                                   WindowT<I> g) {
    const I n = g.planes * g.out_h * g.out_w;
    CONVNET_GRID_STRIDE(index64, n) {
        const I index = static_cast<I>(index64);
        const I ow = index % g.out_w;
        const I oh = (index / g.out_w) % g.out_h;
        const I p = index / (g.out_w * g.out_h);
        I hs = oh * g.stride_h - g.pad_h;
        I ws = ow * g.stride_w - g.pad_w;
        const I he = min(min(hs + g.kernel_h, g.height + g.pad_h), g.height);
        const I we = min(min(ws + g.kernel_w, g.width + g.pad_w), g.width);
        hs = max(hs, I(0));
        ws = max(ws, I(0));
        const float* plane = x + p * g.height * g.width;
        float best = 0.0f;
        I best_i = 0;
        if (hs < he && ws < we) {   // always true for validated shapes
            best_i = hs * g.width + ws;
            best = plane[best_i];
            for (I h = hs; h < he; ++h) {
                for (I w = ws; w < we; ++w) {
                    const float v = plane[h * g.width + w];
                    if (v > best || v != v) {   // a NaN wins, as in the CPU kernel
                        best = v;
                        best_i = h * g.width + w;
                    }
                }
            }
        }
        y[index] = best;
        argmax[index] = static_cast<Index>(best_i);
        if (mask != nullptr) mask[index] = static_cast<float>(best_i);
    }
}

template <typename Index, typename I>
__global__ void max_backward_kernel(const float* dy, const Index* argmax, float* dx,
                                    WindowT<I> g) {
    const I n = g.planes * g.height * g.width;
    const I out_plane = g.out_h * g.out_w;
    CONVNET_GRID_STRIDE(index64, n) {
        const I index = static_cast<I>(index64);
        const Windows<I> win = windows_of(index, g);
        const I p = win.p, oh_start = win.oh_start, oh_end = win.oh_end,
                ow_start = win.ow_start, ow_end = win.ow_end;
        const I self = win.h * g.width + win.w;
        const float* dyp = dy + p * out_plane;
        const Index* ap = argmax + p * out_plane;
        float acc = 0.0f;
        for (I oh = oh_start; oh < oh_end; ++oh) {
            for (I ow = ow_start; ow < ow_end; ++ow) {
                const I o = oh * g.out_w + ow;
                if (static_cast<I>(ap[o]) == self) acc += dyp[o];
            }
        }
        dx[index] = acc;
    }
}

// Without the window geometry: one thread per plane, outputs in order (deterministic).
template <typename Index>
__global__ void max_backward_plane_kernel(const float* dy, const Index* argmax, float* dx,
                                          Window g) {
    const int64_t in_plane = g.height * g.width;
    const int64_t out_plane = g.out_h * g.out_w;
    CONVNET_GRID_STRIDE(p, g.planes) {
        float* dxp = dx + p * in_plane;
        for (int64_t i = 0; i < in_plane; ++i) dxp[i] = 0.0f;
        for (int64_t o = 0; o < out_plane; ++o) {
            const int64_t a = static_cast<int64_t>(argmax[p * out_plane + o]);
            if (a >= 0 && a < in_plane) dxp[a] += dy[p * out_plane + o];
        }
    }
}

template <typename I>
__device__ inline I pool_size(I o, I stride, I pad, I kernel, I size) {
    const I s = o * stride - pad;
    return min(s + kernel, size + pad) - s;
}

template <typename I>
__global__ void ave_forward_kernel(const float* x, float* y, WindowT<I> g) {
    const I n = g.planes * g.out_h * g.out_w;
    CONVNET_GRID_STRIDE(index64, n) {
        const I index = static_cast<I>(index64);
        const I ow = index % g.out_w;
        const I oh = (index / g.out_w) % g.out_h;
        const I p = index / (g.out_w * g.out_h);
        const I hs0 = oh * g.stride_h - g.pad_h;
        const I ws0 = ow * g.stride_w - g.pad_w;
        const I he = min(min(hs0 + g.kernel_h, g.height + g.pad_h), g.height);
        const I we = min(min(ws0 + g.kernel_w, g.width + g.pad_w), g.width);
        const I hs = max(hs0, I(0));
        const I ws = max(ws0, I(0));
        const float* plane = x + p * g.height * g.width;
        float acc = 0.0f;
        for (I h = hs; h < he; ++h) {
            for (I w = ws; w < we; ++w) acc += plane[h * g.width + w];
        }
        const I count = pool_size(oh, g.stride_h, g.pad_h, g.kernel_h, g.height) *
                              pool_size(ow, g.stride_w, g.pad_w, g.kernel_w, g.width);
        y[index] = acc / static_cast<float>(count);
    }
}

template <typename I>
__global__ void ave_backward_kernel(const float* dy, float* dx, WindowT<I> g) {
    const I n = g.planes * g.height * g.width;
    const I out_plane = g.out_h * g.out_w;
    CONVNET_GRID_STRIDE(index64, n) {
        const I index = static_cast<I>(index64);
        const Windows<I> win = windows_of(index, g);
        const I p = win.p, oh_start = win.oh_start, oh_end = win.oh_end,
                ow_start = win.ow_start, ow_end = win.ow_end;
        const float* dyp = dy + p * out_plane;
        float acc = 0.0f;
        for (I oh = oh_start; oh < oh_end; ++oh) {
            const I ph = pool_size(oh, g.stride_h, g.pad_h, g.kernel_h, g.height);
            for (I ow = ow_start; ow < ow_end; ++ow) {
                const I pw = pool_size(ow, g.stride_w, g.pad_w, g.kernel_w, g.width);
                acc += dyp[oh * g.out_w + ow] / static_cast<float>(ph * pw);
            }
        }
        dx[index] = acc;
    }
}

// Unpooling pass 1: every valid input claims its target with atomicMax(i + 1); the largest i
// (the last in scan order) wins, whatever order the threads run in.
__global__ void unpool_claim_kernel(const void* mask, int32_t type, int64_t planes,
                                    int64_t in_size, int64_t out_size,
                                    unsigned long long* winner, void* validated,
                                    int32_t validated_is_int64, unsigned long long* bad) {
    CONVNET_GRID_STRIDE(index, planes * in_size) {
        const int64_t p = index / in_size;
        const int64_t j = load_index(mask, type, index, out_size);
        if (validated != nullptr) {
            if (validated_is_int64) {
                static_cast<int64_t*>(validated)[index] = j;
            } else {
                static_cast<int32_t*>(validated)[index] = static_cast<int32_t>(j);
            }
        }
        if (j < 0) {
            report_bad(bad, index);
        } else {
            atomicMax(winner + p * out_size + j,
                      static_cast<unsigned long long>(index % in_size + 1));
        }
    }
}

// Pass 2: the winners write (each output position has at most one).
__global__ void unpool_write_kernel(const float* x, const void* mask, int32_t type,
                                    int64_t planes, int64_t in_size, int64_t out_size,
                                    const unsigned long long* winner, float* y) {
    CONVNET_GRID_STRIDE(index, planes * in_size) {
        const int64_t p = index / in_size;
        const int64_t j = load_index(mask, type, index, out_size);
        if (j >= 0 && winner[p * out_size + j] ==
                          static_cast<unsigned long long>(index % in_size + 1)) {
            y[p * out_size + j] = x[index];
        }
    }
}

__global__ void unpool_gather_kernel(const float* dy, const void* mask, int32_t type,
                                     int64_t planes, int64_t in_size, int64_t out_size,
                                     float* dx, unsigned long long* bad) {
    CONVNET_GRID_STRIDE(index, planes * in_size) {
        const int64_t p = index / in_size;
        const int64_t j = load_index(mask, type, index, out_size);
        if (j < 0) {
            if (bad != nullptr) report_bad(bad, index);
            dx[index] = 0.0f;
        } else {
            dx[index] = dy[p * out_size + j];
        }
    }
}

convnet_status check_window(const Window& g, const char* name, bool need_kernel) {
    CONVNET_REQUIRE(g.planes >= 0 && g.height >= 0 && g.width >= 0 && g.out_h >= 0 &&
                        g.out_w >= 0 && g.pad_h >= 0 && g.pad_w >= 0,
                    name, "negative size or pad");
    if (need_kernel) {
        CONVNET_REQUIRE(g.kernel_h >= 1 && g.kernel_w >= 1 && g.stride_h >= 1 &&
                            g.stride_w >= 1,
                        name, "kernel_size and stride must be >= 1");
    }
    return CONVNET_OK;
}

convnet_status report_position(convnet_status status, BadFlag& flag, int64_t* bad_position,
                               const char* name) {
    CONVNET_TRY(status);
    CONVNET_TRY(flag.read(bad_position, name));
    if (*bad_position >= 0) {
        return set_error(CONVNET_ERR_BAD_INDEX, "%s: invalid mask value at flat position %lld",
                         name, static_cast<long long>(*bad_position));
    }
    return CONVNET_OK;
}

}  // namespace pooling_impl
}  // namespace convnet

using namespace convnet::pooling_impl;

#define WINDOW                                                                             \
    Window g{planes,   height,   width,    out_h, out_w, kernel_h, kernel_w, stride_h,      \
             stride_w, pad_h,    pad_w}

extern "C" {

CONVNET_API convnet_status convnet_max_pool_forward(
    const float* x, float* y, void* argmax, int32_t argmax_is_int64, float* mask,
    int64_t planes, int64_t height, int64_t width, int64_t out_h, int64_t out_w,
    int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
    int64_t pad_w, void* stream) {
    clear_error();
    WINDOW;
    CONVNET_TRY(check_window(g, "convnet_max_pool_forward", true));
    const int64_t n = planes * out_h * out_w;
    cudaStream_t s = as_stream(stream);
    const char* name = "max_pool_forward";
    if (fits32(g)) {
        const WindowT<int32_t> g32 = narrow<int32_t>(g);
        if (argmax_is_int64) {
            return launch(name, n, s, max_forward_kernel<int64_t, int32_t>, x, y,
                          static_cast<int64_t*>(argmax), mask, g32);
        }
        return launch(name, n, s, max_forward_kernel<int32_t, int32_t>, x, y,
                      static_cast<int32_t*>(argmax), mask, g32);
    }
    if (argmax_is_int64) {
        return launch(name, n, s, max_forward_kernel<int64_t, int64_t>, x, y,
                      static_cast<int64_t*>(argmax), mask, g);
    }
    return launch(name, n, s, max_forward_kernel<int32_t, int64_t>, x, y,
                  static_cast<int32_t*>(argmax), mask, g);
}

CONVNET_API convnet_status convnet_max_pool_backward(
    const float* dy, const void* argmax, int32_t argmax_is_int64, float* dx,
    int64_t planes, int64_t height, int64_t width, int64_t out_h, int64_t out_w,
    int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
    int64_t pad_w, void* stream) {
    clear_error();
    WINDOW;
    cudaStream_t s = as_stream(stream);
    if (kernel_h == 0) {
        CONVNET_TRY(check_window(g, "convnet_max_pool_backward", false));
        if (argmax_is_int64) {
            return launch("max_pool_backward", planes, s, max_backward_plane_kernel<int64_t>,
                          dy, static_cast<const int64_t*>(argmax), dx, g);
        }
        return launch("max_pool_backward", planes, s, max_backward_plane_kernel<int32_t>, dy,
                      static_cast<const int32_t*>(argmax), dx, g);
    }
    CONVNET_TRY(check_window(g, "convnet_max_pool_backward", true));
    const int64_t n = planes * height * width;
    const char* name = "max_pool_backward";
    if (fits32(g)) {
        const WindowT<int32_t> g32 = narrow<int32_t>(g);
        if (argmax_is_int64) {
            return launch(name, n, s, max_backward_kernel<int64_t, int32_t>, dy,
                          static_cast<const int64_t*>(argmax), dx, g32);
        }
        return launch(name, n, s, max_backward_kernel<int32_t, int32_t>, dy,
                      static_cast<const int32_t*>(argmax), dx, g32);
    }
    if (argmax_is_int64) {
        return launch(name, n, s, max_backward_kernel<int64_t, int64_t>, dy,
                      static_cast<const int64_t*>(argmax), dx, g);
    }
    return launch(name, n, s, max_backward_kernel<int32_t, int64_t>, dy,
                  static_cast<const int32_t*>(argmax), dx, g);
}

CONVNET_API convnet_status convnet_ave_pool_forward(
    const float* x, float* y, int64_t planes, int64_t height, int64_t width, int64_t out_h,
    int64_t out_w, int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w,
    int64_t pad_h, int64_t pad_w, void* stream) {
    clear_error();
    WINDOW;
    CONVNET_TRY(check_window(g, "convnet_ave_pool_forward", true));
    const int64_t n = planes * out_h * out_w;
    if (fits32(g)) {
        return launch("ave_pool_forward", n, as_stream(stream), ave_forward_kernel<int32_t>, x,
                      y, narrow<int32_t>(g));
    }
    return launch("ave_pool_forward", n, as_stream(stream), ave_forward_kernel<int64_t>, x, y,
                  g);
}

CONVNET_API convnet_status convnet_ave_pool_backward(
    const float* dy, float* dx, int64_t planes, int64_t height, int64_t width, int64_t out_h,
    int64_t out_w, int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w,
    int64_t pad_h, int64_t pad_w, void* stream) {
    clear_error();
    WINDOW;
    CONVNET_TRY(check_window(g, "convnet_ave_pool_backward", true));
    const int64_t n = planes * height * width;
    if (fits32(g)) {
        return launch("ave_pool_backward", n, as_stream(stream), ave_backward_kernel<int32_t>,
                      dy, dx, narrow<int32_t>(g));
    }
    return launch("ave_pool_backward", n, as_stream(stream), ave_backward_kernel<int64_t>, dy,
                  dx, g);
}

CONVNET_API convnet_status convnet_unpool_forward(
    const float* x, const void* mask, int32_t mask_type, float* y, void* index,
    int32_t index_is_int64, int64_t planes, int64_t in_size, int64_t out_size,
    int64_t* bad_position, void* stream) {
    clear_error();
    const char* name = "convnet_unpool_forward";
    CONVNET_REQUIRE(bad_position != nullptr, name, "bad_position is NULL");
    *bad_position = -1;
    CONVNET_REQUIRE(planes >= 0 && in_size >= 0 && out_size >= 0, name, "negative size");
    CONVNET_REQUIRE(valid_dtype(mask_type), name, "unknown mask_type");
    cudaStream_t s = as_stream(stream);
    CONVNET_TRY(convnet_memset(y, 0, planes * out_size * sizeof(float), stream));
    if (planes * in_size == 0) return CONVNET_OK;
    Scratch winner(s);
    CONVNET_TRY(winner.allocate(planes * out_size * sizeof(unsigned long long), name));
    if (out_size > 0) {
        CONVNET_TRY(check_cuda(cudaMemsetAsync(winner.as<void>(), 0,
                                               planes * out_size * sizeof(unsigned long long),
                                               s),
                               name));
    }
    BadFlag bad(s);
    CONVNET_TRY(bad.init(name));
    const int64_t n = planes * in_size;
    convnet_status status = launch(name, n, s, unpool_claim_kernel, mask, mask_type, planes,
                                   in_size, out_size, winner.as<unsigned long long>(), index,
                                   index_is_int64, bad.device());
    if (status == CONVNET_OK) {
        status = launch(name, n, s, unpool_write_kernel, x, mask, mask_type, planes, in_size,
                        out_size, static_cast<const unsigned long long*>(
                                      winner.as<unsigned long long>()),
                        y);
    }
    return report_position(status, bad, bad_position, name);
}

CONVNET_API convnet_status convnet_unpool_backward(
    const float* dy, const void* mask, int32_t mask_type, float* dx, int64_t planes,
    int64_t in_size, int64_t out_size, int64_t* bad_position, void* stream) {
    clear_error();
    const char* name = "convnet_unpool_backward";
    if (bad_position != nullptr) *bad_position = -1;
    CONVNET_REQUIRE(planes >= 0 && in_size >= 0 && out_size >= 0, name, "negative size");
    CONVNET_REQUIRE(valid_dtype(mask_type), name, "unknown mask_type");
    if (planes * in_size == 0) return CONVNET_OK;
    cudaStream_t s = as_stream(stream);
    if (bad_position == nullptr) {
        // a mask forward validated: no flag, no wait (invalid entries give 0)
        return launch(name, planes * in_size, s, unpool_gather_kernel, dy, mask, mask_type,
                      planes, in_size, out_size, dx, static_cast<unsigned long long*>(nullptr));
    }
    BadFlag bad(s);
    CONVNET_TRY(bad.init(name));
    convnet_status status = launch(name, planes * in_size, s, unpool_gather_kernel, dy, mask,
                                   mask_type, planes, in_size, out_size, dx, bad.device());
    return report_position(status, bad, bad_position, name);
}

}  // extern "C"
