"""LSTMUnit kernels: Caffe's fused LSTM unit, forward and backward, one pass over each row.

The per-unit arithmetic (and float32's vectorised exp / tanh) is in pyx/recurrent_rows.h;
here rows are split into blocks of about CHUNK gate values over OpenMP threads (each unit is
computed alone, so the thread count never changes a result). Measured against the NumPy
passes it replaces in convnet/backend/cpu.py (recurrent).
"""

from cython cimport floating
from cython.parallel cimport prange

from _openmp cimport omp_get_max_threads

cdef extern from "recurrent_rows.h" nogil:
    void lstm_unit_forward_rows_f(const float* c_prev, const float* gates, const float* cont,
                                  float forget_bias, float* act, float* tanh_c, float* c,
                                  float* h, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t d)
    void lstm_unit_forward_rows_d(const double* c_prev, const double* gates,
                                  const double* cont, double forget_bias, double* act,
                                  double* tanh_c, double* c, double* h, Py_ssize_t r0,
                                  Py_ssize_t r1, Py_ssize_t d)
    void lstm_unit_backward_rows_f(const float* c_prev, const float* cont, const float* act,
                                   const float* tanh_c, const float* dc, const float* dh,
                                   float* dc_prev, float* dgates, Py_ssize_t r0,
                                   Py_ssize_t r1, Py_ssize_t d)
    void lstm_unit_backward_rows_d(const double* c_prev, const double* cont,
                                   const double* act, const double* tanh_c, const double* dc,
                                   const double* dh, double* dc_prev, double* dgates,
                                   Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t d)

cdef enum:
    # gate values per work item (256 KB of float32): a thread start (waking a sleeping
    # OpenMP thread) was measured at 15-50 us, while the benchmark LSTM step (64 x 1024 gate
    # values) takes 80 us forward and 20 us backward on one thread (97 and 38 us on two)
    CHUNK = 65536


cdef inline Py_ssize_t _rows_per_item(Py_ssize_t d) noexcept nogil:
    return max(1, CHUNK // max(1, 4 * d))


cdef inline Py_ssize_t _items(Py_ssize_t rows, Py_ssize_t per) noexcept nogil:
    return (rows + per - 1) // per


cdef inline int _threads(Py_ssize_t items) noexcept nogil:
    """Never more threads than work items (a team of one wakes nobody)."""
    return <int> max(1, min(<Py_ssize_t> omp_get_max_threads(), items))


def lstm_unit_forward(const floating[:, ::1] c_prev,   # IN  (R, D)
                      const floating[:, ::1] gates,    # IN  (R, 4D) pre-activations i, f, o, g
                      const floating[::1] cont,        # IN  (R,)
                      double forget_bias,
                      floating[:, ::1] act,            # OUT (R, 4D) the activated gates
                      floating[:, ::1] tanh_c,         # OUT (R, D)
                      floating[:, ::1] c,              # OUT (R, D)
                      floating[:, ::1] h):             # OUT (R, D)
    """c = cont f c_prev + i g, h = o tanh(c); act and tanh_c are kept for backward."""
    cdef Py_ssize_t rows = c_prev.shape[0], d = c_prev.shape[1]
    cdef Py_ssize_t per = _rows_per_item(d), items = _items(rows, per), k
    with nogil:
        for k in prange(items, schedule='static', num_threads=_threads(items)):
            if floating is float:
                lstm_unit_forward_rows_f(&c_prev[0, 0], &gates[0, 0], &cont[0], forget_bias,
                                         &act[0, 0], &tanh_c[0, 0], &c[0, 0], &h[0, 0],
                                         k * per, min((k + 1) * per, rows), d)
            else:
                lstm_unit_forward_rows_d(&c_prev[0, 0], &gates[0, 0], &cont[0], forget_bias,
                                         &act[0, 0], &tanh_c[0, 0], &c[0, 0], &h[0, 0],
                                         k * per, min((k + 1) * per, rows), d)


def lstm_unit_backward(const floating[:, ::1] c_prev,  # IN  (R, D)
                       const floating[::1] cont,       # IN  (R,)
                       const floating[:, ::1] act,     # IN  (R, 4D) from forward
                       const floating[:, ::1] tanh_c,  # IN  (R, D) from forward
                       const floating[:, ::1] dc,      # IN  (R, D)
                       const floating[:, ::1] dh,      # IN  (R, D)
                       floating[:, ::1] dc_prev,       # OUT (R, D)
                       floating[:, ::1] dgates):       # OUT (R, 4D)
    """The diffs of c_prev and of the gates' pre-activations (cont gets none)."""
    cdef Py_ssize_t rows = c_prev.shape[0], d = c_prev.shape[1]
    cdef Py_ssize_t per = _rows_per_item(d), items = _items(rows, per), k
    with nogil:
        for k in prange(items, schedule='static', num_threads=_threads(items)):
            if floating is float:
                lstm_unit_backward_rows_f(&c_prev[0, 0], &cont[0], &act[0, 0], &tanh_c[0, 0],
                                          &dc[0, 0], &dh[0, 0], &dc_prev[0, 0], &dgates[0, 0],
                                          k * per, min((k + 1) * per, rows), d)
            else:
                lstm_unit_backward_rows_d(&c_prev[0, 0], &cont[0], &act[0, 0], &tanh_c[0, 0],
                                          &dc[0, 0], &dh[0, 0], &dc_prev[0, 0], &dgates[0, 0],
                                          k * per, min((k + 1) * per, rows), d)
