#!/usr/bin/env python
"""Segment images with weights from train_segmentation.py: a class-index mask and an overlay.

    python scripts/segment.py --weights runs/segmentation/weights.npz --image photo.jpg \\
        --out photo_mask.png
    python scripts/segment.py --weights runs/segmentation/best.npz --image photos/ \\
        --out masks/

The model (any of convnet.models: deconvnet, fcn8s, deeplab, segnet), its classes and width
are read from the weights file. Each image (PNG or JPG, any size) is padded at the bottom
and right to the network's multiple by edge replication, and the mask cropped back to the
image's size. Outputs per image: the mask as a palette PNG (mode 'P': pixel value = class
index, the palette gives train_segmentation.py's class colours), and ``<name>_overlay.png``,
the colours blended over the image (``--no-overlay`` skips it). ``--image DIR`` segments every
image under DIR (nested folders too) into ``--out DIR`` with the same relative names.
``--resize H W`` first scales the image (e.g. to the size the network was trained on), then
scales the mask back.

Exit status: 0 done; 2 bad flags, a missing or unreadable image or weights file (a solver
snapshot given as weights says which file to give instead).
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

from convnet.data import IMAGE_EXTS, colourise, normalize_image, palette
from convnet.errors import ConvnetError
from convnet.models import from_weights

#: the longest side --resize accepts (a 16384 x 16384 image is already 268M pixels)
MAX_SIDE = 2 ** 14


def parse_args(argv):
    p = argparse.ArgumentParser(description="Segment images with a trained convnet model.")
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="weights.npz or best.npz written by train_segmentation.py")
    p.add_argument("--image", required=True, metavar="FILE|DIR",
                   help="input image (PNG or JPG), or a folder of them")
    p.add_argument("--out", required=True, metavar="FILE|DIR",
                   help="output PNG (a folder when --image is one)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="check that the weights have this many classes (read from the file)")
    p.add_argument("--resize", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="run the network at H x W and scale the mask back")
    p.add_argument("--no-overlay", action="store_true",
                   help="do not write <name>_overlay.png (the mask blended over the image)")
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
    if not os.path.isdir(args.image) and not args.out.lower().endswith(".png"):
        p.error(f"--out must name a .png file, got {args.out}")
    return args


def overlay_path(path):
    return os.path.splitext(path)[0] + "_overlay.png"


def segment_one(args, image_path, out_path, cache):
    """Segment one image; ``cache`` keeps the net between images of the same padded size."""
    from PIL import Image
    try:
        with Image.open(image_path) as im:
            rgb_image = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ConvnetError(f"--image {image_path}: cannot read it ({exc})")
    size = rgb_image.size
    original = rgb_image
    if args.resize is not None:
        rgb_image = rgb_image.resize((args.resize[1], args.resize[0]), Image.BILINEAR)
    rgb = np.asarray(rgb_image, dtype=np.uint8)
    h, w = rgb.shape[:2]
    multiple = cache.get("multiple", 1)
    if "net" not in cache:
        # the first image tells the net's multiple; build once for it
        net, num_classes = from_weights(args.weights)
        cache.update(multiple=net.multiple, num_classes=num_classes)
        multiple = net.multiple
        if args.num_classes is not None and args.num_classes != num_classes:
            raise ConvnetError(f"--num-classes {args.num_classes}: the weights in "
                               f"{args.weights} predict {num_classes} classes")
        cache["net"] = net
    num_classes = cache["num_classes"]
    ph, pw = -h % multiple, -w % multiple
    padded = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge")
    data = normalize_image(padded)[None]
    net = cache["net"]
    net.forward(data=data)
    score = net.blobs["score"]
    score = score.get() if hasattr(score, "get") else np.asarray(score)
    pred = score[0].argmax(axis=0)[:h, :w].astype(np.uint8)
    mask = Image.frombytes("P", (w, h), np.ascontiguousarray(pred).tobytes())
    colours = palette(max(num_classes, 1))
    mask.putpalette([int(v) for c in colours for v in c] + [128, 128, 128] * (256 - len(colours)))
    if mask.size != size:
        mask = mask.resize(size, Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    mask.save(out_path, format="PNG")
    if not args.no_overlay:
        full = np.asarray(mask)
        blend = Image.blend(original, Image.fromarray(colourise(full, num_classes)), 0.5)
        blend.save(overlay_path(out_path), format="PNG")
    counts = np.bincount(pred.ravel(), minlength=num_classes)
    found = ", ".join(f"class {c}: {n / pred.size:.1%}" for c, n in enumerate(counts) if n)
    print(f"{out_path}: {size[1]}x{size[0]} mask, {num_classes} classes ({found})")


def segment(args):
    if args.threads is not None:
        convnet.set_num_threads(args.threads)
    if not os.path.isfile(args.weights):
        raise ConvnetError(f"--weights {args.weights}: no such file")
    if not os.path.exists(args.image):
        raise ConvnetError(f"--image {args.image}: no such file")
    cache = {}
    if not os.path.isdir(args.image):
        segment_one(args, args.image, args.out, cache)
        return
    jobs = []
    for dirpath, dirnames, filenames in os.walk(args.image):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if os.path.splitext(f)[1].lower() in IMAGE_EXTS and not f.startswith("."):
                rel = os.path.relpath(os.path.join(dirpath, f), args.image)
                jobs.append((os.path.join(args.image, rel),
                             os.path.join(args.out, os.path.splitext(rel)[0] + ".png")))
    if not jobs:
        raise ConvnetError(f"--image {args.image}: no .png or .jpg images in the folder")
    for image_path, out_path in jobs:
        segment_one(args, image_path, out_path, cache)
    print(f"{len(jobs)} images segmented into {args.out}")


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
