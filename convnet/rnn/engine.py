"""RecurrentNetwork: runs a step Net over time with Caffe2's link semantics.

The step net is an ordinary :class:`convnet.Net`. Its input blobs are of three kinds:

- the *previous value of a state* (``states={"h": ("h_prev", "h")}``: step t reads state[t]
  as blob ``h_prev`` and its blob ``h`` becomes state[t + 1]); each state lives in one
  (T + 1) x N x ... buffer, state[0] being the initial value the caller gives;
- a *per-step input* (``inputs={"x_t": "x"}``: step t reads ``x[t]`` of the outside
  sequence ``x``, T x N x ...);
- anything else is a *static* outside blob (an encoder's outputs, a sequence-wide context),
  the same array at every step, whose gradient is summed over time; the step net's params
  (the weights) are shared by every step and their diffs are summed too.

Outputs: ``<s>_all`` (T x N x ..., state[1:]), ``<s>_last`` (state[T], or each sequence's own
last state when ``lengths`` are given) and ``<b>_all`` for every blob listed in
``step_outputs``. ``outputs_with_grads`` names the outputs backward takes a diff for (``_all``
at every step, ``_last`` at the last step only).

Lengths: with ``lengths`` (N,), step t leaves the states of rows with t >= lengths[n]
unchanged and writes zeros to their ``_all`` rows (as PyTorch's packed sequences), so a
padded batch gives each sequence exactly its own result and its own gradient. Caffe's
``cont`` flags are per-step inputs the cell reads itself (the LSTM layer does).

Backward runs t = T-1 ... 0 through the step net of each time step (BPTT). Memory options:

- ``recompute=[blob names]``: those step blobs (and the caches of the layers that make or
  read them) are not kept per step; one shared workspace holds them and backward re-runs
  the layers that made them before stepping back through time (Caffe2's
  ``recompute_blobs_on_backward``). Gradients are identical.
- ``forward_only=True``: one workspace for every step; nothing is kept for backward.
- ``static=True``: the step net is unrolled into one Net of T copies (params shared) and run
  with the Net's own forward and backward; results equal the dynamic engine's.

Weight gradients hoisted out of the time loop (as cuDNN and PyTorch do): a step layer with one
bottom whose param diffs are a sum over rows of (bottom row, top diff row) products offers
``accumulate_param_diffs(bottoms, top_diffs)`` and a ``param_diffs_deferred`` flag
(InnerProduct does). During the backward loop the engine sets the flag, so each step computes
the bottom diff only, and keeps the layer's top diffs of all T steps in one T x ... buffer
(its bottoms too, unless they already are one: a state's buffer rows 0 .. T-1, a sequence
input; a static bottom takes the sum of the top diffs); after the loop one call adds the
param diffs of every step (for an LSTM's recurrent weight one (T N) x 4H by (T N) x H gemm on
every thread instead of T small ones).
"""

import contextlib
import copy

import numpy as np

from convnet import backend as _backend
from convnet.errors import ConfigError, ShapeError, StateError, fail
from convnet.layers.base import Layer, shape_str


class RecurrentNetwork:
    """Run ``step_net`` over T time steps (see the module docstring for the model).

    ``RecurrentNetwork(step_net, states, inputs=None, step_outputs=(), outputs_with_grads=None,
    recompute=(), forward_only=False, static=False, no_grad=(), name=None, blas_threads=1)``

    ``no_grad`` names inputs that take no gradient (Caffe's ``cont``). ``blas_threads``
    (default 1; None leaves the setting alone) holds BLAS to that many threads inside the
    time loop: a step's gemms are small (64 x 256 by 256 x 1024 for the benchmark LSTM,
    0.4 ms on one core) and splitting them across threads was measured to cost 20-30 ms a
    gemm on this shared 2-core VM (one descheduled thread stalls the gemm) against 0.4 ms
    on one thread. Parallelism then comes from the hoisted projection, which runs outside
    the loop with every thread.

    >>> rnn = RecurrentNetwork(cell_net, states={"h": ("h_prev", "h")}, inputs={"x_t": "x"})
    >>> out = rnn.forward({"x": x}, initial={"h": h0})       # {"h_all": ..., "h_last": ...}
    >>> grads = rnn.backward({"h_all": dy})                 # {"x": dx, "h_init": dh0}
    """

    def __init__(self, step_net, states, inputs=None, step_outputs=(), outputs_with_grads=None,
                 recompute=(), forward_only=False, static=False, no_grad=(), name=None,
                 blas_threads=1):
        from convnet.net import Net
        self.name = name or "rnn"
        if not isinstance(step_net, Net):
            raise ConfigError(f"RecurrentNetwork '{self.name}': step_net must be a convnet "
                              f"Net, got {type(step_net).__name__}")
        self.step_net = step_net
        self._owner = f"RecurrentNetwork '{self.name}' (step net '{step_net.name}')"
        if not isinstance(states, dict) or not states:
            self._fail("states must be a non-empty dict {state: (prev blob, next blob)}, got "
                       f"{states!r}")
        self.states = {}
        for s, link in states.items():
            if not (isinstance(link, (tuple, list)) and len(link) == 2
                    and all(isinstance(b, str) for b in link)):
                self._fail(f"state '{s}' must link (prev blob, next blob) of the step net, got "
                           f"{link!r}")
            self.states[str(s)] = (link[0], link[1])
        self.inputs = dict(inputs or {})
        self.step_outputs = list(step_outputs)
        self.recompute = list(recompute)
        self.forward_only = bool(forward_only)
        self.static = bool(static)
        self.no_grad = set(no_grad)
        self.blas_threads = blas_threads
        if self.static and (self.recompute or self.forward_only):
            self._fail("static=True unrolls the steps into one Net; it takes neither "
                       "recompute nor forward_only")
        self.output_names = ([f"{s}_all" for s in self.states] +
                             [f"{s}_last" for s in self.states] +
                             [f"{b}_all" for b in self.step_outputs])
        if outputs_with_grads is None:
            outputs_with_grads = self.output_names
        for o in outputs_with_grads:
            if o not in self.output_names:
                self._fail(f"outputs_with_grads names '{o}', which is not an output (outputs: "
                           f"{', '.join(self.output_names)})")
        self.outputs_with_grads = list(outputs_with_grads)
        self._analyse()
        self._cache = None
        self._static_nets = {}

    # ------------------------------------------------------------------ checks
    def _fail(self, message, exc=ConfigError):
        fail(self._owner, message, exc)

    def _analyse(self):
        net = self.step_net
        if not net._nodes:
            self._fail("the step net has no layers")
        versions = net._versions
        self._node_io = [(tuple(node.bottoms), tuple(node.tops)) for node in net._nodes]
        net_inputs = {v.name: i for i, v in enumerate(versions) if v.producer is None}
        self._input_version = net_inputs
        for node in net._nodes:
            if node.layer.is_loss:
                self._fail(f"layer '{node.layer.name}' is a loss; a step net computes blobs "
                           f"(put the loss on the outputs)")
        self._state_in = {}
        self._state_out = {}
        for s, (prev, nxt) in self.states.items():
            if prev not in net_inputs:
                self._fail(f"state '{s}' reads blob '{prev}', which is not an input of the "
                           f"step net (its inputs: {', '.join(net_inputs)})")
            v = net._latest.get(nxt)
            if v is None or versions[v].producer is None:
                self._fail(f"state '{s}' takes its next value from blob '{nxt}', which no "
                           f"layer of the step net writes")
            self._state_in[s] = net_inputs[prev]
            self._state_out[s] = v
        self._seq_in = {}
        for blob, ext in self.inputs.items():
            if blob not in net_inputs:
                self._fail(f"input link '{blob}' <- '{ext}': '{blob}' is not an input of the "
                           f"step net (its inputs: {', '.join(net_inputs)})")
            if blob in (p for p, _ in self.states.values()):
                self._fail(f"blob '{blob}' is linked both as a state and as an input")
            self._seq_in[ext] = net_inputs[blob]
        linked = {p for p, _ in self.states.values()} | set(self.inputs)
        self._static_in = {n: v for n, v in net_inputs.items() if n not in linked}
        self._step_out = {}
        for b in self.step_outputs:
            v = net._latest.get(b)
            if v is None or versions[v].producer is None:
                self._fail(f"step_outputs names blob '{b}', which no layer of the step net "
                           f"writes")
            self._step_out[b] = v
        # blobs an in-place layer overwrites: step inputs must be private copies there
        copied = net._in_place_inputs()
        self._copy_inputs = {v for n, v in net_inputs.items() if n in copied}
        # recompute: the layers that make or read a recomputed blob share one workspace
        names = {versions[v].name for v in range(len(versions))}
        for b in self.recompute:
            if b not in names:
                self._fail(f"recompute names blob '{b}', which is not in the step net")
            if b in net_inputs:
                self._fail(f"recompute names '{b}', a step net input (inputs are kept)")
        rset = set(self.recompute)
        self._shared = []
        for i, node in enumerate(net._nodes):
            touches = any(versions[v].name in rset for v in node.bottoms + node.tops)
            if touches and node.layer.get_rng_state() is not None:
                self._fail(f"layer '{node.layer.name}' draws random numbers (its re-run would "
                           f"differ); it cannot make or read a recomputed blob")
            self._shared.append(touches)
        kept = set(self._state_out.values()) | set(self._step_out.values())
        for v in kept:
            if versions[v].name in rset:
                self._fail(f"recompute names '{versions[v].name}', a state or step output "
                           f"(those are kept)")
        # need-backward (Caffe's): a version needs a diff when it derives from an input that
        # takes a gradient or from a layer with learnable params
        needs = [False] * len(versions)
        for name, v in net_inputs.items():
            ext = next((e for e, vv in self._seq_in.items() if vv == v), name)
            needs[v] = ext not in self.no_grad
        self._flags = []
        for node in net._nodes:
            learnable = any(p.lr_mult != 0 for p in node.layer.params)
            self._flags.append([needs[b] and k not in node.layer.nondiff_bottoms
                                for k, b in enumerate(node.bottoms)])
            for t in node.tops:
                needs[t] = learnable or any(needs[b] for b in node.bottoms)
        # layers whose param diffs backward defers to one call after the loop (see the module
        # docstring), with where their bottom lives: ("state", s), ("seq", ext), ("static",
        # name) or ("step", None) (a blob the step makes: copied per step)
        self._defer = {}
        for i, node in enumerate(net._nodes):
            if not (hasattr(node.layer, "accumulate_param_diffs") and len(node.bottoms) == 1
                    and len(node.tops) == 1):
                continue
            v = node.bottoms[0]
            kind = (next((("state", s) for s, vin in self._state_in.items() if vin == v), None)
                    or next((("seq", e) for e, vin in self._seq_in.items() if vin == v), None)
                    or next((("static", n) for n, vin in self._static_in.items() if vin == v),
                            None)
                    or ("step", None))
            self._defer[i] = kind
        # what backward reads of a step's blobs: the inputs, the bottoms a re-run (recompute)
        # layer takes from a layer that is not re-run, and the bottoms a deferred layer takes
        # from the step. Every other blob (recomputed ones included) is let go at the end of
        # its step, so the next step reuses its memory while it is still in cache; each
        # layer keeps what its own backward needs.
        needed = set(net_inputs.values())
        for i, node in enumerate(net._nodes):
            if self._shared[i]:
                needed.update(b for b in node.bottoms if versions[b].producer is None or
                              not self._shared[versions[b].producer])
        needed.update(net._nodes[i].bottoms[0] for i, (kind, _) in self._defer.items()
                      if kind == "step")
        self._released = [v for v in range(len(versions)) if v not in needed]

    # ------------------------------------------------------------------ phase
    def train(self, mode=True):
        self.step_net.train(mode)
        self._static_nets = {}
        self._pool = []
        return self

    def eval(self):
        return self.train(False)

    @property
    def params(self):
        return self.step_net.learnable_params

    # ------------------------------------------------------------------ workspaces
    def _workspaces(self, T):
        """Layer lists for steps 1 .. T-1 (step 0 runs the step net's own layers): shallow
        copies sharing the params, each holding its own forward cache, kept between calls.
        Layers that make or read a recomputed blob are shared by every step."""
        proto = [node.layer for node in self.step_net._nodes]
        phases = tuple(layer.phase for layer in proto)
        if getattr(self, "_pool_phases", None) != phases:
            self._pool, self._pool_phases = [], phases
        while len(self._pool) < T - 1:
            self._pool.append([proto[i] if self._shared[i] else copy.copy(proto[i])
                               for i in range(len(proto))])
        return [proto] + self._pool[:T - 1]

    @staticmethod
    def _ready(layer, arrays, shapes):
        """True when ``arrays`` are what the layer's checks would pass unchanged (NumPy,
        its dtype, C-contiguous, the shapes it was set up for): the engine then calls the
        layer's compute hooks directly, skipping per-step validation that step 0 did."""
        if len(arrays) != len(shapes):
            return False
        dtype = layer.dtype
        for a, s in zip(arrays, shapes):
            if not (type(a) is np.ndarray and a.shape == s and a.dtype == dtype
                    and a.flags.c_contiguous):
                return False
        return True

    def _layer_forward(self, layer, bottoms):
        if layer.bottom_shapes is not None and self._ready(layer, bottoms, layer.bottom_shapes):
            layer._forwarded = False
            tops = layer._forward(list(bottoms))
            layer._forwarded = True
            return tops
        out = layer.forward(*bottoms)
        return list(out) if isinstance(out, tuple) else [out]

    def _layer_backward(self, layer, tops, flags):
        if layer._forwarded and self._ready(layer, tops, layer.top_shapes):
            got = layer._backward(list(tops), list(flags))
            return [d if f else None for d, f in zip(got, flags)]
        got = layer.backward(*tops, propagate_down=flags)
        return list(got) if isinstance(got, tuple) else [got]

    def _run_forward(self, layers, values, only=None):
        ready = self._ready
        for i, layer in enumerate(layers):
            if only is not None and not only[i]:
                continue
            bottoms, tops = self._node_io[i]
            arrays = [values[b] for b in bottoms]
            # _layer_forward inlined: this runs once per layer and step
            if layer.bottom_shapes is not None and ready(layer, arrays, layer.bottom_shapes):
                layer._forwarded = False
                outs = layer._forward(arrays)
                layer._forwarded = True
            else:
                outs = self._layer_forward(layer, arrays)
            for t, y in zip(tops, outs):
                values[t] = y

    def _run_backward(self, layers, diffs, deferred=None):
        """Step backward: ``diffs`` maps versions to their diff (updated in place with every
        bottom diff); the top diff of each layer listed in ``deferred`` ({node index: None})
        is put there (a layer that gets none is left None)."""
        nodes = self.step_net._nodes
        for i in range(len(nodes) - 1, -1, -1):
            node = nodes[i]
            layer = layers[i]
            if not any(t in diffs for t in node.tops):
                continue
            tops = [diffs[t] if t in diffs else np.zeros(s, layer.dtype)
                    for t, s in zip(node.tops, layer.top_shapes)]
            if deferred is not None and i in deferred:
                deferred[i] = tops[0]
            flags = self._flags[i]
            got = self._layer_backward(layer, tops, flags)
            for b, d, f in zip(node.bottoms, got, flags):
                if not f or d is None:
                    continue
                diffs[b] = d if b not in diffs else diffs[b] + d

    # ------------------------------------------------------------------ forward
    def _check_forward_args(self, inputs, initial, lengths):
        inputs = dict(inputs or {})
        initial = dict(initial or {})
        for s in self.states:
            if s not in initial:
                self._fail(f"missing the initial value of state '{s}' (initial={{'{s}': "
                           f"array}}; read by the step net as '{self.states[s][0]}')",
                           StateError)
        for s in initial:
            if s not in self.states:
                self._fail(f"initial names unknown state '{s}' (states: "
                           f"{', '.join(self.states)})")
        wanted = list(self._seq_in) + list(self._static_in)
        for k in inputs:
            if k not in wanted:
                self._fail(f"unknown input '{k}' (sequence inputs: "
                           f"{', '.join(self._seq_in) or 'none'}; static inputs: "
                           f"{', '.join(self._static_in) or 'none'})")
        for k in wanted:
            if k not in inputs:
                kind = "sequence" if k in self._seq_in else "static"
                self._fail(f"missing {kind} input '{k}'", StateError)
        dtype = self.step_net.layers[0].dtype
        seqs = {k: np.ascontiguousarray(inputs[k], dtype=_dtype_of(inputs[k], dtype))
                for k in self._seq_in}
        T = None
        for k, x in seqs.items():
            if x.ndim < 1:
                self._fail(f"sequence input '{k}' must be T x N x ..., got a 0-d array",
                           ShapeError)
            if T is None:
                T = x.shape[0]
            elif x.shape[0] != T:
                self._fail(f"sequence inputs disagree on T: '{k}' has {x.shape[0]} steps, "
                           f"expected {T}", ShapeError)
        if T is None:
            self._fail("no sequence input gives the number of steps T (inputs=... links "
                       "none)")
        if T == 0:
            self._fail("sequences have T = 0 steps", ShapeError)
        statics = {k: np.ascontiguousarray(inputs[k], dtype=_dtype_of(inputs[k], dtype))
                   for k in self._static_in}
        init = {s: np.ascontiguousarray(initial[s], dtype=dtype) for s in self.states}
        n = init[next(iter(init))].shape[0] if init[next(iter(init))].ndim else None
        active = None
        if lengths is not None:
            lengths = np.asarray(lengths)
            if lengths.ndim != 1 or lengths.dtype.kind not in "iu" or (
                    n is not None and lengths.shape[0] != n):
                self._fail(f"lengths must be a 1-d integer array of N = {n} entries, got "
                           f"{lengths.dtype.name} of shape {shape_str(lengths.shape) or '()'}",
                           ShapeError)
            if lengths.size and (lengths.min() < 0 or lengths.max() > T):
                bad = int(np.argmax((lengths < 0) | (lengths > T)))
                self._fail(f"lengths[{bad}] = {int(lengths[bad])} is outside [0, T = {T}]",
                           ShapeError)
            active = np.arange(T)[:, None] < lengths[None, :]       # (T, N)
        return seqs, statics, init, T, active

    def _threads(self):
        """BLAS held to ``blas_threads`` inside the time loop (see the class docstring)."""
        if self.blas_threads is None:
            return contextlib.nullcontext()
        return _host().blas_threads(self.blas_threads)

    def forward(self, inputs=None, initial=None, lengths=None, step_ready=None):
        """Run T steps; returns {output name: array} (see the class docstring).

        ``step_ready(t)``, when given, is called before step t reads its sequence inputs
        (before the whole run with t = T - 1 in static mode): a producer still writing them
        waits there until step t's slice is written (CellRunner's streamed projection)."""
        seqs, statics, init, T, active = self._check_forward_args(inputs, initial, lengths)
        with self._threads():
            if self.static:
                if step_ready is not None:
                    step_ready(T - 1)
                return self._static_forward(seqs, statics, init, T, active)
            return self._forward(seqs, statics, init, T, active, step_ready)

    def _forward(self, seqs, statics, init, T, active, step_ready=None):
        keep = not self.forward_only
        buffers = {}
        for s, x0 in init.items():
            buffers[s] = _host().empty((T + 1,) + x0.shape, x0.dtype)
            buffers[s][0] = x0
        outs_all = {}
        proto = [node.layer for node in self.step_net._nodes]
        workspaces = self._workspaces(T) if keep else None
        steps = []
        values_per_step = []
        # what each step reads and writes, looked up once (the loop body runs T times)
        state_in = [(v, buffers[s], v in self._copy_inputs) for s, v in self._state_in.items()]
        state_out = [(s, v, buffers[s], buffers[s].shape[1:])
                     for s, v in self._state_out.items()]
        seq_in = [(v, seqs[ext]) for ext, v in self._seq_in.items()]
        static_values = {v: statics[name] for name, v in self._static_in.items()}
        for t in range(T):
            if step_ready is not None:
                step_ready(t)
            layers = workspaces[t] if keep else proto
            values = dict(static_values)
            for v, buf, copied in state_in:
                values[v] = buf[t].copy() if copied else buf[t]
            for v, seq in seq_in:
                values[v] = seq[t]
            self._run_forward(layers, values)
            for s, v, buf, shape in state_out:
                nxt = values[v]
                if getattr(nxt, "shape", None) != shape:
                    self._check_state_shape(s, nxt, buf[t])
                if active is None:
                    buf[t + 1] = nxt
                else:
                    m = active[t].reshape((-1,) + (1,) * (nxt.ndim - 1))
                    buf[t + 1] = np.where(m, nxt, buf[t])
            for b, v in self._step_out.items():
                y = values[v]
                if b not in outs_all:
                    outs_all[b] = _host().zeros((T,) + tuple(y.shape), y.dtype)
                outs_all[b][t] = y if active is None else np.where(
                    active[t].reshape((-1,) + (1,) * (y.ndim - 1)), y, 0)
            if keep:
                steps.append(layers)
                for v in self._released:
                    values.pop(v, None)
                values_per_step.append(values)
        out = {}
        for s in self.states:
            buf = buffers[s]
            if active is None:
                out[f"{s}_all"] = buf[1:]
            else:
                m = active.reshape(active.shape + (1,) * (buf.ndim - 2))
                out[f"{s}_all"] = np.where(m, buf[1:], 0)
            out[f"{s}_last"] = buf[T]
        for b in self.step_outputs:
            out[f"{b}_all"] = outs_all[b]
        self._cache = (steps, values_per_step, buffers, active, T, seqs) if keep else None
        return out

    @property
    def last_stats(self):
        """What the last forward kept for backward: ``steps``, ``kept_bytes`` (the memory
        backward reads: the step blobs kept, the arrays the step layers cache, the state
        buffers and inputs they view; each buffer counted once), ``kept_blob_bytes`` (the
        step blobs alone) and ``recomputed_layers`` (layers re-run in backward); empty
        before a forward that keeps anything."""
        if self._cache is None:
            return {}
        steps, values_per_step, _, _, T, _ = self._cache
        caches = [list(vars(layer).values()) for layer in {id(la): la for layers in steps
                                                            for la in layers}.values()]
        return {"steps": T, "kept_bytes": _bytes(values_per_step + caches, roots=True),
                "kept_blob_bytes": _bytes(values_per_step),
                "recomputed_layers": sum(self._shared)}

    def _check_state_shape(self, s, nxt, prev):
        if tuple(nxt.shape) != tuple(prev.shape):
            prev_name, next_name = self.states[s]
            self._fail(f"state '{s}' changes shape across steps: '{prev_name}' is "
                       f"{shape_str(prev.shape)} but the step wrote '{next_name}' as "
                       f"{shape_str(nxt.shape)}", ShapeError)

    # ------------------------------------------------------------------ backward
    def _check_diffs(self, diffs, T, sizes):
        diffs = dict(diffs or {})
        for k in diffs:
            if k not in self.output_names:
                self._fail(f"backward got a diff for unknown output '{k}' (outputs: "
                           f"{', '.join(self.output_names)})")
            if k not in self.outputs_with_grads:
                self._fail(f"output '{k}' is not in outputs_with_grads "
                           f"({', '.join(self.outputs_with_grads)}); it takes no diff")
            want = sizes[k]
            if tuple(np.shape(diffs[k])) != tuple(want):
                self._fail(f"the diff of '{k}' must be {shape_str(want)}, got "
                           f"{shape_str(np.shape(diffs[k]))}", ShapeError)
        return diffs

    def backward(self, diffs=None, step_done=None):
        """Backpropagate through time from {output name: diff}; returns the diffs of the
        inputs by name (sequence inputs and static inputs) and of the initial states as
        ``<state>_init``. Param diffs accumulate in the step net's layers.

        ``step_done(t, d_seq)``, when given, is called once step t's diffs are final (t =
        T-1 ... 0; once with t = 0 in static mode), ``d_seq`` being {sequence input: its
        (T, ...) diff, or None while no step gave it one}: a consumer can start on the
        steps that are done (CellRunner streams its projection's backward this way)."""
        if self.static:
            with self._threads():
                out = self._static_backward(diffs)
            if step_done is not None:
                step_done(0, {ext: out.get(ext) for ext in self._seq_in})
            return out
        return self._backward(diffs, step_done)

    def _backward(self, diffs, step_done=None):
        if self.forward_only:
            self._fail("backward() on a forward_only network (nothing was kept)", StateError)
        if self._cache is None:
            self._fail("backward() called before forward()", StateError)
        steps, values_per_step, buffers, active, T, seqs = self._cache
        dtype = next(iter(buffers.values())).dtype
        sizes = {f"{s}_all": (T,) + buffers[s].shape[1:] for s in self.states}
        sizes.update({f"{s}_last": buffers[s].shape[1:] for s in self.states})
        for b, v in self._step_out.items():
            sizes[f"{b}_all"] = (T,) + tuple(steps[0][self._producer(v)].top_shapes[
                self._top_index(v)])
        diffs = self._check_diffs(diffs, T, sizes)
        d_state = {}
        for s in self.states:
            d = diffs.get(f"{s}_last")
            d_state[s] = (np.array(d, dtype=dtype) if d is not None
                          else np.zeros(buffers[s].shape[1:], dtype))
        deferred = self._deferred_buffers(steps, values_per_step[0], buffers, seqs, T)
        try:
            with self._threads():
                d_state, d_seq, d_static = self._backward_loop(
                    diffs, steps, values_per_step, buffers, active, T, d_state, deferred,
                    step_done)
        finally:
            for layers in steps:
                for i in deferred:
                    layers[i].param_diffs_deferred = False
        # the deferred param diffs: one call per layer for all T steps, on every thread
        for i, (xs, dys) in deferred.items():
            steps[0][i].accumulate_param_diffs(xs, dys)
        out = {}
        for ext, d in d_seq.items():
            if ext in self.no_grad:
                continue
            shape = (T,) + tuple(values_per_step[0][self._seq_in[ext]].shape)
            out[ext] = d if d is not None else np.zeros(shape, dtype)
        for name, d in d_static.items():
            if name in self.no_grad:
                continue
            out[name] = d if d is not None else np.zeros(
                values_per_step[0][self._static_in[name]].shape, dtype)
        for s in self.states:
            out[f"{s}_init"] = d_state[s]
        return out

    def _backward_loop(self, diffs, steps, values_per_step, buffers, active, T, d_state,
                       deferred, step_done=None):
        """The time loop of backward, t = T-1 ... 0: returns (d_state, d_seq, d_static) and
        fills the ``deferred`` buffers (see _deferred_buffers)."""
        dtype = next(iter(buffers.values())).dtype
        d_seq = {ext: None for ext in self._seq_in}
        d_static = {name: None for name in self._static_in}
        shared_mask = self._shared
        any_shared = any(shared_mask)
        nodes = self.step_net._nodes
        kinds = {i: self._defer[i][0] for i in deferred}
        pending = {i: None for i in deferred}
        for t in range(T - 1, -1, -1):
            layers = steps[t]
            values = values_per_step[t]
            if any_shared:
                values = dict(values)
                self._run_forward(layers, values, only=shared_mask)
            step_diffs = {}
            passthrough = {}
            for s, v in self._state_out.items():
                d = d_state[s]
                da = diffs.get(f"{s}_all")
                if active is not None:
                    # padded rows: the state passes through unchanged, their output was 0
                    m = active[t].reshape((-1,) + (1,) * (d.ndim - 1))
                    passthrough[s] = np.where(m, 0, d)
                    d = np.where(m, d if da is None else d + da[t], 0)
                elif da is not None:
                    d = d + da[t]
                step_diffs[v] = d if v not in step_diffs else step_diffs[v] + d
            for b, v in self._step_out.items():
                da = diffs.get(f"{b}_all")
                if da is None:
                    continue
                d = da[t]
                if active is not None:
                    d = np.where(active[t].reshape((-1,) + (1,) * (d.ndim - 1)), d, 0)
                step_diffs[v] = np.array(d, dtype) if v not in step_diffs else \
                    step_diffs[v] + d
            self._run_backward(layers, step_diffs, pending)
            for i, (xs, dys) in deferred.items():
                d, pending[i] = pending[i], None
                if kinds[i] == "static":
                    if d is not None:
                        dys[0] += d
                    continue
                dys[t] = 0 if d is None else d
                if kinds[i] == "step":
                    x = values.get(nodes[i].bottoms[0])
                    xs[t] = 0 if x is None else x
            for s, v in self._state_in.items():
                d = step_diffs.get(v)
                if d is None:
                    d = np.zeros(buffers[s].shape[1:], dtype)
                if s in passthrough:
                    d = d + passthrough[s]
                d_state[s] = d
            for ext, v in self._seq_in.items():
                d = step_diffs.get(v)
                if d is not None and ext not in self.no_grad:
                    if d_seq[ext] is None:
                        # uninitialised: the later steps (done, without a diff) are zeroed
                        # here, every earlier one is written as the loop reaches it
                        d_seq[ext] = _host().empty((T,) + tuple(d.shape), d.dtype)
                        d_seq[ext][t + 1:] = 0
                    d_seq[ext][t] = d
                elif d_seq[ext] is not None:
                    d_seq[ext][t] = 0
            for name, v in self._static_in.items():
                d = step_diffs.get(v)
                if d is not None and name not in self.no_grad:
                    d_static[name] = d.copy() if d_static[name] is None else d_static[name] + d
            if step_done is not None:
                step_done(t, d_seq)
        return d_state, d_seq, d_static

    def _deferred_buffers(self, steps, values0, buffers, seqs, T):
        """{node index: [bottoms (T, ...) or (1, ...), top diffs (T, ...) or (1, ...)]} for the
        layers whose param diffs backward defers (flag set on every step's copy)."""
        out = {}
        nodes = self.step_net._nodes
        for i, (kind, name) in self._defer.items():
            layer = steps[0][i]
            if not any(p.lr_mult != 0 for p in layer.params):
                continue
            dt = layer.dtype
            top = tuple(layer.top_shapes[0])
            if kind == "state":
                xs = buffers[name][:T]
            elif kind == "seq":
                xs = seqs[name]
            elif kind == "static":
                xs = values0[nodes[i].bottoms[0]][None]
            else:
                xs = _host().empty((T,) + tuple(layer.bottom_shapes[0]), dt)
            if xs.dtype != dt or not xs.flags.c_contiguous:
                xs = np.ascontiguousarray(xs, dt)
            out[i] = [xs, np.zeros((1,) + top, dt) if kind == "static" else
                      _host().empty((T,) + top, dt)]
            for layers in steps:
                layers[i].param_diffs_deferred = True
        return out

    def _producer(self, v):
        return self.step_net._versions[v].producer

    def _top_index(self, v):
        return self.step_net._nodes[self._producer(v)].tops.index(v)

    # ------------------------------------------------------------------ static unrolling
    def _unrolled(self, T):
        from convnet.layers import Concat, Reshape
        from convnet.net import Net
        if T in self._static_nets:
            return self._static_nets[T]
        step = self.step_net
        versions = step._versions
        net = Net(f"{step.name}_unrolled{T}", force_backward=True)
        dt = step.layers[0].dtype

        def blob(v, t):
            """The unrolled name of step version v at step t (inputs by kind)."""
            for s, vin in self._state_in.items():
                if v == vin:
                    return f"{s}@{t}"
            for ext, vin in self._seq_in.items():
                if v == vin:
                    return f"{ext}@{t}"
            for name, vin in self._static_in.items():
                if v == vin:
                    return name
            return f"{versions[v].name}#{v}@{t}"

        step_names = []
        for t in range(T):
            names = {}
            for node in step._nodes:
                layer = copy.copy(node.layer)
                layer.name = f"{node.layer.name}@{t}"
                bottoms = [names.get(v, blob(v, t)) for v in node.bottoms]
                tops = []
                for v in node.tops:
                    state = next((s for s, vout in self._state_out.items() if vout == v), None)
                    tops.append(f"{state}@{t + 1}raw" if state else blob(v, t))
                    names[v] = tops[-1]
                net.add(layer, bottom=bottoms, top=tops)
            step_names.append(names)
            for s, vout in self._state_out.items():
                net.add(_Carry(name=f"carry_{s}@{t}", dtype=dt),
                        bottom=[f"{s}@{t + 1}raw", f"{s}@{t}", f"active@{t}"],
                        top=[f"{s}@{t + 1}"])
        seeds = {}

        def collect(name, blobs):
            """Mask each step's blob by the lengths, stack them as ``<name>_all`` (T, N, ...)
            and put a gradient seed on it."""
            parts = []
            for t, b in enumerate(blobs):
                net.add(_Mask(name=f"mask_{name}@{t}", dtype=dt), bottom=[b, f"active@{t}"],
                        top=[f"{name}@{t}m"])
                net.add(Reshape(shape=[1], num_axes=0, name=f"expand_{name}@{t}", dtype=dt),
                        bottom=[f"{name}@{t}m"], top=[f"{name}@{t}x"])
                parts.append(f"{name}@{t}x")
            net.add(Concat(axis=0, name=f"all_{name}", dtype=dt), bottom=parts,
                    top=[f"{name}_all"])
            seeds[f"{name}_all"] = net.add(_Seed(name=f"seed_{name}_all", dtype=dt),
                                           bottom=[f"{name}_all"], top=[f"{name}_all_seed"])

        for s in self.states:
            collect(s, [f"{s}@{t}" for t in range(1, T + 1)])
            seeds[f"{s}_last"] = net.add(_Seed(name=f"seed_{s}_last", dtype=dt),
                                         bottom=[f"{s}@{T}"], top=[f"{s}_last_seed"])
        for b, v in self._step_out.items():
            collect(b, [step_names[t][v] for t in range(T)])
        self._static_nets[T] = (net, seeds)
        return net, seeds

    def _static_forward(self, seqs, statics, init, T, active):
        net, seeds = self._unrolled(T)
        feed = {}
        n = next(iter(init.values())).shape[0]
        act = np.ones((T, n), bool) if active is None else active
        for t in range(T):
            for ext, x in seqs.items():
                feed[f"{ext}@{t}"] = x[t]
            feed[f"active@{t}"] = act[t]
        for s, x0 in init.items():
            feed[f"{s}@0"] = x0
        feed.update(statics)
        feed = {k: v for k, v in feed.items() if k in net.inputs}
        net.forward(**feed)
        self._static_run = (net, seeds, T, feed)
        out = {}
        for s in self.states:
            out[f"{s}_all"] = net.blobs[f"{s}_all"]
            out[f"{s}_last"] = net.blobs[f"{s}@{T}"]
        for b in self.step_outputs:
            out[f"{b}_all"] = net.blobs[f"{b}_all"]
        return out

    def _static_backward(self, diffs):
        if getattr(self, "_static_run", None) is None:
            self._fail("backward() called before forward()", StateError)
        net, seeds, T, feed = self._static_run
        sizes = {k: tuple(net.blobs[seed_bottom].shape) for k, seed_bottom in
                 ((k, _seed_bottom(net, layer)) for k, layer in seeds.items())}
        diffs = self._check_diffs(diffs, T, sizes)
        for k, layer in seeds.items():
            layer.seed = None if k not in diffs else np.asarray(diffs[k], layer.dtype)
        net.backward()
        out = {}
        for ext in self._seq_in:
            if ext in self.no_grad:
                continue
            parts = [net.diffs.get(f"{ext}@{t}") for t in range(T)]
            shape = feed[f"{ext}@0"].shape if f"{ext}@0" in feed else None
            out[ext] = np.stack([p if p is not None else np.zeros(shape) for p in parts]) \
                if shape is not None else None
        for name in self._static_in:
            if name in self.no_grad:
                continue
            d = net.diffs.get(name)
            out[name] = d if d is not None else np.zeros(np.shape(feed[name]))
        for s in self.states:
            d = net.diffs.get(f"{s}@0")
            out[f"{s}_init"] = d if d is not None else np.zeros(np.shape(feed[f"{s}@0"]))
        return out


def _host():
    """The CPU backend, whose caching allocator holds the engine's T x ... buffers (13 MB for
    the benchmark LSTM's gate diffs: fresh pages on every call from NumPy's)."""
    return _backend.get("cpu")


def _seed_bottom(net, layer):
    node = net._by_name[layer.name]
    return net._versions[node.bottoms[0]].name


def _dtype_of(x, default):
    kind = np.asarray(x).dtype.kind if not hasattr(x, "dtype") else np.dtype(x.dtype).kind
    return None if kind in "iub" else default


def _bytes(groups, roots=False):
    """The bytes of the arrays in ``groups`` (dicts or lists, tuples and lists inside them
    searched too), each array counted once; with ``roots`` a view counts the whole array
    it views (once)."""
    seen = set()
    total = 0
    stack = [g.values() if isinstance(g, dict) else g for g in groups]
    while stack:
        for a in stack.pop():
            if isinstance(a, (tuple, list)):
                stack.append(a)
                continue
            if not isinstance(a, np.ndarray):
                continue
            while roots and isinstance(a.base, np.ndarray):
                a = a.base
            if id(a) not in seen:
                seen.add(id(a))
                total += a.nbytes
    return total


class _Carry(Layer):
    """Static mode's length mask of a state: top = where(active, next, prev)."""

    min_bottoms = 3
    max_bottoms = 3
    nondiff_bottoms = (2,)

    def _convert_bottom(self, index, x):
        return np.asarray(x, dtype=bool) if index == 2 else np.ascontiguousarray(x, self.dtype)

    def _reshape(self, shapes):
        return shapes[0]

    def _forward(self, bottoms):
        nxt, prev, active = bottoms
        self._m = active.reshape((-1,) + (1,) * (nxt.ndim - 1))
        return [np.where(self._m, nxt, prev)]

    def _backward(self, top_diffs, propagate_down):
        d = top_diffs[0]
        return [np.where(self._m, d, 0), np.where(self._m, 0, d), None]


class _Mask(Layer):
    """Static mode's step-output mask: top = where(active, x, 0)."""

    min_bottoms = 2
    max_bottoms = 2
    nondiff_bottoms = (1,)

    def _convert_bottom(self, index, x):
        return np.asarray(x, dtype=bool) if index == 1 else np.ascontiguousarray(x, self.dtype)

    def _reshape(self, shapes):
        return shapes[0]

    def _forward(self, bottoms):
        x, active = bottoms
        self._m = active.reshape((-1,) + (1,) * (x.ndim - 1))
        return [np.where(self._m, x, 0)]

    def _backward(self, top_diffs, propagate_down):
        return [np.where(self._m, top_diffs[0], 0), None]


class _Seed(Layer):
    """Static mode's gradient source: a zero 'loss' whose backward hands its bottom the
    diff the caller gave for that output (``seed``), or zeros."""

    is_loss = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed = None

    def _reshape(self, shapes):
        return ()

    def _forward(self, bottoms):
        return 0.0

    def _backward(self, top_diffs, propagate_down):
        shape = self.bottom_shapes[0]
        if self.seed is None:
            return [np.zeros(shape, self.dtype)]
        return [np.array(self.seed, dtype=self.dtype) * top_diffs[0]]
