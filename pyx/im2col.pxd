# im2col / col2im for one NCHW image, shared as inline nogil helpers (`from im2col cimport ...`).
#
# Layout (Caffe's): for an image x of shape (C, H, W) and an output grid OH x OW,
#     col[(c*kh + i)*kw + j, oh*OW + ow] = x[c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]
# (0 outside the image), so col has shape (C*kh*kw, OH*OW) and group g's rows are the
# contiguous block [g*Cg*kh*kw, (g+1)*Cg*kh*kw). col2im is its adjoint: it zeroes the planes
# and adds every col entry back into the pixel it came from.
#
# Both work on a block of channels [c0, c1) (im2col also on output rows [oh0, oh1)): the
# block's col has rows ((c - c0)*kh + i)*kw + j and columns (oh - oh0)*OW + ow, row stride
# ld, so a block fits in cache and callers can split one image over threads (col2im writes
# only the planes of its own channels: no races between channel blocks). Sizes are validated in
# Python; OH and OW are arguments (a Deconvolution with output_padding has rows no input
# reaches), every index is bounds-checked against H and W here.

from cython cimport floating
from libc.string cimport memcpy, memset


cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    # ceil(a / b) for b > 0 and any sign of a (C division truncates toward zero)
    if a <= 0:
        return -((-a) // b)
    return (a + b - 1) // b


cdef inline void _valid_range(Py_ssize_t out, Py_ssize_t size, Py_ssize_t stride,
                              Py_ssize_t offset, Py_ssize_t* lo,
                              Py_ssize_t* hi) noexcept nogil:
    # outputs o in [lo, hi) read input o*stride + offset inside [0, size)
    cdef Py_ssize_t a = _ceil_div(-offset, stride)
    cdef Py_ssize_t b = _ceil_div(size - offset, stride)
    if a < 0:
        a = 0
    if b > out:
        b = out
    if b < a:
        b = a
    lo[0] = a
    hi[0] = b


cdef inline void im2col_channels(
        const floating* x,      # IN  (C, H, W) one image
        floating* col,          # OUT ((c1-c0)*kh*kw, ld) block, columns (oh1-oh0)*OW used
        Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t oh0, Py_ssize_t oh1, Py_ssize_t ld,
        Py_ssize_t H, Py_ssize_t W,
        Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
        Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
        Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    cdef Py_ssize_t c, i, j, oh, ow, ih, lo, hi, off
    cdef floating* dst
    cdef const floating* src
    for c in range(c0, c1):
        for i in range(kh):
            for j in range(kw):
                off = j * dw - pw
                _valid_range(OW, W, sw, off, &lo, &hi)
                dst = col + (((c - c0) * kh + i) * kw + j) * ld
                for oh in range(oh0, oh1):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= H or lo == hi:
                        memset(dst, 0, OW * sizeof(floating))
                    else:
                        # first valid input pixel of this row: lo*sw + off >= 0
                        src = x + (c * H + ih) * W + lo * sw + off
                        if lo > 0:
                            memset(dst, 0, lo * sizeof(floating))
                        if sw == 1:
                            memcpy(dst + lo, src, (hi - lo) * sizeof(floating))
                        elif sw == 2:
                            # a constant stride: GCC vectorises the gather (deinterleaves)
                            for ow in range(hi - lo):
                                dst[lo + ow] = src[2 * ow]
                        else:
                            for ow in range(hi - lo):
                                dst[lo + ow] = src[ow * sw]
                        if hi < OW:
                            memset(dst + hi, 0, (OW - hi) * sizeof(floating))
                    dst += OW


cdef inline void _add_strided(floating* row, const floating* src, Py_ssize_t a, Py_ssize_t b,
                              Py_ssize_t sw, Py_ssize_t off) noexcept nogil:
    # row[ow*sw + off] += src[ow] for ow in [a, b)
    cdef Py_ssize_t ow
    for ow in range(a, b):
        row[ow * sw + off] += src[ow]


cdef inline void _add_pair_s2(floating* row, const floating* s0, const floating* s1,
                              Py_ssize_t a, Py_ssize_t b, Py_ssize_t off) noexcept nogil:
    # row[2ow + off] += s0[ow] and row[2ow + off + 1] += s1[ow] for ow in [a, b): two taps
    # of a stride-2 row interleave into contiguous pixels, which GCC vectorises (one tap's
    # stride-2 scatter alone does not)
    cdef Py_ssize_t ow
    cdef floating* d = row + 2 * a + off
    for ow in range(b - a):
        d[2 * ow] += s0[a + ow]
        d[2 * ow + 1] += s1[a + ow]


cdef inline void col2im_channels(
        const floating* col,    # IN  ((c1-c0)*kh*kw, ld) block of all OH*OW columns
        floating* x,            # OUT (C, H, W) one image; planes [c0, c1) overwritten
        Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t ld, Py_ssize_t H, Py_ssize_t W,
        Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
        Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t dh, Py_ssize_t dw,
        Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    # Each pixel receives its taps in (i, j) order whichever loop adds them (a pair's two
    # taps reach different pixels), so the sums do not depend on the pairing.
    cdef Py_ssize_t c, i, j, oh, ow, ih, lo, hi, off, lo1, hi1, a, b
    cdef const floating* src
    cdef const floating* src1
    cdef floating* dst
    cdef floating* row
    for c in range(c0, c1):
        memset(x + c * H * W, 0, H * W * sizeof(floating))
        for i in range(kh):
            j = 0
            while j < kw:
                off = j * dw - pw
                _valid_range(OW, W, sw, off, &lo, &hi)
                src = col + (((c - c0) * kh + i) * kw + j) * ld
                if sw == 2 and dw == 1 and j + 1 < kw:
                    _valid_range(OW, W, sw, off + 1, &lo1, &hi1)
                    src1 = src + ld
                    a = lo if lo > lo1 else lo1
                    b = hi if hi < hi1 else hi1
                    for oh in range(OH):
                        ih = oh * sh - ph + i * dh
                        if ih >= 0 and ih < H:
                            row = x + (c * H + ih) * W
                            if b > a:
                                _add_strided(row, src, lo, a, 2, off)
                                _add_strided(row, src, b, hi, 2, off)
                                _add_strided(row, src1, lo1, a, 2, off + 1)
                                _add_strided(row, src1, b, hi1, 2, off + 1)
                                _add_pair_s2(row, src, src1, a, b, off)
                            else:
                                _add_strided(row, src, lo, hi, 2, off)
                                _add_strided(row, src1, lo1, hi1, 2, off + 1)
                        src += OW
                        src1 += OW
                    j += 2
                    continue
                if lo < hi:
                    for oh in range(OH):
                        ih = oh * sh - ph + i * dh
                        if ih >= 0 and ih < H:
                            dst = x + (c * H + ih) * W + lo * sw + off
                            if sw == 1:
                                for ow in range(hi - lo):
                                    dst[ow] += src[lo + ow]
                            else:
                                for ow in range(hi - lo):
                                    dst[ow * sw] += src[lo + ow]
                        src += OW
                j += 1
