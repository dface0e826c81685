"""convnet: Caffe-style convolutional networks for Python.

Layers with explicit forward and backward passes (``convnet.layers``), a Net of named blobs,
SGD and Adam solvers with Caffe's lr policies, atomic snapshots, and two backends: Cython +
OpenMP + BLAS on the CPU, CUDA kernels on the GPU (``convnet.cuda``).
"""

import importlib

from convnet.errors import (ConfigError, ConvnetError, DataError, DeviceError,
                            FileFormatError, ShapeError, StateError)
from convnet.fillers import seed

__version__ = "0.1.0"

_LAZY = {
    "Net": "convnet.net",
    "SGDSolver": "convnet.solvers",
    "AdamSolver": "convnet.solvers",
}

__all__ = ["__version__", "set_num_threads", "get_num_threads", "openmp_enabled", "seed",
           "ConvnetError", "ConfigError", "ShapeError", "DataError", "StateError",
           "DeviceError", "FileFormatError", *_LAZY]


def set_num_threads(n):
    """Use ``n`` threads for convnet's OpenMP loops and for BLAS (both at once, never
    oversubscribed: a kernel uses one or the other), in every Python thread that runs
    kernels (each applies it before its next layer call). ``n`` is an int from 1 to
    ``convnet.backend.cpu.MAX_THREADS`` (4 times the cores: more threads only add stacks
    and contention). ``OMP_NUM_THREADS`` sets the default."""
    import numbers

    from convnet.backend import cpu
    from convnet.errors import shown
    if not isinstance(n, numbers.Integral) or isinstance(n, bool) or not 1 <= n <= \
            cpu.MAX_THREADS:
        raise ConfigError(f"set_num_threads: n must be a positive int, at most "
                          f"{cpu.MAX_THREADS} (4 x {cpu.MAX_THREADS // 4} cores), got {shown(n)}")
    cpu.set_num_threads(int(n))


def get_num_threads():
    """The number of threads convnet's OpenMP loops use."""
    from convnet.backend import cpu
    return cpu.get_num_threads()


def openmp_enabled():
    """True when the CPU kernels were compiled with OpenMP."""
    from convnet.backend import cpu
    return cpu.openmp_enabled()


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'convnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
