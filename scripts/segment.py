#!/usr/bin/env python
"""Segment one image with weights from train_segmentation.py and write the colourised mask.

    python scripts/segment.py --weights runs/segmentation/weights.npz --image photo.png \\
        --out photo_mask.png

The network's shape (classes, width, depth) is read from the weights file. The image (PNG or
JPG, any size) is padded at the bottom and right to a multiple of 8 by edge replication, and
the mask cropped back to the image's size. ``--overlay`` blends the mask over the image
instead. ``--resize H W`` first scales the image (e.g. to the size the network was trained
on), then scales the mask back.

Exit status: 0 done; 2 bad flags, a missing or unreadable image or weights file.
"""

import argparse
import os
import sys

import numpy as np

try:
    import convnet
except ImportError:     # running from a source checkout that was built in place
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import convnet

from convnet.data import colourise, normalize_image
from convnet.errors import ConvnetError
from convnet.models import deconvnet_from_weights

MULTIPLE = 8
#: the longest side --resize accepts (a 16384 x 16384 image is already 268M pixels)
MAX_SIDE = 2 ** 14


def parse_args(argv):
    p = argparse.ArgumentParser(description="Segment an image with a trained convnet model.")
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="weights.npz written by train_segmentation.py")
    p.add_argument("--image", required=True, metavar="FILE", help="input image (PNG or JPG)")
    p.add_argument("--out", required=True, metavar="FILE", help="output PNG")
    p.add_argument("--num-classes", type=int, default=None,
                   help="check that the weights have this many classes (read from the file)")
    p.add_argument("--resize", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="run the network at H x W and scale the mask back")
    p.add_argument("--overlay", action="store_true", help="blend the mask over the image")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    args = p.parse_args(argv)
    if args.num_classes is not None and args.num_classes < 2:
        p.error(f"--num-classes must be >= 2, got {args.num_classes}")
    if args.resize is not None and min(args.resize) < 1:
        p.error(f"--resize sizes must be >= 1, got {args.resize[0]} {args.resize[1]}")
    if args.resize is not None and max(args.resize) > MAX_SIDE:
        p.error(f"--resize sizes must be at most {MAX_SIDE}, got {args.resize[0]} "
                f"{args.resize[1]}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    if not args.out.lower().endswith(".png"):
        p.error(f"--out must name a .png file, got {args.out}")
    return args


def segment(args):
    from PIL import Image
    if args.threads is not None:
        convnet.set_num_threads(args.threads)
    for flag, path in (("--image", args.image), ("--weights", args.weights)):
        if not os.path.isfile(path):
            raise ConvnetError(f"{flag} {path}: no such file")
    try:
        with Image.open(args.image) as im:
            rgb_image = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ConvnetError(f"--image {args.image}: cannot read it ({exc})")
    size = rgb_image.size
    if args.resize is not None:
        rgb_image = rgb_image.resize((args.resize[1], args.resize[0]), Image.BILINEAR)
    rgb = np.asarray(rgb_image, dtype=np.uint8)
    h, w = rgb.shape[:2]
    ph, pw = -h % MULTIPLE, -w % MULTIPLE
    padded = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge")
    data = normalize_image(padded)[None]
    net, num_classes = deconvnet_from_weights(args.weights, data_shape=data.shape)
    if args.num_classes is not None and args.num_classes != num_classes:
        raise ConvnetError(f"--num-classes {args.num_classes}: the weights in {args.weights} "
                           f"predict {num_classes} classes")
    net.forward(data=data)
    score = net.blobs["score"]
    score = score.get() if hasattr(score, "get") else np.asarray(score)
    pred = score[0].argmax(axis=0)[:h, :w].astype(np.uint8)
    mask = Image.fromarray(colourise(pred, num_classes))
    if mask.size != size:
        mask = mask.resize(size, Image.NEAREST)
    if args.overlay:
        with Image.open(args.image) as im:
            mask = Image.blend(im.convert("RGB"), mask, 0.5)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    mask.save(args.out, format="PNG")
    counts = np.bincount(pred.ravel(), minlength=num_classes)
    found = ", ".join(f"class {c}: {n / pred.size:.1%}" for c, n in enumerate(counts) if n)
    print(f"{args.out}: {size[1]}x{size[0]} mask, {num_classes} classes ({found})")


def main(argv=None):
    args = parse_args(argv)
    try:
        segment(args)
    except (ConvnetError, OSError) as exc:
        print(f"segment.py: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"segment.py: error: out of memory segmenting {args.image} (try --resize H W)",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
