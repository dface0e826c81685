/* convnet's CUDA library: the whole C API of libconvnet_cuda.so.
 *
 * Conventions (every entry point):
 *  - returns a convnet_status; on failure convnet_last_error() (thread-local) says what failed,
 *    with CUDA's or cuBLAS's own message when they are the cause;
 *  - sizes and counts are int64_t, array pointers are device pointers unless marked "host";
 *  - arrays are C-contiguous (row-major); image blobs are NCHW; float arrays are float32;
 *  - `stream` is a cudaStream_t passed as void* (NULL: the legacy default stream); work is
 *    queued on it and only calls that return a host value (marked "synchronous") wait for it;
 *  - zero-sized work is a no-op returning CONVNET_OK.
 * Callers (convnet/cuda/_lib.py and convnet/backend/cuda.py) validate shapes first; the library
 * re-checks only what would otherwise read or write out of bounds.
 */
#ifndef CONVNET_CUDA_H
#define CONVNET_CUDA_H

#include <stdint.h>

#define CONVNET_CUDA_ABI_VERSION 1

#if defined(__GNUC__)
#define CONVNET_API __attribute__((visibility("default")))
#else
#define CONVNET_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    CONVNET_OK = 0,
    CONVNET_ERR_CUDA = 1,              /* a CUDA runtime call or a kernel launch failed */
    CONVNET_ERR_INVALID_ARGUMENT = 2,  /* a negative size, a NULL array, a size over 32 bits */
    CONVNET_ERR_BAD_INDEX = 3,         /* data-dependent: a mask or label value out of range */
    CONVNET_ERR_CUBLAS_MISSING = 4,    /* no libcublas could be loaded */
    CONVNET_ERR_CUBLAS = 5,            /* a cuBLAS call failed */
    CONVNET_ERR_OUT_OF_MEMORY = 6      /* device allocation failed */
} convnet_status;

/* Element types of integer-or-float arrays (labels, unpooling masks). */
typedef enum {
    CONVNET_INT32 = 0,
    CONVNET_INT64 = 1,
    CONVNET_FLOAT32 = 2,
    CONVNET_FLOAT64 = 3
} convnet_dtype;

/* ==================================================================== runtime (runtime.cu) */

/* CONVNET_CUDA_ABI_VERSION of the built library (the loader refuses a mismatch). */
CONVNET_API int convnet_abi_version(void);

/* A static string naming the status, e.g. "CONVNET_ERR_CUDA". */
CONVNET_API const char* convnet_status_string(convnet_status status);

/* The message of the last failure on this thread ("" when none). */
CONVNET_API const char* convnet_last_error(void);

/* host OUT count: the number of CUDA devices (0 without a driver or GPU, with status CUDA). */
CONVNET_API convnet_status convnet_device_count(int* count);

/* host OUT ptr: nbytes of device memory (NULL for 0 bytes), stream-ordered on the legacy
 * stream from the device's default pool, whose release threshold is raised so that freed
 * memory stays cached (no cudaMalloc / cudaFree in steady state). */
CONVNET_API convnet_status convnet_malloc(void** ptr, int64_t nbytes);

/* Free what convnet_malloc returned (NULL is a no-op), in stream order (no device-wide wait). */
CONVNET_API convnet_status convnet_free(void* ptr);

/* Copies of nbytes: host -> device (returns once the host bytes are staged: the caller may
 * reuse its buffer; no wait for the device), device -> host (synchronous), device -> device. */
CONVNET_API convnet_status convnet_memcpy_htod(void* dst, const void* src, int64_t nbytes,
                                               void* stream);
CONVNET_API convnet_status convnet_memcpy_dtoh(void* dst, const void* src, int64_t nbytes,
                                               void* stream);
CONVNET_API convnet_status convnet_memcpy_dtod(void* dst, const void* src, int64_t nbytes,
                                               void* stream);

/* Every byte of dst[0:nbytes] = value. */
CONVNET_API convnet_status convnet_memset(void* dst, int value, int64_t nbytes, void* stream);

/* dst: (count,) elements of itemsize bytes (1, 2, 4 or 8), each set to the host bytes
 * value[0:itemsize]. */
CONVNET_API convnet_status convnet_fill(void* dst, int64_t count, int64_t itemsize,
                                        const void* value, void* stream);

/* Wait until all work queued on stream is done (reports asynchronous kernel failures). */
CONVNET_API convnet_status convnet_synchronize(void* stream);

/* host IN paths: a ':'-separated list of directories searched for libcublas after the
 * dynamic loader's own search (the nvidia-cublas wheels' lib folders); copied. */
CONVNET_API convnet_status convnet_set_cublas_search_path(const char* paths);

/* Locate and load cuBLAS now (GEMM entry points do it on first use);
 * CONVNET_ERR_CUBLAS_MISSING with the places tried when none loads. */
CONVNET_API convnet_status convnet_cublas_load(void);

/* host OUT count: how many times the library has waited for the device since it loaded
 * (every stream synchronisation, device-to-host copies included): what a training step
 * costs in host waits. */
CONVNET_API convnet_status convnet_host_waits(int64_t* count);

/* 1 for the host build (cuda/*.cu compiled for the CPU through cuda/host/), 0 for a GPU. */
CONVNET_API int convnet_is_host_build(void);

/* host OUT bytes: device memory held by live convnet_malloc blocks of the current device
 * (its memory pool's used bytes on a GPU, which includes other users of that pool). */
CONVNET_API convnet_status convnet_memory_in_use(int64_t* bytes);

/* ======================================================================== blas (blas.cu) */

/* Row-major C (m, n) = alpha * op(A) op(B) + beta * C; op(A) (m, k), op(B) (k, n); trans_* 0
 * or 1; lda, ldb, ldc are row strides. Through cuBLAS (m, n, k, ld* must fit 32 bits). */
CONVNET_API convnet_status convnet_gemm(int32_t trans_a, int32_t trans_b, int64_t m, int64_t n,
                                        int64_t k, float alpha, const float* a, int64_t lda,
                                        const float* b, int64_t ldb, float beta, float* c,
                                        int64_t ldc, void* stream);

/* y (n,) = alpha * x + beta * y; beta == 0 overwrites y without reading it. y may be x. */
CONVNET_API convnet_status convnet_axpby(int64_t n, float alpha, const float* x, float beta,
                                         float* y, void* stream);

/* x (n,) *= alpha. */
CONVNET_API convnet_status convnet_scale(int64_t n, float alpha, float* x, void* stream);

/* out (n,) = a - b; out (n,) = a * b. out may alias a or b. */
CONVNET_API convnet_status convnet_sub(int64_t n, const float* a, const float* b, float* out,
                                       void* stream);
CONVNET_API convnet_status convnet_mul(int64_t n, const float* a, const float* b, float* out,
                                       void* stream);

/* host OUT result = sum a[i] * b[i] over (n,), accumulated in double in a fixed order
 * (deterministic). Synchronous. */
CONVNET_API convnet_status convnet_dot(int64_t n, const float* a, const float* b,
                                       double* result, void* stream);

/* ======================================================================== conv (conv.cu) */

/* im (C, H, W) -> col (C*kh*kw, OH*OW): col[(c*kh + i)*kw + j, oh*OW + ow] =
 * im[c, oh*sh - ph + i*dh, ow*sw - pw + j*dw] (0 outside the image). */
CONVNET_API convnet_status convnet_im2col(const float* im, int64_t channels, int64_t height,
                                          int64_t width, int64_t kernel_h, int64_t kernel_w,
                                          int64_t stride_h, int64_t stride_w, int64_t pad_h,
                                          int64_t pad_w, int64_t dilation_h,
                                          int64_t dilation_w, int64_t out_h, int64_t out_w,
                                          float* col, void* stream);

/* The adjoint of im2col: im (C, H, W) is overwritten with the sum of the col entries that
 * read each pixel (a gather per pixel: deterministic, no atomics). */
CONVNET_API convnet_status convnet_col2im(const float* col, int64_t channels, int64_t height,
                                          int64_t width, int64_t kernel_h, int64_t kernel_w,
                                          int64_t stride_h, int64_t stride_w, int64_t pad_h,
                                          int64_t pad_w, int64_t dilation_h,
                                          int64_t dilation_w, int64_t out_h, int64_t out_w,
                                          float* im, void* stream);

/* The three convolution primitives share one geometry: the convolution's input x
 * (N, C, H, W), its output y (N, M, OH, OW), weight (M, C/group, kh, kw), and a scratch col
 * (C*kh*kw*OH*OW,) (may be NULL for kernel 1x1, stride 1, pad 0, which reads x directly).
 * Images go in runs: as many as CONVNET_CUDA_CONV_WORKSPACE bytes (environment; default
 * 256 MiB) of column scratch hold, taken from the memory pool; each run is one im2col /
 * col2im launch and one strided-batched sgemm per group (col serves runs of one image).
 *
 * forward:         y = conv(x) + bias (bias (M,) or NULL)
 * backward_data:   x = conv^T(y) + bias (the adjoint of forward's linear part, overwriting x;
 *                  bias (C,) or NULL: Deconvolution's forward)
 * backward_weight: weight += the weight gradient for input x and output gradient y (a run's
 *                  per-image gradients summed in image order: deterministic)
 * backward_bias:   dbias (M,) += sum of dy (N, M, S) over N and S (deterministic) */
CONVNET_API convnet_status convnet_conv_forward(
    const float* x, const float* weight, const float* bias, float* y, float* col,
    int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t num_output,
    int64_t out_h, int64_t out_w, int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
    int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
    int64_t group, void* stream);
CONVNET_API convnet_status convnet_conv_backward_data(
    const float* y, const float* weight, const float* bias, float* x, float* col,
    int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t num_output,
    int64_t out_h, int64_t out_w, int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
    int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
    int64_t group, void* stream);
CONVNET_API convnet_status convnet_conv_backward_weight(
    const float* x, const float* y, float* weight, float* col,
    int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t num_output,
    int64_t out_h, int64_t out_w, int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
    int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
    int64_t group, void* stream);
CONVNET_API convnet_status convnet_conv_backward_bias(const float* dy, float* dbias,
                                                      int64_t batch, int64_t num_output,
                                                      int64_t spatial, void* stream);

/* ================================================================== pooling (pooling.cu) */

/* Window o along an axis of size L: start s = o*stride - pad, end e = min(s + k, L + pad);
 * it reads [max(s, 0), min(e, L)). Arrays are P = N*C planes. */

/* x (P, H, W) -> y (P, OH, OW) = window max; argmax (P, OH, OW) int32, or int64 when
 * argmax_is_int64, = flat h*W + w of the first maximum in row-major window order (a NaN wins,
 * the last NaN); mask (P, OH, OW) float32 = the same indices, or NULL. */
CONVNET_API convnet_status convnet_max_pool_forward(
    const float* x, float* y, void* argmax, int32_t argmax_is_int64, float* mask,
    int64_t planes, int64_t height, int64_t width, int64_t out_h, int64_t out_w,
    int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
    int64_t pad_w, void* stream);

/* dx (P, H, W) = sum of dy over the outputs whose argmax is that pixel: a gather per input
 * pixel over the windows that contain it (deterministic), or, when kernel_h == 0 (geometry
 * unknown), one thread per plane scanning its outputs in order. */
CONVNET_API convnet_status convnet_max_pool_backward(
    const float* dy, const void* argmax, int32_t argmax_is_int64, float* dx,
    int64_t planes, int64_t height, int64_t width, int64_t out_h, int64_t out_w,
    int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
    int64_t pad_w, void* stream);

/* y = window sum / ((e_h - s_h) * (e_w - s_w)) (Caffe: the window clipped to the padded
 * extent); backward: dx = the adjoint, a gather per input pixel. */
CONVNET_API convnet_status convnet_ave_pool_forward(
    const float* x, float* y, int64_t planes, int64_t height, int64_t width, int64_t out_h,
    int64_t out_w, int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w,
    int64_t pad_h, int64_t pad_w, void* stream);
CONVNET_API convnet_status convnet_ave_pool_backward(
    const float* dy, float* dx, int64_t planes, int64_t height, int64_t width, int64_t out_h,
    int64_t out_w, int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w,
    int64_t pad_h, int64_t pad_w, void* stream);

/* Max unpooling. x, mask (P, in_size) (mask of mask_type: flat indices into an output
 * plane); y (P, out_size) = 0, then y[p, mask[p, i]] = x[p, i], the largest i winning a
 * shared position (the later input in scan order); index (P, in_size), int32 or int64 when
 * index_is_int64, = the validated mask values (for the backward gather; -1 where invalid),
 * or NULL. A mask value that is negative,
 * >= out_size, NaN or not an integer is never written through: the call returns
 * CONVNET_ERR_BAD_INDEX and host OUT bad_position = the smallest flat position p*in_size + i
 * holding one (else -1). Synchronous. */
CONVNET_API convnet_status convnet_unpool_forward(
    const float* x, const void* mask, int32_t mask_type, float* y, void* index,
    int32_t index_is_int64, int64_t planes, int64_t in_size, int64_t out_size,
    int64_t* bad_position, void* stream);

/* dx (P, in_size) = dy[p, mask[p, i]] (a gather); bad values as for forward (synchronous),
 * or, with bad_position NULL (a mask that forward validated), dx = 0 there and no wait. */
CONVNET_API convnet_status convnet_unpool_backward(
    const float* dy, const void* mask, int32_t mask_type, float* dx, int64_t planes,
    int64_t in_size, int64_t out_size, int64_t* bad_position, void* stream);

/* ==================================================================== interp (interp.cu) */

/* Resampling tables (built by the layer): rows (OH, 2) / cols (OW, 2) int64 hold the two
 * source rows / columns of each output row / column (absolute indices into the input plane,
 * < in_h / in_w), row_weights (OH, 2) / col_weights (OW, 2) their weights; the nearest mode
 * has one index per row / column: rows (OH,), cols (OW,). x (P, in_h, in_w), y (P, OH, OW). */

/* y = rw0 (cw0 x[r0, c0] + cw1 x[r0, c1]) + rw1 (cw0 x[r1, c0] + cw1 x[r1, c1]). */
CONVNET_API convnet_status convnet_interp_bilinear_forward(
    const float* x, float* y, int64_t planes, int64_t in_h, int64_t in_w, int64_t out_h,
    int64_t out_w, const int64_t* rows, const float* row_weights, const int64_t* cols,
    const float* col_weights, void* stream);

/* dx (P, in_h, in_w) = the adjoint of bilinear_forward applied to dy (overwritten): columns
 * first into a scratch (P, OH, in_w), then rows, each as a gather (the tables are inverted on
 * the device; one thread per element written sums its taps in table order: deterministic,
 * no atomics). */
CONVNET_API convnet_status convnet_interp_bilinear_backward(
    const float* dy, float* dx, int64_t planes, int64_t in_h, int64_t in_w, int64_t out_h,
    int64_t out_w, const int64_t* rows, const float* row_weights, const int64_t* cols,
    const float* col_weights, void* stream);

/* y[p, h, w] = x[p, rows[h], cols[w]] for elements of itemsize bytes (1, 2, 4, 8). */
CONVNET_API convnet_status convnet_interp_nearest_forward(
    const void* x, void* y, int64_t itemsize, int64_t planes, int64_t in_h, int64_t in_w,
    int64_t out_h, int64_t out_w, const int64_t* rows, const int64_t* cols, void* stream);

/* dx = 0, then dx[p, rows[h], cols[w]] += dy[p, h, w] (as bilinear_backward). */
CONVNET_API convnet_status convnet_interp_nearest_backward(
    const float* dy, float* dx, int64_t planes, int64_t in_h, int64_t in_w, int64_t out_h,
    int64_t out_w, const int64_t* rows, const int64_t* cols, void* stream);

/* ======================================================================== loss (loss.cu) */

/* Softmax loss forward. scores (N, C, S); labels (N, S) of label_type. OUT prob (N, C, S)
 * (softmax over C, max-subtracted), label_index (N, S) int32 = the class or -1 (ignored or
 * bad). host OUT loss_sum = -sum log prob[n, label, s] over valid pixels (double, fixed
 * order), valid_count, bad_position = the smallest n*S + s whose label is neither an integer
 * in [0, C) nor ignore_label (when has_ignore), or -1; a bad label is treated as ignored and
 * the call returns CONVNET_ERR_BAD_INDEX. Synchronous. */
CONVNET_API convnet_status convnet_softmax_loss_forward(
    const float* scores, const void* labels, int32_t label_type, int32_t has_ignore,
    int64_t ignore_label, float* prob, int32_t* label_index, int64_t batch, int64_t classes,
    int64_t spatial, double* loss_sum, int64_t* valid_count, int64_t* bad_position,
    void* stream);

/* grad (N, C, S) = weight * (prob - onehot(label_index)) where label_index >= 0, else 0. */
CONVNET_API convnet_status convnet_softmax_loss_backward(
    const float* prob, const int32_t* label_index, float weight, float* grad, int64_t batch,
    int64_t classes, int64_t spatial, void* stream);

/* (EuclideanLoss runs on convnet_sub, convnet_dot and convnet_axpby.) */

/* ============================================================ activation (activation.cu) */

/* y (n,) = x > 0 ? x : negative_slope * x; y may be x. */
CONVNET_API convnet_status convnet_relu_forward(const float* x, float negative_slope,
                                                float* y, int64_t n, void* stream);

/* dx (n,) = x > 0 ? dy : negative_slope * dy; dx may be dy. */
CONVNET_API convnet_status convnet_relu_backward(const float* dy, const float* x,
                                                 float negative_slope, float* dx, int64_t n,
                                                 void* stream);

/* y (n,) = keep[i] ? x[i] * scale : 0 (keep uint8 0/1); y may be x. Dropout's forward and
 * backward alike. */
CONVNET_API convnet_status convnet_dropout_apply(const float* x, const uint8_t* keep,
                                                 float scale, float* y, int64_t n,
                                                 void* stream);

/* keep (n,) uint8 = u(seed, offset + i) >= ratio, u uniform in [0, 1) from a counter-based
 * hash (splitmix64): the same seed and offset give the same mask on any GPU. */
CONVNET_API convnet_status convnet_dropout_mask(uint64_t seed, uint64_t offset, float ratio,
                                                uint8_t* keep, int64_t n, void* stream);

/* ====================================================== normalization (normalization.cu) */

/* Arrays x, y, dy, dx (N, C, S); per-channel vectors (C,). Per-channel reductions run on a
 * channels x parts grid in double, then add each channel's parts in order (deterministic). */

/* mean, var (biased) of x over N and S. */
CONVNET_API convnet_status convnet_batch_norm_stats(const float* x, float* mean, float* var,
                                                    int64_t batch, int64_t channels,
                                                    int64_t spatial, void* stream);

/* running_mean = fraction * running_mean + (1 - fraction) * mean; running_var likewise
 * with var * var_correction. */
CONVNET_API convnet_status convnet_batch_norm_update(float* running_mean, float* running_var,
                                                     const float* mean, const float* var,
                                                     float fraction, float var_correction,
                                                     int64_t channels, void* stream);

/* y = (x - mean) / sqrt(var + eps) * scale + bias; scale, bias may be NULL (1, 0). */
CONVNET_API convnet_status convnet_batch_norm_forward(const float* x, const float* mean,
                                                      const float* var, float eps,
                                                      const float* scale, const float* bias,
                                                      float* y, int64_t batch,
                                                      int64_t channels, int64_t spatial,
                                                      void* stream);

/* dscale += sum(dy * xhat), dbias += sum(dy) (either may be NULL); dx (may be NULL) =
 * gain * (dy - mean(dy) - xhat * mean(dy * xhat)) with batch_stats, else gain * dy;
 * gain = scale / sqrt(var + eps) (scale NULL: 1). */
CONVNET_API convnet_status convnet_batch_norm_backward(
    const float* dy, const float* x, const float* mean, const float* var, float eps,
    const float* scale, float* dx, float* dscale, float* dbias, int32_t batch_stats,
    int64_t batch, int64_t channels, int64_t spatial, void* stream);

/* ============================================================== structure (structure.cu) */

/* dst[index . dst_strides] = src[index . src_strides] for every index of shape (ndim <= 8
 * axes; strides in elements of itemsize bytes: 1, 2, 4 or 8; host arrays of ndim). Crop,
 * Concat and the interp copy mode are such copies. */
CONVNET_API convnet_status convnet_copy_strided(void* dst, const void* src, int64_t itemsize,
                                                int32_t ndim, const int64_t* shape,
                                                const int64_t* dst_strides,
                                                const int64_t* src_strides, void* stream);

/* Eltwise MAX, one bottom at a time: where x > y: y = x, argmax = index (y starts as
 * bottom 0's copy and argmax as 0; ties keep the lower index). */
CONVNET_API convnet_status convnet_eltwise_max_step(const float* x, int32_t index, float* y,
                                                    int32_t* argmax, int64_t n, void* stream);

/* dx (n,) = argmax == index ? dy : 0. */
CONVNET_API convnet_status convnet_eltwise_max_backward(const float* dy,
                                                        const int32_t* argmax, int32_t index,
                                                        float* dx, int64_t n, void* stream);

/* ================================================================== solvers (solvers.cu) */

/* history = momentum * history + local_rate * (diff + local_decay * data); data -= history.
 * All (n,). diff is left unchanged. */
CONVNET_API convnet_status convnet_sgd_update(float* data, const float* diff, float* history,
                                              float local_rate, float momentum,
                                              float local_decay, int64_t n, void* stream);

/* g = diff + local_decay * data; m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;
 * data -= step * m / (sqrt(v) + delta), step = local_rate * sqrt(1 - beta2^t) / (1 - beta1^t)
 * computed by the caller. All (n,). */
CONVNET_API convnet_status convnet_adam_update(float* data, const float* diff, float* m,
                                               float* v, float step, float beta1, float beta2,
                                               float delta, float local_decay, int64_t n,
                                               void* stream);

/* device INOUT flag (one int32): set to 1 when x (n,) holds a NaN or an Inf, else left as
 * it is. Queue it for every gradient after one memset and read the flag back once: the
 * solver's finite check without downloading the gradients. */
CONVNET_API convnet_status convnet_flag_nonfinite(const float* x, int64_t n, int32_t* flag,
                                                  void* stream);

/* ================================ sequence layers (inner_product.cu, smooth.cu, recurrent.cu)
 * The layers recurrent cells are made of. InnerProduct's gemms go through convnet_gemm. */

/* y (rows, cols) += bias (cols,) per row. */
CONVNET_API convnet_status convnet_bias_add(float* y, const float* bias, int64_t rows,
                                            int64_t cols, void* stream);

/* dbias (cols,) += the column sums of dy (rows, cols). */
CONVNET_API convnet_status convnet_bias_grad(const float* dy, float* dbias, int64_t rows,
                                             int64_t cols, void* stream);

/* Embed: y (n, dim) = weight[index] (+ bias (dim,), may be NULL); index (n,) of index_type,
 * row ids in [0, rows); weight (rows, dim). host OUT bad_position: -1, or the smallest flat
 * position of an id outside [0, rows) or not an integer (CONVNET_ERR_BAD_INDEX; y is then
 * garbage). Synchronous. */
CONVNET_API convnet_status convnet_embed_forward(const void* index, int32_t index_type,
                                                 const float* weight, const float* bias,
                                                 float* y, int64_t n, int64_t rows,
                                                 int64_t dim, int64_t* bad_position,
                                                 void* stream);

/* dweight (rows, dim) += dy (n, dim) scattered to the rows index names (validated ids). */
CONVNET_API convnet_status convnet_embed_backward(const void* index, int32_t index_type,
                                                  const float* dy, float* dweight, int64_t n,
                                                  int64_t rows, int64_t dim, void* stream);

/* Sigmoid y = 1 / (1 + exp(-x)); backward dx = dy y (1 - y) from the top y. All (n,). */
CONVNET_API convnet_status convnet_sigmoid_forward(const float* x, float* y, int64_t n,
                                                   void* stream);
CONVNET_API convnet_status convnet_sigmoid_backward(const float* dy, const float* y, float* dx,
                                                    int64_t n, void* stream);

/* TanH y = tanh(x); backward dx = dy (1 - y^2). All (n,). */
CONVNET_API convnet_status convnet_tanh_forward(const float* x, float* y, int64_t n,
                                                void* stream);
CONVNET_API convnet_status convnet_tanh_backward(const float* dy, const float* y, float* dx,
                                                 int64_t n, void* stream);

/* Softmax over the channel axis of x, y (outer, channels, inner), max subtracted; backward
 * dx = y (dy - sum_c dy y). */
CONVNET_API convnet_status convnet_softmax_forward(const float* x, float* y, int64_t outer,
                                                   int64_t channels, int64_t inner,
                                                   void* stream);
CONVNET_API convnet_status convnet_softmax_backward(const float* dy, const float* y, float* dx,
                                                    int64_t outer, int64_t channels,
                                                    int64_t inner, void* stream);

/* Scale: y = x * scale + bias on (outer, size, inner) blobs, scale and bias (size,) (bias may
 * be NULL). Backward: dx = dy * scale, dscale += sum(dy x), dbias += sum(dy) over outer and
 * inner; each of dx, dscale, dbias may be NULL (skipped). */
CONVNET_API convnet_status convnet_scale_forward(const float* x, const float* scale,
                                                 const float* bias, float* y, int64_t outer,
                                                 int64_t size, int64_t inner, void* stream);
CONVNET_API convnet_status convnet_scale_backward(const float* dy, const float* x,
                                                  const float* scale, float* dx, float* dscale,
                                                  float* dbias, int64_t outer, int64_t size,
                                                  int64_t inner, void* stream);

/* LSTMUnit on rows: c_prev, c, h, tanh_c (rows, dim); gates, act (rows, 4 dim) in the order
 * i, f, o, g; cont (rows,). c = cont f c_prev + i g, h = o tanh(c), f = sigmoid(gates_f +
 * forget_bias); act and tanh_c are kept for backward, which writes dc_prev and dgates (the
 * pre-activation diffs) from dc, dh. */
CONVNET_API convnet_status convnet_lstm_unit_forward(const float* c_prev, const float* gates,
                                                     const float* cont, float forget_bias,
                                                     float* act, float* tanh_c, float* c,
                                                     float* h, int64_t rows, int64_t dim,
                                                     void* stream);
CONVNET_API convnet_status convnet_lstm_unit_backward(const float* c_prev, const float* cont,
                                                      const float* act, const float* tanh_c,
                                                      const float* dc, const float* dh,
                                                      float* dc_prev, float* dgates,
                                                      int64_t rows, int64_t dim, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* CONVNET_CUDA_H */
