"""The CPU backend: the only module that imports the compiled ``convnet._cpu`` kernels.

Functions here take validated, C-contiguous NumPy arrays (float32 or float64 unless named
otherwise) and preallocated outputs; the CUDA backend (``convnet.backend.cuda``) has the same
names with DeviceArrays. Thread policy: OpenMP loops in the kernels, BLAS for the gemms;
:func:`set_num_threads` sets both.
"""

import os
import threading

import numpy as np

from convnet._cpu import _threads

name = "cpu"


# ---------------------------------------------------------------- arrays and threads

def empty(shape, dtype):
    return np.empty(shape, dtype=dtype)


def zeros(shape, dtype):
    return np.zeros(shape, dtype=dtype)


def asarray(x, dtype=None):
    """A C-contiguous NumPy array of ``dtype`` (no copy when ``x`` already is one)."""
    if getattr(x, "__cuda_array_interface__", None) is not None:
        from convnet.errors import DeviceError
        raise DeviceError("a CUDA array was passed where a CPU array was expected; "
                          "call .get() or move the layer with .to('cuda')")
    out = np.ascontiguousarray(x, dtype=dtype)
    if out.ndim != np.ndim(x):
        out = out.reshape(())      # ascontiguousarray makes a 0-d input 1-d
    return out


def to_numpy(x):
    return np.asarray(x)


def openmp_enabled():
    return _threads.openmp_enabled()


_blas_controller = None


def _blas():
    global _blas_controller
    if _blas_controller is None:
        import scipy.linalg.cython_blas  # noqa: F401  (load the BLAS the kernels call first)
        from threadpoolctl import ThreadpoolController
        _blas_controller = ThreadpoolController()
    return _blas_controller


#: the most threads set_num_threads accepts: 4 per core (more only adds stacks and contention)
MAX_THREADS = 4 * (os.cpu_count() or 1)

# OpenMP's thread count is per calling thread (omp_set_num_threads sets the calling thread's
# nthreads-var only): set_num_threads records the count and a generation number, and every
# Python thread applies it before its next kernel (sync_threads, called by each layer call)
_wanted_threads = None
_generation = 0
_applied = threading.local()
_lock = threading.Lock()


def set_num_threads(n):
    """Use ``n`` threads for OpenMP loops and for BLAS (never both at once in one kernel),
    in every Python thread that runs kernels."""
    global _wanted_threads, _generation
    with _lock:
        _wanted_threads = int(n)
        _generation += 1
        _blas().limit(limits=int(n), user_api="blas")
    sync_threads()


if _threads.get_max_threads() > MAX_THREADS:
    # OMP_NUM_THREADS past the maximum: every kernel thread holds to the maximum instead
    _wanted_threads = MAX_THREADS
    _generation = 1


def sync_threads():
    """Apply the last set_num_threads to the calling thread's OpenMP runtime (cheap when
    already applied)."""
    if _wanted_threads is not None and getattr(_applied, "generation", None) != _generation:
        _threads.set_num_threads(_wanted_threads)
        _applied.generation = _generation


def get_num_threads():
    sync_threads()
    return _threads.get_max_threads()


def blas_threads(n):
    """Context manager holding BLAS to ``n`` threads (e.g. 1 inside an OpenMP prange)."""
    return _blas().limit(limits=int(n), user_api="blas")


# ---- activation
# ReLU and Dropout are memory-bound element-wise passes; NumPy ufuncs with out= run them near
# memory speed, so there is no compiled module for them. Measured on 8x64x64x64 float32 (2
# cores): ReLU forward / backward 1.6 / 1.6 ms, leaky (slope 0.1) 1.6 / 6 ms, Dropout 11 / 1.4
# ms (the forward is mostly the random draw); PyTorch CPU's relu took 20 ms in the same run.

def activation_relu_forward(x, negative_slope, y):
    """y = max(x, 0) + negative_slope * min(x, 0). x, y: same shape; y may be x (in place)."""
    if negative_slope == 0.0:
        np.maximum(x, 0, out=y)
        return
    # max(x, slope*x) for slope <= 1, min for slope > 1: branch-free (masked ufuncs are
    # several times slower on random signs)
    scaled = np.multiply(x, negative_slope, out=None if y is x else y)
    (np.maximum if negative_slope <= 1.0 else np.minimum)(x, scaled, out=y)


def activation_relu_backward(dy, x, negative_slope, dx):
    """dx = dy where x > 0, negative_slope * dy elsewhere. ``x`` is the bottom, or the top
    when negative_slope >= 0 (same sign). dx may be dy (in place)."""
    if negative_slope == 0.0:
        np.multiply(dy, x > 0, out=dx)
        return
    # Caffe's factor (x > 0) + slope * (x <= 0) is exactly 1 or slope
    factor = np.multiply(x <= 0, negative_slope, dtype=dx.dtype)
    factor += x > 0
    np.multiply(dy, factor, out=dx)


def activation_dropout_forward(x, keep, scale, y):
    """y = x * scale where keep, else 0. keep: bool array of x's shape; y may be x."""
    np.multiply(x, keep, out=y)
    y *= scale


def activation_dropout_backward(dy, keep, scale, dx):
    """dx = dy * scale where keep, else 0; dx may be dy."""
    np.multiply(dy, keep, out=dx)
    dx *= scale


# ---- normalization
# Batch-norm arrays are viewed as (N, C, S) (S = H*W, or 1 for (N, C) bottoms); per-channel
# vectors have shape (C,). Sums run over the contiguous axis first (pairwise summation) so
# float32 statistics stay accurate on large planes.

def _channel_sum(a):
    return a.sum(axis=2).sum(axis=0)


def normalization_batch_norm_stats(x, mean, var):
    """OUT mean (C,) and biased var (C,) of x (N, C, S) over the N and S axes."""
    count = x.shape[0] * x.shape[2]
    mean[...] = _channel_sum(x) / count
    centered = x - mean[:, None]
    np.square(centered, out=centered)
    var[...] = _channel_sum(centered) / count


def normalization_batch_norm_update(running_mean, running_var, mean, var, fraction,
                                    var_correction):
    """INOUT running_* (C,): running = fraction * running + (1 - fraction) * batch, with the
    batch variance multiplied by var_correction (m / (m - 1), the unbiased estimate)."""
    running_mean *= fraction
    running_mean += (1.0 - fraction) * mean
    running_var *= fraction
    running_var += ((1.0 - fraction) * var_correction) * var


def _bn_inv_std(var, eps):
    return 1.0 / np.sqrt(var + eps)


def normalization_batch_norm_forward(x, mean, var, eps, scale, bias, y):
    """y = (x - mean) / sqrt(var + eps) * scale + bias per channel. x, y: (N, C, S); mean,
    var, scale, bias: (C,); scale and bias may be None (no affine)."""
    a = _bn_inv_std(var, eps)
    if scale is not None:
        a = a * scale
    b = -mean * a
    if bias is not None:
        b = b + bias
    np.multiply(x, a[:, None], out=y)
    y += b[:, None]


def normalization_batch_norm_backward(dy, x, mean, var, eps, scale, dx, dscale, dbias,
                                      batch_stats):
    """Gradients of normalization_batch_norm_forward. dy, x, dx: (N, C, S); the rest (C,).

    ADDS sum(dy * xhat) into dscale and sum(dy) into dbias (either may be None). Writes dx
    (may be None): with batch_stats, through the batch mean and variance,
    dx = scale * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat)); otherwise (fixed
    statistics) dx = scale * inv_std * dy.
    """
    inv_std = _bn_inv_std(var, eps)
    gain = inv_std if scale is None else inv_std * scale
    need_sums = dscale is not None or dbias is not None or (dx is not None and batch_stats)
    if not need_sums:
        if dx is not None:
            np.multiply(dy, gain[:, None], out=dx)
        return
    count = x.shape[0] * x.shape[2]
    xhat = x - mean[:, None]
    xhat *= inv_std[:, None]
    sum_dy = _channel_sum(dy)
    prod = dy * xhat
    sum_dy_xhat = _channel_sum(prod)
    del prod
    if dscale is not None:
        dscale += sum_dy_xhat
    if dbias is not None:
        dbias += sum_dy
    if dx is None:
        return
    if not batch_stats:
        np.multiply(dy, gain[:, None], out=dx)
        return
    xhat *= (sum_dy_xhat / count)[:, None]
    np.subtract(dy, xhat, out=dx)
    dx -= (sum_dy / count)[:, None]
    dx *= gain[:, None]


# ---- structure
# Crop, Concat and Eltwise move or combine whole blocks; NumPy slicing and ufuncs with out=
# are already at memory speed.

def structure_crop_forward(x, offsets, y):
    """y = x[o0:o0+Y0, o1:o1+Y1, ...]; offsets: one int per axis of x."""
    y[...] = x[tuple(slice(o, o + n) for o, n in zip(offsets, y.shape))]


def structure_crop_backward(dy, offsets, dx):
    """OUT dx (x's shape): zeros with dy placed at offsets (the adjoint of the crop)."""
    dx[...] = 0
    dx[tuple(slice(o, o + n) for o, n in zip(offsets, dy.shape))] = dy


def structure_concat_forward(xs, axis, y):
    """y = concatenation of the arrays xs along axis (y preallocated)."""
    np.concatenate(xs, axis=axis, out=y)


def structure_concat_backward(dy, axis, sizes, dxs):
    """OUT dxs[i] (bottom i's shape, or None to skip it): the slice of dy along axis that
    bottom i filled; sizes[i] is bottom i's extent along axis."""
    start = 0
    index = [slice(None)] * dy.ndim
    for size, dx in zip(sizes, dxs):
        if dx is not None:
            index[axis] = slice(start, start + size)
            dx[...] = dy[tuple(index)]
        start += size


def structure_eltwise_sum(xs, coeffs, y):
    """y = sum_i coeffs[i] * xs[i] (all of y's shape)."""
    np.multiply(xs[0], coeffs[0], out=y)
    for x, c in zip(xs[1:], coeffs[1:]):
        if c == 1.0:
            y += x
        else:
            y += c * x


def structure_eltwise_sum_backward(dy, coeff, dx):
    """dx = coeff * dy."""
    np.multiply(dy, coeff, out=dx)


def structure_eltwise_prod(xs, y):
    """y = prod_i xs[i]."""
    np.multiply(xs[0], xs[1], out=y)
    for x in xs[2:]:
        y *= x


def structure_eltwise_prod_backward(dy, xs, dxs):
    """OUT dxs[i] = dy * prod_{j != i} xs[j] (None entries skipped), from prefix and suffix
    products: no division, so zeros in the inputs give exact gradients."""
    k = len(xs)
    suffix = [None] * k          # suffix[i] = prod_{j > i} xs[j]
    running = None
    for i in range(k - 1, 0, -1):
        running = xs[i] if running is None else running * xs[i]
        suffix[i - 1] = running
    prefix = None                # prod_{j < i} xs[j]
    for i, dx in enumerate(dxs):
        if dx is not None:
            factors = [f for f in (prefix, suffix[i]) if f is not None]
            np.multiply(dy, factors[0], out=dx)
            if len(factors) == 2:
                dx *= factors[1]
        if i < k - 1:
            prefix = xs[i] if prefix is None else prefix * xs[i]


def structure_eltwise_max(xs, y, argmax):
    """y = max_i xs[i]; OUT argmax (int32, y's shape): the index of the first bottom that
    holds the maximum (ties go to the lowest index)."""
    np.copyto(y, xs[0])
    argmax[...] = 0
    greater = np.empty(y.shape, dtype=bool)
    for i, x in enumerate(xs[1:], start=1):
        np.greater(x, y, out=greater)
        np.copyto(y, x, where=greater)
        np.copyto(argmax, i, where=greater)


def structure_eltwise_max_backward(dy, argmax, index, dx):
    """dx = dy where argmax == index, else 0."""
    np.multiply(dy, argmax == index, out=dx)


# ---- pooling

def _pooling_kernels():
    # imported on first use so that a missing pooling build never breaks other families
    from convnet._cpu import pooling
    return pooling


def pooling_max_forward(x, y, argmax, mask, kernel, stride, pad):
    """Max pooling. IN x (N, C, H, W); OUT y (N, C, OH, OW), argmax (int32 or int64, y's
    shape: flat index h*W + w of the first maximum), mask (y's shape in x's dtype, the same
    indices) or None. kernel, stride, pad: (h, w) pairs."""
    flat = mask.reshape(-1) if mask is not None else np.empty(0, dtype=y.dtype)
    _pooling_kernels().max_forward(x, y, argmax, flat, kernel[0], kernel[1], stride[0],
                                   stride[1], pad[0], pad[1])


def pooling_max_backward(dy, argmax, dx):
    """OUT dx (N, C, H, W) = 0, then dx[argmax] += dy per plane."""
    _pooling_kernels().max_backward(dy, argmax, dx)


def pooling_ave_forward(x, y, kernel, stride, pad):
    """Average pooling, divisor = window clipped to the padded extent (Caffe)."""
    _pooling_kernels().ave_forward(x, y, kernel[0], kernel[1], stride[0], stride[1],
                                   pad[0], pad[1])


def pooling_ave_backward(dy, dx, kernel, stride, pad):
    """OUT dx (N, C, H, W) = the adjoint of pooling_ave_forward applied to dy."""
    _pooling_kernels().ave_backward(dy, dx, kernel[0], kernel[1], stride[0], stride[1],
                                    pad[0], pad[1])


def pooling_unpool_forward(x, mask, y, index):
    """IN x, mask (N, C, H, W; mask float32/float64/int32/int64 flat indices into an output
    plane); OUT y (N, C, OH, OW) = 0, then y[mask] = x; OUT index (int32 or int64, x's shape)
    the validated mask for pooling_unpool_backward. Returns -1, or the flat position in mask
    of the first invalid value (nothing outside the planes is touched; y is then garbage)."""
    return _pooling_kernels().unpool_forward(x, mask, y, index)


def pooling_unpool_backward(dy, index, dx):
    """OUT dx (N, C, H, W) = dy[index] per plane, index from pooling_unpool_forward."""
    _pooling_kernels().unpool_backward(dy, index, dx)


# ---- interp
# Mapping tables (built once per shape by the layer): rows (H2, 2) / cols (W2, 2) intp hold
# the two source rows / columns of each output row / column as absolute indices into the
# input plane, row_weights (H2, 2) / col_weights (W2, 2) their lambdas in x's dtype; the
# nearest mode has one index per row / column, rows (H2,) / cols (W2,) intp.

def _interp_kernels():
    from convnet._cpu import interp
    return interp


_INTERP_BITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _interp_bits(a):
    # nearest and copy only move values: any dtype runs as unsigned ints of its item size
    return a.view(_INTERP_BITS[a.dtype.itemsize])


def interp_bilinear_forward(x, y, rows, row_weights, cols, col_weights):
    """IN x (N, C, H1, W1); OUT y (N, C, H2, W2) = the two-tap blend of columns, then of
    rows (DeepLab's order: rw0 (cw0 x00 + cw1 x01) + rw1 (cw0 x10 + cw1 x11))."""
    _interp_kernels().bilinear_forward(x, y, rows, row_weights, cols, col_weights)


def interp_bilinear_backward(dy, dx, rows, row_weights, cols, col_weights):
    """IN dy (N, C, H2, W2); OUT dx (N, C, H1, W1), overwritten with the adjoint of
    interp_bilinear_forward applied to dy (input pixels outside the tables get 0)."""
    _interp_kernels().bilinear_backward(dy, dx, rows, row_weights, cols, col_weights)


def interp_nearest_forward(x, y, rows, cols):
    """IN x (N, C, H1, W1) of any dtype; OUT y (N, C, H2, W2) of x's dtype:
    y[..., h, w] = x[..., rows[h], cols[w]]."""
    _interp_kernels().nearest_forward(_interp_bits(x), _interp_bits(y), rows, cols)


def interp_nearest_backward(dy, dx, rows, cols):
    """IN dy (N, C, H2, W2); OUT dx (N, C, H1, W1) = 0, then dx[..., rows[h], cols[w]] +=
    dy[..., h, w]."""
    _interp_kernels().nearest_backward(dy, dx, rows, cols)


def interp_copy_forward(x, y, top, left):
    """IN x (N, C, H1, W1) of any dtype; OUT y (N, C, H2, W2) = x[..., top:top + H2,
    left:left + W2] (the same-size case, after cropping)."""
    _interp_kernels().copy_forward(_interp_bits(x), _interp_bits(y), top, left)


def interp_copy_backward(dy, dx, top, left):
    """IN dy (N, C, H2, W2); OUT dx (N, C, H1, W1) = 0, then dx[..., top:top + H2,
    left:left + W2] += dy."""
    _interp_kernels().copy_backward(dy, dx, top, left)


# ---- loss
# Softmax scores are viewed as (N, C, S) (S = H*W, or 1 for (N, C) scores), labels as (N, S).

def _loss_kernels():
    from convnet._cpu import loss
    return loss


#: loss_softmax_forward / _backward take ``inv_sum`` (the layer passes it when this is set)
SOFTMAX_INV_SUM = True


def loss_softmax_forward(scores, labels, ignore_label, prob, label_index, inv_sum=None):
    """IN scores (N, C, S) float; labels (N, S) int32/int64/float32/float64 class ids;
    ignore_label an int or None. OUT prob (N, C, S) the softmax over C; label_index (N, S)
    int32, the class of each pixel or -1 (ignored). Returns (loss_sum, valid_count, bad):
    loss_sum = -sum log prob[n, label, s] over the pixels not ignored, bad = the flat index
    in (N, S) of the first label that is neither an integer in [0, C) nor ignore_label, or
    -1 (a bad label is treated as ignored; the caller raises). With ``inv_sum`` (N, S), prob
    receives exp(scores - max over C) unnormalised and inv_sum 1 / its sum over C (prob *
    inv_sum is the softmax): the normalising pass is left to backward's per-pixel weight."""
    has_ignore = ignore_label is not None
    loss_sum, count, bad = _loss_kernels().softmax_loss_forward(
        scores, labels, has_ignore, int(ignore_label) if has_ignore else 0, prob, label_index,
        inv_sum)
    return float(loss_sum), int(count), int(bad)


def loss_softmax_backward(prob, label_index, weight, grad, inv_sum=None):
    """OUT grad (N, C, S) = weight * (prob - onehot(label)) where label_index >= 0, else 0;
    with ``inv_sum`` (from loss_softmax_forward), prob * inv_sum stands for prob."""
    _loss_kernels().softmax_loss_backward(prob, label_index, weight, grad, inv_sum)


def loss_euclidean_sum(a, b):
    """IN a, b (M,). Returns sum((a - b) ** 2) (a float); nothing is stored (the layer keeps
    a and b for loss_euclidean_grad)."""
    return float(_loss_kernels().euclidean_loss_sum(a, b))


def loss_euclidean_grad(a, b, alpha, grad_a, grad_b):
    """IN a, b (M,); OUT grad_a (M,) = alpha * (a - b) and grad_b (M,) = -alpha * (a - b);
    either may be None (skipped)."""
    _loss_kernels().euclidean_loss_grad(a, b, alpha, grad_a, grad_b)


# ---- conv

def _conv_kernels():
    from convnet._cpu import conv
    return conv


#: bytes of one thread's column block. Measured (conv_3x3 N=8, one thread): 256 KB blocks
#: cost 20% more than whole images (the gemm repacks the weights per block), 8 MB ~ whole.
CONV_BLOCK_BYTES = 8 * 1024 * 1024
#: fewest work items (tiles or channel blocks) per call, so that small batches still split
#: over threads; a constant, never the thread count, so results do not depend on it
CONV_MIN_ITEMS = 4
#: the most image classes of the weight gradient (each one a weight-sized partial sum)
CONV_MAX_CLASSES = 4


def _conv_scratch(workspace, key, rows, cols, dtype):
    """A (rows, cols) scratch array from ``workspace`` (a dict the layer keeps), reused across
    calls and grown only when a larger one is needed."""
    need = max(rows * cols, 1)
    buf = workspace.get(key)
    if buf is None or buf.dtype != dtype or buf.size < need:
        buf = np.empty(need, dtype=dtype)
        workspace[key] = buf
    return buf[:rows * cols].reshape(rows, cols)


def _conv_direct(image, out, kernel, stride, pad):
    """True when the 1x1 path multiplies the image itself (no im2col)."""
    return (tuple(kernel) == (1, 1) and tuple(stride) == (1, 1) and tuple(pad) == (0, 0)
            and tuple(out) == tuple(image[1:]))


def _conv_rows(n, image, out, kernel, itemsize):
    """Output rows per forward tile: a column block of at most CONV_BLOCK_BYTES, at least
    CONV_MIN_ITEMS tiles in the batch, yet at least 64 columns wide (a narrower gemm loses
    more than the split gains)."""
    k = image[0] * kernel[0] * kernel[1]
    rows = min(CONV_BLOCK_BYTES // max(k * out[1] * itemsize, 1),
               -(-out[0] // -(-CONV_MIN_ITEMS // max(n, 1))))
    rows = max(rows, -(-64 // out[1]), 1)
    return min(rows, out[0])


def _conv_block(n, channels, group, out, kernel, itemsize):
    """Input channels per backward block: at most CONV_BLOCK_BYTES of columns, at least
    CONV_MIN_ITEMS blocks in the batch, yet at least 64 weight columns (the gemm's narrow
    side) when the group has that many."""
    per_channel = kernel[0] * kernel[1] * out[0] * out[1] * itemsize
    per_image = -(-CONV_MIN_ITEMS // max(n * group, 1))
    block = min(CONV_BLOCK_BYTES // max(per_channel, 1), -(-channels // per_image))
    block = max(block, -(-64 // (kernel[0] * kernel[1])), 1)
    return min(block, channels)


def _conv_threads(items):
    return max(min(items, get_num_threads()), 1)


def conv_forward(x, weight, bias, y, kernel, stride, pad, dilation, group, workspace):
    """Convolution forward. IN x (N, C, H, W), weight (M, C/group, kh, kw), bias (M,) or
    None; OUT y (N, M, OH, OW) = conv(x) + bias. kernel, stride, pad, dilation: (h, w)
    pairs; ``workspace``: a dict the caller keeps between calls (scratch buffers)."""
    n, out = x.shape[0], y.shape[2:]
    rows = _conv_rows(n, x.shape[1:], out, kernel, x.itemsize)
    threads = _conv_threads(n * -(-out[0] // rows))
    size = 1 if _conv_direct(x.shape[1:], out, kernel, stride, pad) else \
        x.shape[1] * kernel[0] * kernel[1] * rows * out[1]
    col = _conv_scratch(workspace, "col", threads, size, x.dtype)
    b = np.empty(0, x.dtype) if bias is None else bias
    with blas_threads(1):
        _conv_kernels().conv_forward(x, weight, b, y, col, stride[0], stride[1], pad[0], pad[1],
                                     dilation[0], dilation[1], group, rows)


def conv_backward_data(dy, weight, bias, dx, kernel, stride, pad, dilation, group, workspace):
    """The adjoint of conv_forward's linear part. IN dy (N, M, OH, OW), weight (M, C/group,
    kh, kw), bias (C,) or None (added per channel of dx: Deconvolution's forward); OUT dx
    (N, C, H, W), overwritten."""
    n, channels, out = dx.shape[0], dx.shape[1] // group, dy.shape[2:]
    block = _conv_block(n, channels, group, out, kernel, dx.itemsize)
    threads = _conv_threads(n * group * -(-channels // block))
    size = 1 if _conv_direct(dx.shape[1:], out, kernel, stride, pad) else \
        block * kernel[0] * kernel[1] * out[0] * out[1]
    col = _conv_scratch(workspace, "col", threads, size, dx.dtype)
    b = np.empty(0, dx.dtype) if bias is None else bias
    with blas_threads(1):
        _conv_kernels().conv_backward_data(dy, weight, b, dx, col, stride[0], stride[1],
                                           pad[0], pad[1], dilation[0], dilation[1], group,
                                           block)


def conv_backward_weight(x, dy, dweight, kernel, stride, pad, dilation, group, workspace):
    """IN x (N, C, H, W), dy (N, M, OH, OW); INOUT dweight (M, C/group, kh, kw) += the
    weight gradient. The summation order depends only on the shapes: the result is the same
    for any thread count."""
    n, channels, out = x.shape[0], x.shape[1] // group, dy.shape[2:]
    block = _conv_block(1, channels, group, out, kernel, x.itemsize)
    blocks = group * -(-channels // block)
    classes = 1
    if blocks < CONV_MIN_ITEMS:
        classes = max(min(n, CONV_MAX_CLASSES, -(-CONV_MIN_ITEMS // blocks)), 1)
    threads = _conv_threads(classes * blocks)
    size = 1 if _conv_direct(x.shape[1:], out, kernel, stride, pad) else \
        block * kernel[0] * kernel[1] * out[0] * out[1]
    col = _conv_scratch(workspace, "col", threads, size, x.dtype)
    partial = _conv_scratch(workspace, "partial", classes if classes > 1 else 0,
                            dweight.size, x.dtype)
    with blas_threads(1):
        _conv_kernels().conv_backward_weight(x, dy, dweight, col, partial, stride[0],
                                             stride[1], pad[0], pad[1], dilation[0],
                                             dilation[1], group, block)


def conv_backward_bias(dy, dbias):
    """IN dy (N, M, OH, OW); INOUT dbias (M,) += the sum of dy over N, OH, OW."""
    _conv_kernels().conv_backward_bias(dy, dbias)


# ---- solvers
# Caffe's update step (Normalize, Regularize, ComputeUpdateValue, Blob::Update) as in-place
# ufuncs on one param at a time; every array has the param's shape. ``diff`` is scratch
# afterwards (in Caffe it ends up holding the update). Net diff accumulation lives here too.

def solver_scale(x, alpha):
    """INOUT x *= alpha (the 1 / iter_size normalisation of accumulated diffs)."""
    x *= alpha


def sgd_update(data, diff, history, local_rate, momentum, local_decay):
    """history = momentum * history + local_rate * (diff + local_decay * data);
    data -= history. INOUT data, history; diff is used as scratch. No temporaries."""
    history *= momentum
    diff *= local_rate
    history += diff
    if local_decay != 0.0:
        np.multiply(data, local_rate * local_decay, out=diff)
        history += diff
    data -= history


def adam_update(data, diff, m, v, local_rate, beta1, beta2, delta, t, local_decay):
    """Caffe's Adam at step t = iter + 1, with g = diff + local_decay * data:
    m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;
    data -= local_rate * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + delta).
    INOUT data, m, v; diff is used as scratch; one temporary of the param's size."""
    tmp = np.empty_like(data)
    if local_decay != 0.0:
        np.multiply(data, local_decay, out=tmp)
        diff += tmp
    m *= beta1
    np.multiply(diff, 1.0 - beta1, out=tmp)
    m += tmp
    v *= beta2
    np.square(diff, out=diff)
    diff *= 1.0 - beta2
    v += diff
    correction = np.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
    np.sqrt(v, out=tmp)
    tmp += delta
    np.divide(m, tmp, out=tmp)
    tmp *= local_rate * correction
    data -= tmp


def net_accumulate(dst, src):
    """INOUT dst += src (a blob read by several layers receives the sum of their diffs)."""
    dst += src
