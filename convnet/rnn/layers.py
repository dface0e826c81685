"""Caffe's recurrent layers, LSTM and RNN, as convnet Layers built on RecurrentNetwork.

Both take Caffe's bottoms and params in Caffe's order, so a Caffe definition maps one to one:

- bottoms: x (T, N, ...) (axes after the second are flattened), cont (T, N) (0 where a
  sequence starts: the previous hidden state is multiplied by cont, and the LSTM's cell state
  too), an optional static input x_static (N, ...) added to every step, and, with
  ``expose_hidden=True``, the initial states (h0 (1, N, H), and c0 for LSTM) last;
- tops: the per-step output (T, N, H) and, with ``expose_hidden``, the last states
  (1, N, H) (hT, and cT for LSTM), which can feed the next call's initial states to stream
  one chunk at a time (Caffe issue #3948) with gradients through them.

Caffe ``recurrent_param``: ``num_output``, ``weight_filler`` ("xavier"), ``bias_filler``
(0.0), ``expose_hidden`` (False). Runs on the CPU.
"""

import numpy as np

from convnet import fillers
from convnet.errors import ConfigError, ShapeError, fail
from convnet.layers import Eltwise, InnerProduct, LSTMUnit, Scale, TanH
from convnet.layers.base import Layer, check_number, shape_str
from convnet.net import Net
from convnet.rnn.engine import RecurrentNetwork


class _CaffeRecurrent(Layer):
    min_bottoms = 2
    max_bottoms = 5
    nondiff_bottoms = (1,)
    #: names of the hidden states (in bottom/top order) and of the per-step output state
    hidden = ()
    gates = 1

    def __init__(self, num_output, weight_filler="xavier", bias_filler=0.0,
                 expose_hidden=False, recompute=False, **kwargs):
        self.num_output = num_output
        self.weight_filler = weight_filler
        self.bias_filler = bias_filler
        self.expose_hidden = expose_hidden
        self.recompute = recompute
        super().__init__(**kwargs)
        self.num_tops = 1 + (len(self.hidden) if self.expose_hidden else 0)
        self._rnn = None

    def _check_params(self):
        self.num_output = check_number(self.num_output, "num_output", self, minimum=1,
                                       integer=True)
        self.weight_filler = fillers.normalize(self.weight_filler, "weight_filler", self)
        self.bias_filler = fillers.normalize(self.bias_filler, "bias_filler", self)
        for flag in ("expose_hidden", "recompute"):
            if not isinstance(getattr(self, flag), (bool, np.bool_)):
                fail(self, f"{flag} must be True or False, got {getattr(self, flag)!r}",
                     ConfigError)

    def _check_count(self, n, what="bottoms"):
        k = len(self.hidden) if self.expose_hidden else 0
        if n not in (2 + k, 3 + k):
            names = ["x", "cont", "[x_static]"] + [f"{h}0" for h in self.hidden][:k]
            fail(self, f"expects {2 + k} or {3 + k} bottoms ({', '.join(names)}), got {n}",
                 ShapeError)

    def _weight(self, name, shape):
        return self._add_param(name, fillers.fill(self.weight_filler, shape, self.dtype,
                                                  self.rng, "weight_filler", self))

    def _reshape(self, shapes):
        x, cont = shapes[0], shapes[1]
        k = len(self.hidden) if self.expose_hidden else 0
        has_static = len(shapes) == 3 + k
        if len(x) < 3:
            fail(self, f"bottom 0 (x) must be T x N x ..., got {shape_str(x)}", ShapeError)
        t, n = x[0], x[1]
        if tuple(cont) != (t, n):
            fail(self, f"bottom 1 (cont) must be {t}x{n} (T x N), got {shape_str(cont)}",
                 ShapeError)
        h = self.num_output
        for i, name in enumerate(self.hidden[:k]):
            got = shapes[len(shapes) - k + i]
            if tuple(got) != (1, n, h):
                fail(self, f"bottom {len(shapes) - k + i} ({name}0) must be 1x{n}x{h}, got "
                           f"{shape_str(got)}", ShapeError)
        d_in = int(np.prod(x[2:], dtype=np.int64))
        d_static = int(np.prod(shapes[2][1:], dtype=np.int64)) if has_static else 0
        if has_static and shapes[2][0] != n:
            fail(self, f"bottom 2 (x_static) must have N = {n} rows, got {shape_str(shapes[2])}",
                 ShapeError)
        g = self.gates * h
        if not self.params:
            self._create_params(d_in, d_static, has_static)
        self._check_param_shape(self.params[0], (g, d_in), "W_x: gates x input size")
        if has_static and len(self.params) < self._param_count(True):
            fail(self, "x_static was given but the layer was set up without it", ShapeError)
        self._has_static = has_static
        self._dims = (t, n, d_in, d_static)
        if self._rnn is None:
            self._rnn = self._build_engine()
        tops = [(t, n, h)] + [(1, n, h)] * k
        return tops

    def _param(self, name):
        return next(p for p in self.params if p.name == name)

    # ------------------------------------------------------------------ run
    def _project(self, x, xs):
        t, n, d_in, d_static = self._dims
        g = self.gates * self.num_output
        be = self.backend
        w, b = self.params[0].data, self.params[1].data
        xp = be.empty((t * n, g), self.dtype)
        be.inner_product_forward(x.reshape(t * n, d_in), w, b, xp, False)
        xp = xp.reshape(t, n, g)
        if xs is not None:
            static = be.empty((n, g), self.dtype)
            be.inner_product_forward(xs.reshape(n, d_static), self._param("W_x_static").data,
                                     None, static, False)
            xp += static[None]
        return xp

    def _forward(self, bottoms):
        t, n, d_in, d_static = self._dims
        k = len(self.hidden) if self.expose_hidden else 0
        x, cont = bottoms[0], bottoms[1]
        xs = bottoms[2] if self._has_static else None
        self._x, self._xs = x, xs
        init = {}
        for i, name in enumerate(self.hidden):
            if i < k:
                init[name] = bottoms[len(bottoms) - k + i].reshape(n, self.num_output)
            else:
                init[name] = np.zeros((n, self.num_output), self.dtype)
        out = self._rnn.forward({"x": self._project(x, xs), "cont": cont}, initial=init)
        tops = [out[self._output_key]]
        for name in self.hidden[:k]:
            tops.append(out[f"{name}_last"].reshape(1, n, self.num_output))
        return tops

    def _backward(self, top_diffs, propagate_down):
        t, n, d_in, d_static = self._dims
        k = len(self.hidden) if self.expose_hidden else 0
        diffs = {self._output_key: top_diffs[0]}
        for i, name in enumerate(self.hidden[:k]):
            diffs[f"{name}_last"] = top_diffs[1 + i].reshape(n, self.num_output)
        g = self._rnn.backward(diffs)
        be = self.backend
        dxp = np.ascontiguousarray(g["x"]).reshape(t * n, -1)
        w, b = self.params[0], self.params[1]
        x2 = self._x.reshape(t * n, d_in)
        if w.lr_mult != 0:
            be.inner_product_backward_weight(x2, dxp, w.diff, False)
        if b.lr_mult != 0:
            be.inner_product_backward_bias(dxp, b.diff)
        out = [None] * len(self.bottom_shapes)
        if propagate_down[0]:
            dx = be.empty((t * n, d_in), self.dtype)
            be.inner_product_backward_data(dxp, w.data, dx, False)
            out[0] = dx.reshape(self.bottom_shapes[0])
        if self._has_static:
            ws = self._param("W_x_static")
            dsum = np.ascontiguousarray(g["x"].sum(axis=0))
            xs2 = self._xs.reshape(n, d_static)
            if ws.lr_mult != 0:
                be.inner_product_backward_weight(xs2, dsum, ws.diff, False)
            if propagate_down[2]:
                dxs = be.empty((n, d_static), self.dtype)
                be.inner_product_backward_data(dsum, ws.data, dxs, False)
                out[2] = dxs.reshape(self.bottom_shapes[2])
        for i, name in enumerate(self.hidden[:k]):
            j = len(self.bottom_shapes) - k + i
            if propagate_down[j]:
                out[j] = g[f"{name}_init"].reshape(self.bottom_shapes[j])
        return out

    def _inner(self, name, param_names, bias=False):
        """An InnerProduct of the step net whose params are this layer's (shared)."""
        ip = InnerProduct(num_output=self.num_output * (self.gates if name == "W_hc" else 1),
                          bias_term=bias, name=name, dtype=self.dtype)
        ip.params = [self._param(p) for p in param_names]
        return ip


class LSTM(_CaffeRecurrent):
    """Caffe's LSTM layer (see the module docstring): per step, with h' = cont_t h_{t-1},
    gates = W_xc x_t + b_c + W_hc h' (+ W_xc_static x_static), order i, f, o, g;
    c_t = cont_t f c_{t-1} + i g; h_t = o tanh(c_t). Top: h (T, N, H).

    Params in Caffe's order: W_xc (4H, I), b_c (4H,), [W_xc_static (4H, S)], W_hc (4H, H).
    ``recompute=True`` recomputes each step's gates in backward (the recurrent gemm and the
    gate sum re-run) instead of keeping them and the LSTM unit's cache.

    >>> lstm = LSTM(num_output=8)
    >>> h = lstm.forward(x, cont)            # x: T x N x I, cont: T x N
    """

    hidden = ("h", "c")
    gates = 4
    _output_key = "h_all"

    def _param_count(self, static):
        return 4 if static else 3

    def _create_params(self, d_in, d_static, static):
        g, h = 4 * self.num_output, self.num_output
        self._weight("W_xc", (g, d_in))
        self._add_param("b_c", fillers.fill(self.bias_filler, (g,), self.dtype, self.rng,
                                            "bias_filler", self))
        if static:
            self._weight("W_x_static", (g, d_static))
        self._weight("W_hc", (g, h))

    def _build_engine(self):
        net = Net(f"{self.name or 'lstm'}_step")
        dt = self.dtype
        net.add(Scale(axis=0, name="h_conted", dtype=dt), bottom=["h_prev", "cont_t"],
                top=["h_conted"])
        net.add(self._inner("W_hc", ["W_hc"]), bottom=["h_conted"], top=["hh"])
        net.add(Eltwise("SUM", name="gates", dtype=dt), bottom=["hh", "x_t"], top=["gates"])
        net.add(LSTMUnit(name="unit", dtype=dt), bottom=["c_prev", "gates", "cont_t"],
                top=["c", "h"])
        return RecurrentNetwork(net, {"h": ("h_prev", "h"), "c": ("c_prev", "c")},
                                inputs={"x_t": "x", "cont_t": "cont"}, no_grad=["cont"],
                                recompute=["h_conted", "hh", "gates"] if self.recompute
                                else (),
                                name=self.name or "lstm")


class RNN(_CaffeRecurrent):
    """Caffe's RNN layer (see the module docstring): per step
    h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h (+ W_xh_static x_static)),
    o_t = tanh(W_ho h_t + b_o). Top: o (T, N, H).

    Params in Caffe's order: W_xh (H, I), b_h (H,), [W_xh_static (H, S)], W_hh (H, H),
    W_ho (H, H), b_o (H,).
    """

    hidden = ("h",)
    gates = 1
    _output_key = "o_all"

    def _param_count(self, static):
        return 6 if static else 5

    def _create_params(self, d_in, d_static, static):
        h = self.num_output
        self._weight("W_xh", (h, d_in))
        self._add_param("b_h", fillers.fill(self.bias_filler, (h,), self.dtype, self.rng,
                                            "bias_filler", self))
        if static:
            self._weight("W_x_static", (h, d_static))
        self._weight("W_hh", (h, h))
        self._weight("W_ho", (h, h))
        self._add_param("b_o", fillers.fill(self.bias_filler, (h,), self.dtype, self.rng,
                                            "bias_filler", self))

    def _build_engine(self):
        net = Net(f"{self.name or 'rnn'}_step")
        dt = self.dtype
        net.add(Scale(axis=0, name="h_conted", dtype=dt), bottom=["h_prev", "cont_t"],
                top=["h_conted"])
        net.add(self._inner("W_hh", ["W_hh"]), bottom=["h_conted"], top=["hh"])
        net.add(Eltwise("SUM", name="pre", dtype=dt), bottom=["hh", "x_t"], top=["pre"])
        net.add(TanH(name="h_act", dtype=dt), bottom=["pre"], top=["h"])
        net.add(self._inner("W_ho", ["W_ho", "b_o"], bias=True), bottom=["h"], top=["o_pre"])
        net.add(TanH(name="o_act", dtype=dt), bottom=["o_pre"], top=["o"])
        return RecurrentNetwork(net, {"h": ("h_prev", "h")},
                                inputs={"x_t": "x", "cont_t": "cont"}, step_outputs=["o"],
                                no_grad=["cont"], name=self.name or "rnn")


class CellLayer(Layer):
    """Any cell run over a sequence as one Layer of a Net (so solvers, snapshots and weight
    files work unchanged). Bottoms: x (T, N, I), then optionally lengths (N,) (integers; a
    padded batch), and for an AttentionCell the encoder outputs (S, N, E) (time-major, as
    a CellLayer encoder writes them) and the encoder lengths (N,). Top: the cell output
    (T, N, O), zero at padded steps. Params: the cell's (shared with its layers).

    ``CellLayer(cell, lengths=True, recompute=False)``. ``runner`` is the CellRunner, for
    decoding (:func:`convnet.rnn.decoder_net`).
    """

    min_bottoms = 1
    max_bottoms = 4

    def __init__(self, cell, lengths=True, recompute=False, **kwargs):
        from convnet.rnn.runner import CellRunner
        self.cell = cell
        self.lengths = lengths
        self.runner = CellRunner(cell, recompute=recompute)
        kwargs.setdefault("dtype", cell.dtype)
        kwargs.setdefault("name", cell.name)
        super().__init__(**kwargs)
        self._attention = self.runner._attention
        n = 1 + int(bool(lengths)) + (2 if self._attention else 0)
        self.min_bottoms = self.max_bottoms = n
        self.nondiff_bottoms = (1, 3) if lengths else ()

    def _convert_bottom(self, index, x):
        if self.lengths and index in (1, 3):
            return np.asarray(x).astype(np.int64)
        return np.ascontiguousarray(x, dtype=self.dtype)

    def _reshape(self, shapes):
        x = shapes[0]
        if len(x) != 3 or x[2] != self.cell.input_size:
            fail(self, f"bottom 0 must be T x N x {self.cell.input_size}, got {shape_str(x)}",
                 ShapeError)
        t, n, _ = x
        if not self.params:
            self._setup_params(x)
        return (t, n, self.cell.output_size)

    def _setup_params(self, x):
        t, n, _ = x
        r = self.runner
        shapes = {"x_t": (n, r.proj.num_output if r.proj is not None else x[2])}
        if r.proj is not None:
            r.proj.setup(x)
        for s, size in self.cell.states.items():
            shapes[f"{s}_prev"] = (n, size)
        if self._attention:
            c = self.cell
            c.key_projection.setup((n, 1, c.encoder_size))
            shapes.update({c.blob("keys"): (n, 1, c.attention_dim),
                           c.blob("values"): (n, 1, c.encoder_size), c.blob("mask"): (n, 1)})
        r.step_net.setup(**shapes)
        self.params = r.params

    def _forward(self, bottoms):
        x = bottoms[0]
        lengths = bottoms[1] if self.lengths else None
        enc = enc_len = None
        if self._attention:
            enc = np.ascontiguousarray(bottoms[-2 if self.lengths else -1].transpose(1, 0, 2))
            enc_len = bottoms[3] if self.lengths else None
        self.runner.train(self.phase == "TRAIN")
        y, _ = self.runner.forward(x, lengths=lengths, encoder=enc, encoder_lengths=enc_len)
        return [y]

    def _backward(self, top_diffs, propagate_down):
        g = self.runner.backward(top_diffs[0])
        out = [g["x"] if propagate_down[0] else None]
        if self.lengths:
            out.append(None)
        if self._attention:
            d = g["encoder"]
            out.append(np.ascontiguousarray(d.transpose(1, 0, 2)) if propagate_down[-2 if
                       self.lengths else -1] else None)
            if self.lengths:
                out.append(None)
        return out
