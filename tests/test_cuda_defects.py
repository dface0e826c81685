"""The defects a review of the CUDA backend found (issue 15), one test each, on the host build
(``[host_build]`` / ``host_only``: no GPU needed, so they run in CI) and, where they apply, on
a GPU (``[gpu]``). Each failed before its fix."""

import ctypes
import os

import numpy as np
import pytest

from convnet import cuda
from convnet.backend import cpu as cpu_backend
from convnet.cuda import _lib
from convnet.errors import DeviceError
from cuda_targets import (copy_cublas_stand_in, fresh_host_library, host_only,  # noqa: F401
                          last_error, target)


def _softmax_inputs(rng):
    scores = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 4, 5))
    labels[0, 0, 0] = 255
    return scores, labels


# 1 ------------------------------------------------------------ SoftmaxWithLoss moves
def test_softmax_loss_moves_to_cuda_after_a_cpu_forward_and_back(target):
    from convnet.layers import SoftmaxWithLoss
    rng = np.random.default_rng(1)
    scores, labels = _softmax_inputs(rng)
    layer = SoftmaxWithLoss(ignore_label=255)
    expected = layer.forward(scores, labels)
    expected_grad = layer.backward()[0]
    layer.to("cuda")
    got = layer.forward(cuda.to_device(scores), cuda.to_device(labels))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(layer.backward()[0].get(), expected_grad, rtol=1e-5, atol=1e-7)
    layer.to("cpu")
    np.testing.assert_allclose(layer.forward(scores, labels), expected, rtol=1e-6)
    np.testing.assert_allclose(layer.backward()[0], expected_grad, rtol=1e-5, atol=1e-7)


def test_net_moves_to_cuda_after_a_cpu_evaluation(target):
    from convnet import Net
    from convnet.layers import Convolution, SoftmaxWithLoss
    rng = np.random.default_rng(2)
    scores, labels = _softmax_inputs(rng)
    net = Net()
    net.add(Convolution(num_output=3, kernel_size=3, pad=1, name="conv"), bottom=["data"],
            top=["score"])
    net.add(SoftmaxWithLoss(ignore_label=255, name="loss"), bottom=["score", "label"],
            top=["loss"])
    net.forward(data=scores, label=labels)
    expected = net.loss
    net.to("cuda")
    net.forward(data=cuda.to_device(scores), label=cuda.to_device(labels))
    np.testing.assert_allclose(net.loss, expected, rtol=1e-5)


# 2 ------------------------------------------------------------ closed DeviceArrays
def test_a_closed_device_array_never_hands_out_its_freed_address(target):
    from convnet.backend import cuda as cuda_backend
    before = cuda.memory_in_use()
    x = cuda.to_device(np.ones((4, 4), np.float32))
    view = x.reshape(16)
    y = cuda_backend.empty((4, 4), np.float32)
    x.close()
    assert x.closed and view.closed
    assert cuda.memory_in_use() <= before + y.nbytes
    for dead in (x, view):
        with pytest.raises(DeviceError, match="was closed"):
            dead.ptr
        with pytest.raises(DeviceError, match="was closed"):
            dead.__cuda_array_interface__
        with pytest.raises(DeviceError, match="was closed"):
            dead.get()
    with pytest.raises(DeviceError, match="was closed"):
        cuda_backend.activation_relu_forward(x, 0.0, y)
    x.close()   # closing twice is harmless
    # the library and the other arrays are unharmed
    cuda_backend.activation_relu_forward(y, 0.0, y)
    cuda.synchronize()


# 3 ------------------------------------------------------------ a handled error stays handled
def test_out_of_memory_is_reported_once_not_again_by_the_next_launch(host_only, monkeypatch):
    from convnet.backend import cuda as cuda_backend
    x = cuda.to_device(np.full(64, -1.0, np.float32))
    monkeypatch.setenv("CONVNET_HOST_DEVICE_MEMORY", str(cuda.memory_in_use() + 4096))
    with pytest.raises(cuda.CudaError, match="out of memory") as info:
        cuda.to_device(np.zeros(1 << 20, np.float32))
    assert info.value.status == _lib.ERR_OUT_OF_MEMORY
    # the failed allocation is handled: the next kernel runs and reports success
    cuda_backend.activation_relu_forward(x, 0.0, x)
    np.testing.assert_array_equal(x.get(), np.zeros(64, np.float32))
    # scratch allocations inside an entry point fail the same way, also only once
    big = cuda.to_device(np.zeros(400, np.float32))
    monkeypatch.setenv("CONVNET_HOST_DEVICE_MEMORY", str(cuda.memory_in_use()))
    with pytest.raises(cuda.CudaError, match="CONVNET_ERR_OUT_OF_MEMORY"):
        cuda_backend.loss_euclidean_sum(big, big)
    cuda_backend.activation_relu_forward(x, 0.0, x)
    monkeypatch.delenv("CONVNET_HOST_DEVICE_MEMORY")
    assert cuda_backend.loss_euclidean_sum(big, big) == 0.0


# 4 ------------------------------------------------------------ CONVNET_CUDA_SYNC
def test_cuda_sync_names_the_kernel_of_an_asynchronous_fault(host_only, monkeypatch):
    from convnet.backend import cuda as cuda_backend
    x = cuda.to_device(np.ones(8, np.float32))
    monkeypatch.setenv("CONVNET_HOST_FAULT_KERNEL", "relu_forward")
    # as on a GPU, the faulting launch itself returns success; a later sync reports it
    cuda_backend.activation_relu_forward(x, 0.0, x)
    with pytest.raises(cuda.CudaError, match="convnet_memcpy_dtoh.*illegal memory access"):
        x.get()
    monkeypatch.setenv("CONVNET_CUDA_SYNC", "1")
    with pytest.raises(cuda.CudaError, match="convnet_relu_forward failed: CONVNET_ERR_CUDA: "
                                             "kernel relu_forward failed \\(CONVNET_CUDA_SYNC=1"
                                             " waited for it\\): an illegal memory access"):
        cuda_backend.activation_relu_forward(x, 0.0, x)
    monkeypatch.delenv("CONVNET_HOST_FAULT_KERNEL")
    cuda_backend.activation_relu_forward(x, 0.0, x)   # sync mode, no fault: fine
    np.testing.assert_array_equal(x.get(), np.ones(8, np.float32))


# 5 ------------------------------------------------------------ ReLU / Dropout special values
SPECIAL = np.array([-np.inf, -3.0, -0.0, 0.0, 2.0, np.inf, np.nan, -1e-30], np.float32)


@pytest.mark.parametrize("slope", [0.0, 0.25, 2.0])
def test_relu_special_values_match_the_cpu_backend_bit_for_bit(target, slope):
    from convnet.backend import cuda as cuda_backend
    expected = np.empty_like(SPECIAL)
    with np.errstate(invalid="ignore"):
        cpu_backend.activation_relu_forward(SPECIAL, slope, expected)
    y = cuda_backend.empty(SPECIAL.shape, np.float32)
    cuda_backend.activation_relu_forward(cuda.to_device(SPECIAL), slope, y)
    np.testing.assert_array_equal(y.get().view(np.uint32), expected.view(np.uint32))
    dy = SPECIAL[::-1].copy()
    expected_dx = np.empty_like(dy)
    with np.errstate(invalid="ignore"):
        cpu_backend.activation_relu_backward(dy, SPECIAL, slope, expected_dx)
    dx = cuda_backend.empty(dy.shape, np.float32)
    cuda_backend.activation_relu_backward(cuda.to_device(dy), cuda.to_device(SPECIAL), slope, dx)
    np.testing.assert_array_equal(dx.get().view(np.uint32), expected_dx.view(np.uint32))


def test_dropout_special_values_match_the_cpu_backend_bit_for_bit(target):
    from convnet.backend import cuda as cuda_backend
    keep = np.array([1, 0] * 4, bool)
    expected = np.empty_like(SPECIAL)
    with np.errstate(invalid="ignore"):
        cpu_backend.activation_dropout_forward(SPECIAL, keep, 2.0, expected)
    y = cuda_backend.empty(SPECIAL.shape, np.float32)
    cuda_backend.activation_dropout_forward(cuda.to_device(SPECIAL), cuda.to_device(keep), 2.0, y)
    np.testing.assert_array_equal(y.get().view(np.uint32), expected.view(np.uint32))
    got = y.get()
    assert np.isnan(got[5]) and np.isnan(got[7 - 1])   # inf and NaN dropped -> NaN, as on the CPU
    assert got[1] == 0 and np.signbit(got[1])           # -3 dropped -> -0.0


# 6 ------------------------------------------------------------ cuBLAS handles and loading
def _gemm_1x1(lib, host):
    """1x1x1 sgemm on device copies of ``host`` (2 floats: a, then c), result c."""
    dev = ctypes.c_void_p()
    assert lib.convnet_malloc(ctypes.byref(dev), 8) == 0
    assert lib.convnet_memcpy_htod(dev, host.ctypes.data, 8, None) == 0
    status = lib.convnet_gemm(0, 0, 1, 1, 1, 1.0, dev, 1, dev, 1, 0.0, dev.value + 4, 1, None)
    out = np.zeros(2, np.float32)
    lib.convnet_memcpy_dtoh(out.ctypes.data, dev, 8, None)
    lib.convnet_free(dev)
    return status, out[1]


def test_cublas_keeps_one_handle_per_device_when_the_device_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVNET_HOST_DEVICE_COUNT", "2")
    lib = fresh_host_library(tmp_path)
    fake = ctypes.CDLL(str(tmp_path / "libconvnet_cublas_host.so"))
    for device in ("0", "1", "0", "1", "0"):
        monkeypatch.setenv("CONVNET_HOST_CURRENT_DEVICE", device)   # another library switched
        status, value = _gemm_1x1(lib, np.array([3.0, 0.0], np.float32))
        assert status == 0, last_error(lib)
        assert value == 9.0
    # one handle per device, reused when the device comes back; none leaked
    assert fake.convnet_host_cublas_live_handles() == 2


def test_cublas_falls_back_to_the_next_library_when_cublas_create_fails(tmp_path, monkeypatch):
    broken = copy_cublas_stand_in(tmp_path / "broken")
    copy_cublas_stand_in(tmp_path / "working")
    monkeypatch.setenv("CONVNET_HOST_CUBLAS_CREATE_FAILS", str(tmp_path / "broken"))
    lib = fresh_host_library(tmp_path / "lib", copy_cublas=False,
                             cublas_dirs=[tmp_path / "broken", tmp_path / "working"])
    status, value = _gemm_1x1(lib, np.array([2.0, 0.0], np.float32))
    assert status == 0, last_error(lib)
    assert value == 4.0


def test_cublas_load_failure_names_each_library_and_the_cuda_13_package(tmp_path, monkeypatch):
    broken = copy_cublas_stand_in(tmp_path / "broken")
    monkeypatch.setenv("CONVNET_HOST_CUBLAS_CREATE_FAILS", str(tmp_path / "broken"))
    lib = fresh_host_library(tmp_path / "lib", copy_cublas=False,
                             cublas_dirs=[tmp_path / "broken"])
    assert lib.convnet_cublas_load() == _lib.ERR_CUBLAS_MISSING
    message = last_error(lib)
    assert f"{broken} (cublasCreate failed with status 1)" in message
    # the library is built for CUDA 13 (the shim says so, as nvcc 13 does): its wheel
    assert "`pip install nvidia-cublas` (CUDA 13)" in message
    assert "cu12" not in message


def test_tf32_is_an_explicit_opt_in(target, monkeypatch):
    from convnet.backend import cuda as cuda_backend
    rng = np.random.default_rng(3)
    a = rng.standard_normal((8, 16)).astype(np.float32)
    b = rng.standard_normal((16, 8)).astype(np.float32)
    c = cuda_backend.empty((8, 8), np.float32)
    da, db = cuda.to_device(a), cuda.to_device(b)
    _lib.call("convnet_gemm", 0, 0, 8, 8, 16, 1.0, da.ptr, 16, db.ptr, 8, 0.0, c.ptr, 8, None)
    np.testing.assert_allclose(c.get(), a @ b, rtol=1e-5, atol=1e-5)   # float32 by default
    monkeypatch.setenv("CONVNET_CUDA_TF32", "1")
    _lib.call("convnet_gemm", 0, 0, 8, 8, 16, 1.0, da.ptr, 16, db.ptr, 8, 0.0, c.ptr, 8, None)
    np.testing.assert_allclose(c.get(), a @ b, rtol=1e-2, atol=1e-2)


# 7 ------------------------------------------------------------ max-pool backward geometry
def test_max_pool_backward_gathers_through_a_copy_of_the_argmax(target, monkeypatch):
    from convnet.backend import cuda as cuda_backend
    rng = np.random.default_rng(4)
    x = rng.permutation(2 * 3 * 7 * 9).reshape(2, 3, 7, 9).astype(np.float32)
    kernel, stride, pad = (3, 2), (2, 2), (1, 0)
    oh, ow = 4, 4
    y = cuda_backend.empty((2, 3, oh, ow), np.float32)
    argmax = cuda_backend.empty((2, 3, oh, ow), np.int32)
    cuda_backend.pooling_max_forward(cuda.to_device(x), y, argmax, None, kernel, stride, pad)
    dy = rng.standard_normal((2, 3, oh, ow)).astype(np.float32)
    expected = np.empty_like(x)
    cpu_backend.pooling_max_backward(dy, argmax.get(), expected, kernel, stride, pad)
    calls = []
    real_call = _lib.call

    def spy(name, *args):
        calls.append((name, args))
        return real_call(name, *args)

    monkeypatch.setattr(_lib, "call", spy)
    dx = cuda_backend.empty(x.shape, np.float32)
    cuda_backend.pooling_max_backward(cuda.to_device(dy), argmax.copy(), dx, kernel, stride, pad)
    (name, args), = [c for c in calls if c[0] == "convnet_max_pool_backward"]
    assert args[9:15] == (3, 2, 2, 2, 1, 0)   # the window gather, not one thread per plane
    np.testing.assert_array_equal(dx.get(), expected)


# 8 ------------------------------------------------------------ skips say why
def test_gpu_test_skips_name_the_real_reason(monkeypatch, tmp_path):
    import conftest
    monkeypatch.setenv("CONVNET_CUDA_LIB", str(tmp_path / "libconvnet_cuda.so"))
    cuda.use_host_build(None)
    try:
        reason = conftest.cuda_unavailable_reason()
    finally:
        monkeypatch.delenv("CONVNET_CUDA_LIB")
        cuda.use_host_build(None)
    assert "libconvnet_cuda.so does not exist" in reason
    assert reason == cuda.unavailable_reason() or "does not exist" in reason


def test_unavailable_reason_is_cudas_own_message(tmp_path, monkeypatch):
    # a library that loads but finds no device reports why (here: a host build with 0 devices)
    monkeypatch.setenv("CONVNET_HOST_DEVICE_COUNT", "0")
    cuda.use_host_build(True)
    try:
        assert cuda.is_available() is False
        assert cuda.unavailable_reason() == "no CUDA GPU was found"
    finally:
        monkeypatch.delenv("CONVNET_HOST_DEVICE_COUNT")
        cuda.use_host_build(None)


# found while writing the tests above -------------------------------------------------------
def test_moving_a_layer_with_buffers_to_cuda_twice_keeps_them(target):
    from convnet.layers import BatchNorm
    layer = BatchNorm()
    x = np.random.default_rng(6).standard_normal((2, 3, 4, 5)).astype(np.float32)
    layer.forward(x)
    expected = {k: np.array(v) for k, v in layer.buffers.items()}
    layer.to("cuda").to("cuda")
    for key, value in layer.buffers.items():
        np.testing.assert_array_equal(value.get(), expected[key])


def test_the_solver_history_follows_a_net_moved_between_devices(target):
    from convnet import Net, SGDSolver
    from convnet.layers import Convolution, EuclideanLoss
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    t = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    net = Net()
    net.add(Convolution(num_output=2, kernel_size=3, pad=1, name="conv"), bottom=["x"],
            top=["y"])
    net.add(EuclideanLoss(name="loss"), bottom=["y", "t"], top=["loss"])
    solver = SGDSolver(net, base_lr=0.01, momentum=0.9)
    solver.step(x=x, t=t)
    net.to("cuda")
    solver.step(x=cuda.to_device(x), t=cuda.to_device(t))   # history moves with the params
    net.to("cpu")
    solver.step(x=x, t=t)


def test_arrays_of_one_library_are_refused_after_switching_to_the_other(host_only, tmp_path,
                                                                       monkeypatch):
    x = cuda.to_device(np.ones(3, np.float32))
    cuda.use_host_build(None)
    cuda.use_host_build(True)
    np.testing.assert_array_equal(x.get(), np.ones(3, np.float32))   # same library: fine
    monkeypatch.setenv("CONVNET_CUDA_LIB", str(tmp_path / "other.so"))
    import shutil
    from cuda_targets import host_library_path
    shutil.copyfile(host_library_path(), tmp_path / "other.so")
    cuda.use_host_build(True)
    with pytest.raises(DeviceError, match="no longer the loaded one"):
        x.get()
    monkeypatch.delenv("CONVNET_CUDA_LIB")
    cuda.use_host_build(True)
    np.testing.assert_array_equal(x.get(), np.ones(3, np.float32))


# speed: host waits ---------------------------------------------------------------------------
def test_a_training_step_waits_for_the_device_only_for_loss_mask_and_finite_check(target,
                                                                                 monkeypatch):
    """No upload, allocation, free or layer waits for the device: in one SGD step the library
    waits three times, for the loss read-back (softmax: loss, count and bad-label flag in one
    copy), the unpooling bad-mask check, and the solver's one-flag finite check."""
    from convnet import Net, SGDSolver
    from convnet.layers import (BatchNorm, Convolution, Dropout, Pooling, ReLU,
                                SoftmaxWithLoss, Unpooling)
    monkeypatch.delenv("CONVNET_CUDA_SYNC", raising=False)   # it waits after every kernel
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 8, 8))
    net = Net(keep_diffs=False)
    net.add(Convolution(num_output=4, kernel_size=3, pad=1, name="conv1"), bottom=["x"],
            top=["c1"])
    net.add(BatchNorm(name="bn1"), bottom=["c1"], top=["b1"])
    net.add(ReLU(name="relu1"), bottom=["b1"], top=["r1"])
    net.add(Pooling(kernel_size=2, stride=2, return_mask=True, name="pool1"), bottom=["r1"],
            top=["p1", "m1"])
    net.add(Dropout(seed=1, name="drop1"), bottom=["p1"], top=["d1"])
    net.add(Unpooling(kernel_size=2, stride=2, name="unpool1"), bottom=["d1", "m1"],
            top=["u1"])
    net.add(Convolution(num_output=3, kernel_size=3, pad=1, name="score"), bottom=["u1"],
            top=["s"])
    net.add(SoftmaxWithLoss(name="loss"), bottom=["s", "label"], top=["loss"])
    net.setup(x=x.shape, label=labels.shape)
    net.to("cuda")
    solver = SGDSolver(net, base_lr=0.01)
    solver.step(x=x, label=labels)   # the first step also checks for all-zero weights
    before = cuda.host_waits()
    solver.step(x=x, label=labels)
    assert cuda.host_waits() - before == 3
