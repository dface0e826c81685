"""Convolution primitives shared by Convolution and Deconvolution (Caffe's BaseConvolutionLayer).

In conv terms: an input x (N, C, H, W), an output y (N, M, OH, OW), a weight (M, C/group, kh,
kw). Per image and group g, with col = im2col(x[n]) of shape (C*kh*kw, OH*OW) (im2col.pxd):

- forward          y[n, g]  = W[g] @ col[g]                 (+ bias per output channel)
- backward-data    dx[n]    = col2im(W[g].T @ dy[n, g])     (+ bias per input channel: the
                                                             Deconvolution forward)
- backward-weight  dW[g]   += dy[n, g] @ col[g].T            (beta = 1: accumulates)

A 1x1 kernel with stride 1, pad 0 and OH x OW == H x W skips im2col: col is the image itself.
Deconvolution calls these with the roles swapped (its forward is backward-data, its
backward-data is forward, its weight gradient is backward-weight with x = its top diff).

Threads: OpenMP only; BLAS is held to one thread by the caller (convnet.backend.cpu), and
every primitive is a static prange over independent work items, each with its own column
block (``col[thread]``):

- forward: tiles of ``rows`` output rows of one image (im2col of the tile, one gemm per
  group writing y's rows in place, bias added while the tile is in cache);
- backward-data: blocks of ``block`` input channels of one image (gemm into the block's
  columns, col2im into those channels' planes only: no two items write the same pixel);
- backward-weight: blocks of ``block`` weight columns (input channels), each summing its
  images in order; when there are few blocks the images are also split into P fixed classes
  (n % P) with partial sums added in order at the end. Tile, block and P depend on the shapes
  only, so the result is bit-identical for any thread count (a test checks 1 vs 2).

Measured on the 2-core AVX-512 (AMD EPYC) machine, float32, N=8, while other jobs shared it:

- one batch-serial loop with 2 BLAS threads and OpenMP im2col/col2im in between ran conv_3x3
  forward in 800 ms against 64 ms for the prange over images with BLAS on one thread (the
  OpenMP and OpenBLAS pools spin against each other on 2 cores), and deconv_8x backward
  3.7 s against 0.13 s: BLAS threads are never used inside these primitives.
- column block size (one thread, CPU time; conv_3x3 forward / weight / data): 256 KB blocks
  30.2 / 28.0 / 25.5 ms, whole images 26.2 / 26.4 / 22.8 ms (the gemm repacks the weight per
  block, which costs more than the cache saves), hence blocks of up to 8 MB, split only to
  give at least 4 work items.
- one thread, CPU time, convnet vs PyTorch 2.13 (oneDNN), forward / backward in ms:
  conv_3x3 25.4 / 49.2 vs 10.6 / 23.2; conv_atrous 21.7 / 43.0 vs 9.6 / 20.8; conv_first
  3.5 / 10.5 vs 2.0 / 10.3; conv_1x1 2.6 / 5.3 vs 2.8 / 5.9; deconv_2x 5.9 / 14.0 vs
  3.1 / 5.2; deconv_8x 9.9 / 24.4 vs 9.4 / 20.2. The gemm runs at ~100 GF/s, which is what
  scipy's OpenBLAS 0.3.30 gives on one core with its Haswell kernel (it does not detect this
  CPU's AVX-512); OPENBLAS_CORETYPE=SkylakeX raises that to ~160 GF/s and conv_3x3 to
  19.8 / 36.3 ms. oneDNN's AVX-512 convolutions reach ~230 GF/s.
"""

from cython cimport floating
from cython.parallel cimport prange

from _blas cimport gemm
from _openmp cimport omp_get_max_threads, omp_get_thread_num
from im2col cimport col2im_channels, im2col_channels


cdef struct Geometry:
    Py_ssize_t C, H, W          # conv input, one image
    Py_ssize_t M, OH, OW        # conv output, one image
    Py_ssize_t kh, kw, sh, sw, ph, pw, dh, dw
    Py_ssize_t group, cg, mg, kg   # channels, outputs and weight columns per group
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
    g.cg = C // group
    g.mg = M // group
    g.kg = g.cg * kh * kw
    g.direct = (kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
                and OH == H and OW == W)
    return g


cdef inline void _im2col(const floating* x, floating* col, Py_ssize_t c0, Py_ssize_t c1,
                         Py_ssize_t oh0, Py_ssize_t oh1, Py_ssize_t ld,
                         Geometry* g) noexcept nogil:
    im2col_channels(x, col, c0, c1, oh0, oh1, ld, g.H, g.W, g.kh, g.kw, g.sh, g.sw,
                    g.ph, g.pw, g.dh, g.dw, g.OH, g.OW)


cdef inline void _bias_rows(floating* y, const floating* bias, Py_ssize_t channels,
                            Py_ssize_t ld, Py_ssize_t length, bint add) noexcept nogil:
    # y[m, :length] += bias[m] (or = bias[m] without ``add``) for m < channels, rows ld apart
    cdef Py_ssize_t m, p
    cdef floating v
    cdef floating* row
    for m in range(channels):
        v = bias[m]
        row = y + m * ld
        if add:
            for p in range(length):
                row[p] += v
        else:
            for p in range(length):
                row[p] = v


cdef void _forward_tile(const floating* x, const floating* w, const floating* bias,
                        floating* y, floating* col, Py_ssize_t oh0, Py_ssize_t oh1,
                        Py_ssize_t m0, Py_ssize_t m1, Geometry* g) noexcept nogil:
    # output rows [oh0, oh1) of output channels [m0, m1) of one image: im2col of that tile,
    # one gemm per group (a block of channels [m0, m1) only when group == 1)
    cdef Py_ssize_t ohw = g.OH * g.OW
    cdef Py_ssize_t cols = (oh1 - oh0) * g.OW
    cdef Py_ssize_t gi
    cdef const floating* b = x + oh0 * g.OW
    cdef Py_ssize_t ldb = ohw
    cdef floating beta = 0
    if not g.direct:
        _im2col(x, col, 0, g.C, oh0, oh1, cols, g)
        b = col
        ldb = cols
    if bias != NULL:
        # the tile starts as the bias and the gemm adds onto it (beta = 1): OpenBLAS then
        # skips its beta pass (a memset of the tile for beta = 0) and no bias pass follows
        # (conv_first forward: 8 % of the profile each). Same sums: bias + x.w either way.
        _bias_rows(y + m0 * ohw + oh0 * g.OW, bias + m0, m1 - m0, ohw, cols, False)
        beta = 1
    if g.group == 1:
        gemm(False, False, <int> (m1 - m0), <int> cols, <int> g.kg,
             1, w + m0 * g.kg, <int> g.kg, b, <int> ldb,
             beta, y + m0 * ohw + oh0 * g.OW, <int> ohw)
    else:
        for gi in range(g.group):
            gemm(False, False, <int> g.mg, <int> cols, <int> g.kg,
                 1, w + gi * g.mg * g.kg, <int> g.kg,
                 b + gi * g.kg * ldb, <int> ldb,
                 beta, y + gi * g.mg * ohw + oh0 * g.OW, <int> ohw)


cdef void _backward_data_block(const floating* dy, const floating* w, const floating* bias,
                               floating* dx, floating* col, Py_ssize_t gi, Py_ssize_t c0,
                               Py_ssize_t c1, Geometry* g) noexcept nogil:
    # input channels [c0, c1) (inside group gi) of one image: col block = W[:, block].T @ dy,
    # then col2im into those channels' planes only
    cdef Py_ssize_t ohw = g.OH * g.OW
    cdef Py_ssize_t hw = g.H * g.W
    cdef Py_ssize_t kc = (c1 - c0) * g.kh * g.kw
    cdef Py_ssize_t koff = (c0 - gi * g.cg) * g.kh * g.kw
    cdef floating* dst = dx + c0 * hw if g.direct else col
    gemm(True, False, <int> kc, <int> ohw, <int> g.mg,
         1, w + gi * g.mg * g.kg + koff, <int> g.kg,
         dy + gi * g.mg * ohw, <int> ohw,
         0, dst, <int> ohw)
    if not g.direct:
        col2im_channels(col, dx, c0, c1, ohw, g.H, g.W, g.kh, g.kw, g.sh, g.sw,
                        g.ph, g.pw, g.dh, g.dw, g.OH, g.OW)
    if bias != NULL:
        _bias_rows(dx + c0 * hw, bias + c0, c1 - c0, hw, hw, True)


cdef void _backward_weight_block(const floating* x, const floating* dy, floating* dw,
                                 floating* col, Py_ssize_t n0, Py_ssize_t n_end,
                                 Py_ssize_t n_step, Py_ssize_t gi, Py_ssize_t c0,
                                 Py_ssize_t c1, Geometry* g) noexcept nogil:
    # dw[g rows, block columns] += sum over images n0, n0 + n_step, ... < n_end, in order
    cdef Py_ssize_t ohw = g.OH * g.OW
    cdef Py_ssize_t hw = g.H * g.W
    cdef Py_ssize_t kc = (c1 - c0) * g.kh * g.kw
    cdef Py_ssize_t koff = (c0 - gi * g.cg) * g.kh * g.kw
    cdef Py_ssize_t n
    cdef const floating* xn
    cdef const floating* b
    n = n0
    while n < n_end:
        xn = x + n * g.C * hw
        if g.direct:
            b = xn + c0 * hw
        else:
            _im2col(xn, col, c0, c1, 0, g.OH, ohw, g)
            b = col
        gemm(False, True, <int> g.mg, <int> kc, <int> ohw,
             1, dy + (n * g.M + gi * g.mg) * ohw, <int> ohw,
             b, <int> ohw,
             1, dw + gi * g.mg * g.kg + koff, <int> g.kg)
        n = n + n_step


def conv_forward(const floating[:, :, :, ::1] x,         # IN    (N, C, H, W)
                 const floating[:, :, :, ::1] weight,    # IN    (M, C/group, kh, kw)
                 const floating[::1] bias,               # IN    (M,), or (0,) for none
                 floating[:, :, :, ::1] y,               # OUT   (N, M, OH, OW)
                 floating[:, ::1] col,                   # SCRATCH (threads, >= C*kh*kw*rows*OW)
                 Py_ssize_t stride_h, Py_ssize_t stride_w,
                 Py_ssize_t pad_h, Py_ssize_t pad_w,
                 Py_ssize_t dil_h, Py_ssize_t dil_w,
                 Py_ssize_t group,
                 Py_ssize_t rows,
                 Py_ssize_t mblock):
    """y = conv(x, weight) + bias, in tiles of ``rows`` output rows per image and blocks of
    ``mblock`` output channels (all of them unless group == 1): a prange over the
    N * ceil(OH / rows) * ceil(M / mblock) items on ``col.shape[0]`` threads (BLAS held to one
    thread by the caller)."""
    cdef Geometry g = _geometry(x.shape[1], x.shape[2], x.shape[3], y.shape[1], y.shape[2],
                                y.shape[3], weight.shape[2], weight.shape[3], stride_h,
                                stride_w, pad_h, pad_w, dil_h, dil_w, group)
    cdef Py_ssize_t N = x.shape[0]
    cdef Py_ssize_t tiles = (g.OH + rows - 1) // rows
    cdef Py_ssize_t nmb = (g.M + mblock - 1) // mblock if group == 1 else 1
    cdef Py_ssize_t xs = g.C * g.H * g.W
    cdef Py_ssize_t ys = g.M * g.OH * g.OW
    cdef Py_ssize_t cs = col.shape[1]
    cdef int threads = <int> col.shape[0]
    cdef const floating* b = &bias[0] if bias.shape[0] > 0 else NULL
    cdef Py_ssize_t item, n, oh0, m0
    if N == 0:
        return
    with nogil:
        for item in prange(N * tiles * nmb, schedule='static', num_threads=threads):
            n = item // (tiles * nmb)
            oh0 = ((item // nmb) % tiles) * rows
            m0 = (item % nmb) * mblock if nmb > 1 else 0
            _forward_tile(&x[0, 0, 0, 0] + n * xs, &weight[0, 0, 0, 0], b,
                          &y[0, 0, 0, 0] + n * ys, &col[0, 0] + omp_get_thread_num() * cs,
                          oh0, min(oh0 + rows, g.OH), m0,
                          min(m0 + mblock, g.M) if nmb > 1 else g.M, &g)


def conv_backward_data(const floating[:, :, :, ::1] dy,      # IN    (N, M, OH, OW)
                       const floating[:, :, :, ::1] weight,  # IN    (M, C/group, kh, kw)
                       const floating[::1] bias,             # IN    (C,), or (0,) for none
                       floating[:, :, :, ::1] dx,            # OUT   (N, C, H, W)
                       floating[:, ::1] col,                 # SCRATCH (threads, >= block*kh*kw*OH*OW)
                       Py_ssize_t stride_h, Py_ssize_t stride_w,
                       Py_ssize_t pad_h, Py_ssize_t pad_w,
                       Py_ssize_t dil_h, Py_ssize_t dil_w,
                       Py_ssize_t group,
                       Py_ssize_t block):
    """dx = conv_transpose(dy, weight) + bias (the bias is per channel of dx: Deconvolution's
    forward), in blocks of ``block`` input channels: a prange over N * group *
    ceil(C/group / block) blocks; each block owns its dx planes (no races)."""
    cdef Geometry g = _geometry(dx.shape[1], dx.shape[2], dx.shape[3], dy.shape[1],
                                dy.shape[2], dy.shape[3], weight.shape[2], weight.shape[3],
                                stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, group)
    cdef Py_ssize_t N = dx.shape[0]
    cdef Py_ssize_t nb = (g.cg + block - 1) // block
    cdef Py_ssize_t per_image = g.group * nb
    cdef Py_ssize_t xs = g.C * g.H * g.W
    cdef Py_ssize_t ys = g.M * g.OH * g.OW
    cdef Py_ssize_t cs = col.shape[1]
    cdef int threads = <int> col.shape[0]
    cdef const floating* b = &bias[0] if bias.shape[0] > 0 else NULL
    cdef Py_ssize_t item, n, gi, c0
    if N == 0:
        return
    with nogil:
        for item in prange(N * per_image, schedule='static', num_threads=threads):
            n = item // per_image
            gi = (item % per_image) // nb
            c0 = gi * g.cg + (item % nb) * block
            _backward_data_block(&dy[0, 0, 0, 0] + n * ys, &weight[0, 0, 0, 0], b,
                                 &dx[0, 0, 0, 0] + n * xs,
                                 &col[0, 0] + omp_get_thread_num() * cs, gi, c0,
                                 min(c0 + block, (gi + 1) * g.cg), &g)


cdef void _zero_partials(floating* partial, Py_ssize_t count, int threads) noexcept nogil:
    cdef Py_ssize_t e
    for e in prange(count, schedule='static', num_threads=threads):
        partial[e] = 0


cdef void _add_partials(const floating* partial, Py_ssize_t P, Py_ssize_t size,
                        floating* dw, int threads) noexcept nogil:
    # dw += partial[0] + ... + partial[P-1], in that order for every element
    cdef Py_ssize_t e, q
    cdef floating s
    for e in prange(size, schedule='static', num_threads=threads):
        s = dw[e]
        for q in range(P):
            s = s + partial[q * size + e]
        dw[e] = s


def conv_backward_weight(const floating[:, :, :, ::1] x,     # IN    (N, C, H, W)
                         const floating[:, :, :, ::1] dy,    # IN    (N, M, OH, OW)
                         floating[:, :, :, ::1] dweight,     # INOUT (M, C/group, kh, kw)
                         floating[:, ::1] col,               # SCRATCH (threads, >= block*kh*kw*OH*OW)
                         floating[:, ::1] partial,           # SCRATCH (P, M*C/group*kh*kw) or (0, 0)
                         Py_ssize_t stride_h, Py_ssize_t stride_w,
                         Py_ssize_t pad_h, Py_ssize_t pad_w,
                         Py_ssize_t dil_h, Py_ssize_t dil_w,
                         Py_ssize_t group,
                         Py_ssize_t block):
    """dweight += sum_n dy[n] @ im2col(x[n]).T, per group, in blocks of ``block`` input
    channels (weight columns): a prange over the blocks, each summing its images in order.

    With P = ``partial.shape[0]`` > 1 the images are also split into P classes (n % P), each
    summed into partial[p], then dweight += partial[0] + ... + partial[P-1] in that order.
    Either way every sum runs in an order fixed by the shapes, ``block`` and P: the result
    does not depend on the thread count."""
    cdef Geometry g = _geometry(x.shape[1], x.shape[2], x.shape[3], dy.shape[1], dy.shape[2],
                                dy.shape[3], dweight.shape[2], dweight.shape[3], stride_h,
                                stride_w, pad_h, pad_w, dil_h, dil_w, group)
    cdef Py_ssize_t N = x.shape[0]
    cdef Py_ssize_t nb = (g.cg + block - 1) // block
    cdef Py_ssize_t blocks = g.group * nb
    cdef Py_ssize_t P = partial.shape[0] if partial.shape[0] > 1 else 1
    cdef Py_ssize_t size = g.M * g.kg
    cdef Py_ssize_t cs = col.shape[1]
    cdef int threads = <int> col.shape[0]
    cdef floating* dw = &dweight[0, 0, 0, 0]
    cdef floating* acc
    cdef Py_ssize_t item, p, gi, c0
    if N == 0:
        return
    with nogil:
        if P > 1:
            _zero_partials(&partial[0, 0], P * size, threads)
        for item in prange(P * blocks, schedule='static', num_threads=threads):
            p = item // blocks
            gi = (item % blocks) // nb
            c0 = gi * g.cg + (item % nb) * block
            acc = dw if P == 1 else &partial[0, 0] + p * size
            _backward_weight_block(&x[0, 0, 0, 0], &dy[0, 0, 0, 0], acc,
                                   &col[0, 0] + omp_get_thread_num() * cs, p, N, P, gi, c0,
                                   min(c0 + block, (gi + 1) * g.cg), &g)
        if P > 1:
            _add_partials(&partial[0, 0], P, size, dw, threads)


def conv_forward_backward_weight(
        const floating[:, :, :, ::1] x,         # IN    (N, C, H, W) conv input
        const floating[:, :, :, ::1] weight,    # IN    (M, C/group, kh, kw)
        floating[:, :, :, ::1] y,               # OUT   (N, M, OH, OW) = conv(x)
        const floating[:, :, :, ::1] dy,        # IN    (N, M, OH, OW) for the weight gradient
        floating[:, :, :, ::1] dweight,         # INOUT (M, C/group, kh, kw)
        floating[:, ::1] col,                   # SCRATCH (threads, >= C*kh*kw*OH*OW)
        floating[:, ::1] partial,               # SCRATCH (P, M*C/group*kh*kw) or (0, 0)
        Py_ssize_t stride_h, Py_ssize_t stride_w,
        Py_ssize_t pad_h, Py_ssize_t pad_w,
        Py_ssize_t dil_h, Py_ssize_t dil_w,
        Py_ssize_t group):
    """conv_forward without bias and conv_backward_weight(x, dy) from one im2col per image:
    what a Deconvolution's backward needs (its top diff is the conv input of both), so the
    columns are built once instead of twice.

    The images split into P = ``partial.shape[0]`` classes (n % P; P = 1 with an empty
    ``partial`` accumulates straight into dweight), a prange over the classes, each running
    its images in order: y[n] = W @ col, then dW_p += dy[n] @ col.T; dweight += partial[0] +
    ... + partial[P-1] in that order. The result does not depend on the thread count."""
    cdef Geometry g = _geometry(x.shape[1], x.shape[2], x.shape[3], y.shape[1], y.shape[2],
                                y.shape[3], weight.shape[2], weight.shape[3], stride_h,
                                stride_w, pad_h, pad_w, dil_h, dil_w, group)
    cdef Py_ssize_t N = x.shape[0]
    cdef Py_ssize_t P = partial.shape[0] if partial.shape[0] > 1 else 1
    cdef Py_ssize_t size = g.M * g.kg
    cdef Py_ssize_t ohw = g.OH * g.OW
    cdef Py_ssize_t xs = g.C * g.H * g.W
    cdef Py_ssize_t ys = g.M * ohw
    cdef Py_ssize_t cs = col.shape[1]
    cdef int threads = <int> col.shape[0]
    cdef floating* dw = &dweight[0, 0, 0, 0]
    cdef floating* acc
    cdef floating* c
    cdef Py_ssize_t p, n, gi
    if N == 0:
        return
    with nogil:
        if P > 1:
            _zero_partials(&partial[0, 0], P * size, threads)
        for p in prange(P, schedule='static', num_threads=threads):
            acc = dw if P == 1 else &partial[0, 0] + p * size
            c = &col[0, 0] + omp_get_thread_num() * cs
            n = p
            while n < N:
                _im2col(&x[0, 0, 0, 0] + n * xs, c, 0, g.C, 0, g.OH, ohw, &g)
                for gi in range(g.group):
                    gemm(False, False, <int> g.mg, <int> ohw, <int> g.kg,
                         1, &weight[0, 0, 0, 0] + gi * g.mg * g.kg, <int> g.kg,
                         c + gi * g.kg * ohw, <int> ohw,
                         0, &y[0, 0, 0, 0] + n * ys + gi * g.mg * ohw, <int> ohw)
                    gemm(False, True, <int> g.mg, <int> g.kg, <int> ohw,
                         1, &dy[0, 0, 0, 0] + n * ys + gi * g.mg * ohw, <int> ohw,
                         c + gi * g.kg * ohw, <int> ohw,
                         1, acc + gi * g.mg * g.kg, <int> g.kg)
                n = n + P
        if P > 1:
            _add_partials(&partial[0, 0], P, size, dw, threads)


cdef double _plane_sum(const floating* row, Py_ssize_t count) noexcept nogil:
    # sum of row[:count] in double, in a fixed order: 8 partial sums (so that it vectorises)
    cdef double part[8]
    cdef double s = 0
    cdef Py_ssize_t i, j, full = count - count % 8
    for j in range(8):
        part[j] = 0
    for i in range(0, full, 8):
        for j in range(8):
            part[j] += row[i + j]
    for i in range(full, count):
        part[0] += row[i]
    for j in range(8):
        s += part[j]
    return s


cdef enum:
    # below this many values of dy the bias gradient runs on one thread: the default
    # network's 16x5x64x64 score layer took 0.16-0.22 ms on two (a thread wake), 0.07 on one
    BIAS_GRAIN = 1 << 19


def conv_backward_bias(const floating[:, :, :, ::1] dy,     # IN    (N, M, OH, OW)
                       floating[::1] dbias):                # INOUT (M,)
    """dbias[m] += sum over n, oh, ow of dy[n, m, oh, ow] (double accumulator)."""
    cdef Py_ssize_t N = dy.shape[0]
    cdef Py_ssize_t M = dy.shape[1]
    cdef Py_ssize_t plane = dy.shape[2] * dy.shape[3]
    cdef Py_ssize_t m, n
    cdef double s
    cdef int threads = 1 if N * M * plane < BIAS_GRAIN else omp_get_max_threads()
    with nogil:
        for m in prange(M, schedule='static', num_threads=threads):
            s = 0
            for n in range(N):
                s = s + _plane_sum(&dy[n, m, 0, 0], plane)
            dbias[m] += <floating> s


def space_to_depth(const floating[:, :, :, ::1] x,    # IN  (N, C, H, W)
                   floating[:, :, :, ::1] z,          # OUT (N, C*sh*sw, U, V)
                   Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw):
    """z[n, (c*sh + r)*sw + q, u, v] = x[n, c, u*sh + r - ph, v*sw + q - pw], 0 outside x:
    a stride-(sh, sw) convolution of x is then a stride-1 one of z (the "s2d" algorithm).
    Work: a prange over the N * C * sh planes groups (each writes its own z planes)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t U = z.shape[2], V = z.shape[3]
    cdef Py_ssize_t item, n, c, r, q, u, v, iy, ix, lo, hi
    cdef const floating* row
    cdef floating* out
    if z.shape[0] != N or z.shape[1] != C * sh * sw or sh < 1 or sw < 1:
        raise ValueError(f"space_to_depth: z must have shape ({N}, {C * sh * sw}, U, V), got "
                         f"({z.shape[0]}, {z.shape[1]}, {U}, {V})")
    with nogil:
        for item in prange(N * C * sh, schedule='static'):
            n = item // (C * sh)
            c = (item // sh) % C
            r = item % sh
            for q in range(sw):
                out = &z[n, (c * sh + r) * sw + q, 0, 0] if U * V > 0 else NULL
                # v in [lo, hi) reads inside the row: 0 <= v*sw + q - pw < W
                lo = min(max((pw - q + sw - 1) // sw, 0), V)
                hi = min(max((W + pw - q + sw - 1) // sw, lo), V)
                for u in range(U):
                    iy = u * sh + r - ph
                    if iy < 0 or iy >= H:
                        for v in range(V):
                            out[u * V + v] = 0
                        continue
                    row = &x[n, c, iy, 0]
                    for v in range(lo):
                        out[u * V + v] = 0
                    for v in range(lo, hi):
                        out[u * V + v] = row[v * sw + q - pw]
                    for v in range(hi, V):
                        out[u * V + v] = 0


def depth_to_space(const floating[:, :, :, ::1] z,    # IN  (N, C*sh*sw, U, V)
                   floating[:, :, :, ::1] x,          # OUT (N, C, H, W)
                   const floating[::1] bias,          # IN  (C,), or (0,) for none
                   Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t ph, Py_ssize_t pw):
    """The adjoint of space_to_depth (each pixel of x is at most one entry of z):
    x[n, c, y, w] = z[n, (c*sh + r)*sw + q, u, v] + bias[c] with y + ph = u*sh + r and
    w + pw = v*sw + q, or bias[c] (0 without) where (u, v) is outside z. Work: a prange over
    the N * C planes of x."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t U = z.shape[2], V = z.shape[3]
    cdef Py_ssize_t item, n, c, r, q, u, v, y, w
    cdef floating b
    cdef bint has_bias = bias.shape[0] > 0
    if z.shape[0] != N or z.shape[1] != C * sh * sw or sh < 1 or sw < 1:
        raise ValueError(f"depth_to_space: z must have shape ({N}, {C * sh * sw}, U, V), got "
                         f"({z.shape[0]}, {z.shape[1]}, {U}, {V})")
    if has_bias and bias.shape[0] != C:
        raise ValueError(f"depth_to_space: bias must have {C} values, got {bias.shape[0]}")
    with nogil:
        for item in prange(N * C, schedule='static'):
            n = item // C
            c = item % C
            b = bias[c] if has_bias else 0
            for y in range(H):
                u = (y + ph) // sh
                r = (y + ph) % sh
                for w in range(W):
                    v = (w + pw) // sw
                    q = (w + pw) % sw
                    if u < U and v < V:
                        x[n, c, y, w] = z[n, (c * sh + r) * sw + q, u, v] + b
                    else:
                        x[n, c, y, w] = b


def im2col(const floating[:, :, ::1] x,     # IN  (C, H, W)
           floating[:, ::1] col,            # OUT (C*kh*kw, OH*OW)
           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride_h, Py_ssize_t stride_w,
           Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t dil_h, Py_ssize_t dil_w,
           Py_ssize_t out_h, Py_ssize_t out_w):
    """Test twin of the inline im2col (one whole image)."""
    _check_twin(x.shape[0], col, kh, kw, stride_h, stride_w, dil_h, dil_w, out_h, out_w)
    with nogil:
        im2col_channels(&x[0, 0, 0], &col[0, 0], 0, x.shape[0], 0, out_h, out_h * out_w,
                        x.shape[1], x.shape[2], kh, kw, stride_h, stride_w, pad_h, pad_w,
                        dil_h, dil_w, out_h, out_w)


def col2im(const floating[:, ::1] col,      # IN  (C*kh*kw, OH*OW)
           floating[:, :, ::1] x,           # OUT (C, H, W)
           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t stride_h, Py_ssize_t stride_w,
           Py_ssize_t pad_h, Py_ssize_t pad_w, Py_ssize_t dil_h, Py_ssize_t dil_w,
           Py_ssize_t out_h, Py_ssize_t out_w):
    """Test twin of the inline col2im (one whole image)."""
    _check_twin(x.shape[0], col, kh, kw, stride_h, stride_w, dil_h, dil_w, out_h, out_w)
    with nogil:
        col2im_channels(&col[0, 0], &x[0, 0, 0], 0, x.shape[0], out_h * out_w, x.shape[1],
                        x.shape[2], kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                        out_h, out_w)


cdef _check_twin(Py_ssize_t C, const floating[:, ::1] col, Py_ssize_t kh, Py_ssize_t kw,
                 Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t dh, Py_ssize_t dw,
                 Py_ssize_t out_h, Py_ssize_t out_w):
    if min(kh, kw, sh, sw, dh, dw, out_h, out_w, C) < 1:
        raise ValueError("sizes, strides and dilations must be >= 1")
    if col.shape[0] != C * kh * kw or col.shape[1] != out_h * out_w:
        raise ValueError(f"col must have shape ({C * kh * kw}, {out_h * out_w}), got "
                         f"({col.shape[0]}, {col.shape[1]})")
