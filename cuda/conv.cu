// Convolution primitives: im2col / col2im and the gemm wrappers for forward, backward-data
// and backward-weight, plus the bias gradient. Images go in runs (as many as the workspace
// holds): one im2col / col2im launch per run and one strided-batched sgemm per group.
// Deconvolution calls the same three with the roles swapped (convnet/layers/conv.py).
#include <stdlib.h>

#include "common.cuh"

using namespace convnet;

namespace convnet {
namespace conv_impl {

// The geometry in the index type I of the kernel: int32_t when every offset fits (32-bit
// divides and multiplies, several times cheaper on the GPU), else int64_t.
template <typename I>
struct GeometryT {
    I channels, height, width, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
        dilation_h, dilation_w, out_h, out_w;
};
using Geometry = GeometryT<int64_t>;

template <typename I>
GeometryT<I> narrow(const Geometry& g) {
    return GeometryT<I>{static_cast<I>(g.channels), static_cast<I>(g.height),
                        static_cast<I>(g.width),    static_cast<I>(g.kernel_h),
                        static_cast<I>(g.kernel_w), static_cast<I>(g.stride_h),
                        static_cast<I>(g.stride_w), static_cast<I>(g.pad_h),
                        static_cast<I>(g.pad_w),    static_cast<I>(g.dilation_h),
                        static_cast<I>(g.dilation_w), static_cast<I>(g.out_h),
                        static_cast<I>(g.out_w)};
}

// One thread per (image, c, oh, ow) writes its kh*kw column entries; image i reads
// im + i * C*H*W and writes col + i * C*kh*kw*OH*OW (a run of images in one launch).
template <typename I>
__global__ void im2col_kernel(const float* im, GeometryT<I> g, I images, float* col) {
    const I spatial = g.out_h * g.out_w;
    const I per_image = g.channels * spatial;
    const I n = images * per_image;
    CONVNET_GRID_STRIDE(index64, n) {
        const I index = static_cast<I>(index64);
        const I image = index / per_image;
        const I rest = index - image * per_image;
        const I ow = rest % g.out_w;
        const I oh = (rest / g.out_w) % g.out_h;
        const I c = rest / spatial;
        const I h0 = oh * g.stride_h - g.pad_h;
        const I w0 = ow * g.stride_w - g.pad_w;
        const float* plane = im + (image * g.channels + c) * g.height * g.width;
        float* out = col + image * g.channels * g.kernel_h * g.kernel_w * spatial +
                     c * g.kernel_h * g.kernel_w * spatial + oh * g.out_w + ow;
        for (I i = 0; i < g.kernel_h; ++i) {
            const I h = h0 + i * g.dilation_h;
            for (I j = 0; j < g.kernel_w; ++j) {
                const I w = w0 + j * g.dilation_w;
                *out = (h >= 0 && h < g.height && w >= 0 && w < g.width)
                           ? plane[h * g.width + w]
                           : 0.0f;
                out += spatial;
            }
        }
    }
}

// One thread per image pixel sums the column entries that read it (Caffe's col2im_gpu), for
// a run of images laid out as im2col_kernel writes them.
template <typename I>
__global__ void col2im_kernel(const float* col, GeometryT<I> g, I images, float* im) {
    const I spatial = g.out_h * g.out_w;
    const I per_image = g.channels * g.height * g.width;
    const I n = images * per_image;
    const I extent_h = (g.kernel_h - 1) * g.dilation_h + 1;
    const I extent_w = (g.kernel_w - 1) * g.dilation_w + 1;
    CONVNET_GRID_STRIDE(index64, n) {
        const I index = static_cast<I>(index64);
        const I image = index / per_image;
        const I rest = index - image * per_image;
        const I w_im = rest % g.width + g.pad_w;
        const I h_im = (rest / g.width) % g.height + g.pad_h;
        const I c = rest / (g.width * g.height);
        const float* icol = col + image * g.channels * g.kernel_h * g.kernel_w * spatial;
        const I oh_start = h_im < extent_h ? 0 : (h_im - extent_h) / g.stride_h + 1;
        const I ow_start = w_im < extent_w ? 0 : (w_im - extent_w) / g.stride_w + 1;
        const I oh_end = min(h_im / g.stride_h + 1, g.out_h);
        const I ow_end = min(w_im / g.stride_w + 1, g.out_w);
        float acc = 0.0f;
        for (I oh = oh_start; oh < oh_end; ++oh) {
            I i = h_im - oh * g.stride_h;
            if (i % g.dilation_h != 0) continue;
            i /= g.dilation_h;
            for (I ow = ow_start; ow < ow_end; ++ow) {
                I j = w_im - ow * g.stride_w;
                if (j % g.dilation_w != 0) continue;
                j /= g.dilation_w;
                acc += icol[((c * g.kernel_h + i) * g.kernel_w + j) * spatial + oh * g.out_w + ow];
            }
        }
        im[index] = acc;
    }
}

// weight (n,) += sum over j < count of partial[j * n + i], j in order (deterministic).
__global__ void sum_partials_kernel(const float* partial, int64_t count, int64_t n,
                                    float* weight) {
    CONVNET_GRID_STRIDE(i, n) {
        float acc = 0.0f;
        for (int64_t j = 0; j < count; ++j) acc += partial[j * n + i];
        weight[i] += acc;
    }
}

// y (N, C, S) += bias[c]
template <typename I>
__global__ void add_bias_kernel(float* y, const float* bias, I channels, I spatial, I n) {
    CONVNET_GRID_STRIDE(i, n) { y[i] += bias[(static_cast<I>(i) / spatial) % channels]; }
}

convnet_status add_bias(const char* name, float* y, const float* bias, int64_t channels,
                        int64_t spatial, int64_t n, cudaStream_t s) {
    if (n < 2147483647LL) {
        return launch(name, n, s, add_bias_kernel<int32_t>, y, bias,
                      static_cast<int32_t>(channels), static_cast<int32_t>(spatial),
                      static_cast<int32_t>(n));
    }
    return launch(name, n, s, add_bias_kernel<int64_t>, y, bias, channels, spatial, n);
}

struct DyTerm {
    const float* dy;
    int64_t channels, spatial;
    __device__ void operator()(int64_t c, int64_t j, double* acc) const {
        acc[0] += channel_at(dy, j, c, channels, spatial);
    }
};

struct AddToBias {
    float* dbias;
    __device__ void operator()(int64_t c, const double* total) const {
        dbias[c] += static_cast<float>(total[0]);
    }
};

convnet_status check_geometry(const Geometry& g, const char* name) {
    CONVNET_REQUIRE(g.channels >= 0 && g.height >= 0 && g.width >= 0 && g.out_h >= 0 &&
                        g.out_w >= 0 && g.pad_h >= 0 && g.pad_w >= 0,
                    name, "negative size or pad");
    CONVNET_REQUIRE(g.kernel_h >= 1 && g.kernel_w >= 1 && g.stride_h >= 1 && g.stride_w >= 1 &&
                        g.dilation_h >= 1 && g.dilation_w >= 1,
                    name, "kernel_size, stride and dilation must be >= 1");
    return CONVNET_OK;
}

Geometry make_geometry(int64_t channels, int64_t height, int64_t width, int64_t kernel_h,
                       int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                       int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t out_h,
                       int64_t out_w) {
    return Geometry{channels, height,   width,      kernel_h,   kernel_w, stride_h, stride_w,
                    pad_h,    pad_w,    dilation_h, dilation_w, out_h,    out_w};
}

constexpr int64_t kInt32Limit = 2147483647LL;

// The larger of the run's image and column sizes: every offset the kernels form is below it.
int64_t largest_offset(const Geometry& g, int64_t images) {
    const int64_t cols = images * g.channels * g.kernel_h * g.kernel_w * g.out_h * g.out_w;
    const int64_t ims = images * g.channels * g.height * g.width;
    return cols > ims ? cols : ims;
}

convnet_status im2col(const float* im, const Geometry& g, int64_t images, float* col,
                      cudaStream_t stream) {
    const int64_t n = images * g.channels * g.out_h * g.out_w;
    if (largest_offset(g, images) < kInt32Limit) {
        return launch("im2col", n, stream, im2col_kernel<int32_t>, im, narrow<int32_t>(g),
                      static_cast<int32_t>(images), col);
    }
    return launch("im2col", n, stream, im2col_kernel<int64_t>, im, g, images, col);
}

convnet_status col2im(const float* col, const Geometry& g, int64_t images, float* im,
                      cudaStream_t stream) {
    const int64_t n = images * g.channels * g.height * g.width;
    if (largest_offset(g, images) < kInt32Limit) {
        return launch("col2im", n, stream, col2im_kernel<int32_t>, col, narrow<int32_t>(g),
                      static_cast<int32_t>(images), im);
    }
    return launch("col2im", n, stream, col2im_kernel<int64_t>, col, g, images, im);
}

// Images per batched GEMM: as many as fit CONVNET_CUDA_CONV_WORKSPACE bytes (default
// 256 MiB) of column buffer (+ per-image weight-gradient partials), at least 1. It depends
// on the shapes and that setting only, so results are deterministic run to run.
int64_t images_per_chunk(int64_t batch, int64_t per_image_floats) {
    long long budget = 256LL << 20;
    const char* text = getenv("CONVNET_CUDA_CONV_WORKSPACE");
    if (text != nullptr && *text != '\0') budget = strtoll(text, nullptr, 10);
    const int64_t per_image = per_image_floats * static_cast<int64_t>(sizeof(float));
    int64_t chunk = per_image > 0 ? budget / per_image : batch;
    if (chunk > batch) chunk = batch;
    return chunk < 1 ? 1 : chunk;
}

// Checks and sizes shared by the three primitives.
struct ConvPlan {
    Geometry g;
    int64_t batch, num_output, group;
    int64_t cg, mg, k, spatial, in_plane;
    bool direct;   // 1x1, stride 1, pad 0: the image itself is the column matrix
};

convnet_status plan(ConvPlan* p, const char* name, int64_t batch, int64_t channels,
                    int64_t height, int64_t width, int64_t num_output, int64_t out_h,
                    int64_t out_w, int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
                    int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                    int64_t dilation_w, int64_t group) {
    p->g = make_geometry(channels, height, width, kernel_h, kernel_w, stride_h, stride_w,
                         pad_h, pad_w, dilation_h, dilation_w, out_h, out_w);
    CONVNET_TRY(check_geometry(p->g, name));
    CONVNET_REQUIRE(batch >= 0 && num_output >= 0, name, "negative batch or num_output");
    CONVNET_REQUIRE(group >= 1 && channels % group == 0 && num_output % group == 0, name,
                    "group must be >= 1 and divide the input and output channels");
    p->batch = batch;
    p->num_output = num_output;
    p->group = group;
    p->cg = channels / group;
    p->mg = num_output / group;
    p->k = p->cg * kernel_h * kernel_w;
    p->spatial = out_h * out_w;
    p->in_plane = height * width;
    p->direct = kernel_h == 1 && kernel_w == 1 && stride_h == 1 && stride_w == 1 &&
                pad_h == 0 && pad_w == 0 && out_h == height && out_w == width;
    return CONVNET_OK;
}

// The column matrices of `count` images: the images themselves (direct), the caller's col
// (one image), or a scratch for the run.
struct Columns {
    float* data;
    int64_t image_stride;
};

convnet_status columns_for(const ConvPlan& p, int64_t count, float* col, float* input,
                           Scratch& scratch, const char* name, Columns* out) {
    if (p.direct) {
        *out = Columns{input, p.g.channels * p.in_plane};
        return CONVNET_OK;
    }
    const int64_t per_image = p.group * p.k * p.spatial;
    if (count == 1) {
        *out = Columns{col, per_image};
        return CONVNET_OK;
    }
    if (scratch.as<float>() == nullptr) {
        CONVNET_TRY(scratch.allocate(count * per_image * static_cast<int64_t>(sizeof(float)),
                                     name));
    }
    *out = Columns{scratch.as<float>(), per_image};
    return CONVNET_OK;
}

#define CONV_PLAN(name)                                                                       \
    ConvPlan p;                                                                               \
    CONVNET_TRY(plan(&p, name, batch, channels, height, width, num_output, out_h, out_w,      \
                     kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,        \
                     dilation_w, group))

}  // namespace conv_impl
}  // namespace convnet

using namespace convnet::conv_impl;

extern "C" {

CONVNET_API convnet_status convnet_im2col(const float* im, int64_t channels, int64_t height,
                                          int64_t width, int64_t kernel_h, int64_t kernel_w,
                                          int64_t stride_h, int64_t stride_w, int64_t pad_h,
                                          int64_t pad_w, int64_t dilation_h,
                                          int64_t dilation_w, int64_t out_h, int64_t out_w,
                                          float* col, void* stream) {
    clear_error();
    Geometry g = make_geometry(channels, height, width, kernel_h, kernel_w, stride_h, stride_w,
                               pad_h, pad_w, dilation_h, dilation_w, out_h, out_w);
    CONVNET_TRY(check_geometry(g, "convnet_im2col"));
    return im2col(im, g, 1, col, as_stream(stream));
}

CONVNET_API convnet_status convnet_col2im(const float* col, int64_t channels, int64_t height,
                                          int64_t width, int64_t kernel_h, int64_t kernel_w,
                                          int64_t stride_h, int64_t stride_w, int64_t pad_h,
                                          int64_t pad_w, int64_t dilation_h,
                                          int64_t dilation_w, int64_t out_h, int64_t out_w,
                                          float* im, void* stream) {
    clear_error();
    Geometry g = make_geometry(channels, height, width, kernel_h, kernel_w, stride_h, stride_w,
                               pad_h, pad_w, dilation_h, dilation_w, out_h, out_w);
    CONVNET_TRY(check_geometry(g, "convnet_col2im"));
    return col2im(col, g, 1, im, as_stream(stream));
}

CONVNET_API convnet_status convnet_conv_forward(
    const float* x, const float* weight, const float* bias, float* y, float* col,
    int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t num_output,
    int64_t out_h, int64_t out_w, int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
    int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
    int64_t group, void* stream) {
    clear_error();
    const char* name = "convnet_conv_forward";
    CONV_PLAN(name);
    CONVNET_REQUIRE(p.direct || col != nullptr, name, "col is NULL");
    cudaStream_t s = as_stream(stream);
    const int64_t chunk = images_per_chunk(batch, p.direct ? 0 : group * p.k * p.spatial);
    Scratch scratch(s);
    for (int64_t n0 = 0; n0 < batch; n0 += chunk) {
        const int64_t count = batch - n0 < chunk ? batch - n0 : chunk;
        const float* xs = x + n0 * channels * p.in_plane;
        Columns cols;
        CONVNET_TRY(columns_for(p, count, col, const_cast<float*>(xs), scratch, name, &cols));
        if (!p.direct) CONVNET_TRY(im2col(xs, p.g, count, cols.data, s));
        float* ys = y + n0 * num_output * p.spatial;
        for (int64_t gi = 0; gi < group; ++gi) {
            // y[i, g] = W[g] col[i, g] for the run's images i, in one call
            CONVNET_TRY(cublas_sgemm_strided_batched_row_major(
                0, 0, p.mg, p.spatial, p.k, 1.0f, weight + gi * p.mg * p.k, p.k, 0,
                cols.data + gi * p.k * p.spatial, p.spatial, cols.image_stride, 0.0f,
                ys + gi * p.mg * p.spatial, p.spatial, num_output * p.spatial, count, s));
        }
    }
    if (bias != nullptr) {
        const int64_t total = batch * num_output * p.spatial;
        CONVNET_TRY(add_bias("conv bias", y, bias, num_output, p.spatial, total, s));
    }
    return CONVNET_OK;
}

CONVNET_API convnet_status convnet_conv_backward_data(
    const float* y, const float* weight, const float* bias, float* x, float* col,
    int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t num_output,
    int64_t out_h, int64_t out_w, int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
    int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
    int64_t group, void* stream) {
    clear_error();
    const char* name = "convnet_conv_backward_data";
    CONV_PLAN(name);
    CONVNET_REQUIRE(p.direct || col != nullptr, name, "col is NULL");
    cudaStream_t s = as_stream(stream);
    const int64_t chunk = images_per_chunk(batch, p.direct ? 0 : group * p.k * p.spatial);
    Scratch scratch(s);
    for (int64_t n0 = 0; n0 < batch; n0 += chunk) {
        const int64_t count = batch - n0 < chunk ? batch - n0 : chunk;
        float* xs = x + n0 * channels * p.in_plane;
        const float* ys = y + n0 * num_output * p.spatial;
        Columns cols;
        CONVNET_TRY(columns_for(p, count, col, xs, scratch, name, &cols));
        for (int64_t gi = 0; gi < group; ++gi) {
            // col[i, g] = W[g]^T y[i, g]
            CONVNET_TRY(cublas_sgemm_strided_batched_row_major(
                1, 0, p.k, p.spatial, p.mg, 1.0f, weight + gi * p.mg * p.k, p.k, 0,
                ys + gi * p.mg * p.spatial, p.spatial, num_output * p.spatial, 0.0f,
                cols.data + gi * p.k * p.spatial, p.spatial, cols.image_stride, count, s));
        }
        if (!p.direct) CONVNET_TRY(col2im(cols.data, p.g, count, xs, s));
    }
    if (bias != nullptr) {
        const int64_t total = batch * channels * p.in_plane;
        CONVNET_TRY(add_bias("deconv bias", x, bias, channels, p.in_plane, total, s));
    }
    return CONVNET_OK;
}

CONVNET_API convnet_status convnet_conv_backward_weight(
    const float* x, const float* y, float* weight, float* col,
    int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t num_output,
    int64_t out_h, int64_t out_w, int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
    int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
    int64_t group, void* stream) {
    clear_error();
    const char* name = "convnet_conv_backward_weight";
    CONV_PLAN(name);
    CONVNET_REQUIRE(p.direct || col != nullptr, name, "col is NULL");
    cudaStream_t s = as_stream(stream);
    const int64_t weight_size = num_output * p.k;
    const int64_t chunk =
        images_per_chunk(batch, (p.direct ? 0 : group * p.k * p.spatial) + weight_size);
    Scratch scratch(s);
    Scratch partial(s);
    if (chunk > 1) {
        CONVNET_TRY(partial.allocate(chunk * weight_size * static_cast<int64_t>(sizeof(float)),
                                     name));
    }
    for (int64_t n0 = 0; n0 < batch; n0 += chunk) {
        const int64_t count = batch - n0 < chunk ? batch - n0 : chunk;
        const float* xs = x + n0 * channels * p.in_plane;
        const float* ys = y + n0 * num_output * p.spatial;
        Columns cols;
        CONVNET_TRY(columns_for(p, count, col, const_cast<float*>(xs), scratch, name, &cols));
        if (!p.direct) CONVNET_TRY(im2col(xs, p.g, count, cols.data, s));
        // one image: accumulate into weight (beta = 1); a run: each image's gradient into
        // its own partial, then a fixed-order sum (deterministic, no atomics)
        float* out = count == 1 ? weight : partial.as<float>();
        const float beta = count == 1 ? 1.0f : 0.0f;
        for (int64_t gi = 0; gi < group; ++gi) {
            CONVNET_TRY(cublas_sgemm_strided_batched_row_major(
                0, 1, p.mg, p.k, p.spatial, 1.0f, ys + gi * p.mg * p.spatial, p.spatial,
                num_output * p.spatial, cols.data + gi * p.k * p.spatial, p.spatial,
                cols.image_stride, beta, out + gi * p.mg * p.k, p.k, weight_size, count, s));
        }
        if (count > 1) {
            CONVNET_TRY(launch("conv weight partial sum", weight_size, s, sum_partials_kernel,
                               static_cast<const float*>(partial.as<float>()), count,
                               weight_size, weight));
        }
    }
    return CONVNET_OK;
}

CONVNET_API convnet_status convnet_conv_backward_bias(const float* dy, float* dbias,
                                                      int64_t batch, int64_t num_output,
                                                      int64_t spatial, void* stream) {
    clear_error();
    CONVNET_REQUIRE(batch >= 0 && num_output >= 0 && spatial >= 0,
                    "convnet_conv_backward_bias", "negative size");
    // dbias[m] += sum over N and S of dy[n, m, s]: channels x parts blocks, fixed order
    return channel_sums<1>("conv bias grad", DyTerm{dy, num_output, spatial},
                           AddToBias{dbias}, num_output, batch * spatial, as_stream(stream));
}

}  // extern "C"
