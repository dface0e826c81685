"""Every output-size formula in convnet, in one place.

Layers, CUDA wrappers, test references and the benchmark all call these; kernels receive the
sizes as arguments. Each function takes plain ints and returns ints; validation of the inputs
(positive kernel, non-negative pad, ...) happens in the layers, which know the parameter names.
"""

import numbers

from convnet.errors import ConfigError, fail


def pair(value, param, owner=None, *, minimum=None):
    """Normalise ``value`` (an int or an (h, w) pair) to a tuple of two ints.

    ``param`` is the Caffe parameter name used in the error message; ``minimum`` (if given)
    is the smallest allowed value of each element.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        out = (int(value), int(value))
    elif (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)):
        out = (int(value[0]), int(value[1]))
    else:
        fail(owner, f"{param} must be an int or an (h, w) pair of ints, got {value!r}",
             ConfigError)
    if minimum is not None and min(out) < minimum:
        shown = out[0] if out[0] == out[1] else out
        fail(owner, f"{param} must be >= {minimum}, got {shown}", ConfigError)
    return out


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


__all__ = ["pair", "conv_out", "deconv_out", "pool_out", "unpool_out", "interp_out",
           "interp_scale", "fits_int32"]


def lattice_tiles(out, residue, step, tile):
    """Tiles of ``tile`` outputs covering the lattice residue, residue + step, ... < out of one
    output axis (a dilated Winograd convolution tiles each of its step residues on its own)."""
    if residue >= out:
        return 0
    return -(-(-(-(out - residue) // step)) // tile)
