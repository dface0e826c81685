"""The CUDA backend: the CPU backend's function names and signatures on DeviceArrays.

Every function takes validated, C-contiguous DeviceArrays (float32 for data; int32 / int64 /
float for labels, masks and indices, as named) and preallocated outputs, and queues its work
on the default stream through libconvnet_cuda (convnet.cuda._lib). A NumPy array where a
DeviceArray is expected, or float64 data, is a DeviceError: the GPU computes in float32.
Backward passes are deterministic (gathers or per-thread ownership); none uses atomics on
floats.
"""

import contextlib
import math

import numpy as np

from convnet.cuda import _lib
from convnet.cuda.array import DeviceArray, from_numpy as _upload
from convnet.errors import ConfigError, DeviceError

name = "cuda"

_F32 = np.dtype(np.float32)
_DTYPE_CODES = {np.dtype(np.int32): _lib.INT32, np.dtype(np.int64): _lib.INT64,
                np.dtype(np.float32): _lib.FLOAT32, np.dtype(np.float64): _lib.FLOAT64}


# ---------------------------------------------------------------- arrays and threads

def empty(shape, dtype):
    return DeviceArray(shape, dtype)


def zeros(shape, dtype):
    out = DeviceArray(shape, dtype)
    out.fill(0)
    return out


def asarray(x, dtype=None):
    """A DeviceArray of ``dtype``: DeviceArrays pass through (converted when the dtype
    differs), NumPy arrays are uploaded."""
    if isinstance(x, DeviceArray):
        if dtype is None or np.dtype(dtype) == x.dtype:
            return x
        return x.astype(dtype)
    if getattr(x, "__cuda_array_interface__", None) is not None:
        raise DeviceError("only convnet DeviceArrays are accepted on the GPU; copy other "
                          "CUDA arrays through NumPy")
    return _upload(x, dtype)


def to_numpy(x):
    return x.get() if isinstance(x, DeviceArray) else np.asarray(x)


def from_numpy(a):
    """A new DeviceArray holding a copy of ``a``."""
    return _upload(a)


def openmp_enabled():
    from convnet.backend import cpu
    return cpu.openmp_enabled()


def set_num_threads(n):
    """Host threads (the GPU's parallelism is fixed by the kernels)."""
    from convnet.backend import cpu
    cpu.set_num_threads(n)


def get_num_threads():
    from convnet.backend import cpu
    return cpu.get_num_threads()


def sync_threads():
    """Host threads: apply the last set_num_threads to the calling thread (as the CPU)."""
    from convnet.backend import cpu
    cpu.sync_threads()


def blas_threads(n):
    return contextlib.nullcontext()


def synchronize():
    _lib.call("convnet_synchronize", None)


def _dev(a, what="array"):
    if not isinstance(a, DeviceArray):
        raise DeviceError(f"the CUDA backend got a {type(a).__name__} as {what}; CPU and GPU "
                          f"arrays cannot be mixed (move it with convnet.cuda.to_device, or the "
                          f"layer with .to('cpu'))")
    return a


def _f(a, what="array"):
    """The device pointer of a float32 DeviceArray (None passes through as NULL)."""
    if a is None:
        return None
    _dev(a, what)
    if a.dtype != _F32:
        raise DeviceError(f"the GPU computes in float32, got {a.dtype.name} {what}; build the "
                          f"layer with dtype=np.float32")
    return a.ptr


def _p(a, what="array"):
    return None if a is None else _dev(a, what).ptr


def _code(a, what):
    code = _DTYPE_CODES.get(np.dtype(a.dtype))
    if code is None:
        raise DeviceError(f"{what} must be int32, int64, float32 or float64 on the GPU, got "
                          f"{a.dtype.name}")
    return code


def _strides(shape):
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return list(reversed(strides))


def _copy_strided(dst_ptr, src_ptr, itemsize, shape, dst_strides, src_strides):
    if len(shape) > 8:
        raise DeviceError(f"strided copies on the GPU take at most 8 axes, got {len(shape)}")
    if math.prod(shape) == 0:
        return
    _lib.call("convnet_copy_strided", dst_ptr, src_ptr, itemsize, len(shape),
              _lib.int64_array(shape), _lib.int64_array(dst_strides),
              _lib.int64_array(src_strides), None)


def _zero(a):
    if a.nbytes:
        _lib.call("convnet_memset", a.ptr, 0, a.nbytes, None)


# ---- activation

def activation_relu_forward(x, negative_slope, y):
    """y = max(x, 0) + negative_slope * min(x, 0); y may be x (in place)."""
    _lib.call("convnet_relu_forward", _f(x), float(negative_slope), _f(y), x.size, None)


def activation_relu_backward(dy, x, negative_slope, dx):
    """dx = dy where x > 0, negative_slope * dy elsewhere; dx may be dy."""
    _lib.call("convnet_relu_backward", _f(dy), _f(x), float(negative_slope), _f(dx), dy.size,
              None)


def _keep(keep):
    _dev(keep, "keep mask")
    if keep.itemsize != 1 or keep.dtype.kind not in "bu":
        raise DeviceError(f"the dropout keep mask must be bool or uint8, got {keep.dtype.name}")
    return keep.ptr


def activation_dropout_forward(x, keep, scale, y):
    """y = x * scale where keep, else 0; keep: bool/uint8 DeviceArray of x's shape."""
    _lib.call("convnet_dropout_apply", _f(x), _keep(keep), float(scale), _f(y), x.size, None)


def activation_dropout_backward(dy, keep, scale, dx):
    """dx = dy * scale where keep, else 0."""
    _lib.call("convnet_dropout_apply", _f(dy), _keep(keep), float(scale), _f(dx), dy.size,
              None)


def activation_dropout_mask(seed, offset, ratio, keep):
    """OUT keep (uint8 or bool) = u >= ratio with u uniform in [0, 1) from a counter-based
    hash of (seed, offset + i): a mask drawn on the GPU without a host round trip (the
    Dropout layer draws its mask on the host so that CPU and GPU runs match)."""
    _lib.call("convnet_dropout_mask", int(seed) % 2 ** 64, int(offset) % 2 ** 64, float(ratio),
              _keep(keep), keep.size, None)


# ---- normalization

def _ncs(x):
    n, c, s = x.shape
    return n, c, s


def normalization_batch_norm_stats(x, mean, var):
    """OUT mean (C,) and biased var (C,) of x (N, C, S) over the N and S axes."""
    n, c, s = _ncs(x)
    _lib.call("convnet_batch_norm_stats", _f(x), _f(mean), _f(var), n, c, s, None)


def normalization_batch_norm_train_forward(x, eps, scale, bias, mean, var, y, relu=False):
    """OUT mean, var: the batch statistics of x; y: x normalised with them (as
    normalization_batch_norm_forward)."""
    normalization_batch_norm_stats(x, mean, var)
    normalization_batch_norm_forward(x, mean, var, eps, scale, bias, y, relu=relu)


def normalization_batch_norm_update(running_mean, running_var, mean, var, fraction,
                                    var_correction):
    """INOUT running_* (C,) = fraction * running + (1 - fraction) * batch (var corrected)."""
    _lib.call("convnet_batch_norm_update", _f(running_mean), _f(running_var), _f(mean),
              _f(var), float(fraction), float(var_correction), mean.size, None)


def normalization_batch_norm_forward(x, mean, var, eps, scale, bias, y, relu=False):
    """y = (x - mean) / sqrt(var + eps) * scale + bias per channel; scale, bias may be None;
    then max(y, 0) with ``relu`` (a fused in-place ReLU: a second pass here)."""
    n, c, s = _ncs(x)
    _lib.call("convnet_batch_norm_forward", _f(x), _f(mean), _f(var), float(eps), _f(scale),
              _f(bias), _f(y), n, c, s, None)
    if relu:
        activation_relu_forward(y, 0.0, y)


def normalization_batch_norm_backward(dy, x, mean, var, eps, scale, dx, dscale, dbias,
                                      batch_stats, top=None):
    """Gradients of the forward; ADDS into dscale / dbias (None skips); dx may be None. With
    ``top`` (the fused ReLU's output) the top gradient is dy * (top > 0)."""
    n, c, s = _ncs(x)
    if top is not None:
        masked = empty(tuple(dy.shape), dy.dtype)
        activation_relu_backward(dy, top, 0.0, masked)
        dy = masked
    _lib.call("convnet_batch_norm_backward", _f(dy), _f(x), _f(mean), _f(var), float(eps),
              _f(scale), _f(dx), _f(dscale), _f(dbias), int(bool(batch_stats)), n, c, s, None)


# ---- structure

def structure_crop_forward(x, offsets, y):
    """y = x[o0:o0+Y0, o1:o1+Y1, ...]; offsets: one int per axis of x."""
    _dev(x), _dev(y)
    xs = _strides(x.shape)
    start = sum(int(o) * s for o, s in zip(offsets, xs)) * x.itemsize
    _copy_strided(y.ptr, x.ptr + start if x.ptr else 0, x.itemsize, y.shape,
                  _strides(y.shape), xs)


def structure_crop_backward(dy, offsets, dx):
    """OUT dx (x's shape): zeros with dy placed at offsets."""
    _dev(dy), _dev(dx)
    _zero(dx)
    xs = _strides(dx.shape)
    start = sum(int(o) * s for o, s in zip(offsets, xs)) * dx.itemsize
    _copy_strided(dx.ptr + start if dx.ptr else 0, dy.ptr, dx.itemsize, dy.shape, xs,
                  _strides(dy.shape))


def structure_concat_forward(xs, axis, y):
    """y = concatenation of the arrays xs along axis (y preallocated)."""
    _dev(y)
    ys = _strides(y.shape)
    start = 0
    for x in xs:
        _dev(x)
        _copy_strided(y.ptr + start * ys[axis] * y.itemsize if y.ptr else 0, x.ptr, y.itemsize,
                      x.shape, ys, _strides(x.shape))
        start += x.shape[axis]


def structure_concat_backward(dy, axis, sizes, dxs):
    """OUT dxs[i] (or None): the slice of dy along axis that bottom i filled."""
    _dev(dy)
    ys = _strides(dy.shape)
    start = 0
    for size, dx in zip(sizes, dxs):
        if dx is not None:
            _dev(dx)
            _copy_strided(dx.ptr, dy.ptr + start * ys[axis] * dy.itemsize if dy.ptr else 0,
                          dy.itemsize, dx.shape, _strides(dx.shape), ys)
        start += size


def structure_eltwise_sum(xs, coeffs, y):
    """y = sum_i coeffs[i] * xs[i]."""
    _lib.call("convnet_axpby", y.size, float(coeffs[0]), _f(xs[0]), 0.0, _f(y), None)
    for x, c in zip(xs[1:], coeffs[1:]):
        _lib.call("convnet_axpby", y.size, float(c), _f(x), 1.0, _f(y), None)


def structure_eltwise_sum_backward(dy, coeff, dx):
    """dx = coeff * dy."""
    _lib.call("convnet_axpby", dy.size, float(coeff), _f(dy), 0.0, _f(dx), None)


def structure_eltwise_prod(xs, y):
    """y = prod_i xs[i]."""
    _lib.call("convnet_mul", y.size, _f(xs[0]), _f(xs[1]), _f(y), None)
    for x in xs[2:]:
        _lib.call("convnet_mul", y.size, _f(y), _f(x), _f(y), None)


def structure_eltwise_prod_backward(dy, xs, dxs):
    """OUT dxs[i] = dy * prod_{j != i} xs[j] (None entries skipped); no division, so zeros
    in the inputs give exact gradients."""
    for i, dx in enumerate(dxs):
        if dx is None:
            continue
        factor = _f(dy)
        for j, x in enumerate(xs):
            if j != i:
                _lib.call("convnet_mul", dy.size, factor, _f(x), _f(dx), None)
                factor = dx.ptr


def structure_eltwise_max(xs, y, argmax):
    """y = max_i xs[i]; OUT argmax (int32): the first bottom holding the maximum."""
    y[...] = _dev(xs[0])
    _dev(argmax).fill(0)
    for i, x in enumerate(xs[1:], start=1):
        _lib.call("convnet_eltwise_max_step", _f(x), i, _f(y), argmax.ptr, y.size, None)


def structure_eltwise_max_backward(dy, argmax, index, dx):
    """dx = dy where argmax == index, else 0."""
    _lib.call("convnet_eltwise_max_backward", _f(dy), _dev(argmax).ptr, int(index), _f(dx),
              dy.size, None)


# ---- pooling

def _pool_args(x_shape, y_shape, kernel, stride, pad):
    n, c, h, w = x_shape
    return (n * c, h, w, y_shape[2], y_shape[3], kernel[0], kernel[1], stride[0], stride[1],
            pad[0], pad[1], None)


def _index_is_64(argmax):
    if argmax.dtype == np.int64:
        return 1
    if argmax.dtype == np.int32:
        return 0
    raise DeviceError(f"the pooling argmax must be int32 or int64, got {argmax.dtype.name}")


def pooling_max_forward(x, y, argmax, mask, kernel, stride, pad):
    """Max pooling: y, argmax (flat h*W + w of the first maximum), mask (floats) or None."""
    _dev(argmax)
    _lib.call("convnet_max_pool_forward", _f(x), _f(y), argmax.ptr, _index_is_64(argmax),
              _f(mask), *_pool_args(x.shape, y.shape, kernel, stride, pad))


def pooling_max_backward(dy, argmax, dx, kernel=None, stride=None, pad=None):
    """OUT dx (N, C, H, W) = 0, then dx[argmax] += dy per plane: a gather per input pixel
    over the windows (kernel, stride, pad: the forward's) that contain it. Without the
    geometry (kernel None) one thread per plane scans its outputs: correct, deterministic,
    and far slower. The geometry is an argument, not something carried by the argmax array,
    so a copy or view of the argmax keeps the fast path."""
    _dev(argmax)
    if kernel is None:
        kernel, stride, pad = (0, 0), (1, 1), (0, 0)
    _lib.call("convnet_max_pool_backward", _f(dy), argmax.ptr, _index_is_64(argmax), _f(dx),
              *_pool_args(dx.shape, dy.shape, kernel, stride, pad))


def pooling_ave_forward(x, y, kernel, stride, pad):
    """Average pooling, divisor = window clipped to the padded extent (Caffe)."""
    _lib.call("convnet_ave_pool_forward", _f(x), _f(y),
              *_pool_args(x.shape, y.shape, kernel, stride, pad))


def pooling_ave_backward(dy, dx, kernel, stride, pad):
    """OUT dx = the adjoint of pooling_ave_forward applied to dy (a gather)."""
    _lib.call("convnet_ave_pool_backward", _f(dy), _f(dx),
              *_pool_args(dx.shape, dy.shape, kernel, stride, pad))


def pooling_unpool_forward(x, mask, y, index):
    """y = 0, then y[mask] = x (the later input wins a shared position); OUT index (int32 or
    int64, x's shape) the validated mask for pooling_unpool_backward. Returns -1, or the flat
    position in mask of the first invalid value (y is then garbage)."""
    _dev(mask, "mask")
    n, c, h, w = x.shape
    bad = _lib.byref_int64(-1)
    status = _lib.call_status("convnet_unpool_forward", _f(x), mask.ptr,
                              _code(mask, "the unpooling mask"), _f(y), _dev(index).ptr,
                              _index_is_64(index), n * c, h * w, y.shape[2] * y.shape[3],
                              _lib.ref(bad), None)
    if status == _lib.ERR_BAD_INDEX:
        return int(bad.value)
    _lib._check(status, "convnet_unpool_forward")
    return -1


def pooling_unpool_backward(dy, index, dx):
    """OUT dx = dy[index] per plane (a gather), index from pooling_unpool_forward."""
    _dev(index)
    n, c, h, w = dx.shape
    # forward validated the index (-1 where it found a bad value): no flag, no host wait
    _lib.call("convnet_unpool_backward", _f(dy), index.ptr, _code(index, "the unpooling index"),
              _f(dx), n * c, h * w, dy.shape[2] * dy.shape[3], None, None)


# ---- interp

def _table(a, what):
    _dev(a, what)
    if a.dtype != np.int64:
        raise DeviceError(f"interp {what} must be int64 on the GPU, got {a.dtype.name}")
    return a.ptr


def _interp_sizes(x_shape, y_shape):
    n, c, h1, w1 = x_shape
    return n * c, h1, w1, y_shape[2], y_shape[3]


def interp_bilinear_forward(x, y, rows, row_weights, cols, col_weights):
    """y = the two-tap blend of rows, then of columns (DeepLab's order)."""
    _lib.call("convnet_interp_bilinear_forward", _f(x), _f(y), *_interp_sizes(x.shape, y.shape),
              _table(rows, "rows"), _f(row_weights), _table(cols, "cols"), _f(col_weights),
              None)


def interp_bilinear_backward(dy, dx, rows, row_weights, cols, col_weights):
    """OUT dx = the adjoint of interp_bilinear_forward applied to dy (columns then rows, each
    thread owning what it writes: deterministic, no atomics)."""
    _lib.call("convnet_interp_bilinear_backward", _f(dy), _f(dx),
              *_interp_sizes(dx.shape, dy.shape), _table(rows, "rows"), _f(row_weights),
              _table(cols, "cols"), _f(col_weights), None)


def interp_nearest_forward(x, y, rows, cols):
    """y[..., h, w] = x[..., rows[h], cols[w]] for any dtype (values are moved as bits)."""
    _dev(x), _dev(y)
    _lib.call("convnet_interp_nearest_forward", x.ptr, y.ptr, x.itemsize,
              *_interp_sizes(x.shape, y.shape), _table(rows, "rows"), _table(cols, "cols"), None)


def interp_nearest_backward(dy, dx, rows, cols):
    """OUT dx = 0, then dx[..., rows[h], cols[w]] += dy[..., h, w] (deterministic)."""
    _lib.call("convnet_interp_nearest_backward", _f(dy), _f(dx),
              *_interp_sizes(dx.shape, dy.shape), _table(rows, "rows"), _table(cols, "cols"),
              None)


def interp_copy_forward(x, y, top, left):
    """y = x[..., top:top + H2, left:left + W2] for any dtype."""
    structure_crop_forward(x, (0, 0, int(top), int(left)), y)


def interp_copy_backward(dy, dx, top, left):
    """OUT dx = 0, then dx[..., top:top + H2, left:left + W2] += dy."""
    structure_crop_backward(dy, (0, 0, int(top), int(left)), dx)


# ---- loss

#: the GPU kernels store the normalised softmax: the layer passes no ``inv_sum``
SOFTMAX_INV_SUM = False


def _no_inv_sum(inv_sum):
    if inv_sum is not None:
        raise DeviceError("the CUDA softmax loss stores the normalised softmax; inv_sum must "
                          "be None (SOFTMAX_INV_SUM is False on this backend)")


def loss_softmax_forward(scores, labels, ignore_label, prob, label_index, inv_sum=None):
    """Softmax over C of scores (N, C, S) with labels (N, S); OUT prob, label_index (int32,
    -1 for ignored). Returns (loss_sum, valid_count, bad) as the CPU backend does."""
    _no_inv_sum(inv_sum)
    n, c, s = scores.shape
    _dev(labels, "labels")
    _dev(label_index, "label_index")
    has_ignore = ignore_label is not None
    loss = _lib.byref_double()
    count = _lib.byref_int64()
    bad = _lib.byref_int64(-1)
    status = _lib.call_status(
        "convnet_softmax_loss_forward", _f(scores), labels.ptr, _code(labels, "labels"),
        int(has_ignore), int(ignore_label) if has_ignore else 0, _f(prob), label_index.ptr,
        n, c, s, _lib.ref(loss), _lib.ref(count), _lib.ref(bad), None)
    if status != _lib.ERR_BAD_INDEX:
        _lib._check(status, "convnet_softmax_loss_forward")
    return float(loss.value), int(count.value), int(bad.value)


def loss_softmax_backward(prob, label_index, weight, grad, inv_sum=None):
    """OUT grad = weight * (prob - onehot(label)) where label_index >= 0, else 0."""
    _no_inv_sum(inv_sum)
    n, c, s = prob.shape
    _lib.call("convnet_softmax_loss_backward", _f(prob), _dev(label_index).ptr, float(weight),
              _f(grad), n, c, s, None)


def _euclidean_diff(a, b):
    """A scratch DeviceArray holding a - b (M,)."""
    diff = DeviceArray(tuple(a.shape), np.float32)
    _lib.call("convnet_sub", a.size, _f(a), _f(b), _f(diff), None)
    return diff


def loss_euclidean_sum(a, b):
    """IN a, b (M,). Returns sum((a - b) ** 2), accumulated in double in a fixed order."""
    diff = _euclidean_diff(a, b)
    result = _lib.byref_double()
    _lib.call("convnet_dot", diff.size, _f(diff), _f(diff), _lib.ref(result), None)
    return float(result.value)


def loss_euclidean_grad(a, b, alpha, grad_a, grad_b):
    """OUT grad_a = alpha * (a - b), grad_b = -alpha * (a - b); either may be None."""
    if grad_a is None and grad_b is None:
        return
    diff = _euclidean_diff(a, b)
    if grad_a is not None:
        _lib.call("convnet_axpby", diff.size, float(alpha), _f(diff), 0.0, _f(grad_a), None)
    if grad_b is not None:
        _lib.call("convnet_axpby", diff.size, -float(alpha), _f(diff), 0.0, _f(grad_b), None)


# ---- conv

def _conv_scratch(workspace, key, size):
    """A float32 DeviceArray of at least ``size`` elements, kept in ``workspace``."""
    need = max(int(size), 1)
    buf = workspace.get(key)
    if not isinstance(buf, DeviceArray) or buf.size < need:
        buf = DeviceArray((need,), np.float32)
        workspace[key] = buf
    return buf


def _conv_call(entry, arrays, x_shape, y_shape, kernel, stride, pad, dilation, group,
               workspace, algorithm):
    if algorithm != "im2col":
        # the layers ask for im2col on this device (convnet.layers.conv_algorithms)
        raise ConfigError(f"{entry}: the CUDA backend runs algorithm 'im2col' only, got "
                          f"{algorithm!r}")
    n, c, h, w = x_shape
    m, oh, ow = y_shape[1], y_shape[2], y_shape[3]
    col = _conv_scratch(workspace, "col", c * kernel[0] * kernel[1] * oh * ow)
    _lib.call(entry, *arrays, col.ptr, n, c, h, w, m, oh, ow, kernel[0], kernel[1], stride[0],
              stride[1], pad[0], pad[1], dilation[0], dilation[1], int(group), None)


def conv_forward(x, weight, bias, y, kernel, stride, pad, dilation, group, workspace,
                 algorithm="im2col"):
    """Convolution forward: y = conv(x) + bias (bias (M,) or None); im2col + cuBLAS gemm."""
    _conv_call("convnet_conv_forward", (_f(x), _f(weight), _f(bias), _f(y)), x.shape, y.shape,
               kernel, stride, pad, dilation, group, workspace, algorithm)


def conv_backward_data(dy, weight, bias, dx, kernel, stride, pad, dilation, group, workspace,
                       algorithm="im2col"):
    """dx (overwritten) = the adjoint of conv_forward's linear part applied to dy, plus bias
    (C,) per channel when given (Deconvolution's forward); gemm + col2im (a gather)."""
    _conv_call("convnet_conv_backward_data", (_f(dy), _f(weight), _f(bias), _f(dx)), dx.shape,
               dy.shape, kernel, stride, pad, dilation, group, workspace, algorithm)


def conv_backward_weight(x, dy, dweight, kernel, stride, pad, dilation, group, workspace,
                         algorithm="im2col"):
    """INOUT dweight += the weight gradient (images in turn, gemm with beta = 1)."""
    _conv_call("convnet_conv_backward_weight", (_f(x), _f(dy), _f(dweight)), x.shape, dy.shape,
               kernel, stride, pad, dilation, group, workspace, algorithm)


def conv_backward(x, dy, weight, dx, dweight, kernel, stride, pad, dilation, group, workspace,
                  data_algorithm="im2col", weight_algorithm="im2col"):
    """conv_backward_weight into dweight and conv_backward_data into dx (no bias), a
    Convolution's backward with both passes wanted; here the two calls."""
    conv_backward_weight(x, dy, dweight, kernel, stride, pad, dilation, group, workspace,
                         weight_algorithm)
    conv_backward_data(dy, weight, None, dx, kernel, stride, pad, dilation, group, workspace,
                       data_algorithm)


def conv_forward_backward_weight(x, weight, y, dy, dweight, kernel, stride, pad, dilation,
                                 group, workspace, algorithm="im2col"):
    """conv_forward(x) into y (no bias) and conv_backward_weight(x, dy) into dweight (a
    Deconvolution's backward); here the two calls, one after the other."""
    conv_backward_weight(x, dy, dweight, kernel, stride, pad, dilation, group, workspace,
                         algorithm)
    conv_forward(x, weight, None, y, kernel, stride, pad, dilation, group, workspace,
                 algorithm)


def conv_backward_bias(dy, dbias):
    """INOUT dbias (M,) += the sum of dy over N, OH, OW (deterministic)."""
    n, m = dy.shape[0], dy.shape[1]
    _lib.call("convnet_conv_backward_bias", _f(dy), _f(dbias), n, m,
              math.prod(dy.shape[2:]), None)


# ---- solvers

def solver_scale(x, alpha):
    """INOUT x *= alpha."""
    _lib.call("convnet_scale", x.size, float(alpha), _f(x), None)


def sgd_update(data, diff, history, local_rate, momentum, local_decay):
    """history = momentum * history + local_rate * (diff + local_decay * data);
    data -= history."""
    _lib.call("convnet_sgd_update", _f(data), _f(diff), _f(history), float(local_rate),
              float(momentum), float(local_decay), data.size, None)


def adam_update(data, diff, m, v, local_rate, beta1, beta2, delta, t, local_decay):
    """Caffe's Adam at step t (see convnet.backend.cpu.adam_update)."""
    correction = math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
    _lib.call("convnet_adam_update", _f(data), _f(diff), _f(m), _f(v),
              float(local_rate * correction), float(beta1), float(beta2), float(delta),
              float(local_decay), data.size, None)


def all_finite(arrays):
    """True when no array of ``arrays`` (float32 DeviceArrays) holds a NaN or an Inf: one
    device flag for all of them, one 4-byte read-back (the gradients stay on the GPU)."""
    arrays = [a for a in arrays if a.size]
    if not arrays:
        return True
    flag = DeviceArray((1,), np.int32)
    flag.fill(0)
    for a in arrays:
        _lib.call("convnet_flag_nonfinite", _f(a), a.size, flag.ptr, None)
    return not bool(flag.get()[0])


def net_accumulate(dst, src):
    """INOUT dst += src."""
    _lib.call("convnet_axpby", dst.size, 1.0, _f(src), 1.0, _f(dst), None)


# ---- sequence layers: inner_product, activation (smooth), normalization (Scale), recurrent
# Mirrors of the CPU backend's functions of the same names (cuda/inner_product.cu,
# cuda/smooth.cu, cuda/recurrent.cu); the gemms go through convnet_gemm (cuBLAS).

def _gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    _lib.call("convnet_gemm", int(trans_a), int(trans_b), m, n, k, 1.0, a, lda, b, ldb,
              float(beta), c, ldc, None)


def inner_product_forward(x, weight, bias, y, transpose, split=True):
    """IN x (M, K), weight (N, K) or (K, N) when transpose, bias (N,) or None;
    OUT y (M, N) = x W^T + bias (x W + bias when transpose). ``split`` is the CPU backend's
    (one gemm on the calling thread); a device gemm is one call either way."""
    m, k = x.shape
    n = y.shape[1]
    _gemm(0, 0 if transpose else 1, m, n, k, _f(x), k, _f(weight), n if transpose else k,
          0.0, _f(y), n)
    if bias is not None:
        _lib.call("convnet_bias_add", _f(y), _f(bias), m, n, None)


def inner_product_backward_data(dy, weight, dx, transpose, split=True):
    """IN dy (M, N), weight; OUT dx (M, K) = dy W (dy W^T when transpose)."""
    m, n = dy.shape
    k = dx.shape[1]
    _gemm(0, 1 if transpose else 0, m, k, n, _f(dy), n, _f(weight), n if transpose else k,
          0.0, _f(dx), k)


def inner_product_backward_weight(x, dy, dweight, transpose, split=True):
    """INOUT dweight += dy^T x ((N, K)), or x^T dy ((K, N)) when transpose."""
    m, k = x.shape
    n = dy.shape[1]
    if transpose:
        _gemm(1, 0, k, n, m, _f(x), k, _f(dy), n, 1.0, _f(dweight), n)
    else:
        _gemm(1, 0, n, k, m, _f(dy), n, _f(x), k, 1.0, _f(dweight), k)


def inner_product_backward_bias(dy, dbias):
    """INOUT dbias (N,) += the column sums of dy (M, N)."""
    _lib.call("convnet_bias_grad", _f(dy), _f(dbias), dy.shape[0], dy.shape[1], None)


def inner_product_embed_forward(index, weight, bias, y):
    """IN index (any shape, int or float row ids), weight (V, D), bias (D,) or None; OUT y
    (index.size, D) = weight[index] + bias. Returns -1, or the flat position of the first id
    outside [0, V) or not an integer."""
    _dev(index, "index")
    bad = _lib.byref_int64(-1)
    status = _lib.call_status("convnet_embed_forward", index.ptr, _code(index, "the index"),
                              _f(weight), _f(bias), _f(y), index.size, weight.shape[0],
                              weight.shape[1], _lib.ref(bad), None)
    if status == _lib.ERR_BAD_INDEX:
        return int(bad.value)
    _lib._check(status, "convnet_embed_forward")
    return -1


def inner_product_embed_backward(index, dy, dweight):
    """INOUT dweight (V, D) += dy (index.size, D) scattered to the rows index names."""
    _dev(index, "index")
    _lib.call("convnet_embed_backward", index.ptr, _code(index, "the index"), _f(dy),
              _f(dweight), index.size, dweight.shape[0], dweight.shape[1], None)


def activation_sigmoid_forward(x, y):
    """y = 1 / (1 + exp(-x)); y may be x."""
    _lib.call("convnet_sigmoid_forward", _f(x), _f(y), x.size, None)


def activation_sigmoid_backward(dy, y, dx):
    """dx = dy * y * (1 - y) from the top y; dx may be dy."""
    _lib.call("convnet_sigmoid_backward", _f(dy), _f(y), _f(dx), dy.size, None)


def activation_tanh_forward(x, y):
    """y = tanh(x); y may be x."""
    _lib.call("convnet_tanh_forward", _f(x), _f(y), x.size, None)


def activation_tanh_backward(dy, y, dx):
    """dx = dy * (1 - y^2) from the top y; dx may be dy."""
    _lib.call("convnet_tanh_backward", _f(dy), _f(y), _f(dx), dy.size, None)


def activation_softmax_forward(x, y):
    """IN x (outer, C, inner); OUT y = exp(x - max) / sum over C."""
    _lib.call("convnet_softmax_forward", _f(x), _f(y), *x.shape, None)


def activation_softmax_backward(dy, y, dx):
    """IN dy, y (outer, C, inner); OUT dx = y * (dy - sum_C(dy * y))."""
    _lib.call("convnet_softmax_backward", _f(dy), _f(y), _f(dx), *dy.shape, None)


def normalization_scale_forward(x, scale, bias, y):
    """IN x (outer, S, inner), scale (S,), bias (S,) or None; OUT y = x * scale + bias."""
    _lib.call("convnet_scale_forward", _f(x), _f(scale), _f(bias), _f(y), *x.shape, None)


def normalization_scale_backward(dy, x, scale, dx, dscale, dbias):
    """OUT dx = dy * scale; INOUT dscale += sum(dy * x), dbias += sum(dy) (each None:
    skipped)."""
    _lib.call("convnet_scale_backward", _f(dy), _f(x), _f(scale), _f(dx), _f(dscale),
              _f(dbias), *dy.shape, None)


def recurrent_lstm_unit_forward(c_prev, gates, cont, forget_bias, act, tanh_c, c, h):
    """IN c_prev (R, D), gates (R, 4D) (i, f, o, g), cont (R,), forget_bias; OUT act, tanh_c
    (kept for backward), c = cont f c_prev + i g, h = o tanh(c)."""
    _lib.call("convnet_lstm_unit_forward", _f(c_prev), _f(gates), _f(cont), float(forget_bias),
              _f(act), _f(tanh_c), _f(c), _f(h), c_prev.shape[0], c_prev.shape[1], None)


def recurrent_lstm_unit_backward(c_prev, cont, act, tanh_c, dc, dh, dc_prev, dgates):
    """IN c_prev, cont, act, tanh_c (from forward), dc, dh (R, D); OUT dc_prev (R, D),
    dgates (R, 4D)."""
    _lib.call("convnet_lstm_unit_backward", _f(c_prev), _f(cont), _f(act), _f(tanh_c), _f(dc),
              _f(dh), _f(dc_prev), _f(dgates), c_prev.shape[0], c_prev.shape[1], None)
