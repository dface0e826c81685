"""The CUDA backend: the built libraries against the ctypes table, the loader, and every layer
on device='cuda' against the CPU backend, a trained Net, and moves both ways.

Each test that runs kernels takes ``target`` (tests/cuda_targets.py): ``[host_build]`` runs the
cuda/*.cu sources compiled for the CPU (always, in CI), ``[gpu]`` the nvcc build on a GPU
(skipped with the real reason without one)."""

import ctypes
import inspect
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from convnet import cuda
from convnet.backend import cpu as cpu_backend
from convnet.cuda import _lib
from cuda_targets import GPU, HOST, built, fresh_host_library, last_error, target  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = os.path.join(ROOT, "include", "convnet_cuda.h")


def built_library():
    path = _lib.library_path()
    if not os.path.exists(path):
        pytest.skip(f"the CUDA library is not built ({path}); it needs nvcc")
    return path


def exported_symbols(path):
    """Names the library exports: through dlopen (the CUDA runtime is linked statically, so
    no driver is needed to load it), else from the dynamic symbol table."""
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL | os.RTLD_LAZY)
    except OSError:
        nm = shutil.which("nm")
        if nm is None:
            pytest.skip("the library does not load here and nm is missing")
        out = subprocess.run([nm, "-D", "--defined-only", path], capture_output=True,
                             text=True, check=True).stdout
        return {line.split()[-1] for line in out.splitlines() if " T " in line}
    return {name for name, _, _ in _lib.FUNCTIONS if hasattr(lib, name)}


def header_prototypes():
    """(name, argument count) of every CONVNET_API function, in header order."""
    text = re.sub(r"/\*.*?\*/", "", open(HEADER).read(), flags=re.S)
    found = []
    for m in re.finditer(r"CONVNET_API\s+[\w\s\*]+?\b(convnet_\w+)\s*\(([^)]*)\)", text):
        args = m.group(2).strip()
        found.append((m.group(1), 0 if args in ("", "void") else args.count(",") + 1))
    return found


def test_built_library_exports_every_function_of_the_ctypes_table(built):
    symbols = exported_symbols(built_library())
    missing = [name for name, _, _ in _lib.FUNCTIONS if name not in symbols]
    assert not missing


def test_built_library_exports_nothing_but_the_api(built):
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm is missing")
    out = subprocess.run([nm, "-D", "--defined-only", built_library()], capture_output=True,
                         text=True, check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if " T " in line}
    assert exported == {name for name, _, _ in _lib.FUNCTIONS}


def test_ctypes_table_matches_the_header_in_order_and_argument_count():
    table = [(name, len(argtypes)) for name, _, argtypes in _lib.FUNCTIONS]
    assert table == header_prototypes()


def test_library_reports_the_abi_version_the_loader_expects(built):
    built_library()
    assert _lib.load().convnet_abi_version() == _lib.ABI_VERSION
    assert bool(_lib.load().convnet_is_host_build()) == (built == HOST)


def test_every_status_has_a_name(built):
    built_library()
    lib = _lib.load()
    names = [lib.convnet_status_string(s).decode() for s in range(7)]
    assert names == ["CONVNET_OK", "CONVNET_ERR_CUDA", "CONVNET_ERR_INVALID_ARGUMENT",
                     "CONVNET_ERR_BAD_INDEX", "CONVNET_ERR_CUBLAS_MISSING", "CONVNET_ERR_CUBLAS",
                     "CONVNET_ERR_OUT_OF_MEMORY"]


def test_invalid_argument_raises_cuda_error_with_status_and_message(built):
    built_library()
    with pytest.raises(cuda.CudaError, match="CONVNET_ERR_INVALID_ARGUMENT: convnet_malloc: "
                                             "negative size") as info:
        _lib.call("convnet_malloc", _lib.ref(_lib.void_p()), -1)
    assert info.value.status == _lib.ERR_INVALID_ARGUMENT


def test_missing_cublas_is_a_clear_status_naming_the_places_tried_gpu_build():
    cuda.use_host_build(False)
    try:
        built_library()
        status = _lib.call_status("convnet_cublas_load")
        if status == _lib.OK:
            pytest.skip("cuBLAS is installed here")
        if status == _lib.ERR_CUBLAS:
            pytest.skip(f"a libcublas loads but cannot start here: {_lib.last_error()}")
        assert status == _lib.ERR_CUBLAS_MISSING
        assert re.search(r"no libcublas could be loaded \(tried libcublas\.so\.13",
                         _lib.last_error())
    finally:
        cuda.use_host_build(None)


def test_missing_cublas_is_a_clear_status_naming_the_places_tried_host_build(tmp_path):
    lib = fresh_host_library(tmp_path / "lib", cublas_dirs=[tmp_path / "empty"],
                             copy_cublas=False)
    assert lib.convnet_cublas_load() == _lib.ERR_CUBLAS_MISSING
    message = last_error(lib)
    assert f"tried {tmp_path / 'empty'}/libconvnet_cublas_host.so, " \
           f"{tmp_path / 'lib'}/libconvnet_cublas_host.so" in message
    # a GEMM says the same, and a later kernel is not blamed for it
    assert lib.convnet_gemm(0, 0, 1, 1, 1, 1.0, 8, 1, 8, 1, 0.0, 8, 1, None) == \
        _lib.ERR_CUBLAS_MISSING


def test_is_available_is_a_bool_with_a_reason_when_false():
    available = cuda.is_available()
    assert isinstance(available, bool)
    assert (cuda.unavailable_reason() == "") == available


def test_is_available_never_raises_for_a_missing_library(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVNET_CUDA_LIB", str(tmp_path / "nothing.so"))
    monkeypatch.setattr(_lib, "_lib", None)
    monkeypatch.setattr(_lib, "_load_error", None)
    monkeypatch.setattr(cuda, "_available", None)
    assert cuda.is_available() is False
    assert "nothing.so does not exist" in cuda.unavailable_reason()


def test_cuda_backend_has_every_cpu_backend_function_with_the_same_signature():
    from convnet.backend import cuda as cuda_backend
    for name, fn in inspect.getmembers(cpu_backend, inspect.isfunction):
        if name.startswith("_") or fn.__module__ != cpu_backend.__name__:
            continue
        twin = getattr(cuda_backend, name, None)
        assert twin is not None, name
        assert inspect.signature(twin) == inspect.signature(fn), name


# ------------------------------------------------------------------ kernels: host build / GPU

def _layers_and_inputs(rng):
    """(name, layer factory, bottoms as float64 NumPy arrays) covering every layer."""
    from convnet.layers import (BatchNorm, Concat, Convolution, Crop, Deconvolution, Dropout,
                                Eltwise, EuclideanLoss, Interp, Pooling, ReLU,
                                SoftmaxWithLoss, Unpooling)
    cases = []
    for i in range(6):
        n, c = int(rng.integers(1, 3)), int(rng.integers(1, 3)) * 2
        h, w = int(rng.integers(5, 12)), int(rng.integers(5, 12))
        k, s, p, d = int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(0, 2)), \
            int(rng.integers(1, 3))
        g = int(rng.choice([1, 2]))
        x = rng.standard_normal((n, c, h, w))
        cases.append((f"conv{i}", lambda k=k, s=s, p=p, d=d, g=g: Convolution(
            num_output=4, kernel_size=k, stride=s, pad=p, dilation=d, group=g), [x]))
        cases.append((f"deconv{i}", lambda k=k, s=s, p=p, g=g: Deconvolution(
            num_output=4, kernel_size=k, stride=s, pad=min(p, k - 1), group=g), [x]))
        kp = (int(rng.integers(2, 4)), int(rng.integers(1, 4)))
        pool_pad = (int(rng.integers(0, kp[0])), int(rng.integers(0, kp[1])))
        tie_free = rng.permutation(x.size).reshape(x.shape).astype(np.float64)
        cases.append((f"maxpool{i}", lambda kp=kp, s=s, pp=pool_pad: Pooling(
            kernel_size=kp, stride=s, pad=pp), [tie_free]))
        cases.append((f"avepool{i}", lambda kp=kp, s=s, pp=pool_pad: Pooling(
            kernel_size=kp, stride=s, pad=pp, pool="AVE"), [x]))
        cases.append((f"interp{i}", lambda: Interp(zoom_factor=2), [x]))
        cases.append((f"interp_nearest{i}", lambda h=h: Interp(height=h + 3, width=7,
                                                               mode="nearest"), [x]))
        cases.append((f"interp_pytorch{i}", lambda: Interp(shrink_factor=2, align_corners=False),
                      [x]))
        cases.append((f"relu{i}", lambda: ReLU(negative_slope=0.1), [x]))
        cases.append((f"dropout{i}", lambda: Dropout(dropout_ratio=0.3, seed=5), [x]))
        cases.append((f"batchnorm{i}", lambda: BatchNorm(), [x]))
        cases.append((f"crop{i}", lambda: Crop(axis=2, offset=1),
                      [x, np.zeros((n, 1, h - 2, w - 3))]))
        cases.append((f"concat{i}", lambda: Concat(axis=1), [x, rng.standard_normal(x.shape)]))
        for op in ("SUM", "PROD", "MAX"):
            cases.append((f"eltwise_{op}{i}", lambda op=op: Eltwise(op),
                          [x, rng.standard_normal(x.shape), rng.standard_normal(x.shape)]))
        labels = rng.integers(0, c, size=(n, h, w))
        labels[0, 0, 0] = 255
        cases.append((f"softmax{i}", lambda: SoftmaxWithLoss(ignore_label=255), [x, labels]))
        cases.append((f"euclidean{i}", lambda: EuclideanLoss(),
                      [x, rng.standard_normal(x.shape)]))
        pooled = rng.standard_normal((n, c, 3, 4))
        mask = np.stack([rng.permutation(6 * 8)[:12] for _ in range(n * c)]).reshape(pooled.shape)
        cases.append((f"unpool{i}", lambda: Unpooling(kernel_size=2, stride=2, out_size=(6, 8)),
                      [pooled, mask.astype(np.float32)]))
    return cases


def _run(layer, bottoms, top_seed):
    from convnet.backend import get
    be = get(layer.device)
    out = layer.forward(*[be.asarray(b) for b in bottoms])
    tops = out if isinstance(out, tuple) else (out,)
    if layer.is_loss:
        values = [np.float64(out)]
        diffs = layer.backward()
    else:
        values = [be.to_numpy(t).astype(np.float64) for t in tops]
        rng = np.random.default_rng(top_seed)
        grads = [rng.standard_normal(v.shape).astype(np.float32) for v in values]
        diffs = layer.backward(*[be.asarray(g) for g in grads])
    diffs = diffs if isinstance(diffs, tuple) else (diffs,)
    values += [be.to_numpy(d).astype(np.float64) for d in diffs if d is not None]
    values += [be.to_numpy(p.diff).astype(np.float64) for p in layer.params]
    return values


def test_every_layer_on_cuda_matches_the_cpu_backend_in_float32(target):
    rng = np.random.default_rng(7)
    for name, make, bottoms in _layers_and_inputs(rng):
        bottoms = [b.astype(np.float32) if b.dtype.kind == "f" else b for b in bottoms]
        layer = make()
        state = layer.get_rng_state()
        expected = _run(layer, bottoms, 1)
        for p in layer.params:
            p.zero_diff()
        layer.set_rng_state(state)
        layer.to("cuda")
        for p in layer.params:
            p.zero_diff()
        got = _run(layer, bottoms, 1)
        assert len(got) == len(expected), name
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5, err_msg=name)


def test_cuda_backward_passes_are_deterministic(target):
    rng = np.random.default_rng(8)
    for name, make, bottoms in _layers_and_inputs(rng):
        bottoms = [b.astype(np.float32) if b.dtype.kind == "f" else b for b in bottoms]
        layer = make()
        layer.forward(*bottoms)
        layer.to("cuda")
        state = layer.get_rng_state()
        runs = []
        for _ in range(2):
            layer.set_rng_state(state)
            for p in layer.params:
                p.zero_diff()
            runs.append(_run(layer, bottoms, 2))
        for a, b in zip(*runs):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_unpooling_bad_mask_on_cuda_is_a_data_error(target):
    from convnet.errors import DataError
    from convnet.layers import Unpooling
    layer = Unpooling(kernel_size=2, stride=2).to("cuda")
    x = np.ones((1, 1, 2, 2), np.float32)
    mask = np.array([[[[0, 1], [99, 2]]]], np.int64)
    with pytest.raises(DataError, match="invalid max index 99 at \\(0, 0, 1, 0\\)"):
        layer.forward(x, mask)


def test_softmax_bad_label_on_cuda_is_a_data_error(target):
    from convnet.errors import DataError
    from convnet.layers import SoftmaxWithLoss
    layer = SoftmaxWithLoss().to("cuda")
    with pytest.raises(DataError, match="label 7 at position \\(0, 1, 0\\)"):
        layer.forward(np.zeros((1, 3, 2, 1), np.float32), np.array([[[0], [7]]]))


def test_device_array_round_trip_fill_copy_and_interface(target):
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    d = cuda.to_device(a)
    np.testing.assert_array_equal(d.get(), a)
    np.testing.assert_array_equal(d.reshape(6, -1).get(), a.reshape(6, 4))
    c = d.copy()
    d[...] = 1.5
    np.testing.assert_array_equal(c.get(), a)
    np.testing.assert_array_equal(d.get(), np.full_like(a, 1.5))
    d[...] = c
    np.testing.assert_array_equal(d.get(), a)
    iface = d.__cuda_array_interface__
    assert iface["version"] == 3 and iface["shape"] == (2, 3, 4) and iface["typestr"] == "<f4"
    labels = cuda.to_device(np.array([3, -1, 7], np.int64))
    labels[...] = 9
    np.testing.assert_array_equal(labels.get(), [9, 9, 9])
    d.close()


def test_mixing_a_numpy_array_into_a_cuda_backend_call_is_a_device_error(target):
    from convnet.backend import cuda as cuda_backend
    from convnet.errors import DeviceError
    y = cuda_backend.empty((4,), np.float32)
    with pytest.raises(DeviceError, match="cannot be mixed"):
        cuda_backend.activation_relu_forward(np.ones(4, np.float32), 0.0, y)


# ------------------------------------------------------------------ nets: training, moving

def _small_net(seed):
    """conv -> BN -> ReLU -> max pool (mask) -> dropout -> unpool -> deconv -> interp ->
    concat -> softmax loss: every layer family in one graph."""
    from convnet import Net, fillers
    from convnet.layers import (BatchNorm, Concat, Convolution, Deconvolution, Dropout, Interp,
                                Pooling, ReLU, SoftmaxWithLoss, Unpooling)
    fillers.seed(seed)
    net = Net()
    net.add(Convolution(num_output=4, kernel_size=3, pad=1, name="conv1",
                        weight_filler="gaussian"), bottom=["data"], top=["c1"])
    net.add(BatchNorm(name="bn1"), bottom=["c1"], top=["b1"])
    net.add(ReLU(name="relu1"), bottom=["b1"], top=["r1"])
    net.add(Pooling(kernel_size=2, stride=2, return_mask=True, name="pool1"), bottom=["r1"],
            top=["p1", "m1"])
    net.add(Dropout(dropout_ratio=0.25, seed=seed, name="drop1"), bottom=["p1"], top=["d1"])
    net.add(Unpooling(kernel_size=2, stride=2, out_size=(6, 7), name="unpool1"),
            bottom=["d1", "m1"], top=["u1"])
    net.add(Deconvolution(num_output=3, kernel_size=3, pad=1, group=1, name="deconv1"),
            bottom=["u1"], top=["s1"])
    net.add(Interp(shrink_factor=2, name="down"), bottom=["s1"], top=["s2"])
    net.add(Interp(height=6, width=7, name="up"), bottom=["s2"], top=["s3"])
    net.add(Concat(axis=1, name="cat"), bottom=["s1", "s3"], top=["s"])
    net.add(Convolution(num_output=3, kernel_size=1, name="score"), bottom=["s"], top=["score"])
    net.add(SoftmaxWithLoss(ignore_label=255, name="loss"), bottom=["score", "label"],
            top=["loss"])
    return net


def _batch(rng):
    x = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 6, 7))
    labels[1, 2, 3] = 255
    return x, labels


def _train(devices, steps_per_device=2):
    """Train _small_net with SGD, moving the net to each device in turn; returns the losses
    and the final params (NumPy)."""
    from convnet import SGDSolver
    rng = np.random.default_rng(11)
    net = _small_net(3)
    x, labels = _batch(rng)
    net.setup(data=x.shape, label=labels.shape)
    # identical starting weights on every run, whatever the filler's global state
    init = np.random.default_rng(5)
    for p in net.learnable_params:
        p.data[...] = (init.standard_normal(p.shape) * 0.3).astype(np.float32)
    solver = SGDSolver(net, base_lr=0.05, momentum=0.9, weight_decay=0.001)
    losses = []
    for device in devices:
        net.to(device)   # the solver's history follows the params
        for _ in range(steps_per_device):
            if device == "cuda":
                losses.append(solver.step(data=cuda.to_device(x), label=cuda.to_device(labels)))
            else:
                losses.append(solver.step(data=x, label=labels))
    net.to("cpu")
    return losses, [np.array(p.data, dtype=np.float64) for p in net.learnable_params]


def test_a_net_trained_on_cuda_matches_the_cpu_run(target):
    cpu_losses, cpu_params = _train(["cpu", "cpu"])
    gpu_losses, gpu_params = _train(["cuda", "cuda"])
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-4)
    for g, c in zip(gpu_params, cpu_params):
        np.testing.assert_allclose(g, c, rtol=1e-4, atol=1e-5)


def test_a_net_moved_cpu_cuda_cpu_while_training_matches_the_cpu_run(target):
    cpu_losses, cpu_params = _train(["cpu", "cpu", "cpu"])
    moved_losses, moved_params = _train(["cpu", "cuda", "cpu"])
    np.testing.assert_allclose(moved_losses, cpu_losses, rtol=1e-4)
    for g, c in zip(moved_params, cpu_params):
        np.testing.assert_allclose(g, c, rtol=1e-4, atol=1e-5)


def test_every_layer_moves_to_cuda_and_back_after_running(target):
    rng = np.random.default_rng(9)
    for name, make, bottoms in _layers_and_inputs(rng)[:22]:
        bottoms = [b.astype(np.float32) if b.dtype.kind == "f" else b for b in bottoms]
        layer = make()
        state = layer.get_rng_state()
        expected = _run(layer, bottoms, 3)
        for device in ("cuda", "cpu"):
            layer.to(device)
            layer.set_rng_state(state)
            for p in layer.params:
                p.zero_diff()
            got = _run(layer, bottoms, 3)
            for g, e in zip(got, expected):
                np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5, err_msg=f"{name} {device}")


@pytest.mark.parametrize("workspace", ["1", "6000", None], ids=["one_image", "runs", "default"])
def test_convolution_runs_of_images_match_the_cpu_backend(target, workspace, monkeypatch):
    """Runs of images through strided-batched GEMMs (their size set by the workspace), one
    image at a time, and the whole batch at once all give the CPU backend's results."""
    from convnet.layers import Convolution, Deconvolution
    if workspace is not None:
        monkeypatch.setenv("CONVNET_CUDA_CONV_WORKSPACE", workspace)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((5, 4, 6, 7)).astype(np.float32)
    for make in (lambda: Convolution(num_output=6, kernel_size=3, stride=2, pad=1, group=2),
                 lambda: Convolution(num_output=6, kernel_size=1, group=2),
                 lambda: Deconvolution(num_output=4, kernel_size=3, stride=2, pad=1, group=2)):
        layer = make()
        expected = _run(layer, [x], 4)
        layer.to("cuda")
        for p in layer.params:
            p.zero_diff()
        got = _run(layer, [x], 4)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_the_finite_check_finds_a_nan_gradient_on_cuda(target):
    from convnet.backend import cuda as cuda_backend
    good = [cuda.to_device(np.ones(n, np.float32)) for n in (3, 700, 1)]
    assert cuda_backend.all_finite(good)
    for bad_value in (np.nan, np.inf, -np.inf):
        host = np.ones(700, np.float32)
        host[513] = bad_value
        assert not cuda_backend.all_finite(good + [cuda.to_device(host)])
    assert cuda_backend.all_finite([])


def test_channel_reductions_over_many_parts_match_the_cpu_backend(target):
    """BatchNorm statistics and gradients and the conv bias gradient on shapes whose channel
    sums split into several parts (the 2-D reduction grid) give the CPU backend's values."""
    from convnet.layers import BatchNorm, Convolution
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((3, 5, 17, 19)) * 3 + 1).astype(np.float32)
    for make in (lambda: BatchNorm(), lambda: Convolution(num_output=5, kernel_size=1)):
        layer = make()
        expected = _run(layer, [x], 5)
        layer.to("cuda")
        for p in layer.params:
            p.zero_diff()
        got = _run(layer, [x], 5)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


def test_interp_backward_gathers_match_the_cpu_backend(target):
    """The adjoint as gathers through tables inverted on the device: zoom, shrink, cropping
    pads, one-pixel outputs, nearest mode, a second bottom giving the size."""
    from convnet.layers import Interp
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 3, 9, 6)).astype(np.float32)
    cases = [lambda: Interp(zoom_factor=3), lambda: Interp(shrink_factor=3),
             lambda: Interp(zoom_factor=2, pad_beg=-1, pad_end=-2),
             lambda: Interp(height=1, width=13), lambda: Interp(height=17, width=1),
             lambda: Interp(height=4, width=11, align_corners=False),
             lambda: Interp(height=20, width=5, mode="nearest")]
    for make in cases:
        layer = make()
        expected = _run(layer, [x], 6)
        layer.to("cuda")
        got = _run(layer, [x], 6)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_bench_cuda_helper_runs_layers_on_the_device_and_measures_roofs(target):
    """scripts/bench_cuda.py (bench.py --device cuda): roofs measured through the library,
    layers moved and inputs uploaded once. On the host build the numbers mean nothing."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import bench_cuda
    finally:
        sys.path.pop(0)
    from convnet.cuda import DeviceArray
    from convnet.layers import Convolution
    assert bench_cuda.sgemm_rate.__wrapped__(16, 8, 4, reps=1) > 0
    assert bench_cuda.copy_bandwidth.__wrapped__(1 << 16, reps=1) > 0
    x = np.random.default_rng(15).standard_normal((1, 2, 5, 5)).astype(np.float32)
    layer = Convolution(num_output=2, kernel_size=3)
    expected = layer.forward(x)
    undo = bench_cuda.run_layers_on_gpu()
    try:
        got = layer.forward(x)
        assert layer.device == "cuda" and isinstance(got, DeviceArray)
        np.testing.assert_allclose(got.get(), expected, rtol=1e-5, atol=1e-6)
        assert isinstance(layer.backward(np.ones_like(expected)), DeviceArray)
    finally:
        undo()
        layer.to("cpu")


def _random_geometry_cases(seed, count):
    """Random odd, non-square, strided, dilated, grouped, padded conv / deconv / pooling /
    interp configurations: the kernels' index maths on many shapes."""
    from convnet.layers import Convolution, Deconvolution, Interp, Pooling
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        g = int(rng.choice([1, 2, 3]))
        n, c = int(rng.integers(1, 4)), g * int(rng.integers(1, 3))
        h, w = int(rng.integers(3, 14)), int(rng.integers(3, 14))
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 5))
        sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 3))
        dh, dw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        ph, pw = int(rng.integers(0, 3)), int(rng.integers(0, 2))
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        if (h + 2 * ph - (dh * (kh - 1) + 1)) >= 0 and (w + 2 * pw - (dw * (kw - 1) + 1)) >= 0:
            cases.append((f"conv{i}", lambda a=(kh, kw), s=(sh, sw), p=(ph, pw), d=(dh, dw),
                          g=g: Convolution(num_output=2 * g, kernel_size=a, stride=s, pad=p,
                                           dilation=d, group=g), x))
        cases.append((f"deconv{i}", lambda a=(kh, kw), s=(sh, sw), g=g: Deconvolution(
            num_output=g, kernel_size=a, stride=s, pad=(min(ph, kh - 1), min(pw, kw - 1)),
            group=g), x))
        pk = (int(rng.integers(1, 4)), int(rng.integers(2, 4)))
        pp = (int(rng.integers(0, pk[0])), int(rng.integers(0, pk[1])))
        tie_free = rng.permutation(x.size).reshape(x.shape).astype(np.float32)
        for pool in ("MAX", "AVE"):
            cases.append((f"{pool}{i}", lambda pk=pk, s=(sh, sw), pp=pp, pool=pool: Pooling(
                kernel_size=pk, stride=s, pad=pp, pool=pool), tie_free))
        oh, ow = int(rng.integers(1, 20)), int(rng.integers(1, 20))
        cases.append((f"interp{i}", lambda oh=oh, ow=ow, ac=bool(rng.integers(0, 2)): Interp(
            height=oh, width=ow, align_corners=ac), x))
    return cases


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_kernel_index_maths_on_many_random_shapes_match_the_cpu_backend(target, seed):
    for name, make, x in _random_geometry_cases(seed, 50):   # about 250 cases per seed
        layer = make()
        expected = _run(layer, [x], 7)
        layer.to("cuda")
        for p in layer.params:
            p.zero_diff()
        got = _run(layer, [x], 7)
        assert len(got) == len(expected), name
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5, err_msg=name)
