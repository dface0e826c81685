"""Direct convolution at stride 1 (any kernel, pad and dilation): no im2col buffer, no GEMM.

Where a layer has few channels the GEMMs of im2col and Winograd are too thin to run at
sgemm's rate and their buffers (9x the input, or 36 transform points) cost more memory
traffic than the arithmetic: a 16-channel 3x3 layer does 144 multiply-adds per output, which
a register-blocked loop runs straight from zero-padded input rows. The loops
(pyx/direct_rows.h) keep up to 6 output channels x two vectors of columns in registers; the
weight gradient keeps vectors of output channels x taps (2 x 6: 16 channels x 6 taps).

- ``direct_forward``: y = conv(x) + bias. Each task (ROW_CHUNK output rows of one image and
  group) first copies its input rows, zero-padded (pads of any sign: a negative one crops)
  and ``row_width`` wide so the vector loops need no bounds tests, into its thread's band,
  which stays in the L2 cache. The backward-data pass of a stride-1 convolution is this same
  forward with the filters rotated by 180 degrees, their in/out channels swapped and
  pad' = dilation * (k - 1) - pad (convnet.backend.cpu).
- ``direct_backward_weight``: dW += sum over images and pixels of dy * x, in bands of
  output rows whose input rows each thread copies the same way, with the band's dy copied
  channels last: a pixel's dy is a vector over output channels, each tap's input one
  broadcast, so the loop runs over the band's pixels whatever the row width (the loop along
  rows that it replaced ran at 45-60 GFLOP/s on one core of the AMD EPYC at 16 channels,
  64x64, and worse on narrower rows; this one at 70-90, and 55-80 at 16x16 and 8x8).
- ``direct_pointwise_forward``: an unpadded 1x1 straight from x (each input is read once,
  so a band copy would only add traffic); the weight gradient of any unpadded filter reads
  x in place too.

Work: the forward's tasks run in a dynamic schedule, each output row written by one thread;
the weight gradient splits the images into two classes (n % 2) and its items (group, block
of output channels, block of taps) into fixed ranges, sums every item over its class's
images and bands in order, then adds the classes in order: both results are bit-identical
for any thread count.
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memcpy, memset

from _openmp cimport omp_get_thread_num


cdef extern from "direct_rows.h" nogil:
    enum:
        DIRECT_KB
        DIRECT_WREGS
        DIRECT_LANES_F
        DIRECT_LANES_D
    void direct_forward_row_f(const float* x, Py_ssize_t plane, Py_ssize_t stride,
                              const float* w, const float* bias, float* y, Py_ssize_t yplane,
                              int kb, int channels, int kh, int kw, int dh, int dw, int wo)
    void direct_forward_row_d(const double* x, Py_ssize_t plane, Py_ssize_t stride,
                              const double* w, const double* bias, double* y,
                              Py_ssize_t yplane, int kb, int channels, int kh, int kw, int dh,
                              int dw, int wo)
    void direct_weight_band_f(const float* x, Py_ssize_t stride, const Py_ssize_t* off,
                              const float* dyt, Py_ssize_t mp, int nv, int rows, int wo,
                              float* acc)
    void direct_weight_band_d(const double* x, Py_ssize_t stride, const Py_ssize_t* off,
                              const double* dyt, Py_ssize_t mp, int nv, int rows, int wo,
                              double* acc)
    void direct_transpose_f(const float* src, Py_ssize_t P, int channels, int padded,
                            int count, float* dst, Py_ssize_t mp)
    void direct_transpose_d(const double* src, Py_ssize_t P, int channels, int padded,
                            int count, double* dst, Py_ssize_t mp)

cdef enum:
    # output rows per task of the forward's dynamic schedule: a thread that wakes late (a
    # passive OpenMP wait on a VM can take a millisecond) finds the rest of the work shared,
    # and a task's band of input rows (16 channels: 42 KB) stays in the L2 cache
    ROW_CHUNK = 8
    # pixels of the pointwise (1x1) forward's vector steps: 16, 24 and 32 all divide it, so
    # the loops read no column past a multiple of it; and pixels per task
    POINT_STEP = 96
    POINT_CHUNK = 8 * 96
    # image classes of the weight gradient (n % classes, each summed in order, then the
    # classes in order): each thread copies only its class's bands, and the sums do not
    # depend on the thread count
    WEIGHT_CLASSES = 2


#: output channels per register block of the forward (the packed filters' last axis)
BLOCK = DIRECT_KB
#: output rows per task of the forward
TASK_ROWS = ROW_CHUNK


def row_width(Py_ssize_t wo, Py_ssize_t kw, Py_ssize_t dw):
    """Columns of a padded row for an output ``wo`` wide: the forward's steps (16, 24 or 32
    floats; doubles take half as many) may run past ``wo`` to the next step."""
    cdef Py_ssize_t step, width = wo
    for step in (16, 24, 32):
        width = max(width, (wo + step - 1) // step * step)
    return width + (kw - 1) * dw


def weight_blocking(Py_ssize_t mg, bint dtype_is_double):
    """The weight gradient's register block for ``mg`` output channels per group: (vectors
    of output channels per item, taps per item, the group's channels padded to whole items,
    lanes per vector). 1 x 12, 2 x 6 or 3 x 4 vectors x taps; 3 only where
    it wastes less padding than 2."""
    cdef Py_ssize_t lanes = DIRECT_LANES_D if dtype_is_double else DIRECT_LANES_F
    cdef Py_ssize_t vectors = max((mg + lanes - 1) // lanes, 1)
    cdef int nv = 1 if vectors == 1 else (3 if vectors % 3 == 0 and vectors % 2 else 2)
    cdef Py_ssize_t padded = (vectors + nv - 1) // nv * nv * lanes
    return nv, DIRECT_WREGS // nv, padded, lanes


cdef void _fill_band(const floating* x,      # IN  (C, H, W) one image
                     Py_ssize_t H, Py_ssize_t W, Py_ssize_t c0, Py_ssize_t channels,
                     Py_ssize_t top, Py_ssize_t left, Py_ssize_t rows, Py_ssize_t WP,
                     floating* band) noexcept nogil:   # OUT (rows, channels, WP)
    # band[r, c, j] = x[c0 + c, top + r, j - left] where that lies inside x, else 0
    cdef Py_ssize_t r, c, src
    cdef Py_ssize_t j0 = max(left, 0), j1 = min(WP, left + W)
    cdef floating* dst
    for r in range(rows):
        src = top + r
        for c in range(channels):
            dst = band + (r * channels + c) * WP
            if src < 0 or src >= H or j1 <= j0:
                memset(dst, 0, WP * sizeof(floating))
            else:
                memset(dst, 0, j0 * sizeof(floating))
                memcpy(dst + j0, x + ((c0 + c) * H + src) * W + (j0 - left),
                       (j1 - j0) * sizeof(floating))
                memset(dst + j1, 0, (WP - j1) * sizeof(floating))


def band_size(Py_ssize_t rows, Py_ssize_t channels, Py_ssize_t kh, Py_ssize_t dh,
              Py_ssize_t wp):
    """Values of one thread's band: the input rows of ``rows`` output rows for ``channels``
    channels, ``wp`` (row_width) wide."""
    return (rows + (kh - 1) * dh) * channels * wp


cdef inline void _forward_row(const floating* x, Py_ssize_t plane, Py_ssize_t stride,
                              const floating* w, const floating* bias, floating* y,
                              Py_ssize_t yplane, int kb, int channels, int kh, int kw, int dh,
                              int dw, int wo) noexcept nogil:
    # one output row of a block of kb channels (direct_rows.h), in the array's precision
    if floating is float:
        direct_forward_row_f(x, plane, stride, w, bias, y, yplane, kb, channels, kh, kw, dh, dw,
                             wo)
    else:
        direct_forward_row_d(x, plane, stride, w, bias, y, yplane, kb, channels, kh, kw, dh, dw,
                             wo)


cdef void _forward_task(const floating[:, :, :, ::1] x, const floating[:, :, ::1] w,
                        const floating[:, ::1] bias, floating[:, :, :, ::1] y,
                        floating* band, Py_ssize_t task, int kh, int kw, int dh, int dw,
                        Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t wp,
                        int group) noexcept nogil:
    # task (image, group, chunk of ROW_CHUNK output rows) of direct_forward, in ``band``
    cdef Py_ssize_t H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t HO = y.shape[2], WO = y.shape[3]
    cdef Py_ssize_t cg = x.shape[1] // group, mg = y.shape[1] // group
    cdef Py_ssize_t blocks = (mg + DIRECT_KB - 1) // DIRECT_KB
    cdef Py_ssize_t chunks = (HO + ROW_CHUNK - 1) // ROW_CHUNK
    cdef Py_ssize_t chunk = task % chunks
    cdef Py_ssize_t g = (task // chunks) % group
    cdef Py_ssize_t n = task // chunks // group
    cdef Py_ssize_t oy0 = chunk * ROW_CHUNK
    cdef Py_ssize_t count = min(<Py_ssize_t> ROW_CHUNK, HO - oy0)
    cdef Py_ssize_t b, k0, oy
    cdef int kb
    _fill_band(&x[n, 0, 0, 0], H, W, g * cg, cg, oy0 - ph, pw, count + (kh - 1) * dh, wp, band)
    for b in range(blocks):
        k0 = g * mg + b * DIRECT_KB
        kb = <int> min(<Py_ssize_t> DIRECT_KB, mg - b * DIRECT_KB)
        for oy in range(oy0, oy0 + count):
            _forward_row(band + (oy - oy0) * cg * wp, wp, cg * wp, &w[g * blocks + b, 0, 0],
                         &bias[g * blocks + b, 0], &y[n, k0, oy, 0], HO * WO, kb, <int> cg,
                         kh, kw, dh, dw, <int> WO)


cdef Py_ssize_t _forward_tasks(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                               int group):
    # the number of direct_forward's tasks (0: nothing to do)
    if y.shape[3] == 0 or x.shape[1] // group == 0:
        return 0
    return x.shape[0] * group * ((y.shape[2] + ROW_CHUNK - 1) // ROW_CHUNK)


def direct_forward(const floating[:, :, :, ::1] x,    # IN  (N, C, H, W)
                   const floating[:, :, ::1] w,       # IN  packed (group*blocks, Cg*kh*kw, BLOCK)
                   const floating[:, ::1] bias,       # IN  (group * blocks, BLOCK)
                   floating[:, :, :, ::1] y,          # OUT (N, M, HO, WO)
                   floating[:, ::1] bands,            # SCRATCH (threads, band_size)
                   int kh, int kw, int dh, int dw, Py_ssize_t ph, Py_ssize_t pw,
                   Py_ssize_t wp, int group, int threads):
    """y[n, m] = bias[m] + sum_{c, ky, kx} W[m, c, ky, kx] x[n, c, oy + ky*dh - ph,
    ox + kx*dw - pw] (zero outside x; pads of any sign). Tasks of ROW_CHUNK output rows of one
    image and group, in a dynamic schedule: each copies its input rows, zero-padded and
    ``wp`` (row_width) wide, into its thread's band (so the rows come from the caches, not
    from a padded copy of the whole batch), then runs every channel block over them."""
    cdef Py_ssize_t tasks = _forward_tasks(x, y, group)
    cdef Py_ssize_t task
    if tasks == 0:
        return
    with nogil:
        for task in prange(tasks, schedule='dynamic', num_threads=threads):
            _forward_task(x, w, bias, y, &bands[omp_get_thread_num(), 0], task, kh, kw, dh, dw,
                          ph, pw, wp, group)


def direct_pointwise_forward(const floating[:, :, ::1] x,    # IN  (N, C, P)
                             const floating[:, :, ::1] w,    # IN  packed (group*blocks, Cg, BLOCK)
                             const floating[:, ::1] bias,    # IN  (group * blocks, BLOCK)
                             floating[:, :, ::1] y,          # OUT (N, M, P)
                             floating[:, ::1] tails,         # SCRATCH (threads, Cg * POINT_STEP)
                             int group, int threads):
    """A 1x1 convolution without padding, straight from x: y[n, m, p] = bias[m] +
    sum_c W[m, c] x[n, c, p]. Each image's pixels are one row; tasks of POINT_CHUNK pixels
    of one image and group in a dynamic schedule. The channels are POINT_STEP-aligned runs
    of x itself (no band copy: a 1x1 reads each input once); only a plane's last run of
    fewer than POINT_STEP pixels goes through a zero-padded copy, so no loop reads past x."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2], M = y.shape[1]
    cdef Py_ssize_t cg = C // group, mg = M // group
    cdef Py_ssize_t blocks = (mg + DIRECT_KB - 1) // DIRECT_KB
    cdef Py_ssize_t chunks = (P + POINT_CHUNK - 1) // POINT_CHUNK
    cdef Py_ssize_t tasks = N * group * chunks
    cdef Py_ssize_t task, t, g, n, p0, count, main, c, b, k0
    cdef floating* tail
    cdef int kb
    if tasks == 0 or cg == 0:
        return
    if tails.shape[0] < threads or tails.shape[1] < cg * POINT_STEP:
        raise ValueError("direct_pointwise_forward: tails is too small")
    if y.shape[0] != N or y.shape[2] != P or w.shape[0] < group * blocks or w.shape[1] < cg \
            or w.shape[2] < DIRECT_KB or bias.shape[0] < group * blocks \
            or bias.shape[1] < DIRECT_KB:
        raise ValueError("direct_pointwise_forward: x, w, bias and y do not match")
    with nogil:
        for task in prange(tasks, schedule='dynamic', num_threads=threads):
            p0 = (task % chunks) * POINT_CHUNK
            t = task // chunks
            g = t % group
            n = t // group
            count = min(<Py_ssize_t> POINT_CHUNK, P - p0)
            main = count - count % POINT_STEP
            tail = &tails[omp_get_thread_num(), 0]
            if main < count:
                for c in range(cg):
                    memcpy(tail + c * POINT_STEP, &x[n, g * cg + c, p0 + main],
                           (count - main) * sizeof(floating))
                    memset(tail + c * POINT_STEP + count - main, 0,
                           (POINT_STEP - count + main) * sizeof(floating))
            for b in range(blocks):
                k0 = g * mg + b * DIRECT_KB
                kb = <int> min(<Py_ssize_t> DIRECT_KB, mg - b * DIRECT_KB)
                if main > 0:
                    _forward_row(&x[n, g * cg, p0], P, 0, &w[g * blocks + b, 0, 0],
                                 &bias[g * blocks + b, 0], &y[n, k0, p0], P, kb, <int> cg,
                                 1, 1, 1, 1, <int> main)
                if main < count:
                    _forward_row(tail, POINT_STEP, 0, &w[g * blocks + b, 0, 0],
                                 &bias[g * blocks + b, 0], &y[n, k0, p0 + main], P, kb,
                                 <int> cg, 1, 1, 1, 1, <int> (count - main))


#: pixels of the pointwise forward's zero-padded tail per channel (its scratch's width)
POINT_TAIL = POINT_STEP
#: pixels per task of the pointwise forward
POINT_TASK = POINT_CHUNK


cdef void _fill_dy_band(const floating* dy,   # IN  (M, P) one image
                        Py_ssize_t P, Py_ssize_t p0, Py_ssize_t count, Py_ssize_t group,
                        Py_ssize_t mg, Py_ssize_t mgp,
                        floating* dyt) noexcept nogil:  # OUT (count, group * mgp)
    # dyt[p, g * mgp + m] = dy[g * mg + m, p0 + p] for m < mg, else 0: channels last, so
    # the weight gradient's vectors run over output channels
    cdef Py_ssize_t g
    for g in range(group):
        if floating is float:
            direct_transpose_f(dy + g * mg * P + p0, P, <int> mg, <int> mgp, <int> count,
                               dyt + g * mgp, group * mgp)
        else:
            direct_transpose_d(dy + g * mg * P + p0, P, <int> mg, <int> mgp, <int> count,
                               dyt + g * mgp, group * mgp)


cdef struct WeightPlan:
    # direct_backward_weight's work split: tasks (classes x chunks of its items), the
    # register block (nv vectors x tb taps), the bands and the rows x reads them from
    Py_ssize_t classes, chunks, items, tb, taps, tap_blocks, mblocks, mp, lanes, band, xstride
    Py_ssize_t kh_extra                 # input rows a band needs past its output rows
    Py_ssize_t ph, pw, wp, mgp
    int nv, group
    bint in_place


cdef WeightPlan _weight_plan(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dy,
                             const Py_ssize_t[:, ::1] offsets, floating[:, ::1] acc,
                             floating[:, ::1] bands, floating[:, ::1] dy_bands,
                             floating[:, :, :, ::1] dweight, int dh, int dw, Py_ssize_t ph,
                             Py_ssize_t pw, Py_ssize_t wp, int group, Py_ssize_t band, int nv,
                             Py_ssize_t mgp, bint in_place, int threads) except *:
    # direct_backward_weight's work split, after checking every array against it; zeroes
    # the accumulators the tasks add into
    cdef WeightPlan p
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t HO = dy.shape[2], WO = dy.shape[3]
    cdef Py_ssize_t kh = dweight.shape[2], kw = dweight.shape[3]
    p.nv = nv
    p.group = group
    p.in_place = in_place
    p.ph = ph
    p.pw = pw
    p.wp = wp
    p.mgp = mgp
    p.lanes = DIRECT_LANES_D if floating is double else DIRECT_LANES_F
    p.tb = DIRECT_WREGS // nv
    p.taps = (C // group) * kh * kw
    p.tap_blocks = (p.taps + p.tb - 1) // p.tb
    p.mblocks = mgp // (nv * p.lanes)
    p.items = group * p.mblocks * p.tap_blocks
    p.mp = group * mgp
    p.classes = weight_classes(N)
    p.chunks = max(threads // p.classes, 1)
    p.band = max(band, 1)
    p.xstride = W if in_place else C * wp
    p.kh_extra = (kh - 1) * dh
    if N == 0 or p.items == 0 or HO * WO == 0:
        p.items = 0
        return p
    if offsets.shape[0] != group or offsets.shape[1] < p.tap_blocks * p.tb:
        raise ValueError("direct_backward_weight: offsets do not match the taps")
    if acc.shape[0] < p.classes * p.items or acc.shape[1] < DIRECT_WREGS * p.lanes:
        raise ValueError("direct_backward_weight: acc is too small")
    if dy_bands.shape[0] < threads or dy_bands.shape[1] < min(p.band, HO) * WO * p.mp or (
            not in_place and (bands.shape[0] < threads or bands.shape[1] <
                              (min(p.band, HO) + (kh - 1) * dh) * C * wp)):
        raise ValueError("direct_backward_weight: the band scratch is too small")
    if in_place and (ph != 0 or pw != 0 or HO + (kh - 1) * dh > H
                     or WO + (kw - 1) * dw > W):
        raise ValueError("direct_backward_weight: in_place needs an unpadded convolution")
    memset(&acc[0, 0], 0, p.classes * p.items * acc.shape[1] * sizeof(floating))
    return p


cdef inline void _weight_band(const floating* x, Py_ssize_t stride, const Py_ssize_t* off,
                              const floating* dyt, Py_ssize_t mp, int nv, int rows, int wo,
                              floating* acc) noexcept nogil:
    # one band of one weight-gradient item (direct_rows.h), in the array's precision
    if floating is float:
        direct_weight_band_f(x, stride, off, dyt, mp, nv, rows, wo, acc)
    else:
        direct_weight_band_d(x, stride, off, dyt, mp, nv, rows, wo, acc)


cdef void _weight_task(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dy,
                       const Py_ssize_t[:, ::1] offsets, floating[:, ::1] acc,
                       floating[:, ::1] bands, floating[:, ::1] dy_bands, Py_ssize_t task,
                       const WeightPlan* p, int dh) noexcept nogil:
    # task (class, range of items) of direct_backward_weight: the class's images in order,
    # in the calling thread's rows of the scratch
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t HO = dy.shape[2], WO = dy.shape[3]
    cdef Py_ssize_t cls = task // p.chunks
    cdef Py_ssize_t chunk = task % p.chunks
    cdef Py_ssize_t lo = chunk * p.items // p.chunks
    cdef Py_ssize_t hi = (chunk + 1) * p.items // p.chunks
    cdef Py_ssize_t mg = dy.shape[1] // p.group
    cdef floating* dyt = &dy_bands[omp_get_thread_num(), 0]
    cdef Py_ssize_t i, n, bi, y0, rows, it, t, g, mb
    cdef const floating* rowband
    for i in range((N - cls + p.classes - 1) // p.classes):
        n = cls + i * p.classes
        for bi in range((HO + p.band - 1) // p.band):
            y0 = bi * p.band
            rows = min(p.band, HO - y0)
            if p.in_place:
                rowband = &x[n, 0, y0, 0]
            else:
                rowband = &bands[omp_get_thread_num(), 0]
                _fill_band(&x[n, 0, 0, 0], H, W, 0, C, y0 - p.ph, p.pw, rows + p.kh_extra,
                           p.wp, &bands[omp_get_thread_num(), 0])
            _fill_dy_band(&dy[n, 0, 0, 0], HO * WO, y0 * WO, rows * WO, p.group, mg, p.mgp,
                          dyt)
            for it in range(lo, hi):
                t = it // p.tap_blocks
                g = t // p.mblocks
                mb = t % p.mblocks
                _weight_band(rowband, p.xstride, &offsets[g, (it % p.tap_blocks) * p.tb],
                             dyt + g * p.mgp + mb * p.nv * p.lanes, p.mp, p.nv, <int> rows,
                             <int> WO, &acc[cls * p.items + it, 0])


cdef void _weight_reduce(floating[:, ::1] acc, floating[:, :, :, ::1] dweight,
                         const WeightPlan* p) noexcept nogil:
    # dweight += the classes' sums, in class order; accumulator (r, v) of an item holds
    # output channels v * lanes + 0..lanes-1 of its tap r
    cdef Py_ssize_t kh = dweight.shape[2], kw = dweight.shape[3]
    cdef Py_ssize_t mg = dweight.shape[0] // p.group
    cdef Py_ssize_t it, t, g, mb, r, tap, ci, v, lane, m, cls
    for it in range(p.items):
        t = it // p.tap_blocks
        g = t // p.mblocks
        mb = t % p.mblocks
        for r in range(p.tb):
            tap = (it % p.tap_blocks) * p.tb + r
            if tap >= p.taps:
                break
            ci = tap // (kh * kw)
            for v in range(p.nv):
                for lane in range(p.lanes):
                    m = (mb * p.nv + v) * p.lanes + lane
                    if m < mg:
                        for cls in range(p.classes):
                            dweight[g * mg + m, ci, (tap // kw) % kh, tap % kw] += \
                                acc[cls * p.items + it, (r * p.nv + v) * p.lanes + lane]


def direct_backward_weight(const floating[:, :, :, ::1] x,    # IN    (N, C, H, W)
                           const floating[:, :, :, ::1] dy,   # IN    (N, M, HO, WO)
                           const Py_ssize_t[:, ::1] offsets,  # IN    (group, tap blocks * taps)
                           floating[:, ::1] acc,              # SCRATCH (classes*items, nv*taps*lanes)
                           floating[:, ::1] bands,            # SCRATCH (threads, band_size)
                           floating[:, ::1] dy_bands,         # SCRATCH (threads, band*WO*group*mgp)
                           floating[:, :, :, ::1] dweight,    # INOUT (M, Cg, kh, kw) +=
                           int dh, int dw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t wp,
                           int group, Py_ssize_t band, int nv, Py_ssize_t mgp, bint in_place,
                           int threads):
    """dweight[m, c, ky, kx] += sum_{n, oy, ox} dy[n, m, oy, ox] x[n, c, oy + ky*dh - ph,
    ox + kx*dw - pw] (zero outside x). An item is (group, block of ``nv`` vectors of output
    channels, block of taps (c, ky, kx) in dweight's order); ``offsets[g, t]`` is where tap t
    of group g reads in a band, relative to the output pixel (weight_offsets). In bands of
    ``band`` output rows, a thread copies the band's input rows (zero-padded, ``wp`` wide)
    and its dy (channels last, each group's ``mgp`` channels zero-padded) into its scratch,
    then runs its items over them; ``in_place`` (no padding: every tap reads inside x)
    reads x itself instead of a band (``offsets`` then in x's own layout). The images split
    into weight_classes(N) classes (n % classes) and the items into ranges, run in parallel;
    each item sums its class's images and bands in order, and dweight adds the classes in
    order: the result is the same for any thread count."""
    cdef WeightPlan p = _weight_plan(x, dy, offsets, acc, bands, dy_bands, dweight, dh, dw, ph,
                                     pw, wp, group, band, nv, mgp, in_place, threads)
    cdef Py_ssize_t task
    if p.items == 0:
        return
    with nogil:
        for task in prange(p.classes * p.chunks, schedule='static', chunksize=1,
                           num_threads=threads):
            _weight_task(x, dy, offsets, acc, bands, dy_bands, task, &p, dh)
        _weight_reduce(acc, dweight, &p)


def direct_backward(const floating[:, :, :, ::1] x,    # IN    (N, C, H, W) the conv input
                    const floating[:, :, :, ::1] dy,   # IN    (N, M, HO, WO)
                    const Py_ssize_t[:, ::1] offsets,  # IN    as direct_backward_weight
                    floating[:, ::1] acc,              # SCRATCH as direct_backward_weight
                    floating[:, ::1] bands,            # SCRATCH as direct_backward_weight
                    floating[:, ::1] dy_bands,         # SCRATCH as direct_backward_weight
                    floating[:, :, :, ::1] dweight,    # INOUT (M, Cg, kh, kw) +=
                    int dh, int dw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t wp, int group,
                    Py_ssize_t band, int nv, Py_ssize_t mgp, bint in_place,
                    const floating[:, :, ::1] adjoint,  # IN  packed rotated filters (direct_forward)
                    const floating[:, ::1] zeros,       # IN  (group * blocks, BLOCK) zero bias
                    floating[:, :, :, ::1] dx,          # OUT (N, C, H, W)
                    floating[:, ::1] data_bands,        # SCRATCH (threads, band_size) of dy
                    Py_ssize_t data_ph, Py_ssize_t data_pw, Py_ssize_t data_wp,
                    int threads):
    """direct_backward_weight and the backward-data pass (direct_forward of dy with the
    rotated filters ``adjoint`` and pads ``data_ph``, ``data_pw``) in one parallel loop: the
    weight gradient's tasks first, then the rows of dx, in one dynamic schedule, so a
    thread that wakes late or finishes early takes the other's work and the pair costs one
    thread wake instead of two. Every task is the one the separate calls would run, so the
    results are the same, for any thread count."""
    cdef WeightPlan p = _weight_plan(x, dy, offsets, acc, bands, dy_bands, dweight, dh, dw, ph,
                                     pw, wp, group, band, nv, mgp, in_place, threads)
    cdef Py_ssize_t kh = dweight.shape[2], kw = dweight.shape[3]
    cdef Py_ssize_t weight_tasks = p.classes * p.chunks if p.items > 0 else 0
    cdef Py_ssize_t data_tasks = _forward_tasks(dy, dx, group)
    cdef Py_ssize_t task
    if dx.shape[0] != x.shape[0] or dx.shape[1] != x.shape[1] or dx.shape[2] != x.shape[2] \
            or dx.shape[3] != x.shape[3] or data_bands.shape[0] < threads or \
            data_bands.shape[1] < band_size(ROW_CHUNK, dy.shape[1] // group, kh, dh, data_wp):
        raise ValueError("direct_backward: dx or its band scratch does not match")
    with nogil:
        for task in prange(weight_tasks + data_tasks, schedule='dynamic', num_threads=threads):
            if task < weight_tasks:
                _weight_task(x, dy, offsets, acc, bands, dy_bands, task, &p, dh)
            else:
                _forward_task(dy, adjoint, zeros, dx, &data_bands[omp_get_thread_num(), 0],
                              task - weight_tasks, <int> kh, <int> kw, dh, dw, data_ph,
                              data_pw, data_wp, group)
        if p.items > 0:
            _weight_reduce(acc, dweight, &p)


def weight_classes(Py_ssize_t n):
    """Image classes of the weight gradient for a batch of ``n``: WEIGHT_CLASSES when it
    splits the batch evenly, else 1 (an uneven split would leave one thread the larger
    share)."""
    return WEIGHT_CLASSES if n % WEIGHT_CLASSES == 0 else 1


def weight_offsets(Py_ssize_t C, Py_ssize_t group, Py_ssize_t kh, Py_ssize_t kw,
                   Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t plane, Py_ssize_t row,
                   Py_ssize_t taps_per_item):
    """offsets[g, t]: where tap t = (c, ky, kx) of group g (dweight's order) reads, relative
    to the output pixel, in rows ``row`` values apart whose channels are ``plane`` apart (a
    band: row_width and C x that; x itself: H*W and W); the last block's missing taps read
    the pixel itself (their sums are dropped)."""
    cg = C // group
    taps = cg * kh * kw
    blocks = (taps + taps_per_item - 1) // taps_per_item
    out = np.zeros((group, blocks * taps_per_item), np.intp)
    t = np.arange(taps)
    ci, ky, kx = t // (kh * kw), (t // kw) % kh, t % kw
    for g in range(group):
        out[g, :taps] = ky * dh * row + (g * cg + ci) * plane + kx * dw
    return out
