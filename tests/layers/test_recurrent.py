"""Caffe's LSTMUnit: naive reference, finite differences, cont, threads, bad shapes."""

import numpy as np
import pytest

import convnet
from convnet.errors import ShapeError
from convnet.layers import LSTMUnit
from convnet.testing import check_gradients
from conftest import assert_close
from reference import inner_product as ref


@pytest.mark.parametrize("forget_bias", [0.0, 1.0])
def test_lstm_unit_matches_reference(dtype, forget_bias):
    r = np.random.default_rng(0)
    c_prev = r.standard_normal((1, 5, 3)).astype(dtype)
    gates = (3 * r.standard_normal((1, 5, 12))).astype(dtype)
    cont = np.array([[1, 0, 1, 1, 0]], dtype)
    c, h = LSTMUnit(forget_bias=forget_bias, dtype=dtype).forward(c_prev, gates, cont)
    c_ref, h_ref = ref.lstm_unit(c_prev[0], gates[0], cont[0], forget_bias)
    assert_close(c[0], c_ref, dtype)
    assert_close(h[0], h_ref, dtype)


def test_lstm_unit_gradients_with_and_without_cont():
    r = np.random.default_rng(1)
    check_gradients(LSTMUnit(forget_bias=0.5, dtype=np.float64), r.standard_normal((1, 3, 4)),
                    r.standard_normal((1, 3, 16)), np.array([[1.0, 0.0, 1.0]]),
                    exhaustive=True)
    check_gradients(LSTMUnit(dtype=np.float64), r.standard_normal((2, 3)),
                    r.standard_normal((2, 12)), exhaustive=True)


def test_lstm_unit_matches_torch_lstm_cell():
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(2)
    n, d = 4, 5
    c_prev, gates = r.standard_normal((n, d)), r.standard_normal((n, 4 * d))
    unit = LSTMUnit(dtype=np.float64)
    c, h = unit.forward(c_prev, gates)
    # torch's gate order is i, f, g, o: feed the same pre-activations through its formulas
    gt = torch.tensor(gates, requires_grad=True)
    ct = torch.tensor(c_prev, requires_grad=True)
    i, f, o, g = gt.split(d, dim=1)
    c_t = torch.sigmoid(f) * ct + torch.sigmoid(i) * torch.tanh(g)
    h_t = torch.sigmoid(o) * torch.tanh(c_t)
    dc, dh = r.standard_normal((n, d)), r.standard_normal((n, d))
    dc_prev, dgates = unit.backward(dc, dh)
    (c_t * torch.tensor(dc) + h_t * torch.tensor(dh)).sum().backward()
    np.testing.assert_allclose(c, c_t.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h, h_t.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dgates, gt.grad.numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(dc_prev, ct.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_lstm_unit_one_and_two_threads_agree_exactly():
    r = np.random.default_rng(3)
    c_prev = r.standard_normal((64, 256)).astype(np.float32)
    gates = r.standard_normal((64, 1024)).astype(np.float32)
    out = []
    for n in (1, 2):
        convnet.set_num_threads(n)
        unit = LSTMUnit()
        c, h = unit.forward(c_prev, gates)
        out.append((c, h) + unit.backward(np.ones_like(c), np.ones_like(h)))
    convnet.set_num_threads(2)
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


def test_lstm_unit_bad_shapes():
    unit = LSTMUnit(name="u")
    with pytest.raises(ShapeError, match=r"LSTMUnit 'u': bottom 1 \(gates\) must be 1x2x12"):
        unit.forward(np.zeros((1, 2, 3)), np.zeros((1, 2, 11)), np.zeros((1, 2)))
    with pytest.raises(ShapeError, match=r"bottom 2 \(cont\) must be 1x2"):
        unit.forward(np.zeros((1, 2, 3)), np.zeros((1, 2, 12)), np.zeros((2, 1)))


def test_lstm_unit_float32_activations_within_a_few_ulps_everywhere():
    """The float32 kernel's own exp / tanh (pyx/recurrent_rows.h) against float64 over
    [-30, 30], tiny magnitudes, saturation, +-inf and NaN (c_prev = 0: c = i g)."""
    d = 256
    x = np.concatenate([np.linspace(-30, 30, 64 * 4 * d),
                        np.geomspace(1e-30, 1.0, 16 * 4 * d),
                        -np.geomspace(1e-30, 1.0, 16 * 4 * d)]).astype(np.float32)
    gates = x.reshape(-1, 4 * d)
    unit = LSTMUnit()
    c, h = unit.forward(np.zeros((gates.shape[0], d), np.float32), gates)
    act = unit._saved[2]
    g64 = gates.astype(np.float64)
    want = np.concatenate([1 / (1 + np.exp(-g64[:, :3 * d])), np.tanh(g64[:, 3 * d:])], 1)
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    assert (np.abs(act - want) / ulp).max() <= 4
    assert_close(c, want[:, :d] * want[:, 3 * d:], np.float32)
    special = np.array([[np.nan, np.inf, -np.inf, 1e30] * 4], np.float32)
    c, h = LSTMUnit().forward(np.zeros((1, 4), np.float32), special)
    assert np.isnan(c[0, 0]) and np.isnan(h[0, 0])
    # i = 1 at +inf and 1e30; g = tanh(+inf) = 1, tanh(-inf) = -1; sigmoid(-inf) ~ 0
    np.testing.assert_allclose(c[0, 1:], [1, 0, 1], atol=1e-30)


def test_lstm_unit_rows_over_several_work_items_agree_at_one_and_two_threads():
    """300 rows of 256 units are five work items of the kernel: split over two threads,
    every value equals the one-thread run (each unit is computed alone)."""
    r = np.random.default_rng(4)
    c_prev = r.standard_normal((300, 256)).astype(np.float32)
    gates = (2 * r.standard_normal((300, 1024))).astype(np.float32)
    cont = (r.random(300) < 0.8).astype(np.float32)
    dc, dh = r.standard_normal((2, 300, 256)).astype(np.float32)
    out = []
    for n in (1, 2):
        convnet.set_num_threads(n)
        unit = LSTMUnit(forget_bias=1.0)
        c, h = unit.forward(c_prev, gates, cont)
        out.append((c, h) + unit.backward(dc, dh)[:2])
    convnet.set_num_threads(2)
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)
    c_ref, h_ref = ref.lstm_unit(c_prev, gates, cont, 1.0)
    assert_close(out[0][0], c_ref, np.float32, scale=10)
    assert_close(out[0][1], h_ref, np.float32, scale=10)
