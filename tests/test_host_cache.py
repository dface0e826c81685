"""The CPU backend's caching allocator (convnet.backend.host_cache)."""

import gc
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from convnet.backend import cpu
from convnet.backend.host_cache import ALIGN, MIN_BYTES, HostCache

BIG = (256, 1024)       # 1 MiB of float32: cached


def _address(a):
    return a.__array_interface__["data"][0]


def test_block_is_reused_only_after_every_view_died():
    cache = HostCache(64 * 2 ** 20)
    a = cache.empty(BIG, np.float32)
    where = _address(a)
    view = a[3:7]
    del a
    b = cache.empty(BIG, np.float32)            # the view still sees the first block
    assert _address(b) != where
    assert cache.cached_bytes() == 0
    del view
    assert cache.cached_bytes() == 1024 * 1024
    c = cache.empty(BIG, np.float32)
    assert _address(c) == where
    assert cache.cached_bytes() == 0


def test_arrays_are_ordinary_aligned_writable_ndarrays():
    cache = HostCache(64 * 2 ** 20)
    for dtype in (np.float32, np.float64, np.int64, np.uint8):
        a = cache.empty((3, 5, 7, 4096), dtype)
        assert a.dtype == dtype and a.shape == (3, 5, 7, 4096)
        assert a.flags.c_contiguous and a.flags.writeable and a.flags.aligned
        assert _address(a) % ALIGN == 0
        a[...] = 7
        assert a.sum() == 7 * a.size
    assert cache.empty(MIN_BYTES + 1, np.uint8).shape == (MIN_BYTES + 1,)


def test_sizes_round_to_pages_and_small_arrays_bypass():
    cache = HostCache(64 * 2 ** 20)
    a = cache.empty((MIN_BYTES // 4 + 10,), np.float32)
    where = _address(a)
    del a
    b = cache.empty((MIN_BYTES // 4 + 20,), np.float32)     # same 4 KiB-rounded size
    assert _address(b) == where
    small = cache.empty((10, 10), np.float32)
    assert isinstance(small, np.ndarray) and small.base is None
    del small
    assert cache.cached_bytes() == 0


def test_limit_drops_the_blocks_freed_longest_ago():
    cache = HostCache(3 * 2 ** 20)
    arrays = [cache.empty(BIG, np.float32) for _ in range(5)]
    addresses = [_address(a) for a in arrays]
    while arrays:
        arrays.pop(0)                           # freed in order: 0 first
    assert cache.cached_bytes() == 3 * 2 ** 20
    again = [cache.empty(BIG, np.float32) for _ in range(3)]
    assert cache.cached_bytes() == 0
    assert {_address(a) for a in again} == set(addresses[2:])


def test_limit_zero_turns_caching_off_and_clear_empties():
    off = HostCache(0)
    a = off.empty(BIG, np.float32)
    assert a.base is None
    cache = HostCache(64 * 2 ** 20)
    b = cache.empty(BIG, np.float32)
    del b
    assert cache.cached_bytes() > 0
    cache.clear()
    assert cache.cached_bytes() == 0


def test_backend_zeros_are_zero_even_from_a_dirty_block():
    a = cpu.empty(BIG, np.float32)
    a.fill(3.0)
    del a
    z = cpu.zeros(BIG, np.float32)
    assert not z.any()


def test_leases_may_die_on_other_threads():
    cache = HostCache(256 * 2 ** 20)
    arrays = [cache.empty(BIG, np.float32) for _ in range(32)]

    def drop(chunk):
        while chunk:
            chunk.pop()

    threads = [threading.Thread(target=drop, args=(arrays[i::4],)) for i in range(4)]
    del arrays
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gc.collect()
    assert cache.cached_bytes() == 32 * 2 ** 20


def test_net_results_do_not_depend_on_the_cache():
    from convnet import Net
    from convnet.layers import BatchNorm, Convolution, ReLU, SoftmaxWithLoss

    def run():
        import convnet
        convnet.seed(3)
        net = Net("cached")
        net.add(Convolution(num_output=16, kernel_size=3, pad=1, name="c1"), "data", "c1")
        net.add(BatchNorm(name="bn"), "c1", "c1")
        net.add(ReLU(name="r"), "c1", "c1")
        net.add(Convolution(num_output=3, kernel_size=1, name="s"), "c1", "s")
        net.add(SoftmaxWithLoss(name="loss"), ["s", "label"], "loss")
        rng = np.random.default_rng(0)
        x = rng.standard_normal((4, 3, 48, 48)).astype(np.float32)
        y = rng.integers(0, 3, (4, 48, 48))
        losses, grads = [], []
        for _ in range(3):
            out = net.forward(data=x, label=y)
            net.backward()
            losses.append(float(out["loss"]))
            grads.append(net.layers[0].params[0].diff.copy())
        return losses, grads

    cached = run()
    saved = cpu.host_cache.cache.limit
    cpu.host_cache.cache.limit = 0
    try:
        plain = run()
    finally:
        cpu.host_cache.cache.limit = saved
    assert cached[0] == plain[0]
    for a, b in zip(cached[1], plain[1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("value", ["lots", "-5", "nan"])
def test_a_bad_limit_in_the_environment_warns_and_uses_the_default(value, tmp_path):
    code = ("import warnings, convnet.backend.host_cache as h; "
            "print(h.cache.limit == h.DEFAULT_LIMIT_MB * 2 ** 20)")
    import convnet
    # the convnet this process imported (installed, or built in place), from outside the
    # checkout so that an unbuilt source tree in the working directory does not shadow it
    home = os.path.dirname(os.path.dirname(os.path.abspath(convnet.__file__)))
    env = dict(os.environ, CONVNET_HOST_CACHE_MB=value, PYTHONPATH=home)
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    assert "CONVNET_HOST_CACHE_MB must be a number of megabytes" in done.stderr
    assert repr(value) in done.stderr


def test_a_lease_dying_while_the_cache_is_locked_does_not_deadlock():
    # garbage collection can run a lease's __del__ inside the cache's own critical section
    cache = HostCache(64 * 2 ** 20)
    a = cache.empty(BIG, np.float32)
    with cache._lock:
        del a
    assert cache.cached_bytes() == 1024 * 1024
