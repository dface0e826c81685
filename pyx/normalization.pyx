"""BatchNorm and ReLU kernels: per-channel sums and the element-wise passes, one channel per
work item (a static prange over C), so each channel's sums run in one fixed order and the
results are bit-identical for any thread count.

Arrays are viewed as (N, C, S), S = the product of the spatial sizes; per-channel vectors are
(C,). Sums accumulate in double, shifted (E[(x - k)^2] - E[x - k]^2 loses no precision when
the mean is large: a channel whose first, unshifted pass says so gets a second, centred one).
The train phase runs in one parallel loop each way: ``batch_norm_train_forward`` takes a
channel's statistics and then normalises it while it is still in the caches, and
``batch_norm_train_backward`` its gradient sums and then dx (each pass over a channel a
second read from the caches, not from memory, and one thread wake instead of two: on the
2-core VM a wake costs 100-150 us). ``batch_norm_apply`` and ``batch_norm_backward_apply``
serve the fixed statistics of the test phase (and ``use_global_stats``),
``batch_norm_grad_sums`` a backward without dx. A BatchNorm followed by an in-place ReLU
runs fused: ``relu`` in the forwards and the mask from the ReLU's output (``top``) in the
backwards.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

from _openmp cimport omp_get_max_threads

# A pass over less than GRAIN elements runs on one thread: a thread start costs a futex wake
# (about 100 us on this 2-core VM) unless the worker is still spinning (convnet/__init__.py:
# ~85 us after each parallel loop). With passive waiting, in the default training step (BN +
# in-place ReLU, forward / backward, ms, 1 vs 2 threads, idle machine): (16, 64, 8, 8)
# 0.34 / 0.40 vs 0.61 / 0.64; (16, 64, 16, 16) 0.66 / 0.84 vs 0.81 / 0.94; (16, 32, 32, 32)
# 0.92 vs 0.94. With the bounded spin, the whole step with GRAIN 2^16 ... 2^20, alternated
# in one process (median ms of 40 steps a setting, two runs): 81.8 / 78.2 / 75.9 / 77.5 /
# 78.9 and 72.5 / 72.3 / 67.9 / 70.8 / 71.5; 2^18 against 2^19, 80 steps each, three more
# runs: 75.5 vs 77.9, 64.3 vs 66.5, 65.0 vs 66.3. So (16, 64, 16, 16) runs on two threads.
cdef enum:
    GRAIN = 1 << 18


cdef inline int threads_for(Py_ssize_t work) noexcept nogil:
    """The OpenMP team size for a pass over ``work`` elements."""
    return 1 if work < GRAIN else omp_get_max_threads()

cdef extern from "normalization_sums.h" nogil:
    void bn_sums_f(const float* p, Py_ssize_t count, double shift, double* s, double* q)
    void bn_sums_d(const double* p, Py_ssize_t count, double shift, double* s, double* q)
    void bn_grad_sums_f(const float* dy, const float* x, const float* top, Py_ssize_t count,
                        double mean, double* s, double* q)
    void bn_grad_sums_d(const double* dy, const double* x, const double* top,
                        Py_ssize_t count, double mean, double* s, double* q)


cdef inline void _sums(const floating* p, Py_ssize_t count, double shift, double* s,
                       double* q) noexcept nogil:
    # s += sum(p - shift), q += sum((p - shift)^2) in a fixed order (normalization_sums.h)
    if floating is float:
        bn_sums_f(p, count, shift, s, q)
    else:
        bn_sums_d(p, count, shift, s, q)


cdef inline void _grad_sums(const floating* dy, const floating* x, const floating* top,
                            Py_ssize_t count, double mean, double* s,
                            double* q) noexcept nogil:
    # s += sum(g), q += sum(g * (x - mean)), g = dy, or with ``top`` (not NULL) dy * (top > 0):
    # the fused ReLU's gradient, as its own kernel computes it (a NaN in dy stays NaN)
    if floating is float:
        bn_grad_sums_f(dy, x, top, count, mean, s, q)
    else:
        bn_grad_sums_d(dy, x, top, count, mean, s, q)


cdef inline bint _same_shape(const floating[:, :, ::1] a, const floating[:, :, ::1] b):
    return a.shape[0] == b.shape[0] and a.shape[1] == b.shape[1] and a.shape[2] == b.shape[2]


cdef inline void _apply_channel(const floating[:, :, ::1] x, Py_ssize_t c, floating mc,
                                floating ac, floating bc, floating[:, :, ::1] y,
                                bint relu) noexcept nogil:
    # y[:, c] = ac * (x[:, c] - mc) + bc, then max(., 0) with relu (as batch_norm_apply)
    cdef Py_ssize_t n, i
    cdef Py_ssize_t S = x.shape[2]
    cdef floating v
    cdef const floating* src
    cdef floating* dst
    for n in range(x.shape[0]):
        src = &x[n, c, 0]
        dst = &y[n, c, 0]
        if relu:
            for i in range(S):
                v = ac * (src[i] - mc) + bc
                dst[i] = 0 if v <= 0 else v     # as activation.relu_forward
        else:
            for i in range(S):
                dst[i] = ac * (src[i] - mc) + bc


def batch_norm_apply(const floating[:, :, ::1] x,    # IN  (N, C, S)
                     const floating[::1] mean,       # IN  (C,)
                     const floating[::1] a,          # IN  (C,)
                     const floating[::1] b,          # IN  (C,)
                     floating[:, :, ::1] y,          # OUT (N, C, S), may be x
                     bint relu):
    """y = a_c * (x - mean_c) + b_c per channel (a constant channel gives exactly b_c); then
    max(y, 0) with ``relu`` (a fused in-place ReLU)."""
    cdef Py_ssize_t c
    with nogil:
        for c in prange(x.shape[1], schedule='static',
                        num_threads=threads_for(x.shape[0] * x.shape[1] * x.shape[2])):
            _apply_channel(x, c, mean[c], a[c], b[c], y, relu)


def batch_norm_grad_sums(const floating[:, :, ::1] dy,   # IN  (N, C, S)
                         const floating[:, :, ::1] x,    # IN  (N, C, S)
                         const floating[:, :, ::1] top,  # IN  (N, C, S) ReLU output, or (0,0,0)
                         const double[::1] mean,         # IN  (C,)
                         double[:, ::1] sums):           # OUT (2, C): sum(g), sum(g (x - mean))
    """Per-channel sums of the top gradient g (dy masked by top > 0 when top is given) and of
    g * (x - mean): what the batch-statistics backward and the scale / bias gradients need."""
    cdef Py_ssize_t N = x.shape[0]
    cdef Py_ssize_t C = x.shape[1]
    cdef Py_ssize_t S = x.shape[2]
    cdef bint masked = top.shape[0] > 0
    cdef Py_ssize_t c, n
    cdef double s, q
    with nogil:
        for c in prange(C, schedule='static', num_threads=threads_for(N * C * S)):
            s = 0
            q = 0
            for n in range(N):
                _grad_sums(&dy[n, c, 0], &x[n, c, 0], &top[n, c, 0] if masked else NULL, S,
                           mean[c], &s, &q)
            sums[0, c] = s
            sums[1, c] = q


cdef inline void _backward_channel(const floating[:, :, ::1] dy,
                                   const floating[:, :, ::1] x,
                                   const floating[:, :, ::1] top, bint masked, Py_ssize_t c,
                                   floating gc, floating sc, floating oc,
                                   floating[:, :, ::1] dx) noexcept nogil:
    # dx[:, c] = gc * g - sc * x[:, c] + oc, g = dy[:, c] (masked by top > 0 with masked)
    cdef Py_ssize_t n, i
    cdef Py_ssize_t S = x.shape[2]
    cdef floating g
    cdef floating one = 1, zero = 0
    cdef const floating* d
    cdef const floating* xs
    cdef const floating* t
    cdef floating* out
    for n in range(x.shape[0]):
        d = &dy[n, c, 0]
        xs = &x[n, c, 0]
        out = &dx[n, c, 0]
        if masked:
            t = &top[n, c, 0]
            for i in range(S):
                g = d[i] * (one if t[i] > 0 else zero)
                out[i] = gc * g - sc * xs[i] + oc
        else:
            for i in range(S):
                out[i] = gc * d[i] - sc * xs[i] + oc


def batch_norm_backward_apply(const floating[:, :, ::1] dy,   # IN  (N, C, S)
                              const floating[:, :, ::1] x,    # IN  (N, C, S)
                              const floating[:, :, ::1] top,  # IN  (N, C, S) or (0, 0, 0)
                              const floating[::1] gain,       # IN  (C,)
                              const floating[::1] slope,      # IN  (C,)
                              const floating[::1] offset,     # IN  (C,)
                              floating[:, :, ::1] dx):        # OUT (N, C, S), may be dy
    """dx = gain_c * g - slope_c * x + offset_c, g = dy (masked by top > 0 when top is
    given): the batch-norm input gradient with the per-channel terms folded in by the layer."""
    cdef bint masked = top.shape[0] > 0
    cdef Py_ssize_t c
    with nogil:
        for c in prange(x.shape[1], schedule='static',
                        num_threads=threads_for(x.shape[0] * x.shape[1] * x.shape[2])):
            _backward_channel(dy, x, top, masked, c, gain[c], slope[c], offset[c], dx)


def batch_norm_train_forward(const floating[:, :, ::1] x,    # IN  (N, C, S)
                             const floating[::1] scale,      # IN  (C,), or (0,) for none
                             const floating[::1] bias,       # IN  (C,), or (0,) for none
                             double eps,
                             floating[::1] mean,             # OUT (C,) batch mean
                             floating[::1] var,              # OUT (C,) biased batch variance
                             floating[:, :, ::1] y,          # OUT (N, C, S), may be x
                             bint relu):
    """The train-phase forward in one pass per channel: the batch statistics
    (batch_norm_sums, with a second, centred pass for a channel whose mean is large against
    its spread), then y = scale * (x - mean) / sqrt(var + eps) + bias (and max(y, 0) with
    ``relu``) while the channel is still in the caches. One parallel loop instead of two (a
    thread wake fewer) and one read of x from memory instead of two. The arithmetic is that
    of batch_norm_sums, the layer's NumPy steps and batch_norm_apply, in the same order."""
    cdef Py_ssize_t N = x.shape[0]
    cdef Py_ssize_t C = x.shape[1]
    cdef Py_ssize_t S = x.shape[2]
    cdef double count = <double> (N * S)
    cdef bint affine = scale.shape[0] > 0
    cdef bint shifted = bias.shape[0] > 0
    cdef Py_ssize_t c, n
    cdef double s, q, m, v, shift, inv
    cdef floating mc, vc
    if scale.shape[0] not in (0, C) or bias.shape[0] not in (0, C) or mean.shape[0] != C \
            or var.shape[0] != C:
        raise ValueError("batch_norm_train_forward: per-channel arrays do not match C")
    if y.shape[0] != N or y.shape[1] != C or y.shape[2] != S:
        raise ValueError("batch_norm_train_forward: y's shape is not x's")
    with nogil:
        for c in prange(C, schedule='static', num_threads=threads_for(N * C * S)):
            s = 0
            q = 0
            for n in range(N):
                _sums(&x[n, c, 0], S, 0.0, &s, &q)
            m = s / count
            v = q / count - m * m
            shift = 0
            if m * m > 64.0 * v:
                # the one-pass variance would lose bits to cancellation: centre on m
                shift = m
                s = 0
                q = 0
                for n in range(N):
                    _sums(&x[n, c, 0], S, shift, &s, &q)
                m = s / count
                v = q / count - m * m
            mc = <floating> (shift + m)
            vc = <floating> (v if v > 0 else 0.0)
            mean[c] = mc
            var[c] = vc
            inv = 1.0 / sqrt(<double> vc + eps)
            _apply_channel(x, c, mc, <floating> (inv * scale[c]) if affine else <floating> inv,
                           bias[c] if shifted else 0, y, relu)


def batch_norm_train_backward(const floating[:, :, ::1] dy,   # IN  (N, C, S)
                              const floating[:, :, ::1] x,    # IN  (N, C, S)
                              const floating[:, :, ::1] top,  # IN  (N, C, S) ReLU output or (0,0,0)
                              const floating[::1] mean,       # IN  (C,) the forward's batch mean
                              const floating[::1] var,        # IN  (C,) and variance
                              const floating[::1] scale,      # IN  (C,), or (0,) for none
                              double eps,
                              double[:, ::1] sums,            # OUT (2, C): sum g, sum g (x - mean)
                              floating[:, :, ::1] dx):        # OUT (N, C, S), may be dy
    """The batch-statistics backward in one pass per channel: batch_norm_grad_sums, the
    per-channel terms, then batch_norm_backward_apply while the channel is in the caches
    (one parallel loop instead of two). g = dy, masked by top > 0 when top is given; dx =
    gain * g - slope * x + offset with gain = scale / sqrt(var + eps), slope = gain / (var +
    eps) * sum(g (x - mean)) / count, offset = slope * mean - gain * sum(g) / count."""
    cdef Py_ssize_t N = x.shape[0]
    cdef Py_ssize_t C = x.shape[1]
    cdef Py_ssize_t S = x.shape[2]
    cdef double count = <double> (N * S)
    cdef bint masked = top.shape[0] > 0
    cdef bint affine = scale.shape[0] > 0
    cdef Py_ssize_t c, n
    cdef double s, q, inv, gain, slope, mean64
    if scale.shape[0] not in (0, C) or mean.shape[0] != C or var.shape[0] != C \
            or sums.shape[0] != 2 or sums.shape[1] != C:
        raise ValueError("batch_norm_train_backward: per-channel arrays do not match C")
    if not _same_shape(dy, x) or not _same_shape(dx, x) or (masked and not _same_shape(top, x)):
        raise ValueError("batch_norm_train_backward: dy, dx and top must have x's shape")
    with nogil:
        for c in prange(C, schedule='static', num_threads=threads_for(N * C * S)):
            mean64 = mean[c]
            s = 0
            q = 0
            for n in range(N):
                _grad_sums(&dy[n, c, 0], &x[n, c, 0], &top[n, c, 0] if masked else NULL, S,
                           mean64, &s, &q)
            sums[0, c] = s
            sums[1, c] = q
            inv = 1.0 / sqrt(<double> var[c] + eps)
            gain = inv * scale[c] if affine else inv
            slope = gain * inv * inv * q / count
            _backward_channel(dy, x, top, masked, c, <floating> gain, <floating> slope,
                              <floating> (slope * mean64 - gain * s / count), dx)
