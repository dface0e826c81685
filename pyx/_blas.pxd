# The BLAS door: the only file that cimports scipy.linalg.cython_blas.
#
# gemm computes, on row-major (C-contiguous) matrices,
#     C = alpha * op(A) @ op(B) + beta * C,   op(X) = X or X.T,
# with op(A) of shape (m, k), op(B) of shape (k, n), C of shape (m, n).
# A row-major matrix is the column-major transpose of itself, so the call is
# the column-major C.T = op(B).T @ op(A).T: the operands swap, nothing is copied.
# Callers (Python) check that every dimension fits in a C int before calling.

from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if m <= 0 or n <= 0:
        return
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*> b, &ldb, <float*> a, &lda,
              &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*> b, &ldb, <double*> a, &lda,
              &beta, c, &ldc)
