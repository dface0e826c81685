"""What the CUDA tests run on: the host build (libconvnet_cuda_host.so, the cuda/*.cu sources
compiled for the CPU through cuda/host/, always built by setup.py, so these tests run in CI)
and the GPU build (libconvnet_cuda.so on a real GPU; skipped with the real reason without one).

Tests take the ``target`` fixture: its ids are ``host_build`` and ``gpu``, so every result
says where it came from. Tests of the host build's own test hooks (simulated out of memory,
injected asynchronous faults, fake devices) use ``host_only``.
"""

import ctypes
import os
import shutil

import pytest

from convnet import cuda
from convnet.cuda import _lib

HOST = "host_build"
GPU = "gpu"


def host_library_path():
    return os.path.join(os.path.dirname(os.path.abspath(_lib.__file__)), _lib.HOST_LIBRARY_NAME)


def _select(which):
    if which == HOST:
        path = host_library_path()
        if not os.path.exists(path):
            if os.environ.get("CONVNET_CUDA_HOST_BUILD") == "0":
                pytest.skip("CONVNET_CUDA_HOST_BUILD=0: the host build was not made")
            pytest.fail(f"the host build {path} is missing: setup.py builds it with the C++ "
                        f"compiler (python setup.py build_ext --inplace, or pip install .)")
        cuda.use_host_build(True)
        assert cuda.is_available(), cuda.unavailable_reason()
        assert cuda.is_host_build()
        return
    cuda.use_host_build(False)
    if not cuda.is_available():
        reason = cuda.unavailable_reason()
        cuda.use_host_build(None)
        pytest.skip(f"GPU tests need a GPU: {reason}")
    assert not cuda.is_host_build()


@pytest.fixture(params=[HOST, GPU])
def target(request, monkeypatch):
    """Select the host build or the GPU build for one test; restore the default after."""
    monkeypatch.delenv("CONVNET_CUDA_LIB", raising=False)
    _select(request.param)
    yield request.param
    cuda.use_host_build(None)


@pytest.fixture(params=[HOST, "gpu_build"])
def built(request, monkeypatch):
    """Select the host build or the nvcc build for tests of the library file itself (symbols,
    ABI, status strings): no GPU needed, only the file (the nvcc build is skipped where nvcc
    did not build it)."""
    monkeypatch.delenv("CONVNET_CUDA_LIB", raising=False)
    if request.param == HOST:
        _select(HOST)
    else:
        cuda.use_host_build(False)
    yield request.param
    cuda.use_host_build(None)


@pytest.fixture
def host_only(monkeypatch):
    monkeypatch.delenv("CONVNET_CUDA_LIB", raising=False)
    _select(HOST)
    yield HOST
    cuda.use_host_build(None)


def fresh_host_library(directory, cublas_dirs=(), copy_cublas=True):
    """A private instance of the host build (a copy loaded from ``directory``, so its cuBLAS
    state and handles start empty), with the ctypes table applied. ``copy_cublas`` puts the
    CPU cuBLAS stand-in beside it; ``cublas_dirs`` is its search path."""
    src = host_library_path()
    if not os.path.exists(src):
        pytest.fail(f"the host build {src} is missing")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(str(directory), _lib.HOST_LIBRARY_NAME)
    shutil.copyfile(src, path)
    if copy_cublas:
        shutil.copyfile(os.path.join(os.path.dirname(src), "libconvnet_cublas_host.so"),
                        os.path.join(str(directory), "libconvnet_cublas_host.so"))
    lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
    for name, restype, argtypes in _lib.FUNCTIONS:
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    lib.convnet_set_cublas_search_path(":".join(str(d) for d in cublas_dirs).encode())
    return lib


def copy_cublas_stand_in(directory):
    """A copy of libconvnet_cublas_host.so in ``directory``; returns its path."""
    os.makedirs(directory, exist_ok=True)
    dst = os.path.join(str(directory), "libconvnet_cublas_host.so")
    shutil.copyfile(os.path.join(os.path.dirname(host_library_path()),
                                 "libconvnet_cublas_host.so"), dst)
    return dst


def last_error(lib):
    return lib.convnet_last_error().decode(errors="replace")
