"""Recurrent building blocks: Caffe's fused LSTMUnit (the cells and engine are convnet.rnn)."""

import numpy as np

from convnet.errors import ShapeError, fail
from convnet.layers.base import Layer, check_number, shape_str


class LSTMUnit(Layer):
    """One LSTM step on precomputed gate inputs, Caffe's LSTMUnit layer.

    Bottoms: ``c_prev`` (..., D), ``gates`` (..., 4D) pre-activations in Caffe's order
    i, f, o, g, and optionally ``cont`` (...) (1 where the sequence continues, 0 where it
    starts; Caffe's bottom is 1 x N; without it every row continues). Tops: c and h (..., D):

        i, f, o = sigmoid(gates_i, gates_f, gates_o);  g = tanh(gates_g)
        c = cont * f * c_prev + i * g;                 h = o * tanh(c)

    Backward gives c_prev and gates their diffs (cont gets none); the leading axes (Caffe's
    1 x N, or any others) are rows. The CPU backend runs it as one compiled pass over each
    row (pyx/recurrent.pyx; measured in convnet/backend/cpu.py), the GPU in
    cuda/recurrent.cu.

    ``forget_bias`` (default 0.0; Caffe2's LSTMUnit argument, not Caffe's) is added to the f
    pre-activations: f = sigmoid(gates_f + forget_bias).

    >>> c, h = LSTMUnit().forward(np.zeros((1, 2, 3)), np.zeros((1, 2, 12)), np.ones((1, 2)))
    """

    min_bottoms = 2
    max_bottoms = 3
    num_tops = 2
    nondiff_bottoms = (2,)

    def __init__(self, forget_bias=0.0, **kwargs):
        self.forget_bias = forget_bias
        super().__init__(**kwargs)

    def _check_params(self):
        self.forget_bias = check_number(self.forget_bias, "forget_bias", self)

    def _reshape(self, shapes):
        c_prev, gates = shapes[0], shapes[1]
        if not c_prev:
            fail(self, "bottom 0 (c_prev) must have at least one axis, got a 0-d bottom",
                 ShapeError)
        d = c_prev[-1]
        if tuple(gates) != tuple(c_prev[:-1]) + (4 * d,):
            fail(self, f"bottom 1 (gates) must be {shape_str(tuple(c_prev[:-1]) + (4 * d,))} "
                       f"(4 x D = {4 * d} gate inputs per row for c_prev {shape_str(c_prev)}), "
                       f"got {shape_str(gates)}", ShapeError)
        if len(shapes) == 3 and tuple(shapes[2]) != tuple(c_prev[:-1]):
            fail(self, f"bottom 2 (cont) must be {shape_str(c_prev[:-1]) or '()'} (one flag "
                       f"per row of c_prev {shape_str(c_prev)}), got "
                       f"{shape_str(shapes[2]) or '()'}", ShapeError)
        self._rows = int(np.prod(c_prev[:-1], dtype=np.int64))
        self._d = d
        return [c_prev, c_prev]

    def _forward(self, bottoms):
        be = self.backend
        r, d = self._rows, self._d
        c_prev = bottoms[0].reshape((r, d))
        gates = bottoms[1].reshape((r, 4 * d))
        if len(bottoms) == 3:
            cont = bottoms[2].reshape((r,))
        else:
            cont = be.empty((r,), self.dtype)
            cont.fill(1)
        act = be.empty((r, 4 * d), self.dtype)
        tanh_c = be.empty((r, d), self.dtype)
        c = be.empty((r, d), self.dtype)
        h = be.empty((r, d), self.dtype)
        be.recurrent_lstm_unit_forward(c_prev, gates, cont, self.forget_bias, act, tanh_c, c, h)
        self._saved = (c_prev, cont, act, tanh_c)
        shape = self.top_shapes[0]
        return [c.reshape(shape), h.reshape(shape)]

    def _backward(self, top_diffs, propagate_down):
        be = self.backend
        r, d = self._rows, self._d
        out = [None] * len(self.bottom_shapes)
        if not (propagate_down[0] or propagate_down[1]):
            return out
        c_prev, cont, act, tanh_c = self._saved
        dc_prev = be.empty((r, d), self.dtype)
        dgates = be.empty((r, 4 * d), self.dtype)
        be.recurrent_lstm_unit_backward(c_prev, cont, act, tanh_c,
                                        top_diffs[0].reshape((r, d)),
                                        top_diffs[1].reshape((r, d)), dc_prev, dgates)
        if propagate_down[0]:
            out[0] = dc_prev.reshape(self.bottom_shapes[0])
        if propagate_down[1]:
            out[1] = dgates.reshape(self.bottom_shapes[1])
        return out
