"""Cells: small nets of ordinary layers that one time step runs (Caffe2's rnn_cell).

A cell adds its layers to a step Net with :meth:`Cell.build`: given the blob of the step's
input and the blobs of its previous states, it returns the blobs of its next states and of
its output. The first cell of a sequence may have its input projection (x W^T + b for every
step) hoisted out of the time loop: :meth:`Cell.projection` gives that InnerProduct (axis 2,
applied once to the T x N x I sequence), and ``build(..., projected=True)`` then reads the
projected input. ``MultiRNNCell`` stacks cells; ``AttentionCell`` puts attention over an
encoder's outputs on top of any cell.

Gate layouts: LSTM / MILSTM gates are (i, f, o, g) as in Caffe's LSTMUnit; GRU's (r, z, n)
as in PyTorch.
"""

import numpy as np

from convnet.errors import ConfigError
from convnet.layers import (Concat, Eltwise, InnerProduct, LSTMUnit, Scale, Sigmoid, Slice,
                            TanH)
from convnet.layers.base import check_number


def _size(value, param, owner):
    return check_number(value, param, owner, minimum=1, integer=True)


class Cell:
    """Base class. Subclasses set ``state_sizes`` ({state: size}), ``output_size`` and
    ``input_size`` and implement ``build``."""

    #: the state that is the cell's output (the "hidden" state)
    output_state = None
    #: step blobs worth recomputing in backward instead of keeping (by local name; those
    #: the step net does not have, e.g. an input projection that was hoisted, are skipped)
    recompute_blobs = ()

    def __init__(self, name, dtype):
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{type(self).__name__}: name must be a non-empty string, got "
                              f"{name!r}")
        self.name = name
        self.dtype = np.dtype(dtype)

    def __str__(self):
        return f"{type(self).__name__} '{self.name}'"

    def blob(self, local):
        return f"{self.name}/{local}"

    @property
    def states(self):
        """Fully named states: {"<cell>/hidden": size, ...}."""
        return {self.blob(s): n for s, n in self.state_sizes.items()}

    def projection(self):
        """The hoistable input projection (an InnerProduct over axis 2), or None."""
        return None

    def build(self, net, x, prev, projected=False):
        """Add the step's layers to ``net``: ``x`` is the input blob (N, input_size), or the
        projected input when ``projected``; ``prev`` maps each state of :attr:`states` to the
        blob of its previous value. Returns ({state: next blob}, output blob)."""
        raise NotImplementedError

    def recompute_names(self):
        return [self.blob(b) for b in self.recompute_blobs]


class LSTMCell(Cell):
    """LSTM: gates = W x + b + U h_prev (i, f, o, g); c = f c_prev + i g; h = o tanh(c),
    with f = sigmoid(gates_f + forget_bias) (LSTMUnit). States: hidden, cell (N, H).

    ``LSTMCell(input_size, hidden_size, forget_bias=0.0, name="lstm", dtype=np.float32,
    weight_filler="xavier", bias_filler=0.0)``. Params: ``x2h`` (4H x I, 4H), ``h2h`` (4H x H).
    """

    output_state = "hidden"
    #: the gate pre-activations and what they are summed from (the recurrent gemm is re-run)
    recompute_blobs = ("x_proj", "hh", "gates")
    gates_per_unit = 4

    def __init__(self, input_size, hidden_size, forget_bias=0.0, name="lstm",
                 dtype=np.float32, weight_filler="xavier", bias_filler=0.0):
        super().__init__(name, dtype)
        self.input_size = _size(input_size, "input_size", self)
        self.hidden_size = _size(hidden_size, "hidden_size", self)
        self.forget_bias = check_number(forget_bias, "forget_bias", self)
        self.state_sizes = {"hidden": self.hidden_size, "cell": self.hidden_size}
        self.output_size = self.hidden_size
        g = self.gates_per_unit * self.hidden_size
        self.x2h = InnerProduct(num_output=g, axis=-1, weight_filler=weight_filler,
                                bias_filler=bias_filler, name=self.blob("x2h"), dtype=dtype,
                                bias_term=self._x_bias)
        self.h2h = InnerProduct(num_output=g, bias_term=False, weight_filler=weight_filler,
                                name=self.blob("h2h"), dtype=dtype)

    _x_bias = True

    def projection(self):
        return self.x2h

    def _input(self, net, x, projected):
        if projected:
            return x
        net.add(self.x2h, bottom=[x], top=[self.blob("x_proj")])
        return self.blob("x_proj")

    def _gates(self, net, xp, h_prev):
        net.add(self.h2h, bottom=[h_prev], top=[self.blob("hh")])
        net.add(Eltwise("SUM", name=self.blob("sum"), dtype=self.dtype),
                bottom=[self.blob("hh"), xp], top=[self.blob("gates")])
        return self.blob("gates")

    def build(self, net, x, prev, projected=False):
        xp = self._input(net, x, projected)
        gates = self._gates(net, xp, prev[self.blob("hidden")])
        net.add(LSTMUnit(forget_bias=self.forget_bias, name=self.blob("unit"),
                         dtype=self.dtype),
                bottom=[prev[self.blob("cell")], gates],
                top=[self.blob("cell"), self.blob("hidden")])
        nxt = {self.blob("hidden"): self.blob("hidden"), self.blob("cell"): self.blob("cell")}
        return nxt, self.blob("hidden")


class MILSTMCell(LSTMCell):
    """Multiplicative-integration LSTM (Wu et al. 2016, Caffe2's MILSTMCell):
    gates = alpha * Wx * Uh + beta_h * Uh + beta_i * Wx + b, with alpha, beta_h, beta_i, b
    learned 4H vectors starting at 1, 1, 1, 0; then the LSTM unit. Wx has no bias (b is the
    separate vector), so the hoisted projection is x W^T."""

    recompute_blobs = ("x_proj", "hh", "wu", "alpha_wu", "beta_hh", "beta_x", "gates")
    _x_bias = False

    def _gates(self, net, xp, h_prev):
        b = self.blob
        net.add(self.h2h, bottom=[h_prev], top=[b("hh")])
        net.add(Eltwise("PROD", name=b("mi"), dtype=self.dtype), bottom=[xp, b("hh")],
                top=[b("wu")])
        net.add(Scale(axis=1, name=b("alpha"), dtype=self.dtype), bottom=[b("wu")],
                top=[b("alpha_wu")])
        net.add(Scale(axis=1, name=b("beta_h"), dtype=self.dtype), bottom=[b("hh")],
                top=[b("beta_hh")])
        net.add(Scale(axis=1, bias_term=True, name=b("beta_i"), dtype=self.dtype),
                bottom=[xp], top=[b("beta_x")])
        net.add(Eltwise("SUM", name=b("sum"), dtype=self.dtype),
                bottom=[b("alpha_wu"), b("beta_hh"), b("beta_x")], top=[b("gates")])
        return b("gates")


class GRUCell(Cell):
    """GRU with PyTorch's equations: r = sigmoid(W_r x + b_ir + U_r h + b_hr),
    z = sigmoid(W_z x + b_iz + U_z h + b_hz), n = tanh(W_n x + b_in + r (U_n h + b_hn)),
    h' = (1 - z) n + z h. State: hidden (N, H). Params: ``x2h`` (3H x I, 3H), ``h2h``
    (3H x H, 3H), gate blocks in the order r, z, n."""

    output_state = "hidden"
    recompute_blobs = ("rz_sum",)

    def __init__(self, input_size, hidden_size, name="gru", dtype=np.float32,
                 weight_filler="xavier", bias_filler=0.0):
        super().__init__(name, dtype)
        self.input_size = _size(input_size, "input_size", self)
        self.hidden_size = _size(hidden_size, "hidden_size", self)
        self.state_sizes = {"hidden": self.hidden_size}
        self.output_size = self.hidden_size
        g = 3 * self.hidden_size
        self.x2h = InnerProduct(num_output=g, axis=-1, weight_filler=weight_filler,
                                bias_filler=bias_filler, name=self.blob("x2h"), dtype=dtype)
        self.h2h = InnerProduct(num_output=g, weight_filler=weight_filler,
                                bias_filler=bias_filler, name=self.blob("h2h"), dtype=dtype)

    def projection(self):
        return self.x2h

    def build(self, net, x, prev, projected=False):
        b, dt, H = self.blob, self.dtype, self.hidden_size
        if not projected:
            net.add(self.x2h, bottom=[x], top=[b("x_proj")])
            x = b("x_proj")
        h_prev = prev[b("hidden")]
        net.add(self.h2h, bottom=[h_prev], top=[b("hh")])
        net.add(Slice(axis=1, slice_point=[2 * H], name=b("x_split"), dtype=dt), bottom=[x],
                top=[b("x_rz"), b("x_n")])
        net.add(Slice(axis=1, slice_point=[2 * H], name=b("h_split"), dtype=dt),
                bottom=[b("hh")], top=[b("h_rz"), b("h_n")])
        net.add(Eltwise("SUM", name=b("rz_add"), dtype=dt), bottom=[b("x_rz"), b("h_rz")],
                top=[b("rz_sum")])
        net.add(Sigmoid(name=b("rz_act"), dtype=dt), bottom=[b("rz_sum")], top=[b("rz")])
        net.add(Slice(axis=1, num_tops=2, name=b("rz_split"), dtype=dt), bottom=[b("rz")],
                top=[b("r"), b("z")])
        net.add(Eltwise("PROD", name=b("r_h"), dtype=dt), bottom=[b("r"), b("h_n")],
                top=[b("rh_n")])
        net.add(Eltwise("SUM", name=b("n_add"), dtype=dt), bottom=[b("x_n"), b("rh_n")],
                top=[b("n_sum")])
        net.add(TanH(name=b("n_act"), dtype=dt), bottom=[b("n_sum")], top=[b("n")])
        net.add(Eltwise("SUM", coeff=[1, -1], name=b("h_minus_n"), dtype=dt),
                bottom=[h_prev, b("n")], top=[b("hn_diff")])
        net.add(Eltwise("PROD", name=b("z_mix"), dtype=dt), bottom=[b("z"), b("hn_diff")],
                top=[b("z_diff")])
        net.add(Eltwise("SUM", name=b("h_new"), dtype=dt), bottom=[b("n"), b("z_diff")],
                top=[b("hidden")])
        return {b("hidden"): b("hidden")}, b("hidden")


class MultiRNNCell(Cell):
    """A stack of cells run in one step: cell k reads cell k-1's output. Only the first
    cell's input projection can be hoisted. States: every cell's, under its own name."""

    def __init__(self, cells, name="stack"):
        cells = list(cells)
        if not cells or not all(isinstance(c, Cell) for c in cells):
            raise ConfigError(f"MultiRNNCell '{name}': cells must be a non-empty list of "
                              f"cells, got {cells!r}")
        super().__init__(name, cells[0].dtype)
        for lower, upper in zip(cells, cells[1:]):
            if upper.input_size != lower.output_size:
                raise ConfigError(f"MultiRNNCell '{name}': {upper} takes input_size "
                                  f"{upper.input_size} but {lower} outputs "
                                  f"{lower.output_size}")
        names = [c.name for c in cells]
        if len(set(names)) != len(names):
            raise ConfigError(f"MultiRNNCell '{name}': cell names must differ, got {names}")
        self.cells = cells
        self.input_size = cells[0].input_size
        self.output_size = cells[-1].output_size

    @property
    def states(self):
        out = {}
        for c in self.cells:
            out.update(c.states)
        return out

    def projection(self):
        return self.cells[0].projection()

    def build(self, net, x, prev, projected=False):
        nxt = {}
        for i, c in enumerate(self.cells):
            states, x = c.build(net, x, {s: prev[s] for s in c.states},
                                projected=projected and i == 0)
            nxt.update(states)
        return nxt, x

    def recompute_names(self):
        return [n for c in self.cells for n in c.recompute_names()]


class AttentionCell(Cell):
    """Attention over an encoder's outputs on top of a decoder cell (Luong-style with input
    feeding, Caffe2's AttentionCell in spirit).

    Step: the decoder cell reads [x_t, context_prev]; its output h queries the encoder:
    ``attention="dot"`` scores <keys_s, h> with keys = the encoder outputs projected to H
    (hoisted: :meth:`encode` once per sequence); ``"additive"`` scores v . tanh(keys_s + W_q h)
    with keys projected to ``attention_dim``. weights = softmax over the encoder positions
    (padding excluded through ``mask``), context = sum_s weights * encoder outputs. The
    output is [h, context] (N, H + E); the state ``context`` feeds the next step.

    Static inputs of the step net: ``<name>/keys`` (N, S, A), ``<name>/values`` (N, S, E),
    ``<name>/mask`` (N, S).
    """

    def __init__(self, decoder, encoder_size, attention="dot", attention_dim=None,
                 name="attention", weight_filler="xavier"):
        from convnet.rnn.attention import Attention
        super().__init__(name, decoder.dtype)
        if not isinstance(decoder, Cell):
            raise ConfigError(f"AttentionCell '{name}': decoder must be a cell, got "
                              f"{type(decoder).__name__}")
        self.decoder = decoder
        self.encoder_size = _size(encoder_size, "encoder_size", self)
        if attention not in ("dot", "additive"):
            raise ConfigError(f"AttentionCell '{name}': attention must be 'dot' or "
                              f"'additive', got {attention!r}")
        self.attention = attention
        h = decoder.output_size
        self.attention_dim = h if attention == "dot" else _size(
            attention_dim or h, "attention_dim", self)
        self.input_size = decoder.input_size - self.encoder_size
        if self.input_size < 1:
            raise ConfigError(f"AttentionCell '{name}': the decoder's input_size "
                              f"({decoder.input_size}) must be the step input's size plus "
                              f"encoder_size ({self.encoder_size}) (input feeding)")
        self.output_size = h + self.encoder_size
        self.key_projection = InnerProduct(num_output=self.attention_dim, axis=2,
                                           bias_term=False, weight_filler=weight_filler,
                                           name=self.blob("keys_proj"), dtype=self.dtype)
        self.query = (InnerProduct(num_output=self.attention_dim, weight_filler=weight_filler,
                                   name=self.blob("query"), dtype=self.dtype)
                      if attention == "additive" else None)
        self.attend = Attention(mode=attention, name=self.blob("attend"), dtype=self.dtype)

    @property
    def states(self):
        out = dict(self.decoder.states)
        out[self.blob("context")] = self.encoder_size
        return out

    @property
    def static_inputs(self):
        return [self.blob("keys"), self.blob("values"), self.blob("mask")]

    def build(self, net, x, prev, projected=False):
        b, dt = self.blob, self.dtype
        net.add(Concat(axis=1, name=b("feed"), dtype=dt), bottom=[x, prev[b("context")]],
                top=[b("dec_in")])
        states, h = self.decoder.build(net, b("dec_in"),
                                       {s: prev[s] for s in self.decoder.states})
        q = h
        if self.query is not None:
            net.add(self.query, bottom=[h], top=[b("q")])
            q = b("q")
        net.add(self.attend, bottom=[q, b("keys"), b("values"), b("mask")],
                top=[b("context"), b("weights")])
        net.add(Concat(axis=1, name=b("out"), dtype=dt), bottom=[h, b("context")],
                top=[b("output")])
        states = dict(states)
        states[b("context")] = b("context")
        return states, b("output")

    def recompute_names(self):
        return self.decoder.recompute_names()
