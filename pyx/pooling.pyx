"""Pooling kernels: max pooling with argmax, average pooling, max unpooling (DeconvNet).

Every kernel takes NCHW C-contiguous arrays whose shapes and window geometry the layer has
validated, runs one ``nogil`` block with ``prange`` over the N*C planes (static schedule) and
does all work of a plane on one thread, so the scatter-adds of the backward passes never race
and give bit-identical results at any thread count.

Window geometry (shared by max and average pooling): output row ``oh`` covers input rows
``[oh*sh - ph, oh*sh - ph + kh)`` clipped to ``[0, H)``; columns likewise. The layer
guarantees every window meets the image (pad < kernel and the last-window rule).

Measured (AMD EPYC, 2 vCPUs shared with other jobs; N=8 C=64 128x128 float32; PyTorch 2.13
CPU; ``scripts/bench.py --threads 1`` with its malloc tunables, layer calls, best of 30, ms):

    case                               convnet    torch   ratio
    maxpool_idx k2 s2 + mask   fwd       3.22     45.5    14x
                               bwd       1.70      7.9    4.6x
    maxunpool 64->128          fwd       3.51      4.0    1.1x
                               bwd       3.83      8.3    2.2x
    avgpool k3 s2 p1 ceil      fwd       3.51     21.8    6.2x
                               bwd       5.41     13.9    2.6x

Kernel CPU time alone (1 thread, preallocated outputs): maxpool k2s2 + mask 3.1, avgpool fwd
3.4 / bwd 5.1, unpool fwd 3.1 (float32 mask) / 2.0 (int64 mask), unpool bwd 3.1; a NumPy copy
of the 33.5 MB input takes 1.1-1.3. Wall-clock runs at 2 threads were dominated by the other
jobs on the machine (load 4-8) and are not quoted. What paid: branch-free pairwise selects
for k2 s2 max pooling (random data makes a scan's branches unpredictable), separable
row-buffer sums for average pooling forward and backward (3x and 2x), and gathering instead
of scattering along W in the average backward. Unpooling is bound by writing its zero-filled
output, as PyTorch's is.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memset

from _openmp cimport omp_get_max_threads, omp_get_thread_num

import numpy as np

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
    cdef floating best, v, a, b, c, d
    cdef const floating* r0
    cdef const floating* r1
    cdef Py_ssize_t i0, i1, i2
    # k2 s2 p0 windows that lie inside the image take an unrolled path
    cdef bint fast2 = (kernel_h == 2 and kernel_w == 2 and stride_h == 2 and stride_w == 2
                       and pad_h == 0 and pad_w == 0)
    cdef Py_ssize_t full_w = W // 2 if fast2 else 0
    if planes == 0 or OH == 0 or OW == 0:
        return
    with nogil:
        for p in prange(planes, schedule='static'):
            xp = &x[0, 0, 0, 0] + p * H * W
            yp = &y[0, 0, 0, 0] + p * OH * OW
            ap = &argmax[0, 0, 0, 0] + p * OH * OW
            for oh in range(OH):
                hs = rows[0, oh]
                he = rows[1, oh]
                o = oh * OW
                ow = 0
                if fast2 and he - hs == 2:
                    # pairwise selects instead of a scan: no branches to mispredict, and the
                    # same result (first maximum, last NaN) as the row-major scan below
                    r0 = xp + hs * W
                    r1 = r0 + W
                    while ow < full_w:
                        a = r0[2 * ow]
                        b = r0[2 * ow + 1]
                        c = r1[2 * ow]
                        d = r1[2 * ow + 1]
                        i0 = 1 if (b > a or b != b) else 0
                        a = b if i0 else a
                        i1 = 1 if (d > c or d != d) else 0
                        c = d if i1 else c
                        i2 = 1 if (c > a or c != c) else 0
                        yp[o + ow] = c if i2 else a
                        ap[o + ow] = <index_t> (hs * W + 2 * ow + (W + i1 if i2 else i0))
                        ow = ow + 1
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
                    ow = ow + 1
            if with_mask:
                mp = &mask[0] + p * OH * OW
                for o in range(OH * OW):
                    mp[o] = <floating> ap[o]


def max_backward(const floating[:, :, :, ::1] dy,       # IN   (N, C, OH, OW)
                 const index_t[:, :, :, ::1] argmax,    # IN   (N, C, OH, OW) from max_forward
                 floating[:, :, :, ::1] dx):            # OUT  (N, C, H, W), overwritten
    """dx = 0, then dx[argmax] += dy, plane by plane (deterministic, race-free)."""
    cdef Py_ssize_t planes = dx.shape[0] * dx.shape[1]
    cdef Py_ssize_t HW = dx.shape[2] * dx.shape[3]
    cdef Py_ssize_t OHW = dy.shape[2] * dy.shape[3]
    cdef Py_ssize_t p, o
    cdef const floating* gp
    cdef const index_t* ap
    cdef floating* dp
    if planes == 0 or HW == 0:
        return
    with nogil:
        for p in prange(planes, schedule='static'):
            dp = &dx[0, 0, 0, 0] + p * HW
            memset(dp, 0, HW * sizeof(floating))
            if OHW == 0:
                continue
            gp = &dy[0, 0, 0, 0] + p * OHW
            ap = &argmax[0, 0, 0, 0] + p * OHW
            for o in range(OHW):
                dp[ap[o]] += gp[o]


def _inverse_sizes(rows, cols, dtype):
    """1 / pool_size for every output position, (OH, OW): one table shared by all planes, so
    the kernels multiply instead of dividing."""
    return np.ascontiguousarray(1.0 / np.outer(rows[2], cols[2]), dtype=dtype)


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
    contiguous, vectorised loop), then each output sums kw entries of that buffer.
    """
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3]
    rows_np = _windows(H, OH, kernel_h, stride_h, pad_h)
    cols_np = _windows(W, OW, kernel_w, stride_w, pad_w)
    cdef Py_ssize_t[:, ::1] rows = rows_np
    cdef Py_ssize_t[:, ::1] cols = cols_np
    dt = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] inv = _inverse_sizes(rows_np, cols_np, dt)
    cdef floating[:, ::1] scratch = np.empty((omp_get_max_threads(), max(W, 1)), dtype=dt)
    cdef Py_ssize_t p, oh, ow, ih, iw, hs, he, ws, we, o
    cdef const floating* xp
    cdef const floating* xr
    cdef floating* yp
    cdef floating* buf
    cdef floating acc
    if planes == 0 or OH == 0 or OW == 0:
        return
    with nogil:
        for p in prange(planes, schedule='static'):
            buf = &scratch[omp_get_thread_num(), 0]
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
                o = oh * OW
                for ow in range(OW):
                    ws = cols[0, ow]
                    we = cols[1, ow]
                    acc = buf[ws]
                    for iw in range(ws + 1, we):
                        acc = acc + buf[iw]
                    yp[o + ow] = acc * inv[oh, ow]


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

    Separable: each output row's contributions are gathered along W into row oh of a per-thread
    (OH, W) buffer; input row h is then the sum of the buffer rows whose windows cover it,
    so dx is written once, with contiguous vectorised loops.
    """
    cdef Py_ssize_t planes = dx.shape[0] * dx.shape[1]
    cdef Py_ssize_t H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3]
    rows_np = _windows(H, OH, kernel_h, stride_h, pad_h)
    cols_np = _windows(W, OW, kernel_w, stride_w, pad_w)
    cdef Py_ssize_t[:, ::1] cover = _covering(rows_np, H)
    cdef Py_ssize_t[:, ::1] wcover = _covering(cols_np, W)
    dt = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] inv = _inverse_sizes(rows_np, cols_np, dt)
    cdef floating[:, ::1] scratch = np.empty((omp_get_max_threads(), OH * W + OW), dtype=dt)
    cdef Py_ssize_t p, oh, ow, ih, iw, o, lo, hi
    cdef const floating* gp
    cdef floating* dr
    cdef floating* buf
    cdef floating* br
    cdef floating* grow
    cdef floating g
    if planes == 0 or H == 0 or W == 0:
        return
    with nogil:
        for p in prange(planes, schedule='static'):
            dr = &dx[0, 0, 0, 0] + p * H * W
            if OH == 0 or OW == 0:
                memset(dr, 0, H * W * sizeof(floating))
                continue
            buf = &scratch[omp_get_thread_num(), 0]
            grow = buf + OH * W
            gp = &dy[0, 0, 0, 0] + p * OH * OW
            for oh in range(OH):
                br = buf + oh * W
                o = oh * OW
                for ow in range(OW):
                    grow[ow] = gp[o + ow] * inv[oh, ow]
                for iw in range(W):
                    g = 0
                    for ow in range(wcover[0, iw], wcover[1, iw]):
                        g = g + grow[ow]
                    br[iw] = g
            for ih in range(H):
                lo = cover[0, ih]
                hi = cover[1, ih]
                if lo == hi:
                    memset(dr, 0, W * sizeof(floating))
                else:
                    br = buf + lo * W
                    for iw in range(W):
                        dr[iw] = br[iw]
                    for oh in range(lo + 1, hi):
                        br = buf + oh * W
                        for iw in range(W):
                            dr[iw] = dr[iw] + br[iw]
                dr = dr + W


cdef inline Py_ssize_t _mask_index(mask_t m, Py_ssize_t size) noexcept nogil:
    """The mask value as an index into a plane of ``size``, or -1 when it is negative, too
    large, NaN or not an integer. Selects, not branches: callers count the -1s and test the
    count once per plane."""
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
    cdef Py_ssize_t p, i, j, nbad
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
        for p in prange(planes, schedule='static'):
            yp = &y[0, 0, 0, 0] + p * OHW
            xp = &x[0, 0, 0, 0] + p * HW
            mp = &mask[0, 0, 0, 0] + p * HW
            ip = &index[0, 0, 0, 0] + p * HW
            memset(yp, 0, OHW * sizeof(floating))
            nbad = 0
            for i in range(HW):
                j = _mask_index(mp[i], OHW)
                nbad = nbad + (j < 0)
                j = j if j >= 0 else 0
                ip[i] = <index_t> j
                yp[j] = xp[i]
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
        for p in prange(planes, schedule='static'):
            dp = &dx[0, 0, 0, 0] + p * HW
            gp = &dy[0, 0, 0, 0] + p * OHW
            ip = &index[0, 0, 0, 0] + p * HW
            for i in range(HW):
                dp[i] = gp[ip[i]]
