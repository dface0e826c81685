"""RecurrentNetwork: links, gradients through time (finite differences), static vs dynamic,
recompute, forward_only, lengths, and every bad link or shape."""

import numpy as np
import pytest

import convnet
from convnet import Net
from convnet.errors import ConfigError, ShapeError, StateError
from convnet.layers import Concat, Eltwise, InnerProduct, TanH
from convnet.rnn import CellRunner, LSTMCell, MultiRNNCell, RecurrentNetwork


def elman_net(hidden=4, dtype=np.float64):
    """h = tanh(W [x_t, h_prev] + U ctx); out = V h: a state, a per-step input, a static
    input (ctx) and a step output."""
    net = Net("elman")
    net.add(Concat(axis=1, name="cat", dtype=dtype), bottom=["x_t", "h_prev"], top=["xh"])
    net.add(InnerProduct(num_output=hidden, name="w", dtype=dtype, bias_filler="gaussian"),
            bottom=["xh"], top=["a"])
    net.add(InnerProduct(num_output=hidden, bias_term=False, name="u", dtype=dtype),
            bottom=["ctx"], top=["b"])
    net.add(Eltwise("SUM", name="sum", dtype=dtype), bottom=["a", "b"], top=["pre"])
    net.add(TanH(name="act", dtype=dtype), bottom=["pre"], top=["h"])
    net.add(InnerProduct(num_output=3, name="v", dtype=dtype), bottom=["h"], top=["out"])
    return net


def naive_elman(net, x, h0, ctx, lengths):
    """The same recurrence written out step by step (zero outputs at padded steps)."""
    W, bw = net.layer("w").params[0].data, net.layer("w").params[1].data
    U = net.layer("u").params[0].data
    V, bv = net.layer("v").params[0].data, net.layer("v").params[1].data
    h = h0.copy()
    hs, outs = [], []
    for t in range(x.shape[0]):
        new = np.tanh(np.concatenate([x[t], h], 1) @ W.T + bw + ctx @ U.T)
        act = (t < lengths)[:, None]
        out = new @ V.T + bv
        h = np.where(act, new, h)
        hs.append(np.where(act, new, 0))
        outs.append(np.where(act, out, 0))
    return np.stack(hs), h, np.stack(outs)


def make(static=False, **kw):
    convnet.seed(3)
    net = elman_net()
    rnn = RecurrentNetwork(net, {"h": ("h_prev", "h")}, inputs={"x_t": "x"},
                           step_outputs=["out"], static=static, **kw)
    return net, rnn


def data(seed=0, T=5, N=3):
    r = np.random.default_rng(seed)
    return (r.standard_normal((T, N, 2)), r.standard_normal((N, 4)), r.standard_normal((N, 5)),
            np.array([5, 2, 4])[:N])


@pytest.mark.parametrize("with_lengths", [False, True])
def test_forward_matches_the_recurrence_written_out(with_lengths):
    x, h0, ctx, lengths = data()
    net, rnn = make()
    out = rnn.forward({"x": x, "ctx": ctx}, initial={"h": h0},
                      lengths=lengths if with_lengths else None)
    hs, h_last, outs = naive_elman(net, x, h0, ctx, lengths if with_lengths else
                                   np.full(3, 5))
    np.testing.assert_allclose(out["h_all"], hs, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out["h_last"], h_last, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out["out_all"], outs, rtol=1e-12, atol=1e-14)


def _objective(rnn, x, h0, ctx, lengths, w):
    out = rnn.forward({"x": x, "ctx": ctx}, initial={"h": h0}, lengths=lengths)
    return sum(float((out[k] * w[k]).sum()) for k in w)


@pytest.mark.parametrize("static", [False, True])
def test_every_input_and_weight_gets_its_gradient_through_time(static):
    """Finite differences for x, the initial state, the static input and a weight, with the
    diff given on h_all, h_last and out_all and a padded batch."""
    x, h0, ctx, lengths = data(1)
    net, rnn = make(static=static)
    r = np.random.default_rng(2)
    out = rnn.forward({"x": x, "ctx": ctx}, initial={"h": h0}, lengths=lengths)
    w = {k: r.standard_normal(np.shape(out[k])) for k in ("h_all", "h_last", "out_all")}
    net.zero_diffs()
    g = rnn.backward(w)
    weight = net.layer("w").params[0]
    eps = 1e-6
    for name, arr, grad in (("x", x, g["x"]), ("h_init", h0, g["h_init"]),
                            ("ctx", ctx, g["ctx"]), ("W", weight.data, weight.diff.copy())):
        d = r.standard_normal(arr.shape)
        orig = arr.copy()
        arr += eps * d
        up = _objective(rnn, x, h0, ctx, lengths, w)
        arr[...] = orig - eps * d
        down = _objective(rnn, x, h0, ctx, lengths, w)
        arr[...] = orig
        numeric = (up - down) / (2 * eps)
        np.testing.assert_allclose(float((grad * d).sum()), numeric, rtol=1e-6, err_msg=name)


def test_static_unrolled_mode_equals_the_dynamic_engine():
    x, h0, ctx, lengths = data(4)
    res = []
    for static in (False, True):
        net, rnn = make(static=static)
        out = rnn.forward({"x": x, "ctx": ctx}, initial={"h": h0}, lengths=lengths)
        g = rnn.backward({"h_all": np.ones_like(out["h_all"]), "out_all": out["out_all"]})
        res.append((out, g, [p.diff.copy() for p in net.learnable_params]))
    (o1, g1, p1), (o2, g2, p2) = res
    for k in o1:
        np.testing.assert_array_equal(o1[k], o2[k])
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-13, atol=1e-15)
    for a, b in zip(p1, p2):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def test_recompute_gives_identical_gradients_and_keeps_less():
    r = np.random.default_rng(5)
    x = r.standard_normal((6, 4, 3))
    res = []
    for recompute in (False, True):
        convnet.seed(0)
        run = CellRunner(MultiRNNCell([LSTMCell(3, 5, name="l0", dtype=np.float64),
                                       LSTMCell(5, 5, name="l1", dtype=np.float64)]),
                         recompute=recompute)
        y, _ = run.forward(x, lengths=np.array([6, 3, 5, 2]))
        g = run.backward(np.cos(y))
        res.append((y, g["x"], [p.diff.copy() for p in run.params], run.rnn.last_stats))
    (y1, dx1, p1, s1), (y2, dx2, p2, s2) = res
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(dx1, dx2)
    for a, b in zip(p1, p2):
        np.testing.assert_array_equal(a, b)
    assert s2["kept_bytes"] < s1["kept_bytes"]
    # per layer the recurrent gemm, the gate sum and the unit; l1 its input projection too
    assert s2["recomputed_layers"] == 7 and s1["recomputed_layers"] == 0


def test_forward_only_matches_and_refuses_backward():
    x, h0, ctx, _ = data(6)
    _, rnn = make()
    a = rnn.forward({"x": x, "ctx": ctx}, initial={"h": h0})
    _, fo = make(forward_only=True)      # the same seed: the same weights
    b = fo.forward({"x": x, "ctx": ctx}, initial={"h": h0})
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(StateError, match="forward_only"):
        fo.backward({"h_last": np.ones((3, 4))})


def test_outputs_with_grads_restricts_the_diffs_backward_takes():
    x, h0, ctx, _ = data(7)
    convnet.seed(3)
    rnn = RecurrentNetwork(elman_net(), {"h": ("h_prev", "h")}, inputs={"x_t": "x"},
                           step_outputs=["out"], outputs_with_grads=["out_all"], name="r")
    rnn.forward({"x": x, "ctx": ctx}, initial={"h": h0})
    with pytest.raises(ConfigError, match="output 'h_last' is not in outputs_with_grads"):
        rnn.backward({"h_last": np.ones((3, 4))})
    with pytest.raises(ShapeError, match="the diff of 'out_all' must be 5x3x3, got 5x3"):
        rnn.backward({"out_all": np.ones((5, 3))})


def test_bad_links_and_inputs_name_the_step_net_and_the_blob():
    net = elman_net()
    with pytest.raises(ConfigError, match="RecurrentNetwork 'rnn' \\(step net 'elman'\\): "
                                          "state 'h' reads blob 'hx', which is not an input"):
        RecurrentNetwork(net, {"h": ("hx", "h")}, inputs={"x_t": "x"})
    with pytest.raises(ConfigError, match="state 'h' takes its next value from blob 'nope', "
                                          "which no layer of the step net writes"):
        RecurrentNetwork(net, {"h": ("h_prev", "nope")}, inputs={"x_t": "x"})
    with pytest.raises(ConfigError, match="input link 'y_t' <- 'x': 'y_t' is not an input"):
        RecurrentNetwork(net, {"h": ("h_prev", "h")}, inputs={"y_t": "x"})
    rnn = RecurrentNetwork(net, {"h": ("h_prev", "h")}, inputs={"x_t": "x"})
    x, h0, ctx, _ = data()
    with pytest.raises(StateError, match="missing the initial value of state 'h'"):
        rnn.forward({"x": x, "ctx": ctx})
    with pytest.raises(StateError, match="missing static input 'ctx'"):
        rnn.forward({"x": x}, initial={"h": h0})
    with pytest.raises(ShapeError, match="lengths\\[1\\] = 9 is outside \\[0, T = 5\\]"):
        rnn.forward({"x": x, "ctx": ctx}, initial={"h": h0}, lengths=np.array([1, 9, 2]))
    with pytest.raises(StateError, match="backward\\(\\) called before forward"):
        RecurrentNetwork(elman_net(), {"h": ("h_prev", "h")}, inputs={"x_t": "x"}).backward()


def test_a_state_that_changes_shape_across_steps_is_named():
    net = Net("grow")
    net.add(InnerProduct(num_output=6, name="ip", dtype=np.float64), bottom=["h_prev"],
            top=["h"])
    net.add(Eltwise("SUM", name="use_x", dtype=np.float64), bottom=["x_t", "x_t"],
            top=["xx"])
    rnn = RecurrentNetwork(net, {"h": ("h_prev", "h")}, inputs={"x_t": "x"})
    with pytest.raises(ShapeError, match="state 'h' changes shape across steps: 'h_prev' is "
                                         "2x4 but the step wrote 'h' as 2x6"):
        rnn.forward({"x": np.zeros((3, 2, 1))}, initial={"h": np.zeros((2, 4))})


def test_hoisted_weight_gradients_match_for_every_kind_of_bottom():
    """The engine defers InnerProduct's param diffs to one call after the time loop; its
    bottom may be a state (h2h), a sequence input (x2h not hoisted) or a static input
    ('u' of the Elman net, summed top diffs). Gradients equal the runner with the input
    projection hoisted (outside the engine) and the static unrolled net; the deferral flag
    is cleared on every step layer afterwards."""
    r = np.random.default_rng(8)
    x = r.standard_normal((7, 3, 4))
    res = []
    for hoist in (True, False):
        convnet.seed(2)
        run = CellRunner(LSTMCell(4, 5, dtype=np.float64), hoist=hoist)
        y, _ = run.forward(x, lengths=np.array([7, 4, 6]))
        g = run.backward(np.sin(y))
        cell = run.cell
        res.append((g["x"], {f"{layer.name} {i}": p.diff.copy() for layer in (cell.x2h, cell.h2h)
                             for i, p in enumerate(layer.params)}))
        assert not any(la.param_diffs_deferred for layers in run.rnn._cache[0]
                       for la in layers if hasattr(la, "param_diffs_deferred"))
    (dx1, p1), (dx2, p2) = res
    np.testing.assert_allclose(dx1, dx2, rtol=1e-12, atol=1e-14)
    assert len(p1) == 3 and set(p1) == set(p2)
    for k in p1:
        np.testing.assert_allclose(p1[k], p2[k], rtol=1e-12, atol=1e-14, err_msg=k)
    x, h0, ctx, lengths = data(9)
    diffs = []
    for static in (False, True):
        net, rnn = make(static=static)
        out = rnn.forward({"x": x, "ctx": ctx}, initial={"h": h0}, lengths=lengths)
        net.zero_diffs()
        rnn.backward({"out_all": np.cos(out["out_all"])})
        diffs.append(net.layer("u").params[0].diff.copy())
    np.testing.assert_allclose(diffs[0], diffs[1], rtol=1e-13, atol=1e-15)
