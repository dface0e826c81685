"""Stride-1 convolution without an im2col buffer: kn2row over the zero-padded image.

With the input padded to Hp x Wp planes (one copy, 1x the input instead of im2col's kh*kw x),
output pixel (oh, ow) of a stride-1 convolution reads padded pixel (oh + i*dh, ow + j*dw) for
tap (i, j). Computing every output row over the full padded width Wp (the Wp - OW columns past
OW are discarded), the whole output plane of tap (i, j) reads the padded planes as one matrix
starting at offset i*dh*Wp + j*dw with the plane size as its leading dimension, so

    Y_ext (M x OH*Wp)  = sum over taps  W_ij (M x C) @ Xp[:, off_ij : off_ij + OH*Wp]

is kh*kw GEMMs accumulating with beta = 1, and nothing is copied per tap (Vasudevan et al.'s
kn2row; MEC's row-stride idea). The adjoint runs the same GEMMs transposed into the padded
gradient (dY_ext's extra columns are zero), the weight gradient dW_ij += dY_ext @ Xp_ij^T.

Work: images (forward, backward-data) or (tap, group) pairs (weight gradient, summing the
images in order) in a static prange, BLAS held to one thread by the caller: results do not
depend on the thread count. Every GEMM goes through the BLAS door (_blas.pxd).
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memcpy, memset

from _blas cimport gemm
from _openmp cimport omp_get_thread_num


cdef struct Geometry:
    Py_ssize_t C, H, W, M, OH, OW
    Py_ssize_t kh, kw, ph, pw, dh, dw, group, cg, mg
    Py_ssize_t Hp, Wp, plane, tail, image, ext   # padded sizes, elements per padded image


cdef Geometry _geometry(Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t M,
                        Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t kh, Py_ssize_t kw,
                        Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                        Py_ssize_t group) noexcept:
    cdef Geometry g
    g.C = C
    g.H = H
    g.W = W
    g.M = M
    g.OH = OH
    g.OW = OW
    g.kh = kh
    g.kw = kw
    g.ph = ph
    g.pw = pw
    g.dh = dh
    g.dw = dw
    g.group = group
    g.cg = C // group
    g.mg = M // group
    # rows: every output row's window fits (OH - 1 + dh*(kh-1) < Hp); columns: the full
    # padded width, so each output row is one run of Wp values
    g.Hp = max(H + 2 * ph, OH + dh * (kh - 1))
    g.Wp = max(W + 2 * pw, OW + dw * (kw - 1))
    g.plane = g.Hp * g.Wp
    g.tail = dw * (kw - 1)            # the discarded columns of the last row read past it
    g.image = C * g.plane + g.tail
    g.ext = OH * g.Wp
    return g


def sizes(Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t M, Py_ssize_t OH,
          Py_ssize_t OW, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t ph, Py_ssize_t pw,
          Py_ssize_t dh, Py_ssize_t dw):
    """(elements of one padded input image, of one extended output image M x OH*Wp)."""
    cdef Geometry g = _geometry(C, H, W, M, OH, OW, kh, kw, ph, pw, dh, dw, 1)
    return g.image, M * g.ext


cdef void _pad(const floating* x, floating* xp, Geometry* g) noexcept nogil:
    # xp = x (C, H, W) placed at (ph, pw) of zeroed (C, Hp, Wp) planes, plus a zero tail
    cdef Py_ssize_t c, h
    memset(xp, 0, g.image * sizeof(floating))
    for c in range(g.C):
        for h in range(g.H):
            memcpy(xp + c * g.plane + (h + g.ph) * g.Wp + g.pw, x + (c * g.H + h) * g.W,
                   g.W * sizeof(floating))


cdef void _extend(const floating* y, floating* ext, Py_ssize_t rows,
                  Geometry* g) noexcept nogil:
    # ext (rows, OH*Wp) = y (rows, OH, OW) with zeros in the Wp - OW extra columns
    cdef Py_ssize_t r, oh
    memset(ext, 0, rows * g.ext * sizeof(floating))
    for r in range(rows):
        for oh in range(g.OH):
            memcpy(ext + r * g.ext + oh * g.Wp, y + (r * g.OH + oh) * g.OW,
                   g.OW * sizeof(floating))


def kn2row_forward(const floating[:, :, :, ::1] x,        # IN    (N, C, H, W)
                   const floating[:, :, ::1] taps,        # IN    (kh*kw, M, C/group)
                   const floating[::1] bias,              # IN    (M,), or (0,) for none
                   floating[:, :, :, ::1] y,              # OUT   (N, M, OH, OW)
                   floating[:, ::1] scratch,              # SCRATCH (threads, image + M*OH*Wp)
                   Py_ssize_t kh, Py_ssize_t kw,
                   Py_ssize_t pad_h, Py_ssize_t pad_w,
                   Py_ssize_t dil_h, Py_ssize_t dil_w,
                   Py_ssize_t group):
    """y = conv(x) + bias at stride 1 (``taps[i*kw + j]`` = weight[:, :, i, j] per group):
    a prange over images, each padded once and multiplied tap by tap into its extended
    output."""
    cdef Geometry g = _geometry(x.shape[1], x.shape[2], x.shape[3], y.shape[1], y.shape[2],
                                y.shape[3], kh, kw, pad_h, pad_w, dil_h, dil_w, group)
    cdef Py_ssize_t N = x.shape[0]
    cdef Py_ssize_t cs = scratch.shape[1]
    cdef int threads = <int> scratch.shape[0]
    cdef const floating* b = &bias[0] if bias.shape[0] > 0 else NULL
    cdef Py_ssize_t n, t, gi, m, oh, ow, off, c0, cols
    cdef floating* xp
    cdef floating* ext
    cdef floating* row
    cdef const floating* src
    cdef floating bv
    if N == 0:
        return
    with nogil:
        for n in prange(N, schedule='static', num_threads=threads):
            xp = &scratch[0, 0] + omp_get_thread_num() * cs
            ext = xp + g.image
            _pad(&x[n, 0, 0, 0], xp, &g)
            for gi in range(g.group):
                # blocks of 1024 columns: the output block stays in cache while the taps add into it
                for c0 in range(0, g.ext, 1024):
                    cols = min(1024, g.ext - c0)
                    for t in range(g.kh * g.kw):
                        off = (t // g.kw) * g.dh * g.Wp + (t % g.kw) * g.dw + c0
                        gemm(False, False, <int> g.mg, <int> cols, <int> g.cg,
                             1, &taps[t, gi * g.mg, 0], <int> g.cg,
                             xp + gi * g.cg * g.plane + off, <int> g.plane,
                             0 if t == 0 else 1, ext + gi * g.mg * g.ext + c0, <int> g.ext)
            for m in range(g.M):
                bv = b[m] if b != NULL else 0
                for oh in range(g.OH):
                    row = &y[n, m, oh, 0]
                    src = ext + m * g.ext + oh * g.Wp
                    for ow in range(g.OW):
                        row[ow] = src[ow] + bv


def kn2row_backward_data(const floating[:, :, :, ::1] dy,    # IN    (N, M, OH, OW)
                         const floating[:, :, ::1] taps,     # IN    (kh*kw, M, C/group)
                         const floating[::1] bias,           # IN    (C,), or (0,) for none
                         floating[:, :, :, ::1] dx,          # OUT   (N, C, H, W)
                         floating[:, ::1] scratch,           # SCRATCH (threads, image + M*OH*Wp)
                         Py_ssize_t kh, Py_ssize_t kw,
                         Py_ssize_t pad_h, Py_ssize_t pad_w,
                         Py_ssize_t dil_h, Py_ssize_t dil_w,
                         Py_ssize_t group):
    """dx = the adjoint of kn2row_forward's linear part applied to dy, + bias per channel of
    dx: per image, dXp += W_ij^T @ dY_ext at each tap's offset (taps in order), then dx is
    dXp's interior."""
    cdef Geometry g = _geometry(dx.shape[1], dx.shape[2], dx.shape[3], dy.shape[1],
                                dy.shape[2], dy.shape[3], kh, kw, pad_h, pad_w, dil_h, dil_w,
                                group)
    cdef Py_ssize_t N = dx.shape[0]
    cdef Py_ssize_t cs = scratch.shape[1]
    cdef int threads = <int> scratch.shape[0]
    cdef const floating* b = &bias[0] if bias.shape[0] > 0 else NULL
    cdef Py_ssize_t n, t, gi, c, h, w, off
    cdef floating* dxp
    cdef floating* ext
    cdef floating* row
    cdef const floating* src
    cdef floating bv
    if N == 0:
        return
    with nogil:
        for n in prange(N, schedule='static', num_threads=threads):
            dxp = &scratch[0, 0] + omp_get_thread_num() * cs
            ext = dxp + g.image
            memset(dxp, 0, g.image * sizeof(floating))
            _extend(&dy[n, 0, 0, 0], ext, g.M, &g)
            for gi in range(g.group):
                for t in range(g.kh * g.kw):
                    off = (t // g.kw) * g.dh * g.Wp + (t % g.kw) * g.dw
                    gemm(True, False, <int> g.cg, <int> g.ext, <int> g.mg,
                         1, &taps[t, gi * g.mg, 0], <int> g.cg,
                         ext + gi * g.mg * g.ext, <int> g.ext,
                         1, dxp + gi * g.cg * g.plane + off, <int> g.plane)
            for c in range(g.C):
                bv = b[c] if b != NULL else 0
                for h in range(g.H):
                    row = &dx[n, c, h, 0]
                    src = dxp + c * g.plane + (h + g.ph) * g.Wp + g.pw
                    for w in range(g.W):
                        row[w] = src[w] + bv


def kn2row_backward_weight(const floating[:, :, :, ::1] x,     # IN    (N, C, H, W)
                           const floating[:, :, :, ::1] dy,    # IN    (N, M, OH, OW)
                           floating[:, :, ::1] dtaps,          # OUT   (kh*kw, M, C/group)
                           floating[:, ::1] padded,            # SCRATCH (N, image)
                           floating[:, ::1] extended,          # SCRATCH (N, M*OH*Wp)
                           Py_ssize_t kh, Py_ssize_t kw,
                           Py_ssize_t pad_h, Py_ssize_t pad_w,
                           Py_ssize_t dil_h, Py_ssize_t dil_w,
                           Py_ssize_t group):
    """dtaps[i*kw + j] = sum_n dY_ext[n] @ Xp[n]_ij^T per group: every image padded and
    extended once, then a prange over (tap, group) items, each summing the images in order."""
    cdef Geometry g = _geometry(x.shape[1], x.shape[2], x.shape[3], dy.shape[1], dy.shape[2],
                                dy.shape[3], kh, kw, pad_h, pad_w, dil_h, dil_w, group)
    cdef Py_ssize_t N = x.shape[0]
    cdef Py_ssize_t items = g.kh * g.kw * g.group
    cdef Py_ssize_t n, it, t, gi, off
    with nogil:
        for n in prange(N, schedule='static'):
            _pad(&x[n, 0, 0, 0], &padded[n, 0], &g)
            _extend(&dy[n, 0, 0, 0], &extended[n, 0], g.M, &g)
        for it in prange(items, schedule='static'):
            t = it // g.group
            gi = it % g.group
            off = (t // g.kw) * g.dh * g.Wp + (t % g.kw) * g.dw
            for n in range(N):
                gemm(False, True, <int> g.mg, <int> g.cg, <int> g.ext,
                     1, &extended[n, 0] + gi * g.mg * g.ext, <int> g.ext,
                     &padded[n, 0] + gi * g.cg * g.plane + off, <int> g.plane,
                     0 if n == 0 else 1, &dtaps[t, gi * g.mg, 0], <int> g.cg)
