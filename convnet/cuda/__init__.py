"""convnet's GPU side: libconvnet_cuda.so (compiled CUDA kernels behind a C API) through ctypes.

>>> from convnet import cuda
>>> if cuda.is_available():
...     x = cuda.to_device(np.ones((2, 3, 8, 8), np.float32))
...     layer.to("cuda").forward(x).get()
... else:
...     print(cuda.unavailable_reason())

:func:`is_available` never raises: it loads the library, checks its ABI version and counts the
GPUs, and keeps what went wrong for :func:`unavailable_reason`. Every failing CUDA call raises
:class:`CudaError` with CUDA's message.

The host build: ``use_host_build()`` (or ``CONVNET_CUDA_HOST=1`` in the environment) loads
``libconvnet_cuda_host.so`` instead, the same ``cuda/*.cu`` sources compiled for the CPU by the
C++ compiler (every kernel runs with one thread per block; GEMM on a CPU sgemm). It is for
testing the kernels' source without a GPU (CI does), not for speed; ``is_host_build()`` tells
which library is loaded. ``CONVNET_CUDA_SYNC=1`` makes every kernel launch wait and check,
so that an asynchronous fault names its kernel (debugging); ``CONVNET_CUDA_TF32=1`` lets
cuBLAS use TF32 tensor cores (faster GEMMs, about 10 bits of mantissa).
"""

import threading

import numpy as np

from convnet.cuda._lib import CudaError
from convnet.cuda.array import DeviceArray, from_numpy

_lock = threading.Lock()
_available = None
_reason = ""


def is_available():
    """True when the CUDA library loads and sees at least one GPU. Never raises."""
    global _available, _reason
    with _lock:
        if _available is None:
            try:
                from convnet.cuda import _lib
                _lib.load()
                count = _lib.device_count()
                _available = count > 0
                _reason = "" if _available else "no CUDA GPU was found"
            except Exception as exc:   # any failure means "not available", with its reason
                _available = False
                _reason = str(exc) or type(exc).__name__
        return _available


def unavailable_reason():
    """Why :func:`is_available` is False ("" when it is True)."""
    is_available()
    return _reason


def _reset():
    global _available, _reason
    with _lock:
        _available = None
        _reason = ""


def use_host_build(enabled=True):
    """Switch to the host build (``enabled=True``), back to the GPU build (False), or to what
    ``$CONVNET_CUDA_HOST`` says (None). DeviceArrays made before the switch become unusable
    (DeviceError); move layers and nets back to the CPU first."""
    from convnet.cuda import _lib
    _lib.select_host_build(enabled)
    _reset()


def is_host_build():
    """True when the CUDA library in use is the host build (no GPU involved). Loads the
    library; OSError when it cannot be loaded."""
    from convnet.cuda import _lib
    return bool(_lib.load().convnet_is_host_build())


def host_waits():
    """How many times the library has waited for the GPU since it loaded (stream
    synchronisations, device-to-host copies included): take the difference around a training
    step to see what it waits for."""
    from convnet.cuda import _lib
    count = _lib.byref_int64()
    _lib.call("convnet_host_waits", _lib.ref(count))
    return int(count.value)


def memory_in_use():
    """Bytes of device memory held by live allocations (the device pool's used bytes)."""
    from convnet.cuda import _lib
    used = _lib.byref_int64()
    _lib.call("convnet_memory_in_use", _lib.ref(used))
    return int(used.value)


def to_device(array):
    """A DeviceArray holding ``array`` (a NumPy array or anything NumPy converts; a
    DeviceArray is returned as it is)."""
    if isinstance(array, DeviceArray):
        return array
    return from_numpy(np.asarray(array))


def synchronize():
    """Wait for all queued GPU work (raises CudaError for an asynchronous failure)."""
    from convnet.cuda import _lib
    _lib.call("convnet_synchronize", None)


__all__ = ["CudaError", "DeviceArray", "is_available", "unavailable_reason", "to_device",
           "synchronize", "use_host_build", "is_host_build", "memory_in_use", "host_waits"]
