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
