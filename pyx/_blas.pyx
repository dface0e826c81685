"""Test twin of the BLAS door: gemm on NumPy arrays, compared against NumPy in the tests."""

from cython cimport floating
from _blas cimport gemm


def gemm_test(bint trans_a, bint trans_b, double alpha,
              const floating[:, :] a,      # IN  (m, k), or (k, m) when trans_a
              const floating[:, :] b,      # IN  (k, n), or (n, k) when trans_b
              double beta,
              floating[:, :] c):           # INOUT (m, n)
    """c = alpha * op(a) @ op(b) + beta * c, through the same inline gemm the kernels use.
    Row strides give the leading dimensions, so column slices of larger arrays test them;
    the elements of a row must be adjacent."""
    for name, v in (("a", a), ("b", b), ("c", c)):
        if v.shape[1] > 1 and v.strides[1] != sizeof(floating):
            raise ValueError(f"gemm_test: the rows of {name} must be contiguous")
    cdef int m = c.shape[0]
    cdef int n = c.shape[1]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef int lda = max(<Py_ssize_t> 1, a.strides[0] // sizeof(floating))
    cdef int ldb = max(<Py_ssize_t> 1, b.strides[0] // sizeof(floating))
    cdef int ldc = max(<Py_ssize_t> 1, c.strides[0] // sizeof(floating))
    with nogil:
        gemm(trans_a, trans_b, m, n, k, <floating> alpha, &a[0, 0], lda,
             &b[0, 0], ldb, <floating> beta, &c[0, 0], ldc)
