"""The CPU backend: the only module that imports the compiled ``convnet._cpu`` kernels.

Functions here take validated, C-contiguous NumPy arrays (float32 or float64 unless named
otherwise) and preallocated outputs; the CUDA backend (``convnet.backend.cuda``) has the same
names with DeviceArrays. Thread policy: OpenMP loops in the kernels, BLAS for the gemms;
:func:`set_num_threads` sets both.
"""

import contextlib
import functools
import os
import threading

import numpy as np

from convnet._cpu import _threads
from convnet.backend import host_cache

name = "cpu"


# ---------------------------------------------------------------- arrays and threads

def empty(shape, dtype):
    """An uninitialised array; large ones come from the caching allocator (host_cache)."""
    return host_cache.cache.empty(shape, dtype)


def zeros(shape, dtype):
    out = host_cache.cache.empty(shape, dtype)
    out.fill(0)
    return out


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


_blas_libraries = None


@contextlib.contextmanager
def blas_threads(n):
    """Context manager holding BLAS to ``n`` threads (e.g. 1 inside an OpenMP prange).

    The BLAS libraries loaded with the kernels are looked up once; each entry is then two
    library calls per library (threadpoolctl's ``limit`` costs about 0.08 ms, which a
    network of small convolutions pays three times per layer and step)."""
    global _blas_libraries
    if _blas_libraries is None:
        _blas_libraries = list(_blas().select(user_api="blas").lib_controllers)
    before = [lib.num_threads for lib in _blas_libraries]
    for lib in _blas_libraries:
        lib.set_num_threads(int(n))
    try:
        yield
    finally:
        for lib, threads in zip(_blas_libraries, before):
            lib.set_num_threads(threads)


def _kernel_arrays(*arrays):
    """True when the element-wise kernels (activation, structure, Scale's) take these arrays
    (None entries aside): C-contiguous, one float dtype."""
    arrays = [a for a in arrays if a is not None]
    dtype = arrays[0].dtype
    return dtype in (np.float32, np.float64) and all(
        a.dtype == dtype and a.flags.c_contiguous for a in arrays)


# ---- activation
# ReLU and Dropout's mask multiply run as compiled OpenMP passes (pyx/activation.pyx; Dropout's
# forward is mostly the random draw).

@functools.cache
def _activation_kernels():
    from convnet._cpu import activation
    return activation


def activation_relu_forward(x, negative_slope, y):
    """y = x where x > 0, negative_slope * x elsewhere (NaN kept). x, y: same shape; y may be
    x (in place)."""
    _activation_kernels().relu_forward(x.reshape(-1), y.reshape(-1), float(negative_slope))


def activation_relu_backward(dy, x, negative_slope, dx):
    """dx = dy where x > 0, negative_slope * dy elsewhere. ``x`` is the bottom, or the top
    when negative_slope >= 0 (same sign). dx may be dy (in place)."""
    _activation_kernels().relu_backward(dy.reshape(-1), x.reshape(-1), dx.reshape(-1),
                                        float(negative_slope))


def activation_dropout_forward(x, keep, scale, y):
    """y = x * scale where keep, else 0. keep: bool array of x's shape; y may be x."""
    if (_kernel_arrays(x, y) and keep.dtype == np.bool_ and keep.shape == x.shape
            and keep.flags.c_contiguous):
        _activation_kernels().dropout_apply(x.reshape(-1), keep.reshape(-1).view(np.uint8),
                                            float(scale), y.reshape(-1))
        return
    np.multiply(x, keep, out=y)
    y *= scale


def activation_dropout_backward(dy, keep, scale, dx):
    """dx = dy * scale where keep, else 0; dx may be dy (the forward's pass on dy)."""
    activation_dropout_forward(dy, keep, scale, dx)


# ---- normalization
# Batch-norm arrays are viewed as (N, C, S) (S = H*W, or 1 for (N, C) bottoms); per-channel
# vectors have shape (C,). The kernels (pyx/normalization.pyx) sum each channel in double, in
# one fixed order; the per-channel algebra between them is NumPy on C values.

@functools.cache
def _normalization_kernels():
    from convnet._cpu import normalization
    return normalization


def normalization_batch_norm_update(running_mean, running_var, mean, var, fraction,
                                    var_correction):
    """INOUT running_* (C,): running = fraction * running + (1 - fraction) * batch, with the
    batch variance multiplied by var_correction (m / (m - 1), the unbiased estimate)."""
    running_mean *= fraction
    running_mean += (1.0 - fraction) * mean
    running_var *= fraction
    running_var += ((1.0 - fraction) * var_correction) * var


def _bn_inv_std(var, eps):
    return 1.0 / np.sqrt(np.asarray(var, np.float64) + eps)


def normalization_batch_norm_train_forward(x, eps, scale, bias, mean, var, y, relu=False):
    """OUT mean (C,) and biased var (C,): the batch statistics of x (N, C, S) over the N and
    S axes; y: x normalised with them, as normalization_batch_norm_forward. One pass per
    channel (one thread wake, x read once from memory): shifted sums in double, a second,
    centred pass for a channel whose mean is large against its spread (the one-pass variance
    would lose bits to cancellation), then the normalisation while the channel is cached."""
    empty = np.empty(0, x.dtype)
    _normalization_kernels().batch_norm_train_forward(
        x, empty if scale is None else scale, empty if bias is None else bias, float(eps),
        mean, var, y, bool(relu))


def normalization_batch_norm_forward(x, mean, var, eps, scale, bias, y, relu=False):
    """y = (x - mean) / sqrt(var + eps) * scale + bias per channel, then max(y, 0) with
    ``relu`` (a fused in-place ReLU). x, y: (N, C, S); mean, var, scale, bias: (C,); scale and
    bias may be None (no affine)."""
    a = _bn_inv_std(var, eps)
    if scale is not None:
        a = a * scale
    b = np.zeros(x.shape[1], x.dtype) if bias is None else bias
    _normalization_kernels().batch_norm_apply(x, np.asarray(mean, x.dtype), a.astype(x.dtype),
                                              np.asarray(b, x.dtype), y, bool(relu))


def normalization_batch_norm_backward(dy, x, mean, var, eps, scale, dx, dscale, dbias,
                                      batch_stats, top=None):
    """Gradients of normalization_batch_norm_forward. dy, x, dx, top: (N, C, S); the rest (C,).

    With ``top`` (the fused ReLU's output) the top gradient is g = dy * (top > 0), else dy.
    ADDS sum(g * xhat) into dscale and sum(g) into dbias (either may be None). Writes dx
    (may be None): with batch_stats, through the batch mean and variance,
    dx = scale * inv_std * (g - mean(g) - xhat * mean(g * xhat)); otherwise (fixed
    statistics) dx = scale * inv_std * g.
    """
    kern = _normalization_kernels()
    inv_std = _bn_inv_std(var, eps)
    mask = np.empty((0, 0, 0), x.dtype) if top is None else top
    need_sums = dscale is not None or dbias is not None or (dx is not None and batch_stats)
    if need_sums:
        sums = np.empty((2, x.shape[1]))
        if dx is not None and batch_stats:
            # the sums, the per-channel terms and dx in one pass per channel
            kern.batch_norm_train_backward(
                dy, x, mask, np.asarray(mean, x.dtype), np.asarray(var, x.dtype),
                np.empty(0, x.dtype) if scale is None else np.asarray(scale, x.dtype),
                float(eps), sums, dx)
        else:
            kern.batch_norm_grad_sums(dy, x, mask, np.asarray(mean, np.float64), sums)
        sum_g, sum_gx = sums
        if dscale is not None:
            dscale += (inv_std * sum_gx).astype(dscale.dtype)
        if dbias is not None:
            dbias += sum_g.astype(dbias.dtype)
    if dx is not None and not batch_stats:
        gain = inv_std if scale is None else inv_std * scale
        zeros = np.zeros(x.shape[1], x.dtype)
        kern.batch_norm_backward_apply(dy, x, mask, gain.astype(x.dtype), zeros, zeros, dx)


# ---- structure
# Crop, Concat and Eltwise move or combine whole blocks on every OpenMP thread
# (pyx/structure.pyx: NumPy's copies and ufuncs run on one); other dtypes and
# non-contiguous bottoms take NumPy's slicing and ufuncs.

@functools.cache
def _structure_kernels():
    from convnet._cpu import structure
    return structure


def _addresses(arrays):
    """The arrays' data addresses, for the kernels that take any number of them."""
    return np.array([a.ctypes.data for a in arrays], np.uintp)


def _element_strides(shape):
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= int(n)
    return strides[::-1]


def _copy_block(src, dst, shape, src_offsets, dst_offsets):
    """dst[dst_offsets + block] = src[src_offsets + block] for a block of ``shape`` lying
    inside both arrays (C-contiguous, same ndim): runs along the trailing axes the block
    spans whole in both (copy_runs)."""
    nd = len(shape)
    r = nd - 1                  # the last axis where the block is not whole in both arrays
    while r > 0 and shape[r] == src.shape[r] == dst.shape[r]:
        r -= 1
    ss, ds = _element_strides(src.shape), _element_strides(dst.shape)
    length = int(np.prod(shape[r:], dtype=np.int64))
    src_base = sum(int(o) * s for o, s in zip(src_offsets, ss))
    dst_base = sum(int(o) * s for o, s in zip(dst_offsets, ds))
    _structure_kernels().copy_runs(src.reshape(-1), dst.reshape(-1), src_base, dst_base,
                                   np.array(shape[:r], np.intp), np.array(ss[:r], np.intp),
                                   np.array(ds[:r], np.intp), length)


def structure_crop_forward(x, offsets, y):
    """y = x[o0:o0+Y0, o1:o1+Y1, ...]; offsets: one int per axis of x."""
    if _kernel_arrays(x, y) and y.ndim > 0:
        _copy_block(x, y, y.shape, offsets, [0] * y.ndim)
        return
    y[...] = x[tuple(slice(o, o + n) for o, n in zip(offsets, y.shape))]


def structure_crop_backward(dy, offsets, dx):
    """OUT dx (x's shape): zeros with dy placed at offsets (the adjoint of the crop)."""
    if _kernel_arrays(dy, dx) and dx.ndim > 0:
        _structure_kernels().zero(dx.reshape(-1))
        _copy_block(dy, dx, dy.shape, [0] * dy.ndim, offsets)
        return
    dx[...] = 0
    dx[tuple(slice(o, o + n) for o, n in zip(offsets, dy.shape))] = dy


def _along(ndim, axis, start):
    """Offsets of a block starting at ``start`` along ``axis``, 0 elsewhere."""
    return [start if a == axis else 0 for a in range(ndim)]


def structure_concat_forward(xs, axis, y):
    """y = concatenation of the arrays xs along axis (y preallocated)."""
    if not _kernel_arrays(y, *xs):
        np.concatenate(xs, axis=axis, out=y)
        return
    start = 0
    for x in xs:
        _copy_block(x, y, x.shape, [0] * x.ndim, _along(x.ndim, axis, start))
        start += x.shape[axis]


def structure_concat_backward(dy, axis, sizes, dxs):
    """OUT dxs[i] (bottom i's shape, or None to skip it): the slice of dy along axis that
    bottom i filled; sizes[i] is bottom i's extent along axis."""
    start = 0
    index = [slice(None)] * dy.ndim
    for size, dx in zip(sizes, dxs):
        if dx is not None:
            if _kernel_arrays(dy, dx):
                _copy_block(dy, dx, dx.shape, _along(dy.ndim, axis, start), [0] * dx.ndim)
            else:
                index[axis] = slice(start, start + size)
                dx[...] = dy[tuple(index)]
        start += size


def structure_eltwise_sum(xs, coeffs, y):
    """y = sum_i coeffs[i] * xs[i] (all of y's shape)."""
    if _kernel_arrays(y, *xs):
        _structure_kernels().weighted_sum(_addresses(xs), np.array(coeffs, np.float64),
                                          y.reshape(-1))
        return
    np.multiply(xs[0], coeffs[0], out=y)
    for x, c in zip(xs[1:], coeffs[1:]):
        if c == 1.0:
            y += x
        else:
            y += c * x


def structure_eltwise_sum_backward(dy, coeff, dx):
    """dx = coeff * dy."""
    if _kernel_arrays(dy, dx):
        _structure_kernels().scale_copy(dy.reshape(-1), dx.reshape(-1), float(coeff))
        return
    np.multiply(dy, coeff, out=dx)


def structure_eltwise_prod(xs, y):
    """y = prod_i xs[i]."""
    if _kernel_arrays(y, *xs):
        _structure_kernels().product(_addresses(xs), y.reshape(-1))
        return
    np.multiply(xs[0], xs[1], out=y)
    for x in xs[2:]:
        y *= x


def structure_eltwise_prod_backward(dy, xs, dxs):
    """OUT dxs[i] = dy * prod_{j != i} xs[j] (None entries skipped), from prefix and suffix
    products: no division, so zeros in the inputs give exact gradients."""
    k = len(xs)
    if k == 2 and _kernel_arrays(dy, *xs, *dxs):
        for dx, other in zip(dxs, xs[::-1]):
            if dx is not None:
                _structure_kernels().product(_addresses([dy, other]), dx.reshape(-1))
        return
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
    if _kernel_arrays(y, *xs) and argmax.flags.c_contiguous:
        _structure_kernels().maximum(_addresses(xs), y.reshape(-1), argmax.reshape(-1))
        return
    np.copyto(y, xs[0])
    argmax[...] = 0
    greater = np.empty(y.shape, dtype=bool)
    for i, x in enumerate(xs[1:], start=1):
        np.greater(x, y, out=greater)
        np.copyto(y, x, where=greater)
        np.copyto(argmax, i, where=greater)


def structure_eltwise_max_backward(dy, argmax, index, dx):
    """dx = dy where argmax == index, else 0."""
    if _kernel_arrays(dy, dx) and argmax.flags.c_contiguous:
        _structure_kernels().maximum_backward(dy.reshape(-1), argmax.reshape(-1), int(index),
                                              dx.reshape(-1))
        return
    np.copyto(dx, np.where(argmax == index, dy, 0))


# ---- pooling

@functools.cache
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


def pooling_max_backward(dy, argmax, dx, kernel=None, stride=None, pad=None):
    """OUT dx (N, C, H, W) = 0, then dx[argmax] += dy per plane. kernel, stride, pad: the
    forward's windows (the GPU gathers through them; this scatter does not need them)."""
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

@functools.cache
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

@functools.cache
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

@functools.cache
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


def _pointwise(kernel, pad):
    """An unpadded 1x1: the direct loops read x itself (direct_pointwise_forward)."""
    return tuple(kernel) == (1, 1) and tuple(pad) == (0, 0)


def _adjoint_pad(kernel, pad, dilation):
    """The pads of a stride-1 convolution's backward-data run as a forward of dy with the
    rotated filters: d (k - 1) - p per axis (any sign: a negative one crops)."""
    return tuple(dilation[a] * (kernel[a] - 1) - pad[a] for a in range(2))


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


def _output_block(m, items, group):
    """Output channels per work item of a forward: all ``m`` of them, unless the layer has
    fewer than CONV_MIN_ITEMS items of tiles (one small image; VGG's fc6 at batch 1 has one)
    and one group, when they split too, in blocks of at least 32 (the GEMMs' M side). Depends
    on the shapes only."""
    if 0 < items < CONV_MIN_ITEMS and group == 1:
        return max(-(-m // -(-CONV_MIN_ITEMS // items)), min(m, 32))
    return m


def conv_forward(x, weight, bias, y, kernel, stride, pad, dilation, group, workspace,
                 algorithm="im2col"):
    """Convolution forward. IN x (N, C, H, W), weight (M, C/group, kh, kw), bias (M,) or
    None; OUT y (N, M, OH, OW) = conv(x) + bias. kernel, stride, pad, dilation: (h, w)
    pairs; ``workspace``: a dict the caller keeps between calls (scratch buffers);
    ``algorithm``: "im2col", "winograd" (3x3, stride 1), "kn2row" (stride 1, no im2col
    buffer) or "subpixel" (as im2col here: the
    strided deconvolution's sub-pixel pass is its forward, conv_backward_data). The layer
    checked that the algorithm applies (convnet.layers.conv_algorithms)."""
    if algorithm == "winograd":
        _winograd_correlate(x, weight, bias, y, pad, dilation, group, workspace)
        return
    if algorithm == "kn2row":
        _kn2row_forward(x, weight, bias, y, kernel, pad, dilation, group, workspace)
        return
    if algorithm == "direct":
        _direct_forward(x, weight, bias, y, kernel, pad, dilation, group, workspace)
        return
    if algorithm == "s2d":
        _s2d_forward(_s2d_input(x, kernel, stride, pad, y.shape[2:], workspace), weight, bias,
                     y, kernel, stride, group, workspace)
        return
    n, out, m = x.shape[0], y.shape[2:], y.shape[1]
    direct = _conv_direct(x.shape[1:], out, kernel, stride, pad)
    pixels = out[0] * out[1]
    if n == 1 and group == 1 and 64 <= pixels <= m // 2:
        # one small image under a weight at least twice its columns: the whole image (the
        # GEMM stays wide) in two blocks of output channels, as row tiles would each repack
        # the whole weight. ms, 2 threads, alternated in one process, tiles vs halves: 3x3
        # 512 -> 512 at 14x14 9.87 vs 8.36 (PyTorch 8.56), 1x1 1.02 vs 0.86 (0.88), 1x1
        # 1024 -> 512 1.84 vs 1.70 (1.57); two such images took 16.0 vs 16.7 and 256 -> 512
        # 7.5 vs 8.0, so from two images the tiles stay (and at 256 -> 256, 28x28, 8.2 vs
        # 9.3, where the columns outweigh the weight)
        rows, mblock = out[0], -(-m // 2)
        items = n
    else:
        rows = _conv_rows(n, x.shape[1:], out, kernel, x.itemsize)
        items = n * -(-out[0] // rows)
        mblock = _output_block(m, items, group)
    threads = _conv_threads(items * -(-m // mblock))
    size = 1 if direct else x.shape[1] * kernel[0] * kernel[1] * rows * out[1]
    col = _conv_scratch(workspace, "col", threads, size, x.dtype)
    b = np.empty(0, x.dtype) if bias is None else bias
    with blas_threads(1):
        _conv_kernels().conv_forward(x, weight, b, y, col, stride[0], stride[1], pad[0], pad[1],
                                     dilation[0], dilation[1], group, rows, mblock)


def conv_backward_data(dy, weight, bias, dx, kernel, stride, pad, dilation, group, workspace,
                       algorithm="im2col"):
    """The adjoint of conv_forward's linear part. IN dy (N, M, OH, OW), weight (M, C/group,
    kh, kw), bias (C,) or None (added per channel of dx: Deconvolution's forward); OUT dx
    (N, C, H, W), overwritten. ``algorithm`` as in conv_forward; "subpixel" computes the
    stride**2 output phases as stride-1 convolutions (no col2im scatter)."""
    if algorithm == "winograd":
        # a stride-1 transposed convolution is a correlation with the rotated filters
        _winograd_correlate(dy, weight, bias, dx,
                            _adjoint_pad(kernel, pad, dilation), dilation,
                            group, workspace, adjoint=True)
        return
    if algorithm == "subpixel":
        _subpixel_backward_data(dy, weight, bias, dx, kernel, stride, pad, group, workspace)
        return
    if algorithm == "kn2row":
        _kn2row_backward_data(dy, weight, bias, dx, kernel, pad, dilation, group, workspace)
        return
    if algorithm == "direct":
        _direct_backward_data(dy, weight, bias, dx, kernel, pad, dilation, group, workspace)
        return
    if algorithm == "s2d":
        _s2d_backward_data(dy, weight, bias, dx, kernel, stride, pad, group, workspace)
        return
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


def conv_backward_weight(x, dy, dweight, kernel, stride, pad, dilation, group, workspace,
                         algorithm="im2col"):
    """IN x (N, C, H, W), dy (N, M, OH, OW); INOUT dweight (M, C/group, kh, kw) += the
    weight gradient. The summation order depends only on the shapes: the result is the same
    for any thread count. ``algorithm`` as in conv_forward."""
    if algorithm == "winograd":
        _winograd_backward_weight(x, dy, dweight, pad, dilation, group, workspace)
        return
    if algorithm == "kn2row":
        _kn2row_backward_weight(x, dy, dweight, kernel, pad, dilation, group, workspace)
        return
    if algorithm == "direct":
        _direct_backward_weight(x, dy, dweight, kernel, pad, dilation, group, workspace)
        return
    if algorithm == "s2d":
        z = _s2d_input(x, kernel, stride, pad, dy.shape[2:], workspace)
        _s2d_backward_weight(z, dy, dweight, kernel, stride, group, workspace)
        return
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


def conv_backward(x, dy, weight, dx, dweight, kernel, stride, pad, dilation, group, workspace,
                  data_algorithm="im2col", weight_algorithm="im2col"):
    """conv_backward_weight(x, dy) into dweight (+=) and conv_backward_data(dy) into dx (no
    bias): a Convolution's backward with both passes wanted. With the direct loops for both
    (a filter other than an unpadded 1x1, whose backward-data is the pointwise pass) they run
    in one parallel loop (direct.direct_backward: a thread wake fewer, the threads sharing
    both passes' tasks); otherwise the two calls. The same results either way."""
    if data_algorithm == weight_algorithm == "direct" and not _pointwise(kernel, pad) \
            and dy.shape[0] > 0:
        _direct_backward(x, dy, weight, dx, dweight, kernel, pad, dilation, group, workspace)
        return
    conv_backward_weight(x, dy, dweight, kernel, stride, pad, dilation, group, workspace,
                         weight_algorithm)
    conv_backward_data(dy, weight, None, dx, kernel, stride, pad, dilation, group, workspace,
                       data_algorithm)


#: the most bytes of one image's columns for conv_forward_backward_weight's shared im2col
CONV_SHARED_COL_BYTES = 16 * 1024 * 1024


def conv_forward_backward_weight(x, weight, y, dy, dweight, kernel, stride, pad, dilation,
                                 group, workspace, algorithm="im2col"):
    """conv_forward(x) into y (no bias) and conv_backward_weight(x, dy) into dweight: a
    Deconvolution's backward (its top diff is x for both). With im2col, a batch of at least
    CONV_MIN_ITEMS images whose columns fit CONV_SHARED_COL_BYTES builds each image's
    columns once for both GEMMs (pyx/conv.pyx); otherwise the two calls run apart."""
    n, out = x.shape[0], y.shape[2:]
    if algorithm == "s2d":
        # one space-to-depth copy of x for both passes
        z = _s2d_input(x, kernel, stride, pad, out, workspace)
        _s2d_backward_weight(z, dy, dweight, kernel, stride, group, workspace)
        _s2d_forward(z, weight, None, y, kernel, stride, group, workspace)
        return
    k = x.shape[1] * kernel[0] * kernel[1]
    size = k * out[0] * out[1]
    if (algorithm != "im2col" or n < CONV_MIN_ITEMS or size * x.itemsize >
            CONV_SHARED_COL_BYTES or _conv_direct(x.shape[1:], out, kernel, stride, pad)):
        conv_backward_weight(x, dy, dweight, kernel, stride, pad, dilation, group, workspace,
                             algorithm)
        conv_forward(x, weight, None, y, kernel, stride, pad, dilation, group, workspace,
                     algorithm)
        return
    classes = max(min(n, CONV_MAX_CLASSES), 1)
    threads = _conv_threads(classes)
    col = _conv_scratch(workspace, "col", threads, size, x.dtype)
    partial = _conv_scratch(workspace, "partial", classes if classes > 1 else 0,
                            dweight.size, x.dtype)
    with blas_threads(1):
        _conv_kernels().conv_forward_backward_weight(x, weight, y, dy, dweight, col, partial,
                                                     stride[0], stride[1], pad[0], pad[1],
                                                     dilation[0], dilation[1], group)


# ---- conv: Winograd F(4x4, 3x3) (pyx/winograd.pyx), 3x3 filters at stride 1

WINOGRAD_TILE = 4
WINOGRAD_POINTS = 36
#: bytes of one work item's transformed tiles and products (V and M of pyx/winograd.pyx):
#: small enough to stay in the L2/L3 caches between the transforms and the 36 GEMMs
WINOGRAD_ITEM_BYTES = 1024 * 1024
#: the fewest tiles in one work item: narrower GEMMs (N or K of a few tiles) lose more than
#: the cache saves
WINOGRAD_MIN_TILES = 64
#: the most weight-gradient classes (each a 36 x M x C/group partial sum), and their budget
WINOGRAD_MAX_CLASSES = 4
WINOGRAD_CLASS_BYTES = 32 * 1024 * 1024


@functools.cache
def _winograd_kernels():
    from convnet._cpu import winograd
    return winograd


_winograd_plans = {}


def _winograd_items(n, out, dilation, per_tile_bytes):
    """_winograd_plan, remembered per shape (the plan costs more than a small layer's
    transforms)."""
    key = (n, tuple(out), tuple(dilation), per_tile_bytes)
    plan = _winograd_plans.get(key)
    if plan is None:
        if len(_winograd_plans) > 256:
            _winograd_plans.clear()
        plan = _winograd_plans[key] = _winograd_plan(n, out, dilation, per_tile_bytes)
    return plan


def _winograd_plan(n, out, dilation, per_tile_bytes):
    """Work items and their tiles: (segments, bounds, max_tiles, tw_max). A segment is
    (image, lattice residues a and b, tile rows [tr0, tr1)); item i is segments bounds[i] ..
    bounds[i + 1]: the same run of tile rows of every lattice of one image (one segment
    without dilation), at most WINOGRAD_ITEM_BYTES of tiles, split to give CONV_MIN_ITEMS
    items in all, yet of at least WINOGRAD_MIN_TILES tiles. max_tiles is the most tiles in
    an item, tw_max the most tiles in a lattice's row. Depends on the shapes only (results
    never depend on the thread count)."""
    from convnet.shapes import lattice_tiles
    dh, dw = dilation
    lattices = [(a, b, lattice_tiles(out[0], a, dh, WINOGRAD_TILE),
                 lattice_tiles(out[1], b, dw, WINOGRAD_TILE))
                for a in range(min(dh, out[0])) for b in range(min(dw, out[1]))]
    tw_max = max(tw for _, _, _, tw in lattices)
    th_max = max(th for _, _, th, _ in lattices)
    # a tile row of an item: one row of every lattice
    row_tiles = sum(tw for _, _, _, tw in lattices)
    rows = max(WINOGRAD_ITEM_BYTES // max(per_tile_bytes * row_tiles, 1), 1)
    rows = max(min(rows, -(-n * th_max // CONV_MIN_ITEMS)),
               -(-WINOGRAD_MIN_TILES // row_tiles), 1)
    segments, bounds, max_tiles = [], [0], 0
    for i in range(n):
        for r in range(0, th_max, rows):
            tiles = 0
            for a, b, th, tw in lattices:
                if r < th:
                    segments.append((i, a, b, r, min(r + rows, th)))
                    tiles += (min(r + rows, th) - r) * tw
            bounds.append(len(segments))
            max_tiles = max(max_tiles, tiles)
    return (np.array(segments, dtype=np.intp).reshape(-1, 5), np.array(bounds, dtype=np.intp),
            max_tiles, tw_max)


def _winograd_filters(weight, workspace, group, adjoint):
    """The transformed filters U (36, M, C/group) of a (M, C/group, 3, 3) weight; with
    ``adjoint``, those of the stride-1 adjoint's filters (rotated 180 degrees, in and out
    channels swapped per group): U (36, C, M/group)."""
    m, cg = weight.shape[:2]
    u = _conv_scratch(workspace, "winograd_u", WINOGRAD_POINTS, m * cg, weight.dtype)
    u = u.reshape((WINOGRAD_POINTS, group * cg, m // group) if adjoint else
                  (WINOGRAD_POINTS, m, cg))
    _winograd_kernels().winograd_filter(weight, u, group, adjoint)
    return u


def _winograd_correlate(x, weight, bias, y, pad, dilation, group, workspace, adjoint=False):
    """y = x correlated with the 3x3 (dilated) weight at stride 1, any pad (negative crops),
    for every pixel of y whatever its size; + bias per output channel. With ``adjoint``,
    with the filters of the adjoint instead (conv_backward_data at stride 1)."""
    wk = _winograd_kernels()
    u = _winograd_filters(weight, workspace, group, adjoint)
    c, m = x.shape[1], y.shape[1]
    segments, bounds, max_tiles, tw_max = _winograd_items(
        x.shape[0], y.shape[2:], dilation, WINOGRAD_POINTS * (c + m) * x.itemsize)
    items = len(bounds) - 1
    mblock = _output_block(m, items, group)
    threads = _conv_threads(items * -(-m // mblock))
    scratch = _conv_scratch(workspace, "col", threads,
                            wk.scratch_size(c, mblock, max_tiles, tw_max), x.dtype)
    b = np.empty(0, x.dtype) if bias is None else bias
    with blas_threads(1):
        wk.winograd_forward(x, u, b, y, segments, bounds, scratch, max_tiles, mblock, pad[0],
                            pad[1], dilation[0], dilation[1], group)


def _winograd_backward_weight(x, dy, dweight, pad, dilation, group, workspace):
    wk = _winograd_kernels()
    n, c = x.shape[:2]
    m = dy.shape[1]
    cg, mg = c // group, m // group
    block = cg
    per_tile = WINOGRAD_POINTS * (block + mg) * x.itemsize
    segments, bounds, max_tiles, tw_max = _winograd_items(n, dy.shape[2:], dilation, per_tile)
    size = m * cg
    classes = max(min(WINOGRAD_MAX_CLASSES, len(bounds) - 1,
                      WINOGRAD_CLASS_BYTES // max(WINOGRAD_POINTS * size * x.itemsize, 1)), 1)
    if classes * group < CONV_MIN_ITEMS and cg >= 2 * 16:
        # few classes fit: split the channels instead (each block redoes dY's transform)
        block = -(-cg // -(-CONV_MIN_ITEMS // (classes * group)))
    threads = _conv_threads(classes * group * -(-cg // block))
    scratch = _conv_scratch(workspace, "col", threads,
                            wk.scratch_size(block, mg, max_tiles, tw_max), x.dtype)
    du = _conv_scratch(workspace, "partial", classes, WINOGRAD_POINTS * size, x.dtype)
    du = du.reshape(classes, WINOGRAD_POINTS, size)
    with blas_threads(1):
        wk.winograd_backward_weight(x, dy, du, segments, bounds, scratch, max_tiles, block,
                                    pad[0], pad[1], dilation[0], dilation[1], group)
    wk.winograd_filter_adjoint(du, dweight)


# ---- conv: space-to-depth (s2d): a strided convolution as a stride-1 one, on the direct loops
# Phase (r, q) of the input, x[c, u*sh + r - ph, v*sw + q - pw], becomes channel (c*sh + r)*sw
# + q of z (pyx/conv.pyx space_to_depth), and tap (a*sh + r, b*sw + q) of the filter tap (a, b)
# of that channel: a stride-1, unpadded ceil(kh/sh) x ceil(kw/sw) convolution of z, which the
# direct loops run without a GEMM (taps past the kernel are zero filters). Backward-data is
# that convolution's adjoint into z's shape, then depth_to_space (each input pixel is one
# entry of z: a gather, no sums); the weight gradient is the direct one on z, mapped back.

def _s2d_kernel(kernel, stride):
    """The stride-1 kernel of the space-to-depth convolution."""
    return (-(-kernel[0] // stride[0]), -(-kernel[1] // stride[1]))


def _s2d_filters(weight, stride):
    """weight (M, C/group, kh, kw) as the space-to-depth convolution's (M, C/group*sh*sw,
    ka, kb): w[m, (c*sh + r)*sw + q, a, b] = weight[m, c, a*sh + r, b*sw + q], 0 past kh,
    kw."""
    m, cg, kh, kw = weight.shape
    (sh, sw), (ka, kb) = stride, _s2d_kernel((kh, kw), stride)
    padded = np.zeros((m, cg, ka * sh, kb * sw), weight.dtype)
    padded[:, :, :kh, :kw] = weight
    w = padded.reshape(m, cg, ka, sh, kb, sw).transpose(0, 1, 3, 5, 2, 4)
    return np.ascontiguousarray(w).reshape(m, cg * sh * sw, ka, kb)


def _s2d_scratch(n, channels, out, kernel, stride, dtype, workspace):
    """The workspace's z (N, C*sh*sw, OH + ka - 1, OW + kb - 1) for a conv output (OH, OW)."""
    ka, kb = _s2d_kernel(kernel, stride)
    shape = (n, channels * stride[0] * stride[1], out[0] + ka - 1, out[1] + kb - 1)
    return _conv_scratch(workspace, "s2d", 1, int(np.prod(shape)), dtype).reshape(shape)


def _s2d_input(x, kernel, stride, pad, out, workspace):
    """x (N, C, H, W) as z, from the workspace."""
    z = _s2d_scratch(x.shape[0], x.shape[1], out, kernel, stride, x.dtype, workspace)
    _conv_kernels().space_to_depth(x, z, stride[0], stride[1], pad[0], pad[1])
    return z


def _s2d_forward(z, weight, bias, y, kernel, stride, group, workspace):
    """y = the strided convolution (+ bias), from z = _s2d_input(x)."""
    _direct_forward(z, _s2d_filters(weight, stride), bias, y, _s2d_kernel(kernel, stride),
                    (0, 0), (1, 1), group, workspace)


def _s2d_backward_weight(z, dy, dweight, kernel, stride, group, workspace):
    """dweight (M, C/group, kh, kw) += the weight gradient, from z = _s2d_input(x)."""
    m, cg, kh, kw = dweight.shape
    (sh, sw), (ka, kb) = stride, _s2d_kernel(kernel, stride)
    dw = np.zeros((m, cg * sh * sw, ka, kb), dweight.dtype)
    _direct_backward_weight(z, dy, dw, (ka, kb), (0, 0), (1, 1), group, workspace)
    dw = dw.reshape(m, cg, sh, sw, ka, kb).transpose(0, 1, 4, 2, 5, 3)
    dweight += dw.reshape(m, cg, ka * sh, kb * sw)[:, :, :kh, :kw]


def _s2d_backward_data(dy, weight, bias, dx, kernel, stride, pad, group, workspace):
    """dx (N, C, H, W) = the strided convolution's adjoint of dy (+ bias per channel): the
    stride-1 adjoint into z's shape, then depth_to_space."""
    dz = _s2d_scratch(dx.shape[0], dx.shape[1], dy.shape[2:], kernel, stride, dx.dtype,
                      workspace)
    _direct_backward_data(dy, _s2d_filters(weight, stride), None, dz,
                          _s2d_kernel(kernel, stride), (0, 0), (1, 1), group, workspace)
    b = np.empty(0, dx.dtype) if bias is None else bias
    _conv_kernels().depth_to_space(dz, dx, b, stride[0], stride[1], pad[0], pad[1])


# ---- conv: kn2row (pyx/kn2row.pyx), any kernel at stride 1, no im2col buffer

@functools.cache
def _kn2row_kernels():
    from convnet._cpu import kn2row
    return kn2row


def _kn2row_taps(weight):
    """(M, C/group, kh, kw) -> (kh*kw, M, C/group): one contiguous matrix per tap."""
    m, cg, kh, kw = weight.shape
    return np.ascontiguousarray(weight.transpose(2, 3, 0, 1).reshape(kh * kw, m, cg))


def _kn2row_scratch(x_shape, y_shape, kernel, pad, dilation, workspace, dtype, rows):
    image, ext = _kn2row_kernels().sizes(x_shape[1], x_shape[2], x_shape[3], y_shape[1],
                                         y_shape[2], y_shape[3], kernel[0], kernel[1], pad[0],
                                         pad[1], dilation[0], dilation[1])
    return image, ext, _conv_scratch(workspace, "col", rows, image + ext, dtype)


def _kn2row_forward(x, weight, bias, y, kernel, pad, dilation, group, workspace):
    threads = _conv_threads(x.shape[0])
    _, _, scratch = _kn2row_scratch(x.shape, y.shape, kernel, pad, dilation, workspace,
                                    x.dtype, threads)
    b = np.empty(0, x.dtype) if bias is None else bias
    with blas_threads(1):
        _kn2row_kernels().kn2row_forward(x, _kn2row_taps(weight), b, y, scratch, kernel[0],
                                         kernel[1], pad[0], pad[1], dilation[0], dilation[1],
                                         group)


def _kn2row_backward_data(dy, weight, bias, dx, kernel, pad, dilation, group, workspace):
    threads = _conv_threads(dx.shape[0])
    _, _, scratch = _kn2row_scratch(dx.shape, dy.shape, kernel, pad, dilation, workspace,
                                    dx.dtype, threads)
    b = np.empty(0, dx.dtype) if bias is None else bias
    with blas_threads(1):
        _kn2row_kernels().kn2row_backward_data(dy, _kn2row_taps(weight), b, dx, scratch,
                                               kernel[0], kernel[1], pad[0], pad[1],
                                               dilation[0], dilation[1], group)


def _kn2row_backward_weight(x, dy, dweight, kernel, pad, dilation, group, workspace):
    n = x.shape[0]
    if n == 0:
        return
    image, ext = _kn2row_kernels().sizes(x.shape[1], x.shape[2], x.shape[3], dy.shape[1],
                                         dy.shape[2], dy.shape[3], kernel[0], kernel[1],
                                         pad[0], pad[1], dilation[0], dilation[1])
    padded = _conv_scratch(workspace, "col", n, image, x.dtype)
    extended = _conv_scratch(workspace, "partial", n, ext, x.dtype)
    m, cg = dweight.shape[:2]
    dtaps = np.empty((kernel[0] * kernel[1], m, cg), x.dtype)
    with blas_threads(1):
        _kn2row_kernels().kn2row_backward_weight(x, dy, dtaps, padded, extended, kernel[0],
                                                 kernel[1], pad[0], pad[1], dilation[0],
                                                 dilation[1], group)
    dweight += dtaps.transpose(1, 2, 0).reshape(dweight.shape)


# ---- conv: direct loops (pyx/direct.pyx), any kernel at stride 1, few channels

#: bytes of dy and x rows in one band of the direct weight gradient (a part of the L2 cache)
DIRECT_BAND_BYTES = 96 * 1024


@functools.cache
def _direct_kernels():
    from convnet._cpu import direct
    return direct



def _direct_filters(weight, group, adjoint):
    """weight (M, C/group, kh, kw) packed for direct_forward: (group * blocks, Ci*kh*kw,
    BLOCK), the output channels of each group in blocks of BLOCK (zero filters past the
    last). ``adjoint``: the filters of the backward-data pass (rotated by 180 degrees, input
    and output channels swapped)."""
    block = _direct_kernels().BLOCK
    m, cg, kh, kw = weight.shape
    w = weight.reshape(group, m // group, cg, kh, kw)
    if adjoint:
        w = w[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
    outs, ins = w.shape[1], w.shape[2]
    blocks = -(-outs // block)
    packed = np.zeros((group, blocks * block, ins, kh, kw), weight.dtype)
    packed[:, :outs] = w
    packed = packed.reshape(group, blocks, block, ins * kh * kw).transpose(0, 1, 3, 2)
    return np.ascontiguousarray(packed).reshape(group * blocks, ins * kh * kw, block)


def _direct_bias(bias, channels, group, dtype):
    """bias (channels,) or None as direct_forward's (group * blocks, BLOCK)."""
    block = _direct_kernels().BLOCK
    per = channels // group
    blocks = -(-per // block)
    out = np.zeros((group, blocks * block), dtype)
    if bias is not None:
        out[:, :per] = bias.reshape(group, per)
    return out.reshape(group * blocks, block)


def _direct_forward(x, weight, bias, y, kernel, pad, dilation, group, workspace,
                    adjoint=False):
    dk = _direct_kernels()
    n, m, ho, wo = y.shape
    w = _direct_filters(weight, group, adjoint)
    b = _direct_bias(bias, m, group, x.dtype)
    if _pointwise(kernel, pad):
        # a 1x1 reads each input once: straight from x, no band
        threads = _conv_threads(n * group * -(-(ho * wo) // dk.POINT_TASK))
        tails = _conv_scratch(workspace, "col", threads,
                              (x.shape[1] // group) * dk.POINT_TAIL, x.dtype)
        dk.direct_pointwise_forward(x.reshape(n, x.shape[1], -1), w, b,
                                    y.reshape(n, m, -1), tails, group, threads)
        return
    wp = dk.row_width(wo, kernel[1], dilation[1])
    threads = _conv_threads(n * group * -(-ho // dk.TASK_ROWS))
    bands = _conv_scratch(workspace, "col", threads,
                          dk.band_size(dk.TASK_ROWS, x.shape[1] // group, kernel[0], dilation[0],
                                       wp), x.dtype)
    dk.direct_forward(x, w, b, y, bands, kernel[0], kernel[1], dilation[0], dilation[1],
                      pad[0], pad[1], wp, group, threads)


def _direct_backward_data(dy, weight, bias, dx, kernel, pad, dilation, group, workspace):
    # a stride-1 transposed convolution is a correlation with the rotated filters
    _direct_forward(dy, weight, bias, dx, kernel, _adjoint_pad(kernel, pad, dilation),
                    dilation, group, workspace, adjoint=True)


def _direct_weight_args(x, dy, kernel, pad, dilation, group, workspace, other_tasks=0):
    """direct_backward_weight's arguments around dweight: (its scratch from ``workspace``,
    its geometry and blocking, the thread count), the scratch sized for as many threads as
    its tasks or ``other_tasks`` (direct_backward's rows of dx) can use."""
    dk = _direct_kernels()
    n, m, ho, wo = dy.shape
    c = x.shape[1]
    nv, taps, mgp, lanes = dk.weight_blocking(m // group, x.dtype == np.float64)
    wp = dk.row_width(wo, kernel[1], dilation[1])
    # without padding every tap reads inside x: the loops read x itself, no band
    in_place = tuple(pad) == (0, 0)
    plane, row = (x.shape[2] * x.shape[3], x.shape[3]) if in_place else (wp, c * wp)
    offsets = dk.weight_offsets(c, group, kernel[0], kernel[1], dilation[0], dilation[1],
                                plane, row, taps)
    items = group * mgp // (nv * lanes) * (offsets.shape[1] // taps)
    classes = dk.weight_classes(n)
    threads = _conv_threads(max(classes * items, other_tasks))
    acc = _conv_scratch(workspace, "partial", classes * items, nv * taps * lanes, x.dtype)
    # output rows per band: the band's dy (channels last) and x rows fit DIRECT_BAND_BYTES
    band = min(max(DIRECT_BAND_BYTES // ((group * mgp * wo + (0 if in_place else c * wp))
                                         * x.itemsize), 1), ho)
    bands = _conv_scratch(workspace, "col", threads,
                          0 if in_place else dk.band_size(band, c, kernel[0], dilation[0], wp),
                          x.dtype)
    dy_bands = _conv_scratch(workspace, "dy_band", threads, band * wo * group * mgp, x.dtype)
    return ((offsets, acc, bands, dy_bands), (dilation[0], dilation[1], pad[0], pad[1], wp,
                                              group, band, nv, mgp, in_place), threads)


def _direct_backward_weight(x, dy, dweight, kernel, pad, dilation, group, workspace):
    if dy.shape[0] == 0:
        return
    scratch, geometry, threads = _direct_weight_args(x, dy, kernel, pad, dilation, group,
                                                     workspace)
    _direct_kernels().direct_backward_weight(x, dy, *scratch, dweight, *geometry, threads)


def _direct_backward(x, dy, weight, dx, dweight, kernel, pad, dilation, group, workspace):
    # conv_backward's one loop for both passes; the backward-data as _direct_backward_data
    dk = _direct_kernels()
    scratch, geometry, threads = _direct_weight_args(
        x, dy, kernel, pad, dilation, group, workspace,
        other_tasks=dy.shape[0] * group * -(-dx.shape[2] // dk.TASK_ROWS))
    data_pad = _adjoint_pad(kernel, pad, dilation)
    wp = dk.row_width(dx.shape[3], kernel[1], dilation[1])
    data_bands = _conv_scratch(workspace, "data_band", threads,
                               dk.band_size(dk.TASK_ROWS, dy.shape[1] // group, kernel[0],
                                            dilation[0], wp), x.dtype)
    dk.direct_backward(x, dy, *scratch, dweight, *geometry,
                       _direct_filters(weight, group, True),
                       _direct_bias(None, x.shape[1], group, x.dtype), dx, data_bands,
                       data_pad[0], data_pad[1], wp, threads)


# ---- conv: sub-pixel transposed convolution (stride > 1, dilation 1)

def _subpixel_phases(out, kernel, stride, pad):
    """The output phases of one axis that hold pixels: (first output pixel, pixels, taps J,
    first low-resolution input row u0). Output pixel h = first + stride*v reads taps
    i = r + stride*j (j < J, r = (first + pad) mod stride) at input row u0 + v - j. Pixel h
    belongs to phase (h + pad) mod stride, so the first min(out, stride) pixels start one
    phase each: at most that many phases, whatever the stride."""
    phases = []
    for first in range(min(out, stride)):
        r = (first + pad) % stride
        taps = max(-(-(kernel - r) // stride), 0)
        phases.append((first, -(-(out - first) // stride), taps, (first + pad) // stride))
    return phases


def _subpixel_backward_data(dy, weight, bias, dx, kernel, stride, pad, group, workspace):
    """The adjoint of a strided convolution (a Deconvolution's forward) as stride**2 stride-1
    convolutions, one per output phase, each written straight into its pixels of dx: output
    pixel h = s*u + r - p receives sum_j W[.., r + s*j] dy[u - j], a correlation of dy with
    the phase's sub-kernel flipped (no col2im scatter)."""
    n, m = dy.shape[:2]
    c = dx.shape[1]
    mg, cg = m // group, c // group
    rows = _subpixel_phases(dx.shape[2], kernel[0], stride[0], pad[0])
    cols = _subpixel_phases(dx.shape[3], kernel[1], stride[1], pad[1])
    w = weight.reshape(group, mg, cg, kernel[0], kernel[1])
    for first_h, count_h, taps_h, u0_h in rows:
        for first_w, count_w, taps_w, u0_w in cols:
            if count_h == 0 or count_w == 0:
                continue
            target = dx[:, :, first_h::stride[0], first_w::stride[1]][:, :, :count_h, :count_w]
            if taps_h == 0 or taps_w == 0:
                target[...] = 0 if bias is None else bias[:, None, None]
                continue
            r_h, r_w = first_h + pad[0] - stride[0] * u0_h, first_w + pad[1] - stride[1] * u0_w
            # sub-kernel taps r + s*j, flipped (j' = J-1-j), in/out channels swapped per group
            sub = w[:, :, :, r_h::stride[0], r_w::stride[1]][:, :, :, :taps_h, :taps_w]
            sub = sub[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4)
            sub = np.ascontiguousarray(sub.reshape(c, mg, taps_h, taps_w))
            phase = np.empty((n, c, count_h, count_w), dx.dtype)
            conv_forward(dy, sub, bias, phase, (taps_h, taps_w), (1, 1),
                         (taps_h - 1 - u0_h, taps_w - 1 - u0_w), (1, 1), group, workspace)
            target[...] = phase


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


@functools.cache
def _solver_kernels():
    from convnet._cpu import solver
    return solver


def _flat_views(*arrays):
    """1-D views of same-dtype C-contiguous float arrays (what the fused kernels take), or
    None (the NumPy passes below then run)."""
    first = arrays[0]
    if first.dtype not in (np.float32, np.float64):
        return None
    for a in arrays:
        if a.dtype != first.dtype or a.shape != first.shape or not a.flags.c_contiguous:
            return None
    return [a.reshape(-1) for a in arrays]


def sgd_update(data, diff, history, local_rate, momentum, local_decay):
    """history = momentum * history + local_rate * (diff + local_decay * data);
    data -= history. INOUT data, history; diff is unchanged by the fused kernel
    (pyx/solver.pyx: one pass, the NumPy passes' results bit for bit), scratch otherwise."""
    flat = _flat_views(data, diff, history)
    if flat is not None:
        _solver_kernels().sgd_update(*flat, float(local_rate), float(momentum),
                                     float(local_rate) * float(local_decay))
        return
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
    INOUT data, m, v; one fused pass (pyx/solver.pyx) as for sgd_update, else NumPy passes
    with diff as scratch and one temporary of the param's size."""
    correction = np.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
    flat = _flat_views(data, diff, m, v)
    if flat is not None:
        _solver_kernels().adam_update(*flat, float(beta1), float(beta2), float(delta),
                                      float(local_rate * correction), float(local_decay))
        return
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
    np.sqrt(v, out=tmp)
    tmp += delta
    np.divide(m, tmp, out=tmp)
    tmp *= local_rate * correction
    data -= tmp


def all_finite(arrays):
    """True when no array of ``arrays`` holds a NaN or an Inf."""
    for a in arrays:
        flat = _flat_views(a)
        if flat is not None:
            if not _solver_kernels().all_finite(flat[0]):
                return False
        elif not np.isfinite(a).all():
            return False
    return True


def net_accumulate(dst, src):
    """INOUT dst += src (a blob read by several layers receives the sum of their diffs)."""
    if dst.shape == src.shape and _kernel_arrays(dst, src):
        structure_eltwise_sum([dst, src], [1.0, 1.0], dst)
        return
    dst += src


# ---- inner_product
# InnerProduct views its bottom as (M, K) and its weight as (N, K) ((K, N) with transpose).
# Every gemm goes through the BLAS door (pyx/inner_product.pyx, scipy's OpenBLAS). NumPy's
# own OpenBLAS (0.3.31 here against scipy's 0.3.30) ran the benchmark LSTM's step gemm
# (64 x 256 by 256 x 1024) in 0.45 ms against the door's 0.52 ms at one thread, but the
# design keeps one door: a small gemm runs there on the calling thread; a large one (from
# _SPLIT_MACS multiply-adds) as one gemm per OpenMP thread, each on one BLAS thread
# (``gemm_into_split``, beta = 1 for the weight gradient), as the convolutions run theirs,
# never on OpenBLAS's own threads: after a multi-threaded gemm its idle threads keep
# spinning for about 0.1 s (measured), taking a core from whatever runs next (a recurrent
# net's time loop). The blocks go to the threads as each finishes one (dynamic), so a core
# shared with another process takes fewer. Measured on the benchmark LSTM (T=50, N=64,
# 256 -> 256, 2 threads, medians of 9; its large gemms are the hoisted input projection and
# the weight gradients, 3200 x 256 by 256 x 1024), the 2-core VM shared with one busy
# process (load 1.1-1.2), torch.nn.LSTM alongside: forward 118 ms and forward+backward
# 247 ms with those gemms on OpenBLAS's two threads (torch 62 / 200 ms), 60 / 153 ms split
# here (torch 67 / 200 ms); splitting the step gemm as well was slower (83 / 225 ms against
# 76 / 209 ms, load 1.8-2.0). Embed's indices are validated here, before any row is read.

_INT_MAX = 2 ** 31 - 1
#: the multiply-adds from which a gemm is split into _SPLIT_PARTS blocks over the OpenMP
#: threads (64 M; the benchmark LSTM's step gemm, 16 M, stays whole)
_SPLIT_MACS = 1 << 26
_SPLIT_PARTS = 4


@functools.cache
def _door():
    from convnet._cpu import inner_product
    return inner_product


def _fits(a, b, c):
    return 0 < min(a.size, b.size, c.size) and max(*a.shape, *b.shape) <= _INT_MAX


def _gemm_into(a, b, c, trans_a, trans_b, beta, split=True):
    """c = op(a) op(b) + beta c through the BLAS door (pyx/inner_product.pyx), split over
    the OpenMP threads from _SPLIT_MACS multiply-adds (never with ``split=False``: one gemm
    on the calling thread); NumPy when a size is 0 or does not fit the C int BLAS takes."""
    if _fits(a, b, c):
        k = a.shape[0] if trans_a else a.shape[1]
        if split and c.size * k >= _SPLIT_MACS:
            with blas_threads(1):
                _door().gemm_into_split(a, b, c, trans_a, trans_b, beta, _SPLIT_PARTS,
                                        get_num_threads())
        else:
            _door().gemm_into(a, b, c, trans_a, trans_b, beta)
        return
    prod = (a.T if trans_a else a) @ (b.T if trans_b else b)
    if beta:
        c += prod
    else:
        c[...] = prod


def inner_product_forward(x, weight, bias, y, transpose, split=True):
    """IN x (M, K), weight (N, K) or (K, N) when transpose, bias (N,) or None;
    OUT y (M, N) = x W^T + bias (x W + bias when transpose). ``split=False``: one gemm through
    the door on the calling thread, never spread over the OpenMP threads (for a caller that
    runs it beside other work, e.g. convnet.rnn's streamed projection; x and y may be row
    blocks of C-contiguous arrays)."""
    _gemm_into(x, weight, y, False, not transpose, 0.0, split)
    if bias is not None:
        y += bias


def inner_product_backward_data(dy, weight, dx, transpose, split=True):
    """IN dy (M, N), weight; OUT dx (M, K) = dy W (dy W^T when transpose). ``split=False``:
    one gemm on the calling thread (as for inner_product_forward)."""
    _gemm_into(dy, weight, dx, False, transpose, 0.0, split)


def inner_product_backward_weight(x, dy, dweight, transpose, split=True):
    """INOUT dweight += dy^T x ((N, K)), or x^T dy ((K, N)) when transpose. ``split=False``:
    one gemm (beta = 1) on the calling thread."""
    a, b = (x, dy) if transpose else (dy, x)
    _gemm_into(a, b, dweight, True, False, 1.0, split)


def inner_product_backward_bias(dy, dbias):
    """INOUT dbias (N,) += the column sums of dy (M, N)."""
    dbias += dy.sum(axis=0)


def _index_rows(index, rows):
    """int64 row ids of ``index`` (any shape, integers or integral floats), or the flat
    position of the first one that is not an integer in [0, rows)."""
    flat = index.reshape(-1)
    if flat.dtype.kind == "f":
        ok = (flat >= 0) & (flat < rows) & (flat == np.floor(flat))
    else:
        ok = (flat >= 0) & (flat < rows)
    if not ok.all():
        return None, int(np.argmin(ok))
    return flat.astype(np.int64, copy=False), -1


def inner_product_embed_forward(index, weight, bias, y):
    """IN index (any shape, int or float row ids), weight (V, D), bias (D,) or None; OUT y
    (index.size, D) = weight[index] + bias. Returns -1, or the flat position of the first id
    outside [0, V) or not an integer (y untouched)."""
    rows, bad = _index_rows(index, weight.shape[0])
    if bad < 0:
        np.take(weight, rows, axis=0, out=y)
        if bias is not None:
            y += bias
    return bad


def inner_product_embed_backward(index, dy, dweight):
    """INOUT dweight (V, D) += dy (index.size, D) scattered to the rows index names (ids
    validated by inner_product_embed_forward)."""
    rows = index.reshape(-1).astype(np.int64, copy=False)
    np.add.at(dweight, rows, dy)


# ---- activation (smooth): Sigmoid, TanH, Softmax
# Compiled OpenMP passes (pyx/activation.pyx, with ReLU's kernels): element-wise over flat
# arrays in fixed chunks; Softmax views its bottom as (outer, C, inner), normalises over C
# with the max subtracted, and splits (outer, inner) positions over threads.

def activation_sigmoid_forward(x, y):
    """y = 1 / (1 + exp(-x)), computed from exp(-|x|) (no overflow); y may be x."""
    _activation_kernels().smooth_forward(x.reshape(-1), y.reshape(-1), False)


def activation_sigmoid_backward(dy, y, dx):
    """dx = dy * y * (1 - y) from the top y; dx may be dy."""
    _activation_kernels().smooth_backward(dy.reshape(-1), y.reshape(-1), dx.reshape(-1),
                                        False)


def activation_tanh_forward(x, y):
    """y = tanh(x); y may be x."""
    _activation_kernels().smooth_forward(x.reshape(-1), y.reshape(-1), True)


def activation_tanh_backward(dy, y, dx):
    """dx = dy * (1 - y^2) from the top y; dx may be dy."""
    _activation_kernels().smooth_backward(dy.reshape(-1), y.reshape(-1), dx.reshape(-1),
                                        True)


def activation_softmax_forward(x, y):
    """IN x (outer, C, inner); OUT y = exp(x - max) / sum over C."""
    _activation_kernels().softmax_forward(x, y)


def activation_softmax_backward(dy, y, dx):
    """IN dy, y (outer, C, inner); OUT dx = y * (dy - sum_C(dy * y))."""
    _activation_kernels().softmax_backward(dy, y, dx)


# ---- normalization (Scale)
# Scale views its bottom as (outer, S, inner) and the scale / bias as (S,): BatchNorm's
# (N, C, S) layout, so its passes are BatchNorm's per-channel kernels with a zero mean
# (batch_norm_apply: y = a_c x + b_c; batch_norm_grad_sums: sum(dy), sum(dy x)), on every
# thread, where NumPy's broadcasts and reductions ran on one.

def normalization_scale_forward(x, scale, bias, y):
    """IN x (outer, S, inner), scale (S,), bias (S,) or None; OUT y = x * scale + bias."""
    if _kernel_arrays(x, scale, bias, y):
        zero = np.zeros(x.shape[1], x.dtype)
        _normalization_kernels().batch_norm_apply(x, zero, scale,
                                                  zero if bias is None else bias, y, False)
        return
    np.multiply(x, scale[None, :, None], out=y)
    if bias is not None:
        y += bias[None, :, None]


def normalization_scale_backward(dy, x, scale, dx, dscale, dbias):
    """IN dy, x (outer, S, inner), scale (S,); OUT dx = dy * scale (skipped when None);
    INOUT dscale (S,) += sum(dy * x) and dbias (S,) += sum(dy) over outer and inner (each
    skipped when None)."""
    if _kernel_arrays(dy, x, scale, dx):
        kernels = _normalization_kernels()
        if dscale is not None or dbias is not None:
            sums = np.empty((2, x.shape[1]))
            kernels.batch_norm_grad_sums(dy, x, np.empty((0, 0, 0), x.dtype),
                                         np.zeros(x.shape[1]), sums)
            if dscale is not None:
                dscale += sums[1]
            if dbias is not None:
                dbias += sums[0]
        if dx is not None:
            zero = np.zeros(x.shape[1], x.dtype)
            kernels.batch_norm_apply(dy, zero, scale, zero, dx, False)
        return
    if dscale is not None:
        dscale += np.multiply(dy, x).sum(axis=2).sum(axis=0)
    if dbias is not None:
        dbias += dy.sum(axis=2).sum(axis=0)
    if dx is not None:
        np.multiply(dy, scale[None, :, None], out=dx)


# ---- recurrent (LSTMUnit)
# Rows R = every leading position; gates in Caffe's order i, f, o, g. One compiled pass over
# each row (pyx/recurrent.pyx, per-unit arithmetic in pyx/recurrent_rows.h, with a float32
# exp / tanh GCC vectorises; libm in float64). Measured on the benchmark step (64 x 256
# units, float32, one thread, medians of 500): forward 80 us against 313 us for the eleven
# NumPy passes it replaced (NumPy's float32 tanh runs at 2.6 ns an element here: 82 K
# tanh a step), backward 20 us against 164 us. Rows split over OpenMP threads only in work
# items of 64 K gate values (a thread start costs more than a step of this size).

@functools.cache
def _recurrent_kernels():
    from convnet._cpu import recurrent
    return recurrent


def recurrent_lstm_unit_forward(c_prev, gates, cont, forget_bias, act, tanh_c, c, h):
    """IN c_prev (R, D), gates (R, 4D) pre-activations in Caffe's order i, f, o, g, cont (R,),
    forget_bias (a float added to the f pre-activations); OUT act (R, 4D) (the activated
    gates), tanh_c (R, D) (kept for backward), c = cont f c_prev + i g, h = o tanh(c).
    Outputs C-contiguous."""
    _recurrent_kernels().lstm_unit_forward(
        np.ascontiguousarray(c_prev), np.ascontiguousarray(gates), np.ascontiguousarray(cont),
        float(forget_bias), act, tanh_c, c, h)


def recurrent_lstm_unit_backward(c_prev, cont, act, tanh_c, dc, dh, dc_prev, dgates):
    """IN c_prev, cont, act, tanh_c (from forward), dc, dh (R, D); OUT dc_prev (R, D),
    dgates (R, 4D) (the pre-activation diffs; cont gets none, as in Caffe). Outputs
    C-contiguous."""
    _recurrent_kernels().lstm_unit_backward(
        np.ascontiguousarray(c_prev), np.ascontiguousarray(cont), np.ascontiguousarray(act),
        np.ascontiguousarray(tanh_c), np.ascontiguousarray(dc), np.ascontiguousarray(dh),
        dc_prev, dgates)
