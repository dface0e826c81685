"""convnet: Caffe-style convolutional networks for Python.

Layers with explicit forward and backward passes (``convnet.layers``), a Net of named blobs,
SGD and Adam solvers with Caffe's lr policies, atomic snapshots, and two backends: Cython +
OpenMP + BLAS on the CPU, CUDA kernels on the GPU (``convnet.cuda``).
"""

import importlib
import os


#: libgomp's spin before an idle thread sleeps, when the user set neither variable
SPIN_COUNT = "3000"


def _default_wait_policy():
    """Idle OpenMP threads spin for about 85 us, then sleep, unless the user chose a policy.

    libgomp reads OMP_WAIT_POLICY / GOMP_SPINCOUNT once, when it initialises (the first compiled
    module loads it), so this runs before any of them. Its default spins each idle thread for
    300k iterations (~8.5 ms at 28 ns a pause on the 2-core AMD EPYC) after every parallel
    loop: on a machine where another program uses a core, the spinning threads take turns with
    it and every loop waits for the slowest (measured: the default training run fell from ~120
    to 25-30 img/s beside one busy process). Waiting passively instead costs a futex wake per
    loop (about 100 us on that VM), 15 % of the default training step. A bounded spin of 3000
    iterations catches the next loop of a step without a wake and gives the core back within
    ~85 us. The numbers are in README's "Threads on a busy machine".
    """
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT


def _check_built():
    """A source checkout that was never built in place would fail later with "cannot import
    name '_threads' from 'convnet._cpu'"; say what happened and how to fix it instead."""
    from importlib.machinery import EXTENSION_SUFFIXES
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_cpu")
    try:
        names = os.listdir(here)
    except OSError:
        names = []
    if not any(n.startswith("_threads") and n.endswith(tuple(EXTENSION_SUFFIXES))
               for n in names):
        raise ImportError(
            f"convnet was imported from {os.path.dirname(os.path.dirname(here))}, a source "
            f"tree whose compiled modules are not built (no {here}{os.sep}_threads*.so). "
            f"Run from another folder to use the installed convnet (pip install .), or build "
            f"in place: python setup.py build_ext --inplace")


_default_wait_policy()
_check_built()

from convnet.errors import (ConfigError, ConvnetError, DataError,  # noqa: E402
                            DeviceError, FileFormatError, ShapeError, StateError)
from convnet.fillers import seed  # noqa: E402

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
