"""Direct convolution at stride 1 (any kernel, pad and dilation): no im2col buffer, no GEMM.

Where a layer has few channels the GEMMs of im2col and Winograd are too thin to run at
sgemm's rate and their buffers (9x the input, or 36 transform points) cost more memory
traffic than the arithmetic: a 16-channel 3x3 layer does 144 multiply-adds per output, which
a register-blocked loop runs straight from a zero-padded copy of the input. The loops
(pyx/direct_rows.h) keep DIRECT_KB output channels x two vectors of columns in registers and
stream the inputs once per block; the weight gradient keeps DIRECT_KB channels x 3 taps.

- ``pad_images``: the zero-padded copy (pads of any sign: a negative one crops), its rows
  rounded up so the vector loops need no bounds tests.
- ``direct_forward``: y = conv(x) + bias over the padded copy. The backward-data pass of a
  stride-1 convolution is this same forward with the filters rotated by 180 degrees, their
  in/out channels swapped and pad' = dilation * (k - 1) - pad (convnet.backend.cpu).
- ``direct_backward_weight``: dW += sum over images, rows and columns of dy * x.

Work: the forward is a static prange over (image, group, channel block, output row), each
written by one thread; the weight gradient gives each thread a fixed range of items (group,
channel block, input channel, ky, block of 3 kx) and sums every item over the images in
order, then over its vector lanes in order: both results are bit-identical for any thread
count.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memcpy, memset


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


#: output channels per register block of the forward (the packed filters' last axis)
BLOCK = DIRECT_KB
#: output channels per item of the weight gradient
WEIGHT_BLOCK = DIRECT_WKB
def row_width(Py_ssize_t wo, Py_ssize_t kw, Py_ssize_t dw):
    """Columns of a padded row for an output ``wo`` wide: the forward's steps (16, 24 or 32
    floats; doubles take half as many) may run past ``wo`` to the next step."""
    cdef Py_ssize_t step, width = wo
    for step in (16, 24, 32):
        width = max(width, (wo + step - 1) // step * step)
    return width + (kw - 1) * dw
cdef enum:
    WEIGHT_TAPS = 3     # taps of the weight gradient's register block (direct_rows.h)
    # output rows per task of the forward's dynamic schedule: a thread that wakes late (a
    # passive OpenMP wait on a VM can take a millisecond) finds the rest of the work shared
    ROW_CHUNK = 8

#: taps of the weight gradient's register block
TAPS = WEIGHT_TAPS


def accumulator_size(dtype_is_double):
    """Values of one weight-gradient item's accumulators."""
    return DIRECT_ACC_D if dtype_is_double else DIRECT_ACC_F


def pad_images(const floating[:, :, :, ::1] x,     # IN  (N, C, H, W)
               floating[:, :, :, ::1] out,         # OUT (N, HP, C, WP)
               Py_ssize_t top, Py_ssize_t left, int threads):
    """out[n, i, c, j] = x[n, c, i - top, j - left] where that lies inside x, else 0: the
    channels of each padded row side by side (direct_rows.h says why)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t HP = out.shape[1], WP = out.shape[3]
    cdef Py_ssize_t p, i, r, j0, j1, n, c
    cdef floating* dst
    if N * C == 0 or HP * WP == 0:
        return
    j0 = max(left, 0)
    j1 = min(WP, left + W)
    with nogil:
        for p in prange(N * C, schedule='static', num_threads=threads):
            n = p // C
            c = p % C
            for i in range(HP):
                dst = &out[n, i, c, 0]
                r = i - top
                if r < 0 or r >= H or j1 <= j0:
                    memset(dst, 0, WP * sizeof(floating))
                else:
                    memset(dst, 0, j0 * sizeof(floating))
                    memcpy(dst + j0, &x[n, c, r, j0 - left], (j1 - j0) * sizeof(floating))
                    memset(dst + j1, 0, (WP - j1) * sizeof(floating))


def direct_forward(const floating[:, :, :, ::1] xp,   # IN  padded (N, HP, C, WP)
                   const floating[:, :, ::1] w,       # IN  packed (group * blocks, Cg*kh*kw, BLOCK)
                   const floating[:, ::1] bias,       # IN  (group * blocks, BLOCK)
                   floating[:, :, :, ::1] y,          # OUT (N, M, HO, WO)
                   int kh, int kw, int dh, int dw, int group, int threads):
    """y[n, m] = bias[m] + sum_{c, ky, kx} W[m, c, ky, kx] xp[n, oy + ky*dh, c, ox + kx*dw]
    (xp: pad_images' copy, rows at least round_up(WO, ROW_MULTIPLE) + (kw - 1) * dw wide and
    HO + (kh - 1) * dh of them)."""
    cdef Py_ssize_t N = xp.shape[0], C = xp.shape[2], WP = xp.shape[3]
    cdef Py_ssize_t M = y.shape[1], HO = y.shape[2], WO = y.shape[3]
    cdef Py_ssize_t cg = C // group, mg = M // group
    cdef Py_ssize_t blocks = (mg + DIRECT_KB - 1) // DIRECT_KB
    cdef Py_ssize_t rows = N * group * blocks * HO
    cdef Py_ssize_t r, t, oy, b, g, n, k0
    cdef int kb
    if rows == 0 or WO == 0:
        return
    with nogil:
        for r in prange(rows, schedule='dynamic', chunksize=ROW_CHUNK, num_threads=threads):
            oy = r % HO
            t = r // HO
            b = t % blocks
            t = t // blocks
            g = t % group
            n = t // group
            k0 = g * mg + b * DIRECT_KB
            kb = <int> min(<Py_ssize_t> DIRECT_KB, mg - b * DIRECT_KB)
            if floating is float:
                direct_forward_row_f(&xp[n, oy, g * cg, 0], WP, C * WP,
                                     &w[g * blocks + b, 0, 0], &bias[g * blocks + b, 0],
                                     &y[n, k0, oy, 0], HO * WO, kb, <int> cg, kh, kw, dh, dw,
                                     <int> WO)
            else:
                direct_forward_row_d(&xp[n, oy, g * cg, 0], WP, C * WP,
                                     &w[g * blocks + b, 0, 0], &bias[g * blocks + b, 0],
                                     &y[n, k0, oy, 0], HO * WO, kb, <int> cg, kh, kw, dh, dw,
                                     <int> WO)


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


def direct_backward_weight(const floating[:, :, :, ::1] xp,   # IN    padded (N, HP, C, WP)
                           const floating[:, :, :, ::1] dy,   # IN    (N, M, HO, WO)
                           floating[:, ::1] acc,              # SCRATCH (items, accumulator_size)
                           floating[:, :, :, ::1] dweight,    # INOUT (M, Cg, kh, kw) +=
                           int dh, int dw, int group, Py_ssize_t band, int threads):
    """dweight[m, c, ky, kx] += sum_{n, oy, ox} dy[n, m, oy, ox] xp[n, oy + ky*dh, c,
    ox + kx*dw]. Each item (group, channel block, c, ky, block of TAPS kx) sums the images in
    order, in bands of ``band`` output rows (all items of a thread take a band before the
    next, so the band's dy and x stay in the caches); ``threads`` fixed ranges of items run in
    parallel."""
    cdef Py_ssize_t N = xp.shape[0], C = xp.shape[2], WP = xp.shape[3]
    cdef Py_ssize_t M = dy.shape[1], HO = dy.shape[2], WO = dy.shape[3]
    cdef Py_ssize_t kh = dweight.shape[2], kw = dweight.shape[3]
    cdef Py_ssize_t cg = C // group, mg = M // group
    cdef Py_ssize_t blocks = (mg + DIRECT_WKB - 1) // DIRECT_WKB
    cdef Py_ssize_t tap_blocks = (kw + WEIGHT_TAPS - 1) // WEIGHT_TAPS
    cdef Py_ssize_t items = group * blocks * cg * kh * tap_blocks
    cdef Py_ssize_t lanes = DIRECT_LANES_D if floating is double else DIRECT_LANES_F
    cdef Py_ssize_t part, lo, hi, n, bi, y0, rows, it, j, tap
    cdef WeightItem item
    if N == 0 or items == 0 or HO * WO == 0:
        return
    band = max(band, 1)
    memset(&acc[0, 0], 0, items * acc.shape[1] * sizeof(floating))
    with nogil:
        for part in prange(threads, schedule='static', chunksize=1, num_threads=threads):
            lo = part * items // threads
            hi = (part + 1) * items // threads
            for n in range(N):
              for bi in range((HO + band - 1) // band):
                y0 = bi * band
                rows = min(band, HO - y0)
                for it in range(lo, hi):
                    item = _weight_item(it, kh, kw, cg, mg, blocks)
                    if floating is float:
                        direct_weight_image_f(&xp[n, y0 + item.ky * dh, item.c, item.kx0 * dw],
                                              C * WP, &dy[n, item.k0, y0, 0], HO * WO,
                                              item.kb, item.taps, dw, <int> rows, <int> WO,
                                              &acc[it, 0])
                    else:
                        direct_weight_image_d(&xp[n, y0 + item.ky * dh, item.c, item.kx0 * dw],
                                              C * WP, &dy[n, item.k0, y0, 0], HO * WO,
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
