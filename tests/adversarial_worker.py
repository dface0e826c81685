"""Adversarial cases against the README's guarantees, run by tests/test_adversarial.py in a
subprocess under an address-space cap (a memory fault is a signal there, not a dead pytest).

    python tests/adversarial_worker.py GROUP [SEED]

Groups:

- ``geometry``: size parameters of every magnitude (0, 1, small, 2**31 - 1, 2**31, 2**62,
  2**63 - 1, negative, mixed per axis) for every layer; each case either computes the same
  result as the plain-loop float64 references (tests/reference), bit-identical at 1 and 2
  threads, or raises a convnet error.
- ``params``: odd values (None, strings, NaN, infinities, 2**200, lists, objects, complex,
  arrays) for every constructor parameter of every layer and solver and for the public
  arguments of Net, solvers and layers: ok, or a convnet error with a one-line message.
- ``calls``: sequences of calls (a refused setup then forward and backward, forward on one
  dtype then another, a refused forward then backward, 0-d and read-only inputs).
- ``files``: crafted and mutated weights files and snapshots (truncations, flipped bytes,
  huge declared sizes, wrong member names, odd metadata) for every reader; each either loads
  or raises FileFormatError naming the file, and a refused load changes nothing (the whole
  state of the net, solver, data iterator and filler stream is compared before and after).

Each case records its outcome: ``ok`` or the convnet error's class name. A case that ends
otherwise than its expectation, with a bare Python exception, or with a multi-line message
is a defect. The case about to run is written to stderr first (a crash names it); the last
stdout line is a JSON summary {"group", "cases", "outcomes", "defects"}.
"""

import io
import json
import os
import re
import resource
import sys
import tempfile
import traceback
import zipfile

import numpy as np

import convnet
from convnet import fillers
from convnet.errors import ConvnetError
from convnet.layers import (BatchNorm, Concat, Convolution, Crop, Deconvolution, Dropout,
                            Eltwise, EuclideanLoss, Interp, Pooling, ReLU, SoftmaxWithLoss,
                            Unpooling)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import conv as ref_conv  # noqa: E402  (the plain-loop float64 references)
from reference import pooling as ref_pool  # noqa: E402
from npz_tools import rewrite_npz  # noqa: E402

#: address-space cap: an allocation that slips past the checks fails fast instead of
#: swapping the machine
ADDRESS_SPACE = 3 << 30
BIG = 2 ** 31 - 1
#: magnitudes every size parameter is drawn from: valid small ones, the bound, past it
MAGNITUDES = (0, 1, 1, 2, 3, 5, 2 ** 15, BIG - 1, BIG, BIG + 1, 2 ** 40, 2 ** 61, 2 ** 62,
              2 ** 63 - 1, -1, -(2 ** 62))
CONVNET_ERRORS = ("ConfigError", "ShapeError", "DataError", "StateError", "DeviceError",
                  "FileFormatError")


class Case:
    def __init__(self, label, run, expect, pattern=None):
        self.label, self.run, self.expect, self.pattern = label, run, expect, pattern


def expect_ok(label, run):
    return Case(label, run, ("ok",))


def expect_error(label, run, kinds, pattern=None):
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    return Case(label, run, kinds, pattern)


def either(label, run, kinds=CONVNET_ERRORS, pattern=None):
    """A case that may compute (its own checks then hold) or be refused with ``kinds``."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    return Case(label, run, ("ok",) + kinds, pattern)


# ------------------------------------------------------------------------------- geometry
def close(a, b, what):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != reference {b.shape}"
    assert np.allclose(a, b, rtol=1e-9, atol=1e-9), f"{what}: {a.ravel()[:6]} != {b.ravel()[:6]}"


def same_at_two_threads(layer, x, dy, y, dx):
    """The forward and backward just computed (at 1 thread) are bit-identical at 2."""
    convnet.set_num_threads(2)
    try:
        y2 = layer.forward(x)
        dx2 = layer.backward(dy)
    finally:
        convnet.set_num_threads(1)
    assert np.array_equal(y, y2) and np.array_equal(dx, dx2), "1 and 2 threads differ"


def run_pool(kernel, stride, pad, pool, round_mode="CEIL", shape=(1, 2, 3, 4)):
    def run():
        layer = Pooling(kernel_size=kernel, stride=stride, pad=pad, pool=pool,
                        round_mode=round_mode, dtype=np.float64, name="adv")
        x = np.random.default_rng(3).permutation(int(np.prod(shape))).reshape(shape) * 1.0
        y = layer.forward(x)
        k, s, p = (layer.kernel_size, layer.stride, layer.pad)
        ceil = round_mode == "CEIL"
        dy = np.random.default_rng(5).standard_normal(y.shape)
        dx = layer.backward(dy)
        if pool == "MAX":
            ref, argmax = ref_pool.max_pool(x, k, s, p, ceil)
            close(y, ref, "max pooling forward")
            close(dx, ref_pool.max_pool_backward(dy, argmax, x.shape), "max pooling backward")
        else:
            close(y, ref_pool.ave_pool(x, k, s, p, ceil), "average pooling forward")
            close(dx, ref_pool.ave_pool_backward(dy, x.shape, k, s, p),
                  "average pooling backward")
        same_at_two_threads(layer, x, dy, y, dx)
    return run


def run_conv(kernel, stride, pad, dilation, shape=(1, 2, 3, 4), output_padding=None):
    """Convolution (or Deconvolution when ``output_padding`` is given) forward and backward
    against the plain-loop references."""
    def run():
        deconv = output_padding is not None
        kwargs = dict(output_padding=output_padding) if deconv else {}
        layer = (Deconvolution if deconv else Convolution)(
            num_output=2, kernel_size=kernel, stride=stride, pad=pad, dilation=dilation,
            dtype=np.float64, weight_filler="gaussian", bias_filler=0.5, name="adv", **kwargs)
        x = np.random.default_rng(4).standard_normal(shape)
        y = layer.forward(x)
        w, b = layer.weight.data, layer.bias.data
        g = (layer.stride, layer.pad, layer.dilation, 1)
        if deconv:
            ref = ref_conv.deconv2d(x, w, b, *g, layer.output_padding)
            grads = ref_conv.deconv2d_grads
        else:
            ref, grads = ref_conv.conv2d(x, w, b, *g), ref_conv.conv2d_grads
        what = type(layer).__name__
        close(y, ref, f"{what} forward")
        dy = np.random.default_rng(5).standard_normal(y.shape)
        dx = layer.backward(dy)
        rdx, rdw, _ = grads(x, w, dy, *g)
        close(dx, rdx, f"{what} backward data")
        close(layer.weight.diff, rdw, f"{what} backward weight")
        same_at_two_threads(layer, x, dy, y, dx)
    return run


def run_deconv(kernel, stride, pad, dilation, output_padding=0, shape=(1, 2, 2, 3)):
    return run_conv(kernel, stride, pad, dilation, shape, output_padding)


def geometry_cases(seed):
    cases = [
        # the issue's examples: refused by the parameter bound, with the bound stated
        expect_error("pool AVE k=(1, 2**63-1) p=(0, 2**63-2) s=(1, 2**62)",
                     run_pool((1, 2 ** 63 - 1), (1, 2 ** 62), (0, 2 ** 63 - 2), "AVE",
                              shape=(1, 1, 1, 4)), "ConfigError", r"<= 2147483647 \(2\*\*31 - 1\)"),
        expect_error("pool MAX k=(1, 2**63-1) p=(0, 2**63-2) s=(1, 2**62)",
                     run_pool((1, 2 ** 63 - 1), (1, 2 ** 62), (0, 2 ** 63 - 2), "MAX",
                              shape=(1, 1, 1, 4)), "ConfigError", r"2\*\*31 - 1"),
        expect_error("pool AVE k=(1, 2**61)", run_pool((1, 2 ** 61), 1, 0, "AVE"), "ConfigError",
                     r"kernel_size must be <= 2147483647"),
        expect_error("conv k=1 s=(1, 2**62) p=(0, 2**62)",
                     run_conv(1, (1, 2 ** 62), (0, 2 ** 62), 1), "ConfigError",
                     r"stride must be <= 2147483647"),
        # at the bound: computed, and equal to the references
        expect_ok("pool MAX at the bound", run_pool((1, BIG), (1, 2 ** 30), (0, BIG - 1), "MAX",
                                                    shape=(1, 1, 1, 4))),
        expect_ok("pool MAX stride 2**31-1", run_pool(2, BIG, 1, "MAX")),
        expect_ok("pool AVE stride 2**31-1", run_pool((2, 3), BIG, (1, 2), "AVE")),
        expect_ok("pool AVE FLOOR stride 2**31-1", run_pool(3, BIG, 2, "AVE", "FLOOR")),
        expect_error("pool AVE kernel and pad at the bound (row buffer past 2**31 - 1)",
                     run_pool((1, BIG), (1, 2 ** 30), (0, BIG - 1), "AVE", shape=(1, 1, 1, 4)),
                     "ShapeError", r"AVE pooling .* more than 2147483647"),
        expect_ok("conv stride and pad 2**31-1", run_conv(1, (1, BIG), (0, BIG - 1), 1)),
        expect_ok("conv dilation 2**31-1", run_conv(2, 1, (BIG // 2, 0), (BIG, 1))),
        expect_ok("conv mixed stride 2**31-1 x 1, pad 2", run_conv((2, 3), (BIG, 1), 2, 1)),
        expect_ok("deconv stride 2**31-1 pad 2**31-1", run_deconv(1, (1, BIG), (0, BIG - 1), 1)),
        expect_ok("deconv dilation 2**31-1 pad huge", run_deconv((2, 1), 1, (BIG // 2, 0),
                                                                 (BIG - 1, 1))),
        expect_error("deconv stride 2**31-1 (top too wide)", run_deconv(3, BIG, 0, 1),
                     "ShapeError", r"2\*\*31 - 1"),
    ]
    gen = np.random.default_rng(seed)

    def mag():
        return int(gen.choice(MAGNITUDES))

    def size_param(lo_valid):
        if gen.random() < 0.5:
            return (int(gen.integers(lo_valid, 4)), int(gen.integers(lo_valid, 4)))
        return mag() if gen.random() < 0.5 else (mag(), int(gen.integers(lo_valid, 4)))

    for i in range(70):
        kind = ("pool", "conv", "deconv")[i % 3]
        if kind == "pool":
            args = (size_param(1), size_param(1), size_param(0), ("MAX", "AVE")[i % 2],
                    ("CEIL", "FLOOR")[(i // 2) % 2])
            cases.append(either(f"pool {args}", run_pool(*args)))
        elif kind == "conv":
            k = (int(gen.integers(1, 4)), int(gen.integers(1, 4)))
            args = (k if gen.random() < 0.8 else size_param(1), size_param(1), size_param(0),
                    size_param(1))
            cases.append(either(f"conv {args}", run_conv(*args)))
        else:
            k = (int(gen.integers(1, 4)), int(gen.integers(1, 4)))
            args = (k, size_param(1), size_param(0), size_param(1))
            cases.append(either(f"deconv {args}", run_deconv(*args)))
    x = np.ones((1, 1, 2, 2), np.float32)
    mask = np.zeros((1, 1, 2, 2), np.int64)
    for m in MAGNITUDES:
        cases += [
            either(f"Unpooling(kernel_size=2, stride={m})", lambda m=m: Unpooling(
                kernel_size=2, stride=m).forward(x, mask)),
            either(f"Unpooling(out_size={m})", lambda m=m: Unpooling(
                kernel_size=2, stride=2, out_size=m).forward(x, mask)),
            either(f"Interp(zoom_factor={m})", lambda m=m: Interp(zoom_factor=m).forward(x)),
            either(f"Interp(shrink_factor={m})", lambda m=m: Interp(shrink_factor=m).forward(x)),
            either(f"Interp(height={m}, width=3)", lambda m=m: Interp(
                height=m, width=3).forward(x)),
            either(f"Interp(pad_beg={-m})", lambda m=m: Interp(
                zoom_factor=2, pad_beg=-m).forward(x)),
            either(f"Crop(offset={m})", lambda m=m: Crop(offset=m).forward(
                np.ones((1, 1, 4, 4)), np.ones((1, 1, 2, 2)))),
            either(f"Concat(axis={m})", lambda m=m: Concat(axis=m).forward(x, x)),
            either(f"Convolution(num_output={m})", lambda m=m: Convolution(
                num_output=m, kernel_size=1).forward(x)),
            either(f"Convolution(group={m})", lambda m=m: Convolution(
                num_output=2, kernel_size=1, group=m).forward(x)),
            either(f"SoftmaxWithLoss(ignore_label={m})", lambda m=m: SoftmaxWithLoss(
                ignore_label=m).forward(x, np.zeros((1, 2, 2), np.int64))),
            either(f"Dropout(seed={m})", lambda m=m: Dropout(seed=m).forward(x)),
            either(f"Eltwise(coeff=[{m}, 1])", lambda m=m: Eltwise(
                coeff=[m, 1]).forward(x, x)),
            either(f"BatchNorm(eps={m})", lambda m=m: BatchNorm(eps=m).forward(
                np.ones((2, 1, 2, 2)))),
        ]
    for bad in (2.5, "3", True, np.float64(2.0), [1, 2, 3], (1, "2"), float("nan"), 0, -1,
                2 ** 31):
        for name, make in (("kernel_size", lambda b: Pooling(kernel_size=b)),
                           ("stride", lambda b: Convolution(num_output=1, kernel_size=1,
                                                            stride=b)),
                           ("zoom_factor", lambda b: Interp(zoom_factor=b))):
            cases.append(expect_error(f"{name}={bad!r}", lambda make=make, b=bad: make(b),
                                      "ConfigError", re.escape(name)))
    return cases


# ------------------------------------------------------------------------------- calls
def expect_raises(kind, run):
    try:
        run()
    except ConvnetError as exc:
        assert type(exc).__name__ == kind, f"expected {kind}, got {type(exc).__name__}: {exc}"
        return exc
    raise AssertionError(f"expected {kind}, nothing was raised")


def refused_setup_then_backward():
    layer = Pooling(global_pooling=True, pool="AVE", dtype=np.float64)
    y = layer.forward(np.ones((1, 1, 3, 3)))
    expect_raises("ShapeError", lambda: layer.setup((2 ** 41, 1, 5, 5)))
    close(layer.backward(np.ones_like(y)), np.full((1, 1, 3, 3), 1 / 9), "backward")


def refused_setup_keeps_params_and_filler_stream():
    convnet.seed(5)
    layer = Convolution(num_output=2, kernel_size=3, param=[{}, {}, {}])
    before = fillers.global_rng().bit_generator.state
    expect_raises("ConfigError", lambda: layer.setup((1, 1, 4, 4)))
    assert layer.params == [] and layer.bottom_shapes is None
    assert fillers.global_rng().bit_generator.state == before, "filler stream advanced"


def refused_net_setup_changes_nothing():
    convnet.seed(6)
    net = convnet.Net("n")
    net.add(Convolution(num_output=2, kernel_size=3, name="c1"), bottom=["data"], top=["a"])
    net.add(Convolution(num_output=2, kernel_size=9, name="c2"), bottom=["a"], top=["b"])
    before = fillers.global_rng().bit_generator.state
    expect_raises("ShapeError", lambda: net.setup(data=(1, 1, 5, 5)))
    assert all(not layer.params and layer.bottom_shapes is None for layer in net.layers)
    assert fillers.global_rng().bit_generator.state == before, "filler stream advanced"
    assert net.input_shapes == {}


def interp_dtype_sequence():
    layer = Interp(zoom_factor=2, mode="nearest")
    layer.forward(np.ones((1, 1, 2, 2), np.int32))
    for bad in (np.ones((1, 1, 2, 2), np.complex64), np.array([[[["1", "2"], ["3", "4"]]]])):
        expect_raises("DataError", lambda bad=bad: layer.forward(bad))
    y = layer.forward(np.arange(4.0).reshape(1, 1, 2, 2))
    assert y.dtype == np.float32 and y.shape == (1, 1, 3, 3)
    layer.backward(np.ones_like(y))


def dtype_sequence_matches_fresh_layer():
    convnet.seed(7)
    layer = Convolution(num_output=2, kernel_size=3, pad=1)
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 4))
    layer.forward(x.astype(np.int32))
    layer.forward(x.astype(np.float16))
    y = layer.forward(x)
    fresh = Convolution(num_output=2, kernel_size=3, pad=1)
    fresh.setup(x.shape)
    fresh.weight.data[...] = layer.weight.data
    assert np.array_equal(fresh.forward(x), y)


def deconv_failed_output_size_then_backward():
    layer = Deconvolution(num_output=1, kernel_size=3, stride=2)
    x = np.ones((1, 1, 3, 3), np.float32)
    layer.forward(x)
    expect_raises("DataError", lambda: layer.forward(x.astype(np.complex64), output_size=(8, 8)))
    expect_raises("StateError", lambda: layer.backward(np.ones((1, 1, 8, 8), np.float32)))
    y = layer.forward(x)
    assert y.shape == (1, 1, 7, 7)
    layer.backward(np.ones_like(y))
    expect_raises("ShapeError", lambda: layer.forward(x, output_size=(100, 100)))
    expect_raises("StateError", lambda: layer.backward(np.ones_like(y)))


def refused_forward_then_backward():
    layer = ReLU()
    layer.forward(np.ones((2, 3)))
    expect_raises("DataError", lambda: layer.forward(np.ones((2, 3), np.complex128)))
    expect_raises("StateError", lambda: layer.backward(np.ones((2, 3))))


def zero_d_inputs_keep_their_shape():
    for layer in (ReLU(), Dropout(seed=0), Dropout(seed=0).eval()):
        y = layer.forward(np.float32(-2.0))
        assert np.shape(y) == (), f"{layer}: {np.shape(y)}"
        assert np.shape(layer.backward(np.float32(1.0))) == ()


def read_only_in_place():
    x = np.ones((2, 2), np.float32)
    x.flags.writeable = False
    for layer in (ReLU(in_place=True, name="r"), Dropout(in_place=True, seed=0, name="d")):
        exc = expect_raises("DataError", lambda layer=layer: layer.forward(x))
        assert "read-only" in str(exc) and layer.name in str(exc), str(exc)
    # a read-only array of another dtype is converted (copied), so in place is fine
    assert np.all(ReLU(in_place=True).forward(x.astype(np.float64)) == 1)


def shapes_are_integers():
    for bad in ((1, 3.9, 4, 4), "1344", (1, True, 4, 4), (1, np.float64(3), 4, 4), 7,
                ((1, 2), 3), (1, None, 4, 4), (1, -3, 4, 4), (1, 2 ** 31, 1, 1)):
        expect_raises("ShapeError", lambda bad=bad: ReLU(name="r").setup(bad))
    assert ReLU().setup((np.int64(1), np.int32(3), 4, 4)) == (1, 3, 4, 4)


def threads_bound():
    from convnet.backend import cpu
    for bad in (0, -1, cpu.MAX_THREADS + 1, 1000, 2.0, "2", True, None):
        expect_raises("ConfigError", lambda bad=bad: convnet.set_num_threads(bad))
    convnet.set_num_threads(cpu.MAX_THREADS)
    convnet.set_num_threads(1)


def threads_apply_to_every_thread():
    import threading
    convnet.set_num_threads(2)
    seen = []
    thread = threading.Thread(target=lambda: (ReLU().forward(np.ones(3)),
                                              seen.append(convnet.get_num_threads())))
    thread.start()
    thread.join()
    convnet.set_num_threads(1)
    thread = threading.Thread(target=lambda: seen.append(convnet.get_num_threads()))
    thread.start()
    thread.join()
    assert seen == [2, 1], seen


def bad_filler_specs():
    for spec in (dict(type="gaussian", std="abc"), dict(type="gaussian", std=None),
                 float("nan"), float("inf"), dict(type="constant", value=float("inf")),
                 dict(type="uniform", min=float("-inf")), dict(type="gaussian", mean=[1]),
                 dict(type="xavier", variance_norm=3), dict(type="constant", value=True),
                 dict(type="uniform", min="0", max=1)):
        expect_raises("ConfigError", lambda spec=spec: Convolution(
            num_output=1, kernel_size=1, weight_filler=spec))
    expect_raises("ConfigError", lambda: Convolution(
        num_output=1, kernel_size=1, weight_filler=dict(type="constant", value=1e39)).setup(
            (1, 1, 2, 2)))
    expect_raises("ConfigError", lambda: Convolution(
        num_output=1, kernel_size=1, weight_filler=lambda shape, rng: "junk").setup(
            (1, 1, 2, 2)))


def lr_checked_before_the_step():
    net = tiny_net()
    solver = convnet.SGDSolver(net, lr_policy="sigmoid", gamma=0.1, stepsize=10000)
    assert 0.0 <= solver.lr < 1e-300 + 1e-3      # a warm-up: finite, near 0
    solver.step(**batch())
    overflowing = convnet.SGDSolver(tiny_net("t2", with_bn=True), lr_policy="exp", gamma=1e10)
    overflowing.iter = 100
    bn = overflowing.net.layer("bn")
    before = {k: v.copy() for k, v in bn.buffers.items()}
    weights = [p.data.copy() for p in overflowing.net.learnable_params]
    expect_raises("ConfigError", lambda: overflowing.step(**batch()))
    assert all(np.array_equal(before[k], bn.buffers[k]) for k in before), "BN stats changed"
    assert all(np.array_equal(a, p.data) for a, p in zip(weights, overflowing.net.learnable_params))
    assert overflowing.iter == 100


def odd_arguments_are_convnet_errors():
    layer = ReLU(name="r")
    layer.forward(np.ones((2, 2)))
    for flags in (5, "yes", [2], [None], object()):
        expect_raises("ConfigError", lambda flags=flags: layer.backward(
            np.ones((2, 2)), propagate_down=flags))
    for dtype in ("junk", object, 3, np.int32):
        expect_raises("ConfigError", lambda dtype=dtype: ReLU(dtype=dtype))
    for path in (None, 3, ["a.npz"]):
        expect_raises("ConfigError", lambda path=path: tiny_net().load(path))
        expect_raises("ConfigError", lambda path=path: tiny_net().save(path))
    solver = convnet.SGDSolver(tiny_net())
    for history in ([[np.ones(2)]] * 2, [[np.ones((3, 3, 3, 3))], [np.array(["a"] * 3)]],
                    [[np.ones((3, 3, 3, 3)), np.ones((3, 3, 3, 3))], [np.ones(3)]]):
        expect_raises("ShapeError" if len(history[0]) == 1 else "ConfigError",
                      lambda history=history: solver.set_history(history))
    expect_raises("ShapeError", lambda: Convolution(
        num_output=BIG, kernel_size=(BIG, 1)).setup((1, 1, BIG, 1)))


def dtype_sequences_match_fresh_layers():
    """Every layer: after forwards on int, float16, bool and float32 bottoms (computed or
    refused), the float64 one gives what a fresh layer gives (no check or cache depends on
    what an earlier call saw)."""
    for cls, (kwargs, bottoms) in layer_specs().items():
        convnet.seed(9)
        layer = cls(**kwargs)
        if cls is Dropout:
            layer.eval()
        for dtype in (np.int32, np.float16, np.bool_, np.float32):
            try:      # computed or refused (bilinear Interp on ints): either way no trace
                layer.forward(*[b.astype(dtype) if b.dtype.kind == "f" else b
                                for b in bottoms])
            except ConvnetError:
                pass
        got = layer.forward(*bottoms)
        convnet.seed(9)
        fresh = cls(**kwargs)
        if cls is Dropout:
            fresh.eval()
        want = fresh.forward(*bottoms)
        for a, b in zip(got if isinstance(got, tuple) else (got,),
                        want if isinstance(want, tuple) else (want,)):
            assert np.array_equal(np.asarray(a), np.asarray(b)), f"{cls.__name__} differs"


def random_call_sequences(seed):
    """Random sequences of setup (good and bad shapes), forward (good and bad bottoms, any
    dtype) and backward (right and wrong top diffs) on every deterministic layer: only convnet
    errors, and every forward that computes equals a fresh layer's (params copied) on the
    same bottoms."""
    gen = np.random.default_rng(seed)
    specs = {
        "conv": (lambda: Convolution(num_output=2, kernel_size=3, pad=1, dtype=np.float64), 1),
        "deconv": (lambda: Deconvolution(num_output=2, kernel_size=2, stride=2,
                                         dtype=np.float64), 1),
        "pool max": (lambda: Pooling(kernel_size=2, stride=2, dtype=np.float64), 1),
        "pool ave global": (lambda: Pooling(global_pooling=True, pool="AVE",
                                            dtype=np.float64), 1),
        "interp": (lambda: Interp(zoom_factor=2, dtype=np.float64), 1),
        "interp nearest": (lambda: Interp(zoom_factor=3, mode="nearest", dtype=np.float64), 1),
        "relu": (lambda: ReLU(negative_slope=0.1, dtype=np.float64), 1),
        "bn global": (lambda: BatchNorm(use_global_stats=True, dtype=np.float64), 1),
        "eltwise": (lambda: Eltwise(operation="MAX", dtype=np.float64), 2),
        "concat": (lambda: Concat(dtype=np.float64), 2),
    }
    for label, (make, count) in specs.items():
        layer = make()
        for _ in range(25):
            c = int(gen.integers(1, 4))
            shape = (int(gen.integers(1, 3)), c, int(gen.integers(1, 7)), int(gen.integers(1, 7)))
            op = gen.random()
            try:
                if op < 0.2:
                    bad = gen.random() < 0.5
                    layer.setup(*[(shape[0], -1, 2, 2) if bad else shape] * count)
                elif op < 0.7:
                    dtype = gen.choice([np.float64, np.float32, np.int32, np.float16,
                                        np.complex64, np.bool_])
                    x = (gen.standard_normal(shape) * 3).astype(dtype)
                    y = layer.forward(*[x] * count)
                    fresh = make()
                    fresh.setup(*[x.shape] * count)
                    for a, b in zip(fresh.params, layer.params):
                        a.data[...] = b.data
                    for key in fresh.buffers:
                        fresh.buffers[key][...] = layer.buffers[key]
                    want = fresh.forward(*[x] * count)
                    assert np.array_equal(y, want), f"{label}: differs from a fresh layer"
                else:
                    top = layer.top_shapes[0] if layer.top_shapes else shape
                    wrong = gen.random() < 0.3
                    dy = np.ones(tuple(top[:-1]) + (top[-1] + 1,) if wrong else top)
                    layer.backward(dy)
            except ConvnetError:
                pass


def calls_cases(seed):
    funcs = [refused_setup_then_backward, refused_setup_keeps_params_and_filler_stream,
             refused_net_setup_changes_nothing, interp_dtype_sequence,
             dtype_sequence_matches_fresh_layer, deconv_failed_output_size_then_backward,
             refused_forward_then_backward, zero_d_inputs_keep_their_shape, read_only_in_place,
             shapes_are_integers, threads_bound, threads_apply_to_every_thread,
             bad_filler_specs, lr_checked_before_the_step, odd_arguments_are_convnet_errors,
             dtype_sequences_match_fresh_layers]
    return [expect_ok(f.__name__, f) for f in funcs] + [
        expect_ok(f"random_call_sequences({s})", lambda s=s: random_call_sequences(s))
        for s in range(seed, seed + 4)]


# ------------------------------------------------------------------------------- files
def tiny_net(name="tiny", num_output=3, with_bn=False, setup=True):
    """conv1 (3 -> num_output) [-> bn -> drop] -> SoftmaxWithLoss, for 2x3x6x5 data."""
    net = convnet.Net(name)
    layers = [(Convolution(num_output=num_output, kernel_size=3, pad=1, name="conv1"),
               ["data"], ["score"])]
    if with_bn:
        layers += [(BatchNorm(name="bn"), ["score"], ["bn"]),
                   (Dropout(seed=3, name="drop"), ["bn"], ["drop"])]
    layers.append((SoftmaxWithLoss(name="loss"), [layers[-1][2][0], "label"], ["loss"]))
    for layer, bottom, top in layers:
        net.add(layer, bottom=bottom, top=top)
    if setup:
        net.setup(data=(2, 3, 6, 5), label=(2, 6, 5))
    return net


def batch():
    rng = np.random.default_rng(1)
    return {"data": rng.standard_normal((2, 3, 6, 5)).astype(np.float32),
            "label": rng.integers(0, 3, (2, 6, 5))}


class Data:
    """A data iterator with state, as BatchIterator."""

    def __init__(self):
        self.position = 0

    def next_batch(self):
        self.position += 1
        return batch()

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        if not isinstance(state, dict) or not isinstance(state.get("position"), int):
            raise convnet.ConfigError(f"Data: bad state {state!r:.40}")
        self.position = state["position"]


def fingerprint(net, solver=None):
    """The complete observable state: every layer's params, diffs, buffers, setup, cached
    geometry flags and random stream, the net's input shapes, the filler stream, and the
    solver's iteration, history and data position."""
    out = {"input_shapes": dict(net.input_shapes),
           "filler": json.dumps(fillers.global_rng().bit_generator.state, default=str)}
    for layer in net.layers:
        out[layer.name] = (
            layer.bottom_shapes, layer.top_shapes, layer._forwarded,
            [(p.name, p.data.tobytes(), p.diff.tobytes(), p.lr_mult) for p in layer.params],
            {k: v.tobytes() for k, v in layer.buffers.items()},
            json.dumps(layer.get_rng_state(), default=str))
    if solver is not None:
        out["solver"] = (solver.iter, [[h.tobytes() for h in slots]
                                       for slots in solver.history_arrays()],
                         solver.data.get_state() if solver.data is not None else None)
    return out


def with_meta(**changes):
    def change(arrays):
        meta = json.loads(str(arrays["__format__"][()]))
        for key, value in changes.items():
            if value is KeyError:
                meta.pop(key, None)
            else:
                meta[key] = value
        arrays["__format__"] = np.array(json.dumps(meta))
    return change


def with_raw_meta(text):
    def change(arrays):
        arrays["__format__"] = np.array(text)
    return change


def raw_zip(dst, members):
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return dst


def npy_bytes(array, shape=None):
    buf = io.BytesIO()
    np.save(buf, array)
    data = buf.getvalue()
    if shape is not None:
        data = data.replace(repr(tuple(array.shape)).encode(), repr(shape).encode(), 1)
    return data


class Files:
    """Real files to mutate: weights and snapshots of tiny nets, in a temp folder."""

    def __init__(self, tmp):
        self.tmp = tmp
        convnet.seed(11)
        self.weights = os.path.join(tmp, "weights.npz")
        tiny_net(with_bn=True).save(self.weights)
        self.snapshot = os.path.join(tmp, "snapshot.npz")
        solver = convnet.SGDSolver(tiny_net(with_bn=True), data=Data())
        solver.step()
        solver.step()
        solver.snapshot(self.snapshot)
        self.adam = os.path.join(tmp, "adam.npz")
        adam = convnet.AdamSolver(tiny_net(with_bn=True), data=Data())
        adam.step()
        adam.snapshot(self.adam)
        self.other = os.path.join(tmp, "other.npz")
        tiny_net("other", num_output=4, with_bn=True).save(self.other)
        self.count = 0

    def path(self, name):
        self.count += 1
        return os.path.join(self.tmp, f"{self.count}_{name}")


def check_load(path, target):
    """Load ``path`` with ``target`` ("net", "net_unset", "sgd", "sgd_unset", "adam",
    "model"); on any
    refusal, the error must be a FileFormatError naming the file and the state unchanged."""
    def run():
        convnet.seed(21)
        solver = None
        if target == "model":
            from convnet.models import deconvnet_from_weights
            try:
                deconvnet_from_weights(path)
            except convnet.FileFormatError as exc:
                assert os.path.basename(path) in str(exc), f"file not named: {exc}"
                raise
            return
        if target in ("net", "net_unset"):
            net = tiny_net(with_bn=True, setup=target == "net")
        else:
            cls = convnet.AdamSolver if target == "adam" else convnet.SGDSolver
            solver = cls(tiny_net(with_bn=True, setup=target != "sgd_unset"), data=Data())
            if target != "sgd_unset":
                solver.step()
            net = solver.net
        before = fingerprint(net, solver)
        try:
            if solver is None:
                net.load(path)
            else:
                solver.restore(path)
        except convnet.FileFormatError as exc:
            assert os.path.basename(path) in str(exc), f"file not named: {exc}"
            after = fingerprint(net, solver)
            changed = [k for k in before if before[k] != after[k]]
            assert not changed, f"refused load changed {changed}: {exc}"
            raise
        # loaded: the net must run
        net.forward(**batch())
    return run


def crafted_file_cases(files):
    f = files
    cases = []

    def bad(label, path, targets=("net", "net_unset", "sgd"), pattern=None):
        for target in targets:
            cases.append(expect_error(f"{label} -> {target}", check_load(path, target),
                                      "FileFormatError", pattern))

    npy = f.path("weights.npy")
    np.save(npy, np.ones(3))
    renamed = f.path("renamed.npz")
    os.replace(npy, renamed)
    bad(".npy renamed .npz", renamed, ("net", "net_unset", "sgd", "model"))
    bad("huge declared npy", raw_zip(f.path("huge.npz"), {
        "conv1/weight.npy": npy_bytes(np.ones((2, 2), np.float32), (2 ** 20, 2 ** 20))}),
        ("net", "net_unset", "sgd", "model"), r"declares shape")
    bad("header declaring 2**42 elements", raw_zip(f.path("bomb.npz"), {
        "conv1/weight.npy": npy_bytes(np.ones((2, 2), np.float32), (2 ** 21, 2 ** 21))}),
        ("net",), r"declares shape")
    bad("member without .npy", raw_zip(f.path("noext.npz"), {
        "conv1/weight": npy_bytes(np.ones(3))}), ("net", "sgd", "model"), r"not an \.npy")
    bad("member not npy at all", raw_zip(f.path("text.npz"), {"a.npy": b"hello"}))
    bad("pickled member", raw_zip(f.path("pickle.npz"), {
        "a.npy": npy_bytes(np.array([{"x": 1}], dtype=object))}), pattern=r"pickle")
    bad("empty zip", raw_zip(f.path("emptyzip.npz"), {}))
    bad("directory", f.tmp)
    bad("missing", f.path("missing.npz"))
    deep = "[" * 100000 + "]" * 100000     # past the JSON parser's recursion limit
    for label, change in [
            ("deep metadata", with_raw_meta(deep)),
            ("deep metadata in a field", with_meta(input_shapes={
                "data": json.loads("[" * 80 + "]" * 80), "label": [2, 6, 5]})),
            ("metadata not JSON", with_raw_meta("{not json")),
            ("metadata a list", with_raw_meta("[1, 2]")),
            ("metadata numeric entry", lambda a: a.update(__format__=np.float32(3))),
            ("metadata 1-d entry", lambda a: a.update(__format__=np.array(["{}", "{}"]))),
            ("NaN in metadata", with_raw_meta('{"format": "convnet-weights", "version": NaN}')),
            ("negative input shape", with_meta(input_shapes={"data": [2, -3, 6, 5],
                                                             "label": [2, 6, 5]})),
            ("float input shape", with_meta(input_shapes={"data": [2, 3.5, 6, 5],
                                                          "label": [2, 6, 5]})),
            ("unknown input name", with_meta(input_shapes={"pixels": [2, 3, 6, 5]})),
            ("huge input shape", with_meta(input_shapes={"data": [2 ** 40, 3, 6, 5],
                                                         "label": [2 ** 40, 6, 5]})),
            ("version 99", with_meta(version=99)),
            ("version string", with_meta(version="1")),
            ("wrong format", with_meta(format="convnet-snapshot")),
            ("extra array", lambda a: a.update(junk=np.ones(2))),
            ("missing array", lambda a: a.pop("conv1/weight")),
            ("string weights", lambda a: a.update({"conv1/bias": np.array(["a", "b", "c"])})),
            ("complex weights", lambda a: a.update({"conv1/bias": np.ones(3, np.complex64)})),
            ("weights of another shape", lambda a: a.update({"conv1/bias": np.ones(4)})),
            ("0-d weights", lambda a: a.update({"conv1/bias": np.float32(1)}))]:
        targets = ("net_unset",) if "input" in label else ("net_unset", "net")
        bad(f"weights: {label}", rewrite_npz(f.weights, f.path("w.npz"), change), targets)
    bad("weights of another net", f.other, ("net", "net_unset"), r"other\.npz")
    for label, change in [
            ("iter Infinity", with_raw_meta(None)),
            ("iter huge float", with_meta(iter=1e300)),
            ("iter past 2**53", with_meta(iter=2 ** 60)),
            ("iter negative", with_meta(iter=-1)),
            ("iter string", with_meta(iter="5")),
            ("iter bool", with_meta(iter=True)),
            ("no iter", with_meta(iter=KeyError)),
            ("history_slots string", with_meta(history_slots="1")),
            ("history_started int", with_meta(history_started=1)),
            ("hyper a list", with_meta(hyper=[1, 2])),
            ("momentum a list", with_meta(hyper={"momentum": [0.9]})),
            ("lr_policy a number", with_meta(hyper={"lr_policy": 3})),
            ("stepvalues strings", with_meta(hyper={"stepvalues": ["a"]})),
            ("solver another type", with_meta(solver="AdamSolver")),
            ("solver not a string", with_meta(solver=["SGDSolver"])),
            ("rng_state a list", with_meta(rng_state=[1])),
            ("rng_state unknown layer", with_meta(rng_state={"nope": {}})),
            ("rng_state junk", with_meta(rng_state={"drop": {"state": "junk"}})),
            ("rng_state bad ndarray", with_meta(rng_state={"drop": {"__ndarray__": [1],
                                                                    "dtype": "junk"}})),
            ("data_state junk", with_meta(data_state={"position": "x"})),
            ("negative input shape", with_meta(input_shapes={"data": [2, -3, 6, 5],
                                                             "label": [2, 6, 5]})),
            ("history strings", lambda a: a.update({"history/0/conv1/bias":
                                                    np.array(["a", "b", "c"])})),
            ("history NaN", lambda a: a.update({"history/0/conv1/bias":
                                                np.array([np.nan, 0, 0], np.float32)})),
            ("history Inf", lambda a: a.update({"history/0/conv1/weight": np.full(
                (3, 3, 3, 3), np.inf, np.float32)})),
            ("history wrong shape", lambda a: a.update({"history/0/conv1/bias": np.ones(4)})),
            ("history missing", lambda a: a.pop("history/0/conv1/bias")),
            ("history extra", lambda a: a.update({"history/0/nope/w": np.ones(1)})),
            ("history slot 1 in SGD", lambda a: a.update({"history/1/conv1/bias": np.ones(3)})),
            ("weights strings", lambda a: a.update({"net/conv1/bias": np.array(["a", "b", "c"])})),
            ("weights missing", lambda a: a.pop("net/conv1/weight")),
            ("unexpected entry", lambda a: a.update(junk=np.ones(1)))]:
        if label == "iter Infinity":
            meta = json.loads(str(np.load(f.snapshot)["__format__"][()]))
            meta["iter"] = 12345
            change = with_raw_meta(json.dumps(meta).replace("12345", "Infinity"))
        targets = ("sgd_unset",) if "input" in label else ("sgd", "sgd_unset")
        bad(f"snapshot: {label}", rewrite_npz(f.snapshot, f.path("s.npz"), change), targets)
    bad("adam snapshot into SGD", f.adam, ("sgd",), r"AdamSolver")
    bad("weights file as a snapshot", f.weights, ("sgd",), r"convnet-weights")
    bad("snapshot as weights", f.snapshot, ("net",), r"convnet-snapshot")
    # a legal 250-character file name can be written and read back
    long_name = os.path.join(f.tmp, "w" * 246 + ".npz")
    cases.append(expect_ok("250-character file name", lambda: (
        tiny_net().save(long_name), tiny_net().load(long_name))))
    return cases


def mutation_cases(files, seed):
    """Seeded mutations of the real files: truncations, flipped bytes, overwritten runs."""
    gen = np.random.default_rng(seed)
    cases = []
    sources = [(files.weights, ("net", "net_unset")), (files.snapshot, ("sgd",)),
               (files.adam, ("adam",))]
    for src, targets in sources:
        data = open(src, "rb").read()
        cuts = sorted(set([0, 1, 4, 30, len(data) // 2, len(data) - 22, len(data) - 1] +
                          [int(c) for c in gen.integers(1, len(data), 6)]))
        mutants = [("truncated at %d" % c, data[:c]) for c in cuts]
        for _ in range(14):
            b = bytearray(data)
            for pos in gen.integers(0, len(b), int(gen.integers(1, 4))):
                b[pos] ^= 1 << int(gen.integers(8))
            mutants.append(("bits flipped", bytes(b)))
        for _ in range(4):
            b = bytearray(data)
            pos = int(gen.integers(0, len(b) - 8))
            b[pos:pos + 8] = bytes([0xFF] * 8)
            mutants.append((f"run of 0xFF at {pos}", bytes(b)))
        for label, content in mutants:
            path = files.path(os.path.basename(src))
            with open(path, "wb") as out:
                out.write(content)
            for target in targets:
                # a flip in a part of the zip no reader checks may leave a loadable file
                cases.append(either(f"{os.path.basename(src)} {label} -> {target}",
                                    check_load(path, target), ("FileFormatError",)))
    return cases


# ------------------------------------------------------------------------------- params
#: odd values for every constructor parameter and public argument
ODD = (None, "x", "", float("nan"), float("inf"), -float("inf"), 2 ** 63, -2 ** 63, 2 ** 200,
       [1], [], {}, (), object(), 1e308, -1e308, True, False, np.float32(1), 1j, np.int64(2),
       -1, 0, 1, 0.5, 3, np.ones(3), np.ones((2, 3, 6, 5), np.complex64), [[1], [1, 2]],
       np.array([1, "a"], dtype=object), np.ones((2, 3, 6, 5), np.float32)[..., ::2],
       np.zeros((2, 3, 6, 5), dtype=[("a", "f4")]), np.zeros((2, 3, 6, 5), "M8[s]"),
       b"\x00\x01", "a\x00b", np.ma.masked_array(np.ones((2, 3, 6, 5)), mask=True))


def layer_specs():
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4))
    labels = np.zeros((2, 4, 4), np.int64)
    mask = np.zeros((2, 2, 4, 4), np.int64)
    return {
        Convolution: (dict(num_output=2, kernel_size=3), (x,)),
        Deconvolution: (dict(num_output=2, kernel_size=3), (x,)),
        Pooling: (dict(kernel_size=2), (x,)), Unpooling: (dict(kernel_size=2), (x, mask)),
        Interp: (dict(zoom_factor=2), (x,)), ReLU: ({}, (x,)), Dropout: ({}, (x,)),
        BatchNorm: ({}, (x,)), Crop: ({}, (x, x[:, :, :2, :2])), Concat: ({}, (x, x)),
        Eltwise: ({}, (x, x)), EuclideanLoss: ({}, (x, x)),
        SoftmaxWithLoss: ({}, (x, labels)),
    }


def full_pass(cls, kwargs, bottoms):
    """Construct, forward and backward: ok, or a convnet error at any stage."""
    def run():
        layer = cls(**kwargs)
        y = layer.forward(*bottoms)
        if layer.is_loss:
            layer.backward()
        else:
            layer.backward(*[np.ones_like(t) for t in (y if isinstance(y, tuple) else (y,))])
    return run


def params_cases(seed):
    import inspect
    cases = []
    for cls, (base, bottoms) in layer_specs().items():
        signature = inspect.signature(cls.__init__).parameters
        names = [p for p in signature if p not in ("self", "kwargs")]
        if "kwargs" in signature:
            names += ["name", "dtype", "loss_weight", "param"]
        for name in dict.fromkeys(names):
            for value in ODD:
                cases.append(either(f"{cls.__name__}({name}={value!r:.30})",
                                    full_pass(cls, dict(base, **{name: value}), bottoms)))
    for cls in (convnet.SGDSolver, convnet.AdamSolver):
        for name in [p for p in inspect.signature(cls.__init__).parameters
                     if p not in ("self", "net")]:
            for value in ODD:
                cases.append(either(f"{cls.__name__}({name}={value!r:.30})",
                                    lambda cls=cls, name=name, value=value: cls(
                                        tiny_net(), **{name: value}).step(**batch())))
    calls = {
        "Net(name=)": lambda v: convnet.Net(v),
        "Net(debug=)": lambda v: convnet.Net("n", debug=v),
        "net.forward(data=)": lambda v: tiny_net().forward(data=v, label=batch()["label"]),
        "net.forward(label=)": lambda v: tiny_net().forward(data=batch()["data"], label=v),
        "net.setup(data=)": lambda v: tiny_net(setup=False).setup(data=v, label=(2, 6, 5)),
        "net.add(bottom=)": lambda v: convnet.Net("n").add(ReLU(), bottom=v),
        "net.add(top=)": lambda v: convnet.Net("n").add(ReLU(), bottom=["a"], top=v),
        "net.add(layer)": lambda v: convnet.Net("n").add(v, bottom=["a"]),
        "net.layer()": lambda v: tiny_net().layer(v),
        "net.to()": lambda v: tiny_net().to(v),
        "net.train()": lambda v: tiny_net().train(v),
        "net.set_rng_state()": lambda v: tiny_net(with_bn=True).set_rng_state(v),
        "net.set_rng_state(drop=)": lambda v: tiny_net(with_bn=True).set_rng_state({"drop": v}),
        "solver.step(data=)": lambda v: convnet.SGDSolver(tiny_net()).step(
            data=v, label=batch()["label"]),
        "solver.restore()": lambda v: convnet.SGDSolver(tiny_net()).restore(v),
        "solver.snapshot()": lambda v: convnet.SGDSolver(tiny_net()).snapshot(v),
        "convnet.seed()": lambda v: convnet.seed(v),
        "set_num_threads()": lambda v: convnet.set_num_threads(v),
        "layer.to()": lambda v: ReLU().to(v),
        "layer.train()": lambda v: ReLU().train(v).forward(np.ones(2)),
        "layer.set_rng_state()": lambda v: Dropout().set_rng_state(v),
        "deconv.forward(output_size=)": lambda v: Deconvolution(
            num_output=1, kernel_size=2).forward(np.ones((1, 1, 2, 2)), output_size=v),
        "deconv.forward(x, output_size=(3, 3))": lambda v: Deconvolution(
            num_output=1, kernel_size=2).forward(v, output_size=(3, 3)),
        "deconv.forward(ragged, output_size=)": lambda v: Deconvolution(
            num_output=1, kernel_size=2).forward([[[[1.0], [1.0, 2.0]]]], output_size=v),
        "conv.forward(x)": lambda v: Convolution(num_output=1, kernel_size=1).forward(v),
        "pool.forward(x)": lambda v: Pooling(kernel_size=1).forward(v),
        "softmax.forward(labels=)": lambda v: SoftmaxWithLoss().forward(
            np.ones((1, 3, 2, 2)), v),
        "unpool.forward(mask=)": lambda v: Unpooling(kernel_size=2, stride=2).forward(
            np.ones((1, 1, 2, 2)), v),
        "interp.forward(x, ref=)": lambda v: Interp().forward(np.ones((1, 1, 2, 2)), v),
        "relu.backward()": lambda v: (lambda r: (r.forward(np.ones((2, 3, 6, 5))),
                                                 r.backward(v)))(ReLU()),
        "loss.backward()": lambda v: (lambda r: (r.forward(np.ones((2, 3)), np.ones((2, 3))),
                                                 r.backward(v)))(EuclideanLoss()),
    }
    from convnet import metrics, testing
    x = np.random.default_rng(0).standard_normal((1, 1, 3, 3))
    for name in ("eps", "rtol", "atol", "exhaustive", "directions", "check_params", "seed",
                 "top_diffs", "propagate_down"):
        calls[f"check_gradients({name}=)"] = lambda v, name=name: testing.check_gradients(
            ReLU(dtype=np.float64), x + 0.5, **{name: v})
    calls["check_gradients(bottom)"] = lambda v: testing.check_gradients(
        ReLU(dtype=np.float64), v)
    calls["check_gradients(layer)"] = lambda v: testing.check_gradients(v, x)
    calls["metrics.pixel_accuracy()"] = metrics.pixel_accuracy
    calls["metrics.class_iou()"] = metrics.class_iou
    calls["metrics.confusion_matrix(pred=)"] = lambda v: metrics.confusion_matrix(
        v, np.zeros((2, 2), int), 3)
    for label, call in calls.items():
        for value in ODD:
            if "directions" in label and isinstance(value, int) and value > 2 ** 20:
                continue     # 2**63 directions: a valid (endless) request, not bad input
            # the checker's own verdict on a kink or an integer input is a valid outcome
            kinds = CONVNET_ERRORS + (("GradientCheckError",) if "gradients" in label else ())
            cases.append(either(f"{label} {value!r:.30}", lambda c=call, v=value: c(v), kinds))
    cases.append(expect_ok("threads back to 1", lambda: convnet.set_num_threads(1)))
    return cases


# ------------------------------------------------------------------------------- driver
def run_case(case, summary):
    sys.stderr.write(f"case {case.label[:160]}\n")
    sys.stderr.flush()
    summary["cases"] += 1
    outcome, message, where = "ok", "", ""
    try:
        case.run()
    except ConvnetError as exc:
        outcome, message = type(exc).__name__, str(exc)
        where = traceback.format_exc(limit=-3)
    except Exception as exc:   # the finding: a bare exception (AssertionError included)
        outcome, message = f"bare {type(exc).__name__}", str(exc)
        where = traceback.format_exc(limit=-4)
    summary["outcomes"][outcome] = summary["outcomes"].get(outcome, 0) + 1
    problem = None
    if outcome not in case.expect:
        problem = f"expected {' or '.join(case.expect)}, got {outcome}"
    elif outcome != "ok" and case.pattern and not re.search(case.pattern, message):
        problem = f"message does not match {case.pattern!r}"
    elif "\n" in message.strip() and outcome != "GradientCheckError":   # a report, by design
        problem = "multi-line message"
    if problem:
        summary["defects"].append({"case": case.label[:200], "problem": problem,
                                   "error": message[:400], "where": where[-600:]})


def main(argv):
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    group = argv[0]
    seed = int(argv[1]) if len(argv) > 1 else 16
    summary = {"group": group, "cases": 0, "outcomes": {}, "defects": []}
    convnet.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)        # odd paths ("x") that a save accepts land here, not in the checkout
        if group == "geometry":
            cases = geometry_cases(seed)
        elif group == "calls":
            cases = calls_cases(seed)
        elif group == "params":
            cases = params_cases(seed)
        elif group == "files":
            files = Files(tmp)
            cases = crafted_file_cases(files) + mutation_cases(files, seed)
        else:
            raise SystemExit(f"unknown group {group!r}")
        for case in cases:
            run_case(case, summary)
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1:])
