"""The ``layer`` cases of scripts/bench.py: Caffe's element-wise and structure layers and
BatchNorm on a (8, 64, 128, 128) float32 blob (32 MB; softmax on (8, 21, 128, 128)), each
forward and backward against the same PyTorch operation (autograd for the backward). The
byte counts (for GB/s) read and write each array once.

They are bound by memory bandwidth like bench.py's memory cases, but are a group of their
own (``layer ratio geomean``), apart from the cases issue #10's targets name. Where
PyTorch's backward returns its input gradient without computing anything (an add's
gradient is dy itself), convnet's does the same for Eltwise SUM; Concat's backward copies
(PyTorch returns views of dy), so that case measures a copy against no work.
"""

import numpy as np

SHAPE = (8, 64, 128, 128)


def _randn(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    x[x == 0] = 1e-3
    return x


def _side(ctx, layer, bottoms, torch_fn, nbytes, grads=None):
    """Closures for convnet's layer on ``bottoms`` and PyTorch's ``torch_fn`` on tensors of
    the same values (those in ``grads``, by index, take gradients: default all)."""
    out = layer.forward(*bottoms)
    top = out[0] if isinstance(out, (list, tuple)) else out
    dy = _randn(ctx["rng"], top.shape)
    side = {"cv_fwd": lambda: layer.forward(*bottoms), "cv_bwd": lambda: layer.backward(dy),
            "bytes_fwd": nbytes[0], "bytes_bwd": nbytes[1]}
    torch = ctx.get("torch")
    if torch is not None:
        dev = ctx["torch_device"]
        grads = range(len(bottoms)) if grads is None else grads
        ts = [torch.tensor(b, device=dev, requires_grad=i in grads)
              for i, b in enumerate(bottoms)]
        side["th_fwd"] = lambda: torch_fn(*ts)
        ty = torch_fn(*ts)
        wrt = [ts[i] for i in grads] + list(getattr(torch_fn, "params", []))
        tdy = torch.tensor(dy, device=dev)
        side["th_bwd"] = lambda: torch.autograd.grad(ty, wrt, tdy, retain_graph=True)
    return side


def _blob(ctx, shape=SHAPE):
    return _randn(ctx["rng"], shape)


def _functional(ctx):
    torch = ctx.get("torch")
    return None if torch is None else torch.nn.functional


def batchnorm(ctx):
    from convnet.layers import BatchNorm
    x = _blob(ctx)
    torch = ctx.get("torch")
    fn = None
    if torch is not None:
        bn = torch.nn.BatchNorm2d(SHAPE[1], affine=False, momentum=0.001).to(ctx["torch_device"])
        fn = bn
    return _side(ctx, BatchNorm(name="bn"), [x], fn, (2 * x.nbytes, 3 * x.nbytes))


def relu(ctx):
    from convnet.layers import ReLU
    x = _blob(ctx)
    F = _functional(ctx)
    return _side(ctx, ReLU(name="relu"), [x], F and F.relu, (2 * x.nbytes, 3 * x.nbytes))


def dropout(ctx):
    from convnet.layers import Dropout
    x = _blob(ctx)
    F = _functional(ctx)
    fn = F and (lambda t: F.dropout(t, 0.5, True))
    return _side(ctx, Dropout(name="dropout"), [x], fn, (2 * x.nbytes, 2 * x.nbytes))


def eltwise(operation):
    def build(ctx):
        from convnet.layers import Eltwise
        a, b = _blob(ctx), _blob(ctx)
        torch = ctx.get("torch")
        fn = None
        if torch is not None:
            fn = {"SUM": lambda s, t: s + t, "PROD": lambda s, t: s * t,
                  "MAX": torch.maximum}[operation]
        # backward: dy, what it reads besides (both bottoms, or the argmax), two diffs
        back = {"SUM": 3, "PROD": 5, "MAX": 4}[operation] * a.nbytes
        return _side(ctx, Eltwise(operation, name="eltwise"), [a, b], fn,
                     (3 * a.nbytes, back))
    return build


def concat(ctx):
    from convnet.layers import Concat
    half = (SHAPE[0], SHAPE[1] // 2) + SHAPE[2:]
    a, b = _blob(ctx, half), _blob(ctx, half)
    torch = ctx.get("torch")
    fn = None if torch is None else (lambda s, t: torch.cat([s, t], 1))
    return _side(ctx, Concat(axis=1, name="concat"), [a, b], fn,
                 (4 * a.nbytes, 4 * a.nbytes))


def crop(ctx):
    from convnet.layers import Crop
    x = _blob(ctx)
    ref = np.zeros(SHAPE[:2] + (120, 120), np.float32)
    fn = None
    if ctx.get("torch") is not None:
        fn = lambda t, r: t[:, :, 4:124, 4:124].contiguous()     # noqa: E731
    small = ref.nbytes
    return _side(ctx, Crop(axis=2, offset=4, name="crop"), [x, ref], fn,
                 (2 * small, small + x.nbytes), grads=[0])


def scale(ctx):
    from convnet.layers import Scale
    x = _blob(ctx)
    layer = Scale(axis=1, bias_term=True, name="scale")
    layer.forward(x)
    layer.params[0].data[...] = 1.0 + 0.1 * _randn(ctx["rng"], (SHAPE[1],))
    torch = ctx.get("torch")
    fn = None
    if torch is not None:
        dev = ctx["torch_device"]
        s = torch.tensor(layer.params[0].data.reshape(1, -1, 1, 1), device=dev,
                         requires_grad=True)
        b = torch.zeros((1, SHAPE[1], 1, 1), device=dev, requires_grad=True)
        fn = lambda t: t * s + b                                # noqa: E731
        fn.params = [s, b]
    return _side(ctx, layer, [x], fn, (2 * x.nbytes, 3 * x.nbytes))


def smooth(kind):
    def build(ctx):
        from convnet.layers import Sigmoid, TanH
        x = _blob(ctx)
        torch = ctx.get("torch")
        fn = None if torch is None else {"sigmoid": torch.sigmoid, "tanh": torch.tanh}[kind]
        layer = (Sigmoid if kind == "sigmoid" else TanH)(name=kind)
        return _side(ctx, layer, [x], fn, (2 * x.nbytes, 3 * x.nbytes))
    return build


def softmax(ctx):
    from convnet.layers import Softmax
    x = _blob(ctx, (8, 21, 128, 128))
    torch = ctx.get("torch")
    fn = None if torch is None else (lambda t: torch.softmax(t, 1))
    return _side(ctx, Softmax(axis=1, name="softmax"), [x], fn, (2 * x.nbytes, 3 * x.nbytes))


#: (name, builder) in the order bench.py runs them
LAYER_CASES = (
    ("batchnorm", batchnorm), ("relu", relu), ("dropout", dropout),
    ("eltwise_sum", eltwise("SUM")), ("eltwise_prod", eltwise("PROD")),
    ("eltwise_max", eltwise("MAX")), ("concat", concat), ("crop", crop), ("scale", scale),
    ("sigmoid", smooth("sigmoid")), ("tanh", smooth("tanh")), ("softmax", softmax),
)
