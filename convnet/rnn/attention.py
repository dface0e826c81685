"""The attention step of AttentionCell, as one layer (dot or additive scores).

Bottoms: ``query`` (N, A), ``keys`` (N, S, A), ``values`` (N, S, E) and optionally ``mask``
(N, S) (1 at real encoder positions, 0 at padding). Tops: ``context`` (N, E) and ``weights``
(N, S):

    dot:       score[n, s] = <keys[n, s], query[n]>
    additive:  score[n, s] = <v, tanh(keys[n, s] + query[n])>      (v: a learned (A,) param)
    weights = softmax over s of the scores (padding excluded);  context = sum_s weights values

For additive attention the keys are the encoder outputs already projected (W_k enc, done once
per sequence outside the time loop) and the query is W_q h (an InnerProduct in the step net),
Bahdanau's form; dot attention is Luong's.
"""

import numpy as np

from convnet import fillers
from convnet.errors import ShapeError, fail
from convnet.layers.base import Layer, check_choice, shape_str


class Attention(Layer):
    """Attention over an encoder's outputs (see the module docstring).

    Parameters: ``mode`` ("dot" or "additive"), ``v_filler`` ("xavier", additive only).
    """

    min_bottoms = 3
    max_bottoms = 4
    num_tops = 2
    nondiff_bottoms = (3,)

    def __init__(self, mode="dot", v_filler="xavier", **kwargs):
        self.mode = mode
        self.v_filler = v_filler
        super().__init__(**kwargs)

    def _check_params(self):
        self.mode = check_choice(self.mode, "mode", ("DOT", "ADDITIVE"), self).lower()
        self.v_filler = fillers.normalize(self.v_filler, "v_filler", self)

    def _reshape(self, shapes):
        q, k, v = shapes[:3]
        if len(q) != 2 or len(k) != 3 or len(v) != 3:
            fail(self, f"needs query (N, A), keys (N, S, A), values (N, S, E); got "
                       f"{shape_str(q)}, {shape_str(k)}, {shape_str(v)}", ShapeError)
        n, a = q
        if k[0] != n or k[2] != a or v[0] != n or v[1] != k[1]:
            fail(self, f"query {shape_str(q)}, keys {shape_str(k)} and values {shape_str(v)} "
                       f"disagree (expected keys {n}xSx{a} and values {n}x{k[1]}xE)",
                 ShapeError)
        if len(shapes) == 4 and tuple(shapes[3]) != (n, k[1]):
            fail(self, f"mask must be {n}x{k[1]}, got {shape_str(shapes[3])}", ShapeError)
        if self.mode == "additive" and not self.params:
            self._add_param("v", fillers.fill(self.v_filler, (a,), self.dtype, self.rng,
                                              "v_filler", self))
        return [(n, v[2]), (n, k[1])]

    def _forward(self, bottoms):
        q, k, v = bottoms[:3]
        if self.mode == "dot":
            scores = np.einsum("nsa,na->ns", k, q)
            self._t = None
        else:
            t = np.tanh(k + q[:, None, :])
            scores = t @ self.params[0].data
            self._t = t
        if len(bottoms) == 4:
            scores = np.where(bottoms[3] > 0, scores, -np.inf)
        scores = scores - scores.max(axis=1, keepdims=True)
        w = np.exp(scores)
        w /= w.sum(axis=1, keepdims=True)
        context = np.einsum("ns,nse->ne", w, v)
        self._saved = (q, k, v, w)
        return [context, w]

    def _backward(self, top_diffs, propagate_down):
        dctx, dw = top_diffs
        q, k, v, w = self._saved
        dw = dw + np.einsum("ne,nse->ns", dctx, v)
        dscore = w * (dw - (dw * w).sum(axis=1, keepdims=True))
        dq = dk = None
        if self.mode == "dot":
            if propagate_down[0]:
                dq = np.einsum("ns,nsa->na", dscore, k)
            if propagate_down[1]:
                dk = dscore[:, :, None] * q[:, None, :]
        else:
            vec = self.params[0]
            t = self._t
            if vec.lr_mult != 0:
                vec.diff += np.einsum("ns,nsa->a", dscore, t)
            dpre = dscore[:, :, None] * vec.data * (1 - t * t)
            if propagate_down[0]:
                dq = dpre.sum(axis=1)
            if propagate_down[1]:
                dk = dpre
        dv = dctx[:, None, :] * w[:, :, None] if propagate_down[2] else None
        out = [dq, dk, dv]
        if len(self.bottom_shapes) == 4:
            out.append(None)
        return out
