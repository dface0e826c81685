"""The ``convnet`` command, shaped like ``caffe``: train, test, time and convert.

::

    convnet train   --solver solver.prototxt [--weights x.caffemodel|x.npz]
                    [--snapshot s.solverstate.npz] [--data DIR|synthetic]
    convnet test    --model net.prototxt --weights x.caffemodel|x.npz [--iterations N]
                    [--data DIR|synthetic]
    convnet time    --model net.prototxt [--iterations N] [--phase TRAIN|TEST]
    convnet convert IN OUT [--model net.prototxt]     (caffemodel <-> npz -> onnx; without
                    --model, a caffemodel written by Caffe gives its own net; a V1
                    .prototxt -> its V2 text)

``--data DIR`` is the folder the training script reads (DIR/images/*.png|jpg and
DIR/labels/<same name>.png, or DIR/train/... and DIR/val/...: train reads DIR/train, test
and the test_interval runs DIR/val); ``--data synthetic`` uses the embedded synthetic
dataset. It
feeds the net's dataset layers (Data, ImageData, ImageSegData, DenseImageData, Python, ...)
or, without one, its inputs named ``data`` and ``label``. ``--shape name=N,C,H,W`` gives an
input shape the prototxt leaves open.

Exit status: 0 done; 2 bad arguments or unusable files; 1 the run failed.
"""

import argparse
import os
import sys
import time

import numpy as np

from convnet.errors import ConfigError, ConvnetError, FileFormatError


# ---------------------------------------------------------------------- shared helpers
def _shapes(values):
    out = {}
    for item in values or []:
        name, _, dims = item.partition("=")
        try:
            out[name] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise ConfigError(f"--shape {item!r}: expected name=N,C,H,W (integers)") from None
        if not name or not out[name]:
            raise ConfigError(f"--shape {item!r}: expected name=N,C,H,W")
    return out


def _load_model(path, phase, shapes):
    from convnet import caffe
    net = caffe.load_net(path, phase=phase)
    known = dict(net.caffe.input_shapes)
    known.update(shapes)
    return net, {k: known[k] for k in net.inputs if k in known}


def _load_weights(net, path):
    """A .caffemodel or .npz into ``net`` (by layer name); prints the report."""
    if path.endswith(".caffemodel"):
        from convnet import caffe
        report = caffe.load_weights(net, path)
    else:
        report = net.load(path, strict=False)
    print(f"Loaded weights: {report}")
    return report


def _data_roles(net):
    """(image input, label input or None) among the net's inputs."""
    info = getattr(net, "caffe", None)
    for rec in getattr(info, "data_layers", []):
        tops = [t for t in rec["tops"] if t in net.inputs]
        if tops:
            return tops[0], (tops[1] if len(tops) > 1 else None)
    inputs = net.inputs
    image = "data" if "data" in inputs else inputs[0]
    label = "label" if "label" in inputs else None
    return image, label


class _Feeder:
    """``next_batch()`` -> the net's inputs from a dataset (images and label maps)."""

    def __init__(self, net, spec, shapes, batch_size=None, seed=0, shuffle=True,
                 split="train"):
        from convnet.data import BatchIterator, FolderDataset, SyntheticShapes
        self.image, self.label = _data_roles(net)
        shape = shapes.get(self.image)
        size = tuple(shape[2:]) if shape is not None and len(shape) == 4 else None
        info = getattr(net, "caffe", None)
        rec = next((r for r in getattr(info, "data_layers", []) if self.image in r["tops"]),
                   {})
        batch = batch_size or rec.get("batch_size") or (shape[0] if shape else 1)
        if spec == "synthetic":
            side = size[0] if size else 64
            dataset = SyntheticShapes(split, num_images=64, size=side, seed=seed)
            if size and size[0] != size[1]:
                raise ConfigError(f"--data synthetic makes square images; the net's input "
                                  f"'{self.image}' is {size[0]}x{size[1]}")
        else:
            if not os.path.isdir(spec):
                raise FileFormatError(f"--data {spec}: no such folder")
            # the training script's layout: DIR/images + DIR/labels, or DIR/train and DIR/val
            folder = os.path.join(spec, split)
            dataset = FolderDataset(folder if os.path.isdir(folder) else spec, size=size)
        self.extra = [k for k in net.inputs if k not in (self.image, self.label)]
        self.shapes = shapes
        self.iterator = BatchIterator(dataset, int(batch), shuffle=shuffle, seed=seed)

    def next_batch(self):
        batch = self.iterator.next_batch()
        self.last_labels = batch["label"]
        out = {self.image: batch["data"]}
        if self.label is not None:
            label = batch["label"]
            out[self.label] = label.reshape(label.shape[0], 1, *label.shape[1:]).astype(
                np.float32)
        for name in self.extra:
            shape = self.shapes.get(name)
            if shape is None:
                raise ConfigError(f"the net's input '{name}' has no known shape; give "
                                  f"--shape {name}=N,C,H,W")
            out[name] = np.zeros(shape, np.float32)
        return out

    # the solver's data protocol
    def get_state(self):
        return self.iterator.get_state()

    def set_state(self, state):
        self.iterator.set_state(state)


def _setup_from(net, batch):
    if any(layer.bottom_shapes is None for layer in net.layers):
        net.setup(**{k: np.shape(v) for k, v in batch.items()})


# ---------------------------------------------------------------------- sub-commands
def cmd_train(args):
    """Train the solver's net (TRAIN phase), Caffe's ``caffe train``."""
    from convnet import caffe
    config = caffe.load_solver(args.solver)
    if config.random_seed >= 0:
        import convnet
        convnet.seed(config.random_seed)        # fillers and Dropout streams, as Caffe's
    net = config.load_net("TRAIN")
    shapes = dict(net.caffe.input_shapes)
    shapes.update(_shapes(args.shape))
    if args.data is None:
        names = [f"{r['type']} layer '{r['name']}'" for r in net.caffe.data_layers]
        raise ConfigError("train needs --data DIR (or --data synthetic)" +
                          (f": the net reads {', '.join(names)}" if names else ""))
    feeder = _Feeder(net, args.data, shapes, seed=max(config.random_seed, 0))
    first = feeder.next_batch()
    _setup_from(net, first)
    if args.weights:
        _load_weights(net, args.weights)
    solver = config.build(net, data=feeder)
    pending = first
    if args.snapshot:
        # weights, history, iteration, the data order and Dropout's streams: the run goes on
        # exactly as the uninterrupted one
        solver.restore(args.snapshot)
        pending = None
        print(f"Resumed from {args.snapshot} at iteration {solver.iter}")
    tester = None
    if config.test_interval and config.test_iter:
        test_net = config.load_net("TEST")
        test_shapes = dict(test_net.caffe.input_shapes)
        test_shapes.update(_shapes(args.shape))
        tester = (test_net, _Feeder(test_net, args.data, test_shapes, seed=1, shuffle=False,
                                    split="val"))
    max_iter = args.iterations or config.max_iter
    prefix = config.snapshot_prefix or os.path.splitext(os.path.basename(args.solver))[0]
    display = config.display or max(1, max_iter // 10)
    start = time.time()
    while solver.iter < max_iter:
        if config.iter_size == 1:
            batch = pending if pending is not None else feeder.next_batch()
            loss = solver.step(**batch)
        else:
            loss = solver.step()            # the solver draws iter_size batches itself
        pending = None
        if solver.iter % display == 0 or solver.iter == max_iter:
            print(f"Iteration {solver.iter}, loss = {loss:.6g}, lr = {solver.lr:.6g} "
                  f"({time.time() - start:.1f} s)", flush=True)
        if tester is not None and solver.iter % config.test_interval == 0:
            _test_during_training(net, *tester, config.test_iter[0], solver.iter)
        if config.snapshot and solver.iter % config.snapshot == 0 or solver.iter == max_iter:
            _snapshot(solver, net, f"{prefix}_iter_{solver.iter}")
    print("Optimization Done.")
    return 0


def _test_during_training(net, test_net, feeder, iterations, it):
    """The TEST net with the training net's current weights (Caffe's test_interval)."""
    print(f"Iteration {it}, Testing net ({iterations} iterations)")
    if any(layer.bottom_shapes is None for layer in test_net.layers):
        batch = feeder.next_batch()
        _setup_from(test_net, batch)
    test_net.load_arrays(net.state_arrays(), "the training net", strict=False)
    _score(test_net, feeder, iterations, prefix="    Test net output: ")
    net.train()


def _snapshot(solver, net, stem):
    from convnet import caffe
    caffe.save_caffemodel(net, f"{stem}.caffemodel")
    solver.snapshot(f"{stem}.solverstate.npz")
    print(f"Snapshotting to {stem}.caffemodel and {stem}.solverstate.npz")


def cmd_test(args):
    """Score a net on a dataset (TEST phase), Caffe's ``caffe test``."""
    net, shapes = _load_model(args.model, "TEST", _shapes(args.shape))
    data = args.data or "synthetic"
    # a deploy net has no label input: the dataset's labels still score its output
    feeder = _Feeder(net, data, shapes, shuffle=False, split="val")
    first = feeder.next_batch()
    _setup_from(net, first)
    if args.weights:
        _load_weights(net, args.weights)
    _score(net, feeder, args.iterations, first, prefix="")
    return 0


def _score(net, feeder, iterations, batch=None, prefix=""):
    """Run ``iterations`` TEST forwards; print each scalar output per batch (without a
    prefix) and averaged, and pixel accuracy / mean IoU of the first 4-d output."""
    from convnet.metrics import SegmentationScore
    net.eval()
    totals = {}
    score = None
    for i in range(iterations):
        batch = feeder.next_batch() if batch is None else batch
        outputs = net.forward(**batch)
        for name, value in outputs.items():
            if np.ndim(value) == 0:
                totals[name] = totals.get(name, 0.0) + float(value)
                if not prefix:
                    print(f"Batch {i}, {name} = {float(value):.6g}")
        maps = [v for v in outputs.values() if np.ndim(v) == 4]
        labels = feeder.last_labels
        if maps and labels.shape[-2:] == maps[0].shape[-2:]:
            if score is None:
                score = SegmentationScore(maps[0].shape[1])
            score.update(np.argmax(maps[0], axis=1), labels)
        batch = None
    for name, total in totals.items():
        print(f"{prefix}{name} = {total / iterations:.6g}")
    if score is not None:
        print(f"{prefix}pixel_accuracy = {score.pixel_accuracy:.4f}")
        print(f"{prefix}mean_iou = {score.mean_iou:.4f}" if score.mean_iou is not None
              else f"{prefix}mean_iou = n/a")


def cmd_time(args):
    """Per-layer forward and backward times, Caffe's ``caffe time``."""
    net, shapes = _load_model(args.model, args.phase, _shapes(args.shape))
    missing = [k for k in net.inputs if k not in shapes]
    if missing:
        raise ConfigError(f"the shape of input(s) {missing} is unknown; give --shape "
                          f"{missing[0]}=N,C,H,W")
    rng = np.random.default_rng(0)
    inputs = {}
    for name, shape in shapes.items():
        inputs[name] = (np.zeros(shape, np.float32) if name == _data_roles(net)[1]
                        else rng.standard_normal(shape).astype(np.float32))
    net.force_backward = True
    times = {layer.name: [0.0, 0.0] for layer in net.layers}
    for layer in net.layers:
        _timed(layer, times[layer.name])
    net.forward(**inputs)          # warm-up (setup, buffers)
    backward = _backward_sweep(net)
    backward()
    for t in times.values():
        t[0] = t[1] = 0.0
    total_f = total_b = 0.0
    for _ in range(args.iterations):
        t0 = time.perf_counter()
        net.forward(**inputs)
        t1 = time.perf_counter()
        backward()
        t2 = time.perf_counter()
        total_f += t1 - t0
        total_b += t2 - t1
    n = args.iterations
    width = max(len(name) for name in times)
    print(f"Average time per layer ({n} iterations, phase {args.phase}):")
    for layer in net.layers:
        f, b = times[layer.name]
        print(f"{layer.name:>{width}}\tforward: {1e3 * f / n:.4f} ms.")
        print(f"{layer.name:>{width}}\tbackward: {1e3 * b / n:.4f} ms.")
    print(f"Average Forward pass: {1e3 * total_f / n:.4f} ms.")
    print(f"Average Backward pass: {1e3 * total_b / n:.4f} ms.")
    print(f"Average Forward-Backward: {1e3 * (total_f + total_b) / n:.4f} ms.")
    return 0


def _backward_sweep(net):
    """net.backward, or for a net without a loss (a deploy net) every layer's backward in
    reverse order with top diffs of ones, so that ``time`` still measures it."""
    if any(layer.is_loss and layer.loss_weight for layer in net.layers):
        return net.backward
    diffs = [[np.ones(s, layer.dtype) for s in layer.top_shapes] for layer in net.layers]

    def sweep():
        for layer, tops in zip(reversed(net.layers), reversed(diffs)):
            if tops:
                layer.backward(*tops)
    return sweep


def _timed(layer, slot):
    forward, backward = layer.forward, layer.backward

    def timed_forward(*a, **k):
        t = time.perf_counter()
        try:
            return forward(*a, **k)
        finally:
            slot[0] += time.perf_counter() - t

    def timed_backward(*a, **k):
        t = time.perf_counter()
        try:
            return backward(*a, **k)
        finally:
            slot[1] += time.perf_counter() - t

    layer.forward, layer.backward = timed_forward, timed_backward


_WEIGHT_EXTS = (".caffemodel", ".npz")


def cmd_convert(args):
    """caffemodel <-> npz, either -> ONNX, with --model (or the net a Caffe-written
    caffemodel holds); a .prototxt -> its V2 text."""
    src, dst = args.input, args.output
    if src.endswith(".prototxt"):
        from convnet import caffe
        definition = caffe.read_net(src)
        with open(dst, "w") as f:
            f.write(definition.to_text())
        print(f"Wrote {dst} ({definition.dialect} dialect, V2"
              f"{', upgraded from V1' if definition.upgraded else ''})")
        return 0
    if not src.endswith(_WEIGHT_EXTS):
        raise ConfigError(f"convert: input {src!r} must be a .caffemodel, .npz or .prototxt")
    if not dst.endswith(_WEIGHT_EXTS + (".onnx",)):
        raise ConfigError(f"convert: output {dst!r} must be a .caffemodel, .npz or .onnx")
    model, phase = args.model, "TEST"
    if not model:
        if not (src.endswith(".caffemodel") and _holds_definition(src)):
            raise ConfigError("convert: weights files need --model net.prototxt (the net they "
                              "belong to)")
        # a caffemodel Caffe wrote holds the net it was trained as (TRAIN phase)
        model, phase = src, "TRAIN"
    net, shapes = _load_model(model, phase, _shapes(args.shape))
    if any(layer.bottom_shapes is None for layer in net.layers):
        missing = [k for k in net.inputs if k not in shapes]
        if missing:
            raise ConfigError(f"the shape of input(s) {missing} is unknown; give --shape "
                              f"{missing[0]}=N,C,H,W")
        net.setup(**shapes)
    _load_weights(net, src)
    if dst.endswith(".caffemodel"):
        from convnet import caffe
        caffe.save_caffemodel(net, dst)
    elif dst.endswith(".npz"):
        net.save(dst)
    else:
        net.export_onnx(dst)
    print(f"Wrote {dst}")
    return 0


def _holds_definition(path):
    """Whether a caffemodel carries its net's layers (bottoms, tops) besides the blobs."""
    from convnet import caffe
    try:
        definition = caffe.read_net(path)
    except FileFormatError:
        return False
    return any(lp.top or lp.bottom for lp in definition.message.layer)


def _train_args(p):
    p.add_argument("--solver", required=True, help="solver.prototxt")
    p.add_argument("--weights", help="initial weights (.caffemodel or .npz), by layer name")
    p.add_argument("--snapshot", help="resume from a .solverstate.npz")
    p.add_argument("--data", help="dataset folder, or 'synthetic'")
    p.add_argument("--iterations", type=int, help="stop here instead of max_iter")


def _test_args(p):
    p.add_argument("--model", required=True, help="net .prototxt")
    p.add_argument("--weights", help=".caffemodel or .npz")
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--data", help="dataset folder, or 'synthetic' (default)")


def _time_args(p):
    p.add_argument("--model", required=True, help="net .prototxt")
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--phase", default="TRAIN", choices=("TRAIN", "TEST"))


def _convert_args(p):
    p.add_argument("input", help=".caffemodel, .npz or .prototxt")
    p.add_argument("output", help=".caffemodel, .npz, .onnx or .prototxt")
    p.add_argument("--model", help="net .prototxt (for weights files)")


#: sub-command -> (function, argument declarations)
COMMANDS = {
    "train": (cmd_train, _train_args),
    "test": (cmd_test, _test_args),
    "time": (cmd_time, _time_args),
    "convert": (cmd_convert, _convert_args),
}


def build_parser():
    parser = argparse.ArgumentParser(prog="convnet", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (fn, declare) in COMMANDS.items():
        p = sub.add_parser(name, help=fn.__doc__.splitlines()[0], description=fn.__doc__)
        declare(p)
        p.add_argument("--shape", action="append", metavar="NAME=N,C,H,W",
                       help="an input shape the prototxt leaves open (repeatable)")
        if name != "convert":
            p.add_argument("--threads", type=int, help="CPU threads (convnet.set_num_threads)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "threads", None):
            import convnet
            convnet.set_num_threads(args.threads)
        if getattr(args, "iterations", None) is not None and args.iterations < 1:
            raise ConfigError(f"--iterations must be >= 1, got {args.iterations}")
        return COMMANDS[args.command][0](args)
    except ImportError as exc:
        print(f"convnet {args.command}: {exc}", file=sys.stderr)
        return 2
    except (ConfigError, FileFormatError, OSError) as exc:
        print(f"convnet {args.command}: {exc}", file=sys.stderr)
        return 2
    except ConvnetError as exc:
        print(f"convnet {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
