"""InnerProduct's weight gradient through the BLAS door: gemm with beta = 1 accumulates
dy^T x into the diff in place (NumPy's ``dw += dy.T @ x`` allocates the product and adds it
in a second pass). Measured against NumPy in convnet/backend/cpu.py (inner_product).
"""

from cython cimport floating

from _blas cimport gemm


def gemm_into(const floating[:, ::1] a,    # IN  (m, k), or (k, m) when trans_a
              const floating[:, ::1] b,    # IN  (k, n), or (n, k) when trans_b
              floating[:, ::1] c,          # INOUT (m, n)
              bint trans_a, bint trans_b, double beta):
    """c = op(a) @ op(b) + beta * c (beta = 0 overwrites c without reading it)."""
    cdef int m = c.shape[0], n = c.shape[1]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    with nogil:
        gemm(trans_a, trans_b, m, n, k, <floating> 1, &a[0, 0], a.shape[1], &b[0, 0],
             b.shape[1], <floating> beta, &c[0, 0], c.shape[1])
