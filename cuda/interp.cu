// Interp: bilinear and nearest resampling through per-axis tables (built by the layer).
// Backward is the exact adjoint, computed separably without atomics: columns first, one
// thread per output row owning its scratch row; then rows, one thread per input column
// owning that column of dx. Deterministic.
#include "common.cuh"

using namespace convnet;

namespace convnet {
namespace interp_impl {

struct Plane {
    int64_t planes, in_h, in_w, out_h, out_w;
};

__global__ void bilinear_forward_kernel(const float* x, float* y, Plane g, const int64_t* rows,
                                        const float* rw, const int64_t* cols,
                                        const float* cw) {
    const int64_t n = g.planes * g.out_h * g.out_w;
    CONVNET_GRID_STRIDE(index, n) {
        const int64_t w = index % g.out_w;
        const int64_t h = (index / g.out_w) % g.out_h;
        const int64_t p = index / (g.out_w * g.out_h);
        const int64_t r0 = rows[2 * h], r1 = rows[2 * h + 1];
        const int64_t c0 = cols[2 * w], c1 = cols[2 * w + 1];
        float value = 0.0f;
        // the layer's tables are in range; the test keeps a bad table from reading outside
        if (r0 >= 0 && r0 < g.in_h && r1 >= 0 && r1 < g.in_h && c0 >= 0 && c0 < g.in_w &&
            c1 >= 0 && c1 < g.in_w) {
            const float* plane = x + p * g.in_h * g.in_w;
            const float* x0 = plane + r0 * g.in_w;
            const float* x1 = plane + r1 * g.in_w;
            const float a0 = cw[2 * w], a1 = cw[2 * w + 1];
            value = rw[2 * h] * (a0 * x0[c0] + a1 * x0[c1]) +
                    rw[2 * h + 1] * (a0 * x1[c0] + a1 * x1[c1]);
        }
        y[index] = value;
    }
}

template <typename T>
__global__ void nearest_forward_kernel(const T* x, T* y, Plane g, const int64_t* rows,
                                       const int64_t* cols) {
    const int64_t n = g.planes * g.out_h * g.out_w;
    CONVNET_GRID_STRIDE(index, n) {
        const int64_t w = index % g.out_w;
        const int64_t h = (index / g.out_w) % g.out_h;
        const int64_t p = index / (g.out_w * g.out_h);
        const int64_t r = rows[h], c = cols[w];
        if (r >= 0 && r < g.in_h && c >= 0 && c < g.in_w) {
            y[index] = x[(p * g.in_h + r) * g.in_w + c];
        } else {
            y[index] = T(0);
        }
    }
}

// tmp (P, OH, in_w): tmp[p, h, :] = sum over w of col weights * dy[p, h, w]; one thread
// per (p, h). taps: 2 (bilinear) or 1 (nearest); cw NULL means weight 1.
__global__ void adjoint_cols_kernel(const float* dy, float* tmp, Plane g, const int64_t* cols,
                                    const float* cw, int taps) {
    CONVNET_GRID_STRIDE(row, g.planes * g.out_h) {
        float* t = tmp + row * g.in_w;
        const float* d = dy + row * g.out_w;
        for (int64_t j = 0; j < g.in_w; ++j) t[j] = 0.0f;
        for (int64_t w = 0; w < g.out_w; ++w) {
            for (int k = 0; k < taps; ++k) {
                const int64_t c = cols[taps * w + k];
                if (c >= 0 && c < g.in_w) {
                    t[c] += (cw != nullptr ? cw[taps * w + k] : 1.0f) * d[w];
                }
            }
        }
    }
}

// dx (P, in_h, in_w): dx[p, :, j] = sum over h of row weights * tmp[p, h, j]; one thread per
// (p, j).
__global__ void adjoint_rows_kernel(const float* tmp, float* dx, Plane g, const int64_t* rows,
                                    const float* rw, int taps) {
    CONVNET_GRID_STRIDE(index, g.planes * g.in_w) {
        const int64_t j = index % g.in_w;
        const int64_t p = index / g.in_w;
        float* out = dx + p * g.in_h * g.in_w + j;
        const float* t = tmp + p * g.out_h * g.in_w + j;
        for (int64_t i = 0; i < g.in_h; ++i) out[i * g.in_w] = 0.0f;
        for (int64_t h = 0; h < g.out_h; ++h) {
            const float v = t[h * g.in_w];
            for (int k = 0; k < taps; ++k) {
                const int64_t r = rows[taps * h + k];
                if (r >= 0 && r < g.in_h) {
                    out[r * g.in_w] += (rw != nullptr ? rw[taps * h + k] : 1.0f) * v;
                }
            }
        }
    }
}

convnet_status check_plane(const Plane& g, const char* name) {
    CONVNET_REQUIRE(g.planes >= 0 && g.in_h >= 0 && g.in_w >= 0 && g.out_h >= 0 &&
                        g.out_w >= 0,
                    name, "negative size");
    return CONVNET_OK;
}

convnet_status adjoint(const float* dy, float* dx, const Plane& g, const int64_t* rows,
                       const float* rw, const int64_t* cols, const float* cw, int taps,
                       cudaStream_t stream, const char* name) {
    CONVNET_TRY(check_plane(g, name));
    if (g.planes * g.in_h * g.in_w == 0) return CONVNET_OK;
    Scratch tmp(stream);
    CONVNET_TRY(tmp.allocate(g.planes * g.out_h * g.in_w * sizeof(float), name));
    CONVNET_TRY(launch(name, g.planes * g.out_h, stream, adjoint_cols_kernel, dy,
                       tmp.as<float>(), g, cols, cw, taps));
    return launch(name, g.planes * g.in_w, stream, adjoint_rows_kernel,
                  static_cast<const float*>(tmp.as<float>()), dx, g, rows, rw, taps);
}

}  // namespace interp_impl
}  // namespace convnet

using namespace convnet::interp_impl;

extern "C" {

CONVNET_API convnet_status convnet_interp_bilinear_forward(
    const float* x, float* y, int64_t planes, int64_t in_h, int64_t in_w, int64_t out_h,
    int64_t out_w, const int64_t* rows, const float* row_weights, const int64_t* cols,
    const float* col_weights, void* stream) {
    clear_error();
    Plane g{planes, in_h, in_w, out_h, out_w};
    CONVNET_TRY(check_plane(g, "convnet_interp_bilinear_forward"));
    return launch("interp_bilinear_forward", planes * out_h * out_w, as_stream(stream),
                  bilinear_forward_kernel, x, y, g, rows, row_weights, cols, col_weights);
}

CONVNET_API convnet_status convnet_interp_bilinear_backward(
    const float* dy, float* dx, int64_t planes, int64_t in_h, int64_t in_w, int64_t out_h,
    int64_t out_w, const int64_t* rows, const float* row_weights, const int64_t* cols,
    const float* col_weights, void* stream) {
    clear_error();
    Plane g{planes, in_h, in_w, out_h, out_w};
    return adjoint(dy, dx, g, rows, row_weights, cols, col_weights, 2, as_stream(stream),
                   "convnet_interp_bilinear_backward");
}

CONVNET_API convnet_status convnet_interp_nearest_forward(
    const void* x, void* y, int64_t itemsize, int64_t planes, int64_t in_h, int64_t in_w,
    int64_t out_h, int64_t out_w, const int64_t* rows, const int64_t* cols, void* stream) {
    clear_error();
    const char* name = "convnet_interp_nearest_forward";
    Plane g{planes, in_h, in_w, out_h, out_w};
    CONVNET_TRY(check_plane(g, name));
    const int64_t n = planes * out_h * out_w;
    cudaStream_t s = as_stream(stream);
    switch (itemsize) {
        case 1:
            return launch(name, n, s, nearest_forward_kernel<uint8_t>,
                          static_cast<const uint8_t*>(x), static_cast<uint8_t*>(y), g, rows,
                          cols);
        case 2:
            return launch(name, n, s, nearest_forward_kernel<uint16_t>,
                          static_cast<const uint16_t*>(x), static_cast<uint16_t*>(y), g, rows,
                          cols);
        case 4:
            return launch(name, n, s, nearest_forward_kernel<uint32_t>,
                          static_cast<const uint32_t*>(x), static_cast<uint32_t*>(y), g, rows,
                          cols);
        case 8:
            return launch(name, n, s, nearest_forward_kernel<uint64_t>,
                          static_cast<const uint64_t*>(x), static_cast<uint64_t*>(y), g, rows,
                          cols);
        default: break;
    }
    return set_error(CONVNET_ERR_INVALID_ARGUMENT, "%s: itemsize %lld is not 1, 2, 4 or 8",
                     name, static_cast<long long>(itemsize));
}

CONVNET_API convnet_status convnet_interp_nearest_backward(
    const float* dy, float* dx, int64_t planes, int64_t in_h, int64_t in_w, int64_t out_h,
    int64_t out_w, const int64_t* rows, const int64_t* cols, void* stream) {
    clear_error();
    Plane g{planes, in_h, in_w, out_h, out_w};
    return adjoint(dy, dx, g, rows, nullptr, cols, nullptr, 1, as_stream(stream),
                   "convnet_interp_nearest_backward");
}

}  // extern "C"
