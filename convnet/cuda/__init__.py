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
           "synchronize"]
