"""A caching allocator for the CPU backend's arrays (Caffe allocates a Net's blobs once; a
NumPy Net would otherwise ask malloc for every top and diff on every iteration).

Large arrays freed by glibc go back to the kernel (``munmap`` or a heap trim), and the next
iteration's array of the same size is paged in again, zero-filled page by page. On the default
training network that was 2,400 page faults and about 17 ms of CPU time per step (132 against
115 ms at one thread with ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:...``, measured with
``resource.getrusage``). This cache keeps such blocks instead:

- :meth:`HostCache.empty` hands out an ndarray viewing a cached block of the same rounded
  size, or a new one. The array's ``base`` is a small lease object; when the last view of the
  array dies, the lease's ``__del__`` returns the block to the cache. So a block is reused
  only after nothing can see it, exactly as with malloc.
- Blocks under ``MIN_BYTES`` go to NumPy directly (malloc reuses small blocks well).
- The cache holds at most ``limit`` bytes of free blocks (``CONVNET_HOST_CACHE_MB``, default
  1024; 0 turns caching off); past it the blocks freed longest ago are dropped.
"""

import collections
import math
import os
import threading
import warnings

import numpy as np

#: smaller arrays are left to malloc
MIN_BYTES = 256 * 1024
#: block sizes are rounded up to whole pages so nearby sizes share blocks
PAGE = 4096
DEFAULT_LIMIT_MB = 1024
#: arrays start on a cache line (NumPy's own allocations are 16-byte aligned)
ALIGN = 64


class _Block:
    """One cached allocation: the bytes, their first cache-line address and size."""

    __slots__ = ("memory", "address", "size")

    def __init__(self, size):
        self.memory = np.empty(size + ALIGN, np.uint8)
        address = self.memory.ctypes.data
        self.address = address + (-address % ALIGN)
        self.size = size


class _Lease:
    """Owner of one cached block while an array views it (the array's ``base``)."""

    __slots__ = ("block", "cache", "__array_interface__")

    def __init__(self, block, cache, shape, typestr):
        self.block = block
        self.cache = cache
        self.__array_interface__ = {"shape": shape, "typestr": typestr, "version": 3,
                                    "data": (block.address, False)}

    def __del__(self):
        cache = self.cache
        if cache is not None:
            cache._release(self.block)


#: np.dtype of the dtype arguments seen (np.dtype() costs more than the rest of a lookup)
_DTYPES = {}


class HostCache:
    """Free blocks by size; thread-safe (leases may die on any thread)."""

    def __init__(self, limit_bytes):
        self.limit = int(limit_bytes)
        self._free = collections.defaultdict(dict)     # size -> {id(block): block}
        self._order = collections.OrderedDict()          # id(block) -> block, oldest first
        self._cached = 0
        # reentrant: a lease can die (garbage collection) while this thread holds the lock
        self._lock = threading.RLock()

    def empty(self, shape, dtype):
        """An uninitialised C-contiguous array of ``shape`` and ``dtype``. About 2 us a
        call (a layer per step makes several): keep this path lean."""
        try:
            dt = _DTYPES[dtype]
        except (KeyError, TypeError):
            dt = np.dtype(dtype)
            try:
                _DTYPES[dtype] = dt
            except TypeError:           # an unhashable dtype spelling
                pass
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        nbytes = math.prod(shape) * dt.itemsize
        if nbytes < MIN_BYTES or self.limit <= 0 or dt.hasobject:
            return np.empty(shape, dt)
        size = -(-nbytes // PAGE) * PAGE
        block = None
        with self._lock:
            blocks = self._free.get(size)
            if blocks:
                key, block = blocks.popitem()          # the most recently freed: warm
                del self._order[key]
                self._cached -= size
        if block is None:
            block = _Block(size)
        return np.asarray(_Lease(block, self, tuple(map(int, shape)), dt.str))

    def cached_bytes(self):
        """Bytes of free blocks held now."""
        return self._cached

    def clear(self):
        """Drop every free block (live arrays are unaffected)."""
        with self._lock:
            self._free.clear()
            self._order.clear()
            self._cached = 0

    def _release(self, block):
        size = block.size
        if size > self.limit:
            return
        with self._lock:
            self._free[size][id(block)] = block
            self._order[id(block)] = block
            self._cached += size
            while self._cached > self.limit:
                key, old = self._order.popitem(last=False)
                del self._free[old.size][key]
                self._cached -= old.size


def _limit_from_env():
    raw = os.environ.get("CONVNET_HOST_CACHE_MB", "").strip()
    if not raw:
        return DEFAULT_LIMIT_MB * 2 ** 20
    try:
        megabytes = float(raw)
    except ValueError:
        megabytes = -1.0
    if not megabytes >= 0:
        warnings.warn(f"CONVNET_HOST_CACHE_MB must be a number of megabytes >= 0, got "
                      f"{raw!r}; using {DEFAULT_LIMIT_MB}", RuntimeWarning, stacklevel=2)
        return DEFAULT_LIMIT_MB * 2 ** 20
    return megabytes * 2 ** 20


#: the process's cache, used by convnet.backend.cpu.empty
cache = HostCache(_limit_from_env())
