"""Which algorithm a Convolution or Deconvolution runs: one ordered list that decides.

Each entry says when it applies (``None``, or the reason it does not) and when ``auto``
prefers it for a pass (forward, backward-data, backward-weight, in convolution roles); for
each pass the first preferred entry that applies wins, ``im2col`` always applies. A layer
asks once per setup (:func:`choose`, a :class:`Plan` of three names); forcing a name runs it
in every pass, and forcing one that does not apply to the layer's shape is a ConfigError that
says why.

The algorithms (kernels in ``pyx/``, dispatch in ``convnet.backend.cpu``):

- ``im2col``: im2col + one GEMM per group, gemm + col2im for the adjoint (pyx/conv.pyx).
- ``winograd``: F(4x4, 3x3) for 3x3 kernels at stride 1, any pad, dilation through d x d
  sub-lattices (pyx/winograd.pyx): forward, backward-data (the same forward with the filters
  rotated) and backward-weight; 36 GEMMs per work item instead of 144 multiplications per
  output. For a Deconvolution at stride 1 the roles swap as for im2col.
- ``direct``: any kernel at stride 1, no GEMM (pyx/direct.pyx): register-blocked loops (6
  output channels x 16 columns of accumulators) over a zero-padded copy of the input whose
  rows interleave the channels; backward-data is the same loop with the filters rotated;
  backward-weight keeps vectors of output channels x taps (16 channels x 6 taps) and runs
  over the pixels, with dy copied channels last. An unpadded 1x1 reads x itself (no copy).
- ``kn2row``: any kernel at stride 1 without an im2col buffer (pyx/kn2row.pyx): the input
  padded once, kh*kw GEMMs accumulating into the output computed over the padded width.
- ``subpixel``: Deconvolution with stride > 1 and dilation 1: its forward (a transposed
  convolution) runs as stride**2 stride-1 convolutions of the low-resolution input with the
  sub-kernels of each output phase (Shi et al. 2016), written straight into their pixels:
  no col2im scatter. Its backward passes are the strided convolution's own (im2col gathers).
- ``s2d``: any stride > 1 with dilation 1 (space-to-depth): phase (r, q) of the input becomes
  channel (c*sh + r)*sw + q of a copy z (pyx/conv.pyx ``space_to_depth``) and the filters
  ceil(kh/sh) x ceil(kw/sw) ones over those channels, so the strided convolution is a
  stride-1, unpadded one of z on the direct loops, no GEMM; backward-data is its adjoint,
  then ``depth_to_space`` (a gather: each input pixel is one entry of z); the weight
  gradient is the direct one on z, mapped back.

The ``auto`` rule, from measurements on the 2-core AVX2 machine (AMD EPYC, scipy's OpenBLAS
Haswell kernels), one thread, CPU time in ms, forward / backward-data / backward-weight,
im2col vs winograd (PyTorch 2.13 forward and full backward beside):

- N=8, 64->64, 64x64:        44.7/43.2/43.9 vs 20.0/20.3/23.9   (PyTorch 29.7, 91.4)
- N=8, 128->128, 32x32, d=2: 36.8/32.5/36.2 vs 23.7/26.7/27.6   (PyTorch 39.5, 64.9)
- N=16, 16->16, 64x64:       11.0/10.7/11.0 vs  6.7/ 8.0/ 8.0   (PyTorch  5.6, 10.6)
- N=8, 3->32, 128x128:        7.8/ 9.0/ 9.8 vs 10.5/20.7/12.9   (PyTorch 26.4, 19.2)
- N=1, 512->512, 28x28:      50.6 forward vs 40.1                (after the filter transform
  was blocked; 72.9 before)

so Winograd wins from about 8 channels per group on each side and loses below (the
transforms, not the GEMMs, dominate a 3-channel input). It also loses on small outputs: its
filter transforms (36 values written per filter: 9 ms for a 512x512 layer) and, in backward,
their two adjoints cost the same whatever the image, while the GEMM work they save grows
with the pixels. Forward + backward, one thread, CPU ms, im2col vs winograd:

- N=1, 512->512, 14x14:   38.2 vs 60.5      N=2, 512->512, 14x14: 76.2 vs 94.0
- N=1, 512->512, 20x20:   81.5 vs 76.2      N=1, 512->512, 24x24: 120.5 vs 92.7
- N=1, 512->512, 28x28:  140.4 vs 118.8     N=4, 512->512, 14x14: 143.5 vs 153.3
- N=1, 256->256, 20x20:   20.3 vs 28.6      N=1, 256->256, 28x28:  44.8 vs 45.5
- N=1, 128->128, 28x28:   12.9 vs 14.6      N=1, 128->128, 56x56:  39.9 vs 24.9
- N=16, 64->64, 8x8:       5.1 vs 5.2       N=8, 64->64, 16x16:     8.1 vs 6.2
- N=16, 16->32, 32x32:    11.8 vs 10.9      N=1, 64->64, 56x56:    12.2 vs 8.3

so ``auto`` picks Winograd for 3x3 stride-1 layers with at least ``WINOGRAD_MIN_CHANNELS``
input and output channels per group and at least ``WINOGRAD_MIN_PIXELS`` output pixels in
the batch (``WINOGRAD_MIN_PIXELS_WIDE`` from ``WINOGRAD_WIDE_CHANNELS`` channels per group).

Sub-pixel against im2col (gemm + col2im) for strided Deconvolutions, 2 threads, wall ms,
forward / backward, the machine otherwise idle (``algorithm=`` forced):

- N=8, 64->32, 32x32, k4 s2 p1:   im2col 8.38 / 16.14   subpixel 13.81 / 17.39
- N=8, 21->21, 16x16, k16 s8 p4:  im2col 16.19 / 29.55  subpixel 30.08 / 25.22
- N=16, 32->16, 32x32, k2 s2:     im2col 1.47 / 4.87    subpixel 3.48 / 3.50
- N=8, 64->64, 32x32, k3 s2 p1:   im2col 7.90 / 19.05   subpixel 12.26 / 17.91

The phases' stride-1 convolutions have a K of C_in * ceil(k/s)^2 (a quarter of im2col's for
s = 2) and their results are interleaved by a strided NumPy copy; together they cost more
than col2im's scatter here, so ``auto`` keeps im2col and sub-pixel is a choice.
(The backward differences come from the same im2col kernels timed apart.)

Space-to-depth against im2col, 2 threads, wall ms (median of 14, alternated, 2026-12-01
21:30 UTC), forward / backward (``algorithm=`` forced; a forced s2d runs every pass):

- Deconvolution N=8, 21->21, 16x16, k16 s8 p4:   im2col 14.8 / 33.5   s2d 19.5 / 27.9
- Deconvolution N=8, 16->16, 32x32, k8 s4 p2:    im2col  9.9 / 26.8   s2d 10.7 / 20.4
- Deconvolution N=8, 16->16, 32x32, k4 s2 p1:    im2col  2.65 / 5.97  s2d  3.49 / 3.83
- Deconvolution N=8, 32->32, 32x32, k4 s2 p1:    im2col  4.80 / 13.5  s2d  6.87 / 10.6
- Deconvolution N=16, 5->5, 8x8, k16 s8 p4:      im2col  1.46 / 6.70  s2d  2.13 / 4.87
- Deconvolution N=8, 64->32 / 64->64, 32x32, k4 s2 p1, backward: 13.7 / 25.7 vs 13.4 / 25.9;
  N=8, 128->64, 16x16: 11.5 vs 16.8
- Convolution N=8, 16->32, 64x64, k2 s2:         im2col  2.30 / 4.87  s2d  2.77 / 5.45
- Convolution N=8, 3->32, 128x128, k4 s4:        im2col  1.69 / 3.77  s2d  1.89 / 4.23
- Convolution N=8, 16->32, 64x64, k3 s2 p1:      im2col  2.95 / 7.48  s2d  4.90 / 11.3

A Deconvolution's backward is a strided convolution of its top (many pixels) into its
bottom (few), where the im2col GEMM has a thin M (its bottom's channels) and N (its bottom's
pixels) and long columns that its two GEMMs each pack; the direct loops run its K whole in
registers. So ``auto`` picks s2d for a Deconvolution's backward (conv roles: forward and
weight gradient) when its kernel is a multiple of its stride (no zero taps: a 3x3 at stride
2 would run 16 taps for 9) and its bottom has at most ``S2D_MAX_OUTPUTS`` channels per group;
its forward (the phases written back through depth_to_space, s**2 times the channels) and
strided Convolutions, where im2col's GEMM is already wide, stay on im2col.

The direct loops against Winograd and im2col, each pass apart (convnet.backend.cpu with
``algorithm=`` forced), 3x3 pad 1, 2 threads, wall ms (median of 9), forward /
backward-data / backward-weight, direct vs Winograd vs im2col (2026-12-01, 18:58 UTC; the
host ran about 1.3x slower than in earlier tables here, so compare within a row):

- N=16, 16->16, 64x64:    3.02/2.84/3.74 vs 5.39/5.06/6.14 vs 9.72/7.30/10.2
- N=8, 3->32, 128x128:    3.27/5.60/3.43 vs 6.96/12.8/8.92 vs 5.26/5.87/6.31
- N=16, 3->16, 64x64:     0.90/1.09/1.04 vs 2.26/4.91/2.93 vs 1.77/1.74/2.18
- N=16, 16->32, 32x32:    1.94/3.07/2.41 vs 2.74/4.00/3.03 vs 4.98/3.50/3.87
- N=16, 32->16, 32x32:    1.91/2.05/2.63 vs 2.64/2.87/3.62 vs 5.74/3.56/5.29
- N=16, 32->64, 16x16:    1.54/2.84/1.99 vs 2.59/2.27/2.05 vs 2.23/2.20/2.26
- N=16, 64->32, 16x16:    1.66/1.32/1.72 vs 2.23/2.42/3.84 vs 5.22/2.78/4.62
- N=16, 64->64, 8x8:      1.61/1.52/2.35 vs 2.02/2.35/2.55 vs 1.81/2.02/2.00
- N=8, 64->64, 64x64:     19.5/18.7/26.9 vs 17.5/14.7/15.0 vs 33.5/32.6/33.4
- N=8, 128->128, 32x32:   16.9/17.1/32.7 vs 14.6/12.6/14.0 vs 25.2/25.6/25.5
- N=16, 16->5, 64x64:     1.76/1.17/3.97 vs 4.38/3.03/3.99 vs 11.1/5.49/12.1
- N=8, 32->3, 128x128:    5.31/2.35/11.4 vs 16.1/7.47/12.9 vs 33.5/23.2/28.4

Other kernels, direct vs im2col, same units (Winograd does not apply; 1x1 without padding):

- N=16, 16->16, 64x64, 5x5:   7.86/7.63/9.68 vs 36.9/18.8/29.2
- N=16, 32->32, 32x32, 5x5:   7.95/8.12/9.70 vs 14.7/14.2/17.0
- N=8, 16->16, 64x64, 7x7:    8.55/7.04/7.63 vs 22.7/17.6/26.7
- N=8, 32->32, 64x64, 1x5:    4.38/4.31/4.71 vs 6.24/6.56/9.07
- N=8, 16->16, 64x64, 2x2:    1.81/1.76/1.35 vs 2.23/1.63/2.12
- N=8, 64->64, 32x32, 5x5:    14.7/17.0/19.7 vs 22.9/23.3/20.6
- N=16, 16->5, 64x64, 1x1:    0.32/0.33/1.02 vs 1.48/0.47/0.89
- N=16, 32->32, 32x32, 1x1:   0.62/0.72/0.68 vs 0.71/0.69/1.15
- N=16, 64->64, 16x16, 1x1:   0.48/0.62/1.44 vs 0.73/0.61/1.13
- N=8, 64->32, 64x64, 1x1:    2.76/2.71/3.06 vs 2.36/2.47/2.65
- N=8, 256->64, 32x32, 1x1:   5.65/3.58/2.91 vs 3.83/2.82/3.54

First layers (an RGB image in), 3x3 pad 1, same units, direct vs im2col (2026-12-02,
01:37 UTC, the machine otherwise idle):

- N=1, 3->64, 224x224:    1.34/2.92/2.88 vs 4.36/5.43/5.23
- N=2, 3->64, 224x224:    2.81/6.07/4.40 vs 5.06/5.14/5.29
- N=8, 3->64, 128x128:    3.85/8.69/7.04 vs 7.13/6.95/5.98
- N=8, 4->64, 64x64:      1.81/1.89/1.84 vs 2.27/2.44/2.03
- N=4, 3->128, 112x112:   4.06/7.84/6.46 vs 3.70/5.77/5.28

so from ``DIRECT_NARROW_INPUTS`` input channels down, forward and weight gradient run
direct up to ``DIRECT_NARROW_MAX_OUTPUTS`` outputs (im2col's K is 27 for an RGB 3x3; at 128
outputs its GEMM is wide enough again), and backward-data (a convolution into the 3 image
channels) stays on im2col.

The weight gradient's loop over pixels (vectors of output channels, one broadcast per tap)
replaced a loop along the rows (4 channels x 3 taps, vectors of columns) that ran 3.84 /
2.45 / 3.89 ms on the first, fourth and sixth rows above in an earlier table and lost to
Winograd below 48 columns. So ``auto`` picks the direct loops, in every pass, for any filter
with at most ``DIRECT_MAX_CHANNELS`` channels per group on both sides (for 3x3 filters
``DIRECT_MAX_CHANNELS_SMALL`` on outputs of at most ``DIRECT_SMALL_OUTPUT`` pixels per
image; a 1x1 only without padding, where it reads x itself), except a backward-data that
writes fewer than ``DIRECT_MIN_OUTPUTS`` channels (3 leave its register block half empty).
Beyond that the GEMMs of Winograd and im2col win: they do 4x fewer multiplications
(Winograd) or run at sgemm's rate (a wide 1x1 is one GEMM of the image itself). The three
passes of a layer may differ (``algorithm_used`` then names all three).

kn2row against im2col, same machine and units (PyTorch forward / backward beside):

- N=8, 32->32, 64x64, 5x5:   40.3/40.1/42.2 vs 45.3/38.8/52.2   (PyTorch 18.7, 72.2)
- N=8, 64->64, 32x32, 7x7:   60.0/55.5/58.1 vs 63.5/62.7/73.0   (PyTorch 34.8, 80.5)
- N=8, 64->64, 64x64, 1x5:   23.4/20.7/24.9 vs 24.3/24.6/28.1   (PyTorch 18.1, 60.2)
- N=8, 16->16, 64x64, 5x5:   14.9/11.4/15.2 vs 15.0/14.7/15.6   (PyTorch  6.3, 11.4)

With scipy's OpenBLAS (Haswell kernels) the K = C GEMMs of kn2row run slower than im2col's
K = C*kh*kw ones by about what im2col's copy costs, so on this machine ``auto`` never picks
kn2row; it stays a choice (``algorithm="kn2row"``) that needs no k*k-times buffer.
"""

from collections import namedtuple

from convnet.errors import ConfigError, fail

#: the passes of a convolution, each with its own algorithm (a Deconvolution's forward is
#: the convolution's backward-data, its backward-data the convolution's forward)
PASSES = ("forward", "backward_data", "backward_weight")


class Plan(namedtuple("Plan", PASSES)):
    """The algorithm of each pass of a layer, in convolution roles."""

    @classmethod
    def single(cls, name):
        return cls(name, name, name)

#: the fewest channels per group (input and output) for which ``auto`` picks Winograd
WINOGRAD_MIN_CHANNELS = 8
#: the fewest output pixels in the batch (conv roles: a Deconvolution's bottom) for which
#: ``auto`` picks Winograd: its filter transforms cost as much per filter as about 600
#: multiply-adds of GEMM, which small outputs do not repay; wide layers repay them sooner
WINOGRAD_MIN_PIXELS = 1024
WINOGRAD_MIN_PIXELS_WIDE = 400
#: channels per group (input and output) from which a layer counts as wide
WINOGRAD_WIDE_CHANNELS = 384

#: the most channels per group (input and output) for which ``auto`` picks the direct
#: loops: from 64 channels on either side the GEMMs of Winograd and im2col run faster, except
#: in the forward and backward-data of small images (at most DIRECT_SMALL_OUTPUT output
#: pixels per image), where up to DIRECT_MAX_CHANNELS_SMALL the transforms of Winograd cost
#: more than the loops
DIRECT_MAX_CHANNELS_SMALL = 64
DIRECT_SMALL_OUTPUT = 16 * 16
DIRECT_MAX_CHANNELS = 32
#: a layer with at most DIRECT_NARROW_INPUTS input channels per group (conv roles: an RGB
#: or RGBA image) runs its forward and weight gradient on the direct loops up to
#: DIRECT_NARROW_MAX_OUTPUTS output channels: there im2col's GEMM has a K of a few dozen
DIRECT_NARROW_INPUTS = 4
DIRECT_NARROW_MAX_OUTPUTS = 64
#: the fewest output channels of a backward-data pass for direct: 3 channels keep only 3 of
#: its 6-channel register block busy (im2col's gemm + col2im was faster)
DIRECT_MIN_OUTPUTS = 4

#: the most channels per group of a Deconvolution's bottom (conv roles: the strided
#: convolution's outputs) for which ``auto`` runs its backward on space-to-depth
S2D_MAX_OUTPUTS = 32

NAMES = ("auto", "im2col", "winograd", "direct", "kn2row", "subpixel", "s2d")


def _im2col(layer, shape):
    return None


def _winograd(layer, shape):
    if tuple(layer.kernel_size) != (3, 3):
        return f"it needs a 3x3 kernel, got kernel_size {_pair(layer.kernel_size)}"
    if tuple(layer.stride) != (1, 1):
        return f"it needs stride 1, got stride {_pair(layer.stride)}"
    return None


#: the most elements of kn2row's zero-padded copy of one image
KN2ROW_MAX_PADDED = 2 ** 31


def _kn2row(layer, shape):
    if tuple(layer.stride) != (1, 1):
        return f"it needs stride 1, got stride {_pair(layer.stride)}"
    # the padded copy of one image (the layer's conv input: a Deconvolution's top)
    padded = int(shape[1]) if layer.type_name == "Convolution" else int(layer.num_output)
    for axis in range(2):
        size = int(shape[2 + axis])
        if layer.type_name == "Deconvolution":
            size = size + layer.dilation[axis] * (layer.kernel_size[axis] - 1)
        padded *= size + 2 * layer.pad[axis] + layer.dilation[axis] * layer.kernel_size[axis]
    if padded > KN2ROW_MAX_PADDED:
        return (f"its zero-padded copy of one image would hold {padded} values, more than "
                f"{KN2ROW_MAX_PADDED} (2**31)")
    return None


#: the most values of the direct loops' band of zero-padded input rows (one per thread)
DIRECT_MAX_BAND = 2 ** 31
#: output rows of the direct forward's task (pyx/direct.pyx ROW_CHUNK), for the band's size
_DIRECT_TASK_ROWS = 8


def _band_too_large(rows, channels, width, what):
    """Why the direct loops' band (a task's input rows of every channel, a vector step past
    the row) cannot be held, or None."""
    band = (_DIRECT_TASK_ROWS + rows - 1) * channels * (width + 32)
    if band > DIRECT_MAX_BAND:
        return (f"its band of {what} rows would hold {band} values, more than "
                f"{DIRECT_MAX_BAND} (2**31)")
    return None


def _direct(layer, shape):
    if tuple(layer.stride) != (1, 1):
        return f"it needs stride 1, got stride {_pair(layer.stride)}"
    # rows as wide as the widest side (its passes read both: the layer's bottom and top)
    # plus the kernel
    kh, kw = layer.kernel_size
    dh, dw = layer.dilation
    return _band_too_large(dh * (kh - 1) + 1, max(int(shape[1]), int(layer.num_output)),
                           int(shape[3]) + 2 * layer.pad[1] + dw * (kw - 1),
                           "zero-padded input")


def _direct_preferred(layer, shape, conv_pass):
    three = tuple(layer.kernel_size) == (3, 3)
    pointwise = layer.kernel_size[0] * layer.kernel_size[1] == 1
    if pointwise and tuple(layer.pad) != (0, 0):
        return False            # a padded 1x1 would copy bands where im2col copies nothing
    conv_in, conv_out = int(shape[1]), int(layer.num_output)
    out = [int(shape[2]), int(shape[3])]
    if layer.type_name == "Deconvolution":   # conv roles: its top is the conv input
        conv_in, conv_out = conv_out, conv_in
    else:                                    # stride 1: the conv output
        out = [out[a] + 2 * layer.pad[a] - layer.dilation[a] * (layer.kernel_size[a] - 1)
               for a in range(2)]
    channels = max(conv_in, conv_out) // layer.group
    small = three and out[0] * out[1] <= DIRECT_SMALL_OUTPUT
    # a first layer (an RGB image): im2col's GEMM has a K of only conv_in * kh * kw
    narrow = (conv_pass != "backward_data" and conv_in // layer.group <= DIRECT_NARROW_INPUTS
              and conv_out // layer.group <= DIRECT_NARROW_MAX_OUTPUTS)
    if not narrow and channels > (DIRECT_MAX_CHANNELS_SMALL if small else DIRECT_MAX_CHANNELS):
        return False
    # a backward-data is a conv of conv_out channels into conv_in
    return conv_pass != "backward_data" or conv_in // layer.group >= DIRECT_MIN_OUTPUTS


def _never(layer, shape, conv_pass):
    return False


def _winograd_preferred(layer, shape, conv_pass):
    channels = min(shape[1], layer.num_output) // layer.group
    if channels < WINOGRAD_MIN_CHANNELS:
        return False
    pixels = int(shape[0])
    for axis in range(2):
        size = int(shape[2 + axis])
        if layer.type_name == "Convolution":       # stride 1: the conv output
            size = size + 2 * layer.pad[axis] - 2 * layer.dilation[axis]
        pixels *= max(size, 0)
    wide = channels >= WINOGRAD_WIDE_CHANNELS
    return pixels >= (WINOGRAD_MIN_PIXELS_WIDE if wide else WINOGRAD_MIN_PIXELS)


def _phases(layer, stride_one):
    """Why a phase decomposition (stride > 1, dilation 1) does not apply, or None."""
    if max(layer.stride) == 1:
        return f"it needs stride > 1 ({stride_one})"
    if tuple(layer.dilation) != (1, 1):
        return f"it needs dilation 1, got dilation {_pair(layer.dilation)}"
    return None


def _subpixel(layer, shape):
    if layer.type_name != "Deconvolution":
        return "it is the strided Deconvolution's forward (a Convolution has no scatter)"
    return _phases(layer, "at stride 1 there is one phase")


def _s2d(layer, shape):
    why = _phases(layer, "at stride 1 it is the direct loops")
    if why is not None:
        return why
    # the direct loops' band over the space-to-depth input (conv roles: a Deconvolution's
    # top), whose rows are at most as wide as the layer's widest side
    sh, sw = layer.stride
    conv_in = int(shape[1]) if layer.type_name == "Convolution" else int(layer.num_output)
    return _band_too_large(-(-layer.kernel_size[0] // sh),
                           max(conv_in * sh * sw, int(layer.num_output), int(shape[1])),
                           int(shape[3]) * sw + -(-layer.kernel_size[1] // sw),
                           "space-to-depth input")


def _s2d_preferred(layer, shape, conv_pass):
    # a kernel that is not a multiple of the stride pads the filters with zero taps (a 3x3 at
    # stride 2 runs 16 taps for 9); conv roles: the strided convolution's outputs are the
    # direct loops' register block, and its backward-data writes stride**2 times the inputs
    if layer.type_name != "Deconvolution" or any(
            k % s for k, s in zip(layer.kernel_size, layer.stride)):
        return False
    # conv roles: the Deconvolution's bottom is the strided convolution's output
    if int(shape[1]) // layer.group > S2D_MAX_OUTPUTS:
        return False
    return conv_pass in ("forward", "backward_weight")


def _always(layer, shape, conv_pass):
    return True


#: (name, why it does not apply or None, whether auto prefers it), in the order auto tries
ALGORITHMS = (
    ("direct", _direct, _direct_preferred),
    ("s2d", _s2d, _s2d_preferred),
    ("winograd", _winograd, _winograd_preferred),
    ("subpixel", _subpixel, _never),
    ("kn2row", _kn2row, _never),
    ("im2col", _im2col, _always),
)


def _pair(p):
    return str(p[0]) if p[0] == p[1] else f"({p[0]}, {p[1]})"


def check_name(value, owner):
    """Validate the ``algorithm`` parameter (in __init__, before any shape is known)."""
    if not isinstance(value, str) or value.lower() not in NAMES:
        fail(owner, f"algorithm must be one of {', '.join(repr(n) for n in NAMES)}, "
                    f"got {value!r}", ConfigError)
    return value.lower()


def choose(layer, shape, device):
    """The :class:`Plan` ``layer`` (a Convolution or Deconvolution with validated
    parameters) runs for bottom ``shape`` on ``device``: its ``algorithm`` parameter for
    every pass when forced (a ConfigError naming the reason when it does not apply), else for
    each pass the first entry of ALGORITHMS that applies and that auto prefers for that pass.
    The CUDA backend runs im2col only."""
    requested = layer.algorithm
    if device != "cpu":
        if requested not in ("auto", "im2col"):
            fail(layer, f"algorithm {requested!r} runs on the CPU only; on {device} use "
                        f"'auto' or 'im2col'", ConfigError)
        return Plan.single("im2col")
    if requested != "auto":
        for name, reason, _ in ALGORITHMS:
            if requested == name:
                why = reason(layer, shape)
                if why is not None:
                    fail(layer, f"algorithm {name!r} does not apply: {why}", ConfigError)
        return Plan.single(requested)
    applicable = [(name, preferred) for name, reason, preferred in ALGORITHMS
                  if reason(layer, shape) is None]
    return Plan(*(next(name for name, preferred in applicable
                       if preferred(layer, shape, conv_pass)) for conv_pass in PASSES))


def describe(layer, plan):
    """``algorithm_used``: the plan's one name, or the layer's forward, backward-data and
    backward-weight algorithms joined by "/" (a Deconvolution's forward is the
    convolution's backward-data)."""
    passes = (plan.forward, plan.backward_data, plan.backward_weight)
    if layer.type_name == "Deconvolution":
        passes = (plan.backward_data, plan.forward, plan.backward_weight)
    return passes[0] if len(set(passes)) == 1 else "/".join(passes)
