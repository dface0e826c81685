/* The fused LSTM unit over rows of D units (pyx/recurrent.pyx), forward and backward.
 *
 * Gates are in Caffe's order i, f, o, g: gates[0:D] = i, [D:2D] = f, [2D:3D] = o, [3D:4D] = g
 * (pre-activations in forward; ``act`` holds sigmoid(i), sigmoid(f + forget_bias),
 * sigmoid(o), tanh(g)). Every loop takes one restrict-qualified pointer per stream, so GCC
 * vectorises it over the units (Cython cannot say restrict).
 *
 * float: exp and tanh are written out here (Cody-Waite reduction to |r| <= ln2 / 2, a degree-7
 * Taylor polynomial for exp(r) - 1, 2^n put together from its bits) so that the loops
 * vectorise: libm's expf / tanhf are calls GCC does not vectorise without -ffast-math, and
 * NumPy's float32 tanh runs at 2.6 ns an element here. Measured error (tests/layers/
 * test_recurrent.py) below 4 float32 ulps of the exact value over [-30, 30]. double: libm's
 * exp and tanh (the float64 path is for checking, to 1e-10 against PyTorch).
 *
 *   sigmoid(x) = 1 / (1 + exp(-x))           exp's argument clamped to [-87, 87] (no inf)
 *   tanh(x)    = sign(x) * -m / (2 + m),      m = exp(-2|x|) - 1, |x| clamped to 9
 *                                            (tanh(9) rounds to 1 in float)
 * NaN gives NaN.
 */
#ifndef CONVNET_RECURRENT_ROWS_H
#define CONVNET_RECURRENT_ROWS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline int32_t cn_bits_f(float v) {
    int32_t b;
    memcpy(&b, &v, sizeof b);
    return b;
}

static inline float cn_from_bits_f(int32_t b) {
    float v;
    memcpy(&v, &b, sizeof v);
    return v;
}

/* 2^n for an integral float n in [-126, 127], from its bits */
static inline float cn_exp2i_f(float n) {
    return cn_from_bits_f(((int32_t) n + 127) << 23);
}

/* v with its magnitude clamped to lim (finite, >= 0); NaN stays NaN. Integer compares on
 * the bits (the magnitude's bits order as its value): float compares may trap on NaN, which
 * stops GCC from vectorising the loop (without -fno-trapping-math). */
static inline float cn_clamp_abs_f(float v, float lim) {
    int32_t b = cn_bits_f(v), mag = b & 0x7fffffff, l = cn_bits_f(lim);
    int32_t m = mag < l ? mag : l;
    m = mag > 0x7f800000 ? mag : m;
    return cn_from_bits_f((b & (int32_t) 0x80000000) | m);
}

/* exp(x) - 1 = s * q + (s - 1) with s = 2^n, q = exp(r) - 1, x = n ln2 + r; exact q when
 * n = 0 (no cancellation for small x). x in [-87, 87]. Returns s and q. */
static inline void cn_expm1_parts_f(float x, float* s, float* q) {
    /* round x / ln2 to the nearest integer: 1.5 * 2^23 pushes the fraction out */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693145751953125f;          /* ln2, high part (exact product) */
    r = r - n * 1.42860682030941723e-06f;          /* ln2, low part */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    *q = p * r;
    *s = cn_exp2i_f(n);
}

static inline float cn_sigmoid_f(float x) {
    float y = cn_clamp_abs_f(-x, 87.0f);
    float s, q;
    cn_expm1_parts_f(y, &s, &q);
    return 1.0f / (1.0f + (s * q + s));            /* exp(y) = s (q + 1) */
}

static inline float cn_tanh_f(float x) {
    float a = fabsf(cn_clamp_abs_f(x, 9.0f));
    float s, q;
    cn_expm1_parts_f(-2.0f * a, &s, &q);
    float m = s * q + (s - 1.0f);
    return copysignf(-m / (2.0f + m), x);
}

static inline double cn_sigmoid_d(double x) { return 1.0 / (1.0 + exp(-x)); }
static inline double cn_tanh_d(double x) { return tanh(x); }

#define CONVNET_RECURRENT_ROWS(T, S)                                                         \
/* one row forward: act (4D), tanh_c, c, h (D) from c_prev (D), gates (4D); the four gate   \
   activations first, each one loop over its contiguous D values, then the cell: 15-20 %    \
   faster than one loop doing all per unit (a 64 x 256 step: 64-72 against 80-83 us at     \
   one thread), the same operations per element */                                          \
static inline void lstm_unit_forward_row_##S(const T* restrict c_prev,                       \
                                             const T* restrict gates, T keep, T forget_bias,  \
                                             T* restrict act, T* restrict tanh_c,            \
                                             T* restrict c, T* restrict h, ptrdiff_t d) {    \
    for (ptrdiff_t k = 0; k < d; k++)                                                        \
        act[k] = cn_sigmoid_##S(gates[k]);                                                   \
    for (ptrdiff_t k = 0; k < d; k++)                                                        \
        act[d + k] = cn_sigmoid_##S(gates[d + k] + forget_bias);                             \
    for (ptrdiff_t k = 0; k < d; k++)                                                        \
        act[2 * d + k] = cn_sigmoid_##S(gates[2 * d + k]);                                   \
    for (ptrdiff_t k = 0; k < d; k++)                                                        \
        act[3 * d + k] = cn_tanh_##S(gates[3 * d + k]);                                      \
    for (ptrdiff_t k = 0; k < d; k++) {                                                      \
        T cc = keep * act[d + k] * c_prev[k] + act[k] * act[3 * d + k];                      \
        T tc = cn_tanh_##S(cc);                                                              \
        c[k] = cc;                                                                           \
        tanh_c[k] = tc;                                                                      \
        h[k] = act[2 * d + k] * tc;                                                          \
    }                                                                                        \
}                                                                                            \
/* one row backward: dc_prev (D), dgates (4D) from the forward's act, tanh_c and dc, dh */    \
static inline void lstm_unit_backward_row_##S(const T* restrict c_prev, T keep,              \
                                              const T* restrict act,                         \
                                              const T* restrict tanh_c,                      \
                                              const T* restrict dc, const T* restrict dh,    \
                                              T* restrict dc_prev, T* restrict dgates,       \
                                              ptrdiff_t d) {                                 \
    for (ptrdiff_t k = 0; k < d; k++) {                                                      \
        T i = act[k], f = act[d + k], o = act[2 * d + k], g = act[3 * d + k];                \
        T tc = tanh_c[k];                                                                    \
        T dct = dc[k] + dh[k] * o * (1 - tc * tc);                                           \
        dc_prev[k] = dct * f * keep;                                                         \
        dgates[k] = dct * g * i * (1 - i);                                                   \
        dgates[d + k] = dct * c_prev[k] * keep * f * (1 - f);                                \
        dgates[2 * d + k] = dh[k] * tc * o * (1 - o);                                        \
        dgates[3 * d + k] = dct * i * (1 - g * g);                                           \
    }                                                                                        \
}                                                                                            \
/* rows r0 .. r1 - 1 of C-contiguous (R, D) / (R, 4D) arrays */                             \
static inline void lstm_unit_forward_rows_##S(const T* c_prev, const T* gates,               \
                                              const T* cont, T forget_bias, T* act,          \
                                              T* tanh_c, T* c, T* h, ptrdiff_t r0,           \
                                              ptrdiff_t r1, ptrdiff_t d) {                   \
    for (ptrdiff_t r = r0; r < r1; r++)                                                      \
        lstm_unit_forward_row_##S(c_prev + r * d, gates + 4 * r * d, cont[r], forget_bias,   \
                                  act + 4 * r * d, tanh_c + r * d, c + r * d, h + r * d, d); \
}                                                                                            \
static inline void lstm_unit_backward_rows_##S(const T* c_prev, const T* cont,               \
                                               const T* act, const T* tanh_c, const T* dc,   \
                                               const T* dh, T* dc_prev, T* dgates,           \
                                               ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t d) {    \
    for (ptrdiff_t r = r0; r < r1; r++)                                                      \
        lstm_unit_backward_row_##S(c_prev + r * d, cont[r], act + 4 * r * d, tanh_c + r * d, \
                                   dc + r * d, dh + r * d, dc_prev + r * d,                  \
                                   dgates + 4 * r * d, d);                                   \
}

CONVNET_RECURRENT_ROWS(float, f)
CONVNET_RECURRENT_ROWS(double, d)

#endif
