#!/usr/bin/env python
"""Train a DeconvNet-style segmentation network with convnet, evaluate it, show predictions.

With no flags it trains convnet.models.deconvnet (width 16, 3 poolings with masks; Adam,
poly lr from 0.003, batch 16) on the embedded synthetic dataset (convnet.data.SyntheticShapes:
discs, squares, triangles and rings on textured noisy backgrounds, 2000 training images),
evaluates it on the 200 validation images and ends with a line

    val mIoU=0.877 pixel_acc=0.978

Output (``--out``, default runs/segmentation): ``weights.npz`` (Net.save; scripts/segment.py
reads it), ``snapshot.npz`` (the solver's whole state, for ``--resume``; rewritten every
200 iterations, at the end and on Ctrl-C), ``predictions.png`` (rows: input, ground truth,
prediction for 8 validation images).

Your own data: ``--data DIR`` with DIR/images/*.png|jpg and DIR/labels/<same name>.png (mode L
or P, pixel value = class, 255 = ignore); or DIR/train/... and DIR/val/... for a fixed split
(otherwise every 10th image is held out for validation).

Exit status: 0 done; 2 bad flags or unusable input (missing folder, image without mask,
unreadable snapshot); 1 training failed (e.g. a non-finite loss: the last good snapshot is
kept); 130 interrupted by Ctrl-C (SIGINT) after writing a snapshot to resume from.
"""

import argparse
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

from convnet.data import (BatchIterator, FolderDataset, Subset, SyntheticShapes, colourise,
                          denormalize_image)
from convnet.errors import ConvnetError
from convnet.metrics import SegmentationScore
from convnet.models import deconvnet

# The default run, measured on the 2-core dev machine: 2000 iterations, 2:09 wall in all
# (1:35 and val mIoU 0.862 with 1500 iterations), val mIoU 0.877 (seed 0; 0.853 for seed 1
# at 1500 iterations). Results are identical at 1 and 2 threads.
DEFAULTS = dict(iters=2000, batch_size=16, width=16, levels=3)
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
GRID_IMAGES = 8

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

class UsageError(Exception):
    """Bad flags or unusable input: reported on one line, exit status 2."""


def write_grid(path, images, labels, preds, num_classes, zoom=2):
    """PNG with one column per image and rows input / ground truth / prediction."""
    from PIL import Image
    rows = [[denormalize_image(x) for x in images],
            [colourise(y, num_classes) for y in labels],
            [colourise(p, num_classes) for p in preds]]
    gap = 2
    h, w = rows[0][0].shape[:2]
    grid = np.full((3 * h + 2 * gap, len(images) * w + (len(images) - 1) * gap, 3), 255,
                   dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            grid[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tile
    img = Image.fromarray(grid)
    if zoom > 1:
        img = img.resize((img.width * zoom, img.height * zoom), Image.NEAREST)
    tmp = path + ".tmp"
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Train a DeconvNet-style segmentation network (convnet) and report val mIoU.",
        epilog="Exit status: 0 ok, 1 training failed (non-finite loss), 2 bad flags or input, "
               "130 interrupted (a snapshot was written).")
    p.add_argument("--iters", type=int, default=DEFAULTS["iters"],
                   help="total SGD iterations (default %(default)s)")
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
    p.add_argument("--data", metavar="DIR", default=None,
                   help="train on DIR/images + DIR/labels (or DIR/train, DIR/val) instead of "
                        "the synthetic dataset")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes in --data (default: 1 + the largest label below 255)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="resize --data images to H x W (multiples of 8)")
    p.add_argument("--train-images", type=int, default=TRAIN_IMAGES,
                   help="synthetic training images (default %(default)s)")
    p.add_argument("--val-images", type=int, default=VAL_IMAGES,
                   help="synthetic validation images (default %(default)s)")
    p.add_argument("--resume", metavar="SNAPSHOT", default=None,
                   help="continue from a snapshot written by this script")
    p.add_argument("--out", metavar="DIR", default=os.path.join("runs", "segmentation"),
                   help="output folder (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and batch order")
    p.add_argument("--eval-only", action="store_true",
                   help="only evaluate --weights on the validation split")
    p.add_argument("--weights", metavar="FILE", default=None,
                   help="weights (.npz) for --eval-only")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks (mpiexec -n K python -m mpi4py "
                        "train_segmentation.py --distributed): --batch-size is the global "
                        "batch, split over the ranks; synchronised BatchNorm; rank 0 writes")
    args = p.parse_args(argv)
    for name in ("iters", "batch_size", "width", "train_images", "val_images"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_size > MAX_BATCH_SIZE:
        p.error(f"--batch-size must be at most {MAX_BATCH_SIZE}, got {args.batch_size}")
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
    if args.num_classes is not None and args.data is None:
        p.error("--num-classes goes with --data (the synthetic set has 5 classes)")
    return args


def load_data(args):
    """(train dataset, val dataset, num_classes, class_names)."""
    if args.data is None:
        train = SyntheticShapes("train", num_images=args.train_images, seed=args.seed)
        val = SyntheticShapes("val", num_images=args.val_images, seed=args.seed)
        return train, val, SyntheticShapes.num_classes, SyntheticShapes.class_names
    root = args.data
    if not os.path.isdir(root):
        raise UsageError(f"--data {root}: no such folder")
    size = tuple(args.size) if args.size else None
    if os.path.isdir(os.path.join(root, "train")):
        train = FolderDataset(os.path.join(root, "train"), size=size,
                              num_classes=args.num_classes)
        val = FolderDataset(os.path.join(root, "val"), size=size, num_classes=train.num_classes)
        datasets = [train, val]
    else:
        full = FolderDataset(root, size=size, num_classes=args.num_classes)
        held = list(range(0, len(full), 10)) if len(full) > 1 else [0]
        kept = [i for i in range(len(full)) if i not in set(held)] or held
        train, val = Subset(full, kept), Subset(full, held)
        datasets = [full]
    if size is None:
        sizes = {s for d in datasets for s in d.image_sizes}
        if len(sizes) > 1 or any(h % 8 or w % 8 for h, w in sizes):
            raise UsageError(f"--data {root}: images must share one size with sides multiple "
                             f"of 8 (found {', '.join(f'{h}x{w}' for h, w in sorted(sizes))}); "
                             f"pass --size H W to resize them")
    return train, val, train.num_classes, train.class_names


def to_numpy(x):
    return x.get() if hasattr(x, "get") else np.asarray(x)


def evaluate(net, dataset, num_classes, class_names, batch_size=50):
    """Score the net (test phase) on every image of ``dataset``; returns (score, the first
    few (image, label, prediction))."""
    net.eval()
    score = SegmentationScore(num_classes, class_names=class_names)
    shown = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        data = np.stack([x for x, _ in items])
        label = np.stack([y for _, y in items])
        net.forward(data=data, label=label)
        pred = to_numpy(net.blobs["score"]).argmax(axis=1)
        score.update(pred, label)
        for (x, y), p in zip(items, pred):
            if len(shown) < GRID_IMAGES:
                shown.append((x, y, p))
    net.train()
    return score, shown


def fmt_time(seconds):
    seconds = int(round(max(seconds, 0)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train(args, net, solver, out_dir, log):
    """Run the solver to ``args.iters``; returns an exit status."""
    snapshot_path = os.path.join(out_dir, "snapshot.npz")
    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        # a second Ctrl-C stops at once
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        start_iter = solver.iter
        t0 = last_display = time.perf_counter()
        losses = []
        while solver.iter < args.iters:
            lr = solver.lr
            try:
                losses.append(solver.step())
            except convnet.DataError as exc:
                kept = (f"; the last good snapshot is kept at {snapshot_path}"
                        if os.path.exists(snapshot_path) else "; no snapshot was written")
                print(f"error: training stopped: {exc}{kept}", file=sys.stderr)
                return EXIT_FAILED
            now = time.perf_counter()
            done = solver.iter - start_iter
            if done == 1 or now - last_display >= DISPLAY_SECONDS or solver.iter == args.iters:
                rate = done * args.batch_size / (now - t0)
                eta = (args.iters - solver.iter) * args.batch_size / rate
                log(f"Iteration {solver.iter}, loss = {np.mean(losses):.4f}, lr = {lr:.4g}, "
                    f"{rate:.1f} img/s, ETA {fmt_time(eta)}")
                losses, last_display = [], now
            # distributed: every rank stops at the same step (Ctrl-C reaches them apart)
            if (solver.any_rank(interrupted) if hasattr(solver, "any_rank") else interrupted):
                solver.snapshot(snapshot_path)
                log(f"Interrupted at iteration {solver.iter}: snapshot written to "
                    f"{snapshot_path} (continue with --resume {snapshot_path})")
                return EXIT_INTERRUPTED
            if solver.iter % SNAPSHOT_EVERY == 0 and solver.iter < args.iters:
                solver.snapshot(snapshot_path)
    finally:
        signal.signal(signal.SIGINT, previous)
    solver.snapshot(snapshot_path)
    return EXIT_OK


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

    train_set, val_set, num_classes, class_names = load_data(args)
    convnet.seed(args.seed)
    # training never reads intermediate diffs: free each one once backward has used it
    net = deconvnet(num_classes, width=args.width, levels=DEFAULTS["levels"], keep_diffs=False)
    sample = BatchIterator(val_set, 1, shuffle=False).next_batch()
    # create the params now: loading weights or a snapshot needs them
    net.setup(**{k: v.shape for k, v in sample.items()})
    if args.device == "cuda":
        net.to("cuda")
    os.makedirs(args.out, exist_ok=True)
    source = args.data or "SyntheticShapes"

    if args.eval_only:
        net.load(args.weights)
        log(f"Evaluating {args.weights} on {len(val_set)} validation images of {source}")
    else:
        batches = BatchIterator(train_set, args.batch_size, seed=args.seed, augment=True)
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
        log(f"Training {net.name} ({sum(p.data.size for p in net.learnable_params)} params) on "
            f"{len(train_set)} images of {source}, {num_classes} classes, batch "
            f"{args.batch_size}, {args.iters} iterations, device {args.device}, "
            f"{convnet.get_num_threads()} threads")
        status = train(args, net, solver, args.out, log)
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

    score, shown = evaluate(net, val_set, num_classes, class_names)
    grid = os.path.join(args.out, "predictions.png")
    write_grid(grid, *zip(*shown), num_classes)
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
        # unusable input: folder layout, masks, snapshot or weights files
        print(f"{prog}: error: {exc}", file=sys.stderr)
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
