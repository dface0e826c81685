"""Activation kernels: ReLU, Sigmoid and TanH over flat arrays, Softmax over (outer, C, inner).

The element-wise kernels split their flat arrays into fixed chunks of CHUNK elements over
OpenMP threads (each element is computed alone); Softmax splits the (outer, inner) positions
into fixed work items and takes each position's max and sums over C in one fixed order. So
the thread count never changes a result.

Caffe's ReLU: y = x where x > 0, negative_slope * x elsewhere; the gradient is dy where
x > 0 and negative_slope * dy elsewhere (x the bottom, or the top when negative_slope >= 0:
same sign). The gradient is dy times Caffe's factor (x > 0) + negative_slope * (x <= 0), so a
NaN in dy stays NaN and a NaN x gives factor 0; a NaN in x stays NaN in y, as NumPy's maximum
and PyTorch's relu keep it. The CUDA kernels (cuda/activation.cu) agree bit for bit.

Sigmoid, TanH and Softmax (the C block below):

  sigmoid(x) = (x < 0 ? e : 1) / (1 + e),  e = exp(-|x|) in (0, 1]: no overflow at any x,
               full relative accuracy for x < 0 too, exactly 0 / 1 for large |x|
  tanh(x)    = sign(x) * -m / (2 + m),      m = exp(-2|x|) - 1, |x| clamped to 10 (tanh(10)
               rounds to 1 in float32); no cancellation for tiny x
  softmax    y = exp(x - max) / sum_C exp(x - max);  backward dx = y (dy - sum_C(dy y))
  backward   sigmoid dx = dy ((1 - y) y), tanh dx = dy (1 - y^2), from the top y

float64 calls libm's exp and tanh (as accurate as the NumPy passes these replaced). float32
computes exp itself, branch-free, so that GCC vectorises the loops (libm's expf / tanhf are
calls GCC does not vectorise without -ffast-math): Cody-Waite reduction x = k ln2 + r with
|r| <= ln2 / 2, Cephes' expf polynomial for exp(r) - 1, 2^k built from its bits (as
2^(k + 64) times 2^-64, so that exp underflows gradually to subnormals and 0 as libm's does).
Over every float32 input (all 2^32 bit patterns), against float64 libm: exp(-|x|) at most
1.01 ulp, sigmoid 2.40, tanh 2.50. NaN gives NaN; a NaN along C makes that softmax position
all NaN, as does +inf or an all -inf position (NumPy's max-subtracted exp gives the same);
-inf among finite values gives 0.

A pass touching more than STREAM_BYTES (inputs and output) writes its output with streaming
stores (no read of each output line first; see cn_act_stream). Softmax with inner == 1 runs
whole rows per work item, vectors along C.

Measured against the NumPy passes these replaced and PyTorch 2.13 in one process (float32,
2 threads, medians of 15 alternated runs, ms; (8, 64, 128, 128) for Sigmoid and TanH,
Softmax over axis 1 of (8, 21, 128, 128)); a second run gave PyTorch / this 1.2-3.5:
                  this   NumPy  PyTorch              this   NumPy  PyTorch
  Sigmoid fwd     4.69   35.0    7.50   Sigmoid bwd  3.03   11.3    4.03
  TanH fwd        4.23   26.4   15.4    TanH bwd     2.94   10.1    3.90
  Softmax fwd     2.05    8.41   4.62   Softmax bwd  1.20    4.26   1.63
float64 forward passes are slower than PyTorch's (libm, one call per element: Sigmoid 64 ms
against 39, TanH 120 against 36), faster than the NumPy passes (169, 139).
"""

from cython cimport floating
from cython.parallel cimport prange

from _openmp cimport omp_get_max_threads

cdef extern from *:
    """
    #include <math.h>
    #include <stddef.h>
    #include <stdint.h>
    #include <string.h>

    static inline int32_t cn_act_bits(float v) { int32_t b; memcpy(&b, &v, 4); return b; }
    static inline float cn_act_float(int32_t b) { float v; memcpy(&v, &b, 4); return v; }

    /* min(|v|, lim), NaN kept, on the bits (the magnitude's bits order as its value). As
       float selects GCC turns these into branches (it folds the clamped arm's result into a
       constant), which do not vectorise */
    static inline float cn_act_abs_min(float v, float lim) {
        int32_t a = cn_act_bits(v) & 0x7fffffff, l = cn_act_bits(lim);
        int32_t c = a < l ? a : l;
        return cn_act_float(a > 0x7f800000 ? a : c);
    }

    /* x = k ln2 + r, |r| <= ln2 / 2 (ln2 in two parts: k ln2_hi is exact); the rounding adds
       1.5 * 2^23, so k is in t's low bits (no float-to-int conversion, whatever x is) */
    static inline float cn_act_reduce(float x, int32_t *k) {
        float t = x * 1.44269504088896341f + 12582912.0f;
        float kf = t - 12582912.0f;
        *k = cn_act_bits(t) - 0x4b400000;
        float r = x - kf * 0.693145751953125f;
        return r - kf * 1.42860682030941723e-06f;
    }

    /* exp(r) - 1 = r + r^2 P(r) for |r| <= ln2 / 2, Cephes' expf polynomial */
    static inline float cn_act_expm1_r(float r) {
        float p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        return r + (r * r) * p;
    }

    /* exp(-|v|), |v| clamped to 104 (exp(-104) rounds to 0): 2^(k + 64) (k >= -151, a
       normal float) then 2^-64, so a result below 2^-126 is rounded once, to a subnormal,
       as libm's is */
    static inline float cn_act_exp_negabs_f(float v) {
        int32_t k;
        float r = cn_act_reduce(-cn_act_abs_min(v, 104.0f), &k);
        float p = cn_act_expm1_r(r) + 1.0f;
        return (p * cn_act_float((k + 127 + 64) << 23)) * 5.42101086242752217e-20f;
    }

    static inline double cn_act_exp_negabs_d(double v) { return exp(-fabs(v)); }

    static inline float cn_act_sigmoid_f(float v) {
        float e = cn_act_exp_negabs_f(v);
        return (cn_act_bits(v) < 0 ? e : 1.0f) / (1.0f + e);     /* sign bit: -0 too */
    }

    static inline double cn_act_sigmoid_d(double v) {
        double e = exp(-fabs(v));
        return (signbit(v) ? e : 1.0) / (1.0 + e);
    }

    static inline float cn_act_tanh_f(float v) {
        float x = -2.0f * cn_act_abs_min(v, 10.0f);
        int32_t k;
        float r = cn_act_reduce(x, &k);
        float s = cn_act_float((k + 127) << 23);
        float m = s * cn_act_expm1_r(r) + (s - 1.0f);     /* exp(x) - 1: exact s - 1 at k = 0 */
        return copysignf(-m / (2.0f + m), v);
    }

    static inline double cn_act_tanh_d(double v) { return tanh(v); }

    /* Streaming stores for passes that touch more than the last-level cache (the caller
       decides): their output is in memory by the time anything reads it, and a streaming
       store skips reading each output line first (a 3-stream backward pass 17 % faster at
       2 threads). Values are computed into an L1 buffer, then stored: whole 64-byte lines
       streamed, the unaligned head and the tail stored as usual. No AVX: plain copies. */
    #if defined(__AVX__)
    #include <immintrin.h>
    static inline void cn_act_stream_f(float *dst, const float *src, ptrdiff_t n) {
        ptrdiff_t i = 0;
        for (; i < n && ((uintptr_t) (dst + i) & 63); i++) dst[i] = src[i];
        for (; i + 16 <= n; i += 16) {
            _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
            _mm256_stream_ps(dst + i + 8, _mm256_loadu_ps(src + i + 8));
        }
        for (; i < n; i++) dst[i] = src[i];
    }
    static inline void cn_act_stream_d(double *dst, const double *src, ptrdiff_t n) {
        ptrdiff_t i = 0;
        for (; i < n && ((uintptr_t) (dst + i) & 63); i++) dst[i] = src[i];
        for (; i + 8 <= n; i += 8) {
            _mm256_stream_pd(dst + i, _mm256_loadu_pd(src + i));
            _mm256_stream_pd(dst + i + 4, _mm256_loadu_pd(src + i + 4));
        }
        for (; i < n; i++) dst[i] = src[i];
    }
    static inline void cn_act_fence(void) { _mm_sfence(); }   /* before other threads read */
    #else
    static inline void cn_act_stream_f(float *dst, const float *src, ptrdiff_t n) {
        memcpy(dst, src, (size_t) n * sizeof *dst);
    }
    static inline void cn_act_stream_d(double *dst, const double *src, ptrdiff_t n) {
        memcpy(dst, src, (size_t) n * sizeof *dst);
    }
    static inline void cn_act_fence(void) { }
    #endif

    /* The streamed element-wise backward passes store straight from vectors (5-15 % faster
       than through a buffer, measured): OUT[i] = EXPR, VEXPR the same operations on vectors
       (bit for bit, so an element's value does not depend on where a vector starts; 1 - y^2
       is an FMA both ways), the head up to a 32-byte boundary and the tail scalar. */
    #if defined(__AVX__) && defined(__FMA__)
    #define CN_W_f 8
    #define CN_LD_f _mm256_loadu_ps
    #define CN_SET_f _mm256_set1_ps
    #define CN_SUB_f _mm256_sub_ps
    #define CN_MUL_f _mm256_mul_ps
    #define CN_FNMADD_f _mm256_fnmadd_ps
    #define CN_ST_f _mm256_stream_ps
    #define CN_W_d 4
    #define CN_LD_d _mm256_loadu_pd
    #define CN_SET_d _mm256_set1_pd
    #define CN_SUB_d _mm256_sub_pd
    #define CN_MUL_d _mm256_mul_pd
    #define CN_FNMADD_d _mm256_fnmadd_pd
    #define CN_ST_d _mm256_stream_pd
    #define CN_ACT_DIRECT(T, S, OUT, N, EXPR, VEXPR) {                                     \\
        ptrdiff_t i = 0;                                                                   \\
        for (; i < (N) && ((uintptr_t) ((OUT) + i) & 31); i++) (OUT)[i] = (EXPR);         \\
        for (; i + CN_W_##S <= (N); i += CN_W_##S) CN_ST_##S((OUT) + i, (VEXPR));          \\
        for (; i < (N); i++) (OUT)[i] = (EXPR);                                            \\
    }
    #else
    #define CN_ACT_DIRECT(T, S, OUT, N, EXPR, VEXPR) CN_ACT_PASS(T, S, OUT, N, 0, EXPR)
    #endif

    enum { CN_BUF = 1024, CN_SM_BLOCK = 512, CN_SM_LANES = 16 };

    /* OUT[i] = EXPR (of i) for i in [0, N); streamed through a buffer when STREAM. The
       pointers are not restrict (y may be x, dx may be dy: the same element, never a
       shifted one), so ivdep tells GCC that no iteration depends on another. A kernel that
       streamed fences before it returns. */
    #define CN_ACT_PASS(T, S, OUT, N, STREAM, EXPR)                                        \\
        if (!(STREAM)) {                                                                   \\
            _Pragma("GCC ivdep")                                                           \\
            for (ptrdiff_t i = 0; i < (N); i++) (OUT)[i] = (EXPR);                         \\
        } else {                                                                           \\
            T buf_[CN_BUF];                                                                \\
            for (ptrdiff_t i0_ = 0; i0_ < (N); i0_ += CN_BUF) {                            \\
                ptrdiff_t w_ = (N) - i0_ < CN_BUF ? (N) - i0_ : CN_BUF;                    \\
                for (ptrdiff_t i = i0_; i < i0_ + w_; i++) buf_[i - i0_] = (EXPR);         \\
                cn_act_stream_##S((OUT) + i0_, buf_, w_);                                  \\
            }                                                                              \\
        }

    #define CN_ACT_KERNELS(T, S)                                                           \\
    static void cn_sigmoid_forward_##S(const T *x, T *y, ptrdiff_t n, int stream) {        \\
        CN_ACT_PASS(T, S, y, n, stream, cn_act_sigmoid_##S(x[i]))                          \\
        if (stream) cn_act_fence();                                                        \\
    }                                                                                      \\
    static void cn_tanh_forward_##S(const T *x, T *y, ptrdiff_t n, int stream) {           \\
        CN_ACT_PASS(T, S, y, n, stream, cn_act_tanh_##S(x[i]))                             \\
        if (stream) cn_act_fence();                                                        \\
    }                                                                                      \\
    static void cn_sigmoid_backward_##S(const T *dy, const T *y, T *dx, ptrdiff_t n,       \\
                                        int stream) {                                      \\
        if (stream) {                                                                      \\
            CN_ACT_DIRECT(T, S, dx, n, dy[i] * ((1 - y[i]) * y[i]),                        \\
                          CN_MUL_##S(CN_LD_##S(dy + i),                                    \\
                                     CN_MUL_##S(CN_SUB_##S(CN_SET_##S(1), CN_LD_##S(y + i)), \\
                                                CN_LD_##S(y + i))))                        \\
            cn_act_fence();                                                                \\
        } else                                                                             \\
            CN_ACT_PASS(T, S, dx, n, 0, dy[i] * ((1 - y[i]) * y[i]))                       \\
    }                                                                                      \\
    static void cn_tanh_backward_##S(const T *dy, const T *y, T *dx, ptrdiff_t n,          \\
                                     int stream) {                                         \\
        if (stream) {                                                                      \\
            CN_ACT_DIRECT(T, S, dx, n, dy[i] * (1 - y[i] * y[i]),                          \\
                          CN_MUL_##S(CN_LD_##S(dy + i),                                    \\
                                     CN_FNMADD_##S(CN_LD_##S(y + i), CN_LD_##S(y + i),     \\
                                                   CN_SET_##S(1))))                        \\
            cn_act_fence();                                                                \\
        } else                                                                             \\
            CN_ACT_PASS(T, S, dx, n, 0, dy[i] * (1 - y[i] * y[i]))                         \\
    }                                                                                      \\
    /* softmax of w <= CN_SM_BLOCK neighbouring positions along inner (x, y at [o, 0, j0]): \\
       vectors along inner, a pass over C for the max, one for exp and the sum, one to    \\
       divide (the block, C * w values, stays in cache between them) */                    \\
    static void cn_softmax_forward_cols_##S(const T *x, T *y, ptrdiff_t C, ptrdiff_t inner, \\
                                            ptrdiff_t w) {                                 \\
        T m[CN_SM_BLOCK], s[CN_SM_BLOCK];                                                  \\
        for (ptrdiff_t j = 0; j < w; j++) { m[j] = x[j]; s[j] = 0; }                       \\
        for (ptrdiff_t c = 1; c < C; c++) {                                                \\
            const T *xc = x + c * inner;                                                   \\
            for (ptrdiff_t j = 0; j < w; j++) m[j] = xc[j] > m[j] ? xc[j] : m[j];          \\
        }                                                                                  \\
        for (ptrdiff_t c = 0; c < C; c++) {                                                \\
            const T *xc = x + c * inner;                                                   \\
            T *yc = y + c * inner;                                                         \\
            _Pragma("GCC ivdep")                                                           \\
            for (ptrdiff_t j = 0; j < w; j++) {                                            \\
                T e = cn_act_exp_negabs_##S(xc[j] - m[j]);      /* x - max <= 0, or NaN */ \\
                yc[j] = e;                                                                 \\
                s[j] += e;                                                                 \\
            }                                                                              \\
        }                                                                                  \\
        for (ptrdiff_t c = 0; c < C; c++) {                                                \\
            T *yc = y + c * inner;                                                         \\
            for (ptrdiff_t j = 0; j < w; j++) yc[j] = yc[j] / s[j];                        \\
        }                                                                                  \\
    }                                                                                      \\
    static void cn_softmax_backward_cols_##S(const T *dy, const T *y, T *dx, ptrdiff_t C,  \\
                                             ptrdiff_t inner, ptrdiff_t w, int stream) {   \\
        T d[CN_SM_BLOCK];                                                                  \\
        for (ptrdiff_t j = 0; j < w; j++) d[j] = 0;                                        \\
        for (ptrdiff_t c = 0; c < C; c++) {                                                \\
            const T *dyc = dy + c * inner, *yc = y + c * inner;                            \\
            for (ptrdiff_t j = 0; j < w; j++) d[j] += dyc[j] * yc[j];                      \\
        }                                                                                  \\
        for (ptrdiff_t c = 0; c < C; c++) {                                                \\
            const T *dyc = dy + c * inner, *yc = y + c * inner;                            \\
            T *dxc = dx + c * inner;                                                       \\
            if (stream)                                                                    \\
                CN_ACT_DIRECT(T, S, dxc, w, (dyc[i] - d[i]) * yc[i],                       \\
                              CN_MUL_##S(CN_SUB_##S(CN_LD_##S(dyc + i), CN_LD_##S(d + i)), \\
                                         CN_LD_##S(yc + i)))                               \\
            else                                                                           \\
                CN_ACT_PASS(T, S, dxc, w, 0, (dyc[i] - d[i]) * yc[i])                      \\
        }                                                                                  \\
        if (stream) cn_act_fence();                                                        \\
    }                                                                                      \\
    /* sum of v[0 .. n) over CN_SM_LANES lanes added in a fixed order (a single            \\
       accumulator is not reassociated, so not vectorised, without -ffast-math) */         \\
    static inline T cn_softmax_sum_##S(const T *v, ptrdiff_t n) {                          \\
        T acc[CN_SM_LANES] = {0}, total = 0;                                               \\
        ptrdiff_t end = n - n % CN_SM_LANES;                                               \\
        for (ptrdiff_t i = 0; i < end; i += CN_SM_LANES)                                   \\
            for (int l = 0; l < CN_SM_LANES; l++) acc[l] += v[i + l];                      \\
        for (ptrdiff_t i = end; i < n; i++) acc[i - end] += v[i];                          \\
        for (int l = 0; l < CN_SM_LANES; l += 2) total += acc[l] + acc[l + 1];             \\
        return total;                                                                      \\
    }                                                                                      \\
    static inline T cn_softmax_dot_##S(const T *a, const T *b, ptrdiff_t n) {              \\
        T acc[CN_SM_LANES] = {0}, total = 0;                                               \\
        ptrdiff_t end = n - n % CN_SM_LANES;                                               \\
        for (ptrdiff_t i = 0; i < end; i += CN_SM_LANES)                                   \\
            for (int l = 0; l < CN_SM_LANES; l++) acc[l] += a[i + l] * b[i + l];           \\
        for (ptrdiff_t i = end; i < n; i++) acc[i - end] += a[i] * b[i];                   \\
        for (int l = 0; l < CN_SM_LANES; l += 2) total += acc[l] + acc[l + 1];             \\
        return total;                                                                      \\
    }                                                                                      \\
    /* the max of v[0 .. n), over lanes when n is long (any NaN makes the exp and the sum   \\
       NaN after it, whichever value this returns) */                                      \\
    static inline T cn_softmax_max_##S(const T *v, ptrdiff_t n) {                          \\
        T acc[CN_SM_LANES], m = v[0];                                                      \\
        ptrdiff_t end = n - n % CN_SM_LANES;                                               \\
        if (end > 0) {                                                                     \\
            for (int l = 0; l < CN_SM_LANES; l++) acc[l] = v[l];                           \\
            for (ptrdiff_t i = CN_SM_LANES; i < end; i += CN_SM_LANES)                     \\
                for (int l = 0; l < CN_SM_LANES; l++)                                      \\
                    acc[l] = v[i + l] > acc[l] ? v[i + l] : acc[l];                        \\
            for (int l = 0; l < CN_SM_LANES; l++) m = acc[l] > m ? acc[l] : m;             \\
        }                                                                                  \\
        for (ptrdiff_t i = end; i < n; i++) m = v[i] > m ? v[i] : m;                       \\
        return m;                                                                          \\
    }                                                                                      \\
    /* inner == 1: rows of C contiguous values, vectors along C. x - max is written to y   \\
       row by row, then exp runs as one pass over all the rows (short rows spend their     \\
       time in loop ends: (262144, 21) 1.2x faster so than row by row), then each row is    \\
       divided by its sum */                                                               \\
    static void cn_softmax_forward_rows_##S(const T *x, T *y, ptrdiff_t C, ptrdiff_t rows) { \\
        for (ptrdiff_t r = 0; r < rows; r++) {                                             \\
            const T *xr = x + r * C;                                                       \\
            T *yr = y + r * C;                                                             \\
            T m = cn_softmax_max_##S(xr, C);                                               \\
            _Pragma("GCC ivdep")                                                           \\
            for (ptrdiff_t i = 0; i < C; i++) yr[i] = xr[i] - m;                           \\
        }                                                                                  \\
        for (ptrdiff_t i = 0; i < rows * C; i++) y[i] = cn_act_exp_negabs_##S(y[i]);      \\
        for (ptrdiff_t r = 0; r < rows; r++) {                                             \\
            T *yr = y + r * C;                                                             \\
            T s = cn_softmax_sum_##S(yr, C);                                               \\
            for (ptrdiff_t i = 0; i < C; i++) yr[i] = yr[i] / s;                           \\
        }                                                                                  \\
    }                                                                                      \\
    static void cn_softmax_backward_rows_##S(const T *dy, const T *y, T *dx, ptrdiff_t C,  \\
                                             ptrdiff_t rows) {                             \\
        for (ptrdiff_t r = 0; r < rows; r++) {                                             \\
            const T *dyr = dy + r * C, *yr = y + r * C;                                    \\
            T *dxr = dx + r * C;                                                           \\
            T d = cn_softmax_dot_##S(dyr, yr, C);                                          \\
            _Pragma("GCC ivdep")                                                           \\
            for (ptrdiff_t i = 0; i < C; i++) dxr[i] = (dyr[i] - d) * yr[i];               \\
        }                                                                                  \\
    }

    CN_ACT_KERNELS(float, f)
    CN_ACT_KERNELS(double, d)
    """
    void cn_sigmoid_forward_f(const float *x, float *y, Py_ssize_t n,
                              int stream) noexcept nogil
    void cn_sigmoid_forward_d(const double *x, double *y, Py_ssize_t n,
                              int stream) noexcept nogil
    void cn_tanh_forward_f(const float *x, float *y, Py_ssize_t n, int stream) noexcept nogil
    void cn_tanh_forward_d(const double *x, double *y, Py_ssize_t n, int stream) noexcept nogil
    void cn_sigmoid_backward_f(const float *dy, const float *y, float *dx, Py_ssize_t n,
                               int stream) noexcept nogil
    void cn_sigmoid_backward_d(const double *dy, const double *y, double *dx, Py_ssize_t n,
                               int stream) noexcept nogil
    void cn_tanh_backward_f(const float *dy, const float *y, float *dx, Py_ssize_t n,
                            int stream) noexcept nogil
    void cn_tanh_backward_d(const double *dy, const double *y, double *dx, Py_ssize_t n,
                            int stream) noexcept nogil
    void cn_softmax_forward_cols_f(const float *x, float *y, Py_ssize_t C, Py_ssize_t inner,
                                   Py_ssize_t w) noexcept nogil
    void cn_softmax_forward_cols_d(const double *x, double *y, Py_ssize_t C,
                                   Py_ssize_t inner, Py_ssize_t w) noexcept nogil
    void cn_softmax_backward_cols_f(const float *dy, const float *y, float *dx, Py_ssize_t C,
                                    Py_ssize_t inner, Py_ssize_t w, int stream) noexcept nogil
    void cn_softmax_backward_cols_d(const double *dy, const double *y, double *dx,
                                    Py_ssize_t C, Py_ssize_t inner, Py_ssize_t w,
                                    int stream) noexcept nogil
    void cn_softmax_forward_rows_f(const float *x, float *y, Py_ssize_t C,
                                   Py_ssize_t rows) noexcept nogil
    void cn_softmax_forward_rows_d(const double *x, double *y, Py_ssize_t C,
                                   Py_ssize_t rows) noexcept nogil
    void cn_softmax_backward_rows_f(const float *dy, const float *y, float *dx, Py_ssize_t C,
                                    Py_ssize_t rows) noexcept nogil
    void cn_softmax_backward_rows_d(const double *dy, const double *y, double *dx,
                                    Py_ssize_t C, Py_ssize_t rows) noexcept nogil
    enum: CN_SM_BLOCK


cdef enum:
    CHUNK = 16384   # elements per work item: 64 KB of float32, large next to a thread start
    MIN_ITEMS = 8   # work items (128 K elements) from which Sigmoid, TanH, Softmax and
                    # Dropout's pass use more than one thread
    # A pass touching more bytes than this (inputs and output) streams its output (see
    # cn_act_stream): half the 32 MB last-level cache of the machine measured. A smaller
    # pass's output may still be in cache when the next layer reads it.
    STREAM_BYTES = 1 << 24


cdef inline int _threads(Py_ssize_t items) noexcept nogil:
    """One thread below MIN_ITEMS work items (a thread wake costs more than a small pass
    saves; a recurrent cell's step of 64 x 1024 values runs beside its projection's worker
    thread), else never more threads than items."""
    if items < MIN_ITEMS:
        return 1
    return <int> max(1, min(<Py_ssize_t> omp_get_max_threads(), items))


def relu_forward(const floating[::1] x,     # IN  (n,)
                 floating[::1] y,           # OUT (n,), may be x
                 double negative_slope):
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t chunks = (n + CHUNK - 1) // CHUNK
    cdef floating slope = <floating> negative_slope
    cdef Py_ssize_t k, i, end
    cdef floating v
    with nogil:
        for k in prange(chunks, schedule='static'):
            end = min((k + 1) * CHUNK, n)
            if slope == 0:
                for i in range(k * CHUNK, end):
                    v = x[i]
                    y[i] = 0 if v <= 0 else v           # NaN is not <= 0: kept
            else:
                for i in range(k * CHUNK, end):
                    v = x[i]
                    y[i] = v if v > 0 else slope * v


def relu_backward(const floating[::1] dy,   # IN  (n,)
                  const floating[::1] ref,  # IN  (n,) the bottom, or the top (slope >= 0)
                  floating[::1] dx,         # OUT (n,), may be dy
                  double negative_slope):
    cdef Py_ssize_t n = dy.shape[0]
    cdef Py_ssize_t chunks = (n + CHUNK - 1) // CHUNK
    cdef floating slope = <floating> negative_slope
    cdef Py_ssize_t k, i, end
    with nogil:
        for k in prange(chunks, schedule='static'):
            end = min((k + 1) * CHUNK, n)
            for i in range(k * CHUNK, end):
                # Caffe's factor (x > 0) + slope * (x <= 0): 0 where x is NaN
                dx[i] = dy[i] * (1 if ref[i] > 0 else (slope if ref[i] <= 0 else 0))




def dropout_apply(const floating[::1] x,          # IN  (n,)
                  const unsigned char[::1] keep,   # IN  (n,) the mask (a bool array's bytes)
                  double scale,
                  floating[::1] y):                # OUT (n,) = x * scale where keep, else
                                                   #     x * 0; may be x
    """Dropout's forward and backward in one pass: the same values as NumPy's
    (x * keep) * scale (a NaN in a dropped position stays NaN)."""
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t chunks = (n + CHUNK - 1) // CHUNK
    cdef floating s = <floating> scale
    cdef Py_ssize_t k, i, end
    with nogil:
        for k in prange(chunks, schedule='static', num_threads=_threads(chunks)):
            end = min((k + 1) * CHUNK, n)
            for i in range(k * CHUNK, end):
                y[i] = x[i] * (s if keep[i] else 0)


def smooth_forward(const floating[::1] x,   # IN  (n,)
                   floating[::1] y,         # OUT (n,), may be x
                   bint tanh):              # TanH, else Sigmoid
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t chunks = (n + CHUNK - 1) // CHUNK
    cdef int stream = 2 * n * sizeof(floating) > STREAM_BYTES
    cdef Py_ssize_t k, start, m
    with nogil:
        for k in prange(chunks, schedule='static', num_threads=_threads(chunks)):
            start = k * CHUNK
            m = min(CHUNK, n - start)
            if floating is float:
                if tanh:
                    cn_tanh_forward_f(&x[start], &y[start], m, stream)
                else:
                    cn_sigmoid_forward_f(&x[start], &y[start], m, stream)
            else:
                if tanh:
                    cn_tanh_forward_d(&x[start], &y[start], m, stream)
                else:
                    cn_sigmoid_forward_d(&x[start], &y[start], m, stream)


def smooth_backward(const floating[::1] dy,     # IN  (n,)
                    const floating[::1] y,      # IN  (n,) the top
                    floating[::1] dx,           # OUT (n,), may be dy
                    bint tanh):                 # TanH, else Sigmoid
    cdef Py_ssize_t n = dy.shape[0]
    cdef Py_ssize_t chunks = (n + CHUNK - 1) // CHUNK
    cdef int stream = 3 * n * sizeof(floating) > STREAM_BYTES
    cdef Py_ssize_t k, start, m
    with nogil:
        for k in prange(chunks, schedule='static', num_threads=_threads(chunks)):
            start = k * CHUNK
            m = min(CHUNK, n - start)
            if floating is float:
                if tanh:
                    cn_tanh_backward_f(&dy[start], &y[start], &dx[start], m, stream)
                else:
                    cn_sigmoid_backward_f(&dy[start], &y[start], &dx[start], m, stream)
            else:
                if tanh:
                    cn_tanh_backward_d(&dy[start], &y[start], &dx[start], m, stream)
                else:
                    cn_sigmoid_backward_d(&dy[start], &y[start], &dx[start], m, stream)


cdef inline Py_ssize_t _rows_per_item(Py_ssize_t C) noexcept nogil:
    """inner == 1: whole rows of C values per work item, about CHUNK values."""
    return max(1, CHUNK // max(1, C))


cdef inline int _softmax_threads(Py_ssize_t outer, Py_ssize_t C,
                                 Py_ssize_t inner) noexcept nogil:
    """Threads for a softmax pass: about CHUNK values each, never more than its work items
    (whole rows of C values when inner == 1, else CN_SM_BLOCK positions of one outer index)."""
    cdef Py_ssize_t per = _rows_per_item(C)
    cdef Py_ssize_t items = (outer * ((inner + CN_SM_BLOCK - 1) // CN_SM_BLOCK) if inner > 1
                             else (outer + per - 1) // per)
    return _threads(min((outer * C * inner + CHUNK - 1) // CHUNK, items))


def softmax_forward(const floating[:, :, ::1] x,    # IN  (outer, C, inner)
                    floating[:, :, ::1] y):         # OUT (outer, C, inner), may be x
    cdef Py_ssize_t outer = x.shape[0], C = x.shape[1], inner = x.shape[2]
    cdef Py_ssize_t blocks = (inner + CN_SM_BLOCK - 1) // CN_SM_BLOCK
    cdef Py_ssize_t per = _rows_per_item(C)
    cdef Py_ssize_t items, k, o, j0, r
    cdef int threads = _softmax_threads(outer, C, inner)
    if outer == 0 or C == 0 or inner == 0:
        return
    with nogil:
        if inner == 1:
            # vectors along C; a work item: whole rows
            items = (outer + per - 1) // per
            for k in prange(items, schedule='static', num_threads=threads):
                r = k * per
                if floating is float:
                    cn_softmax_forward_rows_f(&x[r, 0, 0], &y[r, 0, 0], C, min(per, outer - r))
                else:
                    cn_softmax_forward_rows_d(&x[r, 0, 0], &y[r, 0, 0], C, min(per, outer - r))
        else:
            # vectors along inner; a work item: CN_SM_BLOCK positions of one outer index
            items = outer * blocks
            for k in prange(items, schedule='static', num_threads=threads):
                o = k // blocks
                j0 = (k % blocks) * CN_SM_BLOCK
                if floating is float:
                    cn_softmax_forward_cols_f(&x[o, 0, j0], &y[o, 0, j0], C, inner,
                                              min(CN_SM_BLOCK, inner - j0))
                else:
                    cn_softmax_forward_cols_d(&x[o, 0, j0], &y[o, 0, j0], C, inner,
                                              min(CN_SM_BLOCK, inner - j0))


def softmax_backward(const floating[:, :, ::1] dy,  # IN  (outer, C, inner)
                     const floating[:, :, ::1] y,   # IN  (outer, C, inner) the top
                     floating[:, :, ::1] dx):       # OUT (outer, C, inner), may be dy
    cdef Py_ssize_t outer = dy.shape[0], C = dy.shape[1], inner = dy.shape[2]
    cdef Py_ssize_t blocks = (inner + CN_SM_BLOCK - 1) // CN_SM_BLOCK
    cdef Py_ssize_t per = _rows_per_item(C)
    # streamed only in whole-block rows (short rows would stream partial lines)
    cdef int stream = (3 * outer * C * inner * sizeof(floating) > STREAM_BYTES
                       and inner >= CN_SM_BLOCK)
    cdef Py_ssize_t items, k, o, j0, r
    cdef int threads = _softmax_threads(outer, C, inner)
    if outer == 0 or C == 0 or inner == 0:
        return
    with nogil:
        if inner == 1:
            items = (outer + per - 1) // per
            for k in prange(items, schedule='static', num_threads=threads):
                r = k * per
                if floating is float:
                    cn_softmax_backward_rows_f(&dy[r, 0, 0], &y[r, 0, 0], &dx[r, 0, 0], C,
                                               min(per, outer - r))
                else:
                    cn_softmax_backward_rows_d(&dy[r, 0, 0], &y[r, 0, 0], &dx[r, 0, 0], C,
                                               min(per, outer - r))
        else:
            items = outer * blocks
            for k in prange(items, schedule='static', num_threads=threads):
                o = k // blocks
                j0 = (k % blocks) * CN_SM_BLOCK
                if floating is float:
                    cn_softmax_backward_cols_f(&dy[o, 0, j0], &y[o, 0, j0], &dx[o, 0, j0], C,
                                               inner, min(CN_SM_BLOCK, inner - j0), stream)
                else:
                    cn_softmax_backward_cols_d(&dy[o, 0, j0], &y[o, 0, j0], &dx[o, 0, j0], C,
                                               inner, min(CN_SM_BLOCK, inner - j0), stream)
