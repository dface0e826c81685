/* The 1-D passes of Winograd F(4x4, 3x3) over one row of tiles (pyx/winograd.pyx).
 *
 * Each pass runs one 1-D transform for all ``tw`` tiles of a row at once. Every loop takes
 * one restrict-qualified pointer per stream, which is what lets GCC vectorise it over the
 * tiles (Cython cannot say restrict, and with a base pointer plus strides GCC gives up).
 * Layouts: a gathered row ``lb`` holds patch column j of tile t at lb[4t + j]; a set of six
 * (or four) transformed rows is ``rows[i * stride + t]``. The coefficients are integers, so
 * the arithmetic stays in the array's own precision.
 */
#ifndef CONVNET_WINOGRAD_ROWS_H
#define CONVNET_WINOGRAD_ROWS_H

#include <stddef.h>

#define CONVNET_WINOGRAD_ROWS(T, S)                                                          \
/* p_j[t] = lb[4t + j]: split a row by column residue mod 4 */                              \
static inline void wino_split4_##S(const T* restrict lb, T* restrict p0, T* restrict p1,     \
                                   T* restrict p2, T* restrict p3, ptrdiff_t n) {            \
    for (ptrdiff_t t = 0; t < n; t++) {                                                      \
        p0[t] = lb[4 * t];                                                                   \
        p1[t] = lb[4 * t + 1];                                                               \
        p2[t] = lb[4 * t + 2];                                                               \
        p3[t] = lb[4 * t + 3];                                                               \
    }                                                                                        \
}                                                                                            \
/* q[4t + j] = p_j[t]: the inverse of wino_split4 */                                        \
static inline void wino_merge4_##S(const T* restrict p0, const T* restrict p1,               \
                                   const T* restrict p2, const T* restrict p3,               \
                                   T* restrict q, ptrdiff_t n) {                             \
    for (ptrdiff_t t = 0; t < n; t++) {                                                      \
        q[4 * t] = p0[t];                                                                    \
        q[4 * t + 1] = p1[t];                                                                \
        q[4 * t + 2] = p2[t];                                                                \
        q[4 * t + 3] = p3[t];                                                                \
    }                                                                                        \
}                                                                                            \
/* o = B^T d, elementwise over n: the input transform of six values */                      \
static inline void wino_bt_##S(const T* restrict e0, const T* restrict e1,                   \
                               const T* restrict e2, const T* restrict e3,                   \
                               const T* restrict e4, const T* restrict e5,                   \
                               T* restrict o0, T* restrict o1, T* restrict o2,               \
                               T* restrict o3, T* restrict o4, T* restrict o5, ptrdiff_t n) {\
    for (ptrdiff_t t = 0; t < n; t++) {                                                      \
        T d0 = e0[t], d1 = e1[t], d2 = e2[t], d3 = e3[t], d4 = e4[t], d5 = e5[t];            \
        o0[t] = 4 * d0 - 5 * d2 + d4;                                                        \
        o1[t] = -4 * (d1 + d2) + d3 + d4;                                                    \
        o2[t] = 4 * (d1 - d2) - d3 + d4;                                                     \
        o3[t] = 2 * (d3 - d1) - d2 + d4;                                                     \
        o4[t] = 2 * (d1 - d3) - d2 + d4;                                                     \
        o5[t] = 4 * d1 - 5 * d3 + d5;                                                        \
    }                                                                                        \
}                                                                                            \
/* o = A^T m + bias, elementwise over n: the output transform of six values to four */      \
static inline void wino_at_##S(const T* restrict e0, const T* restrict e1,                   \
                               const T* restrict e2, const T* restrict e3,                   \
                               const T* restrict e4, const T* restrict e5,                   \
                               T* restrict o0, T* restrict o1, T* restrict o2,               \
                               T* restrict o3, T bias, ptrdiff_t n) {                        \
    for (ptrdiff_t t = 0; t < n; t++) {                                                      \
        T a0 = e0[t], a1 = e1[t], a2 = e2[t], a3 = e3[t], a4 = e4[t], a5 = e5[t];            \
        o0[t] = a0 + a1 + a2 + a3 + a4 + bias;                                               \
        o1[t] = a1 - a2 + 2 * (a3 - a4) + bias;                                              \
        o2[t] = a1 + a2 + 4 * (a3 + a4) + bias;                                              \
        o3[t] = a1 - a2 + 8 * (a3 - a4) + a5 + bias;                                         \
    }                                                                                        \
}                                                                                            \
/* o = A y, elementwise over n: the adjoint of the output transform, four values to six */  \
static inline void wino_a_##S(const T* restrict e0, const T* restrict e1,                    \
                              const T* restrict e2, const T* restrict e3,                    \
                              T* restrict o0, T* restrict o1, T* restrict o2,                \
                              T* restrict o3, T* restrict o4, T* restrict o5, ptrdiff_t n) { \
    for (ptrdiff_t t = 0; t < n; t++) {                                                      \
        T y0 = e0[t], y1 = e1[t], y2 = e2[t], y3 = e3[t];                                    \
        o0[t] = y0;                                                                          \
        o1[t] = y0 + y1 + y2 + y3;                                                           \
        o2[t] = y0 - y1 + y2 - y3;                                                           \
        o3[t] = y0 + 2 * y1 + 4 * y2 + 8 * y3;                                               \
        o4[t] = y0 - 2 * y1 + 4 * y2 - 8 * y3;                                               \
        o5[t] = y3;                                                                          \
    }                                                                                        \
}                                                                                            \
/* h[k*tw + t] = (B^T d)_k for the 6 patch columns of tile t in lb (4(tw + 1) values; patch \
   column 4 + j of tile t is column j of tile t + 1); ph: 4(tw + 1) of scratch */            \
static inline void wino_input_rows_##S(const T* lb, T* ph, T* h, ptrdiff_t tw) {             \
    ptrdiff_t n = tw + 1;                                                                    \
    wino_split4_##S(lb, ph, ph + n, ph + 2 * n, ph + 3 * n, n);                              \
    wino_bt_##S(ph, ph + n, ph + 2 * n, ph + 3 * n, ph + 1, ph + n + 1,                      \
                h, h + tw, h + 2 * tw, h + 3 * tw, h + 4 * tw, h + 5 * tw, tw);              \
}                                                                                            \
/* out[k * os + t] = (B^T e)_k over the six rows e_i = in[i * is + t] */                    \
static inline void wino_input_cols_##S(const T* in, ptrdiff_t is, T* out, ptrdiff_t os,      \
                                       ptrdiff_t tw) {                                       \
    wino_bt_##S(in, in + is, in + 2 * is, in + 3 * is, in + 4 * is, in + 5 * is,             \
                out, out + os, out + 2 * os, out + 3 * os, out + 4 * os, out + 5 * os, tw);  \
}                                                                                            \
/* out[r * os + t] = (A^T e)_r, r < 4, over the six rows e_k = in[k * is + t] */            \
static inline void wino_output_cols_##S(const T* in, ptrdiff_t is, T* out, ptrdiff_t os,     \
                                        ptrdiff_t tw) {                                      \
    wino_at_##S(in, in + is, in + 2 * is, in + 3 * is, in + 4 * is, in + 5 * is,             \
                out, out + os, out + 2 * os, out + 3 * os, 0, tw);                           \
}                                                                                            \
/* q[4t + s] = (A^T e)_s + bias over the six rows e_k = in[k * tw + t]; ph: 4tw scratch */  \
static inline void wino_output_rows_##S(const T* in, T* ph, T* q, T bias, ptrdiff_t tw) {    \
    wino_at_##S(in, in + tw, in + 2 * tw, in + 3 * tw, in + 4 * tw, in + 5 * tw,             \
                ph, ph + tw, ph + 2 * tw, ph + 3 * tw, bias, tw);                            \
    wino_merge4_##S(ph, ph + tw, ph + 2 * tw, ph + 3 * tw, q, tw);                           \
}                                                                                            \
/* h[k*tw + t] = (A y)_k, k < 6, for the 4 columns y of tile t in lb; ph: 4tw scratch */    \
static inline void wino_adjoint_rows_##S(const T* lb, T* ph, T* h, ptrdiff_t tw) {           \
    wino_split4_##S(lb, ph, ph + tw, ph + 2 * tw, ph + 3 * tw, tw);                          \
    wino_a_##S(ph, ph + tw, ph + 2 * tw, ph + 3 * tw,                                        \
               h, h + tw, h + 2 * tw, h + 3 * tw, h + 4 * tw, h + 5 * tw, tw);               \
}                                                                                            \
/* out[k * os + t] = (A y)_k over the four rows y_r = in[r * is + t] */                     \
static inline void wino_adjoint_cols_##S(const T* in, ptrdiff_t is, T* out, ptrdiff_t os,    \
                                         ptrdiff_t tw) {                                     \
    wino_a_##S(in, in + is, in + 2 * is, in + 3 * is,                                        \
               out, out + os, out + 2 * os, out + 3 * os, out + 4 * os, out + 5 * os, tw);   \
}

CONVNET_WINOGRAD_ROWS(float, f)
CONVNET_WINOGRAD_ROWS(double, d)

/* The filter transforms, in double over n filters at once (structure of arrays: entry k of
 * filter e at a_k[e]), so that GCC vectorises them over the filters; written with the same
 * operations in the same order as the scalar code they replaced. */

/* o = G a for the three taps a of a filter column: the forward filter transform, 3 -> 6 */
static inline void wino_g_d(const double* restrict a0, const double* restrict a1,
                            const double* restrict a2, double* restrict o0,
                            double* restrict o1, double* restrict o2, double* restrict o3,
                            double* restrict o4, double* restrict o5, ptrdiff_t n) {
    const double r4 = 1.0 / 4, r6 = 1.0 / 6, r12 = 1.0 / 12, r24 = 1.0 / 24;
    for (ptrdiff_t e = 0; e < n; e++) {
        double g0 = a0[e], g1 = a1[e], g2 = a2[e];
        o0[e] = g0 * r4;
        o1[e] = -(g0 + g1 + g2) * r6;
        o2[e] = -(g0 - g1 + g2) * r6;
        o3[e] = g0 * r24 + g1 * r12 + g2 * r6;
        o4[e] = g0 * r24 - g1 * r12 + g2 * r6;
        o5[e] = g2;
    }
}

/* o = G^T u for six transformed values u: the adjoint filter transform, 6 -> 3 */
static inline void wino_gt_d(const double* restrict u0, const double* restrict u1,
                             const double* restrict u2, const double* restrict u3,
                             const double* restrict u4, const double* restrict u5,
                             double* restrict o0, double* restrict o1, double* restrict o2,
                             ptrdiff_t n) {
    const double r4 = 1.0 / 4, r6 = 1.0 / 6, r12 = 1.0 / 12, r24 = 1.0 / 24;
    for (ptrdiff_t e = 0; e < n; e++) {
        double v0 = u0[e], v1 = u1[e], v2 = u2[e], v3 = u3[e], v4 = u4[e], v5 = u5[e];
        o0[e] = v0 * r4 - (v1 + v2) * r6 + (v3 + v4) * r24;
        o1[e] = (v2 - v1) * r6 + (v3 - v4) * r12;
        o2[e] = (v3 + v4 - v1 - v2) * r6 + v5;
    }
}

/* out[p * ld + e] = (G g_e G^T)_p, p = 6i + j, for the 3x3 filters g_e with tap 3r + c at
 * g[(3r + c) * ld + e]; t: 18 * ld scratch */
static inline void wino_filters_d(const double* g, double* t, double* out, ptrdiff_t ld,
                                  ptrdiff_t n) {
    for (int c = 0; c < 3; c++)        /* columns: t[(3i + c) * ld + e] = (G g_col c)_i */
        wino_g_d(g + c * ld, g + (3 + c) * ld, g + (6 + c) * ld,
                 t + c * ld, t + (3 + c) * ld, t + (6 + c) * ld, t + (9 + c) * ld,
                 t + (12 + c) * ld, t + (15 + c) * ld, n);
    for (int i = 0; i < 6; i++)        /* rows */
        wino_g_d(t + 3 * i * ld, t + (3 * i + 1) * ld, t + (3 * i + 2) * ld,
                 out + 6 * i * ld, out + (6 * i + 1) * ld, out + (6 * i + 2) * ld,
                 out + (6 * i + 3) * ld, out + (6 * i + 4) * ld, out + (6 * i + 5) * ld, n);
}

/* g[(3r + c) * ld + e] = (G^T u_e G)_{rc} for the 6x6 u_e at u[p * ld + e]; t: 18 * ld */
static inline void wino_filters_adjoint_d(const double* u, double* t, double* g, ptrdiff_t ld,
                                          ptrdiff_t n) {
    for (int i = 0; i < 6; i++)        /* rows: t[(3i + c) * ld + e] = (G^T u_row i)_c */
        wino_gt_d(u + 6 * i * ld, u + (6 * i + 1) * ld, u + (6 * i + 2) * ld,
                  u + (6 * i + 3) * ld, u + (6 * i + 4) * ld, u + (6 * i + 5) * ld,
                  t + 3 * i * ld, t + (3 * i + 1) * ld, t + (3 * i + 2) * ld, n);
    for (int c = 0; c < 3; c++)        /* columns */
        wino_gt_d(t + c * ld, t + (3 + c) * ld, t + (6 + c) * ld, t + (9 + c) * ld,
                  t + (12 + c) * ld, t + (15 + c) * ld,
                  g + c * ld, g + (3 + c) * ld, g + (6 + c) * ld, n);
}

#endif
