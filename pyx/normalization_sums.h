/* BatchNorm's per-channel sums (pyx/normalization.pyx), in double over 8 lanes: lane j sums
 * the elements i + j (i a multiple of 8), the tail goes to lane 0, and the lanes are added
 * in order at the end, so the result depends on the count only, not on the thread count.
 *
 * Written with GCC's vector extensions (two 4-double vectors hold the 8 lanes): GCC left the
 * same loops scalar when written in Cython or as plain C over a lane array (the lane
 * accumulators stayed on the stack), which made these sums most of BatchNorm's time.
 *
 * The ReLU factor of the fused backward is 1 where top > 0, else 0 (0 for NaN), built from
 * the comparison's bits: dy * factor keeps a NaN or an infinite dy as NaN, as the ReLU's own
 * backward does, and no branch depends on the data.
 */
#ifndef CONVNET_NORMALIZATION_SUMS_H
#define CONVNET_NORMALIZATION_SUMS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef double bn_v4d __attribute__((vector_size(32)));
typedef float bn_v4f __attribute__((vector_size(16)));
typedef int32_t bn_v4i __attribute__((vector_size(16)));
typedef int64_t bn_v4l __attribute__((vector_size(32)));

/* four elements of p as doubles (unaligned loads) */
static inline bn_v4d bn_load_f(const float* p) {
    bn_v4f v;
    memcpy(&v, p, sizeof v);
    return __builtin_convertvector(v, bn_v4d);
}
static inline bn_v4d bn_load_d(const double* p) {
    bn_v4d v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* dy * (top > 0) for four elements, in the arrays' own precision, as doubles */
static inline bn_v4d bn_masked_f(const float* dy, const float* top) {
    bn_v4f d, t;
    memcpy(&d, dy, sizeof d);
    memcpy(&t, top, sizeof t);
    bn_v4i one = {0x3f800000, 0x3f800000, 0x3f800000, 0x3f800000};
    bn_v4i bits = (t > 0.0f) & one;
    bn_v4f factor;
    memcpy(&factor, &bits, sizeof factor);
    return __builtin_convertvector(d * factor, bn_v4d);
}
static inline bn_v4d bn_masked_d(const double* dy, const double* top) {
    bn_v4d d, t;
    memcpy(&d, dy, sizeof d);
    memcpy(&t, top, sizeof t);
    bn_v4l one = {0x3ff0000000000000ll, 0x3ff0000000000000ll, 0x3ff0000000000000ll,
                  0x3ff0000000000000ll};
    bn_v4l bits = (t > 0.0) & one;
    bn_v4d factor;
    memcpy(&factor, &bits, sizeof factor);
    return d * factor;
}
static inline double bn_masked1_f(float dy, float top) {
    uint32_t bits = ((uint32_t) 0 - (uint32_t) (top > 0)) & 0x3f800000u;
    float factor;
    memcpy(&factor, &bits, 4);
    return (double) (dy * factor);
}
static inline double bn_masked1_d(double dy, double top) {
    uint64_t bits = ((uint64_t) 0 - (uint64_t) (top > 0)) & 0x3ff0000000000000ull;
    double factor;
    memcpy(&factor, &bits, 8);
    return dy * factor;
}

/* the 8 lanes of a0 (0-3) and a1 (4-7) */
static inline void bn_lanes(bn_v4d a0, bn_v4d a1, double* lanes) {
    memcpy(lanes, &a0, sizeof a0);
    memcpy(lanes + 4, &a1, sizeof a1);
}

/* *s += lanes[0] + ... + lanes[7], in order */
static inline void bn_add_lanes(const double* lanes, double* s) {
    for (int j = 0; j < 8; j++)
        *s += lanes[j];
}

#define CONVNET_NORMALIZATION_SUMS(T, S)                                                     \
/* *s += sum(p - shift), *q += sum((p - shift)^2) */                                        \
static inline void bn_sums_##S(const T* p, ptrdiff_t count, double shift, double* s,         \
                               double* q) {                                                  \
    bn_v4d s0 = {0}, s1 = {0}, q0 = {0}, q1 = {0};                                           \
    ptrdiff_t full = count - count % 8, i;                                                   \
    for (i = 0; i < full; i += 8) {                                                          \
        bn_v4d v0 = bn_load_##S(p + i) - shift, v1 = bn_load_##S(p + i + 4) - shift;         \
        s0 += v0;                                                                            \
        s1 += v1;                                                                            \
        q0 += v0 * v0;                                                                       \
        q1 += v1 * v1;                                                                       \
    }                                                                                        \
    double ls[8], lq[8];                                                                     \
    bn_lanes(s0, s1, ls);                                                                    \
    bn_lanes(q0, q1, lq);                                                                    \
    for (; i < count; i++) {                /* the tail, in lane 0 */                        \
        double v = (double) p[i] - shift;                                                    \
        ls[0] += v;                                                                          \
        lq[0] += v * v;                                                                      \
    }                                                                                        \
    bn_add_lanes(ls, s);                                                                     \
    bn_add_lanes(lq, q);                                                                     \
}                                                                                            \
/* *s += sum(g), *q += sum(g (x - mean)), g = dy, or dy * (top > 0) with ``top`` */          \
static inline void bn_grad_sums_##S(const T* dy, const T* x, const T* top, ptrdiff_t count,  \
                                    double mean, double* s, double* q) {                     \
    bn_v4d s0 = {0}, s1 = {0}, q0 = {0}, q1 = {0};                                           \
    ptrdiff_t full = count - count % 8, i;                                                   \
    for (i = 0; i < full; i += 8) {                                                          \
        bn_v4d g0 = top ? bn_masked_##S(dy + i, top + i) : bn_load_##S(dy + i);              \
        bn_v4d g1 = top ? bn_masked_##S(dy + i + 4, top + i + 4) : bn_load_##S(dy + i + 4);  \
        s0 += g0;                                                                            \
        s1 += g1;                                                                            \
        q0 += g0 * (bn_load_##S(x + i) - mean);                                              \
        q1 += g1 * (bn_load_##S(x + i + 4) - mean);                                          \
    }                                                                                        \
    double ls[8], lq[8];                                                                     \
    bn_lanes(s0, s1, ls);                                                                    \
    bn_lanes(q0, q1, lq);                                                                    \
    for (; i < count; i++) {                /* the tail, in lane 0 */                        \
        double g = top ? bn_masked1_##S(dy[i], top[i]) : (double) dy[i];                     \
        ls[0] += g;                                                                          \
        lq[0] += g * ((double) x[i] - mean);                                                 \
    }                                                                                        \
    bn_add_lanes(ls, s);                                                                     \
    bn_add_lanes(lq, q);                                                                     \
}

CONVNET_NORMALIZATION_SUMS(float, f)
CONVNET_NORMALIZATION_SUMS(double, d)

#endif
