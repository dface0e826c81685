"""InnerProduct and Embed: naive references, finite differences, PyTorch, bad input."""

import numpy as np
import pytest

import convnet
from convnet.errors import ConfigError, DataError, ShapeError
from convnet.layers import Embed, InnerProduct
from convnet.testing import check_gradients
from conftest import assert_close
from reference import inner_product as ref


@pytest.mark.parametrize("seed", range(8))
def test_inner_product_matches_reference(seed, dtype):
    r = np.random.default_rng(seed)
    ndim = int(r.integers(2, 5))
    shape = tuple(int(s) for s in r.integers(1, 5, size=ndim))
    axis = int(r.integers(1, ndim)) - (ndim if seed % 2 else 0)
    transpose = bool(seed % 3 == 0)
    bias = seed % 4 != 1
    ip = InnerProduct(num_output=int(r.integers(1, 6)), axis=axis, transpose=transpose,
                      bias_term=bias, bias_filler="gaussian", dtype=dtype)
    x = r.standard_normal(shape).astype(dtype)
    y = ip.forward(x)
    w = ip.params[0].data.astype(np.float64)
    b = ip.params[1].data.astype(np.float64) if bias else None
    assert_close(y, ref.inner_product(x, w, b, axis % ndim, transpose), dtype)
    assert y.shape == shape[:axis % ndim] + (ip.num_output,)


@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_gradients(transpose):
    check_gradients(InnerProduct(num_output=3, axis=2, transpose=transpose,
                                 bias_filler="gaussian", dtype=np.float64),
                    np.random.default_rng(1).standard_normal((2, 3, 2, 2)), exhaustive=True)


def test_inner_product_matches_torch_linear():
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(2)
    ip = InnerProduct(num_output=7, bias_filler="gaussian", dtype=np.float64)
    x = r.standard_normal((5, 3, 2))
    y = ip.forward(x)
    dy = r.standard_normal(y.shape)
    dx = ip.backward(dy)
    xt = torch.tensor(x.reshape(5, 6), requires_grad=True)
    lin = torch.nn.Linear(6, 7).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(ip.params[0].data))
        lin.bias.copy_(torch.tensor(ip.params[1].data))
    yt = lin(xt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx.reshape(5, 6), xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ip.params[0].diff, lin.weight.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ip.params[1].diff, lin.bias.grad.numpy(), rtol=1e-12)


def test_inner_product_one_and_two_threads_agree():
    r = np.random.default_rng(3)
    x = r.standard_normal((64, 200)).astype(np.float32)
    out = []
    for n in (1, 2):
        convnet.set_num_threads(n)
        convnet.seed(0)
        ip = InnerProduct(num_output=50)
        out.append((ip.forward(x), ip.backward(np.ones((64, 50), np.float32))))
    convnet.set_num_threads(2)
    # BLAS splits the sums differently at 2 threads: equal to float32 rounding
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_output=0), "num_output must be >= 1"),
    (dict(num_output=2, axis=1.5), "axis must be an int"),
    (dict(num_output=2, transpose=1), "transpose must be True or False"),
    (dict(num_output=2, weight_filler="nope"), "weight_filler type must be one of"),
])
def test_inner_product_bad_params(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        InnerProduct(name="fc", **kwargs)


def test_inner_product_bad_shapes():
    ip = InnerProduct(num_output=2, axis=3, name="fc")
    with pytest.raises(ShapeError, match="InnerProduct 'fc': axis 3 is out of range"):
        ip.forward(np.zeros((2, 3)))
    ip = InnerProduct(num_output=2, name="fc")
    ip.forward(np.zeros((2, 3)))
    with pytest.raises(ShapeError, match="weight has shape 2x3 but bottom 2x4"):
        ip.forward(np.zeros((2, 4)))


def test_embed_matches_reference_and_sums_repeated_rows(dtype):
    r = np.random.default_rng(4)
    emb = Embed(input_dim=5, num_output=3, bias_filler="gaussian", dtype=dtype)
    idx = np.array([[0, 4, 4], [2, 0, 1]])
    y = emb.forward(idx.astype(np.float32))
    w, b = emb.params[0].data.astype(np.float64), emb.params[1].data.astype(np.float64)
    assert_close(y, ref.embed(idx, w, b), dtype)
    dy = r.standard_normal(y.shape).astype(dtype)
    assert emb.backward(dy) is None
    want = np.zeros((5, 3))
    for pos in np.ndindex(idx.shape):
        want[idx[pos]] += dy[pos]
    assert_close(emb.params[0].diff, want, dtype)
    assert_close(emb.params[1].diff, dy.reshape(-1, 3).sum(0), dtype)


def test_embed_gradient_matches_finite_differences():
    check_gradients(Embed(input_dim=4, num_output=2, dtype=np.float64),
                    np.array([[1, 3], [3, 0]]), exhaustive=True)


def test_embed_matches_torch():
    torch = pytest.importorskip("torch")
    emb = Embed(input_dim=6, num_output=4, bias_term=False, dtype=np.float64)
    idx = np.array([[1, 5, 1], [0, 2, 2]])
    y = emb.forward(idx)
    te = torch.nn.Embedding(6, 4).double()
    with torch.no_grad():
        te.weight.copy_(torch.tensor(emb.params[0].data))
    yt = te(torch.tensor(idx))
    dy = np.random.default_rng(5).standard_normal(y.shape)
    emb.backward(dy)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-14)
    np.testing.assert_allclose(emb.params[0].diff, te.weight.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("bad,where", [(np.array([[0, 5]]), "5 at position (0, 1)"),
                                       (np.array([-1, 0]), "-1 at position (0,)"),
                                       (np.array([0.5, 1.0]), "0.5 at position (0,)")])
def test_embed_out_of_range_index_is_a_data_error_naming_it(bad, where):
    emb = Embed(input_dim=5, num_output=2, name="words")
    with pytest.raises(DataError, match=r"Embed 'words': bottom 0 index " + where.replace(
            "(", r"\(").replace(")", r"\)") + r" is not a row id in \[0, input_dim = 5\)"):
        emb.forward(bad)


def test_embed_bad_params():
    with pytest.raises(ConfigError, match="input_dim must be >= 1"):
        Embed(input_dim=0, num_output=2)
    with pytest.raises(DataError, match="must hold row ids"):
        Embed(input_dim=3, num_output=2).forward(np.array(["a"]))


@pytest.mark.parametrize("transpose", [False, True])
def test_accumulate_param_diffs_equals_one_backward_per_call(transpose):
    """S calls' param diffs added at once (what convnet.rnn's engine does after its time
    loop, with param_diffs_deferred set during it) equal S backward calls' sum."""
    r = np.random.default_rng(7)
    xs, dys = r.standard_normal((5, 3, 2, 4)), r.standard_normal((5, 3, 6))
    convnet.seed(1)
    each = InnerProduct(num_output=6, transpose=transpose, dtype=np.float64)
    for x, dy in zip(xs, dys):
        each.forward(x)
        dx_each = each.backward(dy)
    convnet.seed(1)
    once = InnerProduct(num_output=6, transpose=transpose, dtype=np.float64)
    once.param_diffs_deferred = True
    for x, dy in zip(xs, dys):
        once.forward(x)
        dx = once.backward(dy)
    assert not once.params[0].diff.any() and not once.params[1].diff.any()
    np.testing.assert_array_equal(dx, dx_each)      # the bottom diff is computed as ever
    once.accumulate_param_diffs(xs, dys)
    for a, b in zip(once.params, each.params):
        np.testing.assert_allclose(a.diff, b.diff, rtol=1e-13, atol=1e-13)
    with pytest.raises(ShapeError, match=r"accumulate_param_diffs takes bottoms S x 3x2x4"):
        once.accumulate_param_diffs(xs[:, :2], dys)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (False, True), (True, False),
                                             (True, True)])
@pytest.mark.parametrize("m,n", [(37, 11), (11, 37)])
def test_gemm_into_split_matches_numpy_and_is_thread_independent(dtype, trans_a, trans_b, m,
                                                                  n):
    """The door's split gemm (large InnerProduct gemms): blocks of rows (m >= n) or of
    columns, beta 0 and 1; 1 and 2 threads give the same bits."""
    from convnet._cpu import inner_product
    r = np.random.default_rng(m + 2 * trans_a + trans_b)
    k = 23
    a = r.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = r.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    c0 = r.standard_normal((m, n)).astype(dtype)
    want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
    for beta in (0.0, 1.0):
        got = []
        for threads in (1, 2):
            c = c0.copy()
            inner_product.gemm_into_split(a, b, c, trans_a, trans_b, beta, 8, threads)
            got.append(c)
        np.testing.assert_array_equal(got[0], got[1])
        assert_close(got[0], want + beta * c0, dtype, scale=10)


def test_large_inner_product_splits_and_matches_reference_at_one_and_two_threads():
    """512 x 512 by 512 x 256 (67 M multiply-adds) is past cpu._SPLIT_MACS: forward,
    backward-data and weight gradient run through the split gemm; equal to NumPy in float64
    and bit for bit at 1 and 2 threads."""
    from convnet.backend import cpu
    r = np.random.default_rng(11)
    x, dy = r.standard_normal((512, 512)), r.standard_normal((512, 256))
    assert 512 * 512 * 256 >= cpu._SPLIT_MACS
    out = []
    for n in (1, 2):
        convnet.set_num_threads(n)
        convnet.seed(0)
        ip = InnerProduct(num_output=256, dtype=np.float64)
        y = ip.forward(x)
        dx = ip.backward(dy)
        out.append((y, dx, ip.params[0].diff.copy(), ip.params[1].diff.copy()))
    convnet.set_num_threads(2)
    w, b = ip.params[0].data, ip.params[1].data
    np.testing.assert_allclose(out[0][0], x @ w.T + b, rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(out[0][1], dy @ w, rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(out[0][2], dy.T @ x, rtol=1e-12, atol=1e-11)
    for one, two in zip(*out):
        np.testing.assert_array_equal(one, two)
