"""ReLU kernels: element-wise passes over flat arrays, split into fixed chunks over OpenMP
threads (each element is computed alone, so the thread count never changes a result).

Caffe's ReLU: y = x where x > 0, negative_slope * x elsewhere; the gradient is dy where
x > 0 and negative_slope * dy elsewhere (x the bottom, or the top when negative_slope >= 0:
same sign). The gradient is dy times 1 or negative_slope (as Caffe writes it), so a NaN in dy
stays NaN; a NaN in x stays NaN in y, as NumPy's maximum and PyTorch's relu keep it.
"""

from cython cimport floating
from cython.parallel cimport prange

cdef enum:
    CHUNK = 16384   # elements per work item: 64 KB of float32, large next to a thread start


def relu_forward(const floating[::1] x,     # IN  (n,)
                 floating[::1] y,           # OUT (n,), may be x
                 double negative_slope):
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t chunks = (n + CHUNK - 1) // CHUNK
    cdef floating slope = <floating> negative_slope
    cdef Py_ssize_t k, i, end
    cdef floating v
    with nogil:
        for k in prange(chunks, schedule='static'):
            end = min((k + 1) * CHUNK, n)
            if slope == 0:
                for i in range(k * CHUNK, end):
                    v = x[i]
                    y[i] = 0 if v <= 0 else v           # NaN is not <= 0: kept
            else:
                for i in range(k * CHUNK, end):
                    v = x[i]
                    y[i] = v if v > 0 else slope * v


def relu_backward(const floating[::1] dy,   # IN  (n,)
                  const floating[::1] ref,  # IN  (n,) the bottom, or the top (slope >= 0)
                  floating[::1] dx,         # OUT (n,), may be dy
                  double negative_slope):
    cdef Py_ssize_t n = dy.shape[0]
    cdef Py_ssize_t chunks = (n + CHUNK - 1) // CHUNK
    cdef floating slope = <floating> negative_slope
    cdef Py_ssize_t k, i, end
    with nogil:
        for k in prange(chunks, schedule='static'):
            end = min((k + 1) * CHUNK, n)
            for i in range(k * CHUNK, end):
                dx[i] = dy[i] * (1 if ref[i] > 0 else slope)
