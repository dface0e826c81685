"""Winograd F(4x4, 3x3) convolution: forward, and the weight gradient (Lavin & Gray 2015).

For a 6x6 input patch d and a 3x3 filter g, the 4x4 output tile of their correlation is

    Y = A^T [ (G g G^T) * (B^T d B) ] A        (* elementwise; 36 products instead of 144)

with the interpolation points 0, +-1, +-2 and infinity (matrices in the transforms below). Over
channels the elementwise products become one GEMM per transform point p (36 of them):
M_p (M x tiles) = U_p (M x C) @ V_p (C x tiles), with U = G g G^T the transformed filters and
V = B^T d B the transformed input tiles. Every GEMM goes through the BLAS door (_blas.pxd).

- forward: ``winograd_forward`` (V, then the 36 GEMMs, then Y = A^T M A, plus the bias). The
  backward-data pass of a stride-1 convolution is this same forward run with the filters
  rotated by 180 degrees, their in/out channels swapped and pad' = dilation*2 - pad (any sign:
  a negative pad crops); convnet.backend.cpu builds those filters.
- weight gradient: dU_p += dM_p @ V_p^T with dM = A dY A^T (the adjoint of the output
  transform), then dg = G^T dU G (the adjoint of the filter transform), ``winograd_backward_weight``.
- dilation d: the outputs with oh = a (mod d), ow = b (mod d) read only the input sub-lattice
  of the same residues, through a dense 3x3 filter: each of the d*d lattices is tiled on its
  own (tile origins and steps below), so a dilated 3x3 costs what a dense one does.

Work items are runs of tile rows of one image, one run per lattice side by side (segments
(image, lattice, tile rows), listed by the caller): a dilated layer's d*d lattices share one
set of GEMMs, whose N (forward) or K (weight gradient) is then d*d times wider (a 32x32
image at dilation 2 has 16 tiles per lattice; 128x128x16 GEMMs ran at ~27 GFLOP/s on one core
against 60-80 at 64 tiles). Paired in one process against the one-lattice items (2 threads,
ms, forward / backward): N=8 128->128 32x32 d=2 18.5 / 35.6 -> 17.9 / 33.0; N=2 256->256
28x28 d=2 17.4 / 40.3 -> 15.1 / 34.0; N=1 512->512 28x28 d=4 74.7 / 201.6 -> 41.4 / 98.6.
Each thread owns its scratch (transformed tiles V and products M for one item) and writes
only its item's outputs, so the forward result is bit-identical for any thread count. The
weight gradient sums the items of P fixed classes (item k in class k % P) in order into P
partial sums, added in order at the end: again independent of the thread count.

Transforms run as 1-D passes over whole tile rows, so the inner loops are contiguous over the
tiles of a row and the compiler vectorises them. Float32 relative RMS error against float64 on a
64-channel layer: about 2e-6 (direct: 3e-7).
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memcpy, memset

from _blas cimport gemm
from _openmp cimport omp_get_thread_num

cdef enum:
    TILE = 4        # outputs per tile side
    ALPHA = 6       # patch side (TILE + 3 - 1)
    POINTS = 36     # transform points (ALPHA * ALPHA)


cdef struct Geometry:
    Py_ssize_t C, H, W, M, OH, OW
    Py_ssize_t ph, pw, dh, dw         # pad (any sign) and dilation = lattice step
    Py_ssize_t group, cg, mg
    Py_ssize_t tw_max                 # tiles per row of the widest lattice (residue 0)


cdef inline Py_ssize_t _cdiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline Py_ssize_t _lattice_tiles(Py_ssize_t out, Py_ssize_t residue,
                                      Py_ssize_t step) noexcept nogil:
    # tiles covering the outputs residue, residue + step, ... < out
    if residue >= out:
        return 0
    return _cdiv(_cdiv(out - residue, step), TILE)


cdef Geometry _geometry(Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t M,
                        Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t ph, Py_ssize_t pw,
                        Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t group) noexcept:
    cdef Geometry g
    g.C = C
    g.H = H
    g.W = W
    g.M = M
    g.OH = OH
    g.OW = OW
    g.ph = ph
    g.pw = pw
    g.dh = dh
    g.dw = dw
    g.group = group
    g.cg = C // group
    g.mg = M // group
    g.tw_max = _lattice_tiles(OW, 0, dw)
    return g


def scratch_size(Py_ssize_t channels, Py_ssize_t outputs, Py_ssize_t tiles,
                 Py_ssize_t tiles_per_row):
    """Elements of one thread's scratch for items of at most ``tiles`` tiles whose rows have
    at most ``tiles_per_row``: transformed tiles of ``channels`` inputs and ``outputs``
    products, plus the row buffers of the 1-D passes."""
    return (POINTS * (channels + outputs) * tiles
            + 2 * TILE * (tiles_per_row + 1) + POINTS * tiles_per_row)


# ---------------------------------------------------------------- 1-D transforms, per tile row

cdef inline void _gather_row(const floating* row, floating* lb, Py_ssize_t count,
                             Py_ssize_t width, Py_ssize_t origin, Py_ssize_t step,
                             bint valid) noexcept nogil:
    # lb[k] = row[origin + step*k] for k < count (0 outside [0, width)): one row of patch
    # columns, so patch column j of tile t is lb[4t + j]
    cdef Py_ssize_t k, lo, hi
    if not valid:
        memset(lb, 0, count * sizeof(floating))
        return
    # k in [lo, hi) reads inside the row: 0 <= origin + step*k < width
    lo = 0 if origin >= 0 else (-origin + step - 1) // step
    hi = (width - origin + step - 1) // step if width > origin else 0
    if hi > count:
        hi = count
    if lo > hi:
        lo = hi
    if lo > 0:
        memset(lb, 0, lo * sizeof(floating))
    if step == 1:
        if hi > lo:
            memcpy(lb + lo, row + origin + lo, (hi - lo) * sizeof(floating))
    else:
        for k in range(lo, hi):
            lb[k] = row[origin + step * k]
    if hi < count:
        memset(lb + hi, 0, (count - hi) * sizeof(floating))


cdef extern from "winograd_rows.h" nogil:
    void wino_input_rows_f(const float* lb, float* ph, float* h, Py_ssize_t tw)
    void wino_input_rows_d(const double* lb, double* ph, double* h, Py_ssize_t tw)
    void wino_input_cols_f(const float* src, Py_ssize_t istride, float* out,
                           Py_ssize_t ostride, Py_ssize_t tw)
    void wino_input_cols_d(const double* src, Py_ssize_t istride, double* out,
                           Py_ssize_t ostride, Py_ssize_t tw)
    void wino_output_cols_f(const float* src, Py_ssize_t istride, float* out,
                            Py_ssize_t ostride, Py_ssize_t tw)
    void wino_output_cols_d(const double* src, Py_ssize_t istride, double* out,
                            Py_ssize_t ostride, Py_ssize_t tw)
    void wino_output_rows_f(const float* src, float* ph, float* q, float bias, Py_ssize_t tw)
    void wino_output_rows_d(const double* src, double* ph, double* q, double bias,
                            Py_ssize_t tw)
    void wino_adjoint_rows_f(const float* lb, float* ph, float* h, Py_ssize_t tw)
    void wino_adjoint_rows_d(const double* lb, double* ph, double* h, Py_ssize_t tw)
    void wino_adjoint_cols_f(const float* src, Py_ssize_t istride, float* out,
                             Py_ssize_t ostride, Py_ssize_t tw)
    void wino_adjoint_cols_d(const double* src, Py_ssize_t istride, double* out,
                             Py_ssize_t ostride, Py_ssize_t tw)
    void wino_filters_d(const double* g, double* t, double* out, Py_ssize_t ld, Py_ssize_t n)
    void wino_filters_adjoint_d(const double* u, double* t, double* g, Py_ssize_t ld,
                                Py_ssize_t n)


cdef void _input_transform(const floating* x, floating* V, Py_ssize_t pstride, Py_ssize_t ld,
                           Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t row0, Py_ssize_t col0,
                           Py_ssize_t trows, Py_ssize_t tw, floating* lb, floating* hb,
                           Geometry* g) noexcept nogil:
    # V[p*pstride + (c - c0)*ld + tr*tw + t] = (B^T d B)_p for the patch of tile (tr, t) of
    # channel c (ld >= trows * tw: the item's tiles, of which this segment is a part); patch
    # row i of tile row tr is input row row0 + dh*(4tr + i), patch column j of tile t is
    # input column col0 + dw*(4t + j). hb holds the six row-transformed patch rows:
    # hb[(6i + k)*tw + t].
    cdef Py_ssize_t c, tr, i, k, ih
    cdef const floating* plane
    cdef floating* out
    for c in range(c0, c1):
        plane = x + c * g.H * g.W
        for tr in range(trows):
            for i in range(ALPHA):
                ih = row0 + g.dh * (TILE * tr + i)
                _gather_row(plane + ih * g.W, lb, TILE * (tw + 1), g.W, col0, g.dw,
                            0 <= ih < g.H)
                if floating is float:
                    wino_input_rows_f(lb, lb + TILE * (tw + 1), hb + i * ALPHA * tw, tw)
                else:
                    wino_input_rows_d(lb, lb + TILE * (tw + 1), hb + i * ALPHA * tw, tw)
            out = V + (c - c0) * ld + tr * tw
            for k in range(ALPHA):
                if floating is float:
                    wino_input_cols_f(hb + k * tw, ALPHA * tw, out + k * pstride,
                                      ALPHA * pstride, tw)
                else:
                    wino_input_cols_d(hb + k * tw, ALPHA * tw, out + k * pstride,
                                      ALPHA * pstride, tw)


cdef void _output_transform(const floating* Mp, Py_ssize_t pstride, Py_ssize_t ld,
                            floating* y, const floating* bias, Py_ssize_t m0, Py_ssize_t m1,
                            Py_ssize_t row0, Py_ssize_t col0, Py_ssize_t trows, Py_ssize_t tw,
                            floating* ob, Geometry* g) noexcept nogil:
    # y[m, row0 + dh*(4tr + r), col0 + dw*(4t + s)] = (A^T M A)_{r,s} (+ bias[m]) for the tile
    # (tr, t) products Mp[p*pstride + (m - m0)*ld + tr*tw + t]; outputs past OH / OW are
    # dropped. ob (36tw): the column-transformed rows ob[(6r + k)*tw + t], then q and its
    # scratch
    cdef Py_ssize_t limit = _cdiv(g.OW - col0, g.dw)      # lattice columns inside the output
    cdef Py_ssize_t count = min(limit, TILE * tw)
    cdef Py_ssize_t m, tr, k, r, oh, idx
    cdef const floating* src
    cdef floating* row
    cdef floating* q = ob + TILE * ALPHA * tw
    cdef floating b
    for m in range(m0, m1):
        b = bias[m] if bias != NULL else 0
        for tr in range(trows):
            src = Mp + (m - m0) * ld + tr * tw
            for k in range(ALPHA):
                if floating is float:
                    wino_output_cols_f(src + k * pstride, ALPHA * pstride, ob + k * tw,
                                       ALPHA * tw, tw)
                else:
                    wino_output_cols_d(src + k * pstride, ALPHA * pstride, ob + k * tw,
                                       ALPHA * tw, tw)
            for r in range(TILE):
                oh = row0 + g.dh * (TILE * tr + r)
                if oh >= g.OH:
                    break
                if floating is float:
                    wino_output_rows_f(ob + r * ALPHA * tw, q + TILE * tw, q, b, tw)
                else:
                    wino_output_rows_d(ob + r * ALPHA * tw, q + TILE * tw, q, b, tw)
                row = y + (m * g.OH + oh) * g.OW + col0
                if g.dw == 1:
                    memcpy(row, q, count * sizeof(floating))
                else:
                    for idx in range(count):
                        row[g.dw * idx] = q[idx]


cdef void _output_adjoint(const floating* dy, floating* D, Py_ssize_t pstride, Py_ssize_t ld,
                          Py_ssize_t m0, Py_ssize_t m1, Py_ssize_t row0, Py_ssize_t col0,
                          Py_ssize_t trows, Py_ssize_t tw, floating* lb, floating* hb,
                          Geometry* g) noexcept nogil:
    # D[p*pstride + (m - m0)*ld + tr*tw + t] = (A dY A^T)_p for the 4x4 tile (tr, t) of dy's
    # plane m (zero past OH / OW): the adjoint of _output_transform
    cdef Py_ssize_t m, tr, r, k, oh
    cdef const floating* plane
    cdef floating* out
    for m in range(m0, m1):
        plane = dy + m * g.OH * g.OW
        for tr in range(trows):
            for r in range(TILE):
                oh = row0 + g.dh * (TILE * tr + r)
                _gather_row(plane + oh * g.OW, lb, TILE * tw, g.OW, col0, g.dw, oh < g.OH)
                if floating is float:
                    wino_adjoint_rows_f(lb, lb + TILE * (tw + 1), hb + r * ALPHA * tw, tw)
                else:
                    wino_adjoint_rows_d(lb, lb + TILE * (tw + 1), hb + r * ALPHA * tw, tw)
            out = D + (m - m0) * ld + tr * tw
            for k in range(ALPHA):
                if floating is float:
                    wino_adjoint_cols_f(hb + k * tw, ALPHA * tw, out + k * pstride,
                                        ALPHA * pstride, tw)
                else:
                    wino_adjoint_cols_d(hb + k * tw, ALPHA * tw, out + k * pstride,
                                        ALPHA * pstride, tw)


# ---------------------------------------------------------------- items

cdef struct Segment:
    Py_ssize_t n                      # image
    Py_ssize_t out_row, out_col       # output pixel of the first tile's corner
    Py_ssize_t in_row, in_col         # input pixel of the first patch's corner (any sign)
    Py_ssize_t trows, tw              # tile rows, tiles per row


cdef inline Segment _segment(const Py_ssize_t[:, ::1] segments, Py_ssize_t i,
                             Geometry* g) noexcept nogil:
    # segments[i] = (image, lattice row residue a, lattice column residue b, tile rows tr0,
    # tr1)
    cdef Segment it
    cdef Py_ssize_t a = segments[i, 1]
    cdef Py_ssize_t b = segments[i, 2]
    cdef Py_ssize_t tr0 = segments[i, 3]
    it.n = segments[i, 0]
    it.out_row = a + g.dh * TILE * tr0
    it.out_col = b
    it.in_row = a - g.ph + g.dh * TILE * tr0
    it.in_col = b - g.pw
    it.trows = segments[i, 4] - tr0
    it.tw = _lattice_tiles(g.OW, b, g.dw)
    return it


cdef inline Py_ssize_t _item_tiles(const Py_ssize_t[:, ::1] segments,
                                   const Py_ssize_t[::1] bounds, Py_ssize_t i,
                                   Geometry* g) noexcept nogil:
    # the tiles of work item i: its segments bounds[i] .. bounds[i + 1], side by side
    cdef Py_ssize_t k, total = 0
    for k in range(bounds[i], bounds[i + 1]):
        total += (segments[k, 4] - segments[k, 3]) * _lattice_tiles(g.OW, segments[k, 2], g.dw)
    return total


def winograd_forward(const floating[:, :, :, ::1] x,        # IN    (N, C, H, W)
                     const floating[:, :, ::1] U,           # IN    (36, M, C/group)
                     const floating[::1] bias,              # IN    (M,), or (0,) for none
                     floating[:, :, :, ::1] y,              # OUT   (N, M, OH, OW)
                     const Py_ssize_t[:, ::1] segments,     # IN    (S, 5) runs of tile rows
                     const Py_ssize_t[::1] bounds,          # IN    (I + 1,) work items
                     floating[:, ::1] scratch,              # SCRATCH (threads, scratch_size)
                     Py_ssize_t max_tiles,
                     Py_ssize_t mblock,
                     Py_ssize_t pad_h, Py_ssize_t pad_w,
                     Py_ssize_t dil_h, Py_ssize_t dil_w,
                     Py_ssize_t group):
    """y[n, m, oh, ow] = bias[m] + sum_{c,i,j} w[m, c, i, j] x[n, c, oh - pad_h + i*dil_h,
    ow - pad_w + j*dil_w] (zero outside x) for every (oh, ow) of y, whatever its size, with
    U the transformed filters (``winograd_filter``). ``segments`` rows are (image, lattice
    residues a < dil_h and b < dil_w, tile rows [tr0, tr1) of that lattice); work item i is
    segments bounds[i] .. bounds[i + 1] (one image), their tiles side by side in one set of
    GEMMs, at most ``max_tiles`` tiles. Work: a static prange over items x ceil(M /
    ``mblock``) output channel blocks (BLAS held to one thread); with blocks, each one
    transforms its item's input again, which pays where a layer has few tiles and many
    channels."""
    cdef Geometry g = _geometry(x.shape[1], x.shape[2], x.shape[3], y.shape[1], y.shape[2],
                                y.shape[3], pad_h, pad_w, dil_h, dil_w, group)
    cdef Py_ssize_t count = bounds.shape[0] - 1
    cdef Py_ssize_t xs = g.C * g.H * g.W
    cdef Py_ssize_t ys = g.M * g.OH * g.OW
    cdef Py_ssize_t cs = scratch.shape[1]
    cdef int threads = <int> scratch.shape[0]
    cdef const floating* b = &bias[0] if bias.shape[0] > 0 else NULL
    cdef Py_ssize_t nmb = _cdiv(g.M, mblock)
    cdef Py_ssize_t w, i, k, T, off, p, gi, m0, m1, mb, lo, hi
    cdef Segment it
    cdef floating* V
    cdef floating* P
    cdef floating* ph
    cdef floating* hb
    if count <= 0:
        return
    with nogil:
        for w in prange(count * nmb, schedule='static', num_threads=threads):
            V = &scratch[0, 0] + omp_get_thread_num() * cs
            P = V + POINTS * g.C * max_tiles
            ph = P + POINTS * mblock * max_tiles
            hb = ph + 2 * TILE * (g.tw_max + 1)
            i = w // nmb
            m0 = (w % nmb) * mblock
            m1 = min(m0 + mblock, g.M)
            mb = m1 - m0
            T = _item_tiles(segments, bounds, i, &g)
            if T == 0:
                continue
            off = 0
            for k in range(bounds[i], bounds[i + 1]):
                it = _segment(segments, k, &g)
                _input_transform(&x[0, 0, 0, 0] + it.n * xs, V + off, g.C * T, T, 0, g.C,
                                 it.in_row, it.in_col, it.trows, it.tw, ph, hb, &g)
                off = off + it.trows * it.tw
            for p in range(POINTS):
                for gi in range(g.group):
                    lo = max(m0, gi * g.mg)
                    hi = min(m1, (gi + 1) * g.mg)
                    if hi > lo:
                        gemm(False, False, <int> (hi - lo), <int> T, <int> g.cg,
                             1, &U[p, lo, 0], <int> g.cg,
                             V + (p * g.C + gi * g.cg) * T, <int> T,
                             0, P + (p * mb + lo - m0) * T, <int> T)
            off = 0
            for k in range(bounds[i], bounds[i + 1]):
                it = _segment(segments, k, &g)
                _output_transform(P + off, mb * T, T, &y[0, 0, 0, 0] + it.n * ys, b, m0, m1,
                                  it.out_row, it.out_col, it.trows, it.tw, hb, &g)
                off = off + it.trows * it.tw


def winograd_backward_weight(const floating[:, :, :, ::1] x,     # IN    (N, C, H, W)
                             const floating[:, :, :, ::1] dy,    # IN    (N, M, OH, OW)
                             floating[:, :, ::1] dU,             # OUT   (P, 36, M*C/group)
                             const Py_ssize_t[:, ::1] segments,  # IN    (S, 5) tile rows
                             const Py_ssize_t[::1] bounds,       # IN    (I + 1,) items
                             floating[:, ::1] scratch,           # SCRATCH (threads, scratch_size)
                             Py_ssize_t max_tiles,
                             Py_ssize_t block,
                             Py_ssize_t pad_h, Py_ssize_t pad_w,
                             Py_ssize_t dil_h, Py_ssize_t dil_w,
                             Py_ssize_t group):
    """dU[q] = class q's part of the transformed weight gradient sum_tiles (A dY A^T)_p
    (B^T d B)_p^T per point p: the work items q, q + P, ... (as winograd_forward's: segments
    bounds[i] .. bounds[i + 1], their tiles the K of one GEMM per point) summed in order.
    Work: a prange over P x group x ceil(C/group / block) (class, group, channel block)
    items. ``winograd_filter_adjoint`` adds the classes (in order) and maps the sum back to
    3x3."""
    cdef Geometry g = _geometry(x.shape[1], x.shape[2], x.shape[3], dy.shape[1], dy.shape[2],
                                dy.shape[3], pad_h, pad_w, dil_h, dil_w, group)
    cdef Py_ssize_t count = bounds.shape[0] - 1
    cdef Py_ssize_t classes = dU.shape[0]
    cdef Py_ssize_t nb = _cdiv(g.cg, block)
    cdef Py_ssize_t work = classes * g.group * nb
    cdef Py_ssize_t size = dU.shape[2]
    cdef Py_ssize_t xs = g.C * g.H * g.W
    cdef Py_ssize_t ys = g.M * g.OH * g.OW
    cdef Py_ssize_t cs = scratch.shape[1]
    cdef int threads = <int> scratch.shape[0]
    cdef Py_ssize_t w, q, gi, c0, c1, i, k, T, off, p, r
    cdef Segment it
    cdef floating* V
    cdef floating* D
    cdef floating* ph
    cdef floating* hb
    cdef floating* acc
    cdef floating beta
    with nogil:
        # each work item owns its (class, group, channel block) part of dU: its first gemm
        # overwrites it (beta = 0: OpenBLAS zeroes, then adds, as beta = 1 on zeros did), so
        # no zeroing loop (one thread start fewer) runs first
        for w in prange(work, schedule='static', num_threads=threads):
            q = w // (g.group * nb)
            gi = (w % (g.group * nb)) // nb
            c0 = gi * g.cg + (w % nb) * block
            c1 = min(c0 + block, (gi + 1) * g.cg)
            V = &scratch[0, 0] + omp_get_thread_num() * cs
            D = V + POINTS * block * max_tiles
            ph = D + POINTS * g.mg * max_tiles
            hb = ph + 2 * TILE * (g.tw_max + 1)
            acc = &dU[q, 0, 0]
            beta = 0
            i = q
            while i < count:
                T = _item_tiles(segments, bounds, i, &g)
                if T > 0:
                    off = 0
                    for k in range(bounds[i], bounds[i + 1]):
                        it = _segment(segments, k, &g)
                        _input_transform(&x[0, 0, 0, 0] + it.n * xs, V + off, (c1 - c0) * T,
                                         T, c0, c1, it.in_row, it.in_col, it.trows, it.tw,
                                         ph, hb, &g)
                        _output_adjoint(&dy[0, 0, 0, 0] + it.n * ys, D + off, g.mg * T, T,
                                        gi * g.mg, (gi + 1) * g.mg, it.out_row, it.out_col,
                                        it.trows, it.tw, ph, hb, &g)
                        off = off + it.trows * it.tw
                    for p in range(POINTS):
                        gemm(False, True, <int> g.mg, <int> (c1 - c0), <int> T,
                             1, D + p * g.mg * T, <int> T,
                             V + p * (c1 - c0) * T, <int> T,
                             beta, acc + p * size + gi * g.mg * g.cg + (c0 - gi * g.cg),
                             <int> g.cg)
                    beta = 1
                i = i + classes
            if beta == 0:
                # no tile reached this part: it is zero
                for p in range(POINTS):
                    for r in range(g.mg):
                        memset(acc + p * size + (gi * g.mg + r) * g.cg + (c0 - gi * g.cg), 0,
                               (c1 - c0) * sizeof(floating))


# ---------------------------------------------------------------- filters

cdef enum:
    FILTER_BLOCK = 64   # filters transformed together: 36 contiguous runs instead of 36 streams



cdef void _filter_block(const floating* w, floating* U, Py_ssize_t e0, Py_ssize_t count,
                        Py_ssize_t pstride, Py_ssize_t group, Py_ssize_t mg, Py_ssize_t cg,
                        bint adjoint) noexcept nogil:
    # U[p*pstride + e - e0] = (G g_e G^T)_p for the count <= FILTER_BLOCK filters e0 <= e:
    # g_e = w[9e:9e+9] (U is (36, M, Cg)), or with ``adjoint`` the stride-1 adjoint's filter
    # e = (gi*Cg + c)*Mg + m: w[gi*Mg + m, c] rotated 180 degrees (U is (36, C, Mg))
    cdef double g[9 * FILTER_BLOCK]
    cdef double t[18 * FILTER_BLOCK]
    cdef double out[POINTS * FILTER_BLOCK]
    cdef Py_ssize_t e, k, p, src, gi, c, m
    for e in range(count):
        if adjoint:
            m = (e0 + e) % mg
            c = (e0 + e) // mg
            gi = c // cg
            src = 9 * ((gi * mg + m) * cg + c - gi * cg)
            for k in range(9):
                g[k * FILTER_BLOCK + e] = w[src + 8 - k]
        else:
            for k in range(9):
                g[k * FILTER_BLOCK + e] = w[9 * (e0 + e) + k]
    wino_filters_d(g, t, out, FILTER_BLOCK, count)
    for p in range(POINTS):
        for e in range(count):
            U[p * pstride + e] = <floating> out[p * FILTER_BLOCK + e]


cdef void _filter_adjoint_block(const floating* dU, Py_ssize_t pstride, Py_ssize_t classes,
                                Py_ssize_t cstride, floating* dw,
                                Py_ssize_t count) noexcept nogil:
    # dw[9e:9e+9] += G^T dU_e G for the count <= FILTER_BLOCK filters dU_e = the sum over
    # the classes r (in order, in the arrays' precision) of dU[r*cstride + p*pstride + e]
    cdef double u[POINTS * FILTER_BLOCK]
    cdef double t[18 * FILTER_BLOCK]
    cdef double g[9 * FILTER_BLOCK]
    cdef Py_ssize_t e, k, p, r
    cdef floating s
    for p in range(POINTS):
        for e in range(count):
            s = dU[p * pstride + e]
            for r in range(1, classes):
                s = s + dU[r * cstride + p * pstride + e]
            u[p * FILTER_BLOCK + e] = s
    wino_filters_adjoint_d(u, t, g, FILTER_BLOCK, count)
    for e in range(count):
        for k in range(9):
            dw[9 * e + k] += <floating> g[k * FILTER_BLOCK + e]


def winograd_filter(const floating[:, :, :, ::1] w,    # IN  (M, Cg, 3, 3)
                    floating[:, :, ::1] U,             # OUT (36, M, Cg), or (36, C, Mg)
                    Py_ssize_t group=1, bint adjoint=False):
    """U[:, m, c] = G w[m, c] G^T, flattened row-major (point p = 6*row + column); computed
    in double precision. With ``adjoint``, the filters of the stride-1 adjoint instead (w
    rotated 180 degrees, input and output channels swapped per group): U[:, gi*Cg + c, m] =
    G rot(w[gi*Mg + m, c]) G^T."""
    cdef Py_ssize_t filters = w.shape[0] * w.shape[1]
    cdef Py_ssize_t mg = w.shape[0] // group
    cdef Py_ssize_t cg = w.shape[1]
    cdef Py_ssize_t e
    if filters == 0:
        return
    with nogil:
        for e in prange(0, filters, FILTER_BLOCK, schedule='static'):
            _filter_block(&w[0, 0, 0, 0], &U[0, 0, 0] + e, e, min(FILTER_BLOCK, filters - e),
                          filters, group, mg, cg, adjoint)


def winograd_filter_adjoint(const floating[:, :, ::1] dU,    # IN    (P, 36, M*Cg)
                            floating[:, :, :, ::1] dw):      # INOUT (M, Cg, 3, 3)
    """dw[m, c] += G^T (dU[0] + ... + dU[P-1])[:, m, c] G (the adjoint of winograd_filter, on
    the sum of winograd_backward_weight's P classes, added in order), in double precision."""
    cdef Py_ssize_t filters = dw.shape[0] * dw.shape[1]
    cdef Py_ssize_t e
    if filters == 0:
        return
    with nogil:
        for e in prange(0, filters, FILTER_BLOCK, schedule='static'):
            _filter_adjoint_block(&dU[0, 0, 0] + e, filters, dU.shape[0],
                                  dU.shape[1] * dU.shape[2], &dw[0, 0, 0, 0] + 9 * e,
                                  min(FILTER_BLOCK, filters - e))
