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

import ctypes
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
    """One cached allocation: the bytes, their first cache-line address, size, and when it
    was last freed (a counter: eviction drops the smallest)."""

    __slots__ = ("memory", "address", "size", "freed")

    def __init__(self, size):
        self.memory = np.empty(size + ALIGN, np.uint8)
        address = self.memory.ctypes.data
        self.address = address + (-address % ALIGN)
        self.size = size
        self.freed = 0


#: the lease class of each block size, by size
_LEASE_TYPES = {}


def _lease_type(size):
    """A ctypes array type of ``size`` bytes whose instances give their block back when they
    die. An array made over one (``np.ndarray(shape, dtype, lease)``) keeps it as its base,
    so the lease dies with the last view of the array. (A ctypes object is a buffer NumPy
    takes in about 1 us; an ``__array_interface__`` object took 2 us.)"""
    cls = _LEASE_TYPES.get(size)
    if cls is None:
        cls = type(f"_Lease{size}", (ctypes.c_char * size,),
                   {"__del__": _give_back, "__slots__": ("block", "cache")})
        _LEASE_TYPES[size] = cls
    return cls


def _give_back(lease):
    cache = lease.cache
    if cache is not None:
        cache._release(lease.block)


#: the most (shape, dtype) pairs whose sizes are remembered (a net has a few dozen)
_PLANS_MAX = 4096


class HostCache:
    """Free blocks by size; thread-safe (leases may die on any thread)."""

    def __init__(self, limit_bytes):
        self.limit = int(limit_bytes)
        self._free = {}                 # size -> [block, ...], most recently freed last
        self._cached = 0
        self._tick = 0
        # (shape, dtype) as the caller spelled them -> (shape tuple, np.dtype, block size or
        # 0 for malloc): the normalisation costs more than the rest of a call
        self._plans = {}
        # reentrant: a lease can die (garbage collection) while this thread holds the lock
        self._lock = threading.RLock()

    def _plan(self, shape, dtype):
        dt = np.dtype(dtype)
        shape_t = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(
            int(n) for n in shape)
        nbytes = math.prod(shape_t) * dt.itemsize
        small = nbytes < MIN_BYTES or dt.hasobject or min(shape_t, default=1) < 0
        plan = (shape_t, dt, 0 if small else -(-nbytes // PAGE) * PAGE)
        try:
            if len(self._plans) >= _PLANS_MAX:
                self._plans.clear()
            self._plans[shape, dtype] = plan
        except TypeError:               # an unhashable shape or dtype spelling
            pass
        return plan

    def empty(self, shape, dtype):
        """An uninitialised C-contiguous array of ``shape`` and ``dtype``. About 1.5 us a
        call (a layer per step makes several): keep this path lean."""
        try:
            shape_t, dt, size = self._plans[shape, dtype]
        except (KeyError, TypeError):
            shape_t, dt, size = self._plan(shape, dtype)
        if not size or self.limit <= 0:
            return np.empty(shape_t, dt)
        block = None
        with self._lock:
            blocks = self._free.get(size)
            if blocks:
                block = blocks.pop()            # the most recently freed: warm
                self._cached -= size
        if block is None:
            block = _Block(size)
        lease = _lease_type(size).from_address(block.address)
        lease.block = block
        lease.cache = self
        return np.ndarray(shape_t, dt, lease)

    def cached_bytes(self):
        """Bytes of free blocks held now."""
        return self._cached

    def clear(self):
        """Drop every free block (live arrays are unaffected)."""
        with self._lock:
            self._free.clear()
            self._cached = 0

    def _release(self, block):
        size = block.size
        if size > self.limit:
            return
        with self._lock:
            self._tick += 1
            block.freed = self._tick
            self._free.setdefault(size, []).append(block)
            self._cached += size
            while self._cached > self.limit:
                # each size's list runs oldest first: the oldest block heads one of them
                oldest = min((b for b in self._free.values() if b), key=lambda b: b[0].freed)
                self._cached -= oldest.pop(0).size


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
