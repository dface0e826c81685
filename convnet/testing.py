"""Finite-difference gradient checking for any layer (Caffe's GradientChecker in spirit).

>>> from convnet.layers import Convolution
>>> from convnet.testing import check_gradients
>>> conv = Convolution(num_output=3, kernel_size=3, pad=1, dtype=np.float64)
>>> check_gradients(conv, np.random.randn(2, 4, 5, 6))          # raises if a gradient is off

The objective is L = sum_i <top_i, W_i> with fixed random W_i (for a loss layer: the loss).
Its analytic gradient comes from one ``backward(W...)``; the numeric one from central
differences (L(x + eps v) - L(x - eps v)) / (2 eps). By default v runs over random directions
(cheap for any size); ``exhaustive=True`` perturbs every element. On a failure the worst
element is located by per-element differences and named in the message, with its bottom or
param and its index.
"""

import numpy as np

from convnet.errors import ConvnetError, DataError, fail


class GradientCheckError(ConvnetError, AssertionError):
    """A numeric and an analytic gradient disagree beyond the tolerance."""


class GradientReport:
    """What a check compared: per bottom / param, the largest error and where it was."""

    def __init__(self):
        self.entries = []   # (label, max_abs_error, max_allowed, location)

    def add(self, label, error, allowed, location):
        self.entries.append((label, float(error), float(allowed), location))

    @property
    def worst(self):
        return max(self.entries, key=lambda e: e[1] / max(e[2], 1e-300)) if self.entries else None

    def __repr__(self):
        rows = [f"  {lbl}: max error {err:.3g} (allowed {allowed:.3g}) at {loc}"
                for lbl, err, allowed, loc in self.entries]
        return "GradientReport(\n" + "\n".join(rows) + "\n)"


def _default_tolerances(dtype):
    if np.dtype(dtype) == np.float64:
        return 1e-5, 1e-4, 1e-6     # eps, rtol, atol
    return 1e-2, 2e-2, 2e-3


def _check_options(layer, eps, rtol, atol, exhaustive, directions, check_params, seed):
    from convnet.layers.base import Layer, check_number
    owner = "check_gradients"
    if not isinstance(layer, Layer):
        fail(owner, f"layer must be a convnet Layer, got {type(layer).__name__}")
    for name, value in (("eps", eps), ("rtol", rtol), ("atol", atol)):
        if value is not None:
            check_number(value, name, owner, minimum=0.0, strict_min=name == "eps")
    for name, value in (("exhaustive", exhaustive), ("check_params", check_params)):
        if not isinstance(value, (bool, np.bool_)):
            fail(owner, f"{name} must be True or False, got {value!r:.40}")
    check_number(directions, "directions", owner, minimum=1, integer=True)
    if seed is not None:
        check_number(seed, "seed", owner, minimum=0, integer=True)


def _host(be, x):
    """A device array copied to the host; anything else as given (checked by _numeric)."""
    return be.to_numpy(x) if hasattr(x, "__cuda_array_interface__") else x


def _numeric(x, what):
    """A private copy of ``x`` as an array of real numbers (DataError otherwise)."""
    try:
        out = np.array(x, copy=True)
    except (TypeError, ValueError) as exc:
        fail("check_gradients", f"{what} is not a rectangular array ({exc})", DataError)
    if out.dtype.kind not in "biuf":
        fail("check_gradients", f"{what} must hold real numbers, got dtype {out.dtype}",
             DataError)
    return out


def check_gradients(layer, *bottoms, top_diffs=None, eps=None, rtol=None, atol=None,
                    exhaustive=False, directions=6, check_params=True, propagate_down=None,
                    seed=0):
    """Check ``layer``'s bottom and param gradients by central finite differences.

    ``bottoms`` are the layer's inputs (labels and masks included); ``top_diffs`` default to
    fixed random arrays. Tolerance: |numeric - analytic| <= atol + rtol * max(|numeric|,
    |analytic|), with defaults by the layer's dtype (float64: eps 1e-5, rtol 1e-4, atol 1e-6).
    Returns a :class:`GradientReport`; raises :class:`GradientCheckError` naming the worst
    element and its location when a gradient is off. Param diffs are restored afterwards.
    """
    _check_options(layer, eps, rtol, atol, exhaustive, directions, check_params, seed)
    d_eps, d_rtol, d_atol = _default_tolerances(layer.dtype)
    eps = d_eps if eps is None else eps
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    rng = np.random.default_rng(seed)
    be = layer.backend
    host = [_numeric(_host(be, b), f"bottom {i}") for i, b in enumerate(bottoms)]

    def run_forward(arrays):
        out = layer.forward(*[be.asarray(a, a.dtype) if a.dtype.kind in "iub"
                              else be.asarray(a, layer.dtype) for a in arrays])
        return out

    tops = run_forward(host)
    if layer.is_loss:
        weights = None
    else:
        tops = tops if isinstance(tops, tuple) else (tops,)
        if top_diffs is None:
            weights = [rng.standard_normal(np.shape(be.to_numpy(t))) for t in tops]
        else:
            weights = [_numeric(_host(be, w), f"top diff {i}").astype(np.float64) for i, w in
                       enumerate(top_diffs if isinstance(top_diffs, (list, tuple))
                                 else [top_diffs])]

    def objective(arrays):
        out = run_forward(arrays)
        if layer.is_loss:
            return float(out)
        out = out if isinstance(out, tuple) else (out,)
        return float(sum(np.vdot(np.asarray(be.to_numpy(t), dtype=np.float64), w)
                         for t, w in zip(out, weights)))

    saved_diffs = [np.array(be.to_numpy(p.diff), copy=True) for p in layer.params]
    try:
        for p in layer.params:
            p.zero_diff()
        run_forward(host)
        if layer.is_loss:
            grads = layer.backward(propagate_down=propagate_down)
        else:
            grads = layer.backward(*[w.astype(layer.dtype) for w in weights],
                                   propagate_down=propagate_down)
        grads = grads if isinstance(grads, tuple) else (grads,)
        analytic_params = [np.array(be.to_numpy(p.diff), dtype=np.float64)
                           for p in layer.params]

        targets = []   # (label, getter of the host array to perturb, analytic gradient)
        for i, g in enumerate(grads):
            if g is None:
                continue
            targets.append((f"bottom {i}", ("bottom", i),
                            np.asarray(be.to_numpy(g), dtype=np.float64)))
        if check_params:
            for k, p in enumerate(layer.params):
                if p.lr_mult == 0:
                    continue
                targets.append((f"param {k} ({p.name})", ("param", k), analytic_params[k]))

        report = GradientReport()
        for label, (kind, idx), analytic in targets:
            _check_one(layer, host, kind, idx, analytic, objective, eps, rtol, atol,
                       exhaustive, directions, rng, report, label)
        worst = report.worst
        if worst is not None and worst[1] > worst[2]:
            label, err, allowed, loc = worst
            raise GradientCheckError(
                f"{layer.type_name} '{layer.name}': gradient of {label} is off at {loc}: "
                f"|numeric - analytic| = {err:.4g} > allowed {allowed:.4g}\n{report!r}")
        return report
    finally:
        for p, d in zip(layer.params, saved_diffs):
            p.diff = be.asarray(d, p.diff.dtype)


def _perturbable(layer, host, kind, idx):
    """Return (get, set) for the float64 view of the array being perturbed."""
    be = layer.backend
    if kind == "bottom":
        def put(value):
            host[idx] = value
        return lambda: host[idx], put
    p = layer.params[idx]

    def get():
        return np.asarray(be.to_numpy(p.data), dtype=np.float64)

    def put(value):
        p.data = be.asarray(np.asarray(value, dtype=p.data.dtype), p.data.dtype)
    return get, put


def _check_one(layer, host, kind, idx, analytic, objective, eps, rtol, atol, exhaustive,
               directions, rng, report, label):
    get, put = _perturbable(layer, host, kind, idx)
    base = np.array(get(), dtype=np.float64, copy=True)
    if base.shape != analytic.shape:
        report.add(label + " (shape)", np.inf, 0.0,
                   f"analytic shape {analytic.shape} vs {base.shape}")
        return
    dtype = get().dtype

    def along(v):
        put((base + eps * v).astype(dtype))
        plus = objective(host)
        put((base - eps * v).astype(dtype))
        minus = objective(host)
        put(base.astype(dtype))
        return (plus - minus) / (2 * eps)

    def element_errors(indices):
        worst = (0.0, 0.0, None)
        for flat in indices:
            v = np.zeros(base.size)
            v[flat] = 1.0
            num = along(v.reshape(base.shape))
            ana = analytic.reshape(-1)[flat]
            err = abs(num - ana)
            allowed = atol + rtol * max(abs(num), abs(ana))
            if worst[2] is None or err / allowed > worst[0] / max(worst[1], 1e-300):
                worst = (err, allowed, (flat, num, ana))
        return worst

    if base.size == 0:
        return
    if exhaustive:
        err, allowed, info = element_errors(range(base.size))
        flat, num, ana = info
        report.add(label, err, allowed, _loc(base.shape, flat, num, ana))
        return
    worst = (0.0, 1.0, "random directions")
    failed = False
    for d in range(directions):
        v = rng.standard_normal(base.shape)
        num = along(v)
        ana = float(np.vdot(analytic, v))
        scale = np.sqrt(base.size)
        err = abs(num - ana)
        allowed = atol * scale + rtol * max(abs(num), abs(ana))
        if err / allowed > worst[0] / worst[1]:
            worst = (err, allowed, f"random direction {d} (numeric {num:.6g}, analytic {ana:.6g})")
        failed |= err > allowed
    if failed:
        # locate the worst element to name it in the message
        indices = range(base.size) if base.size <= 4096 else rng.choice(base.size, 4096,
                                                                        replace=False)
        err, allowed, info = element_errors(indices)
        flat, num, ana = info
        if err > allowed:
            report.add(label, err, allowed, _loc(base.shape, flat, num, ana))
            return
    report.add(label, *worst)


def _loc(shape, flat, num, ana):
    index = tuple(int(i) for i in np.unravel_index(flat, shape))
    return f"index {index} (numeric {num:.6g}, analytic {ana:.6g})"
