"""The GPU side of ``scripts/bench.py --device cuda``: runs every case's convnet layers on the
GPU and measures the card's own roofs, so that each case is reported as a ratio against
PyTorch CUDA (cuDNN) and as achieved TFLOP/s (GEMM-bound cases) or GB/s (memory-bound cases)
against the sgemm rate and the device-to-device copy bandwidth measured in the same run.

``install(namespace)`` is all bench.py calls: it replaces bench.py's CPU ``sgemm_rate`` and
``copy_bandwidth`` with the GPU measurements below and makes every Layer run on the GPU (a
layer still on the CPU moves at its first forward; NumPy bottoms and top diffs are uploaded
once per array and cached, so timings do not include host-to-device copies).

It also runs on the host build (``CONVNET_CUDA_HOST=1``) for testing; its numbers then mean
nothing.
"""

import functools
import time

import numpy as np


def _cuda():
    from convnet import cuda
    if not cuda.is_available():
        raise RuntimeError(f"convnet CUDA unavailable: {cuda.unavailable_reason()}")
    return cuda


def _best_time(fn, reps):
    cuda = _cuda()
    fn()
    cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


@functools.lru_cache(maxsize=None)
def sgemm_rate(m, n, k, reps=5):
    """GFLOP/s of convnet's GPU GEMM (cuBLAS sgemm, float32; TF32 only with
    CONVNET_CUDA_TF32=1) at shape (m, n, k), row-major C = A B."""
    cuda = _cuda()
    from convnet.cuda import _lib
    rng = np.random.default_rng(0)
    a = cuda.to_device(rng.random((m, k), dtype=np.float32) + 0.5)
    b = cuda.to_device(rng.random((k, n), dtype=np.float32) + 0.5)
    c = cuda.to_device(np.zeros((m, n), np.float32))
    t = _best_time(lambda: _lib.call("convnet_gemm", 0, 0, m, n, k, 1.0, a.ptr, k, b.ptr, n,
                                     0.0, c.ptr, n, None), reps)
    return 2.0 * m * n * k / t / 1e9


@functools.lru_cache(maxsize=None)
def copy_bandwidth(nbytes, reps=7):
    """GB/s (bytes read + written) of a device-to-device copy of ``nbytes / 2`` bytes."""
    cuda = _cuda()
    from convnet.cuda import _lib
    n = max(int(nbytes // 8), 1 << 16)
    src = cuda.to_device(np.random.default_rng(0).random(n, dtype=np.float32) + 0.5)
    dst = cuda.to_device(np.empty(n, np.float32))
    t = _best_time(lambda: _lib.call("convnet_memcpy_dtod", dst.ptr, src.ptr, src.nbytes, None),
                   reps)
    return 2.0 * src.nbytes / t / 1e9


class _Uploads:
    """NumPy array -> its DeviceArray, uploaded once (keyed by identity; holds the array so
    the identity stays valid)."""

    def __init__(self):
        self._cache = {}

    def __call__(self, value):
        if not isinstance(value, np.ndarray):
            return value
        hit = self._cache.get(id(value))
        if hit is None or hit[0] is not value:
            hit = (value, _cuda().to_device(value))
            self._cache[id(value)] = hit
        return hit[1]


def run_layers_on_gpu():
    """Patch Layer.forward / backward so that every layer runs on the GPU (see the module
    docstring). Returns a function that undoes the patch."""
    from convnet.layers.base import Layer
    upload = _Uploads()
    forward, backward = Layer.forward, Layer.backward

    def gpu_forward(self, *bottoms, **kwargs):
        if self.device != "cuda":
            self.to("cuda")
        return forward(self, *(upload(b) for b in bottoms), **kwargs)

    def gpu_backward(self, *top_diffs, **kwargs):
        return backward(self, *(upload(d) for d in top_diffs), **kwargs)

    Layer.forward, Layer.backward = gpu_forward, gpu_backward

    def undo():
        Layer.forward, Layer.backward = forward, backward
    return undo


def install(namespace):
    """bench.py's hook for --device cuda: GPU roofs in ``namespace`` (bench.py's globals) and
    every layer on the GPU."""
    _cuda()
    namespace["sgemm_rate"] = sgemm_rate
    namespace["copy_bandwidth"] = copy_bandwidth
    return run_layers_on_gpu()
