"""Direct convolution at stride 1 (any kernel, pad and dilation): no im2col buffer, no GEMM.

Where a layer has few channels the GEMMs of im2col and Winograd are too thin to run at
sgemm's rate and their buffers (9x the input, or 36 transform points) cost more memory
traffic than the arithmetic: a 16-channel 3x3 layer does 144 multiply-adds per output, which
a register-blocked loop runs straight from zero-padded input rows. The loops
(pyx/direct_rows.h) keep up to 6 output channels x two vectors of columns in registers; the
weight gradient keeps 4 channels x 3 taps.

- ``direct_forward``: y = conv(x) + bias. Each task (ROW_CHUNK output rows of one image and
  group) first copies its input rows, zero-padded (pads of any sign: a negative one crops)
  and ``row_width`` wide so the vector loops need no bounds tests, into its thread's band,
  which stays in the L2 cache. The backward-data pass of a stride-1 convolution is this same
  forward with the filters rotated by 180 degrees, their in/out channels swapped and
  pad' = dilation * (k - 1) - pad (convnet.backend.cpu).
- ``direct_backward_weight``: dW += sum over images, rows and columns of dy * x, in bands of
  output rows whose input rows each thread copies the same way.

Work: the forward's tasks run in a dynamic schedule, each output row written by one thread;
the weight gradient gives each thread a fixed range of items (group, channel block, input
channel, ky, block of 3 kx) and sums every item over the images in order, then over its
vector lanes in order: both results are bit-identical for any thread count.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memcpy, memset

from _openmp cimport omp_get_thread_num


cdef extern from "direct_rows.h" nogil:
    enum:
        DIRECT_KB
        DIRECT_WKB
        DIRECT_ACC_F
        DIRECT_ACC_D
        DIRECT_LANES_F
        DIRECT_LANES_D
    void direct_forward_row_f(const float* x, Py_ssize_t plane, Py_ssize_t stride,
                              const float* w, const float* bias, float* y, Py_ssize_t yplane,
                              int kb, int channels, int kh, int kw, int dh, int dw, int wo)
    void direct_forward_row_d(const double* x, Py_ssize_t plane, Py_ssize_t stride,
                              const double* w, const double* bias, double* y,
                              Py_ssize_t yplane, int kb, int channels, int kh, int kw, int dh,
                              int dw, int wo)
    void direct_weight_image_f(const float* x, Py_ssize_t stride, const float* dy,
                               Py_ssize_t dyplane, int kb, int taps, int dw, int ho, int wo,
                               float* acc)
    void direct_weight_image_d(const double* x, Py_ssize_t stride, const double* dy,
                               Py_ssize_t dyplane, int kb, int taps, int dw, int ho, int wo,
                               double* acc)
    float direct_lane_sum_f(const float* acc)
    double direct_lane_sum_d(const double* acc)


cdef enum:
    WEIGHT_TAPS = 3     # taps of the weight gradient's register block (direct_rows.h)
    # output rows per task of the forward's dynamic schedule: a thread that wakes late (a
    # passive OpenMP wait on a VM can take a millisecond) finds the rest of the work shared,
    # and a task's band of input rows (16 channels: 42 KB) stays in the L2 cache
    ROW_CHUNK = 8


#: output channels per register block of the forward (the packed filters' last axis)
BLOCK = DIRECT_KB
#: output channels per item of the weight gradient
WEIGHT_BLOCK = DIRECT_WKB
#: taps of the weight gradient's register block
TAPS = WEIGHT_TAPS
#: output rows per task of the forward
TASK_ROWS = ROW_CHUNK


def row_width(Py_ssize_t wo, Py_ssize_t kw, Py_ssize_t dw):
    """Columns of a padded row for an output ``wo`` wide: the forward's steps (16, 24 or 32
    floats; doubles take half as many) may run past ``wo`` to the next step."""
    cdef Py_ssize_t step, width = wo
    for step in (16, 24, 32):
        width = max(width, (wo + step - 1) // step * step)
    return width + (kw - 1) * dw


def accumulator_size(dtype_is_double):
    """Values of one weight-gradient item's accumulators."""
    return DIRECT_ACC_D if dtype_is_double else DIRECT_ACC_F


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


def direct_forward(const floating[:, :, :, ::1] x,    # IN  (N, C, H, W)
                   const floating[:, :, ::1] w,       # IN  packed (group * blocks, Cg*kh*kw, BLOCK)
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
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t M = y.shape[1], HO = y.shape[2], WO = y.shape[3]
    cdef Py_ssize_t cg = C // group, mg = M // group
    cdef Py_ssize_t blocks = (mg + DIRECT_KB - 1) // DIRECT_KB
    cdef Py_ssize_t chunks = (HO + ROW_CHUNK - 1) // ROW_CHUNK
    cdef Py_ssize_t tasks = N * group * chunks
    cdef Py_ssize_t task, t, chunk, g, n, oy0, count, b, k0, oy
    cdef floating* band
    cdef int kb
    if tasks == 0 or WO == 0 or cg == 0:
        return
    with nogil:
        for task in prange(tasks, schedule='dynamic', num_threads=threads):
            chunk = task % chunks
            t = task // chunks
            g = t % group
            n = t // group
            oy0 = chunk * ROW_CHUNK
            count = min(<Py_ssize_t> ROW_CHUNK, HO - oy0)
            band = &bands[omp_get_thread_num(), 0]
            _fill_band(&x[n, 0, 0, 0], H, W, g * cg, cg, oy0 - ph, pw,
                       count + (kh - 1) * dh, wp, band)
            for b in range(blocks):
                k0 = g * mg + b * DIRECT_KB
                kb = <int> min(<Py_ssize_t> DIRECT_KB, mg - b * DIRECT_KB)
                for oy in range(oy0, oy0 + count):
                    if floating is float:
                        direct_forward_row_f(band + (oy - oy0) * cg * wp, wp, cg * wp,
                                             &w[g * blocks + b, 0, 0],
                                             &bias[g * blocks + b, 0], &y[n, k0, oy, 0],
                                             HO * WO, kb, <int> cg, kh, kw, dh, dw, <int> WO)
                    else:
                        direct_forward_row_d(band + (oy - oy0) * cg * wp, wp, cg * wp,
                                             &w[g * blocks + b, 0, 0],
                                             &bias[g * blocks + b, 0], &y[n, k0, oy, 0],
                                             HO * WO, kb, <int> cg, kh, kw, dh, dw, <int> WO)


cdef struct WeightItem:
    Py_ssize_t c, ci               # input channel in the layer, and in its group
    Py_ssize_t ky, k0, kx0         # row tap, first output channel, first column tap
    int kb, taps                   # output channels and taps of the item


cdef inline WeightItem _weight_item(Py_ssize_t it, Py_ssize_t kh, Py_ssize_t kw,
                                    Py_ssize_t cg, Py_ssize_t mg,
                                    Py_ssize_t blocks) noexcept nogil:
    # items run (group, channel block, input channel, ky, block of WEIGHT_TAPS kx)
    cdef WeightItem item
    cdef Py_ssize_t tap_blocks = (kw + WEIGHT_TAPS - 1) // WEIGHT_TAPS
    cdef Py_ssize_t tb = it % tap_blocks
    cdef Py_ssize_t t = it // tap_blocks
    cdef Py_ssize_t b, g
    item.ky = t % kh
    t = t // kh
    item.ci = t % cg
    t = t // cg
    b = t % blocks
    g = t // blocks
    item.c = item.ci + g * cg
    item.k0 = g * mg + b * DIRECT_WKB
    item.kx0 = tb * WEIGHT_TAPS
    item.kb = <int> min(<Py_ssize_t> DIRECT_WKB, mg - b * DIRECT_WKB)
    item.taps = <int> min(<Py_ssize_t> WEIGHT_TAPS, kw - item.kx0)
    return item


def direct_backward_weight(const floating[:, :, :, ::1] x,    # IN    (N, C, H, W)
                           const floating[:, :, :, ::1] dy,   # IN    (N, M, HO, WO)
                           floating[:, ::1] acc,              # SCRATCH (items, accumulator_size)
                           floating[:, ::1] bands,            # SCRATCH (threads, band_size)
                           floating[:, :, :, ::1] dweight,    # INOUT (M, Cg, kh, kw) +=
                           int dh, int dw, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t wp,
                           int group, Py_ssize_t band, int threads):
    """dweight[m, c, ky, kx] += sum_{n, oy, ox} dy[n, m, oy, ox] x[n, c, oy + ky*dh - ph,
    ox + kx*dw - pw] (zero outside x). Each item (group, channel block, c, ky, block of TAPS
    kx) sums the images in order, in bands of ``band`` output rows: a thread copies a band's
    input rows, zero-padded and ``wp`` wide, into its scratch and runs all its items over
    them before the next band, so the band's dy and x stay in the caches; ``threads`` fixed
    ranges of items run in parallel."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t M = dy.shape[1], HO = dy.shape[2], WO = dy.shape[3]
    cdef Py_ssize_t kh = dweight.shape[2], kw = dweight.shape[3]
    cdef Py_ssize_t cg = C // group, mg = M // group
    cdef Py_ssize_t blocks = (mg + DIRECT_WKB - 1) // DIRECT_WKB
    cdef Py_ssize_t tap_blocks = (kw + WEIGHT_TAPS - 1) // WEIGHT_TAPS
    cdef Py_ssize_t items = group * blocks * cg * kh * tap_blocks
    cdef Py_ssize_t lanes = DIRECT_LANES_D if floating is double else DIRECT_LANES_F
    cdef Py_ssize_t part, lo, hi, n, bi, y0, rows, it, j, tap
    cdef floating* rowband
    cdef const floating* xr
    cdef WeightItem item
    if N == 0 or items == 0 or HO * WO == 0:
        return
    band = max(band, 1)
    memset(&acc[0, 0], 0, items * acc.shape[1] * sizeof(floating))
    with nogil:
        for part in prange(threads, schedule='static', chunksize=1, num_threads=threads):
            lo = part * items // threads
            hi = (part + 1) * items // threads
            rowband = &bands[omp_get_thread_num(), 0]
            for n in range(N):
              for bi in range((HO + band - 1) // band):
                y0 = bi * band
                rows = min(band, HO - y0)
                _fill_band(&x[n, 0, 0, 0], H, W, 0, C, y0 - ph, pw, rows + (kh - 1) * dh, wp,
                           rowband)
                for it in range(lo, hi):
                    item = _weight_item(it, kh, kw, cg, mg, blocks)
                    xr = rowband + (item.ky * dh * C + item.c) * wp + item.kx0 * dw
                    if floating is float:
                        direct_weight_image_f(xr, C * wp, &dy[n, item.k0, y0, 0], HO * WO,
                                              item.kb, item.taps, dw, <int> rows, <int> WO,
                                              &acc[it, 0])
                    else:
                        direct_weight_image_d(xr, C * wp, &dy[n, item.k0, y0, 0], HO * WO,
                                              item.kb, item.taps, dw, <int> rows, <int> WO,
                                              &acc[it, 0])
    for it in range(items):
        item = _weight_item(it, kh, kw, cg, mg, blocks)
        for j in range(item.kb):
            for tap in range(item.taps):
                if floating is float:
                    dweight[item.k0 + j, item.ci, item.ky,
                            item.kx0 + tap] += direct_lane_sum_f(
                        &acc[it, (j * WEIGHT_TAPS + tap) * lanes])
                else:
                    dweight[item.k0 + j, item.ci, item.ky,
                            item.kx0 + tap] += direct_lane_sum_d(
                        &acc[it, (j * WEIGHT_TAPS + tap) * lanes])
