"""Cells: MILSTM against its formula, attention against a naive reference and finite
differences through the encoder, MultiRNNCell against layer-by-layer runs, Caffe's LSTM and
RNN layers (cont, expose_hidden, x_static) and CellLayer in a Net."""

import math

import numpy as np
import pytest

import convnet
from convnet import Net
from convnet.errors import ConfigError, ShapeError
from convnet.rnn import (LSTM, RNN, Attention, AttentionCell, CellLayer, CellRunner,
                         LayeredRunner, LSTMCell, MILSTMCell, MultiRNNCell)
from convnet.testing import check_gradients

F64 = np.float64


def sig(x):
    return 1 / (1 + np.exp(-x))


def test_milstm_matches_its_formula_and_starts_as_documented():
    r = np.random.default_rng(0)
    convnet.seed(1)
    cell = MILSTMCell(3, 4, dtype=F64)
    run = CellRunner(cell)
    x = r.standard_normal((4, 2, 3))
    y, last = run.forward(x)
    step = run.step_net
    alpha = step.layer("lstm/alpha").params[0].data
    beta_h = step.layer("lstm/beta_h").params[0].data
    beta_i, b = (p.data for p in step.layer("lstm/beta_i").params)
    np.testing.assert_array_equal(alpha, 1)
    np.testing.assert_array_equal(b, 0)
    W, U = cell.x2h.params[0].data, cell.h2h.params[0].data
    h = c = np.zeros((2, 4))
    for t in range(4):
        wx, uh = x[t] @ W.T, h @ U.T
        gates = alpha * wx * uh + beta_h * uh + beta_i * wx + b
        i, f, o, g = sig(gates[:, :4]), sig(gates[:, 4:8]), sig(gates[:, 8:12]), \
            np.tanh(gates[:, 12:])
        c = f * c + i * g
        h = o * np.tanh(c)
        np.testing.assert_allclose(y[t], h, rtol=1e-12, atol=1e-14)


def naive_attention(q, k, v, mask, mode, vec=None):
    n, s = k.shape[:2]
    ctx = np.zeros((n, v.shape[2]))
    weights = np.zeros((n, s))
    for i in range(n):
        scores = []
        for j in range(s):
            if mode == "dot":
                sc = sum(k[i, j, a] * q[i, a] for a in range(q.shape[1]))
            else:
                sc = sum(vec[a] * math.tanh(k[i, j, a] + q[i, a]) for a in range(q.shape[1]))
            scores.append(sc if mask[i, j] else -math.inf)
        m = max(scores)
        e = [math.exp(sc - m) for sc in scores]
        weights[i] = [x / sum(e) for x in e]
        ctx[i] = sum(weights[i, j] * v[i, j] for j in range(s))
    return ctx, weights


@pytest.mark.parametrize("mode", ["dot", "additive"])
def test_attention_layer_matches_reference_and_finite_differences(mode):
    r = np.random.default_rng(2)
    q, k, v = r.standard_normal((2, 3)), r.standard_normal((2, 4, 3)), \
        r.standard_normal((2, 4, 5))
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], F64)
    att = Attention(mode=mode, dtype=F64)
    ctx, w = att.forward(q, k, v, mask)
    vec = att.params[0].data if att.params else None
    rc, rw = naive_attention(q, k, v, mask, mode, vec)
    np.testing.assert_allclose(ctx, rc, rtol=1e-12)
    np.testing.assert_allclose(w, rw, rtol=1e-12, atol=1e-15)
    assert w[0, 3] == 0
    check_gradients(Attention(mode=mode, dtype=F64), q, k, v, mask, exhaustive=True)


@pytest.mark.parametrize("attention,stacked", [("dot", False), ("additive", False),
                                               ("dot", True)])
def test_attention_cell_gradients_reach_the_encoder(attention, stacked):
    """Finite differences of a decoder over T steps w.r.t. the encoder outputs and x; the
    decoder is one LSTM or a MultiRNNCell stack with the attention on top."""
    r = np.random.default_rng(3)
    convnet.seed(4)
    decoder = (MultiRNNCell([LSTMCell(2 + 3, 4, name="d0", dtype=F64),
                             LSTMCell(4, 4, name="d1", dtype=F64)]) if stacked
               else LSTMCell(2 + 3, 4, name="dec", dtype=F64))
    cell = AttentionCell(decoder, 3, attention=attention, attention_dim=5)
    run = CellRunner(cell)
    x, enc = r.standard_normal((3, 2, 2)), r.standard_normal((2, 4, 3))
    el = np.array([4, 2])
    w = r.standard_normal((3, 2, cell.output_size))
    y, _ = run.forward(x, encoder=enc, encoder_lengths=el)
    assert y.shape == (3, 2, 4 + 3)
    g = run.backward(w)

    def objective():
        return float((run.forward(x, encoder=enc, encoder_lengths=el)[0] * w).sum())

    eps = 1e-6
    for name, arr, grad in (("encoder", enc, g["encoder"]), ("x", x, g["x"])):
        d = r.standard_normal(arr.shape)
        if name == "encoder":
            d[1, 2:] = 0            # padding: no influence
            assert np.all(grad[1, 2:] == 0)
        orig = arr.copy()
        arr += eps * d
        up = objective()
        arr[...] = orig - eps * d
        down = objective()
        arr[...] = orig
        np.testing.assert_allclose(float((grad * d).sum()), (up - down) / (2 * eps),
                                   rtol=1e-6, err_msg=name)


def test_multi_rnn_cell_equals_layer_by_layer():
    r = np.random.default_rng(5)
    x = r.standard_normal((5, 3, 2))
    lengths = np.array([5, 1, 3])
    outs = []
    for stacked in (True, False):
        convnet.seed(6)
        cells = [LSTMCell(2, 4, name="a", dtype=F64), LSTMCell(4, 3, name="b", dtype=F64)]
        run = CellRunner(MultiRNNCell(cells)) if stacked else LayeredRunner(cells)
        y, _ = run.forward(x, lengths=lengths)
        g = run.backward(np.sin(y))
        outs.append((y, g["x"], [p.diff.copy() for c in cells for p in
                                 c.x2h.params + c.h2h.params]))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-10, atol=1e-14)
    for a, b in zip(outs[0][2], outs[1][2]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


def test_multi_rnn_cell_checks_sizes():
    with pytest.raises(ConfigError, match="takes input_size 5 but LSTMCell 'a' outputs 4"):
        MultiRNNCell([LSTMCell(2, 4, name="a"), LSTMCell(5, 3, name="b")])


# ---------------------------------------------------------------- Caffe's LSTM and RNN

def caffe_lstm_reference(layer, x, cont, h0=None, c0=None, xs=None):
    W, b = layer.params[0].data, layer.params[1].data
    Wh = layer.params[-1].data
    Ws = layer.params[2].data if xs is not None else None
    T, N = cont.shape
    H = layer.num_output
    h = np.zeros((N, H)) if h0 is None else h0[0]
    c = np.zeros((N, H)) if c0 is None else c0[0]
    out = []
    for t in range(T):
        hc = cont[t][:, None] * h
        gates = x[t].reshape(N, -1) @ W.T + b + hc @ Wh.T
        if xs is not None:
            gates = gates + xs.reshape(N, -1) @ Ws.T
        i, f, o, g = np.split(gates, 4, axis=1)
        c = cont[t][:, None] * sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        out.append(h)
    return np.stack(out), h, c


def test_caffe_lstm_layer_with_cont_matches_caffes_equations():
    r = np.random.default_rng(7)
    x = r.standard_normal((5, 3, 2, 2))
    cont = np.array([[0, 0, 0], [1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 1, 1]], F64)
    lstm = LSTM(num_output=4, bias_filler="gaussian", dtype=F64)
    h = lstm.forward(x, cont)
    assert [p.name for p in lstm.params] == ["W_xc", "b_c", "W_hc"]
    np.testing.assert_allclose(h, caffe_lstm_reference(lstm, x, cont)[0], rtol=1e-12,
                               atol=1e-14)


def test_caffe_lstm_expose_hidden_streams_chunks_with_gradients():
    r = np.random.default_rng(8)
    x, xs = r.standard_normal((6, 2, 3)), r.standard_normal((2, 2))
    cont = np.ones((6, 2))
    cont[0] = 0
    convnet.seed(9)
    whole = LSTM(num_output=3, expose_hidden=True, dtype=F64)
    z = np.zeros((1, 2, 3))
    h_all, hT, cT = whole.forward(x, cont, xs, z, z)
    ref = caffe_lstm_reference(whole, x, cont, xs=xs)
    np.testing.assert_allclose(h_all, ref[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(cT[0], ref[2], rtol=1e-12, atol=1e-14)
    first = whole.forward(x[:3], cont[:3], xs, z, z)
    second = whole.forward(x[3:], cont[3:], xs, first[1], first[2])
    np.testing.assert_allclose(np.concatenate([first[0], second[0]]), h_all, rtol=1e-12)
    check_gradients(LSTM(num_output=2, expose_hidden=True, dtype=F64), x[:3], cont[:3], xs,
                    r.standard_normal((1, 2, 2)), r.standard_normal((1, 2, 2)))


def test_caffe_rnn_layer_matches_caffes_equations_and_finite_differences():
    r = np.random.default_rng(10)
    x = r.standard_normal((4, 2, 3))
    cont = np.array([[0, 0], [1, 1], [1, 0], [1, 1]], F64)
    rnn = RNN(num_output=3, expose_hidden=True, bias_filler="gaussian", dtype=F64)
    h0 = r.standard_normal((1, 2, 3))
    o, hT = rnn.forward(x, cont, h0)
    Wx, bh, Whh, Who, bo = (p.data for p in rnn.params)
    assert [p.name for p in rnn.params] == ["W_xh", "b_h", "W_hh", "W_ho", "b_o"]
    h = h0[0]
    for t in range(4):
        h = np.tanh((cont[t][:, None] * h) @ Whh.T + x[t] @ Wx.T + bh)
        np.testing.assert_allclose(o[t], np.tanh(h @ Who.T + bo), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(hT[0], h, rtol=1e-12)
    check_gradients(RNN(num_output=2, expose_hidden=True, dtype=F64), x, cont,
                    r.standard_normal((1, 2, 2)))


def test_caffe_layers_bad_bottoms():
    with pytest.raises(ShapeError, match=r"LSTM 'l': bottom 1 \(cont\) must be 4x2"):
        LSTM(num_output=3, name="l").forward(np.zeros((4, 2, 3)), np.zeros((2, 4)))
    with pytest.raises(ShapeError, match=r"expects 4 or 5 bottoms \(x, cont, \[x_static\], "
                                         r"h0, c0\), got 2"):
        LSTM(num_output=3, expose_hidden=True, name="l").forward(np.zeros((4, 2, 3)),
                                                                 np.zeros((4, 2)))


def test_cell_layer_trains_inside_a_net_with_a_solver():
    from convnet.layers import EuclideanLoss
    r = np.random.default_rng(11)
    convnet.seed(12)
    net = Net("seq")
    net.add(CellLayer(LSTMCell(2, 3, dtype=F64), name="lstm"), bottom=["x", "len"],
            top=["h"])
    net.add(EuclideanLoss(dtype=F64), bottom=["h", "target"], top=["loss"])
    feed = {"x": r.standard_normal((4, 2, 2)), "len": np.array([4, 2]),
            "target": 0.5 * np.ones((4, 2, 3))}
    feed["target"][2:, 1] = 0       # padded steps output zeros
    solver = convnet.AdamSolver(net, base_lr=0.05)
    first = solver.step(**feed)
    for _ in range(30):
        last = solver.step(**feed)
    assert last < 0.5 * first
