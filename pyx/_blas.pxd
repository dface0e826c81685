# The BLAS door: the only file that cimports scipy.linalg.cython_blas.
#
# gemm computes, on row-major (C-contiguous) matrices,
#     C = alpha * op(A) @ op(B) + beta * C,   op(X) = X or X.T,
# with op(A) of shape (m, k), op(B) of shape (k, n), C of shape (m, n).
# A row-major matrix is the column-major transpose of itself, so the call is
# the column-major C.T = op(B).T @ op(A).T: the operands swap, nothing is copied.
# Callers (Python) check that every dimension fits in a C int before calling.

from cython cimport floating
from scipy.linalg.cython_blas cimport dgemm, dgemv, sgemm, sgemv


cdef inline void _gemv(bint trans, int rows, int cols, floating alpha, const floating* a,
                       int lda, const floating* x, int incx, floating beta, floating* y,
                       int incy) noexcept nogil:
    # column-major y = alpha * op(A) @ x + beta * y, A (rows, cols) with leading dimension lda
    cdef char t = b'T' if trans else b'N'
    if floating is float:
        sgemv(&t, &rows, &cols, &alpha, <float*> a, &lda, <float*> x, &incx, &beta, y, &incy)
    else:
        dgemv(&t, &rows, &cols, &alpha, <double*> a, &lda, <double*> x, &incx, &beta, y,
              &incy)


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    cdef int i
    if m <= 0 or n <= 0:
        return
    if (n == 1 or m == 1) and k > 0:
        # a product with one row or column is a matrix-vector product: OpenBLAS's gemm packs
        # the whole matrix for it (sgemm with n = 1 on a 205 MB weight: 45-50 ms on one core
        # against 9.5 ms for sgemv; a 7x7 layer on a 7x7 input, VGG's fc6). beta = 0 means C
        # is not read: zero it first, so that a NaN in C's old contents cannot survive
        if beta == 0:
            if n == 1:
                for i in range(m):
                    c[i * ldc] = 0
            else:
                for i in range(n):
                    c[i] = 0
        if n == 1:
            # C[:, 0] (stride ldc) = op(A) @ op(B)[:, 0]; row-major A is its column-major
            # transpose, and op(B)'s column is B's row 0 (trans_b) or column 0
            _gemv(not trans_a, k if not trans_a else m, m if not trans_a else k, alpha,
                  a, lda, b, 1 if trans_b else ldb, beta, c, ldc)
        else:
            # C[0, :] = op(A)[0, :] @ op(B): op(A)'s row is A's column 0 (trans_a) or row 0
            _gemv(trans_b, n if not trans_b else k, k if not trans_b else n, alpha,
                  b, ldb, a, lda if trans_a else 1, beta, c, 1)
        return
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*> b, &ldb, <float*> a, &lda,
              &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*> b, &ldb, <double*> a, &lda,
              &beta, c, &ldc)
