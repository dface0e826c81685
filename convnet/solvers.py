"""SGD and Adam solvers with Caffe's update rules, learning-rate policies and iter_size.

One iteration (``solver.step(**inputs)``, or ``solver.step()`` drawing batches from ``data``):

1. zero the param diffs;
2. ``iter_size`` times: forward (a non-finite loss stops here), backward: diffs accumulate;
3. for each param with lr_mult > 0 (Caffe's ApplyUpdate):
   diff /= iter_size;  g = diff + weight_decay * decay_mult * w  (L2);
   SGD:  v = momentum * v + lr * lr_mult * g;  w -= v
   Adam: m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
         w -= lr * lr_mult * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + delta),  t = iter + 1

Learning-rate policies (Caffe's names and formulas, ``it`` = ``solver.iter``):

=========  ===============================================  =========================
fixed      base_lr
step       base_lr * gamma ^ floor(it / stepsize)           stepsize
multistep  base_lr * gamma ^ (number of stepvalues <= it)   stepvalues (increasing)
exp        base_lr * gamma ^ it                             gamma
inv        base_lr * (1 + gamma * it) ^ (-power)            gamma, power
poly       base_lr * (1 - it / max_iter) ^ power            max_iter, power (0 past max_iter)
sigmoid    base_lr / (1 + exp(-gamma * (it - stepsize)))    gamma, stepsize
=========  ===============================================  =========================

>>> solver = SGDSolver(net, base_lr=0.01, momentum=0.9, weight_decay=5e-4,
...                    lr_policy="step", gamma=0.1, stepsize=1000, data=loader)
>>> loss = solver.step()
>>> solver.snapshot("snap.npz")       # weights, history, iteration, data order, dropout state
"""

import math
import numbers
import warnings
from collections.abc import Mapping

import numpy as np

from convnet import backend as _backend
from convnet.errors import ConfigError, DataError, ShapeError, StateError, fail
from convnet.layers.base import check_number, shape_str

LR_POLICIES = ("fixed", "step", "multistep", "exp", "inv", "poly", "sigmoid")


class ZeroWeightWarning(UserWarning):
    """A learnable weight is all zeros at the first step: gradients through it vanish."""


class Solver:
    """Base of SGDSolver and AdamSolver: lr policy, iteration, checks, snapshots."""

    #: history arrays per param (momentum for SGD; m and v for Adam)
    history_slots = 1

    def __init__(self, net, *, base_lr, weight_decay, lr_policy, gamma, stepsize, stepvalues,
                 power, max_iter, iter_size, data):
        from convnet.net import Net
        if not isinstance(net, Net):
            fail(self, f"the first argument must be a convnet.Net, got {type(net).__name__}")
        self.net = net
        self.base_lr = check_number(base_lr, "base_lr", self, minimum=0.0)
        self.weight_decay = check_number(weight_decay, "weight_decay", self, minimum=0.0)
        self.lr_policy = self._check_policy(lr_policy)
        self.gamma = check_number(gamma, "gamma", self)
        self.power = check_number(power, "power", self)
        self.stepsize = None if stepsize is None else check_number(
            stepsize, "stepsize", self, minimum=1, integer=True)
        self.max_iter = None if max_iter is None else check_number(
            max_iter, "max_iter", self, minimum=1, integer=True)
        self.stepvalues = self._check_stepvalues(stepvalues)
        self.iter_size = check_number(iter_size, "iter_size", self, minimum=1, integer=True)
        if data is not None and not callable(getattr(data, "next_batch", None)):
            fail(self, f"data must have a next_batch() method returning a dict of arrays, got "
                       f"{type(data).__name__}")
        self.data = data
        self._check_policy_params()
        self.iter = 0
        self.loss = None
        self._history = None
        self._first_step_done = False

    # ------------------------------------------------------------------ validation
    def _check_policy(self, policy):
        if not isinstance(policy, str) or policy.lower() not in LR_POLICIES:
            fail(self, f"lr_policy must be one of {', '.join(LR_POLICIES)}, got {policy!r}")
        return policy.lower()

    def _check_stepvalues(self, values):
        if values is None:
            return None
        if isinstance(values, numbers.Integral):
            values = [values]
        if not isinstance(values, (list, tuple)) or not all(
                isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
            fail(self, f"stepvalues must be a list of ints, got {values!r}")
        values = [int(v) for v in values]
        if any(b <= a for a, b in zip(values, values[1:])) or any(v < 0 for v in values):
            fail(self, f"stepvalues must be non-negative and strictly increasing, got {values}")
        return values

    def _check_policy_params(self):
        policy = self.lr_policy
        if policy in ("step", "sigmoid") and self.stepsize is None:
            fail(self, f"lr_policy '{policy}' needs stepsize (an int >= 1)")
        if policy == "multistep" and not self.stepvalues:
            fail(self, "lr_policy 'multistep' needs stepvalues (a non-empty increasing list)")
        if policy == "poly" and self.max_iter is None:
            fail(self, "lr_policy 'poly' needs max_iter (an int >= 1)")
        if policy == "exp" and not self.gamma > 0:
            fail(self, f"lr_policy 'exp' needs gamma > 0, got {self.gamma}")
        if policy == "inv" and self.gamma < 0:
            fail(self, f"lr_policy 'inv' needs gamma >= 0, got {self.gamma}")

    # ------------------------------------------------------------------ learning rate
    def lr_at(self, it):
        """The learning rate of iteration ``it`` under this solver's policy: a finite float
        (ConfigError naming the policy and iteration when it overflows or is not finite)."""
        try:
            rate = self._policy_rate(it)
        except (OverflowError, ZeroDivisionError, ValueError) as exc:
            fail(self, f"lr_policy '{self.lr_policy}' has no finite learning rate at iteration "
                       f"{it} ({exc}); check gamma ({self.gamma}), power ({self.power}) and "
                       f"stepsize ({self.stepsize})")
        if isinstance(rate, complex) or not math.isfinite(rate):
            fail(self, f"lr_policy '{self.lr_policy}' gives the learning rate {rate} at "
                       f"iteration {it}, not a finite number; check gamma ({self.gamma}) and "
                       f"power ({self.power})")
        return float(rate)

    def _policy_rate(self, it):
        base, gamma, policy = self.base_lr, self.gamma, self.lr_policy
        if policy == "fixed":
            return base
        if policy == "step":
            return base * gamma ** (it // self.stepsize)
        if policy == "multistep":
            return base * gamma ** sum(1 for v in self.stepvalues if it >= v)
        if policy == "exp":
            return base * gamma ** it
        if policy == "inv":
            return base * (1.0 + gamma * it) ** (-self.power)
        if policy == "poly":
            if it >= self.max_iter:
                return 0.0
            return base * (1.0 - it / self.max_iter) ** self.power
        # sigmoid, in the form whose exp cannot overflow: base / (1 + e^z) = base e^-z / (1 +
        # e^-z); a warm-up far from its centre is 0 (or base), not an OverflowError
        z = -gamma * (it - self.stepsize)
        if z > 0:
            e = math.exp(-z)
            return base * e / (1.0 + e)
        return base / (1.0 + math.exp(z))

    @property
    def lr(self):
        """The learning rate of the current iteration (the next step's)."""
        return self.lr_at(self.iter)

    # ------------------------------------------------------------------ one iteration
    def step(self, **inputs):
        """Run one iteration (see the module docstring) and return the loss averaged over
        ``iter_size`` forwards. Inputs are given by name, or drawn from ``data`` when none
        are given. A non-finite loss or gradient raises DataError before any weight changes,
        and a refused step leaves BatchNorm's moving averages as they were.
        """
        if inputs and self.iter_size > 1:
            fail(self, f"iter_size={self.iter_size} accumulates {self.iter_size} batches per "
                       f"step: give the solver a data object (next_batch()) instead of inputs")
        if not inputs and self.data is None:
            fail(self, "step() needs the net's inputs by name, or a solver built with data=",
                 StateError)
        net = self.net
        # the step's learning rate and the history's fit, checked before anything changes
        rate = self.lr
        if self._history is not None and len(self._history) != len(net.learnable_params):
            fail(self, f"the net has {len(net.learnable_params)} params but the solver history "
                       f"has {len(self._history)}; build a new solver after changing the net",
                 StateError)
        net.zero_diffs()
        # forwards update BatchNorm's moving averages: a refused step must not keep them
        saved = [(layer, {k: v.copy() for k, v in layer.buffers.items()})
                 for layer in net.layers if layer.buffers]
        try:
            total = self._forward_backward(inputs)
            self._check_finite_diffs()
        except BaseException:
            for layer, buffers in saved:
                layer.buffers.update(buffers)
            raise
        params = net.learnable_params
        if not self._first_step_done:
            self._warn_zero_weights()
            self._first_step_done = True
        if self._history is None:
            self._history = [[_backend.get(p.device).zeros(p.shape, p.dtype)
                              for _ in range(self.history_slots)] for p in params]
        for p, hist in zip(params, self._history):
            if p.lr_mult == 0:
                continue
            be = _backend.get(p.device)
            if hist and _backend.device_of(hist[0]) != p.device:
                # the net moved (net.to): its history follows it
                hist[:] = [be.asarray(_backend.get(_backend.device_of(h)).to_numpy(h))
                           for h in hist]
            if self.iter_size > 1:
                be.solver_scale(p.diff, 1.0 / self.iter_size)
            self._update(be, p, hist, rate * p.lr_mult, self.weight_decay * p.decay_mult)
        self.iter += 1
        self.loss = total / self.iter_size
        return self.loss

    def _forward_backward(self, inputs):
        """``iter_size`` forwards and backwards (diffs accumulate); the summed loss."""
        net = self.net
        total = 0.0
        for _ in range(self.iter_size):
            batch = inputs if inputs else self.data.next_batch()
            if not isinstance(batch, Mapping) or not all(isinstance(k, str) for k in batch):
                got = (type(batch).__name__ if not isinstance(batch, Mapping)
                       else f"a dict with keys {list(batch)!r:.80}")
                fail(self, f"data.next_batch() must return a dict of arrays by input name "
                           f"(e.g. {{'data': x, 'label': y}}), got {got}")
            net.forward(**batch)
            loss = net.loss
            if not math.isfinite(loss):
                where = ""
                if net.debug and net.first_nonfinite:
                    where = f"; the first non-finite output came from {net.first_nonfinite}"
                elif not net.debug:
                    where = "; Net(debug=True) names the first layer whose output goes non-finite"
                fail(self, f"loss is {loss} at iteration {self.iter} (no update applied, the "
                           f"weights are unchanged){where}", DataError)
            net.backward()
            total += loss
        return total

    def _update(self, be, param, history, local_rate, local_decay):
        raise NotImplementedError

    def _warn_zero_weights(self):
        from convnet.net import _param_keys
        for layer in self.net.layers:
            for name, p in _param_keys(layer):
                if len(p.shape) < 2 or p.lr_mult <= 0 or p.data.size == 0 or np.any(
                        _backend.get(p.device).to_numpy(p.data)):
                    continue
                key = f"{layer.name}/{name}"
                warnings.warn(
                    f"{type(self).__name__}: learnable weight '{key}' ({layer.type_name}, "
                    f"{shape_str(p.shape)}) is all zeros at the first step; gradients "
                    f"through it vanish (weights not loaded under a renamed layer? a zero "
                    f"filler?)", ZeroWeightWarning, stacklevel=3)

    def _check_finite_diffs(self):
        by_device = {}
        for _, p in self.net.named_params():
            if p.lr_mult != 0:
                by_device.setdefault(p.device, []).append(p.diff)
        # one check per device (on a GPU: reduced there, one flag read back), then the
        # slow search for the culprit's name only when something is not finite
        if all(_backend.get(d).all_finite(diffs) for d, diffs in by_device.items()):
            return
        for key, p in self.net.named_params():
            if p.lr_mult != 0 and not np.all(np.isfinite(
                    _backend.get(p.device).to_numpy(p.diff))):
                fail(self, f"the gradient of '{key}' is not finite at iteration {self.iter} "
                           f"(no update applied, the weights are unchanged)", DataError)

    # ------------------------------------------------------------------ state
    def hyper_params(self):
        """The constructor's settings (without net and data), JSON-serialisable."""
        return {"base_lr": self.base_lr, "weight_decay": self.weight_decay,
                "lr_policy": self.lr_policy, "gamma": self.gamma, "stepsize": self.stepsize,
                "stepvalues": self.stepvalues, "power": self.power, "max_iter": self.max_iter,
                "iter_size": self.iter_size}

    @property
    def history_started(self):
        return self._history is not None

    def history_arrays(self):
        """Per param (net.learnable_params order), its history arrays as host NumPy arrays."""
        if self._history is None:
            return []
        return [[np.asarray(_backend.get(_backend.device_of(h)).to_numpy(h)) for h in slots]
                for slots in self._history]

    def set_history(self, history):
        """Replace the history (None: start from zeros at the next step); arrays are copied
        to each param's device and dtype."""
        if history is None:
            self._history = None
            return
        params = self.net.learnable_params
        if len(history) != len(params):
            fail(self, f"history for {len(history)} params, the net has {len(params)}",
                 ConfigError)
        out = []
        for i, (p, slots) in enumerate(zip(params, history)):
            be = _backend.get(p.device)
            arrays = []
            if len(slots) != self.history_slots:
                fail(self, f"history for param {i} has {len(slots)} slot(s), a "
                           f"{type(self).__name__} keeps {self.history_slots}")
            for h in slots:
                if np.shape(h) != p.shape or np.asarray(h).dtype.kind != "f":
                    fail(self, f"history for param {i} must be a float array of shape "
                               f"{shape_str(p.shape)}, got {np.asarray(h).dtype} "
                               f"{shape_str(np.shape(h))}", ShapeError)
                h = np.ascontiguousarray(h, dtype=p.dtype)
                arrays.append(h.copy() if p.device == "cpu" else be.from_numpy(h))
            out.append(arrays)
        self._history = out

    def snapshot(self, path):
        """Write weights, solver state, data order and random state to ``path`` atomically
        (see :mod:`convnet.snapshot`)."""
        from convnet.snapshot import save_snapshot
        save_snapshot(self, path)

    def restore(self, path):
        """Restore what :meth:`snapshot` wrote; the next step continues the original run
        exactly. Returns self."""
        from convnet.snapshot import load_snapshot
        load_snapshot(self, path)
        return self


class SGDSolver(Solver):
    """Stochastic gradient descent with momentum, Caffe's SGDSolver.

    v = momentum * v + lr * lr_mult * (diff / iter_size + weight_decay * decay_mult * w);
    w -= v. With a constant lr this equals PyTorch's SGD(momentum, weight_decay) (whose
    buffer is v / lr).

    Parameters (Caffe solver.prototxt names): ``base_lr`` (0.01), ``momentum`` (0.9),
    ``weight_decay`` (0.0005), ``lr_policy`` ("fixed"; see the module docstring) with
    ``gamma`` (0.1), ``stepsize``, ``stepvalues``, ``power`` (1.0), ``max_iter``;
    ``iter_size`` (1: batches accumulated per step); ``data`` (an object with
    ``next_batch() -> dict`` and optional ``get_state()``/``set_state()``).

    >>> solver = SGDSolver(net, base_lr=0.01, momentum=0.9, weight_decay=5e-4)
    >>> loss = solver.step(data=x, label=y)
    """

    history_slots = 1

    def __init__(self, net, base_lr=0.01, momentum=0.9, weight_decay=0.0005,
                 lr_policy="fixed", gamma=0.1, stepsize=None, stepvalues=None, power=1.0,
                 max_iter=None, iter_size=1, data=None):
        self.momentum = check_number(momentum, "momentum", self, minimum=0.0)
        super().__init__(net, base_lr=base_lr, weight_decay=weight_decay, lr_policy=lr_policy,
                         gamma=gamma, stepsize=stepsize, stepvalues=stepvalues, power=power,
                         max_iter=max_iter, iter_size=iter_size, data=data)

    def hyper_params(self):
        return dict(super().hyper_params(), momentum=self.momentum)

    def _update(self, be, param, history, local_rate, local_decay):
        be.sgd_update(param.data, param.diff, history[0], local_rate, self.momentum,
                      local_decay)


class AdamSolver(Solver):
    """Adam (Kingma & Ba), Caffe's AdamSolver.

    g = diff / iter_size + weight_decay * decay_mult * w;  m = b1 m + (1 - b1) g;
    v = b2 v + (1 - b2) g^2;  w -= lr * lr_mult * sqrt(1 - b2^t) / (1 - b1^t) * m /
    (sqrt(v) + delta), with t = iter + 1 (delta outside the bias correction, as Caffe;
    PyTorch's Adam puts eps after it).

    Parameters (Caffe names): ``base_lr`` (0.001), ``momentum`` (b1, 0.9), ``momentum2``
    (b2, 0.999), ``delta`` (1e-8), ``weight_decay`` (0.0), and the lr policy, ``iter_size``
    and ``data`` arguments of :class:`SGDSolver`.

    >>> solver = AdamSolver(net, base_lr=1e-3)
    """

    history_slots = 2

    def __init__(self, net, base_lr=0.001, momentum=0.9, momentum2=0.999, delta=1e-8,
                 weight_decay=0.0, lr_policy="fixed", gamma=0.1, stepsize=None,
                 stepvalues=None, power=1.0, max_iter=None, iter_size=1, data=None):
        self.momentum = check_number(momentum, "momentum", self, minimum=0.0)
        self.momentum2 = check_number(momentum2, "momentum2", self, minimum=0.0)
        if not self.momentum < 1.0:
            fail(self, f"momentum (beta1) must be in [0, 1), got {self.momentum}")
        if not self.momentum2 < 1.0:
            fail(self, f"momentum2 (beta2) must be in [0, 1), got {self.momentum2}")
        self.delta = check_number(delta, "delta", self, minimum=0.0, strict_min=True)
        super().__init__(net, base_lr=base_lr, weight_decay=weight_decay, lr_policy=lr_policy,
                         gamma=gamma, stepsize=stepsize, stepvalues=stepvalues, power=power,
                         max_iter=max_iter, iter_size=iter_size, data=data)

    def hyper_params(self):
        return dict(super().hyper_params(), momentum=self.momentum, momentum2=self.momentum2,
                    delta=self.delta)

    def _update(self, be, param, history, local_rate, local_decay):
        be.adam_update(param.data, param.diff, history[0], history[1], local_rate,
                       self.momentum, self.momentum2, self.delta, self.iter + 1, local_decay)
