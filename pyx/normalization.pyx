"""BatchNorm and ReLU kernels: per-channel sums and the element-wise passes, one channel per
work item (a static prange over C), so each channel's sums run in one fixed order and the
results are bit-identical for any thread count.

Arrays are viewed as (N, C, S), S = the product of the spatial sizes; per-channel vectors are
(C,). Sums accumulate in double: ``batch_norm_sums`` takes a shift per channel (the running
mean, say) so that E[(x - k)^2] - E[x - k]^2 loses no precision when the mean is large, and
the layer makes a second, centred pass when the shift was far off. A BatchNorm followed by an
in-place ReLU runs as one pass: ``relu`` in ``batch_norm_apply`` and the mask from the ReLU's
output (``top``) in the backward kernels.

Measured on the 2-core AVX2 machine, float32 (16, 16, 64, 64), 1 thread, CPU time: NumPy's
forward (two statistics passes, then y = a*x + b) and backward took several passes each;
these kernels read x twice in the forward (sums, apply) and dy, x twice in the backward.
"""

from cython cimport floating
from cython.parallel cimport prange

from _openmp cimport omp_get_max_threads

# A pass over less than GRAIN elements runs on one thread: with passive waiting (see
# convnet/__init__.py) a thread start costs a futex wake, about 100 us on this 2-core VM.
# Measured in the default training step (BN + in-place ReLU, forward / backward, ms, 1 vs 2
# threads, idle machine): (16, 64, 8, 8) 0.34 / 0.40 vs 0.61 / 0.64; (16, 64, 16, 16)
# 0.66 / 0.84 vs 0.81 / 0.94; (16, 32, 32, 32) 0.92 vs 0.94; (16, 16, 64, 64) faster on two.
cdef enum:
    GRAIN = 1 << 19


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


def batch_norm_sums(const floating[:, :, ::1] x,     # IN  (N, C, S)
                    const double[::1] shift,         # IN  (C,)
                    double[:, ::1] sums):            # OUT (2, C): sum(x - k), sum((x - k)^2)
    """Per-channel sums of x - shift and of its square over the N and S axes."""
    cdef Py_ssize_t N = x.shape[0]
    cdef Py_ssize_t C = x.shape[1]
    cdef Py_ssize_t S = x.shape[2]
    cdef Py_ssize_t c, n
    cdef double s, q
    with nogil:
        for c in prange(C, schedule='static', num_threads=threads_for(N * C * S)):
            s = 0
            q = 0
            for n in range(N):
                _sums(&x[n, c, 0], S, shift[c], &s, &q)
            sums[0, c] = s
            sums[1, c] = q


def batch_norm_apply(const floating[:, :, ::1] x,    # IN  (N, C, S)
                     const floating[::1] mean,       # IN  (C,)
                     const floating[::1] a,          # IN  (C,)
                     const floating[::1] b,          # IN  (C,)
                     floating[:, :, ::1] y,          # OUT (N, C, S), may be x
                     bint relu):
    """y = a_c * (x - mean_c) + b_c per channel (a constant channel gives exactly b_c); then
    max(y, 0) with ``relu`` (a fused in-place ReLU)."""
    cdef Py_ssize_t N = x.shape[0]
    cdef Py_ssize_t C = x.shape[1]
    cdef Py_ssize_t S = x.shape[2]
    cdef Py_ssize_t c, n, i
    cdef floating mc, ac, bc, v
    cdef const floating* src
    cdef floating* dst
    with nogil:
        for c in prange(C, schedule='static', num_threads=threads_for(N * C * S)):
            mc = mean[c]
            ac = a[c]
            bc = b[c]
            for n in range(N):
                src = &x[n, c, 0]
                dst = &y[n, c, 0]
                if relu:
                    for i in range(S):
                        v = ac * (src[i] - mc) + bc
                        dst[i] = 0 if v <= 0 else v     # as activation.relu_forward
                else:
                    for i in range(S):
                        dst[i] = ac * (src[i] - mc) + bc


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


def batch_norm_backward_apply(const floating[:, :, ::1] dy,   # IN  (N, C, S)
                              const floating[:, :, ::1] x,    # IN  (N, C, S)
                              const floating[:, :, ::1] top,  # IN  (N, C, S) or (0, 0, 0)
                              const floating[::1] gain,       # IN  (C,)
                              const floating[::1] slope,      # IN  (C,)
                              const floating[::1] offset,     # IN  (C,)
                              floating[:, :, ::1] dx):        # OUT (N, C, S), may be dy
    """dx = gain_c * g - slope_c * x + offset_c, g = dy (masked by top > 0 when top is
    given): the batch-norm input gradient with the per-channel terms folded in by the layer."""
    cdef Py_ssize_t N = x.shape[0]
    cdef Py_ssize_t C = x.shape[1]
    cdef Py_ssize_t S = x.shape[2]
    cdef bint masked = top.shape[0] > 0
    cdef Py_ssize_t c, n, i
    cdef floating gc, sc, oc, g
    cdef floating one = 1, zero = 0
    cdef const floating* d
    cdef const floating* xs
    cdef const floating* t
    cdef floating* out
    with nogil:
        for c in prange(C, schedule='static', num_threads=threads_for(N * C * S)):
            gc = gain[c]
            sc = slope[c]
            oc = offset[c]
            for n in range(N):
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
