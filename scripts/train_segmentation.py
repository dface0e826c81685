#!/usr/bin/env python
"""Train a segmentation network of convnet's model zoo, validate it while it trains, show
predictions.

With no flags it trains convnet.models.deconvnet (width 16, 3 poolings with masks; Adam,
poly lr from 0.003, batch 16, 1500 iterations) on the embedded synthetic dataset
(convnet.data.SyntheticShapes: discs, squares, triangles and rings on textured noisy
backgrounds, 2000 training images),
evaluates it on the 200 validation images every --val-every iterations and at the end, and
ends with a line

    val mIoU=0.869 pixel_acc=0.976

Output (``--out``, default runs/segmentation): ``weights.npz`` (Net.save; scripts/segment.py
reads it), ``best.npz`` (the weights of the best validation mIoU so far), ``snapshot.npz``
(the solver's whole state, for ``--resume``; rewritten every 200 iterations, at the end and on
Ctrl-C) with ``run.json`` (the settings a resume must keep), ``log.jsonl`` (one JSON object a
line: iteration, loss, lr, img/s; and each validation's pixel accuracy, mIoU and per-class
IoU), ``curves.png`` (loss and val mIoU against iteration; needs matplotlib, the ``plot``
extra), ``predictions.png`` (rows: input, ground truth, prediction for 8 validation images,
and a legend of the class colours and names).

Your own data (``--data``): the folder layout DIR/images/**.jpg|png with DIR/labels/**.png
masks at the same relative paths (mode L or P, pixel value = class, 255 = ignore; nested
folders are walked); DIR/train/ + DIR/val/ folders of that layout; the VOC layout
(DIR/JPEGImages, DIR/SegmentationClass, DIR/ImageSets/Segmentation/train.txt and val.txt);
or a list file of "image mask" lines. ``--val`` gives the validation set (a folder, a list
file, or a VOC split name / split file); otherwise the VOC val split, DIR/val, or every 10th
image. Images of any size: training takes random --crop windows (padded with the mean and the
ignore label where an image is smaller) after a random --scale-range resize and a random
flip; validation runs on whole images padded to the network's multiple. Images are decoded
in --workers background threads; only file names stay in memory. Every mask is checked before
training, in one parallel pass.

Exit status: 0 done; 2 bad flags or unusable input (missing folder, image without mask, mask
values outside --num-classes, unreadable snapshot, --resume with a changed --batch-size or
--seed); 1 training failed (e.g. a non-finite loss: the last good snapshot is kept); 130
interrupted by Ctrl-C (SIGINT) after writing a snapshot to resume from.
"""

import argparse
import json
import os
import signal
import sys
import time

import numpy as np

try:
    import convnet
except ImportError:     # running from a source checkout that was built in place
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import convnet

from convnet.data import (BatchIterator, SegmentationLoader, Subset, SyntheticShapes,
                          colourise, denormalize_image, load_class_names, open_dataset,
                          palette)
from convnet.errors import ConvnetError, DataError, FileFormatError
from convnet.metrics import SegmentationScore
from convnet.models import MODELS, build
from convnet.transforms import Augment, crop_back, pad_to_multiple

# The default run, measured on the 2-core AMD EPYC dev machine (2026-12-01): 1500 iterations
# (since the direct weight gradient and the fused BatchNorm passes went in), val mIoU 0.869
# in 2:02 wall (seed 0) and 0.860 (seed 1); 1700 gave 0.871 / 0.877 and 2000 0.882, 1400
# with lr 0.004 only 0.849 (seed 1). Results are identical at 1 and 2 threads.
DEFAULTS = dict(iters=1500, batch_size=16, width=16, levels=3)
#: the largest --batch-size (a batch past it cannot be held in memory at the default sizes)
MAX_BATCH_SIZE = 2 ** 16
BASE_LR = {"adam": 0.003, "sgd": 0.01}
# Caffe's Adam adds delta to sqrt(v) before the bias correction (PyTorch adds eps after it), so
# Caffe's default 1e-8 throttles the many small gradients here (the loss is a mean over 65536
# pixels) more than PyTorch's eps=1e-8 does. Measured on this run (seeds 0-1): delta 1e-8
# gave val mIoU 0.43-0.62 (squares never separated from discs), 1e-10 gave 0.44, 1e-9 0.84,
# 3e-9 (about PyTorch's effective 1e-8 * sqrt(1 - beta2^t) here) 0.81-0.84 at 1200 iterations.
ADAM_DELTA = 3e-9
TRAIN_IMAGES, VAL_IMAGES = 2000, 200
DISPLAY_SECONDS = 5.0
SNAPSHOT_EVERY = 200
VAL_EVERY = 500
GRID_IMAGES = 8
CROP = (256, 256)
SCALE_RANGE = (0.5, 2.0)
#: settings a resumed run must share with the run that wrote the snapshot
RESUME_KEYS = ("batch_size", "seed", "model", "width", "data", "crop", "scale_range", "flip")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad flags or unusable input: reported on one line, exit status 2."""


def legend_strip(width, num_classes, class_names, zoom):
    """uint8 (h, width, 3): a colour square and the name of each class, wrapped in rows."""
    from PIL import Image, ImageDraw
    colours = palette(num_classes)
    cell_h, pad = 14 * zoom, 4
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items, x, rows = [], pad, 0
    for c, name in enumerate(class_names):
        text = f"{c} {name}"
        tw = int(draw_probe.textlength(text)) + cell_h + 3 * pad
        if x + tw > width and x > pad:
            x, rows = pad, rows + 1
        items.append((x, rows, c, text))
        x += tw
    img = Image.new("RGB", (width, (rows + 1) * (cell_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for x, row, c, text in items:
        y = pad + row * (cell_h + pad)
        draw.rectangle([x, y, x + cell_h - 1, y + cell_h - 1], fill=tuple(int(v) for v in
                                                                         colours[c]),
                       outline=(0, 0, 0))
        draw.text((x + cell_h + pad, y + cell_h // 2 - 5), text, fill=(0, 0, 0))
    return np.asarray(img)


def write_grid(path, images, labels, preds, num_classes, class_names=None, zoom=2):
    """PNG with one column per image, rows input / ground truth / prediction, and a legend
    of the class colours and names below. Tiles of different sizes are padded (white) to the
    largest."""
    from PIL import Image
    rows = [[denormalize_image(x) for x in images],
            [colourise(y, num_classes) for y in labels],
            [colourise(p, num_classes) for p in preds]]
    gap = 2
    h = max(t.shape[0] for t in rows[0])
    w = max(t.shape[1] for t in rows[0])
    grid = np.full((3 * h + 2 * gap, len(images) * w + (len(images) - 1) * gap, 3), 255,
                   dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            y, x = r * (h + gap), c * (w + gap)
            grid[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    img = Image.fromarray(grid)
    if zoom > 1:
        img = img.resize((img.width * zoom, img.height * zoom), Image.NEAREST)
    names = class_names or [f"class{i}" for i in range(num_classes)]
    legend = legend_strip(img.width, num_classes, names, 1)
    full = np.concatenate([np.asarray(img), legend])
    tmp = path + ".tmp"
    Image.fromarray(full).save(tmp, format="PNG")
    os.replace(tmp, path)


def parse_label_map(p, items):
    out = {}
    for item in items or []:
        try:
            src, dst = (int(v) for v in item.split("="))
        except ValueError:
            p.error(f"--map-label takes VALUE=CLASS (e.g. 255=1), got {item!r}")
        if not (0 <= src < 65536 and 0 <= dst < 65536):
            p.error(f"--map-label values must be in [0, 65536), got {item!r}")
        out[src] = dst
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Train a segmentation network (convnet's model zoo) and report val mIoU.",
        epilog="Exit status: 0 ok, 1 training failed (non-finite loss), 2 bad flags or input, "
               "130 interrupted (a snapshot was written).")
    p.add_argument("--model", choices=tuple(MODELS), default="deconvnet",
                   help="network of convnet.models (default %(default)s)")
    p.add_argument("--iters", type=int, default=DEFAULTS["iters"],
                   help="total iterations (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"],
                   help="images per iteration (default %(default)s)")
    p.add_argument("--lr", type=float, default=None,
                   help="base learning rate, poly policy with power 0.9 (default: "
                        f"{BASE_LR['adam']} for adam, {BASE_LR['sgd']} for sgd)")
    p.add_argument("--solver", choices=("adam", "sgd"), default="adam",
                   help="AdamSolver, or SGDSolver with momentum 0.9 and weight decay 5e-4 "
                        "(default %(default)s)")
    p.add_argument("--width", type=int, default=DEFAULTS["width"],
                   help="channels of the first stage (default %(default)s)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for OpenMP and BLAS (default: OMP_NUM_THREADS or all)")
    p.add_argument("--data", metavar="DIR|FILE", default=None,
                   help="train on your images: DIR/images + DIR/labels, DIR/train + DIR/val, "
                        "the VOC layout, or a list file of 'image mask' lines")
    p.add_argument("--val", metavar="DIR|FILE|SPLIT", default=None,
                   help="validation set: a folder or list file, or a VOC split name or file "
                        "(default: VOC's val split, DIR/val, or every 10th image)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes in --data (default: 1 + the largest label below 255)")
    p.add_argument("--class-names", metavar="A,B,...|FILE", default=None,
                   help="class names, comma-separated or a file with one a line")
    p.add_argument("--map-label", metavar="VALUE=CLASS", action="append", default=None,
                   help="read mask VALUE as CLASS (repeatable), e.g. 255=1 for 0/255 masks")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), default=list(CROP),
                   help="random training crop of --data images (default %(default)s)")
    p.add_argument("--no-crop", action="store_true",
                   help="train on whole images (a batch is padded to its largest)")
    p.add_argument("--scale-range", type=float, nargs=2, metavar=("LO", "HI"),
                   default=list(SCALE_RANGE),
                   help="random rescale of --data images before the crop (default "
                        "%(default)s)")
    p.add_argument("--no-scale", action="store_true", help="no random rescale")
    p.add_argument("--no-flip", action="store_true", help="no random left-right flip")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="resize every --data image to H x W first (ignores the aspect ratio)")
    p.add_argument("--workers", type=int, default=2,
                   help="threads decoding --data images in the background (default "
                        "%(default)s)")
    p.add_argument("--train-images", type=int, default=TRAIN_IMAGES,
                   help="synthetic training images (default %(default)s)")
    p.add_argument("--val-images", type=int, default=VAL_IMAGES,
                   help="synthetic validation images (default %(default)s)")
    p.add_argument("--val-every", type=int, default=VAL_EVERY,
                   help="validate every N iterations and keep best.npz (0: only at the end; "
                        "default %(default)s)")
    p.add_argument("--resume", metavar="SNAPSHOT", default=None,
                   help="continue from a snapshot written by this script (same --batch-size, "
                        "--seed, --model, --data)")
    p.add_argument("--out", metavar="DIR", default=os.path.join("runs", "segmentation"),
                   help="output folder (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and batch order")
    p.add_argument("--debug", action="store_true",
                   help="check every layer's output for NaN/inf (Net(debug=True)) and name the "
                        "first layer that produced one")
    p.add_argument("--eval-only", action="store_true",
                   help="only evaluate --weights on the validation split")
    p.add_argument("--weights", metavar="FILE", default=None,
                   help="weights (.npz) for --eval-only")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks (mpiexec -n K python -m mpi4py "
                        "train_segmentation.py --distributed): --batch-size is the global "
                        "batch, split over the ranks; synchronised BatchNorm; rank 0 writes")
    args = p.parse_args(argv)
    for name in ("iters", "batch_size", "width", "train_images", "val_images", "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_size > MAX_BATCH_SIZE:
        p.error(f"--batch-size must be at most {MAX_BATCH_SIZE}, got {args.batch_size}")
    if args.val_every < 0:
        p.error(f"--val-every must be >= 0, got {args.val_every}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if args.lr is None:
        args.lr = BASE_LR[args.solver]
    if not (np.isfinite(args.lr) and args.lr > 0):
        p.error(f"--lr must be a positive number, got {args.lr}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    if args.num_classes is not None and args.num_classes < 2:
        p.error(f"--num-classes must be >= 2, got {args.num_classes}")
    if args.eval_only and not args.weights:
        p.error("--eval-only needs --weights FILE")
    if args.weights and not args.eval_only:
        p.error("--weights is only used with --eval-only (use --resume to continue training)")
    if args.eval_only and args.distributed:
        p.error("--eval-only runs in one process (--distributed is for training)")
    if args.eval_only and args.resume:
        p.error("--eval-only and --resume cannot be combined")
    if args.size is not None and (min(args.size) < 8 or args.size[0] % 8 or args.size[1] % 8):
        p.error(f"--size must be multiples of 8 (the network pools 3 times), got "
                f"{args.size[0]} {args.size[1]}")
    if min(args.crop) < 1:
        p.error(f"--crop must be positive, got {args.crop[0]} {args.crop[1]}")
    lo, hi = args.scale_range
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi):
        p.error(f"--scale-range needs 0 < LO <= HI, got {lo} {hi}")
    if args.data is None:
        for flag in ("num_classes", "val", "map_label", "size"):
            if getattr(args, flag):
                p.error(f"--{flag.replace('_', '-')} goes with --data (the synthetic set has 5 "
                        f"classes and its own validation split)")
    args.label_map = parse_label_map(p, args.map_label)
    return args


class Data:
    """What run() trains and validates on."""

    def __init__(self, train, val, num_classes, class_names, source, files):
        self.train, self.val = train, val
        self.num_classes, self.class_names = num_classes, tuple(class_names)
        self.source = source
        #: True for a user's files (crops, workers, whole-image validation)
        self.files = files


def open_part(path, split, args, num_classes, class_names):
    return open_dataset(path, split=split, size=tuple(args.size) if args.size else None,
                        num_classes=num_classes, label_map=args.label_map,
                        class_names=class_names, workers=args.workers)


def is_split_file(path):
    """True for a VOC split file (one image id a line), not a list of image/mask pairs."""
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        first = next((line for line in f if line.strip()), "")
    return len(first.split()) == 1 and "," not in first


def load_data(args, log):
    """The training and validation sets (a :class:`Data`); every mask checked first."""
    if args.data is None:
        train = SyntheticShapes("train", num_images=args.train_images, seed=args.seed)
        val = SyntheticShapes("val", num_images=args.val_images, seed=args.seed)
        return Data(train, val, SyntheticShapes.num_classes, SyntheticShapes.class_names,
                    "SyntheticShapes", files=False)
    from convnet.data import VOCDataset
    root = args.data
    if not os.path.exists(root):
        raise UsageError(f"--data {root}: no such folder")
    names = load_class_names(args.class_names)
    nc = args.num_classes if args.num_classes is not None else (len(names) if names else None)
    t0 = time.perf_counter()
    is_dir = os.path.isdir(root)
    train_error = None
    if args.val is None and is_dir and os.path.isdir(os.path.join(root, "train")):
        train_src, val_src = os.path.join(root, "train"), os.path.join(root, "val")
    else:
        train_src, val_src = root, args.val
        if val_src is None and is_dir and VOCDataset.has_split(root, "val"):
            val_src = "val"
    try:
        train = open_part(train_src, "train", args, nc, names)
    except (DataError, FileFormatError) as exc:
        if val_src is None:
            raise
        # check the validation masks too, so every problem is reported in one go
        train, train_error = None, exc
    if val_src is None:
        n = len(train)
        held = list(range(0, n, 10)) if n > 1 else [0]
        kept = [i for i in range(n) if i not in set(held)] or held
        full = train
        train, val = Subset(full, kept), Subset(full, held)
        report_sets = [("all", full)]
        log(f"Validation: every 10th image of {root} ({len(held)} of {n}); give --val to "
            f"choose")
    else:
        given = args.num_classes if args.num_classes is not None else (
            len(names) if names else None)
        voc = is_dir and VOCDataset.has_split(root, "train") or isinstance(train, VOCDataset)
        try:
            if voc and (not os.path.exists(val_src) or is_split_file(val_src)):
                val = open_part(root, val_src, args, given, names)   # a VOC split name/file
            elif os.path.exists(val_src):
                val = open_part(val_src, "val", args, given, names)
            else:
                raise UsageError(f"--val {val_src}: no such folder, file or VOC split")
        except (DataError, FileFormatError) as exc:
            if train_error is None:
                raise
            raise type(exc)(f"{train_error}\n{exc}") from None
        if train_error is not None:
            raise train_error
        report_sets = [("train", train), ("val", val)]
        if nc is None and val.num_classes != train.num_classes:
            # infer the classes from every mask, so an id seen only in validation still counts
            for d in (train, val):
                d.set_num_classes(max(train.num_classes, val.num_classes), names)
    nc, names = train.num_classes, train.class_names
    log(f"Checked {sum(len(d) for _, d in report_sets)} masks in "
        f"{time.perf_counter() - t0:.1f} s: {nc} classes"
        + (" (inferred: 1 + the largest id found)" if args.num_classes is None else ""))
    for what, d in report_sets:
        log(f"  {what}: {len(d)} images, {', '.join(f'{k} {v}' for k, v in d.report.modes.items())}"
            f" masks; class ids found:")
        log(d.summary())
        for w in d.report.warnings:
            log(f"warning: {w}")
    if len(report_sets) == 2:
        only_val = sorted(set(report_sets[1][1].report.class_ids())
                          - set(report_sets[0][1].report.class_ids()))
        if only_val:
            log(f"warning: class id(s) {only_val} occur only in the validation masks (e.g. "
                f"{report_sets[1][1].report.examples[only_val[0]]}): the network never sees "
                f"them in training, so their IoU will be 0")
    return Data(train, val, nc, names, root, files=True)


def to_numpy(x):
    return x.get() if hasattr(x, "get") else np.asarray(x)


def evaluate(net, data, batch_size=50):
    """Score the net (test phase) on every validation image; returns (score, the first few
    (image, label, prediction)). A user's images run one at a time at their own size, padded
    to the network's multiple and the prediction cropped back."""
    net.eval()
    dataset = data.val
    score = SegmentationScore(data.num_classes, class_names=data.class_names)
    shown = []
    if not data.files:
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            x = np.stack([x for x, _ in items])
            y = np.stack([y for _, y in items])
            net.forward(data=x, label=y)
            pred = to_numpy(net.blobs["score"]).argmax(axis=1)
            score.update(pred, y)
            for (xi, yi), p in zip(items, pred):
                if len(shown) < GRID_IMAGES:
                    shown.append((xi, yi, p))
    else:
        for i in range(len(dataset)):
            x, y = dataset[i]
            xp, yp = pad_to_multiple(x, y, net.multiple, 255)
            net.forward(data=xp[None], label=yp[None])
            pred = crop_back(to_numpy(net.blobs["score"])[0].argmax(axis=0), y.shape)
            score.update(pred, y)
            if len(shown) < GRID_IMAGES:
                shown.append((x, y, pred))
    net.train()
    return score, shown


def fmt_time(seconds):
    seconds = int(round(max(seconds, 0)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RunLog:
    """Appends progress to ``log.jsonl`` (one JSON object a line); ``write=False`` (the
    other ranks of a distributed run) keeps nothing."""

    def __init__(self, path, append, write=True):
        self.path = path
        self.file = open(path, "a" if append else "w") if write else None

    def write(self, record):
        if self.file is not None:
            self.file.write(json.dumps(record, allow_nan=False) + "\n")
            self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()


def write_curves(run_log, out_dir, title, log):
    from convnet.plot import read_log
    from convnet.plot import write_curves as plot
    path = os.path.join(out_dir, "curves.png")
    try:
        plot(read_log(run_log.path), path, title=title)
    except ImportError as exc:
        log(f"curves.png not written: {exc}")
        return None
    return path


def validate(net, data, solver, run_log, best, out_dir, log):
    """Evaluate, log, and keep best.npz; returns what :func:`evaluate` returns."""
    t0 = time.perf_counter()
    score, shown = evaluate(net, data)
    record = score.as_dict()
    run_log.write({"iter": solver.iter, "val": record,
                   "seconds": round(time.perf_counter() - t0, 3)})
    miou = record["miou"] if record["miou"] is not None else -1.0
    improved = miou > best.get("miou", -np.inf)
    if improved:
        best.update(miou=miou, iter=solver.iter)
        net.save(os.path.join(out_dir, "best.npz"))
    log(f"Validation at iteration {solver.iter}: {score}"
        + (" (best so far: best.npz)" if improved else
           f" (best {best['miou']:.3f} at iteration {best['iter']})"))
    return score, shown


def train(args, net, solver, data, out_dir, log, run_log):
    """Run the solver to ``args.iters``, validating every ``--val-every`` iterations;
    returns (exit status, the best validation {"miou", "iter"} so far)."""
    snapshot_path = os.path.join(out_dir, "snapshot.npz")
    interrupted = []
    best = {}

    def on_sigint(signum, frame):
        interrupted.append(signum)
        # a second Ctrl-C stops at once
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        start_iter = solver.iter
        t0 = last_display = time.perf_counter()
        t_first = None          # the end of the first iteration (which includes set-up)
        losses = []
        while solver.iter < args.iters:
            lr = solver.lr
            try:
                losses.append(solver.step())
            except convnet.DataError as exc:
                kept = (f"; the last good snapshot is kept at {snapshot_path}"
                        if os.path.exists(snapshot_path) else "; no snapshot was written")
                # the script's switch for Net(debug=True)
                text = str(exc).replace("Net(debug=True) names", "--debug names")
                print(f"error: training stopped: {text}{kept}", file=sys.stderr)
                return EXIT_FAILED, best
            now = time.perf_counter()
            done = solver.iter - start_iter
            if t_first is None:
                t_first = now
            if done == 1 or now - last_display >= DISPLAY_SECONDS or solver.iter == args.iters:
                rate = done * args.batch_size / (now - t0)
                if done == 1 and solver.iter < args.iters:
                    eta = "measuring"   # the first iteration pays for set-up and warm-up
                else:
                    # the rate since the first iteration: the steady state
                    steady = ((done - 1) * args.batch_size / (now - t_first)
                              if done > 1 and now > t_first else rate)
                    eta = fmt_time((args.iters - solver.iter) * args.batch_size / steady)
                loss = float(np.mean(losses))
                log(f"Iteration {solver.iter}, loss = {loss:.4f}, lr = {lr:.4g}, "
                    f"{rate:.1f} img/s, ETA {eta}")
                if np.isfinite(loss):
                    run_log.write({"iter": solver.iter, "loss": loss, "lr": float(lr),
                                   "img_s": round(rate, 2),
                                   "seconds": round(now - t0, 3)})
                losses, last_display = [], now
            # distributed: every rank stops at the same step (Ctrl-C reaches them apart)
            if (solver.any_rank(interrupted) if hasattr(solver, "any_rank") else interrupted):
                solver.snapshot(snapshot_path)
                log(f"Interrupted at iteration {solver.iter}: snapshot written to "
                    f"{snapshot_path} (continue with --resume {snapshot_path})")
                return EXIT_INTERRUPTED, best
            if solver.iter % SNAPSHOT_EVERY == 0 and solver.iter < args.iters:
                solver.snapshot(snapshot_path)
            # distributed: rank 0 validates (and writes best.npz) for all
            if (args.val_every and solver.iter % args.val_every == 0
                    and solver.iter < args.iters and getattr(solver, "is_root", True)):
                validate(net, data, solver, run_log, best, out_dir, log)
    finally:
        signal.signal(signal.SIGINT, previous)
    solver.snapshot(snapshot_path)
    return EXIT_OK, best


def run_config(args):
    return {"batch_size": args.batch_size, "seed": args.seed, "model": args.model,
            "width": args.width, "data": os.path.abspath(args.data) if args.data else None,
            "crop": None if args.no_crop else list(args.crop),
            "scale_range": None if args.no_scale else list(args.scale_range),
            "flip": not args.no_flip}


def check_resume(args):
    """Refuse a resume whose settings would change the run (batch size, seed, model...)."""
    path = os.path.join(os.path.dirname(os.path.abspath(args.resume)), "run.json")
    if not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--resume: cannot read {path}: {exc}")
    now = run_config(args)
    changed = [k for k in RESUME_KEYS if k in saved and saved[k] != now[k]]
    if changed:
        what = ", ".join(f"--{k.replace('_', '-')} {saved[k]!r} (now {now[k]!r})"
                         for k in changed)
        raise UsageError(f"--resume {args.resume}: the snapshot was written with {what}; "
                         f"resuming with other values would not continue that run. Pass "
                         f"the same values, or start a new run without --resume")


def make_net(args, num_classes):
    kwargs = dict(width=args.width, keep_diffs=False)
    if args.model in ("deconvnet", "segnet"):
        kwargs["levels"] = DEFAULTS["levels"]
    net = build(args.model, num_classes, **kwargs)
    net.debug = bool(args.debug)
    return net


def run(args):
    log = print
    if args.distributed:
        try:
            from convnet import distributed
        except ImportError as exc:
            raise UsageError(f"--distributed: {exc}")
        log = distributed.root_log()
    t_start = time.perf_counter()
    if args.threads is not None:
        convnet.set_num_threads(args.threads)
    if args.device == "cuda":
        from convnet import cuda
        if not cuda.is_available():
            raise UsageError(f"--device cuda: CUDA is not available "
                             f"({cuda.unavailable_reason()})")
    if args.resume is not None and not os.path.isfile(args.resume):
        raise UsageError(f"--resume {args.resume}: no such file")
    if args.weights is not None and not os.path.isfile(args.weights):
        raise UsageError(f"--weights {args.weights}: no such file")
    if args.resume is not None:
        check_resume(args)

    data = load_data(args, log)
    num_classes, class_names = data.num_classes, data.class_names
    convnet.seed(args.seed)
    # training never reads intermediate diffs: free each one once backward has used it
    net = make_net(args, num_classes)
    multiple = net.multiple
    if data.files:
        crop = None if args.no_crop else tuple(-(-c // multiple) * multiple for c in args.crop)
        if crop is not None and tuple(args.crop) != crop:
            log(f"--crop {args.crop[0]} {args.crop[1]} rounded up to {crop[0]} {crop[1]} "
                f"(the {args.model} needs multiples of {multiple})")
        sample_shape = (1, 3) + (crop or (multiple, multiple))
    else:
        sample_shape = BatchIterator(data.val, 1, shuffle=False).next_batch()["data"].shape
    # create the params now: loading weights or a snapshot needs them
    net.setup(data=sample_shape, label=(sample_shape[0],) + sample_shape[2:])
    if args.device == "cuda":
        net.to("cuda")
    os.makedirs(args.out, exist_ok=True)

    if args.eval_only:
        net.load(args.weights)
        log(f"Evaluating {args.weights} on {len(data.val)} validation images of {data.source}")
    else:
        if data.files:
            transform = Augment(crop=crop, flip=not args.no_flip, ignore_label=255,
                                scale_range=(1.0, 1.0) if args.no_scale else args.scale_range)
            batches = SegmentationLoader(data.train, args.batch_size, transform, seed=args.seed,
                                         workers=args.workers, multiple=multiple)
        else:
            batches = BatchIterator(data.train, args.batch_size, seed=args.seed, augment=True)
        if args.solver == "adam":
            solver = convnet.AdamSolver(net, base_lr=args.lr, lr_policy="poly", power=0.9,
                                        max_iter=args.iters, delta=ADAM_DELTA, data=batches)
        else:
            solver = convnet.SGDSolver(net, base_lr=args.lr, momentum=0.9, weight_decay=5e-4,
                                       lr_policy="poly", power=0.9, max_iter=args.iters,
                                       data=batches)
        if args.distributed:
            solver = distributed.DistributedSolver(solver, sync_batchnorm=True,
                                                   threads=args.threads)
        if args.resume is not None:
            solver.restore(args.resume)
            log(f"Resumed from {args.resume} at iteration {solver.iter}")
        is_root = getattr(solver, "is_root", True)     # only rank 0 writes files
        if is_root:
            with open(os.path.join(args.out, "run.json"), "w") as f:
                json.dump(run_config(args), f, indent=1)
        run_log = RunLog(os.path.join(args.out, "log.jsonl"), append=args.resume is not None,
                         write=is_root)
        log(f"Training {net.name} ({sum(p.data.size for p in net.learnable_params)} params) on "
            f"{len(data.train)} images of {data.source}, {num_classes} classes, batch "
            f"{args.batch_size}, {args.iters} iterations, device {args.device}, "
            f"{convnet.get_num_threads()} threads")
        try:
            status, best = train(args, net, solver, data, args.out, log, run_log)
            if status != EXIT_OK:
                return status
            if args.distributed:
                log(f"{solver.size} ranks x {solver.threads} threads; waited "
                    f"{solver.comm_wait_seconds:.2f} s on gradient allreduces")
                if not solver.is_root:
                    return EXIT_OK      # rank 0 writes the weights and evaluates
            net.save(os.path.join(args.out, "weights.npz"))
            log(f"Trained in {fmt_time(time.perf_counter() - t_start)}; weights and snapshot "
                f"written to {args.out}")
            score, shown = validate(net, data, solver, run_log, best, args.out, log)
        finally:
            run_log.close()
            if hasattr(batches, "close"):
                batches.close()
        curves = write_curves(run_log, args.out, f"{net.name} on {data.source}", log)
        if curves:
            log(f"Curves: {curves}; log: {run_log.path}")

    if args.eval_only:
        score, shown = evaluate(net, data)
    grid = os.path.join(args.out, "predictions.png")
    write_grid(grid, *zip(*shown), num_classes, class_names)
    log(f"Predictions of {len(shown)} validation images: {grid}")
    log(score.summary().rsplit("\n", 1)[0])
    log(f"Total time {fmt_time(time.perf_counter() - t_start)}")
    log(f"val {score}")
    return EXIT_OK


def main(argv=None):
    args = parse_args(argv)
    prog = os.path.basename(sys.argv[0]) if argv is None else "train_segmentation.py"
    if args.distributed:
        try:
            from convnet import distributed
        except ImportError:
            distributed = None      # run() reports what to install
        if distributed is not None:
            # a failing rank ends the job rather than leave the others in a collective
            return distributed.run_main(lambda: report_errors(args, prog))
    return report_errors(args, prog)


def report_errors(args, prog):
    """run(args), with usage errors, failures and Ctrl-C reported as exit statuses."""
    try:
        return run(args)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ConvnetError, OSError) as exc:
        # unusable input: folder layout, masks, snapshot or weights files; a dataset error
        # lists one problem a line
        for line in str(exc).splitlines():
            print(f"{prog}: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print(f"{prog}: error: out of memory (try a smaller --batch-size, fewer images or a "
              f"smaller --width)", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
