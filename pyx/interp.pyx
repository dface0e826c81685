"""Interp kernels: bilinear and nearest resampling of NCHW planes (DeepLab's Interp layer).

The layer (convnet/layers/interp.py) turns its mapping (align-corners or half-pixel, cropping
by pad_beg / pad_end) into small per-row and per-column tables once per shape; the kernels
only gather and scatter through them:

- ``rows`` (H2, 2) / ``cols`` (W2, 2): the two source rows / columns of every output row /
  column, as absolute indices into the (uncropped) input plane; both entries are equal at the
  last row, where DeepLab's h1p is 0. The tables are monotone (non-decreasing).
- ``row_weights`` (H2, 2) / ``col_weights`` (W2, 2): their lambdas (h0lambda, h1lambda).

Bilinear forward computes DeepLab's expression in DeepLab's order,
``y = a0 (b0 x00 + b1 x01) + a1 (b0 x10 + b1 x11)``, but the inner brackets (one horizontally
interpolated source row) are computed once per source row and kept in a two-row cache, so an
8x zoom interpolates each source row once and spends the rest on a vectorised two-row blend.
Bilinear backward runs one of two adjoint programs, whichever does less work for the shape:
columns first (output rows blended into two row accumulators, each scattered horizontally
into its source row when it leaves the cache: zooming) or rows first (each dy row scattered
into a source-width row, then added to its two source rows: shrinking). Every kernel runs
``prange`` over the N*C planes with a static schedule, one plane per iteration, so the
backward ``+=`` never races and the result does not depend on the thread count (bit-identical
at 1 and 2 threads).

The nearest and copy kernels move raw bits (``bits_t``, by item size) so that label maps of
any integer dtype keep their values and dtype.

Bilinear forward likewise runs columns first (DeepLab's order, above) or rows first
(``cw (rw x)``: the same value up to rounding), whichever does less work: rows first halves
the gathers when shrinking. From memory the rows-first forward needs a software prefetch
of the source rows PREFETCH_ROWS output rows ahead: its two-rows-per-output-row pattern
outran the hardware prefetcher (interp_down 4.9 ms without, 1.9 ms with; columns first
2.7 ms), which is why an earlier rows-first attempt had measured slower.

Measured (AMD EPYC with AVX-512, -march=native; float32; ``scripts/bench.py --threads 1``,
alternating with torch 2.13 ``F.interpolate(bilinear, align_corners=True)`` and autograd,
median of 10, ms; "before" is this module as committed in 77c11b6, rebuilt the same way;
the VM's two cores were busy with other jobs, which made 2-thread timings of both
libraries swing by 5-10x, see pooling.pyx):

=============  ============================  ==============  ==============  ========
case           shape                         before (ratio)  after (ratio)   torch
=============  ============================  ==============  ==============  ========
interp_zoom8   8x21x32x32 -> 249x249   fwd   1.8 (6.9x)      1.7-2.0 (6.4x)  12
                                       bwd   3.0 (9.0x)      3.0-3.6 (7.6x)  27
interp_down    8x64x128x128 -> 65x65   fwd   2.7 (1.7x)      2.0 (2.8x)      4.7-5.7
                                       bwd   3.6 (2.4x)      3.5 (2.5-3.4x)  8-12
=============  ============================  ==============  ==============  ========

Both zoom8 passes and the interp_down backward are unchanged code (their spread is noise);
the backward passes are compute-bound (the same time per plane with the data in cache): the two-tap scatter of the
adjoint is scalar.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from _openmp cimport omp_get_max_threads, omp_get_thread_num


# Work too small to split runs on one thread: waking the other threads (passive waiting, see
# convnet/__init__.py) costs more than it saves. Measured with micro-benchmarks of
# the layers on the 2-core machine under load (README "Threads on a busy machine"): below
# ~64k elements 2 threads took 1.3-3x (pooling, loss) and up to 8x (interp) the 1-thread time.
cdef enum:
    GRAIN = 65536         # elements (planes x pixels) below which a kernel uses one thread


cdef inline int threads_for(Py_ssize_t work) noexcept nogil:
    """The OpenMP team size for a kernel that touches ``work`` elements."""
    return 1 if work < GRAIN else omp_get_max_threads()

import numpy as np

ctypedef fused bits_t:
    uint8_t
    uint16_t
    uint32_t
    uint64_t

# Each thread's two row buffers start this many elements apart at least, so that threads
# never share a cache line.
cdef Py_ssize_t _PAD = 16


cdef extern from *:
    void __builtin_prefetch(const void *addr) noexcept nogil

cdef enum:
    PREFETCH_ROWS = 4    # output rows of lookahead for the rows-first forward


# ------------------------------------------------------------------ bilinear, per plane

cdef inline void _hinterp(const floating *src,        # IN  (W1,) one source row
                          floating *dst,              # OUT (W2,)
                          Py_ssize_t W2,
                          const Py_ssize_t *cols,     # IN  (W2, 2)
                          const floating *cw) noexcept nogil:   # IN (W2, 2)
    cdef Py_ssize_t w
    for w in range(W2):
        dst[w] = cw[2 * w] * src[cols[2 * w]] + cw[2 * w + 1] * src[cols[2 * w + 1]]


cdef inline Py_ssize_t _row_slot(Py_ssize_t row, Py_ssize_t keep, Py_ssize_t *keys,
                                 floating *slots, Py_ssize_t W2,
                                 const floating *plane, Py_ssize_t W1,
                                 const Py_ssize_t *cols,
                                 const floating *cw) noexcept nogil:
    """The cache slot holding source row ``row`` horizontally interpolated; fills the slot
    not holding ``keep`` on a miss."""
    cdef Py_ssize_t s
    if keys[0] == row:
        return 0
    if keys[1] == row:
        return 1
    s = 1 if keys[0] == keep else 0
    _hinterp(plane + row * W1, slots + s * W2, W2, cols, cw)
    keys[s] = row
    return s


cdef void _bilinear_plane(const floating *src,        # IN  (H1, W1)
                          Py_ssize_t W1,
                          floating *dst,              # OUT (H2, W2)
                          Py_ssize_t H2,
                          Py_ssize_t W2,
                          const Py_ssize_t *rows,     # IN  (H2, 2)
                          const floating *rw,         # IN  (H2, 2)
                          const Py_ssize_t *cols,     # IN  (W2, 2)
                          const floating *cw,         # IN  (W2, 2)
                          floating *slots) noexcept nogil:   # scratch (2, W2)
    cdef Py_ssize_t keys[2]
    cdef Py_ssize_t h, w, s0, s1
    cdef floating a0, a1
    cdef const floating *r0
    cdef const floating *r1
    cdef floating *out
    keys[0] = -1
    keys[1] = -1
    for h in range(H2):
        s0 = _row_slot(rows[2 * h], rows[2 * h + 1], keys, slots, W2, src, W1, cols, cw)
        s1 = _row_slot(rows[2 * h + 1], rows[2 * h], keys, slots, W2, src, W1, cols, cw)
        r0 = slots + s0 * W2
        r1 = slots + s1 * W2
        a0 = rw[2 * h]
        a1 = rw[2 * h + 1]
        out = dst + h * W2
        for w in range(W2):
            out[w] = a0 * r0[w] + a1 * r1[w]


cdef void _bilinear_plane_rows(const floating *src,   # IN  (H1, W1)
                               Py_ssize_t W1,
                               floating *dst,         # OUT (H2, W2)
                               Py_ssize_t H2,
                               Py_ssize_t W2,
                               const Py_ssize_t *rows,    # IN  (H2, 2)
                               const floating *rw,        # IN  (H2, 2)
                               const Py_ssize_t *cols,    # IN  (W2, 2)
                               const floating *cw,        # IN  (W2, 2)
                               Py_ssize_t j0,
                               Py_ssize_t j1,
                               floating *t) noexcept nogil:   # scratch (W1,)
    """Rows first: blend each output row's two source rows over the columns in use (a
    vectorised loop), then gather the output row from the blend. Half the gathers of the
    columns-first program when shrinking, where few source rows are shared."""
    cdef Py_ssize_t h, j, k, ahead
    cdef Py_ssize_t line = 64 // sizeof(floating)
    cdef floating a0, a1
    cdef const floating *r0
    cdef const floating *r1
    for h in range(H2):
        # from memory the hardware prefetcher falls behind this pattern (two rows per
        # output row, skipping some): fetch the rows of the output row PREFETCH_ROWS ahead
        ahead = h + PREFETCH_ROWS
        if ahead < H2:
            for k in range(2):
                r0 = src + rows[2 * ahead + k] * W1
                j = j0
                while j < j1:
                    __builtin_prefetch(r0 + j)
                    j = j + line
        r0 = src + rows[2 * h] * W1
        r1 = src + rows[2 * h + 1] * W1
        a0 = rw[2 * h]
        a1 = rw[2 * h + 1]
        for j in range(j0, j1):
            t[j] = a0 * r0[j] + a1 * r1[j]
        _hinterp(t, dst + h * W2, W2, cols, cw)


cdef inline void _flush(const floating *acc,          # IN  (W2,) one accumulated row
                        floating *dxrow,              # INOUT (W1,)
                        Py_ssize_t W2,
                        const Py_ssize_t *cols,       # IN  (W2, 2)
                        const floating *cw) noexcept nogil:   # IN (W2, 2)
    cdef Py_ssize_t w
    cdef floating v
    for w in range(W2):
        v = acc[w]
        dxrow[cols[2 * w]] += cw[2 * w] * v
        dxrow[cols[2 * w + 1]] += cw[2 * w + 1] * v


cdef inline Py_ssize_t _acc_slot(Py_ssize_t row, Py_ssize_t keep, Py_ssize_t *keys,
                                 floating *slots, Py_ssize_t W2,
                                 floating *plane, Py_ssize_t W1,
                                 const Py_ssize_t *cols,
                                 const floating *cw) noexcept nogil:
    """The accumulator slot of source row ``row``; on a miss the slot not holding ``keep``
    is flushed into its row of ``plane`` and zeroed."""
    cdef Py_ssize_t s
    if keys[0] == row:
        return 0
    if keys[1] == row:
        return 1
    s = 1 if keys[0] == keep else 0
    if keys[s] >= 0:
        _flush(slots + s * W2, plane + keys[s] * W1, W2, cols, cw)
    memset(slots + s * W2, 0, W2 * sizeof(floating))
    keys[s] = row
    return s


cdef void _bilinear_plane_backward(const floating *dy,       # IN  (H2, W2)
                                   Py_ssize_t H2,
                                   Py_ssize_t W2,
                                   floating *dx,              # OUT (H1, W1)
                                   Py_ssize_t H1,
                                   Py_ssize_t W1,
                                   const Py_ssize_t *rows,    # IN  (H2, 2)
                                   const floating *rw,        # IN  (H2, 2)
                                   const Py_ssize_t *cols,    # IN  (W2, 2)
                                   const floating *cw,        # IN  (W2, 2)
                                   floating *slots) noexcept nogil:   # scratch (2, W2)
    cdef Py_ssize_t keys[2]
    cdef Py_ssize_t h, w, s
    cdef floating a
    cdef floating *acc
    cdef const floating *g
    memset(dx, 0, H1 * W1 * sizeof(floating))
    keys[0] = -1
    keys[1] = -1
    for h in range(H2):
        g = dy + h * W2
        s = _acc_slot(rows[2 * h], rows[2 * h + 1], keys, slots, W2, dx, W1, cols, cw)
        acc = slots + s * W2
        a = rw[2 * h]
        for w in range(W2):
            acc[w] += a * g[w]
        s = _acc_slot(rows[2 * h + 1], rows[2 * h], keys, slots, W2, dx, W1, cols, cw)
        acc = slots + s * W2
        a = rw[2 * h + 1]
        for w in range(W2):
            acc[w] += a * g[w]
    for s in range(2):
        if keys[s] >= 0:
            _flush(slots + s * W2, dx + keys[s] * W1, W2, cols, cw)


cdef void _bilinear_plane_backward_rows(const floating *dy,      # IN  (H2, W2)
                                      Py_ssize_t H2,
                                      Py_ssize_t W2,
                                      floating *dx,             # OUT (H1, W1)
                                      Py_ssize_t H1,
                                      Py_ssize_t W1,
                                      const Py_ssize_t *rows,   # IN  (H2, 2)
                                      const floating *rw,       # IN  (H2, 2)
                                      const Py_ssize_t *cols,   # IN  (W2, 2)
                                      const floating *cw,       # IN  (W2, 2)
                                      Py_ssize_t j0,
                                      Py_ssize_t j1,
                                      floating *t) noexcept nogil:   # scratch (W1,)
    """Rows first, the adjoint of blending two source rows and then gathering the output row
    from the blend: scatter each dy row into a source-width row (the columns in use), then
    add it, weighted, to its two source rows. Cheaper than the columns-first adjoint when
    shrinking: the row work is vectorised."""
    cdef Py_ssize_t h, j
    cdef floating a
    cdef floating *d
    memset(dx, 0, H1 * W1 * sizeof(floating))
    for h in range(H2):
        memset(t + j0, 0, (j1 - j0) * sizeof(floating))
        _flush(dy + h * W2, t, W2, cols, cw)
        d = dx + rows[2 * h] * W1
        a = rw[2 * h]
        for j in range(j0, j1):
            d[j] += a * t[j]
        d = dx + rows[2 * h + 1] * W1
        a = rw[2 * h + 1]
        for j in range(j0, j1):
            d[j] += a * t[j]


cdef bint _rows_first(Py_ssize_t H2, Py_ssize_t W2, Py_ssize_t span,
                      const Py_ssize_t *rows) noexcept nogil:
    """Whether the rows-first adjoint does less work than the columns-first one, from the
    work counts of the (monotone) tables: a two-tap scatter costs about four vectorised
    row updates per element (measured: zoom8 backward columns-first 3.3 ms vs 12.8 ms,
    interp_down backward rows-first 3.0 ms vs 4.4 ms, one thread)."""
    cdef Py_ssize_t used = min(rows[2 * H2 - 1] - rows[0] + 1, 2 * H2)
    return H2 * span + 4 * H2 * W2 < 4 * used * W2 + H2 * W2


# ------------------------------------------------------------------ bilinear entry points

def bilinear_forward(const floating[:, :, :, ::1] x,        # IN  (N, C, H1, W1)
                     floating[:, :, :, ::1] y,              # OUT (N, C, H2, W2)
                     const Py_ssize_t[:, ::1] rows,         # IN  (H2, 2) in [0, H1)
                     const floating[:, ::1] row_weights,    # IN  (H2, 2)
                     const Py_ssize_t[:, ::1] cols,         # IN  (W2, 2) in [0, W1)
                     const floating[:, ::1] col_weights,    # IN  (W2, 2)
                     int order=-1):                         # IN  -1 auto, 0 cols, 1 rows first
    """y[n, c, h, w] = rw[h,0] (cw[w,0] x[rows[h,0], cols[w,0]] + cw[w,1] x[rows[h,0], cols[w,1]])
                     + rw[h,1] (cw[w,0] x[rows[h,1], cols[w,0]] + cw[w,1] x[rows[h,1], cols[w,1]])
    per (n, c) plane. Shapes and indices are validated by the caller. ``order`` forces the
    columns-first program (0, DeepLab's order of operations) or the rows-first one (1,
    cw (rw x) instead: the same value up to rounding); by default the one with less work
    runs, as in :func:`bilinear_backward`."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H1 = x.shape[2], W1 = x.shape[3]
    cdef Py_ssize_t H2 = y.shape[2], W2 = y.shape[3]
    cdef Py_ssize_t P = N * C
    cdef Py_ssize_t stride = max(2 * W2, W1) + _PAD
    cdef Py_ssize_t p, n, c, j0, j1
    cdef int nthreads = threads_for(P * H2 * W2)
    cdef bint rows_first
    cdef floating[:, ::1] scratch
    if P == 0 or H1 == 0 or W1 == 0 or H2 == 0 or W2 == 0:
        return
    j0 = cols[0, 0]
    j1 = cols[W2 - 1, 1] + 1
    rows_first = _rows_first(H2, W2, j1 - j0, &rows[0, 0]) if order < 0 else order == 1
    scratch = np.empty((nthreads, stride), dtype=np.float32 if floating is float else np.float64)
    with nogil:
        for p in prange(P, schedule='static', num_threads=nthreads):
            n = p // C
            c = p % C
            if rows_first:
                _bilinear_plane_rows(&x[n, c, 0, 0], W1, &y[n, c, 0, 0], H2, W2,
                                     &rows[0, 0], &row_weights[0, 0], &cols[0, 0],
                                     &col_weights[0, 0], j0, j1,
                                     &scratch[omp_get_thread_num(), 0])
            else:
                _bilinear_plane(&x[n, c, 0, 0], W1, &y[n, c, 0, 0], H2, W2,
                                &rows[0, 0], &row_weights[0, 0], &cols[0, 0],
                                &col_weights[0, 0], &scratch[omp_get_thread_num(), 0])


def bilinear_backward(const floating[:, :, :, ::1] dy,      # IN  (N, C, H2, W2)
                      floating[:, :, :, ::1] dx,            # OUT (N, C, H1, W1)
                      const Py_ssize_t[:, ::1] rows,        # IN  (H2, 2) in [0, H1)
                      const floating[:, ::1] row_weights,   # IN  (H2, 2)
                      const Py_ssize_t[:, ::1] cols,        # IN  (W2, 2) in [0, W1)
                      const floating[:, ::1] col_weights,   # IN  (W2, 2)
                      int order=-1):                        # IN  -1 auto, 0 cols, 1 rows first
    """The adjoint of :func:`bilinear_forward`: dx is overwritten with the scatter of dy
    (every plane zeroed, then accumulated). Deterministic: one thread per plane. ``order``
    forces the columns-first (0) or rows-first (1) program (tests); by default the one with
    less work runs."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H1 = dx.shape[2], W1 = dx.shape[3]
    cdef Py_ssize_t H2 = dy.shape[2], W2 = dy.shape[3]
    cdef Py_ssize_t P = N * C
    cdef Py_ssize_t p, n, c, j0, j1, stride
    cdef int nthreads = threads_for(P * H2 * W2)
    cdef bint rows_first
    cdef floating[:, ::1] scratch
    if P == 0 or H1 == 0 or W1 == 0:
        return
    if H2 == 0 or W2 == 0:
        with nogil:
            memset(&dx[0, 0, 0, 0], 0, P * H1 * W1 * sizeof(floating))
        return
    j0 = cols[0, 0]
    j1 = cols[W2 - 1, 1] + 1
    rows_first = _rows_first(H2, W2, j1 - j0, &rows[0, 0]) if order < 0 else order == 1
    stride = max(2 * W2, W1) + _PAD
    scratch = np.empty((nthreads, stride), dtype=np.float32 if floating is float else np.float64)
    with nogil:
        for p in prange(P, schedule='static', num_threads=nthreads):
            n = p // C
            c = p % C
            if rows_first:
                _bilinear_plane_backward_rows(&dy[n, c, 0, 0], H2, W2, &dx[n, c, 0, 0], H1,
                                                W1, &rows[0, 0], &row_weights[0, 0],
                                                &cols[0, 0], &col_weights[0, 0], j0, j1,
                                                &scratch[omp_get_thread_num(), 0])
            else:
                _bilinear_plane_backward(&dy[n, c, 0, 0], H2, W2, &dx[n, c, 0, 0], H1, W1,
                                         &rows[0, 0], &row_weights[0, 0], &cols[0, 0],
                                         &col_weights[0, 0], &scratch[omp_get_thread_num(), 0])


# ------------------------------------------------------------------ nearest

cdef void _nearest_plane(const bits_t *src,           # IN  (H1, W1)
                         Py_ssize_t W1,
                         bits_t *dst,                 # OUT (H2, W2)
                         Py_ssize_t H2,
                         Py_ssize_t W2,
                         const Py_ssize_t *rows,      # IN  (H2,)
                         const Py_ssize_t *cols) noexcept nogil:   # IN (W2,)
    cdef Py_ssize_t h, w
    cdef const bits_t *s
    cdef bits_t *out
    for h in range(H2):
        out = dst + h * W2
        if h > 0 and rows[h] == rows[h - 1]:
            # zoomed rows repeat: copy the row just written instead of gathering again
            memcpy(out, out - W2, W2 * sizeof(bits_t))
        else:
            s = src + rows[h] * W1
            for w in range(W2):
                out[w] = s[cols[w]]


def nearest_forward(const bits_t[:, :, :, ::1] x,       # IN  (N, C, H1, W1)
                    bits_t[:, :, :, ::1] y,             # OUT (N, C, H2, W2)
                    const Py_ssize_t[::1] rows,         # IN  (H2,) in [0, H1)
                    const Py_ssize_t[::1] cols):        # IN  (W2,) in [0, W1)
    """y[n, c, h, w] = x[n, c, rows[h], cols[w]], on the raw bits of any dtype of this item
    size (labels keep their integer values)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H1 = x.shape[2], W1 = x.shape[3]
    cdef Py_ssize_t H2 = y.shape[2], W2 = y.shape[3]
    cdef Py_ssize_t P = N * C
    cdef Py_ssize_t p, n, c
    if P == 0 or H1 == 0 or W1 == 0 or H2 == 0 or W2 == 0:
        return
    with nogil:
        for p in prange(P, schedule='static', num_threads=threads_for(P * H2 * W2)):
            n = p // C
            c = p % C
            _nearest_plane(&x[n, c, 0, 0], W1, &y[n, c, 0, 0], H2, W2, &rows[0], &cols[0])


def nearest_backward(const floating[:, :, :, ::1] dy,   # IN  (N, C, H2, W2)
                     floating[:, :, :, ::1] dx,         # OUT (N, C, H1, W1)
                     const Py_ssize_t[::1] rows,        # IN  (H2,) in [0, H1)
                     const Py_ssize_t[::1] cols):       # IN  (W2,) in [0, W1)
    """The adjoint of :func:`nearest_forward`: dx is overwritten with the scatter-add of dy
    onto the source pixels, one thread per plane (race-free, deterministic)."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H1 = dx.shape[2], W1 = dx.shape[3]
    cdef Py_ssize_t H2 = dy.shape[2], W2 = dy.shape[3]
    cdef Py_ssize_t P = N * C
    cdef Py_ssize_t p, n, c, h, w
    cdef floating *d
    cdef const floating *g
    if P == 0 or H1 == 0 or W1 == 0:
        return
    with nogil:
        for p in prange(P, schedule='static', num_threads=threads_for(P * H2 * W2)):
            n = p // C
            c = p % C
            memset(&dx[n, c, 0, 0], 0, H1 * W1 * sizeof(floating))
            for h in range(H2):
                d = &dx[n, c, rows[h], 0]
                g = &dy[n, c, h, 0]
                for w in range(W2):
                    d[cols[w]] += g[w]


# ------------------------------------------------------------------ same size: a copy

def copy_forward(const bits_t[:, :, :, ::1] x,          # IN  (N, C, H1, W1)
                 bits_t[:, :, :, ::1] y,                # OUT (N, C, H2, W2)
                 Py_ssize_t top,                        # IN  first row, top + H2 <= H1
                 Py_ssize_t left):                      # IN  first column, left + W2 <= W1
    """y = x[:, :, top:top + H2, left:left + W2], on raw bits."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1]
    cdef Py_ssize_t H2 = y.shape[2], W2 = y.shape[3]
    cdef Py_ssize_t P = N * C
    cdef Py_ssize_t p, n, c, h
    if P == 0 or H2 == 0 or W2 == 0:
        return
    with nogil:
        for p in prange(P, schedule='static', num_threads=threads_for(P * H2 * W2)):
            n = p // C
            c = p % C
            for h in range(H2):
                memcpy(&y[n, c, h, 0], &x[n, c, top + h, left], W2 * sizeof(bits_t))


def copy_backward(const floating[:, :, :, ::1] dy,      # IN  (N, C, H2, W2)
                  floating[:, :, :, ::1] dx,            # OUT (N, C, H1, W1)
                  Py_ssize_t top,                       # IN  top + H2 <= H1
                  Py_ssize_t left):                     # IN  left + W2 <= W1
    """dx = 0, then dx[:, :, top:top + H2, left:left + W2] += dy."""
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H1 = dx.shape[2], W1 = dx.shape[3]
    cdef Py_ssize_t H2 = dy.shape[2], W2 = dy.shape[3]
    cdef Py_ssize_t P = N * C
    cdef Py_ssize_t p, n, c, h, w
    cdef floating *d
    cdef const floating *g
    cdef bint whole = top == 0 and left == 0 and H1 == H2 and W1 == W2
    if P == 0 or H1 == 0 or W1 == 0:
        return
    with nogil:
        for p in prange(P, schedule='static', num_threads=threads_for(P * H2 * W2)):
            n = p // C
            c = p % C
            if whole:
                memcpy(&dx[n, c, 0, 0], &dy[n, c, 0, 0], H1 * W1 * sizeof(floating))
            else:
                memset(&dx[n, c, 0, 0], 0, H1 * W1 * sizeof(floating))
                for h in range(H2):
                    d = &dx[n, c, top + h, left]
                    g = &dy[n, c, h, 0]
                    for w in range(W2):
                        d[w] += g[w]
