"""InnerProduct's gemms through the BLAS door: ``gemm_into`` (beta = 1 accumulates dy^T x
into the diff in place, where NumPy's ``dw += dy.T @ x`` allocates the product and adds it in
a second pass) and ``gemm_into_split`` (a large gemm as one gemm per OpenMP thread, BLAS on
one thread, as the convolutions run theirs). Measured against NumPy in
convnet/backend/cpu.py (inner_product).
"""

from cython cimport floating
from cython.parallel cimport prange

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


def gemm_into_split(const floating[:, ::1] a,    # IN  (m, k), or (k, m) when trans_a
                    const floating[:, ::1] b,    # IN  (k, n), or (n, k) when trans_b
                    floating[:, ::1] c,          # INOUT (m, n)
                    bint trans_a, bint trans_b, double beta, int parts, int threads):
    """c = op(a) @ op(b) + beta * c as ``parts`` gemms shared out to ``threads`` OpenMP
    threads as each finishes one (a thread slowed by another process takes fewer): blocks of
    c's rows when it has at least as many rows as columns, else blocks of its columns (each
    block reads its own part of the larger operand). The blocks depend on ``parts`` only,
    so the thread count never changes a result. The caller holds BLAS to one thread."""
    cdef int m = c.shape[0], n = c.shape[1]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef bint by_rows = m >= n
    cdef Py_ssize_t total = m if by_rows else n
    cdef Py_ssize_t p, lo, hi
    with nogil:
        for p in prange(parts, schedule='dynamic', num_threads=threads):
            lo = total * p // parts
            hi = total * (p + 1) // parts
            if hi <= lo:
                continue
            if by_rows:
                gemm(trans_a, trans_b, <int> (hi - lo), n, k, <floating> 1,
                     &a[0, lo] if trans_a else &a[lo, 0], a.shape[1], &b[0, 0], b.shape[1],
                     <floating> beta, &c[lo, 0], c.shape[1])
            else:
                gemm(trans_a, trans_b, m, <int> (hi - lo), k, <floating> 1, &a[0, 0],
                     a.shape[1], &b[lo, 0] if trans_b else &b[0, lo], b.shape[1],
                     <floating> beta, &c[0, lo], c.shape[1])
