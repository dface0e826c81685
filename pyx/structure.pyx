"""Structure kernels on every OpenMP thread: the block copies of Crop and Concat, Eltwise SUM
(and the scaled copy of its backward), PROD and MAX with its argmax.

NumPy's slicing copies and ufuncs run on one thread; on the 2-core machine a copy of a
(8, 64, 128, 128) float32 blob ran at ~16 GB/s there and ~26 GB/s on both cores, which is
where PyTorch's (parallel) cat, narrow and add are. Each element is computed alone, so the
thread count never changes a result.

A strided copy is described by runs: ``length`` contiguous elements, one run per index of
an outer grid ``shape`` (row-major), starting at ``src_base + sum(i_k * src_strides[k])``
in src and likewise in dst (element strides, computed by convnet.backend.cpu from the
arrays' shapes, so every run lies inside both arrays). Work items group whole runs, at
least CHUNK elements each.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int32_t, uintptr_t
from libc.string cimport memcpy, memset

from _openmp cimport omp_get_max_threads

cdef enum:
    CHUNK = 16384         # elements per work item: 64 KB of float32
    GRAIN = 1 << 19       # elements touched below which a kernel runs on one thread: as
                          # pooling's (a thread wake costs more than a small pass saves, and
                          # a recurrent net's step, 64 x 1024 gates, runs beside its
                          # projection's worker thread: two threads there made the benchmark
                          # LSTM's forward 15-25 % slower)


cdef inline int _threads(Py_ssize_t work) noexcept nogil:
    return 1 if work < GRAIN else omp_get_max_threads()


cdef Py_ssize_t _at_least_two(const uintptr_t[::1] inputs) except -1:
    """The number of inputs of a combining kernel, which reads the first two whole."""
    if inputs.shape[0] < 2:
        raise ValueError(f"structure kernel: needs at least 2 inputs, got {inputs.shape[0]}")
    return inputs.shape[0]


def copy_runs(const floating[::1] src,              # IN  flat source array
              floating[::1] dst,                    # OUT flat destination array
              Py_ssize_t src_base, Py_ssize_t dst_base,
              const Py_ssize_t[::1] shape,          # IN  (levels,) outer grid of runs
              const Py_ssize_t[::1] src_strides,    # IN  (levels,) element strides in src
              const Py_ssize_t[::1] dst_strides,    # IN  (levels,) element strides in dst
              Py_ssize_t length):                   # contiguous elements per run
    """Copy every run of the grid from src to dst (see the module docstring)."""
    cdef Py_ssize_t levels = shape.shape[0]
    cdef Py_ssize_t runs = 1
    cdef Py_ssize_t k
    for k in range(levels):
        runs *= shape[k]
    if runs == 0 or length == 0:
        return
    cdef Py_ssize_t per_item = max(CHUNK // length, 1)
    cdef Py_ssize_t items = (runs + per_item - 1) // per_item
    cdef Py_ssize_t item, r, q, i, so, do
    with nogil:
        for item in prange(items, schedule='static', num_threads=_threads(runs * length)):
            for r in range(item * per_item, min((item + 1) * per_item, runs)):
                # the run's offsets from its grid index, last level fastest
                q = r
                so = src_base
                do = dst_base
                for k in range(levels - 1, -1, -1):
                    i = q % shape[k]
                    q = q // shape[k]
                    so = so + i * src_strides[k]
                    do = do + i * dst_strides[k]
                memcpy(&dst[do], &src[so], length * sizeof(floating))


def scale_copy(const floating[::1] src,   # IN  (n,)
               floating[::1] dst,         # OUT (n,) = coeff * src; may be src
               double coeff):
    """dst = coeff * src, a plain copy when coeff is 1 (0 * inf is NaN, as in NumPy)."""
    cdef Py_ssize_t n = src.shape[0]
    cdef Py_ssize_t chunks = (n + CHUNK - 1) // CHUNK
    cdef floating c = <floating> coeff
    cdef bint plain = coeff == 1.0
    cdef Py_ssize_t k, i, end
    if n == 0:
        return
    with nogil:
        for k in prange(chunks, schedule='static', num_threads=_threads(n)):
            end = min((k + 1) * CHUNK, n)
            if plain:
                if &dst[0] != &src[0]:
                    memcpy(&dst[k * CHUNK], &src[k * CHUNK], (end - k * CHUNK) * sizeof(floating))
            else:
                for i in range(k * CHUNK, end):
                    dst[i] = c * src[i]


def zero(floating[::1] dst):              # OUT (n,) = 0
    cdef Py_ssize_t n = dst.shape[0]
    cdef Py_ssize_t chunks = (n + CHUNK - 1) // CHUNK
    cdef Py_ssize_t k, end
    with nogil:
        for k in prange(chunks, schedule='static', num_threads=_threads(n)):
            end = min((k + 1) * CHUNK, n)
            memset(&dst[k * CHUNK], 0, (end - k * CHUNK) * sizeof(floating))


def weighted_sum(const uintptr_t[::1] inputs,   # IN  (K >= 2,) addresses of K arrays of n
                 const double[::1] coeffs,      # IN  (K,)                 values
                 floating[::1] y):              # OUT (n,) = sum_k coeffs[k] * inputs[k]
    """y = c_0 x_0 + c_1 x_1 + ... in that order per element (a coefficient of 1 multiplies
    exactly). y may be inputs[0] or inputs[1] (each chunk reads input k >= 2 after writing
    the sum of the inputs before it)."""
    cdef Py_ssize_t n = y.shape[0]
    cdef Py_ssize_t K = _at_least_two(inputs)
    cdef Py_ssize_t chunks = (n + CHUNK - 1) // CHUNK
    cdef Py_ssize_t k, j, i, start, end
    cdef const floating* x
    cdef const floating* x1
    cdef floating c, c1
    if n == 0:
        return
    with nogil:
        for k in prange(chunks, schedule='static', num_threads=_threads(n * K)):
            start = k * CHUNK
            end = min(start + CHUNK, n)
            # the first pair in one pass
            x = <const floating*> inputs[0]
            x1 = <const floating*> inputs[1]
            c = <floating> coeffs[0]
            c1 = <floating> coeffs[1]
            for i in range(start, end):
                y[i] = c * x[i] + c1 * x1[i]
            for j in range(2, K):
                x = <const floating*> inputs[j]
                c = <floating> coeffs[j]
                for i in range(start, end):
                    y[i] = y[i] + c * x[i]


def product(const uintptr_t[::1] inputs,    # IN  (K >= 2,) addresses of K arrays of n values
            floating[::1] y):               # OUT (n,) = inputs[0] * inputs[1] * ...
    """y = x_0 x_1 ... x_{K-1}, multiplied in that order per element (Eltwise PROD, and a
    two-bottom PROD's gradients dy * x_other)."""
    cdef Py_ssize_t n = y.shape[0]
    cdef Py_ssize_t K = _at_least_two(inputs)
    cdef Py_ssize_t chunks = (n + CHUNK - 1) // CHUNK
    cdef Py_ssize_t k, j, i, start, end
    cdef const floating* x
    cdef const floating* x1
    if n == 0:
        return
    with nogil:
        for k in prange(chunks, schedule='static', num_threads=_threads(n * K)):
            start = k * CHUNK
            end = min(start + CHUNK, n)
            x = <const floating*> inputs[0]
            x1 = <const floating*> inputs[1]
            for i in range(start, end):
                y[i] = x[i] * x1[i]
            for j in range(2, K):
                x = <const floating*> inputs[j]
                for i in range(start, end):
                    y[i] = y[i] * x[i]


def maximum(const uintptr_t[::1] inputs,    # IN  (K >= 2,) addresses of K arrays of n values
            floating[::1] y,                # OUT (n,) = the largest input
            int32_t[::1] argmax):           # OUT (n,) = the first input holding it
    """y = max_k x_k and argmax = the lowest k that holds it (an input replaces the running
    maximum only when greater: a NaN in input 0 stays, a later NaN never enters), as
    Caffe's Eltwise MAX and the CUDA kernels."""
    cdef Py_ssize_t n = y.shape[0]
    cdef Py_ssize_t K = _at_least_two(inputs)
    cdef Py_ssize_t chunks = (n + CHUNK - 1) // CHUNK
    cdef Py_ssize_t k, j, i, start, end
    cdef const floating* x
    cdef const floating* x1
    cdef floating v, best
    cdef int32_t a
    if n == 0:
        return
    with nogil:
        for k in prange(chunks, schedule='static', num_threads=_threads(n * K)):
            start = k * CHUNK
            end = min(start + CHUNK, n)
            # the first pair in one pass
            x = <const floating*> inputs[0]
            x1 = <const floating*> inputs[1]
            for i in range(start, end):
                v = x1[i]
                best = x[i]
                y[i] = v if v > best else best
                argmax[i] = <int32_t> (v > best)
            for j in range(2, K):
                x = <const floating*> inputs[j]
                for i in range(start, end):
                    v = x[i]
                    best = y[i]
                    a = argmax[i]
                    # selects, not a branch, so that the loop vectorises
                    y[i] = v if v > best else best
                    argmax[i] = <int32_t> j if v > best else a


def maximum_backward(const floating[::1] dy,        # IN  (n,)
                     const int32_t[::1] argmax,     # IN  (n,) from maximum
                     int32_t index,
                     floating[::1] dx):             # OUT (n,) = dy where argmax == index
    """dx = dy where input ``index`` held the maximum, else 0 (a select: a NaN in dy stays
    at its own input)."""
    cdef Py_ssize_t n = dy.shape[0]
    cdef Py_ssize_t chunks = (n + CHUNK - 1) // CHUNK
    cdef Py_ssize_t k, i, end
    with nogil:
        for k in prange(chunks, schedule='static', num_threads=_threads(n)):
            end = min((k + 1) * CHUNK, n)
            for i in range(k * CHUNK, end):
                dx[i] = dy[i] if argmax[i] == index else 0
