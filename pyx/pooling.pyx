"""Pooling kernels: max pooling with argmax, average pooling, max unpooling (DeconvNet).

Every kernel takes NCHW C-contiguous arrays whose shapes and window geometry the layer has
validated, runs one ``nogil`` block with ``prange`` over the N*C planes (static schedule) and
does all work of a plane on one thread, so the scatter-adds of the backward passes never race
and give bit-identical results at any thread count.

Window geometry (shared by max and average pooling): output row ``oh`` covers input rows
``[oh*sh - ph, oh*sh - ph + kh)`` clipped to ``[0, H)``; columns likewise. The layer
guarantees every window meets the image (pad < kernel and the last-window rule).

Measured (AMD EPYC with AVX-512, built with -march=native; float32, N=8 C=64 128x128;
``scripts/bench.py --threads 1``, which alternates the two sides under its malloc tunables;
median of 10, ms; "before" is this module as committed in 77c11b6, rebuilt the same way and
run just before "after"). The 2-core VM ran other agents' jobs at 100% on both cores
throughout: at ``--threads 2`` every OpenMP region of either library (two runtimes, each
spinning after its regions) waited for time slices, 8-15 ms per call on both sides; with
OMP_WAIT_POLICY=passive for both, 2 threads gave the one-thread ratios again.

    case                           before ms  ratio    after ms  ratio    torch ms
    maxpool_idx k2 s2 + mask  fwd     4.7      7.6x       3.6     9.2x       33-36
                              bwd     1.9      2.5x       1.4     3.8x       4.8-5.4
    maxunpool 64->128         fwd     3.6      1.1x       2.8     1.3x       3.7-4.1
                              bwd     4.9      1.2x       2.0     2.5x       5.0-5.7
    avgpool k3 s2 p1 ceil     fwd     4.2      3.3x       2.6     5.5x       14
                              bwd     7.0      2.1x       3.1     4.5x       14-15

What paid: bit-operation selects for the k2 s2 max (GCC turns a float ?: into a branch,
which random data mispredicts: 30 ms) so that the row loop vectorises, with the float mask
written in the same pass (3.8 -> 2.9 ms, kernel); the k2 s2 backward written block by
block instead of zero-fill + scatter (2.0 -> 1.4 ms); for unpooling, the mask validated and
converted in a vectorised pass before the scatter (kernel 3.4 -> 2.0 ms) and a software
prefetch 256 elements ahead in the backward gather, whose reads of dy wander over two rows
and outran the hardware prefetcher (3.7 -> 1.3 ms; the same planes in cache took 0.7 ms:
it was memory stalls); for average pooling, rows zero-padded so that every window
sums exactly kw entries in vectorised passes, forward and backward (4.3 -> 2.2 and
7.4 -> 2.8 ms, kernel). Tried and dropped: building the unpooled plane in a cache-resident
buffer and streaming it out with non-temporal stores (no gain: 2.0 vs 2.1 ms). Unpooling
forward stays the closest to PyTorch: it writes the validated int32 index (for backward)
that PyTorch does not keep.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memset

from _openmp cimport omp_get_max_threads, omp_get_thread_num


# Work too small to split runs on one thread: waking the other threads (passive waiting, see
# convnet/__init__.py) costs more than it saves. Measured with micro-benchmarks of
# the layers on the 2-core machine under load (README "Threads on a busy machine"): below
# ~64k elements 2 threads took 1.3-3x (pooling, loss) and up to 8x (interp) the 1-thread time.
# On the idle machine, in the default training step (ms, 1 vs 2 threads): pooling backward
# of (16, 64, 16, 16) 0.24 vs 0.31, unpooling of (16, 64, 8, 8) 0.23 / 0.19 vs 0.32 / 0.26,
# (16, 32, 32, 32) pooling backward 0.34 vs 0.36: one thread up to half a million elements.
cdef enum:
    GRAIN = 1 << 19       # elements (planes x pixels) below which a kernel uses one thread


cdef inline int threads_for(Py_ssize_t work) noexcept nogil:
    """The OpenMP team size for a kernel that touches ``work`` elements."""
    return 1 if work < GRAIN else omp_get_max_threads()

import numpy as np

cdef extern from *:
    """
    /* Mask values to validated indices, branch-free so that GCC vectorizes the loop (the
       scalar check, with a branch per comparison, was most of unpool_forward's time):
       out[i] = m[i] when it is an integer in [0, size), else 0; returns how many were not.
       A float is first replaced by +0 (through its bits: no float select) unless it lies
       in [0, size), so the conversion to an integer is always defined. */
    #include <stdint.h>
    #include <string.h>
    #define CONVNET_FLOAT_MASK(NAME, M, BITS, I)                                            \
    static Py_ssize_t NAME(const M *m, I *out, Py_ssize_t n, Py_ssize_t size) {         \
        Py_ssize_t i, bad = 0;                                                              \
        const M fsize = (M) size;                                                           \
        for (i = 0; i < n; i++) {                                                           \
            M v = m[i];                                                                     \
            BITS b;                                                                         \
            I k, ok;                                                                        \
            memcpy(&b, &v, sizeof b);                                                       \
            ok = (I) ((v >= 0) & (v < fsize));                                              \
            b &= -(BITS) ok;                                                                \
            memcpy(&v, &b, sizeof b);                                                       \
            k = (I) v;                                                                      \
            ok &= (I) (((M) k == v) & (k < size));                                          \
            bad += !ok;                                                                     \
            out[i] = k & -ok;                                                               \
        }                                                                                   \
        return bad;                                                                         \
    }
    #define CONVNET_INT_MASK(NAME, M, I)                                                    \
    static Py_ssize_t NAME(const M *m, I *out, Py_ssize_t n, Py_ssize_t size) {         \
        Py_ssize_t i, bad = 0;                                                              \
        for (i = 0; i < n; i++) {                                                           \
            M v = m[i];                                                                     \
            I ok = (I) ((v >= 0) & (v < size));                                             \
            bad += !ok;                                                                     \
            out[i] = (I) v & -ok;                                                           \
        }                                                                                   \
        return bad;                                                                         \
    }
    CONVNET_FLOAT_MASK(convnet_mask_f_i32, float, int32_t, int32_t)
    CONVNET_FLOAT_MASK(convnet_mask_f_i64, float, int32_t, int64_t)
    CONVNET_FLOAT_MASK(convnet_mask_d_i32, double, int64_t, int32_t)
    CONVNET_FLOAT_MASK(convnet_mask_d_i64, double, int64_t, int64_t)
    CONVNET_INT_MASK(convnet_mask_i32_i32, int32_t, int32_t)
    CONVNET_INT_MASK(convnet_mask_i32_i64, int32_t, int64_t)
    CONVNET_INT_MASK(convnet_mask_i64_i32, int64_t, int32_t)
    CONVNET_INT_MASK(convnet_mask_i64_i64, int64_t, int64_t)
    """
    Py_ssize_t convnet_mask_f_i32(const float *m, int32_t *out, Py_ssize_t n,
                                  Py_ssize_t size) noexcept nogil
    Py_ssize_t convnet_mask_f_i64(const float *m, int64_t *out, Py_ssize_t n,
                                  Py_ssize_t size) noexcept nogil
    Py_ssize_t convnet_mask_d_i32(const double *m, int32_t *out, Py_ssize_t n,
                                  Py_ssize_t size) noexcept nogil
    Py_ssize_t convnet_mask_d_i64(const double *m, int64_t *out, Py_ssize_t n,
                                  Py_ssize_t size) noexcept nogil
    Py_ssize_t convnet_mask_i32_i32(const int32_t *m, int32_t *out, Py_ssize_t n,
                                    Py_ssize_t size) noexcept nogil
    Py_ssize_t convnet_mask_i32_i64(const int32_t *m, int64_t *out, Py_ssize_t n,
                                    Py_ssize_t size) noexcept nogil
    Py_ssize_t convnet_mask_i64_i32(const int64_t *m, int32_t *out, Py_ssize_t n,
                                    Py_ssize_t size) noexcept nogil
    Py_ssize_t convnet_mask_i64_i64(const int64_t *m, int64_t *out, Py_ssize_t n,
                                    Py_ssize_t size) noexcept nogil

cdef extern from *:
    """
    /* One row of k2 s2 max pooling over input rows r0, r1: pairwise selects made of bit
       operations (GCC turns a float ?: into a branch, which random data mispredicts), so
       GCC vectorizes the loop; the first maximum in row-major window order wins and a
       NaN wins over any number (the last NaN), as in a scan. a receives the flat index
       base + column (+ W for the second row); m, when not NULL, the same in the float type. */
    static inline float convnet_select_f(uint32_t c, float x, float y) {
        uint32_t bx, by;
        memcpy(&bx, &x, 4);
        memcpy(&by, &y, 4);
        bx = (bx & -c) | (by & ~-c);
        memcpy(&x, &bx, 4);
        return x;
    }
    static inline double convnet_select_d(uint64_t c, double x, double y) {
        uint64_t bx, by;
        memcpy(&bx, &x, 8);
        memcpy(&by, &y, 8);
        bx = (bx & -c) | (by & ~-c);
        memcpy(&x, &bx, 8);
        return x;
    }
    #define CONVNET_MAX2X2(NAME, T, B, I, SEL)                                              \
    static void NAME(const T *r0, const T *r1, T *y, I *a, T *m, Py_ssize_t n,              \
                     Py_ssize_t base, Py_ssize_t W) {                                       \
        Py_ssize_t ow;                                                                      \
        for (ow = 0; ow < n; ow++) {                                                        \
            T va = r0[2 * ow], vb = r0[2 * ow + 1], vc = r1[2 * ow], vd = r1[2 * ow + 1];   \
            I i0 = (I) ((vb > va) | (vb != vb));                                            \
            I i1 = (I) ((vd > vc) | (vd != vd));                                            \
            T m0 = SEL((B) i0, vb, va);                                                     \
            T m1 = SEL((B) i1, vd, vc);                                                     \
            I i2 = (I) ((m1 > m0) | (m1 != m1));                                            \
            I k0 = (I) (base + 2 * ow) + i0;                                                \
            I k1 = (I) (base + 2 * ow + W) + i1;                                            \
            y[ow] = SEL((B) i2, m1, m0);                                                    \
            a[ow] = (k1 & -i2) | (k0 & ~-i2);                                               \
        }                                                                                   \
        if (m)                                                                              \
            for (ow = 0; ow < n; ow++)                                                      \
                m[ow] = (T) a[ow];                                                          \
    }
    /* The adjoint of one k2 s2 row where the 2x2 blocks tile rows d0, d1: each of the four
       positions of block ow gets g[ow] where it is the argmax, else 0 (written once, no
       zero-fill and no scatter: vectorised). Returns nonzero when some argmax lies outside
       its block (another geometry): the caller then redoes the plane by scatter. */
    #define CONVNET_UNMAX2X2(NAME, T, B, I, SEL)                                            \
    static int NAME(const T *g, const I *a, T *d0, T *d1, Py_ssize_t n,                     \
                    Py_ssize_t base, Py_ssize_t W) {                                        \
        Py_ssize_t ow;                                                                      \
        const T zero = 0;                                                                   \
        I bad = 0;                                                                          \
        for (ow = 0; ow < n; ow++) {                                                        \
            I k = a[ow] - (I) (base + 2 * ow);                                              \
            T v = g[ow];                                                                    \
            d0[2 * ow] = SEL((B) (k == 0), v, zero);                                        \
            d0[2 * ow + 1] = SEL((B) (k == 1), v, zero);                                    \
            d1[2 * ow] = SEL((B) (k == (I) W), v, zero);                                    \
            d1[2 * ow + 1] = SEL((B) (k == (I) W + 1), v, zero);                            \
            bad |= (I) ((k != 0) & (k != 1) & (k != (I) W) & (k != (I) W + 1));             \
        }                                                                                   \
        return bad != 0;                                                                    \
    }
    CONVNET_UNMAX2X2(convnet_unmax2x2_f_i32, float, uint32_t, int32_t, convnet_select_f)
    CONVNET_UNMAX2X2(convnet_unmax2x2_f_i64, float, uint32_t, int64_t, convnet_select_f)
    CONVNET_UNMAX2X2(convnet_unmax2x2_d_i32, double, uint64_t, int32_t, convnet_select_d)
    CONVNET_UNMAX2X2(convnet_unmax2x2_d_i64, double, uint64_t, int64_t, convnet_select_d)
    CONVNET_MAX2X2(convnet_max2x2_f_i32, float, uint32_t, int32_t, convnet_select_f)
    CONVNET_MAX2X2(convnet_max2x2_f_i64, float, uint32_t, int64_t, convnet_select_f)
    CONVNET_MAX2X2(convnet_max2x2_d_i32, double, uint64_t, int32_t, convnet_select_d)
    CONVNET_MAX2X2(convnet_max2x2_d_i64, double, uint64_t, int64_t, convnet_select_d)
    """
    void convnet_max2x2_f_i32(const float *r0, const float *r1, float *y, int32_t *a, float *m,
                              Py_ssize_t n, Py_ssize_t base, Py_ssize_t W) noexcept nogil
    void convnet_max2x2_f_i64(const float *r0, const float *r1, float *y, int64_t *a, float *m,
                              Py_ssize_t n, Py_ssize_t base, Py_ssize_t W) noexcept nogil
    void convnet_max2x2_d_i32(const double *r0, const double *r1, double *y, int32_t *a,
                              double *m, Py_ssize_t n, Py_ssize_t base,
                              Py_ssize_t W) noexcept nogil
    void convnet_max2x2_d_i64(const double *r0, const double *r1, double *y, int64_t *a,
                              double *m, Py_ssize_t n, Py_ssize_t base,
                              Py_ssize_t W) noexcept nogil
    int convnet_unmax2x2_f_i32(const float *g, const int32_t *a, float *d0, float *d1,
                               Py_ssize_t n, Py_ssize_t base, Py_ssize_t W) noexcept nogil
    int convnet_unmax2x2_f_i64(const float *g, const int64_t *a, float *d0, float *d1,
                               Py_ssize_t n, Py_ssize_t base, Py_ssize_t W) noexcept nogil
    int convnet_unmax2x2_d_i32(const double *g, const int32_t *a, double *d0, double *d1,
                               Py_ssize_t n, Py_ssize_t base, Py_ssize_t W) noexcept nogil
    int convnet_unmax2x2_d_i64(const double *g, const int64_t *a, double *d0, double *d1,
                               Py_ssize_t n, Py_ssize_t base, Py_ssize_t W) noexcept nogil
    void __builtin_prefetch(const void *addr) noexcept nogil

cdef enum:
    PREFETCH = 256        # elements of lookahead for the unpooling gather

ctypedef fused index_t:
    int32_t
    int64_t

ctypedef fused mask_t:
    float
    double
    int32_t
    int64_t


def _windows(Py_ssize_t size, Py_ssize_t out, Py_ssize_t kernel, Py_ssize_t stride,
             Py_ssize_t pad):
    """(start, end, count) per output position along one axis: start/end clipped to the
    image, count = the window length clipped to the padded extent [-pad, size + pad)
    (Caffe's average-pooling divisor)."""
    cdef Py_ssize_t[:, ::1] tab = np.empty((3, out), dtype=np.intp)
    cdef Py_ssize_t o, s, e
    for o in range(out):
        s = o * stride - pad
        e = min(s + kernel, size + pad)
        tab[2, o] = e - s
        tab[0, o] = max(s, 0)
        tab[1, o] = min(e, size)
    return np.asarray(tab)


def max_forward(const floating[:, :, :, ::1] x,     # IN    (N, C, H, W)
                floating[:, :, :, ::1] y,           # OUT   (N, C, OH, OW)
                index_t[:, :, :, ::1] argmax,       # OUT   (N, C, OH, OW) flat h*W + w
                floating[::1] mask,                 # OUT   (N*C*OH*OW,) argmax as floats, or (0,)
                Py_ssize_t kernel_h,                # IN
                Py_ssize_t kernel_w,                # IN
                Py_ssize_t stride_h,                # IN
                Py_ssize_t stride_w,                # IN
                Py_ssize_t pad_h,                   # IN
                Py_ssize_t pad_w):                  # IN
    """Max pooling and its argmax in one pass.

    The argmax is the flat index h*W + w in the unpadded input plane of the first maximum in
    row-major window order; a NaN wins over any number (the last NaN in the window), as in
    PyTorch. ``mask`` receives the same indices in the floating type when it is not empty.
    """
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3]
    cdef bint with_mask = mask.shape[0] > 0
    cdef Py_ssize_t[:, ::1] rows = _windows(H, OH, kernel_h, stride_h, pad_h)
    cdef Py_ssize_t[:, ::1] cols = _windows(W, OW, kernel_w, stride_w, pad_w)
    cdef Py_ssize_t p, oh, ow, ih, iw, hs, he, ws, we, o, best_i
    cdef const floating* xp
    cdef floating* yp
    cdef index_t* ap
    cdef floating* mp
    cdef floating best, v
    cdef const floating* r0
    cdef const floating* r1
    # k2 s2 p0 windows that lie inside the image take an unrolled path
    cdef bint fast2 = (kernel_h == 2 and kernel_w == 2 and stride_h == 2 and stride_w == 2
                       and pad_h == 0 and pad_w == 0)
    cdef Py_ssize_t full_w = W // 2 if fast2 else 0
    if planes == 0 or OH == 0 or OW == 0:
        return
    with nogil:
        for p in prange(planes, schedule='static', num_threads=threads_for(planes * H * W)):
            xp = &x[0, 0, 0, 0] + p * H * W
            yp = &y[0, 0, 0, 0] + p * OH * OW
            ap = &argmax[0, 0, 0, 0] + p * OH * OW
            for oh in range(OH):
                hs = rows[0, oh]
                he = rows[1, oh]
                o = oh * OW
                ow = 0
                if fast2 and he - hs == 2:
                    # pairwise selects instead of a scan (vectorised, and no branches to
                    # mispredict), the same result as the row-major scan below
                    r0 = xp + hs * W
                    r1 = r0 + W
                    mp = (&mask[0] + p * OH * OW + o) if with_mask else NULL
                    if floating is float:
                        if index_t is int32_t:
                            convnet_max2x2_f_i32(r0, r1, yp + o, ap + o, mp, full_w, hs * W, W)
                        else:
                            convnet_max2x2_f_i64(r0, r1, yp + o, ap + o, mp, full_w, hs * W, W)
                    else:
                        if index_t is int32_t:
                            convnet_max2x2_d_i32(r0, r1, yp + o, ap + o, mp, full_w, hs * W, W)
                        else:
                            convnet_max2x2_d_i64(r0, r1, yp + o, ap + o, mp, full_w, hs * W, W)
                    ow = full_w
                while ow < OW:
                    ws = cols[0, ow]
                    we = cols[1, ow]
                    best_i = hs * W + ws
                    best = xp[best_i]
                    for ih in range(hs, he):
                        for iw in range(ws, we):
                            v = xp[ih * W + iw]
                            if v > best or v != v:
                                best = v
                                best_i = ih * W + iw
                    yp[o + ow] = best
                    ap[o + ow] = <index_t> best_i
                    if with_mask:
                        mask[p * OH * OW + o + ow] = <floating> best_i
                    ow = ow + 1


cdef inline int _unmax_row(const floating* g, const index_t* a, floating* d0, floating* d1,
                           Py_ssize_t n, Py_ssize_t base, Py_ssize_t W) noexcept nogil:
    """One row of 2x2 blocks from their indices (CONVNET_UNMAX2X2); nonzero when an index
    lies outside its block."""
    if floating is float:
        if index_t is int32_t:
            return convnet_unmax2x2_f_i32(g, a, d0, d1, n, base, W)
        else:
            return convnet_unmax2x2_f_i64(g, a, d0, d1, n, base, W)
    else:
        if index_t is int32_t:
            return convnet_unmax2x2_d_i32(g, a, d0, d1, n, base, W)
        else:
            return convnet_unmax2x2_d_i64(g, a, d0, d1, n, base, W)


def max_backward(const floating[:, :, :, ::1] dy,       # IN   (N, C, OH, OW)
                 const index_t[:, :, :, ::1] argmax,    # IN   (N, C, OH, OW) from max_forward
                 floating[:, :, :, ::1] dx):            # OUT  (N, C, H, W), overwritten
    """dx = 0, then dx[argmax] += dy, plane by plane (deterministic, race-free).

    Where the argmax of output (oh, ow) lies in the 2x2 block at (2 oh, 2 ow) for every
    output of the plane's tiled part (k2 s2 pooling), that part is written block by block
    instead (the same values, vectorised) and only the outputs past it are scattered; a
    plane whose indices fail the test is redone by the scatter.
    """
    cdef Py_ssize_t planes = dx.shape[0] * dx.shape[1]
    cdef Py_ssize_t H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t HW = H * W
    cdef Py_ssize_t OHW = OH * OW
    # the tiled part: fh x fw outputs whose 2x2 blocks lie inside the plane
    cdef Py_ssize_t fh = min(OH, H // 2), fw = min(OW, W // 2)
    cdef bint blocks = fh > 0 and fw > 0
    cdef Py_ssize_t p, o, oh, ow
    cdef int bad
    cdef const floating* gp
    cdef const index_t* ap
    cdef floating* dp
    cdef floating* d0
    if planes == 0 or HW == 0:
        return
    with nogil:
        for p in prange(planes, schedule='static', num_threads=threads_for(planes * H * W)):
            dp = &dx[0, 0, 0, 0] + p * HW
            gp = &dy[0, 0, 0, 0] + p * OHW
            ap = &argmax[0, 0, 0, 0] + p * OHW
            bad = 1
            if blocks:
                bad = 0
                for oh in range(fh):
                    d0 = dp + 2 * oh * W
                    o = oh * OW
                    bad = bad | _unmax_row(gp + o, ap + o, d0, d0 + W, fw, 2 * oh * W, W)
                    if 2 * fw < W:
                        memset(d0 + 2 * fw, 0, (W - 2 * fw) * sizeof(floating))
                        memset(d0 + W + 2 * fw, 0, (W - 2 * fw) * sizeof(floating))
                if 2 * fh < H:
                    memset(dp + 2 * fh * W, 0, (H - 2 * fh) * W * sizeof(floating))
            if bad:
                memset(dp, 0, HW * sizeof(floating))
                for o in range(OHW):
                    dp[ap[o]] += gp[o]
            else:
                for oh in range(OH):
                    ow = 0 if oh >= fh else fw
                    while ow < OW:
                        o = oh * OW + ow
                        dp[ap[o]] += gp[o]
                        ow = ow + 1


def _inverse_sizes(rows, cols, dtype):
    """1 / pool_size for every output position, (OH, OW): one table shared by all planes, so
    the kernels multiply instead of dividing."""
    return np.ascontiguousarray(1.0 / np.outer(rows[2], cols[2]), dtype=dtype)


def _padded_width(Py_ssize_t W, Py_ssize_t OW, Py_ssize_t kernel, Py_ssize_t stride,
                  Py_ssize_t pad):
    """The length of a row with ``pad`` zeros before it and enough after it that every
    window [ow*stride, ow*stride + kernel) of the padded row lies inside."""
    return max(pad + W, (OW - 1) * stride + kernel)


cdef inline void _window_sums(const floating* bp,     # IN  (>= (OW-1)*sw + kw,) padded row
                              floating* out,          # OUT (OW,)
                              const floating* inv,    # IN  (OW,) 1 / pool_size
                              Py_ssize_t OW,
                              Py_ssize_t kw,
                              Py_ssize_t sw) noexcept nogil:
    """out[ow] = (bp[ow*sw] + ... + bp[ow*sw + kw - 1]) * inv[ow]: one pass over the outputs
    per kernel column, each a vectorised loop (constant strides for sw 1 and 2)."""
    cdef Py_ssize_t ow, j
    if sw == 1:
        for ow in range(OW):
            out[ow] = bp[ow]
        for j in range(1, kw):
            for ow in range(OW):
                out[ow] = out[ow] + bp[ow + j]
    elif sw == 2:
        for ow in range(OW):
            out[ow] = bp[2 * ow]
        for j in range(1, kw):
            for ow in range(OW):
                out[ow] = out[ow] + bp[2 * ow + j]
    else:
        for ow in range(OW):
            out[ow] = bp[ow * sw]
        for j in range(1, kw):
            for ow in range(OW):
                out[ow] = out[ow] + bp[ow * sw + j]
    for ow in range(OW):
        out[ow] = out[ow] * inv[ow]


cdef inline void _window_spread(const floating* g,    # IN  (OW,) dy row / pool_size
                                floating* bp,         # OUT (padded width,) overwritten
                                Py_ssize_t Wp,
                                Py_ssize_t OW,
                                Py_ssize_t kw,
                                Py_ssize_t sw) noexcept nogil:
    """The adjoint of _window_sums before the scaling: bp = 0, then bp[ow*sw + j] += g[ow]
    for every kernel column j, taken last to first so that each position adds its windows
    in increasing ow (the order of a per-position gather). bp needs Wp + 2 * ceil(Wp / 2)
    elements (the stride-2 path's phase rows follow the row)."""
    cdef Py_ssize_t ow, j, q, d, r, Q
    cdef floating* ph
    if sw == 2:
        # by phase: position 2q + r gathers g[q - d] for each kernel column j = 2d + r,
        # contiguous shifted adds into ph (row r of the (2, Q) scratch after bp), then one
        # interleaving pass; the same sums in the same order as the strided loop below
        Q = (Wp + 1) // 2
        for r in range(2):
            ph = bp + Wp + r * Q
            memset(ph, 0, Q * sizeof(floating))
            j = kw - 1 if (kw - 1) % 2 == r else kw - 2
            while j >= 0:
                d = (j - r) // 2
                for q in range(d, min(OW + d, Q)):
                    ph[q] = ph[q] + g[q - d]
                j = j - 2
        ph = bp + Wp
        for q in range(Wp // 2):
            bp[2 * q] = ph[q]
            bp[2 * q + 1] = ph[Q + q]
        if Wp % 2:
            bp[Wp - 1] = ph[Q - 1]
        return
    memset(bp, 0, Wp * sizeof(floating))
    j = kw - 1
    while j >= 0:
        if sw == 1:
            for ow in range(OW):
                bp[ow + j] = bp[ow + j] + g[ow]
        else:
            for ow in range(OW):
                bp[ow * sw + j] = bp[ow * sw + j] + g[ow]
        j = j - 1


def ave_forward(const floating[:, :, :, ::1] x,     # IN   (N, C, H, W)
                floating[:, :, :, ::1] y,           # OUT  (N, C, OH, OW)
                Py_ssize_t kernel_h,                # IN
                Py_ssize_t kernel_w,                # IN
                Py_ssize_t stride_h,                # IN
                Py_ssize_t stride_w,                # IN
                Py_ssize_t pad_h,                   # IN
                Py_ssize_t pad_w):                  # IN
    """Average pooling: the window sum divided by the window size clipped to the padded
    extent (Caffe's pool_size; PyTorch's count_include_pad=True).

    Separable: per output row, the window's input rows are summed into a row buffer (a
    contiguous, vectorised loop) that has pad_w zeros on the left and enough on the right
    for every window, so each output sums exactly kw buffer entries with no clipping and
    the horizontal pass vectorises too (adding the zeros changes no sum).
    """
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3]
    rows_np = _windows(H, OH, kernel_h, stride_h, pad_h)
    cols_np = _windows(W, OW, kernel_w, stride_w, pad_w)
    cdef Py_ssize_t[:, ::1] rows = rows_np
    dt = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] inv = _inverse_sizes(rows_np, cols_np, dt)
    cdef Py_ssize_t Wp = _padded_width(W, OW, kernel_w, stride_w, pad_w)
    # zero-filled once: only [pad_w, pad_w + W) of a thread's row is ever written
    cdef floating[:, ::1] scratch = np.zeros((omp_get_max_threads(), Wp + 16), dtype=dt)
    cdef Py_ssize_t p, oh, ih, iw, hs, he
    cdef const floating* xp
    cdef const floating* xr
    cdef floating* yp
    cdef floating* buf
    if planes == 0 or OH == 0 or OW == 0:
        return
    with nogil:
        for p in prange(planes, schedule='static', num_threads=threads_for(planes * H * W)):
            buf = &scratch[omp_get_thread_num(), 0] + pad_w
            xp = &x[0, 0, 0, 0] + p * H * W
            yp = &y[0, 0, 0, 0] + p * OH * OW
            for oh in range(OH):
                hs = rows[0, oh]
                he = rows[1, oh]
                xr = xp + hs * W
                for iw in range(W):
                    buf[iw] = xr[iw]
                for ih in range(hs + 1, he):
                    xr = xp + ih * W
                    for iw in range(W):
                        buf[iw] = buf[iw] + xr[iw]
                _window_sums(buf - pad_w, yp + oh * OW, &inv[oh, 0], OW, kernel_w, stride_w)


def _covering(rows, Py_ssize_t size):
    """For every input position along one axis, the range [lo, hi) of the outputs whose
    (clipped) windows contain it; empty where stride > kernel leaves a gap."""
    starts, ends = rows[0], rows[1]
    i = np.arange(size)
    lo = np.searchsorted(ends, i, side="right")
    hi = np.searchsorted(starts, i, side="right")
    return np.ascontiguousarray(np.stack([lo, np.maximum(hi, lo)]), dtype=np.intp)


def ave_backward(const floating[:, :, :, ::1] dy,   # IN   (N, C, OH, OW)
                 floating[:, :, :, ::1] dx,         # OUT  (N, C, H, W), overwritten
                 Py_ssize_t kernel_h,               # IN
                 Py_ssize_t kernel_w,               # IN
                 Py_ssize_t stride_h,               # IN
                 Py_ssize_t stride_w,               # IN
                 Py_ssize_t pad_h,                  # IN
                 Py_ssize_t pad_w):                 # IN
    """dx[h, w] = sum over the windows containing (h, w) of dy / pool_size (the adjoint of
    ave_forward), plane by plane.

    Separable: each output row's contributions are spread along W into row oh of a
    per-thread (OH, padded W) buffer (vectorised passes, one per kernel column, as in
    ave_forward); input row h is then the sum of the buffer rows whose windows cover it,
    so dx is written once, with contiguous vectorised loops.
    """
    cdef Py_ssize_t planes = dx.shape[0] * dx.shape[1]
    cdef Py_ssize_t H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3]
    rows_np = _windows(H, OH, kernel_h, stride_h, pad_h)
    cols_np = _windows(W, OW, kernel_w, stride_w, pad_w)
    cdef Py_ssize_t[:, ::1] cover = _covering(rows_np, H)
    dt = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] inv = _inverse_sizes(rows_np, cols_np, dt)
    cdef Py_ssize_t Wp = _padded_width(W, OW, kernel_w, stride_w, pad_w)
    cdef floating[:, ::1] scratch = np.empty(
        (omp_get_max_threads(), OH * Wp + 2 * ((Wp + 1) // 2) + OW + 16), dtype=dt)
    cdef Py_ssize_t p, oh, ow, ih, iw, o, lo, hi
    cdef const floating* gp
    cdef floating* dr
    cdef floating* buf
    cdef floating* br
    cdef floating* grow
    if planes == 0 or H == 0 or W == 0:
        return
    with nogil:
        for p in prange(planes, schedule='static', num_threads=threads_for(planes * H * W)):
            dr = &dx[0, 0, 0, 0] + p * H * W
            if OH == 0 or OW == 0:
                memset(dr, 0, H * W * sizeof(floating))
                continue
            buf = &scratch[omp_get_thread_num(), 0]
            grow = buf + OH * Wp + 2 * ((Wp + 1) // 2)
            gp = &dy[0, 0, 0, 0] + p * OH * OW
            for oh in range(OH):
                o = oh * OW
                for ow in range(OW):
                    grow[ow] = gp[o + ow] * inv[oh, ow]
                _window_spread(grow, buf + oh * Wp, Wp, OW, kernel_w, stride_w)
            buf = buf + pad_w
            for ih in range(H):
                lo = cover[0, ih]
                hi = cover[1, ih]
                if lo == hi:
                    memset(dr, 0, W * sizeof(floating))
                else:
                    br = buf + lo * Wp
                    for iw in range(W):
                        dr[iw] = br[iw]
                    for oh in range(lo + 1, hi):
                        br = buf + oh * Wp
                        for iw in range(W):
                            dr[iw] = dr[iw] + br[iw]
                dr = dr + W


cdef inline Py_ssize_t _mask_index(mask_t m, Py_ssize_t size) noexcept nogil:
    """The mask value as an index into a plane of ``size``, or -1 when it is negative, too
    large, NaN or not an integer (the scalar twin of _to_index, for finding the first bad
    value once _to_index has counted some)."""
    cdef Py_ssize_t i
    cdef bint good
    if mask_t is float or mask_t is double:
        good = m >= 0 and m < size
        m = m if good else 0
        i = <Py_ssize_t> m
        good = good and <mask_t> i == m
    else:
        good = m >= 0 and m < size
        i = <Py_ssize_t> m
    return i if good else -1


cdef inline Py_ssize_t _to_index(const mask_t* mp, index_t* ip, Py_ssize_t n,
                                 Py_ssize_t size) noexcept nogil:
    """ip[i] = the valid index mp[i], or 0; returns the number of invalid values."""
    if mask_t is float:
        if index_t is int32_t:
            return convnet_mask_f_i32(mp, ip, n, size)
        else:
            return convnet_mask_f_i64(mp, ip, n, size)
    elif mask_t is double:
        if index_t is int32_t:
            return convnet_mask_d_i32(mp, ip, n, size)
        else:
            return convnet_mask_d_i64(mp, ip, n, size)
    elif mask_t is int32_t:
        if index_t is int32_t:
            return convnet_mask_i32_i32(mp, ip, n, size)
        else:
            return convnet_mask_i32_i64(mp, ip, n, size)
    else:
        if index_t is int32_t:
            return convnet_mask_i64_i32(mp, ip, n, size)
        else:
            return convnet_mask_i64_i64(mp, ip, n, size)


cdef inline Py_ssize_t _first_bad(const mask_t* mp, Py_ssize_t n, Py_ssize_t size) noexcept nogil:
    """The position of the first invalid value among mp[0:n], or -1."""
    cdef Py_ssize_t i
    for i in range(n):
        if _mask_index(mp[i], size) < 0:
            return i
    return -1


def unpool_forward(const floating[:, :, :, ::1] x,      # IN   (N, C, H, W)
                   const mask_t[:, :, :, ::1] mask,     # IN   (N, C, H, W) flat output indices
                   floating[:, :, :, ::1] y,            # OUT  (N, C, OH, OW), overwritten
                   index_t[:, :, :, ::1] index):        # OUT  (N, C, H, W) validated mask
    """y = 0, then y[mask] = x plane by plane (a later input in scan order wins a shared
    position); ``index`` receives the mask as validated integers for unpool_backward.
    Returns -1, or the flat position in ``mask`` of the first invalid value (negative,
    >= OH*OW, NaN, non-integer); an invalid value never addresses memory outside the plane,
    and y and index are garbage when one is found."""
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t HW = x.shape[2] * x.shape[3]
    cdef Py_ssize_t OHW = y.shape[2] * y.shape[3]
    cdef Py_ssize_t p, i, nbad
    cdef const floating* xp
    cdef const mask_t* mp
    cdef floating* yp
    cdef index_t* ip
    cdef Py_ssize_t[::1] bad = np.full(planes, -1, dtype=np.intp)
    if planes == 0 or HW == 0:
        if OHW > 0 and planes > 0:
            y[...] = 0
        return -1
    if OHW == 0:
        return 0
    with nogil:
        for p in prange(planes, schedule='static', num_threads=threads_for(planes * HW)):
            yp = &y[0, 0, 0, 0] + p * OHW
            xp = &x[0, 0, 0, 0] + p * HW
            mp = &mask[0, 0, 0, 0] + p * HW
            ip = &index[0, 0, 0, 0] + p * HW
            # validate and convert first (a vectorised pass), then scatter into the
            # zeroed plane, which is still in cache (writing k2 s2 planes block by block
            # instead, as max_backward does, measured no faster: 3.4 vs 3.2 ms at
            # (8, 64, 64, 64) -> 128x128, the 32 MB of output bound it)
            nbad = _to_index(mp, ip, HW, OHW)
            memset(yp, 0, OHW * sizeof(floating))
            for i in range(HW):
                yp[ip[i]] = xp[i]
            if nbad:
                bad[p] = _first_bad(mp, HW, OHW)
    for p in range(planes):
        if bad[p] >= 0:
            return p * HW + bad[p]
    return -1


def unpool_backward(const floating[:, :, :, ::1] dy,    # IN   (N, C, OH, OW)
                    const index_t[:, :, :, ::1] index,  # IN   (N, C, H, W) from unpool_forward
                    floating[:, :, :, ::1] dx):         # OUT  (N, C, H, W)
    """dx = dy[index], a gather, plane by plane (indices validated by unpool_forward)."""
    cdef Py_ssize_t planes = dx.shape[0] * dx.shape[1]
    cdef Py_ssize_t HW = dx.shape[2] * dx.shape[3]
    cdef Py_ssize_t OHW = dy.shape[2] * dy.shape[3]
    cdef Py_ssize_t p, i
    cdef const floating* gp
    cdef const index_t* ip
    cdef floating* dp
    if planes == 0 or HW == 0 or OHW == 0:
        return
    with nogil:
        for p in prange(planes, schedule='static', num_threads=threads_for(planes * HW)):
            dp = &dx[0, 0, 0, 0] + p * HW
            gp = &dy[0, 0, 0, 0] + p * OHW
            ip = &index[0, 0, 0, 0] + p * HW
            # the gather's reads of dy wander over two rows at a time and outrun the
            # hardware prefetcher: ask for the lines PREFETCH elements ahead
            for i in range(HW - PREFETCH):
                __builtin_prefetch(gp + ip[i + PREFETCH])
                dp[i] = gp[ip[i]]
            for i in range(max(HW - PREFETCH, 0), HW):
                dp[i] = gp[ip[i]]
