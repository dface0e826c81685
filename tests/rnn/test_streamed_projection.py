"""CellRunner's streamed input projection: computed step block by step block beside the time
loop (a worker thread at two threads, up front at one), equal to the projection computed
whole, bit for bit the same at one and two threads, and a failing block raises on the
caller's thread instead of hanging the loop."""

import contextlib
import threading

import numpy as np
import pytest

import convnet
from convnet.layers import InnerProduct
from convnet.rnn import CellRunner, LSTMCell
from convnet.rnn import runner as runner_module
from convnet.rnn.runner import _step_blocks, _StreamedProjection


@contextlib.contextmanager
def threads_set_to(n):
    before = convnet.get_num_threads()
    convnet.set_num_threads(n)
    try:
        yield
    finally:
        convnet.set_num_threads(before)


@pytest.mark.parametrize("T,N", [(1, 1), (2, 3), (7, 1), (50, 64), (13, 600), (100, 5)])
def test_step_blocks_cover_every_step_once_in_order(T, N):
    blocks = _step_blocks(T, N)
    assert blocks[0] == (0, 1)
    assert [a for a, _ in blocks[1:]] == [b for _, b in blocks[:-1]]
    assert blocks[-1][1] == T
    cap = max(1, -(-runner_module._BLOCK_ROWS // N))
    assert all(0 < b - a <= cap for a, b in blocks)


@pytest.mark.parametrize("threads", [1, 2])
def test_streamed_projection_equals_the_whole_projection(threads):
    r = np.random.default_rng(0)
    x = r.standard_normal((9, 4, 6))
    convnet.seed(1)
    layer = InnerProduct(num_output=5, axis=2, dtype=np.float64, bias_filler="gaussian")
    whole = layer.forward(x).copy()
    with threads_set_to(threads):
        stream = _StreamedProjection(layer, x)
        with stream:
            for t in range(9):
                stream.wait(t)
                np.testing.assert_allclose(stream.top[t], whole[t], rtol=1e-13, atol=1e-13)
    # the layer is left as a forward leaves it: backward works
    dx = layer.backward(np.ones_like(whole))
    assert dx.shape == x.shape


def _lstm_run(threads, lengths=None):
    with threads_set_to(threads):
        convnet.seed(5)
        runner = CellRunner(LSTMCell(12, 16))
        r = np.random.default_rng(2)
        x = r.standard_normal((11, 7, 12)).astype(np.float32)
        y, last = runner.forward(x, lengths=lengths)
        g = runner.backward(r.standard_normal(y.shape).astype(np.float32))
        return y.copy(), g["x"].copy(), [p.diff.copy() for p in runner.params]


@pytest.mark.parametrize("lengths", [None, np.array([11, 3, 7, 1, 11, 5, 9])])
def test_lstm_runner_is_bit_identical_at_one_and_two_threads(lengths):
    one, two = _lstm_run(1, lengths), _lstm_run(2, lengths)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    for a, b in zip(one[2], two[2]):
        np.testing.assert_array_equal(a, b)


def test_streamed_lstm_matches_the_unstreamed_one(monkeypatch):
    convnet.seed(5)
    runner = CellRunner(LSTMCell(12, 16, dtype=np.float64))
    x = np.random.default_rng(3).standard_normal((6, 4, 12))
    streamed, _ = runner.forward(x)
    streamed = streamed.copy()
    monkeypatch.setattr(runner_module, "_streams", lambda layer, x: False)
    whole, _ = runner.forward(x)
    np.testing.assert_allclose(streamed, whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_failing_block_raises_on_the_callers_thread(threads, monkeypatch):
    convnet.seed(5)
    runner = CellRunner(LSTMCell(12, 16))
    x = np.random.default_rng(3).standard_normal((20, 4, 12)).astype(np.float32)
    real = InnerProduct.forward_streamed

    def failing(self, bottom):
        top, rows = real(self, bottom)

        def bad_rows(lo, hi):
            if lo > 0:
                raise MemoryError("block failed")
            rows(lo, hi)
        return top, bad_rows
    monkeypatch.setattr(InnerProduct, "forward_streamed", failing)
    with threads_set_to(threads), pytest.raises(MemoryError, match="block failed"):
        runner.forward(x)
    monkeypatch.setattr(InnerProduct, "forward_streamed", real)
    y, _ = runner.forward(x)            # the runner still works afterwards
    assert np.isfinite(y).all()


def test_streamed_backward_matches_the_layers_own_backward():
    """The projection's backward in step blocks (last first) equals InnerProduct.backward
    on the whole top diff: input diff and param diffs."""
    convnet.seed(5)
    runner = CellRunner(LSTMCell(12, 16, dtype=np.float64))
    r = np.random.default_rng(4)
    x = r.standard_normal((9, 4, 12))
    y, _ = runner.forward(x)
    dy = r.standard_normal(y.shape)
    for p in runner.params:
        p.diff[...] = 0
    streamed = runner.backward(dy)["x"].copy()
    streamed_diffs = [p.diff.copy() for p in runner.proj.params]
    # the same, with the projection's backward run whole after the loop
    runner.forward(x)
    for p in runner.params:
        p.diff[...] = 0
    g = runner.rnn.backward({runner._out_key: dy})
    whole = runner.proj.backward(g["x"])
    np.testing.assert_allclose(streamed, whole, rtol=1e-12, atol=1e-12)
    for a, p in zip(streamed_diffs, runner.proj.params):
        np.testing.assert_allclose(a, p.diff, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_failing_backward_block_raises_and_the_worker_stops(threads, monkeypatch):
    convnet.seed(5)
    runner = CellRunner(LSTMCell(12, 16))
    r = np.random.default_rng(3)
    x = r.standard_normal((20, 4, 12)).astype(np.float32)
    y, _ = runner.forward(x)
    real = InnerProduct.backward_streamed

    def failing(self, top_diff, propagate_down=True):
        dx, rows = real(self, top_diff, propagate_down)

        def bad_rows(lo, hi):
            raise MemoryError("backward block failed")
        return dx, bad_rows
    monkeypatch.setattr(InnerProduct, "backward_streamed", failing)
    with threads_set_to(threads), pytest.raises(MemoryError, match="backward block failed"):
        runner.backward(np.ones_like(y))
    assert not any(t.name == "convnet-projection" for t in threading.enumerate())


def test_backward_streamed_refuses_a_wrong_top_diff():
    layer = InnerProduct(num_output=3, axis=2, dtype=np.float32)
    layer.forward(np.zeros((2, 4, 5), np.float32))
    with pytest.raises(convnet.ShapeError, match="top diff of shape 2x4x3"):
        layer.backward_streamed(np.zeros((2, 4, 4), np.float32))
    with pytest.raises(convnet.StateError, match="before forward"):
        InnerProduct(num_output=3).backward_streamed(np.zeros((2, 3), np.float32))


def test_engine_calls_step_ready_before_each_step_and_step_done_after_it():
    from convnet import Net
    from convnet.layers import Eltwise, TanH
    from convnet.rnn import RecurrentNetwork
    net = Net("step")
    net.add(InnerProduct(num_output=3, name="w", dtype=np.float64), bottom=["h_prev"],
            top=["a"])
    net.add(Eltwise("SUM", name="sum", dtype=np.float64), bottom=["a", "x_t"], top=["pre"])
    net.add(TanH(name="act", dtype=np.float64), bottom=["pre"], top=["h"])
    rnn = RecurrentNetwork(net, {"h": ("h_prev", "h")}, inputs={"x_t": "x"})
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    seen = []
    rnn.forward({"x": x}, initial={"h": np.zeros((2, 3))},
                step_ready=lambda t: seen.append(("ready", t)))
    assert seen == [("ready", t) for t in range(4)]
    done = []

    def step_done(t, d_seq):
        # step t's input diff is final when the engine says so
        done.append((t, d_seq["x"][t].copy()))
    g = rnn.backward({"h_all": np.ones((4, 2, 3))}, step_done=step_done)
    assert [t for t, _ in done] == [3, 2, 1, 0]
    for t, d in done:
        np.testing.assert_array_equal(d, g["x"][t])


def test_forward_streamed_checks_its_bottom_as_forward_does():
    layer = InnerProduct(num_output=3, axis=2, dtype=np.float32)
    with pytest.raises(convnet.DataError, match="real numbers"):
        layer.forward_streamed(np.zeros((2, 4, 5), np.complex64))
    x = np.random.default_rng(1).standard_normal((2, 4, 5)).astype(np.float32)
    top, rows = layer.forward_streamed(x)
    rows(0, 3)
    rows(3, 8)
    np.testing.assert_allclose(top, layer.forward(x), rtol=1e-6, atol=1e-6)
