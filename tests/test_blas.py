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


def test_gemm_beta_zero_overwrites_garbage():
    a = np.ones((2, 3), np.float32)
    b = np.ones((3, 4), np.float32)
    c = np.full((2, 4), np.nan, np.float32)
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
