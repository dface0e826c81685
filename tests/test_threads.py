"""Layers used from several Python threads at once.

1. Separate layer instances with the same weights, run concurrently (forward, backward, param
   diffs), give bit-identical results to the same calls made one at a time.
2. The compiled kernels release the GIL: while one thread is inside a long kernel, another
   Python thread makes progress. With the switch interval set far beyond the kernel's run
   time, a kernel that held the GIL would let the other thread run exactly zero times during
   the call (the control case shows that); no timing is asserted.
"""

import contextlib
import sys
import threading
import time

import numpy as np
import pytest

import convnet
from convnet.backend import cpu
from convnet.layers import (Convolution, Deconvolution, Interp, Pooling, SoftmaxWithLoss,
                            Unpooling)

THREADS = 4


@pytest.fixture
def two_omp_threads():
    before = convnet.get_num_threads()
    convnet.set_num_threads(2)
    yield
    convnet.set_num_threads(before)


def conv_case(rng):
    return (lambda: Convolution(num_output=5, kernel_size=3, stride=(1, 2), pad=1, group=1),
            lambda: [rng.standard_normal((2, 4, 9, 11)).astype(np.float32)])


def deconv_case(rng):
    return (lambda: Deconvolution(num_output=3, kernel_size=4, stride=2, pad=1),
            lambda: [rng.standard_normal((2, 4, 5, 7)).astype(np.float32)])


def pool_case(rng):
    return (lambda: Pooling(kernel_size=3, stride=2, pad=1, return_mask=True),
            lambda: [rng.standard_normal((2, 3, 11, 9)).astype(np.float32)])


def ave_pool_case(rng):
    return (lambda: Pooling(kernel_size=(3, 2), stride=2, pool="AVE"),
            lambda: [rng.standard_normal((2, 3, 11, 9)).astype(np.float32)])


def unpool_case(rng):
    def bottoms():
        x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
        _, mask = Pooling(kernel_size=2, stride=2, return_mask=True).forward(
            rng.standard_normal((2, 3, 8, 10)).astype(np.float32))
        return [x, mask]
    return lambda: Unpooling(kernel_size=2, stride=2), bottoms


def interp_case(rng):
    return (lambda: Interp(zoom_factor=3, pad_beg=-1),
            lambda: [rng.standard_normal((2, 3, 7, 6)).astype(np.float32)])


def softmax_case(rng):
    def bottoms():
        labels = rng.integers(0, 4, (2, 7, 9))
        labels[0, 0, :3] = 255
        return [rng.standard_normal((2, 4, 7, 9)).astype(np.float32) * 5, labels]
    return lambda: SoftmaxWithLoss(ignore_label=255), bottoms


CASES = {"conv": conv_case, "deconv": deconv_case, "max_pool": pool_case,
         "ave_pool": ave_pool_case, "unpool": unpool_case, "interp": interp_case,
         "softmax_loss": softmax_case}


def run_once(layer, bottoms, top_diffs):
    """Forward and backward from zeroed param diffs; everything the call produced."""
    for p in layer.params:
        p.zero_diff()
    out = layer.forward(*bottoms)
    if layer.is_loss:
        grads = layer.backward()
        tops = [np.float64(out)]
    else:
        tops = list(out) if isinstance(out, tuple) else [out]
        grads = layer.backward(*top_diffs[:len(tops)])
    grads = [g for g in (grads if isinstance(grads, tuple) else (grads,)) if g is not None]
    return [np.array(t, copy=True) for t in tops + grads] + [p.diff.copy() for p in layer.params]


@pytest.mark.parametrize("name", sorted(CASES))
def test_concurrent_layers_match_one_at_a_time_bitwise(name, two_omp_threads):
    rng = np.random.default_rng(5)
    make, make_bottoms = CASES[name](rng)
    layers = [make() for _ in range(THREADS)]
    inputs = [make_bottoms() for _ in range(THREADS)]
    for i, layer in enumerate(layers):
        layer.name = f"{name}{i}"
        layer.setup(*(np.shape(b) for b in inputs[i]))
        for p, p0 in zip(layer.params, layers[0].params):
            p.data[...] = p0.data          # same weights everywhere
    top_shapes = layers[0].top_shapes
    diffs = [[rng.standard_normal(s).astype(np.float32) for s in top_shapes]
             for _ in range(THREADS)]
    expected = [run_once(layer, inputs[i], diffs[i]) for i, layer in enumerate(layers)]

    rounds = 6
    results = [[] for _ in range(THREADS)]
    errors = []
    barrier = threading.Barrier(THREADS)

    def work(i):
        try:
            barrier.wait()
            for _ in range(rounds):
                results[i].append(run_once(layers[i], inputs[i], diffs[i]))
        except BaseException as exc:      # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(THREADS):
        assert len(results[i]) == rounds
        for got in results[i]:
            for a, b in zip(got, expected[i]):
                np.testing.assert_array_equal(a, b, err_msg=f"{name} thread {i}")


# --------------------------------------------------------------------------- the GIL
@contextlib.contextmanager
def long_switch_interval():
    before = sys.getswitchinterval()
    sys.setswitchinterval(30.0)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def progress_during(call, tries=5):
    """How often a second Python thread ran while ``call()`` was running, in the best of
    ``tries`` calls (0 for a call that holds the GIL throughout)."""
    inside, stop, hits = [False], [False], [0]
    started = threading.Event()

    def other():
        started.set()
        while not stop[0]:
            if inside[0]:
                hits[0] += 1
            time.sleep(0)          # releases the GIL, so the caller can get it back

    with long_switch_interval():
        for _ in range(tries):
            stop[0], hits[0] = False, 0
            started.clear()
            t = threading.Thread(target=other)
            t.start()
            started.wait()
            inside[0] = True
            call()
            inside[0] = False
            stop[0] = True
            t.join()
            if hits[0]:
                break
    return hits[0]


def pure_python_work():
    total = 0
    for i in range(300_000):
        total += i * i
    return total


def big_bottoms(rng):
    x = rng.standard_normal((4, 16, 64, 64)).astype(np.float32)
    labels = rng.integers(0, 16, (4, 64, 64))
    return x, labels


def gil_cases(rng):
    x, labels = big_bottoms(rng)
    conv = Convolution(num_output=32, kernel_size=3, pad=1, name="conv")
    conv.forward(x)
    dy = rng.standard_normal(conv.top_shapes[0]).astype(np.float32)
    pool = Pooling(kernel_size=3, stride=1, pad=1, name="pool")
    interp = Interp(zoom_factor=3, name="interp")
    loss = SoftmaxWithLoss(name="loss")
    up = Unpooling(kernel_size=2, stride=2, name="unpool")
    _, mask = Pooling(kernel_size=2, stride=2, return_mask=True).forward(
        np.repeat(np.repeat(x, 2, axis=2), 2, axis=3))
    return {
        "conv_forward": lambda: conv.forward(x),
        "conv_backward": lambda: conv.backward(dy),
        "max_pool_forward": lambda: pool.forward(x),
        "interp_forward": lambda: interp.forward(x),
        "softmax_loss_forward": lambda: loss.forward(x, labels),
        "unpool_forward": lambda: up.forward(x, mask),
    }


def test_a_call_holding_the_gil_lets_no_other_thread_run():
    assert progress_during(pure_python_work, tries=2) == 0


#: the backend functions each GIL case runs, and what a stand-in must return
BACKEND_CALLS = {
    "conv_forward": (["conv_forward"], None),
    "conv_backward": (["conv_backward", "conv_backward_bias"], None),
    "max_pool_forward": (["pooling_max_forward"], None),
    "interp_forward": (["interp_bilinear_forward"], None),
    "softmax_loss_forward": (["loss_softmax_forward"], (0.0, 1, -1)),
    "unpool_forward": (["pooling_unpool_forward"], -1),
}


@pytest.mark.parametrize("name", sorted(BACKEND_CALLS))
def test_the_layer_code_around_each_kernel_keeps_the_gil(name, monkeypatch):
    """The probe's control: with the kernels replaced by Python that holds the GIL, the same
    layer call lets the other thread run zero times; so progress in
    test_kernels_release_the_gil comes from the kernel itself."""
    monkeypatch.setattr(cpu, "blas_threads", lambda n: contextlib.nullcontext())
    kernel = gil_cases(np.random.default_rng(0))[name]
    kernel()
    functions, result = BACKEND_CALLS[name]

    def stand_in(*args, **kwargs):
        pure_python_work()
        return result
    for function in functions:
        monkeypatch.setattr(cpu, function, stand_in)
    assert progress_during(kernel, tries=2) == 0


@pytest.mark.parametrize("name", ["conv_forward", "conv_backward", "max_pool_forward",
                                  "interp_forward", "softmax_loss_forward", "unpool_forward"])
def test_kernels_release_the_gil(name, monkeypatch):
    # BLAS thread limits go through ctypes, which releases the GIL by itself; keep them out
    monkeypatch.setattr(cpu, "blas_threads", lambda n: contextlib.nullcontext())
    before = convnet.get_num_threads()
    convnet.set_num_threads(1)
    try:
        kernel = gil_cases(np.random.default_rng(0))[name]
        kernel()                                 # warm-up: buffers and tables exist
        start = time.perf_counter()
        kernel()
        # enough calls in a row for a window of ~50 ms (only sizes the work, asserts
        # nothing); the Python in between holds the GIL, so zero progress still means that
        # every call kept it
        repeat = max(2, min(200, int(0.05 / max(time.perf_counter() - start, 1e-4))))

        def call():
            for _ in range(repeat):
                kernel()
        assert progress_during(call) > 0, f"{name} held the GIL for its whole run"
    finally:
        convnet.set_num_threads(before)
