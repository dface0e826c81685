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
 * - output rows of the block's channels ``yplane`` apart;
 * - the weight gradient's band of dy ``dyt``: [pixel][channel], each group's output channels
 *   zero-padded to whole register blocks, ``mp`` values per pixel.
 */
#ifndef CONVNET_DIRECT_ROWS_H
#define CONVNET_DIRECT_ROWS_H

#include <stddef.h>
#include <string.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif

/* Python builds extensions with -fwrapv, which keeps GCC from folding the index arithmetic of
 * these loops (a third slower on the forward); nothing here relies on wrapping */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize ("no-wrapv")
#endif

/* output channels per register block of the forward (at most; 6 x 2 vectors, 4 x 3 or 3 x 4:
 * 12 accumulators, which reuse each input load 3 to 6 times); the forward's most vectors per
 * step; the weight gradient's accumulators (vectors of output channels x taps) */
#define DIRECT_KB 6
#define DIRECT_NV 4
#define DIRECT_WREGS 12

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
/* acc[t][v] += sum over the band's pixels (oy < rows, ox < wo) of x[oy * stride + ox +      \
 * off[t]] * dyt[oy * wo + ox][v] for the taps t < tb and vectors v < nv of output channels   \
 * of one item: the lanes are output channels (dyt: the band's dy with channels last, mp      \
 * apart per pixel), a tap's input is one broadcast, so the loop runs over pixels whatever    \
 * the output width (no partial vectors). The band's sums start from zero and are then added  \
 * to acc_out (blocked summation: shorter chains of float32 adds). */                         \
static inline __attribute__((always_inline)) void                                          \
direct_weight_band_impl_##S(const T* x, ptrdiff_t stride, const ptrdiff_t* off,              \
                            const T* dyt, ptrdiff_t mp, int nv, int tb, int rows, int wo,    \
                            T* acc_out) {                                                    \
    enum { V = (int) (sizeof(VT) / sizeof(T)) };                                             \
    VT acc[DIRECT_WREGS];                                                                    \
    ptrdiff_t o[DIRECT_WREGS];                                                               \
    for (int i = 0; i < nv * tb; i++)                                                        \
        acc[i] = (VT){0};                                                                    \
    for (int t = 0; t < tb; t++)                                                             \
        o[t] = off[t];                                                                       \
    for (int oy = 0; oy < rows; oy++) {                                                      \
        const T* xr = x + oy * stride;                                                       \
        const T* d = dyt + (ptrdiff_t) oy * wo * mp;                                         \
        for (int ox = 0; ox < wo; ox++, xr++, d += mp) {                                     \
            VT g[3];                                                                         \
            for (int v = 0; v < nv; v++) {                                                   \
                g[v] = direct_load_##S(d + v * V);                                           \
                DIRECT_IN_REGISTER(g[v]);                                                    \
            }                                                                                \
            for (int t = 0; t < tb; t++) {                                                   \
                VT s = direct_splat_##S(xr[o[t]]);                                           \
                DIRECT_IN_REGISTER(s);                                                       \
                for (int v = 0; v < nv; v++)                                                 \
                    acc[t * nv + v] += s * g[v];                                             \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    for (int i = 0; i < nv * tb; i++)                                                        \
        direct_store_##S(acc_out + i * V, direct_load_##S(acc_out + i * V) + acc[i]);        \
}                                                                                            \
                                                                                             \
/* one band of one weight-gradient item in registers of nv = 1, 2 or 3 vectors of output     \
 * channels x 12, 6 or 4 taps (12 accumulators; 4 x 3 ran at half the rate on the AMD EPYC) */\
static void direct_weight_band_##S(const T* x, ptrdiff_t stride, const ptrdiff_t* off,       \
                                   const T* dyt, ptrdiff_t mp, int nv, int rows, int wo,     \
                                   T* acc) {                                                 \
    if (nv == 1)                                                                             \
        direct_weight_band_impl_##S(x, stride, off, dyt, mp, 1, DIRECT_WREGS, rows, wo, acc);\
    else if (nv == 2)                                                                        \
        direct_weight_band_impl_##S(x, stride, off, dyt, mp, 2, DIRECT_WREGS / 2, rows, wo,  \
                                    acc);                                                    \
    else                                                                                     \
        direct_weight_band_impl_##S(x, stride, off, dyt, mp, 3, DIRECT_WREGS / 3, rows, wo,  \
                                    acc);                                                    \
}

CONVNET_DIRECT_ROWS(float, direct_vf, f)
CONVNET_DIRECT_ROWS(double, direct_vd, d)

/* dst[p * mp + m] = src[m * P + p] for m < channels, p < count, and 0 for channels <= m <
 * padded: one group's dy band, channels last, for the weight gradient. With AVX in 8 x 8
 * (4 x 4) blocks through registers: a scalar transpose took 3-4 cycles a value, more than
 * the weight gradient's arithmetic on a 3-channel input. */
static void direct_transpose_f(const float* src, ptrdiff_t P, int channels, int padded,
                               int count, float* dst, ptrdiff_t mp) {
    int m = 0;
#if defined(__AVX__)
    /* a block of 8 channels at a time over all the pixels: 8 read streams (all the channels
     * at once outran the prefetchers: the transpose waited on memory) */
    for (; m + 8 <= channels; m += 8) {
        int p = 0;
        for (; p + 8 <= count; p += 8) {
            __m256 r[8], t[8];
            for (int i = 0; i < 8; i++)
                r[i] = _mm256_loadu_ps(src + (ptrdiff_t) (m + i) * P + p);
            for (int i = 0; i < 8; i += 2) {
                t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
                t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
            }
            for (int i = 0; i < 8; i += 4) {
                r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
                r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
                r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
                r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
            }
            /* r[0..3] hold pixels (0, 4), (1, 5), (2, 6), (3, 7) of rows 0-3, r[4..7] of 4-7 */
            for (int i = 0; i < 4; i++) {
                _mm256_storeu_ps(dst + (ptrdiff_t) (p + i) * mp + m,
                                 _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
                _mm256_storeu_ps(dst + (ptrdiff_t) (p + i + 4) * mp + m,
                                 _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
            }
        }
        for (; p < count; p++)
            for (int i = 0; i < 8; i++)
                dst[(ptrdiff_t) p * mp + m + i] = src[(ptrdiff_t) (m + i) * P + p];
    }
#endif
    for (; m < padded; m++)
        for (int p = 0; p < count; p++)
            dst[(ptrdiff_t) p * mp + m] = m < channels ? src[(ptrdiff_t) m * P + p] : 0;
}

static void direct_transpose_d(const double* src, ptrdiff_t P, int channels, int padded,
                               int count, double* dst, ptrdiff_t mp) {
    int m = 0;
#if defined(__AVX__)
    for (; m + 4 <= channels; m += 4) {
        int p = 0;
        for (; p + 4 <= count; p += 4) {
            __m256d r[4], t[4];
            for (int i = 0; i < 4; i++)
                r[i] = _mm256_loadu_pd(src + (ptrdiff_t) (m + i) * P + p);
            t[0] = _mm256_unpacklo_pd(r[0], r[1]);     /* (0,0) (1,0) (0,2) (1,2) */
            t[1] = _mm256_unpackhi_pd(r[0], r[1]);     /* (0,1) (1,1) (0,3) (1,3) */
            t[2] = _mm256_unpacklo_pd(r[2], r[3]);
            t[3] = _mm256_unpackhi_pd(r[2], r[3]);
            _mm256_storeu_pd(dst + (ptrdiff_t) p * mp + m,
                             _mm256_permute2f128_pd(t[0], t[2], 0x20));
            _mm256_storeu_pd(dst + (ptrdiff_t) (p + 1) * mp + m,
                             _mm256_permute2f128_pd(t[1], t[3], 0x20));
            _mm256_storeu_pd(dst + (ptrdiff_t) (p + 2) * mp + m,
                             _mm256_permute2f128_pd(t[0], t[2], 0x31));
            _mm256_storeu_pd(dst + (ptrdiff_t) (p + 3) * mp + m,
                             _mm256_permute2f128_pd(t[1], t[3], 0x31));
        }
        for (; p < count; p++)
            for (int i = 0; i < 4; i++)
                dst[(ptrdiff_t) p * mp + m + i] = src[(ptrdiff_t) (m + i) * P + p];
    }
#endif
    for (; m < padded; m++)
        for (int p = 0; p < count; p++)
            dst[(ptrdiff_t) p * mp + m] = m < channels ? src[(ptrdiff_t) m * P + p] : 0;
}

/* lanes of a vector (8 floats or 4 doubles) */
#define DIRECT_LANES_F 8
#define DIRECT_LANES_D 4

#endif
