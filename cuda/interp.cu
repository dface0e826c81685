// Interp: bilinear and nearest resampling through per-axis tables (built by the layer).
// Backward is the exact adjoint, computed separably as gathers: the tables are inverted on
// the device (for each input column / row, the output taps that read it), then one thread
// per scratch element (columns) and per dx element (rows) sums its taps in a fixed order.
// Deterministic, no atomics, no read-modify-write.
#include "common.cuh"

using namespace convnet;

namespace convnet {
namespace interp_impl {

// Sizes in the kernels' index type I: int32_t when x, y and the scratch fit (32-bit index
// decompositions), else int64_t.
template <typename I>
struct PlaneT {
    I planes, in_h, in_w, out_h, out_w;
};
using Plane = PlaneT<int64_t>;

inline bool fits32(const Plane& g) {
    const int64_t limit = 2147483647LL;
    return g.planes * g.in_h * g.in_w < limit && g.planes * g.out_h * g.out_w < limit &&
           g.planes * g.out_h * g.in_w < limit;
}

inline PlaneT<int32_t> narrow(const Plane& g) {
    return PlaneT<int32_t>{static_cast<int32_t>(g.planes), static_cast<int32_t>(g.in_h),
                           static_cast<int32_t>(g.in_w), static_cast<int32_t>(g.out_h),
                           static_cast<int32_t>(g.out_w)};
}

// Launch kernel<int32_t> with the narrowed sizes when they fit, else kernel<int64_t>.
#define CONVNET_INTERP_LAUNCH(name, n, stream, kernel, g, ...)                              \
    (fits32(g) ? launch((name), (n), (stream), kernel<int32_t>, __VA_ARGS__, narrow(g))     \
               : launch((name), (n), (stream), kernel<int64_t>, __VA_ARGS__, (g)))

template <typename I>
__global__ void bilinear_forward_kernel(const float* x, float* y, const int64_t* rows,
                                        const float* rw, const int64_t* cols, const float* cw,
                                        PlaneT<I> g) {
    const I n = g.planes * g.out_h * g.out_w;
    CONVNET_GRID_STRIDE(index64, n) {
        const I index = static_cast<I>(index64);
        const I w = index % g.out_w;
        const I h = (index / g.out_w) % g.out_h;
        const I p = index / (g.out_w * g.out_h);
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

template <typename T, typename I>
__global__ void nearest_forward_kernel(const T* x, T* y, const int64_t* rows,
                                       const int64_t* cols, PlaneT<I> g) {
    const I n = g.planes * g.out_h * g.out_w;
    CONVNET_GRID_STRIDE(index64, n) {
        const I index = static_cast<I>(index64);
        const I w = index % g.out_w;
        const I h = (index / g.out_w) % g.out_h;
        const I p = index / (g.out_w * g.out_h);
        const int64_t r = rows[h], c = cols[w];
        if (r >= 0 && r < g.in_h && c >= 0 && c < g.in_w) {
            y[index] = x[(p * g.in_h + r) * g.in_w + c];
        } else {
            y[index] = T(0);
        }
    }
}

// The inverse of a table (out entries of `taps` source indices each, into [0, in)): for
// each source index j, the table entries e = out_index * taps + k that name it, in increasing
// e, as entries[offsets[j] : offsets[j + 1]]. Built on the device (the tables are the same
// for every plane): a count per j, a prefix sum, a fill per j. Entries out of range are in no
// list (they are skipped, as the forward pass skips them).
__global__ void inverse_count_kernel(const int64_t* table, int64_t entries, int64_t in,
                                     int64_t* offsets) {
    CONVNET_GRID_STRIDE(j, in) {
        int64_t count = 0;
        for (int64_t e = 0; e < entries; ++e) count += table[e] == j ? 1 : 0;
        offsets[j + 1] = count;
        if (j == 0) offsets[0] = 0;
    }
}

__global__ void inverse_scan_kernel(int64_t* offsets, int64_t in) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        for (int64_t j = 1; j <= in; ++j) offsets[j] += offsets[j - 1];
    }
}

__global__ void inverse_fill_kernel(const int64_t* table, int64_t entries, int64_t in,
                                    const int64_t* offsets, int64_t* list) {
    CONVNET_GRID_STRIDE(j, in) {
        int64_t t = offsets[j];
        for (int64_t e = 0; e < entries; ++e) {
            if (table[e] == j) list[t++] = e;
        }
    }
}

// Columns as a gather: tmp[p, h, j] = sum over the entries e naming column j of
// cw[e] * dy[p, h, e / taps] (cw NULL: weight 1), in increasing e: the order (and so the
// rounding) of the column-by-column accumulation, with no read-modify-write.
template <typename I>
__global__ void adjoint_cols_kernel(const float* dy, float* tmp, const int64_t* offsets,
                                    const int64_t* list, const float* cw, int taps, PlaneT<I> g) {
    CONVNET_GRID_STRIDE(index64, g.planes * g.out_h * g.in_w) {
        const I index = static_cast<I>(index64);
        const I j = index % g.in_w;
        const float* d = dy + (index / g.in_w) * g.out_w;
        float acc = 0.0f;
        for (int64_t t = offsets[j]; t < offsets[j + 1]; ++t) {
            const int64_t e = list[t];
            acc += (cw != nullptr ? cw[e] : 1.0f) * d[static_cast<I>(e) / taps];
        }
        tmp[index] = acc;
    }
}

// Rows as a gather: dx[p, i, j] = sum over the entries e naming row i of
// rw[e] * tmp[p, e / taps, j]; consecutive threads read consecutive j (coalesced).
template <typename I>
__global__ void adjoint_rows_kernel(const float* tmp, float* dx, const int64_t* offsets,
                                    const int64_t* list, const float* rw, int taps, PlaneT<I> g) {
    CONVNET_GRID_STRIDE(index64, g.planes * g.in_h * g.in_w) {
        const I index = static_cast<I>(index64);
        const I j = index % g.in_w;
        const I i = (index / g.in_w) % g.in_h;
        const I p = index / (g.in_w * g.in_h);
        const float* t0 = tmp + p * g.out_h * g.in_w + j;
        float acc = 0.0f;
        for (int64_t t = offsets[i]; t < offsets[i + 1]; ++t) {
            const int64_t e = list[t];
            acc += (rw != nullptr ? rw[e] : 1.0f) * t0[(static_cast<I>(e) / taps) * g.in_w];
        }
        dx[index] = acc;
    }
}

struct Inverse {
    const int64_t* offsets;
    const int64_t* list;
};

convnet_status build_inverse(const int64_t* table, int64_t out, int taps, int64_t in,
                             Scratch& memory, Inverse* inverse, cudaStream_t stream,
                             const char* name) {
    const int64_t entries = out * taps;
    CONVNET_TRY(memory.allocate((in + 1 + entries) * static_cast<int64_t>(sizeof(int64_t)),
                                name));
    int64_t* offsets = memory.as<int64_t>();
    int64_t* list = offsets + in + 1;
    CONVNET_TRY(launch(name, in, stream, inverse_count_kernel, table, entries, in, offsets));
    CONVNET_TRY(launch_blocks(name, 1, stream, inverse_scan_kernel, offsets, in));
    CONVNET_TRY(launch(name, in, stream, inverse_fill_kernel, table, entries, in,
                       static_cast<const int64_t*>(offsets), list));
    *inverse = Inverse{offsets, list};
    return CONVNET_OK;
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
    Scratch tmp(stream), col_inverse(stream), row_inverse(stream);
    Inverse by_col, by_row;
    CONVNET_TRY(build_inverse(cols, g.out_w, taps, g.in_w, col_inverse, &by_col, stream, name));
    CONVNET_TRY(build_inverse(rows, g.out_h, taps, g.in_h, row_inverse, &by_row, stream, name));
    CONVNET_TRY(tmp.allocate(g.planes * g.out_h * g.in_w * sizeof(float), name));
    CONVNET_TRY(CONVNET_INTERP_LAUNCH(name, g.planes * g.out_h * g.in_w, stream,
                                      adjoint_cols_kernel, g, dy, tmp.as<float>(),
                                      by_col.offsets, by_col.list, cw, taps));
    return CONVNET_INTERP_LAUNCH(name, g.planes * g.in_h * g.in_w, stream, adjoint_rows_kernel,
                                 g, static_cast<const float*>(tmp.as<float>()), dx,
                                 by_row.offsets, by_row.list, rw, taps);
}

template <typename T>
convnet_status nearest_typed(const char* name, int64_t n, cudaStream_t s, const void* x,
                             void* y, const int64_t* rows, const int64_t* cols, const Plane& g) {
    const T* src = static_cast<const T*>(x);
    T* dst = static_cast<T*>(y);
    if (fits32(g)) {
        return launch(name, n, s, nearest_forward_kernel<T, int32_t>, src, dst, rows, cols,
                      narrow(g));
    }
    return launch(name, n, s, nearest_forward_kernel<T, int64_t>, src, dst, rows, cols, g);
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
    return CONVNET_INTERP_LAUNCH("interp_bilinear_forward", planes * out_h * out_w,
                                 as_stream(stream), bilinear_forward_kernel, g, x, y, rows,
                                 row_weights, cols, col_weights);
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
        case 1: return nearest_typed<uint8_t>(name, n, s, x, y, rows, cols, g);
        case 2: return nearest_typed<uint16_t>(name, n, s, x, y, rows, cols, g);
        case 4: return nearest_typed<uint32_t>(name, n, s, x, y, rows, cols, g);
        case 8: return nearest_typed<uint64_t>(name, n, s, x, y, rows, cols, g);
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
