/* Register-blocked loops of the direct convolution (pyx/direct.pyx).
 *
 * The vectors are GCC/Clang vector extensions of 32 bytes (8 floats or 4 doubles): with
 * -march=native they become AVX registers, elsewhere the compiler splits them (SSE, NEON), so
 * the same source builds on any machine. Loads and stores go through memcpy (unaligned, no
 * aliasing trouble); GCC turns them into single vector moves and `a += w * x` into FMAs.
 *
 * Layouts (one image, one group):
 * - padded input ``x``: a band of zero-padded rows whose channels lie side by side
 *   (x[row][c][col]: ``plane`` = the row width apart per channel, ``stride`` = channels x the
 *   row width apart per row), so the rows one output row reads lie together in memory (with
 *   separate planes the forward waited on the caches: 39 GFLOP/s against 61 on one core of
 *   the 2-core AMD EPYC at 16 channels, 64x64); x points at the first row and column an
 *   output reads, and every row holds at least round_up(wo, the forward's step) +
 *   (kw - 1) * dw values (direct.row_width), zero where the image has none, so the loops
 *   need no bounds tests;
 * - packed filters ``w``: for each block of DIRECT_KB output channels, [c][ky][kx][j] with
 *   j < DIRECT_KB (channels past the layer's are zero filters);
 * - output rows of the block's channels ``yplane`` apart.
 */
#ifndef CONVNET_DIRECT_ROWS_H
#define CONVNET_DIRECT_ROWS_H

#include <stddef.h>
#include <string.h>

/* Python builds extensions with -fwrapv, which keeps GCC from folding the index arithmetic of
 * these loops (a third slower on the forward); nothing here relies on wrapping */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize ("no-wrapv")
#endif

/* output channels per register block of the forward (at most; 6 x 2 vectors, 4 x 3 or 3 x 4:
 * 12 accumulators, which reuse each input load 3 to 6 times) and of the weight gradient
 * (4 channels x 3 taps); the forward's most vectors per step */
#define DIRECT_KB 6
#define DIRECT_NV 4
#define DIRECT_WKB 4

/* keeps a loaded vector in a register: GCC otherwise folds the load into each of the FMAs
 * that use it (three loads instead of one: the weight gradient's loop then waits on the load
 * ports, 39 GFLOP/s against 60 on one core of the AMD EPYC) */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && defined(__AVX__)
#define DIRECT_IN_REGISTER(v) __asm__("" : "+x"(v))
#else
#define DIRECT_IN_REGISTER(v) ((void) 0)
#endif

typedef float direct_vf __attribute__((vector_size(32)));
typedef double direct_vd __attribute__((vector_size(32)));

/* every lane = s (not (VT){0} + s: that is an add, kept for the sign of -0.0) */
static inline direct_vf direct_splat_f(float s) { return (direct_vf){s, s, s, s, s, s, s, s}; }
static inline direct_vd direct_splat_d(double s) { return (direct_vd){s, s, s, s}; }

#define CONVNET_DIRECT_ROWS(T, VT, S)                                                        \
static inline VT direct_load_##S(const T* p) { VT v; memcpy(&v, p, sizeof v); return v; }    \
static inline void direct_store_##S(T* p, VT v) { memcpy(p, &v, sizeof v); }                 \
                                                                                             \
/* y_j[oy, 0:wo] = bias_j + sum_{c, ky, kx} w[c][ky][kx][j] x[c][ky*dh][kx*dw + (0:wo)] for  \
 * the kb <= regs channels of one block (x points at the output row's first input row);      \
 * regs (DIRECT_KB, or 4 for a short last block) is a constant after inlining */              \
static inline __attribute__((always_inline)) void                                          \
direct_forward_row_impl_##S(const T* x, ptrdiff_t plane, ptrdiff_t stride, const T* w,       \
                            const T* bias, T* y, ptrdiff_t yplane, int regs, int nv, int kb, \
                            int channels, int kh, int kw, int dh, int dw, int wo) {          \
    enum { V = (int) (sizeof(VT) / sizeof(T)) };                                             \
    const int STEP = nv * V;                                                                 \
    for (int x0 = 0; x0 < wo; x0 += STEP) {                                                  \
        VT acc[DIRECT_KB][DIRECT_NV];                                                        \
        for (int j = 0; j < regs; j++)                                                       \
            for (int v = 0; v < nv; v++)                                                     \
                acc[j][v] = direct_splat_##S(bias[j]);                                               \
        const T* wc = w;                                                                     \
        for (int c = 0; c < channels; c++) {                                                 \
            for (int ky = 0; ky < kh; ky++) {                                                \
                const T* r = x + c * plane + (ptrdiff_t) ky * dh * stride + x0;              \
                for (int kx = 0; kx < kw; kx++, wc += DIRECT_KB) {                           \
                    VT in[DIRECT_NV];                                                        \
                    for (int v = 0; v < nv; v++) {                                           \
                        in[v] = direct_load_##S(r + kx * dw + v * V);                        \
                        DIRECT_IN_REGISTER(in[v]);                                           \
                    }                                                                        \
                    for (int j = 0; j < regs; j++) {                                         \
                        VT wj = direct_splat_##S(wc[j]);                                     \
                        DIRECT_IN_REGISTER(wj);                                              \
                        for (int v = 0; v < nv; v++)                                         \
                            acc[j][v] += wj * in[v];                                         \
                    }                                                                        \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
        int count = wo - x0 < STEP ? wo - x0 : STEP;                                         \
        for (int j = 0; j < kb; j++) {                                                       \
            T* out = y + j * yplane + x0;                                                    \
            if (count == STEP) {                                                             \
                for (int v = 0; v < nv; v++)                                                 \
                    direct_store_##S(out + v * V, acc[j][v]);                                \
            } else {                                                                         \
                T tail[DIRECT_NV * V];                                                       \
                for (int v = 0; v < nv; v++)                                                 \
                    direct_store_##S(tail + v * V, acc[j][v]);                               \
                memcpy(out, tail, count * sizeof(T));                                        \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
                                                                                             \
/* one output row of a block of kb channels, in registers of 6 channels x 2 vectors, 4 x 3 or \
 * 3 x 4 (12 accumulators each); 3x3 filters compile with their loops unrolled */           \
static void direct_forward_row_##S(const T* x, ptrdiff_t plane, ptrdiff_t stride,            \
                                   const T* w, const T* bias, T* y, ptrdiff_t yplane,        \
                                   int kb, int channels, int kh, int kw, int dh, int dw,     \
                                   int wo) {                                                 \
    int regs = kb > 4 ? DIRECT_KB : kb == 4 ? 4 : 3;                                         \
    if (kh == 3 && kw == 3) {                                                                \
        if (regs == DIRECT_KB)                                                               \
            direct_forward_row_impl_##S(x, plane, stride, w, bias, y, yplane, DIRECT_KB, 2,  \
                                        kb, channels, 3, 3, dh, dw, wo);                     \
        else if (regs == 4)                                                                  \
            direct_forward_row_impl_##S(x, plane, stride, w, bias, y, yplane, 4, 3, kb,      \
                                        channels, 3, 3, dh, dw, wo);                         \
        else                                                                                 \
            direct_forward_row_impl_##S(x, plane, stride, w, bias, y, yplane, 3, 4, kb,      \
                                        channels, 3, 3, dh, dw, wo);                         \
    } else {                                                                                 \
        if (regs == DIRECT_KB)                                                               \
            direct_forward_row_impl_##S(x, plane, stride, w, bias, y, yplane, DIRECT_KB, 2,  \
                                        kb, channels, kh, kw, dh, dw, wo);                   \
        else if (regs == 4)                                                                  \
            direct_forward_row_impl_##S(x, plane, stride, w, bias, y, yplane, 4, 3, kb,      \
                                        channels, kh, kw, dh, dw, wo);                       \
        else                                                                                 \
            direct_forward_row_impl_##S(x, plane, stride, w, bias, y, yplane, 3, 4, kb,      \
                                        channels, kh, kw, dh, dw, wo);                       \
    }                                                                                        \
}                                                                                            \
                                                                                             \
/* acc[j][t] += sum_{oy, ox} dy_j[oy][ox] x[oy * stride + t * dw + ox] over one image, for   \
 * the DIRECT_WKB channels j of a block (dy_j = dy + j * dyplane; rows wo apart; channels      \
 * past kb read as zero) and taps t < TAPS (x points at the item's tap (ky, kx0)); the wo     \
 * columns run in vectors, the last partial one through zero-filled copies */                \
static inline __attribute__((always_inline)) void                                          \
direct_weight_image_impl_##S(const T* x, ptrdiff_t stride, const T* dy, ptrdiff_t dyplane,   \
                             int kb, int taps, int dw, int ho, int wo, T* acc_out) {         \
    enum { V = (int) (sizeof(VT) / sizeof(T)) };                                             \
    VT acc[DIRECT_WKB][3];                                                                    \
    memcpy(acc, acc_out, sizeof acc);                                                        \
    int full = wo - wo % V;                                                                  \
    for (int oy = 0; oy < ho; oy++) {                                                        \
        const T* xr = x + oy * stride;                                                       \
        const T* d = dy + (ptrdiff_t) oy * wo;                                               \
        for (int ox = 0; ox <= wo - V; ox += V) {                                            \
            /* the taps' inputs stay in registers, one channel's dy at a time beside them     \
             * (12 accumulators + 3 + 1: all of AVX2's 16 registers, no reloads) */            \
            VT in[3];                                                                        \
            for (int t = 0; t < 3; t++) {                                                    \
                in[t] = t < taps ? direct_load_##S(xr + t * dw + ox) : (VT){0};              \
                DIRECT_IN_REGISTER(in[t]);                                                   \
            }                                                                                \
            for (int j = 0; j < DIRECT_WKB; j++) {                                           \
                VT g = j < kb ? direct_load_##S(d + j * dyplane + ox) : (VT){0};             \
                DIRECT_IN_REGISTER(g);                                                       \
                for (int t = 0; t < 3; t++)                                                  \
                    acc[j][t] += g * in[t];                                                  \
            }                                                                                \
        }                                                                                    \
        if (full < wo) {                                                                     \
            int rest = wo - full;                                                            \
            T buf[V];                                                                        \
            VT g[DIRECT_WKB], in[3];                                                          \
            for (int j = 0; j < DIRECT_WKB; j++) {                                            \
                memset(buf, 0, sizeof buf);                                                  \
                if (j < kb)                                                                  \
                    memcpy(buf, d + j * dyplane + full, rest * sizeof(T));                   \
                g[j] = direct_load_##S(buf);                                                 \
            }                                                                                \
            for (int t = 0; t < 3; t++) {                                                    \
                memset(buf, 0, sizeof buf);                                                  \
                if (t < taps)                                                                \
                    memcpy(buf, xr + t * dw + full, rest * sizeof(T));                       \
                in[t] = direct_load_##S(buf);                                                \
            }                                                                                \
            for (int j = 0; j < DIRECT_WKB; j++)                                              \
                for (int t = 0; t < 3; t++)                                                  \
                    acc[j][t] += g[j] * in[t];                                               \
        }                                                                                    \
    }                                                                                        \
    memcpy(acc_out, acc, sizeof acc);                                                        \
}                                                                                            \
/* a full block (DIRECT_WKB channels, 3 taps) compiles without the tests on kb and taps */    \
static void direct_weight_image_##S(const T* x, ptrdiff_t stride, const T* dy,               \
                                    ptrdiff_t dyplane, int kb, int taps, int dw, int ho,     \
                                    int wo, T* acc) {                                        \
    if (kb == DIRECT_WKB && taps == 3)                                                        \
        direct_weight_image_impl_##S(x, stride, dy, dyplane, DIRECT_WKB, 3, dw, ho, wo, acc); \
    else                                                                                     \
        direct_weight_image_impl_##S(x, stride, dy, dyplane, kb, taps, dw, ho, wo, acc);     \
}                                                                                            \
                                                                                             \
/* the lanes of one accumulator of direct_weight_image, added in lane order */               \
static inline T direct_lane_sum_##S(const T* acc) {                                          \
    enum { V = (int) (sizeof(VT) / sizeof(T)) };                                             \
    T s = 0;                                                                                 \
    for (int i = 0; i < V; i++)                                                              \
        s += acc[i];                                                                         \
    return s;                                                                                \
}

CONVNET_DIRECT_ROWS(float, direct_vf, f)
CONVNET_DIRECT_ROWS(double, direct_vd, d)

/* values of one accumulator of direct_weight_image (8 floats or 4 doubles) */
#define DIRECT_LANES_F 8
#define DIRECT_LANES_D 4
/* values per item of direct_weight_image's accumulators: DIRECT_WKB x 3 taps x lanes */
#define DIRECT_ACC_F (DIRECT_WKB * 3 * 8)
#define DIRECT_ACC_D (DIRECT_WKB * 3 * 4)

#endif
