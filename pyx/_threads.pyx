"""OpenMP thread control for every convnet kernel (they share one OpenMP runtime)."""

from _openmp cimport CONVNET_OPENMP, omp_get_max_threads, omp_set_num_threads


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(CONVNET_OPENMP)


def get_max_threads():
    """The number of threads the next OpenMP parallel region will use."""
    return omp_get_max_threads()


def set_num_threads(int n):
    """Set the OpenMP thread count used by the kernels' prange loops."""
    omp_set_num_threads(n)


from cython.parallel cimport prange
from libc.string cimport memcpy


def parallel_copy(const float[::1] src,    # IN  (n,)
                  float[::1] dst):         # OUT (n,)
    """Copy src to dst with every OpenMP thread (one contiguous chunk each): the machine's
    copy bandwidth, against which scripts/bench.py rates the memory-bound layers."""
    cdef Py_ssize_t n = src.shape[0]
    cdef Py_ssize_t chunk = 1 << 16
    cdef Py_ssize_t nchunks = (n + chunk - 1) // chunk
    cdef Py_ssize_t c, start, length
    if n == 0:
        return
    with nogil:
        for c in prange(nchunks, schedule='static'):
            start = c * chunk
            length = min(chunk, n - start)
            memcpy(&dst[start], &src[start], length * sizeof(float))
