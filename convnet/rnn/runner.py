"""Run a cell over a sequence (Caffe2's ``apply_over_sequence``): hoisted input projection,
step net, RecurrentNetwork, encoder statics for attention, and layer-by-layer stacks."""

import numpy as np

from convnet.errors import ConfigError, ShapeError, StateError, fail
from convnet.net import Net
from convnet.rnn.cells import AttentionCell, Cell
from convnet.rnn.engine import RecurrentNetwork


class CellRunner:
    """``CellRunner(cell, hoist=True, recompute=False, forward_only=False, static=False)``.

    ``forward(x, initial=None, lengths=None, encoder=None, encoder_lengths=None)`` runs the
    cell over x (T, N, input_size) and returns (outputs (T, N, output_size), {state: last
    value (N, size)}). Initial states default to zeros. For an AttentionCell, ``encoder`` is
    the encoder's outputs (N, S, E) (``encoder_lengths`` (N,) masks their padding).
    ``backward(d_outputs=None, d_last=None)`` returns {"x": dx, "initial": {state: d},
    "encoder": d_encoder or None}; param diffs accumulate in the cell's layers.
    ``recompute=True`` recomputes the cell's ``recompute_blobs`` (an LSTM's gate
    pre-activations, the recurrent gemm included) in backward instead of keeping them (and
    the caches of the layers that read them) per step.
    """

    def __init__(self, cell, hoist=True, recompute=False, forward_only=False, static=False,
                 name=None):
        if not isinstance(cell, Cell):
            raise ConfigError(f"CellRunner: cell must be a convnet.rnn cell, got "
                              f"{type(cell).__name__}")
        self.cell = cell
        self.name = name or cell.name
        self._owner = f"CellRunner '{self.name}'"
        self.proj = cell.projection() if hoist else None
        net = Net(f"{self.name}_step")
        prev = {s: f"{s}_prev" for s in cell.states}
        nxt, out = cell.build(net, "x_t", prev, projected=self.proj is not None)
        self.output_blob = out
        state_of_output = next((s for s, b in nxt.items() if b == out), None)
        self._out_key = f"{state_of_output}_all" if state_of_output else f"{out}_all"
        self.rnn = RecurrentNetwork(
            net, {s: (prev[s], nxt[s]) for s in cell.states}, inputs={"x_t": "x"},
            step_outputs=[] if state_of_output else [out],
            recompute=[b for b in cell.recompute_names() if b in net._latest] if recompute
            else (),
            forward_only=forward_only, static=static, name=self.name)
        self.step_net = net
        self._attention = isinstance(cell, AttentionCell)

    @property
    def params(self):
        params = list(self.step_net.learnable_params)
        if self.proj is not None:
            params = list(self.proj.params) + params
        if self._attention:
            params = list(self.cell.key_projection.params) + params
        return params

    def train(self, mode=True):
        self.rnn.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def _encoder_statics(self, encoder, encoder_lengths, n):
        cell = self.cell
        if encoder is None:
            fail(self._owner, f"{cell} needs encoder=... (the encoder's outputs, N x S x "
                            f"{cell.encoder_size})", StateError)
        enc = np.ascontiguousarray(encoder, dtype=cell.dtype)
        if enc.ndim != 3 or enc.shape[0] != n or enc.shape[2] != cell.encoder_size:
            fail(self._owner, f"encoder must be {n} x S x {cell.encoder_size}, got "
                            f"{'x'.join(map(str, enc.shape))}", ShapeError)
        keys = cell.key_projection.forward(enc)
        mask = np.ones(enc.shape[:2], cell.dtype)
        if encoder_lengths is not None:
            el = np.asarray(encoder_lengths)
            if el.shape != (n,) or el.min() < 1 or el.max() > enc.shape[1]:
                fail(self._owner, f"encoder_lengths must be {n} integers in [1, {enc.shape[1]}],"
                                f" got {el!r}", ShapeError)
            mask = (np.arange(enc.shape[1])[None, :] < el[:, None]).astype(cell.dtype)
        return {cell.blob("keys"): keys, cell.blob("values"): enc, cell.blob("mask"): mask}

    def forward(self, x, initial=None, lengths=None, encoder=None, encoder_lengths=None):
        cell = self.cell
        x = np.ascontiguousarray(x, dtype=cell.dtype)
        if x.ndim != 3 or x.shape[2] != cell.input_size:
            fail(self._owner, f"x must be T x N x {cell.input_size}, got "
                            f"{'x'.join(map(str, x.shape))}", ShapeError)
        n = x.shape[1]
        seq = self.proj.forward(x) if self.proj is not None else x
        init = {s: np.zeros((n, size), cell.dtype) for s, size in cell.states.items()}
        for s, v in (initial or {}).items():
            if s not in init:
                fail(self._owner, f"initial names unknown state '{s}' (states: "
                                f"{', '.join(init)})")
            init[s] = np.ascontiguousarray(v, dtype=cell.dtype)
        inputs = {"x": seq}
        if self._attention:
            inputs.update(self._encoder_statics(encoder, encoder_lengths, n))
        out = self.rnn.forward(inputs, initial=init, lengths=lengths)
        self._forwarded = True
        return out[self._out_key], {s: out[f"{s}_last"] for s in cell.states}

    def backward(self, d_outputs=None, d_last=None):
        if not getattr(self, "_forwarded", False):
            fail(self._owner, "backward() called before forward()", StateError)
        diffs = {}
        if d_outputs is not None:
            diffs[self._out_key] = d_outputs
        for s, d in (d_last or {}).items():
            diffs[f"{s}_last"] = d
        g = self.rnn.backward(diffs)
        dx = g["x"]
        if self.proj is not None:
            dx = self.proj.backward(dx)
        out = {"x": dx, "initial": {s: g[f"{s}_init"] for s in self.cell.states},
               "encoder": None}
        if self._attention:
            c = self.cell
            d_enc = g[c.blob("values")] + c.key_projection.backward(g[c.blob("keys")])
            out["encoder"] = d_enc
        return out


class LayeredRunner:
    """Cells run one after the other over the whole sequence (layer k reads layer k-1's
    outputs), as PyTorch's ``num_layers``: each layer's input projection is hoisted.

    ``forward(x, initial=None, lengths=None)`` returns (outputs of the last layer, [last
    states of each layer]); ``backward(d_outputs, d_last=None)`` returns {"x", "initial"}.
    """

    def __init__(self, cells, **kwargs):
        cells = list(cells)
        for lower, upper in zip(cells, cells[1:]):
            if upper.input_size != lower.output_size:
                raise ConfigError(f"LayeredRunner: {upper} takes input_size "
                                  f"{upper.input_size} but {lower} outputs {lower.output_size}")
        self.runners = [CellRunner(c, **kwargs) for c in cells]

    @property
    def params(self):
        return [p for r in self.runners for p in r.params]

    def forward(self, x, initial=None, lengths=None):
        lasts = []
        for i, r in enumerate(self.runners):
            x, last = r.forward(x, initial=(initial or [None] * len(self.runners))[i],
                                lengths=lengths)
            lasts.append(last)
        return x, lasts

    def backward(self, d_outputs=None, d_last=None):
        d_last = d_last or [None] * len(self.runners)
        d = d_outputs
        initial = [None] * len(self.runners)
        for i in range(len(self.runners) - 1, -1, -1):
            g = self.runners[i].backward(d, d_last[i])
            d = g["x"]
            initial[i] = g["initial"]
        return {"x": d, "initial": initial}
