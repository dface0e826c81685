"""Parameter fillers with Caffe's names and formulas.

A filler spec is one of:

- a number: ``constant`` with that value (``bias_filler=0.0``)
- a name: ``"constant"`` (0), ``"gaussian"`` (std 0.01), ``"uniform"`` ([0, 1)), ``"xavier"``,
  ``"msra"``, ``"bilinear"``
- a dict with ``type`` and the Caffe fields: ``dict(type="gaussian", mean=0, std=0.01)``,
  ``dict(type="uniform", min=-1, max=1)``, ``dict(type="xavier", variance_norm="AVERAGE")``,
  ``dict(type="constant", value=0.1)``
- a callable ``f(shape, rng) -> array``

Fan sizes follow Caffe: fan_in = count / shape[0], fan_out = count / shape[1].
xavier: U(-sqrt(3/n), sqrt(3/n)); msra: N(0, sqrt(2/n)); n = fan_in ("FAN_IN", default),
fan_out ("FAN_OUT") or their mean ("AVERAGE").
bilinear: FCN's upsampling kernel, 1 at the centre, falling off linearly, for every
(input, output) channel pair (combine with lr_mult=0 for fixed upsampling).
"""

import numbers

import numpy as np

from convnet.errors import ConfigError, fail

_rng = np.random.default_rng()

FILLERS = ("constant", "gaussian", "uniform", "xavier", "msra", "bilinear")


def seed(value):
    """Seed the global generator that fillers use when a layer has no ``rng`` of its own
    (``value``: a non-negative int, or None for fresh OS entropy)."""
    global _rng
    if value is not None and (isinstance(value, (bool, np.bool_))
                              or not isinstance(value, numbers.Integral) or value < 0):
        fail("convnet.seed", f"seed must be a non-negative int or None, got {value!r}",
             ConfigError)
    _rng = np.random.default_rng(None if value is None else int(value))


def global_rng():
    return _rng


def stream_state(rng=None):
    """The states of the streams a fill may draw from: the global generator's and ``rng``'s
    (a layer's own generator, or None), for :func:`set_stream_state` to put back."""
    own = None if rng is None else rng.bit_generator.state
    return (_rng, _rng.bit_generator.state, rng, own)


def set_stream_state(rng, state):
    """Put back what :func:`stream_state` returned (a refused setup or load draws nothing)."""
    generator, global_state, own_rng, own_state = state
    if generator is _rng:
        _rng.bit_generator.state = global_state
    if own_rng is not None and own_rng is rng and own_state is not None:
        rng.bit_generator.state = own_state


def _real(spec, key, default, param, owner, *, minimum=None):
    """The finite real number in ``spec[key]`` (``default`` when absent)."""
    value = spec.get(key, default)
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        fail(owner, f"{param} {key} must be a number, got {value!r:.60}", ConfigError)
    raw, value = value, float(value)
    if not np.isfinite(value):
        fail(owner, f"{param} {key} must be finite, got {raw}", ConfigError)
    if minimum is not None and value < minimum:
        fail(owner, f"{param} {key} must be >= {minimum:g}, got {raw}", ConfigError)
    return value


def normalize(spec, param, owner=None):
    """Check a filler spec at construction time; return it as a dict (or a callable)."""
    if callable(spec):
        return spec
    if isinstance(spec, numbers.Real) and not isinstance(spec, (bool, np.bool_)):
        return {"type": "constant", "value": _real({"value": spec}, "value", 0.0, param, owner)}
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        fail(owner, f"{param} must be a number, one of {', '.join(FILLERS)}, a dict with a "
                    f"'type', or a callable; got {spec!r:.80}", ConfigError)
    kind = spec["type"].lower()
    if kind not in FILLERS:
        fail(owner, f"{param} type must be one of {', '.join(FILLERS)}, got {spec['type']!r:.40}")
    allowed = {"type", "value", "mean", "std", "min", "max", "variance_norm"}
    unknown = set(spec) - allowed
    if unknown:
        fail(owner, f"{param} has unknown fields {sorted(map(str, unknown))}")
    out = dict(spec, type=kind)
    # every numeric field a finite number, whichever type reads it (a NaN constant fills NaN)
    defaults = {"value": 0.0, "mean": 0.0, "std": 0.01, "min": 0.0, "max": 1.0}
    for key, default in defaults.items():
        if key in spec:
            out[key] = _real(spec, key, default, param, owner,
                             minimum=0.0 if key == "std" else None)
    if kind == "uniform" and out.get("min", 0.0) > out.get("max", 1.0):
        fail(owner, f"{param} min ({spec.get('min', 0.0)}) must be <= max "
                    f"({spec.get('max', 1.0)})")
    norm = out.get("variance_norm", "FAN_IN")
    if not isinstance(norm, str) or norm.upper() not in ("FAN_IN", "FAN_OUT", "AVERAGE"):
        fail(owner, f"{param} variance_norm must be FAN_IN, FAN_OUT or AVERAGE, got "
                    f"{norm!r:.40}")
    out["variance_norm"] = norm.upper()
    return out


def _fan(shape, norm):
    count = int(np.prod(shape)) if len(shape) else 1
    fan_in = count // shape[0] if len(shape) > 0 and shape[0] else count
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    if norm == "FAN_OUT":
        return fan_out
    if norm == "AVERAGE":
        return (fan_in + fan_out) / 2.0
    return fan_in


def bilinear_kernel(kh, kw):
    """FCN/Caffe bilinear upsampling weights of shape (kh, kw): per axis of size k,
    w(x) = 1 - |x / f - c| with f = ceil(k / 2) (the stride it upsamples by) and the centre
    c = (k - 1) / (2 f), so every kernel is symmetric (Caffe's formula since its PR #5713;
    the older (2f - 1 - f % 2) / (2f) was off by half a pixel for k = 2, 3 mod 4)."""
    def axis(k):
        f = int(np.ceil(k / 2.0))
        c = (k - 1) / (2.0 * f)
        x = np.arange(k, dtype=np.float64)
        return 1.0 - np.abs(x / f - c)
    return np.outer(axis(kh), axis(kw))


def fill(spec, shape, dtype, rng=None, param="filler", owner=None):
    """A new array of ``shape`` and ``dtype`` filled as ``spec`` says."""
    from convnet.shapes import MAX_ELEMENTS, MAX_EXTENT
    spec = normalize(spec, param, owner)
    rng = _rng if rng is None else rng
    shape = tuple(int(d) for d in shape)
    count = 1
    for d in shape:
        count *= d
    if any(d > MAX_EXTENT for d in shape) or count > MAX_ELEMENTS:
        from convnet.errors import ShapeError
        fail(owner, f"{param}: the param would be {'x'.join(map(str, shape))} ({count:.3g} "
                    f"elements): more than 2**40 elements (or an axis past 2**31 - 1) cannot "
                    f"be allocated", ShapeError)
    if callable(spec):
        try:
            data = np.asarray(spec(shape, rng), dtype=dtype)
        except (TypeError, ValueError, OverflowError) as exc:
            fail(owner, f"{param} callable did not return an array of numbers "
                        f"({type(exc).__name__}: {exc})", ConfigError)
        if data.shape != shape:
            fail(owner, f"{param} callable returned shape {data.shape}, expected {shape}")
        return np.ascontiguousarray(data)
    kind = spec["type"]
    if kind == "constant":
        data = np.full(shape, float(spec.get("value", 0.0)))
    elif kind == "gaussian":
        data = rng.normal(float(spec.get("mean", 0.0)), float(spec.get("std", 0.01)), shape)
    elif kind == "uniform":
        data = rng.uniform(float(spec.get("min", 0.0)), float(spec.get("max", 1.0)), shape)
    elif kind == "xavier":
        scale = np.sqrt(3.0 / max(_fan(shape, spec["variance_norm"]), 1))
        data = rng.uniform(-scale, scale, shape)
    elif kind == "msra":
        std = np.sqrt(2.0 / max(_fan(shape, spec["variance_norm"]), 1))
        data = rng.normal(0.0, std, shape)
    else:  # bilinear
        if len(shape) != 4:
            fail(owner, f"{param} 'bilinear' needs a 4-d weight, got shape {shape}")
        data = np.broadcast_to(bilinear_kernel(shape[2], shape[3]), shape)
    with np.errstate(over="ignore"):
        data = np.ascontiguousarray(data, dtype=dtype)
    if kind in ("constant", "gaussian", "uniform") and not np.all(np.isfinite(data)):
        fail(owner, f"{param} {kind} values overflow {np.dtype(dtype).name} (got non-finite "
                    f"values); use smaller numbers", ConfigError)
    return data
