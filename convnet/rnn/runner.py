"""Run a cell over a sequence (Caffe2's ``apply_over_sequence``): hoisted input projection,
step net, RecurrentNetwork, encoder statics for attention, and layer-by-layer stacks."""

import queue
import threading

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
        stream = None
        if self.proj is None:
            seq = x
        elif _streams(self.proj, x):
            stream = _StreamedProjection(self.proj, x)
            seq = stream.top
        else:
            seq = self.proj.forward(x)
        init = {s: np.zeros((n, size), cell.dtype) for s, size in cell.states.items()}
        for s, v in (initial or {}).items():
            if s not in init:
                fail(self._owner, f"initial names unknown state '{s}' (states: "
                                f"{', '.join(init)})")
            init[s] = np.ascontiguousarray(v, dtype=cell.dtype)
        inputs = {"x": seq}
        if stream is None:
            if self._attention:
                inputs.update(self._encoder_statics(encoder, encoder_lengths, n))
            out = self.rnn.forward(inputs, initial=init, lengths=lengths)
        else:
            with stream:
                if self._attention:
                    inputs.update(self._encoder_statics(encoder, encoder_lengths, n))
                out = self.rnn.forward(inputs, initial=init, lengths=lengths,
                                       step_ready=stream.wait)
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
        if self.proj is not None and self.proj.device == "cpu":
            stream = _StreamedProjectionBackward(self.proj, *self.proj.top_shapes[0][:2])
            with stream:
                g = self.rnn.backward(diffs, step_done=stream.step_done)
                dx = stream.finish(g["x"])
        else:
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


def _streams(layer, x):
    """True when the hoisted projection of x (T, N, I) is computed step block by step block
    (_StreamedProjection): a CPU layer and more than one step."""
    return layer.device == "cpu" and x.ndim == 3 and x.shape[0] > 1 and x.shape[1] > 0


#: the rows from which a block of the streamed projection is one efficient gemm
_BLOCK_ROWS = 512


def _step_blocks(T, N):
    """The step blocks of a streamed projection: 1, 2, 4, ... steps up to _BLOCK_ROWS rows
    (step 0 waits for the first block only). They depend on T and N alone, so the result
    is the same at any thread count."""
    cap = max(1, -(-_BLOCK_ROWS // max(N, 1)))
    blocks, t, size = [], 0, 1
    while t < T:
        blocks.append((t, min(T, t + size)))
        t += size
        size = min(2 * size, cap)
    return blocks


class _BlockWorker:
    """Row blocks run in the order given, on one worker thread when there are two or more
    threads (beside the caller's time loop), else at once on the caller's thread: the same
    blocks in the same order either way, so the sums do not depend on the thread count.
    ``with`` holds BLAS to one thread (the loop's gemms and the worker's run on one core
    each) and joins the worker; the first error a block raises is raised on the caller's
    thread (:meth:`check`) and the blocks after it are skipped."""

    def __init__(self):
        from convnet.backend import cpu
        self._cpu = cpu
        self._queue = None
        self._thread = None
        self._threads = None
        self.error = None

    def __enter__(self):
        self._threads = self._cpu.blas_threads(1)
        self._threads.__enter__()
        if self._cpu.get_num_threads() >= 2:
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._work, name="convnet-projection",
                                            daemon=True)
            self._thread.start()
        return self

    def _run(self, rows, lo, hi, done):
        if self.error is None:
            try:
                rows(lo, hi)
            except BaseException as exc:        # re-raised on the caller's thread
                self.error = exc
        if done is not None:
            done.set()

    def _work(self):
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._run(*job)

    def submit(self, rows, lo, hi, done=None):
        """Run rows(lo, hi) after the blocks submitted before; set the Event ``done`` then
        (also when it failed or was skipped)."""
        if self._queue is not None:
            self._queue.put((rows, lo, hi, done))
        else:
            self._run(rows, lo, hi, done)
            self.check()

    def check(self):
        if self.error is not None:
            raise self.error

    def join(self):
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def __exit__(self, *exc):
        try:
            self.join()
        finally:
            self._threads.__exit__(None, None, None)
        return False


class _StreamedProjection:
    """The hoisted input projection x W^T + b of all T steps, computed in step blocks
    (_step_blocks) by a _BlockWorker while the time loop runs (the time loop's small gemms
    hold one core; the projection's gemms then run on the other instead of before the loop).
    The engine calls :meth:`wait` before each step; ``with`` runs the worker.

    Measured (scripts/bench_rnn.py, T=50, N=64, 256 -> 256, 2 threads): the projection, 13
    ms of a 57 ms forward when it ran before the loop, leaves only its first block (one
    step, 0.3 ms) ahead of the loop."""

    def __init__(self, layer, x):
        T, N = x.shape[0], x.shape[1]
        self.top, self._rows = layer.forward_streamed(x)
        self._blocks = _step_blocks(T, N)
        self._n = N
        self._done = [threading.Event() for _ in self._blocks]
        self._block_of = np.repeat(np.arange(len(self._blocks)),
                                   [b - a for a, b in self._blocks]).tolist()
        self._worker = _BlockWorker()

    def __enter__(self):
        self._worker.__enter__()
        try:
            for (t0, t1), done in zip(self._blocks, self._done):
                self._worker.submit(self._rows, t0 * self._n, t1 * self._n, done)
        except BaseException:
            self._worker.__exit__(None, None, None)
            raise
        return self

    def wait(self, t):
        """Return once steps 0 .. t are written (raise what a block raised)."""
        self._done[self._block_of[min(t, len(self._block_of) - 1)]].wait()
        self._worker.check()

    def __exit__(self, *exc):
        self._worker.__exit__(*exc)
        if exc[0] is None:
            self._worker.check()
        return False


class _StreamedProjectionBackward:
    """The backward of the hoisted projection (its input's diff and its param diffs) in
    the forward's step blocks, last block first, each given to a _BlockWorker as soon as
    the time loop of backward has finished its steps. ``with`` runs the worker;
    :meth:`finish` returns the input's diff."""

    def __init__(self, layer, T, N):
        self._layer = layer
        self._blocks = list(reversed(_step_blocks(T, N)))
        self._n = N
        self._next = 0
        self._rows = None
        self._bottom_diff = None
        self._worker = _BlockWorker()

    def __enter__(self):
        self._worker.__enter__()
        return self

    def _start(self, top_diff):
        self._bottom_diff, self._rows = self._layer.backward_streamed(top_diff)

    def _submit(self, until):
        """Start every block whose first step is >= until (those steps are done)."""
        while self._next < len(self._blocks) and self._blocks[self._next][0] >= until:
            t0, t1 = self._blocks[self._next]
            self._next += 1
            self._worker.submit(self._rows, t0 * self._n, t1 * self._n)

    def step_done(self, t, d_seq):
        d = d_seq.get("x")
        if d is None:
            return                  # no diff reached the input yet: blocks wait for one
        if self._rows is None:
            self._start(d)
        self._submit(t)

    def finish(self, top_diff):
        if self._rows is None:
            self._start(top_diff)
        self._submit(0)
        self._worker.join()
        self._worker.check()
        return self._bottom_diff

    def __exit__(self, *exc):
        self._worker.__exit__(*exc)
        return False


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
