"""Every output-size formula in convnet, in one place.

Layers, CUDA wrappers, test references and the benchmark all call these; kernels receive the
sizes as arguments. Each function takes plain ints and returns ints; validation of the inputs
(positive kernel, non-negative pad, ...) happens in the layers, which know the parameter names.
"""

import numbers

import numpy as np

from convnet.errors import ConfigError, ShapeError, fail

#: the largest extent of one axis of any blob and the largest value of any size parameter
#: (kernel_size, stride, pad, dilation, output_padding, out_size, num_output, group, zoom and
#: shrink factors, heights and widths): with every term below 2**31, each product the kernels
#: form from them ((out - 1) * stride + dilation * (kernel - 1) + 1, H + 2 * pad, a window
#: area) stays far below 2**63
MAX_EXTENT = 2 ** 31 - 1
#: the most elements of one blob
MAX_ELEMENTS = 2 ** 40
#: the bound on every intermediate of a window's index maths (the kernels use 64-bit
#: Py_ssize_t; 2**62 leaves a factor of two for the sums they form from these)
MAX_INDEX = 2 ** 62

_BOUND_TEXT = {MAX_EXTENT: "2**31 - 1", MAX_ELEMENTS: "2**40", MAX_INDEX: "2**62"}


def bound_text(bound):
    """``2147483647 (2**31 - 1)`` for a bound the messages state."""
    name = _BOUND_TEXT.get(bound)
    return f"{bound} ({name})" if name else str(bound)


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def pair(value, param, owner=None, *, minimum=None, maximum=MAX_EXTENT):
    """Normalise ``value`` (an int or an (h, w) pair) to a tuple of two ints.

    ``param`` is the Caffe parameter name used in the error message; ``minimum`` (if given)
    is the smallest and ``maximum`` (default :data:`MAX_EXTENT`) the largest allowed value
    of each element.
    """
    if _is_int(value):
        out = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        out = (int(value[0]), int(value[1]))
    else:
        fail(owner, f"{param} must be an int or an (h, w) pair of ints, got {value!r:.80}",
             ConfigError)
    shown = out[0] if out[0] == out[1] else out
    if minimum is not None and min(out) < minimum:
        fail(owner, f"{param} must be >= {minimum}, got {shown}", ConfigError)
    if maximum is not None and max(out) > maximum:
        fail(owner, f"{param} must be <= {bound_text(maximum)}, got {shown}", ConfigError)
    return out


def size(value, param, owner=None, *, minimum=1, maximum=MAX_EXTENT):
    """Validate one int size parameter (num_output, group, a factor, a height) and return it:
    an int (not a bool, float or string) in [minimum, maximum]."""
    if not _is_int(value):
        fail(owner, f"{param} must be an int, got {value!r:.80}", ConfigError)
    value = int(value)
    if minimum is not None and value < minimum:
        fail(owner, f"{param} must be >= {minimum}, got {value}", ConfigError)
    if maximum is not None and value > maximum:
        fail(owner, f"{param} must be <= {bound_text(maximum)}, got {value}", ConfigError)
    return value


def shape(value, what, owner=None):
    """A shape as a tuple of non-negative ints, each at most :data:`MAX_EXTENT`. Python and
    NumPy ints only: a float (3.9), a bool, a string ("1344") or a nested sequence is a
    ShapeError naming ``what``, never truncated or read digit by digit."""
    # fast path, every forward: a tuple of plain ints in range (type checks, no ABCs)
    if type(value) is tuple and all(type(d) is int for d in value) and (
            not value or (min(value) >= 0 and max(value) <= MAX_EXTENT)):
        return value
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list, np.ndarray)) \
            or (isinstance(value, np.ndarray) and value.ndim != 1):
        fail(owner, f"{what} shape must be a tuple of ints, got {value!r:.80}", ShapeError)
    dims = []
    for d in value:
        if not _is_int(d):
            fail(owner, f"{what} shape must be a tuple of ints, got {tuple(value)!r:.80} "
                        f"({type(d).__name__} {d!r:.20})", ShapeError)
        dims.append(int(d))
    if any(d < 0 for d in dims):
        fail(owner, f"{what} shape {tuple(dims)} has a negative dimension", ShapeError)
    if any(d > MAX_EXTENT for d in dims):
        fail(owner, f"{what} shape {tuple(dims)} has an axis longer than "
                    f"{bound_text(MAX_EXTENT)}", ShapeError)
    return tuple(dims)


def check_window(owner, axis, size_, out, kernel, stride, pad, dilation=1):
    """Refuse a window geometry whose index maths could overflow the kernels' 64-bit ints:
    ``size + 2 * pad`` and ``(out - 1) * stride + dilation * (kernel - 1) + 1`` (the far end
    of the last window), for one axis, must be at most :data:`MAX_INDEX`. ``size`` is the
    input extent and ``out`` the output extent the windows run over (for a Deconvolution,
    the top and the bottom)."""
    padded = size_ + 2 * pad
    reach = (max(out, 1) - 1) * stride + dilation * (kernel - 1) + 1
    for name, value in (("input + 2 * pad", padded),
                        ("(out - 1) * stride + dilation * (kernel_size - 1) + 1", reach)):
        if value > MAX_INDEX:
            fail(owner, f"{axis}: {name} is {value}, more than {bound_text(MAX_INDEX)}: "
                        f"the kernels' 64-bit index maths would overflow", ShapeError)


def conv_out(size, kernel, stride, pad, dilation):
    """Convolution output length: floor((size + 2p - (d(k-1)+1)) / s) + 1 (may be <= 0)."""
    extent = dilation * (kernel - 1) + 1
    return (size + 2 * pad - extent) // stride + 1


def deconv_out(size, kernel, stride, pad, dilation, output_padding=0):
    """Deconvolution output length: s(size-1) + d(k-1) + 1 - 2p + output_padding."""
    return stride * (size - 1) + dilation * (kernel - 1) + 1 - 2 * pad + output_padding


def pool_out(size, kernel, stride, pad, ceil_mode=True):
    """Pooling output length.

    Ceil rule (Caffe's default): ceil((size + 2p - k) / s) + 1, minus one when the last window
    would start at or past size + p, so that no window lies wholly in the padding. Caffe applies
    that correction only when pad > 0; convnet (like PyTorch) applies it always.
    Floor rule: floor((size + 2p - k) / s) + 1.
    """
    span = size + 2 * pad - kernel
    if span < 0:
        return 0
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


def unpool_out(size, kernel, stride, pad):
    """Unpooling output length when no out_size is given: (size - 1)s - 2p + k."""
    return (size - 1) * stride - 2 * pad + kernel


def interp_out(height, width, *, zoom_factor=None, shrink_factor=None,
               out_height=None, out_width=None, pad_beg=0, pad_end=0):
    """DeepLab Interp output size (h, w), after cropping the input by pad_beg / pad_end (<= 0).

    - shrink only: (h_eff - 1) / s + 1
    - zoom only:   h_eff + (h_eff - 1)(z - 1)
    - both:        shrink first, then zoom
    - height + width given: those
    """
    h_eff = height + pad_beg + pad_end
    w_eff = width + pad_beg + pad_end
    if out_height is not None:
        return int(out_height), int(out_width)
    h, w = h_eff, w_eff
    if shrink_factor is not None:
        h = (h - 1) // shrink_factor + 1
        w = (w - 1) // shrink_factor + 1
    if zoom_factor is not None:
        h = h + (h - 1) * (zoom_factor - 1)
        w = w + (w - 1) * (zoom_factor - 1)
    return h, w


def interp_scale(in_size, out_size, align_corners=True):
    """Source-coordinate step of bilinear interpolation.

    align_corners=True (DeepLab, Caffe Interp): (in - 1) / (out - 1), 0 when out == 1.
    align_corners=False (PyTorch's default): in / out.
    """
    if align_corners:
        return (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    return in_size / out_size


def fits_int32(*dims):
    """True when every dimension fits a BLAS (32-bit) int."""
    return all(0 <= int(d) < 2 ** 31 for d in dims)


__all__ = ["MAX_EXTENT", "MAX_ELEMENTS", "MAX_INDEX", "bound_text", "pair", "size", "shape",
           "check_window", "conv_out", "deconv_out", "pool_out", "unpool_out", "interp_out",
           "interp_scale", "fits_int32"]


def lattice_tiles(out, residue, step, tile):
    """Tiles of ``tile`` outputs covering the lattice residue, residue + step, ... < out of one
    output axis (a dilated Winograd convolution tiles each of its step residues on its own)."""
    if residue >= out:
        return 0
    return -(-(-(-(out - residue) // step)) // tile)
