"""Fuzz the compiled kernels through the public layer API (run by tests/test_fuzz_kernels.py
in a subprocess, so that a memory fault shows up as a signal instead of killing pytest).

    python tests/fuzz_worker.py SEED COUNT     random cases
    python tests/fuzz_worker.py huge           outputs too large for any memory

Each case builds one layer from random parameters (mostly valid, sometimes zero, negative,
huge, the wrong type or the wrong length) and runs forward and backward on random bottoms
(random ranks, sizes, dtypes and layouts; NaN and Inf values; bad labels and masks). A case
may fail only with a convnet error (ConvnetError); anything else is recorded. The case about
to run is written to stderr first, so a crash names its input. The last stdout line is a
JSON summary: {"cases", "ok", "rejected", "defects": [...], "kinds": {...}}.
"""

import json
import resource
import sys
import traceback

import numpy as np

from convnet.errors import ConvnetError
from convnet.layers import (BatchNorm, Concat, Convolution, Crop, Deconvolution, Dropout,
                            Eltwise, EuclideanLoss, Interp, Pooling, ReLU, SoftmaxWithLoss,
                            Unpooling)

HUGE = (2 ** 31, 2 ** 40, 2 ** 62)


class Gen:
    """Random parameters: mostly small valid values, sometimes bad ones."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def chance(self, p):
        return self.rng.random() < p

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def int_(self, lo, hi, bad=0.08, huge=True):
        """An int in [lo, hi], or (with probability ``bad``) a bad value; ``huge=False``
        leaves out the huge ones (see huge_outputs for those)."""
        if self.chance(bad):
            return self.pick([0, -1, -7, self.pick(HUGE) if huge else -2 ** 40, 2.5, "3", None,
                              True, (1, 2, 3), np.int64(lo), (lo, -1), [lo, hi],
                              float("nan")])
        return int(self.rng.integers(lo, hi + 1))

    def size(self, lo, hi, bad=0.08, huge=True):
        """An int or an (h, w) pair in [lo, hi]."""
        if self.chance(0.4) and not self.chance(bad):
            return (int(self.rng.integers(lo, hi + 1)), int(self.rng.integers(lo, hi + 1)))
        return self.int_(lo, hi, bad, huge)

    def dims(self, n=None, c=None):
        """A bottom shape: usually 4-D with small odd/even sizes, sometimes another rank or
        a zero dimension."""
        if self.chance(0.06):
            rank = self.pick([0, 1, 2, 3, 5])
            return tuple(int(d) for d in self.rng.integers(1, 5, rank))
        shape = [n if n is not None else int(self.rng.integers(1, 4)),
                 c if c is not None else int(self.rng.integers(1, 5)),
                 int(self.rng.integers(1, 12)), int(self.rng.integers(1, 12))]
        if self.chance(0.04):
            shape[int(self.rng.integers(4))] = 0
        return tuple(shape)

    def array(self, shape, special=0.1):
        """Random values of a random float dtype and layout; sometimes NaN / Inf / huge."""
        x = self.rng.standard_normal(shape) * self.pick([1.0, 1.0, 1e3, 1e-3])
        if x.size and self.chance(special):
            flat = x.reshape(-1)
            k = int(self.rng.integers(1, min(flat.size, 4) + 1))
            flat[self.rng.integers(0, flat.size, k)] = self.pick(
                [np.nan, np.inf, -np.inf, 1e38, -1e38])
        dtype = self.pick([np.float32, np.float32, np.float64, np.float16, np.int32])
        if dtype is np.int32:
            x = np.nan_to_num(x, nan=0, posinf=0, neginf=0).clip(-1e6, 1e6)
        x = x.astype(dtype)
        if x.ndim >= 2 and self.chance(0.15):
            x = np.swapaxes(np.swapaxes(x, -1, -2).copy(), -1, -2)   # not C-contiguous
        return x

    def dtype(self):
        return self.pick([np.float32, np.float64])


def run_layer(layer, bottoms, gen, **forward_kwargs):
    """Forward, then backward with a random top diff (or the loss's default)."""
    out = layer.forward(*bottoms, **forward_kwargs)
    if layer.is_loss:
        layer.backward()
        return
    tops = out if isinstance(out, tuple) else (out,)
    diffs = [gen.array(np.shape(t), special=0.05) for t in tops]
    if gen.chance(0.1):
        # a wrong top diff shape must be refused
        diffs[0] = gen.array(tuple(d + 1 for d in np.shape(tops[0])) or (1,))
    layer.backward(*diffs)


def case_conv(gen):
    kw = dict(num_output=gen.int_(1, 6), kernel_size=gen.size(1, 5), stride=gen.size(1, 3),
              pad=gen.size(0, 3), dilation=gen.size(1, 3), group=gen.pick([1, 1, 2, 3]),
              bias_term=gen.pick([True, False]), dtype=gen.dtype())
    if gen.chance(0.05):
        kw["pad"] = gen.pick(HUGE)
    deconv = gen.chance(0.4)
    if deconv:
        kw["output_padding"] = gen.pick([0, 0, 0, 1, 2, -1])
    layer = (Deconvolution if deconv else Convolution)(name="fuzz", **kw)
    c = gen.pick([1, 2, 3, 4, 6])
    x = gen.array(gen.dims(c=c))
    extra = {}
    if deconv and gen.chance(0.3):
        extra["output_size"] = gen.size(1, 30)
    run_layer(layer, [x], gen, **extra)
    return kw


def case_pool(gen):
    kw = dict(kernel_size=gen.size(1, 5, huge=False), stride=gen.size(1, 4, huge=False),
              pad=gen.size(0, 2, huge=False),
              pool=gen.pick(["MAX", "MAX", "AVE", "max", "MIN"]),
              round_mode=gen.pick(["CEIL", "FLOOR"]), dtype=gen.dtype())
    if kw["pool"] != "AVE" and gen.chance(0.5):
        kw["return_mask"] = True
    if gen.chance(0.1):
        kw = dict(global_pooling=True, pool=kw["pool"], dtype=kw["dtype"])
    layer = Pooling(name="fuzz", **kw)
    run_layer(layer, [gen.array(gen.dims())], gen)
    return kw


def case_unpool(gen):
    kw = dict(kernel_size=gen.size(1, 4, huge=False), stride=gen.size(1, 3, huge=False),
              pad=gen.size(0, 1, huge=False),
              dtype=gen.dtype())
    if gen.chance(0.4):
        kw["out_size"] = gen.size(1, 20, huge=False)
    layer = Unpooling(name="fuzz", **kw)
    shape = gen.dims()
    x = gen.array(shape)
    plane = 64
    mask = gen.rng.integers(0, plane, shape)
    choice = gen.rng.integers(6)
    if choice == 0 and mask.size:
        mask.reshape(-1)[gen.rng.integers(mask.size)] = gen.pick(
            [-1, plane * 10, 2 ** 40, -2 ** 62, 2 ** 63 - 1])
    mask = mask.astype(gen.pick([np.int64, np.int32, np.float32, np.float64, np.int16,
                                 np.uint8]), copy=False)
    if choice == 1 and mask.size and mask.dtype.kind == "f":
        mask.reshape(-1)[gen.rng.integers(mask.size)] = gen.pick([np.nan, np.inf, 0.5, -0.5])
    if choice == 2:
        mask = gen.array(gen.dims())
    run_layer(layer, [x, mask], gen)
    return kw


def case_interp(gen):
    kw = dict(align_corners=gen.pick([True, False]), mode=gen.pick(["bilinear", "nearest"]),
              pad_beg=gen.pick([0, 0, 0, -1, -2, 1]), pad_end=gen.pick([0, 0, -1, -3]),
              dtype=gen.dtype())
    how = gen.rng.integers(5)
    if how == 0:
        kw["zoom_factor"] = gen.int_(1, 4, huge=False)
    elif how == 1:
        kw["shrink_factor"] = gen.int_(1, 4, huge=False)
    elif how == 2:
        kw.update(zoom_factor=gen.int_(1, 3, huge=False),
                  shrink_factor=gen.int_(1, 3, huge=False))
    elif how == 3:
        kw.update(height=gen.int_(1, 20, huge=False), width=gen.int_(1, 20, huge=False))
    layer = Interp(name="fuzz", **kw)
    shape = gen.dims()
    x = gen.array(shape)
    if kw["mode"] == "nearest" and gen.chance(0.3):
        x = gen.rng.integers(0, 5, shape).astype(gen.pick([np.int64, np.int32, np.uint8]))
    bottoms = [x]
    if how == 4:
        n = shape[0] if len(shape) and not gen.chance(0.1) else 5
        bottoms.append(np.zeros((n, 1, int(gen.rng.integers(1, 15)),
                                 int(gen.rng.integers(1, 15))), np.float32))
    run_layer(layer, bottoms, gen)
    return kw


def case_softmax(gen):
    kw = dict(ignore_label=gen.pick([None, 255, -1, 0, 2 ** 62]),
              normalization=gen.pick(["VALID", "FULL", "BATCH_SIZE", "NONE", "BAD"]),
              dtype=gen.dtype())
    layer = SoftmaxWithLoss(name="fuzz", **kw)
    shape = gen.dims()
    scores = gen.array(shape) * gen.pick([1, 1, 1e4])
    classes = shape[1] if len(shape) > 1 else 3
    lshape = (shape[:1] + shape[2:]) if len(shape) > 1 else shape
    if gen.chance(0.3) and len(shape) > 1:
        lshape = shape[:1] + (1,) + shape[2:]
    if gen.chance(0.05):
        lshape = tuple(d + 1 for d in lshape)
    labels = gen.rng.integers(0, max(classes, 1), lshape)
    bad = gen.rng.integers(5)
    if bad == 0 and labels.size:
        labels.reshape(-1)[gen.rng.integers(labels.size)] = gen.pick(
            [classes, -1, 255, 2 ** 40, -2 ** 62])
    labels = labels.astype(gen.pick([np.int64, np.int32, np.float32, np.float64, np.uint8,
                                     np.int8]), copy=False)
    if bad == 1 and labels.size and labels.dtype.kind == "f":
        labels.reshape(-1)[gen.rng.integers(labels.size)] = gen.pick([np.nan, np.inf, 0.5])
    run_layer(layer, [scores, labels], gen)
    return kw


def case_cheap(gen):
    """The NumPy-backed families: their checks guard the same backend door."""
    kind = gen.rng.integers(8)
    shape = gen.dims()
    x = gen.array(shape)
    if kind == 0:
        layer, bottoms = ReLU(negative_slope=gen.pick([0.0, 0.1]), name="fuzz"), [x]
    elif kind == 1:
        layer, bottoms = Dropout(dropout_ratio=gen.pick([0.0, 0.5, 0.9]), seed=1,
                                 name="fuzz"), [x]
    elif kind == 2:
        layer, bottoms = BatchNorm(name="fuzz"), [x]
        if gen.chance(0.5):
            layer.eval()
    elif kind == 3:
        other = gen.array(gen.dims(n=shape[0] if shape else 1))
        layer = Crop(axis=gen.pick([0, 1, 2, 3, 4, -1]), offset=gen.pick([0, 1, [0, 1], 5]),
                     name="fuzz")
        bottoms = [x, other]
    elif kind == 4:
        other = gen.array(shape if gen.chance(0.7) else gen.dims())
        layer, bottoms = Concat(axis=gen.pick([0, 1, 2, 3, 7, -1]), name="fuzz"), [x, other]
    elif kind == 5:
        other = gen.array(shape if gen.chance(0.8) else gen.dims())
        op = gen.pick(["SUM", "PROD", "MAX", "MIN"])
        coeff = gen.pick([None, [1.0, -1.0], [1.0]]) if op == "SUM" else None
        layer, bottoms = Eltwise(operation=op, coeff=coeff, name="fuzz"), [x, other]
    else:
        other = gen.array(shape if gen.chance(0.8) else gen.dims())
        layer, bottoms = EuclideanLoss(name="fuzz"), [x, other]
    run_layer(layer, bottoms, gen)
    return {"kind": int(kind)}


class WrongReport(Exception):
    """A DataError that names another value or position than the first bad one."""


def case_first_bad(gen):
    """Masks and labels with a few bad values: the DataError must name the first one in
    row-major order (the kernels scan planes in parallel, the report must not depend on it)."""
    shape = (int(gen.rng.integers(1, 4)), int(gen.rng.integers(1, 5)),
             int(gen.rng.integers(1, 7)), int(gen.rng.integers(1, 7)))
    unpool = gen.chance(0.5)
    if unpool:
        k = 2
        plane = (shape[2] * k) * (shape[3] * k)
        values = gen.rng.integers(0, plane, shape)
        bad_values = [-1, plane, plane + 7, 2 ** 40]
    else:
        classes = shape[1]
        values = gen.rng.integers(0, classes, (shape[0],) + shape[2:])
        bad_values = [-1, classes, classes + 3, 2 ** 40]
    dtype = gen.pick([np.int64, np.int32, np.float32, np.float64])
    if dtype is np.int32:
        bad_values = bad_values[:-1]          # 2**40 would wrap to a valid int32
    flat = values.reshape(-1)
    spots = gen.rng.choice(flat.size, size=min(flat.size, int(gen.rng.integers(1, 4))),
                           replace=False)
    for spot in spots:
        flat[spot] = gen.pick(bad_values)
    values = values.astype(dtype)
    first = tuple(int(i) for i in np.unravel_index(int(min(spots)), values.shape))
    try:
        if unpool:
            Unpooling(kernel_size=2, stride=2, name="fuzz").forward(
                gen.array(shape, special=0), values)
        else:
            SoftmaxWithLoss(name="fuzz").forward(gen.array(shape, special=0), values)
    except ConvnetError as exc:
        if f"{first}" not in str(exc) or type(exc).__name__ != "DataError":
            raise WrongReport(f"expected a DataError at {first}, got {type(exc).__name__}: "
                              f"{exc}") from None
        raise
    raise WrongReport(f"no error for bad values at {sorted(spots)}")


#: size parameters within the bound (2**31 - 1) whose outputs no machine can hold (a
#: ShapeError from setup), and past it (a ConfigError from the constructor)
HUGE_IN_BOUND = (2 ** 30, 2 ** 31 - 1)
HUGE_PAST_BOUND = (2 ** 31, 2 ** 62)


def huge_outputs():
    """Requested outputs no machine can hold (2**31 to 2**62 elements): each must be refused
    with a convnet error before any allocation, not a NumPy MemoryError or ValueError."""
    x = np.ones((1, 1, 2, 2), np.float32)
    mask = np.zeros((1, 1, 2, 2), np.int64)
    for size in HUGE_IN_BOUND + HUGE_PAST_BOUND:
        yield f"Unpooling(out_size={size})", lambda s=size: Unpooling(
            kernel_size=2, stride=2, out_size=(s, s), name="fuzz").forward(x, mask)
        yield f"Interp(height=width={size})", lambda s=size: Interp(
            height=s, width=s, name="fuzz").forward(x)
        yield f"Interp(zoom_factor={size})", lambda s=size: Interp(
            zoom_factor=s, name="fuzz").forward(x)
        yield f"Deconvolution(stride={size})", lambda s=size: Deconvolution(
            num_output=1, kernel_size=1, stride=s, name="fuzz").forward(x)
        yield f"Convolution(pad={size})", lambda s=size: Convolution(
            num_output=1, kernel_size=1, pad=s, name="fuzz").forward(x)
        yield f"Pooling(kernel_size={size}, pad={size - 1})", lambda s=size: Pooling(
            kernel_size=s, pad=s - 1, name="fuzz").forward(x)


CASES = [case_conv, case_conv, case_pool, case_unpool, case_unpool, case_interp,
         case_softmax, case_softmax, case_cheap, case_first_bad]


#: address-space cap: a huge output that slips past the checks fails with MemoryError (a
#: recorded defect) instead of swapping the machine or waking the OOM killer
ADDRESS_SPACE = 3 << 30


def record(summary, label, run):
    summary["cases"] += 1
    try:
        run()
        summary["ok"] += 1
    except ConvnetError as exc:
        summary["rejected"] += 1
        kind = type(exc).__name__
        summary["kinds"][kind] = summary["kinds"].get(kind, 0) + 1
    except Exception as exc:   # the finding: any other escape is a defect
        summary["defects"].append({"case": label, "error": f"{type(exc).__name__}: {exc}",
                                   "where": traceback.format_exc(limit=-3)})


def main(argv):
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    summary = {"cases": 0, "ok": 0, "rejected": 0, "defects": [], "kinds": {}}
    if argv[0] == "huge":
        for label, run in huge_outputs():
            sys.stderr.write(f"case {label}\n")
            sys.stderr.flush()
            record(summary, label, run)
        print(json.dumps(summary))
        return
    seed, count = int(argv[0]), int(argv[1])
    gen = Gen(seed)
    for i in range(count):
        case = CASES[i % len(CASES)]
        state = gen.rng.bit_generator.state
        sys.stderr.write(f"case {i} {case.__name__} rng={json.dumps(state)}\n")
        sys.stderr.flush()
        record(summary, f"{i} {case.__name__}", lambda: case(gen))
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1:])
