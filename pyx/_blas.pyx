"""Test twin of the BLAS door: gemm on NumPy arrays, compared against NumPy in the tests."""

from cython cimport floating
from _blas cimport gemm


def gemm_test(bint trans_a, bint trans_b, double alpha,
              const floating[:, ::1] a,    # IN  (m, k), or (k, m) when trans_a
              const floating[:, ::1] b,    # IN  (k, n), or (n, k) when trans_b
              double beta,
              floating[:, ::1] c):         # INOUT (m, n)
    """c = alpha * op(a) @ op(b) + beta * c, through the same inline gemm the kernels use."""
    cdef int m = c.shape[0]
    cdef int n = c.shape[1]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    with nogil:
        gemm(trans_a, trans_b, m, n, k, <floating> alpha, &a[0, 0], a.shape[1],
             &b[0, 0], b.shape[1], <floating> beta, &c[0, 0], c.shape[1])
