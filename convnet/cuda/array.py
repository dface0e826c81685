"""DeviceArray: a C-contiguous buffer in GPU memory with a NumPy-like shape and dtype."""

import ctypes
import math
import numbers

import numpy as np

from convnet.cuda import _lib
from convnet.errors import DeviceError, ShapeError

#: dtypes a DeviceArray may hold; kernels compute in float32, the others are labels, masks,
#: indices, dropout keep-masks and label maps carried through unchanged
SUPPORTED = tuple(np.dtype(t) for t in (np.float32, np.float64, np.int32, np.int64, np.uint8,
                                        np.bool_, np.int8, np.int16, np.uint16, np.uint32,
                                        np.uint64))


def _dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in SUPPORTED:
        raise DeviceError(f"a DeviceArray cannot hold dtype {dt.name}; supported: "
                          f"{', '.join(d.name for d in SUPPORTED)}")
    return dt


def _shape(shape):
    if isinstance(shape, numbers.Integral):
        shape = (shape,)
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise ShapeError(f"negative dimension in shape {shape}")
    return shape


class _Buffer:
    """Owns one device allocation of the library that made it; freed once, when closed or
    garbage-collected. A closed buffer refuses to hand out its (freed) address."""

    def __init__(self, nbytes):
        handle = _lib.void_p()
        _lib.call("convnet_malloc", _lib.ref(handle), int(nbytes))
        self.lib = _lib.load()
        self.ptr = handle.value or 0
        self.nbytes = int(nbytes)
        self.closed = False

    def address(self):
        """The base address; DeviceError once freed, or when another CUDA library (the GPU
        build versus the host build) has been loaded since it was allocated."""
        if self.closed:
            raise DeviceError("this DeviceArray was closed (its device memory is freed); "
                              "make a new one")
        if self.lib is not _lib.load():
            raise DeviceError("this DeviceArray belongs to a CUDA library that is no longer "
                              "the loaded one (convnet.cuda.use_host_build switched it)")
        return self.ptr

    def free(self):
        ptr, self.ptr = self.ptr, 0
        self.closed = True
        if ptr and self.lib is not None:
            status = self.lib.convnet_free(ptr)
            if status != _lib.OK and self.lib is _lib.current():
                _lib._check(status, "convnet_free")

    def __del__(self):
        try:
            self.free()
        except Exception:   # interpreter shutdown or a dead context: nothing left to free
            pass


class DeviceArray:
    """An n-d array in GPU memory (C-contiguous), the CUDA backend's counterpart of ndarray.

    ``DeviceArray(shape, dtype=float32)`` allocates (uninitialised); :func:`convnet.cuda.
    to_device` uploads a NumPy array and ``.get()`` downloads. ``arr[...] = scalar`` fills,
    ``arr[...] = other`` copies (a DeviceArray, or a NumPy array that is uploaded) of the same
    shape. ``reshape`` returns a view of the same memory; ``copy()`` a new array. Memory is
    freed when the last view goes away, or at once by :meth:`close`.
    ``__cuda_array_interface__`` (version 3) lets CuPy, PyTorch and Numba use it without a copy.

    >>> a = convnet.cuda.to_device(np.arange(6, dtype=np.float32).reshape(2, 3))
    >>> a.reshape(3, 2).get()[2, 1]
    5.0
    """

    def __init__(self, shape, dtype=np.float32, *, _buffer=None, _offset=0):
        self._shape = _shape(shape)
        self._dtype = _dtype(dtype)
        self._offset = int(_offset)
        if _buffer is None:
            _buffer = _Buffer(self.nbytes)
        self._buffer = _buffer

    # ------------------------------------------------------------------ attributes
    @property
    def shape(self):
        return self._shape

    @property
    def dtype(self):
        return self._dtype

    @property
    def ndim(self):
        return len(self._shape)

    @property
    def size(self):
        return math.prod(self._shape)

    @property
    def itemsize(self):
        return self._dtype.itemsize

    @property
    def nbytes(self):
        return self.size * self._dtype.itemsize

    @property
    def ptr(self):
        """The device address of element 0 (0 for an empty array)."""
        base = self._buffer.address()
        return base + self._offset if base else 0

    @property
    def device(self):
        return "cuda"

    def __len__(self):
        if not self._shape:
            raise TypeError("len() of a 0-d DeviceArray")
        return self._shape[0]

    def __repr__(self):
        return f"DeviceArray(shape={self._shape}, dtype={self._dtype.name})"

    @property
    def __cuda_array_interface__(self):
        return {
            "shape": self._shape,
            "typestr": self._dtype.str,
            "data": (self.ptr, False),
            "strides": None,
            "version": 3,
            # work is queued on the legacy default stream
            "stream": 1,
        }

    def __array__(self, dtype=None, copy=None):
        raise TypeError("a DeviceArray lives in GPU memory; call .get() for a NumPy copy "
                        "(implicit conversion is refused so that CPU and GPU arrays never mix "
                        "silently)")

    # ------------------------------------------------------------------ memory
    def close(self):
        """Free the device memory now; this array and every view of it then raise
        DeviceError instead of handing a freed (NULL) address to a kernel."""
        self._buffer.free()

    @property
    def closed(self):
        """True once :meth:`close` freed the memory (of this array or of a view of it)."""
        return self._buffer.closed

    def get(self):
        """A NumPy copy of the data."""
        out = np.empty(self._shape, dtype=self._dtype)
        if out.nbytes:
            _lib.call("convnet_memcpy_dtoh", _lib.host_address(out), self.ptr, out.nbytes, None)
        return out

    def copy(self):
        out = DeviceArray(self._shape, self._dtype)
        if self.nbytes:
            _lib.call("convnet_memcpy_dtod", out.ptr, self.ptr, self.nbytes, None)
        return out

    def astype(self, dtype):
        """A copy converted to ``dtype`` (through the host)."""
        dt = _dtype(dtype)
        if dt == self._dtype:
            return self.copy()
        return from_numpy(self.get().astype(dt))

    def reshape(self, *shape):
        """A view with a new shape of the same size (one dimension may be -1)."""
        if len(shape) == 1 and not isinstance(shape[0], numbers.Integral):
            shape = tuple(shape[0])
        shape = [int(d) for d in shape]
        if shape.count(-1) > 1:
            raise ShapeError(f"can only infer one dimension, got shape {tuple(shape)}")
        if -1 in shape:
            known = math.prod(d for d in shape if d != -1)
            if known == 0 or self.size % known:
                raise ShapeError(f"cannot reshape an array of size {self.size} into "
                                 f"{tuple(shape)}")
            shape[shape.index(-1)] = self.size // known
        if math.prod(shape) != self.size:
            raise ShapeError(f"cannot reshape an array of size {self.size} into {tuple(shape)}")
        return DeviceArray(shape, self._dtype, _buffer=self._buffer, _offset=self._offset)

    def fill(self, value):
        """Set every element to ``value`` (converted to the dtype)."""
        if not self.size:
            return
        host = np.array(value, dtype=self._dtype)
        if not host.any():
            _lib.call("convnet_memset", self.ptr, 0, self.nbytes, None)
            return
        _lib.call("convnet_fill", self.ptr, self.size, self.itemsize, _lib.host_address(host),
                  None)

    def __setitem__(self, key, value):
        if not (key is Ellipsis or key == slice(None) or key == ()):
            raise TypeError("a DeviceArray supports only whole-array assignment "
                            "(arr[...] = value)")
        if isinstance(value, DeviceArray):
            if value.shape != self._shape:
                raise ShapeError(f"cannot assign shape {value.shape} to shape {self._shape}")
            if value.dtype != self._dtype:
                value = value.astype(self._dtype)
            if self.nbytes and value.ptr != self.ptr:
                _lib.call("convnet_memcpy_dtod", self.ptr, value.ptr, self.nbytes, None)
            return
        if isinstance(value, (numbers.Number, np.generic)) and np.ndim(value) == 0:
            self.fill(value)
            return
        host = np.ascontiguousarray(value, dtype=self._dtype)
        if host.ndim == 0:
            self.fill(host[()])
            return
        if host.shape != self._shape:
            raise ShapeError(f"cannot assign shape {host.shape} to shape {self._shape}")
        if self.nbytes:
            _lib.call("convnet_memcpy_htod", self.ptr, _lib.host_address(host), self.nbytes,
                      None)

    def __getitem__(self, key):
        raise TypeError("a DeviceArray cannot be indexed; call .get() for a NumPy copy")


def from_numpy(array, dtype=None):
    """Upload ``array`` (anything NumPy can convert) as a new DeviceArray."""
    host = np.ascontiguousarray(array, dtype=dtype)
    out = DeviceArray(host.shape, host.dtype)
    if host.nbytes:
        _lib.call("convnet_memcpy_htod", out.ptr, _lib.host_address(host), host.nbytes, None)
    return out


__all__ = ["DeviceArray", "from_numpy"]
