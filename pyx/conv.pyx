"""Convolution primitives shared by Convolution and Deconvolution (Caffe's BaseConvolutionLayer).

In conv terms: an input x (N, C, H, W), an output y (N, M, OH, OW), a weight (M, C/group, kh,
kw). Per image and group g, with col = im2col(x[n]) of shape (C*kh*kw, OH*OW) (see im2col.pxd):

- forward          y[n, g]  = W[g] @ col[g]                 (+ bias per output channel)
- backward-data    dx[n]    = col2im(W[g].T @ dy[n, g])     (+ bias per input channel: the
                                                             Deconvolution forward)
- backward-weight  dW[g]   += dy[n, g] @ col[g].T            (beta = 1: accumulates)

A 1x1 kernel with stride 1, pad 0 and OH x OW == H x W skips im2col: col is the image itself.
Deconvolution calls these with the roles swapped (its forward is backward-data, its
backward-data is forward, its weight gradient is backward-weight with x = its top diff).

Threading (measured, see below): ``per_image=True`` runs a ``prange`` over images, one column
buffer per thread (``col[slot]``), BLAS held to one thread by the caller;
``per_image=False`` loops over images with BLAS on all threads and splits im2col / col2im /
bias over channels. The weight gradient runs over ``partial.shape[0]`` fixed image classes
(image n goes to partial n % P, summed in order afterwards), so its result does not depend on
the thread count; P = 0 accumulates straight into dW (one image at a time, BLAS threads).
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memset

from _blas cimport gemm
from _openmp cimport omp_get_thread_num
from im2col cimport col2im_channels, im2col_channels


cdef struct Geometry:
    Py_ssize_t C, H, W          # conv input, one image
    Py_ssize_t M, OH, OW        # conv output, one image
    Py_ssize_t kh, kw, sh, sw, ph, pw, dh, dw
    Py_ssize_t group
    bint direct                 # 1x1 / stride 1 / pad 0 / same size: no im2col


cdef Geometry _geometry(Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                        Py_ssize_t M, Py_ssize_t OH, Py_ssize_t OW,
                        Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
                        Py_ssize_t group):
    cdef Geometry g
    g.C = C
    g.H = H
    g.W = W
    g.M = M
    g.OH = OH
    g.OW = OW
    g.kh = kh
    g.kw = kw
    g.sh = sh
    g.sw = sw
    g.ph = ph
    g.pw = pw
    g.dh = dh
    g.dw = dw
    g.group = group
    g.direct = (kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
                and OH == H and OW == W)
    return g


cdef void _im2col(const floating* x, floating* col, Geometry* g,
                  bint split) noexcept nogil:
    cdef Py_ssize_t c
    if split:
        for c in prange(g.C, schedule='static'):
            im2col_channels(x, col, c, c + 1, g.H, g.W, g.kh, g.kw, g.sh, g.sw,
                            g.ph, g.pw, g.dh, g.dw, g.OH, g.OW)
    else:
        im2col_channels(x, col, 0, g.C, g.H, g.W, g.kh, g.kw, g.sh, g.sw,
                        g.ph, g.pw, g.dh, g.dw, g.OH, g.OW)


cdef void _col2im(const floating* col, floating* x, Geometry* g,
                  bint split) noexcept nogil:
    cdef Py_ssize_t c
    if split:
        for c in prange(g.C, schedule='static'):
            col2im_channels(col, x, c, c + 1, g.H, g.W, g.kh, g.kw, g.sh, g.sw,
                            g.ph, g.pw, g.dh, g.dw, g.OH, g.OW)
    else:
        col2im_channels(col, x, 0, g.C, g.H, g.W, g.kh, g.kw, g.sh, g.sw,
                        g.ph, g.pw, g.dh, g.dw, g.OH, g.OW)


cdef void _add_bias(floating* y, const floating* bias, Py_ssize_t channels,
                    Py_ssize_t plane, bint split) noexcept nogil:
    # y (channels, plane) += bias[:, None]
    cdef Py_ssize_t m
    if split:
        for m in prange(channels, schedule='static'):
            _add_row(y + m * plane, bias[m], plane)
    else:
        for m in range(channels):
            _add_row(y + m * plane, bias[m], plane)


cdef inline void _add_row(floating* row, floating v, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t p
    for p in range(n):
        row[p] += v


cdef void _forward_image(const floating* x, const floating* w, const floating* bias,
                         floating* y, floating* col, Geometry* g,
                         bint split) noexcept nogil:
    cdef Py_ssize_t ohw = g.OH * g.OW
    cdef Py_ssize_t mg = g.M // g.group
    cdef Py_ssize_t kg = (g.C // g.group) * g.kh * g.kw
    cdef Py_ssize_t gi
    cdef const floating* b = x
    if not g.direct:
        _im2col(x, col, g, split)
        b = col
    for gi in range(g.group):
        gemm(False, False, <int> mg, <int> ohw, <int> kg,
             1, w + gi * mg * kg, <int> kg,
             b + gi * kg * ohw, <int> ohw,
             0, y + gi * mg * ohw, <int> ohw)
    if bias != NULL:
        _add_bias(y, bias, g.M, ohw, split)


cdef void _backward_data_image(const floating* dy, const floating* w, const floating* bias,
                               floating* dx, floating* col, Geometry* g,
                               bint split) noexcept nogil:
    cdef Py_ssize_t ohw = g.OH * g.OW
    cdef Py_ssize_t mg = g.M // g.group
    cdef Py_ssize_t kg = (g.C // g.group) * g.kh * g.kw
    cdef Py_ssize_t gi
    cdef floating* dst = dx if g.direct else col
    for gi in range(g.group):
        gemm(True, False, <int> kg, <int> ohw, <int> mg,
             1, w + gi * mg * kg, <int> kg,
             dy + gi * mg * ohw, <int> ohw,
             0, dst + gi * kg * ohw, <int> ohw)
    if not g.direct:
        _col2im(col, dx, g, split)
    if bias != NULL:
        _add_bias(dx, bias, g.C, g.H * g.W, split)


cdef void _backward_weight_image(const floating* x, const floating* dy, floating* dw,
                                 floating* col, Geometry* g, bint split) noexcept nogil:
    cdef Py_ssize_t ohw = g.OH * g.OW
    cdef Py_ssize_t mg = g.M // g.group
    cdef Py_ssize_t kg = (g.C // g.group) * g.kh * g.kw
    cdef Py_ssize_t gi
    cdef const floating* b = x
    if not g.direct:
        _im2col(x, col, g, split)
        b = col
    for gi in range(g.group):
        gemm(False, True, <int> mg, <int> kg, <int> ohw,
             1, dy + gi * mg * ohw, <int> ohw,
             b + gi * kg * ohw, <int> ohw,
             1, dw + gi * mg * kg, <int> kg)


def conv_forward(const floating[:, :, :, ::1] x,         # IN    (N, C, H, W)
                 const floating[:, :, :, ::1] weight,    # IN    (M, C/group, kh, kw)
                 const floating[::1] bias,               # IN    (M,), or (0,) for none
                 floating[:, :, :, ::1] y,               # OUT   (N, M, OH, OW)
                 floating[:, ::1] col,                   # SCRATCH (slots, C*kh*kw*OH*OW)
                 Py_ssize_t stride_h, Py_ssize_t stride_w,
                 Py_ssize_t pad_h, Py_ssize_t pad_w,
                 Py_ssize_t dil_h, Py_ssize_t dil_w,
                 Py_ssize_t group,
                 bint per_image):
    """y = conv(x, weight) + bias. ``per_image``: prange over images on ``col.shape[0]``
    threads (BLAS must be held to one thread); else images in turn, BLAS threads."""
    cdef Geometry g = _geometry(x.shape[1], x.shape[2], x.shape[3], y.shape[1], y.shape[2],
                                y.shape[3], weight.shape[2], weight.shape[3], stride_h,
                                stride_w, pad_h, pad_w, dil_h, dil_w, group)
    cdef Py_ssize_t N = x.shape[0]
    cdef Py_ssize_t xs = g.C * g.H * g.W
    cdef Py_ssize_t ys = g.M * g.OH * g.OW
    cdef Py_ssize_t cs = col.shape[1]
    cdef int slots = <int> col.shape[0]
    cdef const floating* b = &bias[0] if bias.shape[0] > 0 else NULL
    cdef Py_ssize_t n
    if N == 0:
        return
    with nogil:
        if per_image:
            for n in prange(N, schedule='static', num_threads=slots):
                _forward_image(&x[0, 0, 0, 0] + n * xs, &weight[0, 0, 0, 0], b,
                               &y[0, 0, 0, 0] + n * ys,
                               &col[0, 0] + omp_get_thread_num() * cs, &g, False)
        else:
            for n in range(N):
                _forward_image(&x[0, 0, 0, 0] + n * xs, &weight[0, 0, 0, 0], b,
                               &y[0, 0, 0, 0] + n * ys, &col[0, 0], &g, True)


def conv_backward_data(const floating[:, :, :, ::1] dy,      # IN    (N, M, OH, OW)
                       const floating[:, :, :, ::1] weight,  # IN    (M, C/group, kh, kw)
                       const floating[::1] bias,             # IN    (C,), or (0,) for none
                       floating[:, :, :, ::1] dx,            # OUT   (N, C, H, W)
                       floating[:, ::1] col,                 # SCRATCH (slots, C*kh*kw*OH*OW)
                       Py_ssize_t stride_h, Py_ssize_t stride_w,
                       Py_ssize_t pad_h, Py_ssize_t pad_w,
                       Py_ssize_t dil_h, Py_ssize_t dil_w,
                       Py_ssize_t group,
                       bint per_image):
    """dx = conv_transpose(dy, weight) + bias (the bias is per input channel: Deconvolution's
    forward). Threads as in :func:`conv_forward`."""
    cdef Geometry g = _geometry(dx.shape[1], dx.shape[2], dx.shape[3], dy.shape[1],
                                dy.shape[2], dy.shape[3], weight.shape[2], weight.shape[3],
                                stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, group)
    cdef Py_ssize_t N = dx.shape[0]
    cdef Py_ssize_t xs = g.C * g.H * g.W
    cdef Py_ssize_t ys = g.M * g.OH * g.OW
    cdef Py_ssize_t cs = col.shape[1]
    cdef int slots = <int> col.shape[0]
    cdef const floating* b = &bias[0] if bias.shape[0] > 0 else NULL
    cdef Py_ssize_t n
    if N == 0:
        return
    with nogil:
        if per_image:
            for n in prange(N, schedule='static', num_threads=slots):
                _backward_data_image(&dy[0, 0, 0, 0] + n * ys, &weight[0, 0, 0, 0], b,
                                     &dx[0, 0, 0, 0] + n * xs,
                                     &col[0, 0] + omp_get_thread_num() * cs, &g, False)
        else:
            for n in range(N):
                _backward_data_image(&dy[0, 0, 0, 0] + n * ys, &weight[0, 0, 0, 0], b,
                                     &dx[0, 0, 0, 0] + n * xs, &col[0, 0], &g, True)


def conv_backward_weight(const floating[:, :, :, ::1] x,     # IN    (N, C, H, W)
                         const floating[:, :, :, ::1] dy,    # IN    (N, M, OH, OW)
                         floating[:, :, :, ::1] dweight,     # INOUT (M, C/group, kh, kw)
                         floating[:, ::1] col,               # SCRATCH (slots, C*kh*kw*OH*OW)
                         floating[:, ::1] partial,           # SCRATCH (P, M*C/group*kh*kw)
                         Py_ssize_t stride_h, Py_ssize_t stride_w,
                         Py_ssize_t pad_h, Py_ssize_t pad_w,
                         Py_ssize_t dil_h, Py_ssize_t dil_w,
                         Py_ssize_t group):
    """dweight += sum_n dy[n] @ im2col(x[n]).T, per group.

    P = ``partial.shape[0]`` > 0: image n is accumulated into partial[n % P] (a prange over
    the P classes on at most ``col.shape[0]`` threads, BLAS held to one thread by the
    caller), then dweight += partial[0] + ... + partial[P-1] in that order: the same sums
    for any thread count. P = 0: images in turn straight into dweight, BLAS threads."""
    cdef Geometry g = _geometry(x.shape[1], x.shape[2], x.shape[3], dy.shape[1], dy.shape[2],
                                dy.shape[3], dweight.shape[2], dweight.shape[3], stride_h,
                                stride_w, pad_h, pad_w, dil_h, dil_w, group)
    cdef Py_ssize_t N = x.shape[0]
    cdef Py_ssize_t xs = g.C * g.H * g.W
    cdef Py_ssize_t ys = g.M * g.OH * g.OW
    cdef Py_ssize_t cs = col.shape[1]
    cdef Py_ssize_t P = partial.shape[0]
    cdef Py_ssize_t size = dweight.shape[0] * dweight.shape[1] * dweight.shape[2] * dweight.shape[3]
    cdef int slots = <int> min(col.shape[0], P) if P > 0 else 1
    cdef floating* dw = &dweight[0, 0, 0, 0]
    cdef floating* acc
    cdef floating s
    cdef Py_ssize_t n, p, q, e
    if N == 0:
        return
    with nogil:
        if P == 0:
            for n in range(N):
                _backward_weight_image(&x[0, 0, 0, 0] + n * xs, &dy[0, 0, 0, 0] + n * ys, dw,
                                       &col[0, 0], &g, True)
        else:
            for p in prange(P, schedule='static', num_threads=slots):
                acc = &partial[0, 0] + p * size
                memset(acc, 0, size * sizeof(floating))
                n = p
                while n < N:
                    _backward_weight_image(&x[0, 0, 0, 0] + n * xs, &dy[0, 0, 0, 0] + n * ys,
                                           acc, &col[0, 0] + omp_get_thread_num() * cs, &g,
                                           False)
                    n = n + P
            for e in prange(size, schedule='static'):
                s = dw[e]
                for q in range(P):
                    s = s + partial[q, e]
                dw[e] = s


def conv_backward_bias(const floating[:, :, :, ::1] dy,     # IN    (N, M, OH, OW)
                       floating[::1] dbias):                # INOUT (M,)
    """dbias[m] += sum over n, oh, ow of dy[n, m, oh, ow] (double accumulator)."""
    cdef Py_ssize_t N = dy.shape[0]
    cdef Py_ssize_t M = dy.shape[1]
    cdef Py_ssize_t plane = dy.shape[2] * dy.shape[3]
    cdef Py_ssize_t m, n, p
    cdef double s
    cdef const floating* row
    with nogil:
        for m in prange(M, schedule='static'):
            s = 0
            for n in range(N):
                row = &dy[n, m, 0, 0]
                for p in range(plane):
                    s = s + row[p]
            dbias[m] += <floating> s


def im2col(const floating[:, :, ::1] x,     # IN  (C, H, W)
           floating[:, ::1] col,            # OUT (C*kh*kw, OH*OW)
           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride_h, Py_ssize_t stride_w,
           Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t dil_h, Py_ssize_t dil_w,
           Py_ssize_t out_h, Py_ssize_t out_w):
    """Test twin of the inline im2col (one image)."""
    _check_twin(x.shape[0], col, kh, kw, stride_h, stride_w, dil_h, dil_w, out_h, out_w)
    with nogil:
        im2col_channels(&x[0, 0, 0], &col[0, 0], 0, x.shape[0], x.shape[1], x.shape[2],
                        kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, out_h, out_w)


def col2im(const floating[:, ::1] col,      # IN  (C*kh*kw, OH*OW)
           floating[:, :, ::1] x,           # OUT (C, H, W)
           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride_h, Py_ssize_t stride_w,
           Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t dil_h, Py_ssize_t dil_w,
           Py_ssize_t out_h, Py_ssize_t out_w):
    """Test twin of the inline col2im (one image)."""
    _check_twin(x.shape[0], col, kh, kw, stride_h, stride_w, dil_h, dil_w, out_h, out_w)
    with nogil:
        col2im_channels(&col[0, 0], &x[0, 0, 0], 0, x.shape[0], x.shape[1], x.shape[2],
                        kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, out_h, out_w)


cdef _check_twin(Py_ssize_t C, const floating[:, ::1] col, Py_ssize_t kh, Py_ssize_t kw,
                 Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw,
                 Py_ssize_t out_h, Py_ssize_t out_w):
    if min(kh, kw, sh, sw, dh, dw, out_h, out_w, C) < 1:
        raise ValueError("sizes, strides and dilations must be >= 1")
    if col.shape[0] != C * kh * kw or col.shape[1] != out_h * out_w:
        raise ValueError(f"col must have shape ({C * kh * kw}, {out_h * out_w}), got "
                         f"({col.shape[0]}, {col.shape[1]})")
