"""The CPU backend: the only module that imports the compiled ``convnet._cpu`` kernels.

Functions here take validated, C-contiguous NumPy arrays (float32 or float64 unless named
otherwise) and preallocated outputs; the CUDA backend (``convnet.backend.cuda``) has the same
names with DeviceArrays. Thread policy: OpenMP loops in the kernels, BLAS for the gemms;
:func:`set_num_threads` sets both.
"""

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
    return np.ascontiguousarray(x, dtype=dtype)


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


def set_num_threads(n):
    """Use ``n`` threads for OpenMP loops and for BLAS (never both at once in one kernel)."""
    _threads.set_num_threads(int(n))
    _blas().limit(limits=int(n), user_api="blas")


def get_num_threads():
    return _threads.get_max_threads()


def blas_threads(n):
    """Context manager holding BLAS to ``n`` threads (e.g. 1 inside an OpenMP prange)."""
    return _blas().limit(limits=int(n), user_api="blas")
