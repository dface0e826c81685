"""The BLAS door against NumPy, every dtype x transpose combination."""

import itertools

import numpy as np
import pytest

from convnet._cpu._blas import gemm_test


@pytest.mark.parametrize("trans_a,trans_b", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_matches_numpy(trans_a, trans_b, dtype):
    rng = np.random.default_rng(0)
    m, n, k = 7, 5, 11
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    expected = 1.5 * (a.T if trans_a else a) @ (b.T if trans_b else b) + 0.5 * c
    gemm_test(trans_a, trans_b, dtype(1.5), a, b, dtype(0.5), c)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(c, expected, rtol=tol, atol=tol)


def _padded(rng, shape, dtype):
    """A (rows, cols) view whose rows lie further apart than cols: a leading dimension
    larger than the width, as the kernels pass for blocks of larger arrays."""
    full = rng.standard_normal((shape[0], shape[1] + 3)).astype(dtype)
    return full[:, 1:1 + shape[1]]


@pytest.mark.parametrize("m,n,k", [(1, 9, 13), (9, 1, 13), (1, 1, 13), (1, 9, 1), (9, 1, 1),
                                   (6, 5, 1), (1, 2, 300), (300, 1, 2)])
@pytest.mark.parametrize("trans_a,trans_b", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_with_one_row_or_column_matches_numpy(m, n, k, trans_a, trans_b, beta, dtype):
    # m == 1 or n == 1 goes to gemv: every operand layout, leading dimensions wider than the
    # rows (the row and column vectors then have strides), beta = 0 over NaN garbage
    rng = np.random.default_rng(m * 100 + n * 10 + k)
    a = _padded(rng, (k, m) if trans_a else (m, k), dtype)
    b = _padded(rng, (n, k) if trans_b else (k, n), dtype)
    c = _padded(rng, (m, n), dtype)
    if beta == 0:
        c[...] = np.nan
    expected = 1.5 * (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
    if beta:
        expected += beta * c
    outside = c.base.copy()
    gemm_test(trans_a, trans_b, dtype(1.5), a, b, dtype(beta), c)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(c, expected, rtol=tol, atol=tol)
    untouched = np.ones(c.base.shape, bool)
    untouched[:, 1:1 + n] = False
    np.testing.assert_array_equal(c.base[untouched], outside[untouched])


def test_gemm_beta_zero_overwrites_garbage():
    for shape_b in ((3, 4), (3, 1)):
        a = np.ones((2, 3), np.float32)
        b = np.ones(shape_b, np.float32)
        c = np.full((2, shape_b[1]), np.nan, np.float32)
        gemm_test(False, False, np.float32(1), a, b, np.float32(0), c)
        np.testing.assert_array_equal(c, 3.0)


def test_set_num_threads_sets_openmp():
    import convnet
    before = convnet.get_num_threads()
    try:
        convnet.set_num_threads(1)
        assert convnet.get_num_threads() == 1
    finally:
        convnet.set_num_threads(before)
    with pytest.raises(convnet.ConfigError, match="positive int"):
        convnet.set_num_threads(0)
